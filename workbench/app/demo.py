"""``workbench demo``: the main job on the default model, written up as an HTML report.

For the example user (:mod:`workbench.data.examples`): (a) the generic headline vs the
headline written after seeing the user's history, and (b) for each layer, how much
masking all its heads lowers the log-likelihood of that personalized headline.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from workbench._version import __version__
from workbench._util import check_int, results_dir
from workbench.data.examples import EXAMPLE_USER
from workbench.runner.figures import layer_effect_figure
from workbench.core.heads import layer_mask_effects
from workbench.core.model import Model
from workbench.data.prompts import first_line, first_line_complete, generate_line, headline_prompt
from workbench.app.report import Report


DEMO_MASKING = ("zero", "uniform")  # "mean" would need reference texts the demo doesn't have


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
    scores: Any = None  # PreferenceScores on the user's history (leave-one-out)
    dps: str = ""
    report_path: Path | None = None

    def outputs(self) -> pd.DataFrame:
        return pd.DataFrame(
            [
                {"prompt": "generic (article only)", "headline": self.generic},
                {"prompt": "personalized (user's history + article)", "headline": self.personalized},
                *([{"prompt": "personalized + DPS (top preference heads)", "headline": self.dps}] if self.dps else []),
                {"prompt": "the user's real headline", "headline": self.gold},
            ]
        )


def run_demo(
    model: Model,
    user: dict | None = None,
    how: str = "zero",
    max_new_tokens: int = 32,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> DemoResult:
    """Run the demo analysis for ``user`` (default: the built-in example user).

    ``log``: called with a line as each step starts and with its first results (the command
    line prints them), so a long run is never silent; progress bars come with ``progress``.
    """
    user = user or EXAMPLE_USER
    _check_demo_args(user, how, max_new_tokens)
    say = _Steps(log, 5)
    generic_prompt = headline_prompt(model, user["query"])
    personal_prompt = headline_prompt(model, user["query"], user["profile"])
    say.step("headlines: from the article alone, then after the user's history")
    generic = generate_line(model, generic_prompt, max_new_tokens=max_new_tokens)
    personalized = generate_line(model, personal_prompt, max_new_tokens=max_new_tokens)
    if not personalized:
        raise RuntimeError("the model produced an empty personalized headline; try a larger max_new_tokens")
    say.line(f"generic:      {generic}\n  personalized: {personalized}\n  the user's:   {user.get('gold', '')}")
    say.step(f"masking each layer's heads ({model.n_layers} layers x 2 headlines)")
    effects = layer_mask_effects(model, personal_prompt, personalized, how=how, progress=progress)
    # The same sweep for the generic headline separates layers every headline needs from
    # layers the personalized one needs in particular.
    generic_effects = layer_mask_effects(model, generic_prompt, generic, how=how, progress=progress)
    effects["drop_generic"] = generic_effects["drop"].to_numpy()
    top = effects.sort_values("drop", ascending=False).head(3)
    say.line("largest drops: " + ", ".join(f"layer {int(r.layer)} {r.drop:+.2f}" for r in top.itertuples()))
    say.step(f"preference heads on the user's {len(user['profile'])} history items (fast PCS), then DPS")
    scores, dps = _preference_heads(model, user, personal_prompt, max_new_tokens, progress)
    if dps:
        say.line(f"DPS: {dps}")
    settings = {
        "model": model.name,
        "model source": model.source,
        "masking": how,
        "max_new_tokens": max_new_tokens,
        "decoding": "greedy",
        "user": user.get("user_id", "?"),
        "profile items": len(user["profile"]),
        "workbench": __version__,
        "python": platform.python_version(),
    }
    result = DemoResult(model.name, generic, personalized, user.get("gold", ""), effects, settings,
                        scores=scores, dps=dps, report=Report("", {}))
    result.report = build_report(result, user, model, say=say)
    say.done()
    return result


class _Steps:
    """Numbered progress lines with the time each step took (nothing without a ``log``)."""

    def __init__(self, log: Callable[[str], None] | None, total: int):
        self.log, self.total, self.n, self.t = log, total, 0, None

    def _finish(self) -> None:
        if self.t is not None and self.log:
            self.log(f"  ({time.perf_counter() - self.t:.0f} s)")

    def step(self, what: str) -> None:
        self._finish()
        self.n += 1
        self.t = time.perf_counter()
        if self.log:
            self.log(f"[{self.n}/{self.total}] {what} ...")

    def line(self, text: str) -> None:
        if self.log:
            self.log(f"  {text}")

    def done(self) -> None:
        self._finish()
        self.t = None


def _check_demo_args(user: Any, how: str, max_new_tokens: Any) -> None:
    """Everything the demo needs from its arguments, checked before the model runs."""
    if how not in DEMO_MASKING:
        raise ValueError(f"how={how!r}: the demo masks heads with one of {DEMO_MASKING}")
    check_int("max_new_tokens", max_new_tokens, minimum=1)
    if not isinstance(user, dict) or not isinstance(user.get("query"), str):
        raise ValueError("user must be a dict with a 'query' (the new article, a string) and a 'profile' "
                         "(a list of {'text', 'title'} items), like workbench.data.examples.EXAMPLE_USER")
    if not user.get("profile"):
        raise ValueError("the user has an empty profile; the demo needs at least one history item")
    bad = [i for i, it in enumerate(user["profile"])
           if not isinstance(it, dict) or not isinstance(it.get("text"), str) or not isinstance(it.get("title"), str)]
    if bad:
        raise ValueError(f"profile item(s) {bad} of the user need a 'text' and a 'title' (strings)")


def _preference_heads(model: Model, user: dict, personal_prompt: Any, max_new_tokens: int, progress: bool):
    """PCS of every head on the user's own history (each item predicted from the others), and
    the headline DPS writes with the top heads — decoded with the ``dps`` method's settings
    (chosen on tuning users), so the demo shows what the benchmark measures."""
    from workbench.science.dps import dps_generate
    from workbench.methods.dps import Dps
    from workbench.science.pcs import ScoringExample, preference_scores

    items = user["profile"]
    if len(items) < 2:
        return None, ""
    examples = [ScoringExample(f"{user.get('user_id', 'user')}/{i}", user.get("user_id", "user"),
                               headline_prompt(model, it["text"], items[:i] + items[i + 1:]), it["title"],
                               base_prompt=headline_prompt(model, it["text"], []))
                for i, it in enumerate(items)]
    setting = Dps()
    if setting.contrast == "generic":  # the model's own headline without the history
        examples = [replace(ex, generic_target=first_line(model.generate(ex.base_prompt, max_new_tokens,
                                                                         until=first_line_complete)) or ".")
                    for ex in examples]
    scores = preference_scores(model, examples, how="uniform", scope="output", mode="fast", progress=progress,
                               contrast=setting.contrast,
                               data=f"example user {user.get('user_id', '')}: history leave-one-out")
    dps = first_line(dps_generate(model, personal_prompt, scores.top_percent(setting.top_percent), alpha=setting.alpha,
                                  alpha_cap=setting.alpha_cap, plausibility=setting.plausibility,
                                  max_new_tokens=max_new_tokens, until=first_line_complete))
    return scores, dps


def build_report(result: DemoResult, user: dict, model: Model | None = None, say: Any = None) -> Report:
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
    if result.scores is not None:
        top = ", ".join(f"L{l}H{h}" for l, h in result.scores.top(5))
        r.add_heading("Preference heads, one by one")
        r.add_text(
            "The Preference Contribution Score (PCS) of a head is how much less likely the user's own headline "
            "becomes when that head is masked (its query zeroed, so it attends uniformly), averaged over the "
            "user's history: each earlier headline is predicted from the other items. Computed here by "
            f"attribution patching (one forward and backward pass per item). Top heads: {top}. "
            "Differential Preference Steering then decodes with score = (1+α)·log p − α·log p(top heads masked), "
            "α = the entropy of the next-token distribution, choosing only among tokens with at least 10% of the "
            "top token's probability (without that constraint this small model's output collapses); its headline "
            "is in the table above."
        )
        r.add_figure(result.scores.heatmap(), caption="Red = masking the head lowers the likelihood of the user's headlines.")
    say = say or _Steps(None, 0)
    if model is not None:
        say.step("the SteerX and Fints views of the same user")
        _plugin_sections(r, model, user, say)
    say.step("the comparison of methods, from the saved benchmark results")
    _comparison_section(r)
    return r


def _comparison_section(r: Report, path: Path | None = None) -> None:
    # The full comparison takes hours of generation: the report shows the saved benchmark
    # results (and says where they came from) rather than re-running them.
    from workbench.runner.compare import best_covered, comparison_table, load_results
    from workbench.runner.figures import paired_figure

    path = results_dir() / "lamp4-news_smollm2-135m.csv" if path is None else path
    r.add_heading("How the methods compare (all users)")
    if not path.exists():
        r.add_text(f"No saved benchmark results at {path}. Run `workbench bench --task lamp4 --methods "
                   "generic,rag,dps,... --out DIR` and `python tools/export_results.py` to fill this section.")
        return
    results = load_results(path)
    src = results.attrs.get("source", {})
    order = ["generic", "rag", "dps", "caa-all", "steerx-caa", "opt-all", "steerx-opt", "fints", "fints+rag",
             "caa-user", "caa-all+dps", "steerx-caa+dps"]
    methods, behind = best_covered(results, order)
    table = comparison_table(results, methods)
    shown = table[["method", "n", "rouge1", "rougeL", "meteor", "diff_vs_rag", "diff_lo_vs_rag", "diff_hi_vs_rag",
                   "wins_vs_rag", "losses_vs_rag"]].rename(columns={
        "diff_vs_rag": "ROUGE-1 minus rag", "diff_lo_vs_rag": "lo", "diff_hi_vs_rag": "hi",
        "wins_vs_rag": "queries won", "losses_vs_rag": "queries lost"}).round(4)
    # Counts, not measurements (pandas made them floats because rag's own row is empty).
    counts = shown[["queries won", "queries lost"]]
    shown[counts.columns] = counts.astype("Int64").astype(object).where(counts.notna(), float("nan"))
    r.add_text(
        f"Each method on the same {table.attrs['n']} LaMP-4 news queries"
        + (f" (methods run on fewer so far are not shown: {', '.join(f'{m} {k}' for m, k in behind.items())})"
           if behind else "")
        + f"; {src.get('model', '')}, greedy decoding. 'rag' — the user's five most similar earlier "
        "articles and headlines shown before the new article — is the bar: the paired difference says how much "
        "better or worse each method is than rag on the same queries, with a 95% bootstrap interval; an "
        "interval that contains 0 means no difference was detected."
    )
    r.add_table(shown, caption=f"From {path.name}; commands: {'; '.join(src.get('commands', []))}")
    r.add_figure(paired_figure(table), caption="Green: better than rag; red: worse; grey: no detectable difference.")


def _plugin_sections(r: Report, model: Model, user: dict, say: Any) -> None:
    # SteerX and Fints show their own views of the same user.
    from workbench.app.report_sections import SECTIONS

    for section in SECTIONS:
        t0 = time.perf_counter()
        title, body = section(model, user)
        say.line(f"{title} ({time.perf_counter() - t0:.0f} s)")
        r.add_heading(title)
        r.add_text(body, raw_html=True)
