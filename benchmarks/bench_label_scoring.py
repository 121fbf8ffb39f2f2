"""What DPS's label choice (LaMP-2N) costs when its intact and masked scores share the prompt pass.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_label_scoring.py [--n 6] [--model smollm2-135m]

On a classification task DPS scores every label twice — under the model and with the preference
heads masked from the prompt's last token on — so the pass over the rest of the prompt (~770
tokens of a LaMP-2N ``rag`` prompt, against 21 labels of a few tokens) is the same for both.
Side by side in one run, on ``--n`` evaluation-user ``rag`` prompts: the two scorings each with its
own prompt pass (``label_token_logprobs`` twice, as before) and sharing one
(``label_token_logprobs_under``, what ``DpsLabelScorer`` does now); alternating which runs first.
The heads are the top 2% of the saved LaMP-2N PCS. Both must give the same numbers. Prints the
times and the ratio; asserts nothing.
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
    hooks = mask_heads(model, heads, how="uniform").hooks
    t = {"separate": 0.0, "shared": 0.0}
    same = 0
    with torch.no_grad():
        for i, p in enumerate(prompts):
            out = {}
            for way in (("separate", "shared") if i % 2 == 0 else ("shared", "separate")):
                t0 = time.perf_counter()
                if way == "separate":
                    out[way] = [label_token_logprobs(model, p, labels), label_token_logprobs(model, p, labels, label_hooks=hooks)]
                else:
                    out[way] = label_token_logprobs_under(model, p, labels, [(), hooks])
                t[way] += time.perf_counter() - t0
            same += all(torch.equal(a[0], b[0]) for s, h in zip(out["separate"], out["shared"]) for a, b in zip(s, h))
    n = len(prompts)
    print(f"separate prompt passes: {t['separate'] / n:.2f} s per query; shared: {t['shared'] / n:.2f} s "
          f"({t['separate'] / t['shared']:.2f}x); identical scores for {same}/{n}")


if __name__ == "__main__":
    main()
