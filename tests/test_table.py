"""The results table: schema, values carried from each stage's JSON, NaN for what is missing, clear errors."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from vqgan import table as T

REQUIRED = [
    "dataset", "kind", "resolution", "n_real", "n_gen", "fid", "kid_mean", "kid_std", "rfid", "psnr",
    "psnr_mean_baseline", "psnr_median_baseline", "fg_error", "fg_error_baseline", "codebook_usage", "perplexity",
    "vqgan_steps", "transformer_steps", "val_bits_per_token", "inception_sha256",
]


def _write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def results(tmp_path):
    """Synthetic stage outputs laid out as the workflow writes them: coco64 complete, atari64 without FID yet."""
    r = tmp_path / "results"
    sha = "ab" * 32
    files = {
        "fid": [_write(r / "fid" / "coco64.json", {
            "dataset": "coco64", "kind": "coco", "resolution": 64, "n_real": 500, "n_gen": 480, "fid": 81.25,
            "kid_mean": 0.0512, "kid_std": 0.0021, "n_recon": 500, "rfid": 33.5, "rkid_mean": 0.011,
            "rkid_std": 0.001, "inception_sha256": sha})],
        "recon": [
            _write(r / "vqgan" / "coco64" / "recon.json", {
                "n_images": 500, "resolution": 64, "psnr": 22.4, "psnr_baseline_mean": 12.1,
                "psnr_baseline_median": 11.8, "fg_mae": 9.5, "fg_mae_baseline_median": 51.0, "fg_fraction": 0.93,
                "usage": 0.71, "perplexity": 301.2, "n_codes": 512, "lpips": None}),
            _write(r / "vqgan" / "atari64" / "recon.json", {
                "n_images": 300, "resolution": 64, "psnr": 31.0, "psnr_baseline_mean": 24.0,
                "psnr_baseline_median": 28.0, "fg_mae": 20.0, "fg_mae_baseline_median": 60.0, "usage": 0.2,
                "perplexity": 40.0, "n_codes": 512}),
        ],
        "vqgan_train": [_write(r / "vqgan" / "coco64" / "train.json", {"steps": 1500, "wall_time_s": 900.0}),
                        _write(r / "vqgan" / "atari64" / "train.json", {"steps": 1500})],
        "transformer_train": [_write(r / "transformer" / "coco64" / "train.json", {
            "steps": 2000, "val_bits_per_token": 7.9, "uniform_bits_per_token": 9.0})],
    }
    return files


def test_table_has_the_schema_and_one_row_per_dataset(results):
    table = T.build_table(**results)
    assert table.columns[0] == "dataset"
    missing = [c for c in REQUIRED if c not in table.columns]
    assert not missing, f"table lacks columns {missing}"
    assert list(table["dataset"]) == ["atari64", "coco64"]


def test_table_values_come_from_the_right_files(results):
    row = T.build_table(**results).set_index("dataset").loc["coco64"]
    assert (row["kind"], row["resolution"], row["n_real"], row["n_gen"]) == ("coco", 64, 500, 480)
    assert (row["fid"], row["rfid"], row["kid_mean"]) == (81.25, 33.5, 0.0512)
    assert (row["psnr"], row["psnr_mean_baseline"], row["psnr_median_baseline"]) == (22.4, 12.1, 11.8)
    assert (row["fg_error"], row["fg_error_baseline"]) == (9.5, 51.0)
    assert (row["codebook_usage"], row["perplexity"]) == (0.71, 301.2)
    assert (row["vqgan_steps"], row["transformer_steps"], row["val_bits_per_token"]) == (1500, 2000, 7.9)
    assert row["inception_sha256"] == "ab" * 6
    assert math.isnan(row["lpips"])  # null in the JSON


def test_missing_stages_and_keys_are_empty_cells_not_errors(results, tmp_path):
    table = T.build_table(**results)
    atari = table.set_index("dataset").loc["atari64"]
    assert pd.isna(atari["fid"]) and pd.isna(atari["n_real"]) and pd.isna(atari["transformer_steps"])
    assert pd.isna(atari["fg_fraction"]) and pd.isna(atari["vqgan_wall_s"])  # keys this file lacks
    assert atari["resolution"] == 64  # taken from recon.json when there is no FID yet
    assert atari["psnr"] == 31.0
    assert str(table["n_real"].dtype) == "Int64"  # integer columns stay integers beside missing rows


def test_cli_writes_csv_and_markdown(results, tmp_path, capsys):
    out, md = tmp_path / "fid_table.csv", tmp_path / "fid_table.md"
    T.main(["--fid", *map(str, results["fid"]), "--recon", *map(str, results["recon"]),
            "--vqgan-train", *map(str, results["vqgan_train"]),
            "--transformer-train", *map(str, results["transformer_train"]),
            "--out", str(out), "--markdown", str(md)])
    csv = pd.read_csv(out)
    assert list(csv.columns) == ["dataset", *T.COLUMNS]
    assert csv.set_index("dataset").loc["coco64", "fid"] == 81.25
    lines = md.read_text().splitlines()
    assert len(lines) == 2 + 2  # header, rule, two datasets
    assert lines[0].startswith("| dataset | kind |")
    assert "| coco64 | coco | 64 | 500 | 480 | 81.25 |" in md.read_text()
    assert "81.25" in capsys.readouterr().out


def test_bad_inputs_name_the_file(tmp_path):
    broken = tmp_path / "fid" / "x.json"
    broken.parent.mkdir()
    broken.write_text("{not json")
    with pytest.raises(T.TableError, match="x.json: not valid JSON"):
        T.build_table(fid=[broken])
    with pytest.raises(T.TableError, match="no such file"):
        T.build_table(recon=[tmp_path / "vqgan" / "y" / "recon.json"])
    a = _write(tmp_path / "a" / "coco" / "recon.json", {})
    b = _write(tmp_path / "b" / "coco" / "recon.json", {})
    with pytest.raises(T.TableError, match="second recon file for dataset 'coco'"):
        T.build_table(recon=[a, b])
    with pytest.raises(SystemExit, match="no input files"):
        T.main(["--out", str(tmp_path / "t.csv")])
