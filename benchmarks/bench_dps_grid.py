"""What a DPS tuning grid costs with and without reusing the prompt passes across its points.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_dps_grid.py [--task lamp5] [--n 8] [--model smollm2-135m]

``workbench tune`` runs DPS at every point of an alpha x head-set grid on the same tuning
queries, batched the same way each time. DPS's prompt pass (all of the prompt but its last
token, where masking starts) is the same at every point, and on LaMP-5's ~1,200-token ``rag``
prompts it is most of the cost; ``reuse_prompt_caches`` (which ``tune`` enters for DPS) keeps
it from the first point for the others. Side by side in one run, on ``--n`` tuning-user
``rag`` prompts decoded as one batch, every grid point in turn: without reuse, then with
(alternating which goes first per point would not help: reuse needs the first point's pass).
The heads are the top ``--top`` % of the saved PCS of the task's tuning users. Both must give
the same tokens. Prints the table and the ratio; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import pandas as pd

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import workbench as wb  # noqa: E402
from workbench.data.lamp import load_task_data  # noqa: E402
from workbench.data.prompts import build_prompt, first_line_complete  # noqa: E402
from workbench.data.splits import split_users  # noqa: E402
from workbench.science.dps_batch import dps_generate_batch, reuse_prompt_caches  # noqa: E402
from workbench.science.pcs_result import PreferenceScores  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--task", default="lamp5")
    ap.add_argument("--n", type=int, default=8, help="tuning queries, decoded as one batch")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--heads-file", type=Path, default=None,
                    help="saved PCS (default: results/pcs_<data>_<model>_tune-users.json)")
    args = ap.parse_args()
    model = wb.load_model(args.model, progress=False)
    data = load_task_data(args.task)
    path = args.heads_file or ROOT / "results" / f"pcs_{Path(str(data.path)).name}_{args.model}_tune-users.json"
    scores = PreferenceScores.load(path, model=model)
    examples = list(split_users(data, "tune"))[:args.n]
    prompts = [build_prompt(model, ex, k=5, reserve=args.tokens)[0] for ex in examples]
    tokens = sum(model.encode(p).shape[-1] for p in prompts) / len(prompts)
    grid = [(alpha, top) for top in (2.0, 4.0) for alpha in (0.5, 1.0)]
    print(model)
    print(f"{len(prompts)} {args.task} tuning prompts ({tokens:.0f} tokens on average), one batch; grid alpha x top %: {grid}\n")

    def run_grid() -> tuple[list[float], list[list[str]]]:
        times, outs = [], []
        for alpha, top in grid:
            t0 = time.perf_counter()
            outs.append(dps_generate_batch(model, prompts, scores.top_percent(top), alpha=alpha,
                                           max_new_tokens=args.tokens, until=first_line_complete))
            times.append(time.perf_counter() - t0)
        return times, outs

    plain_t, plain_out = run_grid()
    with reuse_prompt_caches() as store:
        reuse_t, reuse_out = run_grid()
    rows = [{"alpha": a, "top_percent": t, "no_reuse_s": p, "reuse_s": r, "same_tokens": po == ro}
            for (a, t), p, r, po, ro in zip(grid, plain_t, reuse_t, plain_out, reuse_out)]
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(f"\n{store}")
    print(f"whole grid: {sum(plain_t):.1f} s without reuse, {sum(reuse_t):.1f} s with: "
          f"{sum(plain_t) / sum(reuse_t):.2f}x; later points alone: {sum(plain_t[1:]) / sum(reuse_t[1:]):.2f}x")


if __name__ == "__main__":
    main()
