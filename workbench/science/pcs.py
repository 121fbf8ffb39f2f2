"""Preference heads: which attention heads carry a user's preferences.

The Preference Contribution Score of a head (Differential Preference Steering, §1 of the
method notes) is how much the user-aligned output depends on it::

    PCS(layer, head) = mean over examples [ NLL(gold | prompt; head masked) - NLL(gold | prompt) ]

with NLL averaged over the gold output's tokens. Positive = masking the head makes the
personalized output less likely.

:func:`preference_scores` computes it for every head, three ways:

- ``mode="exact"``: every head masked in turn, reusing what the mask cannot change — the
  residual stream below the masked layer (each masked pass starts at that layer), and in
  ``scope="output"`` the prompt's KV cache;
- ``mode="fast"``: attribution patching — one forward and one backward give the first-order
  estimate ``grad(NLL) . (z_masked - z)`` for all heads at once;
- ``mode="naive"``: one full forward per head, nothing reused (the reference the
  benchmarks compare against; same numbers as ``exact``).

``scope`` says where the mask acts: ``"all"`` positions, or only the ``"output"`` positions
(the last prompt token and the gold tokens) with the prompt's computation shared — the
regime DPS decoding uses (see :mod:`workbench.science.dps`).

Examples come from :func:`workbench.data.history.profile_examples` by default: each of a user's
earlier items becomes a query (its article -> the user's own headline) with the user's
*other* items as the profile, so no gold output of the evaluation queries is ever looked at.

The result, :class:`~workbench.science.pcs_result.PreferenceScores`, lives in :mod:`workbench.science.pcs_result`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, Iterable

import numpy as np
import pandas as pd
import torch

from workbench.core._reuse import fork_kv_cache, run_from_layer
from workbench._util import check_int, empty_kv_cache, frozen_parameters, stable_hash, verify_count
from workbench.core.heads import check_how, head_means, mask_heads
from workbench.core.hooks import last_positions_hook, hook_point
from workbench.core.model import Model
from workbench.data.retrieval import RETRIEVALS
from workbench.science.pcs_result import PreferenceScores

__all__ = ["CONTRASTS", "MODES", "SCOPES", "ScoringExample", "preference_scores",
           "rank_agreement", "sparsity_curve"]

SCOPES = ("all", "output")
MODES = ("exact", "fast", "verified", "naive")
CONTRASTS = (None, "history", "generic")


# ---- examples -------------------------------------------------------------------------------

@dataclass(frozen=True)
class ScoringExample:
    """A prompt and the output whose likelihood is scored, with where it came from."""

    id: str
    user_id: str
    prompt: Any
    target: str
    base_prompt: Any = None  # the same input without the user's history (contrast="history")
    generic_target: str | None = None  # the model's own output without the history (contrast="generic")

    def contrast_pair(self, contrast: str) -> "ScoringExample":
        """The (prompt, target) whose head effects are subtracted under ``contrast``."""
        if contrast == "history":
            if self.base_prompt is None:
                raise ValueError(f"example {self.id}: contrast='history' needs base_prompt (the prompt without "
                                 "the user's history); pass Examples, or set it on the ScoringExample")
            return replace(self, prompt=self.base_prompt)
        if not self.generic_target:
            raise ValueError(f"example {self.id}: contrast='generic' needs generic_target (the model's output "
                             "without the history); pass Examples, or set it on the ScoringExample")
        return replace(self, target=self.generic_target)


def _scoring_examples(model: Model, examples: Iterable[Any], k: int, by: str,
                      contrast: str | None = None) -> list[ScoringExample]:
    from workbench.data.prompts import build_prompt, generate_line

    out = []
    for i, ex in enumerate(examples):
        if isinstance(ex, ScoringExample):
            out.append(ex)
        elif isinstance(ex, tuple) and len(ex) == 2:
            out.append(ScoringExample(str(i), "", ex[0], ex[1]))
        else:
            if ex.gold is None:
                raise ValueError(f"example {ex.id} has no gold output; PCS scores the likelihood of a gold output")
            if k > 0:
                ex.require_profile()
            prompt, _ = build_prompt(model, ex, k=k, by=by, reserve=0)
            base = generic = None
            if contrast is not None:
                base, _ = build_prompt(model, ex, k=0, reserve=0)
            if contrast == "generic":
                generic = generate_line(model, base, max_new_tokens=32) or None
            out.append(ScoringExample(ex.id, ex.user_id, prompt, ex.gold, base, generic))
    if not out:
        raise ValueError("no examples to score; pass a Dataset, Examples, or (prompt, target) pairs")
    if contrast is not None:
        for ex in out:
            ex.contrast_pair(contrast)  # every example can be contrasted, checked before any work
    return out


def scored_hash(items: list[ScoringExample]) -> str:
    """A fingerprint of exactly what is scored: each prompt and its target. Two datasets can share
    example ids (LaMP-4 and LaMP-2N hold the same authors' articles) while the prompts and targets —
    a headline vs a category — differ, so saved scores are matched on this, not on ids."""
    def text(prompt: Any) -> str:  # chat messages, text, or token ids (str() of a tensor elides the middle)
        return str(prompt.tolist() if isinstance(prompt, torch.Tensor) else prompt)

    return stable_hash([[text(ex.prompt), ex.target] for ex in items])


def scored_fingerprint(model: Model, examples: Iterable[Any], k: int = 5, retrieval: str = "bm25") -> str:
    """:func:`scored_hash` of the plain (uncontrasted) prompts and targets PCS builds from ``examples``."""
    return scored_hash(_scoring_examples(model, examples, k, retrieval))


# ---- scoring one example with reuse -------------------------------------------------------

class _Scorer:
    """NLL of one example's target under any head mask, reusing what the mask can't change."""

    def __init__(self, model: Model, ex: ScoringExample, scope: str, reuse: bool = True):
        self.model, self.scope, self.reuse = model, scope, reuse
        self.ids, self.start = model.prompt_and_target(ex.prompt, ex.target)
        bridge = model.bridge
        n_layers = model.n_layers
        self.targets = self.ids[0, self.start:]
        self.resid: dict[int, torch.Tensor] = {}
        store = [(hook_point(L, "hook_resid_pre"), self._store(L)) for L in range(n_layers)] if reuse else []
        if scope == "all":
            # Only the positions that predict the target need the unembedding (a 49k-row matmul).
            logits = bridge.run_with_hooks(self.ids, fwd_hooks=store + [self._slice_hook()])
        else:
            # Shared prompt prefix: every position before the last prompt token, unmasked.
            self.prefix_len = self.start - 1
            self.suffix = self.ids[:, self.prefix_len:]
            self.cache = self._prefix_cache()
            # Each pass extends a fork of the prefix cache: cutting the cache back afterwards
            # can't restore what a sliding-window layer evicted.
            logits = bridge.run_with_hooks(self.suffix, fwd_hooks=store, past_key_values=fork_kv_cache(self.cache))
        self.base = self._nll(logits)

    def _store(self, layer: int):
        def store(x: torch.Tensor, hook: Any) -> None:
            self.resid[layer] = x.detach()

        return store

    def _slice_hook(self) -> tuple[str, Any]:
        # The positions that predict the target: the last prompt token up to the last but one.
        return last_positions_hook(self.model.n_layers, self.start - 1, self.ids.shape[1] - self.start)

    def _prefix_cache(self) -> Any:
        if self.prefix_len == 0:
            return empty_kv_cache()
        _, cache = self.model.bridge(self.ids[:, : self.prefix_len], return_type="logits_and_cache")
        return cache

    def _nll(self, logits: torch.Tensor) -> float:
        n = self.targets.shape[0]
        lp = logits[0, :n].float().log_softmax(-1)
        return float(-lp.gather(-1, self.targets[:, None]).mean())

    def masked(self, mask: Any) -> float:
        """NLL with ``mask`` (a HeadMask) active at the scope's positions."""
        bridge = self.model.bridge
        low = min(mask.layers) if mask.layers else 0
        if self.scope == "all":
            with mask:
                if self.reuse:
                    logits = run_from_layer(bridge, self.resid[low], low, fwd_hooks=[self._slice_hook()])
                else:
                    logits = bridge(self.ids)[:, self.start - 1:]
            return self._nll(logits)
        if self.reuse:
            with mask:
                logits = run_from_layer(bridge, self.resid[low], low, past_key_values=fork_kv_cache(self.cache))
        else:  # from scratch: the prompt prefix unmasked, then the output positions masked
            cache = self._prefix_cache()
            with mask:
                logits = bridge(self.suffix, past_key_values=cache)
        return self._nll(logits)


# ---- fast mode: attribution patching --------------------------------------------------------

def _attribution(model: Model, ex: ScoringExample, scope: str, how: str, means: torch.Tensor | None) -> np.ndarray:
    """First-order estimate of NLL(masked) - NLL for every head: grad(NLL) . (z_masked - z)."""
    bridge = model.bridge
    ids, start = model.prompt_and_target(ex.prompt, ex.target)
    zs: dict[int, torch.Tensor] = {}
    vs: dict[int, torch.Tensor] = {}

    def leaf(x: torch.Tensor, hook: Any) -> torch.Tensor:
        # Parameters don't need gradients here; make the embedding the leaf the graph grows from.
        return x.detach().requires_grad_(True)

    def keep_z(layer: int):
        def fn(z: torch.Tensor, hook: Any) -> torch.Tensor:
            z.retain_grad()
            zs[layer] = z
            return z

        return fn

    def keep_v(layer: int):
        def fn(v: torch.Tensor, hook: Any) -> None:
            vs[layer] = v.detach()

        return fn

    hooks = [("hook_embed", leaf)] + [(hook_point(L, "attn.hook_z"), keep_z(L)) for L in range(model.n_layers)]
    if how == "uniform":
        hooks += [(hook_point(L, "attn.hook_v"), keep_v(L)) for L in range(model.n_layers)]
    with frozen_parameters(bridge), torch.enable_grad():
        logits = bridge.run_with_hooks(ids, fwd_hooks=hooks)
        lp = logits[0, start - 1:-1].float().log_softmax(-1)
        nll = -lp.gather(-1, ids[0, start:, None]).mean()
        nll.backward()
    lo = 0 if scope == "all" else start - 1
    hi = ids.shape[1] - 1  # the last position predicts nothing that is scored
    out = np.zeros((model.n_layers, model.n_heads))
    group = model.n_heads // model.n_kv_heads
    for L in range(model.n_layers):
        z = zs[L].detach()[0, lo:hi].float()
        g = zs[L].grad[0, lo:hi].float()
        if how == "zero":
            alt = torch.zeros_like(z)
        elif how == "mean":
            alt = means[L].float().to(z.device)[None].expand_as(z)
        else:
            # A zero query attends uniformly over the visible context: z becomes the running
            # mean of the values of the head's key/value group.
            v = vs[L][0].float()
            counts = torch.arange(1, v.shape[0] + 1, device=v.device, dtype=v.dtype)[:, None, None]
            running = (v.cumsum(0) / counts)[lo:hi]
            alt = running.repeat_interleave(group, dim=1)
        out[L] = ((alt - z) * g).sum(dim=(0, 2)).cpu().numpy()
    return out


# ---- the main entry point -----------------------------------------------------------------------

def _head_effects(model: Model, ex: ScoringExample, scope: str, mode: str, how: str, means: Any, bar: Any,
                  heads: list | None = None) -> np.ndarray:
    """``[n_layers, n_heads]``: NLL of ``ex.target`` with each head masked minus without
    (masking modes: only ``heads`` if given, the other entries 0)."""
    if mode == "fast":
        out = _attribution(model, ex, scope, how, means)
        bar.update(1)
        return out
    out = np.zeros((model.n_layers, model.n_heads))
    with torch.no_grad():
        scorer = _Scorer(model, ex, scope, reuse=(mode == "exact"))
        for layer, head in heads or [(la, h) for la in range(model.n_layers) for h in range(model.n_heads)]:
            mask = mask_heads(model, [(layer, head)], how=how, reference=means)
            out[layer, head] = scorer.masked(mask) - scorer.base
            bar.update(1)
    return out


def preference_scores(
    model: Model,
    examples: Iterable[Any],
    *,
    how: str = "uniform",
    scope: str = "output",
    mode: str = "exact",
    k: int = 5,
    retrieval: str = "bm25",
    reference: Any = None,
    contrast: str | None = None,
    verify: float = 0.25,
    progress: bool = True,
    data: str = "",
    cluster: Any = None,
) -> PreferenceScores:
    """Preference Contribution Score of every attention head.

    Plain PCS (``contrast=None``) is how much the user's output depends on a head — which is
    also high for heads *every* fluent output needs. A contrastive score subtracts what the
    head does without the user's preference:

    - ``contrast="history"``: how much masking the head removes the *personalization gain*,
      ``[NLL_m(y|x,u) - NLL(y|x,u)] - [NLL_m(y|x) - NLL(y|x)]`` (the same output, scored with
      and without the user's history in the prompt);
    - ``contrast="generic"``: the user's own output vs the model's generic output (greedy,
      no history) for the same input, both with the history:
      ``[NLL_m(y|x,u) - NLL(y|x,u)] - [NLL_m(g|x,u) - NLL(g|x,u)]``.

    Both work in every mode; the contrast doubles the cost.

    Args:
        model: a :class:`workbench.Model`.
        examples: :class:`~workbench.data.records.Example` objects with gold outputs (their prompt is
            the ``rag`` prompt with the user's top-``k`` profile items), ``(prompt, target)``
            pairs, or :class:`ScoringExample` objects. :func:`profile_examples` makes
            leak-free ones from users' histories.
        how: ``"uniform"`` (zero the query: the DPS authors' masking), ``"zero"`` or ``"mean"``.
        scope: ``"output"`` (mask only where the output is produced, prompt shared: the DPS
            decoding regime) or ``"all"`` positions.
        mode: ``"exact"`` (each head masked in turn, unchanged computation reused), ``"fast"``
            (attribution patching: one forward + backward per example), ``"verified"`` (fast
            for every head, then the ``verify`` heads the estimate rates most important, either
            sign, recomputed exactly on every example; ``scores.frame["exact"]`` marks them) or
            ``"naive"`` (one full forward per head, the reference the others are checked against).
            ``"exact"`` stays the default: verified PCS does not reach the bar set for it
            (top-10 heads >= 0.8 at <= 1/3 of exact's time; ``benchmarks/bench_verified_pcs.py``
            gives 0.6 at 0.33, 0.8 at 0.44 — README).
        verify: with ``mode="verified"``, how many heads to recompute exactly: a share of all
            heads (``0 < verify < 1``) or a count (``verify >= 1``).
        reference: texts for ``how="mean"`` (each head's mean output over them).
        contrast: ``None`` (plain PCS), ``"history"`` or ``"generic"`` (see above).
        data: a label recorded with the scores (e.g. the dataset path).
        cluster: a :class:`workbench.runner.scaleout.Cluster` (anything with its ``map_examples``) to spread the examples over Ray workers
            (each loads the model by name); the scores equal a serial run's.

    Returns:
        :class:`PreferenceScores`.

    Example:
        >>> ex = profile_examples(load_lamp4_news(), n=20)          # doctest: +SKIP
        >>> scores = preference_scores(model, ex); scores.heatmap()  # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    check_how(how, reference)
    if scope not in SCOPES:
        raise ValueError(f"scope={scope!r}: use 'output' (mask where the output is produced) or 'all'")
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: use one of {MODES}")
    k = check_int("k", k, minimum=0)
    if retrieval not in RETRIEVALS:
        raise ValueError(f"retrieval={retrieval!r}: use 'bm25' or 'recency'")
    if contrast not in CONTRASTS:
        raise ValueError(f"contrast={contrast!r}: use None (plain PCS), 'history' or 'generic'")
    L, H = model.n_layers, model.n_heads
    n_verify = verify_count(verify, L * H, "heads") if mode == "verified" else 0
    items = _scoring_examples(model, examples, k, retrieval, contrast)
    means = None
    if how == "mean":
        means = reference if isinstance(reference, torch.Tensor) and reference.is_floating_point() else head_means(model, reference)
    t0 = time.perf_counter()
    twice = 1 if contrast is None else 2
    first = "fast" if mode == "verified" else mode  # verified: the estimate ranks, exact checks the top
    steps = len(items) * ((1 if first == "fast" else L * H) + n_verify) * twice
    desc = f"PCS ({mode}{f', {n_verify} heads exact' if n_verify else ''}{', contrast ' + contrast if contrast else ''})"
    bar = tqdm(total=steps, desc=desc, disable=not progress)
    per = _all_effects(model, items, scope, first, how, means, contrast, bar, cluster=cluster)
    extra: dict = {}
    if mode == "verified":
        # The heads the estimate rates largest in size: a first-order estimate can get the sign
        # of a large effect wrong, so both signs are candidates.
        order = np.argsort(-np.abs(per.mean(0)).ravel(), kind="stable")[:n_verify]
        chosen = [(int(j // H), int(j % H)) for j in order]
        exact = _all_effects(model, items, scope, "exact", how, means, contrast, bar, heads=chosen, cluster=cluster)
        for layer, head in chosen:
            per[:, layer, head] = exact[:, layer, head]
        extra["verified_heads"] = [list(h) for h in chosen]
    bar.close()
    meta = {
        "model": model.name, "n_layers": L, "n_heads": H, "how": how, "scope": scope, "mode": mode,
        "contrast": contrast, "k": k, "retrieval": retrieval, "data": data, "n_examples": len(items),
        "example_ids": [ex.id for ex in items], "example_users": [ex.user_id for ex in items],
        "scored": scored_hash(items), **extra,
        "seconds": round(time.perf_counter() - t0, 2), "created": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    return PreferenceScores(per, meta)


def _all_effects(model: Model, items: list, scope: str, mode: str, how: str, means: Any, contrast: str | None,
                 bar: Any, heads: list | None = None, cluster: Any = None) -> np.ndarray:
    """``[n_examples, n_layers, n_heads]`` head effects, minus those on the contrast pair
    (examples spread over Ray workers when ``cluster`` is given: the same numbers)."""
    kwargs = {"scope": scope, "mode": mode, "how": how, "means": means, "contrast": contrast, "heads": heads}
    if cluster is not None:
        # The cluster (workbench.runner.scaleout) calls example_head_effects on its workers: the
        # science hands it the work and never imports the runner.
        steps = (1 if mode == "fast" else len(heads or range(model.n_layers * model.n_heads))) * (1 + (contrast is not None))
        per_example = cluster.map_examples(model.name, items, kwargs, dtype=model.dtype,
                                           on_each=lambda: bar.update(steps))
        return np.stack(per_example)
    per = np.zeros((len(items), model.n_layers, model.n_heads))
    for i, ex in enumerate(items):
        per[i] = example_head_effects(model, ex, bar=bar, **kwargs)
    return per


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass


def example_head_effects(model: Model, ex: ScoringExample, *, scope: str, mode: str, how: str, means: Any,
                     contrast: str | None, heads: list | None = None, bar: Any = None) -> np.ndarray:
    """One example's head effects, minus those on its contrast pair."""
    bar = bar or _NoBar()
    out = _head_effects(model, ex, scope, mode, how, means, bar, heads)
    if contrast is not None:
        out -= _head_effects(model, ex.contrast_pair(contrast), scope, mode, how, means, bar, heads)
    return out


def sparsity_curve(
    model: Model,
    examples: Iterable[Any],
    scores: PreferenceScores,
    max_k: int = 10,
    n_random: int = 5,
    seed: int = 0,
    k: int = 5,
    retrieval: str = "bm25",
    progress: bool = True,
) -> pd.DataFrame:
    """NLL increase when masking the top-``j`` heads vs ``j`` random heads, ``j = 1..max_k``.

    Uses the masking and scope the scores were computed with. Returns one row per
    (j, kind, draw): ``kind`` is ``"top"`` (draw 0) or ``"random"`` (draws 0..n_random-1, the
    same random sets for every example), ``delta_nll`` the mean over examples.
    Plot with :func:`workbench.runner.figures.sparsity_figure`.
    """
    from tqdm.auto import tqdm

    how, scope = scores.meta["how"], scores.meta["scope"]
    if how == "mean":
        raise ValueError("sparsity_curve supports scores computed with how='uniform' or 'zero'")
    items = _scoring_examples(model, examples, k, retrieval)
    rng = np.random.default_rng(seed)
    all_heads = [(l, h) for l in range(model.n_layers) for h in range(model.n_heads)]
    ranked = scores.top(max_k)
    sets = []
    for j in range(1, max_k + 1):
        sets.append((j, "top", 0, ranked[:j]))
        for d in range(n_random):
            pick = rng.choice(len(all_heads), size=j, replace=False)
            sets.append((j, "random", d, [all_heads[p] for p in pick]))
    totals = np.zeros(len(sets))
    bar = tqdm(total=len(items) * len(sets), desc="top vs random heads", disable=not progress)
    with torch.no_grad():
        for ex in items:
            scorer = _Scorer(model, ex, scope)
            for s, (_, _, _, heads) in enumerate(sets):
                totals[s] += scorer.masked(mask_heads(model, heads, how=how)) - scorer.base
                bar.update(1)
    bar.close()
    return pd.DataFrame([{"k": j, "kind": kind, "draw": d, "delta_nll": totals[s] / len(items),
                          "heads": ", ".join(f"L{l}H{h}" for l, h in heads)}
                         for s, (j, kind, d, heads) in enumerate(sets)])


def rank_agreement(a: PreferenceScores, b: PreferenceScores, k: int = 10) -> dict[str, float]:
    """How much two score sets agree: Spearman correlation over all heads and top-``k`` overlap."""
    if a.matrix.shape != b.matrix.shape:
        raise ValueError(f"scores of different shapes {a.matrix.shape} and {b.matrix.shape}")
    ra = pd.Series(a.matrix.ravel()).rank()
    rb = pd.Series(b.matrix.ravel()).rank()
    overlap = len(set(a.top(k)) & set(b.top(k))) / k
    return {"spearman": float(ra.corr(rb)), f"top{k}_overlap": overlap}
