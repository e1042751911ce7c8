"""End to end: the tiny DAG on .test/config/config.yaml, from real COCO images and real ALE frames to fid_table.csv,
then what reruns when something changes (the user's "a stage reruns only when its inputs or its config change").

One full run (minutes on 2 cores) is shared by every test in this module; the rerun checks are dry runs.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import BIN, REPO, TEST_CONFIG, TINY_COCO, readme_commands, repo_copy, run_snakemake, snakemake_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # the slow tier: `pytest -m slow`

DATA_RULES = {"prepare_coco", "collect_atari", "download_coco"}
VQGAN_RULES = {"train_vqgan", "eval_vqgan", "encode"}


def _write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _base_config() -> dict:
    cfg = yaml.safe_load(TEST_CONFIG.read_text())
    cfg["coco"]["root"] = str(TINY_COCO)  # the run happens in a temporary folder
    # an external eval set: raw Ms. Pac-Man screens the `run` fixture renders into the work folder
    cfg["datasets"]["atari_tiny"]["eval_sets"] = {"pacman": {"path": "eval_frames/pacman", "game": "MsPacman"}}
    return cfg


def _render_eval_frames(workdir: Path, n: int = 12) -> None:
    from PIL import Image

    from atari_collect.objects import frames_with_ram

    folder = workdir / "eval_frames" / "pacman"
    folder.mkdir(parents=True)
    for i, (screen, _) in enumerate(frames_with_ram("ms_pacman", n * 20, seed=5)):
        if i % 20 == 19:
            Image.fromarray(screen).save(folder / f"{i:05d}.png")


def _snakemake(workdir: Path, config: Path, *args: str, check: bool = True):
    return run_snakemake("-s", str(REPO / "Snakefile"), "-d", str(workdir), "--cores", "2", *args,
                         "--configfile", str(config), check=check)


def _planned_jobs(workdir: Path, config: Path, *targets: str) -> dict[str, int]:
    """Job counts per rule of a dry run (empty when there is nothing to do)."""
    out = _snakemake(workdir, config, "-n", *targets).stdout
    if "Nothing to be done" in out:
        return {}
    table = out.split("Job stats:", 1)[1]
    jobs = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table.split("\n\n")[0], re.M)}
    jobs.pop("total", None)
    return jobs


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_coco):
    workdir = tmp_path_factory.mktemp("e2e")
    _render_eval_frames(workdir)
    config = _write_config(workdir / "config.yaml", _base_config())
    _snakemake(workdir, config)
    return workdir, config


def test_tiny_dag_writes_the_fid_table_with_sane_values(run):
    workdir, _ = run
    everything = pd.read_csv(workdir / "results" / "fid_table.csv", keep_default_na=False, na_values=[""])
    cfg = _base_config()
    table = everything[everything["subset"] == "all"]
    # one row per dataset and variant (.test's config has `paper` and `ours`)
    assert sorted(zip(table["dataset"], table["variant"])) == sorted(
        (ds, v) for ds in cfg["datasets"] for v in cfg["variants"])
    for column in ["dataset", "variant", "kind", "resolution", "comparable_group", "n_real", "n_gen", "n_seeds", "fid",
                   "fid_seed_std", "kid_mean", "kid_seed_std", "kid_std", "fid_floor", "kid_floor", "copy_rate",
                   "n_train_ref", "rfid", "psnr", "psnr_mean_baseline", "psnr_median_baseline",
                   "psnr_gain_over_mean_db", "codebook_usage", "perplexity", "vqgan_steps", "transformer_steps",
                   "val_bits_per_token", "inception_sha256", "notes"]:
        assert column in table.columns, f"fid_table.csv lacks {column}: {list(table.columns)}"
        assert table[column].notna().all(), f"fid_table.csv has empty {column}:\n{table}"
    assert (table["n_gen"] == cfg["fid"]["n"]).all() and (table["n_real"] == cfg["fid"]["n"]).all()
    seeds = cfg["sample"]["seeds"]
    assert (table["n_seeds"] == len(seeds)).all() and (table["fid_seed_std"] > 0).all()
    assert (table["fid"] > 0).all() and (table["rfid"] > 0).all() and table["copy_rate"].between(0, 1).all()
    # the same N and real set for both variants of a dataset, different real sets across datasets
    groups = table.groupby("dataset")["comparable_group"].nunique()
    assert (groups == 1).all() and table["comparable_group"].nunique() == len(cfg["datasets"]), table
    assert table["notes"].str.contains(f"FID biased at N={cfg['fid']['n']}").all(), table["notes"]
    assert table["codebook_usage"].between(0, 1).all()
    assert (table["vqgan_steps"] == cfg["vqgan"]["train"]["steps"]).all()
    assert (table["transformer_steps"] == cfg["transformer"]["train"]["steps"]).all()
    # a model that learned anything beats a uniform guess over the codebook
    assert (table["val_bits_per_token"] < table["uniform_bits_per_token"]).all()
    for ds, entry in cfg["datasets"].items():
        assert (table[table["dataset"] == ds]["resolution"] == entry["resolution"]).all()
        for variant in cfg["variants"]:
            for seed in seeds:
                samples = sorted((workdir / "results" / "samples" / ds / variant / f"seed{seed}").glob("*_*.png"))
                assert len(samples) == cfg["sample"]["n_samples"], f"{ds}/{variant}/seed{seed}: {len(samples)} PNGs"
    markdown = (workdir / "results" / "fid_table.md").read_text()
    assert markdown.count("\n|") >= 5 and " ± " in markdown and "\nNotes:\n" in markdown
    # the two recipes really differ: the paper's quantizer in the paper variant's saved config
    paper = json.loads((workdir / "results" / "vqgan" / "atari_tiny" / "paper" / "config.json").read_text())
    ours = json.loads((workdir / "results" / "vqgan" / "atari_tiny" / "ours" / "config.json").read_text())
    assert "taming" in json.dumps(paper) and "taming" not in json.dumps(ours)
    everything = everything[everything["variant"] == "ours"]
    # the multi-game dataset: a row per game and one for the external eval set, with object scores
    atari = everything[everything["dataset"] == "atari_tiny"].set_index("subset")
    assert set(atari.index) == {"all", "Pong", "MsPacman", "eval_set:pacman"}, atari.index
    assert atari["psnr"].notna().all() and atari["psnr_gain_over_mean_db"].notna().all()
    assert atari.loc["eval_set:pacman", "n_eval"] == 12
    for subset in ("all", "Pong", "MsPacman", "eval_set:pacman"):
        assert atari.loc[subset, "object_recall"] >= 0 and atari.loc[subset, "n_objects_scored"] > 0, subset
    # objects in samples: a rate for the dataset and each game, each class's sample/real share on the game's row
    for subset in ("all", "Pong", "MsPacman"):
        assert 0 <= atari.loc[subset, "sample_object_rate"] <= 1, subset
    assert "player " in atari.loc["Pong", "object_shares"] and "/" in atari.loc["Pong", "object_shares"]
    # and the copy rate against the tokenizer's reconstructions beside the plain one
    assert table["copy_rate_recon"].between(0, 1).all()
    coco = everything[everything["dataset"] == "coco_tiny"]
    assert list(coco["subset"]) == ["all"] and "object recall not available" in coco["notes"].iloc[0]
    assert coco["sample_object_rate"].isna().all()


def test_rule_logs_hold_plain_progress_lines_not_redrawn_bars(run):
    """A rule's `log:` is not a terminal: progress bars write one line per interval there (vqgan/io/progress.py),
    not a stream of '\\r'-separated redraws."""
    workdir, _ = run
    logs = {str(p.relative_to(workdir)): p.read_bytes() for p in sorted((workdir / "logs").rglob("*")) if p.is_file()}
    assert len(logs) > 10, f"the run wrote few rule logs: {sorted(logs)}"
    redrawn = sorted(name for name, text in logs.items() if b"\r" in text)
    assert not redrawn, f"carriage returns in {redrawn}: e.g. {logs[redrawn[0]][:300]!r}"
    # the bars did write there: the guard against a test passing because no bar ran
    finished = {name.split("/")[1] for name, text in logs.items() if re.search(rb"^[\w ()./-]+: 100% (\d+)/\1 \[", text, re.M)}
    assert finished >= {"collect_atari", "train_vqgan", "eval_vqgan", "encode", "train_transformer", "sample", "fid"}, finished


def test_atari_samples_are_further_from_coco_than_from_atari(run):
    workdir, _ = run
    results = workdir / "results"
    own = json.loads((results / "fid" / "atari_tiny" / "ours.json").read_text())
    out = workdir / "cross.json"
    gen = [str(results / "samples" / "atari_tiny" / "ours" / f"seed{s}") for s in _base_config()["sample"]["seeds"]]
    subprocess.run([sys.executable, "-m", "vqgan.eval.fid", "--config", json.dumps(_base_config()["fid"]),
                    "--real", str(results / "data" / "coco_tiny" / "val"), "--gen", *gen,
                    "--cache-dir", str(results / "fid" / "cache"), "--out", str(out)],
                   check=True, cwd=workdir, capture_output=True, text=True)
    cross = json.loads(out.read_text())
    assert cross["fid"] > own["fid"], f"Atari samples: FID vs COCO val {cross['fid']:.1f} <= vs Atari val {own['fid']:.1f}"


def test_nothing_to_do_after_a_full_run_and_after_editing_a_readme(run):
    workdir, config = run
    assert _planned_jobs(workdir, config) == {}
    readme = REPO / "README.md"
    stat = readme.stat()
    os.utime(readme)  # "editing" it: newer mtime, same content
    try:
        assert _planned_jobs(workdir, config) == {}
    finally:
        os.utime(readme, (stat.st_atime, stat.st_mtime))


def _precisions(results: Path) -> dict[str, str]:
    """{file: precision} of every job's JSON under `results` that records one (decode_precision too)."""
    out = {}
    for path in sorted(results.rglob("*.json")):
        data = json.loads(path.read_text())
        for key in ("precision", "decode_precision"):
            if isinstance(data, dict) and key in data:
                out[f"{path.relative_to(results)}:{key}"] = data[key]
    return out


def test_every_job_records_what_auto_gave_and_another_cpu_reruns_nothing(run):
    from vqgan.precision import resolve

    workdir, config = run
    used = _precisions(workdir / "results")
    # train.json (both loops), recon.json, codes.json, samples.json: the .test config leaves every stage at auto
    assert {k.split("/")[0] for k in used} >= {"vqgan", "codes", "transformer", "samples"}, used
    assert set(used.values()) == {resolve("auto", "cpu")}, used
    for flag in ("no", "yes"):  # the results moved to a CPU with, or without, bf16: the DAG holds the word auto
        out = run_snakemake("-s", str(REPO / "Snakefile"), "-d", str(workdir), "--cores", "2", "-n", "--configfile",
                            str(config), env=snakemake_env(VQGAN_HARDWARE=f"cpu_bf16={flag}")).stdout
        assert "Nothing to be done" in out, out[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("cpu_bf16,want", [("no", "fp32"), ("yes", "bf16")])
def test_on_a_cpu_without_bf16_every_job_records_fp32_and_with_it_bf16(tmp_path, tiny_coco, cpu_bf16, want):
    cfg = _base_config()  # one dataset, variant and seed: every stage up to the samples, each job once
    del cfg["datasets"]["atari_tiny"]
    cfg["variants"], cfg["sample"]["seeds"] = {"ours": {}}, [0]
    config = _write_config(tmp_path / "config.yaml", cfg)
    run_snakemake("results/samples/coco_tiny/ours/seed0", "results/vqgan/coco_tiny/ours/recon.json", "-s",
                  str(REPO / "Snakefile"), "-d", str(tmp_path), "--cores", "2", "--configfile", str(config),
                  env=snakemake_env(VQGAN_HARDWARE=f"cpu_bf16={cpu_bf16}"))
    used = _precisions(tmp_path / "results")
    assert sorted(used) == ["codes/coco_tiny/ours/codes.json:precision",
                            "samples/coco_tiny/ours/seed0/samples.json:decode_precision",
                            "samples/coco_tiny/ours/seed0/samples.json:precision",
                            "transformer/coco_tiny/ours/codes.json:precision",
                            "transformer/coco_tiny/ours/train.json:precision",
                            "vqgan/coco_tiny/ours/recon.json:precision",
                            "vqgan/coco_tiny/ours/train.json:precision"], used
    assert set(used.values()) == {want}, used


def test_changing_a_transformer_key_reruns_only_the_transformer_chain(run, tmp_path):
    workdir, _ = run
    cfg = _base_config()
    cfg["transformer"]["train"]["lr"] = 1e-3
    jobs = _planned_jobs(workdir, _write_config(tmp_path / "c.yaml", cfg), "results/fid_table.csv")
    assert set(jobs) == {"train_transformer", "sample", "fid", "fid_table"}, jobs
    runs = len(cfg["datasets"]) * len(cfg["variants"])
    assert jobs["train_transformer"] == runs and jobs["sample"] == runs * len(cfg["sample"]["seeds"]), jobs


def test_changing_one_variants_key_reruns_only_that_variants_jobs(run, tmp_path):
    workdir, _ = run
    cfg = _base_config()
    cfg["variants"]["paper"]["vqgan"]["loss"]["disc_weight"] = 0.5
    config = _write_config(tmp_path / "c.yaml", cfg)
    out = _snakemake(workdir, config, "-n", "results/fid_table.csv").stdout
    jobs = _planned_jobs(workdir, config, "results/fid_table.csv")
    assert set(jobs) == VQGAN_RULES | {"train_transformer", "sample", "fid", "fid_table"}, jobs
    assert jobs["train_vqgan"] == len(cfg["datasets"]), jobs  # the paper variant of each dataset, nothing else
    assert "variant=paper" in out and "variant=ours" not in out, "an `ours` job was planned"


def test_a_config_without_variants_runs_one_default_variant(run, tmp_path):
    workdir, _ = run
    cfg = _base_config()
    del cfg["variants"]
    out = _snakemake(workdir, _write_config(tmp_path / "c.yaml", cfg), "-n", "results/fid_table.csv").stdout
    assert "results/vqgan/atari_tiny/default/model.safetensors" in out and "results/fid/coco_tiny/default.json" in out
    assert "collect_atari" not in out and "prepare_coco" not in out, "the shared data was planned again"


def test_changing_one_datasets_resolution_reruns_only_that_datasets_chain(run, tmp_path):
    workdir, _ = run
    cfg = _base_config()
    cfg["datasets"]["atari_tiny"]["resolution"] = 48  # 16 would be refused: the GAN (disc_start 10) needs 24 px
    config = _write_config(tmp_path / "c.yaml", cfg)
    out = _snakemake(workdir, config, "-n", "results/fid_table.csv").stdout
    jobs = _planned_jobs(workdir, config, "results/fid_table.csv")
    assert {"collect_atari", "train_vqgan", "eval_vqgan", "encode", "train_transformer", "sample", "fid",
            "fid_table"} == set(jobs), jobs
    variants, seeds = len(cfg["variants"]), len(cfg["sample"]["seeds"])
    assert jobs == {"collect_atari": 1, "train_vqgan": variants, "eval_vqgan": variants, "encode": variants,
                    "train_transformer": variants, "sample": variants * seeds, "fid": variants, "fid_table": 1}, jobs
    assert "ds=coco_tiny" not in out, "a coco_tiny job was planned"


def test_changing_an_eval_set_reruns_the_evaluation_not_the_collection(run, tmp_path):
    workdir, _ = run
    cfg = _base_config()
    cfg["datasets"]["atari_tiny"]["eval_sets"]["again"] = {"path": "eval_frames/pacman", "game": "MsPacman"}
    jobs = _planned_jobs(workdir, _write_config(tmp_path / "c.yaml", cfg), "results/fid_table.csv")
    assert "collect_atari" not in jobs and "train_vqgan" not in jobs, jobs
    assert jobs.get("eval_vqgan") == len(cfg["variants"]) and "fid_table" in jobs, jobs


def readme_report_commands() -> list[list[str]]:
    """The README's report line (`snakemake ... && snakemake --report ...`), split into its commands."""
    text = (REPO / "README.md").read_text()
    line = next(ln for ln in text.splitlines() if "snakemake --report" in ln)
    commands = [c.split("#")[0].split() for c in line.split("&&")]
    assert all(c[0] == "snakemake" for c in commands), line
    return [c[1:] for c in commands]


def test_report_from_the_readme_commands_shows_every_figure(run):
    workdir, config = run
    for args in readme_report_commands():
        args = [str(workdir / a) if a.endswith(".html") else a for a in args if a not in ("--cores", "all")]
        _snakemake(workdir, config, *args)
    html = (workdir / "report.html").read_text(errors="replace")
    assert len(html) > 100_000 and "fid_table.csv" in html
    assert "fid_table.html" in html, "the results table is not shown as a table"
    cfg = _base_config()
    expected = ["benchmarks.png"] + [f"data_{ds}.png" for ds in cfg["datasets"]] + [
        f"{stage}_{ds}_{v}_curves.png" for stage in ("vqgan", "transformer") for ds in cfg["datasets"]
        for v in cfg["variants"]]
    missing = [name for name in expected if name not in html]
    # the per-run grids share a file name: count them
    runs = len(cfg["datasets"]) * len(cfg["variants"])
    assert html.count("recon.png") >= runs, "a reconstruction grid is missing"
    assert html.count("grid.png") >= runs * len(cfg["sample"]["seeds"]), "a sample grid is missing"
    assert not missing, f"the report lacks {missing}"


# Wall times are the resumed run's own; every other column must come out equal.
WALL_TIME_COLUMNS = ["vqgan_wall_s", "transformer_wall_s"]


# One more tiny DAG in all (the kill lands early: nearly everything runs after it), plus `run` when selected alone
@pytest.mark.timeout(3600)
def test_kill_9_mid_training_then_the_readmes_recovery_words_give_the_same_table(run, tmp_path):
    """The README's main command on the tiny experiment in a fresh clone, SIGKILLed (Snakemake and all its jobs: the
    process group, as a closed terminal or a power loss would) while a VQGAN trains, after its first checkpoint.
    Then the README's words after a crash, as written: the plain rerun stops with LockException, `snakemake --unlock
    && <the command>` finishes, the killed training resumes, and the table is the uninterrupted run's (`run`)."""
    command = readme_commands()[0].split("&&")[-1].split()  # snakemake --cores all results/fid_table.csv
    recovery = next(c for c in readme_commands() if "--unlock" in c)
    unlock, again = (c.split() for c in recovery.split("&&"))
    assert unlock == ["snakemake", "--unlock"] and again == command, recovery
    tiny = ["--configfile", ".test/config/config.yaml"]  # the README's way to run another experiment
    clone = repo_copy(tmp_path / "clone")
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen([str(BIN / "snakemake"), *command[1:], *tiny], cwd=clone, env=snakemake_env(),
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 900
    while not (checkpoints := list(clone.glob("results/vqgan/*/*/state/*/checkpoint-*/train_state.json"))):
        if proc.poll() is not None or time.time() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("no VQGAN checkpoint before the run ended:\n" + (tmp_path / "killed.log").read_text()[-3000:])
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    runs = {c.parents[3] for c in checkpoints}  # results/vqgan/{ds}/{variant}
    interrupted = sorted(r.relative_to(clone / "results" / "vqgan") for r in runs
                         if not (r / "model.safetensors").exists())
    assert interrupted, "the VQGAN had finished before the kill: the test proved nothing"

    blocked = run_snakemake(*command[1:], *tiny, cwd=clone, check=False)
    assert blocked.returncode != 0 and "LockException" in blocked.stdout + blocked.stderr, blocked.stdout[-3000:]
    run_snakemake(*unlock[1:], cwd=clone)
    run_snakemake(*again[1:], *tiny, cwd=clone)
    for name in interrupted:
        log = (clone / "logs" / "train_vqgan" / name).with_suffix(".log").read_text()
        assert "resumed from step" in log, f"{name} was trained again from step 0:\n{log[-2000:]}"

    table = pd.read_csv(clone / "results" / "fid_table.csv")
    uninterrupted = pd.read_csv(run[0] / "results" / "fid_table.csv")
    # `run` adds an external eval set to the same experiment: its rows are the only difference
    uninterrupted = uninterrupted[~uninterrupted["subset"].str.startswith("eval_set:")]
    pd.testing.assert_frame_equal(table.drop(columns=WALL_TIME_COLUMNS).reset_index(drop=True),
                                  uninterrupted.drop(columns=WALL_TIME_COLUMNS).reset_index(drop=True),
                                  check_exact=True)
    print(f"killed while training {[str(n) for n in interrupted]}; recovered table = uninterrupted table")
