"""What a label choice (LaMP-2N) costs: DPS's shared prompt pass, and the labels on the view.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_label_scoring.py [--n 6] [--model smollm2-135m]

On a classification task every method scores the 21 labels after the prompt (~770 tokens of a
LaMP-2N ``rag`` prompt); DPS scores them twice — under the model and with the preference heads
masked from the prompt's last token on — so the prompt's pass is the same for both.
Side by side in one run, on ``--n`` evaluation-user ``rag`` prompts, alternating the order:

1. DPS's two scorings: each with its own prompt pass on the bridge (as first built); sharing one
   prompt pass, labels as a batch of rows over copies of the cache (the bridge; what a hook list
   gets); sharing it on the hook-free view, all labels in one row under a tree-shaped mask (what
   ``DpsLabelScorer`` does now).
2. The plain label choice (``rag``, steering methods): the bridge (forced by a no-op hook the
   view cannot run) against the view.

The heads are the top 2% of the saved LaMP-2N PCS. Prints the times, the ratios and the largest
difference of a label token's log-probability between the ways; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import workbench as wb  # noqa: E402
from workbench.core.heads import mask_heads  # noqa: E402
from workbench.data.lamp import load_task_data  # noqa: E402
from workbench.data.metrics import task_labels  # noqa: E402
from workbench.data.splits import split_users  # noqa: E402
from workbench.methods import GenerationSettings, label_token_logprobs, label_token_logprobs_under, make_methods  # noqa: E402
from workbench.methods.dps import cached_profile_scores  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=6)
    args = ap.parse_args()
    model = wb.load_model(args.model, progress=False)
    data = load_task_data("lamp2n")
    labels = list(task_labels("lamp2n"))
    heads = cached_profile_scores(model, list(data), progress=False).top_percent(2.0)  # dps's own (saved in results/)
    rag = make_methods(["rag"], GenerationSettings())[0]
    prompts = [rag.prompt(model, ex)[0] for ex in list(split_users(data, "eval"))[:args.n]]
    print(model)
    print(f"{len(prompts)} lamp2n rag prompts ({sum(model.encode(p).shape[-1] for p in prompts) / len(prompts):.0f} tokens "
          f"on average), {len(labels)} labels, heads {heads}\n")
    mask = mask_heads(model, heads, how="uniform")
    noop = [("blocks.0.hook_resid_post", lambda x, hook: x)]  # a hook the view cannot run: the bridge runs

    def dps_separate(p):
        with model.bridge.hooks(fwd_hooks=noop):
            return [label_token_logprobs(model, p, labels), label_token_logprobs(model, p, labels, label_hooks=mask.hooks)]

    def plain_bridge(p):
        with model.bridge.hooks(fwd_hooks=noop):
            return [label_token_logprobs(model, p, labels)]

    ways = {"dps: bridge, separate prompt passes": dps_separate,
            "dps: bridge, shared prompt pass": lambda p: label_token_logprobs_under(model, p, labels, [(), mask.hooks]),
            "dps: view, shared prompt pass, labels in one row": lambda p: label_token_logprobs_under(model, p, labels, [(), mask]),
            "plain: bridge": plain_bridge,
            "plain: view, labels in one row": lambda p: [label_token_logprobs(model, p, labels)]}
    t = dict.fromkeys(ways, 0.0)
    diff = dict.fromkeys(ways, 0.0)
    with torch.no_grad():
        for i, p in enumerate(prompts):
            out = {}
            for name in (list(ways) if i % 2 == 0 else list(ways)[::-1]):
                t0 = time.perf_counter()
                out[name] = ways[name](p)
                t[name] += time.perf_counter() - t0
            for name in ways:
                ref = out["plain: bridge" if name.startswith("plain") else "dps: bridge, separate prompt passes"]
                diff[name] = max(diff[name], max(float((a[0] - b[0]).abs().max())
                                                 for s, r in zip(out[name], ref) for a, b in zip(s, r)))
    n = len(prompts)
    for name in ways:
        base = "plain: bridge" if name.startswith("plain") else "dps: bridge, separate prompt passes"
        print(f"{name:50s} {t[name] / n:6.2f} s per query  {t[base] / t[name]:5.2f}x   largest difference {diff[name]:.1e}")


if __name__ == "__main__":
    main()
