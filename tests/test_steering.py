"""Vector injection on the tiny random Llama."""

from __future__ import annotations

import pytest
import torch

import workbench as wb
from workbench.core.steering import SITES
from conftest import all_hook_handles


def vec(model, seed=1, norm=8.0):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(model.d_model, generator=g)
    return norm * v / v.norm()


@torch.no_grad()
def greedy_without_cache(model, ids, n):
    """Reference decoder: a full forward per step, no KV cache."""
    for _ in range(n):
        nxt = model.bridge(ids)[0, -1].argmax()
        ids = torch.cat([ids, nxt.view(1, 1)], dim=-1)
    return ids


def test_zero_vector_changes_nothing(tiny, tiny_ids):
    with torch.no_grad():
        base = tiny.bridge(tiny_ids)
        for site in SITES:
            with wb.steer(tiny, torch.zeros(tiny.d_model), layer=1, site=site, scale=5.0):
                assert torch.equal(tiny.bridge(tiny_ids), base)
    plain = tiny.generate(tiny_ids, max_new_tokens=8)
    with wb.steer(tiny, torch.zeros(tiny.d_model), layer=0):
        assert tiny.generate(tiny_ids, max_new_tokens=8) == plain


def test_steering_changes_logits_and_scale_is_linear(tiny, tiny_ids):
    v = vec(tiny)
    name = "blocks.0.hook_resid_post"
    _, base = tiny.bridge.run_with_cache(tiny_ids, names_filter=name)
    with wb.steer(tiny, v, layer=0, scale=2.5):
        _, steered = tiny.bridge.run_with_cache(tiny_ids, names_filter=name)
    torch.testing.assert_close(steered[name] - base[name], (2.5 * v).expand_as(base[name]), atol=1e-5, rtol=1e-5)


def test_sites_land_where_named(tiny, tiny_ids):
    v = vec(tiny)
    with torch.no_grad():
        with wb.steer(tiny, v, layer=0, site="resid_post"):
            a = tiny.bridge(tiny_ids)
        with wb.steer(tiny, v, layer=1, site="resid_pre"):
            b = tiny.bridge(tiny_ids)
        with wb.steer(tiny, v, layer=1, site="attn_out"):
            c = tiny.bridge(tiny_ids)
        with wb.steer(tiny, v, layer=1, site="resid_mid"):
            d = tiny.bridge(tiny_ids)
        with wb.steer(tiny, v, layer=1, site="mlp_out"):
            e = tiny.bridge(tiny_ids)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)  # resid_post of L == resid_pre of L+1
    torch.testing.assert_close(c, d, atol=1e-5, rtol=1e-5)  # attn_out lands in resid_mid
    assert not torch.allclose(d, e, atol=1e-4)  # after the MLP is a different place


def test_resid_mid_moves_the_residual_stream_not_just_the_mlp_input(tiny, tiny_ids):
    v = vec(tiny)
    mid, post = "blocks.1.hook_resid_mid", "blocks.1.hook_resid_post"
    _, base = tiny.bridge.run_with_cache(tiny_ids, names_filter=[mid, post])
    with wb.steer(tiny, v, layer=1, site="resid_mid"):
        _, steered = tiny.bridge.run_with_cache(tiny_ids, names_filter=[mid, post])
    torch.testing.assert_close(steered[mid] - base[mid], v.expand_as(base[mid]), atol=1e-5, rtol=1e-5)
    # the skip connection carries v on to the block output (plus whatever the MLP adds)
    mlp_change = (steered[post] - base[post] - v).norm(dim=-1)
    assert (mlp_change < (steered[post] - base[post]).norm(dim=-1)).all()


def test_several_vectors_compose(tiny, tiny_ids):
    v1, v2 = vec(tiny, 1), vec(tiny, 2)
    with torch.no_grad():
        with wb.steer(tiny, v1, layer=0), wb.steer(tiny, v2, layer=0, scale=-0.5):
            nested = tiny.bridge(tiny_ids)
        with wb.steer(tiny, v1 - 0.5 * v2, layer=0):
            summed = tiny.bridge(tiny_ids)
    torch.testing.assert_close(nested, summed, atol=1e-5, rtol=1e-5)


def test_positions_limit_the_injection(tiny, tiny_ids):
    with torch.no_grad():
        base = tiny.bridge(tiny_ids)
        with wb.steer(tiny, vec(tiny), layer=0, positions=[4]):
            steered = tiny.bridge(tiny_ids)
    changed = (steered - base).abs().amax(-1)[0] > 1e-6
    assert not changed[:4].any() and changed[4:].all()  # causal: position 4 and later


def test_steering_during_cached_generation_matches_uncached(tiny, tiny_ids):
    v, n = vec(tiny, norm=20.0), 8
    plen = tiny_ids.shape[-1]
    for positions in (None, slice(plen, None), [plen + 2]):
        with wb.steer(tiny, v, layer=0, positions=positions):
            cached = tiny.generate_tokens(tiny_ids, max_new_tokens=n)
        # Reference: no cache; every step re-runs the full sequence with the same hook.
        steer = wb.steer(tiny, v, layer=0, positions=positions)
        with torch.no_grad(), tiny.bridge.hooks(fwd_hooks=steer.hooks):
            ref = greedy_without_cache(tiny, tiny_ids, n)[0, plen:]
        assert torch.equal(cached, ref[: len(cached)]), positions
    with wb.steer(tiny, v, layer=0):
        steered = tiny.generate_tokens(tiny_ids, max_new_tokens=n)
    assert not torch.equal(steered, tiny.generate_tokens(tiny_ids, max_new_tokens=n))


def test_hooks_are_removed_after_an_exception(tiny, tiny_ids):
    before = all_hook_handles(tiny)
    base = tiny.bridge(tiny_ids)
    for positions in (None, [2]):
        with pytest.raises(KeyError):
            with wb.steer(tiny, vec(tiny), layer=1, positions=positions):
                assert all_hook_handles(tiny) > before
                raise KeyError("boom")
        assert all_hook_handles(tiny) == before
    assert torch.equal(tiny.bridge(tiny_ids), base)


def test_bad_input_gives_clear_errors(tiny):
    with pytest.raises(ValueError, match="d_model=64"):
        wb.steer(tiny, torch.ones(65), layer=0)
    with pytest.raises(ValueError, match="d_model=64"):
        wb.steer(tiny, torch.ones(2, 64), layer=0)
    with pytest.raises(ValueError, match=r"layers 0\.\.1"):
        wb.steer(tiny, torch.ones(64), layer=2)
    with pytest.raises(ValueError, match="resid_post"):
        wb.steer(tiny, torch.ones(64), layer=0, site="residual")
    with pytest.raises(ValueError, match="NaN"):
        wb.steer(tiny, torch.full((64,), float("nan")), layer=0)
    with pytest.raises(ValueError, match="absolute"):
        wb.steer(tiny, torch.ones(64), layer=0, positions=[-1])


def test_repr_is_readable(tiny):
    r = repr(wb.steer(tiny, torch.ones(64), layer=1, site="mlp_out", scale=3))
    assert "blocks.1.hook_mlp_out" in r and "scale=3" in r


def test_a_steer_of_several_vectors_refuses_to_name_one_layer(tiny):
    # like SteeringVector.layer: the first of several entries would be a silent half-truth
    both = wb.steer(tiny, torch.ones(tiny.d_model), layer=0) + wb.steer(tiny, torch.ones(tiny.d_model), layer=1)
    one = wb.steer(tiny, torch.ones(tiny.d_model), layer=1, scale=2)
    assert (one.layer, one.scale, one.site) == (1, 2.0, "resid_post")
    vector = wb.SteeringVector({(0, "resid_pre"): torch.ones(tiny.d_model), (1, "resid_pre"): torch.ones(tiny.d_model)},
                               model=tiny.name)
    for steer_ in [vector.apply(tiny)] + ([both] if hasattr(both, "entries") else []):
        with pytest.raises(ValueError, match=r"adds 2 vectors.*\.entries"):
            steer_.layer  # noqa: B018
    with pytest.raises(ValueError, match=r"scale=nan must be a finite number"):
        wb.steer(tiny, torch.ones(tiny.d_model), layer=0, scale=float("nan"))
    with pytest.raises(ValueError, match=r"scale='2' must be a number"):
        wb.steer(tiny, torch.ones(tiny.d_model), layer=0, scale="2")
