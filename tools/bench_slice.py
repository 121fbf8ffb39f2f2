"""Run methods on a slice of a task's evaluation queries — e.g. the ones a table's ``--n`` left out,
to check a finding on users it has not seen.

    OMP_NUM_THREADS=1 python tools/bench_slice.py --task lamp5 --methods caa-all+dps \
        --tuned runs/protocol-lamp5/tune-caa-all-dps/tuned.json --start 300 --stop 450 --out runs/eval-lamp5-300-450

The slice is of the evaluation users' queries in file order (``workbench bench --users eval`` runs
the first ``--n`` of the same list), so ``--start 300`` begins where ``--n 300`` stopped. The run
directory is a normal ``workbench bench`` one (outputs.jsonl, results.csv, run.json, resumable) and
records the slice with the users.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", required=True)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--methods", required=True)
    ap.add_argument("--tuned", action="append", default=[], help="tuned.json files (the methods' chosen settings)")
    ap.add_argument("--start", type=int, required=True)
    ap.add_argument("--stop", type=int, required=True)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    from workbench.core.loading import load_model
    from workbench.data.lamp import load_task_data
    from workbench.data.splits import TUNE_FRACTION, split_users
    from workbench.methods import GenerationSettings
    from workbench.runner.bench import DEFAULT_BATCH_SIZE, format_summary, run_bench
    from workbench.runner.settings import parse_method_names
    from workbench.runner.tuning import methods_for_run, tuned_for_run

    if not 0 <= args.start < args.stop:
        print(f"--start {args.start} --stop {args.stop}: need 0 <= start < stop", file=sys.stderr)
        return 2
    data = split_users(load_task_data(args.task), "eval", TUNE_FRACTION)
    if args.stop > len(data):
        print(f"--stop {args.stop}: the task has {len(data)} evaluation queries", file=sys.stderr)
        return 2
    part = data._subset(list(data)[args.start:args.stop])
    names = parse_method_names(args.methods)
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens)
    methods = methods_for_run(names, settings, args.model, tuned=args.tuned, set_items=[])
    tuned, _ = tuned_for_run(args.tuned, names, "eval")
    model = load_model(args.model)
    users = {"users": "eval", "fraction": TUNE_FRACTION, "queries": [args.start, args.stop]}
    result = run_bench(model, part, methods, args.out, users=users, tuned=tuned, settings=settings,
                       batch_size=DEFAULT_BATCH_SIZE)
    print(format_summary(result.summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
