"""Differential Preference Steering: contrast the model with and without its preference heads.

At every decoding step (method notes §1.3; the authors' code)::

    score = (1 + alpha) * log p_full - alpha * log p_masked

where ``p_masked`` is the same model with the preference heads masked (``uniform`` by
default: their queries zeroed). Tokens the preference heads push up get pushed further.
``alpha`` is a number, or ``"entropy"`` (the authors' default): the entropy of ``p_full``
in nats, so the contrast is strong where the model is unsure and weak where it is certain.

Both streams run as the two rows of one batch — one forward per step — each with its own
KV cache rows. By default (``mask_prompt=False``, the authors' variant) the prompt is
prefilled once by the intact model and shared by both rows; the mask then acts from the
last prompt token on, so even the first output token is contrasted. ``mask_prompt=True``
masks the prompt's computation too (the formula read literally).

``alpha=0`` gives plain greedy decoding, token for token.
"""

from __future__ import annotations

import copy
import html
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import pandas as pd
import torch

from workbench.core._reuse import run_from_layer
from workbench._util import check_int, check_number, check_sampling, filter_logits
from workbench.core.heads import HeadMask, mask_heads
from workbench.core.model import Model
from workbench.core.hooks import last_positions_hook


@dataclass
class DpsOutput:
    """The text DPS wrote and, per step, what the contrast did."""

    text: str
    tokens: list[int]
    steps: pd.DataFrame = field(repr=False)

    def __repr__(self) -> str:
        changed = int(self.steps["changed"].sum()) if len(self.steps) else 0
        return f"DpsOutput({self.text!r}, {len(self.tokens)} tokens, {changed} changed by the contrast)"

    def _repr_html_(self) -> str:
        return (f"<p><b>DPS:</b> {html.escape(self.text)}</p>"
                + self.steps.to_html(index=False, float_format="{:.3f}".format, escape=True))


def as_head_mask(model: Model, heads: Any, how: str) -> HeadMask:
    if isinstance(heads, HeadMask):
        return heads
    if hasattr(heads, "top") and hasattr(heads, "frame"):
        raise ValueError("pass heads as a list, e.g. scores.top(11) or scores.weights(11), not the scores object")
    mask = mask_heads(model, heads, how=how)
    if not mask.heads:
        raise ValueError("heads is empty; DPS needs at least one preference head to mask "
                         "(e.g. preference_scores(...).top_percent(4))")
    return mask


def check_dps_args(alpha: Any, alpha_cap: Any, max_new_tokens: Any, plausibility: Any) -> int:
    """Every DPS setting checked before any work (NaN would otherwise turn every score NaN, and
    the output into an empty string)."""
    if isinstance(alpha, str):
        if alpha != "entropy":
            raise ValueError(f"alpha={alpha!r}: give a number >= 0 or 'entropy'")
    else:
        check_number("alpha", alpha, minimum=0)
    if alpha_cap is not None:
        check_number("alpha_cap", alpha_cap, minimum=0)
    if plausibility is not None:
        beta = check_number("plausibility", plausibility)
        if not 0 < beta <= 1:
            raise ValueError(f"plausibility={plausibility} must be in (0, 1], e.g. 0.1 (or None for no constraint)")
    return check_int("max_new_tokens", max_new_tokens, minimum=1)


@torch.no_grad()
def dps_generate(
    model: Model,
    prompt: Any,
    heads: "list | Mapping | HeadMask",
    alpha: "float | str" = "entropy",
    *,
    how: str = "uniform",
    max_new_tokens: int = 64,
    mask_prompt: bool = False,
    alpha_cap: float | None = None,
    plausibility: float | None = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float | None = None,
    top_k: int | None = None,
    seed: int | None = None,
    chat: bool | None = None,
    details: bool = False,
    until: Callable[[str], bool] | None = None,
    branch: bool = True,
) -> "str | DpsOutput":
    """Generate with Differential Preference Steering.

    Args:
        model: a :class:`workbench.Model`.
        prompt: text, chat messages or token ids (as for ``model.generate``).
        heads: the preference heads: ``(layer, head)`` pairs, a ``{(layer, head): weight}``
            mapping for weighted (partial) masking, or a :class:`HeadMask`.
        alpha: contrast strength ``>= 0``, or ``"entropy"`` (per step, the entropy of the
            intact model's next-token distribution; capped at ``alpha_cap`` if given).
        how: masking of the heads (``"uniform"``: the authors' query zeroing).
        mask_prompt: also mask the prompt's computation (default: prompt shared, unmasked).
        plausibility: ``beta`` of the adaptive plausibility constraint of contrastive decoding
            (Li et al., 2023): only tokens with ``p_full >= beta * max p_full`` can be chosen.
            The DPS authors use none (``None``, the default here). On a small model, masking
            heads every output needs (e.g. an early-layer head) leaves a broken masked model,
            and the unconstrained contrast then promotes tokens the intact model finds absurd;
            ``0.1`` prevents that.
        do_sample, temperature, top_p, top_k, seed: sampling from ``softmax(score / T)``;
            greedy by default.
        details: return a :class:`DpsOutput` with per-step alpha and what changed.
        until: stop once this returns True for the text so far (e.g.
            :func:`workbench.data.prompts.first_line_complete`); earlier tokens are unchanged.
        branch: the two streams cannot differ below the lowest masked layer, so each step
            runs those layers once, for one row, and branches into the intact and the masked
            row there (same tokens; ``False`` runs both rows through every layer, the
            reference ``benchmarks/bench_dps_cost.py`` compares against). Not used with
            ``mask_prompt=True``.

    Example:
        >>> heads = scores.top_percent(4)                                   # doctest: +SKIP
        >>> dps_generate(model, prompt, heads, alpha="entropy", max_new_tokens=32)  # doctest: +SKIP
    """
    max_new_tokens = check_dps_args(alpha, alpha_cap, max_new_tokens, plausibility)
    check_sampling(temperature, top_p, top_k, do_sample, seed)
    mask = as_head_mask(model, heads, how)
    row_mask = mask.row_hooks(slice(1, 2))
    bridge = model.bridge
    ids = model.encode(prompt, chat=chat)
    model.check_fits(ids.shape[-1], max_new_tokens)
    gen = None
    if do_sample:
        gen = torch.Generator(device=ids.device)
        gen.manual_seed(seed if seed is not None else int(torch.randint(0, 2**31 - 1, ()).item()))

    # Only the last position's logits are needed from a prefill: skip the unembedding elsewhere.
    last_only = [last_positions_hook(model.n_layers, -1)]
    low = min(mask.layers) if mask.layers else 0
    shared = None  # with branching: the one-row cache of the layers below ``low``
    if branch and not mask_prompt and ids.shape[-1] > 1 and low > 0:
        with bridge.hooks(fwd_hooks=last_only):
            _, shared = bridge(ids[:, :-1], return_type="logits_and_cache")
        cache = copy.deepcopy(shared)
        cache.batch_repeat_interleave(2)
        logits = None
    elif mask_prompt or ids.shape[-1] == 1:
        with bridge.hooks(fwd_hooks=row_mask + last_only):
            logits, cache = bridge(ids.expand(2, -1), return_type="logits_and_cache")
    else:
        # Everything before the last prompt token is computed once, intact, and shared.
        with bridge.hooks(fwd_hooks=last_only):
            _, cache = bridge(ids[:, :-1], return_type="logits_and_cache")
        cache.batch_repeat_interleave(2)
        logits = None

    stops = set(model.stop_token_ids)
    out: list[int] = []
    rows = []
    nxt = ids[:, -1:].expand(2, -1)
    # One hooks context for the whole loop: adding and removing hooks costs more than a
    # decoding step's worth of hook calls.
    with bridge.hooks(fwd_hooks=row_mask):
        for step in range(max_new_tokens):
            if shared is not None:
                logits = _branched_step(bridge, nxt[:1], shared, cache, low)
            elif logits is None or step > 0:
                logits, cache = bridge(nxt, return_type="logits_and_cache", past_key_values=cache)
            lp = logits[:, -1].float().log_softmax(-1)
            full, masked = lp[0], lp[1]
            if alpha == "entropy":
                a = float(-(full.exp() * full).sum())
                if alpha_cap is not None:
                    a = min(a, alpha_cap)
            else:
                a = float(alpha)
            score = full + a * (full - masked)
            if plausibility is not None:
                score = score.masked_fill(full < full.max() + math.log(plausibility), float("-inf"))
            if do_sample:
                filtered = filter_logits(score / temperature, top_k, top_p)
                tok = int(torch.multinomial(filtered.softmax(-1), 1, generator=gen))
            else:
                tok = int(score.argmax())
            if details:
                plain = int(full.argmax())
                rows.append({"step": step, "token": model.tokenizer.decode([tok]), "alpha": a,
                             "changed": tok != plain, "plain_token": model.tokenizer.decode([plain]),
                             "logp_full": float(full[tok]), "logp_masked": float(masked[tok])})
            if tok in stops:
                break
            out.append(tok)
            if until is not None and until(model.tokenizer.decode(out, skip_special_tokens=True)):
                break
            nxt = torch.tensor([[tok], [tok]], device=ids.device)
    text = model.tokenizer.decode(out, skip_special_tokens=True).strip()
    if details:
        return DpsOutput(text, out, pd.DataFrame(rows))
    return text


def _branched_step(bridge: Any, token: torch.Tensor, shared: Any, both: Any, low: int) -> torch.Tensor:
    """One DPS step: layers ``< low`` once for one row (``shared`` cache), then the intact and
    the masked row from layer ``low`` on (``both``, batch of two). Each cache's layers that its
    pass skips are views of the other's as they stood before this token: they are not run, but
    the model reads sequence lengths (positions, mask sizes; per layer type on models with
    sliding-window layers) from them."""
    for layer, (one, two) in enumerate(zip(shared.layers, both.layers)):
        if layer < low:
            _mirror(two, one, lambda t: t.expand(2, -1, -1, -1))
        else:  # never run on ``shared``, but its length must agree (mask sizes read any layer)
            _mirror(one, two, lambda t: t[:1])
    resid = bridge.run_with_hooks(token, past_key_values=shared, stop_at_layer=low)
    return run_from_layer(bridge, resid.expand(2, -1, -1), low, past_key_values=both)


def _mirror(dst: Any, src: Any, rows: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Make cache layer ``dst`` a view of ``src`` (its keys, values and, for sliding-window
    layers, the count of tokens seen)."""
    dst.keys, dst.values = rows(src.keys), rows(src.values)
    for attr in ("cumulative_length", "is_initialized"):
        if hasattr(src, attr):
            setattr(dst, attr, getattr(src, attr))
