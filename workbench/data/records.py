"""The records every task shares: :class:`Example` (one query of one user) and :class:`Dataset`.

They sit below the task registry, retrieval and the loaders, which all speak of examples.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import pandas as pd

from workbench._util import stable_hash


def _short(text: str, n: int = 60) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


@dataclass(frozen=True)
class Example:
    """One query of one user: ``input`` + ``profile`` -> ``gold``.

    Attributes:
        id: the query id (unique within a split).
        user_id: whose query it is (official LaMP has one user per query, so it's the id there).
        task: ``"lamp1"`` .. ``"lamp7"`` or ``"longlamp"``.
        input: the task input, including LaMP's instruction prefix.
        profile: the user's earlier items, as dicts (task fields plus any extra fields of the file).
        gold: the reference output, or None for splits without outputs.
    """

    id: str
    user_id: str
    task: str
    input: str
    profile: tuple[dict, ...]
    gold: str | None

    def __repr__(self) -> str:
        gold = "None" if self.gold is None else repr(_short(self.gold, 50))
        return (f"Example(id={self.id!r}, user={self.user_id!r}, task={self.task!r}, "
                f"input={_short(self.input)!r}, profile=[{len(self.profile)} items], gold={gold})")

    def profile_frame(self) -> pd.DataFrame:
        """The user's profile items as a DataFrame (one row per item, one column per field)."""
        return pd.DataFrame(list(self.profile))

    def require_profile(self) -> None:
        """Raise a clear ValueError if this example has no profile (personalized methods need one)."""
        if not self.profile:
            raise ValueError(
                f"example {self.id} of user {self.user_id} has an empty profile; personalized methods "
                "need at least one profile item — filter with dataset.with_profile() "
                "(or [ex for ex in dataset if ex.profile])"
            )


class Dataset:
    """A list of :class:`Example` with a DataFrame view. Build one with :func:`load_lamp` & co.

    Behaves like a list (``len(ds)``, ``for ex in ds``, ``ds[0]``, ``ds[:10]``) and adds
    ``users()``, ``by_user(uid)``, ``with_profile()`` and ``to_frame()``.
    """

    def __init__(self, examples: Iterable[Example], task: str, split: str = "", path: str | Path = "",
                 files: dict[str, str] | None = None, whole: Dataset | None = None):
        self.examples = list(examples)
        # The dataset as loaded, before any cut (filter, slice, user split): what a method may
        # draw other users' data from (Fints' negatives), so that cutting a run to some users
        # changes whose queries are answered, not what the method sees.
        self.whole: Dataset = whole if whole is not None else self
        self.task = task
        self.split = split
        self.path = str(path)
        # {file name: SHA-256} of the files the loader read: what a benchmark run records, so
        # that a run is never resumed on data that changed under the same path.
        self.files = dict(files or {})

    def _subset(self, examples: Iterable[Example]) -> Dataset:
        return Dataset(examples, self.task, self.split, self.path, self.files, whole=self.whole)

    def fingerprint(self) -> dict[str, str]:
        """``{file name: SHA-256}`` of the data files this dataset was read from; for a dataset
        built in code (no files), one hash of all its examples under ``"(examples)"``."""
        if self.files:
            return dict(self.files)
        rows = [[ex.id, ex.user_id, ex.task, ex.input, list(ex.profile), ex.gold] for ex in self.examples]
        return {"(examples)": stable_hash(rows, length=None)}

    def __len__(self) -> int:
        return len(self.examples)

    def __iter__(self) -> Iterator[Example]:
        return iter(self.examples)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return self._subset(self.examples[i])
        return self.examples[i]

    def users(self) -> list[str]:
        """User ids in order of first appearance."""
        return list(dict.fromkeys(ex.user_id for ex in self.examples))

    def by_user(self, user_id: str) -> Dataset:
        """The examples of one user, in file order (KeyError if there are none)."""
        found = [ex for ex in self.examples if ex.user_id == str(user_id)]
        if not found:
            raise KeyError(f"no user {user_id!r} in this dataset ({len(self.users())} users, e.g. {self.users()[:3]})")
        return self._subset(found)

    def with_profile(self) -> Dataset:
        """Only the examples whose profile has at least one item."""
        return self._subset(ex for ex in self.examples if ex.profile)

    def filter(self, keep: Callable[[Example], bool]) -> Dataset:
        """The examples for which ``keep(example)`` is true."""
        return self._subset(ex for ex in self.examples if keep(ex))

    def to_frame(self) -> pd.DataFrame:
        """One row per example: id, user_id, task, input, gold, n_profile."""
        return pd.DataFrame(
            [{"id": ex.id, "user_id": ex.user_id, "task": ex.task, "input": ex.input, "gold": ex.gold,
              "n_profile": len(ex.profile)} for ex in self.examples],
            columns=["id", "user_id", "task", "input", "gold", "n_profile"],
        )

    def __repr__(self) -> str:
        return (f"Dataset(task={self.task!r}, split={self.split!r}, {len(self)} examples, "
                f"{len(self.users())} users, path={self.path!r})")

    def _repr_html_(self) -> str:
        head = (f"<p><b>{html.escape(self.task)}</b> · split {html.escape(self.split or '-')} · "
                f"{len(self)} examples · {len(self.users())} users · {html.escape(self.path)}</p>")
        return head + self.to_frame().head(10).to_html(index=False, escape=True)
