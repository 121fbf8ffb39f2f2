"""The README and the docs it links to stay honest: their Python snippets use names that exist,
the README's first snippet runs as written, every relative link points at a file (and heading)
that exists, and the README's test command is the one CI runs."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# the front page and the pages beside it that carry code and links
DOCS = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "results" / "README.md", ROOT / "ARCHITECTURE.md",
        ROOT / "CHANGELOG.md", ROOT / "notebooks" / "README.md"]


def _blocks(path: Path = README) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)


def _names_used(code: str) -> list[tuple[str, str]]:
    """(module, name) for each ``from workbench... import name`` and ``wb.name`` in a snippet."""
    found = []
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("workbench"):
            found += [(node.module, a.name) for a in node.names]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "wb":
            found.append(("workbench", node.attr))
    return found


def _missing(used: list[tuple[str, str]]) -> list[str]:
    return [f"{mod}.{name}" for mod, name in used if not hasattr(importlib.import_module(mod), name)]


def test_readme_snippets_name_only_what_exists():
    used = [pair for code in _blocks() for pair in _names_used(code)]
    assert len(used) > 10, "the README's snippets should show the API"
    missing = _missing(used)
    assert not missing, f"the README uses names the package does not have: {missing}"


@pytest.mark.parametrize("doc", [d for d in DOCS if d != README and d.exists()], ids=lambda d: str(d.relative_to(ROOT)))
def test_doc_snippets_name_only_what_exists(doc):
    missing = _missing([pair for code in _blocks(doc) for pair in _names_used(code)])
    assert not missing, f"{doc.relative_to(ROOT)} uses names the package does not have: {missing}"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces -> hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading.strip().lower())
    return "".join(c for c in text if c.isalnum() or c in "- ").replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    return {_slug(h) for h in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", text, flags=re.M)}


def _relative_links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)  # code is not a link
    text = re.sub(r"`[^`\n]*`(?!\])", "", text)  # nor inline code outside a link's text
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t)]  # http:, https:, mailto:


def test_readme_links_to_each_doc():
    links = {link.split("#")[0] for link in _relative_links(README)}
    for doc in DOCS[1:]:
        assert str(doc.relative_to(ROOT)) in links, f"the README should link to {doc.relative_to(ROOT)}"


@pytest.mark.parametrize("doc", [d for d in DOCS if d.exists()], ids=lambda d: str(d.relative_to(ROOT)))
def test_relative_links_point_at_existing_files(doc):
    broken = []
    for link in _relative_links(doc):
        target, _, anchor = link.partition("#")
        file = (doc.parent / target).resolve() if target else doc
        if not file.exists():
            broken.append(f"{link} (no such file)")
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            broken.append(f"{link} (no heading with that anchor in {file.relative_to(ROOT)})")
    assert not broken, f"{doc.relative_to(ROOT)} has broken links: {broken}"


def test_readme_is_a_front_page():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= 250, (f"README.md has {lines} lines: keep it a front page; result tables go to results/README.md, "
                          "guides and notes to docs/")


def test_readme_test_command_is_what_ci_runs():
    setup = re.search(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S).group(1)
    commands = [line for line in setup.splitlines() if line.strip() and not line.startswith("#")]
    assert commands[0] == "./install.sh && .venv/bin/workbench demo", commands
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert commands[1] in ci.splitlines(), f".ci/run should run exactly the README's test command {commands[1]!r}"


@pytest.mark.real
def test_first_readme_snippet_runs(smol, monkeypatch):
    import workbench as wb

    code = _blocks()[0]
    assert "wb.load_model()" in code
    monkeypatch.setattr(wb, "load_model", lambda *a, **k: smol)  # the session's model: no second load
    scope: dict = {}
    exec(compile(code, "README.md (In Python)", "exec"), scope)  # noqa: S102 - our own documentation
    assert isinstance(scope["logits"], object) and scope["mask"].heads
