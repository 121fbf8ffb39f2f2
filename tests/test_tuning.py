"""The tuning protocol: a stable user split, settings from text, `workbench tune`, tuned runs."""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import pytest

from conftest import GoldPrefixMethod
from workbench.app.cli import main
from workbench.data.lamp import load_lamp4_news
from workbench.methods import GenerationSettings, make_methods, register_method
from workbench.data.history import dev_split, profile_examples
from workbench.data.records import Dataset
from workbench.runner.settings import apply_all, apply_settings, parse_assignments, parse_method_names
from workbench.data.splits import describe_split, select_examples, split_users, user_side
from workbench.runner.tuning import (TuningResult, DEFAULT_GRIDS, choose, grid_points, load_tuned, methods_for_run, parse_grid, plan_tuning,
                                     save_tuned, tune, tune_methods)


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


# ---- which examples a run works on -----------------------------------------------------------

def test_select_examples_is_the_one_way_examples_are_picked(news):
    # queries: file order, a prefix for any n (a run grows in steps and resumes)
    assert [ex.id for ex in select_examples(news, 5)] == [ex.id for ex in news][:5]
    assert len(select_examples(news)) == len(news)
    # users first, then n: the first tuning users' queries, never an evaluation user's
    assert [ex.id for ex in select_examples(news, 4, users="tune")] == [ex.id for ex in split_users(news, "tune")][:4]
    assert {ex.user_id for ex in select_examples(news, users="eval")} == set(split_users(news, "eval").users())
    # gold: queries that have a profile; profile and dev: the history builders, unchanged
    assert all(ex.profile for ex in select_examples(news, source="gold"))
    assert [ex.id for ex in select_examples(news, 6, source="profile")] == [ex.id for ex in profile_examples(news, n=6)]
    assert [ex.id for ex in select_examples(news, 3, source="profile")] == [ex.id for ex in profile_examples(news, n=6)][:3]
    assert [ex.id for ex in select_examples(news, 2, source="dev", seed=1)] == [ex.id for ex in dev_split(news, 2, seed=1)]
    every = select_examples(news, source="profile")  # n=None: every usable profile item once
    assert len({ex.id for ex in every}) == len(every) > len(select_examples(news, 6, source="profile"))


@pytest.mark.parametrize("kwargs, message", [
    ({"source": "golds"}, "source='golds': use one of"),
    ({"n": 0}, "n=0 must be >= 1"),
    ({"n": 2.5}, "n=2.5 must be a whole number"),
    ({"users": "test"}, "users='test'"),
    ({"users": "tune", "fraction": 1.0}, "fraction"),
])
def test_select_examples_refuses_bad_arguments(news, kwargs, message):
    with pytest.raises(ValueError, match=message):
        select_examples(news, **kwargs)


def test_gold_examples_need_a_query_with_a_profile(news):
    bare = Dataset([replace(ex, profile=()) for ex in news[:3]], "lamp4", "dev", "/data/x")
    with pytest.raises(ValueError, match=r"no query in /data/x \(dev\) has a profile; --source gold"):
        select_examples(bare, source="gold")
    assert len(select_examples(bare)) == 3  # queries without a profile are still queries


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


def test_method_names_from_text():
    assert parse_method_names(" generic, rag ,") == ["generic", "rag"]
    with pytest.raises(ValueError, match="--methods is empty"):
        parse_method_names(" , ")


# ---- what a run or a tune is set to, before any model loads ---------------------------------

def _tuned_file(path, chosen, model="tiny-random"):
    save_tuned([], path, {"model": model})
    payload = json.loads(path.read_text())
    payload["methods"] = {m: {"chosen": c} for m, c in chosen.items()}
    path.write_text(json.dumps(payload))
    return path


def test_methods_for_run_applies_defaults_then_tuned_then_set(tmp_path):
    tuned = _tuned_file(tmp_path / "t.json", {"dps": {"alpha": "entropy"}, "fints": {"scale": 2.0}})
    dps, rag = methods_for_run(["dps", "rag"], GenerationSettings(k=3), "tiny-random", tuned=[tuned],
                               set_items=["dps.top_percent=2"])
    assert dps.alpha == "entropy" and dps.top_percent == 2.0 and dps.settings.k == 3  # fints: not in this run, ignored
    assert [m.name for m in methods_for_run(["rag"], GenerationSettings())] == ["rag"]  # nothing given: the defaults


def test_settings_fixed_while_tuning_come_with_the_choice(tmp_path):
    # A point was only ever scored with the --set values fixed during tuning, so a run with the
    # tuned file gets them too (they were once dropped: lora-user+rag ran at its 2-epoch,
    # 64-item defaults instead of the tuned 1 epoch, 16 items).
    import pandas as pd

    res = TuningResult("lora-user+rag", "rouge1", pd.DataFrame([{"lr": 1e-3, "rouge1": 0.2, "chosen": True}]),
                       chosen={"lr": 1e-3}, defaults={"lr": 5e-4}, grid={"lr": [2e-4, 1e-3]},
                       fixed={"rank": "8", "epochs": 1, "max_records": 16})
    path = save_tuned([res], tmp_path / "tuned.json", {"model": "tiny-random"})
    assert json.loads(path.read_text())["methods"]["lora-user+rag"]["fixed"]["epochs"] == "1.0"  # recorded as text
    (m,) = methods_for_run(["lora-user+rag"], GenerationSettings(), "tiny-random", tuned=[path])
    assert (m.lr, m.rank, m.epochs, m.max_records) == (1e-3, 8, 1, 16)
    assert all(type(v) is int for v in (m.rank, m.epochs, m.max_records))
    with pytest.raises(ValueError, match=r"--set \['lora-user\+rag.epochs'\] would override"):
        methods_for_run(["lora-user+rag"], GenerationSettings(), "tiny-random", tuned=[path],
                        set_items=["lora-user+rag.epochs=2"])
    (again,) = methods_for_run(["lora-user+rag"], GenerationSettings(), "tiny-random", tuned=[path],
                               set_items=["lora-user+rag.epochs=1", "lora-user+rag.lr=0.001"])  # the same values
    assert (again.epochs, again.lr) == (1, 1e-3)


def test_methods_for_run_refuses_clashes_and_strays(tmp_path):
    tuned = _tuned_file(tmp_path / "t.json", {"dps": {"alpha": "entropy"}})
    other = _tuned_file(tmp_path / "u.json", {"dps": {"top_percent": 2.0}})
    s = GenerationSettings()
    with pytest.raises(ValueError, match=r"--set \['dps.alpha'\] would override settings chosen by tuning"):
        methods_for_run(["dps"], s, "tiny-random", tuned=[tuned], set_items=["dps.alpha=0.5"])
    with pytest.raises(ValueError, match="dps is tuned in two of the --tuned files; keep one"):
        methods_for_run(["dps"], s, "tiny-random", tuned=[tuned, other])
    with pytest.raises(ValueError, match="not in this run"):
        methods_for_run(["rag"], s, set_items=["dps.alpha=0.5"])
    with pytest.raises(ValueError, match="tuned on 'tiny-random', not on 'smollm2-135m'"):
        methods_for_run(["dps"], s, "smollm2-135m", tuned=[tuned])
    with pytest.raises(ValueError, match="unknown method"):
        methods_for_run(["nope"], s, set_items=["dps.alpha"])  # the names first, before --set is read


def test_plan_tuning_resolves_grids_and_checks_every_point():
    grids, fixed = plan_tuning(["dps", "fints"], ["fints.scale=1,3"], ["dps.plausibility=none"])
    assert grids == {"dps": DEFAULT_GRIDS["dps"], "fints": {"scale": ["1", "3"]}}
    assert fixed == {"dps": {"plausibility": "none"}}


@pytest.mark.parametrize("names, grid, fixed, message", [
    (["generic"], [], [], r"\['generic'\] have no declared grid"),
    (["dps"], ["dps.alpha=0.5,nan"], [], "dps.alpha='nan'"),
    (["dps"], ["fints.scale=1"], [], r"--grid/--set name method\(s\) \['fints'\] that are not in --methods \['dps'\]"),
    (["dps"], [], ["rag.k=2"], "not in --methods"),
    (["dps"], [], ["dps.alpah=1"], "no setting 'alpah'"),
    (["dps"], ["dps.alpha"], [], "METHOD.FIELD=V1,V2"),
])
def test_plan_tuning_refuses_what_would_fail_later(names, grid, fixed, message):
    with pytest.raises(ValueError, match=message):
        plan_tuning(names, grid, fixed)


# ---- tune ------------------------------------------------------------------------------------

@register_method
@dataclass
class _Copier(GoldPrefixMethod):
    """A synthetic method whose score is known: it writes the gold when told to, noise otherwise."""

    name = "test-copier"


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


def test_a_dps_grid_shares_prompt_passes_and_each_point_matches_its_own_run(tiny, news, tmp_path, monkeypatch):
    # The grid's points decode the same batches: the prompt passes of the first point serve the
    # others, and a point's predictions are those of a plain run at its settings.
    from workbench.runner.bench import run_bench
    from workbench.science import dps_batch

    stores = []
    real = dps_batch.reuse_prompt_caches

    @contextmanager
    def spy(*args, **kwargs):
        with real(*args, **kwargs) as store:
            stores.append(store)
            yield store

    monkeypatch.setattr(dps_batch, "reuse_prompt_caches", spy)
    settings = GenerationSettings(max_new_tokens=6)
    grid = {"alpha": ["1", "8"], "top_percent": ["10"]}
    res = tune(tiny, news, "dps", grid, tmp_path / "tune", n=4, settings=settings, progress=False, batch_size=2,
               fixed={"pcs_examples": 4})
    assert len(stores) == 1 and stores[0].misses == 2 and stores[0].hits == 2  # 2 batches, 2 points
    for row in res.points.itertuples():
        m = make_methods(["dps"], settings)[0]
        apply_settings(m, {"alpha": row.alpha, "top_percent": 10.0, "pcs_examples": 4})
        alone = run_bench(tiny, split_users(news, "tune"), [m], tmp_path / f"alone-{row.alpha}", n=4, settings=settings,
                          progress=False, batch_size=2, chart=False)
        tuned = pd.read_json(Path(row.run) / "outputs.jsonl", lines=True).sort_values("id")
        assert tuned["prediction"].tolist() == alone.outputs.sort_values("id")["prediction"].tolist()
    # other methods run without the store
    tune(tiny, news, "test-copier", {"copy": ["0", "1"]}, tmp_path / "copier", n=2, progress=False)
    assert len(stores) == 1


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


def test_eval_table_compares_settings_by_value():
    # a combination's fixed "--set X.decoding.top_percent=2" comes back from tuned.json as 2, its
    # run records 2.0 in a nested dict: the same setting (the run was refused as "not at the chosen")
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("eval_table", Path(__file__).parents[1] / "tools" / "eval_table.py")
    eval_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(eval_table)
    recorded = {"name": "caa-all+dps", "steering": {"scale": 1.0, "layer": None}, "decoding": {"top_percent": 2.0, "alpha": 0.5}}
    chosen = {k: eval_table._number(v) for k, v in
              {"decoding.top_percent": "2", "steering.scale": "1", "decoding.alpha": "0.5", "steering.layer": "none"}.items()}
    assert eval_table._is_saved_setting(recorded, chosen)
    assert not eval_table._is_saved_setting(recorded, {**chosen, "decoding.alpha": 1})
    assert not eval_table._is_saved_setting(recorded, {**chosen, "decoding.top_percent": 4})
    assert eval_table._is_saved_setting({"alpha": "entropy"}, {"alpha": "entropy"})
    assert not eval_table._is_saved_setting({"alpha": "entropy"}, {"alpha": 1})


def test_eval_table_checks_a_run_was_made_at_the_tuned_settings(tiny, tmp_path, monkeypatch):
    # tools/eval_table.py labels rows "tuned": rows from a run at other settings must be refused,
    # and a method no tuned file names (rag) is taken at its defaults, without a saved full run.
    import importlib.util
    from pathlib import Path

    import workbench as wb

    spec = importlib.util.spec_from_file_location("eval_table", Path(__file__).parents[1] / "tools" / "eval_table.py")
    eval_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(eval_table)
    monkeypatch.setattr(wb, "load_model", lambda *a, **k: tiny)
    tuned = _tuned_file(tmp_path / "tuned.json", {"test-copier": {"copy": "0.5"}})
    good, bad = tmp_path / "good", tmp_path / "bad"
    common = ["bench", "--model", "tiny-random", "--users", "eval", "--n", "3", "--max-new-tokens", "4"]
    assert main([*common, "--methods", "rag,test-copier", "--set", "test-copier.copy=0.5", "--out", str(good)]) == 0
    assert main([*common, "--methods", "test-copier", "--set", "test-copier.copy=1", "--out", str(bad)]) == 0
    table = ["--model", "tiny-random", "--n", "3", "--methods", "rag,test-copier", "--tuned", str(tuned)]
    assert eval_table.main([*table, "--runs", str(good), "--out", str(tmp_path / "t.csv")]) == 0
    about = json.loads((tmp_path / "t.json").read_text())
    assert about["methods"]["test-copier"]["settings"] == {"copy": 0.5}
    assert "not tuned" in about["methods"]["rag"]["source"] and about["settings"]["max_new_tokens"] == 4
    bad_rag = tmp_path / "bad-rag"
    assert main([*common, "--methods", "rag", "--out", str(bad_rag)]) == 0
    assert eval_table.main([*table, "--runs", str(bad_rag), "--runs", str(bad), "--out", str(tmp_path / "u.csv")]) == 1
    assert not (tmp_path / "u.csv").exists()


def test_run_protocol_tunes_runs_and_tables_each_method(tmp_path):
    # tools/run_protocol.py: the whole tuned protocol as workbench commands, in real processes
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).parents[1]
    cmd = [sys.executable, str(root / "tools" / "run_protocol.py"), "--task", "lamp4", "--model", "tiny-random",
           "--methods", "rag,caa-user", "--grid", "caa-user.scale=0.5,2", "--n-tune", "3", "--n-eval", "3",
           "--out", str(tmp_path / "p"), "--table", str(tmp_path / "t.csv")]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=root, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    steps = [line for line in done.stdout.splitlines() if line.startswith("[")]
    assert [s.split()[2] for s in steps[:3]] == ["bench", "tune", "bench"] and "eval_table.py" in steps[3]
    about = json.loads((tmp_path / "t.json").read_text())
    chosen = json.loads((tmp_path / "p" / "tune-caa-user" / "tuned.json").read_text())["methods"]["caa-user"]["chosen"]
    assert about["methods"]["caa-user"]["settings"] == chosen and chosen["scale"] in (0.5, 2.0)
    assert about["methods"]["caa-user"]["n"] == 3 and "not tuned" in about["methods"]["rag"]["source"]
    assert any(c.startswith("workbench tune") and "caa-user.scale=0.5,2" in c for c in about["commands"])
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=root, timeout=600)
    assert again.returncode == 2 and "exists" in again.stderr  # the table is never replaced

    def dry(*args):
        return subprocess.run([*cmd[:2], "--task", "lamp2n", "--out", str(tmp_path / "q"), "--dry-run", *args],
                              capture_output=True, text=True, cwd=root, timeout=120)

    only_untuned = dry("--methods", "majority,dps-raw", "--set", "dps-raw.alpha=1")
    assert only_untuned.returncode == 0, only_untuned.stderr
    assert "--methods majority,dps-raw --set dps-raw.alpha=1" in only_untuned.stdout  # a --set reaches its run
    assert dry("--methods", "rag", "--set", "caa-user.scale=1").returncode == 2  # a method not in the run
    assert dry("--methods", "rag", "--set", "rag.scale=1").returncode == 2  # a setting rag does not have


def test_cli_tune_writes_tuned_json(tiny, tmp_path, monkeypatch):
    import workbench as wb

    monkeypatch.setattr(wb, "load_model", lambda *a, **k: tiny)
    assert main(["tune", "--model", "tiny-random", "--methods", "test-copier", "--grid", "test-copier.copy=0,1",
                 "--n", "6", "--out", str(tmp_path)]) == 0
    d = json.loads((tmp_path / "tuned.json").read_text())
    assert d["methods"]["test-copier"]["chosen"] == {"copy": 1.0} and d["users"]["users"] == "tune"
    grid_chart = (tmp_path / "grid-test-copier.html").read_text()
    assert 'src="https://' not in grid_chart and len(grid_chart) > 100_000  # plotly inline: it opens offline
    # one chart per tune, not one per grid point (each would carry its own copy of plotly)
    assert sorted(p.name for p in tmp_path.rglob("*.html")) == ["grid-test-copier.html"]
    assert len(list(tmp_path.rglob("results.csv"))) == 2
    assert main(["tune", "--model", "tiny-random", "--methods", "test-copier", "--grid", "dps.alpha=1",
                 "--out", str(tmp_path / "y")]) == 2  # a grid for a method not being tuned


def test_tune_methods_writes_each_choice_as_it_is_made(tiny, news, tmp_path):
    lines = []
    results = tune_methods(tiny, news, {"test-copier": {"copy": ["0", "1"]}}, tmp_path, n=3, command="notebook",
                           log=lines.append)
    assert [r.chosen for r in results] == [{"copy": 1.0}] and lines == [repr(results[0])]
    d = json.loads((tmp_path / "tuned.json").read_text())
    assert d["command"] == "notebook" and d["n"] == 3 and d["settings"] == {"max_new_tokens": 32, "k": 5, "retrieval": "bm25"}
    assert d["users"]["users"] == "tune" and load_tuned(tmp_path / "tuned.json", tiny.name) == {"test-copier": {"copy": 1.0}}
    assert (tmp_path / "grid-test-copier.html").exists()


def test_stopping_run_protocol_stops_its_running_step(tmp_path):
    # `kill <protocol>` must not leave the step running on, writing its run directory while the
    # protocol is started again (two processes appending to one outputs.jsonl)
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).parents[1]
    pid_file = tmp_path / "step.pid"
    step = [sys.executable, "-c", f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); "
                                  "time.sleep(120)"]
    driver = ("import importlib.util, sys; spec = importlib.util.spec_from_file_location('rp', sys.argv[1]); "
              "rp = importlib.util.module_from_spec(spec); spec.loader.exec_module(rp); "
              f"sys.exit(rp._run_step({step!r}))")
    protocol = subprocess.Popen([sys.executable, "-c", driver, str(root / "tools" / "run_protocol.py")])
    deadline = time.time() + 60
    while not (pid_file.exists() and pid_file.read_text()) and time.time() < deadline:
        time.sleep(0.1)
    step_pid = int(pid_file.read_text())
    protocol.send_signal(signal.SIGTERM)
    rc = protocol.wait(timeout=60)
    try:
        os.kill(step_pid, 0)
    except ProcessLookupError:
        pass  # the step is gone (and reaped)
    else:
        os.kill(step_pid, signal.SIGKILL)
        raise AssertionError("the step outlived the protocol")
    assert rc == 128 + signal.SIGTERM


def test_bench_slice_runs_the_evaluation_queries_a_table_left_out(tmp_path):
    # tools/bench_slice.py --start 2 --stop 4: exactly the 3rd and 4th evaluation queries (the ones
    # `bench --users eval --n 2` leaves out), recorded with the users
    import importlib.util
    from pathlib import Path

    from workbench.data.lamp import load_task_data
    from workbench.data.splits import split_users

    spec = importlib.util.spec_from_file_location("bench_slice", Path(__file__).parents[1] / "tools" / "bench_slice.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path / "slice"
    assert tool.main(["--task", "lamp4", "--model", "tiny-random", "--methods", "generic,rag", "--start", "2",
                      "--stop", "4", "--out", str(out), "--max-new-tokens", "4"]) == 0
    want = [ex.id for ex in split_users(load_task_data("lamp4"), "eval")][2:4]
    got = [json.loads(line)["id"] for line in (out / "outputs.jsonl").read_text().splitlines()]
    assert sorted(got) == sorted(want * 2)
    assert json.loads((out / "run.json").read_text())["users"]["queries"] == [2, 4]
    # and tools/eval_table.py --start 2 --n 2 makes the slice's table (the first two are not there)
    spec = importlib.util.spec_from_file_location("eval_table", Path(__file__).parents[1] / "tools" / "eval_table.py")
    eval_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(eval_table)
    table = ["--task", "lamp4", "--model", "tiny-random", "--saved", "none", "--methods", "generic,rag", "--runs", str(out)]
    assert eval_table.main([*table, "--start", "2", "--n", "2", "--out", str(tmp_path / "t.csv")]) == 0
    about = json.loads((tmp_path / "t.json").read_text())
    assert about["queries"] == [2, 4] and about["n_queries"] == 2
    assert eval_table.main([*table, "--n", "2", "--out", str(tmp_path / "u.csv")]) == 1  # queries 0-1: not run
    assert tool.main(["--task", "lamp4", "--methods", "rag", "--start", "4", "--stop", "2", "--out", str(out)]) == 2
    assert tool.main(["--task", "lamp4", "--methods", "rag", "--start", "0", "--stop", "100000", "--out", str(out)]) == 2
