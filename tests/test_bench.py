"""The benchmark runner on the tiny model with the real lamp4-news data."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from workbench import methods as wm
from workbench.runner.bench import format_summary, run_bench
from workbench.data.lamp import load_lamp, load_lamp4_news
from workbench.methods import GenerationSettings
from workbench.data.prompts import build_prompt


@pytest.fixture(scope="module")
def news():
    return load_lamp4_news()


def test_run_writes_outputs_table_and_chart(tiny, news, tmp_path):
    res = run_bench(tiny, news, ["generic", "rag"], tmp_path, n=3, settings=GenerationSettings(max_new_tokens=6),
                    progress=False)
    lines = [json.loads(l) for l in (tmp_path / "outputs.jsonl").read_text().splitlines()]
    assert len(lines) == 6 and {l["method"] for l in lines} == {"generic", "rag"}
    assert all({"prediction", "gold", "rouge1", "rougeL", "meteor", "seconds"} <= l.keys() for l in lines)
    table = pd.read_csv(tmp_path / "results.csv")
    assert list(table["method"]) == ["generic", "rag"] and set(table["n"]) == {3}
    assert {"rouge1_lo", "rouge1_hi", "meteor", "seconds_per_example"} <= set(table.columns)
    assert (tmp_path / "results.html").stat().st_size > 100_000
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["model"] == "tiny-random" and run["settings"]["max_new_tokens"] == 6 and run["n"] == 3
    assert "generic" in format_summary(res.summary)


def test_interrupted_run_resumes_without_recomputing(tiny, news, tmp_path, monkeypatch):
    settings = GenerationSettings(max_new_tokens=5)
    first = run_bench(tiny, news, ["generic"], tmp_path / "a", n=4, settings=settings, progress=False)
    # simulate an interruption: two finished lines and a third cut mid-write
    out = tmp_path / "b"
    out.mkdir()
    lines = (tmp_path / "a" / "outputs.jsonl").read_text().splitlines()
    (out / "outputs.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][:25])
    (out / "run.json").write_text((tmp_path / "a" / "run.json").read_text())
    calls = []
    original = wm.Generic.generate

    def counting(self, model, example, state):
        calls.append(example.id)
        return original(self, model, example, state)

    monkeypatch.setattr(wm.Generic, "generate", counting)
    resumed = run_bench(tiny, news, ["generic"], out, n=4, settings=settings, progress=False)
    assert calls == [news[2].id, news[3].id]
    key = ["id", "prediction", "rouge1"]
    pd.testing.assert_frame_equal(resumed.outputs.sort_values("id")[key].reset_index(drop=True),
                                  first.outputs.sort_values("id")[key].reset_index(drop=True))
    calls.clear()
    run_bench(tiny, news, ["generic"], out, n=4, settings=settings, progress=False)
    assert calls == []  # everything is done


def test_a_directory_with_other_settings_is_refused(tiny, news, tmp_path):
    run_bench(tiny, news, ["generic"], tmp_path, n=2, settings=GenerationSettings(max_new_tokens=4), progress=False)
    with pytest.raises(ValueError, match="different settings"):
        run_bench(tiny, news, ["generic"], tmp_path, n=2, settings=GenerationSettings(max_new_tokens=9), progress=False)
    other = news[1:4]  # not a prefix of the first run
    with pytest.raises(ValueError, match="example_ids"):
        run_bench(tiny, other, ["generic"], tmp_path, settings=GenerationSettings(max_new_tokens=4), progress=False)


def test_a_run_can_grow_in_steps_of_n(tiny, news, tmp_path):
    s = GenerationSettings(max_new_tokens=4)
    run_bench(tiny, news, ["generic"], tmp_path, n=2, settings=s, progress=False)
    grown = run_bench(tiny, news, ["generic"], tmp_path, n=4, settings=s, progress=False)
    assert list(grown.outputs["id"]) == [ex.id for ex in list(news)[:4]]
    part = run_bench(tiny, news, ["generic"], tmp_path, n=3, settings=s, progress=False)  # a prefix: read, not rerun
    assert len(part.outputs) == 3
    assert json.loads((tmp_path / "run.json").read_text())["n"] == 4  # the longer run is what the directory holds


def test_results_are_deterministic(tiny, news, tmp_path):
    s = GenerationSettings(max_new_tokens=6)
    a = run_bench(tiny, news, ["rag"], tmp_path / "a", n=3, settings=s, progress=False)
    b = run_bench(tiny, news, ["rag"], tmp_path / "b", n=3, settings=s, progress=False)
    assert list(a.outputs["prediction"]) == list(b.outputs["prediction"])


def test_truncation_is_reported_not_silent(tiny, news):
    # the tiny model's context is 512 tokens: 20 profile items can't all fit
    prompt, info = build_prompt(tiny, news[0], k=20, reserve=32)
    assert info["items_dropped"] > 0 and info["k_used"] == 20 - info["items_dropped"]
    assert tiny.encode(prompt).shape[-1] + 32 <= tiny.n_ctx
    _, full = build_prompt(tiny, news[0], k=0)
    assert full["items_dropped"] == 0 and not full["input_truncated"]


def test_bad_methods_and_empty_profiles_are_clear_errors(tiny, news, tmp_path):
    with pytest.raises(ValueError, match="available"):
        run_bench(tiny, news, ["nope"], tmp_path, n=1, progress=False)
    q = [{"id": "1", "input": "Generate a headline for the following article: x", "profile": []}]
    (tmp_path / "dev_questions.json").write_text(json.dumps(q))
    (tmp_path / "dev_outputs.json").write_text(json.dumps({"task": "LaMP_4", "golds": [{"id": "1", "output": "X"}]}))
    empty = load_lamp(tmp_path)
    with pytest.raises(ValueError, match="empty profile"):
        run_bench(tiny, empty, ["rag"], tmp_path / "out", progress=False)
