"""Encode a dataset's splits to VQGAN code grids: the transformer's training data.

    python -m vqgan.encode --model results/vqgan/{ds} --data results/data/{ds} --out results/codes/{ds}

writes, for each split (train, val)::

    {out}/{split}.npy          (N, h, w) code grids, int16 when n_codes <= 32767, else int32
    {out}/{split}_labels.npy   (N,) int64 class per image (the Atari game; 0 for one-class data)
    {out}/codes.json           n_codes, grid [h, w], n_classes, class_names, counts, dtype, the source folders

Every file is renamed into place when complete and `codes.json` is written last, so its presence means the folder
is whole.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from vqgan.dataset import read_split
from vqgan.images import to_tensor
from vqgan.training import atomic_file, write_json_atomic

SPLITS = ("train", "val")
CODES_JSON = "codes.json"


def code_dtype(n_codes: int) -> np.dtype:
    """The smallest signed integer type holding every code (signed: torch has no uint16 indexing)."""
    return np.dtype(np.int16) if n_codes <= np.iinfo(np.int16).max + 1 else np.dtype(np.int32)


@torch.no_grad()
def encode_images(model, images: np.ndarray, batch_size: int = 64, device="cpu", desc: str = "encode") -> np.ndarray:
    """(N, H, W, 3) uint8 (a memory map is fine) -> (N, h, w) int64 codes, batch by batch."""
    from tqdm.auto import tqdm

    out = []
    for lo in tqdm(range(0, len(images), batch_size), desc=desc, file=sys.stderr, dynamic_ncols=True):
        x = to_tensor(np.array(images[lo : lo + batch_size]), device)  # a copy: memory maps are read-only
        out.append(model.encode_to_indices(x).cpu().numpy())
    if not out:
        raise ValueError("no images to encode")
    return np.concatenate(out)


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vqgan.encode", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="trained VQGAN folder (results/vqgan/{ds})")
    p.add_argument("--data", required=True, help="dataset folder holding train/ and val/ (results/data/{ds})")
    p.add_argument("--out", required=True, help="output folder (results/codes/{ds})")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    args = p.parse_args(argv)

    from vqgan.model import VQGAN

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        model = VQGAN.from_pretrained(args.model, map_location=device).eval()
    except FileNotFoundError as e:
        raise SystemExit(f"error: {e}")
    n_codes = int(model.cfg.n_codes)
    dtype = code_dtype(n_codes)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / CODES_JSON).unlink(missing_ok=True)  # the folder is incomplete until the end

    counts, class_names, grid = {}, None, None
    for split_name in SPLITS:
        split = read_split(Path(args.data) / split_name)
        names = split.class_names
        if class_names is None:
            class_names = names
        elif names != class_names:
            raise SystemExit(f"error: {args.data}: train classes {class_names} differ from {split_name} classes {names}")
        labels = split.labels
        if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
            raise SystemExit(f"error: {split.path}: labels span [{labels.min()}, {labels.max()}] but the manifest "
                             f"names {len(names)} classes {names}; fix the dataset's meta/manifest")
        codes = encode_images(model, split.images, args.batch_size, device, desc=f"encode {split_name}")
        grid = list(codes.shape[1:])
        save_npy(out / f"{split_name}.npy", codes.astype(dtype))
        save_npy(out / f"{split_name}_labels.npy", labels.astype(np.int64))
        counts[split_name] = int(len(codes))
        used = np.unique(codes).size
        print(f"{split_name}: {len(codes)} images -> {grid[0]}x{grid[1]} codes, {used}/{n_codes} codes used",
              flush=True)

    write_json_atomic(out / CODES_JSON, {
        "n_codes": n_codes,
        "grid": grid,
        "n_classes": len(class_names),
        "class_names": class_names,
        "counts": counts,
        "dtype": dtype.name,
        "model": str(args.model),
        "data": str(args.data),
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
