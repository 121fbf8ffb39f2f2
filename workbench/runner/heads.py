"""Preference scores of every head written to a directory: what ``workbench heads`` produces.

``scores.json`` (the :class:`~workbench.science.pcs_result.PreferenceScores`, loadable), its
heatmap (``heatmap.html``) and the table (``heads.csv``), each written atomically; the
directory has one writer (:func:`workbench._util.dir_lock`) and existing scores are replaced
only with ``force``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from workbench._util import atomic_write, dir_lock


def check_heads_dir(out: str | Path, force: bool = False) -> Path:
    """``out/scores.json``, refused if it exists (unless ``force``): checked before any work."""
    target = Path(out) / "scores.json"
    if target.exists() and not force:
        raise FileExistsError(f"{target} exists; pass --force to replace it, or choose another --out")
    return target


def write_head_scores(out: str | Path, compute: Any, force: bool = False) -> Any:
    """Run ``compute()`` (-> PreferenceScores) holding ``out``'s lock, then write the scores,
    heatmap and table there; returns the scores."""
    out = Path(out)
    with dir_lock(out, "heads directory"):  # one writer: a second `heads` into it is refused at once
        target = check_heads_dir(out, force)  # again: another run may have finished meanwhile
        scores = compute()
        scores.save(target, overwrite=force)
        heatmap, table = scores.heatmap(), scores.frame.sort_values("pcs", ascending=False)
        atomic_write(out / "heatmap.html", lambda tmp: heatmap.write_html(tmp, include_plotlyjs=True))
        atomic_write(out / "heads.csv", lambda tmp: table.to_csv(tmp, index=False))
    return scores
