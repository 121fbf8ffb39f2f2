"""LaMP / LongLaMP loading, validation and profile ranking (no model needed)."""

from __future__ import annotations

import json
import sys

import pytest

from workbench.data.records import Dataset, Example
from workbench.data.lamp import DATA_ENV, LAMP_URL, DataError, default_data_dir, load_lamp, load_lamp4_news, load_longlamp
from workbench.data.retrieval import query_text, rank_profile


@pytest.fixture(scope="module")
def news() -> Dataset:
    return load_lamp4_news()


def test_real_lamp4_news_loads_in_place(news):
    assert default_data_dir().name == "lamp4-news"
    assert len(news) == 207 and len(news.users()) == 69 and news.task == "lamp4" and news.split == "dev"
    assert all(ex.gold and ex.profile for ex in news)
    assert all({"id", "text", "title"} <= item.keys() for ex in news for item in ex.profile)
    assert all(isinstance(ex.profile, tuple) for ex in news)
    assert news[0].input.startswith("Generate a headline for the following article: ")
    df = news.to_frame()
    assert df.shape == (207, 6) and list(df.columns) == ["id", "user_id", "task", "input", "gold", "n_profile"]
    assert df["user_id"].nunique() == 69 and (df["n_profile"] > 0).all()
    user = news.users()[0]
    assert len(news.by_user(user)) == 3 and isinstance(news.by_user(user), Dataset)
    pf = news[0].profile_frame()
    assert {"text", "title", "date", "category"} <= set(pf.columns) and len(pf) == len(news[0].profile)
    assert "207 examples" in repr(news) and "69 users" in repr(news) and "lamp4" in news._repr_html_()
    assert len(repr(news[0])) < 300 and "items]" in repr(news[0])  # long texts are cut in the repr
    assert len(news[:5]) == 5 and news.with_profile().examples == news.examples


def test_data_dir_follows_the_env_var(monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    assert default_data_dir() == tmp_path
    with pytest.raises(DataError, match=DATA_ENV):
        load_lamp4_news()  # the folder has no files: the message says how to point elsewhere


def _write(tmp_path, questions, outputs=None, split="dev"):
    (tmp_path / f"{split}_questions.json").write_text(
        questions if isinstance(questions, str) else json.dumps(questions))
    if outputs is not None:
        (tmp_path / f"{split}_outputs.json").write_text(outputs if isinstance(outputs, str) else json.dumps(outputs))
    return tmp_path


GOOD_Q = [{"id": "1", "input": "Generate a headline for the following article: cats nap",
           "profile": [{"id": "p1", "text": "dogs run", "title": "Dogs Run"}]}]
GOOD_O = {"task": "LaMP_4", "golds": [{"id": "1", "output": "Cats Nap"}]}


def test_a_small_valid_file_loads(tmp_path):
    ds = load_lamp(_write(tmp_path, GOOD_Q, GOOD_O))
    assert len(ds) == 1 and ds[0].gold == "Cats Nap" and ds[0].user_id == "1"  # no user_id: one user per query
    assert ds[0].profile == ({"id": "p1", "text": "dogs run", "title": "Dogs Run"},)


Q = "dev_questions.json"
O = "dev_outputs.json"


@pytest.mark.parametrize(
    "questions, outputs, expected",
    [
        # bad JSON
        ('[{"id": 1,', GOOD_O, [Q, "not valid JSON", "line 1", "Fix:"]),
        (GOOD_Q, "{oops", [O, "not valid JSON"]),
        # a profile item without a required field
        ([{"id": "1", "input": "x", "profile": [{"id": "p1", "text": "t"}]}], GOOD_O,
         [Q, "record 0", "'1'", "profile item 0", "'p1'", "field 'title'", "Fix:"]),
        # a question without a field
        ([{"id": "1", "profile": []}], GOOD_O, [Q, "record 0", "field 'input'", "missing"]),
        # wrong types
        ([{"id": "1", "input": 5, "profile": []}], GOOD_O, [Q, "record 0", "field 'input'", "must be a string"]),
        ([{"id": "1", "input": "x", "profile": {"a": 1}}], GOOD_O, [Q, "record 0", "field 'profile'", "list"]),
        ([{"id": "1", "input": "x", "profile": [{"id": "p", "text": "t", "title": 3}]}], GOOD_O,
         [Q, "record 0", "profile item 0", "field 'title'", "string"]),
        ([{"id": ["1"], "input": "x", "profile": []}], GOOD_O, [Q, "record 0", "field 'id'", "list"]),
        (GOOD_Q, {"task": "LaMP_4", "golds": [{"id": "1", "output": 7}]}, [O, "gold record 0", "field 'output'"]),
        (GOOD_Q, {"task": "LaMP_4", "golds": {"1": "x"}}, [O, "field 'golds'", "must be a list"]),
        # the gold of a question is missing
        ([{"id": "2", "input": "x", "profile": []}], GOOD_O, [Q, "record 0", "'2'", "field 'id'", "no gold output", O]),
        (GOOD_Q, {"task": "LaMP_4", "golds": [{"id": "1"}]}, [O, "gold record 0", "field 'output'", "missing"]),
        # duplicates
        (GOOD_Q + GOOD_Q, GOOD_O, [Q, "record 1", "duplicate id"]),
        (GOOD_Q, {"task": "LaMP_4", "golds": [{"id": "1", "output": "a"}, {"id": "1", "output": "b"}]},
         [O, "gold record 1", "duplicate id"]),
        # the task
        (GOOD_Q, {"task": "LaMP_9", "golds": []}, [O, "field 'task'", "unknown task", "LaMP_9"]),
        (GOOD_Q, {"golds": []}, [O, "field 'task'", "missing"]),
    ],
)
def test_malformed_files_name_file_record_and_field(tmp_path, questions, outputs, expected):
    _write(tmp_path, questions, outputs)
    with pytest.raises(DataError) as err:
        load_lamp(tmp_path)
    for part in expected:
        assert part in str(err.value), (part, str(err.value))


def test_a_late_error_loads_nothing(tmp_path):
    questions = GOOD_Q + [{"id": "2", "input": "x", "profile": [{"id": "p"}]}]
    outputs = {"task": "LaMP_4", "golds": [{"id": "1", "output": "a"}, {"id": "2", "output": "b"}]}
    with pytest.raises(DataError, match="record 1"):
        load_lamp(_write(tmp_path, questions, outputs))


def test_missing_data_says_where_to_get_lamp(tmp_path):
    with pytest.raises(DataError, match="lamp-benchmark") as err:
        load_lamp(tmp_path / "nowhere")
    assert "nowhere" in str(err.value) and DATA_ENV in str(err.value)
    _write(tmp_path, GOOD_Q, GOOD_O)
    with pytest.raises(DataError, match=r"test_questions.json is missing \(split 'test'\).*dev_questions.json") as err:
        load_lamp(tmp_path, split="test")
    assert LAMP_URL in str(err.value)


def test_other_lamp_tasks_and_splits_load(tmp_path):
    d5 = tmp_path / "l5"
    d5.mkdir()
    q5 = [{"id": "a", "input": "Generate a title for the following abstract of a paper: we study x",
           "profile": [{"id": "p", "title": "On Y", "abstract": "we study y"}]}]
    ds = load_lamp(_write(d5, q5, {"task": "LaMP_5", "golds": [{"id": "a", "output": "On X"}]}, split="test"),
                   split="test")
    assert ds.task == "lamp5" and ds.split == "test" and ds[0].gold == "On X"
    assert query_text(ds[0]) == "we study x"
    with pytest.raises(DataError, match="task"):
        load_lamp(d5, split="test", task="lamp4")  # the file says LaMP_5

    d7 = tmp_path / "l7"
    d7.mkdir()
    q7 = [{"id": 10, "input": "Paraphrase the following tweet without any explanation before or after it: hi",
           "profile": [{"id": "p", "text": "hello world"}]}]
    ds7 = load_lamp(_write(d7, q7), task="LaMP_7")  # a test split without outputs
    assert ds7.task == "lamp7" and ds7[0].gold is None and ds7[0].id == "10"
    with pytest.raises(DataError, match="task"):
        load_lamp(d7)

    d2 = tmp_path / "l2"
    d2.mkdir()
    q2 = [{"id": "m", "input": "Which tag does this movie relate to? description: a heist in space",
           "profile": [{"id": "p", "description": "a robbery", "tag": "crime"}]}]
    ds2 = load_lamp(_write(d2, q2, {"task": "LaMP_2", "golds": [{"id": "m", "output": "sci-fi"}]}))
    assert ds2.task == "lamp2" and query_text(ds2[0]) == "a heist in space"

    d3 = tmp_path / "l3"
    d3.mkdir()
    q3 = [{"id": "r", "user_id": "u", "input": "What is the score of the following review? review: fine",
           "profile": [{"id": "p", "text": "meh", "score": "3"}, {"id": "q", "text": "great", "score": 5}]}]
    ds3 = load_lamp(_write(d3, q3, {"task": "LaMP_3", "golds": [{"id": "r", "output": "4"}]}))
    assert ds3[0].user_id == "u" and len(ds3[0].profile) == 2


def test_longlamp_json_jsonl_and_parquet(tmp_path):
    recs = [{"id": "r1", "user_id": "u1", "input": "write a review", "output": "great",
             "profile": [{"reviewText": "ok", "overall": 4}]},
            {"input": "write another", "output": "bad", "profile": []}]
    (tmp_path / "a.json").write_text(json.dumps(recs))
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    for name in ("a.json", "a.jsonl"):
        ds = load_longlamp(tmp_path / name)
        assert [ex.gold for ex in ds] == ["great", "bad"] and ds[0].user_id == "u1" and ds[1].id == "1"
        assert ds[0].profile == ({"reviewText": "ok", "overall": 4},) and ds.users() == ["u1", "1"]
    pytest.importorskip("pyarrow")
    import pandas as pd

    pd.DataFrame(recs).to_parquet(tmp_path / "a.parquet")
    ds = load_longlamp(tmp_path / "a.parquet")
    assert [ex.gold for ex in ds] == ["great", "bad"] and ds[0].profile == ({"reviewText": "ok", "overall": 4},)


def test_longlamp_errors(tmp_path, monkeypatch):
    (tmp_path / "b.jsonl").write_text(json.dumps({"input": "x", "output": "y", "profile": []}) + "\n{oops\n")
    with pytest.raises(DataError, match="b.jsonl, line 2"):
        load_longlamp(tmp_path / "b.jsonl")
    (tmp_path / "c.json").write_text(json.dumps([{"input": "x", "profile": []}]))
    with pytest.raises(DataError, match=r"c.json, record 0 \(id None\), field 'output'"):
        load_longlamp(tmp_path / "c.json")
    with pytest.raises(DataError, match="longlamp"):
        load_longlamp(tmp_path / "absent.jsonl")
    (tmp_path / "d.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if pyarrow were not installed
    with pytest.raises(DataError, match="pip install pyarrow"):
        load_longlamp(tmp_path / "d.parquet")


def test_empty_profile_is_a_clear_error_for_personal_methods(tmp_path):
    ds = load_lamp(_write(tmp_path, [{"id": "1", "input": "x", "profile": []}], GOOD_O))
    with pytest.raises(ValueError, match="example 1 of user 1 has an empty profile.*with_profile"):
        ds[0].require_profile()
    assert rank_profile(ds[0], k=5) == [] and len(ds.with_profile()) == 0


PROFILE = (
    {"id": "a", "text": "The city council voted on the new budget", "title": "Budget Vote", "date": "2020-01-01"},
    {"id": "b", "text": "A recipe for sourdough bread with a crisp crust", "title": "Sourdough Tips", "date": "2021-06-01"},
    {"id": "c", "text": "Football season opens with a surprise win", "title": "Season Opener", "date": "2019-03-01"},
)


def _example(profile, text="how to bake sourdough bread at home", task="lamp4"):
    return Example("1", "u", task, "Generate a headline for the following article: " + text, tuple(profile), None)


def test_bm25_puts_the_relevant_item_first():
    ex = _example(PROFILE)
    assert query_text(ex) == "how to bake sourdough bread at home"
    assert [it["id"] for it in rank_profile(ex, k=1)] == ["b"]
    assert [it["id"] for it in rank_profile(ex, k=1, query="council budget")] == ["a"]
    assert [it["id"] for it in rank_profile(ex, k=1, query="surprise win")] == ["c"]
    assert len(rank_profile(ex, k=10)) == 3
    assert rank_profile(ex, k=3) == rank_profile(ex, k=3)  # deterministic
    # the instruction prefix is not part of the query: "headline"/"article" in an item don't help it
    noisy = PROFILE + ({"id": "d", "text": "generate a headline for the following article", "title": "x"},)
    assert rank_profile(_example(noisy), k=1)[0]["id"] == "b"
    # ties (no query word anywhere) keep profile order
    assert [it["id"] for it in rank_profile(ex, k=3, query="zebra")] == ["a", "b", "c"]
    with pytest.raises(ValueError, match="bm25"):
        rank_profile(ex, by="tfidf")


def test_recency_uses_dates_then_list_order():
    ex = _example(PROFILE)
    assert [it["id"] for it in rank_profile(ex, k=3, by="recency")] == ["b", "a", "c"]
    assert [it["id"] for it in rank_profile(ex, k=1, by="recency")] == ["b"]
    undated = [{k: v for k, v in it.items() if k != "date"} for it in PROFILE]
    assert [it["id"] for it in rank_profile(_example(undated), k=3, by="recency")] == ["c", "b", "a"]
    same_day = [dict(it, date="2020-01-01") for it in PROFILE]
    assert [it["id"] for it in rank_profile(_example(same_day), k=3, by="recency")] == ["c", "b", "a"]
