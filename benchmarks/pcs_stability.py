"""How stable are the preference heads? Top heads found on two disjoint halves of the users.

    .venv/bin/python benchmarks/pcs_stability.py SCORES.json [--k 11] [--seed 0]

Takes saved PCS (e.g. the `dps` method's cached scores or `workbench heads` output) computed
on leave-one-out examples from many users, splits the users at random into two halves, and
compares the scores computed on each half: Spearman over all heads, overlap of the top-k,
and the same for random splits repeated 20 times (median). Prints; asserts nothing.
"""

from __future__ import annotations

import argparse

import numpy as np

from workbench.science.pcs import rank_agreement
from workbench.science.pcs_result import PreferenceScores


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("scores")
    ap.add_argument("--k", type=int, default=11)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    scores = PreferenceScores.load(args.scores)
    users = sorted(set(scores.meta["example_users"]))
    print(f"{scores}\n{len(users)} users, {scores.per_example.shape[0]} examples\n")
    top = scores.frame.sort_values("pcs", ascending=False).head(args.k)
    print(f"top {args.k} heads on all users (PCS, nats/token; std over examples):")
    for r in top.itertuples():
        helped = int((scores.per_example[:, r.layer, r.head] > 0).sum())
        print(f"  L{int(r.layer):>2}H{int(r.head)}  {r.pcs:+.4f}  (std {r.std:.4f}, {helped}/{r.n} examples > 0)")
    rng = np.random.default_rng(args.seed)
    results = []
    for i in range(20):
        perm = rng.permutation(users)
        a, b = scores.for_users(perm[: len(users) // 2]), scores.for_users(perm[len(users) // 2:])
        results.append(rank_agreement(a, b, k=args.k))
        if i == 0:
            print(f"\nsplit 0: half A top {args.k}: " + ", ".join(f"L{l}H{h}" for l, h in a.top(args.k)))
            print(f"         half B top {args.k}: " + ", ".join(f"L{l}H{h}" for l, h in b.top(args.k)))
            print(f"         Spearman {results[0]['spearman']:.3f}, top-{args.k} overlap {results[0][f'top{args.k}_overlap']:.2f}")
    sp = [r["spearman"] for r in results]
    ov = [r[f"top{args.k}_overlap"] for r in results]
    chance = args.k / (scores.matrix.size)
    print(f"\n20 random user splits: Spearman median {np.median(sp):.3f} (range {min(sp):.3f}-{max(sp):.3f}); "
          f"top-{args.k} overlap median {np.median(ov):.2f} (range {min(ov):.2f}-{max(ov):.2f}; chance {chance:.2f})")


if __name__ == "__main__":
    main()
