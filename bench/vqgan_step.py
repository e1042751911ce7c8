"""Images/s of one full VQGAN training step, FLOPs per image, MFU, and the ratio to the paper's own code.

    python bench/vqgan_step.py                  # the issue's config, every variant, ~2-4 min on 2 cores
    python bench/vqgan_step.py --steps 3 --quick

Config (issue #3): 64 px, ch 64, ch_mult (1,1,2,2), 2 res blocks, attention at 8, z 256, 1024 codes, batch 16,
L1 + codebook loss, Adam. A "step" is G forward + backward + optimizer step (plus the discriminator's forward,
backward and step with --disc). The paper's modules come from PyPI (`taming-transformers-rom1504`), installed
--no-deps into a temp dir (its mingpt needs an old `transformers`, which we never import).

FLOPs are counted with torch.utils.flop_counter.FlopCounterMode on one forward + backward (convs, matmuls,
attention; not norms or elementwise ops). MFU = FLOPs/img * img/s / peak, where the peak is a measured square
matmul at the same thread count and dtype (bf16 for autocast variants, fp32 otherwise).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from vqgan.models.losses import LossConfig, VQLoss
from vqgan.models.vqgan import VQGAN, VQGANConfig

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


def cpu_clock():
    """CPU seconds of this thread: unlike wall time, barely moved by other jobs sharing the cores.
    Only meaningful with --threads 1 (the default); with more threads we fall back to wall time."""
    return time.thread_time() if torch.get_num_threads() == 1 else time.perf_counter()


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    """Best of torch.mm and F.linear (oneDNN for bf16) on n x n operands, fastest of `reps` runs: the highest
    rate this core reaches on a GEMM, so MFU is not flattered by a slow reference kernel."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    best = 0.0
    for fn in (torch.mm, F.linear):
        fn(a, b)
        for _ in range(reps):
            t = cpu_clock()
            fn(a, b)
            best = max(best, 2 * n**3 / (cpu_clock() - t))
    return best


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
    ap.add_argument("--quick", action="store_true", help="only the seed fp32 and our bf16 (best measured)")
    ap.add_argument("--taming-dir", type=Path, default=Path(tempfile.gettempdir()) / "taming_pkg")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.rand(BATCH, 3, 64, 64) * 2 - 1

    peak = {False: matmul_peak(torch.float32), True: matmul_peak(torch.bfloat16)}
    print(f"threads {args.threads}; measured matmul peak: fp32 {peak[False] / 1e9:.1f} GFLOP/s, "
          f"bf16 {peak[True] / 1e9:.1f} GFLOP/s")

    Encoder, Decoder, VQ = import_taming(args.taming_dir)
    ours_cfg = VQGANConfig(**CFG, quantizer="taming", code_dim=CFG["z_channels"], legacy_beta=True)
    l2_cfg = VQGANConfig(**CFG, quantizer="l2", code_dim=16)
    loss = VQLoss(LossConfig(perceptual_weight=0.0, disc_start=0 if args.disc else 10**9))

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
        variants = [variants[0], variants[4]]  # the seed as shipped vs our best
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
    for rnd in range(args.warmup + args.steps):
        for name, which, bf16, run, times in runs:
            t = cpu_clock()
            run()
            if rnd >= args.warmup:
                times.append(cpu_clock() - t)
    clock = "thread CPU time" if args.threads == 1 else "wall time"
    print(f"median of {args.steps} steps per variant ({clock}), batch {BATCH}:")
    results = []
    for name, which, bf16, run, times in runs:
        med = statistics.median(times)
        r = {"name": name, "s_per_step": med, "img_s": BATCH / med, "bf16": bf16}
        f = flops["seed" if which == "seed" else "ours"] + flops.get("disc", 0.0)
        r["mfu"] = f * r["img_s"] / peak[bf16]
        results.append(r)
        print(f"  {name:28s} {r['s_per_step']:.3f} s/step  {r['img_s']:6.2f} img/s  MFU {100 * r['mfu']:5.1f}%")

    base = next((r for r in results if r["name"] == "seed fp32"), None)
    best = max((r for r in results if not r["name"].startswith("seed")), key=lambda r: r["img_s"])
    print(f"\nbest: {best['name']}: {best['img_s']:.1f} img/s, MFU {100 * best['mfu']:.1f}% "
          f"(vs the {'bf16' if best['bf16'] else 'fp32'} matmul peak)")
    if base:
        print(f"ratio vs the seed's code in fp32 (its default): {best['img_s'] / base['img_s']:.2f}x")
        seed_bf16 = next((r for r in results if r["name"] == "seed bf16"), None)
        if seed_bf16:
            print(f"ratio vs the seed's code under the same bf16 autocast: {best['img_s'] / seed_bf16['img_s']:.2f}x")


if __name__ == "__main__":
    main()
