"""The package's layers, checked: the tree is the architecture (ARCHITECTURE.md).

Each subpackage is one layer; a module may import from its own layer and the layers below it,
never from a layer above, and no set of modules may import each other in a circle. Every
import counts: top-level, inside a function (a lazy import still ties the layers together) and
under ``if TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "workbench"

# lowest first; the private base modules (_util, _cache) sit under everything
LAYERS = {
    "workbench._util": 0, "workbench._cache": 0, "workbench._version": 0,
    "workbench.core": 1,       # the model, hooks, head masks, steering vectors
    "workbench.data": 2,       # tasks, records, loaders, retrieval, history, prompts, metrics, splits
    "workbench.science": 3,    # PCS, DPS, token effects, SteerX, CAA, optimised vectors, pairs, Fints
    "workbench.methods": 4,    # the runner's methods: prompt -> intervention -> decoder
    "workbench.runner": 5,     # bench, compare, tuning, sweeps, settings, figures, scale-out
    "workbench.app": 6,        # the CLI, the demo and its report
    "workbench.__main__": 6,   # `python -m workbench`: the CLI
}
FACADE = "workbench"  # __init__: the public names, re-exported lazily; nothing inside imports it


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int | None:
    for prefix, layer in sorted(LAYERS.items(), key=lambda kv: -len(kv[0])):
        if module == prefix or module.startswith(prefix + "."):
            return layer
    return None


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every workbench import in a file, at any depth."""
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "workbench"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] != "workbench":
                continue
            # `from workbench.data import lamp` imports the module workbench.data.lamp
            for a in node.names:
                sub = f"{module}.{a.name}"
                is_module = (PACKAGE.parent / Path(*sub.split("."))).with_suffix(".py").exists() \
                    or (PACKAGE.parent / Path(*sub.split("."))).is_dir()
                found.append((node.lineno, sub if is_module else module))
    return found


def _graph() -> dict[str, list[tuple[int, str]]]:
    return {_module_name(p): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_sits_in_a_layer():
    loose = [m for m in _graph() if m != FACADE and _layer(m) is None]
    assert not loose, f"modules outside every layer (put them in a subpackage, or add the layer to LAYERS): {loose}"


def test_no_module_imports_a_higher_layer_or_the_facade():
    wrong = []
    for module, imports in _graph().items():
        if module == FACADE:
            continue
        for line, target in imports:
            if target == FACADE:
                wrong.append(f"{module}:{line} imports the public facade `workbench` (import the module itself)")
            elif (_layer(target) or 0) > _layer(module):
                wrong.append(f"{module}:{line} imports {target} (layer {_layer(target)} above {_layer(module)})")
    assert not wrong, "imports against the layers (ARCHITECTURE.md):\n" + "\n".join(wrong)


def test_no_import_circles():
    graph = {m: {t for _, t in imports if t != m} for m, imports in _graph().items()}
    # a package's __init__ importing its own modules is not a circle through them
    graph = {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in graph.items()}
    circles, state = [], {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = "open"
        for t in sorted(graph.get(m, ())):
            if state.get(t) == "open":
                circles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t, stack + [t])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not circles, "import circles:\n" + "\n".join(circles)


@pytest.mark.parametrize("bad", [
    ("workbench/core/x.py", "from workbench.science.pcs import preference_scores\n"),
    ("workbench/science/x.py", "def f():\n    from workbench.runner.scaleout import map_examples\n"),
    ("workbench/data/x.py", "if TYPE_CHECKING:\n    from workbench.methods import Method\n"),
    ("workbench/science/x.py", "import workbench as wb\n"),
])
def test_the_layer_check_catches_an_upward_import(bad, tmp_path, monkeypatch):
    # the check must be able to fail: a copy of the tree with one upward import added
    import shutil

    copy = tmp_path / "workbench"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "datasets"))
    rel, source = bad
    (tmp_path / rel).write_text(source, encoding="utf-8")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", copy)
    with pytest.raises(AssertionError, match="imports"):
        test_no_module_imports_a_higher_layer_or_the_facade()


def test_the_circle_check_catches_a_circle(tmp_path, monkeypatch):
    import shutil

    copy = tmp_path / "workbench"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "datasets"))
    (copy / "data" / "tasks.py").write_text("from workbench.data.lamp import load_lamp\n", encoding="utf-8")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", copy)
    with pytest.raises(AssertionError, match="circles"):
        test_no_import_circles()
