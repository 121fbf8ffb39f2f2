"""A function as it was at an earlier commit, for benchmarks that time the old code beside the
new in one run. Needs the git history (a clone, not a wheel)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
from typing import Any


def function_at(commit: str, module_path: str, name: str) -> Any:
    """``name`` from ``module_path`` (relative to the repository root) as it was at ``commit``,
    loaded as a module of its own (``<stem>_before``) beside the current one."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    source = subprocess.run(["git", "show", f"{commit}:{module_path}"], cwd=root,
                            capture_output=True, text=True, check=True).stdout
    stem = os.path.basename(module_path)[:-3] + "_before"
    path = os.path.join(tempfile.mkdtemp(), stem + ".py")
    with open(path, "w") as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location(stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[stem] = module
    spec.loader.exec_module(module)
    return getattr(module, name)
