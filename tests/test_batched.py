"""Batched generation (issue 28): left padding, per-row stops, per-row interventions, DPS as 2B
rows, the runner's --batch-size — each batched output equal to its batch-1 output."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import all_hook_handles
from workbench.app.cli import main
from workbench.core.heads import mask_heads
from workbench.core.steering import steer
from workbench.data.lamp import load_lamp4_news
from workbench.methods import GenerationSettings
from workbench.runner.bench import run_bench
from workbench.runner.scaleout import bench_units
from workbench.science.dps import dps_generate
from workbench.science.dps_batch import dps_generate_batch

LONG = "the cat sat on the mat in the city of paris and the dog sat on the tower of the city"
SHORT = "a dog"
PROMPTS = [LONG, SHORT, "in the city of paris the best food", "user likes music and travel"]


def _bridge(model):
    """Anyone else's (identity) hook: generation then runs on the bridge, one prompt at a time."""
    return model.bridge.hooks(fwd_hooks=[(f"blocks.{model.n_layers - 1}.hook_resid_post", lambda x, hook: x)])


def _vector(model, seed: int, norm: float = 6.0) -> torch.Tensor:
    v = torch.randn(model.d_model, generator=torch.Generator().manual_seed(seed))
    return v / v.norm() * norm


def test_a_long_and_a_short_prompt_in_one_batch_get_their_batch_1_tokens(tiny):
    ids = [tiny.encode(p, chat=False) for p in (LONG, SHORT)]
    alone = [tiny.generate_tokens(i, 12) for i in ids]
    together = tiny.generate_tokens_batch(ids, 12)
    assert [t.tolist() for t in together] == [a.tolist() for a in alone]
    assert all(len(a) > 0 for a in alone)
    # either order: the padding of one row never leaks into the other
    swapped = tiny.generate_tokens_batch(ids[::-1], 12)
    assert [t.tolist() for t in swapped] == [a.tolist() for a in alone[::-1]]


def test_each_row_stops_on_its_own(tiny):
    seen: dict[int, int] = {}

    def after_three_words(text: str) -> bool:
        return len(text.split()) >= 3

    ids = [tiny.encode(p, chat=False) for p in PROMPTS]
    alone = [tiny.generate_tokens(i, 12, until=after_three_words) for i in ids]
    together = tiny.generate_tokens_batch(ids, 12, until=after_three_words)
    assert [t.tolist() for t in together] == [a.tolist() for a in alone]
    assert any(len(a) < 12 for a in alone), seen


def test_per_row_vectors_reach_only_their_rows(tiny):
    a, b = _vector(tiny, 1), _vector(tiny, 2)
    ivs = [steer(tiny, a, layer=1), None, mask_heads(tiny, [(0, 1), (1, 2)], how="uniform"), steer(tiny, b, layer=0)]
    rows = tiny.generate_batch(PROMPTS, 10, chat=False, interventions=ivs)
    expected, plain = [], []
    for prompt, iv in zip(PROMPTS, ivs):
        plain.append(tiny.generate(prompt, 10, chat=False))
        if iv is None:
            expected.append(plain[-1])
            continue
        with iv, _bridge(tiny):  # the intervention alone, on the bridge, batch 1
            expected.append(tiny.generate(prompt, 10, chat=False))
    assert rows == expected
    assert rows[0] != plain[0] and rows[3] != plain[3], "the vectors must change their own rows"
    # the same intervention on every row of the batch: each row steered
    both = tiny.generate_batch(PROMPTS[:2], 10, chat=False, interventions=[ivs[0], ivs[0]])
    with ivs[0]:
        assert both == [tiny.generate(p, 10, chat=False) for p in PROMPTS[:2]]


def test_per_row_vectors_move_exactly_their_rows_activations(tiny):
    """Downstream of the steered site, a row's activation moves by its own vector and no other
    row's activation moves at all."""
    from workbench.core import _fastpath

    a = _vector(tiny, 3)
    ids = [tiny.encode(p, chat=False) for p in PROMPTS[:3]]
    seen: list[torch.Tensor] = []
    nxt = _fastpath.location(tiny, "blocks.1.hook_resid_pre")  # the input of the block after the steered one
    handle = nxt.module.register_forward_pre_hook(lambda mod, args: seen.append(args[0].clone()))
    try:
        tiny.generate_tokens_batch(ids, 1)
        tiny.generate_tokens_batch(ids, 1, interventions=[None, steer(tiny, a, layer=0), None])
    finally:
        handle.remove()
    base, steered = seen[0], seen[-1]  # the two prompts' passes
    assert torch.equal(steered[0], base[0]) and torch.equal(steered[2], base[2])
    width = ids[1].shape[-1]
    moved = steered[1, -width:] - base[1, -width:]  # the row's own (unpadded) positions
    assert torch.allclose(moved, a.expand_as(moved), atol=1e-5)


def test_hooks_are_removed_after_an_exception_mid_batch(tiny):
    before = all_hook_handles(tiny)
    ivs = [steer(tiny, _vector(tiny, 4), layer=1, positions=slice(2, None)), mask_heads(tiny, [(1, 1)]), None, None]
    calls = []

    def boom(text: str) -> bool:
        calls.append(text)
        if len(calls) > 3:
            raise RuntimeError("stop here")
        return False

    with pytest.raises(RuntimeError, match="stop here"):
        tiny.generate_batch(PROMPTS, 10, chat=False, until=boom, interventions=ivs)
    with pytest.raises(RuntimeError, match="stop here"):
        calls.clear()
        dps_generate_batch(tiny, PROMPTS, [(1, 0)], alpha=2.0, max_new_tokens=10, chat=False, until=boom, interventions=ivs)
    assert all_hook_handles(tiny) == before
    assert not tiny.__dict__.get("_active")
    # and the model generates as before
    assert tiny.generate_batch(PROMPTS[:2], 6, chat=False) == [tiny.generate(p, 6, chat=False) for p in PROMPTS[:2]]


@pytest.mark.parametrize("branch", [True, False])
def test_dps_batch_gives_each_prompt_its_batch_1_dps_tokens(tiny, branch):
    heads = [(1, 0), (1, 3)]
    ids = [tiny.encode(p, chat=False) for p in PROMPTS]
    for alpha, plausibility in ((8.0, None), ("entropy", 0.1)):
        alone = [dps_generate(tiny, i, heads, alpha=alpha, plausibility=plausibility, max_new_tokens=10) for i in ids]
        together = dps_generate_batch(tiny, ids, heads, alpha=alpha, plausibility=plausibility, max_new_tokens=10,
                                      branch=branch)
        assert together == alone
    plain = [tiny.generate_tokens(i, 10) for i in ids]
    decoded = [tiny.tokenizer.decode(p, skip_special_tokens=True).strip() for p in plain]
    strong = dps_generate_batch(tiny, ids, heads, alpha=8.0, max_new_tokens=10, branch=branch)
    assert strong != decoded, "a strong contrast must change some output (else this test shows nothing)"


def test_dps_batch_with_per_row_heads_and_steering(tiny):
    heads = [[(1, 0)], [(0, 2), (1, 1)], [(1, 3)], [(0, 0)]]
    ivs = [steer(tiny, _vector(tiny, 5, 3.0), layer=0), None, steer(tiny, _vector(tiny, 6, 3.0), layer=1), None]
    together = dps_generate_batch(tiny, PROMPTS, heads, alpha=4.0, per_row_heads=True, chat=False, max_new_tokens=8,
                                  interventions=ivs)
    alone = []
    for prompt, h, iv in zip(PROMPTS, heads, ivs):
        if iv is None:
            alone.append(dps_generate(tiny, prompt, h, alpha=4.0, chat=False, max_new_tokens=8))
        else:
            with iv:  # a steering vector around DPS acts on both streams
                alone.append(dps_generate(tiny, prompt, h, alpha=4.0, chat=False, max_new_tokens=8, branch=False))
    assert together == alone


@pytest.mark.parametrize("bad", [0, -3, 1.5, True, "4"])
def test_a_bad_batch_size_is_a_clear_error(tiny, tmp_path, bad):
    with pytest.raises(ValueError, match="batch_size"):
        run_bench(tiny, load_lamp4_news(), ["generic"], tmp_path, n=2, batch_size=bad, progress=False)
    assert not (tmp_path / "outputs.jsonl").exists()


@pytest.mark.parametrize("text", ["0", "-1", "2.5", "many"])
def test_a_bad_batch_size_on_the_command_line_is_a_usage_error(tmp_path, capsys, text):
    with pytest.raises(SystemExit) as e:
        main(["bench", "--model", "tiny-random", "--methods", "generic", "--n", "2", "--batch-size", text,
              "--out", str(tmp_path / "b")])
    assert e.value.code == 2 and "--batch-size" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_a_resumed_batched_run_equals_a_serial_run(tiny, tmp_path):
    news = load_lamp4_news()
    settings = GenerationSettings(max_new_tokens=6)
    methods = ["generic", "rag", "caa-user", "dps"]
    serial = run_bench(tiny, news, methods, tmp_path / "serial", n=7, settings=settings, batch_size=1, progress=False)
    run_bench(tiny, news, methods, tmp_path / "batched", n=4, settings=settings, batch_size=3, progress=False)
    resumed = run_bench(tiny, news, methods, tmp_path / "batched", n=7, settings=settings, batch_size=3, progress=False)
    key = ["method", "id", "prediction"]
    a = serial.outputs[key].sort_values(["method", "id"]).reset_index(drop=True)
    b = resumed.outputs[key].sort_values(["method", "id"]).reset_index(drop=True)
    assert a.equals(b)
    lines = (tmp_path / "batched" / "outputs.jsonl").read_text().splitlines()
    assert len(lines) == 7 * len(methods) and len({(json.loads(l)["method"], json.loads(l)["id"]) for l in lines}) == len(lines)


def test_ray_units_hold_a_batch_of_consecutive_users():
    class M:
        name = "rag"

    class Ex:
        def __init__(self, i):
            self.id = i

    by_user = {"u1": [Ex("a"), Ex("b")], "u2": [Ex("c")], "u3": [Ex("d"), Ex("e"), Ex("f")], "u4": [Ex("g")]}
    assert bench_units([M()], by_user, {}, 1) == sorted(
        [("rag", ["u1"], ["a", "b"], 1), ("rag", ["u2"], ["c"], 1), ("rag", ["u3"], ["d", "e", "f"], 1),
         ("rag", ["u4"], ["g"], 1)], key=lambda u: -len(u[2]))
    units = bench_units([M()], by_user, {("rag", "a"): {}}, 3)
    assert units == [("rag", ["u1", "u2", "u3"], ["b", "c", "d", "e", "f"], 3), ("rag", ["u4"], ["g"], 3)]


@pytest.mark.real
def test_batched_and_fast_path_tokens_on_smollm2(smol):
    """On a real model: batched rag prompts give their batch-1 tokens; steered and head-masked
    generation on the hook-free view gives the bridge's tokens."""
    from workbench.data.prompts import build_prompt, first_line_complete

    prompts = [build_prompt(smol, ex, k=3, reserve=24)[0] for ex in list(load_lamp4_news())[:4]]
    alone = [smol.generate(p, 24, until=first_line_complete) for p in prompts]
    assert smol.generate_batch(prompts, 24, until=first_line_complete) == alone
    vector = _vector(smol, 7, norm=8.0)
    for iv in (steer(smol, vector, layer=12), mask_heads(smol, [(3, 1), (10, 4), (20, 7)], how="uniform")):
        with iv:
            fast = [smol.generate(p, 24, until=first_line_complete) for p in prompts[:2]]
            with _bridge(smol):
                bridged = [smol.generate(p, 24, until=first_line_complete) for p in prompts[:2]]
        assert fast == bridged
    steered = smol.generate_batch(prompts[:2], 24, until=first_line_complete,
                                  interventions=[steer(smol, vector, layer=12), None])
    assert steered[1] == alone[1] and steered[0] != alone[0]


def test_a_grid_reuses_the_prompt_pass_and_gets_the_same_tokens(tiny):
    # DPS's prompt pass is the same at every alpha and head set: kept once, it serves each point,
    # and every point's tokens are those it gets alone (the reused cache must be a copy, since
    # decoding trims and grows it). With a steering hook the prompt pass differs: never reused.
    from workbench.science.dps_batch import reuse_prompt_caches

    ids = [tiny.encode(p, chat=False) for p in PROMPTS]
    points = [([(1, 0)], 8.0), ([(0, 2), (1, 3)], 8.0), ([(1, 0)], "entropy"), ([(1, 0)], 8.0)]
    alone = [dps_generate_batch(tiny, ids, h, alpha=a, max_new_tokens=10) for h, a in points]
    assert len(set(map(tuple, alone))) > 1, "the points must differ (else this test shows nothing)"
    with reuse_prompt_caches() as store:
        reused = [dps_generate_batch(tiny, ids, h, alpha=a, max_new_tokens=10) for h, a in points]
        assert (store.hits, store.misses) == (3, 1) and store.used > 0
        with steer(tiny, _vector(tiny, 7, 3.0), layer=0):
            steered = dps_generate_batch(tiny, ids, [(1, 0)], alpha=8.0, max_new_tokens=10)
        assert (store.hits, store.misses) == (3, 1)
        with reuse_prompt_caches(max_bytes=0) as empty:  # nothing fits: recomputed, same tokens
            assert dps_generate_batch(tiny, ids, [(1, 0)], alpha=8.0, max_new_tokens=10) == alone[0]
            assert empty.used == 0 and empty.hits == 0
    assert reused == alone
    with steer(tiny, _vector(tiny, 7, 3.0), layer=0):
        assert steered == dps_generate_batch(tiny, ids, [(1, 0)], alpha=8.0, max_new_tokens=10)
    assert dps_generate_batch(tiny, ids, [(1, 0)], alpha=8.0, max_new_tokens=10) == alone[0]  # the block is closed
    assert all_hook_handles(tiny) == 0
