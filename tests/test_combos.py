"""A steering vector applied while decoding with DPS: each part can be switched off."""

from __future__ import annotations

from pathlib import Path

import pytest

from workbench.methods.combined import CaaAllDps, SteerxCaaDps
from workbench.data.lamp import load_lamp4_news
from workbench.methods import GenerationSettings, make_methods

HEADS = str(Path(__file__).resolve().parents[1] / "results" / "pcs_lamp4-news_smollm2-135m.json")


@pytest.fixture(scope="module")
def data():
    return load_lamp4_news()


def _run(method, model, data, ex):
    method.prepare_run(model, [ex], data)
    state = method.prepare_user(model, ex.user_id, data.by_user(ex.user_id).examples)
    return method.generate(model, ex, state)


@pytest.mark.parametrize("cls", [CaaAllDps, SteerxCaaDps])
def test_combination_records_both_parts(tiny, data, cls):
    m = cls(GenerationSettings(max_new_tokens=4))
    text, info = _run(m, tiny, data, data[0])
    assert isinstance(text, str) and info["heads"] and info["vector_norm"] > 0
    d = m.describe()
    assert d["name"] == cls.name and d["steering"]["name"] == cls.parts[0] and d["decoding"]["name"] == "dps"


@pytest.mark.real
def test_each_part_switched_off_gives_the_other(smol, data):
    ex = data[0]
    settings = GenerationSettings(max_new_tokens=10)
    dps, steered, rag = make_methods(["dps", "caa-all", "rag"], settings)
    dps.heads_file = HEADS  # the saved lamp4 preference heads (recomputing them takes minutes)
    steered.scale = 4.0  # at scale 1 the first tokens can still match rag's; the claim is about composition
    dps.prepare_run(smol, [ex], data)
    vector = steered.prepare_user(smol, ex.user_id, data.by_user(ex.user_id).examples)  # built once, shared
    out = {"dps": dps.generate(smol, ex, None)[0], "steered": steered.generate(smol, ex, vector)[0],
           "rag": rag.generate(smol, ex, None)[0]}
    # otherwise the checks below could not tell the parts apart
    assert out["dps"] != out["rag"] and out["steered"] != out["rag"]

    def combo(**change):
        m = CaaAllDps(settings, heads_file=HEADS)
        m.decoding.prepare_run(smol, [ex], data)
        m.steering.scale = steered.scale
        for k, v in change.items():
            setattr(m.steering if k == "scale" else m.decoding, k, v)
        return m.generate(smol, ex, vector)[0]

    assert combo(scale=0.0) == out["dps"]
    assert combo(alpha=0.0) == out["steered"]
