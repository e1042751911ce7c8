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
so no state in val descends from a state in train. Frames are emitted by systematic sampling of the exploration
steps (exactly frames_per_game per game; every step when budget_steps == frames_per_game), so the data follow
where exploration spends its time: mostly the frontier.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from .config import AtariConfig
from .dataset import GameFrames, stream_objects
from .emulator import Emulator
from .frames import crop_resize
from .games import resolve_game
from .objects import ObjectRecorder
from .rollout import StickyRandom, emulator_with_objects, env_quotas, record_objects, run_jobs, stream_rngs

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
    chosen: int = 0
    seen: int = 0

    def better_than(self, other: "Cell") -> bool:
        # Ties go to the later state: Ms. Pac-Man's ~70-step intro is one cell, and keeping its first state would
        # replay the whole intro on every return to the start (measured: fewer cells than sticky-random play).
        return (self.progress, self.score, self.steps) > (other.progress, other.score, other.steps)


class Archive:
    def __init__(self, ms_pacman_weights: bool):
        self.cells: dict[Any, Cell] = {}
        self.board_weights = ms_pacman_weights

    def __len__(self) -> int:
        return len(self.cells)

    def offer(self, key, cell: Cell) -> bool:
        old = self.cells.get(key)
        if old is None or cell.better_than(old):
            if old is not None:
                cell.chosen, cell.seen = old.chosen, old.seen
            self.cells[key] = cell
            return True
        return False

    def weights(self) -> np.ndarray:
        cs = list(self.cells.values())
        chosen = np.fromiter((c.chosen for c in cs), float, len(cs))
        seen = np.fromiter((c.seen for c in cs), float, len(cs))
        prog = np.fromiter((c.progress for c in cs), float, len(cs))
        board = np.fromiter((c.board for c in cs), np.int64, len(cs))
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
        keys = list(self.cells)
        return self.cells[keys[rng.choice(len(keys), p=self.weights())]]


# ---------------------------------------------------------------------------------------------------- one lineage


@dataclass
class Lineage:
    """Frames emitted by one lineage and its coverage record."""

    images: np.ndarray
    episode: np.ndarray
    step: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    level: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)
    objects: ObjectRecorder | None = None  # the emitted frames' object boxes, for games with RAM rules


def explore_lineage(cfg: AtariConfig, label: int, lineage: int, budget: int, emit: int,
                    seconds: float | None = None, progress: bool = True) -> Lineage:
    """Grow one archive from a reset for `budget` agent steps (or `seconds`), emitting `emit` frames."""
    p = cfg.policy_for(label)
    rom = resolve_game(cfg.games[label])
    ss = np.random.SeedSequence([cfg.seed, label, lineage, 0x60E])
    rng_emu, rng_pol, rng_sel = (np.random.default_rng(s) for s in ss.spawn(3))
    emu, objects = emulator_with_objects(cfg, label, rng_emu)
    cells = make_cells(rom, p.cell)
    policy = StickyRandom(emu.n_actions, p.repeat_prob, rng_pol)
    archive = Archive(ms_pacman_weights=isinstance(cells, MsPacmanCells))

    R = cfg.resolution
    images = np.empty((emit, R, R, 3), dtype=np.uint8)
    cols = {k: np.zeros(emit, dtype=np.int64) for k in ("episode", "step", "action", "level")}
    reward_col = np.zeros(emit, dtype=np.float32)

    emu.reset()
    track = cells.start(emu)
    ram = emu.ram()
    archive.offer(cells.key(track, ram, emu, 0.0), Cell(emu.clone(), track, 0.0, 0.0, 0, 0))
    visited = set(archive.cells)  # every cell seen, including states that later proved fatal

    t0 = time.perf_counter()
    deadline = t0 + seconds if seconds else math.inf
    done = n_out = episodes = max_board = 0
    best_score = 0.0
    curve = []                 # (steps, cells, best score, boards, maze) every ~1% of the budget
    every = max(budget // 100, 1)
    levels_first_step: dict[int, int] = {}
    returns: list[float] = []  # game score at the end of every exploration
    bar = tqdm(total=budget, desc=f"{cfg.games[label]} lineage {lineage}", unit="step", disable=not progress,
               mininterval=5, leave=False)
    while done < budget and time.perf_counter() < deadline:
        cell = archive.select(rng_sel)
        cell.chosen += 1
        # Restore the emulator but not the sticky-action RNG: each return explores with fresh randomness.
        emu.restore(cell.snapshot, with_rng=False)
        track, score, steps, lives = cell.track, cell.score, cell.steps, emu.lives()
        policy.restart()
        pending: list[tuple[int, Any, Cell]] = []
        for t in range(1, p.explore_steps + 1):
            a = policy()
            r = emu.step(a)
            score += r
            steps += 1
            ram = emu.ram()
            track = cells.update(track, ram)
            level = cells.level(ram)
            if level >= 0 and level not in levels_first_step:
                levels_first_step[level] = done
            # systematic sampling: exactly `emit` of the `budget` steps, evenly spread
            if (done * emit) // budget != ((done + 1) * emit) // budget:
                images[n_out] = crop_resize(emu.screen(), R, cfg.crop)
                record_objects(objects, n_out, emu)
                cols["episode"][n_out], cols["step"][n_out] = episodes, t
                cols["action"][n_out], cols["level"][n_out] = a, level
                reward_col[n_out] = r
                n_out += 1
            done += 1
            if done % every == 0:
                curve.append([done, len(archive), best_score, max_board, max(levels_first_step, default=-1)])
            if emu.game_over() or emu.lives() < lives or done >= budget:
                pending.clear()  # died (or out of budget): the recent states are not proven safe
                break
            key = cells.key(track, ram, emu, score)
            visited.add(key)
            old = archive.cells.get(key)
            if old is not None:
                old.seen += 1
            cand = Cell(None, track, cells.progress(track, ram, score), score, cells.board(track), steps)
            if old is None or cand.better_than(old):
                cand.snapshot = emu.clone()
                pending.append((t, key, cand))
            # states that survived `survive_steps` more steps enter the archive
            while pending and pending[0][0] + p.survive_steps <= t:
                _, k, c = pending.pop(0)
                if archive.offer(k, c):
                    best_score, max_board = max(best_score, c.score), max(max_board, c.board)
        returns.append(score)
        episodes += 1
        bar.update(done - bar.n)
        bar.set_postfix(cells=len(archive), best=best_score, boards=max_board, refresh=False)
    bar.close()
    secs = time.perf_counter() - t0

    scores = np.array([c.score for c in archive.cells.values()])
    stats = {
        "lineage": lineage,
        "cell": cells.name,
        "steps": done,
        "frames_emulated": done * cfg.frame_skip,
        "seconds": round(secs, 2),
        "steps_per_second": round(done / max(secs, 1e-9), 1),
        "stopped_by_time_limit": done < budget,
        "explorations": episodes,
        "cells": len(archive),
        "cells_visited": len(visited),
        "best_score": float(scores.max()),
        "cell_score_quantiles": [float(q) for q in np.quantile(scores, [0, 0.25, 0.5, 0.75, 1])],
        "exploration_end_score_quantiles": [float(q) for q in np.quantile(returns or [0.0], [0, 0.25, 0.5, 0.75, 1])],
        "max_boards_cleared": int(max(c.board for c in archive.cells.values())),
        "levels_first_step": {str(k): v for k, v in sorted(levels_first_step.items())},
        "curve": curve,  # [steps, cells, best score, boards cleared, highest maze index]
    }
    return Lineage(images[:n_out], cols["episode"][:n_out], cols["step"][:n_out], cols["action"][:n_out],
                   reward_col[:n_out], cols["level"][:n_out], stats, objects)


# ---------------------------------------------------------------------------------------------------- a dataset


def lineage_plan(cfg: AtariConfig, label: int) -> tuple[int, np.ndarray, np.ndarray]:
    """(lineages, step budget per lineage, frames per lineage); both add up exactly to the game's totals."""

    p = cfg.policy_for(label)
    n = min(p.lineages, cfg.frames_per_game)
    budget = p.budget_steps or cfg.frames_per_game
    return n, env_quotas(budget, n), env_quotas(cfg.frames_per_game, n)


def _explore(job) -> Lineage:
    cfg, label, lineage, budget, emit, seconds, progress = job
    return explore_lineage(cfg, label, lineage, budget, emit, seconds, progress)


def collect_explore(cfg: AtariConfig, labels: list[int], workers: int | None = None,
                    progress: bool = True) -> dict[int, GameFrames]:
    """Run the exploring collector for the games `labels` of `cfg`; frames grouped by lineage for the split."""
    jobs, slots = [], {}
    for label in labels:
        n, budgets, emits = lineage_plan(cfg, label)
        max_s = cfg.policy_for(label).max_seconds
        slots[label] = list(range(len(jobs), len(jobs) + n))
        jobs += [(cfg, label, i, int(budgets[i]), int(emits[i]), max_s / n if max_s else None, progress)
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
        games[label] = GameFrames(
            game=game,
            images=np.concatenate([ln.images for ln in parts]),
            episode=np.concatenate([ln.episode + f for ln, f in zip(parts, first)]),
            step=np.concatenate([ln.step for ln in parts]),
            action=np.concatenate([ln.action for ln in parts]),
            reward=np.concatenate([ln.reward for ln in parts]),
            group=np.concatenate([np.full(len(ln.images), i, dtype=np.int64) for i, ln in enumerate(parts)]),
            level=level,
            stats=stats,
            objects=stream_objects([ln.objects for ln in parts], [len(ln.step) for ln in parts]),
        )
    return games


def plot_coverage(games: list[GameFrames], path) -> None:
    """cells over steps (left) and highest level reached over steps (right) per game and lineage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(len(games), 2, figsize=(10, 3 * len(games)), squeeze=False)
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
        for ax in row:
            ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 3))
        row[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
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
