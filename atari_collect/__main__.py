"""atari-collect: play the configured Atari games and write `{out}/train` and `{out}/val`.

    atari-collect --config '{"kind": "atari", "resolution": 64, "games": ["MsPacman", "Pong"],
                             "frames_per_game": 4000}' --out results/data/atari64

    # Ms. Pac-Man with the exploring collector (reaches the 2nd maze), the others sticky-random:
    atari-collect --config '{"kind": "atari", "resolution": 64, "games": ["MsPacman", "Pong"],
                             "frames_per_game": 4000, "game_policy": {"MsPacman": {"name": "go_explore",
                             "budget_steps": 600000, "lineages": 4}}}' --out results/data/atari64

`--config` is one `datasets.<name>` entry (inline JSON or a YAML/JSON file). Environment things (processes) are
flags; everything that changes the data is in the config. Games collected with go_explore also get
OUT/coverage.png (cells and levels over steps); their coverage numbers are in the manifests (per_game).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import yaml

from .collect import collect
from .config import ConfigError, parse_config
from .dataset import CollectError, write_dataset
from .explore import plot_coverage


def read_config(value: str) -> dict:
    """`--config`: inline JSON (what the rule passes) or a YAML/JSON file (by hand). JSON is YAML too."""
    try:
        text = value if value.lstrip().startswith("{") else Path(value).read_text()
        raw = yaml.safe_load(text)
    except (OSError, yaml.YAMLError) as e:
        raise SystemExit(f"atari-collect: --config {value[:80]!r}: {e}") from None
    if not isinstance(raw, dict):
        raise SystemExit(f"atari-collect: --config must hold one datasets.<name> mapping, got {type(raw).__name__}")
    return raw


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="atari-collect",
        description="Collect an Atari frame dataset (train/val split by episode) with ale-py.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("--config", required=True, help="one datasets.<name> entry: inline JSON or a YAML/JSON file")
    p.add_argument("--out", required=True, help="dataset folder; writes OUT/train and OUT/val")
    p.add_argument("--seed-override", type=int, default=None, metavar="SEED",
                   help="use this seed instead of the config's (e.g. for a second sample of the same config)")
    p.add_argument("--workers", type=int, default=None,
                   help="emulator processes (default: the CPUs this process may use); does not change the data")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers {args.workers}: give a positive number of processes, or leave it out")
    raw = read_config(args.config)
    if args.seed_override is not None:
        raw = {**raw, "seed": args.seed_override}
    try:
        cfg = parse_config(raw)
    except ConfigError as e:
        raise SystemExit(f"atari-collect: {e}")

    t0 = time.perf_counter()
    try:
        games = collect(cfg, args.workers, progress=not args.no_progress)
        made_by = "; ".join(
            f"{g.game}: " + (
                "Go-Explore-style archive of cells with cloneState/restoreState and sticky-random explorations "
                "(atari_collect.explore), split by lineage" if g.stats["policy"] == "go_explore" else
                f"{g.stats['policy']} policy in {cfg.num_envs} seeded ALEInterface streams (atari_collect.collect), "
                "split by episode")
            for g in games) + "; INTER_AREA resize"
        written = write_dataset(args.out, cfg, games, made_by)
    except CollectError as e:
        raise SystemExit(f"atari-collect: {e}")
    explored = [g for g in games if g.stats["policy"] == "go_explore"]
    if explored:
        plot_coverage(explored, f"{args.out}/coverage.png")
    secs = time.perf_counter() - t0
    n = sum(len(g.images) for g in games)
    print(f"atari-collect: {n} frames from {len(games)} game(s) in {secs:.1f} s ({n / secs:.0f} frames/s) -> "
          + ", ".join(str(p) for p in written.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
