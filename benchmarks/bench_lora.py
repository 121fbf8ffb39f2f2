"""What a per-user LoRA adapter costs on this machine (SmolLM2-135M, LaMP-4 news), and one real check.

    .venv/bin/python benchmarks/bench_lora.py [--users 2] [--max-records 16] [--epochs 1] [--threads 2]

For each of ``--users`` tuning users (those with at least ``--max-records`` history items):
the training records ``lora-user`` builds (the user's most recent profile items: the generic
prompt of the article, the user's headline as target), an adapter trained with the method's
defaults (``--rank``, ``--epochs``; lr, alpha, modules as ``lora-user``), and

- training seconds per user, per record (example) and per 1,000 tokens;
- the peak resident memory the training added over the loaded model (``ru_maxrss``);
- the adapter's parameters and its size on disk (``LoraAdapter.save``);
- the target loss on the records before and after;
- generation of the user's queries with the adapter on vs off (seconds per new token), and the
  check that with the adapter off the output is exactly the base model's;
- where the adapter acts: the layers with the largest relative output change, per module kind.

Prints a table; asserts only the exactness check.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import workbench as wb  # noqa: E402
from workbench.data.history import user_history  # noqa: E402
from workbench.data.lamp import load_lamp4_news  # noqa: E402
from workbench.data.prompts import build_prompt  # noqa: E402
from workbench.data.splits import user_side  # noqa: E402
from workbench.methods import GenerationSettings  # noqa: E402
from workbench.methods.lora import LoraUser, lora_records  # noqa: E402
from workbench.science.lora import adapter_effects, records_loss, train_lora  # noqa: E402


def peak_mib() -> float:
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / (1024 * 1024) if sys.platform == "darwin" else kib / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=2)
    ap.add_argument("--max-records", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--queries", type=int, default=2, help="queries per user generated with the adapter on and off")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model = wb.load_model("smollm2-135m", device="cpu", progress=False)
    data = load_lamp4_news()
    method = LoraUser(GenerationSettings(max_new_tokens=32), rank=args.rank, epochs=args.epochs,
                      max_records=args.max_records, cache=False)
    users = [u for u in data.users() if user_side(u) == "tune"
             and len(user_history(data.by_user(u).examples)) >= args.max_records][: args.users]
    print(f"{model.name} ({model.dtype}, {torch.get_num_threads()} threads), lamp4-news, users {users}; "
          f"rank {method.rank}, alpha {method.alpha}, lr {method.lr}, epochs {method.epochs}, "
          f"batch {method.batch_size}, modules {method.modules}")
    base_peak = peak_mib()
    rows = []
    for user in users:
        exs = data.by_user(user).examples
        items = user_history(exs)[-method.max_records:]
        records = lora_records(model, "lamp4", items, user, reserve=32)
        before = records_loss(model, records)
        t0 = time.perf_counter()
        ad = train_lora(model, records, **method.train_settings())
        seconds = time.perf_counter() - t0
        after = records_loss(model, records, ad)
        with tempfile.TemporaryDirectory() as tmp:
            size = ad.save(Path(tmp) / "a.pt").stat().st_size
        gen_on, gen_off, same = [], [], True
        for ex in exs[: args.queries]:
            prompt, _ = build_prompt(model, ex, k=0, reserve=32)
            ids = model.encode(prompt)
            t0 = time.perf_counter()
            base = model.generate_tokens(ids, max_new_tokens=32)
            gen_off.append((time.perf_counter() - t0) / max(len(base), 1))  # per token: the two may stop apart
            t0 = time.perf_counter()
            with ad.apply(model):
                new = model.generate_tokens(ids, max_new_tokens=32)
            gen_on.append((time.perf_counter() - t0) / max(len(new), 1))
            same &= torch.equal(model.generate_tokens(ids, max_new_tokens=32), base)
        eff = adapter_effects(model, ad, records[:4])
        where = {kind: ",".join(str(x) for x in df.groupby("layer")["output_rel"].mean().nlargest(3).index)
                 for kind, df in eff.groupby("kind")}
        rows.append({"user": user, "records": len(records), "tokens": ad.built["n_tokens"],
                     "target_tokens": ad.built["n_target_tokens"], "steps": ad.built["steps"],
                     "train_s": round(seconds, 1), "s_per_record": round(seconds / len(records), 2),
                     "s_per_1k_tokens": round(1000 * seconds / ad.built["n_tokens"], 2),
                     "peak_rss_added_mib": round(peak_mib() - base_peak, 0), "params": ad.n_params,
                     "disk_kib": round(size / 1024, 1), "loss_before": round(before, 3), "loss_after": round(after, 3),
                     "gen_off_s_per_token": round(statistics.mean(gen_off), 3),
                     "gen_on_s_per_token": round(statistics.mean(gen_on), 3),
                     "off_equals_base": same, "top_layers_attn": where.get("attn"), "top_layers_mlp": where.get("mlp")})
        print(rows[-1], flush=True)
    import pandas as pd

    print(pd.DataFrame(rows).to_string(index=False))
    print(f"peak RSS of the process: {peak_mib():.0f} MiB (after loading the model: {base_peak:.0f} MiB)")
    assert all(r["off_equals_base"] for r in rows), "with the adapter off, generation differed from the base model"


if __name__ == "__main__":
    main()
