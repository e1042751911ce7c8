"""Reconstruction evaluation: baselines from the training split only, foreground mask, recon.json / recon.png."""
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
    foreground_mask,
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
    """A 'model' whose reconstructions are exact: PSNR must hit the cap and foreground error must be 0."""

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
    cfg = EvalConfig(grid_images=2, batch_size=7)
    for val in (sprite_video(10, seed=1), np.full((10, 16, 16, 3), 200, np.uint8)):
        m, _ = evaluate(Identity(), val, train, cfg)
        # the baselines are predictions made from train, scored on these val images: recompute independently
        assert m["psnr_baseline_mean"] == pytest.approx(psnr_per_image(train.mean(0), val).mean())
        assert m["psnr_baseline_median"] == pytest.approx(psnr_per_image(np.median(train, 0), val).mean())
        assert m["psnr"] == PSNR_CAP_DB and m["mae"] == 0.0
    # and they change when train changes, with val fixed
    other, _ = evaluate(Identity(), val, sprite_video(40, seed=0, sprite=False) + 30, cfg)
    assert other["psnr_baseline_mean"] != pytest.approx(m["psnr_baseline_mean"])


def test_foreground_mask_empty_for_constant_video_and_not_for_moving_sprite():
    still = sprite_video(20, sprite=False)
    _, median = train_baselines(still)
    assert not foreground_mask(still, median, 16).any()
    moving = sprite_video(20, seed=2)
    _, median = train_baselines(moving)
    mask = foreground_mask(moving, median, 16)
    assert mask.any(axis=(1, 2)).all(), "every frame has a sprite off the median background"
    assert mask.mean() == pytest.approx(16 / 256, rel=0.3)  # about one 4x4 sprite per 16x16 frame

    m, _ = evaluate(Identity(), still, still, EvalConfig(grid_images=0))
    assert m["fg_fraction"] == 0.0 and m["fg_mae"] is None and m["fg_mae_baseline_mean"] is None
    m, _ = evaluate(Identity(), sprite_video(12, seed=3), moving, EvalConfig(grid_images=0))
    assert m["fg_fraction"] > 0
    assert m["fg_mae"] == 0.0 and m["fg_mae_baseline_median"] > 100, "the median background misses the sprite"


def test_recon_json_schema_grid_and_recon_pngs(tmp_path):
    from vqgan.models.vqgan import VQGAN, VQGANConfig

    res, n_val = 16, 10
    meta = lambda n: pd.DataFrame({"source_id": range(n)})  # noqa: E731
    write_split(tmp_path / "train", sprite_video(24, res), meta(24), {"source": "test"})
    write_split(tmp_path / "val", sprite_video(n_val, res, seed=5), meta(n_val), {"source": "test"})
    torch.manual_seed(0)
    cfg = VQGANConfig.from_dict({"model": {"ch": 8, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [],
                                           "z_channels": 8}, "quantizer": {"kind": "l2", "n_codes": 16,
                                                                           "code_dim": 4}, "resolution": res})
    save_model(VQGAN(cfg), tmp_path / "model")
    out_json, out_png, recon = tmp_path / "recon.json", tmp_path / "recon.png", tmp_path / "recon"
    rc = main(["--model", str(tmp_path / "model"), "--data", str(tmp_path / "val"), "--train-data",
               str(tmp_path / "train"), "--out-json", str(out_json), "--out-png", str(out_png), "--recon-dir",
               str(recon), "--config", json.dumps({"eval": {"grid_images": 4, "batch_size": 3}}),
               "--weights-dir", str(tmp_path / "no-weights"), "--device", "cpu"])
    assert rc == 0
    m = json.loads(out_json.read_text())
    numbers = ["psnr", "psnr_baseline_mean", "psnr_baseline_median", "mae", "mae_baseline_mean",
               "mae_baseline_median", "fg_fraction", "fg_mae", "fg_mae_baseline_mean", "fg_mae_baseline_median",
               "fg_psnr", "fg_psnr_baseline_mean", "fg_psnr_baseline_median", "usage", "perplexity"]
    for k in numbers:
        assert isinstance(m[k], float) and np.isfinite(m[k]), f"recon.json[{k!r}] = {m.get(k)!r}"
    assert m["n_images"] == n_val and m["n_train_images"] == 24 and m["n_codes"] == 16
    assert 1 <= m["codes_used"] <= 16 and m["usage"] == m["codes_used"] / 16
    assert m["lpips"] is None or isinstance(m["lpips"], float)
    if m["lpips"] is None:
        assert m["lpips_unavailable"], "a missing LPIPS must say why"
    # grid: 3 rows (original / reconstruction / |difference|) x 4 columns, 16 px scaled x4 with 2 px padding
    assert load_png(out_png).shape == (3 * (64 + 2) + 2, 4 * (64 + 2) + 2, 3)
    pngs = sorted(recon.glob("*.png"))
    assert len(pngs) == n_val and load_png(pngs[0]).shape == (res, res, 3)


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
    cfg = EvalConfig(grid_images=0)
    pooled, _ = evaluate(Identity(), val, train, cfg)
    per, _ = evaluate(Identity(), val, train, cfg, val_labels=val_labels, train_labels=train_labels,
                      class_names=["a", "b"])
    assert per["psnr_baseline_mean"] > pooled["psnr_baseline_mean"] + 10
    assert set(per["per_class"]) == {"a", "b"}
    assert per["per_class"]["a"]["n_images"] == 3 and per["per_class"]["b"]["n_images"] == 3
    # the sprite is the only foreground against each class's own median screen
    assert per["fg_fraction"] == pytest.approx(4 / 64)
    assert "per class" in per["baselines"] and "per_class" not in pooled
