"""The course site builds offline from the committed notebooks (``tools/build_site.py``): every
notebook is a page, every plotly output became a figure, nothing is fetched from the network.
The browser check of the pages is ``tests_browser/test_site_render.py``."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import build_site  # noqa: E402


def test_site_builds_offline_with_every_notebook_and_figure(tmp_path, no_network):
    report = build_site.build(tmp_path)
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        page = tmp_path / "notebooks" / f"{nb.stem}.html"
        assert page.exists(), nb.name
        cells = nbformat.read(nb, as_version=4).cells
        plotly = sum(build_site.PLOTLY_MIME in o.get("data", {}) for c in cells for o in c.get("outputs", []))
        assert report["pages"][f"notebooks/{nb.stem}.html"] == plotly, nb.name
        assert page.read_text().count('class="wb-plotly"') == plotly, nb.name
    assert (tmp_path / "assets" / "plotly.min.js").stat().st_size > 1_000_000
    for page in tmp_path.rglob("*.html"):
        text = page.read_text()
        remote = re.findall(r'<(?:script|link|img)[^>]+(?:src|href)="(https?://[^"]+)"', text)
        assert not remote, f"{page.relative_to(tmp_path)} loads {remote[:3]}"
    assert report["pages"]["results/README.html"] >= 4
    assert "preference_scores" in (tmp_path / "api.html").read_text()


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading (as tests/test_readme.py computes it)."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading.strip().lower())
    return "".join(c for c in text if c.isalnum() or c in "- ").replace(" ", "-")


def test_notebooks_point_only_inside_the_repository():
    """A student reads the notebooks without the project's private notes: every relative link
    resolves to a file of the repository (and an existing heading), and no cell names a path
    outside it."""
    problems = []
    for py in sorted((ROOT / "notebooks").glob("*.py")):
        text = py.read_text()
        for bad in ("shared/", "closing notes", "/work/", "~/research"):
            if bad in text:
                problems.append(f"{py.name} mentions {bad!r}")
        for link in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z][a-z0-9+.-]*:", link):
                continue
            target, _, anchor = link.partition("#")
            file = (py.parent / target).resolve()
            if not file.is_relative_to(ROOT) or not file.exists():
                problems.append(f"{py.name}: {link} (no such file in the repository)")
            elif anchor and file.suffix == ".md":
                body = re.sub(r"```.*?```", "", file.read_text(), flags=re.S)
                if anchor not in {_slug(h) for h in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", body, flags=re.M)}:
                    problems.append(f"{py.name}: {link} (no such heading)")
    assert not problems, "\n".join(problems)
