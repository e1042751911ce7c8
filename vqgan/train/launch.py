"""Run a training module on N processes: in this process for N <= 1, through `accelerate launch` otherwise, and
on several machines through SLURM's `srun`.

    python -m vqgan.train.launch --num-processes 2 -- -m vqgan.train.vqgan --config cfg.json --data ... --out ...
    python -m vqgan.train.launch --num-processes 16 --nodes 2 -- -m vqgan.train.transformer ...   # in a SLURM job

`--num-processes` is the rule's `gpu` resource: 0 runs one process on the CPU with every GPU hidden (so CPU jobs
running side by side never pile onto cuda:0), 1 one process on a GPU when there is one, N > 1 one process per GPU
(or N gloo processes on a CPU-only host). `--threads` is the CPUs a process may use for its math (the rule's
`threads`); inside a SLURM job the CPUs SLURM bound the job to decide instead, split over the processes.

Why a wrapper and not `accelerate launch` in the rule directly:
- with N <= 1 there is no need for a launcher process at all (and no port);
- with N > 1 we always pass `--multi_gpu`: on a GPU host that is the usual DDP launch. On a CPU-only host
  `--multi_gpu` alone starts N processes that each train alone (accelerate only picks MULTI_CPU/gloo when told
  "cpu", and `--cpu --num_processes N` silently runs a single process), so we also set ACCELERATE_USE_CPU=true:
  N processes, one gloo process group;
- every launch gets a free `--main_process_port`, so parallel Snakemake jobs on one host don't collide on 29500;
- `accelerate launch` reads the user's own `~/.cache/huggingface/accelerate/default_config.yaml` (from
  `accelerate config`) whenever no `--config_file` is given, and takes GPU ids, DeepSpeed/FSDP settings or a
  machine count from it. We always pass a config file of our own, written for this launch, so nothing leaks in;
- it checks the batch against the data (`vqgan.train.config.check_data`) before torch is imported or any process
  started: a batch larger than the dataset fails in a fraction of a second, not after torch's 5-9 s import;
- it checks that this machine has a GPU for every process before starting any (accelerate would fail later with
  "invalid device ordinal"), and that torch can use the GPU the job was given (vqgan.device: one line saying what
  torch sees, instead of training for hours on the CPU);
- `--nodes M > 1` (inside a SLURM job of M nodes): `srun` starts this launcher once per node, and each starts
  `accelerate launch --num_machines M --machine_rank $SLURM_NODEID --main_process_ip <first node>` with N / M
  processes. The SLURM job must be submitted with the `mpi` resource so that the job itself runs this `srun`
  (README, "More than one node").
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import runpy
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from vqgan.device import fake_cuda, job_device
from vqgan.io.cli import command
from vqgan.train.config import check_data


class LaunchError(RuntimeError):
    """A launch that cannot work on this machine; the message says what to change."""


def free_port() -> int:
    """A TCP port that was free a moment ago, so parallel jobs on one host don't collide on accelerate's default.

    Bound on every interface, not loopback only: with several nodes the other machines connect to this host's
    network address, where a port free on 127.0.0.1 may be taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def build_command(num_processes: int, module: str, args: list[str], port: int | None = None, *,
                  config_file: str | os.PathLike | None = None, num_machines: int = 1, machine_rank: int = 0,
                  main_process_ip: str | None = None, threads: int | None = None) -> list[str]:
    """The `accelerate launch` command line for N > 1 processes in all, over `num_machines` machines."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if config_file is not None:
        cmd += ["--config_file", str(config_file)]
    cmd += [
        "--multi_gpu",
        "--num_processes", str(num_processes),
        "--num_machines", str(num_machines),
        "--machine_rank", str(machine_rank),
        "--main_process_port", str(port or free_port()),
    ]
    if num_machines > 1:
        cmd += ["--main_process_ip", str(main_process_ip), "--same_network", "--rdzv_backend", "static"]
    if threads is not None:
        cmd += ["--num_cpu_threads_per_process", str(threads)]
    return cmd + [
        # the run's own Accelerator(mixed_precision=...) takes the value from the experiment config
        "--mixed_precision", "no",
        "--dynamo_backend", "no",
        "-m", module, *args,
    ]


def write_accelerate_config(path: Path, num_processes: int, num_machines: int, cpu: bool) -> Path:
    """A complete accelerate config for this launch: passed as --config_file, it replaces the user's default
    config (which `accelerate launch` would otherwise read and mix into ours)."""
    import yaml

    path.write_text(yaml.safe_dump({  # not atomic: a private temporary folder, read only by this launch
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": "MULTI_CPU" if cpu else "MULTI_GPU",
        "mixed_precision": "no",
        "use_cpu": cpu,
        "debug": False,
        "num_processes": num_processes,
        "num_machines": num_machines,
        "gpu_ids": "all",
        "rdzv_backend": "static",
        "same_network": True,
        "downcast_bf16": "no",
        "enable_cpu_affinity": False,
        "main_training_function": "main",
    }))
    return path


def launch_env(threads: int | None = None) -> dict[str, str]:
    """The environment for `accelerate launch`: CPU-only hosts get gloo DDP (see the module docstring)."""
    import torch

    env = os.environ.copy()
    if not torch.cuda.is_available():
        env["ACCELERATE_USE_CPU"] = "true"
    # accelerate sets OMP_NUM_THREADS for its processes from ours (--num_cpu_threads_per_process otherwise)
    env["OMP_NUM_THREADS"] = str(threads or env.get("OMP_NUM_THREADS") or 1)
    return env


def hide_gpus() -> None:
    """`--num-processes 0`: the job asked for no GPU, so it must not see one (CUDA reads this when it starts)."""
    os.environ["CUDA_VISIBLE_DEVICES"] = ""


def check_devices(local_processes: int, num_processes: int, nodes: int) -> str:
    """'cuda' or 'cpu' for the processes of this machine (vqgan.device.job_device: a job given a GPU that torch
    cannot use stops there); a LaunchError when there are fewer GPUs than processes."""
    import torch

    device = job_device()
    if device == "cuda":
        n = torch.cuda.device_count()
        if local_processes > n:
            where = f" ({num_processes} over {nodes} machines)" if nodes > 1 else ""
            raise LaunchError(
                f"--num-processes asks for {local_processes} processes on this machine{where}, one per GPU, but "
                f"torch sees {n} GPU(s) (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}). Set the "
                f"rule's gpu resource to at most {n * nodes} (profiles/slurm/config.yaml: set-resources), or make "
                "SLURM allocate more GPUs per node"
            )
    return device


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity (SLURM binds a job's steps to the CPUs it was given), capped by
    SLURM's own count where it exports one."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    slurm = os.environ.get("SLURM_CPUS_ON_NODE", "")
    return min(n, int(slurm)) if slurm.isdigit() and int(slurm) > 0 else n


def math_threads(requested: int | None, local_processes: int) -> int:
    """Math threads per process: inside a SLURM job all CPUs it was given, split over this machine's processes
    (so `cpus_per_gpu` in the profile is what each GPU's process gets); elsewhere `--threads` (the rule's
    `threads`, one by default) split the same way; without it OMP_NUM_THREADS as set, or all usable CPUs."""
    if os.environ.get("SLURM_JOB_ID"):
        return max(1, usable_cpus() // max(1, local_processes))
    if requested is not None:
        return max(1, requested // max(1, local_processes))
    omp = os.environ.get("OMP_NUM_THREADS", "")
    return int(omp) if omp.isdigit() and int(omp) > 0 else max(1, usable_cpus() // max(1, local_processes))


def set_math_threads(n: int) -> None:
    """For an in-process run: the libraries that read these at import (OpenMP, MKL, OpenBLAS) and torch."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    import torch

    torch.set_num_threads(n)


def slurm_hosts(nodelist: str) -> list[str]:
    """`scontrol show hostnames <nodelist>`: SLURM's compressed host list (node[01-02]) as names."""
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
    return out.stdout.split()


def slurm_machine(num_machines: int) -> tuple[int, str]:
    """(machine rank, main process host) of this node inside `srun`: SLURM_NODEID, and the first host of the
    step's (or job's) node list."""
    try:
        rank = int(os.environ["SLURM_NODEID"])
        nodelist = os.environ.get("SLURM_STEP_NODELIST") or os.environ["SLURM_JOB_NODELIST"]
    except (KeyError, ValueError) as e:
        raise LaunchError(f"--machine-rank slurm: not inside an srun step ({e} is not set); start this through "
                          "--nodes N from a SLURM job, or pass --machine-rank and --main-process-ip") from None
    nnodes = os.environ.get("SLURM_STEP_NUM_NODES") or os.environ.get("SLURM_NNODES")
    if nnodes and int(nnodes) != num_machines:
        raise LaunchError(f"--nodes {num_machines}, but this srun step spans {nnodes} node(s); submit the job with "
                          f"nodes={num_machines}")
    return rank, slurm_hosts(nodelist)[0]


def srun_command(own: list[str], module: str, args: list[str], nodes: int, port: int, cpus: int) -> list[str]:
    """One task per node, each running this launcher again as that node's machine.

    `--cpus-per-task`: the job's CPUs on a node (srun gives a step one CPU per task otherwise). GPUs need no flag:
    a step gets every GPU the job holds on its nodes. `--kill-on-bad-exit`: one node failing ends the others
    instead of leaving them waiting in a collective.
    """
    return ["srun", f"--nodes={nodes}", f"--ntasks={nodes}", "--ntasks-per-node=1", f"--cpus-per-task={cpus}",
            "--kill-on-bad-exit=1", sys.executable, "-m", "vqgan.train.launch", *own,
            "--port", str(port), "--machine-rank", "slurm", "--", "-m", module, *args]


def parse(argv: list[str]) -> tuple[argparse.ArgumentParser, argparse.Namespace, list[str], str, list[str]]:
    if "--" in argv:
        split = argv.index("--")
        own, rest = argv[:split], argv[split + 1:]
    else:
        own, rest = argv, []
    p = argparse.ArgumentParser(
        prog="python -m vqgan.train.launch",
        description="Run `-m <module> <args>` on N processes (in-process for N <= 1, accelerate launch for N > 1, "
                    "srun + accelerate launch per node for --nodes > 1).",
        epilog="example: python -m vqgan.train.launch --num-processes 2 -- -m vqgan.train.vqgan --config cfg.yaml ...",
    )
    p.add_argument("--num-processes", type=int, default=1,
                   help="processes in all (GPUs, or CPU gloo processes); 0: one CPU process with the GPUs hidden")
    p.add_argument("--nodes", type=int, default=1, help="machines (SLURM nodes) the processes are spread over")
    p.add_argument("--threads", type=int, default=None,
                   help="CPUs for this job's math on each machine, split over its processes (outside SLURM)")
    p.add_argument("--port", type=int, default=None, help="rendezvous port for N > 1 (default: a free one)")
    p.add_argument("--machine-rank", default=None,
                   help="run as one machine of --nodes: its index, or 'slurm' for $SLURM_NODEID (set by --nodes)")
    p.add_argument("--main-process-ip", default=None, help="host of machine 0 (with --machine-rank N)")
    a = p.parse_args(own)
    if len(rest) < 2 or rest[0] != "-m":
        p.error("after '--' give the module to run: -- -m vqgan.train.vqgan <its arguments>")
    module = rest[1]
    try:
        found = importlib.util.find_spec(module) is not None
    except ImportError:  # a missing parent package
        found = False
    if not found:
        p.error(f"-m {module}: no such module; e.g. -m vqgan.train.vqgan or -m vqgan.train.transformer")
    return p, a, own, module, rest[2:]


@command
def main(argv: list[str]) -> int:
    p, a, own, module, args = parse(argv)
    if a.num_processes < 0 or a.nodes < 1:
        p.error(f"--num-processes {a.num_processes} --nodes {a.nodes}: need >= 0 processes on >= 1 nodes")
    if a.num_processes == 0:
        if a.nodes > 1:
            p.error("--num-processes 0 (CPU) runs on one machine; give --nodes 1")
        hide_gpus()
    if a.nodes > 1 and a.num_processes % a.nodes:
        p.error(f"--num-processes {a.num_processes} over --nodes {a.nodes}: give every machine the same number "
                "(gpu must be a multiple of nodes)")
    local = max(1, a.num_processes // a.nodes)
    # The checks that need the data, before torch is imported (5-9 s) or any process started: a batch larger than
    # the data fails here in a fraction of a second. N <= 1 runs here: WORLD_SIZE, if set, is the world size.
    check_data(module, args, a.num_processes if a.num_processes > 1 else None)
    try:
        if a.nodes > 1 and a.machine_rank is None:
            # This is the SLURM job itself (on its first node): start one launcher per node.
            cmd = srun_command(own, module, args, a.nodes, a.port or free_port(), usable_cpus())
            print("launch:", " ".join(cmd), file=sys.stderr, flush=True)
            return subprocess.call(cmd)
        device = check_devices(local, a.num_processes, a.nodes) if a.num_processes > 0 else "cpu"
        if device == "cpu" and fake_cuda():
            os.environ["ACCELERATE_USE_CPU"] = "true"  # a GPU job that computes on the CPU (test hook): Accelerator too
        threads = math_threads(a.threads, local)
        if a.num_processes <= 1 and a.nodes == 1:
            if a.threads is not None or os.environ.get("SLURM_JOB_ID"):  # else: as the caller set them
                set_math_threads(threads)
            return run_here(module, args)
        machine_rank, main_ip = 0, None
        if a.nodes > 1:
            if a.machine_rank == "slurm":
                machine_rank, main_ip = slurm_machine(a.nodes)
            else:
                machine_rank, main_ip = int(a.machine_rank), a.main_process_ip
                if main_ip is None:
                    p.error("--machine-rank N needs --main-process-ip (the host of machine 0)")
            if a.port is None:
                p.error("--nodes > 1 needs --port: every machine must use the same one")
    except LaunchError as e:  # before anything started: one line, exit 2 (as vqgan.io.cli.command does)
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2

    with tempfile.TemporaryDirectory(prefix="vqgan-launch-") as tmp:
        config = write_accelerate_config(Path(tmp) / "accelerate.yaml", a.num_processes, a.nodes, device == "cpu")
        cmd = build_command(a.num_processes, module, args, a.port, config_file=config, num_machines=a.nodes,
                            machine_rank=machine_rank, main_process_ip=main_ip, threads=threads)
        env = launch_env(threads)
        print("launch:", " ".join(cmd), f"(ACCELERATE_USE_CPU={env.get('ACCELERATE_USE_CPU', 'false')}, "
              f"{threads} math threads per process)", file=sys.stderr, flush=True)
        # Our own process group is the job's: a SIGKILL to the group (Snakemake, a test) reaches every worker.
        return subprocess.call(cmd, env=env)


def run_here(module: str, args: list[str]) -> int:
    """Run `python -m module args` in this process (N <= 1: no launcher, no port)."""
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


if __name__ == "__main__":
    sys.exit(main())
