"""Fints step 1: contrastive pairs from a user's history.

For each chosen history item (LaMP-4: an earlier article and the user's own headline for
it) the prompt is the headline prompt for that article with ``n_others`` items of *other*
users as earlier chat turns (the authors' "others" mode). Positive = the user's headline;
negative = what the model writes for that prompt (greedy). A pair is kept only if
ROUGE-L(negative, positive) < ``threshold`` (0.15): the model's own guess must really
differ from the user's. Negatives cost one generation each, so they are cached on disk.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pandas as pd

from workbench._util import atomic_write_text, slug, stable_hash
from workbench.core.model import Model

PAIR_FORMAT = 1  # bump when the prompt or the negative generation changes (cache key)


def _sha(obj: Any) -> str:
    return stable_hash(obj, length=None)


def item_id(item: dict) -> str:
    """A history item's id; items without one get one from their content, the same in every profile."""
    if item.get("id") is not None:
        return str(item["id"])
    return "item-" + _sha([item.get("text"), item.get("title")])[:10]


def is_example(x: Any) -> bool:
    return hasattr(x, "profile") and hasattr(x, "input")


def _history_items(history: Any) -> tuple[list[dict], list[Any], str | None]:
    """(items, examples, user_id) from an Example, a list of Examples or a list of item dicts."""
    if is_example(history):
        history = [history]
    history = list(history)
    if not history:
        raise ValueError("history is empty; pass a user's Example(s) or a list of profile items {'text', 'title'}")
    if all(is_example(h) for h in history):
        users = {ex.user_id for ex in history}
        if len(users) > 1:
            raise ValueError(f"history mixes users {sorted(users)}; build pairs one user at a time")
        items: dict[str, dict] = {}
        for ex in history:
            for it in ex.profile:
                items.setdefault(item_id(it), it)
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
    from workbench.data.retrieval import rank_profile, recency_order

    items, examples, _ = _history_items(history)
    items = [it for it in items if _usable(it)]
    if max_items is not None and max_items < 1:
        raise ValueError(f"max_items must be >= 1 (or None for all items), got {max_items}")
    if by == "recent":
        return [items[j] for j in recency_order(items)[: max_items or len(items)]]
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
        if is_example(x):
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
        self.path = cache_root() / "fints" / "pairs" / f"{slug(model.name)}--{slug(user_id)}.json"
        self.records: dict[str, dict] = {}
        self.dirty = False
        if enabled and self.path.exists():
            try:
                data = json.loads(self.path.read_text())
            except (OSError, json.JSONDecodeError):
                data = {}  # damaged: regenerate rather than trust it
            if isinstance(data, dict) and data.get("model") == model.name and data.get("format") == PAIR_FORMAT:
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
        payload = {"model": self.model_name, "format": PAIR_FORMAT, "records": self.records}
        atomic_write_text(self.path, json.dumps(payload, ensure_ascii=False))  # a reader never sees half a file
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
        history: the user's :class:`~workbench.data.records.Example` (its profile), a list of one
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

    from workbench.data.metrics import rouge_scorer
    from workbench.data.prompts import generate_line, headline_prompt

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
    settings = {"n_others": n_others, "max_new_tokens": max_new_tokens, "seed": seed, "format": PAIR_FORMAT,
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
            negative = generate_line(model, prompt, max_new_tokens=max_new_tokens)
            rouge = float(rouge_scorer().score(item["title"], negative)["rougeL"].fmeasure) if negative else 1.0
            rec = {"negative": negative, "rougeL": rouge}
            store.put(key, rec)
            store.save()  # after each generation, so an interrupted build keeps what it made
        rows.append({"item_id": item_id(item), "text": item["text"],
                     "positive": item["title"], "negative": rec["negative"], "rougeL": rec["rougeL"],
                     "kept": bool(rec["negative"]) and rec["rougeL"] < threshold,
                     "others": [item_id(o) for o in shown], "prompt": prompt})
    store.save()
    df = pd.DataFrame(rows)
    df.attrs.update({"model": model.name, "user_id": uid, "settings": {**settings, "threshold": threshold,
                                                                     "max_items": max_items, "select": select}})
    return df
