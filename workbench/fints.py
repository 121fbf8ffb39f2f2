"""Fints: fine-grained, instance-tailored steering (Du et al., arXiv 2510.27206).

Instead of one steering vector per user, Fints keeps one vector per *history item* and,
for each new input, mixes the vectors of the items most relevant to it:

1. **Contrastive pairs** (:func:`contrastive_pairs`). For each of the user's history items
   (LaMP-4: an earlier article and the user's own headline for it) the prompt is the
   headline prompt for that article with ``n_others`` items of *other* users as earlier chat
   turns (the authors' "others" mode). Positive = the user's headline; negative = what the
   model writes for that prompt (greedy). A pair is kept only if ROUGE-L(negative, positive)
   < ``threshold`` (0.15): the model's own guess must really differ from the user's.
2. **Sample-level vectors** (:func:`sample_vectors`). For each kept pair, the mean over the
   response tokens of activation(prompt + positive) - activation(prompt + negative) at one
   layer, separately at the attention output and at the MLP output.
3. **Input-aware aggregation** (:func:`aggregate`). Score the items against the new input
   (BM25), take the top ``k`` (5) and mix their vectors with weights softmax(score / tau)
   (tau = 0.1) or uniformly: one attention vector and one MLP vector for this input.
4. **Injection** (:func:`fints_steer`). Add ``scale`` times them at the attention and MLP
   outputs of that layer, at every position, through :func:`workbench.steer`.

Choices that are ours, not the authors' (their code is documented in
``shared/research/methods.md`` §2):

- *Sites.* ``attn_site="attn_out"`` is what the paper describes. The authors' code, because
  of an in-place addition in its recording wrapper, actually records the residual stream
  after attention (``resid_mid`` = resid_pre + attn_out); ``attn_site="resid_mid"``
  reproduces that. ``mlp_site`` is ``"mlp_out"`` or ``"resid_post"`` (the block output, the
  authors' ``whole``). Injection goes to the same site the vector was read at.
- *Scores.* BM25 instead of contriever (no embedding model offline here); BM25 scores are
  divided by the best one before the softmax so that tau acts on a 0-1 scale, as contriever's
  dot products roughly do (raw BM25 / 0.1 would be one-hot). Any ``scorer(query, docs)`` can
  be passed instead.
- *User mean.* The user-level baseline (``caa-user``) averages one user's vectors; the
  authors' ``train.py`` accumulates pairs across users (a bug), we do not.
- *Cost.* Negatives need one generation per item, so each user gets at most ``max_items``
  (8) items: by default the union of each of the user's queries' BM25 top items (exactly the
  items the aggregation can pick), else the most recent ones.
- *Leakage.* LaMP profiles grow over time, so a later query's profile can hold an earlier
  query's article and gold headline. Vectors are built per item, and each query only ever
  uses items of its own profile.

Example::

    pairs = contrastive_pairs(model, user_examples, others=dataset)    # cached on disk
    vecs = sample_vectors(model, pairs, layer=22)
    agg = aggregate(vecs, example, k=5)          # agg.picked: items, scores, weights
    with fints_steer(model, agg, scale=1.0):
        print(model.generate(prompt))
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import random
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import torch

from workbench.methods import Method, register_method
from workbench.model import Model
from workbench.steering import steer

# How these were chosen (benchmarks/fints_sweep.py, SmolLM2-135M, 3 leave-one-out history
# items of 3 users, never the dev queries): every steered setting made the user's own headline
# *less* likely on average (teacher-forced NLL), least so at scale 1 (+0.006..+0.14 nats per
# token at layers 4-26; scale 2: +0.06..+0.62; scale 4: +0.3..+1.7). So scale 1, the authors'
# c; the layers are not distinguishable at scale 1 on 3 examples, so the layer is the authors'
# relative depth (23 of 32 -> 22 of 30). Other models get the same relative depth.
DEFAULT_LAYER = 22  # of SmolLM2's 30
DEFAULT_SCALE = 1.0
_DEFAULT_DEPTH = DEFAULT_LAYER / 30


def default_layer(model: Model) -> int:
    """The default steering layer: 22 of SmolLM2's 30 (the authors' 23 of 32), the same relative depth elsewhere."""
    return min(model.n_layers - 1, round(_DEFAULT_DEPTH * model.n_layers))

ATTN_SITES = ("attn_out", "resid_mid")
MLP_SITES = ("mlp_out", "resid_post")
_PAIR_FORMAT = 1  # bump when the prompt or the negative generation changes (cache key)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(text))[:80]


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _item_id(item: dict) -> str:
    # Items without an id get one from their content, so it is the same in every profile.
    if item.get("id") is not None:
        return str(item["id"])
    return "item-" + _sha([item.get("text"), item.get("title")])[:10]


def _check_sites(attn_site: str, mlp_site: str) -> None:
    if attn_site not in ATTN_SITES:
        raise ValueError(f"attn_site={attn_site!r}: use 'attn_out' (the paper) or 'resid_mid' (the authors' code)")
    if mlp_site not in MLP_SITES:
        raise ValueError(f"mlp_site={mlp_site!r}: use 'mlp_out' or 'resid_post' (the block output)")


# ---- 1. contrastive pairs -----------------------------------------------------------------

def _is_example(x: Any) -> bool:
    return hasattr(x, "profile") and hasattr(x, "input")


def _history_items(history: Any) -> tuple[list[dict], list[Any], str | None]:
    """(items, examples, user_id) from an Example, a list of Examples or a list of item dicts."""
    if _is_example(history):
        history = [history]
    history = list(history)
    if not history:
        raise ValueError("history is empty; pass a user's Example(s) or a list of profile items {'text', 'title'}")
    if all(_is_example(h) for h in history):
        users = {ex.user_id for ex in history}
        if len(users) > 1:
            raise ValueError(f"history mixes users {sorted(users)}; build pairs one user at a time")
        items: dict[str, dict] = {}
        for ex in history:
            for it in ex.profile:
                items.setdefault(_item_id(it), it)
        return list(items.values()), history, history[0].user_id
    if not all(isinstance(h, dict) for h in history):
        raise ValueError("history must be an Example, a list of Examples of one user, or a list of profile item dicts")
    return history, [], None


def _usable(item: dict) -> bool:
    return bool(str(item.get("text", "")).strip()) and bool(str(item.get("title", "")).strip())


def select_items(history: Any, max_items: int = 8, by: str = "query", k: int = 5) -> list[dict]:
    """Which of a user's history items get vectors (each costs one generation).

    ``by="query"`` (needs Examples): round-robin over the user's queries, each query's BM25
    top-``k`` items of its own profile, until ``max_items`` — the items the aggregation can
    pick. ``by="recent"``: the ``max_items`` newest items (by date, else list position).
    """
    from workbench.data import _recency_order, rank_profile

    items, examples, _ = _history_items(history)
    items = [it for it in items if _usable(it)]
    if max_items is not None and max_items < 1:
        raise ValueError(f"max_items must be >= 1 (or None for all items), got {max_items}")
    if by == "recent":
        return [items[j] for j in _recency_order(items)[: max_items or len(items)]]
    if by != "query":
        raise ValueError(f"by={by!r}: use 'query' (the queries' BM25 top items) or 'recent'")
    if not examples:
        raise ValueError("by='query' needs the user's Examples (their inputs are the queries); "
                         "with a list of profile items use by='recent'")
    rankings = [[it for it in rank_profile(ex, k=max(k, max_items or k)) if _usable(it)] for ex in examples]
    chosen: dict[str, dict] = {}
    limit = max_items or sum(len(r) for r in rankings)
    for depth in range(max(len(r) for r in rankings)):
        for r in rankings:
            if depth < len(r) and len(chosen) < limit:
                chosen.setdefault(_sha([r[depth].get("text"), r[depth].get("title")]), r[depth])
    return list(chosen.values())


def _others_pool(others: Any, exclude_user: str | None) -> list[dict]:
    if others is None:
        return []
    pool: dict[str, dict] = {}
    for x in others:
        if _is_example(x):
            if exclude_user is not None and x.user_id == exclude_user:
                continue
            for it in x.profile:
                if _usable(it):
                    pool.setdefault(_sha([it["text"], it["title"]]), it)
        elif isinstance(x, dict):
            if _usable(x):
                pool.setdefault(_sha([x["text"], x["title"]]), x)
        else:
            raise ValueError("others must be a Dataset/list of Examples or a list of profile item dicts")
    return list(pool.values())


class _PairCache:
    """Per-user JSON file of generated negatives, keyed by everything that determines them."""

    def __init__(self, model: Model, user_id: str, enabled: bool):
        from workbench._cache import cache_root

        self.enabled = enabled
        self.model_name = model.name
        self.path = cache_root() / "fints" / "pairs" / f"{_slug(model.name)}--{_slug(user_id)}.json"
        self.records: dict[str, dict] = {}
        self.dirty = False
        if enabled and self.path.exists():
            try:
                data = json.loads(self.path.read_text())
            except (OSError, json.JSONDecodeError):
                data = {}  # damaged: regenerate rather than trust it
            if data.get("model") == model.name and data.get("format") == _PAIR_FORMAT:
                self.records = data.get("records", {})

    def get(self, key: str) -> dict | None:
        return self.records.get(key) if self.enabled else None

    def put(self, key: str, rec: dict) -> None:
        self.records[key] = rec
        self.dirty = True

    def save(self) -> None:
        if not (self.enabled and self.dirty):
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"model": self.model_name, "format": _PAIR_FORMAT, "records": self.records}, f, ensure_ascii=False)
        os.replace(tmp, self.path)  # a reader never sees half a file
        self.dirty = False


def contrastive_pairs(
    model: Model,
    history: Any,
    others: Any,
    *,
    max_items: int | None = 8,
    select: str | None = None,
    n_others: int = 5,
    threshold: float = 0.15,
    max_new_tokens: int = 24,
    seed: int = 0,
    user_id: str | None = None,
    cache: bool = True,
    progress: bool = False,
) -> pd.DataFrame:
    """Positive/negative headline pairs for a user's history items.

    Args:
        model: the model that writes the negatives (and later reads the activations).
        history: the user's :class:`~workbench.data.Example` (its profile), a list of one
            user's Examples (the union of their profiles), or a list of item dicts with
            ``text`` and ``title``.
        others: other users' items for the negatives' prompts: a Dataset or list of Examples
            (the history's own user is left out) or a list of item dicts.
        max_items, select: at most this many items, chosen by :func:`select_items`:
            ``"query"`` (the default for Examples) or ``"recent"`` (the default for item
            dicts); ``max_items=None`` keeps all.
        n_others: other users' items shown as earlier chat turns (the authors use 5); which
            ones is a deterministic function of ``seed`` and the item.
        threshold: keep a pair only if ROUGE-L F(negative, positive) < threshold.
        max_new_tokens: length limit of a negative (its first line is kept).
        cache: read and write generated negatives under ``$WORKBENCH_CACHE/fints/pairs``,
            one file per model and user, keyed by model, settings and item contents.

    Returns:
        A DataFrame, one row per item: ``item_id, text, positive, negative, rougeL, kept,
        others`` (ids of the other users' items) and ``prompt`` (what the model saw);
        ``df.attrs`` records the model, user and settings.
    """
    from tqdm.auto import tqdm

    from workbench.metrics import _rouge
    from workbench.prompts import first_line, headline_prompt

    if not threshold >= 0:
        raise ValueError(f"threshold={threshold} is a ROUGE-L F limit; use a number >= 0 (the authors use 0.15)")
    if n_others < 0:
        raise ValueError(f"n_others must be >= 0, got {n_others}")
    all_items, examples, uid = _history_items(history)
    uid = str(user_id or uid or "user-" + _sha([[it.get("text"), it.get("title")] for it in all_items])[:12])
    select = select or ("query" if examples else "recent")
    items = select_items(history, max_items=max_items, by=select)
    if not items:
        raise ValueError(f"user {uid} has no history item with both 'text' and 'title'; Fints needs some")
    pool = _others_pool(others, exclude_user=uid if examples else None)
    own = {_sha([it["text"], it["title"]]) for it in all_items if _usable(it)}
    pool = [it for it in pool if _sha([it["text"], it["title"]]) not in own]
    if n_others > 0 and len(pool) < n_others:
        raise ValueError(f"others has {len(pool)} usable items of other users, fewer than n_others={n_others}; "
                         "pass the whole dataset as others (or lower n_others)")
    settings = {"n_others": n_others, "max_new_tokens": max_new_tokens, "seed": seed, "format": _PAIR_FORMAT,
                "dtype": str(model.dtype)}
    store = _PairCache(model, uid, cache)
    rows = []
    for item in tqdm(items, desc=f"pairs {uid}", disable=not progress, leave=False):
        # The same item always gets the same other-user turns (a string seed hashes stably).
        rng = random.Random(f"{seed}:{item['text']}:{item['title']}")
        shown = rng.sample(pool, n_others) if n_others else []
        prompt = headline_prompt(model, item["text"], shown)
        key = _sha([model.name, settings, item["text"], item["title"], [[o["text"], o["title"]] for o in shown]])
        rec = store.get(key)
        if rec is None:
            negative = first_line(model.generate(prompt, max_new_tokens=max_new_tokens))
            rouge = float(_rouge().score(item["title"], negative)["rougeL"].fmeasure) if negative else 1.0
            rec = {"negative": negative, "rougeL": rouge}
            store.put(key, rec)
            store.save()  # after each generation, so an interrupted build keeps what it made
        rows.append({"item_id": _item_id(item), "text": item["text"],
                     "positive": item["title"], "negative": rec["negative"], "rougeL": rec["rougeL"],
                     "kept": bool(rec["negative"]) and rec["rougeL"] < threshold,
                     "others": [_item_id(o) for o in shown], "prompt": prompt})
    store.save()
    df = pd.DataFrame(rows)
    df.attrs.update({"model": model.name, "user_id": uid, "settings": {**settings, "threshold": threshold,
                                                                     "max_items": max_items, "select": select}})
    return df


# ---- 2. sample-level vectors --------------------------------------------------------------

_READ = ("hook_resid_pre", "hook_attn_out", "hook_mlp_out", "hook_resid_post")


@torch.no_grad()
def _response_means(model: Model, prompt: Any, response: str, layers: Sequence[int]) -> dict[tuple[int, str], torch.Tensor]:
    ids, start = model.prompt_and_target(prompt, response)
    names = {f"blocks.{L}.{h}" for L in layers for h in _READ}
    _, cache = model.bridge.run_with_cache(ids, names_filter=lambda n: n in names)
    out = {}
    for L in layers:
        get = {h: cache[f"blocks.{L}.{h}"][0, start:].float() for h in _READ}
        # The bridge's hook_resid_mid is the second norm's input copy; the residual stream after
        # attention is resid_pre + attn_out, computed here so it can't drift from that meaning.
        acts = {"attn_out": get["hook_attn_out"], "resid_mid": get["hook_resid_pre"] + get["hook_attn_out"],
                "mlp_out": get["hook_mlp_out"], "resid_post": get["hook_resid_post"]}
        for site, a in acts.items():
            out[(L, site)] = a.mean(0).cpu()
    return out


@dataclass
class SampleVectors:
    """One attention and one MLP steering vector per history item of one user.

    Attributes:
        attn, mlp: ``[n_items, d_model]`` float tensors (CPU).
        items: DataFrame with ``item_id, text, positive, negative, rougeL`` per row.
        model_name, layer, attn_site, mlp_site: where the vectors come from and belong.
        user_id: whose history; settings: how the pairs were made.
    """

    attn: torch.Tensor
    mlp: torch.Tensor
    items: pd.DataFrame
    model_name: str
    layer: int
    attn_site: str = "attn_out"
    mlp_site: str = "mlp_out"
    user_id: str = ""
    settings: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_sites(self.attn_site, self.mlp_site)
        if self.attn.shape != self.mlp.shape or self.attn.dim() != 2 or self.attn.shape[0] != len(self.items):
            raise ValueError(f"attn {tuple(self.attn.shape)} and mlp {tuple(self.mlp.shape)} must both be "
                             f"[n_items={len(self.items)}, d_model]")

    def __len__(self) -> int:
        return len(self.items)

    @property
    def d_model(self) -> int:
        return int(self.attn.shape[1])

    def __repr__(self) -> str:
        norm = lambda t: f"{float(t.norm(dim=1).mean()):.3g}" if len(self) else "-"  # noqa: E731
        return (f"SampleVectors(user={self.user_id!r}, {len(self)} items, layer={self.layer}, "
                f"{self.attn_site}/{self.mlp_site}, mean |v| {norm(self.attn)}/{norm(self.mlp)}, "
                f"model={self.model_name!r})")

    def _repr_html_(self) -> str:
        df = self.items[["item_id", "positive", "negative", "rougeL"]].copy()
        df["|attn|"] = self.attn.norm(dim=1).numpy()
        df["|mlp|"] = self.mlp.norm(dim=1).numpy()
        return f"<p>{html.escape(repr(self))}</p>" + df.to_html(index=False, float_format="{:.3f}".format)

    def subset(self, item_ids: Iterable[str]) -> "SampleVectors":
        """Only the items whose id is in ``item_ids`` (order kept)."""
        wanted = {str(i) for i in item_ids}
        keep = [j for j, i in enumerate(self.items["item_id"].astype(str)) if i in wanted]
        return SampleVectors(self.attn[keep], self.mlp[keep], self.items.iloc[keep].reset_index(drop=True),
                             self.model_name, self.layer, self.attn_site, self.mlp_site, self.user_id, self.settings)

    def for_example(self, example: Any) -> "SampleVectors":
        """The items of ``example``'s own profile: what may be used when answering it."""
        return self.subset(_item_id(it) for it in example.profile)

    def user_mean(self) -> "Aggregate":
        """The user-level mean vectors (the ``caa-user`` baseline), as an :class:`Aggregate`."""
        if not len(self):
            raise ValueError(f"user {self.user_id!r} has no vectors (every pair was filtered out); nothing to average")
        w = torch.full((len(self),), 1.0 / len(self))
        picked = self.items[["item_id", "positive"]].assign(score=float("nan"), weight=w.numpy())
        return Aggregate(w @ self.attn, w @ self.mlp, picked, self.model_name, self.layer, self.attn_site,
                         self.mlp_site, "user mean")

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write to ``path`` (a torch file); refuses to replace a file unless ``overwrite=True``."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it (or choose another path)")
        path.parent.mkdir(parents=True, exist_ok=True)
        cols = ["item_id", "text", "positive", "negative", "rougeL"]
        torch.save({"format": "workbench.fints.SampleVectors/1", "attn": self.attn, "mlp": self.mlp,
                    "items": json.dumps(self.items[cols].to_dict("records"), ensure_ascii=False),
                    "model_name": self.model_name, "layer": self.layer, "attn_site": self.attn_site,
                    "mlp_site": self.mlp_site, "user_id": self.user_id,
                    "settings": json.dumps(self.settings, default=str)}, path)
        return path

    @classmethod
    def load(cls, path: str | Path, model: Model | None = None) -> "SampleVectors":
        """Read a file written by :meth:`save`; with ``model``, refuse vectors of another model."""
        d = torch.load(Path(path), weights_only=True)
        if d.get("format") != "workbench.fints.SampleVectors/1":
            raise ValueError(f"{path} is not a workbench Fints vectors file (format {d.get('format')!r})")
        if model is not None and d["model_name"] != model.name:
            raise ValueError(f"{path} holds vectors of model {d['model_name']!r}, not {model.name!r}; "
                             "vectors only make sense in the model they came from — rebuild them with sample_vectors")
        return cls(d["attn"], d["mlp"], pd.DataFrame(json.loads(d["items"])), d["model_name"], int(d["layer"]),
                   d["attn_site"], d["mlp_site"], d["user_id"], json.loads(d["settings"]))


def sample_vectors(
    model: Model,
    pairs: pd.DataFrame,
    layer: "int | Sequence[int] | None" = None,
    attn_site: str = "attn_out",
    mlp_site: str = "mlp_out",
    progress: bool = False,
) -> "SampleVectors | dict[int, SampleVectors]":
    """Per-item vectors: mean over the response of act(prompt + positive) - act(prompt + negative).

    Only the pairs with ``kept`` true are used. ``layer`` (default :func:`default_layer`) may
    be a list: one forward pass per response serves every layer, and a ``{layer:
    SampleVectors}`` dict comes back.
    """
    from tqdm.auto import tqdm

    _check_sites(attn_site, mlp_site)
    if layer is None:
        layer = default_layer(model)
    layers = [layer] if isinstance(layer, int) else [int(L) for L in layer]
    bad = [L for L in layers if not 0 <= L < model.n_layers]
    if bad:
        raise ValueError(f"layer(s) {bad} out of range: {model.name!r} has layers 0..{model.n_layers - 1}")
    if pairs.attrs.get("model") not in (None, model.name):
        raise ValueError(f"these pairs were generated by {pairs.attrs['model']!r}, not {model.name!r}; "
                         "build pairs with the model that will be steered")
    kept = pairs[pairs["kept"]].reset_index(drop=True) if len(pairs) else pairs
    attn = {L: [] for L in layers}
    mlp = {L: [] for L in layers}
    for row in tqdm(list(kept.itertuples(index=False)), desc="vectors", disable=not progress, leave=False):
        pos = _response_means(model, row.prompt, row.positive, layers)
        neg = _response_means(model, row.prompt, row.negative, layers)
        for L in layers:
            attn[L].append(pos[(L, attn_site)] - neg[(L, attn_site)])
            mlp[L].append(pos[(L, mlp_site)] - neg[(L, mlp_site)])
    cols = [c for c in ("item_id", "text", "positive", "negative", "rougeL") if c in kept.columns]
    items = kept[cols].reset_index(drop=True) if len(kept) else pd.DataFrame(columns=cols)
    empty = torch.zeros(0, model.d_model)
    out = {L: SampleVectors(torch.stack(attn[L]) if attn[L] else empty, torch.stack(mlp[L]) if mlp[L] else empty,
                            items, model.name, L, attn_site, mlp_site, str(pairs.attrs.get("user_id", "")),
                            dict(pairs.attrs.get("settings", {})))
           for L in layers}
    return out[layers[0]] if isinstance(layer, int) else out


# ---- 3. input-aware aggregation -----------------------------------------------------------

@dataclass
class Aggregate:
    """The steering vectors for one input: weighted mixes of the picked items' vectors.

    ``picked`` lists the items used (``item_id, positive, score, weight``), best first.
    """

    attn: torch.Tensor
    mlp: torch.Tensor
    picked: pd.DataFrame
    model_name: str
    layer: int
    attn_site: str
    mlp_site: str
    weighting: str

    def __repr__(self) -> str:
        w = ", ".join(f"{i}:{x:.2f}" for i, x in zip(self.picked["item_id"], self.picked["weight"]))
        return (f"Aggregate(layer={self.layer}, {self.attn_site} |v|={float(self.attn.norm()):.3g}, "
                f"{self.mlp_site} |v|={float(self.mlp.norm()):.3g}, {self.weighting}, weights {{{w}}})")

    def _repr_html_(self) -> str:
        return f"<p>{html.escape(repr(self))}</p>" + self.picked.to_html(index=False, float_format="{:.3f}".format)


def bm25_scores(query: str, docs: Sequence[str]) -> np.ndarray:
    """Okapi BM25 of each document against the query (the tokenization ``rank_profile`` uses)."""
    from rank_bm25 import BM25Okapi

    from workbench.data import _tokens

    toks = [_tokens(d) or ["<empty>"] for d in docs]
    q = _tokens(query)
    return np.asarray(BM25Okapi(toks).get_scores(q) if q else np.zeros(len(docs)), dtype=float)


def aggregate(
    vectors: SampleVectors,
    query: Any,
    k: int = 5,
    tau: float = 0.1,
    weighting: str = "softmax",
    scorer: "str | Callable[[str, Sequence[str]], Sequence[float]]" = "bm25",
    restrict: bool = True,
) -> Aggregate:
    """Mix the vectors of the ``k`` history items most relevant to ``query``.

    Args:
        vectors: a user's :class:`SampleVectors`.
        query: an :class:`~workbench.data.Example` (its input is the query; with
            ``restrict``, only items of its own profile are candidates) or a text.
        k: items to mix (fewer if fewer have vectors).
        tau: softmax temperature; weights = softmax(score / tau) over the top ``k``, where
            BM25 scores are first divided by the best score (so tau acts on a 0-1 scale).
        weighting: ``"softmax"`` or ``"uniform"`` (plain mean of the top ``k``).
        scorer: ``"bm25"`` or a function ``(query, docs) -> scores`` (e.g. an embedding
            model's similarities, used as they are). Documents are item text + headline.
    """
    from workbench.data import query_text

    if weighting not in ("softmax", "uniform"):
        raise ValueError(f"weighting={weighting!r}: use 'softmax' or 'uniform'")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if weighting == "softmax" and not tau > 0:
        raise ValueError(f"tau must be > 0 for softmax weighting, got {tau}")
    if _is_example(query):
        if restrict:
            vectors = vectors.for_example(query)
        query = query_text(query)
    if not isinstance(query, str):
        raise ValueError("query must be an Example or a string")
    if not len(vectors):
        raise ValueError(f"no history item with a vector to aggregate for user {vectors.user_id!r} "
                         "(all pairs filtered by the ROUGE-L threshold, or none in this example's profile); "
                         "raise max_items or the threshold")
    docs = [f"{t} {p}" for t, p in zip(vectors.items["text"], vectors.items["positive"])]
    if scorer == "bm25":
        raw = bm25_scores(query, docs)
        best = raw.max() if len(raw) else 0.0
        scores = raw / best if best > 0 else np.zeros_like(raw)
    elif callable(scorer):
        scores = raw = np.asarray(scorer(query, docs), dtype=float)
        if scores.shape != (len(docs),):
            raise ValueError(f"scorer returned shape {scores.shape}, expected one score per item ({len(docs)})")
    else:
        raise ValueError(f"scorer={scorer!r}: use 'bm25' or a function (query, docs) -> scores")
    order = sorted(range(len(docs)), key=lambda j: (-scores[j], j))[:k]
    top = torch.tensor(scores[order], dtype=torch.float32)
    w = torch.softmax(top / tau, 0) if weighting == "softmax" else torch.full((len(order),), 1.0 / len(order))
    picked = pd.DataFrame({"item_id": vectors.items["item_id"].iloc[order].astype(str).to_numpy(),
                           "positive": vectors.items["positive"].iloc[order].to_numpy(),
                           "bm25" if scorer == "bm25" else "raw_score": np.asarray(raw)[order],
                           "score": scores[order], "weight": w.numpy()})
    return Aggregate(w @ vectors.attn[order], w @ vectors.mlp[order], picked, vectors.model_name, vectors.layer,
                     vectors.attn_site, vectors.mlp_site, weighting)


# ---- 4. injection -------------------------------------------------------------------------

class FintsSteer:
    """Adds ``scale * agg.attn`` at the attention site and ``mlp_scale * agg.mlp`` at the MLP
    site of ``agg.layer``, at every position. A context manager; ``.hooks`` for ``run_with_hooks``."""

    def __init__(self, model: Model, agg: Aggregate, scale: float, mlp_scale: float):
        self.agg = agg
        self.scale, self.mlp_scale = float(scale), float(mlp_scale)
        self.parts = [steer(model, agg.attn, agg.layer, site=agg.attn_site, scale=self.scale),
                      steer(model, agg.mlp, agg.layer, site=agg.mlp_site, scale=self.mlp_scale)]
        self.hooks = [h for p in self.parts for h in p.hooks]
        self._stacks: list[ExitStack] = []

    def __repr__(self) -> str:
        return f"FintsSteer(layer={self.agg.layer}, scale={self.scale:g}, mlp_scale={self.mlp_scale:g}, {self.parts})"

    def __enter__(self) -> "FintsSteer":
        with ExitStack() as stack:
            for p in self.parts:
                stack.enter_context(p)
            self._stacks.append(stack.pop_all())
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stacks.pop().close()


def fints_steer(model: Model, agg: Aggregate, scale: float = DEFAULT_SCALE, mlp_scale: float | None = None) -> FintsSteer:
    """Steer ``model`` with an :class:`Aggregate` (or a user mean) while the context is active.

    ``scale`` multiplies both vectors unless ``mlp_scale`` is given for the MLP one (the
    authors' alpha and beta). Hooks are removed on exit, also after an exception.
    """
    if agg.model_name != model.name:
        raise ValueError(f"these vectors come from {agg.model_name!r}; they can't steer {model.name!r}")
    return FintsSteer(model, agg, scale, scale if mlp_scale is None else mlp_scale)


# ---- runner methods -----------------------------------------------------------------------

_VECTOR_MEMO: dict[tuple, SampleVectors] = {}

@dataclass
class _FintsMethod(Method):
    """Shared machinery: pairs and vectors once per user, steering per example."""

    uses_profile = True
    rag = False
    layer: int | None = None  # None: default_layer(model)
    scale: float = DEFAULT_SCALE
    top_k: int = 5
    tau: float = 0.1
    weighting: str = "softmax"
    attn_site: str = "attn_out"
    mlp_site: str = "mlp_out"
    max_items: int = 8
    select: str = "query"
    n_others: int = 5
    threshold: float = 0.15
    seed: int = 0

    def describe(self) -> dict:
        return {**super().describe(), "rag_prompt": self.rag,
                "layer": f"default ({DEFAULT_LAYER} of 30)" if self.layer is None else self.layer, "scale": self.scale,
                "top_k": self.top_k, "tau": self.tau, "weighting": self.weighting, "attn_site": self.attn_site,
                "mlp_site": self.mlp_site, "max_items": self.max_items, "select": self.select,
                "n_others": self.n_others, "threshold": self.threshold, "seed": self.seed}

    def prompt(self, model: Model, example: Any) -> tuple[Any, dict]:
        from workbench.prompts import build_prompt

        return build_prompt(model, example, k=self.settings.k if self.rag else 0, by=self.settings.retrieval,
                            reserve=self.settings.max_new_tokens)

    def prepare_run(self, model: Model, examples: list, dataset: Any) -> None:
        self._others = list(dataset) if dataset is not None else list(examples)

    def prepare_user(self, model: Model, user_id: str, examples: list) -> Any:
        for ex in examples:
            ex.require_profile()
        others = getattr(self, "_others", None) or examples
        pairs = contrastive_pairs(model, examples, others, max_items=self.max_items, select=self.select,
                                  n_others=self.n_others, threshold=self.threshold, seed=self.seed)
        layer = default_layer(model) if self.layer is None else self.layer
        # fints, fints+rag and caa-user of one run need the same vectors: compute them once.
        key = (id(model), model.name, layer, self.attn_site, self.mlp_site,
               _sha(pairs[["item_id", "text", "positive", "negative", "kept", "others"]].to_dict("records")))
        if key not in _VECTOR_MEMO:
            if len(_VECTOR_MEMO) > 256:
                _VECTOR_MEMO.clear()
            _VECTOR_MEMO[key] = sample_vectors(model, pairs, layer, self.attn_site, self.mlp_site)
        return _VECTOR_MEMO[key]

    def vectors_for(self, vectors: SampleVectors, example: Any) -> Aggregate:
        return aggregate(vectors, example, k=self.top_k, tau=self.tau, weighting=self.weighting)

    def generate(self, model: Model, example: Any, state: Any) -> tuple[str, dict]:
        from workbench.prompts import first_line

        prompt, info = self.prompt(model, example)
        mine = state.for_example(example)
        if not len(mine):  # every pair filtered out: say so and write unsteered
            text = model.generate(prompt, max_new_tokens=self.settings.max_new_tokens)
            return first_line(text), {**info, "fints_items": "", "fints_weights": "", "steered": False}
        agg = self.vectors_for(mine, example)
        with fints_steer(model, agg, self.scale):
            text = model.generate(prompt, max_new_tokens=self.settings.max_new_tokens)
        return first_line(text), {**info, "fints_items": ";".join(agg.picked["item_id"]),
                                  "fints_weights": ";".join(f"{w:.3f}" for w in agg.picked["weight"]),
                                  "steered": True}


@register_method
@dataclass
class Fints(_FintsMethod):
    """The task input alone, steered by the user's input-aware Fints vectors."""

    name = "fints"
    rag = False


@register_method
@dataclass
class FintsRag(_FintsMethod):
    """The ``rag`` prompt steered by Fints vectors (the authors' main setting)."""

    name = "fints+rag"
    rag = True


@register_method
@dataclass
class CaaUser(_FintsMethod):
    """The task input alone, steered by the mean of the user's item vectors (no input awareness)."""

    name = "caa-user"
    rag = False

    def vectors_for(self, vectors: SampleVectors, example: Any) -> Aggregate:
        return vectors.user_mean()


# ---- layer / scale sweep ------------------------------------------------------------------

def dev_examples(dataset: Any, n_users: int = 6, seed: int = 0) -> list[Any]:
    """Leave-one-out queries from users' histories, for tuning without the dev golds.

    Delegates to :func:`workbench.pcs.profile_examples` (one item per user, never an item
    whose headline is the gold of a query in ``dataset``).
    """
    from workbench.pcs import profile_examples

    return profile_examples(dataset, n=n_users, seed=seed)


def sweep(
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

    from workbench.metrics import score_generation
    from workbench.prompts import build_prompt, first_line

    if score not in ("nll", "generate"):
        raise ValueError(f"score={score!r}: use 'nll' (teacher-forced, cheap) or 'generate'")

    def measure(prompt: Any, ex: Any) -> dict:
        if score == "nll":
            return {"nll": model.nll(prompt, ex.gold)}
        pred = first_line(model.generate(prompt, max_new_tokens=max_new_tokens))
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
    for uid, exs in by_user.items():
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


# ---- demo report --------------------------------------------------------------------------

def report_section(model: Model, example_user: dict | None = None) -> tuple[str, str]:
    """A demo-report section: generic, rag and Fints-steered headlines for the example user,
    with the items the aggregation picked and their weights."""
    from workbench.data import Example
    from workbench.examples import EXAMPLE_USER
    from workbench.prompts import first_line, headline_prompt

    user = example_user or EXAMPLE_USER
    t0 = time.perf_counter()
    ex = Example(id=f"{user['user_id']}-query", user_id=user["user_id"], task=user.get("task", "lamp4"),
                 input=user["query"], profile=tuple(user["profile"]), gold=user.get("gold"))
    # The example user has no other users around; the built-in pool is a few neutral news items.
    others = [{"id": f"other-{i}", "text": t, "title": h} for i, (t, h) in enumerate(_NEUTRAL_OTHERS)]
    pairs = contrastive_pairs(model, list(user["profile"]), others, max_items=8, select="recent",
                              n_others=min(3, len(others)), user_id=user["user_id"])
    vecs = sample_vectors(model, pairs)
    rows = []
    plain, rag = headline_prompt(model, user["query"]), headline_prompt(model, user["query"], user["profile"])
    rows.append(("generic", first_line(model.generate(plain, max_new_tokens=32))))
    rows.append(("rag", first_line(model.generate(rag, max_new_tokens=32))))
    table = ""
    if len(vecs):
        agg = aggregate(vecs, ex, k=5)
        with fints_steer(model, agg, DEFAULT_SCALE):
            rows.append((f"fints (scale {DEFAULT_SCALE:g})", first_line(model.generate(plain, max_new_tokens=32))))
        with fints_steer(model, agg, DEFAULT_SCALE):
            rows.append(("fints+rag", first_line(model.generate(rag, max_new_tokens=32))))
        with fints_steer(model, vecs.user_mean(), DEFAULT_SCALE):
            rows.append(("caa-user", first_line(model.generate(plain, max_new_tokens=32))))
        table = "<p>Items the aggregation picked for this input:</p>" + agg.picked.to_html(
            index=False, float_format="{:.3f}".format)
    else:
        table = "<p>Every contrastive pair was filtered out (the model already writes like this user).</p>"
    body = "".join(f"<tr><td>{html.escape(m)}</td><td>{html.escape(t)}</td></tr>" for m, t in rows)
    gold = f"<p>Gold: {html.escape(user['gold'])}</p>" if user.get("gold") else ""
    out = (f"<p>Fints steers with one vector per history item, mixed for each input "
           f"(layer {vecs.layer}, {len(vecs)} of {len(pairs)} pairs kept at ROUGE-L &lt; 0.15, "
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
