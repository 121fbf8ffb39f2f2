"""LoRA baselines: training, the adapter as an intervention (both generation paths), caching,
the methods (lora-user, lora-user+rag, lora-task, lora-task+rag, lora-user+dps), where it acts."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from conftest import all_hook_handles
from workbench.core.model import Model
from workbench.core.steering import SteeringVector
from workbench.data.history import user_history
from workbench.data.lamp import load_lamp4_news
from workbench.methods import METHODS, GenerationSettings, available_methods
from workbench.methods import lora as methods_lora
from workbench.science import lora as lora_mod
from workbench.science.lora import LoraAdapter, adapter_effects, adapter_figure, lora_targets, records_loss, \
    train_lora

RECORDS = [("the cat sat on the mat", " the dog"), ("a city of paris", " tower and"),
           ("news about food", " best food"), ("sport music is new", " new music")]
FAST = dict(rank=4, lr=1e-2, epochs=6, batch_size=2)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def adapter(tiny):
    return train_lora(tiny, RECORDS, **FAST)


@pytest.fixture(scope="module")
def data():
    return load_lamp4_news()


def _state(model):
    return {k: v.clone() for k, v in model.bridge.original_model.state_dict().items()}


def test_training_lowers_the_loss_and_leaves_the_model_unchanged(tiny):
    before = _state(tiny)
    grads = [p.requires_grad for p in tiny.bridge.parameters()]
    ad = train_lora(tiny, RECORDS, **FAST)
    after = _state(tiny)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert [p.requires_grad for p in tiny.bridge.parameters()] == grads
    assert records_loss(tiny, RECORDS, ad) < records_loss(tiny, RECORDS) - 0.3
    # the loss reads each target token's prediction (the batch's vocabulary projection runs on
    # those positions only): the base model's is the targets' mean NLL, record by record
    nll = torch.cat([-tiny.target_logprobs(p, t) for p, t in RECORDS])
    assert records_loss(tiny, RECORDS) == pytest.approx(float(nll.mean()), abs=1e-4)
    assert records_loss(tiny, RECORDS, batch_size=3) == pytest.approx(float(nll.mean()), abs=1e-4)
    assert ad.built["n_records"] == 4 and ad.built["steps"] == 12 and len(ad.weights) == 14
    assert all(a.shape[0] == 4 and b.shape[1] == 4 for a, b in ad.weights.values())
    # seeded: the same adapter again, bit for bit
    again = train_lora(tiny, RECORDS, **FAST)
    assert all(torch.equal(ad.weights[p][0], again.weights[p][0]) and torch.equal(ad.weights[p][1], again.weights[p][1])
               for p in ad.weights)


def test_modules_choose_the_projections(tiny):
    attn = lora_targets(tiny, "attn")
    mlp = lora_targets(tiny, "mlp")
    assert sorted({p.rsplit(".", 1)[1] for p in attn}) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert sorted({p.rsplit(".", 1)[1] for p in mlp}) == ["down_proj", "gate_proj", "up_proj"]
    assert len(attn) + len(mlp) == len(lora_targets(tiny, "all")) == 14
    ad = train_lora(tiny, RECORDS[:2], rank=2, epochs=1, modules="mlp")
    assert set(ad.weights) == set(mlp)


def test_switched_off_the_outputs_are_the_base_models_exactly(tiny, tiny_ids, adapter):
    base = tiny.bridge(tiny_ids).detach()
    handles = all_hook_handles(tiny)
    with adapter.apply(tiny):
        on = tiny.bridge(tiny_ids).detach()
    assert not torch.allclose(on, base, atol=1e-3)
    assert torch.equal(tiny.bridge(tiny_ids), base)
    with pytest.raises(RuntimeError, match="boom"):
        with adapter.apply(tiny):
            raise RuntimeError("boom")
    assert all_hook_handles(tiny) == handles
    assert torch.equal(tiny.bridge(tiny_ids), base)
    # nested use of the same adapter adds it once
    lora = adapter.apply(tiny)
    with lora:
        with lora:
            nested = tiny.bridge(tiny_ids).detach()
    assert torch.equal(nested, on) and all_hook_handles(tiny) == handles


def test_both_generation_paths_see_the_adapter(tiny, adapter):
    """The hook-free path (no TransformerLens hook attached) and the bridge path (a zero steering
    vector forces it) run the same Linear modules, so the adapter acts on both, identically."""
    prompt = "the cat sat on the mat in the city of"
    zero = SteeringVector.at(torch.zeros(tiny.d_model), 0, "resid_post", tiny.name, {}).apply(tiny, scale=0.0)
    base = tiny.generate(prompt, max_new_tokens=8)
    with zero:
        assert tiny.generate(prompt, max_new_tokens=8) == base
    with adapter.apply(tiny):
        assert tiny._plain_view() is not None  # the hook-free path runs
        plain = tiny.generate(prompt, max_new_tokens=8)
    with adapter.apply(tiny) + zero:  # composes with other interventions
        assert tiny._plain_view() is None  # the bridge runs, hook points and all
        bridged = tiny.generate(prompt, max_new_tokens=8)
    assert plain == bridged != base
    assert tiny.generate(prompt, max_new_tokens=8) == base


def test_both_label_scoring_paths_see_the_adapter(tiny, adapter, monkeypatch):
    """A classification task's label choice runs on the hook-free view when it can (labels in one
    row) and on the bridge when a foreign hook is attached: the adapter acts on both, alike."""
    import workbench.methods as methods

    calls = []
    original = methods._label_logits_on_view
    monkeypatch.setattr(methods, "_label_logits_on_view", lambda *a: calls.append(1) or original(*a))
    prompt = "the cat sat on the mat in the city of"
    labels = ["paris", "the dog", "a"]
    base = methods.label_token_logprobs(tiny, prompt, labels)
    with adapter.apply(tiny):
        before = len(calls)
        on_view = methods.label_token_logprobs(tiny, prompt, labels)
        assert len(calls) == before + 1
        with tiny.bridge.hooks(fwd_hooks=[("blocks.0.hook_resid_post", lambda x, hook: x)]):
            on_bridge = methods.label_token_logprobs(tiny, prompt, labels)
        assert len(calls) == before + 1
    assert all(torch.allclose(a[0], b[0], atol=1e-5) for a, b in zip(on_view, on_bridge))
    assert any(not torch.allclose(a[0], b[0], atol=1e-3) for a, b in zip(on_view, base))
    assert all_hook_handles(tiny) == 0


def test_generation_equals_plain_transformers_with_peft(tiny, adapter):
    """The adapter on the workbench model gives what peft's own LoRA layers give in a plain
    transformers model with the same weights."""
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

    from workbench.core._tiny import make_tiny_llama

    hf, tok = make_tiny_llama()
    hf.eval()
    ids = tiny.encode("the cat sat on the mat in the city of")
    with torch.no_grad():
        assert torch.allclose(hf(ids).logits, tiny.bridge(ids), atol=1e-5)  # the same base model
    config = LoraConfig(r=adapter.rank, lora_alpha=adapter.settings["alpha"],
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    inject_adapter_in_model(config, hf)
    state = {k.removeprefix("base_model.model."): v for k, v in adapter.peft_state_dict().items()}
    result = set_peft_model_state_dict(hf, state)
    assert not [k for k in result.unexpected_keys if "lora" in k]
    with torch.no_grad():
        theirs = hf(ids).logits
        with adapter.apply(tiny):
            ours = tiny.bridge(ids)
            ours_text = tiny.generate(ids, max_new_tokens=8)
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                          eos_token_id=tiny.stop_token_ids, pad_token_id=tiny.stop_token_ids[0])
    assert torch.allclose(ours, theirs, atol=1e-4)
    new = tiny._new_tokens(out, ids)
    assert tiny.tokenizer.decode(new, skip_special_tokens=True).strip() == ours_text


def test_save_load_and_another_models_adapter_is_refused(tiny, adapter, tmp_path):
    path = adapter.save(tmp_path / "a.pt")
    back = LoraAdapter.load(path, model=tiny)
    assert back.model == tiny.name and back.scaling == adapter.scaling and back.settings == adapter.settings
    assert all(torch.equal(back.weights[p][1], adapter.weights[p][1]) for p in adapter.weights)
    with pytest.raises(FileExistsError):
        adapter.save(path)
    with pytest.raises(ValueError, match="not of 'smollm2-135m'"):
        LoraAdapter.load(path, model="smollm2-135m")
    other = dataclasses.replace(adapter, model="other-model")
    with pytest.raises(ValueError, match="trained on 'other-model'"):
        other.apply(tiny)
    with pytest.raises(ValueError, match="trained on 'other-model'"):
        LoraAdapter.load(other.save(tmp_path / "b.pt"), model=tiny)
    (tmp_path / "c.pt").write_bytes(b"not a file")
    with pytest.raises(ValueError, match="not a saved LoRA adapter"):
        LoraAdapter.load(tmp_path / "c.pt")


def _user(data):
    user = data.users()[1]  # 5 shared history items
    return user, data.by_user(user).examples


def test_lora_user_is_cached_and_refuses_another_models_entry(tiny, data, cache):
    user, exs = _user(data)
    m = METHODS["lora-user"](GenerationSettings(max_new_tokens=4), epochs=1, max_records=3)
    first = m.prepare_user(tiny, user, exs)
    files = list(cache.rglob("*.pt"))
    assert len(files) == 1 and "lora" in str(files[0]) and first.built["n_records"] == 3
    again = m.prepare_user(tiny, user, exs)
    assert again.built == first.built  # from the cache (same seconds recorded)
    # another model's adapter in the entry's place is not trusted: rebuilt for this model
    dataclasses.replace(first, model="other-model").save(files[0], overwrite=True)
    rebuilt = m.prepare_user(tiny, user, exs)
    assert rebuilt.model == tiny.name
    assert all(torch.equal(rebuilt.weights[p][0], first.weights[p][0]) for p in first.weights)
    # other settings: another entry
    METHODS["lora-user"](GenerationSettings(max_new_tokens=4), epochs=1, max_records=3, rank=2).prepare_user(
        tiny, user, exs)
    assert len(list(cache.rglob("*.pt"))) == 2


def test_a_querys_gold_never_reaches_the_adapter(tiny, data, cache):
    user, exs = _user(data)
    changed = [dataclasses.replace(ex, gold=f"something else {i}") for i, ex in enumerate(exs)]
    m = METHODS["lora-user"](GenerationSettings(max_new_tokens=4), epochs=1, max_records=3, cache=False)
    a, b = m.prepare_user(tiny, user, exs), m.prepare_user(tiny, user, changed)
    assert all(torch.equal(a.weights[p][0], b.weights[p][0]) and torch.equal(a.weights[p][1], b.weights[p][1])
               for p in a.weights)
    assert not list(cache.rglob("*.pt"))


@pytest.mark.parametrize("change, match", [
    ({"rank": 0}, "rank=0"), ({"lr": -1e-3}, "lr=-0.001"), ({"lr": math.nan}, "finite"),
    ({"alpha": 0}, "alpha=0"), ({"epochs": 0}, "epochs=0"), ({"rank": 2.5}, "whole number"),
    ({"dropout": 1.0}, "dropout"), ({"modules": "everything"}, "modules"), ({"max_records": 0}, "max_records"),
])
def test_bad_settings_are_clear_errors_before_any_training(tiny, change, match, monkeypatch):
    monkeypatch.setattr(lora_mod, "_batch_loss", lambda *a, **k: pytest.fail("trained despite a bad setting"))
    with pytest.raises(ValueError, match=match):
        METHODS["lora-user"](**change)
    m = METHODS["lora-task"]()
    for k, v in change.items():
        setattr(m, k, v)
    with pytest.raises(ValueError, match=match):
        m.check_settings(tiny)
    fn_args = {k: v for k, v in change.items() if k != "max_records"}
    if fn_args:
        with pytest.raises(ValueError, match=match):
            train_lora(tiny, RECORDS, **fn_args)


def test_the_methods_run_in_the_pipeline(tiny, data, cache):
    assert {"lora-user", "lora-user+rag", "lora-task", "lora-task+rag", "lora-user+dps"} <= set(available_methods())
    user, exs = _user(data)
    ex = exs[0]
    settings = GenerationSettings(max_new_tokens=4)
    small = dict(epochs=1, max_records=3)
    outs = {}
    for name in ("lora-user", "lora-user+rag", "lora-task", "lora-task+rag"):
        m = METHODS[name](settings, **small)
        m.prepare_run(tiny, [ex], data)
        state = m.prepare_user(tiny, user, exs)
        text, info = m.generate(tiny, ex, state)
        assert isinstance(text, str) and info["lora_records"] == 3 and math.isfinite(info["lora_loss"])
        d = m.describe()
        assert d["rank"] == 8 and d["epochs"] == 1 and d["rag_prompt"] == name.endswith("+rag")
        assert ("tuning users" in d["adapter"]) == name.startswith("lora-task")
        assert info["k_used"] == (settings.k if name.endswith("+rag") else 0)
        outs[name] = (state, info["lora_data"])
    # user and user+rag share one adapter; the task adapter is another, from the tuning users
    assert outs["lora-user"][1] == outs["lora-user+rag"][1] != outs["lora-task"][1] == outs["lora-task+rag"][1]
    assert outs["lora-task"][0].built["users"] == 3
    with pytest.raises(RuntimeError, match="prepare_run"):
        METHODS["lora-task"](settings).prepare_user(tiny, user, exs)


def test_lora_task_reads_tuning_users_only(tiny, data, cache, monkeypatch):
    from workbench.data.splits import user_side

    seen = []
    real = methods_lora.lora_records
    monkeypatch.setattr(methods_lora, "lora_records",
                        lambda model, task, items, user_id="", reserve=32: seen.append(user_id) or real(
                            model, task, items, user_id, reserve))
    m = METHODS["lora-task"](GenerationSettings(max_new_tokens=4), epochs=1, max_records=5)
    m.prepare_run(tiny, list(data)[:3], data)
    assert len(seen) == 5 and all(user_side(u) == "tune" for u in seen)


def test_lora_user_with_dps(tiny, data, cache):
    user, exs = _user(data)
    m = METHODS["lora-user+dps"](GenerationSettings(max_new_tokens=4))
    m.steering.epochs, m.steering.max_records = 1, 3
    m.prepare_run(tiny, exs, None)  # the heads from this user's histories only (fast on tiny)
    text, info = m.generate(tiny, exs[0], m.prepare_user(tiny, user, exs))
    assert isinstance(text, str) and info["lora_records"] == 3 and info["heads"]
    assert m.describe()["steering"]["name"] == "lora-user"


def test_where_the_adapter_acts(tiny, adapter):
    df = adapter_effects(tiny, adapter)
    assert len(df) == 14 and set(df["kind"]) == {"attn", "mlp"} and set(df["layer"]) == {0, 1}
    assert (df["weight_delta"] > 0).all() and "output_rel" not in df
    measured = adapter_effects(tiny, adapter, RECORDS)
    assert (measured["output_delta"] > 0).all() and (measured["output_rel"] > 0).all()
    row = measured.iloc[0]
    a, b = adapter.weights[row["path"]]
    assert row["weight_delta"] == pytest.approx(float((adapter.scaling * b @ a).norm()), rel=1e-5)
    fig = adapter_figure(measured, pcs_layers=[1], steering_layers=[0])
    assert len(fig.data) == 8  # 7 modules + the PCS markers
    assert fig.layout.shapes  # the steering layer's line
    with pytest.raises(ValueError, match="value="):
        adapter_figure(df, value="output_rel")


def test_preference_scores_of_the_adapted_model(tiny, adapter):
    # PCS with the adapter on: the exact sweep (which reuses the unmasked layers' computation)
    # must see the adapter on every path, i.e. equal the naive one-forward-per-head reference,
    # and differ from the base model's scores.
    from workbench.science.pcs import preference_scores

    pairs = [("the cat sat on the mat", " the dog"), ("news about food", " best food")]
    base = preference_scores(tiny, pairs, mode="exact", progress=False)
    with adapter.apply(tiny):
        exact = preference_scores(tiny, pairs, mode="exact", progress=False)
        naive = preference_scores(tiny, pairs, mode="naive", progress=False)
    assert not all_hook_handles(tiny)
    assert torch.allclose(torch.tensor(exact.per_example), torch.tensor(naive.per_example), atol=1e-5)
    assert not torch.allclose(torch.tensor(exact.per_example), torch.tensor(base.per_example), atol=1e-3)


def test_a_model_without_projections_is_a_clear_error(tiny):
    fake = Model.__new__(Model)
    fake.__dict__.update(bridge=type("B", (), {"original_model": None})(), name="fake")
    with pytest.raises(ValueError, match="Hugging Face"):
        lora_targets(fake)
    with pytest.raises(ValueError, match="modules="):
        lora_targets(tiny, "heads")
    with pytest.raises(ValueError, match="records"):
        train_lora(tiny, [("prompt", "")])


@pytest.mark.real
def test_smollm2_adapter_learns_and_switches_off_exactly(smol, data):
    """On the real model: a few records of one user lower their loss; both generation paths see
    the adapter; switched off, logits and text are the base model's bit for bit."""
    user, exs = _user(data)
    records = methods_lora.lora_records(smol, "lamp4", user_history(exs)[-2:], user)
    ids = smol.encode(records[0][0])
    base_logits = smol.bridge(ids).detach()
    base_text = smol.generate(records[0][0], max_new_tokens=8)
    ad = train_lora(smol, records, rank=4, lr=2e-3, epochs=2, batch_size=2)  # 2 steps
    assert records_loss(smol, records, ad) < records_loss(smol, records)
    zero = SteeringVector.at(torch.zeros(smol.d_model), 3, "resid_post", smol.name, {}).apply(smol, scale=0.0)
    with ad.apply(smol):
        plain = smol.generate(records[0][0], max_new_tokens=8)
    with ad.apply(smol) + zero:
        bridged = smol.generate(records[0][0], max_new_tokens=8)
    assert plain == bridged
    assert torch.equal(smol.bridge(ids), base_logits)
    assert smol.generate(records[0][0], max_new_tokens=8) == base_text
