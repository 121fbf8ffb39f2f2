"""Comparing methods: several benchmark runs read as one table, paired differences, per user.

Benchmark runs (``workbench bench``) can be split over directories — one per machine or
per method family. ``load_runs`` reads them back as one DataFrame and refuses runs that
are not comparable (another model, task, data or decoding settings).

Two methods are compared *on the same examples*: ``comparison_table`` restricts to the
examples every listed method has, reports each method's mean with a bootstrap interval,
and its paired difference to a baseline (mean of per-example differences, with its own
interval — much tighter than comparing two overlapping intervals) and its win/tie/loss
count. ``per_user`` gives the user x method view.

``save_results`` / ``load_results`` keep a run's outcome in a small CSV (predictions and
scores, no gold texts: those stay in the dataset) plus a JSON of where it came from, so a
notebook can show the full comparison without re-running hours of generation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from workbench._util import atomic_write, atomic_write_text
from workbench.runner.bench import METRICS, read_outputs, read_run_info
from workbench.data.metrics import ALL_METRICS, CORPUS_METRICS, bootstrap_ci, bootstrap_metric, corpus_pairs

_SAME = ("model", "task", "split", "settings")
_SAME_IF_RECORDED = ("dtype", "data_files")  # older run.json files lack them: compared where both have them


def load_runs(*dirs: str | Path) -> pd.DataFrame:
    """The outputs of one or more benchmark directories, as one DataFrame.

    Columns: method, id, user_id, prediction, gold, rouge1, rougeL, meteor, seconds, run
    (the directory). Raises if the runs differ in model, task, split or decoding settings,
    or if two runs hold the same (method, example) with different predictions.
    """
    if not dirs:
        raise ValueError("give at least one benchmark directory")
    frames, first = [], None
    for d in map(Path, dirs):
        run_file = d / "run.json"
        if not run_file.exists():
            raise FileNotFoundError(f"{d} is not a benchmark directory (no run.json); run `workbench bench --out {d}`")
        info = read_run_info(d)
        if first is None:
            first = (d, info)
        else:
            diff = [k for k in _SAME if info.get(k) != first[1].get(k)]
            diff += [k for k in _SAME_IF_RECORDED if k in info and k in first[1] and info[k] != first[1][k]]
            if diff:
                raise ValueError(f"{d} and {first[0]} differ in {', '.join(diff)}; their results are not comparable")
        recs = list(read_outputs(d / "outputs.jsonl").values())
        if recs:
            frames.append(pd.DataFrame(recs).assign(run=str(d)))
    if not frames:
        raise ValueError(f"no outputs in {[str(d) for d in dirs]}")
    out = pd.concat(frames, ignore_index=True)
    dup = out[out.duplicated(["method", "id"], keep=False)]
    if len(dup):
        clash = dup.groupby(["method", "id"])["prediction"].nunique()
        clash = clash[clash > 1]
        if len(clash):
            m, i = clash.index[0]
            raise ValueError(f"method {m!r} on example {i} has different outputs in two runs; keep one of them")
        out = out.drop_duplicates(["method", "id"])
    return out


def common_examples(outputs: pd.DataFrame, methods: Sequence[str]) -> list[str]:
    """Ids of the examples every method in ``methods`` has an output for (in first-seen order)."""
    have = [set(outputs.loc[outputs["method"] == m, "id"]) for m in methods]
    missing = [m for m, h in zip(methods, have) if not h]
    if missing:
        raise ValueError(f"no outputs for {missing}; methods present: {sorted(outputs['method'].unique())}")
    both = set.intersection(*have)
    return [i for i in dict.fromkeys(outputs["id"]) if i in both]


def best_covered(outputs: pd.DataFrame, methods: Sequence[str]) -> tuple[list[str], dict[str, int]]:
    """The methods of ``methods`` (in that order) that cover the most examples, and how many
    examples each of the others has — for a main table that is not cut down to the slowest run."""
    covered = outputs.groupby("method")["id"].nunique()
    present = [m for m in methods if m in covered.index]
    if not present:
        raise ValueError(f"none of {list(methods)} has outputs; methods present: {sorted(covered.index)}")
    most = max(covered[m] for m in present)
    return [m for m in present if covered[m] == most], {m: int(covered[m]) for m in present if covered[m] < most}


def _paired(values: pd.DataFrame, method: str, baseline: str, metric: str, seed: int) -> dict:
    d = (values[(method, metric)] - values[(baseline, metric)]).dropna().to_numpy()
    if d.size == 0:
        return {"diff": np.nan, "diff_lo": np.nan, "diff_hi": np.nan, "wins": 0, "ties": 0, "losses": 0}
    mean, lo, hi = bootstrap_ci(d, seed=seed)
    return {"diff": mean, "diff_lo": lo, "diff_hi": hi, "wins": int((d > 1e-12).sum()),
            "ties": int((np.abs(d) <= 1e-12).sum()), "losses": int((d < -1e-12).sum())}


def comparison_table(outputs: pd.DataFrame, methods: Sequence[str] | None = None, baseline: str = "rag",
                     metrics: Iterable[str] | None = None, seed: int = 0, labels: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per method: n, each metric's mean [95% interval], and the paired difference to
    ``baseline`` on the same examples (mean [interval], wins / ties / losses) in the first metric.

    Only examples that every method in ``methods`` (and the baseline) has are used, so the
    rows are comparable; ``n`` says how many. ``metrics``: default, the task's (ROUGE-1, ROUGE-L,
    METEOR; accuracy and macro-F1 for outputs of a classification task, the macro-F1 over
    ``labels`` — pass the task's label set, :func:`workbench.data.metrics.task_labels`, as LaMP
    scores it — with a bootstrap over examples).
    """
    methods = list(dict.fromkeys(methods or outputs["method"].unique()))
    if baseline not in methods:
        methods = [baseline] + methods
    if metrics is None:
        metrics = ("accuracy", "macro_f1") if "accuracy" in outputs and "rouge1" not in outputs else METRICS
    metrics = list(metrics)
    ids = common_examples(outputs, methods)
    sub = outputs[outputs["method"].isin(methods) & outputs["id"].isin(ids)]
    per_example = [m for m in metrics if m not in CORPUS_METRICS]
    wide = sub.pivot_table(index="id", columns="method", values=per_example, aggfunc="first").swaplevel(axis=1)
    rows = []
    for m in methods:
        row: dict = {"method": m, "n": len(ids)}
        for metric in metrics:
            if metric in CORPUS_METRICS:
                g = sub[sub["method"] == m].drop_duplicates("id")
                row[metric], row[f"{metric}_lo"], row[f"{metric}_hi"] = bootstrap_metric(
                    *corpus_pairs(g, metric), metric, labels, seed=seed)
                continue
            vals = wide[(m, metric)].dropna().to_numpy()
            if vals.size:
                row[metric], row[f"{metric}_lo"], row[f"{metric}_hi"] = bootstrap_ci(vals, seed=seed)
            else:
                row[metric] = row[f"{metric}_lo"] = row[f"{metric}_hi"] = np.nan
        if m != baseline:
            for k, v in _paired(wide, m, baseline, per_example[0], seed).items():
                row[f"{k}_vs_{baseline}"] = v
        row["seconds_per_example"] = float(sub.loc[sub["method"] == m, "seconds"].mean()) if "seconds" in sub else np.nan
        rows.append(row)
    table = pd.DataFrame(rows)
    table.attrs.update(baseline=baseline, metric=per_example[0], n=len(ids))
    return table


def format_table(table: pd.DataFrame) -> str:
    """``comparison_table`` as a Markdown table (what goes into a report or an issue note)."""
    base, metric = table.attrs.get("baseline", "rag"), table.attrs.get("metric", "rouge1")
    mets = [m for m in ALL_METRICS if m in table]
    head = "| method | n | " + " | ".join(mets) + f" | Δ{metric} vs {base} [95%] | wins/ties/losses |"
    lines = [head, "|" + "---|" * (len(mets) + 4)]
    for r in table.to_dict("records"):
        cells = [f"{r[m]:.4f} [{r[m + '_lo']:.3f}, {r[m + '_hi']:.3f}]" if pd.notna(r[m]) else "n/a" for m in mets]
        d = r.get(f"diff_vs_{base}")
        if d is None or pd.isna(d):
            delta, wtl = "—", "—"
        else:
            delta = f"{d:+.4f} [{r[f'diff_lo_vs_{base}']:+.3f}, {r[f'diff_hi_vs_{base}']:+.3f}]"
            wtl = "/".join(str(int(r[f"{k}_vs_{base}"])) for k in ("wins", "ties", "losses"))
        lines.append(f"| {r['method']} | {r['n']} | " + " | ".join(cells) + f" | {delta} | {wtl} |")
    return "\n".join(lines)


def per_user(outputs: pd.DataFrame, methods: Sequence[str] | None = None, metric: str = "rouge1") -> pd.DataFrame:
    """User x method mean of ``metric`` over the examples all ``methods`` share."""
    methods = list(dict.fromkeys(methods or outputs["method"].unique()))
    ids = common_examples(outputs, methods)
    sub = outputs[outputs["method"].isin(methods) & outputs["id"].isin(ids)]
    table = sub.pivot_table(index="user_id", columns="method", values=metric, aggfunc="mean")
    return table[methods]


def save_table(table: pd.DataFrame, path: str | Path, source: dict, overwrite: bool = False) -> Path:
    """Write ``table`` to ``path`` (.csv) and ``source`` (what made it: the command, its inputs)
    to the ``.json`` beside it, each atomically; an existing ``path`` is kept unless ``overwrite``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    atomic_write(path, lambda tmp: table.to_csv(tmp, index=False))
    atomic_write_text(path.with_suffix(".json"), json.dumps(source, indent=1, ensure_ascii=False))
    return path


def save_results(outputs: pd.DataFrame, path: str | Path, source: dict, overwrite: bool = False) -> Path:
    """Write predictions and scores (no gold texts) to ``path`` (.csv) and ``source`` (where
    they came from: model, data, settings, commands) to the ``.json`` beside it."""
    cols = [c for c in ("method", "id", "user_id", "prediction", *ALL_METRICS, "seconds", "prompt_tokens") if c in outputs]
    return save_table(outputs[cols].sort_values(["method", "id"]), path, source, overwrite)


def load_results(path: str | Path, dataset=None) -> pd.DataFrame:
    """Outputs saved by :func:`save_results`; with ``dataset``, the gold outputs are joined back."""
    path = Path(path)
    out = pd.read_csv(path, dtype={"id": str, "user_id": str}, keep_default_na=False,
                      na_values={m: ["", "NaN", "nan"] for m in ALL_METRICS})
    out.attrs["source"] = json.loads(path.with_suffix(".json").read_text()) if path.with_suffix(".json").exists() else {}
    if dataset is not None:
        gold = {ex.id: ex.gold for ex in dataset}
        missing = set(out["id"]) - set(gold)
        if missing:
            raise ValueError(f"{len(missing)} result ids are not in {dataset!r} (e.g. {sorted(missing)[0]}): another dataset?")
        out["gold"] = out["id"].map(gold)
    return out
