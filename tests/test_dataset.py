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


def test_objects_streamed_in_chunks_are_the_table_written_at_once_and_checked_as_they_come(tmp_path):
    from vqgan.data.dataset import OBJECTS, open_split

    images = np.zeros((4, 8, 8, 3), np.uint8)
    meta = pd.DataFrame({"source_id": range(4)})
    table = pd.DataFrame({"frame": [0, 0, 2, 3, 3], "class": ["ball", "player", "ball", "brick", "ball"],
                          "id": [0, 0, 0, 7, 0], "x0": [0.5, 1, 2, 3, 1 / 3], "y0": [1, 2, 0, 0, 0],
                          "x1": [2.5, 8, 3, 4, 1], "y1": [3, 4, 1, 1, 2], "visible": [1, 0, 1, 1, 1]})
    write_split(tmp_path / "whole", images, meta, {}, objects=table)
    with open_split(tmp_path / "chunks", 4, 8) as w:
        w.write(images)
        for lo, hi in ((0, 0), (0, 2), (2, 2), (2, 5)):  # empty chunks too: the header comes with the first call
            w.write_objects(table.iloc[lo:hi])
        w.finish(meta, {})
    assert (tmp_path / "chunks" / OBJECTS).read_bytes() == (tmp_path / "whole" / OBJECTS).read_bytes()

    with open_split(tmp_path / "none", 4, 8) as w:  # truth, but no object on screen: the header only
        w.write(images)
        w.write_objects(table.iloc[:0])
        w.finish(meta, {})
    assert read_split(tmp_path / "none").objects.empty
    with pytest.raises(DatasetError, match=r"objects.csv: row 4 .*x0 < x1 <= 8"):  # the file's row, not the chunk's
        with open_split(tmp_path / "bad", 4, 8) as w:
            w.write_objects(table.iloc[:2])
            w.write_objects(table.iloc[2:].assign(x1=9.0))
    with pytest.raises(DatasetError, match="an object on frame 3, but only 3 images"):  # fewer images than opened for
        with open_split(tmp_path / "short", 4, 8) as w:
            w.write(images[:3])
            w.write_objects(table)
            w.finish(meta.iloc[:3], {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chunks", "none", "whole"]
