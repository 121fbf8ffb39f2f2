"""Build the course site: static HTML, readable without a kernel or a network.

    .venv/bin/python tools/build_site.py            # -> build/site/index.html (a few seconds)
    .venv/bin/python tools/build_site.py --out DIR

Pages: the README as the front page; every notebook in ``notebooks/`` with its committed outputs
(tables, text and interactive plotly figures); the saved results (``results/README.md`` plus
figures drawn from the saved files); the research notes and method docs in ``docs/``; an API
reference from the package's docstrings.

Why a small script and not Jupyter Book or MkDocs: it needs nothing beyond the ``test`` extra
(nbconvert, mistune and plotly are already there), so CI and an offline laptop build it the
same way, in seconds, from the executed notebooks that are committed; and it must post-process
outputs anyway — under a kernel plotly 7 emits only its mimetype
(``application/vnd.plotly.v1+json``), for which nbconvert writes no HTML, so each such output is
given a ``<div>`` and a ``Plotly.newPlot`` call here, with ``plotly.min.js`` copied from the
installed plotly package into the site (no CDN). Widget outputs (ipywidgets need a live kernel)
become a note saying so.
"""

from __future__ import annotations

import argparse
import html
import importlib
import inspect
import json
import pkgutil
import re
import shutil
import sys
import time
from pathlib import Path

import mistune
import nbformat
from nbconvert import HTMLExporter
from pygments.formatters import HtmlFormatter

ROOT = Path(__file__).resolve().parents[1]
PLOTLY_MIME = "application/vnd.plotly.v1+json"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
DOCS = ["docs/methods.md", "docs/research-notes.md", "docs/models.md", "docs/scaling.md", "docs/promises.md",
        "ARCHITECTURE.md"]

_PROGRESS = re.compile(r"\d+%\||it/s|s/it|\d+/\d+ \[")
WIDGET_NOTE = ('<div class="wb-widget-note"><b>Interactive control (ipywidgets).</b> It needs a running Python '
               'kernel, so it is not shown here: open this notebook in JupyterLab '
               '(<code>.venv/bin/jupyter lab notebooks/</code>) and run it to use it.</div>')

CSS = """
body { margin: 0; font-family: system-ui, -apple-system, "Segoe UI", sans-serif; color: #1a1a1a; }
.wb-nav { position: fixed; top: 0; left: 0; bottom: 0; width: 250px; overflow-y: auto; background: #f4f5f7;
          border-right: 1px solid #ddd; padding: 16px; box-sizing: border-box; font-size: 14px; }
.wb-nav h2 { font-size: 16px; margin: 0 0 8px; } .wb-nav h3 { font-size: 12px; text-transform: uppercase;
          color: #666; margin: 16px 0 4px; }
.wb-nav a { display: block; padding: 3px 6px; color: #1a4d8f; text-decoration: none; border-radius: 4px; }
.wb-nav a.current { background: #dde6f3; font-weight: 600; }
.wb-main { margin-left: 250px; padding: 24px 40px; max-width: 1100px; }
.wb-main table { border-collapse: collapse; margin: 8px 0; font-size: 13px; }
.wb-main th, .wb-main td { border: 1px solid #ccc; padding: 3px 8px; vertical-align: top; }
.wb-main pre { background: #f6f8fa; padding: 8px; overflow-x: auto; }
.wb-main code { font-size: 90%; }
.wb-main a { color: #1a4d8f; text-decoration: underline; }
.wb-widget-note { border-left: 4px solid #e0a800; background: #fff8e1; padding: 8px 12px; margin: 6px 0; }
.wb-api h3 { border-top: 1px solid #ddd; padding-top: 10px; font-family: monospace; font-size: 15px; }
.wb-api pre.doc { background: none; padding: 0 0 0 12px; white-space: pre-wrap; }
.wb-figure { margin: 12px 0 28px; }
.jp-Notebook { padding: 0; }
"""


def _slug(text: str) -> str:
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


class _Renderer(mistune.HTMLRenderer):
    def heading(self, text: str, level: int, **attrs) -> str:
        return f'<h{level} id="{_slug(text)}">{text}</h{level}>\n'


_markdown = mistune.create_markdown(renderer=_Renderer(escape=False), plugins=["table", "strikethrough", "url"])


class Site:
    def __init__(self, out: Path):
        self.out = out
        self.pages: list[tuple[str, str, str]] = []   # (section, title, site path)

    # --- links --------------------------------------------------------------------------------
    def site_path(self, repo_path: str) -> str | None:
        """Where a repository file lives in the site, or None when the site lacks it."""
        if repo_path == "README.md":
            return "index.html"
        for _, _, path in self.pages:
            if path == re.sub(r"\.(md|ipynb)$", ".html", repo_path):
                return path
        return None

    def fix_links(self, body: str, repo_path: str) -> str:
        """Point relative links to .md / .ipynb files at their pages; other repository files at
        nothing broken (the link is kept as plain text with the path)."""
        here = Path(repo_path).parent

        def repl(m: re.Match) -> str:
            attr, target = m.group(1), html.unescape(m.group(2))
            if re.match(r"^(https?:|mailto:|#|data:)", target):
                return m.group(0)
            path, _, anchor = target.partition("#")
            resolved = (ROOT / here / path).resolve()
            try:
                rel_repo = resolved.relative_to(ROOT).as_posix()
            except ValueError:
                return m.group(0)
            page = self.site_path(rel_repo)
            if page is None:
                return f'{attr}="#" title="{html.escape(rel_repo)} (in the repository)" data-repo-path="{html.escape(rel_repo)}"'
            from_dir = Path(self.site_path(repo_path) or repo_path).parent
            rel = Path(*[".."] * len(from_dir.parts), page).as_posix() if from_dir.parts else page
            return f'{attr}="{rel}{"#" + anchor if anchor else ""}"'

        return re.sub(r'(href)="([^"]*)"', repl, body)

    # --- pages --------------------------------------------------------------------------------
    def write(self, path: str, title: str, body: str, scripts: bool = False) -> None:
        depth = len(Path(path).parent.parts)
        up = "../" * depth
        nav = ['<nav class="wb-nav"><h2><a href="' + up + 'index.html">workbench course</a></h2>']
        section = None
        for sec, t, p in self.pages:
            if sec != section:
                nav.append(f"<h3>{html.escape(sec)}</h3>")
                section = sec
            cls = ' class="current"' if p == path else ""
            nav.append(f'<a{cls} href="{up}{p}">{html.escape(t)}</a>')
        nav.append("</nav>")
        head = [f'<meta charset="utf-8"><title>{html.escape(title)} · workbench</title>',
                '<meta name="viewport" content="width=device-width, initial-scale=1">',
                '<link rel="icon" href="data:,">',
                f'<link rel="stylesheet" href="{up}assets/jupyter.css">',
                f'<link rel="stylesheet" href="{up}assets/theme-light.css">',
                f'<link rel="stylesheet" href="{up}assets/pygments.css">',
                f'<link rel="stylesheet" href="{up}assets/site.css">']
        if scripts:
            head.append(f'<script src="{up}assets/plotly.min.js"></script>')
        page = ("<!DOCTYPE html>\n<html lang=\"en\"><head>" + "".join(head) + "</head>\n<body class=\"jp-Notebook-body\">"
                + "".join(nav) + f'<main class="wb-main">{body}</main></body></html>\n')
        target = self.out / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(page)

    def markdown_page(self, repo_path: str, title: str, extra: str = "") -> None:
        body = _markdown((ROOT / repo_path).read_text())
        self.write(self.site_path(repo_path) or "index.html", title,
                   self.fix_links(body, repo_path) + extra, scripts=bool(extra))


def _plotly_html(fig: dict, div_id: str) -> str:
    data = json.dumps(fig.get("data", []))
    # a fixed width wider than the page would be cut off: let it fit the column instead
    layout = json.dumps({k: v for k, v in fig.get("layout", {}).items() if k != "width"} | {"autosize": True})
    return (f'<div class="wb-plotly" id="{div_id}" style="width:100%;min-height:{fig.get("layout", {}).get("height", 450)}px"></div>'
            f'<script>Plotly.newPlot("{div_id}", {data}, {layout}, {{"responsive": true, "displaylogo": false}});</script>')


_DISPLAY_MATH = re.compile(r"\$\$(.+?)\$\$", re.S)
_INLINE_MATH = re.compile(r"(?<![\\$\w])\$(?![\s$])([^$\n]+?)(?<!\s)\$(?![\w$])")


def math_to_mathml(text: str) -> str:
    """LaTeX between $$ … $$ and $ … $ as MathML, which browsers draw natively (no MathJax, no
    CDN). Code spans are left alone; without ``latex2mathml`` (the ``test`` extra) the TeX stays."""
    try:
        from latex2mathml.converter import convert
    except ImportError:
        return text

    def one(tex: str, display: str) -> str:
        try:
            return convert(tex.strip(), display=display)
        except Exception:  # a construct the converter lacks: keep the TeX readable
            return f"<code>{html.escape(tex)}</code>"

    parts = re.split(r"(`[^`]*`)", text)
    for k in range(0, len(parts), 2):
        parts[k] = _DISPLAY_MATH.sub(lambda m: "\n\n" + one(m.group(1), "block") + "\n\n", parts[k])
        parts[k] = _INLINE_MATH.sub(lambda m: one(m.group(1), "inline"), parts[k])
    return "".join(parts)


def prepare_notebook(nb: nbformat.NotebookNode, stem: str) -> tuple[nbformat.NotebookNode, int, int]:
    """Give every plotly output an HTML rendering, every widget output its note, and the math MathML."""
    figures = widgets = 0
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            cell.source = math_to_mathml(cell.source)
        if cell.cell_type != "code":
            continue
        cell.outputs = [o for o in cell.get("outputs", [])   # tqdm bars: nothing to read once done
                        if not (WIDGET_MIME in o.get("data", {}) and _PROGRESS.search(o["data"].get("text/plain", "")))]
        merged: list = []
        for o in cell.outputs:   # one block per stream, as JupyterLab shows it
            if merged and o.output_type == "stream" and merged[-1].output_type == "stream" \
                    and merged[-1].name == o.name:
                merged[-1].text += o.text
            else:
                merged.append(o)
        cell.outputs = merged
        for j, out in enumerate(cell.outputs):
            data = out.get("data", {})
            if PLOTLY_MIME in data:
                figures += 1
                data["text/html"] = _plotly_html(data[PLOTLY_MIME], f"fig-{stem}-{i}-{j}")
                del data[PLOTLY_MIME]
            elif WIDGET_MIME in data or data.get("text/plain", "").startswith("Interactive control (ipywidgets)"):
                widgets += 1
                out["data"] = {"text/html": WIDGET_NOTE}
        noted = False   # one note per cell, however many controls it shows
        keep = []
        for out in cell.outputs:
            is_note = out.get("data", {}).get("text/html") == WIDGET_NOTE
            if not (is_note and noted):
                keep.append(out)
            noted = noted or is_note
        cell.outputs = keep
    return nb, figures, widgets


def notebook_body(path: Path) -> tuple[str, int, int]:
    nb = nbformat.read(path, as_version=4)
    nb, figures, widgets = prepare_notebook(nb, path.stem)
    exporter = HTMLExporter(template_name="basic")
    body, _ = exporter.from_notebook_node(nb)
    if not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"):
        body = ('<div class="wb-widget-note">This notebook has not been executed: its outputs appear once '
                '<code>tools/execute_notebooks.py</code> has run it.</div>') + body
    return body, figures, widgets


def results_figures() -> str:
    """Figures drawn from the saved result files (no model needed)."""
    import pandas as pd
    import plotly.io as pio

    from workbench.runner.compare import comparison_table, load_results
    from workbench.runner.figures import paired_figure, specificity_figure
    from workbench.science.pcs_result import PreferenceScores, heatmaps

    res = ROOT / "results"
    figs = []
    tuned = load_results(res / "lamp4-news_smollm2-135m_eval.csv")
    table = comparison_table(tuned, list(tuned.attrs["source"]["methods"]), baseline="rag")
    figs.append(("SmolLM2-135M, tuned settings, evaluation users: paired ROUGE-1 difference to rag",
                 paired_figure(table, title="SmolLM2-135M, evaluation users: paired ROUGE-1 difference to rag")))
    gemma = load_results(res / "lamp4-news_gemma3-270m_eval.csv")
    g_table = comparison_table(gemma, list(gemma.attrs["source"]["methods"]), baseline="rag")
    figs.append(("Gemma 3 270M, tuned settings, evaluation users",
                 paired_figure(g_table, title="Gemma 3 270M, evaluation users: paired ROUGE-1 difference to rag")))
    figs.append(("Preference heads of SmolLM2-135M: plain and contrastive PCS (exact)",
                 heatmaps(PreferenceScores.load(res / "pcs_lamp4-news_smollm2-135m.json"),
                          PreferenceScores.load(res / "pcs_lamp4-news_smollm2-135m_contrast-history.json"),
                          titles=["plain PCS (exact)", "contrastive PCS, history (exact)"])))
    for model in ("smollm2-135m", "gemma3-270m"):
        figs.append((f"Specificity on held-out users ({model})",
                     specificity_figure(pd.read_csv(res / f"specificity_{model}.csv"))))
    parts = ['<h2 id="figures">Figures from the saved results</h2>',
             "<p>Drawn by <code>tools/build_site.py</code> from the files in <code>results/</code> with the "
             "functions of <code>workbench.runner.figures</code>.</p>"]
    for k, (title, fig) in enumerate(figs):
        parts.append(f'<div class="wb-figure"><h3>{html.escape(title)}</h3>'
                     + _plotly_html(json.loads(pio.to_json(fig, validate=False)), f"fig-results-{k}") + "</div>")
    return "".join(parts)


def api_reference() -> str:
    """Every public module, class and function of the package, with its signature and docstring."""
    import workbench

    parts = ["<h1>API reference</h1>",
             "<p>Generated from the docstrings. The top-level <code>import workbench as wb</code> exposes: "
             + ", ".join(f"<code>{n}</code>" for n in sorted(getattr(workbench, "__all__", []))) + ".</p>"]
    layers = ["core", "data", "science", "methods", "runner", "app"]   # ARCHITECTURE.md, bottom up

    def order(name: str) -> tuple:
        part = name.split(".")[1]
        return (layers.index(part) if part in layers else len(layers), name)

    modules = sorted((m.name for m in pkgutil.walk_packages(workbench.__path__, "workbench.")
                      if not any(p.startswith("_") for p in m.name.split("."))), key=order)
    parts.append("<ul>" + "".join(f'<li><a href="#{m}">{m}</a></li>' for m in modules) + "</ul>")
    for name in modules:
        try:
            mod = importlib.import_module(name)
        except Exception as exc:  # an optional dependency missing: say so, keep going
            parts.append(f'<h2 id="{name}">{name}</h2><p><i>not importable here: {html.escape(str(exc))}</i></p>')
            continue
        parts.append(f'<h2 id="{name}">{name}</h2><pre class="doc">{html.escape(inspect.getdoc(mod) or "")}</pre>')
        public = getattr(mod, "__all__", None) or [n for n in vars(mod) if not n.startswith("_")]
        for attr in public:
            obj = getattr(mod, attr, None)
            if not (inspect.isclass(obj) or inspect.isfunction(obj)) or getattr(obj, "__module__", None) != name:
                continue
            try:
                sig = str(inspect.signature(obj))
            except (TypeError, ValueError):
                sig = ""
            kind = "class " if inspect.isclass(obj) else ""
            parts.append(f'<h3 id="{name}.{attr}">{kind}{attr}{html.escape(sig)}</h3>'
                         f'<pre class="doc">{html.escape(inspect.getdoc(obj) or "")}</pre>')
            if inspect.isclass(obj):
                for meth, fn in vars(obj).items():
                    if meth.startswith("_") or not (inspect.isfunction(fn) or isinstance(fn, property)):
                        continue
                    doc = inspect.getdoc(fn) or ""
                    sig = "" if isinstance(fn, property) else html.escape(str(inspect.signature(fn)))
                    parts.append(f'<p><code><b>{attr}.{meth}</b>{sig}</code></p><pre class="doc">{html.escape(doc)}</pre>')
    return '<div class="wb-api">' + "".join(parts) + "</div>"


def build(out: Path) -> dict:
    t0 = time.time()
    if out.exists():
        shutil.rmtree(out)
    (out / "assets").mkdir(parents=True)
    import plotly

    shutil.copy(Path(plotly.__file__).parent / "package_data" / "plotly.min.js", out / "assets" / "plotly.min.js")
    lab_static = Path(sys.prefix) / "share" / "jupyter" / "nbconvert" / "templates" / "lab" / "static"
    for src, dst in (("index.css", "jupyter.css"), ("theme-light.css", "theme-light.css")):
        css = (lab_static / src).read_text() if (lab_static / src).exists() else ""
        (out / "assets" / dst).write_text(re.sub(r"@import[^;]*https?://[^;]*;", "", css))
    (out / "assets" / "pygments.css").write_text(HtmlFormatter(style="default").get_style_defs(".highlight"))
    (out / "assets" / "site.css").write_text(CSS)

    site = Site(out)
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    site.pages.append(("Start", "Front page (README)", "index.html"))
    for nb in notebooks:
        title = nbformat.read(nb, as_version=4).cells[0].source.splitlines()[0].lstrip("# ").strip()
        site.pages.append(("Course notebooks", title, f"notebooks/{nb.stem}.html"))
    site.pages.append(("Results", "Saved results and figures", "results/README.html"))
    for doc in DOCS:
        title = (ROOT / doc).read_text().splitlines()[0].lstrip("# ").strip()
        site.pages.append(("Notes and docs", title, re.sub(r"\.md$", ".html", doc)))
    site.pages.append(("Reference", "API reference", "api.html"))

    report = {"pages": {}, "figures": 0, "widgets": 0}
    site.markdown_page("README.md", "workbench")
    for nb in notebooks:
        body, figures, widgets = notebook_body(nb)
        path = f"notebooks/{nb.stem}.html"
        site.write(path, nb.stem, site.fix_links(body, f"notebooks/{nb.name}"), scripts=True)
        report["pages"][path] = figures
        report["figures"] += figures
        report["widgets"] += widgets
    results_extra = results_figures()
    report["pages"]["results/README.html"] = results_extra.count('class="wb-plotly"')
    report["figures"] += report["pages"]["results/README.html"]
    site.markdown_page("results/README.md", "Saved results", extra=results_extra)
    for doc in DOCS:
        site.markdown_page(doc, Path(doc).stem)
    site.write("api.html", "API reference", api_reference())
    for path in ("index.html", "api.html", *[re.sub(r"\.md$", ".html", d) for d in DOCS]):
        report["pages"].setdefault(path, 0)
    report["seconds"] = round(time.time() - t0, 1)
    (out / "site.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "site")
    args = parser.parse_args()
    report = build(args.out)
    print(f"{len(report['pages'])} pages, {report['figures']} figures, {report['widgets']} widget notes "
          f"in {report['seconds']} s -> {args.out / 'index.html'}")


if __name__ == "__main__":
    main()
