"""Sampling speed: this project's KV-cache sampler vs taming-transformers' `sample_with_past` and `sample`.

Same model size for everyone (default: 8 layers x 512 wide, 8 heads, vocab 1024, 256-token sequences, top-k 100),
random weights (speed does not depend on training), tokens/s = batch * tokens / seconds, given both in CPU
time of this process (steady on a shared machine) and wall time (what a user waits; on an idle machine the two
agree for --threads 1; wall well above CPU means the machine was busy, for every sampler alike). At each batch
size (--batch, then --extra-batches) the cached samplers run interleaved, round after round (ABAB...), and
taming runs at the same precisions as ours: fp32, and its model cast to bf16, so every ratio is like for like.
The no-cache samplers (at --batch only) are estimated from a sample of prefix lengths (see `uncached_estimate`)
unless --uncached-stride 1. --ablate adds ours with each speed-up taken away (see `ablations`).

taming is not a dependency of this project; install it beside it, without its (ancient, pinned) deps:

    pip install --no-deps --target /tmp/taming_pkg taming-transformers-rom1504
    python bench/sampling.py --taming-path /tmp/taming_pkg

Its mingpt imports `top_k_top_p_filtering` from `transformers`, which newer releases removed; this script puts
a small stand-in module in `sys.modules` (the function as transformers 4.x shipped it) instead of installing
transformers.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import sys
import time
import types
from unittest import mock

import torch
import torch.nn.functional as F

import vqgan.models.gpt as gpt_module
from vqgan.config.build import gpt_config
from vqgan.models.gpt import GPT, filter_logits, generate_reference, pick_next


def _top_k_top_p_filtering(logits, top_k=0, top_p=1.0, filter_value=-float("inf"), min_tokens_to_keep=1):
    """transformers' function (v4.x), only as far as taming's mingpt uses it."""
    if top_k is not None and top_k > 0:
        top_k = min(max(top_k, min_tokens_to_keep), logits.size(-1))
        logits = logits.masked_fill(logits < torch.topk(logits, top_k)[0][..., -1, None], filter_value)
    if top_p is not None and top_p < 1.0:
        sorted_logits, sorted_indices = torch.sort(logits, descending=True)
        cumulative_probs = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)
        remove = cumulative_probs > top_p
        if min_tokens_to_keep > 1:
            remove[..., :min_tokens_to_keep] = 0
        remove[..., 1:] = remove[..., :-1].clone()
        remove[..., 0] = 0
        logits = logits.masked_fill(remove.scatter(1, sorted_indices, remove), filter_value)
    return logits


def import_taming(path: str | None):
    if path:
        sys.path.insert(0, path)
    if "transformers" not in sys.modules:
        shim = types.ModuleType("transformers")
        shim.top_k_top_p_filtering = _top_k_top_p_filtering
        sys.modules["transformers"] = shim
    try:
        from taming.modules.transformer import mingpt
    except ImportError as e:
        raise SystemExit(
            f"cannot import taming ({e}); install it with "
            "`pip install --no-deps --target /tmp/taming_pkg taming-transformers-rom1504` and pass "
            "--taming-path /tmp/taming_pkg, or pass --no-taming"
        )
    return mingpt


class Clock:
    """Wall and CPU time of a call. On a shared machine the CPU time of this (single-threaded) process is the
    steadier figure: wall time also counts the moments the scheduler gave the core to someone else."""

    def __init__(self):
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def __call__(self, fn):
        w, c = time.perf_counter(), time.process_time()
        fn()
        self.cpu.append(time.process_time() - c)
        self.wall.append(time.perf_counter() - w)


def uncached_estimate(step, tokens: int, stride: int) -> float:
    """Seconds for a whole no-cache run, from one step at every `stride`-th prefix length (a Riemann sum).

    A no-cache sampler's step t recomputes the whole prefix, so its cost grows with t; timing all 256 steps of
    both no-cache samplers takes most of an hour on one shared CPU core.
    """
    total = 0.0
    for t in range(0, tokens, stride):
        c = time.process_time()
        step(t)
        total += (time.process_time() - c) * min(stride, tokens - t)
    return total


def pick_next_full_vocab(logits, temperature, top_k, top_p, generator):
    """The draw before the top-k candidate trick: mask to -inf, then `multinomial` over all V logits."""
    logits = logits.float()
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = filter_logits(logits / temperature, top_k, top_p)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)


def sdpa_attention(q, k, v):
    """The cached step's attention through SDPA alone (what `cached_attention` replaces for one query on CPU)."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=q.size(2) > 1)


def ablations():
    """Ours with one speed-up taken away at a time (patched in for the call, so the model code has no switches)."""
    return {
        "no oneDNN prepacking": lambda: mock.patch.object(gpt_module, "_can_prepack", lambda p: False),
        "full-vocab draw": lambda: mock.patch.object(gpt_module, "pick_next", pick_next_full_vocab),
        "SDPA for one query": lambda: mock.patch.object(gpt_module, "cached_attention", sdpa_attention),
    }


def greedy_agreement(model, labels, n_tokens: int) -> tuple[float, int | None]:
    """Share of tokens where the cached sampler and the no-cache reference agree under greedy decoding, and the
    first position where they differ (None: identical)."""
    fast = model.generate(labels, len(labels), n_tokens=n_tokens, temperature=0.0)
    slow = generate_reference(model, labels, len(labels), n_tokens=n_tokens, temperature=0.0)
    diff = (fast != slow).any(dim=0).nonzero()
    return float((fast == slow).float().mean()), (int(diff[0]) if len(diff) else None)


def read_bandwidth(dev) -> float:
    """Bytes/s this process reads from memory: best of 5 sums over a 512 MB float32 tensor (far above any cache)."""
    x = torch.ones(128 * 2**20, device=dev)
    best = math.inf
    for _ in range(5):
        t = time.perf_counter()
        float(x.sum())
        best = min(best, time.perf_counter() - t)
    return x.numel() * 4 / best


def decode_bytes(model: GPT, B: int, T: int) -> float:
    """Bytes one `generate` of B x T tokens must read at least: every weight matrix once per step (in its dtype; the
    head in float32, see KVCache) plus the float32 KV cache prefix of every layer (keys and values), summed over
    the steps. A single-token step is bound by this traffic, not by arithmetic."""
    c = model.config
    linear = sum(m.weight.numel() * m.weight.element_size() for m in model.modules() if isinstance(m, torch.nn.Linear))
    head = c.vocab_size * c.n_embd * 4
    kv = 2 * c.n_layer * B * c.n_embd * 4 * T * (T + 1) / 2
    return (linear + head) * T + kv


def load() -> str:
    return "load avg %.2f %.2f %.2f" % os.getloadavg()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8, help="the main batch size (uncached estimates, ablations)")
    ap.add_argument("--extra-batches", default="1,64", help="more batch sizes for the cached samplers; '' = none")
    ap.add_argument("--tokens", type=int, default=256, help="codes per sequence (= block_size)")
    ap.add_argument("--n-layer", type=int, default=8)
    ap.add_argument("--n-head", type=int, default=8)
    ap.add_argument("--n-embd", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--top-k", type=int, default=100, help="taming's default for its samples; 0 = off")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every cached sampler")
    ap.add_argument("--uncached-stride", type=int, default=16,
                    help="time the no-cache samplers at every N-th prefix length (1 = every step, exact)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the dev box is shared)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--taming-path", default="/tmp/taming_pkg")
    ap.add_argument("--no-taming", action="store_true")
    ap.add_argument("--skip-uncached", action="store_true")
    ap.add_argument("--ablate", action="store_true", help="also time ours (bf16) without each speed-up, at --batch")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    T = args.tokens
    top_k = args.top_k or None

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    cfg = gpt_config(vocab_size=args.vocab, n_classes=1, block_size=T, n_layer=args.n_layer,
                    n_head=args.n_head, n_embd=args.n_embd, dropout=0.0, bias=True)
    ours = GPT(cfg).to(dev).eval()
    ours_bf16 = GPT(cfg).to(dev).eval()
    ours_bf16.load_state_dict(ours.state_dict())
    ours_bf16.to(torch.bfloat16)
    print(f"device={dev} threads={torch.get_num_threads()} tokens={T} GPT {args.n_layer}x{args.n_embd} "
          f"({ours.num_params() / 1e6:.1f}M params) vocab={args.vocab} top_k={top_k}; {load()}", flush=True)

    # correctness first: greedy tokens of the cached sampler vs the no-cache reference, same weights and dtype
    for name, model in (("fp32", ours), ("bf16 weights", ours_bf16)):
        share, first = greedy_agreement(model, torch.zeros(4, dtype=torch.long, device=dev), min(T, 64))
        print(f"greedy, cached vs reference ({name}, 4 x {min(T, 64)} tokens): {100 * share:.1f}% identical"
              + ("" if first is None else f", first difference at token {first}"), flush=True)

    mingpt = tams = None
    if not args.no_taming:
        mingpt = import_taming(args.taming_path)
        tam = mingpt.GPT(vocab_size=args.vocab, block_size=T, n_layer=args.n_layer, n_head=args.n_head,
                         n_embd=args.n_embd).to(dev).eval()
        tam_bf16 = mingpt.GPT(vocab_size=args.vocab, block_size=T, n_layer=args.n_layer, n_head=args.n_head,
                              n_embd=args.n_embd).to(dev).eval()
        tam_bf16.load_state_dict(tam.state_dict())
        tams = {"fp32": tam, "bf16 weights": tam_bf16.to(torch.bfloat16)}

    batches = [args.batch] + [int(b) for b in args.extra_batches.split(",") if b.strip()]
    summary = {}  # batch -> {sampler: tok/s CPU}
    bandwidth = read_bandwidth(dev)
    roofline = {}  # batch -> {sampler: (GB/s moved, tok/s bound)}
    for B in batches:
        labels = torch.zeros(B, dtype=torch.long, device=dev)

        def ours_run(model, patch=contextlib.nullcontext):
            def f():
                with patch():
                    model.generate(labels, B, temperature=1.0, top_k=top_k,
                                   generator=torch.Generator(device=dev).manual_seed(0))
                sync()
            return f

        samplers = {}
        if tams:
            x0 = torch.zeros(B, 1, dtype=torch.long, device=dev)  # taming's start/class token: a code id

            def tam_run(model):
                def f():
                    mingpt.sample_with_past(x0, model, steps=T, temperature=1.0, sample_logits=True, top_k=top_k,
                                            top_p=1.0)
                    sync()
                return f

            for prec, model in tams.items():
                samplers[f"taming sample_with_past ({prec})"] = tam_run(model)
        samplers["ours KV cache (fp32)"] = ours_run(ours)
        samplers["ours KV cache (bf16 weights)"] = ours_run(ours_bf16)
        if args.ablate and B == args.batch:
            for what, patch in ablations().items():
                samplers[f"ours bf16, {what}"] = ours_run(ours_bf16, patch)

        clocks = {name: Clock() for name in samplers}
        before = load()
        for fn in samplers.values():
            fn()  # warm-up (allocator, kernels)
        for _ in range(args.rounds):  # interleaved, so a busy spell on the machine hits every sampler alike
            for name, fn in samplers.items():
                clocks[name](fn)
        n_tok = B * T
        cpu_rate = {}
        print(f"\nbatch {B}: median of {args.rounds} interleaved rounds; before: {before}, after: {load()}")
        print(f"{'sampler':<40} {'tok/s (CPU time)':>16} {'tok/s (wall)':>13}")
        for name, c in clocks.items():
            cpu_rate[name] = n_tok / statistics.median(c.cpu)
            print(f"{name:<40} {cpu_rate[name]:16.0f} {n_tok / statistics.median(c.wall):13.0f}", flush=True)

        if B == args.batch and not args.skip_uncached:
            codes = torch.randint(0, args.vocab, (B, T), device=dev)

            def ours_step(t):
                with torch.no_grad():
                    logits, _ = ours(codes[:, :t], labels)
                pick_next(logits[:, -1], 1.0, top_k, None, None)
                sync()

            est = {"ours no-cache reference (fp32)": uncached_estimate(ours_step, T, args.uncached_stride)}
            if tams:
                xs = torch.cat([torch.zeros(B, 1, dtype=torch.long, device=dev), codes], dim=1)

                def tam_step(t):
                    mingpt.sample(tams["fp32"], xs[:, : t + 1], steps=1, temperature=1.0, sample=True, top_k=top_k)
                    sync()

                est["taming sample, no cache (fp32)"] = uncached_estimate(tam_step, T, args.uncached_stride)
            how = "exact" if args.uncached_stride == 1 else f"estimated from every {args.uncached_stride}th prefix length"
            for name, secs in est.items():
                cpu_rate[name] = n_tok / secs
                print(f"{name:<40} {cpu_rate[name]:16.1f} {'':>13}  ({how})", flush=True)
        summary[B] = cpu_rate
        for name, model in (("ours KV cache (fp32)", ours), ("ours KV cache (bf16 weights)", ours_bf16)):
            nbytes = decode_bytes(model, B, T)
            roofline.setdefault(B, {})[name] = (nbytes * cpu_rate[name] / n_tok / 1e9, n_tok * bandwidth / nbytes)

    print(f"\nmemory-traffic bound (roofline): this process reads {bandwidth / 1e9:.1f} GB/s from memory (a sum over "
          "512 MB); a step must read every weight and the KV cache prefix (see decode_bytes)")
    print(f"{'sampler':<40}{'batch':>6}{'GB/s moved':>12}{'of bandwidth':>14}{'tok/s bound':>13}")
    for B, rows in roofline.items():
        for name, (gbs, bound) in rows.items():
            print(f"{name:<40}{B:>6}{gbs:12.1f}{gbs * 1e9 / bandwidth:14.0%}{bound:13.0f}")
    if tams:
        print("\nspeed-up of ours over taming (CPU time), like for like and against taming's fp32 default; "
              "goal >= 3x cached")
        cols = [f"batch {B}" for B in batches]
        print(f"{'':<52}" + "".join(f"{c:>10}" for c in cols))
        pairs = [("ours fp32 / taming fp32", "ours KV cache (fp32)", "taming sample_with_past (fp32)"),
                 ("ours bf16 / taming bf16", "ours KV cache (bf16 weights)", "taming sample_with_past (bf16 weights)"),
                 ("ours bf16 / taming fp32", "ours KV cache (bf16 weights)", "taming sample_with_past (fp32)")]
        for label, a, b in pairs:
            print(f"{label:<52}" + "".join(f"{summary[B][a] / summary[B][b]:9.2f}x" for B in batches))
        tu = summary[args.batch].get("taming sample, no cache (fp32)")
        if tu:
            r = summary[args.batch]["ours KV cache (bf16 weights)"] / tu
            print(f"ours bf16 cached / taming's no-cache `sample` (batch {args.batch}): {r:.1f}x")


if __name__ == "__main__":
    main()
