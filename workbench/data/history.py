"""A user's history, and queries made from it without reading any evaluation answer.

Every method that learns something per user (preference heads, SteerX descriptions and
vectors, Fints vectors, tuning) needs examples whose answer it may look at. LaMP profiles
grow over time — a later query's profile holds earlier queries' gold outputs — so those
examples come from the profile items, never from the queries' golds:

- :func:`usable_item`: the one rule for a history item that can be used (its task's input
  and output fields both hold text), applied by everything below and by the prompts, the
  steering vectors and Fints' pairs;
- :func:`user_history`: the profile items *all* of one user's queries share (never a gold);
- :func:`held_out_example`: one history item as a query (its input, the user's own output as
  the gold), the other items as the profile;
- :func:`profile_examples`: such leave-one-out queries round-robin over many users;
- :func:`dev_split`: one per user, the most recent shared item held out.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np

from workbench._util import check_int

# The history fields a user's history is made of when the task does not say otherwise
# (LaMP-4: the article and the user's headline); :func:`item_fields` asks the task.
INPUT_FIELD = "text"
OUTPUT_FIELD = "title"


def item_fields(task: str) -> tuple[str, str]:
    """``(input field, output field)`` of ``task``'s history items (LaMP-5: abstract, title);
    tasks without both fall back to LaMP-4's ``text`` and ``title``."""
    from workbench.data.tasks import TASKS

    spec = TASKS.get(task)
    if spec is None or not spec.input_field or not spec.output_field:
        return INPUT_FIELD, OUTPUT_FIELD
    return spec.input_field, spec.output_field


def _task_labels(task: str) -> tuple[str, ...]:
    from workbench.data.tasks import TASKS

    spec = TASKS.get(task)
    return spec.labels if spec is not None else ()


def _filled(value: Any) -> bool:
    return value is not None and str(value).strip() != ""


def usable_item(item: dict, task: str = "lamp4") -> bool:
    """The one rule for a usable history item: its input and output fields (of ``task``) both hold
    more than whitespace. Every builder of history examples, vectors and pairs filters with it."""
    source, target = item_fields(task)
    return isinstance(item, dict) and _filled(item.get(source)) and _filled(item.get(target))


def user_history(examples: Sequence[Any]) -> list[dict]:
    """The profile items every one of ``examples`` (one user's queries) has, oldest first.

    LaMP-4 profiles grow with time: a later query's profile holds earlier queries' gold
    headlines, so the union would leak; the intersection never does.
    """
    if not examples:
        raise ValueError("no examples: pass the user's queries (e.g. dataset.by_user(user_id))")
    task = task_of(examples)
    source, target = item_fields(task)
    key = lambda it: (str(it.get("id", "")), it.get(target, ""))  # noqa: E731
    common = set(map(key, examples[0].profile))
    for ex in examples[1:]:
        common &= set(map(key, ex.profile))
    items = [it for it in examples[0].profile if key(it) in common and usable_item(it, task)]
    if not items:
        raise ValueError(f"user {examples[0].user_id}'s queries share no profile item with "
                         f"'{source}' and '{target}'")
    if all(it.get("date") for it in items):
        items = sorted(items, key=lambda it: str(it["date"]))
    return items


def history_key(history: Sequence[dict], task: str = "lamp4") -> list:
    """What identifies a history of ``task`` for a cache key: item ids and the user's outputs."""
    target = item_fields(task)[1]
    return [(str(it.get("id", "")), it.get(target, "")) for it in history]


def held_out_example(held: dict, rest: Sequence[dict], user_id: str = "", task: str = "lamp4",
                     id: str | None = None) -> Any:
    """``held`` as a query of ``user_id``: its input, the user's own output as the gold, ``rest``
    as the profile (the fields are the ``task``'s, e.g. LaMP-5's abstract and title)."""
    from workbench.data.records import Example

    source, target = item_fields(task)
    return Example(id=id if id is not None else f"{user_id}/history-{held.get('id')}", user_id=user_id,
                   task=task, input=held[source], profile=tuple(rest), gold=held[target])


def task_of(examples: Sequence[Any]) -> str:
    """The one task of ``examples`` (``"lamp4"`` for objects without a ``task``).

    Raises:
        ValueError: the examples mix tasks.
    """
    tasks = {getattr(ex, "task", "lamp4") for ex in examples}
    if len(tasks) > 1:
        raise ValueError(f"examples mix tasks {sorted(tasks)}; build history examples one task at a time")
    return tasks.pop() if tasks else "lamp4"


def profile_examples(dataset: Iterable[Any], n: int = 50, k: int = 5, by: str = "bm25", seed: int = 0,
                     model: Any = None) -> list[Any]:
    """Leave-one-out examples built from users' profiles (no evaluation gold is used).

    Each profile item becomes an :class:`~workbench.data.records.Example`: its text is the input, its
    title (the user's own headline) the gold, and the user's other items the profile. ``n``
    examples are taken round-robin over users (at most one item per user per round, items
    in a seeded random order) so that many users are represented.

    Profiles are chronological, so a later query's profile can hold an earlier query's
    article and gold headline: items whose title is the gold of any example in ``dataset``
    are never used, as target or as profile, so heads found here can be evaluated on
    ``dataset`` without having seen its answers. On a classification task (LaMP-2N), where a
    label is every other item's output too, the items left out are the queries themselves
    (an item whose input is a query's input). (``k``, ``by`` and ``model`` are accepted
    for call compatibility; the prompt is built later, by whoever scores the examples.)
    """
    check_int("n", n, minimum=1)
    check_int("seed", seed)
    dataset = list(dataset)
    task = task_of(dataset)
    source, target = item_fields(task)
    golds = {ex.gold for ex in dataset if ex.gold}
    labels = _task_labels(task)
    if labels:
        # A label is shared by many items, so it says nothing about a leak: an item is held out
        # when it is one of the queries itself (its input is a query's input).
        from workbench.data.tasks import task_text

        queries = {task_text(ex).strip() for ex in dataset}
        leaks = lambda it: str(it[source]).strip() in queries  # noqa: E731
    else:
        leaks = lambda it: it[target] in golds  # noqa: E731
    rng = np.random.default_rng(seed)
    per_user: dict[str, list[Any]] = {}
    seen_items: dict[str, set] = {}
    for ex in dataset:
        items = per_user.setdefault(ex.user_id, [])
        seen = seen_items.setdefault(ex.user_id, set())
        for it in ex.profile:
            key = str(it.get("id", len(seen)))
            if key not in seen and usable_item(it, task) and not leaks(it):
                seen.add(key)
                items.append(it)
    queues = {}
    for uid, items in per_user.items():
        if len(items) < 2:
            continue  # leave-one-out needs at least one other item as the profile
        order = rng.permutation(len(items))
        queues[uid] = [(items[j], [items[i] for i in range(len(items)) if i != j]) for j in order]
    if not queues:
        raise ValueError(f"no user has two or more profile items with '{source}' and '{target}'; "
                         "profile_examples needs profiles of (input, output) items (pass examples with gold outputs "
                         "instead)")
    out: list[Any] = []
    while len(out) < n and any(queues.values()):
        for uid in list(queues):
            if queues[uid] and len(out) < n:
                item, rest = queues[uid].pop(0)
                out.append(held_out_example(item, rest, uid, task, id=f"{uid}/profile-{item.get('id')}"))
    return out


def dev_split(dataset: Iterable[Any], n_users: int = 8, seed: int = 0) -> list:
    """Leak-free dev examples: for each of ``n_users`` users (seeded choice), their most recent
    shared history item becomes a query with the older items as the profile."""
    by_user: dict[str, list] = {}
    for ex in dataset:
        by_user.setdefault(ex.user_id, []).append(ex)
    users = sorted(u for u, exs in by_user.items() if len(user_history(exs)) >= 3)
    rng = np.random.default_rng(seed)
    pick = sorted(rng.choice(len(users), size=min(n_users, len(users)), replace=False))
    out = []
    for i in pick:
        uid = users[i]
        hist = user_history(by_user[uid])
        held = hist[-1]
        out.append(held_out_example(held, hist[:-1], uid, task_of(by_user[uid]), id=f"{uid}/dev-{held.get('id')}"))
    return out
