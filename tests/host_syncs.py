"""What a training step would make a GPU wait for, recorded on the CPU (no GPU needed).

On CUDA the host queues a step's kernels and goes on; it stops until the GPU has caught up when it reads a value
back (`.item()`, `bool(t)`, `float(t)`, `.tolist()`, `.cpu()`), runs an op whose output size depends on the data
(`nonzero`, `masked_select`, boolean-mask indexing, `unique`, and CUDA's `bincount`, which reads min/max first),
or copies a tensor made on the host into the step (`torch.tensor(...)`, `from_numpy`, or a module-level constant
used with device tensors: a blocking host-to-device copy at every use). On the CPU nothing waits, so `HostSyncs`
watches the dispatcher instead and records each of these with the project line that caused it:

    with HostSyncs() as syncs:
        main([...])
    syncs.events   # ["bincount in quantize.py:45", ...]

A tensor "made on the host" is one the dispatcher saw created from data (`aten.lift_fresh`), or one an op reads
that no op made while recording (a constant created at import time). Exempt, by design: PyTorch's optimizers
(their step counters are host tensors when not fused or capturable), the data loader (host batches, pinned and
copied asynchronously), `vqgan.train.loop.to_device` (host data copied from pinned memory without a wait) and
`GPT.cond_tokens`'s label check (on the host for CPU labels only; on CUDA it asserts on the device).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

PROJECT = str(Path(__file__).resolve().parents[1] / "vqgan")
aten = torch.ops.aten
# ops that make the host wait for the device on CUDA whatever their arguments
SYNC_OPS = {aten._local_scalar_dense, aten.nonzero, aten.masked_select, aten.bincount, aten.unique_consecutive,
            aten.unique_dim, aten._unique, aten._unique2, aten.equal, aten.is_nonzero}
INDEX_OPS = {aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_}  # a boolean index -> nonzero
MADE_ON_HOST = {aten.lift_fresh, aten.lift_fresh_copy}
EXEMPT_PATHS = ("torch/optim/", "torch/utils/data/")
EXEMPT_FUNCTIONS = ("to_device", "cond_tokens")
TENSOR_READS = ("tolist", "cpu", "numpy")  # not dispatched on a CPU tensor: patched instead


def _storage(t: torch.Tensor) -> int | None:
    if t.numel() == 0 or t.device.type == "meta":
        return None
    return t.untyped_storage().data_ptr()


def _site(depth: int = 2) -> str | None:
    """The first project frame of the stack as 'file:line', or None when the call is exempt."""
    frame, site = sys._getframe(depth), None
    while frame is not None:
        name = frame.f_code.co_filename.replace("\\", "/")
        if any(p in name for p in EXEMPT_PATHS):
            return None
        if site is None and name.startswith(PROJECT):
            if frame.f_code.co_name in EXEMPT_FUNCTIONS:
                return None
            site = f"{Path(name).name}:{frame.f_lineno} ({frame.f_code.co_name})"
        frame = frame.f_back
    return site or "outside the project"


class HostSyncs(TorchDispatchMode):
    """A dispatch mode that records, in `events`, every op or read that would stall the host on a GPU."""

    def __init__(self):
        super().__init__()
        self.events: list[str] = []
        self.made: set[int] = set()  # storages that some op made while recording
        self._patched: dict[str, object] = {}

    def _record(self, what: str, depth: int = 3) -> None:
        site = _site(depth)
        if site is not None:
            self.events.append(f"{what} in {site}")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func.overloadpacket
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        foreign = {_storage(t) for t in inputs} - self.made - {None}
        if packet in MADE_ON_HOST:
            self._record("a tensor made from host data")
            foreign = set()
        elif packet in SYNC_OPS:
            self._record(packet.__name__)
        else:
            if packet in INDEX_OPS and any(t.dtype in (torch.bool, torch.uint8) for t in inputs[1:]):
                self._record(f"{packet.__name__} with a boolean mask")
            if foreign:
                self._record(f"{packet.__name__} of a tensor made before the step (a host constant)")
        out = func(*args, **kwargs)
        for t in tree_flatten(out)[0]:
            # a view of a host constant is still the host constant
            if isinstance(t, torch.Tensor) and _storage(t) is not None and _storage(t) not in foreign:
                self.made.add(_storage(t))
        return out

    def __enter__(self):
        for name in TENSOR_READS:
            original = self._patched[name] = getattr(torch.Tensor, name)

            def read(t, *a, _original=original, _name=name, **k):
                self._record(f".{_name}()", depth=3)
                return _original(t, *a, **k)

            setattr(torch.Tensor, name, read)
        return super().__enter__()

    def __exit__(self, *exc):
        for name, original in self._patched.items():
            setattr(torch.Tensor, name, original)
        return super().__exit__(*exc)


def more(longer: list[str], shorter: list[str]) -> dict[str, int]:
    """The events `longer` has more often than `shorter`, with how many more."""
    from collections import Counter

    return dict(Counter(longer) - Counter(shorter))
