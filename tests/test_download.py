"""vqgan.data.download against a real HTTP server on 127.0.0.1 (offline): resume, verification, atomicity, zips.

`serve_files` is also used by tests/test_coco.py for the download stage.
"""
from __future__ import annotations

import hashlib
import io
import re
import socket
import threading
import zipfile
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from vqgan.data.download import DownloadError, VerificationError, download, extract_members


class _RangeHandler(BaseHTTPRequestHandler):
    """Serves `server.files` ({url path: bytes}) with single-range `Range: bytes=a-` support.

    SimpleHTTPRequestHandler ignores Range, so resuming could not be tested with it. A path in
    `server.drop_once` gets half of its body and then a closed connection, once.
    """

    def do_GET(self):  # noqa: N802 (http.server's naming)
        srv = self.server
        rng = self.headers.get("Range")
        with srv.lock:
            srv.log.append((self.path, rng))
            drop = self.path in srv.drop_once
            srv.drop_once.discard(self.path)
        data = srv.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start, end, status = 0, len(data) - 1, 200
        if rng and srv.honour_range:
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng)
            start = int(m.group(1))
            end = int(m.group(2)) if m.group(2) else end
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        body = data[start:end + 1]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.end_headers()
        if drop:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True  # HTTP/1.0 anyway: the socket closes short of Content-Length
            return
        self.wfile.write(body)

    def log_message(self, *args):  # keep test output clean
        pass


@contextmanager
def serve_files(files: dict[str, bytes], honour_range: bool = True):
    """A threaded HTTP server on a free 127.0.0.1 port; yields it (`.url`, `.files`, `.log`, `.drop_once`)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    server.daemon_threads = True
    server.files = files
    server.honour_range = honour_range
    server.drop_once = set()
    server.log = []
    server.lock = threading.Lock()
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def make_zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.fixture(scope="module")
def payload() -> bytes:
    # Incompressible bytes so the zip is large enough (~300 KB) that half a body is a real partial transfer.
    rng = np.random.default_rng(0)
    return make_zip({
        "annotations/a.json": b'{"images": []}',
        "val2017/x.bin": rng.bytes(200_000),
        "train2017/y.bin": rng.bytes(100_000),
    })


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_dropped_connection_is_resumed_with_range_request(tmp_path, payload):
    with serve_files({"/f.zip": payload}) as srv:
        srv.drop_once.add("/f.zip")
        dest = download(f"{srv.url}/f.zip", tmp_path / "f.zip", len(payload), sha(payload), retries=3,
                        backoff=0, progress=False)
    assert dest.read_bytes() == payload
    assert not (tmp_path / "f.zip.part").exists()
    # Second request continues where the dropped one stopped instead of starting over.
    assert [r for _, r in srv.log] == [None, f"bytes={len(payload) // 2}-"]


def test_interrupted_download_leaves_only_part_and_next_call_resumes(tmp_path, payload):
    dest = tmp_path / "f.zip"
    with serve_files({"/f.zip": payload}) as srv:
        srv.drop_once.add("/f.zip")
        with pytest.raises(DownloadError, match=r"f\.zip.*rerun to resume"):
            download(f"{srv.url}/f.zip", dest, len(payload), sha(payload), retries=1, progress=False)
        assert not dest.exists(), "a half-written file appeared at the final path"
        part = tmp_path / "f.zip.part"
        assert part.stat().st_size == len(payload) // 2
        download(f"{srv.url}/f.zip", dest, len(payload), sha(payload), retries=1, progress=False)
    assert dest.read_bytes() == payload and not part.exists()
    assert srv.log[-1][1] == f"bytes={len(payload) // 2}-"


def test_wrong_sha256_is_rejected_with_clear_error_and_nothing_left(tmp_path, payload):
    wrong = "0" * 64
    with serve_files({"/f.zip": payload}) as srv:
        url = f"{srv.url}/f.zip"
        with pytest.raises(DownloadError) as err:
            download(url, tmp_path / "f.zip", len(payload), wrong, progress=False)
    msg = str(err.value)
    assert url in msg and wrong in msg and sha(payload) in msg, msg
    assert list(tmp_path.iterdir()) == [], "the rejected bytes must not stay on disk"


def test_wrong_size_is_rejected(tmp_path, payload):
    with serve_files({"/f.zip": payload}) as srv:
        with pytest.raises(DownloadError, match=f"expected {len(payload) + 1} bytes, got {len(payload)}"):
            download(f"{srv.url}/f.zip", tmp_path / "f.zip", len(payload) + 1, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_server_ignoring_range_restarts_the_part_from_zero(tmp_path, payload):
    (tmp_path / "f.zip.part").write_bytes(b"x" * 1000)  # stale bytes that must not end up in the file
    with serve_files({"/f.zip": payload}, honour_range=False) as srv:
        dest = download(f"{srv.url}/f.zip", tmp_path / "f.zip", len(payload), sha(payload), progress=False)
    assert srv.log == [("/f.zip", "bytes=1000-")]
    assert dest.read_bytes() == payload


def test_complete_part_from_a_killed_run_is_verified_without_refetching_body(tmp_path, payload):
    (tmp_path / "f.zip.part").write_bytes(payload)
    with serve_files({"/f.zip": payload}) as srv:
        dest = download(f"{srv.url}/f.zip", tmp_path / "f.zip", len(payload), sha(payload), progress=False)
    assert dest.read_bytes() == payload
    assert srv.log == []  # size known and reached: only the checks ran


def test_existing_final_file_is_not_downloaded_again(tmp_path, payload):
    (tmp_path / "f.zip").write_bytes(payload)
    with serve_files({"/f.zip": payload}) as srv:
        download(f"{srv.url}/f.zip", tmp_path / "f.zip", len(payload), sha(payload), progress=False)
    assert srv.log == []


def test_missing_file_fails_at_once_naming_the_url(tmp_path):
    with serve_files({}) as srv:
        with pytest.raises(DownloadError, match=r"nope\.zip.*404"):
            download(f"{srv.url}/nope.zip", tmp_path / "nope.zip", retries=5, backoff=10, progress=False)
    assert len(srv.log) == 1, "a 404 cannot be fixed by retrying"


def test_unreachable_server_error_carries_the_hint(tmp_path):
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError, match="set `coco.root`"):
        download(f"http://127.0.0.1:{port}/f.zip", tmp_path / "f.zip", retries=2, backoff=0, progress=False,
                 hint="set `coco.root`")
    assert not (tmp_path / "f.zip").exists()


def test_verify_rejection_deletes_the_part(tmp_path, payload):
    def reject(path: Path):
        raise ValueError("not an image")

    with serve_files({"/f.zip": payload}) as srv:
        with pytest.raises(VerificationError, match="not an image"):
            download(f"{srv.url}/f.zip", tmp_path / "f.zip", verify=reject, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_extract_members_writes_only_the_wanted_members(tmp_path, payload):
    (tmp_path / "f.zip").write_bytes(payload)
    out = tmp_path / "out"
    paths = extract_members(tmp_path / "f.zip", out, ["val2017/x.bin"], progress=False)
    assert paths == [(out / "val2017/x.bin").resolve()]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == ["val2017/x.bin"]
    with zipfile.ZipFile(tmp_path / "f.zip") as zf:
        assert (out / "val2017/x.bin").read_bytes() == zf.read("val2017/x.bin")
    extract_members(tmp_path / "f.zip", out, lambda name: name.startswith("annotations/"), progress=False)
    assert (out / "annotations/a.json").read_bytes() == b'{"images": []}'
    assert not (out / "train2017").exists()


def test_extract_members_refuses_missing_members_and_paths_outside(tmp_path, payload):
    (tmp_path / "f.zip").write_bytes(payload)
    with pytest.raises(DownloadError, match="lacks 1 wanted member"):
        extract_members(tmp_path / "f.zip", tmp_path / "out", ["val2017/absent.jpg"], progress=False)
    (tmp_path / "evil.zip").write_bytes(make_zip({"../escape.txt": b"x"}))
    with pytest.raises(DownloadError, match="outside"):
        extract_members(tmp_path / "evil.zip", tmp_path / "out", progress=False)
    assert not (tmp_path / "escape.txt").exists()
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(DownloadError, match="not a valid zip"):
        extract_members(tmp_path / "bad.zip", tmp_path / "out", progress=False)
