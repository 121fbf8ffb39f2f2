"""The method pipeline and the intervention objects it composes (tiny model)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

import workbench as wb
from conftest import all_hook_handles
from workbench.core.hooks import HookSet, Interventions
from workbench.methods import GREEDY, METHODS, Combination, GenerationSettings, Method, make_methods, unrecorded
from workbench.core.steering import SITES, SteeringVector


def test_every_method_runs_the_one_pipeline():
    # No method may rewrite generate: prompt -> intervention -> decoder -> first line is shared.
    make_methods(["generic"], GenerationSettings())  # loads the plug-in modules
    for name in sorted(METHODS):
        assert METHODS[name].generate is Method.generate, f"{name} overrides Method.generate"


def test_describe_comes_from_the_fields():
    @dataclass
    class Probe(Method):
        name = "probe"
        alpha: float = 0.5
        cache: bool = unrecorded(True)

    d = Probe(GenerationSettings(max_new_tokens=7)).describe()
    assert d == {"name": "probe", "max_new_tokens": 7, "k": 5, "retrieval": "bm25", "alpha": 0.5}
    assert "alpha=0.5" in repr(Probe())


def test_a_combination_is_one_methods_intervention_and_anothers_decoder():
    m = make_methods(["caa-all+dps"], GenerationSettings(max_new_tokens=4))[0]
    assert isinstance(m, Combination)
    assert m.steering.name == "caa-all" and m.decoding.name == "dps"
    m.decoding.heads = [(0, 1)]
    assert type(m.decoder()).__name__ == "DpsDecoder" and m.decoder().heads == ((0, 1),)
    assert make_methods(["caa-all"], GenerationSettings())[0].decoder() is GREEDY


def test_intervention_is_applied_only_while_decoding(tiny):
    from workbench.data.records import Example

    seen = []

    class Recorder:
        info = {"decoder": "recorder"}

        def decode(self, model, prompt, max_new_tokens):
            seen.append(all_hook_handles(model))
            return "first line\nsecond line"

    @dataclass
    class Spy(Method):
        name = "spy"

        def intervention(self, model, example, state):
            return wb.steer(model, torch.ones(model.d_model), layer=0, scale=3.0), {"spied": True}

        def decoder(self):
            return Recorder()

    n0 = all_hook_handles(tiny)
    ex = Example("q", "u", "lamp4", "the cat and the dog", ({"id": "1", "text": "a cat", "title": "cats"},), "g")
    text, info = Spy(GenerationSettings(max_new_tokens=3)).generate(tiny, ex, None)
    assert text == "first line" and info["spied"] and info["decoder"] == "recorder"
    assert seen[0] > n0 and all_hook_handles(tiny) == n0


def test_interventions_compose_and_clean_up(tiny, tiny_ids):
    v = SteeringVector.at(torch.randn(tiny.d_model), 1, "resid_post", tiny.name)
    mask = wb.mask_heads(tiny, [(0, 1)], how="zero")
    both = v.apply(tiny, scale=2.0) + mask
    assert isinstance(both, Interventions) and isinstance(both, HookSet) and len(both.hooks) == 2
    n0 = all_hook_handles(tiny)
    with torch.no_grad():
        base = tiny.bridge(tiny_ids)
        with v.apply(tiny, scale=2.0), mask:
            nested = tiny.bridge(tiny_ids)
        with pytest.raises(RuntimeError, match="boom"):
            with both:
                assert all_hook_handles(tiny) > n0
                raise RuntimeError("boom")
        assert all_hook_handles(tiny) == n0
        with both:
            combined = tiny.bridge(tiny_ids)
            with both:  # re-entrant: the same object nested in itself
                pass
            assert torch.equal(tiny.bridge(tiny_ids), combined)
    assert torch.equal(nested, combined) and not torch.equal(base, combined)
    assert all_hook_handles(tiny) == n0


def test_one_site_table_reads_what_it_writes(tiny, tiny_ids):
    # Adding a vector at a site moves the activation the table says the site reads by exactly it.
    layer, vec = 1, torch.randn(tiny.d_model)
    for site, spec in SITES.items():
        def read(hooks=()):
            got = {}
            store = [(n, (lambda n: lambda x, hook: got.__setitem__(n, x.detach().clone()))(n))
                     for n in spec.read_hooks(layer)]
            tiny.bridge.run_with_hooks(tiny_ids, fwd_hooks=list(hooks) + store)
            return sum(got[n] for n in spec.read_hooks(layer))

        with torch.no_grad():
            before = read()
            after = read(SteeringVector.at(vec, layer, site, tiny.name).apply(tiny).hooks)
        assert torch.allclose(after - before, vec.expand_as(before), atol=1e-4), site


def test_steering_vector_entries_save_and_load(tiny, tmp_path):
    v = SteeringVector({(0, "attn_out"): torch.randn(tiny.d_model), (1, "mlp_out"): torch.randn(tiny.d_model)},
                       tiny.name, {"method": "fints"})
    back = SteeringVector.load(v.save(tmp_path / "v.pt"), model=tiny)
    assert back.entries == [(0, "attn_out"), (1, "mlp_out")] and back.built == {"method": "fints"}
    assert all(torch.equal(back.vectors[k].cpu(), v.vectors[k]) for k in v.vectors)
    with pytest.raises(ValueError, match="entries"):
        _ = v.vector  # two entries: ask for .vectors
    with pytest.raises(ValueError, match="site"):
        SteeringVector.at(torch.randn(4), 0, "resid_middle", tiny.name)
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="junk.pt"):
        SteeringVector.load(tmp_path / "junk.pt")
