"""Precision, one vocabulary for every stage: `auto | fp32 | bf16` (and `fp16` for transformer training).

`auto` is resolved in the job, on the device it runs on (`resolve`): bf16 where the device computes it natively
(a GPU of compute capability >= 8.0; a CPU with avx512_bf16 or amx_bf16, as vqgan.hardware finds, which honours
VQGAN_HARDWARE=cpu_bf16=no|yes), fp32 elsewhere: a CPU without bf16 instructions emulates bf16 at about half fp32's
speed. The config and the workflow's params keep the literal `auto`, so moving the results to another machine
reruns nothing; each job records in its JSON the precision it actually used.

Training passes the resolved value to Accelerate (`accelerate_name`). Inference runs a trained model forward only,
so bf16 autocast is the whole story (`autocast`): convolutions and matmuls in bf16, reductions and the code lookup
in fp32. bench/inference.py measures each stage's speed in both and how far bf16's results are from fp32's.
"""
from __future__ import annotations

import contextlib
import os
import sys

from vqgan import hardware

PRECISIONS = ("auto", "fp32", "bf16")  # what a config may write; transformer training also takes fp16
RESOLVED = ("fp32", "bf16", "fp16")


def check_precision(precision: str, key: str = "precision", allowed: tuple[str, ...] = PRECISIONS) -> str:
    """`precision` if it is one of `allowed`; else a ValueError that names `key` (and says `no` is `fp32` now)."""
    if precision not in allowed:
        hint = " (write fp32 for full precision)" if precision in ("no", False) else ""
        raise ValueError(f"{key}={precision!r}: choose one of {list(allowed)}{hint}")
    return precision


def _bf16_override() -> hardware.Hardware:
    """The CPU as vqgan.hardware sees it, with VQGAN_HARDWARE's cpu_bf16/gpu_bf16 applied (its gpus/cpus keys are
    the scheduler's business: a job that runs with its GPUs hidden must not fail on `gpus=2`)."""
    spec = ",".join(s for s in os.environ.get(hardware.ENV, "").split(",") if s.strip().startswith(("cpu_", "gpu_")))
    return hardware.detect({hardware.ENV: spec}, nvidia_smi=lambda: "")


def native_bf16(device) -> bool:
    """Whether `device` (a torch.device or its name) computes bf16 natively."""
    import torch  # here, not at the top: the config check reads this module's vocabulary without torch

    device = torch.device(device)
    hw = _bf16_override()
    if device.type == "cuda":
        if "gpu_bf16" in hw.overridden:
            return hw.gpu_bf16
        return torch.cuda.get_device_capability(device) >= hardware.BF16_COMPUTE_CAPABILITY
    return hw.cpu_bf16


def _can_emulate(device) -> bool:
    """Whether torch runs bf16 at all on `device` (a pre-Ampere GPU emulates it where it can make bf16 tensors)."""
    import torch

    return device.type != "cuda" or torch.cuda.is_bf16_supported(including_emulation=True)


def resolve(precision: str, device, key: str = "precision", allowed: tuple[str, ...] = PRECISIONS,
            warn: bool = True) -> str:
    """The precision a job runs in on `device`: `auto` -> bf16 where it is native, fp32 elsewhere; fp32/bf16/fp16
    as given. bf16 asked for on a device without it: one warning line (emulated, slower), or a ValueError naming
    `key` where torch cannot run it."""
    import torch

    check_precision(precision, key, allowed)
    device = torch.device(device)
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if precision == "bf16" and not native_bf16(device):
        where = torch.cuda.get_device_name(device) if device.type == "cuda" else "this CPU"
        if not _can_emulate(device):
            raise ValueError(f"{key}=bf16: {where} cannot run bf16; write auto or fp32")
        if warn:
            print(f"warning: {key}=bf16 on {where}, which has no native bf16: emulated, slower than fp32 "
                  "(auto would choose fp32)", file=sys.stderr, flush=True)
    return precision


def accelerate_name(resolved: str) -> str:
    """Accelerate's name for a resolved precision (`no` is its fp32)."""
    return {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[resolved]


def autocast(device, precision: str):
    """A context that runs the model in `precision` on `device` (a torch.device or its name); the commands resolve
    `auto` once, and record it, before they call this."""
    if check_precision(precision) == "auto":
        precision = resolve(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    import torch

    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
