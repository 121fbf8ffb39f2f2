"""The tuning protocol: a stable user split, settings from text, `workbench tune`, tuned runs."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from workbench.app.cli import main
from workbench.data.lamp import load_lamp4_news
from workbench.methods import GenerationSettings, Method, make_methods, register_method
from workbench.runner.settings import apply_all, apply_settings, parse_assignments
from workbench.data.splits import describe_split, split_users, user_side
from workbench.runner.tuning import choose, grid_points, load_tuned, parse_grid, save_tuned, tune


@pytest.fixture(scope="module")
def news():
    return load_lamp4_news()


# ---- the split -----------------------------------------------------------------------------

def test_split_is_deterministic_disjoint_and_about_a_third(news):
    tune_users = set(split_users(news, "tune").users())
    eval_users = set(split_users(news, "eval").users())
    assert tune_users and eval_users and not tune_users & eval_users
    assert tune_users | eval_users == set(news.users())
    assert 0.15 < len(tune_users) / len(news.users()) < 0.5
    # a user's side depends on the id alone, not on what else is in the dataset
    assert all(user_side(u) == "tune" for u in tune_users)
    assert set(split_users(news[:30], "tune").users()) == tune_users & set(news[:30].users())
    assert describe_split(news)["tune_users"] == len(tune_users)
    with pytest.raises(ValueError, match="users="):
        split_users(news, "test")
    with pytest.raises(ValueError, match="fraction"):
        user_side("u1", fraction=1.5)


def test_a_cut_dataset_keeps_the_whole_for_other_users_data(news):
    # Fints draws other users' items for its negatives from the whole dataset, so a user's
    # vectors do not depend on which side of the split the run was cut to.
    tune = split_users(news, "tune")
    assert tune.whole is news and tune[:3].whole is news and news.whole is news
    fints = make_methods(["fints"], GenerationSettings())[0]
    fints.prepare_run(None, list(tune)[:3], tune)
    assert len(fints._others) == len(news) > len(tune)


# ---- settings from text --------------------------------------------------------------------

def test_set_reads_values_by_field_type():
    dps, fints, combo = make_methods(["dps", "fints", "caa-all+dps"], GenerationSettings())
    apply_all([dps, fints, combo], parse_assignments(
        ["dps.alpha=0.5", "dps.plausibility=none", "fints.layer=18", "fints.weighting=uniform",
         "caa-all+dps.steering.scale=2", "caa-all+dps.decoding.top_percent=2"]))
    assert dps.alpha == 0.5 and dps.plausibility is None and fints.layer == 18 and fints.weighting == "uniform"
    assert combo.steering.scale == 2.0 and combo.decoding.top_percent == 2.0
    apply_settings(dps, {"alpha": "entropy"})
    assert dps.alpha == "entropy"
    assert dps.describe()["alpha"] == "entropy"


@pytest.mark.parametrize("item, message", [
    ("dps.alpah=0.5", "no setting 'alpah'; its settings are: .*alpha"),
    ("fints.layer=eighteen", "fints.layer='eighteen': expected a whole number or none"),
    ("dps.alpha=nan", "dps.alpha='nan': expected a finite number or a word"),
    ("fints.scale=nan", "expected a finite number"),
    ("caa-all.on=both", "on='both'"),
    ("nosuch.alpha=1", "not in this run"),
    ("caa-all+dps.middle.scale=2", "no part 'middle'"),
])
def test_bad_settings_are_clear_errors(item, message):
    methods = make_methods(["dps", "fints", "caa-all", "caa-all+dps"], GenerationSettings())
    with pytest.raises(ValueError, match=message):
        apply_all(methods, parse_assignments([item]))


@pytest.mark.parametrize("item", ["dps.alpha", "alpha=1", "dps.=1", ".alpha=1"])
def test_malformed_set_is_an_error(item):
    with pytest.raises(ValueError, match="METHOD.FIELD=VALUE"):
        parse_assignments([item])


def test_grid_parsing_and_points():
    grid = parse_grid(["dps.alpha=0.5,1,entropy", "dps.top_percent=2,4"])
    assert grid == {"dps": {"alpha": ["0.5", "1", "entropy"], "top_percent": ["2", "4"]}}
    points = grid_points(grid["dps"])
    assert len(points) == 6 and points[0] == {"alpha": "0.5", "top_percent": "2"}
    with pytest.raises(ValueError, match="twice"):
        parse_grid(["dps.alpha=1,1"])


# ---- tune ------------------------------------------------------------------------------------

@register_method
@dataclass
class _Copier(Method):
    """A synthetic method whose score is known: it writes the gold when told to, noise otherwise."""

    name = "test-copier"
    copy: float = 0.0  # the share of the gold's words written

    def prompt(self, model, example):
        words = example.gold.split()
        return " ".join(words[: round(self.copy * len(words))]) or "zzz", {}

    def decoder(self):
        class Echo:
            info: dict = {}

            def decode(self, model, prompt, max_new_tokens):
                return prompt

        return Echo()


def test_tune_picks_the_best_point_on_tuning_users_only(tiny, news, tmp_path):
    res = tune(tiny, news, "test-copier", {"copy": ["0", "0.5", "1"]}, tmp_path, progress=False)
    assert res.chosen == {"copy": 1.0}
    assert list(res.points["rouge1"]) == sorted(res.points["rouge1"]) and res.points["rouge1"].iloc[-1] == 1.0
    assert (res.points["lo"] <= res.points["rouge1"]).all() and (res.points["rouge1"] <= res.points["hi"]).all()
    ran = json.loads((tmp_path / "test-copier").glob("*/run.json").__next__().read_text())
    tune_ids = {ex.id for ex in split_users(news, "tune")}
    assert set(ran["example_ids"]) == tune_ids  # never an evaluation user
    assert res.figure().data[0].marker.color[-1] != res.figure().data[0].marker.color[0]
    # resumable: a second call reads the runs back instead of recomputing
    again = tune(tiny, news, "test-copier", {"copy": ["0", "0.5", "1"]}, tmp_path, progress=False)
    assert again.points["rouge1"].tolist() == res.points["rouge1"].tolist()
    save_tuned([res], tmp_path / "tuned.json", {"model": tiny.name})
    assert load_tuned(tmp_path / "tuned.json", tiny.name) == {"test-copier": {"copy": 1.0}}
    with pytest.raises(ValueError, match="tuned on 'tiny-random'"):
        load_tuned(tmp_path / "tuned.json", "smollm2-135m")


def test_ties_go_to_the_simpler_setting():
    import pandas as pd

    points = pd.DataFrame([{"alpha": 2.0, "rouge1": 0.3}, {"alpha": 1.0, "rouge1": 0.3}, {"alpha": 0.5, "rouge1": 0.1}])
    assert choose(points, "rouge1", {"alpha": 1.0}, ["alpha"]) == 1  # equal scores: the default wins
    assert choose(points, "rouge1", {"alpha": 7.0}, ["alpha"]) == 0  # none is the default: the first listed


def test_tuned_settings_reach_the_run_and_its_record(tiny, news, tmp_path, monkeypatch):
    import workbench as wb

    monkeypatch.setattr(wb, "load_model", lambda *a, **k: tiny)
    tuned = tmp_path / "tuned.json"
    save_tuned([], tuned, {"model": "tiny-random"})
    payload = json.loads(tuned.read_text())
    payload["methods"] = {"test-copier": {"chosen": {"copy": 0.5}}}
    tuned.write_text(json.dumps(payload))
    out = tmp_path / "run"
    assert main(["bench", "--model", "tiny-random", "--methods", "test-copier", "--tuned", str(tuned),
                 "--users", "eval", "--n", "4", "--out", str(out)]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["method_settings"]["test-copier"]["copy"] == 0.5
    assert run["users"]["users"] == "eval"
    eval_ids = [ex.id for ex in split_users(news, "eval")][:4]
    assert run["example_ids"] == eval_ids
    # the same directory with another setting is refused, as any other settings change
    assert main(["bench", "--model", "tiny-random", "--methods", "test-copier", "--set", "test-copier.copy=1",
                 "--users", "eval", "--n", "4", "--out", str(out)]) == 2
    # --set and --tuned may not both set one field
    assert main(["bench", "--model", "tiny-random", "--methods", "test-copier", "--tuned", str(tuned),
                 "--set", "test-copier.copy=1", "--out", str(tmp_path / "x")]) == 2


def test_cli_tune_writes_tuned_json(tiny, tmp_path, monkeypatch):
    import workbench as wb

    monkeypatch.setattr(wb, "load_model", lambda *a, **k: tiny)
    assert main(["tune", "--model", "tiny-random", "--methods", "test-copier", "--grid", "test-copier.copy=0,1",
                 "--n", "6", "--out", str(tmp_path)]) == 0
    d = json.loads((tmp_path / "tuned.json").read_text())
    assert d["methods"]["test-copier"]["chosen"] == {"copy": 1.0} and d["users"]["users"] == "tune"
    assert (tmp_path / "grid-test-copier.html").exists()
    assert main(["tune", "--model", "tiny-random", "--methods", "test-copier", "--grid", "dps.alpha=1",
                 "--out", str(tmp_path / "y")]) == 2  # a grid for a method not being tuned
