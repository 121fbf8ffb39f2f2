"""The three tasks (issue 29): lamp4, lamp5 and lamp2n each load from the repository's copy, get
their prompts and metrics, and every method runs on each; lamp2n's predictions are labels."""

from __future__ import annotations

import argparse
import gzip
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from workbench.data import metrics
from workbench.data.lamp import DATASETS, TASK_DATASETS, DataError, default_data_dir, load_dataset, load_lamp
from workbench.data.prompts import parse_label
from workbench.data.records import Dataset
from workbench.data.tasks import LAMP2N_BY_FREQUENCY, LAMP2N_LABELS, get_task
from workbench.methods import (GenerationSettings, LabelScorer, available_methods, label_token_logprobs,
                               label_token_logprobs_under,
                               make_methods)
from workbench.runner.bench import run_bench

REPO = Path(__file__).resolve().parents[1]


# ---- the datasets -------------------------------------------------------------------------

@pytest.mark.parametrize("task, name, n, users", [("lamp4", "lamp4-news", 207, 69), ("lamp5", "lamp5-acl", 675, 675),
                                                 ("lamp2n", "lamp2n-news", 207, 69)])
def test_each_dataset_loads_from_the_repository_copy(task, name, n, users, monkeypatch):
    monkeypatch.delenv("WORKBENCH_LAMP4_DIR", raising=False)
    ds = load_dataset(name)
    assert (ds.task, len(ds), len(ds.users())) == (task, n, users)
    assert Path(ds.path) == DATASETS / name and DATASETS.is_relative_to(REPO / "workbench")
    assert TASK_DATASETS[task] == name and default_data_dir(task) == DATASETS / name
    assert (DATASETS / name / "README.md").exists()  # the attribution travels with the files
    assert all(ex.gold for ex in ds)


def test_lamp2n_labels_agree_with_the_data():
    ds = load_dataset("lamp2n-news")
    spec = get_task("lamp2n")
    assert spec.kind == "classification" and spec.labels == LAMP2N_LABELS and len(LAMP2N_LABELS) == 21
    assert sorted(LAMP2N_BY_FREQUENCY) == sorted(LAMP2N_LABELS)
    assert all(ex.input.startswith(spec.prefix) for ex in ds)  # the prefix lists the 21 labels
    assert {ex.gold for ex in ds} <= set(LAMP2N_LABELS)
    assert all(it["category"] in LAMP2N_LABELS for ex in ds for it in ex.profile)


def _write_lamp2n(tmp_path: Path, input_text: str, gold: str) -> Path:
    q = [{"id": "1", "user_id": "u", "input": input_text,
          "profile": [{"id": "p", "text": "an earlier article", "category": "politics"}]}]
    (tmp_path / "dev_questions.json").write_text(json.dumps(q))
    (tmp_path / "dev_outputs.json").write_text(json.dumps({"task": "LaMP_2N", "golds": [{"id": "1", "output": gold}]}))
    return tmp_path


def test_lamp2n_loader_checks_labels(tmp_path):
    good = get_task("lamp2n").prefix + "An article."
    assert load_lamp(_write_lamp2n(tmp_path, good, "politics")).task == "lamp2n"
    with pytest.raises(DataError, match="not one of lamp2n's labels"):
        load_lamp(_write_lamp2n(tmp_path, good, "sport"))
    with pytest.raises(DataError, match="category list"):
        load_lamp(_write_lamp2n(tmp_path, good.replace("comedy, ", ""), "politics"))
    with pytest.raises(DataError, match="unknown task"):
        load_lamp(tmp_path, task="LaMP_3N")


# ---- metrics ------------------------------------------------------------------------------

def test_accuracy_and_macro_f1_by_hand():
    preds, golds = ["a", "b", "a", "c"], ["a", "b", "b", "b"]
    # a: TP 1, FP 1, FN 0 -> 2/3; b: TP 1, FN 2 -> 2/4; c, d: 0. Over four labels: (2/3 + 1/2) / 4.
    assert metrics.accuracy(preds, golds) == 0.5
    assert metrics.macro_f1(preds, golds, ["a", "b", "c", "d"]) == pytest.approx((2 / 3 + 0.5) / 4)
    value, lo, hi = metrics.bootstrap_metric(preds, golds, "macro_f1", ["a", "b", "c", "d"], seed=1)
    assert value == pytest.approx((2 / 3 + 0.5) / 4) and 0 <= lo <= value <= hi <= 1
    assert metrics.task_metrics("lamp2n") == ("accuracy", "macro_f1")
    assert metrics.task_metrics("lamp4") == metrics.task_metrics("lamp5") == metrics.GENERATION_METRICS
    assert metrics.score_example("lamp2n", "crime", "crime") == {"accuracy": 1.0}
    import pandas as pd

    table = metrics.summarize(pd.DataFrame({"method": "m", "prediction": preds, "gold": golds,
                                            "accuracy": [1.0, 1.0, 0.0, 0.0]}),
                              ("accuracy", "macro_f1"), labels=["a", "b", "c", "d"], n_boot=50)
    assert table.loc[0, "accuracy"] == 0.5 and table.loc[0, "macro_f1"] == pytest.approx((2 / 3 + 0.5) / 4)
    # rows without a gold label (saved results carry none) are refused, not scored as wrong
    lost = pd.DataFrame({"method": "m", "prediction": preds, "gold": [*golds[:3], None], "accuracy": 1.0})
    with pytest.raises(ValueError, match="gold label; 1 of 4 rows have none.*load_results"):
        metrics.summarize(lost, ("accuracy", "macro_f1"), labels=["a", "b", "c", "d"], n_boot=10)
    from workbench.runner.compare import comparison_table

    both = pd.concat([lost.assign(method="rag"), lost.assign(method="x")], ignore_index=True)
    with pytest.raises(ValueError, match="gold label"):
        comparison_table(both.assign(id=[str(i % 4) for i in range(8)]), ["x"], baseline="rag",
                         labels=["a", "b", "c", "d"])


def test_parse_label():
    labels = ["u.s. news", "world news", "politics", "news"]
    assert parse_label("Politics.", labels) == "politics"
    assert parse_label("I think it is world news, or politics", labels) == "world news"
    assert parse_label("no idea", labels) == ""


# ---- methods on the three tasks (tiny-random) ----------------------------------------------

def _short(ds: Dataset, n_users: int = 2, chars: int = 200) -> Dataset:
    """The first users' queries, texts cut so tiny-random's 512-token context holds a prompt with history."""
    users = ds.users()[:n_users]
    cut = lambda d: {k: v[:chars] if isinstance(v, str) else v for k, v in d.items()}  # noqa: E731
    spec = get_task(ds.task)
    examples = [replace(ex, input=spec.prefix + ex.input[len(spec.prefix):][:chars], profile=tuple(map(cut, ex.profile[:6])))
                for ex in ds if ex.user_id in users]
    return Dataset(examples, ds.task, ds.split, ds.path)


@pytest.fixture(scope="module")
def tasks_data():
    # LaMP-5 has one query per user: six users, so the tuning users (a third) that caa-all and
    # lora-task build from are not empty.
    return {name: _short(load_dataset(name), 6 if name == "lamp5-acl" else 2)
            for name in ("lamp4-news", "lamp5-acl", "lamp2n-news")}


@pytest.mark.parametrize("name", ["lamp4-news", "lamp5-acl", "lamp2n-news"])
def test_every_method_runs_on_each_task(tiny, tasks_data, name, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    ds = tasks_data[name]
    names = [m for m in available_methods() if m != "majority" or ds.task == "lamp2n"]
    settings = GenerationSettings(k=2, max_new_tokens=4)  # small prompts and outputs: the point is that it runs
    res = run_bench(tiny, ds, names, tmp_path / "run", n=2, settings=settings, progress=False)
    assert set(res.outputs["method"]) == set(names) and len(res.outputs) == 2 * len(names)
    if ds.task == "lamp2n":  # always a label
        assert set(res.outputs["prediction"]) <= set(LAMP2N_LABELS)
        run = json.loads((tmp_path / "run" / "run.json").read_text())
        assert run["settings"]["decoding"] == "label choice: mean log-likelihood per label token"
        assert {"accuracy", "macro_f1"} <= set(res.summary.columns) and "rouge1" not in res.summary
    else:
        assert "rouge1" in res.summary and "accuracy" not in res.summary


def test_majority_only_on_classification(tiny, tasks_data, tmp_path):
    with pytest.raises(ValueError, match="majority work on classification tasks only"):
        run_bench(tiny, tasks_data["lamp4-news"], ["majority"], tmp_path, n=1, progress=False)


def test_majority_matches_the_history_rule(tiny, tmp_path):
    """The dev split's history-majority rule, ties to the label most frequent in the source:
    accuracy 136/207 = 0.657, macro-F1 over the 21 labels 0.2875."""
    res = run_bench(tiny, load_dataset("lamp2n-news"), ["majority"], tmp_path, progress=False)
    row = res.summary.iloc[0]
    assert row["accuracy"] == pytest.approx(136 / 207) and round(row["accuracy"], 3) == 0.657
    assert row["macro_f1"] == pytest.approx(0.2875, abs=5e-4)
    assert row["accuracy_lo"] < row["accuracy"] < row["accuracy_hi"]
    assert row["macro_f1_lo"] < row["macro_f1"] < row["macro_f1_hi"]


def test_generate_mode_parses_into_labels(tiny, tasks_data, tmp_path):
    res = run_bench(tiny, tasks_data["lamp2n-news"], ["rag", "dps"], tmp_path, n=2, progress=False,
                    label_mode="generate")
    assert set(res.outputs["prediction"]) <= {*LAMP2N_LABELS, ""} and "generated" in res.outputs
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["settings"]["decoding"] == "greedy, first line parsed into a label"


def test_label_logprobs_are_the_models_target_logprobs(tiny, tasks_data):
    """The batched, cached label scoring gives exactly Model.target_logprobs, hooks included."""
    import workbench as wb

    rag = make_methods(["rag"], GenerationSettings())[0]
    prompt, _ = rag.prompt(tiny, tasks_data["lamp2n-news"][0])
    labels = ["politics", "black/queer/latino voices", "u.s. news"]
    for hooks in (None, wb.mask_heads(tiny, [(0, 0), (1, 1)], how="zero")):
        if hooks is None:
            got = label_token_logprobs(tiny, prompt, labels)
            want = [tiny.target_logprobs(prompt, " " + lab) for lab in labels]
        else:
            with hooks:
                got = label_token_logprobs(tiny, prompt, labels)
                want = [tiny.target_logprobs(prompt, " " + lab) for lab in labels]
        for (lp, entropy), ref in zip(got, want):
            assert torch.allclose(lp, ref.cpu(), atol=1e-4) and (entropy >= 0).all()


def test_label_scores_under_several_hook_sets_share_one_prompt_pass(tiny, tasks_data):
    # DPS's intact and masked label scores from one prompt pass: each set exactly as if scored
    # alone, and a set after others sees the prompt's cache unchanged by them.
    from workbench.core.heads import mask_heads
    from workbench.methods import label_token_logprobs_under
    from conftest import all_hook_handles

    rag = make_methods(["rag"], GenerationSettings())[0]
    prompt, _ = rag.prompt(tiny, tasks_data["lamp2n-news"][0])
    labels = ["politics", "black/queer/latino voices", "u.s. news"]
    masked = mask_heads(tiny, [(1, 0), (1, 2)], how="zero")  # tiny-random attends near uniformly already
    together = label_token_logprobs_under(tiny, prompt, labels, [(), masked, ()])
    alone = [label_token_logprobs(tiny, prompt, labels), label_token_logprobs(tiny, prompt, labels, label_hooks=masked)]
    for got, want in zip(together, [*alone, alone[0]]):
        for (lp, ent), (lp_ref, ent_ref) in zip(got, want):
            assert torch.equal(lp, lp_ref) and torch.equal(ent, ent_ref)
    assert any(not torch.allclose(a[0], b[0]) for a, b in zip(together[0], together[1])), "the mask must change a score"
    assert not together[1][0][0].requires_grad  # scoring builds no autograd graph
    assert all_hook_handles(tiny) == 0


def test_label_scores_on_the_hook_free_view_match_the_bridge(tiny, tasks_data, monkeypatch):
    # Head masks and steering vectors run on the hook-free view, all labels in one row under a
    # tree-shaped mask; a hook list (or any hook the view cannot run) keeps the bridge's rows.
    import workbench as wb
    import workbench.methods as methods
    from conftest import all_hook_handles

    rag = make_methods(["rag"], GenerationSettings())[0]
    prompt, _ = rag.prompt(tiny, tasks_data["lamp2n-news"][0])
    labels = ["politics", "black/queer/latino voices", "u.s. news", "media"]
    mask = wb.mask_heads(tiny, [(1, 0), (1, 2)], how="zero")
    views = []
    original = methods._label_logits_on_view
    monkeypatch.setattr(methods, "_label_logits_on_view", lambda *a: views.append(1) or original(*a))
    vector = torch.randn(tiny.d_model)
    for active in (None, wb.steer(tiny, vector, layer=1, scale=2.0)):
        with active if active is not None else wb.mask_heads(tiny, [], how="zero"):
            before = len(views)
            on_view = label_token_logprobs_under(tiny, prompt, labels, [(), mask])
            assert len(views) == before + 1
            on_bridge = label_token_logprobs_under(tiny, prompt, labels, [(), mask.hooks])
            assert len(views) == before + 1
        for got, want in zip(on_view, on_bridge):
            for (lp, ent), (lp_ref, ent_ref) in zip(got, want):
                assert lp.shape == lp_ref.shape and torch.allclose(lp, lp_ref, atol=1e-5)
                assert torch.allclose(ent, ent_ref, atol=1e-4)
        assert any(not torch.allclose(a[0], b[0]) for a, b in zip(on_view[0], on_view[1])), "the mask must change a score"
    steered = label_token_logprobs(tiny, prompt, labels)
    with wb.steer(tiny, vector, layer=1, scale=2.0):
        assert any(not torch.allclose(a[0], b[0]) for a, b in zip(steered, label_token_logprobs(tiny, prompt, labels)))
    # a hook the view cannot run: the bridge, same numbers
    with tiny.bridge.hooks(fwd_hooks=[("blocks.0.hook_resid_post", lambda x, hook: x)]):
        before = len(views)
        assert all(torch.allclose(a[0], b[0], atol=1e-5)
                   for a, b in zip(label_token_logprobs(tiny, prompt, labels), steered))
        assert len(views) == before
    assert all_hook_handles(tiny) == 0


def test_label_view_is_verified_once_per_model(tiny, tasks_data, monkeypatch):
    # A model whose view would get the tree-shaped pass wrong (here: simulated) keeps the bridge.
    import workbench.methods as methods

    rag = make_methods(["rag"], GenerationSettings())[0]
    prompt, _ = rag.prompt(tiny, tasks_data["lamp2n-news"][0])
    labels = ["politics", "u.s. news"]
    monkeypatch.setattr(methods, "_TREE_VERIFIED", methods.weakref.WeakKeyDictionary())
    want = label_token_logprobs(tiny, prompt, labels)
    assert methods._TREE_VERIFIED.get(tiny.bridge) is True
    original = methods._label_logits_on_view

    def wrong(*a):
        return [(logits.flip(-1), where) for logits, where in original(*a)]

    monkeypatch.setattr(methods, "_TREE_VERIFIED", methods.weakref.WeakKeyDictionary())
    monkeypatch.setattr(methods, "_label_logits_on_view", wrong)
    got = label_token_logprobs(tiny, prompt, labels)
    assert methods._TREE_VERIFIED.get(tiny.bridge) is False
    assert all(torch.allclose(a[0], b[0], atol=1e-5) for a, b in zip(got, want))


def test_dps_label_scores_with_alpha_zero_are_plain(tiny, tasks_data):
    from workbench.methods.dps import DpsLabelScorer

    rag = make_methods(["rag"], GenerationSettings())[0]
    prompt, _ = rag.prompt(tiny, tasks_data["lamp2n-news"][0])
    plain = LabelScorer().scores(tiny, prompt, LAMP2N_LABELS)
    dps = DpsLabelScorer(heads=((1, 0),), alpha=0.0).scores(tiny, prompt, LAMP2N_LABELS)
    assert dps == pytest.approx(plain, abs=1e-5)
    contrasted = DpsLabelScorer(heads=((1, 0),), alpha=1.0).scores(tiny, prompt, LAMP2N_LABELS)
    assert len(contrasted) == 21


# ---- the command line ---------------------------------------------------------------------

def _args(**kw):
    base = dict(task=None, data=None, split="dev", with_profile=False)
    return argparse.Namespace(**{**base, **kw})


@pytest.mark.parametrize("task, name", sorted(TASK_DATASETS.items()))
def test_task_picks_its_shipped_dataset(task, name, monkeypatch):
    from workbench.app.cli import _load_dataset

    monkeypatch.delenv("WORKBENCH_LAMP4_DIR", raising=False)
    ds = _load_dataset(_args(task=task))
    assert ds.task == task and Path(ds.path) == DATASETS / name


def test_task_with_other_data_is_refused():
    from workbench.app.cli import _load_dataset

    with pytest.raises(ValueError, match="holds lamp4 data"):
        _load_dataset(_args(task="lamp5", data=DATASETS / "lamp4-news"))
    with pytest.raises(ValueError, match="unknown task"):
        _load_dataset(_args(task="lamp9"))
    with pytest.raises(DataError, match="no dataset ships"):
        _load_dataset(_args(task="lamp7"))


def test_nothing_names_the_shared_folder():
    needle = "../" + "shared"
    for path in [*(REPO / "workbench").rglob("*.py"), *(REPO / "tests").rglob("*.py")]:
        assert needle not in path.read_text(encoding="utf-8"), path
    with gzip.open(DATASETS / "lamp2n-news" / "dev_outputs.json.gz", "rt") as f:
        assert json.load(f)["task"] == "LaMP_2N"


@pytest.mark.real
def test_label_scores_on_a_chat_prompt(smol):
    """SmolLM2 (chat template): a label follows the assistant header directly, and the batched
    label scoring agrees with Model.target_logprobs; the lamp2n prompt lists the 21 labels."""
    rag = make_methods(["rag"], GenerationSettings())[0]
    ex = load_dataset("lamp2n-news")[0]
    prompt, _ = rag.prompt(smol, ex)
    assert isinstance(prompt, list) and all(lab in prompt[-1]["content"] for lab in LAMP2N_LABELS)
    labels = ["politics", "black/queer/latino voices"]
    for (lp, _), lab in zip(label_token_logprobs(smol, prompt, labels), labels):
        assert torch.allclose(lp, smol.target_logprobs(prompt, lab).cpu(), atol=2e-3)
    import workbench.methods as methods
    assert methods._TREE_VERIFIED.get(smol.bridge) is True  # SmolLM2's labels go in one row on the view
    label, facts = LabelScorer().choose(smol, prompt, LAMP2N_LABELS)
    assert label in LAMP2N_LABELS and facts["label_margin"] >= 0
