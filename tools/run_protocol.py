"""The tuned protocol for one task and model, method after method: tune on the tuning users,
run on the evaluation users at the chosen settings, then export the table.

    python tools/run_protocol.py --task lamp5 --methods generic,rag,dps,caa-user,fints+rag --n-tune 75 \
        --n-eval 300 --grid fints+rag.scale=0.5,1,2 --out runs/protocol-lamp5 --dry-run   # print the plan
    OMP_NUM_THREADS=1 python tools/run_protocol.py ... (same, without --dry-run)              # run it

Every step is a ``workbench tune`` / ``workbench bench`` command (printed before it runs), so the
plan is the record; both resume where they stopped, so an interrupted protocol is re-run with
the same command and redoes nothing (stopping the protocol, by Ctrl-C or ``kill``, stops its
running step too). Methods without a grid (``generic``, ``rag``, ``majority``)
are run at their defaults. One evaluation directory holds every method's predictions; the last
step is the ``tools/eval_table.py`` command that makes the table from it (run it with ``--table``).
It exists so that the whole remainder of a task's table is one command, on this CPU in the
background or on a GPU machine in one call.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run_step(cmd: list[str]) -> int:
    """Run one step and return its exit status. A SIGTERM to this process stops the step too:
    otherwise ``kill <protocol>`` would leave the step running, still writing its run directory,
    while the user starts the protocol again."""
    proc = subprocess.Popen(cmd, cwd=ROOT)

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        return proc.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
        if proc.poll() is None:  # stopped by a signal or Ctrl-C: the step goes with it
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def plan(task: str, model: str, methods: list[str], out: Path, n_tune: int | None, n_eval: int | None,
         grids: list[str], sets: list[str], extra: list[str], table: Path | None) -> list[list[str]]:
    """The commands, in order: for each tuned method ``tune`` then ``bench --tuned``; the untuned
    ones (no declared grid and no ``--grid``) one ``bench`` at their defaults; then the table."""
    from workbench.methods import GenerationSettings, make_methods
    from workbench.runner.settings import parse_assignments
    from workbench.runner.tuning import DEFAULT_GRIDS, methods_for_run, parse_grid, plan_tuning

    make_methods(methods, GenerationSettings())  # an unknown name stops here, before anything runs
    by_method = parse_grid(grids)
    fixed_of = parse_assignments(sets)
    stray = sorted({*by_method, *fixed_of} - set(methods))
    if stray:
        raise ValueError(f"--grid/--set name {stray}, which --methods does not list")
    common = ["--task", task, "--model", model, *extra]
    tuned_methods = [m for m in methods if m in DEFAULT_GRIDS or m in by_method]
    untuned = [m for m in methods if m not in tuned_methods]
    if tuned_methods:
        plan_tuning(tuned_methods, grids, [s for s in sets if s.split(".")[0] in tuned_methods])  # checks every value
    eval_dir = out / "eval"
    n_eval_args = ["--n", str(n_eval)] if n_eval else []
    steps, tuned_files = [], []
    if untuned:
        # their --set go to this run (a tuned method's are in its tuned.json)
        mine = [s for s in sets if s.split(".")[0] in untuned]
        methods_for_run(untuned, GenerationSettings(), set_items=mine)  # bench's own check of the values
        untuned_sets = [a for s in mine for a in ("--set", s)]
        steps.append(["workbench", "bench", *common, "--methods", ",".join(untuned), *untuned_sets, "--users", "eval",
                      *n_eval_args, "--out", str(eval_dir)])
    for m in tuned_methods:
        tune_dir = out / f"tune-{m.replace('+', '-')}"
        mine = [f"{m}.{field}={','.join(vals)}" for field, vals in by_method.get(m, {}).items()]
        fixed = [s for s in sets if s.split(".")[0] == m]
        steps.append(["workbench", "tune", *common, "--methods", m, *[a for g in mine for a in ("--grid", g)],
                      *[a for s in fixed for a in ("--set", s)], *(["--n", str(n_tune)] if n_tune else []),
                      "--out", str(tune_dir)])
        steps.append(["workbench", "bench", *common, "--methods", m, "--tuned", str(tune_dir / "tuned.json"),
                      "--users", "eval", *n_eval_args, "--out", str(eval_dir)])
        tuned_files.append(tune_dir / "tuned.json")
    if table is not None:
        steps.append(["python", "tools/eval_table.py", "--task", task, "--model", model,
                      *(["--n", str(n_eval)] if n_eval else []), *[a for f in tuned_files for a in ("--tuned", str(f))],
                      "--runs", str(eval_dir), "--methods", ",".join(methods),
                      *[a for s in steps for a in ("--command", shlex.join(s))], "--out", str(table)])
    return steps


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", required=True, help="lamp4, lamp5 or lamp2n")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--methods", required=True, help="comma-separated, in the order to run them")
    ap.add_argument("--out", type=Path, required=True, help="tune-<method>/ and eval/ go here")
    ap.add_argument("--n-tune", type=int, default=None, help="the first N tuning queries (default: all)")
    ap.add_argument("--n-eval", type=int, default=None, help="the first N evaluation queries (default: all)")
    ap.add_argument("--grid", action="append", default=[], metavar="METHOD.FIELD=V1,V2",
                    help="a grid instead of the method's declared one (repeatable)")
    ap.add_argument("--set", action="append", default=[], metavar="METHOD.FIELD=VALUE",
                    help="a setting fixed while tuning and so in the evaluation run (repeatable)")
    ap.add_argument("--table", type=Path, default=None, help="export the table here at the end (tools/eval_table.py)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = ap.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    extra = ["--device", args.device] if args.device else []
    try:
        steps = plan(args.task, args.model, methods, args.out, args.n_tune, args.n_eval, args.grid, args.set,
                     extra, args.table)
    except ValueError as e:
        print(f"run_protocol: {e}", file=sys.stderr)
        return 2
    if args.table is not None and args.table.exists() and not args.dry_run:
        # checked before hours of runs, not at the last step (eval_table never replaces a table)
        print(f"run_protocol: {args.table} exists; move it away or give another --table", file=sys.stderr)
        return 2
    exe = Path(sys.executable).parent / "workbench"
    for i, step in enumerate(steps, 1):
        print(f"[{i}/{len(steps)}] {shlex.join(step)}", flush=True)
        if args.dry_run:
            continue
        # this interpreter's workbench and python, whatever is first on PATH
        first = {"workbench": str(exe) if exe.exists() else "workbench", "python": sys.executable}[step[0]]
        cmd = [first, *step[1:]]
        rc = _run_step(cmd)
        if rc:
            print(f"run_protocol: step {i} failed (exit {rc}); fix it and re-run the same command: "
                  "finished steps are read back, not redone", file=sys.stderr)
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
