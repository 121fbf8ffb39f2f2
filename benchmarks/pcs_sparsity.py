"""Are preference heads sparse and causal? Top-k vs random-k heads on held-out users.

    .venv/bin/python benchmarks/pcs_sparsity.py SCORES.json [--held-out 10] [--max-k 8] [--draws 5]

Loads saved PCS (computed on leave-one-out examples of some users), takes leave-one-out
examples of users the scores never saw, and measures the NLL increase of those users'
headlines when the top-k heads are masked vs k random heads (same masking and scope as the
scores). Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse

import workbench as wb
from workbench.data.lamp import load_lamp4_news
from workbench.science.pcs import sparsity_curve
from workbench.data.history import profile_examples
from workbench.science.pcs_result import PreferenceScores


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("scores")
    ap.add_argument("--held-out", type=int, default=10)
    ap.add_argument("--max-k", type=int, default=8)
    ap.add_argument("--draws", type=int, default=5)
    args = ap.parse_args()
    model = wb.load_model(progress=False)
    scores = PreferenceScores.load(args.scores, model=model)
    seen = set(scores.meta["example_users"])
    pool = profile_examples(load_lamp4_news(), n=len(seen) + 4 * args.held_out)
    held = [ex for ex in pool if ex.user_id not in seen][: args.held_out]
    print(f"{scores}\n{len(held)} held-out examples from {len({e.user_id for e in held})} users the scores never saw\n")
    curve = sparsity_curve(model, held, scores, max_k=args.max_k, n_random=args.draws, progress=False)
    top = curve[curve.kind == "top"].set_index("k")["delta_nll"]
    rnd = curve[curve.kind == "random"].groupby("k")["delta_nll"]
    print(f"{'k':>3}  {'top-k':>8}  {'random mean':>11}  {'random max':>10}   (NLL increase, nats/token)")
    for k in top.index:
        print(f"{k:>3}  {top[k]:8.3f}  {rnd.mean()[k]:11.3f}  {rnd.max()[k]:10.3f}")


if __name__ == "__main__":
    main()
