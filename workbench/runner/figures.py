"""Plotly figures. Each function takes a result DataFrame and returns a ``go.Figure``."""

from __future__ import annotations

from typing import Any

import pandas as pd
import plotly.graph_objects as go


def layer_effect_figure(effects: pd.DataFrame, title: str | None = None) -> go.Figure:
    """Bar chart of :func:`workbench.core.heads.layer_mask_effects`: drop in log-likelihood per layer."""
    fig = go.Figure(
        go.Bar(
            name="personalized output",
            x=effects["layer"],
            y=effects["drop"],
            marker_color="#c0392b",
            customdata=effects[["logp", "logp_masked"]].to_numpy(),
            hovertemplate="layer %{x}<br>drop %{y:.3f} nats/token<br>"
            "log p intact %{customdata[0]:.3f}<br>log p masked %{customdata[1]:.3f}<extra></extra>",
        )
    )
    if "drop_generic" in effects:
        fig.add_bar(
            name="generic output (article only)",
            x=effects["layer"],
            y=effects["drop_generic"],
            marker_color="#9e9e9e",
            hovertemplate="layer %{x}<br>drop %{y:.3f} nats/token (generic)<extra></extra>",
        )
    fig.update_layout(
        title=title or "Masking all heads of one layer: drop in log-likelihood of the personalized output",
        xaxis_title="layer (all its heads masked)",
        yaxis_title="drop in mean log p per token (nats)",
        template="plotly_white",
        height=420,
        barmode="group",
        legend=dict(orientation="h", y=1.02, x=1, xanchor="right", yanchor="bottom"),
        margin=dict(l=60, r=20, t=60, b=50),
    )
    return fig


def results_figure(summary: pd.DataFrame, title: str | None = None) -> go.Figure:
    """Grouped bars of a benchmark summary: one group per metric, one bar per method, 95% intervals."""
    from plotly.colors import qualitative

    from workbench.data.metrics import ALL_METRICS

    metrics = [m for m in ALL_METRICS if m in summary and summary[m].notna().any()]
    # The default colorway has 10 colours and repeats after that: two methods would share one.
    palette = qualitative.Plotly if len(summary) <= len(qualitative.Plotly) else qualitative.Dark24
    fig = go.Figure()
    for i, row in enumerate(summary.itertuples(index=False)):
        r = row._asdict()
        fig.add_bar(
            name=r["method"],
            marker_color=palette[i % len(palette)],
            x=metrics,
            y=[r[m] for m in metrics],
            error_y=dict(
                type="data",
                symmetric=False,
                array=[r[f"{m}_hi"] - r[m] for m in metrics],
                arrayminus=[r[m] - r[f"{m}_lo"] for m in metrics],
            ),
            hovertemplate="%{x}: %{y:.4f}<extra>" + r["method"] + f" (n={r['n']})</extra>",
        )
    fig.update_layout(
        title=title or "Method comparison (mean, 95% bootstrap interval)",
        barmode="group",
        yaxis_title="score",
        template="plotly_white",
        height=420,
    )
    return fig


def sparsity_figure(curve: pd.DataFrame, title: str | None = None) -> go.Figure:
    """Top-k vs random-k heads (:func:`workbench.science.pcs.sparsity_curve`): NLL increase per k."""
    fig = go.Figure()
    rnd = curve[curve["kind"] == "random"].groupby("k")["delta_nll"]
    mean, lo, hi = rnd.mean(), rnd.min(), rnd.max()
    fig.add_scatter(x=list(mean.index) + list(mean.index[::-1]), y=list(hi) + list(lo[::-1]), fill="toself",
                    fillcolor="rgba(158,158,158,0.25)", line=dict(width=0), hoverinfo="skip",
                    name="random heads (min-max over draws)")
    fig.add_scatter(x=mean.index, y=mean, mode="lines+markers", name="random heads (mean)", line=dict(color="#9e9e9e"),
                    hovertemplate="k=%{x}<br>mean increase %{y:.4f} nats/token<extra></extra>")
    top = curve[curve["kind"] == "top"].sort_values("k")
    fig.add_scatter(x=top["k"], y=top["delta_nll"], mode="lines+markers", name="top-k preference heads",
                    line=dict(color="#c0392b"), customdata=top[["heads"]].to_numpy(),
                    hovertemplate="k=%{x}<br>increase %{y:.4f} nats/token<br>%{customdata[0]}<extra></extra>")
    fig.update_layout(title=title or "Masking the top-k preference heads vs k random heads",
                      xaxis_title="k (heads masked)", yaxis_title="NLL increase of the user's output (nats/token)",
                      template="plotly_white", height=420, margin=dict(l=60, r=20, t=60, b=50),
                      legend=dict(orientation="h", y=1.02, x=1, xanchor="right", yanchor="bottom"))
    return fig


def specificity_figure(table: pd.DataFrame, title: str | None = None) -> go.Figure:
    """Specificity of head sets (``benchmarks/bench_specificity.py``'s table): per k, the share of
    the personalization gain that masking the top-k heads removes (left) and how much it moves
    the no-history NLL, in units of the gain (right). A head set specific to preference is high
    on the left and near zero on the right; random heads (mean ± sd over draws) are the floor."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("share of the personalization gain removed",
                                                        "no-history NLL shift / gain"))
    colours = {"plain PCS": "#c0392b", "contrastive PCS": "#2471a3", "random": "#9e9e9e"}
    for col, (metric, sd) in enumerate([("gain_removed", "gain_removed_sd"), ("nohist_shift", None)], start=1):
        for name, g in table.groupby("heads", sort=False):
            g = g.sort_values("k")
            err = dict(type="data", array=g[sd], visible=True) if sd and (g[sd] > 0).any() else None
            fig.add_scatter(x=g["k"], y=g[metric], mode="lines+markers", name=name, error_y=err,
                            line=dict(color=colours.get(name)), legendgroup=name, showlegend=col == 1,
                            hovertemplate=f"{name}<br>k=%{{x}}<br>%{{y:.0%}}<extra></extra>", row=1, col=col)
        fig.update_xaxes(type="log", tickvals=sorted(table["k"].unique()), title_text="k (heads masked)", row=1, col=col)
        fig.update_yaxes(tickformat=".0%", row=1, col=col)
    fig.add_hline(y=0.5, line=dict(dash="dot", color="#2471a3"), row=1, col=1)
    fig.add_hrect(y0=-0.1, y1=0.1, fillcolor="rgba(36,113,163,0.08)", line_width=0, row=1, col=2)
    fig.update_layout(title=title or "Which heads carry the user's preference? Masking the top-k heads of each kind",
                      template="plotly_white", height=420, margin=dict(l=60, r=20, t=80, b=50),
                      legend=dict(orientation="h", y=1.12, x=1, xanchor="right", yanchor="bottom"))
    return fig


def attention_figure(tokens: list[str], weights, title: str) -> go.Figure:
    """Bar chart of one head's attention from the last prompt position over the prompt's tokens."""
    import numpy as np

    w = np.asarray(weights, dtype=float)
    fig = go.Figure(go.Bar(x=list(range(len(tokens))), y=w, marker_color="#2c7fb8",
                           customdata=np.array(tokens, dtype=object)[:, None],
                           hovertemplate="pos %{x}: %{customdata[0]}<br>attention %{y:.3f}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="prompt position (hover for the token)", yaxis_title="attention",
                      template="plotly_white", height=320, margin=dict(l=60, r=20, t=50, b=40))
    return fig


def paired_figure(table: pd.DataFrame, title: str | None = None) -> go.Figure:
    """Forest plot of :func:`workbench.runner.compare.comparison_table`: each method's paired
    difference to the baseline with its 95% interval (an interval crossing 0: no evidence)."""
    base, metric = table.attrs.get("baseline", "rag"), table.attrs.get("metric", "rouge1")
    t = table[table["method"] != base].iloc[::-1]
    d, lo, hi = (t[f"{k}_vs_{base}"] for k in ("diff", "diff_lo", "diff_hi"))
    colors = ["#2e7d32" if l > 0 else "#c62828" if h < 0 else "#757575" for l, h in zip(lo, hi)]
    fig = go.Figure(go.Scatter(
        x=d, y=t["method"], mode="markers", marker=dict(size=10, color=colors),
        error_x=dict(type="data", symmetric=False, array=hi - d, arrayminus=d - lo, color="#555"),
        customdata=t[[f"wins_vs_{base}", f"ties_vs_{base}", f"losses_vs_{base}"]].to_numpy(),
        hovertemplate="%{y}: %{x:+.4f}<br>wins %{customdata[0]}, ties %{customdata[1]}, "
                      "losses %{customdata[2]}<extra></extra>"))
    fig.add_vline(x=0, line_dash="dot", line_color="#999")
    fig.update_layout(title=title or f"{metric} minus {base}, same {int(t['n'].iloc[0])} examples (95% paired bootstrap)",
                      xaxis_title=f"difference in {metric} (per-example, averaged)", template="plotly_white",
                      height=140 + 32 * len(t), margin=dict(l=120, r=20, t=60, b=50))
    return fig


def per_user_figure(users: pd.DataFrame, baseline: str = "rag", title: str | None = None) -> go.Figure:
    """Heatmap of :func:`workbench.runner.compare.per_user`: each method's mean score per user minus
    the baseline's (green: the method wins for that user, red: it loses)."""
    diff = users.drop(columns=[baseline]).sub(users[baseline], axis=0)
    order = diff.mean(axis=1).sort_values().index
    diff = diff.loc[order]
    lim = float(max(0.05, diff.abs().quantile(0.95).max()))
    fig = go.Figure(go.Heatmap(
        z=diff.T.to_numpy(), x=list(diff.index), y=list(diff.columns), zmin=-lim, zmax=lim, zmid=0,
        colorscale="RdYlGn", colorbar=dict(title=f"vs {baseline}"),
        hovertemplate="user %{x}<br>%{y}: %{z:+.3f} vs " + baseline + "<extra></extra>"))
    fig.update_layout(title=title or f"Per user: mean score minus {baseline} (users sorted by the average difference)",
                      xaxis_title="user", template="plotly_white", height=160 + 28 * diff.shape[1],
                      margin=dict(l=120, r=20, t=60, b=60))
    return fig


def tuning_figure(result: Any, title: str | None = None) -> go.Figure:
    """One method's tuning grid: the metric of every point with its 95% interval; the chosen
    point in colour (a :class:`workbench.runner.tuning.TuningResult`)."""
    pts = result.points
    fields = [c for c in pts.columns if c not in ("n", result.metric, "lo", "hi", "run", "chosen")]
    labels = [", ".join(f"{f}={row[f]}" for f in fields) for _, row in pts.iterrows()]
    fig = go.Figure(go.Bar(
        x=labels, y=pts[result.metric],
        error_y=dict(type="data", array=pts["hi"] - pts[result.metric], arrayminus=pts[result.metric] - pts["lo"]),
        marker_color=["#d62728" if c else "#9e9e9e" for c in pts["chosen"]],
        hovertemplate="%{x}<br>" + result.metric + " %{y:.4f}<extra></extra>",
    ))
    fig.update_layout(title=title or f"Tuning {result.method} on the tuning users ({result.metric}; red = chosen)",
                      yaxis_title=f"{result.metric} (mean, 95% interval)", template="plotly_white", height=420)
    return fig
