"""What this machine offers, found without importing torch: GPUs (nvidia-smi), the CPUs this process may use, and
whether the CPU does bf16 natively. The workflow reads it once while it builds the DAG (and prints it as one line);
jobs read it again where they run (a SLURM node is not the submit host).

One documented override, the environment variable VQGAN_HARDWARE, e.g. `VQGAN_HARDWARE="gpus=0"` (run on the CPU
although GPUs are there), `"gpus=2,cpus=16"`, `"cpu_bf16=no"` (treat the CPU as one that emulates bf16). Keys: gpus
(a count, or a comma-free list of indices joined by `+`: `gpus=0+2`), cpus, cpu_bf16 (yes/no), gpu_bf16 (yes/no).
"""
from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Mapping

ENV = "VQGAN_HARDWARE"
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs that compute bf16 natively
BF16_COMPUTE_CAPABILITY = (8, 0)  # Ampere and newer: native bf16 tensor cores


class HardwareError(ValueError):
    """A bad VQGAN_HARDWARE value: the message names it and says what to write."""


@dataclass(frozen=True)
class GPU:
    index: int
    name: str
    memory_mib: int
    compute_capability: tuple[int, int]

    @property
    def bf16(self) -> bool:
        return self.compute_capability >= BF16_COMPUTE_CAPABILITY


@dataclass(frozen=True)
class Hardware:
    gpus: tuple[GPU, ...]
    cpus: int  # CPUs this process may use (affinity, cgroup quota)
    cpu_model: str
    cpu_bf16: bool  # the CPU computes bf16 natively (else it emulates it, slower than fp32)
    gpu_bf16: bool  # every GPU computes bf16 natively
    overridden: str = ""  # the VQGAN_HARDWARE value applied, if any

    def bf16(self, device: str) -> bool:
        """Whether bf16 is native on `device` ("cpu" or "cuda")."""
        return self.gpu_bf16 if device == "cuda" else self.cpu_bf16

    def line(self) -> str:
        """One line for the start of a run, e.g. `hardware: 2 GPUs (H100 80GB HBM3, bf16), 16 CPUs (..., fp32)`."""
        def precision(native: bool) -> str:
            return "bf16" if native else "fp32: no native bf16"

        if self.gpus:
            names = sorted({g.name for g in self.gpus})
            gpus = f"{len(self.gpus)} GPU{'s' * (len(self.gpus) > 1)} ({', '.join(names)}, {precision(self.gpu_bf16)})"
        else:
            gpus = "no GPU"
        cpus = f"{self.cpus} CPU{'s' * (self.cpus > 1)} ({self.cpu_model}, {precision(self.cpu_bf16)})"
        how = f" [{ENV}={self.overridden}]" if self.overridden else f" [override with {ENV}=gpus=0,cpus=N,cpu_bf16=no]"
        return f"hardware: {gpus}, {cpus}{how}"


def job_defaults(hw: Hardware) -> tuple[int, int]:
    """(gpu, threads) of the rules on this machine: every rule that may use a GPU gets one when there is one (0:
    the CPU); a training job gets an equal share of the CPUs, between two jobs (two datasets train side by side)
    or one per GPU, whichever is more: 1 thread on a 2-core machine."""
    return (1 if hw.gpus else 0), max(1, hw.cpus // max(2, len(hw.gpus)))


# -- detection ------------------------------------------------------------------------------------------------


def _run_nvidia_smi(which: Callable[[str], str | None] = shutil.which) -> str:
    exe = which("nvidia-smi")
    if exe is None:
        return ""
    try:
        proc = subprocess.run([exe, "--query-gpu=index,name,memory.total,compute_cap", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return proc.stdout if proc.returncode == 0 else ""


def driver_versions(which: Callable[[str], str | None] = shutil.which) -> str:
    """nvidia-smi's header, "driver 550.54.15, CUDA <= 12.4", for an error message; "" without nvidia-smi."""
    exe = which("nvidia-smi")
    try:
        text = subprocess.run([exe], capture_output=True, text=True, timeout=30).stdout if exe else ""
    except (OSError, subprocess.TimeoutExpired):
        text = ""
    driver = re.search(r"Driver Version:\s*([\d.]+)", text)
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", text)
    parts = [f"driver {driver.group(1)}"] if driver else []
    return ", ".join(parts + ([f"CUDA <= {cuda.group(1)}"] if cuda else []))


def parse_gpus(text: str, visible: str | None = None) -> tuple[GPU, ...]:
    """nvidia-smi's CSV rows; `visible` (CUDA_VISIBLE_DEVICES) keeps those indices only, renumbered as CUDA does."""
    gpus = []
    for row in text.strip().splitlines():
        parts = [p.strip() for p in row.split(",")]
        if len(parts) != 4:
            continue
        try:
            major, _, minor = parts[3].partition(".")
            gpus.append(GPU(int(parts[0]), parts[1], int(float(parts[2])), (int(major), int(minor or 0))))
        except ValueError:
            continue  # "[N/A]" or a driver too old for compute_cap: not a GPU we can plan for
    if visible is not None:
        wanted = [v.strip() for v in visible.split(",") if v.strip()]
        by_index = {str(g.index): g for g in gpus}
        gpus = [replace(by_index[w], index=i) for i, w in enumerate(wanted) if w in by_index]
    return tuple(gpus)


def _cpuinfo() -> tuple[str, set[str]]:
    model, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown CPU":
                model = " ".join(value.split())
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return model, flags


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup v2 CPU quota (containers)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def _yes_no(key: str, value: str) -> bool:
    if value.lower() in ("yes", "true", "1"):
        return True
    if value.lower() in ("no", "false", "0"):
        return False
    raise HardwareError(f"{ENV}: {key}={value!r}: write yes or no")


def apply_override(hw: Hardware, spec: str) -> Hardware:
    """`spec` (VQGAN_HARDWARE's value) applied to what was detected."""
    changes: dict = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not value:
            raise HardwareError(f"{ENV}: {item!r} is not key=value (keys: gpus, cpus, cpu_bf16, gpu_bf16)")
        if key == "gpus":
            if value.isdigit():
                n = int(value)
                if n > len(hw.gpus):
                    raise HardwareError(f"{ENV}: gpus={n}, but nvidia-smi lists {len(hw.gpus)}; write at most "
                                        f"{len(hw.gpus)}")
                changes["gpus"] = hw.gpus[:n]
            else:
                try:
                    wanted = [int(v) for v in value.split("+")]
                except ValueError:
                    raise HardwareError(f"{ENV}: gpus={value!r}: a count (gpus=2) or indices (gpus=0+2)") from None
                by_index = {g.index: g for g in hw.gpus}
                missing = [i for i in wanted if i not in by_index]
                if missing:
                    raise HardwareError(f"{ENV}: gpus={value}: no GPU {missing} (nvidia-smi lists {sorted(by_index)})")
                changes["gpus"] = tuple(by_index[i] for i in wanted)
        elif key == "cpus":
            if not value.isdigit() or int(value) < 1:
                raise HardwareError(f"{ENV}: cpus={value!r}: a count >= 1")
            changes["cpus"] = int(value)
        elif key in ("cpu_bf16", "gpu_bf16"):
            changes[key] = _yes_no(key, value)
        else:
            raise HardwareError(f"{ENV}: unknown key {key!r} (keys: gpus, cpus, cpu_bf16, gpu_bf16)")
    if "gpus" in changes and "gpu_bf16" not in changes:
        changes["gpu_bf16"] = bool(changes["gpus"]) and all(g.bf16 for g in changes["gpus"])
    return replace(hw, **changes, overridden=spec)


def detect(env: Mapping[str, str] | None = None, nvidia_smi: Callable[[], str] = _run_nvidia_smi) -> Hardware:
    """The machine as this process sees it, with VQGAN_HARDWARE applied."""
    env = os.environ if env is None else env
    visible = env.get("CUDA_VISIBLE_DEVICES")
    gpus = parse_gpus(nvidia_smi(), visible) if visible != "" else ()
    model, flags = _cpuinfo()
    hw = Hardware(gpus=gpus, cpus=usable_cpus(), cpu_model=model, cpu_bf16=bool(flags & set(CPU_BF16_FLAGS)),
                  gpu_bf16=bool(gpus) and all(g.bf16 for g in gpus))
    spec = env.get(ENV, "").strip()
    return apply_override(hw, spec) if spec else hw


if __name__ == "__main__":
    print(detect().line())
