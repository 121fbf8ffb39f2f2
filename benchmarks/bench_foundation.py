"""Foundation benchmarks, measured side by side in one run on the embedded SmolLM2-135M.

    .venv/bin/python benchmarks/bench_foundation.py [--reps N]

1. bridge forward vs the raw Hugging Face forward on a 200-token input (target <= 1.1x);
2. greedy generation of 40 tokens inside a steering context vs without (target <= 1.05x);
3. loading from the safetensors cache vs the first load that dequantizes the GGUF.

Runs alternate between the variants so drift in machine load hits both alike; medians
are reported. Prints ratios; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import workbench as wb  # noqa: E402
from workbench.core.loading import load_hf  # noqa: E402
from workbench.data.examples import EXAMPLE_USER  # noqa: E402
from workbench.data.prompts import headline_prompt  # noqa: E402


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def alternate(variants: dict, reps: int) -> dict[str, float]:
    """Median seconds per variant, running the variants in turn ``reps`` times (after a warm-up)."""
    for fn in variants.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(reps):
        for k, fn in variants.items():
            times[k].append(timed(fn))
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu\n")

    # 3. first load (fresh cache: GGUF dequantization + save) vs cached load
    with tempfile.TemporaryDirectory() as cache:
        os.environ["WORKBENCH_CACHE"] = cache
        first = timed(lambda: wb.load_model(progress=False))
        cached = [timed(lambda: wb.load_model(progress=False)) for _ in range(3)]
        del os.environ["WORKBENCH_CACHE"]
    model = wb.load_model(progress=False)
    hf_sdpa, _, _ = load_hf(progress=False)
    hf_eager, _, _ = load_hf(progress=False)
    hf_eager.config._attn_implementation = "eager"

    # 1. forward on a 200-token input (the example user's prompt, cut to 200 tokens)
    ids = model.encode(headline_prompt(model, EXAMPLE_USER["query"], EXAMPLE_USER["profile"] * 3))[:, :200]
    assert ids.shape[1] == 200
    with torch.no_grad():
        fwd = alternate(
            {
                "bridge": lambda: model.bridge(ids),
                "hf_sdpa": lambda: hf_sdpa(ids),
                "hf_eager": lambda: hf_eager(ids),
            },
            args.reps,
        )

    # 2. greedy generation of exactly 40 tokens, with and without a steering context
    prompt_ids = model.encode(headline_prompt(model, EXAMPLE_USER["query"], EXAMPLE_USER["profile"]))
    g = torch.Generator().manual_seed(0)
    v = torch.randn(model.d_model, generator=g)
    v = 4.0 * v / v.norm()

    def gen():
        model.bridge.generate(prompt_ids, max_new_tokens=40, do_sample=False, stop_at_eos=False, verbose=False)

    def gen_steered():
        with wb.steer(model, v, layer=15):
            gen()

    def gen_steered_positions():
        with wb.steer(model, v, layer=15, positions=slice(prompt_ids.shape[1], None)):
            gen()

    with torch.no_grad():
        gen_t = alternate({"plain": gen, "steer": gen_steered, "steer_positions": gen_steered_positions}, max(3, args.reps // 2))

    print("| measurement | time | ratio | target |")
    print("|---|---|---|---|")
    print(f"| forward, 200 tokens: bridge vs HF sdpa (HF default) | {fwd['bridge']*1e3:.0f} ms vs {fwd['hf_sdpa']*1e3:.0f} ms "
          f"| {fwd['bridge']/fwd['hf_sdpa']:.3f}x | <= 1.1x |")
    print(f"| forward, 200 tokens: bridge vs HF eager (same kernel) | {fwd['bridge']*1e3:.0f} ms vs {fwd['hf_eager']*1e3:.0f} ms "
          f"| {fwd['bridge']/fwd['hf_eager']:.3f}x | <= 1.1x |")
    print(f"| greedy 40 tokens: steering context vs none | {gen_t['steer']:.2f} s vs {gen_t['plain']:.2f} s "
          f"| {gen_t['steer']/gen_t['plain']:.3f}x | <= 1.05x |")
    print(f"| greedy 40 tokens: steering generated positions only vs none | {gen_t['steer_positions']:.2f} s vs {gen_t['plain']:.2f} s "
          f"| {gen_t['steer_positions']/gen_t['plain']:.3f}x | <= 1.05x |")
    med_cached = statistics.median(cached)
    print(f"| load: cached vs first (GGUF dequantization) | {med_cached:.1f} s vs {first:.1f} s "
          f"| {med_cached/first:.3f}x ({first/med_cached:.1f}x faster) | a few seconds |")


if __name__ == "__main__":
    main()
