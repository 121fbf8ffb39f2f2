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


def test_one_rule_for_a_usable_history_item():
    from workbench.data.history import usable_item

    assert usable_item({"text": "an article", "title": "a headline"})
    assert not usable_item({"text": "an article", "title": "   "})  # whitespace is no output
    assert not usable_item({"text": "an article"})
    assert usable_item({"abstract": "an abstract", "title": "A Title"}, "lamp5")
    assert not usable_item({"text": "an abstract", "title": "A Title"}, "lamp5")  # LaMP-5's input is the abstract
    blank = Example(id="q3", user_id="u1", task="lamp4", input="x", gold="y",
                    profile=PROFILE + ({"id": "9", "text": "an article", "title": " "},))
    assert [it["id"] for it in user_history([blank])] == ["0", "1", "2", "3"]


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


def _caa(model, preference, inputs, layers, task="lamp4"):
    """CAA as the steering methods build it: the task's prompts with and without the preference."""
    from workbench.data.prompts import preference_prompt, task_prompt

    return caa_vectors(model, [preference_prompt(model, task, preference, x) for x in inputs],
                       [task_prompt(model, task, x) for x in inputs], layers=layers)


def test_caa_vector_changes_logits_and_cleans_up(tiny, tiny_ids):
    vecs = _caa(tiny, list(PROFILE), ["the city of paris", "the cat and the dog"], layers=[0, 1])
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
    d = _caa(tiny, "the user likes cats", ["the city of paris"], layers=[1])[1]
    assert not torch.allclose(d.vector, v.vector)


def test_caa_without_context_difference_is_zero(tiny):
    # Same context on both sides -> exactly zero: the contrast really is "with minus without".
    v = _caa(tiny, [], ["the city of paris"], layers=[1])[1]
    assert v.norm == pytest.approx(0.0, abs=1e-6)


def test_caa_takes_task_neutral_prompts(tiny):
    # Any prompts with a shared ending: no task, no history fields.
    v = caa_vectors(tiny, ["Be brief.\n\nSay something about paris", "Be brief.\n\nSay something about cats"],
                    ["Say something about paris", "Say something about cats"], [1])[1]
    assert v.norm > 0 and v.built["n_inputs"] == 2
    with pytest.raises(ValueError, match="list of prompts"):
        caa_vectors(tiny, "the user likes cats", ["the city of paris"], [1])  # the old (preference, articles) call
    with pytest.raises(ValueError, match="1 positive but 2 negative"):
        caa_vectors(tiny, ["a b"], ["b", "c"], [1])
    # A LaMP-5 user (abstracts and titles) gets a vector from the same code.
    items = [{"id": "1", "abstract": "we study cats on mats", "title": "Cats on Mats"}]
    assert _caa(tiny, items, ["a paper about towers"], [1], task="lamp5")[1].norm > 0
    assert _caa(tiny, "the user likes short titles", ["a paper about towers"], [1], task="lamp5")[1].norm > 0


def test_optimized_vector_bound_and_progress(tiny):
    from workbench.data.prompts import preference_prompt, task_prompt

    before = all_hook_handles(tiny)
    records = [(task_prompt(tiny, "lamp4", it["text"]), it["title"]) for it in PROFILE]
    v = optimized_vector(tiny, records, layer=0, steps=15, radius=0.3)
    losses = v.built["losses"]
    assert losses[-1] < losses[0]
    assert v.norm <= 0.3 * v.built["typical_norm"] * 1.001
    # the first step's loss is the targets' mean NLL under the (all but) unsteered model: the
    # positions kept for the vocabulary projection are the ones that predict each target token
    nll = torch.cat([-tiny.target_logprobs(p, t) for p, t in records])
    start = optimized_vector(tiny, records, layer=0, steps=1, radius=1e-6)
    assert start.built["losses"][0] == pytest.approx(float(nll.mean()), abs=1e-3)
    start_bridge = optimized_vector(tiny, records, layer=0, site="attn_out", steps=1, radius=1e-6)  # no reuse path
    assert start_bridge.built["losses"][0] == pytest.approx(float(nll.mean()), abs=1e-3)
    teacher = [preference_prompt(tiny, "lamp4", "the user likes cats", it["text"]) for it in PROFILE]
    d = optimized_vector(tiny, records, layer=0, steps=3, teacher=teacher)
    assert d.built["target"] == "teacher KL"
    assert all_hook_handles(tiny) == before
    assert all(p.requires_grad for p in tiny.bridge.parameters())
    with pytest.raises(ValueError, match="layer"):
        optimized_vector(tiny, records, layer=7)
    with pytest.raises(ValueError, match="one per record"):
        optimized_vector(tiny, records, layer=0, teacher=teacher[:1])
    with pytest.raises(ValueError, match=r"\(prompt, target\) pairs"):
        optimized_vector(tiny, list(PROFILE), layer=0)  # item dicts: the caller makes the records


def test_length_chunks_cover_every_record_once():
    from workbench.science.optimized import _length_chunks

    chunks = _length_chunks([300, 100, 110, 400, 105], waste=0.1)
    assert chunks == [[1, 4, 2], [0], [3]]  # 3 x 110 <= 1.1 x 315; 300 and 400 would pad too much
    assert _length_chunks([5, 9, 7], waste=10.0) == [[0, 2, 1]]
    assert _length_chunks([5, 9, 7], waste=0.0) == [[0], [2], [1]]
    assert sorted(i for c in _length_chunks(list(range(40, 0, -3))) for i in c) == list(range(14))


@pytest.mark.parametrize("site", ["resid_post", "attn_out"])
@pytest.mark.parametrize("with_teacher", [False, True])
def test_optimized_vector_same_however_records_are_grouped(tiny, monkeypatch, site, with_teacher):
    # Records grouped by length (several passes, gradients summed) fit the same vector as one
    # right-padded batch: the loss is one mean over all target tokens either way.
    from workbench.data.prompts import preference_prompt, task_prompt
    from workbench.science import optimized

    records = [(task_prompt(tiny, "lamp4", it["text"]), it["title"]) for it in PROFILE]
    lengths = {tiny.prompt_and_target(p, t)[0].shape[-1] for p, t in records}
    assert len(lengths) > 1  # the records differ in length, so the groupings differ
    teacher = [preference_prompt(tiny, "lamp4", "the user likes cats", it["text"]) for it in PROFILE] if with_teacher else None
    fits = {}
    for waste in (0.0, 1e9):
        monkeypatch.setattr(optimized, "_PAD_WASTE", waste)
        fits[waste] = optimized_vector(tiny, records, layer=0, site=site, steps=3, teacher=teacher)
    one, many = fits[1e9], fits[0.0]
    assert many.built["losses"] == pytest.approx(one.built["losses"], abs=1e-4)
    assert torch.allclose(many.vector, one.vector, atol=1e-5)
    assert many.built["typical_norm"] == one.built["typical_norm"]


def test_preference_words_rules(tiny):
    desc = steerx_description(tiny, list(PROFILE), "u1", task="lamp4", n_traces=2, top_k=5)
    assert 0 < len(desc.words) <= 5 and (desc.words["score"] > 0).all()
    assert desc.description and "{words}" not in desc.prompt
    assert desc.prompt.startswith("Here are words that show how a user writes news headlines")  # LaMP-4's
    again = steerx_description(tiny, list(PROFILE), "u1", task="lamp4", n_traces=2, top_k=5)  # from the disk cache
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


LAMP5 = tuple({"id": f"p{i}", "abstract": t, "title": h.title(), "date": f"2020-01-0{i + 1}"}
              for i, (t, h) in enumerate(TEXTS))


@pytest.mark.parametrize("name", ["caa-all", "steerx-opt"])
def test_runner_methods_serve_another_task(tiny, name):
    # LaMP-5 (abstract -> paper title): only its TaskSpec differs, the methods and science are the same.
    from workbench.methods import GenerationSettings, make_methods

    prefix = "Generate a title for the following abstract of a paper: "
    exs = [Example(id=f"q{i}", user_id="u5", task="lamp5", input=prefix + x, profile=LAMP5, gold="g")
           for i, x in enumerate(["towers of paris", "cats and dogs"])]
    m = make_methods([name], GenerationSettings(max_new_tokens=4))[0]
    m.opt_steps = 2
    state = m.prepare_user(tiny, "u5", exs)
    assert state.norm > 0
    assert bool(state.built.get("description")) == (name == "steerx-opt")
    lamp7 = [Example(id="t", user_id="u7", task="lamp7", input="a tweet", profile=({"id": "1", "text": "hi"},),
                     gold="x")]
    with pytest.raises(ValueError, match="no \\(input, user's output\\) pairs"):
        m.prepare_user(tiny, "u7", lamp7)


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
