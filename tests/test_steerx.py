"""SteerX: history, description, vectors, runner methods (tiny model; one SmolLM2 run)."""

from __future__ import annotations

import pytest
import torch

from conftest import all_hook_handles
from workbench.data.records import Example
from workbench.science.caa import caa_vectors
from workbench.data.history import dev_split, user_history
from workbench.science.optimized import optimized_vector
from workbench.core.steering import SteeringVector
from workbench.science.steerx import preference_words, steerx_description
from workbench.runner.sweeps import steering_sweep

TEXTS = [("the cat sat on the mat", "cat news"), ("the dog is in paris", "dog travel headline"),
         ("a new music city", "best music news"), ("food and travel in paris", "why food travel")]
PROFILE = tuple({"id": str(i), "text": t, "title": h, "date": f"2020-01-0{i + 1}"} for i, (t, h) in enumerate(TEXTS))
LATER = {"id": "q1", "text": "the city of paris and the tower", "title": "GOLD OF Q1", "date": "2020-02-01"}


@pytest.fixture
def user_examples():
    return [Example(id="q1", user_id="u1", task="lamp4", input=LATER["text"], profile=PROFILE, gold="paris news"),
            Example(id="q2", user_id="u1", task="lamp4", input="the cat and the dog", profile=PROFILE + (LATER,),
                    gold="cat news")]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))


def test_user_history_is_the_shared_part(user_examples):
    hist = user_history(user_examples)
    assert [it["id"] for it in hist] == ["0", "1", "2", "3"]
    assert all(it["title"] != "GOLD OF Q1" for it in hist)  # a later query's profile holds q1's gold


def test_vector_save_load_refuses_other_model(tiny, tmp_path):
    v = SteeringVector.at(torch.randn(tiny.d_model), 1, "resid_post", tiny.name, {"method": "test"})
    p = v.save(tmp_path / "v.pt")
    with pytest.raises(FileExistsError):
        v.save(p)
    back = SteeringVector.load(p, model=tiny)
    assert torch.allclose(back.vector, v.vector) and back.layer == 1 and back.built == {"method": "test"}
    with pytest.raises(ValueError, match="not of 'smollm2-135m'"):
        SteeringVector.load(p, model="smollm2-135m")
    other = SteeringVector.at(torch.randn(tiny.d_model), 1, "resid_post", "another-model")
    with pytest.raises(ValueError, match="rebuild it"):
        other.apply(tiny)


def test_caa_vector_changes_logits_and_cleans_up(tiny, tiny_ids):
    vecs = caa_vectors(tiny, list(PROFILE), ["the city of paris", "the cat and the dog"], layers=[0, 1])
    assert set(vecs) == {0, 1}
    v = vecs[1]
    assert v.vector.shape == (tiny.d_model,) and v.norm > 0
    before = all_hook_handles(tiny)
    with torch.no_grad():
        base = tiny.bridge(tiny_ids)
        with v.apply(tiny, scale=20.0):
            steered = tiny.bridge(tiny_ids)
        with pytest.raises(RuntimeError):
            with v.apply(tiny, scale=20.0):
                raise RuntimeError("boom")
    assert (steered - base).abs().max() > 1e-3
    assert all_hook_handles(tiny) == before
    # A description (a string) gives a different vector than the history.
    d = caa_vectors(tiny, "the user likes cats", ["the city of paris"], layers=[1])[1]
    assert not torch.allclose(d.vector, v.vector)


def test_caa_without_context_difference_is_zero(tiny):
    # Same context on both sides -> exactly zero: the contrast really is "with minus without".
    v = caa_vectors(tiny, [], ["the city of paris"], layers=[1])[1]
    assert v.norm == pytest.approx(0.0, abs=1e-6)


def test_optimized_vector_bound_and_progress(tiny):
    before = all_hook_handles(tiny)
    v = optimized_vector(tiny, list(PROFILE), layer=0, steps=15, radius=0.3)
    losses = v.built["losses"]
    assert losses[-1] < losses[0]
    assert v.norm <= 0.3 * v.built["typical_norm"] * 1.001
    d = optimized_vector(tiny, list(PROFILE), layer=0, steps=3, description="the user likes cats")
    assert d.built["target"] == "description KL"
    assert all_hook_handles(tiny) == before
    assert all(p.requires_grad for p in tiny.bridge.parameters())
    with pytest.raises(ValueError, match="layer"):
        optimized_vector(tiny, list(PROFILE), layer=7)


def test_preference_words_rules(tiny):
    desc = steerx_description(tiny, list(PROFILE), "u1", n_traces=2, top_k=5)
    assert 0 < len(desc.words) <= 5 and (desc.words["score"] > 0).all()
    assert desc.description and "{words}" not in desc.prompt
    again = steerx_description(tiny, list(PROFILE), "u1", n_traces=2, top_k=5)  # from the disk cache
    assert again.description == desc.description and again.traces == []
    p = preference_words(desc.traces, top_k=None, top_p=0.5, by="diff")
    t = preference_words(desc.traces, top_k=None, threshold=float(p["score"].min()), by="diff")
    assert len(t) >= len(p)
    with pytest.raises(ValueError, match="exactly one"):
        preference_words(desc.traces, top_k=3, top_p=0.5)


@pytest.mark.parametrize("name", ["caa-all", "steerx-caa", "opt-all", "steerx-opt"])
def test_runner_methods(tiny, user_examples, name):
    from workbench.methods import GenerationSettings, available_methods, make_methods

    assert name in available_methods()
    m = make_methods([name], GenerationSettings(max_new_tokens=6))[0]
    m.opt_steps = 3
    state = m.prepare_user(tiny, "u1", user_examples)
    assert isinstance(state, SteeringVector) and state.layer == tiny.n_layers // 2
    text, info = m.generate(tiny, user_examples[0], state)
    assert isinstance(text, str) and info["vector_norm"] == pytest.approx(state.norm, rel=1e-3)
    again = m.prepare_user(tiny, "u1", user_examples)
    assert torch.equal(again.vector.cpu(), state.vector.cpu())
    d = m.describe()
    assert d["backbone"] in ("caa", "opt") and d["source"] in ("all", "steerx")


def test_sweep_picks_from_grid(tiny, user_examples):
    dev = dev_split(user_examples, n_users=1)
    assert dev[0].gold == "why food travel" and len(dev[0].profile) == 3
    df = steering_sweep(tiny, "caa-all", dev, layers=[0, 1], scales=[0.0, 8.0], progress=False)
    assert len(df) == 4 and df.attrs["best"]["layer"] in (0, 1)


@pytest.mark.real
def test_steerx_caa_end_to_end_on_a_real_user(smol):
    from workbench.data.lamp import load_lamp4_news
    from workbench.methods import GenerationSettings, make_methods

    ds = load_lamp4_news()
    uid = ds.users()[0]
    exs = list(ds.by_user(uid))
    m = make_methods(["steerx-caa"], GenerationSettings(max_new_tokens=12))[0]
    m.n_traces = 1
    state = m.prepare_user(smol, uid, exs)
    assert state.built["description"] and state.norm > 0
    text, info = m.generate(smol, exs[0], state)
    assert text and info["description"] == state.built["description"]
