"""Interventions as composable objects: a list of TransformerLens hooks you can also ``with``.

:class:`HookSet` is the one base of every intervention in the package (head masks, steering
vectors). An intervention is a small value object holding ``hooks`` — ``(hook_name, fn)``
pairs, ready for ``bridge.run_with_hooks(fwd_hooks=...)`` — and a context manager that
installs them on the model for the duration of the block and removes exactly those hooks on
exit, also after an exception. Interventions nest, and ``a + b`` is one intervention holding
both (what a combined method applies: e.g. a steering vector and a head mask).
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any, Callable, ContextManager

import torch

Hook = tuple[str, Callable]


def hook_point(layer: int, name: str) -> str:
    """The TransformerLens hook point ``name`` of block ``layer``: ``hook_point(3, "attn.hook_z")``
    is ``"blocks.3.attn.hook_z"``. The one place that spells the bridge's block names."""
    return f"blocks.{layer}.{name}"


def last_positions_hook(n_layers: int, lo: int, n: int | None = None) -> tuple[str, Callable]:
    """A hook keeping positions ``lo..lo+n-1`` (``lo`` onwards when ``n`` is None; ``lo=-1``: the
    last one) at the unembedding's input, which then runs on those positions only (the vocabulary
    projection dominates a small model's cost). Not at the last block's output: some models
    (GPT-2) reshape the final norm's output to the full input length, which fails on fewer
    positions. ``n_layers`` is unused (kept for callers)."""
    end = None if n is None else lo + n

    def keep(x: torch.Tensor, hook: Any) -> torch.Tensor:
        return x[:, lo:end]

    return ("unembed.hook_in", keep)


def target_positions_hook(spans: "list[tuple[int, int]]", device: Any = None) -> tuple[Hook, torch.Tensor, torch.Tensor]:
    """A hook keeping, in each row of a batch, only the positions that predict its target tokens
    at the unembedding's input (``spans``: each row's target tokens ``[start, end)``; a row's
    positions are right-padded to the longest span), so the vocabulary projection — a large
    share of a small model's forward and backward — runs on those alone. Also ``rows, slots``:
    where each target token's logits are in the output (``logits[rows, slots]``, target order).
    """
    width = max(end - start for start, end in spans)
    picks = torch.tensor([[min(start - 1 + j, end - 2) for j in range(width)] for start, end in spans], device=device)
    rows = torch.cat([torch.full((end - start,), i) for i, (start, end) in enumerate(spans)]).to(device)
    slots = torch.cat([torch.arange(end - start) for start, end in spans]).to(device)

    def keep(x: torch.Tensor, hook: Any) -> torch.Tensor:
        return x.gather(1, picks[:, :, None].expand(-1, -1, x.shape[-1]))

    return ("unembed.hook_in", keep), rows, slots


class HookSet:
    """Hooks on one model, usable as a context manager (re-entrant) and as a hook list.

    Subclasses set ``self.model`` and ``self.hooks`` and may add context managers that must
    be active while the hooks are (:meth:`_contexts`, e.g. position tracking).

    ``fast_path = True`` declares the hooks pure functions of the activation they are given
    (and of the positions a :class:`PositionTracker` records): generation may then run them as
    torch hooks on the hook-free Hugging Face view, and on some rows of a batch only
    (:mod:`workbench.core._fastpath`). Leave it False for hooks that need the bridge.
    """

    model: Any
    hooks: list[Hook]
    fast_path: bool = False

    def _contexts(self) -> list[ContextManager]:
        return []

    def __enter__(self) -> "HookSet":
        stack = ExitStack()
        bridge = self.model.bridge
        points = {id(p): p for p in (bridge.hook_dict.get(name) for name, _ in self.hooks) if p is not None}
        before = {i: set(p._forward_hooks) for i, p in points.items()}
        try:
            for cm in self._contexts():
                stack.enter_context(cm)
            stack.enter_context(bridge.hooks(fwd_hooks=self.hooks))
        except BaseException:
            stack.close()
            raise
        # The hooks this entry added, so that generation can tell them from anyone else's: with
        # only fast-path interventions' hooks attached, it runs them on the hook-free view.
        owned = {(id(p._forward_hooks), key) for i, p in points.items() for key in set(p._forward_hooks) - before[i]}
        active = self.model.__dict__.setdefault("_active", [])
        for cm in self._contexts():
            owned |= {(id(h.hooks_dict_ref()), h.id) for h in getattr(cm, "_handles", ()) if h.hooks_dict_ref() is not None}
        entry = (self, owned)
        active.append(entry)
        stack.callback(lambda: active.remove(entry))
        self.__dict__.setdefault("_stacks", []).append(stack)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.__dict__["_stacks"].pop().close()

    def __add__(self, other: "HookSet") -> "Interventions":
        return Interventions([self, other])


class Interventions(HookSet):
    """Several interventions applied together (built by ``a + b``)."""

    def __init__(self, parts: list[HookSet]):
        flat: list[HookSet] = []
        for p in parts:
            flat.extend(p.parts if isinstance(p, Interventions) else [p])
        models = {id(p.model) for p in flat}
        if len(models) > 1:
            raise ValueError("these interventions belong to different models; combine interventions of one model")
        self.parts = flat
        self.model = flat[0].model
        self.hooks = [h for p in flat for h in p.hooks]
        self.fast_path = all(p.fast_path for p in flat)

    def _contexts(self) -> list[ContextManager]:
        return [cm for p in self.parts for cm in p._contexts()]

    def __repr__(self) -> str:
        return " + ".join(repr(p) for p in self.parts)


class PositionTracker:
    """Records the absolute position ids of the current forward pass.

    With a KV cache a hook sees only the new token(s), so ``x.shape[1]`` alone can't say
    where they sit; the rotary embedding module (or, in models with learned absolute
    positions such as GPT-2, the position embedding) is always called with the true position
    ids, so a pre-hook there tells us. A model with neither gets its positions from the length
    of the KV cache it is handed.
    """

    def __init__(self, model: Any):
        self.model = model
        self.position_ids: torch.Tensor | None = None
        self._handles: list[Any] = []
        self._depth = 0  # re-entrant: the same intervention may be nested in itself

    def __enter__(self) -> "PositionTracker":
        self._depth += 1
        if self._depth > 1:
            return self
        bridge = self.model.bridge
        self._handles.append(bridge.register_forward_pre_hook(self._reset, with_kwargs=True))
        # On the bridge and on the Hugging Face module it wraps, which the hook-free view runs
        # (when the bridge calls it too, both record the same ids).
        for attr, record in (("rotary_emb", self._record), ("pos_embed", self._record_embedding)):
            wrapper = getattr(bridge, attr, None)
            for module in (wrapper, getattr(wrapper, "_original_component", None)):
                if isinstance(module, torch.nn.Module):
                    self._handles.append(module.register_forward_pre_hook(record, with_kwargs=True))
        return self

    def __exit__(self, *exc: Any) -> None:
        self._depth -= 1
        if self._depth:
            return
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.position_ids = None

    def _reset(self, module: Any, args: Any, kwargs: dict) -> None:
        # A first guess, replaced by the ids the rotary or position embedding is called with.
        self.position_ids = None
        x = args[0] if args else kwargs.get("input")
        if not isinstance(x, torch.Tensor) or x.dim() < 2:
            return
        cache = kwargs.get("past_key_values")
        past = int(cache.get_seq_length()) if cache is not None and hasattr(cache, "get_seq_length") else 0
        self.position_ids = torch.arange(past, past + x.shape[1], device=x.device)[None]

    def _record_embedding(self, module: Any, args: Any, kwargs: dict) -> None:
        pos = args[0] if args else next(iter(kwargs.values()), None)
        if isinstance(pos, torch.Tensor) and not pos.is_floating_point():
            self.position_ids = pos

    def _record(self, module: Any, args: Any, kwargs: dict) -> None:
        pos = kwargs.get("position_ids")
        if pos is None and len(args) > 1:
            pos = args[1]
        if isinstance(pos, torch.Tensor):
            self.position_ids = pos
