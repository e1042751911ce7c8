"""The dataset contract's atomic folder writes: a failed writer leaves nothing behind, a finished one replaces."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from vqgan.data.dataset import DatasetError, read_split, write_split
from vqgan.io.files import atomic_dir


def test_atomic_dir_leaves_nothing_when_the_writer_fails(tmp_path):
    out = tmp_path / "split"
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("killed mid-write")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_replaces_or_keeps_an_existing_folder(tmp_path):
    out = tmp_path / "d"
    for content, keep, expected in (("old", False, "old"), ("new", False, "new"), ("other", True, "new")):
        with atomic_dir(out, keep_existing=keep) as tmp:
            (tmp / "f.txt").write_text(content)
        assert (out / "f.txt").read_text() == expected
    assert [p.name for p in tmp_path.iterdir()] == ["d"]  # no temporary folder left


def test_write_then_read_split_round_trips_and_checks_consistency(tmp_path):
    images = np.random.default_rng(0).integers(0, 255, (5, 8, 8, 3), dtype=np.uint8)
    meta = pd.DataFrame({"source_id": range(5), "label": [0, 1, 0, 1, 1]})
    split = read_split(write_split(tmp_path / "train", images, meta, {"classes": ["a", "b"]}))
    assert np.array_equal(split.images, images) and split.labels.tolist() == [0, 1, 0, 1, 1]
    assert split.manifest["count"] == 5 and split.resolution == 8 and split.class_names == ["a", "b"]
    with pytest.raises(DatasetError, match="meta rows"):
        write_split(tmp_path / "bad", images, meta.iloc[:3], {})
    assert not (tmp_path / "bad").exists()


def test_open_split_streams_chunks_and_shrinks_to_what_was_written(tmp_path):
    from vqgan.data.dataset import open_split, read_rows

    images = np.random.default_rng(1).integers(0, 255, (1234, 8, 8, 3), dtype=np.uint8)
    with open_split(tmp_path / "train", capacity=2000, resolution=8) as w:  # 766 rows never come (skipped files)
        for lo in range(0, len(images), 100):
            w.write(images[lo : lo + 100])
        w.finish(pd.DataFrame({"source_id": range(len(images))}), {"source": "test"})
    path = tmp_path / "train" / "images.npy"
    assert np.array_equal(np.load(path), images), "the shrunk file must load without a memory map too"
    split = read_split(tmp_path / "train")
    assert np.array_equal(split.images, images) and split.manifest["count"] == 1234
    assert path.stat().st_size == np.load(path, mmap_mode="r").offset + images.nbytes, "the file was not truncated"
    assert np.array_equal(read_rows(path, 1000, 1300), images[1000:])


def test_open_split_leaves_nothing_without_finish_or_beyond_capacity(tmp_path):
    from vqgan.data.dataset import open_split

    rows = np.zeros((3, 4, 4, 3), np.uint8)
    with pytest.raises(DatasetError, match="without finish"):
        with open_split(tmp_path / "a", 3, 4) as w:
            w.write(rows)
    with pytest.raises(DatasetError, match="more than the 2"):
        with open_split(tmp_path / "b", 2, 4) as w:
            w.write(rows)
    with pytest.raises(DatasetError, match="meta rows"):
        with open_split(tmp_path / "c", 3, 4) as w:
            w.write(rows)
            w.finish(pd.DataFrame({"source_id": [0]}), {})
    assert list(tmp_path.iterdir()) == []
