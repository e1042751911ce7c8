"""The results table: schema, values carried from each stage's JSON, one row per dataset and variant, spread over
sampling seeds, comparable groups, per-game and eval-set rows, notes (data smaller than configured, FID at a biased
N, below the constant-image baseline), NaN for what is missing, clear errors."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from vqgan.eval import table as T

REQUIRED = [
    "dataset", "variant", "subset", "comparable_group", "n_seeds", "fid_seed_std", "kid_seed_std", "fid_floor",
    "copy_rate", "copy_rate_recon", "kind", "resolution", "n_real", "n_gen", "fid", "kid_mean", "kid_std", "rfid", "psnr",
    "psnr_mean_baseline", "psnr_median_baseline", "psnr_gain_over_mean_db", "object_recall",
    "object_recall_mean_baseline", "n_objects_scored", "box_psnr", "box_psnr_mean_baseline", "lpips",
    "lpips_mean_baseline",
    "box_psnr_median_baseline", "box_mae", "box_mae_median_baseline", "notes", "codebook_usage", "perplexity",
    "vqgan_steps", "transformer_steps", "val_bits_per_token", "inception_sha256",
]


def _write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def _split(folder, requested, count):
    folder.mkdir(parents=True)
    _write(folder / "manifest.json", {"source": "coco", "requested": requested, "count": count})
    return folder


@pytest.fixture
def results(tmp_path):
    """Synthetic stage outputs laid out as the workflow writes them: coco64 complete in two variants (its val split
    short of its config), atari64 without FID yet."""
    r = tmp_path / "results"
    sha = "ab" * 32
    fid = {"dataset": "coco64", "kind": "coco", "resolution": 64, "n_real": 500, "n_gen": 480, "n_seeds": 3,
           "fid": 81.25, "fid_seed_std": 1.5, "kid_mean": 0.0512, "kid_seed_std": 0.0004, "kid_std": 0.0021,
           "n_recon": 500, "rfid": 33.5, "rkid_mean": 0.011, "rkid_std": 0.001, "inception_sha256": sha,
           "real_data_sha256": "cd" * 32, "fid_floor": 20.0, "copy_rate": 0.04,
           "copy_rate_recon": 0.925}
    files = {
        "fid": [_write(r / "fid" / "coco64" / "ours.json", fid),
                _write(r / "fid" / "coco64" / "paper.json", {**fid, "fid": 95.0, "n_gen": 240})],
        "data": [_split(r / "data" / "coco64" / "train", 2000, 2000), _split(r / "data" / "coco64" / "val", 500, 480)],
        "recon": [
            _write(r / "vqgan" / "coco64" / "paper" / "recon.json", {"n_images": 500, "psnr_gain_over_mean_db": -1.25}),
            _write(r / "vqgan" / "coco64" / "ours" / "recon.json", {
                "n_images": 500, "resolution": 64, "psnr": 22.4, "psnr_baseline_mean": 12.1,
                "psnr_baseline_median": 11.8, "psnr_gain_over_mean_db": 10.3, "object_recall": None,
                "objects": {"unavailable_reason": "no object truth (no objects.csv)"},
                "usage": 0.71, "perplexity": 301.2, "n_codes": 512, "lpips": 0.31, "lpips_baseline_mean": 0.72}),
            _write(r / "vqgan" / "atari64" / "ours" / "recon.json", {
                "n_images": 300, "resolution": 64, "psnr": 31.0, "psnr_baseline_mean": 24.0,
                "psnr_baseline_median": 28.0, "psnr_gain_over_mean_db": 7.0, "object_recall": 0.05,
                "object_recall_baseline_mean": 0.01, "n_objects_scored": 900, "box_psnr": 12.0,
                "box_psnr_baseline_median": 9.0, "usage": 0.2, "perplexity": 40.0, "n_codes": 512,
                "per_class": {
                    "Pong": {"n_images": 100, "psnr": 28.5, "psnr_baseline_mean": 29.1,
                             "psnr_gain_over_mean_db": -0.6, "object_recall": 0.0, "n_objects_scored": 250},
                    "MsPacman": {"n_images": 60, "psnr": 27.0, "psnr_baseline_mean": 17.0, "psnr_gain_over_mean_db": 10.0,
                                 "per_level": {
                                     "0": {"n_images": 40, "n_train_images": 300, "psnr": 27.5, "psnr_baseline_mean": 17.5,
                                           "psnr_gain_over_mean_db": 10.0, "psnr_baseline_level_mean": 27.9},
                                     "3": {"n_images": 20, "n_train_images": 0, "psnr": 16.0, "psnr_baseline_mean": 16.4,
                                           "psnr_gain_over_mean_db": -0.4, "psnr_baseline_level_mean": None}}},
                    "Seaquest": {"n_images": 200, "psnr": 32.0, "psnr_baseline_mean": 22.0,
                                 "psnr_gain_over_mean_db": 10.0, "object_recall": None, "n_objects": None,
                                 "objects_unavailable_reason": "no object truth (no RAM rules for Seaquest)"}},
                "eval_sets": {"expert": {"n_images": 40, "psnr": 30.0, "psnr_baseline_mean": 27.0,
                                         "psnr_gain_over_mean_db": 3.0, "object_recall": 0.4, "n_objects_scored": 120,
                                         "lpips": 0.2}}}),
        ],
        "vqgan_train": [_write(r / "vqgan" / "coco64" / "ours" / "train.json", {"steps": 1500, "wall_time_s": 900.0}),
                        _write(r / "vqgan" / "atari64" / "ours" / "train.json", {"steps": 1500})],
        "transformer_train": [_write(r / "transformer" / "coco64" / "ours" / "train.json", {
            "steps": 2000, "val_bits_per_token": 7.9, "uniform_bits_per_token": 9.0})],
    }
    return files


def test_table_has_the_schema_and_one_row_per_dataset_and_variant(results):
    table = T.build_table(**results)
    assert table.columns[0] == "dataset"
    missing = [c for c in REQUIRED if c not in table.columns]
    assert not missing, f"table lacks columns {missing}"
    assert list(zip(table["dataset"], table["variant"], table["subset"])) == [
        ("atari64", "ours", "all"), ("atari64", "ours", "Pong"), ("atari64", "ours", "MsPacman"),
        ("atari64", "ours", "MsPacman/level0"), ("atari64", "ours", "MsPacman/level3"), ("atari64", "ours", "Seaquest"),
        ("atari64", "ours", "eval_set:expert"), ("coco64", "ours", "all"), ("coco64", "paper", "all")]


def test_spread_n_and_comparable_groups(results, tmp_path):
    table = T.build_table(**results).set_index(["dataset", "variant", "subset"])
    ours, paper = table.loc[("coco64", "ours", "all")], table.loc[("coco64", "paper", "all")]
    assert (ours["n_seeds"], ours["fid_seed_std"], ours["kid_seed_std"]) == (3, 1.5, 0.0004)
    assert (ours["fid_floor"], ours["copy_rate"], ours["copy_rate_recon"]) == (20.0, 0.04, 0.925)
    # paper scored 240 samples per seed, ours 480: not comparable; the same N and real set would be
    assert isinstance(ours["comparable_group"], str) and ours["comparable_group"] != paper["comparable_group"]
    same = _write(tmp_path / "again" / "fid" / "coco64" / "other.json",
                  json.loads(results["fid"][0].read_text()) | {"fid": 70.0})
    again = T.build_table(fid=[results["fid"][0], same]).set_index("variant")
    assert again.loc["ours", "comparable_group"] == again.loc["other", "comparable_group"]
    assert pd.isna(table.loc[("atari64", "ours", "all"), "comparable_group"])  # no FID yet: no group


def test_notes_warn_of_small_data_biased_fid_and_a_dataset_below_its_mean_image(results):
    table = T.build_table(**results).set_index(["dataset", "variant", "subset"])
    paper = table.loc[("coco64", "paper", "all"), "notes"]
    assert "val split has 480 images, fewer than the 500 configured (val_images)" in paper
    assert "FID biased at N=240 (< 2048); compare KID" in paper
    assert "below its mean image (-1.25 dB)" in paper  # a dataset row, not only a game's
    ours = table.loc[("coco64", "ours", "all"), "notes"]
    assert "fewer than the 500 configured" in ours and "FID biased at N=480" in ours
    assert "below its mean image" not in ours and "train split" not in ours
    atari = table.loc[("atari64", "ours", "all"), "notes"]
    assert "configured" not in atari and "FID biased" not in atari  # no manifests given, no FID yet


def test_precision_column_and_a_note_where_variants_of_a_dataset_ran_in_different_precisions(tmp_path):
    r = tmp_path / "results"
    vq = [_write(r / "vqgan" / "coco64" / v / "train.json", {"steps": 10, "precision": p, "precision_by_step": s})
          for v, p, s in (("ours", "fp32", [[0, "bf16"], [5, "fp32"]]), ("paper", "fp32", [[0, "fp32"]]),
                          ("third", "fp32", [[0, "bf16"], [5, "fp32"]]))]
    recon = [_write(r / "vqgan" / "coco64" / v / "recon.json", {"n_images": 5, "precision": "fp32"})
             for v in ("ours", "paper", "third")]
    fid = [_write(r / "fid" / "coco64" / f"{v}.json", {"n_gen": 5, "n_real": 5, "samples_precision": p})
           for v, p in (("ours", "bf16/fp32"), ("paper", "bf16/fp32"), ("third", "fp32/fp32"))]
    table = T.build_table(fid=fid, recon=recon, vqgan_train=vq).set_index("variant")
    assert table.loc["ours", "precision"] == "vqgan bf16+fp32, eval fp32, sample bf16/fp32"  # resumed elsewhere
    assert table.loc["paper", "precision"] == "vqgan fp32, eval fp32, sample bf16/fp32"
    assert "precision differs: vqgan ran in bf16+fp32, fp32 in paper; sample ran in bf16/fp32, fp32/fp32 in third" \
        in table.loc["ours", "notes"]
    assert "precision differs: vqgan ran in fp32, bf16+fp32 in ours, bf16+fp32 in third; sample ran in bf16/fp32, " \
        "fp32/fp32 in third" in table.loc["paper", "notes"]
    same = T.build_table(recon=recon)
    assert (same["precision"] == "eval fp32").all() and not same["notes"].str.contains("precision").any()
    assert pd.isna(T.build_table(recon=[_write(r / "old" / "a" / "b" / "recon.json", {"n_images": 5})]).loc[
        0, "precision"])  # written before precisions were recorded: an empty cell


def test_notes_flag_a_collapsed_codebook_and_a_transformer_no_better_than_uniform(results, tmp_path):
    table = T.build_table(**results).set_index(["dataset", "variant", "subset"])
    for key in (("coco64", "ours", "all"), ("atari64", "ours", "all")):  # 71% and 20% in use; 7.9 < 9.0 bits
        assert "collapsed" not in table.loc[key, "notes"] and "uniform" not in table.loc[key, "notes"]
    collapsed = _write(tmp_path / "c" / "vqgan" / "coco64" / "ours" / "recon.json", {"usage": 0.024})
    memorised = _write(tmp_path / "c" / "transformer" / "coco64" / "ours" / "train.json",
                       {"val_bits_per_token": 11.67, "uniform_bits_per_token": 10.0})
    notes = T.build_table(recon=[collapsed], transformer_train=[memorised]).loc[0, "notes"]
    assert "codebook collapsed: 2.4% of the codes used on val" in notes
    assert "transformer val loss 11.67 bits/token >= a uniform guess (10.00)" in notes


def test_a_game_below_its_own_mean_image_gets_a_row_that_says_so(results):
    table = T.build_table(**results).query("variant == 'ours'").set_index(["dataset", "subset"])
    pong = table.loc[("atari64", "Pong")]
    assert (pong["n_eval"], pong["psnr"], pong["psnr_mean_baseline"]) == (100, 28.5, 29.1)
    assert pong["psnr_gain_over_mean_db"] == -0.6 and "below its mean image (-0.60 dB)" in pong["notes"]
    assert (pong["object_recall"], pong["n_objects_scored"], pong["resolution"]) == (0.0, 250, 64)
    assert pd.isna(pong["fid"]) and pd.isna(pong["codebook_usage"]), "dataset-level scores stay on the dataset row"
    assert table.loc[("atari64", "all"), "notes"] == "" and table.loc[("atari64", "Seaquest"), "notes"] == (
        "object recall not available: no object truth (no RAM rules for Seaquest)")
    # a game's levels (Ms. Pac-Man's mazes) get rows of their own, against the game's mean image
    maze1, maze4 = table.loc[("atari64", "MsPacman/level0")], table.loc[("atari64", "MsPacman/level3")]
    assert (maze1["n_eval"], maze1["psnr"], maze1["psnr_gain_over_mean_db"]) == (40, 27.5, 10.0)
    assert maze1["notes"] == "this level's own mean image: 27.90 dB"
    assert "below its mean image (-0.40 dB)" in maze4["notes"]
    assert "a level the training split never reached" in maze4["notes"]
    expert = table.loc[("atari64", "eval_set:expert")]
    assert (expert["n_eval"], expert["object_recall"], expert["lpips"]) == (40, 0.4, 0.2)
    assert "object recall not available" in table.loc[("coco64", "all"), "notes"]


def test_table_values_come_from_the_right_files(results):
    row = T.build_table(**results).set_index(["dataset", "variant", "subset"]).loc[("coco64", "ours", "all")]
    assert (row["kind"], row["resolution"], row["n_real"], row["n_gen"]) == ("coco", 64, 500, 480)
    assert (row["fid"], row["rfid"], row["kid_mean"]) == (81.25, 33.5, 0.0512)
    assert (row["psnr"], row["psnr_mean_baseline"], row["psnr_median_baseline"]) == (22.4, 12.1, 11.8)
    assert row["psnr_gain_over_mean_db"] == 10.3 and pd.isna(row["object_recall"])
    assert (row["codebook_usage"], row["perplexity"]) == (0.71, 301.2)
    assert (row["vqgan_steps"], row["transformer_steps"], row["val_bits_per_token"]) == (1500, 2000, 7.9)
    assert row["inception_sha256"] == "ab" * 6
    assert (row["lpips"], row["lpips_mean_baseline"]) == (0.31, 0.72)


def test_missing_stages_and_keys_are_empty_cells_not_errors(results, tmp_path):
    table = T.build_table(**results)
    atari = table.set_index(["dataset", "variant", "subset"]).loc[("atari64", "ours", "all")]
    assert pd.isna(atari["fid"]) and pd.isna(atari["n_real"]) and pd.isna(atari["transformer_steps"])
    assert pd.isna(atari["box_mae"]) and pd.isna(atari["vqgan_wall_s"])  # keys this file lacks
    assert atari["resolution"] == 64  # taken from recon.json when there is no FID yet
    assert atari["psnr"] == 31.0
    assert str(table["n_real"].dtype) == "Int64"  # integer columns stay integers beside missing rows


def test_cli_writes_csv_and_markdown(results, tmp_path, capsys):
    out, md = tmp_path / "fid_table.csv", tmp_path / "fid_table.md"
    T.main(["--fid", *map(str, results["fid"]), "--recon", *map(str, results["recon"]),
            "--vqgan-train", *map(str, results["vqgan_train"]),
            "--transformer-train", *map(str, results["transformer_train"]), "--data", *map(str, results["data"]),
            "--out", str(out), "--markdown", str(md), "--html", str(tmp_path / "fid_table.html")])
    csv = pd.read_csv(out)
    assert list(csv.columns) == ["dataset", "variant", "subset", *T.COLUMNS]
    assert csv.set_index(["dataset", "variant", "subset"]).loc[("coco64", "ours", "all"), "fid"] == 81.25
    table, notes = md.read_text().split("\n\nNotes:\n")
    lines = table.splitlines()
    assert len(lines) == 2 + 9  # header, rule, three dataset rows; atari64's three games, two levels, one eval set
    assert lines[0].startswith("| dataset | variant | subset | kind | resolution | comparable_group |")
    group = csv.set_index("variant")["comparable_group"]["paper"]
    # mean ± std over the seeds in one cell, N beside it
    assert f"| coco64 | paper | all | coco | 64 | {group} | 500 | 240 | 3 | 95.00 ± 1.50 | 0.0512 ± 0.0004 |" in table
    assert "| atari64 | ours | Pong |  | 64 |" in table
    # the copy rate against the tokenizer's reconstructions beside the plain one
    assert "| copy_rate | copy_rate_recon |" in lines[0] and "| 0.04 | 0.93 |" in lines[-1]
    # every note again under the table, where the end of a run prints it
    assert "- atari64/ours/Pong: below its mean image (-0.60 dB)" in notes
    assert "- coco64/paper/all: val split has 480 images" in notes and "FID biased at N=240" in notes
    assert "81.25" in capsys.readouterr().out
    # the report's table: every row of the Markdown table, with its notes, as HTML cells
    page = (tmp_path / "fid_table.html").read_text()
    body = page.split("<tbody>")[1].split("</tbody>")[0]
    assert body.count("<tr>") == 9 and "<th>comparable_group</th>" in page
    assert '<td class="r">95.00 ± 1.50</td>' in body and '<td class="l">Pong</td>' in body
    assert '<td class="notes">below its mean image (-0.60 dB)' in body
    assert "<li>coco64/paper/all: val split has 480 images" in page


def test_bad_inputs_name_the_file(tmp_path):
    broken = tmp_path / "fid" / "x.json"
    broken.parent.mkdir()
    broken.write_text("{not json")
    with pytest.raises(T.TableError, match="x.json: not valid JSON"):
        T.build_table(fid=[broken])
    with pytest.raises(T.TableError, match="no such file"):
        T.build_table(recon=[tmp_path / "vqgan" / "y" / "recon.json"])
    a = _write(tmp_path / "a" / "coco" / "ours" / "recon.json", {})
    b = _write(tmp_path / "b" / "coco" / "ours" / "recon.json", {})
    with pytest.raises(T.TableError, match="second recon file for dataset 'coco', variant 'ours'"):
        T.build_table(recon=[a, b])
    with pytest.raises(T.TableError, match="no manifest.json"):
        T.build_table(data=[tmp_path / "a"])
    with pytest.raises(SystemExit, match="no input files"):
        T.main(["--out", str(tmp_path / "t.csv")])


# ---- report figures (vqgan.eval.plots) ------------------------------------------------------------------------------

def test_curves_plot_from_a_vqgan_metrics_file(tmp_path):
    from PIL import Image

    from vqgan.eval import plots

    steps = range(10, 210, 10)
    pd.DataFrame({
        "step": list(steps), "rec": [1 / s for s in steps], "perceptual": [0.5] * 20, "g_loss": [2 / s for s in steps],
        "g_adv": [0.0] * 10 + [0.3] * 10, "d_loss": [0.0] * 10 + [1.0] * 10,
        "usage": [s / 250 for s in steps], "perplexity": list(steps),
    }).to_csv(tmp_path / "metrics.csv", index=False)
    out = plots.plot_curves(tmp_path / "metrics.csv", tmp_path / "fig" / "curves.png")
    with Image.open(out) as img:
        wide = img.size
    # A transformer's metrics (sparse val_loss, no usage) give one panel, so a narrower figure.
    pd.DataFrame({"step": [1, 2, 3, 4], "loss": [5.0, 4.0, 3.5, 3.2], "val_loss": [None, 4.1, None, 3.4]}).to_csv(
        tmp_path / "t.csv", index=False)
    with Image.open(plots.plot_curves(tmp_path / "t.csv", tmp_path / "t.png")) as img:
        assert img.size[0] < wide[0] / 2
    with pytest.raises(plots.PlotError, match="no `step` column"):
        pd.DataFrame({"x": [1]}).to_csv(tmp_path / "bad.csv", index=False)
        plots.plot_curves(tmp_path / "bad.csv", tmp_path / "bad.png")


def test_benchmark_table_averages_repeats_and_labels_by_rule(tmp_path):
    from vqgan.eval import plots

    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    files = []
    for rule, ds, rows in (("train_vqgan", "coco64", ["100.0", "120.0"]), ("fid", "coco64", ["20.5"])):
        f = tmp_path / "benchmarks" / rule / f"{ds}.tsv"
        f.parent.mkdir(parents=True)
        f.write_text(header + "".join(f"{s}\t0:00:{int(float(s))}\t512.5\t900\t500\t501\t1\t2\t50\t{s}\n" for s in rows))
        files.append(f)
    (tmp_path / "benchmarks" / "fid" / "atari64.tsv").write_text(header + "3.0\t0:00:03\t-\t-\t-\t-\t-\t-\t-\t-\n")
    files.append(tmp_path / "benchmarks" / "fid" / "atari64.tsv")
    df = plots.read_benchmarks(files).set_index("label")
    assert df.loc["train_vqgan/coco64", "seconds"] == 110.0 and df.loc["train_vqgan/coco64", "repeats"] == 2
    assert df.loc["fid/coco64", "max_rss_mb"] == 512.5
    assert math.isnan(df.loc["fid/atari64", "max_rss_mb"])  # '-' where psutil could not measure
    assert plots.plot_benchmarks(files, tmp_path / "bench.png").stat().st_size > 1000


def test_benchmark_throughput_counts_each_jobs_images_from_its_own_outputs(tmp_path):
    import json

    from vqgan.eval import plots

    r = tmp_path / "results"

    def put(rel, obj):
        (r / rel).parent.mkdir(parents=True, exist_ok=True)
        (r / rel).write_text(json.dumps(obj))

    for split, n in (("train", 90), ("val", 10)):
        put(f"data/atari64/{split}/manifest.json", {"count": n})
    put("vqgan/atari64/ours/train.json", {"steps": 900, "resumed_from_step": 300, "global_batch": 16})
    put("codes/atari64/ours/codes.json", {"counts": {"train": 90, "val": 10}})
    put("vqgan/atari64/ours/recon.json", {"n_images": 5, "codebook_images": 10, "n_recon_train": 4})
    put("samples/atari64/ours/seed1/samples.json", {"count": 30})
    put("fid/atari64/ours.json", {"n_real": 8, "real_features_cached": True, "per_seed": [{"n": 8}, {"n": 8}],
                                  "n_recon": 8, "n_train": 8, "n_recon_train": 8})
    expect = {"collect_atari/atari64": 100, "train_vqgan/atari64/ours": 600 * 16, "encode/atari64/ours": 100,
              "eval_vqgan/atari64/ours": 19, "sample/atari64/ours/seed1": 30, "fid/atari64/ours": 40}
    for label, n in expect.items():
        assert plots.stage_images(label, r) == n, label
    # a job whose outputs are missing, and a rule with no count, get no throughput instead of failing the figure
    assert math.isnan(plots.stage_images("train_transformer/atari64/ours", r))
    assert math.isnan(plots.stage_images("fetch_weights/vgg16", r))

    header = "s\th:m:s\tmax_rss\n"
    files = []
    for label, seconds in (("sample/atari64/ours/seed1", 3.0), ("train_transformer/atari64/ours", 9.0)):
        f = tmp_path / "benchmarks" / f"{label}.tsv"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(header + f"{seconds}\t0:00:03\t100\n")
        files.append(f)
    assert plots.plot_benchmarks(files, tmp_path / "bench.png", r).stat().st_size > 1000


def test_data_grid_has_one_row_per_class(tmp_path):
    import numpy as np
    from PIL import Image

    from vqgan.data.dataset import write_split
    from vqgan.eval import plots

    images = np.random.default_rng(0).integers(0, 255, (30, 16, 16, 3), dtype=np.uint8)
    meta = pd.DataFrame({"label": [0] * 10 + [1] * 10 + [2] * 10})
    split = write_split(tmp_path / "val", images, meta, {"classes": ["Pong", "MsPacman", "Breakout"]})
    with Image.open(plots.plot_data_grid(split, tmp_path / "grid.png", per_row=5)) as img:
        # scale 4 for 16 px frames, 2 px padding: 3 rows of 5 images, each row's game named on its left, a title above
        width, height = img.size
        assert height == 3 * (64 + 2) + 2 + 16 and 40 < width - (5 * (64 + 2) + 2) < 120, img.size


def test_a_one_game_dataset_gets_a_row_per_level(results):
    recon = results["recon"][2]  # atari64/ours: here a Ms. Pac-Man-only dataset, levels at the top of recon.json
    record = json.loads(recon.read_text())
    record.pop("per_class")
    record["per_level"] = {"0": {"n_images": 30, "n_train_images": 200, "psnr": 29.0, "psnr_baseline_mean": 17.0,
                                 "psnr_gain_over_mean_db": 12.0, "psnr_baseline_level_mean": 27.5}}
    recon.write_text(json.dumps(record))
    table = T.build_table(**results).query("variant == 'ours'").set_index(["dataset", "subset"])
    row = table.loc[("atari64", "level0")]
    assert (row["n_eval"], row["psnr"], row["psnr_gain_over_mean_db"]) == (30, 29.0, 12.0)
    assert row["notes"] == "this level's own mean image: 27.50 dB"


def test_curve_and_data_grid_titles_name_stage_dataset_variant_and_split(tmp_path):
    from vqgan.eval import plots

    metrics = tmp_path / "results" / "transformer" / "atari64" / "ours" / "metrics.csv"
    assert plots.curves_title(metrics) == "transformer training: dataset atari64, variant ours"
    assert plots.curves_title(tmp_path / "x" / "metrics.csv") == "x"


def test_sample_object_rate_on_the_dataset_row_and_shares_on_each_game_row(results, tmp_path):
    """fid's `objects` entry (vqgan.eval.sample_objects): the rate on the dataset row, each game's rate and its
    classes' sample/real shares on the game's row; a game without an entry keeps empty cells."""
    fid = {"dataset": "atari64", "kind": "atari", "resolution": 64, "n_real": 300, "sample_object_rate": 0.6,
           "objects": {"sample_object_rate": 0.6, "per_game": {"Pong": {
               "real_share": {"player": 1.0, "enemy": 0.9, "ball": 0.6},
               "sample_share": {"player": 1.0, "enemy": 0.45, "ball": 0.0}, "sample_object_rate": 0.5}}}}
    results["fid"].append(_write(tmp_path / "results" / "fid" / "atari64" / "ours.json", fid))
    table = T.build_table(**results).set_index(["dataset", "variant", "subset"])
    assert table.loc[("atari64", "ours", "all"), "sample_object_rate"] == 0.6
    pong = table.loc[("atari64", "ours", "Pong")]
    assert pong["sample_object_rate"] == 0.5
    assert pong["object_shares"] == "player 1.00/1.00, enemy 0.45/0.90, ball 0.00/0.60"
    assert pd.isna(table.loc[("atari64", "ours", "MsPacman"), "sample_object_rate"])
    assert "sample_object_rate" in T.to_markdown(table.reset_index())
