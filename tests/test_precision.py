"""vqgan.precision.resolve: `auto` follows the device a job runs on; bf16 asked for where it is emulated warns."""
from __future__ import annotations

import pytest
import torch

from vqgan import hardware, precision
from vqgan.precision import resolve


@pytest.fixture
def cpu_flags(monkeypatch):
    """Set the CPU's /proc/cpuinfo flags as vqgan.hardware reads them."""
    def set_flags(*flags: str):
        monkeypatch.setattr(hardware, "_cpuinfo", lambda: ("Test CPU", set(flags)))
    monkeypatch.delenv("VQGAN_HARDWARE", raising=False)
    return set_flags


@pytest.mark.parametrize("flags,want", [(("avx512f", "avx512_bf16"), "bf16"), (("amx_bf16",), "bf16"),
                                        (("avx512f", "avx2"), "fp32")])
def test_auto_on_a_cpu_follows_its_bf16_instructions(cpu_flags, flags, want):
    cpu_flags(*flags)
    assert resolve("auto", "cpu") == want


def test_vqgan_hardware_overrides_the_cpu_both_ways(cpu_flags, monkeypatch):
    cpu_flags("avx512_bf16")
    monkeypatch.setenv("VQGAN_HARDWARE", "cpu_bf16=no")
    assert resolve("auto", "cpu") == "fp32"
    cpu_flags("avx2")
    monkeypatch.setenv("VQGAN_HARDWARE", "cpu_bf16=yes")
    assert resolve("auto", "cpu") == "bf16"
    # the scheduler's keys are not this function's business: a job with its GPUs hidden must not fail on them
    monkeypatch.setenv("VQGAN_HARDWARE", "gpus=2,cpus=4,cpu_bf16=no")
    assert resolve("auto", "cpu") == "fp32"


@pytest.mark.parametrize("capability,want", [((8, 0), "bf16"), ((9, 0), "bf16"), ((7, 0), "fp32"), ((7, 5), "fp32")])
def test_auto_on_a_gpu_follows_its_compute_capability(cpu_flags, monkeypatch, capability, want):
    cpu_flags("avx512_bf16")  # the CPU's answer must not leak into the GPU's
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert resolve("auto", "cuda") == want
    assert resolve("auto", torch.device("cuda", 0)) == want


def test_explicit_values_are_kept_and_emulated_bf16_warns_once(cpu_flags, capsys):
    cpu_flags("avx2")
    assert resolve("fp32", "cpu") == "fp32"
    assert capsys.readouterr().err == ""
    assert resolve("bf16", "cpu", "vqgan.train.precision") == "bf16"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "vqgan.train.precision=bf16" in err and "emulated" in err
    assert resolve("bf16", "cpu", warn=False) == "bf16" and capsys.readouterr().err == ""
    cpu_flags("avx512_bf16")
    assert resolve("bf16", "cpu") == "bf16" and capsys.readouterr().err == ""  # native: nothing to say


def test_bf16_on_an_old_gpu_warns_where_torch_emulates_it_and_is_refused_where_it_cannot(cpu_flags, monkeypatch,
                                                                                         capsys):
    cpu_flags()
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert resolve("bf16", "cuda", "sample.precision") == "bf16"
    assert "Tesla V100" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    with pytest.raises(ValueError, match=r"^sample\.precision=bf16: Tesla V100 cannot run bf16; write auto or fp32$"):
        resolve("bf16", "cuda", "sample.precision")


def test_unknown_values_are_refused_and_no_is_now_fp32():
    with pytest.raises(ValueError, match=r"vqgan\.eval\.precision='no'.*write fp32"):
        resolve("no", "cpu", "vqgan.eval.precision")
    with pytest.raises(ValueError, match="'fp16'"):
        resolve("fp16", "cpu")  # inference: fp16 is not offered
    assert resolve("fp16", "cpu", allowed=(*precision.PRECISIONS, "fp16")) == "fp16"  # transformer training


def test_accelerate_gets_its_own_name_for_fp32():
    assert [precision.accelerate_name(p) for p in precision.RESOLVED] == ["no", "bf16", "fp16"]
