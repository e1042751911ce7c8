"""Sample images: the transformer writes code grids (KV-cache sampler), the VQGAN decodes them to pixels.

    python -m vqgan.sample --config CONFIG --transformer results/transformer/{ds}/{variant} \
        --vqgan results/vqgan/{ds}/{variant} \
        --out results/samples/{ds}/{variant}/seed{seed} [--device cuda]

`--config` is the `sample` section (keys: `SampleConfig`). Writes into `--out`::

    {class}_{i:05d}.png    one PNG per sample at the VQGAN's resolution, i counting within the class
    grid.png               up to 8 samples per class, one row per class
    samples.json           counts per class, seed and settings, sampling speed

Counts: `n_per_class` samples of every class, or `n_samples` in total dealt round-robin over the classes (set
one; neither means 16 per class). Deterministic for a given config: one `torch.Generator` seeded with `seed`
drives every draw, batch after batch (so the batch size is part of what fixes the samples). The folder is built
under a temporary name and renamed into place, so it is either complete or absent.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from vqgan.config.sections import PaletteConfig, SampleConfig
from vqgan.data.codes import CODES_JSON
from vqgan.data.dataset import read_split
from vqgan.data.palette import Snapper
from vqgan.device import job_device
from vqgan.io.checkpoint import CheckpointError, load_gpt, load_vqgan, model_files
from vqgan.io.cli import UsageError, command, device_name, load_config_arg
from vqgan.io.files import atomic_dir, prepare_output, refuse_overlap, safe_name, write_json_atomic
from vqgan.io.images import grid, labelled, save_png, to_uint8
from vqgan.io.progress import progress_bar
from vqgan.models.gpt import GPT
from vqgan.precision import autocast, resolve

GRID_PER_CLASS = 8




@torch.no_grad()
def sample_codes(gpt: GPT, labels: list[int], cfg: SampleConfig, device, desc: str = "sample") -> torch.Tensor:
    """(N,) class ids -> (N, block_size) codes, in batches of `cfg.batch_size`, one generator for all."""
    g = torch.Generator(device=device).manual_seed(int(cfg.seed))
    out = []
    for lo in progress_bar(range(0, len(labels), cfg.batch_size), desc=desc, file=sys.stderr, dynamic_ncols=True):
        y = torch.tensor(labels[lo : lo + cfg.batch_size], dtype=torch.long, device=device)
        out.append(gpt.generate(y, len(y), temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                                guidance=cfg.guidance, generator=g).cpu())
    return torch.cat(out)


@torch.no_grad()
def decode(vqgan, codes: torch.Tensor, grid_hw: tuple[int, int], batch_size: int, device,
           precision: str = "fp32") -> np.ndarray:
    """(N, h*w) codes -> (N, H, W, 3) uint8 images."""
    images = []
    for lo in range(0, len(codes), batch_size):
        idx = codes[lo : lo + batch_size].view(-1, *grid_hw).to(device)
        with autocast(device, precision):
            images.append(to_uint8(vqgan.decode_indices(idx)))
    return np.concatenate(images)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m vqgan.sample", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="the sample section: inline JSON or a YAML/JSON file")
    p.add_argument("--transformer", required=True,
                   help="trained transformer folder (results/transformer/{ds}/{variant})")
    p.add_argument("--vqgan", required=True, help="trained VQGAN folder (results/vqgan/{ds}/{variant})")
    p.add_argument("--out", required=True, help="output folder (results/samples/{ds}/{variant}/seed{seed})")
    p.add_argument("--palette", default=None,
                   help="the vqgan.palette section, or {\"palette\": section} (inline JSON or a file): with "
                        "max_distance > 0 the decoded frames are snapped onto the palette of --train-data, as "
                        "eval_vqgan snaps reconstructions")
    p.add_argument("--train-data", default=None, help="the training split the palette is fitted on "
                                                       "(results/data/{ds}/train)")
    p.add_argument("--device", type=device_name, default=None, help="cpu / cuda (default: cuda when available)")
    return p.parse_args(argv)


def palette_snapper(args) -> Snapper | None:
    """--palette (the vqgan.palette section, or the vqgan section holding it, as the rule passes it) fitted on
    --train-data, before anything is sampled; None when off. UsageError when it is on without --train-data."""
    section = load_config_arg(args.palette) if args.palette else None
    if isinstance(section, dict) and "palette" in section:
        section = section["palette"]
    palette = PaletteConfig.from_dict(section)
    if not palette.on:
        return None
    if args.train_data is None:
        raise UsageError("--palette with max_distance > 0 needs --train-data (the split the palette is fitted on)")
    return Snapper.fit(read_split(args.train_data).images, palette.max_distance, palette.min_share)


@command
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    refuse_overlap({"--out": args.out}, {"--config": args.config, "--vqgan": model_files(args.vqgan),
                                         "--transformer": [*model_files(args.transformer),
                                                           Path(args.transformer) / CODES_JSON],
                                         "--palette": args.palette, "--train-data": args.train_data})
    cfg = SampleConfig.from_dict(load_config_arg(args.config))
    snapper = palette_snapper(args)
    out = Path(args.out)
    prepare_output(out, folder=True)  # fails now if `out` is not writable, or a file
    device = torch.device(job_device(args.device))
    gpt = load_gpt(args.transformer, map_location=device).eval()
    vqgan = load_vqgan(args.vqgan, map_location=device).eval()
    codes_json = Path(args.transformer) / CODES_JSON
    try:
        meta = json.loads(codes_json.read_text()) if codes_json.is_file() else {}
        h, w = meta.get("grid", [vqgan.cfg.grid, vqgan.cfg.grid])
        class_names = list(meta.get("class_names") or [str(c) for c in range(gpt.config.n_classes)])
    except (ValueError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{codes_json}: not a codes.json written by train_transformer ({e}); rerun that "
                              "stage") from None
    if vqgan.cfg.n_codes != gpt.config.vocab_size or h * w != gpt.config.block_size:
        raise UsageError(
            f"the transformer in {args.transformer} was trained on {gpt.config.vocab_size} codes in sequences "
            f"of {gpt.config.block_size}, but the VQGAN in {args.vqgan} has {vqgan.cfg.n_codes} codes on a "
            f"{vqgan.cfg.grid}x{vqgan.cfg.grid} grid; retrain the transformer on this VQGAN's codes"
        )
    if len(class_names) != gpt.config.n_classes:
        raise CheckpointError(f"{codes_json} names {len(class_names)} classes, the model has "
                              f"{gpt.config.n_classes}; rerun train_transformer")
    used = {k: resolve(getattr(cfg, k), device, f"sample.{k}") for k in ("precision", "decode_precision")}
    if used["precision"] == "bf16":
        gpt = gpt.to(torch.bfloat16)

    counts = cfg.counts(gpt.config.n_classes)
    labels = [c for c, n in enumerate(counts) for _ in range(n)]  # class-major
    t0 = time.perf_counter()
    codes = sample_codes(gpt, labels, cfg, device)
    sample_s = time.perf_counter() - t0
    images = decode(vqgan, codes, (h, w), cfg.batch_size, device, used["decode_precision"])
    if snapper is not None:
        images = snapper(images)

    with atomic_dir(out) as tmp:
        rows, row_names, names, k = [], [], [], 0
        for c, n in enumerate(counts):
            for i in range(n):
                name = f"{safe_name(class_names[c])}_{i:05d}.png"
                save_png(tmp / name, images[k + i])
                names.append(name)
            if n:
                rows.append(images[k : k + min(n, GRID_PER_CLASS)])
                row_names.append(str(class_names[c]))
            k += n
        res = images.shape[1]
        # rows named by class, the title says which draw this is (the report's caption names dataset and variant)
        title = (f"seed {cfg.seed}, T {cfg.temperature}, top-k {cfg.top_k or 'off'}, top-p {cfg.top_p or 'off'}"
                 + (f", guidance {cfg.guidance}" if cfg.guidance != 1 else ""))
        save_png(tmp / "grid.png", labelled(grid(rows, scale=2 if res <= 32 else 1), row_names, title))
        write_json_atomic(tmp / "samples.json", {
            "count": len(labels),
            "per_class": {class_names[c]: n for c, n in enumerate(counts)},
            "files": names,
            "resolution": int(res),
            "grid": [int(h), int(w)],
            "seed": cfg.seed,
            "settings": asdict(cfg),
            **used,  # what the weights and the decoder ran in (auto resolved on this device)
            "device": str(device),
            "sampling_s": sample_s,
            "tokens_per_s": len(labels) * h * w / max(sample_s, 1e-9),
            "transformer": str(args.transformer),
            "vqgan": str(args.vqgan),
            "palette": snapper.summary() if snapper is not None else None,
        })
    print(f"wrote {len(labels)} samples ({', '.join(f'{class_names[c]}: {n}' for c, n in enumerate(counts))}) "
          f"to {out} in {sample_s:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
