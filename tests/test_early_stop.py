"""Decoding stops once the first line is complete, with the same output as decoding everything."""

from __future__ import annotations

import pytest
import torch

from workbench.data.lamp import load_lamp4_news
from workbench.science.dps import dps_generate
from workbench.data.prompts import build_prompt, first_line, first_line_complete, generate_line
from workbench.core.steering import steer


@pytest.mark.parametrize("text, done", [
    ("", False), ("   ", False), ("\n\n", False), ("A headline", False), ("A headline\n", True),
    ("\n  \nA headline", False), ("\n  \nA headline\r", True), ("A headline\u2028more", True),
    ("  \t\nTitle: x\nsecond", True),
])
def test_first_line_complete(text, done):
    assert first_line_complete(text) is done
    if done:  # nothing appended can change the first line any more
        assert first_line(text + "more words\nand lines") == first_line(text)


def test_until_stops_early_and_keeps_the_tokens_before(tiny):
    ids = tiny.encode("the cat sat on the mat in the city of paris")
    full = tiny.generate_tokens(ids, 24)
    seen = []

    def until(text):
        seen.append(text)
        return len(seen) == 5

    cut = tiny.generate_tokens(ids, 24, until=until)
    assert len(full) >= 5 and cut.tolist() == full[:5].tolist()
    with pytest.raises(ValueError, match="until"):
        tiny.generate_tokens(ids, 4, until="newline")


def test_dps_until_stops_early(tiny):
    calls = []
    dps_generate(tiny, "the cat sat", [(0, 0)], alpha=0.5, max_new_tokens=12,
                 until=lambda t: calls.append(t) or len(calls) == 3)
    assert len(calls) == 3


@pytest.mark.real
def test_first_line_is_the_same_token_for_token_on_real_prompts(smol):
    # Real rag prompts of the first users; plain greedy, a steering vector and DPS.
    examples = list(load_lamp4_news())[:2]
    vector = torch.randn(smol.d_model, generator=torch.Generator().manual_seed(0))
    for ex in examples:
        prompt, _ = build_prompt(smol, ex, k=5, reserve=32)
        ids = smol.encode(prompt)
        full = smol.generate_tokens(ids, 32)
        cut = smol.generate_tokens(ids, 32, until=first_line_complete)
        assert full[: len(cut)].tolist() == cut.tolist()
        text_full = smol.tokenizer.decode(full, skip_special_tokens=True)
        assert first_line(text_full) == generate_line(smol, prompt, max_new_tokens=32)
        with steer(smol, vector, layer=20, scale=2.0):
            steered = first_line(smol.generate(prompt, max_new_tokens=32))
        with steer(smol, vector, layer=20, scale=2.0):
            assert generate_line(smol, prompt, max_new_tokens=32) == steered
        heads = [(20, 1), (25, 3)]
        assert first_line(dps_generate(smol, prompt, heads, alpha=1.0, plausibility=0.1, max_new_tokens=32)) == \
            first_line(dps_generate(smol, prompt, heads, alpha=1.0, plausibility=0.1, max_new_tokens=32,
                                    until=first_line_complete))
    # SmolLM2 usually ends a headline with its end-of-turn token; where it goes on, the cut saves steps
    ids = smol.encode("Name three fruits, one per line.")
    full, cut = smol.generate_tokens(ids, 32), smol.generate_tokens(ids, 32, until=first_line_complete)
    assert len(cut) < len(full) and full[: len(cut)].tolist() == cut.tolist()
