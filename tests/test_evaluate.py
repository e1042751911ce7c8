"""Reconstruction evaluation: baselines from the training split only, object recall and box errors, recon.json /
recon.png."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from vqgan.data.dataset import write_split
from vqgan.eval.recon import (
    PSNR_CAP_DB,
    EvalConfig,
    codebook_summary,
    evaluate,
    format_report,
    main,
    psnr_per_image,
    train_baselines,
)
from vqgan.io.checkpoint import save_model
from vqgan.io.images import load_png


def sprite_video(n: int, res: int = 16, seed: int = 0, sprite=True) -> np.ndarray:
    """Constant background; with `sprite`, a 4x4 sprite moving to a random place each frame."""
    rng = np.random.default_rng(seed)
    frames = np.zeros((n, res, res, 3), np.uint8)
    frames[..., 1] = 90
    if sprite:
        for i in range(n):
            y, x = rng.integers(0, res - 4, 2)
            frames[i, y : y + 4, x : x + 4] = (240, 240, 240)
    return frames


class Identity:
    """A 'model' whose reconstructions are exact: PSNR must hit the cap and every object is kept."""

    class cfg:
        n_codes = 4

    def encode_to_indices(self, x):
        self.x = x
        return torch.zeros(x.shape[0], 2, 2, dtype=torch.long)

    def decode_indices(self, idx):
        return self.x[: idx.shape[0]]


def test_psnr_and_codebook_numbers():
    a = np.zeros((2, 4, 4, 3), np.uint8)
    b = a.copy()
    b[1] += 10
    psnr = psnr_per_image(b, a)
    assert psnr[0] == PSNR_CAP_DB
    assert psnr[1] == pytest.approx(10 * np.log10(255**2 / 100))
    s = codebook_summary(np.array([5, 5, 0, 0]))
    assert s["codes_used"] == 2 and s["usage"] == 0.5 and s["perplexity"] == pytest.approx(2.0)


def test_baselines_come_from_the_training_split_only():
    train = sprite_video(40, seed=0)
    mean, median = train_baselines(train, rows_per_chunk=3)  # chunks that don't divide 16: edges covered
    np.testing.assert_allclose(mean, train.mean(axis=0), atol=1e-4)
    np.testing.assert_array_equal(median, np.median(train, axis=0))
    cfg = EvalConfig.from_dict(dict(grid_images=2, batch_size=7))
    for val in (sprite_video(10, seed=1), np.full((10, 16, 16, 3), 200, np.uint8)):
        m, _ = evaluate(Identity(), val, train, cfg)
        # the baselines are predictions made from train, scored on these val images: recompute independently
        assert m["psnr_baseline_mean"] == pytest.approx(psnr_per_image(train.mean(0), val).mean())
        assert m["psnr_baseline_median"] == pytest.approx(psnr_per_image(np.median(train, 0), val).mean())
        assert m["psnr"] == PSNR_CAP_DB and m["mae"] == 0.0
    # and they change when train changes, with val fixed
    other, _ = evaluate(Identity(), val, sprite_video(40, seed=0, sprite=False) + 30, cfg)
    assert other["psnr_baseline_mean"] != pytest.approx(m["psnr_baseline_mean"])


class Constant(Identity):
    """A 'model' that draws one fixed image whatever it is given (e.g. the train median: the background only)."""

    def __init__(self, image):
        self.image = torch.from_numpy(np.asarray(image, np.float32) / 127.5 - 1).permute(2, 0, 1)

    def decode_indices(self, idx):
        return self.image[None].expand(idx.shape[0], -1, -1, -1)


def sprite_boxes(frames: np.ndarray, hidden_every: int = 0) -> pd.DataFrame:
    """objects.csv rows of sprite_video: one 'sprite' per frame, its 4x4 box (found from the pixels); with
    `hidden_every`, every such frame also gets a 'ghost' marked not drawn at the top left."""
    rows = []
    for i, f in enumerate(frames):
        ys, xs = np.nonzero((f == 240).all(-1))
        rows.append((i, "sprite", 0, xs.min(), ys.min(), xs.max() + 1.0, ys.max() + 1.0, 1))
        if hidden_every and i % hidden_every == 0:
            rows.append((i, "ghost", 0, 0.0, 0.0, 2.5, 2.5, 0))
    return pd.DataFrame(rows, columns=["frame", "class", "id", "x0", "y0", "x1", "y1", "visible"])


def test_object_recall_is_one_for_the_original_and_zero_for_the_background():
    train, val = sprite_video(40, seed=0), sprite_video(12, seed=3)
    objects = sprite_boxes(val, hidden_every=3)
    _, median = train_baselines(train)
    cfg = EvalConfig.from_dict(dict(grid_images=0))
    m, _ = evaluate(Identity(), val, train, cfg, objects=objects)
    assert m["object_recall"] == 1.0 and m["box_mae"] == 0.0 and m["box_psnr"] == PSNR_CAP_DB
    assert m["n_objects"] == 12 + 4 and m["n_objects_hidden"] == 4 and m["n_objects_scored"] == 12
    assert m["object_recall_baseline_median"] == 0.0 and m["object_recall_baseline_mean"] <= 0.1
    assert m["box_mae_baseline_median"] > 100, "the median background misses every sprite"
    assert set(m["objects"]["per_object_class"]) == {"all/sprite", "all/ghost"}
    bg, _ = evaluate(Constant(median), val, train, cfg, objects=objects)
    assert bg["object_recall"] <= 0.1 and bg["box_mae"] == pytest.approx(bg["box_mae_baseline_median"])
    # a sprite drawn at half strength is kept (error < 0.5 x the median's), a quarter-strength one is not
    for strength, kept in ((0.6, 1.0), (0.25, 0.0)):
        faint = (median + strength * (val.astype(np.float32) - median)).round().astype(np.uint8)

        class Faint(Identity):
            def decode_indices(self, idx):
                return torch.from_numpy(faint.astype(np.float32) / 127.5 - 1).permute(0, 3, 1, 2)

        assert evaluate(Faint(), val, train, cfg, objects=objects)[0]["object_recall"] == kept
    # an object the background already shows (a sprite-sized box on plain background) is not scored
    still = sprite_boxes(val).assign(x0=0.0, y0=12.0, x1=4.0, y1=16.0)
    moved = val.copy()
    moved[:, 12:, :4] = (0, 90, 0)
    s, _ = evaluate(Identity(), moved, train, cfg, objects=still)
    assert s["n_objects_indistinct"] == 12 and s["n_objects_scored"] == 0 and s["object_recall"] is None
    none, _ = evaluate(Identity(), val, train, cfg)
    assert none["object_recall"] is None and "no object truth" in none["objects"]["unavailable_reason"]


def test_object_boxes_are_rounded_outward_and_drawn_on_the_originals():
    from vqgan.data.object_masks import outward_boxes

    b = outward_boxes([0.4, 3.0, 15.2], [1.0, 2.999999999, 0.0], [0.6, 4.0, 16.0], [2.0, 4.0000000001, 16.0], 16)
    assert b.tolist() == [[0, 1, 1, 2], [3, 3, 4, 4], [15, 0, 16, 16]]
    train, val = sprite_video(40, seed=0), sprite_video(4, seed=3)
    cfg = EvalConfig.from_dict(dict(grid_images=4))
    _, plain = evaluate(Identity(), val, train, cfg)
    _, boxed = evaluate(Identity(), val, train, cfg, objects=sprite_boxes(val),
                        object_truth={"classes": {"all": ["sprite"]}})
    top = slice(0, 2 + 64)  # the originals' row (16 px x4 + padding); reconstructions and differences unchanged
    changed = (plain != boxed).any(-1)
    assert changed[top].sum() > 4 * 4 * 16 and not changed[66:].any()
    assert (boxed[top][changed[top]] == (255, 255, 255)).all(), "outlines in the first class's colour"


def _eval_tiny_model(tmp_path, eval_cfg: dict, res: int = 16, n_val: int = 10, extra: tuple = (),
                     palette: dict | None = None) -> int:
    """A random 16-px VQGAN, 24 train and `n_val` val frames, and `vqgan.eval.recon`'s CLI run on them (`extra`:
    more arguments; `palette`: the vqgan.palette section)."""
    from vqgan.config.build import vqgan_config
    from vqgan.models.vqgan import VQGAN

    meta = lambda n: pd.DataFrame({"source_id": range(n)})  # noqa: E731
    write_split(tmp_path / "train", sprite_video(24, res), meta(24), {"source": "test"})
    write_split(tmp_path / "val", sprite_video(n_val, res, seed=5), meta(n_val), {"source": "test"})
    torch.manual_seed(0)
    cfg = vqgan_config(res, {"model": {"ch": 8, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [],
                                       "z_channels": 8}, "quantizer": {"kind": "l2", "n_codes": 16, "code_dim": 4}})
    save_model(VQGAN(cfg), tmp_path / "model")
    return main(["--model", str(tmp_path / "model"), "--data", str(tmp_path / "val"), "--train-data",
                 str(tmp_path / "train"), "--out-json", str(tmp_path / "recon.json"), "--out-png",
                 str(tmp_path / "recon.png"), "--recon-dir", str(tmp_path / "recon"),
                 "--config", json.dumps({"eval": eval_cfg, **({"palette": palette} if palette else {})}),
                 "--weights-dir", str(tmp_path / "no-weights"),
                 "--device", "cpu", *extra])


def test_eval_writes_the_reconstructions_of_the_fid_stages_train_images(tmp_path):
    from vqgan.data.dataset import evenly_spaced, read_split
    from vqgan.io.checkpoint import load_vqgan
    from vqgan.io.images import to_tensor, to_uint8

    n = 5  # fid.n: the fid stage's floor and copy rate use these 5 of the 24 train images
    rc = _eval_tiny_model(tmp_path, {"batch_size": n, "lpips": False, "precision": "fp32"},
                          extra=("--recon-train-dir", str(tmp_path / "recon_train"), "--recon-train-n", str(n)))
    m = json.loads((tmp_path / "recon.json").read_text())
    assert rc == 0 and m["n_recon_train"] == n and m["recon_train_dir"] == str(tmp_path / "recon_train")
    written = np.stack([load_png(p) for p in sorted((tmp_path / "recon_train").glob("*.png"))])
    picked = np.asarray(read_split(tmp_path / "train").images)[evenly_spaced(24, n)]
    model = load_vqgan(tmp_path / "model").eval()
    with torch.no_grad():
        want = to_uint8(model.decode_indices(model.encode_to_indices(to_tensor(picked, "cpu"))))
    assert written.shape == (n, 16, 16, 3) and np.abs(written.astype(int) - want).max() <= 1, "not those train images"
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")], "a temporary folder was left behind"
    # without the flag nothing is written, and recon.json says so
    (tmp_path / "plain").mkdir()
    assert _eval_tiny_model(tmp_path / "plain", {"lpips": False}) == 0
    plain = json.loads((tmp_path / "plain" / "recon.json").read_text())
    assert plain["n_recon_train"] is None and plain["recon_train_dir"] is None


def test_recon_json_schema_grid_and_recon_pngs(tmp_path):
    res, n_val = 16, 10
    rc = _eval_tiny_model(tmp_path, {"grid_images": 4, "batch_size": 3}, res, n_val)
    out_json, out_png, recon = tmp_path / "recon.json", tmp_path / "recon.png", tmp_path / "recon"
    assert rc == 0
    m = json.loads(out_json.read_text())
    numbers = ["psnr", "psnr_baseline_mean", "psnr_baseline_median", "mae", "mae_baseline_mean",
               "mae_baseline_median", "usage", "perplexity"]
    for k in numbers:
        assert isinstance(m[k], float) and np.isfinite(m[k]), f"recon.json[{k!r}] = {m.get(k)!r}"
    assert m["n_images"] == n_val and m["n_train_images"] == 24 and m["n_codes"] == 16
    assert 1 <= m["codes_used"] <= 16 and m["usage"] == m["codes_used"] / 16
    assert m["lpips"] is None or isinstance(m["lpips"], float)
    if m["lpips"] is None:
        assert m["lpips_unavailable"], "a missing LPIPS must say why"
    # grid: 3 rows (original / reconstruction / |difference|) x 4 columns, 16 px scaled x4 with 2 px padding, and
    # left of them a column naming each row
    png = load_png(out_png)
    label_width = png.shape[1] - (4 * (64 + 2) + 2)
    assert png.shape[0] == 3 * (64 + 2) + 2 and 40 < label_width < 200, png.shape
    labels = png[:, :label_width].min(-1) < 128  # dark text on white
    assert all(labels[2 + i * 66: 66 + i * 66].any() for i in range(3)), "a row without its label"
    pngs = sorted(recon.glob("*.png"))
    assert len(pngs) == n_val and load_png(pngs[0]).shape == (res, res, 3)


@pytest.mark.parametrize("on", [True, False])
def test_lpips_off_by_config_is_not_loaded_and_says_so(tmp_path, monkeypatch, on):
    from vqgan.eval import recon as recon_module

    calls = []
    monkeypatch.setattr(recon_module, "load_lpips", lambda *a: calls.append(a) or (None, "no weights here"))
    assert _eval_tiny_model(tmp_path, {"lpips": on}) == 0
    m = json.loads((tmp_path / "recon.json").read_text())
    assert len(calls) == int(on) and m["lpips"] is None and m["eval_config"]["lpips"] is on
    assert m["lpips_unavailable"] == ("no weights here" if on else "off (vqgan.eval.lpips: false)")
    with pytest.raises(ValueError, match="invalid vqgan.eval"):
        recon_module.EvalConfig.from_dict({"lpips": "yes"})


def test_eval_in_bf16_records_it_and_stays_close_to_fp32(tmp_path):
    got = {}
    for precision in ("fp32", "bf16"):
        (tmp_path / precision).mkdir()
        assert _eval_tiny_model(tmp_path / precision, {"precision": precision, "lpips": False}) == 0
        got[precision] = json.loads((tmp_path / precision / "recon.json").read_text())
        assert got[precision]["eval_config"]["precision"] == got[precision]["precision"] == precision
    # the same random model on the same frames: bf16 autocast moves the PSNR by far less than a dB ...
    assert got["bf16"]["psnr"] == pytest.approx(got["fp32"]["psnr"], abs=0.2)
    assert got["bf16"]["psnr_baseline_mean"] == got["fp32"]["psnr_baseline_mean"]  # baselines are not the model's
    # ... and the reconstructions themselves are near-identical
    a = np.stack([load_png(p) for p in sorted((tmp_path / "fp32" / "recon").glob("*.png"))])
    b = np.stack([load_png(p) for p in sorted((tmp_path / "bf16" / "recon").glob("*.png"))])
    assert psnr_per_image(b, a).mean() > 30
    with pytest.raises(ValueError, match="vqgan.eval.precision='fp16'"):
        EvalConfig.from_dict({"precision": "fp16"})


@pytest.mark.parametrize("cpu_bf16,want", [("no", "fp32"), ("yes", "bf16")])
def test_eval_records_what_auto_gave_on_this_cpu(tmp_path, monkeypatch, cpu_bf16, want):
    monkeypatch.setenv("VQGAN_HARDWARE", f"cpu_bf16={cpu_bf16}")
    assert _eval_tiny_model(tmp_path, {"precision": "auto", "lpips": False}, n_val=4) == 0
    m = json.loads((tmp_path / "recon.json").read_text())
    assert m["precision"] == want and m["eval_config"]["precision"] == "auto"


def test_baselines_are_per_class_when_labels_are_given():
    # Two "games" with different constant screens: a pooled mean image is a blend that any model beats,
    # the per-class mean image is exact. Each val image must be compared with its own class's baseline.
    rng = np.random.default_rng(0)
    screens = np.array([40, 200], np.uint8)
    train_labels = np.repeat([0, 1], 20)
    val_labels = np.array([0, 1, 1, 0, 1, 0])
    train = np.broadcast_to(screens[train_labels][:, None, None, None], (40, 8, 8, 3)).copy()
    val = np.broadcast_to(screens[val_labels][:, None, None, None], (6, 8, 8, 3)).copy()
    val[:, :2, :2] = rng.integers(0, 255, (6, 2, 2, 3))  # a small "sprite"
    cfg = EvalConfig.from_dict(dict(grid_images=0))
    pooled, _ = evaluate(Identity(), val, train, cfg)
    per, _ = evaluate(Identity(), val, train, cfg, val_labels=val_labels, train_labels=train_labels,
                      class_names=["a", "b"])
    assert per["psnr_baseline_mean"] > pooled["psnr_baseline_mean"] + 10
    assert set(per["per_class"]) == {"a", "b"}
    assert per["per_class"]["a"]["n_images"] == 3 and per["per_class"]["b"]["n_images"] == 3
    assert per["per_class"]["a"]["psnr_gain_over_mean_db"] == pytest.approx(
        per["per_class"]["a"]["psnr"] - per["per_class"]["a"]["psnr_baseline_mean"])
    assert "per class" in per["baselines"] and "per_class" not in pooled


def test_levels_of_a_game_are_scored_against_the_games_and_their_own_mean_image():
    # Game "a" has two levels (two mazes: backgrounds 40 and 120), game "b" one; val also holds a third level of
    # "a" (background 220) that the training split never reached -- the frames a memorising tokenizer fails on.
    screens = {(0, 0): 40, (0, 1): 120, (0, 2): 220, (1, 0): 200}
    train_key = [(0, 0)] * 10 + [(0, 1)] * 10 + [(1, 0)] * 10
    val_key = [(0, 0), (0, 1), (0, 1), (0, 2), (1, 0), (1, 0)]

    def frames(keys):
        return np.stack([np.full((8, 8, 3), screens[k], np.uint8) for k in keys])

    train, val = frames(train_key), frames(val_key)
    labels = lambda keys: np.array([c for c, _ in keys])  # noqa: E731
    levels = lambda keys: np.array([lv for _, lv in keys])  # noqa: E731
    cfg = EvalConfig.from_dict(dict(grid_images=0))
    m, _ = evaluate(Constant(np.full((8, 8, 3), 120, np.uint8)), val, train, cfg, val_labels=labels(val_key),
                    train_labels=labels(train_key), class_names=["a", "b"], val_levels=levels(val_key),
                    train_levels=levels(train_key))
    per_level = m["per_class"]["a"]["per_level"]
    assert set(per_level) == {"0", "1", "2"} and "per_level" not in m["per_class"]["b"]  # "b" shows one level
    assert [per_level[k]["n_images"] for k in "012"] == [1, 2, 1]
    assert [per_level[k]["n_train_images"] for k in "012"] == [10, 10, 0]
    # the game's mean image is the blend of its two mazes (80); each maze's own mean image is exact
    game_mean = psnr_per_image(np.full((8, 8, 3), 80.0), val[:1]).mean()
    assert per_level["0"]["psnr_baseline_mean"] == pytest.approx(game_mean)
    assert per_level["0"]["psnr_baseline_level_mean"] == PSNR_CAP_DB
    assert per_level["2"]["psnr_baseline_level_mean"] is None  # never in training: no such constant
    # the model (a constant 120 screen) is exact on maze 1 only
    assert per_level["1"]["psnr"] == PSNR_CAP_DB and per_level["0"]["psnr"] < 20
    assert per_level["1"]["psnr_gain_over_mean_db"] == pytest.approx(PSNR_CAP_DB - per_level["1"]["psnr_baseline_mean"])
    # a one-game dataset (game "a" alone) has no per_class: its levels are at the top
    a_train, a_val = [k for k in train_key if k[0] == 0], [k for k in val_key if k[0] == 0]
    one, _ = evaluate(Identity(), frames(a_val), frames(a_train), cfg, val_levels=levels(a_val),
                      train_levels=levels(a_train))
    assert "per_class" not in one and set(one["per_level"]) == {"0", "1", "2"}
    assert one["per_level"]["2"]["psnr_baseline_level_mean"] is None and one["per_level"]["1"]["n_train_images"] == 10
    assert one["per_level"]["0"]["psnr_baseline_mean"] == pytest.approx(game_mean)
    assert "level 2" in format_report({**one, "lpips": None, "objects": {"unavailable_reason": "none"},
                                       "codebook_images": 4, "codes_used": 1, "n_codes": 2, "usage": 0.5})
    # without levels (COCO, or an old dataset) there is no breakdown
    m, _ = evaluate(Identity(), val, train, cfg, val_labels=labels(val_key), train_labels=labels(train_key),
                    class_names=["a", "b"])
    assert "per_level" not in m["per_class"]["a"]



def test_reconstructions_are_snapped_onto_the_training_palette_when_asked(tmp_path):
    # the train frames have two colours (background, sprite); at max_distance 255 every decoded pixel of an untrained
    # model becomes one of them, in the val reconstructions and in the train ones the copy test compares with
    from vqgan.data.palette import colour_keys

    rc = _eval_tiny_model(tmp_path, {"lpips": False, "precision": "fp32"}, palette={"max_distance": 255},
                          extra=("--recon-train-dir", str(tmp_path / "recon_train"), "--recon-train-n", "4"))
    m = json.loads((tmp_path / "recon.json").read_text())
    assert rc == 0 and m["palette"]["colours"] == 2 and m["palette"]["max_distance"] == 255
    assert 0 < m["palette"]["changed_share"] <= 1
    train_colours = set(colour_keys(sprite_video(24, 16).reshape(-1, 3)).tolist())
    for folder in ("recon", "recon_train"):
        pngs = sorted((tmp_path / folder).glob("*.png"))
        decoded = set(colour_keys(np.stack([load_png(p) for p in pngs]).reshape(-1, 3)).tolist())
        assert pngs and decoded <= train_colours, f"{folder}: colours outside the palette {decoded - train_colours}"
    (tmp_path / "off").mkdir()
    assert _eval_tiny_model(tmp_path / "off", {"lpips": False}, palette={"max_distance": 0}) == 0
    assert json.loads((tmp_path / "off" / "recon.json").read_text())["palette"] is None
