"""atari-collect: play the configured Atari games and write `{out}/train` and `{out}/val`.

    atari-collect --config '{"kind": "atari", "resolution": 64, "games": ["MsPacman", "Pong"],
                             "frames_per_game": 4000}' --out results/data/atari64

    # Ms. Pac-Man with the exploring collector until every lineage is 20k steps into the 4th maze (~15 CPU-min),
    # frames split equally over the mazes; the others sticky-random:
    atari-collect --config '{"kind": "atari", "resolution": 64, "games": ["MsPacman", "Pong"],
                             "frames_per_game": 4000, "game_policy": {"MsPacman": {"name": "go_explore",
                             "budget_steps": 4000000, "lineages": 4, "target_levels": 4}}}' --out results/data/atari64

`--config` is one `datasets.<name>` entry (inline JSON or a YAML/JSON file). Environment things (processes) are
flags; everything that changes the data is in the config. Games collected with go_explore also get
OUT/coverage.png (cells and levels over steps, kept frames per level and split); their coverage numbers are in the
manifests (per_game; frames_per_level per split).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import yaml

from vqgan.data.dataset import DatasetError, prepare_splits, scratch_dir
from vqgan.io.files import refuse_overlap

from .collect import collect
from .config import ConfigError, parse_config
from .dataset import CollectError, write_dataset
from .explore import plot_coverage

# Bad input: one line and exit code 2, as every vqgan command does through vqgan.io.cli.command (which this
# package may not import: it knows only the dataset contract). OSError: missing files, permissions, a full disk.
BAD_INPUT_ERRORS = (ConfigError, CollectError, DatasetError, OSError)


def read_config(value: str) -> dict:
    """`--config`: inline JSON (what the rule passes) or a YAML/JSON file (by hand). JSON is YAML too."""
    try:
        text = value if value.lstrip().startswith("{") else Path(value).read_text()
        raw = yaml.safe_load(text)
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"--config {value[:80]!r}: {' '.join(str(e).split())}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"--config must hold one datasets.<name> mapping, got {type(raw).__name__}")
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
    p.add_argument("--debug", action="store_true", help="show the traceback of a bad-input error")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers {args.workers}: give a positive number of processes, or leave it out")
    try:
        return run(args)
    except BAD_INPUT_ERRORS as e:
        if args.debug or os.environ.get("VQGAN_DEBUG", "") not in ("", "0"):
            raise
        message = f"{e.filename}: {e.strerror}" if isinstance(e, OSError) and e.strerror and e.filename else str(e)
        print(f"atari-collect: error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def run(args: argparse.Namespace) -> int:
    refuse_overlap({"--out": args.out}, {"--config": args.config})
    raw = read_config(args.config)
    if args.seed_override is not None:
        raw = {**raw, "seed": args.seed_override}
    cfg = parse_config(raw)
    for leftover in prepare_splits(args.out):  # fails now if --out is not writable
        print(f"removed {leftover}, left by a killed run", file=sys.stderr)

    t0 = time.perf_counter()
    # frames wait in a scratch folder inside OUT until the split is known (see dataset.py)
    with scratch_dir(Path(args.out) / "frames") as scratch:
        games = collect(cfg, scratch, args.workers, progress=not args.no_progress)
        made_by = "; ".join(
            f"{g.game}: " + (
                "Go-Explore-style archive of cells with cloneState/restoreState and sticky-random explorations "
                "(atari_collect.explore), split by lineage" if g.stats["policy"] == "go_explore" else
                f"{g.stats['policy']} policy in {cfg.num_envs} seeded ALEInterface streams "
                "(atari_collect.collect), split by episode")
            for g in games) + "; INTER_AREA resize"
        written = write_dataset(args.out, cfg, games, made_by)
    explored = [g for g in games if g.stats["policy"] == "go_explore"]
    if explored:
        levels = {s: json.loads((Path(p) / "manifest.json").read_text())["frames_per_level"]
                  for s, p in written.items()}
        plot_coverage(explored, f"{args.out}/coverage.png", levels)
    secs = time.perf_counter() - t0
    n = sum(len(g) for g in games)
    print(f"atari-collect: {n} frames from {len(games)} game(s) in {secs:.1f} s ({n / secs:.0f} frames/s) -> "
          + ", ".join(str(p) for p in written.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
