"""Generation speed as a user meets it, measured side by side in one run (SmolLM2-135M by default).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_generation.py [--n 20] [--methods ...]

1. ``workbench`` greedy generation (``Model.generate_tokens`` with nothing hooked: the hook-free
   path through the original Hugging Face modules), the same call with a hook active (the
   TransformerBridge path every method took before, and steering/masking still take) and a
   plain Hugging Face ``generate`` on a separate copy of the same weights (no TransformerLens),
   on the same ``rag`` prompts of real LaMP-4 dev queries, with the same stopping rule (stop
   tokens + the first line complete). The order rotates per prompt. All three must produce the
   same tokens. Target: <= 1.1x.
2. Where the difference goes: one prefill and one KV-cached decoding step, bridge vs HF, and
   what the rest of TransformerLens' generate loop adds per token.
3. Stopping at the first line: per method, the time of ``Method.generate`` with decoding cut
   at the first complete line vs decoding all ``--max-new-tokens`` (what every method did
   before), on the same examples; the outputs must be identical. Per-user state (vectors,
   heads) is built once beforehand and not timed.

Prints ratios; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import workbench as wb  # noqa: E402
from workbench.data.lamp import load_lamp4_news  # noqa: E402
from workbench.core.loading import load_hf  # noqa: E402
from workbench.methods import GenerationSettings, make_methods  # noqa: E402
from workbench.data.prompts import build_prompt, first_line, first_line_complete  # noqa: E402


class _HFFirstLine:
    """The same stopping rule for Hugging Face's own ``generate``."""

    def __init__(self, tokenizer, start):
        from transformers import StoppingCriteria

        tok = tokenizer

        class Stop(StoppingCriteria):
            def __call__(self, input_ids, scores, **_):
                return torch.tensor([first_line_complete(tok.decode(r[start:], skip_special_tokens=True)) for r in input_ids])

        self.criteria = Stop()


def _median_ratio(a: list[float], b: list[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b))


def part1_2(model, hf, examples, max_new_tokens: int) -> None:
    stops = model.stop_token_ids
    times: dict[str, list[float]] = {"workbench": [], "bridge": [], "hf": []}
    same, n_tok = 0, []
    # An identity hook forces the bridge path: what every method ran before the hook-free path,
    # and what a method with an intervention (steering, masking) still runs.
    identity = [(f"blocks.{model.n_layers - 1}.hook_resid_post", lambda x, hook: x)]
    for i, ex in enumerate(examples):
        prompt, _ = build_prompt(model, ex, k=5, reserve=max_new_tokens)
        ids = model.encode(prompt)

        def run_wb():
            return model.generate_tokens(ids, max_new_tokens, until=first_line_complete).tolist()

        def run_bridge():
            with model.bridge.hooks(fwd_hooks=identity):
                return model.generate_tokens(ids, max_new_tokens, until=first_line_complete).tolist()

        def run_hf():
            with torch.no_grad():
                out = hf.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stops,
                                  pad_token_id=stops[0], attention_mask=torch.ones_like(ids),
                                  stopping_criteria=[_HFFirstLine(model.tokenizer, ids.shape[-1]).criteria])
            new = out[0, ids.shape[-1]:].tolist()
            while new and new[-1] in stops:
                new = new[:-1]
            return new

        runs = {"workbench": run_wb, "bridge": run_bridge, "hf": run_hf}
        order = list(runs)[i % 3:] + list(runs)[: i % 3]  # rotate who goes first
        outs = {}
        for name in order:
            t0 = time.perf_counter()
            outs[name] = runs[name]()
            times[name].append(time.perf_counter() - t0)
        same += outs["workbench"] == outs["hf"] == outs["bridge"]
        n_tok.append(len(outs["workbench"]))
    wb_t, br_t, hf_t = times["workbench"], times["bridge"], times["hf"]
    print(f"1. workbench generate vs plain HF generate, {len(examples)} rag prompts, greedy, <= {max_new_tokens} "
          f"new tokens, stop at the first line (mean {statistics.mean(n_tok):.1f} tokens)")
    print(f"   workbench (no intervention: hook-free path) {statistics.mean(wb_t):.3f} s/prompt, HF "
          f"{statistics.mean(hf_t):.3f} s/prompt: ratio of means {sum(wb_t) / sum(hf_t):.2f}x, median ratio "
          f"{_median_ratio(wb_t, hf_t):.2f}x")
    print(f"   bridge path (with a hook, as before) {statistics.mean(br_t):.3f} s/prompt: ratio of means "
          f"{sum(br_t) / sum(hf_t):.2f}x, median ratio {_median_ratio(br_t, hf_t):.2f}x")
    print(f"   identical tokens (all three) {same}/{len(examples)}")

    # 2. where it goes: prefill and one cached step, each timed alone (best of 3).
    prompt, _ = build_prompt(model, examples[0], k=5, reserve=max_new_tokens)
    ids = model.encode(prompt)

    def best(fn, reps=3):
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return min(ts)

    with torch.no_grad():
        t_pre_b = best(lambda: model.bridge(ids, return_type="logits_and_cache"))
        t_pre_h = best(lambda: hf(ids, use_cache=True))
        t_pre_h1 = best(lambda: hf(ids, use_cache=True, logits_to_keep=1))
        _, cache_b = model.bridge(ids, return_type="logits_and_cache")
        nxt = ids[:, -1:]

        def step_b():
            c = _copy_cache(cache_b)
            model.bridge(nxt, return_type="logits_and_cache", past_key_values=c)

        out_h = hf(ids, use_cache=True)

        def step_h():
            c = _copy_cache(out_h.past_key_values)
            hf(nxt, past_key_values=c, use_cache=True)

        t_copy = best(lambda: _copy_cache(cache_b), reps=5)
        t_step_b = best(step_b, reps=5) - t_copy
        t_step_h = best(step_h, reps=5) - t_copy
        n = 16
        t_gen_b = best(lambda: model.bridge.generate(ids, max_new_tokens=n, do_sample=False, stop_at_eos=False,
                                                     verbose=False), reps=2)
    print(f"2. where it goes ({ids.shape[-1]}-token prompt): prefill bridge {t_pre_b * 1e3:.0f} ms vs HF "
          f"{t_pre_h * 1e3:.0f} ms (HF generate keeps only the last position's logits: {t_pre_h1 * 1e3:.0f} ms); "
          f"one cached step bridge {t_step_b * 1e3:.1f} ms vs HF {t_step_h * 1e3:.1f} ms; TransformerLens' "
          f"generate loop, {n} tokens: {t_gen_b * 1e3:.0f} ms = prefill + {n} x "
          f"{(t_gen_b - t_pre_b) / n * 1e3:.1f} ms")


def _copy_cache(cache):
    import copy

    return copy.deepcopy(cache)


def part3(model, data, examples, names: list[str], max_new_tokens: int, heads_file: str | None) -> None:
    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    print(f"3. stopping at the first line vs decoding all {max_new_tokens} tokens, {len(examples)} examples per method")
    for m in make_methods(names, settings):
        if heads_file and hasattr(m, "heads_file"):
            m.heads_file = heads_file
        m.prepare_run(model, examples, data)
        states = {}
        for u in dict.fromkeys(e.user_id for e in examples):
            states[u] = m.prepare_user(model, u, [e for e in examples if e.user_id == u])
        t_full = t_stop = 0.0
        same = 0
        for ex in examples:
            prompt, _ = m.prompt(model, ex)
            intervention, _ = m.intervention(model, ex, states[ex.user_id])
            dec = m.decoder()
            outs = []
            for until in (None, first_line_complete):
                t0 = time.perf_counter()
                if intervention is None:
                    text = dec.decode(model, prompt, max_new_tokens, until=until)
                else:
                    with intervention:
                        text = dec.decode(model, prompt, max_new_tokens, until=until)
                dt = time.perf_counter() - t0
                outs.append(first_line(text))
                if until is None:
                    t_full += dt
                else:
                    t_stop += dt
            same += outs[0] == outs[1]
        print(f"   {m.name:<12} all tokens {t_full / len(examples):.2f} s/example, first line {t_stop / len(examples):.2f} "
              f"s/example: {t_full / t_stop:.2f}x faster; identical outputs {same}/{len(examples)}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=20, help="dev queries for part 1 (default 20)")
    ap.add_argument("--n3", type=int, default=6, help="examples per method for part 3 (default 6 = 2 users)")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--methods", default="generic,rag,dps,caa-all,caa-user,fints+rag,steerx-caa")
    ap.add_argument("--heads-file", default="results/pcs_lamp4-news_smollm2-135m.json",
                    help="saved PCS for dps (instead of computing exact PCS first)")
    ap.add_argument("--skip", default="", help="parts to skip, e.g. 3")
    args = ap.parse_args()

    model = wb.load_model(args.model, progress=False)
    data = load_lamp4_news()
    examples = list(data)[: args.n]
    print(model, f"torch threads {torch.get_num_threads()}")
    if "1" not in args.skip:
        hf, _, _ = load_hf(args.model, progress=False)
        hf.eval()
        part1_2(model, hf, examples, args.max_new_tokens)
        del hf
    if "3" not in args.skip:
        part3(model, data, list(data)[: args.n3], [m for m in args.methods.split(",") if m], args.max_new_tokens,
              args.heads_file)


if __name__ == "__main__":
    main()
