"""Sections of the ``workbench demo`` report that show a method on the example user.

Each function returns ``(title, html)``; :func:`workbench.app.demo.build_report` adds them in
:data:`SECTIONS` order. Every string that came from a model or from data is escaped.
"""

from __future__ import annotations

import html
import time

import pandas as pd

from workbench.core.model import Model

# The settings the sections use, in one place, so the text that states them is rendered from them.
STEERX_SCALE = 1.0  # 1 = the activation shift the description itself causes (as the steerx-caa method)
STEERX_WORDS = 12  # history words shown as selected
FINTS_PAIRS = {"max_items": 8, "select": "recent", "n_others": 3, "threshold": 0.15}  # contrastive_pairs arguments
FINTS_K = 5  # history items the aggregation mixes per input
# What a token-tracing mode computes, in words (the mode itself is read from the trace).
TRACE_MODE_IN_WORDS = {"attn": "fast gate-gradient estimate", "attn-sat": "fast gate-gradient estimate, saturation-corrected",
                       "gxi": "fast gradient x input estimate", "exact": "exact deletion", "naive": "exact deletion"}


def steerx_section(model: Model, example_user: dict | None = None, max_new_tokens: int = 32) -> tuple[str, str]:
    """``(title, html)`` for ``workbench demo``: token effects over the example user's history,
    the selected words, the SteerX description and steered vs generic outputs."""
    import plotly.io as pio

    from workbench.science.caa import caa_vectors
    from workbench.data.examples import EXAMPLE_USER
    from workbench.science.steerx import steerx_description
    from workbench.data.prompts import generate_line, headline_prompt, preference_prompt, task_prompt
    from workbench.science.tracing import trace_example

    user = example_user or EXAMPLE_USER
    history = list(user["profile"])
    te = trace_example(model, user, generic=True, mode="attn", progress=False)
    words = te.select(top_k=STEERX_WORDS, level="word")
    task = user.get("task", "lamp4")
    desc = steerx_description(model, history, str(user.get("user_id", "example")), task=task, progress=False)
    layer = model.n_layers // 2
    # the new article with the description as context, minus without it (as the steerx-caa method)
    vec = caa_vectors(model, [preference_prompt(model, task, desc.description, user["query"])],
                      [task_prompt(model, task, user["query"])], [layer])[layer]
    generic = generate_line(model, headline_prompt(model, user["query"]), max_new_tokens=max_new_tokens)
    rag_prompt = headline_prompt(model, user["query"], history)
    rag = generate_line(model, rag_prompt, max_new_tokens=max_new_tokens)
    with vec.apply(model, scale=STEERX_SCALE):
        steered = generate_line(model, rag_prompt, max_new_tokens=max_new_tokens)
    out = pd.DataFrame([{"output": "generic (article only)", "headline": generic},
                        {"output": "rag (history in the prompt)", "headline": rag},
                        {"output": f"rag + steerx-caa (layer {layer}, scale {STEERX_SCALE:g})", "headline": steered},
                        {"output": "the user's real headline", "headline": user.get("gold", "")}])
    esc = html.escape
    parts = [
        "<p>Which words of the user's history make the model write <i>this user's</i> headline? Each history "
        "token is scored by how much the log-likelihood of the user's real headline drops when the token is "
        "deleted, minus the same for the model's generic headline "
        f"({esc(TRACE_MODE_IN_WORDS.get(te.meta['mode'], 'estimate'))}, mode {esc(te.meta['mode'])}; red = the token "
        "pushes towards the user's headline). "
        "SteerX keeps the top words, has the model describe the user from them, and steers with a vector "
        "built from that description instead of the whole history (our reading of arXiv 2510.22256).</p>",
        te.html(by="diff", selected=words),
        pio.to_html(te.figure(by="diff"), full_html=False, include_plotlyjs=False),
        f"<p><b>Selected words</b> (the top {STEERX_WORDS}): {esc(', '.join(words['text']))}</p>",
        f"<p><b>SteerX description</b> (from leave-one-out traces of the history): {esc(desc.description)}</p>",
        out.to_html(index=False, border=0, escape=True),
    ]
    return "Token effects and SteerX steering", "\n".join(parts)


def fints_section(model: Model, example_user: dict | None = None, max_new_tokens: int = 32) -> tuple[str, str]:
    """A demo-report section: generic, rag and Fints-steered headlines for the example user,
    with the items the aggregation picked and their weights."""
    from workbench.data.examples import EXAMPLE_USER
    from workbench.science.fints import DEFAULT_SCALE, aggregate, fints_steer, picked, sample_vectors
    from workbench.data.records import Example
    from workbench.science.pairs import contrastive_pairs
    from workbench.data.prompts import generate_line, headline_prompt

    user = example_user or EXAMPLE_USER
    t0 = time.perf_counter()
    ex = Example(id=f"{user['user_id']}-query", user_id=user["user_id"], task=user.get("task", "lamp4"),
                 input=user["query"], profile=tuple(user["profile"]), gold=user.get("gold"))
    # The example user has no other users around; the built-in pool is a few neutral news items.
    others = [{"id": f"other-{i}", "text": t, "title": h} for i, (t, h) in enumerate(_NEUTRAL_OTHERS)]
    pair_args = {**FINTS_PAIRS, "n_others": min(FINTS_PAIRS["n_others"], len(others))}
    pairs = contrastive_pairs(model, list(user["profile"]), others, **pair_args, user_id=user["user_id"],
                              task=user.get("task", "lamp4"))
    vecs = sample_vectors(model, pairs)
    rows = []
    plain, rag = headline_prompt(model, user["query"]), headline_prompt(model, user["query"], user["profile"])
    rows.append(("generic", generate_line(model, plain, max_new_tokens=max_new_tokens)))
    rows.append(("rag", generate_line(model, rag, max_new_tokens=max_new_tokens)))
    table = ""
    if len(vecs):
        agg = aggregate(vecs, ex, k=FINTS_K)
        with fints_steer(model, agg, DEFAULT_SCALE):
            rows.append((f"fints (scale {DEFAULT_SCALE:g})", generate_line(model, plain, max_new_tokens=max_new_tokens)))
        with fints_steer(model, agg, DEFAULT_SCALE):
            rows.append((f"fints+rag (scale {DEFAULT_SCALE:g})", generate_line(model, rag, max_new_tokens=max_new_tokens)))
        with fints_steer(model, vecs.user_mean(), DEFAULT_SCALE):
            rows.append((f"caa-user (scale {DEFAULT_SCALE:g})", generate_line(model, plain, max_new_tokens=max_new_tokens)))
        table = f"<p>Items the aggregation picked for this input (at most {FINTS_K}):</p>" + picked(agg).to_html(
            index=False, float_format="{:.3f}".format, escape=True)
    else:
        table = "<p>Every contrastive pair was filtered out (the model already writes like this user).</p>"
    body = "".join(f"<tr><td>{html.escape(m)}</td><td>{html.escape(t)}</td></tr>" for m, t in rows)
    gold = f"<p>Gold: {html.escape(user['gold'])}</p>" if user.get("gold") else ""
    out = (f"<p>Fints steers with one vector per history item, mixed for each input "
           f"(layer {vecs.layer}, {len(vecs)} of {len(pairs)} pairs kept at ROUGE-L &lt; {FINTS_PAIRS['threshold']:g}, "
           f"{time.perf_counter() - t0:.1f} s).</p>{gold}"
           f"<table><tr><th>method</th><th>headline</th></tr>{body}</table>{table}")
    return "Fints: steered vs generic", out


# Other-user items for the demo's negatives (written for workbench; plain news, no house style).
_NEUTRAL_OTHERS = (
    ("The city council approved a new budget on Tuesday that raises spending on road repairs and parks.",
     "City Council Approves Budget With More Money For Roads"),
    ("A storm system is expected to bring heavy rain and strong winds to the coast over the weekend.",
     "Heavy Rain And Wind Expected On The Coast This Weekend"),
    ("The national team won its qualifying match 2-0 and moves on to the final round next month.",
     "National Team Wins Qualifier, Advances To Final Round"),
    ("A new study links regular walking to better sleep among adults over 50.",
     "Study Links Walking To Better Sleep For Older Adults"),
)


SECTIONS = (steerx_section, fints_section)
