"""One process vs Ray workers for the same benchmark run, side by side.

    .venv/bin/python benchmarks/bench_scaleout.py [--model smollm2-135m] [--n 20] [--workers 1,2]

Runs ``generic,rag`` on the first ``--n`` queries: serially in this process (the reference,
1 thread), then with each worker count on a local Ray cluster (1 thread per worker), each into
a fresh directory. Prints wall time (start-up included and excluded), the speed-up over the
serial run, and whether every prediction equals the serial one.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import workbench as wb  # noqa: E402
from workbench.runner.bench import run_bench  # noqa: E402
from workbench.data.lamp import load_lamp4_news  # noqa: E402
from workbench.runner.scaleout import Cluster, run_bench_distributed  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--methods", default="generic,rag")
    ap.add_argument("--workers", default="1,2")
    args = ap.parse_args()
    methods = args.methods.split(",")
    data = load_lamp4_news()
    torch.set_num_threads(1)

    t0 = time.perf_counter()
    model = wb.load_model(args.model)
    load = time.perf_counter() - t0
    t0 = time.perf_counter()
    serial = run_bench(model, data, methods, tempfile.mkdtemp(), n=args.n, progress=False)
    serial_s = time.perf_counter() - t0
    del model
    rows = [("serial (this process)", load + serial_s, serial_s, True)]
    for w in (int(x) for x in args.workers.split(",")):
        t0 = time.perf_counter()
        res = run_bench_distributed(args.model, data, methods, tempfile.mkdtemp(), Cluster(workers=w, threads_per_worker=1),
                                    n=args.n, progress=False)
        wall = time.perf_counter() - t0
        gen = float(res.outputs.groupby("method")["seconds"].sum().sum()) / w  # compute time per worker
        same = res.outputs["prediction"].tolist() == serial.outputs["prediction"].tolist()
        rows.append((f"{w} Ray worker{'s' if w > 1 else ''}", wall, gen, same))

    print(f"\n{args.model}, {args.methods}, {args.n} queries ({len(methods) * args.n} outputs), 1 thread per process")
    print(f"{'run':<24}{'wall s':>9}{'vs serial':>11}{'gen s/worker':>14}  identical")
    base = rows[0][1]
    for name, wall, gen, same in rows:
        print(f"{name:<24}{wall:>9.1f}{base / wall:>10.2f}x{gen:>14.1f}  {same}")
    print("(wall: model load + generation, Ray start-up included; serial's load is one model, each worker loads its own)")


if __name__ == "__main__":
    main()
