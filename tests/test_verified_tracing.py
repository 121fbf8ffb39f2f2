"""Verified token effects: a cheap estimate ranks every token, the largest are deleted for real."""

from __future__ import annotations

import numpy as np
import pytest

from workbench.science.tracing import trace_tokens

from test_tracing import USER, prompt_of


@pytest.mark.parametrize("generic", [None, "the city"])
def test_verified_entries_are_exact_and_the_rest_the_estimate(tiny, generic):
    prompt = prompt_of(tiny)
    kw = dict(items=USER["profile"], generic_target=generic, progress=False)
    exact = trace_tokens(tiny, prompt, USER["gold"], mode="exact", **kw)
    attn = trace_tokens(tiny, prompt, USER["gold"], mode="attn", **kw)
    verified = trace_tokens(tiny, prompt, USER["gold"], mode="verified", verify=4, selection="estimate", **kw)
    size = attn.frame["effect"].abs()
    if generic:
        size = size + attn.frame["effect_diff"].abs()
    want = set(size.sort_values(ascending=False, kind="stable").index[:4])
    got = set(verified.frame.index[verified.frame["exact"]])
    assert got == want and len(got) == 4
    cols = ["effect"] + (["effect_generic", "effect_diff"] if generic else [])
    for col in cols:
        ref = np.where(verified.frame["exact"], exact.frame[col], attn.frame[col])
        np.testing.assert_allclose(verified.frame[col], ref, atol=1e-5)
    assert verified.meta["estimate"] == "attn" and verified.meta["n_exact"] == 4

    # adaptive (the default): half the budget on the largest estimates, the rest next to
    # verified tokens (before/after or the same word); every verified entry is exact
    adaptive = trace_tokens(tiny, prompt, USER["gold"], mode="verified", verify=6, **kw)
    f = adaptive.frame
    rows = set(np.flatnonzero(f["exact"]))
    assert len(rows) == 6 and adaptive.meta["selection"] == "adaptive"
    assert set(size.sort_values(ascending=False, kind="stable").index[:3]) <= rows
    for r in rows - set(size.sort_values(ascending=False, kind="stable").index[:3]):
        near = {r - 1, r + 1} | (set(np.flatnonzero(f["word"] == f["word"][r])) if f["word"][r] >= 0 else set())
        assert near & (rows - {r}), f"row {r} was verified without a verified neighbour"
    for col in cols:
        ref = np.where(f["exact"], exact.frame[col], attn.frame[col])
        np.testing.assert_allclose(f[col], ref, atol=1e-5)


def test_verified_everything_is_exact_and_it_is_shown(tiny):
    prompt = prompt_of(tiny)
    exact = trace_tokens(tiny, prompt, USER["gold"], items=USER["profile"], mode="exact", progress=False)
    every = trace_tokens(tiny, prompt, USER["gold"], items=USER["profile"], mode="verified", verify=len(exact),
                         estimate="gxi", progress=False)
    np.testing.assert_allclose(every.frame["effect"], exact.frame["effect"], atol=1e-5)
    some = trace_tokens(tiny, prompt, USER["gold"], items=USER["profile"], mode="verified", verify=0.25, progress=False)
    assert some.frame["exact"].sum() == int(np.ceil(0.25 * len(some)))
    assert "deleted for real" in some.html() and "(exact)" in some.html()
    assert any(t.name == "exact (verified)" for t in some.figure().data)


@pytest.mark.parametrize("bad", [dict(verify=0), dict(verify=2.5), dict(verify=float("nan")), dict(estimate="exact"),
                                 dict(selection="random")])
def test_bad_verified_settings_are_clear_errors(tiny, bad):
    with pytest.raises(ValueError, match="verify|estimate|selection"):
        trace_tokens(tiny, prompt_of(tiny), USER["gold"], items=USER["profile"], mode="verified", progress=False, **bad)


def test_saturation_fix_adds_up_the_gate_gradient_and_reweights_it(tiny):
    # Per (layer, head, query) terms with weight 1 must add up to the plain gate gradient; the
    # 1/(1-p) weights (each >= 1) then change the sum.
    import torch
    from tqdm import tqdm

    from workbench.science import tracing

    ids = tiny.encode(prompt_of(tiny))
    target = tiny.tokenizer(USER["gold"], add_special_tokens=False, return_tensors="pt").input_ids
    pos = list(range(2, ids.shape[1] - 2))
    bar = tqdm(disable=True)
    plain = tracing._gate_gradient(tiny, ids, target, pos, "mean", [1.0], 1, bar)
    summed = tracing._gate_saturation(tiny, ids, target, pos, "mean", [1.0], 1, bar, correct=False)
    fixed = tracing._gate_saturation(tiny, ids, target, pos, "mean", [1.0], 1, bar)
    np.testing.assert_allclose(summed, plain, atol=1e-6)
    assert not np.allclose(fixed, plain, atol=1e-6)
    with torch.no_grad():
        traced = trace_tokens(tiny, prompt_of(tiny), USER["gold"], items=USER["profile"], mode="attn-sat", progress=False)
    assert traced.meta["mode"] == "attn-sat" and np.isfinite(traced.frame["effect"]).all()
