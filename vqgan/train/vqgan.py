"""Train a VQGAN with Accelerate: one code path for 1 CPU core, N gloo processes, or N GPUs.

    python -m vqgan.train.vqgan --config CONFIG --data results/data/{ds}/train --out results/vqgan/{ds}/{variant} \
        --state-dir results/vqgan/{ds}/{variant}/state [--weights-dir resources/weights]
    python -m vqgan.train.launch --num-processes 2 -- -m vqgan.train.vqgan ...        # DDP (gloo on CPU)

`--config` is the whole `vqgan` section: {model, quantizer, loss, train, eval}. The loop is the diffusers idiom
(accelerate.accumulate, backward, clip on sync, save_state every N steps, resume from the newest state); what it
shares with the transformer loop (state folders, data order, LR, NaN guard, logs, export) is in `vqgan.train.loop`.

Each optimizer step, per micro-batch: the generator (encoder, quantizer, decoder) steps on reconstruction +
perceptual + codebook + adaptive-weighted GAN loss, with D frozen so G's loss leaves no gradient in D; then, from
`loss.disc_start` on, D steps on real images vs. *detached* reconstructions.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vqgan.config.build import loss_config, vqgan_config
from vqgan.data.dataset import data_identity, read_split
from vqgan.data.object_masks import ObjectMasks, crop_windows
from vqgan.io.checkpoint import CONFIG, WEIGHTS, save_model
from vqgan.io.cli import command, load_config_arg
from vqgan.io.files import prepare_output, write_json_atomic
from vqgan.io.hashing import config_hash
from vqgan.io.progress import progress_bar
from vqgan.io.weights import lpips_state_dict
from vqgan.models.losses import NLayerDiscriminator, VQLoss
from vqgan.models.lpips import LPIPS
from vqgan.models.vqgan import VQGAN
from vqgan.train.config import VQGANTrainConfig as TrainConfig
from vqgan.train.config import check_batch
from vqgan.train.loop import (
    CheckpointManager,
    FiniteGuard,
    IntervalMeans,
    MetricsLog,
    NonFiniteLossError,
    StepBatchSampler,
    Throughput,
    lr_at,
    make_accelerator,
    prune_state_dirs,
    seed_everything,
    seed_rank,
    set_lr,
    to_device,
)

OUTPUTS = ("metrics.csv", "train.json", WEIGHTS, CONFIG)  # what --out receives, in the order it is written


SECTIONS = ("model", "quantizer", "loss", "train", "eval")


def split_config(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    unknown = sorted(set(cfg) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown vqgan sections {unknown}; expected some of {list(SECTIONS)}")
    return {k: dict(cfg.get(k) or {}) for k in SECTIONS}


def build_models(cfg: dict[str, dict[str, Any]], resolution: int, weights_dir: str | None):
    """VQGAN + loss (with discriminator and LPIPS) from the config sections; resolution comes from the data."""
    model_cfg = vqgan_config(resolution, cfg)
    loss_cfg = loss_config(cfg["loss"])
    perceptual = None
    if loss_cfg.perceptual_weight > 0:
        # raises VGGWeightsNotFound (with instructions) rather than training without the perceptual term
        perceptual = LPIPS()
        perceptual.load_state_dict(lpips_state_dict(weights_dir))
    return VQGAN(model_cfg), VQLoss(loss_cfg, perceptual)


class ImageBatches(torch.utils.data.Dataset):
    """Batches of uint8 frames straight from the memory map (one fancy-index read per batch, not per image), and,
    with `masks` (loss.object_weight > 0), the (B, H, W) uint8 object masks of the same frames: (images, masks)."""

    def __init__(self, images: np.ndarray, masks: ObjectMasks | None = None):
        self.images, self.masks = images, masks

    def __len__(self) -> int:
        return len(self.images)

    def __getitems__(self, indices: list[int]):
        idx = np.asarray(indices)
        images = torch.from_numpy(np.ascontiguousarray(self.images[idx]))
        return images if self.masks is None else (images, torch.from_numpy(self.masks(idx)))


def _keep(batch):
    return batch


def to_model_input(batch: torch.Tensor, flip: np.ndarray | None, device) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float in [-1, 1], optionally mirrored per image."""
    x = batch.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
    if flip is not None and flip.any():  # a numpy array: no device sync
        m = to_device(flip, device)
        x = torch.where(m[:, None, None, None], x.flip(-1), x)
    return x.contiguous(memory_format=_memory_format(x.device))


def crop_batch(images: torch.Tensor, masks: torch.Tensor | None, corners: np.ndarray, size: int):
    """Cut a `size`-pixel square at each (y, x) corner from (B, H, W, 3) frames and their (B, H, W) masks."""
    def cut(t):
        return torch.stack([t[b, y:y + size, x:x + size] for b, (y, x) in enumerate(corners.tolist())])
    return cut(images), None if masks is None else cut(masks)


def to_mask_input(masks: torch.Tensor, flip: np.ndarray | None, device) -> torch.Tensor:
    """(B, H, W) object masks (uint8, or float weights) -> (B, 1, H, W) float, mirrored like their images."""
    m = masks.to(device, non_blocking=True)[:, None].float()
    if flip is not None and flip.any():
        f = to_device(flip, device)
        m = torch.where(f[:, None, None, None], m.flip(-1), m)
    return m


def _memory_format(device) -> torch.memory_format:
    # channels_last feeds cuDNN's tensor-core convolutions; on CPU it measured slower (bench/vqgan_step.py:
    # bf16 step 1.88 s plain vs 2.27 s channels_last, CPU GroupNorm being the slow part)
    return torch.channels_last if torch.device(device).type == "cuda" else torch.contiguous_format


def _scalars(logs: dict[str, Any], prefix: str = "") -> dict[str, torch.Tensor | float]:
    """The one-number entries of a log dict, left on the device (read at log steps only: IntervalMeans)."""
    out = {}
    for k, v in (logs or {}).items():
        if isinstance(v, torch.Tensor):
            if v.numel() != 1:
                continue
            out[prefix + k] = v.detach()
        elif isinstance(v, (int, float)):
            out[prefix + k] = float(v)
    return out


# Keys that do not change what is learned: editing them must not throw away a run's state.
NOT_IN_STATE_KEY = ("checkpoint_every", "keep_checkpoints", "log_every", "num_workers")


def state_key(sections: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The part of the config that names a run's state folder: everything that shapes the weights.

    Left out: the `eval` section and the bookkeeping keys of `train` above. The number of processes is not a
    config key at all: the global batch sequence is the same on any world size, so a run may resume on another.
    """
    train = {k: v for k, v in sections["train"].items() if k not in NOT_IN_STATE_KEY}
    return {**{k: v for k, v in sections.items() if k not in ("eval", "train")}, "train": train}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m vqgan.train.vqgan",
        description="Train a VQGAN (resumes from the newest state in --state-dir automatically).",
    )
    p.add_argument("--config", required=True, help="the vqgan section: inline JSON or a YAML/JSON file")
    p.add_argument("--data", required=True, help="training split folder (results/data/{ds}/train)")
    p.add_argument("--out", required=True,
                   help="output folder: model.safetensors, config.json, metrics.csv, train.json")
    p.add_argument("--state-dir", required=True,
                   help="resumable state (not a declared output): results/vqgan/{ds}/{variant}/state; each run "
                        "keeps its own <hash of config and data>/ folder inside")
    p.add_argument("--weights-dir", default=None, help="folder with LPIPS/VGG16 weights (resources/weights)")
    return p.parse_args(argv)


def object_masks(split, loss_section: dict[str, Any], tc: TrainConfig) -> ObjectMasks | None:
    """The split's object masks when loss.object_weight > 0 or train.object_crops > 0 (ValueError naming the
    folder without objects.csv)."""
    cfg = loss_config(loss_section)
    if cfg.object_weight <= 0 and tc.object_crops <= 0:
        return None
    return ObjectMasks.from_split(split, cfg.object_ignore, balance=cfg.object_balance,
                                  class_balance=cfg.object_class_balance)


def check_crop(tc: TrainConfig, sections: dict[str, dict[str, Any]], resolution: int) -> None:
    """ValueError naming vqgan.train.crop when crops do not fit the data, the token grid, the discriminator (once
    the GAN runs) or the batch-neighbour foreground weight."""
    if not tc.crop:
        return
    f = vqgan_config(resolution, sections).downsample
    if tc.crop > resolution or tc.crop % f:
        raise ValueError(f"vqgan.train.crop={tc.crop}: must be at most the data's resolution ({resolution} px) and a "
                         f"multiple of the model's downsampling factor f = {f} (whole tokens); e.g. "
                         f"{max(f, resolution // 2 // f * f)}, or 0 for whole frames")
    loss = loss_config(sections["loss"])
    smallest = NLayerDiscriminator.min_input(loss.disc_layers)
    if tc.crop < smallest and loss.disc_start < tc.steps and loss.disc_weight > 0:
        raise ValueError(f"vqgan.train.crop={tc.crop} is smaller than the discriminator's smallest input "
                         f"({smallest} px for loss.disc_layers={loss.disc_layers}), and the GAN starts at "
                         f"loss.disc_start={loss.disc_start} < train.steps={tc.steps}; crop >= {smallest}, "
                         "fewer disc_layers, or no GAN (disc_start >= steps)")
    if loss.foreground_weight > 0:
        raise ValueError(f"vqgan.train.crop={tc.crop} with vqgan.loss.foreground_weight > 0: the foreground mask "
                         "compares each image with the median of its batch neighbours, which crops from different "
                         "places of the frame do not share; set foreground_weight: 0 (use loss.object_weight, "
                         "from the exact object boxes) or crop: 0")


@command
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sections = split_config(load_config_arg(args.config))
    tc = TrainConfig.from_dict(sections["train"])
    split = read_split(args.data)
    check_batch(tc, len(split), f"images of {args.data}")  # before the state folder, models or outputs are touched
    check_crop(tc, sections, split.resolution)
    masks = object_masks(split, sections["loss"], tc)  # no objects.csv when needed: fail before anything is touched
    try:
        return train(args, sections, tc, split, masks)
    except NonFiniteLossError as e:
        print(f"\nerror: {e}", file=sys.stderr, flush=True)
        return 3


def train(args, sections, tc: TrainConfig, split, masks: ObjectMasks | None) -> int:
    # A changed config or dataset gets a fresh state folder; the same one resumes (timings and timestamps in the
    # manifest are left out: re-collecting identical data must not restart training).
    run_dir = Path(args.state_dir) / config_hash(state_key(sections), data_identity(split.manifest))
    accelerator, per_device = make_accelerator(run_dir, tc)
    world, rank = accelerator.num_processes, accelerator.process_index
    if accelerator.is_main_process:
        for name in OUTPUTS:
            prepare_output(Path(args.out) / name)  # an unwritable --out fails now, not after training

    seed_everything(tc.seed)  # the same initial weights on every rank
    model, loss = build_models(sections, split.resolution, args.weights_dir)
    seed_rank(tc.seed, rank)  # from here on each rank draws its own noise
    # on the device before the optimizers are built over its parameters (see transformer.build_model)
    model = model.to(accelerator.device, memory_format=_memory_format(accelerator.device))
    loss = loss.to(accelerator.device)
    opt_g = torch.optim.Adam(model.parameters(), lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay)
    opt_d = torch.optim.Adam(loss.discriminator.parameters(), lr=tc.disc_lr or tc.lr, betas=tc.betas,
                             weight_decay=tc.weight_decay)
    # Both G and D go through DDP (D inside the loss module, which calls it); save_state checkpoints both.
    model, loss.discriminator, opt_g, opt_d = accelerator.prepare(model, loss.discriminator, opt_g, opt_d)
    raw_model = accelerator.unwrap_model(model)
    disc = accelerator.unwrap_model(loss.discriminator)

    ckpts = CheckpointManager(run_dir, keep=tc.keep_checkpoints)
    resumed = ckpts.resume(accelerator)
    start = resumed.step
    wall_before = float(resumed.extra.get("wall_time_s", 0.0))  # time spent by the invocations before this one
    if resumed.path is not None:
        accelerator.print(f"resumed from step {start} ({resumed.path})", flush=True)
    else:
        accelerator.print(f"starting fresh in {run_dir}", flush=True)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_dir / "config.json", {"vqgan": sections, "data": split.manifest})
    accelerator.init_trackers("vqgan")
    metrics = MetricsLog(run_dir, accelerator, resume_step=start)

    sampler = StepBatchSampler(len(split), per_device, rank, world, tc.seed, start=start * tc.grad_accum)
    weight_objects = loss.cfg.object_weight > 0
    loader = torch.utils.data.DataLoader(ImageBatches(split.images, masks), batch_sampler=sampler, collate_fn=_keep,
                                         num_workers=tc.num_workers, persistent_workers=tc.num_workers > 0,
                                         pin_memory=accelerator.device.type == "cuda")  # async host-to-GPU copies
    batches = iter(loader)
    images_per_step = per_device * world * tc.grad_accum
    # No host sync inside a step: losses and stats stay on the device until a log step (IntervalMeans), the
    # NaN/inf check reads its flag at log and checkpoint steps only (FiniteGuard).
    t_start, meter, interval, guard = time.perf_counter(), Throughput(), IntervalMeans(accelerator), FiniteGuard(
        accelerator)
    bar = progress_bar(total=tc.steps, initial=start, desc="vqgan", disable=not accelerator.is_local_main_process,
               dynamic_ncols=True, file=sys.stderr)
    model.train()
    disc.train()
    for step in range(start, tc.steps):
        lr_g = lr_at(step, tc.lr, tc.warmup_steps, tc.steps, tc.lr_schedule, tc.min_lr_ratio)
        lr_d = lr_at(step, tc.disc_lr or tc.lr, tc.warmup_steps, tc.steps, tc.lr_schedule, tc.min_lr_ratio)
        set_lr(opt_g, lr_g)
        set_lr(opt_d, lr_d)
        last_good = ckpts.latest()
        for k in range(tc.grad_accum):
            micro = step * tc.grad_accum + k
            flip = sampler.coin(micro, salt=1) if tc.augment == "hflip" else None
            batch, objects = next(batches), None
            if masks is not None:
                batch, objects = batch
            if tc.crop:
                boxes = [masks.boxes_of(i) for i in sampler.indices(micro)] if masks is not None else \
                    [()] * batch.shape[0]
                corners = crop_windows(boxes, split.resolution, tc.crop, tc.object_crops,
                                       sampler.uniforms(micro, salt=2, k=4))
                batch, objects = crop_batch(batch, objects, corners, tc.crop)
            objects = to_mask_input(objects, flip, accelerator.device) if weight_objects else None
            x = to_model_input(batch, flip, accelerator.device)
            row: dict[str, torch.Tensor | float] = {}
            with accelerator.accumulate(model, loss.discriminator):
                # --- generator. D is frozen and its DDP wrapper told not to expect gradients: the adversarial
                # term must move G only (otherwise G's loss would leave gradients in D for opt_d to apply).
                disc.requires_grad_(False)
                with accelerator.autocast(), accelerator.no_sync(loss.discriminator):
                    xrec, qloss, stats = model(x)
                    g_loss, g_logs = loss.generator_loss(x, xrec, qloss, step, last_layer=raw_model.last_layer,
                                                          objects=objects)
                disc.requires_grad_(True)
                guard.watch(step, g_loss=g_loss)
                accelerator.backward(g_loss)
                if accelerator.sync_gradients and tc.grad_clip:
                    accelerator.clip_grad_norm_(model.parameters(), tc.grad_clip)
                opt_g.step()
                opt_g.zero_grad(set_to_none=True)
                row.update(_scalars(g_logs), usage=stats["usage"].detach(), perplexity=stats["perplexity"].detach())

                # --- discriminator on real vs. detached reconstructions, only once it has started
                if loss.disc_active(step):
                    with accelerator.autocast():
                        d_loss, d_logs = loss.discriminator_loss(x, xrec.detach(), step)
                    guard.watch(step, d_loss=d_loss)
                    accelerator.backward(d_loss)
                    if accelerator.sync_gradients and tc.grad_clip:
                        accelerator.clip_grad_norm_(loss.discriminator.parameters(), tc.grad_clip)
                    opt_d.step()
                    opt_d.zero_grad(set_to_none=True)
                    row.update(_scalars(d_logs))
            interval.add(row)
            meter.add(x.shape[0] * world)

        done = step + 1
        bar.update(1)
        save = done % tc.checkpoint_every == 0 or done == tc.steps
        if done % tc.log_every == 0 or done == tc.steps:
            guard.check(last_good)
            means = interval.means()  # averaged over the interval and over all ranks: the global batch
            rate = meter.rate()
            metrics.log(done, {**means, "lr": lr_g, "disc_lr": lr_d, "images_per_s": rate})
            bar.set_postfix({k: f"{means[k]:.3g}" for k in ("g_loss", "rec", "usage") if k in means}
                            | {"img/s": f"{rate:.1f}"})
        if save:
            guard.check(last_good)  # never save a state after a non-finite step
            ckpts.save(accelerator, done, {"images_seen": done * images_per_step,
                                           "epoch": sampler.epoch_of(done * tc.grad_accum),
                                           "wall_time_s": wall_before + time.perf_counter() - t_start})
    bar.close()

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        metrics.to_csv(out / "metrics.csv")
        write_json_atomic(out / "train.json", {
            "steps": tc.steps,
            "resumed_from_step": start,
            "wall_time_s": wall_before + time.perf_counter() - t_start,   # summed over resumed invocations
            "wall_time_this_run_s": time.perf_counter() - t_start,
            "world_size": world,
            "device": str(accelerator.device),
            "per_device_batch": per_device,
            "global_batch": tc.batch_size,
            "images_seen": tc.steps * images_per_step,
            "mixed_precision": tc.mixed_precision,
            "state": str(run_dir),
            "train_config": asdict(tc),
        })
        # model.safetensors + config.json last, each renamed into place: the rule's outputs appear complete or not
        save_model(raw_model, out)
        accelerator.print(f"wrote {out / 'model.safetensors'} after {tc.steps} steps", flush=True)
        for old in prune_state_dirs(args.state_dir, keep=run_dir):
            accelerator.print(f"removed {old}: the state of an earlier config or dataset", flush=True)
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())
