"""Choosing a method's settings on tuning users only: ``workbench tune``.

The protocol, the same for every method:

1. the dataset's users are split once, by a stable hash of their id
   (:mod:`workbench.data.splits`); settings are chosen on the **tuning** users only;
2. every point of a declared grid (``--grid dps.alpha=0.5,1,entropy --grid dps.top_percent=2,4``)
   runs as an ordinary, resumable benchmark run on those users (one directory per point);
3. the point with the best mean of the stated metric (ROUGE-1 by default) wins; a tie (equal
   to 4 decimals) goes to the simpler setting — the one with fewer fields away from the
   method's defaults, then the one listed first;
4. ``tuned.json`` records the grid, every point's score with its 95% bootstrap interval, and
   the choice; ``workbench bench --tuned tuned.json --users eval`` applies it to the
   evaluation users.
"""

from __future__ import annotations

import itertools
import json
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import pandas as pd

from workbench._util import atomic_write_text, dir_lock, file_sha256, free_path, slug, stable_hash
from workbench.data.metrics import CORPUS_METRICS, bootstrap_ci, task_metrics
from workbench.data.splits import TUNE_FRACTION, split_users
from workbench.runner.settings import apply_all, apply_settings, parse_assignments, settable_fields
from workbench.methods.lora import LORA_GRID

TUNED_FORMAT = "workbench.tuned/1"
TIE_DECIMALS = 4

# The grid each method is tuned over when ``--grid`` does not say otherwise: small, so that
# every method gets the same treatment within a CPU budget, and each includes the default.
# ``None`` for a layer is the method's own default layer (the middle one; Fints: 22 of 30).
DEFAULT_GRIDS: dict[str, dict[str, list]] = {
    "dps": {"alpha": [0.5, 1.0, "entropy"], "top_percent": [2.0, 4.0]},
    "caa-all": {"scale": [0.5, 1.0, 2.0], "layer": [None, 20]},
    "steerx-caa": {"scale": [0.5, 1.0, 2.0], "layer": [None, 20]},
    "opt-all": {"opt_radius": [0.25, 0.5]},
    "steerx-opt": {"opt_radius": [0.25, 0.5]},
    "fints+rag": {"scale": [0.5, 1.0, 2.0], "layer": [None, 15]},
    "fints": {"scale": [0.5, 1.0, 2.0]},
    "caa-user": {"scale": [0.5, 1.0, 2.0]},
    "caa-all+dps": {"steering.scale": [0.5, 1.0], "decoding.alpha": [0.5, "entropy"]},
    "steerx-caa+dps": {"steering.scale": [0.5, 1.0], "decoding.alpha": [0.5, "entropy"]},
    # rank x learning rate x epochs (8 grid points; each trains its own adapters)
    **{name: LORA_GRID for name in ("lora-user", "lora-user+rag", "lora-task", "lora-task+rag")},
}
"""Methods without a grid here (``generic``, ``rag``, ``dps-raw``: the authors' settings) are not tuned."""


def parse_grid(items: Sequence[str]) -> dict[str, dict[str, list[str]]]:
    """``["dps.alpha=0.5,1,entropy"]`` -> ``{"dps": {"alpha": ["0.5", "1", "entropy"]}}``."""
    out: dict[str, dict[str, list[str]]] = {}
    for item in items:
        key, eq, values = item.partition("=")
        method, dot, field = key.strip().partition(".")
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not eq or not dot or not method or not field or not vals:
            raise ValueError(f"--grid {item!r}: write METHOD.FIELD=V1,V2,..., e.g. --grid dps.alpha=0.5,1,entropy")
        if len(set(vals)) != len(vals):
            raise ValueError(f"--grid {item!r} lists a value twice")
        if field in out.get(method, {}):
            raise ValueError(f"--grid gives {method}.{field} twice; list all its values in one --grid")
        out.setdefault(method, {})[field] = vals
    return out


def grid_points(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in the order declared (first field slowest)."""
    fields = list(grid)
    return [dict(zip(fields, combo)) for combo in itertools.product(*(grid[f] for f in fields))]


def plan_tuning(names: Sequence[str], grid_items: Sequence[str] = (), set_items: Sequence[str] = (),
                settings: Any = None) -> tuple[dict[str, dict[str, list]], dict[str, dict[str, str]]]:
    """What ``workbench tune`` will run, checked before any model loads.

    Args:
        names: the methods to tune.
        grid_items: ``--grid`` texts (``METHOD.FIELD=V1,V2,...``); a method without one is tuned
            over its :data:`DEFAULT_GRIDS` entry.
        set_items: ``--set`` texts (``METHOD.FIELD=VALUE``), fixed at every grid point.
        settings: the run's :class:`~workbench.methods.GenerationSettings` (default: defaults).

    Returns:
        ``(grids, fixed)``: ``{method: its grid}`` for every name, and ``{method: fixed settings}``.

    Raises a ValueError for a method with no grid, an unknown method, a grid or setting naming a
    method that is not being tuned, and any grid value that is not a valid setting (every point
    is applied to a fresh method, with the fixed settings).
    """
    from workbench.methods import GenerationSettings, make_methods

    grids = parse_grid(grid_items)
    untunable = [m for m in names if m not in grids and m not in DEFAULT_GRIDS]
    if untunable:
        raise ValueError(f"{untunable} have no declared grid (workbench.runner.tuning.DEFAULT_GRIDS); give one with --grid")
    fixed = parse_assignments(set_items)
    settings = settings or GenerationSettings()
    make_methods(list(names), settings)  # unknown names fail here
    stray = [m for m in [*grids, *fixed] if m not in names]
    if stray:
        raise ValueError(f"--grid/--set name method(s) {stray} that are not in --methods {list(names)}")
    planned = {name: grids.get(name, DEFAULT_GRIDS.get(name)) for name in names}
    for name, grid in planned.items():
        for point in grid_points(grid):
            apply_settings(make_methods([name], settings)[0], {**fixed.get(name, {}), **point})
    return planned, fixed


def methods_for_run(names: Sequence[str], settings: Any, model_name: str | None = None, *,
                    tuned: Sequence[str | Path] = (), set_items: Sequence[str] = ()) -> list:
    """A run's methods with their settings: the defaults, then the choices of ``tuned``
    (``tuned.json`` files from :func:`save_tuned`), then ``set_items`` (``--set`` texts).

    The rule for the two sources: a field may be set by one of them, never both (tuning chose it
    on the tuning users; overriding it by hand silently would report a setting nobody tuned),
    and no method may be tuned in two files. Tuned choices for methods not in ``names`` are
    ignored (one file may cover more methods than a run), but a file none of whose methods is
    in the run is an error (it would be ignored silently); ``--set`` for a method not in the
    run is an error. Files tuned on a model other than ``model_name`` are refused. Everything
    is checked before a model loads.
    """
    from workbench.methods import make_methods

    methods = make_methods(list(names), settings)
    changes = parse_assignments(set_items)
    chosen: dict[str, dict[str, Any]] = {}
    for path in tuned:
        in_file = load_tuned(path, model_name)
        if not set(in_file) & set(names):
            raise ValueError(f"--tuned {path} holds settings for {sorted(in_file) or 'no method'}, none of which is in "
                             f"--methods {list(names)}; add the tuned method(s) to --methods, or drop this --tuned")
        for method, fields in in_file.items():
            if method in chosen:
                raise ValueError(f"{method} is tuned in two of the --tuned files; keep one")
            chosen[method] = fields
    # the same value again (e.g. a --set that was fixed while tuning, repeated) is no override
    clash = [f"{m}.{f}" for m, fs in changes.items() for f, v in fs.items()
             if f in chosen.get(m, {}) and _as_text({f: v}) != _as_text({f: chosen[m][f]})]
    if clash:
        raise ValueError(f"--set {clash} would override settings chosen by tuning (--tuned); drop one of the two")
    apply_all(methods, {m: fs for m, fs in chosen.items() if m in names})
    apply_all(methods, changes)
    return methods


def tuned_for_run(paths: Sequence[str | Path] | None, names: Sequence[str], users: str) -> tuple[list[dict] | None, str | None]:
    """What a run records of its ``--tuned`` files (:func:`describe_tuned`), and a note to show
    when the run evaluates on users tuning saw (``users`` other than ``"eval"``), else None."""
    if not paths:
        return None, None
    tuned = describe_tuned(paths, names)
    if users == "eval":
        return tuned, None
    for entry in tuned:
        entry["evaluated_on"] = f"{users} users, tuning users included"
    return tuned, (f"the --tuned settings were chosen on the tuning users, and --users {users} evaluates on them too "
                   "(so their scores flatter the tuned methods); pass --users eval to report on users tuning never saw. "
                   "Recorded in run.json (tuned).")


def tuning_metric(task: str, metric: str | None = None) -> str:
    """The metric a task is tuned on: ``metric`` if the task reports it per example, else the
    task's first (ROUGE-1 for generation, accuracy on lamp2n)."""
    usable = [m for m in task_metrics(task) if m not in CORPUS_METRICS]  # per-example means
    metric = metric or usable[0]
    if metric not in usable:
        raise ValueError(f"--metric {metric}: {task} is tuned on one of {', '.join(usable)}")
    return metric


def describe_tuned(paths: Sequence[str | Path], names: Sequence[str]) -> list[dict]:
    """What a run records of its ``--tuned`` files: each file's path, SHA-256, the methods it
    tunes and those this run applied it to (``run.json``'s ``tuned``)."""
    out = []
    for path in paths:
        methods = sorted(load_tuned(path))
        out.append({"path": str(Path(path).resolve()), "sha256": file_sha256(path), "methods": methods,
                    "applied": [m for m in names if m in methods]})
    return out


@dataclass
class TuningResult:
    """One method's grid on the tuning users: a row per point and the chosen settings."""

    method: str
    metric: str
    points: pd.DataFrame
    chosen: dict
    defaults: dict
    grid: dict | None = None  # {field: [values]} as tuned (recorded, so a later tune can't replace it unseen)
    fixed: dict | None = None  # settings fixed at every point

    def __repr__(self) -> str:
        best = self.points[self.points["chosen"]].iloc[0]
        return (f"TuningResult({self.method}: {len(self.points)} points, chose {self.chosen} "
                f"({self.metric} {best[self.metric]:.4f} [{best['lo']:.3f}, {best['hi']:.3f}], n={best['n']}))")

    def _repr_html_(self) -> str:
        return self.points.to_html(index=False, float_format="{:.4f}".format, escape=True)

    def figure(self) -> Any:
        """The grid as a plotly bar chart: the metric per point with its 95% interval."""
        from workbench.runner.figures import tuning_figure

        return tuning_figure(self)

    def to_dict(self) -> dict:
        return {"metric": self.metric, "chosen": self.chosen, "defaults": self.defaults,
                "grid": _as_text(self.grid), "fixed": _as_text(self.fixed),
                "points": json.loads(self.points.to_json(orient="records"))}


def _as_text(settings: Mapping[str, Any] | None) -> dict:
    """A grid or fixed settings as text (``None`` -> ``"none"``, numbers as floats), so one typed on the
    command line (``1``) and one declared in Python (``1.0``) compare equal."""
    def text(v: Any) -> str:
        if v is None or str(v).strip().lower() in ("none", "null"):
            return "none"
        try:
            return repr(float(v)) if not isinstance(v, bool) else str(v)
        except (TypeError, ValueError):
            return str(v).strip()

    return {k: [text(x) for x in v] if isinstance(v, (list, tuple)) else text(v) for k, v in (settings or {}).items()}


def _point_label(point: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in point.items()) or "defaults"


def default_of(defaults: Mapping[str, Any], key: str) -> Any:
    """A setting's default from a method's ``describe()``; ``steering.scale`` reads a part's."""
    head, dot, rest = key.partition(".")
    if dot:
        return default_of(defaults.get(head, {}), rest)
    return defaults.get(key)


def choose(points: pd.DataFrame, metric: str, defaults: Mapping[str, Any], fields: Sequence[str]) -> int:
    """The index of the winning row: best mean ``metric``; ties (to :data:`TIE_DECIMALS`) to the
    row with the fewest fields away from ``defaults``, then the first listed."""
    def away(row: pd.Series) -> int:
        return sum(str(row[f]) != str(default_of(defaults, f)) for f in fields)

    ranked = sorted(points.index, key=lambda i: (-round(float(points.loc[i, metric]), TIE_DECIMALS),
                                                  away(points.loc[i]), i))
    return ranked[0]


def tune(model: Any, dataset: Any, method: str, grid: Mapping[str, Sequence[Any]], out_dir: str | Path, *,
         metric: str = "rouge1", fraction: float = TUNE_FRACTION, n: int | None = None, settings: Any = None,
         fixed: Mapping[str, Any] | None = None, progress: bool = True, batch_size: int = 1) -> TuningResult:
    """Run ``method`` at every point of ``grid`` on the tuning users of ``dataset`` and choose one
    (``batch_size``: examples decoded together, as for :func:`~workbench.runner.bench.run_bench`).

    Args:
        grid: ``{field: [values...]}`` (values as text, as on the command line, or typed).
        out_dir: each point runs in ``out_dir/<method>/<point>/`` (resumable: finished
            examples are read back, not recomputed).
        metric: ``rouge1`` (default), ``rougeL`` or ``meteor``; ``accuracy`` on a classification
            task (LaMP-2N); the mean over the tuning examples.
        n: the first ``n`` tuning examples only (a cheaper, noisier choice); None = all.
        fixed: settings applied at every point (e.g. from ``--set``).
    """
    from tqdm.auto import tqdm

    from workbench.runner.bench import run_bench
    from workbench.methods import GenerationSettings, make_methods

    task = getattr(dataset, "task", "") or ""
    usable = [m for m in task_metrics(task) if m not in CORPUS_METRICS]  # a per-example mean
    if metric not in usable:
        raise ValueError(f"metric={metric!r}: {task or 'this'} task is tuned on one of {', '.join(usable)}")
    settings = settings or GenerationSettings()
    probe = make_methods([method], settings)[0]
    unknown = [f for f in grid if f.split(".")[0] not in settable_fields(probe) and f.split(".")[0] not in
               ("steering", "decoding")]
    if unknown:
        raise ValueError(f"{method} has no setting(s) {unknown}; its settings are: {', '.join(sorted(settable_fields(probe)))}")
    defaults = dict(probe.describe())
    points = grid_points(grid)
    tune_ds = split_users(dataset, "tune", fraction)
    rows = []
    with _prompt_reuse(probe) as reused:
        for point in tqdm(points, desc=f"tune {method}", disable=not progress):
            m = make_methods([method], settings)[0]
            apply_settings(m, {**(fixed or {}), **point})
            where = Path(out_dir) / slug(method) / (slug(_point_label(point), 60) + "-" + stable_hash(point, 6))
            res = run_bench(model, tune_ds, [m], where, n=n, settings=settings, progress=progress, batch_size=batch_size,
                            chart=False)  # each point's chart would carry plotly (~5 MB); the grid chart below is the one to look at
            values = res.outputs[metric].astype(float)
            mean, lo, hi = bootstrap_ci(values)
            typed = {k: getattr(m, k) if "." not in k else v for k, v in point.items()}
            rows.append({**typed, "n": len(values), metric: mean, "lo": lo, "hi": hi, "run": str(where)})
    if reused is not None and progress:
        print(f"prompt passes reused across the grid: {reused}")
    table = pd.DataFrame(rows)
    best = choose(table, metric, defaults, list(grid))
    table["chosen"] = table.index == best
    chosen = {k: rows[best][k] for k in grid}  # from the rows: a table column would turn None into NaN
    return TuningResult(method, metric, table, chosen, {k: default_of(defaults, k) for k in grid}, dict(grid),
                        dict(fixed or {}))


@contextmanager
def _prompt_reuse(probe: Any) -> Iterator[Any]:
    """Around a DPS grid: its points share their prompt passes (the same batches come back at
    every alpha and head set); yields the store, or None for other methods."""
    from workbench.methods.dps import Dps
    from workbench.science.dps_batch import reuse_prompt_caches

    if isinstance(getattr(probe, "decoding", probe), Dps):
        with reuse_prompt_caches() as store:
            yield store
    else:
        yield None


def tune_methods(model: Any, dataset: Any, grids: Mapping[str, Mapping[str, Sequence[Any]]], out_dir: str | Path, *,
                 metric: str = "rouge1", fraction: float = TUNE_FRACTION, n: int | None = None, settings: Any = None,
                 fixed: Mapping[str, Mapping[str, Any]] | None = None, command: str | None = None,
                 log: Callable[[str], None] | None = None, batch_size: int = 1) -> list[TuningResult]:
    """:func:`tune` each method of ``grids`` (``{method: grid}``, e.g. from :func:`plan_tuning`)
    in ``out_dir``, as ``workbench tune`` does: each method's grid chart goes to
    ``grid-<method>.html`` and ``tuned.json`` is rewritten after each method, so a tune cut off
    part-way keeps what it chose (and resumes: finished grid points are read back).

    ``tuned.json`` records the model, data, users, metric, ``n``, settings and ``command``;
    ``log`` (e.g. ``print``) gets each method's result as it is chosen.

    Results accumulate: methods tuned earlier into the same ``out_dir`` stay in ``tuned.json``
    (and the file as it was is kept under ``previous/``); a method already tuned there over
    another grid, or a directory tuned on other data, users, metric or settings, is refused
    before anything runs (:func:`check_tuning_dir`). One ``tune`` writes a directory at a time
    (:func:`workbench._util.dir_lock`). Every grid point is checked against the model (e.g. a
    layer it lacks) before the first one runs.
    """
    from workbench._util import atomic_write
    from workbench.methods import GenerationSettings, make_methods

    settings = settings or GenerationSettings()
    out = Path(out_dir)
    about = tuning_about(model.name, dataset, fraction, metric, n, settings, command)
    check_tuning_dir(out, grids, fixed, about)
    for name, grid in grids.items():  # what depends on the model's shape, before any point runs
        for point in grid_points(grid):
            m = make_methods([name], settings)[0]
            apply_settings(m, {**(fixed or {}).get(name, {}), **point})
            m.check_settings(model)
    results = []
    with dir_lock(out, "tuning directory"):
        check_tuning_dir(out, grids, fixed, about)  # again, now that no one else writes it
        target = out / TUNED_FILE
        if target.exists():  # nothing is overwritten without keeping the previous file
            import shutil
            import time

            keep = free_path(out / "previous" / f"tuned-{time.strftime('%Y%m%d-%H%M%S')}.json")
            keep.parent.mkdir(exist_ok=True)
            shutil.copy2(target, keep)
        for name, grid in grids.items():
            res = tune(model, dataset, name, grid, out, metric=metric, fraction=fraction, n=n, settings=settings,
                       batch_size=batch_size,
                       fixed=(fixed or {}).get(name), progress=log is not None)
            results.append(res)
            figure = res.figure()
            atomic_write(out / f"grid-{slug(name)}.html", lambda tmp: figure.write_html(tmp, include_plotlyjs=True))  # offline: no CDN
            if log is not None:
                log(repr(res))
            save_tuned(results, target, about)
    return results


TUNED_FILE = "tuned.json"
# What makes two tunes into one directory comparable: they must agree on all of these. (``n`` and
# the metric may change — a tune grows, or is judged otherwise: each method records its own.)
_TUNING_IDENTITY = ("model", "data", "split", "users", "settings")


def tuning_about(model_name: str, dataset: Any, fraction: float, metric: str, n: int | None, settings: Any,
                 command: str | None = None) -> dict:
    """What ``tuned.json`` records of where its choices came from (everything but the methods)."""
    from workbench.data.splits import describe_split

    return {"model": model_name, "data": str(getattr(dataset, "path", "")), "split": getattr(dataset, "split", ""),
            "users": {"users": "tune", **describe_split(dataset, fraction)}, "metric": metric, "n": n,
            "settings": asdict(settings), "command": command}


def check_tuning_dir(out: str | Path, grids: Mapping[str, Mapping[str, Sequence[Any]]],
                     fixed: Mapping[str, Mapping[str, Any]] | None, about: Mapping[str, Any]) -> None:
    """Refuse (ValueError) a tune into ``out`` that would replace results already there: a
    ``tuned.json`` made on another model, data, users or settings, or one holding a method of
    ``grids`` tuned over another grid or with other fixed settings. The same grid again resumes
    (e.g. on a larger ``n``) and replaces that method's entry; the file before is kept under
    ``previous/``. Reads only; called before the model loads (``workbench tune``) and again by
    :func:`tune_methods`."""
    path = Path(out) / TUNED_FILE
    if not path.exists():
        return
    fix = f"use another --out (a run can take several --tuned files), or move {path} away"
    d = _read_tuned(path)
    diff = [k for k in _TUNING_IDENTITY if k in d and d.get(k) != about.get(k)]
    if diff:
        shown = "; ".join(f"{k}: {json.dumps(d.get(k), default=str)[:60]} there, "
                          f"{json.dumps(about.get(k), default=str)[:60]} now" for k in diff)
        raise ValueError(f"{path} holds settings tuned with other {', '.join(diff)} ({shown}); its choices would "
                         f"no longer say what they were tuned on: {fix}")
    for name, grid in grids.items():
        before = d["methods"].get(name)
        if not isinstance(before, dict) or before.get("grid") is None:
            continue  # not tuned there (or by a workbench that did not record grids: the old file is kept)
        now_grid, now_fixed = _as_text(grid), _as_text((fixed or {}).get(name))
        if before.get("grid") != now_grid or (before.get("fixed") or {}) != now_fixed:
            raise ValueError(f"{path} already holds {name} tuned over grid {before.get('grid')}"
                             + (f" with {before.get('fixed')}" if before.get("fixed") else "")
                             + f"; tuning it over {now_grid}" + (f" with {now_fixed}" if now_fixed else "")
                             + f" would replace those scores and that choice: {fix}")


def save_tuned(results: Sequence[TuningResult], path: str | Path, about: Mapping[str, Any]) -> Path:
    """Write ``tuned.json``: where the choice came from (``about``: model, data, users, command)
    and, per method, the chosen settings and every grid point's score. Methods already in the
    file (an earlier tune into the same directory, on the same model) are kept."""
    path = Path(path)
    earlier: dict = {}
    if path.exists():
        try:
            old = _read_tuned(path)
        except ValueError:
            old = {}
        if old and old.get("model") == about.get("model"):
            earlier = old["methods"]
    now = {r.method: {**r.to_dict(), "n": about.get("n")} for r in results}
    payload = {"format": TUNED_FORMAT, **about, "methods": {**earlier, **now}}
    return atomic_write_text(path, json.dumps(payload, indent=2, default=str))


def load_tuned(path: str | Path, model_name: str | None = None) -> dict[str, dict[str, Any]]:
    """``{method: settings}`` from a ``tuned.json``: the chosen point together with the settings
    fixed at every point while tuning (``--set``; recorded as text, typed when applied) — the
    choice was only ever scored with them. Refuses settings tuned on another model."""
    d = _read_tuned(path)
    if model_name is not None and d.get("model") != model_name:
        raise ValueError(f"{path} holds settings tuned on {d.get('model')!r}, not on {model_name!r}; "
                         f"tune them on this model (`workbench tune --model {model_name} ...`)")
    return {name: {**(m.get("fixed") or {}), **m.get("chosen", {})} for name, m in d["methods"].items()}


def _read_tuned(path: str | Path) -> dict:
    """The content of a ``tuned.json``; a missing, damaged or foreign file is a ValueError."""
    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist; write one with `workbench tune ... --out DIR`") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a readable tuned-settings file ({e})") from None
    if not isinstance(d, dict) or d.get("format") != TUNED_FORMAT or not isinstance(d.get("methods"), dict):
        raise ValueError(f"{path} is not a tuned-settings file written by `workbench tune`")
    return d
