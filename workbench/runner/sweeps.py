"""Sweeps over a method's layer and scale on leak-free dev examples (never evaluation queries).

- :func:`steering_sweep`: a steering method (``caa-all``, ``steerx-caa``, ``opt-all``,
  ``steerx-opt``) generated and scored for every layer x scale;
- :func:`fints_sweep`: Fints for every layer x scale, scored by teacher-forced NLL (cheap) or
  by generation.

Use :func:`workbench.data.history.dev_split` / :func:`dev_examples` for the examples.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from workbench.science.fints import aggregate, fints_steer, sample_vectors
from workbench.data.history import dev_split, profile_examples
from workbench.core.model import Model
from workbench.science.pairs import contrastive_pairs

__all__ = ["dev_examples", "dev_split", "fints_sweep", "steering_sweep"]


def dev_examples(dataset: Any, n_users: int = 6, seed: int = 0) -> list[Any]:
    """Leave-one-out queries from users' histories, one per user (never an item whose output is
    the gold of a query in ``dataset``): :func:`workbench.data.history.profile_examples`."""
    return profile_examples(dataset, n=n_users, seed=seed)


def steering_sweep(model: Model, method: Any, examples: Sequence[Any], layers: Sequence[int],
          scales: Sequence[float], metric: str = "rougeL", progress: bool = True) -> pd.DataFrame:
    """Score ``method`` on ``examples`` (e.g. :func:`dev_split`) for every layer x scale.

    Vectors are built once per user and layer; each scale only re-generates. Returns one row
    per (layer, scale) with the mean metric, best first; ``df.attrs["best"]`` is the winning
    ``{"layer", "scale"}``.
    """
    from tqdm.auto import tqdm

    from workbench.methods import GenerationSettings, make_methods
    from workbench.methods.steerx import SteeringMethod
    from workbench.data.metrics import score_generation

    m = make_methods([method], GenerationSettings())[0] if isinstance(method, str) else method
    if not isinstance(m, SteeringMethod):
        raise ValueError(f"{m.name!r} is not a steering method; use caa-all, steerx-caa, opt-all or steerx-opt")
    by_user: dict[str, list] = {}
    for ex in examples:
        by_user.setdefault(ex.user_id, []).append(ex)
    rows = []
    bar = tqdm(total=len(layers) * len(scales) * len(examples), desc=f"sweep {m.name}", disable=not progress)
    old = (m.layer, m.scale)
    try:
        for L in layers:
            m.layer = int(L)
            states = {u: m.prepare_user(model, u, exs) for u, exs in by_user.items()}
            for s in scales:
                m.scale = float(s)
                vals = []
                for u, exs in by_user.items():
                    for ex in exs:
                        text, _ = m.generate(model, ex, states[u])
                        vals.append(score_generation(text, ex.gold)[metric])
                        bar.update(1)
                rows.append({"layer": int(L), "scale": float(s), metric: float(np.mean(vals)), "n": len(vals)})
    finally:
        m.layer, m.scale = old
        bar.close()
    df = pd.DataFrame(rows).sort_values(metric, ascending=False).reset_index(drop=True)
    df.attrs["best"] = {"layer": int(df.loc[0, "layer"]), "scale": float(df.loc[0, "scale"])}
    return df


def fints_sweep(
    model: Model,
    examples: Sequence[Any],
    others: Any,
    layers: Sequence[int],
    scales: Sequence[float],
    *,
    score: str = "nll",
    rag: bool = False,
    k: int = 5,
    weighting: str = "softmax",
    max_items: int = 8,
    max_new_tokens: int = 32,
    progress: bool = True,
    on_row: Callable[[dict], None] | None = None,
) -> pd.DataFrame:
    """Fints on ``examples`` for every (layer, scale): one row per (layer, scale, example).

    ``score="nll"`` (cheap: one forward each): the mean negative log-likelihood, nats per
    token, of the gold output under steering — lower = the steering moves the model towards
    what the user wrote. ``score="generate"``: greedy generation scored by ROUGE-1/ROUGE-L/
    METEOR. Scale 0 is the unsteered prompt. Pairs are built once per user (cached) and
    vectors for all ``layers`` in one pass. Use examples that are not your evaluation
    queries, e.g. :func:`dev_examples`. ``on_row`` gets each row as it is made.
    """
    from tqdm.auto import tqdm

    from workbench.data.metrics import score_generation
    from workbench.data.prompts import build_prompt, generate_line

    if score not in ("nll", "generate"):
        raise ValueError(f"score={score!r}: use 'nll' (teacher-forced, cheap) or 'generate'")

    def measure(prompt: Any, ex: Any) -> dict:
        if score == "nll":
            return {"nll": model.nll(prompt, ex.gold)}
        pred = generate_line(model, prompt, max_new_tokens=max_new_tokens)
        return {"prediction": pred, **score_generation(pred, ex.gold)}

    rows: list[dict] = []

    def add(row: dict) -> None:
        rows.append(row)
        if on_row:
            on_row(row)

    by_user: dict[str, list] = {}
    for ex in examples:
        by_user.setdefault(ex.user_id, []).append(ex)
    total = len(examples) * (len(layers) * len([s for s in scales if s]) + (0 in scales))
    bar = tqdm(total=total, desc="fints sweep", disable=not progress)
    for exs in by_user.values():
        pairs = contrastive_pairs(model, exs, others, max_items=max_items)
        vecs = sample_vectors(model, pairs, list(layers))
        for ex in exs:
            prompt, _ = build_prompt(model, ex, k=k if rag else 0, reserve=max_new_tokens)
            if 0 in scales:
                base = measure(prompt, ex)
                for L in layers:
                    add({"layer": L, "scale": 0.0, "id": ex.id, **base})
                bar.update(1)
            for L in layers:
                mine = vecs[L].for_example(ex)
                if not len(mine):
                    continue
                agg = aggregate(mine, ex, k=k, weighting=weighting)
                for sc in scales:
                    if not sc:
                        continue
                    with fints_steer(model, agg, sc):
                        add({"layer": L, "scale": float(sc), "id": ex.id, **measure(prompt, ex)})
                    bar.update(1)
    bar.close()
    return pd.DataFrame(rows)
