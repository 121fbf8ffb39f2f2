"""Fints step 1: contrastive pairs from a user's history.

For each chosen history item (an earlier input and the user's own output for it, e.g.
LaMP-4's article and headline) the prompt is the task's prompt for that input with
``n_others`` items of *other* users as earlier chat turns (the authors' "others" mode).
Positive = the user's output; negative = what the model writes for that prompt (greedy). A pair is kept only if
ROUGE-L(negative, positive) < ``threshold`` (0.15): the model's own guess must really
differ from the user's. Negatives cost one generation each, so they are cached on disk.

Which fields of an item are its input and output, and the prompt, are the task's
(:mod:`workbench.data.tasks`); the rows that come out are task-neutral (``text``: the input,
``positive``, ``negative``, ``prompt``).
"""

from __future__ import annotations

import json
import random
from typing import Any

import pandas as pd

from workbench._util import atomic_write_text, cache_file, stable_hash
from workbench.core.model import Model
from workbench.data.history import item_fields, task_of, usable_item
from workbench.data.tasks import steering_task

PAIR_FORMAT = 1  # bump when the prompt or the negative generation changes (cache key)


def _sha(obj: Any) -> str:
    return stable_hash(obj, length=None)


def item_id(item: dict, task: str) -> str:
    """A history item's id; items without one get one from their content (``task``'s input and
    output fields), the same in every profile."""
    if item.get("id") is not None:
        return str(item["id"])
    return "item-" + _content(item, task)[:10]


def _content(item: dict, task: str) -> str:
    """A hash of the item's input and output: the same item, whichever profile it comes from."""
    return _sha([item.get(f) for f in item_fields(task)])


def is_example(x: Any) -> bool:
    return hasattr(x, "profile") and hasattr(x, "input")


def _history_items(history: Any, task: str | None) -> tuple[list[dict], list[Any], str | None, str]:
    """(items, examples, user_id, task) from an Example, a list of Examples or a list of item dicts."""
    if is_example(history):
        history = [history]
    history = list(history)
    if not history:
        raise ValueError("history is empty; pass a user's Example(s) or a list of their profile items")
    if all(is_example(h) for h in history):
        users = {ex.user_id for ex in history}
        if len(users) > 1:
            raise ValueError(f"history mixes users {sorted(users)}; build pairs one user at a time")
        found = task_of(history)
        if task is not None and task != found:
            raise ValueError(f"task={task!r} but the examples are {found!r}; leave task out for Examples")
        items: dict[str, dict] = {}
        for ex in history:
            for it in ex.profile:
                items.setdefault(item_id(it, found), it)
        return list(items.values()), history, history[0].user_id, found
    if not all(isinstance(h, dict) for h in history):
        raise ValueError("history must be an Example, a list of Examples of one user, or a list of profile item dicts")
    if task is None:
        raise ValueError("a list of profile items does not say its task: pass task=... (e.g. task='lamp4'), "
                         "which names the items' input and output fields")
    steering_task(task)
    return history, [], None, task


def select_items(history: Any, max_items: int = 8, by: str = "query", k: int = 5, task: str | None = None) -> list[dict]:
    """Which of a user's history items get vectors (each costs one generation).

    ``by="query"`` (needs Examples): round-robin over the user's queries, each query's BM25
    top-``k`` items of its own profile, until ``max_items`` — the items the aggregation can
    pick. ``by="recent"``: the ``max_items`` newest items (by date, else list position).
    ``task``: the items' task, needed only for a list of item dicts (Examples carry theirs).
    """
    from workbench.data.retrieval import rank_profile, recency_order

    items, examples, _, task = _history_items(history, task)
    items = [it for it in items if usable_item(it, task)]
    if max_items is not None and max_items < 1:
        raise ValueError(f"max_items must be >= 1 (or None for all items), got {max_items}")
    if by == "recent":
        return [items[j] for j in recency_order(items)[: max_items or len(items)]]
    if by != "query":
        raise ValueError(f"by={by!r}: use 'query' (the queries' BM25 top items) or 'recent'")
    if not examples:
        raise ValueError("by='query' needs the user's Examples (their inputs are the queries); "
                         "with a list of profile items use by='recent'")
    rankings = [[it for it in rank_profile(ex, k=max(k, max_items or k)) if usable_item(it, task)] for ex in examples]
    chosen: dict[str, dict] = {}
    limit = max_items or sum(len(r) for r in rankings)
    for depth in range(max(len(r) for r in rankings)):
        for r in rankings:
            if depth < len(r) and len(chosen) < limit:
                chosen.setdefault(_content(r[depth], task), r[depth])
    return list(chosen.values())


def _others_pool(others: Any, exclude_user: str | None, task: str) -> list[dict]:
    if others is None:
        return []
    pool: dict[str, dict] = {}
    for x in others:
        if is_example(x):
            if exclude_user is not None and x.user_id == exclude_user:
                continue
            for it in x.profile:
                if usable_item(it, task):
                    pool.setdefault(_content(it, task), it)
        elif isinstance(x, dict):
            if usable_item(x, task):
                pool.setdefault(_content(x, task), x)
        else:
            raise ValueError("others must be a Dataset/list of Examples or a list of profile item dicts")
    return list(pool.values())


class _PairCache:
    """Per-user JSON file of generated negatives, keyed by everything that determines them."""

    def __init__(self, model: Model, user_id: str, enabled: bool):
        self.enabled = enabled
        self.model_name = model.name
        # the user id comes from the data: cache_file makes it one safe file name in the cache
        self.path = cache_file("fints", model.name, f"pairs/{user_id}.json")
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
    task: str | None = None,
    cache: bool = True,
    progress: bool = False,
    keep_prompts: dict | None = None,
) -> pd.DataFrame:
    """Positive/negative output pairs for a user's history items.

    Args:
        model: the model that writes the negatives (and later reads the activations).
        history: the user's :class:`~workbench.data.records.Example` (its profile), a list of one
            user's Examples (the union of their profiles), or a list of item dicts of ``task``.
        others: other users' items for the negatives' prompts: a Dataset or list of Examples
            (the history's own user is left out) or a list of item dicts.
        task: the task of a list of item dicts (its input and output fields and its prompt,
            :mod:`workbench.data.tasks`); Examples carry their own.
        max_items, select: at most this many items, chosen by :func:`select_items`:
            ``"query"`` (the default for Examples) or ``"recent"`` (the default for item
            dicts); ``max_items=None`` keeps all.
        n_others: other users' items shown as earlier chat turns (the authors use 5); which
            ones is a deterministic function of ``seed`` and the item.
        threshold: keep a pair only if ROUGE-L F(negative, positive) < threshold.
        max_new_tokens: length limit of a negative (its first line is kept).
        cache: read and write generated negatives under ``$WORKBENCH_CACHE/fints/pairs``,
            one file per model and user, keyed by model, settings and item contents.
        keep_prompts: a dict that each negative generated here leaves its prompt's KV cache in
            (keyed by the prompt's token ids), for :func:`~workbench.science.fints.sample_vectors`
            to start from: the prompt, most of a pair's tokens, then runs once for both.

    Returns:
        A DataFrame, one row per item: ``item_id, text`` (the item's input), ``positive`` (the
        user's output), ``negative, rougeL, kept, others`` (ids of the other users' items) and
        ``prompt`` (what the model saw);
        ``df.attrs`` records the model, user and settings.
    """
    from tqdm.auto import tqdm

    from workbench.data.metrics import rouge_scorer
    from workbench.data.prompts import first_line, first_line_complete, generate_line, task_prompt

    if not threshold >= 0:
        raise ValueError(f"threshold={threshold} is a ROUGE-L F limit; use a number >= 0 (the authors use 0.15)")
    if n_others < 0:
        raise ValueError(f"n_others must be >= 0, got {n_others}")
    all_items, examples, uid, task = _history_items(history, task)
    src, tgt = item_fields(task)
    uid = str(user_id or uid or "user-" + _sha([[it.get(src), it.get(tgt)] for it in all_items])[:12])
    select = select or ("query" if examples else "recent")
    items = select_items(history, max_items=max_items, by=select, task=None if examples else task)
    if not items:
        raise ValueError(f"user {uid} has no history item with both '{src}' and '{tgt}'; Fints needs some")
    pool = _others_pool(others, exclude_user=uid if examples else None, task=task)
    own = {_content(it, task) for it in all_items if usable_item(it, task)}
    pool = [it for it in pool if _content(it, task) not in own]
    if n_others > 0 and len(pool) < n_others:
        raise ValueError(f"others has {len(pool)} usable items of other users, fewer than n_others={n_others}; "
                         "pass the whole dataset as others (or lower n_others)")
    settings = {"task": task, "n_others": n_others, "max_new_tokens": max_new_tokens, "seed": seed,
                "format": PAIR_FORMAT, "dtype": str(model.dtype)}
    store = _PairCache(model, uid, cache)
    rows = []
    for item in tqdm(items, desc=f"pairs {uid}", disable=not progress, leave=False):
        # The same item always gets the same other-user turns (a string seed hashes stably).
        text, positive = item[src], item[tgt]
        rng = random.Random(f"{seed}:{text}:{positive}")
        shown = rng.sample(pool, n_others) if n_others else []
        prompt = task_prompt(model, task, text, shown)
        key = _sha([model.name, settings, text, positive, [[o[src], o[tgt]] for o in shown]])
        rec = store.get(key)
        if rec is None:
            if keep_prompts is None:
                negative = generate_line(model, prompt, max_new_tokens=max_new_tokens)
            else:
                written, prompt_pass = model._generate_keeping_prompt(prompt, max_new_tokens, until=first_line_complete)
                negative = first_line(written)
                if prompt_pass is not None:
                    keep_prompts[tuple(prompt_pass[0][0].tolist())] = prompt_pass[1]
            rouge = float(rouge_scorer().score(positive, negative)["rougeL"].fmeasure) if negative else 1.0
            rec = {"negative": negative, "rougeL": rouge}
            store.put(key, rec)
            store.save()  # after each generation, so an interrupted build keeps what it made
        rows.append({"item_id": item_id(item, task), "text": text,
                     "positive": positive, "negative": rec["negative"], "rougeL": rec["rougeL"],
                     "kept": bool(rec["negative"]) and rec["rougeL"] < threshold,
                     "others": [item_id(o, task) for o in shown], "prompt": prompt})
    store.save()
    df = pd.DataFrame(rows)
    df.attrs.update({"model": model.name, "user_id": uid, "settings": {**settings, "threshold": threshold,
                                                                     "max_items": max_items, "select": select}})
    return df
