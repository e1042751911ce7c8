"""The results table: one row per dataset and variant, every score next to the N it was computed on, its spread
over sampling seeds, and its baselines.

A multi-game Atari dataset also gets one row per game (`subset` = the game; each against its own training mean
image, so a game that scores below its own constant image shows, `notes` says so), and one row per external
evaluation set (`subset` = eval_set:<name>). Subset rows carry the reconstruction columns; FID, KID and training
columns belong to the whole dataset and stay empty there.

    python -m vqgan.eval.table --fid results/fid/*/*.json --recon results/vqgan/*/*/recon.json \
        --vqgan-train results/vqgan/*/*/train.json --transformer-train results/transformer/*/*/train.json \
        --data results/data/*/train results/data/*/val --out results/fid_table.csv --markdown results/fid_table.md

Each input is a JSON file written by one stage for one dataset and variant: `results/fid/{ds}/{variant}.json`,
`results/vqgan/{ds}/{variant}/recon.json` and so on (the names come from the path). A run missing from one stage,
or a key an older file lacks, gives an empty (NaN) cell rather than an error: the table is a summary, and a
half-finished run should still show what it has. `COLUMNS` says where every column comes from.

`precision` says what each stage's jobs ran in (`vqgan bf16, eval fp32, encode bf16, transformer bf16, sample
bf16/fp32`: the transformer's weights / the decoder), as each recorded it with `auto` resolved on its device.

`notes` says what a reader must not miss (a split smaller than configured, FID at an N where it is strongly
biased, a reconstruction below its constant-image baseline, a collapsed codebook, a transformer no better on val
than a uniform guess over the codes, why object scores are missing, variants of a dataset whose jobs ran in
different precisions); the Markdown rendering
lists the notes again under the table, where a wide table's last column would be missed.
"""
from __future__ import annotations

import argparse
import html
import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from vqgan.io.cli import command
from vqgan.io.files import prepare_output, refuse_overlap, write_text_atomic
from vqgan.io.hashing import config_hash

# column -> (source, key in that source's JSON). Sources: fid = results/fid/{ds}/{variant}.json (vqgan.eval.fid),
# recon = results/vqgan/{ds}/{variant}/recon.json (vqgan.eval.recon), vqgan_train = .../train.json beside it
# (vqgan.train.vqgan), transformer_train = results/transformer/{ds}/{variant}/train.json (vqgan.train.transformer),
# table = made here.
COLUMNS: dict[str, tuple[str, str]] = {
    "kind": ("fid", "kind"),
    "resolution": ("fid", "resolution"),
    "comparable_group": ("table", "comparable_group"),          # same group = same N and real set: comparable
    "n_real": ("fid", "n_real"),
    "n_gen": ("fid", "n_gen"),                                  # per seed
    "n_seeds": ("fid", "n_seeds"),                              # fid and kid_mean are means over these seeds
    "fid": ("fid", "fid"),
    "fid_seed_std": ("fid", "fid_seed_std"),                    # std across sampling seeds (ddof 1)
    "kid_mean": ("fid", "kid_mean"),
    "kid_seed_std": ("fid", "kid_seed_std"),
    "kid_std": ("fid", "kid_std"),                              # spread over KID subsets (mean over seeds)
    "kid_subset": ("fid", "kid_subset_size"),                   # proper subsets (< N): kid_std is a real spread
    "n_train_ref": ("fid", "n_train"),
    "fid_floor": ("fid", "fid_floor"),                          # train images scored as samples: the best at this N
    "kid_floor": ("fid", "kid_floor_mean"),
    "copy_rate": ("fid", "copy_rate"),                          # samples nearer a train image than 95% of val is
    # ... nearer a train image's reconstruction than 95% of the val reconstructions are: catches a sampler that
    # returns training code grids, which copy_rate misses (its samples went through the decoder, the photos did not)
    "copy_rate_recon": ("fid", "copy_rate_recon"),
    # Atari: mean over games (a game's row: over its classes) of min(1, share of samples showing an object class /
    # share of real val frames showing it), by vqgan.data.object_presence's detector
    "sample_object_rate": ("fid", "sample_object_rate"),
    "object_shares": ("table", "object_shares"),                # a game's row: class sample/real share, each
    "n_recon": ("fid", "n_recon"),
    "rfid": ("fid", "rfid"),
    "rkid_mean": ("fid", "rkid_mean"),
    "rkid_std": ("fid", "rkid_std"),
    "n_eval": ("recon", "n_images"),
    "psnr": ("recon", "psnr"),
    "psnr_mean_baseline": ("recon", "psnr_baseline_mean"),      # the train split's mean image as the prediction
    "psnr_median_baseline": ("recon", "psnr_baseline_median"),  # ... its median image (the static background)
    "psnr_gain_over_mean_db": ("recon", "psnr_gain_over_mean_db"),  # < 0: worse than a constant image
    "n_objects_scored": ("recon", "n_objects_scored"),          # object instances the recall is over
    "object_recall": ("recon", "object_recall"),                # share of objects the reconstruction keeps
    "object_recall_mean_baseline": ("recon", "object_recall_baseline_mean"),
    "box_mae": ("recon", "box_mae"),                            # MAE (0-255) inside the scored objects' boxes
    "box_mae_mean_baseline": ("recon", "box_mae_baseline_mean"),
    "box_mae_median_baseline": ("recon", "box_mae_baseline_median"),  # the background itself in the boxes
    "box_psnr": ("recon", "box_psnr"),
    "box_psnr_mean_baseline": ("recon", "box_psnr_baseline_mean"),
    "box_psnr_median_baseline": ("recon", "box_psnr_baseline_median"),
    "lpips": ("recon", "lpips"),
    "lpips_mean_baseline": ("recon", "lpips_baseline_mean"),  # LPIPS of the train mean image (per class)
    "codebook_usage": ("recon", "usage"),
    "perplexity": ("recon", "perplexity"),
    "n_codes": ("recon", "n_codes"),
    "vqgan_steps": ("vqgan_train", "steps"),
    "vqgan_wall_s": ("vqgan_train", "wall_time_s"),
    "transformer_steps": ("transformer_train", "steps"),
    "val_bits_per_token": ("transformer_train", "val_bits_per_token"),
    "uniform_bits_per_token": ("transformer_train", "uniform_bits_per_token"),
    "transformer_wall_s": ("transformer_train", "wall_time_s"),
    "inception_sha256": ("fid", "inception_sha256"),
    "precision": ("table", "precision"),                        # what each stage's jobs ran in: PRECISION_STAGES
    "notes": ("table", "notes"),                                # written here: what a reader must not miss
}
SHA_PREFIX = 12
# The jobs a row's numbers come from, in pipeline order: (label, source, key). Each records the precision it used
# (`auto` resolved on its device); train.json's precision_by_step lists every one a resumed run trained in.
PRECISION_STAGES = (("vqgan", "vqgan_train", "precision"), ("eval", "recon", "precision"),
                    ("encode", "transformer_train", "codes_precision"),
                    ("transformer", "transformer_train", "precision"), ("sample", "fid", "samples_precision"))
SOURCES = ("fid", "recon", "vqgan_train", "transformer_train")
# FID's bias falls like 1/N; below the 2048 feature dimensions the covariance is rank-deficient and the bias large
# (Chong & Forsyth 2020): such a score is only comparable at equal N, and KID (unbiased) should be read beside it
FID_UNBIASED_N = 2048
# Markdown formats; the CSV keeps full precision.
FORMATS = {
    "fid": "{:.2f}", "fid_seed_std": "{:.2f}", "kid_seed_std": "{:.4f}",
    "rfid": "{:.2f}", "fid_floor": "{:.2f}", "kid_floor": "{:.4f}", "copy_rate": "{:.2f}",
    "copy_rate_recon": "{:.2f}", "sample_object_rate": "{:.2f}",
    "kid_mean": "{:.4f}", "kid_std": "{:.4f}", "rkid_mean": "{:.4f}",
    "rkid_std": "{:.4f}", "psnr": "{:.2f}", "psnr_mean_baseline": "{:.2f}", "psnr_median_baseline": "{:.2f}",
    "psnr_gain_over_mean_db": "{:+.2f}", "object_recall": "{:.3f}", "object_recall_mean_baseline": "{:.3f}",
    "box_mae": "{:.1f}", "box_mae_mean_baseline": "{:.1f}", "box_mae_median_baseline": "{:.1f}", "box_psnr": "{:.2f}",
    "box_psnr_mean_baseline": "{:.2f}", "box_psnr_median_baseline": "{:.2f}", "lpips": "{:.3f}",
    "lpips_mean_baseline": "{:.3f}", "codebook_usage": "{:.3f}", "perplexity": "{:.1f}", "val_bits_per_token": "{:.3f}",
    "uniform_bits_per_token": "{:.3f}", "vqgan_wall_s": "{:.0f}", "transformer_wall_s": "{:.0f}",
}


class TableError(ValueError):
    """Unreadable or ambiguous input; the message names the file."""


def run_name(path: Path, source: str) -> tuple[str, str]:
    """(dataset, variant): results/fid/{ds}/{variant}.json, results/vqgan/{ds}/{variant}/recon.json."""
    if source == "fid":
        return path.parent.name, path.stem
    return path.parent.parent.name, path.parent.name


def load_source(paths: Sequence[str | os.PathLike], source: str) -> dict[tuple[str, str], dict[str, Any]]:
    records: dict[tuple[str, str], dict[str, Any]] = {}
    for p in map(Path, paths):
        try:
            data = json.loads(p.read_text())
        except FileNotFoundError:
            raise TableError(f"{p}: no such file (did the {source} stage run?)") from None
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError (a binary file)
            raise TableError(f"{p}: not valid JSON ({e}); rerun the stage that writes it") from None
        if not isinstance(data, dict):
            raise TableError(f"{p}: expected a JSON object, got {type(data).__name__}")
        name = run_name(p, source)
        if name in records:
            raise TableError(f"{p}: a second {source} file for dataset {name[0]!r}, variant {name[1]!r}; pass one "
                             "file per dataset and variant")
        records[name] = data
    return records


def load_data(folders: Sequence[str | os.PathLike]) -> dict[str, list[str]]:
    """Notes on the data splits (results/data/{ds}/{train,val}): a split smaller than its config asked for."""
    notes: dict[str, list[str]] = {}
    for folder in map(Path, folders):
        try:
            manifest = json.loads((folder / "manifest.json").read_text())
        except FileNotFoundError:
            raise TableError(f"{folder}: no manifest.json (is it a data split folder, results/data/<ds>/train?)")\
                from None
        except ValueError as e:
            raise TableError(f"{folder}/manifest.json: not valid JSON ({e}); rerun the data stage") from None
        # COCO records what the config asked for (`requested`); the Atari collection's size is its own budget
        requested, count = manifest.get("requested"), manifest.get("count")
        if isinstance(requested, int) and isinstance(count, int) and count < requested:
            notes.setdefault(folder.parent.name, []).append(
                f"{folder.name} split has {count} images, fewer than the {requested} configured "
                f"({folder.name}_images)")
    return notes


def _cell(value: Any) -> Any:
    return math.nan if value is None else value


def comparable_group(fid: dict[str, Any]) -> str | None:
    """A short hash of what makes two FIDs comparable: N on each side, the real images, the network."""
    if fid.get("n_gen") is None and fid.get("n_recon") is None:
        return None
    return config_hash(fid.get("n_real"), fid.get("n_gen"), fid.get("real_data_sha256"),
                       fid.get("inception_sha256"), length=8)


def _biased_n_note(fid: dict[str, Any]) -> str | None:
    sizes = [fid.get(k) for k in ("n_real", "n_gen") if fid.get(k) is not None]
    if fid.get("n_gen") is None and fid.get("n_recon") is not None:
        sizes.append(fid["n_recon"])  # only rFID was computed
    n = min(sizes) if sizes else None
    if n is not None and n < FID_UNBIASED_N:
        return f"FID biased at N={n} (< {FID_UNBIASED_N}); compare KID"
    return None


# Below this share of the codebook in use on val the tokenizer has collapsed: its samples can score a fine FID from
# a handful of background codes (the paper's quantizer does this on Atari frames, docs/results.md).
COLLAPSED_USAGE = 0.1


def _model_notes(recon: dict[str, Any], transformer: dict[str, Any]) -> list[str]:
    notes = []
    usage = recon.get("usage")
    if usage is not None and usage < COLLAPSED_USAGE:
        notes.append(f"codebook collapsed: {100 * usage:.1f}% of the codes used on val")
    val, uniform = transformer.get("val_bits_per_token"), transformer.get("uniform_bits_per_token")
    if val is not None and uniform is not None and val >= uniform:
        notes.append(f"transformer val loss {val:.2f} bits/token >= a uniform guess ({uniform:.2f}): it memorised "
                     "the train split")
    return notes


def precisions(loaded: dict[str, dict], name: tuple[str, str]) -> dict[str, str]:
    """{stage label: the precision its job used} for one dataset and variant, stages without a record left out."""
    out = {}
    for label, source, key in PRECISION_STAGES:
        record = loaded[source].get(name, {})
        steps = record.get("precision_by_step") if key == "precision" else None
        value = "+".join(dict.fromkeys(p for _, p in steps)) if steps else record.get(key)
        if value:
            out[label] = str(value)
    return out


def _precision_notes(rows: list[dict[str, Any]], used: dict[tuple[str, str], dict[str, str]]) -> None:
    """A note on each `all` row whose jobs ran in another precision than the other variants of its dataset
    (bf16 moves rFID/FID a little: README), e.g. `vqgan trained in bf16, fp32 in paper`."""
    for row in rows:
        if row["subset"] != "all":
            continue
        mine, notes = used[row["dataset"], row["variant"]], []
        others = {v: p for (ds, v), p in used.items() if ds == row["dataset"] and v != row["variant"]}
        for label, value in mine.items():
            differ = {v: p[label] for v, p in others.items() if p.get(label, value) != value}
            if differ:
                theirs = ", ".join(f"{p} in {v}" for v, p in sorted(differ.items()))
                notes.append(f"{label} ran in {value}, {theirs}")
        if notes:
            row["notes"] = "; ".join(filter(None, [row["notes"], "precision differs: " + "; ".join(notes)]))


def build_table(
    fid: Sequence[str | os.PathLike] = (),
    recon: Sequence[str | os.PathLike] = (),
    vqgan_train: Sequence[str | os.PathLike] = (),
    transformer_train: Sequence[str | os.PathLike] = (),
    data: Sequence[str | os.PathLike] = (),
) -> pd.DataFrame:
    """One row per (dataset, variant) seen in any input (subset `all`), sorted, each followed by its games' and
    external eval sets' rows; columns `dataset`, `variant`, `subset` + `COLUMNS` in that order. `data` folders
    (results/data/{ds}/{split}) add their notes to every row of their dataset."""
    loaded = {
        "fid": load_source(fid, "fid"),
        "recon": load_source(recon, "recon"),
        "vqgan_train": load_source(vqgan_train, "vqgan_train"),
        "transformer_train": load_source(transformer_train, "transformer_train"),
    }
    data_notes = load_data(data)
    names = sorted(set().union(*(records.keys() for records in loaded.values())))
    rows = []
    used = {name: precisions(loaded, name) for name in names}
    for name in names:
        ds, variant = name
        row: dict[str, Any] = {"dataset": ds, "variant": variant, "subset": "all"}
        fid_record = loaded["fid"].get(name, {})
        for column, (source, key) in COLUMNS.items():
            row[column] = _cell(loaded.get(source, {}).get(name, {}).get(key))
        row["comparable_group"] = _cell(comparable_group(fid_record))
        row["precision"] = ", ".join(f"{k} {v}" for k, v in used[name].items()) or math.nan
        # The recon stage knows the resolution too, for a dataset whose FID has not run yet.
        if isinstance(row["resolution"], float) and math.isnan(row["resolution"]):
            row["resolution"] = _cell(loaded["recon"].get(name, {}).get("resolution"))
        if isinstance(row["inception_sha256"], str):
            row["inception_sha256"] = row["inception_sha256"][:SHA_PREFIX]
        recon_record = loaded["recon"].get(name, {})
        first = [*data_notes.get(ds, []), _biased_n_note(fid_record),
                 *_model_notes(recon_record, loaded["transformer_train"].get(name, {}))]
        rows.append(_with_notes(row, recon_record, first))
        subsets = []
        for game, rec in (recon_record.get("per_class") or {}).items():
            # each level of a game that shows several (Ms. Pac-Man's mazes), against the game's mean image
            levels = (rec.get("per_level") or {}).items()
            subsets += [(game, rec), *((f"{game}/level{lv}", lrec) for lv, lrec in levels)]
        subsets += [(f"level{lv}", rec) for lv, rec in (recon_record.get("per_level") or {}).items()]  # one game
        subsets += [(f"eval_set:{s}", rec) for s, rec in (recon_record.get("eval_sets") or {}).items()]
        objects = (fid_record.get("objects") or {}).get("per_game") or {}
        for subset, rec in subsets:
            sub = {"dataset": ds, "variant": variant, "subset": subset, "kind": row["kind"],
                   "resolution": row["resolution"]}
            for column, (source, key) in COLUMNS.items():
                if source == "recon":
                    sub[column] = _cell(rec.get(key))
            sub.update(game_objects(objects.get(subset)))
            rows.append(_with_notes(sub, rec))
    _precision_notes(rows, used)
    table = pd.DataFrame(rows, columns=["dataset", "variant", "subset", *COLUMNS])
    integer_columns = ("resolution", "n_real", "n_gen", "n_seeds", "kid_subset", "n_train_ref", "n_recon", "n_eval",
                       "n_codes", "vqgan_steps", "transformer_steps", "n_objects_scored")
    for column in integer_columns:
        table[column] = table[column].astype("Int64")  # integers stay integers next to empty cells
    return table


def game_objects(entry: dict[str, Any] | None) -> dict[str, Any]:
    """A game's row: its sample_object_rate and `object_shares`, "class sample/real" per class (shares of frames
    that show the class: the samples of all seeds, the real val frames), from the fid JSON's objects.per_game."""
    if not entry:
        return {}
    real, sample = entry.get("real_share") or {}, entry.get("sample_share") or {}
    shares = ", ".join(f"{cls} {'-' if sample.get(cls) is None else f'{sample[cls]:.2f}'}/{r:.2f}"
                       for cls, r in real.items())
    return {"sample_object_rate": _cell(entry.get("sample_object_rate")), "object_shares": shares or math.nan}


def _with_notes(row: dict[str, Any], recon: dict[str, Any], first: Sequence[str | None] = ()) -> dict[str, Any]:
    """`notes`: `first` (the data's and the FID's), a reconstruction below its own mean image, and where object
    scores are missing, why."""
    notes = [n for n in first if n]
    gain = recon.get("psnr_gain_over_mean_db")
    if gain is not None and gain < 0:
        notes.append(f"below its mean image ({gain:+.2f} dB)")
    if "psnr_baseline_level_mean" in recon:  # a level row: the level's own background is the stronger constant
        own = recon["psnr_baseline_level_mean"]
        notes.append("a level the training split never reached" if own is None
                     else f"this level's own mean image: {own:.2f} dB")
    why = recon.get("objects_unavailable_reason") or (recon.get("objects") or {}).get("unavailable_reason")
    if recon and recon.get("object_recall") is None:
        if why:
            notes.append(f"object recall {why}" if why.startswith("not available") else
                         f"object recall: {why}" if why.startswith("no objects found") else
                         f"object recall not available: {why}")
        elif recon.get("n_objects") is not None:
            notes.append("no object instance scored")
    row["notes"] = "; ".join(notes)
    return row


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


# Markdown cells that show mean ± std across seeds (the CSV keeps the two numbers in their own columns)
WITH_SPREAD = {"fid": "fid_seed_std", "kid_mean": "kid_seed_std"}


def _formatted(table: pd.DataFrame) -> tuple[list[str], list[list[str]], list[str]]:
    """(columns, every row's cells as text, the notes list): FID and KID as mean ± std over the seeds, empty cells
    for missing values."""
    def fmt(column: str, value: Any) -> str:
        if _missing(value):
            return ""
        if column in FORMATS and isinstance(value, (int, float)):
            return FORMATS[column].format(value)
        return str(value)

    columns = [c for c in table.columns if c not in WITH_SPREAD.values()]
    rows = []
    for row in table.to_dict("records"):
        cells = []
        for c in columns:
            cell = fmt(c, row[c])
            if c in WITH_SPREAD and cell and not _missing(row[WITH_SPREAD[c]]):
                cell += " ± " + fmt(WITH_SPREAD[c], row[WITH_SPREAD[c]])
            cells.append(cell)
        rows.append(cells)
    notes = [f"{r['dataset']}/{r['variant']}/{r['subset']}: {r['notes']}"
             for r in table.to_dict("records") if isinstance(r["notes"], str) and r["notes"]]
    return columns, rows, notes


LEFT = ("dataset", "variant", "subset", "kind", "comparable_group", "inception_sha256", "precision", "notes")


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-style Markdown table (no extra dependency); empty cells for missing values; FID and KID as mean ± std
    over the seeds; then every row's notes as a list, where they are read."""
    columns, rows, notes = _formatted(table)
    header = "| " + " | ".join(columns) + " |"
    rule = "|" + "|".join("---" if c in LEFT else "---:" for c in columns) + "|"
    lines = [header, rule, *("| " + " | ".join(cells) + " |" for cells in rows)]
    if notes:
        lines += ["", "Notes:", *(f"- {n}" for n in notes)]
    return "\n".join(lines) + "\n"


HTML_STYLE = ("body{font-family:sans-serif;font-size:13px;margin:8px}table{border-collapse:collapse}"
              "th,td{border:1px solid #ccc;padding:3px 6px;white-space:nowrap}td.l{text-align:left}"
              "td{text-align:right}td.notes{white-space:normal;min-width:24em}tr:nth-child(even){background:#f5f5f5}"
              "th{background:#eee;position:sticky;top:0}")


def to_html(table: pd.DataFrame, title: str = "FID table (results/fid_table.csv)") -> str:
    """The Markdown table's cells as one standalone HTML page (the report shows it as a table): every row, its
    notes in their column and listed below."""
    columns, rows, notes = _formatted(table)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f'<td class="{"notes" if c == "notes" else "l" if c in LEFT else "r"}">{html.escape(v)}'
                         "</td>" for c, v in zip(columns, cells)) + "</tr>\n" for cells in rows)
    listed = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{HTML_STYLE}</style></head><body>\n<h3>{html.escape(title)}</h3>\n"
            f"<table><thead><tr>{head}</tr></thead><tbody>\n{body}</tbody></table>\n"
            + (f"<h4>Notes</h4><ul>{listed}</ul>\n" if notes else "") + "</body></html>\n")


@command
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="vqgan-table",
                                description="Collect every stage's JSON into results/fid_table.csv.")
    p.add_argument("--fid", nargs="*", default=[], help="results/fid/{ds}/{variant}.json files")
    p.add_argument("--recon", nargs="*", default=[], help="results/vqgan/{ds}/{variant}/recon.json files")
    p.add_argument("--vqgan-train", nargs="*", default=[], help="results/vqgan/{ds}/{variant}/train.json files")
    p.add_argument("--transformer-train", nargs="*", default=[],
                   help="results/transformer/{ds}/{variant}/train.json files")
    p.add_argument("--data", nargs="*", default=[],
                   help="data split folders (results/data/{ds}/train, .../val): a note where a split is smaller "
                   "than configured")
    p.add_argument("--out", required=True, help="CSV path (results/fid_table.csv)")
    p.add_argument("--markdown", help="also write a Markdown rendering here")
    p.add_argument("--html", help="also write it as an HTML page here (the report's table)")
    args = p.parse_args(argv)
    refuse_overlap({"--out": args.out, "--markdown": args.markdown, "--html": args.html},
                   {"--fid": args.fid, "--recon": args.recon, "--vqgan-train": args.vqgan_train,
                    "--transformer-train": args.transformer_train, "--data": args.data})
    for out in (args.out, args.markdown, args.html):
        if out:
            prepare_output(out)  # an unwritable output fails now
    table = build_table(args.fid, args.recon, args.vqgan_train, args.transformer_train, args.data)
    if table.empty:
        raise TableError("no input files given; pass at least one of --fid/--recon/--vqgan-train/...")
    write_text_atomic((args.out), table.to_csv(index=False))
    markdown = to_markdown(table)
    if args.markdown:
        write_text_atomic((args.markdown), markdown)
    if args.html:
        write_text_atomic(args.html, to_html(table))
    print(markdown, end="")


if __name__ == "__main__":
    main()
