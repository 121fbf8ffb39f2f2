"""How Fints' default layer and scale were chosen (SmolLM2-135M, CPU, a few minutes).

    python benchmarks/fints_sweep.py [--users 8] [--layers 6,12,18,24] [--scales 0,1,4,8] [--rag]

Tuning data: leave-one-out items of users' histories (``workbench.science.fints.dev_examples``):
the query is one of a user's earlier articles, the gold the user's own headline for it,
the profile the user's other items. Items whose headline is the gold of a dev query are
never used, so the dev queries the benchmark reports on are not looked at. Prints mean
teacher-forced NLL of the gold per (layer, scale) and its change vs scale 0 (``--score nll``,
one forward each), or ROUGE-1 / ROUGE-L / METEOR of greedy outputs and how many changed
(``--score generate``).
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd  # noqa: E402

import workbench as wb  # noqa: E402
from workbench.data.lamp import load_lamp4_news  # noqa: E402
from workbench.runner.sweeps import dev_examples, fints_sweep as sweep  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=8)
    ap.add_argument("--layers", default="6,12,18,24")
    ap.add_argument("--scales", default="0,1,4,8")
    ap.add_argument("--score", default="nll", choices=["nll", "generate"],
                    help="nll: teacher-forced NLL of the gold (cheap); generate: greedy + ROUGE/METEOR")
    ap.add_argument("--tokens", type=int, default=32, help="max new tokens per headline")
    ap.add_argument("--rag", action="store_true", help="steer the rag prompt instead of the plain one")
    ap.add_argument("--out", default=None, help="write the per-example table here (csv)")
    args = ap.parse_args()

    model = wb.load_model(progress=False)
    data = load_lamp4_news()
    examples = dev_examples(data, n_users=args.users)
    layers = [int(x) for x in args.layers.split(",")]
    scales = [float(x) for x in args.scales.split(",")]
    t0 = time.perf_counter()
    log = open(args.out + ".partial.jsonl", "w") if args.out else None

    def save(row: dict) -> None:  # partial results survive an interruption
        if log:
            log.write(json.dumps(row) + "\n")
            log.flush()

    df = sweep(model, examples, data, layers, scales, rag=args.rag, score=args.score, max_new_tokens=args.tokens, on_row=save)
    print(f"{len(examples)} leave-one-out queries of {len({e.user_id for e in examples})} users, "
          f"{'rag' if args.rag else 'plain'} prompt, {time.perf_counter() - t0:.0f} s\n")
    if args.out:
        df.to_csv(args.out, index=False)
    if args.score == "nll":
        base = df[df["scale"] == 0].drop_duplicates("id").set_index("id")["nll"]
        df["delta_nll"] = [v - base.get(i) for i, v in zip(df["id"], df["nll"])]
        df["better"] = df["delta_nll"] < 0
        table = df.groupby(["layer", "scale"])[["nll", "delta_nll", "better"]].mean()
    else:
        base = df[df["scale"] == 0].drop_duplicates("id").set_index("id")["prediction"]
        df["changed"] = [p != base.get(i) for i, p in zip(df["id"], df["prediction"])]
        table = df.groupby(["layer", "scale"])[["rouge1", "rougeL", "meteor", "changed"]].mean()
    with pd.option_context("display.float_format", "{:.4f}".format, "display.width", 120):
        print(table)


if __name__ == "__main__":
    main()
