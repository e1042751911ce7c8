"""The launcher and what a cluster needs from it, proven on CPUs: device checks, stray accelerate configs, gpu=0,
threads, SLURM multi-node wiring, and two "machines" on 127.0.0.1 training what one machine trains.

Each training run is a real subprocess on gloo with one math thread per process (the machine's cores are shared).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO
from safetensors.torch import load_file
from test_train_transformer import write_codes

from vqgan.train import launch

MODEL = {"n_layer": 1, "n_head": 2, "n_embd": 32}
TRAIN = {"steps": 6, "batch_size": 8, "lr": 3e-3, "warmup_steps": 5, "checkpoint_every": 6, "eval_every": 6,
         "log_every": 2, "pkeep": 0.8, "p_uncond": 0.2, "grad_clip": 0}


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return {**base, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **extra}


def transformer_args(codes: Path, out: Path) -> list[str]:
    return ["-m", "vqgan.train.transformer", "--config", json.dumps({"model": MODEL, "train": TRAIN}),
            "--codes", str(codes), "--out", str(out), "--state-dir", str(out / "state")]


def launcher(*own: str) -> list[str]:
    return [sys.executable, "-m", "vqgan.train.launch", *own]


@pytest.fixture(scope="module")
def codes(tmp_path_factory) -> Path:
    return write_codes(tmp_path_factory.mktemp("codes") / "codes")


# ---------------------------------------------------------------------------------------------------------------
# checks before anything starts


def test_more_processes_than_gpus_is_refused_before_starting(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    started = []
    monkeypatch.setattr(launch.subprocess, "call", lambda *a, **k: started.append(a) or 0)
    rc = launch.main(["--num-processes", "2", "--", "-m", "vqgan.train.transformer"])
    err = capsys.readouterr().err
    assert rc == 2 and not started, "nothing may start when the GPUs are missing"
    assert "2 processes on this machine" in err and "torch sees 1 GPU" in err and "gpu resource to at most 1" in err
    # per machine: 4 processes over 2 machines need 2 GPUs on each
    rc = launch.main(["--num-processes", "4", "--nodes", "2", "--machine-rank", "1", "--main-process-ip", "h",
                      "--port", "1234", "--", "-m", "vqgan.train.transformer"])
    assert rc == 2 and "(4 over 2 machines)" in capsys.readouterr().err and not started
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert launch.main(["--num-processes", "2", "--", "-m", "vqgan.train.transformer"]) == 0 and started


def test_gpu_0_hides_every_gpu_from_the_job(tmp_path):
    (tmp_path / "show_gpus.py").write_text(
        "import os, torch\nprint(repr(os.environ['CUDA_VISIBLE_DEVICES']), torch.cuda.device_count())\n")
    out = subprocess.run(launcher("--num-processes", "0", "--", "-m", "show_gpus"), capture_output=True, text=True,
                         env=env(CUDA_VISIBLE_DEVICES="0,1", PYTHONPATH=f"{REPO}{os.pathsep}{tmp_path}"), timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["''", "0"]


@pytest.mark.slow  # two gloo training processes, twice (48 s at load 5-7)
def test_stray_accelerate_config_of_the_user_is_ignored(codes, tmp_path):
    """`accelerate config` leaves ~/.cache/huggingface/accelerate/default_config.yaml; accelerate launch reads it
    whenever it is not given --config_file. This one names one GPU id, which accelerate refuses for a multi-GPU
    launch ("Less than two GPU ids"), and DeepSpeed settings."""
    hf = tmp_path / "hf"
    (hf / "accelerate").mkdir(parents=True)
    (hf / "accelerate" / "default_config.yaml").write_text(
        "compute_environment: LOCAL_MACHINE\ndistributed_type: DEEPSPEED\ndeepspeed_config: {zero_stage: 2}\n"
        "gpu_ids: '0'\nmixed_precision: fp16\nnum_machines: 1\nnum_processes: 8\nuse_cpu: false\n")
    out = tmp_path / "run"
    proc = subprocess.run(launcher("--num-processes", "2", "--", *transformer_args(codes, out)), capture_output=True,
                          text=True, env=env(HF_HOME=str(hf)), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((out / "train.json").read_text())
    assert info["world_size"] == 2 and info["precision"] in ("fp32", "bf16")  # ours (auto), not the stray fp16
    # the same launch without our config file picks the stray one up and fails: the test above proves something
    bare = [a for a in launch.build_command(2, "vqgan.train.transformer", transformer_args(codes, tmp_path / "x")[2:])]
    proc = subprocess.run(bare, capture_output=True, text=True, env=env(HF_HOME=str(hf), ACCELERATE_USE_CPU="true"),
                          timeout=300)
    assert proc.returncode != 0 and "GPU ids" in proc.stderr


def test_math_threads_follow_slurm_inside_a_job_and_the_rule_outside(monkeypatch):
    monkeypatch.setattr(launch.os, "sched_getaffinity", lambda pid: set(range(32)), raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_CPUS_ON_NODE", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert launch.math_threads(1, 1) == 1, "a local job keeps the rule's threads"
    assert launch.math_threads(8, 4) == 2
    assert launch.math_threads(None, 2) == 3, "without --threads, OMP_NUM_THREADS as set"
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    assert launch.math_threads(1, 4) == 8, "in a SLURM job: the CPUs it was given (32) over 4 processes"
    monkeypatch.setenv("SLURM_CPUS_ON_NODE", "16")
    assert launch.math_threads(1, 2) == 8


# ---------------------------------------------------------------------------------------------------------------
# more than one machine


def test_slurm_job_starts_one_launcher_per_node_and_each_finds_its_rank(monkeypatch, tmp_path):
    cmd = launch.srun_command(["--num-processes", "16", "--nodes", "2", "--threads", "8"], "vqgan.train.vqgan",
                              ["--config", "c"], nodes=2, port=29999, cpus=64)
    assert cmd[:6] == ["srun", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1", "--cpus-per-task=64",
                       "--kill-on-bad-exit=1"]
    own = cmd[cmd.index("vqgan.train.launch") + 1 : cmd.index("--")]
    assert own[-4:] == ["--port", "29999", "--machine-rank", "slurm"] and cmd[-3:] == ["vqgan.train.vqgan", "--config", "c"]

    # inside the srun step: the rank from SLURM_NODEID, the main host from the node list via scontrol
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "scontrol").write_text('#!/bin/sh\n[ "$1 $2 $3" = "show hostnames gpu[07-08]" ] && printf "gpu07\\ngpu08\\n"\n')
    (bin_ / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_NODEID", "1")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[07-08]")
    monkeypatch.delenv("SLURM_STEP_NODELIST", raising=False)
    monkeypatch.setenv("SLURM_NNODES", "2")
    monkeypatch.delenv("SLURM_STEP_NUM_NODES", raising=False)
    assert launch.slurm_machine(2) == (1, "gpu07")
    with pytest.raises(launch.LaunchError, match="spans 2 node"):
        launch.slurm_machine(3)


def test_profile_multi_node_example_submits_one_task_per_node(repo):
    """The `Several nodes` example in profiles/slurm/config.yaml, through the plugin's own sbatch builder."""
    plugin = pytest.importorskip("snakemake_executor_plugin_slurm.submit_string")
    from types import SimpleNamespace

    import yaml
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    text = (repo / "profiles" / "slurm" / "config.yaml").read_text()
    example = text[text.index("#  train_transformer:"):]
    res = yaml.safe_load("\n".join(line[1:] for line in example.splitlines() if line.startswith("#  ")))
    res = res["train_transformer"]

    class Resources(dict):
        __getattr__ = dict.__getitem__

    resources = Resources({k: v for k, v in res.items() if not isinstance(v, str) or k == "mpi"}, mem_mb=64000,
                          runtime=480, slurm_extra=eval(res["slurm_extra"]))
    job = SimpleNamespace(resources=resources, threads=8)
    params = {"run_uuid": "u", "slurm_logfile": "l", "comment_str": "c", "account": "", "partition": "",
              "workdir": "/w"}
    call = plugin.get_submit_command(job, params) + set_gres_string(job)
    flags = call.split()
    assert {"--nodes=2", "--ntasks=2", "--cpus-per-gpu=8", "--gpus=16", "--gpus-per-node=8"} <= set(flags), call
    assert not any(f.startswith("--ntasks-per-gpu") for f in flags), call


@pytest.mark.slow  # four gloo training processes (72 s at load 5-7)
def test_two_machines_on_localhost_train_what_one_machine_trains(codes, tmp_path):
    """World size 2 as 2 machines x 1 process (the multi-node path: --num_machines, --machine_rank,
    --main_process_ip, static rendezvous) ends with the weights of 1 machine x 2 processes."""
    port = str(launch.free_port())
    machines = [
        subprocess.Popen(launcher("--num-processes", "2", "--nodes", "2", "--machine-rank", str(r),
                                  "--main-process-ip", "127.0.0.1", "--port", port, "--",
                                  *transformer_args(codes, tmp_path / "two_machines")),
                         env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for r in (0, 1)
    ]
    logs = [m.communicate(timeout=300)[0] for m in machines]
    assert [m.returncode for m in machines] == [0, 0], "\n".join(log[-2000:] for log in logs)
    assert "--num_machines 2 --machine_rank 1" in logs[1]
    one = subprocess.run(launcher("--num-processes", "2", "--", *transformer_args(codes, tmp_path / "one_machine")),
                         env=env(), capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    a = load_file(tmp_path / "two_machines" / "model.safetensors")
    b = load_file(tmp_path / "one_machine" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"{k}: two machines diverged from one")
    ta, tb = (json.loads((tmp_path / d / "train.json").read_text()) for d in ("two_machines", "one_machine"))
    assert ta["world_size"] == tb["world_size"] == 2 and ta["val_loss"] == tb["val_loss"]
