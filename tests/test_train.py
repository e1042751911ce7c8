"""VQGAN training loop: data order, LR, checkpoints, 2-process gradient sync, resume after kill -9, NaN guard.

The end-to-end tests run the real CLI in subprocesses on a tiny model (16 px, ch 8) and a tiny sprite dataset;
each process does one math thread, since the machine's cores are shared.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import hook_env

from vqgan.data.dataset import write_split
from vqgan.io.checkpoint import load_vqgan
from vqgan.io.hashing import config_hash
from vqgan.train.loop import (
    TRAIN_STATE,
    CheckpointManager,
    MetricsLog,
    StepBatchSampler,
    lr_at,
    per_device_batch,
)

TINY = {
    "model": {"ch": 8, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [], "z_channels": 8},
    "quantizer": {"kind": "l2", "n_codes": 16, "code_dim": 4},
    "loss": {"perceptual_weight": 0.0, "disc_start": 2, "disc_ch": 8, "disc_layers": 2},
    "train": {"steps": 6, "batch_size": 8, "checkpoint_every": 2, "keep_checkpoints": 2, "log_every": 2,
              "warmup_steps": 2},
}


def sprite_frames(n: int, res: int = 16, seed: int = 0) -> np.ndarray:
    """A static blue background with a 4x4 yellow sprite at a random place: the Atari situation in miniature."""
    rng = np.random.default_rng(seed)
    imgs = np.zeros((n, res, res, 3), np.uint8)
    imgs[..., 2] = 60
    for i in range(n):
        y, x = rng.integers(0, res - 4, 2)
        imgs[i, y : y + 4, x : x + 4] = (250, 200, 30)
    return imgs


@pytest.fixture(scope="module")
def train_split(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train"
    write_split(path, sprite_frames(48), pd.DataFrame({"source_id": range(48)}), {"source": "test", "seed": 0})
    return path


@pytest.fixture(scope="module")
def object_split(tmp_path_factory) -> Path:
    """sprite_frames with each sprite's box in objects.csv (the same RNG draws as sprite_frames)."""
    imgs = sprite_frames(48)
    rng = np.random.default_rng(0)
    ys, xs = zip(*(rng.integers(0, 16 - 4, 2) for _ in range(48)))
    objects = pd.DataFrame({"frame": range(48), "class": "player", "id": 0, "x0": xs, "y0": ys,
                            "x1": np.add(xs, 4), "y1": np.add(ys, 4), "visible": 1})
    path = tmp_path_factory.mktemp("objects") / "train"
    write_split(path, imgs, pd.DataFrame({"source_id": range(48)}), {"source": "test", "seed": 0}, objects)
    return path


def config_with(**train) -> str:
    cfg = json.loads(json.dumps(TINY))
    cfg["train"].update(train)
    return json.dumps(cfg)


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def train_cmd(config: str, data: Path, out: Path, state: Path, *extra: str, processes: int = 1) -> list[str]:
    args = ["-m", "vqgan.train.vqgan", "--config", config, "--data", str(data), "--out", str(out), "--state-dir", str(state),
            *extra]
    if processes > 1:
        return [sys.executable, "-m", "vqgan.train.launch", "--num-processes", str(processes), "--", *args]
    return [sys.executable, *args]


def run(cmd: list[str], timeout: float = 120, **hooks: str) -> subprocess.CompletedProcess:
    """`cmd` to its end; `hooks`: VQGAN_TEST_* settings of tests/hooks/sitecustomize.py."""
    return subprocess.run(cmd, env=hook_env(env(), **hooks) if hooks else env(), capture_output=True, text=True,
                          timeout=timeout)


def hashes(dump: Path) -> dict[int, dict]:
    return {int(p.stem[4:]): json.loads(p.read_text()) for p in sorted(dump.glob("rank*.json"))}


# ---------------------------------------------------------------------------------------------------------------
# fast unit tests of the shared pieces


def test_batch_order_is_independent_of_world_size_and_resumable():
    one = StepBatchSampler(40, per_device=8, rank=0, world_size=1, seed=3)
    two = [StepBatchSampler(40, per_device=4, rank=r, world_size=2, seed=3) for r in range(2)]
    for m in range(12):  # crosses epoch boundaries (5 micro-batches per epoch)
        assert one.indices(m) == two[0].indices(m) + two[1].indices(m), f"micro-step {m}"
    epoch0 = sum((one.indices(m) for m in range(5)), [])
    assert sorted(epoch0) == list(range(40)), "an epoch must visit every sample once"
    assert one.indices(5) != one.indices(0), "a new epoch must reshuffle"
    resumed = iter(StepBatchSampler(40, per_device=8, rank=0, world_size=1, seed=3, start=7))
    assert next(resumed) == one.indices(7)
    assert (one.coin(4) == np.concatenate([two[0].coin(4), two[1].coin(4)])).all()


def test_batch_order_is_the_per_micro_step_formula_bit_for_bit():
    """Caching an epoch's permutation changes no index: the order of every run so far, on any world size."""
    def formula(n, per_device, rank, world, seed, m):  # the sampler's indices before the cache, verbatim
        per_epoch = n // (per_device * world)
        epoch, pos = divmod(m, per_epoch)
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        lo = pos * per_device * world + rank * per_device
        return perm[lo : lo + per_device].tolist()

    for n, per_device, world, seed in ((40, 4, 2, 3), (37, 3, 3, 11), (10, 5, 1, 0)):
        for rank in range(world):
            sampler = StepBatchSampler(n, per_device, rank, world, seed)
            stream = iter(StepBatchSampler(n, per_device, rank, world, seed, start=2))
            for m in [*range(40), 3, 0, 39, 17]:  # over several epochs, then back to earlier ones
                assert sampler.indices(m) == formula(n, per_device, rank, world, seed, m), (n, rank, m)
            assert [next(stream) for _ in range(20)] == [formula(n, per_device, rank, world, seed, m)
                                                         for m in range(2, 22)]


def test_batch_sampler_permutes_the_data_once_per_epoch(monkeypatch):
    """Re-permuting the whole dataset at every micro-step cost milliseconds at COCO size, about a GPU step."""
    made = []
    real = np.random.default_rng

    class Counting:
        def __init__(self, seed):
            self.rng = real(seed)

        def permutation(self, n):
            made.append(n)
            return self.rng.permutation(n)

        def __getattr__(self, name):
            return getattr(self.rng, name)

    monkeypatch.setattr(np.random, "default_rng", Counting)
    sampler = iter(StepBatchSampler(1000, per_device=10, rank=0, world_size=2, seed=0))  # 50 micro-steps an epoch
    for _ in range(150):
        next(sampler)
    assert len(made) == 3


def test_training_layout_is_nchw_on_every_device_until_a_gpu_run_decides():
    """channels_last measured slower on CPU and was never measured on a GPU: bench/gpu_smoke.py decides."""
    from vqgan.train.vqgan import _memory_format

    for device in ("cpu", "cuda", "cuda:1"):
        assert _memory_format(device) == torch.contiguous_format
    assert torch.backends.cudnn.benchmark is False


def test_loader_workers_default_to_some_on_cuda_and_none_on_the_cpu(monkeypatch):
    """`num_workers: auto` (the default): memory-map reads off the training thread when a GPU waits for them, none on
    the CPU, where they would take the step's cores; resuming ignores the setting."""
    from vqgan.train.loop import loader_workers
    from vqgan.train.vqgan import TrainConfig, split_config, state_key

    assert TrainConfig.from_dict({}).num_workers == "auto"
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    for local_world, expected in (("1", 4), ("8", 2), ("16", 1), ("32", 1)):
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local_world)
        assert loader_workers("auto", torch.device("cuda", 0)) == expected, local_world
    assert loader_workers("auto", "cpu") == 0
    assert loader_workers(3, "cpu") == 3 and loader_workers(0, "cuda") == 0
    for bad in ("many", -1, 300, True, 1.5):
        with pytest.raises(ValueError, match="num_workers"):
            TrainConfig.from_dict({"num_workers": bad})
    base = split_config(json.loads(config_with()))
    assert config_hash(state_key(split_config(json.loads(config_with(num_workers=2))))) == config_hash(state_key(base))


def test_loader_workers_get_the_memory_map_by_name_not_a_copy_of_the_frames(train_split):
    """A worker started by spawn or forkserver unpickles the dataset: it must reopen the file, not receive it."""
    import pickle

    from vqgan.data.dataset import read_split
    from vqgan.train.vqgan import ImageBatches

    images = read_split(train_split).images
    data = pickle.dumps(ImageBatches(images))
    assert len(data) < images.nbytes // 8, len(data)
    again = pickle.loads(data)
    assert isinstance(again.images, np.memmap) and torch.equal(again.__getitems__([3, 1]), torch.from_numpy(images[[3, 1]]))
    in_memory = np.array(images)  # not a file: pickled as it is
    assert np.array_equal(pickle.loads(pickle.dumps(ImageBatches(in_memory))).images, in_memory)


def test_global_batch_must_divide_world_and_accumulation():
    assert per_device_batch(16, 2, 2) == 4
    with pytest.raises(ValueError, match="multiple of world size 3"):
        per_device_batch(16, 3, 1)
    with pytest.raises(ValueError, match="fewer than one global micro-batch"):
        StepBatchSampler(5, per_device=4, rank=0, world_size=2, seed=0)


def test_lr_warms_up_linearly_then_decays_by_cosine():
    lrs = [lr_at(s, 1.0, warmup_steps=4, total_steps=20, min_lr_ratio=0.1) for s in range(20)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:])), "cosine must not increase"
    assert lr_at(20, 1.0, 4, 20, min_lr_ratio=0.1) == pytest.approx(0.1)
    assert lr_at(15, 1.0, 4, 20, schedule="constant") == 1.0


def test_config_hash_changes_with_config_and_data():
    cfg, manifest = {"train": {"lr": 1e-4}}, {"count": 10, "seed": 0}
    assert config_hash(cfg, manifest) == config_hash(json.loads(json.dumps(cfg)), dict(manifest))
    assert config_hash({"train": {"lr": 2e-4}}, manifest) != config_hash(cfg, manifest)
    assert config_hash(cfg, {**manifest, "count": 11}) != config_hash(cfg, manifest)


def test_state_folder_ignores_eval_and_bookkeeping_keys():
    from vqgan.train.vqgan import split_config, state_key

    base = split_config(json.loads(config_with()))
    same = split_config(json.loads(config_with(log_every=7, checkpoint_every=9)))
    same["eval"] = {"max_images": 5}
    assert config_hash(state_key(same)) == config_hash(state_key(base))
    other = split_config(json.loads(config_with(lr=1e-5)))
    assert config_hash(state_key(other)) != config_hash(state_key(base))


def test_launch_command_uses_multi_gpu_with_a_port_and_gloo_on_cpu(monkeypatch):
    from vqgan.train import launch

    cmd = launch.build_command(2, "vqgan.train.vqgan", ["--config", "c.yaml"], port=12345)
    assert cmd[cmd.index("--num_processes") + 1] == "2" and "--multi_gpu" in cmd
    assert cmd[cmd.index("--main_process_port") + 1] == "12345"
    assert cmd[-4:] == ["-m", "vqgan.train.vqgan", "--config", "c.yaml"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert launch.launch_env()["ACCELERATE_USE_CPU"] == "true"


@pytest.mark.filterwarnings("ignore:'vqgan.train.vqgan' found in sys.modules:RuntimeWarning")
def test_launch_in_process_reports_a_config_error(capsys, train_split, tmp_path):
    from vqgan.train import launch

    rc = launch.main(["--num-processes", "1", "--", "-m", "vqgan.train.vqgan", "--config", '{"bogus": {}}',
                      "--data", str(train_split), "--out", str(tmp_path / "o"), "--state-dir", str(tmp_path / "s")])
    assert rc == 2 and "error: unknown vqgan sections ['bogus']" in capsys.readouterr().err


def test_checkpoint_without_train_state_is_never_resumed(tmp_path):
    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / TRAIN_STATE).write_text('{"step": 2}')
    (tmp_path / "checkpoint-4").mkdir()  # killed mid-save: no train_state.json
    (tmp_path / ".checkpoint-6.tmp").mkdir()
    assert CheckpointManager(tmp_path).latest() == tmp_path / "checkpoint-2"


def test_metrics_log_drops_rows_past_the_resumed_step(tmp_path):
    class Acc:  # the two things MetricsLog uses from an Accelerator
        is_main_process = True

        def log(self, values, step):
            pass

    log = MetricsLog(tmp_path, Acc())
    for s in (2, 4, 6):
        log.log(s, {"loss": s / 10})
    resumed = MetricsLog(tmp_path, Acc(), resume_step=4)
    resumed.log(6, {"loss": 0.0, "usage": 1.0})
    df = pd.read_csv(resumed.to_csv(tmp_path / "m.csv"))
    assert df["step"].tolist() == [2, 4, 6]
    assert df["loss"].tolist() == [0.2, 0.4, 0.0]


# ---------------------------------------------------------------------------------------------------------------
# end-to-end through the CLI


@pytest.mark.slow  # two gloo training processes (27 s at load 5-7)
def test_two_process_gloo_run_syncs_gradients(train_split, tmp_path):
    """Both ranks see different halves of each batch; equal final weights prove the gradients were averaged.

    The codebook maintenance (EMA, dead-code restart, k-means init) is switched on too: each changes the codebook
    outside of gradients, so it keeps the ranks identical only if it synchronises itself.
    """
    dump = tmp_path / "dump"
    cfg = json.loads(config_with(steps=4, checkpoint_every=4))
    cfg["quantizer"].update(ema=True, restart_dead_after=1, kmeans_init=True)
    proc = run(train_cmd(json.dumps(cfg), train_split, tmp_path / "out", tmp_path / "state", processes=2),
               VQGAN_TEST_DUMP_WEIGHTS=str(dump))
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = hashes(dump)
    assert sorted(ranks) == [0, 1], f"expected a dump from each of 2 ranks, got {sorted(ranks)}"
    assert ranks[0]["final"] == ranks[1]["final"], "ranks ended with different weights: gradients not synced"
    assert ranks[0]["final"]["g"] != ranks[0]["initial"]["g"], "generator weights did not change"
    assert ranks[0]["final"]["d_params"] != ranks[0]["initial"]["d_params"], "discriminator weights did not change"
    info = json.loads((tmp_path / "out" / "train.json").read_text())
    assert info["world_size"] == 2 and info["per_device_batch"] == 4 and info["images_seen"] == 32

    model = load_vqgan(tmp_path / "out")  # the export loads into a fresh model
    assert model.cfg.resolution == 16 and model.cfg.n_codes == 16


def test_object_masks_travel_with_their_images_and_flip_with_them(object_split):
    from vqgan.data.dataset import read_split
    from vqgan.data.object_masks import ObjectMasks
    from vqgan.train.vqgan import ImageBatches, to_mask_input, to_model_input

    split = read_split(object_split)
    images, masks = ImageBatches(split.images, ObjectMasks.from_split(split)).__getitems__([5, 0, 17])
    flip = np.array([True, False, True])
    x, m = to_model_input(images, flip, "cpu"), to_mask_input(masks, flip, "cpu")
    assert m.shape == (3, 1, 16, 16)
    sprite = (x[:, 0:1] > 0.5).float()  # the yellow sprite's red channel; the background has none
    assert torch.equal(sprite, m), "the mask must cover exactly the (mirrored) sprite"
    assert not torch.equal(m[0], m[0].flip(-1)), "a symmetric mask would not test the flip"


def test_object_crops_cut_frames_and_masks_together_around_the_sprite(object_split):
    from vqgan.data.dataset import read_split
    from vqgan.data.object_masks import ObjectMasks, crop_windows
    from vqgan.train.vqgan import ImageBatches, crop_batch, to_mask_input, to_model_input

    split = read_split(object_split)
    masks = ObjectMasks.from_split(split)
    idx = list(range(24))
    images, m = ImageBatches(split.images, masks).__getitems__(idx)
    corners = crop_windows([masks.boxes_of(i) for i in idx], 16, 8, 1.0, np.random.default_rng(0).random((24, 4)))
    images, m = crop_batch(images, m, corners, 8)
    assert images.shape == (24, 8, 8, 3) and m.shape == (24, 8, 8)
    x, m = to_model_input(images, None, "cpu"), to_mask_input(m, None, "cpu")
    assert torch.equal((x[:, 0:1] > 0.5).float(), m), "the crop's mask must cover exactly the crop's sprite pixels"
    assert (m.sum((1, 2, 3)) == 16).all(), "an 8-px crop centred on a 4-px sprite (+-2 px) holds all of it"
    assert len({tuple(c) for c in corners.tolist()}) > 12


def test_training_masks_follow_the_loss_and_train_sections(object_split):
    from vqgan.data.dataset import read_split
    from vqgan.train.vqgan import TrainConfig, object_masks

    split, frames, crops = read_split(object_split), TrainConfig.from_dict({}), TrainConfig.from_dict(dict(crop=8, object_crops=1.0))
    assert object_masks(split, {}, frames) is None                       # nothing needs the boxes
    assert object_masks(split, {}, crops) is not None                    # object-centred crops do
    plain = object_masks(split, {"object_weight": 2.0}, frames)(np.arange(4))
    balanced = object_masks(split, {"object_weight": 2.0, "object_balance": True}, frames)(np.arange(4))
    assert plain.dtype == np.uint8 and balanced.dtype == np.float32
    np.testing.assert_array_equal(balanced, plain)  # every sprite has the median area: weight 1
    by_class = object_masks(split, {"object_weight": 2.0, "object_class_balance": True}, frames)
    assert by_class(np.arange(4)).dtype == np.float32
    assert by_class.weights.sum() == pytest.approx(len(by_class.weights))  # games keep their total weight


@pytest.mark.parametrize("loss, train, message", [
    ({}, {"crop": 7}, "vqgan.train.crop=7: must be at most the data's resolution (16 px) and a multiple of"),
    ({}, {"crop": 32}, "vqgan.train.crop=32"),
    ({}, {"object_crops": 0.5}, "object_crops=0.5 needs crop > 0"),
    ({"foreground_weight": 4.0}, {"crop": 8}, "set foreground_weight: 0"),
    ({"disc_start": 99}, {"crop": 8, "object_crops": 0.5}, "no objects.csv"),
    ({}, {"crop": 8, "steps": 4}, "smaller than the discriminator's smallest input (12 px for loss.disc_layers=2)"),
])
def test_bad_crop_settings_are_refused_before_training(train_split, tmp_path, loss, train, message):
    cfg = json.loads(config_with(**{"steps": 2, **train}))
    cfg["loss"].update(loss)
    proc = run(train_cmd(json.dumps(cfg), train_split, tmp_path / "out", tmp_path / "state"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr
    assert not (tmp_path / "state").exists()


def test_object_weight_without_objects_csv_is_refused_before_training(train_split, tmp_path):
    cfg = json.loads(config_with(steps=2))
    cfg["loss"]["object_weight"] = 5.0
    proc = run(train_cmd(json.dumps(cfg), train_split, tmp_path / "out", tmp_path / "state"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "no objects.csv" in proc.stderr and "object_weight: 0" in proc.stderr
    assert not (tmp_path / "state").exists()


@pytest.mark.slow  # two gloo training processes (22-27 s at load 5-7)
@pytest.mark.parametrize("crops", [{}, {"crop": 12, "object_crops": 0.5}], ids=["frames", "object_crops"])
def test_two_process_run_with_object_weight_and_flips_keeps_ranks_equal(object_split, tmp_path, crops):
    dump = tmp_path / "dump"
    cfg = json.loads(config_with(steps=3, checkpoint_every=3, augment="hflip", **crops))
    cfg["loss"]["object_weight"] = 20.0
    proc = run(train_cmd(json.dumps(cfg), object_split, tmp_path / "out", tmp_path / "state", processes=2),
               VQGAN_TEST_DUMP_WEIGHTS=str(dump))
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = hashes(dump)
    assert ranks[0]["final"] == ranks[1]["final"] and ranks[0]["final"]["g"] != ranks[0]["initial"]["g"]


@pytest.mark.slow  # kill -9 and resume, three training runs (43 s at load 5-7)
def test_resume_after_kill_continues_step_count(train_split, tmp_path):
    config = config_with(steps=12, checkpoint_every=2, keep_checkpoints=2, log_every=2)
    # the uninterrupted reference runs alongside the victim (wall time; the cores are shared anyway)
    clean = subprocess.Popen(train_cmd(config, train_split, tmp_path / "clean", tmp_path / "clean_state"),
                             env=hook_env(env(), VQGAN_TEST_DUMP_WEIGHTS=str(tmp_path / "clean_dump")),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    out, state = tmp_path / "out", tmp_path / "state"
    cmd = train_cmd(config, train_split, out, state)
    dump = {"VQGAN_TEST_DUMP_WEIGHTS": str(tmp_path / "dump")}
    victim = subprocess.Popen(cmd, env=hook_env(env(), **dump), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    deadline = time.time() + 90
    while not list(state.glob("*/checkpoint-*/" + TRAIN_STATE)):
        assert victim.poll() is None, "training exited before writing its first checkpoint"
        assert time.time() < deadline, "no checkpoint after 90 s"
        time.sleep(0.05)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    assert not (out / "model.safetensors").exists(), "the run finished before the kill; the test proves nothing"
    killed_at = max(int(p.parent.name.split("-")[1]) for p in state.glob("*/checkpoint-*/" + TRAIN_STATE))
    assert killed_at < 12

    resumed = run(cmd, **dump)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _, clean_err = clean.communicate(timeout=120)
    assert clean.returncode == 0, clean_err[-3000:]
    m = [line for line in resumed.stdout.splitlines() if "resumed from step" in line]
    assert m, f"no 'resumed from step' line in:\n{resumed.stdout[-2000:]}"
    start = int(m[0].split("resumed from step")[1].split()[0])
    assert start == killed_at and start > 0
    runs = json.loads((tmp_path / "dump" / "rank0.json").read_text())
    assert runs["start_step"] == start
    info = json.loads((out / "train.json").read_text())
    assert info["steps"] == 12 and info["resumed_from_step"] == start
    metrics = pd.read_csv(out / "metrics.csv")
    assert metrics["step"].tolist() == list(range(2, 13, 2)), "each logged step exactly once across the two runs"
    # Same seed, data order a function of the step, RNG states restored: the resumed run is the clean run.
    assert runs["final"] == json.loads((tmp_path / "clean_dump" / "rank0.json").read_text())["final"]
    states = sorted(int(p.name.split("-")[1]) for p in next(state.iterdir()).glob("checkpoint-*"))
    assert states == [10, 12], f"keep_checkpoints=2 should leave the newest two, found {states}"


def test_nan_loss_stops_training_and_keeps_last_good_state(train_split, tmp_path):
    out, state = tmp_path / "out", tmp_path / "state"
    proc = run(train_cmd(config_with(steps=6, checkpoint_every=2), train_split, out, state), VQGAN_TEST_NAN_AT="3")
    assert proc.returncode != 0
    assert "non-finite loss at step 3" in proc.stderr and "checkpoint-2" in proc.stderr, proc.stderr[-2000:]
    assert not (out / "model.safetensors").exists(), "a diverged run must not export a model"
    run_dir = next(state.iterdir())
    assert CheckpointManager(run_dir).latest() == run_dir / "checkpoint-2"
    # the last good state is loadable and finite
    from safetensors.torch import load_file

    weights = load_file(str(run_dir / "checkpoint-2" / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())


# ---------------------------------------------------------------------------------------------------------------
# what a GPU cluster needs, proven on the CPU


def test_fp16_is_refused_with_the_reason_and_what_to_use(train_split, tmp_path):
    from vqgan.train.vqgan import TrainConfig

    with pytest.raises(ValueError, match=r"precision='fp16'.*two optimizers.*'auto'.*bf16"):
        TrainConfig.from_dict({"precision": "fp16"})
    proc = run(train_cmd(config_with(precision="fp16"), train_split, tmp_path / "o", tmp_path / "s"))
    assert proc.returncode != 0 and "fp16" in proc.stderr and not (tmp_path / "s").exists()


def test_vqgan_steps_read_nothing_back_from_the_device_between_log_steps(train_split, tmp_path):
    """Losses, codebook statistics, the NaN guard and dead-code restarts stay on the device between log steps
    (on a GPU every read waits for all queued work). Twice the steps must mean no more reads."""
    from host_syncs import HostSyncs, more

    from vqgan.train.vqgan import main

    counts = {}
    for steps in (4, 8):
        cfg = json.loads(config_with(steps=steps, log_every=steps, checkpoint_every=steps, augment="hflip"))
        cfg["quantizer"].update(ema=True, restart_dead_after=1, kmeans_init=True)
        with HostSyncs() as calls:  # reads, data-dependent shapes, host-made tensors: what stalls a GPU
            assert main(["--config", json.dumps(cfg), "--data", str(train_split), "--out", str(tmp_path / f"o{steps}"),
                         "--state-dir", str(tmp_path / f"s{steps}")]) == 0
        counts[steps] = calls.events
    assert len(counts[8]) == len(counts[4]), f"reads grew with the steps: {more(counts[8], counts[4])}"


def test_auto_precision_follows_the_machine_and_a_resume_elsewhere_records_both(train_split, tmp_path):
    """The state folder holds the config's `auto`, not what it resolved to: a run resumed on a machine whose CPU has
    no bf16 (VQGAN_HARDWARE stands in for the move) resumes, continues in what `auto` gives there, and says so."""
    out, state = tmp_path / "out", tmp_path / "state"
    cmd = train_cmd(config_with(steps=4, checkpoint_every=2, precision="auto"), train_split, out, state)
    first = subprocess.run(cmd, env={**env(), "VQGAN_HARDWARE": "cpu_bf16=yes"}, capture_output=True, text=True,
                           timeout=120)
    assert first.returncode == 0, first.stderr[-3000:]
    info = json.loads((out / "train.json").read_text())
    assert info["precision"] == "bf16" and info["precision_by_step"] == [[0, "bf16"]]
    assert info["train_config"]["precision"] == "auto"
    (run_dir,) = state.iterdir()
    for p in (run_dir / "checkpoint-4", out):  # back to step 2, as if the run had been cut there
        shutil.rmtree(p)
    second = subprocess.run(cmd, env={**env(), "VQGAN_HARDWARE": "cpu_bf16=no"}, capture_output=True, text=True,
                            timeout=120)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from step 2" in second.stdout and [p.name for p in state.iterdir()] == [run_dir.name]
    info = json.loads((out / "train.json").read_text())
    assert info["precision"] == "fp32" and info["precision_by_step"] == [[0, "bf16"], [2, "fp32"]]
