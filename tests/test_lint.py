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
    bad.write_text("from workbench.science.pcs import _Scorer\n\nprint(_Scorer)\n")
    done = subprocess.run([*_ruff(), "check", "--config", str(ROOT / "pyproject.toml"), str(bad)],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode != 0 and ("PLC2701" in done.stdout or "import-private-name" in done.stdout), done.stdout


def test_no_module_imports_another_modules_private_names():
    # ruff's PLC2701 treats the package's own modules as first-party and lets them through, so
    # this is checked here: `from workbench.x import _name` reaches into x's internals. (Private
    # *modules* such as workbench._util hold public names for the package's own use.)
    import ast

    found = []
    for path in sorted((ROOT / "workbench").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("workbench"):
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")
                           and not (ROOT.joinpath(*node.module.split(".")) / f"{a.name}.py").exists()]  # a private module is fine
                if private:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {private} from {node.module}")
    assert not found, "private names imported across modules (make them public, or move them):\n" + "\n".join(found)
