"""Resumable, verified downloads and selective zip extraction (urllib only, no global state).

The invariant every caller relies on: a file at its final path is complete and verified. Bytes arrive in
`<dest>.part`; an interrupted transfer (dropped connection, killed process) leaves only the `.part`, and the next
call continues it with an HTTP Range request instead of starting over, which matters for COCO's 19 GB train zip.
Only after the size, the sha256 and an optional caller check pass is the `.part` renamed onto `dest`.
"""
from __future__ import annotations

import http.client
import os
import re
import shutil
import socket
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

from vqgan.io.hashing import sha256_file
from vqgan.io.progress import progress_bar

CHUNK = 1 << 20  # 1 MiB reads: big enough for speed, small enough for a live progress bar
USER_AGENT = "taming-pipeline/0.1 (+urllib)"


class DownloadError(OSError):
    """A download that cannot finish; the message names the URL and what to do. An OSError, like the network and
    file errors behind it, so a command reports it as one line (vqgan.io.cli)."""


class VerificationError(DownloadError):
    """All bytes arrived but the caller's `verify` rejected them: a retry would fetch the same bad file."""


def _part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _total_from_headers(resp: http.client.HTTPResponse, offset: int) -> int | None:
    """Full file size from `Content-Range: bytes a-b/TOTAL` (206) or Content-Length (200)."""
    if resp.status == 206:
        m = re.match(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", resp.headers.get("Content-Range", ""))
        if m and m.group(3) != "*":
            return int(m.group(3))
        length = resp.headers.get("Content-Length")
        return offset + int(length) if length else None
    length = resp.headers.get("Content-Length")
    return int(length) if length else None


def _is_permanent(err: BaseException) -> bool:
    """Errors that a retry cannot fix: client errors (404, 403) and a failed DNS lookup (offline machine)."""
    if isinstance(err, urllib.error.HTTPError):
        return 400 <= err.code < 500 and err.code not in (408, 429)
    if isinstance(err, urllib.error.URLError) and isinstance(err.reason, socket.gaierror):
        return True
    return False


def download(
    url: str,
    dest: str | os.PathLike,
    size: int | None = None,
    sha256: str | None = None,
    retries: int = 3,
    *,
    timeout: float = 60.0,
    backoff: float = 1.0,
    verify: Callable[[Path], None] | None = None,
    progress: bool = True,
    hint: str = "",
) -> Path:
    """Fetch `url` to `dest`, resuming a previous `.part`, and verify it before it appears at `dest`.

    size, sha256: expected values; a mismatch deletes the `.part` (its bytes are wrong, resuming cannot help)
        and raises DownloadError naming the URL, the expected and the received value.
    retries: attempts in all (>= 1); each one resumes where the last stopped. Waits backoff * 2**k in between.
    verify: called with the finished `.part` path; raise to reject it (e.g. an image that does not decode).
    hint: appended to network-failure messages, e.g. which config key points at a local copy instead.
    An existing `dest` of the expected size is trusted and returned at once: only verified files get there.
    """
    dest = Path(dest)
    if retries < 1:
        raise ValueError(f"retries must be >= 1, got {retries}")
    if dest.exists() and (size is None or dest.stat().st_size == size):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = _part_path(dest)
    suffix = f"; {hint}" if hint else ""

    last_err: BaseException | None = None
    for attempt in range(retries):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        offset = part.stat().st_size if part.exists() else 0
        if size is not None and offset > size:  # a stale .part from another file version
            part.unlink()
            offset = 0
        if size is not None and offset == size:
            break  # a previous call got every byte but was stopped before verifying
        try:
            total = _fetch(url, part, offset, timeout, progress)
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            last_err = e
            if _is_permanent(e):
                break
            continue
        if total is None or part.stat().st_size >= total:
            break
        # The server closed the connection before Content-Length: urllib returns a short read, not an error.
        last_err = ConnectionError(f"connection closed after {part.stat().st_size} of {total} bytes")
    else:
        raise DownloadError(
            f"could not download {url} after {retries} attempt(s): {last_err}. "
            f"The partial file {part} is kept; rerun to resume{suffix}"
        )
    if last_err is not None and _is_permanent(last_err):
        raise DownloadError(f"could not download {url}: {last_err}{suffix}")

    got_size = part.stat().st_size
    if size is not None and got_size != size:
        part.unlink()
        raise DownloadError(f"{url}: expected {size} bytes, got {got_size}; deleted {part}, rerun to fetch again")
    if sha256 is not None:
        got = sha256_file(part)
        if got != sha256.lower():
            part.unlink()
            raise DownloadError(
                f"{url}: sha256 mismatch, expected {sha256.lower()}, got {got}; deleted {part}. "
                "The server sent different bytes (a proxy error page or a changed file); rerun, or fetch it by hand"
            )
    if verify is not None:
        try:
            verify(part)
        except Exception as e:
            part.unlink()
            raise VerificationError(f"{url}: downloaded file failed verification ({e}); deleted {part}") from e
    os.replace(part, dest)
    return dest


def _fetch(url: str, part: Path, offset: int, timeout: float, progress: bool) -> int | None:
    """One request appending to `part` from `offset`; returns the file's full size if the server said it."""
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:
            # Range past the end: the .part is already whole (or belongs to another file); the size/sha checks
            # that follow decide which.
            return None
        raise
    with resp:
        if offset and resp.status != 206:
            offset = 0  # the server ignored Range and sends the whole file: start the .part over
        total = _total_from_headers(resp, offset)
        with open(part, "ab" if offset else "wb") as f, progress_bar(
            total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
            desc=part.name[:-5][:40], disable=not progress, leave=False,
        ) as bar:
            while block := resp.read(CHUNK):
                f.write(block)
                bar.update(len(block))
    return total


def extract_members(
    zip_path: str | os.PathLike,
    dest_dir: str | os.PathLike,
    members: Iterable[str] | Callable[[str], bool] | None = None,
    progress: bool = True,
) -> list[Path]:
    """Extract only the wanted members of a zip, each atomically (via `.part`), skipping ones already there.

    members: exact member names, a predicate on the name, or None for all. A named member that is not in the
    zip is an error (the zip is not the one the caller thinks). Paths that would escape `dest_dir` are refused.
    """
    zip_path, dest_dir = Path(zip_path), Path(dest_dir)
    root = dest_dir.resolve()
    out: list[Path] = []
    try:
        zf = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as e:
        raise DownloadError(f"{zip_path}: not a valid zip file ({e}); delete it and download again") from e
    with zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        if members is None:
            chosen = infos
        elif callable(members):
            chosen = [i for i in infos if members(i.filename)]
        else:
            wanted = set(members)
            chosen = [i for i in infos if i.filename in wanted]
            missing = wanted - {i.filename for i in chosen}
            if missing:
                raise DownloadError(f"{zip_path}: lacks {len(missing)} wanted member(s), e.g. {sorted(missing)[:3]}")
        for info in progress_bar(chosen, desc=f"extract {zip_path.name}", unit="file", disable=not progress,
                                 leave=False):
            target = (dest_dir / info.filename).resolve()
            if not target.is_relative_to(root):
                raise DownloadError(f"{zip_path}: member {info.filename!r} would be written outside {dest_dir}")
            out.append(target)
            if target.exists() and target.stat().st_size == info.file_size:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = _part_path(target)
            with zf.open(info) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, CHUNK)  # zipfile checks the CRC when the member is read to its end
            os.replace(tmp, target)
    return out
