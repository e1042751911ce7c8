"""Does a decoder phase make a trained tokenizer render better, and is it better than more of the same training?

    python bench/decoder_phase.py --model results/vqgan/atari64/ours --train results/data/atari64/train \
        --val results/data/atari64/val --steps 300 --modes decoder,full --out /tmp/decoder_phase

Issue #29 asks for "a decoder that renders": rFID of `atari64/ours` is 48.5 although its PSNR is 38 dB. Starting
from one trained VQGAN, each mode trains the same number of steps on the training split with the model's own
reconstruction loss (the default recipe's foreground and instance-balanced object weights; LPIPS and the PatchGAN
with `--lpips` / `--disc`), warmup + cosine from `--lr`, bf16 autocast as the pipeline trains on a bf16 CPU:

- decoder: encoder and codebook frozen, so the codes (and the transformer's data) do not change; the decoder
  learns from the frozen codes (encoded once: `encode_s`, counted apart from `train_s`);
- full: every weight trains on, the codebook maintenance included: more of phase 1 (new codes).

Each result is scored by the pipeline's own commands: `vqgan.eval.recon` (PSNR, LPIPS, object recall on the val
split; its `recon/` folder) and the fid stage's FID on N val images against N other val frames (rFID). Beside them
the references that say what rFID measures here: the original frames of the same images (the floor), and those
frames with Gaussian noise of sigma 1 and 2 grey levels (PSNR ~48 and ~42 dB): Inception on clean-fid's 299-px
resize of a 64-px Atari frame reacts to the slightest grain on flat colour, so rFID is far more sensitive than PSNR.
The table prints each mode's wall time on this machine: name the CPU and the load beside it.

`--palette-distances 4,8,16` adds the starting model's reconstructions snapped onto the training palette
(vqgan.data.palette, `vqgan.palette`) at each distance. The distance is chosen on the *train* column (the
reconstructions of N train images against those images, `train_rfid`), never on the scored val split.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from vqgan.config.build import loss_config
from vqgan.data.dataset import evenly_spaced, read_split
from vqgan.data.object_masks import ObjectMasks
from vqgan.data.palette import fit_palette, snap
from vqgan.eval.fid import InceptionFeatures, fid_from_features, files_features, resolve_inception_weights
from vqgan.io.checkpoint import load_vqgan, save_model
from vqgan.io.images import load_png, save_png, to_tensor
from vqgan.io.weights import lpips_state_dict
from vqgan.models.losses import VQLoss
from vqgan.models.lpips import LPIPS

# the default `ours` recipe's reconstruction loss (config/config.yaml: vqgan.loss and datasets.atari64.vqgan.loss)
RECIPE = {"rec": "l1", "foreground_weight": 4.0, "object_weight": 10.0, "object_balance": True}


def finetune(model, mode: str, split, args) -> dict:
    """`args.steps` steps of `mode` on `model` (in place) -> timings and the last interval's reconstruction loss."""
    perceptual = None
    if args.lpips > 0:
        perceptual = LPIPS().eval().requires_grad_(False)
        perceptual.load_state_dict(lpips_state_dict(args.weights_dir))
    loss = VQLoss(loss_config({**RECIPE, "perceptual_weight": args.lpips, "disc_weight": args.disc,
                               "disc_start": 0}), perceptual)
    masks = ObjectMasks.from_split(split, ("brick",), balance=True) if split.objects is not None else None
    t0 = time.perf_counter()
    zq = None
    if mode == "decoder":
        model.eval()
        with torch.no_grad():
            zq = torch.cat([model.encode(to_tensor(split.images[i:i + 256]))[0] for i in range(0, len(split), 256)])
        params = [*model.post_quant_conv.parameters(), *model.decoder.parameters()]
        model.decoder.train()
    else:
        model.train()
        params = list(model.parameters())
    encode_s = time.perf_counter() - t0
    opt = torch.optim.Adam(params, lr=args.lr, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(loss.discriminator.parameters(), lr=args.lr, betas=(0.5, 0.9))
    rng = np.random.default_rng(args.seed)
    recs, t0 = [], time.perf_counter()
    for step in range(args.steps):
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for g in opt.param_groups + opt_d.param_groups:
            g["lr"] = lr
        idx = np.sort(rng.choice(len(split), args.batch_size, replace=False))
        x = to_tensor(split.images[idx])
        objects = torch.from_numpy(masks(idx))[:, None] if masks is not None else None
        loss.discriminator.requires_grad_(False)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            if zq is None:
                xrec, qloss, _ = model(x)
            else:
                xrec, qloss = model.decode(zq[idx]), torch.zeros(())
            g_loss, logs = loss.generator_loss(x, xrec.float(), qloss.float(), step, model.last_layer,
                                               objects=objects)
        opt.zero_grad(set_to_none=True)
        g_loss.backward()
        opt.step()
        if loss.disc_active(step):
            loss.discriminator.requires_grad_(True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                d_loss, _ = loss.discriminator_loss(x, xrec.detach().float(), step)
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
        recs.append(float(logs["rec"]))
        if (step + 1) % 50 == 0:
            print(f"{mode}: step {step + 1}/{args.steps} rec {np.mean(recs[-50:]):.4f} "
                  f"{(time.perf_counter() - t0) / (step + 1):.2f} s/step", flush=True)
    model.eval()
    return {"train_s": time.perf_counter() - t0, "encode_s": encode_s,
            "rec_last50": float(np.mean(recs[-50:])) if recs else None}


def write_pngs(folder: Path, frames: np.ndarray) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i, f in enumerate(frames):
        files.append(folder / f"{i:06d}.png")
        save_png(files[-1], f)
    return files


class Scorer:
    """FID of N frames against N val frames (the fid stage's real side: evenly spaced over val), and against the
    references: the originals of the scored images and those originals with Gaussian noise."""

    def __init__(self, val, n: int, out: Path):
        self.extractor = InceptionFeatures(resolve_inception_weights(None))
        real = np.asarray(val.images[evenly_spaced(len(val), n)])
        self.real = self.features("real", real, out)
        self.out, self.n = out, n

    def features(self, name: str, frames: np.ndarray, out: Path) -> np.ndarray:
        with contextlib.redirect_stderr(io.StringIO()):
            return files_features(write_pngs(out / "frames" / name, frames), self.extractor, 50, name)

    def fid(self, name: str, frames: np.ndarray) -> float:
        return fid_from_features(self.features(name, frames, self.out), self.real)


def recon_eval(model_dir: Path, args, out: Path) -> dict:
    """`vqgan.eval.recon` on the val split (the pipeline's numbers) -> its JSON; its recon/ folder stays, and
    recon_train/ with the reconstructions of the N train images the fid stage picks."""
    cfg = {"max_images": 500, "precision": "fp32", "lpips": False}
    cmd = [sys.executable, "-m", "vqgan.eval.recon", "--config", json.dumps(cfg), "--model", str(model_dir),
           "--data", args.val, "--train-data", args.train, "--out-json", str(out / "recon.json"),
           "--out-png", str(out / "recon.png"), "--recon-dir", str(out / "recon"),
           "--recon-train-dir", str(out / "recon_train"), "--recon-train-n", str(args.n)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads((out / "recon.json").read_text())


def recon_frames(folder: Path, n_files: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n of the recon folder's files (evenly spaced, as the fid stage picks them) and their indices in it."""
    pick = evenly_spaced(n_files, n)
    return np.stack([load_png(folder / f"{i:06d}.png") for i in pick]), pick


def row(name: str, frames: np.ndarray, originals: np.ndarray, scorer: Scorer, **extra) -> dict:
    err = np.abs(frames.astype(np.int16) - originals).max(-1)
    mse = float(((frames.astype(np.float64) - originals) ** 2).mean())
    r = {"name": name, "rfid": scorer.fid(name, frames), "psnr": 10 * math.log10(255 ** 2 / mse) if mse else None,
         "exact_pixels": float((err == 0).mean()), "pixels_within_2": float((err <= 2).mean()), **extra}
    print(json.dumps(r), flush=True)
    return r


def palette_rows(frames: np.ndarray, originals: np.ndarray, train, recon_train: Path, scorer: Scorer,
                 args) -> list[dict]:
    """The starting model's val reconstructions snapped at each distance, with `train_rfid`: its reconstructions of
    N train images, snapped alike, against those train images (the column the distance is chosen on)."""
    train_frames = np.stack([load_png(p) for p in sorted(recon_train.glob("*.png"))])
    train_originals = np.asarray(train.images[evenly_spaced(len(train), len(train_frames))])
    train_real = scorer.features("train originals", train_originals, scorer.out)
    palette = fit_palette(train.images, args.palette_min_share)
    out = []
    for d in [0, *(int(x) for x in args.palette_distances.split(","))]:
        snapped_train, _ = snap(train_frames, palette, d)
        train_rfid = fid_from_features(scorer.features(f"train recon d{d}", snapped_train, scorer.out), train_real)
        if d == 0:
            print(json.dumps({"name": "start (train)", "train_rfid": train_rfid}), flush=True)
            continue
        snapped, changed = snap(frames, palette, d)
        out.append(row(f"start + palette d{d}", snapped, originals, scorer, train_rfid=train_rfid,
                       changed=changed, colours=len(palette)))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a trained VQGAN folder (results/vqgan/{ds}/{variant})")
    p.add_argument("--train", required=True)
    p.add_argument("--val", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--modes", default="decoder,full")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--lpips", type=float, default=0.0, help="LPIPS weight (needs --weights-dir)")
    p.add_argument("--disc", type=float, default=0.0, help="PatchGAN weight (adaptive, from step 0)")
    p.add_argument("--weights-dir", default="resources/weights")
    p.add_argument("--no-bf16", dest="bf16", action="store_false")
    p.add_argument("--n", type=int, default=300, help="images per side of the FID")
    p.add_argument("--palette-distances", default="", help="e.g. 4,8,16: rows with the palette snap")
    p.add_argument("--palette-min-share", type=float, default=1e-4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    train, val = read_split(args.train), read_split(args.val)
    scorer = Scorer(val, args.n, out)
    rows = []
    base = out / "start"
    start = recon_eval(Path(args.model), args, base)
    frames, pick = recon_frames(base / "recon", start["n_images"], args.n)
    originals = np.asarray(val.images[evenly_spaced(len(val), start["n_images"])[pick]])
    rng = np.random.default_rng(args.seed)
    for sigma in (0, 1, 2):
        noisy = np.clip(originals + rng.normal(0, sigma, originals.shape), 0, 255).round().astype(np.uint8)
        rows.append(row(f"originals + noise {sigma}" if sigma else "originals (floor)", noisy, originals, scorer))
    rows.append(row("start", frames, originals, scorer, object_recall=start.get("object_recall")))
    if args.palette_distances:
        rows += palette_rows(frames, originals, train, base / "recon_train", scorer, args)
    for mode in args.modes.split(","):
        model = load_vqgan(args.model)
        cost = finetune(model, mode, train, args)
        folder = out / mode
        save_model(model, folder)
        m = recon_eval(folder, args, folder)
        frames, _ = recon_frames(folder / "recon", m["n_images"], args.n)
        rows.append(row(mode, frames, originals, scorer, object_recall=m.get("object_recall"), **cost))
    (out / "decoder_phase.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    print(f"\n{'':24} {'rFID':>6} {'PSNR':>6} {'exact':>6} {'<=2':>6} {'recall':>7} {'train s':>8} {'enc s':>6} "
          f"{'train rFID':>10}")
    for r in rows:
        def f(k: str, fmt: str, r: dict = r) -> str:
            return format(r[k], fmt) if r.get(k) is not None else "-"
        print(f"{r['name']:24} {f('rfid', '6.1f')} {f('psnr', '6.2f')} {f('exact_pixels', '6.3f')} "
              f"{f('pixels_within_2', '6.3f')} {f('object_recall', '7.3f')} {f('train_s', '8.0f')} "
              f"{f('encode_s', '6.0f')} {f('train_rfid', '10.1f')}")
    cpu = os.popen("lscpu | grep 'Model name'").read().strip()
    print(f"cpu: {cpu}; load: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
