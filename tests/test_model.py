"""VQGAN model: shapes, config round-trip, index encode/decode, one optimisation step, checkpoints."""

import ast
import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vqgan.config.build import vqgan_config
from vqgan.io.checkpoint import CheckpointError, load_vqgan, save_model
from vqgan.models.vqgan import VQGAN, VQGANConfig

torch.set_num_threads(1)

TINY = dict(resolution=32, ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,), z_channels=16,
            n_codes=32, code_dim=8)


def images(b=2, res=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, res, res, generator=g) * 2 - 1


@pytest.mark.parametrize("overrides", [
    dict(),
    dict(quantizer="taming", code_dim=16),
    dict(ch_mult=(1, 1, 2), attn_resolutions=(8,), num_res_blocks=2),
    dict(resolution=16, ch_mult=(1,), attn_resolutions=()),
    dict(ema=True, restart_dead_after=3, kmeans_init=True),
])
def test_shapes_for_several_configs(overrides):
    cfg = vqgan_config(**{**TINY, **overrides})
    model = VQGAN(cfg)
    x = images(2, cfg.resolution)
    xrec, qloss, stats = model(x)
    h = cfg.resolution // 2 ** (len(cfg.ch_mult) - 1)
    assert cfg.downsample == 2 ** (len(cfg.ch_mult) - 1) and cfg.grid == h
    assert xrec.shape == x.shape
    assert qloss.ndim == 0
    assert stats["indices"].shape == (2, h, h) and stats["indices"].dtype == torch.long
    assert 0 < float(stats["usage"]) <= 1 and float(stats["perplexity"]) >= 1
    idx = model.encode_to_indices(x)
    assert idx.shape == (2, h, h)
    assert model.decode_indices(idx).shape == x.shape
    assert model.last_layer is model.decoder.conv_out.weight


def test_index_path_matches_forward_in_eval_mode():
    model = VQGAN(vqgan_config(**TINY)).eval()
    x = images()
    with torch.no_grad():
        xrec, _, stats = model(x)
        idx = model.encode_to_indices(x)
        assert torch.equal(idx, stats["indices"])
        assert torch.allclose(model.decode_indices(idx), xrec, atol=1e-5)


def test_channels_last_and_bf16_autocast_agree_with_fp32():
    model = VQGAN(vqgan_config(**TINY)).eval()
    x = images()
    with torch.no_grad():
        ref, _, stats = model(x)
        cl = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))[0]
        assert torch.allclose(cl, ref, atol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            idx_bf = model.encode_to_indices(x)
            dec_bf = model.decode_indices(stats["indices"])
        ref_dec = model.decode_indices(stats["indices"])
    # bf16 may flip a near-tie code choice now and then, but not many
    assert (idx_bf == stats["indices"]).float().mean() > 0.9
    assert (dec_bf.float() - ref_dec).abs().mean() < 0.02


def test_activations_stay_nchw_contiguous():
    """A channels-last view leaking out of the quantizer or attention made CPU GroupNorm ~10x slower in bf16."""
    model = VQGAN(vqgan_config(**TINY))
    seen = []
    for m in model.modules():
        if isinstance(m, torch.nn.GroupNorm):
            m.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].is_contiguous()))
    model(images())
    assert seen and all(seen)


def test_one_optimisation_step_lowers_reconstruction_loss():
    torch.manual_seed(0)
    model = VQGAN(vqgan_config(**TINY))
    x = images(4)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def loss_fn():
        xrec, qloss, _ = model(x)
        return F.l1_loss(xrec, x), qloss

    rec0, q0 = loss_fn()
    opt.zero_grad()
    (rec0 + q0).backward()
    opt.step()
    with torch.no_grad():
        rec1, _ = loss_fn()
    assert rec1.item() < rec0.item(), f"reconstruction loss {rec0.item():.4f} -> {rec1.item():.4f}"


def test_save_and_load_give_identical_outputs(tmp_path):
    cfg = vqgan_config(**{**TINY, "quantizer": "taming", "ema": True, "restart_dead_after": 5})
    model = VQGAN(cfg)
    model(images())  # training-mode forward: moves EMA buffers and dead-code counters
    model.eval()
    save_model(model, tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_vqgan(tmp_path / "ckpt", map_location="cpu").eval()
    assert loaded.cfg == cfg
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    x = images(seed=1)
    with torch.no_grad():
        assert torch.equal(model(x)[0], loaded(x)[0])


def test_load_names_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="config.json"):
        load_vqgan(tmp_path)


def test_config_round_trips_through_json_and_accepts_nested_form():
    cfg = vqgan_config(**TINY)
    again = VQGANConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and isinstance(again.ch_mult, tuple)
    nested = vqgan_config(32, {"model": {"ch": 16, "ch_mult": [1, 2]}, "quantizer": {"kind": "taming", "n_codes": 64}})
    assert nested.quantizer == "taming" and nested.ch_mult == (1, 2) and nested.n_codes == 64


@pytest.mark.parametrize("bad, message", [
    ({"chmult": [1, 2]}, "unknown VQGAN config keys \\['chmult'\\]"),
    ({"quantizer": "vq"}, "quantizer='vq'"),
    ({"resolution": 30, "ch_mult": [1, 2, 2]}, "not divisible by f=4"),
])
def test_bad_config_is_rejected_with_the_key_named(bad, message):
    with pytest.raises(ValueError, match=message):
        vqgan_config(**{"resolution": 32, **bad})


def test_no_pickle_loads_without_weights_only():
    root = Path(__file__).resolve().parents[1]
    offenders = []
    for path in [*root.glob("vqgan/**/*.py"), *root.glob("atari_collect/**/*.py"), *root.glob("bench/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"):
                safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                           for k in node.keywords)
                if not safe:
                    offenders.append(f"{path.relative_to(root)}:{node.lineno}")
    assert not offenders, f"torch.load without weights_only=True: {offenders}"


def test_subpixel_upsample_equals_nearest_upsample_then_conv():
    from vqgan.models.vqgan import Upsample

    torch.manual_seed(0)
    up = Upsample(8)
    x = torch.randn(2, 8, 5, 7, requires_grad=True)
    ref = up.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))  # the seed's Upsample
    out = up(x)
    assert out.shape == ref.shape == (2, 8, 10, 14)
    assert torch.allclose(out, ref, atol=1e-5)
    g = torch.randn_like(ref)
    ours = torch.autograd.grad(out, [x, up.conv.weight, up.conv.bias], g)
    seed = torch.autograd.grad(ref, [x, up.conv.weight, up.conv.bias], g)
    for a, b in zip(ours, seed):
        assert torch.allclose(a, b, atol=1e-4)


def test_upsample_taps_move_with_the_model_and_stay_out_of_checkpoints(tmp_path):
    """The sub-pixel taps are a buffer (on the model's device, no host-to-device copy per forward) that checkpoints
    leave out: the saved keys are the seed's, so existing weights and the state hash are unchanged."""
    from safetensors import safe_open

    model = VQGAN(vqgan_config(**TINY)).to(torch.float64)
    taps = [m.phase_taps for m in model.modules() if type(m).__name__ == "Upsample"]
    assert taps and all(t.dtype == torch.float64 for t in taps)  # moved (and cast) by .to like the weights
    save_model(model, tmp_path / "ckpt")
    with safe_open(str(tmp_path / "ckpt" / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert keys == set(model.state_dict()) and not any("phase_taps" in k for k in keys)
    assert {k for k in keys if "upsample" in k} == {"decoder.up.0.upsample.conv.weight", "decoder.up.0.upsample.conv.bias"}


def test_corrupt_weights_are_reported_with_their_path(tmp_path):
    save_model(VQGAN(vqgan_config(**TINY)), tmp_path / "ckpt")
    (tmp_path / "ckpt" / "model.safetensors").write_bytes(b"\x00" * 7)  # what a disk-full or a bad copy leaves
    with pytest.raises(CheckpointError, match=r"ckpt/model\.safetensors: cannot load"):
        load_vqgan(tmp_path / "ckpt")


def test_saved_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        save_model(VQGAN(vqgan_config(**TINY)), tmp_path / "ckpt")
    finally:
        os.umask(old)
    for name in ("config.json", "model.safetensors"):
        assert (tmp_path / "ckpt" / name).stat().st_mode & 0o777 == 0o644, name
