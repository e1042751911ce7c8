"""bench/gpu_smoke.py, the script a GPU machine runs first, works on the CPU and names every check it makes."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO

SCRIPT = REPO / "bench" / "gpu_smoke.py"
CHECKS = ("machine", "fused-adamw", "step-syncs", "peak-memory", "layout", "tiny-dag", "resume", "ddp-nccl",
          "throughput", "plan")


def smoke(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--cpu", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_gpu_smoke_lists_every_check_it_makes():
    proc = smoke("--list")
    assert proc.returncode == 0, proc.stderr[-2000:]
    named = [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]
    assert named == list(CHECKS), proc.stdout
    for words in ("set_sync_debug_mode", "paper's per-GPU batch", "channels_last vs NCHW", "cudnn.benchmark",
                  "resumed", "NCCL", "predicted vs measured"):
        assert words in proc.stdout, words


@pytest.mark.slow  # two training steps of each loop in one process (25 s at load 5)
def test_gpu_smoke_finds_no_host_sync_in_either_training_step_on_the_cpu():
    proc = smoke("--only", "step-syncs,plan")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert proc.stdout.count("ok   ") == 2 and "all passed" in proc.stdout, proc.stdout
