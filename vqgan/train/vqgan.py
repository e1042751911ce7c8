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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vqgan.config.build import loss_config, vqgan_config, vqgan_training
from vqgan.data.dataset import data_identity, read_split
from vqgan.data.object_masks import ObjectMasks, crop_windows
from vqgan.io.checkpoint import CONFIG, WEIGHTS
from vqgan.io.cli import command, load_config_arg
from vqgan.io.files import refuse_overlap
from vqgan.io.hashing import config_hash
from vqgan.io.weights import lpips_state_dict
from vqgan.models.losses import VQLoss
from vqgan.models.lpips import LPIPS
from vqgan.models.vqgan import VQGAN
from vqgan.train.config import VQGANTrainConfig as TrainConfig
from vqgan.train.config import check_batch
from vqgan.train.loop import (
    NonFiniteLossError,
    Run,
    StepBatchSampler,
    loader_workers,
    lr_at,
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

    def __getstate__(self):
        # a loader worker started by spawn/forkserver (Python 3.14's default) gets the memory map's file name, not
        # a pickled copy of every frame (tens of GB for COCO)
        state = dict(self.__dict__)
        name = getattr(self.images, "filename", None)
        if name and str(name).endswith(".npy") and np.load(name, mmap_mode="r").shape == self.images.shape:
            state["images"] = str(name)
        return state

    def __setstate__(self, state):
        if isinstance(state["images"], str):
            state["images"] = np.load(state["images"], mmap_mode="r")
        self.__dict__.update(state)

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


# The activations' layout per device type: NCHW everywhere until a GPU run decides. On CPU channels_last measured
# slower (bench/vqgan_step.py; CPU GroupNorm is the slow part); on CUDA it may feed cuDNN's tensor cores better or
# not: bench/gpu_smoke.py times one step each way (and cudnn.benchmark, left at PyTorch's default, off).
MEMORY_FORMAT = {"cpu": torch.contiguous_format, "cuda": torch.contiguous_format}


def _memory_format(device) -> torch.memory_format:
    return MEMORY_FORMAT.get(torch.device(device).type, torch.contiguous_format)


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
    `precision` is in it as the config wrote it (`auto`), never resolved: a run resumes on another machine too.
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


@command
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    refuse_overlap({"--out": args.out, "--state-dir": args.state_dir},
                   {"--data": args.data, "--config": args.config, "--weights-dir": args.weights_dir})
    sections = split_config(load_config_arg(args.config))
    tc = TrainConfig.from_dict(sections["train"])
    split = read_split(args.data)
    check_batch(tc, len(split), f"images of {args.data}")  # before the state folder, models or outputs are touched
    vqgan_training(sections, split.resolution)  # crops, discriminator, attention: the config check's rules
    masks = object_masks(split, sections["loss"], tc)  # no objects.csv when needed: fail before anything is touched
    try:
        return train(args, sections, tc, split, masks)
    except NonFiniteLossError as e:
        print(f"\nerror: {e}", file=sys.stderr, flush=True)
        return 3


@dataclass
class GAN:
    """The prepared models and optimizers: G and the loss module (D inside it) as DDP wraps them, and unwrapped."""

    model: torch.nn.Module
    loss: VQLoss
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    raw_model: VQGAN
    disc: torch.nn.Module


def prepare_gan(run: Run, sections, tc: TrainConfig, resolution: int, weights_dir: str | None) -> GAN:
    """Build G and the loss with the same weights on every rank, then give each rank its own noise, move them to
    the device and build their optimizers there, and let accelerate wrap all four."""
    accelerator = run.accelerator
    seed_everything(tc.seed)  # the same initial weights on every rank
    model, loss = build_models(sections, resolution, weights_dir)
    seed_rank(tc.seed, run.rank)  # from here on each rank draws its own noise
    # on the device before the optimizers are built over its parameters (see transformer.build_model)
    model = model.to(accelerator.device, memory_format=_memory_format(accelerator.device))
    loss = loss.to(accelerator.device)
    opt_g = torch.optim.Adam(model.parameters(), lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay)
    opt_d = torch.optim.Adam(loss.discriminator.parameters(), lr=tc.disc_lr or tc.lr, betas=tc.betas,
                             weight_decay=tc.weight_decay)
    # Both G and D go through DDP (D inside the loss module, which calls it); save_state checkpoints both.
    model, loss.discriminator, opt_g, opt_d = accelerator.prepare(model, loss.discriminator, opt_g, opt_d)
    return GAN(model, loss, opt_g, opt_d, accelerator.unwrap_model(model),
               accelerator.unwrap_model(loss.discriminator))


def image_loader(split, masks: ObjectMasks | None, sampler: StepBatchSampler, tc: TrainConfig, device):
    """Batches in the sampler's order straight from the memory map, in `num_workers` processes (`auto`: some on
    CUDA, none on the CPU); pinned on CUDA, for copies that do not wait."""
    workers = loader_workers(tc.num_workers, device)
    return torch.utils.data.DataLoader(ImageBatches(split.images, masks), batch_sampler=sampler, collate_fn=_keep,
                                       num_workers=workers, persistent_workers=workers > 0,
                                       pin_memory=torch.device(device).type == "cuda")


def next_batch(batches, sampler: StepBatchSampler, micro: int, masks: ObjectMasks | None, tc: TrainConfig,
               resolution: int, weight_objects: bool, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A micro-step's model input and, when the loss weighs objects, its object masks: cropped and flipped as
    the step's pure-function draws say."""
    flip = sampler.coin(micro, salt=1) if tc.augment == "hflip" else None
    batch, objects = next(batches), None
    if masks is not None:
        batch, objects = batch
    # to the device first, from the loader's pinned memory without a wait; crops cut on the host would be
    # pageable, and a copy from pageable memory waits for the GPU
    batch = batch.to(device, non_blocking=True)
    objects = objects.to(device, non_blocking=True) if objects is not None else None
    if tc.crop:
        boxes = [masks.boxes_of(i) for i in sampler.indices(micro)] if masks is not None else \
            [()] * batch.shape[0]
        corners = crop_windows(boxes, resolution, tc.crop, tc.object_crops, sampler.uniforms(micro, salt=2, k=4))
        batch, objects = crop_batch(batch, objects, corners, tc.crop)
    objects = to_mask_input(objects, flip, device) if weight_objects else None
    return to_model_input(batch, flip, device), objects


def _update(accelerator, loss_value: torch.Tensor, module: torch.nn.Module, opt, clip: float | None) -> None:
    """Backward, clip the module's gradient norm at the accumulation boundary, step and clear its optimizer."""
    accelerator.backward(loss_value)
    if accelerator.sync_gradients and clip:
        accelerator.clip_grad_norm_(module.parameters(), clip)
    opt.step()
    opt.zero_grad(set_to_none=True)


def gan_step(run: Run, gan: GAN, x: torch.Tensor, objects: torch.Tensor | None, step: int, tc: TrainConfig,
             ) -> dict[str, torch.Tensor | float]:
    """One micro-step of G, then of D once it has started: -> the values to log (left on the device)."""
    accelerator, loss, disc = run.accelerator, gan.loss, gan.disc
    row: dict[str, torch.Tensor | float] = {}
    with accelerator.accumulate(gan.model, loss.discriminator):
        # --- generator. D is frozen and its DDP wrapper told not to expect gradients: the adversarial
        # term must move G only (otherwise G's loss would leave gradients in D for opt_d to apply).
        disc.requires_grad_(False)
        with accelerator.autocast(), accelerator.no_sync(loss.discriminator):
            xrec, qloss, stats = gan.model(x)
            g_loss, g_logs = loss.generator_loss(x, xrec, qloss, step, last_layer=gan.raw_model.last_layer,
                                                  objects=objects)
        disc.requires_grad_(True)
        run.guard.watch(step, g_loss=g_loss)
        _update(accelerator, g_loss, gan.model, gan.opt_g, tc.grad_clip)
        row.update(_scalars(g_logs), usage=stats["usage"].detach(), perplexity=stats["perplexity"].detach())

        # --- discriminator on real vs. detached reconstructions, only once it has started
        if loss.disc_active(step):
            with accelerator.autocast():
                d_loss, d_logs = loss.discriminator_loss(x, xrec.detach(), step)
            run.guard.watch(step, d_loss=d_loss)
            _update(accelerator, d_loss, loss.discriminator, gan.opt_d, tc.grad_clip)
            row.update(_scalars(d_logs))
    return row


def train(args, sections, tc: TrainConfig, split, masks: ObjectMasks | None) -> int:
    # A changed config or dataset gets a fresh state folder; the same one resumes (timings and timestamps in the
    # manifest are left out: re-collecting identical data must not restart training).
    run_dir = Path(args.state_dir) / config_hash(state_key(sections), data_identity(split.manifest))
    run = Run(run_dir, tc, args.out, OUTPUTS)
    accelerator, device = run.accelerator, run.accelerator.device
    gan = prepare_gan(run, sections, tc, split.resolution, args.weights_dir)
    run.resume("vqgan", {"vqgan": sections, "data": split.manifest})

    sampler = run.batch_sampler(len(split))
    batches = iter(image_loader(split, masks, sampler, tc, device))
    weight_objects = gan.loss.cfg.object_weight > 0
    images_per_step = run.per_device * run.world * tc.grad_accum
    gan.model.train()
    gan.disc.train()
    for step in run.steps("vqgan"):
        lr_g = lr_at(step, tc.lr, tc.warmup_steps, tc.steps, tc.lr_schedule, tc.min_lr_ratio)
        lr_d = lr_at(step, tc.disc_lr or tc.lr, tc.warmup_steps, tc.steps, tc.lr_schedule, tc.min_lr_ratio)
        set_lr(gan.opt_g, lr_g)
        set_lr(gan.opt_d, lr_d)
        for k in range(tc.grad_accum):
            micro = step * tc.grad_accum + k
            x, objects = next_batch(batches, sampler, micro, masks, tc, split.resolution, weight_objects, device)
            run.add(gan_step(run, gan, x, objects, step, tc), x.shape[0] * run.world)

        done = step + 1
        run.bar.update(1)
        if run.due(done, tc.log_every):
            means, rate = run.interval_means()
            run.metrics.log(done, {**means, "lr": lr_g, "disc_lr": lr_d, "images_per_s": rate})
            run.bar.set_postfix({k: f"{means[k]:.3g}" for k in ("g_loss", "rec", "usage") if k in means}
                                | {"img/s": f"{rate:.1f}"})
        run.checkpoint(done, {"images_seen": done * images_per_step})

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        run.export(gan.raw_model, {"images_seen": tc.steps * images_per_step})
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())
