"""vqgan.data.palette: the training split's colours, and decoded frames snapped onto them."""
from __future__ import annotations

import numpy as np
import pytest

from vqgan.config.sections import PaletteConfig
from vqgan.data.palette import Snapper, colour_keys, fit_palette, snap

BLUE, WALL, BALL = (24, 26, 167), (228, 111, 111), (200, 72, 72)


def frames(n: int = 6, res: int = 8) -> np.ndarray:
    """A blue field, a wall row, and a one-pixel ball: three colours with shares ~0.86 / 0.125 / 0.016."""
    f = np.empty((n, res, res, 3), np.uint8)
    f[:] = BLUE
    f[:, 0] = WALL
    f[:, 4, 4] = BALL
    return f


def test_palette_keeps_the_colours_above_the_share_most_frequent_first():
    assert [tuple(c) for c in fit_palette(frames(), 1e-3)] == [BLUE, WALL, BALL]
    assert [tuple(c) for c in fit_palette(frames(), 0.05)] == [BLUE, WALL]  # the ball covers 1.6%
    with pytest.raises(ValueError, match="min_share"):
        fit_palette(frames(), 0.0)


def test_snap_restores_colours_within_the_distance_and_leaves_the_rest():
    clean = frames()
    rng = np.random.default_rng(0)
    noisy = np.clip(clean.astype(int) + rng.integers(-3, 4, clean.shape), 0, 255).astype(np.uint8)
    blend = (100, 100, 100)  # an edge's mix of colours: far from every palette colour
    noisy[:, 7, 7] = blend
    out, changed = snap(noisy, fit_palette(clean, 1e-3), max_distance=3)
    want = clean.copy()
    want[:, 7, 7] = blend
    assert np.array_equal(out, want)
    assert changed == pytest.approx((noisy != want).any(-1).mean())
    # a distance smaller than the noise leaves the far pixels as they were
    out2, _ = snap(noisy, fit_palette(clean, 1e-3), max_distance=1)
    far = np.abs(noisy.astype(int) - clean).max(-1) > 1
    assert np.array_equal(out2[far], noisy[far]) and np.array_equal(out2[~far & (noisy != blend).any(-1)],
                                                                     clean[~far & (noisy != blend).any(-1)])


def test_snap_off_returns_the_frames_and_checks_them():
    f = frames()
    out, changed = snap(f, fit_palette(f, 1e-3), 0)
    assert out is f and changed == 0.0
    with pytest.raises(ValueError, match="uint8"):
        snap(f.astype(np.float32), fit_palette(f, 1e-3), 3)


def test_snapper_fit_counts_what_it_moved():
    assert Snapper.fit(frames(), 0, 1e-4) is None
    s = Snapper.fit(frames(), 2, 0.05)
    noisy = frames()
    noisy[:, 2, 2] = (25, 26, 166)
    assert np.array_equal(s(noisy), frames()) and len(s.palette) == 2
    assert s.summary() == {"colours": 2, "max_distance": 2, "min_share": 0.05,
                           "changed_share": pytest.approx(1 / 64)}
    assert set(colour_keys(s(noisy).reshape(-1, 3)).tolist()) <= set(colour_keys(frames().reshape(-1, 3)).tolist())


def test_palette_config_takes_the_schema_defaults_and_refuses_bad_keys_and_values():
    assert PaletteConfig.from_dict(None) == PaletteConfig(max_distance=0, min_share=1e-4)
    assert not PaletteConfig.from_dict({}).on and PaletteConfig.from_dict({"max_distance": 12}).on
    with pytest.raises(ValueError, match="unknown vqgan.palette keys"):
        PaletteConfig.from_dict({"max_distanse": 3})
    for bad in ({"max_distance": -1}, {"max_distance": 2.5}, {"min_share": 0}, {"min_share": "1e-4"}):
        with pytest.raises(ValueError, match="invalid vqgan.palette"):
            PaletteConfig.from_dict(bad)
