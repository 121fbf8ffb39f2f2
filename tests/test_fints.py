"""Fints: contrastive pairs, sample vectors, input-aware aggregation, injection, methods."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import all_hook_handles
from workbench.science import fints
from workbench.data.records import Example
from workbench.data.lamp import load_lamp4_news
from workbench.science.fints import SampleVectors, aggregate, fints_steer, picked, sample_vectors
from workbench.science.pairs import contrastive_pairs, select_items
from workbench.app.report_sections import fints_section
from workbench.data.retrieval import bm25_scores
from workbench.core.steering import SteeringVector
from workbench.runner.sweeps import fints_sweep
from workbench.data.metrics import rouge_scorer

WORDS = "the a cat dog sat on mat is in of city paris tower and".split()


def _item(i: int) -> dict:
    rng = np.random.default_rng(i)
    text = " ".join(rng.choice(WORDS, 8))
    return {"id": f"h{i}", "text": text, "title": " ".join(rng.choice(WORDS, 4))}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def user():
    profile = tuple(_item(i) for i in range(6))
    return [Example("q1", "u1", "lamp4", "Generate a headline for the following article: the cat sat on the mat",
                    profile[:5], "the cat"),
            Example("q2", "u1", "lamp4", "Generate a headline for the following article: a dog in paris",
                    profile, "a dog")]


@pytest.fixture
def others():
    return [_item(100 + i) for i in range(8)]


@pytest.fixture
def pairs(tiny, user, others, cache):
    return contrastive_pairs(tiny, user, others, n_others=2, threshold=1.01, max_new_tokens=4)


def test_pairs_are_filtered_by_rouge_threshold(tiny, user, others, cache):
    df = contrastive_pairs(tiny, user, others, n_others=2, threshold=0.15, max_new_tokens=4)
    assert len(df) == 6 and set(df["item_id"]) == {f"h{i}" for i in range(6)}
    recomputed = [rouge_scorer().score(p, n)["rougeL"].fmeasure if n else 1.0 for p, n in zip(df["positive"], df["negative"])]
    assert np.allclose(df["rougeL"], recomputed)
    assert list(df["kept"]) == [bool(n) and r < 0.15 for n, r in zip(df["negative"], df["rougeL"])]
    assert not contrastive_pairs(tiny, user, others, n_others=2, threshold=0.0, max_new_tokens=4)["kept"].any()
    # the negative's prompt shows other users' items, never the user's own
    assert all(set(o) <= {x["id"] for x in others} and len(o) == 2 for o in df["others"])
    assert df.attrs["model"] == tiny.name and df.attrs["settings"]["threshold"] == 0.15


def test_pairs_cache_round_trip_and_keys(tiny, user, others, cache, monkeypatch):
    first = contrastive_pairs(tiny, user, others, n_others=2, threshold=1.01, max_new_tokens=4)
    files = list((cache / "fints").glob("*/pairs/*.json"))
    assert len(files) == 1
    data = json.loads(files[0].read_text())
    assert data["model"] == tiny.name and len(data["records"]) == 6

    def no_generation(*a, **k):
        raise AssertionError("cached negatives were generated again")

    monkeypatch.setattr(tiny, "generate", no_generation)
    again = contrastive_pairs(tiny, user, others, n_others=2, threshold=1.01, max_new_tokens=4)
    assert list(again["negative"]) == list(first["negative"])
    with pytest.raises(AssertionError, match="generated again"):  # other settings -> other key
        contrastive_pairs(tiny, user, others, n_others=2, threshold=1.01, max_new_tokens=5)
    with pytest.raises(AssertionError, match="generated again"):  # cache=False never reads
        contrastive_pairs(tiny, user, others, n_others=2, threshold=1.01, max_new_tokens=4, cache=False)


def test_pairs_bad_input(tiny, user, others, cache):
    with pytest.raises(ValueError, match="n_others"):
        contrastive_pairs(tiny, user, others[:1], n_others=2)
    with pytest.raises(ValueError, match="by='recent'"):
        select_items([_item(1), _item(2)], by="query", task="lamp4")
    with pytest.raises(ValueError, match="task="):  # item dicts do not say which fields are input and output
        select_items([_item(1), _item(2)], by="recent")
    with pytest.raises(ValueError, match="mixes users"):
        contrastive_pairs(tiny, [user[0], Example("x", "u2", "lamp4", "a", (_item(9),), "b")], others)
    assert len(select_items(user, max_items=3)) == 3
    assert [it["id"] for it in select_items([_item(i) for i in range(5)], max_items=2, by="recent", task="lamp4")] \
        == ["h4", "h3"]


def test_pairs_of_another_task(tiny, cache):
    # LaMP-5: the item's abstract is the input, its title the positive; nothing in the pairs code names them.
    items = [{"id": f"p{i}", "abstract": _item(i)["text"], "title": _item(i)["title"]} for i in range(4)]
    others = [{"id": f"o{i}", "abstract": _item(50 + i)["text"], "title": _item(50 + i)["title"]} for i in range(3)]
    df = contrastive_pairs(tiny, items, others, task="lamp5", n_others=2, threshold=1.01, max_new_tokens=4)
    assert list(df["text"]) == [it["abstract"] for it in reversed(items)]  # the most recent first
    assert list(df["positive"]) == [it["title"] for it in reversed(items)]
    asked = "Write a title for this paper abstract" if tiny.has_chat_template else "Abstract: "  # LaMP-5's prompt
    assert all(asked in str(p) for p in df["prompt"])
    with pytest.raises(ValueError, match="task="):
        contrastive_pairs(tiny, items, others, n_others=2)


def test_vectors_have_model_width_and_are_differences(tiny, pairs):
    vecs = sample_vectors(tiny, pairs, layer=1)
    assert vecs.attn.shape == vecs.mlp.shape == (int(pairs["kept"].sum()), tiny.d_model)
    assert len(vecs) > 0 and vecs.layer == 1 and vecs.model_name == tiny.name
    # by hand for the first pair: mean over response tokens of the positive minus the negative
    row = pairs[pairs["kept"]].iloc[0]

    def mean_act(resp, hook):
        ids, start = tiny.prompt_and_target(row["prompt"], resp)
        _, c = tiny.bridge.run_with_cache(ids, names_filter=[hook])
        return c[hook][0, start:].mean(0)

    want = mean_act(row["positive"], "blocks.1.hook_mlp_out") - mean_act(row["negative"], "blocks.1.hook_mlp_out")
    assert torch.allclose(vecs.mlp[0], want, atol=1e-5)
    both = sample_vectors(tiny, pairs, layer=[0, 1], attn_site="resid_mid", mlp_site="resid_post")
    assert set(both) == {0, 1} and both[1].attn_site == "resid_mid"
    want = (mean_act(row["positive"], "blocks.1.hook_resid_pre") + mean_act(row["positive"], "blocks.1.hook_attn_out")
            - mean_act(row["negative"], "blocks.1.hook_resid_pre") - mean_act(row["negative"], "blocks.1.hook_attn_out"))
    assert torch.allclose(both[1].attn[0], want, atol=1e-4)
    # below the last layer the passes stop early (and share the prompt's cache): same numbers
    low = sample_vectors(tiny, pairs, layer=0)
    want = mean_act(row["positive"], "blocks.0.hook_attn_out") - mean_act(row["negative"], "blocks.0.hook_attn_out")
    assert torch.allclose(low.attn[0], want, atol=1e-5)
    assert torch.allclose(low.mlp, sample_vectors(tiny, pairs, layer=[0, 1])[0].mlp, atol=1e-5)
    with pytest.raises(ValueError, match="attn_site"):
        sample_vectors(tiny, pairs, layer=1, attn_site="resid_post")
    with pytest.raises(ValueError, match="out of range"):
        sample_vectors(tiny, pairs, layer=7)


def test_vectors_start_from_the_negatives_prompt_caches(tiny, user, others, cache, monkeypatch):
    # Fints methods build pairs with keep_prompts: each negative generated leaves its prompt's
    # KV cache, and the vectors skip that prompt's pass — same negatives, same vectors.
    plain = contrastive_pairs(tiny, user, others, n_others=2, threshold=1.01, max_new_tokens=4, cache=False)
    kept: dict = {}
    shared = contrastive_pairs(tiny, user, others, n_others=2, threshold=1.01, max_new_tokens=4, cache=False,
                               keep_prompts=kept)
    cols = ["item_id", "text", "positive", "negative", "rougeL", "kept", "others", "prompt"]
    assert shared[cols].equals(plain[cols])
    assert set(kept) == {tuple(tiny.encode(p)[0].tolist()) for p in shared["prompt"]}
    prompt_passes = []
    own_pass = fints.prefix_cache
    monkeypatch.setattr(fints, "prefix_cache", lambda *a, **k: prompt_passes.append(1) or own_pass(*a, **k))
    for layer in (0, 1):  # an early stop and the last layer
        fresh = sample_vectors(tiny, shared.assign(kept=True), layer=layer)
        assert len(prompt_passes) == len(shared)  # each pair's prompt, once
        caches = dict(kept) if layer == 0 else kept
        started = sample_vectors(tiny, shared.assign(kept=True), layer=layer, prompt_caches=caches)
        assert len(prompt_passes) == len(shared)  # none more: the kept caches served
        assert not caches  # each cache is taken when used
        # both prompt passes ran on the hook-free view: the same numbers
        assert torch.equal(started.attn, fresh.attn) and torch.equal(started.mlp, fresh.mlp)
        prompt_passes.clear()


def test_generate_keeping_prompt_is_generate(tiny, tiny_ids):
    from workbench.data.prompts import first_line_complete

    for prompt, n in (("the cat sat on the mat", 6), ("a dog in paris and the city", 3)):
        text, (ids, kv) = tiny._generate_keeping_prompt(prompt, n)
        assert text == tiny.generate(prompt, max_new_tokens=n)
        assert torch.equal(ids, tiny.encode(prompt)) and kv.get_seq_length() == ids.shape[-1]  # the prompt only
        text, _ = tiny._generate_keeping_prompt(prompt, n, until=first_line_complete)
        assert text == tiny.generate(prompt, max_new_tokens=n, until=first_line_complete)
    # a hook the view cannot run: the bridge generates, and no cache comes back
    with tiny.bridge.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", lambda x, hook: x)]):
        text, prompt_pass = tiny._generate_keeping_prompt("the cat sat on the mat", 6)
        assert prompt_pass is None and text == tiny.generate("the cat sat on the mat", max_new_tokens=6)


def _vectors(n=6, d=8, seed=0) -> SampleVectors:
    import pandas as pd

    g = torch.Generator().manual_seed(seed)
    topics = ["senate vote budget taxes", "football final goal cup", "storm rain flood coast",
              "vaccine trial doctors health", "film festival actors award", "market stocks bank rates"]
    texts = [f"{topics[i % 6]} {topics[(i + 1) % 6].split()[0]} news report" for i in range(n)]
    items = pd.DataFrame({"item_id": [f"h{i}" for i in range(n)], "text": texts,
                          "positive": [f"headline {i}" for i in range(n)], "negative": ["x"] * n,
                          "rougeL": [0.0] * n})
    return SampleVectors(torch.randn(n, d, generator=g), torch.randn(n, d, generator=g), items, "m", 0)


def test_softmax_weights_match_hand_computation():
    vecs = _vectors()
    query = "a storm brings rain to the coast after the football cup final"
    agg = aggregate(vecs, query, k=3, tau=0.1)
    raw = bm25_scores(query, [f"{t} {p}" for t, p in zip(vecs.items["text"], vecs.items["positive"])])
    assert raw.max() > 0 and len(set(np.round(raw, 6))) > 2  # the test needs distinct scores
    top = np.argsort(-raw, kind="stable")[:3]
    w = np.exp(raw[top] / raw.max() / 0.1)
    w /= w.sum()
    assert list(picked(agg)["item_id"]) == [f"h{j}" for j in top]
    assert np.allclose(picked(agg)["weight"], w, atol=1e-6) and abs(picked(agg)["weight"].sum() - 1) < 1e-6
    attn = agg.vectors[(0, "attn_out")]
    assert torch.allclose(attn, torch.tensor(w, dtype=torch.float32) @ vecs.attn[top], atol=1e-5)
    assert isinstance(agg, SteeringVector) and "attn_out" in repr(agg) and "mlp_out" in repr(agg)


def test_uniform_weighting_is_the_mean_and_restrict_keeps_own_profile():
    vecs = _vectors()
    agg = aggregate(vecs, "bank rates and film awards", k=4, weighting="uniform")
    idx = [int(i[1:]) for i in picked(agg)["item_id"]]
    assert torch.allclose(agg.vectors[(0, "mlp_out")], vecs.mlp[idx].mean(0), atol=1e-6)
    assert np.allclose(picked(agg)["weight"], 0.25)
    ex = Example("q", "u", "lamp4", "the cat", (_item(1), _item(4)), "g")
    used = picked(aggregate(vecs, ex, k=5))
    assert set(used["item_id"]) == {"h1", "h4"}  # only items of the example's own profile
    assert torch.allclose(vecs.user_mean().vectors[(0, "attn_out")], vecs.attn.mean(0), atol=1e-6)
    with pytest.raises(ValueError, match="no history item"):
        aggregate(vecs, Example("q", "u", "lamp4", "x", (_item(99),), "g"))
    with pytest.raises(ValueError, match="weighting"):
        aggregate(vecs, "x", weighting="max")
    custom = aggregate(vecs, "x", k=2, scorer=lambda q, docs: np.arange(len(docs), dtype=float))
    assert list(picked(custom)["item_id"]) == ["h5", "h4"]


def test_steering_changes_logits_and_hooks_are_removed(tiny, pairs, tiny_ids):
    vecs = sample_vectors(tiny, pairs, layer=1)
    agg = aggregate(vecs, "the cat sat", k=3)
    n0 = all_hook_handles(tiny)
    base = tiny.bridge(tiny_ids)
    with fints_steer(tiny, agg, scale=4.0) as s:
        assert all_hook_handles(tiny) > n0 and len(s.hooks) == 2
        steered = tiny.bridge(tiny_ids)
    assert (steered - base).abs().max() > 1e-3
    assert all_hook_handles(tiny) == n0
    assert torch.equal(tiny.bridge(tiny_ids), base)
    with pytest.raises(RuntimeError, match="boom"):
        with fints_steer(tiny, agg, scale=4.0):
            raise RuntimeError("boom")
    assert all_hook_handles(tiny) == n0
    # attention-only steering = adding the vector at attn_out by hand
    with fints_steer(tiny, agg, scale=2.0, mlp_scale=0.0):
        only_attn = tiny.bridge(tiny_ids)
    attn = agg.vectors[(1, "attn_out")]
    by_hand = tiny.bridge.run_with_hooks(tiny_ids, fwd_hooks=[("blocks.1.hook_attn_out", lambda x, hook: x + 2 * attn)])
    assert torch.allclose(only_attn, by_hand, atol=1e-5)
    other = SteeringVector(agg.vectors, "another-model", agg.built)
    with pytest.raises(ValueError, match="another-model"):
        fints_steer(tiny, other)


def test_save_load_refuses_other_model_and_overwrite(tiny, pairs, tmp_path):
    vecs = sample_vectors(tiny, pairs, layer=0)
    path = vecs.save(tmp_path / "v.pt")
    back = SampleVectors.load(path, model=tiny)
    assert torch.equal(back.attn, vecs.attn) and list(back.items["item_id"]) == list(vecs.items["item_id"])
    assert back.layer == 0 and back.settings == json.loads(json.dumps(vecs.settings, default=str))
    with pytest.raises(FileExistsError, match="overwrite=True"):
        vecs.save(path)
    vecs.save(path, overwrite=True)
    other = SampleVectors(vecs.attn, vecs.mlp, vecs.items, "other-model", 0)
    other.save(tmp_path / "o.pt")
    with pytest.raises(ValueError, match="other-model"):
        SampleVectors.load(tmp_path / "o.pt", model=tiny)


def test_vectors_of_a_user_with_no_kept_pair_survive_the_cache(tiny, user, others, cache, tmp_path):
    # Every pair filtered out: no vector, and the saved file has no record to name the columns
    # after; read back (the next run, or the next Fints method, of the same user) it must still
    # say "nothing of this example's profile", and the method then writes unsteered.
    from workbench.methods import GenerationSettings, make_methods

    none_kept = contrastive_pairs(tiny, user, others, n_others=2, threshold=0.0, max_new_tokens=4)
    assert not none_kept["kept"].any()
    vecs = sample_vectors(tiny, none_kept, layer=0)
    back = SampleVectors.load(vecs.save(tmp_path / "empty.pt"), model=tiny)
    assert len(back) == 0 and back.attn.shape == (0, tiny.d_model)
    assert list(back.items.columns) == list(fints._ITEM_COLUMNS)
    assert len(back.for_example(user[1])) == 0
    for method in make_methods(["fints", "fints+rag", "caa-user"], GenerationSettings(max_new_tokens=4)):
        hooks, facts = method.intervention(tiny, user[1], back)
        assert hooks is None and facts["steered"] is False


def test_methods_run_in_bench(tiny, tmp_path, cache):
    from workbench.runner.bench import run_bench
    from workbench.methods import GenerationSettings, available_methods

    assert {"fints", "fints+rag", "caa-user"} <= set(available_methods())
    news = load_lamp4_news()
    res = run_bench(tiny, news, ["fints", "fints+rag", "caa-user"], tmp_path, n=2,
                    settings=GenerationSettings(max_new_tokens=4), progress=False)
    out = res.outputs
    assert len(out) == 6 and set(out["method"]) == {"fints", "fints+rag", "caa-user"}
    # every item a query's steering used is in that query's own profile
    for rec in out.itertuples():
        if rec.steered:
            ex = next(e for e in news if e.id == rec.id)
            assert set(rec.fints_items.split(";")) <= {str(it["id"]) for it in ex.profile}
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["method_settings"]["fints"]["scale"] == fints.DEFAULT_SCALE
    assert fints.default_layer(tiny) in (0, 1)


def test_method_vectors_are_cached_across_runs(tiny, user, tmp_path, cache, monkeypatch):
    from workbench.methods import GenerationSettings, make_methods
    from workbench.methods import fints as fints_methods

    news = load_lamp4_news()
    method, other = make_methods(["caa-user", "fints"], GenerationSettings(max_new_tokens=4))
    method.prepare_run(tiny, user, news)
    first = method.prepare_user(tiny, "u1", user)
    files = list((cache / "fints").rglob("vectors/*.pt"))
    assert len(files) == 1
    # a new process: nothing in memory, the vectors come from the file, unchanged
    fints_methods._VECTOR_MEMO.clear()
    monkeypatch.setattr(fints_methods, "sample_vectors", lambda *a, **k: pytest.fail("rebuilt cached vectors"))
    again = method.prepare_user(tiny, "u1", user)
    assert torch.equal(again.attn, first.attn) and torch.equal(again.mlp, first.mlp)
    assert list(again.items["item_id"]) == list(first.items["item_id"])
    # another layer is another entry; a damaged file is rebuilt, not trusted
    monkeypatch.undo()
    monkeypatch.setenv("WORKBENCH_CACHE", str(cache))
    fints_methods._VECTOR_MEMO.clear()
    files[0].write_bytes(b"not a torch file")
    rebuilt = method.prepare_user(tiny, "u1", user)
    # the first build started from the negatives' prompt passes; the rebuild (negatives cached)
    # runs the prompts itself, on the same view and layers: the same numbers
    assert torch.equal(rebuilt.mlp, first.mlp)
    other.layer = 1 - first.layer
    other.prepare_run(tiny, user, news)
    other.prepare_user(tiny, "u1", user)
    assert len(list((cache / "fints").rglob("vectors/*.pt"))) == 2


@pytest.mark.real
def test_real_fints_end_to_end_changes_rag_output(smol):
    news = load_lamp4_news()
    exs = list(news.by_user(news.users()[1]))
    prompts: dict = {}
    pairs = contrastive_pairs(smol, exs, news, max_items=3, cache=False, keep_prompts=prompts)
    assert pairs["kept"].any() and (pairs["negative"].str.len() > 0).all()
    from workbench.data.prompts import generate_line

    assert pairs["negative"].iloc[0] == generate_line(smol, pairs["prompt"].iloc[0], max_new_tokens=24)
    vecs = sample_vectors(smol, pairs, prompt_caches=prompts)  # from the negatives' prompt passes
    fresh = sample_vectors(smol, pairs)
    assert torch.allclose(vecs.attn, fresh.attn, atol=1e-4) and torch.allclose(vecs.mlp, fresh.mlp, atol=1e-4)
    ex = exs[-1]
    agg = aggregate(vecs.for_example(ex) if len(vecs.for_example(ex)) else vecs, ex.input, k=5)
    assert abs(picked(agg)["weight"].sum() - 1) < 1e-5
    from workbench.data.prompts import build_prompt

    prompt, _ = build_prompt(smol, ex, k=5)
    plain = smol.generate(prompt, max_new_tokens=16)
    with fints_steer(smol, agg, scale=4.0):  # strong enough to change 16 greedy tokens
        steered = smol.generate(prompt, max_new_tokens=16)
    assert steered != plain
    assert smol.generate(prompt, max_new_tokens=16) == plain


def test_report_section_on_tiny(tiny, cache):
    title, body = fints_section(tiny)
    assert "Fints" in title and "<table>" in body and "generic" in body


@pytest.mark.real
def test_real_report_section(smol):
    title, body = fints_section(smol)
    assert "Fints" in title and "fints+rag" in body and "<table>" in body


def test_sweep_nll_rows_and_baseline(tiny, user, others, cache):
    from workbench.data.prompts import build_prompt

    df = fints_sweep(tiny, user, others, layers=[0, 1], scales=[0, 2.0], max_items=3, progress=False)
    assert len(df) == len(user) * 2 * 2 and set(df["scale"]) == {0.0, 2.0}
    ex = user[0]
    base = tiny.nll(build_prompt(tiny, ex, k=0, reserve=32)[0], ex.gold)
    assert np.allclose(df[(df["id"] == ex.id) & (df["scale"] == 0)]["nll"], base)
    assert (df[df["scale"] == 2.0]["nll"] != base).any()  # steering moved the likelihood
    with pytest.raises(ValueError, match="score"):
        fints_sweep(tiny, user, others, layers=[0], scales=[1.0], score="rouge")


def test_prefix_cache_on_the_view_matches_the_bridge(tiny, tiny_ids):
    from workbench._util import empty_kv_cache
    from workbench.core._reuse import prefix_cache

    full = empty_kv_cache()
    tiny.bridge(tiny_ids, past_key_values=full)
    for needed in (None, 1):  # every layer; the first only (the pass stops at layer 1's input)
        cache = prefix_cache(tiny, tiny_ids, needed)
        assert len([layer for layer in cache.layers if layer.keys is not None and layer.keys.numel()]) \
            == (tiny.n_layers if needed is None else needed)
        for mine, want in zip(cache.layers, full.layers[: needed or tiny.n_layers]):
            assert torch.allclose(mine.keys, want.keys, atol=1e-5) and torch.allclose(mine.values, want.values, atol=1e-5)
    # a hook the view cannot run: the bridge makes it (the same numbers), and nothing is left attached
    with tiny.bridge.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", lambda x, hook: x)]):
        cache = prefix_cache(tiny, tiny_ids, 1)
    assert torch.allclose(cache.layers[0].keys, full.layers[0].keys, atol=1e-5)
    view = tiny._plain_view()
    assert not any(m._forward_pre_hooks for m in view.modules())
