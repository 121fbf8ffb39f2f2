"""The comparison table on the evaluation users, every method at its tuned settings.

    python tools/eval_table.py --tuned runs/tune-a/tuned.json --tuned runs/tune-b/tuned.json \
        --runs runs/eval-tuned --out results/lamp4-news_smollm2-135m_eval.csv
    # re-tune one method, keep the others' rows of the earlier export:
    python tools/eval_table.py --tuned runs/tune-dps/tuned.json --runs runs/eval-dps \
        --previous results/lamp4-news_smollm2-135m_eval.csv --out results/lamp4-news_smollm2-135m_eval.csv --overwrite
    # another task: no saved default run; untuned baselines (no --tuned entry) come from --runs too
    python tools/eval_table.py --task lamp2n --tuned runs/tune-lamp2n/tuned.json --runs runs/eval-lamp2n \
        --methods majority,generic,rag,dps --out results/lamp2n-news_smollm2-135m_eval.csv

For each method, its settings are the ones ``workbench tune`` chose on the tuning users.
Where they equal the method's defaults, its evaluation-user predictions are the saved ones
(``--saved``, the full run at default settings: greedy decoding is deterministic and
``tools/identity_check.py`` re-checks that the code still reproduces them); otherwise they
must come from a run at the tuned settings on the evaluation users (``--runs``; the settings
its ``run.json`` records are checked against the tuned ones), and the tool prints the command
that makes it. A method no ``--tuned`` file names (``generic``, ``rag``, ``majority``) is taken at
its default settings. Writes the table (predictions and scores, no gold texts)
and a ``.json`` saying where every method's rows came from.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
# Full runs at default settings, per (task, model): a method whose tuned settings are its defaults
# takes its evaluation rows from there.
SAVED = {("lamp4", "smollm2-135m"): ROOT / "results" / "lamp4-news_smollm2-135m.csv"}
METHODS = ("generic", "rag", "dps", "caa-all", "steerx-caa", "opt-all", "steerx-opt", "fints", "fints+rag",
           "caa-user", "caa-all+dps", "steerx-caa+dps")


def _is_saved_setting(recorded: dict | None, chosen: dict) -> bool:
    """Whether the saved run was made at the chosen settings (as its .json records them; the
    method's defaults may have changed since)."""
    from workbench.runner.tuning import default_of

    return recorded is not None and all(_same(v, default_of(recorded, k)) for k, v in chosen.items())


def _same(a: object, b: object) -> bool:
    """Equal as settings: numbers by value (a fixed "2" is the recorded 2.0), the rest as text."""
    if not isinstance(a, bool) and not isinstance(b, bool):
        try:
            return float(a) == float(b)
        except (TypeError, ValueError):
            pass
    return str(a) == str(b)


def _number(text: str) -> object:
    """A fixed setting as tuned.json records it ("8.0", "none") as the value it stands for; other
    text ("entropy") as it is."""
    try:
        x = float(text)
    except (TypeError, ValueError):
        return None if str(text).lower() == "none" else text
    return int(x) if x.is_integer() else x


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tuned", action="append", type=Path, default=[],
                    help="tuned.json from `workbench tune` (repeatable); methods it does not name run at their defaults")
    ap.add_argument("--runs", action="append", type=Path, default=[], help="runs at tuned settings, --users eval")
    ap.add_argument("--saved", type=Path, default=None,
                    help="a full run at default settings, or 'none' (default: the saved one of this task and model, if any)")
    ap.add_argument("--model", default="smollm2-135m", help="the model the runs used (recorded)")
    ap.add_argument("--task", default="lamp4", help="the task the runs used: lamp4, lamp5 or lamp2n (its shipped data)")
    ap.add_argument("--n", type=int, default=None,
                    help="the first N evaluation queries only (runs made with --users eval --n N)")
    ap.add_argument("--start", type=int, default=0,
                    help="skip the first START evaluation queries: with --n, the slice a replication ran "
                         "(tools/bench_slice.py --start START --stop START+N)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--fixed", action="append", default=[], help="METHOD.FIELD=VALUE settings used at tuning and here")
    ap.add_argument("--previous", type=Path, default=None,
                    help="an earlier export of this table: methods not in any --tuned file keep its rows, provenance "
                         "and commands")
    ap.add_argument("--command", action="append", default=[], help="the tune/bench commands behind the runs (recorded)")
    ap.add_argument("--not-run", action="append", default=[], metavar="METHOD=WHY",
                    help="a method of the task's table left out, and why (recorded, so the table says it)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    if any("=" not in item for item in args.not_run):
        ap.error("--not-run takes METHOD=WHY, e.g. --not-run 'steerx-opt=not tuned: CPU'")

    from workbench.runner.bench import read_run_info
    from workbench.runner.compare import comparison_table, format_table, load_results, load_runs, save_results
    from workbench.data.lamp import load_task_data
    from workbench.data.metrics import task_labels
    from workbench.data.splits import describe_split, split_users
    from workbench.runner.tuning import load_tuned

    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    tuned, files, settings_of = {}, {}, {}
    for path in args.tuned:
        d = json.loads(path.read_text())
        settings_of.update(load_tuned(path))  # the chosen point with the settings fixed while tuning
        for m, info in d["methods"].items():
            tuned[m], files[m] = info, str(path)
    data = load_task_data(args.task)
    if args.start < 0:
        ap.error(f"--start {args.start}: give a number of evaluation queries to skip (>= 0)")
    queries = list(split_users(data, "eval"))[args.start: None if args.n is None else args.start + args.n]
    if not queries:
        ap.error(f"--start {args.start}: the task has fewer evaluation queries than that")
    eval_ids = {ex.id for ex in queries}
    if args.saved is None:
        args.saved = SAVED.get((args.task, args.model), Path("none"))
    if str(args.saved) == "none":
        saved, saved_settings = None, {}
    else:
        saved = load_results(args.saved, dataset=data)
        saved_settings = json.loads(args.saved.with_suffix(".json").read_text()).get("method_settings", {})
    runs = load_runs(*args.runs) if args.runs else pd.DataFrame()
    # each run's run.json, keyed as load_runs names the run (its "run" column)
    infos = {str(d): read_run_info(Path(d)) for d in args.runs}
    run_settings = {d: info.get("method_settings", {}) for d, info in infos.items()}
    ran_on = {info.get("model") for info in infos.values()}
    if ran_on - {args.model}:
        print(f"the runs were made with {sorted(ran_on)}, not --model {args.model}; give the model they used")
        return 1
    frames, provenance, missing = [], {}, []
    prev_rows, prev_about = None, {}
    if args.previous is not None:
        prev_rows = load_results(args.previous, dataset=data)  # gold joined back: macro-F1 needs it
        prev_about = json.loads(args.previous.with_suffix(".json").read_text())
    for m in names:
        if m not in tuned and m in prev_about.get("methods", {}):
            rows = prev_rows[prev_rows["method"] == m]
            frames.append(rows)
            provenance[m] = {**prev_about["methods"][m], "n": len(rows),
                             "kept_from": f"{args.previous.name} ({prev_about.get('exported', '?')})"}
            continue
        chosen = {k: _number(v) if isinstance(v, str) else v for k, v in settings_of.get(m, {}).items()}
        if saved is not None and _is_saved_setting(saved_settings.get(m), chosen):
            rows = saved[(saved["method"] == m) & saved["id"].isin(eval_ids)]
            source = f"{args.saved.name} (tuned settings = its recorded settings{'' if m in tuned else '; not tuned'})"
        else:
            rows = runs[(runs["method"] == m) & runs["id"].isin(eval_ids)] if len(runs) else runs
            wrong = [d for d in rows["run"].unique() if not _is_saved_setting(run_settings[d].get(m), chosen)] \
                if len(rows) else []
            if wrong:
                # a run at other settings would be reported as tuned: refuse rather than mislabel it
                print(f"{m}: {wrong} ran it at {[run_settings[d].get(m) for d in wrong]}, not at the chosen {chosen}; "
                      "re-run it at the tuned settings into another --out")
                return 1
            at = "the tuned settings" if m in tuned else "its default settings (not tuned)"
            source = f"run at {at} in {', '.join(map(str, args.runs)) or '(no --runs)'}"
        if len(rows) < len(eval_ids):
            missing.append(m)
            sets = " ".join(f"--set {m}.{k}={v}" for k, v in chosen.items())
            print(f"{m}: {len(rows)}/{len(eval_ids)} evaluation predictions; make them with\n"
                  f"  OMP_NUM_THREADS=1 workbench bench --methods {m} --users eval {sets} --out runs/eval-tuned")
        frames.append(rows)
        provenance[m] = {"settings": chosen, "grid": tuned.get(m, {}).get("points"), "tuned_in": files.get(m),
                         "source": source, "n": len(rows)}
    if missing:
        print(f"not complete: {missing}")
        return 1
    outputs = pd.concat(frames, ignore_index=True)
    table = comparison_table(outputs, names, baseline="rag", labels=task_labels(args.task))
    print(format_table(table))
    recorded = next((info.get("settings") for info in infos.values()), None)  # load_runs checked they agree
    about = {"model": args.model, "n_queries": len(eval_ids), "task": args.task, "split": "dev",
             **({"queries": [args.start, args.start + len(eval_ids)]} if args.start else {}),
             "data": Path(str(data.path)).name,
             "users": {"users": "eval", **describe_split(data)}, "methods": provenance, "fixed": args.fixed,
             "tuned_files": sorted({*prev_about.get("tuned_files", []), *map(str, args.tuned)}),
             "commands": list(dict.fromkeys([*prev_about.get("commands", []), *args.command])), "exported": str(date.today()),
             "not_run": dict(item.split("=", 1) for item in args.not_run),
             "settings": recorded or {"max_new_tokens": 32, "k": 5, "retrieval": "bm25", "decoding": "greedy"}}
    save_results(outputs, args.out, about, overwrite=args.overwrite)
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
