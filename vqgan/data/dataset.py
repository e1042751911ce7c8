"""The on-disk dataset contract shared by every stage (docs/design.md).

A split lives in one folder::

    results/data/{ds}/{split}/
        images.npy     (N, H, W, 3) uint8 RGB, memory-mappable
        meta.csv       one row per image (source id; Atari: game, label, episode, step, action, reward)
        manifest.json  count, resolution, source, seed, how it was made
        objects.csv    optional (Atari games with object truth): one row per object instance per image

Writers build the folder under a temporary name beside the target and rename it into place, so a killed
job never leaves a folder that looks complete. Readers check the three files agree before anyone trains on them.

objects.csv: where every game object is in each image, written by the Atari collector for the games with RAM
rules (atari_collect/objects.py; the manifest's `object_truth` says which games have it). Columns:
    frame          row of images.npy (int)
    class          object class within the game, e.g. player, ghost, fruit (Ms. Pac-Man), ball, brick
    id             instance within its class (ghost 0-3, brick row * 18 + column, else 0)
    x0, y0, x1, y1 the box in this split's image pixels (after crop and resize), x right, y down, HALF-OPEN and
                   exact (floats): the object covers [x0, x1) x [y0, y1); floor x0/y0 and ceil x1/y1 to get every
                   pixel it tints
    visible        optional, 0/1: the object is drawn on this frame (0: e.g. a flickered-out Ms. Pac-Man ghost)
A game without object truth has no rows; a split where no game has it has no objects.csv (`Split.objects` None).

Writers stream: `open_split` fills images.npy chunk by chunk (`ImageFile`), and objects.csv too
(`SplitWriter.write_objects`), so preparing a split needs memory for one chunk, not for the split (118k COCO
images at 256 px are 23 GB; see bench/data_memory.py).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from vqgan.io.files import atomic_dir, clean_stale, prepare_output, temp_dir_beside

IMAGES = "images.npy"
META = "meta.csv"
MANIFEST = "manifest.json"
SPLITS = ("train", "val")

# Manifest keys that record how long or when something ran, not what the data is. `data_identity` leaves them out,
# so re-collecting identical data (other timings) keeps a training run's state instead of starting afresh.
# Writers: atari_collect (created_unix, per-game cpu/wall seconds, Go-Explore speed), COCO (root: where the
# copy lives, not what it holds).
VOLATILE_KEYS = frozenset({
    "created_unix", "seconds", "cpu_seconds", "wall_seconds_plain_games", "steps_per_second", "root",
})

OBJECTS = "objects.csv"
OBJECT_COLUMNS = ("frame", "class", "id", "x0", "y0", "x1", "y1")  # required; `visible` is optional


def evenly_spaced(n: int, k: int | None) -> np.ndarray:
    """k indices spread over range(n) (all of them when k is None or >= n). Splits are stored grouped (Atari: by
    game, then episode), so the first k would be one game and one episode; an even spread keeps every group in
    proportion, and is deterministic."""
    if k is None or k >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, k).round().astype(np.int64))


class DatasetError(ValueError):
    """A dataset folder that breaks the contract; the message names the folder and what to do."""


@dataclass
class Split:
    """One split, loaded lazily: `images` is a read-only memory map."""

    path: Path
    images: np.ndarray  # (N, H, W, 3) uint8
    meta: pd.DataFrame
    manifest: dict[str, Any]
    objects: pd.DataFrame | None = None  # objects.csv, checked; None when the split has none

    def __len__(self) -> int:
        return len(self.images)

    @property
    def resolution(self) -> int:
        return int(self.images.shape[1])

    @property
    def labels(self) -> np.ndarray:
        """Integer class per image (the Atari game; 0 everywhere for one-class data)."""
        if "label" in self.meta.columns:
            return self.meta["label"].to_numpy(dtype=np.int64)
        return np.zeros(len(self), dtype=np.int64)

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest.get("classes", ["all"]))


def data_identity(manifest: Any) -> Any:
    """`manifest` without the VOLATILE_KEYS, at any depth: what a training run's state key hashes."""
    if isinstance(manifest, dict):
        return {k: data_identity(v) for k, v in manifest.items() if k not in VOLATILE_KEYS}
    if isinstance(manifest, list):
        return [data_identity(v) for v in manifest]
    return manifest


def prepare_splits(out: str | os.PathLike, splits: tuple[str, ...] = SPLITS) -> list[Path]:
    """Call before collecting or preparing data into `{out}/{split}`: fails now if `out` cannot be written, and
    removes the hidden temporary folders a killed writer left there (one can hold the whole dataset). Returns
    what was removed."""
    return [p for split in splits for p in prepare_output(Path(out) / split, folder=True)]


def check_images(where: str | os.PathLike, images: np.ndarray) -> None:
    """images.npy's contract, checked by its writers and its reader: (N, R, R, 3) uint8, square (the token grid and
    codes.json's grid assume it)."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise DatasetError(f"{where}: images must be (N, H, W, 3) uint8, got {images.shape} {images.dtype}")
    if images.shape[1] != images.shape[2]:
        raise DatasetError(f"{where}: images must be square, got {images.shape[1]}x{images.shape[2]} (H x W); "
                           "rerun the data stage")


def check_meta(where: str | os.PathLike, meta: pd.DataFrame, n_images: int, classes: list[str] | None) -> None:
    """meta.csv's contract, checked by its writers and its reader: a row per image; `label` an index into the
    manifest's `classes` and, with a `game` column too, the label of that game."""
    if len(meta) != n_images:
        raise DatasetError(f"{where}: {len(meta)} meta rows but {n_images} images; rerun the data stage")
    if "label" not in meta.columns or classes is None:
        return
    labels = meta["label"]
    if len(labels) and (not pd.api.types.is_integer_dtype(labels) or labels.min() < 0 or labels.max() >= len(classes)):
        raise DatasetError(f"{where}: column 'label' must hold class indices 0..{len(classes) - 1} (the manifest's "
                           f"classes {list(classes)}); rerun the data stage")
    if "game" in meta.columns and len(meta):
        bad = np.flatnonzero(np.asarray(classes, dtype=object)[labels.to_numpy()] != meta["game"].to_numpy())
        if len(bad):
            i = int(bad[0])
            raise DatasetError(f"{where}: row {i + 2} has label {labels.iloc[i]} ({classes[labels.iloc[i]]!r}) but "
                               f"game {meta['game'].iloc[i]!r}; {len(bad)} rows disagree: rerun the data stage")


def check_split(path: str | os.PathLike, images: np.ndarray, meta: pd.DataFrame,
                classes: list[str] | None = None) -> np.ndarray:
    """The contract's checks on a split before it is written; returns the images as one contiguous array."""
    images = np.ascontiguousarray(images)
    check_images(path, images)
    check_meta(Path(path) / META, meta, len(images), classes)
    return images


def fill_split(folder: Path, images: np.ndarray, meta: pd.DataFrame, manifest: dict[str, Any],
               objects: pd.DataFrame | None = None, where: str | os.PathLike | None = None) -> None:
    """Write the files of a split into `folder` (a temporary folder of `atomic_dir`; errors name `where`, the
    split's final path); see write_split."""
    images = check_split(where or folder, images, meta, manifest.get("classes"))
    manifest = {**manifest, "count": int(len(images)), "resolution": int(images.shape[1])}
    # plain writes: `folder` is renamed into place whole (atomic_dir)
    np.save(folder / IMAGES, images)
    meta.to_csv(folder / META, index=False)
    if objects is not None:
        write_objects(folder, objects, len(images), int(images.shape[1]), where=where)
        check_object_classes(objects, frame_games(meta, manifest.get("classes", ["all"])),
                             manifest.get("object_truth"), Path(where or folder) / OBJECTS)
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")


def check_objects(objects: pd.DataFrame, n_images: int, resolution: int, where: str | os.PathLike,
                  first_row: int = 0) -> pd.DataFrame:
    """The object table if it follows the contract (columns, frames in range, boxes inside the image), else a
    DatasetError naming `where` (the file) and the first bad row (`objects` being the file's rows from
    `first_row` on)."""
    missing = [c for c in OBJECT_COLUMNS if c not in objects.columns]
    if missing:
        raise DatasetError(f"{where}: missing column(s) {missing}; expected {list(OBJECT_COLUMNS)} (+ visible)")
    if objects.empty:  # a game with truth but no object on screen in this split
        return objects
    numeric = ["frame", "id", "x0", "y0", "x1", "y1"] + (["visible"] if "visible" in objects.columns else [])
    for c in numeric:
        if not pd.api.types.is_numeric_dtype(objects[c]) or objects[c].isna().any():
            raise DatasetError(f"{where}: column {c!r} must hold numbers in every row")
    if objects["class"].isna().any():
        raise DatasetError(f"{where}: column 'class' is empty in some rows")
    f = objects["frame"].to_numpy()
    x0, y0, x1, y1 = (objects[c].to_numpy(np.float64) for c in ("x0", "y0", "x1", "y1"))
    eps = 1e-6  # the CSV holds 10 significant digits
    bad = ((f != np.round(f)) | (f < 0) | (f >= n_images) | (x0 < -eps) | (y0 < -eps) | (x1 > resolution + eps)
           | (y1 > resolution + eps) | (x0 >= x1) | (y0 >= y1))
    if "visible" in objects.columns:
        bad |= ~objects["visible"].isin([0, 1]).to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DatasetError(f"{where}: row {first_row + i + 2} {objects.iloc[i].to_dict()} breaks the contract: "
                           f"frame must be a row of images.npy (0..{n_images - 1}), 0 <= x0 < x1 <= {resolution} "
                           "and the same for y, visible 0 or 1; rerun the data stage")
    return objects


def check_object_classes(objects: pd.DataFrame, games: np.ndarray, truth: dict[str, Any] | None,
                         where: str | os.PathLike, first_row: int = 0) -> None:
    """objects.csv's classes, checked by its writers and its reader: each row's class is one the manifest's
    `object_truth.classes` lists for the game of its frame (`games`: the game of every image)."""
    known = (truth or {}).get("classes")
    if objects.empty or not isinstance(known, dict):
        return
    frame_games = games[objects["frame"].to_numpy(np.int64)]
    ok = np.array([c in (known.get(g) or ()) for g, c in zip(frame_games, objects["class"])], dtype=bool)
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        game, cls = frame_games[i], objects["class"].iloc[i]
        raise DatasetError(f"{where}: row {first_row + i + 2}: class {cls!r} on frame {objects['frame'].iloc[i]} "
                           f"({game}) is not one of {game}'s object classes {known.get(game) or []} (the manifest's "
                           "object_truth.classes); rerun the data stage")


def frame_games(meta: pd.DataFrame, classes: list[str]) -> np.ndarray:
    """The game (class name) of every image: meta's `game` column, else the class its `label` names."""
    if "game" in meta.columns:
        return meta["game"].astype(str).to_numpy()
    labels = meta["label"].to_numpy(np.int64) if "label" in meta.columns else np.zeros(len(meta), np.int64)
    return np.asarray(classes, dtype=object)[labels]


def write_objects(folder: str | os.PathLike, objects: pd.DataFrame, n_images: int, resolution: int,
                  where: str | os.PathLike | None = None) -> None:
    """Check `objects` and write `folder/objects.csv` (errors name `where`, the split's final path)."""
    check_objects(objects, n_images, resolution, Path(where or folder) / OBJECTS)
    objects.to_csv(Path(folder) / OBJECTS, index=False, float_format="%.10g")


def write_split(
    path: str | os.PathLike,
    images: np.ndarray,
    meta: pd.DataFrame,
    manifest: dict[str, Any],
    objects: pd.DataFrame | None = None,
) -> Path:
    """Atomically write one split folder following the contract.

    `manifest` gets `count` and `resolution` filled in from `images`; everything else is the caller's record of
    how the data was made (source, seed, config). `objects` (see the module doc) is written as objects.csv.
    """
    path = Path(path)
    images = check_split(path, images, meta, manifest.get("classes"))  # before a temporary folder exists
    with atomic_dir(path) as tmp:
        fill_split(tmp, images, meta, manifest, objects, where=path)
    return path


def read_split(path: str | os.PathLike, mmap: bool = True) -> Split:
    """Load a split folder and check that its three files agree."""
    path = Path(path)
    if not path.is_dir():
        raise DatasetError(f"{path}: no such dataset folder; give a split folder written by a data stage "
                           "(results/data/<dataset>/train or /val)")
    for name in (IMAGES, META, MANIFEST):
        if not (path / name).is_file():
            raise DatasetError(
                f"{path}: missing {name}; this is not a dataset folder (rerun the data stage that writes it)"
            )
    redo = "delete the folder and rerun the data stage that writes it"
    try:
        images = np.load(path / IMAGES, mmap_mode="r" if mmap else None)
    except (ValueError, OSError, EOFError) as e:  # numpy: bad magic, truncated header or data
        raise DatasetError(f"{path / IMAGES}: not a readable .npy array ({e}); {redo}") from None
    try:
        meta = pd.read_csv(path / META)
    except (ValueError, UnicodeDecodeError) as e:  # pandas' EmptyDataError and ParserError are ValueErrors
        raise DatasetError(f"{path / META}: not a readable CSV ({e}); {redo}") from None
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise DatasetError(f"{path / MANIFEST}: not valid JSON ({e}); {redo}") from None
    if not isinstance(manifest, dict):
        raise DatasetError(f"{path / MANIFEST}: expected a JSON object, got {type(manifest).__name__}; {redo}")
    check_images(path / IMAGES, images)
    check_manifest(path / MANIFEST, manifest, len(images))
    check_meta(path / META, meta, len(images), manifest.get("classes"))
    objects = None
    if (path / OBJECTS).is_file():
        try:
            objects = pd.read_csv(path / OBJECTS)
        except (ValueError, UnicodeDecodeError) as e:  # pandas' EmptyDataError and ParserError are ValueErrors
            raise DatasetError(f"{path / OBJECTS}: not a readable CSV ({e}); {redo}") from None
        objects = check_objects(objects, len(images), int(images.shape[1]), path / OBJECTS)
        check_object_classes(objects, frame_games(meta, manifest.get("classes", ["all"])),
                             manifest.get("object_truth"), path / OBJECTS)
    return Split(path=path, images=images, meta=meta, manifest=manifest, objects=objects)


def check_manifest(where: str | os.PathLike, manifest: dict[str, Any], n_images: int) -> None:
    """The keys a reader relies on, as the writers fill them: `count` the number of images (an integer),
    `classes` a list of names."""
    count = manifest.get("count")
    if not isinstance(count, int) or isinstance(count, bool):
        raise DatasetError(f"{where}: 'count' must be an integer (the number of images), got {count!r} "
                           f"({type(count).__name__}); rerun the data stage")
    if count != n_images:
        raise DatasetError(f"{where}: count {count} but images.npy holds {n_images} images; the folder is "
                           "inconsistent, delete it and rerun the data stage")
    classes = manifest.get("classes", ["all"])
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise DatasetError(f"{where}: 'classes' must be a non-empty list of names, got {classes!r}; rerun the data "
                           "stage")


# ----------------------------------------------------------------------------------------------------------------
# streaming writers: a split of any size in the memory of one chunk

CHUNK_BYTES = 32 << 20  # rows are copied in chunks of about this size: the memory a writer or a copy needs


def rows_per_chunk(resolution: int) -> int:
    return max(1, CHUNK_BYTES // (resolution * resolution * 3))


class ImageFile:
    """An (N, R, R, 3) uint8 .npy filled front to back in chunks, never held in memory.

    numpy's `open_memmap` writes the header and sizes the file for `capacity` rows (sparse: disk fills as rows
    arrive); rows then go in with plain file writes, not through the mapping, because every page written
    through a mapping counts in the process's resident memory until it is unmapped. `close()` shrinks the file
    to the rows written (fewer when images were skipped): the shape in the header is rewritten in place, padded
    to the same header length, and the file truncated.
    """

    def __init__(self, path: str | os.PathLike, capacity: int, resolution: int):
        self.path, self.capacity, self.count = Path(path), int(capacity), 0
        self.row_shape = (int(resolution), int(resolution), 3)
        self.row_bytes = int(np.prod(self.row_shape))
        mm = np.lib.format.open_memmap(self.path, mode="w+", dtype=np.uint8, shape=(self.capacity, *self.row_shape))
        self.offset = int(mm.offset)
        del mm
        self._f = open(self.path, "r+b")
        self._f.seek(self.offset)

    def write(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows)
        if rows.dtype != np.uint8 or rows.shape[1:] != self.row_shape:
            raise DatasetError(f"{self.path}: rows must be (k, {', '.join(map(str, self.row_shape))}) uint8, "
                               f"got {rows.shape} {rows.dtype}")
        if self.count + len(rows) > self.capacity:
            raise DatasetError(f"{self.path}: {self.count + len(rows)} rows written, more than the {self.capacity} "
                               "it was opened for")
        self._f.write(np.ascontiguousarray(rows).data)
        self.count += len(rows)

    def close(self) -> Path:
        if self._f.closed:
            return self.path
        if self.count < self.capacity:
            _rewrite_npy_shape(self._f, self.offset, (self.count, *self.row_shape))
            self._f.truncate(self.offset + self.count * self.row_bytes)
        self._f.close()
        return self.path


def _rewrite_npy_shape(f, offset: int, shape: tuple[int, ...]) -> None:
    """Put `shape` into the header of the open .npy `f` without moving its data (the header keeps its length)."""
    f.seek(0)
    major, _ = np.lib.format.read_magic(f)
    start = f.tell() + (2 if major == 1 else 4)  # the header-length field: uint16 in version 1, uint32 after
    header = repr({"descr": "|u1", "fortran_order": False, "shape": tuple(shape)})
    room = offset - start - 1  # the header ends with a newline
    if len(header) > room:  # cannot happen when shrinking: the new shape has no more digits than the old
        raise DatasetError(f"{f.name}: new header {header} does not fit into {room} bytes")
    f.seek(start)
    f.write((header.ljust(room) + "\n").encode("latin1"))


def read_rows(path: str | os.PathLike, lo: int, hi: int) -> np.ndarray:
    """Rows [lo, hi) of an (N, R, R, 3) uint8 .npy, read into memory (not mapped: see ImageFile)."""
    with open(path, "rb") as f:
        major, _ = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, _, _ = read_header(f)
        row = int(np.prod(shape[1:]))
        hi = min(hi, shape[0])
        f.seek(f.tell() + lo * row)
        return np.fromfile(f, dtype=np.uint8, count=max(hi - lo, 0) * row).reshape(-1, *shape[1:])


class SplitWriter:
    """One split folder being written: `write` image chunks, then `finish` with meta and manifest once.
    Made by `open_split`, which puts it in place atomically."""

    def __init__(self, tmp: Path, path: Path, capacity: int, resolution: int):
        if resolution < 1:
            raise DatasetError(f"{path}: resolution must be >= 1, got {resolution}")
        self.tmp, self.path = tmp, path
        self.images = ImageFile(tmp / IMAGES, capacity, resolution)
        self.finished = False
        self._objects = None                # objects.csv while `write_objects` streams into it
        self._object_rows, self._object_max_frame = 0, -1

    def __len__(self) -> int:
        return self.images.count

    def write(self, images: np.ndarray) -> None:
        images = np.asarray(images)
        check_images(self.path, images)
        self.images.write(images)

    def write_objects(self, objects: pd.DataFrame) -> None:
        """Append rows to objects.csv, checked as they come (frames against the images the split was opened for;
        `finish` checks them against those written): a table of any length in the memory of one chunk. The first
        call writes the header, so a split whose games have object truth but no object on screen calls this once
        with no rows."""
        check_objects(objects, self.images.capacity, self.images.row_shape[0], self.path / OBJECTS,
                      first_row=self._object_rows)
        first = self._objects is None
        if first:
            self._objects = open(self.tmp / OBJECTS, "w", newline="")
            self._object_columns = list(objects.columns)
        elif list(objects.columns) != self._object_columns:
            raise DatasetError(f"{self.path / OBJECTS}: columns {list(objects.columns)} after "
                               f"{self._object_columns}; every chunk needs the same columns")
        objects.to_csv(self._objects, index=False, header=first, float_format="%.10g")
        self._object_rows += len(objects)
        if len(objects):
            self._object_max_frame = max(self._object_max_frame, int(objects["frame"].max()))

    def close(self) -> None:
        """Close the files being written (idempotent; `open_split` does this)."""
        self.images.close()
        if self._objects is not None:
            self._objects.close()

    def _check_object_classes(self, meta: pd.DataFrame, manifest: dict[str, Any]) -> None:
        """objects.csv as written, read back a chunk at a time: its classes against the games of its frames."""
        if not (self.tmp / OBJECTS).is_file():
            return
        games = frame_games(meta, manifest.get("classes", ["all"]))
        rows = 0
        for chunk in pd.read_csv(self.tmp / OBJECTS, usecols=["frame", "class"], chunksize=1 << 18):
            check_object_classes(chunk, games, manifest.get("object_truth"), self.path / OBJECTS, first_row=rows)
            rows += len(chunk)

    def finish(self, meta: pd.DataFrame, manifest: dict[str, Any], objects: pd.DataFrame | None = None) -> None:
        """Write meta.csv, objects.csv (when given, or streamed by `write_objects`) and manifest.json (with `count`
        and `resolution` filled in from the images written)."""
        check_meta(self.path / META, meta, len(self), manifest.get("classes"))
        if objects is not None and self._objects is not None:
            raise DatasetError(f"{self.path}: objects given to finish() after write_objects(); use one of them")
        if self._object_max_frame >= len(self):
            raise DatasetError(f"{self.path / OBJECTS}: an object on frame {self._object_max_frame}, but only "
                               f"{len(self)} images were written; rerun the data stage")
        self.close()
        manifest = {**manifest, "count": len(self), "resolution": self.images.row_shape[0]}
        meta.to_csv(self.tmp / META, index=False)  # plain writes: self.tmp is renamed into place whole
        if objects is not None:
            write_objects(self.tmp, objects, len(self), self.images.row_shape[0], where=self.path)
        self._check_object_classes(meta, manifest)
        (self.tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
        self.finished = True


@contextlib.contextmanager
def open_split(path: str | os.PathLike, capacity: int, resolution: int) -> Iterator[SplitWriter]:
    """`with open_split(out, n, R) as w:` write at most `n` images in chunks, then `w.finish(meta, manifest)`.

    The folder is filled under a temporary name (`atomic_dir`) and renamed into place when the block ends after
    `finish`; an error, or leaving the block without `finish`, removes it. Fewer than `capacity` images are fine
    (COCO skips files that do not decode). Several splits entered into one `contextlib.ExitStack` are written as
    one: all are renamed when the stack closes, none if anything failed, so a failure on val never leaves a new
    train beside an old or missing val.
    """
    path = Path(path)
    with atomic_dir(path) as tmp:
        w = SplitWriter(tmp, path, capacity, resolution)
        try:
            yield w
        finally:
            w.close()
        if not w.finished:
            raise DatasetError(f"{path}: the writer was left without finish(meta, manifest); nothing was written")


@contextlib.contextmanager
def scratch_dir(beside: str | os.PathLike) -> Iterator[Path]:
    """A hidden scratch folder next to `beside` for frames on their way into a split, removed afterwards (and,
    when a killed run left one behind, at the next start)."""
    clean_stale(beside)
    tmp = temp_dir_beside(beside)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
