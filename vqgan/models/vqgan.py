"""VQGAN (Esser et al., "Taming Transformers", 2021): convolutional encoder -> vector quantizer -> decoder.

Read it against the paper's Fig. 2 / the seed's `taming/modules/diffusionmodules/model.py`:
ResnetBlock (GroupNorm + swish), AttnBlock (single-head self-attention over pixels), Downsample / Upsample,
Encoder, Decoder, and the VQGAN that glues them to a quantizer from `quantize.py`.

Differences from the seed, all for speed or clarity, none changing the function computed:
- attention through `F.scaled_dot_product_attention` instead of bmm + softmax;
- swish via `F.silu` (one fused op instead of x * sigmoid(x));
- GroupNorm groups = gcd(32, channels), so tiny test configs (16 channels) work; 32 for every paper config;
- the 1x1 `quant_conv` maps z_channels -> code_dim for both quantizers (for ``l2`` that is the projection to the
  low-dimensional lookup space; for ``taming`` with code_dim == z_channels it is the seed's quant_conv);
- Upsample computes "nearest 2x, then 3x3 conv" in its sub-pixel form (2.25x fewer multiply-adds, same output);
- activations stay NCHW-contiguous on CPU (see GroupNorm below): on CPU, bf16 autocast on contiguous tensors is
  the fastest layout measured (bench/vqgan_step.py); channels_last is supported but slower there.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from vqgan.models.config import VQGANConfig
from vqgan.models.quantize import build_quantizer


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward hands on an NCHW-contiguous gradient."""

    @staticmethod
    def forward(ctx, x):
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


class GroupNorm(nn.GroupNorm):
    """nn.GroupNorm that, on CPU, always runs its kernels on NCHW-contiguous tensors.

    PyTorch's CPU GroupNorm is ~10x slower in bf16 on channels-last tensors, forward and backward (measured at
    16x64x64x64: 85 ms vs 8 ms fwd+bwd); two layout copies cost ~35 ms. For a channels-last model this keeps
    GroupNorm off the slow kernel; for NCHW activations (the fast path) it is a no-op.
    """

    def forward(self, x):
        if x.device.type != "cpu":
            return super().forward(x)
        cl = _is_channels_last(x)
        y = _ContiguousGrad.apply(super().forward(x.contiguous()))
        return y.contiguous(memory_format=torch.channels_last) if cl else y


def Normalize(channels: int) -> nn.GroupNorm:
    return GroupNorm(num_groups=math.gcd(32, channels), num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, dropout: float):
        super().__init__()
        self.norm1 = Normalize(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = Normalize(out_ch)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        # the seed's 1x1 "nin_shortcut" when the channel count changes
        self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all h*w positions, residual."""

    def __init__(self, ch: int):
        super().__init__()
        self.norm = Normalize(ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)  # the seed's q, k, v 1x1 convs fused into one
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x):
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, C, H * W).transpose(-1, -2).unbind(1)  # 3 x (B, HW, C)
        h = F.scaled_dot_product_attention(q, k, v)  # (B, HW, C); scale 1/sqrt(C) as the seed
        # back to x's memory layout: the transposed view is channels-last in disguise, and letting that layout
        # leak into the following GroupNorms made their bf16 backward ~10x slower on CPU (measured)
        fmt = torch.channels_last if _is_channels_last(x) else torch.contiguous_format
        h = h.transpose(1, 2).reshape(B, C, H, W).contiguous(memory_format=fmt)
        return x + self.proj_out(h)


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        # the seed pads (0, 1, 0, 1) and convolves 3x3 stride 2 without padding: asymmetric, kept for parity
        self.conv = nn.Conv2d(ch, ch, 3, stride=2)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


# Sub-pixel form of "nearest 2x upsample, then 3x3 conv": output pixel (2i+a, 2j+b) only sees input rows
# (i-1, i) for a = 0 and (i, i+1) for a = 1 (same for columns), so each of the four output phases is a 2x2 conv of
# the *low-resolution* input whose taps are sums of the 3x3 taps. Same function and same parameter as the seed's
# Upsample; 16 instead of 36 multiply-adds per output pixel, and no 4x-larger upsampled copy of the input.
_PHASE_TAPS = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]],   # a = 0: rows (i-1) <- w0, (i) <- w1 + w2
                            [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])  # a = 1: rows (i) <- w0 + w1, (i+1) <- w2


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)
        # a buffer, so it lives on the model's device (a module constant would be copied from the host at every
        # forward, a blocking copy on GPUs); not persistent: checkpoints keep the seed's keys
        self.register_buffer("phase_taps", _PHASE_TAPS.clone(), persistent=False)

    def forward(self, x):
        B, C, H, W = x.shape
        w = self.conv.weight  # (out, in, 3, 3)
        taps = self.phase_taps.to(w)
        # (a, b, out, in, 2, 2) -> one conv with 4*out channels, phases stacked along the output channels
        k = torch.einsum("apr,oirs,bqs->aboipq", taps, w, taps).reshape(4 * w.shape[0], C, 2, 2)
        y = F.conv2d(F.pad(x, (1, 1, 1, 1)), k, self.conv.bias.repeat(4))  # (B, 4*out, H+1, W+1)
        y = y.view(B, 2, 2, -1, H + 1, W + 1)
        # phase (a, b) is the window starting at (a, b); interleave into (B, out, 2H, 2W)
        phases = torch.stack([torch.stack([y[:, a, b, :, a:a + H, b:b + W] for b in (0, 1)], -1) for a in (0, 1)], -3)
        return phases.reshape(B, -1, 2 * H, 2 * W)  # (B, out, H, 2, W, 2) -> (B, out, 2H, 2W)


class Encoder(nn.Module):
    """(B, 3, H, W) -> (B, z_channels, H/f, W/f)."""

    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        self.conv_in = nn.Conv2d(3, cfg.ch, 3, padding=1)
        res, in_ch = cfg.resolution, cfg.ch
        self.down = nn.ModuleList()
        for level, mult in enumerate(cfg.ch_mult):
            out_ch = cfg.ch * mult
            blocks, attns = nn.ModuleList(), nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(in_ch, out_ch, cfg.dropout))
                attns.append(AttnBlock(out_ch) if res in cfg.attn_resolutions else nn.Identity())
                in_ch = out_ch
            stage = nn.Module()
            stage.block, stage.attn = blocks, attns
            if level != len(cfg.ch_mult) - 1:
                stage.downsample = Downsample(in_ch)
                res //= 2
            self.down.append(stage)
        self.mid = nn.Sequential(ResnetBlock(in_ch, in_ch, cfg.dropout), AttnBlock(in_ch),
                                 ResnetBlock(in_ch, in_ch, cfg.dropout))
        self.norm_out = Normalize(in_ch)
        self.conv_out = nn.Conv2d(in_ch, cfg.z_channels, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for stage in self.down:
            for block, attn in zip(stage.block, stage.attn):
                h = attn(block(h))
            if hasattr(stage, "downsample"):
                h = stage.downsample(h)  # (B, C, H, W) -> (B, C, H/2, W/2)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """(B, z_channels, h, w) -> (B, 3, h*f, w*f); mirrors the encoder with one extra ResnetBlock per level."""

    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        in_ch = cfg.ch * cfg.ch_mult[-1]
        res = cfg.grid
        self.conv_in = nn.Conv2d(cfg.z_channels, in_ch, 3, padding=1)
        self.mid = nn.Sequential(ResnetBlock(in_ch, in_ch, cfg.dropout), AttnBlock(in_ch),
                                 ResnetBlock(in_ch, in_ch, cfg.dropout))
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.ch_mult))):
            out_ch = cfg.ch * mult
            blocks, attns = nn.ModuleList(), nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(in_ch, out_ch, cfg.dropout))
                attns.append(AttnBlock(out_ch) if res in cfg.attn_resolutions else nn.Identity())
                in_ch = out_ch
            stage = nn.Module()
            stage.block, stage.attn = blocks, attns
            if level != 0:
                stage.upsample = Upsample(in_ch)
                res *= 2
            self.up.append(stage)
        self.norm_out = Normalize(in_ch)
        self.conv_out = nn.Conv2d(in_ch, 3, 3, padding=1)

    def forward(self, z):
        h = self.mid(self.conv_in(z))
        for stage in self.up:
            for block, attn in zip(stage.block, stage.attn):
                h = attn(block(h))
            if hasattr(stage, "upsample"):
                h = stage.upsample(h)  # (B, C, h, w) -> (B, C, 2h, 2w)
        return self.conv_out(F.silu(self.norm_out(h)))


class VQGAN(nn.Module):
    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.code_dim, 1)
        self.quantize = build_quantizer(
            cfg.quantizer, n_codes=cfg.n_codes, dim=cfg.code_dim, beta=cfg.beta, legacy_beta=cfg.legacy_beta,
            ema=cfg.ema, ema_decay=cfg.ema_decay, restart_dead_after=cfg.restart_dead_after,
            kmeans_init=cfg.kmeans_init)
        self.post_quant_conv = nn.Conv2d(cfg.code_dim, cfg.z_channels, 1)
        self.decoder = Decoder(cfg)

    @property
    def last_layer(self) -> torch.Tensor:
        """The decoder's last conv weight: the adaptive GAN weight balances gradient norms here."""
        return self.decoder.conv_out.weight

    def encode(self, x):
        """x (B, 3, H, W) in [-1, 1] -> (zq (B, code_dim, h, w), indices (B, h, w), qloss, stats)."""
        return self.quantize(self.quant_conv(self.encoder(x)))

    def decode(self, zq):
        return self.decoder(self.post_quant_conv(zq))

    def forward(self, x):
        zq, indices, qloss, stats = self.encode(x)
        xrec = self.decode(zq)
        stats = {"indices": indices, "perplexity": stats["perplexity"], "usage": stats["usage"]}
        return xrec, qloss, stats

    @torch.no_grad()
    def encode_to_indices(self, x) -> torch.Tensor:
        return self.quantize.lookup_indices(self.quant_conv(self.encoder(x)))

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        return self.decode(self.quantize.embed(indices))
