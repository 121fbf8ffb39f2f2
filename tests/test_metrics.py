"""Metric values against hand-checked cases."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from workbench import metrics


def test_rouge_by_hand():
    assert metrics.score_generation("The Cat Sat", "the cat sat")["rouge1"] == pytest.approx(1.0)
    # pred "the cat sat" vs gold "the cat ran away": P = 2/3, R = 2/4 -> F = 4/7
    s = metrics.score_generation("the cat sat", "the cat ran away")
    assert s["rouge1"] == pytest.approx(4 / 7)
    # LCS "the cat away" (3) vs pred 4 words, gold 4 words -> F = 3/4
    assert metrics.score_generation("the cat went away", "the cat ran away")["rougeL"] == pytest.approx(0.75)
    assert metrics.score_generation("dogs", "cats")["rouge1"] == 0.0


def test_meteor_matches_the_reference_value():
    ok, why = metrics.meteor_available()
    assert ok, f"METEOR needs WordNet ({why}); install.sh installs it"
    # value from nltk with WordNet 3.0 (shared/research/offline_metrics.md)
    got = metrics.meteor("a cat was sitting on the mat", "the cat sat on the mat")
    assert got == pytest.approx(0.6148, abs=1e-4)
    assert metrics.meteor("the cat sat on the mat", "the cat sat on the mat") > 0.99


def test_meteor_is_nan_with_a_warning_when_wordnet_is_missing(monkeypatch):
    monkeypatch.setattr(metrics, "meteor_available", lambda: (False, "WordNet is not installed; run `apt-get ...`"))
    with pytest.warns(UserWarning, match="METEOR not computed"):
        s = metrics.score_generation("a b", "a b")
    assert math.isnan(s["meteor"]) and s["rouge1"] == pytest.approx(1.0)


def test_bootstrap_interval_is_deterministic_and_brackets_the_mean():
    x = np.arange(100) / 100
    mean, lo, hi = metrics.bootstrap_ci(x, seed=1)
    assert mean == pytest.approx(0.495) and lo < mean < hi
    assert metrics.bootstrap_ci(x, seed=1) == (mean, lo, hi)
    assert metrics.bootstrap_ci([0.5] * 10) == (0.5, 0.5, 0.5)
    assert metrics.bootstrap_ci([1.0, float("nan"), 3.0])[0] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="NaN"):
        metrics.bootstrap_ci([float("nan")])


def test_summarize_groups_by_method():
    df = pd.DataFrame({"method": ["a", "a", "b", "b"], "rouge1": [0.0, 1.0, 0.5, 0.5],
                       "rougeL": [0.0, 1.0, 0.5, 0.5], "meteor": [float("nan")] * 4})
    s = metrics.summarize(df).set_index("method")
    assert s.loc["a", "rouge1"] == 0.5 and s.loc["b", "rouge1_lo"] == 0.5 and s.loc["a", "n"] == 2
    assert math.isnan(s.loc["a", "meteor"])


def test_classification_and_rating_metrics_by_hand():
    assert metrics.accuracy(["a", "b", "c"], ["a", "b", "x"]) == pytest.approx(2 / 3)
    # class a: tp1 fp1 fn0 -> 2/3; class b: tp1 fp0 fn1 -> 2/3
    assert metrics.macro_f1(["a", "a", "b"], ["a", "b", "b"]) == pytest.approx(2 / 3)
    assert metrics.mae([1, 2, 5], [1, 3, 3]) == pytest.approx(1.0)
    assert metrics.rmse([1, 2, 5], [1, 3, 3]) == pytest.approx(math.sqrt(5 / 3))
