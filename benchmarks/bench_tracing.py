"""Token causal effects: exact (prefix KV reuse) vs naive, and fast estimates vs exact.

Part A — speed of exact tracing: every history token of one real LaMP-4 prompt (>= 256
history tokens) deleted in turn, ``mode="exact"`` (shared prefix cache, suffix-only reruns,
unembedding only at the output) vs ``mode="naive"`` (one full forward per deleted token).
Variants alternate, ``--repeats`` times; medians; the two must agree (max |diff| printed).

Part B — fast vs exact over ``--n`` real examples (dev queries of different users, their
gold headline traced): time ratio and Spearman rank correlation of the token effects, per
fast mode, for tokens and for words (token effects summed per word, the unit SteerX selects),
plus the overlap of the top-10 tokens; and ``mode="verified"`` with ``selection="estimate"`` (attn,
then the share ``--verify`` of tokens with the largest estimates deleted for real;
``bench_verify_policies.py`` replays other selections from ``--save``) at each share, simulated from the two
traces (the same numbers the mode computes) and, at ``--measure-share``, run for real to check
the simulated time. CPU-heavy (an exact trace of ~250 tokens
is a few minutes on 2 cores): run with a small ``--n`` to check, the full one for the report.

    python benchmarks/bench_tracing.py                  # A + B with n=20
    python benchmarks/bench_tracing.py --part A --stride 4
    python benchmarks/bench_tracing.py --part B --n 3 --scope outputs
    python benchmarks/bench_tracing.py --part C --repeats 5

Part C — the one-pass estimates (``attn``, ``attn-sat``, ``gxi``) take the base score
log p(y | prompt) from their own forward pass instead of running the prompt once more (what
they did before): ``mode="attn"`` with its gold and generic targets (SteerX's trace), timed
as it is now and with that extra forward added back, alternating; medians.

Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np


def pick_long_example(model, data, min_tokens: int, k: int):
    from workbench.science.tracing import example_prompt, label_tokens

    for ex in data:
        prompt, items, _, _ = example_prompt(model, ex, k=k)
        pos = label_tokens(model, prompt, items).positions("history")
        if len(pos) >= min_tokens:
            return ex, prompt, items, pos
    raise SystemExit(f"no example with >= {min_tokens} history tokens at k={k}; raise --k")


def part_a(model, data, args) -> None:
    from workbench.science.tracing import trace_tokens

    ex, prompt, items, pos = pick_long_example(model, data, args.min_tokens, args.k)
    pos = pos[:: args.stride]
    n_prompt = model.encode(prompt).shape[-1]
    print(f"\n[A] example {ex.id}: prompt {n_prompt} tokens, {len(pos)} history tokens traced "
          f"(stride {args.stride}), target {len(model.tokenizer(ex.gold).input_ids)} tokens")
    times = {"exact": [], "naive": []}
    res = {}
    for r in range(args.repeats):
        for mode in (("exact", "naive") if r % 2 == 0 else ("naive", "exact")):
            t0 = time.perf_counter()
            res[mode] = trace_tokens(model, prompt, ex.gold, items=items, positions=pos, mode=mode, progress=False)
            times[mode].append(time.perf_counter() - t0)
    te, tn = statistics.median(times["exact"]), statistics.median(times["naive"])
    diff = float(np.abs(res["exact"].frame["effect"].to_numpy() - res["naive"].frame["effect"].to_numpy()).max())
    print(f"    exact (KV reuse) {te:.1f} s | naive (full forward per token) {tn:.1f} s | "
          f"speed-up {tn / te:.2f}x | max |effect diff| {diff:.2e}")


def part_b(model, data, args) -> None:
    from workbench.science.tracing import spearman, trace_example

    seen, examples = set(), []
    for ex in data:
        if ex.user_id not in seen:
            seen.add(ex.user_id)
            examples.append(ex)
        if len(examples) == args.n:
            break
    modes = [m for m in args.modes.split(",") if m]
    shares = [float(x) for x in args.verify.split(",") if x]
    if shares and "attn" not in modes:
        modes.append("attn")  # the estimate verified mode ranks with
    print(f"\n[B] {len(examples)} examples (one per user), scope {args.scope}, k={args.k}; fast modes {modes}")
    rows = []
    for i, ex in enumerate(examples):
        t0 = time.perf_counter()
        exact = trace_example(model, ex, k=args.k, mode="exact", positions=args.scope, progress=False)
        t_exact = time.perf_counter() - t0
        e = exact.frame["effect"].to_numpy()
        we = exact.by_word().set_index("word")["score"]
        top = set(np.argsort(-e)[:10])
        line = [f"    {i + 1:2d} {ex.id}: {len(e)} tokens, exact {t_exact:.1f} s"]
        saved = {"id": ex.id, "n": len(e), "exact": e.tolist(), "seconds": {"exact": t_exact},
                 "word": exact.frame["word"].tolist() if "word" in exact.frame else None}
        for mode in modes:
            t0 = time.perf_counter()
            fast = trace_example(model, ex, k=args.k, mode=mode, positions=args.scope, ig_steps=args.ig_steps,
                                 progress=False)
            t_fast = time.perf_counter() - t0
            f = fast.frame["effect"].to_numpy()
            rho = spearman(e, f)
            wf = fast.by_word().set_index("word")["score"].reindex(we.index)
            rho_w = spearman(we.to_numpy(), wf.to_numpy())
            overlap = len(top & set(np.argsort(-f)[:10])) / 10
            rows.append({"mode": mode, "rho": rho, "rho_w": rho_w, "ratio": t_exact / t_fast, "top10": overlap})
            line.append(f"{mode} {t_fast:.1f} s rho {rho:+.3f} (words {rho_w:+.3f}) top10 {overlap:.1f}")
            if mode == "attn":
                attn, t_attn = fast, t_fast
            saved[mode] = f.tolist()
            saved["seconds"][mode] = t_fast
        # mode="verified" (estimate "attn") at each share: the attn effects with the largest
        # |attn| entries replaced by the exact ones — exactly what the mode computes (a unit test
        # checks it), timed as attn + that share of the exact trace.
        for share in shares:
            m = max(1, int(np.ceil(share * len(e))))
            chosen = np.argsort(-np.abs(attn.frame["effect"].to_numpy()), kind="stable")[:m]
            v = attn.frame["effect"].to_numpy().copy()
            v[chosen] = e[chosen]
            frame = attn.frame.copy()
            frame["effect"] = v
            wv = type(attn)(frame, attn.meta).by_word().set_index("word")["score"].reindex(we.index)
            t_v = t_attn + t_exact * m / len(e)
            rows.append({"mode": f"verified@{share:g}", "rho": spearman(e, v), "rho_w": spearman(we.to_numpy(), wv.to_numpy()),
                         "ratio": t_exact / t_v, "top10": len(top & set(np.argsort(-v)[:10])) / 10})
        if args.measure_share:
            # one share run for real, to check the simulated time and values above
            t0 = time.perf_counter()
            ver = trace_example(model, ex, k=args.k, mode="verified", verify=args.measure_share,
                                selection="estimate", positions=args.scope, progress=False)
            t_ver = time.perf_counter() - t0
            m = max(1, int(np.ceil(args.measure_share * len(e))))
            sim = t_attn + t_exact * m / len(e)
            v = ver.frame["effect"].to_numpy()
            rows.append({"mode": f"measured@{args.measure_share:g}", "rho": spearman(e, v), "ratio": t_exact / t_ver,
                         "rho_w": spearman(we.to_numpy(), ver.by_word().set_index("word")["score"].reindex(we.index).to_numpy()),
                         "top10": len(top & set(np.argsort(-v)[:10])) / 10, "time_vs_sim": t_ver / sim})
            line.append(f"verified@{args.measure_share:g} measured {t_ver:.1f} s (simulated {sim:.1f} s)")
        print(" | ".join(line), flush=True)
        if args.save:
            with open(args.save, "a") as fh:
                fh.write(json.dumps(saved) + "\n")
    modes = modes + [f"verified@{share:g}" for share in shares]
    if args.measure_share:
        modes.append(f"measured@{args.measure_share:g}")
        r = [x["time_vs_sim"] for x in rows if "time_vs_sim" in x]
        print(f"\n    measured verified time / simulated time: median {np.median(r):.2f}, range {min(r):.2f}-{max(r):.2f}")
    print("\n    mode      mean rho  median rho  mean rho (words)  median speed-up  mean top-10 overlap")
    for mode in modes:
        r = [x for x in rows if x["mode"] == mode]
        print(f"    {mode:<8} {np.mean([x['rho'] for x in r]):+9.3f} {np.median([x['rho'] for x in r]):+11.3f} "
              f"{np.mean([x['rho_w'] for x in r]):+17.3f} "
              f"{np.median([x['ratio'] for x in r]):15.1f}x {np.mean([x['top10'] for x in r]):20.2f}")


def part_c(model, data, args) -> None:
    from workbench.data.prompts import generate_line
    from workbench.science.tracing import _base_scores, _target_ids, example_prompt, trace_tokens

    ex = data[0]
    prompt, items, _, generic_prompt = example_prompt(model, ex, k=args.k)
    generic = generate_line(model, generic_prompt, max_new_tokens=24)
    ids = model.encode(prompt)
    print(f"\n[C] mode='attn', gold + generic target, prompt {ids.shape[-1]} tokens, {args.repeats} alternating repeats")
    times: dict[str, list[float]] = {"one pass": [], "+ base forward": []}
    for r in range(args.repeats):
        for variant in (("one pass", "+ base forward") if r % 2 == 0 else ("+ base forward", "one pass")):
            t0 = time.perf_counter()
            if variant == "+ base forward":
                _base_scores(model, ids, [_target_ids(model, ex.gold), _target_ids(model, generic)], "mean")
            trace_tokens(model, prompt, ex.gold, items=items, mode="attn", generic_target=generic, progress=False)
            times[variant].append(time.perf_counter() - t0)
    a, b = statistics.median(times["one pass"]), statistics.median(times["+ base forward"])
    print(f"    one pass {a:.2f} s, with the separate base forward {b:.2f} s: {b / a:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, help="cpu, cuda, ... (default: the GPU if there is one)")
    ap.add_argument("--dtype", default="float32", help="float32 (default, as every figure here), bfloat16, ...")
    ap.add_argument("--part", choices=["A", "B", "AB", "C"], default="AB")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=20, help="examples for part B")
    ap.add_argument("--k", type=int, default=5, help="profile items in the prompt")
    ap.add_argument("--min-tokens", type=int, default=256, help="part A: history tokens at least")
    ap.add_argument("--stride", type=int, default=1, help="part A: trace every stride-th history token")
    ap.add_argument("--repeats", type=int, default=1, help="parts A and C: alternating repeats")
    ap.add_argument("--scope", default="history", help="part B: history, outputs or inputs (the items' user outputs or inputs)")
    ap.add_argument("--modes", default="attn,attn-ig,gxi", help="part B: fast modes to compare")
    ap.add_argument("--ig-steps", type=int, default=4)
    ap.add_argument("--verify", default="0.1,0.2,0.3", help="part B: shares of tokens verified exactly (mode='verified')")
    ap.add_argument("--measure-share", type=float, default=0.3,
                    help="part B: also run mode='verified' at this share for real (0: don't)")
    ap.add_argument("--save", default=None, help="part B: append each example's effects (every mode) to this JSON-lines file")
    args = ap.parse_args()

    import torch

    import workbench as wb
    from workbench.data.lamp import load_lamp4_news

    torch.set_grad_enabled(False)
    model = wb.load_model(args.model, device=args.device, dtype=args.dtype)
    data = load_lamp4_news()
    print(f"{model!r}; torch threads {torch.get_num_threads()}")
    if "A" in args.part:
        part_a(model, data, args)
    if "B" in args.part:
        part_b(model, data, args)
    if "C" in args.part:
        part_c(model, data, args)


if __name__ == "__main__":
    main()
