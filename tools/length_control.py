"""Is a method's ROUGE gain only a matter of length? Cut the baselines' outputs to the method's.

    python tools/length_control.py results/lamp5-acl_smollm2-135m_eval.csv --task lamp5 --method dps \
        --baselines rag,generic --out results/lamp5-acl_smollm2-135m_length-control.csv

ROUGE-1 F1 rewards an output of the gold's length: a model that writes titles twice too long
gains from anything that makes them shorter, whatever the words. For every query, each baseline's
prediction is cut to the method's number of words (its first words: a title's head carries its
topic), re-scored against the gold, and compared pairwise with the method. A gain that survives
the cut is about the words; one that vanishes is about the length. The cut uses the method's own
output length per query, so it is a diagnostic, not a method anyone could deploy.

Reads the exported table (predictions, no golds) and the task's shipped data for the golds; writes
one row per (baseline, cut) with mean words, ROUGE-1 and the paired difference with a 95%
bootstrap interval, plus a ``.json`` beside it with the command.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import pandas as pd


def length_control(table: pd.DataFrame, golds: dict[str, str], method: str, baselines: list[str]) -> pd.DataFrame:
    """Rows ``(baseline, cut)``: ROUGE-1 of each baseline as it is and cut to ``method``'s length
    per query, with ``method`` minus it (mean, 95% interval, wins/ties/losses) over shared ids."""
    from workbench.data.metrics import bootstrap_ci, score_generation

    missing = [m for m in [method, *baselines] if m not in set(table["method"])]
    if missing:
        raise ValueError(f"the table has no rows for {missing}; it holds {sorted(set(table['method']))}")
    preds = table.pivot(index="id", columns="method", values="prediction")[[method, *baselines]].dropna()
    unknown = [i for i in preds.index if i not in golds]
    if unknown:
        raise ValueError(f"{len(unknown)} ids of the table (e.g. {unknown[0]}) are not in the data; "
                         "pass the --task whose data the table was made on")

    def rouge1(text: str, gold: str) -> float:
        return score_generation(text, gold)["rouge1"]

    words = preds[method].map(lambda t: len(str(t).split()))
    own = pd.Series([rouge1(str(preds.at[i, method]), golds[i]) for i in preds.index], index=preds.index)
    rows = [{"system": method, "cut": "none", "n": len(preds), "words": words.mean(), "rouge1": own.mean()}]
    for base in baselines:
        for cut in ("none", f"to {method}'s length"):
            texts = [str(preds.at[i, base]) if cut == "none" else " ".join(str(preds.at[i, base]).split()[:words[i]])
                     for i in preds.index]
            score = pd.Series([rouge1(t, golds[i]) for t, i in zip(texts, preds.index)], index=preds.index)
            diff = own - score
            _, lo, hi = bootstrap_ci(diff.values)
            rows.append({"system": base, "cut": cut, "n": len(preds), "words": sum(len(t.split()) for t in texts) / len(texts),
                         "rouge1": score.mean(), f"delta_{method}": diff.mean(), "lo": lo, "hi": hi,
                         # the comparison table's tolerance (workbench.runner.compare), so the counts agree with it
                         "wins": int((diff > 1e-12).sum()), "ties": int((diff.abs() <= 1e-12).sum()),
                         "losses": int((diff < -1e-12).sum())})
    return pd.DataFrame(rows).astype({"wins": "Int64", "ties": "Int64", "losses": "Int64"})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("table", type=Path, nargs="+",
                    help="exported evaluation tables (results/<data>_<model>_eval.csv); several are pooled, "
                         "e.g. a table and its replication on further queries (a query in two is an error)")
    ap.add_argument("--task", required=True, help="the task whose shipped data holds the golds (lamp4, lamp5)")
    ap.add_argument("--method", required=True)
    ap.add_argument("--baselines", default="rag,generic")
    ap.add_argument("--out", type=Path, default=None, help="CSV to write (a .json with the command beside it)")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)

    from workbench.data.lamp import load_task_data
    from workbench.runner.compare import load_results, save_table

    # load_results keeps an empty prediction as "" (read_csv would make it NaN and drop its query)
    table = pd.concat([load_results(t) for t in args.table], ignore_index=True)
    wanted = [args.method, *[b for b in args.baselines.split(",") if b]]
    table = table[table["method"].isin(wanted)]
    if table.duplicated(["method", "id"]).any():
        print("a query is in two of the tables: pool tables of different queries", file=sys.stderr)
        return 2
    data = load_task_data(args.task)
    golds = {ex.id: ex.gold for ex in data}
    result = length_control(table, golds, args.method, [b for b in args.baselines.split(",") if b])
    with pd.option_context("display.width", 160, "display.float_format", "{:.4f}".format):
        print(result.to_string(index=False))
    if args.out is not None:
        meta = {"tables": [str(t) for t in args.table], "task": args.task, "method": args.method, "baselines": args.baselines,
                "command": shlex.join(["python", "tools/length_control.py", *(argv if argv is not None else sys.argv[1:])])}
        try:
            save_table(result, args.out, meta, overwrite=args.overwrite)
        except FileExistsError:
            print(f"{args.out} exists; pass --overwrite to replace it", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
