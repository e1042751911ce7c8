"""The exploring collector: Go-Explore-style (Ecoffet et al. 2021, "First return, then explore"), phase 1 only.

Why: random and sticky-random play never leave the first screen of most games (Ms. Pac-Man: 100% first maze in
20k frames), so a VQGAN trained on such data only knows level 1. Go-Explore keeps an archive of *cells* (a coarse
signature of the game state) with an emulator snapshot for each; it repeatedly picks a cell, restores it, explores
from there with the sticky-random policy and adds any new or better cells. Returning to the frontier without
re-playing the path is what carries it past level 1.

What made Ms. Pac-Man work (docs/atari.md; six variants without these never cleared board 1):
- cell = (boards cleared, dots eaten // 5, x // 16, y // 16) from RAM; image cells mostly track the ghosts;
- progress = dots eaten (ghosts and fruit dominate the score);
- weight ∝ (1/√(chosen+1) + 0.5/√(seen+1)) · (exp((progress − best progress on that board)/5) + 0.03), each board's
  total scaled by 0.1^(boards behind the newest);
- a life loss ends an exploration and a state enters the archive only after surviving `survive_steps` more steps
  (Ms. Pac-Man freezes 70-80 frames before the life counter drops, so a fresh state may already be doomed).
Other games use a generic cell: (score, the screen downscaled to 11x8 grayscale, 8 levels); progress = score.

Dataset: each exploration (restore, then up to `explore_steps` steps) is one episode. The game's exploration budget
is split over `lineages` independent archives, each grown from its own reset; the train/val split is by lineage,
so no state in val descends from a state in train. Frames are real states of the explored trajectory, chosen per
level (Ms. Pac-Man: maze) so that every level the lineage reached gets an equal share of its frames, spread evenly
over the steps spent in that level (`LevelFrames`; games without levels: evenly over all steps). Without this the
frames follow where exploration spends its time, and the newest maze, reached late, got few or none. With
`target_levels` a lineage stops once it has explored `target_level_steps` steps in that many levels (Ms. Pac-Man:
4 = every maze), so the budget is only a limit and lineages that get there early do not spend it all.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vqgan.data.atari_screen import crop_resize, opencv, resolve_game
from vqgan.data.dataset import ImageFile
from vqgan.io.files import atomic_file
from vqgan.io.progress import progress_bar

from .config import AtariConfig, PolicyConfig
from .dataset import GameFrames
from .emulator import Emulator
from .objects import ObjectRecorder
from .rollout import StickyRandom, emulator_with_objects, env_quotas, record_objects, run_jobs, stream_rngs

cv2 = opencv()  # set to one thread now, before the collector forks its workers

# ---------------------------------------------------------------------------------------------------- cells


class MsPacmanCells:
    """RAM cells for Ms. Pac-Man: (boards cleared, dots // 5, x // 16, y // 16)."""

    name = "ram:ms_pacman"
    has_levels = True

    def start(self, emu: Emulator) -> tuple[int, int]:
        return 0, int(emu.ram()[123]) >> 4  # (boards cleared, board-counter nibble)

    def update(self, track: tuple[int, int], ram: np.ndarray) -> tuple[int, int]:
        # The counter nibble is not monotonic (6 -> 4 after board 7): count its changes instead.
        nibble = int(ram[123]) >> 4
        return (track[0] + 1, nibble) if nibble != track[1] else track

    def key(self, track, ram: np.ndarray, emu: Emulator, score: float) -> tuple:
        return track[0], int(ram[119]) // 5, int(ram[10]) // 16, int(ram[16]) // 16

    def progress(self, track, ram: np.ndarray, score: float) -> float:
        return float(ram[119])  # dots eaten on this board

    def board(self, track) -> int:
        return track[0]

    def level(self, ram: np.ndarray) -> int:
        return int(ram[0]) & 3  # maze index 0-3 (pink, light blue, grey, green walls)


class PixelCells:
    """Generic cells: (score, the screen at 11x8 grayscale with 8 intensity levels); progress = score."""

    name = "pixels:11x8x8+score"
    has_levels = False

    def __init__(self):
        self._gray = np.empty((210, 160), dtype=np.uint8)

    def start(self, emu: Emulator):
        return 0

    def update(self, track, ram):
        return track

    def key(self, track, ram, emu: Emulator, score: float) -> tuple:
        emu.ale.getScreenGrayscale(self._gray)
        small = cv2.resize(self._gray, (11, 8), interpolation=cv2.INTER_AREA)
        # The score is part of the cell: at 11x8 a ball or a shot vanishes in the average (Breakout and Space
        # Invaders gave 4-14 cells per 10^4 steps without it), while every point scored is progress worth keeping.
        return score, (small >> 5).tobytes()  # 8 levels

    def progress(self, track, ram, score: float) -> float:
        return score

    def board(self, track) -> int:
        return 0

    def level(self, ram) -> int:
        return -1


def make_cells(rom: str, kind: str):
    if kind == "ram" and rom != "ms_pacman":
        raise ValueError(f"policy.cell 'ram' is only defined for MsPacman, not {rom}; use 'auto' or 'pixels'")
    if kind in ("auto", "ram") and rom == "ms_pacman":
        return MsPacmanCells()
    return PixelCells()


# ---------------------------------------------------------------------------------------------------- archive


@dataclass
class Cell:
    snapshot: Any
    track: Any
    progress: float
    score: float
    board: int
    steps: int        # agent steps from the reset to this state
    row: int = -1     # its row in the archive's arrays (set by Archive.offer)

    def better_than(self, other: "Cell") -> bool:
        # Ties go to the later state: Ms. Pac-Man's ~70-step intro is one cell, and keeping its first state would
        # replay the whole intro on every return to the start (measured: fewer cells than sticky-random play).
        return (self.progress, self.score, self.steps) > (other.progress, other.score, other.steps)


class Archive:
    """Cells by key, plus what selection needs as arrays (one row per key, in order of discovery): rebuilding them
    from the cells took ~2 ms per selection at 9k cells, ~10% of the time late in a Ms. Pac-Man run."""

    def __init__(self, ms_pacman_weights: bool):
        self.cells: dict[Any, Cell] = {}
        self.keys: list[Any] = []
        self.board_weights = ms_pacman_weights
        self.chosen = np.zeros(1024, np.int64)   # times selected
        self.seen = np.zeros(1024, np.int64)     # times visited during explorations
        self.progress = np.zeros(1024)
        self.board = np.zeros(1024, np.int64)

    def __len__(self) -> int:
        return len(self.cells)

    def offer(self, key, cell: Cell) -> bool:
        old = self.cells.get(key)
        if old is not None and not cell.better_than(old):
            return False
        if old is None:
            cell.row = len(self.keys)
            self.keys.append(key)
            if cell.row == len(self.chosen):
                for name in ("chosen", "seen", "progress", "board"):
                    a = getattr(self, name)
                    setattr(self, name, np.concatenate([a, np.zeros_like(a)]))
        else:
            cell.row = old.row  # a better state for a known cell keeps its counts
        self.progress[cell.row], self.board[cell.row] = cell.progress, cell.board
        self.cells[key] = cell
        return True

    def visit(self, cell: Cell) -> None:
        self.seen[cell.row] += 1

    def weights(self) -> np.ndarray:
        n = len(self.keys)
        chosen, seen, prog, board = self.chosen[:n], self.seen[:n], self.progress[:n], self.board[:n]
        w = 1 / np.sqrt(chosen + 1) + 0.5 / np.sqrt(seen + 1)
        if self.board_weights:
            best = np.zeros(board.max() + 1)
            np.maximum.at(best, board, prog)
            # + 0.03: a floor that keeps some returns to cells behind the frontier. Without it the archive
            # covers fewer cells than sticky-random play for the first ~12k steps (257 vs 332 cells at 6k steps);
            # with it 359 vs 332, and a higher best score (measured, seed 0).
            w *= np.exp((prog - best[board]) / 5) + 0.03
            totals = np.bincount(board, weights=w)
            scale = np.where(totals > 0, 0.1 ** (board.max() - np.arange(len(totals))) / np.maximum(totals, 1e-300), 0)
            w *= scale[board]
        else:
            # favour higher-score cells mildly: a generic score scale is unknown, so use the rank
            rank = np.argsort(np.argsort(prog, kind="stable"), kind="stable") / max(len(prog) - 1, 1)
            w *= 0.5 + rank
        return w / w.sum()

    def select(self, rng: np.random.Generator) -> Cell:
        """Draw a cell by weight and count the choice."""
        row = rng.choice(len(self.keys), p=self.weights())
        self.chosen[row] += 1
        return self.cells[self.keys[row]]


# ---------------------------------------------------------------------------------------------------- frame choice


def equal_shares(available: dict[int, int], total: int) -> dict[int, int]:
    """Split `total` frames equally over the levels, none taking more than it has (water-filling): a level with
    fewer candidates than its share gives all of them and the rest is shared by the others. Sums to
    min(total, sum(available))."""
    shares, left = {}, total
    order = sorted(available, key=lambda lv: (available[lv], lv))  # smallest first: they may not fill a share
    for i, lv in enumerate(order):
        shares[lv] = min(available[lv], -(-left // (len(order) - i)))  # ceil: the remainder goes to the larger ones
        left -= shares[lv]
    return {lv: shares[lv] for lv in sorted(shares)}


class LevelFrames:
    """Candidate frames of one trajectory, kept per level and thinned evenly, for a balanced choice at the end.

    How many steps each level gets is known only when exploration ends, so each level keeps every `stride`-th of
    its steps; when it holds 2 * `emit` candidates it drops every other one and doubles its stride. A level with
    n steps so ends with min(n, >= emit) candidates evenly spread over them, enough for any share, and only
    candidates are rendered (`take`, then `add`).

    Memory: the columns take 40 bytes a candidate; the frames (2 * `emit` a level) live in a raw file beside
    `spill` when one is given (a dataset being collected: 256 px, emit 2500 would be ~1 GB a level), else in
    memory. A dropped candidate's slot is reused, so frames are written once and never moved; `write_chosen`
    streams the chosen ones out in chunks. The candidates' object boxes go to a file as well (the lineage's
    ObjectRecorder; every candidate's, dropped ones too: ~7 KB a Breakout frame on disk), and `keep_chosen_objects`
    copies the chosen ones. Peak memory so does not grow with the number of frames.
    """

    COLUMNS = {"order": np.int64, "episode": np.int64, "step": np.int64, "action": np.int64, "reward": np.float32}

    def __init__(self, emit: int, resolution: int, spill: Path | None = None):
        self.emit, self.cap, self.R = emit, 2 * max(emit, 1), resolution
        self.frame_bytes = resolution * resolution * 3
        self.levels: dict[int, dict[str, Any]] = {}
        self.spill = Path(spill) if spill is not None else None

    def _new_level(self, level: int) -> dict[str, Any]:
        s = {"steps": 0, "stride": 1, "n": 0, "slot": np.arange(self.cap),
             **{c: np.zeros(self.cap, dtype=t) for c, t in self.COLUMNS.items()}}
        if self.spill is None:
            s["images"] = np.empty((self.cap, self.R, self.R, 3), np.uint8)
        else:
            s["path"] = self.spill.with_name(f"{self.spill.name}.level{level}")
            s["fd"] = os.open(s["path"], os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        return s

    def take(self, level: int) -> bool:
        """Count one explored step at `level`; True if it is a candidate: then `add` its frame."""
        s = self.levels.get(level) or self.levels.setdefault(level, self._new_level(level))
        i = s["steps"]
        s["steps"] += 1
        if i % s["stride"]:
            return False
        if s["n"] == self.cap:  # full: keep every other candidate (i = cap * stride, cap even, stays a multiple)
            for c in self.COLUMNS:
                s[c][: self.cap // 2] = s[c][0 : self.cap : 2]
            # the kept candidates' frames stay in their slots; the dropped ones' slots take the next candidates
            s["slot"] = np.concatenate([s["slot"][0 : self.cap : 2], s["slot"][1 : self.cap : 2]])
            s["n"], s["stride"] = self.cap // 2, 2 * s["stride"]
        return True

    def add(self, level: int, image: np.ndarray, **cols) -> None:
        """The frame and COLUMNS of the candidate that `take(level)` just accepted."""
        s = self.levels[level]
        n = s["n"]
        slot = int(s["slot"][n])
        if self.spill is None:
            s["images"][slot] = image
        else:
            os.pwrite(s["fd"], np.ascontiguousarray(image, dtype=np.uint8).data, slot * self.frame_bytes)
        for c, v in cols.items():
            s[c][n] = v
        s["n"] += 1

    def steps_per_level(self) -> dict[int, int]:
        return {lv: s["steps"] for lv, s in sorted(self.levels.items())}

    def choose(self) -> dict[str, np.ndarray]:
        """`emit` frames (fewer if fewer steps were explored): equal shares per level, evenly spread over each
        level's steps, in trajectory order; the COLUMNS, `level` and `slot` (where the frame is: `frames`)."""
        out = {"level": [np.zeros(0, np.int64)], "slot": [np.zeros(0, np.int64)],
               **{c: [np.zeros(0, t)] for c, t in self.COLUMNS.items()}}
        for lv, q in equal_shares({lv: s["n"] for lv, s in self.levels.items()}, self.emit).items():
            s = self.levels[lv]
            idx = (2 * np.arange(q) + 1) * s["n"] // (2 * q)  # centred systematic sample: q of the n candidates
            out["level"].append(np.full(q, lv, dtype=np.int64))
            for c in ("slot", *self.COLUMNS):
                out[c].append(s[c][idx])
        out = {k: np.concatenate(v) for k, v in out.items()}
        order = np.argsort(out["order"], kind="stable")
        return {k: v[order] for k, v in out.items()}

    def frames(self, chosen: dict[str, np.ndarray], start: int = 0, stop: int | None = None) -> np.ndarray:
        """The frames of `choose()`'s rows start:stop, (k, R, R, 3) uint8."""
        levels, slots = chosen["level"][start:stop], chosen["slot"][start:stop]
        out = np.empty((len(slots), self.R, self.R, 3), np.uint8)
        for i, (lv, slot) in enumerate(zip(levels.tolist(), slots.tolist())):
            s = self.levels[lv]
            if self.spill is None:
                out[i] = s["images"][slot]
            else:
                buf = os.pread(s["fd"], self.frame_bytes, slot * self.frame_bytes)
                out[i] = np.frombuffer(buf, np.uint8).reshape(self.R, self.R, 3)
        return out

    def write_chosen(self, chosen: dict[str, np.ndarray], path: Path, chunk: int = 256) -> None:
        """The chosen frames, in order, into the .npy `path` (an `ImageFile`), `chunk` frames at a time."""
        sink = ImageFile(path, len(chosen["slot"]), self.R)
        for i in range(0, len(chosen["slot"]), chunk):
            sink.write(self.frames(chosen, i, i + chunk))
        sink.close()

    def close(self) -> None:
        """Remove the spill files (idempotent)."""
        for s in self.levels.values():
            if "fd" in s:
                os.close(s.pop("fd"))
                Path(s["path"]).unlink(missing_ok=True)


def keep_chosen_objects(recorder: ObjectRecorder, order: np.ndarray, path: Path) -> Path:
    """The object records of the chosen frames into the file `path`, numbered by their row in the lineage's frames.

    The recorder holds the boxes of every candidate frame, numbered by step (candidates are recorded when they are
    rendered, before it is known which are kept); `order` holds the chosen steps, sorted (trajectory order). Read
    and written a chunk at a time: Breakout's candidates carry ~109 objects each."""
    with open(path, "wb") as f:  # a scratch file beside the frames, not an output
        for rec in recorder.records():
            row = np.searchsorted(order, rec["frame"])
            kept = row < len(order)
            kept[kept] = order[row[kept]] == rec["frame"][kept]
            rec = rec[kept]
            rec["frame"] = row[kept]
            f.write(rec.tobytes())
    return path


# ---------------------------------------------------------------------------------------------------- one lineage


@dataclass
class Lineage:
    """Frames emitted by one lineage (in the file `frames`; None: not kept), their columns and its coverage
    record."""

    frames: Path | None
    episode: np.ndarray
    step: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    level: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)
    objects: Path | None = None  # the emitted frames' object boxes (ObjectRecorder records), for games with RAM
                                 # rules whose frames are kept


def explore_lineage(cfg: AtariConfig, label: int, lineage: int, budget: int, emit: int,
                    seconds: float | None = None, progress: bool = True, frames: Path | None = None) -> Lineage:
    """Grow one archive from a reset for `budget` agent steps (or `seconds`, or until the policy's level target is
    met), emitting `emit` frames balanced over the levels reached (`LevelFrames`) into the .npy `frames` (None:
    the frames are not kept, e.g. for coverage measurements)."""
    # frames being kept for a dataset spill to disk beside their file (see LevelFrames), and so do the candidates'
    # object boxes
    spill = frames.with_name(frames.name + ".candidates") if frames else None
    candidates = LevelFrames(emit, cfg.resolution, spill=spill)
    candidate_objects = spill.with_name(spill.name + ".objects") if spill else None
    try:
        return _grow_lineage(cfg, label, lineage, budget, seconds, progress, frames, candidates, candidate_objects)
    finally:
        candidates.close()
        if candidate_objects is not None:
            candidate_objects.unlink(missing_ok=True)


@dataclass
class _Growth:
    """One lineage while it grows: its emulator, policy and archive, and the counters its explorations add to."""

    cfg: AtariConfig
    p: PolicyConfig  # the game's policy
    budget: int
    candidates: LevelFrames
    emu: Emulator
    objects: ObjectRecorder
    cells: MsPacmanCells | PixelCells
    policy: StickyRandom
    archive: Archive
    rng_sel: np.random.Generator
    target: int | None  # stop once this many levels each had `target_level_steps` steps (only games with levels)
    visited: set = field(default_factory=set)  # every cell seen, including states that later proved fatal
    level_steps: dict[int, int] = field(default_factory=dict)
    levels_done: int = 0
    done: int = 0
    episodes: int = 0
    max_board: int = 0
    best_score: float = 0.0
    curve: list = field(default_factory=list)  # (steps, cells, best score, boards, maze) every ~1% of the budget
    levels_first_step: dict[int, int] = field(default_factory=dict)
    returns: list[float] = field(default_factory=list)  # game score at the end of every exploration

    @classmethod
    def start(cls, cfg: AtariConfig, label: int, lineage: int, budget: int, candidates: LevelFrames,
              candidate_objects: Path | None) -> "_Growth":
        """The lineage's own random streams, emulator and policy, and an archive holding the reset state."""
        p = cfg.policy_for(label)
        rom = resolve_game(cfg.games[label])
        ss = np.random.SeedSequence([cfg.seed, label, lineage, 0x60E])
        rng_emu, rng_pol, rng_sel = (np.random.default_rng(s) for s in ss.spawn(3))
        emu, objects = emulator_with_objects(cfg, label, rng_emu, candidate_objects)
        cells = make_cells(rom, p.cell)
        policy = StickyRandom(emu.n_actions, p.repeat_prob, rng_pol)
        archive = Archive(ms_pacman_weights=isinstance(cells, MsPacmanCells))
        g = cls(cfg, p, budget, candidates, emu, objects, cells, policy, archive, rng_sel,
                p.target_levels if cells.has_levels else None)
        emu.reset()
        track = cells.start(emu)
        archive.offer(cells.key(track, emu.ram(), emu, 0.0), Cell(emu.clone(), track, 0.0, 0.0, 0, 0))
        g.visited.update(archive.cells)
        return g

    def reached_target(self) -> bool:
        return bool(self.target and self.levels_done >= self.target)

    def explore(self) -> None:
        """Go-Explore's step: pick a cell, return to it, explore from it with the sticky-random policy, and offer the
        archive each new or better cell that survived `survive_steps` more steps."""
        p, cells, emu, archive, candidates = self.p, self.cells, self.emu, self.archive, self.candidates
        every = max(self.budget // 100, 1)
        cell = archive.select(self.rng_sel)
        # Restore the emulator but not the sticky-action RNG: each return explores with fresh randomness.
        emu.restore(cell.snapshot, with_rng=False)
        track, score, steps, lives = cell.track, cell.score, cell.steps, emu.lives()
        self.policy.restart()
        pending: list[tuple[int, Any, Cell]] = []
        for t in range(1, p.explore_steps + 1):
            a = self.policy()
            r = emu.step(a)
            score += r
            steps += 1
            ram = emu.ram()
            track = cells.update(track, ram)
            level = cells.level(ram)
            if level >= 0 and level not in self.levels_first_step:
                self.levels_first_step[level] = self.done
            if candidates.take(level):  # a candidate: its frame, and its object boxes under its step number
                candidates.add(level, crop_resize(emu.screen(), self.cfg.resolution, self.cfg.crop), order=self.done,
                               episode=self.episodes, step=t, action=a, reward=r)
                record_objects(self.objects, self.done, emu)
            if self.target:
                self.level_steps[level] = self.level_steps.get(level, 0) + 1
                self.levels_done += self.level_steps[level] == p.target_level_steps
            self.done += 1
            if self.done % every == 0:
                self.curve.append([self.done, len(archive), self.best_score, self.max_board,
                                   max(self.levels_first_step, default=-1)])
            if emu.game_over() or emu.lives() < lives or self.done >= self.budget or self.reached_target():
                pending.clear()  # died (or out of budget): the recent states are not proven safe
                break
            key = cells.key(track, ram, emu, score)
            self.visited.add(key)
            old = archive.cells.get(key)
            if old is not None:
                archive.visit(old)
            cand = Cell(None, track, cells.progress(track, ram, score), score, cells.board(track), steps)
            if old is None or cand.better_than(old):
                cand.snapshot = emu.clone()
                pending.append((t, key, cand))
            # states that survived `survive_steps` more steps enter the archive
            while pending and pending[0][0] + p.survive_steps <= t:
                _, k, c = pending.pop(0)
                if archive.offer(k, c):
                    self.best_score, self.max_board = max(self.best_score, c.score), max(self.max_board, c.board)
        self.returns.append(score)
        self.episodes += 1

    def stats(self, lineage: int, secs: float, out: dict[str, np.ndarray]) -> dict[str, Any]:
        """The lineage's coverage record (collect.py puts it in the manifest)."""
        done, archive = self.done, self.archive
        scores = np.array([c.score for c in archive.cells.values()])
        return {
            "lineage": lineage,
            "cell": self.cells.name,
            "steps": done,
            "frames_emulated": done * self.cfg.frame_skip,
            "seconds": round(secs, 2),
            "steps_per_second": round(done / max(secs, 1e-9), 1),
            "stopped_by_time_limit": done < self.budget and not self.reached_target(),
            "reached_level_target": self.reached_target(),
            "explorations": self.episodes,
            "cells": len(archive),
            "cells_visited": len(self.visited),
            "best_score": float(scores.max()),
            "cell_score_quantiles": [float(q) for q in np.quantile(scores, [0, 0.25, 0.5, 0.75, 1])],
            "exploration_end_score_quantiles": [float(q) for q in np.quantile(self.returns or [0.0],
                                                                              [0, 0.25, 0.5, 0.75, 1])],
            "max_boards_cleared": int(max(c.board for c in archive.cells.values())),
            "levels_first_step": {str(k): v for k, v in sorted(self.levels_first_step.items())},
            # where the steps went and where the kept frames come from (games without levels: level -1)
            "steps_per_level": {str(k): v for k, v in self.candidates.steps_per_level().items()},
            "frames_per_level": {str(k): int(v) for k, v in zip(*np.unique(out["level"], return_counts=True))},
            "curve": self.curve,  # [steps, cells, best score, boards cleared, highest maze index]
        }


def _grow_lineage(cfg: AtariConfig, label: int, lineage: int, budget: int, seconds: float | None,
                  progress: bool, frames: Path | None, candidates: LevelFrames,
                  candidate_objects: Path | None) -> Lineage:
    g = _Growth.start(cfg, label, lineage, budget, candidates, candidate_objects)
    t0 = time.perf_counter()
    deadline = t0 + seconds if seconds else math.inf
    bar = progress_bar(total=budget, desc=f"{cfg.games[label]} lineage {lineage}", unit="step", disable=not progress,
                       mininterval=5, leave=False)
    while g.done < budget and time.perf_counter() < deadline and not g.reached_target():
        g.explore()
        bar.update(g.done - bar.n)
        bar.set_postfix(cells=len(g.archive), best=int(g.best_score), boards=g.max_board, refresh=False)  # not "1e+3"
    bar.close()
    secs = time.perf_counter() - t0

    out = candidates.choose()
    stats = g.stats(lineage, secs, out)
    chosen_objects = None
    if frames is not None:  # the chosen frames and their objects go to the lineage's own files (see collect.py)
        candidates.write_chosen(out, frames)
        if g.objects.active:
            chosen_objects = keep_chosen_objects(g.objects, out["order"], frames.with_suffix(".objects"))
    return Lineage(frames, out["episode"], out["step"], out["action"], out["reward"], out["level"], stats,
                   chosen_objects)


# ---------------------------------------------------------------------------------------------------- a dataset


def lineage_plan(cfg: AtariConfig, label: int) -> tuple[int, np.ndarray, np.ndarray]:
    """(lineages, step budget per lineage, frames per lineage); both add up exactly to the game's totals."""

    p = cfg.policy_for(label)
    n = min(p.lineages, cfg.frames_per_game)
    budget = p.budget_steps or cfg.frames_per_game
    return n, env_quotas(budget, n), env_quotas(cfg.frames_per_game, n)


def _explore(job) -> Lineage:
    cfg, label, lineage, budget, emit, seconds, progress, frames = job
    return explore_lineage(cfg, label, lineage, budget, emit, seconds, progress, frames)


def collect_explore(cfg: AtariConfig, labels: list[int], scratch: Path | None, workers: int | None = None,
                    progress: bool = True) -> dict[int, GameFrames]:
    """Run the exploring collector for the games `labels` of `cfg` (frames into files under `scratch`); frames
    grouped by lineage for the split."""
    jobs, slots = [], {}
    for label in labels:
        n, budgets, emits = lineage_plan(cfg, label)
        max_s = cfg.policy_for(label).max_seconds
        slots[label] = list(range(len(jobs), len(jobs) + n))
        jobs += [(cfg, label, i, int(budgets[i]), int(emits[i]), max_s / n if max_s else None, progress,
                  Path(scratch) / f"game{label}-lineage{i}.npy" if scratch else None)
                 for i in range(n)]
    results = run_jobs(_explore, jobs, workers)

    games = {}
    for label in labels:
        game = cfg.games[label]
        parts = [results[j] for j in slots[label]]
        first = np.cumsum([0] + [int(ln.episode.max()) + 1 if len(ln.episode) else 0 for ln in parts[:-1]])
        level = np.concatenate([ln.level for ln in parts])
        stats = {
            "policy": "go_explore",
            "rom": resolve_game(game),
            "lineages": [ln.stats for ln in parts],
            "cells_total": int(sum(ln.stats["cells"] for ln in parts)),
            "best_score": max(ln.stats["best_score"] for ln in parts),
            "steps": int(sum(ln.stats["steps"] for ln in parts)),
            "stopped_by_time_limit": any(ln.stats["stopped_by_time_limit"] for ln in parts),
        }
        if (level >= 0).any():
            stats["frames_per_level"] = {str(k): int(v) for k, v in zip(*np.unique(level, return_counts=True))}
            stats["share_beyond_first_level"] = float((level > 0).mean())
            steps = {}
            for ln in parts:
                for k, v in ln.stats["steps_per_level"].items():
                    steps[k] = steps.get(k, 0) + v
            stats["steps_per_level"] = dict(sorted(steps.items(), key=lambda kv: int(kv[0])))
            stats["lineages_reaching_every_level"] = int(sum(
                len(ln.stats["frames_per_level"]) == len(stats["frames_per_level"]) for ln in parts))
        games[label] = GameFrames(
            game=game,
            parts=[(ln.frames, len(ln.step)) for ln in parts],
            episode=np.concatenate([ln.episode + f for ln, f in zip(parts, first)]),
            step=np.concatenate([ln.step for ln in parts]),
            action=np.concatenate([ln.action for ln in parts]),
            reward=np.concatenate([ln.reward for ln in parts]),
            group=np.concatenate([np.full(len(ln.step), i, dtype=np.int64) for i, ln in enumerate(parts)]),
            level=level,
            stats=stats,
            objects=None if parts[0].objects is None else [ln.objects for ln in parts],
        )
    return games


def plot_coverage(games: list[GameFrames], path,
                  split_levels: dict[str, dict[str, dict[str, int]]] | None = None) -> None:
    """Per game: cells over steps, highest level reached over steps (per lineage), and the kept frames per level
    and split (`split_levels`: {split: {game: {level: frames}}}, the manifests' `frames_per_level`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(len(games), 3, figsize=(15, 3 * len(games)), squeeze=False)
    for row, g in zip(axes, games):
        has_levels = "frames_per_level" in g.stats
        for ln in g.stats["lineages"]:
            c = np.array(ln["curve"]).reshape(-1, 5)
            line, = row[0].plot(c[:, 0], c[:, 1], label=f"lineage {ln['lineage']}")
            if has_levels:  # maze number (solid) and board number (dashed)
                row[1].plot(c[:, 0], c[:, 4] + 1, color=line.get_color())
                row[1].plot(c[:, 0], c[:, 3] + 1, color=line.get_color(), ls="--", alpha=0.6)
            else:
                row[1].plot(c[:, 0], c[:, 2], color=line.get_color())
        row[0].set(title=f"{g.game}: distinct cells in the archive", xlabel="agent steps")
        row[1].set(title=f"{g.game}: " + ("maze (solid) and board (dashed) reached" if has_levels else "best score"),
                   xlabel="agent steps")
        if has_levels:
            row[1].yaxis.set_major_locator(MaxNLocator(integer=True))
        for ax in row[:2]:
            ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 3))
        row[0].legend(fontsize=7)
        # kept frames per level and split, with each split's share on top of its bar
        splits = {k: v[g.game] for k, v in (split_levels or {}).items() if g.game in v}
        if not splits:
            row[2].set_axis_off()
            continue
        levels = sorted({int(lv) for counts in splits.values() for lv in counts})
        width = 0.8 / len(splits)
        for i, (split, counts) in enumerate(splits.items()):
            n = np.array([counts.get(str(lv), 0) for lv in levels])
            x = np.arange(len(levels)) + (i - (len(splits) - 1) / 2) * width
            bars = row[2].bar(x, n, width, label=f"{split} ({n.sum()} frames)")
            row[2].bar_label(bars, [f"{v / max(n.sum(), 1):.0%}" for v in n], fontsize=7)
        row[2].set_xticks(range(len(levels)), [str(lv + 1) for lv in levels])
        row[2].set(title=f"{g.game}: kept frames per maze and split", xlabel="maze", ylabel="frames")
        row[2].margins(y=0.25)  # room for the share labels and the legend above the bars
        row[2].legend(fontsize=7, loc="upper center", ncol=len(splits))
    fig.tight_layout()
    atomic_file(path, lambda p: fig.savefig(p, dpi=80))
    plt.close(fig)


def plain_coverage(cfg: AtariConfig, label: int, steps: int, repeat_prob: float, seed_stream: int = 0) -> dict:
    """Cells, best score and levels that plain (sticky-)random play reaches in `steps` agent steps, measured with
    the same cell function as the explorer (for tests and bench/atari_coverage.py)."""

    rom = resolve_game(cfg.games[label])
    rng_emu, rng_pol = stream_rngs(cfg.seed, label, seed_stream)
    emu = Emulator(rom, rng_emu, cfg.frame_skip, cfg.sticky_actions)
    cells = make_cells(rom, cfg.policy_for(label).cell)
    policy = StickyRandom(emu.n_actions, repeat_prob, rng_pol)
    seen, levels, level_steps = set(), set(), 0
    best = score = 0.0
    max_board = t = 0
    emu.reset()
    track = cells.start(emu)
    for _ in range(steps):
        score += emu.step(policy())
        t += 1
        ram = emu.ram()
        track = cells.update(track, ram)
        seen.add(cells.key(track, ram, emu, score))
        lv = cells.level(ram)
        levels.add(lv)
        level_steps += lv > 0
        max_board = max(max_board, cells.board(track))
        best = max(best, score)
        if emu.game_over() or t >= cfg.max_episode_steps:
            emu.reset()
            policy.restart()
            track, score, t = cells.start(emu), 0.0, 0
    return {"cells": len(seen), "best_score": best, "max_boards_cleared": max_board,
            "levels": sorted(x for x in levels if x >= 0), "share_beyond_first_level": level_steps / steps}
