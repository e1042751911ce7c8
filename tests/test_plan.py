"""The GPU plan: vqgan/memory.py's formula against the fake-tensor measurement (vqgan/measure.py), the measurement
against a real step, the workflow's refusal of a training that cannot fit its GPUs, and the SLURM profile asking
for what the plan says (a dry run: no cluster needed)."""
from __future__ import annotations

import re

import pytest
import torch
import yaml
from conftest import REPO, run_snakemake

from vqgan import memory as M
from vqgan.config.build import gpt_config, loss_config, vqgan_config
from vqgan.config.schema import deep_merge, defaults
from vqgan.measure import SavedBytes, affine, autocast, fake_mode, vqgan_step
from vqgan.models.gpt import GPT
from vqgan.models.losses import VQLoss
from vqgan.models.lpips import LPIPS
from vqgan.models.vqgan import VQGAN

PAPER = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
SMALL = {"model": dict(ch=32, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[32], z_channels=64),
         "quantizer": dict(code_dim=64, n_codes=256), "loss": dict(disc_start=0)}


def section(over: dict) -> dict:
    return deep_merge(defaults("vqgan"), over)


@pytest.fixture(scope="module")
def lpips():
    return LPIPS()  # random weights: the shapes are what counts


@pytest.mark.parametrize("res, over", [(256, PAPER["vqgan"]), (64, SMALL)], ids=["paper", "small"])
def test_vqgan_formula_matches_the_fake_measurement(lpips, res, over):
    sec = section(over)
    with fake_mode():
        model, loss = VQGAN(vqgan_config(res, sec)), VQLoss(loss_config(sec["loss"]), lpips)
        cost = affine(vqgan_step(model, loss, res, "bf16", True))
    assert M.vqgan_params(res, sec) == sum(p.numel() for p in model.parameters())
    assert M.disc_params(sec["loss"]) == sum(p.numel() for p in loss.discriminator.parameters())
    assert M.LPIPS_PARAMS == sum(p.numel() for p in lpips.parameters())
    assert M.vqgan_saved(res, sec, True) == pytest.approx(cost.saved_per_sample, rel=0.03)
    if res == 256:  # the number: ~1.43 GiB per 256 px image
        assert cost.saved_per_sample / M.GIB == pytest.approx(1.43, abs=0.02)


def test_gpt_formula_matches_the_fake_measurement():
    from vqgan.measure import gpt_step

    m = PAPER["transformer"]["model"]
    with fake_mode():
        model = GPT(gpt_config(1024, 6, 256, m))
        cost = affine(gpt_step(model, 256, "bf16"))
    assert M.gpt_params(m["n_layer"], m["n_embd"], 1024, 256, 6) == sum(p.numel() for p in model.parameters())
    assert M.gpt_saved(m["n_layer"], m["n_embd"], 1024, 256) == pytest.approx(cost.saved_per_sample, rel=0.03)
    assert cost.flops_per_sample == pytest.approx(6 * 304e6 * 256, rel=0.05)  # 6 N T for a 304M model


def test_fake_measurement_equals_a_real_step_and_the_peak_bounds_it():
    # 64 px, ch 32, 4 images: the same saved bytes on real tensors as on fake ones, and the live memory of a real
    # steady-state step (Adam's moments exist) stays under the formula's peak and above its parts without margin
    from torch.distributed._tools.mem_tracker import MemTracker

    # (no LPIPS here: the memory tracker's hooks refuse a frozen module fed tensors without gradient)
    sec, res, b = section({**SMALL, "loss": {"disc_start": 0, "perceptual_weight": 0.0}}), 64, 4
    with fake_mode():
        fake = affine(vqgan_step(VQGAN(vqgan_config(res, sec)), VQLoss(loss_config(sec["loss"])), res, "bf16",
                                 True)).saved(b)
    torch.manual_seed(0)
    model, loss = VQGAN(vqgan_config(res, sec)), VQLoss(loss_config(sec["loss"]))
    opt = torch.optim.Adam([*model.parameters(), *loss.discriminator.parameters()])
    x = torch.rand(b, 3, res, res) * 2 - 1

    def step():
        with autocast("bf16"):
            xrec, q, _ = model(x)
            g, _ = loss.generator_loss(x, xrec, q, 0, last_layer=model.last_layer)
        g.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    with fake_mode(fake=False):
        step()  # Adam's moments now exist
        with SavedBytes([*model.parameters(), *loss.parameters()]) as saved, autocast("bf16"):
            model(x)[0].float().mean()
        tracker = MemTracker()
        tracker.track_external(model, opt, loss)
        with tracker:
            step()
    peak = sum(tracker.get_tracker_snapshot("peak")[torch.device("cpu")].values()) / 2  # 'Total' + the parts
    pred = M.vqgan_peak({**sec, "train": {**sec["train"], "batch_size": b}}, res, 1)
    assert 0.9 * fake < saved.total <= fake  # the VQGAN alone: all the fake G step saves but D's and the loss's
    # the workspace margin is CUDA's (context, cuDNN): left out on the CPU
    assert 0.75 * (pred.static + pred.activations) < peak < pred.static + pred.activations * (1 + M.ACT_MARGIN)


def _dry(*args: str, check: bool = True):
    return run_snakemake("-n", "results/fid_table.csv", *args, "--configfile", "config/paper.yaml", check=check,
                         timeout=300)


def test_a_training_that_cannot_fit_its_gpus_is_refused_naming_the_key():
    # profiles/slurm gives train_vqgan one GPU of 80 GB: the paper's 64 images do not fit it
    proc = _dry("--workflow-profile", "profiles/slurm", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Job stats" not in proc.stdout
    assert re.search(r"config key vqgan\.train\.grad_accum \(dataset coco256, variant default\): train_vqgan needs "
                     r"1\d\d GiB per GPU .* set grad_accum to 2 or more", out), out[-3000:]
    # the same on a card that holds it, or with two GPUs' worth of accumulation: accepted
    _dry("--set-resources", "train_vqgan:gpu=1", "train_vqgan:gpu_mem_gib=141")


def test_the_paper_profile_is_the_slurm_profile_but_for_train_vqgan():
    def load(name):
        return yaml.safe_load((REPO / "profiles" / name / "config.yaml").read_text())

    base, paper = load("slurm"), load("slurm-paper")
    for prof in (base, paper):
        del prof["set-resources"]["train_vqgan"], prof["set-threads"]["train_vqgan"]
    assert paper == base


def test_the_paper_profile_asks_for_what_the_plan_says():
    proc = _dry("--workflow-profile", "profiles/slurm-paper")
    res = dict(re.findall(r"^rule (\w+):.*?^\s+resources: (.*?)$", proc.stdout, re.S | re.M))
    vq = dict(kv.split("=", 1) for kv in res["train_vqgan"].split(", "))
    assert (vq["gpu"], vq["nodes"], vq["gpu_mem_gib"]) == ("8", "1", "80")
    prof = yaml.safe_load((REPO / "profiles" / "slurm-paper" / "config.yaml").read_text())["set-resources"]
    assert int(vq["mem_mb"]) >= 8 * 4 * 1024  # HOST_GIB per process (bench/plan.py) x 8 on the node
    sec = section({**PAPER["vqgan"], "loss": {**PAPER["vqgan"]["loss"]}})
    peak = M.vqgan_peak(sec, 256, int(vq["gpu"]))
    assert M.fits(peak, 80) and peak.total / M.GIB < 76
    assert not M.fits(M.vqgan_peak(sec, 256, 1), 80)  # the out-of-memory: what the profile avoids
    assert prof["train_vqgan"]["runtime"] == "360 * attempt"
    assert re.search(r"vqgan\.eval\.fid .*--workers 4 ", proc.stdout), "fid on a GPU: its threads decode PNGs"
