"""Execute the course notebooks in place, so the committed ``.ipynb`` files carry their outputs
(tables, text and plotly figures) and can be read before they are run.

    .venv/bin/python tools/execute_notebooks.py                      # every notebook, one at a time
    .venv/bin/python tools/execute_notebooks.py notebooks/03_token_effects.ipynb

Each notebook runs in its own kernel started in ``notebooks/`` (as nbval and JupyterLab do),
then is cleaned: no saved widget state (``metadata.widgets`` would be stale the moment the kernel
stops; widget outputs keep their text fallback and the site says they need a kernel), no
per-cell timing metadata. The wall time of each run is printed and written to
``notebooks/timings.json`` (the headers quote it).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import nbformat
from nbconvert.preprocessors import ExecutePreprocessor

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
WIDGET_TEXT = "Interactive control (ipywidgets): run this cell in a live kernel to use it."
_PROGRESS = re.compile(r"\d+%\||it/s|s/it")


def clean(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Drop what is stale once the kernel stops: the widget state, progress bars, per-cell timing.
    A widget output (its model died with the kernel) becomes a line saying to run the cell."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type != "code":
            continue
        outputs = []
        for out in cell.outputs:
            data = out.get("data", {})
            if WIDGET_MIME in data:
                if _PROGRESS.search(data.get("text/plain", "")):
                    continue
                if any(WIDGET_TEXT in o.get("data", {}).get("text/plain", "") for o in outputs):
                    continue
                out = nbformat.v4.new_output("display_data", data={"text/plain": WIDGET_TEXT})
            outputs.append(out)
        cell.outputs = outputs
    return nb


def execute(path: Path, timeout: int = 1800) -> float:
    nb = nbformat.read(path, as_version=4)
    t0 = time.time()
    # The widget state is recorded while running (nbclient needs it for Output widgets) and dropped by clean().
    ExecutePreprocessor(timeout=timeout, kernel_name="python3", store_widget_state=True).preprocess(
        nb, {"metadata": {"path": str(path.parent)}})
    seconds = time.time() - t0
    nbformat.write(clean(nb), path)
    return seconds


def main(paths: list[str]) -> None:
    os.environ.setdefault("TQDM_DISABLE", "1")   # no progress-bar widgets in the saved outputs
    targets = [Path(p).resolve() for p in paths] or sorted(NOTEBOOKS.glob("*.ipynb"))
    timings_file = NOTEBOOKS / "timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    for path in targets:
        seconds = execute(path)
        timings[path.stem] = round(seconds)
        print(f"{path.name}: {seconds:.0f} s", flush=True)
        timings_file.write_text(json.dumps(dict(sorted(timings.items())), indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
