"""Per-game frames -> the train/val dataset folders of docs/design.md, split by episode (or by state lineage).

The collectors leave each stream's frames, and their object boxes, in files of their own (a scratch folder beside
the dataset); this module splits every game by group and copies the frames and the boxes chunk by chunk into both
splits at once, deleting each scratch file once copied: memory stays one chunk, and disk one dataset plus one
stream.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vqgan.data.dataset import SplitWriter, open_split, read_rows, rows_per_chunk

from .config import AtariConfig
from .objects import RECORD_DTYPE, object_classes, read_records, record_table


class CollectError(RuntimeError):
    """Collection cannot produce a valid dataset from this config; the message says which key to change."""


@dataclass
class GameFrames:
    """Everything one game contributed, in collection order (episodes contiguous)."""

    game: str
    parts: list[tuple[Path | None, int]]  # the N frames as (R, R, 3) uint8 rows: (.npy file, rows) per stream
    episode: np.ndarray     # (N,) int64: trajectory id within the game
    step: np.ndarray        # (N,) int64: agent step within the episode (0 = the frame after reset/restore)
    action: np.ndarray      # (N,) int64: index into the game's minimal action set that led here; -1 at step 0
    reward: np.ndarray      # (N,) float32: reward of the step that led here
    group: np.ndarray       # (N,) int64: the unit that may not cross splits (episode, or root lineage)
    level: np.ndarray       # (N,) int64: level/maze where the game exposes it, -1 where unknown
    stats: dict[str, Any] = field(default_factory=dict)  # per-game record for the manifest (coverage, timing)
    objects: list[Path] | None = None  # per part, its frames' object boxes (ObjectRecorder records, `frame` = row
                                       # in the part); None for a game without RAM rules (atari_collect/objects.py)

    def __len__(self) -> int:
        return len(self.episode)


def split_by_group(group: np.ndarray, val_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of the frames that go to val: whole groups, about `val_fraction` of the frames.

    Groups are visited in a seeded random order and each is taken if it brings the val share closer to the target,
    so one long episode cannot swallow the validation split; the first group visited is always taken so val is
    never empty, and at least one group stays in train.
    """
    ids, counts = np.unique(group, return_counts=True)
    if len(ids) < 2:
        raise CollectError(
            f"only {len(ids)} episode(s) collected, so train and val cannot be split by episode; "
            "raise num_envs or frames_per_game, or lower max_episode_steps"
        )
    target = val_fraction * len(group)
    taken, total = [], 0
    for j in rng.permutation(len(ids)):
        if len(taken) == len(ids) - 1:
            break  # keep at least one group for training
        if not taken or abs(total + counts[j] - target) < abs(total - target):
            taken.append(ids[j])
            total += counts[j]
    return np.isin(group, taken)


def object_truth_record(games: list[GameFrames]) -> dict[str, Any]:
    """The manifest's `object_truth`: which games have object boxes in objects.csv, and their classes."""
    have = [g.game for g in games if g.objects is not None]
    return {
        "file": "objects.csv" if have else None,
        "games": have,
        "games_without": [g.game for g in games if g.objects is None],
        "classes": {game: list(object_classes(game)) for game in have},
        "source": "RAM rules of atari_collect/objects.py, boxes in dataset pixels (after crop and resize)",
    }


def write_dataset(out: str | Path, cfg: AtariConfig, games: list[GameFrames], made_by: str,
                  extra: dict[str, Any] | None = None) -> dict[str, Path]:
    """Split every game by group and write `{out}/train` and `{out}/val` with the shared dataset contract.

    Both splits are written in one pass over the scratch files: train is every game's non-val frames in
    collection order, game after game, val the same for the val frames (as concatenating them would give), and
    the same for their object boxes (objects.csv: a header whenever some game has them).
    """
    import ale_py
    import gymnasium

    out = Path(out)
    is_val = []
    for label, g in enumerate(games):
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, label, 0x5B17]))
        is_val.append(split_by_group(g.group, cfg.val_fraction, rng))
    masks = {"train": [~v for v in is_val], "val": is_val}

    chunk = rows_per_chunk(cfg.resolution)
    with open_split(out / "train", sum(int(m.sum()) for m in masks["train"]), cfg.resolution) as train, \
            open_split(out / "val", sum(int(m.sum()) for m in masks["val"]), cfg.resolution) as val:
        if any(g.objects is not None for g in games):
            for writer in (train, val):
                writer.write_objects(record_table(np.zeros(0, RECORD_DTYPE), ()))
        first = {"train": 0, "val": 0}  # the split row of the game's first frame
        for g, v in zip(games, is_val):
            # the split row of each of the game's frames, in the split it goes to
            split_row = {"train": np.cumsum(~v) - 1 + first["train"], "val": np.cumsum(v) - 1 + first["val"]}
            at = 0
            for k, (path, rows) in enumerate(g.parts):
                for lo in range(0, rows, chunk):
                    block = read_rows(path, lo, lo + chunk)
                    sel = v[at + lo : at + lo + len(block)]
                    train.write(block[~sel])
                    val.write(block[sel])
                path.unlink()  # copied: free its disk before the next one is read
                if g.objects is not None:
                    copy_objects(g.objects[k], at, object_classes(g.game), v, split_row, train, val)
                    g.objects[k].unlink()
                at += rows
            first = {"train": first["train"] + int((~v).sum()), "val": first["val"] + int(v.sum())}
        written = {}
        for split, writer in (("train", train), ("val", val)):
            chosen = list(zip(games, masks[split]))
            writer.finish(_meta(chosen), {
                "source": "ale",
                "split": split,
                "games": list(cfg.games),
                "classes": list(cfg.games),
                "seed": cfg.seed,
                "config": cfg.to_dict(),
                "ale_py_version": ale_py.__version__,
                "gymnasium_version": gymnasium.__version__,
                "frames": len(writer),
                "frames_per_game": {g.game: int(m.sum()) for g, m in chosen},
                "episodes": int(sum(len(np.unique(g.episode[m])) for g, m in chosen)),
                "episodes_per_game": {g.game: int(len(np.unique(g.episode[m]))) for g, m in chosen},
                # coverage of this split: frames per level (Ms. Pac-Man: maze index 0-3) of the games that expose one
                "frames_per_level": {g.game: {str(k): int(v)
                                              for k, v in zip(*np.unique(g.level[m], return_counts=True))}
                                     for g, m in chosen if (g.level >= 0).any()},
                "made_by": made_by,
                "per_game": {g.game: g.stats for g, _ in chosen},
                "created_unix": int(time.time()),
                "object_truth": object_truth_record([g for g, _ in chosen]),
                **(extra or {}),
            })
            written[split] = out / split
    return written


def copy_objects(path: Path, at: int, classes: tuple[str, ...], is_val: np.ndarray, split_row: dict[str, np.ndarray],
                 train: SplitWriter, val: SplitWriter) -> None:
    """One part's object records (the file `path`, its frames from row `at` of the game's frames on) into both
    splits' objects.csv, a chunk at a time, `frame` renumbered by `split_row` to the image row in the split."""
    for rec in read_records(path):
        frame = rec["frame"] + at  # the row in the game's frames
        for split, writer, mask in (("train", train, ~is_val[frame]), ("val", val, is_val[frame])):
            part = rec[mask]
            part["frame"] = split_row[split][frame[mask]]
            writer.write_objects(record_table(part, classes))


def _meta(chosen: list[tuple[GameFrames, np.ndarray]]) -> pd.DataFrame:
    return pd.concat(
        [
            pd.DataFrame(
                {
                    "source_id": [f"{g.game}/ep{e}/t{s}" for e, s in zip(g.episode[m], g.step[m])],
                    "game": g.game,
                    "label": label,
                    "episode": g.episode[m],
                    "step": g.step[m],
                    "action": g.action[m],
                    "reward": g.reward[m],
                    "level": g.level[m],
                }
            )
            for label, (g, m) in enumerate(chosen)
        ],
        ignore_index=True,
    )
