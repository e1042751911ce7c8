"""Object masks for the object-weighted loss: rasterising objects.csv boxes per batch (vqgan/data/object_masks.py)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from vqgan.data.dataset import read_split, write_split
from vqgan.data.object_masks import ObjectMasks


def table(rows):
    return pd.DataFrame(rows, columns=["frame", "class", "id", "x0", "y0", "x1", "y1", "visible"])


def test_boxes_are_rasterised_outward_per_frame_without_hidden_or_ignored_objects():
    objects = table([
        (2, "player", 0, 1.5, 2.0, 3.2, 4.0, 1),     # -> x 1..3, y 2..3 (floor x0, ceil x1; y exact)
        (0, "ghost", 1, 5.0, 5.0, 6.0, 7.0, 1),
        (0, "ghost", 2, 0.0, 0.0, 2.0, 2.0, 0),       # flickered out: not drawn, not weighted
        (2, "brick", 7, 0.0, 7.0, 8.0, 8.0, 1),       # ignored class
    ])
    masks = ObjectMasks(objects, n_images=4, resolution=8, ignore_classes=("brick",))
    m = masks(np.array([2, 1, 0, 2]))
    assert m.shape == (4, 8, 8) and m.dtype == np.uint8
    want2 = np.zeros((8, 8), np.uint8)
    want2[2:4, 1:4] = 1
    want0 = np.zeros((8, 8), np.uint8)
    want0[5:7, 5:6] = 1
    np.testing.assert_array_equal(m[0], want2)
    np.testing.assert_array_equal(m[3], want2)     # the same frame twice in a batch
    np.testing.assert_array_equal(m[1], 0)         # no object on frame 1
    np.testing.assert_array_equal(m[2], want0)
    with_bricks = ObjectMasks(objects, 4, 8)(np.array([2]))[0]
    assert with_bricks[7].all() and with_bricks.sum() == want2.sum() + 8


def test_masks_match_a_per_pixel_rasterisation_of_random_boxes():
    rng = np.random.default_rng(0)
    n, res, k = 20, 16, 60
    x0, y0 = rng.uniform(0, res - 1, k), rng.uniform(0, res - 1, k)
    x1, y1 = np.minimum(x0 + rng.uniform(0.1, 6, k), res), np.minimum(y0 + rng.uniform(0.1, 6, k), res)
    frame = rng.integers(0, n, k)
    objects = pd.DataFrame({"frame": frame, "class": "player", "id": 0, "x0": x0, "y0": y0, "x1": x1, "y1": y1})
    got = ObjectMasks(objects, n, res)(np.arange(n))
    # pixel (x, y) covers [x, x+1) x [y, y+1): it is in the mask iff that square overlaps some box
    px = np.arange(res)
    want = np.zeros((n, res, res), np.uint8)
    for f, a, b, c, d in zip(frame, x0, y0, x1, y1):
        want[f] |= ((px[:, None] + 1 > b) & (px[:, None] < d) & (px[None] + 1 > a) & (px[None] < c)).astype(np.uint8)
    np.testing.assert_array_equal(got, want)
    assert ObjectMasks(objects, n, res).fraction() == pytest.approx(want.mean())


def test_a_split_without_objects_csv_is_refused_with_the_folder_and_key(tmp_path):
    path = write_split(tmp_path / "train", np.zeros((2, 8, 8, 3), np.uint8), pd.DataFrame({"source_id": [0, 1]}),
                       {"source": "test"})
    with pytest.raises(ValueError, match=r"(?s)train: no objects\.csv.*object_weight: 0"):
        ObjectMasks.from_split(read_split(path))


def test_object_crops_hold_a_uniformly_chosen_object_and_plain_crops_cover_the_frame():
    from vqgan.data.object_masks import crop_windows

    res, size, n = 32, 8, 4000
    rng = np.random.default_rng(0)
    # frame 0: a big paddle and a 1-px ball; frame 1: no object
    paddle, ball = np.array([2, 2, 6, 20]), np.array([27, 29, 28, 30])
    boxes = [np.stack([paddle, ball])] * n + [np.zeros((0, 4), np.int16)] * n
    corners = crop_windows(boxes, res, size, 1.0, rng.random((2 * n, 4)))
    assert corners.min() >= 0 and corners.max() <= res - size

    def holds_centre(c, box):
        cy, cx = (box[1] + box[3]) // 2, (box[0] + box[2]) // 2
        return c[0] <= cy < c[0] + size and c[1] <= cx < c[1] + size

    with_ball = np.array([holds_centre(c, ball) for c in corners[:n]])
    with_paddle = np.array([holds_centre(c, paddle) for c in corners[:n]])
    assert (with_ball | with_paddle).all(), "every object crop must hold its object's centre"
    assert 0.45 < with_ball.mean() < 0.55, "objects are chosen uniformly, not by their area"
    assert len({tuple(c) for c in corners[:n][with_ball]}) > 4, "the object is not always at the same place"
    # no object: uniform over every corner, both ends included
    plain = corners[n:]
    assert {plain[:, 0].min(), plain[:, 0].max(), plain[:, 1].min(), plain[:, 1].max()} == {0, res - size}
    assert abs(plain[:, 0].mean() - (res - size) / 2) < 0.5
    # share 0: objects are ignored
    uniform = crop_windows(boxes[:n], res, size, 0.0, rng.random((n, 4)))
    assert np.mean([holds_centre(c, ball) for c in uniform]) < 0.2
    with pytest.raises(ValueError, match="crop size 40"):
        crop_windows(boxes[:1], res, 40, 1.0, rng.random((1, 4)))


def test_balanced_masks_give_every_box_the_same_total_weight_within_the_clip():
    objects = table([
        (0, "paddle", 0, 0.0, 0.0, 2.0, 8.0, 1),    # 16 px
        (0, "ball", 1, 10.0, 10.0, 11.0, 11.0, 1),  # 1 px
        (1, "ghost", 2, 4.0, 4.0, 8.0, 6.0, 1),     # 8 px: the median area
        (1, "ghost", 3, 5.0, 5.0, 9.0, 7.0, 1),     # 8 px, overlapping the other ghost
    ])
    plain = ObjectMasks(objects, 2, 16)
    m = ObjectMasks(objects, 2, 16, balance=True)(np.array([0, 1]))
    assert m.dtype == np.float32
    assert m[0, :8, :2].sum() == pytest.approx(8.0)          # 16 px x 8/16
    assert m[0, 10, 10] == pytest.approx(8.0)                # 1 px x 8/1 (at the clip's top, 8)
    assert set(np.unique(m[1])) == {0.0, 1.0}                # median-sized boxes keep weight 1, overlap not summed
    np.testing.assert_array_equal(m > 0, plain(np.array([0, 1])) > 0)
    assert ObjectMasks(objects, 2, 16, balance=True).fraction() == pytest.approx(plain.fraction())


def test_class_balance_gives_each_class_of_a_game_the_same_share_of_its_object_weight():
    # game 0 (frames 0-1): one player and three ghosts per frame, plus one fruit; game 1 (frame 2): one paddle
    rows = []
    for f in (0, 1):
        rows.append((f, "player", 0, 0.0, 0.0, 2.0, 2.0, 1))
        rows += [(f, "ghost", g, 4.0 * g, 8.0, 4.0 * g + 2, 10.0, 1) for g in range(1, 4)]
    rows.append((0, "fruit", 0, 12.0, 12.0, 14.0, 14.0, 1))
    rows.append((2, "paddle", 0, 0.0, 0.0, 2.0, 2.0, 1))
    objects, labels = table(rows), np.array([0, 0, 1])
    m = ObjectMasks(objects, 3, 16, labels=labels, class_balance=True)
    w = {(f, c): m(np.array([f]))[0, int(y0), int(x0)] for f, c, _, x0, y0, *_ in rows}
    # game 0 holds 9 boxes of 3 classes: each class's boxes share 3 -> player 3/2, ghost 3/6, fruit 3/1
    assert w[0, "player"] == pytest.approx(1.5) and w[1, "player"] == pytest.approx(1.5)
    assert w[0, "ghost"] == pytest.approx(0.5)
    assert w[0, "fruit"] == pytest.approx(3.0)
    assert w[2, "paddle"] == pytest.approx(1.0)  # a game with one class keeps weight 1
    assert m.weights.sum() == pytest.approx(len(rows))  # every game keeps its total (no class hit the clip)
    # the clip: one fruit among 40 boxes of 3 classes would get 40/3 -> 8
    many = table(rows[:1] * 39 + [(0, "fruit", 0, 12.0, 12.0, 14.0, 14.0, 1), (0, "ghost", 1, 4, 8, 6, 10, 1)])
    assert ObjectMasks(many, 1, 16, labels=np.array([0]), class_balance=True).weights.max() == pytest.approx(8.0)
    # without labels every frame is one game: 10 boxes of 4 classes share 2.5 per class -> player 10/(4 x 2)
    one_game = ObjectMasks(objects, 3, 16, class_balance=True)
    assert one_game(np.array([0]))[0, 0, 0] == pytest.approx(1.25) and one_game(np.array([2]))[0, 0, 0] == 2.5
    assert one_game.weights.sum() == pytest.approx(len(rows))
