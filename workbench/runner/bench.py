"""The benchmark runner: every method on the same examples, same model, same scoring.

``run_bench`` writes into ``out_dir``:

- ``run.json``: the model, data, split, examples and settings the run came from;
- ``outputs.jsonl``: one line per (method, example): prediction, gold, scores, seconds;
- ``results.csv``: method x metric, mean and 95% bootstrap interval;
- ``results.html``: a plotly bar chart of the same.

An interrupted run resumes: finished (method, example) lines are read back, not recomputed.
``run.json`` identifies what produced the directory (model, dtype, device, data files and their
SHA-256, every setting): a directory holding a run with any other of these is refused rather
than mixed, and so is one whose results have no readable ``run.json``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from workbench._version import __version__
from workbench._util import atomic_write, atomic_write_text, check_int, check_writable_dir, dir_lock, read_json_file
from workbench.data.splits import select_examples
from workbench.data.metrics import GENERATION_METRICS, task_labels, task_metrics
from workbench.data.tasks import GENERIC, TASKS
from workbench.methods import LABEL_MODES, LABEL_SCORING, GenerationSettings, Method, make_methods
from workbench.core.model import Model

# A generation task's metrics (the default of the tables); a task's own come from task_metrics.
METRICS = GENERATION_METRICS


@dataclass
class BenchResult:
    """Per-example outputs and the method x metric summary of one run."""

    outputs: pd.DataFrame
    summary: pd.DataFrame
    out_dir: Path

    def __repr__(self) -> str:
        return f"BenchResult({len(self.outputs)} outputs, methods={list(self.summary['method'])}, out_dir={str(self.out_dir)!r})"

    def _repr_html_(self) -> str:
        return self.summary.to_html(index=False, float_format="{:.4f}".format, escape=True)

    def figure(self):
        from workbench.runner.figures import results_figure

        return results_figure(self.summary)


RUN_FILE = "run.json"
OUTPUTS_FILE = "outputs.jsonl"
TABLES = ("results.csv", "results.html")

# What makes two runs the same experiment: a directory holding a run that differs in any of
# these is refused, never mixed. (Methods may be added and examples grow; see merge_run_info.)
_IDENTITY = ("model", "dtype", "device", "task", "data", "data_files", "split", "settings", "users")
# Recorded since workbench 0.1.0's reliability pass: a run.json written before lacks them.
_ADDED_LATER = ("dtype", "device", "data_files")


def read_outputs(path: Path, repair: bool = True) -> dict[tuple[str, str], dict]:
    """Finished records of an earlier run; a line cut short by an interruption is dropped
    from the file (so new lines don't get glued to it; ``repair=False`` leaves the file as it
    is) and its example is recomputed.

    A complete line that is not a record of ``workbench bench`` (no ``method`` or ``id``) is an
    error naming the file and line: it means the file was edited or is not ours.
    """
    done: dict[tuple[str, str], dict] = {}
    if not path.exists():
        return done
    raw = path.read_bytes()
    complete = raw[: raw.rfind(b"\n") + 1]
    try:
        text = complete.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not a workbench outputs file (not UTF-8 text at byte {e.start}); "
                         "move it away, or run into another --out") from None
    for lineno, line in enumerate(text.split("\n")[:-1], 1):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a damaged line: its example is recomputed
        if not isinstance(rec, dict) or not isinstance(rec.get("method"), str) or not isinstance(rec.get("id"), str):
            raise ValueError(f"{path}, line {lineno}: not a benchmark record (it needs a 'method' and an 'id'); "
                             "the file was edited or is not from `workbench bench` — delete that line, "
                             "or run into another --out")
        done[(rec["method"], rec["id"])] = rec
    if repair and len(complete) != len(raw):  # only once the file is known to be ours
        with open(path, "r+b") as f:
            f.truncate(len(complete))
    return done


def append_record(path: Path, rec: dict) -> None:
    """One record as a line of ``outputs.jsonl``, on disk before this returns."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _fill_missing_meteor(path: Path, done: dict[tuple[str, str], dict]) -> None:
    """Records scored where WordNet was missing (METEOR NaN) get their METEOR now, if it can be
    computed here; the file is rewritten atomically so nothing is lost if this is interrupted."""
    from workbench.data.metrics import meteor, meteor_available

    missing = [rec for rec in done.values() if isinstance(rec.get("meteor"), float) and math.isnan(rec["meteor"])]
    if not missing or not meteor_available():
        return
    for rec in missing:
        rec["meteor"] = meteor(rec["prediction"], rec["gold"])
    text = "".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec in done.values())
    atomic_write_text(path, text)


def read_run_info(out: str | Path) -> dict:
    """The ``run.json`` of a benchmark directory; a damaged one is a ValueError naming the file."""
    run_file = Path(out) / RUN_FILE
    fix = (f"restore it, or run into another --out (or delete {Path(out)} to start over); without it nothing "
           "says which model, data and settings produced the outputs there")
    info = read_json_file(run_file, "a benchmark run.json", fix)
    if not isinstance(info, dict) or not isinstance(info.get("example_ids"), list) or "model" not in info:
        raise ValueError(f"{run_file} is not a benchmark run.json (no model or example_ids in it); {fix}")
    return info


def _has_outputs(out: Path) -> bool:
    f = out / OUTPUTS_FILE
    return f.exists() and f.stat().st_size > 0


def merge_run_info(out: Path, run_info: dict, partial: bool = False) -> dict:
    """What ``out/run.json`` must say after this run: ``run_info`` merged with the run already
    there. Refuses (ValueError) a directory whose results came from other settings, or whose
    results can't be traced to settings at all. Reads only; nothing is written. ``partial``:
    ``run_info`` lacks some facts (the model's dtype and device): compare only those it has."""
    run_file = out / RUN_FILE
    leftovers = [n for n in (OUTPUTS_FILE, *TABLES) if (out / n).exists()]
    if not run_file.exists():
        if leftovers:
            raise ValueError(
                f"{out} holds benchmark files ({', '.join(leftovers)}) but no {RUN_FILE}, so nothing says what "
                "produced them and resuming could mix settings. Run into another --out, or move those files "
                f"away (or restore {run_file})."
            )
        return run_info
    if not _has_outputs(out) and not (out / TABLES[0]).exists():
        return run_info  # a run that recorded nothing (e.g. it failed at once): nothing to mix
    old = read_run_info(out)
    keys = [k for k in _IDENTITY if k in run_info] if partial else _IDENTITY
    diff = [k for k in keys if k in old and old.get(k) != run_info.get(k)]
    diff += [k for k in ("users",) if k not in old and run_info.get(k) is not None]
    # A run may grow or be looked at in part (--n larger or smaller): the examples must be a
    # prefix of one another, in the same order, or the two runs are different experiments.
    old_ids, new_ids = old.get("example_ids", []), run_info["example_ids"]
    shorter, longer = sorted([old_ids, new_ids], key=len)
    if longer[: len(shorter)] != shorter:
        diff.append("example_ids")
    if diff:
        shown = "; ".join(_difference(k, old.get(k), run_info.get(k)) for k in diff if k != "example_ids")
        raise ValueError(
            f"{out} holds a run with different {', '.join(diff)}" + (f" ({shown})" if shown else "")
            + "; resuming would mix results. Use another --out directory (or delete that one)."
        )
    # Only methods with results there bind the directory: one that failed before writing a
    # record (a bad setting, an interrupted preparation) leaves nothing to mix with.
    present = {m for m, _ in read_outputs(out / OUTPUTS_FILE, repair=False)}
    old_ms = {m: v for m, v in old.get("method_settings", {}).items() if m in present}
    new_ms = run_info.get("method_settings", {})
    changed = [m for m in new_ms if m in old_ms and old_ms[m] != new_ms[m]]
    if changed:
        raise ValueError(
            f"{out} holds results of {changed} with other method settings "
            f"(before: {[old_ms[m] for m in changed]}); use another --out directory."
        )
    unrecorded = [k for k in _ADDED_LATER if k not in old]
    if unrecorded and not partial:
        # Runs made before these were recorded stay resumable; from now on they are checked.
        warnings.warn(f"{run_file} was written by an older workbench and does not record {', '.join(unrecorded)}; "
                      "assuming its outputs came from the same ones as this run, and recording them from now on",
                      stacklevel=3)
    merged = dict(run_info)
    # methods may be added to an existing run; keep the union
    merged["methods"] = sorted({m for m in old.get("methods", []) if m in present} | set(run_info["methods"]))
    merged["method_settings"] = {**old_ms, **new_ms}
    merged["example_ids"], merged["n"] = longer, len(longer)
    return merged


def _difference(key: str, old: Any, new: Any) -> str:
    """``settings.k: 5 there, 3 now`` — each differing entry of a recorded fact."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = [k for k in dict.fromkeys([*old, *new]) if old.get(k) != new.get(k)]
        return "; ".join(f"{key}.{k}: {_brief(old.get(k))} there, {_brief(new.get(k))} now" for k in keys)
    return f"{key}: {_brief(old)} there, {_brief(new)} now"


def _brief(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_args(dataset: Any, methods: Any, n: Any, settings: Any) -> None:
    if isinstance(methods, str):
        raise ValueError(f"methods must be a list of names, e.g. [{methods!r}], not a string")
    if not methods:
        raise ValueError("no methods given; name at least one, e.g. ['generic', 'rag']")
    if n is not None:
        check_int("n", n, minimum=1)
    if settings is not None and not isinstance(settings, GenerationSettings):
        raise ValueError(f"settings must be a GenerationSettings, got {type(settings).__name__}")
    if isinstance(dataset, (str, Path)):
        raise ValueError(f"dataset must be a loaded Dataset (e.g. load_lamp({str(dataset)!r})), not a path")


def _data_fingerprint(dataset: Any) -> dict[str, str]:
    if hasattr(dataset, "fingerprint"):
        return dataset.fingerprint()
    from workbench.data.records import Dataset

    return Dataset(list(dataset), "").fingerprint()  # all of it: a run that grows keeps its fingerprint


PROFILE_FIX = ("on the command line pass --with-profile (only queries whose user has history); "
               "in Python filter with dataset.with_profile()")


def check_profiles(methods: list, examples: list) -> None:
    """Refuse, before any work, a run whose personalized methods would meet an example with an
    empty profile (they need at least one item), naming the way out."""
    personal = [m.name for m in methods if getattr(m, "uses_profile", False)]
    empty = [ex for ex in examples if not ex.profile]
    if personal and empty:
        raise ValueError(f"{len(empty)} of the {len(examples)} examples have an empty profile (e.g. {empty[0].id} of "
                         f"user {empty[0].user_id}), and {', '.join(personal)} need at least one profile item; "
                         + PROFILE_FIX)


def decoding_of(task: str, label_mode: str = "score") -> str:
    """How a run's predictions are made, as ``run.json`` records it (``settings.decoding``):
    ``"greedy"`` for a generation task; for a task with labels, the label choice
    (:data:`workbench.methods.LABEL_SCORING`) or free greedy decoding parsed into a label."""
    if label_mode not in LABEL_MODES:
        raise ValueError(f"label_mode={label_mode!r}: use one of {', '.join(LABEL_MODES)}")
    if not task_labels(task):
        return "greedy"
    return f"label choice: {LABEL_SCORING}" if label_mode == "score" else "greedy, first line parsed into a label"


def plan_run(dataset: Any, methods: Any, out_dir: Any, n: Any, settings: Any, users: Any,
             tuned: list | None = None, label_mode: str = "score") -> tuple[list, list, Path, dict]:
    """Check every argument that needs no model; return the methods, examples, the directory and
    what ``run.json`` will record apart from the model. ``tuned``: where settings came from
    (:func:`workbench.runner.tuning.describe_tuned`), recorded as ``tuned``. ``label_mode``: how
    a classification task's predictions are made (:data:`workbench.methods.LABEL_MODES`)."""
    _check_args(dataset, methods, n, settings)
    settings = settings or GenerationSettings()
    ms = make_methods(list(methods), settings) if isinstance(methods[0], str) else list(methods)
    examples = select_examples(dataset, n)
    if not examples:
        raise ValueError("no examples to run on (empty dataset or n=0)")
    missing_gold = [ex.id for ex in examples if ex.gold is None]
    if missing_gold:
        raise ValueError(f"{len(missing_gold)} examples have no gold output (e.g. {missing_gold[0]}); "
                         "benchmarks need a split with outputs")
    task = examples[0].task
    decoding = decoding_of(task, label_mode)
    kind = TASKS.get(task, GENERIC).kind
    wrong = [m.name for m in ms if m.kinds is not None and kind not in m.kinds]
    if wrong:
        raise ValueError(f"{', '.join(wrong)} work on {'/'.join(ms[[m.name for m in ms].index(wrong[0])].kinds)} "
                         f"tasks only, and {task} is a {kind} task; leave {'it' if len(wrong) == 1 else 'them'} out")
    for m in ms:
        m.check_settings()
        m.label_mode = label_mode
    check_profiles(ms, examples)
    out = check_writable_dir(out_dir, "benchmark directory")
    info = {
        "task": examples[0].task,
        "data": str(getattr(dataset, "path", "")),
        "data_files": _data_fingerprint(dataset),
        "split": getattr(dataset, "split", ""),
        "n": len(examples),
        "example_ids": [ex.id for ex in examples],
        "methods": [m.name for m in ms],
        "method_settings": {m.name: m.describe() for m in ms},
        "settings": {**asdict(settings), "decoding": decoding},
        "users": users,
        **({"tuned": tuned} if tuned else {}),
        "workbench": __version__,
        "python": platform.python_version(),
    }
    return ms, examples, out, info


def check_run(
    model_name: str,
    dataset: Any,
    methods: list[str] | list[Method],
    out_dir: str | Path,
    n: int | None = None,
    settings: GenerationSettings | None = None,
    users: dict | None = None,
    tuned: list | None = None,
    label_mode: str = "score",
) -> None:
    """Everything :func:`run_bench` would refuse that can be known without loading the model:
    the arguments, and a directory holding another run or results nothing identifies. Writes
    nothing. (The model's dtype and device are compared when :func:`run_bench` runs.)"""
    _, _, out, info = plan_run(dataset, methods, out_dir, n, settings, users, tuned, label_mode)
    merge_run_info(out, {"model": model_name, **info}, partial=True)
    read_outputs(out / OUTPUTS_FILE, repair=False)


# Examples decoded together by default (`workbench bench`/`tune`); chosen from the throughput
# measured by benchmarks/bench_batch.py on this project's 2-core CPU (docs/scaling.md).
DEFAULT_BATCH_SIZE = 16


def run_bench(
    model: Model,
    dataset: Any,
    methods: list[str] | list[Method],
    out_dir: str | Path,
    n: int | None = None,
    settings: GenerationSettings | None = None,
    progress: bool = True,
    users: dict | None = None,
    tuned: list | None = None,
    label_mode: str = "score",
    batch_size: int = 1,
    chart: bool = True,
) -> BenchResult:
    """Run ``methods`` on the first ``n`` examples of ``dataset`` and score them.

    Args:
        model: a :class:`workbench.Model`.
        dataset: a :class:`workbench.data.records.Dataset` (examples with gold outputs).
        methods: method names (see ``workbench.methods.METHODS``) or Method objects.
        out_dir: where outputs and results go; an earlier run with the same settings resumes.
        n: how many examples (file order); None = all.
        settings: decoding/prompt settings shared by every method.
        users: which users ``dataset`` was cut to (e.g. ``{"users": "eval", "fraction": 0.33}``),
            recorded with the run; a directory of a run on other users is refused.
        tuned: the tuned-settings files the methods' settings came from, recorded with the run
            (:func:`workbench.runner.tuning.describe_tuned`).
        label_mode: on a classification task (LaMP-2N), ``"score"`` — each label scored by its
            mean log-likelihood per token under the method, the best one predicted (always a
            label) — or ``"generate"``: free decoding parsed into a label, for comparison.
            Recorded as ``settings.decoding``. Scores: accuracy and macro-F1 over the task's labels
            (:func:`workbench.data.metrics.task_metrics`); generation tasks: ROUGE-1/L, METEOR.
        batch_size: examples decoded together (rows may be different users', each with its own
            steering vector or heads); the outputs are batch-1's up to float rounding, so it is not
            recorded with the run and a run may resume at another batch size. Label choice goes
            one example at a time.
        chart: write ``results.html`` too (a self-contained plotly page, ~5 MB); tuning turns it
            off for its grid points and draws one chart of the whole grid instead.

    One process writes a directory at a time (:func:`workbench._util.dir_lock`): a second run
    into it is refused while the first is alive. Every method's settings are checked against
    the model (e.g. a layer it does not have) before any method runs.

    Every argument, and the directory, is checked before anything is written. ``results.csv``
    and ``results.html`` describe everything the directory holds (every method, all its
    examples), so a call on fewer examples or methods returns its part without shrinking them.
    """
    batch_size = check_batch_size(batch_size)
    ms, examples, out, info = plan_run(dataset, methods, out_dir, n, settings, users, tuned, label_mode)
    for m in ms:
        m.check_settings(model)  # what depends on the model's shape, before any method runs
    run_info = {"model": model.name, "model_source": model.source, "dtype": str(model.dtype).replace("torch.", ""),
                "device": str(model.device), **info}
    merge_run_info(out, run_info)  # refuse another run before taking the directory
    with dir_lock(out, "benchmark directory"):
        return _run_locked(model, dataset, ms, examples, out, run_info, progress, batch_size, chart)


def _run_locked(model: Model, dataset: Any, ms: list, examples: list, out: Path, run_info: dict,
                progress: bool, batch_size: int = 1, chart: bool = True) -> BenchResult:
    from tqdm.auto import tqdm

    merged, done = open_run(out, run_info)
    outputs_path = out / OUTPUTS_FILE

    by_user = group_by_user(examples)
    todo = sum(1 for m in ms for ex in examples if (m.name, ex.id) not in done)
    bar = tqdm(total=todo, desc="bench", disable=not progress or todo == 0)
    for m in ms:
        if any((m.name, ex.id) not in done for ex in examples):
            m.prepare_run(model, examples, dataset)
        pending = {u: [ex for ex in exs if (m.name, ex.id) not in done] for u, exs in by_user.items()}
        for rec in run_users(model, m, by_user, {u: p for u, p in pending.items() if p}, batch_size, bar):
            append_record(outputs_path, rec)
            done[(m.name, rec["id"])] = rec
            bar.update(1)
    bar.close()
    return finish_run(out, done, merged, ms, examples, chart)


def open_run(out: Path, run_info: dict) -> tuple[dict, dict[tuple[str, str], dict]]:
    """Claim ``out`` for a run: check it against the run already there, write the merged
    ``run.json``, and return it with the finished records (METEOR filled in where it can be now).
    The caller holds the directory's lock (:func:`workbench._util.dir_lock`)."""
    merged = merge_run_info(out, run_info)
    outputs_path = out / OUTPUTS_FILE
    done = read_outputs(outputs_path)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / RUN_FILE, json.dumps(merged, indent=2))
    _fill_missing_meteor(outputs_path, done)
    return merged, done


def group_by_user(examples: list) -> dict[str, list]:
    """``{user_id: their examples}``, users and examples in the run's order."""
    by_user: dict[str, list] = {}
    for ex in examples:
        by_user.setdefault(ex.user_id, []).append(ex)
    return by_user


def run_user(model: Model, m: Method, user_id: str, user_examples: list, pending: list, bar: Any = None):
    """Records of ``m`` on the ``pending`` examples of one user (``user_examples`` are all the
    user's examples in the run: per-user state is built from them, so it is the same however
    the run was cut). Yields one scored record per example."""
    yield from run_users(model, m, {user_id: user_examples}, {user_id: pending}, bar=bar)


def run_users(model: Model, m: Method, user_examples: dict[str, list], pending: dict[str, list],
              batch_size: int = 1, bar: Any = None):
    """Records of ``m`` on the ``pending`` examples of several users (``{user_id: examples}``, in
    order), decoded ``batch_size`` at a time — a batch may hold several users' examples, each row
    with its own user's state (built from all of ``user_examples[user]``, once, when the user's
    first example comes up). Yields one scored record per example, in order; ``seconds`` is the
    batch's time shared by its rows plus the user's preparation shared by their examples."""
    from workbench.data.metrics import score_example

    batch_size = check_batch_size(batch_size)
    queue = [(u, ex) for u, exs in pending.items() for ex in exs]
    states: dict[str, Any] = {}
    prep: dict[str, float] = {}
    left = {u: len(exs) for u, exs in pending.items()}
    for start in range(0, len(queue), batch_size):
        batch = queue[start:start + batch_size]
        for u, _ in batch:
            if u not in states:
                t0 = time.perf_counter()
                states[u] = m.prepare_user(model, u, user_examples[u])
                prep[u] = (time.perf_counter() - t0) / left[u]
        if bar is not None:
            bar.set_postfix_str(f"{m.name} {batch[0][1].id}" + (f" (+{len(batch) - 1})" if len(batch) > 1 else ""))
        t0 = time.perf_counter()
        if len(batch) == 1:
            results = [m.generate(model, batch[0][1], states[batch[0][0]])]
        else:
            results = m.generate_batch(model, [ex for _, ex in batch], [states[u] for u, _ in batch])
        share = (time.perf_counter() - t0) / len(batch)
        for (u, ex), (pred, info) in zip(batch, results):
            yield {"method": m.name, "id": ex.id, "user_id": ex.user_id, "prediction": pred, "gold": ex.gold,
                   **score_example(ex.task, pred, ex.gold), "seconds": round(share + prep[u], 3), **info}
            left[u] -= 1
            if not left[u]:  # the user's last example: their state is not needed again
                states.pop(u)


def check_batch_size(batch_size: Any) -> int:
    """A batch size is a whole number >= 1 (how many examples are decoded together)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: give a whole number >= 1 (how many examples are decoded "
                         "together; 1 decodes one at a time)")
    return batch_size


def finish_run(out: Path, done: dict[tuple[str, str], dict], merged: dict, ms: list, examples: list,
               chart: bool = True) -> BenchResult:
    """The run's tables, rows in method then example order (whatever order they were computed
    in, so a resumed or distributed run summarizes exactly like a serial one)."""
    outputs = pd.DataFrame([done[(m.name, ex.id)] for m in ms for ex in examples])
    summary = summarize_outputs(outputs, [m.name for m in ms], merged.get("task"))
    _write_tables(out, done, merged, [m.name for m in ms], (outputs, summary), chart=chart)
    return BenchResult(outputs, summary, out)


def _write_tables(out: Path, done: dict[tuple[str, str], dict], merged: dict, order: list[str],
                  this_call: tuple[pd.DataFrame, pd.DataFrame], chart: bool = True) -> None:
    """``results.csv`` and (with ``chart``) ``results.html`` for everything the directory holds (atomically)."""
    from workbench.runner.figures import results_figure

    position = {i: k for k, i in enumerate(merged["example_ids"])}
    present = {m for m, _ in done}
    methods = order + sorted(m for m in set(merged["methods"]) & present if m not in order)
    rows = sorted((rec for (m, i), rec in done.items() if m in methods and i in position),
                  key=lambda rec: (methods.index(rec["method"]), position[rec["id"]]))
    outputs, summary = this_call
    if len(rows) != len(outputs):  # this call saw part of the directory: summarize all of it
        summary = summarize_outputs(pd.DataFrame(rows), methods, merged.get("task"))
    atomic_write(out / TABLES[0], lambda tmp: summary.to_csv(tmp, index=False))
    if not chart:
        return
    figure = results_figure(summary)
    atomic_write(out / TABLES[1], lambda tmp: figure.write_html(tmp, include_plotlyjs=True))


def summarize_outputs(outputs: pd.DataFrame, method_order: list[str] | None = None, task: str | None = None) -> pd.DataFrame:
    """Method x metric table: mean and 95% bootstrap interval (:func:`workbench.data.metrics.summarize`),
    plus seconds per example and how many prompts were truncated to fit."""
    from workbench.data.metrics import summarize

    order = method_order or list(dict.fromkeys(outputs["method"]))
    ordered = pd.concat([outputs[outputs["method"] == name] for name in order])
    task = task or _task_of(outputs)
    table = summarize(ordered, task_metrics(task), by="method", labels=task_labels(task))
    extra = []
    for name in order:
        g = outputs[outputs["method"] == name]
        row: dict[str, Any] = {"seconds_per_example": float(g["seconds"].mean())}
        if "items_dropped" in g:
            row["truncated"] = int(((g["items_dropped"] > 0) | g.get("input_truncated", False)).sum())
        extra.append(row)
    return pd.concat([table.reset_index(drop=True), pd.DataFrame(extra)], axis=1)


def _task_of(outputs: pd.DataFrame) -> str:
    """The task of a run's records: LaMP-2N's have an ``accuracy`` column, generation tasks' ROUGE."""
    from workbench.data.metrics import CLASSIFICATION_METRICS

    if "accuracy" in outputs and "rouge1" not in outputs:
        golds = set(outputs["gold"].dropna()) if "gold" in outputs else set()
        return next((t for t, spec in TASKS.items() if task_metrics(t) == CLASSIFICATION_METRICS
                     and golds <= set(spec.labels)), "lamp2n")
    return "lamp4"


def summary_metrics(summary: pd.DataFrame) -> list[str]:
    """The metrics a summary table holds (its task's), in their order."""
    from workbench.data.metrics import ALL_METRICS

    return [m for m in ALL_METRICS if m in summary]


def format_summary(summary: pd.DataFrame) -> str:
    """The summary as a printable table: ``mean [lo, hi]`` per metric."""
    lines = []
    metrics = summary_metrics(summary)
    head = f"{'method':<14}{'n':>5}  " + "".join(f"{m:<24}" for m in metrics) + "s/example"
    lines.append(head)
    for row in summary.itertuples(index=False):
        r = row._asdict()
        cells = []
        for m in metrics:
            if pd.isna(r[m]):
                cells.append(f"{'n/a (see warning)':<24}")
            else:
                cells.append(f"{r[m]:.4f} [{r[m + '_lo']:.3f}, {r[m + '_hi']:.3f}]".ljust(24))
        lines.append(f"{r['method']:<14}{r['n']:>5}  " + "".join(cells) + f"{r['seconds_per_example']:.2f}")
    return "\n".join(lines)
