"""The README's Python snippets use names that exist, and its first snippet runs as written."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def _names_used(code: str) -> list[tuple[str, str]]:
    """(module, name) for each ``from workbench... import name`` and ``wb.name`` in a snippet."""
    found = []
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("workbench"):
            found += [(node.module, a.name) for a in node.names]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "wb":
            found.append(("workbench", node.attr))
    return found


def test_readme_snippets_name_only_what_exists():
    used = [pair for code in _blocks() for pair in _names_used(code)]
    assert len(used) > 10, "the README's snippets should show the API"
    missing = [f"{mod}.{name}" for mod, name in used if not hasattr(importlib.import_module(mod), name)]
    assert not missing, f"the README uses names the package does not have: {missing}"


@pytest.mark.real
def test_first_readme_snippet_runs(smol, monkeypatch):
    import workbench as wb

    code = _blocks()[0]
    assert "wb.load_model()" in code
    monkeypatch.setattr(wb, "load_model", lambda *a, **k: smol)  # the session's model: no second load
    scope: dict = {}
    exec(compile(code, "README.md (In Python)", "exec"), scope)  # noqa: S102 - our own documentation
    assert isinstance(scope["logits"], object) and scope["mask"].heads
