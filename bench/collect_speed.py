"""Frames/s of the Atari collector vs a plain gymnasium single-env loop doing the same work.

Same games, frames, frame skip, sticky actions, sticky-random policy and INTER_AREA resize into one preallocated
array; the baseline is the loop a newcomer writes (`gym.make("ALE/<Game>-v5")`, step, resize, reset on done).
The collector runs all games at once (that is how the stage runs), with each `--num-envs` value; the baseline runs
before and after and its mean is used, so a change in load from other users of the machine hits both alike.
Prints wall-clock and CPU-time (all processes) figures and their ratios.

    python bench/collect_speed.py --games MsPacman Pong Breakout --frames 4000 --resolution 64
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import ale_py
import cv2
import gymnasium as gym
import numpy as np

from atari_collect.collect import collect_plain
from atari_collect.config import parse_config
from atari_collect.rollout import default_workers


def baseline(game: str, frames: int, resolution: int, cfg) -> None:
    """The single-env gymnasium loop producing `frames` resized frames (env creation included, as in the
    collector, which creates `num_envs` emulators)."""
    gym.register_envs(ale_py)
    env = gym.make(f"ALE/{game}-v5", frameskip=cfg.frame_skip, repeat_action_probability=cfg.sticky_actions,
                   max_episode_steps=cfg.max_episode_steps)
    rng = np.random.default_rng(0)
    n = env.action_space.n
    out = np.empty((frames, resolution, resolution, 3), np.uint8)
    obs, _ = env.reset(seed=1)
    last = int(rng.integers(n))
    for i in range(frames):
        out[i] = cv2.resize(obs, (resolution, resolution), interpolation=cv2.INTER_AREA)
        last = last if rng.random() < cfg.policy.repeat_prob else int(rng.integers(n))
        obs, _, term, trunc, _ = env.step(last)
        if term or trunc:
            obs, _ = env.reset()
    env.close()


def timed(fn, *args, **kw) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process and its finished children): CPU time is the fair figure on a
    busy machine, wall time is what a user waits."""
    def cpu():
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    w, c = time.perf_counter(), cpu()
    fn(*args, **kw)
    return time.perf_counter() - w, cpu() - c


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--games", nargs="+", default=["MsPacman", "Pong", "Breakout"])
    p.add_argument("--frames", type=int, default=4000, help="frames per game")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--num-envs", type=int, nargs="+", default=[8], help="streams per game to try")
    p.add_argument("--workers", type=int, default=default_workers())
    args = p.parse_args()
    cv2.setNumThreads(1)  # the baseline loop resizes one small frame at a time; threads only add overhead

    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, ale-py {ale_py.__version__}, "
          f"{len(args.games)} games x {args.frames} frames at {args.resolution} px, {args.workers} workers")
    n = args.frames * len(args.games)

    def run_baseline():
        for game in args.games:
            cfg = parse_config({"kind": "atari", "resolution": args.resolution, "games": [game],
                                "frames_per_game": args.frames})
            baseline(game, args.frames, args.resolution, cfg)

    base = [np.array(timed(run_baseline))]
    vec = {}
    for ne in args.num_envs:
        cfg = parse_config({"kind": "atari", "resolution": args.resolution, "games": args.games,
                            "frames_per_game": args.frames, "num_envs": ne})
        with tempfile.TemporaryDirectory() as scratch:  # the collector writes frames to disk, as in a real run
            vec[ne] = np.array(timed(collect_plain, cfg, list(range(len(args.games))), Path(scratch), args.workers,
                                     progress=False))
    base.append(np.array(timed(run_baseline)))
    b = np.mean(base, axis=0)
    print(f"single gymnasium env: {n / b[0]:.0f} frames/s wall, {n / b[1]:.0f} frames/CPU-s "
          f"(two runs: {n / base[0][0]:.0f}, {n / base[1][0]:.0f} frames/s)")
    for ne, v in vec.items():
        print(f"collector, {ne} streams/game: {n / v[0]:.0f} frames/s wall, {n / v[1]:.0f} frames/CPU-s -> "
              f"ratio {b[0] / v[0]:.2f}x wall, {b[1] / v[1]:.2f}x CPU efficiency")
    print(f"load average now {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
