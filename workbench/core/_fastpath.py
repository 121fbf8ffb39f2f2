"""Interventions on the hook-free view: the same hook functions, run as torch hooks on the
Hugging Face modules, per batch row.

An intervention (:class:`~workbench.core.hooks.HookSet`) is a list of ``(hook point, fn)``
pairs. Every hook point of the bridge that an intervention writes is the input or the output
of a bridge component, and each component wraps one Hugging Face module — so where a hook
point's activation lives on the view is read off the bridge itself (:func:`location`), not
from a second table kept by hand: ``blocks.L.hook_resid_pre`` is the input of decoder layer
L, ``attn.hook_z`` the input of its output projection, ``hook_attn_out`` / ``hook_mlp_out``
the outputs of its attention / MLP. The query (``attn.hook_rot_q``, where ``uniform`` head
masking scales it) is the one hook point inside a module: on the view it is the output of the
query's norm where the attention has one (Gemma 3, Qwen 3), else of the query projection —
the same up to the rotation, which is linear, so a scaled query is scaled either way.

A hook function sees the activation in the bridge's shape (``[batch, pos, head, d_head]`` for
per-head points), whichever path runs it. Per-row application (a batch whose rows come from
different users) blends the hook's result into the rows it owns: ``rows_of(batch)`` says which
rows of a pass of that batch size an intervention acts on (None: none).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch

_ORIGINAL = "_original_component"
_QUERY = ("attn.hook_rot_q", "attn.hook_q")


@dataclass(frozen=True)
class Location:
    """Where a hook point's activation is on the view: a module's ``input`` or ``output``;
    ``heads``: the bridge shows it per head (``[batch, pos, head, d_head]``)."""

    module: torch.nn.Module
    side: str
    heads: bool
    heads_first: bool = False  # the module gives [batch, head, pos, d_head] (a query norm after the transpose)


def location(model: Any, name: str) -> Location | None:
    """The view's place of the bridge hook point ``name``, or None if it has none (a hook point
    inside a module's computation, e.g. the attention pattern)."""
    table = model.__dict__.get("_locations")
    if table is None:
        table = model.__dict__["_locations"] = {}
    if name not in table:
        table[name] = _resolve(model, name)
    return table[name]


def _resolve(model: Any, name: str) -> Location | None:
    bridge = model.bridge
    point = bridge.hook_dict.get(name)
    if point is None:
        return None
    heads = name.endswith(("hook_z", "hook_q", "hook_rot_q", "hook_k", "hook_v"))
    if name.split(".", 2)[-1] in _QUERY and name.startswith("blocks."):
        layer = int(name.split(".")[1])
        attn = getattr(bridge.blocks[layer].attn, _ORIGINAL, None)
        if attn is None:
            return None
        norm = _unwrap(getattr(attn, "q_norm", None))
        if isinstance(norm, torch.nn.Module):
            layout = _norm_layout(model, norm)
            return None if layout is None else Location(norm, "output", True, heads_first=layout)
        proj = _unwrap(getattr(attn, "q_proj", None))
        return Location(proj, "output", True) if isinstance(proj, torch.nn.Linear) else None
    for owner in bridge.modules():
        for attr, child in owner._modules.items():
            if child is point and attr in ("hook_in", "hook_out"):
                inner = owner._modules.get(_ORIGINAL)
                if inner is None:
                    return None
                return Location(inner, "input" if attr == "hook_in" else "output", heads)
    return None


@torch.no_grad()
def _norm_layout(model: Any, norm: torch.nn.Module) -> bool | None:
    """Whether a query norm's output is ``[batch, head, pos, d_head]`` (True) or ``[batch, pos,
    head, d_head]`` (False) — families differ on whether they transpose before the norm — read
    off one probe pass; None if it is neither."""
    view = model.__dict__.get("_plain")
    if view is None:
        return None
    n = model.n_heads + 3  # positions != heads, so the two layouts can be told apart
    vocab = int(getattr(model.bridge.cfg, "d_vocab", 0) or 0) or n
    shapes: list = []
    handle = norm.register_forward_hook(lambda mod, args, out: shapes.append(tuple(out.shape)))
    try:
        view(input_ids=(torch.arange(n) % vocab)[None].to(model.device), use_cache=False)
    finally:
        handle.remove()
    if not shapes or len(shapes[0]) != 4:
        return None
    if shapes[0][1:3] == (model.n_heads, n):
        return True
    return False if shapes[0][1:3] == (n, model.n_heads) else None


def _unwrap(module: Any) -> Any:
    """The Hugging Face module a bridge component wraps (the module itself if it is none)."""
    while isinstance(module, torch.nn.Module) and _ORIGINAL in module._modules:
        module = module._modules[_ORIGINAL]
    return module


def supported(model: Any, intervention: Any) -> bool:
    """True when every hook of ``intervention`` has a place on the view and the intervention
    declares its hooks pure functions of the activation (``HookSet.fast_path``)."""
    if not getattr(intervention, "fast_path", False):
        return False
    return all(location(model, name) is not None for name, _ in intervention.hooks)


RowsOf = Callable[[int], "torch.Tensor | None"]


def every_row(batch: int) -> None:
    """``rows_of`` of an intervention acting on every row of every pass."""
    return None


@contextmanager
def installed(model: Any, plan: Sequence[tuple[Any, RowsOf]]) -> Iterator[None]:
    """Run each intervention of ``plan`` (``(intervention, rows_of)``) as torch hooks on the view's
    modules for the block; every hook and context is removed on exit, also after an exception."""
    from contextlib import ExitStack

    handles: list[Any] = []
    with ExitStack() as stack:
        try:
            for intervention, rows_of in plan:
                for cm in intervention._contexts():
                    stack.enter_context(cm)
                for name, fn in intervention.hooks:
                    loc = location(model, name)
                    if loc is None:
                        raise ValueError(f"{name} has no place on the hook-free view; run this intervention on the bridge")
                    point = model.bridge.hook_dict[name]
                    handles.append(_register(model, loc, fn, point, rows_of))
            yield
        finally:
            for h in handles:
                h.remove()


def _register(model: Any, loc: Location, fn: Callable, point: Any, rows_of: RowsOf) -> Any:
    n_heads = model.n_heads

    def apply(x: torch.Tensor) -> torch.Tensor:
        rows = rows_of(x.shape[0])
        if rows is not None and not bool(rows.any()):
            return x
        shaped = x.view(*x.shape[:-1], n_heads, -1) if loc.heads and x.dim() == 3 else x
        shaped = shaped.transpose(1, 2) if loc.heads_first else shaped
        y = fn(shaped, point)
        y = y.transpose(1, 2) if loc.heads_first else y
        y = y.reshape(x.shape) if y.shape != x.shape else y
        if rows is None or bool(rows.all()):
            return y
        return torch.where(rows.to(x.device).view(-1, *([1] * (x.dim() - 1))), y, x)

    if loc.side == "input":
        def pre(module: Any, args: tuple, kwargs: dict) -> Any:
            if args:
                return (apply(args[0]), *args[1:]), kwargs
            key = next((k for k in ("hidden_states", "input") if k in kwargs), next(iter(kwargs)))
            return args, {**kwargs, key: apply(kwargs[key])}

        return loc.module.register_forward_pre_hook(pre, with_kwargs=True)

    def post(module: Any, args: tuple, out: Any) -> Any:
        if isinstance(out, tuple):
            return (apply(out[0]), *out[1:])
        return apply(out)

    return loc.module.register_forward_hook(post)
