"""The real embedded model, SmolLM2-135M-Instruct, loaded offline from its GGUF package."""

from __future__ import annotations

import warnings

import pytest
import torch

import workbench as wb
from workbench.core.loading import load_hf

pytestmark = pytest.mark.real

PROMPT = "What is the capital of France? Answer in one sentence."


def test_loads_offline_with_the_documented_shape(smol):
    assert (smol.n_layers, smol.n_heads, smol.n_kv_heads, smol.d_model, smol.d_head) == (30, 9, 3, 576, 64)
    assert smol.has_chat_template and smol.n_ctx == 8192


def test_chat_generation_returns_text(smol):
    out = smol.generate(PROMPT, max_new_tokens=24)
    assert isinstance(out, str) and len(out.split()) >= 3
    assert "Paris" in out
    assert out == smol.generate(PROMPT, max_new_tokens=24)  # greedy is deterministic


def test_bridge_logits_match_the_raw_hf_model(smol, smol_cache, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(smol_cache))
    hf, _, _ = load_hf("smollm2-135m", device="cpu")
    ids = smol.encode(PROMPT)
    with torch.no_grad():
        ours = smol.bridge(ids)
        raw = hf(ids).logits
    # the bridge runs eager attention, HF defaults to sdpa: equal up to float rounding
    torch.testing.assert_close(ours, raw, atol=2e-3, rtol=1e-4)
    assert (ours[0, -1].argmax() == raw[0, -1].argmax()).item()


def test_cached_reload_gives_identical_logits(smol, smol_cache, monkeypatch, no_network):
    monkeypatch.setenv("WORKBENCH_CACHE", str(smol_cache))
    assert (smol_cache / "models" / "smollm2-135m" / "model.safetensors").exists()
    again = wb.load_model("smollm2-135m", device="cpu")
    ids = smol.encode(PROMPT)
    with torch.no_grad():
        assert torch.equal(again.bridge(ids), smol.bridge(ids))


def test_corrupt_cache_is_rebuilt_not_used(smol, smol_cache, monkeypatch, no_network):
    monkeypatch.setenv("WORKBENCH_CACHE", str(smol_cache))
    weights = smol_cache / "models" / "smollm2-135m" / "model.safetensors"
    with open(weights, "r+b") as f:  # flip bytes in the middle of the tensor data
        f.seek(weights.stat().st_size // 2)
        f.write(b"\xff" * 64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rebuilt = wb.load_model("smollm2-135m", device="cpu", progress=False)
    assert any("rebuilding" in str(w.message) for w in caught)
    ids = smol.encode(PROMPT)
    with torch.no_grad():
        assert torch.equal(rebuilt.bridge(ids), smol.bridge(ids))


def test_head_mask_changes_the_greedy_output(smol):
    base = smol.generate(PROMPT, max_new_tokens=16)
    early = [(layer, h) for layer in range(2) for h in range(smol.n_heads)]
    for how in ("zero", "uniform"):
        with wb.mask_heads(smol, early, how=how):
            masked = smol.generate(PROMPT, max_new_tokens=16)
        assert masked and masked != base, how
    assert smol.generate(PROMPT, max_new_tokens=16) == base  # and it is gone afterwards


def test_steering_vector_changes_the_greedy_output(smol):
    base = smol.generate(PROMPT, max_new_tokens=16)
    g = torch.Generator().manual_seed(0)
    v = torch.randn(smol.d_model, generator=g)
    with wb.steer(smol, 50 * v / v.norm(), layer=15):
        steered = smol.generate(PROMPT, max_new_tokens=16)
    assert steered and steered != base
    assert smol.generate(PROMPT, max_new_tokens=16) == base
