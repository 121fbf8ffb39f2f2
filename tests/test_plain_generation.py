"""Greedy generation runs the original Hugging Face modules (no hook points) when nothing is
hooked or only steering vectors and head masks are (their hooks run there as torch hooks): the
same tokens as the bridge, which still runs whenever anyone else's hook is attached."""

from __future__ import annotations

import pytest
import torch

from workbench.data.lamp import load_lamp4_news
from workbench.core.heads import mask_heads
from workbench.data.prompts import build_prompt, first_line_complete
from workbench.core.steering import steer

PROMPTS = ["the cat sat on the mat in the city of paris", "a dog ran", "in the morning the market"]


def _identity(model):
    """A hook that changes nothing but forces the bridge path."""
    return model.bridge.hooks(fwd_hooks=[(f"blocks.{model.n_layers - 1}.hook_resid_post", lambda x, hook: x)])


def _bridge_calls(model, monkeypatch) -> list:
    calls: list = []
    real = model.bridge.generate
    monkeypatch.setattr(model.bridge, "generate", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_unhooked_greedy_generation_skips_the_bridge_with_the_same_tokens(tiny, monkeypatch):
    calls = _bridge_calls(tiny, monkeypatch)
    for prompt in PROMPTS:
        ids = tiny.encode(prompt)
        plain = tiny.generate_tokens(ids, 16)
        assert calls == []
        with _identity(tiny):
            bridged = tiny.generate_tokens(ids, 16)
        assert len(calls) == 1 and bridged.tolist() == plain.tolist()
        calls.clear()
        # the early stop behaves the same on both paths
        seen: list = []
        cut = tiny.generate_tokens(ids, 16, until=lambda t: seen.append(t) or len(seen) == 4)
        assert calls == [] and cut.tolist() == plain[:4].tolist()


def test_the_view_shares_the_weights(tiny):
    view = tiny._plain_view()
    assert view is not None
    own = {id(p) for p in tiny.bridge.parameters()}
    assert all(id(p) in own for p in view.parameters())
    assert sum(p.numel() for p in view.parameters()) == sum(p.numel() for p in tiny.bridge.original_model.parameters())
    # no bridge component or hook point is left in it
    assert not any(type(m).__name__.endswith(("Bridge", "HookPoint")) for m in view.modules())


def test_steering_and_masking_run_on_the_view_with_the_bridges_tokens(tiny, monkeypatch):
    ids = tiny.encode(PROMPTS[0])
    plain = tiny.generate_tokens(ids, 12)
    calls = _bridge_calls(tiny, monkeypatch)
    vector = torch.randn(tiny.d_model, generator=torch.Generator().manual_seed(0))
    for intervention in (steer(tiny, vector, layer=1, scale=8.0), steer(tiny, vector, layer=0, positions=slice(4, None)),
                         mask_heads(tiny, [(0, 0), (1, 1), (1, 2)]), mask_heads(tiny, {(0, 1): 0.5}, how="uniform")):
        with intervention:
            fast = tiny.generate_tokens(ids, 12)
            assert calls == []
            with _identity(tiny):  # anyone else's hook: the bridge runs, the intervention's hooks too
                bridged = tiny.generate_tokens(ids, 12)
        assert len(calls) == 1 and fast.tolist() == bridged.tolist()
        calls.clear()
    with steer(tiny, vector, layer=1, scale=8.0):
        assert tiny.generate_tokens(ids, 12).tolist() != plain.tolist()
    # a plain PyTorch hook of the user's on a bridge component counts too
    handle = tiny.bridge.blocks[0].register_forward_hook(lambda mod, args, out: None)
    try:
        tiny.generate_tokens(ids, 4)
    finally:
        handle.remove()
    assert len(calls) == 1
    # sampling keeps TransformerLens' sampler (seeded draws stay what they were)
    tiny.generate_tokens(ids, 4, do_sample=True, seed=1)
    assert len(calls) == 2
    # the hooks TransformerLens wires for itself during a hooked run don't block the plain path later
    tiny.generate_tokens(ids, 4)
    assert len(calls) == 2
    # a hook on a Hugging Face module the plain path runs too fires there, so it keeps that path
    seen: list = []
    handle = tiny.bridge.blocks[1].original_component.register_forward_hook(lambda mod, args, out: seen.append(1))
    try:
        tiny.generate_tokens(ids, 4)
    finally:
        handle.remove()
    assert len(calls) == 2 and len(seen) >= 1


@pytest.mark.real
def test_plain_generation_gives_the_bridges_tokens_on_real_prompts(smol, monkeypatch):
    calls = _bridge_calls(smol, monkeypatch)
    for ex in list(load_lamp4_news())[:4]:
        prompt, _ = build_prompt(smol, ex, k=5, reserve=32)
        ids = smol.encode(prompt)
        plain = smol.generate_tokens(ids, 32, until=first_line_complete)
        with _identity(smol):
            bridged = smol.generate_tokens(ids, 32, until=first_line_complete)
        assert plain.tolist() == bridged.tolist() and len(plain) > 3
    assert len(calls) == 4
