"""Where a job computes: the one place every command (training launcher, encode, eval, sample, fid) decides
between cuda and cpu.

A job that was given a GPU (CUDA_VISIBLE_DEVICES names one: `python -m vqgan.gpus` or SLURM set it) must use it:
when torch cannot, it stops at once with one line saying what torch sees and what to install, instead of
computing for hours on the CPU. A job given none (CUDA_VISIBLE_DEVICES="") uses the CPU; a command run by hand
without the variable uses cuda when torch has it, as before.
"""
from __future__ import annotations

import os

from vqgan import hardware
from vqgan.io.cli import UsageError

# Test hook, not for users: a job given a GPU computes on the CPU (the GPU tests run on CPU-only machines).
FAKE_CUDA_ENV = "VQGAN_FAKE_CUDA"


class NoCudaError(UsageError):
    """The job was given a GPU that torch cannot use; the message says what torch sees and what to install."""


def given_gpu() -> str | None:
    """The job's CUDA_VISIBLE_DEVICES when it names a GPU, else None."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    return visible or None


def fake_cuda() -> bool:
    return os.environ.get(FAKE_CUDA_ENV, "") not in ("", "0")


def no_cuda_message(visible: str) -> str:
    """What torch sees and what to install, in one line."""
    import torch

    built = torch.version.cuda
    seen = (f"torch {torch.__version__} ({f'built for CUDA {built}' if built else 'a CPU-only build'}) sees "
            f"{torch.cuda.device_count()} GPU(s) with CUDA_VISIBLE_DEVICES={visible!r}")
    driver = hardware.driver_versions()
    where = "https://pytorch.org/get-started/locally/"
    if not driver:
        fix = f"nvidia-smi answers nothing here: install the NVIDIA driver (then torch's CUDA build, {where})"
    elif not built:
        fix = f"install torch's CUDA build for this driver ({driver}): pip install torch torchvision, see {where}"
    else:
        fix = f"the driver ({driver}) must support CUDA {built}: update it, or install torch's build for its CUDA "
        fix += f"({where})"
    return f"this job was given GPU {visible} but torch cannot use CUDA: {seen}; {fix}; or run on the CPU with " \
           "VQGAN_HARDWARE=gpus=0"


def job_device(requested: str | None = None) -> str:
    """'cuda' or 'cpu' for this job (`requested`, a --device flag, wins); a NoCudaError when the job was given a
    GPU that torch cannot use."""
    if requested not in (None, "", "auto"):
        return requested
    import torch

    visible = given_gpu()
    if visible is not None and fake_cuda():
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if visible is not None:
        raise NoCudaError(no_cuda_message(visible))
    return "cpu"
