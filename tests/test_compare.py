"""Comparing methods across benchmark runs: one table, paired differences, saved results."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from workbench.runner.bench import run_bench
from workbench.runner.compare import (best_covered, comparison_table, format_table, load_results, load_runs, per_user,
                               save_results)
from workbench.data.lamp import load_lamp4_news
from workbench.runner.figures import paired_figure, per_user_figure
from workbench.methods import GenerationSettings


@pytest.fixture(scope="module")
def news():
    return load_lamp4_news()


@pytest.fixture(scope="module")
def two_runs(tiny, news, tmp_path_factory):
    """generic on 4 examples in one directory, rag on 3 of them in another."""
    s = GenerationSettings(max_new_tokens=5)
    a, b = tmp_path_factory.mktemp("a"), tmp_path_factory.mktemp("b")
    run_bench(tiny, news, ["generic"], a, n=4, settings=s, progress=False)
    run_bench(tiny, news, ["rag"], b, n=3, settings=s, progress=False)
    return a, b


def test_runs_are_read_as_one_table_on_shared_examples(two_runs):
    out = load_runs(*two_runs)
    assert out.groupby("method").size().to_dict() == {"generic": 4, "rag": 3}
    t = comparison_table(out, ["generic"], baseline="rag")
    assert list(t["method"]) == ["rag", "generic"] and set(t["n"]) == {3}
    # the paired difference is the mean of per-example differences on the shared examples
    w = out[out["id"].isin(out.loc[out["method"] == "rag", "id"])].pivot(index="id", columns="method", values="rouge1")
    g = t.set_index("method").loc["generic"]
    assert g["diff_vs_rag"] == pytest.approx(float((w["generic"] - w["rag"]).mean()))
    assert g["diff_lo_vs_rag"] <= g["diff_vs_rag"] <= g["diff_hi_vs_rag"]
    assert g["wins_vs_rag"] + g["ties_vs_rag"] + g["losses_vs_rag"] == 3
    assert "| generic | 3 |" in format_table(t)
    assert per_user(out, ["rag", "generic"]).shape[1] == 2
    assert len(paired_figure(t).data) == 1 and len(per_user_figure(per_user(out, ["rag", "generic"])).data) == 1


def test_runs_that_are_not_comparable_are_refused(tiny, news, two_runs, tmp_path):
    run_bench(tiny, news, ["generic"], tmp_path, n=2, settings=GenerationSettings(max_new_tokens=7), progress=False)
    with pytest.raises(ValueError, match="settings"):
        load_runs(two_runs[0], tmp_path)
    with pytest.raises(FileNotFoundError, match="run.json"):
        load_runs(tmp_path / "nothing-here")
    with pytest.raises(ValueError, match="no outputs for"):
        comparison_table(load_runs(two_runs[0]), ["generic", "dps"], baseline="generic")


def test_a_clash_between_runs_is_an_error(two_runs, tmp_path):
    a, _ = two_runs
    clone = tmp_path / "clone"
    clone.mkdir()
    (clone / "run.json").write_text((a / "run.json").read_text())
    recs = [json.loads(line) for line in (a / "outputs.jsonl").read_text().splitlines()]
    recs[0]["prediction"] = "something else"
    (clone / "outputs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    with pytest.raises(ValueError, match="different outputs"):
        load_runs(a, clone)


def test_saved_results_keep_no_gold_and_join_it_back(two_runs, news, tmp_path):
    out = load_runs(*two_runs)
    path = save_results(out, tmp_path / "r.csv", {"model": "tiny-random", "commands": ["x"]})
    assert "gold" not in pd.read_csv(path).columns
    with pytest.raises(FileExistsError):
        save_results(out, path, {})
    back = load_results(path, dataset=news)
    assert back.attrs["source"]["model"] == "tiny-random"
    gold = {ex.id: ex.gold for ex in news}
    assert all(back["gold"] == back["id"].map(gold))
    assert np.allclose(back.sort_values(["method", "id"])["rouge1"], out.sort_values(["method", "id"])["rouge1"])
    with pytest.raises(ValueError, match="not in"):
        load_results(path, dataset=news[5:8])


def test_best_covered_keeps_the_methods_with_the_most_examples_and_names_the_rest():
    rows = [{"method": m, "id": str(i), "user_id": "u", "prediction": "x", "rouge1": 0.1}
            for m, n in [("rag", 5), ("generic", 5), ("slow", 2)] for i in range(n)]
    out = pd.DataFrame(rows)
    methods, behind = best_covered(out, ["generic", "slow", "rag", "absent"])
    assert methods == ["generic", "rag"] and behind == {"slow": 2}
    with pytest.raises(ValueError, match="none of"):
        best_covered(out, ["absent"])


def test_results_figure_gives_every_method_its_own_colour():
    # Plotly's default colorway repeats after 10 traces; the final table has 12 methods.
    from workbench.runner.figures import results_figure

    rng = np.random.default_rng(0)
    rows = [{"method": f"m{k}", "id": str(i), "user_id": f"u{i % 3}", "prediction": "x",
             "rouge1": float(rng.random()), "rougeL": float(rng.random()),
             "meteor": float(rng.random())} for k in range(12) for i in range(6)]
    table = comparison_table(pd.DataFrame(rows), [f"m{k}" for k in range(12)], baseline="m0")
    fig = results_figure(table)
    colours = [t.marker.color for t in fig.data]
    assert len(fig.data) == 12 and len(set(colours)) == 12


def test_length_control_separates_length_from_words():
    # tools/length_control.py: a baseline with the method's words plus extra ones loses only to
    # length, so cut to the method's length it ties every query; a baseline with other words
    # still loses after the cut.
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("length_control", Path(__file__).parents[1] / "tools" / "length_control.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    golds = {"a": "neural parsing of long documents", "b": "cross lingual transfer for tagging"}
    rows = []
    for i, gold in golds.items():
        rows += [{"method": "m", "id": i, "prediction": gold},
                 {"method": "long", "id": i, "prediction": gold + " with many more words after it"},
                 {"method": "other", "id": i, "prediction": "a survey of something else entirely here"}]
    out = tool.length_control(pd.DataFrame(rows), golds, "m", ["long", "other"]).set_index(["system", "cut"])
    cut = "to m's length"
    assert out.loc[("long", "none"), "delta_m"] > 0.2
    assert out.loc[("long", cut), "delta_m"] == pytest.approx(0.0)
    assert out.loc[("long", cut), "ties"] == 2
    assert out.loc[("long", cut), "words"] == pytest.approx(5.0)
    assert out.loc[("other", cut), "delta_m"] > 0.5 and out.loc[("other", cut), "wins"] == 2
    with pytest.raises(ValueError, match="no rows for"):
        tool.length_control(pd.DataFrame(rows), golds, "m", ["missing"])


def test_history_words_counts_only_the_authors_words_the_input_lacks():
    # tools/history_words.py, by hand: the author's earlier titles hold "lexical" and "parsing";
    # the input holds "parsing", so only "lexical" (and no stop word) is history-only. The gold
    # uses it: "echo" repeats it (a hit), "input" uses only input words (no hit), "wrong" uses a
    # history-only word the gold lacks.
    import importlib.util
    from pathlib import Path

    from workbench.data.records import Example

    spec = importlib.util.spec_from_file_location("history_words", Path(__file__).parents[1] / "tools" / "history_words.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    profile = ({"title": "Lexical cues for parsing", "abstract": "x"}, {"title": "Parsing with the crowd", "abstract": "y"})
    ex = Example(id="q1", user_id="u1", task="lamp5", input="Generate a title: we study parsing of news",
                 profile=profile, gold="Lexical parsing of news")
    assert tool.history_only_words(ex) == {"lexic", "cue", "crowd"}  # stemmed; "for", "with", "the" are stop words
    rows = [{"method": "input", "id": "q1", "prediction": "Parsing of news"},
            {"method": "echo", "id": "q1", "prediction": "Lexical cues: parsing news"},
            {"method": "wrong", "id": "q1", "prediction": "Crowd parsing"}]
    out = tool.history_words(pd.DataFrame(rows), {"q1": ex}, ["echo", "wrong"], baseline="input").set_index("system")
    assert out.loc["gold", "hits"] == 1  # "lexical"
    # "Parsing of news" scores F 6/7 against the gold; with "Lexical" appended it has all four words
    assert out.loc["gold", "rouge1_headroom_over_input"] == pytest.approx(1 - 6 / 7)
    assert out.loc["echo", "history_words"] == 2 and out.loc["echo", "hits"] == 1
    assert out.loc["echo", "precision"] == pytest.approx(0.5) and out.loc["echo", "recall"] == pytest.approx(1.0)
    assert out.loc["echo", "delta_hits_vs_input"] == 1 and out.loc["echo", "wins"] == 1
    assert out.loc["wrong", "history_words"] == 1 and out.loc["wrong", "hits"] == 0
    assert out.loc["wrong", "ties"] == 1 and out.loc["input", "history_words"] == 0
    with pytest.raises(ValueError, match="no rows for"):
        tool.history_words(pd.DataFrame(rows), {"q1": ex}, ["missing"], baseline="input")


def test_history_words_pools_tables_and_refuses_a_method_that_differs_between_them(tmp_path):
    # a task's table and its comparison file both hold `rag`: pooled when the same run, refused otherwise
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("history_words", Path(__file__).parents[1] / "tools" / "history_words.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    ids = ["50002", "50005"]  # LaMP-5 queries of the shipped data
    main = pd.DataFrame([{"method": m, "id": i, "prediction": f"{m} title {i}"} for m in ("rag", "dps") for i in ids])
    main.to_csv(tmp_path / "t.csv", index=False)
    main[main.method == "rag"].assign(method="rag").to_csv(tmp_path / "same.csv", index=False)
    other = main[main.method == "rag"].assign(prediction="another title")
    other.to_csv(tmp_path / "other.csv", index=False)
    common = ["--task", "lamp5", "--methods", "dps", "--baseline", "rag"]
    out = tmp_path / "h.csv"
    assert tool.main([str(tmp_path / "t.csv"), str(tmp_path / "same.csv"), *common, "--out", str(out)]) == 0
    assert set(pd.read_csv(out)["system"]) == {"gold", "dps", "rag"} and (tmp_path / "h.json").exists()
    assert tool.main([str(tmp_path / "t.csv"), str(tmp_path / "same.csv"), *common, "--out", str(out)]) == 1  # kept
    assert tool.main([str(tmp_path / "t.csv"), str(tmp_path / "other.csv"), *common]) == 2
