"""The precision of the inference stages (encode, eval, sample's decode): one name, one autocast.

Training has its own switch (`mixed_precision`, through Accelerate). Inference runs a trained model forward only,
so bf16 autocast is the whole story: convolutions and matmuls in bf16, reductions and the code lookup in fp32.
bench/inference.py measures each stage's speed in both and how far bf16's results are from fp32's (codes
identical, PSNR of the reconstruction against fp32's).
"""
from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str, key: str = "precision") -> str:
    """`precision` if it is one of PRECISIONS; else a ValueError that names `key`."""
    if precision not in PRECISIONS:
        raise ValueError(f"{key}={precision!r}: choose one of {list(PRECISIONS)}")
    return precision


def autocast(device, precision: str):
    """A context that runs the model in `precision` on `device` (a torch.device or its name)."""
    check_precision(precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
