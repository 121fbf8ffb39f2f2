"""Batched generation: outputs per second at several batch sizes, and interventions on the fast path.

    .venv/bin/python benchmarks/bench_batch.py [--n 16] [--batches 1,4,8,16] [--tokens 32]

Side by side in one run, on the first ``--n`` LaMP-4 news dev queries (their real prompts,
decoded greedily up to ``--tokens`` new tokens, each row stopping at the end of its first line
as the runner does):

1. **Throughput** — outputs per second and peak extra memory (resident set, sampled every 10 ms,
   above the level before the configuration) for ``generic``, ``rag``, ``rag`` with a steering
   vector per row (a different vector for every row, as a batch of several users' ``caa-user``
   rows is) and ``dps`` (the ``rag`` prompt; the top 2% plain-PCS heads shipped in ``results/``)
   at each batch size. Every batch size must give batch 1's outputs; the table counts those that
   differ.
2. **The fast path at batch 1** — seconds per output of a plain ``transformers`` ``generate`` (the
   Hugging Face model the bridge wraps, nothing hooked), of the same with a steering vector and
   with a head mask active (torch hooks on the hook-free view), and of both on the bridge (the
   path before issue 28), as ratios to the plain one; each writes exactly ``--tokens`` tokens per
   ``rag`` prompt (no stopping), so the work is the same.

Prints two tables; asserts nothing. Targets (issue 28): rag >= 2.5x its batch-1 throughput at
the best batch size; steered and head-masked generation at batch 1 within 1.1x of plain.
"""

from __future__ import annotations

import argparse
import os
import threading
import time

import pandas as pd
import psutil
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import workbench as wb  # noqa: E402
from workbench._util import results_dir  # noqa: E402
from workbench.core.heads import mask_heads  # noqa: E402
from workbench.core.steering import steer  # noqa: E402
from workbench.data.lamp import load_lamp4_news  # noqa: E402
from workbench.data.prompts import build_prompt, first_line_complete  # noqa: E402
from workbench.science.dps_batch import dps_generate_batch  # noqa: E402
from workbench.science.pcs_result import PreferenceScores  # noqa: E402


class PeakMemory:
    """Peak resident memory above the level at entry, sampled every 10 ms by a thread."""

    def __enter__(self) -> "PeakMemory":
        self.proc = psutil.Process()
        self.base = self.peak = self.proc.memory_info().rss
        self.running = True
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def _watch(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.01)

    def __exit__(self, *exc) -> None:
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def mib(self) -> float:
        return (self.peak - self.base) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--batches", default="1,4,8,16")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--layer", type=int, default=None, help="steering layer (default: n_layers // 2)")
    args = ap.parse_args()
    model = wb.load_model(args.model, progress=False)
    news = load_lamp4_news()
    examples = list(news)[: args.n]
    generic = [build_prompt(model, ex, k=0, reserve=args.tokens)[0] for ex in examples]
    rag = [build_prompt(model, ex, k=5, reserve=args.tokens)[0] for ex in examples]
    layer = model.n_layers // 2 if args.layer is None else args.layer
    gen = torch.Generator().manual_seed(0)
    vectors = [torch.randn(model.d_model, generator=gen) for _ in examples]
    vectors = [v / v.norm() * 4.0 for v in vectors]
    heads_path = results_dir() / f"pcs_lamp4-news_{model.name}.json"
    heads = PreferenceScores.load(heads_path, model=model).top_percent(2.0) if heads_path.exists() else [(layer, 0)]
    print(f"{model}\n{len(examples)} lamp4-news dev queries, up to {args.tokens} new tokens, torch threads "
          f"{torch.get_num_threads()}; steering at layer {layer}; dps heads {len(heads)} ({heads_path.name})")

    def run(method: str, batch: int) -> list[str]:
        out: list[str] = []
        for start in range(0, len(examples), batch):
            rows = slice(start, start + batch)
            if method == "generic":
                out += model.generate_batch(generic[rows], args.tokens, until=first_line_complete)
            elif method == "rag":
                out += model.generate_batch(rag[rows], args.tokens, until=first_line_complete)
            elif method == "rag+steer":
                ivs = [steer(model, v, layer=layer) for v in vectors[rows]]
                out += model.generate_batch(rag[rows], args.tokens, until=first_line_complete, interventions=ivs)
            else:
                out += dps_generate_batch(model, rag[rows], heads, alpha=1.0, plausibility=0.1,
                                          max_new_tokens=args.tokens, until=first_line_complete)
        return out

    run("generic", 2)  # warm-up: first calls build the view and caches
    sizes = [int(b) for b in args.batches.split(",")]
    rows = []
    for method in ("generic", "rag", "rag+steer", "dps"):
        reference = None
        for b in sizes:
            with PeakMemory() as mem:
                t0 = time.perf_counter()
                outs = run(method, b)
                wall = time.perf_counter() - t0
            reference = outs if reference is None else reference
            rows.append({"method": method, "batch": b, "outputs_per_s": len(outs) / wall, "seconds": wall,
                         "peak_extra_MiB": mem.mib, "differ_from_batch_1": sum(a != r for a, r in zip(outs, reference))})
    table = pd.DataFrame(rows)
    table["x_batch_1"] = table["outputs_per_s"] / table.groupby("method")["outputs_per_s"].transform("first")
    with pd.option_context("display.width", 200, "display.float_format", "{:.2f}".format):
        print("\nThroughput (outputs per second) by batch size\n")
        print(table.to_string(index=False))

    # 2. batch 1: plain transformers generate vs interventions on the fast path and on the bridge;
    # every variant writes exactly --tokens tokens (no stopping), so the times compare like for like
    from workbench.core import _fastpath

    view = model._plain_view()
    ids = [model.encode(p) for p in rag]
    n_tok = args.tokens

    def fast(intervention=None) -> None:
        plan = [(intervention, _fastpath.every_row)] if intervention is not None else []
        with _fastpath.installed(model, plan):
            for i in ids:
                view.generate(i, attention_mask=torch.ones_like(i), max_new_tokens=n_tok, min_new_tokens=n_tok,
                              do_sample=False, pad_token_id=model.stop_token_ids[0])

    def bridge(intervention) -> None:
        from workbench.core.hooks import last_positions_hook

        with intervention, model.bridge.hooks(fwd_hooks=[last_positions_hook(model.n_layers, -1)]):
            for i in ids:
                model.bridge.generate(i, max_new_tokens=n_tok, stop_at_eos=False, verbose=False)

    mask = mask_heads(model, heads, how="uniform")
    vec = steer(model, vectors[0], layer=layer)
    timings = {}
    for name, fn in [("plain transformers generate", fast), ("steered, fast path", lambda: fast(vec)),
                     ("head-masked, fast path", lambda: fast(mask)), ("steered, bridge", lambda: bridge(vec)),
                     ("head-masked, bridge", lambda: bridge(mask))]:
        t0 = time.perf_counter()
        fn()
        timings[name] = (time.perf_counter() - t0) / len(ids)
    base = timings["plain transformers generate"]
    fast = pd.DataFrame([{"batch 1": k, "seconds_per_output": v, "x_plain": v / base} for k, v in timings.items()])
    with pd.option_context("display.width", 200, "display.float_format", "{:.3f}".format):
        print(f"\nBatch 1: interventions vs plain transformers generate ({n_tok} tokens per rag prompt)\n")
        print(fast.to_string(index=False))


if __name__ == "__main__":
    main()
