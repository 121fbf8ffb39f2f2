"""Personalization data: LaMP and LongLaMP loaders, and ranking a user's profile.

An :class:`Example` is one query of one user: the task input, the user's profile (their
earlier items, task-specific dicts) and the gold output. A :class:`Dataset` is a list of
examples that also shows itself as a pandas DataFrame.

Files are validated completely before anything is returned: a malformed file raises
:class:`DataError` naming the file, the record and the field, never a half-loaded dataset.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

LAMP_URL = "https://lamp-benchmark.github.io/download"
DATA_ENV = "WORKBENCH_LAMP4_DIR"

# Required profile fields per task; alternatives in a tuple (any one of them).
PROFILE_FIELDS: dict[str, tuple] = {
    "lamp1": ("id", "title", "abstract"),
    "lamp2": ("id", ("text", "description"), "tag"),
    "lamp3": ("id", "text", "score"),
    "lamp4": ("id", "text", "title"),
    "lamp5": ("id", "title", "abstract"),
    "lamp6": ("id",),
    "lamp7": ("id", "text"),
}


class DataError(ValueError):
    """A data file is missing or malformed; the message names the file, record and field."""


def _short(text: str, n: int = 60) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


@dataclass(frozen=True)
class Example:
    """One query of one user: ``input`` + ``profile`` -> ``gold``."""

    id: str
    user_id: str
    task: str
    input: str
    profile: tuple
    gold: str | None

    def __repr__(self) -> str:
        gold = "None" if self.gold is None else repr(_short(self.gold, 50))
        return (f"Example(id={self.id!r}, user={self.user_id!r}, task={self.task!r}, "
                f"input={_short(self.input)!r}, profile=[{len(self.profile)} items], gold={gold})")

    def profile_frame(self) -> pd.DataFrame:
        """The user's profile items as a DataFrame (one row per item)."""
        return pd.DataFrame(list(self.profile))

    def require_profile(self) -> None:
        """Raise a clear error if this example has no profile (personalized methods need one)."""
        if not self.profile:
            raise ValueError(
                f"example {self.id} of user {self.user_id} has an empty profile; personalized methods "
                "need at least one profile item — drop such examples first, e.g. "
                "[ex for ex in dataset if ex.profile]"
            )


class Dataset:
    """A list of :class:`Example` with a DataFrame view. Build with :func:`load_lamp` & co."""

    def __init__(self, examples: list[Example], task: str, split: str = "", path: str | Path = ""):
        self.examples = list(examples)
        self.task = task
        self.split = split
        self.path = str(path)

    def __len__(self) -> int:
        return len(self.examples)

    def __iter__(self) -> Iterator[Example]:
        return iter(self.examples)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return Dataset(self.examples[i], self.task, self.split, self.path)
        return self.examples[i]

    def users(self) -> list[str]:
        """User ids in order of first appearance."""
        return list(dict.fromkeys(ex.user_id for ex in self.examples))

    def by_user(self, user_id: str) -> list[Example]:
        found = [ex for ex in self.examples if ex.user_id == user_id]
        if not found:
            raise KeyError(f"no user {user_id!r} in this dataset ({len(self.users())} users, e.g. {self.users()[:3]})")
        return found

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            [{"id": ex.id, "user_id": ex.user_id, "task": ex.task, "input": ex.input, "gold": ex.gold,
              "n_profile": len(ex.profile)} for ex in self.examples],
            columns=["id", "user_id", "task", "input", "gold", "n_profile"],
        )

    def __repr__(self) -> str:
        return (f"Dataset(task={self.task!r}, split={self.split!r}, {len(self)} examples, "
                f"{len(self.users())} users, path={self.path!r})")

    def _repr_html_(self) -> str:
        head = f"<p><b>{self.task}</b> · split {self.split or '-'} · {len(self)} examples · {len(self.users())} users · {self.path}</p>"
        return head + self.to_frame().head(10).to_html(index=False)


# ---- LaMP ---------------------------------------------------------------------------------

def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); "
                        "fix or re-download the file") from None


def _norm_task(task: Any) -> str:
    m = re.fullmatch(r"(?i)(long)?\s*lamp[_-]?([1-7])", str(task).strip())
    if not m:
        raise DataError(f"unknown task {task!r}; expected LaMP_1 .. LaMP_7 (or lamp1 .. lamp7)")
    return f"{'longlamp' if m.group(1) else 'lamp'}{m.group(2)}"


def _check_profile(items: Any, task: str, where: str) -> tuple:
    if not isinstance(items, list):
        raise DataError(f"{where}: field 'profile' must be a list of items, got {type(items).__name__}")
    required = PROFILE_FIELDS.get(task, ("id",))
    for j, item in enumerate(items):
        if not isinstance(item, dict):
            raise DataError(f"{where}, profile item {j}: must be an object, got {type(item).__name__}")
        for req in required:
            names = req if isinstance(req, tuple) else (req,)
            if not any(n in item for n in names):
                raise DataError(f"{where}, profile item {j} (id {item.get('id')!r}): missing field "
                                f"{' or '.join(repr(n) for n in names)} required for {task}")
        for key in ("text", "title", "abstract"):
            if key in item and not isinstance(item[key], str):
                raise DataError(f"{where}, profile item {j}: field {key!r} must be a string, "
                                f"got {type(item[key]).__name__}")
    return tuple(items)


def default_data_dir() -> Path:
    """``$WORKBENCH_LAMP4_DIR``, else ``../shared/data/lamp4-news`` beside the repository."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    return (Path(__file__).resolve().parent.parent / ".." / "shared" / "data" / "lamp4-news").resolve()


def load_lamp(path: str | Path, split: str = "dev", task: str | None = None) -> Dataset:
    """Load a LaMP-format directory: ``{split}_questions.json`` (+ ``{split}_outputs.json``).

    Questions are ``{"id", "input", "profile": [...]}`` (``user_id`` optional: official LaMP
    has one user per question, so the question id is used). Outputs are
    ``{"task": "LaMP_4", "golds": [{"id", "output"}]}``; without an outputs file (test
    splits) ``gold`` is None and ``task`` must be given.
    """
    path = Path(path).expanduser()
    qfile, ofile = path / f"{split}_questions.json", path / f"{split}_outputs.json"
    if not path.is_dir():
        raise DataError(f"data directory {path} does not exist. Get LaMP from {LAMP_URL} (or point "
                        f"--data / ${DATA_ENV} at a LaMP-format directory)")
    if not qfile.exists():
        present = sorted(p.name for p in path.glob("*_questions.json"))
        raise DataError(f"{qfile} is missing (split {split!r}); found {present or 'no *_questions.json'} in {path}. "
                        f"Pass another --split, or get LaMP from {LAMP_URL}")
    questions = _read_json(qfile)
    golds: dict[str, str] | None = None
    if ofile.exists():
        outputs = _read_json(ofile)
        if not isinstance(outputs, dict) or "golds" not in outputs:
            raise DataError(f"{ofile}: expected an object with 'task' and 'golds' fields")
        file_task = outputs.get("task")
        if file_task is None and task is None:
            raise DataError(f"{ofile}: missing field 'task' (e.g. \"LaMP_4\")")
        try:
            task = _norm_task(task or file_task)
        except DataError as e:
            raise DataError(f"{ofile}, field 'task': {e}") from None
        golds = {}
        for i, g in enumerate(outputs["golds"]):
            if not isinstance(g, dict) or "id" not in g or "output" not in g:
                raise DataError(f"{ofile}, gold record {i}: needs fields 'id' and 'output'")
            if not isinstance(g["output"], str):
                raise DataError(f"{ofile}, gold record {i} (id {g['id']!r}): field 'output' must be a string")
            golds[str(g["id"])] = g["output"]
    elif task is None:
        raise DataError(f"{ofile} is missing, so the task is unknown; pass task='lamp4' (etc.)")
    else:
        task = _norm_task(task)
    if not isinstance(questions, list):
        raise DataError(f"{qfile}: expected a list of question records, got {type(questions).__name__}")
    examples, seen = [], set()
    for i, q in enumerate(questions):
        if not isinstance(q, dict):
            raise DataError(f"{qfile}, record {i}: must be an object, got {type(q).__name__}")
        where = f"{qfile}, record {i} (id {q.get('id')!r})"
        for field in ("id", "input", "profile"):
            if field not in q:
                raise DataError(f"{where}: missing field {field!r}")
        if not isinstance(q["input"], str):
            raise DataError(f"{where}: field 'input' must be a string, got {type(q['input']).__name__}")
        qid = str(q["id"])
        if qid in seen:
            raise DataError(f"{where}: duplicate id {qid!r}; ids must be unique within a split")
        seen.add(qid)
        if golds is not None and qid not in golds:
            raise DataError(f"{where}: no gold output with this id in {ofile.name} (field 'golds')")
        profile = _check_profile(q["profile"], task, where)
        examples.append(Example(qid, str(q.get("user_id", qid)), task, q["input"], profile,
                                None if golds is None else golds[qid]))
    return Dataset(examples, task, split, path)


def load_lamp4_news(split: str = "dev") -> Dataset:
    """The real LaMP-4-format HuffPost data (69 authors, 207 queries) from :func:`default_data_dir`."""
    return load_lamp(default_data_dir(), split=split)


# ---- LongLaMP -----------------------------------------------------------------------------

def load_longlamp(path: str | Path, task: str = "longlamp") -> Dataset:
    """Load LongLaMP records (``input``, ``output``, ``profile``; optional ``id``, ``user_id``)
    from a JSON list, a JSONL file, or a parquet file (parquet needs pyarrow)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path} does not exist. LongLaMP is at https://longlamp-benchmark.github.io")
    if path.suffix == ".parquet":
        try:
            records = pd.read_parquet(path).to_dict("records")
        except ImportError as e:
            raise DataError(f"{path}: reading parquet needs pyarrow (pip install pyarrow)") from e
    elif path.suffix == ".jsonl":
        records = []
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise DataError(f"{path}, line {lineno}: not valid JSON ({e.msg})") from None
    else:
        records = _read_json(path)
        if not isinstance(records, list):
            raise DataError(f"{path}: expected a list of records")
    examples, seen = [], set()
    for i, r in enumerate(records):
        where = f"{path}, record {i} (id {r.get('id') if isinstance(r, dict) else None!r})"
        if not isinstance(r, dict):
            raise DataError(f"{path}, record {i}: must be an object")
        for field in ("input", "output", "profile"):
            if field not in r:
                raise DataError(f"{where}: missing field {field!r}")
        profile = r["profile"]
        if hasattr(profile, "tolist"):  # parquet gives numpy arrays
            profile = profile.tolist()
        profile = _check_profile(list(profile) if not isinstance(profile, list) else profile, "longlamp", where)
        rid = str(r.get("id", i))
        if rid in seen:
            raise DataError(f"{where}: duplicate id {rid!r}")
        seen.add(rid)
        examples.append(Example(rid, str(r.get("user_id", rid)), task, str(r["input"]), profile, str(r["output"])))
    return Dataset(examples, task, "", path)


# ---- ranking a user's profile --------------------------------------------------------------

_DOC_FIELDS = {"lamp4": ("text", "title"), "lamp5": ("title", "abstract"), "lamp1": ("title", "abstract"),
               "lamp7": ("text",), "lamp2": ("text", "description"), "lamp3": ("text",)}
_TOKEN = re.compile(r"[a-z0-9]+")


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def rank_profile(example: Example, k: int = 5, by: str = "bm25", query: str | None = None) -> list[dict]:
    """The user's ``k`` most relevant profile items, best first.

    ``by="bm25"``: Okapi BM25 (the ``rank-bm25`` package) of each item's text fields against
    the query (default: the example's input without its instruction prefix).
    ``by="recency"``: newest first by the items' ``date`` field (list order when absent).
    Ties keep profile order, so the ranking is deterministic.
    """
    items = list(example.profile)
    if k <= 0 or not items:
        return []
    if by == "recency":
        order = list(range(len(items)))
        if all("date" in it for it in items):
            order.sort(key=lambda j: (str(items[j]["date"]), j), reverse=True)
        else:
            order.reverse()
        return [items[j] for j in order[:k]]
    if by != "bm25":
        raise ValueError(f"by={by!r}: use 'bm25' or 'recency'")
    from rank_bm25 import BM25Okapi

    from workbench.prompts import task_text

    fields = _DOC_FIELDS.get(example.task, ("text", "title"))
    docs = [_tokens(" ".join(str(it.get(f, "")) for f in fields)) for it in items]
    docs = [d or ["<empty>"] for d in docs]  # BM25Okapi divides by document length
    scores = BM25Okapi(docs).get_scores(_tokens(query if query is not None else task_text(example)))
    order = sorted(range(len(items)), key=lambda j: (-scores[j], j))
    return [items[j] for j in order[:k]]
