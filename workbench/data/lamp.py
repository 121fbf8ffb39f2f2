"""Personalization data: LaMP and LongLaMP loaders, and the :class:`Example` and :class:`Dataset` they give.

An :class:`Example` is one query of one user: the task input, the user's profile (their
earlier items, task-specific dicts) and the gold output. A :class:`Dataset` is a list of
examples that also shows itself as a pandas DataFrame.

Files are validated completely before anything is returned: a malformed file raises
:class:`DataError` naming the file, the record and the field, and saying how to fix it,
never a half-loaded dataset. Which profile fields a task requires comes from
:mod:`workbench.data.tasks`; ranking a profile lives in :mod:`workbench.data.retrieval`.

Example::

    from workbench.data.lamp import load_lamp4_news
    from workbench.data.retrieval import rank_profile
    ds = load_lamp4_news()            # 207 queries of 69 news authors
    ex = ds[0]
    ex.profile_frame().head()         # the author's earlier articles
    rank_profile(ex, k=3)             # the 3 profile items most similar to the query (BM25)
"""

from __future__ import annotations

import gzip
import json
import os
import re
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from workbench._util import file_sha256
from workbench.data.tasks import GENERIC, STRING_FIELDS, TASKS
from workbench.data.records import Dataset, Example

LAMP_URL = "https://lamp-benchmark.github.io/download"
LONGLAMP_URL = "https://longlamp-benchmark.github.io"
DATA_ENV = "WORKBENCH_LAMP4_DIR"

_ID_TYPES = (str, int)  # JSON ids are strings in LaMP, numbers in some re-exports; both are kept as str


class DataError(ValueError):
    """A data file is missing or malformed; the message names the file, record and field."""


def _err(file: Path | str, problem: str, fix: str, record: str = "", field: str = "") -> DataError:
    # One message shape for every problem: where (file, record, field), what, and how to fix it.
    where = str(file) + (f", {record}" if record else "") + (f", field {field!r}" if field else "")
    return DataError(f"{where}: {problem}. Fix: {fix}")


def _short(text: str, n: int = 60) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


# ---- validation helpers --------------------------------------------------------------------

def _read_json(path: Path) -> Any:
    try:
        with (gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise _err(path, f"not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})",
                   "repair the file there, or download it again") from None
    except UnicodeDecodeError as e:
        raise _err(path, f"not UTF-8 text ({e.reason} at byte {e.start})",
                   "this should be a JSON file; download it again") from None
    except OSError as e:  # a directory of that name, no permission to read, ...
        raise _err(path, f"cannot be read ({type(e).__name__}: {e.strerror or e})",
                   "make it a readable JSON file") from None


def _norm_task(task: Any) -> str:
    # LaMP_2N is the news categorization of LaMP's first release (lamp2n-news).
    m = re.fullmatch(r"(?i)(long)?\s*lamp[_-]?([1-7])(n)?", str(task).strip())
    if not m or (m.group(3) and (m.group(1) or m.group(2) != "2")):
        raise DataError(f"unknown task {task!r}; expected LaMP_1 .. LaMP_7 or LaMP_2N (or lamp1 .. lamp7, lamp2n)")
    return f"{'longlamp' if m.group(1) else 'lamp'}{m.group(2)}{'n' if m.group(3) else ''}"


def _type(x: Any) -> str:
    return type(x).__name__


def _check_id(value: Any, file: Path, record: str, field: str = "id") -> str:
    if isinstance(value, bool) or not isinstance(value, _ID_TYPES):
        raise _err(file, f"must be a string (or integer), got {_type(value)} {_short(repr(value), 30)}",
                   "give every record a plain string id", record, field)
    return str(value)


def _check_profile(items: Any, task: str, file: Path, record: str) -> tuple[dict, ...]:
    if hasattr(items, "tolist") and not isinstance(items, (list, str)):
        items = items.tolist()  # parquet gives numpy arrays
    if not isinstance(items, list):
        raise _err(file, f"must be a list of items, got {_type(items)}",
                   "use [] for a user without history", record, "profile")
    required = TASKS.get(task, GENERIC).required_fields
    for j, item in enumerate(items):
        here = f"{record}, profile item {j}"
        if not isinstance(item, dict):
            raise _err(file, f"must be an object, got {_type(item)}",
                       "each profile item is a JSON object like {\"id\": ..., \"text\": ...}", here)
        here = f"{record}, profile item {j} (id {item.get('id')!r})"
        for req in required:
            names = req if isinstance(req, tuple) else (req,)
            if not any(n in item for n in names):
                raise _err(file, f"missing (required for {task}: {_fields_text(required)})",
                           f"add {' or '.join(repr(n) for n in names)} to every profile item",
                           here, " or ".join(names))
        # "score" is not among them: LaMP-3 stores ratings as strings or numbers (checked below).
        for key in STRING_FIELDS:
            if key in item and not isinstance(item[key], str):
                raise _err(file, f"must be a string, got {_type(item[key])}", "store the text as a JSON string",
                           here, key)
        if "score" in item and (isinstance(item["score"], bool) or not isinstance(item["score"], (str, int, float))):
            raise _err(file, f"must be a number or a string like \"4\", got {_type(item['score'])}",
                       "store the rating as a number", here, "score")
    return tuple(items)


def _fields_text(required: tuple) -> str:
    return ", ".join("/".join(r) if isinstance(r, tuple) else r for r in required)


def _each_record(file: Path, records: list, required: tuple[str, ...], noun: str) -> Iterator[tuple[int, dict, str]]:
    """``(index, record, label)`` for each record, once it is known to be an object with the
    ``required`` fields; the label names the record in error messages."""
    needs = ", ".join(f"'{f}'" for f in required[:-1]) + f" and '{required[-1]}'"
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise _err(file, f"must be an object, got {_type(r)}", f"each {noun} is a JSON object", f"record {i}")
        label = f"record {i} (id {r.get('id')!r})"
        for field in required:
            if field not in r:
                raise _err(file, "missing", f"every {noun} needs {needs}", label, field)
        yield i, r, label


# ---- LaMP ----------------------------------------------------------------------------------

DATASETS = Path(__file__).resolve().parent / "datasets"  # the copies shipped with the package
# The dataset each task reads by default (``workbench bench --task lamp5`` without ``--data``).
TASK_DATASETS = {"lamp4": "lamp4-news", "lamp5": "lamp5-acl", "lamp2n": "lamp2n-news"}


def default_data_dir(task: str | None = None) -> Path:
    """Where a task's data is by default: for LaMP-4 (and no task) ``$WORKBENCH_LAMP4_DIR`` if set,
    else the copy shipped inside the package (``workbench/data/datasets/lamp4-news``, with its
    README); for LaMP-5 and LaMP-2N the shipped ``lamp5-acl`` and ``lamp2n-news``
    (:data:`TASK_DATASETS`).

    Raises:
        DataError: no dataset ships for ``task``; the message says to pass a directory.
    """
    if task in (None, "lamp4"):
        env = os.environ.get(DATA_ENV)
        if env:
            return Path(env).expanduser()
    name = TASK_DATASETS.get(task or "lamp4")
    if name is None:
        raise DataError(f"no dataset ships for task {task!r} (shipped: {', '.join(f'{t}: {d}' for t, d in TASK_DATASETS.items())}). "
                        "Fix: pass --data with a LaMP-format directory of that task")
    return DATASETS / name


def _data_file(path: Path) -> Path:
    """``path``, or its gzip-compressed copy ``path.gz`` when only that exists (the shipped data)."""
    gz = path.with_name(path.name + ".gz")
    return gz if not path.exists() and gz.exists() else path


def load_lamp(path: str | Path, split: str = "dev", task: str | None = None) -> Dataset:
    """Load a LaMP-format directory: ``{split}_questions.json`` (+ ``{split}_outputs.json``).

    Args:
        path: the directory holding the files.
        split: ``"train"``, ``"dev"`` or ``"test"`` (the file name prefix).
        task: ``"LaMP_4"``/``"lamp4"`` etc. Needed only when there is no outputs file; when both
            are there they must agree.

    Returns:
        A :class:`Dataset`. Questions are ``{"id", "input", "profile": [...]}`` (``user_id``
        optional: official LaMP has one user per question, so the question id is used; extra
        fields such as ``date`` are kept in the profile dicts). Outputs are
        ``{"task": "LaMP_4", "golds": [{"id", "output"}]}``; without an outputs file (test
        splits) every ``gold`` is None.

    Raises:
        DataError: a file is missing or malformed (the message names file, record and field).

    Example:
        >>> ds = load_lamp("LaMP_4/", split="dev")      # doctest: +SKIP
    """
    path = Path(path).expanduser()
    if not isinstance(split, str) or not re.fullmatch(r"[\w.-]+", split) or split.strip(".") == "":
        raise DataError(f"split={split!r} is not a split name; use the prefix of the files, e.g. 'dev' for "
                        "dev_questions.json ('train', 'dev', 'test')")
    qfile, ofile = _data_file(path / f"{split}_questions.json"), _data_file(path / f"{split}_outputs.json")
    where_to_get = (f"get LaMP from {LAMP_URL} (or set ${DATA_ENV} / pass --data to a LaMP-format directory)")
    if path.is_file():
        raise DataError(f"{path} is a file; pass the directory that holds {qfile.name} (a LaMP-format directory)")
    if not path.is_dir():
        raise DataError(f"data directory {path} does not exist (looking for {qfile.name}). Fix: {where_to_get}")
    if not qfile.exists():
        present = sorted(p.name for p in [*path.glob("*_questions.json"), *path.glob("*_questions.json.gz")])
        raise DataError(f"{qfile} is missing (split {split!r}); found {present or 'no *_questions.json'} in {path}. "
                        f"Fix: pass another split, or {where_to_get}")

    golds: dict[str, str] | None = None
    if ofile.exists():
        task, golds = _read_outputs(ofile, task)
    elif task is None:
        raise DataError(f"{ofile} is missing, so the task is unknown. Fix: pass task='LaMP_4' (etc.) "
                        "when loading a split without outputs")
    else:
        task = _norm_task(task)

    questions = _read_json(qfile)
    if not isinstance(questions, list):
        raise _err(qfile, f"expected a list of question records, got {_type(questions)}",
                   "the file must be a JSON list [{\"id\": ..., \"input\": ..., \"profile\": [...]}, ...]")
    examples, seen = [], set()
    for _, q, record in _each_record(qfile, questions, ("id", "input", "profile"), "question"):
        qid = _check_id(q["id"], qfile, record)
        if not isinstance(q["input"], str):
            raise _err(qfile, f"must be a string, got {_type(q['input'])}", "store the input text as a JSON string",
                       record, "input")
        user = _check_id(q["user_id"], qfile, record, "user_id") if "user_id" in q else qid
        if qid in seen:
            raise _err(qfile, f"duplicate id {qid!r}", "ids must be unique within a split", record, "id")
        seen.add(qid)
        if golds is not None and qid not in golds:
            raise _err(qfile, f"no gold output with this id in {ofile.name}",
                       f"add {{\"id\": {qid!r}, \"output\": ...}} to 'golds' there, or load the matching files",
                       record, "id")
        profile = _check_profile(q["profile"], task, qfile, record)
        _check_labels(task, q["input"], None if golds is None else golds[qid], profile, qfile, ofile, record)
        examples.append(Example(qid, user, task, q["input"], profile, None if golds is None else golds[qid]))
    read = [qfile] + ([ofile] if golds is not None else [])
    # A compressed file is recorded under its plain name and the hash of its content, so a run
    # on the shipped copy and one on the original files record the same data.
    return Dataset(examples, task, split, path, {f.name.removesuffix(".gz"): file_sha256(f) for f in read})


def _check_labels(task: str, text: str, gold: str | None, profile: tuple, qfile: Path, ofile: Path,
                  record: str) -> None:
    """For a task with a fixed label set (LaMP-2N): the input lists exactly those labels, and the
    gold and every profile item's label is one of them, so a prediction chosen among the
    task's labels can be right."""
    spec = TASKS.get(task, GENERIC)
    if not spec.labels:
        return
    found = re.search(r"categories: \[([^\]]*)\]", text)
    listed = tuple(s.strip() for s in found.group(1).split(",")) if found else None
    if listed != spec.labels:
        raise _err(qfile, f"the input's category list {'is missing' if listed is None else 'differs from the task'}"
                   f" (expected [{', '.join(spec.labels)}])",
                   f"use {task}'s 21 labels (workbench.data.tasks), or load these files as another task", record, "input")
    if gold is not None and gold not in spec.labels:
        raise _err(ofile, f"gold {gold!r} is not one of {task}'s labels", "use a label of the task's label set",
                   record, "output")
    field = spec.output_field
    for j, item in enumerate(profile):
        if field in item and item[field] not in spec.labels:
            raise _err(qfile, f"{item[field]!r} is not one of {task}'s labels", "use a label of the task's label set",
                       f"{record}, profile item {j}", field)


def _read_outputs(ofile: Path, task: str | None) -> tuple[str, dict[str, str]]:
    outputs = _read_json(ofile)
    shape = "the file must be {\"task\": \"LaMP_4\", \"golds\": [{\"id\": ..., \"output\": ...}]}"
    if not isinstance(outputs, dict):
        raise _err(ofile, f"expected an object with 'task' and 'golds', got {_type(outputs)}", shape)
    file_task = outputs.get("task")
    if file_task is None and task is None:
        raise _err(ofile, "missing", f"{shape}, or pass task='LaMP_4'", field="task")
    try:
        norm = _norm_task(task if task is not None else file_task)
        if task is not None and file_task is not None and _norm_task(file_task) != norm:
            raise DataError(f"task={task!r} was asked for but the file is {file_task!r}")
    except DataError as e:
        raise _err(ofile, str(e), "pass the task this file holds (or none)", field="task") from None
    if not isinstance(outputs.get("golds"), list):
        raise _err(ofile, f"must be a list, got {_type(outputs.get('golds'))}", shape, field="golds")
    golds: dict[str, str] = {}
    for i, g in enumerate(outputs["golds"]):
        record = f"gold record {i}"
        if not isinstance(g, dict):
            raise _err(ofile, f"must be an object, got {_type(g)}", shape, record)
        record = f"gold record {i} (id {g.get('id')!r})"
        for field in ("id", "output"):
            if field not in g:
                raise _err(ofile, "missing", "every gold record needs 'id' and 'output'", record, field)
        gid = _check_id(g["id"], ofile, record)
        if not isinstance(g["output"], str):
            raise _err(ofile, f"must be a string, got {_type(g['output'])}", "store the output as a JSON string",
                       record, "output")
        if gid in golds:
            raise _err(ofile, f"duplicate id {gid!r}", "keep one gold output per question id", record, "id")
        golds[gid] = g["output"]
    return norm, golds


def load_task_data(task: str | None = None, data: str | Path | None = None, split: str = "dev",
                   with_profile: bool = False) -> Dataset:
    """The data a command runs on: ``data`` (a LaMP-format directory), else the dataset shipped
    for ``task`` (:func:`default_data_dir`), checked to hold that task; with ``with_profile``
    only the queries whose profile has an item.

    Raises:
        ValueError: an unknown task, data of another task, or no query with a profile.
    """
    from workbench.data.tasks import get_task

    if task is not None:
        get_task(task)  # an unknown task names the known ones
    data_dir = data or default_data_dir(task)
    dataset = load_lamp(data_dir, split=split)
    if task and dataset.task != task:
        raise ValueError(f"--task {task} but {data_dir} holds {dataset.task} data")
    if with_profile:
        dataset = dataset.with_profile()
        if not len(dataset):
            raise ValueError(f"--with-profile: no query in {data_dir} ({split}) has a profile item")
    return dataset


def shipped_datasets() -> list[str]:
    """Names of the real datasets shipped with the package (each folder's README gives provenance
    and license): ``load_dataset(name)`` reads them."""
    return sorted(p.name for p in DATASETS.iterdir() if p.is_dir() and (p / "README.md").exists())


def load_dataset(name_or_path: str | Path = "lamp4-news", split: str = "dev", task: str | None = None) -> Dataset:
    """A LaMP-format dataset: one shipped with the package by name (:func:`shipped_datasets`,
    e.g. ``"lamp4-news"``), or any LaMP-format directory (the official LaMP downloads too).

    Example:
        >>> news = load_dataset("lamp4-news")          # 207 queries of 69 news authors
        >>> mine = load_dataset("~/data/LaMP_5")        # doctest: +SKIP
    """
    if isinstance(name_or_path, str) and (DATASETS / name_or_path).is_dir() and "/" not in name_or_path:
        return load_lamp(DATASETS / name_or_path, split=split, task=task)
    path = Path(name_or_path).expanduser()
    if not path.exists() and isinstance(name_or_path, str) and "/" not in name_or_path:
        raise DataError(f"no dataset named {name_or_path!r} ships with workbench (shipped: {shipped_datasets()}) and no "
                        f"directory of that name exists. Fix: pass one of those names, or a LaMP-format directory")
    return load_lamp(path, split=split, task=task)


def load_lamp4_news(split: str = "dev") -> Dataset:
    """The real LaMP-4-format HuffPost data (69 authors, 207 queries) from :func:`default_data_dir`."""
    return load_lamp(default_data_dir(), split=split)


# ---- LongLaMP ------------------------------------------------------------------------------

def load_longlamp(path: str | Path, task: str = "longlamp") -> Dataset:
    """Load LongLaMP records from a JSON list, a JSONL file, or a parquet file.

    Each record has ``input``, ``output`` (strings) and ``profile`` (a list of dicts), and
    optionally ``id`` (default: the record's position) and ``user_id`` (default: the id).
    Parquet needs ``pyarrow``; nulls that parquet adds to profile items (fields other items
    have) are dropped so the dicts look like the JSON ones.

    Example:
        >>> ds = load_longlamp("product_review_dev.jsonl")   # doctest: +SKIP
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path} does not exist. Fix: get LongLaMP from {LONGLAMP_URL} "
                        "(a JSON list, JSONL or parquet file of {input, output, profile} records)")
    records = _read_records(path)
    examples, seen = [], set()
    for i, r, record in _each_record(path, records, ("input", "output", "profile"), "record"):
        for field in ("input", "output"):
            if not isinstance(r[field], str):
                raise _err(path, f"must be a string, got {_type(r[field])}", "store the text as a string",
                           record, field)
        rid = _check_id(r["id"], path, record) if r.get("id") is not None else str(i)
        user = _check_id(r["user_id"], path, record, "user_id") if r.get("user_id") is not None else rid
        if rid in seen:
            raise _err(path, f"duplicate id {rid!r}", "ids must be unique within a file", record, "id")
        seen.add(rid)
        profile = r["profile"]
        if path.suffix == ".parquet" and hasattr(profile, "tolist"):
            profile = [{k: v for k, v in it.items() if v is not None} if isinstance(it, dict) else it
                       for it in profile.tolist()]
        examples.append(Example(rid, user, task, r["input"], _check_profile(profile, task, path, record), r["output"]))
    return Dataset(examples, task, "", path, {path.name: file_sha256(path)})


def _read_records(path: Path) -> list:
    if path.suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401  (pandas' parquet engine)
        except ImportError:
            raise DataError(f"{path}: reading parquet needs pyarrow. Fix: pip install pyarrow "
                            "(or convert the file to JSON lines)") from None
        # A column that only some records have comes back as None/NaN in the others: drop those
        # so a parquet record looks like the JSON one (e.g. no "id" -> the position is used).
        return [{k: v for k, v in rec.items() if not (v is None or (isinstance(v, float) and v != v))}
                for rec in pd.read_parquet(path).to_dict("records")]
    if path.suffix == ".jsonl":
        try:
            lines = path.read_text(encoding="utf-8").split("\n")  # as iterating the file: not at U+2028
        except UnicodeDecodeError as e:
            raise _err(path, f"not UTF-8 text ({e.reason} at byte {e.start})",
                       "this should be a JSON lines file; download it again") from None
        records = []
        for lineno, line in enumerate(lines, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise _err(path, f"not valid JSON ({e.msg})", "one JSON object per line",
                               f"line {lineno}") from None
        return records
    records = _read_json(path)
    if not isinstance(records, list):
        raise _err(path, f"expected a list of records, got {_type(records)}",
                   "use a JSON list, or JSON lines with a .jsonl suffix")
    return records
