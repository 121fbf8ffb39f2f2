"""Fints cost on SmolLM2-135M, measured side by side in one run.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_fints.py [--task lamp4] [--model smollm2-135m] [--users 2]
        [--prompts 5] [--max-items 8]

1. Building one user's vectors, from scratch (no pair cache): the negatives (one greedy
   generation per history item, ``max_items`` items) and the vectors (per kept pair the prompt
   once, its KV cache shared by the positive and the negative, up to the layer read), per user;
   then the same with the pair cache warm (what the second and third Fints method of a run pay);
   then from scratch again as the Fints methods build them: each negative's prompt pass (KV
   cache) kept and the vectors started from it, so each prompt runs once for both steps.
   Beside it, on the same pairs, the vectors as they were computed before: two full passes
   (prompt + response, logits included) per pair; the largest difference between the two.
2. Steered vs plain greedy generation of exactly 32 tokens on the same real ``rag`` prompts
   (target <= 1.05x): alternating plain / steered per prompt, a warm-up round first,
   medians. The aggregation (BM25 over the user's items) is timed with the steered run.

Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import workbench as wb  # noqa: E402
from workbench.data.lamp import load_task_data  # noqa: E402
from workbench.science.fints import DEFAULT_SCALE, aggregate, contrastive_pairs, fints_steer, sample_vectors  # noqa: E402
from workbench.data.prompts import build_prompt  # noqa: E402


def _full_pass_vectors(model: wb.Model, pairs, layer: int) -> torch.Tensor:
    """The MLP vectors as computed before the prompt's pass was shared: a full pass of prompt +
    positive and one of prompt + negative per kept pair."""
    hook = f"blocks.{layer}.hook_mlp_out"

    def mean(prompt, response):
        ids, start = model.prompt_and_target(prompt, response)
        _, cache = model.bridge.run_with_cache(ids, names_filter=[hook])
        return cache[hook][0, start:].float().mean(0).cpu()

    rows = pairs[pairs["kept"]]
    return torch.stack([mean(r.prompt, r.positive) - mean(r.prompt, r.negative) for r in rows.itertuples()]) \
        if len(rows) else torch.zeros(0, model.d_model)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default=None, help="cpu, cuda, ... (default: the GPU if there is one)")
    ap.add_argument("--dtype", default="float32", help="float32 (default, as every figure here), bfloat16, ...")
    ap.add_argument("--users", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=5)
    ap.add_argument("--max-items", type=int, default=8)
    ap.add_argument("--task", default="lamp4", help="lamp4 (default), lamp5, lamp2n: the shipped data of the task")
    ap.add_argument("--model", default="smollm2-135m", help="a model name (default: smollm2-135m)")
    args = ap.parse_args()

    model = wb.load_model(args.model, progress=False, device=args.device, dtype=args.dtype)
    data = load_task_data(args.task)
    print(model)
    users = data.users()[: args.users]

    print(f"\n1. building vectors (max_items={args.max_items}, 5 other-user items per negative prompt)")
    vectors = {}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["WORKBENCH_CACHE"] = tmp  # a cold pair cache; the model is already loaded
        for uid in users:
            exs = list(data.by_user(uid))
            t0 = time.perf_counter()
            pairs = contrastive_pairs(model, exs, data, max_items=args.max_items)
            t1 = time.perf_counter()
            vectors[uid] = sample_vectors(model, pairs)
            t2 = time.perf_counter()
            contrastive_pairs(model, exs, data, max_items=args.max_items)
            t3 = time.perf_counter()
            before = _full_pass_vectors(model, pairs, vectors[uid].layer)
            t4 = time.perf_counter()
            diff = float((before - vectors[uid].mlp).abs().max()) if len(before) else 0.0
            print(f"   user {uid}: {len(pairs)} items, {int(pairs['kept'].sum())} kept; negatives {t1 - t0:.1f} s, "
                  f"vectors {t2 - t1:.1f} s, total {t2 - t0:.1f} s; with the pair cache warm {t3 - t2 + t2 - t1:.1f} s")
            print(f"      vectors with two full passes per pair {t4 - t3:.1f} s: {(t4 - t3) / max(t2 - t1, 1e-9):.2f}x "
                  f"the shared-prompt passes; largest difference {diff:.1e}")
            os.environ["WORKBENCH_CACHE"] = os.path.join(tmp, "shared")  # cold again
            kept: dict = {}
            t5 = time.perf_counter()
            shared = contrastive_pairs(model, exs, data, max_items=args.max_items, keep_prompts=kept)
            shared_vectors = sample_vectors(model, shared, prompt_caches=kept)
            t6 = time.perf_counter()
            os.environ["WORKBENCH_CACHE"] = tmp
            same = shared[["text", "positive", "negative", "kept"]].equals(pairs[["text", "positive", "negative", "kept"]])
            diff = float((shared_vectors.mlp - vectors[uid].mlp).abs().max()) if len(before) else 0.0
            print(f"      as the Fints methods build them (each negative's prompt pass kept for its vectors) "
                  f"{t6 - t5:.1f} s: {(t2 - t0) / max(t6 - t5, 1e-9):.2f}x faster than negatives + vectors apart; "
                  f"same pairs: {same}; largest vector difference {diff:.1e}")
        del os.environ["WORKBENCH_CACHE"]

    exs = [ex for uid in users for ex in data.by_user(uid)][: args.prompts]
    print(f"\n2. steered (scale {DEFAULT_SCALE:g}) vs plain greedy, exactly 32 new tokens, {len(exs)} rag prompts")
    prompts = [build_prompt(model, ex, k=5)[0] for ex in exs]
    saved = model.stop_token_ids
    model.stop_token_ids = [-1]  # nothing stops early: both write exactly 32 tokens
    try:
        t_plain, t_steer = [], []
        for rep in range(2):
            for ex, p in zip(exs, prompts):
                t0 = time.perf_counter()
                model.generate(p, max_new_tokens=32)
                t1 = time.perf_counter()
                vecs = vectors[ex.user_id].for_example(ex)
                agg = aggregate(vecs if len(vecs) else vectors[ex.user_id], ex, restrict=False)
                with fints_steer(model, agg, DEFAULT_SCALE):
                    model.generate(p, max_new_tokens=32)
                t2 = time.perf_counter()
                if rep:  # the first round warms up
                    t_plain.append(t1 - t0)
                    t_steer.append(t2 - t1)
    finally:
        model.stop_token_ids = saved
    mp, ms = statistics.median(t_plain), statistics.median(t_steer)
    print(f"   plain {mp:.2f} s   steered {ms:.2f} s   ratio {ms / mp:.3f}x (medians; target <= 1.05x)")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
