"""Reuse of unchanged computation: run the model from layer ``L`` on, given the residual stream
entering it (:func:`run_from_layer`); a prompt's KV cache for continuations to share
(:func:`prefix_cache`).

TransformerLens 4.3's ``start_at_layer`` gives the right numbers but still runs blocks
``0..L-1`` (it discards their output and swaps the residual in at block ``L``), so it saves
no time. Here the blocks below ``L`` are replaced by the identity for the duration of the
call: the residual passes through them untouched and block ``L`` receives it as before.
Blocks below ``L`` then write nothing to a KV cache, which is harmless: layer ``l`` only
ever reads its own layer's cache.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from typing import Any, Iterator

import torch


def _identity(hidden_states: Any = None, *args: Any, **kwargs: Any) -> Any:
    return hidden_states


def _identity_tuple(hidden_states: Any = None, *args: Any, **kwargs: Any) -> Any:
    return (hidden_states,)


_RETURNS_TUPLE: "weakref.WeakKeyDictionary[Any, bool]" = weakref.WeakKeyDictionary()


@torch.no_grad()
def _blocks_return_tuples(bridge: Any) -> bool:
    """Whether the model's blocks return ``(hidden_states, ...)`` rather than the tensor (BLOOM's
    do, and its loop takes ``outputs[0]``: a bare tensor there would lose its batch dimension).
    Seen once per model, on a one-token pass through block 0."""
    known = _RETURNS_TUPLE.get(bridge)
    if known is None:
        seen: list[bool] = []
        handle = bridge.blocks[0].register_forward_hook(lambda mod, args, out: seen.append(isinstance(out, tuple)))
        try:
            device = next(bridge.parameters()).device
            bridge(torch.zeros(1, 1, dtype=torch.long, device=device), stop_at_layer=1)
        finally:
            handle.remove()
        known = _RETURNS_TUPLE[bridge] = bool(seen and seen[0])
    return known


@contextmanager
def skip_blocks_below(bridge: Any, layer: int) -> Iterator[None]:
    blocks = list(bridge.blocks)[:layer]
    identity = _identity_tuple if blocks and _blocks_return_tuples(bridge) else _identity
    for block in blocks:
        # An instance attribute shadows the class method; set it directly because the
        # bridge components forward attribute writes to the wrapped module.
        block.__dict__["forward"] = identity
    try:
        yield
    finally:
        for block in blocks:
            block.__dict__.pop("forward", None)


def run_from_layer(bridge: Any, resid: torch.Tensor, layer: int, fwd_hooks: list | None = None, **kwargs: Any) -> Any:
    """``bridge(resid, start_at_layer=layer, **kwargs)`` without computing the layers below.

    Refuses (a clear ValueError) a model on which running from a layer does not reproduce a full
    pass (checked once per model, see :func:`check_run_from_layer`)."""
    check_run_from_layer(bridge)
    return _run_from_layer(bridge, resid, layer, fwd_hooks, **kwargs)


_VERIFIED: "weakref.WeakKeyDictionary[Any, str]" = weakref.WeakKeyDictionary()


@torch.no_grad()
def check_run_from_layer(bridge: Any) -> None:
    """Raise a ValueError naming the architecture unless running from layer 0 and from layer 1
    (without and with a KV cache of earlier tokens) gives the logits of a full pass.

    TransformerLens' ``start_at_layer`` is not right on every architecture (on BLOOM it
    reapplies the embedding norm and rebuilds the ALiBi bias for the wrong length), and what
    reuses the residual stream (exact PCS, branched DPS) would then be silently wrong. Checked
    once per model, on a 5-token probe."""
    problem = _VERIFIED.get(bridge)
    if problem is None:
        problem = _VERIFIED[bridge] = _probe_run_from_layer(bridge)
    if problem:
        original = getattr(bridge, "original_model", None)
        arch = type(original).__name__ if original is not None else type(bridge).__name__
        raise ValueError(f"running the model from a layer on is not supported on {arch}: {problem}, so reusing "
                         "the layers below a mask would give wrong numbers; use what runs every layer: "
                         "preference_scores(..., mode='naive'), dps_generate(..., branch=False)")


def _probe_run_from_layer(bridge: Any) -> str:
    param = next(bridge.parameters())
    vocab = int(getattr(bridge.cfg, "d_vocab", 0) or 0) or 5
    ids = ((torch.arange(5) * 7 + 3) % vocab)[None].to(param.device)
    layers = sorted({0, min(1, len(bridge.blocks) - 1)})
    names = [f"blocks.{layer}.hook_resid_pre" for layer in layers]
    full, acts = bridge.run_with_cache(ids, names_filter=names)
    full = full.float()
    tol = (1e-4 if param.dtype == torch.float32 else 2e-2) * max(1.0, float(full.abs().max()))
    _, cache = bridge(ids[:, :-1], return_type="logits_and_cache")
    for layer, name in zip(layers, names):
        resid = acts[name]
        if not torch.allclose(_run_from_layer(bridge, resid, layer).float(), full, atol=tol, rtol=0):
            return f"a pass from layer {layer} differs from the full pass"
        last = _run_from_layer(bridge, resid[:, -1:], layer, past_key_values=fork_kv_cache(cache)).float()
        if not torch.allclose(last[:, -1], full[:, -1], atol=tol, rtol=0):
            return f"a pass from layer {layer} on a KV cache differs from the full pass"
    return ""


def _run_from_layer(bridge: Any, resid: torch.Tensor, layer: int, fwd_hooks: list | None = None, **kwargs: Any) -> Any:
    with skip_blocks_below(bridge, layer):
        if fwd_hooks:
            return bridge.run_with_hooks(resid, start_at_layer=layer, fwd_hooks=fwd_hooks, **kwargs)
        return bridge(resid, start_at_layer=layer, **kwargs)


def fork_kv_cache(cache: Any) -> Any:
    """A copy of a KV cache that a pass can extend while ``cache`` keeps its contents, without
    copying a tensor: each layer object is copied shallowly, and Hugging Face's dynamic cache
    layers replace their tensors (``torch.cat``) instead of writing into them.

    Cutting a cache back after a pass (``truncate_kv_cache``) is wrong for sliding-window layers
    (Gemma 2 / 3, Mistral): a pass longer than the window evicts the prefix's oldest keys, which
    no cut can bring back. A fork leaves the prefix as it was.
    """
    import copy

    fork = copy.copy(cache)
    fork.layers = [copy.copy(layer) for layer in cache.layers]
    return fork


class _StopPass(Exception):
    """Raised at the input of the first layer a prefix pass does not need: nothing above runs."""


@torch.no_grad()
def prefix_cache(model: Any, ids: torch.Tensor, layers_needed: int | None = None) -> Any:
    """A KV cache holding the keys and values of ``ids`` (``[1, pos]``) in the first
    ``layers_needed`` layers (every layer when None), for passes that continue from it: a
    prompt's pass shared by several continuations (CAA's inputs after a history context, a Fints
    pair's positive and negative). No logits are computed.

    It is a plain ``DynamicCache`` (no sliding-window eviction), so a continuation can be cut
    back off it (:func:`workbench._util.truncate_kv_cache`). When nothing is attached to the
    model the pass runs on the hook-free view (SDPA attention, no hook points: on a 1,536-token
    SmolLM2 prompt ~2.4x faster than the bridge over the same layers) and stops at the input of
    the first layer not needed; otherwise on the bridge (``stop_at_layer``). The two agree up to
    float rounding.
    """
    from workbench._util import empty_kv_cache
    from workbench.core import _fastpath
    from workbench.core.hooks import last_positions_hook

    cache = empty_kv_cache()
    stop = int(layers_needed) if layers_needed is not None and int(layers_needed) < model.n_layers else None
    view = model._plain_view()
    where = _fastpath.location(model, f"blocks.{stop}.hook_resid_pre") if view is not None and stop else None
    if view is None or (stop and (where is None or where.side != "input")):
        depth = {"stop_at_layer": stop} if stop else {}
        hooks = [] if stop else [last_positions_hook(model.n_layers, -1)]
        model.bridge.run_with_hooks(ids, past_key_values=cache, fwd_hooks=hooks, **depth)
        return cache
    n = ids.shape[-1]
    kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), past_key_values=cache, use_cache=True,
                  position_ids=torch.arange(n, device=ids.device)[None], logits_to_keep=1)
    if stop is None:
        view(**kwargs)
        return cache

    def halt(module: Any, args: Any, kwargs: Any = None) -> None:
        raise _StopPass

    handle = where.module.register_forward_pre_hook(halt, with_kwargs=True)
    try:
        view(**kwargs)
    except _StopPass:
        pass
    finally:
        handle.remove()
    return cache
