"""Object boxes of objects.csv as pixel masks: what an object-weighted training loss needs per batch.

A split's objects.csv (vqgan/data/dataset.py) holds float, half-open boxes in the split's pixels. Training needs,
for each batch, a (B, H, W) mask of the pixels the objects tint. Materialising one mask per image would cost
N x H x W bytes (12k 64-px frames: 50 MB); instead the boxes are kept as one compact int16 table sorted by frame
(with per-frame offsets) and rasterised per batch, a few slice assignments per image.

    masks = ObjectMasks.from_split(split, ignore_classes=("brick",))
    m = masks(np.array([3, 17, 42]))       # (3, H, W) uint8, 1 inside a kept object's box
    ObjectMasks.from_split(split, balance=True)(idx)  # float32: median box area / the box's area, clipped
    ObjectMasks.from_split(split, class_balance=True)(idx)  # float32: each game's classes weigh alike
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd


def outward_boxes(x0, y0, x1, y1, resolution: int) -> np.ndarray:
    """(k, 4) int boxes: every pixel the half-open float box touches (floor x0/y0, ceil x1/y1), inside the image,
    at least one pixel each. The epsilon absorbs the CSV's rounding (10 significant digits)."""
    eps = 1e-6
    b = np.stack([np.floor(np.asarray(x0, np.float64) + eps), np.floor(np.asarray(y0, np.float64) + eps),
                  np.ceil(np.asarray(x1, np.float64) - eps), np.ceil(np.asarray(y1, np.float64) - eps)], 1)
    b = np.clip(b, 0, resolution).astype(np.int64)
    b[:, 2] = np.maximum(b[:, 2], np.minimum(b[:, 0] + 1, resolution))
    b[:, 3] = np.maximum(b[:, 3], np.minimum(b[:, 1] + 1, resolution))
    b[:, 0] = np.minimum(b[:, 0], b[:, 2] - 1)
    b[:, 1] = np.minimum(b[:, 1], b[:, 3] - 1)
    return b


class ObjectMasks:
    """Rasterises the boxes of the objects drawn on given frames (rows with visible = 0 and `ignore_classes` are
    left out: a flickered-out ghost is not in the picture, Breakout's brick wall is a third of the frame)."""

    BALANCE_CLIP = (0.125, 8.0)

    def __init__(self, objects: pd.DataFrame, n_images: int, resolution: int, ignore_classes: Iterable[str] = (),
                 balance: bool = False, labels: np.ndarray | None = None, class_balance: bool = False):
        keep = ~objects["class"].isin(list(ignore_classes)).to_numpy()
        if "visible" in objects.columns:
            keep &= objects["visible"].to_numpy() == 1
        o = objects[keep]
        frame = o["frame"].to_numpy(np.int64)
        order = np.argsort(frame, kind="stable")
        boxes = outward_boxes(*(o[c].to_numpy() for c in ("x0", "y0", "x1", "y1")), resolution)
        self.boxes = boxes[order].astype(np.int16)  # (k, 4) x0, y0, x1, y1 half-open, sorted by frame
        self.weighted = bool(balance) or bool(class_balance)  # float weights in the mask, not 0/1
        area = ((self.boxes[:, 2] - self.boxes[:, 0]) * (self.boxes[:, 3] - self.boxes[:, 1])).astype(np.float64)
        weights = np.ones(len(area))  # per box: what its pixels get in the mask
        if balance and len(area):
            weights *= np.clip(np.median(area) / area, *self.BALANCE_CLIP)
        if class_balance and len(area):
            game = np.zeros(len(frame), np.int64) if labels is None else np.asarray(labels, np.int64)[frame]
            weights *= class_weights(game[order], o["class"].to_numpy()[order], self.BALANCE_CLIP)
        self.weights = weights.astype(np.float32)
        self.offsets = np.searchsorted(frame[order], np.arange(n_images + 1))  # frame i: boxes[off[i]:off[i+1]]
        self.n_images, self.resolution = int(n_images), int(resolution)

    @classmethod
    def from_split(cls, split, ignore_classes: Iterable[str] = (), balance: bool = False,
                   class_balance: bool = False) -> "ObjectMasks":
        """From a `vqgan.data.dataset.Split`; ValueError naming the folder if it has no objects.csv."""
        if split.objects is None:
            raise ValueError(f"{split.path}: no objects.csv, so there are no object boxes to weight; set "
                             "vqgan.loss.object_weight: 0 for this dataset, or recollect it with a collector that "
                             "records objects (Atari games with RAM rules: docs/objects.md)")
        return cls(split.objects, len(split), split.resolution, ignore_classes, balance, split.labels, class_balance)

    def fraction(self) -> float:
        """Share of all pixels inside some kept box (overlaps counted once), over the whole split."""
        covered = sum(int((self(np.arange(i, min(i + 1024, self.n_images))) > 0).sum())
                      for i in range(0, self.n_images, 1024))
        return covered / max(1, self.n_images * self.resolution ** 2)

    def boxes_of(self, i: int) -> np.ndarray:
        """(k, 4) int16 half-open boxes (x0, y0, x1, y1) of the kept objects on frame i."""
        return self.boxes[self.offsets[i]:self.offsets[i + 1]]

    def __call__(self, indices: np.ndarray) -> np.ndarray:
        """(B, H, W) masks of the frames `indices`: uint8 1 on every pixel a kept object tints; with either balance,
        float32, each box's weight (the largest where boxes overlap)."""
        indices = np.asarray(indices, np.int64)
        out = np.zeros((len(indices), self.resolution, self.resolution), np.float32 if self.weighted else np.uint8)
        for b, i in enumerate(indices):
            lo, hi = self.offsets[i], self.offsets[i + 1]
            for (x0, y0, x1, y1), w in zip(self.boxes[lo:hi], self.weights[lo:hi]):
                if self.weighted:
                    np.maximum(out[b, y0:y1, x0:x1], w, out=out[b, y0:y1, x0:x1])
                else:
                    out[b, y0:y1, x0:x1] = 1
        return out


def class_weights(game: np.ndarray, cls: np.ndarray, clip: tuple[float, float]) -> np.ndarray:
    """Per box, n_g / (K_g * n_gc): within each game g (n_g boxes of K_g classes) every class gets the same total
    weight, and the game's total stays n_g. Ms. Pac-Man draws ~2.6 ghosts per frame but one Ms. Pac-Man, so
    unweighted the ghosts take 70% of the game's object loss and the player, whose 12 shapes (4 directions x 3
    mouth frames) are the hardest to keep, a quarter; a rare class (the fruit) is capped at `clip`'s upper end."""
    keys = pd.DataFrame({"g": game, "c": cls})
    n_gc = keys.groupby(["g", "c"])["c"].transform("size").to_numpy(np.float64)
    n_g = keys.groupby("g")["c"].transform("size").to_numpy(np.float64)
    k_g = keys.groupby("g")["c"].transform("nunique").to_numpy(np.float64)
    return np.clip(n_g / (k_g * n_gc), *clip)


def crop_windows(boxes: list[np.ndarray], resolution: int, size: int, object_share: float,
                 u: np.ndarray) -> np.ndarray:
    """(B, 2) top-left corners (y, x) of `size` x `size` training crops of `resolution`-pixel frames.

    With probability `object_share` (and when the frame has a kept object) a crop is centred on one of the frame's
    object boxes, chosen uniformly, so a 1-pixel ball is as likely as a 20-pixel paddle, and shifted by up to a
    quarter of the crop so the object is not always in the same place; otherwise it lies uniformly in the frame.
    `u` is (B, 4) uniforms in [0, 1): the caller's deterministic stream (same crops after a resume).
    """
    if not 0 < size <= resolution:
        raise ValueError(f"crop size {size} must be in (0, {resolution}]")
    span = resolution - size
    out = np.empty((len(boxes), 2), np.int64)
    for b, (frame_boxes, (u_obj, u_pick, u_y, u_x)) in enumerate(zip(boxes, u)):
        if len(frame_boxes) and u_obj < object_share:
            x0, y0, x1, y1 = frame_boxes[min(int(u_pick * len(frame_boxes)), len(frame_boxes) - 1)]
            jitter = size // 4
            cy = (int(y0) + int(y1)) // 2 + int(np.floor((u_y - 0.5) * 2 * jitter))
            cx = (int(x0) + int(x1)) // 2 + int(np.floor((u_x - 0.5) * 2 * jitter))
            out[b] = np.clip([cy - size // 2, cx - size // 2], 0, span)
        else:
            out[b] = np.minimum((u_y * (span + 1), u_x * (span + 1)), span).astype(np.int64)
    return out
