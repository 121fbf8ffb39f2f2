"""The result of a head scoring: :class:`PreferenceScores`, the Preference Contribution Score
of every attention head with the settings and data it came from — ranking (``top``,
``top_percent``, ``weights``), per-user subsets, a heatmap, and saving / loading as JSON.

Computed by :func:`workbench.science.pcs.preference_scores`.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from workbench._util import atomic_write_text, check_int, check_number, read_json_file, refuse_overwrite
from workbench.core.model import Model

_FORMAT = "workbench.preference_scores/1"
_META_KEYS = ("model", "how", "scope", "mode")  # what every view of the scores names


class PreferenceScores:
    """PCS of every head, with the settings and data it came from.

    ``.frame``: one row per head — ``layer``, ``head``, ``pcs`` (mean over examples),
    ``std`` (over examples) and ``n``; with ``mode="verified"`` also ``exact`` (True: masked
    for real; False: the attribution estimate). ``.per_example``: ``[n_examples, n_layers, n_heads]``.
    """

    def __init__(self, per_example: np.ndarray, meta: dict):
        self.per_example = np.asarray(per_example, dtype=float)
        if self.per_example.ndim != 3 or 0 in self.per_example.shape:
            raise ValueError(f"per_example must be [n_examples, n_layers, n_heads], none of them 0; "
                             f"got shape {self.per_example.shape}")
        missing = [k for k in _META_KEYS if k not in meta]
        if missing:
            raise ValueError(f"meta lacks {missing}; PreferenceScores records {list(_META_KEYS)}")
        self.meta = dict(meta)
        n, L, H = self.per_example.shape
        layers, heads = np.meshgrid(np.arange(L), np.arange(H), indexing="ij")
        self.frame = pd.DataFrame({
            "layer": layers.ravel(), "head": heads.ravel(),
            "pcs": self.per_example.mean(0).ravel(),
            "std": (self.per_example.std(0, ddof=1) if n > 1 else np.zeros((L, H))).ravel(),
            "n": n,
        })
        if "verified_heads" in self.meta:  # mode="verified": which entries are exact, which estimates
            exact = np.zeros((L, H), dtype=bool)
            for layer, head in self.meta["verified_heads"]:
                exact[layer, head] = True
            self.frame["exact"] = exact.ravel()

    def minus_no_history(self, bare: "PreferenceScores") -> "PreferenceScores":
        """Contrastive PCS from two halves: these plain scores minus ``bare``, the same targets
        scored with no history in the prompt (``k=0``) — what ``preference_scores(...,
        contrast="history")`` computes in one go (tests/test_contrastive_pcs.py). Lets a caller that
        already has the plain half compute only the cheap one. Refuses halves of other examples,
        models or settings: their difference would mean nothing."""
        if self.meta.get("contrast") or bare.meta.get("contrast"):
            raise ValueError("both halves must be plain scores (no contrast); got "
                             f"{self.kind} and {bare.kind}")
        if self.meta.get("k") == 0:
            raise ValueError("these scores were computed with no history (k=0): call minus_no_history on the "
                             "half scored with the history (k>0), passing the k=0 half")
        if bare.meta.get("k") not in (0, None):
            raise ValueError(f"the no-history half must be scored with k=0, not k={bare.meta.get('k')}")
        same = ("model", "how", "scope", "mode", "example_ids", "example_users")
        differ = [key for key in same if self.meta.get(key) != bare.meta.get(key)]
        if differ or self.per_example.shape != bare.per_example.shape:
            raise ValueError(f"the two halves differ in {differ or ['shape']}: score the same examples with "
                             "the same settings, once with the history (k>0) and once without (k=0)")
        meta = {key: v for key, v in self.meta.items() if key != "path"}  # the result is not that file
        meta.update(contrast="history", created=bare.meta.get("created", meta.get("created")),
                    seconds=round(float(self.meta.get("seconds", 0)) + float(bare.meta.get("seconds", 0)), 2))
        return PreferenceScores(self.per_example - bare.per_example, meta)

    # facts
    @property
    def model(self) -> str:
        return self.meta["model"]

    @property
    def matrix(self) -> np.ndarray:
        """Mean PCS as ``[n_layers, n_heads]``."""
        return self.per_example.mean(0)

    def __len__(self) -> int:
        return len(self.frame)

    def __repr__(self) -> str:
        m = self.meta
        top = ", ".join(f"L{l}H{h} {v:+.3f}" for (l, h), v in self._top_values(3))
        return (f"PreferenceScores({m['model']}: {self.kind}, {m['how']} masking, scope={m['scope']}, mode={m['mode']}, "
                f"{self.per_example.shape[0]} examples; top: {top})")

    @property
    def kind(self) -> str:
        """``"plain PCS"`` or the contrast it was computed with (see ``preference_scores``)."""
        c = self.meta.get("contrast")
        return f"contrastive PCS ({c})" if c else "plain PCS"

    def _repr_html_(self) -> str:
        # Every field may come from a loaded file: escaped, so a file can't put markup in a notebook.
        m = {k: html.escape(str(m)) for k, m in self.meta.items()}
        verified = (f" ({len(self.meta['verified_heads'])} heads exact, the rest estimates: column <code>exact</code>)"
                    if "verified_heads" in self.meta else "")
        head = (f"<p><b>Preference heads</b> · {m['model']} · {html.escape(self.kind)} · {m['how']} masking · scope {m['scope']} · "
                f"{m['mode']}{verified} · {self.per_example.shape[0]} examples ({m.get('data', '')})</p>")
        return head + self.frame.sort_values("pcs", ascending=False).head(10).to_html(
            index=False, float_format="{:.4f}".format, escape=True)

    # selection
    def _top_values(self, k: int) -> list[tuple[tuple[int, int], float]]:
        df = self.frame.sort_values(["pcs", "layer", "head"], ascending=[False, True, True]).head(k)
        return [((int(r.layer), int(r.head)), float(r.pcs)) for r in df.itertuples()]

    def top(self, k: int) -> list[tuple[int, int]]:
        """The ``k`` heads with the highest PCS, best first, as ``(layer, head)`` pairs."""
        k = check_int("k", k)
        if not 0 < k <= len(self.frame):
            raise ValueError(f"k={k} must be between 1 and the number of heads ({len(self.frame)})")
        return [h for h, _ in self._top_values(k)]

    def top_percent(self, p: float) -> list[tuple[int, int]]:
        """The top ``p`` percent of heads (at least one): ``top_percent(4)`` is the DPS authors' 4%."""
        p = check_number("p", p)
        if not 0 < p <= 100:
            raise ValueError(f"p={p} is a percentage in (0, 100], e.g. 4 for the top 4% of heads")
        return self.top(max(1, math.ceil(len(self.frame) * p / 100)))

    def weights(self, k: int) -> dict[tuple[int, int], float]:
        """Partial-mask weights for the top ``k`` heads: ``max(pcs, 0) / max(pcs)`` (the
        authors' max-normalisation), for weighted DPS."""
        vals = dict(self._top_values(k))
        peak = max(vals.values())
        if peak <= 0:
            raise ValueError("no head has a positive PCS; there is nothing to weight")
        return {h: max(v, 0.0) / peak for h, v in vals.items()}

    def for_users(self, users: Iterable[str]) -> "PreferenceScores":
        """The same scores averaged over the examples of ``users`` only (e.g. to check stability)."""
        users = set(map(str, users))
        keep = [i for i, u in enumerate(self.meta["example_users"]) if u in users]
        if not keep:
            raise ValueError("none of these users has examples in these scores")
        meta = {**self.meta, "example_ids": [self.meta["example_ids"][i] for i in keep],
                "example_users": [self.meta["example_users"][i] for i in keep]}
        return PreferenceScores(self.per_example[keep], meta)

    # figures
    def heatmap(self, title: str | None = None):
        """Plotly heatmap, layers x heads; hover shows PCS, its spread and n."""
        import plotly.graph_objects as go

        L, H = self.matrix.shape
        std = self.frame["std"].to_numpy().reshape(L, H)
        m = self.matrix
        bound = float(np.abs(m).max()) or 1.0
        fig = go.Figure(go.Heatmap(
            z=m, x=[f"H{h}" for h in range(H)], y=list(range(L)), customdata=std,
            colorscale="RdBu_r", zmid=0, zmin=-bound, zmax=bound, colorbar=dict(title="PCS<br>(nats)"),
            hovertemplate="layer %{y}, head %{x}<br>PCS %{z:.4f} nats/token<br>std %{customdata:.4f}"
                          f"<br>n = {self.per_example.shape[0]}<extra></extra>",
        ))
        if "exact" in self.frame:
            ex = self.frame[self.frame["exact"]]
            fig.add_scatter(x=[f"H{h}" for h in ex["head"]], y=ex["layer"], mode="markers", name="exact (verified)",
                            marker=dict(symbol="circle-open", size=9, color="black", line=dict(width=1.5)),
                            hoverinfo="skip", showlegend=True)
            fig.update_layout(legend=dict(orientation="h", y=-0.12))
        meta = self.meta
        fig.update_layout(
            title=title or (f"Preference Contribution Score per head ({self.kind})<br><sup>{meta['model']}, {meta['how']} masking, "
                            f"{meta['scope']} positions ({meta['mode']}, {self.per_example.shape[0]} examples)</sup>"),
            xaxis_title="head", yaxis_title="layer", template="plotly_white",
            height=max(360, 18 * L + 120), width=max(420, 60 * H + 220),
            margin=dict(l=60, r=20, t=60, b=50),
        )
        fig.update_yaxes(dtick=max(1, L // 15))
        return fig

    # persistence
    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the scores and everything they came from as JSON; refuses to replace a file."""
        path = Path(path)
        refuse_overwrite(path, overwrite)
        payload = {"format": _FORMAT, "meta": self.meta, "per_example": self.per_example.round(6).tolist()}
        return atomic_write_text(path, json.dumps(payload))

    @classmethod
    def load(cls, path: str | Path, model: Model | str | None = None) -> "PreferenceScores":
        """Read scores saved with :meth:`save`; with ``model``, refuse scores of another model."""
        path = Path(path)
        fix = "compute scores with workbench.preference_scores or `workbench heads`, and save them with .save(path)"
        payload = read_json_file(path, "a saved PreferenceScores file", fix)
        if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
            found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
            raise ValueError(f"{path} is not a saved PreferenceScores file (format {found!r}); {fix}")
        try:
            scores = cls(np.asarray(payload["per_example"], dtype=float), payload["meta"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path} is a damaged PreferenceScores file ({type(e).__name__}: {e}); {fix}") from None
        if not np.isfinite(scores.per_example).all():
            raise ValueError(f"{path} is a damaged PreferenceScores file (NaN or inf scores); {fix}")
        if model is not None:
            name = model if isinstance(model, str) else model.name
            shape = None if isinstance(model, str) else (model.n_layers, model.n_heads)
            if name != scores.model or (shape and shape != scores.matrix.shape):
                raise ValueError(f"{path} holds scores of {scores.model!r} ({scores.matrix.shape[0]} layers x "
                                 f"{scores.matrix.shape[1]} heads), not of {name!r}; recompute them for this model")
        return scores


def heatmaps(*scores: PreferenceScores, titles: Iterable[str] | None = None):
    """Several head scorings side by side (e.g. plain vs contrastive PCS), each on its own colour
    scale — the scorings measure different things, so their sizes are not comparable."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    if not scores:
        raise ValueError("give at least one PreferenceScores")
    shapes = {sc.matrix.shape for sc in scores}
    if len(shapes) != 1:
        raise ValueError(f"the scorings have different shapes {sorted(shapes)}; compare scorings of one model")
    titles = list(titles) if titles is not None else [sc.kind for sc in scores]
    L, H = scores[0].matrix.shape
    fig = make_subplots(rows=1, cols=len(scores), subplot_titles=titles, horizontal_spacing=0.12)
    for i, sc in enumerate(scores, start=1):
        m = sc.matrix
        bound = float(np.abs(m).max()) or 1.0
        fig.add_trace(go.Heatmap(
            z=m, x=[f"H{h}" for h in range(H)], y=list(range(L)), colorscale="RdBu_r", zmid=0, zmin=-bound,
            zmax=bound, colorbar=dict(x=i / len(scores) - 0.02, len=0.9, thickness=10),
            hovertemplate=f"{html.escape(sc.kind)}<br>layer %{{y}}, head %{{x}}<br>%{{z:.4f}} nats/token<extra></extra>",
        ), row=1, col=i)
    fig.update_layout(template="plotly_white", height=max(360, 18 * L + 120), width=max(420, 60 * H + 220) * len(scores),
                      title=f"Head scores, {scores[0].model}: plain vs contrastive")
    fig.update_yaxes(title_text="layer", col=1)
    return fig
