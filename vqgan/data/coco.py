"""The COCO stage: fetch MS-COCO 2017 (or use a local copy) and prepare fixed-resolution datasets from it.

Two subcommands, one per Snakemake rule::

    python -m vqgan.data.coco download --config '<coco section>' --datasets '<{name: entry}>' --out resources/coco
    python -m vqgan.data.coco prepare  --config '<one dataset entry>' --root <COCO root> --out results/data/{ds}

Both choose images with the same function, `select_images`, so `download` in `images` mode fetches exactly the
files that `prepare` will read, and no more. Train and val come from COCO's own splits (train2017 / val2017).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import multiprocessing as mp
import os
import sys
import time
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from vqgan.data.dataset import open_split, prepare_splits
from vqgan.data.download import VerificationError, download, extract_members
from vqgan.io.cli import command, load_config_arg
from vqgan.io.files import prepare_output, refuse_overlap, write_json_atomic
from vqgan.io.progress import progress_bar

SPLITS = ("train", "val")
COCO_BASE_URL = "http://images.cocodataset.org"
OFFLINE_HINT = (
    "if this machine is offline or cannot reach the server, set `coco.root` to a local COCO root in the official "
    "layout (annotations/, train2017/, val2017/), e.g. --config coco='{root: /path/to/coco}', and nothing is "
    "downloaded; the Atari datasets need no download (e.g. snakemake --cores all results/fid/atari64/ours.json)"
)
COMPLETE = ".complete"


class CocoError(ValueError):
    """Bad COCO input or config; the message names the key or file and what to do."""


@dataclass(frozen=True)
class RemoteFile:
    path: str  # relative to the base URL
    size: int
    sha256: str


# The official 2017 zips (sizes and sha256 recorded from images.cocodataset.org).
COCO_ZIPS: dict[str, RemoteFile] = {
    "annotations": RemoteFile(
        "annotations/annotations_trainval2017.zip", 252907541,
        "113a836d90195ee1f884e704da6304dfaaecff1f023f49b6ca93c4aaae470268",
    ),
    "val": RemoteFile(
        "zips/val2017.zip", 815585330, "4f7e2ccb2866ec5041993c9cf2a952bbed69647b115d0f74da7ce8f4bef82f05"
    ),
    "train": RemoteFile(
        "zips/train2017.zip", 19336861798, "69a8bb58ea5f8f99d24875f21416de2e9ded3178e903f1f7603e283b9e06d929"
    ),
}


# ----------------------------------------------------------------------------------------------------------------
# config


@dataclass
class CocoDataset:
    """One `datasets.<name>` entry of kind coco."""

    resolution: int
    train_images: int = 1000
    val_images: int = 500
    categories: list[str] = field(default_factory=list)  # COCO names; an image qualifies if it shows any of them
    min_size: int = 0  # shorter side in px before cropping; filters tiny images that would be upsampled
    seed: int | None = 0  # None: the first N by image id; an int: a seeded sample (see select_images)

    @classmethod
    def from_dict(cls, entry: dict[str, Any], name: str = "dataset") -> CocoDataset:
        entry = dict(entry)
        kind = entry.pop("kind", "coco")
        if kind != "coco":
            raise CocoError(f"{name}.kind: expected 'coco', got {kind!r}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(entry) - known)
        if unknown:
            # The schema rejects unknown keys before any job runs; here they are most likely per-dataset
            # settings of other stages, so say so rather than fail.
            warnings.warn(f"{name}: ignoring keys the COCO stage does not use: {unknown}", stacklevel=2)
        if "resolution" not in entry:
            raise CocoError(f"{name}.resolution: required (the side in pixels of the square output images)")
        ds = cls(**{k: v for k, v in entry.items() if k in known})
        for key in ("resolution", "train_images", "val_images", "min_size"):
            value = getattr(ds, key)
            low = 0 if key == "min_size" else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise CocoError(f"{name}.{key}: expected an integer >= {low}, got {value!r}")
        if ds.seed is not None and (not isinstance(ds.seed, int) or isinstance(ds.seed, bool)):
            raise CocoError(f"{name}.seed: expected an integer or null, got {ds.seed!r}")
        if not isinstance(ds.categories, list) or not all(isinstance(c, str) for c in ds.categories):
            raise CocoError(f"{name}.categories: expected a list of COCO category names, got {ds.categories!r}")
        return ds

    def count(self, split: str) -> int:
        return self.train_images if split == "train" else self.val_images


@dataclass
class DownloadConfig:
    """`coco.download`: how `download` fetches when `coco.root` is null."""

    mode: str = "images"  # images: annotations zip + only the selected images; zips: the official image zips
    workers: int = 8  # parallel image requests (images mode); network-bound, so more than the cores
    retries: int = 3  # attempts per file, each resuming the last
    base_url: str = COCO_BASE_URL  # a mirror of images.cocodataset.org; also replaces that host in coco_url

    @classmethod
    def from_section(cls, coco: dict[str, Any]) -> DownloadConfig:
        section = coco.get("download") or {}
        unknown = sorted(set(section) - set(cls.__dataclass_fields__))
        if unknown:
            raise CocoError(f"coco.download: unknown key(s) {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        cfg = cls(**section)
        if cfg.mode not in ("images", "zips"):
            raise CocoError(f"coco.download.mode: expected 'images' or 'zips', got {cfg.mode!r}")
        for key in ("workers", "retries"):
            value = getattr(cfg, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise CocoError(f"coco.download.{key}: expected an integer >= 1, got {value!r}")
        if not isinstance(cfg.base_url, str) or not cfg.base_url.startswith(("http://", "https://")):
            raise CocoError(f"coco.download.base_url: expected an http(s) URL, got {cfg.base_url!r}")
        cfg.base_url = cfg.base_url.rstrip("/")
        return cfg


# ----------------------------------------------------------------------------------------------------------------
# selection: the one function that both download and prepare use


def annotation_file(root: str | os.PathLike, split: str) -> Path:
    return Path(root) / "annotations" / f"instances_{split}2017.json"


# The 80 category names of COCO 2017's instance annotations (identical in train and val). Used to check a config's
# `categories` before anything is downloaded; a local annotation file, when there is one, is read instead.
COCO_2017_CATEGORIES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)


def missing_parts(root: str | os.PathLike) -> list[str]:
    """The parts of the official layout that a COCO root (an existing folder) lacks; checked before any job."""
    root = Path(root)
    missing = [f"annotations/instances_{s}2017.json" for s in SPLITS if not annotation_file(root, s).is_file()]
    return missing + [f"{s}2017/" for s in SPLITS if not (root / f"{s}2017").is_dir()]


def category_names(path: str | os.PathLike, chunk: int = 1 << 24) -> list[str]:
    """The category names of a COCO instances file, without parsing all of it.

    instances_train2017.json is 448 MB (json.load: ~20 s and GBs of memory); its "categories" list is a few KB
    near the end. So: look for the key in the last chunk first, then scan the file chunk by chunk, and decode
    only the list that follows the key.
    """
    key = b'"categories"'
    path = Path(path)
    size = path.stat().st_size
    starts = [max(0, size - chunk)] + list(range(0, max(0, size - chunk), chunk - len(key)))
    with open(path, "rb") as f:
        for start in starts:
            f.seek(start)
            at = f.read(chunk).rfind(key)
            if at < 0:
                continue
            f.seek(start + at + len(key))
            text = f.read(1 << 22).decode("utf-8", errors="replace").lstrip()
            if not text.startswith(":"):
                continue
            try:
                cats, _ = json.JSONDecoder().raw_decode(text[1:].lstrip())
                return [c["name"] for c in cats]
            except (ValueError, TypeError, KeyError):
                break
    raise CocoError(f"{path}: no readable \"categories\" list of {{\"name\": ...}} entries; not a COCO instances file?")


def load_coco(root: str | os.PathLike, split: str):
    """pycocotools index of one split, after checking the file: a clear error naming it if the root is not in the
    official layout, the JSON is broken, or an image record is unusable or unsafe (see check_images)."""
    from pycocotools.coco import COCO

    path = annotation_file(root, split)
    if not path.is_file():
        raise CocoError(
            f"{path} not found: the COCO root {root} must hold the official layout (annotations/"
            f"instances_{{train,val}}2017.json, train2017/, val2017/). Fix `coco.root`, or set it to null to download"
        )
    fix = (f"replace it with COCO's official instances_{split}2017.json (in a downloaded root: delete it and rerun "
           "the download, which extracts it from the annotations zip again)")
    try:
        data = json.loads(path.read_bytes())
    except ValueError as e:  # truncated, empty or binary: JSONDecodeError / UnicodeDecodeError
        raise CocoError(f"{path}: not valid JSON ({e}); the file is truncated or corrupt: {fix}") from None
    if not isinstance(data, dict):
        raise CocoError(f"{path}: expected a JSON object with an `images` list, got a {type(data).__name__}; {fix}")
    check_images(data.get("images"), path)
    coco = COCO()  # built from the checked data, not from the path: no second parse, no timing chatter
    coco.dataset = data
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
    except (KeyError, TypeError) as e:
        raise CocoError(f"{path}: a malformed record in `annotations` or `categories` ({type(e).__name__}: {e}); "
                        f"{fix}") from None
    return coco


def file_name_problem(name: Any) -> str | None:
    """Why `name` cannot be an image's file_name, or None. It must stay inside its split folder: annotations come
    from the network or from someone else's copy, and prepare reads, and download writes, `{split}2017/{file_name}`
    (an absolute name or one with `..` would reach any file on the machine)."""
    if not isinstance(name, str) or not name:
        return "is not a non-empty string"
    if PurePosixPath(name).is_absolute() or ".." in PurePosixPath(name).parts:
        return "must be a relative name inside the split folder (no absolute path, no '..')"
    return None


def check_images(images: Any, path: Path) -> None:
    """Every image record has an integer id, width and height and a safe file_name; else name the first bad one."""
    if not isinstance(images, list):
        raise CocoError(f"{path}: expected an `images` list, got {type(images).__name__}; this is not a COCO "
                        "instances file")
    for i, record in enumerate(images):
        where = f"{path}: images[{i}]"
        if not isinstance(record, dict):
            raise CocoError(f"{where} is a {type(record).__name__}, not an image record")
        if "id" in record:
            where += f" (id {record['id']!r})"
        missing = [k for k in ("id", "file_name", "width", "height") if k not in record]
        if missing:
            raise CocoError(f"{where} has no {', '.join(missing)}; every COCO image record needs id, file_name, "
                            "width and height")
        for key in ("id", "width", "height"):
            value = record[key]
            low = 0 if key == "id" else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise CocoError(f"{where}: {key} {value!r} is not an integer >= {low}")
        problem = file_name_problem(record["file_name"])
        if problem:
            raise CocoError(f"{where}: file_name {record['file_name']!r} {problem}; refusing the file")


def _rank(seed: int, image_id: int) -> bytes:
    # A hash rank rather than numpy's RNG: the same seed selects the same images on every numpy version, and a
    # larger N keeps every image of a smaller one (so datasets that differ only in size share their downloads).
    return hashlib.blake2b(f"{seed}:{image_id}".encode(), digest_size=8).digest()


def select_images(
    coco, n: int, categories: list[str] | tuple[str, ...] = (), min_size: int = 0, seed: int | None = 0
) -> list[dict[str, Any]]:
    """The COCO image records (dicts with id, file_name, width, height, coco_url) a dataset uses, by image id.

    Candidates: every image of the split, or those with at least one annotation of any of `categories`, whose
    shorter side is >= min_size. seed None takes the first n by id; an int takes the n with the smallest
    blake2b(seed:id) rank. Fewer than n candidates: all of them (the caller reports the shortfall).
    """
    if categories:
        name_to_id = {c["name"]: c["id"] for c in coco.dataset.get("categories", [])}
        unknown = [c for c in categories if c not in name_to_id]
        if unknown:
            raise CocoError(f"categories: unknown COCO category name(s) {unknown}; valid names: {sorted(name_to_id)}")
        ids: set[int] = set()
        for name in categories:  # getImgIds(catIds=[a, b]) would intersect; we want images showing any of them
            ids.update(coco.getImgIds(catIds=[name_to_id[name]]))
        ids &= coco.imgs.keys()  # annotations of images the file does not list
    else:
        ids = set(coco.getImgIds())
    pool = sorted(i for i in ids if min(coco.imgs[i]["width"], coco.imgs[i]["height"]) >= min_size)
    if seed is not None:
        pool = sorted(sorted(pool, key=lambda i: _rank(seed, i))[:n])
    return [coco.imgs[i] for i in pool[:n]]


def candidates_count(coco, categories=(), min_size: int = 0) -> int:
    return len(select_images(coco, sys.maxsize, categories, min_size, seed=None))


# ----------------------------------------------------------------------------------------------------------------
# prepare


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode COCO contains (RGB, L, CMYK, P, RGBA...) to RGB; transparency is composited onto white."""
    if im.mode == "RGB":
        return im
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")  # L, P, CMYK (PIL already undoes Adobe's inverted CMYK when decoding), I;16, ...


def load_square(path: str | os.PathLike, resolution: int) -> tuple[np.ndarray, str]:
    """Decode, convert to RGB, center-crop to the shorter side and resize to `resolution` (antialiased).

    Returns the (resolution, resolution, 3) uint8 array and the file's original PIL mode. EXIF orientation is
    deliberately not applied: COCO's annotations refer to the stored pixel grid.
    """
    with Image.open(path) as im:
        im.load()  # decode everything now, so a truncated file fails here (Pillow raises OSError), not later
        mode = im.mode
        rgb = to_rgb(im)
        w, h = rgb.size
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        # Crop first, then resize: the kernel then never reads pixels outside the square (resize's `box=` would).
        # Pillow's BICUBIC widens its kernel by the scale factor when shrinking, i.e. it is antialiased
        # (the resize clean-fid recommends).
        square = rgb.crop((left, top, left + s, top + s))
        out = square.resize((resolution, resolution), Image.Resampling.BICUBIC)
        return np.asarray(out, dtype=np.uint8), mode


def _load_task(task: tuple[str, int]) -> tuple[np.ndarray | None, str]:
    """Pool worker: (array, mode) on success, (None, reason) on a file that cannot be used."""
    path, resolution = task
    try:
        return load_square(path, resolution)
    except FileNotFoundError:
        return None, "file not found"
    except Exception as e:  # truncated/corrupt/unsupported: skip and record, never crash the whole stage
        return None, f"{type(e).__name__}: {e}"


# Decoding one COCO image takes ~6 ms, starting a spawned worker ~1 s: below this many images, one process wins.
POOL_MIN_IMAGES = 200


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def write_decoded(
    writer, records: list[dict[str, Any]], results
) -> tuple[list[int], list[dict[str, Any]], Counter[str]]:
    """Each decoded image (`results`, in the order of `records`) into the split's images.npy as it arrives:
    -> (the rows of `records` kept, the skipped ones with their error, how many files were in each colour mode)."""
    keep: list[int] = []
    skipped: list[dict[str, Any]] = []
    modes: Counter[str] = Counter()
    for i, (record, (array, info)) in enumerate(zip(records, results, strict=True)):
        if array is None:
            skipped.append({"source_id": int(record["id"]), "file_name": record["file_name"], "error": info})
            continue
        writer.write(array[None])
        keep.append(i)
        modes[info] += 1
    return keep, skipped, modes


def prepare_split(
    root: str | os.PathLike, split: str, ds: CocoDataset, out: str | os.PathLike, pool=None, progress: bool = True,
    coco=None, stack: contextlib.ExitStack | None = None,
) -> Path:
    """Write one split folder `out`; `pool` decodes in parallel. `coco` is the split's loaded index (default: load
    it from `root`); with `stack` the folder is renamed into place when that stack closes (see open_split).

    Images stream from the decoders straight into `out`'s images.npy (`open_split`), in selection order, so
    memory does not grow with the number of images (bench/data_memory.py); what does is pycocotools' index of
    the annotation file.
    """
    import pandas as pd  # here, not at the top: spawned decode workers import this module and need no pandas

    root = Path(root)
    coco = coco if coco is not None else load_coco(root, split)
    requested = ds.count(split)
    records = select_images(coco, requested, ds.categories, ds.min_size, ds.seed)
    available = candidates_count(coco, ds.categories, ds.min_size)
    annotations = str(annotation_file(root, split).relative_to(root))
    del coco  # the biggest object here; nothing below needs it
    folder = root / f"{split}2017"
    tasks = [(str(folder / r["file_name"]), ds.resolution) for r in records]

    bar = dict(total=len(tasks), desc=f"prepare {split}2017", unit="img", disable=not progress)
    # imap yields in task order as workers finish; each decoded image goes to disk at once
    results = pool.imap(_load_task, tasks, chunksize=4) if pool is not None else map(_load_task, tasks)
    with contextlib.ExitStack() as here:
        writer = (stack or here).enter_context(open_split(out, len(records), ds.resolution))
        keep, skipped, modes = write_decoded(writer, records, progress_bar(results, **bar))
        if not keep:
            why = (f"first error: {skipped[0]['error']}" if skipped
                   else f"no image matches categories={ds.categories}, min_size={ds.min_size}")
            raise CocoError(
                f"{split}: none of the {len(records)} selected images under {folder} could be used ({why}). "
                "Check `coco.root` (or rerun download_coco), and the dataset's categories/min_size"
            )
        if len(keep) < requested:
            warnings.warn(
                f"{split}: {len(keep)} usable images of {requested} requested ({split}_images): "
                f"{available} candidates match the selection, {len(skipped)} skipped (see manifest.json)",
                stacklevel=2,
            )
        kept = [records[i] for i in keep]
        meta = pd.DataFrame({
            "source_id": [int(r["id"]) for r in kept],
            "file_name": [r["file_name"] for r in kept],
            "width": [int(r["width"]) for r in kept],
            "height": [int(r["height"]) for r in kept],
            "label": np.zeros(len(kept), dtype=np.int64),
        })
        writer.finish(meta, {
            "source": "coco",
            "root": str(root.resolve()),
            "split": split,
            "coco_split": f"{split}2017",
            "annotations": annotations,
            "requested": requested,
            "candidates": available,
            "skipped": skipped,
            "num_skipped": len(skipped),
            "source_modes": dict(sorted(modes.items())),  # how many files were RGB, L, CMYK... before conversion
            "selection": {
                "categories": list(ds.categories), "min_size": ds.min_size, "seed": ds.seed,
                "order": "first N by image id" if ds.seed is None else "N smallest blake2b('{seed}:{id}'), by image id",
            },
            "resize": "center crop to the shorter side, Pillow BICUBIC (antialiased) to resolution",
            "seed": ds.seed,
            "classes": ["all"],
            "config": asdict(ds),
        })
    return Path(out)


def prepare(
    root: str | os.PathLike, ds: CocoDataset, out: str | os.PathLike, workers: int = 1, progress: bool = True
) -> dict[str, Path]:
    """Write `{out}/train` and `{out}/val` following the dataset contract, decoding with `workers` processes.

    Both or neither: the two annotation files are checked before any work, and both splits are renamed into
    place only once both are complete (one ExitStack holds them, see open_split).
    """
    out = Path(out)
    for leftover in prepare_splits(out):  # fails now if `out` is not writable
        print(f"removed {leftover}, left by a killed run", file=sys.stderr)
    cocos = {split: load_coco(root, split) for split in SPLITS}
    with contextlib.ExitStack() as stack:
        pool = None
        if workers > 1 and ds.train_images + ds.val_images >= POOL_MIN_IMAGES:
            # spawn, not fork: the parent may hold torch/OpenMP threads (pytest, notebooks) that fork can deadlock.
            pool = stack.enter_context(mp.get_context("spawn").Pool(workers))
        for split in SPLITS:
            prepare_split(root, split, ds, out / split, pool, progress, coco=cocos.pop(split), stack=stack)
    return {split: out / split for split in SPLITS}


# ----------------------------------------------------------------------------------------------------------------
# download


def _image_url(record: dict[str, Any], split: str, base_url: str) -> str:
    url = record.get("coco_url") or f"{COCO_BASE_URL}/{split}2017/{record['file_name']}"
    for official in (COCO_BASE_URL, COCO_BASE_URL.replace("http://", "https://")):
        if url.startswith(official + "/"):
            return base_url + url[len(official):]
    return url


def _verify_image(path: Path) -> None:
    with Image.open(path) as im:
        im.load()


def download_coco(
    coco_section: dict[str, Any],
    datasets: dict[str, dict[str, Any]],
    out: str | os.PathLike,
    *,
    files: dict[str, RemoteFile] = COCO_ZIPS,
    progress: bool = True,
) -> dict[str, Any]:
    """Fetch what the coco datasets need into `out` in the official layout; returns the `.complete` summary.

    `files` is the table of zips with their sizes and sha256 (the official ones; tests pass their own).
    The annotations zip is always needed: the image list and each image's coco_url live in it.
    """
    cfg = DownloadConfig.from_section(coco_section)
    wanted = {name: CocoDataset.from_dict(e, f"datasets.{name}") for name, e in datasets.items()
              if e.get("kind") == "coco"}
    if not wanted:
        raise CocoError("--datasets: no dataset of kind 'coco'; nothing to download")
    out = Path(out)
    prepare_output(out / COMPLETE)  # fails now if `out` is not writable
    zips = out / "zips"
    started = time.time()

    def fetch_zip(key: str) -> Path:
        f = files[key]
        return download(f"{cfg.base_url}/{f.path}", zips / Path(f.path).name, f.size, f.sha256, cfg.retries,
                        progress=progress, hint=OFFLINE_HINT)

    missing = [s for s in SPLITS if not annotation_file(out, s).is_file()]
    if missing:
        extract_members(fetch_zip("annotations"), out,
                        [f"annotations/instances_{s}2017.json" for s in missing], progress=progress)

    summary: dict[str, Any] = {"mode": cfg.mode, "base_url": cfg.base_url, "splits": {},
                               "datasets": {k: asdict(v) for k, v in wanted.items()}}
    for split in SPLITS:
        coco = load_coco(out, split)
        chosen: dict[int, dict[str, Any]] = {}
        for ds in wanted.values():  # the union: datasets that differ only in size share most images
            for r in select_images(coco, ds.count(split), ds.categories, ds.min_size, ds.seed):
                chosen[r["id"]] = r
        records = [chosen[i] for i in sorted(chosen)]
        if cfg.mode == "zips":
            extract_members(fetch_zip(split), out, [f"{split}2017/{r['file_name']}" for r in records],
                            progress=progress)
            undecodable: list[str] = []
        else:
            undecodable = _fetch_images(records, split, out / f"{split}2017", cfg, progress)
        summary["splits"][split] = {"selected": len(records), "undecodable": undecodable}
    summary["seconds"] = round(time.time() - started, 1)
    write_json_atomic(out / COMPLETE, summary)
    return summary


def _fetch_images(records: list[dict[str, Any]], split: str, folder: Path, cfg: DownloadConfig,
                  progress: bool) -> list[str]:
    """Fetch each record's image in parallel; returns the files that arrived whole but do not decode.

    A network failure stops everything (rerun to continue: finished images are kept); a file that does not
    decode is recorded and left out, since fetching it again would bring the same bytes.
    """
    undecodable: list[str] = []
    ex = ThreadPoolExecutor(cfg.workers)
    try:
        futures = {
            ex.submit(download, _image_url(r, split, cfg.base_url), folder / r["file_name"], None, None,
                      cfg.retries, verify=_verify_image, progress=False, hint=OFFLINE_HINT): r
            for r in records
        }
        for fut in progress_bar(as_completed(futures), total=len(futures), desc=f"download {split}2017", unit="img",
                        disable=not progress):
            try:
                fut.result()
            except VerificationError:
                undecodable.append(futures[fut]["file_name"])
    finally:
        # On an error, drop the queued requests rather than wait for each to fail in turn.
        ex.shutdown(wait=True, cancel_futures=True)
    if undecodable:
        warnings.warn(f"{split}2017: {len(undecodable)} image(s) do not decode and were left out: "
                      f"{sorted(undecodable)[:5]}", stacklevel=2)
    return sorted(undecodable)


# ----------------------------------------------------------------------------------------------------------------
# command line


@command
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vqgan.data.coco", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("download", help="fetch COCO 2017 into the official layout (annotations/, train2017/, val2017/)")
    d.add_argument("--config", required=True, help="the top-level `coco` section (inline JSON or a YAML/JSON file)")
    d.add_argument("--datasets", required=True, help="the `datasets` section, {name: entry}; only kind coco is used")
    d.add_argument("--out", required=True, help="the COCO root to fill, e.g. resources/coco")
    d.add_argument("--no-progress", action="store_true", help="no progress bars (logs)")
    p = sub.add_parser("prepare", help="build {out}/train and {out}/val from a COCO root")
    p.add_argument("--config", required=True, help="one dataset entry of kind coco (inline JSON or a file)")
    p.add_argument("--root", required=True, help="COCO root in the official layout")
    p.add_argument("--out", required=True, help="dataset folder, e.g. results/data/coco64")
    p.add_argument("--workers", type=int, default=default_workers(), help="decoding processes (default: all cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs)")
    args = parser.parse_args(argv)
    refuse_overlap({"--out": args.out}, {"--config": args.config, "--datasets": getattr(args, "datasets", None),
                                         "--root": getattr(args, "root", None)})

    if args.command == "download":
        section = load_config_arg(args.config)
        if section.get("root"):
            print(f"note: coco.root is set ({section['root']}), so the workflow reads that copy; "
                  f"downloading into {args.out} anyway as asked", file=sys.stderr)
        summary = download_coco(section, load_config_arg(args.datasets, "--datasets"), args.out,
                                progress=not args.no_progress)
        counts = ", ".join(f"{s}2017: {v['selected']}" for s, v in summary["splits"].items())
        print(f"COCO ({summary['mode']} mode) ready in {args.out}: {counts} images, {summary['seconds']} s")
    else:
        ds = CocoDataset.from_dict(load_config_arg(args.config), "dataset")
        paths = prepare(args.root, ds, args.out, max(1, args.workers), progress=not args.no_progress)
        for split, path in paths.items():
            manifest = json.loads((path / "manifest.json").read_text())
            print(f"{path}: {manifest['count']} images ({manifest['num_skipped']} skipped)")


if __name__ == "__main__":
    main()
