"""The `train` sections of both loops, and the checks a run can make from its data before torch is imported.

No torch here on purpose: `vqgan.train.launch` runs `check_data` first thing in a job, so a batch larger than the
data fails in a fraction of a second, instead of after torch's import (5-9 s on a busy machine) -- and before any
process is started for a multi-process run. The loops check again with what they load (`check_batch`).
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from vqgan.config.schema import defaults
from vqgan.io.cli import load_config_arg
from vqgan.models import invalid


@dataclass
class LoopConfig:
    """Keys of a `<stage>.train` section common to every loop; each loop subclasses it with its extra keys.
    Defaults and descriptions live in the schema (vqgan/config/schemas/); `from_dict` fills them. Batch size is
    global: per-device = batch_size / processes / grad_accum."""

    SECTION = "train"  # the config path named in error messages, and the schema section of the defaults

    steps: int
    batch_size: int
    lr: float
    betas: tuple[float, float]
    weight_decay: float
    warmup_steps: int
    lr_schedule: str  # "cosine" (to min_lr_ratio x lr at `steps`) or "constant"
    min_lr_ratio: float
    grad_accum: int
    grad_clip: float | None  # max global grad norm; None or 0 disables
    precision: str  # "auto" | "fp32" | "bf16" | "fp16" (autocast; bf16 needs no loss scaling); auto: vqgan.precision
    seed: int
    checkpoint_every: int
    keep_checkpoints: int
    log_every: int

    POSITIVE = ("steps", "batch_size", "grad_accum", "checkpoint_every", "keep_checkpoints", "log_every")

    def problems(self) -> list[tuple[tuple[str, ...], str]]:
        """What is wrong with the values, each (the keys involved, the first to name; what to do); subclasses extend
        the list with their own keys."""
        out = []
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            fp32 = " ('no' is now 'fp32')" if self.precision in ("no", False) else ""
            out.append((("precision",), f"precision={self.precision!r} (use 'auto', 'fp32', 'bf16' or 'fp16'){fp32}"))
        if self.lr_schedule not in ("cosine", "constant"):
            out.append((("lr_schedule",), f"lr_schedule={self.lr_schedule!r} (use 'cosine' or 'constant')"))
        for k in self.POSITIVE:
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                out.append(((k,), f"{k}={v!r} (must be an integer >= 1)"))
        if len(self.betas) != 2:
            out.append((("betas",), f"betas={list(self.betas)} (need two numbers)"))
        return out

    def __post_init__(self):
        self.betas = tuple(float(b) for b in self.betas)
        problems = self.problems()
        if problems:
            raise invalid(f"{self.SECTION} config", problems)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None):
        """The section as given (possibly partial), over the schema's defaults."""
        d = {**defaults(cls.SECTION), **(d or {})}
        known = sorted(f.name for f in fields(cls))
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"unknown {cls.SECTION} keys {unknown}; known: {known}")
        try:
            return cls(**d)
        except TypeError as e:  # a value of the wrong type, e.g. betas: 0.9
            raise ValueError(f"invalid {cls.SECTION} config {d}: {e}") from None


@dataclass
class VQGANTrainConfig(LoopConfig):
    """`vqgan.train` keys (the shared ones are documented on LoopConfig)."""

    SECTION = "vqgan.train"

    disc_lr: float | None  # None: same as lr
    num_workers: int | str  # data-loader processes, or "auto" (`vqgan.train.loop.loader_workers`)
    augment: str  # "none" | "hflip" (fine for COCO; mirrors Atari score digits)
    # Square crops of the frames (0: whole frames); the model is convolutional, so it is used on whole frames.
    crop: int
    # Share of the crops centred on one of the frame's objects: sprites are ~3% of an Atari frame.
    object_crops: float

    def problems(self) -> list[str]:
        out = super().problems()
        if self.num_workers != "auto" and (not isinstance(self.num_workers, int) or isinstance(self.num_workers, bool)
                                           or not 0 <= self.num_workers <= 256):
            out.append((("num_workers",), f"num_workers={self.num_workers!r} (an integer from 0 to 256, or 'auto')"))
        if self.augment not in ("none", "hflip"):
            out.append((("augment",), f"augment={self.augment!r} (use 'none' or 'hflip')"))
        if not isinstance(self.crop, int) or isinstance(self.crop, bool) or self.crop < 0:
            out.append((("crop",), f"crop={self.crop!r} (an integer side in pixels, or 0 for whole frames)"))
        if not 0.0 <= self.object_crops <= 1.0:
            out.append((("object_crops",), f"object_crops={self.object_crops!r} (a share in [0, 1])"))
        elif self.object_crops > 0 and not self.crop:
            out.append((("object_crops", "crop"),
                        f"object_crops={self.object_crops!r} needs crop > 0 (the side of the crops to centre)"))
        if self.precision == "fp16":
            # Two optimizers (G and D) would share accelerate's one loss scaler, which updates its scale after
            # each of them, and the adaptive GAN weight divides gradient norms taken by autograd.grad on the
            # unscaled loss: in fp16 those under/overflow. bf16 has fp32's range and needs no scaler.
            out.append((("precision",),
                        "precision='fp16' (the VQGAN loop has two optimizers, G and D, and an adaptive loss "
                        "weight from raw gradient norms: fp16 would need a loss scaler per optimizer; use 'auto' "
                        "(bf16 where the device has it: A100, H100, ...) or 'fp32')"))
        return out


@dataclass
class TransformerTrainConfig(LoopConfig):
    """`transformer.train` keys (the shared ones are documented on LoopConfig)."""

    SECTION = "transformer.train"

    eval_every: int  # val loss every N steps (and always at the last step)
    pkeep: float  # keep each input code with this probability, else replace it by a random code
    p_uncond: float  # train the unconditional token on this fraction of sequences

    POSITIVE = LoopConfig.POSITIVE + ("eval_every",)

    def problems(self) -> list[str]:
        out = super().problems()
        if not 0.0 < self.pkeep <= 1.0:
            out.append((("pkeep",), f"pkeep={self.pkeep} (must be in (0, 1]; 1 = no corruption)"))
        if not 0.0 <= self.p_uncond < 1.0:
            out.append((("p_uncond",), f"p_uncond={self.p_uncond} (must be in [0, 1))"))
        return out


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
