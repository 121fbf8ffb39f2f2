"""SteerX-style disentangled steering: steer with what the user's history *causes*, not all of it.

Personalization steering usually builds a vector from a user's whole history. SteerX
(Zhao et al., arXiv 2510.22256) argues that most history tokens do not express the user's
preferences, and builds the vector from the ones that do:

1. **Token causal effects** (:mod:`workbench.tracing`): for a few of the user's own items held
   out in turn (article -> the headline they wrote, the other items as history), the effect
   of every history token on the likelihood of that headline, minus its effect on the
   model's generic headline for the same article (difference in effects).
2. **Preference-driven tokens -> description**: the words with the largest effects are
   selected (top-k / top-p / threshold) and the model writes a short natural-language
   description of the user's preferences from them (:data:`DESCRIBE_PROMPT`, changeable).
3. **Steering vectors** on two backbones, each built from the description (SteerX) and from
   the ALL-history text (the baseline SteerX improves on):

   - ``caa``: contrastive activation addition — mean activation at one layer/site over the
     user's new inputs *with* the preference context minus *without* it;
   - ``opt``: a vector optimised with a few Adam steps, norm-bounded. ``opt-all`` raises the
     likelihood of the user's own history headlines given their articles; ``steerx-opt``
     makes the steered model (no context) match the model that reads the description (KL on
     the same headline tokens: context distillation of the description).

The paper's text was not available to us (see ``shared/research/methods.md`` §3): the
causal-effect estimator, the selection rule, the description prompt, the CAA contrast and
especially the ``steerx-opt`` target above are **our reading**, chosen so that each SteerX
method and its all-history twin differ only in where the preference signal comes from.

No gold output of an evaluated query is ever read: the history of a user is the set of
profile items shared by *all* of their queries (LaMP-4 profiles grow over time and a later
query's profile contains earlier queries' gold headlines), traced targets are the user's
own history headlines, and CAA averages over the new inputs (articles), never their gold.

Runner methods (``workbench bench --methods ...``): ``caa-all``, ``steerx-caa``, ``opt-all``,
``steerx-opt``. Per-user vectors and descriptions are cached under
``$WORKBENCH_CACHE/steerx/`` keyed by model, settings and history.
"""

from __future__ import annotations

import hashlib
import html as _html
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import torch

from workbench._reuse import run_from_layer
from workbench.methods import Method, register_method
from workbench.model import Model
from workbench.steering import SITES, Steer, steer

_FORMAT = "workbench.steering_vector/1"
# Where activations are read for each steering site: adding the difference read here at the
# site's steering hook moves this activation by exactly that difference.
_READ = {
    "resid_pre": "blocks.{layer}.hook_resid_pre",
    "resid_mid": "blocks.{layer}.hook_resid_mid",
    "resid_post": "blocks.{layer}.hook_resid_post",
    "attn_out": "blocks.{layer}.hook_attn_out",
    "mlp_out": "blocks.{layer}.hook_mlp_out",
}

DESCRIBE_PROMPT = (
    "Here are words that show how a user writes news headlines, most telling first:\n{words}\n\n"
    "In one or two sentences, describe this user's headline style and the topics they write about. "
    "Start with \"The user\"."
)
"""Prompt that turns the selected words into a description (``{words}``: comma-separated)."""

DESCRIPTION_CONTEXT = "You are writing news headlines for one particular user. {description}"
"""How a description is shown to the model (as the system message) for CAA and steerx-opt."""


# ---- the vector value object ----------------------------------------------------------------------

@dataclass
class SteeringVector:
    """A steering vector with where it goes and how it was made.

    ``vector`` (1-D, width ``d_model``), ``layer``, ``site`` (a :data:`workbench.steering.SITES`
    key), ``model`` (name it was built on), ``built`` (method and settings). Apply with
    ``with vec.apply(model, scale=4.0): model.generate(...)``.
    """

    vector: torch.Tensor
    layer: int
    site: str
    model: str
    built: dict = field(default_factory=dict)

    @property
    def norm(self) -> float:
        return float(self.vector.float().norm())

    def __repr__(self) -> str:
        how = self.built.get("method", "?")
        return (f"SteeringVector({how}, layer {self.layer} {self.site}, |v|={self.norm:.3g}, "
                f"d={self.vector.shape[-1]}, model={self.model!r})")

    def apply(self, model: Model, scale: float = 1.0, positions: Any = None) -> Steer:
        """``workbench.steer`` with this vector (a context manager); refuses another model."""
        self._check_model(model)
        return steer(model, self.vector, self.layer, site=self.site, scale=scale, positions=positions)

    def _check_model(self, model: Model) -> None:
        if model.name != self.model or model.d_model != self.vector.shape[-1]:
            raise ValueError(f"this vector was built on {self.model!r} (d_model={self.vector.shape[-1]}), not on "
                             f"{model.name!r} (d_model={model.d_model}); rebuild it for this model")

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the vector and its provenance (``torch.save``); refuses to replace a file."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it, or choose another path")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save({"format": _FORMAT, "vector": self.vector.detach().float().cpu(), "layer": self.layer,
                    "site": self.site, "model": self.model, "built": json.dumps(self.built)}, tmp)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path, model: "Model | str | None" = None) -> "SteeringVector":
        """Read a vector saved with :meth:`save`; with ``model``, refuse one built on another model."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist; build a vector with caa_vector / optimized_vector")
        d = torch.load(path, weights_only=True)
        if not isinstance(d, dict) or d.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a saved SteeringVector")
        vec = cls(d["vector"], int(d["layer"]), d["site"], d["model"], json.loads(d["built"]))
        if isinstance(model, str):
            if model != vec.model:
                raise ValueError(f"{path} holds a vector of {vec.model!r}, not of {model!r}; rebuild it for this model")
        elif model is not None:
            vec._check_model(model)
            vec.vector = vec.vector.to(model.device, model.dtype)
        return vec


# ---- a user's history -------------------------------------------------------------------------------

def user_history(examples: Sequence[Any]) -> list[dict]:
    """The profile items every one of ``examples`` (one user's queries) has, oldest first.

    LaMP-4 profiles grow with time: a later query's profile holds earlier queries' gold
    headlines, so the union would leak; the intersection never does.
    """
    if not examples:
        raise ValueError("no examples: pass the user's queries (e.g. dataset.by_user(user_id))")
    key = lambda it: (str(it.get("id", "")), it.get("title", ""))  # noqa: E731
    common = set(map(key, examples[0].profile))
    for ex in examples[1:]:
        common &= set(map(key, ex.profile))
    items = [it for it in examples[0].profile if key(it) in common and it.get("text") and it.get("title")]
    if not items:
        raise ValueError(f"user {examples[0].user_id}'s queries share no profile item with 'text' and 'title'")
    if all(it.get("date") for it in items):
        items = sorted(items, key=lambda it: str(it["date"]))
    return items


def _history_key(history: Sequence[dict]) -> list:
    return [(str(it.get("id", "")), it.get("title", "")) for it in history]


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _cache_dir() -> Path:
    from workbench._cache import cache_root

    return cache_root() / "steerx"


# ---- steps 1 and 2: preference-driven tokens -> description --------------------------------------------

@dataclass
class PreferenceDescription:
    """What SteerX distilled from a user's history: the selected words and the description.

    ``words``: DataFrame (``text``, ``score`` summed over traces, ``n``: how many traces
    selected it); ``description``: the model's text; ``prompt``: the prompt it answered;
    ``traces``: the :class:`~workbench.tracing.TokenEffects` (not saved in the cache).
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
                  progress: bool = False) -> list:
    """Token effects over a user's own history, leave-one-out.

    Each of the ``n`` most recent items is held out in turn: its article is the input, the
    headline the user wrote for it is the traced output, and the ``k`` other items most similar
    to it (BM25) are the history in the prompt. With ``contrast`` the model's own generic
    headline (no history, greedy) is traced too, for the difference in effects.
    """
    from workbench.data import Example
    from workbench.prompts import first_line, headline_prompt
    from workbench.tracing import trace_tokens
    from workbench.data import rank_profile

    if len(history) < 2:
        raise ValueError("tracing leave-one-out needs at least two history items")
    traces = []
    for j in range(len(history) - 1, max(-1, len(history) - 1 - n), -1):
        held, rest = history[j], [it for i, it in enumerate(history) if i != j]
        pseudo = Example(id=f"history-{held.get('id', j)}", user_id="", task="lamp4", input=held["text"],
                         profile=tuple(rest), gold=held["title"])
        shown = list(reversed(rank_profile(pseudo, k=k, by="bm25")))  # best match closest to the question
        prompt = headline_prompt(model, held["text"], shown)
        generic = None
        if contrast:
            generic = first_line(model.generate(headline_prompt(model, held["text"]), max_new_tokens=max_new_tokens))
            generic = generic or None
        traces.append(trace_tokens(model, prompt, held["title"], items=shown, positions=positions, mode=mode,
                                   generic_target=generic, progress=progress))
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
    given = [x is not None for x in (top_k, top_p, threshold)]
    if sum(given) != 1:
        raise ValueError("give exactly one selection rule: top_k=..., top_p=... or threshold=... (set the others to None)")
    if top_k is not None:
        out = pos.head(int(top_k))
    elif top_p is not None:
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p={top_p} must be in (0, 1]")
        share = pos["score"].cumsum() / max(pos["score"].sum(), 1e-12)
        out = pos.head(int(np.searchsorted(share.to_numpy(), top_p - 1e-12) + 1))
    else:
        out = pos[pos["score"] >= threshold]
    return out[["text", "score", "n"]].reset_index(drop=True)


def describe_preferences(model: Model, words: "Sequence[str] | pd.DataFrame", prompt: str = DESCRIBE_PROMPT,
                         max_new_tokens: int = 48) -> str:
    """The model's one- or two-sentence description of a user from their preference words."""
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


def steerx_description(model: Model, history: Sequence[dict], user_id: str = "", *, n_traces: int = 2,
                       trace_k: int = 3, mode: str = "attn", positions: str = "history", contrast: bool = True,
                       top_k: int | None = 20, top_p: float | None = None, threshold: float | None = None,
                       prompt: str = DESCRIBE_PROMPT, cache: bool = True, progress: bool = False) -> PreferenceDescription:
    """Steps 1-2 of SteerX for one user: trace, select words, describe (cached on disk)."""
    settings = {"n_traces": n_traces, "trace_k": trace_k, "mode": mode, "positions": positions,
                "contrast": contrast, "top_k": top_k, "top_p": top_p, "threshold": threshold, "prompt": prompt}
    key = _hash([model.name, str(model.dtype), settings, _history_key(history)])
    path = _cache_dir() / model.name.replace("/", "_") / "descriptions" / f"{user_id or 'user'}-{key}.json"
    if cache and path.exists():
        try:
            return PreferenceDescription.from_dict(json.loads(path.read_text()))
        except (KeyError, ValueError):
            path.unlink()
    traces = trace_history(model, history, n=n_traces, k=trace_k, mode=mode, positions=positions,
                           contrast=contrast, progress=progress)
    # A trace has no generic output when the model wrote an empty one: then use plain effects.
    by = "diff" if contrast and all(t.has_generic for t in traces) else "effect"
    words = preference_words(traces, top_k=top_k, top_p=top_p, threshold=threshold, by=by)
    if words.empty:  # nothing raised the user's headlines more than the generic one: fall back to raw effects
        words = preference_words(traces, top_k=top_k or 20, by="effect")
    desc = describe_preferences(model, words, prompt=prompt)
    out = PreferenceDescription(user_id, desc, words, prompt.format(words=", ".join(words["text"])),
                                {**settings, "model": model.name}, traces)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(out.to_dict()))
        tmp.replace(path)
    return out


# ---- step 3a: contrastive activation addition ----------------------------------------------------------

def _check_site(model: Model, layers: Sequence[int], site: str) -> None:
    if site not in SITES:
        raise ValueError(f"site={site!r} is not a steering site; use one of {list(SITES)}")
    for L in layers:
        if not isinstance(L, int) or not 0 <= L < model.n_layers:
            raise ValueError(f"layer {L!r} is out of range: {model.name!r} has layers 0..{model.n_layers - 1}")


def preference_context(model: Model, preference: "str | Sequence[dict]", article: str) -> Any:
    """The prompt for ``article`` with a preference context: a description (``str``, shown as
    the system message) or history items (shown as earlier chat turns, like ``rag``)."""
    from workbench.prompts import headline_prompt

    if isinstance(preference, str):
        context = DESCRIPTION_CONTEXT.format(description=preference)
        if model.has_chat_template:
            return [{"role": "system", "content": context}] + headline_prompt(model, article)
        return f"{context}\n\n" + headline_prompt(model, article)
    return headline_prompt(model, article, list(preference))


def _encode_with_system(model: Model, prompt: Any) -> torch.Tensor:
    if isinstance(prompt, list) and prompt and prompt[0].get("role") == "system":
        text = model.format_chat(prompt[1:], system=prompt[0]["content"])
        return model.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids.to(model.device)
    return model.encode(prompt)


def _common_suffix(a: torch.Tensor, b: torch.Tensor) -> int:
    n = min(a.shape[-1], b.shape[-1]) - 1  # never the first token
    m = 0
    while m < n and int(a[0, -1 - m]) == int(b[0, -1 - m]):
        m += 1
    return m


@torch.no_grad()
def _suffix_means(model: Model, seqs: list[torch.Tensor], suffix_lens: list[int], layers: Sequence[int],
                  site: str) -> dict[int, torch.Tensor]:
    """Mean activation over the last ``suffix_lens[i]`` positions of each sequence, per layer;
    the longest prefix all sequences share is run once and its KV cache reused."""
    from workbench.tracing import _slice_hook, _truncate

    names = {L: _READ[site].format(layer=L) for L in layers}
    shared = min(s.shape[-1] for s in seqs)
    for s in seqs[1:]:
        eq = (s[0, :shared] == seqs[0][0, :shared]).int()
        shared = int(eq.cumprod(0).sum())
    shared = min(shared, min(s.shape[-1] - m for s, m in zip(seqs, suffix_lens)))
    cache = None
    if shared > 0:
        _, cache = model.bridge(seqs[0][:, :shared], return_type="logits_and_cache")
    sums = {L: torch.zeros(model.d_model, dtype=torch.float32, device=model.device) for L in layers}
    for s, m in zip(seqs, suffix_lens):
        got: dict[int, torch.Tensor] = {}

        def keep(L: int, m: int = m):
            def fn(x: torch.Tensor, hook: Any) -> None:
                got[L] = x[0, -m:].float().mean(0)
            return fn

        hooks = [(names[L], keep(L)) for L in layers] + [_slice_hook(model, s.shape[-1] - shared - 1, 1)]
        if cache is not None:
            model.bridge.run_with_hooks(s[:, shared:], past_key_values=cache, fwd_hooks=hooks)
            _truncate(cache, shared)
        else:
            model.bridge.run_with_hooks(s, fwd_hooks=hooks)
        for L in layers:
            sums[L] += got[L]
    return {L: v / len(seqs) for L, v in sums.items()}


def caa_vectors(model: Model, preference: "str | Sequence[dict]", articles: Sequence[str], layers: Sequence[int],
                site: str = "resid_post", built: dict | None = None) -> dict[int, SteeringVector]:
    """CAA vectors at several layers: mean activation over the new input's tokens (the last
    user turn and the assistant header) with the preference context, minus without it.

    ``preference``: a description (str) or the history items (ALL-history baseline).
    ``articles``: the inputs to average over (e.g. the user's new articles).
    """
    layers = list(layers)
    _check_site(model, layers, site)
    articles = [a for a in articles if a]
    if not articles:
        raise ValueError("no articles to average activations over")
    from workbench.prompts import headline_prompt

    pos, neg, m = [], [], []
    for a in articles:
        p = _encode_with_system(model, preference_context(model, preference, a))
        q = model.encode(headline_prompt(model, a))
        model.check_fits(p.shape[-1], what="preference context plus article")
        k = _common_suffix(p, q)
        if k == 0:
            raise ValueError("the prompts with and without the preference share no final tokens; "
                             "CAA needs the same input after the context")
        pos.append(p)
        neg.append(q)
        m.append(k)
    mp = _suffix_means(model, pos, m, layers, site)
    mn = _suffix_means(model, neg, m, layers, site)
    info = {"method": "caa", "site": site, "n_articles": len(articles),
            "preference": preference if isinstance(preference, str) else f"{len(preference)} history items",
            **(built or {})}
    return {L: SteeringVector((mp[L] - mn[L]).to(model.dtype), L, site, model.name, {**info, "layer": L})
            for L in layers}


# ---- step 3b: optimised vector ----------------------------------------------------------------------

def _pad(seqs: list[torch.Tensor], pad: int) -> torch.Tensor:
    n = max(s.shape[-1] for s in seqs)
    out = torch.full((len(seqs), n), pad, dtype=seqs[0].dtype, device=seqs[0].device)
    for i, s in enumerate(seqs):
        out[i, : s.shape[-1]] = s[0]
    return out


def optimized_vector(model: Model, items: Sequence[dict], layer: int, site: str = "resid_post", *,
                     description: str | None = None, steps: int = 12, radius: float = 0.5, lr: float | None = None,
                     seed: int = 0, built: dict | None = None) -> SteeringVector:
    """A vector at ``layer``/``site`` fitted with Adam to the user's history items.

    Without ``description`` (ALL-history): maximise the mean log-likelihood of each item's
    headline given its article (generic prompt, steered). With ``description`` (SteerX): on
    the same headline tokens, minimise KL(model reading the description || steered model
    without it) — the vector learns what the description does. After each step the vector is
    projected onto the ball of radius ``radius`` x the median residual-stream norm at that
    layer. Prompts are right-padded into one batch; padding follows the real tokens so it
    never affects them under causal attention.
    """
    from workbench.prompts import headline_prompt

    _check_site(model, [layer], site)
    items = [it for it in items if it.get("text") and it.get("title")]
    if not items:
        raise ValueError("no history items with 'text' and 'title' to fit the vector to")
    if steps < 1:
        raise ValueError(f"steps={steps} must be >= 1")
    bridge = model.bridge
    seqs, spans, teach = [], [], []
    for it in items:
        ids, start = model.prompt_and_target(headline_prompt(model, it["text"]), it["title"])
        seqs.append(ids)
        spans.append((start, ids.shape[-1]))
    batch = _pad(seqs, int(model.tokenizer.pad_token_id or 0))
    rows = torch.cat([torch.full((e - s,), i) for i, (s, e) in enumerate(spans)]).to(model.device)
    cols = torch.cat([torch.arange(s - 1, e - 1) for s, e in spans]).to(model.device)
    tgt = torch.cat([seqs[i][0, s:e] for i, (s, e) in enumerate(spans)])
    read = _READ[site].format(layer=layer)
    with torch.no_grad():
        got: dict[str, torch.Tensor] = {}

        def store(x: torch.Tensor, hook: Any) -> None:
            got["acts"] = x.detach()

        # run_with_hooks, not run_with_cache: TL 4.3's run_with_cache leaves torch hook handles behind.
        bridge.run_with_hooks(batch, fwd_hooks=[(read, store)])
        acts = got["acts"]
        valid = torch.zeros(batch.shape, dtype=torch.bool, device=batch.device)
        for i, (s, e) in enumerate(spans):
            valid[i, 1:e] = True  # the first token's residual norm is an outlier
        typical = float(acts.float().norm(dim=-1)[valid].median())
        if description is not None:
            for it, (s, e) in zip(items, spans):
                ctx = _encode_with_system(model, preference_context(model, description, it["text"]))
                t = model.tokenizer(it["title"], add_special_tokens=False, return_tensors="pt").input_ids.to(model.device)
                full = torch.cat([ctx, t], dim=1)
                c0 = ctx.shape[-1]
                teach.append(bridge(full)[0, c0 - 1:full.shape[-1] - 1].float().log_softmax(-1))
            teacher = torch.cat(teach)
    bound = radius * typical
    if lr is None:
        lr = 0.3 * bound / math.sqrt(model.d_model)
    g = torch.Generator().manual_seed(seed)
    v = (1e-3 * bound * torch.randn(model.d_model, generator=g) / math.sqrt(model.d_model)).to(model.device)
    v = v.float().requires_grad_(True)
    opt = torch.optim.Adam([v], lr=lr)
    hook_name = SITES[site].format(layer=layer)
    # The vector cannot change anything below where it is added, so for residual-stream sites
    # the stream entering the next block is computed once and each step runs only the blocks
    # above (about half the forward and backward work at the middle layer).
    start = {"resid_pre": layer, "resid_post": layer + 1}.get(site)
    reuse = start is not None and start < model.n_layers
    params = [p for p in bridge.parameters() if p.requires_grad]
    losses = []
    try:
        for p in params:
            p.requires_grad_(False)
        def add(x: torch.Tensor, hook: Any) -> torch.Tensor:
            return x + v.to(x.dtype)

        for _ in range(steps):
            opt.zero_grad()
            with torch.enable_grad():
                if reuse:
                    logits = run_from_layer(bridge, acts + v.to(acts.dtype), start)
                else:
                    logits = bridge.run_with_hooks(batch, fwd_hooks=[(hook_name, add)])
                lp = logits[rows, cols].float().log_softmax(-1)
                if description is None:
                    loss = -lp.gather(-1, tgt[:, None]).mean()
                else:
                    loss = (teacher.exp() * (teacher - lp)).sum(-1).mean()
                loss.backward()
            opt.step()
            with torch.no_grad():
                n = v.norm()
                if n > bound:
                    v.mul_(bound / n)
            losses.append(round(float(loss.detach()), 4))
    finally:
        for p in params:
            p.requires_grad_(True)
    info = {"method": "opt", "target": "description KL" if description is not None else "history headlines",
            "steps": steps, "radius": radius, "lr": lr, "typical_norm": round(typical, 3), "n_items": len(items),
            "losses": losses, "layer": layer, **(built or {})}
    return SteeringVector(v.detach().to(model.dtype), layer, site, model.name, info)


# ---- runner methods ---------------------------------------------------------------------------------------

@dataclass
class _SteeringMethod(Method):
    """Shared by the four steering methods: per-user vector, applied while generating."""

    uses_profile = True
    backbone = "caa"
    source = "all"
    layer: int | None = None  # None: the middle layer
    site: str = "resid_post"
    scale: float = 1.0  # 1 = the activation shift the context itself causes (caa) / the fitted vector (opt)
    on: str = "rag"  # the prompt steered: "rag" (history in context) or "generic"
    max_history_tokens: int = 1536  # ALL-history context for caa-all (most recent items that fit)
    n_articles: int = 4  # caa: inputs averaged over
    opt_items: int = 8  # opt: history items fitted
    opt_steps: int = 12
    opt_radius: float = 0.25  # x the median residual norm; 0.5 garbled headlines on SmolLM2 (3-query smoke run)
    cache: bool = True

    def _layer(self, model: Model) -> int:
        return model.n_layers // 2 if self.layer is None else int(self.layer)

    def _scale(self) -> float:
        return float(self.scale)

    def describe(self) -> dict:
        d = {**super().describe(), "backbone": self.backbone, "source": self.source, "layer": self.layer,
             "site": self.site, "scale": self._scale(), "on": self.on}
        if self.backbone == "caa":
            d.update(n_articles=self.n_articles, max_history_tokens=self.max_history_tokens)
        else:
            d.update(opt_items=self.opt_items, opt_steps=self.opt_steps, opt_radius=self.opt_radius)
        return d

    def _vector_settings(self) -> dict:
        d = self.describe()
        for k in ("scale", "on", "max_new_tokens", "k", "retrieval", "name"):
            d.pop(k, None)
        return d

    def _context_history(self, model: Model, history: list[dict]) -> list[dict]:
        """The most recent history items whose turns fit in ``max_history_tokens``."""
        from workbench.prompts import headline_prompt

        kept: list[dict] = []
        for it in reversed(history):
            trial = [it] + kept
            if model.encode(headline_prompt(model, "x", trial)).shape[-1] > self.max_history_tokens and kept:
                break
            kept = trial
        return kept

    def preference(self, model: Model, user_id: str, history: list[dict]) -> Any:
        return None

    def build(self, model: Model, user_id: str, history: list[dict], articles: list[str]) -> SteeringVector:
        layer = self._layer(model)
        pref = self.preference(model, user_id, history)
        built = {"user": user_id, "source": self.source, "method": self.name}
        if isinstance(pref, PreferenceDescription):
            built["description"] = pref.description
        if self.backbone == "caa":
            ctx = pref.description if isinstance(pref, PreferenceDescription) else self._context_history(model, history)
            return caa_vectors(model, ctx, articles[: self.n_articles], [layer], self.site, built=built)[layer]
        desc = pref.description if isinstance(pref, PreferenceDescription) else None
        return optimized_vector(model, history[-self.opt_items:], layer, self.site, description=desc,
                                steps=self.opt_steps, radius=self.opt_radius, built=built)

    def prepare_user(self, model: Model, user_id: str, examples: list) -> Any:
        from workbench.prompts import task_text

        history = user_history(examples)
        articles = [task_text(ex) for ex in examples]
        key = _hash([model.name, str(model.dtype), self._vector_settings(), _history_key(history),
                     articles[: self.n_articles] if self.backbone == "caa" else None])
        path = _cache_dir() / model.name.replace("/", "_") / "vectors" / f"{self.name}-{user_id}-{key}.pt"
        if self.cache and path.exists():
            try:
                return SteeringVector.load(path, model=model)
            except (ValueError, RuntimeError, KeyError):
                path.unlink()
        vec = self.build(model, user_id, history, articles)
        if self.cache:
            vec.save(path, overwrite=True)
        return vec

    def steered_prompt(self, model: Model, example: Any) -> tuple[Any, dict]:
        """The prompt the vector steers (``on``: the rag prompt or the article alone) and its facts."""
        from workbench.prompts import build_prompt

        if self.on not in ("rag", "generic"):
            raise ValueError(f"on={self.on!r}: use 'rag' (steer the prompt with the history) or 'generic'")
        if self.on == "rag":
            return self.prompt(model, example)
        return build_prompt(model, example, k=0, reserve=self.settings.max_new_tokens)

    @staticmethod
    def vector_info(state: SteeringVector) -> dict:
        """What to record with each output about the vector that steered it."""
        info = {"vector_norm": state.norm, "layer": state.layer}
        if "description" in state.built:
            info["description"] = state.built["description"]
        return info

    def generate(self, model: Model, example: Any, state: SteeringVector) -> tuple[str, dict]:
        from workbench.prompts import first_line

        prompt, info = self.steered_prompt(model, example)
        with state.apply(model, scale=self._scale()):
            text = model.generate(prompt, max_new_tokens=self.settings.max_new_tokens)
        return first_line(text), {**info, **self.vector_info(state)}


@dataclass
class _SteerX(_SteeringMethod):
    source = "steerx"
    n_traces: int = 2
    trace_k: int = 3
    trace_mode: str = "attn"
    top_k: int = 20
    contrast: bool = True

    def describe(self) -> dict:
        return {**super().describe(), "n_traces": self.n_traces, "trace_k": self.trace_k,
                "trace_mode": self.trace_mode, "top_k": self.top_k, "contrast": self.contrast,
                "describe_prompt": DESCRIBE_PROMPT}

    def preference(self, model: Model, user_id: str, history: list[dict]) -> PreferenceDescription:
        return steerx_description(model, history, user_id, n_traces=self.n_traces, trace_k=self.trace_k,
                                  mode=self.trace_mode, contrast=self.contrast, top_k=self.top_k, cache=self.cache)


@register_method
@dataclass
class CaaAll(_SteeringMethod):
    """CAA vector from the ALL-history context (chat turns) vs none, added while generating."""

    name = "caa-all"
    backbone = "caa"
    source = "all"


@register_method
@dataclass
class SteerxCaa(_SteerX):
    """CAA vector from the SteerX description vs none (same articles, layer, site, scale as caa-all)."""

    name = "steerx-caa"
    backbone = "caa"


@register_method
@dataclass
class OptAll(_SteeringMethod):
    """Norm-bounded vector fitted to the user's history headlines (Adam), added while generating."""

    name = "opt-all"
    backbone = "opt"
    source = "all"


@register_method
@dataclass
class SteerxOpt(_SteerX):
    """Norm-bounded vector fitted to reproduce the SteerX description's effect (same items as opt-all)."""

    name = "steerx-opt"
    backbone = "opt"


# ---- choosing layer and scale on a dev split ----------------------------------------------------------

def dev_split(dataset: Iterable[Any], n_users: int = 8, seed: int = 0) -> list:
    """Leak-free dev examples: for each of ``n_users`` users, their most recent shared history
    item becomes a query (article -> their headline) with the older items as the profile."""
    from workbench.data import Example

    by_user: dict[str, list] = {}
    for ex in dataset:
        by_user.setdefault(ex.user_id, []).append(ex)
    users = sorted(u for u, exs in by_user.items() if len(user_history(exs)) >= 3)
    rng = np.random.default_rng(seed)
    pick = sorted(rng.choice(len(users), size=min(n_users, len(users)), replace=False))
    out = []
    for i in pick:
        uid = users[i]
        hist = user_history(by_user[uid])
        held = hist[-1]
        out.append(Example(id=f"{uid}/dev-{held.get('id')}", user_id=uid, task="lamp4", input=held["text"],
                           profile=tuple(hist[:-1]), gold=held["title"]))
    return out


def sweep(model: Model, method: "str | _SteeringMethod", examples: Sequence[Any], layers: Sequence[int],
          scales: Sequence[float], metric: str = "rougeL", progress: bool = True) -> pd.DataFrame:
    """Score ``method`` on ``examples`` (e.g. :func:`dev_split`) for every layer x scale.

    Vectors are built once per user and layer; each scale only re-generates. Returns one row
    per (layer, scale) with the mean metric, best first; ``df.attrs["best"]`` is the winning
    ``{"layer", "scale"}``.
    """
    from tqdm.auto import tqdm

    from workbench.methods import GenerationSettings, make_methods
    from workbench.metrics import score_generation

    m = make_methods([method], GenerationSettings())[0] if isinstance(method, str) else method
    if not isinstance(m, _SteeringMethod):
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


# ---- demo report ------------------------------------------------------------------------------------------

def report_section(model: Model, example_user: dict | None = None) -> tuple[str, str]:
    """``(title, html)`` for ``workbench demo``: token effects over the example user's history,
    the selected words, the SteerX description and steered vs generic outputs."""
    import plotly.io as pio

    from workbench.examples import EXAMPLE_USER
    from workbench.prompts import first_line, headline_prompt
    from workbench.tracing import trace_example

    user = example_user or EXAMPLE_USER
    history = list(user["profile"])
    te = trace_example(model, user, generic=True, mode="attn", progress=False)
    words = te.select(top_k=12, level="word")
    desc = steerx_description(model, history, str(user.get("user_id", "example")), progress=False)
    layer = model.n_layers // 2
    vec = caa_vectors(model, desc.description, [user["query"]], [layer])[layer]
    generic = first_line(model.generate(headline_prompt(model, user["query"]), max_new_tokens=32))
    rag_prompt = headline_prompt(model, user["query"], history)
    rag = first_line(model.generate(rag_prompt, max_new_tokens=32))
    with vec.apply(model, scale=1.0):
        steered = first_line(model.generate(rag_prompt, max_new_tokens=32))
    out = pd.DataFrame([{"output": "generic (article only)", "headline": generic},
                        {"output": "rag (history in the prompt)", "headline": rag},
                        {"output": f"rag + steerx-caa (layer {layer}, scale 1)", "headline": steered},
                        {"output": "the user's real headline", "headline": user.get("gold", "")}])
    esc = _html.escape
    parts = [
        "<p>Which words of the user's history make the model write <i>this user's</i> headline? Each history "
        "token is scored by how much the log-likelihood of the user's real headline drops when the token is "
        "deleted, minus the same for the model's generic headline (fast gate-gradient estimate, "
        f"{esc(te.meta['mode'])}; red = the token pushes towards the user's headline). "
        "SteerX keeps the top words, has the model describe the user from them, and steers with a vector "
        "built from that description instead of the whole history (our reading of arXiv 2510.22256).</p>",
        te.html(by="diff", selected=words),
        pio.to_html(te.figure(by="diff"), full_html=False, include_plotlyjs=False),
        f"<p><b>Selected words</b>: {esc(', '.join(words['text']))}</p>",
        f"<p><b>SteerX description</b> (from leave-one-out traces of the history): {esc(desc.description)}</p>",
        out.to_html(index=False, border=0, escape=True),
    ]
    return "Token effects and SteerX steering", "\n".join(parts)
