"""Token-level causal effects: how much each history token matters for an output.

For a prompt (a user's history, then the new input) and an output ``y`` (e.g. the output
the user wrote), the effect of prompt token ``i`` is::

    effect_i = log p(y | prompt) - log p(y | prompt with token i deleted)

teacher-forced, averaged over the output's tokens (``reduce="mean"``, nats per output token)
or summed (``reduce="sum"``). Positive = the token makes the output more likely.

:func:`trace_tokens` computes it six ways (``mode``, one of :data:`MODES`): two that delete
tokens and four gradient estimates, all traced tokens at once.

- ``"exact"``: every token deleted in turn, reusing what a deletion cannot change. Tokens
  before ``i`` never see token ``i``, so their keys and values are computed once (a KV cache
  of the prefix that grows as we walk through the prompt) and only the suffix after ``i``
  (the rest of the prompt and the output) is run again, at the position ids it has after the
  deletion. The vocabulary projection runs only where the output is predicted. Same numbers
  as deleting the token and re-running everything (``"naive"``), or as zeroing its column of
  the attention mask; about half the work.
- ``"naive"``: one full forward per deleted token, nothing reused (the reference).
- ``"gxi"``: gradient x input on the token embeddings, from one forward and one backward
  pass. First-order estimate of replacing a token's embedding by zero. Aliases ``"grad"``,
  ``"gradient"``.
- ``"ig"``: integrated gradients on the embeddings (embeddings of the traced tokens scaled
  from zero to their value in ``ig_steps`` midpoint steps). (``"fast"``, its old alias, is
  refused: in :mod:`workbench.science.pcs` ``mode="fast"`` means attribution patching.)
- ``"attn"``: the gradient of the score with respect to an *attention gate* per traced token
  (every query's attention to that token, in every layer and head, multiplied by the gate
  before the softmax renormalises), at gate 1; one forward and one backward pass. A gate of
  zero is the attention-mask deletion of the token, so this estimates deletion itself.
- ``"attn-sat"``: ``"attn"`` with AtP*'s fix for attention saturation (Kramár et al. 2024):
  each layer's change from removing the key is computed exactly (``1 / (1 - p)`` times the
  linear one, ``p`` the query's attention to the key), the rest stays first order. Same cost.
- ``"attn-ig"``: integrated gradients along the attention gates, from zero to one in
  ``ig_steps`` midpoint steps.

The embedding modes estimate *zeroing an embedding*, not deleting a token (the position
stays); the gate modes estimate masking the token out of attention, which is deletion up to
the position shift of later tokens. All four approximate ``exact``;
``benchmarks/bench_tracing.py`` measures how well (rank correlation) and how much faster.

**Difference in effects** (``generic_target=``): the same effects for a generic output (what
the model writes without the history) are computed too; ``effect - effect_generic`` separates
tokens that push the model towards *this user's* output from tokens that help any answer
(e.g. the instruction words). This contrast is our design; the SteerX paper's text was not
available to us (see ``shared/research/methods.md`` §3).

:func:`trace_example` builds the prompt of a LaMP example (or a ``dict`` user like
:data:`workbench.data.examples.EXAMPLE_USER`) and labels every token with the profile item and
part (``input`` / ``output``) it comes from (:mod:`workbench.science.token_labels`). The result is a
:class:`~workbench.science.token_effects.TokenEffects`.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import torch

from workbench._util import empty_kv_cache, frozen_parameters, truncate_kv_cache, verify_count
from workbench.core.hooks import last_positions_hook, hook_point
from workbench.core.model import Model
from workbench.data.history import item_fields
from workbench.science.token_effects import TokenEffects
from workbench.science.token_labels import SCOPES, PromptTokens, label_tokens

__all__ = ["MODES", "SCOPES", "PromptTokens", "TokenEffects", "example_prompt", "label_tokens", "spearman",
           "trace_example", "trace_tokens"]

MODES = ("exact", "naive", "gxi", "ig", "attn", "attn-sat", "attn-ig", "verified")
_ALIASES = {"grad": "gxi", "gradient": "gxi"}
# Mode names that meant something else here than elsewhere, and what to ask for instead.
_RENAMED_MODES = {"fast": "'fast' was this module's alias for 'ig' (integrated gradients), but "
                          "preference_scores' mode='fast' is attribution patching; ask for 'ig' (or the one-pass "
                          "'attn' estimate)"}
_ONE_PASS = ("gxi", "attn", "attn-sat")  # estimates from one forward and backward (no integration steps)


# ---- the computations -------------------------------------------------------------------------

def _target_ids(model: Model, target: str) -> torch.Tensor:
    t = model.tokenizer(target, add_special_tokens=False, return_tensors="pt").input_ids.to(model.device)
    if t.shape[-1] == 0:
        raise ValueError("the target text is empty; an effect on the likelihood needs at least one output token")
    return t


def _score(logits: torch.Tensor, targets: torch.Tensor, reduce: str) -> torch.Tensor:
    """Per-row log-likelihood of ``targets`` [T] from the logits that predict them [B, T, V]."""
    lp = logits.float().log_softmax(-1).gather(-1, targets.view(1, -1, 1).expand(logits.shape[0], -1, 1))[..., 0]
    return lp.mean(-1) if reduce == "mean" else lp.sum(-1)


@torch.no_grad()
def _base_scores(model: Model, prompt_ids: torch.Tensor, targets: list[torch.Tensor], reduce: str) -> list[float]:
    out = []
    n = prompt_ids.shape[1]
    for t in targets:
        ids = torch.cat([prompt_ids, t], dim=1)
        logits = model.bridge.run_with_hooks(ids, fwd_hooks=[last_positions_hook(model.n_layers, n - 1, t.shape[1])])
        out.append(float(_score(logits, t[0], reduce)[0]))
    return out


def _note_unchanged(seen: list | None, score: torch.Tensor) -> None:
    """Keep a one-pass estimate's score: its one forward runs the prompt as it is (alpha 1, gates
    open), so it is the base score and ``trace_tokens`` need not run that forward again. Callers
    pass ``seen`` only for a one-pass estimate."""
    if seen is not None:
        seen.append(float(score[0].detach()))


@torch.no_grad()
def _exact(model: Model, prompt_ids: torch.Tensor, targets: list[torch.Tensor], positions: list[int], reduce: str,
           batch_size: int, bar: Any) -> np.ndarray:
    """log p(target | prompt without token p) for each p, prefix KV shared and grown as we go."""
    bridge = model.bridge
    n = prompt_ids.shape[1]
    out = np.zeros((len(targets), len(positions)))
    cache = empty_kv_cache()
    cur = 0  # the cache holds positions [0, cur)
    for g0 in range(0, len(positions), batch_size):
        group = positions[g0:g0 + batch_size]
        p0 = group[0]
        if p0 > cur:
            # Extend the shared prefix; only the last position goes through the unembedding.
            bridge.run_with_hooks(prompt_ids[:, cur:p0], past_key_values=cache,
                                  fwd_hooks=[last_positions_hook(model.n_layers, p0 - cur - 1, 1)])
            cur = p0
        B = len(group)
        rows = torch.cat([torch.cat([prompt_ids[:, p0:p], prompt_ids[:, p + 1:]], dim=1) for p in group], dim=0)
        lo = n - 1 - p0 - 1  # where the (shifted) last prompt token sits in a row
        for ti, t in enumerate(targets):
            seq = torch.cat([rows, t.expand(B, -1)], dim=1)
            keep = last_positions_hook(model.n_layers, lo, t.shape[1])
            if B == 1:
                logits = bridge.run_with_hooks(seq, past_key_values=cache, fwd_hooks=[keep])
                truncate_kv_cache(cache, cur)
            else:
                batch_cache = copy.deepcopy(cache)
                batch_cache.batch_repeat_interleave(B)
                logits = bridge.run_with_hooks(seq, past_key_values=batch_cache, fwd_hooks=[keep])
            out[ti, g0:g0 + B] = _score(logits, t[0], reduce).cpu().numpy()
        bar.update(B)
    return out


@torch.no_grad()
def _naive(model: Model, prompt_ids: torch.Tensor, targets: list[torch.Tensor], positions: list[int], reduce: str,
           bar: Any) -> np.ndarray:
    """From scratch: delete the token, run the whole sequence (all logits), score."""
    n = prompt_ids.shape[1]
    out = np.zeros((len(targets), len(positions)))
    for k, p in enumerate(positions):
        for ti, t in enumerate(targets):
            ids = torch.cat([prompt_ids[:, :p], prompt_ids[:, p + 1:], t], dim=1)
            logits = model.bridge(ids)
            out[ti, k] = float(_score(logits[:, n - 2:n - 2 + t.shape[1]], t[0], reduce)[0])
        bar.update(1)
    return out


def _gradient(model: Model, prompt_ids: torch.Tensor, target: torch.Tensor, positions: list[int], reduce: str,
              alphas: Sequence[float], batch_size: int, bar: Any, seen: list | None = None) -> np.ndarray:
    """Integrated gradients (gradient x input when ``alphas == [1]``) of the target score
    with respect to the embeddings at ``positions``, zero baseline."""
    bridge = model.bridge
    n = prompt_ids.shape[1]
    ids = torch.cat([prompt_ids, target], dim=1)
    pos = torch.tensor(positions, device=ids.device)
    grads = torch.zeros(len(positions), model.d_model, dtype=torch.float32, device=ids.device)
    emb: dict[str, torch.Tensor] = {}
    with frozen_parameters(bridge):  # gradients for the embeddings only
        for a0 in range(0, len(alphas), batch_size):
            chunk = torch.tensor(alphas[a0:a0 + batch_size], device=ids.device, dtype=model.dtype)
            B = chunk.shape[0]

            def interpolate(x: torch.Tensor, hook: Any) -> torch.Tensor:
                x = x.detach()
                emb["x"] = x[0, pos].float()
                x = x.expand(B, -1, -1).clone()
                x[:, pos] = x[:, pos] * chunk.view(B, 1, 1)
                x.requires_grad_(True)
                emb["leaf"] = x
                return x

            with torch.enable_grad():
                logits = bridge.run_with_hooks(ids.expand(B, -1), fwd_hooks=[
                    ("hook_embed", interpolate), last_positions_hook(model.n_layers, n - 1, target.shape[1])])
                score = _score(logits, target[0], reduce)
                score.sum().backward()
            _note_unchanged(seen, score)
            grads += emb["leaf"].grad[:, pos].float().sum(0)
            bar.update(B)
    grads /= len(alphas)
    return (emb["x"] * grads).sum(-1).cpu().numpy()


def _gate_gradient(model: Model, prompt_ids: torch.Tensor, target: torch.Tensor, positions: list[int], reduce: str,
                   alphas: Sequence[float], batch_size: int, bar: Any, seen: list | None = None) -> np.ndarray:
    """Integrated gradients along attention gates.

    Every query's attention to key ``j`` (in every layer and head) is multiplied by a gate
    ``g_j`` before the softmax renormalises — ``g_j = 0`` is exactly the attention-mask
    deletion of token ``j`` (up to the position shift of later tokens). The effect estimate
    is ``mean over alpha of d score / d g_j`` at ``g = alpha`` for all traced tokens at once
    (one step at ``alpha = 1`` is the plain gate gradient). The gates enter as ``log g``
    added to the attention scores.
    """
    bridge = model.bridge
    n = prompt_ids.shape[1]
    ids = torch.cat([prompt_ids, target], dim=1)
    pos = torch.tensor(positions, device=ids.device)
    total = torch.zeros(len(positions), dtype=torch.float32, device=ids.device)
    with frozen_parameters(bridge):  # gradients for the gates only
        for a0 in range(0, len(alphas), batch_size):
            chunk = torch.tensor(alphas[a0:a0 + batch_size], dtype=torch.float32, device=ids.device)
            B = chunk.shape[0]
            bias = chunk.log().view(B, 1).expand(B, len(positions)).clone().requires_grad_(True)

            def gate(scores: torch.Tensor, hook: Any) -> torch.Tensor:
                add = torch.zeros(B, scores.shape[-1], dtype=scores.dtype, device=scores.device)
                add = add.index_add(1, pos, bias.to(scores.dtype))
                return scores + add[:, None, None, :]

            hooks = [(hook_point(L, "attn.hook_attn_scores"), gate) for L in range(model.n_layers)]
            with torch.enable_grad():
                logits = bridge.run_with_hooks(ids.expand(B, -1), fwd_hooks=hooks + [
                    last_positions_hook(model.n_layers, n - 1, target.shape[1])])
                score = _score(logits, target[0], reduce)
                score.sum().backward()
            _note_unchanged(seen, score)
            # d/dg = (1/g) d/d(log g)
            total += (bias.grad.float() / chunk.view(B, 1)).sum(0)
            bar.update(B)
    return (total / len(alphas)).cpu().numpy()


def _gate_saturation(model: Model, prompt_ids: torch.Tensor, target: torch.Tensor, positions: list[int], reduce: str,
                     alphas: Sequence[float], batch_size: int, bar: Any, seen: list | None = None,
                     correct: bool = True) -> np.ndarray:
    """The attention-gate gradient with AtP*'s correction for a key's attention saturation.

    The gate gradient linearises the softmax: one query's attention output moves by
    ``p (z - v_j)`` when key ``j`` is gated out, but removing the key really moves it by
    ``p (z - v_j) / (1 - p)`` (the rest renormalise), far more when the query attended
    mostly to ``j``. Here every (layer, head, query) term of the gradient is weighted by
    ``1 / (1 - p)`` before the sum: each layer's change is exact, its effect downstream
    still first order. One forward and one backward pass, like ``"attn"``.
    """
    bridge = model.bridge
    n = prompt_ids.shape[1]
    ids = torch.cat([prompt_ids, target], dim=1)
    pos = torch.tensor(positions, device=ids.device)
    biases: dict[int, torch.Tensor] = {}
    probs: dict[int, torch.Tensor] = {}

    def gate(scores: torch.Tensor, hook: Any) -> torch.Tensor:
        layer = int(hook.name.split(".")[1])
        b = torch.zeros(*scores.shape[:-1], len(positions), dtype=scores.dtype, device=scores.device,
                        requires_grad=True)
        biases[layer] = b
        return scores.index_add(-1, pos, b)

    def pattern(p: torch.Tensor, hook: Any) -> torch.Tensor:
        probs[int(hook.name.split(".")[1])] = p.detach()[..., pos].float()
        return p

    hooks = [h for L in range(model.n_layers) for h in (
        (hook_point(L, "attn.hook_attn_scores"), gate), (hook_point(L, "attn.hook_pattern"), pattern))]
    with frozen_parameters(bridge), torch.enable_grad():
        logits = bridge.run_with_hooks(ids, fwd_hooks=hooks + [last_positions_hook(model.n_layers, n - 1, target.shape[1])])
        score = _score(logits, target[0], reduce)
        score.sum().backward()
    _note_unchanged(seen, score)  # the gates enter at zero bias: the unchanged model
    total = torch.zeros(len(positions), dtype=torch.float32, device=ids.device)
    for layer, b in biases.items():
        # a key holding (nearly) all of a query's attention: removing it is undefined, cap the weight
        weight = 1.0 / (1.0 - probs[layer]).clamp_min(1e-3) if correct else 1.0
        total += (b.grad.float() * weight).flatten(0, -2).sum(0)
    bar.update(1)
    return total.cpu().numpy()


def adaptive_verify(ranked: list[int], words: np.ndarray, budget: int, verify: Callable[[list[int]], np.ndarray],
                    first: float = 0.5) -> list[int]:
    """``selection="adaptive"``: spend ``budget`` exact deletions, the share ``first`` on
    ``ranked`` (largest estimates first), then rounds of up to half of what is left on the
    unverified neighbours of verified tokens, the neighbours of the largest exact effects
    first. ``words``: each row's word id (-1 outside words). ``verify(rows)`` computes rows
    exactly and returns the sizes of all effects (exact where verified). Returns the rows
    verified. (``benchmarks/bench_verify_policies.py`` replays it on saved traces.)"""
    done = ranked[:max(1, int(budget * first))]
    sizes = verify(done)
    chosen = set(done)
    while len(chosen) < budget:
        candidates: dict[int, tuple[float, float]] = {}
        for i in chosen:
            near = {i - 1, i + 1}
            if words[i] >= 0:
                near |= set(np.flatnonzero(words == words[i]).tolist())
            for j in near:
                if 0 <= j < len(words) and j not in chosen:
                    # the verified neighbour's exact size, then the candidate's own estimate
                    candidates[j] = max(candidates.get(j, (-1.0, 0.0)), (float(sizes[i]), float(sizes[j])))
        take = max(1, (budget - len(chosen) + 1) // 2)
        batch = sorted(candidates, key=candidates.__getitem__, reverse=True)[:take] if candidates else \
            [i for i in ranked if i not in chosen][:take]
        sizes = verify(batch)
        chosen.update(batch)
    return sorted(chosen)


# ---- entry points --------------------------------------------------------------------------------

def trace_tokens(
    model: Model,
    prompt: Any,
    target: str,
    *,
    items: Sequence[dict] = (),
    fields: tuple[str, str] | None = None,
    positions: "str | Sequence[int]" = "history",
    mode: str = "exact",
    generic_target: str | None = None,
    reduce: str = "mean",
    ig_steps: int = 8,
    batch_size: int | None = None,
    verify: float = 0.25,
    estimate: str = "attn",
    selection: str = "adaptive",
    progress: bool = True,
) -> TokenEffects:
    """Effect of each prompt token on the log-likelihood of ``target``.

    Args:
        model: a :class:`workbench.Model`.
        prompt: text or chat messages (as for :meth:`Model.generate`).
        target: the output whose likelihood is traced (e.g. the user's real output).
        items: the history items in the order the prompt shows them, to label tokens by item
            and part; needed for the ``history`` scopes.
        fields: the items' input and output fields (the task's,
            :func:`workbench.data.history.item_fields`); default LaMP-4's.
        positions: ``"history"`` (input and output tokens of every item, the default),
            ``"outputs"``, ``"inputs"``, ``"prompt"`` (all prompt tokens) or a list of positions.
        mode: one of :data:`MODES` — ``"exact"`` (deletion with KV reuse), ``"naive"``
            (deletion, full forward per token), ``"gxi"`` (gradient x input on the embeddings),
            ``"ig"`` (integrated gradients on the embeddings), ``"attn"`` (gradient
            of an attention gate per token), ``"attn-sat"`` (the same with AtP*'s saturation
            fix) or ``"attn-ig"`` (integrated gradients along the
            gates) or ``"verified"`` (the ``estimate`` mode for every token, then the share
            ``verify`` it rates largest in size deleted for real; column ``exact`` marks
            them); see the module docstring.
        generic_target: a generic output (e.g. written without the history): its effects are
            traced too, giving ``effect_generic`` and ``effect_diff`` columns.
        reduce: ``"mean"`` (nats per output token, comparable across outputs) or ``"sum"``.
        ig_steps: integration steps for ``"ig"`` and ``"attn-ig"``.
        batch_size: deletions (``exact``) or integration steps (``ig``, ``attn-ig``) per forward pass;
            default 1 on CPU (no gain there), 16 on a GPU.
        verify: with ``mode="verified"``: a share of the traced tokens (``0 < verify < 1``) or a
            count (``>= 1``) to recompute exactly. Candidates are ranked by the size of the
            estimated effect on ``target`` (and, with ``generic_target``, on the difference).
        estimate: with ``mode="verified"``: the cheap mode that ranks the tokens (``"attn"``,
            ``"attn-sat"``, ``"gxi"``, ``"ig"`` or ``"attn-ig"``).
        selection: with ``mode="verified"``: which tokens get the exact budget. ``"estimate"``:
            the largest estimates. ``"adaptive"``: half the budget on the largest estimates,
            the rest in rounds on the neighbours (the tokens before and after, the rest of the
            word) of the largest *exact* effects found so far — effects cluster in words and
            phrases the estimate misses (``benchmarks/bench_verify_policies.py`` measures both).

    Returns:
        :class:`TokenEffects`.

    Example:
        >>> te = trace_tokens(model, prompt, "Why Composting Is Easy", items=profile)   # doctest: +SKIP
        >>> te.select(top_k=10)                                                          # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    if mode in _RENAMED_MODES:
        raise ValueError(f"mode={mode!r}: {_RENAMED_MODES[mode]}")
    mode = _ALIASES.get(mode, mode)
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: use one of {MODES}")
    if reduce not in ("mean", "sum"):
        raise ValueError(f"reduce={reduce!r}: use 'mean' (nats per output token) or 'sum'")
    if ig_steps < 1:
        raise ValueError(f"ig_steps={ig_steps} must be >= 1")
    if batch_size is None:
        batch_size = 1 if model.device.type == "cpu" else 16
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    labels = label_tokens(model, prompt, items) if fields is None else label_tokens(model, prompt, items, fields)
    pos = labels.positions(positions)
    prompt_ids = labels.ids
    targets = [_target_ids(model, target)]
    if generic_target is not None:
        targets.append(_target_ids(model, generic_target))
    for t in targets:
        model.check_fits(prompt_ids.shape[1] + t.shape[1], what="prompt plus target")
    t0 = time.perf_counter()
    n_verify = 0
    if mode == "verified":
        if estimate in _RENAMED_MODES:
            raise ValueError(f"estimate={estimate!r}: {_RENAMED_MODES[estimate]}")
        estimate = _ALIASES.get(estimate, estimate)
        if estimate not in ("gxi", "ig", "attn", "attn-sat", "attn-ig"):
            raise ValueError(f"estimate={estimate!r}: verified mode ranks tokens with 'attn', 'attn-sat', 'gxi', "
                             "'ig' or 'attn-ig'")
        n_verify = verify_count(verify, len(pos), "traced tokens")
        if selection not in ("estimate", "adaptive"):
            raise ValueError(f"selection={selection!r}: use 'adaptive' (neighbours of the largest exact effects) "
                             "or 'estimate' (the largest estimates only)")
    cheap = estimate if mode == "verified" else mode
    # a one-pass estimate (alone or ranking for verified mode) runs the unchanged prompt forward
    # anyway: its scores are the base, read from there instead of one more forward per target
    one_pass = cheap in _ONE_PASS
    base = [] if one_pass else _base_scores(model, prompt_ids, targets, reduce)
    steps = len(pos) if mode in ("exact", "naive") else len(targets) * (1 if one_pass else ig_steps)
    bar = tqdm(total=steps + n_verify, desc=f"token effects ({mode})", disable=not progress, leave=False)
    if mode == "exact":
        effects = np.array(base)[:, None] - _exact(model, prompt_ids, targets, pos, reduce, batch_size, bar)
    elif mode == "naive":
        effects = np.array(base)[:, None] - _naive(model, prompt_ids, targets, pos, reduce, bar)
    else:  # a gradient estimate (in verified mode, the one that ranks the tokens)
        alphas = [1.0] if one_pass else [(k + 0.5) / ig_steps for k in range(ig_steps)]
        fn = _gradient if cheap in ("gxi", "ig") else _gate_saturation if cheap == "attn-sat" else _gate_gradient
        effects = np.stack([fn(model, prompt_ids, t, pos, reduce, alphas, batch_size, bar,
                               seen=base if one_pass else None) for t in targets])
    exact_rows = None
    if mode == "verified":
        def size(e: np.ndarray) -> np.ndarray:
            return np.abs(e[0]) + (np.abs(e[0] - e[1]) if len(targets) > 1 else 0)

        def verify_rows(rows: list[int]) -> None:
            rows = sorted(rows)  # the exact pass shares the prefix cache in position order
            effects[:, rows] = np.array(base)[:, None] - _exact(model, prompt_ids, targets, [pos[i] for i in rows],
                                                                  reduce, batch_size, bar)

        ranked = np.argsort(-size(effects), kind="stable").tolist()
        if selection == "estimate":
            done = ranked[:n_verify]
            verify_rows(done)
        else:
            done = adaptive_verify(ranked, labels.frame.set_index("position").loc[pos, "word"].to_numpy(),
                                    n_verify, lambda rows: (verify_rows(rows), size(effects))[1])
        exact_rows = np.sort(np.array(done, dtype=int))
    bar.close()
    seconds = time.perf_counter() - t0
    frame = labels.frame.set_index("position").loc[pos].reset_index()
    frame = frame[["item", "item_id", "part", "position", "token", "word"]].copy()
    frame["effect"] = effects[0]
    if generic_target is not None:
        frame["effect_generic"] = effects[1]
        frame["effect_diff"] = effects[0] - effects[1]
    if exact_rows is not None:
        frame["exact"] = np.isin(np.arange(len(pos)), exact_rows)
    meta = {"model": model.name, "mode": mode, "target": target, "generic_target": generic_target,
            "reduce": reduce, "positions": positions if isinstance(positions, str) else "custom",
            "n_prompt_tokens": int(prompt_ids.shape[1]), "n_traced": len(pos),
            "logp": base[0], "logp_generic": base[1] if len(base) > 1 else None,
            "ig_steps": ig_steps if cheap.endswith("ig") else None, "seconds": round(seconds, 3),
            **({"estimate": cheap, "n_exact": n_verify, "selection": selection} if mode == "verified" else {})}
    return TokenEffects(frame, meta, text=labels.frame.attrs.get("text", ""), items=labels.items)


def example_prompt(model: Model, example: Any, k: int = 5, by: str = "bm25") -> tuple[Any, list[dict], str, Any]:
    """``(prompt, items in prompt order, query input, generic prompt)`` for a LaMP
    :class:`~workbench.data.records.Example` (the ``rag`` prompt) or a ``dict`` user with ``task``,
    ``profile`` and ``query`` (like :data:`workbench.data.examples.EXAMPLE_USER`; all its items are shown)."""
    from workbench.data.prompts import build_prompt, task_prompt

    if isinstance(example, dict):
        if not example.get("profile") or not example.get("query") or not example.get("task"):
            raise ValueError("a dict user needs a 'task', a non-empty 'profile' and a 'query' "
                             "(see workbench.data.examples.EXAMPLE_USER)")
        items, query, task = list(example["profile"]), example["query"], example["task"]
        return task_prompt(model, task, query, items), items, query, task_prompt(model, task, query)
    example.require_profile()
    prompt, info = build_prompt(model, example, k=k, by=by, reserve=0)
    by_id = {str(it.get("id", "")): it for it in example.profile}
    items = [by_id[i] for i in reversed(info["profile_ids"])]  # build_prompt shows the best-ranked item last
    generic, _ = build_prompt(model, example, k=0, reserve=0)
    from workbench.data.tasks import task_text

    return prompt, items, task_text(example), generic


def trace_example(
    model: Model,
    example: Any,
    *,
    target: str | None = None,
    generic: "bool | str" = False,
    k: int = 5,
    by: str = "bm25",
    max_new_tokens: int = 32,
    **kwargs: Any,
) -> TokenEffects:
    """Token effects of the history in a LaMP example's ``rag`` prompt (or a dict user's).

    ``target`` defaults to the example's gold output (what the user really wrote):
    use that only to *explain* a known example, never to build anything evaluated on it.
    ``generic=True`` also traces the model's own output without the history (greedy) for the
    difference in effects; a string is used as that generic output. Other keyword arguments
    go to :func:`trace_tokens` (``mode``, ``positions``, ``reduce``, ...).
    """
    from workbench.data.prompts import generate_line

    prompt, items, _, generic_prompt = example_prompt(model, example, k=k, by=by)
    if target is None:
        target = example.get("gold") if isinstance(example, dict) else example.gold
        if not target:
            raise ValueError("this example has no gold output; pass target=... (e.g. the model's personalized output)")
    generic_target = None
    if generic is True:
        generic_target = generate_line(model, generic_prompt, max_new_tokens=max_new_tokens) or None
        if generic_target is None:
            raise RuntimeError("the model wrote an empty generic output; pass generic='some text' instead")
    elif isinstance(generic, str):
        generic_target = generic
    task = example["task"] if isinstance(example, dict) else example.task
    kwargs.setdefault("fields", item_fields(task))
    te = trace_tokens(model, prompt, target, items=items, generic_target=generic_target, **kwargs)
    te.meta["example"] = example.get("user_id", "") if isinstance(example, dict) else example.id
    return te


def spearman(a: Iterable[float], b: Iterable[float]) -> float:
    """Spearman rank correlation of two equally long score lists (ties get average ranks)."""
    a = pd.Series(list(a), dtype=float)
    b = pd.Series(list(b), dtype=float)
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"need two score lists of the same length >= 2, got {len(a)} and {len(b)}")
    r = a.rank().corr(b.rank())
    return float(r) if not math.isnan(r) else 0.0
