"""Do generated Atari frames contain the game's objects? Per game and object class, the share of samples in which
the class is found, beside the same share on real val frames, with the detector of `vqgan.data.object_presence`
(fitted on the training split's frames and RAM boxes, so it works at the dataset's resolution).

    sample_object_rate(game) = mean over the game's classes of min(1, sample share / real share)

It is 1 when samples show every class at least as often as real frames do, 0 when they show none; classes that
real val frames never show are left out. A sampler that draws only the background (maze, court, wall) scores the
share of classes that are part of it (Breakout's bricks), never 1.

Validation against RAM (`validation`): on the real val frames, per class, the detector's precision and recall of
"this frame shows the class" against RAM presence (a drawn instance in the class's field). The command prints it:

    python -m vqgan.eval.sample_objects --train results/data/atari64/train --val results/data/atari64/val \
        [--samples results/samples/atari64/ours/seed1 ...] --out objects.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from vqgan.data.dataset import DatasetError, read_split
from vqgan.data.object_presence import GameDetector, fit_game, has_presence_rules, ram_presence, reindex_objects
from vqgan.io.cli import command
from vqgan.io.files import prepare_output, refuse_overlap, write_json_atomic


def split_games(split) -> dict[str, np.ndarray]:
    """game -> indices of its frames, for the games the split has object truth and presence rules for."""
    truth = set((split.manifest.get("object_truth") or {}).get("games") or [])
    names = split.class_names
    return {g: np.flatnonzero(split.labels == c) for c, g in enumerate(names)
            if g in truth and has_presence_rules(g) and split.objects is not None}


def _levels(split, idx: np.ndarray) -> np.ndarray | None:
    return split.meta["level"].to_numpy(np.int64)[idx] if "level" in split.meta.columns else None


def fit_detectors(train) -> dict[str, GameDetector]:
    """One detector per game of the training split that has object truth (RAM boxes) and presence rules."""
    crop = (train.manifest.get("config") or {}).get("crop")
    return {g: fit_game(g, train.images[idx], reindex_objects(train.objects, idx), _levels(train, idx), crop)
            for g, idx in split_games(train).items() if len(idx)}


def validation(detectors: dict[str, GameDetector], val) -> dict[str, dict[str, dict[str, Any]]]:
    """game -> class -> precision, recall, RAM share and detected share on the val frames (N beside them)."""
    out = {}
    for g, idx in split_games(val).items():
        if g not in detectors or not len(idx):
            continue
        det = detectors[g]
        truth = ram_presence(reindex_objects(val.objects, idx), len(idx), det.classes, det.fields)
        found = det.detect(np.asarray(val.images[idx]))
        out[g] = {}
        for cls in det.classes:
            t, p = truth[cls], found[cls]
            tp = int((t & p).sum())
            out[g][cls] = {"n": len(idx), "ram_share": float(t.mean()), "detected_share": float(p.mean()),
                           "precision": tp / int(p.sum()) if p.any() else None,
                           "recall": tp / int(t.sum()) if t.any() else None,
                           "threshold": det.thresholds.get(cls)}
    return out


def shares(detectors: dict[str, GameDetector], images_by_game: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """game -> {"n": frames, "classes": class -> share of the frames in which the detector finds it}."""
    out = {}
    for g, images in images_by_game.items():
        if g in detectors and len(images):
            found = detectors[g].detect(images)
            out[g] = {"n": len(images), "classes": {cls: float(f.mean()) for cls, f in found.items()}}
    return out


def object_rate(sample: dict[str, float], real: dict[str, float]) -> float | None:
    """Mean over the classes real frames show of min(1, sample share / real share); None when they show none."""
    ratios = [min(1.0, sample.get(cls, 0.0) / r) for cls, r in real.items() if r > 0]
    return float(np.mean(ratios)) if ratios else None


def sample_images(folder: str | Path, games: Sequence[str]) -> dict[str, np.ndarray]:
    """A sample folder (vqgan.sample: samples.json lists the files class by class) -> game -> (n, R, R, 3)."""
    folder = Path(folder)
    try:
        info = json.loads((folder / "samples.json").read_text())
        files, per_class = list(info["files"]), dict(info["per_class"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DatasetError(f"{folder}/samples.json: not a samples.json written by the sample stage ({e}); "
                           "rerun that stage") from None
    out, k = {}, 0
    for name, n in per_class.items():
        names, k = files[k:k + int(n)], k + int(n)
        if name in games and names:
            out[name] = np.stack([np.asarray(Image.open(folder / f).convert("RGB")) for f in names])
    return out


def score(train_dir, real_dir, sample_dirs: Sequence[str | Path] = ()) -> dict[str, Any]:
    """Everything the fid stage's `objects` entry holds: per game the real share, each seed's sample shares and
    their mean, and sample_object_rate (per game, and the mean over games), plus the validation against RAM."""
    train, val = read_split(train_dir), read_split(real_dir)
    detectors = fit_detectors(train)
    games = split_games(val)
    real = shares(detectors, {g: np.asarray(val.images[idx]) for g, idx in games.items()})
    seeds = [shares(detectors, sample_images(d, list(detectors))) for d in sample_dirs]
    per_game = {}
    for g, r in real.items():
        per_seed = [s[g]["classes"] for s in seeds if g in s]
        mean = {cls: float(np.mean([s.get(cls, 0.0) for s in per_seed])) for cls in r["classes"]} if per_seed else {}
        per_game[g] = {"n_real": r["n"], "n_samples": sum(s[g]["n"] for s in seeds if g in s),
                       "real_share": r["classes"], "sample_share": mean or None,
                       "sample_object_rate": object_rate(mean, r["classes"]) if per_seed else None,
                       "per_seed_rate": [object_rate(s, r["classes"]) for s in per_seed]}
    rates = [v["sample_object_rate"] for v in per_game.values() if v["sample_object_rate"] is not None]
    return {"sample_object_rate": float(np.mean(rates)) if rates else None, "per_game": per_game,
            "validation": validation(detectors, val),
            "definition": "per game, the mean over classes of min(1, share of samples showing the class / share of "
                          "real val frames showing it), by a pixel detector fitted on the training split "
                          "(vqgan.data.object_presence); validation: its precision/recall against RAM on val"}


def _f(x: float | None) -> str:
    return "  -  " if x is None else f"{x:5.3f}"


def format_report(result: dict[str, Any]) -> str:
    """Validation and shares as aligned text (one line per class)."""
    lines = [f"{'game':10} {'class':7} {'thr':>4} {'prec':>5} {'recall':>6} {'RAM':>5} {'found':>5} "
             f"{'sample':>6}   (val frames; shares = frames showing the class)"]
    for g, classes in result["validation"].items():
        sample = (result["per_game"].get(g) or {}).get("sample_share") or {}
        for cls, v in classes.items():
            lines.append(f"{g:10} {cls:7} {v['threshold']:4.2f} {_f(v['precision'])} {_f(v['recall']):>6} "
                         f"{v['ram_share']:5.3f} {v['detected_share']:5.3f} {_f(sample.get(cls)):>6}")
        rate = (result["per_game"].get(g) or {}).get("sample_object_rate")
        if rate is not None:
            lines.append(f"{g:10} sample_object_rate {rate:.3f}")
    return "\n".join(lines)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", required=True, help="the training split (fits the detector: backgrounds, sizes)")
    p.add_argument("--val", required=True, help="the real val split (validation against RAM, real shares)")
    p.add_argument("--samples", nargs="*", default=[], help="sample folders (vqgan.sample), one per seed")
    p.add_argument("--out", help="write the result as JSON here")
    return p.parse_args(argv)


@command
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.out:
        refuse_overlap({"--out": args.out}, {"--train": args.train, "--val": args.val, "--samples": args.samples})
        prepare_output(args.out)
    result = score(args.train, args.val, args.samples)
    print(format_report(result), flush=True)
    if args.out:
        write_json_atomic(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
