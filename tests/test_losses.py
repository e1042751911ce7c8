"""VQGAN losses: the discriminator schedule and detachment, the adaptive weight, foreground weighting, and LPIPS
weight resolution (offline: no real VGG weights exist here, so a random trunk stands in for the loading path)."""

import pytest
import torch
import torch.nn.functional as F

from vqgan.config.build import loss_config, vqgan_config
from vqgan.io.weights import VGG16_FILE, VGG16_URL, VGGWeightsNotFound, lpips_state_dict, resolve_vgg16_weights
from vqgan.models.losses import NLayerDiscriminator, VQLoss, foreground_mask, hinge_d_loss
from vqgan.models.lpips import LPIPS
from vqgan.models.vqgan import VQGAN

torch.set_num_threads(1)

TINY = vqgan_config(resolution=32, ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), z_channels=16,
                   n_codes=32, code_dim=8)


def no_lpips(**kw):
    return VQLoss(loss_config(perceptual_weight=0.0, disc_layers=2, disc_ch=16, **kw))


def batch(b=4, seed=0):
    return torch.rand(b, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_discriminator_is_not_run_or_trained_before_disc_start():
    loss = no_lpips(disc_start=5)
    calls = []
    loss.discriminator.register_forward_hook(lambda *a: calls.append(1))
    before = {k: v.clone() for k, v in loss.discriminator.state_dict().items()}  # incl. BatchNorm stats
    model = VQGAN(TINY)
    x = batch()
    xrec, qloss, _ = model(x)
    g, logs = loss.generator_loss(x, xrec, qloss, 4, model.last_layer)
    d, dlogs = loss.discriminator_loss(x, xrec, 4)
    assert not calls, "D must not even run before disc_start"
    assert not d.requires_grad and d.item() == 0.0 and logs["lambda"] == 0.0 and logs["g_adv"] == 0.0
    for k, v in loss.discriminator.state_dict().items():
        assert torch.equal(v, before[k]), k
    # from disc_start on, both terms are live
    g, logs = loss.generator_loss(x, xrec, qloss, 5, model.last_layer)
    d, _ = loss.discriminator_loss(x, xrec, 5)
    assert calls and d.requires_grad and logs["lambda"] > 0


def test_discriminator_loss_does_not_reach_the_generator():
    loss = no_lpips(disc_start=0)
    model = VQGAN(TINY)
    x = batch()
    xrec, _, _ = model(x)
    d, _ = loss.discriminator_loss(x, xrec, step=0)  # xrec passed *with* its graph on purpose
    d.backward()
    assert all(p.grad is None for p in model.parameters()), "D's loss leaked into the generator"
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in loss.discriminator.parameters())


def test_generator_loss_terms_and_weights():
    loss = no_lpips(disc_start=10, rec_weight=2.0, codebook_weight=0.5)
    x, xrec = batch(seed=0), batch(seed=1)
    qloss = torch.tensor(0.3)
    g, logs = loss.generator_loss(x, xrec, qloss, 0, last_layer=None)
    expected = 2.0 * (x - xrec).abs().mean() + 0.5 * 0.3
    assert g.item() == pytest.approx(expected.item(), rel=1e-6)
    assert logs["rec"] == pytest.approx((x - xrec).abs().mean().item(), rel=1e-6)
    l2 = no_lpips(disc_start=10, rec="l2")
    assert l2.generator_loss(x, xrec, qloss, 0, None)[1]["rec"] == pytest.approx(F.mse_loss(xrec, x).item(), rel=1e-6)


def test_adaptive_weight_balances_gradient_norms_and_is_clamped():
    loss = no_lpips(disc_start=0, disc_weight=0.8)
    w = torch.randn(3, 3, requires_grad=True)
    nll = (w * 3.0).sum()          # gradient norm 3 * sqrt(9) = 9
    g_adv = (w * 0.5).sum()        # gradient norm 0.5 * 3 = 1.5
    lam = loss.adaptive_weight(nll, g_adv, w)
    assert lam.item() == pytest.approx(9.0 / (1.5 + 1e-4) * 0.8, rel=1e-5)
    assert not lam.requires_grad
    capped = no_lpips(disc_start=0, disc_weight=1.0, adaptive_weight_max=2.0)
    assert capped.adaptive_weight(nll, g_adv, w).item() == pytest.approx(2.0)
    with torch.no_grad():
        assert loss.adaptive_weight(w.sum(), w.sum(), w).item() == 0.0  # evaluation: no graph, no GAN term


def test_patchgan_shapes_and_hinge_loss():
    d = NLayerDiscriminator(3, 16, 3)
    assert d(torch.randn(2, 3, 64, 64)).shape == (2, 1, 6, 6)
    # perfect separation beyond the margins costs nothing; logits of 0 cost exactly 1
    assert hinge_d_loss(torch.full((4,), 2.0), torch.full((4,), -2.0)).item() == 0.0
    assert hinge_d_loss(torch.zeros(4), torch.zeros(4)).item() == pytest.approx(1.0)


def test_foreground_mask_empty_for_constant_video_and_finds_a_moving_sprite():
    frames = torch.full((6, 3, 16, 16), -0.5)
    assert foreground_mask(frames).sum() == 0
    for t in range(6):  # a 2x2 white sprite moving right
        frames[t, :, 5:7, 2 * t:2 * t + 2] = 1.0
    mask = foreground_mask(frames)
    assert mask.shape == (6, 1, 16, 16)
    assert mask[3, 0, 5:7, 6:8].all() and mask.sum() == 6 * 4, "exactly the sprite's pixels are foreground"


def test_foreground_weight_raises_the_cost_of_missing_sprites():
    frames = torch.full((6, 3, 16, 16), -0.5)
    for t in range(6):
        frames[t, :, 5:7, 2 * t:2 * t + 2] = 1.0
    background_only = torch.full_like(frames, -0.5)  # the "static maze, no sprites" failure of issue #8
    plain = no_lpips(foreground_weight=0.0).reconstruction(frames, background_only)
    weighted = no_lpips(foreground_weight=9.0).reconstruction(frames, background_only)
    assert plain.item() == pytest.approx((frames - background_only).abs().mean().item())
    assert weighted.item() == pytest.approx(10 * plain.item(), rel=1e-5)  # all the error sits on the sprites


def test_object_weight_multiplies_the_error_inside_the_boxes_only():
    x = torch.zeros(2, 3, 8, 8)
    objects = torch.zeros(2, 1, 8, 8)
    objects[0, 0, 2:4, 2:4] = 1
    outside, inside = x.clone(), x.clone()
    outside[1, :, 0, 0] = 1.0                       # error where no object is
    inside[0, :, 3, 3] = 1.0                        # the same error inside a box
    loss, plain = no_lpips(object_weight=9.0), no_lpips()
    assert loss.reconstruction(x, outside, objects=objects).item() == pytest.approx(
        plain.reconstruction(x, outside).item())
    assert loss.reconstruction(x, inside, objects=objects).item() == pytest.approx(
        10 * plain.reconstruction(x, inside).item())
    assert plain.reconstruction(x, inside, objects=objects).item() == plain.reconstruction(x, inside).item()
    with pytest.raises(ValueError, match="object_weight > 0 needs"):
        loss.reconstruction(x, inside)
    assert loss_config({"object_ignore": ["brick", "ball"]}).object_ignore == ("brick", "ball")


# --- LPIPS weight resolution -----------------------------------------------------------------------------------
@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home" / "hub" / "checkpoints"


def test_missing_vgg_weights_stop_with_instructions(tmp_path, empty_hub):
    with pytest.raises(VGGWeightsNotFound) as err:
        lpips_state_dict(tmp_path / "weights")
    msg = str(err.value)
    assert VGG16_URL in msg and str(tmp_path / "weights" / VGG16_FILE) in msg
    assert "perceptual_weight: 0" in msg and "397923af" in msg


def test_perceptual_weight_without_lpips_module_is_refused():
    with pytest.raises(ValueError, match="perceptual_weight"):
        VQLoss(loss_config(perceptual_weight=1.0))


def test_hub_cache_is_searched_after_weights_dir(tmp_path, empty_hub):
    empty_hub.mkdir(parents=True)
    (empty_hub / VGG16_FILE).write_bytes(b"x")
    assert resolve_vgg16_weights(tmp_path / "weights") == empty_hub / VGG16_FILE
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / VGG16_FILE).write_bytes(b"y")
    assert resolve_vgg16_weights(tmp_path / "weights") == tmp_path / "weights" / VGG16_FILE


@pytest.fixture(scope="module")
def random_vgg_dir(tmp_path_factory):
    """torchvision-named VGG16 file holding random tensors of the real shapes (the whole `features` trunk)."""
    import torchvision

    with torch.device("meta"):
        shapes = torchvision.models.vgg16(weights=None).state_dict()
    g = torch.Generator().manual_seed(0)
    state = {k: torch.randn(v.shape, generator=g) * 0.05 for k, v in shapes.items() if k.startswith("features.")}
    d = tmp_path_factory.mktemp("weights")
    torch.save(state, d / VGG16_FILE)
    return d, state


def load_lpips(weights_dir) -> LPIPS:
    lp = LPIPS()
    lp.load_state_dict(lpips_state_dict(weights_dir, verify=False))
    return lp


def test_vgg_weights_load_from_weights_dir(random_vgg_dir, empty_hub):
    weights_dir, state = random_vgg_dir
    with pytest.raises(ValueError, match="sha256"):
        lpips_state_dict(weights_dir)  # a random file is not torchvision's VGG16: refused by default
    lp = load_lpips(weights_dir)
    assert torch.equal(lp.features[0].weight, state["features.0.weight"])
    assert torch.equal(lp.features[28].weight, state["features.28.weight"])
    heads = lp.heads[0].weight
    assert heads.abs().sum() > 0 and not heads.requires_grad, "the shipped linear heads are loaded and frozen"
    x, y = batch(2, seed=0), batch(2, seed=1)
    d_same, d_diff = lp(x, x), lp(x, y)
    assert d_same.shape == (2,) and torch.allclose(d_same, torch.zeros(2), atol=1e-6) and (d_diff > 0).all()
    lp.train()
    assert not lp.training, "LPIPS must stay in eval mode inside a training loss"


def test_lpips_matches_the_reference_package(random_vgg_dir, empty_hub):
    """Our LPIPS module computes what `lpips.LPIPS(net='vgg')` computes, given the same trunk and heads."""
    lpips_pkg = pytest.importorskip("lpips")
    weights_dir, state = random_vgg_dir
    ours = load_lpips(weights_dir)
    ref = lpips_pkg.LPIPS(pretrained=True, net="vgg", version="0.1", pnet_rand=True, verbose=False).eval()
    ref.net.load_state_dict({name: state[f"features.{name.split('.', 1)[1]}"] for name in ref.net.state_dict()})
    x, y = batch(3, seed=2), batch(3, seed=3)
    with torch.no_grad():
        assert torch.allclose(ours(x, y), ref(x, y).flatten(), rtol=1e-4, atol=1e-6)


def test_perceptual_term_enters_the_generator_loss_with_gradient(random_vgg_dir, empty_hub):
    weights_dir, _ = random_vgg_dir
    loss = VQLoss(loss_config(perceptual_weight=0.5, disc_start=10), load_lpips(weights_dir))
    x = batch(2, seed=0)
    xrec = batch(2, seed=1).requires_grad_(True)
    g, logs = loss.generator_loss(x, xrec, torch.tensor(0.0), 0, None)
    assert logs["perceptual"] > 0
    assert g.item() == pytest.approx(float(logs["rec"] + 0.5 * logs["perceptual"]), rel=1e-5)
    g.backward()
    assert xrec.grad is not None and xrec.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.perceptual.parameters()), "LPIPS is frozen"


@pytest.mark.parametrize("n_layers", [1, 2, 3])
def test_discriminator_min_input_is_the_smallest_side_with_a_logit(n_layers):
    d = NLayerDiscriminator(3, 4, n_layers).eval()
    n = NLayerDiscriminator.min_input(n_layers)
    assert d(torch.zeros(1, 3, n, n)).shape[-1] == 1
    with pytest.raises(RuntimeError):
        d(torch.zeros(1, 3, n - 1, n - 1))
