"""Tuning users and evaluation users: settings are chosen on the first, reported on the second.

Each user falls on one side by a stable hash of their id (the same on every machine and run,
whatever else is in the dataset), so a user never moves between the sides when data is added
or a run is cut short. About ``fraction`` of the users (default one third) are tuning users.
No method setting may be chosen by looking at evaluation users: ``workbench tune`` runs on
tuning users only, and ``workbench bench --users eval`` reports on the others.
"""

from __future__ import annotations

from typing import Any

from workbench._util import stable_hash

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
