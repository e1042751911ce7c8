"""The colours a dataset is drawn in, and decoded frames snapped onto them.

An Atari frame is painted from a small palette (the console's 128 NTSC colours; a game uses a few dozen), and the
downscale to 64 px adds blends only where two colours meet. A decoder's continuous output misses those exact values
by a grey level or two almost everywhere (on `atari64/ours`' val reconstructions: 31% of pixels exact, PSNR 35 dB),
and Inception, looking at clean-fid's 299-px resize, reads that grain as texture: the original frames with Gaussian
noise of sigma 1 grey level score FID 57 against real frames whose floor is 6 (bench/decoder_phase.py).

    palette = fit_palette(train_images, min_share=1e-4)      # (K, 3) uint8, most frequent first
    frames, snapped = snap(frames, palette, max_distance=8)  # uint8 (N, H, W, 3); share of pixels moved

`snap` moves a pixel onto the nearest palette colour when that colour is within `max_distance` grey levels on every
channel, and leaves it alone otherwise (edges' blends, colours the palette does not have). The palette is a fact of
the training split alone, so it can be fitted by any stage that reads that split. Photographs have no palette: the
config turns this off for them (`vqgan.palette.max_distance: 0`; its keys: vqgan.config.sections.PaletteConfig).
"""
from __future__ import annotations

import numpy as np

from vqgan.data.dataset import evenly_spaced

FIT_IMAGES = 3000  # frames the colour counts come from (evenly spaced over the split): shares to ~1e-5 of 12M pixels
CHUNK = 1 << 16  # pixels per distance computation: (CHUNK, K) int16 stays a few MB


def colour_keys(pixels: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 -> (...) int64 keys r << 16 | g << 8 | b."""
    p = pixels.astype(np.int64)
    return (p[..., 0] << 16) | (p[..., 1] << 8) | p[..., 2]


def fit_palette(images: np.ndarray, min_share: float, max_images: int = FIT_IMAGES) -> np.ndarray:
    """(K, 3) uint8: the colours that cover at least `min_share` of the pixels of (up to `max_images` evenly
    spaced) `images`, (N, H, W, 3) uint8, most frequent first."""
    if not 0 < min_share < 1:
        raise ValueError(f"palette min_share={min_share} must be in (0, 1)")
    if len(images) == 0:
        raise ValueError("fit_palette: no images")
    sample = np.asarray(images[evenly_spaced(len(images), max_images)])
    keys, counts = np.unique(colour_keys(sample.reshape(-1, 3)), return_counts=True)
    order = np.argsort(-counts, kind="stable")
    keep = keys[order][counts[order] >= min_share * counts.sum()]
    return np.stack([(keep >> 16) & 255, (keep >> 8) & 255, keep & 255], axis=1).astype(np.uint8)


def snap(frames: np.ndarray, palette: np.ndarray, max_distance: int) -> tuple[np.ndarray, float]:
    """(N, H, W, 3) uint8 -> (the frames with every pixel within `max_distance` (max over channels) of a palette
    colour replaced by the nearest such colour, the share of pixels changed). `max_distance` 0 or an empty
    palette returns the frames as they are."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.shape[-1:] != (3,):
        raise ValueError(f"snap expects (..., 3) uint8 frames, got {frames.dtype} {frames.shape}")
    if max_distance <= 0 or len(palette) == 0:
        return frames, 0.0
    flat = frames.reshape(-1, 3)
    out = flat.copy()
    pal = np.asarray(palette, np.int16)
    for lo in range(0, len(flat), CHUNK):
        px = flat[lo:lo + CHUNK].astype(np.int16)
        dist = np.abs(px[:, None, :] - pal[None]).max(-1)  # (n, K) Chebyshev distance
        nearest = dist.argmin(1)
        close = dist[np.arange(len(px)), nearest] <= max_distance
        out[lo:lo + CHUNK][close] = palette[nearest[close]]
    changed = float((out != flat).any(-1).mean()) if len(flat) else 0.0
    return out.reshape(frames.shape), changed


class Snapper:
    """`snap` with one palette and distance, counting what it changed: (N, H, W, 3) uint8 -> the same, snapped.

        snapper = Snapper.fit(train_images, max_distance=8, min_share=1e-4)  # None when max_distance is 0 (off)
    """

    def __init__(self, palette: np.ndarray, max_distance: int, min_share: float | None = None):
        self.palette, self.max_distance, self.min_share = palette, int(max_distance), min_share
        self.pixels = self.changed = 0

    @classmethod
    def fit(cls, images: np.ndarray, max_distance: int, min_share: float) -> "Snapper | None":
        """The palette of the training `images` (fit_palette) with `max_distance`; None when it is 0 (off), and
        then the images are not read."""
        if max_distance <= 0:
            return None
        return cls(fit_palette(images, min_share), max_distance, min_share)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        out, changed = snap(frames, self.palette, self.max_distance)
        n = int(np.prod(out.shape[:-1]))
        self.pixels += n
        self.changed += round(changed * n)
        return out

    def summary(self) -> dict:
        """What recon.json / samples.json record: the palette's size, the settings, the share of pixels moved."""
        return {"colours": len(self.palette), "max_distance": self.max_distance, "min_share": self.min_share,
                "changed_share": self.changed / self.pixels if self.pixels else None}
