"""The public API is small, loads lazily, and each name has one home (CHANGELOG.md lists moves)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import workbench as wb


def test_the_top_level_is_a_dozen_names_each_from_its_module():
    names = [n for n in wb.__all__ if n != "__version__"]
    assert 10 <= len(names) <= 16
    for name in names:
        value = getattr(wb, name)
        assert value.__module__.startswith("workbench."), name
        home = sys.modules[value.__module__]
        assert getattr(home, name) is value  # the one other path is the defining module


def test_import_workbench_loads_no_model_code():
    code = "import sys, workbench; print(sorted(m for m in sys.modules if m.startswith('workbench')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert eval(out) == ["workbench", "workbench._version"]  # noqa: S307 (our own printed list)
    code = "import sys, workbench; workbench.mask_heads; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "True"


def test_a_moved_name_says_where_it_went():
    with pytest.raises(AttributeError, match=r"caa_vectors.*workbench\.science\.caa\.caa_vectors.*CHANGELOG"):
        wb.caa_vectors  # noqa: B018
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        wb.nonsense  # noqa: B018


def test_subpackages_are_reachable_and_listed():
    assert wb.science.__name__ == "workbench.science"
    assert {"core", "data", "science", "methods", "runner", "app", "load_model"} <= set(dir(wb))


def test_the_shipped_datasets_load_by_name():
    from workbench.data.lamp import DataError, shipped_datasets

    assert {"lamp4-news", "lamp5-acl", "lamp2n-news"} <= set(shipped_datasets())
    news = wb.load_dataset("lamp4-news")
    assert len(news) == 207 and len(news.users()) == 69
    assert news.files == {"dev_questions.json": "fd5b5c2597676762d53fddddef5a9ed303f158848ba60b293a2bb35ec97f8bf4",
                          "dev_outputs.json": "afc6dd2c684d28f37cc09e3e41fb7bd43f1c8e9b61321aad7c450745d0bd9b8f"}
    with pytest.raises(DataError, match="no dataset named 'lamp9'.*shipped"):
        wb.load_dataset("lamp9")
