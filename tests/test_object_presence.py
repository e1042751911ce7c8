"""The dataset-resolution object detector (vqgan/data/object_presence.py) and the sample object scores built on it
(vqgan/eval/sample_objects.py): the mixture arithmetic on made-up pixels, then real ALE frames at 64 px with their
RAM boxes (fit on the first frames, checked on the rest), and a "sampler" that draws only the background."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from vqgan.data import object_presence as op
from vqgan.data.atari_screen import crop_resize
from vqgan.eval import sample_objects as so

R = 64


def test_coverage_reads_a_blend_as_the_share_of_the_colour():
    bg = np.zeros((1, 1, 3, 3), np.float32) + np.array([144, 72, 17], np.float32)  # Pong's court
    c = np.array([236, 236, 236], np.float32)                                       # its ball
    px = np.stack([bg[0, 0, 0], 0.3 * c + 0.7 * bg[0, 0, 0], c + 0.0])[None, None]  # none, 30%, all
    cov = op.coverage(px.astype(np.uint8), bg, [tuple(c.astype(int))])
    assert cov[0, 0] == pytest.approx([0.0, 0.3, 1.0], abs=0.01)
    # the same brightness change towards another colour (a green paddle) is not the ball
    green = (0.6 * np.array([92, 186, 92]) + 0.4 * bg[0, 0, 0]).astype(np.uint8)
    assert op.coverage(green[None, None, None], bg[:, :, :1], [tuple(c.astype(int))])[0, 0, 0] == 0.0


def test_window_max_finds_the_densest_window():
    cov = np.zeros((2, 8, 8), np.float32)
    cov[0, 2:4, 5:7] = 0.5
    cov[1, 7, 7] = 1.0
    assert op.window_max(cov, (2, 2)).tolist() == pytest.approx([2.0, 1.0])


def test_best_threshold_separates_and_defaults_without_truth():
    scores = np.array([0.1, 0.2, 0.6, 0.7, 0.9])
    truth = np.array([False, False, True, True, True])
    t = op.best_threshold(scores, truth)
    assert 0.2 < t <= 0.6
    assert op.best_threshold(scores, np.zeros(5, bool)) == op.DEFAULT_THRESHOLD


def test_object_rate_caps_and_skips_classes_real_frames_never_show():
    real = {"player": 1.0, "ball": 0.5, "fruit": 0.0}
    assert so.object_rate({"player": 1.0, "ball": 1.0, "fruit": 0.3}, real) == 1.0  # capped, fruit left out
    assert so.object_rate({"player": 1.0, "ball": 0.0}, real) == 0.5
    assert so.object_rate({"player": 0.5, "ball": 0.25}, real) == 0.5
    assert so.object_rate({}, {"fruit": 0.0}) is None


# ---------------------------------------------------------------------------------------------------- real frames
def play(game: str, steps: int, seed: int = 0) -> tuple[np.ndarray, pd.DataFrame]:
    """(N, 64, 64, 3) frames of random play and their objects.csv rows (dataset coordinates, visible)."""
    pytest.importorskip("ale_py")
    from atari_collect import objects as ob
    from vqgan.data.atari_pixels import to_dataset_boxes

    frames, rows = [], []
    for i, (screen, ram) in enumerate(ob.frames_with_ram(game, steps, seed)):
        frames.append(crop_resize(screen, R, None))
        for o in to_dataset_boxes(ob.detect_objects(game, ram, screen), None, R):
            rows.append({"frame": i, "class": o.cls, "id": o.id, "x0": o.box[0], "y0": o.box[1], "x1": o.box[2],
                         "y1": o.box[3], "visible": int(o.visible is not False)})
    return np.stack(frames), pd.DataFrame(rows)


@pytest.fixture(scope="module")
def games() -> dict[str, tuple[np.ndarray, pd.DataFrame]]:
    return {g: play(g, 500) for g in ("pong", "breakout")}


@pytest.fixture(scope="module")
def detectors(games) -> dict[str, op.GameDetector]:
    return {g: op.fit_game(g, images[:300], objects[objects["frame"] < 300], None, None)
            for g, (images, objects) in games.items()}


@pytest.mark.parametrize("game", ["pong", "breakout"])
def test_held_out_frames_agree_with_ram(games, detectors, game):
    images, objects = games[game]
    det = detectors[game]
    held = np.arange(300, len(images))
    truth = op.ram_presence(op.reindex_objects(objects, held), len(held), det.classes, det.fields)
    found = det.detect(images[held])
    for cls in det.classes:
        t, p = truth[cls], found[cls]
        if t.sum() < 10:
            continue
        recall = (t & p).sum() / t.sum()
        precision = (t & p).sum() / max(p.sum(), 1)
        assert recall >= 0.8 and precision >= 0.8, (game, cls, recall, precision)


def test_an_erased_object_is_not_found(games, detectors):
    """Paint the background over every ball: the frames that showed it no longer do; the paddles stay."""
    images, objects = games["pong"]
    det = detectors["pong"]
    held = np.arange(300, len(images))
    frames = images[held].copy()
    bg = det.backgrounds[0]
    balls = op.reindex_objects(objects[objects["class"] == "ball"], held)
    for f, x0, y0, x1, y1 in balls[["frame", "x0", "y0", "x1", "y1"]].itertuples(index=False):
        ys, xs = slice(int(np.floor(y0)), int(np.ceil(y1))), slice(int(np.floor(x0)), int(np.ceil(x1)))
        frames[f, ys, xs] = bg[ys, xs].astype(np.uint8)
    before, after = det.detect(images[held]), det.detect(frames)
    assert before["ball"].mean() > 0.3
    assert after["ball"].mean() <= 0.05
    assert after["player"].mean() == pytest.approx(before["player"].mean(), abs=0.05)


def write_samples(folder, images_by_class: dict[str, np.ndarray]) -> None:
    folder.mkdir(parents=True)
    files = []
    for name, images in images_by_class.items():
        for i, img in enumerate(images):
            files.append(f"{name}_{i:05d}.png")
            Image.fromarray(img).save(folder / files[-1])
    # sorted keys, as the stage's JSON writer writes them: per_class's order is not the files' order
    (folder / "samples.json").write_text(json.dumps(
        {"files": files, "per_class": {k: len(v) for k, v in images_by_class.items()}}, sort_keys=True))


def test_samples_of_the_background_alone_score_low(games, detectors, tmp_path):
    """Real frames as "samples" score ~1; the background alone (court, wall: no objects moving) scores far lower,
    and uniform noise nothing."""
    real = {g: games[g][0][300:] for g in detectors}
    write_samples(tmp_path / "real", {"Pong": real["pong"][:100], "Breakout": real["breakout"][:100]})
    bg = {g: np.repeat(detectors[g].backgrounds[:1].astype(np.uint8), 100, 0) for g in detectors}
    noise = np.random.default_rng(0).integers(0, 256, (100, R, R, 3), dtype=np.uint8)
    write_samples(tmp_path / "noise", {"Pong": noise, "Breakout": noise})
    write_samples(tmp_path / "bg", {"Pong": bg["pong"], "Breakout": bg["breakout"]})
    dets = {"Pong": detectors["pong"], "Breakout": detectors["breakout"]}
    real_shares = so.shares(dets, {"Pong": real["pong"], "Breakout": real["breakout"]})
    # noise has pixels of every class's colour everywhere, but nothing that stands on the game's background
    for folder, low, high in (("real", 0.9, 1.0), ("bg", 0.0, 0.5), ("noise", 0.0, 0.05)):
        got = so.shares(dets, so.sample_images(tmp_path / folder, ["Pong", "Breakout"]))
        for g in dets:
            rate = so.object_rate(got[g]["classes"], real_shares[g]["classes"])
            assert low <= rate <= high, (folder, g, rate, got[g], real_shares[g])


# ---------------------------------------------------------------------------------------------------- the fid stage
@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    """A real collection (Pong and Breakout, 64 px, RAM object truth), as the collect_atari rule writes it."""
    pytest.importorskip("ale_py")
    from atari_collect.__main__ import main as collect

    out = tmp_path_factory.mktemp("atari") / "atari64"
    cfg = {"kind": "atari", "resolution": 64, "games": ["Pong", "Breakout"], "frames_per_game": 400,
           "max_episode_steps": 200, "num_envs": 2, "val_fraction": 0.25}
    assert collect(["--config", json.dumps(cfg), "--out", str(out), "--no-progress", "--workers", "1"]) == 0
    return out


def test_fid_stage_scores_objects_in_each_seeds_samples(collected, tmp_path):
    """The fid stage's `objects`: real val frames given as samples score ~1, a seed of backgrounds alone lowers
    the mean; the validation against RAM is in the JSON; a split without object truth gets None."""
    from vqgan.data.dataset import read_split, write_split
    from vqgan.eval import fid as F

    val = read_split(collected / "val")
    by_game = {g: np.asarray(val.images[val.labels == c][:60]) for c, g in enumerate(val.class_names)}
    write_samples(tmp_path / "seed1", by_game)
    write_samples(tmp_path / "seed2", {g: np.repeat(v[:1] * 0 + np.median(v, 0).astype(np.uint8)[None], 60, 0)
                                       for g, v in by_game.items()})
    result = {"timing_s": {}}
    F.score_sample_objects(result, collected / "train", collected / "val", [tmp_path / "seed1"])
    assert set(result["objects"]["per_game"]) == {"Pong", "Breakout"}
    assert result["sample_object_rate"] >= 0.9
    assert result["objects"]["validation"]["Pong"]["ball"]["recall"] >= 0.8
    both = {"timing_s": {}}
    F.score_sample_objects(both, collected / "train", collected / "val", [tmp_path / "seed1", tmp_path / "seed2"])
    pong = both["objects"]["per_game"]["Pong"]
    assert both["sample_object_rate"] < result["sample_object_rate"] - 0.2
    assert pong["n_samples"] == 120 and len(pong["per_seed_rate"]) == 2 and pong["per_seed_rate"][0] >= 0.9
    plain = write_split(tmp_path / "plain" / "train", np.zeros((4, 8, 8, 3), np.uint8),
                        pd.DataFrame({"file": list("abcd")}), {"source": "coco", "count": 4})
    none = {"timing_s": {}}
    F.score_sample_objects(none, plain, plain, [])
    assert none["objects"] is None and none["sample_object_rate"] is None


def test_a_class_misread_in_the_decoders_output_is_left_out(collected, tmp_path):
    """With the variant's reconstructions: a perfect "decoder" (the val frames themselves) leaves every class in;
    one that draws a ball-coloured speck in every frame makes the detector see balls where RAM has none, and the
    ball is left out of that variant's rate rather than counted (its sample share would count the specks)."""
    from vqgan.data.atari_pixels import PONG_RGB
    from vqgan.data.dataset import read_split

    val = read_split(collected / "val")
    frames = np.asarray(val.images)
    for name, images in (("perfect", frames), ("specks", frames.copy())):
        if name == "specks":
            images[:, 30, 30] = PONG_RGB["ball"]
            images[:, 31, 30] = PONG_RGB["ball"]
        folder = tmp_path / name
        folder.mkdir()
        for i, img in enumerate(images):
            Image.fromarray(img).save(folder / f"{i:06d}.png")
    perfect = so.score(collected / "train", collected / "val", [], tmp_path / "perfect")
    specks = so.score(collected / "train", collected / "val", [], tmp_path / "specks")
    assert perfect["validation_decoded"]["Pong"]["ball"]["precision"] >= 0.9
    assert all(not g["left_out"] for g in perfect["per_game"].values())
    assert specks["validation_decoded"]["Pong"]["ball"]["precision"] < so.MIN_DECODED_PRECISION
    assert "ball" in specks["per_game"]["Pong"]["left_out"]
    assert so.object_rate({"player": 1.0, "ball": 0.0}, {"player": 1.0, "ball": 0.5}, skip=["ball"]) == 1.0
