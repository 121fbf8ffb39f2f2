"""The course site (``tools/build_site.py``) as a reader sees it, in headless Chromium.

The site is built into a temporary folder and served over HTTP on localhost (so a missing
file is a 404 the server sees). Every page is opened and must have: every plotly figure drawn
(its SVG present, with data), no console errors, no request for a file the site lacks, and no
request leaving localhost (the site must work offline). A full-page screenshot of each page goes
to ``$WORKBENCH_SCREENSHOTS/site/`` (default ``.screenshots/site/``).
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHOTS = Path(os.environ.get("WORKBENCH_SCREENSHOTS", ROOT / ".screenshots")) / "site"
sys.path.insert(0, str(ROOT / "tools"))
import build_site  # noqa: E402

PAGES = (["index.html"] + [f"notebooks/{p.stem}.html" for p in sorted((ROOT / "notebooks").glob("*.ipynb"))]
         + ["results/README.html"] + [d.replace(".md", ".html") for d in build_site.DOCS] + ["api.html"])

# Per plotly figure on the page: drawn (an SVG), with data (traces in plotly's state and in the SVG).
_FIGURES_JS = """
return Array.from(document.querySelectorAll('.wb-plotly')).map(el => ({
  id: el.id,
  svg: el.querySelectorAll('svg.main-svg').length,
  traces: (el._fullData || []).length,
  drawn: el.querySelectorAll('g.trace, .heatmaplayer image, .hm image, g.barlayer path, g.scatterlayer path').length,
}));
"""


class _Handler(http.server.SimpleHTTPRequestHandler):
    missing: list[str] = []

    def log_message(self, *args):  # quiet
        pass

    def send_error(self, code, message=None, explain=None):
        if code == 404:
            _Handler.missing.append(self.path)
        super().send_error(code, message, explain)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    t0 = time.time()
    report = build_site.build(out)
    print(f"site built in {time.time() - t0:.1f} s: {len(report['pages'])} pages, {report['figures']} figures")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(out)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", report
    server.shutdown()


@pytest.fixture(scope="module")
def browser():
    if shutil.which("chromium") is None or shutil.which("chromedriver") is None:
        pytest.fail("Chromium and chromedriver are needed: run ./install.sh test")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000",
                "--disable-gpu"):
        opts.add_argument(arg)
    opts.binary_location = shutil.which("chromium")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    yield driver
    driver.quit()


def test_site_lists_every_page(site):
    _, report = site
    assert sorted(report["pages"]) == sorted(PAGES)


@pytest.mark.browser
@pytest.mark.parametrize("page", PAGES)
def test_page_renders(page, site, browser):
    base, report = site
    _Handler.missing.clear()
    browser.get_log("browser")  # drop what earlier pages logged
    browser.get(f"{base}/{page}")
    expected = report["pages"][page]
    deadline = time.time() + 60
    while True:
        figures = browser.execute_script(_FIGURES_JS)
        if browser.execute_script("return document.readyState") == "complete" and len(figures) >= expected and \
                all(f["svg"] and f["drawn"] for f in figures):
            break
        if time.time() > deadline:
            break
        time.sleep(0.5)
    time.sleep(0.5)

    SHOTS.mkdir(parents=True, exist_ok=True)
    height = min(browser.execute_script("return document.documentElement.scrollHeight"), 16000)
    shot = browser.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": 1400, "height": height, "scale": 1}})
    import base64
    (SHOTS / page.replace("/", "__").replace(".html", ".png")).write_bytes(base64.b64decode(shot["data"]))

    problems = []
    if len(figures) != expected:
        problems.append(f"{len(figures)} figures on the page, the build made {expected}")
    problems += [f"figure {f['id']} not drawn: {f}" for f in figures if not (f["svg"] and f["traces"] and f["drawn"])]
    errors = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    problems += [f"console error: {e}" for e in errors]
    problems += [f"missing file: {p}" for p in _Handler.missing]
    remote = browser.execute_script(
        "return performance.getEntriesByType('resource').map(r => r.name)"
        ".filter(u => !u.startsWith(location.origin) && !u.startsWith('data:'))")
    problems += [f"request leaves the site: {u}" for u in remote]
    where = browser.execute_script("return [location.href, document.title, document.body ? document.body.innerHTML.length : -1]")
    assert not problems, f"{page} ({where}):\n" + "\n".join(problems) + "\n" + json.dumps(figures[:3])
