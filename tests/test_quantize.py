"""Quantizers: straight-through gradients, the beta placement, codebook usage, dead-code restart, EMA, k-means
init, and that codebook maintenance keeps DDP ranks identical."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

from vqgan.models.quantize import L2Quantizer, VectorQuantizer, build_quantizer, code_counts, codebook_stats

torch.set_num_threads(1)


def train_toy(kind, dim=8, n_codes=64, steps=200, seed=0, **kw):
    """Linear autoencoder with a quantized bottleneck on Gaussian data; returns usage over the data afterwards.

    The paper's quantizer starts its codes in a tiny cube (+-1/K) far from the encoder outputs: the few codes
    that win the first batches are the only ones that ever receive gradients, the rest stay dead."""
    torch.manual_seed(seed)
    data = torch.randn(1024, 16)
    enc, dec = nn.Linear(16, dim), nn.Linear(dim, 16)
    q = build_quantizer(kind, n_codes=n_codes, dim=dim, **kw)
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters(), *q.parameters()], lr=3e-3)
    for _ in range(steps):
        x = data[torch.randint(0, len(data), (128,))]
        zq, _, qloss, _ = q(enc(x)[:, :, None, None])  # (B, dim, 1, 1)
        loss = (dec(zq.flatten(1)) - x).pow(2).mean() + qloss
        opt.zero_grad()
        loss.backward()
        opt.step()
    q.eval()
    with torch.no_grad():
        indices = q(enc(data)[:, :, None, None])[1]
    return indices.unique().numel() / n_codes


@pytest.mark.parametrize("kind", ["taming", "l2"])
def test_output_shapes_and_stats(kind):
    q = build_quantizer(kind, n_codes=32, dim=4)
    z = torch.randn(3, 4, 5, 6)
    zq, idx, loss, stats = q(z)
    assert zq.shape == z.shape and idx.shape == (3, 5, 6) and idx.dtype == torch.long
    assert loss.ndim == 0 and loss.item() >= 0
    assert 0 < stats["usage"].item() <= 1
    assert 1 <= stats["perplexity"].item() <= 32
    # the quantized vectors are codebook rows (unit length for l2)
    codes = q.codes()
    assert torch.allclose(zq.permute(0, 2, 3, 1)[0, 0, 0], codes[idx[0, 0, 0]], atol=1e-6)


def test_perplexity_and_usage_of_known_histograms():
    uniform = codebook_stats(torch.arange(8).repeat(4), 16)
    assert uniform["perplexity"].item() == pytest.approx(8.0, rel=1e-5)
    assert uniform["usage"].item() == pytest.approx(0.5)
    single = codebook_stats(torch.zeros(10, dtype=torch.long), 16)
    assert single["perplexity"].item() == pytest.approx(1.0, rel=1e-5)


def test_code_counts_equal_bincount_exactly():
    """The counts behind usage, perplexity, EMA and dead-code restart: bincount's, without its host sync on CUDA."""
    g = torch.Generator().manual_seed(0)
    for shape, n in (((4, 8, 8), 16), ((1000,), 3), ((2, 3), 50)):
        idx = torch.randint(0, n, shape, generator=g)
        counts = code_counts(idx, n)
        assert counts.dtype == torch.long and torch.equal(counts, torch.bincount(idx.reshape(-1), minlength=n))


def test_straight_through_gradient_is_identity():
    q = VectorQuantizer(n_codes=16, dim=4)
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    zq, _, _, _ = q(z)
    g = torch.randn_like(zq)
    (zq * g).sum().backward()
    assert torch.equal(z.grad, g), "gradient through the quantizer must be passed to the encoder unchanged"


def test_l2_straight_through_passes_gradient_of_normalised_input():
    q = L2Quantizer(n_codes=16, dim=4)
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    zq, _, _, _ = q(z)
    g = torch.randn_like(zq)
    (zq * g).sum().backward()
    # expected: the gradient of <normalize(z), g> (identity through the lookup, then normalize's Jacobian)
    z2 = z.detach().clone().requires_grad_(True)
    (torch.nn.functional.normalize(z2, dim=1) * g).sum().backward()
    assert torch.allclose(z.grad, z2.grad, atol=1e-6)


@pytest.mark.parametrize("legacy", [False, True])
def test_beta_placement(legacy):
    """beta weighs the commitment term (encoder pull) unless legacy_beta puts it on the codebook term."""
    beta = 0.25
    q = VectorQuantizer(n_codes=8, dim=3, beta=beta, legacy_beta=legacy)
    z = torch.randn(1, 3, 2, 2, requires_grad=True)
    _, idx, loss, _ = q(z)
    loss.backward()
    zf = z.detach().permute(0, 2, 3, 1).reshape(-1, 3)
    zq = q.embedding.weight.detach()[idx.reshape(-1)]
    n = zf.numel()
    encoder_coef, code_coef = (1.0, beta) if legacy else (beta, 1.0)
    expected_z_grad = (encoder_coef * 2 * (zf - zq) / n).view(1, 2, 2, 3).permute(0, 3, 1, 2)
    assert torch.allclose(z.grad, expected_z_grad, atol=1e-6)
    expected_code_grad = torch.zeros_like(q.embedding.weight).index_add_(0, idx.reshape(-1), code_coef * 2 * (zq - zf) / n)
    assert torch.allclose(q.embedding.weight.grad, expected_code_grad, atol=1e-6)


def test_l2_usage_beats_taming_on_toy_problem():
    taming, l2 = train_toy("taming"), train_toy("l2")
    assert l2 > taming + 0.3, f"usage l2 {l2:.2f} vs taming {taming:.2f}"


def test_dead_code_restart_revives_codes_where_plain_quantizer_collapses():
    plain = train_toy("taming")
    restarted = train_toy("taming", restart_dead_after=10)
    assert plain < 0.6, f"toy problem no longer collapses the plain quantizer (usage {plain:.2f})"
    assert restarted > 0.9, f"restart kept only {restarted:.2f} of the codes alive"


def test_restart_replaces_exactly_the_dead_codes_with_batch_vectors():
    q = VectorQuantizer(n_codes=8, dim=2, restart_dead_after=2)
    with torch.no_grad():
        q.embedding.weight.copy_(torch.tensor([[float(i), 0.0] for i in range(8)]))
    flat = torch.tensor([[0.1, 0.0], [1.1, 0.0]])  # two vectors: hit codes 0 and 1 only
    z = flat.t().reshape(1, 2, 2, 1)  # (B=1, D=2, h=2, w=1)
    before = q.embedding.weight.detach().clone()
    q(z)
    q(z)  # codes 2..7 now unused for 2 forwards
    assert torch.equal(q.embedding.weight, before)
    q(z)  # restart happens at the start of this forward
    after = q.embedding.weight.detach()
    assert torch.equal(after[:2], before[:2]), "live codes must not move"
    dist_to_batch = torch.cdist(after[2:], flat).min(1).values
    assert (dist_to_batch < 1e-2).all(), "dead codes must restart near encoder outputs of the batch"


def test_eval_mode_never_changes_the_codebook():
    q = VectorQuantizer(n_codes=8, dim=2, restart_dead_after=1, ema=True, kmeans_init=True).eval()
    before = q.embedding.weight.detach().clone()
    for _ in range(3):
        q(torch.randn(2, 2, 4, 4))
    assert torch.equal(q.embedding.weight, before)


def test_kmeans_init_puts_codes_on_the_data():
    torch.manual_seed(0)
    centers = torch.randn(4, 3) * 5
    z = (centers[torch.randint(0, 4, (256,))] + 0.01 * torch.randn(256, 3)).view(16, 16, 3).permute(2, 0, 1)[None]
    q = VectorQuantizer(n_codes=4, dim=3, kmeans_init=True)
    q(z)
    nearest = torch.cdist(centers, q.embedding.weight.detach()).min(1).values
    assert (nearest < 0.1).all(), f"k-means init missed clusters: {nearest}"
    assert bool(q.initialized)
    q(torch.randn(1, 3, 4, 4))  # no second init
    assert torch.cdist(centers, q.embedding.weight.detach()).min(1).values.max() < 0.1


def test_ema_moves_codes_towards_assigned_vectors_without_gradients():
    q = VectorQuantizer(n_codes=2, dim=2, ema=True, ema_decay=0.5)
    with torch.no_grad():
        q.embedding.weight.copy_(torch.tensor([[0.0, 0.0], [10.0, 10.0]]))
        q.ema_sum.copy_(q.embedding.weight)
    assert not q.embedding.weight.requires_grad
    z = torch.tensor([1.0, 1.0]).view(1, 2, 1, 1).expand(1, 2, 2, 2).contiguous()  # 4 vectors at (1, 1)
    q(z)
    w = q.embedding.weight.detach()
    assert 0.0 < w[0, 0] < 1.0 + 1e-4 and w[0, 0] > 0.5, f"code 0 should move towards (1, 1): {w[0]}"
    assert torch.allclose(w[1], torch.tensor([10.0, 10.0]), rtol=0.2), "an unused code should barely move"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, out):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    for kind in ("taming", "l2"):
        torch.manual_seed(0)  # identical initial codebooks, as DDP guarantees for parameters
        q = build_quantizer(kind, n_codes=16, dim=4, ema=True, restart_dead_after=2, kmeans_init=True)
        g = torch.Generator().manual_seed(100 + rank)  # each rank sees different data
        for _ in range(6):
            q(torch.randn(2, 4, 4, 4, generator=g) + rank)
        torch.save({k: v.clone() for k, v in q.state_dict().items()}, os.path.join(out, f"{kind}{rank}.pt"))
    dist.destroy_process_group()


def test_codebook_maintenance_keeps_ranks_identical_under_gloo(tmp_path):
    """EMA statistics are all-reduced and restart / k-means vectors broadcast from rank 0, so two ranks that
    see different data still end every step with the same codebook."""
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for kind in ("taming", "l2"):
        s0 = torch.load(tmp_path / f"{kind}0.pt", weights_only=True)
        s1 = torch.load(tmp_path / f"{kind}1.pt", weights_only=True)
        for k in s0:
            assert torch.equal(s0[k], s1[k]), f"{kind}: {k} differs between ranks"
        # and the maintenance did something: codes are no longer the initial ones
        torch.manual_seed(0)
        init = build_quantizer(kind, n_codes=16, dim=4, ema=True).embedding.weight
        assert not torch.allclose(s0["embedding.weight"], init), f"{kind}: codebook never updated"


def test_code_lookup_stays_float32_under_bf16_autocast():
    # encode --precision bf16 runs the encoder under autocast; the lookup itself must not drop to bf16, where
    # similarities near 1 that differ in the 4th decimal round to the same value and argmax takes the lower index
    torch.manual_seed(0)
    q = L2Quantizer(n_codes=8, dim=16).eval()
    codes = F.normalize(torch.randn(8, 16), dim=1)
    codes[7] = F.normalize(codes[3] + 0.003 * torch.randn(16), dim=0)  # a near twin of code 3, at the higher index
    q.embedding.weight.data = codes
    z = (codes[7] + 0.1 * (codes[7] - codes[3])).view(1, 16, 1, 1)  # nearest to 7, by a hair
    assert int(q.lookup_indices(z)) == 7
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert int(q.lookup_indices(z)) == 7
