"""Sampling speed: this project's KV-cache sampler vs taming-transformers' `sample_with_past` and `sample`.

Same model size for everyone (default: 8 layers x 512 wide, 8 heads, vocab 1024, 256-token sequences, batch 8),
random weights (speed does not depend on training), tokens/s = batch * tokens / wall seconds.

taming is not a dependency of this project; install it beside it, without its (ancient, pinned) deps:

    pip install --no-deps --target /tmp/taming_pkg taming-transformers-rom1504
    python bench/sampling.py --taming-path /tmp/taming_pkg

Its mingpt imports `top_k_top_p_filtering` from `transformers`, which newer releases removed; this script puts
a small stand-in module in `sys.modules` (the function as transformers 4.x shipped it) instead of installing
transformers.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
import types

import torch
import torch.nn.functional as F

from vqgan.gpt import GPT, GPTConfig, generate_reference


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


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=256, help="codes per sequence (= block_size)")
    ap.add_argument("--n-layer", type=int, default=8)
    ap.add_argument("--n-head", type=int, default=8)
    ap.add_argument("--n-embd", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--top-k", type=int, default=100, help="taming's default for its samples; 0 = off")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per cached sampler (median reported)")
    ap.add_argument("--uncached-repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the dev box is shared)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--taming-path", default="/tmp/taming_pkg")
    ap.add_argument("--no-taming", action="store_true")
    ap.add_argument("--skip-uncached", action="store_true", help="skip both no-cache samplers (slow on CPU)")
    ap.add_argument("--compile", action="store_true", help="also time ours under torch.compile")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    B, T = args.batch, args.tokens
    top_k = args.top_k or None
    n_tok = B * T
    results: dict[str, float] = {}

    def report(name, secs):
        med = statistics.median(secs)
        results[name] = n_tok / med
        spread = f" (runs: {', '.join(f'{s:.2f}' for s in secs)} s)" if len(secs) > 1 else ""
        print(f"{name:<34} {n_tok / med:9.0f} tok/s  {med:7.2f} s{spread}", flush=True)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    cfg = GPTConfig(vocab_size=args.vocab, n_classes=1, block_size=T, n_layer=args.n_layer,
                    n_head=args.n_head, n_embd=args.n_embd, dropout=0.0, bias=True)
    ours = GPT(cfg).to(dev).eval()
    labels = torch.zeros(B, dtype=torch.long)
    print(f"device={dev} threads={torch.get_num_threads()} batch={B} tokens={T} "
          f"GPT {args.n_layer}x{args.n_embd} ({ours.num_params() / 1e6:.1f}M params) vocab={args.vocab} "
          f"top_k={top_k}", flush=True)

    def run_ours(model, dtype_ctx=None):
        def f():
            g = torch.Generator(device=dev).manual_seed(0)
            if dtype_ctx is None:
                model.generate(labels, B, temperature=1.0, top_k=top_k, generator=g)
            else:
                with dtype_ctx():
                    model.generate(labels, B, temperature=1.0, top_k=top_k, generator=g)
            sync()
        return f

    if not args.no_taming:
        mingpt = import_taming(args.taming_path)
        tam = mingpt.GPT(vocab_size=args.vocab, block_size=T, n_layer=args.n_layer, n_head=args.n_head,
                         n_embd=args.n_embd).to(dev).eval()
        x0 = torch.zeros(B, 1, dtype=torch.long, device=dev)  # taming's start/class token: a code id

        def tam_cached():
            mingpt.sample_with_past(x0, tam, steps=T, temperature=1.0, sample_logits=True, top_k=top_k,
                                    top_p=1.0)
            sync()

        def tam_uncached():
            mingpt.sample(tam, x0, steps=T, temperature=1.0, sample=True, top_k=top_k)
            sync()

        tam_cached()  # warm-up (allocator, kernels)
        report("taming sample_with_past (fp32)", timed(tam_cached, args.repeats))

    run_ours(ours)()
    report("ours KV cache (fp32)", timed(run_ours(ours), args.repeats))
    ours_bf16 = GPT(cfg).to(dev).eval()
    ours_bf16.load_state_dict(ours.state_dict())
    ours_bf16.to(torch.bfloat16)
    run_ours(ours_bf16)()
    report("ours KV cache (bf16 weights)", timed(run_ours(ours_bf16), args.repeats))
    autocast = lambda: torch.autocast(dev.type, dtype=torch.bfloat16)  # noqa: E731
    run_ours(ours, autocast)()
    report("ours KV cache (fp32 + bf16 autocast)", timed(run_ours(ours, autocast), args.repeats))

    if args.compile:
        compiled = GPT(cfg).to(dev).eval()
        compiled.load_state_dict(ours.state_dict())
        compiled.forward_step = torch.compile(compiled.forward_step, dynamic=True)
        t0 = time.perf_counter()
        run_ours(compiled)()
        print(f"  (torch.compile warm-up {time.perf_counter() - t0:.1f} s)")
        report("ours KV cache (fp32, torch.compile)", timed(run_ours(compiled), args.repeats))

    if not args.skip_uncached:
        def ref():
            generate_reference(ours, labels, B, temperature=1.0, top_k=top_k,
                               generator=torch.Generator(device=dev).manual_seed(0))
            sync()
        report("ours no-cache reference (fp32)", timed(ref, args.uncached_repeats))
        if not args.no_taming:
            report("taming sample, no cache (fp32)", timed(tam_uncached, args.uncached_repeats))

    if not args.no_taming:
        best = max((v, k) for k, v in results.items() if k.startswith("ours KV"))
        print(f"\nbest of ours: {best[1]} {best[0]:.0f} tok/s")
        print(f"  vs taming cached:   {best[0] / results['taming sample_with_past (fp32)']:.1f}x (goal >= 3x)")
        if "taming sample, no cache (fp32)" in results:
            print(f"  vs taming uncached: {best[0] / results['taming sample, no cache (fp32)']:.1f}x (goal >= 30x)")
        fp32 = results["ours KV cache (fp32)"]
        print(f"  fp32 only: {fp32 / results['taming sample_with_past (fp32)']:.1f}x cached"
              + (f", {fp32 / results['taming sample, no cache (fp32)']:.1f}x uncached"
                 if "taming sample, no cache (fp32)" in results else ""))


if __name__ == "__main__":
    main()
