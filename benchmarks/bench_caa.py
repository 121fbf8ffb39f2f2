"""What building a user's CAA vector (``caa-all``, ``steerx-caa``) costs, before and after its
shared prefix ran on the hook-free view up to the layer read.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_caa.py [--task lamp5] [--users 3] [--method caa-all]

Side by side in one run, per user (the first ``--users`` of the task's tuning users): the
method's vector built as at commit feffd64 (read from git: the prefix all positive prompts share —
the user's history as earlier turns, up to 1,536 tokens — through the bridge, every layer,
every position's logits; then each input on the bridge, every layer) and as now (the prefix on the
hook-free view, stopped at the layer read; the inputs on the bridge, stopped there too). The
first user of each round warms up. Prints the times, the ratio and the largest difference between
the two vectors. Needs the git history (a clone, not a wheel).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import workbench as wb  # noqa: E402
from workbench.data.lamp import load_task_data  # noqa: E402
from workbench.data.splits import user_side  # noqa: E402
from workbench.methods import GenerationSettings, make_methods  # noqa: E402
from workbench.science import caa  # noqa: E402
from _from_git import function_at  # noqa: E402  (beside this script)

BEFORE = "feffd64"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="lamp5")
    ap.add_argument("--users", type=int, default=3)
    ap.add_argument("--method", default="caa-all", help="caa-all (default) or steerx-caa")
    ap.add_argument("--model", default="smollm2-135m")
    args = ap.parse_args()
    old_means = function_at(BEFORE, "workbench/science/caa.py", "_suffix_means")
    new_means = caa._suffix_means
    model = wb.load_model(args.model, progress=False)
    data = load_task_data(args.task)
    print(model)
    users = sorted({ex.user_id for ex in data if user_side(ex.user_id) == "tune"})[: args.users + 1]
    method, = make_methods([args.method], GenerationSettings())
    method.cache = False
    os.environ["WORKBENCH_CACHE"] = tempfile.mkdtemp()  # SteerX's descriptions are built once, in the warm-up
    t_old = t_new = 0.0
    for i, uid in enumerate(users):
        exs = [ex for ex in data if ex.user_id == uid]
        got = {}
        for label, means in (("before", old_means), ("now", new_means)):
            caa._suffix_means = means
            t0 = time.perf_counter()
            got[label] = method.prepare_user(model, uid, exs)
            dt = time.perf_counter() - t0
            if i:  # the first user warms up
                if label == "before":
                    t_old += dt
                else:
                    t_new += dt
            print(f"   user {uid} {label:6s} {dt:6.1f} s")
        caa._suffix_means = new_means
        diff = float((got["before"].vector - got["now"].vector).abs().max())
        print(f"      largest difference {diff:.1e} (|v| max {float(got['now'].vector.abs().max()):.2f})")
    print(f"\n{args.method} vectors, {len(users) - 1} users: before {t_old:.1f} s, now {t_new:.1f} s, "
          f"{t_old / max(t_new, 1e-9):.2f}x")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
