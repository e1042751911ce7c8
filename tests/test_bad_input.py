"""Bad input, third round (issue #28): outputs never overlap inputs, readers check what writers check, edge data
is data, and messages name the flag or the file.

The commands run in-process through their `main(argv)`, as in tests/test_faults.py.
"""
from __future__ import annotations

import importlib
import json
import os
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import write_tiny_stage

from vqgan.data.dataset import write_split

torch.set_num_threads(1)


def run_main(module: str, argv: list[str], capsys) -> tuple[int, str]:
    """(exit code, the `error:` lines on stderr) of a command run in-process."""
    try:
        rc = importlib.import_module(module).main(argv) or 0
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    return rc, [line for line in err.splitlines() if "error:" in line]


def snapshot(path: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under `path` (or `path` itself): its bytes and mtime."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p): (p.read_bytes(), p.stat().st_mtime_ns) for p in files}


@pytest.fixture
def w(tmp_path) -> SimpleNamespace:
    """A 16 px two-class dataset, a tiny VQGAN and GPT on its codes, and small files the report stages read."""
    write_tiny_stage(tmp_path)
    codes = tmp_path / "codes"
    (tmp_path / "metrics.csv").write_text("step,loss\n1,0.5\n2,0.4\n")
    (tmp_path / "fid.json").write_text(json.dumps({"dataset": "x", "fid": 1.0}))
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "section.yaml").write_text("{}\n")
    return SimpleNamespace(root=tmp_path, data=tmp_path / "data", vqgan=tmp_path / "vqgan", gpt=tmp_path / "gpt",
                           codes=codes, cfg=tmp_path / "cfg")


def recon_argv(w, **out) -> list[str]:
    out = {"out_json": w.root / "r.json", "out_png": w.root / "r.png", **out}
    argv = ["--model", str(w.vqgan), "--data", str(w.data / "val"), "--train-data", str(w.data / "train"),
            "--out-json", str(out["out_json"]), "--out-png", str(out["out_png"]), "--device", "cpu",
            "--config", '{"lpips": false}']
    return argv + (["--recon-dir", str(out["recon_dir"])] if "recon_dir" in out else [])


def sample_argv(w, out) -> list[str]:
    return ["--config", '{"n_per_class": 1}', "--transformer", str(w.gpt), "--vqgan", str(w.vqgan),
            "--out", str(out), "--device", "cpu"]


# --- the commands that destroyed an input and exited 0 ---------------------------------------------------------

def assert_refused(rc, lines, out, inp):
    assert rc == 2, f"exit code {rc}: {lines}"
    assert len(lines) == 1 and "would destroy that input" in lines[0], lines
    assert str(out) in lines[0] and str(inp) in lines[0], lines


def test_sample_refuses_to_write_its_samples_over_the_vqgan_folder(w, capsys):
    before = snapshot(w.vqgan)
    rc, lines = run_main("vqgan.sample", sample_argv(w, out=w.vqgan), capsys)
    assert_refused(rc, lines, w.vqgan, w.vqgan / "model.safetensors")
    assert snapshot(w.vqgan) == before


def test_eval_refuses_a_recon_dir_that_is_the_val_split(w, capsys):
    before = snapshot(w.data / "val")
    rc, lines = run_main("vqgan.eval.recon", recon_argv(w, recon_dir=w.data / "val"), capsys)
    assert_refused(rc, lines, w.data / "val", w.data / "val")
    assert snapshot(w.data / "val") == before


@pytest.mark.parametrize("flag, name", [("out_png", "model.safetensors"), ("out_json", "config.json")])
def test_eval_refuses_to_write_its_report_over_the_models_own_files(w, capsys, flag, name):
    before = snapshot(w.vqgan)
    rc, lines = run_main("vqgan.eval.recon", recon_argv(w, **{flag: w.vqgan / name}), capsys)
    assert_refused(rc, lines, w.vqgan / name, w.vqgan / name)
    assert snapshot(w.vqgan) == before


@pytest.mark.parametrize("module, make_argv", [
    ("vqgan.sample", lambda w, out: sample_argv(w, out)),
    ("vqgan.eval.recon", lambda w, out: recon_argv(w, recon_dir=out)),
])
def test_a_folder_output_that_is_a_file_fails_before_any_work(w, capsys, monkeypatch, module, make_argv):
    """A file where the samples' (or reconstructions') folder goes used to fail only after all the work."""
    out = w.root / "taken"
    out.write_text("a file of the user's\n")
    mod = importlib.import_module(module)
    monkeypatch.setattr(mod, "load_vqgan", lambda *a, **k: pytest.fail("the model was loaded before the check"))
    rc, lines = run_main(module, make_argv(w, out), capsys)
    assert rc == 2 and len(lines) == 1 and f"cannot write {out}: a file is there" in lines[0], lines
    assert out.read_text() == "a file of the user's\n"


# --- every command: an output that is, contains or lies inside an input is refused before anything is read ------

def _weights_case(w):
    """vqgan.weights: its output file is a symlink to the VGG16 file it would read (resolved, they are one)."""
    wd = w.root / "wd"
    wd.mkdir(exist_ok=True)
    (wd / "vgg16-397923af.pth").write_bytes(b"not really weights")
    if not (wd / "vgg16_features.safetensors").is_symlink():
        os.symlink("vgg16-397923af.pth", wd / "vgg16_features.safetensors")
    return ["--lpips", "--no-download", "--weights-dir", str(wd)], wd / "vgg16_features.safetensors", \
        wd / "vgg16-397923af.pth"


def _coco_root(w):
    import shutil

    from conftest import TINY_COCO

    root = w.root / "coco"
    if not root.exists():
        shutil.copytree(TINY_COCO, root)
    return root


# (case id, module, lambda w: (argv, the output named, the input that must stay untouched))
OVERLAPS = [
    ("sample-out-is-transformer", "vqgan.sample", lambda w: (sample_argv(w, w.gpt), w.gpt, w.gpt)),
    ("encode-out-is-model", "vqgan.encode",
     lambda w: (["--model", str(w.vqgan), "--data", str(w.data), "--out", str(w.vqgan), "--device", "cpu"],
                w.vqgan, w.vqgan)),
    ("encode-out-in-data", "vqgan.encode",
     lambda w: (["--model", str(w.vqgan), "--data", str(w.data), "--out", str(w.data / "train" / "c"), "--device",
                 "cpu"], w.data / "train" / "c", w.data)),
    ("train-out-is-data", "vqgan.train.vqgan",
     lambda w: (["--config", "{}", "--data", str(w.data / "train"), "--out", str(w.data / "train"), "--state-dir",
                 str(w.root / "s")], w.data / "train", w.data / "train")),
    ("train-state-in-data", "vqgan.train.vqgan",
     lambda w: (["--config", "{}", "--data", str(w.data / "train"), "--out", str(w.root / "o"), "--state-dir",
                 str(w.data / "train" / "state")], w.data / "train" / "state", w.data / "train")),
    ("train-out-has-config", "vqgan.train.vqgan",
     lambda w: (["--config", str(w.cfg / "section.yaml"), "--data", str(w.data / "train"), "--out", str(w.cfg),
                 "--state-dir", str(w.root / "s")], w.cfg, w.cfg / "section.yaml")),
    ("gpt-out-is-codes", "vqgan.train.transformer",
     lambda w: (["--config", "{}", "--codes", str(w.codes), "--out", str(w.codes), "--state-dir", str(w.root / "s")],
                w.codes, w.codes)),
    ("eval-json-is-train", "vqgan.eval.recon",
     lambda w: (recon_argv(w, out_json=w.data / "train" / "manifest.json"), w.data / "train" / "manifest.json",
                w.data / "train")),
    ("fid-out-in-real", "vqgan.eval.fid",
     lambda w: (["--real", str(w.data / "val"), "--gen", str(w.root / "gen"), "--out",
                 str(w.data / "val" / "manifest.json"), "--no-download"], w.data / "val" / "manifest.json",
                w.data / "val")),
    ("fid-cache-is-train", "vqgan.eval.fid",
     lambda w: (["--real", str(w.data / "val"), "--train", str(w.data / "train"), "--recon", str(w.root / "gen"),
                 "--out", str(w.root / "f.json"), "--cache-dir", str(w.data / "train"), "--no-download"],
                w.data / "train", w.data / "train")),
    ("table-out-is-fid", "vqgan.eval.table",
     lambda w: (["--fid", str(w.root / "fid.json"), "--out", str(w.root / "fid.json")], w.root / "fid.json",
                w.root / "fid.json")),
    ("table-markdown-in-data", "vqgan.eval.table",
     lambda w: (["--data", str(w.data / "val"), "--out", str(w.root / "t.csv"), "--markdown",
                 str(w.data / "val" / "meta.csv")], w.data / "val" / "meta.csv", w.data / "val")),
    ("plots-curves", "vqgan.eval.plots",
     lambda w: (["curves", "--metrics", str(w.root / "metrics.csv"), "--out", str(w.root / "metrics.csv")],
                w.root / "metrics.csv", w.root / "metrics.csv")),
    ("plots-data-grid", "vqgan.eval.plots",
     lambda w: (["data-grid", "--data", str(w.data / "train"), "--out", str(w.data / "train" / "images.npy")],
                w.data / "train" / "images.npy", w.data / "train")),
    ("coverage", "atari_collect.coverage",
     lambda w: (["--data", str(w.data), "--out", str(w.data / "train" / "meta.csv")], w.data / "train" / "meta.csv",
                w.data)),
    ("atari-out-has-config", "atari_collect.__main__",
     lambda w: (["--config", str(w.cfg / "section.yaml"), "--out", str(w.cfg), "--no-progress"], w.cfg,
                w.cfg / "section.yaml")),
    ("coco-prepare-in-root", "vqgan.data.coco",
     lambda w: (["prepare", "--config", '{"kind": "coco", "resolution": 16, "train_images": 2, "val_images": 2}',
                 "--root", str(_coco_root(w)), "--out", str(_coco_root(w) / "train2017"), "--workers", "1",
                 "--no-progress"], _coco_root(w) / "train2017", _coco_root(w))),
    ("coco-download-has-config", "vqgan.data.coco",
     lambda w: (["download", "--config", str(w.cfg / "section.yaml"), "--datasets", "{}", "--out", str(w.cfg),
                 "--no-progress"], w.cfg, w.cfg / "section.yaml")),
    ("weights-symlink", "vqgan.weights", _weights_case),
]


@pytest.mark.parametrize("module, case", [c[1:] for c in OVERLAPS], ids=[c[0] for c in OVERLAPS])
def test_every_command_refuses_an_output_overlapping_an_input(w, capsys, module, case):
    argv, out, inp = case(w)
    (w.root / "gen").mkdir(exist_ok=True)
    before = snapshot(inp)
    rc, lines = run_main(module, argv, capsys)
    assert_refused(rc, lines, out, inp)
    assert snapshot(inp) == before


def test_a_symlinked_or_relative_output_is_resolved_before_comparing(w, capsys, monkeypatch):
    os.symlink(w.vqgan, w.root / "link")
    monkeypatch.chdir(w.root)
    before = snapshot(w.vqgan)
    rc, lines = run_main("vqgan.sample", sample_argv(w, out="link"), capsys)
    assert_refused(rc, lines, "link", w.vqgan)
    rc, lines = run_main("vqgan.eval.recon", recon_argv(w, out_png=Path("vqgan/../vqgan/model.safetensors")), capsys)
    assert_refused(rc, lines, "vqgan/../vqgan/model.safetensors", w.vqgan)
    assert snapshot(w.vqgan) == before


def test_outputs_beside_or_below_an_input_folder_are_fine(tmp_path):
    from vqgan.io.files import refuse_overlap

    model = tmp_path / "vqgan"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"w")
    # the workflow's own layout: recon.json beside the model's files, the recon/ folder below the model folder
    refuse_overlap({"--out-json": model / "recon.json", "--recon-dir": model / "recon"},
                   {"--model": [model / "model.safetensors", model / "config.json"], "--config": '{"a": 1}'})


# --- readers check what writers check ---------------------------------------------------------------------------

def atari_split(path: Path, n: int = 4, objects: pd.DataFrame | None = None) -> Path:
    """A two-game split as atari-collect writes it: `game` and `label` columns, object truth for Pong."""
    games = ["Pong", "Breakout"]
    meta = pd.DataFrame({"source_id": np.arange(n), "game": [games[i % 2] for i in range(n)], "label": np.arange(n) % 2})
    truth = {"games": ["Pong"], "classes": {"Pong": ["player", "enemy", "ball"]}, "file": "objects.csv"}
    if objects is None:
        objects = pd.DataFrame({"frame": [0], "class": ["ball"], "id": [0], "x0": [1.0], "y0": [1.0], "x1": [3.0],
                                "y1": [3.0], "visible": [1]})
    return write_split(path, np.zeros((n, 16, 16, 3), np.uint8), meta,
                       {"source": "ale", "classes": games, "object_truth": truth}, objects)


def edit_split(path: Path, what: str) -> str:
    """Break one file of a written split the way a hand edit or another tool would; -> the file's name."""
    if what == "non-square":
        np.save(path / "images.npy", np.zeros((4, 16, 12, 3), np.uint8))
        return "images.npy"
    if what == "count-string":
        manifest = json.loads((path / "manifest.json").read_text())
        (path / "manifest.json").write_text(json.dumps({**manifest, "count": "4"}))
        return "manifest.json"
    if what == "label-game":
        meta = pd.read_csv(path / "meta.csv")
        meta["game"] = meta["game"][::-1].to_numpy()
        meta.to_csv(path / "meta.csv", index=False)
        return "meta.csv"
    if what == "object-class":
        objects = pd.read_csv(path / "objects.csv")
        objects["class"] = "alien"
        objects.to_csv(path / "objects.csv", index=False)
        return "objects.csv"
    raise AssertionError(what)


BROKEN_SPLITS = [("non-square", "images must be square, got 16x12"),
                 ("count-string", "'count' must be an integer (the number of images), got '4' (str)"),
                 ("label-game", "has label 0 ('Pong') but game 'Breakout'"),
                 ("object-class", "class 'alien' on frame 0 (Pong) is not one of Pong's object classes")]


@pytest.mark.parametrize("what, says", BROKEN_SPLITS, ids=[b[0] for b in BROKEN_SPLITS])
def test_a_split_read_is_checked_as_it_was_written(tmp_path, what, says):
    from vqgan.data.dataset import DatasetError, read_split

    name = edit_split(atari_split(tmp_path / "val"), what)
    with pytest.raises(DatasetError, match=re.escape(says)) as e:
        read_split(tmp_path / "val")
    assert str(e.value).startswith(str(tmp_path / "val" / name))


def test_a_split_is_refused_by_its_writer_for_the_same_reasons(tmp_path):
    from vqgan.data.dataset import DatasetError

    with pytest.raises(DatasetError, match="class 'alien' on frame 0"):
        atari_split(tmp_path / "a", objects=pd.DataFrame({"frame": [0], "class": ["alien"], "id": [0], "x0": [1.0],
                                                          "y0": [1.0], "x1": [3.0], "y1": [3.0]}))
    meta = pd.DataFrame({"game": ["Pong", "Pong"], "label": [0, 1]})
    with pytest.raises(DatasetError, match=re.escape("row 3 has label 1 ('Breakout') but game 'Pong'")):
        write_split(tmp_path / "b", np.zeros((2, 8, 8, 3), np.uint8), meta, {"classes": ["Pong", "Breakout"]})
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_the_streaming_writer_checks_object_classes_too(tmp_path):
    from vqgan.data.dataset import DatasetError, open_split

    meta = pd.DataFrame({"game": ["Pong"], "label": [0]})
    with pytest.raises(DatasetError, match="class 'alien'"):
        with open_split(tmp_path / "s", 1, 8) as w:
            w.write(np.zeros((1, 8, 8, 3), np.uint8))
            w.write_objects(pd.DataFrame({"frame": [0], "class": ["alien"], "id": [0], "x0": [1.0], "y0": [1.0],
                                          "x1": [3.0], "y1": [3.0]}))
            w.finish(meta, {"classes": ["Pong"], "object_truth": {"classes": {"Pong": ["ball"]}}})
    assert not (tmp_path / "s").exists()


def test_eval_refuses_a_non_square_split_naming_its_images_file(w, capsys):
    edit_split(w.data / "val", "non-square")
    rc, lines = run_main("vqgan.eval.recon", recon_argv(w), capsys)
    assert rc == 2 and len(lines) == 1 and f"{w.data / 'val' / 'images.npy'}: images must be square" in lines[0]


@pytest.mark.parametrize("edit, says", [
    ("code-range", "train.npy: values span [0, 40], outside 0..31 (codes.json's n_codes = 32)"),
    ("grid", "train.npy: expected (N, h, w) integer code grids with [h, w] = codes.json's grid [4, 4], got (8, 2, 8)"),
    ("label-range", "train_labels.npy: values span [0, 5], outside 0..1 (codes.json's n_classes = 2)"),
], ids=["code-range", "grid", "label-range"])
def test_codes_are_checked_against_codes_json_on_read(w, capsys, edit, says):
    codes = np.load(w.codes / "train.npy")
    if edit == "code-range":
        codes[0, 0, 0] = 40
    elif edit == "grid":
        codes = codes.reshape(8, 2, 8)
    else:
        np.save(w.codes / "train_labels.npy", np.array([0, 1, 0, 1, 0, 1, 0, 5]))
    np.save(w.codes / "train.npy", codes)
    argv = ["--config", '{"model": {"n_layer": 1, "n_head": 2, "n_embd": 16}, "train": {"batch_size": 4}}',
            "--codes", str(w.codes), "--out", str(w.root / "o_gpt"), "--state-dir", str(w.root / "s_gpt")]
    rc, lines = run_main("vqgan.train.transformer", argv, capsys)
    assert rc == 2 and len(lines) == 1 and says in lines[0], lines


def _screen(rng) -> np.ndarray:
    return rng.integers(0, 256, (210, 160, 3), dtype=np.uint8)


@pytest.mark.parametrize("fault, says", [("jpeg", "is a JPEG file named .png"),
                                         ("truncated", "not a readable PNG (Truncated File Read)")])
def test_eval_set_images_are_checked_by_content(tmp_path, fault, says):
    from PIL import Image

    from vqgan.eval.eval_sets import EvalSetError, check_eval_sets

    rng = np.random.default_rng(0)
    folder = tmp_path / "frames"
    folder.mkdir()
    Image.fromarray(_screen(rng)).save(folder / "a.png")
    bad = folder / "b.png"
    if fault == "jpeg":
        Image.fromarray(_screen(rng)).save(bad, format="JPEG")
    else:
        Image.fromarray(_screen(rng)).save(bad)
        bad.write_bytes(bad.read_bytes()[:5000])
    with pytest.raises(EvalSetError, match=re.escape(f"{bad}")) as e:
        check_eval_sets({"s": {"path": str(folder), "game": "Pong"}}, ["Pong"])
    assert says in str(e.value)


# --- edge data is data ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("frames", ["black", "noise"])
def test_an_eval_set_without_objects_reports_no_objects_found(w, capsys, frames):
    from PIL import Image

    for split in ("train", "val"):
        atari_split(w.root / "atari" / split)
    folder = w.root / "frames"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        screen = np.zeros((210, 160, 3), np.uint8) if frames == "black" else _screen(rng)
        Image.fromarray(screen).save(folder / f"{i}.png")
    argv = ["--model", str(w.vqgan), "--data", str(w.root / "atari" / "val"), "--train-data",
            str(w.root / "atari" / "train"), "--out-json", str(w.root / "r.json"), "--out-png", str(w.root / "r.png"),
            "--device", "cpu", "--config", '{"lpips": false}',
            "--eval-sets", json.dumps({"empty": {"path": str(folder), "game": "Pong"}})]
    rc, lines = run_main("vqgan.eval.recon", argv, capsys)
    assert rc == 0, lines
    e = json.loads((w.root / "r.json").read_text())["eval_sets"]["empty"]
    assert e["object_recall"] is None and e["n_objects"] is None
    assert e["objects"]["unavailable_reason"].startswith("no objects found in any of the 3 frames")
    rc, lines = run_main("vqgan.eval.table", ["--recon", str(w.root / "r.json"), "--out", str(w.root / "t.csv")],
                         capsys)
    assert rc == 0, lines
    table = pd.read_csv(w.root / "t.csv")
    notes = table.loc[table["subset"].astype(str).str.contains("empty"), "notes"].tolist()
    assert len(notes) == 1 and "object recall: no objects found in any of the 3 frames" in notes[0], table


# --- messages ---------------------------------------------------------------------------------------------------

def test_a_training_job_ended_by_sigterm_says_so_and_how_to_resume(w):
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO

    config = json.dumps({"model": {"ch": 8, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [],
                                   "z_channels": 8}, "quantizer": {"n_codes": 16, "code_dim": 4},
                         "loss": {"perceptual_weight": 0.0, "disc_ch": 8, "disc_layers": 2},
                         "train": {"steps": 100000, "batch_size": 4, "checkpoint_every": 2}})
    state = w.root / "state"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "vqgan.train.vqgan", "--config", config, "--data",
                             str(w.data / "train"), "--out", str(w.root / "o"), "--state-dir", str(state)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not list(state.glob("*/checkpoint-2/train_state.json")) and time.time() < deadline:
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    newest = sorted(state.glob("*/checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[-1]
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "terminated by SIGTERM during step" in err, err[-2000:]
    assert f"rerunning the same command resumes from the newest checkpoint ({newest})" in err, err[-2000:]


FLAG_MISTAKES = [
    ("encode-batch-0", "vqgan.encode", lambda w: ["--model", str(w.vqgan), "--data", str(w.data), "--out",
                                                 str(w.root / "c"), "--batch-size", "0"],
     "argument --batch-size: '0': give an integer >= 1"),
    ("plots-rows-0", "vqgan.eval.plots", lambda w: ["data-grid", "--data", str(w.data / "train"), "--out",
                                                   str(w.root / "p.png"), "--rows", "0"],
     "argument --rows: '0': give an integer >= 1"),
    ("encode-device", "vqgan.encode", lambda w: ["--model", str(w.vqgan), "--data", str(w.data), "--out",
                                                str(w.root / "c"), "--device", "gpu"],
     "argument --device: unknown device 'gpu'; use one of cpu, cuda, cuda:N"),
    ("sample-device", "vqgan.sample", lambda w: [*sample_argv(w, w.root / "s")[:-1], "gpu0"],
     "argument --device: unknown device 'gpu0'; use one of cpu, cuda, cuda:N"),
    ("eval-device", "vqgan.eval.recon", lambda w: [*recon_argv(w), "--device", "cuda0"],
     "argument --device: unknown device 'cuda0'; use one of cpu, cuda, cuda:N"),
    ("fid-device", "vqgan.eval.fid", lambda w: ["--real", str(w.data / "val"), "--out", str(w.root / "f.json"),
                                               "--device", "GPU"],
     "argument --device: unknown device 'GPU'; use one of cpu, cuda, cuda:N"),
]


@pytest.mark.parametrize("module, make_argv, says", [c[1:] for c in FLAG_MISTAKES], ids=[c[0] for c in FLAG_MISTAKES])
def test_a_bad_flag_value_is_one_line_naming_the_flag(w, capsys, module, make_argv, says):
    rc, lines = run_main(module, make_argv(w), capsys)
    assert rc == 2 and len(lines) == 1 and says in lines[0], lines
