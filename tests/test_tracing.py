"""Token causal effects on the tiny random Llama (and two checks on SmolLM2)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from workbench.core.model import logprobs_of
from workbench.science.tracing import TokenEffects, label_tokens, spearman, trace_example, trace_tokens

USER = {
    "user_id": "u",
    "task": "lamp4",
    "profile": [
        {"id": "a", "text": "the cat sat on the mat", "title": "cat news"},
        {"id": "b", "text": "the dog is in paris", "title": "dog travel headline"},
    ],
    "query": "the city of paris and the tower",
    "gold": "paris news about travel",
}


def prompt_of(model):
    from workbench.data.prompts import headline_prompt

    return headline_prompt(model, USER["query"], USER["profile"])


@torch.no_grad()
def mask_deletion_effects(model, prompt, target, positions):
    """Reference: zero the token's attention-mask column (== deleting it), full forward."""
    ids, start = model.prompt_and_target(prompt, target)
    base = float(logprobs_of(model.bridge(ids), ids, start).mean())
    out = []
    for p in positions:
        am = torch.ones_like(ids)
        am[0, p] = 0
        out.append(base - float(logprobs_of(model.bridge(ids, attention_mask=am), ids, start).mean()))
    return np.array(out)


@torch.no_grad()
def deletion_loop_effects(model, prompt, target, positions):
    """Reference: delete the token from the ids and run everything from scratch."""
    ids, start = model.prompt_and_target(prompt, target)
    base = float(logprobs_of(model.bridge(ids), ids, start).mean())
    out = []
    for p in positions:
        d = torch.cat([ids[:, :p], ids[:, p + 1:]], dim=1)
        out.append(base - float(logprobs_of(model.bridge(d), d, start - 1).mean()))
    return np.array(out)


def test_labels_find_items_and_parts(tiny):
    lab = label_tokens(tiny, prompt_of(tiny), USER["profile"])
    f = lab.frame
    titles = f[(f["part"] == "output") & (f["item"] == 1)]
    assert "".join(titles["token"]).split() == USER["profile"][1]["title"].split()
    assert set(f.loc[f["part"] == "input", "item"]) == {0, 1}
    assert (f.loc[f["part"] == "query", "item"] == -1).all()
    assert set(titles["position"]) <= set(lab.positions("outputs"))
    with pytest.raises(ValueError, match="not found"):
        label_tokens(tiny, prompt_of(tiny), [{"text": "nothing like this", "title": "x"}])
    with pytest.raises(ValueError, match="'titles' is now 'outputs'"):  # the old, LaMP-4-worded scope
        lab.positions("titles")


def test_labels_follow_the_tasks_fields(tiny):
    # LaMP-5's items are an abstract and the user's title: the same parts, other fields.
    from workbench.data.prompts import task_prompt

    items = [{"id": "p1", "abstract": "we study cats on mats", "title": "Cats on Mats"},
             {"id": "p2", "abstract": "dogs travel to paris", "title": "Parisian Dogs"}]
    lab = label_tokens(tiny, task_prompt(tiny, "lamp5", "a paper about towers", items), items, ("abstract", "title"))
    f = lab.frame
    assert set(f.loc[f["part"] == "input", "item"]) == {0, 1}
    assert "".join(f.loc[(f["part"] == "output") & (f["item"] == 1), "token"]).split() == ["Parisian", "Dogs"]


def test_exact_equals_mask_deletion_and_scratch_loop(tiny):
    prompt = prompt_of(tiny)
    te = trace_tokens(tiny, prompt, USER["gold"], items=USER["profile"], mode="exact", progress=False)
    pos = te.frame["position"].tolist()
    assert len(pos) > 10
    np.testing.assert_allclose(te.frame["effect"], mask_deletion_effects(tiny, prompt, USER["gold"], pos), atol=1e-4)
    np.testing.assert_allclose(te.frame["effect"], deletion_loop_effects(tiny, prompt, USER["gold"], pos), atol=1e-4)
    assert te.frame["effect"].abs().max() > 1e-4  # not trivially zero


def test_exact_batched_and_naive_agree(tiny):
    prompt = prompt_of(tiny)
    kw = dict(items=USER["profile"], generic_target="the city", progress=False, positions="prompt")
    a = trace_tokens(tiny, prompt, USER["gold"], mode="exact", **kw)
    b = trace_tokens(tiny, prompt, USER["gold"], mode="exact", batch_size=4, **kw)
    c = trace_tokens(tiny, prompt, USER["gold"], mode="naive", **kw)
    for col in ("effect", "effect_generic", "effect_diff"):
        np.testing.assert_allclose(a.frame[col], b.frame[col], atol=1e-4)
        np.testing.assert_allclose(a.frame[col], c.frame[col], atol=1e-4)
    np.testing.assert_allclose(a.frame["effect_diff"], a.frame["effect"] - a.frame["effect_generic"], atol=1e-9)


@torch.no_grad()
def _logp(model, prompt, target, hooks=()):
    ids, start = model.prompt_and_target(prompt, target)
    return float(logprobs_of(model.bridge.run_with_hooks(ids, fwd_hooks=list(hooks)), ids, start).mean())


def test_integrated_gradients_are_complete(tiny):
    """IG sums to logp(full) - logp(baseline): this fixes the sign convention and the scale."""
    prompt = prompt_of(tiny)
    te = trace_tokens(tiny, prompt, USER["gold"], items=USER["profile"], mode="ig", ig_steps=64, progress=False)
    pos = te.frame["position"].tolist()

    def zero(x, hook):
        x = x.clone()
        x[:, pos] = 0
        return x

    drop = _logp(tiny, prompt, USER["gold"]) - _logp(tiny, prompt, USER["gold"], [("hook_embed", zero)])
    assert te.frame["effect"].sum() == pytest.approx(drop, rel=0.05, abs=1e-3)

    ta = trace_tokens(tiny, prompt, USER["gold"], items=USER["profile"], mode="attn-ig", ig_steps=64, progress=False)

    def gate(s, hook):
        s = s.clone()
        s[..., pos] = s[..., pos] - 1e4
        return s

    gates = [(f"blocks.{L}.attn.hook_attn_scores", gate) for L in range(tiny.n_layers)]
    drop = _logp(tiny, prompt, USER["gold"]) - _logp(tiny, prompt, USER["gold"], gates)
    assert ta.frame["effect"].sum() == pytest.approx(drop, rel=0.05, abs=1e-3)


def test_fast_modes_shape_and_no_leftovers(tiny):
    from conftest import all_hook_handles

    before = all_hook_handles(tiny)
    prompt = prompt_of(tiny)
    logp, logp_generic = _logp(tiny, prompt, USER["gold"]), _logp(tiny, prompt, "the city")
    for mode in ("gxi", "attn", "attn-sat", "ig"):
        te = trace_tokens(tiny, prompt, USER["gold"], items=USER["profile"], mode=mode, generic_target="the city",
                          progress=False)
        # one-pass modes take the base scores from their own forward pass (no separate one): the same numbers
        assert te.meta["logp"] == pytest.approx(logp, abs=1e-5), mode
        assert te.meta["logp_generic"] == pytest.approx(logp_generic, abs=1e-5), mode
        assert list(te.frame.columns[-3:]) == ["effect", "effect_generic", "effect_diff"]
        assert len(te) == len(label_tokens(tiny, prompt, USER["profile"]).positions("history"))
        assert np.isfinite(te.frame["effect"]).all()
    assert all_hook_handles(tiny) == before
    assert all(p.requires_grad for p in tiny.bridge.parameters())


def frame_effects():
    f = pd.DataFrame({"item": [0, 0, 0, 1, 1], "item_id": ["a", "a", "a", "b", "b"],
                      "part": ["input", "input", "output", "output", "output"], "position": [1, 2, 3, 4, 5],
                      "token": ["Why", " do", " cats", " Dogs", "!"], "word": [0, 1, 2, 3, 4],
                      "effect": [0.5, 0.3, 0.1, -0.2, 0.1]})
    meta = {"model": "m", "mode": "exact", "target": "t", "reduce": "mean"}
    return TokenEffects(f, meta, items=[{"title": "x"}, {"title": "y"}])


def test_selection_rules():
    te = frame_effects()
    assert te.select(top_k=2)["text"].tolist() == ["Why", "do"]
    assert te.select(top_p=0.5)["text"].tolist() == ["Why"]  # 0.5 of 1.0 positive mass
    assert te.select(top_p=0.6)["text"].tolist() == ["Why", "do"]
    assert te.select(threshold=0.1)["text"].tolist() == ["Why", "do", "cats", "!"]
    assert "Dogs" not in te.select(top_k=10)["text"].tolist()  # negative effects never qualify
    with pytest.raises(ValueError, match="exactly one"):
        te.select(top_k=2, top_p=0.5)
    with pytest.raises(ValueError, match="generic"):
        te.select(top_k=2, by="diff")
    items = te.by_item()
    assert items.loc[items["item"] == 0, "total"].item() == pytest.approx(0.9)
    assert items.loc[items["item"] == 1, "output"].item() == pytest.approx(-0.1)
    assert items["output_text"].tolist() == ["cats", "Dogs!"]  # read from the output's own tokens


def test_rendering(tiny):
    te = trace_example(tiny, USER, mode="attn", generic=True, progress=False)
    page = te._repr_html_()
    assert "rgba(" in page and "item 1" in page and "&rarr;" in page
    sel = te.select(top_k=3)
    assert page.count("underline") == 0 and te.html(selected=sel).count("underline") >= len(sel) > 0
    fig = te.figure()
    assert len(fig.data) == 2  # one trace per item
    assert "TokenEffects(" in repr(te)


def test_bad_input(tiny):
    with pytest.raises(ValueError, match="mode"):
        trace_tokens(tiny, prompt_of(tiny), "x", items=USER["profile"], mode="magic")
    # 'fast' meant integrated gradients here but attribution patching in preference_scores
    with pytest.raises(ValueError, match="'ig'.*attribution patching|attribution patching.*'ig'"):
        trace_tokens(tiny, prompt_of(tiny), "x", items=USER["profile"], mode="fast")
    with pytest.raises(ValueError, match="task"):
        trace_example(tiny, {k: v for k, v in USER.items() if k != "task"})
    with pytest.raises(ValueError, match="outside the prompt"):
        trace_tokens(tiny, prompt_of(tiny), "news", positions=[10_000], progress=False)
    with pytest.raises(ValueError, match="selects no tokens"):
        trace_tokens(tiny, prompt_of(tiny), "news", positions="outputs", progress=False)  # no items given
    with pytest.raises(ValueError, match="empty"):
        trace_tokens(tiny, prompt_of(tiny), "", items=USER["profile"])


def test_spearman():
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


@pytest.mark.real
def test_exact_equals_mask_deletion_on_smollm2(smol):
    from workbench.data.lamp import load_lamp4_news

    ex = load_lamp4_news()[0]
    te0 = trace_example(smol, ex, mode="attn", progress=False)  # cheap: just to get the history positions
    pos = te0.frame["position"].tolist()[::40]
    te = trace_example(smol, ex, mode="exact", positions=pos, progress=False)
    from workbench.science.tracing import example_prompt

    prompt, _, _, _ = example_prompt(smol, ex)
    np.testing.assert_allclose(te.frame["effect"], mask_deletion_effects(smol, prompt, ex.gold, pos), atol=2e-4)
