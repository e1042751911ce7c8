"""The recorder of what would stall a GPU (tests/host_syncs.py) catches each kind of host sync on the CPU."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from host_syncs import HostSyncs

import vqgan.models.quantize as q

CONSTANT = torch.ones(3)


def _step(kind: str, x: torch.Tensor):
    """Each `kind` as project code would write it (the recorder attributes events to vqgan/ files only)."""
    code = {
        "item": "x.sum().item()",
        "bool": "bool(x.sum() > 0)",
        "tolist": "x.tolist()",
        "cpu": "x.cpu()",
        "bincount": "torch.bincount(x.long().clamp(0, 2), minlength=3)",
        "nonzero": "torch.nonzero(x)",
        "mask": "x[x > 0]",
        "tensor": "x + torch.tensor([1.0, 2.0, 3.0])",
        "numpy": "x + torch.from_numpy(np.ones(3, np.float32))",
        "constant": "x * CONSTANT",
        "fine": "torch.where(x > 0, x, torch.zeros_like(x)).sum() * 2.0",
    }[kind]
    # compiled as if it lived in a project file, so the recorder attributes it there
    return eval(compile(code, q.__file__, "eval"), {"torch": torch, "np": np, "x": x, "CONSTANT": CONSTANT})


@pytest.mark.parametrize("kind", ["item", "bool", "tolist", "cpu", "bincount", "nonzero", "mask", "tensor", "numpy",
                                  "constant"])
def test_each_kind_of_host_sync_is_recorded(kind):
    with HostSyncs() as syncs:
        x = torch.randn(3) + 1
        _step(kind, x)
    assert len(syncs.events) == 1 and "quantize.py" in syncs.events[0], syncs.events


def test_device_only_work_records_nothing():
    with HostSyncs() as syncs:
        _step("fine", torch.randn(3))
    assert syncs.events == []


def test_a_host_constant_is_recorded_at_every_use_even_through_views():
    counts = []
    for uses in (1, 3):
        with HostSyncs() as syncs:
            x = torch.randn(3)
            for _ in range(uses):
                eval(compile("CONSTANT.view(3, 1).t() * x", q.__file__, "eval"), {"CONSTANT": CONSTANT, "x": x})
        counts.append(len(syncs.events))
    assert counts[0] > 0 and counts[1] == 3 * counts[0], counts
