"""Task specs (workbench.data.tasks), retrieval (workbench.data.retrieval) and the module layering (no model needed)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import workbench.data.prompts as prompts
from workbench.data.records import Example
from workbench.data.retrieval import bm25_scores, query_text, rank_profile, recency_order, tokens
from workbench.data.tasks import TASKS, get_task, task_text



def _ex(task: str, text: str, profile=(), prefix: bool = True) -> Example:
    spec = TASKS.get(task)
    head = spec.prefix if (prefix and spec is not None) else ""
    return Example("q1", "u1", task, head + text, tuple(profile), None)


def test_get_task_names_the_known_tasks_when_it_does_not_know_one():
    assert get_task("lamp4").name == "lamp4" and get_task("lamp4") is TASKS["lamp4"]
    with pytest.raises(ValueError, match=r"unknown task 'LaMP_9'.*lamp1, lamp2, lamp2n, lamp3, lamp4, lamp5, lamp6, lamp7"):
        get_task("LaMP_9")
    with pytest.raises(ValueError, match="unknown task"):
        get_task(["lamp4"])  # not even a name
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_task("lamp4").prefix = ""  # type: ignore[misc]


def test_task_text_strips_the_lamp_prefix_only():
    assert task_text(_ex("lamp4", "Cats nap all day")) == "Cats nap all day"
    assert task_text(_ex("lamp5", "We study cats.")) == "We study cats."
    assert task_text(_ex("lamp7", "cats r great")) == "cats r great"
    # no prefix there, or a task without one: the input comes back whole
    assert task_text(_ex("lamp4", "Cats nap all day", prefix=False)) == "Cats nap all day"
    assert task_text(Example("q", "u", "longlamp", "Write a review: fine", (), None)) == "Write a review: fine"
    # only a leading prefix is removed
    mid = "see: " + TASKS["lamp4"].prefix + "x"
    assert task_text(_ex("lamp4", mid, prefix=False)) == mid


def test_query_text_finds_the_query_inside_each_lamp_input():
    lamp1 = 'For an author who has written the paper with the title "cats on mats", which reference ... "a" or "b"'
    assert query_text(Example("q", "u", "lamp1", lamp1, (), None)) == "cats on mats a b"
    assert query_text(Example("q", "u", "lamp2", "Which tag ... description: a heist in space ", (), None)) \
        == "a heist in space"
    assert query_text(Example("q", "u", "lamp3", "What is the score ... review: great pan", (), None)) == "great pan"
    assert query_text(_ex("lamp4", "city budget vote")) == "city budget vote"


PROFILE = (
    {"id": "a", "title": "Budget vote", "abstract": "the city council voted on the budget", "date": "2020-01-01"},
    {"id": "b", "title": "Sourdough", "abstract": "baking bread with a crisp crust at home", "date": "2021-06-01"},
    {"id": "c", "title": "Season opener", "abstract": "football season opens with a win", "date": "2019-03-01"},
)


def test_bm25_ranks_the_most_similar_item_first():
    ex = _ex("lamp5", "how to bake bread at home", PROFILE)
    assert [it["id"] for it in rank_profile(ex, k=3)][0] == "b"
    assert [it["id"] for it in rank_profile(ex, k=1, query="football win")] == ["c"]
    assert rank_profile(ex, k=0) == [] and len(rank_profile(ex, k=10)) == 3
    # the task's doc_fields decide what is searched: lamp5 items are title + abstract
    assert get_task("lamp5").doc_fields == ("title", "abstract")
    assert [it["id"] for it in rank_profile(ex, k=1, query="sourdough")] == ["b"]


def test_unknown_tasks_search_every_text_field_but_labels_and_ids():
    # (three items: with two, BM25's idf of a word in one of them is 0 and nothing would rank)
    profile = ({"id": "zebra", "text": "a quiet day", "tag": "zebra"}, {"id": "x", "text": "zebra crossing"},
               {"id": "y", "text": "a busy road", "category": "zebra"})
    ex = Example("q", "u", "longlamp", "zebra", profile, None)
    assert [it["id"] for it in rank_profile(ex, k=3)] == ["x", "zebra", "y"]


def test_bm25_scores_and_tokens():
    assert tokens("Hello, World! It's 2024") == ["hello", "world", "it", "s", "2024"]
    scores = bm25_scores("bread crust", ["city budget", "bread with a crisp crust", ""])
    assert isinstance(scores, np.ndarray) and scores.shape == (3,) and scores.dtype == float
    assert scores.argmax() == 1 and scores[2] == 0.0
    assert not bm25_scores("!!!", ["bread", "crust"]).any()  # a query without tokens matches nothing


def test_recency_order_newest_first_then_list_position():
    assert recency_order(list(PROFILE)) == [1, 0, 2]
    undated = [{"id": i} for i in "abc"]
    assert recency_order(undated) == [2, 1, 0]  # LaMP lists history oldest first
    assert recency_order([dict(it, date="2020-01-01") for it in PROFILE]) == [2, 1, 0]  # ties: later is newer
    ex = _ex("lamp5", "x", PROFILE)
    assert [it["id"] for it in rank_profile(ex, k=2, by="recency")] == ["b", "a"]
    with pytest.warns(UserWarning, match="could not be compared"):
        assert recency_order([{"date": "not a date"}, {"date": "2020"}]) == [1, 0]


class _WordModel:
    """Just what build_prompt needs from a model: a context size and a token count."""

    has_chat_template = False
    n_ctx = 10_000

    def encode(self, prompt):
        return np.zeros((1, len(str(prompt).split())))


def test_prompts_follow_the_task_specs():
    ex = _ex("lamp7", "cats r great", ({"id": "1", "text": "dogs r ok"},))
    prompt, info = prompts.build_prompt(_WordModel(), ex, k=1)
    spec = get_task("lamp7")
    assert prompt == (f"{spec.history_intro}\n- dogs r ok\n\n{spec.instruction.format(text='cats r great')}"
                      "\nAnswer:")
    assert info["profile_ids"] == ["1"]
    with pytest.raises(ValueError, match="no prompt format for task 'lamp3'.*lamp4, lamp5, lamp7"):
        prompts.build_prompt(_WordModel(), Example("q", "u", "lamp3", "review: ok", (), None), k=0)


def test_each_name_has_one_import_path():
    # the re-export shims are gone (CHANGELOG.md): ranking lives in retrieval, task text in tasks
    import workbench.data.lamp as lamp

    assert not hasattr(lamp, "rank_profile") and not hasattr(lamp, "query_text")
    assert not hasattr(lamp, "PROFILE_FIELDS")
    # the import structure of data/ is held by tests/test_layers.py (no circles, no upward imports)

