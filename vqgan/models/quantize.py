"""Vector quantizers: the paper's nearest-neighbour codebook and the l2-normalised lookup that keeps codes alive.

Both classes share one interface, ``forward(z) -> (zq, indices, loss, stats)`` with ``z`` of shape (B, D, h, w)
already projected to the code dimension D (the model's 1x1 ``quant_conv`` does the projection, so for the ``l2``
quantizer "project z_channels -> code_dim, normalise, look up, project back" is quant_conv -> L2Quantizer ->
post_quant_conv).

Optional codebook-maintenance tricks, all off by default and all safe under DDP (every rank ends a step with an
identical codebook):
- ``ema``: codes follow an exponential moving average of the encoder outputs assigned to them (VQ-VAE-2) instead
  of receiving gradients; the per-code counts and sums are all-reduced across ranks before the update.
- ``restart_dead_after``: a code not chosen by any rank for that many training forwards is replaced by a random
  encoder output of the current batch (Jukebox / "dead-code restart"); rank 0 picks the vectors and broadcasts.
- ``kmeans_init``: the first training batch initialises the codebook by k-means on the encoder outputs (rank 0
  computes, broadcasts), so no code starts far from the data.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F


def _dist_on() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if _dist_on():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def _broadcast_from_rank0(t: torch.Tensor) -> torch.Tensor:
    if _dist_on():
        dist.broadcast(t, src=0)
    return t


def code_counts(indices: torch.Tensor, n_codes: int) -> torch.Tensor:
    """How often each code occurs, (n_codes,) int64: torch.bincount's counts, without its host sync (on CUDA,
    bincount reads the indices' min and max back to the host first, so every step would wait for the GPU)."""
    flat = indices.reshape(-1)
    return torch.zeros(n_codes, dtype=torch.long, device=flat.device).index_add_(0, flat, torch.ones_like(flat))


def codebook_stats(indices: torch.Tensor, n_codes: int) -> dict[str, torch.Tensor]:
    """Perplexity (exp of the entropy of the code histogram) and usage (fraction of codes hit) of a batch."""
    counts = code_counts(indices, n_codes).float()
    p = counts / counts.sum().clamp_min(1)
    perplexity = torch.exp(-(p * torch.log(p.clamp_min(1e-10))).sum())
    usage = (counts > 0).float().mean()
    return {"perplexity": perplexity, "usage": usage, "counts": counts}


def kmeans(x: torch.Tensor, k: int, iters: int = 10, spherical: bool = False) -> torch.Tensor:
    """Plain Lloyd k-means on the rows of x (N, D); returns (k, D) centroids.

    With fewer rows than centroids, samples with replacement and adds a little noise so duplicates separate.
    """
    n = x.shape[0]
    g = torch.Generator(device="cpu").manual_seed(0)
    if n >= k:
        centroids = x[torch.randperm(n, generator=g)[:k].to(x.device)].clone()
    else:
        idx = torch.randint(0, n, (k,), generator=g).to(x.device)
        centroids = x[idx] + 0.01 * x.std() * torch.randn(k, x.shape[1], generator=g).to(x)
    for _ in range(iters):
        if spherical:
            centroids = F.normalize(centroids, dim=1)
            assign = (x @ centroids.t()).argmax(1)
        else:
            assign = torch.cdist(x, centroids).argmin(1)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = code_counts(assign, k).to(x)
        # an empty cluster keeps its previous centroid rather than collapsing to zero (a `where`, not a boolean
        # index: that would ask the host how many are filled)
        centroids = torch.where((counts > 0)[:, None], sums / counts.clamp_min(1)[:, None], centroids)
    return F.normalize(centroids, dim=1) if spherical else centroids


class VectorQuantizer(nn.Module):
    """The paper's quantizer (``taming``): uniform +-1/K init, argmin of squared distance, straight-through.

    Loss (VQ-VAE): ||sg[z] - zq||^2 (moves codes) + beta * ||z - sg[zq]||^2 (commits the encoder).
    The seed code puts beta on the wrong term: mean((zq.detach()-z)^2) + beta*mean((zq-z.detach())^2), which
    commits the encoder with weight 1 and moves codes with weight beta. ``legacy_beta=True`` reproduces that
    placement (the paper notes its models effectively trained with beta = 1 on the commitment term).
    """

    normalize = False  # the l2 subclass switches to cosine lookup

    def __init__(self, n_codes: int, dim: int, beta: float = 0.25, legacy_beta: bool = False, ema: bool = False,
                 ema_decay: float = 0.99, restart_dead_after: int = 0, kmeans_init: bool = False):
        super().__init__()
        self.n_codes, self.dim, self.beta, self.legacy_beta = n_codes, dim, beta, legacy_beta
        self.ema, self.ema_decay = ema, ema_decay
        self.restart_dead_after, self.kmeans_init = restart_dead_after, kmeans_init
        self.embedding = nn.Embedding(n_codes, dim)
        self.embedding.weight.data.uniform_(-1.0 / n_codes, 1.0 / n_codes)
        if self.normalize:
            self.embedding.weight.data = F.normalize(torch.randn(n_codes, dim), dim=1)
        if ema:
            # EMA codes are not trained by the optimizer; their running statistics live in buffers so they are
            # saved with the weights and restored on resume
            self.embedding.weight.requires_grad_(False)
            self.register_buffer("ema_count", torch.ones(n_codes))
            self.register_buffer("ema_sum", self.embedding.weight.data.clone())
        # forwards since each code was last chosen (by any rank); drives dead-code restart
        self.register_buffer("unused_steps", torch.zeros(n_codes, dtype=torch.long))
        self.register_buffer("initialized", torch.tensor(not kmeans_init))
        self._seen_initialized = False  # a host-side copy of `initialized` once it is True (see _maintain)

    # --- lookup -------------------------------------------------------------------------------------------
    def codes(self) -> torch.Tensor:
        """The codebook as used for lookup, (K, D)."""
        w = self.embedding.weight
        return F.normalize(w, dim=1) if self.normalize else w

    def embed(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices (B, h, w) -> quantized vectors (B, D, h, w)."""
        return F.embedding(indices, self.codes()).permute(0, 3, 1, 2).contiguous()

    @torch.no_grad()
    def lookup_indices(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, D, h, w) -> nearest code indices (B, h, w); no loss, no codebook maintenance. In fp32 even under
        autocast (a bf16 encoder may feed it), like `forward`."""
        B, D, h, w = z.shape
        with torch.autocast(device_type=z.device.type, enabled=False):
            flat = z.float().permute(0, 2, 3, 1).reshape(-1, D)
            if self.normalize:
                flat = F.normalize(flat, dim=1)
            return self._nearest(flat, self.codes().float()).view(B, h, w)

    @torch.no_grad()
    def _nearest(self, flat: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        if self.normalize:  # both sides unit length: nearest = largest cosine
            return (flat @ codes.t()).argmax(1)
        # ||z||^2 is constant per row, so argmin ||z - e||^2 = argmin (||e||^2 - 2 z.e)
        d = (codes * codes).sum(1)[None, :] - 2.0 * flat @ codes.t()
        return d.argmin(1)

    def forward(self, z: torch.Tensor):
        # distances in bf16 pick wrong codes; the quantizer always runs in fp32
        with torch.autocast(device_type=z.device.type, enabled=False):
            return self._forward(z.float())

    def _forward(self, z: torch.Tensor):
        B, D, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, D)  # (B, D, h, w) -> (B*h*w, D)
        if self.normalize:
            flat = F.normalize(flat, dim=1)
        if self.training:
            self._maintain(flat.detach())

        codes = self.codes()
        indices = self._nearest(flat.detach(), codes)
        zq = F.embedding(indices, codes)  # (B*h*w, D)

        commit = F.mse_loss(flat, zq.detach())  # pulls the encoder to its code
        if self.ema:
            loss = self.beta * commit  # codes move by EMA, not by a loss term
        else:
            move = F.mse_loss(zq, flat.detach())  # pulls the code to the encoder output
            loss = commit + self.beta * move if self.legacy_beta else self.beta * commit + move

        if self.training and self.ema:
            self._ema_update(flat.detach(), indices)
        if self.training and self.restart_dead_after > 0:
            self._count_usage(indices)

        # straight-through: forward uses zq, backward passes dL/dzq to the encoder unchanged
        zq = flat + (zq - flat).detach()
        # (B*h*w, D) -> (B, D, h, w), in z's memory layout: a channels-last view leaking out of here would make
        # the whole decoder run channels-last, where CPU GroupNorm is ~10x slower in bf16 (measured)
        fmt = torch.channels_last if z.is_contiguous(memory_format=torch.channels_last) and not z.is_contiguous() \
            else torch.contiguous_format
        zq = zq.view(B, h, w, D).permute(0, 3, 1, 2).contiguous(memory_format=fmt)
        indices = indices.view(B, h, w)
        stats = codebook_stats(indices, self.n_codes)
        return zq, indices, loss, stats

    # --- codebook maintenance (training mode only; collectives are called identically on every rank) -------
    @torch.no_grad()
    def _maintain(self, flat: torch.Tensor) -> None:
        # `initialized` lives on the device: read it once (a host sync), then remember; it never turns back
        if not self._seen_initialized and not bool(self.initialized):
            self._kmeans_init(flat)
        self._seen_initialized = True
        if self.restart_dead_after > 0:
            self._restart_dead(flat)

    @torch.no_grad()
    def _kmeans_init(self, flat: torch.Tensor) -> None:
        centroids = kmeans(flat, self.n_codes, spherical=self.normalize)
        centroids = _broadcast_from_rank0(centroids.contiguous())
        self.embedding.weight.data.copy_(centroids)
        if self.ema:
            self.ema_sum.copy_(centroids)
            self.ema_count.fill_(1.0)
        self.initialized.fill_(True)

    @torch.no_grad()
    def _restart_dead(self, flat: torch.Tensor) -> None:
        # `unused_steps` is updated from all-reduced counts, so every rank agrees on which codes are dead
        # Without asking the host how many codes are dead (a sync every step): draw a candidate for every code
        # and keep it where the code is dead. One broadcast of n_codes x dim per step, small beside DDP's gradients.
        dead = (self.unused_steps >= self.restart_dead_after)[:, None]
        pick = torch.randint(0, flat.shape[0], (self.n_codes,), device=flat.device)
        # a little noise so several codes restarted from one vector can still separate
        new = flat[pick] + 1e-3 * flat.std() * torch.randn(self.n_codes, self.dim, device=flat.device)
        if self.normalize:
            new = F.normalize(new, dim=1)
        new = _broadcast_from_rank0(new.contiguous())  # rank 0's batch decides; ranks stay identical
        self.embedding.weight.data.copy_(torch.where(dead, new, self.embedding.weight.data))
        if self.ema:
            self.ema_sum.copy_(torch.where(dead, new, self.ema_sum))
            self.ema_count.masked_fill_(dead[:, 0], 1.0)
        self.unused_steps.masked_fill_(dead[:, 0], 0)

    @torch.no_grad()
    def _count_usage(self, indices: torch.Tensor) -> None:
        counts = _all_reduce_sum(code_counts(indices, self.n_codes).float())
        self.unused_steps.add_(1).masked_fill_(counts > 0, 0)

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, indices: torch.Tensor) -> None:
        counts = code_counts(indices, self.n_codes).to(flat)
        sums = torch.zeros(self.n_codes, self.dim, device=flat.device).index_add_(0, indices, flat)
        stats = _all_reduce_sum(torch.cat([counts[:, None], sums], 1))  # one collective for both
        counts, sums = stats[:, 0], stats[:, 1:]
        self.ema_count.mul_(self.ema_decay).add_(counts, alpha=1 - self.ema_decay)
        self.ema_sum.mul_(self.ema_decay).add_(sums, alpha=1 - self.ema_decay)
        # Laplace smoothing keeps codes with a vanishing count from dividing by ~0
        n = self.ema_count.sum()
        count = (self.ema_count + 1e-5) / (n + self.n_codes * 1e-5) * n
        self.embedding.weight.data.copy_(self.ema_sum / count[:, None])


class L2Quantizer(VectorQuantizer):
    """``l2``: unit-normalised inputs and codes, nearest code by cosine similarity (ViT-VQGAN, LlamaGen).

    On the unit sphere every code stays within reach of the encoder outputs, which is what keeps usage high;
    the low code dimension (8-32, set by the model's projection) helps the same way.
    """

    normalize = True


QUANTIZERS = {"taming": VectorQuantizer, "l2": L2Quantizer}


def build_quantizer(kind: str, **kwargs) -> VectorQuantizer:
    if kind not in QUANTIZERS:
        raise ValueError(f"unknown quantizer {kind!r}: choose one of {sorted(QUANTIZERS)}")
    return QUANTIZERS[kind](**kwargs)


__all__ = ["VectorQuantizer", "L2Quantizer", "build_quantizer", "code_counts", "codebook_stats", "kmeans", "QUANTIZERS"]
