"""The notebooks as a person sees them: run in JupyterLab, in headless Chromium.

nbval (run before this, see ``testpaths``) checks that every notebook runs and that its
checked numbers hold. This checks what nbval cannot: that the plotly figures and the
ipywidgets views actually *render* in the browser (a figure whose JSON is fine but whose
JavaScript fails, or a widget showing "Error displaying widget", passes nbval).

Each notebook is opened in a real JupyterLab server, all cells are run from the browser,
and then: no cell raised, every plotly output drew its SVG, every widget output drew a
view. Screenshots of the top of the notebook and of each figure / widget go to
``$WORKBENCH_SCREENSHOTS`` (default ``.screenshots/`` in the repository).

Needs Debian's ``chromium`` and ``chromium-driver`` and the ``selenium`` package, which
``./install.sh test`` installs; without them this test fails (it does not skip) so a CI
machine that lacks a browser is noticed.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SHOTS = Path(os.environ.get("WORKBENCH_SCREENSHOTS", ROOT / ".screenshots"))
RUN_TIMEOUT = float(os.environ.get("WORKBENCH_NOTEBOOK_TIMEOUT", 900))

# Everything the page knows, read in one call: per code cell, its output types, whether it
# has run, and what was drawn for it.
_STATE_JS = """
if (!window.jupyterapp || !window.jupyterapp.shell) { return null; }
const nb = window.jupyterapp.shell.currentWidget;
if (!nb || !nb.content || !nb.sessionContext || !nb.sessionContext.session) { return null; }
const kernel = nb.sessionContext.session.kernel;
const cells = nb.content.widgets.filter(c => c.model.type === 'code').map(c => ({
  count: c.model.executionCount,
  outputs: c.model.outputs.toJSON().map(o => o.output_type === 'error' ? 'error:' + o.ename + ': ' + o.evalue
                                        : Object.keys(o.data || {}).join(',') || o.output_type),
  plotly_svgs: c.node.querySelectorAll('.js-plotly-plot .main-svg').length,
  widget_views: c.node.querySelectorAll('.jp-OutputArea-output .widget-box, .jp-OutputArea-output .jupyter-widgets')
                  .length,
  widget_errors: Array.from(c.node.querySelectorAll('.jp-OutputArea-output'))
                  .filter(n => /Error displaying widget|Error rendering output/.test(n.textContent)).length,
}));
return {kernel: kernel ? kernel.status : 'none', busy: nb.sessionContext.isBusy ?? null, cells: cells};
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server over a copy of the notebooks (so nothing in the repository is
    written), cells not virtualised so every output is in the page."""
    if shutil.which("chromium") is None or shutil.which("chromedriver") is None:
        pytest.fail("Chromium and chromedriver are needed: run ./install.sh test "
                    "(apt-get install chromium chromium-driver)")
    root = tmp_path_factory.mktemp("lab")
    import nbformat

    for nb in NOTEBOOKS:  # without their committed outputs: every output on the page is from this run
        node = nbformat.read(nb, as_version=4)
        for cell in node.cells:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        nbformat.write(node, root / nb.name)
    shutil.copytree(ROOT / "notebooks" / "exercises", root / "exercises",
                    ignore=shutil.ignore_patterns("__pycache__"))  # the notebooks import their checks
    settings = root / "_settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    news = root / "_settings" / "@jupyterlab" / "apputils-extension"
    news.mkdir(parents=True)  # no "get notified about Jupyter news?" toast over the screenshots
    (news / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
    port, token = _free_port(), secrets.token_hex(16)
    log = open(root / "_lab.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--allow-root",
         f"--LabApp.user_settings_dir={root / '_settings'}", f"--LabApp.workspaces_dir={root / '_ws'}",
         "--LabApp.expose_app_in_browser=True", "--ServerApp.disable_check_xsrf=True"],
        stdout=log, stderr=subprocess.STDOUT, cwd=root, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail("JupyterLab did not start:\n" + (root / "_lab.log").read_text()[-3000:])
            time.sleep(0.5)
    yield base, token, root
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000",
                "--disable-gpu"):
        opts.add_argument(arg)
    opts.binary_location = shutil.which("chromium")
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    yield driver
    driver.quit()


def _wait_for(driver, what: str, fn, timeout: float, every: float = 1.0):
    deadline = time.time() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def _shoot(driver, element, path: Path) -> None:
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
    time.sleep(0.5)  # let plotly finish its transition after scrolling
    element.screenshot(str(path))


@pytest.mark.browser
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[nb.stem for nb in NOTEBOOKS])
def test_notebook_renders_in_jupyterlab(notebook, lab, browser):
    from selenium.webdriver.common.by import By

    base, token, root = lab
    shots = SHOTS / notebook.stem
    shutil.rmtree(shots, ignore_errors=True)
    shots.mkdir(parents=True)
    browser.get(f"{base}/lab/tree/{notebook.name}?token={token}&reset")
    _wait_for(browser, "JupyterLab to open the notebook with a kernel",
              lambda: (s := browser.execute_script(_STATE_JS)) and s["kernel"] == "idle", 120)
    n_code = len(browser.execute_script(_STATE_JS)["cells"])
    browser.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells');")
    t0 = time.time()

    def finished():
        s = browser.execute_script(_STATE_JS)
        done = s and s["kernel"] == "idle" and all(c["count"] is not None for c in s["cells"])
        errored = s and any(o.startswith("error:") for c in s["cells"] for o in c["outputs"])
        return s if (done or errored) else None

    state = _wait_for(browser, f"{notebook.name} to run", finished, RUN_TIMEOUT, every=2.0)
    time.sleep(2)  # figures and widgets draw after the kernel goes idle
    state = browser.execute_script(_STATE_JS)
    seconds = time.time() - t0
    browser.save_screenshot(str(shots / "00_top.png"))
    (shots / "state.json").write_text(json.dumps({"seconds": round(seconds, 1), **state}, indent=1))

    errors = [o for c in state["cells"] for o in c["outputs"] if o.startswith("error:")]
    assert not errors, f"{notebook.name} raised in JupyterLab: {errors}"
    assert len(state["cells"]) == n_code

    cells = browser.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-CodeCell")
    plotly_cells = [i for i, c in enumerate(state["cells"]) if any("plotly" in o for o in c["outputs"])]
    widget_cells = [i for i, c in enumerate(state["cells"]) if any("widget-view" in o for o in c["outputs"])]
    for i in plotly_cells:
        assert state["cells"][i]["plotly_svgs"] > 0, \
            f"{notebook.name}: code cell {i + 1} has a plotly figure but nothing was drawn"
    for i in widget_cells:
        assert state["cells"][i]["widget_errors"] == 0, f"{notebook.name}: code cell {i + 1}: widget failed to display"
    # A finished progress bar may close its widget (tqdm's leave=False), leaving an empty
    # output: so views are required per notebook, and errors per cell.
    drawn = [i for i in widget_cells if state["cells"][i]["widget_views"] > 0]
    assert not widget_cells or drawn, f"{notebook.name}: widget outputs in cells {widget_cells} but no view was drawn"
    widget_cells = drawn
    for k, i in enumerate(plotly_cells[:4]):
        _shoot(browser, cells[i].find_element(By.CSS_SELECTOR, ".jp-OutputArea"), shots / f"plotly_{k + 1}_cell{i + 1}.png")
    for k, i in enumerate(widget_cells[:3]):
        _shoot(browser, cells[i].find_element(By.CSS_SELECTOR, ".jp-OutputArea"), shots / f"widget_{k + 1}_cell{i + 1}.png")
