"""Which tokens should ``mode="verified"`` delete for real? Selection policies compared offline.

    python benchmarks/bench_tracing.py --part B --n 20 --scope outputs --modes attn,attn-sat,gxi,attn-ig \
        --save runs/tracing_B20_titles.jsonl
    python benchmarks/bench_verify_policies.py runs/tracing_B20_titles.jsonl

The first command saves every example's exact effects and each estimate; this one replays
verification under several policies at several shares: the chosen tokens take their exact
values, the rest keep the estimate — what ``mode="verified"`` computes. For each: Spearman
against exact over all tokens and over words (token effects summed per word, the unit SteerX
selects), top-10 overlap (largest positive exact effects), and time as a fraction of exact:
the estimates' time plus exact's time times the share (``bench_tracing.py --measure-share``
checks that model against real verified runs). Targets (issue 18): top-10 >= 0.8 and
Spearman >= 0.6 at <= 1/3 of exact's time.

Policies:
- ``|attn|``: the largest estimates in size (what ``mode="verified"`` does).
- ``attn (signed)``: the largest estimates, positive first (spends the budget on candidates
  for the top of the list).
- ``|attn-ig|``, ``|attn-sat|``: the same with another estimate ranking.
- ``adaptive``: half the budget by ``|attn|``, the rest best-first: the unverified neighbours
  (the token before and after, and the rest of its word) of the verified token with the
  largest exact effect. Effects cluster in words and phrases, which the estimate can miss.

Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import heapq
import json

import numpy as np
import pandas as pd

from workbench.science.tracing import adaptive_verify, spearman


def words_of(ex: dict, values: np.ndarray) -> np.ndarray:
    w = np.asarray(ex["word"])
    keep = w >= 0
    return pd.Series(values[keep]).groupby(w[keep], sort=True).sum().to_numpy()


def top(values: np.ndarray, k: int = 10) -> set:
    return set(np.argsort(-values, kind="stable")[:k])


def by_estimate(est: np.ndarray, m: int, signed: bool = False) -> np.ndarray:
    key = -est if signed else -np.abs(est)
    return np.argsort(key, kind="stable")[:m]


def adaptive(ex: dict, est: np.ndarray, exact: np.ndarray, m: int) -> np.ndarray:
    first = list(by_estimate(est, max(1, m // 2)))
    chosen = set(first)
    words = np.asarray(ex["word"])
    heap: list = []

    def push_neighbours(i: int) -> None:
        near = {i - 1, i + 1}
        if words[i] >= 0:
            near |= set(np.flatnonzero(words == words[i]).tolist())
        for j in near:
            if 0 <= j < len(est) and j not in chosen:
                heapq.heappush(heap, (-abs(exact[i]), -abs(est[j]), j))

    for i in first:
        push_neighbours(i)
    while len(chosen) < m:
        if heap:
            _, _, j = heapq.heappop(heap)
            if j in chosen:
                continue
        else:  # nothing left near: back to the estimate's order
            j = next(int(x) for x in by_estimate(est, len(est)) if x not in chosen)
        chosen.add(j)
        push_neighbours(j)
    return np.array(sorted(chosen))


def adaptive_rounds(ex: dict, est: np.ndarray, exact: np.ndarray, m: int, first: float = 0.5) -> np.ndarray:
    """``adaptive`` as ``mode="verified"`` runs it (the library's own rule, in rounds, each
    verifying in one batch up to half the remaining budget), replayed on saved values."""
    v = est.copy()

    def verify(rows: list[int]) -> np.ndarray:
        v[rows] = exact[rows]
        return np.abs(v)

    return np.array(adaptive_verify(by_estimate(est, len(est)).tolist(), np.asarray(ex["word"]), m, verify, first))


def measure(examples: list[dict], args) -> None:
    """Run ``mode="verified", selection="adaptive"`` for real on saved examples: its time against
    the replay's model of it (rounds restart the shared prefix), and its values against the replay."""
    import time

    import workbench as wb
    from workbench.data.lamp import load_lamp4_news
    from workbench.science.tracing import trace_example

    model = wb.load_model(args.model, progress=False)
    data = {ex.id: ex for ex in load_lamp4_news()}
    print(f"measured: mode='verified', selection='adaptive', verify={args.measure_share} on {len(examples)} examples")
    for ex in examples:
        t0 = time.perf_counter()
        te = trace_example(model, data[ex["id"]], k=args.k, mode="verified", verify=args.measure_share,
                           positions=args.scope, progress=False)
        t = time.perf_counter() - t0
        exact = np.asarray(ex["exact"])
        m = max(1, int(np.ceil(args.measure_share * len(exact))))
        est = np.asarray(ex["attn"])
        replay = est.copy()
        chosen = adaptive_rounds(ex, est, exact, m)
        replay[chosen] = exact[chosen]
        v = te.frame["effect"].to_numpy()
        sim = ex["seconds"]["attn"] + ex["seconds"]["exact"] * m / len(exact)
        print(f"  {ex['id']}: {t:.1f} s (replay's model {sim:.1f} s, exact {ex['seconds']['exact']:.1f} s) | "
              f"same tokens verified as the replay {len(set(np.flatnonzero(te.frame['exact'])) & set(chosen))}/{m} | "
              f"top-10 {len(top(exact) & top(v)) / 10:.1f} (replay {len(top(exact) & top(replay)) / 10:.1f}) | "
              f"rho {spearman(exact, v):.3f} (replay {spearman(exact, replay):.3f})", flush=True)
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("traces", help="JSON lines from bench_tracing.py --save")
    ap.add_argument("--shares", default="0.1,0.15,0.2,0.25,0.3,0.4,0.5")
    ap.add_argument("--examples", default=None, help="a slice of the saved examples, e.g. 0:10 (to choose) or 10:20 (to check)")
    ap.add_argument("--measure", type=int, default=0, help="also run adaptive verification for real on the first N")
    ap.add_argument("--measure-share", type=float, default=0.25)
    ap.add_argument("--model", default="smollm2-135m", help="with --measure: the model the traces came from")
    ap.add_argument("--k", type=int, default=5, help="with --measure: as bench_tracing's --k")
    ap.add_argument("--scope", default="outputs", help="with --measure: as bench_tracing's --scope")
    args = ap.parse_args()
    examples = [json.loads(line) for line in open(args.traces)]
    if args.examples:
        lo, hi = (int(x) if x else None for x in args.examples.split(":"))
        examples = examples[lo:hi]
    shares = [float(s) for s in args.shares.split(",")]
    policies = {
        "|attn|": ("attn", lambda ex, est, exact, m: by_estimate(est, m)),
        "attn (signed)": ("attn", lambda ex, est, exact, m: by_estimate(est, m, signed=True)),
        "|attn-ig|": ("attn-ig", lambda ex, est, exact, m: by_estimate(est, m)),
        "|attn-sat|": ("attn-sat", lambda ex, est, exact, m: by_estimate(est, m)),
        "adaptive": ("attn", adaptive),
        "adaptive (rounds)": ("attn", adaptive_rounds),
        "adaptive (rounds, 1/4 first)": ("attn", lambda ex, est, exact, m: adaptive_rounds(ex, est, exact, m, 0.25)),
        "adaptive (rounds, 3/4 first)": ("attn", lambda ex, est, exact, m: adaptive_rounds(ex, est, exact, m, 0.75)),
    }
    rows = []
    for ex in examples:
        exact = np.asarray(ex["exact"])
        t_exact = ex["seconds"]["exact"]
        for name, (mode, pick) in policies.items():
            if mode not in ex:
                continue
            est = np.asarray(ex[mode])
            rows.append({"policy": name, "share": 0.0, "rho": spearman(exact, est),
                         "rho_words": spearman(words_of(ex, exact), words_of(ex, est)),
                         "top10": len(top(exact) & top(est)) / 10, "time": ex["seconds"][mode] / t_exact})
            for share in shares:
                m = max(1, int(np.ceil(share * len(exact))))
                chosen = pick(ex, est, exact, m)
                v = est.copy()
                v[chosen] = exact[chosen]
                rows.append({"policy": name, "share": share, "rho": spearman(exact, v),
                             "rho_words": spearman(words_of(ex, exact), words_of(ex, v)),
                             "top10": len(top(exact) & top(v)) / 10,
                             "time": (ex["seconds"][mode] + t_exact * m / len(exact)) / t_exact})
    if args.measure:
        measure(examples[: args.measure], args)
    table = pd.DataFrame(rows).groupby(["policy", "share"], sort=False).mean().reset_index()
    table["meets targets"] = (table["top10"] >= 0.8) & (table["rho"] >= 0.6) & (table["rho_words"] >= 0.6) \
        & (table["time"] <= 1 / 3)
    print(f"{len(examples)} examples, {np.mean([e['n'] for e in examples]):.0f} tokens each on average; "
          "means over examples; time = fraction of exact's\n")
    print(table.round(3).to_string(index=False))


if __name__ == "__main__":
    main()
