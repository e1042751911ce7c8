"""Object boxes from RAM (atari_collect/objects.py) checked against the pixels of real ALE frames.

Each game is played once per session (seeded random actions, frame skip 4; a few seconds in all) and every reported
box is checked against the screen. Two measures, per class:
- drawn: the box holds >= 2 pixels of the object's palette colours. Ghosts flicker (each is drawn on ~45-90% of
  frames), so they need 30%; every other class 95% (measured: 99-100%).
- tight: of the object's colour pixels in a window 4 px around the box (inside the game's field), all lie in the
  box. Counted on frames where the window shows any; a same-coloured neighbour (Breakout's ball beside the paddle)
  fails a frame, so 95% is asked. Any 1-px shift of a box drops this to <= 0.9 (test_a_one_pixel_shift_is_caught).
"""
from __future__ import annotations

import dataclasses
from collections import defaultdict

import numpy as np
import pytest

from atari_collect import objects as ob
from vqgan.data import atari_pixels as px

STEPS = {"ms_pacman": 600, "pong": 400, "breakout": 400}
SEED = 1  # Ms. Pac-Man: the fruit shows from step ~405 and hides (byte 34) around steps 480-515 as eaten ghosts go home
FIELD = {"ms_pacman": (0, 0, 160, 172), "pong": (0, 34, 160, 194), "breakout": (8, 0, 152, 210)}  # x0, y0, x1, y1
MIN_DRAWN = {"ghost": 0.3}  # flicker; other classes 0.95
MIN_TIGHT = 0.95


@pytest.fixture(scope="module")
def played() -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    pytest.importorskip("ale_py")
    return {game: list(ob.frames_with_ram(game, steps, SEED)) for game, steps in STEPS.items()}


def box_stats(game: str, frames, detect=None) -> dict[str, dict[str, float]]:
    """Per class: reported (frames x instances), drawn and tight rates (see the module docstring). Bricks excluded:
    neighbouring bricks share the colour, so they are checked cell by cell in test_bricks_are_the_drawn_wall."""
    detect = detect or (lambda ram: ob.detect_objects(game, ram))
    fx0, fy0, fx1, fy1 = FIELD[game]
    n = defaultdict(lambda: np.zeros(4, int))  # reported, drawn, tight-eligible, tight
    for screen, ram in frames:
        for o in detect(ram):
            if o.cls == "brick":
                continue
            x0, y0, x1, y1 = o.box
            wx0, wy0, wx1, wy1 = max(x0 - 4, fx0), max(y0 - 4, fy0), min(x1 + 4, fx1), min(y1 + 4, fy1)
            colours = np.array(ob.object_colours(game, o), dtype=np.uint8)
            mask = (screen[wy0:wy1, wx0:wx1, None] == colours[None, None]).all(-1).any(-1)
            inside = int(mask[max(y0 - wy0, 0):max(y1 - wy0, 0), max(x0 - wx0, 0):max(x1 - wx0, 0)].sum())
            total = int(mask.sum())
            c = n[o.cls]
            c += (1, inside >= 2, total >= 2, total >= 2 and inside == total)
    return {k: {"reported": int(c[0]), "drawn": c[1] / c[0], "tight": c[3] / max(c[2], 1)} for k, c in n.items()}


def failures(stats: dict[str, dict[str, float]]) -> list[str]:
    bad = []
    for cls, s in stats.items():
        if s["drawn"] < MIN_DRAWN.get(cls, 0.95):
            bad.append(f"{cls}: drawn in its box on {s['drawn']:.1%} of {s['reported']} reports")
        if s["tight"] < MIN_TIGHT:
            bad.append(f"{cls}: all its pixels inside the box on only {s['tight']:.1%} of frames")
    return bad


@pytest.mark.parametrize("game", list(STEPS))
def test_boxes_sit_on_the_drawn_sprites(played, game):
    stats = box_stats(game, played[game])
    expected = {"ms_pacman": {"player", "ghost", "fruit"}, "pong": {"player", "enemy", "ball"},
                "breakout": {"paddle", "ball"}}[game]
    assert expected <= set(stats), f"{game}: classes never reported in {STEPS[game]} steps: {expected - set(stats)}"
    assert not failures(stats), f"{game}: " + "; ".join(failures(stats)) + f"\n{stats}"


@pytest.mark.parametrize("game", list(STEPS))
def test_a_one_pixel_shift_is_caught(played, game):
    """The check has teeth: moving every box by one pixel in any direction fails it for every class."""
    def shifted(dx, dy):
        return lambda ram: [o._replace(box=(o.box[0] + dx, o.box[1] + dy, o.box[2] + dx, o.box[3] + dy))
                            for o in ob.detect_objects(game, ram)]

    for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        stats = box_stats(game, played[game], shifted(dx, dy))
        passing = [c for c, s in stats.items() if s["tight"] >= MIN_TIGHT]
        assert not passing, f"{game}: boxes shifted by ({dx}, {dy}) still pass for {passing}: {stats}"


@pytest.mark.parametrize("maze", [1, 2, 3])
def test_ms_pacman_boxes_hold_in_the_other_mazes(maze):
    """Random play never leaves maze 1, so byte 0 (maze index) is forced at each new game: the layout changes (the
    wall colour does not: the real later boards are not reproduced), and the boxes must still sit on the sprites."""
    ale_py = pytest.importorskip("ale_py")
    from ale_py import roms

    ale = ale_py.ALEInterface()
    ale.setLoggerMode(ale_py.LoggerMode.Error)
    ale.loadROM(roms.get_rom_path("ms_pacman"))
    ale.reset_game()
    ale.setRAM(0, maze)
    actions = ale.getMinimalActionSet()
    rng = np.random.default_rng(maze)
    frames = []
    for t in range(300):
        if t % 8 == 0:  # hold each action 8 steps, as frames_with_ram does
            a = actions[rng.integers(len(actions))]
        for k in range(4):
            if k == 3:
                ram = ale.getRAM()  # ram_lag 1: the RAM the last frame is drawn from
            ale.act(a)
        frames.append((ale.getScreenRGB(), ram))
        assert ram[0] == maze
    stats = box_stats("ms_pacman", frames)
    assert {"player", "ghost"} <= set(stats) and not failures(stats), f"maze {maze}: {failures(stats)}\n{stats}"


def test_ms_pacman_needs_the_ram_from_before_the_last_frame(monkeypatch):
    """Ms. Pac-Man draws the RAM of one frame earlier: the RAM read after the step misplaces moving ghosts."""
    pytest.importorskip("ale_py")
    monkeypatch.setitem(ob.RULES, "ms_pacman", dataclasses.replace(ob.RULES["ms_pacman"], ram_lag=0))
    stats = box_stats("ms_pacman", list(ob.frames_with_ram("ms_pacman", 300, SEED)))
    assert stats["ghost"]["tight"] < 0.8, stats


# Where a colour means exactly one object: (class, id) -> (colours, region x0, y0, x1, y1 of the screen)
UNIQUE_COLOUR = {
    "ms_pacman": {("player", 0): ([px.MSPACMAN_PLAYER_RGB], FIELD["ms_pacman"]),
                  ("fruit", 0): (list(px.MSPACMAN_FRUIT_RGB), FIELD["ms_pacman"]),
                  **{("ghost", g): ([px.MSPACMAN_GHOST_RGB[g]], FIELD["ms_pacman"]) for g in range(4)}},
    "pong": {(c, 0): ([px.PONG_RGB[c]], FIELD["pong"]) for c in ("player", "enemy", "ball")},
    "breakout": {("ball", 0): ([px.BREAKOUT_RED], (8, 93, 152, 189)),  # between the bricks and the paddle
                 ("paddle", 0): ([px.BREAKOUT_RED], (8, 189, 152, 193))},
}


def packed(rgb) -> np.ndarray:
    """RGB -> one int per pixel, so colour membership is one np.isin."""
    rgb = np.asarray(rgb, dtype=np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


@pytest.mark.parametrize("game", list(STEPS))
def test_every_drawn_sprite_is_reported(played, game):
    missed = defaultdict(int)
    drawn = defaultdict(int)
    for screen, ram in played[game]:
        reported = {(o.cls, o.id) for o in ob.detect_objects(game, ram)}
        screen = packed(screen)
        for key, (colours, (x0, y0, x1, y1)) in UNIQUE_COLOUR[game].items():
            if np.isin(screen[y0:y1, x0:x1], packed(colours)).any():
                drawn[key] += 1
                missed[key] += key not in reported
    bad = {k: f"{missed[k]}/{drawn[k]}" for k in drawn if missed[k] > 0.01 * drawn[k]}
    assert not bad, f"{game}: drawn on screen but not reported (frames): {bad}"


def brick_errors(screen: np.ndarray, ram: np.ndarray) -> int:
    """Breakout cells where 'reported' and 'filled with its row's colour' disagree."""
    present = [o.id for o in ob.detect_objects("breakout", ram) if o.cls == "brick"]
    cells = screen[57:93, 8:152].reshape(6, 6, 18, 8, 3)  # (row, y, column, x, rgb)
    filled = (cells == np.array(px.BREAKOUT_ROW_RGB, np.uint8)[:, None, None, None]).all(-1).all((1, 3))
    return int((filled.ravel() != np.isin(np.arange(108), present)).sum())


def test_bricks_are_the_drawn_wall(played):
    """Breakout: a brick is reported exactly where its 8x6 cell is filled with its row's colour, else none."""
    wrong = sum(brick_errors(screen, ram) for screen, ram in played["breakout"])
    assert wrong == 0, f"{wrong} brick cells disagree with the screen"


def test_bricks_follow_random_holes_in_the_wall():
    """Random play breaks few bricks, so also clear random halves of the brick bits (ale.setRAM) and compare."""
    ale_py = pytest.importorskip("ale_py")
    from ale_py import roms

    ale = ale_py.ALEInterface()
    ale.setLoggerMode(ale_py.LoggerMode.Error)
    ale.loadROM(roms.get_rom_path("breakout"))
    ale.reset_game()
    start = ale.cloneState()
    rng = np.random.default_rng(0)
    for trial in range(20):
        ale.restoreState(start)
        for byte in range(36):
            keep = sum(3 << 2 * p for p in range(4) if rng.random() < 0.5)  # whole bit pairs, as the game clears them
            ale.setRAM(byte, int(ale.getRAM()[byte]) & keep)
        ale.act(0)  # draw a frame from the new wall (ram_lag is 0)
        errors = brick_errors(ale.getScreenRGB(), ale.getRAM())
        assert errors == 0, f"trial {trial}: {errors} brick cells disagree with the screen"


def test_ms_pacman_reports_no_ghosts_while_none_is_drawn(played):
    """Flicker hides some ghosts on a frame, never all four; during a death all vanish and must not be reported."""
    reported_none_drawn = omitted = 0
    for screen, ram in played["ms_pacman"]:
        flags = [o.visible for o in ob.detect_objects("ms_pacman", ram, screen) if o.cls == "ghost"]
        omitted += not flags
        reported_none_drawn += bool(flags) and not any(flags)
    assert omitted > 0, "no death in the played frames: the test would not see ghosts reported while hidden"
    assert reported_none_drawn == 0, f"{reported_none_drawn} frames report ghosts but show none"


def test_visible_flags_flickered_ghosts(played):
    for screen, ram in played["ms_pacman"]:
        for o in ob.detect_objects("ms_pacman", ram, screen):
            assert o.visible == (ob.colour_pixels(screen, o.box, ob.object_colours("ms_pacman", o)) >= 2)
    flags = [o.visible for s, r in played["ms_pacman"] for o in ob.detect_objects("ms_pacman", r, s)
             if o.cls == "ghost"]
    assert 0.3 < np.mean(flags) < 0.95, "ghosts should flicker: some frames without them, most with"


def test_game_names_and_class_lists():
    assert ob.has_object_rules("ms_pacman") and ob.has_object_rules("MsPacman") and ob.has_object_rules("Pong")
    assert not ob.has_object_rules("space_invaders")
    assert ob.object_classes("ms_pacman") == ("player", "ghost", "fruit")
    assert ob.object_classes("ALE/Pong-v5") == ("player", "enemy", "ball")
    assert ob.object_classes("breakout") == ("paddle", "ball", "brick")
    with pytest.raises(KeyError, match="no object rules"):
        ob.object_classes("space_invaders")


def test_detect_objects_omits_what_is_not_there():
    ram = np.zeros(128, np.uint8)
    ram[72] = 100
    assert [o.cls for o in ob.detect_objects("breakout", ram)] == ["paddle"]  # no ball before the serve, no bricks
    ram[[10, 16]] = 60, 50  # Ms. Pac-Man at (48, 51); ghosts off (byte 25 = 0), no fruit (11/17 = 0)
    assert ob.detect_objects("ms_pacman", ram) == [px.GameObject("player", 0, (48, 51, 56, 61))]


# ---------------------------------------------------------------------------------------------------- dataset coords
@pytest.mark.parametrize("crop, resolution", [(None, 64), ([24, 0, 186, 160], 64), ([30, 10, 150, 140], 64),
                                              ([0, 0, 210, 160], 128), ([50, 40, 60, 60], 128)])
def test_dataset_boxes_cover_the_resized_rectangle(crop, resolution):
    """A coloured rectangle, cropped and resized as the dataset does: its outward-rounded mapped box is exactly
    the bounding box of the pixels it tints in the dataset image (INTER_AREA blends partly covered pixels)."""
    from vqgan.data.atari_screen import crop_resize

    rng = np.random.default_rng(0)
    for _ in range(50):
        x0, y0 = int(rng.integers(0, 150)), int(rng.integers(0, 200))
        box = (x0, y0, x0 + int(rng.integers(1, 12)), y0 + int(rng.integers(1, 12)))
        frame = np.zeros((210, 160, 3), np.uint8)
        frame[box[1]:box[3], box[0]:box[2]] = (255, 0, 0)
        tinted = crop_resize(frame, resolution, crop)[..., 0] > 0
        mapped = px.to_dataset_box(box, crop, resolution, outward=True)
        if not tinted.any():
            assert mapped is None, f"{box} is cropped away but mapped to {mapped}"
            continue
        ys, xs = np.nonzero(tinted)
        assert mapped == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1), f"box {box} crop {crop}"
        fx0, fy0, fx1, fy1 = px.to_dataset_box(box, crop, resolution)  # floats lie within the rounded box
        assert mapped[0] <= fx0 < fx1 <= mapped[2] and mapped[1] <= fy0 < fy1 <= mapped[3]


def test_to_dataset_boxes_clips_to_the_crop_and_drops_what_it_cuts():
    objs = [px.GameObject("ball", 0, (10, 5, 12, 9)),     # above the crop: dropped
            px.GameObject("player", 0, (0, 20, 8, 30)),   # straddles the crop's top edge: clipped
            px.GameObject("enemy", 0, (80, 100, 84, 116))]
    out = px.to_dataset_boxes(objs, [24, 0, 186, 160], 64)
    assert [o.cls for o in out] == ["player", "enemy"]
    sx, sy = 64 / 160, 64 / 186
    assert out[0].box == pytest.approx((0, 0, 8 * sx, 6 * sy))
    assert out[1].box == pytest.approx((80 * sx, 76 * sy, 84 * sx, 92 * sy))
    assert px.to_dataset_boxes(objs, None, 64)[0].box == pytest.approx((10 * sx, 5 * 64 / 210,
                                                                                    12 * sx, 9 * 64 / 210))


def test_draw_boxes_outlines_without_covering_the_object():
    img = np.zeros((20, 20, 3), np.uint8)
    out = px.draw_boxes(img, [px.GameObject("ghost", 0, (5, 6, 9, 10))], ("player", "ghost", "fruit"))
    green = (out == px.BOX_COLOURS[1]).all(-1)
    ring = np.zeros((20, 20), bool)
    ring[5:11, 4:10] = True
    ring[6:10, 5:9] = False  # the box itself stays untouched; the outline is the ring just outside it
    assert (green == ring).all()
    assert not img.any(), "draw_boxes must not modify its input"


def test_recorder_spills_to_its_file_and_reads_back_what_it_holds_in_memory(played, tmp_path, monkeypatch):
    """With a file, at most RECORD_CHUNK records wait in memory (Breakout: ~109 objects a frame, so a whole
    stream's would grow with it); the file holds the same records, in order, as a recorder without one."""
    monkeypatch.setattr(ob, "RECORD_CHUNK", 500)
    frames = played["breakout"][:40]
    spilled = ob.ObjectRecorder("breakout", [34, 0, 160, 160], 64, tmp_path / "s.objects")
    held = ob.ObjectRecorder("breakout", [34, 0, 160, 160], 64)
    for i, (screen, ram) in enumerate(frames):
        for r in (spilled, held):
            r.add(i, ram, screen)
        assert spilled._n < 500
    on_disk = (tmp_path / "s.objects").stat().st_size // ob.RECORD_DTYPE.itemsize
    a, b = np.concatenate(list(spilled.records())), np.concatenate(list(held.records()))
    assert len(a) > 1000 and on_disk == len(a) - len(a) % 500 and np.array_equal(a, b)
    assert np.array_equal(np.unique(a["frame"]), np.arange(len(frames)))
    table = ob.record_table(a, ob.object_classes("breakout"))
    assert list(table.columns) == list(ob.RECORD_COLUMNS) and set(table["class"]) == {"paddle", "ball", "brick"}
    assert ob.ObjectRecorder("seaquest", None, 64, tmp_path / "q.objects").path is None  # no rules: no file
    assert not (tmp_path / "q.objects").exists()
