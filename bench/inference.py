"""Images/s of the inference stages -- encode, eval (reconstruct), sample, FID features -- the default code path next
to the faster ones, with each one's share of the bf16 matmul peak and how far its results are from fp32's.

    python bench/inference.py --vqgan results/vqgan/atari64 --data results/data/atari64 \
        [--transformer results/transformer/atari64]
    python bench/inference.py            # random weights and images: speeds only, the agreement is meaningless

Models default to the default experiment's (config/config.yaml: VQGAN ch 32, ch_mult 1,2,4 (f = 4), l2 1024
codes; GPT 4 x 256, 256 tokens), random-initialised unless a trained folder is given; speed does not depend on the
weights, agreement does (a random model has many near-tie codes). Images are the first --n of the val split.

What each stage times, per image (the model work of the stage; PNG reading/writing and metrics are left out):
- encode: `vqgan.encode.encode_images` (uint8 -> codes), fp32 (before) vs bf16 autocast (`vqgan.encode.precision`,
          bf16 in config/config.yaml);
- eval:   encode + decode, the model part of `vqgan.eval.recon`, fp32 (the default: its outputs are scored, and
          bf16 moves rFID) vs bf16 (`vqgan.eval.precision: bf16`);
- sample: `GPT.generate` of one batch (--sample-batch) + VQGAN decode; "main's sampler" is this project's
          sampler with the speed-ups of the speed branch patched out (bench/sampling.py's ablations), decoding in
          fp32 (before); then this sampler with bf16 weights, decoding in fp32 (the default: FID scores the samples)
          and in bf16 (`sample.decode_precision: bf16`);
- fid:    Inception features of clean-fid-resized images: one NCHW batch of --fid-batch (the code before),
          `InceptionFeatures` (channels-last chunks of 8 on CPU: the default now), and bf16 autocast (not used by
          the pipeline: FID moves).
Agreement with fp32: identical codes (encode), PSNR against the originals and between the two reconstructions
(eval), and the FID between two halves of the images computed from each variant's features (fid).

Variants of a stage run interleaved, round after round, and time is thread CPU time with --threads 1 (steadier
than wall time on a shared machine); the load is printed. FLOPs per image come from FlopCounterMode (the
sampler's from its matmul shapes, since the packed oneDNN calls are invisible to the counter).
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
from peak import cpu_clock, load, matmul_peak  # bench/peak.py (this folder is on sys.path)
from sampling import ablations  # bench/sampling.py: the sampler with its speed-ups patched out
from torch.utils.flop_counter import FlopCounterMode

from vqgan.config.build import gpt_config, vqgan_config
from vqgan.data.dataset import read_split
from vqgan.encode import encode_images
from vqgan.eval.fid import InceptionFeatures, fid_from_features, resolve_inception_weights
from vqgan.eval.recon import psnr_per_image
from vqgan.io.checkpoint import load_gpt, load_vqgan
from vqgan.io.images import to_tensor, to_uint8
from vqgan.models.gpt import GPT, GPTConfig
from vqgan.models.vqgan import VQGAN
from vqgan.precision import autocast

DEFAULT_VQGAN = dict(resolution=64, ch=32, ch_mult=(1, 2, 4), num_res_blocks=1, attn_resolutions=(),
                     z_channels=64, quantizer="l2", n_codes=1024, code_dim=16)
DEFAULT_GPT = dict(n_layer=4, n_head=4, n_embd=256)


def interleave(variants: dict, rounds: int) -> dict[str, float]:
    """Median CPU seconds of each variant's callable, run round-robin (one warm-up round first)."""
    times = {k: [] for k in variants}
    for f in variants.values():
        f()
    for _ in range(rounds):
        for k, f in variants.items():
            t = cpu_clock()
            f()
            times[k].append(cpu_clock() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def flops_of(fn) -> float:
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


def gpt_flops_per_sequence(cfg: GPTConfig) -> float:
    """Multiply-adds x 2 of one sampled sequence: every Linear and the head once per token, attention over the
    prefix (q.k and a.v: 2 x n_embd per cached position per layer)."""
    C, L, T = cfg.n_embd, cfg.n_layer, cfg.block_size
    per_token = 2 * (L * 12 * C * C + C * cfg.vocab_size)
    attention = sum(2 * 2 * L * C * (t + 1) for t in range(T))
    return T * per_token + attention


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vqgan", help="trained VQGAN folder (default: random weights, the default experiment's shape)")
    ap.add_argument("--data", help="dataset folder with val/ (default: random images)")
    ap.add_argument("--transformer", help="trained transformer folder (default: random, the default shape)")
    ap.add_argument("--n", type=int, default=256, help="images for encode and eval")
    ap.add_argument("--batch-size", type=int, default=64, help="encode/eval batch (the stages' default)")
    ap.add_argument("--sample-batch", type=int, default=50, help="the default experiment's sample.batch_size")
    ap.add_argument("--fid-n", type=int, default=48, help="images through Inception per variant and round")
    ap.add_argument("--fid-batch", type=int, default=50, help="the default experiment's fid.batch_size")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--stages", default="encode,eval,sample,fid")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    stages = set(args.stages.split(","))
    print(f"threads {args.threads}; {load()}", flush=True)
    peak = {dt: matmul_peak(dt)[0] for dt in (torch.float32, torch.bfloat16)}

    vq = (load_vqgan(args.vqgan) if args.vqgan else VQGAN(vqgan_config(**DEFAULT_VQGAN))).eval()
    res = vq.cfg.resolution
    if args.data:
        split = read_split(Path(args.data) / "val")
        images = np.asarray(split.images[: args.n])
        n_classes = len(split.class_names)
    else:
        images = np.random.default_rng(0).integers(0, 256, (args.n, res, res, 3), dtype=np.uint8)
        n_classes = 3
    print(f"VQGAN {'from ' + args.vqgan if args.vqgan else 'random'}, {len(images)} images "
          f"{'from ' + args.data if args.data else '(random)'} at {res} px", flush=True)
    rows = []  # (stage, variant, img/s, GFLOP/img, note)

    def report(stage, secs: dict, n_img: int, flops: float, notes: dict):
        base = None
        for k, s in secs.items():
            rate = n_img / s
            base = base or rate
            rows.append((stage, k, rate, rate / base, flops, notes.get(k, "")))

    if "encode" in stages or "eval" in stages:
        x = to_tensor(images[: args.batch_size])
        with torch.no_grad():
            enc_flops = flops_of(lambda: vq.encode_to_indices(x)) / len(x)
            rec_flops = flops_of(lambda: vq.decode_indices(vq.encode_to_indices(x))) / len(x)
    if "encode" in stages:
        codes = {}

        def enc(precision):
            def f():
                codes[precision] = encode_images(vq, images, args.batch_size, "cpu", desc="", precision=precision)
            return f

        secs = interleave({"fp32 (before)": enc("fp32"), "bf16 autocast (default config)": enc("bf16")},
                          args.rounds)
        same = float((codes["fp32"] == codes["bf16"]).mean())
        report("encode", secs, len(images), enc_flops,
               {"bf16 autocast (default config)": f"{100 * same:.2f}% of codes identical to fp32"})

    if "eval" in stages:
        recs = {}

        def rec(precision):
            def f():
                out = []
                with torch.inference_mode(), autocast("cpu", precision):
                    for lo in range(0, len(images), args.batch_size):
                        xb = to_tensor(images[lo : lo + args.batch_size])
                        out.append(to_uint8(vq.decode_indices(vq.encode_to_indices(xb))))
                recs[precision] = np.concatenate(out)
            return f

        secs = interleave({"fp32 (default config)": rec("fp32"), "bf16 autocast (precision: bf16)": rec("bf16")},
                          args.rounds)
        p32, p16 = psnr_per_image(recs["fp32"], images).mean(), psnr_per_image(recs["bf16"], images).mean()
        between = psnr_per_image(recs["bf16"], recs["fp32"]).mean()
        report("eval", secs, len(images), rec_flops,
               {"fp32 (default config)": f"PSNR {p32:.3f} dB",
                "bf16 autocast (precision: bf16)": f"PSNR {p16:.3f} dB ({p16 - p32:+.3f}); {between:.1f} dB from "
                "fp32's recon"})

    if "sample" in stages:
        if args.transformer:
            gpt = load_gpt(args.transformer).eval()
        else:
            g = vq.cfg.grid
            gpt = GPT(gpt_config(vocab_size=vq.cfg.n_codes, n_classes=n_classes, block_size=g * g,
                                **DEFAULT_GPT)).eval()
        gpt16 = GPT(gpt.config).eval()
        gpt16.load_state_dict(gpt.state_dict())
        gpt16.to(torch.bfloat16)
        B, grid = args.sample_batch, (vq.cfg.grid, vq.cfg.grid)
        labels = torch.arange(B) % gpt.config.n_classes

        decoded = {}

        def sample(model, decode_precision, patches=()):
            def f():
                with torch.inference_mode(), contextlib.ExitStack() as stack:
                    for patch in patches:
                        stack.enter_context(patch())
                    codes = model.generate(labels, B, top_k=100, generator=torch.Generator().manual_seed(0))
                    with autocast("cpu", decode_precision):
                        decoded[decode_precision] = to_uint8(vq.decode_indices(codes.view(B, *grid)))
            return f

        patched = list(ablations().values())
        secs = interleave({"main's sampler, bf16 weights, fp32 decode (before)": sample(gpt16, "fp32", patched),
                           "this sampler, bf16 weights, fp32 decode (default)": sample(gpt16, "fp32"),
                           "this sampler, bf16 weights, bf16 decode": sample(gpt16, "bf16")},
                          args.rounds)
        # the same codes (same generator seed, same sampler) decoded both ways
        between = psnr_per_image(decoded["bf16"], decoded["fp32"]).mean()
        idx = torch.zeros(B, *grid, dtype=torch.long)
        with torch.no_grad():
            flops = gpt_flops_per_sequence(gpt.config) + flops_of(lambda: vq.decode_indices(idx)) / B
        report("sample", secs, B, flops,
               {"this sampler, bf16 weights, bf16 decode": f"decode {between:.1f} dB from fp32's"})

    if "fid" in stages:
        from cleanfid.resize import build_resizer

        resize = build_resizer("clean")
        n = min(args.fid_n, len(images))
        xs = torch.stack([torch.from_numpy(resize(img).transpose(2, 0, 1).copy()) for img in images[:n]])
        weights = resolve_inception_weights(None)
        ext = InceptionFeatures(weights, "cpu")
        feats = {}

        def plain():  # the extractor before: the whole loader batch through the network at once, NCHW
            with torch.no_grad():
                feats["plain"] = torch.cat([ext.net((c - 128) / 128).reshape(len(c), 2048)
                                            for c in xs.split(args.fid_batch)])

        def chunked():
            feats["chunked"] = torch.cat([ext(c) for c in xs.split(args.fid_batch)])

        def chunked_bf16():
            with autocast("cpu", "bf16"):
                feats["bf16"] = torch.cat([ext(c) for c in xs.split(args.fid_batch)]).float()

        secs = interleave({f"fp32, NCHW batches of {args.fid_batch} (before)": plain,
                           "fp32, channels-last chunks of 8 (default)": chunked,
                           "bf16 autocast, chunks of 8 (not used)": chunked_bf16}, args.rounds)
        with torch.no_grad():
            inc_flops = flops_of(lambda: ext.net((xs[:2] - 128) / 128)) / 2
        half = n // 2

        def fid(f):
            f = f.double().numpy()
            return fid_from_features(f[:half], f[half : 2 * half])

        ref = feats["plain"]
        notes = {}
        for k, name in zip(secs, ("plain", "chunked", "bf16")):
            d = float((feats[name] - ref).abs().max() / ref.abs().max())
            notes[k] = f"FID(half, half) {fid(feats[name]):.4f}; features within {d:.1e} of before"
        report("fid", secs, n, inc_flops, notes)

    after = load()
    print(f"\nmedian of {args.rounds} interleaved rounds (thread CPU time, batch {args.batch_size}); {after}")
    print(f"peak: fp32 {peak[torch.float32] / 1e9:.0f} GFLOP/s, bf16 {peak[torch.bfloat16] / 1e9:.0f} GFLOP/s "
          "(best GEMM over bench/peak.py's shapes, measured at the start)")
    print(f"{'stage':<7} {'variant':<52} {'img/s':>8} {'x first':>8} {'GFLOP/img':>10} {'% bf16 peak':>12}  agreement")
    for stage, name, rate, rel, flops, note in rows:
        share = 100 * flops * rate / peak[torch.bfloat16]
        print(f"{stage:<7} {name:<52} {rate:8.1f} {rel:7.2f}x {flops / 1e9:10.3f} {share:11.1f}%  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
