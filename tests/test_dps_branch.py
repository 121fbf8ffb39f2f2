"""DPS runs the layers below the lowest masked head once and branches there: the same tokens
as running both streams through every layer."""

from __future__ import annotations

import pytest
import torch

import workbench as wb
from workbench.science.dps import dps_generate

from conftest import all_hook_handles

PROMPTS = ["the cat sat on the mat in the city of paris", "paris is a city of the tower and the dog"]


@pytest.mark.parametrize("heads", [[(1, 2)], [(1, 0), (1, 3)], {(1, 1): 0.5}, [(0, 1), (1, 2)]])
@pytest.mark.parametrize("alpha", [1.0, "entropy"])
def test_branching_gives_the_same_tokens(tiny, heads, alpha):
    for prompt in PROMPTS:
        kw = dict(alpha=alpha, max_new_tokens=10, details=True)
        one = dps_generate(tiny, prompt, heads, branch=True, **kw)
        ref = dps_generate(tiny, prompt, heads, branch=False, **kw)
        assert one.tokens == ref.tokens
        assert one.steps["alpha"].tolist() == pytest.approx(ref.steps["alpha"].tolist(), abs=1e-4)
        assert one.steps["logp_masked"].tolist() == pytest.approx(ref.steps["logp_masked"].tolist(), abs=1e-4)
    assert all_hook_handles(tiny) == 0


def test_branching_with_sampling_and_an_outer_steering_vector(tiny):
    vector = torch.randn(tiny.d_model, generator=torch.Generator().manual_seed(1)) * 4
    with wb.steer(tiny, vector, layer=0, scale=1.0):
        for sample in (False, True):
            kw = dict(alpha=1.0, max_new_tokens=10, do_sample=sample, seed=3 if sample else None, details=True)
            one = dps_generate(tiny, PROMPTS[0], [(1, 2)], branch=True, **kw)
            ref = dps_generate(tiny, PROMPTS[0], [(1, 2)], branch=False, **kw)
            assert one.tokens == ref.tokens
    assert all_hook_handles(tiny) == 0


def test_the_masked_stream_really_differs_when_branched(tiny):
    # a check that could fail: if the branch lost the mask, the masked stream would equal the intact one
    out = dps_generate(tiny, PROMPTS[0], [(1, 0), (1, 1), (1, 2), (1, 3)], alpha=1.0, max_new_tokens=6,
                       details=True, branch=True)
    assert (out.steps["logp_full"] - out.steps["logp_masked"]).abs().max() > 1e-3


@pytest.mark.real
def test_branching_gives_the_same_tokens_on_smollm2(smol):
    from workbench.data.lamp import load_lamp4_news
    from workbench.data.prompts import build_prompt

    news = load_lamp4_news()
    for ex, heads in [(news[0], [(16, 1), (25, 3)]), (news[40], [(3, 4), (20, 2)])]:
        prompt, _ = build_prompt(smol, ex, k=3, reserve=24)
        one = dps_generate(smol, prompt, heads, alpha=1.0, plausibility=0.1, max_new_tokens=24, branch=True)
        ref = dps_generate(smol, prompt, heads, alpha=1.0, plausibility=0.1, max_new_tokens=24, branch=False)
        assert one == ref and one
