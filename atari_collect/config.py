"""One Atari dataset entry of the config, parsed and checked.

Defaults come from the dataset schema (vqgan/config/schemas/dataset_atari.schema.yaml), which the workflow also
validates against before any job runs; the game-level rules live here only (the workflow calls them through
DATASET_RULES), so that `atari-collect` run by hand fails just as clearly, naming the key and what to do.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any

from vqgan.config.schema import defaults
from vqgan.data.atari_screen import UnknownGame, resolve_game

# Keys of a dataset entry that belong to later stages (per-dataset overrides, eval_vqgan's external frame sets);
# the collector ignores them.
OTHER_STAGE_KEYS = {"vqgan", "transformer", "sample", "fid", "eval_sets"}

POLICIES = ("random", "sticky_random", "go_explore")


class ConfigError(ValueError):
    """A bad dataset entry; the message names the key, the value and what to do.

    `key` (relative to the dataset entry, e.g. 'crop' or 'game_policy.Pong.cell'), `value` and `what` are kept
    apart too, so that the workflow can name the key by its full config path."""

    def __init__(self, message: str, key: str | None = None, value: Any = None, what: str | None = None):
        super().__init__(message)
        self.key, self.value, self.what = key, value, what


@dataclass
class PolicyConfig:
    """`policy` (and each `game_policy` override); defaults and descriptions in the dataset_atari schema."""

    name: str
    repeat_prob: float  # sticky_random: probability of keeping the last action (~4-step runs cross a room)
    # go_explore only (see explore.py):
    budget_steps: int | None  # agent steps explored per game (None: = frames_per_game)
    lineages: int  # independent archives per game; the train/val split is by lineage
    explore_steps: int  # agent steps per exploration from a restored cell
    survive_steps: int  # a state enters the archive after surviving this many more steps
    cell: str  # "auto": RAM cell for games we know (MsPacman), else "pixels"
    target_levels: int | None  # stop a lineage once this many levels each had target_level_steps explored steps
    target_level_steps: int
    max_seconds: float | None  # time limit per game (split over its lineages); stopping early breaks determinism


@dataclass
class AtariConfig:
    """One `datasets.<name>` entry of kind atari; defaults and descriptions in the dataset_atari schema."""

    resolution: int
    games: list[str]
    frames_per_game: int
    kind: str
    val_fraction: float  # share of each game's frames held out, whole episodes at a time
    frame_skip: int  # emulator frames per agent step
    sticky_actions: float  # ALE repeat_action_probability (Machado et al. 2018)
    policy: PolicyConfig
    max_episode_steps: int  # agent steps before an episode is cut
    seed: int
    num_envs: int  # vector env width; part of the data (episodes interleave per env)
    crop: list[int] | None  # [top, left, height, width] in native 210x160 pixels, before resizing
    game_policy: dict[str, PolicyConfig]  # per-game overrides of `policy`

    def policy_for(self, label: int) -> PolicyConfig:
        return self.game_policy.get(self.games[label], self.policy)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _fail(key: str, value: Any, what: str) -> ConfigError:
    return ConfigError(f"dataset config key {key!r} = {value!r}: {what}", key, value, what)


def _check_int(key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(key, value, f"must be an integer >= {minimum}")
    if value < minimum:
        raise _fail(key, value, f"must be >= {minimum}")
    return value


def _check_prob(key: str, value: Any, lo_open: bool = False, hi_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(key, value, "must be a number in [0, 1]")
    if (value < 0 or value > 1) or (lo_open and value == 0) or (hi_open and value == 1):
        lo, hi = "(" if lo_open else "[", ")" if hi_open else "]"
        raise _fail(key, value, f"must lie in {lo}0, 1{hi}")
    return float(value)


def _defaults() -> dict[str, Any]:
    """The entry's defaults, from the dataset schema (the collection contract the workflow validates against)."""
    return defaults("", "dataset_atari")


def parse_policy(raw: Any) -> PolicyConfig:
    if raw is None:
        raw = {}
    if isinstance(raw, str):  # shorthand: policy: go_explore
        raw = {"name": raw}
    if not isinstance(raw, dict):
        raise _fail("policy", raw, "must be a mapping like {name: sticky_random, repeat_prob: 0.75}")
    known = {f.name for f in dataclasses.fields(PolicyConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise _fail(f"policy.{unknown[0]}", raw[unknown[0]], f"unknown key; known keys: {sorted(known)}")
    p = PolicyConfig(**{**_defaults()["policy"], **raw})
    if p.name not in POLICIES:
        raise _fail("policy.name", p.name, f"unknown policy; choose one of {list(POLICIES)}")
    p.repeat_prob = _check_prob("policy.repeat_prob", p.repeat_prob)
    p.explore_steps = _check_int("policy.explore_steps", p.explore_steps, 1)
    p.survive_steps = _check_int("policy.survive_steps", p.survive_steps, 0)
    p.lineages = _check_int("policy.lineages", p.lineages, 2)
    if p.budget_steps is not None:
        p.budget_steps = _check_int("policy.budget_steps", p.budget_steps, 1)
    if p.target_levels is not None:
        p.target_levels = _check_int("policy.target_levels", p.target_levels, 1)
    p.target_level_steps = _check_int("policy.target_level_steps", p.target_level_steps, 1)
    if p.cell not in ("auto", "pixels", "ram"):
        raise _fail("policy.cell", p.cell, "must be 'auto', 'pixels' or 'ram'")
    if p.max_seconds is not None and (isinstance(p.max_seconds, bool) or not isinstance(p.max_seconds, (int, float))
                                      or p.max_seconds <= 0):
        raise _fail("policy.max_seconds", p.max_seconds, "must be a positive number of seconds or null")
    return p


def parse_config(raw: dict[str, Any]) -> AtariConfig:
    """Build an AtariConfig from one `datasets.<name>` entry, filling defaults and rejecting mistakes."""
    if not isinstance(raw, dict):
        raise ConfigError(f"dataset config must be a mapping, got {type(raw).__name__}")
    raw = {k: v for k, v in raw.items() if k not in OTHER_STAGE_KEYS}
    known = {f.name for f in dataclasses.fields(AtariConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        hint = difflib.get_close_matches(unknown[0], known, n=1)
        raise _fail(unknown[0], raw[unknown[0]], "unknown key" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                    + f"; known keys: {sorted(known)}")
    for key in ("resolution", "games", "frames_per_game"):
        if key not in raw:
            raise ConfigError(f"dataset config: required key {key!r} is missing")
    raw = dict(raw)
    base = raw.get("policy") or {}
    raw["policy"] = parse_policy(base)
    overrides = raw.get("game_policy") or {}
    if not isinstance(overrides, dict):
        raise _fail("game_policy", overrides,
                    "must map game names to policy mappings, e.g. {MsPacman: {name: go_explore}}")
    if not isinstance(base, dict):
        base = {"name": base}
    gp = {}
    for game, over in overrides.items():
        if game not in (raw.get("games") or []):
            raise _fail(f"game_policy.{game}", over, f"names a game that is not in games {raw.get('games')}")
        if isinstance(over, str):
            over = {"name": over}
        if not isinstance(over, dict):
            raise _fail(f"game_policy.{game}", over, "must be a policy mapping like {name: go_explore}")
        try:
            gp[game] = parse_policy({**base, **over})
        except ConfigError as e:
            raise _fail(e.key.replace("policy.", f"game_policy.{game}.", 1), e.value, e.what) from None
    raw["game_policy"] = gp
    entry = {k: v for k, v in _defaults().items() if k in known}
    cfg = AtariConfig(**{**entry, "kind": "atari", **raw})

    if cfg.kind != "atari":
        raise _fail("kind", cfg.kind, "the Atari collector only handles kind 'atari'")
    cfg.resolution = _check_int("resolution", cfg.resolution, 8)
    cfg.frames_per_game = _check_int("frames_per_game", cfg.frames_per_game, 2)
    cfg.frame_skip = _check_int("frame_skip", cfg.frame_skip, 1)
    cfg.max_episode_steps = _check_int("max_episode_steps", cfg.max_episode_steps, 1)
    cfg.seed = _check_int("seed", cfg.seed, 0)
    cfg.num_envs = _check_int("num_envs", cfg.num_envs, 1)
    cfg.val_fraction = _check_prob("val_fraction", cfg.val_fraction, lo_open=True, hi_open=True)
    cfg.sticky_actions = _check_prob("sticky_actions", cfg.sticky_actions)

    if not isinstance(cfg.games, list) or not cfg.games or not all(isinstance(g, str) for g in cfg.games):
        raise _fail("games", cfg.games, "must be a non-empty list of ALE game names like ['MsPacman', 'Pong']")
    if len(set(cfg.games)) != len(cfg.games):
        raise _fail("games", cfg.games, "lists a game twice; each game is one class label")
    roms: dict[str, str] = {}
    for label, g in enumerate(cfg.games):
        try:
            rom = resolve_game(g)
        except UnknownGame as e:
            raise ConfigError(str(e), "games", g, str(e).removeprefix("dataset config key 'games': ")) from None
        if rom in roms:  # 'Pong' and 'pong' would be two class labels for one game
            raise _fail("games", cfg.games, f"names {roms[rom]!r} and {g!r}, the same game; list it once")
        roms[rom] = g
        if cfg.policy_for(label).cell == "ram" and rom != "ms_pacman":
            where = f"game_policy.{g}" if g in cfg.game_policy else "policy"
            raise _fail(f"{where}.cell", "ram", f"RAM cells are only defined for MsPacman, not {g}; use 'auto'")

    for where, pol in [("policy", cfg.policy)] + [(f"game_policy.{g}", q) for g, q in cfg.game_policy.items()]:
        pb = pol.budget_steps
        if pb is not None and pb < cfg.frames_per_game:
            raise _fail(f"{where}.budget_steps", pb, f"must be >= frames_per_game ({cfg.frames_per_game}): every "
                        "frame is an explored step")
    if cfg.crop is not None:
        c = cfg.crop
        if not isinstance(c, list) or len(c) != 4 or not all(isinstance(v, int) and not isinstance(v, bool) for v in c):
            raise _fail("crop", c, "must be null or [top, left, height, width] (integers, native 210x160 pixels)")
        top, left, h, w = c
        if top < 0 or left < 0 or h < 1 or w < 1 or top + h > 210 or left + w > 160:
            raise _fail("crop", c, "must lie inside the native 210x160 frame (top+height <= 210, left+width <= 160)")
    return cfg


class _DatasetRules:
    """The collector's rules for one `datasets.<name>` entry, for the experiment check before any job
    (vqgan.config.experiment takes them as an argument: vqgan imports nothing of atari_collect)."""

    @staticmethod
    def check(entry: dict[str, Any]) -> AtariConfig:
        return parse_config(entry)

    @staticmethod
    def has_object_boxes(games: list[str]) -> bool:
        from .objects import has_object_rules  # RAM object rules: the collection writes objects.csv for these

        return any(has_object_rules(g) for g in games)


DATASET_RULES = _DatasetRules()
