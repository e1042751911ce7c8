"""Coverage of Atari games per 10^5 emulator frames: random vs sticky-random vs the exploring collector.

For each game: distinct cells visited (the explorer's cell function for every policy: RAM cells for Ms. Pac-Man,
11x8x8 grayscale screens otherwise), best score, boards cleared and mazes reached (Ms. Pac-Man only; other games
expose no level here) and emulator frames/s. One lineage, seed 0, one run each. With --lineages N, Go-Explore also runs
lineages 1..N-1 (as the collector does) and prints, per lineage, the agent step at which each maze was first reached
and how the kept frames (--frames-kept per lineage) fall on the mazes.

    python bench/atari_coverage.py --frames 100000 --games Pong Breakout MsPacman SpaceInvaders
    # steps each default lineage needs to reach every Ms. Pac-Man maze (stops 20k steps into the 4th):
    python bench/atari_coverage.py --games MsPacman --frames 4000000 --lineages 4 --target-levels 4 --go-explore-only
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
    p.add_argument("--frames", type=int, default=100_000, help="emulator frames per game and policy (a limit "
                   "with --target-levels)")
    p.add_argument("--lineages", type=int, default=1, help="Go-Explore lineages to run (each from its own reset)")
    p.add_argument("--target-levels", type=int, default=None, help="stop a lineage once this many levels had "
                   "--target-level-steps steps (policy.target_levels)")
    p.add_argument("--target-level-steps", type=int, default=20000)
    p.add_argument("--frames-kept", type=int, default=1000, help="frames a lineage keeps (LevelFrames)")
    p.add_argument("--go-explore-only", action="store_true", help="skip random and sticky-random play")
    args = p.parse_args()
    steps = args.frames // 4
    print(f"{args.frames} emulator frames ({steps} agent steps, frame skip 4, sticky actions 0.25) per game and "
          f"policy; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'game':>14} {'policy':>14} {'cells':>7} {'best':>8} {'boards':>7} {'mazes':>8} {'>maze1':>7} "
          f"{'frames/s':>9} {'frames/CPU-s':>12}")
    for game in args.games:
        cfg = parse_config({"kind": "atari", "resolution": 64, "games": [game], "frames_per_game": 100,
                            "policy": {"name": "go_explore", "target_levels": args.target_levels,
                                       "target_level_steps": args.target_level_steps}})
        rows = []
        for name, repeat in (() if args.go_explore_only else (("random", 0.0), ("sticky_random", 0.75))):
            w, c = time.perf_counter(), time.process_time()
            r = plain_coverage(cfg, 0, steps, repeat)
            rows.append((name, r["cells"], r["best_score"], r["max_boards_cleared"], r["levels"],
                         r["share_beyond_first_level"], args.frames, time.perf_counter() - w, time.process_time() - c))
        w, c = time.perf_counter(), time.process_time()
        ln = explore_lineage(cfg, 0, 0, steps, args.frames_kept, progress=False)
        s = ln.stats
        mazes = sorted(int(k) for k in s["levels_first_step"])
        first = s["levels_first_step"]
        beyond = (s["steps"] - min((v for k, v in first.items() if int(k) > 0), default=s["steps"])) / s["steps"]
        rows.append(("go_explore", s["cells_visited"], s["best_score"], s["max_boards_cleared"], mazes, beyond,
                     s["frames_emulated"], time.perf_counter() - w, time.process_time() - c))
        for name, cells, best, boards, levels, share, frames, wall, cpu in rows:
            lv = ",".join(str(x + 1) for x in levels) if levels else "-"
            print(f"{game:>14} {name:>14} {cells:>7} {best:>8.0f} {boards:>7} {lv:>8} {share:>7.1%} "
                  f"{frames / wall:>9.0f} {frames / cpu:>12.0f}", flush=True)
        lineages = [s] + [explore_lineage(cfg, 0, i, steps, args.frames_kept, progress=False).stats
                          for i in range(1, args.lineages)]
        if s["levels_first_step"]:
            for ln_stats in lineages:
                print(f"{game:>14} go_explore lineage {ln_stats['lineage']}: {ln_stats['steps']} steps "
                      f"({ln_stats['seconds']:.0f} s), first step in maze " + ", ".join(
                          f"{int(k) + 1}: {v}" for k, v in ln_stats["levels_first_step"].items())
                      + "; steps per maze " + str(ln_stats["steps_per_level"]) + "; kept frames per maze "
                      + str(ln_stats["frames_per_level"]), flush=True)
    print("cells: distinct cells visited; mazes: Ms. Pac-Man maze numbers seen (1 = pink); >maze1: share of steps "
          "after the first step in a later maze (an upper bound for go_explore: steps since it first got there)")


if __name__ == "__main__":
    main()
