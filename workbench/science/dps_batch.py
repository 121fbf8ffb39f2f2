"""DPS over a batch of prompts, on the hook-free view: B prompts decode as 2B rows.

Rows ``0..B-1`` are the intact model, rows ``B..2B-1`` the same prompts with each row's
preference heads masked (from the last prompt token on, as :func:`~workbench.science.dps.dps_generate`
decodes by default); every step picks one token per prompt from the contrast of its two rows,
and feeds it to both. The prompt (all but its last token) is run once, for B rows, and its
cache copied for the masked rows. Below the lowest masked layer the two streams are equal, so
each step runs those layers for the B intact rows only and branches into 2B rows at that layer
(a forward pre-hook doubles the hidden states and every per-row input the layers receive) —
the saving ``dps_generate(branch=True)`` makes on the bridge.

Each row may carry its own intervention (a steering vector of its user: it acts on both of the
row's streams) and its own heads. Greedy decoding only; sampling, ``mask_prompt=True`` and
``details=True`` run :func:`~workbench.science.dps.dps_generate` row by row.
"""

from __future__ import annotations

import math
from contextlib import ExitStack, contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch

from workbench._util import check_sampling
from workbench.core import _fastpath
from workbench.core.heads import HeadMask
from workbench.core._decoding import LiveRows, copy_cache, drop_finished, left_pad, positions_of, take_step
from workbench.core.model import Model
from workbench.science.dps import as_head_mask, check_dps_args, dps_generate


@torch.no_grad()
def dps_generate_batch(
    model: Model,
    prompts: Sequence[Any],
    heads: "list | HeadMask | Sequence[list | HeadMask]",
    alpha: "float | str" = "entropy",
    *,
    per_row_heads: bool = False,
    how: str = "uniform",
    max_new_tokens: int = 64,
    alpha_cap: float | None = None,
    plausibility: float | None = None,
    chat: bool | None = None,
    until: Callable[[str], bool] | None = None,
    interventions: "Sequence[Any] | None" = None,
    branch: bool = True,
) -> list[str]:
    """DPS (greedy) for several prompts at once; ``[dps_generate(model, p, heads, ...) for p in
    prompts]`` token for token, up to float rounding.

    Args:
        heads: the preference heads of every row (as for :func:`dps_generate`), or with
            ``per_row_heads=True`` one set per prompt.
        interventions: one per prompt (or None): acts on both of its row's streams.
        branch: run the layers below the lowest masked layer once per prompt (default) or
            every layer for all 2B rows.
        The other arguments are :func:`dps_generate`'s.
    """
    max_new_tokens = check_dps_args(alpha, alpha_cap, max_new_tokens, plausibility)
    check_sampling(1.0, None, None, False, None)
    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts is empty; give at least one prompt")
    n = len(prompts)
    masks = [as_head_mask(model, h, how) for h in heads] if per_row_heads else [as_head_mask(model, heads, how)] * n
    if len(masks) != n:
        raise ValueError(f"{len(masks)} head sets for {n} prompts; give one per prompt with per_row_heads=True")
    ivs = list(interventions) if interventions is not None else [None] * n
    if len(ivs) != n:
        raise ValueError(f"{len(ivs)} interventions for {n} prompts; give one per prompt (None for none)")
    ids = [model.encode(p, chat=chat) for p in prompts]
    for i in ids:
        model.check_fits(i.shape[-1], max_new_tokens)
    fast = model._fast_view()
    if (fast is None or min(i.shape[-1] for i in ids) < 2
            or not all(_fastpath.supported(model, x) for x in [*masks, *(iv for iv in ivs if iv is not None)])):
        out = []
        for i, mask, iv in zip(ids, masks, ivs):
            with iv if iv is not None else nullcontext():
                out.append(dps_generate(model, i, mask, alpha, how=how, max_new_tokens=max_new_tokens, alpha_cap=alpha_cap,
                                        plausibility=plausibility, until=until))
        return out
    view, active = fast
    return _decode(model, view, active, ids, masks, ivs, alpha, max_new_tokens, alpha_cap, plausibility, until, branch)


def _decode(model: Model, view: Any, active: list, ids: list, masks: list, ivs: list, alpha: Any, max_new_tokens: int,
            alpha_cap: float | None, plausibility: float | None, until: Any, branch: bool) -> list[str]:
    from transformers import DynamicCache

    n = len(ids)
    batch, attn = left_pad(ids, model.stop_token_ids[0])
    pos = positions_of(attn)
    layers = [layer for mask in masks for layer in mask.layers]
    low = min(layers) if branch and layers and _branch_works(model, view) else 0
    live = LiveRows(n)  # rows leave the batch (both of their streams) when they finish
    plan = [(iv, _fastpath.every_row) for iv in active]
    for iv in {id(iv): iv for iv in ivs if iv is not None}.values():
        plan.append((iv, live.rows([r for r in range(n) if ivs[r] is iv])))  # both streams
    for mask in {id(m): m for m in masks}.values():
        plan.append((mask, live.rows([r for r in range(n) if masks[r] is mask], copies=[1])))  # the masked stream only

    stops = set(model.stop_token_ids)
    decode = lambda t: model.tokenizer.decode(t, skip_special_tokens=True)  # noqa: E731
    out: list[list[int]] = [[] for _ in range(n)]
    # The prompt pass sees no head mask (masking starts at the last prompt token), so without
    # a steering hook it is the same at every alpha and head set: a grid reuses it.
    store = _PROMPT_CACHES.get() if not active and all(iv is None for iv in ivs) else None
    key = (id(view), tuple(tuple(i.reshape(-1).tolist()) for i in ids)) if store is not None else None
    cache = store.get(key, model.device) if store is not None else None
    with ExitStack() as stack:
        stack.enter_context(_fastpath.installed(model, plan))
        if cache is None:
            cache = DynamicCache(config=view.config)
            view(input_ids=batch[:, :-1], attention_mask=attn[:, :-1], position_ids=pos[:, :-1], past_key_values=cache,
                 use_cache=True, logits_to_keep=1)
            if store is not None:
                store.put(key, cache)
        for i, layer in enumerate(cache.layers):
            if i >= low:  # the masked rows' copy of the intact prompt
                layer.keys, layer.values = layer.keys.repeat(2, 1, 1, 1), layer.values.repeat(2, 1, 1, 1)
        if low > 0:
            for layer in _decoder_layers(view)[low:]:
                stack.callback(_doubled_inputs(layer, lambda: len(live.alive)).remove)
        nxt, now, step_pos = batch[:, -1:], attn, pos[:, -1:]
        for step in range(max_new_tokens):
            rows = 1 if low > 0 else 2
            logits = view(input_ids=nxt.repeat(rows, 1), attention_mask=now.repeat(rows, 1),
                          position_ids=step_pos.repeat(rows, 1), past_key_values=cache, use_cache=True,
                          logits_to_keep=1).logits[:, -1]
            lp = logits.float().log_softmax(-1)
            k = len(live.alive)
            full, masked = lp[:k], lp[k:]
            if alpha == "entropy":
                a = -(full.exp() * full).sum(-1)
                if alpha_cap is not None:
                    a = a.clamp(max=alpha_cap)
            else:
                a = torch.full((k,), float(alpha))
            score = full + a[:, None] * (full - masked)
            if plausibility is not None:
                score = score.masked_fill(full < full.max(-1, keepdim=True).values + math.log(plausibility), float("-inf"))
            tok = score.argmax(-1)
            keep = take_step(live, tok, out, stops, decode, until)
            if not keep or step == max_new_tokens - 1:
                break
            nxt, now, step_pos = drop_finished(cache, live, keep, tok[:, None], now, step_pos)
            now = torch.cat([now, torch.ones_like(now[:, :1])], dim=-1)
            step_pos = step_pos + 1
    return [decode(o).strip() for o in out]


class PromptCaches:
    """Key/value caches of DPS prompt passes, kept for reuse while :func:`reuse_prompt_caches`
    is active. A batch is stored whole (its rows' prompts, in order, are the key) and handed out
    as a copy, since decoding grows and trims the cache it is given. It keeps what fits in
    ``max_bytes`` and then stops adding, never evicting: a grid visits the same batches in the
    same order at every point, where evicting the oldest would make every later visit a miss.
    Copies live on the CPU, so a GPU's memory holds only the batch being decoded."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self.used = 0
        self.hits = 0
        self.misses = 0
        self._caches: dict = {}

    def __repr__(self) -> str:
        return (f"PromptCaches({len(self._caches)} batches, {self.used / 2**30:.2f} of {self.max_bytes / 2**30:.2f} GiB, "
                f"{self.hits} hits, {self.misses} misses)")

    def get(self, key: Any, device: Any) -> Any:
        stored = self._caches.get(key)
        if stored is None:
            self.misses += 1
            return None
        self.hits += 1
        return copy_cache(stored, device)

    def put(self, key: Any, cache: Any) -> None:
        size = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values)
                   if isinstance(t, torch.Tensor))
        if key not in self._caches and self.used + size <= self.max_bytes:
            self._caches[key] = copy_cache(cache, "cpu")
            self.used += size


_PROMPT_CACHES: "ContextVar[PromptCaches | None]" = ContextVar("workbench_dps_prompt_caches", default=None)


@contextmanager
def reuse_prompt_caches(max_bytes: int | None = None) -> Iterator[PromptCaches]:
    """Within the block, DPS decoding keeps each batch's prompt pass and reuses it when the same
    prompts come again with no steering hook — as at every point of an alpha x head-set grid,
    where the prompt pass (all of a long prompt but its last token) is most of the cost.
    Outputs are unchanged. ``max_bytes``: how much to keep (default: a sixth of this machine's
    memory, at most 8 GiB); what does not fit is recomputed as before."""
    if max_bytes is None:
        max_bytes = min(8 * 2**30, _physical_memory() // 6)
    store = PromptCaches(max_bytes)
    token = _PROMPT_CACHES.set(store)
    try:
        yield store
    finally:
        _PROMPT_CACHES.reset(token)


def _physical_memory() -> int:
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not on this platform: a modest default
        return 12 * 2**30


@torch.no_grad()
def _branch_works(model: Model, view: Any) -> bool:
    """Whether doubling the rows at a middle layer gives the logits of two full rows on this
    model, checked once on a 6-token probe. Not where a layer's per-row inputs are not batch-first
    (BLOOM's ALiBi bias is one row per head): there DPS runs every layer for all rows."""
    if "_dps_branch_ok" in model.__dict__:
        return model.__dict__["_dps_branch_ok"]
    from transformers import DynamicCache

    ok = False
    try:
        layers = _decoder_layers(view)
        if len(layers) > 1:
            vocab = int(getattr(model.bridge.cfg, "d_vocab", 0) or 0) or 8
            ids = (torch.arange(6) * 7 % vocab)[None].to(model.device)
            full = view(input_ids=ids.repeat(2, 1), use_cache=False).logits
            with ExitStack() as stack:
                for layer in layers[1:]:
                    stack.callback(_doubled_inputs(layer, 1).remove)
                half = view(input_ids=ids[:, :-1], past_key_values=DynamicCache(config=view.config), use_cache=True)
                cache = half.past_key_values
                for i, layer in enumerate(cache.layers):
                    if i >= 1:
                        layer.keys, layer.values = layer.keys.repeat(2, 1, 1, 1), layer.values.repeat(2, 1, 1, 1)
                step = view(input_ids=ids[:, -1:], past_key_values=cache, use_cache=True).logits
            ok = step.shape[0] == 2 and torch.allclose(step[:, -1], full[:, -1], atol=1e-4)
    except Exception:  # noqa: BLE001 - any failure: the unbranched path, which needs no such trick
        ok = False
    model.__dict__["_dps_branch_ok"] = ok
    return ok


def _decoder_layers(view: Any) -> list[torch.nn.Module]:
    """The view's decoder layers, in order (``model.layers`` of a Llama-style model)."""
    inner = getattr(view, "model", view)
    for attr in ("layers", "h", "blocks"):
        found = getattr(inner, attr, None) or getattr(getattr(inner, "language_model", None), attr, None)
        if isinstance(found, torch.nn.ModuleList):
            return list(found)
    raise ValueError(f"no decoder layers found in {type(view).__name__}; use branch=False")


def _doubled_inputs(layer: torch.nn.Module, rows: "int | Callable[[], int]") -> Any:
    """A pre-hook (its handle returned) giving ``layer`` every per-row input twice (rows ``0..n-1`` then again as
    ``n..2n-1``, ``n`` = ``rows`` or what it returns now): the hidden states where they come in
    ``n`` rows, and the attention mask and position embeddings, which the model hands every
    layer for the ``n`` rows it was given."""
    count = rows if callable(rows) else (lambda: rows)

    def twice(x: Any, n: int) -> Any:
        if isinstance(x, torch.Tensor):
            return x.repeat(2, *([1] * (x.dim() - 1))) if x.dim() >= 2 and x.shape[0] == n else x
        if isinstance(x, tuple):
            return tuple(twice(v, n) for v in x)
        if isinstance(x, list):
            return [twice(v, n) for v in x]
        if isinstance(x, dict):
            return {k: twice(v, n) for k, v in x.items()}
        return x

    def pre(module: Any, args: tuple, kwargs: dict) -> Any:
        n = count()
        return twice(args, n), twice(kwargs, n)

    return layer.register_forward_pre_hook(pre, with_kwargs=True)


@dataclass(frozen=True)
class DpsDecoder:
    """DPS as a method's decoder (see :mod:`workbench.methods`): :func:`dps_generate_batch` with
    these heads and settings; hooks active around it (e.g. a steering vector) act on both streams."""

    heads: tuple
    alpha: Any = "entropy"
    plausibility: float | None = None
    how: str = "uniform"
    alpha_cap: float | None = None

    @property
    def heads_label(self) -> str:
        return ";".join(f"L{layer}H{head}" for layer, head in self.heads)

    @property
    def info(self) -> dict:
        return {"heads": self.heads_label}

    def decode(self, model: Model, prompt: Any, max_new_tokens: int, until: Callable[[str], bool] | None = None) -> str:
        return self.decode_batch(model, [prompt], max_new_tokens, until)[0]

    def decode_batch(self, model: Model, prompts: list, max_new_tokens: int, until: Callable[[str], bool] | None = None,
                     interventions: list | None = None) -> list[str]:
        """Several prompts as one batch of 2B rows (:func:`~workbench.science.dps_batch.dps_generate_batch`),
        each row with its own intervention."""
        return dps_generate_batch(model, prompts, list(self.heads), alpha=self.alpha, how=self.how,
                                  alpha_cap=self.alpha_cap, plausibility=self.plausibility,
                                  max_new_tokens=max_new_tokens, until=until, interventions=interventions)
