"""Sampling speed: this project's KV-cache sampler vs taming-transformers' `sample_with_past` and `sample`.

Same model size for everyone (default: 8 layers x 512 wide, 8 heads, vocab 1024, 256-token sequences, batch 8),
random weights (speed does not depend on training), tokens/s = batch * tokens / seconds, given both in CPU
time of this process (steady on a shared machine) and wall time (what a user waits; on an idle machine the two
agree for --threads 1). The cached samplers run interleaved, round after round; the no-cache ones are estimated
from a sample of prefix lengths (see `uncached_estimate`) unless --uncached-stride 1.

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
import statistics
import sys
import time
import types

import torch
import torch.nn.functional as F

from vqgan.models.gpt import GPT, GPTConfig, pick_next


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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=256, help="codes per sequence (= block_size)")
    ap.add_argument("--n-layer", type=int, default=8)
    ap.add_argument("--n-head", type=int, default=8)
    ap.add_argument("--n-embd", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--top-k", type=int, default=100, help="taming's default for its samples; 0 = off")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds of every cached sampler")
    ap.add_argument("--uncached-stride", type=int, default=16,
                    help="time the no-cache samplers at every N-th prefix length (1 = every step, exact)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the dev box is shared)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--taming-path", default="/tmp/taming_pkg")
    ap.add_argument("--no-taming", action="store_true")
    ap.add_argument("--skip-uncached", action="store_true")
    ap.add_argument("--compile", action="store_true", help="also time ours (bf16) under torch.compile")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    B, T = args.batch, args.tokens
    top_k = args.top_k or None
    n_tok = B * T

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    cfg = GPTConfig(vocab_size=args.vocab, n_classes=1, block_size=T, n_layer=args.n_layer,
                    n_head=args.n_head, n_embd=args.n_embd, dropout=0.0, bias=True)
    ours = GPT(cfg).to(dev).eval()
    ours_bf16 = GPT(cfg).to(dev).eval()
    ours_bf16.load_state_dict(ours.state_dict())
    ours_bf16.to(torch.bfloat16)
    labels = torch.zeros(B, dtype=torch.long)
    print(f"device={dev} threads={torch.get_num_threads()} batch={B} tokens={T} "
          f"GPT {args.n_layer}x{args.n_embd} ({ours.num_params() / 1e6:.1f}M params) vocab={args.vocab} "
          f"top_k={top_k}", flush=True)

    def ours_run(model, ctx=contextlib.nullcontext):
        def f():
            with ctx():
                model.generate(labels, B, temperature=1.0, top_k=top_k,
                               generator=torch.Generator(device=dev).manual_seed(0))
            sync()
        return f

    samplers = {}
    if not args.no_taming:
        mingpt = import_taming(args.taming_path)
        tam = mingpt.GPT(vocab_size=args.vocab, block_size=T, n_layer=args.n_layer, n_head=args.n_head,
                         n_embd=args.n_embd).to(dev).eval()
        x0 = torch.zeros(B, 1, dtype=torch.long, device=dev)  # taming's start/class token: a code id

        def tam_cached():
            mingpt.sample_with_past(x0, tam, steps=T, temperature=1.0, sample_logits=True, top_k=top_k, top_p=1.0)
            sync()

        samplers["taming sample_with_past (fp32)"] = tam_cached
    samplers["ours KV cache (fp32)"] = ours_run(ours)
    samplers["ours KV cache (bf16 weights)"] = ours_run(ours_bf16)
    samplers["ours KV cache (fp32, bf16 autocast)"] = ours_run(
        ours, lambda: torch.autocast(dev.type, dtype=torch.bfloat16))
    if args.compile:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True  # constant weights: lets inductor prepack them for oneDNN on CPU
        compiled = GPT(cfg).to(dev).eval()
        compiled.load_state_dict(ours.state_dict())
        compiled.to(torch.bfloat16)
        compiled.forward_step = torch.compile(compiled.forward_step, dynamic=True)
        c = Clock()
        c(ours_run(compiled))
        print(f"  (torch.compile warm-up: {c.cpu[0]:.1f} s CPU, {c.wall[0]:.1f} s wall)", flush=True)
        samplers["ours KV cache (bf16, torch.compile)"] = ours_run(compiled)

    clocks = {name: Clock() for name in samplers}
    for fn in samplers.values():
        fn()  # warm-up (allocator, kernels)
    for _ in range(args.rounds):  # interleaved, so a busy spell on the machine hits every sampler alike
        for name, fn in samplers.items():
            clocks[name](fn)
    cpu_rate = {}
    print(f"\n{'sampler':<38} {'tok/s (CPU time)':>16} {'tok/s (wall)':>13}")
    for name, c in clocks.items():
        cpu_rate[name] = n_tok / statistics.median(c.cpu)
        print(f"{name:<38} {cpu_rate[name]:16.0f} {n_tok / statistics.median(c.wall):13.0f}", flush=True)

    if not args.skip_uncached:
        codes = torch.randint(0, args.vocab, (B, T), device=dev)

        def ours_step(t):
            logits, _ = ours(codes[:, :t], labels)
            pick_next(logits[:, -1], 1.0, top_k, None, None)
            sync()

        est = {"ours no-cache reference (fp32)": uncached_estimate(ours_step, T, args.uncached_stride)}
        if not args.no_taming:
            xs = torch.cat([x0, codes], dim=1)

            def tam_step(t):
                mingpt.sample(tam, xs[:, : t + 1], steps=1, temperature=1.0, sample=True, top_k=top_k)
                sync()

            est["taming sample, no cache (fp32)"] = uncached_estimate(tam_step, T, args.uncached_stride)
        how = "exact" if args.uncached_stride == 1 else f"estimated from every {args.uncached_stride}th prefix length"
        for name, secs in est.items():
            cpu_rate[name] = n_tok / secs
            print(f"{name:<38} {cpu_rate[name]:16.1f} {'':>13}  ({how})", flush=True)

    if not args.no_taming:
        tc = cpu_rate["taming sample_with_past (fp32)"]
        tu = cpu_rate.get("taming sample, no cache (fp32)")
        print("\nspeed-up over taming (CPU time): cached goal >= 3x, uncached goal >= 30x")
        for name, r in cpu_rate.items():
            if name.startswith("ours KV"):
                print(f"  {name:<38} {r / tc:5.1f}x cached" + (f"  {r / tu:6.1f}x uncached" if tu else ""))


if __name__ == "__main__":
    main()
