"""The on-disk dataset contract shared by every stage (docs/design.md).

A split lives in one folder::

    results/data/{ds}/{split}/
        images.npy     (N, H, W, 3) uint8 RGB, memory-mappable
        meta.csv       one row per image (source id; Atari: game, label, episode, step, action, reward)
        manifest.json  count, resolution, source, seed, how it was made

Writers build the folder under a temporary name beside the target and rename it into place, so a killed
job never leaves a folder that looks complete. Readers check the three files agree before anyone trains on them.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vqgan.io.files import atomic_dir

IMAGES = "images.npy"
META = "meta.csv"
MANIFEST = "manifest.json"


def evenly_spaced(n: int, k: int | None) -> np.ndarray:
    """k indices spread over range(n) (all of them when k is None or >= n). Splits are stored grouped (Atari: by
    game, then episode), so the first k would be one game and one episode; an even spread keeps every group in
    proportion, and is deterministic."""
    if k is None or k >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, k).round().astype(np.int64))


class DatasetError(ValueError):
    """A dataset folder that breaks the contract; the message names the folder and what to do."""


@dataclass
class Split:
    """One split, loaded lazily: `images` is a read-only memory map."""

    path: Path
    images: np.ndarray  # (N, H, W, 3) uint8
    meta: pd.DataFrame
    manifest: dict[str, Any]

    def __len__(self) -> int:
        return len(self.images)

    @property
    def resolution(self) -> int:
        return int(self.images.shape[1])

    @property
    def labels(self) -> np.ndarray:
        """Integer class per image (the Atari game; 0 everywhere for one-class data)."""
        if "label" in self.meta.columns:
            return self.meta["label"].to_numpy(dtype=np.int64)
        return np.zeros(len(self), dtype=np.int64)

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest.get("classes", ["all"]))


def write_split(
    path: str | os.PathLike,
    images: np.ndarray,
    meta: pd.DataFrame,
    manifest: dict[str, Any],
) -> Path:
    """Atomically write one split folder following the contract.

    `manifest` gets `count` and `resolution` filled in from `images`; everything else is the caller's record of
    how the data was made (source, seed, config).
    """
    path = Path(path)
    images = np.ascontiguousarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise DatasetError(f"{path}: images must be (N, H, W, 3) uint8, got {images.shape} {images.dtype}")
    if images.shape[1] != images.shape[2]:
        raise DatasetError(f"{path}: images must be square, got {images.shape[1]}x{images.shape[2]}")
    if len(meta) != len(images):
        raise DatasetError(f"{path}: {len(images)} images but {len(meta)} meta rows")
    manifest = {**manifest, "count": int(len(images)), "resolution": int(images.shape[1])}

    with atomic_dir(path) as tmp:
        np.save(tmp / IMAGES, images)
        meta.to_csv(tmp / META, index=False)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
    return path


def read_split(path: str | os.PathLike, mmap: bool = True) -> Split:
    """Load a split folder and check that its three files agree."""
    path = Path(path)
    for name in (IMAGES, META, MANIFEST):
        if not (path / name).is_file():
            raise DatasetError(
                f"{path}: missing {name}; this is not a dataset folder (rerun the data stage that writes it)"
            )
    images = np.load(path / IMAGES, mmap_mode="r" if mmap else None)
    meta = pd.read_csv(path / META)
    manifest = json.loads((path / MANIFEST).read_text())
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise DatasetError(f"{path / IMAGES}: expected (N, H, W, 3) uint8, got {images.shape} {images.dtype}")
    if len(meta) != len(images) or manifest.get("count") != len(images):
        raise DatasetError(
            f"{path}: {len(images)} images, {len(meta)} meta rows, manifest count {manifest.get('count')}; "
            "the folder is inconsistent, delete it and rerun the data stage"
        )
    return Split(path=path, images=images, meta=meta, manifest=manifest)
