"""Verified PCS vs the full exact sweep: agreement and time, side by side in one run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_verified_pcs.py [--n 20] [--contrast history]

The reference is the exact sweep saved in ``results/`` (every head masked on every example;
``results/pcs_lamp4-news_smollm2-135m.json``, or ``..._contrast-history.json`` with
``--contrast history``), on the same leave-one-out history examples. This run computes:

- ``fast`` (attribution patching) on the first ``--n`` of those examples, timed;
- ``verified`` with the largest share in ``--shares``, timed. The candidates are nested (the
  heads the estimate rates largest, in order), so a smaller share is the same computation
  stopped earlier: its scores are the first m exact entries of the largest run, and its time is
  fast + (verified - fast) * m / m_max — stated, not measured separately;
- ``exact`` on ``--time-exact`` of the examples, timed (and checked against the saved rows),
  to give exact's time per example.

Per share: Spearman over all heads, top-10 and top-11 overlap (DPS masks the top 4% = 11 of
270 heads) of the mean scores, and time / exact's time. Targets (issue "fast estimates you can
trust"): top-10 overlap >= 0.8 and Spearman >= 0.6 at <= 1/3 of exact's time.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import workbench as wb  # noqa: E402
from workbench.data.lamp import load_lamp4_news  # noqa: E402
from workbench.science.pcs import preference_scores  # noqa: E402
from workbench.data.history import profile_examples
from workbench.science.pcs_result import PreferenceScores
from workbench.science.tracing import spearman  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def overlap(a: np.ndarray, b: np.ndarray, k: int) -> float:
    top = lambda m: set(np.argsort(-m.ravel(), kind="stable")[:k].tolist())  # noqa: E731
    return len(top(a) & top(b)) / k


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=20, help="examples (the first n of the saved exact sweep)")
    ap.add_argument("--contrast", default=None, choices=[None, "history"])
    ap.add_argument("--shares", default="0.02,0.05,0.1,0.15,0.2,0.25,0.3")
    ap.add_argument("--time-exact", type=int, default=2, help="examples the exact sweep is re-timed on")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    shares = sorted(float(s) for s in args.shares.split(","))

    suffix = f"_contrast-{args.contrast}" if args.contrast else ""
    ref_path = ROOT / "results" / f"pcs_lamp4-news_{args.model}{suffix}.json"
    model = wb.load_model(args.model, progress=False)
    ref = PreferenceScores.load(ref_path, model=model)
    news = load_lamp4_news()
    pool = profile_examples(news, n=len(ref.meta["example_ids"]), k=ref.meta["k"])
    if [ex.id for ex in pool] != ref.meta["example_ids"]:
        raise SystemExit(f"{ref_path} was computed on other examples than profile_examples(n={len(pool)}) gives")
    n = min(args.n, len(pool))
    items, exact_rows = pool[:n], ref.per_example[:n]
    kw = dict(how=ref.meta["how"], scope=ref.meta["scope"], k=ref.meta["k"], contrast=args.contrast, progress=False)
    print(model, f"\nreference: {ref_path.name} ({ref.meta['mode']}, {n} of its {len(pool)} examples)")

    t0 = time.perf_counter()
    fast = preference_scores(model, items, mode="fast", **kw)
    fast_s = time.perf_counter() - t0
    n_heads = model.n_layers * model.n_heads
    m_max = int(np.ceil(shares[-1] * n_heads))
    t0 = time.perf_counter()
    verified = preference_scores(model, items, mode="verified", verify=m_max, **kw)
    verified_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    check = preference_scores(model, items[: args.time_exact], mode="exact", **kw)
    exact_s = (time.perf_counter() - t0) / args.time_exact * n
    drift = float(np.abs(check.per_example - exact_rows[: args.time_exact]).max())
    print(f"fast {fast_s:.0f} s, verified ({m_max} heads) {verified_s:.0f} s, exact ~{exact_s:.0f} s "
          f"(timed on {args.time_exact} examples; max |this run - saved| = {drift:.1e} nats)")

    exact_mean = exact_rows.mean(0)
    order = [tuple(h) for h in verified.meta["verified_heads"]]
    rows = []
    for share, m in [(0.0, 0)] + [(s, int(np.ceil(s * n_heads))) for s in shares]:
        est = fast.per_example.copy()
        for layer, head in order[:m]:
            est[:, layer, head] = verified.per_example[:, layer, head]
        seconds = fast_s + (verified_s - fast_s) * m / m_max
        mean = est.mean(0)
        rows.append({"share": share, "heads_exact": m, "spearman": spearman(mean.ravel(), exact_mean.ravel()),
                     "top10": overlap(mean, exact_mean, 10), "top11": overlap(mean, exact_mean, 11),
                     "seconds": round(seconds, 1), "time_vs_exact": seconds / exact_s})
    table = pd.DataFrame(rows)
    table["meets_target"] = (table.top10 >= 0.8) & (table.spearman >= 0.6) & (table.time_vs_exact <= 1 / 3)
    print("\n" + table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    out = args.out or ROOT / "results" / f"verified_pcs_{args.model}{suffix}.csv"
    table.to_csv(out, index=False)
    meta = {"model": args.model, "contrast": args.contrast, "n": n, "reference": ref_path.name,
            "fast_seconds": round(fast_s, 1), "verified_seconds": round(verified_s, 1), "verified_heads": m_max,
            "exact_seconds_estimated": round(exact_s, 1), "exact_timed_on": args.time_exact, "max_drift": drift,
            "command": f"python benchmarks/bench_verified_pcs.py --n {args.n} --shares {args.shares}"
                       + (f" --contrast {args.contrast}" if args.contrast else "")}
    out.with_suffix(".json").write_text(json.dumps(meta, indent=1))
    print(f"\nwritten: {out} (+ .json)")


if __name__ == "__main__":
    main()
