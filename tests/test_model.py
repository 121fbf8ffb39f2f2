"""Loading, prompts, generation and scoring on the tiny random Llama; the weight cache."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
import warnings
from pathlib import Path

import pytest
import torch

import workbench as wb
from workbench.core.loading import ModelNotAvailableError
from workbench import _cache


def test_shape_facts_and_repr(tiny):
    assert (tiny.n_layers, tiny.n_heads, tiny.n_kv_heads, tiny.d_model, tiny.d_head) == (2, 4, 2, 64, 16)
    r = repr(tiny)
    assert "tiny-random" in r and "2 layers x 4 heads over 2 KV heads" in r and "d_model=64" in r


def test_generation_is_deterministic_across_loads(tiny):
    prompt = "the cat sat on the mat"
    first = tiny.generate(prompt, max_new_tokens=10)
    assert first and first == tiny.generate(prompt, max_new_tokens=10)
    assert wb.load_model("tiny-random").generate(prompt, max_new_tokens=10) == first


def test_sampling_is_repeatable_with_a_seed(tiny):
    a = tiny.generate("the cat", max_new_tokens=12, do_sample=True, seed=3)
    b = tiny.generate("the cat", max_new_tokens=12, do_sample=True, seed=3)
    assert a == b


def test_generate_returns_only_new_text_and_stops_at_eos(tiny):
    ids = tiny.encode("the cat sat")
    new = tiny.generate_tokens(ids, max_new_tokens=10)
    assert tiny.tokenizer.eos_token_id not in new.tolist()
    assert len(new) <= 10


def test_nll_matches_a_manual_computation(tiny):
    ids, start = tiny.prompt_and_target("the cat sat", "on the mat")
    with torch.no_grad():
        logp = tiny.bridge(ids)[0].log_softmax(-1)
    manual = -torch.stack([logp[t - 1, ids[0, t]] for t in range(start, ids.shape[1])]).mean()
    assert tiny.nll("the cat sat", "on the mat") == pytest.approx(float(manual), abs=1e-5)


def test_chat_needs_a_template(tiny):
    assert not tiny.has_chat_template
    with pytest.raises(ValueError, match="chat template"):
        tiny.encode("the cat", chat=True)


def test_too_long_prompt_is_a_clear_error(tiny):
    long = " ".join(["cat"] * 600)
    with pytest.raises(ValueError, match="context of 512 tokens"):
        tiny.generate(long, max_new_tokens=5)
    with pytest.raises(ValueError, match="max_new_tokens"):
        tiny.generate(" ".join(["cat"] * 500), max_new_tokens=20)
    with pytest.raises(ValueError, match="empty"):
        tiny.nll("the cat", "")


def test_unknown_names_give_clear_errors(no_network):
    with pytest.raises(ValueError, match="smollm2-135m"):
        wb.load_model("smollm3-1b")
    with pytest.raises(ValueError, match="non-empty"):
        wb.load_model("")
    with pytest.raises(ModelNotAvailableError, match="local checkpoint directory"):
        wb.load_model("nobody/no-such-model")


def test_local_checkpoint_directory_loads(tmp_path, tiny):
    from workbench.core._tiny import make_tiny_llama

    hf, tok = make_tiny_llama()
    hf.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    local = wb.load_model(str(tmp_path))
    ids = tiny.encode("the cat sat on the mat")
    with torch.no_grad():
        torch.testing.assert_close(local.bridge(ids), tiny.bridge(ids))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="config.json"):
        wb.load_model(str(empty))


def test_available_models_lists_the_known_names():
    rows = {r["name"]: r for r in wb.available_models()}
    assert {"smollm2-135m", "gemma3-270m", "tiny-random"} <= rows.keys()
    assert rows["tiny-random"]["offline"] == "yes"


# ---- the weight cache --------------------------------------------------------------------

def _writer(calls):
    def build(out):
        calls.append(out)
        (out / "weights.bin").write_bytes(b"x" * 1000)
        (out / "config.json").write_text("{}")
    return build


def test_cache_builds_once_then_reuses(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    calls = []
    path, cached = _cache.cached_dir("m", {"v": 1}, _writer(calls))
    assert not cached and len(calls) == 1 and (path / "weights.bin").exists()
    path2, cached2 = _cache.cached_dir("m", {"v": 1}, _writer(calls))
    assert cached2 and path2 == path and len(calls) == 1
    # nothing half-built is left behind
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["m"]


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "no-manifest", "other-key"])
def test_damaged_cache_is_detected_and_rebuilt(tmp_path, monkeypatch, damage):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    calls = []
    path, _ = _cache.cached_dir("m", {"v": 1}, _writer(calls))
    f = path / "weights.bin"
    key = {"v": 1}
    if damage == "flip":  # same size, different bytes
        f.write_bytes(b"x" * 500 + b"y" + b"x" * 499)
    elif damage == "truncate":
        f.write_bytes(b"x" * 10)
    elif damage == "delete":
        f.unlink()
    elif damage == "no-manifest":  # what an interrupted build would leave
        (path / _cache.MANIFEST).unlink()
    else:
        key = {"v": 2}
    assert _cache.check_entry(path, key) is not None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path2, cached = _cache.cached_dir("m", key, _writer(calls))
    assert not cached and len(calls) == 2
    assert any("rebuilding" in str(w.message) for w in caught)
    assert (path2 / "weights.bin").read_bytes() == b"x" * 1000
    assert json.loads((path2 / _cache.MANIFEST).read_text())["key"] == key


def _build_in_another_process(cache: str, builds: str, out_q) -> None:
    os.environ["WORKBENCH_CACHE"] = cache

    def slow_build(out):
        Path(builds, f"{os.getpid()}").write_text("built")
        time.sleep(1.0)  # long enough that both processes find the entry missing
        (out / "weights.bin").write_bytes(b"x" * 1000)

    path, _ = _cache.cached_dir("m", {"v": 1}, slow_build)
    # what a loader does next: read the entry it was given
    out_q.put((path / "weights.bin").read_bytes() == b"x" * 1000 and _cache.check_entry(path, {"v": 1}) is None)


def test_two_first_runs_at_once_build_the_entry_once(tmp_path):
    # Two Ray workers (or two notebooks) on a fresh machine: the later build used to move the
    # earlier entry away while its process was loading from it.
    ctx = multiprocessing.get_context("fork")
    builds = tmp_path / "builds"
    builds.mkdir()
    q = ctx.Queue()
    procs = [ctx.Process(target=_build_in_another_process, args=(str(tmp_path / "cache"), str(builds), q))
             for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert [q.get(timeout=5), q.get(timeout=5)] == [True, True]
    assert len(list(builds.iterdir())) == 1
    assert [p.name for p in (tmp_path / "cache" / "models").iterdir()] == ["m"]


def test_failed_build_leaves_no_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))

    def broken(out):
        (out / "weights.bin").write_bytes(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        _cache.cached_dir("m", {"v": 1}, broken)
    assert list((tmp_path / "models").iterdir()) == []


def test_bf16_models_mask_and_steer():
    model = wb.load_model("tiny-random", dtype="bf16")
    assert model.dtype == torch.bfloat16
    ids = model.encode("the cat sat on the mat")
    with torch.no_grad():
        base = model.bridge(ids)
        with wb.mask_heads(model, {(0, 1): 0.5}, how="uniform"):
            masked = model.bridge(ids)
        with wb.steer(model, torch.ones(model.d_model), layer=0):  # an fp32 vector is cast
            steered = model.bridge(ids)
    assert base.dtype == torch.bfloat16
    assert not torch.equal(masked, base) and not torch.equal(steered, base)
    assert model.generate("the cat", max_new_tokens=4)


def test_unknown_dtype_and_missing_gpu_are_clear_errors():
    with pytest.raises(ValueError, match="bf16"):
        wb.load_model("tiny-random", dtype="int3")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            wb.load_model("tiny-random", device="cuda")
