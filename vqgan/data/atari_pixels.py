"""Game objects in ALE screens, shared by the Atari collector and eval: boxes, the games' palettes, and the objects
found from the pixels alone (for frames without RAM, e.g. eval sets of saved screens).

The collector's RAM rules (atari_collect/objects.py, docs/objects.md) give the same GameObject boxes from the
emulator's RAM; this module needs no emulator, only numpy.

Coordinates. A box is (x0, y0, x1, y1) in native screen pixels (210 rows x 160 columns of ale.getScreenRGB()),
x to the right, y down, HALF-OPEN: the object covers columns x0..x1-1 and rows y0..y1-1, so
`screen[y0:y1, x0:x1]` is its patch and x1 - x0 its width. `to_dataset_boxes` maps boxes into a dataset image
(crop, then resize); `draw_boxes` outlines them.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from vqgan.data.atari_screen import NATIVE_H, NATIVE_W

RGB = tuple[int, int, int]


class GameObject(NamedTuple):
    cls: str                 # one of the game's classes (atari_collect.objects.object_classes)
    id: int                  # instance within its class (ghost 0-3, brick row * 18 + column, otherwise 0)
    box: tuple               # (x0, y0, x1, y1), half-open; ints in native pixels, floats after to_dataset_boxes
    visible: bool | None = None  # drawn on this frame (from the screen); None when no screen was given


def object_rom(game: str) -> str:
    """'MsPacman', 'ms_pacman', 'ALE/MsPacman-v5' -> 'ms_pacman' (or the name itself when it has no object rules)."""
    key = game.removeprefix("ALE/").split("-v")[0].replace("_", "").lower()
    return {"mspacman": "ms_pacman", "pong": "pong", "breakout": "breakout"}.get(key, game)


# ---------------------------------------------------------------------------------------------------- palettes
# The exact colours each game draws its objects in (ale-py 0.12.1 frames; docs/objects.md).
MSPACMAN_GHOST_RGB: tuple[RGB, ...] = ((180, 122, 48), (84, 184, 153), (198, 89, 179), (200, 72, 72))
MSPACMAN_FRIGHTENED_RGB: tuple[RGB, ...] = ((66, 114, 194), (214, 214, 214))  # blue, and white while it flashes
MSPACMAN_PLAYER_RGB: RGB = (210, 164, 74)
MSPACMAN_FRUIT_RGB: tuple[RGB, ...] = ((184, 50, 50), (198, 108, 58), (162, 162, 42), (110, 156, 66))  # by fruit
# The court is rows 34..193 (white walls above and below, same colour as the ball); paddles slide under the walls.
PONG_FIELD = (0, 34, NATIVE_W, 194)
PONG_RGB: dict[str, RGB] = {"player": (92, 186, 92), "enemy": (213, 130, 74), "ball": (236, 236, 236)}
BREAKOUT_RED: RGB = (200, 72, 72)  # paddle, ball and the top brick row
BREAKOUT_ROW_RGB: tuple[RGB, ...] = ((200, 72, 72), (198, 108, 58), (180, 122, 48), (162, 162, 42), (72, 160, 72),
                                     (66, 72, 200))  # top to bottom


# ---------------------------------------------------------------------------------------------------- dataset coords
def to_dataset_box(box: Sequence[float], crop: Sequence[int] | None, resolution: int,
                   outward: bool = False) -> tuple | None:
    """One native box -> the dataset image's pixel coordinates, or None when the crop leaves nothing of it.

    The dataset image is `cv2.resize(frame[top:top+h, left:left+w], (R, R), INTER_AREA)` (atari_screen.crop_resize) with
    crop = [top, left, h, w] or None (the full 210x160). Native pixel column c covers [c, c+1); the resize maps that
    to [c * R/w, (c+1) * R/w), so the half-open box scales as is. Returns floats (x0, y0, x1, y1), half-open; with
    `outward`, ints rounded outward (floor x0/y0, ceil x1/y1): every dataset pixel the object touches, even in part.
    """
    top, left, h, w = (0, 0, NATIVE_H, NATIVE_W) if crop is None else crop
    x0, y0, x1, y1 = box
    x0, x1 = max(x0 - left, 0), min(x1 - left, w)
    y0, y1 = max(y0 - top, 0), min(y1 - top, h)
    if x0 >= x1 or y0 >= y1:
        return None
    sx, sy = resolution / w, resolution / h
    out = (x0 * sx, y0 * sy, x1 * sx, y1 * sy)
    if outward:
        # the epsilon keeps float noise (e.g. 0.30000000000000004 * 10) from adding a whole pixel
        return (int(np.floor(out[0] + 1e-9)), int(np.floor(out[1] + 1e-9)),
                int(np.ceil(out[2] - 1e-9)), int(np.ceil(out[3] - 1e-9)))
    return out


def to_dataset_boxes(boxes: Sequence[GameObject], crop: Sequence[int] | None, resolution: int,
                     outward: bool = False) -> list[GameObject]:
    """`to_dataset_box` for every object; objects the crop removes entirely are dropped."""
    out = []
    for o in boxes:
        b = to_dataset_box(o.box, crop, resolution, outward)
        if b is not None:
            out.append(o._replace(box=b))
    return out


# ---------------------------------------------------------------------------------------------------- drawing
# One outline colour per class position in the game's class list (player, ghost, fruit / player, enemy, ball / ...).
BOX_COLOURS: tuple[RGB, ...] = ((255, 255, 255), (0, 255, 0), (255, 0, 255), (0, 255, 255), (255, 255, 0))


def draw_boxes(image: np.ndarray, objects: Sequence[GameObject], classes: Sequence[str],
               outside: bool = True) -> np.ndarray:
    """A copy of `image` (H, W, 3) uint8 with a 1-px outline per object, coloured by its class's index in `classes`.

    Boxes are in the image's own pixel coordinates (float boxes are rounded outward). With `outside` the outline runs
    just outside the box, so it never hides the object's own pixels; otherwise on the box's border pixels. Objects
    with `visible` False (not drawn on this frame, e.g. a flickered ghost) get a dotted outline.
    """
    img = image.copy()
    H, W = img.shape[:2]
    for o in objects:
        x0, y0 = int(np.floor(o.box[0] + 1e-9)), int(np.floor(o.box[1] + 1e-9))
        x1, y1 = int(np.ceil(o.box[2] - 1e-9)) - 1, int(np.ceil(o.box[3] - 1e-9)) - 1  # inclusive last pixel
        if outside:
            x0, y0, x1, y1 = x0 - 1, y0 - 1, x1 + 1, y1 + 1
        colour = BOX_COLOURS[classes.index(o.cls) % len(BOX_COLOURS)]
        step = 2 if o.visible is False else 1
        xs, ys = np.arange(max(x0, 0), min(x1, W - 1) + 1, step), np.arange(max(y0, 0), min(y1, H - 1) + 1, step)
        for y in (y0, y1):  # top and bottom edges, where they fall inside the image
            if 0 <= y < H:
                img[y, xs] = colour
        for x in (x0, x1):
            if 0 <= x < W:
                img[ys, x] = colour
    return img


# ---------------------------------------------------------------------------------------------------- from pixels
# For frames without RAM (external frame sets: saved screens): objects found by their exact palette colours.
# Measured against the RAM rules on random play (tests/test_object_truth.py): only what is found reliably is found:
# Ms. Pac-Man's player and (not frightened) ghosts, Pong's paddles and ball, Breakout's paddle, bricks and the ball
# outside the red top brick row. Not found: frightened ghosts (one colour for four), the fruit, a Breakout ball
# inside the red brick row. Boxes are the tight box of the colour's pixels (RAM boxes are the sprite's full box).
PIXEL_RULES: dict[str, tuple[tuple[str, int, RGB, tuple[int, int, int, int]], ...]] = {
    # (class, id, colour, field (x0, y0, x1, y1) searched)
    "ms_pacman": (("player", 0, MSPACMAN_PLAYER_RGB, (0, 0, NATIVE_W, 172)),
                  *(("ghost", g, rgb, (0, 0, NATIVE_W, 172)) for g, rgb in enumerate(MSPACMAN_GHOST_RGB))),
    "pong": tuple((cls, 0, PONG_RGB[cls], PONG_FIELD) for cls in ("player", "enemy", "ball")),
    "breakout": (("paddle", 0, BREAKOUT_RED, (8, 189, 152, 193)), ("ball", 0, BREAKOUT_RED, (8, 63, 152, 189))),
}


def has_pixel_rules(game: str) -> bool:
    """Whether `detect_objects_from_pixels` knows this game."""
    return object_rom(game) in PIXEL_RULES


def detect_objects_from_pixels(game: str, screen: np.ndarray, min_pixels: int = 2) -> list[GameObject]:
    """The objects on a native (210, 160, 3) screen found by colour alone (see PIXEL_RULES), all `visible`."""
    rom = object_rom(game)
    if rom not in PIXEL_RULES:
        raise KeyError(f"no pixel rules for Atari game {game!r}; games with pixel rules: {', '.join(PIXEL_RULES)}")
    if screen.shape != (NATIVE_H, NATIVE_W, 3):
        raise ValueError(f"screen must be the native ({NATIVE_H}, {NATIVE_W}, 3) RGB frame, got {screen.shape}")
    objs = []
    for cls, id, rgb, (fx0, fy0, fx1, fy1) in PIXEL_RULES[rom]:
        ys, xs = np.nonzero((screen[fy0:fy1, fx0:fx1] == np.asarray(rgb, screen.dtype)).all(-1))
        if len(ys) >= min_pixels:
            box = (fx0 + int(xs.min()), fy0 + int(ys.min()), fx0 + int(xs.max()) + 1, fy0 + int(ys.max()) + 1)
            objs.append(GameObject(cls, id, box, True))
    if rom == "breakout":  # a brick is there when its 8x6 cell is filled with its row's colour
        for row, rgb in enumerate(BREAKOUT_ROW_RGB):
            y0 = 57 + 6 * row
            cells = (screen[y0:y0 + 6, 8:152] == np.asarray(rgb, screen.dtype)).all(-1).reshape(6, 18, 8)
            for col in np.flatnonzero(cells.all(axis=(0, 2))):
                x0 = 8 + 8 * int(col)
                objs.append(GameObject("brick", 18 * row + int(col), (x0, y0, x0 + 8, y0 + 6), True))
    return objs
