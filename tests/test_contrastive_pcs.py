"""Contrastive PCS: a head's share of the personalization gain, not of fluency in general."""

from __future__ import annotations

import numpy as np
import pytest

from workbench.data.records import Example
from workbench.methods import GenerationSettings, make_methods
from workbench.science.pcs import ScoringExample, preference_scores
from workbench.science.pcs_result import PreferenceScores
from workbench.science.pcs_result import heatmaps

from conftest import all_hook_handles

PROFILE = ({"id": "1", "text": "the cat sat on the mat", "title": "cats in paris"},
           {"id": "2", "text": "the dog is in the city", "title": "the tower of cats"})
EXAMPLES = [Example("q1", "u1", "lamp4", "paris is a city of the tower", PROFILE, "the cat is on the mat"),
            Example("q2", "u2", "lamp4", "the dog sat in paris", PROFILE, "a city of dogs")]


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_history_contrast_is_personal_minus_no_history(tiny, mode):
    contrast = preference_scores(tiny, EXAMPLES, contrast="history", mode=mode, k=2, progress=False)
    plain = preference_scores(tiny, EXAMPLES, mode=mode, k=2, progress=False)
    bare = preference_scores(tiny, EXAMPLES, mode=mode, k=0, progress=False)  # the same targets, no history
    np.testing.assert_allclose(contrast.per_example, plain.per_example - bare.per_example, atol=1e-5)
    assert np.abs(contrast.matrix).max() > 1e-4 and contrast.meta["contrast"] == "history"
    assert "contrastive PCS (history)" in repr(contrast) and "plain PCS" in repr(plain)
    assert all_hook_handles(tiny) == 0
    # the two halves make the same scores (dps and bench_specificity build them so)
    halves = plain.minus_no_history(bare)
    np.testing.assert_allclose(halves.per_example, contrast.per_example, atol=1e-5)
    assert halves.kind == contrast.kind and halves.top(3) == contrast.top(3)
    assert halves.meta["seconds"] == pytest.approx(plain.meta["seconds"] + bare.meta["seconds"], abs=0.01)


def test_contrast_from_halves_refuses_halves_that_do_not_match(tiny):
    plain = preference_scores(tiny, EXAMPLES, k=2, progress=False)
    bare = preference_scores(tiny, EXAMPLES, k=0, progress=False)
    other = preference_scores(tiny, EXAMPLES[:1], k=0, progress=False)
    with pytest.raises(ValueError, match="differ in"):
        plain.minus_no_history(other)  # other examples
    with pytest.raises(ValueError, match="k=0"):
        plain.minus_no_history(plain)  # the history is in both halves
    with pytest.raises(ValueError, match="scored with the history"):
        bare.minus_no_history(bare)  # the history is in neither (the difference would be all zeros)
    with pytest.raises(ValueError, match="plain scores"):
        plain.minus_no_history(bare).minus_no_history(bare)


def test_generic_contrast_scores_the_models_own_output(tiny):
    from workbench.data.prompts import build_prompt, generate_line

    scores = preference_scores(tiny, EXAMPLES[:1], contrast="generic", k=2, progress=False)
    ex = EXAMPLES[0]
    prompt, _ = build_prompt(tiny, ex, k=2, reserve=0)
    generic = generate_line(tiny, build_prompt(tiny, ex, k=0, reserve=0)[0], max_new_tokens=32)
    own = preference_scores(tiny, [(prompt, ex.gold)], progress=False)
    other = preference_scores(tiny, [(prompt, generic)], progress=False)
    np.testing.assert_allclose(scores.per_example[0], own.per_example[0] - other.per_example[0], atol=1e-5)


def test_contrast_needs_its_counterpart(tiny):
    with pytest.raises(ValueError, match="base_prompt"):
        preference_scores(tiny, [ScoringExample("a", "u", "the cat", "sat")], contrast="history", progress=False)
    with pytest.raises(ValueError, match="generic_target"):
        preference_scores(tiny, [("the cat", "sat")], contrast="generic", progress=False)
    with pytest.raises(ValueError, match="contrast="):
        preference_scores(tiny, EXAMPLES, contrast="users", progress=False)


def test_contrast_is_saved_and_shown_side_by_side(tiny, tmp_path):
    plain = preference_scores(tiny, EXAMPLES, mode="fast", k=2, progress=False)
    contrast = preference_scores(tiny, EXAMPLES, mode="fast", k=2, contrast="history", progress=False)
    back = PreferenceScores.load(contrast.save(tmp_path / "c.json"), model=tiny)
    assert back.meta["contrast"] == "history" and back.kind == contrast.kind
    fig = heatmaps(plain, contrast)
    assert len(fig.data) == 2 and "contrastive" in fig.layout.annotations[1].text


def test_dps_refuses_heads_of_another_kind(tiny, tmp_path):
    path = preference_scores(tiny, EXAMPLES, mode="fast", k=2, contrast="history", progress=False).save(tmp_path / "h.json")
    dps = make_methods(["dps"], GenerationSettings())[0]
    dps.heads_file = str(path)
    dps.contrast = "generic"
    with pytest.raises(ValueError, match="dps.contrast"):
        dps.prepare_run(tiny, EXAMPLES, None)
    for contrast in ("history", None):  # None: the file's kind, as it is
        dps.contrast = contrast
        dps.prepare_run(tiny, EXAMPLES, None)
        assert dps.heads == dps.scores.top_percent(dps.top_percent)


def test_dps_heads_come_from_the_whole_dataset_and_saved_scores_are_reused(tiny, tmp_path, monkeypatch):
    import workbench.methods.dps as dps_mod
    from workbench.data.lamp import load_lamp4_news
    from workbench.data.history import profile_examples

    news = load_lamp4_news()
    items = profile_examples(news, n=2)
    saved = preference_scores(tiny, items, mode="exact", progress=False, data="profile leave-one-out")
    saved.save(tmp_path / "pcs_news_tiny.json")
    monkeypatch.setenv("WORKBENCH_RESULTS", str(tmp_path))
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    assert dps_mod.saved_scores(tiny, items, k=5, retrieval="bm25", contrast=None) is not None
    assert dps_mod.saved_scores(tiny, items[:1], k=5, retrieval="bm25", contrast=None) is None  # other examples
    assert dps_mod.saved_scores(tiny, items, k=3, retrieval="bm25", contrast=None) is None  # other settings

    def no_compute(*a, **k):
        raise AssertionError("the saved scores should have been used")

    monkeypatch.setattr("workbench.science.pcs.preference_scores", no_compute)
    for cut in (news[:2], news.filter(lambda ex: ex.user_id == news[5].user_id)):  # any cut of the data: same heads
        dps = make_methods(["dps"], GenerationSettings())[0]
        dps.pcs_examples = 2
        dps.prepare_run(tiny, list(cut), cut)
        np.testing.assert_allclose(dps.scores.per_example, saved.per_example, atol=1e-6)


def test_saved_scores_of_another_task_with_the_same_ids_are_not_reused(tiny, tmp_path, monkeypatch):
    # LaMP-2N holds LaMP-4's authors and articles: its history examples have the same ids and
    # users, but score a category, not a headline. Reusing LaMP-4's heads for it was a real bug.
    import workbench.methods.dps as dps_mod
    from workbench.data.lamp import load_task_data
    from workbench.data.history import profile_examples

    news, categories = load_task_data("lamp4"), load_task_data("lamp2n")
    items, labelled = profile_examples(news, n=2), profile_examples(categories, n=2)
    assert [ex.id for ex in items] == [ex.id for ex in labelled]  # the trap: same ids
    assert [ex.gold for ex in items] != [ex.gold for ex in labelled]
    preference_scores(tiny, items, mode="exact", progress=False).save(tmp_path / "pcs_news_tiny.json")
    monkeypatch.setenv("WORKBENCH_RESULTS", str(tmp_path))
    assert dps_mod.saved_scores(tiny, items, k=5, retrieval="bm25", contrast=None) is not None
    assert dps_mod.saved_scores(tiny, labelled, k=5, retrieval="bm25", contrast=None) is None


def test_dps_contrastive_heads_reuse_the_plain_half(tiny, tmp_path, monkeypatch):
    # contrast="history" is plain minus no-history on the same targets: with the plain scores
    # cached (dps with plain heads ran before), only the no-history half is computed — and the
    # result is what the direct contrastive computation gives.
    import workbench.methods.dps as dps_mod
    import workbench.science.pcs as pcs_mod
    from workbench.data.lamp import load_lamp4_news
    from workbench.data.history import profile_examples

    monkeypatch.setenv("WORKBENCH_RESULTS", str(tmp_path / "none"))
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    news = list(load_lamp4_news())
    plain = dps_mod.cached_profile_scores(tiny, news, n=2, progress=False)
    calls = []
    real = pcs_mod.preference_scores

    def counted(*a, **k):
        calls.append(k.get("k"))
        return real(*a, **k)

    monkeypatch.setattr(pcs_mod, "preference_scores", counted)
    contrastive = dps_mod.cached_profile_scores(tiny, news, n=2, progress=False, contrast="history")
    assert calls == [0]  # the no-history half only
    direct = real(tiny, profile_examples(news, n=2), mode="exact", contrast="history", progress=False)
    np.testing.assert_allclose(contrastive.per_example, direct.per_example, atol=1e-5)
    assert contrastive.meta["contrast"] == "history" and contrastive.meta["scored"] == plain.meta["scored"]
    assert dps_mod.cached_profile_scores(tiny, news, n=2, progress=False, contrast="history").meta == contrastive.meta
    assert calls == [0]  # cached from now on
