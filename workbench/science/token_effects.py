"""The result of token tracing: :class:`TokenEffects`, the effect of every traced prompt token
on an output, with its labels, and the ways to look at it — per word, per history item, the
preference-driven selection (top-k / top-p / threshold), an HTML rendering and a bar chart.

Computed by :func:`workbench.science.tracing.trace_tokens` and :func:`workbench.science.tracing.trace_example`.
"""

from __future__ import annotations

import html
from typing import Sequence

import numpy as np
import pandas as pd

from workbench._util import n_selected


class TokenEffects:
    """Effects of prompt tokens on an output, with their labels and the settings used.

    ``frame``: one row per traced token — ``item`` (history item, prompt order), ``item_id``,
    ``part``, ``position``, ``token``, ``word``, ``effect`` and, with a generic output,
    ``effect_generic`` and ``effect_diff`` (= effect - effect_generic).
    ``meta``: model, mode, target, generic target, reduce, base log-likelihoods, seconds.

    In a notebook it renders as the history text with each token coloured by its effect
    (red: deleting it makes the output less likely; blue: more likely).
    """

    def __init__(self, frame: pd.DataFrame, meta: dict, text: str = "", items: Sequence[dict] = ()):
        self.frame = frame
        self.meta = dict(meta)
        self.text = text
        self.items = list(items)

    # facts
    @property
    def has_generic(self) -> bool:
        return "effect_diff" in self.frame

    def _col(self, by: str | None) -> str:
        by = by or ("diff" if self.has_generic else "effect")
        col = {"effect": "effect", "diff": "effect_diff", "generic": "effect_generic"}.get(by)
        if col is None:
            raise ValueError(f"by={by!r}: use 'effect', 'diff' (effect minus the generic output's) or 'generic'")
        if col not in self.frame:
            raise ValueError(f"by={by!r} needs effects on a generic output; trace with generic_target=... "
                             "(or generic=True in trace_example)")
        return col

    def __len__(self) -> int:
        return len(self.frame)

    def __repr__(self) -> str:
        m = self.meta
        top = self.by_word().head(3)
        words = ", ".join(f"{r.text!r} {r.score:+.3f}" for r in top.itertuples())
        gen = ", minus generic" if self.has_generic else ""
        return (f"TokenEffects({m['model']}: {len(self)} tokens, mode={m['mode']}, reduce={m['reduce']}{gen}; "
                f"top words: {words})")

    # aggregation
    def by_word(self, by: str | None = None) -> pd.DataFrame:
        """Effects summed over the tokens of each word (a first-order estimate of deleting
        the whole word), best first. Columns: item, item_id, part, word, text, score,
        n_tokens, position (of the first token)."""
        col = self._col(by)
        f = self.frame[self.frame["word"] >= 0]
        if f.empty:
            return pd.DataFrame(columns=["item", "item_id", "part", "word", "text", "score", "n_tokens", "position"])
        g = f.groupby("word", sort=False)
        out = pd.DataFrame({
            "item": g["item"].first(), "item_id": g["item_id"].first(), "part": g["part"].first(),
            "text": g["token"].apply(lambda s: "".join(s).strip()), "score": g[col].sum(),
            "n_tokens": g.size(), "position": g["position"].min(),
        }).reset_index()
        return out.sort_values(["score", "position"], ascending=[False, True]).reset_index(drop=True)

    def by_item(self, by: str | None = None) -> pd.DataFrame:
        """Effects summed per history item and part (input / output), in prompt order, with the
        item's output text (``output_text``)."""
        col = self._col(by)
        f = self.frame[self.frame["item"] >= 0]
        tab = f.pivot_table(index=["item", "item_id"], columns="part", values=col, aggfunc="sum", fill_value=0.0)
        tab = tab.reindex(columns=[c for c in ("input", "output", "template") if c in tab.columns])
        tab["total"] = tab.sum(axis=1)
        tab = tab.reset_index()
        tab.columns.name = None
        # the output's own tokens, so no task's field name is needed to find it
        outputs = self.frame[self.frame["part"] == "output"].groupby("item")["token"].apply(lambda t: "".join(t).strip())
        tab.insert(2, "output_text", [str(outputs.get(i, "")) for i in tab["item"]])
        return tab

    def select(self, top_k: int | None = None, top_p: float | None = None, threshold: float | None = None,
               level: str = "word", by: str | None = None) -> pd.DataFrame:
        """The preference-driven units: exactly one of ``top_k`` (the k largest), ``top_p``
        (the fewest units holding a fraction p of the total positive effect) or ``threshold``
        (score >= threshold). Only positive scores qualify. ``level``: ``"word"`` or ``"token"``.
        ``by``: ``"effect"``, ``"diff"`` (default when a generic output was traced) or ``"generic"``."""
        if level == "word":
            units = self.by_word(by)
        elif level == "token":
            col = self._col(by)
            units = self.frame.assign(score=self.frame[col], text=self.frame["token"].str.strip())
            units = units.sort_values(["score", "position"], ascending=[False, True]).reset_index(drop=True)
        else:
            raise ValueError(f"level={level!r}: use 'word' or 'token'")
        pos = units[units["score"] > 0]  # sorted best first
        n = n_selected(pos["score"].to_numpy(), top_k=top_k, top_p=top_p, threshold=threshold)
        return pos.head(n).reset_index(drop=True)

    # display
    def html(self, by: str | None = None, selected: pd.DataFrame | None = None, max_items: int | None = None) -> str:
        """The traced history as HTML, each token's background coloured by its effect;
        hover a token for its value. Tokens of ``selected`` (a :meth:`select` result) are underlined."""
        col = self._col(by)
        f = self.frame
        bound = float(f[col].abs().max()) or 1.0
        chosen: set = set()
        if selected is not None and len(selected):
            if "word" in selected and "n_tokens" in selected:
                chosen = set(f.loc[f["word"].isin(selected["word"]), "position"])
            else:
                chosen = set(selected["position"])
        parts_html = []
        groups = [(i, g) for i, g in f.groupby("item", sort=True)]
        if max_items is not None:
            groups = groups[:max_items]
        for item, g in groups:
            label = "outside the history" if item < 0 else f"item {item} (id {html.escape(str(g['item_id'].iloc[0]))})"
            spans = []
            last_part = None
            for r in g.itertuples():
                if r.part != last_part and last_part is not None:
                    spans.append(" <span style='color:#888'>&rarr;</span> ")
                last_part = r.part
                v = float(getattr(r, col))
                a = min(1.0, abs(v) / bound)
                rgb = "192,57,43" if v > 0 else "41,128,185"
                deco = "text-decoration:underline;font-weight:bold;" if r.position in chosen else ""
                is_exact = bool(getattr(r, "exact", False))
                if is_exact:
                    deco += "outline:1px dotted #333;"
                tip = html.escape(f"{r.token.strip()!r} pos {r.position}: {v:+.4f}"
                                  + (" (exact)" if is_exact else " (estimate)" if "exact" in f else ""))
                spans.append(f"<span title=\"{tip}\" style='background:rgba({rgb},{a:.2f});{deco}'>"
                             f"{html.escape(r.token)}</span>")
            parts_html.append(f"<div style='margin:4px 0'><b style='color:#555'>{label}:</b> {''.join(spans)}</div>")
        m = self.meta
        what = {"effect": "effect on the output", "effect_diff": "effect minus effect on the generic output",
                "effect_generic": "effect on the generic output"}[col]
        verified = (f" ({int(f['exact'].sum())} tokens deleted for real, outlined; the rest "
                    f"{html.escape(str(m.get('estimate')))} estimates)" if "exact" in f else "")
        head = (f"<p><b>Token effects</b> · {html.escape(str(m['model']))} · {html.escape(str(m['mode']))}{verified} · {what} "
                f"({html.escape(str(m['reduce']))} log p, nats; colour scale &plusmn;{bound:.3g}) · output: "
                f"<i>{html.escape(str(m['target']))}</i></p>")
        return head + "<div style='font-family:monospace;white-space:pre-wrap;line-height:1.7'>" + "".join(parts_html) + "</div>"

    def _repr_html_(self) -> str:
        return self.html()

    def figure(self, by: str | None = None, title: str | None = None):
        """Plotly bar chart: the effect of every traced token, coloured by history item."""
        import plotly.graph_objects as go

        col = self._col(by)
        f = self.frame
        fig = go.Figure()
        for item, g in f.groupby("item", sort=True):
            fig.add_bar(x=g["position"], y=g[col], name="not in history" if item < 0 else f"item {item}",
                        customdata=np.stack([g["token"].str.strip(), g["part"]], axis=-1),
                        hovertemplate="pos %{x}: %{customdata[0]}<br>%{customdata[1]}<br>effect %{y:+.4f}<extra></extra>")
        if "exact" in f and f["exact"].any():
            ex = f[f["exact"]]
            fig.add_scatter(x=ex["position"], y=ex[col], mode="markers", name="exact (verified)",
                            marker=dict(symbol="circle-open", size=8, color="black"), hoverinfo="skip")
        m = self.meta
        fig.update_layout(
            title=title or (f"Effect of deleting each history token on log p(output) — {m['model']}, {m['mode']}"
                            if m["mode"] in ("exact", "naive") else
                            f"Estimated effect of each history token on log p(output) — {m['model']}, {m['mode']} "
                            "(a gradient estimate of deletion)"),
            xaxis_title="token position in the prompt", yaxis_title=f"{col} ({m['reduce']} log p, nats)",
            template="plotly_white", height=380, bargap=0.05, margin=dict(l=60, r=20, t=60, b=50),
        )
        return fig
