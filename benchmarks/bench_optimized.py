"""What fitting an optimised steering vector (``opt-all``, ``steerx-opt``) and a LoRA adapter
(``lora-*``) costs, before and after a change: by default the vocabulary projection cut to the
positions that predict a target token (commit 9813d5a before it); with ``--before cace515`` the
records grouped by length instead of padded into one batch (LaMP-5's abstracts: ~30% padding).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_optimized.py [--steps 4] [--records 16]
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_optimized.py --before cace515 --tasks lamp5,lamp4 \
        --records 8 --no-lora

Side by side in one run, on the first user of LaMP-2N and of LaMP-4 (their ``--records`` most
recent history items as ``(task prompt, output)`` records, layer 15 of SmolLM2): the function as
it was at commit 9813d5a (read from git: every position's logits, then the targets' picked)
and as it is now; twice each, the second round timed. Then the same for ``train_lora`` (rank 8,
one epoch, lr 1e-3: ``lora-user``'s tuned setting on LaMP-2N). Prints the times, the ratio,
both runs' losses (they must agree) and the largest difference between the two vectors. Needs
the git history (a clone, not a wheel).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import workbench as wb  # noqa: E402
from workbench.data.history import item_fields, user_history  # noqa: E402
from workbench.data.lamp import load_dataset  # noqa: E402
from workbench.data.prompts import task_prompt  # noqa: E402
from workbench.science.lora import train_lora  # noqa: E402
from workbench.science.optimized import optimized_vector  # noqa: E402
from _from_git import function_at  # noqa: E402  (beside this script)

BEFORE = "9813d5a"
DATASETS = {"lamp2n": "lamp2n-news", "lamp4": "lamp4-news", "lamp5": "lamp5-acl"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--records", type=int, default=16)
    ap.add_argument("--before", default=BEFORE, help="the commit whose functions are timed beside today's")
    ap.add_argument("--tasks", default="lamp2n,lamp4", help=f"comma-separated, of {sorted(DATASETS)}")
    ap.add_argument("--no-lora", action="store_true", help="time the optimised vector only")
    args = ap.parse_args()
    before = function_at(args.before, "workbench/science/optimized.py", "optimized_vector")
    lora_before = function_at(args.before, "workbench/science/lora.py", "train_lora")
    model = wb.load_model("smollm2-135m", progress=False)
    print(model, f"before = {args.before}")
    for task in args.tasks.split(","):
        data = load_dataset(DATASETS[task])
        user = data.users()[0]
        src, tgt = item_fields(task)
        items = user_history([ex for ex in data if ex.user_id == user])[-args.records:]
        records = [(task_prompt(model, task, it[src], []), it[tgt]) for it in items]
        tokens = sum(model.prompt_and_target(p, t)[0].shape[-1] for p, t in records)
        for _ in range(2):  # the first round warms up
            t0 = time.perf_counter()
            old = before(model, records, 15, steps=args.steps)
            t1 = time.perf_counter()
            new = optimized_vector(model, records, 15, steps=args.steps)
            t2 = time.perf_counter()
        print(f"{task} optimised vector: {len(records)} records, {tokens} tokens; before {t1 - t0:.1f} s, "
              f"now {t2 - t1:.1f} s ({(t1 - t0) / (t2 - t1):.2f}x); losses before {old.built['losses']} "
              f"now {new.built['losses']}; vectors differ by at most "
              f"{float((old.vector - new.vector).abs().max()):.2e} (norm {new.norm:.3f})")
        if args.no_lora:
            continue
        lora = dict(rank=8, epochs=1, lr=1e-3)
        for _ in range(2):
            t0 = time.perf_counter()
            old = lora_before(model, records, **lora)
            t1 = time.perf_counter()
            new = train_lora(model, records, **lora)
            t2 = time.perf_counter()
        print(f"{task} LoRA adapter: before {t1 - t0:.1f} s, now {t2 - t1:.1f} s ({(t1 - t0) / (t2 - t1):.2f}x); "
              f"losses before {old.built['losses']} now {new.built['losses']}")


if __name__ == "__main__":
    main()
