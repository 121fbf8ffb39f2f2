"""Head masking on the tiny random Llama (4 query heads over 2 KV heads, so GQA is covered)."""

from __future__ import annotations

import pytest
import torch

import workbench as wb
from workbench.core.heads import head_means
from conftest import all_hook_handles


@torch.no_grad()
def run(model, ids, hooks=()):
    return model.bridge.run_with_hooks(ids, fwd_hooks=list(hooks))


@torch.no_grad()
def z_of(model, ids, layer, mask=None):
    name = f"blocks.{layer}.attn.hook_z"
    if mask is None:
        _, cache = model.bridge.run_with_cache(ids, names_filter=name)
    else:
        with mask:
            _, cache = model.bridge.run_with_cache(ids, names_filter=name)
    return cache[name][0]  # [pos, head, d_head]


def test_logits_change_only_when_a_head_is_masked(tiny, tiny_ids):
    base = run(tiny, tiny_ids)
    for unmasked in ([], {(1, 2): 0.0}, {(0, 0): 0.0, (1, 3): 0.0}):
        with wb.mask_heads(tiny, unmasked):
            assert torch.equal(tiny.bridge(tiny_ids), base)
    for layer in range(tiny.n_layers):
        for head in range(tiny.n_heads):
            for how in ("zero", "uniform"):
                with wb.mask_heads(tiny, [(layer, head)], how=how):
                    masked = tiny.bridge(tiny_ids)
                assert not torch.allclose(masked, base, atol=1e-6), (layer, head, how)


def test_mask_is_causal_in_depth(tiny, tiny_ids):
    """Masking a head in layer 1 leaves everything below layer 1 untouched."""
    name = "blocks.1.hook_resid_pre"
    _, before = tiny.bridge.run_with_cache(tiny_ids, names_filter=name)
    with wb.mask_heads(tiny, [(1, 0)]):
        _, after = tiny.bridge.run_with_cache(tiny_ids, names_filter=name)
    assert torch.equal(before[name], after[name])


def test_masking_every_head_of_a_layer_equals_zeroing_its_attention_output(tiny, tiny_ids):
    for layer in range(tiny.n_layers):
        all_heads = [(layer, h) for h in range(tiny.n_heads)]
        with torch.no_grad(), wb.mask_heads(tiny, all_heads, how="zero"):
            masked = tiny.bridge(tiny_ids)
        zeroed = run(tiny, tiny_ids, [(f"blocks.{layer}.hook_attn_out", lambda x, hook: torch.zeros_like(x))])
        torch.testing.assert_close(masked, zeroed, atol=1e-6, rtol=0)


def test_uniform_mask_outputs_the_running_mean_of_the_values(tiny, tiny_ids):
    layer = 1
    group = tiny.n_heads // tiny.n_kv_heads  # query heads per KV head
    _, cache = tiny.bridge.run_with_cache(tiny_ids, names_filter=f"blocks.{layer}.attn.hook_v")
    v = cache[f"blocks.{layer}.attn.hook_v"][0]  # [pos, kv_head, d_head]
    running_mean = v.cumsum(0) / torch.arange(1, v.shape[0] + 1)[:, None, None]
    for head in range(tiny.n_heads):
        z = z_of(tiny, tiny_ids, layer, wb.mask_heads(tiny, [(layer, head)], how="uniform"))
        torch.testing.assert_close(z[:, head], running_mean[:, head // group], atol=1e-5, rtol=1e-5)
        # the other heads, including the one sharing this KV head, are untouched
        z_base = z_of(tiny, tiny_ids, layer)
        others = [h for h in range(tiny.n_heads) if h != head]
        assert torch.equal(z[:, others], z_base[:, others])


def test_gqa_query_heads_are_masked_individually(tiny, tiny_ids):
    assert tiny.n_kv_heads < tiny.n_heads
    z_base = z_of(tiny, tiny_ids, 0)
    z = z_of(tiny, tiny_ids, 0, wb.mask_heads(tiny, [(0, 1)], how="zero"))
    assert torch.count_nonzero(z[:, 1]) == 0
    assert torch.equal(z[:, [0, 2, 3]], z_base[:, [0, 2, 3]])  # head 0 shares head 1's KV head


def test_partial_mask_interpolates(tiny, tiny_ids):
    z_base = z_of(tiny, tiny_ids, 1)
    z = z_of(tiny, tiny_ids, 1, wb.mask_heads(tiny, {(1, 2): 0.25}, how="zero"))
    torch.testing.assert_close(z[:, 2], 0.75 * z_base[:, 2])
    with torch.no_grad():
        with wb.mask_heads(tiny, {(1, 2): 1.0}):
            full_w = tiny.bridge(tiny_ids)
        with wb.mask_heads(tiny, [(1, 2)]):
            full_l = tiny.bridge(tiny_ids)
    assert torch.equal(full_w, full_l)


def test_mean_mask_uses_the_reference_mean(tiny, tiny_ids):
    reference = ["the dog sat in the city", "a cat is on the mat"]
    means = head_means(tiny, reference)
    assert means.shape == (tiny.n_layers, tiny.n_heads, tiny.d_head)
    z = z_of(tiny, tiny_ids, 0, wb.mask_heads(tiny, [(0, 3)], how="mean", reference=reference))
    torch.testing.assert_close(z[:, 3], means[0, 3].expand_as(z[:, 3]))
    z_half = z_of(tiny, tiny_ids, 0, wb.mask_heads(tiny, {(0, 3): 0.5}, how="mean", reference=means))
    z_base = z_of(tiny, tiny_ids, 0)
    torch.testing.assert_close(z_half[:, 3], 0.5 * z_base[:, 3] + 0.5 * means[0, 3], atol=1e-6, rtol=1e-5)


def test_hook_list_matches_context_manager(tiny, tiny_ids):
    mask = wb.mask_heads(tiny, {(0, 1): 1.0, (1, 3): 0.5}, how="uniform")
    with torch.no_grad(), mask:
        ctx = tiny.bridge(tiny_ids)
    assert torch.equal(run(tiny, tiny_ids, mask.hooks), ctx)


def test_nested_masks_compose_and_unwind(tiny, tiny_ids):
    with torch.no_grad():
        with wb.mask_heads(tiny, [(0, 1), (1, 2)]):
            both = tiny.bridge(tiny_ids)
        with wb.mask_heads(tiny, [(0, 1)]):
            outer_only = tiny.bridge(tiny_ids)
            with wb.mask_heads(tiny, [(1, 2)]):
                nested = tiny.bridge(tiny_ids)
            after_inner = tiny.bridge(tiny_ids)
    assert torch.equal(nested, both)
    assert torch.equal(after_inner, outer_only)


def test_hooks_are_removed_after_an_exception(tiny, tiny_ids):
    before = all_hook_handles(tiny)
    base = run(tiny, tiny_ids)
    for how in ("zero", "uniform"):
        with pytest.raises(RuntimeError, match="boom"):
            with wb.mask_heads(tiny, [(0, 0), (1, 1)], how=how):
                assert all_hook_handles(tiny) > before
                raise RuntimeError("boom")
        assert all_hook_handles(tiny) == before
    assert torch.equal(run(tiny, tiny_ids), base)


def test_bad_input_gives_clear_errors(tiny):
    with pytest.raises(ValueError, match=r"layers 0\.\.1"):
        wb.mask_heads(tiny, [(2, 0)])
    with pytest.raises(ValueError, match=r"heads 0\.\.3"):
        wb.mask_heads(tiny, [(0, 4)])
    with pytest.raises(ValueError, match=r"layers 0\.\.1"):
        wb.mask_heads(tiny, [(-1, 0)])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        wb.mask_heads(tiny, {(0, 0): 1.5})
    with pytest.raises(ValueError, match="reference"):
        wb.mask_heads(tiny, [(0, 0)], how="mean")
    with pytest.raises(ValueError, match="zero"):
        wb.mask_heads(tiny, [(0, 0)], how="ablate")
    with pytest.raises(ValueError, match="pair"):
        wb.mask_heads(tiny, [3])


def test_repr_is_readable(tiny):
    r = repr(wb.mask_heads(tiny, {(0, 1): 1.0, (1, 3): 0.5}, how="uniform"))
    assert "L0H1" in r and "L1H3@0.5" in r and "uniform" in r
