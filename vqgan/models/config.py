"""The models' configs: plain dataclasses, no torch, so that the config check can build them before any job (the
workflow imports this while it builds the DAG). Every value comes from the caller (vqgan.config.build fills them
from the schema's defaults); each class checks what only it knows.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from vqgan.models import invalid


@dataclass
class VQGANConfig:
    resolution: int
    ch: int  # base channel count
    ch_mult: tuple[int, ...]  # f = 2**(len(ch_mult)-1): 64 px -> 8x8 codes
    num_res_blocks: int
    attn_resolutions: tuple[int, ...]  # feature-map sizes (px) that get self-attention
    z_channels: int  # encoder output / decoder input channels
    dropout: float
    # quantizer
    quantizer: str  # "l2" (cosine lookup, keeps codes alive) or "taming" (paper)
    n_codes: int
    code_dim: int  # low-dim l2 lookup keeps the codebook alive
    beta: float  # commitment weight
    legacy_beta: bool  # True: the seed's beta placement (beta on the codebook term)
    ema: bool  # codes follow an EMA of their assigned encoder outputs
    ema_decay: float
    restart_dead_after: int  # >0: restart codes unused for this many training forwards
    kmeans_init: bool  # initialise codes by k-means on the first training batch

    def __post_init__(self):
        self.ch_mult = tuple(int(m) for m in self.ch_mult)
        self.attn_resolutions = tuple(int(r) for r in self.attn_resolutions)
        problems = self.problems()
        if problems:
            raise invalid("VQGAN config", problems)

    def problems(self) -> list[tuple[tuple[str, ...], str]]:
        """What is wrong: (the fields involved, the first to name; what to do)."""
        out = []
        if self.quantizer not in ("l2", "taming"):
            out.append((("quantizer",), f"quantizer={self.quantizer!r} (choose 'l2' or 'taming')"))
        if not self.ch_mult:
            out.append((("ch_mult",), "ch_mult is empty"))
        elif self.resolution % self.downsample:
            out.append((("resolution", "ch_mult"),
                        f"resolution={self.resolution} is not divisible by f={self.downsample}, the downsampling "
                        f"factor 2**(len(ch_mult)-1): make it a multiple of f, or shorten ch_mult"))
        if self.n_codes < 2 or self.code_dim < 1:
            out.append((("n_codes", "code_dim"), f"n_codes={self.n_codes}, code_dim={self.code_dim}"))
        if not 0.0 < self.ema_decay < 1.0:
            out.append((("ema_decay",), f"ema_decay={self.ema_decay} (must be in (0, 1))"))
        return out

    @property
    def levels(self) -> tuple[int, ...]:
        """The feature-map side of each level, the input's first: where `attn_resolutions` can add attention."""
        return tuple(self.resolution // 2**i for i in range(len(self.ch_mult)))

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def grid(self) -> int:
        return self.resolution // self.downsample

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ch_mult"], d["attn_resolutions"] = list(self.ch_mult), list(self.attn_resolutions)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "VQGANConfig":
        """Every field by name, as written by to_dict (vqgan.config.build makes one from config sections).
        Unknown keys are errors."""
        d = dict(d)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown VQGAN config keys {unknown}; known keys: {sorted(known)}")
        return cls(**d)


def disc_min_input(n_layers: int = 3) -> int:
    """The PatchGAN's smallest input side that leaves one logit: each 4x4 stride-2 conv (padding 1) halves (floor),
    the two stride-1 ones take one pixel each, so floor(n / 2^n_layers) - 2 >= 1."""
    return 3 * 2**n_layers


@dataclass
class LossConfig:
    rec: str  # "l1" or "l2" pixel reconstruction
    rec_weight: float
    perceptual_weight: float  # LPIPS(vgg); 0 disables it (and the need for VGG weights)
    codebook_weight: float
    disc_weight: float  # multiplies the adaptive lambda
    disc_start: int  # step from which D is trained and its loss used
    disc_layers: int  # PatchGAN depth: 3 -> 70x70 receptive field (pix2pix default)
    disc_ch: int
    adaptive_weight_max: float  # clamp of lambda (the seed's value)
    foreground_weight: float  # extra rec weight on pixels far from the background (see module doc)
    foreground_threshold: float  # colour distance (in [-1, 1] units) that counts as foreground
    object_weight: float  # extra rec weight inside the exact object boxes (needs objects.csv)
    object_ignore: tuple[str, ...]  # object classes not weighted (Breakout's wall: 1/3 of the frame)
    object_balance: bool  # weight each box by median area / its area: instances weigh the same
    # and by n_game / (K classes x n_class): a game's classes weigh alike. Off when absent: the schema gives it no
    # default, so that adding the switch changed no existing job's params (no rerun)
    object_class_balance: bool = False

    def __post_init__(self):
        if self.rec not in ("l1", "l2"):
            raise ValueError(f"LossConfig.rec={self.rec!r}: choose 'l1' or 'l2'")
        for name in ("rec_weight", "perceptual_weight", "codebook_weight", "disc_weight", "foreground_weight",
                     "object_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"LossConfig.{name}={getattr(self, name)} must be >= 0")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LossConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown loss config keys {unknown}; known keys: {sorted(known)}")
        if "object_ignore" in d:
            d = {**d, "object_ignore": tuple(d["object_ignore"])}
        return cls(**d)


@dataclass
class GPTConfig:
    vocab_size: int  # = the VQGAN's n_codes; the head predicts only these
    n_classes: int  # conditioning classes (Atari games); one more "unconditional" token is always added
    block_size: int  # codes per image (h*w); positions = conditioning token + block_size - 1 codes
    n_layer: int
    n_head: int
    n_embd: int
    dropout: float
    bias: bool  # biases in Linear and LayerNorm (taming has them; nanoGPT shows they are not needed)

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise invalid("GPT config", [(("n_head", "n_embd"), f"n_head={self.n_head} does not divide "
                                          f"n_embd={self.n_embd} (each head gets n_embd / n_head channels)")])

    @property
    def uncond_token(self) -> int:
        return self.vocab_size + self.n_classes

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"GPTConfig: unknown keys {sorted(unknown)}; known keys are {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)
