"""Preference heads and DPS benchmarks, measured side by side in one run on SmolLM2-135M.

    .venv/bin/python benchmarks/bench_dps.py [--n 20] [--naive-examples 1] [--dps-prompts 5]

1. exact PCS over all 270 heads vs the naive loop (one full forward per head), at both
   scopes, on real LaMP-4 prompts (targets: >= 1.7x at every-position scope, >= 10x at
   output-only scope); the two must give the same numbers;
2. fast (attribution patching) vs exact PCS: time ratio, and Spearman rank correlation of
   the mean scores over ``--n`` real examples (target >= 0.7);
3. DPS generation of 32 tokens vs plain greedy generation on the same prompts
   (target <= 1.25x). Stop tokens are switched off for both so each writes exactly 32.

Examples are leave-one-out items of real users' histories (``profile_examples``): the
prompt is the ``rag`` prompt with 5 of the user's other items, the target the user's own
headline. Prints ratios; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import pandas as pd
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import workbench as wb  # noqa: E402
from workbench.data.lamp import load_lamp4_news  # noqa: E402
from workbench.science.dps import dps_generate  # noqa: E402
from workbench.core.heads import mask_heads  # noqa: E402
from workbench.science.pcs import _Scorer, _scoring_examples, preference_scores  # noqa: E402
from workbench.data.history import profile_examples
from workbench.data.prompts import build_prompt  # noqa: E402


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(pd.Series(a.ravel()).rank().corr(pd.Series(b.ravel()).rank()))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default=None, help="cpu, cuda, ... (default: the GPU if there is one)")
    ap.add_argument("--dtype", default="float32", help="float32 (default, as every figure here), bfloat16, ...")
    ap.add_argument("--n", type=int, default=20, help="examples for fast vs exact (default 20)")
    ap.add_argument("--naive-examples", type=int, default=1, help="examples for exact vs naive (default 1)")
    ap.add_argument("--dps-prompts", type=int, default=5)
    ap.add_argument("--skip-naive", action="store_true")
    args = ap.parse_args()

    model = wb.load_model(progress=False, device=args.device, dtype=args.dtype)
    data = load_lamp4_news()
    examples = profile_examples(data, n=max(args.n, args.naive_examples))
    print(model)
    lengths = [model.prompt_and_target(build_prompt(model, ex, k=5, reserve=0)[0], ex.gold)[0].shape[1] for ex in examples]
    print(f"{len(examples)} real examples (leave-one-out over {len({e.user_id for e in examples})} users); "
          f"prompt+target tokens median {int(np.median(lengths))}, range {min(lengths)}-{max(lengths)}\n")

    if not args.skip_naive:
        # Per head, the exact and the naive pass run back to back, so a change in machine load
        # hits both alike; the exact mode's one-off setup (the unmasked pass that caches the
        # residual stream / the prompt's keys and values) is counted in its total.
        print(f"1. exact vs naive, all {model.n_layers * model.n_heads} heads, uniform masking, "
              f"{args.naive_examples} example(s)")
        items = _scoring_examples(model, examples[: args.naive_examples], 5, "bm25")
        for scope in ("all", "output"):
            t_exact = t_naive = 0.0
            diff = 0.0
            for item in items:
                t0 = time.perf_counter()
                fast_path = _Scorer(model, item, scope)
                t_exact += time.perf_counter() - t0
                t0 = time.perf_counter()
                slow_path = _Scorer(model, item, scope, reuse=False)
                t_naive += time.perf_counter() - t0
                for layer in range(model.n_layers):
                    for head in range(model.n_heads):
                        mask = mask_heads(model, [(layer, head)], how="uniform")
                        t0 = time.perf_counter()
                        a = fast_path.masked(mask) - fast_path.base
                        t1 = time.perf_counter()
                        b = slow_path.masked(mask) - slow_path.base
                        t2 = time.perf_counter()
                        t_exact += t1 - t0
                        t_naive += t2 - t1
                        diff = max(diff, abs(a - b))
            print(f"   scope={scope:<6}  exact {t_exact:7.1f} s   naive {t_naive:7.1f} s   "
                  f"speed-up {t_naive / t_exact:5.2f}x   max |diff| {diff:.1e} nats", flush=True)

    print(f"\n2. fast (attribution patching) vs exact, scope=output, uniform masking, {args.n} examples")
    sub = examples[: args.n]
    exact = preference_scores(model, sub, scope="output", mode="exact", progress=False)
    fast = preference_scores(model, sub, scope="output", mode="fast", progress=False)
    per_ex = [spearman(exact.per_example[i], fast.per_example[i]) for i in range(len(sub))]
    top = exact.top(11)
    print(f"   exact {exact.meta['seconds']:.1f} s   fast {fast.meta['seconds']:.1f} s   "
          f"speed-up {exact.meta['seconds'] / fast.meta['seconds']:.1f}x")
    print(f"   Spearman of mean PCS over all heads: {spearman(exact.matrix, fast.matrix):.3f}   "
          f"(per example: median {statistics.median(per_ex):.3f})")
    print(f"   top-11 overlap: {len(set(top) & set(fast.top(11)))}/11   exact top 11: "
          + ", ".join(f"L{l}H{h}" for l, h in top))
    fast_all = preference_scores(model, sub, scope="all", mode="fast", progress=False)
    print(f"   (scope=all fast vs scope=output exact Spearman: {spearman(exact.matrix, fast_all.matrix):.3f})")

    print(f"\n3. DPS (top 11 heads, alpha=entropy) vs plain greedy, 32 new tokens, {args.dps_prompts} rag prompts")
    prompts = [build_prompt(model, ex, k=5)[0] for ex in list(data)[: args.dps_prompts]]
    saved_stops = model.stop_token_ids
    model.stop_token_ids = [-1]  # nothing stops early: both write exactly 32 tokens
    try:
        t_plain, t_dps = [], []
        for rep in range(2):
            for p in prompts:
                t0 = time.perf_counter()
                model.generate(p, max_new_tokens=32)
                t1 = time.perf_counter()
                dps_generate(model, p, top, alpha="entropy", max_new_tokens=32)
                t2 = time.perf_counter()
                if rep:  # the first round warms up
                    t_plain.append(t1 - t0)
                    t_dps.append(t2 - t1)
    finally:
        model.stop_token_ids = saved_stops
    mp, md = statistics.median(t_plain), statistics.median(t_dps)
    print(f"   plain {mp:.2f} s   DPS {md:.2f} s   ratio {md / mp:.3f}x (medians)")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
