"""The command line's options, each declared once: :data:`OPTIONS`, and :func:`add_options`,
which gives a command the ones it takes (see :func:`workbench.app.cli.build_parser`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

from workbench.data.retrieval import RETRIEVALS


def _whole_number(minimum: int) -> Callable[[str], int]:
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


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < float("inf"):  # NaN fails this too
        raise argparse.ArgumentTypeError(f"{text} must be a number of seconds > 0")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < 1:  # NaN fails this too
        raise argparse.ArgumentTypeError(f"{text} must be strictly between 0 and 1 (the share of users kept for tuning)")
    return value


# Every option, declared once. A command lists the ones it takes (in the order its help shows
# them) and overrides, by dest, what differs for it: a default, a help, required.
OPTIONS: dict[str, dict[str, Any]] = {
    "task": dict(default=None, help="the task: lamp4, lamp5 or lamp2n picks its shipped dataset (lamp4-news, "
                 "lamp5-acl, lamp2n-news), prompts and metrics; with --data, checked against the data"),
    "data": dict(default=None, type=Path, help="LaMP-format directory (default: the --task's shipped dataset; "
                 "no --task: $WORKBENCH_LAMP4_DIR, else the lamp4-news copy shipped with workbench)"),
    "labels": dict(default="score", choices=["score", "generate"],
                   help="classification tasks (lamp2n): score = each label's mean log-likelihood per token under "
                        "the method, the best one predicted (default); generate = free decoding parsed into a label"),
    "split": dict(default="dev"),
    "model": dict(default="smollm2-135m", help="model name or local checkpoint dir (default: smollm2-135m)"),
    "n": dict(default=None, type=_count, help="first N examples (default: all)"),
    "methods": dict(default="generic,rag", help="comma-separated method names"),
    "grid": dict(action="append", metavar="METHOD.FIELD=V1,V2,...",
                 help="values to try for one setting (repeatable); every combination is run "
                      "(default: the method's declared grid, workbench.runner.tuning.DEFAULT_GRIDS)"),
    "set": dict(action="append", metavar="METHOD.FIELD=VALUE",
                help="a method setting, e.g. --set dps.alpha=0.5 (repeatable; see each method's fields)"),
    "metric": dict(default=None, choices=["rouge1", "rougeL", "meteor", "accuracy"],
                   help="what tuning maximizes (default: rouge1; accuracy on a classification task such as lamp2n)"),
    "source": dict(default="profile", choices=["profile", "gold"],
                   help="profile: leave-one-out over users' earlier items (default; never reads evaluation golds); "
                        "gold: the split's queries and gold outputs"),
    "how": dict(default="uniform", choices=["uniform", "zero"], help="masking (default: uniform, as DPS)"),
    "scope": dict(default="output", choices=["output", "all"], help="positions masked (default: output)"),
    "mode": dict(default="exact", choices=["exact", "fast", "verified", "naive"],
                 help="exact: every head masked; fast: attribution estimate; verified: fast, then the "
                      "--verify heads it rates largest recomputed exactly"),
    "verify": dict(type=float, default=0.25,
                   help="with --mode verified: share of heads (0-1) or count (>=1) recomputed exactly (default 0.25)"),
    "contrast": dict(default="none", choices=["none", "history", "generic"],
                     help="none: plain PCS; history: how much a head carries the gain from the user's history; "
                          "generic: the user's output vs the model's generic one (twice the cost)"),
    "k": dict(default=5, type=_count, help="profile items in the prompt (default 5)"),
    "retrieval": dict(default="bm25", choices=RETRIEVALS),
    "max-new-tokens": dict(default=32, type=_count),
    "batch-size": dict(default=None, type=_count,
                       help="examples decoded together, rows of different users each with their own steering "
                            "(default: workbench.runner.bench.DEFAULT_BATCH_SIZE, chosen by benchmarks/bench_batch.py; "
                            "1 = one at a time; the outputs are the same up to float rounding)"),
    "top": dict(default=11, type=_count, help="how many top heads to print"),
    "out": dict(type=Path),
    "device": dict(default=None, help="cpu, cuda, cuda:1 ... (default: GPU if present)"),
    "dtype": dict(default=None, help="float32, bf16, fp16 (default: fp32 on CPU, bf16 on GPU)"),
    "users": dict(default="all", choices=["tune", "eval", "all"],
                  help="run on the tuning users, the evaluation users, or all (default)"),
    "fraction": dict(default=1 / 3, type=_fraction, help="share of users that are tuning users (default 1/3)"),
    "tuned": dict(action="append", type=Path,
                  help="tuned.json from `workbench tune`: use its chosen settings (repeatable, one file per tune run)"),
    "force": dict(action="store_true"),
    "with-profile": dict(action="store_true",
                         help="only the queries whose user has at least one profile item (personalized methods need one)"),
    "workers": dict(default=None, type=_count,
                    help="run on N Ray worker processes, each loading the model once (default: this process only)"),
    "ray-address": dict(default=None, help="join this Ray cluster (e.g. auto, ray://head:10001) instead of starting one here"),
    "gpus-per-worker": dict(default=0, type=float, help="GPUs Ray reserves per worker (default 0)"),
    "threads-per-worker": dict(default=None, type=_count,
                               help="torch threads per worker (default: this machine's cores split evenly)"),
    "ray-timeout": dict(default=10.0, type=_seconds,
                        help="seconds to wait for the cluster at --ray-address to answer (default 10)"),
}
# The Ray options: a group of their own in a command's help (its title, the options in it).
RAY = ("scale out on Ray (pip install \"workbench[ray]\")", "workers ray-address ray-timeout gpus-per-worker threads-per-worker")


def add_options(p: Any, names: str, **changes: dict[str, Any]) -> None:
    """Add the options ``names`` (space-separated keys of :data:`OPTIONS`) to ``p``; ``changes``
    (by dest, e.g. ``n={"default": 50}``) override parts of an option's declaration."""
    for name in names.split():
        p.add_argument(f"--{name}", **{**OPTIONS[name], **changes.get(name.replace("-", "_"), {})})
