"""Metric values against hand-checked cases (offline; METEOR needs Debian's WordNet)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest

from workbench.data import metrics

needs_wordnet = pytest.mark.skipif(
    not (metrics.DEBIAN_WORDNET / "index.sense").exists(), reason=f"WordNet missing: {metrics.WORDNET_INSTALL}")


def test_rouge_by_hand():
    s = metrics.score_generation("The Cat Sat", "the cat sat")
    assert s["rouge1"] == pytest.approx(1.0) and s["rougeL"] == pytest.approx(1.0)
    # pred "the cat sat" vs gold "the cat ran away": P = 2/3, R = 2/4 -> F = 2PR/(P+R) = 4/7
    assert metrics.score_generation("the cat sat", "the cat ran away")["rouge1"] == pytest.approx(4 / 7)
    # LCS "the cat away" (3) vs pred 4 words, gold 4 words -> F = 3/4
    assert metrics.score_generation("the cat went away", "the cat ran away")["rougeL"] == pytest.approx(0.75)
    # the stemmer makes "running" match "run"
    assert metrics.score_generation("running", "run")["rouge1"] == pytest.approx(1.0)
    assert metrics.score_generation("dogs", "cats")["rouge1"] == 0.0
    assert metrics.score_generation("", "cats")["rougeL"] == 0.0
    with pytest.raises(TypeError, match="gold"):
        metrics.score_generation("x", None)


def test_meteor_tokenizer():
    assert metrics.meteor_tokenize("Hi, you're 2nd!") == ["hi", ",", "you", "'", "re", "2nd", "!"]


@needs_wordnet
def test_meteor_matches_the_reference_value():
    status = metrics.meteor_available()
    assert status, f"METEOR needs WordNet ({status.reason})"
    ok, why = status
    assert ok and "3.0" in why
    from nltk.translate.meteor_score import meteor_score

    # value from nltk with WordNet 3.0 (shared/research/offline_metrics.md)
    ref, hyp = ["the", "cat", "sat", "on", "the", "mat"], ["a", "cat", "was", "sitting", "on", "the", "mat"]
    assert meteor_score([ref], hyp) == pytest.approx(0.6148, abs=1e-4)
    assert metrics.meteor("a cat was sitting on the mat", "the cat sat on the mat") == pytest.approx(0.6148, abs=1e-4)
    assert metrics.meteor("the cat sat on the mat", "the cat sat on the mat") > 0.99
    assert metrics.score_generation("The cat sat on the mat.", "the cat sat on the mat.")["meteor"] > 0.99


@needs_wordnet
def test_wordnet_copy_is_built_once_and_complete(tmp_path):
    target = metrics.build_nltk_wordnet(tmp_path / "nltk_data")
    wn = target / "corpora" / "wordnet"
    assert {"data.noun", "index.noun", "index.sense", "verb.exc", "lexnames"} <= {p.name for p in wn.iterdir()}
    lines = (wn / "lexnames").read_text().splitlines()
    assert len(lines) == 45 and lines[0] == "00\tadj.all\t3" and lines[3] == "03\tnoun.Tops\t1"
    assert lines[29] == "29\tverb.body\t2" and lines[44] == "44\tadj.ppl\t3"
    stamp = (wn / "lexnames").stat().st_mtime_ns
    metrics.build_nltk_wordnet(target)  # already there: nothing is rewritten
    assert (wn / "lexnames").stat().st_mtime_ns == stamp
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".nltk-build-")]  # no temp dirs left
    with pytest.raises(FileNotFoundError, match="apt-get install"):
        metrics.build_nltk_wordnet(tmp_path / "other", source=tmp_path / "no-wordnet")


@needs_wordnet
def test_meteor_builds_its_wordnet_copy_in_an_empty_cache(tmp_path, monkeypatch):
    import nltk
    from nltk.corpus import wordnet

    assert metrics.meteor_available()  # loads the real WordNet once (several seconds)
    calls = []

    def not_on_the_path_yet():  # as in a fresh process where NLTK finds no WordNet of its own
        calls.append(1)
        if len(calls) == 1:
            raise LookupError("Resource wordnet not found.")

    monkeypatch.setattr(wordnet, "ensure_loaded", not_on_the_path_yet)
    monkeypatch.setattr(nltk.data, "path", list(nltk.data.path))
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    metrics._meteor_status.cache_clear()
    try:
        status = metrics.meteor_available()
        assert status and str(tmp_path) in status.reason and len(calls) == 2
        assert (tmp_path / "nltk_data" / "corpora" / "wordnet" / "lexnames").exists()
        assert str(tmp_path / "nltk_data") in nltk.data.path
    finally:
        metrics._meteor_status.cache_clear()  # later tests see the real state again


def test_meteor_unavailable_without_wordnet_says_what_to_install(tmp_path, monkeypatch):
    from nltk.corpus import wordnet

    def nowhere():
        raise LookupError("Resource wordnet not found.")

    monkeypatch.setattr(wordnet, "ensure_loaded", nowhere)
    monkeypatch.setattr(metrics, "DEBIAN_WORDNET", tmp_path / "no-wordnet")
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    metrics._meteor_status.cache_clear()
    try:
        status = metrics.meteor_available()
        assert not status and metrics.WORDNET_INSTALL in status.reason
        assert not (tmp_path / "cache" / "nltk_data").exists()
    finally:
        metrics._meteor_status.cache_clear()


def test_meteor_is_nan_with_a_warning_when_wordnet_is_missing(monkeypatch):
    status = metrics.MeteorStatus(False, f"WordNet is not installed; run `{metrics.WORDNET_INSTALL}`")
    assert not status  # falsy, so `if metrics.meteor_available():` works
    monkeypatch.setattr(metrics, "meteor_available", lambda: status)
    with pytest.warns(UserWarning, match="METEOR not computed.*apt-get install -y wordnet-base wordnet-sense-index"):
        s = metrics.score_generation("a b", "a b")
    assert math.isnan(s["meteor"]) and s["rouge1"] == pytest.approx(1.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        df = metrics.score_many(["a b", "c", "d"], ["a b", "c", "e"])
    assert len(caught) == 1 and "wordnet-base" in str(caught[0].message)  # one warning for the table
    assert df["meteor"].isna().all() and list(df["rouge1"]) == [1.0, 1.0, 0.0]


def test_score_many_shape():
    df = metrics.score_many(["the cat", "a dog"], ["the cat", "the cat"])
    assert df.shape == (2, 3) and list(df.columns) == ["rouge1", "rougeL", "meteor"]
    assert df.loc[0, "rouge1"] == pytest.approx(1.0) and df.loc[1, "rouge1"] == 0.0
    with pytest.raises(ValueError, match="2 predictions but 1 golds"):
        metrics.score_many(["a", "b"], ["a"])


def test_bootstrap_interval_is_deterministic_and_brackets_the_mean():
    x = np.arange(100) / 100
    mean, lo, hi = metrics.bootstrap_ci(x, seed=1)
    assert mean == pytest.approx(0.495) and lo < mean < hi
    # the standard error is 0.029, so a 95% interval is about +-0.057
    assert 0.03 < mean - lo < 0.08 and 0.03 < hi - mean < 0.08
    assert metrics.bootstrap_ci(x, seed=1) == (mean, lo, hi)
    assert metrics.bootstrap_ci(x, seed=2) != (mean, lo, hi)
    narrow = metrics.bootstrap_ci(x, seed=1, ci=0.5)
    assert lo < narrow[1] < narrow[2] < hi
    assert metrics.bootstrap_ci([0.5] * 10) == (0.5, 0.5, 0.5)
    assert metrics.bootstrap_ci([1.0, float("nan"), 3.0])[0] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="NaN"):
        metrics.bootstrap_ci([float("nan"), float("nan")])
    with pytest.raises(ValueError, match="ci"):
        metrics.bootstrap_ci(x, ci=95)


def test_bootstrap_on_a_large_sample_stays_in_memory_bounds():
    x = np.random.default_rng(0).random(50_000)
    mean, lo, hi = metrics.bootstrap_ci(x, n_boot=200)
    assert lo < mean < hi and hi - lo < 0.01


def test_summarize_groups_by_method():
    df = pd.DataFrame({"method": ["a", "a", "b", "b"], "rouge1": [0.0, 1.0, 0.5, 0.5],
                       "rougeL": [0.0, 1.0, 0.5, 0.5], "meteor": [float("nan")] * 4})
    s = metrics.summarize(df)
    assert list(s["method"]) == ["a", "b"]
    s = s.set_index("method")
    assert s.loc["a", "rouge1"] == 0.5 and s.loc["a", "n"] == 2
    assert s.loc["a", "rouge1_lo"] <= 0.5 <= s.loc["a", "rouge1_hi"]
    assert s.loc["b", "rouge1_lo"] == s.loc["b", "rouge1_hi"] == 0.5
    assert math.isnan(s.loc["a", "meteor"]) and math.isnan(s.loc["a", "meteor_hi"])
    assert metrics.summarize(df).equals(metrics.summarize(df))  # deterministic
    with pytest.raises(KeyError, match="bleu"):
        metrics.summarize(df, metrics=["bleu"])


def test_classification_and_rating_metrics_by_hand():
    assert metrics.accuracy(["a", "b", "c"], ["a", "b", "x"]) == pytest.approx(2 / 3)
    assert metrics.accuracy([" 4", 5], ["4", "5"]) == 1.0  # compared as stripped strings
    # class a: tp1 fp1 fn0 -> 2/3; class b: tp1 fp0 fn1 -> 2/3
    assert metrics.macro_f1(["a", "a", "b"], ["a", "b", "b"]) == pytest.approx(2 / 3)
    # with a fixed label set, a class nobody predicted or needed counts as F1 = 0
    assert metrics.macro_f1(["a", "a", "b"], ["a", "b", "b"], labels=["a", "b", "c"]) == pytest.approx(4 / 9)
    assert metrics.macro_f1(["x", "x"], ["a", "a"]) == 0.0  # an off-list prediction is just wrong
    assert metrics.mae([1, 2, 5], [1, 3, 3]) == pytest.approx(1.0)
    assert metrics.rmse([1, 2, 5], [1, 3, 3]) == pytest.approx(math.sqrt(5 / 3))
    assert metrics.mae(["4", "2"], ["5", "2"]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="2 predictions but 1 golds"):
        metrics.mae([1, 2], [1])
    with pytest.raises(ValueError, match="numbers"):
        metrics.rmse(["four"], ["4"])
    with pytest.raises(ValueError, match="no examples"):
        metrics.accuracy([], [])
