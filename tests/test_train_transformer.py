"""The transformer training stage: it learns, reports bits per token, and resumes after kill -9 exactly."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import hook_env
from host_syncs import HostSyncs, more
from safetensors.torch import load_file

from vqgan.io.checkpoint import load_gpt
from vqgan.train import transformer as tt
from vqgan.train.loop import CheckpointManager

MODEL = {"n_layer": 1, "n_head": 2, "n_embd": 32}


def write_codes(path: Path, n_codes=8, seed=0) -> Path:
    """Structured 4x4 code grids: class 0 counts up, class 1 repeats one code; 10% noise."""
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in (("train", 48), ("val", 16)):
        labels = np.arange(n) % 2
        base = np.stack([np.arange(16) % n_codes, np.full(16, 5)])[labels]
        noise = (rng.random((n, 16)) < 0.1) * rng.integers(0, n_codes, (n, 16))
        np.save(path / f"{split}.npy", ((base + noise) % n_codes).reshape(n, 4, 4).astype(np.int16))
        np.save(path / f"{split}_labels.npy", labels)
    (path / "codes.json").write_text(json.dumps(
        {"n_codes": n_codes, "grid": [4, 4], "n_classes": 2, "class_names": ["a", "b"], "counts": {}}))
    return path


def config(**train) -> str:
    base = {"steps": 40, "batch_size": 8, "lr": 3e-3, "warmup_steps": 5, "checkpoint_every": 20, "eval_every": 20,
            "log_every": 10}
    return json.dumps({"model": MODEL, "train": {**base, **train}})


def args(codes, out, cfg) -> list[str]:
    return ["--config", cfg, "--codes", str(codes), "--out", str(out), "--state-dir", str(out / "state")]


def test_training_learns_and_reports_bits_per_token(tmp_path):
    codes = write_codes(tmp_path / "codes")
    out = tmp_path / "tr"
    assert tt.main(args(codes, out, config(steps=60, pkeep=0.9, p_uncond=0.1))) == 0
    info = json.loads((out / "train.json").read_text())
    # uniform guessing over 8 codes is 3 bits; the structure makes the sequences far more predictable
    assert info["uniform_bits_per_token"] == 3.0
    assert info["val_bits_per_token"] < 1.5, info
    assert math.isclose(info["val_bits_per_token"], info["val_loss"] / math.log(2))
    import pandas as pd

    m = pd.read_csv(out / "metrics.csv")
    assert {"loss", "bits_per_token", "val_loss", "val_bits_per_token", "lr"} <= set(m.columns)
    assert m["step"].tolist() == [10, 20, 30, 40, 50, 60]
    assert m["loss"].iloc[-1] < m["loss"].iloc[0]
    assert m["val_loss"].notna().sum() == 3  # steps 20, 40, 60
    model = load_gpt(out)
    assert model.config.vocab_size == 8 and model.config.n_classes == 2 and model.config.block_size == 16
    assert json.loads((out / "codes.json").read_text())["class_names"] == ["a", "b"]


def test_corruption_keeps_the_expected_fraction_and_ignores_the_process_split():
    codes = torch.zeros(8, 1000, dtype=torch.long)
    whole = tt.corrupt(codes, 0.7, 50, np.random.default_rng([0, 2, 5]), slice(0, 8), 8)
    assert abs((whole == 0).float().mean().item() - (0.7 + 0.3 / 50)) < 0.02
    halves = [tt.corrupt(codes[:4], 0.7, 50, np.random.default_rng([0, 2, 5]), slice(r * 4, r * 4 + 4), 8)
              for r in (0, 1)]
    assert torch.equal(torch.cat(halves), whole)
    assert tt.corrupt(codes, 1.0, 50, np.random.default_rng(0), slice(0, 8), 8) is codes


def test_bad_config_is_refused_with_the_key_named(tmp_path):
    codes = write_codes(tmp_path / "codes")
    with pytest.raises(SystemExit, match="pkeep"):
        tt.main(args(codes, tmp_path / "o", config(pkeep=0.0)))
    with pytest.raises(SystemExit, match="unknown transformer.model keys"):
        tt.main(args(codes, tmp_path / "o", json.dumps({"model": {"n_layers": 2}})))
    with pytest.raises(SystemExit, match="codes.json is missing"):
        tt.main(args(tmp_path / "nowhere", tmp_path / "o", config()))


@pytest.mark.slow  # kill -9 and resume (35 s at load 5-7)
def test_resume_after_kill_continues_to_the_same_weights(tmp_path):
    codes = write_codes(tmp_path / "codes")
    cfg = config(steps=30, checkpoint_every=5, eval_every=10, pkeep=0.8, p_uncond=0.2)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "vqgan.train.transformer", *args(codes, tmp_path / "killed", cfg)]
    proc = subprocess.Popen(cmd, env=hook_env(env, VQGAN_TEST_STEP_DELAY="0.2"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    state = tmp_path / "killed" / "state"
    deadline = time.time() + 120
    while not list(state.glob("*/checkpoint-10/train_state.json")):
        assert proc.poll() is None, f"training ended before it could be killed:\n{proc.stdout.read()}"
        assert time.time() < deadline, "no checkpoint-10 after 120 s"
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "model.safetensors").exists()

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    resumed_at = int(rerun.stdout.split("resumed from step ")[1].split()[0])
    assert 10 <= resumed_at < 30
    info = json.loads((tmp_path / "killed" / "train.json").read_text())
    assert info["resumed_from_step"] == resumed_at
    steps = [json.loads(line)["step"] for line in next(state.glob("*/metrics.jsonl")).read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 30  # no step logged twice after the replay

    # the data order, corruption and class dropout are functions of the step: an uninterrupted run ends equal
    torch.set_num_threads(1)
    assert tt.main(args(codes, tmp_path / "straight", cfg)) == 0
    a = load_file(tmp_path / "killed" / "model.safetensors")
    b = load_file(tmp_path / "straight" / "model.safetensors")
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=f"{k} differs after resume")


@pytest.mark.slow  # two gloo training processes (37 s at load 5-7)
def test_two_gloo_processes_train_the_same_weights_as_one(tmp_path):
    # per-rank slices of one global batch + all-reduced gradients = the single-process step, up to fp32 rounding
    codes = write_codes(tmp_path / "codes")
    cfg = config(steps=6, checkpoint_every=6, eval_every=6, pkeep=0.8, p_uncond=0.2, grad_clip=0, precision="fp32")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run([sys.executable, "-m", "vqgan.train.launch", "--num-processes", "2", "--", "-m",
                          "vqgan.train.transformer", *args(codes, tmp_path / "two", cfg)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "train.json").read_text())["world_size"] == 2
    torch.set_num_threads(1)
    assert tt.main(args(codes, tmp_path / "one", cfg)) == 0
    a = load_file(tmp_path / "two" / "model.safetensors")
    b = load_file(tmp_path / "one" / "model.safetensors")
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=f"{k}: 2 processes diverged from 1")
    # Logged metrics are the global batch's: each rank's loss averaged over the ranks, and the val loss over the
    # whole val split scored half by each rank. (Rank 0's own loss alone would be the loss of half the batch.)
    import pandas as pd

    m2, m1 = pd.read_csv(tmp_path / "two" / "metrics.csv"), pd.read_csv(tmp_path / "one" / "metrics.csv")
    assert m2["step"].tolist() == m1["step"].tolist()
    np.testing.assert_allclose(m2["loss"], m1["loss"], rtol=1e-5)
    j2, j1 = (json.loads((tmp_path / d / "train.json").read_text()) for d in ("two", "one"))
    assert j2["val_loss"] == pytest.approx(j1["val_loss"], rel=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# what a GPU cluster needs, proven on the CPU


def test_changing_bookkeeping_keys_resumes_instead_of_starting_afresh(tmp_path, capsys):
    codes = write_codes(tmp_path / "codes")
    out = tmp_path / "tr"
    assert tt.main(args(codes, out, config(steps=6, checkpoint_every=3, eval_every=3))) == 0
    # how often to evaluate, log and checkpoint does not change what is learned: same state folder, resumed
    again = subprocess.run([sys.executable, "-m", "vqgan.train.transformer",
                            *args(codes, out, config(steps=6, checkpoint_every=2, eval_every=2, log_every=3,
                                                     keep_checkpoints=3))],
                           env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from step 6" in again.stdout, again.stdout[-2000:]
    assert len(list((out / "state").iterdir())) == 1
    # a key that shapes the weights still starts afresh
    capsys.readouterr()
    assert tt.main(args(codes, out, config(steps=6, checkpoint_every=3, eval_every=3, lr=1e-3))) == 0
    assert "starting fresh" in capsys.readouterr().out


def test_model_is_on_its_device_before_the_optimizer_is_built(monkeypatch):
    """Fused AdamW (asked for on CUDA) refuses parameters that are not on the GPU yet on torch 2.2-2.3, which
    pyproject allows: build_model must move the model first. Proven with the meta device."""
    seen = []
    original = tt.GPT.configure_optimizers

    def spy(self, *a, **k):
        seen.append({p.device.type for p in self.parameters()})
        return original(self, *a, **k)

    monkeypatch.setattr(tt.GPT, "configure_optimizers", spy)
    gcfg = tt.gpt_config(MODEL, {"n_codes": 8, "n_classes": 2, "grid": [4, 4]})
    model, opt = tt.build_model(gcfg, tt.TrainConfig.from_dict({}), torch.device("meta"))
    assert seen == [{"meta"}]
    assert {p.device.type for g in opt.param_groups for p in g["params"]} == {"meta"}


def test_each_rank_draws_its_own_noise_but_the_same_data():
    import random

    from vqgan.train.loop import StepBatchSampler, seed_rank

    def draws(rank):
        seed_rank(7, rank)
        return torch.rand(4).tolist(), np.random.rand(), random.random()

    r0, r1, again = draws(0), draws(1), draws(0)
    assert r0 == again, "a rank's streams must be reproducible (and are restored on resume)"
    assert all(a != b for a, b in zip(r0, r1)), "ranks must not repeat each other's dropout masks and noise"
    # the data a rank sees does not come from these streams
    s = [StepBatchSampler(40, 4, r, 2, seed=7) for r in (0, 1)]
    seed_rank(7, 1)
    assert s[0].indices(3) + s[1].indices(3) == StepBatchSampler(40, 8, 0, 1, seed=7).indices(3)


def test_training_steps_read_nothing_back_from_the_device_between_log_steps(tmp_path, monkeypatch):
    """On a GPU every read of a tensor's value waits for all queued work: the loop may do it at log, eval and
    checkpoint steps only. Twice the steps between them must mean no more reads."""
    codes = write_codes(tmp_path / "codes")
    counts, listings = {}, {}
    for steps in (4, 8):
        cfg = config(steps=steps, log_every=steps, eval_every=steps, checkpoint_every=steps, pkeep=0.9, p_uncond=0.2)
        listed = []
        monkeypatch.setattr(CheckpointManager, "checkpoints", lambda self, _f=CheckpointManager.checkpoints, _l=listed:
                            _l.append(1) or _f(self))  # a directory listing: slow on a shared file system
        with HostSyncs() as calls:  # reads, data-dependent shapes, host-made tensors: what stalls a GPU
            assert tt.main(args(codes, tmp_path / f"s{steps}", cfg)) == 0
        counts[steps], listings[steps] = calls.events, len(listed)
    assert len(counts[8]) == len(counts[4]), f"reads grew with the steps: {more(counts[8], counts[4])}"
    assert listings[8] == listings[4], listings


@pytest.mark.parametrize("cpu_bf16,want", [("no", "fp32"), ("yes", "bf16")])
def test_auto_precision_is_resolved_on_the_cpu_and_recorded(tmp_path, cpu_bf16, want):
    # a process of its own: accelerate's state keeps the first precision a process asked for
    codes = write_codes(tmp_path / "codes")
    meta = json.loads((codes / "codes.json").read_text())
    (codes / "codes.json").write_text(json.dumps({**meta, "precision": "bf16"}))
    out = tmp_path / "tr"
    proc = subprocess.run([sys.executable, "-m", "vqgan.train.transformer", *args(codes, out, config(steps=2))],
                          env={**os.environ, "OMP_NUM_THREADS": "1", "VQGAN_HARDWARE": f"cpu_bf16={cpu_bf16}"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((out / "train.json").read_text())
    assert info["precision"] == want and info["precision_by_step"] == [[0, want]]
    assert info["train_config"]["precision"] == "auto" and info["codes_precision"] == "bf16"
