"""``workbench demo``: the main job on the default model, written up as an HTML report.

For the example user (:mod:`workbench.data.examples`): (a) the generic headline vs the
headline written after seeing the user's history, and (b) for each layer, how much
masking all its heads lowers the log-likelihood of that personalized headline.
"""

from __future__ import annotations

import inspect
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
# Fast PCS (attribution patching) on the user's few history items takes seconds; exact PCS
# would take minutes of a demo meant to finish in about one.
DEMO_PCS_MODE = "fast"

# What each masking and PCS mode does, in words, so the report explains the mode it was given
# (the modes themselves are read from the objects the demo used, never restated).
MASKING_IN_WORDS = {"uniform": "its query zeroed, so it attends uniformly", "zero": "its output zeroed",
                    "mean": "its output replaced by its average"}
PCS_MODE_IN_WORDS = {"fast": "attribution patching (one forward and backward pass per item)",
                     "exact": "masking each head in turn", "naive": "masking each head in turn, one full forward each",
                     "verified": "attribution patching, with the top heads checked by masking them"}


@dataclass
class DemoDps:
    """How the demo's DPS headline was decoded: the ``dps`` method (its settings), the PCS
    scores its heads were taken from, and the decoder that wrote the headline.

    Every setting the report, the terminal and ``report.json`` state about DPS is read from
    here, so a changed default shows up in all of them."""

    method: Any  # workbench.methods.dps.Dps
    scores: Any  # PreferenceScores on the user's history
    decoder: Any  # the DpsDecoder that decoded (its heads are the ones masked)
    headline: str = ""

    @property
    def heads(self) -> list[tuple[int, int]]:
        return [tuple(h) for h in self.decoder.heads]

    @property
    def heads_text(self) -> str:
        return ", ".join(f"L{layer}H{head}" for layer, head in self.heads)

    @property
    def pcs_text(self) -> str:
        """E.g. ``fast PCS on 4 items`` (``fast contrastive PCS (history) ...`` with a contrast)."""
        meta = self.scores.meta
        return f"{meta['mode']} {self.scores.kind.replace('plain ', '')} on {meta['n_examples']} items"

    @property
    def alpha_text(self) -> str:
        a = self.decoder.alpha
        if a == "entropy":
            cap = self.decoder.alpha_cap
            return "α = entropy" + (f" (at most {cap:g})" if cap is not None else "")
        return f"α {a:g}"

    @property
    def plausibility_text(self) -> str:
        p = self.decoder.plausibility
        return "no plausibility constraint" if p is None else f"plausibility {p:g}"

    @property
    def label(self) -> str:
        """DPS's setting and its heads, e.g. ``DPS, α 1, plausibility 0.1, top 2% = 6 of 270 heads of
        fast PCS on 4 items: L17H0, ...`` (the headline table's DPS row, the terminal's DPS line)."""
        n_all = self.scores.meta["n_layers"] * self.scores.meta["n_heads"]
        return (f"DPS, {self.alpha_text}, {self.plausibility_text}, top {self.method.top_percent:g}% = "
                f"{len(self.heads)} of {n_all} heads of {self.pcs_text}: {self.heads_text}")

    def settings(self) -> dict[str, Any]:
        """For ``report.json`` and the report's header line."""
        # Only what the demo used: its prompts hold the whole history (not the method's k, retrieval,
        # pcs_examples), and its heads come from PCS on that history (not a heads_file).
        dec = self.decoder
        return {"dps": {"method": self.method.name, "alpha": dec.alpha, "alpha_cap": dec.alpha_cap,
                        "plausibility": dec.plausibility, "top_percent": self.method.top_percent, "masking": dec.how,
                        "heads": self.heads_text},
                "pcs": {k: self.scores.meta.get(k) for k in ("mode", "how", "scope", "contrast", "n_examples")}}


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
    dps_run: DemoDps | None = None  # the settings, heads and decoder behind ``dps``

    def outputs(self) -> pd.DataFrame:
        return pd.DataFrame(
            [
                {"prompt": "generic (article only)", "headline": self.generic},
                {"prompt": "personalized (user's history + article)", "headline": self.personalized},
                *([{"prompt": f"personalized + {self.dps_run.label if self.dps_run else 'DPS'}", "headline": self.dps}]
                  if self.dps else []),
                {"prompt": "the user's real headline", "headline": self.gold},
            ]
        )

    def summary(self, how: str) -> str:
        """The terminal summary ``workbench demo`` prints: the headlines, the layers the
        personalized headline needs (``how`` masking), and the preference heads, each setting
        read from what ran."""
        lines = ["Generic vs personalized headline:"]
        lines += [f"  {row.prompt:<46} {row.headline}" for row in self.outputs().itertuples()]
        top = self.effects.sort_values("drop", ascending=False).head(5)
        lines += ["", f"Layers whose heads the personalized headline needs most ({how} masking; drop in log p per token,",
                  "personalized headline vs generic headline):"]
        lines += [f"  layer {int(row.layer):>2}: {row.drop:+.3f}   (generic {row.drop_generic:+.3f})" for row in top.itertuples()]
        if self.scores is not None:
            meta = self.scores.meta
            lines += ["", f"Preference heads (PCS on {len(meta.get('example_ids', [])) or 'the'} history items of the user, "
                          f"{meta.get('mode')} mode, {meta.get('how')} masking; nats/token):",
                      "  " + ", ".join(f"L{l}H{h} {self.scores.frame.set_index(['layer', 'head']).pcs[(l, h)]:+.3f}"
                                       for l, h in self.scores.top(5))]
        return "\n".join(lines)


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
    say.step(f"preference heads on the user's {len(user['profile'])} history items ({DEMO_PCS_MODE} PCS), then DPS")
    dps_run = _preference_heads(model, user, personal_prompt, max_new_tokens, progress)
    scores, dps = (dps_run.scores, dps_run.headline) if dps_run else (None, "")
    if dps_run:
        say.line(f"{dps_run.label}\n  DPS headline: {dps}")
    settings = {
        "model": model.name,
        "model source": model.source,
        "masking": how,
        "max_new_tokens": max_new_tokens,
        "decoding": "greedy",
        "user": user.get("user_id", "?"),
        "profile items": len(user["profile"]),
        **(dps_run.settings() if dps_run else {}),
        "workbench": __version__,
        "python": platform.python_version(),
    }
    result = DemoResult(model.name, generic, personalized, user.get("gold", ""), effects, settings,
                        scores=scores, dps=dps, report=Report("", {}), dps_run=dps_run)
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


def _preference_heads(model: Model, user: dict, personal_prompt: Any, max_new_tokens: int,
                      progress: bool) -> DemoDps | None:
    """PCS of every head on the user's own history (each item predicted from the others), and
    the headline DPS writes with the top heads — decoded by the ``dps`` method's own decoder with
    its settings (chosen on tuning users), so the demo shows what the benchmark measures."""
    from workbench.methods.dps import Dps
    from workbench.science.pcs import ScoringExample, preference_scores

    items = user["profile"]
    if len(items) < 2:
        return None
    examples = [ScoringExample(f"{user.get('user_id', 'user')}/{i}", user.get("user_id", "user"),
                               headline_prompt(model, it["text"], items[:i] + items[i + 1:]), it["title"],
                               base_prompt=headline_prompt(model, it["text"], []))
                for i, it in enumerate(items)]
    method = Dps()
    if method.contrast == "generic":  # the model's own headline without the history
        examples = [replace(ex, generic_target=first_line(model.generate(ex.base_prompt, max_new_tokens,
                                                                         until=first_line_complete)) or ".")
                    for ex in examples]
    fixed = method.describe()  # the masking and scope the method's PCS uses
    scores = preference_scores(model, examples, how=fixed["how"], scope=fixed["scope"], mode=DEMO_PCS_MODE,
                               progress=progress, contrast=method.contrast,
                               data=f"example user {user.get('user_id', '')}: history leave-one-out")
    method.scores, method.heads = scores, scores.top_percent(method.top_percent)
    decoder = method.decoder()
    headline = first_line(decoder.decode(model, personal_prompt, max_new_tokens, until=first_line_complete))
    return DemoDps(method, scores, decoder, headline)


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
    st = result.settings
    r.add_table(result.outputs(), caption=f"{st['decoding'].capitalize()} decoding, at most {st['max_new_tokens']} new "
                "tokens; first line of the output.")
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
        r.add_heading("Preference heads, one by one")
        r.add_text(_preference_text(result))
        r.add_figure(result.scores.heatmap(), caption="Red = masking the head lowers the likelihood of the user's headlines.")
    say = say or _Steps(None, 0)
    if model is not None:
        say.step("the SteerX and Fints views of the same user")
        _plugin_sections(r, model, user, say, result.settings["max_new_tokens"])
    say.step("the comparison of methods, from the saved benchmark results")
    _comparison_section(r)
    return r


def _preference_text(result: DemoResult) -> str:
    """The PCS and DPS paragraph, every setting in it read from the scores and the decoder used."""
    meta = result.scores.meta
    masking = MASKING_IN_WORDS.get(meta["how"], meta["how"])
    computed = PCS_MODE_IN_WORDS.get(meta["mode"], f"{meta['mode']} mode")
    text = (
        "The Preference Contribution Score (PCS) of a head is how much less likely the user's own headline "
        f"becomes when that head is masked ({meta['how']} masking: {masking}), averaged over the "
        f"user's history: each of its {meta['n_examples']} headlines is predicted from the other items. Computed here "
        f"by {computed}. Top heads: {', '.join(f'L{l}H{h}' for l, h in result.scores.top(5))}."
    )
    run = result.dps_run
    if run is None:
        return text
    dec = run.decoder
    if dec.alpha == "entropy":
        alpha = ("α = the entropy of the next-token distribution"
                 + (f", at most {dec.alpha_cap:g}" if dec.alpha_cap is not None else ""))
    else:
        alpha = f"α = {dec.alpha:g}"
    plaus = ("choosing among all tokens (no plausibility constraint)" if dec.plausibility is None else
             f"choosing only among tokens with at least {dec.plausibility * 100:g}% of the top token's probability")
    return text + (
        f"\n\nDifferential Preference Steering then masks the top {run.method.top_percent:g}% of heads "
        f"({len(run.heads)} of {meta['n_layers'] * meta['n_heads']}: {run.heads_text}; {dec.how} masking) and decodes "
        f"with score = (1+α)·log p − α·log p(those heads masked), {alpha}, {plaus}: the settings of the "
        f"`{run.method.name}` method that `workbench bench` runs. Its headline is in the table above."
    )


def _comparison_section(r: Report, path: Path | None = None) -> None:
    # The full comparison takes hours of generation: the report shows the saved benchmark
    # results (and says where they came from) rather than re-running them.
    from workbench.data.metrics import bootstrap_ci
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
    # Every setting below comes from the results' own record (and the interval from the function
    # that computed it), not from prose that would drift when a run's settings change.
    run = src.get("settings", {})
    level = inspect.signature(bootstrap_ci).parameters["ci"].default
    r.add_text(
        f"Each method on the same {table.attrs['n']} {src.get('data', '')} queries ({src.get('split', '?')} split)"
        + (f" (methods run on fewer so far are not shown: {', '.join(f'{m} {k}' for m, k in behind.items())})"
           if behind else "")
        + f"; {src.get('model', '')}, {run.get('decoding', '?')} decoding, at most {run.get('max_new_tokens', '?')} new "
        f"tokens. 'rag' — the user's {run.get('k', '?')} most similar earlier articles and headlines "
        f"({run.get('retrieval', '?')}) shown before the new article — is the bar: the paired difference says how much "
        f"better or worse each method is than rag on the same queries, with a {level:.0%} bootstrap interval; an "
        "interval that contains 0 means no difference was detected."
    )
    r.add_table(shown, caption=f"From {path.name}; commands: {'; '.join(src.get('commands', []))}")
    r.add_figure(paired_figure(table), caption="Green: better than rag; red: worse; grey: no detectable difference.")


def _plugin_sections(r: Report, model: Model, user: dict, say: Any, max_new_tokens: int) -> None:
    # SteerX and Fints show their own views of the same user.
    from workbench.app.report_sections import SECTIONS

    for section in SECTIONS:
        t0 = time.perf_counter()
        title, body = section(model, user, max_new_tokens=max_new_tokens)
        say.line(f"{title} ({time.perf_counter() - t0:.0f} s)")
        r.add_heading(title)
        r.add_text(body, raw_html=True)
