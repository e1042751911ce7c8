"""The one way this project writes a file or a folder: build it under a hidden temporary name beside the
target, then rename it into place.

A rename on one file system is atomic, so a killed job never leaves a file or folder that looks complete, and
readers (Snakemake, the next stage, the report) never see half of one. Two details every writer needs and that
are easy to get wrong one copy at a time:

- `tempfile` creates files 0600 and folders 0700 whatever the umask; renamed into place they would stay
  private, and group members on a shared cluster could not read the results. Everything here is reset to the
  mode a plain `open()`/`mkdir()` would have given under the current umask.
- Temporary names start with `.` and carry `TMP_MARK`, so `clean_stale` can remove what a killed run left.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

TMP_MARK = ".tmp-"  # inside every temporary name: `.{name}.tmp-XXXX{suffix}`


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _plain_mode(path: Path, directory: bool) -> None:
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def _temp_name(path: Path) -> tuple[str, str]:
    # Keep the suffix last: numpy, PIL and matplotlib pick the format from it.
    return f".{path.name}{TMP_MARK}", path.suffix


def atomic_file(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)`, then rename the result onto `path` (for writers that need a path: safetensors,
    PNG, np.save). On any failure the temporary file is removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix, suffix = _temp_name(path)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        _plain_mode(Path(tmp), directory=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return atomic_file(path, lambda p: p.write_text(text))


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "tolist"):  # numpy scalars and arrays, torch tensors
        return o.tolist()
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n"


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    return write_text_atomic(path, to_json(data))


def temp_dir_beside(path: str | os.PathLike) -> Path:
    """A new hidden folder next to `path` (same file system, so the final rename is atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix, _ = _temp_name(path)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=path.parent))
    _plain_mode(tmp, directory=True)
    return tmp


def replace_dir(tmp: Path, path: str | os.PathLike, keep_existing: bool = False) -> Path:
    """Move the finished folder `tmp` to `path`, replacing an old one (or, with `keep_existing`, keeping it
    and dropping `tmp`: for caches that concurrent jobs fill with identical content)."""
    path = Path(path)
    if path.exists():
        if keep_existing:
            shutil.rmtree(tmp)
            return path
        shutil.rmtree(path)
    os.replace(tmp, path)
    return path


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, keep_existing: bool = False) -> Iterator[Path]:
    """`with atomic_dir(out) as tmp:` fill `tmp`; on success it becomes `out`, on any failure it is removed,
    so a killed job never leaves a folder that looks complete."""
    tmp = temp_dir_beside(path)
    try:
        yield tmp
        replace_dir(tmp, path, keep_existing)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class OutputError(OSError):
    """An output that cannot be written; the message names the path and what to do."""


Paths = dict[str, "str | os.PathLike | None | list[str | os.PathLike | None]"]


def _named_paths(paths: Paths) -> Iterator[tuple[str, str | os.PathLike]]:
    for name, value in paths.items():
        for p in value if isinstance(value, (list, tuple)) else [value]:
            if p is not None and str(p) != "":
                yield name, p


def refuse_overlap(outputs: Paths, inputs: Paths) -> None:
    """OutputError when an output path is, contains or lies inside one of the inputs, e.g. `--out` = the model
    folder (writing it would delete the model). Call it first in every command, before anything is read or written.
    Both sides are {flag: path or paths}; symlinks and relative paths are resolved. An input that does not exist
    cannot be destroyed (its reader reports it missing), and inline JSON given for a config path is skipped so."""
    ins = [(name, p, Path(p).resolve()) for name, p in _named_paths(inputs) if os.path.lexists(p)]
    for out_name, out in _named_paths(outputs):
        o = Path(out).resolve()
        for in_name, inp, i in ins:
            how = ("is" if o == i else "contains" if i.is_relative_to(o) else "lies inside" if o.is_relative_to(i)
                   else "")
            if how:
                raise OutputError(f"{out_name} {out} {how} the input {in_name} {inp}; writing it would destroy that "
                                  "input: choose an output path outside the inputs")


def prepare_output(path: str | os.PathLike, folder: bool = False) -> list[Path]:
    """Call at the start of a job for each output it will write (`folder`: a folder, else a file): creates the
    output's parent, proves it is writable and that nothing of the other kind stands there (so a bad `--out` fails
    now, not after an hour of work), and removes the temporaries that a killed earlier writer of `path` left beside
    it. Returns what was removed."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        there, wanted = ("a folder", "a file") if path.is_dir() else ("a file", "a folder")
        raise OutputError(f"cannot write {path}: {there} is there and the output is {wanted}; choose another path or "
                          f"remove {path}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        removed = clean_stale(path)
        prefix, suffix = _temp_name(path)
        fd, probe = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        reason = f"{e.strerror}: {e.filename}" if e.strerror and e.filename else str(e)
        raise OutputError(f"cannot write {path} ({reason}); choose another output path or make its folder "
                          "writable") from None
    return removed


def clean_stale(target: str | os.PathLike) -> list[Path]:
    """Remove the temporary files/folders that a killed writer of `target` left beside it (a SIGKILL runs no
    cleanup). Call it at the start of the job that owns `target`; returns what was removed."""
    target = Path(target)
    prefix, _ = _temp_name(target)
    removed = []
    if target.parent.is_dir():
        for p in target.parent.glob(f"{prefix}*"):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def safe_name(name: str) -> str:
    """A class name usable in a file name (Atari game names already are): sample files are `<safe_name>_<i>.png`."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)) or "class"
