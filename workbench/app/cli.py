"""The ``workbench`` command line: ``models``, ``demo``, ``bench``, ``heads``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any


def _cmd_models(args: argparse.Namespace) -> int:
    import pandas as pd

    from workbench.core.loading import available_models

    df = pd.DataFrame(available_models())
    with pd.option_context("display.max_colwidth", 90, "display.width", 200):
        print(df.to_string(index=False))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from workbench.core.loading import load_model
    from workbench.app.demo import run_demo
    from workbench.core.loading import check_load_args
    from workbench.app.report import Report

    # Everything that can be wrong with the arguments fails here, not after minutes of analysis.
    check_load_args(args.model, args.device, args.dtype)
    Report.check_target(args.out, overwrite=args.force)
    t0 = time.perf_counter()
    print(f"loading {args.model} ...", flush=True)
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    print(f"  {model}  ({time.perf_counter() - t0:.1f} s)")
    result = run_demo(model, how=args.how, max_new_tokens=args.max_new_tokens, log=lambda line: print(line, flush=True))
    print("\nGeneric vs personalized headline:")
    for row in result.outputs().itertuples():
        print(f"  {row.prompt:<46} {row.headline}")
    top = result.effects.sort_values("drop", ascending=False).head(5)
    print(f"\nLayers whose heads the personalized headline needs most ({args.how} masking; drop in log p per token,")
    print("personalized headline vs generic headline):")
    for row in top.itertuples():
        print(f"  layer {int(row.layer):>2}: {row.drop:+.3f}   (generic {row.drop_generic:+.3f})")
    if result.scores is not None:
        print("\nPreference heads (PCS on the user's history, fast mode; nats/token):")
        print("  " + ", ".join(f"L{l}H{h} {v:+.3f}" for (l, h), v in result.scores._top_values(5)))
    path = result.report.save(args.out, overwrite=args.force)
    if getattr(result.report, "kept_previous", None):
        print(f"\n(the previous report was kept in {result.report.kept_previous})")
    print(f"\nReport: {path.resolve()}   ({time.perf_counter() - t0:.0f} s in all)")
    return 0


def _load_dataset(args: argparse.Namespace) -> tuple[Any, Path]:
    """The dataset the command names (``--data`` or the default), checked against ``--task``."""
    from workbench.data.lamp import default_data_dir, load_lamp

    data_dir = args.data or default_data_dir()
    dataset = load_lamp(data_dir, split=args.split)
    if args.task and dataset.task != args.task:
        raise ValueError(f"--task {args.task} but {data_dir} holds {dataset.task} data")
    return dataset, Path(data_dir)


def _method_names(args: argparse.Namespace) -> list[str]:
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not names:
        raise ValueError("--methods is empty; name at least one method, e.g. --methods generic,rag")
    return names


def _check_common(args: argparse.Namespace) -> None:
    """The arguments every model command shares, checked before any data or model is read."""
    from workbench._util import check_writable_dir
    from workbench.core.loading import check_load_args

    check_load_args(args.model, args.device, args.dtype)
    check_writable_dir(args.out, "--out directory")


def _methods_for_run(args: argparse.Namespace, settings: Any, model_name: str) -> list:
    """The run's methods with their settings: defaults, then ``--tuned``, then ``--set`` (every
    name and value checked before the model loads or anything runs)."""
    from workbench.methods import make_methods
    from workbench.runner.settings import apply_all, parse_assignments
    from workbench.runner.tuning import load_tuned

    names = _method_names(args)
    methods = make_methods(names, settings)
    changes = parse_assignments(args.set or [])
    tuned: dict = {}
    for path in getattr(args, "tuned", None) or []:
        for method, chosen in load_tuned(path, model_name).items():
            if method in tuned:
                raise ValueError(f"{method} is tuned in two of the --tuned files; keep one")
            tuned[method] = chosen
    clash = [f"{m}.{f}" for m, fs in changes.items() for f in fs if f in tuned.get(m, {})]
    if clash:
        raise ValueError(f"--set {clash} would override settings chosen by tuning (--tuned); drop one of the two")
    apply_all(methods, {m: fs for m, fs in tuned.items() if m in names})
    apply_all(methods, changes)
    return methods


def _users(args: argparse.Namespace, dataset: Any) -> tuple[Any, dict | None]:
    from workbench.data.splits import split_users

    if args.users == "all":
        return dataset, None
    return split_users(dataset, args.users, args.fraction), {"users": args.users, "fraction": args.fraction}


def _cmd_bench(args: argparse.Namespace) -> int:
    from workbench.core.loading import load_model
    from workbench.runner.bench import check_run, format_summary, run_bench
    from workbench.methods import GenerationSettings

    _check_common(args)
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, k=args.k, retrieval=args.retrieval)
    methods = _methods_for_run(args, settings, args.model)
    dataset, _ = _load_dataset(args)
    dataset, users = _users(args, dataset)
    check_run(args.model, dataset, methods, args.out, n=args.n, settings=settings, users=users)
    cluster = _cluster(args)
    if cluster is not None:
        from workbench.runner.scaleout import run_bench_distributed

        print(f"{args.model} on {cluster}\n{dataset!r}" + (f"  ({args.users} users)" if users else ""))
        result = run_bench_distributed(args.model, dataset, methods, args.out, cluster, n=args.n, settings=settings,
                                       users=users, device=args.device, dtype=args.dtype)
    else:
        model = load_model(args.model, device=args.device, dtype=args.dtype)
        print(f"{model}\n{dataset!r}" + (f"  ({args.users} users)" if users else ""))
        result = run_bench(model, dataset, methods, args.out, n=args.n, settings=settings, users=users)
    print()
    print(format_summary(result.summary))
    print(f"\noutputs: {args.out}/outputs.jsonl   table: {args.out}/results.csv   chart: {args.out}/results.html")
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from workbench.core.loading import load_model
    from workbench._util import atomic_write
    from workbench.methods import GenerationSettings, make_methods
    from workbench.runner.settings import apply_settings, parse_assignments
    from workbench.data.splits import describe_split
    from workbench.runner.tuning import DEFAULT_GRIDS, grid_points, parse_grid, save_tuned, tune

    _check_common(args)
    names = _method_names(args)
    grids = parse_grid(args.grid or [])
    untunable = [m for m in names if m not in grids and m not in DEFAULT_GRIDS]
    if untunable:
        raise ValueError(f"{untunable} have no declared grid (workbench.runner.tuning.DEFAULT_GRIDS); give one with --grid")
    fixed = parse_assignments(args.set or [])
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, k=args.k, retrieval=args.retrieval)
    make_methods(names, settings)  # unknown names fail here, before the model loads
    stray = [m for m in [*grids, *fixed] if m not in names]
    if stray:
        raise ValueError(f"--grid/--set name method(s) {stray} that are not in --methods {names}")
    for name in names:  # every grid value is a valid setting, before the model loads
        for point in grid_points(grids.get(name, DEFAULT_GRIDS.get(name))):
            apply_settings(make_methods([name], settings)[0], {**fixed.get(name, {}), **point})
    dataset, _ = _load_dataset(args)
    out = Path(args.out)
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    split = describe_split(dataset, args.fraction)
    print(f"{model}\n{dataset!r}\ntuning users: {split['tune_users']} ({split['tune_examples']} examples); "
          f"evaluation users kept apart: {split['eval_users']}")
    results = []
    for name in names:
        res = tune(model, dataset, name, grids.get(name, DEFAULT_GRIDS.get(name)), out, metric=args.metric, fraction=args.fraction,
                   n=args.n, settings=settings, fixed=fixed.get(name))
        results.append(res)
        figure = res.figure()
        atomic_write(out / f"grid-{name.replace('+', '_')}.html", lambda tmp: figure.write_html(tmp, include_plotlyjs="cdn"))
        print(res)
        about = {"model": model.name, "data": str(getattr(dataset, "path", "")), "split": dataset.split,
                 "users": {"users": "tune", **split}, "metric": args.metric, "n": args.n,
                 "settings": {"max_new_tokens": settings.max_new_tokens, "k": settings.k, "retrieval": settings.retrieval},
                 "command": "workbench " + " ".join(sys.argv[1:])}
        save_tuned(results, out / "tuned.json", about)  # after each method, so a cut-off tune keeps what it chose
    print(f"\nchosen settings: {out / 'tuned.json'}   apply with: workbench bench --tuned {out / 'tuned.json'} --users eval")
    return 0


def _cmd_heads(args: argparse.Namespace) -> int:
    from workbench.core.loading import load_model
    from workbench._util import atomic_write, verify_count
    from workbench.data.history import profile_examples
    from workbench.science.pcs import preference_scores

    _check_common(args)
    verify_count(args.verify, 1, "heads")  # a bad --verify fails before the model loads
    cluster = _cluster(args)
    out = Path(args.out)
    target = out / "scores.json"
    if target.exists() and not args.force:
        raise FileExistsError(f"{target} exists; pass --force to replace it, or choose another --out")
    dataset, data_dir = _load_dataset(args)
    if args.source == "profile":
        examples = profile_examples(dataset, n=args.n, k=args.k)
        label = f"{data_dir} ({args.split}), profile leave-one-out"
    else:
        examples = [ex for ex in dataset if ex.profile][: args.n]
        label = f"{data_dir} ({args.split}), query golds"
        if not examples:
            raise ValueError(f"no query in {data_dir} ({args.split}) has a profile; --source gold needs some")
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    print(f"{model}\n{dataset!r}")
    scores = preference_scores(model, examples, how=args.how, scope=args.scope, mode=args.mode, k=args.k,
                               contrast=None if args.contrast == "none" else args.contrast, verify=args.verify, data=label,
                               cluster=cluster)
    scores.save(target, overwrite=args.force)
    heatmap, table = scores.heatmap(), scores.frame.sort_values("pcs", ascending=False)
    atomic_write(out / "heatmap.html", lambda tmp: heatmap.write_html(tmp, include_plotlyjs=True))
    atomic_write(out / "heads.csv", lambda tmp: table.to_csv(tmp, index=False))
    print(f"\n{scores}\n({scores.meta['seconds']:.0f} s)")
    print("\nTop heads (PCS = NLL increase in nats/token when masked):")
    for row in scores.frame.sort_values("pcs", ascending=False).head(args.top).itertuples():
        print(f"  L{int(row.layer):>2}H{int(row.head)}  {row.pcs:+.4f}  (std {row.std:.4f})")
    print(f"\nscores: {target}   heatmap: {out / 'heatmap.html'}   table: {out / 'heads.csv'}")
    return 0


def _whole_number(minimum: int):
    """An argparse type: a whole number >= ``minimum`` (argparse turns the error into a usage message)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is too small: give a whole number >= {minimum}")
        return value

    parse.__name__ = "whole number"
    return parse


_count = _whole_number(1)


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < 1:  # NaN fails this too
        raise argparse.ArgumentTypeError(f"{text} must be strictly between 0 and 1 (the share of users kept for tuning)")
    return value


def _add_cluster_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("scale out on Ray (pip install \"workbench[ray]\")")
    g.add_argument("--workers", default=None, type=_count,
                   help="run on N Ray worker processes, each loading the model once (default: this process only)")
    g.add_argument("--ray-address", default=None,
                   help="join this Ray cluster (e.g. auto, ray://head:10001) instead of starting one here")
    g.add_argument("--gpus-per-worker", default=0, type=float, help="GPUs Ray reserves per worker (default 0)")
    g.add_argument("--threads-per-worker", default=None, type=_count,
                   help="torch threads per worker (default: this machine's cores split evenly)")


def _cluster(args: argparse.Namespace) -> Any:
    """The Ray cluster the command asked for, or None for a run in this process."""
    if args.workers is None and args.ray_address is None:
        if args.gpus_per_worker or args.threads_per_worker:
            raise ValueError("--gpus-per-worker / --threads-per-worker need --workers N (or --ray-address)")
        return None
    from workbench.runner.scaleout import Cluster, require_ray

    require_ray()  # a missing extra fails before the data or the model is read
    return Cluster(workers=args.workers or 1, address=args.ray_address, gpus_per_worker=args.gpus_per_worker,
                   threads_per_worker=args.threads_per_worker)


def _add_setting_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", action="append", metavar="METHOD.FIELD=VALUE",
                   help="a method setting, e.g. --set dps.alpha=0.5 (repeatable; see each method's fields)")
    p.add_argument("--users", default="all", choices=["tune", "eval", "all"],
                   help="run on the tuning users, the evaluation users, or all (default)")
    p.add_argument("--fraction", default=1 / 3, type=_fraction, help="share of users that are tuning users (default 1/3)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="workbench", description="Explain and steer how language models personalize.")
    p.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    # Also accepted after the command (`workbench bench ... --debug`); SUPPRESS keeps a flag
    # given before the command from being reset by the subcommand's default.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the Python traceback of an error")
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("models", parents=[common], help="list the models workbench knows and whether each loads offline here")
    m.set_defaults(func=_cmd_models)
    d = sub.add_parser("demo", parents=[common], help="generic vs personalized output and per-layer head masking, as an HTML report")
    d.add_argument("--model", default="smollm2-135m", help="model name or local checkpoint dir (default: smollm2-135m)")
    d.add_argument("--out", default="workbench-report", type=Path, help="report directory (default: ./workbench-report)")
    d.add_argument("--how", default="zero", choices=["zero", "uniform"], help="how heads are masked (default: zero)")
    d.add_argument("--max-new-tokens", default=32, type=_count)
    d.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: GPU if present)")
    d.add_argument("--dtype", default=None, help="float32, bf16, fp16 (default: fp32 on CPU, bf16 on GPU)")
    d.add_argument("--force", action="store_true", help="replace an existing report instead of keeping it under previous/")
    d.set_defaults(func=_cmd_demo)
    b = sub.add_parser("bench", parents=[common], help="run personalization methods on LaMP-format data and compare them")
    b.add_argument("--task", default=None, help="expected task, e.g. lamp4 (checked against the data)")
    b.add_argument("--data", default=None, type=Path, help="LaMP-format directory (default: $WORKBENCH_LAMP4_DIR "
                   "or ../shared/data/lamp4-news)")
    b.add_argument("--split", default="dev")
    b.add_argument("--model", default="smollm2-135m")
    b.add_argument("--n", default=None, type=_count, help="first N examples (default: all)")
    b.add_argument("--methods", default="generic,rag", help="comma-separated method names")
    b.add_argument("--k", default=5, type=_count, help="profile items in the prompt (default 5)")
    b.add_argument("--retrieval", default="bm25", choices=["bm25", "recency"])
    b.add_argument("--max-new-tokens", default=32, type=_count)
    b.add_argument("--out", default="bench-results", type=Path)
    b.add_argument("--device", default=None)
    b.add_argument("--dtype", default=None)
    _add_setting_args(b)
    b.add_argument("--tuned", action="append", type=Path,
                   help="tuned.json from `workbench tune`: use its chosen settings (repeatable, one file per tune run)")
    _add_cluster_args(b)
    b.set_defaults(func=_cmd_bench)
    t = sub.add_parser("tune", parents=[common], help="choose methods' settings on the tuning users (never the evaluation users)")
    t.add_argument("--task", default=None, help="expected task, e.g. lamp4 (checked against the data)")
    t.add_argument("--data", default=None, type=Path, help="LaMP-format directory (default: ../shared/data/lamp4-news)")
    t.add_argument("--split", default="dev")
    t.add_argument("--model", default="smollm2-135m")
    t.add_argument("--methods", required=True, help="comma-separated method names")
    t.add_argument("--grid", action="append", metavar="METHOD.FIELD=V1,V2,...",
                   help="values to try for one setting (repeatable); every combination is run "
                        "(default: the method's declared grid, workbench.runner.tuning.DEFAULT_GRIDS)")
    t.add_argument("--set", action="append", metavar="METHOD.FIELD=VALUE", help="a setting fixed at every grid point")
    t.add_argument("--metric", default="rouge1", choices=["rouge1", "rougeL", "meteor"])
    t.add_argument("--fraction", default=1 / 3, type=_fraction, help="share of users kept for tuning (default 1/3)")
    t.add_argument("--n", default=None, type=_count, help="first N tuning examples only (default: all)")
    t.add_argument("--k", default=5, type=_count)
    t.add_argument("--retrieval", default="bm25", choices=["bm25", "recency"])
    t.add_argument("--max-new-tokens", default=32, type=_count)
    t.add_argument("--out", default="tune-results", type=Path, help="grid runs, figures and tuned.json (resumable)")
    t.add_argument("--device", default=None)
    t.add_argument("--dtype", default=None)
    t.set_defaults(func=_cmd_tune)
    h = sub.add_parser("heads", parents=[common], help="Preference Contribution Score of every attention head, with its heatmap")
    h.add_argument("--task", default=None, help="expected task, e.g. lamp4 (checked against the data)")
    h.add_argument("--data", default=None, type=Path, help="LaMP-format directory (default: ../shared/data/lamp4-news)")
    h.add_argument("--split", default="dev")
    h.add_argument("--model", default="smollm2-135m")
    h.add_argument("--n", default=50, type=_count, help="examples to average over (default 50)")
    h.add_argument("--source", default="profile", choices=["profile", "gold"],
                   help="profile: leave-one-out over users' earlier items (default; never reads evaluation golds); "
                        "gold: the split's queries and gold outputs")
    h.add_argument("--how", default="uniform", choices=["uniform", "zero"], help="masking (default: uniform, as DPS)")
    h.add_argument("--scope", default="output", choices=["output", "all"], help="positions masked (default: output)")
    h.add_argument("--mode", default="exact", choices=["exact", "fast", "verified", "naive"],
                   help="exact: every head masked; fast: attribution estimate; verified: fast, then the "
                        "--verify heads it rates largest recomputed exactly")
    h.add_argument("--verify", type=float, default=0.25,
                   help="with --mode verified: share of heads (0-1) or count (>=1) recomputed exactly (default 0.25)")
    h.add_argument("--contrast", default="none", choices=["none", "history", "generic"],
                   help="none: plain PCS; history: how much a head carries the gain from the user's history; "
                        "generic: the user's output vs the model's generic one (twice the cost)")
    h.add_argument("--k", default=5, type=_count, help="profile items in each prompt (default 5)")
    h.add_argument("--top", default=11, type=_count, help="how many top heads to print")
    h.add_argument("--out", default="heads-results", type=Path)
    h.add_argument("--force", action="store_true", help="replace existing scores in --out")
    _add_cluster_args(h)
    h.add_argument("--device", default=None)
    h.add_argument("--dtype", default=None)
    h.set_defaults(func=_cmd_heads)
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
