"""The tiny DAG on a real one-node SLURM through `--workflow-profile profiles/slurm`.

Proves: every compute job is an `sbatch` job (local rules only for downloads) and the targets appear; GPU rules
ask SLURM for GPUs (`gpu` -> `--gpus`); a training job cancelled mid-way is retried with more resources and
resumes from its newest checkpoint to the configured step count; a job that fails for good fails the run and
the error names its SLURM state and logs.

tests/cluster/start.sh installs Debian's slurm + munge when missing and starts the daemons, so this needs root
(CI runs as root); it is skipped otherwise. About 5 minutes on 2 cores (measured 281 s; the DAG itself 233 s,
16 SLURM jobs).
"""
from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from conftest import BIN, REPO, TEST_CONFIG

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.timeout(1800)]  # slow tier: `pytest -m slow`

CLUSTER = REPO / "tests" / "cluster"
# What the test runs through SLURM: the whole tiny DAG up to the table (the report's figures are left out: seven
# more one-second jobs). Change this one constant to test another target set.
TARGETS = ("results/fid_table.csv",)
# The dataset whose VQGAN training the test cancels once, right after its first checkpoint.
KILLED_DS = "coco_tiny"
KILLED_VARIANT = "ours"  # ... and variant (.test/config/config.yaml has `paper` and `ours`)
# how the SLURM plugin names the job's wildcards in comments and log folders: their values joined by "_"
KILLED_WILDCARDS = f"{KILLED_DS}_{KILLED_VARIANT}"
# Rules allowed to run outside SLURM: downloads (on the login node: they need the network), and target-only
# rules that run nothing (`all`, which Snakemake may report as `default`).
LOCAL_RULES = {"download_coco", "fetch_weights", "all", "default"}
# Test config changes: a checkpoint every 5 of the tiny config's 20 steps gives the test a wide window to cancel
# the job between its first checkpoint and its end.
CHECKPOINT_EVERY = 5
RUN_DEADLINE_S = 1200


def _env() -> dict[str, str]:
    # Jobs inherit this environment (the plugin submits with --export=ALL): our venv's python and CLIs first.
    # SLURM hands the GPU jobs fake GPUs (CUDA_VISIBLE_DEVICES): VQGAN_FAKE_CUDA lets them compute on the CPU.
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "VQGAN_FAKE_CUDA": "1"}


def _snakemake(work: Path, configfile: Path, *args: str) -> list[str]:
    # The documented command line, with the test cluster's site profile for partition/account/status command.
    return [
        str(BIN / "snakemake"),
        "--workflow-profile", "profiles/slurm",
        "--profile", "tests/cluster/profile",
        "--configfile", str(configfile),
        "--directory", str(work),
        "--jobs", "2",  # the machine has 2 cores, whatever the test node advertises
        *args,
    ]


@pytest.fixture(scope="module")
def slurm_cluster():
    if os.geteuid() != 0:
        pytest.skip("needs root: tests/cluster/start.sh installs and starts slurmctld/slurmd/munged (CI runs as root)")
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        pytest.skip("snakemake-executor-plugin-slurm missing: pip install -e '.[slurm]'")
    proc = subprocess.run(["bash", str(CLUSTER / "start.sh")], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"tests/cluster/start.sh failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    started_here = "already running" not in proc.stderr
    yield
    if started_here:
        subprocess.run(["bash", str(CLUSTER / "stop.sh")], capture_output=True, text=True, timeout=120)


@dataclass
class SlurmJob:
    id: str
    name: str  # the plugin names every job of a run after the run's id
    state: str
    comment: str  # the plugin writes rule_<rule>_wildcards_<values>
    time_limit: str
    tres_per_job: str  # gres:gpu:N for --gpus=N, N/A without


class SqueueWatcher(threading.Thread):
    """Records every job squeue shows while the workflow runs (squeue forgets jobs MinJobAge after they end)."""

    def __init__(self, interval: float = 1.0):
        super().__init__(daemon=True)
        self.interval = interval
        self.jobs: dict[str, SlurmJob] = {}
        self._halt = threading.Event()
        self._lock = threading.Lock()

    # "|"-separated, no padding (the last field needs its ":")
    FORMAT = "JobID:|,Name:|,State:|,Comment:|,TimeLimit:|,tres-per-job:"

    def poll(self) -> None:
        out = subprocess.run(
            ["squeue", "--states=all", "--noheader", "-O", self.FORMAT],
            capture_output=True, text=True, timeout=30,
        ).stdout
        with self._lock:
            for line in out.splitlines():
                parts = [p.strip() for p in line.split("|")]
                if len(parts) == 6:
                    self.jobs[parts[0]] = SlurmJob(*parts)

    def running(self, name: str, comment: str) -> SlurmJob | None:
        with self._lock:
            return next((j for j in self.jobs.values()
                         if j.name == name and j.comment == comment and j.state == "RUNNING"), None)

    def run(self) -> None:
        while not self._halt.is_set():
            self.poll()
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()
        self.poll()


@dataclass
class Run:
    work: Path
    returncode: int
    log: str
    wall_s: float
    jobs: dict[str, SlurmJob]
    killed: str | None = None
    cfg: dict = field(default_factory=dict)

    def submitted(self) -> list[tuple[str, str]]:
        """(Snakemake job id, SLURM job id) for every submission, retries included."""
        return re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", self.log)

    def tail(self, n: int = 6000) -> str:
        return self.log[-n:]


def _write_config(work: Path, tiny_coco: Path, **train_overrides) -> tuple[Path, dict]:
    cfg = yaml.safe_load(TEST_CONFIG.read_text())
    cfg["coco"]["root"] = str(tiny_coco)  # the config's path is relative to the repository, we run elsewhere
    cfg["vqgan"]["train"].update(train_overrides)
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path, cfg


def _checkpoints(work: Path, ds: str, variant: str = KILLED_VARIANT) -> list[Path]:
    return sorted((work / "results" / "vqgan" / ds / variant / "state").glob("*/checkpoint-*"))


@pytest.fixture(scope="module")
def slurm_run(slurm_cluster, tmp_path_factory, tiny_coco) -> Run:
    """The tiny DAG through SLURM; KILLED_DS's training is scancel-ed once right after its first checkpoint."""
    work = tmp_path_factory.mktemp("slurm-run")
    configfile, cfg = _write_config(work, tiny_coco, checkpoint_every=CHECKPOINT_EVERY)
    watcher = SqueueWatcher()
    watcher.start()
    log_path = work / "snakemake.log"
    killed = None
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(_snakemake(work, configfile, *TARGETS), cwd=REPO, env=_env(), stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            while proc.poll() is None:
                if time.monotonic() - t0 > RUN_DEADLINE_S:
                    proc.terminate()  # Snakemake scancels its jobs on SIGTERM
                    proc.wait(timeout=120)
                    break
                run_id = re.search(r"SLURM run ID: (\S+)", log_path.read_text())
                if killed is None and run_id and _checkpoints(work, KILLED_DS):
                    job = watcher.running(run_id.group(1), f"rule_train_vqgan_wildcards_{KILLED_WILDCARDS}")
                    if job is not None:
                        subprocess.run(["scancel", job.id], check=True, timeout=30)
                        killed = job.id
                time.sleep(0.5)
        finally:
            if proc.poll() is None:
                proc.kill()
            watcher.stop()
    wall = time.monotonic() - t0
    text = log_path.read_text()
    run_id = re.search(r"SLURM run ID: (\S+)", text)
    # only this run's jobs (squeue also remembers earlier runs on the same cluster)
    jobs = {i: j for i, j in watcher.jobs.items() if run_id and j.name == run_id.group(1)}
    print(f"\nSLURM tiny DAG ({', '.join(TARGETS)}): {wall:.0f} s wall, {len(jobs)} SLURM jobs")
    return Run(work, proc.returncode, text, wall, jobs, killed, cfg)


def test_every_compute_job_is_an_sbatch_job_and_targets_exist(slurm_run: Run):
    assert slurm_run.returncode == 0, f"snakemake through SLURM failed:\n{slurm_run.tail()}"
    for target in TARGETS:
        assert (slurm_run.work / target).exists(), f"{target} missing after a successful run"

    submitted = slurm_run.submitted()
    assert submitted, f"no job went through sbatch:\n{slurm_run.tail()}"
    submitted_ids = {sm for sm, _ in submitted}
    finished = re.findall(r"Finished jobid: (\d+) \(Rule: (\w+)\)", slurm_run.log)
    assert finished, f"no finished jobs in the log:\n{slurm_run.tail()}"
    for jobid, rule in finished:
        if rule not in LOCAL_RULES:
            assert jobid in submitted_ids, f"job {jobid} ({rule}) ran without sbatch"
    local = set(re.findall(r"^localrule (\w+):", slurm_run.log, flags=re.M))
    assert local <= LOCAL_RULES, f"compute rules ran on the submit host: {sorted(local - LOCAL_RULES)}"

    # SLURM's side: every submitted job existed there, and the last submission of each Snakemake job completed.
    last = {}
    for sm, slurm in submitted:
        assert slurm in slurm_run.jobs, f"SLURM job {slurm} (Snakemake job {sm}) never seen by squeue"
        last[sm] = slurm
    for sm, slurm in last.items():
        job = slurm_run.jobs[slurm]
        assert job.state == "COMPLETED", f"SLURM job {slurm} ({job.comment}) ended {job.state}"

    # gpu=1 in profiles/slurm became a GPU request (`--gpus=1`) that SLURM scheduled on the node's fake GPU GRES;
    # CPU rules ask for none.
    by_rule = {}
    for job in slurm_run.jobs.values():
        by_rule.setdefault(job.comment.split("_wildcards_")[0].removeprefix("rule_"), []).append(job)
    assert "train_vqgan" in by_rule, f"no train_vqgan job in SLURM: {sorted(by_rule)}"
    for rule, jobs in by_rule.items():
        for job in jobs:
            if rule in ("train_vqgan", "train_transformer", "sample"):
                assert job.tres_per_job == "gres:gpu:1", f"{rule} job {job.id} asked for {job.tres_per_job}, not a GPU"
            elif rule in ("prepare_coco", "collect_atari", "fid_table"):
                assert "gpu" not in job.tres_per_job, f"CPU rule {rule} (job {job.id}) asked for {job.tres_per_job}"


def test_fid_table_has_the_local_schema(slurm_run: Run):
    """The table made through SLURM has the columns the local run writes (vqgan.eval.table.COLUMNS), one row per
    dataset, and the step counts of the config (the cancelled-and-resumed training included)."""
    import pandas as pd

    from vqgan.eval.table import COLUMNS

    if "results/fid_table.csv" not in TARGETS:
        pytest.skip("fid_table.csv is not among TARGETS")
    assert slurm_run.returncode == 0, f"snakemake through SLURM failed:\n{slurm_run.tail()}"
    table = pd.read_csv(slurm_run.work / "results" / "fid_table.csv")
    assert list(table.columns) == ["dataset", "variant", "subset", *COLUMNS], (
        f"fid_table.csv columns differ: {list(table.columns)}")
    table = table[table["subset"] == "all"]
    assert sorted(zip(table["dataset"], table["variant"])) == sorted(
        (ds, v) for ds in slurm_run.cfg["datasets"] for v in slurm_run.cfg["variants"])
    assert (table["vqgan_steps"] == slurm_run.cfg["vqgan"]["train"]["steps"]).all(), table[["dataset", "vqgan_steps"]]
    assert (table["transformer_steps"] == slurm_run.cfg["transformer"]["train"]["steps"]).all()
    assert table["fid"].notna().all() and table["rfid"].notna().all()


def _minutes(limit: str) -> int:
    """squeue's time limit ([D-]HH:MM:SS or MM:SS) in minutes."""
    days, _, rest = limit.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    return int(days or 0) * 1440 + parts[0] * 60 + parts[1]


def test_cancelled_training_is_retried_with_more_time_and_resumes(slurm_run: Run):
    assert slurm_run.killed is not None, (
        f"the test never cancelled train_vqgan/{KILLED_DS}: no checkpoint appeared while it ran\n{slurm_run.tail()}")
    killed = slurm_run.jobs[slurm_run.killed]
    assert killed.state == "CANCELLED", f"cancelled job {killed.id} ended {killed.state}"
    assert f"SLURM-job '{killed.id}' failed, SLURM status is: 'CANCELLED'" in slurm_run.log

    retries = [j for j in slurm_run.jobs.values()
               if j.comment == killed.comment and int(j.id) > int(killed.id)]
    assert retries, f"train_vqgan/{KILLED_DS} was not resubmitted after job {killed.id} was cancelled"
    retry = retries[-1]
    assert retry.state == "COMPLETED", f"retry {retry.id} ended {retry.state}"
    # profiles/slurm scales runtime with the attempt
    assert _minutes(retry.time_limit) > _minutes(killed.time_limit), (
        f"retry time limit {retry.time_limit} is not above the first attempt's {killed.time_limit}")

    import json

    summary = json.loads((slurm_run.work / "results" / "vqgan" / KILLED_DS / KILLED_VARIANT / "train.json").read_text())
    steps = slurm_run.cfg["vqgan"]["train"]["steps"]
    assert summary["steps"] == steps, f"resumed training ended at step {summary['steps']}, not {steps}"
    resumed = summary["resumed_from_step"]
    assert 0 < resumed < steps and resumed % CHECKPOINT_EVERY == 0, (
        f"the retry did not resume from a checkpoint of the cancelled attempt (resumed_from_step={resumed})")


def test_job_failing_for_good_fails_the_run_with_its_slurm_state(slurm_run: Run):
    """Broken input data: train_vqgan exits non-zero on SLURM; the run fails and says how and where to look."""
    work = slurm_run.work
    # Truncate the training images in place (the folder's mtime stays, so only the forced rule reruns).
    images = work / "results" / "data" / KILLED_DS / "train" / "images.npy"
    assert images.exists(), f"{images} missing: the dataset contract changed?"
    images.write_bytes(b"")
    target = f"results/vqgan/{KILLED_DS}/{KILLED_VARIANT}/model.safetensors"
    proc = subprocess.run(
        _snakemake(work, work / "config.yaml", "--forcerun", "train_vqgan", "--retries", "0", target),
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=RUN_DEADLINE_S,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, f"the run succeeded on broken data:\n{out[-4000:]}"
    failed = re.findall(r"SLURM-job '(\d+)' failed, SLURM status is: '(\w+)'", out)
    assert failed, f"the error does not name the SLURM job and state:\n{out[-4000:]}"
    assert failed[-1][1] == "FAILED", f"expected SLURM state FAILED, got {failed[-1][1]}"
    slurm_log = work / ".snakemake" / "slurm_logs" / "rule_train_vqgan" / KILLED_WILDCARDS / f"{failed[-1][0]}.log"
    assert str(slurm_log) in out, f"the error does not point at the SLURM log {slurm_log}:\n{out[-4000:]}"
    assert slurm_log.exists(), f"SLURM log {slurm_log} missing (failed jobs keep theirs)"
    assert f"logs/train_vqgan/{KILLED_DS}/{KILLED_VARIANT}.log" in out, "the error does not point at the rule's own log"
