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
    rerun = "rerun the encode stage: python -m vqgan.encode ..."
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} is missing: {path} is not a complete codes folder ({rerun})")
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError as e:
        raise ValueError(f"{meta_path}: not valid JSON ({e}); {rerun}") from None
    missing = [k for k in ("n_codes", "grid", "n_classes") if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise ValueError(f"{meta_path}: lacks {missing}; not a codes.json written by vqgan.encode ({rerun})")
    return meta


def load_codes(path: str | Path, split: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """(codes (N, h, w), labels (N,), codes.json) of one split."""
    meta = read_codes(path)
    arrays = []
    for name in (f"{split}.npy", f"{split}_labels.npy"):
        try:
            arrays.append(np.load(Path(path) / name))
        except (ValueError, EOFError, OSError) as e:  # missing, truncated, not an .npy, a pickled object
            raise ValueError(f"{Path(path) / name}: not a readable .npy array ({e}); rerun the encode stage") from None
    codes, labels = arrays
    if codes.ndim != 3 or len(codes) != len(labels):
        raise ValueError(f"{path}/{split}.npy: expected (N, h, w) with N = {len(labels)} labels, got {codes.shape}")
    return codes, labels, meta
