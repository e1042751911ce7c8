"""Sampling settings (or other transformer/tokenizer pairs) against the *train* split: objects in samples and FID.

    python bench/sample_settings.py --data results/data/atari64 --out /tmp/sample_settings --palette-distance 12 \
        '{"name": "default", "transformer": "results/transformer/atari64/ours", "vqgan": "results/vqgan/atari64/ours"}' \
        '{"name": "T0.9", "temperature": 0.9, "transformer": "...", "vqgan": "..."}'

Each argument is one row: `name`, the `transformer` and `vqgan` folders, and any keys of the `sample` section
(`temperature`, `top_k`, `guidance`, `seed`, ...) over the defaults below. Each row runs the sample stage's command
(`python -m vqgan.sample`, 300 samples, seed 11 unless set), then scores the samples as the fid stage scores objects
(`vqgan.eval.sample_objects`: per game, the mean over classes of min(1, sample share / real share), here against
1000 train frames per game) and FID against 300 train frames. Nothing here looks at the val split the table scores,
so settings can be chosen with it. With `--palette-distance D` > 0 the samples are also snapped onto the train
palette (`vqgan.data.palette`, as the pipeline does with `vqgan.palette.max_distance`) and scored again: one line
per row with both. Samples are kept under `--out/<name>` and reused when present (delete them to resample).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from vqgan.data.dataset import evenly_spaced, read_split
from vqgan.data.palette import Snapper
from vqgan.eval.fid import InceptionFeatures, fid_from_features, files_features, list_images, resolve_inception_weights
from vqgan.eval.sample_objects import fit_detectors, object_rate, sample_images, shares, split_games
from vqgan.io.images import load_png, save_png

DEFAULTS = {"n_samples": 300, "batch_size": 50, "top_k": 100, "decode_precision": "fp32", "seed": 11}
# the fruit is left out of Ms. Pac-Man's rate, as the table leaves it out (its detections in decoded frames are
# mostly colour-drifted sprites: docs/objects.md)
SKIP = {"MsPacman": ("fruit",)}


def quiet_features(files, ext, name):
    with contextlib.redirect_stderr(io.StringIO()):
        return files_features(files, ext, 50, name)


def score(folder: Path, detectors, real, ext, train_features) -> dict:
    files = list_images(folder)
    found = shares(detectors, sample_images(folder, list(detectors)))
    rates = {g: object_rate(found[g]["classes"], real[g], SKIP.get(g, ())) for g in found}
    return {"objects": float(np.mean(list(rates.values()))), "per_game": rates,
            "shares": {g: found[g]["classes"] for g in found},
            "fid_train": fid_from_features(quiet_features(files, ext, folder.name), train_features)}


def snapped(folder: Path, snapper: Snapper, distance: int) -> Path:
    """The samples of `folder` snapped, in a sibling folder with its samples.json (which names the files)."""
    out = folder.with_name(f"{folder.name}-snapped{distance}")
    if not out.is_dir():
        out.mkdir(parents=True)
        shutil.copyfile(folder / "samples.json", out / "samples.json")
        for f in list_images(folder):
            save_png(out / f.name, snapper(load_png(f)[None])[0])
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("rows", nargs="+", help="one JSON object per row (see above)")
    p.add_argument("--data", required=True, help="the dataset folder (results/data/{ds}): its train/ split")
    p.add_argument("--out", required=True, help="where the samples go (one folder per row)")
    p.add_argument("--palette-distance", type=int, default=0, help="also score palette-snapped samples (0: no)")
    p.add_argument("--weights-dir", default=None, help="Inception weights folder (default: the fid stage's lookup)")
    args = p.parse_args(argv)
    rows = [json.loads(r) for r in args.rows]
    train = read_split(Path(args.data) / "train")
    detectors = fit_detectors(train)
    frames = {g: np.sort(ix)[evenly_spaced(len(ix), min(1000, len(ix)))] for g, ix in split_games(train).items()}
    real = {g: v["classes"] for g, v in shares(detectors, {g: np.asarray(train.images[ix])
                                                           for g, ix in frames.items()}).items()}
    ext = InceptionFeatures(resolve_inception_weights(args.weights_dir))
    ref = Path(args.out) / "train-reference"
    if not ref.is_dir():
        ref.mkdir(parents=True)
        for k, i in enumerate(evenly_spaced(len(train), 300)):
            save_png(ref / f"{k:06d}.png", np.asarray(train.images[i]))
    train_features = quiet_features(list_images(ref), ext, "train")
    snapper = Snapper.fit(train.images, args.palette_distance, 1e-4) if args.palette_distance > 0 else None
    print("real shares (train):", json.dumps({g: {c: round(v, 2) for c, v in r.items()} for g, r in real.items()}))
    for row in rows:
        row = dict(row)
        name, transformer, vqgan = row.pop("name"), row.pop("transformer"), row.pop("vqgan")
        folder = Path(args.out) / name
        if not folder.is_dir():
            subprocess.run([sys.executable, "-m", "vqgan.sample", "--config", json.dumps({**DEFAULTS, **row}),
                            "--transformer", transformer, "--vqgan", vqgan, "--out", str(folder)], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        result = {"name": name, "raw": score(folder, detectors, real, ext, train_features)}
        if snapper is not None:
            result["snapped"] = score(snapped(folder, snapper, args.palette_distance), detectors, real, ext, train_features)
        line = " | ".join(f"{kind}: objects {r['objects']:.3f} (" + " / ".join(f"{g} {v:.2f}" for g, v in
                          r["per_game"].items()) + f"), FID vs train {r['fid_train']:.1f}"
                          for kind, r in result.items() if kind != "name")
        print(f"{name}: {line}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
