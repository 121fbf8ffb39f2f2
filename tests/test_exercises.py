"""Every course exercise (``notebooks/exercises``): its check passes the worked solution and
fails each common mistake it lists, with a message (not a crash). Model-based checks run on
the tiny random model; the notebooks run them on SmolLM2."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "notebooks"))
import exercises  # noqa: E402

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.py"))


ARTICLE = "user: an article about ants, their nests and the gardens of the city in summer"


@pytest.fixture(scope="module")
def model_context(tiny):
    profile = "user: an article about bees\nassistant: Bees Are Back In Town"
    return {
        "pcs_one_head": dict(model=tiny, prompt=profile + "\nuser: an article about ants", target="Ants Are Back",
                             heads=[(0, 0), (1, 1)]),
        "contrastive_pcs_one_head": dict(model=tiny, hist_prompt=profile + "\n" + ARTICLE, plain_prompt=ARTICLE,
                                         target="Ants Are Back", heads=[(0, 0), (1, 1)]),
    }


def _context(ex, model_context):
    return model_context[ex.name] if ex.needs_model else {}


@pytest.mark.parametrize("name", sorted(exercises.EXERCISES))
def test_solution_passes(name, model_context, capsys):
    ex = exercises.EXERCISES[name]
    assert exercises.check(name, ex.solution, **_context(ex, model_context)), capsys.readouterr().out


@pytest.mark.parametrize("name,mistake", [(n, m) for n, ex in sorted(exercises.EXERCISES.items()) for m in ex.mistakes])
def test_common_mistake_fails_with_a_hint(name, mistake, model_context, capsys):
    ex = exercises.EXERCISES[name]
    assert not exercises.check(name, ex.mistakes[mistake], **_context(ex, model_context))
    out = capsys.readouterr().out
    assert out.startswith("✘") and "raised" not in out, out


@pytest.mark.parametrize("name", sorted(exercises.EXERCISES))
def test_untouched_stub_is_not_done_yet(name, capsys):
    def stub(*args, **kwargs):
        return None  # your code here

    assert not exercises.check(name, stub)
    assert "not done yet" in capsys.readouterr().out


def test_solution_is_printed_only_when_asked(capsys):
    exercises.solution("dps_scores")
    assert "def _dps_scores" in capsys.readouterr().out


def test_every_notebook_has_two_exercises_with_their_stubs():
    for py in NOTEBOOKS:
        number = py.name.split("_")[0]
        names = [n for n, ex in exercises.EXERCISES.items() if ex.notebook == number]
        assert len(names) >= 2, f"{py.name}: {len(names)} exercises"
        text = py.read_text()
        for n in names:
            assert f'check("{n}"' in text and f'solution("{n}")' in text, f"{py.name} lacks the stub of {n}"
