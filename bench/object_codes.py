"""Where do the sprites get lost between the codes and the samples: the transformer, or the sampler?

    python bench/object_codes.py --codes results/codes/atari64/ours --data results/data/atari64 \
        --transformer results/transformer/atari64/ours --split train --n 100 --top-k 100,none

Per game and object class of an Atari dataset with RAM boxes (objects.csv), the class's *object codes* are the codes
that sit in that class's cells (a token's 4x4 pixels touching one of its boxes) in at least `--purity` of the times
they occur in the game's training code grids. Per frame, three counts of them, for the first `--n` frames of each
game of `--split`:

- real: in the split's code grids (the tokenizer's codes of real frames);
- teacher-forced: the transformer's expected count on those same grids, the sum over positions of p(object code |
  the true prefix). A transformer that has learnt how often the objects occur matches `real` here;
- sampled: in code grids it samples itself (temperature and each `--top-k`; 'none' = no truncation), as the sample
  stage does. Falling short of `real` while teacher-forced matches it means the sampler loses them (truncation,
  or drift from the training distribution once its own samples are the prefix).

Also printed: each class's share of cells holding an object code (how much of the class the code set sees) and the
share of frames with at least one object code. Counts of codes are not detections in pixels: a sampled frame can
hold the ball's codes in an arrangement the decoder does not draw as a ball (`vqgan.eval.sample_objects` scores
the pixels). Defaults to the train split: choices made with it never look at the scored val split.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from vqgan.data.codes import load_codes
from vqgan.data.dataset import read_split
from vqgan.data.object_masks import ObjectMasks
from vqgan.io.checkpoint import load_gpt


def class_cells(split, grid: tuple[int, int]) -> dict[str, np.ndarray]:
    """class -> (N, h, w) bool: the token cells that touch one of the class's visible boxes."""
    h, w = grid
    fy, fx = split.resolution // h, split.resolution // w
    classes = sorted(split.objects["class"].unique())
    out = {}
    for cls in classes:
        masks = ObjectMasks.from_split(split, ignore_classes=[c for c in classes if c != cls])
        m = np.concatenate([masks(np.arange(i, min(i + 1024, len(split)))) for i in range(0, len(split), 1024)])
        out[cls] = m.reshape(len(m), h, fy, w, fx).max((2, 4)) > 0
    return out


def object_codes(codes: np.ndarray, cells: np.ndarray, n_codes: int, purity: float) -> np.ndarray:
    """The codes found in `cells` in at least `purity` of their occurrences (and at least 3 times)."""
    total = np.bincount(codes.ravel(), minlength=n_codes)
    inside = np.bincount(codes[cells], minlength=n_codes)
    return np.flatnonzero((inside >= purity * np.maximum(total, 1)) & (total >= 3))


@torch.no_grad()
def counts(gpt, grids: np.ndarray, label: int, sets: dict[str, np.ndarray], top_ks, temperature: float,
           seed: int) -> dict[str, dict[str, float]]:
    """class -> {real, teacher_forced, sampled@k, frames_real, frames_sampled@k}, means over the frames."""
    flat = torch.from_numpy(grids.reshape(len(grids), -1).astype(np.int64))
    y = torch.full((len(flat),), label, dtype=torch.long)
    logits, _ = gpt(flat[:, :-1], y)
    probs = torch.softmax(logits.float() / temperature, -1)
    g = torch.Generator().manual_seed(seed)
    sampled = {k: gpt.generate(y, len(y), temperature=temperature, top_k=k, generator=g).numpy() for k in top_ks}
    out = {}
    for cls, s in sets.items():
        real = np.isin(flat.numpy(), s)
        row = {"real": real.sum(1).mean(), "frames_real": real.any(1).mean(),
               "teacher_forced": probs[:, :, torch.from_numpy(s)].sum((1, 2)).mean().item()}
        for k, grid in sampled.items():
            hit = np.isin(grid, s)
            row[f"sampled@{k or 'none'}"], row[f"frames_sampled@{k or 'none'}"] = hit.sum(1).mean(), hit.any(1).mean()
        out[cls] = {key: float(v) for key, v in row.items()}
    return out


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--codes", required=True, help="the encode stage's folder (results/codes/{ds}/{variant})")
    p.add_argument("--data", required=True, help="the dataset folder with train/ and val/ (results/data/{ds})")
    p.add_argument("--transformer", required=True, help="results/transformer/{ds}/{variant}")
    p.add_argument("--split", default="train", choices=["train", "val"])
    p.add_argument("--n", type=int, default=100, help="frames per game (default 100)")
    p.add_argument("--top-k", default="100,none", help="comma-separated; 'none' = no truncation")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--purity", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the numbers here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    top_ks = [None if k.strip() == "none" else int(k) for k in args.top_k.split(",")]
    train_codes, train_labels, meta = load_codes(args.codes, "train")
    codes, labels, _ = (train_codes, train_labels, meta) if args.split == "train" else load_codes(args.codes, "val")
    train_cells = class_cells(read_split(Path(args.data) / "train"), meta["grid"])
    gpt = load_gpt(args.transformer).eval()
    result = {}
    for label, game in enumerate(meta["class_names"]):
        in_game = train_labels == label
        sets = {cls: object_codes(train_codes[in_game], cells[in_game], meta["n_codes"], args.purity)
                for cls, cells in train_cells.items() if cells[in_game].any()}
        sets = {cls: s for cls, s in sets.items() if len(s)}
        frames = np.flatnonzero(labels == label)[: args.n]
        if not sets or not len(frames):
            continue
        rows = counts(gpt, codes[frames], label, sets, top_ks, args.temperature, args.seed)
        for cls, s in sets.items():
            cells = train_cells[cls][in_game]
            rows[cls]["n_codes"], rows[cls]["cell_share"] = len(s), float(np.isin(train_codes[in_game][cells], s).mean())
        result[game] = rows
    keys = ["real", "teacher_forced", *[f"sampled@{k or 'none'}" for k in top_ks]]
    print(f"object codes per frame ({args.split}, {args.n} frames per game, T {args.temperature}, purity "
          f"{args.purity}); in brackets: share of frames with one")
    print("| game | class | codes (cell share) | " + " | ".join(keys) + " |")
    print("|---|---|---|" + "---|" * len(keys))
    for game, rows in result.items():
        for cls, r in rows.items():
            cells = " | ".join(f"{r[k]:.2f}" + (f" ({r['frames_' + k]:.2f})" if "frames_" + k in r else "")
                               for k in keys)
            print(f"| {game} | {cls} | {r['n_codes']} ({r['cell_share']:.2f}) | {cells} |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
