"""The codes format: a dataset's splits as VQGAN code grids, the transformer's training data.

    {codes}/{split}.npy          (N, h, w) code grids, int16 when n_codes <= 32768, else int32
    {codes}/{split}_labels.npy   (N,) int64 class per image (the Atari game; 0 for one-class data)
    {codes}/codes.json           n_codes, grid [h, w], n_classes, class_names, counts, dtype, the source folders

`codes.json` is written last (by `vqgan.encode`), so its presence means the folder is whole.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vqgan.io.files import atomic_file

SPLITS = ("train", "val")
CODES_JSON = "codes.json"


def code_dtype(n_codes: int) -> np.dtype:
    """The smallest signed integer type holding every code (signed: torch has no uint16 indexing)."""
    return np.dtype(np.int16) if n_codes <= np.iinfo(np.int16).max + 1 else np.dtype(np.int32)


def save_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp: Path):
        with open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to the temporary name
            np.save(f, array)

    atomic_file(path, write)


def read_codes(path: str | Path) -> dict:
    """Load `codes.json` of an encoded folder, with a clear error when the folder is incomplete."""
    path = Path(path)
    meta_path = path / CODES_JSON
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} is missing: {path} is not a complete codes folder "
                                "(run the encode stage: python -m vqgan.encode ...)")
    return json.loads(meta_path.read_text())


def load_codes(path: str | Path, split: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """(codes (N, h, w), labels (N,), codes.json) of one split."""
    meta = read_codes(path)
    codes = np.load(Path(path) / f"{split}.npy")
    labels = np.load(Path(path) / f"{split}_labels.npy")
    if codes.ndim != 3 or len(codes) != len(labels):
        raise ValueError(f"{path}/{split}.npy: expected (N, h, w) with N = {len(labels)} labels, got {codes.shape}")
    return codes, labels, meta
