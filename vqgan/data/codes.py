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
    check_codes(Path(path) / f"{split}.npy", codes, labels, meta)
    return codes, labels, meta


def check_codes(where: str | Path, codes: np.ndarray, labels: np.ndarray, meta: dict) -> None:
    """A split's codes against codes.json, checked by the writer (vqgan.encode) and the reader: (N, h, w) integer
    grids of codes.json's `grid`, every code in 0..n_codes-1, one label in 0..n_classes-1 per grid."""
    rerun = "rerun the encode stage"
    grid = tuple(meta["grid"]) if isinstance(meta.get("grid"), list) else meta.get("grid")
    if codes.ndim != 3 or codes.shape[1:] != grid or not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"{where}: expected (N, h, w) integer code grids with [h, w] = codes.json's grid "
                         f"{meta.get('grid')}, got {codes.shape} {codes.dtype}; {rerun}")
    if labels.ndim != 1 or len(codes) != len(labels) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{where}: {len(codes)} code grids but labels of shape {labels.shape} {labels.dtype}; "
                         f"{rerun}")
    labels_file = Path(where).with_name(f"{Path(where).stem}_labels.npy")
    for name, a, key in ((where, codes, "n_codes"), (labels_file, labels, "n_classes")):
        if a.size and (a.min() < 0 or a.max() >= meta[key]):
            raise ValueError(f"{name}: values span [{a.min()}, {a.max()}], outside 0..{meta[key] - 1} (codes.json's "
                             f"{key} = {meta[key]}); {rerun}")
