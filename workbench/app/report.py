"""A self-contained HTML report: headings, text, tables and plotly figures on one page.

``Report`` collects sections; ``save(out_dir)`` writes ``index.html`` (plotly.js inlined
once, so it opens offline) and ``report.json`` (the model and settings it came from).
Later analyses add their own sections with the same few methods.
"""

from __future__ import annotations

import html
import json
import os
import time
from pathlib import Path
from typing import Any

import pandas as pd

from workbench._util import atomic_write_text, check_writable_dir, free_path

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.5}
h1{font-size:1.7em;margin-bottom:.2em} h2{margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.meta{color:#666;font-size:.9em} table{border-collapse:collapse;margin:1em 0;font-size:.92em}
td,th{border:1px solid #ddd;padding:.35em .7em;text-align:left;vertical-align:top} th{background:#f5f5f5}
.caption{color:#555;font-size:.92em} .out{font-family:ui-monospace,monospace;background:#f8f8f8;padding:.2em .4em}
"""


class Report:
    """An HTML report under construction. ``meta`` records the model and settings."""

    def __init__(self, title: str, meta: dict[str, Any] | None = None, intro: str = ""):
        self.title = title
        self.meta = dict(meta or {})
        self.intro = intro
        self.sections: list[tuple[str, str]] = []  # (kind, html)
        self._has_plotly = False

    def __repr__(self) -> str:
        return f"Report({self.title!r}, {len(self.sections)} parts)"

    def add_heading(self, text: str) -> "Report":
        self.sections.append(("html", f"<h2>{html.escape(text)}</h2>"))
        return self

    def add_text(self, text: str, raw_html: bool = False) -> "Report":
        body = text if raw_html else "".join(f"<p>{html.escape(p)}</p>" for p in text.split("\n\n"))
        self.sections.append(("html", body))
        return self

    def add_table(self, df: pd.DataFrame, caption: str = "", float_format: str = "{:.3f}") -> "Report":
        table = df.to_html(index=False, border=0, float_format=float_format.format, escape=True, na_rep="—")
        cap = f'<div class="caption">{html.escape(caption)}</div>' if caption else ""
        self.sections.append(("html", table + cap))
        return self

    def add_figure(self, fig: Any, caption: str = "") -> "Report":
        # plotly.js is inlined with the first figure only; the page works offline.
        div = fig.to_html(full_html=False, include_plotlyjs=not self._has_plotly, config={"displaylogo": False})
        self._has_plotly = True
        cap = f'<div class="caption">{html.escape(caption)}</div>' if caption else ""
        self.sections.append(("figure", div + cap))
        return self

    def to_html(self) -> str:
        meta = " · ".join(f"{html.escape(str(k))}: {html.escape(str(v))}" for k, v in self.meta.items())
        body = "\n".join(h for _, h in self.sections)
        intro = f"<p>{html.escape(self.intro)}</p>" if self.intro else ""
        return (
            f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{html.escape(self.title)}</h1>"
            f"<div class='meta'>{meta}</div>{intro}{body}</body></html>"
        )

    def _repr_html_(self) -> str:
        return self.to_html()

    @staticmethod
    def check_target(out_dir: str | Path, overwrite: bool = False) -> Path:
        """Raise a clear error if a report can't be saved in ``out_dir`` (a file, not writable, or
        holding an ``index.html`` workbench did not write) — before the analysis runs."""
        out = check_writable_dir(out_dir, "report directory")
        index = out / "index.html"
        if index.is_dir():
            raise IsADirectoryError(f"{index} is a directory; choose another --out directory")
        if index.exists() and not overwrite and not (out / "report.json").exists():
            raise FileExistsError(
                f"{index} exists and was not written by workbench; choose another --out "
                "directory or pass overwrite=True (--force) to replace it"
            )
        return out

    def save(self, out_dir: str | Path, overwrite: bool = False) -> Path:
        """Write ``index.html`` and ``report.json`` into ``out_dir``; returns the index path.

        An earlier workbench report there is moved to ``out_dir/previous/<time>/`` (never
        silently replaced; two saves in one second get ``<time>-2``, ...) unless
        ``overwrite=True``; a directory holding other files named ``index.html`` is refused.
        Both files are written atomically.
        """
        out = self.check_target(out_dir, overwrite)
        index, meta_file = out / "index.html", out / "report.json"
        page = self.to_html()
        record = {"title": self.title, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **self.meta}
        meta_text = json.dumps(record, indent=2, default=str)
        if index.exists() and not overwrite:
            stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(meta_file.stat().st_mtime))
            keep = _new_dir(out / "previous" / stamp)
            for f in (index, meta_file):
                os.replace(f, keep / f.name)  # same file system: a rename, never a partial copy
            self.kept_previous = keep
        else:
            self.kept_previous = None
        atomic_write_text(index, page)
        atomic_write_text(meta_file, meta_text)
        return index


def _new_dir(path: Path) -> Path:
    """Create ``path`` (or ``path-2``, ``path-3``, ... if taken, also by a process saving at the
    same moment) and return it."""
    while True:
        candidate = free_path(path)
        try:
            candidate.mkdir(parents=True)
            return candidate
        except FileExistsError:
            continue
