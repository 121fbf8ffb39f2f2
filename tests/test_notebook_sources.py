"""Each tutorial notebook is a pair: ``notebooks/NN_name.py`` (jupytext percent format, the
source you edit and review) and ``notebooks/NN_name.ipynb`` (the same cells plus the outputs
nbval checks). These tests fail when one of the two was edited without syncing the other.

See ``notebooks/README.md`` for the editing workflow.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import nbformat
import pytest

try:
    import jupytext
except ImportError as exc:  # a hard failure, not a skip: CI must notice the missing check
    raise ImportError("tests/test_notebook_sources.py needs jupytext: pip install -e '.[test]'") from exc

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
SCRIPTS = sorted(NOTEBOOK_DIR.glob("*.py"))
FORMATS = "ipynb,py:percent"


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _fix_hint(ipynb: Path) -> str:
    py = ipynb.with_suffix(".py")
    return (
        f"To fix, sync the pair (outputs in the .ipynb are kept):\n"
        f"  .py is the version you want:    jupytext --to ipynb --update {_rel(py)}\n"
        f"  .ipynb is the version you want: jupytext --to py:percent {_rel(ipynb)}\n"
        f"  (or `jupytext --sync {_rel(ipynb)}`, which takes the inputs of the more recently modified file)\n"
        f"then re-execute the notebook if code changed (notebooks/README.md)."
    )


def _cell_diff(a: str, b: str, name_a: str, name_b: str) -> str:
    lines = difflib.unified_diff(a.splitlines(), b.splitlines(), name_a, name_b, lineterm="", n=2)
    return "\n".join(lines)


def test_there_are_notebooks():
    assert NOTEBOOKS, f"no notebooks found in {_rel(NOTEBOOK_DIR)}"


@pytest.mark.parametrize("ipynb", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_matches_its_script(ipynb: Path):
    py = ipynb.with_suffix(".py")
    if not py.exists():
        pytest.fail(f"{_rel(ipynb)} has no paired script {_rel(py)}. Create it with:\n"
                    f"  jupytext --set-formats {FORMATS} {_rel(ipynb)}", pytrace=False)
    nb = nbformat.read(ipynb, as_version=4)
    text = jupytext.read(py)

    for path, meta in ((ipynb, nb.metadata), (py, text.metadata)):
        formats = meta.get("jupytext", {}).get("formats")
        if formats != FORMATS:
            pytest.fail(f"{_rel(path)}: jupytext pairing is {formats!r}, expected {FORMATS!r}. Fix with:\n"
                        f"  jupytext --set-formats {FORMATS} {_rel(path)}", pytrace=False)

    want = [(c.cell_type, c.source) for c in nb.cells]
    got = [(c.cell_type, c.source) for c in text.cells]
    if want == got:
        return
    i = next((j for j, (w, g) in enumerate(zip(want, got)) if w != g), min(len(want), len(got)))
    lines = [f"{_rel(py)} and {_rel(ipynb)} differ: {len(got)} vs {len(want)} cells, first difference at cell {i} "
             f"(0-based, counting markdown and code cells)."]
    if i < len(want) and i < len(got):
        (wt, ws), (gt, gs) = want[i], got[i]
        if wt != gt:
            lines.append(f"cell {i} is {gt!r} in the .py but {wt!r} in the .ipynb")
        if ws != gs:
            lines.append(_cell_diff(ws, gs, f"{ipynb.name} cell {i}", f"{py.name} cell {i}"))
    else:
        extra, where = (got[i], py.name) if len(got) > len(want) else (want[i], ipynb.name)
        lines.append(f"only {where} has cell {i} ({extra[0]}): {extra[1][:200]!r}")
    lines.append(_fix_hint(ipynb))
    pytest.fail("\n".join(lines), pytrace=False)


@pytest.mark.parametrize("py", SCRIPTS, ids=lambda p: p.name)
def test_script_has_its_notebook(py: Path):
    ipynb = py.with_suffix(".ipynb")
    if not ipynb.exists():
        pytest.fail(f"{_rel(py)} has no paired notebook {_rel(ipynb)} (nbval runs the .ipynb, so the tutorial "
                    f"would never be tested). Create it, then execute it as notebooks/README.md says:\n"
                    f"  jupytext --set-formats {FORMATS} --set-kernel python3 {_rel(py)}", pytrace=False)
