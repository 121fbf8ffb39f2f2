"""Verified PCS: the attribution estimate ranks every head, the heads it rates largest are
recomputed exactly, and the result says which entries are which."""

from __future__ import annotations

import numpy as np
import pytest

from workbench.data.records import Example
from workbench.science.pcs import preference_scores
from workbench.science.pcs_result import PreferenceScores

from conftest import all_hook_handles

PROFILE = ({"id": "1", "text": "the cat sat on the mat", "title": "cats in paris"},
           {"id": "2", "text": "the dog is in the city", "title": "the tower of cats"})
EXAMPLES = [Example("q1", "u1", "lamp4", "paris is a city of the tower", PROFILE, "the cat is on the mat"),
            Example("q2", "u2", "lamp4", "the dog sat in paris", PROFILE, "a city of dogs")]


@pytest.mark.parametrize("contrast", [None, "history"])
def test_verified_entries_are_exact_and_the_rest_are_the_estimate(tiny, contrast):
    kw = dict(k=2, progress=False, contrast=contrast)
    exact = preference_scores(tiny, EXAMPLES, mode="exact", **kw)
    fast = preference_scores(tiny, EXAMPLES, mode="fast", **kw)
    verified = preference_scores(tiny, EXAMPLES, mode="verified", verify=3, **kw)
    # the three heads the estimate rates largest in size, either sign
    order = np.argsort(-np.abs(fast.matrix).ravel(), kind="stable")[:3]
    want = {(int(j // tiny.n_heads), int(j % tiny.n_heads)) for j in order}
    marked = {(int(r.layer), int(r.head)) for r in verified.frame[verified.frame["exact"]].itertuples()}
    assert marked == want and len(marked) == 3
    for layer in range(tiny.n_layers):
        for head in range(tiny.n_heads):
            ref = exact if (layer, head) in want else fast
            np.testing.assert_allclose(verified.per_example[:, layer, head], ref.per_example[:, layer, head], atol=2e-5)
    assert verified.meta["mode"] == "verified" and all_hook_handles(tiny) == 0


def test_verifying_every_head_is_the_exact_sweep(tiny):
    exact = preference_scores(tiny, EXAMPLES, mode="exact", k=2, progress=False)
    everything = preference_scores(tiny, EXAMPLES, mode="verified", verify=tiny.n_layers * tiny.n_heads, k=2,
                                   progress=False)
    np.testing.assert_allclose(everything.per_example, exact.per_example, atol=2e-5)
    assert everything.frame["exact"].all()
    share = preference_scores(tiny, EXAMPLES, mode="verified", verify=0.25, k=2, progress=False)
    assert share.frame["exact"].sum() == int(np.ceil(0.25 * tiny.n_layers * tiny.n_heads))


def test_verified_scores_say_so_when_saved_shown_and_plotted(tiny, tmp_path):
    scores = preference_scores(tiny, EXAMPLES, mode="verified", verify=2, k=2, progress=False)
    back = PreferenceScores.load(scores.save(tmp_path / "v.json"), model=tiny)
    assert back.frame["exact"].tolist() == scores.frame["exact"].tolist()
    assert "2 heads exact" in back._repr_html_() and "mode=verified" in repr(back)
    fig = back.heatmap()
    marks = [t for t in fig.data if t.name == "exact (verified)"]
    assert len(marks) == 1 and len(marks[0].x) == 2
    plain = preference_scores(tiny, EXAMPLES, mode="fast", k=2, progress=False)
    assert "exact" not in plain.frame and all(t.name != "exact (verified)" for t in plain.heatmap().data)


@pytest.mark.parametrize("bad", [0, -1, 1.5, float("nan"), True, "half"])
def test_bad_verify_is_a_clear_error(tiny, bad):
    with pytest.raises(ValueError, match="verify"):
        preference_scores(tiny, EXAMPLES, mode="verified", verify=bad, k=2, progress=False)
