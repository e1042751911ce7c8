"""The ALE screen, shared by the Atari collector and eval: its size, its preprocessing, and the games' names.

Preprocessing: native frames (210x160 RGB) -> square dataset images. INTER_AREA is the antialiasing choice: it
averages the source pixels under each target pixel, so a 1-px sprite fades instead of vanishing or aliasing. It is
also what ale-py's vector env uses internally (measured: byte-identical to `cv2.resize(..., INTER_AREA)`), so
cropped (resized here) and uncropped (resized in C++) data look the same. Measured on the shared 2-core machine, one
210x160 frame to 64x64: cv2 INTER_AREA 240 us, PIL BOX 317 us, PIL LANCZOS 972 us.

Game names: the config's ALE names ('MsPacman', as in `ALE/MsPacman-v5`) and ale-py's ROM ids ('ms_pacman').

cv2 and ale-py are imported on first use: the workflow imports this module while it builds the DAG.
"""
from __future__ import annotations

import difflib
import functools

import numpy as np

NATIVE_H, NATIVE_W = 210, 160


# ---------------------------------------------------------------------------------------------------- preprocessing
@functools.cache
def opencv():
    """cv2, set to one thread: one small frame at a time, OpenCV's workers only add hand-off cost (and fight the
    collector's processes)."""
    import cv2

    cv2.setNumThreads(1)
    return cv2


def crop_resize(frame: np.ndarray, resolution: int, crop: list[int] | None) -> np.ndarray:
    """(210, 160, 3) uint8 -> (R, R, 3) uint8; `crop` = [top, left, height, width] in native pixels or None."""
    if crop is not None:
        top, left, h, w = crop
        frame = frame[top : top + h, left : left + w]
    if frame.shape[0] == resolution and frame.shape[1] == resolution:
        return np.ascontiguousarray(frame)
    cv2 = opencv()
    return cv2.resize(frame, (resolution, resolution), interpolation=cv2.INTER_AREA)


# ---------------------------------------------------------------------------------------------------- game names
class UnknownGame(ValueError):
    """A game name that no ROM shipped with ale-py answers to; the message lists close and valid names."""


def _key(name: str) -> str:
    # 'MsPacman', 'ms_pacman', 'ALE/MsPacman-v5' all compare equal after this
    name = name.strip()
    if name.startswith("ALE/"):
        name = name[4:]
    for suffix in ("-v5", "-v4", "-v0", "NoFrameskip"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name.replace("_", "").replace("-", "").lower()


def camel(rom_id: str) -> str:
    """'space_invaders' -> 'SpaceInvaders' (the name used in the config)."""
    return "".join(part[:1].upper() + part[1:] for part in rom_id.split("_"))


@functools.lru_cache(maxsize=1)
def _rom_ids() -> dict[str, str]:
    from ale_py import roms

    return {_key(r): r for r in roms.get_all_rom_ids()}


def resolve_game(name: str) -> str:
    """Return ale-py's ROM id for a config game name, or raise UnknownGame listing valid names."""
    ids = _rom_ids()
    rom = ids.get(_key(name))
    if rom is None:
        names = sorted(camel(r) for r in ids.values())
        close = difflib.get_close_matches(name, names, n=3)
        raise UnknownGame(
            f"dataset config key 'games': unknown Atari game {name!r}"
            + (f" (did you mean {', '.join(close)}?)" if close else "")
            + f". Use ALE names without 'ALE/' and '-v5', e.g. MsPacman, Pong, Breakout, SpaceInvaders; "
            f"{len(names)} games ship with ale-py: {', '.join(names[:12])}, ..."
        )
    return rom
