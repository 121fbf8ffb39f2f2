"""Adding vectors to the residual stream: ``steer(model, vector, layer, site)``.

A :class:`Steer` is a context manager (and ``.hooks`` for ``run_with_hooks``) that
adds ``scale * vector`` to one activation of one layer on every forward pass,
including each step of KV-cached generation. Several compose by nesting.

Sites (TransformerLens hook points of ``blocks.{layer}``):
``resid_pre`` (input of the block), ``resid_mid`` (after attention, before the MLP),
``resid_post`` (output of the block), ``attn_out`` and ``mlp_out`` (what attention /
the MLP write into the residual stream).
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any, Sequence

import torch

from workbench.model import Model

SITES = {
    "resid_pre": "blocks.{layer}.hook_resid_pre",
    # The bridge's hook_resid_mid is the input of the second norm: a value written there
    # reaches the MLP but not the skip connection. Adding to the attention output moves
    # the residual stream itself at that point, which is what steering at resid_mid means.
    "resid_mid": "blocks.{layer}.hook_attn_out",
    "resid_post": "blocks.{layer}.hook_resid_post",
    "attn_out": "blocks.{layer}.hook_attn_out",
    "mlp_out": "blocks.{layer}.hook_mlp_out",
}


def _as_vector(model: Model, vector: Any) -> torch.Tensor:
    v = torch.as_tensor(vector.detach() if isinstance(vector, torch.Tensor) else vector)
    if v.dim() == 2 and v.shape[0] == 1:
        v = v[0]
    if v.dim() != 1 or v.shape[0] != model.d_model:
        raise ValueError(
            f"steering vector has shape {tuple(v.shape)}, but {model.name!r} needs a 1-D vector of "
            f"width d_model={model.d_model}"
        )
    if not torch.isfinite(v).all():
        raise ValueError("steering vector contains NaN or inf values")
    return v.to(model.device, model.dtype)


class _PositionTracker:
    """Records the absolute position ids of the current forward pass.

    With a KV cache a hook sees only the new token(s), so ``x.shape[1]`` alone can't say
    where they sit; the rotary embedding module is always called with the true position
    ids, so a pre-hook there tells us.
    """

    def __init__(self, model: Model):
        self.model = model
        self.position_ids: torch.Tensor | None = None
        self._handles: list[Any] = []

    def __enter__(self) -> "_PositionTracker":
        bridge = self.model.bridge
        self._handles.append(bridge.register_forward_pre_hook(self._reset))
        rotary = getattr(bridge, "rotary_emb", None)
        if rotary is not None:
            self._handles.append(rotary.register_forward_pre_hook(self._record, with_kwargs=True))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _reset(self, module: Any, args: Any) -> None:
        self.position_ids = None

    def _record(self, module: Any, args: Any, kwargs: dict) -> None:
        pos = kwargs.get("position_ids")
        if pos is None and len(args) > 1:
            pos = args[1]
        if isinstance(pos, torch.Tensor):
            self.position_ids = pos


class Steer:
    """Add ``scale * vector`` at ``site`` of ``layer``. Build with :func:`steer`."""

    def __init__(self, model: Model, vector: torch.Tensor, layer: int, site: str, scale: float,
                 positions: "Sequence[int] | slice | None"):
        self.model = model
        self.vector = vector
        self.layer = layer
        self.site = site
        self.scale = float(scale)
        self.positions = positions
        self.hook_name = SITES[site].format(layer=layer)
        self._tracker: _PositionTracker | None = None
        self._stacks: list[ExitStack] = []
        self.hooks: list[tuple[str, Any]] = [(self.hook_name, self._hook)]

    def __repr__(self) -> str:
        where = "all positions" if self.positions is None else f"positions={self.positions!r}"
        return (f"Steer({self.hook_name}, scale={self.scale:g}, |vector|={float(self.vector.float().norm()):.3g}, "
                f"{where}, model={self.model.name!r})")

    def _position_mask(self, x: torch.Tensor) -> torch.Tensor:
        pos = self._tracker.position_ids if self._tracker is not None else None
        if pos is None or pos.shape[-1] != x.shape[1]:
            # Outside a tracked context (plain run_with_hooks) the pass is a full, uncached one.
            pos = torch.arange(x.shape[1], device=x.device)[None]
        pos = pos.to(x.device)
        p = self.positions
        if isinstance(p, slice):
            start = 0 if p.start is None else p.start
            keep = pos >= start
            if p.stop is not None:
                keep &= pos < p.stop
            if p.step not in (None, 1):
                keep &= (pos - start) % p.step == 0
        else:
            keep = torch.isin(pos, torch.as_tensor(list(p), device=x.device))
        return keep.expand(x.shape[0], -1)[..., None].to(x.dtype)

    def _hook(self, x: torch.Tensor, hook: Any) -> torch.Tensor:
        delta = self.scale * self.vector
        if self.positions is None:
            return x + delta
        return x + self._position_mask(x) * delta

    def __enter__(self) -> "Steer":
        stack = ExitStack()
        if self.positions is not None:
            self._tracker = stack.enter_context(_PositionTracker(self.model))
        stack.enter_context(self.model.bridge.hooks(fwd_hooks=self.hooks))
        self._stacks.append(stack)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stacks.pop().close()
        if not self._stacks:
            self._tracker = None


def steer(
    model: Model,
    vector: Any,
    layer: int,
    site: str = "resid_post",
    scale: float = 1.0,
    positions: "Sequence[int] | slice | None" = None,
) -> Steer:
    """Add ``scale * vector`` to an activation of ``layer`` while the context is active.

    Args:
        model: a :class:`workbench.Model`.
        vector: a 1-D tensor (or array/list) of width ``model.d_model``.
        layer: block index, 0..n_layers-1.
        site: ``"resid_pre"``, ``"resid_mid"``, ``"resid_post"``, ``"attn_out"`` or ``"mlp_out"``.
        scale: multiplier of the vector.
        positions: ``None`` = every position (prompt and generated tokens); otherwise
            absolute token positions as a list of ints or a ``slice`` (e.g.
            ``slice(prompt_len, None)`` steers only generated tokens). Positions are the
            model's position ids, so they stay right during KV-cached generation.

    Example:
        >>> with steer(model, v, layer=15, scale=4.0):       # doctest: +SKIP
        ...     print(model.generate("Tell me about your weekend."))
    """
    if site not in SITES:
        raise ValueError(f"site={site!r} is not a steering site; use one of {list(SITES)}")
    if not isinstance(layer, int) or not 0 <= layer < model.n_layers:
        raise ValueError(f"layer {layer!r} is out of range: {model.name!r} has layers 0..{model.n_layers - 1}")
    if positions is not None and not isinstance(positions, slice):
        positions = [int(p) for p in ([positions] if isinstance(positions, int) else positions)]
        if any(p < 0 for p in positions):
            raise ValueError("positions are absolute token indices (>= 0); use slice(start, None) for 'from start on'")
    return Steer(model, _as_vector(model, vector), layer, site, scale, positions)
