"""The stages' config sections as dataclasses: `vqgan.train` / `transformer.train` (LoopConfig and its two loops),
`vqgan.eval`, `sample` (for one seed) and `fid`. No torch here: the config check builds them for every dataset and
variant before any job, and the training launcher checks a batch against the data before torch is imported.
Defaults and descriptions live in the schema; each `from_dict` fills them, and each class checks what the schema
cannot (cross-field rules, values only the code knows).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from vqgan.config.schema import defaults
from vqgan.models import invalid
from vqgan.precision import PRECISIONS, check_precision


def over_defaults(cls, section: str, d: dict[str, Any] | None, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """A config section as given (possibly partial) over `base` (default: the schema's defaults of `section`), with
    a ValueError naming any key that is not a field of the dataclass `cls`."""
    d = {**(defaults(section) if base is None else base), **(d or {})}
    known = sorted(f.name for f in fields(cls))
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ValueError(f"unknown {section} keys {unknown}; known: {known}")
    return d


@dataclass
class LoopConfig:
    """Keys of a `<stage>.train` section common to every loop; each loop subclasses it with its extra keys.
    Defaults and descriptions live in the schema (vqgan/config/schemas/); `from_dict` fills them. Batch size is
    global: per-device = batch_size / processes / grad_accum."""

    SECTION = "train"  # the config path named in error messages, and the schema section of the defaults

    steps: int
    batch_size: int
    lr: float
    betas: tuple[float, float]
    weight_decay: float
    warmup_steps: int
    lr_schedule: str  # "cosine" (to min_lr_ratio x lr at `steps`) or "constant"
    min_lr_ratio: float
    grad_accum: int
    grad_clip: float | None  # max global grad norm; None or 0 disables
    precision: str  # "auto" | "fp32" | "bf16" | "fp16" (autocast; bf16 needs no loss scaling); auto: vqgan.precision
    seed: int
    checkpoint_every: int
    keep_checkpoints: int
    log_every: int

    POSITIVE = ("steps", "batch_size", "grad_accum", "checkpoint_every", "keep_checkpoints", "log_every")

    def problems(self) -> list[tuple[tuple[str, ...], str]]:
        """What is wrong with the values, each (the keys involved, the first to name; what to do); subclasses extend
        the list with their own keys."""
        out = []
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            fp32 = " ('no' is now 'fp32')" if self.precision in ("no", False) else ""
            out.append((("precision",), f"precision={self.precision!r} (use 'auto', 'fp32', 'bf16' or 'fp16'){fp32}"))
        if self.lr_schedule not in ("cosine", "constant"):
            out.append((("lr_schedule",), f"lr_schedule={self.lr_schedule!r} (use 'cosine' or 'constant')"))
        for k in self.POSITIVE:
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                out.append(((k,), f"{k}={v!r} (must be an integer >= 1)"))
        if len(self.betas) != 2:
            out.append((("betas",), f"betas={list(self.betas)} (need two numbers)"))
        return out

    def __post_init__(self):
        self.betas = tuple(float(b) for b in self.betas)
        problems = self.problems()
        if problems:
            raise invalid(f"{self.SECTION} config", problems)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None):
        """The section as given (possibly partial), over the schema's defaults."""
        d = over_defaults(cls, cls.SECTION, d)
        try:
            return cls(**d)
        except TypeError as e:  # a value of the wrong type, e.g. betas: 0.9
            raise ValueError(f"invalid {cls.SECTION} config {d}: {e}") from None


@dataclass
class VQGANTrainConfig(LoopConfig):
    """`vqgan.train` keys (the shared ones are documented on LoopConfig)."""

    SECTION = "vqgan.train"

    disc_lr: float | None  # None: same as lr
    num_workers: int | str  # data-loader processes, or "auto" (`vqgan.train.loop.loader_workers`)
    augment: str  # "none" | "hflip" (fine for COCO; mirrors Atari score digits)
    # Square crops of the frames (0: whole frames); the model is convolutional, so it is used on whole frames.
    crop: int
    # Share of the crops centred on one of the frame's objects: sprites are ~3% of an Atari frame.
    object_crops: float

    def problems(self) -> list[str]:
        out = super().problems()
        if self.num_workers != "auto" and (not isinstance(self.num_workers, int) or isinstance(self.num_workers, bool)
                                           or not 0 <= self.num_workers <= 256):
            out.append((("num_workers",), f"num_workers={self.num_workers!r} (an integer from 0 to 256, or 'auto')"))
        if self.augment not in ("none", "hflip"):
            out.append((("augment",), f"augment={self.augment!r} (use 'none' or 'hflip')"))
        if not isinstance(self.crop, int) or isinstance(self.crop, bool) or self.crop < 0:
            out.append((("crop",), f"crop={self.crop!r} (an integer side in pixels, or 0 for whole frames)"))
        if not 0.0 <= self.object_crops <= 1.0:
            out.append((("object_crops",), f"object_crops={self.object_crops!r} (a share in [0, 1])"))
        elif self.object_crops > 0 and not self.crop:
            out.append((("object_crops", "crop"),
                        f"object_crops={self.object_crops!r} needs crop > 0 (the side of the crops to centre)"))
        if self.precision == "fp16":
            # Two optimizers (G and D) would share accelerate's one loss scaler, which updates its scale after
            # each of them, and the adaptive GAN weight divides gradient norms taken by autograd.grad on the
            # unscaled loss: in fp16 those under/overflow. bf16 has fp32's range and needs no scaler.
            out.append((("precision",),
                        "precision='fp16' (the VQGAN loop has two optimizers, G and D, and an adaptive loss "
                        "weight from raw gradient norms: fp16 would need a loss scaler per optimizer; use 'auto' "
                        "(bf16 where the device has it: A100, H100, ...) or 'fp32')"))
        return out


@dataclass
class TransformerTrainConfig(LoopConfig):
    """`transformer.train` keys (the shared ones are documented on LoopConfig)."""

    SECTION = "transformer.train"

    eval_every: int  # val loss every N steps (and always at the last step)
    pkeep: float  # keep each input code with this probability, else replace it by a random code
    p_uncond: float  # train the unconditional token on this fraction of sequences

    POSITIVE = LoopConfig.POSITIVE + ("eval_every",)

    def problems(self) -> list[str]:
        out = super().problems()
        if not 0.0 < self.pkeep <= 1.0:
            out.append((("pkeep",), f"pkeep={self.pkeep} (must be in (0, 1]; 1 = no corruption)"))
        if not 0.0 <= self.p_uncond < 1.0:
            out.append((("p_uncond",), f"p_uncond={self.p_uncond} (must be in [0, 1))"))
        return out


@dataclass
class EvalConfig:
    """`vqgan.eval` keys; defaults from the schema."""

    max_images: int | None      # evenly spaced val subset; None: every val image
    grid_images: int            # columns of recon.png
    batch_size: int
    object_min_error: float     # 0-255 box MAE of the median image below which an object is not scored
    object_keep_ratio: float    # kept: the reconstruction's box MAE < this x the median image's
    lpips: bool                 # score LPIPS (the workflow then requires its weights; off: null, "off by config")
    precision: str              # the VQGAN's encode + decode: "auto", "fp32" or "bf16" autocast (LPIPS stays fp32)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "EvalConfig":
        """The section as given (possibly partial), over the schema's defaults."""
        cfg = cls(**over_defaults(cls, "vqgan.eval", d))
        try:
            bad = (cfg.batch_size < 1 or cfg.grid_images < 0 or not 0 < cfg.object_min_error < 255
                   or not 0 < cfg.object_keep_ratio <= 1 or not isinstance(cfg.lpips, bool))
        except TypeError:  # a value of the wrong type, e.g. batch_size: "64"
            bad = True
        if bad:
            raise ValueError(f"invalid vqgan.eval config {asdict(cfg)}")
        check_precision(cfg.precision, "vqgan.eval.precision")
        if cfg.max_images is not None and (not isinstance(cfg.max_images, int) or cfg.max_images < 1):
            raise ValueError(f"vqgan.eval.max_images must be >= 1 or null, got {cfg.max_images}")
        return cfg


@dataclass(frozen=True)
class PaletteConfig:
    """`vqgan.palette` keys (decoded frames snapped onto the training split's colours, vqgan.data.palette);
    defaults from the schema. `max_distance` 0: off."""

    max_distance: int  # grey levels (every channel) within which a decoded pixel becomes the palette colour
    min_share: float  # the palette: colours covering at least this share of the training pixels

    @property
    def on(self) -> bool:
        return self.max_distance > 0

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "PaletteConfig":
        """The section as given (possibly partial), over the schema's defaults."""
        cfg = cls(**over_defaults(cls, "vqgan.palette", d))
        try:
            bad = (isinstance(cfg.max_distance, bool) or not isinstance(cfg.max_distance, int)
                   or not 0 <= cfg.max_distance <= 255 or not 0 < cfg.min_share < 1)
        except TypeError:  # a value of the wrong type, e.g. min_share: "1e-4"
            bad = True
        if bad:
            raise ValueError(f"invalid vqgan.palette config {asdict(cfg)}: max_distance is an integer 0-255 "
                             "(0 = off), min_share a number in (0, 1)")
        return cfg


@dataclass
class SampleConfig:
    """The `sample` section for one seed (the config lists `seeds`, one job each); defaults from the schema."""

    n_per_class: int | None  # samples of every class ...
    n_samples: int | None  # ... or this many in total, round-robin over classes (set at most one)
    batch_size: int
    temperature: float  # 0 = greedy
    top_k: int | None  # null = off
    top_p: float | None  # nucleus sampling; null = off
    guidance: float  # classifier-free guidance scale; 1 = off
    seed: int
    precision: str  # transformer weights in "fp32" or "bf16"; "auto": vqgan.precision.resolve
    decode_precision: str  # the VQGAN decoder: "fp32" or "bf16" autocast; or "auto"

    def __post_init__(self):
        problems = []
        if self.n_per_class is not None and self.n_samples is not None:
            problems.append((("n_per_class", "n_samples"), "set one of n_per_class and n_samples, not both"))
        for k in ("n_per_class", "n_samples"):
            v = getattr(self, k)
            if v is not None and int(v) < 1:
                problems.append(((k,), f"{k}={v} (must be >= 1)"))
        if self.batch_size < 1:
            problems.append((("batch_size",), f"batch_size={self.batch_size} (must be >= 1)"))
        if self.temperature < 0:
            problems.append((("temperature",), f"temperature={self.temperature} (must be >= 0; 0 = greedy)"))
        if self.top_k is not None and self.top_k < 1:
            problems.append((("top_k",), f"top_k={self.top_k} (must be >= 1, or null for off)"))
        if self.top_p is not None and not 0 < self.top_p <= 1:
            problems.append((("top_p",), f"top_p={self.top_p} (must be in (0, 1], or null for off)"))
        if self.guidance < 0:
            problems.append((("guidance",), f"guidance={self.guidance} (must be >= 0; 1 = off)"))
        for k in ("precision", "decode_precision"):
            if getattr(self, k) not in PRECISIONS:
                problems.append(((k,), f"{k}={getattr(self, k)!r} (use one of {list(PRECISIONS)})"))
        if problems:
            raise invalid("sample config", problems)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "SampleConfig":
        """The section as given (possibly partial, `seed` in place of `seeds`), over the schema's defaults."""
        base = defaults("sample")
        seed = base.pop("seeds")[0]
        d = over_defaults(cls, "sample", d, base={**base, "seed": seed})
        try:
            return cls(**d)
        except TypeError as e:  # a value of the wrong type, e.g. "temperature": "hot"
            raise ValueError(f"invalid sample config {d}: {e}") from None

    def counts(self, n_classes: int) -> list[int]:
        """Samples per class."""
        if self.n_samples is not None:
            base, extra = divmod(int(self.n_samples), n_classes)
            return [base + (c < extra) for c in range(n_classes)]
        return [int(self.n_per_class or 16)] * n_classes


class FIDError(ValueError):
    """Input that cannot give a meaningful FID (a config, a file, a folder); the message says what to do."""


@dataclass
class FIDConfig:
    """The `fid` section of the experiment config (tracked by Snakemake: a change reruns fid and the table; `n` also
    eval_vqgan, which reconstructs that many train images for the copy rate against reconstructions)."""

    n: int                 # images per side; fewer are used (and recorded) when fewer exist
    min_images: int        # fewer than this on any side is an error (a covariance needs 2; set = n to be strict)
    batch_size: int        # Inception batch; memory only, the result does not depend on it
    kid_subsets: int
    kid_subset_size: int   # at most this, and at most half the smaller set: proper subsets, a real spread
    seed: int              # KID subset draws

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "FIDConfig":
        """The section as given (possibly partial), over the schema's defaults."""
        d = {**defaults("fid"), **(d or {})}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise FIDError(f"fid config: unknown key(s) {unknown}; known keys are {sorted(known)}")
        cfg = cls(**d)  # types are checked below
        for name in ("n", "min_images", "batch_size", "kid_subsets", "kid_subset_size"):
            value = getattr(cfg, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise FIDError(f"fid config: {name} must be a positive integer, got {value!r}")
        if cfg.min_images < 2:
            raise FIDError(f"fid config: min_images must be >= 2 (a covariance needs two images), got "
                             f"{cfg.min_images}")
        return cfg
