"""Coverage of Atari games per 10^5 emulator frames: random vs sticky-random vs the exploring collector.

For each game: distinct cells visited (the explorer's cell function for every policy: RAM cells for Ms. Pac-Man,
11x8x8 grayscale screens otherwise), best score, boards cleared and mazes reached (Ms. Pac-Man only; other games
expose no level here) and emulator frames/s. One lineage, seed 0, one run each.

    python bench/atari_coverage.py --frames 100000 --games Pong Breakout MsPacman SpaceInvaders
"""
from __future__ import annotations

import argparse
import os
import time

from atari_collect.config import parse_config
from atari_collect.explore import explore_lineage, plain_coverage


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--games", nargs="+", default=["Pong", "Breakout", "MsPacman", "SpaceInvaders"])
    p.add_argument("--frames", type=int, default=100_000, help="emulator frames per game and policy")
    args = p.parse_args()
    steps = args.frames // 4
    print(f"{args.frames} emulator frames ({steps} agent steps, frame skip 4, sticky actions 0.25) per game and "
          f"policy; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'game':>14} {'policy':>14} {'cells':>7} {'best':>8} {'boards':>7} {'mazes':>8} {'>maze1':>7} "
          f"{'frames/s':>9} {'frames/CPU-s':>12}")
    for game in args.games:
        cfg = parse_config({"kind": "atari", "resolution": 64, "games": [game], "frames_per_game": 100,
                            "policy": {"name": "go_explore"}})
        rows = []
        for name, repeat in (("random", 0.0), ("sticky_random", 0.75)):
            w, c = time.perf_counter(), time.process_time()
            r = plain_coverage(cfg, 0, steps, repeat)
            rows.append((name, r["cells"], r["best_score"], r["max_boards_cleared"], r["levels"],
                         r["share_beyond_first_level"], time.perf_counter() - w, time.process_time() - c))
        w, c = time.perf_counter(), time.process_time()
        ln = explore_lineage(cfg, 0, 0, steps, 1, progress=False)
        s = ln.stats
        mazes = sorted(int(k) for k in s["levels_first_step"])
        first = s["levels_first_step"]
        beyond = (s["steps"] - min((v for k, v in first.items() if int(k) > 0), default=s["steps"])) / s["steps"]
        rows.append(("go_explore", s["cells_visited"], s["best_score"], s["max_boards_cleared"], mazes, beyond,
                     time.perf_counter() - w, time.process_time() - c))
        for name, cells, best, boards, levels, share, wall, cpu in rows:
            lv = ",".join(str(x + 1) for x in levels) if levels else "-"
            print(f"{game:>14} {name:>14} {cells:>7} {best:>8.0f} {boards:>7} {lv:>8} {share:>7.1%} "
                  f"{args.frames / wall:>9.0f} {args.frames / cpu:>12.0f}", flush=True)
    print("cells: distinct cells visited; mazes: Ms. Pac-Man maze numbers seen (1 = pink); >maze1: share of steps "
          "after the first step in a later maze (an upper bound for go_explore: steps since it first got there)")


if __name__ == "__main__":
    main()
