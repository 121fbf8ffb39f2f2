"""Re-run methods on the first queries of lamp4-news and compare with the saved results.

Greedy decoding is deterministic, so a refactor that changes nothing a user sees must give
the saved predictions of ``results/lamp4-news_smollm2-135m.csv`` token for token.

    OMP_NUM_THREADS=1 .venv/bin/python tools/identity_check.py --methods generic,rag,dps --n 21
    OMP_NUM_THREADS=1 .venv/bin/python tools/identity_check.py --methods generic,rag,dps,caa-user,steerx-caa \
        --n 207 --batch-size 8 --out runs/identity-b8     # batched vs the saved batch-1 outputs (issue 28)

DPS and the combinations take their heads from the saved preference scores
(``results/pcs_lamp4-news_smollm2-135m.json``, the scores the saved run computed) instead of
recomputing exact PCS (~30 min on a 2-core CPU). ``--n 21`` is seven whole users (three
queries each): per-user state (vectors, descriptions) is built from a user's queries in the
run, so a run that cut a user in two would build it from fewer queries than the saved one.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SAVED = ROOT / "results" / "lamp4-news_smollm2-135m.csv"
HEADS = ROOT / "results" / "pcs_lamp4-news_smollm2-135m.json"


def _settable(method, recorded: dict, prefix: str = "") -> dict:
    """The recorded fields the method has, flattened (``decoding.alpha``) for a combination's parts."""
    from workbench.runner.settings import settable_fields

    out = {}
    fields = settable_fields(method)
    for key, value in recorded.items():
        if isinstance(value, dict) and hasattr(method, key):
            out.update(_settable(getattr(method, key), value, f"{prefix}{key}."))
        elif isinstance(value, str) and value.startswith("default"):
            continue  # describe()'s words for None: the method's own default, as then
        elif key in fields and key != "heads_file":
            out[f"{prefix}{key}"] = value
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", required=True, help="comma-separated method names")
    p.add_argument("--n", type=int, default=21, help="first n dev queries (default 21: seven whole users)")
    p.add_argument("--out", default="runs/identity", help="run directory (resumable)")
    p.add_argument("--batch-size", type=int, default=1, help="examples decoded together (batched vs the saved batch-1 run)")
    args = p.parse_args(argv)

    import workbench as wb
    from workbench.runner.bench import run_bench
    from workbench.data.lamp import load_lamp4_news
    from workbench.methods import GenerationSettings, make_methods
    from workbench.runner.settings import apply_settings

    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    settings = GenerationSettings()
    methods = make_methods(names, settings)
    # Each method at the settings the saved run recorded (defaults may have moved since, e.g.
    # dps to its tuned alpha), so "identical" compares the code, not the settings.
    recorded = json.loads(SAVED.with_suffix(".json").read_text()).get("method_settings", {})
    for m in methods:
        apply_settings(m, _settable(m, recorded.get(m.name, {})))
    for m in methods:
        if hasattr(m, "heads_file"):
            m.heads_file = str(HEADS)
            if hasattr(m, "decoding"):
                m.decoding.heads_file = str(HEADS)
    model = wb.load_model("smollm2-135m")
    result = run_bench(model, load_lamp4_news(), methods, args.out, n=args.n, settings=settings, batch_size=args.batch_size)
    saved = pd.read_csv(SAVED, dtype={"id": str}, keep_default_na=False)
    new = result.outputs.astype({"id": str})
    ok = True
    for name in names:
        a = new[new["method"] == name].set_index("id")["prediction"]
        b = saved[saved["method"] == name].set_index("id")["prediction"].reindex(a.index)
        same = int((a.fillna("") == b.fillna("")).sum())
        print(f"{name:16s} {same}/{len(a)} predictions identical to results/")
        for i in a.index[a.fillna("") != b.fillna("")][:3]:
            print(f"    {i}: now {a[i]!r}\n    {' ' * len(i)}  was {b[i]!r}")
        ok &= same == len(a)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
