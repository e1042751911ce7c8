"""External evaluation sets: folders of raw ALE screens scored like the val split (vqgan.eval.recon --eval-sets).

An Atari dataset may name extra frame sets in the config::

    datasets:
      atari64:
        eval_sets:
          expert_pacman: {path: data/expert_pacman, game: MsPacman}

`path` is a folder of PNG files, each a raw ALE screen: 210 rows x 160 columns, RGB (what `ale.getScreenRGB()`
gives). They are preprocessed exactly as the collector preprocesses frames (vqgan.data.atari_screen.crop_resize
with the dataset's crop and resolution), reconstructed, and scored against the training mean/median image of `game`,
which must be one of the dataset's games. Objects are found from the pixels (vqgan.data.atari_pixels
.detect_objects_from_pixels) where the game has pixel rules, so object recall is reported there; elsewhere it is
"not available". The workflow runs `check_eval_sets` while it builds the DAG, so a bad folder fails before any job.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vqgan.data.atari_screen import NATIVE_H, NATIVE_W

NAME = re.compile(r"^[A-Za-z0-9_]+$")


class EvalSetError(ValueError):
    """A bad eval set entry or folder; the message names the config key, the path and what to do."""


@dataclass
class EvalSet:
    name: str
    path: Path
    game: str        # the dataset's spelling of the game (its class name)
    label: int       # the game's index in the dataset's games
    files: list[Path]


def png_files(folder: str | os.PathLike) -> list[Path]:
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() == ".png" and p.is_file())


def check_eval_sets(raw: dict[str, Any] | None, games: list[str], where: str = "eval_sets",
                    root: str | os.PathLike | None = None) -> list[EvalSet]:
    """Parse and check `eval_sets` of a dataset with `games`: every folder exists, holds PNGs, each 160x210 RGB
    and a whole PNG by its content, not its name (header, chunks and checksums read, not decoded), and names one
    of the games. Relative paths are taken from `root`
    (default: the working directory). Raises EvalSetError naming `where.<name>` and the file."""
    from PIL import Image, UnidentifiedImageError

    from vqgan.data.atari_screen import UnknownGame, resolve_game

    if not raw:
        return []
    if not isinstance(raw, dict):
        raise EvalSetError(f"config key {where}: must map set names to {{path: FOLDER, game: GAME}}, got {raw!r}")
    roms = {}
    for i, g in enumerate(games):
        try:
            roms[resolve_game(g)] = i
        except UnknownGame:
            continue  # the dataset's own check reports it
    sets = []
    for name, spec in raw.items():
        key = f"{where}.{name}"
        if not NAME.match(str(name)):
            raise EvalSetError(f"config key {key}: a set name is letters, digits and _ only (it names table rows)")
        if not isinstance(spec, dict) or set(spec) - {"path", "game"} or not {"path", "game"} <= set(spec):
            raise EvalSetError(f"config key {key}: must be {{path: FOLDER, game: GAME}}, got {spec!r}")
        try:
            rom = resolve_game(str(spec["game"]))
        except UnknownGame as e:
            raise EvalSetError(f"config key {key}.game: {e}") from None
        if rom not in roms:
            raise EvalSetError(f"config key {key}.game = {spec['game']!r}: not one of this dataset's games {games}; "
                               "frames are scored against their game's training mean image, so the game must be "
                               "collected too")
        path = Path(spec["path"])
        folder = path if path.is_absolute() or root is None else Path(root) / path
        if not folder.is_dir():
            raise EvalSetError(f"config key {key}.path = {str(path)!r}: no such folder")
        files = png_files(folder)
        if not files:
            raise EvalSetError(f"config key {key}.path = {str(path)!r}: no .png files in the folder; put raw ALE "
                               f"screens ({NATIVE_W}x{NATIVE_H} RGB PNG) there")
        for f in files:
            try:
                with Image.open(f) as im:
                    size, mode, kind = im.size, im.mode, im.format
                    im.verify()  # every chunk and its checksum: a truncated or damaged file fails here, named
            except (OSError, UnidentifiedImageError, SyntaxError) as e:
                raise EvalSetError(f"config key {key}: {f}: not a readable PNG ({e})") from None
            if kind != "PNG":  # by content, not by name: a JPEG named .png is lossy, not a raw screen
                raise EvalSetError(f"config key {key}: {f} is a {kind} file named .png; raw ALE screens are PNG "
                                   "(lossless): save ale.getScreenRGB() as PNG")
            if size != (NATIVE_W, NATIVE_H) or mode not in ("RGB", "RGBA", "P"):
                raise EvalSetError(f"config key {key}: {f} is {size[0]}x{size[1]} {mode}; raw ALE screens are "
                                   f"{NATIVE_W}x{NATIVE_H} (width x height) RGB: save ale.getScreenRGB() as it is, "
                                   "not a resized or cropped frame")
        sets.append(EvalSet(str(name), folder, games[roms[rom]], roms[rom], files))
    return sets


def native_screens(files: list[Path]) -> np.ndarray:
    """(N, 210, 160, 3) uint8, the PNGs as RGB."""
    from PIL import Image, UnidentifiedImageError

    screens = []
    for f in files:
        try:
            with Image.open(f) as im:
                screens.append(np.asarray(im.convert("RGB")))
        except (OSError, UnidentifiedImageError, SyntaxError) as e:  # changed since check_eval_sets read it
            raise EvalSetError(f"{f}: not a readable PNG ({e}); replace the file") from None
    return np.stack(screens)


def preprocess(screens: np.ndarray, resolution: int, crop: list[int] | None) -> np.ndarray:
    """The collector's preprocessing of every screen: crop, then INTER_AREA resize to resolution x resolution."""
    from vqgan.data.atari_screen import crop_resize

    return np.stack([crop_resize(s, resolution, crop) for s in screens])


def pixel_objects(game: str, screens: np.ndarray, resolution: int, crop: list[int] | None):
    """objects.csv-style rows (frame, class, id, box in dataset pixels, visible = 1) found from the pixels, or
    (None, reason) when the game has no pixel rules."""
    import pandas as pd

    from vqgan.data.atari_pixels import detect_objects_from_pixels, has_pixel_rules, to_dataset_boxes

    if not has_pixel_rules(game):
        return None, f"not available: no pixel rules for {game} (vqgan.data.atari_pixels.PIXEL_RULES)"
    rows = [(i, o.cls, o.id, *o.box, 1) for i, s in enumerate(screens)
            for o in to_dataset_boxes(detect_objects_from_pixels(game, s), crop, resolution)]
    return pd.DataFrame(rows, columns=["frame", "class", "id", "x0", "y0", "x1", "y1", "visible"]), None
