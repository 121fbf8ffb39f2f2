"""The demo's report states the settings the demo used, read from the objects that ran (issue 34).

On tiny-random: the report's words and numbers are the point here, not the headlines.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import torch

import workbench.methods.dps as dps_method
import workbench.science.dps_batch as dps_batch
from workbench.app.demo import run_demo

HEAD = re.compile(r"L(\d+)H(\d+)")


@dataclass
class OtherDps(dps_method.Dps):
    """The ``dps`` method with other defaults, as if someone re-tuned them."""

    alpha: Any = 2.5
    top_percent: float = 40.0
    plausibility: float | None = 0.2


def _dps_row(result) -> str:
    rows = result.outputs()
    (label,) = [p for p in rows["prompt"] if "DPS" in p]
    return label


def _paragraph(result) -> str:
    page = result.report.to_html()
    para = page[page.index("Differential Preference Steering"):]
    return para[:para.index("</p>")]


def _listed_heads(text: str) -> list[tuple[int, int]]:
    return [(int(layer), int(head)) for layer, head in HEAD.findall(text)]


def _masked_rows(plans: list, model) -> set[tuple[int, int]]:
    """Heads that the interventions DPS installed while decoding zero in its masked rows (the
    second half of a 2B-row pass) and leave alone in its intact rows, found by running each
    hook on a tensor of ones where its rows say it acts."""
    masked = set()
    for intervention, rows_of in plans:
        for name, fn in intervention.hooks:
            m = re.fullmatch(r"blocks\.(\d+)\.attn\.hook_(?:rot_)?q", name)
            if not m:
                continue
            rows = rows_of(2)  # one prompt: row 0 intact, row 1 masked
            assert rows is not None and not bool(rows[0]), "the intact stream would be changed"
            if not bool(rows[1]):
                continue
            y = fn(torch.ones(1, 1, model.n_heads, model.d_head, dtype=model.dtype, device=model.device), None)
            masked |= {(int(m.group(1)), h) for h in range(model.n_heads) if bool((y[0, 0, h] == 0).all())}
    return masked


@pytest.fixture(scope="module")
def runs(tiny):
    """The demo with the ``dps`` defaults, then with other defaults, recording the interventions
    DPS installs while it decodes (the mask it really applied, not the list it was given)."""
    default = run_demo(tiny, max_new_tokens=4, progress=False)
    seen: list = []
    real_installed = dps_batch._fastpath.installed

    @contextmanager
    def spy_installed(model, plan):
        seen.extend(plan)
        with real_installed(model, plan) as h:
            yield h

    mp = pytest.MonkeyPatch()
    mp.setattr(dps_batch._fastpath, "installed", spy_installed)  # what DpsDecoder's decoding installs
    mp.setattr(dps_method, "Dps", OtherDps)  # the demo takes `Dps` from this module when it runs
    try:
        changed = run_demo(tiny, max_new_tokens=4, progress=False)
    finally:
        mp.undo()
    return default, changed, _masked_rows(seen, tiny)


def test_changed_dps_defaults_change_the_report_text_and_table(tiny, runs):
    default, changed, _ = runs
    n_all = tiny.n_layers * tiny.n_heads
    want = [
        # 2% of 8 heads rounds up to one head; 40% of 8 to four
        (default, "α 1,", "plausibility 0.1", f"top 2% = 1 of {n_all} heads", "α = 1,", "at least 10% of the top token", 1),
        (changed, "α 2.5,", "plausibility 0.2", f"top 40% = 4 of {n_all} heads", "α = 2.5,", "at least 20% of the top token", 4),
    ]
    for result, row_alpha, row_plaus, row_share, text_alpha, text_plaus, n_heads in want:
        row = _dps_row(result)
        assert row_alpha in row and row_plaus in row and row_share in row, row
        assert "of fast PCS on 4 items" in row, row  # the example user has 4 history items
        para = _paragraph(result)
        assert text_alpha in para and text_plaus in para, para
        # the headline table, the paragraph and report.json list the same heads
        heads = _listed_heads(row.split(":")[-1])
        assert len(heads) == n_heads and _listed_heads(para) == heads
        assert _listed_heads(result.settings["dps"]["heads"]) == heads
    assert "top 2%" not in changed.report.to_html() and "top 40%" not in default.report.to_html()
    assert (default.settings["dps"]["alpha"], changed.settings["dps"]["alpha"]) == (1.0, 2.5)
    assert (default.settings["dps"]["top_percent"], changed.settings["dps"]["top_percent"]) == (2.0, 40.0)


def test_every_head_the_report_lists_is_one_the_decoder_masked(runs):
    _, changed, masked = runs
    listed = set(_listed_heads(_dps_row(changed).split(":")[-1])) | set(_listed_heads(_paragraph(changed)))
    assert len(listed) == 4 and masked == listed


def test_the_report_states_the_settings_it_ran_with(runs):
    default, _, _ = runs
    page = default.report.to_html()
    # the headline table's caption: the demo's own token budget, not a constant in prose
    assert "at most 4 new tokens" in page
    # PCS: its masking and mode, read from the scores
    meta = default.scores.meta
    assert f"({meta['how']} masking:" in page and meta["mode"] == "fast" and "attribution patching" in page
    # the comparison's settings come from the saved results' record
    assert "most similar earlier articles and headlines (bm25)" in page and "95% bootstrap interval" in page
