"""LPIPS perceptual distance (VGG16 trunk) with explicit, offline-first weight resolution.

The `lpips` package ships its calibrated linear heads (`lpips/weights/v0.1/vgg.pth`) but takes the VGG16
ImageNet trunk from torchvision, which downloads it on first use: on an offline compute node that fails deep
inside a training run. Here the trunk is resolved up front, in this order:

1. ``<weights_dir>/vgg16-397923af.pth`` (torchvision's own file name; the `fetch_weights` rule puts it there);
2. the torch hub cache (``$TORCH_HOME/hub/checkpoints/vgg16-397923af.pth``), where torchvision keeps it;
3. a download into ``<weights_dir>`` -- only when ``allow_download=True``;
4. otherwise :class:`VGGWeightsNotFound`, whose message says how to provide the file or how to switch the
   perceptual loss off. We never fall back to a randomly initialised trunk: that would train silently against
   a meaningless "perceptual" loss.

Every file is loaded with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import torch
import torch.nn as nn

VGG16_FILE = "vgg16-397923af.pth"
VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
# torchvision names its files <name>-<first 8 hex digits of the file's sha256>.pth and checks that prefix
VGG16_SHA256_PREFIX = "397923af"


class VGGWeightsNotFound(FileNotFoundError):
    pass


def sha256_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _not_found_message(weights_dir: Path | None, searched: list[Path]) -> str:
    target = (weights_dir / VGG16_FILE) if weights_dir is not None else Path("resources/weights") / VGG16_FILE
    return (
        "LPIPS needs the VGG16 ImageNet weights, which were not found (searched: "
        + ", ".join(str(p) for p in searched)
        + f").\nProvide them by one of:\n"
        f"  - downloading {VGG16_URL}\n    to {target} (sha256 starts with {VGG16_SHA256_PREFIX}), e.g.\n"
        f"    curl -L -o {target} {VGG16_URL}\n"
        "    (the fetch_weights rule does this on a machine with network access);\n"
        "  - allowing the download in this run (allow_download=True / --allow-download);\n"
        "  - or training without the perceptual loss: set `vqgan.loss.perceptual_weight: 0` in the config."
    )


def resolve_vgg16_weights(weights_dir: str | os.PathLike | None = "resources/weights",
                          allow_download: bool = False) -> Path:
    """Path of the VGG16 ImageNet state dict, or raise VGGWeightsNotFound with instructions."""
    weights_dir = Path(weights_dir) if weights_dir is not None else None
    candidates = ([weights_dir / VGG16_FILE] if weights_dir is not None else []) + [_hub_checkpoint_dir() / VGG16_FILE]
    for path in candidates:
        if path.is_file():
            return path
    if allow_download:
        dest_dir = weights_dir if weights_dir is not None else _hub_checkpoint_dir()
        dest_dir.mkdir(parents=True, exist_ok=True)
        dest = dest_dir / VGG16_FILE
        # download_url_to_file writes to a temp file, checks the hash prefix, then moves it into place
        torch.hub.download_url_to_file(VGG16_URL, str(dest), hash_prefix=VGG16_SHA256_PREFIX, progress=True)
        return dest
    raise VGGWeightsNotFound(_not_found_message(weights_dir, candidates))


class LPIPS(nn.Module):
    """Frozen LPIPS(vgg, v0.1): ``forward(x, y) -> (B,)`` distances for images in [-1, 1]."""

    def __init__(self, vgg_path: str | os.PathLike, verify: bool = True):
        super().__init__()
        import lpips as lpips_pkg

        if verify:
            digest = sha256_of(vgg_path)
            if not digest.startswith(VGG16_SHA256_PREFIX):
                raise ValueError(f"{vgg_path}: sha256 {digest} does not start with {VGG16_SHA256_PREFIX}; it is "
                                 f"not torchvision's VGG16 ImageNet file. Replace it with {VGG16_URL}.")
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")  # torchvision's deprecation notice for `pretrained=`
            # architecture only, on the meta device: no 138M-parameter random init (seconds, 0.5 GB) that the
            # two weight files below overwrite anyway
            self.net = lpips_pkg.LPIPS(pretrained=False, net="vgg", version="0.1", pnet_rand=True, verbose=False)
        self.net.to_empty(device="cpu")
        self.net.scaling_layer = lpips_pkg.lpips.ScalingLayer()  # constant buffers, rebuilt with their values
        vgg_state = torch.load(vgg_path, map_location="cpu", weights_only=True)
        trunk = self.net.net  # lpips' vgg16: slice1..slice5 holding torchvision's features[i] under name "i"
        try:
            mapped = {name: vgg_state[f"features.{name.split('.', 1)[1]}"] for name in trunk.state_dict()}
        except KeyError as e:
            raise ValueError(f"{vgg_path} is not a torchvision VGG16 state dict (no {e}); replace it with "
                             f"{VGG16_URL}") from None
        trunk.load_state_dict(mapped)
        heads_path = Path(lpips_pkg.__file__).parent / "weights" / "v0.1" / "vgg.pth"
        heads = torch.load(heads_path, map_location="cpu", weights_only=True)
        expected = {f"lin{i}.model.1.weight" for i in range(5)}
        if set(heads) != expected:
            raise RuntimeError(f"{heads_path} holds {sorted(heads)}, expected {sorted(expected)}; reinstall `lpips`")
        self.net.load_state_dict(heads, strict=False)  # the rest (trunk, scaling constants) is set above
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):
        # always in eval mode: the heads' dropout must stay off even when the parent loss module trains
        return super().train(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(x, y).flatten()


def build_lpips(weights_dir: str | os.PathLike | None = "resources/weights", allow_download: bool = False,
                verify: bool = True) -> LPIPS:
    return LPIPS(resolve_vgg16_weights(weights_dir, allow_download), verify=verify)
