"""Go-Explore's coverage figure, redrawn from a collected dataset's manifests (the report's copy, drawn by a job
whose inputs are the split folders it reads, rather than copied from a file the collector leaves beside them):

    python -m atari_collect.coverage --data results/data/atari64 --out results/plots/coverage_atari64.png

The figure is the one `atari-collect` writes to OUT/coverage.png: the manifests hold every number it is drawn from
(per_game: each lineage's curve; frames_per_level per split).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

from vqgan.io.files import refuse_overlap

from .explore import plot_coverage

SPLITS = ("train", "val")


def explored_games(data: str | Path) -> tuple[list[SimpleNamespace], dict[str, dict[str, dict[str, int]]]]:
    """The games of `data` collected by Go-Explore (each with `game` and `stats`, as plot_coverage reads them) and
    every split's kept frames per level."""
    manifests = {s: json.loads((Path(data) / s / "manifest.json").read_text()) for s in SPLITS}
    per_game = {g: st for m in manifests.values() for g, st in m.get("per_game", {}).items()}
    games = [SimpleNamespace(game=g, stats=st) for g, st in per_game.items() if st.get("policy") == "go_explore"]
    return games, {s: m.get("frames_per_level", {}) for s, m in manifests.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m atari_collect.coverage", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="dataset folder written by atari-collect (holds train/ and val/)")
    p.add_argument("--out", required=True, help="PNG to write")
    args = p.parse_args(argv)
    try:
        refuse_overlap({"--out": args.out}, {"--data": args.data})
        games, levels = explored_games(args.data)
    except (OSError, ValueError) as e:
        print(f"atari_collect.coverage: error: {e}", file=sys.stderr)
        return 2
    if not games:
        print(f"atari_collect.coverage: error: no game of {args.data} was collected by go_explore", file=sys.stderr)
        return 2
    plot_coverage(games, args.out, levels)
    return 0


if __name__ == "__main__":
    sys.exit(main())
