"""Object truth in collected datasets: objects.csv holds every object's box in the dataset's pixels, checked against
the pixels of real collected frames (both collectors, with a crop), exact under resizing, and deterministic."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from atari_collect import objects as ob
from atari_collect.__main__ import main
from vqgan.data import atari_pixels as px
from vqgan.data.dataset import OBJECTS, DatasetError, read_split, write_split

# A 160x160 crop at resolution 160: no resize, so dataset pixels are screen pixels (rows 34..193: Pong's court,
# Breakout's bricks and paddle, most of Ms. Pac-Man's maze) and every box can be checked pixel by pixel.
# Ms. Pac-Man goes through the Go-Explore collector, Pong and Breakout through the plain one, Seaquest has no rules.
NATIVE = {"kind": "atari", "resolution": 160, "crop": [34, 0, 160, 160],
          "games": ["MsPacman", "Pong", "Breakout", "Seaquest"], "frames_per_game": 150, "max_episode_steps": 60,
          "num_envs": 2, "val_fraction": 0.25,
          "game_policy": {"MsPacman": {"name": "go_explore", "budget_steps": 1500, "lineages": 2, "explore_steps": 50}}}
SMALL = {**NATIVE, "resolution": 64}
TOP = NATIVE["crop"][0]


def collect(tmp_path, name, cfg, workers):
    out = tmp_path / name
    assert main(["--config", json.dumps(cfg), "--out", str(out), "--no-progress", "--workers", str(workers)]) == 0
    return out


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    out = collect(tmp_path_factory.mktemp("native"), "a", NATIVE, 2)
    return {s: read_split(out / s) for s in ("train", "val")}


def rows_of(split, game):
    """(object rows, image rows) of one game in a split."""
    frames = np.flatnonzero(split.meta["game"].to_numpy() == game)
    return split.objects[split.objects["frame"].isin(frames)], frames


def colour_count(split, row, game, dx=0):
    box = (int(row.x0) + dx, int(row.y0), int(row.x1) + dx, int(row.y1))
    colours = ob.object_colours(game, px.GameObject(row["class"], int(row.id), box))
    return ob.colour_pixels(np.asarray(split.images[int(row.frame)]), box, colours)


def test_manifest_says_which_games_have_object_truth(native):
    for split in native.values():
        truth = split.manifest["object_truth"]
        assert truth["games"] == ["MsPacman", "Pong", "Breakout"] and truth["games_without"] == ["Seaquest"]
        assert truth["classes"]["MsPacman"] == ["player", "ghost", "fruit"]
        seaquest, _ = rows_of(split, "Seaquest")
        assert seaquest.empty, "a game without RAM rules has no object rows"
        for game in truth["games"]:
            rows, frames = rows_of(split, game)
            assert set(rows["class"]) <= set(truth["classes"][game])
            # the player (Ms. Pac-Man, Pong) / paddle (Breakout) is on every frame of its game
            key = "paddle" if game == "Breakout" else "player"
            assert set(rows.loc[rows["class"] == key, "frame"]) == set(frames), game


def test_boxes_hold_the_objects_pixels_on_real_collected_frames(native):
    """Every box the crop does not cut holds >= 2 pixels of its object's colours exactly when it is marked visible
    (the collector counted them on the native screen), and 2 px to a side fewer of them: the boxes sit on the
    sprites, through the crop, the RAM lag and the renumbering of frames into splits."""
    checked = {}
    for split in native.values():
        for game in ("MsPacman", "Pong", "Breakout"):
            rows, _ = rows_of(split, game)
            rows = rows[(rows["class"] != "brick") & (rows.y0 > 0) & (rows.y1 < 160)]  # not cut by the crop
            for _, r in rows.iterrows():
                here = colour_count(split, r, game)
                assert (here >= 2) == bool(r.visible), (game, r.to_dict(), here)
                key = (game, r["class"])
                n, hits, off = checked.get(key, (0, 0, 0))
                shifted = min(colour_count(split, r, game, dx) for dx in (-2, 2)) if r.visible else here
                checked[key] = (n + 1, hits + (here >= 2), off + (shifted < here))
    for cls in [("MsPacman", "player"), ("MsPacman", "ghost"), ("Pong", "player"), ("Pong", "ball"),
                ("Breakout", "paddle"), ("Breakout", "ball")]:
        n, hits, off = checked.get(cls, (0, 0, 0))
        assert n >= 5, f"too few {cls} boxes to check: {n}"
        assert off >= 0.9 * hits, f"{cls}: a 2-px shift keeps as many object pixels (only {off} of {hits} drop)"


def test_boxes_are_tight_around_sprites_of_a_unique_colour(native):
    """All pixels of a Ms. Pac-Man sprite's own colour inside the maze (player, each ghost), and of Pong's paddles
    and ball inside the court, lie inside that object's box: a box read from the RAM after the step instead of the
    one the screen was drawn from (Ms. Pac-Man's ram_lag) leaves ghost pixels outside."""
    maze = 172 - TOP
    unique = {("MsPacman", "player", 0): (px.MSPACMAN_PLAYER_RGB, maze),
              **{("MsPacman", "ghost", g): (rgb, maze) for g, rgb in enumerate(px.MSPACMAN_GHOST_RGB)},
              **{("Pong", cls, 0): (px.PONG_RGB[cls], 160) for cls in ("player", "enemy", "ball")}}
    seen = 0
    for split in native.values():
        for (game, cls, id), (rgb, bottom) in unique.items():
            rows, frames = rows_of(split, game)
            boxes = {int(r.frame): r for _, r in rows[(rows["class"] == cls) & (rows["id"] == id)].iterrows()}
            for f in frames:
                ys, xs = np.nonzero((np.asarray(split.images[f])[:bottom] == rgb).all(-1))
                if not len(ys):
                    continue
                r = boxes.get(int(f))
                assert r is not None, f"{game} frame {f}: {cls} {id} pixels on screen but no box"
                inside = (xs >= r.x0) & (xs < r.x1) & (ys >= r.y0) & (ys < r.y1)
                assert inside.all(), f"{game} frame {f}: {(~inside).sum()} {cls} {id} pixels outside {r.to_dict()}"
                seen += 1
    assert seen > 300


def test_bricks_are_filled_with_their_rows_colour(native):
    for split in native.values():
        rows, _ = rows_of(split, "Breakout")
        bricks = rows[rows["class"] == "brick"]
        assert len(bricks) > 100
        for _, r in bricks.iterrows():
            patch = np.asarray(split.images[int(r.frame)])[int(r.y0):int(r.y1), int(r.x0):int(r.x1)]
            assert (patch == px.BREAKOUT_ROW_RGB[int(r.id) // 18]).all(), r.to_dict()


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return collect(tmp_path_factory.mktemp("small"), "w1", SMALL, 1)


def test_resized_boxes_are_the_native_ones_scaled_and_deterministic_for_any_worker_count(native, small, tmp_path):
    """The same collection at 64 px: the same trajectories, so the same objects with boxes scaled by 64/160
    (resize maps the half-open box as is); byte-identical images.npy and objects.csv for 1 and 2 workers."""
    one, two = small, collect(tmp_path, "w2", SMALL, 2)
    for s in ("train", "val"):
        for name in ("images.npy", OBJECTS):
            assert (one / s / name).read_bytes() == (two / s / name).read_bytes(), (s, name)
        small, big = read_split(one / s).objects, native[s].objects
        assert list(small["class"]) == list(big["class"]) and (small["frame"] == big["frame"]).all()
        for c in ("x0", "y0", "x1", "y1"):
            np.testing.assert_allclose(small[c], big[c] * 64 / 160, atol=1e-6)


def test_objects_csv_is_checked_on_read(tmp_path):
    images = np.zeros((3, 8, 8, 3), np.uint8)
    meta = pd.DataFrame({"source_id": range(3)})
    good = pd.DataFrame({"frame": [0, 2], "class": ["ball", "player"], "id": [0, 0], "x0": [0.5, 1], "y0": [1, 2],
                         "x1": [2.5, 8], "y1": [3, 4], "visible": [1, 0]})
    write_split(tmp_path / "ok", images, meta, {}, objects=good)
    back = read_split(tmp_path / "ok").objects
    pd.testing.assert_frame_equal(back, good, check_dtype=False)
    assert read_split(tmp_path / "ok").objects is not None
    write_split(tmp_path / "none", images, meta, {})
    assert read_split(tmp_path / "none").objects is None
    for bad, pattern in [({"frame": [3, 0]}, "frame must be a row"), ({"x1": [9.0, 8]}, "0 <= x0 < x1 <= 8"),
                         ({"y1": [1, 4]}, "breaks the contract"), ({"visible": [2, 0]}, "visible 0 or 1")]:
        with pytest.raises(DatasetError, match=f"objects.csv.*{pattern}"):
            write_split(tmp_path / "bad", images, meta, {}, objects=good.assign(**bad))
    (tmp_path / "ok" / OBJECTS).write_text("frame,class,id,x0,y0,x1\n0,ball,0,1,1,2\n")
    with pytest.raises(DatasetError, match=r"ok/objects.csv: missing column\(s\) \['y1'\]"):
        read_split(tmp_path / "ok")


class Replay:
    """A 'model' whose reconstructions are given images, in evaluation order (identity: the inputs themselves)."""

    class cfg:
        n_codes = 4

    def __init__(self, images=None):
        self.images, self.pos = images, 0

    def encode_to_indices(self, x):
        self.x = x
        return torch.zeros(x.shape[0], 2, 2, dtype=torch.long)

    def decode_indices(self, idx):
        if self.images is None:
            return self.x
        out = self.images[self.pos : self.pos + idx.shape[0]]
        self.pos += idx.shape[0]
        return torch.from_numpy(out.astype(np.float32) / 127.5 - 1).permute(0, 3, 1, 2)


def test_object_recall_on_real_frames_is_one_for_the_originals_and_zero_for_the_background(small):
    """eval_vqgan's object scores on the 64 px collection: reconstructing every val frame exactly keeps every
    object of every game and class; the game's train median image (its background) keeps none."""
    from vqgan.eval.recon import EvalConfig, class_baselines, evaluate

    train, val = read_split(small / "train"), read_split(small / "val")
    truth = val.manifest["object_truth"]
    kw = dict(val_labels=val.labels, train_labels=train.labels, class_names=val.class_names, objects=val.objects,
              object_truth=truth)
    cfg = EvalConfig.from_dict(dict(grid_images=0, max_images=None))
    m, _ = evaluate(Replay(), val.images, train.images, cfg, **kw)
    _, median = class_baselines(train.images, train.labels, len(train.class_names))
    bg, _ = evaluate(Replay(median[val.labels].round().astype(np.uint8)), val.images, train.images, cfg, **kw)
    assert m["object_recall"] == 1.0 and bg["object_recall"] <= 0.1
    assert m["n_objects_scored"] > 100 and m["n_objects_hidden"] > 0  # flickered ghosts
    for game in truth["games"]:
        c = m["per_class"][game]
        assert c["object_recall"] == 1.0 and bg["per_class"][game]["object_recall"] <= 0.1, game
        assert set(c["per_object_class"]) <= set(truth["classes"][game])
        assert all(o["object_recall"] in (1.0, None) for o in c["per_object_class"].values())
    seaquest = m["per_class"]["Seaquest"]
    assert seaquest["object_recall"] is None and "no RAM rules for Seaquest" in seaquest["objects_unavailable_reason"]
