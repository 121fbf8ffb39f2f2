"""``workbench demo``: the main job on the default model, written up as an HTML report.

For the example user (:mod:`workbench.examples`): (a) the generic headline vs the
headline written after seeing the user's history, and (b) for each layer, how much
masking all its heads lowers the log-likelihood of that personalized headline.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

import workbench
from workbench.examples import EXAMPLE_USER
from workbench.figures import layer_effect_figure
from workbench.heads import layer_mask_effects
from workbench.model import Model
from workbench.prompts import first_line, headline_prompt
from workbench.report import Report


@dataclass
class DemoResult:
    """What the demo found; ``report`` is the :class:`Report` (``report_path`` once saved)."""

    model: str
    generic: str
    personalized: str
    gold: str
    effects: pd.DataFrame
    settings: dict[str, Any]
    report: Report = field(repr=False)
    report_path: Path | None = None

    def outputs(self) -> pd.DataFrame:
        return pd.DataFrame(
            [
                {"prompt": "generic (article only)", "headline": self.generic},
                {"prompt": "personalized (user's history + article)", "headline": self.personalized},
                {"prompt": "the user's real headline", "headline": self.gold},
            ]
        )


def run_demo(
    model: Model,
    user: dict | None = None,
    how: str = "zero",
    max_new_tokens: int = 32,
    progress: bool = True,
) -> DemoResult:
    """Run the demo analysis for ``user`` (default: the built-in example user)."""
    user = user or EXAMPLE_USER
    if not user.get("profile"):
        raise ValueError("the user has an empty profile; the demo needs at least one history item")
    generic_prompt = headline_prompt(model, user["query"])
    personal_prompt = headline_prompt(model, user["query"], user["profile"])
    generic = first_line(model.generate(generic_prompt, max_new_tokens=max_new_tokens))
    personalized = first_line(model.generate(personal_prompt, max_new_tokens=max_new_tokens))
    if not personalized:
        raise RuntimeError("the model produced an empty personalized headline; try a larger max_new_tokens")
    effects = layer_mask_effects(model, personal_prompt, personalized, how=how, progress=progress)
    # The same sweep for the generic headline separates layers every headline needs from
    # layers the personalized one needs in particular.
    generic_effects = layer_mask_effects(model, generic_prompt, generic, how=how, progress=progress)
    effects["drop_generic"] = generic_effects["drop"].to_numpy()
    settings = {
        "model": model.name,
        "model source": model.source,
        "masking": how,
        "max_new_tokens": max_new_tokens,
        "decoding": "greedy",
        "user": user.get("user_id", "?"),
        "profile items": len(user["profile"]),
        "workbench": workbench.__version__,
        "python": platform.python_version(),
    }
    result = DemoResult(model.name, generic, personalized, user.get("gold", ""), effects, settings, report=Report("", {}))
    result.report = build_report(result, user)
    return result


def build_report(result: DemoResult, user: dict) -> Report:
    r = Report(
        "workbench demo: how a small model personalizes a headline",
        meta=result.settings,
        intro=(
            "A language model writes a news headline twice: once from the article alone, once after "
            "seeing headlines the same author wrote before. Then we ask which layers' attention heads "
            "the personalized headline depends on, by switching them off one layer at a time."
        ),
    )
    r.add_heading("The user's history")
    r.add_table(pd.DataFrame(user["profile"])[["text", "title"]].rename(columns={"text": "article", "title": "their headline"}))
    r.add_text(f"New article: {user['query']}")
    r.add_heading("Generic vs personalized output")
    r.add_table(result.outputs(), caption="Greedy decoding; first line of the output.")
    r.add_heading("Which layers carry the personalization?")
    top = result.effects.sort_values("drop", ascending=False).head(3)
    top_txt = ", ".join(f"layer {int(row.layer)} ({row.drop:+.2f})" for row in top.itertuples())
    r.add_text(
        f"For each layer, all of its attention heads are masked ({result.settings['masking']} masking) and the "
        "log-likelihood of the personalized headline is measured again. A tall bar means the model needs that "
        f"layer's heads to produce this user's headline. Largest drops (nats per token): {top_txt}. "
        "The grey bars repeat the measurement for the generic headline: layers that are tall in both are "
        "needed for any headline (early layers usually are); layers tall only in red are candidates for "
        "carrying the user's preferences, which the preference-head analysis examines head by head."
    )
    r.add_figure(layer_effect_figure(result.effects), caption="Hover a bar for the intact and masked log-likelihoods.")
    return r
