"""Object-level reconstruction scores: does the reconstruction keep each game object?

Whole-image numbers cannot tell: an Atari VQGAN that draws the maze and no sprite scores a fine PSNR, and an error
"on pixels that differ from the median image" is fooled too (the median is wrong on every such pixel by
construction, so any reconstruction looks good beside it). With the object boxes of objects.csv
(vqgan/data/dataset.py) every object instance is scored on its own box:

- the box is rounded outward to whole pixels (every pixel the object tints, even in part);
- e(p) = mean absolute error (0-255, over the box's pixels and channels) of a prediction p against the original;
- an instance is *scored* when the game's training median image (its object-free background) misses it:
  e(median) >= `min_error`. Otherwise it is *hidden* (visible = 0: not drawn on this frame, e.g. a flickered ghost)
  or *indistinct* (the background already looks like it: an object on its usual spot, a brick wall that never
  breaks), counted but not scored;
- a scored instance is *kept* when e(reconstruction) < `keep_ratio` x e(median).

Object recall = kept / scored. The original itself scores 1; the median image scores 0 by construction (e(median)
is never below half of itself), and the mean image's recall is reported beside it. Box MAE and box PSNR pool the
scored instances' box pixels, beside the same for the mean and median images.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

PREDICTORS = ("model", "baseline_mean", "baseline_median")
PSNR_CAP_DB = 100.0  # dB: one perfect image (or box) cannot make a mean infinite


def definition(min_error: float, keep_ratio: float) -> str:
    return (f"an object instance (its objects.csv box rounded outward) is scored when the train median image's MAE "
            f"in the box is >= {min_error:g} (0-255), else counted as indistinct (or hidden when visible = 0); it is "
            f"kept when the reconstruction's MAE in the box is < {keep_ratio:g} x the median image's; "
            "recall = kept / scored")


def box_sums(pred: np.ndarray, target: np.ndarray, image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, ...]:
    """Sum of |error| and of error^2 (over pixels and channels) inside each box, and the number of values.

    `pred` and `target` are (B, H, W, 3) (pred may broadcast), `image` (k,) the image of each box in the batch,
    `boxes` (k, 4) int half-open. Summed-area tables: one pass per batch, O(1) per box.
    """
    d = np.asarray(pred, np.float64) - np.asarray(target, np.float64)
    d = np.broadcast_to(d, np.broadcast_shapes(d.shape, np.shape(target)))
    out = []
    for err in (np.abs(d).sum(-1), (d**2).sum(-1)):
        sat = np.zeros((err.shape[0], err.shape[1] + 1, err.shape[2] + 1))
        sat[:, 1:, 1:] = err.cumsum(1).cumsum(2)
        x0, y0, x1, y1 = boxes.T
        out.append(sat[image, y1, x1] - sat[image, y0, x1] - sat[image, y1, x0] + sat[image, y0, x0])
    n = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) * d.shape[-1]
    return out[0], out[1], n


class ObjectScores:
    """Per-instance box errors of the model and both baselines, accumulated over batches, summarised on demand."""

    def __init__(self, min_error: float, keep_ratio: float):
        self.min_error, self.keep_ratio = float(min_error), float(keep_ratio)
        self._parts: list[dict[str, np.ndarray]] = []
        self._joined: dict[str, np.ndarray] | None = None

    def add(self, preds: dict[str, np.ndarray], target: np.ndarray, image: np.ndarray, boxes: np.ndarray,
            group: np.ndarray, cls: np.ndarray, visible: np.ndarray) -> None:
        """One batch: `preds` maps each of PREDICTORS to its (B, H, W, 3) prediction; per instance its image in
        the batch, outward int box, group (the game's name), object class and visible flag."""
        if len(boxes) == 0:
            return
        part = {"group": np.asarray(group, object), "cls": np.asarray(cls, object),
                "visible": np.asarray(visible, bool)}
        for name in PREDICTORS:
            part[f"{name}_abs"], part[f"{name}_sq"], part["n"] = box_sums(preds[name], target, image, boxes)
        self._parts.append(part)
        self._joined = None

    def _all(self) -> dict[str, np.ndarray]:
        if self._joined is None:
            self._joined = self._join()
        return self._joined

    def _join(self) -> dict[str, np.ndarray]:
        keys = ["group", "cls", "visible", "n"] + [f"{p}_{k}" for p in PREDICTORS for k in ("abs", "sq")]
        if not self._parts:
            return {k: np.zeros(0, object if k in ("group", "cls") else float) for k in keys}
        return {k: np.concatenate([p[k] for p in self._parts]) for k in keys}

    def summary(self, group: str | None = None, cls: str | None = None) -> dict[str, Any]:
        """Counts, recall and box errors over the instances of `group` and/or `cls` (all when None)."""
        a = self._all()
        sel = np.ones(len(a["n"]), bool)
        if group is not None:
            sel &= a["group"] == group
        if cls is not None:
            sel &= a["cls"] == cls
        n = a["n"]
        mae = {p: a[f"{p}_abs"] / np.maximum(n, 1) for p in PREDICTORS}
        hidden = sel & ~a["visible"]
        indistinct = sel & a["visible"] & (mae["baseline_median"] < self.min_error)
        scored = sel & a["visible"] & ~indistinct
        out: dict[str, Any] = {
            "n_objects": int(sel.sum()),
            "n_objects_scored": int(scored.sum()),
            "n_objects_hidden": int(hidden.sum()),
            "n_objects_indistinct": int(indistinct.sum()),
        }
        for p in PREDICTORS:
            suffix = "" if p == "model" else "_" + p
            if scored.any():
                kept = mae[p][scored] < self.keep_ratio * mae["baseline_median"][scored]
                values = n[scored].sum()
                mse = a[f"{p}_sq"][scored].sum() / values
                out[f"object_recall{suffix}"] = float(kept.mean())
                out[f"box_mae{suffix}"] = float(a[f"{p}_abs"][scored].sum() / values)
                out[f"box_psnr{suffix}"] = (PSNR_CAP_DB if mse == 0 else
                                            min(PSNR_CAP_DB, 10 * math.log10(255.0**2 / mse)))
            else:
                out[f"object_recall{suffix}"] = out[f"box_mae{suffix}"] = out[f"box_psnr{suffix}"] = None
        return out

    def groups(self) -> list[str]:
        return sorted(set(self._all()["group"].tolist()))

    def classes(self, group: str | None = None) -> list[str]:
        a = self._all()
        return sorted(set(a["cls"][a["group"] == group].tolist() if group is not None else a["cls"].tolist()))


def empty_summary() -> dict[str, Any]:
    """The summary's keys, all None: for data without object truth."""
    out: dict[str, Any] = {k: None for k in ("n_objects", "n_objects_scored", "n_objects_hidden",
                                             "n_objects_indistinct")}
    for p in PREDICTORS:
        suffix = "" if p == "model" else "_" + p
        out.update({f"object_recall{suffix}": None, f"box_mae{suffix}": None, f"box_psnr{suffix}": None})
    return out
