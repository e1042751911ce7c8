"""Game names: the config's ALE names ('MsPacman', as in `ALE/MsPacman-v5`) and ale-py's ROM ids ('ms_pacman')."""
from __future__ import annotations

import difflib
import functools


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
