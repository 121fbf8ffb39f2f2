"""Bad inputs, tried as a careless or hostile user would (issue 19).

Every case asserts the exception type, that the message names the problem (and, where there
is one, the fix), and that nothing on disk changed: a snapshot (names, sizes, modification
times and SHA-256 of every file) of the directory involved is taken before and compared after.

Cases by area (the counts are checked at the end of the file):

- API: arguments of the public functions (types, ranges, NaN/inf, positions within the context);
- CLI: every command's options, paths and models, as a user types them (exit code 2, one line
  on stderr, no traceback, and nothing loaded or written);
- data files: LaMP / LongLaMP files that are damaged, foreign or in the wrong place;
- run directories: resuming into a directory made with other settings, data or model, or
  whose ``run.json`` / ``outputs.jsonl`` is missing, torn or foreign;
- saved artifacts: damaged or foreign score and vector files, and HTML escaping of every
  ``_repr_html_`` and report.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import GoldPrefixMethod
import workbench as wb
from workbench.science.caa import caa_vectors
from workbench.data.history import profile_examples
from workbench import _util
from workbench.runner.bench import BenchResult, run_bench
from workbench.app.cli import main
from workbench.runner.compare import load_runs
from workbench.data.records import Dataset, Example
from workbench.data.lamp import DataError, load_lamp, load_lamp4_news, load_longlamp
from workbench.app.demo import run_demo
from workbench.science.dps import DpsOutput, dps_generate
from workbench.science.fints import SampleVectors, aggregate
from workbench.methods import GenerationSettings, make_methods
from workbench.methods import Generic
from workbench.science.pcs import preference_scores
from workbench.science.pcs_result import PreferenceScores
from workbench.app.report import Report
from workbench.science.steerx import PreferenceDescription

COUNTS: dict[str, int] = {}


def _count(area: str, cases: list) -> list:
    COUNTS[area] = COUNTS.get(area, 0) + len(cases)
    return cases


def cases(area: str, n: int) -> Callable:
    """Count a test that checks ``n`` bad-input cases of ``area`` (counted when the module loads)."""
    def mark(fn: Callable) -> Callable:
        _count(area, [fn.__name__] * n)
        return fn

    return mark


# ---- helpers --------------------------------------------------------------------------------------

def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` with its kind, size, mtime and content hash."""
    out: dict[str, tuple] = {}
    for p in sorted(Path(root).rglob("*")):
        st = p.stat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""
        out[str(p.relative_to(root))] = (p.is_dir(), st.st_size, st.st_mtime_ns, digest)
    return out


def expect_error(call: Callable[[], Any], exc: type, patterns: tuple[str, ...], where: Path) -> str:
    """``call()`` raises ``exc`` whose message matches every pattern; ``where`` is unchanged."""
    before = snapshot(where)
    with pytest.raises(exc) as err:
        call()
    message = str(err.value)
    for pattern in patterns:
        assert re.search(pattern, message, re.I), f"{pattern!r} not in: {message}"
    assert snapshot(where) == before, "a refused call changed files on disk"
    return message


def expect_cli_error(argv: list[str], patterns: tuple[str, ...], where: Path, capsys) -> str:
    """``workbench argv`` exits with 2 and a one-line reason matching every pattern, no
    traceback, and ``where`` unchanged."""
    before = snapshot(where)
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own usage errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    for pattern in patterns:
        assert re.search(pattern, err, re.I), f"{pattern!r} not in: {err}"
    assert snapshot(where) == before, "a refused command changed files on disk"
    return err


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if a command gets as far as loading a model (it should have refused first)."""
    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(wb, "load_model", refuse)
    # the commands import it from its module, not through the facade: patch it there too
    monkeypatch.setattr("workbench.core.loading.load_model", refuse)


@pytest.fixture(scope="module")
def news():
    return load_lamp4_news()


SCRIPT = '<script>alert("x")</script>'


# ==== API ==============================================================================================

API_CASES = _count("API", [
    # mask_heads: indices are whole numbers, weights numbers in [0, 1]
    ("float head indices", lambda m: wb.mask_heads(m, [(1.7, 0.9)]), ValueError, ("whole numbers",)),
    ("bool as a layer", lambda m: wb.mask_heads(m, [(True, 0)]), ValueError, ("whole numbers",)),
    ("heads=None", lambda m: wb.mask_heads(m, None), ValueError, ("pairs",)),
    ("heads as a string", lambda m: wb.mask_heads(m, "1,0"), ValueError, ("pairs",)),
    ("NaN mask weight", lambda m: wb.mask_heads(m, {(0, 0): float("nan")}), ValueError, (r"\[0, 1\]",)),
    ("string mask weight", lambda m: wb.mask_heads(m, {(0, 0): "0.5"}), ValueError, ("number",)),
    ("layer out of range", lambda m: wb.mask_heads(m, [(7, 0)]), ValueError, (r"layers 0\.\.1",)),
    # steer: vector, scale, layer, positions
    ("steer scale NaN", lambda m: wb.steer(m, torch.ones(m.d_model), 0, scale=float("nan")), ValueError, ("finite",)),
    ("steer scale inf", lambda m: wb.steer(m, torch.ones(m.d_model), 0, scale=float("inf")), ValueError, ("finite",)),
    ("steer scale as text", lambda m: wb.steer(m, torch.ones(m.d_model), 0, scale="2"), ValueError, ("number",)),
    ("position past the context", lambda m: wb.steer(m, torch.ones(m.d_model), 0, positions=[100000]), ValueError,
     ("outside", "context", r"0\.\.511")),
    ("fractional position", lambda m: wb.steer(m, torch.ones(m.d_model), 0, positions=[1.5]), ValueError, ("whole",)),
    ("no positions", lambda m: wb.steer(m, torch.ones(m.d_model), 0, positions=[]), ValueError, ("steers nothing", "None")),
    ("slice past the context", lambda m: wb.steer(m, torch.ones(m.d_model), 0, positions=slice(100000, None)),
     ValueError, ("after", "context")),
    ("slice step 0", lambda m: wb.steer(m, torch.ones(m.d_model), 0, positions=slice(0, None, 0)), ValueError,
     ("step", ">= 1")),
    ("a string as the vector", lambda m: wb.steer(m, "abc", 0), ValueError, ("1-D tensor",)),
    ("vector of the wrong width", lambda m: wb.steer(m, torch.ones(3), 0), ValueError, ("d_model",)),
    ("vector with NaN", lambda m: wb.steer(m, torch.full((m.d_model,), float("nan")), 0), ValueError, ("NaN",)),
    ("float layer", lambda m: wb.steer(m, torch.ones(m.d_model), 1.0), ValueError, ("whole number",)),
    ("unknown site", lambda m: wb.steer(m, torch.ones(m.d_model), 0, site="resid"), ValueError, ("resid_post",)),
    # generate: lengths and sampling
    ("negative temperature", lambda m: m.generate("the cat", 4, do_sample=True, temperature=-1), ValueError,
     ("temperature", "> 0")),
    ("NaN temperature", lambda m: m.generate("the cat", 4, do_sample=True, temperature=float("nan")), ValueError,
     ("temperature", "finite")),
    ("fractional max_new_tokens", lambda m: m.generate("the cat", 2.5), ValueError, ("max_new_tokens", "whole")),
    ("zero max_new_tokens", lambda m: m.generate("the cat", 0), ValueError, ("max_new_tokens", ">= 1")),
    ("top_p above 1", lambda m: m.generate("the cat", 4, do_sample=True, top_p=5), ValueError, ("top_p", r"\(0, 1\]")),
    ("top_k 0", lambda m: m.generate("the cat", 4, do_sample=True, top_k=0), ValueError, ("top_k", ">= 1")),
    ("prompt None", lambda m: m.generate(None), ValueError, ("prompt",)),
    ("float token ids", lambda m: m.generate(torch.tensor([[1.0, 2.0]])), ValueError, ("integers",)),
    ("token id outside the vocabulary", lambda m: m.generate(torch.tensor([[1, 10_000]])), ValueError, ("vocabulary",)),
    ("target not text", lambda m: m.nll("the cat", 123), ValueError, ("target", "str")),
    # dps_generate
    ("DPS alpha NaN", lambda m: dps_generate(m, "the cat", [(0, 0)], alpha=float("nan")), ValueError, ("alpha", "finite")),
    ("DPS alpha inf", lambda m: dps_generate(m, "the cat", [(0, 0)], alpha=float("inf")), ValueError, ("alpha", "finite")),
    ("DPS negative alpha_cap", lambda m: dps_generate(m, "the cat", [(0, 0)], alpha_cap=-5), ValueError,
     ("alpha_cap", ">= 0")),
    ("DPS alpha word", lambda m: dps_generate(m, "the cat", [(0, 0)], alpha="big"), ValueError, ("entropy",)),
    ("DPS fractional length", lambda m: dps_generate(m, "the cat", [(0, 0)], max_new_tokens=2.5), ValueError,
     ("max_new_tokens",)),
    ("DPS NaN plausibility", lambda m: dps_generate(m, "the cat", [(0, 0)], plausibility=float("nan")), ValueError,
     ("plausibility",)),
    ("DPS zero temperature", lambda m: dps_generate(m, "the cat", [(0, 0)], do_sample=True, temperature=0), ValueError,
     ("temperature",)),
    ("DPS no heads", lambda m: dps_generate(m, "the cat", []), ValueError, ("empty",)),
    # run settings and methods
    ("k=0 (would be generic)", lambda m: GenerationSettings(k=0), ValueError, ("k=0", ">= 1")),
    ("negative k", lambda m: GenerationSettings(k=-2), ValueError, ("k=-2", ">= 1")),
    ("zero max_new_tokens setting", lambda m: GenerationSettings(max_new_tokens=0), ValueError, ("max_new_tokens",)),
    ("unknown retrieval", lambda m: GenerationSettings(retrieval="tfidf"), ValueError, ("bm25", "recency")),
    ("methods as one string", lambda m: make_methods("generic", GenerationSettings()), ValueError, ("list",)),
    # scoring, history, demo, loading
    ("PCS negative k", lambda m: preference_scores(m, [("a", "b")], k=-1), ValueError, ("k=-1",)),
    ("PCS unknown retrieval", lambda m: preference_scores(m, [("a", "b")], retrieval="x"), ValueError, ("bm25",)),
    ("profile_examples n=0", lambda m: profile_examples(load_lamp4_news(), n=0), ValueError, ("n=0", ">= 1")),
    ("demo masking 'mean'", lambda m: run_demo(m, how="mean", progress=False), ValueError, ("zero", "uniform")),
    ("demo zero tokens", lambda m: run_demo(m, max_new_tokens=0, progress=False), ValueError, ("max_new_tokens",)),
    ("demo user without a query", lambda m: run_demo(m, user={"profile": [{"text": "a", "title": "b"}]}, progress=False),
     ValueError, ("query",)),
    ("unknown device", lambda m: wb.load_model("tiny-random", device="foo"), ValueError, ("device", "cpu")),
    ("unknown dtype", lambda m: wb.load_model("tiny-random", dtype="int8"), ValueError, ("dtype", "bf16")),
])


@pytest.mark.parametrize("call, exc, patterns", [c[1:] for c in API_CASES], ids=[c[0] for c in API_CASES])
def test_api_rejects_bad_arguments(tiny, tmp_path, monkeypatch, call, exc, patterns):
    monkeypatch.chdir(tmp_path)  # nothing may be written anywhere, the working directory included
    expect_error(lambda: call(tiny), exc, patterns, tmp_path)


BENCH_ARG_CASES = _count("API", [
    ("n=-3", dict(n=-3), ValueError, ("n=-3", ">= 1")),
    ("n=2.5", dict(n=2.5), ValueError, ("n=2.5", "whole")),
    ("no methods", dict(methods=[]), ValueError, ("no methods",)),
    ("methods as a string", dict(methods="generic"), ValueError, ("list",)),
    ("unknown method", dict(methods=["nope"]), ValueError, ("unknown method", "available")),
    ("a path as the dataset", dict(dataset="data/"), ValueError, ("load_lamp",)),
])


@pytest.mark.parametrize("changes, exc, patterns", [c[1:] for c in BENCH_ARG_CASES], ids=[c[0] for c in BENCH_ARG_CASES])
def test_run_bench_checks_its_arguments_before_writing(tiny, news, tmp_path, changes, exc, patterns):
    args = {"dataset": news, "methods": ["generic"], "n": 2, **changes}
    expect_error(lambda: run_bench(tiny, args["dataset"], args["methods"], tmp_path / "out", n=args["n"],
                                   settings=GenerationSettings(max_new_tokens=4), progress=False),
                 exc, patterns, tmp_path)
    assert not (tmp_path / "out").exists()


@cases("API", 2)
def test_fints_and_steering_arguments_are_checked(tiny, tmp_path):
    vecs = SampleVectors(torch.ones(1, tiny.d_model), torch.ones(1, tiny.d_model),
                         pd.DataFrame([{"item_id": "1", "text": "a", "positive": "b", "negative": "c", "rougeL": 0.0}]),
                         tiny.name, 0)
    expect_error(lambda: aggregate(vecs, "a query", k=2.5), ValueError, ("k=2.5", "whole"), tmp_path)
    expect_error(lambda: caa_vectors(tiny, "likes cats", ["an article"], 1), ValueError, ("list of layers",), tmp_path)


def test_allowed_inputs_that_look_odd(tiny):
    """Inputs we decided to accept: numpy integers as heads, layers and positions (they are whole
    numbers), a 0-d tensor as a mask weight, and n larger than the dataset (= all of it)."""
    a = wb.mask_heads(tiny, (np.int64(1), np.int64(0)))
    assert a.heads == {(1, 0): 1.0}
    assert wb.mask_heads(tiny, {(0, 1): torch.tensor(0.5)}).heads == {(0, 1): 0.5}
    s = wb.steer(tiny, torch.ones(tiny.d_model), np.int64(1), positions=np.array([0, 3]))
    assert s.layer == 1 and s.positions == [0, 3]


# ==== CLI ==============================================================================================

def _cli_cases(tmp: Path) -> list:
    return [
        (["bench", "--n", "-3"], ("argument --n", ">= 1")),
        (["bench", "--n", "0"], ("argument --n", ">= 1")),
        (["bench", "--n", "abc"], ("argument --n", "not a whole number")),
        (["bench", "--k", "-2"], ("argument --k", ">= 1")),
        (["bench", "--k", "0"], ("argument --k", ">= 1")),
        (["bench", "--max-new-tokens", "0"], ("argument --max-new-tokens", ">= 1")),
        (["bench", "--fraction", "1.5"], ("argument --fraction", "between 0 and 1")),
        (["bench", "--fraction", "nan"], ("argument --fraction", "between 0 and 1")),
        (["tune", "--methods", "dps", "--fraction", "0"], ("argument --fraction",)),
        (["heads", "--top", "0"], ("argument --top",)),
        (["heads", "--n", "-1"], ("argument --n",)),
        (["demo", "--max-new-tokens", "0"], ("argument --max-new-tokens",)),
        (["bench", "--methods", ""], ("--methods is empty",)),
        (["bench", "--methods", " , "], ("--methods is empty",)),
        (["bench", "--methods", "generic,nope"], ("unknown method", "nope")),
        (["tune", "--methods", ""], ("--methods is empty",)),
        (["bench", "--device", "foo"], ("device='foo'", "cpu")),
        (["bench", "--dtype", "int8"], ("unknown dtype", "bf16")),
        (["heads", "--dtype", "int8"], ("unknown dtype",)),
        (["bench", "--model", ""], ("non-empty",)),
        (["bench", "--data", str(tmp / "no-such-dir")], ("does not exist", "lamp-benchmark")),
        (["bench", "--split", "../etc"], ("split name",)),
        # --task alone picks the task's shipped dataset; with --data it is checked against it
        (["bench", "--task", "lamp5", "--data", str(Path(__file__).resolve().parents[1] / "workbench" / "data" /
                                                    "datasets" / "lamp4-news")], ("--task lamp5", "lamp4")),
        (["bench", "--task", "lamp7"], ("no dataset ships", "--data")),
        (["bench", "--task", "lamp2n", "--methods", "majority", "--labels", "guess"], ("invalid choice",)),
        (["bench", "--task", "lamp4", "--methods", "majority"], ("majority", "classification")),
        (["bench", "--tuned", str(tmp / "no-tuned.json")], ("does not exist",)),
        (["bench", "--set", "dps.alpha"], ("METHOD.FIELD=VALUE",)),
        (["bench", "--methods", "dps", "--set", "dps.alpha=nan"], ("dps.alpha",)),
        (["bench", "--set", "nope.x=1"], ("not in this run",)),
        (["tune", "--methods", "dps", "--grid", "dps.alpha=0.5,nan"], ("dps.alpha='nan'",)),
        (["tune", "--methods", "generic"], ("no declared grid",)),
    ]


CLI_CASE_COUNT = 32
_count("CLI", [None] * CLI_CASE_COUNT)


@pytest.mark.parametrize("i", range(CLI_CASE_COUNT))
def test_cli_rejects_bad_options_before_loading_anything(i, tmp_path, monkeypatch, capsys, no_model_load):
    monkeypatch.chdir(tmp_path)
    argv, patterns = _cli_cases(tmp_path)[i]
    expect_cli_error([*argv, "--model", "tiny-random"] if "--model" not in argv else argv, patterns, tmp_path, capsys)


def test_cli_case_list_is_counted():
    assert len(_cli_cases(Path("."))) == CLI_CASE_COUNT


@cases("CLI", 4)
@pytest.mark.parametrize("command", ["bench", "heads", "tune", "demo"])
def test_out_that_is_a_file_fails_before_the_model_loads(command, tmp_path, capsys, no_model_load):
    target = tmp_path / "a-file"
    target.write_text("mine")
    extra = ["--methods", "dps"] if command == "tune" else []
    expect_cli_error([command, "--model", "tiny-random", "--out", str(target), *extra], ("a file, not a directory",),
                     tmp_path, capsys)


@cases("CLI", 1)
def test_out_below_a_file_fails_before_the_model_loads(tmp_path, capsys, no_model_load):
    (tmp_path / "f").write_text("mine")
    expect_cli_error(["bench", "--model", "tiny-random", "--out", str(tmp_path / "f" / "run")],
                     ("cannot be created", "is a file"), tmp_path, capsys)


@cases("CLI", 1)
def test_unwritable_out_fails_before_the_model_loads(tmp_path, capsys, no_model_load, monkeypatch):
    # The tests may run as root, who may write anywhere: the permission check itself is what
    # is tested here, with os.access answering as it would for an ordinary user.
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(_util.os, "access", lambda p, mode: False if Path(p) == locked else real_access(p, mode))
    expect_cli_error(["bench", "--model", "tiny-random", "--out", str(locked / "run")], ("not writable", str(locked)),
                     tmp_path, capsys)


@cases("CLI", 1)
def test_demo_refuses_a_foreign_index_before_the_analysis(tmp_path, capsys, monkeypatch):
    (tmp_path / "index.html").write_text("my own page")

    def no_analysis(*a, **k):
        raise AssertionError("the analysis ran before the report directory was checked")

    monkeypatch.setattr("workbench.app.demo.run_demo", no_analysis)
    monkeypatch.setattr(wb, "load_model", no_analysis)
    expect_cli_error(["demo", "--model", "tiny-random", "--out", str(tmp_path)], ("not written by workbench", "--force"),
                     tmp_path, capsys)


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
    """A checkpoint written by save_pretrained, without its tokenizer."""
    from workbench.core._tiny import make_tiny_llama

    d = tmp_path_factory.mktemp("checkpoint")
    hf, _ = make_tiny_llama()
    hf.save_pretrained(d)
    return d


@pytest.mark.parametrize("damage, patterns", [
    ("no tokenizer", ("tokenizer", "checkpoint directory", "save_pretrained")),
    ("broken config", ("config.json", "not a valid JSON")),
])
@cases("CLI", 2)
def test_a_broken_checkpoint_directory_is_named(checkpoint_dir, tmp_path, capsys, damage, patterns):
    d = tmp_path / "ckpt"
    shutil.copytree(checkpoint_dir, d)
    if damage == "broken config":
        (d / "config.json").write_text("{ not json")
    expect_cli_error(["bench", "--model", str(d), "--n", "1", "--out", str(tmp_path / "out")], (*patterns, str(d)),
                     tmp_path, capsys)


@cases("CLI", 1)
def test_debug_shows_the_traceback(tmp_path, no_model_load):
    with pytest.raises(ValueError, match="--methods is empty"):
        main(["bench", "--methods", "", "--debug"])
    with pytest.raises(ValueError, match="--methods is empty"):
        main(["--debug", "bench", "--methods", ""])


@cases("CLI", 1)
def test_heads_refuses_existing_scores_before_loading(tmp_path, capsys, no_model_load):
    (tmp_path / "scores.json").write_text("{}")
    expect_cli_error(["heads", "--model", "tiny-random", "--out", str(tmp_path)], ("exists", "--force"), tmp_path, capsys)


# ==== data files ======================================================================================

def _lamp_dir(tmp: Path, questions: Any = None, outputs: Any = None) -> Path:
    d = tmp / "lamp"
    d.mkdir(exist_ok=True)
    q = questions if questions is not None else [
        {"id": "1", "input": "Generate a headline for the following article: x", "profile": [{"id": "p1", "text": "a", "title": "b"}]}]
    o = outputs if outputs is not None else {"task": "LaMP_4", "golds": [{"id": "1", "output": "X"}]}
    for name, value in (("dev_questions.json", q), ("dev_outputs.json", o)):
        (d / name).write_bytes(value if isinstance(value, bytes) else json.dumps(value).encode())
    return d


DATA_CASES = _count("data files", [
    ("questions not JSON", dict(questions=b"[{"), ("dev_questions.json", "not valid JSON", "line 1")),
    ("questions not UTF-8", dict(questions=b"\xff\xfe[]"), ("dev_questions.json", "not UTF-8")),
    ("questions an object", dict(questions={"id": 1}), ("expected a list",)),
    ("record without input", dict(questions=[{"id": "1", "profile": []}]), ("record 0", "'input'", "missing")),
    ("duplicate id", dict(questions=[{"id": "1", "input": "x", "profile": []}] * 2), ("duplicate id",)),
    ("id that is a list", dict(questions=[{"id": [1], "input": "x", "profile": []}]), ("field 'id'", "string")),
    ("profile not a list", dict(questions=[{"id": "1", "input": "x", "profile": "none"}]), ("profile", "list")),
    ("profile item without title", dict(questions=[{"id": "1", "input": "x", "profile": [{"id": "p", "text": "a"}]}]),
     ("profile item 0", "field 'title'", "add 'title'")),
    ("no gold for a question", dict(outputs={"task": "LaMP_4", "golds": []}), ("no gold output", "'1'")),
    ("unknown task", dict(outputs={"task": "LaMP_9", "golds": [{"id": "1", "output": "X"}]}), ("unknown task",)),
    ("gold not text", dict(outputs={"task": "LaMP_4", "golds": [{"id": "1", "output": 5}]}), ("field 'output'", "string")),
])


@pytest.mark.parametrize("files, patterns", [c[1:] for c in DATA_CASES], ids=[c[0] for c in DATA_CASES])
def test_damaged_lamp_files_are_named(tmp_path, files, patterns):
    d = _lamp_dir(tmp_path, **files)
    expect_error(lambda: load_lamp(d), DataError, patterns, tmp_path)


@cases("data files", 5)
def test_data_paths_that_are_wrong(tmp_path):
    d = _lamp_dir(tmp_path)
    expect_error(lambda: load_lamp(d / "dev_questions.json"), DataError, ("is a file", "directory"), tmp_path)
    expect_error(lambda: load_lamp(d, split="../lamp/dev"), DataError, ("split name",), tmp_path)
    expect_error(lambda: load_lamp(d, split="test"), DataError, ("test_questions.json is missing", "dev_questions"), tmp_path)
    (d / "dev_questions.json").unlink()
    (d / "dev_questions.json").mkdir()
    expect_error(lambda: load_lamp(d), DataError, ("dev_questions.json", "cannot be read"), tmp_path)
    (tmp_path / "bad.jsonl").write_bytes(b'{"input": "a", "output": "b", "profile": []}\n\xff\n')
    expect_error(lambda: load_longlamp(tmp_path / "bad.jsonl"), DataError, ("bad.jsonl", "not UTF-8"), tmp_path)


def test_a_dataset_records_the_hash_of_the_files_it_read(tmp_path):
    d = _lamp_dir(tmp_path)
    ds = load_lamp(d)
    assert ds.files == {n: hashlib.sha256((d / n).read_bytes()).hexdigest()
                        for n in ("dev_questions.json", "dev_outputs.json")}
    assert ds[:1].files == ds.files and ds.filter(lambda ex: True).fingerprint() == ds.files


# ==== run directories ==================================================================================

SETTINGS = GenerationSettings(max_new_tokens=4)


@pytest.fixture(scope="module")
def base_run(tiny, news, tmp_path_factory):
    """A finished run: generic and rag on the first 3 examples."""
    out = tmp_path_factory.mktemp("base") / "run"
    run_bench(tiny, news, ["generic", "rag"], out, n=3, settings=SETTINGS, progress=False)
    return out


@pytest.fixture
def run_dir(base_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(base_run, out)  # copy2: contents and times, so the snapshot is of this copy
    return out


def _edit_json(path: Path, change: Callable[[dict], Any]) -> None:
    d = json.loads(path.read_text())
    change(d)
    path.write_text(json.dumps(d))


def _other_k(tiny, news, out):
    return run_bench(tiny, news, ["generic"], out, n=3, settings=GenerationSettings(max_new_tokens=4, k=3), progress=False)


def _same(t, ds, out):
    return run_bench(t, ds, ["generic"], out, n=3, settings=SETTINGS, progress=False)


RUN_CASES = _count("run directories", [
    ("other k", None, _other_k, ValueError, ("different settings", "settings.k: 5 there, 3 now")),
    ("other users", None, lambda t, ds, out: run_bench(t, ds, ["generic"], out, n=3, settings=SETTINGS, progress=False,
                                                      users={"users": "eval", "fraction": 0.3}),
     ValueError, ("different users",)),
    ("examples not a prefix", None, lambda t, ds, out: run_bench(t, ds[1:4], ["generic"], out, settings=SETTINGS,
                                                                 progress=False), ValueError, ("example_ids",)),
    ("other method settings", lambda out: _edit_json(out / "run.json",
                                                     lambda d: d["method_settings"]["generic"].update(extra=1)),
     _same, ValueError, ("other method settings", "generic")),
    ("run.json deleted", lambda out: (out / "run.json").unlink(), _other_k, ValueError,
     ("no run.json", "outputs.jsonl", "another --out")),
    ("run.json torn", lambda out: (out / "run.json").write_text((out / "run.json").read_text()[:40]), _same, ValueError,
     ("run.json", "damaged", "restore it")),
    ("run.json a list", lambda out: (out / "run.json").write_text("[1, 2]"), _same, ValueError,
     ("run.json", "not a benchmark run.json")),
    ("run.json empty", lambda out: (out / "run.json").write_text(""), _same, ValueError, ("run.json", "damaged")),
    ("outputs line without id", lambda out: _add_line(out, {"method": "generic", "prediction": "x"}), _same, ValueError,
     ("outputs.jsonl, line 7", "'id'", "delete that line")),
    ("outputs line not an object", lambda out: _add_line(out, [1, 2]), _same, ValueError,
     ("outputs.jsonl, line 7", "not a benchmark record")),
    ("outputs not UTF-8", lambda out: (out / "outputs.jsonl").write_bytes(b"\xff\xfe\n"), _same, ValueError,
     ("outputs.jsonl", "not UTF-8")),
    ("results without run.json or outputs", lambda out: [(out / n).unlink() for n in ("run.json", "outputs.jsonl")],
     _same, ValueError, ("results.csv", "no run.json")),
    ("load_runs on a torn run.json", lambda out: (out / "run.json").write_text("{"),
     lambda t, ds, out: load_runs(out), ValueError, ("run.json", "damaged")),
    ("out is a file", None, lambda t, ds, out: run_bench(t, ds, ["generic"], out / "outputs.jsonl", n=1, settings=SETTINGS,
                                                         progress=False), NotADirectoryError, ("a file, not a directory",)),
])


def _rag_k(k):
    return make_methods(["rag"], GenerationSettings(max_new_tokens=4, k=k))[0]


def _add_line(out: Path, rec: Any) -> None:
    with open(out / "outputs.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")


@pytest.mark.parametrize("damage, call, exc, patterns", [c[1:] for c in RUN_CASES], ids=[c[0] for c in RUN_CASES])
def test_a_run_directory_is_never_mixed_or_silently_reused(tiny, news, run_dir, damage, call, exc, patterns):
    if damage is not None:
        damage(run_dir)
    expect_error(lambda: call(tiny, news, run_dir), exc, patterns, run_dir)


@cases("run directories", 1)
def test_another_dtype_is_refused_and_recorded(tiny, news, run_dir):
    # --n 2, then --n 4 --dtype ... into the same directory used to mix float32 and bf16 outputs.
    assert json.loads((run_dir / "run.json").read_text())["dtype"] == "float32"
    half = wb.load_model("tiny-random", dtype="bf16")
    expect_error(lambda: run_bench(half, news, ["generic"], run_dir, n=4, settings=SETTINGS, progress=False),
                 ValueError, ("different dtype", "dtype: float32 there, bfloat16 now"), run_dir)


@cases("run directories", 1)
def test_changed_data_files_are_refused(tiny, tmp_path):
    qs = [{"id": str(i), "input": f"Generate a headline for the following article: the cat {i}",
           "profile": [{"id": f"p{i}", "text": "the dog", "title": "the mat"}]} for i in range(3)]
    golds = {"task": "LaMP_4", "golds": [{"id": str(i), "output": "the cat"} for i in range(3)]}
    d = _lamp_dir(tmp_path, qs, golds)
    run_bench(tiny, load_lamp(d), ["generic"], tmp_path / "out", n=2, settings=SETTINGS, progress=False)
    golds["golds"][2]["output"] = "another gold"  # an example the run has not reached yet
    (d / "dev_outputs.json").write_text(json.dumps(golds))
    expect_error(lambda: run_bench(tiny, load_lamp(d), ["generic"], tmp_path / "out", n=3, settings=SETTINGS,
                                   progress=False), ValueError, ("different data_files", "dev_outputs.json"),
                 tmp_path / "out")


@cases("run directories", 1)
def test_cli_refuses_another_run_before_loading_the_model(base_run, tmp_path, capsys, no_model_load):
    out = tmp_path / "run"
    shutil.copytree(base_run, out)
    expect_cli_error(["bench", "--model", "tiny-random", "--n", "3", "--max-new-tokens", "4", "--k", "3",
                      "--methods", "generic", "--out", str(out)], ("different settings",), out, capsys)


def test_a_partial_rerun_keeps_the_directorys_tables(tiny, news, run_dir):
    table = (run_dir / "results.csv").read_text()
    part = run_bench(tiny, news, ["generic"], run_dir, n=2, settings=SETTINGS, progress=False)
    assert len(part.outputs) == 2 and list(part.summary["method"]) == ["generic"]
    # the directory's tables still cover both methods on all 3 examples, unchanged
    assert (run_dir / "results.csv").read_text() == table
    assert json.loads((run_dir / "run.json").read_text())["n"] == 3
    assert not list(run_dir.glob(".*tmp"))  # atomic writes leave no temporary files


def test_a_run_that_recorded_nothing_can_be_corrected(tiny, news, tmp_path, monkeypatch):
    """Allowed: a run.json without any outputs (the run failed before its first example, e.g.
    a DPS heads file that was missing) is replaced by the corrected command's."""
    def broken(self, model, examples, dataset):
        raise FileNotFoundError("heads.json does not exist")

    monkeypatch.setattr(Generic, "prepare_run", broken)
    with pytest.raises(FileNotFoundError):
        run_bench(tiny, news, ["generic"], tmp_path, n=2, settings=SETTINGS, progress=False)
    assert (tmp_path / "run.json").exists() and not (tmp_path / "outputs.jsonl").exists()
    monkeypatch.undo()
    fixed = GenerationSettings(max_new_tokens=5)
    run_bench(tiny, news, ["generic"], tmp_path, n=2, settings=fixed, progress=False)
    assert json.loads((tmp_path / "run.json").read_text())["settings"]["max_new_tokens"] == 5


def test_a_run_json_of_an_older_workbench_is_adopted_with_a_warning(tiny, news, run_dir):
    """Allowed: run directories made before dtype, device and data files were recorded (the
    project's own runs/) stay resumable; the facts are recorded from then on."""
    _edit_json(run_dir / "run.json", lambda d: [d.pop(k) for k in ("dtype", "device", "data_files")])
    with pytest.warns(UserWarning, match="older workbench.*dtype, device, data_files"):
        run_bench(tiny, news, ["generic"], run_dir, n=3, settings=SETTINGS, progress=False)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["dtype"] == "float32" and info["device"] == "cpu" and "dev_questions.json" in info["data_files"]


def test_run_json_is_written_atomically(tiny, news, tmp_path, monkeypatch):
    run_bench(tiny, news, ["generic"], tmp_path, n=1, settings=SETTINGS, progress=False)
    before = (tmp_path / "run.json").read_text()

    def killed(*a, **k):
        raise KeyboardInterrupt  # the process dies after writing the new run.json, before the rename

    monkeypatch.setattr(_util.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        run_bench(tiny, news, ["generic", "rag"], tmp_path, n=1, settings=SETTINGS, progress=False)
    assert (tmp_path / "run.json").read_text() == before
    assert not list(tmp_path.glob(".*tmp"))


# ==== saved artifacts ==================================================================================

def _scores(model_name: str = "tiny-random") -> PreferenceScores:
    meta = {"model": model_name, "how": "zero", "scope": "all", "mode": "exact", "example_ids": ["a", "b"],
            "example_users": ["u", "u"]}
    return PreferenceScores(np.arange(16, dtype=float).reshape(2, 2, 4), meta)


def _write(tmp: Path, name: str, content: Any) -> Path:
    p = tmp / name
    if isinstance(content, bytes):
        p.write_bytes(content)
    elif isinstance(content, str):
        p.write_text(content)
    else:
        p.write_text(json.dumps(content))
    return p


SCORES_FORMAT = "workbench.preference_scores/1"
ARTIFACT_CASES = _count("saved artifacts", [
    ("scores: not JSON", PreferenceScores.load, "{not json", ValueError, ("is not a saved PreferenceScores", "damaged")),
    ("scores: a list", PreferenceScores.load, [1, 2], ValueError, ("not a saved PreferenceScores",)),
    ("scores: another format", PreferenceScores.load, {"format": "x"}, ValueError, ("format 'x'",)),
    ("scores: no per_example", PreferenceScores.load, {"format": SCORES_FORMAT, "meta": {}}, ValueError,
     ("damaged", "per_example")),
    ("scores: 2-D matrix", PreferenceScores.load,
     {"format": SCORES_FORMAT, "meta": {"model": "m", "how": "zero", "scope": "all", "mode": "exact"},
      "per_example": [[1, 2]]}, ValueError, ("damaged", "n_examples, n_layers, n_heads")),
    ("scores: meta without model", PreferenceScores.load,
     {"format": SCORES_FORMAT, "meta": {"how": "zero"}, "per_example": [[[1.0]]]}, ValueError, ("damaged", "model")),
    ("scores: NaN", PreferenceScores.load,
     '{"format": "%s", "meta": {"model": "m", "how": "zero", "scope": "all", "mode": "exact"}, '
     '"per_example": [[[NaN]]]}' % SCORES_FORMAT, ValueError, ("damaged", "NaN")),
    ("scores: binary", PreferenceScores.load, b"\x80\x04garbage", ValueError, ("damaged",)),
    ("vector: garbage", wb.SteeringVector.load, b"garbage bytes", ValueError, ("not a saved SteeringVector",)),
    ("vector: a JSON file", wb.SteeringVector.load, {"format": SCORES_FORMAT}, ValueError, ("not a saved SteeringVector",)),
    ("vector: a foreign pickle", wb.SteeringVector.load, None, ValueError, ("not a saved SteeringVector",)),
    ("vector: no entries", wb.SteeringVector.load, "torch:nodata", ValueError, ("damaged SteeringVector",)),
    ("vector: entries not tensors", wb.SteeringVector.load, "torch:lists", ValueError, ("damaged SteeringVector",)),
    ("fints vectors: garbage", SampleVectors.load, b"garbage", ValueError, ("not a workbench Fints vectors file",)),
    ("fints vectors: another format", SampleVectors.load, "torch:nodata", ValueError, ("format",)),
])


class _Foreign:
    """An object a pickle would rebuild by running code (here: creating a file): never allowed
    back in. The snapshot check sees the file if it ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _artifact_file(tmp: Path, content: Any) -> Path:
    p = tmp / "artifact"
    if content is None:
        import pickle

        p.write_bytes(pickle.dumps(_Foreign(tmp / "code-ran"), protocol=2))
    elif content == "torch:nodata":
        torch.save({"format": "workbench.steering_vector/2", "model": "m"}, p)
    elif content == "torch:lists":
        torch.save({"format": "workbench.steering_vector/2", "model": "m", "built": "{}",
                    "entries": [{"layer": 0, "site": "resid_post", "vector": [1.0, 2.0]}]}, p)
    else:
        _write(tmp, "artifact", content)
    return p


@pytest.mark.parametrize("load, content, exc, patterns", [c[1:] for c in ARTIFACT_CASES],
                         ids=[c[0] for c in ARTIFACT_CASES])
def test_damaged_or_foreign_files_are_refused_with_their_path(tmp_path, load, content, exc, patterns):
    p = _artifact_file(tmp_path, content)
    message = expect_error(lambda: load(p), exc, (*patterns, re.escape(str(p))), tmp_path)
    assert "weights_only" not in message  # never suggest loading untrusted pickles


@cases("saved artifacts", 4)
def test_missing_files_and_directories_are_named(tmp_path):
    for load in (PreferenceScores.load, wb.SteeringVector.load):
        expect_error(lambda: load(tmp_path / "nope"), FileNotFoundError, ("nope", "does not exist"), tmp_path)
        expect_error(lambda: load(tmp_path), IsADirectoryError, ("is a directory",), tmp_path)


@cases("saved artifacts", 3)
def test_saving_over_something_is_refused(tmp_path):
    vec = wb.SteeringVector.at(torch.ones(8), 0, "resid_post", "tiny-random")
    expect_error(lambda: vec.save(tmp_path), IsADirectoryError, ("is a directory",), tmp_path)
    (tmp_path / "v.pt").write_text("mine")
    expect_error(lambda: vec.save(tmp_path / "v.pt"), FileExistsError, ("exists", "overwrite=True"), tmp_path)
    expect_error(lambda: _scores().save(tmp_path / "v.pt"), FileExistsError, ("exists",), tmp_path)


@cases("saved artifacts", 2)
def test_another_models_artifacts_are_refused(tiny, tmp_path):
    _scores("other-model").save(tmp_path / "s.json")
    wb.SteeringVector.at(torch.ones(tiny.d_model), 0, "resid_post", "other-model").save(tmp_path / "v.pt")
    expect_error(lambda: PreferenceScores.load(tmp_path / "s.json", model=tiny), ValueError, ("other-model", "recompute"),
                 tmp_path)
    expect_error(lambda: wb.SteeringVector.load(tmp_path / "v.pt", model=tiny), ValueError, ("other-model", "rebuild"),
                 tmp_path)


def _html_objects(tiny) -> dict[str, Any]:
    ex = Example(SCRIPT, SCRIPT, "lamp4", SCRIPT, ({"text": SCRIPT, "title": SCRIPT},), SCRIPT)
    report = Report(SCRIPT, {SCRIPT: SCRIPT}, intro=SCRIPT)
    report.add_heading(SCRIPT).add_text(SCRIPT).add_table(pd.DataFrame({SCRIPT: [SCRIPT]}), caption=SCRIPT)
    scores = _scores(SCRIPT)
    scores.meta["data"] = SCRIPT
    vecs = SampleVectors(torch.ones(1, 8), torch.ones(1, 8), pd.DataFrame(
        [{"item_id": SCRIPT, "text": SCRIPT, "positive": SCRIPT, "negative": SCRIPT, "rougeL": 0.0}]), SCRIPT, 0,
        user_id=SCRIPT)
    return {
        "DpsOutput": DpsOutput(SCRIPT, [], pd.DataFrame([{"token": SCRIPT, "plain_token": SCRIPT}])),
        "PreferenceScores": scores,
        "Dataset": Dataset([ex], SCRIPT, SCRIPT, SCRIPT),
        "Report": report,
        "BenchResult": BenchResult(pd.DataFrame(), pd.DataFrame({"method": [SCRIPT], "rouge1": [0.5]}), Path(".")),
        "PreferenceDescription": PreferenceDescription(SCRIPT, SCRIPT, pd.DataFrame({"text": [SCRIPT]}), SCRIPT, {}),
        "SampleVectors": vecs,
        "TokenEffects": wb.trace_tokens(tiny, "the cat sat on the mat", SCRIPT, positions="prompt", mode="gxi",
                                        progress=False),
    }


HTML_CASES = _count("saved artifacts", ["DpsOutput", "PreferenceScores", "Dataset", "Report", "BenchResult",
                                        "PreferenceDescription", "SampleVectors", "TokenEffects"])


@pytest.mark.parametrize("name", HTML_CASES)
def test_html_views_escape_model_and_data_strings(tiny, name):
    page = _html_objects(tiny)[name]._repr_html_()
    assert "<script>alert" not in page and "&lt;script&gt;alert" in page


@cases("saved artifacts", 1)
def test_reports_saved_in_the_same_second_keep_every_previous_copy(tmp_path):
    stamp = time.mktime((2030, 1, 2, 3, 4, 5, 0, 0, -1))
    pages = []
    for i in range(3):
        r = Report(f"report {i}")
        r.save(tmp_path)
        pages.append((tmp_path / "index.html").read_text())
        os.utime(tmp_path / "report.json", (stamp, stamp))  # every save "in the same second"
    kept = sorted(p.name for p in (tmp_path / "previous").iterdir())
    assert kept == ["20300102-030405", "20300102-030405-2"]
    assert {(tmp_path / "previous" / k / "index.html").read_text() for k in kept} == set(pages[:2])
    assert not list(tmp_path.rglob(".*tmp"))


@cases("saved artifacts", 1)
def test_an_interrupted_save_keeps_the_old_file(tmp_path):
    target = tmp_path / "scores.json"
    _scores().save(target)
    before = snapshot(tmp_path)

    def dies(tmp: Path) -> None:
        tmp.write_text('{"format": "workbench.preference_scores/1", "me')  # half written
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _util.atomic_write(target, dies)
    assert snapshot(tmp_path) == before and PreferenceScores.load(target).meta["model"] == "tiny-random"


# ==== issue 32: one writer, names from data, settings checked first, tuning kept, Ray, profiles ==========
#
# Each case failed (or hung) on the code before issue 32. The shared checks they hold:
# workbench._util.dir_lock (one writer), workbench._util.safe_name / cache_file (names from data),
# workbench.methods.Check / Method.check_settings (settings), workbench.runner.tuning.check_tuning_dir
# and save_tuned (tuning accumulates), workbench.runner.scaleout.check_address (Ray),
# workbench.runner.bench.check_profiles (profiles).

import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from dataclasses import dataclass  # noqa: E402

from workbench.methods import Method, register_method  # noqa: E402
from workbench.runner.bench import check_run  # noqa: E402
from workbench.runner.tuning import save_tuned, tune_methods  # noqa: E402

_HOLDER = """
import sys, time
from workbench._util import dir_lock
with dir_lock(sys.argv[1]):
    print("holding", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def held_dir(tmp_path):
    """A run directory whose lock another live process holds; killed (SIGKILL) at the end."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "holding"
    yield out, proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


@cases("run directories", 4)
def test_a_second_writer_is_refused_while_the_first_runs(tiny, news, held_dir, capsys, no_model_load):
    """`bench --k 1 --out D &` and `bench --k 5 --out D` at once: the second is refused, before
    its model loads, naming the live holder; the API, `tune` and `heads` refuse as well."""
    out, proc = held_dir
    err = expect_cli_error(["bench", "--model", "tiny-random", "--methods", "rag", "--n", "2", "--k", "5",
                            "--out", str(out)], ("being written by another workbench process", f"pid {proc.pid}",
                                                 "another --out"), out.parent, capsys)
    assert err.count("\n") == 1
    expect_cli_error(["tune", "--model", "tiny-random", "--methods", "dps", "--n", "2", "--out", str(out)],
                     ("tuning directory", "another workbench process"), out.parent, capsys)
    expect_cli_error(["heads", "--model", "tiny-random", "--n", "2", "--out", str(out)],
                     ("heads directory", "another workbench process"), out.parent, capsys)
    expect_error(lambda: run_bench(tiny, news, ["rag"], out, n=2, settings=SETTINGS, progress=False),
                 _util.DirectoryBusyError, ("another workbench process",), out.parent)


@cases("run directories", 1)
def test_a_killed_writer_leaves_no_stuck_lock(tiny, news, held_dir):
    out, proc = held_dir
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / _util.LOCK_FILE).exists()  # the dead process's file stays, unlocked
    res = run_bench(tiny, news, ["generic"], out, n=1, settings=SETTINGS, progress=False)
    assert len(res.outputs) == 1 and not (out / _util.LOCK_FILE).exists()


HOSTILE_IDS = ["../../../../elsewhere/PWNED", "/etc/passwd", "/tmp/x/../../abs", "a\x00b", "a/b", "x" * 600,
               "ユーザー/" + "é" * 200, "..", ".", "", "-rf", "CON"]


@cases("names from data", len(HOSTILE_IDS))
def test_ids_from_data_map_to_one_safe_file_inside_the_cache(tmp_path, monkeypatch):
    """../, absolute paths, NUL, /, very long and non-ASCII ids: each names one file, in its
    folder of the cache, that can be written, and no two ids share one."""
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "cache" / "steerx" / "tiny-random" / "descriptions"
    paths = set()
    for uid in HOSTILE_IDS:
        path = _util.cache_file("steerx", "tiny-random", f"descriptions/{uid}-0123abcd.json")
        assert path.parent == folder and path.suffix == ".json", (uid, path)
        assert len(path.name.encode()) <= 255 and path.name.isascii() and not path.name.startswith(".")
        _util.atomic_write_text(path, "{}")
        paths.add(path)
    assert len(paths) == len(HOSTILE_IDS)
    assert {p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()} == \
        {p.relative_to(tmp_path) for p in paths}
    assert _util.safe_name("user_17") == "user_17"  # ordinary ids keep their names (and cache entries)


@cases("names from data", 2)
@pytest.mark.parametrize("method", ["caa-all", "steerx-caa"])
def test_a_hostile_user_id_writes_only_inside_the_cache(tiny, news, tmp_path, monkeypatch, method):
    """The reported case: a LaMP user_id of ``../../../../elsewhere/PWNED`` made steerx-caa and
    caa-all write their description and vector files outside the cache."""
    cache = tmp_path.joinpath(*"abcdefgh", "cache")
    monkeypatch.setenv("WORKBENCH_CACHE", str(cache))
    uid = "../" * 7 + "elsewhere/PWNED"  # deep enough to leave the cache from the vectors' folder too
    user = [ex for ex in news if ex.user_id == news[0].user_id][:2]
    m = make_methods([method], GenerationSettings(max_new_tokens=4))[0]
    m.prepare_user(tiny, uid, user)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written and all(cache in p.parents for p in written), written


@cases("names from data", 1)
def test_method_names_must_be_safe_file_names(tmp_path):
    @dataclass
    class Sneaky(Method):
        name = "../sneaky"

    expect_error(lambda: register_method(Sneaky), ValueError, ("method name", "letters, digits"), tmp_path)


SETTING_CASES = [
    ("alpha a word", "bench", ["--methods", "dps", "--set", "dps.alpha=foo"], ("dps.alpha='foo'", "entropy")),
    ("alpha negative", "bench", ["--methods", "dps", "--set", "dps.alpha=-1"], ("dps.alpha=-1", ">= 0")),
    ("top_percent 0", "bench", ["--methods", "generic,dps", "--set", "dps.top_percent=0"], ("dps.top_percent", "> 0")),
    ("top_percent 500", "bench", ["--methods", "dps", "--set", "dps.top_percent=500"], ("dps.top_percent", "<= 100")),
    ("plausibility 2", "bench", ["--methods", "dps", "--set", "dps.plausibility=2"], ("dps.plausibility", "<= 1")),
    ("contrast unknown", "bench", ["--methods", "dps", "--set", "dps.contrast=users"], ("dps.contrast", "history")),
    ("missing heads_file", "bench", ["--methods", "dps", "--set", "dps.heads_file=/nonexistent/scores.json"],
     ("dps.heads_file", "no such file")),
    ("combination's heads_file", "bench", ["--methods", "caa-all+dps", "--set",
                                           "caa-all+dps.heads_file=/nonexistent/h.json"], ("heads_file", "no such file")),
    ("bad grid value", "tune", ["--methods", "dps", "--grid", "dps.top_percent=2,0"], ("dps.top_percent", "> 0")),
    ("bad grid word", "tune", ["--methods", "dps", "--grid", "dps.alpha=1,lots"], ("dps.alpha='lots'", "entropy")),
]


@cases("CLI", len(SETTING_CASES))
@pytest.mark.parametrize("command, argv, patterns", [c[1:] for c in SETTING_CASES], ids=[c[0] for c in SETTING_CASES])
def test_settings_are_checked_before_the_model_loads(command, argv, patterns, tmp_path, capsys, no_model_load):
    expect_cli_error([command, "--model", "tiny-random", *argv, "--out", str(tmp_path / "out")], patterns, tmp_path,
                     capsys)


@cases("run directories", 2)
def test_a_layer_the_model_lacks_is_refused_before_any_method_runs(tiny, news, tmp_path, monkeypatch):
    """caa-user.layer=5 on the 2-layer tiny model: refused right after loading, naming the
    setting and the model's layers, before generic (listed first) runs or anything is written."""
    from workbench.runner.tuning import methods_for_run

    ran = []
    monkeypatch.setattr(Generic, "prepare_run", lambda *a: ran.append(1))
    methods = methods_for_run(["generic", "caa-user"], SETTINGS, set_items=["caa-user.layer=5"])
    expect_error(lambda: run_bench(tiny, news, methods, tmp_path / "out", n=2, settings=SETTINGS, progress=False),
                 ValueError, ("caa-user.layer=5", "2 layers", r"0\.\.1"), tmp_path)
    assert not ran
    grids = {"caa-user": {"layer": ["0", "5"]}}
    expect_error(lambda: tune_methods(tiny, news, grids, tmp_path / "tune", n=1, settings=SETTINGS), ValueError,
                 ("caa-user.layer=5", "2 layers"), tmp_path)


@cases("run directories", 1)
def test_a_method_that_failed_leaves_no_settings_that_block_the_fix(tiny, news, tmp_path, monkeypatch):
    """`bench --methods generic,dps --set dps.top_percent=...` ran generic, then dps failed: the
    corrected command must not be refused for dps settings that produced no result."""
    from workbench.methods.dps import Dps

    def broken(self, model, examples, dataset):
        raise RuntimeError("dps failed while preparing")

    monkeypatch.setattr(Dps, "prepare_run", broken)
    first = make_methods(["generic", "dps"], SETTINGS)
    first[1].top_percent = 7.0
    with pytest.raises(RuntimeError):
        run_bench(tiny, news, first, tmp_path, n=2, settings=SETTINGS, progress=False)
    assert json.loads((tmp_path / "run.json").read_text())["method_settings"]["dps"]["top_percent"] == 7.0
    check_run("tiny-random", news, make_methods(["generic", "dps"], SETTINGS), tmp_path, n=2, settings=SETTINGS)


@register_method
@dataclass
class _Echo32(GoldPrefixMethod):
    """A synthetic method (no model work): writes the first ``copy`` share of the gold's words."""

    name = "test-echo32"


@register_method
@dataclass
class _Echo32b(_Echo32):
    name = "test-echo32b"


@cases("tuning", 3)
def test_tuning_results_accumulate_and_are_never_lost(tiny, news, tmp_path):
    """`tune --methods A --out T` then `tune --methods B --out T` keeps both; tuning A again over
    another grid is refused (its scores and choice would be gone); a rewrite keeps the old file."""
    out = tmp_path / "T"
    tune_methods(tiny, news, {"test-echo32": {"copy": ["0", "1"]}}, out, n=2, settings=SETTINGS)
    tune_methods(tiny, news, {"test-echo32b": {"copy": ["0", "0.5"]}}, out, n=2, settings=SETTINGS)
    d = json.loads((out / "tuned.json").read_text())
    assert set(d["methods"]) == {"test-echo32", "test-echo32b"}
    assert d["methods"]["test-echo32"]["grid"] == {"copy": ["0.0", "1.0"]} and d["methods"]["test-echo32"]["n"] == 2
    assert [json.loads(p.read_text())["methods"].keys() for p in (out / "previous").iterdir()] == [{"test-echo32"}]
    expect_error(lambda: tune_methods(tiny, news, {"test-echo32": {"copy": ["0.5"]}}, out, n=2, settings=SETTINGS),
                 ValueError, ("already holds test-echo32 tuned over grid", "another --out"), out)
    expect_error(lambda: tune_methods(tiny, news, {"test-echo32": {"copy": ["0", "1"]}}, out, n=2,
                                      settings=GenerationSettings(max_new_tokens=4, k=2)),
                 ValueError, ("other settings",), out)
    # the same grid again (written 1.0 instead of 1) resumes, on more examples, and keeps everything
    tune_methods(tiny, news, {"test-echo32": {"copy": ["0", "1.0"]}}, out, n=3, settings=SETTINGS)
    d = json.loads((out / "tuned.json").read_text())
    assert set(d["methods"]) == {"test-echo32", "test-echo32b"} and d["methods"]["test-echo32"]["n"] == 3
    assert len(list((out / "previous").iterdir())) == 2


@cases("tuning", 1)
def test_cli_refuses_a_second_grid_before_loading(tiny, news, tmp_path, capsys, no_model_load):
    out = tmp_path / "T"
    tune_methods(tiny, news, {"test-echo32": {"copy": ["0", "1"]}}, out, settings=GenerationSettings())
    expect_cli_error(["tune", "--model", "tiny-random", "--methods", "test-echo32", "--grid", "test-echo32.copy=0.5",
                      "--out", str(out)], ("already holds test-echo32", "another --out"), out, capsys)


def _tuned(path: Path, chosen: dict) -> Path:
    save_tuned([], path, {"model": "tiny-random"})
    _edit_json(path, lambda d: d.update(methods={m: {"chosen": c} for m, c in chosen.items()}))
    return path


@cases("tuning", 1)
def test_a_tuned_file_for_none_of_the_methods_is_refused(tmp_path, capsys, no_model_load):
    tuned = _tuned(tmp_path / "tuned.json", {"caa-user": {"scale": 2.0}})
    expect_cli_error(["bench", "--model", "tiny-random", "--methods", "generic,rag", "--tuned", str(tuned),
                      "--out", str(tmp_path / "run")], ("caa-user", "none of which is in --methods"), tmp_path, capsys)


@cases("tuning", 2)
def test_tuned_settings_are_recorded_and_tuning_users_are_named(tiny, tmp_path, capsys, monkeypatch):
    """--tuned goes into run.json; with the default --users all the run says that it evaluates
    on the tuning users too, and records it."""
    monkeypatch.setattr("workbench.core.loading.load_model", lambda *a, **k: tiny)
    tuned = _tuned(tmp_path / "tuned.json", {"test-echo32": {"copy": 0.5}})
    out = tmp_path / "run"
    assert main(["bench", "--model", "tiny-random", "--methods", "test-echo32", "--tuned", str(tuned), "--n", "2",
                 "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "chosen on the tuning users" in err and "--users eval" in err
    run = json.loads((out / "run.json").read_text())
    assert run["tuned"][0]["path"] == str(tuned.resolve()) and run["tuned"][0]["applied"] == ["test-echo32"]
    assert "tuning users included" in run["tuned"][0]["evaluated_on"]
    assert run["tuned"][0]["sha256"] == hashlib.sha256(tuned.read_bytes()).hexdigest()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@cases("CLI", 2)
def test_a_ray_address_nobody_answers_fails_fast_in_our_words(tmp_path, capsys, no_model_load):
    pytest.importorskip("ray")
    t0 = time.perf_counter()
    expect_cli_error(["bench", "--model", "tiny-random", "--n", "1", "--workers", "1", "--ray-address",
                      f"127.0.0.1:{_free_port()}", "--ray-timeout", "2", "--out", str(tmp_path / "run")],
                     ("no Ray cluster answers at 127.0.0.1:", "ray start --head"), tmp_path, capsys)
    assert time.perf_counter() - t0 < 30
    expect_cli_error(["bench", "--model", "tiny-random", "--n", "1", "--ray-address", "head-without-port",
                      "--out", str(tmp_path / "run")], ("host:port",), tmp_path, capsys)


@cases("CLI", 3)
def test_empty_profiles_are_refused_up_front_with_the_cli_way_out(tmp_path, capsys, no_model_load):
    q = [{"id": "1", "input": "Generate a headline for the following article: x", "profile": [
        {"id": "p1", "text": "a", "title": "b"}]},
         {"id": "2", "input": "Generate a headline for the following article: y", "profile": []}]
    d = _lamp_dir(tmp_path, q, {"task": "LaMP_4", "golds": [{"id": "1", "output": "X"}, {"id": "2", "output": "Y"}]})
    expect_cli_error(["bench", "--model", "tiny-random", "--methods", "generic,rag", "--data", str(d),
                      "--out", str(tmp_path / "run")], ("1 of the 2 examples have an empty profile", "rag",
                                                        "--with-profile"), tmp_path, capsys)
    # user "2" (the one without history) is a tuning user
    expect_cli_error(["tune", "--model", "tiny-random", "--methods", "caa-user", "--data", str(d),
                      "--out", str(tmp_path / "tune")], ("empty profile", "caa-user", "--with-profile"), tmp_path, capsys)
    ds = load_lamp(d)
    expect_error(lambda: check_run("tiny-random", ds, ["rag"], tmp_path / "run"), ValueError,
                 ("empty profile", "with_profile"), tmp_path)
    check_run("tiny-random", ds.with_profile(), ["rag"], tmp_path / "run")  # what --with-profile runs
    check_run("tiny-random", ds, ["generic"], tmp_path / "run")  # generic needs no profile


# ==== the count ===========================================================================================

def test_the_suite_has_enough_cases_in_every_area():
    assert COUNTS["API"] >= 25 and COUNTS["CLI"] >= 15 and COUNTS["data files"] >= 10
    assert COUNTS["run directories"] >= 10 and COUNTS["saved artifacts"] >= 15
    assert sum(COUNTS.values()) >= 60, COUNTS
    print("bad-input cases by area:", COUNTS, "total", sum(COUNTS.values()))
