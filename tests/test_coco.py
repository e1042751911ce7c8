"""The COCO stage on real data: the 100-image tiny COCO 2017 of .test/data (official JSON) as the local root.

Download modes run against a local HTTP server (tests/test_download.py) that plays images.cocodataset.org:
`coco.download.base_url` replaces that host in the zip URLs and in every image's `coco_url`.
"""
from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_COCO
from PIL import Image
from test_download import make_zip, serve_files, sha

import vqgan.data.coco as coco_module
from vqgan.data.coco import (
    COMPLETE,
    CocoDataset,
    CocoError,
    RemoteFile,
    download_coco,
    load_coco,
    main,
    prepare,
    select_images,
)
from vqgan.data.dataset import read_split
from vqgan.data.download import DownloadError

TINY = TINY_COCO


def official_images(split: str) -> dict[int, dict]:
    data = json.loads((TINY / "annotations" / f"instances_{split}2017.json").read_text())
    return {im["id"]: im for im in data["images"]}


def reference_square(path: Path, resolution: int) -> np.ndarray:
    """An independent center crop + antialiased resize, straight from Pillow."""
    im = Image.open(path).convert("RGB")
    w, h = im.size
    s = min(w, h)
    box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
    return np.asarray(im.crop(box).resize((resolution, resolution), Image.BICUBIC))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    out = tmp_path_factory.mktemp("coco") / "coco_tiny"
    prepare(TINY, CocoDataset(resolution=32, train_images=40, val_images=20), out, workers=1, progress=False)
    return out


def test_prepare_writes_contract_with_requested_counts(prepared):
    for split, n in (("train", 40), ("val", 20)):
        s = read_split(prepared / split)
        assert s.images.shape == (n, 32, 32, 3) and s.images.dtype == np.uint8
        assert list(s.meta.columns) == ["source_id", "file_name", "width", "height", "label"]
        assert s.manifest["requested"] == n and s.manifest["count"] == n and s.manifest["skipped"] == []
        assert s.manifest["source"] == "coco" and s.manifest["coco_split"] == f"{split}2017"
        assert (s.labels == 0).all()
        assert s.meta["source_id"].is_monotonic_increasing  # deterministic order: by image id
        official = official_images(split)
        for row in s.meta.itertuples():  # every row is an image of COCO's own split, with its recorded size
            assert official[row.source_id]["file_name"] == row.file_name
            assert (official[row.source_id]["width"], official[row.source_id]["height"]) == (row.width, row.height)
    train_ids = set(read_split(prepared / "train").meta["source_id"])
    assert not train_ids & set(read_split(prepared / "val").meta["source_id"])


def test_prepared_pixels_are_center_crops_of_those_files(prepared):
    s = read_split(prepared / "val")
    refs = [reference_square(TINY / "val2017" / f, 32) for f in s.meta["file_name"]]
    for i, ref in enumerate(refs):
        np.testing.assert_array_equal(s.images[i], ref, err_msg=f"row {i} ({s.meta['file_name'][i]})")
    # and the rows are not interchangeable: each matches its own file far better than its neighbour's
    diff = np.abs(s.images[0].astype(int) - refs[1].astype(int)).mean()
    assert diff > 10, diff


def test_selection_is_deterministic_seeded_and_nested():
    coco = load_coco(TINY, "train")
    ids = lambda recs: [r["id"] for r in recs]  # noqa: E731
    a = ids(select_images(coco, 20, seed=0))
    assert a == ids(select_images(coco, 20, seed=0)) == sorted(a)
    assert a != ids(select_images(coco, 20, seed=1))
    assert set(a) < set(ids(select_images(coco, 30, seed=0)))  # a bigger N keeps the smaller N's images
    assert ids(select_images(coco, 5, seed=None)) == sorted(official_images("train"))[:5]
    assert len(select_images(coco, 500, seed=0)) == 50  # fewer candidates than asked: all of them


def test_category_and_min_size_filters():
    coco = load_coco(TINY, "val")
    data = json.loads((TINY / "annotations" / "instances_val2017.json").read_text())
    dog = next(c["id"] for c in data["categories"] if c["name"] == "dog")
    cat = next(c["id"] for c in data["categories"] if c["name"] == "cat")
    with_pets = {a["image_id"] for a in data["annotations"] if a["category_id"] in (dog, cat)}
    assert with_pets, "tiny COCO val has dogs or cats"
    got = {r["id"] for r in select_images(coco, 100, categories=["dog", "cat"])}
    assert got == with_pets  # images showing any of the categories, not only both
    big = {i for i, im in official_images("val").items() if min(im["width"], im["height"]) >= 480}
    assert 0 < len(big) < 50
    assert {r["id"] for r in select_images(coco, 100, min_size=480)} == big


def test_unknown_category_error_lists_valid_names():
    coco = load_coco(TINY, "val")
    with pytest.raises(CocoError, match=r"unknown COCO category name\(s\) \['unicorn'\].*'zebra'"):
        select_images(coco, 10, categories=["dog", "unicorn"])


def test_bad_dataset_entries_name_the_key():
    with pytest.raises(CocoError, match=r"coco64\.train_images"):
        CocoDataset.from_dict({"kind": "coco", "resolution": 32, "train_images": 0}, "coco64")
    with pytest.raises(CocoError, match=r"coco64\.resolution: required"):
        CocoDataset.from_dict({"kind": "coco"}, "coco64")
    with pytest.raises(CocoError, match=r"coco64\.kind"):
        CocoDataset.from_dict({"kind": "atari", "resolution": 32}, "coco64")


def test_broken_and_odd_files_are_converted_or_skipped_and_counted(tmp_path, monkeypatch):
    monkeypatch.setattr(coco_module, "POOL_MIN_IMAGES", 0)  # decode in a real worker pool, as at full size
    root = tmp_path / "coco"
    shutil.copytree(TINY / "annotations", root / "annotations")
    shutil.copytree(TINY / "val2017", root / "val2017")
    shutil.copytree(TINY / "train2017", root / "train2017")
    names = sorted(p.name for p in (root / "train2017").iterdir())
    truncated, gray, cmyk, palette, rgba = names[:5]
    path = lambda n: root / "train2017" / n  # noqa: E731
    path(truncated).write_bytes(path(truncated).read_bytes()[:4000])
    Image.open(path(gray)).convert("L").save(path(gray), "JPEG")
    Image.open(path(cmyk)).convert("CMYK").save(path(cmyk), "JPEG")
    # PNG bytes under a .jpg name: Pillow goes by content, as COCO's few odd files require
    Image.open(path(palette)).convert("P").save(path(palette), "PNG")
    im = Image.open(path(rgba)).convert("RGBA")
    im.putalpha(0)  # fully transparent: must come out white, not black
    im.save(path(rgba), "PNG")

    out = tmp_path / "ds"
    with pytest.warns(UserWarning, match="49 usable images of 50 requested"):
        prepare(root, CocoDataset(resolution=16, train_images=50, val_images=5), out, workers=2, progress=False)
    s = read_split(out / "train")
    assert len(s) == 49 and s.manifest["requested"] == 50 and s.manifest["num_skipped"] == 1
    assert [k["file_name"] for k in s.manifest["skipped"]] == [truncated]
    assert "truncated" in s.manifest["skipped"][0]["error"]
    assert truncated not in set(s.meta["file_name"])
    assert s.manifest["source_modes"] == {"CMYK": 1, "L": 1, "P": 1, "RGB": 45, "RGBA": 1}
    row = {f: i for i, f in enumerate(s.meta["file_name"])}
    g = s.images[row[gray]].astype(int)
    assert (g[..., 0] == g[..., 1]).all() and (g[..., 1] == g[..., 2]).all()
    assert (s.images[row[rgba]] == 255).all()
    np.testing.assert_allclose(s.images[row[cmyk]], reference_square(TINY / "train2017" / cmyk, 16), atol=40)


def test_zero_usable_images_is_an_error(tmp_path):
    root = tmp_path / "coco"
    shutil.copytree(TINY / "annotations", root / "annotations")
    (root / "train2017").mkdir()  # annotations but no image files
    with pytest.raises(CocoError, match=r"train: none of the 3 selected images.*file not found.*coco.root"):
        prepare(root, CocoDataset(resolution=16, train_images=3, val_images=3), tmp_path / "ds", progress=False)
    assert not (tmp_path / "ds" / "train").exists()


def test_missing_annotations_name_the_file_and_the_key(tmp_path):
    with pytest.raises(CocoError, match=r"instances_train2017\.json not found.*`coco\.root`"):
        prepare(tmp_path, CocoDataset(resolution=16), tmp_path / "ds", progress=False)


def test_cli_prepare_and_errors(tmp_path, capsys):
    cfg = json.dumps({"kind": "coco", "resolution": 16, "train_images": 4, "val_images": 3, "seed": 7})
    main(["prepare", "--config", cfg, "--root", str(TINY), "--out", str(tmp_path / "ds"), "--workers", "1",
          "--no-progress"])
    assert "4 images (0 skipped)" in capsys.readouterr().out
    assert len(read_split(tmp_path / "ds" / "val")) == 3
    bad = json.dumps({"kind": "coco", "resolution": 16, "categories": ["unicorn"]})
    with pytest.raises(SystemExit, match="unknown COCO category"):
        main(["prepare", "--config", bad, "--root", str(TINY), "--out", str(tmp_path / "bad"), "--workers", "1"])


# ---------------------------------------------------------------------------------------------------------------
# download, against 127.0.0.1 playing images.cocodataset.org


def annotations_zip() -> bytes:
    return make_zip({f"annotations/instances_{s}2017.json": (TINY / "annotations" / f"instances_{s}2017.json")
                     .read_bytes() for s in ("train", "val")} | {"annotations/captions_val2017.json": b"{}"})


def site(with_image_zips: bool = False) -> tuple[dict[str, bytes], dict[str, RemoteFile]]:
    """URL path -> bytes as images.cocodataset.org lays them out, and the zip table with their sha256."""
    files = {"/annotations/annotations_trainval2017.zip": annotations_zip()}
    for split in ("train", "val"):
        images = {f"{split}2017/{p.name}": p.read_bytes() for p in sorted((TINY / f"{split}2017").iterdir())}
        files.update({f"/{k}": v for k, v in images.items()})
        if with_image_zips:
            files[f"/zips/{split}2017.zip"] = make_zip(images)
    table = {key: RemoteFile(path, len(files["/" + path]), sha(files["/" + path])) for key, path in (
        ("annotations", "annotations/annotations_trainval2017.zip"),
        ("val", "zips/val2017.zip"), ("train", "zips/train2017.zip")) if "/" + path in files}
    return files, table


DATASETS = {
    "small": {"kind": "coco", "resolution": 16, "train_images": 6, "val_images": 4},
    "cats": {"kind": "coco", "resolution": 16, "train_images": 3, "val_images": 2, "categories": ["cat"]},
    "atari": {"kind": "atari", "resolution": 16, "games": ["Pong"]},  # not COCO: ignored by download
}


def expected_files(split: str) -> set[str]:
    coco = load_coco(TINY, split)
    out = set()
    for entry in DATASETS.values():
        if entry["kind"] == "coco":
            ds = CocoDataset.from_dict(entry)
            out |= {r["file_name"] for r in select_images(coco, ds.count(split), ds.categories, ds.min_size, ds.seed)}
    return out


def test_images_mode_fetches_exactly_the_selected_images(tmp_path):
    files, table = site()
    out = tmp_path / "coco"
    with serve_files(files) as srv:
        cfg = {"root": None, "download": {"mode": "images", "base_url": srv.url, "workers": 4, "retries": 2}}
        summary = download_coco(cfg, DATASETS, out, files=table, progress=False)
    for split in ("train", "val"):
        assert {p.name for p in (out / f"{split}2017").iterdir()} == expected_files(split)
        assert summary["splits"][split]["selected"] == len(expected_files(split))
    assert {p.name for p in (out / "annotations").iterdir()} == {"instances_train2017.json", "instances_val2017.json"}
    assert json.loads((out / COMPLETE).read_text())["mode"] == "images"
    assert not list(out.rglob("*.part"))
    # prepare sees the downloaded root exactly as the full local copy
    ds = CocoDataset.from_dict(DATASETS["small"])
    prepare(out, ds, tmp_path / "from_download", progress=False)
    prepare(TINY, ds, tmp_path / "from_local", progress=False)
    for split in ("train", "val"):
        a, b = read_split(tmp_path / "from_download" / split), read_split(tmp_path / "from_local" / split)
        np.testing.assert_array_equal(a.images, b.images)
        assert a.manifest["num_skipped"] == 0


def test_images_mode_records_an_image_that_does_not_decode(tmp_path):
    files, table = site()
    bad = sorted(expected_files("val"))[0]
    files[f"/val2017/{bad}"] = files[f"/val2017/{bad}"][:3000]  # served whole (Content-Length fits), but broken
    out = tmp_path / "coco"
    with serve_files(files) as srv:
        cfg = {"download": {"base_url": srv.url, "retries": 1}}
        with pytest.warns(UserWarning, match="do not decode"):
            summary = download_coco(cfg, DATASETS, out, files=table, progress=False)
    assert summary["splits"]["val"]["undecodable"] == [bad]
    assert not (out / "val2017" / bad).exists() and not list(out.rglob("*.part"))
    assert (out / COMPLETE).exists()


def test_zips_mode_extracts_only_the_selected_members(tmp_path):
    files, table = site(with_image_zips=True)
    out = tmp_path / "coco"
    with serve_files(files) as srv:
        download_coco({"download": {"mode": "zips", "base_url": srv.url}}, DATASETS, out, files=table,
                      progress=False)
        requests = [p for p, _ in srv.log]
    assert sorted(requests) == ["/annotations/annotations_trainval2017.zip", "/zips/train2017.zip",
                                "/zips/val2017.zip"]
    for split in ("train", "val"):
        got = {p.name for p in (out / f"{split}2017").iterdir()}
        assert got == expected_files(split)
        for name in got:
            assert (out / f"{split}2017" / name).read_bytes() == (TINY / f"{split}2017" / name).read_bytes()
    assert (out / "zips" / "val2017.zip").stat().st_size == table["val"].size


def test_wrong_zip_checksum_stops_before_anything_is_marked_complete(tmp_path):
    files, table = site()
    table["annotations"] = RemoteFile(table["annotations"].path, table["annotations"].size, "f" * 64)
    with serve_files(files) as srv:
        with pytest.raises(DownloadError, match="sha256 mismatch"):
            download_coco({"download": {"base_url": srv.url}}, DATASETS, tmp_path / "coco", files=table,
                          progress=False)
    assert not (tmp_path / "coco" / COMPLETE).exists()
    assert not (tmp_path / "coco" / "annotations").exists()


def test_offline_download_stops_at_once_saying_to_set_coco_root(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(SystemExit, match=r"set `coco\.root`"):
        main(["download", "--config", json.dumps({"download": {"base_url": f"http://127.0.0.1:{port}",
                                                                 "retries": 1}}),
              "--datasets", json.dumps(DATASETS), "--out", str(tmp_path / "coco"), "--no-progress"])
    assert not (tmp_path / "coco" / COMPLETE).exists()


def test_download_config_errors_name_the_key(tmp_path):
    with pytest.raises(CocoError, match=r"coco\.download\.mode"):
        download_coco({"download": {"mode": "torrent"}}, DATASETS, tmp_path, progress=False)
    with pytest.raises(CocoError, match=r"coco\.download: unknown key\(s\) \['wokers'\]"):
        download_coco({"download": {"wokers": 2}}, DATASETS, tmp_path, progress=False)
    with pytest.raises(CocoError, match="no dataset of kind 'coco'"):
        download_coco({}, {"a": DATASETS["atari"]}, tmp_path, progress=False)
