"""Run the model from layer ``L`` on, given the residual stream entering it.

TransformerLens 4.3's ``start_at_layer`` gives the right numbers but still runs blocks
``0..L-1`` (it discards their output and swaps the residual in at block ``L``), so it saves
no time. Here the blocks below ``L`` are replaced by the identity for the duration of the
call: the residual passes through them untouched and block ``L`` receives it as before.
Blocks below ``L`` then write nothing to a KV cache, which is harmless: layer ``l`` only
ever reads its own layer's cache.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch


def _identity(hidden_states: Any = None, *args: Any, **kwargs: Any) -> Any:
    return hidden_states


@contextmanager
def skip_blocks_below(bridge: Any, layer: int) -> Iterator[None]:
    blocks = list(bridge.blocks)[:layer]
    for block in blocks:
        # An instance attribute shadows the class method; set it directly because the
        # bridge components forward attribute writes to the wrapped module.
        block.__dict__["forward"] = _identity
    try:
        yield
    finally:
        for block in blocks:
            block.__dict__.pop("forward", None)


def run_from_layer(bridge: Any, resid: torch.Tensor, layer: int, fwd_hooks: list | None = None, **kwargs: Any) -> Any:
    """``bridge(resid, start_at_layer=layer, **kwargs)`` without computing the layers below."""
    with skip_blocks_below(bridge, layer):
        if fwd_hooks:
            return bridge.run_with_hooks(resid, start_at_layer=layer, fwd_hooks=fwd_hooks, **kwargs)
        return bridge(resid, start_at_layer=layer, **kwargs)
