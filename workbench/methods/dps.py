"""The ``dps`` and ``dps-raw`` methods: the ``rag`` prompt decoded with DPS.

The preference heads are a property of the model on a dataset: PCS (uniform masking, output
scope, exact) on leave-one-out examples built from the whole dataset's history items — never a
query's gold output — the same whichever users or how many queries a run takes. They are read
from ``results/`` when scores saved there match the examples and settings (the embedded models
ship them), else computed once and cached on disk per model, data and settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench._util import cache_file, cached, results_dir, stable_hash
from workbench.science.dps_batch import DpsDecoder
from workbench.methods import Check, Decoder, LabelScorer, Method, label_token_logprobs_under, register_method
from workbench.core.heads import mask_heads
from workbench.core.model import Model


@dataclass(frozen=True)
class DpsLabelScorer(LabelScorer):
    """DPS's contrast on a classification task's labels: at each label token
    ``l = l_p + alpha * (l_p - l_masked)`` — ``l_p`` the token's log-probability under the model
    (hooks active around it apply), ``l_masked`` with the preference heads masked too (from the
    prompt's last token on, as DPS decodes), ``alpha``
    a number or the entropy of the intact next-token distribution there (capped at ``alpha_cap``)
    — then the mean over the label's tokens, as :class:`~workbench.methods.LabelScorer` does.
    The plausibility constraint of free decoding does not apply: the candidates are the labels."""

    heads: tuple = ()
    alpha: Any = "entropy"
    how: str = "uniform"
    alpha_cap: float | None = None

    def scores(self, model: Model, prompt: Any, labels: Any) -> list[float]:
        # Masked from the prompt's last token on, the prompt itself intact (DPS's decoding): both
        # score sets share one prompt pass.
        full, masked = label_token_logprobs_under(model, prompt, labels,
                                                  [(), mask_heads(model, list(self.heads), how=self.how)])
        out = []
        for (lp, entropy), (lm, _) in zip(full, masked):
            if self.alpha == "entropy":
                a = entropy if self.alpha_cap is None else entropy.clamp(max=self.alpha_cap)
            else:
                a = float(self.alpha)
            out.append(float((lp + a * (lp - lm)).mean()))
        return out


@register_method
@dataclass
class Dps(Method):
    """The ``rag`` prompt decoded with DPS, heads found once per dataset from users' histories.

    Differs from the authors' decoding in documented ways, each chosen on tuning users only:
    the adaptive plausibility constraint (``plausibility=0.1``) — without it SmolLM2's outputs
    collapse into garbage (see :func:`workbench.science.dps.dps_generate`) — and a fixed ``alpha=1``
    with the top 2% of heads instead of the entropy alpha with 4%; ``dps-raw`` is the authors'
    decoding.

    Preference heads: PCS (uniform masking, output scope, exact; plain, or contrastive with
    ``contrast``) over ``pcs_examples`` leave-one-out examples built from the dataset's profile
    items (never the queries' gold outputs); the top ``top_percent`` % are masked. ``heads_file``: take the heads from
    saved :class:`~workbench.science.pcs_result.PreferenceScores` instead.
    """

    name = "dps"
    uses_profile = True
    # Chosen with `workbench tune` on the tuning users (README, "Preference heads"): alpha 1 and
    # the top 2% of plain-PCS heads beat the authors' entropy alpha with 4% there.
    top_percent: float = 2.0
    alpha: Any = 1.0
    alpha_cap: float | None = None  # with alpha="entropy": at most this much contrast per step
    plausibility: float | None = 0.1
    pcs_examples: int = 40
    heads_file: str | None = None
    contrast: str | None = None  # None: plain PCS; "history" / "generic": contrastive PCS (preference_scores)
    checks = {
        "top_percent": Check(above=0, maximum=100),
        "alpha": Check(minimum=0, words=("entropy",)),
        "alpha_cap": Check(minimum=0),
        "plausibility": Check(minimum=0, maximum=1),
        "pcs_examples": Check(whole=True, minimum=1),
        "heads_file": Check(file=True),
        "contrast": Check(choices=(None, "history", "generic")),
    }

    def describe(self) -> dict:
        # The masking and the PCS scope are fixed by the method; recorded so a reader sees them.
        return {**super().describe(), "how": "uniform", "scope": "output"}

    def prepare_run(self, model: Model, examples: list, dataset: Any) -> None:
        from workbench.science.pcs_result import PreferenceScores

        if self.heads_file:
            scores = PreferenceScores.load(self.heads_file, model=model)
            # contrast=None takes the file as it is (its kind is recorded with the run's heads)
            if self.contrast is not None and (scores.meta.get("contrast") or None) != self.contrast:
                raise ValueError(f"{self.heads_file} holds {scores.kind}, but dps.contrast={self.contrast!r}; "
                                 f"set dps.contrast={scores.meta.get('contrast') or 'none'} or use a file of that kind")
        else:
            # Heads are a property of the model on this data, found on the whole dataset's
            # histories — the same heads whichever users or how many queries a run takes, so
            # they are computed (or read from results/) once, not per run.
            pool = getattr(dataset, "whole", None) or examples
            scores = cached_profile_scores(model, list(pool), n=self.pcs_examples, k=self.settings.k,
                                           retrieval=self.settings.retrieval, contrast=self.contrast)
        self.scores = scores
        self.heads = scores.top_percent(self.top_percent)

    def decoder(self) -> Decoder:
        return DpsDecoder(tuple(self.heads), alpha=self.alpha, plausibility=self.plausibility, alpha_cap=self.alpha_cap)

    def label_scorer(self) -> LabelScorer:
        heads = tuple(self.heads)
        label = ";".join(f"L{layer}H{head}" for layer, head in heads)
        return DpsLabelScorer(info={"heads": label}, heads=heads, alpha=self.alpha, alpha_cap=self.alpha_cap)


@register_method
@dataclass
class DpsRaw(Dps):
    """DPS exactly as the authors decode: entropy alpha, no plausibility constraint."""

    name = "dps-raw"
    top_percent: float = 4.0
    alpha: Any = "entropy"
    plausibility: float | None = None


def cached_profile_scores(model: Model, examples: list, n: int = 40, k: int = 5, retrieval: str = "bm25",
                          progress: bool = True, contrast: str | None = None) -> Any:
    """PCS on leave-one-out profile examples of these examples' users, cached on disk."""
    from workbench.data.history import profile_examples
    from workbench.science.pcs import preference_scores, scored_fingerprint
    from workbench.science.pcs_result import PreferenceScores

    items = profile_examples(examples, n=n, k=k, by=retrieval)
    # Keyed on the prompts and targets scored, not on ids: another task's history examples can
    # have the same ids (LaMP-2N and LaMP-4 share articles).
    scored = scored_fingerprint(model, items, k, retrieval)
    key = stable_hash([model.name, str(model.dtype), k, retrieval, scored, contrast])
    path = cache_file("pcs", model.name, f"{key}.json")

    def build() -> Any:
        shipped = saved_scores(model, items, k=k, retrieval=retrieval, contrast=contrast, scored=scored)
        if shipped is not None:
            print(f"preference heads of {model.name}: saved scores {shipped.meta.get('path')} (same examples and settings)")
            return shipped
        if contrast == "history":
            # Contrastive = plain minus the same targets scored without the history
            # (tests/test_contrastive_pcs.py). The plain half is what `dps` with plain heads
            # already has (cached or saved), so only the no-history half — short prompts, a
            # fraction of the cost — is computed.
            plain = cached_profile_scores(model, examples, n=n, k=k, retrieval=retrieval, progress=progress)
            print(f"preference heads of {model.name}: the no-history half of contrastive PCS over {len(items)} "
                  f"history examples (the plain half: {plain.meta.get('path') or 'cached'})", flush=True)
            bare = preference_scores(model, items, how="uniform", scope="output", mode="exact", k=0,
                                     retrieval=retrieval, progress=progress, data="profile leave-one-out")
            return plain.minus_no_history(bare)
        print(f"preference heads of {model.name}: exact PCS over {len(items)} history examples x "
              f"{model.n_layers * model.n_heads} heads{' x 2 (contrast)' if contrast else ''}, once (the bar shows the "
              f"time left); cached in {path} for every later run", flush=True)
        return preference_scores(model, items, how="uniform", scope="output", mode="exact", k=k, contrast=contrast,
                                 retrieval=retrieval, progress=progress, data="profile leave-one-out")

    return cached(path, lambda p: PreferenceScores.load(p, model=model), build,
                  lambda scores, p: scores.save(p, overwrite=True))


def saved_scores(model: Model, items: list, k: int, retrieval: str, contrast: str | None,
                 directory: Path | None = None, scored: str | None = None) -> Any:
    """Scores saved in the results directory (``pcs_*.json``; :func:`workbench._util.results_dir`)
    computed on exactly these examples with these settings, or None. ``scored``: the examples'
    :func:`~workbench.science.pcs.scored_fingerprint` when the caller has it already."""
    import torch

    from workbench.science.pcs import scored_fingerprint
    from workbench.science.pcs_result import PreferenceScores

    if model.dtype != torch.float32:  # the saved scores were computed in float32
        return None
    directory = results_dir(directory)
    # Ids alone are not enough: LaMP-2N's history examples have LaMP-4's ids (same articles) but
    # other prompts and targets; ``scored`` pins the exact prompts and targets.
    want = {"model": model.name, "how": "uniform", "scope": "output", "mode": "exact", "k": k, "retrieval": retrieval,
            "example_ids": [ex.id for ex in items], "example_users": [ex.user_id for ex in items],
            "scored": scored or scored_fingerprint(model, items, k, retrieval)}
    for path in sorted(directory.glob("pcs_*.json")) if directory.is_dir() else []:
        try:
            scores = PreferenceScores.load(path, model=model)
        except ValueError:
            continue
        if all(scores.meta.get(key) == v for key, v in want.items()) and (scores.meta.get("contrast") or None) == contrast:
            scores.meta["path"] = str(path)
            return scores
    return None
