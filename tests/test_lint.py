"""The code passes ruff with the project's settings (pyproject.toml): unused imports and
variables, undefined names, likely bugs, and imports of another module's private names."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _ruff() -> list[str]:
    exe = Path(sys.executable).with_name("ruff")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("ruff")
    assert found, "ruff is not installed: it is in the test extra (./install.sh test)"
    return [found]


def test_ruff_passes():
    done = subprocess.run([*_ruff(), "check", "workbench", "tests", "benchmarks", "tools", "--output-format", "concise"],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, f"ruff found problems (fix them, or `ruff check --fix`):\n{done.stdout}{done.stderr}"


def test_ruff_would_catch_a_private_import(tmp_path):
    # The rule that keeps modules from reaching into each other's internals is a preview rule:
    # make sure the configuration really enables it.
    bad = tmp_path / "bad.py"
    bad.write_text("from workbench.pcs import _Scorer\n\nprint(_Scorer)\n")
    done = subprocess.run([*_ruff(), "check", "--config", str(ROOT / "pyproject.toml"), str(bad)],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode != 0 and ("PLC2701" in done.stdout or "import-private-name" in done.stdout), done.stdout
