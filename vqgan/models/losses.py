"""VQGAN training losses: reconstruction (+ foreground weighting), LPIPS, codebook, and the PatchGAN game.

Generator objective (Esser et al. eq. 5-7):
    L_G = rec_weight * rec + perceptual_weight * LPIPS + codebook_weight * L_VQ + lambda * (-E[D(xrec)])
with lambda = ||grad_L nll|| / (||grad_L g_adv|| + 1e-4) on the decoder's last layer L, clamped to
[0, adaptive_weight_max], times disc_weight; the adversarial term is off (and D is not even run) before
``disc_start``.

Discriminator objective: hinge loss on real images and *detached* reconstructions. Detaching matters: without it
the discriminator's loss backpropagates into the generator and pushes it the wrong way (the bug in several
from-scratch reimplementations).

Foreground weighting: Atari frames are mostly a static background; an L1 loss averaged over all pixels
is minimised well by drawing the maze and no sprites. With ``foreground_weight = w > 0`` the per-pixel
reconstruction error is multiplied by ``1 + w * m`` where ``m`` marks "foreground" pixels: those whose colour
differs from the background by more than ``foreground_threshold`` (max over channels, in [-1, 1] units, so 0.1
is ~13/255). The background of each image is, by default, the per-pixel median of its few nearest images in the
batch (itself included; nearest by mean absolute difference): sprites move, the maze does not, and a batch that
mixes games still gives every frame a background of its own game (a median over the whole mixed batch marks most
pixels as foreground, and the weighting then just scales the whole loss: docs/atari.md). A caller that knows a
better background (e.g. the training split's per-pixel median per game) passes it as ``background=``. The weights
are not renormalised: w = 0 gives exactly the plain loss.

Object weighting: with ``object_weight = w > 0`` the caller passes ``objects=`` a (B, 1, H, W) mask of
the pixels inside the exact object boxes (from objects.csv, `vqgan.data.object_masks`), and the per-pixel error is
further multiplied by ``1 + w * objects``. Not renormalised either (w = 0 is the plain loss; a frame with no object
keeps weight 1 everywhere). With ``object_balance`` the mask holds, per box, ``a / area`` (a = the split's median
box area, clipped to [1/8, 8]) instead of 1: every object instance then weighs about the same in the loss, whatever
its size -- object recall counts instances, and a 1-pixel ball otherwise weighs a twentieth of a ghost. With
``object_class_balance`` each box's weight is further multiplied by n_g / (K_g n_gc) (n_g boxes of K_g classes in its
game, n_gc of its class; clipped likewise): every class of a game then carries the same share of the object loss --
one Ms. Pac-Man per frame otherwise weighs a third of the ~2.6 ghosts beside her.

Usage with Accelerate (the discriminator must run through its DDP wrapper so its gradients are synchronised):
    loss = VQLoss(loss_cfg, perceptual=lpips_module)                # a frozen vqgan.models.lpips.LPIPS, or None
    loss.discriminator = accelerator.prepare(loss.discriminator)   # together with its optimizer
    g_loss, logs = loss.generator_loss(x, xrec, qloss, step, unwrapped_model.last_layer)
    d_loss, logs = loss.discriminator_loss(x, xrec, step)          # d_loss.requires_grad is False before disc_start
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vqgan.models.config import LossConfig, disc_min_input


class NLayerDiscriminator(nn.Module):
    """pix2pix PatchGAN: (B, 3, H, W) -> (B, 1, h, w) real/fake logits, one per overlapping patch."""

    def __init__(self, in_ch: int = 3, ch: int = 64, n_layers: int = 3):
        super().__init__()
        layers = [nn.Conv2d(in_ch, ch, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1  # the last hidden layer keeps resolution
            layers += [nn.Conv2d(ch * prev, ch * mult, 4, stride=stride, padding=1, bias=False),
                       nn.BatchNorm2d(ch * mult), nn.LeakyReLU(0.2, True)]
        layers += [nn.Conv2d(ch * mult, 1, 4, stride=1, padding=1)]
        self.main = nn.Sequential(*layers)
        self.apply(self._init)

    min_input = staticmethod(disc_min_input)

    @staticmethod
    def _init(m):
        # the seed's (DCGAN) init: N(0, 0.02) convs, N(1, 0.02) BatchNorm scales
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.main(x)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def neighbour_median(x: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """(B, C, H, W) -> per-image background: the per-pixel median of each image's k nearest batch images.

    Nearest by mean absolute difference of 16x16 thumbnails, the image itself included; k odd (a true median), by
    default about a quarter of the batch (16 -> 5): in a batch mixing a few games each frame's neighbours are
    mostly frames of its own game, and a median of 5 is that game's background as long as 3 of them are.
    """
    B = x.shape[0]
    if k is None:
        k = max(3, B // 4) | 1
    k = min(k, B)
    with torch.no_grad():
        # distances on a 16x16 thumbnail: enough to tell games apart, 16x cheaper than on 64x64
        small = F.adaptive_avg_pool2d(x.detach().float(), min(16, x.shape[-1])).reshape(B, -1)
        d = torch.cdist(small, small, p=1)  # (B, B); 0 on the diagonal, so each image is its own first neighbour
        nn_idx = d.topk(k, dim=1, largest=False).indices  # (B, k)
        return _median_of_few([x.detach()[nn_idx[:, j]] for j in range(k)])  # k x (B, C, H, W) -> (B, C, H, W)


def _median_of_few(xs: list[torch.Tensor]) -> torch.Tensor:
    """Elementwise median of an odd number of same-shaped tensors by an odd-even transposition sort: k(k-1)/2
    elementwise min/max pairs, ~20x faster on CPU than torch.median over a new dimension of size 5 (measured)."""
    xs = list(xs)
    k = len(xs)
    for rnd in range(k):
        for i in range(rnd % 2, k - 1, 2):
            xs[i], xs[i + 1] = torch.minimum(xs[i], xs[i + 1]), torch.maximum(xs[i], xs[i + 1])
    return xs[k // 2]


def foreground_mask(x: torch.Tensor, background: torch.Tensor | None = None, threshold: float = 0.1) -> torch.Tensor:
    """(B, 1, H, W) float mask of pixels whose colour differs from the background by more than threshold.

    background: broadcastable to x; default each image's `neighbour_median` within the batch.
    """
    if background is None:
        background = neighbour_median(x)
    return ((x - background).abs().amax(dim=1, keepdim=True) > threshold).to(x.dtype)


class VQLoss(nn.Module):
    """`perceptual` is the frozen LPIPS module; required when `cfg.perceptual_weight > 0` (never a silent
    fallback to training without it)."""

    def __init__(self, cfg: LossConfig, perceptual: nn.Module | None = None):
        super().__init__()
        self.cfg = cfg
        if cfg.perceptual_weight > 0 and perceptual is None:
            raise ValueError("loss.perceptual_weight > 0 needs an LPIPS module (or set it to 0)")
        self.perceptual = perceptual if cfg.perceptual_weight > 0 else None
        self.discriminator = NLayerDiscriminator(3, cfg.disc_ch, cfg.disc_layers)

    def disc_active(self, step: int) -> bool:
        return step >= self.cfg.disc_start and self.cfg.disc_weight > 0

    def reconstruction(self, x, xrec, background=None, objects=None) -> torch.Tensor:
        err = (x - xrec).abs() if self.cfg.rec == "l1" else (x - xrec) ** 2
        if self.cfg.foreground_weight > 0:
            mask = foreground_mask(x, background, self.cfg.foreground_threshold)
            err = err * (1.0 + self.cfg.foreground_weight * mask)
        if self.cfg.object_weight > 0:
            if objects is None:
                raise ValueError("loss.object_weight > 0 needs the batch's object masks (objects=); the training "
                                 "loop builds them from the split's objects.csv")
            err = err * (1.0 + self.cfg.object_weight * objects.to(err.dtype))
        return err.mean()

    def adaptive_weight(self, nll, g_adv, last_layer) -> torch.Tensor:
        """lambda = ||grad nll|| / (||grad g_adv|| + 1e-4) at the decoder's last layer: the GAN term gets the
        same gradient scale as the reconstruction term whatever their raw magnitudes."""
        if not (torch.is_grad_enabled() and nll.requires_grad and g_adv.requires_grad):
            return torch.zeros((), device=nll.device)  # evaluation: no graph to differentiate
        nll_grad = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
        g_grad = torch.autograd.grad(g_adv, last_layer, retain_graph=True)[0]
        lam = nll_grad.norm() / (g_grad.norm() + 1e-4)
        return lam.clamp(0.0, self.cfg.adaptive_weight_max).detach() * self.cfg.disc_weight

    def generator_loss(self, x, xrec, qloss, step: int, last_layer: torch.Tensor, background=None, objects=None):
        c = self.cfg
        rec = self.reconstruction(x, xrec, background, objects)
        nll = c.rec_weight * rec
        # logs are detached 0-dim tensors, not floats: .item() here would stall the GPU every step (the loop
        # reads them at log steps)
        logs = {"rec": rec.detach()}
        if self.perceptual is not None:
            # LPIPS in fp32 whatever the autocast: its normalisations are not bf16-safe
            with torch.autocast(device_type=x.device.type, enabled=False):
                p = self.perceptual(x.float(), xrec.float()).mean()
            nll = nll + c.perceptual_weight * p
            logs["perceptual"] = p.detach()
        total = nll + c.codebook_weight * qloss
        if self.disc_active(step):
            g_adv = -self.discriminator(xrec).mean()
            lam = self.adaptive_weight(nll, g_adv, last_layer)
            total = total + lam * g_adv
            logs.update(g_adv=g_adv.detach(), **{"lambda": lam.detach()})
        else:
            logs.update(g_adv=0.0, **{"lambda": 0.0})
        logs.update(nll=nll.detach(), qloss=qloss.detach(), g_loss=total.detach())
        return total, logs

    def discriminator_loss(self, x, xrec, step: int):
        if not self.disc_active(step):
            # D is neither run nor trained before disc_start; callers skip backward when d_loss has no grad
            return torch.zeros((), device=x.device), {"d_loss": 0.0, "logits_real": 0.0, "logits_fake": 0.0}
        # detached: D's loss must not reach the generator (see module docstring)
        logits_real = self.discriminator(x.detach())
        logits_fake = self.discriminator(xrec.detach())
        d_loss = hinge_d_loss(logits_real, logits_fake)
        return d_loss, {"d_loss": d_loss.detach(), "logits_real": logits_real.detach().mean(),
                        "logits_fake": logits_fake.detach().mean()}
