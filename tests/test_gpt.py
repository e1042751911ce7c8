"""The GPT over codes: causality, conditioning, and that the fast sampler is exactly the slow one."""
from __future__ import annotations

import types
import warnings

import pytest
import torch

from vqgan.config.build import gpt_config
from vqgan.io.checkpoint import CheckpointError, load_gpt, save_model
from vqgan.models import gpt as gpt_module
from vqgan.models.gpt import GPT, KVCache, _can_prepack, filter_logits, generate_reference, pick_next

torch.set_num_threads(1)


def tiny(seed=0, **kw) -> GPT:
    torch.manual_seed(seed)
    cfg = dict(vocab_size=40, n_classes=3, block_size=24, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
    cfg.update(kw)
    return GPT(gpt_config(**cfg))


@pytest.fixture(scope="module")
def overfit():
    """A tiny GPT trained to memorise one code sequence per class (labels 0..2) and a 4th with no class."""
    torch.manual_seed(0)
    model = tiny(block_size=16, n_embd=48)
    codes = torch.randint(0, 40, (4, 16))
    labels = torch.tensor([0, 1, 2, -1])
    opt = model.configure_optimizers(weight_decay=0.0, lr=3e-3)
    losses = []
    for _ in range(150):
        _, loss = model(codes[:, :-1], labels, targets=codes)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model.eval(), codes, labels, losses


@pytest.mark.parametrize(
    "settings",
    [
        dict(temperature=0.0),
        dict(temperature=1.0),
        dict(temperature=0.7, top_k=8),
        dict(temperature=1.3, top_p=0.8),
        dict(temperature=1.0, top_k=20, top_p=0.9),
        dict(temperature=1.0, top_k=20, guidance=2.5),
    ],
    ids=["greedy", "sampled", "top_k", "top_p", "top_k+top_p", "guided"],
)
def test_cached_sampler_emits_exactly_the_no_cache_reference_tokens(settings):
    # float64 so that the two code paths' rounding differences (~1e-16) cannot tip a draw
    model = tiny().double().eval()
    labels = torch.tensor([0, 1, 2, -1, 1])
    fast = model.generate(labels, 5, generator=torch.Generator().manual_seed(7), **settings)
    slow = generate_reference(model, labels, 5, generator=torch.Generator().manual_seed(7), **settings)
    assert fast.shape == (5, 24) and fast.dtype == torch.long
    assert torch.equal(fast, slow), f"cached sampler diverged from the reference at {(fast != slow).nonzero()[:5]}"


@pytest.mark.parametrize("packed", [False, True], ids=["plain", "packed"])
def test_cached_step_logits_match_full_forward_in_float32(packed):
    # packed: the weights as `generate` uses them (oneDNN-prepacked on CPU, float32 head)
    model = tiny().eval()
    codes = torch.randint(0, 40, (3, 23))
    labels = torch.tensor([2, -1, 0])
    full, _ = model(codes, labels)
    cache = KVCache(model.config, 3, "cpu", torch.float32, model=model if packed else None)
    if packed and _can_prepack(model.transformer.wte.weight):
        assert len(cache.packed) == 4 * model.config.n_layer, "every Linear should be packed"
    tok = model.cond_tokens(labels, 3, "cpu")
    with torch.no_grad():
        for t in range(24):
            step = model.forward_step(tok, cache)
            torch.testing.assert_close(step, full[:, t], atol=1e-5, rtol=1e-4, msg=f"position {t}")
            tok = codes[:, t : t + 1] if t < 23 else None


def test_sampling_is_deterministic_for_a_seed_and_varies_across_seeds():
    model = tiny().eval()
    run = lambda seed: model.generate(None, 4, generator=torch.Generator().manual_seed(seed), top_k=30)  # noqa
    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))


def test_changing_a_future_code_never_changes_earlier_logits():
    model = tiny().eval()
    codes = torch.randint(0, 40, (2, 23))
    labels = torch.tensor([1, -1])
    base, _ = model(codes, labels)
    for j in (0, 7, 22):
        changed = codes.clone()
        changed[:, j] = (changed[:, j] + 1 + torch.arange(2)) % 40
        out, _ = model(changed, labels)
        # logits[:, t] sees codes[:, :t]: positions 0..j must not move, position j+1 must
        torch.testing.assert_close(out[:, : j + 1], base[:, : j + 1], msg=f"code {j} leaked into the past")
        assert not torch.allclose(out[:, j + 1], base[:, j + 1]), f"code {j} had no effect at position {j + 1}"


def test_conditioning_tokens_live_outside_the_code_vocabulary():
    model = tiny()
    c = model.config
    assert model.transformer.wte.weight.shape[0] == c.vocab_size + c.n_classes + 1
    logits, _ = model(torch.randint(0, 40, (2, 5)), torch.tensor([0, 2]))
    assert logits.shape == (2, 6, c.vocab_size)  # the head can only emit codes
    assert model.cond_tokens(torch.tensor([0, 2, -1]), 3, "cpu").view(-1).tolist() == [40, 42, 43]
    assert model.cond_tokens(None, 2, "cpu").view(-1).tolist() == [43, 43]
    with pytest.raises(ValueError, match="labels must be in"):
        model.cond_tokens(torch.tensor([3]), 1, "cpu")
    with pytest.raises(ValueError, match="exceed block_size"):
        model(torch.zeros(1, 24, dtype=torch.long))


def test_weight_decay_applies_to_linear_weight_matrices_only():
    model = tiny()
    opt = model.configure_optimizers(weight_decay=0.1, lr=1e-3)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in decayed}
    assert names and all(n.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")) for n in names), names
    assert "transformer.wte.weight" not in names and "transformer.wpe.weight" not in names
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


def test_top_k_and_top_p_keep_the_right_tokens():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = lambda **kw: torch.isfinite(filter_logits(logits, **kw))[0].tolist()  # noqa: E731
    assert kept(top_k=2) == [True, True, False, False]
    assert kept(top_p=0.4) == [True, False, False, False]
    assert kept(top_p=0.7) == [True, True, False, False]  # 0.5 < 0.7: the second token is needed
    assert kept(top_p=0.9) == [True, True, True, False]
    assert kept(top_k=3, top_p=0.6) == [True, True, False, False]


def test_tiny_transformer_overfits_a_small_code_set(overfit):
    model, codes, labels, losses = overfit
    assert losses[-1] < 0.05, f"loss went {losses[0]:.2f} -> {losses[-1]:.3f}; a 4-sequence set should be memorised"
    greedy = model.generate(labels, 4, temperature=0.0)
    assert torch.equal(greedy, codes)


def test_class_conditioning_changes_the_samples(overfit):
    model, codes, labels, _ = overfit
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    per_class = [model.generate(torch.full((3,), c), 3, temperature=1.0, generator=g()) for c in (0, 1, 2)]
    for c in range(3):
        # same seed, only the class differs: each class reproduces its own memorised sequence
        assert (per_class[c] == codes[c]).float().mean() > 0.9, f"class {c} does not steer the samples"
    assert not torch.equal(per_class[0], per_class[1])


def test_generate_refuses_training_mode():
    with pytest.raises(AssertionError, match="eval"):
        tiny().train().generate(None, 1)


def test_save_and_load_round_trip(tmp_path):
    model = tiny().eval()
    save_model(model, tmp_path / "m")
    loaded = load_gpt(tmp_path / "m").eval()
    assert loaded.config == model.config
    idx = torch.randint(0, 40, (2, 7))
    torch.testing.assert_close(loaded(idx, torch.tensor([0, -1]))[0], model(idx, torch.tensor([0, -1]))[0])
    with pytest.raises(CheckpointError, match="config.json is missing"):
        load_gpt(tmp_path / "nothing")


def test_bfloat16_weights_sample_valid_codes():
    model = tiny().eval().to(torch.bfloat16)
    out = model.generate(torch.tensor([0, 1]), 2, top_k=10, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 24) and int(out.min()) >= 0 and int(out.max()) < 40


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_greedy_tokens_match_the_reference_sampler_on_the_fast_path(dtype):
    # the float64 test above cannot reach the prepacked oneDNN path; this one does (float32 / bf16 on CPU)
    model = tiny(block_size=32, n_embd=64, n_layer=3).eval().to(dtype)
    labels = torch.tensor([0, 1, 2, -1])
    fast = model.generate(labels, 4, temperature=0.0)
    slow = generate_reference(model, labels, 4, temperature=0.0)
    if dtype == torch.float32:
        assert torch.equal(fast, slow), f"diverged at {(fast != slow).nonzero()[:5]}"
    else:
        # bf16: the fast path's head is float32 while the reference's logits are bf16, so a near-tie may resolve
        # differently; most tokens must still agree
        assert (fast == slow).float().mean() > 0.9


def _raise(*args, **kwargs):
    raise RuntimeError("oneDNN: unsupported here")


@pytest.mark.parametrize("broken", ["ops_missing", "pack_raises", "matmul_raises"])
def test_sampler_falls_back_to_plain_linear_when_onednn_packing_fails(monkeypatch, broken):
    # the private oneDNN ops may be absent or broken in another torch build: sampling must then take plain
    # F.linear and emit exactly the tokens the unpacked path emits (and, greedy in fp32, those of the packed path)
    model = tiny(block_size=32, n_embd=64, n_layer=3).eval()
    labels = torch.tensor([0, 1, 2, -1])
    run = lambda: model.generate(labels, 4, temperature=0.0)  # noqa: E731
    packed = run()
    with monkeypatch.context() as m:
        m.setattr(gpt_module, "_can_prepack", lambda p: False)
        plain = run()
    if broken == "ops_missing":
        monkeypatch.setattr(torch.ops, "mkldnn", types.SimpleNamespace())
        fallback = run()
    else:
        monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight" if broken == "pack_raises" else "_linear_pointwise",
                            _raise)
        if _can_prepack(model.transformer.wte.weight):
            with pytest.warns(RuntimeWarning, match="packing failed"):
                fallback = run()
        else:
            fallback = run()
    if broken != "matmul_raises":  # that one fails only at first use, then drops the packed weights
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            cache = KVCache(model.config, 4, "cpu", torch.float32, model=model)
        assert cache.packed == {} and cache.head_packed is None
    assert torch.equal(fallback, plain), f"fallback diverged from plain F.linear at {(fallback != plain).nonzero()[:5]}"
    assert torch.equal(fallback, packed), f"fallback diverged from the packed path at {(fallback != packed).nonzero()[:5]}"


def test_bfloat16_step_logits_are_close_to_float32():
    model = tiny(n_embd=64).eval()
    codes = torch.randint(0, 40, (2, 23))
    labels = torch.tensor([1, -1])
    full, _ = model(codes, labels)
    half = tiny(n_embd=64).eval().to(torch.bfloat16)
    cache = KVCache(half.config, 2, "cpu", torch.float32, model=half)
    tok = half.cond_tokens(labels, 2, "cpu")
    with torch.no_grad():
        for t in range(24):
            step = half.forward_step(tok, cache)
            assert step.dtype == torch.float32  # the head runs in float32 even for bf16 weights
            torch.testing.assert_close(step, full[:, t], atol=0.05, rtol=0.05, msg=f"position {t}")
            tok = codes[:, t : t + 1] if t < 23 else None


def test_top_k_draw_follows_the_renormalised_top_k_distribution():
    # pick_next draws among the k candidates only; the frequencies must be softmax over the top k (and 0 elsewhere)
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, 3.0]]).expand(20000, -1)
    draws = pick_next(logits, 1.0, 3, None, torch.Generator().manual_seed(0)).view(-1)
    freq = torch.bincount(draws, minlength=6).double() / len(draws)
    expect = torch.zeros(6, dtype=torch.double)
    expect[[5, 0, 1]] = torch.tensor([3.0, 2.0, 1.0], dtype=torch.double).softmax(0)
    assert freq[[2, 3, 4]].sum() == 0, f"drew outside the top 3: {freq}"
    sigma = (expect * (1 - expect) / len(draws)).sqrt()
    assert ((freq - expect).abs() <= 5 * sigma + 1e-12).all(), f"frequencies {freq} vs expected {expect}"


def test_guidance_zero_is_the_unconditional_sampler_and_one_is_off():
    # u + 0 * (c - u) = u: the guided sampler at 0 must draw exactly the unconditional model's tokens
    model = tiny().double().eval()
    labels = torch.tensor([0, 1, 2, 1])
    def draw(y, **kw):
        return model.generate(y, 4, temperature=1.0, generator=torch.Generator().manual_seed(3), **kw)
    assert torch.equal(draw(labels, guidance=0.0), draw(None))
    assert torch.equal(draw(labels, guidance=1.0), draw(labels))
    assert not torch.equal(draw(labels, guidance=3.0), draw(labels))


def test_guided_greedy_decoding_returns_each_class_memorised_sequence(overfit):
    model, codes, labels, _ = overfit
    out = model.generate(labels[:3], 3, temperature=0.0, guidance=2.0)
    assert torch.equal(out, codes[:3])


@pytest.mark.parametrize("kw, match", [(dict(guidance=-1.0), "guidance must be >= 0"),
                                       (dict(guidance=2.0, labels=None), "needs class labels")])
def test_bad_guidance_is_refused(kw, match):
    model = tiny().eval()
    labels = kw.pop("labels", torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=match):
        model.generate(labels, 2, **kw)
