"""Which object classes an Atari frame at the dataset's resolution shows, from its pixels alone.

Generated samples have no RAM, and object recall (vqgan/eval/object_scores.py) needs the RAM boxes of the very
frame it scores. To say whether a sample *contains the game* (Ms. Pac-Man, a ghost, the ball) this module finds
each object class in any dataset-resolution frame, real or generated; `vqgan.eval.sample_objects` validates it
against the RAM boxes on real frames (precision and recall per class, docs/objects.md).

Why not the exact colours of `atari_pixels.detect_objects_from_pixels`: at 64 px a Pong ball is 0.8 x 1.2 pixels,
INTER_AREA blends it with the court behind it, and a decoder moves colours further. So each pixel o is read as a
mixture of a class colour c and the background b behind the objects:

    o = a * c + (1 - a) * b,   a = clip((o - b) . (c - b) / |c - b|^2, 0, 1)

counted only where o - b points at c (the residual off that line is small), so a pixel that changed towards
another colour does not count. The background is the training frames' median with every RAM object box masked
out, per game and per level (Ms. Pac-Man's mazes; a frame takes the nearest level's). A frame shows a class when
some window the size of the class's typical box (the median RAM box of the training split, plus one pixel for an
object that straddles pixel borders) holds a coverage sum of at least `threshold` x that box's area. Each class's
threshold is the one that best matches RAM presence on the training split (F1), so the val split's scores are
held out. Numpy only: data code, no model.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd

from vqgan.data.atari_pixels import (
    BREAKOUT_RED,
    BREAKOUT_ROW_RGB,
    MSPACMAN_FRIGHTENED_RGB,
    MSPACMAN_FRUIT_RGB,
    MSPACMAN_GHOST_RGB,
    MSPACMAN_PLAYER_RGB,
    PONG_FIELD,
    PONG_RGB,
    RGB,
    object_rom,
    to_dataset_box,
)
from vqgan.data.atari_screen import NATIVE_W

# The residual a counted pixel may have off the background-to-colour line: a fixed part (decoder noise, 0-255)
# and a part proportional to the colour step it explains (INTER_AREA rounding on strong edges).
RESIDUAL_ABS, RESIDUAL_REL = 24.0, 0.25
# A pixel counts only where the colour covers at least this share of it: a decoder's faint tint of the background
# (a few percent, everywhere) must not add up to an object over a window; a real object's main pixel, even a Pong
# ball of 0.8 x 1.2 pixels at 64 px, is covered more than this.
MIN_SHARE = 0.2
# How much better (residual, 0-255, at full coverage) a class colour must explain a pixel than any rival (coverage)
RIVAL_MARGIN = 10.0
# A colour this close to the background cannot be told from it (e.g. Breakout's red ball over the red brick row).
MIN_CONTRAST = 30.0
THRESHOLDS = np.round(np.arange(0.15, 0.96, 0.05), 2)  # candidates for a class's threshold (share of box area)
DEFAULT_THRESHOLD = 0.5  # a class the training split never shows keeps this
# An object-sized window counts only when it holds this share of the coverage around it, when the ring around it
# differs from the background by at most CONTEXT_MAX (mean absolute, 0-255), and for a wall when at least SOLID of
# its pixels are half covered (window_max)
ISOLATION = 0.6
CONTEXT_MAX = 20.0
SOLID = 0.8


@dataclass(frozen=True)
class ClassRule:
    colours: tuple[RGB, ...]             # every colour the class is drawn in
    field: tuple[int, int, int, int]     # native (x0, y0, x1, y1), half-open: where it can be
    # against the empty field's colour instead of the background image: for a class that is almost always there
    # (Breakout's bricks), which the median of the training frames therefore holds
    on_empty: bool = False
    # a compact thing on its own (window_max's isolation test); not for a wall of adjacent instances (bricks)
    isolated: bool = True


PLAY_AREA = (0, 0, NATIVE_W, 172)  # Ms. Pac-Man's maze (the HUD below it draws lives in the player's colour)
PRESENCE_RULES: dict[str, dict[str, ClassRule]] = {
    "ms_pacman": {
        "player": ClassRule((MSPACMAN_PLAYER_RGB,), PLAY_AREA),
        "ghost": ClassRule(MSPACMAN_GHOST_RGB + MSPACMAN_FRIGHTENED_RGB, PLAY_AREA),
        "fruit": ClassRule(MSPACMAN_FRUIT_RGB, PLAY_AREA),
    },
    "pong": {cls: ClassRule((PONG_RGB[cls],), PONG_FIELD) for cls in ("player", "enemy", "ball")},
    "breakout": {
        "paddle": ClassRule((BREAKOUT_RED,), (8, 189, 152, 193)),
        # stops 3 rows above the paddle (same red): at 64 px the paddle tints the row above its own
        "ball": ClassRule((BREAKOUT_RED,), (8, 63, 152, 186)),
        "brick": ClassRule(BREAKOUT_ROW_RGB, (8, 57, 152, 93), on_empty=True, isolated=False),
    },
}


# Games that draw items in the maze's own colour which come and go (Ms. Pac-Man's dots and power pills: eaten, they
# are not in every frame, so not always in the median background). The maze colour is then a rival of every class:
# a dot in the green maze is not a pear of the same green.
MAZE_ITEMS = {"ms_pacman"}


def has_presence_rules(game: str) -> bool:
    return object_rom(game) in PRESENCE_RULES


def field_slices(box: Sequence[int], crop: Sequence[int] | None, resolution: int) -> tuple[slice, slice] | None:
    """A native field -> (rows, cols) slices of the dataset image, edges rounded to the nearest pixel (a pixel
    more than half inside counts), or None when the crop removes it."""
    b = to_dataset_box(box, crop, resolution)
    if b is None:
        return None
    x0, y0, x1, y1 = (int(np.floor(v + 0.5)) for v in b)
    return (slice(y0, max(y1, y0 + 1)), slice(x0, max(x1, x0 + 1)))


def coverage(images: np.ndarray, background: np.ndarray, colours: Sequence[RGB],
             rivals: Sequence[RGB] = ()) -> np.ndarray:
    """(N, H, W, 3) frames, (.., H or 1, W or 1, 3) background -> (N, H, W) float32 share of each pixel covered
    by `colours` (see the module docstring). A pixel counts only where one of `colours` explains it better, by
    RIVAL_MARGIN, than any of `rivals` (the game's other classes' colours, the maze's): a pixel where an orange
    paddle tints the court is the paddle's, though it is also a little brighter, as a white ball would make it;
    a decoded ghost whose orange drifted halfway to the strawberry's is neither's fruit."""
    o = images.astype(np.float32) - background

    def fit(rgb):
        d = np.asarray(rgb, np.float32) - background              # (.., H, W, 3): background -> colour
        dd = (d * d).sum(-1)
        a = np.clip((o * d).sum(-1) / np.maximum(dd, 1.0), 0.0, 1.0)
        residual = np.sqrt(((o - a[..., None] * d) ** 2).sum(-1))
        ok = (residual <= RESIDUAL_ABS + RESIDUAL_REL * a * np.sqrt(dd)) & (dd >= MIN_CONTRAST**2) & (a > 0)
        return a, np.where(ok, residual, np.inf)

    best_a = np.zeros(images.shape[:3], np.float32)
    best = np.full(images.shape[:3], np.inf, np.float32)
    for rgb in colours:
        a, residual = fit(rgb)
        better = residual < best
        best, best_a = np.where(better, residual, best), np.where(better, a, best_a)
    rival = np.full(images.shape[:3], np.inf, np.float32)
    for rgb in rivals:
        rival = np.minimum(rival, fit(rgb)[1])
    # the margin scales with the share: in a faint blend every colour's residual is small
    mine = np.isfinite(best) & (best + RIVAL_MARGIN * best_a < rival)
    return np.where(mine & (best_a >= MIN_SHARE), best_a, 0.0).astype(np.float32)


def window_sums(x: np.ndarray, wh: tuple[int, int], margin: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W) -> the sums over every (h, w) window inside it, (N, H - h + 1, W - w + 1), and over the same
    windows grown by `margin` pixels on every side (zeros beyond the edges), from one summed-area table."""
    n, H, W = x.shape
    h, w, m = min(wh[1], H), min(wh[0], W), margin
    sat = np.zeros((n, H + 2 * m + 1, W + 2 * m + 1), np.float64)
    sat[:, m + 1:m + H + 1, m + 1:m + W + 1] = x.cumsum(1).cumsum(2)
    sat[:, m + H + 1:, m + 1:m + W + 1] = sat[:, m + H:m + H + 1, m + 1:m + W + 1]  # the zero padding, summed
    sat[:, :, m + W + 1:] = sat[:, :, m + W:m + W + 1]

    def sums(y0: int, x0: int, hh: int, ww: int) -> np.ndarray:
        ys, xs = slice(y0, y0 + H - h + 1), slice(x0, x0 + W - w + 1)
        ye, xe = slice(y0 + hh, y0 + hh + H - h + 1), slice(x0 + ww, x0 + ww + W - w + 1)
        return sat[:, ye, xe] - sat[:, ys, xe] - sat[:, ye, xs] + sat[:, ys, xs]

    return sums(m, m, h, w), sums(0, 0, h + 2 * m, w + 2 * m)


def window_max(cov: np.ndarray, wh: tuple[int, int], margin: int = 0, deviation: np.ndarray | None = None,
               isolated: bool = True) -> np.ndarray:
    """(N, H, W) coverage -> (N,) the largest coverage sum of an object-sized (h, w) window that looks like one.

    An object (`isolated`) is compact and stands on the background: its window must hold at least ISOLATION of the
    coverage in the window grown by `margin` pixels (a decoder's smear of a colour spreads beyond any object-sized
    window), and the ring around it must differ from the background by at most CONTEXT_MAX on average (`deviation`:
    (N, H, W) mean |frame - background| over the channels; noise, or a frame that is not this game's, has colours
    of every class everywhere); the ring is the part of the grown window inside the field. A wall of adjacent
    instances (bricks) is not isolated: its window must be solid instead, at least SOLID of its pixels half
    covered, and look like the background there (which holds the wall the training frames show)."""
    h, w = min(wh[1], cov.shape[1]), min(wh[0], cov.shape[2])
    inner, grown = window_sums(cov, wh, margin)
    if isolated:
        ok = inner >= ISOLATION * grown - 1e-9
        if deviation is not None:
            # the ring's pixels the class's own colour does not explain (a paddle wider than the typical box, a
            # second ghost beside the first, are not a bad context)
            free = (cov == 0).astype(np.float32)
            f_inner, f_grown = window_sums(free, wh, margin)
            r_inner, r_grown = window_sums(deviation * free, wh, margin)
            ok &= (r_grown - r_inner) / np.maximum(f_grown - f_inner, 1) <= CONTEXT_MAX
    else:
        ok = window_sums((cov >= 0.5).astype(np.float32), wh)[0] >= SOLID * h * w - 1e-9
        if deviation is not None:  # ... and where the training frames' wall is (the median keeps what is there)
            ok &= window_sums(deviation, wh)[0] / (h * w) <= CONTEXT_MAX
    return np.where(ok, inner, 0.0).reshape(len(cov), -1).max(1)


@dataclass
class GameDetector:
    """One game's fitted detector: its level backgrounds and, per class, box size and threshold."""

    game: str
    backgrounds: np.ndarray                       # (L, R, R, 3) float32, one per level (object-free medians)
    empty: np.ndarray                             # (L, 3) float32: each level's empty-field colour
    maze: np.ndarray                              # (L, 3) float32: each level's most common other colour
    sizes: dict[str, tuple[float, float]]         # class -> median (w, h) of its RAM boxes, dataset pixels
    fields: dict[str, tuple[slice, slice]]        # class -> where it is searched
    thresholds: dict[str, float] = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        return list(self.sizes)

    def scores(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """(N, R, R, 3) uint8 frames -> class -> (N,) best window coverage / the class's box area."""
        images = np.asarray(images)
        # each frame against its nearest level background (Ms. Pac-Man's four mazes; one for the other games)
        dist = np.stack([np.abs(images.astype(np.float32) - bg).mean((1, 2, 3)) for bg in self.backgrounds], 1)
        level = dist.argmin(1)
        rom = object_rom(self.game)
        rules = PRESENCE_RULES[rom]
        rivals = {cls: [c for other, rule in rules.items() if other != cls for c in rule.colours
                        if c not in rules[cls].colours] for cls in self.sizes}
        out = {cls: np.zeros(len(images)) for cls in self.sizes}
        for lv in np.unique(level):  # a level at a time: the maze colour is one of the rivals
            at = np.flatnonzero(level == lv)
            level_images = images[at]
            maze = [tuple(self.maze[lv].tolist())] if rom in MAZE_ITEMS else []
            for cls, (w, h) in self.sizes.items():
                rows, cols = self.fields[cls]
                bg = self.empty[lv] if rules[cls].on_empty else self.backgrounds[lv][rows, cols]
                frames = level_images[:, rows, cols]
                cov = coverage(frames, bg, rules[cls].colours, [*rivals[cls], *maze])
                deviation = np.abs(frames.astype(np.float32) - self.backgrounds[lv][rows, cols]).mean(-1)
                margin = max(2, int(round(0.5 * max(w, h))))
                out[cls][at] = window_max(cov, (int(np.ceil(w)) + 1, int(np.ceil(h)) + 1), margin, deviation,
                                          rules[cls].isolated) / max(w * h, 1e-6)
        return out

    def detect(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """class -> (N,) bool: the frame shows it."""
        return {cls: s >= self.thresholds.get(cls, DEFAULT_THRESHOLD) for cls, s in self.scores(images).items()}


def ram_presence(objects: pd.DataFrame | None, n: int, classes: Sequence[str],
                 fields: dict[str, tuple[slice, slice]]) -> dict[str, np.ndarray]:
    """class -> (n,) bool: RAM says a drawn instance (visible != 0) of the class overlaps its field in the frame."""
    out = {cls: np.zeros(n, bool) for cls in classes}
    if objects is None or not len(objects):
        return out
    obj = objects[objects["visible"] != 0] if "visible" in objects.columns else objects
    for cls in classes:
        rows, cols = fields[cls]
        o = obj[obj["class"] == cls]
        inside = ((o["x1"] > cols.start) & (o["x0"] < cols.stop) & (o["y1"] > rows.start) & (o["y0"] < rows.stop))
        frames = o.loc[inside, "frame"].to_numpy(np.int64)
        out[cls][frames[(frames >= 0) & (frames < n)]] = True
    return out


def object_free_backgrounds(images: np.ndarray, objects: pd.DataFrame | None, levels: np.ndarray | None,
                            max_frames: int = 400, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Per level, from up to `max_frames` of its frames: (L, R, R, 3) float32 backgrounds, the median with every
    object box (rounded outward) masked out, where a pixel that an object covers in every frame (a brick never
    broken) keeps the plain median, so what is always there is background; and (L, 3) the empty-field colour,
    the median colour of the pixels objects left uncovered."""
    rng = np.random.default_rng(seed)
    levels = np.zeros(len(images), np.int64) if levels is None else np.asarray(levels)
    out, empty = [], []
    for lv in np.unique(levels):
        idx = np.flatnonzero(levels == lv)
        idx = np.sort(rng.choice(idx, min(max_frames, len(idx)), replace=False))
        frames = np.asarray(images[idx], np.float32)
        plain = np.median(frames, axis=0)
        if objects is not None and len(objects):
            where = {f: i for i, f in enumerate(idx.tolist())}
            o = objects[objects["frame"].isin(where)]
            for f, x0, y0, x1, y1 in o[["frame", "x0", "y0", "x1", "y1"]].itertuples(index=False):
                frames[where[int(f)], int(np.floor(y0)):int(np.ceil(y1)), int(np.floor(x0)):int(np.ceil(x1))] = np.nan
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels: filled below
            bg = np.nanmedian(frames, axis=0)
        empty.append(np.nanmedian(bg.reshape(-1, 3), axis=0))
        out.append(np.where(np.isnan(bg), plain, bg).astype(np.float32))
    return np.stack(out), np.stack(empty).astype(np.float32)


def maze_colours(backgrounds: np.ndarray, empty: np.ndarray, rows: slice, cols: slice) -> np.ndarray:
    """(L, 3): per level, the most common colour of the background inside (rows, cols) other than the empty
    field's (the maze's walls, where its dots take their colour from)."""
    out = []
    for bg, e in zip(backgrounds, empty):
        px = np.round(bg[rows, cols].reshape(-1, 3)).astype(np.int64)
        px = px[np.abs(px - e).sum(1) > MIN_CONTRAST]
        if not len(px):
            out.append(e)
            continue
        colours, counts = np.unique(px, axis=0, return_counts=True)
        out.append(colours[counts.argmax()])
    return np.asarray(out, np.float32)


def fit_game(game: str, images: np.ndarray, objects: pd.DataFrame | None, levels: np.ndarray | None,
             crop: Sequence[int] | None, max_fit_frames: int = 1000, seed: int = 0) -> GameDetector:
    """A game's detector from its training frames (`images` of this game only, `objects` indexed into them):
    backgrounds, box sizes, and each class's threshold by F1 against RAM presence on up to `max_fit_frames`."""
    rom = object_rom(game)
    if rom not in PRESENCE_RULES:
        raise KeyError(f"no presence rules for Atari game {game!r}; games with rules: {', '.join(PRESENCE_RULES)}")
    resolution = int(images.shape[1])
    fields = {cls: field_slices(rule.field, crop, resolution) for cls, rule in PRESENCE_RULES[rom].items()}
    fields = {cls: f for cls, f in fields.items() if f is not None}
    sizes = {}
    for cls in fields:
        o = objects[objects["class"] == cls] if objects is not None and len(objects) else None
        if o is not None and "visible" in o.columns:
            o = o[o["visible"] != 0]
        if o is None or not len(o):
            continue  # a class the training split never shows cannot be sized: not detected
        sizes[cls] = (float((o["x1"] - o["x0"]).median()), float((o["y1"] - o["y0"]).median()))
    backgrounds, empty = object_free_backgrounds(images, objects, levels, seed=seed)
    # the maze colour is looked for where the classes are (Ms. Pac-Man: the maze, not the HUD below it)
    area = tuple(slice(min((f[k].start for f in fields.values()), default=0),
                       max((f[k].stop for f in fields.values()), default=resolution)) for k in (0, 1))
    det = GameDetector(game, backgrounds, empty, maze_colours(backgrounds, empty, *area), sizes, fields)
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(images), min(max_fit_frames, len(images)), replace=False))
    sub = reindex_objects(objects, idx)
    truth = ram_presence(sub, len(idx), det.classes, fields)
    for cls, s in det.scores(np.asarray(images[idx])).items():
        det.thresholds[cls] = best_threshold(s, truth[cls])
    return det


def best_threshold(scores: np.ndarray, truth: np.ndarray, tolerance: float = 0.005) -> float:
    """The threshold (of THRESHOLDS) in the middle of those whose F1 of `scores >= t` against `truth` is within
    `tolerance` of the best. The middle, not the lowest: on clean real frames a wide range separates equally well,
    and a faint blob in a generated frame should not pass for the object because the lowest one was taken."""
    if not truth.any():
        return DEFAULT_THRESHOLD
    f1 = np.array([2 * float(((scores >= t) & truth).sum()) / max(int((scores >= t).sum() + truth.sum()), 1)
                   for t in THRESHOLDS])
    good = THRESHOLDS[f1 >= f1.max() - tolerance]
    return float(good[len(good) // 2])


def reindex_objects(objects: pd.DataFrame | None, idx: np.ndarray) -> pd.DataFrame | None:
    """The rows of `objects` whose frame is in `idx`, with frames renumbered to positions in `idx`."""
    if objects is None:
        return None
    pos = pd.Series(np.arange(len(idx)), index=idx)
    o = objects[objects["frame"].isin(pos.index)].copy()
    o["frame"] = pos.loc[o["frame"].to_numpy()].to_numpy()
    return o
