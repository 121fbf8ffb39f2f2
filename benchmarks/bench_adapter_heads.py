"""Where does a per-user LoRA adapter act, and does it move the heads PCS finds? (issue 30)

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_adapter_heads.py [--n 12] \
        [--out results/adapter_heads_smollm2-135m.csv]

On the first ``n`` history examples of the shipped plain PCS of SmolLM2
(``results/pcs_lamp4-news_smollm2-135m.json``: leave-one-out items of lamp4 users' histories,
each scored with the ``rag`` prompt of the user's other items), one example per user:

- the user's adapter, trained as ``lora-user+rag`` trains it at its tuned settings (rank 8,
  lr 1e-3, 1 epoch, the 16 most recent items, attention and MLP projections) on the example's
  profile — the held-out item is not in it, so the adapter never saw the target it is scored on;
- where it acts: :func:`adapter_effects` on its training records (``output_rel``: the size of
  the adapter's addition to each projection's output over the output's own size, per layer and
  module) — written to ``…_effects.csv``;
- does it move the preference heads: exact PCS (uniform masking, output scope: the DPS regime)
  of the adapted model on the example, against the base model's saved PCS on the same example:
  Spearman correlation over all heads, how many of the base top-2% heads stay top-2%, where the
  scores move (per layer), and the target's NLL with and without the adapter.

Prints the per-example table and the summary; writes the CSVs with a ``.json`` of the settings.
Adapted scores are cached per example in ``--work`` so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import workbench as wb  # noqa: E402
from workbench._util import results_dir  # noqa: E402
from workbench.data.history import profile_examples  # noqa: E402
from workbench.data.lamp import load_lamp4_news  # noqa: E402
from workbench.methods import GenerationSettings  # noqa: E402
from workbench.methods.lora import LoraUserRag  # noqa: E402
from workbench.science.lora import adapter_effects, records_loss  # noqa: E402
from workbench.science.pcs import _scoring_examples, preference_scores  # noqa: E402
from workbench.science.pcs_result import PreferenceScores  # noqa: E402

TUNED = {"rank": 8, "lr": 1e-3, "epochs": 1, "max_records": 16}  # runs/tune-lora: lora-user+rag's choice


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = (pd.Series(x.ravel()).rank().to_numpy() for x in (a, b))
    return float(np.corrcoef(ra, rb)[0, 1])


def top_set(m: np.ndarray, k: int) -> set[int]:
    return set(np.argsort(-m.ravel(), kind="stable")[:k].tolist())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--scores", default=None, help="the base model's saved PCS (default: the shipped file)")
    ap.add_argument("--n", type=int, default=12, help="history examples (one per user)")
    ap.add_argument("--top-percent", type=float, default=2.0)
    ap.add_argument("--work", default="runs/adapter-heads")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    model = wb.load_model(args.model)
    scores_path = Path(args.scores or results_dir() / f"pcs_lamp4-news_{model.name}.json")
    base = PreferenceScores.load(scores_path, model=model)
    meta = base.meta
    news = load_lamp4_news()
    items = profile_examples(news, n=meta["n_examples"], k=meta["k"], by=meta["retrieval"])
    if [ex.id for ex in items] != meta["example_ids"]:
        raise SystemExit(f"{scores_path}: its examples do not reproduce from the shipped lamp4 data")
    chosen, seen = [], set()
    for i, ex in enumerate(items):
        if ex.user_id not in seen:
            seen.add(ex.user_id)
            chosen.append(i)
    chosen = chosen[:args.n]
    method = LoraUserRag(GenerationSettings(), **TUNED)
    L, H = model.n_layers, model.n_heads
    k_top = max(1, round(L * H * args.top_percent / 100))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows, effects, adapted_all = [], [], []
    t_all = time.perf_counter()
    for i in chosen:
        ex = items[i]
        t0 = time.perf_counter()
        adapter = method.user_adapter(model, ex.user_id, [ex])
        records = method.user_records(model, ex.user_id, [ex])
        eff = adapter_effects(model, adapter, records)
        eff.insert(0, "example", ex.id)
        effects.append(eff)
        cached = work / f"{model.name}_{ex.id.replace('/', '_')}.json"
        if cached.exists():
            adapted = PreferenceScores.load(cached, model=model)
        else:
            with adapter.apply(model):
                adapted = preference_scores(model, [ex], mode="exact", k=meta["k"], retrieval=meta["retrieval"],
                                            data="profile leave-one-out, user's LoRA adapter on")
            adapted.save(cached, overwrite=True)
        b, a = base.per_example[i], adapted.per_example[0]
        adapted_all.append(a)
        scored = _scoring_examples(model, [ex], meta["k"], meta["retrieval"])[0]
        nll_base = records_loss(model, [(scored.prompt, scored.target)])
        nll_adapted = records_loss(model, [(scored.prompt, scored.target)], adapter)
        shift = np.abs(a - b).sum(1)  # per layer
        out_rel = eff.groupby("layer")["output_rel"].sum().reindex(range(L)).to_numpy()
        rows.append({
            "example": ex.id, "user": ex.user_id, "spearman": spearman(a, b),
            f"top{k_top}_kept": len(top_set(a, k_top) & top_set(b, k_top)),
            "nll_base": nll_base, "nll_adapted": nll_adapted,
            "pcs_abs_base": float(np.abs(b).sum()), "pcs_abs_shift": float(shift.sum()),
            "shift_peak_layer": int(shift.argmax()), "adapter_peak_layer": int(np.nanargmax(out_rel)),
            "shift_vs_adapter_layers": float(np.corrcoef(shift, np.nan_to_num(out_rel))[0, 1]),
            "seconds": round(time.perf_counter() - t0, 1),
        })
        print(pd.DataFrame(rows[-1:]).to_string(index=False, header=len(rows) == 1), flush=True)
    table = pd.DataFrame(rows)
    eff_all = pd.concat(effects, ignore_index=True)
    mean_base = base.per_example[chosen].mean(0)
    mean_adapted = np.stack(adapted_all).mean(0)
    by_layer = eff_all.groupby("layer")["output_rel"].mean()
    summary = {
        "examples": len(rows),
        "spearman_mean": float(table["spearman"].mean()), "spearman_min": float(table["spearman"].min()),
        f"top{k_top}_kept_mean": float(table[f"top{k_top}_kept"].mean()),
        "spearman_of_means": spearman(mean_adapted, mean_base),
        f"top{k_top}_kept_of_means": len(top_set(mean_adapted, k_top) & top_set(mean_base, k_top)),
        "base_top_heads": [[int(j // H), int(j % H)] for j in sorted(top_set(mean_base, k_top))],
        "adapted_top_heads": [[int(j // H), int(j % H)] for j in sorted(top_set(mean_adapted, k_top))],
        "nll_base_mean": float(table["nll_base"].mean()), "nll_adapted_mean": float(table["nll_adapted"].mean()),
        "relative_shift_mean": float((table["pcs_abs_shift"] / table["pcs_abs_base"]).mean()),
        "adapter_output_rel_peak_layers": [int(x) for x in by_layer.sort_values(ascending=False).index[:3]],
        "adapter_output_rel_by_kind": eff_all.groupby("kind")["output_rel"].mean().round(5).to_dict(),
        "seconds": round(time.perf_counter() - t_all, 1),
    }
    print(table.round(4).to_string(index=False))
    print(json.dumps(summary, indent=1))
    if args.out:
        out = Path(args.out)
        table.to_csv(out, index=False)
        eff_path = out.with_name(out.stem + "_effects.csv")
        slim = eff_all.drop(columns=["path"])  # layer + module say it; the file ships with the package
        for col in ("weight_delta", "weight_rel", "output_delta", "output_rel"):
            slim[col] = slim[col].map(lambda v: float(f"{v:.5g}"))
        slim.to_csv(eff_path, index=False)
        info = {"command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_adapter_heads.py "
                           f"--model {args.model} --n {args.n} --top-percent {args.top_percent} --out {args.out}",
                "model": model.name, "base_scores": scores_path.name, "adapter": {**TUNED, "modules": method.modules,
                                                                                  "alpha": method.alpha},
                "pcs": {"how": "uniform", "scope": "output", "mode": "exact", "k": meta["k"],
                        "retrieval": meta["retrieval"]},
                "effects_file": eff_path.name, "summary": summary, "created": time.strftime("%Y-%m-%d %H:%M:%S")}
        out.with_suffix(".json").write_text(json.dumps(info, indent=1) + "\n")
        print("wrote", out, eff_path, out.with_suffix(".json"))


if __name__ == "__main__":
    main()
