"""Encode a dataset's splits to VQGAN code grids: the transformer's training data.

    python -m vqgan.encode --model results/vqgan/{ds}/{variant} --data results/data/{ds} \
        --out results/codes/{ds}/{variant}

writes, for each split (train, val)::

    {out}/{split}.npy          (N, h, w) code grids, int16 when n_codes <= 32767, else int32
    {out}/{split}_labels.npy   (N,) int64 class per image (the Atari game; 0 for one-class data)
    {out}/codes.json           n_codes, grid [h, w], n_classes, class_names, counts, dtype, the source folders

Every file is renamed into place when complete and `codes.json` is written last, so its presence means the folder
is whole.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from vqgan.config.schema import defaults
from vqgan.data.codes import CODES_JSON, SPLITS, check_codes, code_dtype, save_npy
from vqgan.data.dataset import DatasetError, read_split
from vqgan.device import job_device
from vqgan.io.checkpoint import load_vqgan, model_files
from vqgan.io.cli import at_least, command, device_name
from vqgan.io.files import prepare_output, refuse_overlap, write_json_atomic
from vqgan.io.images import to_tensor
from vqgan.io.progress import progress_bar
from vqgan.precision import PRECISIONS, autocast, resolve


@torch.inference_mode()
def encode_images(model, images: np.ndarray, batch_size: int = 64, device="cpu", desc: str = "encode",
                  precision: str = "fp32") -> np.ndarray:
    """(N, H, W, 3) uint8 (a memory map is fine) -> (N, h, w) int64 codes, batch by batch.

    `precision="bf16"` (resolved: not auto) runs the encoder under bf16 autocast (the code lookup stays fp32):
    ~1.8x the images/s on a CPU with bf16 instructions; a code differs from fp32's where two codes are nearly
    equally close (0.7% on the default Atari experiment: bench/inference.py measures both)."""
    device = torch.device(device)
    out = []
    for lo in progress_bar(range(0, len(images), batch_size), desc=desc, file=sys.stderr, dynamic_ncols=True):
        x = to_tensor(np.array(images[lo : lo + batch_size]), device)  # a copy: memory maps are read-only
        with autocast(device, precision):
            out.append(model.encode_to_indices(x).cpu().numpy())
    if not out:
        raise ValueError("no images to encode")
    return np.concatenate(out)


@command
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vqgan.encode", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="trained VQGAN folder (results/vqgan/{ds}/{variant})")
    p.add_argument("--data", required=True, help="dataset folder holding train/ and val/ (results/data/{ds})")
    p.add_argument("--out", required=True, help="output folder (results/codes/{ds}/{variant})")
    p.add_argument("--batch-size", type=at_least(1), default=64)
    p.add_argument("--device", type=device_name, default=None, help="cpu / cuda (default: cuda when available)")
    p.add_argument("--precision", choices=PRECISIONS, default=defaults("vqgan.encode")["precision"],
                   help="encoder precision (vqgan.encode.precision): bf16 autocast is ~1.8x faster on a CPU with "
                   "bf16 instructions; about 1%% of the codes (near ties) differ from fp32's; auto: bf16 where the "
                   "device has it natively (default %(default)s)")
    args = p.parse_args(argv)
    refuse_overlap({"--out": args.out}, {"--model": model_files(args.model), "--data": args.data})

    out = Path(args.out)
    for name in (CODES_JSON, *(f"{s}{suffix}.npy" for s in SPLITS for suffix in ("", "_labels"))):
        prepare_output(out / name)  # fails now if `out` is not writable
    device = torch.device(job_device(args.device))
    precision = resolve(args.precision, device, "vqgan.encode.precision")
    model = load_vqgan(args.model, map_location=device).eval()
    n_codes = int(model.cfg.n_codes)
    dtype = code_dtype(n_codes)
    (out / CODES_JSON).unlink(missing_ok=True)  # the folder is incomplete until the end

    splits = {name: read_split(Path(args.data) / name) for name in SPLITS}
    class_names = splits["train"].class_names
    for name, split in splits.items():  # every check before any work
        if split.class_names != class_names:
            raise DatasetError(f"{args.data}: train classes {class_names} differ from {name} classes "
                               f"{split.class_names}")
        labels = split.labels
        if len(labels) and (labels.min() < 0 or labels.max() >= len(class_names)):
            raise DatasetError(f"{split.path}: labels span [{labels.min()}, {labels.max()}] but the manifest "
                               f"names {len(class_names)} classes {class_names}; fix the dataset's meta/manifest")
        if split.resolution != model.cfg.resolution:
            raise DatasetError(f"{split.path}: {split.resolution} px images, but the VQGAN in {args.model} was "
                               f"trained at {model.cfg.resolution} px; encode the dataset it was trained on")

    counts, grid = {}, None
    for split_name, split in splits.items():
        labels = split.labels
        codes = encode_images(model, split.images, args.batch_size, device, desc=f"encode {split_name}",
                              precision=precision)
        grid = list(codes.shape[1:])
        check_codes(out / f"{split_name}.npy", codes, labels, {"grid": grid, "n_codes": n_codes,
                                                                "n_classes": len(class_names)})
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
        "precision": precision,  # what the encoder ran in (auto resolved on this device)
        "model": str(args.model),
        "data": str(args.data),
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
