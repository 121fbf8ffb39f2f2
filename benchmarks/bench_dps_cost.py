"""What DPS decoding costs next to plain greedy decoding, as a function of the lowest masked layer.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_dps_cost.py [--n 4] [--tokens 32]

On ``--n`` real ``rag`` prompts (LaMP-4 news dev), each decoded for ``--tokens`` new tokens, side
by side in one run: plain greedy (``Model.generate_tokens``), DPS with both streams through every
layer (``branch=False``) and DPS branching at the lowest masked layer (``branch=True``, the
default). The masked heads are head 0 of the chosen lowest layer and of the last layer. Times
are per generated token (the prompts are prefilled by each; the stopping rule is the stop
token only, so every run decodes up to ``--tokens``). Both DPS variants must give the same
tokens. Target (issue "Preference heads that are specific ..."): <= 1.25x greedy when the lowest
masked layer is in the upper half. Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import time

import pandas as pd
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import workbench as wb  # noqa: E402
from workbench.data.lamp import load_lamp4_news  # noqa: E402
from workbench.science.dps import dps_generate  # noqa: E402
from workbench.data.prompts import build_prompt  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--layers", default=None, help="lowest masked layers to try (default: 1, L/4, L/2, 3L/4, L-2)")
    args = ap.parse_args()
    model = wb.load_model(args.model, progress=False)
    L = model.n_layers
    layers = [int(x) for x in args.layers.split(",")] if args.layers else sorted({1, L // 4, L // 2, 3 * L // 4, L - 2})
    news = load_lamp4_news()
    prompts = [build_prompt(model, news[i * 7], k=5, reserve=args.tokens)[0] for i in range(args.n)]
    print(model)

    def timed(fn):
        t0 = time.perf_counter()
        out = fn()
        return time.perf_counter() - t0, out

    rows = []
    with torch.no_grad():
        greedy_s, greedy_n = 0.0, 0
        for p in prompts:
            s, toks = timed(lambda: model.generate_tokens(model.encode(p), args.tokens))
            greedy_s, greedy_n = greedy_s + s, greedy_n + max(len(toks), 1)
        per_greedy = greedy_s / greedy_n
        for low in layers:
            heads = [(low, 0), (L - 1, 0)]
            t = {True: 0.0, False: 0.0}
            n_tok, same = 0, 0
            for i, p in enumerate(prompts):
                outs = {}
                for branch in ((True, False) if i % 2 else (False, True)):  # alternate which runs first
                    s, out = timed(lambda: dps_generate(model, p, heads, alpha=1.0, max_new_tokens=args.tokens,
                                                        details=True, branch=branch))
                    t[branch] += s
                    outs[branch] = out.tokens
                n_tok += max(len(outs[True]), 1)
                same += outs[True] == outs[False]
            rows.append({"lowest_masked_layer": low, "upper_half": low >= L / 2,
                         "greedy_ms_per_token": 1000 * per_greedy,
                         "dps_all_layers_ms": 1000 * t[False] / n_tok, "dps_branched_ms": 1000 * t[True] / n_tok,
                         "all_layers_vs_greedy": t[False] / n_tok / per_greedy,
                         "branched_vs_greedy": t[True] / n_tok / per_greedy, "same_tokens": f"{same}/{len(prompts)}"})
    table = pd.DataFrame(rows)
    print(f"\n{len(prompts)} prompts x up to {args.tokens} tokens, {L} layers; heads (low, 0) and ({L - 1}, 0)\n")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))


if __name__ == "__main__":
    main()
