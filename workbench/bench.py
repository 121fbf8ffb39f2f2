"""The benchmark runner: every method on the same examples, same model, same scoring.

``run_bench`` writes into ``out_dir``:

- ``run.json``: the model, data, split, examples and settings the run came from;
- ``outputs.jsonl``: one line per (method, example): prediction, gold, scores, seconds;
- ``results.csv``: method x metric, mean and 95% bootstrap interval;
- ``results.html``: a plotly bar chart of the same.

An interrupted run resumes: finished (method, example) lines are read back, not recomputed.
A directory holding a run with different settings is refused rather than mixed.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

import workbench
from workbench._util import atomic_write_text
from workbench.methods import GenerationSettings, Method, make_methods
from workbench.model import Model

METRICS = ("rouge1", "rougeL", "meteor")


@dataclass
class BenchResult:
    """Per-example outputs and the method x metric summary of one run."""

    outputs: pd.DataFrame
    summary: pd.DataFrame
    out_dir: Path

    def __repr__(self) -> str:
        return f"BenchResult({len(self.outputs)} outputs, methods={list(self.summary['method'])}, out_dir={str(self.out_dir)!r})"

    def _repr_html_(self) -> str:
        return self.summary.to_html(index=False, float_format="{:.4f}".format)

    def figure(self):
        from workbench.figures import results_figure

        return results_figure(self.summary)


def read_outputs(path: Path) -> dict[tuple[str, str], dict]:
    """Finished records of an earlier run; a line cut short by an interruption is dropped
    from the file (so new lines don't get glued to it) and its example is recomputed."""
    done: dict[tuple[str, str], dict] = {}
    if not path.exists():
        return done
    raw = path.read_bytes()
    complete = raw[: raw.rfind(b"\n") + 1]
    if len(complete) != len(raw):
        with open(path, "r+b") as f:
            f.truncate(len(complete))
    for line in complete.decode("utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        done[(rec["method"], rec["id"])] = rec
    return done


def _append(path: Path, rec: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _fill_missing_meteor(path: Path, done: dict[tuple[str, str], dict]) -> None:
    """Records scored where WordNet was missing (METEOR NaN) get their METEOR now, if it can be
    computed here; the file is rewritten atomically so nothing is lost if this is interrupted."""
    from workbench.metrics import meteor, meteor_available

    missing = [rec for rec in done.values() if isinstance(rec.get("meteor"), float) and math.isnan(rec["meteor"])]
    if not missing or not meteor_available():
        return
    for rec in missing:
        rec["meteor"] = meteor(rec["prediction"], rec["gold"])
    tmp = path.with_suffix(".jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for rec in done.values():
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def _check_run_file(out: Path, run_info: dict) -> None:
    run_file = out / "run.json"
    if run_file.exists():
        old = json.loads(run_file.read_text())
        keys = ("model", "task", "data", "split", "settings", "users")
        diff = [k for k in keys if old.get(k) != run_info.get(k)]
        # A run may grow or be looked at in part (--n larger or smaller): the examples must be a
        # prefix of one another, in the same order, or the two runs are different experiments.
        old_ids, new_ids = old.get("example_ids", []), run_info["example_ids"]
        shorter, longer = sorted([old_ids, new_ids], key=len)
        if longer[: len(shorter)] != shorter:
            diff.append("example_ids")
        if diff:
            raise ValueError(
                f"{out} holds a run with different {', '.join(diff)}; resuming would mix results. "
                "Use another --out directory (or delete that one)."
            )
        old_ms, new_ms = old.get("method_settings", {}), run_info.get("method_settings", {})
        changed = [m for m in new_ms if m in old_ms and old_ms[m] != new_ms[m]]
        if changed:
            raise ValueError(
                f"{out} holds results of {changed} with other method settings "
                f"(before: {[old_ms[m] for m in changed]}); use another --out directory."
            )
        # methods may be added to an existing run; keep the union
        run_info["methods"] = sorted(set(old.get("methods", [])) | set(run_info["methods"]))
        run_info["method_settings"] = {**old_ms, **new_ms}
        run_info["example_ids"], run_info["n"] = longer, len(longer)
    atomic_write_text(run_file, json.dumps(run_info, indent=2))


def run_bench(
    model: Model,
    dataset: Any,
    methods: list[str] | list[Method],
    out_dir: str | Path,
    n: int | None = None,
    settings: GenerationSettings | None = None,
    progress: bool = True,
    users: dict | None = None,
) -> BenchResult:
    """Run ``methods`` on the first ``n`` examples of ``dataset`` and score them.

    Args:
        model: a :class:`workbench.Model`.
        dataset: a :class:`workbench.data.Dataset` (examples with gold outputs).
        methods: method names (see ``workbench.methods.METHODS``) or Method objects.
        out_dir: where outputs and results go; an earlier run with the same settings resumes.
        n: how many examples (file order); None = all.
        settings: decoding/prompt settings shared by every method.
        users: which users ``dataset`` was cut to (e.g. ``{"users": "eval", "fraction": 0.33}``),
            recorded with the run; a directory of a run on other users is refused.
    """
    from tqdm.auto import tqdm

    from workbench.metrics import score_generation

    settings = settings or GenerationSettings()
    ms = make_methods(list(methods), settings) if methods and isinstance(methods[0], str) else list(methods)
    examples = list(dataset)[: n if n is not None else None]
    if not examples:
        raise ValueError("no examples to run on (empty dataset or n=0)")
    missing_gold = [ex.id for ex in examples if ex.gold is None]
    if missing_gold:
        raise ValueError(f"{len(missing_gold)} examples have no gold output (e.g. {missing_gold[0]}); "
                         "benchmarks need a split with outputs")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run_info = {
        "model": model.name,
        "model_source": model.source,
        "task": examples[0].task,
        "data": str(getattr(dataset, "path", "")),
        "split": getattr(dataset, "split", ""),
        "n": len(examples),
        "example_ids": [ex.id for ex in examples],
        "methods": [m.name for m in ms],
        "method_settings": {m.name: m.describe() for m in ms},
        "settings": {"max_new_tokens": settings.max_new_tokens, "k": settings.k, "retrieval": settings.retrieval,
                     "decoding": "greedy"},
        "users": users,
        "workbench": workbench.__version__,
        "python": platform.python_version(),
    }
    _check_run_file(out, run_info)
    outputs_path = out / "outputs.jsonl"
    done = read_outputs(outputs_path)
    _fill_missing_meteor(outputs_path, done)

    by_user: dict[str, list] = {}
    for ex in examples:
        by_user.setdefault(ex.user_id, []).append(ex)
    todo = sum(1 for m in ms for ex in examples if (m.name, ex.id) not in done)
    bar = tqdm(total=todo, desc="bench", disable=not progress or todo == 0)
    for m in ms:
        if any((m.name, ex.id) not in done for ex in examples):
            m.prepare_run(model, examples, dataset)
        for user_id, user_examples in by_user.items():
            pending = [ex for ex in user_examples if (m.name, ex.id) not in done]
            if not pending:
                continue
            t0 = time.perf_counter()
            state = m.prepare_user(model, user_id, user_examples)
            prep = (time.perf_counter() - t0) / len(pending)  # preparation cost shared by the user's examples
            for ex in pending:
                bar.set_postfix_str(f"{m.name} {ex.id}")
                t0 = time.perf_counter()
                pred, info = m.generate(model, ex, state)
                seconds = time.perf_counter() - t0 + prep
                rec = {"method": m.name, "id": ex.id, "user_id": ex.user_id, "prediction": pred, "gold": ex.gold,
                       **score_generation(pred, ex.gold), "seconds": round(seconds, 3), **info}
                _append(outputs_path, rec)
                done[(m.name, ex.id)] = rec
                bar.update(1)
    bar.close()

    wanted = {(m.name, ex.id) for m in ms for ex in examples}
    outputs = pd.DataFrame([rec for key, rec in done.items() if key in wanted])
    summary = summarize_outputs(outputs, [m.name for m in ms])
    summary.to_csv(out / "results.csv", index=False)
    result = BenchResult(outputs, summary, out)
    result.figure().write_html(out / "results.html", include_plotlyjs=True)
    return result


def summarize_outputs(outputs: pd.DataFrame, method_order: list[str] | None = None) -> pd.DataFrame:
    """Method x metric table: mean and 95% bootstrap interval (:func:`workbench.metrics.summarize`),
    plus seconds per example and how many prompts were truncated to fit."""
    from workbench.metrics import summarize

    order = method_order or list(dict.fromkeys(outputs["method"]))
    ordered = pd.concat([outputs[outputs["method"] == name] for name in order])
    table = summarize(ordered, METRICS, by="method")
    extra = []
    for name in order:
        g = outputs[outputs["method"] == name]
        row: dict[str, Any] = {"seconds_per_example": float(g["seconds"].mean())}
        if "items_dropped" in g:
            row["truncated"] = int(((g["items_dropped"] > 0) | g.get("input_truncated", False)).sum())
        extra.append(row)
    return pd.concat([table.reset_index(drop=True), pd.DataFrame(extra)], axis=1)


def format_summary(summary: pd.DataFrame) -> str:
    """The summary as a printable table: ``mean [lo, hi]`` per metric."""
    lines = []
    head = f"{'method':<14}{'n':>5}  " + "".join(f"{m:<24}" for m in METRICS) + "s/example"
    lines.append(head)
    for row in summary.itertuples(index=False):
        r = row._asdict()
        cells = []
        for m in METRICS:
            if pd.isna(r[m]):
                cells.append(f"{'n/a (see warning)':<24}")
            else:
                cells.append(f"{r[m]:.4f} [{r[m + '_lo']:.3f}, {r[m + '_hi']:.3f}]".ljust(24))
        lines.append(f"{r['method']:<14}{r['n']:>5}  " + "".join(cells) + f"{r['seconds_per_example']:.2f}")
    return "\n".join(lines)
