"""Run a training module on N processes: in this process for N <= 1, through `accelerate launch` otherwise.

    python -m vqgan.train.launch --num-processes 2 -- -m vqgan.train.vqgan --config cfg.json --data ... --out ...

Why a wrapper and not `accelerate launch` in the rule directly:
- with N = 1 there is no need for a launcher process at all (and no port);
- with N > 1 we always pass `--multi_gpu`: on a GPU host that is the usual DDP launch. On a CPU-only host
  `--multi_gpu` alone starts N processes that each train alone (accelerate only picks MULTI_CPU/gloo when told
  "cpu", and `--cpu --num_processes N` silently runs a single process), so we also set ACCELERATE_USE_CPU=true:
  N processes, one gloo process group;
- every launch gets a free `--main_process_port`, so parallel Snakemake jobs on one host don't collide on 29500.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import runpy
import socket
import subprocess
import sys

from vqgan.io.cli import command


def free_port() -> int:
    """A TCP port that was free a moment ago, so parallel jobs on one host don't collide on accelerate's default."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_command(num_processes: int, module: str, args: list[str], port: int | None = None) -> list[str]:
    """The `accelerate launch` command line for N > 1 processes on one machine."""
    return [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes", str(num_processes),
        "--num_machines", "1",
        "--machine_rank", "0",
        "--main_process_port", str(port or free_port()),
        # the run's own Accelerator(mixed_precision=...) takes the value from the experiment config
        "--mixed_precision", "no",
        "--dynamo_backend", "no",
        "-m", module, *args,
    ]


def launch_env() -> dict[str, str]:
    """The environment for `accelerate launch`: CPU-only hosts get gloo DDP (see the module docstring)."""
    import torch

    env = os.environ.copy()
    if not torch.cuda.is_available():
        env["ACCELERATE_USE_CPU"] = "true"
        # one math thread per process unless the caller chose otherwise: N processes share the cores
        env.setdefault("OMP_NUM_THREADS", "1")
    return env


@command
def main(argv: list[str]) -> int:
    if "--" in argv:
        split = argv.index("--")
        own, rest = argv[:split], argv[split + 1:]
    else:
        own, rest = argv, []
    p = argparse.ArgumentParser(
        prog="python -m vqgan.train.launch",
        description="Run `-m <module> <args>` on N processes (in-process for N <= 1, accelerate launch for N > 1).",
        epilog="example: python -m vqgan.train.launch --num-processes 2 -- -m vqgan.train.vqgan --config cfg.yaml ...",
    )
    p.add_argument("--num-processes", type=int, default=1, help="processes (GPUs, or CPU gloo processes); default 1")
    p.add_argument("--port", type=int, default=None, help="rendezvous port for N > 1 (default: a free one)")
    a = p.parse_args(own)
    if len(rest) < 2 or rest[0] != "-m":
        p.error("after '--' give the module to run: -- -m vqgan.train.vqgan <its arguments>")
    module, args = rest[1], rest[2:]
    try:
        found = importlib.util.find_spec(module) is not None
    except ImportError:  # a missing parent package
        found = False
    if not found:
        p.error(f"-m {module}: no such module; e.g. -m vqgan.train.vqgan or -m vqgan.train.transformer")

    if a.num_processes <= 1:
        # Same interpreter, same process: argv as if the module had been started with python -m.
        sys.argv = [module, *args]
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        except SystemExit as e:
            code = e.code
            if code is None or isinstance(code, int):
                return code or 0
            print(code, file=sys.stderr, flush=True)  # what the interpreter would have printed
            return 1
        return 0

    cmd = build_command(a.num_processes, module, args, a.port)
    env = launch_env()
    print("launch:", " ".join(cmd), f"(ACCELERATE_USE_CPU={env.get('ACCELERATE_USE_CPU', 'false')})",
          file=sys.stderr, flush=True)
    # Our own process group is the job's: a SIGKILL to the group (Snakemake, a test) reaches every worker.
    return subprocess.call(cmd, env=env)


if __name__ == "__main__":
    sys.exit(main())
