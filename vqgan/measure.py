"""What one training step of a model costs on a GPU, measured on the CPU without allocating it: saved activations
(the bytes autograd keeps for backward) and FLOPs, at the real model size and resolution.

Everything runs on fake tensors (torch's FakeTensorMode: shapes and dtypes, no storage), so the paper's VQGAN at
256 px costs seconds and no memory. CUDA's autocast is emulated on the CPU: CPU autocast runs GroupNorm, LayerNorm
and softmax in bf16 when given bf16, CUDA's casts their inputs to fp32 (its fp32 op list), which keeps an fp32
copy of every normalised activation for backward: `CudaAutocast` does the same cast here.

A step's cost is affine in the micro-batch b: measured at b = 1 and 2, `fixed + b * per_sample`. bench/plan.py
turns this into peak memory per GPU and GPU-hours; vqgan/plan.py's formula (checked against this in
tests/test_plan.py) does the same cheaply while the DAG is built.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

# ops CUDA autocast runs in fp32 (inputs cast up) that CPU autocast leaves in the input's dtype
CUDA_FP32 = {F.group_norm, F.layer_norm, F.softmax, torch.softmax, torch.Tensor.softmax}


class CudaAutocast(TorchFunctionMode):
    """CUDA autocast's fp32 list on top of CPU autocast, and a stand-in for bincount (its output's size depends on
    the data, which fake tensors do not have; the quantizer's usage statistics call it with minlength)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.bincount:
            n = kwargs.get("minlength", args[2] if len(args) > 2 else 0)
            return torch.zeros(max(int(n), 1), dtype=torch.int64, device=args[0].device)
        if func in CUDA_FP32 and torch.is_autocast_enabled("cpu"):
            args = tuple(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)
        return func(*args, **kwargs)


@contextlib.contextmanager
def fake_mode(fake: bool = True):
    """Fake tensors (no storage) with CUDA's autocast policy; `fake=False`: real tensors, same policy (tests)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True) if fake else contextlib.nullcontext(), CudaAutocast():
        yield


def autocast(precision: str):
    """bf16 autocast for a half-precision run (bf16, fp16 or auto on a GPU), nothing for fp32 ('no', 'fp32')."""
    if precision in ("no", "fp32"):
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype=torch.bfloat16)


def _storage_key(t: torch.Tensor):
    try:
        return t.untyped_storage()._cdata
    except (RuntimeError, NotImplementedError):  # a tensor without storage (e.g. a nested view): count it alone
        return id(t)


class SavedBytes:
    """Bytes of the tensors autograd saves for backward while active, each storage once, parameters left out
    (they are counted as parameters)."""

    def __init__(self, exclude: list[torch.Tensor] = ()):
        self.seen: dict[Any, int] = {}
        self.exclude = {_storage_key(p) for p in exclude}
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        key = _storage_key(t)
        if key not in self.exclude:
            self.seen[key] = max(self.seen.get(key, 0), t.untyped_storage().nbytes())
        return t

    @property
    def total(self) -> int:
        return sum(self.seen.values())

    def __enter__(self):
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self.hooks.__exit__(*exc)


@dataclass
class StepCost:
    """A step's cost at micro-batch b: saved bytes `saved_fixed + b * saved_per_sample`, FLOPs likewise."""

    saved_fixed: float
    saved_per_sample: float
    flops_fixed: float
    flops_per_sample: float

    def saved(self, b: int) -> float:
        return self.saved_fixed + b * self.saved_per_sample

    def flops(self, b: int) -> float:
        return self.flops_fixed + b * self.flops_per_sample


def affine(at: Callable[[int], tuple[int, int]]) -> StepCost:
    """`at(b)` -> (saved bytes, FLOPs) at micro-batch b, measured at b = 1 and 2 -> the affine cost."""
    s1, f1 = at(1)
    s2, f2 = at(2)
    return StepCost(s1 - (s2 - s1), s2 - s1, f1 - (f2 - f1), f2 - f1)


def count(step: Callable[[], list[torch.Tensor]], params: list[torch.Tensor]) -> tuple[int, int]:
    """(saved bytes at the end of the forward, FLOPs of forward + backward) of `step`, which runs a forward and
    returns the losses; their backward runs here."""
    with FlopCounterMode(display=False) as flops:
        with SavedBytes(params) as saved:
            losses = step()
        for i, loss in enumerate(losses):
            loss.backward(retain_graph=i < len(losses) - 1)
    return saved.total, flops.get_total_flops()


def vqgan_step(model, loss, size: int, precision: str, disc: bool) -> Callable[[int], tuple[int, int]]:
    """The training step of vqgan.train.vqgan.gan_step at micro-batch b (G on rec + perceptual + codebook +
    adaptive GAN loss; D on real vs. detached reconstructions when `disc`), for `affine`. The peak phase is G's:
    its saved tensors (G, LPIPS on both images, D on the reconstruction) are what `saved` reports."""
    step = loss.cfg.disc_start if disc else 0
    g_params = list(model.parameters()) + list(loss.parameters())

    def at(b: int) -> tuple[int, int]:
        x = torch.randn(b, 3, size, size)

        def g():
            with autocast(precision):
                xrec, qloss, _ = model(x)
                g_loss, _ = loss.generator_loss(x, xrec, qloss, step, last_layer=model.last_layer)
            at.xrec = xrec
            return [g_loss]

        saved, flops = count(g, g_params)
        if disc and loss.disc_active(step):
            def d():
                with autocast(precision):
                    return [loss.discriminator_loss(x, at.xrec.detach(), step)[0]]
            flops += count(d, g_params)[1]
        return saved, flops

    return at


def gpt_step(model, block: int, precision: str) -> Callable[[int], tuple[int, int]]:
    """The transformer's training step at micro-batch b: `block - 1` codes + the class token, for `affine`."""
    params = list(model.parameters())

    def at(b: int) -> tuple[int, int]:
        idx = torch.randint(0, model.config.vocab_size, (b, block - 1))

        def fwd():  # no labels: the same shapes (one conditioning token), without the host-side label check
            with autocast(precision):
                _, loss = model(idx, None, targets=torch.cat([idx, idx[:, :1]], 1))
            return [loss]

        return count(fwd, params)

    return at


def forward_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of an inference forward (no graph)."""
    with FlopCounterMode(display=False) as flops, torch.no_grad():
        fn()
    return flops.get_total_flops()
