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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from workbench._util import atomic_write_text, slug, stable_hash
from workbench.data.metrics import GENERATION_METRICS, bootstrap_ci
from workbench.runner.settings import apply_settings, settable_fields
from workbench.data.splits import TUNE_FRACTION, split_users

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


@dataclass
class TuningResult:
    """One method's grid on the tuning users: a row per point and the chosen settings."""

    method: str
    metric: str
    points: pd.DataFrame
    chosen: dict
    defaults: dict

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
                "points": json.loads(self.points.to_json(orient="records"))}


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
         fixed: Mapping[str, Any] | None = None, progress: bool = True) -> TuningResult:
    """Run ``method`` at every point of ``grid`` on the tuning users of ``dataset`` and choose one.

    Args:
        grid: ``{field: [values...]}`` (values as text, as on the command line, or typed).
        out_dir: each point runs in ``out_dir/<method>/<point>/`` (resumable: finished
            examples are read back, not recomputed).
        metric: ``rouge1`` (default), ``rougeL`` or ``meteor``; the mean over the tuning examples.
        n: the first ``n`` tuning examples only (a cheaper, noisier choice); None = all.
        fixed: settings applied at every point (e.g. from ``--set``).
    """
    from tqdm.auto import tqdm

    from workbench.runner.bench import run_bench
    from workbench.methods import GenerationSettings, make_methods

    if metric not in GENERATION_METRICS:
        raise ValueError(f"metric={metric!r}: use one of {GENERATION_METRICS}")
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
    for point in tqdm(points, desc=f"tune {method}", disable=not progress):
        m = make_methods([method], settings)[0]
        apply_settings(m, {**(fixed or {}), **point})
        where = Path(out_dir) / slug(method) / (slug(_point_label(point), 60) + "-" + stable_hash(point, 6))
        res = run_bench(model, tune_ds, [m], where, n=n, settings=settings, progress=False)
        values = res.outputs[metric].astype(float)
        mean, lo, hi = bootstrap_ci(values)
        typed = {k: getattr(m, k) if "." not in k else v for k, v in point.items()}
        rows.append({**typed, "n": len(values), metric: mean, "lo": lo, "hi": hi, "run": str(where)})
    table = pd.DataFrame(rows)
    best = choose(table, metric, defaults, list(grid))
    table["chosen"] = table.index == best
    chosen = {k: rows[best][k] for k in grid}  # from the rows: a table column would turn None into NaN
    return TuningResult(method, metric, table, chosen, {k: default_of(defaults, k) for k in grid})


def save_tuned(results: Sequence[TuningResult], path: str | Path, about: Mapping[str, Any]) -> Path:
    """Write ``tuned.json``: where the choice came from (``about``: model, data, users, command)
    and, per method, the chosen settings and every grid point's score."""
    payload = {"format": TUNED_FORMAT, **about, "methods": {r.method: r.to_dict() for r in results}}
    return atomic_write_text(path, json.dumps(payload, indent=2, default=str))


def load_tuned(path: str | Path, model_name: str | None = None) -> dict[str, dict[str, Any]]:
    """``{method: chosen settings}`` from a ``tuned.json``; refuses settings tuned on another model."""
    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist; write one with `workbench tune ... --out DIR`") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a readable tuned-settings file ({e})") from None
    if not isinstance(d, dict) or d.get("format") != TUNED_FORMAT or not isinstance(d.get("methods"), dict):
        raise ValueError(f"{path} is not a tuned-settings file written by `workbench tune`")
    if model_name is not None and d.get("model") != model_name:
        raise ValueError(f"{path} holds settings tuned on {d.get('model')!r}, not on {model_name!r}; "
                         f"tune them on this model (`workbench tune --model {model_name} ...`)")
    return {name: dict(m.get("chosen", {})) for name, m in d["methods"].items()}
