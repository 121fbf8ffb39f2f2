"""Tuning users and evaluation users: settings are chosen on the first, reported on the second.

Each user falls on one side by a stable hash of their id (the same on every machine and run,
whatever else is in the dataset), so a user never moves between the sides when data is added
or a run is cut short. About ``fraction`` of the users (default one third) are tuning users.
No method setting may be chosen by looking at evaluation users: ``workbench tune`` runs on
tuning users only, and ``workbench bench --users eval`` reports on the others.
"""

from __future__ import annotations

from typing import Any

from workbench._util import check_int, stable_hash
from workbench.data.history import dev_split, profile_examples

TUNE_FRACTION = 1 / 3
SPLITS = ("tune", "eval", "all")
_SALT = "workbench.users/1"  # changing it would move users between the sides: never do it silently
_BUCKETS = 10_000


def user_side(user_id: str, fraction: float = TUNE_FRACTION) -> str:
    """``"tune"`` or ``"eval"`` for one user id."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction={fraction} must be between 0 and 1 (the share of users kept for tuning)")
    bucket = int(stable_hash([_SALT, str(user_id)]), 16) % _BUCKETS
    return "tune" if bucket < fraction * _BUCKETS else "eval"


def split_users(dataset: Any, which: str = "all", fraction: float = TUNE_FRACTION) -> Any:
    """The examples of the tuning users (``"tune"``), of the others (``"eval"``), or all.

    ``dataset``: a :class:`~workbench.data.records.Dataset` (a Dataset comes back, same order) or a
    list of examples (a list comes back).
    """
    if which not in SPLITS:
        raise ValueError(f"users={which!r}: use one of {SPLITS}")
    if which == "all":
        return dataset
    keep = lambda ex: user_side(ex.user_id, fraction) == which  # noqa: E731
    if hasattr(dataset, "filter"):
        out = dataset.filter(keep)
    else:
        out = [ex for ex in dataset if keep(ex)]
    if not len(out):
        raise ValueError(f"no {which} users in this dataset ({len(dataset)} examples) at fraction={fraction}")
    return out


def describe_split(dataset: Any, fraction: float = TUNE_FRACTION) -> dict:
    """How a dataset's users fall: counts of users and examples per side."""
    users = {ex.user_id for ex in dataset}
    tune = {u for u in users if user_side(u, fraction) == "tune"}
    return {"fraction": fraction, "salt": _SALT, "tune_users": len(tune), "eval_users": len(users) - len(tune),
            "tune_examples": sum(ex.user_id in tune for ex in dataset),
            "eval_examples": sum(ex.user_id not in tune for ex in dataset)}


SOURCES = ("queries", "gold", "profile", "dev")


def select_examples(dataset: Any, n: int | None = None, *, source: str = "queries", users: str = "all",
                    fraction: float = TUNE_FRACTION, seed: int = 0) -> list:
    """The examples a run works on: the one place the runner and the command line pick them.

    Args:
        dataset: a :class:`~workbench.data.records.Dataset` or a list of examples.
        n: how many (None: all there are).
        source: what becomes an example —

            - ``"queries"``: the dataset's queries in file order (``bench``, ``tune``);
            - ``"gold"``: the queries that have a profile, in file order (``heads --source gold``);
            - ``"profile"``: leave-one-out examples built from users' profiles, round-robin over
              users; no evaluation gold is read (``heads --source profile``;
              :func:`workbench.data.history.profile_examples`);
            - ``"dev"``: one leave-one-out example per user, their most recent item held out,
              ``n`` users chosen by ``seed`` (:func:`workbench.data.history.dev_split`).
        users: ``"tune"``, ``"eval"`` or ``"all"``: cut to one side of the user split first
            (:func:`split_users`, at ``fraction``).
        seed: the order of profile items (``"profile"``) or the users chosen (``"dev"``).

    Except for ``"dev"``, the first ``n`` are a prefix of the first ``n + 1``: a run can grow in
    steps of ``n`` and resume.
    """
    if source not in SOURCES:
        raise ValueError(f"source={source!r}: use one of {SOURCES}")
    if n is not None:
        check_int("n", n, minimum=1)
    dataset = split_users(dataset, users, fraction)
    if source == "profile":
        # every profile item at most once: the most profile_examples can make
        most = max(1, sum(len(ex.profile) for ex in dataset))
        return profile_examples(dataset, n=n if n is not None else most, seed=seed)
    if source == "dev":
        return dev_split(dataset, n_users=n if n is not None else len({ex.user_id for ex in dataset}), seed=seed)
    examples = [ex for ex in dataset if ex.profile or source == "queries"]
    if source == "gold" and not examples:
        where = f"{dataset.path} ({dataset.split})" if getattr(dataset, "path", "") else "this dataset"
        raise ValueError(f"no query in {where} has a profile; --source gold (source='gold') needs some")
    return examples[:n]
