"""External evaluation sets: folders of raw ALE screens rendered here from ale-py, checked before any job,
preprocessed like collected frames, scored by eval_vqgan with objects found from pixels, and shown in the table."""
from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, TEST_CONFIG, TINY_COCO, run_snakemake
from PIL import Image

from atari_collect import objects as ob
from atari_collect.__main__ import main as collect_main
from vqgan.data import atari_pixels as px
from vqgan.data.atari_screen import crop_resize
from vqgan.data.dataset import read_split
from vqgan.eval import table as T
from vqgan.eval.eval_sets import EvalSetError, check_eval_sets, pixel_objects, preprocess
from vqgan.eval.recon import EvalConfig, evaluate
from vqgan.eval.recon import main as recon_main


def render(folder: Path, game: str, n: int, seed: int = 0, every: int = 10) -> list[np.ndarray]:
    """Save n raw screens of random play (every `every`-th step) as PNG, as a user would (ale.getScreenRGB())."""
    folder.mkdir(parents=True, exist_ok=True)
    screens = [s for t, (s, _) in enumerate(ob.frames_with_ram(game, n * every, seed)) if t % every == every - 1]
    for i, s in enumerate(screens):
        Image.fromarray(s).save(folder / f"{i:04d}.png")
    return screens


def iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix * iy
    return ix * iy / union


@pytest.mark.parametrize("game", ["ms_pacman", "pong", "breakout"])
def test_pixel_detector_agrees_with_the_ram_rules(game):
    """Objects found from colours alone match the RAM truth's drawn objects (IoU >= 0.5): precision >= 0.97 for
    every class it reports; recall >= 0.95, except Ms. Pac-Man's ghosts (frightened ones are not found: >= 0.75)
    and what it never reports (the fruit)."""
    stats = defaultdict(lambda: np.zeros(4, int))  # truth, found, reported, right
    for screen, ram in ob.frames_with_ram(game, 500, seed=2):
        truth = {(o.cls, o.id): o.box for o in ob.detect_objects(game, ram, screen) if o.visible}
        found = {(o.cls, o.id): o.box for o in px.detect_objects_from_pixels(game, screen)}
        for k, box in truth.items():
            stats[k[0]] += (1, k in found and iou(box, found[k]) >= 0.5, 0, 0)
        for k, box in found.items():
            stats[k[0]] += (0, 0, 1, k in truth and iou(box, truth[k]) >= 0.5)
    reported = {c for c, s in stats.items() if s[2]}
    assert reported == {"ms_pacman": {"player", "ghost"}, "pong": {"player", "enemy", "ball"},
                        "breakout": {"paddle", "ball", "brick"}}[game]
    for cls in reported:
        truth, found, n, right = stats[cls]
        assert right / n >= 0.97, f"{game} {cls}: {n - right} of {n} detections match no drawn object"
        assert found / truth >= (0.75 if cls == "ghost" else 0.95), f"{game} {cls}: found {found} of {truth}"


def test_bad_folders_are_rejected_naming_the_key_and_file(tmp_path):
    render(tmp_path / "ok", "pong", 2)
    (tmp_path / "empty").mkdir()
    (tmp_path / "small").mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "small" / "a.png")
    games = ["Pong", "MsPacman"]
    cases = [
        ({"x": {"path": str(tmp_path / "nope"), "game": "Pong"}}, r"ds\.eval_sets\.x\.path = .*nope.*no such folder"),
        ({"x": {"path": str(tmp_path / "empty"), "game": "Pong"}}, r"ds\.eval_sets\.x\.path = .*no \.png files"),
        ({"x": {"path": str(tmp_path / "small"), "game": "Pong"}}, r"ds\.eval_sets\.x: .*a\.png is 64x64 RGB; raw"),
        ({"x": {"path": str(tmp_path / "ok"), "game": "Pongg"}}, r"ds\.eval_sets\.x\.game: .*unknown Atari game"),
        ({"x": {"path": str(tmp_path / "ok"), "game": "Breakout"}}, r"'Breakout': not one of this dataset's games"),
        ({"x y": {"path": str(tmp_path / "ok"), "game": "Pong"}}, r"letters, digits and _ only"),
        ({"x": {"path": str(tmp_path / "ok")}}, r"must be \{path: FOLDER, game: GAME\}"),
    ]
    for raw, pattern in cases:
        with pytest.raises(EvalSetError, match=pattern):
            check_eval_sets(raw, games, "ds.eval_sets")
    [s] = check_eval_sets({"x": {"path": "ok", "game": "pong"}}, games, "ds.eval_sets", root=tmp_path)
    assert (s.game, s.label, len(s.files)) == ("Pong", 0, 2)


def test_frames_are_preprocessed_like_collected_ones_and_identity_keeps_every_object(tmp_path):
    screens = render(tmp_path / "pacman", "ms_pacman", 12, seed=1, every=30)
    [s] = check_eval_sets({"p": {"path": str(tmp_path / "pacman"), "game": "MsPacman"}}, ["MsPacman"])
    from vqgan.eval.eval_sets import native_screens

    loaded = native_screens(s.files)
    assert np.array_equal(loaded, np.stack(screens))
    crop = [0, 0, 172, 160]
    frames = preprocess(loaded, 32, crop)
    assert np.array_equal(frames[3], crop_resize(screens[3], 32, crop))
    objects, why = pixel_objects("MsPacman", loaded, 32, crop)
    assert why is None and set(objects["class"]) <= {"player", "ghost"} and (objects["frame"] == 0).any()
    assert (objects[["x1", "y1"]].to_numpy() <= 32).all()

    class Identity:
        class cfg:
            n_codes = 4

        def encode_to_indices(self, x):
            self.x = x
            return torch.zeros(x.shape[0], 2, 2, dtype=torch.long)

        def decode_indices(self, idx):
            return self.x

    train = np.repeat(frames[:1], 5, axis=0)  # a "training split" of one screen: its objects are the median's
    train[:] = np.median(frames, axis=0).astype(np.uint8)
    m, _ = evaluate(Identity(), frames, train, EvalConfig.from_dict(dict(grid_images=0)), objects=objects)
    assert m["object_recall"] == 1.0 and m["n_objects_scored"] > 12
    assert pixel_objects("Seaquest", loaded, 32, crop) == (None, "not available: no pixel rules for Seaquest "
                                                           "(vqgan.data.atari_pixels.PIXEL_RULES)")


def test_eval_cli_scores_an_external_folder_and_the_table_shows_it(tmp_path):
    from vqgan.config.build import vqgan_config
    from vqgan.io.checkpoint import save_model
    from vqgan.models.vqgan import VQGAN

    cfg = {"kind": "atari", "resolution": 32, "games": ["Pong", "MsPacman"], "frames_per_game": 80,
           "max_episode_steps": 30, "num_envs": 2, "val_fraction": 0.25}
    data = tmp_path / "data"
    assert collect_main(["--config", json.dumps(cfg), "--out", str(data), "--no-progress", "--workers", "1"]) == 0
    render(tmp_path / "frames" / "pacman", "ms_pacman", 10, seed=3, every=20)
    render(tmp_path / "frames" / "pong", "pong", 6, seed=3)
    torch.manual_seed(0)
    model = vqgan_config(32, {"model": {"ch": 8, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [],
                                        "z_channels": 8}, "quantizer": {"kind": "l2", "n_codes": 16, "code_dim": 4}})
    out = tmp_path / "vqgan" / "atari" / "ours"  # results/vqgan/{ds}/{variant}
    save_model(VQGAN(model), out)
    sets = {"pacman": {"path": str(tmp_path / "frames" / "pacman"), "game": "MsPacman"},
            "pong_frames": {"path": str(tmp_path / "frames" / "pong"), "game": "Pong"}}
    assert recon_main(["--model", str(out), "--data", str(data / "val"), "--train-data", str(data / "train"),
                       "--out-json", str(out / "recon.json"), "--out-png", str(out / "recon.png"),
                       "--weights-dir", str(tmp_path / "none"), "--device", "cpu",
                       "--eval-sets", json.dumps(sets)]) == 0
    m = json.loads((out / "recon.json").read_text())
    assert set(m["per_class"]) == {"Pong", "MsPacman"}
    assert m["n_objects"] == len(read_split(data / "val").objects) > 0
    for name, n in (("pacman", 10), ("pong_frames", 6)):
        e = m["eval_sets"][name]
        assert e["n_images"] == n and e["game"] == sets[name]["game"] and np.isfinite(e["psnr"])
        assert e["psnr_baseline_mean"] == pytest.approx(e["psnr"] - e["psnr_gain_over_mean_db"])
        assert e["n_objects"] > 0 and e["objects"]["source"].startswith("pixels")
    table = T.build_table(recon=[out / "recon.json"]).set_index(["dataset", "subset"])
    assert {("atari", "all"), ("atari", "Pong"), ("atari", "MsPacman"), ("atari", "eval_set:pacman"),
            ("atari", "eval_set:pong_frames")} == set(table.index)
    assert table.loc[("atari", "eval_set:pacman"), "n_eval"] == 10
    with pytest.raises(SystemExit, match="no .png files"):
        (tmp_path / "empty").mkdir()
        recon_main(["--model", str(out), "--data", str(data / "val"), "--train-data", str(data / "train"),
                    "--out-json", str(out / "r2.json"), "--out-png", str(out / "r2.png"), "--device", "cpu",
                    "--eval-sets", json.dumps({"e": {"path": str(tmp_path / "empty"), "game": "Pong"}})])


def test_the_workflow_rejects_a_bad_eval_set_before_any_job_and_takes_a_good_one(tmp_path):
    cfg = yaml.safe_load(TEST_CONFIG.read_text())
    cfg["coco"]["root"] = str(TINY_COCO)
    (tmp_path / "frames").mkdir()
    Image.fromarray(np.zeros((210, 150, 3), np.uint8)).save(tmp_path / "frames" / "0.png")
    for sets, pattern in (({"x": {"path": "frames", "game": "Pong"}}, r"datasets\.atari_tiny\.eval_sets\.x: .*0\.png "
                                                                      r"is 150x210 RGB"),
                          ({"x": {"path": "frames", "game": "Breakout"}}, r"not one of this dataset's games")):
        cfg["datasets"]["atari_tiny"]["eval_sets"] = sets
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
        proc = run_snakemake("-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "-n", "--cores", "1",
                             "--configfile", str(tmp_path / "config.yaml"), check=False)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0 and "Job stats" not in out, out[-2000:]
        assert re.search(pattern, out), out[-2000:]
    render(tmp_path / "good", "pong", 2)
    cfg["datasets"]["atari_tiny"]["eval_sets"] = {"x": {"path": "good", "game": "Pong"}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = run_snakemake("-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "-n", "--cores", "1",
                         "--configfile", str(tmp_path / "config.yaml"), check=False)
    runs = len(cfg["datasets"]) * len(cfg["variants"])  # one evaluation per dataset and variant
    assert proc.returncode == 0 and re.search(rf"^eval_vqgan\s+{runs}$", proc.stdout, re.M), proc.stdout[-3000:]
