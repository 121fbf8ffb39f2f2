"""Retrieval over a user's profile: which of their earlier items to show with a query.

Owns the tokenization BM25 uses (:func:`tokens`), BM25 scoring (:func:`bm25_scores`), the
newest-first order of a profile (:func:`recency_order`), what a LaMP input is searched with
(:func:`query_text`) and the ranking itself (:func:`rank_profile`). Which fields of an item
are its text, and where the query sits in an input, come from the task specs in
:mod:`workbench.data.tasks`.

Example::

    from workbench.data.lamp import load_lamp4_news
    from workbench.data.retrieval import rank_profile
    ex = load_lamp4_news()[0]
    rank_profile(ex, k=3)                 # the 3 profile items most similar to the query (BM25)
    rank_profile(ex, k=3, by="recency")   # the 3 newest
"""

from __future__ import annotations

import re
import warnings
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from workbench.data.tasks import GENERIC, NOT_TEXT_FIELDS, TASKS, task_text

if TYPE_CHECKING:  # only for the annotations; a runtime import would make data -> retrieval -> data
    from workbench.data.records import Example

__all__ = ["RETRIEVALS", "bm25_scores", "query_text", "rank_profile", "recency_order", "tokens"]

# The ways a profile can be ranked (``rank_profile``'s ``by``): every other place that accepts
# a retrieval name (GenerationSettings, PCS, the command line) takes its choices from here.
RETRIEVALS = ("bm25", "recency")

_TOKEN = re.compile(r"[a-z0-9]+")


def tokens(text: str) -> list[str]:
    """Lower-cased runs of ASCII letters and digits: the terms BM25 matches on."""
    return _TOKEN.findall(text.lower())


def bm25_scores(query: str, docs: Sequence[str]) -> np.ndarray:
    """Okapi BM25 (the ``rank-bm25`` package) of each document against the query.

    Uses :func:`tokens`, the tokenization :func:`rank_profile` uses. A query without any
    token scores 0 everywhere.
    """
    from rank_bm25 import BM25Okapi

    toks = [tokens(d) or ["<empty>"] for d in docs]  # BM25Okapi divides by document length
    q = tokens(query)
    return np.asarray(BM25Okapi(toks).get_scores(q) if q else np.zeros(len(docs)), dtype=float)


def query_text(example: Example) -> str:
    """What retrieval searches with: the input without LaMP's instruction around it.

    LaMP-4/5/7: the text after the instruction prefix (see :func:`workbench.data.tasks.task_text`);
    LaMP-1: the quoted titles; LaMP-2: after ``description:``; LaMP-3: after ``review:``.
    Other inputs are used whole.
    """
    spec = TASKS.get(example.task, GENERIC)
    text = example.input
    if spec.query_quoted:
        quoted = re.findall(r'"([^"]*)"', text)
        return " ".join(quoted) if quoted else text
    if spec.query_marker and spec.query_marker in text:
        return text.split(spec.query_marker, 1)[1].strip()
    return task_text(example)


def _doc_text(item: dict, task: str) -> str:
    fields = TASKS.get(task, GENERIC).doc_fields
    if fields is None:  # unknown layout (LongLaMP, custom data): every string field but ids/dates
        return " ".join(str(v) for k, v in item.items() if k not in NOT_TEXT_FIELDS and isinstance(v, str))
    return " ".join(str(item.get(f, "")) for f in fields)


def recency_order(items: Sequence[dict]) -> list[int]:
    """Positions of ``items``, newest first: by their ``date`` field when every item has one,
    else by list position (last = newest). Dates that do not parse fall back to list
    position, with a warning."""
    n = len(items)
    if not all(item.get("date") not in (None, "") for item in items):
        return list(range(n - 1, -1, -1))  # no dates: LaMP lists history oldest first, so the last is newest
    try:
        stamps = [pd.Timestamp(str(item["date"])) for item in items]
        # Among equal dates the later list position counts as newer, matching the no-date rule.
        return sorted(range(n), key=lambda j: (stamps[j], j), reverse=True)
    except (ValueError, TypeError) as e:
        # stacklevel=3 so the warning names the user's line that asked for the ranking, not ours.
        warnings.warn(f"profile dates could not be compared ({e}); using list order (last = newest)", stacklevel=3)
        return list(range(n - 1, -1, -1))


def rank_profile(example: Example, k: int = 5, by: str = "bm25", query: str | None = None) -> list[dict]:
    """The user's ``k`` most relevant profile items, best first.

    Args:
        example: the query whose profile is ranked.
        k: how many items to return (fewer if the profile is shorter; 0 gives []).
        by: ``"bm25"`` — Okapi BM25 (the ``rank-bm25`` package) of each item's text fields
            (LaMP-4: text + title) against the query; or ``"recency"`` — newest first by the
            items' ``date`` field, or by list position (last = newest) when an item has no date.
        query: what BM25 searches with; default :func:`query_text` of the example.

    Returns:
        Profile dicts, best first. Ties keep profile order (BM25) or put the later item first
        (recency), so the ranking is deterministic.

    Example:
        >>> [it["title"] for it in rank_profile(ds[0], k=3)]   # doctest: +SKIP
    """
    if by not in RETRIEVALS:
        raise ValueError(f"by={by!r}: use 'bm25' or 'recency'")
    items = list(example.profile)
    if k <= 0 or not items:
        return []
    if by == "recency":
        return [items[j] for j in recency_order(items)[:k]]
    scores = bm25_scores(query if query is not None else query_text(example),
                         [_doc_text(it, example.task) for it in items])
    order = sorted(range(len(items)), key=lambda j: (-scores[j], j))
    return [items[j] for j in order[:k]]
