"""GPUs and CPUs, on a CPU-only machine: each job claims its own GPU(s) (vqgan.gpus), the workflow plans its jobs
from the detected machine (a fake `nvidia-smi` lists two GPUs), and a job given a GPU that torch cannot use stops
with one line. VQGAN_FAKE_CUDA lets the jobs of the end-to-end run compute on the CPU while holding a GPU."""
from __future__ import annotations

import datetime
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, TEST_CONFIG, TINY_COCO, run_snakemake, snakemake_env

from vqgan import gpus, hardware

GPU_RULES = ("train_vqgan", "eval_vqgan", "encode", "train_transformer", "sample", "fid")
H100 = "NVIDIA H100 80GB HBM3, 81559, 9.0"
SHOW = [sys.executable, "-c", "import os; print(repr(os.environ['CUDA_VISIBLE_DEVICES']), flush=True)"]


@pytest.fixture
def two_gpus(tmp_path, monkeypatch) -> dict[str, str]:
    """A fake nvidia-smi listing GPUs 0 and 1 first on PATH, and a lock folder of this test: the environment."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "nvidia-smi").write_text(f'#!/bin/sh\necho "0, {H100}"\necho "1, {H100}"\n')
    (bin_ / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv(gpus.LOCKS_ENV, str(tmp_path / "locks"))
    for var in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", hardware.ENV, "VQGAN_FAKE_CUDA"):
        monkeypatch.delenv(var, raising=False)
    return {**os.environ, "PYTHONPATH": str(REPO)}


def claimer(count: int, *cmd: str) -> list[str]:
    return [sys.executable, "-m", "vqgan.gpus", "--count", str(count), "--", *cmd]


def wait_for_line(proc: subprocess.Popen, pattern: str, timeout: float = 60) -> str:
    """The first line of `proc`'s stderr matching `pattern` (the claimer's lines go there)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        line = proc.stderr.readline()
        if re.search(pattern, line):
            return line
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"no line matching {pattern!r} from {proc.args}")


# -- the claimer ----------------------------------------------------------------------------------------------


def test_two_claims_get_different_gpus_and_a_third_none(two_gpus, tmp_path):
    first = gpus.try_claim(tmp_path, ["0", "1"], 1)
    second = gpus.try_claim(tmp_path, ["0", "1"], 1)
    assert first and second and first[0][0] != second[0][0]
    assert gpus.try_claim(tmp_path, ["0", "1"], 1) is None
    gpus.release(first)
    assert [d for d, _ in gpus.try_claim(tmp_path, ["0", "1"], 1)] == [first[0][0]]


def test_a_claim_of_two_holds_nothing_while_only_one_is_free(two_gpus, tmp_path):
    one = gpus.try_claim(tmp_path, ["0", "1"], 1)
    assert gpus.try_claim(tmp_path, ["0", "1"], 2) is None
    other = gpus.try_claim(tmp_path, ["0", "1"], 1)  # the free one was not kept by the failed claim
    assert other and {one[0][0], other[0][0]} == {"0", "1"}


def test_a_job_waits_while_every_gpu_is_held_and_runs_once_one_is_released(two_gpus):
    folder = gpus.lock_dir(two_gpus)
    folder.mkdir(parents=True)
    held = gpus.try_claim(folder, ["0", "1"], 2)
    job = subprocess.Popen(claimer(1, *SHOW), env=two_gpus, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "waiting for 1 free GPU(s) of 2" in wait_for_line(job, "waiting")
        time.sleep(1)
        assert job.poll() is None, "the job ran although every GPU was held"
        gpus.release([h for h in held if h[0] == "1"])
        out, err = job.communicate(timeout=60)
    finally:
        job.kill()
        gpus.release([h for h in held if h[0] == "0"])
    assert job.returncode == 0 and out.strip() == "'1'", err
    assert re.search(r"claimed GPU 1 at .*\n.*released GPU 1 at .*\(exit code 0\)", err), err


def test_a_sigkilled_holder_frees_its_gpu_once_the_job_and_its_command_are_gone(two_gpus):
    cmd = claimer(2, sys.executable, "-c", "import os, time; print(os.getpid(), flush=True); time.sleep(120)")
    job = subprocess.Popen(cmd, env=two_gpus, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_line(job, "claimed GPU 0,1")
        command_pid = int(job.stdout.readline())
        folder = gpus.lock_dir(two_gpus)
        assert gpus.try_claim(folder, ["0", "1"], 1) is None
        os.kill(job.pid, signal.SIGKILL)
        job.wait(timeout=30)
        # the command inherited the locks: its GPUs stay taken while it runs
        assert gpus.try_claim(folder, ["0", "1"], 1) is None
        os.kill(command_pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while (free := gpus.try_claim(folder, ["0", "1"], 2)) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert free, "the GPUs of a job killed with -9 stayed locked"
    finally:
        job.kill()


def test_gpu_0_hides_every_gpu(two_gpus):
    out = subprocess.run(claimer(0, *SHOW), env={**two_gpus, "CUDA_VISIBLE_DEVICES": "0,1"}, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "''", out.stderr


def test_the_claim_maps_through_cuda_visible_devices_and_the_override(two_gpus):
    assert gpus.devices(two_gpus) == ["0", "1"]
    assert gpus.devices({**two_gpus, "CUDA_VISIBLE_DEVICES": "1"}) == ["1"]
    assert gpus.devices({**two_gpus, "CUDA_VISIBLE_DEVICES": "1,0"}) == ["1", "0"]
    assert gpus.devices({**two_gpus, hardware.ENV: "gpus=0+1", "CUDA_VISIBLE_DEVICES": "1,0"}) == ["1", "0"]
    assert gpus.devices({**two_gpus, hardware.ENV: "gpus=1"}) == ["0"]
    assert gpus.devices({**two_gpus, "CUDA_VISIBLE_DEVICES": ""}) == []
    out = subprocess.run(claimer(1, *SHOW), env={**two_gpus, "CUDA_VISIBLE_DEVICES": "1"}, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "'1'", out.stderr


def test_inside_a_slurm_job_the_gpus_slurm_set_stay(two_gpus):
    env = {**two_gpus, "SLURM_JOB_ID": "42", "CUDA_VISIBLE_DEVICES": "3"}
    out = subprocess.run(claimer(1, *SHOW), env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "'3'", out.stderr
    assert not gpus.lock_dir(two_gpus).exists(), "a SLURM job claims nothing: SLURM gave it its GPUs"
    out = subprocess.run(claimer(0, *SHOW), env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "''", "gpu=0 hides the GPUs inside SLURM too"


def test_the_exit_code_is_the_commands_and_too_many_gpus_is_one_line(two_gpus):
    out = subprocess.run(claimer(1, sys.executable, "-c", "raise SystemExit(3)"), env=two_gpus, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 3
    out = subprocess.run(claimer(3, "true"), env=two_gpus, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "asks for 3 GPUs, but this machine has 2" in out.stderr and "gpu resource to at most 2" in out.stderr


# -- the plan -------------------------------------------------------------------------------------------------


def machine(n_gpus: int, cpus: int) -> hardware.Hardware:
    gpu = hardware.GPU(0, "H100", 81559, (9, 0))
    return hardware.Hardware(gpus=(gpu,) * n_gpus, cpus=cpus, cpu_model="x", cpu_bf16=False, gpu_bf16=n_gpus > 0)


@pytest.mark.parametrize("n_gpus, cpus, expected", [(0, 2, (0, 1)), (0, 1, (0, 1)), (0, 16, (0, 8)),
                                                    (1, 16, (1, 8)), (8, 16, (1, 2)), (8, 4, (1, 1))])
def test_rules_default_to_a_gpu_where_there_is_one_and_share_the_cpus(n_gpus, cpus, expected):
    assert hardware.job_defaults(machine(n_gpus, cpus)) == expected


def _dry_run(env: dict[str, str], *extra: str) -> tuple[dict[str, set[int]], str]:
    """The README's command, dry: {rule: its jobs' gpu values} and stderr."""
    proc = run_snakemake("-n", "--forceall", "--cores", "2", "results/fid_table.csv", *extra, "--configfile",
                         str(TEST_CONFIG), env=env, timeout=300)
    found: dict[str, set[int]] = {}
    for rule, res in re.findall(r"^rule (\w+):.*?^\s+resources: (.*?)$", proc.stdout, re.S | re.M):
        if (gpu := re.search(r"\bgpu=(\d+)", res)) is not None:
            found.setdefault(rule, set()).add(int(gpu.group(1)))
    return found, proc.stderr


def test_with_gpus_every_gpu_job_asks_for_one_and_at_most_two_run_at_once(two_gpus):
    found, err = _dry_run(snakemake_env())  # the fixture put the fake nvidia-smi on PATH
    assert {r: found.get(r) for r in GPU_RULES} == {r: {1} for r in GPU_RULES}
    assert all(found[r] == {0} for r in found if r not in GPU_RULES), found
    lines = [line for line in err.splitlines() if line.startswith("hardware:")]
    assert len(lines) == 1 and "2 GPUs (NVIDIA H100 80GB HBM3, bf16)" in lines[0], err
    assert "jobs: gpu=1 (at most 2 GPU jobs at once)" in lines[0]
    # the user's word wins: --set-resources over the detected default, --resources over the cap
    found, err = _dry_run(snakemake_env(), "--set-resources", "encode:gpu=0", "--resources", "gpu=1")
    assert found["encode"] == {0} and found["train_vqgan"] == {1} and "at most 1 GPU jobs at once" in err


def test_more_gpus_for_a_job_than_the_machine_has_is_one_line_before_any_job(two_gpus):
    proc = run_snakemake("-n", "--cores", "2", "--configfile", str(TEST_CONFIG), "--set-resources",
                         "train_vqgan:gpu=3", check=False, timeout=300)
    assert proc.returncode != 0 and "Job stats" not in proc.stdout
    assert re.search(r"^--set-resources train_vqgan:gpu=3: at most 2 GPU\(s\) here .*; give train_vqgan gpu=2 or "
                     r"less \(0: the CPU\)$", proc.stdout + proc.stderr, re.M), proc.stdout[-3000:]


def test_without_gpus_every_job_asks_for_none():
    env = snakemake_env()
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if not (Path(p) / "nvidia-smi").exists())
    found, err = _dry_run(env)
    assert set(GPU_RULES) <= set(found) and all(v == {0} for v in found.values()), found
    line, = [line for line in err.splitlines() if line.startswith("hardware:")]
    assert "no GPU" in line and "jobs: gpu=0," in line and "at once" not in line


# -- a GPU that torch cannot use --------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="torch can use CUDA here")
@pytest.mark.parametrize("cmd", [["vqgan.train.launch", "--num-processes", "1", "--", "-m", "vqgan.train.vqgan"],
                                 ["vqgan.encode", "--model", "m", "--data", "d", "--out", "o"]])
def test_a_job_given_a_gpu_that_torch_cannot_use_stops_with_one_line(tmp_path, cmd):
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": "0"}
    env.pop("VQGAN_FAKE_CUDA", None)
    out = subprocess.run([sys.executable, "-m", *cmd], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    line = out.stderr
    assert line.startswith("error: this job was given GPU 0 but torch cannot use CUDA") and "Traceback" not in line
    assert f"torch {torch.__version__}" in line and "CUDA_VISIBLE_DEVICES='0'" in line and "0 GPU(s)" in line
    assert "https://pytorch.org/get-started/locally/" in line and "VQGAN_HARDWARE=gpus=0" in line


# -- end to end -----------------------------------------------------------------------------------------------


def _intervals(workdir: Path) -> list[tuple[str, str, float, float]]:
    """(job log, GPU, claimed, released) of every job that held a GPU, from the claimer's lines in the logs."""
    def t(stamp: str) -> float:
        return datetime.datetime.fromisoformat(stamp).timestamp()

    found = []
    for log in sorted((workdir / "logs").rglob("*.log")):
        text = log.read_text()
        claimed = re.search(r"^gpus: claimed GPU (\S+) at (\S+)", text, re.M)
        released = re.search(r"^gpus: released GPU (\S+) at (\S+) \(exit code 0\)", text, re.M)
        if claimed:
            assert released, f"{log}: claimed a GPU but did not end well:\n{text[-2000:]}"
            found.append((str(log.relative_to(workdir)), claimed.group(1), t(claimed.group(2)), t(released.group(2))))
    return found


@pytest.mark.slow
def test_gpu_jobs_each_get_their_own_gpu_and_two_run_at_once(two_gpus, tmp_path):
    """Three VQGANs of the tiny COCO (three variants) on two fake GPUs: three trainings are ready at once, two run
    (one per GPU), every job holds its own GPU; the jobs compute on the CPU (VQGAN_FAKE_CUDA)."""
    cfg = yaml.safe_load(TEST_CONFIG.read_text())
    cfg["coco"]["root"] = str(TINY_COCO)
    cfg["datasets"] = {"coco_tiny": cfg["datasets"]["coco_tiny"]}
    cfg["variants"]["extra"] = {}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    targets = [f"results/vqgan/coco_tiny/{v}/recon.json" for v in cfg["variants"]]
    env = snakemake_env(VQGAN_FAKE_CUDA="1")  # and, from the fixture, the fake nvidia-smi and the lock folder
    proc = run_snakemake("-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "--cores", "4", *targets,
                         "--configfile", str(tmp_path / "config.yaml"), env=env, timeout=1200)
    assert "at most 2 GPU jobs at once" in proc.stderr
    jobs = _intervals(tmp_path)
    assert len(jobs) == 6, jobs  # 3 trainings, 3 evaluations
    for i, (log_a, gpu_a, start_a, end_a) in enumerate(jobs):
        together = [(log_b, gpu_b) for log_b, gpu_b, start_b, end_b in jobs[i + 1:]
                    if start_b < end_a and start_a < end_b]
        assert all(gpu_b != gpu_a for _, gpu_b in together), f"{log_a} shared GPU {gpu_a} with {together}"
    starts = sorted(s for *_, s, _ in jobs)
    most = max(sum(1 for *_, s, e in jobs if s <= at < e) for at in starts)
    assert most == 2, f"GPU jobs running at once: {most} (2 GPUs, 3 trainings ready together)"
