"""Evaluate a trained VQGAN on the val split, honestly: every number next to the trivial baselines and N.

    python -m vqgan.eval.recon --model results/vqgan/{ds} --data results/data/{ds}/val \
        --train-data results/data/{ds}/train --out-json results/vqgan/{ds}/recon.json \
        --out-png results/vqgan/{ds}/recon.png --recon-dir results/vqgan/{ds}/recon [--config CONFIG]

Why baselines: a VQGAN whose codebook collapsed reproduces the static background of an Atari game and scores a
PSNR that looks fine on its own (27.5 dB) but is *below* a constant image. So next to PSNR we report:
- the per-pixel **mean** and **median** image of the *training* split as predictions for every val image (computed
  from train only, so no val information leaks into the baseline);
- a **foreground** error: MAE/PSNR only on pixels that differ from the train median (the background) by more than
  `fg_threshold` on any channel -- the sprites in Atari, most of the image in COCO -- with the fraction of such
  pixels, for the model and for both baselines;
- codebook usage (fraction of codes used) and perplexity over the *whole* val split;
- LPIPS (VGG) when its weights are available, else null with the reason.

All pixel metrics are on uint8 0-255 values: the reconstruction is rounded to uint8 first (what a PNG holds).
PSNR is per image then averaged over images (capped at 100 dB so one perfect image cannot make the mean infinite);
foreground metrics pool all foreground pixels of the evaluated images (a single image can have none).
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch

from vqgan.data.dataset import DatasetError, evenly_spaced, read_split
from vqgan.io.checkpoint import load_vqgan
from vqgan.io.cli import command, load_config_arg
from vqgan.io.files import prepare_output, write_json_atomic
from vqgan.io.images import PngFolderWriter, abs_diff, grid, save_png, to_tensor, to_uint8
from vqgan.io.weights import lpips_state_dict
from vqgan.models.lpips import LPIPS

PSNR_CAP_DB = 100.0


@dataclass
class EvalConfig:
    """`vqgan.eval` keys."""

    max_images: int | None = 1000   # evenly spaced val subset; None: every val image
    grid_images: int = 8            # columns of recon.png
    batch_size: int = 64
    fg_threshold: int = 16          # 0-255: a pixel is foreground if any channel differs this much from the median

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "EvalConfig":
        d = dict(d or {})
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown vqgan.eval keys {unknown}; known: {sorted(f.name for f in fields(cls))}")
        cfg = cls(**d)
        try:
            bad = cfg.batch_size < 1 or cfg.grid_images < 0 or not 0 <= cfg.fg_threshold < 255
        except TypeError:  # a value of the wrong type, e.g. batch_size: "64"
            bad = True
        if bad:
            raise ValueError(f"invalid vqgan.eval config {asdict(cfg)}")
        if cfg.max_images is not None and (not isinstance(cfg.max_images, int) or cfg.max_images < 1):
            raise ValueError(f"vqgan.eval.max_images must be >= 1 or null, got {cfg.max_images}")
        return cfg


# ----------------------------------------------------------------------------------------------------------------
# Metrics (numpy, uint8 in, floats out)


def train_baselines(train_images: np.ndarray, rows_per_chunk: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel mean and median (H, W, 3) float32 of the training images, in row chunks to bound memory."""
    n, h, w, c = train_images.shape
    if n == 0:
        raise ValueError("train_baselines: the training split is empty")
    mean = np.empty((h, w, c), np.float32)
    median = np.empty((h, w, c), np.float32)
    for r0 in range(0, h, rows_per_chunk):
        block = np.asarray(train_images[:, r0 : r0 + rows_per_chunk])
        mean[r0 : r0 + rows_per_chunk] = block.mean(axis=0, dtype=np.float64)
        median[r0 : r0 + rows_per_chunk] = np.median(block, axis=0)
    return mean, median


def class_baselines(train_images: np.ndarray, train_labels: np.ndarray | None,
                    n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class per-pixel mean and median images, (C, H, W, 3) float32, from the training split only.

    On multi-game Atari data one mean image over all games is a blur of three screens (12.7 dB on our 3-game val
    split) that any model beats; the honest constant predictor knows the game, so each val image is compared
    with the mean/median of its own class's training images."""
    if train_labels is None or n_classes <= 1:
        mean, median = train_baselines(train_images)
        return mean[None], median[None]
    labels = np.asarray(train_labels)
    out = [train_baselines(train_images[np.flatnonzero(labels == c)]) for c in range(n_classes)]
    return np.stack([m for m, _ in out]), np.stack([d for _, d in out])


def psnr_per_image(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """PSNR in dB of each image (N, H, W, 3) on the 0-255 scale; `pred` may be one (H, W, 3) image for all."""
    err = (np.asarray(pred, np.float64) - np.asarray(target, np.float64)) ** 2
    mse = err.reshape(len(target), -1).mean(axis=1)
    with np.errstate(divide="ignore"):
        psnr = 10.0 * np.log10(255.0**2 / mse)
    return np.minimum(psnr, PSNR_CAP_DB)


def foreground_mask(images: np.ndarray, background: np.ndarray, threshold: float) -> np.ndarray:
    """(N, H, W) bool: pixels where any channel differs from the background by more than `threshold` (0-255)."""
    diff = np.abs(np.asarray(images, np.float32) - np.asarray(background, np.float32))
    return (diff > threshold).any(axis=-1)


class ErrorSums:
    """Running sums for whole-image PSNR (per image), MAE, and pooled foreground MAE/MSE of one predictor."""

    def __init__(self):
        self.psnr: list[np.ndarray] = []
        self.abs_sum = 0.0
        self.count = 0
        self.fg_abs = 0.0
        self.fg_sq = 0.0
        self.fg_count = 0

    def add(self, pred: np.ndarray, target: np.ndarray, mask: np.ndarray) -> None:
        pred = np.broadcast_to(np.asarray(pred, np.float64), target.shape)
        d = pred - target.astype(np.float64)
        self.psnr.append(psnr_per_image(pred, target))
        self.abs_sum += float(np.abs(d).sum())
        self.count += d.size
        fg = d[mask]  # (pixels, 3)
        self.fg_abs += float(np.abs(fg).sum())
        self.fg_sq += float((fg**2).sum())
        self.fg_count += fg.size

    def summary(self) -> dict[str, float | None]:
        fg_mse = self.fg_sq / self.fg_count if self.fg_count else None
        return {
            "psnr": float(np.concatenate(self.psnr).mean()),
            "mae": self.abs_sum / self.count,
            "fg_mae": self.fg_abs / self.fg_count if self.fg_count else None,
            "fg_psnr": (min(PSNR_CAP_DB, 10 * math.log10(255.0**2 / fg_mse)) if fg_mse else
                        (PSNR_CAP_DB if fg_mse == 0.0 else None)),
        }


def codebook_summary(counts: np.ndarray) -> dict[str, float]:
    """Usage (fraction of codes used at least once) and perplexity (exp entropy of the code histogram)."""
    total = counts.sum()
    p = counts[counts > 0] / max(total, 1)
    return {
        "n_codes": int(len(counts)),
        "codes_used": int((counts > 0).sum()),
        "usage": float((counts > 0).mean()),
        "perplexity": float(np.exp(-(p * np.log(p)).sum())) if total else 0.0,
    }


# ----------------------------------------------------------------------------------------------------------------


def _load_lpips(weights_dir: str | None, device):
    """(LPIPS module, None) or (None, reason): evaluation goes on without LPIPS, and says why."""
    try:
        lpips = LPIPS()
        lpips.load_state_dict(lpips_state_dict(weights_dir, allow_download=False))
        return lpips.to(device), None
    except Exception as e:  # missing weights, missing package: report, don't fail the evaluation
        return None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".strip()


def evaluate(model, val_images: np.ndarray, train_images: np.ndarray, cfg: EvalConfig, device="cpu",
             lpips=None, recon_writer: PngFolderWriter | None = None, val_labels: np.ndarray | None = None,
             train_labels: np.ndarray | None = None,
             class_names: list[str] | None = None) -> tuple[dict[str, Any], np.ndarray]:
    """Reconstruct val images; return (metrics dict, recon grid image). `model` is a VQGAN in eval mode.

    With labels (the Atari game), baselines are per class and `per_class` breaks every number down by class."""
    class_names = list(class_names or ["all"])
    n_classes = len(class_names) if val_labels is not None and train_labels is not None else 1
    mean_imgs, median_imgs = class_baselines(train_images, train_labels, n_classes)
    val_labels = np.zeros(len(val_images), np.int64) if n_classes == 1 else np.asarray(val_labels, np.int64)
    n_codes = int(model.cfg.n_codes)
    eval_idx = evenly_spaced(len(val_images), cfg.max_images)
    eval_set = set(eval_idx.tolist())
    grid_idx = set(evenly_spaced(len(eval_idx), cfg.grid_images).tolist()) if cfg.grid_images else set()
    sums = {"model": ErrorSums(), "baseline_mean": ErrorSums(), "baseline_median": ErrorSums()}
    per_class = [{k: ErrorSums() for k in sums} for _ in range(n_classes)]
    lp_sums = {"model": 0.0, "baseline_mean": 0.0}
    counts = np.zeros(n_codes, np.int64)
    fg_pixels, all_pixels = 0, 0
    originals, recons = [], []
    seen = 0  # position within eval_idx (the grid picks among evaluated images)

    # Usage is over the WHOLE val split; reconstructions and pixel metrics over the evaluated subset.
    from tqdm.auto import tqdm

    with torch.inference_mode():
        for b0 in tqdm(range(0, len(val_images), cfg.batch_size), desc="eval", file=sys.stderr):
            batch = np.asarray(val_images[b0 : b0 + cfg.batch_size])
            x = to_tensor(batch, device)
            idx = model.encode_to_indices(x)
            counts += np.bincount(idx.reshape(-1).cpu().numpy(), minlength=n_codes)[:n_codes]
            keep = np.array([b0 + i in eval_set for i in range(len(batch))])
            if not keep.any():
                continue
            target = batch[keep]
            rec = to_uint8(model.decode_indices(idx[torch.from_numpy(keep).to(idx.device)]))
            cls = val_labels[b0 : b0 + len(batch)][keep]
            mean_b, median_b = mean_imgs[cls], median_imgs[cls]  # each image's own class baseline
            mask = foreground_mask(target, median_b, cfg.fg_threshold)
            fg_pixels += int(mask.sum())
            all_pixels += mask.size
            for name, pred in (("model", rec), ("baseline_mean", mean_b), ("baseline_median", median_b)):
                sums[name].add(pred, target, mask)
                for c in np.unique(cls):
                    rows = cls == c
                    per_class[c][name].add(pred[rows], target[rows], mask[rows])
            if lpips is not None:
                xt = to_tensor(target, device)
                mean_t = to_tensor(np.clip(mean_b.round(), 0, 255).astype(np.uint8), device)
                lp_sums["model"] += float(lpips(to_tensor(rec, device), xt).sum())
                lp_sums["baseline_mean"] += float(lpips(mean_t, xt).sum())
            if recon_writer is not None:
                recon_writer.add(rec)
            for j in range(len(target)):
                if seen + j in grid_idx:
                    originals.append(target[j])
                    recons.append(rec[j])
            seen += len(target)

    n = len(eval_idx)
    s = {k: v.summary() for k, v in sums.items()}
    metrics: dict[str, Any] = {
        "n_images": int(n),
        "n_val_images": int(len(val_images)),
        "n_train_images": int(len(train_images)),
        "resolution": int(val_images.shape[1]),
        "psnr": s["model"]["psnr"],
        "psnr_baseline_mean": s["baseline_mean"]["psnr"],
        "psnr_baseline_median": s["baseline_median"]["psnr"],
        "psnr_gain_over_mean_db": s["model"]["psnr"] - s["baseline_mean"]["psnr"],
        "mae": s["model"]["mae"],
        "mae_baseline_mean": s["baseline_mean"]["mae"],
        "mae_baseline_median": s["baseline_median"]["mae"],
        "fg_threshold": cfg.fg_threshold,
        "fg_fraction": fg_pixels / all_pixels if all_pixels else 0.0,
        "fg_mae": s["model"]["fg_mae"],
        "fg_mae_baseline_mean": s["baseline_mean"]["fg_mae"],
        "fg_mae_baseline_median": s["baseline_median"]["fg_mae"],
        "fg_psnr": s["model"]["fg_psnr"],
        "fg_psnr_baseline_mean": s["baseline_mean"]["fg_psnr"],
        "fg_psnr_baseline_median": s["baseline_median"]["fg_psnr"],
        **codebook_summary(counts),
        "codebook_images": int(len(val_images)),
        "lpips": lp_sums["model"] / n if lpips is not None else None,
        "lpips_baseline_mean": lp_sums["baseline_mean"] / n if lpips is not None else None,
        "psnr_cap_db": PSNR_CAP_DB,
        "baselines": "per-pixel mean/median image of the train split" + (" per class" if n_classes > 1 else ""),
    }
    if n_classes > 1:
        metrics["per_class"] = {}
        for c, name in enumerate(class_names):
            if not per_class[c]["model"].psnr:
                continue
            pc = {k: v.summary() for k, v in per_class[c].items()}
            metrics["per_class"][name] = {
                "n_images": int(sum(len(a) for a in per_class[c]["model"].psnr)),
                "psnr": pc["model"]["psnr"],
                "psnr_baseline_mean": pc["baseline_mean"]["psnr"],
                "psnr_baseline_median": pc["baseline_median"]["psnr"],
                "psnr_gain_over_mean_db": pc["model"]["psnr"] - pc["baseline_mean"]["psnr"],
                "fg_mae": pc["model"]["fg_mae"],
                "fg_mae_baseline_median": pc["baseline_median"]["fg_mae"],
            }
    if originals:
        o, r = np.stack(originals), np.stack(recons)
        scale = max(1, min(4, 128 // o.shape[1]))
        picture = grid([o, r, abs_diff(o, r)], scale=scale)
    else:
        picture = np.zeros((8, 8, 3), np.uint8)
    return metrics, picture


def format_report(m: dict[str, Any]) -> str:
    """Every number next to its baselines and N."""
    def f(v, unit=""):
        return "n/a" if v is None else f"{v:.3f}{unit}"

    lines = [
        f"N = {m['n_images']} val images ({m['resolution']} px); baselines from {m['n_train_images']} train images",
        f"{'metric':<22}{'model':>12}{'mean image':>14}{'median image':>14}",
        f"{'PSNR (dB)':<22}{f(m['psnr']):>12}{f(m['psnr_baseline_mean']):>14}{f(m['psnr_baseline_median']):>14}",
        f"{'MAE (0-255)':<22}{f(m['mae']):>12}{f(m['mae_baseline_mean']):>14}{f(m['mae_baseline_median']):>14}",
        f"{'fg MAE (0-255)':<22}{f(m['fg_mae']):>12}{f(m['fg_mae_baseline_mean']):>14}"
        f"{f(m['fg_mae_baseline_median']):>14}",
        f"{'fg PSNR (dB)':<22}{f(m['fg_psnr']):>12}{f(m['fg_psnr_baseline_mean']):>14}"
        f"{f(m['fg_psnr_baseline_median']):>14}",
        f"{'LPIPS':<22}{f(m['lpips']):>12}{f(m['lpips_baseline_mean']):>14}{'':>14}"
        + ("" if m["lpips"] is not None else f"  ({m.get('lpips_unavailable')})"),
        f"foreground: {100 * m['fg_fraction']:.2f}% of pixels (threshold {m['fg_threshold']}/255 vs train median)",
        f"codebook over all {m['codebook_images']} val images: {m['codes_used']}/{m['n_codes']} codes used "
        f"({100 * m['usage']:.1f}%), perplexity {m['perplexity']:.1f}",
        f"baselines: {m['baselines']}",
    ]
    for name, c in m.get("per_class", {}).items():
        lines.append(f"  {name:<14} N={c['n_images']:<5} PSNR {f(c['psnr'])} vs mean image {f(c['psnr_baseline_mean'])}"
                     f" ({c['psnr_gain_over_mean_db']:+.2f} dB), fg MAE {f(c['fg_mae'])} vs median image "
                     f"{f(c['fg_mae_baseline_median'])}")
    return "\n".join(lines)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m vqgan.eval.recon",
                                description="Reconstruct the val split; PSNR/foreground/usage next to baselines.")
    p.add_argument("--model", required=True, help="folder with model.safetensors + config.json (results/vqgan/{ds})")
    p.add_argument("--data", required=True, help="val split folder (results/data/{ds}/val)")
    p.add_argument("--train-data", required=True, help="train split folder: the baselines come from it only")
    p.add_argument("--out-json", required=True, help="recon.json")
    p.add_argument("--out-png", required=True, help="recon.png: originals / reconstructions / |difference|")
    p.add_argument("--recon-dir", default=None, help="write every evaluated reconstruction as PNG here (rFID)")
    p.add_argument("--config", default=None, help="the vqgan section (its `eval` keys are used) or the eval keys")
    p.add_argument("--weights-dir", default="resources/weights", help="LPIPS/VGG16 weights (LPIPS skipped if absent)")
    p.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    return p.parse_args(argv)


@command
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    section = load_config_arg(args.config) if args.config else {}
    cfg = EvalConfig.from_dict(section.get("eval", {}) if "eval" in section or "train" in section
                               or "model" in section else section)
    for out in (args.out_json, args.out_png, args.recon_dir):
        if out:
            prepare_output(out)  # an unwritable output fails now, not after the evaluation
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_vqgan(args.model, map_location=device).eval()
    val, train = read_split(args.data), read_split(args.train_data)
    if val.resolution != model.cfg.resolution or train.resolution != model.cfg.resolution:
        raise DatasetError(f"resolution mismatch: model {model.cfg.resolution} px, val {val.resolution} px "
                           f"({args.data}), train {train.resolution} px ({args.train_data}); evaluate the "
                           "dataset the model was trained on")
    lpips, why = _load_lpips(args.weights_dir, device)
    writer = PngFolderWriter(args.recon_dir) if args.recon_dir else None
    try:
        metrics, picture = evaluate(model, val.images, train.images, cfg, device, lpips, writer,
                                    val_labels=val.labels, train_labels=train.labels, class_names=val.class_names)
        if writer is not None:
            writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    metrics.update(model=str(args.model), data=str(args.data), train_data=str(args.train_data),
                   eval_config=asdict(cfg), recon_dir=str(args.recon_dir) if args.recon_dir else None,
                   lpips_unavailable=why)
    save_png(args.out_png, picture)
    write_json_atomic(args.out_json, metrics)
    print(format_report(metrics), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
