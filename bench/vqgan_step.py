"""Images/s of one full VQGAN training step, FLOPs per image, MFU, and the ratio to the paper's own code.

    python bench/vqgan_step.py                  # the issue's config, every variant, ~3-5 min on 2 cores
    python bench/vqgan_step.py --steps 3 --quick

Config (issue #3): 64 px, ch 64, ch_mult (1,1,2,2), 2 res blocks, attention at 8, z 256, 1024 codes, batch 16,
L1 + codebook loss, Adam. A "step" is G forward + backward + optimizer step (plus the discriminator's forward,
backward and step with --disc). The paper's modules come from PyPI (`taming-transformers-rom1504`), installed
--no-deps into a temp dir (its mingpt needs an old `transformers`, which we never import).

Before timing, the seed's weights are copied into our model (`seed_to_ours`) and both losses are compared on the
same batch, in fp32 and under bf16 autocast: the speed is only comparable if the function is the same.

FLOPs are counted with torch.utils.flop_counter.FlopCounterMode on one forward + backward (convs, matmuls,
attention; not norms or elementwise ops). MFU = FLOPs/img * img/s / peak, where the peak is the best GEMM rate
over several shapes at the same thread count and dtype (bench/peak.py), measured before and after the timed
rounds; an MFU above 100% stops the script. The variants run interleaved, round after round, so a busy spell on
a shared machine hits all of them alike; the load is printed beside the results.

`--breakdown` profiles one step of ours and of the seed and prints the share of convolutions (forward +
backward): both run the same oneDNN convolution kernels, so that share bounds what any change outside the
convolutions can win (Amdahl).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from peak import PEAK_SHAPES, check_mfu, cpu_clock, load, matmul_peak  # bench/peak.py (this folder is on sys.path)
from torch.utils.flop_counter import FlopCounterMode

from vqgan.config.build import loss_config, vqgan_config
from vqgan.models.losses import VQLoss
from vqgan.models.vqgan import VQGAN

CFG = dict(resolution=64, ch=64, ch_mult=(1, 1, 2, 2), num_res_blocks=2, attn_resolutions=(8,), z_channels=256,
           n_codes=1024)
BATCH = 16


def import_taming(target: Path):
    # the seed's quantize.py imports einops at module level; both go into the temp dir, never the venv
    for pkg, marker in (("taming-transformers-rom1504", "taming"), ("einops", "einops")):
        if not (target / marker).is_dir():
            print(f"installing {pkg} --no-deps into {target} ...", flush=True)
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--upgrade", "--target",
                            str(target), pkg], check=True)
    sys.path.insert(0, str(target))
    from taming.modules.diffusionmodules.model import Decoder, Encoder
    from taming.modules.vqvae.quantize import VectorQuantizer
    return Encoder, Decoder, VectorQuantizer


class TamingVQ(nn.Module):
    """The seed's VQModel minus its loss: Encoder, quant_conv, VectorQuantizer, post_quant_conv, Decoder."""

    def __init__(self, Encoder, Decoder, VectorQuantizer):
        super().__init__()
        dd = dict(ch=CFG["ch"], out_ch=3, ch_mult=CFG["ch_mult"], num_res_blocks=CFG["num_res_blocks"],
                  attn_resolutions=CFG["attn_resolutions"], dropout=0.0, in_channels=3,
                  resolution=CFG["resolution"], z_channels=CFG["z_channels"], double_z=False)
        self.encoder, self.decoder = Encoder(**dd), Decoder(**dd)
        self.quantize = VectorQuantizer(CFG["n_codes"], CFG["z_channels"], beta=0.25)
        self.quant_conv = nn.Conv2d(CFG["z_channels"], CFG["z_channels"], 1)
        self.post_quant_conv = nn.Conv2d(CFG["z_channels"], CFG["z_channels"], 1)

    def forward(self, x):
        zq, qloss, _ = self.quantize(self.quant_conv(self.encoder(x)))
        return self.decoder(self.post_quant_conv(zq)), qloss, {}


def seed_to_ours(seed_sd: dict, n_levels: int) -> dict:
    """The seed's VQModel state dict -> our VQGAN's names: q, k, v 1x1 convs fused into qkv, `mid.block_1/attn_1/
    block_2` -> `mid.0/1/2`, and the decoder's levels (the seed indexes them by resolution level, we in the order
    they run)."""
    out = {}
    for key, value in seed_sd.items():
        parts = key.split(".")
        if parts[0] == "decoder" and parts[1] == "up":
            parts[2] = str(n_levels - 1 - int(parts[2]))
        if len(parts) > 2 and parts[1] == "mid":
            parts[2] = {"block_1": "0", "attn_1": "1", "block_2": "2"}[parts[2]]
        if parts[-2] in ("k", "v"):
            continue  # folded into qkv together with q
        if parts[-2] == "q":
            stem = ".".join(parts[:-2])
            seed_stem = key.rsplit(".", 2)[0]
            value = torch.cat([seed_sd[f"{seed_stem}.{n}.{parts[-1]}"] for n in ("q", "k", "v")])
            out[f"{stem}.qkv.{parts[-1]}"] = value
            continue
        out[".".join(parts)] = value
    return out


def check_same_loss(seed_model, ours_model, x) -> list[str]:
    """Our model with the seed's weights must compute the seed's function: the same L1 + codebook loss and
    reconstructions in fp32 (to float rounding), and under bf16 autocast no further from the seed's fp32 result
    than the seed's own bf16 run is (bf16 rounding is the noise floor there)."""
    missing, unexpected = ours_model.load_state_dict(seed_to_ours(seed_model.state_dict(), len(CFG["ch_mult"])),
                                                     strict=False)
    assert not unexpected and all(k.startswith("quantize.") for k in missing), (missing, unexpected)
    out = {}
    for who, model in (("seed", seed_model), ("ours", ours_model)):
        for bf16 in (False, True):
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                xrec, qloss, _ = model(x)
                out[who, bf16] = (float(F.l1_loss(xrec.float(), x) + qloss), xrec.float())
    ref_loss, ref_rec = out["seed", False]

    def err(key):  # relative loss difference, reconstruction difference relative to the reference's range
        loss, rec = out[key]
        return abs(loss - ref_loss) / abs(ref_loss), float((rec - ref_rec).abs().max() / ref_rec.abs().max())

    lines = [f"same function check, the seed's weights in both models; vs the seed in fp32 (loss {ref_loss:.6f}):"]
    for key in (("ours", False), ("seed", True), ("ours", True)):
        loss_rel, rec_rel = err(key)
        lines.append(f"  {key[0]} {'bf16 autocast' if key[1] else 'fp32':14s} loss {out[key][0]:.6f} "
                     f"(relative difference {loss_rel:.1e}), reconstructions within {rec_rel:.1e} of their range")
    ok = max(err(("ours", False))) < 1e-4 and err(("ours", True))[1] <= 2 * err(("seed", True))[1] + 1e-4
    if not ok:
        raise SystemExit("\n".join(lines) + "\nours does not compute the seed's function: no speed comparison")
    return lines


def conv_share(run) -> float:
    """Share of one step's operator time spent in convolutions (forward + backward), from the profiler."""
    from torch.profiler import ProfilerActivity, profile

    run()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    conv = sum(e.self_cpu_time_total for e in events
               if e.key in ("aten::mkldnn_convolution", "aten::convolution_backward", "aten::_slow_conv2d_forward",
                            "aten::_slow_conv2d_backward"))
    return conv / total


def make_step(model, loss, opt_g, opt_d, x, bf16: bool, disc: bool):
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else nullcontext
    step = loss.cfg.disc_start if disc else 0

    def run():
        with ctx():
            xrec, qloss, _ = model(x)
            if loss is None:  # the seed's model: the same L1 + codebook objective written inline
                g = F.l1_loss(xrec.float(), x) + qloss
            else:
                g, _ = loss.generator_loss(x, xrec, qloss, step, model.decoder.conv_out.weight)
        opt_g.zero_grad(set_to_none=True)
        g.backward()
        opt_g.step()
        if disc:
            with ctx():
                d, _ = loss.discriminator_loss(x, xrec, step)
            opt_d.zero_grad(set_to_none=True)
            d.backward()
            opt_d.step()
    return run


def count_flops(model, x) -> float:
    with FlopCounterMode(display=False) as fc:
        xrec, qloss, _ = model(x)
        (xrec.float().abs().mean() + qloss).backward()
    model.zero_grad(set_to_none=True)
    return fc.get_total_flops() / x.shape[0]


def prepare_variant(model, x, bf16, channels_last, disc, loss=None):
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt_g = torch.optim.Adam(model.parameters(), lr=2e-4, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(loss.discriminator.parameters(), lr=2e-4, betas=(0.5, 0.9)) if disc else None
    return make_step(model, loss, opt_g, opt_d, x, bf16, disc)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per variant (median reported)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1,
                    help="1 (default): time in thread CPU seconds, robust on a shared machine")
    ap.add_argument("--disc", action="store_true", help="include the PatchGAN step (D active)")
    ap.add_argument("--quick", action="store_true", help="only the seed (fp32, bf16) and our bf16")
    ap.add_argument("--breakdown", action="store_true", help="profile the convolutions' share of a bf16 step")
    ap.add_argument("--taming-dir", type=Path, default=Path(tempfile.gettempdir()) / "taming_pkg")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.rand(BATCH, 3, 64, 64) * 2 - 1
    print(f"threads {args.threads}; {load()}", flush=True)

    peak = {bf16: matmul_peak(torch.bfloat16 if bf16 else torch.float32) for bf16 in (False, True)}

    Encoder, Decoder, VQ = import_taming(args.taming_dir)
    ours_cfg = vqgan_config(**CFG, quantizer="taming", code_dim=CFG["z_channels"], legacy_beta=True)
    l2_cfg = vqgan_config(**CFG, quantizer="l2", code_dim=16)
    loss = VQLoss(loss_config(perceptual_weight=0.0, disc_start=0 if args.disc else 10**9))

    torch.manual_seed(0)
    for line in check_same_loss(TamingVQ(Encoder, Decoder, VQ).eval(), VQGAN(ours_cfg).eval(), x):
        print(line, flush=True)

    torch.manual_seed(0)
    flops = {"seed": count_flops(TamingVQ(Encoder, Decoder, VQ), x), "ours": count_flops(VQGAN(ours_cfg), x)}
    if args.disc:
        with FlopCounterMode(display=False) as fc:
            loss.discriminator(x).mean().backward()
        # D runs forward + backward three times per step: on xrec in G's adversarial term, on real and on fake
        # in its own update (the adaptive weight's extra gradients stop at the decoder's last layer: negligible)
        flops["disc"] = 3 * fc.get_total_flops() / BATCH
    line = f"FLOPs per image (fwd+bwd): seed {flops['seed'] / 1e9:.2f} G, ours {flops['ours'] / 1e9:.2f} G"
    if args.disc:
        line += f", discriminator {flops['disc'] / 1e9:.2f} G"
    print(line, flush=True)

    variants = [("seed fp32", "seed", False, False), ("seed bf16", "seed", True, False),
                ("ours fp32", "ours", False, False), ("ours fp32 channels_last", "ours", False, True),
                ("ours bf16", "ours", True, False), ("ours bf16 channels_last", "ours", True, True),
                ("ours-l2 bf16", "l2", True, False)]
    if args.quick:
        variants = [variants[0], variants[1], variants[4]]
    runs = []
    for name, which, bf16, cl in variants:
        if which == "seed" and args.disc:
            continue  # the seed comparison is defined on L1 + codebook only
        torch.manual_seed(0)
        if which == "seed":
            run = prepare_variant(TamingVQ(Encoder, Decoder, VQ), x, bf16, cl, False)
        else:
            run = prepare_variant(VQGAN(ours_cfg if which == "ours" else l2_cfg), x, bf16, cl, args.disc, loss)
        runs.append((name, which, bf16, run, []))
    # round robin: load changes on a shared machine hit every variant alike
    before = load()
    for rnd in range(args.warmup + args.steps):
        for name, which, bf16, run, times in runs:
            t = cpu_clock()
            run()
            if rnd >= args.warmup:
                times.append(cpu_clock() - t)
    after = load()
    # the peak again, after the rounds: keep the higher figure, so MFU is never flattered by a slow moment
    for bf16 in (False, True):
        again = matmul_peak(torch.bfloat16 if bf16 else torch.float32)
        peak[bf16] = max(peak[bf16], again)
    print(f"measured matmul peak (best of {len(PEAK_SHAPES)} GEMM shapes, before and after): "
          f"fp32 {peak[False][0] / 1e9:.1f} GFLOP/s at {peak[False][1]}, "
          f"bf16 {peak[True][0] / 1e9:.1f} GFLOP/s at {peak[True][1]}")
    clock = "thread CPU time" if args.threads == 1 else "wall time"
    print(f"median of {args.steps} interleaved steps per variant ({clock}), batch {BATCH}; "
          f"before: {before}, after: {after}")
    results = []
    for name, which, bf16, run, times in runs:
        med = statistics.median(times)
        r = {"name": name, "s_per_step": med, "img_s": BATCH / med, "bf16": bf16}
        f = flops["seed" if which == "seed" else "ours"] + flops.get("disc", 0.0)
        r["mfu"] = check_mfu(f * r["img_s"] / peak[bf16][0], name)
        results.append(r)
        print(f"  {name:28s} {r['s_per_step']:.3f} s/step  {r['img_s']:6.2f} img/s  "
              f"MFU {100 * r['mfu']:5.1f}% of the {'bf16' if bf16 else 'fp32'} peak")

    base = next((r for r in results if r["name"] == "seed fp32"), None)
    best = max((r for r in results if not r["name"].startswith("seed")), key=lambda r: r["img_s"])
    print(f"\nbest: {best['name']}: {best['img_s']:.1f} img/s, MFU {100 * best['mfu']:.1f}% "
          f"(vs the {'bf16' if best['bf16'] else 'fp32'} matmul peak)")
    if base:
        print(f"ratio vs the seed's code in fp32 (its default): {best['img_s'] / base['img_s']:.2f}x")
        seed_bf16 = next((r for r in results if r["name"] == "seed bf16"), None)
        if seed_bf16:
            print(f"ratio vs the seed's code under the same bf16 autocast: {best['img_s'] / seed_bf16['img_s']:.2f}x")

    if args.breakdown and not args.disc:
        shares = {}
        for which in ("seed", "ours"):
            torch.manual_seed(0)
            model = TamingVQ(Encoder, Decoder, VQ) if which == "seed" else VQGAN(ours_cfg)
            shares[which] = conv_share(prepare_variant(model, x, True, False, False,
                                                       None if which == "seed" else loss))
        # if every non-convolution op cost nothing and our convolutions ran as efficiently as the seed's, a step
        # would take the seed's convolution time scaled by the FLOP ratio
        bound = flops["seed"] / flops["ours"] / shares["seed"]
        print(f"\nconvolutions' share of a bf16 step (profiler): seed {100 * shares['seed']:.0f}%, "
              f"ours {100 * shares['ours']:.0f}%. Both run the same oneDNN kernels, so with everything else free "
              f"ours would be {1 / shares['ours']:.2f}x faster than now, and at most {bound:.2f}x the seed "
              f"(its FLOPs / ours / its convolution share); {load()}")


if __name__ == "__main__":
    main()
