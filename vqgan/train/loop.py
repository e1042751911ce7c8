"""What every training loop shares: state folders, resume, data order, LR schedule, NaN guard, logs, export.

Model-agnostic on purpose: `vqgan.train.vqgan` and the transformer loop both build on it. The pieces follow
accelerate's `by_feature/checkpointing.py`, with three choices of our own:

- **State folders are keyed by a hash of the config and the data manifest** (`{state_dir}/{hash}/checkpoint-N`),
  so a run with a changed config starts fresh instead of resuming weights trained for another experiment.
- **The data order is a pure function of (seed, micro-step)** (`StepBatchSampler`), so resuming needs nothing but
  the step counter: a resumed run sees exactly the batches an uninterrupted run would have seen, on any number of
  processes (the global batch sequence does not depend on the world size; each rank takes its slice).
- **The learning rate is a pure function of the step** (`lr_at`) and is written into the optimizers every step,
  instead of a stateful scheduler (accelerate steps a prepared scheduler once per process, which silently
  shortens warm-up by the world size).

A checkpoint is written to a hidden temporary folder and renamed into place once every rank has saved, with
`train_state.json` written last; a folder without that file is never resumed from. A run killed mid-save
therefore resumes from the previous checkpoint (and the next run removes the hidden folder). A checkpoint that is
complete but does not load (a corrupt file) is reported by path and the one before it is used.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from vqgan.io.checkpoint import WEIGHTS, CheckpointError, save_model
from vqgan.io.files import (
    TMP_MARK,
    atomic_file,
    clean_stale,
    prepare_output,
    to_json,
    write_json_atomic,
    write_text_atomic,
)
from vqgan.io.progress import progress_bar
from vqgan.precision import PRECISIONS, accelerate_name, resolve
from vqgan.train.config import LoopConfig, per_device_batch  # the train sections' keys: torch-free, see there

TRAIN_STATE = "train_state.json"
METRICS = "metrics.jsonl"
_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")


# ----------------------------------------------------------------------------------------------------------------
# Seeds


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch identically on every rank (DDP also broadcasts rank 0's weights at wrap time)."""
    from accelerate.utils import set_seed

    set_seed(int(seed))


def seed_rank(seed: int, rank: int) -> None:
    """Give each rank its own python/numpy/torch streams once the models are built (same weights everywhere).

    What these streams drive must differ between ranks: dropout masks and any noise drawn inside the models (a
    rank that repeated rank 0's draws would add no new randomness to the averaged gradient). What must be the
    same everywhere never comes from them: data order, augmentation and token corruption are pure functions of
    (seed, step) (`StepBatchSampler`), and codebook restarts are broadcast from rank 0. A resumed run gets each
    rank's saved streams back from `accelerator.load_state`.
    """
    import random

    state = np.random.SeedSequence([int(seed), 0x5EED, int(rank)]).generate_state(2)
    random.seed(int(state[0]))
    np.random.seed(int(state[1]))
    torch.manual_seed(int(state[0]))  # every device's generator, CUDA included


# ----------------------------------------------------------------------------------------------------------------
# Batch sizes, data order, learning rate


def make_accelerator(run_dir: Path, tc: LoopConfig):
    """The Accelerator of a run (autocast, accumulation, TensorBoard under the state folder), the per-device batch
    and the precision `tc.precision` resolves to on this process's device: -> (accelerator, per_device_batch,
    precision). A ValueError when the batch does not divide or the device cannot run the precision."""
    from accelerate import Accelerator, PartialState
    from accelerate.utils import ProjectConfiguration, parse_flag_from_env

    # The device this process trains on, before the Accelerator fixes its autocast; ACCELERATE_USE_CPU read as
    # AcceleratorState reads it (a PartialState made without it would not join a multi-process CPU run).
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    precision = resolve(tc.precision, state.device, f"{tc.SECTION}.precision", allowed=(*PRECISIONS, "fp16"),
                        warn=state.is_main_process)
    accelerator = Accelerator(
        mixed_precision=accelerate_name(precision),
        gradient_accumulation_steps=tc.grad_accum,
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "tb")),
    )
    return accelerator, per_device_batch(tc.batch_size, accelerator.num_processes, tc.grad_accum), precision


class StepBatchSampler:
    """Infinite per-rank batches of indices whose order depends only on (seed, micro-step).

    Micro-step m covers the global micro-batch of `per_device * world_size` samples at positions
    [m*G, (m+1)*G) of an endless stream made of one fresh permutation per epoch (seeded by seed + epoch);
    rank r takes the r-th slice. The tail of an epoch that does not fill a micro-batch is dropped, as usual.
    `start` skips the micro-steps a resumed run has already done.
    """

    def __init__(self, n: int, per_device: int, rank: int, world_size: int, seed: int, start: int = 0):
        self.n, self.per_device, self.rank, self.world_size = n, per_device, rank, world_size
        self.seed, self.start = int(seed), int(start)
        self.global_micro = per_device * world_size
        if n < self.global_micro:
            raise ValueError(
                f"the dataset has {n} samples, fewer than one global micro-batch of {self.global_micro} "
                "(per-device batch x processes); use more data or a smaller train.batch_size"
            )
        self.per_epoch = n // self.global_micro
        self._perms: dict[int, np.ndarray] = {}

    def epoch_of(self, micro_step: int) -> int:
        return micro_step // self.per_epoch

    def permutation(self, epoch: int) -> np.ndarray:
        """An epoch's data order, computed once: permuting a COCO-sized dataset at every micro-step costs as much as
        a GPU step. The last two epochs are kept (a prefetching loader runs ahead of the step into the next)."""
        perm = self._perms.get(epoch)
        if perm is None:
            perm = self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            for old in sorted(self._perms)[:-2]:
                del self._perms[old]
        return perm

    def indices(self, micro_step: int) -> list[int]:
        epoch, pos = divmod(micro_step, self.per_epoch)
        perm = self.permutation(epoch)
        lo = pos * self.global_micro + self.rank * self.per_device
        return perm[lo : lo + self.per_device].tolist()

    def uniforms(self, micro_step: int, salt: int, k: int = 1) -> np.ndarray:
        """(per_device, k) uniforms in [0, 1) for this rank's slice of a micro-batch: a pure function of (seed,
        salt, micro-step), so augmentation replays identically after a resume and on any world size."""
        u = np.random.default_rng([self.seed, salt, micro_step]).random((self.global_micro, k))
        lo = self.rank * self.per_device
        return u[lo : lo + self.per_device]

    def coin(self, micro_step: int, salt: int = 1, p: float = 0.5) -> np.ndarray:
        """Per-sample random booleans for this rank's slice of a micro-batch (e.g. horizontal flips)."""
        return self.uniforms(micro_step, salt)[:, 0] < p

    def __iter__(self) -> Iterator[list[int]]:
        m = self.start
        while True:
            yield self.indices(m)
            m += 1


def lr_at(step: int, base_lr: float, warmup_steps: int, total_steps: int, schedule: str = "cosine",
          min_lr_ratio: float = 0.1) -> float:
    """Linear warm-up from 0, then constant or cosine decay to `min_lr_ratio * base_lr` at `total_steps`."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    if schedule != "cosine":
        raise ValueError(f"unknown lr schedule {schedule!r}; use 'cosine' or 'constant'")
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / span)
    return base_lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def loader_workers(setting: int | str, device) -> int:
    """Data-loader processes for `num_workers`: the number given, or for "auto" min(4, this process's share of the
    CPUs) on CUDA -- memory-map reads and batch assembly off the training thread, so the GPU never waits for data --
    and 0 on the CPU, where workers would take the cores the step itself runs on."""
    if setting != "auto":
        return int(setting)
    if torch.device(device).type != "cuda":
        return 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    per_process = cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))  # set by the launcher per node
    return max(1, min(4, per_process))


def to_device(x: np.ndarray | torch.Tensor | list, device: torch.device) -> torch.Tensor:
    """Host data (indices, masks, noise) to `device` without a host sync: a plain copy from pageable memory to a
    GPU waits for every kernel queued before it; from pinned memory it is queued behind them instead."""
    t = torch.as_tensor(x)
    if torch.device(device).type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints


@dataclass
class Resume:
    step: int
    path: Path | None
    extra: dict[str, Any]


class CheckpointManager:
    """`{run_dir}/checkpoint-<step>/` folders written through `accelerator.save_state`, the newest K kept.

    Every rank must call `save` (accelerate writes one RNG file per process); only rank 0 renames and prunes.
    """

    def __init__(self, run_dir: str | os.PathLike, keep: int = 2):
        if keep < 1:
            raise ValueError(f"train.keep_checkpoints must be >= 1, got {keep}")
        self.run_dir = Path(run_dir)
        self.keep = keep

    def checkpoints(self) -> list[tuple[int, Path]]:
        """Complete checkpoints (with train_state.json), oldest first."""
        if not self.run_dir.is_dir():
            return []
        found = []
        for p in self.run_dir.iterdir():
            m = _CKPT_RE.match(p.name)
            if m and (p / TRAIN_STATE).is_file():
                found.append((int(m.group(1)), p))
        return sorted(found)

    def latest(self) -> Path | None:
        ckpts = self.checkpoints()
        return ckpts[-1][1] if ckpts else None

    def _tmp(self, step: int) -> Path:
        # one name every rank agrees on (so not tempfile's), hidden and marked like every temporary of vqgan.io.files
        return self.run_dir / f".checkpoint-{step}{TMP_MARK}save"

    def remove_interrupted(self) -> list[Path]:
        """Delete the hidden folders of saves that a kill interrupted (rank 0, before training starts)."""
        removed = []
        if self.run_dir.is_dir():
            for p in self.run_dir.glob(".checkpoint-*.tmp*"):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
        return removed

    def save(self, accelerator, step: int, extra: dict[str, Any] | None = None) -> Path:
        final = self.run_dir / f"checkpoint-{step}"
        tmp = self._tmp(step)
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)  # debris of a save killed earlier
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            # written last: its presence is what marks the folder complete (renamed into place below)
            (tmp / TRAIN_STATE).write_text(to_json({"step": step, **(extra or {})}))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            for _, old in self.checkpoints()[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()
        return final

    def resume(self, accelerator) -> Resume:
        """Load the newest checkpoint that loads into the prepared objects; step 0 when there is none.

        A checkpoint that fails to load (a file cut short by a full disk, a bad copy) is reported with its path and
        the one before it is tried. If every one fails, the error names them all: some weights may already have
        been overwritten by a partial load, so starting afresh must be the user's choice (delete the folder).
        """
        if accelerator.is_main_process:
            for p in self.remove_interrupted():
                accelerator.print(f"removed {p}: a checkpoint save that was interrupted", flush=True)
        accelerator.wait_for_everyone()
        failures = []
        for step, path in reversed(self.checkpoints()):
            error = None
            try:
                state = json.loads((path / TRAIN_STATE).read_text())
                step = int(state["step"])
                accelerator.load_state(str(path))
            except Exception as e:  # SafetensorError, torch.load's RuntimeError/UnpicklingError, OSError, bad JSON
                error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            if _any_rank(accelerator, error is not None):  # all ranks go on together, or none
                failures.append(f"{path} ({error or 'failed on another rank'})")
                accelerator.print(f"warning: cannot load checkpoint {path}: {error or 'failed on another rank'}; "
                                  "trying the one before it", flush=True)
                continue
            return Resume(step=step, path=path, extra=state)
        if failures:
            raise CheckpointError(
                "no checkpoint could be loaded: " + "; ".join(failures) + f". Delete {self.run_dir} to start this "
                "run afresh (its config and data are unchanged, so nothing else will be lost)")
        return Resume(step=0, path=None, extra={})


def _any_rank(accelerator, flag: bool) -> bool:
    """True on every rank if `flag` is true on any rank."""
    if accelerator.num_processes == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return accelerator.reduce(t, reduction="sum").item() > 0


_STATE_RE = re.compile(r"^[0-9a-f]{12}$")  # config_hash's names


def prune_state_dirs(state_dir: str | os.PathLike, keep: Path) -> list[Path]:
    """Remove the run folders of `state_dir` other than `keep` (call once `keep`'s run has exported its model):
    each belongs to a config or dataset that is no longer the current one, and holds optimizer state and
    checkpoints worth gigabytes at paper scale."""
    removed = []
    for p in Path(state_dir).iterdir() if Path(state_dir).is_dir() else []:
        if p.is_dir() and _STATE_RE.match(p.name) and p.resolve() != Path(keep).resolve():
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


# ----------------------------------------------------------------------------------------------------------------
# NaN / inf guard


class NonFiniteLossError(RuntimeError):
    """Raised on every rank when any rank saw a NaN/inf loss; the message names the step and the last good state."""


class FiniteGuard:
    """The NaN/inf guard without a host sync per step: `watch` folds each loss into a flag on the device (the
    first step at which it was not finite), `check` reads the flags of all ranks at once.

    Call `check` on every rank at log steps and before every checkpoint, so no state is ever saved after a bad
    step; a divergence is reported at most `log_every` steps late, and the steps in between never reach disk.
    """

    NEVER = 2**62

    def __init__(self, accelerator):
        self.accelerator = accelerator
        self.first_bad: dict[str, torch.Tensor] = {}

    def watch(self, step: int, **losses: torch.Tensor) -> None:
        for name, value in losses.items():
            bad = ~torch.isfinite(value.detach()).all()
            first = self.first_bad.get(name)
            if first is None:
                first = torch.full((), self.NEVER, dtype=torch.int64, device=value.device)
            self.first_bad[name] = torch.where(bad, torch.clamp(first, max=step), first)

    def check(self, last_good: Path | None) -> None:
        """Raise NonFiniteLossError on every rank if any rank saw a non-finite loss since the start."""
        names = sorted(self.first_bad)
        if not names:
            return
        steps = torch.stack([self.first_bad[n] for n in names]).to(self.accelerator.device)
        if self.accelerator.num_processes > 1:
            import torch.distributed as dist

            dist.all_reduce(steps, op=dist.ReduceOp.MIN)
        steps = steps.tolist()  # the one host sync
        bad = {n: s for n, s in zip(names, steps) if s < self.NEVER}
        if bad:
            step = min(bad.values())
            where = f"{last_good}" if last_good is not None else "none yet (no checkpoint was written before this step)"
            raise NonFiniteLossError(
                f"non-finite loss at step {step} ({', '.join(sorted(bad))}); training stopped and no state was saved "
                f"after it. Last good state: {where}. Rerunning resumes from it; to get past the divergence lower "
                "train.lr, raise train.warmup_steps, set train.grad_clip, or use train.precision 'fp32'/'bf16'."
            )


class IntervalMeans:
    """Means of the logged values over a logging interval and over all ranks, without a host sync per step.

    `add` keeps detached tensors on the device and sums them there; `means` (every rank calls it, at log steps)
    averages each key over its micro-steps and over the ranks in one all-reduce, and moves the result to the host
    once. Each rank's value is the mean over its equal share of the global batch, so the mean over ranks is the
    global-batch mean that a single process would log.
    """

    def __init__(self, accelerator):
        self.accelerator = accelerator
        self.sums: dict[str, torch.Tensor | float] = {}
        self.counts: dict[str, int] = {}

    def add(self, values: dict[str, torch.Tensor | float]) -> None:
        for k, v in values.items():
            # numbers stay Python floats: a tensor made of one would be copied to the device (or a device sum
            # back to the host) at every step; float + device tensor stays on the device
            v = v.detach().float().reshape(()) if isinstance(v, torch.Tensor) else float(v)
            self.sums[k] = self.sums[k] + v if k in self.sums else v
            self.counts[k] = self.counts.get(k, 0) + 1

    def means(self) -> dict[str, float]:
        keys = sorted(self.sums)  # the same keys on every rank: what is logged depends only on the step
        if not keys:
            return {}
        device = self.accelerator.device
        local = torch.stack([torch.as_tensor(self.sums[k], dtype=torch.float32, device=device) / self.counts[k]
                             for k in keys])
        if self.accelerator.num_processes > 1:
            local = self.accelerator.reduce(local, reduction="mean")
        self.sums, self.counts = {}, {}
        return dict(zip(keys, local.tolist()))


# ----------------------------------------------------------------------------------------------------------------
# Metrics: an append-only JSON-lines log in the state folder (survives kills), exported as CSV at the end


class MetricsLog:
    """Rows of {step, ...} appended to `{run_dir}/metrics.jsonl`, mirrored to accelerate's trackers.

    On resume, rows past the resumed step are dropped: those steps are recomputed, and the export must not list
    a step twice.
    """

    def __init__(self, run_dir: str | os.PathLike, accelerator, resume_step: int = 0):
        self.path = Path(run_dir) / METRICS
        self.accelerator = accelerator
        if accelerator.is_main_process:
            clean_stale(self.path)  # the temporary of a rewrite that a kill interrupted
        if accelerator.is_main_process and self.path.exists():
            kept = [r for r in self.rows() if r.get("step", 0) <= resume_step]
            write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def rows(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        rows = []
        for line in self.path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut by a kill; everything after it is gone anyway
        return rows

    def log(self, step: int, values: dict[str, float]) -> None:
        values = {k: float(v) for k, v in values.items()}
        self.accelerator.log(values, step=step)
        if self.accelerator.is_main_process:
            with self.path.open("a") as f:
                f.write(json.dumps({"step": step, **values}) + "\n")

    def to_csv(self, path: str | os.PathLike) -> Path:
        import pandas as pd

        df = pd.DataFrame(self.rows())
        if df.empty:
            df = pd.DataFrame({"step": []})
        return atomic_file(path, lambda p: df.to_csv(p, index=False))


class Throughput:
    """Samples per second over the interval since the last `rate()` call (what the progress bar and CSV show)."""

    def __init__(self):
        self.t0, self.n = time.perf_counter(), 0

    def add(self, n: int) -> None:
        self.n += n

    def rate(self) -> float:
        t = time.perf_counter()
        r = self.n / max(t - self.t0, 1e-9)
        self.t0, self.n = t, 0
        return r


# ----------------------------------------------------------------------------------------------------------------
# A run: the skeleton both loops share


class Run:
    """One invocation of a training loop: what the VQGAN and transformer loops share, as named steps.

        run = Run(run_dir, tc, out, OUTPUTS)         # the accelerator; an unwritable --out fails now
        ... seed, build and accelerator.prepare the models (each loop its own) ...
        run.resume("vqgan", config)                  # the newest checkpoint, the metrics log, the trackers
        sampler = run.batch_sampler(n)               # data order from the resumed step on
        for step in run.steps("vqgan"):              # progress bar, meters, NaN guard, the last good state
            ... set the LR, the micro-steps (run.add) ...
            if run.due(step + 1, tc.log_every):
                means, rate = run.interval_means()   # the one host sync, at log steps only
                run.metrics.log(step + 1, ...)
            run.checkpoint(step + 1, {...})          # at checkpoint steps, never after a non-finite loss
        if run.accelerator.is_main_process:
            run.export(model, {...})                 # metrics.csv, train.json, the model last; old state pruned

    What differs stays in the loops: the models and optimizers, a micro-step, what is logged and exported.
    """

    def __init__(self, run_dir: Path, tc: LoopConfig, out: str | os.PathLike, outputs: tuple[str, ...]):
        self.run_dir, self.tc, self.out = Path(run_dir), tc, Path(out)
        self.accelerator, self.per_device, self.precision = make_accelerator(self.run_dir, tc)
        self.world, self.rank = self.accelerator.num_processes, self.accelerator.process_index
        if self.accelerator.is_main_process:
            for name in outputs:
                prepare_output(self.out / name)  # an unwritable --out fails now, not after training

    def resume(self, tracker: str, config: dict[str, Any], fresh: str = "") -> int:
        """Load the newest checkpoint into the prepared objects (step 0 without one) and say which, record the
        config beside the state, open the metrics log and the trackers: -> the first step to run."""
        accelerator = self.accelerator
        self.ckpts = CheckpointManager(self.run_dir, keep=self.tc.keep_checkpoints)
        resumed = self.ckpts.resume(accelerator)
        self.start = resumed.step
        self.wall_before = float(resumed.extra.get("wall_time_s", 0.0))  # time spent by the invocations before this
        # A run resumed on another machine continues in what `auto` gives there (weights and optimizer state are
        # fp32 under autocast either way; a CPU made to emulate bf16 would train at half speed): the steps each
        # precision ran are recorded as [first step, precision] pairs, carried from checkpoint to checkpoint.
        self.precision_by_step = [list(p) for p in resumed.extra.get("precision_by_step", [])]
        if not self.precision_by_step or self.precision_by_step[-1][1] != self.precision:
            self.precision_by_step.append([self.start, self.precision])
        if resumed.path is not None:
            accelerator.print(f"resumed from step {self.start} ({resumed.path})", flush=True)
        else:
            accelerator.print(f"starting fresh in {self.run_dir}{fresh}", flush=True)
        if accelerator.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.run_dir / "config.json", config)
        accelerator.init_trackers(tracker)
        self.metrics = MetricsLog(self.run_dir, accelerator, resume_step=self.start)
        return self.start

    def batch_sampler(self, n: int) -> StepBatchSampler:
        """This rank's batches of indices into `n` samples, from the first micro-step this invocation runs."""
        self.sampler = StepBatchSampler(n, self.per_device, self.rank, self.world, self.tc.seed,
                                        start=self.start * self.tc.grad_accum)
        return self.sampler

    def steps(self, desc: str) -> Iterator[int]:
        """The optimizer steps left to do, under a progress bar."""
        # No host sync inside a step: losses and stats stay on the device until a log step (IntervalMeans), the
        # NaN/inf check reads its flag at log and checkpoint steps only (FiniteGuard).
        accelerator = self.accelerator
        self.t_start, self.meter = time.perf_counter(), Throughput()
        self.interval, self.guard = IntervalMeans(accelerator), FiniteGuard(accelerator)
        self.bar = progress_bar(total=self.tc.steps, initial=self.start, desc=desc,
                                disable=not accelerator.is_local_main_process, dynamic_ncols=True, file=sys.stderr)
        self.step = self.start
        main_thread = threading.current_thread() is threading.main_thread()  # only it may set a handler
        before = signal.signal(signal.SIGTERM, self._terminated) if main_thread else None
        try:
            for step in range(self.start, self.tc.steps):
                self.step = step
                yield step
        finally:
            if main_thread:
                signal.signal(signal.SIGTERM, before if before is not None else signal.SIG_DFL)
        self.bar.close()

    def _terminated(self, signum: int, frame) -> None:
        """SIGTERM (a cluster's time limit, scancel, Snakemake stopping): say so, and how to go on, in the log; the
        exit unwinds through the atomic writers, so no half-written checkpoint or output looks complete."""
        where = self.ckpts.latest() or "none was written yet, so it starts afresh"  # saved since the step began?
        print(f"\nterminated by {signal.Signals(signum).name} during step {self.step + 1} of {self.tc.steps} (rank "
              f"{self.rank}); rerunning the same command resumes from the newest checkpoint ({where})",
              file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)

    def add(self, values: dict[str, torch.Tensor | float], samples: int) -> None:
        """Count a micro-step: its logged values (kept on the device) and the samples all ranks processed."""
        self.interval.add(values)
        self.meter.add(samples)

    def due(self, done: int, every: int) -> bool:
        """Whether the step that brought the count to `done` is one of every `every`, or the last."""
        return done % every == 0 or done == self.tc.steps

    def interval_means(self) -> tuple[dict[str, float], float]:
        """At a log step: stop if any rank saw a non-finite loss, else -> (the interval's means over all ranks,
        i.e. over the global batch; its throughput per second)."""
        self.guard.check(self.last_good())
        return self.interval.means(), self.meter.rate()

    def last_good(self) -> Path | None:
        """The newest checkpoint, what a non-finite loss is reported against: looked up when a check needs it, not
        at every step (a directory listing per step on a cluster's shared file system)."""
        return self.ckpts.latest()

    def wall_time(self) -> float:
        """Seconds trained so far, summed over this invocation and the ones it resumed."""
        return self.wall_before + time.perf_counter() - self.t_start

    def checkpoint(self, done: int, extra: dict[str, Any]) -> None:
        """At checkpoint steps and the last: save the state (every rank), with `extra`, the epoch and the wall time."""
        if not self.due(done, self.tc.checkpoint_every):
            return
        self.guard.check(self.last_good())  # never save a state after a non-finite step
        self.ckpts.save(self.accelerator, done, {**extra, "epoch": self.sampler.epoch_of(done * self.tc.grad_accum),
                                                 "wall_time_s": self.wall_time(),
                                                 "precision_by_step": self.precision_by_step})

    def export(self, model: torch.nn.Module, summary: dict[str, Any], files: dict[str, Any] | None = None,
               note: str = "", earlier: str = "config or dataset") -> None:
        """Rank 0, once training is done: `metrics.csv`, the loop's own JSON `files`, `train.json` (what every run
        records plus the loop's `summary`), then the model; then remove the state of earlier configs."""
        out, accelerator = self.out, self.accelerator
        out.mkdir(parents=True, exist_ok=True)
        self.metrics.to_csv(out / "metrics.csv")
        for name, data in (files or {}).items():
            write_json_atomic(out / name, data)
        this_run = time.perf_counter() - self.t_start
        write_json_atomic(out / "train.json", {
            "steps": self.tc.steps,
            "resumed_from_step": self.start,
            "wall_time_s": self.wall_before + this_run,   # summed over resumed invocations
            "wall_time_this_run_s": this_run,
            "world_size": self.world,
            "device": str(accelerator.device),
            "per_device_batch": self.per_device,
            "global_batch": self.tc.batch_size,
            "precision": self.precision,                   # what this invocation's steps ran in (auto resolved)
            "precision_by_step": self.precision_by_step,   # [first step, precision] of each precision used
            "state": str(self.run_dir),
            "train_config": asdict(self.tc),
            **summary,
        })
        # model.safetensors + config.json last, each renamed into place: the rule's outputs appear complete or not
        save_model(model, out)
        accelerator.print(f"wrote {out / WEIGHTS} after {self.tc.steps} steps{note}", flush=True)
        for old in prune_state_dirs(self.run_dir.parent, keep=self.run_dir):
            accelerator.print(f"removed {old}: the state of an earlier {earlier}", flush=True)
