"""The command line and the demo report."""

from __future__ import annotations

import json
import re

import pytest

from workbench.app.cli import main
from workbench.app.demo import run_demo
from workbench.core.heads import layer_mask_effects
import workbench as wb


def test_models_lists_known_names_and_availability(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("smollm2-135m", "gemma3-270m", "tiny-random"):
        assert name in out
    assert "offline" in out


def test_demo_writes_a_self_contained_report_and_keeps_the_previous_one(tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["demo", "--model", "tiny-random", "--out", str(out), "--max-new-tokens", "8"]) == 0
    printed = capsys.readouterr().out
    # every section announces itself, numbered, with its time; the headlines come right after step 1
    assert [f"[{i}/5]" in printed for i in range(1, 6)] == [True] * 5
    assert printed.index("generic:") < printed.index("[2/5]") and "SteerX" in printed and "Fints" in printed
    html = (out / "index.html").read_text()
    assert "plotly" in html.lower() and "Generic vs personalized output" in html
    # the method comparison comes from the saved benchmark results, with the baseline named
    assert "How the methods compare (all users)" in html and "ROUGE-1 minus rag" in html
    # rag's own row has no difference to itself: a dash, not NaN; win counts are whole numbers
    comparison = html[html.index("How the methods compare"):]
    assert "<td>NaN</td>" not in comparison and "<td>—</td>" in comparison
    assert not re.search(r"<td>\d+\.0+</td>", comparison)
    assert not re.search(r"<script[^>]*\bsrc=", html)  # plotly.js is inlined: the page opens offline
    assert len(html) > 1_000_000  # (plotly.js itself is ~4.5 MB)
    meta = json.loads((out / "report.json").read_text())
    assert meta["model"] == "tiny-random" and meta["masking"] == "zero"
    assert main(["demo", "--model", "tiny-random", "--out", str(out), "--max-new-tokens", "8"]) == 0
    kept = list((out / "previous").iterdir())
    assert len(kept) == 1 and (kept[0] / "index.html").read_text() == html


def test_demo_refuses_to_overwrite_a_foreign_index(tmp_path, capsys):
    (tmp_path / "index.html").write_text("my own page")
    assert main(["demo", "--model", "tiny-random", "--out", str(tmp_path), "--max-new-tokens", "8"]) == 2
    assert "not written by workbench" in capsys.readouterr().err
    assert (tmp_path / "index.html").read_text() == "my own page"


def test_shared_options_are_declared_once():
    from workbench.app.cli import build_parser
    from workbench.data.retrieval import RETRIEVALS

    commands = build_parser()._subparsers._group_actions[0].choices
    for flag in ("--task", "--data", "--split", "--model", "--retrieval", "--max-new-tokens", "--device", "--dtype"):
        found = [a for c in commands.values() for a in c._actions if flag in a.option_strings]
        assert len(found) >= 2 and len({(a.default, a.type, a.help, a.choices) for a in found}) == 1, flag
    retrieval = next(a for a in commands["bench"]._actions if "--retrieval" in a.option_strings)
    assert tuple(retrieval.choices) == RETRIEVALS


def test_unknown_model_is_a_clear_error_not_a_traceback(capsys):
    assert main(["demo", "--model", "no-such-model"]) == 2
    err = capsys.readouterr().err
    assert "unknown model" in err and "smollm2-135m" in err


def test_layer_effects_reuse_matches_full_masked_forward(tiny):
    for how in ("zero", "uniform"):
        df = layer_mask_effects(tiny, "the cat sat on", "the mat", how=how, progress=False)
        assert list(df.columns) == ["layer", "logp", "logp_masked", "drop"]
        for layer in range(tiny.n_layers):
            with wb.mask_heads(tiny, [(layer, h) for h in range(tiny.n_heads)], how=how):
                full = -tiny.nll("the cat sat on", "the mat")
            assert df.logp_masked[layer] == pytest.approx(full, abs=1e-5)
        assert df.logp.iloc[0] == pytest.approx(-tiny.nll("the cat sat on", "the mat"), abs=1e-5)


@pytest.mark.real
def test_demo_on_the_default_model_personalizes(smol):
    result = run_demo(smol, progress=False)
    assert result.personalized and result.generic
    assert result.personalized != result.generic
    # the example user writes "Why ... (And ...)" headlines; the history should carry that style
    assert result.personalized.startswith("Why")
    assert len(result.effects) == smol.n_layers
    assert result.effects["drop"].max() > 0.1
    assert {"drop", "drop_generic"} <= set(result.effects.columns)
    # preference heads on the user's history, and the DPS headline, are part of the report
    assert result.scores is not None and result.scores.matrix.shape == (smol.n_layers, smol.n_heads)
    assert result.scores.frame["pcs"].max() > 0
    assert result.dps
    # the DPS row names the `dps` method's settings and its heads: the top share of the demo's PCS (issue 34)
    from workbench.methods.dps import Dps

    d = Dps()
    (row,) = [p for p in result.outputs()["prompt"] if "DPS" in p]
    n = len(result.scores.top_percent(d.top_percent))
    assert f"α {d.alpha:g}," in row and f"top {d.top_percent:g}% = {n} of {smol.n_layers * smol.n_heads} heads" in row
    assert row.endswith(", ".join(f"L{l}H{h}" for l, h in result.scores.top_percent(d.top_percent)))
    page = result.report.to_html()
    for section in ("Preference heads, one by one", "Token effects and SteerX steering", "Fints: steered vs generic",
                    "How the methods compare (all users)"):
        assert section in page, f"demo report lacks its {section!r} section"


def test_heads_command_saves_scores_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "heads"
    assert main(["heads", "--model", "tiny-random", "--n", "3", "--out", str(out), "--how", "zero"]) == 0
    from workbench.science.pcs_result import PreferenceScores

    scores = PreferenceScores.load(out / "scores.json", model="tiny-random")
    assert scores.meta["n_examples"] == 3 and scores.meta["how"] == "zero"
    assert (out / "heatmap.html").stat().st_size > 100_000 and (out / "heads.csv").exists()
    assert "L" in capsys.readouterr().out
    assert main(["heads", "--model", "tiny-random", "--n", "3", "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
