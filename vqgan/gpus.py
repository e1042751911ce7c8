"""Give a job its own GPU(s), then run it: every rule that may use a GPU runs its command through this.

    python -m vqgan.gpus --count {resources.gpu} -- python -m vqgan.eval.recon ...

- `--count 0`: the job runs on the CPU and sees no GPU (CUDA_VISIBLE_DEVICES=""), so CPU jobs running side by
  side never land on cuda:0 by accident.
- `--count N > 0` outside SLURM: claims N GPUs no other job holds, with a non-blocking `flock` on one lock file per
  GPU (VQGAN_GPU_LOCKS, default a folder of this user's in the temporary directory, so two runs in two checkouts
  share the GPUs too). It waits while too few are free, sets CUDA_VISIBLE_DEVICES to exactly those (mapped through
  a CUDA_VISIBLE_DEVICES already set), runs the command and exits with its code. The locks belong to the open
  files, which the command inherits: they end with the job, even when it is killed with -9.
- inside a SLURM job: SLURM already gave the job its GPUs (CUDA_VISIBLE_DEVICES); the command runs as it is.
- on a machine where nvidia-smi lists no GPU, `--count N` runs the command as it is (N CPU processes for the
  training launcher, as before).

The GPUs are those `vqgan.hardware.detect()` finds (nvidia-smi, CUDA_VISIBLE_DEVICES, VQGAN_HARDWARE). Two lines go
to stderr, which the rules redirect into the job's log: which GPUs the job got and when, and when it gave them
back. No torch here: the claim takes milliseconds.
"""
from __future__ import annotations

import argparse
import datetime
import fcntl
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Mapping

from vqgan import hardware
from vqgan.io.cli import UsageError, command

LOCKS_ENV = "VQGAN_GPU_LOCKS"
POLL_S = 0.5  # how often a waiting job tries again: GPU jobs run for minutes


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)  # stderr: the rules redirect it into the job's log


def lock_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get(LOCKS_ENV) or Path(tempfile.gettempdir()) / f"vqgan-gpu-locks-{os.getuid()}")


def devices(env: Mapping[str, str] | None = None) -> list[str]:
    """The GPUs a job may claim, as CUDA_VISIBLE_DEVICES values: nvidia-smi's indices, or the entries of a
    CUDA_VISIBLE_DEVICES already set (detect() numbers the GPUs it keeps by their position there)."""
    env = os.environ if env is None else env
    try:
        hw = hardware.detect(env)
    except hardware.HardwareError as e:
        raise UsageError(str(e)) from None
    visible = [v.strip() for v in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    return [visible[g.index] if visible else str(g.index) for g in hw.gpus]


def try_claim(folder: Path, candidates: list[str], count: int) -> list[tuple[str, int]] | None:
    """`count` of `candidates` locked for this process, as (device, file descriptor); None, holding nothing,
    when fewer are free (never holding some while waiting for the rest: two jobs could wait on each other)."""
    held: list[tuple[str, int]] = []
    for device in candidates:
        fd = os.open(folder / f"gpu-{re.sub(r'[^A-Za-z0-9_.-]', '_', device)}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        held.append((device, fd))
        if len(held) == count:
            return held
    release(held)
    return None


def release(held: list[tuple[str, int]]) -> None:
    for _, fd in held:
        os.close(fd)  # the last descriptor of a lock closed frees it


def claim(folder: Path, candidates: list[str], count: int, say: Callable[[str], None] = say,
          poll_s: float = POLL_S) -> list[tuple[str, int]]:
    """Wait until `count` GPUs are free and lock them."""
    folder.mkdir(parents=True, exist_ok=True)
    waiting = False
    while (held := try_claim(folder, candidates, count)) is None:
        if not waiting:
            say(f"gpus: waiting for {count} free GPU(s) of {len(candidates)}: the others are held by other jobs "
                f"(lock files in {folder})")
            waiting = True
        time.sleep(poll_s)
    return held


def now() -> str:
    return datetime.datetime.now().isoformat(timespec="milliseconds")


def run(cmd: list[str], env: Mapping[str, str], held: list[tuple[str, int]] = ()) -> int:
    """Run `cmd`, passing on the lock files (the job keeps its GPUs while any of its processes lives) and the
    signals sent to this process alone; the exit code is the command's (128 + N for a signal, as in a shell)."""
    fds = [fd for _, fd in held]
    for fd in fds:
        os.set_inheritable(fd, True)
    try:
        child = subprocess.Popen(cmd, env=dict(env), pass_fds=fds)
    except OSError as e:
        raise UsageError(f"cannot run {cmd[0]!r}: {e.strerror}") from None

    def forward(signum, _frame):
        child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    # Ctrl-C reaches the command itself (same process group): this process just waits for it to end
    signal.signal(signal.SIGINT, lambda *_: None)
    code = child.wait()
    return 128 - code if code < 0 else code


def job_env(count: int, env: Mapping[str, str]) -> tuple[dict[str, str], int]:
    """(environment, GPUs to claim) for a job asking for `count`; the environment of a job claiming none is final."""
    out = dict(env)
    if count == 0:
        out["CUDA_VISIBLE_DEVICES"] = ""  # the CPU: CUDA reads this when it starts
        return out, 0
    if env.get("SLURM_JOB_ID"):
        return out, 0  # SLURM gave the job its GPUs
    return out, count


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    split = argv.index("--") if "--" in argv else len(argv)
    p = argparse.ArgumentParser(
        prog="python -m vqgan.gpus",
        description="Give the command its own GPU(s) (CUDA_VISIBLE_DEVICES), waiting while too few are free; "
                    "--count 0 hides every GPU.",
        epilog="example: python -m vqgan.gpus --count 1 -- python -m vqgan.encode --model ... --data ... --out ...",
    )
    p.add_argument("--count", type=int, required=True, help="GPUs the command needs (the rule's gpu resource)")
    a = p.parse_args(argv[:split])
    cmd = argv[split + 1:]
    if not cmd:
        p.error("give the command after '--': python -m vqgan.gpus --count 1 -- <command ...>")
    if a.count < 0:
        p.error(f"--count {a.count}: give 0 (the CPU) or more")
    return a, cmd


@command
def main(argv: list[str]) -> int:
    a, cmd = parse(argv)
    env, count = job_env(a.count, os.environ)
    if count == 0:
        if os.environ.get("SLURM_JOB_ID") and a.count:
            say(f"gpus: inside SLURM job {env['SLURM_JOB_ID']}: CUDA_VISIBLE_DEVICES="
                f"{env.get('CUDA_VISIBLE_DEVICES', '')!r} as SLURM set it")
        return run(cmd, env)
    candidates = devices(env)
    if not candidates:
        say(f"gpus: nvidia-smi lists no GPU here: the job runs as it is ({a.count} asked for)")
        return run(cmd, env)
    if a.count > len(candidates):
        raise UsageError(f"the job asks for {a.count} GPUs, but this machine has {len(candidates)} "
                         f"({', '.join(candidates)}): set the rule's gpu resource to at most {len(candidates)} "
                         "(--set-resources <rule>:gpu=N)")
    held = claim(lock_dir(env), candidates, a.count, say)
    env["CUDA_VISIBLE_DEVICES"] = ",".join(d for d, _ in held)
    say(f"gpus: claimed GPU {env['CUDA_VISIBLE_DEVICES']} at {now()} (pid {os.getpid()})")
    try:
        code = run(cmd, env, held)
    finally:
        release(held)
    say(f"gpus: released GPU {env['CUDA_VISIBLE_DEVICES']} at {now()} (exit code {code})")
    return code


if __name__ == "__main__":
    sys.exit(main())
