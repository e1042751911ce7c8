"""What both collectors (plain policies in collect.py, Go-Explore in explore.py) share: per-stream seeding, frame
quotas, the sticky-random policy, the process pool that runs independent streams, and the per-frame object boxes."""
from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from vqgan.data.atari_screen import resolve_game

from .config import AtariConfig
from .emulator import Emulator
from .objects import ObjectRecorder, ram_lag


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def stream_rngs(seed: int, label: int, stream: int) -> tuple[np.random.Generator, np.random.Generator]:
    """(sticky-action, policy) generators of one stream; adding a game or a stream never changes another's data."""
    ss_emu, ss_policy = np.random.SeedSequence([seed, label, stream]).spawn(2)
    return np.random.default_rng(ss_emu), np.random.default_rng(ss_policy)


def env_quotas(frames: int, num_envs: int) -> np.ndarray:
    """Frames each stream contributes; they add up to exactly `frames`."""
    q = np.full(num_envs, frames // num_envs, dtype=np.int64)
    q[: frames % num_envs] += 1
    return q


class StickyRandom:
    """Keep the last action with probability `repeat` (0 = uniform random), else draw a fresh one.

    Two draws every step, used or not, so the action stream is a fixed function of the seed.
    """

    def __init__(self, n_actions: int, repeat: float, rng: np.random.Generator):
        self.n, self.repeat, self.rng = n_actions, repeat, rng
        self.last = int(rng.integers(n_actions))

    def __call__(self) -> int:
        keep = self.rng.random() < self.repeat
        fresh = int(self.rng.integers(self.n))
        self.last = self.last if keep else fresh
        return self.last

    def restart(self) -> None:
        self.last = int(self.rng.integers(self.n))


def run_jobs(fn, jobs: list, workers: int | None = None, done=None) -> list:
    """`[fn(job) for job in jobs]`, in order, over `workers` processes (in this process when 1)."""
    workers = min(workers or default_workers(), len(jobs))
    out = []
    if workers <= 1:
        for job in jobs:
            out.append(fn(job))
            done and done(out[-1])
        return out
    # fork: workers inherit the imported modules instead of re-importing ale-py and numpy (~0.5 s each)
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        for r in pool.map(fn, jobs):
            out.append(r)
            done and done(r)
    return out


def emulator_with_objects(cfg: AtariConfig, label: int, rng: np.random.Generator,
                          objects_file: Path | None = None) -> tuple[Emulator, ObjectRecorder]:
    """The game's emulator, keeping the RAM its screens are drawn from, and the recorder of its object boxes
    (into `objects_file`; None: in memory)."""
    rom = resolve_game(cfg.games[label])
    objects = ObjectRecorder(rom, cfg.crop, cfg.resolution, objects_file)
    lag = ram_lag(rom) if objects.active else 0
    return Emulator(rom, rng, cfg.frame_skip, cfg.sticky_actions, ram_lag=lag), objects


def record_objects(objects: ObjectRecorder, frame: int, emu: Emulator) -> None:
    """Object boxes of the frame on screen now (a no-op for games without RAM rules)."""
    if objects.active:
        objects.add(frame, emu.drawn_ram(), emu.screen())
