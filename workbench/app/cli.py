"""The ``workbench`` command line: ``models``, ``demo``, ``bench``, ``tune``, ``heads``.

A thin layer: what a command decides (the methods' settings from ``--tuned`` and ``--set``, the
grids to tune, the examples) is made by library functions a notebook can call too
(:func:`workbench.runner.tuning.methods_for_run`, :func:`~workbench.runner.tuning.plan_tuning`,
:func:`workbench.data.splits.select_examples`); this module reads options and prints.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from workbench.app.options import RAY, add_options


def _cmd_models(args: argparse.Namespace) -> int:
    import pandas as pd

    from workbench.core.loading import available_models

    df = pd.DataFrame(available_models())
    with pd.option_context("display.max_colwidth", 90, "display.width", 200):
        print(df.to_string(index=False))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from workbench.app.demo import run_demo
    from workbench.app.report import Report
    from workbench.core.loading import check_load_args, load_model

    # Everything that can be wrong with the arguments fails here, not after minutes of analysis.
    check_load_args(args.model, args.device, args.dtype)
    Report.check_target(args.out, overwrite=args.force)
    t0 = time.perf_counter()
    print(f"loading {args.model} ...", flush=True)
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    print(f"  {model}  ({time.perf_counter() - t0:.1f} s)")
    result = run_demo(model, how=args.how, max_new_tokens=args.max_new_tokens, log=lambda line: print(line, flush=True))
    print("\n" + result.summary(args.how))
    path = result.report.save(args.out, overwrite=args.force)
    if getattr(result.report, "kept_previous", None):
        print(f"\n(the previous report was kept in {result.report.kept_previous})")
    print(f"\nReport: {path.resolve()}   ({time.perf_counter() - t0:.0f} s in all)")
    return 0


def _check_common(args: argparse.Namespace) -> Any:
    """The arguments every model command shares, checked before any data or model is read; the
    run's GenerationSettings for a command that generates (None for ``heads``)."""
    from workbench._util import check_writable_dir
    from workbench.core.loading import check_load_args
    from workbench.methods import GenerationSettings

    check_load_args(args.model, args.device, args.dtype)
    check_writable_dir(args.out, "--out directory")
    if hasattr(args, "retrieval"):
        return GenerationSettings(max_new_tokens=args.max_new_tokens, k=args.k, retrieval=args.retrieval)
    return None


def _load_dataset(args: argparse.Namespace) -> Any:
    from workbench.data.lamp import load_task_data

    return load_task_data(args.task, args.data, args.split, getattr(args, "with_profile", False))


def _cluster(args: argparse.Namespace) -> Any:
    from workbench.runner.scaleout import cluster_for

    return cluster_for(args.workers, args.ray_address, args.gpus_per_worker, args.threads_per_worker, args.ray_timeout)


def _cmd_bench(args: argparse.Namespace) -> int:
    from workbench._util import dir_lock

    methods, dataset, cluster, run = _bench_plan(args)
    # The directory's one writer from here to the end: a second `bench` into it is refused at once.
    with dir_lock(args.out, "benchmark directory"):
        return _bench_run(args, methods, dataset, cluster, run)


def _bench_plan(args: argparse.Namespace) -> tuple[list, Any, Any, dict]:
    """Everything ``bench`` checks before the model loads (nothing is written)."""
    from workbench.data.splits import split_users
    from workbench.runner.bench import check_run
    from workbench.runner.settings import parse_method_names
    from workbench.runner.tuning import methods_for_run, tuned_for_run

    settings = _check_common(args)
    names = parse_method_names(args.methods)
    methods = methods_for_run(names, settings, args.model, tuned=args.tuned or [], set_items=args.set or [])
    dataset = split_users(_load_dataset(args), args.users, args.fraction)
    users = None if args.users == "all" else {"users": args.users, "fraction": args.fraction}
    tuned, note = tuned_for_run(args.tuned, names, args.users)
    if note:
        print(f"workbench: note: {note}", file=sys.stderr)
    label_mode = getattr(args, "labels", "score")
    check_run(args.model, dataset, methods, args.out, n=args.n, settings=settings, users=users, tuned=tuned,
              label_mode=label_mode)
    cluster = _cluster(args)
    if cluster is not None and label_mode != "score":
        raise ValueError("--labels generate runs in this process only (leave out --workers / --ray-address)")
    run = dict(n=args.n, settings=settings, users=users, tuned=tuned, batch_size=_batch_size(args))
    return methods, dataset, cluster, run if cluster is not None else {**run, "label_mode": label_mode}


def _batch_size(args: argparse.Namespace) -> int:
    from workbench.runner.bench import DEFAULT_BATCH_SIZE

    return DEFAULT_BATCH_SIZE if args.batch_size is None else args.batch_size


def _bench_run(args: argparse.Namespace, methods: list, dataset: Any, cluster: Any, run: dict) -> int:
    from workbench.core.loading import load_model
    from workbench.runner.bench import format_summary, run_bench

    users = run["users"]
    if cluster is not None:
        from workbench.runner.scaleout import run_bench_distributed

        print(f"{args.model} on {cluster}\n{dataset!r}" + (f"  ({args.users} users)" if users else ""))
        result = run_bench_distributed(args.model, dataset, methods, args.out, cluster, device=args.device,
                                       dtype=args.dtype, **run)
    else:
        model = load_model(args.model, device=args.device, dtype=args.dtype)
        print(f"{model}\n{dataset!r}" + (f"  ({args.users} users)" if users else ""))
        result = run_bench(model, dataset, methods, args.out, **run)
    print()
    print(format_summary(result.summary))
    print(f"\noutputs: {args.out}/outputs.jsonl   table: {args.out}/results.csv   chart: {args.out}/results.html")
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from workbench._util import dir_lock
    from workbench.data.splits import select_examples
    from workbench.methods import make_methods
    from workbench.runner.bench import check_profiles
    from workbench.runner.settings import parse_method_names
    from workbench.runner.tuning import check_tuning_dir, plan_tuning, tuning_about, tuning_metric

    settings = _check_common(args)
    grids, fixed = plan_tuning(parse_method_names(args.methods), args.grid or [], args.set or [], settings)
    dataset = _load_dataset(args)
    args.metric = tuning_metric(dataset.task, args.metric)
    check_profiles(make_methods(list(grids), settings), select_examples(dataset, args.n, users="tune",
                                                                        fraction=args.fraction))
    check_tuning_dir(args.out, grids, fixed, tuning_about(args.model, dataset, args.fraction, args.metric, args.n, settings))
    with dir_lock(args.out, "tuning directory"):  # held from before the model loads to the end
        return _tune_run(args, settings, grids, fixed, dataset)


def _tune_run(args: argparse.Namespace, settings: Any, grids: dict, fixed: dict, dataset: Any) -> int:
    from workbench.core.loading import load_model
    from workbench.data.splits import describe_split
    from workbench.runner.tuning import tune_methods

    model = load_model(args.model, device=args.device, dtype=args.dtype)
    split = describe_split(dataset, args.fraction)
    print(f"{model}\n{dataset!r}\ntuning users: {split['tune_users']} ({split['tune_examples']} examples); "
          f"evaluation users kept apart: {split['eval_users']}")
    tune_methods(model, dataset, grids, args.out, metric=args.metric, fraction=args.fraction, n=args.n, settings=settings,
                 fixed=fixed, command="workbench " + " ".join(sys.argv[1:]), log=print, batch_size=_batch_size(args))
    tuned = Path(args.out) / "tuned.json"
    print(f"\nchosen settings: {tuned}   apply with: workbench bench --tuned {tuned} --users eval")
    return 0


def _cmd_heads(args: argparse.Namespace) -> int:
    from workbench._util import verify_count
    from workbench.core.loading import load_model
    from workbench.data.splits import select_examples
    from workbench.runner.heads import check_heads_dir, write_head_scores
    from workbench.science.pcs import preference_scores

    _check_common(args)
    verify_count(args.verify, 1, "heads")  # a bad --verify fails before the model loads
    cluster = _cluster(args)
    target = check_heads_dir(args.out, args.force)
    dataset = _load_dataset(args)
    examples = select_examples(dataset, args.n, source=args.source)
    label = f"{dataset.path} ({args.split}), " + ("profile leave-one-out" if args.source == "profile" else "query golds")

    def compute() -> Any:
        model = load_model(args.model, device=args.device, dtype=args.dtype)
        print(f"{model}\n{dataset!r}")
        return preference_scores(model, examples, how=args.how, scope=args.scope, mode=args.mode, k=args.k,
                                 contrast=None if args.contrast == "none" else args.contrast, verify=args.verify,
                                 data=label, cluster=cluster)

    scores = write_head_scores(args.out, compute, force=args.force)
    print(f"\n{scores}\n({scores.meta['seconds']:.0f} s)\n\nTop heads (PCS = NLL increase in nats/token when masked):")
    for row in scores.frame.sort_values("pcs", ascending=False).head(args.top).itertuples():
        print(f"  L{int(row.layer):>2}H{int(row.head)}  {row.pcs:+.4f}  (std {row.std:.4f})")
    print(f"\nscores: {target}   heatmap: {target.parent / 'heatmap.html'}   table: {target.parent / 'heads.csv'}")
    return 0


def _command(sub: Any, name: str, help: str, func: Any, names: str, ray: bool = False, **changes: dict) -> None:
    # --debug is accepted after the command too (`workbench bench ... --debug`); SUPPRESS keeps a
    # flag given before the command from being reset by the subcommand's default.
    p = sub.add_parser(name, help=help)
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the Python traceback of an error")
    add_options(p, names, **changes)
    if ray:
        add_options(p.add_argument_group(RAY[0]), RAY[1])
    p.set_defaults(func=func)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="workbench", description="Explain and steer how language models personalize.")
    p.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    sub = p.add_subparsers(dest="command", required=True)
    _command(sub, "models", "list the models workbench knows and whether each loads offline here", _cmd_models, "")
    _command(sub, "demo", "generic vs personalized output and per-layer head masking, as an HTML report", _cmd_demo,
             "model out how max-new-tokens device dtype force",
             out=dict(default="workbench-report", help="report directory (default: ./workbench-report)"),
             how=dict(default="zero", choices=["zero", "uniform"], help="how heads are masked (default: zero)"),
             force=dict(help="replace an existing report instead of keeping it under previous/"))
    _command(sub, "bench", "run personalization methods on LaMP-format data and compare them", _cmd_bench,
             "task data split model n methods labels k retrieval max-new-tokens batch-size out device dtype set users "
             "fraction tuned with-profile",
             ray=True, out=dict(default="bench-results"))
    _command(sub, "tune", "choose methods' settings on the tuning users (never the evaluation users)", _cmd_tune,
             "task data split model methods grid set metric fraction n k retrieval max-new-tokens batch-size out device "
             "dtype with-profile",
             methods=dict(default=None, required=True), set=dict(help="a setting fixed at every grid point"),
             fraction=dict(help="share of users kept for tuning (default 1/3)"),
             n=dict(help="first N tuning examples only (default: all)"),
             out=dict(default="tune-results", help="grid runs, figures and tuned.json (resumable)"))
    _command(sub, "heads", "Preference Contribution Score of every attention head, with its heatmap", _cmd_heads,
             "task data split model n source how scope mode verify contrast k top out force device dtype", ray=True,
             n=dict(default=50, help="examples to average over (default 50)"), k=dict(help="profile items in each prompt (default 5)"),
             out=dict(default="heads-results"), force=dict(help="replace existing scores in --out"))
    return p


# What a user can fix: bad arguments and data (ValueError, DataError), files (OSError: missing,
# not writable, a directory where a file belongs, ...), a model that is not available
# (ModelNotAvailableError, a RuntimeError). Anything else is a bug and keeps its traceback.
_USER_ERRORS = (ValueError, OSError, RuntimeError)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except _USER_ERRORS as e:
        if args.debug:
            raise
        # Bad input is the user's to fix: say what and how, without a traceback.
        print(f"workbench: error: {_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("workbench: interrupted (bench and tune resume where they stopped when run again)", file=sys.stderr)
        return 130


def _message(e: BaseException) -> str:
    # An OSError from the system says only "[Errno 13] Permission denied: 'x'": name the kind too.
    if isinstance(e, OSError) and e.strerror and e.filename:
        return f"{e.strerror}: {e.filename}"
    return str(e) or type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
