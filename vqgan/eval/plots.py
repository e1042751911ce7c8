"""Figures for the Snakemake report: training curves, per-rule time and memory, and a look at each dataset.

    python -m vqgan.eval.plots curves --metrics results/vqgan/{ds}/{variant}/metrics.csv --out curves.png
    python -m vqgan.eval.plots benchmarks --bench benchmarks/*.tsv --out benchmarks.png
    python -m vqgan.eval.plots data-grid --data results/data/{ds}/train --out data.png

`curves` reads a `metrics.csv` written by either training loop (one row per logged step; columns missing from one
loop, e.g. `usage` for the transformer, simply leave their panel out). `benchmarks` reads Snakemake `benchmark:` TSV
files (columns `s`, `max_rss` in MB, ...); each bar is labelled by the file's path below the common folder, so
`benchmarks/train_vqgan/coco64.tsv` becomes `train_vqgan/coco64`. With `--results` each bar also gets the stage's
throughput in images/s, the images counted from what the job itself wrote (see `STAGE_IMAGES`).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only: report jobs run without a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from vqgan.data.dataset import MANIFEST, SPLITS, DatasetError, evenly_spaced, read_split  # noqa: E402
from vqgan.io.cli import at_least, command  # noqa: E402
from vqgan.io.files import atomic_file, prepare_output, refuse_overlap  # noqa: E402
from vqgan.io.images import grid, labelled, save_png  # noqa: E402

# Panels of `curves`, by column name; each panel appears only when the file has one of its columns.
LOSS_COLUMNS = ("g_loss", "nll", "rec", "perceptual", "qloss", "loss", "val_loss")
ADVERSARIAL_COLUMNS = ("g_adv", "d_loss")
CODEBOOK_COLUMN, PERPLEXITY_COLUMN = "usage", "perplexity"


class PlotError(ValueError):
    """Input a plot cannot be made from; the message names the file."""


def _save(fig, out: str | os.PathLike) -> Path:
    try:  # atomically: the report never picks up a half-written PNG
        return atomic_file(out, lambda p: fig.savefig(p, dpi=110, bbox_inches="tight"))
    finally:
        plt.close(fig)


def _series(df: pd.DataFrame, column: str) -> pd.Series | None:
    """`column` against step, without the rows where it was not logged (validation losses are sparse)."""
    if column not in df.columns:
        return None
    s = pd.to_numeric(df[column], errors="coerce")
    s.index = df["step"]
    s = s.dropna()
    return s if len(s) else None


def curves_title(metrics: Path) -> str:
    """results/{stage}/{ds}/{variant}/metrics.csv -> "VQGAN training: dataset {ds}, variant {variant}"."""
    parts = metrics.resolve().parts
    if len(parts) >= 4 and parts[-4] in STAGE_NAMES:
        return f"{STAGE_NAMES[parts[-4]]} training: dataset {parts[-3]}, variant {parts[-2]}"
    return metrics.parent.name


STAGE_NAMES = {"vqgan": "VQGAN", "transformer": "transformer"}


def plot_curves(metrics: str | os.PathLike, out: str | os.PathLike, title: str | None = None) -> Path:
    """Loss curves and, for the VQGAN, codebook usage and perplexity against step."""
    path = Path(metrics)
    try:
        df = pd.read_csv(path)
    except (OSError, ValueError) as e:  # missing, empty, not a CSV (pandas' errors are ValueErrors)
        raise PlotError(f"{path}: cannot read metrics ({' '.join(str(e).split())}); did the training stage "
                        "finish?") from None
    if "step" not in df.columns:
        raise PlotError(f"{path}: no `step` column; expected a metrics.csv written by a training loop")
    panels = []
    losses = {c: s for c in LOSS_COLUMNS if (s := _series(df, c)) is not None}
    if losses:
        panels.append(("loss", losses))
    adversarial = {c: s for c in ADVERSARIAL_COLUMNS if (s := _series(df, c)) is not None and (s != 0).any()}
    if adversarial:
        panels.append(("adversarial", adversarial))
    usage = _series(df, CODEBOOK_COLUMN)
    if usage is not None:
        panels.append(("codebook", {CODEBOOK_COLUMN: usage}))
    if not panels:
        raise PlotError(f"{path}: none of the known metric columns ({', '.join(LOSS_COLUMNS)}, usage) has values")

    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.4), squeeze=False)
    for ax, (name, series) in zip(axes[0], panels):
        for column, s in series.items():
            ax.plot(s.index, s.values, label=column, marker="." if len(s) < 30 else None)
        ax.set_xlabel("step")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        if name == "loss" and all((s > 0).all() for s in series.values()):
            ax.set_yscale("log")  # reconstruction and perceptual terms differ by orders of magnitude
        if name == "codebook":
            ax.set_ylabel("fraction of codes used")
            ax.set_ylim(0, 1.02)
            perplexity = _series(df, PERPLEXITY_COLUMN)
            if perplexity is not None:
                twin = ax.twinx()
                twin.plot(perplexity.index, perplexity.values, color="tab:red", label=PERPLEXITY_COLUMN)
                twin.set_ylabel(PERPLEXITY_COLUMN)
                twin.legend(loc="lower right", fontsize=8)
        ax.legend(fontsize=8, loc="upper right" if name != "codebook" else "lower left")
    fig.tight_layout()
    fig.suptitle(title or curves_title(path), y=1.04)
    return _save(fig, out)


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _split_count(data: Path) -> int:
    return sum(_json(data / split / MANIFEST)["count"] for split in SPLITS)


def _trained_images(train_json: Path) -> int:
    # this run's share only: a resumed job's benchmark times the steps it ran, not the ones restored
    d = _json(train_json)
    return (d["steps"] - d.get("resumed_from_step", 0)) * d["global_batch"]


def _eval_images(recon_json: Path) -> int:
    d = _json(recon_json)
    return d["n_images"] + d.get("codebook_images", 0) + (d.get("n_recon_train") or 0)


def _fid_images(fid_json: Path) -> int:
    d = _json(fid_json)
    real = 0 if d.get("real_features_cached") else d["n_real"]
    return (real + sum(s["n"] for s in d["per_seed"]) + d.get("n_recon", 0) + d.get("n_train", 0)
            + (d.get("n_recon_train") or 0))


# What one job of each rule counts as its images, read from its own outputs (benchmark label parts -> count):
# the data rules the images they wrote (both splits), the training rules the images (for the transformer: code grids)
# this run trained on, encode the images it encoded, eval those it encoded for codebook usage plus those it
# reconstructed (val, and the train images of recon_train/), sample its samples, fid every image it passed through
# Inception (real unless cached, samples of every seed, reconstructions of val and train, the train images of the
# floor).
STAGE_IMAGES = {
    "prepare_coco": lambda r, ds: _split_count(r / "data" / ds),
    "collect_atari": lambda r, ds: _split_count(r / "data" / ds),
    "train_vqgan": lambda r, ds, v: _trained_images(r / "vqgan" / ds / v / "train.json"),
    "encode": lambda r, ds, v: sum(_json(r / "codes" / ds / v / "codes.json")["counts"].values()),
    "eval_vqgan": lambda r, ds, v: _eval_images(r / "vqgan" / ds / v / "recon.json"),
    "train_transformer": lambda r, ds, v: _trained_images(r / "transformer" / ds / v / "train.json"),
    "sample": lambda r, ds, v, seed: _json(r / "samples" / ds / v / seed / "samples.json")["count"],
    "fid": lambda r, ds, v: _fid_images(r / "fid" / ds / f"{v}.json"),
}


def stage_images(label: str, results: str | os.PathLike) -> float:
    """Images processed by the job behind a benchmark label (`rule/ds[/variant[/seedN]]`), NaN where the rule is
    not in STAGE_IMAGES or its outputs are missing or lack the counts (a figure is still made: the bar says n/a)."""
    rule, *parts = label.split("/")
    count = STAGE_IMAGES.get(rule)
    try:
        return float(count(Path(results), *parts)) if count else float("nan")
    except (OSError, ValueError, KeyError, TypeError):
        return float("nan")


def read_benchmarks(paths: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """One row per benchmark file: label, mean seconds and mean max RSS (MB) over its repeats."""
    if not paths:
        raise PlotError("no benchmark files given")
    paths = [Path(p) for p in paths]
    common = Path(os.path.commonpath([str(p.resolve().parent) for p in paths]))
    rows = []
    for p in paths:
        try:
            df = pd.read_csv(p, sep="\t")
        except (OSError, ValueError) as e:
            raise PlotError(f"{p}: cannot read benchmark ({' '.join(str(e).split())})") from None
        if "s" not in df.columns:
            raise PlotError(f"{p}: no `s` column; expected a Snakemake benchmark TSV")
        label = p.resolve().relative_to(common).with_suffix("").as_posix()
        rss = pd.to_numeric(df["max_rss"], errors="coerce") if "max_rss" in df.columns else pd.Series([np.nan])
        rows.append({"label": label, "seconds": pd.to_numeric(df["s"], errors="coerce").mean(),
                     "max_rss_mb": rss.mean(), "repeats": len(df)})
    return pd.DataFrame(rows).sort_values("label", ignore_index=True)


def plot_benchmarks(paths: Sequence[str | os.PathLike], out: str | os.PathLike,
                    results: str | os.PathLike | None = None) -> Path:
    """Horizontal bars of wall time, throughput (images/s, with `results`) and peak memory per job."""
    df = read_benchmarks(paths)
    df["images"] = [stage_images(label, results) if results else np.nan for label in df["label"]]
    df["images_per_s"] = df["images"] / df["seconds"]
    height = max(2.5, 0.35 * len(df) + 1.2)
    fig, (ax_t, ax_r, ax_m) = plt.subplots(1, 3, figsize=(15, height), sharey=True)
    y = np.arange(len(df))
    ax_t.barh(y, df["seconds"], color="tab:blue")
    ax_t.set_yticks(y, df["label"])
    ax_t.invert_yaxis()  # alphabetical from the top
    ax_t.set_xlabel("wall time (s)")
    ax_r.barh(y, df["images_per_s"].fillna(0), color="tab:orange")
    ax_r.set_xlabel("images/s (wall)")
    ax_m.barh(y, df["max_rss_mb"].fillna(0), color="tab:green")
    ax_m.set_xlabel("max RSS (MB)")
    for ax, column, fmt in ((ax_t, "seconds", "{:.0f} s"), (ax_r, "images_per_s", "{:.3g}/s"),
                            (ax_m, "max_rss_mb", "{:.0f} MB")):
        for yi, value in zip(y, df[column]):
            ax.text(0 if np.isnan(value) else value, yi, " " + ("n/a" if np.isnan(value) else fmt.format(value)),
                    va="center", fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"Snakemake benchmarks: {len(df)} jobs, {df['seconds'].sum():.0f} s in total")
    return _save(fig, out)


def plot_data_grid(data: str | os.PathLike, out: str | os.PathLike, per_row: int = 8, rows: int = 4) -> Path:
    """A grid of dataset images: one row per class (Atari game) when there are several, else `rows` rows."""
    try:
        split = read_split(data)
    except DatasetError as e:
        raise PlotError(str(e)) from None
    if len(split) == 0:
        raise PlotError(f"{data}: the split has no images")
    labels = split.labels
    classes = np.unique(labels)
    groups = [np.flatnonzero(labels == c) for c in classes] if len(classes) > 1 else \
        np.array_split(np.arange(len(split)), min(rows, len(split)))
    # Evenly spaced within each group: frames are stored in episode order, so neighbours look alike.
    picks = [g[evenly_spaced(len(g), per_row)] for g in groups]
    image_rows = [np.asarray(split.images[idx]) for idx in picks if len(idx)]
    scale = max(1, min(4, 96 // split.resolution))  # small frames stay legible in the report
    folder = Path(data).resolve()
    title = f"dataset {folder.parent.name}, {folder.name} split: {len(split)} images"
    names = split.class_names
    rows_named = [names[c] if c < len(names) else str(c) for c in classes] if len(classes) > 1 else []
    return save_png(out, labelled(grid(image_rows, scale=scale), rows_named, title=title))


@command
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m vqgan.eval.plots", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("curves", help="loss and codebook usage vs step from a metrics.csv")
    c.add_argument("--metrics", required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--title", help="figure title (default: the metrics file's folder, i.e. the dataset)")
    b = sub.add_parser("benchmarks", help="time, images/s and max RSS per Snakemake benchmark file")
    b.add_argument("--bench", nargs="+", required=True)
    b.add_argument("--results", help="the run's results/ folder: adds images/s from each job's outputs")
    b.add_argument("--out", required=True)
    d = sub.add_parser("data-grid", help="a grid of images from a dataset split")
    d.add_argument("--data", required=True, help="split folder (results/data/{ds}/train)")
    d.add_argument("--out", required=True)
    d.add_argument("--per-row", type=at_least(1), default=8)
    d.add_argument("--rows", type=at_least(1), default=4,
                   help="rows for one-class data (multi-class: one row per class)")
    args = p.parse_args(argv)
    # not --results: the run's whole results/ folder, which holds the plots; only named outputs in it are read
    inputs = {flag: getattr(args, flag[2:], None) for flag in ("--metrics", "--bench", "--data")}
    refuse_overlap({"--out": args.out}, inputs)
    prepare_output(args.out)  # an unwritable --out fails now
    if args.command == "curves":
        plot_curves(args.metrics, args.out, args.title)
    elif args.command == "benchmarks":
        plot_benchmarks(args.bench, args.out, args.results)
    else:
        plot_data_grid(args.data, args.out, args.per_row, args.rows)


if __name__ == "__main__":
    main()
