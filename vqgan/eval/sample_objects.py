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

from vqgan.data.dataset import DatasetError, evenly_spaced, read_split
from vqgan.data.object_presence import GameDetector, fit_game, has_presence_rules, ram_presence, reindex_objects
from vqgan.io.cli import command
from vqgan.io.files import prepare_output, refuse_overlap, safe_name, write_json_atomic
from vqgan.io.images import load_png

# A class whose detections in a variant's reconstructions are right less often than this (against RAM) is left out
# of that variant's sample_object_rate: the decoder draws it in colours the detector takes for something else.
MIN_DECODED_PRECISION = 0.8


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


def validation(detectors: dict[str, GameDetector], val,
               decoded: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, dict[str, dict[str, Any]]]:
    """game -> class -> precision, recall, RAM share and detected share (N beside them) against RAM presence: on
    the val frames, or with `decoded` = (val indices, images) on those images instead (a VQGAN's reconstructions
    of them: does the detector still read what that decoder draws?)."""
    out = {}
    for g, idx in split_games(val).items():
        if g not in detectors:
            continue
        if decoded is None:
            frames, images = idx, np.asarray(val.images[idx])
        else:
            keep = np.isin(decoded[0], idx)
            frames, images = decoded[0][keep], decoded[1][keep]
        if not len(frames):
            continue
        det = detectors[g]
        truth = ram_presence(reindex_objects(val.objects, frames), len(frames), det.classes, det.fields)
        found = det.detect(images)
        out[g] = {}
        for cls in det.classes:
            t, p = truth[cls], found[cls]
            tp = int((t & p).sum())
            out[g][cls] = {"n": len(frames), "ram_share": float(t.mean()), "detected_share": float(p.mean()),
                           "precision": tp / int(p.sum()) if p.any() else None,
                           "recall": tp / int(t.sum()) if t.any() else None,
                           "threshold": det.thresholds.get(cls)}
    return out


def reconstructions(recon_dir: str | Path, n_val: int) -> tuple[np.ndarray, np.ndarray] | None:
    """eval_vqgan's reconstructions of the val split (recon/: one PNG per evaluated image, in the order of the
    val indices it evaluated, evenly spaced) -> (val indices, (n, R, R, 3) images); None when there are none."""
    files = sorted(Path(recon_dir).glob("*.png"))
    if not files:
        return None
    images = np.stack([load_png(f) for f in files])
    return evenly_spaced(n_val, len(files)), images


def shares(detectors: dict[str, GameDetector], images_by_game: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """game -> {"n": frames, "classes": class -> share of the frames in which the detector finds it}."""
    out = {}
    for g, images in images_by_game.items():
        if g in detectors and len(images):
            found = detectors[g].detect(images)
            out[g] = {"n": len(images), "classes": {cls: float(f.mean()) for cls, f in found.items()}}
    return out


def object_rate(sample: dict[str, float], real: dict[str, float], skip: Sequence[str] = ()) -> float | None:
    """Mean over the classes real frames show (less `skip`) of min(1, sample share / real share); None when they
    show none."""
    ratios = [min(1.0, sample.get(cls, 0.0) / r) for cls, r in real.items() if r > 0 and cls not in skip]
    return float(np.mean(ratios)) if ratios else None


def sample_images(folder: str | Path, games: Sequence[str]) -> dict[str, np.ndarray]:
    """A sample folder (vqgan.sample: samples.json lists the files, named `<class>_<index>.png`) -> game ->
    (n, R, R, 3), for the `games` it has samples of. The class comes from the file name, not from the order of
    samples.json's keys (a JSON writer may sort them)."""
    folder = Path(folder)
    try:
        files = list(json.loads((folder / "samples.json").read_text())["files"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DatasetError(f"{folder}/samples.json: not a samples.json written by the sample stage ({e}); "
                           "rerun that stage") from None
    names = {safe_name(g): g for g in games}
    by_game: dict[str, list[str]] = {}
    for f in files:
        game = names.get(str(f).rsplit("_", 1)[0])
        if game is not None:
            by_game.setdefault(game, []).append(f)
    return {g: np.stack([load_png(folder / f) for f in fs]) for g, fs in by_game.items()}


def score(train_dir, real_dir, sample_dirs: Sequence[str | Path] = (), recon_dir: str | Path | None = None,
          ) -> dict[str, Any]:
    """Everything the fid stage's `objects` entry holds: per game the real share, each seed's sample shares and
    their mean, and sample_object_rate (per game, and the mean over games), plus the validation against RAM on the
    val frames and, with `recon_dir`, on the variant's reconstructions of them: a class the detector misreads in
    this decoder's output (precision below MIN_DECODED_PRECISION: e.g. a decoded Ms. Pac-Man whose colour drifted
    towards a fruit's) is left out of the rate, since its sample share would count those misreadings."""
    train, val = read_split(train_dir), read_split(real_dir)
    detectors = fit_detectors(train)
    checked = validation(detectors, val)
    # the real shares are the validation's detected shares: one detection pass over the val frames
    real = {g: {"n": next(iter(classes.values()))["n"], "classes": {c: v["detected_share"] for c, v in classes.items()}}
            for g, classes in checked.items() if classes}
    seeds = [shares(detectors, sample_images(d, list(detectors))) for d in sample_dirs]
    recon = reconstructions(recon_dir, len(val)) if recon_dir is not None else None
    decoded = validation(detectors, val, recon) if recon is not None else {}
    per_game = {}
    for g, r in real.items():
        per_seed = [s[g]["classes"] for s in seeds if g in s]
        mean = {cls: float(np.mean([s.get(cls, 0.0) for s in per_seed])) for cls in r["classes"]} if per_seed else {}
        skip = {cls: v["precision"] for cls, v in decoded.get(g, {}).items()
                if v["precision"] is not None and v["precision"] < MIN_DECODED_PRECISION}
        per_game[g] = {"n_real": r["n"], "n_samples": sum(s[g]["n"] for s in seeds if g in s),
                       "real_share": r["classes"], "sample_share": mean or None,
                       "sample_object_rate": object_rate(mean, r["classes"], skip) if per_seed else None,
                       "per_seed_rate": [object_rate(s, r["classes"], skip) for s in per_seed],
                       "left_out": skip}
    rates = [v["sample_object_rate"] for v in per_game.values() if v["sample_object_rate"] is not None]
    return {"sample_object_rate": float(np.mean(rates)) if rates else None, "per_game": per_game,
            "validation": checked, "validation_decoded": decoded or None,
            "definition": "per game, the mean over classes of min(1, share of samples showing the class / share of "
                          "real val frames showing it), by a pixel detector fitted on the training split "
                          "(vqgan.data.object_presence); validation: its precision/recall against RAM on val "
                          "frames and on this variant's reconstructions of them; a class read with precision < "
                          f"{MIN_DECODED_PRECISION} in the reconstructions is left out (left_out)"}


def _f(x: float | None) -> str:
    return "  -  " if x is None else f"{x:5.3f}"


def format_report(result: dict[str, Any]) -> str:
    """Validation and shares as aligned text (one line per class): on val frames, then (`dec`) on the
    reconstructions when given."""
    lines = [f"{'game':10} {'class':7} {'thr':>4} {'prec':>5} {'recall':>6} {'RAM':>5} {'found':>5} "
             f"{'dec.prec':>8} {'dec.rec':>7} {'sample':>6}   (val frames; shares = frames showing the class)"]
    decoded = result.get("validation_decoded") or {}
    for g, classes in result["validation"].items():
        sample = (result["per_game"].get(g) or {}).get("sample_share") or {}
        for cls, v in classes.items():
            d = decoded.get(g, {}).get(cls, {})
            lines.append(f"{g:10} {cls:7} {v['threshold']:4.2f} {_f(v['precision'])} {_f(v['recall']):>6} "
                         f"{v['ram_share']:5.3f} {v['detected_share']:5.3f} {_f(d.get('precision')):>8} "
                         f"{_f(d.get('recall')):>7} {_f(sample.get(cls)):>6}")
        entry = result["per_game"].get(g) or {}
        if entry.get("sample_object_rate") is not None:
            left = ", ".join(f"{c} (precision {p:.2f})" for c, p in (entry.get("left_out") or {}).items())
            lines.append(f"{g:10} sample_object_rate {entry['sample_object_rate']:.3f}"
                         + (f"; left out: {left}" if left else ""))
    return "\n".join(lines)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", required=True, help="the training split (fits the detector: backgrounds, sizes)")
    p.add_argument("--val", required=True, help="the real val split (validation against RAM, real shares)")
    p.add_argument("--samples", nargs="*", default=[], help="sample folders (vqgan.sample), one per seed")
    p.add_argument("--recon", default=None, help="eval_vqgan's reconstructions of the val split (recon/): the "
                                                 "detector validated on this decoder's output")
    p.add_argument("--out", help="write the result as JSON here")
    return p.parse_args(argv)


@command
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.out:
        refuse_overlap({"--out": args.out}, {"--train": args.train, "--val": args.val, "--samples": args.samples,
                                             "--recon": args.recon})
        prepare_output(args.out)
    result = score(args.train, args.val, args.samples, args.recon)
    print(format_report(result), flush=True)
    if args.out:
        write_json_atomic(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
