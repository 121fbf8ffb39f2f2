"""LaMP / LongLaMP loading, validation and profile ranking (no model needed)."""

from __future__ import annotations

import json

import pytest

from workbench.data import (LAMP_URL, DataError, Dataset, default_data_dir, load_lamp, load_lamp4_news,
                            load_longlamp, rank_profile)


@pytest.fixture(scope="module")
def news() -> Dataset:
    return load_lamp4_news()


def test_real_lamp4_news_loads_in_place(news):
    assert default_data_dir().name == "lamp4-news"
    assert len(news) == 207 and len(news.users()) == 69 and news.task == "lamp4"
    assert all(ex.gold and ex.profile for ex in news)
    assert all({"id", "text", "title"} <= item.keys() for ex in news for item in ex.profile)
    assert news[0].input.startswith("Generate a headline for the following article: ")
    df = news.to_frame()
    assert df.shape == (207, 6) and df["user_id"].nunique() == 69
    user = news.users()[0]
    assert len(news.by_user(user)) == 3
    assert {"text", "title", "date"} <= set(news[0].profile_frame().columns)
    assert "207 examples" in repr(news) and "69 users" in repr(news)


def _write(tmp_path, questions, outputs=None, split="dev"):
    (tmp_path / f"{split}_questions.json").write_text(
        questions if isinstance(questions, str) else json.dumps(questions))
    if outputs is not None:
        (tmp_path / f"{split}_outputs.json").write_text(json.dumps(outputs))
    return tmp_path


GOOD_Q = [{"id": "1", "input": "Generate a headline for the following article: cats nap",
           "profile": [{"id": "p1", "text": "dogs run", "title": "Dogs Run"}]}]
GOOD_O = {"task": "LaMP_4", "golds": [{"id": "1", "output": "Cats Nap"}]}


def test_a_small_valid_file_loads(tmp_path):
    ds = load_lamp(_write(tmp_path, GOOD_Q, GOOD_O))
    assert len(ds) == 1 and ds[0].gold == "Cats Nap" and ds[0].user_id == "1"  # no user_id: one user per query


@pytest.mark.parametrize(
    "questions, outputs, expected",
    [
        ("[{\"id\": 1,", GOOD_O, ["dev_questions.json", "not valid JSON", "line"]),
        ([{"id": "1", "input": "x", "profile": [{"id": "p1", "text": "t"}]}], GOOD_O,
         ["dev_questions.json", "record 0", "'1'", "profile item 0", "'title'"]),
        ([{"id": "1", "profile": []}], GOOD_O, ["dev_questions.json", "record 0", "'input'"]),
        ([{"id": "1", "input": 5, "profile": []}], GOOD_O, ["record 0", "'input' must be a string"]),
        ([{"id": "2", "input": "x", "profile": []}], GOOD_O, ["record 0", "'2'", "no gold output", "golds"]),
        (GOOD_Q + GOOD_Q, {"task": "LaMP_4", "golds": [{"id": "1", "output": "o"}]}, ["record 1", "duplicate id"]),
        (GOOD_Q, {"task": "LaMP_4", "golds": [{"id": "1"}]}, ["dev_outputs.json", "gold record 0", "'output'"]),
        (GOOD_Q, {"task": "LaMP_9", "golds": []}, ["unknown task", "LaMP_9"]),
    ],
)
def test_malformed_files_name_file_record_and_field(tmp_path, questions, outputs, expected):
    _write(tmp_path, questions, outputs)
    with pytest.raises(DataError) as err:
        load_lamp(tmp_path)
    for part in expected:
        assert part in str(err.value), (part, str(err.value))


def test_missing_data_says_where_to_get_lamp(tmp_path):
    with pytest.raises(DataError, match="lamp-benchmark"):
        load_lamp(tmp_path / "nowhere")
    _write(tmp_path, GOOD_Q, GOOD_O)
    with pytest.raises(DataError, match=r"split 'test'.*dev_questions.json") as err:
        load_lamp(tmp_path, split="test")
    assert LAMP_URL in str(err.value)


def test_other_lamp_tasks_and_splits_load(tmp_path):
    q5 = [{"id": "a", "input": "Generate a title for the following abstract of a paper: we study x",
           "profile": [{"id": "p", "title": "On Y", "abstract": "we study y"}]}]
    d5 = tmp_path / "l5"
    d5.mkdir()
    _write(d5, q5, {"task": "LaMP_5", "golds": [{"id": "a", "output": "On X"}]}, split="test")
    ds = load_lamp(d5, split="test")
    assert ds.task == "lamp5" and ds.split == "test" and ds[0].gold == "On X"
    d7 = tmp_path / "l7"
    d7.mkdir()
    q7 = [{"id": "t", "input": "Paraphrase the following tweet without any explanation before or after it: hi",
           "profile": [{"id": "p", "text": "hello world"}]}]
    ds7 = load_lamp(_write(d7, q7), task="LaMP_7")  # a test split without outputs
    assert ds7.task == "lamp7" and ds7[0].gold is None
    with pytest.raises(DataError, match="task"):
        load_lamp(d7)


def test_longlamp_json_and_jsonl(tmp_path):
    recs = [{"id": "r1", "user_id": "u1", "input": "write a review", "output": "great", "profile": [{"id": "p", "text": "ok"}]},
            {"input": "write another", "output": "bad", "profile": []}]
    (tmp_path / "a.json").write_text(json.dumps(recs))
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in recs))
    for name in ("a.json", "a.jsonl"):
        ds = load_longlamp(tmp_path / name)
        assert [ex.gold for ex in ds] == ["great", "bad"] and ds[0].user_id == "u1" and ds[1].id == "1"
    (tmp_path / "b.jsonl").write_text(json.dumps(recs[0]) + "\n{oops\n")
    with pytest.raises(DataError, match="line 2"):
        load_longlamp(tmp_path / "b.jsonl")
    with pytest.raises(DataError, match="'output'"):
        (tmp_path / "c.json").write_text(json.dumps([{"input": "x", "profile": []}]))
        load_longlamp(tmp_path / "c.json")


def test_empty_profile_is_a_clear_error_for_personal_methods(tmp_path):
    ds = load_lamp(_write(tmp_path, [{"id": "1", "input": "x", "profile": []}], GOOD_O))
    with pytest.raises(ValueError, match="empty profile"):
        ds[0].require_profile()
    assert rank_profile(ds[0], k=5) == []


def test_bm25_puts_the_relevant_item_first_and_recency_uses_dates(tmp_path):
    profile = [
        {"id": "a", "text": "The city council voted on the new budget", "title": "Budget Vote", "date": "2020-01-01"},
        {"id": "b", "text": "A recipe for sourdough bread with a crisp crust", "title": "Sourdough Tips", "date": "2021-06-01"},
        {"id": "c", "text": "Football season opens with a surprise win", "title": "Season Opener", "date": "2019-03-01"},
    ]
    q = [{"id": "1", "input": "Generate a headline for the following article: how to bake sourdough bread at home",
          "profile": profile}]
    ex = load_lamp(_write(tmp_path, q, GOOD_O))[0]
    assert [it["id"] for it in rank_profile(ex, k=1)] == ["b"]
    assert [it["id"] for it in rank_profile(ex, k=3, by="recency")] == ["b", "a", "c"]
    assert len(rank_profile(ex, k=10)) == 3
    assert rank_profile(ex, k=3) == rank_profile(ex, k=3)  # deterministic
    with pytest.raises(ValueError, match="bm25"):
        rank_profile(ex, by="tfidf")
