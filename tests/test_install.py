"""Installed like a user installs it (issue 27, item 6).

The package is built into a wheel and installed non-editably into a temporary directory; its
``workbench`` script then runs ``demo`` and ``bench --methods dps --n 2`` from another working
directory with an empty cache. Nothing may come from the checkout: the code, the shipped
dataset and the saved results (the exact PCS that ``dps`` reuses instead of recomputing) must
all be the installed copies. The dependencies are the test environment's (offline; ``--no-deps``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.real  # loads SmolLM2 (and unpacks its GGUF into the empty cache)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("install")
    # Build from a copy of what a release holds, so the checkout gets no build/ or egg-info and
    # stale files in them cannot reach the wheel.
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("workbench", "results"):
        shutil.copytree(REPO / name, src / name, ignore=skip)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(root / "dist"), str(src)],
                   check=True, capture_output=True, text=True, timeout=300)
    (wheel,) = (root / "dist").glob("workbench-*.whl")
    site = root / "site"
    subprocess.run([*pip, "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, text=True, timeout=300)
    cwd, cache = root / "elsewhere", root / "cache"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items()
           # the checkout's settings would point the installed package back at it
           if k not in ("WORKBENCH_RESULTS", "WORKBENCH_LAMP4_DIR", "PYTHONPATH", "WORKBENCH_CACHE")}
    env.update(PYTHONPATH=str(site), WORKBENCH_CACHE=str(cache), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return {"site": site, "cwd": cwd, "cache": cache, "env": env}


def _run(inst: dict, *args: str, timeout: int = 900) -> str:
    proc = subprocess.run([*args], cwd=inst["cwd"], env=inst["env"], capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(args)} failed ({proc.returncode}):\n{out[-4000:]}"
    return out


def test_the_installed_package_is_the_one_that_runs(installed):
    site = installed["site"]
    out = _run(installed, sys.executable, "-c", "import workbench, workbench.app.cli; print(workbench.__file__)")
    assert Path(out.strip()).resolve() == (site / "workbench" / "__init__.py").resolve()
    assert (site / "workbench" / "_results" / "pcs_lamp4-news_smollm2-135m.json").exists()
    # `python -m workbench` is the command line too
    assert "smollm2-135m" in _run(installed, sys.executable, "-m", "workbench", "models")


def test_demo_then_bench_dps_from_another_directory(installed):
    from workbench.methods.dps import Dps
    from workbench.science.pcs_result import PreferenceScores

    site, cwd = installed["site"], installed["cwd"]
    script = site / "bin" / "workbench"  # the console script pip wrote, as a user would call it
    out = _run(installed, str(script), "demo")
    report = cwd / "workbench-report"
    assert "[5/5]" in out and (report / "index.html").exists()
    meta = json.loads((report / "report.json").read_text())
    assert meta["model"] == "smollm2-135m" and meta["pcs"]["mode"] == "fast"
    page = (report / "index.html").read_text()
    # the method comparison comes from the results inside the installed package
    assert "How the methods compare (all users)" in page and "No saved benchmark results" not in page

    out = _run(installed, str(script), "bench", "--methods", "dps", "--n", "2", "--out", "run")
    saved = site / "workbench" / "_results" / "pcs_lamp4-news_smollm2-135m.json"
    # the heads came from the installed package's saved exact PCS, not a new computation
    assert f"saved scores {saved}" in out, out[-3000:]
    assert "exact PCS over" not in out
    run = json.loads((cwd / "run" / "run.json").read_text())
    assert Path(run["data"]).resolve().is_relative_to(site.resolve())  # the dataset shipped in the wheel
    rows = [json.loads(line) for line in (cwd / "run" / "outputs.jsonl").read_text().splitlines()]
    want = ";".join(f"L{l}H{h}" for l, h in PreferenceScores.load(saved).top_percent(Dps().top_percent))
    assert len(rows) == 2 and all(r["method"] == "dps" and r["prediction"] and r["heads"] == want for r in rows)
