"""Evaluate a trained VQGAN on the val split, honestly: every number next to the trivial baselines and N.

    python -m vqgan.eval.recon --model results/vqgan/{ds}/{variant} --data results/data/{ds}/val \
        --train-data results/data/{ds}/train --out-json results/vqgan/{ds}/{variant}/recon.json \
        --out-png results/vqgan/{ds}/{variant}/recon.png --recon-dir results/vqgan/{ds}/{variant}/recon \
        [--recon-train-dir results/vqgan/{ds}/{variant}/recon_train --recon-train-n FID_N] [--config CONFIG]

Why baselines: a VQGAN whose codebook collapsed reproduces the static background of an Atari game and scores a
PSNR that looks fine on its own (27.5 dB) but is *below* a constant image. So next to PSNR we report:
- the per-pixel **mean** and **median** image of the *training* split as predictions for every val image (computed
  from train only, so no val information leaks into the baseline), per game on multi-game Atari data;
- **object scores** where the data has object truth (objects.csv, Atari games with RAM rules): object recall, the
  share of object instances the reconstruction keeps, and box MAE/PSNR, beside the mean and median images'
  (vqgan/eval/object_scores.py has the definition); per game and per object class, with N;
- codebook usage (fraction of codes used) and perplexity over the *whole* val split;
- LPIPS (VGG) when its weights are available, else null with the reason;
- the same for each external evaluation set (`--eval-sets`: folders of raw ALE screens, vqgan/eval/eval_sets.py),
  with objects found from pixels where the game has pixel rules.

Besides the val reconstructions (`--recon-dir`, rFID) it writes the reconstructions of the train images the fid
stage compares samples with (`--recon-train-dir`: fid.n of them, picked as that stage picks them), for its copy rate
against reconstructions (vqgan.eval.fid.score_recon_and_copies).

All pixel metrics are on uint8 0-255 values: the reconstruction is rounded to uint8 first (what a PNG holds).
PSNR is per image then averaged over images (capped at 100 dB so one perfect image cannot make the mean infinite).
recon.png shows originals (object boxes outlined, dotted where the object is not drawn), reconstructions and
|difference|.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from vqgan.config.sections import EvalConfig, FIDConfig, PaletteConfig
from vqgan.data.dataset import DatasetError, evenly_spaced, read_split
from vqgan.data.object_masks import outward_boxes
from vqgan.data.palette import Snapper
from vqgan.device import job_device
from vqgan.eval.eval_sets import EvalSet, check_eval_sets, native_screens, pixel_objects, preprocess
from vqgan.eval.object_scores import PSNR_CAP_DB, ObjectScores, definition, empty_summary
from vqgan.io.checkpoint import load_vqgan, model_files
from vqgan.io.cli import UsageError, at_least, command, device_name, load_config_arg
from vqgan.io.files import prepare_output, refuse_overlap, write_json_atomic
from vqgan.io.images import PngFolderWriter, abs_diff, grid, labelled, save_png, to_tensor, to_uint8
from vqgan.io.progress import progress_bar
from vqgan.io.weights import lpips_state_dict
from vqgan.models.lpips import LPIPS
from vqgan.precision import autocast, resolve

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


def level_groups(val_labels: np.ndarray, val_levels: np.ndarray | None, eval_idx: np.ndarray) -> list[tuple[int, int]]:
    """(class, level) pairs to break down: every level of each class that shows more than one level among the
    evaluated val images (Ms. Pac-Man's four mazes; not Pong's single court)."""
    if val_levels is None:
        return []
    pairs = sorted(set(zip(np.asarray(val_labels)[eval_idx].tolist(), np.asarray(val_levels)[eval_idx].tolist())))
    classes = [c for c, _ in pairs]
    return [(c, lv) for c, lv in pairs if classes.count(c) > 1]


def level_mean_images(train_images: np.ndarray, train_labels: np.ndarray | None, train_levels: np.ndarray | None,
                      groups: list[tuple[int, int]]) -> dict[tuple[int, int], tuple[np.ndarray | None, int]]:
    """(class, level) -> (the per-pixel mean of that level's training images, their count): each maze's own
    background, a stronger constant than the game's mean over all its mazes. (None, 0) for a level the training
    split never reached."""
    out = {}
    labels = np.zeros(len(train_images), np.int64) if train_labels is None else np.asarray(train_labels)
    levels = None if train_levels is None else np.asarray(train_levels)
    for c, lv in groups:
        idx = np.array([], np.int64) if levels is None else np.flatnonzero((labels == c) & (levels == lv))
        out[(c, lv)] = (train_baselines(train_images[idx])[0], len(idx)) if len(idx) else (None, 0)
    return out


def psnr_per_image(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """PSNR in dB of each image (N, H, W, 3) on the 0-255 scale; `pred` may be one (H, W, 3) image for all."""
    err = (np.asarray(pred, np.float64) - np.asarray(target, np.float64)) ** 2
    mse = err.reshape(len(target), -1).mean(axis=1)
    with np.errstate(divide="ignore"):
        psnr = 10.0 * np.log10(255.0**2 / mse)
    return np.minimum(psnr, PSNR_CAP_DB)


class ErrorSums:
    """Running sums for whole-image PSNR (per image) and MAE of one predictor."""

    def __init__(self):
        self.psnr: list[np.ndarray] = []
        self.abs_sum = 0.0
        self.count = 0

    def add(self, pred: np.ndarray, target: np.ndarray) -> None:
        pred = np.broadcast_to(np.asarray(pred, np.float64), target.shape)
        d = pred - target.astype(np.float64)
        self.psnr.append(psnr_per_image(pred, target))
        self.abs_sum += float(np.abs(d).sum())
        self.count += d.size

    def summary(self) -> dict[str, float]:
        return {"psnr": float(np.concatenate(self.psnr).mean()), "mae": self.abs_sum / self.count}


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


def load_lpips(weights_dir: str | None, device):
    """(LPIPS module, None) or (None, reason): evaluation goes on without LPIPS, and says why."""
    try:
        lpips = LPIPS()
        lpips.load_state_dict(lpips_state_dict(weights_dir, allow_download=False))
        return lpips.to(device), None
    except Exception as e:  # missing weights, missing package: report, don't fail the evaluation
        return None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".strip()


class ObjectIndex:
    """The object rows of the images being evaluated, ready for per-batch lookups: sorted by image, boxes rounded
    outward, each with its group (the game) and visible flag (1 where the table has no such column)."""

    def __init__(self, objects, labels: np.ndarray, class_names: list[str], resolution: int):
        order = np.argsort(objects["frame"].to_numpy(), kind="stable")
        o = objects.iloc[order]
        self.frame = o["frame"].to_numpy(np.int64)
        self.cls = o["class"].astype(str).to_numpy(object)
        self.id = o["id"].to_numpy(np.int64)
        self.visible = o["visible"].to_numpy().astype(bool) if "visible" in o.columns else np.ones(len(o), bool)
        self.float_boxes = o[["x0", "y0", "x1", "y1"]].to_numpy(np.float64)
        self.boxes = outward_boxes(*self.float_boxes.T, resolution)
        self.group = np.asarray(class_names, object)[np.asarray(labels)[self.frame]] if len(o) else \
            np.zeros(0, object)

    def rows(self, images: np.ndarray) -> np.ndarray:
        """Indices of the rows on the images `images` (sorted val indices)."""
        lo, hi = np.searchsorted(self.frame, images[0]), np.searchsorted(self.frame, images[-1], side="right")
        r = np.arange(lo, hi)
        return r[np.isin(self.frame[r], images)]


GRID_UNBOXED = {"brick"}  # Breakout's wall: 108 outlines would hide it, and it is rarely what a model loses


def boxed_originals(originals: np.ndarray, frames: list[int], index: ObjectIndex | None,
                    classes: dict[str, list[str]], scale: int) -> np.ndarray:
    """The originals upscaled by `scale` (nearest) with their object boxes outlined (vqgan.data.atari_pixels.draw_boxes:
    one colour per object class, dotted where the object is not drawn on that frame), except GRID_UNBOXED."""
    big = originals.repeat(scale, axis=1).repeat(scale, axis=2)
    if index is None:
        return big
    from vqgan.data.atari_pixels import GameObject, draw_boxes

    out = []
    for img, f in zip(big, frames):
        r = index.rows(np.array([f]))
        r = r[~np.isin(index.cls[r], list(GRID_UNBOXED))]
        objs = [GameObject(index.cls[i], int(index.id[i]), tuple(index.float_boxes[i] * scale), bool(index.visible[i]))
                for i in r]
        game = index.group[r[0]] if len(r) else None
        names = list(classes.get(game) or dict.fromkeys(index.cls[r]))
        out.append(draw_boxes(img, objs, names) if objs else img)
    return np.stack(out)


# ----------------------------------------------------------------------------------------------------------------
# evaluate(): one pass over the val split; each metric family keeps its own tally


def reconstructions(model, val_images: np.ndarray, eval_idx: np.ndarray, cfg: EvalConfig, device, counts: np.ndarray,
                    desc: str = "eval", snapper: Snapper | None = None):
    """Encode the whole val split batch by batch, adding each code's uses to `counts`, and decode the evaluated
    images: yields (their val indices, sorted; the originals; the uint8 reconstructions) per batch that has any.
    With `snapper` (vqgan.palette) the reconstructions are snapped onto the training palette, as samples are.
    (reconstruct_train passes its picked train images as `val_images`, every one evaluated.)"""
    eval_set = set(eval_idx.tolist())
    n_codes = len(counts)
    for b0 in progress_bar(range(0, len(val_images), cfg.batch_size), desc=desc, file=sys.stderr):
        batch = np.asarray(val_images[b0 : b0 + cfg.batch_size])
        x = to_tensor(batch, device)
        with autocast(device, cfg.precision):
            idx = model.encode_to_indices(x)
        counts += np.bincount(idx.reshape(-1).cpu().numpy(), minlength=n_codes)[:n_codes]
        keep = np.array([b0 + i in eval_set for i in range(len(batch))])
        if not keep.any():
            continue
        with autocast(device, cfg.precision):
            rec = to_uint8(model.decode_indices(idx[torch.from_numpy(keep).to(idx.device)]))
        yield b0 + np.flatnonzero(keep), batch[keep], snapper(rec) if snapper is not None else rec


class Picked:
    """`images[idx]`, read a slice at a time: a memory-mapped split's picked rows are never all in memory at once."""

    def __init__(self, images: np.ndarray, idx: np.ndarray):
        self.images, self.idx = images, idx

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, rows: slice) -> np.ndarray:
        return np.asarray(self.images[self.idx[rows]])


def reconstruct_train(model, train_images: np.ndarray, n: int, cfg: EvalConfig, device, folder: str,
                      snapper: Snapper | None = None) -> int:
    """Write the reconstructions of the `n` train images the fid stage's floor and copy test use (evenly spaced,
    picked as vqgan.eval.fid.real_features picks them) as PNGs into `folder`, whole or not at all: the copy test
    against reconstructions compares samples with these. -> how many were written."""
    picked = Picked(train_images, evenly_spaced(len(train_images), n))
    unused = np.zeros(int(model.cfg.n_codes), np.int64)  # codebook usage is the val split's alone
    writer = PngFolderWriter(folder)
    try:
        with torch.inference_mode():
            for _, _, rec in reconstructions(model, picked, np.arange(len(picked)), cfg, device, unused, "train",
                                              snapper):
                writer.add(rec)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return len(picked)


class PixelErrors:
    """Whole-image PSNR/MAE of the model and of the mean/median image baselines, overall and per class."""

    def __init__(self, n_classes: int):
        predictors = ("model", "baseline_mean", "baseline_median")
        self.all = {k: ErrorSums() for k in predictors}
        self.per_class = [{k: ErrorSums() for k in predictors} for _ in range(n_classes)]

    def add(self, preds: dict[str, np.ndarray], target: np.ndarray, cls: np.ndarray) -> None:
        for name, pred in preds.items():
            self.all[name].add(pred, target)
            for c in np.unique(cls):
                rows = cls == c
                self.per_class[c][name].add(pred[rows], target[rows])

    @staticmethod
    def summary(sums: dict[str, ErrorSums]) -> dict[str, float]:
        s = {k: v.summary() for k, v in sums.items()}
        return {
            "psnr": s["model"]["psnr"],
            "psnr_baseline_mean": s["baseline_mean"]["psnr"],
            "psnr_baseline_median": s["baseline_median"]["psnr"],
            "psnr_gain_over_mean_db": s["model"]["psnr"] - s["baseline_mean"]["psnr"],
            "mae": s["model"]["mae"],
            "mae_baseline_mean": s["baseline_mean"]["mae"],
            "mae_baseline_median": s["baseline_median"]["mae"],
        }


class LevelErrors:
    """Per (class, level) that the evaluated images show several of: the model against the game's mean image and
    against the level's own mean image from the training split (`level_groups`, `level_mean_images`)."""

    def __init__(self, val_labels: np.ndarray, val_levels: np.ndarray | None, eval_idx: np.ndarray,
                 train_images: np.ndarray, train_labels: np.ndarray | None, train_levels: np.ndarray | None):
        self.val_levels = val_levels
        self.groups = level_groups(val_labels, val_levels, eval_idx)
        self.means = level_mean_images(train_images, train_labels, train_levels, self.groups)
        self.sums = {g: {"model": ErrorSums(), "baseline_mean": ErrorSums(), "baseline_level_mean": ErrorSums()}
                     for g in self.groups}

    def add(self, images: np.ndarray, cls: np.ndarray, rec: np.ndarray, mean_b: np.ndarray,
            target: np.ndarray) -> None:
        if not self.sums:
            return
        lv = np.asarray(self.val_levels)[images]
        for g in set(zip(cls.tolist(), lv.tolist())) & self.sums.keys():
            rows = (cls == g[0]) & (lv == g[1])
            self.sums[g]["model"].add(rec[rows], target[rows])
            self.sums[g]["baseline_mean"].add(mean_b[rows], target[rows])
            if self.means[g][0] is not None:
                self.sums[g]["baseline_level_mean"].add(self.means[g][0], target[rows])

    def summary(self, c: int) -> dict[str, dict[str, Any]]:
        """Class `c`'s levels, by level name; empty when it shows only one."""
        return {str(lv): level_summary(self.sums[(cc, lv)], self.means[(cc, lv)][1]) for cc, lv in self.groups
                if cc == c}


class LpipsSums:
    """Summed LPIPS of the model and of the mean image baseline (nothing without an LPIPS module)."""

    def __init__(self, lpips, device):
        self.lpips, self.device = lpips, device
        self.sums = {"model": 0.0, "baseline_mean": 0.0}

    def add(self, rec: np.ndarray, mean_b: np.ndarray, target: np.ndarray) -> None:
        if self.lpips is None:
            return
        xt = to_tensor(target, self.device)
        mean_t = to_tensor(np.clip(mean_b.round(), 0, 255).astype(np.uint8), self.device)
        self.sums["model"] += float(self.lpips(to_tensor(rec, self.device), xt).sum())
        self.sums["baseline_mean"] += float(self.lpips(mean_t, xt).sum())

    def summary(self, n: int) -> dict[str, float | None]:
        on = self.lpips is not None
        return {"lpips": self.sums["model"] / n if on else None,
                "lpips_baseline_mean": self.sums["baseline_mean"] / n if on else None}


class GridPicks:
    """The evaluated images recon.png shows (evenly spaced among them) with their reconstructions."""

    def __init__(self, n_evaluated: int, n_grid: int):
        self.picks = set(evenly_spaced(n_evaluated, n_grid).tolist()) if n_grid else set()
        self.originals, self.recons, self.frames = [], [], []
        self.seen = 0  # position among the evaluated images

    def add(self, images: np.ndarray, target: np.ndarray, rec: np.ndarray) -> None:
        for j, v in enumerate(images):
            if self.seen + j in self.picks:
                self.originals.append(target[j])
                self.recons.append(rec[j])
                self.frames.append(int(v))
        self.seen += len(target)

    def picture(self, index: ObjectIndex | None, classes: dict[str, list[str]]) -> np.ndarray:
        """Originals (object boxes outlined) / reconstructions / |difference|, upscaled to about 128 px."""
        if not self.originals:
            return np.zeros((8, 8, 3), np.uint8)
        o, r = np.stack(self.originals), np.stack(self.recons)
        scale = max(1, min(4, 128 // o.shape[1]))
        big = [boxed_originals(o, self.frames, index, classes, scale),
               *(a.repeat(scale, axis=1).repeat(scale, axis=2) for a in (r, abs_diff(o, r)))]
        return labelled(grid(big), ["original", "reconstruction", "|difference|"])


NO_OBJECTS = "no objects found"  # the reason recall is null when the truth or the pixel detector has no object


@dataclass
class ObjectTally:
    """Object recall and box errors on the evaluated images that have object truth (`ObjectIndex`), and which
    groups (games) have truth; without truth, the reason (`why`)."""

    index: ObjectIndex | None
    scores: ObjectScores
    groups: set[str]
    why: str | None

    @classmethod
    def start(cls, objects, val_labels, class_names: list[str], resolution: int, cfg: EvalConfig,
              truth: dict[str, Any]) -> "ObjectTally":
        found = objects is not None and len(objects) > 0  # edge data: black or noise frames hold no object
        index = ObjectIndex(objects, val_labels, class_names, resolution) if found else None
        why = None if found else truth.get("why") or (
            f"{NO_OBJECTS} in any of the {len(val_labels)} frames (black or noise frames?)" if objects is not None
            else "no object truth (no objects.csv: COCO, or no Atari game with RAM rules in atari_collect/objects.py)")
        return cls(index, ObjectScores(cfg.object_min_error, cfg.object_keep_ratio),
                   set(truth.get("games", class_names if index is not None else [])), why)

    def add(self, images: np.ndarray, preds: dict[str, np.ndarray], target: np.ndarray) -> None:
        if self.index is None:
            return
        index = self.index
        r = index.rows(images)
        self.scores.add(preds, target, np.searchsorted(images, index.frame[r]), index.boxes[r], index.group[r],
                        index.cls[r], index.visible[r])

    def summary(self, cfg: EvalConfig) -> dict[str, Any]:
        """The overall scores and the `objects` record: availability, definition, games, per object class."""
        on, scores = self.index is not None, self.scores
        return {
            **(scores.summary() if on else empty_summary()),
            "objects": {
                "available": on,
                "unavailable_reason": self.why,
                "definition": definition(cfg.object_min_error, cfg.object_keep_ratio),
                "games": sorted(self.groups),
                "per_object_class": {f"{g}/{c}": scores.summary(g, c) for g in scores.groups()
                                     for c in scores.classes(g)} if on else {},
            },
        }

    def class_summary(self, name: str) -> dict[str, Any]:
        """One class's (game's) scores, per object class, or why it has none."""
        has = self.index is not None and name in self.groups
        return {
            **(self.scores.summary(name) if has else empty_summary()),
            "objects_unavailable_reason": None if has else (self.why or f"no object truth (no RAM rules for {name})"),
            "per_object_class": {o: self.scores.summary(name, o) for o in self.scores.classes(name)} if has else {},
        }


def per_class_metrics(pixels: PixelErrors, levels: LevelErrors, objects: ObjectTally,
                      class_names: list[str]) -> dict[str, dict[str, Any]]:
    """Each class with evaluated images: pixel errors against its own baselines, objects, and its levels."""
    out = {}
    for c, name in enumerate(class_names):
        if not pixels.per_class[c]["model"].psnr:
            continue
        pc = PixelErrors.summary(pixels.per_class[c])
        pc.pop("mae_baseline_median")  # per class, MAE is compared with the mean image only
        out[name] = {"n_images": int(sum(len(a) for a in pixels.per_class[c]["model"].psnr)), **pc,
                     **objects.class_summary(name)}
        if lv := levels.summary(c):
            out[name]["per_level"] = lv
    return out


def evaluate(model, val_images: np.ndarray, train_images: np.ndarray, cfg: EvalConfig, device="cpu",
             lpips=None, recon_writer: PngFolderWriter | None = None, val_labels: np.ndarray | None = None,
             train_labels: np.ndarray | None = None, class_names: list[str] | None = None,
             objects=None, object_truth: dict[str, Any] | None = None,
             baselines: tuple[np.ndarray, np.ndarray] | None = None, val_levels: np.ndarray | None = None,
             train_levels: np.ndarray | None = None, snapper: Snapper | None = None,
             ) -> tuple[dict[str, Any], np.ndarray]:
    """Reconstruct val images; return (metrics dict, recon grid image). `model` is a VQGAN in eval mode.

    With labels (the Atari game), baselines are per class and `per_class` breaks every number down by class.
    With `objects` (objects.csv rows, `frame` = index into val_images) the object scores are added, overall, per
    class and per object class; `object_truth` (the manifest's record) says which classes (games) have truth.
    `baselines` = (mean, median) images per class, (C, H, W, 3), when already computed (external frame sets).
    With `val_levels` (the game's level per frame: Ms. Pac-Man's maze) `per_class` also breaks each game that shows
    several levels down `per_level`, against the game's mean image and against the level's own (`train_levels`).
    With `snapper` every reconstruction is snapped onto the training palette first (vqgan.data.palette)."""
    class_names = list(class_names or ["all"])
    n_classes = len(class_names) if val_labels is not None and train_labels is not None else 1
    mean_imgs, median_imgs = baselines if baselines is not None else class_baselines(train_images, train_labels,
                                                                                     n_classes)
    val_labels = np.zeros(len(val_images), np.int64) if n_classes == 1 else np.asarray(val_labels, np.int64)
    resolution = int(val_images.shape[1])
    eval_idx = evenly_spaced(len(val_images), cfg.max_images)
    truth = object_truth or {}
    pixels = PixelErrors(n_classes)
    levels = LevelErrors(val_labels, val_levels, eval_idx, train_images, train_labels if n_classes > 1 else None,
                         train_levels)
    tally = ObjectTally.start(objects, val_labels, class_names, resolution, cfg, truth)
    lp = LpipsSums(lpips, device)
    picks = GridPicks(len(eval_idx), cfg.grid_images)
    counts = np.zeros(int(model.cfg.n_codes), np.int64)

    # Usage is over the WHOLE val split; reconstructions and pixel metrics over the evaluated subset.
    with torch.inference_mode():
        for images, target, rec in reconstructions(model, val_images, eval_idx, cfg, device, counts,
                                                   snapper=snapper):
            cls = val_labels[images]
            mean_b, median_b = mean_imgs[cls], median_imgs[cls]  # each image's own class baseline
            preds = {"model": rec, "baseline_mean": mean_b, "baseline_median": median_b}
            pixels.add(preds, target, cls)
            levels.add(images, cls, rec, mean_b, target)
            tally.add(images, preds, target)
            lp.add(rec, mean_b, target)
            if recon_writer is not None:
                recon_writer.add(rec)
            picks.add(images, target, rec)

    metrics: dict[str, Any] = {
        "n_images": int(len(eval_idx)),
        "n_val_images": int(len(val_images)),
        "n_train_images": int(len(train_images)),
        "resolution": resolution,
        **PixelErrors.summary(pixels.all),
        **tally.summary(cfg),
        **codebook_summary(counts),
        "codebook_images": int(len(val_images)),
        **lp.summary(len(eval_idx)),
        "psnr_cap_db": PSNR_CAP_DB,
        "baselines": "per-pixel mean/median image of the train split" + (" per class" if n_classes > 1 else ""),
    }
    if n_classes > 1:
        metrics["per_class"] = per_class_metrics(pixels, levels, tally, class_names)
    elif levels.groups:  # a one-game dataset with several levels (Ms. Pac-Man alone): the levels at the top
        metrics["per_level"] = levels.summary(0)
    return metrics, picks.picture(tally.index, truth.get("classes", {}))


def level_summary(sums: dict[str, ErrorSums], n_train: int) -> dict[str, Any]:
    """One level's numbers: the model against the game's mean image and against the level's own mean image."""
    model, game_mean = sums["model"].summary(), sums["baseline_mean"].summary()
    own = sums["baseline_level_mean"].summary() if sums["baseline_level_mean"].psnr else None
    return {
        "n_images": int(sum(len(a) for a in sums["model"].psnr)),
        "n_train_images": int(n_train),  # 0: a level the training split never reached
        "psnr": model["psnr"],
        "psnr_baseline_mean": game_mean["psnr"],
        "psnr_gain_over_mean_db": model["psnr"] - game_mean["psnr"],
        "psnr_baseline_level_mean": own["psnr"] if own else None,
        "mae": model["mae"],
        "mae_baseline_mean": game_mean["mae"],
    }


def format_report(m: dict[str, Any]) -> str:
    """Every number next to its baselines and N."""
    def f(v, fmt=".3f"):
        return "n/a" if v is None else format(v, fmt)

    def level_line(lv: str, d: dict[str, Any]) -> str:
        own = (f(d["psnr_baseline_level_mean"]) if d["psnr_baseline_level_mean"] is not None
               else "n/a: no training frames of this level")
        return (f"    level {lv:<6} N={d['n_images']:<5} PSNR {f(d['psnr'])} vs the game's mean image "
                f"{f(d['psnr_baseline_mean'])} ({d['psnr_gain_over_mean_db']:+.2f} dB), vs this level's own {own}")

    def objects_line(c: dict[str, Any]) -> str:
        if c.get("n_objects") is None:
            return "objects: n/a"
        return (f"objects: recall {f(c['object_recall'])} (mean image {f(c['object_recall_baseline_mean'])}) over "
                f"{c['n_objects_scored']} scored of {c['n_objects']} (hidden {c['n_objects_hidden']}, indistinct "
                f"{c['n_objects_indistinct']}); box PSNR {f(c['box_psnr'], '.2f')} vs mean "
                f"{f(c['box_psnr_baseline_mean'], '.2f')} / median {f(c['box_psnr_baseline_median'], '.2f')}")

    lines = [
        f"N = {m['n_images']} val images ({m['resolution']} px); baselines from {m['n_train_images']} train images",
        f"{'metric':<22}{'model':>12}{'mean image':>14}{'median image':>14}",
        f"{'PSNR (dB)':<22}{f(m['psnr']):>12}{f(m['psnr_baseline_mean']):>14}{f(m['psnr_baseline_median']):>14}",
        f"{'MAE (0-255)':<22}{f(m['mae']):>12}{f(m['mae_baseline_mean']):>14}{f(m['mae_baseline_median']):>14}",
        f"{'object recall':<22}{f(m['object_recall']):>12}{f(m['object_recall_baseline_mean']):>14}"
        f"{f(m['object_recall_baseline_median']):>14}",
        f"{'box MAE (0-255)':<22}{f(m['box_mae']):>12}{f(m['box_mae_baseline_mean']):>14}"
        f"{f(m['box_mae_baseline_median']):>14}",
        f"{'box PSNR (dB)':<22}{f(m['box_psnr']):>12}{f(m['box_psnr_baseline_mean']):>14}"
        f"{f(m['box_psnr_baseline_median']):>14}",
        f"{'LPIPS':<22}{f(m['lpips']):>12}{f(m['lpips_baseline_mean']):>14}{'':>14}"
        + ("" if m["lpips"] is not None else f"  ({m.get('lpips_unavailable')})"),
        (f"objects: {m['n_objects_scored']} scored of {m['n_objects']} instances (hidden {m['n_objects_hidden']}, "
         f"indistinct {m['n_objects_indistinct']})" if m["n_objects"] is not None
         else f"objects: {m['objects']['unavailable_reason']}"),
        f"codebook over all {m['codebook_images']} val images: {m['codes_used']}/{m['n_codes']} codes used "
        f"({100 * m['usage']:.1f}%), perplexity {m['perplexity']:.1f}",
        f"baselines: {m['baselines']}",
    ]
    for name, c in m.get("per_class", {}).items():
        below = "  BELOW ITS MEAN IMAGE" if c["psnr_gain_over_mean_db"] < 0 else ""
        lines.append(f"  {name:<14} N={c['n_images']:<5} PSNR {f(c['psnr'])} vs mean image {f(c['psnr_baseline_mean'])}"
                     f" ({c['psnr_gain_over_mean_db']:+.2f} dB){below}; {objects_line(c)}")
        for cls, o in c.get("per_object_class", {}).items():
            lines.append(f"    {cls:<12} {objects_line(o)}")
        lines += [level_line(lv, d) for lv, d in c.get("per_level", {}).items()]
    lines += [level_line(lv, d) for lv, d in m.get("per_level", {}).items()]
    for name, e in m.get("eval_sets", {}).items():
        lines.append(f"  eval set {name} ({e['game']}, {e['path']}): N={e['n_images']} PSNR {f(e['psnr'])} vs mean "
                     f"image {f(e['psnr_baseline_mean'])} ({e['psnr_gain_over_mean_db']:+.2f} dB), LPIPS "
                     f"{f(e['lpips'])}; " + (objects_line(e) if e["n_objects"] is not None else
                                              f"objects: {e['objects']['unavailable_reason']}"))
    return "\n".join(lines)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m vqgan.eval.recon",
                                description="Reconstruct the val split; PSNR/object recall/usage next to baselines.")
    p.add_argument("--model", required=True,
                   help="folder with model.safetensors + config.json (results/vqgan/{ds}/{variant})")
    p.add_argument("--data", required=True, help="val split folder (results/data/{ds}/val)")
    p.add_argument("--train-data", required=True, help="train split folder: the baselines come from it only")
    p.add_argument("--out-json", required=True, help="recon.json")
    p.add_argument("--out-png", required=True, help="recon.png: originals / reconstructions / |difference|")
    p.add_argument("--recon-dir", default=None, help="write every evaluated reconstruction as PNG here (rFID)")
    p.add_argument("--recon-train-dir", default=None,
                   help="write the reconstructions of --recon-train-n train images as PNG here (the fid stage's "
                        "copy rate against reconstructions)")
    p.add_argument("--recon-train-n", type=at_least(1), default=FIDConfig.from_dict({}).n,
                   help="how many train images, evenly spaced as the fid stage picks its train images: fid.n "
                        "(default: fid.n's default, %(default)s)")
    p.add_argument("--config", default=None,
                   help="the vqgan section (its `eval` and `palette` keys are used) or the eval keys")
    p.add_argument("--weights-dir", default="resources/weights", help="LPIPS/VGG16 weights (LPIPS skipped if absent)")
    p.add_argument("--device", type=device_name, default=None, help="cpu / cuda (default: cuda when available)")
    p.add_argument("--eval-sets", default=None, metavar="JSON",
                   help="extra frame sets, {name: {path: folder of raw 210x160 ALE screens (PNG), game: GAME}} "
                        "(datasets.<ds>.eval_sets; see vqgan/eval/eval_sets.py)")
    return p.parse_args(argv)


def split_levels(split) -> np.ndarray | None:
    """The `level` column of a split's meta.csv (Atari: the game's level, Ms. Pac-Man's maze), if it has one."""
    return split.meta["level"].to_numpy(np.int64) if "level" in split.meta.columns else None


def evaluate_eval_sets(model, sets: list[EvalSet], train, baselines, cfg: EvalConfig, device, lpips,
                       snapper: Snapper | None = None) -> dict:
    """Every external frame set preprocessed like the collector's frames and scored like the val split, against
    the training mean/median image of its game; objects from the pixels where the game has pixel rules."""
    crop = (train.manifest.get("config") or {}).get("crop")
    out = {}
    for es in sets:
        screens = native_screens(es.files)
        images = preprocess(screens, train.resolution, crop)
        objects, why = pixel_objects(es.game, screens, train.resolution, crop)
        truth = {"games": [es.game], "why": why}
        m, _ = evaluate(model, images, train.images, dataclasses.replace(cfg, grid_images=0), device, lpips,
                        val_labels=np.full(len(images), es.label), train_labels=train.labels,
                        class_names=train.class_names, objects=objects, object_truth=truth, baselines=baselines,
                        snapper=snapper)
        m.pop("per_class", None)  # one game: the set's own numbers say it all
        m["objects"]["source"] = "pixels (vqgan.data.atari_pixels.detect_objects_from_pixels)" if why is None else None
        out[es.name] = {"path": str(es.path), "game": es.game, **m,
                        "rfid": None, "rfid_unavailable": "not computed for external sets (PSNR, LPIPS, objects are)"}
    return out


def eval_set_folders(value: str | None) -> list[str]:
    """The folders an `--eval-sets` value names, for the overlap check (check_eval_sets checks the rest)."""
    raw = load_config_arg(value, "--eval-sets") if value else {}
    return [spec["path"] for spec in raw.values() if isinstance(spec, dict) and "path" in spec]


@command
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    refuse_overlap({"--out-json": args.out_json, "--out-png": args.out_png, "--recon-dir": args.recon_dir,
                    "--recon-train-dir": args.recon_train_dir},
                   {"--model": model_files(args.model), "--data": args.data, "--train-data": args.train_data,
                    "--config": args.config, "--weights-dir": args.weights_dir,
                    "--eval-sets": eval_set_folders(args.eval_sets)})
    section = load_config_arg(args.config) if args.config else {}
    whole = any(k in section for k in ("eval", "train", "model", "palette"))  # a vqgan section, or eval keys alone
    cfg = EvalConfig.from_dict(section.get("eval", {}) if whole else section)
    palette = PaletteConfig.from_dict(section.get("palette") if whole else None)
    for out, folder in ((args.out_json, False), (args.out_png, False), (args.recon_dir, True),
                        (args.recon_train_dir, True)):
        if out:
            prepare_output(out, folder)  # an unwritable output fails now, not after the evaluation
    device = torch.device(job_device(args.device))
    asked, cfg = cfg, dataclasses.replace(cfg, precision=resolve(cfg.precision, device, "vqgan.eval.precision"))
    model = load_vqgan(args.model, map_location=device).eval()
    val, train = read_split(args.data), read_split(args.train_data)
    if val.resolution != model.cfg.resolution or train.resolution != model.cfg.resolution:
        raise DatasetError(f"resolution mismatch: model {model.cfg.resolution} px, val {val.resolution} px "
                           f"({args.data}), train {train.resolution} px ({args.train_data}); evaluate the "
                           "dataset the model was trained on")
    sets, raw_sets = [], load_config_arg(args.eval_sets) if args.eval_sets else {}
    if raw_sets:
        if train.manifest.get("source") != "ale":
            raise UsageError(f"--eval-sets: {args.train_data} is not an Atari dataset; eval sets are raw ALE screens")
        sets = check_eval_sets(raw_sets, train.class_names, "--eval-sets")  # EvalSetError: one line, exit 2
    lpips, why = load_lpips(args.weights_dir, device) if cfg.lpips else (None, "off (vqgan.eval.lpips: false)")
    # the decoded frames snapped onto the training split's palette (vqgan.palette; off unless max_distance > 0)
    snapper = Snapper.fit(train.images, palette.max_distance, palette.min_share)
    writer = PngFolderWriter(args.recon_dir) if args.recon_dir else None
    n_classes = len(train.class_names)
    baselines = class_baselines(train.images, train.labels, n_classes)
    try:
        metrics, picture = evaluate(model, val.images, train.images, cfg, device, lpips, writer,
                                    val_labels=val.labels, train_labels=train.labels, class_names=val.class_names,
                                    objects=val.objects, object_truth=val.manifest.get("object_truth"),
                                    baselines=baselines, val_levels=split_levels(val),
                                    train_levels=split_levels(train), snapper=snapper)
        if writer is not None:
            writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if sets:
        metrics["eval_sets"] = evaluate_eval_sets(model, sets, train, baselines, cfg, device, lpips, snapper)
    n_recon_train = reconstruct_train(model, train.images, args.recon_train_n, cfg, device,
                                      args.recon_train_dir, snapper) if args.recon_train_dir else None
    # `precision`: what the VQGAN ran in (auto resolved on this device); eval_config: what the config said
    metrics.update(model=str(args.model), data=str(args.data), train_data=str(args.train_data),
                   precision=cfg.precision, eval_config=asdict(asked),
                   recon_dir=str(args.recon_dir) if args.recon_dir else None,
                   recon_train_dir=str(args.recon_train_dir) if args.recon_train_dir else None,
                   n_recon_train=n_recon_train, palette=snapper.summary() if snapper is not None else None,
                   lpips_unavailable=why)
    save_png(args.out_png, picture)
    write_json_atomic(args.out_json, metrics)
    print(format_report(metrics), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
