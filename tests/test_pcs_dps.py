"""Preference Contribution Scores and Differential Preference Steering."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench.science.dps import dps_generate
from workbench.core.heads import mask_heads
from workbench.science.pcs import preference_scores, rank_agreement, sparsity_curve
from workbench.data.history import profile_examples
from workbench.science.pcs_result import PreferenceScores

from conftest import all_hook_handles

PAIRS = [("the cat sat on the mat", "the dog sat in paris"), ("paris is a city of the tower", "the cat is on the mat")]


def _nll_masked_from_scratch(model, prompt, target, heads, how, scope):
    """Reference: NLL of target with the mask applied everywhere, or only from the last prompt token on."""
    ids, start = model.prompt_and_target(prompt, target)
    with torch.no_grad():
        if scope == "all":
            with mask_heads(model, heads, how=how):
                logits = model.bridge(ids)
        else:
            # mask only positions >= start-1, by masking a second pass that reuses nothing
            def only_late(fn):
                def hook(x, hook):
                    y = fn(x, hook)
                    out = x.clone()
                    out[:, start - 1:] = y[:, start - 1:]
                    return out
                return hook
            mask = mask_heads(model, heads, how=how)
            logits = model.bridge.run_with_hooks(ids, fwd_hooks=[(n, only_late(f)) for n, f in mask.hooks])
    lp = logits[0, start - 1:-1].log_softmax(-1).gather(-1, ids[0, start:, None])
    return float(-lp.mean())


@pytest.mark.parametrize("scope", ["all", "output"])
@pytest.mark.parametrize("how", ["zero", "uniform"])
def test_exact_pcs_matches_masking_from_scratch(tiny, scope, how):
    scores = preference_scores(tiny, PAIRS, how=how, scope=scope, mode="exact", progress=False)
    assert scores.per_example.shape == (2, tiny.n_layers, tiny.n_heads)
    for i, (prompt, target) in enumerate(PAIRS):
        base = tiny.nll(prompt, target)
        for layer, head in [(0, 1), (1, 3)]:
            ref = _nll_masked_from_scratch(tiny, prompt, target, [(layer, head)], how, scope) - base
            assert scores.per_example[i, layer, head] == pytest.approx(ref, abs=2e-5)
    assert all_hook_handles(tiny) == 0


def test_exact_equals_naive_and_fast_tracks_exact(tiny):
    exact = preference_scores(tiny, PAIRS, how="zero", scope="all", mode="exact", progress=False)
    naive = preference_scores(tiny, PAIRS, how="zero", scope="all", mode="naive", progress=False)
    fast = preference_scores(tiny, PAIRS, how="zero", scope="all", mode="fast", progress=False)
    np.testing.assert_allclose(exact.per_example, naive.per_example, atol=1e-5)
    assert exact.frame["pcs"].abs().max() > 1e-3  # the tiny model's heads do matter
    assert np.corrcoef(exact.matrix.ravel(), fast.matrix.ravel())[0, 1] > 0.8
    # fast mode leaves no gradients or hooks behind
    assert all(p.grad is None for p in tiny.bridge.parameters())
    assert all_hook_handles(tiny) == 0


def test_mean_masking_needs_reference(tiny):
    with pytest.raises(ValueError, match="reference"):
        preference_scores(tiny, PAIRS, how="mean", progress=False)
    s = preference_scores(tiny, PAIRS[:1], how="mean", reference=["the cat sat", "paris is a city"],
                          scope="all", progress=False)
    assert np.isfinite(s.matrix).all()


def test_bad_arguments_are_named(tiny):
    with pytest.raises(ValueError, match="scope"):
        preference_scores(tiny, PAIRS, scope="prompt", progress=False)
    with pytest.raises(ValueError, match="mode"):
        preference_scores(tiny, PAIRS, mode="slow", progress=False)
    with pytest.raises(ValueError, match="no examples"):
        preference_scores(tiny, [], progress=False)


def test_scores_selection_save_load(tiny, tmp_path):
    scores = preference_scores(tiny, PAIRS, how="zero", scope="all", progress=False)
    ranked = scores.frame.sort_values("pcs", ascending=False)
    top = scores.top(3)
    assert top == [(int(r.layer), int(r.head)) for r in ranked.head(3).itertuples()]
    assert len(scores.top_percent(25)) == 2  # 25% of 8 heads
    with pytest.raises(ValueError, match="percentage"):
        scores.top_percent(0)
    with pytest.raises(ValueError, match="between 1"):
        scores.top(99)
    w = scores.weights(3)
    assert max(w.values()) == 1.0 and all(0 <= v <= 1 for v in w.values())
    path = scores.save(tmp_path / "s.json")
    with pytest.raises(FileExistsError):
        scores.save(path)
    back = PreferenceScores.load(path, model=tiny)
    np.testing.assert_allclose(back.matrix, scores.matrix, atol=1e-6)
    assert back.meta["how"] == "zero" and back.meta["model"] == tiny.name
    with pytest.raises(ValueError, match="not of 'smollm2-135m'"):
        PreferenceScores.load(path, model="smollm2-135m")
    fig = scores.heatmap()
    assert fig.data[0].z.shape == (tiny.n_layers, tiny.n_heads)
    assert "PCS" in fig.data[0].hovertemplate
    assert "top:" in repr(scores) and "<table" in scores._repr_html_()


def test_profile_examples_leave_one_out(tmp_path):
    from workbench.data.lamp import load_lamp4_news

    ds = load_lamp4_news()
    ex = profile_examples(ds, n=12)
    assert len(ex) == 12
    assert len({e.user_id for e in ex}) == 12  # round-robin: one per user first
    for e in ex:
        user_titles = {it["title"] for q in ds if q.user_id == e.user_id for it in q.profile}
        assert e.gold in user_titles
        assert e.gold not in {it["title"] for it in e.profile}  # its own item is held out
        assert e.gold not in {q.gold for q in ds}  # never an evaluation gold


def test_sparsity_curve_and_agreement(tiny):
    scores = preference_scores(tiny, PAIRS, how="zero", scope="all", progress=False)
    curve = sparsity_curve(tiny, PAIRS, scores, max_k=3, n_random=2, progress=False)
    assert set(curve["kind"]) == {"top", "random"}
    assert len(curve) == 3 * (1 + 2)
    top1 = curve[(curve.kind == "top") & (curve.k == 1)]["delta_nll"].item()
    assert top1 == pytest.approx(scores.matrix.max(), abs=1e-5)
    agree = rank_agreement(scores, scores, k=3)
    assert agree["spearman"] == pytest.approx(1.0) and agree["top3_overlap"] == 1.0


# ---- DPS ---------------------------------------------------------------------------------

@pytest.mark.parametrize("mask_prompt", [False, True])
def test_dps_alpha_zero_is_greedy(tiny, mask_prompt):
    for prompt in ["the cat sat on the mat", "paris is a city of"]:
        plain = tiny.generate_tokens(tiny.encode(prompt), 12).tolist()
        out = dps_generate(tiny, prompt, [(0, 1), (1, 2)], alpha=0, max_new_tokens=12, mask_prompt=mask_prompt,
                           details=True)
        assert out.tokens == plain
        assert not out.steps["changed"].any()
    assert all_hook_handles(tiny) == 0


def test_dps_scores_follow_the_formula(tiny):
    prompt, heads, alpha = "the cat sat on the mat", [(0, 0), (1, 1), (1, 3)], 2.0
    out = dps_generate(tiny, prompt, heads, alpha=alpha, max_new_tokens=1, mask_prompt=True, details=True)
    ids = tiny.encode(prompt)
    with torch.no_grad():
        full = tiny.bridge(ids)[0, -1].log_softmax(-1)
        with mask_heads(tiny, heads, how="uniform"):
            masked = tiny.bridge(ids)[0, -1].log_softmax(-1)
    expected = int(((1 + alpha) * full - alpha * masked).argmax())
    assert out.steps["token"][0] == tiny.tokenizer.decode([expected])
    assert out.steps["logp_masked"][0] == pytest.approx(float(masked[expected]), abs=1e-4)


def test_dps_weighted_sampling_and_errors(tiny):
    a = dps_generate(tiny, "the cat", {(0, 1): 0.5, (1, 2): 1.0}, alpha="entropy", max_new_tokens=8,
                     do_sample=True, seed=3, top_p=0.9)
    b = dps_generate(tiny, "the cat", {(0, 1): 0.5, (1, 2): 1.0}, alpha="entropy", max_new_tokens=8,
                     do_sample=True, seed=3, top_p=0.9)
    assert a == b  # a seed makes sampling repeatable
    with pytest.raises(ValueError, match="empty"):
        dps_generate(tiny, "the cat", [], alpha=1.0)
    with pytest.raises(ValueError, match=">= 0"):
        dps_generate(tiny, "the cat", [(0, 1)], alpha=-1.0)
    with pytest.raises(ValueError, match="out of range"):
        dps_generate(tiny, "the cat", [(5, 1)], alpha=1.0)
    assert all_hook_handles(tiny) == 0


def test_dps_method_in_bench(tiny, tmp_path, monkeypatch):
    from workbench.runner.bench import run_bench
    from workbench.data.lamp import load_lamp4_news

    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    ds = load_lamp4_news()[:3]
    res = run_bench(tiny, ds, ["rag", "dps"], tmp_path / "run", progress=False)
    assert set(res.outputs["method"]) == {"rag", "dps"}
    dps_rows = res.outputs[res.outputs["method"] == "dps"]
    assert dps_rows["heads"].str.match(r"^L\d+H\d+").all()
    assert list((tmp_path / "cache" / "pcs").rglob("*.json"))  # heads are cached for the next run
    import json

    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["method_settings"]["dps"]["top_percent"] == 2.0 and info["method_settings"]["dps"]["alpha"] == 1.0


# ---- on the real model ----------------------------------------------------------------------

@pytest.mark.real
def test_real_exact_pcs_equals_naive_and_dps_alpha0(smol):
    from workbench.data.lamp import load_lamp4_news

    ex = profile_examples(load_lamp4_news(), n=1, k=2)
    # full sweeps are the benchmark's job; a few heads at both ends of the model here
    from workbench.science.pcs import _Scorer, _scoring_examples

    item = _scoring_examples(smol, ex, 2, "bm25")[0]
    with torch.no_grad():
        for scope in ("all", "output"):
            fast_path, slow_path = _Scorer(smol, item, scope), _Scorer(smol, item, scope, reuse=False)
            for head in [(2, 3), (17, 0), (29, 8)]:
                m = mask_heads(smol, [head], how="uniform")
                assert fast_path.masked(m) - fast_path.base == pytest.approx(slow_path.masked(m) - slow_path.base, abs=1e-4)
    prompt = "Write a headline for this article: The city council voted to expand bike lanes downtown."
    assert dps_generate(smol, prompt, [(17, 0), (20, 4)], alpha=0, max_new_tokens=16) == smol.generate(prompt, 16)
    assert all_hook_handles(smol) == 0


def test_dps_plausibility_constraint(tiny):
    # beta = 1 leaves only the intact model's top token: greedy decoding whatever alpha is
    prompt = "the cat sat on the mat"
    plain = tiny.generate(prompt, max_new_tokens=10)
    assert dps_generate(tiny, prompt, [(0, 1), (1, 2)], alpha=5.0, plausibility=1.0, max_new_tokens=10) == plain
    with pytest.raises(ValueError, match="plausibility"):
        dps_generate(tiny, prompt, [(0, 1)], plausibility=0.0)
    from workbench.methods import available_methods

    assert {"dps", "dps-raw"} <= set(available_methods())
