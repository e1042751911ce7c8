"""Image helpers shared by evaluation and sampling: tensor <-> uint8 conversion, grids, atomic PNG writes."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from vqgan.io.files import atomic_file, replace_dir, temp_dir_beside


def to_tensor(images: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float in [-1, 1], the range the models work in."""
    x = torch.from_numpy(np.array(images, dtype=np.uint8)).to(device)  # a writable copy (memmaps are read-only)
    x = x.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
    # the permuted view is channels-last in memory; on CPU the models run fastest NCHW-contiguous, as in training
    # (bf16 encoding 15% faster, bench/inference.py); GPUs keep channels-last, which their convolutions prefer
    return x if x.device.type == "cuda" else x.contiguous()


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) float in [-1, 1] -> (B, H, W, 3) uint8, rounded and clipped (what a saved PNG holds)."""
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def abs_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| of two uint8 image stacks, as uint8 (the difference row of a reconstruction grid)."""
    return np.abs(a.astype(np.int16) - b.astype(np.int16)).astype(np.uint8)


def grid(rows: Sequence[np.ndarray], pad: int = 2, pad_value: int = 255, scale: int = 1) -> np.ndarray:
    """Lay out rows of equally-sized images, each row (N, H, W, 3) uint8, into one (H', W', 3) image.

    `scale` repeats pixels (nearest neighbour) so that 32 px Atari frames stay legible in a viewer.
    """
    if not rows:
        raise ValueError("grid: no rows given")
    n = max(len(r) for r in rows)
    h, w = rows[0].shape[1:3]
    hs, ws = h * scale, w * scale
    out = np.full((len(rows) * (hs + pad) + pad, n * (ws + pad) + pad, 3), pad_value, dtype=np.uint8)
    for i, row in enumerate(rows):
        if row.shape[1:] != rows[0].shape[1:]:
            raise ValueError(f"grid: row {i} has images of shape {row.shape[1:]}, row 0 has {rows[0].shape[1:]}")
        for j, img in enumerate(row):
            if scale > 1:
                img = img.repeat(scale, axis=0).repeat(scale, axis=1)
            y, x = pad + i * (hs + pad), pad + j * (ws + pad)
            out[y : y + hs, x : x + ws] = img
    return out


def labelled(image: np.ndarray, row_labels: Sequence[str] = (), title: str | None = None, pad: int = 2) -> np.ndarray:
    """A `grid` image with its rows' labels in a column on the left and a title above (white bands, black text).
    The rows are the grid's equal-height bands between `pad`-pixel gaps."""
    font = ImageFont.load_default()
    width = max([8 + int(font.getlength(s)) for s in row_labels] or [0])
    top = 16 if title else 0
    wide = 8 + int(font.getlength(title)) if title else 0  # a title longer than the grid widens the canvas
    canvas = Image.new("RGB", (max(image.shape[1] + width, wide), image.shape[0] + top), "white")
    canvas.paste(Image.fromarray(np.ascontiguousarray(image)), (width, top))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((4, 2), title, fill="black", font=font)
    band = (image.shape[0] - pad) / max(1, len(row_labels))
    for i, label in enumerate(row_labels):
        draw.text((4, top + pad + (i + 0.5) * band), label, fill="black", font=font, anchor="lm")
    return np.asarray(canvas)


def save_png(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write one (H, W, 3) uint8 image as PNG, atomically (a killed job never leaves a truncated file)."""
    return atomic_file(path, lambda p: Image.fromarray(np.ascontiguousarray(image)).save(p, format="PNG"))


def load_png(path: str | os.PathLike) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


class PngFolderWriter:
    """Write numbered PNGs into a hidden folder beside `path` and rename it into place on `close()`.

    Used for the per-image reconstructions that rFID reads: the folder either holds every image or does not exist.
    """

    def __init__(self, path: str | os.PathLike, pattern: str = "{:06d}.png"):
        self.path = Path(path)
        self.pattern = pattern
        self.tmp = temp_dir_beside(self.path)
        self.count = 0

    def add(self, images: np.ndarray) -> None:
        for img in images:  # plain writes: self.tmp is renamed into place whole (close)
            Image.fromarray(np.ascontiguousarray(img)).save(self.tmp / self.pattern.format(self.count))
            self.count += 1

    def close(self) -> Path:
        return replace_dir(self.tmp, self.path)

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
