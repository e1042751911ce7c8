"""Object-level truth for Atari frames: where every game object is, read from the emulator's RAM.

Games: Ms. Pac-Man (`ms_pacman`), Pong (`pong`), Breakout (`breakout`). `detect_objects(rom, ram)` turns the 128
RAM bytes into boxes (GameObject); vqgan.data.atari_pixels, shared with eval, holds the boxes, the games' palettes,
`to_dataset_boxes` (into a dataset image: crop, then resize), `draw_boxes` and the detectors from pixels alone.
`python -m atari_collect.objects --grid out.png` plays each game and saves frames with their boxes.

Source of the RAM facts. The addresses come from OCAtari (PyPI `ocatari` 2.2.1, github.com/k4ntz/OC_Atari, MIT
licence, files `ocatari/ram/{mspacman,pong,breakout}.py`); only the facts (which byte holds what) are taken, the
code here is our own. Every offset, size and presence rule below was re-derived against the pixels of ale-py 0.12.1
frames (the mode of sprite-edge minus RAM value over thousands of frames, then checked frame by frame; the tests in
tests/test_atari_objects.py repeat the check). Where we differ from OCAtari:
- Ms. Pac-Man sprites are 8 px wide starting at ram_x - 12 (OCAtari: 9 px from ram_x - 13); its ghost rule also
  left every ghost at (0, 0) (it sets the position on the object it has just replaced).
- Ms. Pac-Man's screen is drawn from the RAM of one emulator frame earlier (positions are updated after drawing):
  pass the RAM read *before* the frame's last emulator step (`ram_lag`, `frames_with_ram`). With the RAM read
  after the step the box is ahead of the sprite by its last frame's motion: 0 / 1 / 2 px on 49 / 33 / 18% of
  sprite-frames (random play). Pong and Breakout draw the current RAM (lag 0).
- Ms. Pac-Man ghosts are not drawn while byte 25 is 0 (the ~42 frames of a death), nor the fruit while byte 34 is 0
  (it moves on but is hidden, e.g. while an eaten ghost's eyes go home); OCAtari reports both.
- Pong's right paddle is drawn on even rows only (top = (ram_y - 13) rounded down to even); the ball's top row is
  ram_y - 14 on 85% of frames and one row higher on the rest, with no RAM byte we found to tell which, so its box is
  5 rows tall to cover both. Breakout's bricks: bytes 0-35 hold the playfield bits, two bits per 8-px brick; the
  bit-to-brick map was found by clearing each bit (ale.setRAM) and looking at which brick vanished.

Coordinates: half-open boxes in native screen pixels (vqgan.data.atari_pixels). Boxes are clipped to the screen
(or, where a wall hides part of a sprite, to the visible field); objects entirely off screen or not drawn by the
game (Breakout's ball before the serve, Ms. Pac-Man's fruit when there is none) are omitted.

Flicker. Ms. Pac-Man multiplexes its ghosts: on any one frame some are not drawn (each ghost shows on ~45-90% of
frames, for at most 5 frames in a row hidden; never all four at once). The RAM cannot tell which, so ghosts are
always reported while in play; pass the screen to `detect_objects` to get `visible`, which says whether the box
shows the object's colours on this frame.

Not covered: the score/lives HUD, Ms. Pac-Man's dots and power pills (static maze items), Breakout's half-width
paddle (after the ball reaches the back wall; random play never gets there, so it is unverified). Ms. Pac-Man's
mazes 2-4 are checked only by forcing byte 0 (the layout changes, the wall colour does not), and only the cherry
has been seen among the fruits (the other fruit colours, used by `visible`, are OCAtari's).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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
    GameObject,
    draw_boxes,
    object_rom,
    to_dataset_box,
)
from vqgan.data.atari_screen import NATIVE_H, NATIVE_W


def _clip(cls: str, id: int, x0: int, y0: int, x1: int, y1: int,
          field: tuple[int, int, int, int] = (0, 0, NATIVE_W, NATIVE_H)) -> list[GameObject]:
    """[the object] with its box clipped to `field` (x0, y0, x1, y1), or [] when nothing of it is left."""
    fx0, fy0, fx1, fy1 = field
    x0, y0, x1, y1 = max(x0, fx0), max(y0, fy0), min(x1, fx1), min(y1, fy1)
    return [GameObject(cls, id, (x0, y0, x1, y1))] if x0 < x1 and y0 < y1 else []


# ---------------------------------------------------------------------------------------------------- Ms. Pac-Man
# All sprites (player, ghosts, fruit) are 8x10 boxes at (ram_x - 12, ram_y + 1); bytes 6-9 / 12-15 are the ghosts'
# x / y in the fixed order orange, cyan, pink, red; 10 / 16 the player; 11 / 17 the fruit (0 / 0 when there is none).


def _mspacman_sprite(cls: str, id: int, ram_x: int, ram_y: int) -> list[GameObject]:
    x0, y0 = ram_x - 12, ram_y + 1
    return _clip(cls, id, x0, y0, x0 + 8, y0 + 10, field=(0, 0, NATIVE_W, 172))  # the maze ends at row 172


def _mspacman(ram: np.ndarray) -> list[GameObject]:
    r = ram.tolist()  # plain ints: no uint8 wrap-around in the offsets, JSON-ready boxes
    objs = _mspacman_sprite("player", 0, r[10], r[16])
    if r[25] != 0:  # 0 during a death: the ghosts vanish for ~42 frames
        for g in range(4):
            objs += _mspacman_sprite("ghost", g, r[6 + g], r[12 + g])
    if r[34] != 0 and r[11] != 0 and r[17] != 0:  # 34: 0 while the fruit is hidden (e.g. as a ghost's eyes go home)
        objs += _mspacman_sprite("fruit", 0, r[11], r[17])
    return objs


def _mspacman_colours(obj: GameObject) -> tuple[RGB, ...]:
    if obj.cls == "ghost":
        return (MSPACMAN_GHOST_RGB[obj.id],) + MSPACMAN_FRIGHTENED_RGB
    return (MSPACMAN_PLAYER_RGB,) if obj.cls == "player" else MSPACMAN_FRUIT_RGB


# ---------------------------------------------------------------------------------------------------- Pong
# The court is PONG_FIELD (vqgan.data.atari_pixels); the paddles slide under its walls.
def _pong(ram: np.ndarray) -> list[GameObject]:
    r = ram.tolist()  # plain ints: no uint8 wrap-around in the offsets, JSON-ready boxes
    top = (r[51] - 13) & ~1  # the right (green, agent's) paddle: 16 rows, drawn on even rows only
    objs = _clip("player", 0, 140, top, 144, top + 16, PONG_FIELD)
    objs += _clip("enemy", 0, 16, r[50] - 15, 20, r[50] + 1, PONG_FIELD)  # left (orange) paddle, 16 rows
    if r[54] != 0 and r[49] != 0:  # 0 between points
        x0 = r[49] - 49
        objs += _clip("ball", 0, x0, r[54] - 15, x0 + 2, r[54] - 10, PONG_FIELD)  # 2x4 ball, top row +-1: 5 rows
    return objs


# ---------------------------------------------------------------------------------------------------- Breakout
# The field between the grey side walls is columns 8..151. Bricks: 6 rows of 18, 8x6 px, the top-left one at (8, 57).
BREAKOUT_FIELD = (8, 0, 152, NATIVE_H)
# Byte 6*g + k (k = 0..5) holds brick row 5 - k; within it, bit pair p (bits 2p, 2p+1) is the brick in column
# _BRICK_COLUMNS[g][p] (None: unused). This is the playfield register layout (PF0/PF1/PF2, left and right halves).
_BRICK_COLUMNS: tuple[tuple[int | None, ...], ...] = (
    (15, 16, 17, None),
    (14, 13, 12, 11),
    (None, None, 9, 10),
    (5, 6, 7, 8),
    (4, 3, 2, 1),
    (None, None, None, 0),
)


def _breakout(ram: np.ndarray) -> list[GameObject]:
    r = ram.tolist()  # plain ints: no uint8 wrap-around in the offsets, JSON-ready boxes
    x0 = r[72] - 47  # 16-px paddle on rows 189..192; it slides under the right wall
    objs = _clip("paddle", 0, x0, 189, x0 + 16, 193, BREAKOUT_FIELD)
    if r[101] != 0:  # 0 before the serve
        x0, y0 = r[99] - 49, r[101] + 9  # 2x4 ball; below the paddle it shows down to row 194 (row 195 on ~1 in 5)
        objs += _clip("ball", 0, x0, y0, x0 + 2, y0 + 4, (BREAKOUT_FIELD[0], 0, BREAKOUT_FIELD[2], 196))
    for g, columns in enumerate(_BRICK_COLUMNS):
        for k in range(6):
            row, byte = 5 - k, r[6 * g + k]
            for p, col in enumerate(columns):
                if col is not None and (byte >> (2 * p)) & 3:
                    x0, y0 = 8 + 8 * col, 57 + 6 * row
                    objs.append(GameObject("brick", 18 * row + col, (x0, y0, x0 + 8, y0 + 6)))
    return objs


def _breakout_colours(obj: GameObject) -> tuple[RGB, ...]:
    return (BREAKOUT_ROW_RGB[obj.id // 18],) if obj.cls == "brick" else (BREAKOUT_RED,)


# ---------------------------------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class GameRules:
    classes: tuple[str, ...]                          # fixed per game, so eval can report absent classes as such
    detect: Callable[[np.ndarray], list[GameObject]]  # ram (128,) uint8 -> objects on screen
    colours: Callable[[GameObject], tuple[RGB, ...]]  # the palette values the object is drawn in
    ram_lag: int                                      # emulator frames the picture lags the RAM (see frames_with_ram)


RULES: dict[str, GameRules] = {
    "ms_pacman": GameRules(("player", "ghost", "fruit"), _mspacman, _mspacman_colours, ram_lag=1),
    "pong": GameRules(("player", "enemy", "ball"), _pong, lambda o: (PONG_RGB[o.cls],), ram_lag=0),
    "breakout": GameRules(("paddle", "ball", "brick"), _breakout, _breakout_colours, ram_lag=0),
}


def has_object_rules(game: str) -> bool:
    """Whether `detect_objects` knows this game (ROM id like 'ms_pacman' or config name like 'MsPacman')."""
    return object_rom(game) in RULES


def object_classes(game: str) -> tuple[str, ...]:
    """The game's fixed class list, e.g. ('player', 'ghost', 'fruit') for Ms. Pac-Man."""
    return _rules(game).classes


def ram_lag(game: str) -> int:
    """Emulator frames between the RAM that `detect_objects` wants and the screen: 1 = read RAM before the last act."""
    return _rules(game).ram_lag


def _rules(game: str) -> GameRules:
    rom = object_rom(game)
    if rom not in RULES:
        raise KeyError(f"no object rules for Atari game {game!r}; games with rules: {', '.join(RULES)}")
    return RULES[rom]


def detect_objects(game: str, ram: np.ndarray, screen: np.ndarray | None = None,
                   min_pixels: int = 2) -> list[GameObject]:
    """The objects on screen, from the 128 RAM bytes (`ale.getRAM()`) the frame was drawn from (see `ram_lag`).

    With `screen` ((210, 160, 3) uint8, `ale.getScreenRGB()`), each object's `visible` says whether its box holds
    at least `min_pixels` pixels of its palette colours on this frame (False for a flickered-out ghost).
    """
    rules = _rules(game)
    ram = np.asarray(ram)
    if ram.shape != (128,):
        raise ValueError(f"ram must be the 128 bytes of ale.getRAM(), got shape {ram.shape}")
    objs = rules.detect(ram)
    if screen is None:
        return objs
    if screen.shape != (NATIVE_H, NATIVE_W, 3):
        raise ValueError(f"screen must be the native ({NATIVE_H}, {NATIVE_W}, 3) RGB frame, got {screen.shape}")
    return [o._replace(visible=colour_pixels(screen, o.box, rules.colours(o)) >= min_pixels) for o in objs]


def colour_pixels(screen: np.ndarray, box: Sequence[int], colours: Sequence[RGB]) -> int:
    """How many pixels of `screen[y0:y1, x0:x1]` are exactly one of `colours`."""
    x0, y0, x1, y1 = box
    patch = screen[y0:y1, x0:x1].reshape(-1, 1, 3)
    return int((patch == np.asarray(colours, dtype=screen.dtype)[None]).all(-1).any(-1).sum())


def object_colours(game: str, obj: GameObject) -> tuple[RGB, ...]:
    """The palette values `obj` is drawn in (several for frightened ghosts and fruits)."""
    return _rules(game).colours(obj)


# ---------------------------------------------------------------------------------------------------- recording
# The per-frame object table the collectors write beside a dataset split (vqgan/data/dataset.py: objects.csv).
RECORD_COLUMNS = ("frame", "class", "id", "x0", "y0", "x1", "y1", "visible")
# One recorded object as a fixed-size record (`class` as the index into the game's class list). Recorders append
# these to a file beside the stream's frames, and the split writer streams them into objects.csv, so no table of
# all objects is held in memory: Breakout has ~109 objects a frame, 7 KB a frame in this form.
RECORD_DTYPE = np.dtype([("frame", "<i8"), ("class", "<i8"), ("id", "<i8"), ("x0", "<f8"), ("y0", "<f8"),
                         ("x1", "<f8"), ("y1", "<f8"), ("visible", "<i8")])
RECORD_CHUNK = 1 << 16  # records held before they go to the file, and read back at a time (4 MB)
# Classes whose RAM rule agrees with the screen on every frame (Breakout's bricks: 810000 of 810000 cells, see
# docs/objects.md): `visible` is taken as True without counting pixels, which would cost ~4 ms per Breakout frame.
_ALWAYS_DRAWN = {("breakout", "brick")}


class ObjectRecorder:
    """Object boxes of one stream of frames, in the dataset image's pixel coordinates (after crop and resize).

    `add(frame, ram, screen)` per recorded frame, with the RAM the screen was drawn from (Emulator.drawn_ram) and
    the native screen (for `visible`); `frame` numbers the stream's frames. A game without RAM rules records
    nothing (`active` False). Records (RECORD_DTYPE) go to the file `path` every RECORD_CHUNK objects, so memory
    does not grow with the stream; without a path they stay in memory. `records()` reads them back in chunks.
    """

    def __init__(self, game: str, crop: Sequence[int] | None, resolution: int, path: str | os.PathLike | None = None):
        self.game, self.crop, self.resolution = game, crop, resolution
        self.active = has_object_rules(game)
        self.classes = object_classes(game) if self.active else ()
        self.path = Path(path) if path is not None and self.active else None
        if self.path is not None:
            self.path.write_bytes(b"")  # a fresh scratch file (records are appended), not an output
        self._buffer: np.ndarray | None = None  # made at the first object: a game without rules needs none
        self._n = 0  # records in the buffer
        self._kept: list[np.ndarray] = []  # full buffers, without a path

    def add(self, frame: int, ram: np.ndarray, screen: np.ndarray) -> None:
        if not self.active:
            return
        rom = object_rom(self.game)
        for o in detect_objects(rom, ram):
            box = to_dataset_box(o.box, self.crop, self.resolution)
            if box is None:  # cropped away
                continue
            # the pixel count is on the native screen, in the native box
            visible = (rom, o.cls) in _ALWAYS_DRAWN or colour_pixels(screen, o.box, object_colours(rom, o)) >= 2
            if self._buffer is None:
                self._buffer = np.empty(RECORD_CHUNK, RECORD_DTYPE)
            self._buffer[self._n] = (frame, self.classes.index(o.cls), o.id, *box, int(visible))
            self._n += 1
            if self._n == RECORD_CHUNK:
                self.flush()

    def flush(self) -> None:
        """Move the buffered records to the file (or, without one, to the records kept in memory)."""
        if not self._n:
            return
        if self.path is None:
            self._kept.append(self._buffer[: self._n].copy())
        else:
            with open(self.path, "ab") as f:
                f.write(self._buffer[: self._n].tobytes())
        self._n = 0

    def records(self) -> Iterator[np.ndarray]:
        """All records so far, in recording order, as RECORD_DTYPE arrays of at most RECORD_CHUNK."""
        self.flush()
        yield from read_records(self.path) if self.path is not None else iter(self._kept)


def read_records(path: str | os.PathLike, chunk: int = RECORD_CHUNK) -> Iterator[np.ndarray]:
    """The records (RECORD_DTYPE) of a file written by an ObjectRecorder, `chunk` at a time."""
    with open(path, "rb") as f:
        while len(block := np.fromfile(f, dtype=RECORD_DTYPE, count=chunk)):
            yield block


def record_table(records: np.ndarray, classes: Sequence[str]):
    """Records as a pandas DataFrame with RECORD_COLUMNS (`class` as its name in `classes`, the game's list)."""
    import pandas as pd

    return pd.DataFrame({
        "frame": records["frame"],
        "class": np.asarray(tuple(classes) or ("",), dtype=object)[records["class"]],
        **{k: records[k] for k in ("id", "x0", "y0", "x1", "y1", "visible")},
    }, columns=list(RECORD_COLUMNS))


# ---------------------------------------------------------------------------------------------------- playing
def frames_with_ram(game: str, steps: int, seed: int = 0, frame_skip: int = 4,
                    hold: int = 8) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Play `steps` random steps of `frame_skip` frames and yield (screen, ram) after each: the screen as a fresh
    (210, 160, 3) array and the RAM it was drawn from (read `ram_lag(game)` emulator frames before the screen).

    Each uniformly drawn action is kept for `hold` steps: Ms. Pac-Man then runs along corridors instead of jittering,
    eats dots and so brings out the fruit (~step 450 with hold 8). New game on game over. Needs ale-py; deterministic.
    """
    import ale_py
    from ale_py import roms

    lag = ram_lag(game)
    if not 0 <= lag <= frame_skip:
        raise ValueError(f"frame_skip {frame_skip} is below the RAM lag {lag}")
    ale = ale_py.ALEInterface()
    ale.setLoggerMode(ale_py.LoggerMode.Error)
    ale.setInt("random_seed", seed)
    ale.setFloat("repeat_action_probability", 0.0)  # no sticky actions: plain random play is enough here
    ale.loadROM(roms.get_rom_path(object_rom(game)))
    ale.reset_game()
    actions = ale.getMinimalActionSet()
    rng = np.random.default_rng(seed)
    for t in range(steps):
        if t % hold == 0:
            a = actions[rng.integers(len(actions))]
        ram = None
        for k in range(frame_skip):
            if k == frame_skip - lag:
                ram = ale.getRAM()
            ale.act(a)
        if ram is None:
            ram = ale.getRAM()
        yield ale.getScreenRGB(), ram
        if ale.game_over():
            ale.reset_game()


def grid(path: str, steps: int = 600, per_game: int = 12, scale: int = 3, seed: int = 0) -> None:
    """Save a PNG: one row per game of `per_game` frames (every steps/per_game-th step), boxes drawn, upscaled."""
    from PIL import Image

    from vqgan.io.files import atomic_file

    rows = []
    for game in RULES:
        every = max(steps // per_game, 1)
        tiles = []
        for t, (screen, ram) in enumerate(frames_with_ram(game, every * per_game, seed)):
            if t % every != every - 1:
                continue
            big = screen.repeat(scale, 0).repeat(scale, 1)  # nearest upscale: outlines land between native pixels
            objs = detect_objects(game, ram, screen)  # with the screen: flickered-out objects get dotted outlines
            scaled = [o._replace(box=tuple(v * scale for v in o.box)) for o in objs]
            tiles.append(np.pad(draw_boxes(big, scaled, object_classes(game)), ((2, 2), (2, 2), (0, 0))))
        rows.append(np.concatenate(tiles, 1))
    atomic_file(path, lambda p: Image.fromarray(np.concatenate(rows, 0)).save(p))


def main(argv: list[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(prog="python -m atari_collect.objects", description=__doc__.split("\n\n")[0])
    p.add_argument("--grid", required=True, metavar="PNG", help="write a grid of random-play frames with boxes")
    p.add_argument("--steps", type=int, default=600, help="random steps per game (frame skip 4)")
    p.add_argument("--per-game", type=int, default=12, help="frames per game (one row each)")
    p.add_argument("--scale", type=int, default=3, help="nearest-neighbour upscale of each frame")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    grid(a.grid, a.steps, a.per_game, a.scale, a.seed)
    print(f"wrote {a.grid}")


if __name__ == "__main__":
    main()
