"""The checks a training run can make from its data before torch is imported (the `train` sections themselves,
LoopConfig and its two loops' classes, live in vqgan/config/sections.py).

No torch here on purpose: `vqgan.train.launch` runs `check_data` first thing in a job, so a batch larger than the
data fails in a fraction of a second, instead of after torch's import (5-9 s on a busy machine) -- and before any
process is started for a multi-process run. The loops check again with what they load (`check_batch`).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from vqgan.config.sections import LoopConfig, TransformerTrainConfig, VQGANTrainConfig
from vqgan.io.cli import load_config_arg


def per_device_batch(global_batch: int, world_size: int, grad_accum: int) -> int:
    """Global batch = per-device batch x processes x accumulation steps; refuse sizes that don't divide."""
    denom = world_size * grad_accum
    if global_batch < denom or global_batch % denom:
        raise ValueError(
            f"train.batch_size={global_batch} (global) must be a multiple of world size {world_size} x "
            f"train.grad_accum {grad_accum} = {denom}; change batch_size, grad_accum or the number of processes"
        )
    return global_batch // denom


def check_batch(tc: LoopConfig, n: int, what: str, world_size: int | None = None) -> int:
    """The per-device batch, checked against the data before anything is built, loaded or written (the first
    thing a run does after reading its data): a ValueError naming the key when the batch does not divide or one
    micro-batch needs more samples than there are. `world_size` defaults to the launcher's WORLD_SIZE."""
    world = world_size or int(os.environ.get("WORLD_SIZE", "1"))
    per_device = per_device_batch(tc.batch_size, world, tc.grad_accum)
    if n < per_device * world:
        raise ValueError(
            f"{tc.SECTION}.batch_size={tc.batch_size}: one micro-batch (batch_size / grad_accum {tc.grad_accum}) "
            f"takes {per_device * world} samples, more than the {n} {what}; lower batch_size or use more data"
        )
    return per_device



# What each training module is given its data with, the data's size, and the config class of its `train` section.
def _images(folder: str) -> int | None:
    """`count` from the split's manifest.json (written last, checked against images.npy by read_split)."""
    try:
        return int(json.loads((Path(folder) / "manifest.json").read_text())["count"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _train_sequences(folder: str) -> int | None:
    """`counts.train` from codes.json (written last by vqgan.encode)."""
    try:
        return int(json.loads((Path(folder) / "codes.json").read_text())["counts"]["train"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


DATA = {
    "vqgan.train.vqgan": ("--data", _images, "images of {}", VQGANTrainConfig),
    "vqgan.train.transformer": ("--codes", _train_sequences, "train sequences of {}", TransformerTrainConfig),
}


def check_data(module: str, args: list[str], world_size: int | None = None) -> None:
    """The batch-vs-data check of `python -m module args`, from the config and the data's JSON alone: a ValueError
    naming the key (the loop's own message) when the batch does not divide or outgrows the data. Whatever cannot be
    read here (a missing or broken file, another module) is left to the run, which reports it in full."""
    if module not in DATA:
        return
    flag, size, what, cls = DATA[module]
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--config")
    p.add_argument(flag, dest="data")
    a, _ = p.parse_known_args(args)
    if a.config is None or a.data is None:
        return
    train = load_config_arg(a.config).get("train")
    n = size(a.data)
    if n is None or not isinstance(train, (dict, type(None))):
        return
    check_batch(cls.from_dict(train), n, what.format(a.data), world_size)
