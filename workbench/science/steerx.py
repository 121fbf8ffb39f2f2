"""SteerX-style disentangled steering: steer with what the user's history *causes*, not all of it.

Personalization steering usually builds a vector from a user's whole history. SteerX
(Zhao et al., arXiv 2510.22256) argues that most history tokens do not express the user's
preferences, and builds the vector from the ones that do:

1. **Token causal effects** (:mod:`workbench.science.tracing`): for a few of the user's own items held
   out in turn (input -> the output they wrote, the other items as history), the effect
   of every history token on the likelihood of that output, minus its effect on the
   model's generic output for the same input (difference in effects).
2. **Preference-driven tokens -> description**: the words with the largest effects are
   selected (top-k / top-p / threshold) and the model writes a short natural-language
   description of the user's preferences from them (the task's ``describe_prompt``,
   :mod:`workbench.data.tasks`, changeable).
3. **Steering vectors** on two backbones, each built from the description (SteerX) and from
   the ALL-history text (the baseline SteerX improves on):

   - ``caa``: contrastive activation addition — mean activation at one layer/site over the
     user's new inputs *with* the preference context minus *without* it;
   - ``opt``: a vector optimised with a few Adam steps, norm-bounded. ``opt-all`` raises the
     likelihood of the user's own history outputs given their inputs; ``steerx-opt``
     makes the steered model (no context) match the model that reads the description (KL on
     the same output tokens: context distillation of the description).

The paper's text was not available to us (see ``shared/research/methods.md`` §3): the
causal-effect estimator, the selection rule, the description prompt, the CAA contrast and
especially the ``steerx-opt`` target above are **our reading**, chosen so that each SteerX
method and its all-history twin differ only in where the preference signal comes from.

No gold output of an evaluated query is ever read: the history of a user is the set of
profile items shared by *all* of their queries (LaMP profiles grow over time and a later
query's profile contains earlier queries' gold outputs), traced targets are the user's
own history outputs, and CAA averages over the new inputs, never their gold.

Everything task-specific — which item fields are the input and the output, the prompts,
the description prompt — comes from the ``task``'s spec in :mod:`workbench.data.tasks`.

This module holds steps 1-2 (preference-driven tokens -> description). The backbones are
:mod:`workbench.science.caa` and :mod:`workbench.science.optimized`; the runner methods (``caa-all``,
``steerx-caa``, ``opt-all``, ``steerx-opt``) are in :mod:`workbench.methods.steerx`.
Descriptions and per-user vectors are cached under ``$WORKBENCH_CACHE/steerx/`` keyed by
model, settings and history.
"""

from __future__ import annotations

import html as _html
import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import pandas as pd

from workbench._util import atomic_write_text, cache_file, cached, n_selected, stable_hash
from workbench.data.history import held_out_example, history_key, item_fields
from workbench.data.tasks import get_task, steering_task
from workbench.core.model import Model


def describe_prompt(task: str) -> str:
    """``task``'s prompt that turns the selected words (``{words}``, comma-separated) into a
    description (:attr:`workbench.data.tasks.TaskSpec.describe_prompt`)."""
    prompt = get_task(task).describe_prompt
    if not prompt:
        raise ValueError(f"task {task!r} has no describe_prompt; add one to its TaskSpec in workbench.data.tasks "
                         "or pass prompt=... (with a {words} placeholder)")
    return prompt

# ---- steps 1 and 2: preference-driven tokens -> description --------------------------------------------

@dataclass
class PreferenceDescription:
    """What SteerX distilled from a user's history: the selected words and the description.

    ``words``: DataFrame (``text``, ``score`` summed over traces, ``n``: how many traces
    selected it); ``description``: the model's text; ``prompt``: the prompt it answered;
    ``traces``: the :class:`~workbench.science.tracing.TokenEffects` (not saved in the cache).
    """

    user_id: str
    description: str
    words: pd.DataFrame
    prompt: str
    settings: dict
    traces: list = field(default_factory=list, repr=False)

    def __repr__(self) -> str:
        w = ", ".join(self.words["text"].head(8))
        return f"PreferenceDescription(user {self.user_id}: {self.description!r}; words: {w})"

    def _repr_html_(self) -> str:
        return (f"<p><b>User {_html.escape(self.user_id)}</b>: {_html.escape(self.description)}</p>"
                f"<p style='color:#555'>from the words: {_html.escape(', '.join(self.words['text']))}</p>")

    def to_dict(self) -> dict:
        return {"user_id": self.user_id, "description": self.description, "prompt": self.prompt,
                "settings": self.settings, "words": self.words.to_dict(orient="records")}

    @classmethod
    def from_dict(cls, d: dict) -> "PreferenceDescription":
        return cls(d["user_id"], d["description"], pd.DataFrame(d["words"]), d["prompt"], d["settings"])


def trace_history(model: Model, history: Sequence[dict], n: int = 2, k: int = 3, mode: str = "attn",
                  positions: str = "history", contrast: bool = True, max_new_tokens: int = 24,
                  progress: bool = False, *, task: str) -> list:
    """Token effects over a user's own history (items of ``task``), leave-one-out.

    Each of the ``n`` most recent items is held out in turn: its input is the input, the
    output the user wrote for it is the traced output, and the ``k`` other items most similar
    to it (BM25) are the history in the task's prompt. With ``contrast`` the model's own
    generic output (no history, greedy) is traced too, for the difference in effects.
    """
    from workbench.data.retrieval import rank_profile
    from workbench.data.prompts import generate_line, task_prompt
    from workbench.science.tracing import trace_tokens

    steering_task(task)
    if len(history) < 2:
        raise ValueError("tracing leave-one-out needs at least two history items")
    source, target = item_fields(task)
    traces = []
    for j in range(len(history) - 1, max(-1, len(history) - 1 - n), -1):
        held, rest = history[j], [it for i, it in enumerate(history) if i != j]
        pseudo = held_out_example(held, rest, task=task, id=f"history-{held.get('id', j)}")
        shown = list(reversed(rank_profile(pseudo, k=k, by="bm25")))  # best match closest to the question
        prompt = task_prompt(model, task, held[source], shown)
        generic = None
        if contrast:
            generic = generate_line(model, task_prompt(model, task, held[source]), max_new_tokens=max_new_tokens)
            generic = generic or None
        traces.append(trace_tokens(model, prompt, held[target], items=shown, positions=positions, mode=mode,
                                   generic_target=generic, progress=progress, fields=(source, target)))
    return traces


def preference_words(traces: Iterable[Any], top_k: int | None = 20, top_p: float | None = None,
                     threshold: float | None = None, by: str | None = None) -> pd.DataFrame:
    """Words with the largest effects across traces (summed per lower-cased word), selected by
    exactly one of ``top_k`` / ``top_p`` / ``threshold`` (see :meth:`TokenEffects.select`)."""
    frames = [t.by_word(by) for t in traces]
    if not frames:
        raise ValueError("no traces given")
    allw = pd.concat(frames, ignore_index=True)
    allw = allw[allw["text"].str.contains(r"\w", regex=True)]  # punctuation alone says little
    allw["key"] = allw["text"].str.lower()
    g = allw.groupby("key", sort=False)
    words = pd.DataFrame({"text": g["text"].first(), "score": g["score"].sum(), "n": g.size(),
                          "word": range(g.ngroups), "n_tokens": 1, "position": 0}).reset_index(drop=True)
    words = words.sort_values("score", ascending=False).reset_index(drop=True)
    pos = words[words["score"] > 0]
    out = pos.head(n_selected(pos["score"].to_numpy(), top_k=top_k, top_p=top_p, threshold=threshold))
    return out[["text", "score", "n"]].reset_index(drop=True)


def describe_preferences(model: Model, words: "Sequence[str] | pd.DataFrame", prompt: str,
                         max_new_tokens: int = 48) -> str:
    """The model's one- or two-sentence description of a user from their preference words, asked
    with ``prompt`` (a ``{words}`` placeholder; a task's is :func:`describe_prompt`)."""
    if isinstance(words, pd.DataFrame):
        words = list(words["text"])
    words = [w for w in words if w]
    if not words:
        raise ValueError("no words to describe; select with a looser rule (larger top_k / top_p, lower threshold)")
    if "{words}" not in prompt:
        raise ValueError("the description prompt needs a {words} placeholder")
    text = model.generate(prompt.format(words=", ".join(words)), max_new_tokens=max_new_tokens)
    text = " ".join(text.split())
    # Keep whole sentences (generation may stop mid-sentence).
    cut = max(text.rfind("."), text.rfind("!"))
    return text[:cut + 1] if cut > 20 else text


def steerx_description(model: Model, history: Sequence[dict], user_id: str = "", *, task: str, n_traces: int = 2,
                       trace_k: int = 3, mode: str = "attn", positions: str = "history", contrast: bool = True,
                       top_k: int | None = 20, top_p: float | None = None, threshold: float | None = None,
                       prompt: str | None = None, cache: bool = True, progress: bool = False) -> PreferenceDescription:
    """Steps 1-2 of SteerX for one user: trace, select words, describe (cached on disk).

    ``history``: the user's items of ``task`` (e.g. :func:`workbench.data.history.user_history`);
    ``prompt``: the description prompt, by default the task's (:func:`describe_prompt`).

    ``mode`` is any :func:`workbench.science.tracing.trace_tokens` mode. The default stays the fast
    ``"attn"`` estimate: ``"verified"`` agrees better with exact deletion (Spearman 0.63 vs
    0.45, top-10 tokens 0.67 vs 0.44 at a quarter verified) but not enough for the bar set for
    it (top-10 >= 0.8 at <= 1/3 of exact's time), and it costs ~5x the estimate (README,
    "Fast, verified and exact token effects"); pass ``mode="verified"`` to pay for it.
    """
    steering_task(task)
    if prompt is None:
        prompt = describe_prompt(task)
    settings = {"task": task, "n_traces": n_traces, "trace_k": trace_k, "mode": mode, "positions": positions,
                "contrast": contrast, "top_k": top_k, "top_p": top_p, "threshold": threshold, "prompt": prompt}
    key = stable_hash([model.name, str(model.dtype), settings, history_key(history, task)])
    path = cache_file("steerx", model.name, f"descriptions/{user_id or 'user'}-{key}.json")

    def build() -> PreferenceDescription:
        return _describe(model, history, user_id, settings, progress)

    return cached(path, lambda p: PreferenceDescription.from_dict(json.loads(p.read_text())), build,
                  lambda out, p: atomic_write_text(p, json.dumps(out.to_dict())), enabled=cache)


def _describe(model: Model, history: Sequence[dict], user_id: str, settings: dict,
              progress: bool) -> PreferenceDescription:
    task, n_traces, trace_k, mode, positions, contrast, top_k, top_p, threshold, prompt = (
        settings[k] for k in ("task", "n_traces", "trace_k", "mode", "positions", "contrast", "top_k", "top_p",
                              "threshold", "prompt"))
    traces = trace_history(model, history, n=n_traces, k=trace_k, mode=mode, positions=positions,
                           contrast=contrast, progress=progress, task=task)
    # A trace has no generic output when the model wrote an empty one: then use plain effects.
    by = "diff" if contrast and all(t.has_generic for t in traces) else "effect"
    words = preference_words(traces, top_k=top_k, top_p=top_p, threshold=threshold, by=by)
    if words.empty:  # nothing raised the user's outputs more than the generic one: fall back to raw effects
        words = preference_words(traces, top_k=top_k or 20, by="effect")
    desc = describe_preferences(model, words, prompt=prompt)
    return PreferenceDescription(user_id, desc, words, prompt.format(words=", ".join(words["text"])),
                                 {**settings, "model": model.name}, traces)
