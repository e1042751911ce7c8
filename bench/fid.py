"""Benchmark: our exact Fréchet distance against clean-fid's, and where the time of a whole FID call goes.

    python bench/fid.py                       # 2048-d covariances from N=5000 features + a 40-image FID call
    python bench/fid.py --features 3000 --images 0

Part 1 times `cleanfid.fid.frechet_distance` (scipy `sqrtm` of Σ₁Σ₂) against `vqgan.eval.fid.frechet_distance`
(Cholesky + symmetric eigenvalues) on the same float64 2048×2048 covariances, prints both values, |Δ| and the
ratio. The features are "real-ish": nonnegative (ReLU, like Inception's pool features), correlated, with a decaying
spectrum; the second set is a perturbed copy so the distance is small relative to the traces, as in practice.
Part 2 runs `vqgan.eval.fid.compute_scores` on real COCO images (the shared tiny COCO) with the real Inception and prints
its timing breakdown, then compares the Fréchet step on those features with clean-fid's `fid_from_feats`.
Set OMP/OPENBLAS thread counts in the environment to compare like with like (both sides use the same BLAS).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TINY_COCO = REPO.parent / "shared" / "data" / "coco-tiny" / "tiny_coco"


def realish_features(rng: np.random.Generator, n: int, d: int, base: np.ndarray | None = None) -> np.ndarray:
    """ReLU of a correlated Gaussian with a power-law spectrum (Inception pool features are ≥ 0 and low-rank-ish)."""
    if base is None:
        base = rng.standard_normal((d, d)) * (np.arange(1, d + 1) ** -0.5)[:, None]
    z = rng.standard_normal((n, d)) @ base
    return np.maximum(z + 0.3, 0).astype(np.float32)


def timed(fn, *args, repeats: int = 1):
    best, value = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        value = fn(*args)
        best = min(best, time.perf_counter() - t)
    return value, best


def bench_frechet(n: int, d: int, seed: int, repeats: int) -> None:
    from cleanfid.fid import frechet_distance as cleanfid_frechet

    from vqgan.eval.fid import fid_from_features, frechet_distance

    rng = np.random.default_rng(seed)
    base = rng.standard_normal((d, d)) * (np.arange(1, d + 1) ** -0.5)[:, None]
    f1 = realish_features(rng, n, d, base)
    f2 = realish_features(rng, n, d, base * 1.05)
    mu1, s1 = f1.mean(0), np.cov(f1, rowvar=False)
    mu2, s2 = f2.mean(0), np.cov(f2, rowvar=False)
    print(f"== Fréchet distance, {d}x{d} float64 covariances from N={n} features per side ==")
    ref, t_ref = timed(cleanfid_frechet, mu1, s1, mu2, s2)
    ours, t_ours = timed(frechet_distance, mu1, s1, mu2, s2, repeats=repeats)
    print(f"clean-fid (scipy sqrtm)          {t_ref:8.3f} s   value {ref:.6f}")
    print(f"ours (Cholesky + eigvalsh)       {t_ours:8.3f} s   value {ours:.6f}   |Δ| = {abs(ours - ref):.2e}")
    print(f"speed-up                         {t_ref / t_ours:8.1f}x  (goal >= 10x)")
    # The pipeline's usual case: N below the feature dimension on both sides (N = 500 on a CPU).
    small = min(500, d - 1)
    g1, g2 = f1[:small], f2[:small]
    m1, c1, m2, c2 = g1.mean(0), np.cov(g1, rowvar=False), g2.mean(0), np.cov(g2, rowvar=False)
    ref_small, t_ref_small = timed(cleanfid_frechet, m1, c1, m2, c2)
    ours_small, t_small = timed(fid_from_features, g1, g2, repeats=repeats)
    print(f"N={small} (singular covariances): clean-fid {t_ref_small:.3f} s, ours from features {t_small:.4f} s "
          f"({t_ref_small / t_small:.0f}x), |Δ| = {abs(ours_small - ref_small):.2e}")
    print("  (with singular covariances sqrtm's result carries the square roots of ~1e-13 rounding eigenvalues of the\n"
          "   null space, a small upward bias of the trace term; the features route has no null space to round)")


def bench_fid_call(images: int, resolution: int) -> None:
    import pandas as pd
    from cleanfid.fid import fid_from_feats
    from PIL import Image

    from vqgan import fid as F
    from vqgan.data.coco import load_square
    from vqgan.data.dataset import write_split

    if not (TINY_COCO / "val2017").is_dir():
        print(f"(skipping the FID call: no shared tiny COCO at {TINY_COCO})")
        return
    val = sorted((TINY_COCO / "val2017").glob("*.jpg"))[:images]
    train = sorted((TINY_COCO / "train2017").glob("*.jpg"))[:images]
    print(f"\n== whole FID call: {len(val)} COCO val vs {len(train)} COCO train images at {resolution} px, "
          "real Inception, CPU ==")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        real = np.stack([load_square(p, resolution)[0] for p in val])
        split = write_split(tmp / "data" / "bench" / "val", real, pd.DataFrame({"file": [p.name for p in val]}), {})
        gen = tmp / "gen"
        gen.mkdir()
        for i, p in enumerate(train):
            Image.fromarray(load_square(p, resolution)[0]).save(gen / f"{i:05d}.png")
        cfg = F.FIDConfig.from_dict(dict(n=images, batch_size=16))
        t = time.perf_counter()
        result = F.compute_scores(split, cfg, tmp / "cache", gen_dir=gen)
        total = time.perf_counter() - t
        print(f"FID {result['fid']:.3f}  KID {result['kid_mean']:.5f} ± {result['kid_std']:.5f}  (N = {result['n_real']})")
        for key, value in result["timing_s"].items():
            print(f"  {key:22s} {value:8.3f} s")
        print(f"  {'wall':22s} {total:8.3f} s")
        per_image = (result["timing_s"]["real_features"] + result["timing_s"]["gen_features"]) / (2 * images)
        print(f"  Inception features: {per_image:.3f} s per image (incl. PNG decode and clean-fid's resize)")
        # A second call finds the real features in the cache; only the generated side goes through Inception.
        extractor = F.InceptionFeatures(F.resolve_inception_weights(None))
        real, t_cached = timed(F.real_features, split, "bench", cfg, extractor, tmp / "cache")
        assert real.cached
        files = F.select_files(gen, cfg, resolution, "gen")
        feats_gen = F.files_features(files, extractor, cfg.batch_size, "gen again")
        print(f"  real features from the cache on a second call: {t_cached:.3f} s")
        ref, t_ref = timed(fid_from_feats, real.feats, feats_gen)
        ours, t_ours = timed(F.fid_from_features, real.feats, feats_gen)
        print(f"  Fréchet step on these features: clean-fid fid_from_feats {t_ref:.3f} s vs ours {t_ours:.4f} s "
              f"({t_ref / t_ours:.0f}x), |Δ| = {abs(ours - ref):.2e}")
        print(f"  a clean-fid-style call (same features + sqrtm) would take ~{total - result['timing_s']['gen_frechet'] + t_ref:.1f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--features", type=int, default=5000, help="features per side for the covariances")
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=3, help="best-of repeats for our (fast) side")
    p.add_argument("--images", type=int, default=40, help="images per side for the whole call; 0 skips it")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    print(f"threads: OMP={os.environ.get('OMP_NUM_THREADS', 'unset')} OPENBLAS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}")
    bench_frechet(args.features, args.dim, args.seed, args.repeats)
    if args.images:
        bench_fid_call(args.images, args.resolution)


if __name__ == "__main__":
    main()
