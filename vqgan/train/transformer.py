"""Train the GPT over VQGAN codes with Accelerate: one code path for 1 CPU core, N gloo processes, or N GPUs.

    python -m vqgan.train.transformer --config CONFIG --codes results/codes/{ds}/{variant} \
        --out results/transformer/{ds}/{variant} \
        --state-dir results/transformer/{ds}/{variant}/state
    python -m vqgan.train.launch --num-processes 2 -- -m vqgan.train.transformer ...        # DDP (gloo on CPU)

`--config` is the whole `transformer` section: {model: {n_layer, n_head, n_embd, dropout, bias}, train: {...}}.
The vocabulary, number of classes and sequence length come from the codes folder (`codes.json`), not the config.

The loop is `vqgan.train.vqgan`'s (the diffusers idiom), and everything the two share -- state folders keyed by config
hash, resume from the newest complete checkpoint, data order and LR as pure functions of the step, NaN guard,
metrics log -- comes from `vqgan.train.loop`. Specific to this stage:

- **pkeep** (the paper's token corruption): each *input* code is replaced by a uniformly random code with
  probability 1 - pkeep; the targets stay clean, so the model learns to predict through noisy context, which
  is what it sees at sampling time once its own samples drift.
- **p_uncond**: each sequence's class is replaced by the unconditional token with this probability, so one model
  also samples without a class (the unconditional fallback). Both draws are pure functions of (seed, micro-step)
  like the data order, so a resumed run replays exactly the batches of an uninterrupted one.
- Losses are reported in nats per code and as **bits per token** (nats / ln 2); val loss is over the whole val
  split, conditioned on the true labels, every `eval_every` steps and at the end (`{out}/train.json`).

Outputs: `{out}/model.safetensors` + `config.json` (GPTConfig), `codes.json` (grid, classes: what the sampler
needs), `metrics.csv`, `train.json`.
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vqgan.config.build import gpt_config as build_gpt_config
from vqgan.data.codes import load_codes
from vqgan.data.dataset import data_identity
from vqgan.io.checkpoint import CONFIG, WEIGHTS
from vqgan.io.cli import command, load_config_arg
from vqgan.io.files import refuse_overlap
from vqgan.io.hashing import config_hash, sha256_bytes
from vqgan.models.gpt import GPT, GPTConfig
from vqgan.train.config import TransformerTrainConfig as TrainConfig
from vqgan.train.config import check_batch
from vqgan.train.loop import (
    NonFiniteLossError,
    Run,
    StepBatchSampler,
    lr_at,
    seed_everything,
    seed_rank,
    set_lr,
    to_device,
)

LN2 = math.log(2.0)
MODEL_KEYS = ("n_layer", "n_head", "n_embd", "dropout", "bias")
OUTPUTS = ("metrics.csv", "codes.json", "train.json", WEIGHTS, CONFIG)  # what --out receives, in writing order


# Keys that do not change what is learned: editing them must not throw away a run's state (as in the VQGAN loop).
NOT_IN_STATE_KEY = ("checkpoint_every", "keep_checkpoints", "log_every", "eval_every")


def state_key(model_section: dict[str, Any], tc: TrainConfig) -> dict[str, Any]:
    """The part of the config that names a run's state folder: the model and every train key that shapes the
    weights. The number of processes is not in it: the global batch sequence is the same on any world size.
    `precision` is in it as the config wrote it (`auto`), never resolved: a run resumes on another machine too."""
    return {"model": model_section, "train": {k: v for k, v in asdict(tc).items() if k not in NOT_IN_STATE_KEY}}


def split_config(cfg: dict[str, Any]) -> tuple[dict[str, Any], TrainConfig]:
    unknown = sorted(set(cfg) - {"model", "train"})
    if unknown:
        raise ValueError(f"unknown transformer sections {unknown}; expected 'model' and 'train'")
    model = dict(cfg.get("model") or {})
    bad = sorted(set(model) - set(MODEL_KEYS))
    if bad:
        raise ValueError(f"unknown transformer.model keys {bad}; known: {list(MODEL_KEYS)}")
    return model, TrainConfig.from_dict(cfg.get("train"))


def gpt_config(model_section: dict[str, Any], codes_meta: dict[str, Any]) -> GPTConfig:
    """The model's shape: width/depth from the config, vocabulary/classes/length from the codes."""
    h, w = codes_meta["grid"]
    try:
        return build_gpt_config(int(codes_meta["n_codes"]), int(codes_meta["n_classes"]), int(h) * int(w),
                                model_section)
    except TypeError as e:  # a value of the wrong type, e.g. n_layer: "2"
        raise ValueError(f"invalid transformer.model config {model_section}: {e}") from None


def corrupt(codes: torch.Tensor, pkeep: float, vocab_size: int, rng: np.random.Generator, rows: slice,
            n_global: int) -> torch.Tensor:
    """Replace each code by a uniform random one with probability 1 - pkeep (the paper's pkeep).

    The draws cover the whole global micro-batch (`n_global` sequences) and each rank keeps its `rows`, so a
    sequence gets the same corruption whatever the number of processes.
    """
    if pkeep >= 1.0:
        return codes
    shape = (n_global, codes.shape[1])
    keep = to_device(rng.random(shape)[rows] < pkeep, codes.device)
    noise = to_device(rng.integers(0, vocab_size, shape)[rows], codes.device)
    return torch.where(keep, codes, noise)


def build_model(gcfg: GPTConfig, tc: TrainConfig, device: torch.device) -> tuple[GPT, torch.optim.Optimizer]:
    """The GPT on `device`, then its AdamW over the parameters already there.

    The order matters on GPUs: configure_optimizers asks for fused AdamW on CUDA, and torch 2.2-2.3 refuse to
    build a fused optimizer over parameters that are still on the CPU (`accelerator.prepare` would move them only
    later).
    """
    model = GPT(gcfg).to(device)
    return model, model.configure_optimizers(tc.weight_decay, tc.lr, tc.betas, torch.device(device).type)


@torch.no_grad()
def evaluate(model: GPT, codes: torch.Tensor, labels: torch.Tensor, batch_size: int, autocast,
             accelerator=None) -> float:
    """Mean cross-entropy (nats per code) over a whole split, conditioned on the true labels.

    With an `accelerator` every rank scores its own share of the split (rows rank, rank + world, ...) and the
    sums are all-reduced: every rank returns the loss over the whole split, in 1/world of the time.
    """
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    was_training = model.training
    model.eval()
    codes, labels = codes[rank::world], labels[rank::world]
    sums = torch.zeros(2, dtype=torch.float64, device=codes.device)  # (summed loss, tokens), on the device
    for lo in range(0, len(codes), batch_size):
        x, y = codes[lo : lo + batch_size], labels[lo : lo + batch_size]
        with autocast():
            _, loss = model(x[:, :-1], y, targets=x)
        sums[0] += loss.double() * x.numel()
        sums[1] += x.numel()
    model.train(was_training)
    if world > 1:
        sums = accelerator.reduce(sums, reduction="sum")
    total, n = sums.tolist()
    return total / max(n, 1)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m vqgan.train.transformer",
        description="Train the transformer over VQGAN codes (resumes from the newest state in --state-dir).",
    )
    p.add_argument("--config", required=True, help="the transformer section: inline JSON or a YAML/JSON file")
    p.add_argument("--codes", required=True, help="codes folder written by vqgan.encode (results/codes/{ds}/{variant})")
    p.add_argument("--out", required=True,
                   help="output folder: model.safetensors, config.json, metrics.csv, train.json")
    p.add_argument("--state-dir", required=True,
                   help="resumable state (not a declared output): results/transformer/{ds}/{variant}/state; each "
                        "run keeps its own <hash of config and codes>/ folder inside")
    return p.parse_args(argv)


@command
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    refuse_overlap({"--out": args.out, "--state-dir": args.state_dir}, {"--codes": args.codes, "--config": args.config})
    model_section, tc = split_config(load_config_arg(args.config))
    train_codes, train_labels, meta = load_codes(args.codes, "train")
    val_codes, val_labels, _ = load_codes(args.codes, "val")
    gcfg = gpt_config(model_section, meta)
    # before the state folder, the model or any output are touched
    check_batch(tc, len(train_codes), f"train sequences of {args.codes}")
    try:
        return train(args, model_section, tc, gcfg, meta, (train_codes, train_labels), (val_codes, val_labels))
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 3


def on_device(data: tuple[np.ndarray, np.ndarray], device) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, h, w) codes -> (N, T) in raster order (the order the sampler generates in), and their labels, on the
    device: small enough to sit there (118k COCO grids of 16x16 codes: 240 MB), so a step copies only indices."""
    codes, labels = data
    return (torch.from_numpy(codes.reshape(len(codes), -1).astype(np.int64)).to(device),
            torch.from_numpy(labels.astype(np.int64)).to(device))


def prepare_gpt(run: Run, gcfg: GPTConfig, tc: TrainConfig):
    """The same initial weights on every rank, then each rank's own dropout; accelerate wraps model and optimizer:
    -> (model, optimizer, the unwrapped GPT)."""
    seed_everything(tc.seed)  # the same initial weights on every rank
    model, opt = build_model(gcfg, tc, run.accelerator.device)
    seed_rank(tc.seed, run.rank)  # dropout differs between ranks from here on; data order does not (see seed_rank)
    model, opt = run.accelerator.prepare(model, opt)
    return model, opt, run.accelerator.unwrap_model(model)


def micro_batch(codes, labels, sampler: StepBatchSampler, micro: int, tc: TrainConfig, vocab_size: int, rows: slice,
                n_global: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A micro-step's (corrupted inputs, labels with some dropped to unconditional, clean targets), all drawn as
    pure functions of (seed, micro-step)."""
    device = codes.device
    idx = to_device(sampler.indices(micro), device)
    x, y = codes[idx], labels[idx]
    if tc.p_uncond > 0:
        drop = to_device(sampler.coin(micro, salt=3, p=tc.p_uncond), device)
        y = torch.where(drop, torch.full_like(y, -1), y)
    rng = np.random.default_rng([tc.seed, 2, micro])
    return corrupt(x, tc.pkeep, vocab_size, rng, rows, n_global), y, x


def gpt_step(run: Run, model, opt, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], step: int,
             tc: TrainConfig) -> torch.Tensor:
    """One micro-step on (corrupted inputs, labels, clean targets), the optimizer stepping once the accumulation
    is complete: -> the loss (left on the device)."""
    accelerator, (inputs, y, x) = run.accelerator, batch
    with accelerator.accumulate(model):
        with accelerator.autocast():
            _, loss = model(inputs[:, :-1], y, targets=x)
        run.guard.watch(step, loss=loss)
        accelerator.backward(loss)
        if accelerator.sync_gradients and tc.grad_clip:
            accelerator.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return loss


def train(args, model_section, tc: TrainConfig, gcfg: GPTConfig, meta, train_data, val_data) -> int:
    # A changed config or changed codes get a fresh state folder; the same ones resume (how often it logs, evaluates
    # and checkpoints is left out: state_key). The codes themselves are hashed: a VQGAN retrained with another
    # config writes the same codes.json, and its new codes must not resume (or, finished, silently re-export) a
    # transformer trained on the old ones.
    codes_sha = sha256_bytes(np.ascontiguousarray(train_data[0]).tobytes())
    run_dir = Path(args.state_dir) / config_hash(state_key(model_section, tc), data_identity(meta), codes_sha)
    run = Run(run_dir, tc, args.out, OUTPUTS)
    accelerator, device = run.accelerator, run.accelerator.device
    (codes, labels), (val_codes, val_labels) = on_device(train_data, device), on_device(val_data, device)
    model, opt, raw_model = prepare_gpt(run, gcfg, tc)
    run.resume("transformer", {"transformer": {"model": model_section, "train": asdict(tc)}, "codes": meta},
               fresh=f": {raw_model.num_params() / 1e6:.2f}M parameters, {len(codes)} train / {len(val_codes)} val "
                     f"sequences of {gcfg.block_size} codes")

    def val_loss_now() -> float:  # every rank scores its share of the val split; all get the whole split's loss
        return evaluate(raw_model, val_codes, val_labels, run.per_device * 4, accelerator.autocast, accelerator)

    sampler = run.batch_sampler(len(codes))
    rows = slice(run.rank * run.per_device, (run.rank + 1) * run.per_device)
    tokens_per_step = run.per_device * run.world * tc.grad_accum * gcfg.block_size
    val_loss = None
    model.train()
    for step in run.steps("transformer"):
        lr = lr_at(step, tc.lr, tc.warmup_steps, tc.steps, tc.lr_schedule, tc.min_lr_ratio)
        set_lr(opt, lr)
        for k in range(tc.grad_accum):
            micro = step * tc.grad_accum + k
            inputs, y, x = micro_batch(codes, labels, sampler, micro, tc, gcfg.vocab_size, rows,
                                       run.per_device * run.world)
            loss = gpt_step(run, model, opt, (inputs, y, x), step, tc)
            run.add({"loss": loss}, x.numel() * run.world)

        done = step + 1
        run.bar.update(1)
        row: dict[str, float] = {}
        if run.due(done, tc.log_every):
            means, rate = run.interval_means()
            row.update(loss=means["loss"], bits_per_token=means["loss"] / LN2, lr=lr, tokens_per_s=rate)
        if run.due(done, tc.eval_every):
            val_loss = val_loss_now()
            row.update(val_loss=val_loss, val_bits_per_token=val_loss / LN2)
        if row:
            run.metrics.log(done, row)
            run.bar.set_postfix({k: f"{row[k]:.3g}" for k in ("loss", "val_loss") if k in row})
        run.checkpoint(done, {"tokens_seen": done * tokens_per_step})

    accelerator.wait_for_everyone()
    if val_loss is None:  # resumed at the very end: the last eval happened in the previous invocation
        val_loss = val_loss_now()
    if accelerator.is_main_process:
        logged = [r for r in run.metrics.rows() if "loss" in r]
        run.export(raw_model, {
            "train_loss": logged[-1]["loss"] if logged else None,
            "train_bits_per_token": logged[-1]["loss"] / LN2 if logged else None,
            "val_loss": val_loss,
            "val_bits_per_token": val_loss / LN2,
            # a model that ignored everything and guessed uniformly would score log2(n_codes)
            "uniform_bits_per_token": math.log2(gcfg.vocab_size),
            "n_params": raw_model.num_params(),
            "tokens_seen": tc.steps * tokens_per_step,
            "model_config": gcfg.to_dict(),
            "codes_precision": meta.get("precision"),  # what the encoder ran in (codes.json)
        }, files={"codes.json": meta}, note=f"; val {val_loss / LN2:.3f} bits/token", earlier="config or codes")
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())
