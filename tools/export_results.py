"""Collect benchmark directories into results/<data>_<model>.csv (+ .json), the file notebook
05 and the README's table read. Predictions and scores only; gold texts stay in the dataset.

    python tools/export_results.py OUT.csv DIR [DIR ...] --command "workbench bench ..." ...
"""

from __future__ import annotations

import argparse
import json
import platform
from datetime import date
from pathlib import Path

import torch

from workbench.runner.compare import load_runs, save_results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("dirs", nargs="+", type=Path)
    ap.add_argument("--command", action="append", default=[], help="the commands that produced the runs")
    ap.add_argument("--note", default="")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args()
    outputs = load_runs(*args.dirs)
    runs = {str(d): json.loads((d / "run.json").read_text()) for d in args.dirs}
    first = next(iter(runs.values()))
    source = {
        "model": first["model"], "task": first["task"], "split": first["split"],
        "data": Path(first["data"]).name, "settings": first["settings"],
        "method_settings": {m: s for r in runs.values() for m, s in r.get("method_settings", {}).items()},
        "n_per_method": outputs.groupby("method").size().to_dict(),
        "commands": args.command, "note": args.note, "exported": str(date.today()),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, float32, greedy",
    }
    path = save_results(outputs, args.out, source, overwrite=args.overwrite)
    print(f"wrote {path} ({len(outputs)} outputs) and {path.with_suffix('.json')}")


if __name__ == "__main__":
    main()
