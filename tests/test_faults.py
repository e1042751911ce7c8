"""Faults and bad input (issue #15): every command answers a bad argument or a bad file with one line and exit
code 2, broken or hostile COCO annotations are refused naming the file, training resumes past a corrupt
checkpoint, and what a killed job leaves behind is cleaned up by the next one.

The commands run in-process through their `main(argv)` (fast); two run as real subprocesses, to see what a user
sees on the terminal.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import BIN, REPO, TINY_COCO, readme_commands, repo_copy, snakemake_env, write_tiny_stage

from vqgan.data.dataset import DatasetError, data_identity, prepare_splits, write_split
from vqgan.io.checkpoint import CheckpointError
from vqgan.io.files import atomic_dir, write_json_atomic
from vqgan.io.hashing import config_hash

torch.set_num_threads(1)


def _main(module: str):
    """The `main` of a command module, imported only when its case runs."""
    import importlib

    return importlib.import_module(module).main


@pytest.fixture(scope="module")
def w(tmp_path_factory) -> SimpleNamespace:
    """Good and broken inputs for every command: a 16 px two-class dataset, a tiny VQGAN and GPT, codes."""
    root = tmp_path_factory.mktemp("faults")
    write_tiny_stage(root)
    codes = root / "codes"

    # broken copies
    shutil.copytree(root / "vqgan", root / "vqgan_corrupt")
    weights = root / "vqgan_corrupt" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # cut short: "invalid header length"
    shutil.copytree(root / "gpt", root / "gpt_wrong_config")
    shutil.copy(root / "vqgan" / "config.json", root / "gpt_wrong_config" / "config.json")
    shutil.copytree(root / "data", root / "data_cut")
    npy = root / "data_cut" / "val" / "images.npy"
    npy.write_bytes(npy.read_bytes()[:200])
    shutil.copytree(root / "data", root / "data_badjson")
    (root / "data_badjson" / "val" / "manifest.json").write_text('{"count": 4, ')
    shutil.copytree(codes, root / "codes_cut")
    (root / "codes_cut" / "train.npy").write_bytes(b"\x93NUMPY garbage")
    shutil.copytree(codes, root / "codes_nojson")
    (root / "codes_nojson" / "codes.json").write_text("[1, 2")
    (root / "binary").write_bytes(bytes(range(256)) * 4)
    (root / "a_file").write_text("a regular file: nothing can be created under it")
    (root / "metrics.csv").write_text("step,loss\n1,0.5\n2,0.4\n")
    (root / "fid.json").write_text(json.dumps({"dataset": "x", "fid": 1.0}))
    return SimpleNamespace(
        root=root, data=root / "data", vqgan=root / "vqgan", codes=codes, gpt=root / "gpt",
        binary=root / "binary", unwritable=root / "a_file" / "out", missing=root / "does-not-exist",
    )


def tiny_vqgan_config(**train) -> str:
    return json.dumps({"model": {"ch": 8, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [],
                                 "z_channels": 8},
                       "quantizer": {"n_codes": 16, "code_dim": 4},
                       "loss": {"perceptual_weight": 0.0, "disc_ch": 8, "disc_layers": 2},
                       "train": {"steps": 2, "batch_size": 4, **train}})


def train_vqgan(w, config=None, data=None, out=None):
    return ["--config", config or tiny_vqgan_config(), "--data", str(data or w.data / "train"),
            "--out", str(out or w.root / "o_vqgan"), "--state-dir", str(w.root / "s_vqgan")]


def train_gpt(w, codes=None, config='{"model": {"n_layer": 1, "n_head": 2, "n_embd": 16}, "train": {"batch_size": 4}}', out=None):
    return ["--config", config, "--codes", str(codes or w.codes), "--out", str(out or w.root / "o_gpt"),
            "--state-dir", str(w.root / "s_gpt")]


def recon(w, model=None, data=None, out_json=None):
    return ["--model", str(model or w.vqgan), "--data", str(data or w.data / "val"), "--train-data",
            str(w.data / "train"), "--out-json", str(out_json or w.root / "r.json"), "--out-png", str(w.root / "r.png"),
            "--device", "cpu"]


def encode(w, model=None, data=None, out=None):
    return ["--model", str(model or w.vqgan), "--data", str(data or w.data), "--out", str(out or w.root / "o_codes"),
            "--device", "cpu"]


def sample(w, config="{}", transformer=None, out=None):
    return ["--config", config, "--transformer", str(transformer or w.gpt), "--vqgan", str(w.vqgan),
            "--out", str(out or w.root / "o_samples"), "--device", "cpu"]


def coco_prepare(w, config='{"kind": "coco", "resolution": 16, "train_images": 2, "val_images": 2}', root=None,
                 out=None):
    return ["prepare", "--config", config, "--root", str(root or TINY_COCO), "--out", str(out or w.root / "o_coco"),
            "--workers", "1", "--no-progress"]


def atari(w, config='{"kind": "atari", "resolution": 16, "games": ["Pong"], "frames_per_game": 8}', out=None):
    return ["--config", config, "--out", str(out or w.root / "o_atari"), "--no-progress"]


# (case id, command module, argv from the fixture, what the one line must say)
BAD_CALLS = [
    ("train-data-missing", "vqgan.train.vqgan", lambda w: train_vqgan(w, data=w.missing), "no such dataset folder"),
    ("train-data-cut", "vqgan.train.vqgan", lambda w: train_vqgan(w, data=w.root / "data_cut" / "val"),
     "images.npy: not a readable .npy"),
    ("train-config-json", "vqgan.train.vqgan", lambda w: train_vqgan(w, config='{"train": '), "not valid JSON"),
    ("train-config-nofile", "vqgan.train.vqgan", lambda w: train_vqgan(w, config="nope.yaml"), "neither inline JSON"),
    ("train-config-binary", "vqgan.train.vqgan", lambda w: train_vqgan(w, config=str(w.binary)),
     "is not valid YAML/JSON"),
    ("train-config-type", "vqgan.train.vqgan", lambda w: train_vqgan(w, config=tiny_vqgan_config(steps="many")),
     "steps='many' (must be an integer >= 1)"),
    ("train-batch", "vqgan.train.vqgan", lambda w: train_vqgan(w, config=tiny_vqgan_config(batch_size=64)),
     "takes 64 samples, more than the 8 images"),
    ("train-out", "vqgan.train.vqgan", lambda w: train_vqgan(w, out=w.unwritable), "cannot write"),
    ("gpt-codes-missing", "vqgan.train.transformer", lambda w: train_gpt(w, codes=w.missing), "codes.json is missing"),
    ("gpt-codes-cut", "vqgan.train.transformer", lambda w: train_gpt(w, codes=w.root / "codes_cut"),
     "train.npy: not a readable .npy"),
    ("gpt-codes-json", "vqgan.train.transformer", lambda w: train_gpt(w, codes=w.root / "codes_nojson"),
     "codes.json: not valid JSON"),
    ("gpt-config-key", "vqgan.train.transformer", lambda w: train_gpt(w, config='{"model": {"n_layers": 1}}'),
     "unknown transformer.model keys"),
    ("gpt-out", "vqgan.train.transformer", lambda w: train_gpt(w, out=w.unwritable), "cannot write"),
    ("launch-module", "vqgan.train.launch", lambda w: ["--", "-m", "vqgan.train.nothing"], "no such module"),
    ("launch-inner", "vqgan.train.launch", lambda w: ["--", "-m", "vqgan.train.vqgan", *train_vqgan(w, data=w.missing)],
     "no such dataset folder"),
    ("recon-corrupt", "vqgan.eval.recon", lambda w: recon(w, model=w.root / "vqgan_corrupt"), "cannot load the weights"),
    ("recon-manifest", "vqgan.eval.recon", lambda w: recon(w, data=w.root / "data_badjson" / "val"),
     "manifest.json: not valid JSON"),
    ("recon-out", "vqgan.eval.recon", lambda w: recon(w, out_json=w.unwritable), "cannot write"),
    ("encode-corrupt", "vqgan.encode", lambda w: encode(w, model=w.root / "vqgan_corrupt"), "cannot load the weights"),
    ("encode-data-cut", "vqgan.encode", lambda w: encode(w, data=w.root / "data_cut"), "not a readable .npy"),
    ("encode-out", "vqgan.encode", lambda w: encode(w, out=w.unwritable), "cannot write"),
    ("sample-wrong-config", "vqgan.sample", lambda w: sample(w, transformer=w.root / "gpt_wrong_config"),
     "gpt_wrong_config/config.json: not a GPT config"),
    ("sample-config-type", "vqgan.sample", lambda w: sample(w, config='{"temperature": "hot"}'),
     "invalid sample config"),
    ("sample-out", "vqgan.sample", lambda w: sample(w, out=w.unwritable), "cannot write"),
    ("fid-real-missing", "vqgan.eval.fid", lambda w: ["--real", str(w.missing), "--gen", str(w.vqgan), "--out",
                                                     str(w.root / "f.json")], "no such dataset folder"),
    ("fid-gen-missing", "vqgan.eval.fid", lambda w: ["--real", str(w.data / "val"), "--gen", str(w.missing), "--out",
                                                    str(w.root / "f.json")], "not a directory"),
    ("fid-config", "vqgan.eval.fid", lambda w: ["--config", '{"n": 0}', "--real", str(w.data / "val"), "--out",
                                               str(w.root / "f.json")], "n must be a positive integer"),
    ("table-binary", "vqgan.eval.table", lambda w: ["--fid", str(w.binary), "--out", str(w.root / "t.csv")],
     "binary: not valid JSON"),
    ("table-out", "vqgan.eval.table", lambda w: ["--fid", str(w.root / "fid.json"), "--out", str(w.unwritable)],
     "cannot write"),
    ("plots-binary", "vqgan.eval.plots", lambda w: ["curves", "--metrics", str(w.binary), "--out",
                                                   str(w.root / "p.png")], "cannot read metrics"),
    ("plots-data", "vqgan.eval.plots", lambda w: ["data-grid", "--data", str(w.missing), "--out",
                                                 str(w.root / "p.png")], "no such dataset folder"),
    ("weights-dir", "vqgan.weights", lambda w: ["--lpips", "--weights-dir", str(w.unwritable)], "cannot write"),
    ("coco-root", "vqgan.data.coco", lambda w: coco_prepare(w, root=w.missing), "must hold the official layout"),
    ("coco-config", "vqgan.data.coco", lambda w: coco_prepare(w, config='{"kind": "coco"}'), "resolution: required"),
    ("coco-out", "vqgan.data.coco", lambda w: coco_prepare(w, out=w.unwritable), "cannot write"),
    ("coco-download-datasets", "vqgan.data.coco",
     lambda w: ["download", "--config", "{}", "--datasets", "{x", "--out", str(w.root / "dl")], "--datasets: not valid"),
    ("atari-config", "atari_collect.__main__", lambda w: atari(w, config="{bad"), "--config"),
    ("atari-game", "atari_collect.__main__",
     lambda w: atari(w, config='{"kind": "atari", "resolution": 16, "games": ["Frogger2000"], "frames_per_game": 8}'),
     "Frogger2000"),
    ("atari-out", "atari_collect.__main__", lambda w: atari(w, out=w.unwritable), "cannot write"),
]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # runpy: 'vqgan.train.vqgan' found in sys.modules
@pytest.mark.parametrize("module, make_argv, says", [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
def test_a_bad_call_is_one_line_and_exit_code_2(w, module, make_argv, says, capsys):
    main = _main(module)
    argv = make_argv(w)
    rc = None
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2, f"exit code {rc}; stderr:\n{err}"
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and says in lines[0], err
    assert "Traceback" not in err
    assert not w.unwritable.exists()


def test_debug_shows_the_traceback(w, monkeypatch):
    from vqgan.train.vqgan import main

    monkeypatch.setenv("VQGAN_DEBUG", "0")  # restored afterwards: --debug sets it for child processes
    with pytest.raises(DatasetError, match="no such dataset folder"):
        main([*train_vqgan(w, data=w.missing), "--debug"])


def run_cli(*argv: str, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True, timeout=120, **kw)


def test_a_real_terminal_sees_one_line(w):
    proc = run_cli("-m", "vqgan.encode", *encode(w, model=w.root / "vqgan_corrupt"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error: ") and "vqgan_corrupt/model.safetensors" in proc.stderr
    proc = run_cli("-m", "vqgan.data.coco", *coco_prepare(w, root=w.missing))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "coco.root" in proc.stderr, proc.stderr


# ---------------------------------------------------------------------------------------------------------------
# COCO annotations: broken or hostile files are refused naming the file; nothing is written


def fake_root(tmp_path: Path, split: str, edit) -> Path:
    """A COCO root whose `split` annotations are `edit(text)` (a str or bytes); the other split and the images
    are the tiny COCO's own."""
    root = tmp_path / "root"
    (root / "annotations").mkdir(parents=True)
    for s in ("train", "val"):
        (root / f"{s}2017").symlink_to(TINY_COCO / f"{s}2017")
        text = (TINY_COCO / "annotations" / f"instances_{s}2017.json").read_text()
        data = edit(text) if s == split else text
        path = root / "annotations" / f"instances_{s}2017.json"
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return root


def edit_first_image(change):
    def edit(text):
        data = json.loads(text)
        change(data["images"][0])
        return json.dumps(data)
    return edit


ANNOTATION_FAULTS = [
    ("truncated", lambda t: t[: len(t) // 2], "not valid JSON"),
    ("empty", lambda t: "", "not valid JSON"),
    ("binary", lambda t: bytes(range(256)) * 8, "not valid JSON"),
    ("list", lambda t: json.dumps(json.loads(t)["images"]), "expected a JSON object"),
    ("no-width", edit_first_image(lambda r: r.pop("width")), "has no width"),
    ("absolute", edit_first_image(lambda r: r.update(file_name="/etc/hostname")), "'/etc/hostname' must be a relative"),
    ("climbing", edit_first_image(lambda r: r.update(file_name="../../../etc/hostname")), "no '..'"),
]


@pytest.mark.parametrize("edit, says", [f[1:] for f in ANNOTATION_FAULTS], ids=[f[0] for f in ANNOTATION_FAULTS])
def test_broken_or_hostile_val_annotations_are_refused_before_anything_is_written(tmp_path, capsys, edit, says):
    from vqgan.data.coco import main

    root = fake_root(tmp_path, "val", edit)
    with pytest.raises(SystemExit) as exit_:
        main(coco_prepare(SimpleNamespace(root=tmp_path), root=root, out=tmp_path / "out"))
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "instances_val2017.json" in err and says in err, err
    assert not (tmp_path / "out" / "train").exists(), "train/ was written although val/ could not be"
    assert [p.name for p in (tmp_path / "out").iterdir()] == []  # no temporary folder either


def test_download_refuses_a_file_name_outside_the_split_folder_before_fetching(tmp_path):
    from vqgan.data.coco import CocoError, download_coco

    root = fake_root(tmp_path, "train", edit_first_image(lambda r: r.update(file_name="../../evil.sh")))
    datasets = {"c": {"kind": "coco", "resolution": 16, "train_images": 100, "val_images": 2, "seed": None}}
    # base_url: a port nothing listens on; the refusal must come before any request
    with pytest.raises(CocoError, match=r"instances_train2017\.json: images\[0\].*'\.\./\.\./evil\.sh'"):
        download_coco({"download": {"base_url": "http://127.0.0.1:9", "retries": 1}}, datasets, root, progress=False)
    assert not (tmp_path / "evil.sh").exists() and not (root / "train2017" / ".." / ".." / "evil.sh").exists()


# ---------------------------------------------------------------------------------------------------------------
# what a killed job leaves behind


def test_a_killed_dataset_write_is_cleaned_up_by_the_next_run(tmp_path):
    out = tmp_path / "ds"
    ready = tmp_path / "ready"
    code = ("import sys, time, pathlib; from vqgan.io.files import atomic_dir\n"
            "with atomic_dir(sys.argv[1]) as tmp:\n"
            "    (tmp / 'images.npy').write_bytes(b'x' * 1_000_000)\n"
            "    pathlib.Path(sys.argv[2]).touch(); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(out / "train"), str(ready)],
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.time() + 30
    while not ready.exists():
        assert proc.poll() is None and time.time() < deadline, "the writer did not start"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    leftovers = [p.name for p in out.iterdir()]
    assert len(leftovers) == 1 and leftovers[0].startswith(".train.tmp-"), leftovers  # what SIGKILL leaves
    removed = prepare_splits(out)  # what collect_atari and prepare_coco call first
    assert [p.name for p in removed] == leftovers and list(out.iterdir()) == []


def test_new_folders_and_files_follow_the_umask(tmp_path):
    old = os.umask(0o002)  # a shared group project
    try:
        write_split(tmp_path / "train", np.zeros((2, 4, 4, 3), np.uint8), pd.DataFrame({"i": [0, 1]}), {})
        with atomic_dir(tmp_path / "samples") as tmp:
            (tmp / "a.png").write_bytes(b"")
        write_json_atomic(tmp_path / "x.json", {})
    finally:
        os.umask(old)
    for path, mode in ((tmp_path / "train", 0o775), (tmp_path / "train" / "manifest.json", 0o664),
                       (tmp_path / "samples", 0o775), (tmp_path / "x.json", 0o664)):
        assert path.stat().st_mode & 0o777 == mode, f"{path}: {oct(path.stat().st_mode & 0o777)}"


# ---------------------------------------------------------------------------------------------------------------
# resume


@pytest.fixture
def accelerator():
    from accelerate import Accelerator

    return Accelerator(cpu=True)


def test_a_corrupt_newest_checkpoint_is_reported_and_the_previous_one_used(tmp_path, accelerator, capsys):
    from vqgan.train.loop import CheckpointManager

    model = torch.nn.Linear(3, 3)
    opt = torch.optim.Adam(model.parameters())
    model, opt = accelerator.prepare(model, opt)
    ckpts = CheckpointManager(tmp_path, keep=3)
    with torch.no_grad():
        model.weight.fill_(2.0)
    ckpts.save(accelerator, 2)
    with torch.no_grad():
        model.weight.fill_(4.0)
    ckpts.save(accelerator, 4)
    newest = tmp_path / "checkpoint-4" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:50])  # a full disk or a bad copy
    (tmp_path / ".checkpoint-6.tmp-save").mkdir()  # a save that a kill interrupted

    resumed = ckpts.resume(accelerator)
    assert resumed.step == 2 and resumed.path == tmp_path / "checkpoint-2"
    assert torch.all(model.weight == 2.0)
    out = capsys.readouterr().out
    assert "cannot load checkpoint" in out and str(tmp_path / "checkpoint-4") in out and "SafetensorError" in out
    assert not (tmp_path / ".checkpoint-6.tmp-save").exists()

    older = tmp_path / "checkpoint-2" / "optimizer.bin"
    older.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"checkpoint-4.*checkpoint-2.*Delete"):
        ckpts.resume(accelerator)


def test_the_state_key_ignores_timings_and_old_state_folders_are_pruned(tmp_path):
    from vqgan.train.loop import prune_state_dirs

    first = {"source": "ale", "count": 10, "created_unix": 1, "per_game": {"Pong": {"cpu_seconds": 3.1,
             "wall_seconds_plain_games": 2.0, "lineages": [{"seconds": 1.0, "steps_per_second": 9.0, "cells": 4}]}}}
    again = json.loads(json.dumps(first).replace("3.1", "3.3").replace('"created_unix": 1', '"created_unix": 2'))
    again["per_game"]["Pong"]["lineages"][0].update(seconds=5.0, steps_per_second=2.0)
    cfg = {"train": {"lr": 1e-4}}
    assert config_hash(cfg, data_identity(again)) == config_hash(cfg, data_identity(first))
    other = json.loads(json.dumps(first))
    other["per_game"]["Pong"]["lineages"][0]["cells"] = 5
    assert config_hash(cfg, data_identity(other)) != config_hash(cfg, data_identity(first))

    names = ["0123456789ab", "ba9876543210", "keepme-notes"]
    for n in names:
        (tmp_path / n).mkdir()
    removed = prune_state_dirs(tmp_path, keep=tmp_path / names[1])
    assert [p.name for p in removed] == [names[0]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[1:])


def test_the_transformer_state_key_includes_the_codes(tmp_path, w):
    """A VQGAN retrained with another config writes the same codes.json; its new codes must start a new
    transformer state, not finish (and re-export) the old one."""
    from vqgan.train import transformer as tt

    cfg = json.dumps({"model": {"n_layer": 1, "n_head": 2, "n_embd": 16},
                      "train": {"steps": 1, "batch_size": 4, "warmup_steps": 0, "eval_every": 1}})
    other = tmp_path / "codes"
    shutil.copytree(w.codes, other)
    np.save(other / "train.npy", (np.load(other / "train.npy") + 1) % 32)
    for codes in (w.codes, other):
        assert tt.main(["--config", cfg, "--codes", str(codes), "--out", str(tmp_path / "out"),
                        "--state-dir", str(tmp_path / "state")]) == 0
        assert json.loads((tmp_path / "out" / "train.json").read_text())["resumed_from_step"] == 0
    assert len(list((tmp_path / "state").iterdir())) == 1, "the first run's state should have been pruned"


# ---------------------------------------------------------------------------------------------------------------
# fail fast


@pytest.mark.parametrize("cores", ["all", "8"])  # as written; and more cores than the download jobs take
def test_the_readmes_first_command_offline_stops_within_30_s_saying_why(tmp_path, cores):
    """The README's main command in a fresh clone on a machine without network (every HTTP(S) request goes to a
    proxy port nothing listens on): the COCO download fails at once, its one line reaches the terminal, and no
    long job was started beside it, which Snakemake would let finish (minutes) before stopping."""
    command = readme_commands()[0].split("&&")[-1].split()
    assert command[:3] == ["snakemake", "--cores", "all"], command
    command[2] = cores
    clone = repo_copy(tmp_path / "clone")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        proxy = f"http://127.0.0.1:{s.getsockname()[1]}"
    offline = snakemake_env(http_proxy=proxy, https_proxy=proxy, HTTP_PROXY=proxy, HTTPS_PROXY=proxy, no_proxy="",
                            NO_PROXY="")
    t0 = time.perf_counter()
    # its own process group: if the run does not stop, the kill below reaches the jobs it started too
    proc = subprocess.Popen([str(BIN / "snakemake"), *command[1:]], cwd=clone, env=offline, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        terminal, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        terminal, _ = proc.communicate()
    seconds = time.perf_counter() - t0
    assert proc.returncode != 0, terminal[-3000:]
    assert re.search(r"^error: could not download http://images\.cocodataset\.org/\S+ .*set `coco\.root`", terminal,
                     re.M), terminal[-3000:]
    started = re.findall(r"^(?:local)?rule (\w+):$", terminal, re.M)
    assert set(started) <= {"download_coco", "fetch_weights"}, f"started beside the download: {started}"
    # the last lines: what failed and what to type next, once, below Snakemake's own closing lines
    last = terminal[terminal.rindex("At least one job did not complete successfully."):]
    assert re.search(r"^download_coco failed \(log: logs/download_coco\.log\): could not download", last, re.M), last
    assert f"snakemake --cores {cores} results/fid_table.csv --config coco='{{root: /path/to/coco}}'" in last, last
    assert re.search(r"^    snakemake --cores all .*results/fid/atari64/ours\.json", last, re.M), last
    assert "Traceback" not in last and "RuleException" not in last and "Shell command" not in last, last
    assert seconds < 30, f"the run took {seconds:.0f} s to stop"
    print(f"--cores {cores}: stopped after {seconds:.1f} s; jobs started: {started}")
