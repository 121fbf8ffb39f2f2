"""Causal masking of attention heads.

``mask_heads(model, heads, how)`` builds a :class:`HeadMask`: a small value object
that is a context manager (``with mask_heads(...):``) and also exposes the same
TransformerLens hooks as a list (``mask.hooks``) for ``bridge.run_with_hooks``.

Three ways to take a head out:

- ``"zero"``: its output ``z`` (``blocks.L.attn.hook_z``, before the output projection)
  is set to zero.
- ``"mean"``: ``z`` is replaced by its mean over a reference batch you give (mean
  ablation keeps the head's average contribution, so only its input-dependence is removed).
- ``"uniform"``: its query is zeroed, so every attention score is 0 and the head
  attends uniformly over the visible context; its output becomes the mean of the
  values. This is the masking Differential Preference Steering uses.

With a ``{(layer, head): weight}`` mapping the mask is partial: ``weight`` in [0, 1]
interpolates between the intact head (0) and the fully masked head (1). For
``"uniform"`` the query is scaled by ``1 - weight`` (as the DPS authors do), which
flattens the head's attention by that factor rather than mixing outputs.

Grouped-query attention (several query heads sharing one key/value head) needs no
special care: ``hook_z`` and the query hook carry one slice per *query* head, so each
query head is masked on its own and the shared keys/values are left intact.
"""

from __future__ import annotations

import numbers
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import torch

from workbench.core.hooks import HookSet, hook_point
from workbench.core.model import Model

if TYPE_CHECKING:
    import pandas as pd

HOW = ("zero", "mean", "uniform")
Head = tuple[int, int]


def _is_index(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _normalise_heads(model: Model, heads: Any) -> dict[Head, float]:
    if isinstance(heads, (str, bytes)) or not isinstance(heads, Iterable):
        raise ValueError(f"heads must be (layer, head) pairs or a {{(layer, head): weight}} mapping, "
                         f"got {type(heads).__name__}")
    if isinstance(heads, Mapping):
        items = list(heads.items())
    else:
        if isinstance(heads, tuple) and len(heads) == 2 and all(_is_index(x) for x in heads):
            heads = [heads]  # a single (layer, head) pair
        items = [(h, 1.0) for h in heads]
    out: dict[Head, float] = {}
    for h, w in items:
        if not (isinstance(h, (tuple, list)) and len(h) == 2):
            raise ValueError(f"each head must be a (layer, head) pair, got {h!r}")
        if not all(_is_index(x) for x in h):
            # int(1.7) would silently mask head 1: an index must be a whole number.
            raise ValueError(f"head {tuple(h)!r}: layer and head must be whole numbers (ints), "
                             f"got {type(h[0]).__name__} and {type(h[1]).__name__}")
        layer, head = int(h[0]), int(h[1])
        if not 0 <= layer < model.n_layers:
            raise ValueError(
                f"layer {layer} is out of range: {model.name!r} has layers 0..{model.n_layers - 1} "
                f"(and heads 0..{model.n_heads - 1} in each)"
            )
        if not 0 <= head < model.n_heads:
            raise ValueError(
                f"head {head} (in layer {layer}) is out of range: {model.name!r} has heads "
                f"0..{model.n_heads - 1} per layer (layers 0..{model.n_layers - 1})"
            )
        try:
            if isinstance(w, (bool, str, bytes)):
                raise TypeError
            w = float(w)
        except (TypeError, ValueError):
            raise ValueError(f"mask weight for head ({layer}, {head}) must be a number in [0, 1], got {w!r}") from None
        if not 0.0 <= w <= 1.0:
            raise ValueError(f"mask weight for head ({layer}, {head}) must be in [0, 1], got {w}")
        # Listing a head twice means masking it once, at the larger weight.
        out[(layer, head)] = max(w, out.get((layer, head), 0.0))
    return out


@torch.no_grad()
def head_means(model: Model, reference: Any, chat: bool | None = None) -> torch.Tensor:
    """Mean of every head's output ``z`` over a reference batch: ``[n_layers, n_heads, d_head]``.

    ``reference``: a text, a list of texts (each encoded like ``model.encode``), or token
    ids ``[batch, pos]``. Positions of all texts are pooled.
    """
    if isinstance(reference, torch.Tensor):
        batches = [reference if reference.dim() == 2 else reference[None]]
    elif isinstance(reference, str):
        batches = [model.encode(reference, chat=chat)]
    else:
        batches = [model.encode(r, chat=chat) for r in reference]
    if not batches:
        raise ValueError("reference is empty; how='mean' needs at least one text to average over")
    sums = torch.zeros(model.n_layers, model.n_heads, model.d_head, dtype=torch.float64)
    count = 0
    for ids in batches:
        _, cache = model.bridge.run_with_cache(ids.to(model.device), names_filter=lambda n: n.endswith("attn.hook_z"))
        for layer in range(model.n_layers):
            sums[layer] += cache[hook_point(layer, "attn.hook_z")].double().sum(dim=(0, 1)).cpu()
        count += ids.shape[0] * ids.shape[1]
    return (sums / count).to(model.dtype)


class HeadMask(HookSet):
    """Which heads to mask, how, and how strongly; apply it with ``with`` or via ``.hooks``.

    Build it with :func:`mask_heads`. Entering the context adds the hooks; leaving it
    removes exactly those hooks, even after an exception, so masks nest and compose
    with other hooks.
    """

    fast_path = True  # scales (or replaces) per-head activations: runs on the hook-free view too

    def __init__(self, model: Model, heads: dict[Head, float], how: str, means: torch.Tensor | None = None):
        self.model = model
        self.heads = heads
        self.how = how
        self.means = means
        self.hooks: list[tuple[str, Any]] = self._build_hooks()

    def __repr__(self) -> str:
        shown = ", ".join(
            f"L{l}H{h}" + ("" if w == 1.0 else f"@{w:g}") for (l, h), w in sorted(self.heads.items())[:8]
        )
        more = f", ... ({len(self.heads)} heads)" if len(self.heads) > 8 else ""
        return f"HeadMask(how={self.how!r}, heads=[{shown}{more}], model={self.model.name!r})"

    @property
    def layers(self) -> list[int]:
        return sorted({l for l, _ in self.heads})

    def _weights(self, layer: int) -> torch.Tensor:
        w = torch.zeros(self.model.n_heads)
        for (l, h), weight in self.heads.items():
            if l == layer:
                w[h] = weight
        return w

    def row_hooks(self, rows: Any) -> list[tuple[str, Any]]:
        """The same hooks, applied only to batch rows ``rows`` (an index, list or slice).

        Contrastive decoding runs the intact and the masked model as two rows of one batch:
        one forward per step instead of two, with the shared prompt cached once.
        """
        return self._build_hooks(rows)

    def _build_hooks(self, rows: Any = None) -> list[tuple[str, Any]]:
        hooks = []
        dev, dt = self.model.device, self.model.dtype
        for layer in self.layers:
            w = self._weights(layer).to(dev, dt)[None, None, :, None]  # broadcast over [batch, pos, head, d_head]
            keep = 1.0 - w
            if self.how == "uniform":
                # Scale the query after its norm (Gemma 3 normalises q, which would undo a
                # scale applied before) and after the rotation (linear, so the order is
                # otherwise immaterial). A zero query gives all-zero scores: uniform attention.
                name, full_only = query_hook(self.model)
                if full_only and bool(((w > 0) & (w < 1)).any()):
                    raise ValueError(f"how='uniform' with partial weights is not supported on {_arch(self.model)}: its "
                                     "query is normalised after the only query hook that runs, so a scaled query "
                                     "would be normalised back; use weights of 1 or how='zero'")
                hooks.append((hook_point(layer, name), _on_rows(_make_scale_hook(keep), rows)))
            elif self.how == "zero":
                hooks.append((hook_point(layer, "attn.hook_z"), _on_rows(_make_scale_hook(keep), rows)))
            else:
                mean = self.means[layer].to(dev, dt)[None, None]
                hooks.append((hook_point(layer, "attn.hook_z"), _on_rows(_make_mean_hook(keep, w * mean), rows)))
        return hooks


def _arch(model: Model) -> str:
    original = getattr(model.bridge, "original_model", None)
    name = type(original).__name__ if original is not None else type(model.bridge).__name__
    return f"{model.name!r} ({name})"


@torch.no_grad()
def query_hook(model: Model) -> tuple[str, bool]:
    """The block-relative hook point where ``how="uniform"`` scales a head's query, and whether
    only full masks (weight 1) are exact there; checked once per model, on a 4-token probe.

    ``attn.hook_rot_q`` (after the query's norm and rotation) is preferred, ``attn.hook_q`` next.
    The bridge lists hook points that never run on some architectures (``hook_rot_q`` of a fused
    QKV projection, as in Phi-3 and GPT-NeoX): a hook there would silently mask nothing. So the
    chosen point must run, and zeroing every query of layer 0 there must make its attention
    uniform over the visible keys; otherwise a clear error names the architecture.
    """
    if "_query_hook" in model.__dict__:
        return model.__dict__["_query_hook"]
    bridge = model.bridge
    names = [n for n in ("attn.hook_rot_q", "attn.hook_q") if hook_point(0, n) in bridge.hook_dict]
    fired: list[str] = []
    vocab = int(getattr(bridge.cfg, "d_vocab", 0) or 0) or 4
    ids = (torch.arange(4) % vocab)[None].to(model.device)

    def record(name: str):
        def fn(x: torch.Tensor, hook: Any) -> torch.Tensor:
            fired.append(name)
            return x
        return fn

    seen: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def fn(x: torch.Tensor, hook: Any) -> torch.Tensor:
            seen[name] = x.detach()
            return x
        return fn

    watch = [(hook_point(0, n), keep(n)) for n in ("attn.hook_pattern", "attn.hook_z") if hook_point(0, n) in bridge.hook_dict]
    bridge.run_with_hooks(ids, fwd_hooks=[(hook_point(0, n), record(n)) for n in names] + watch)
    chosen = next((n for n in names if n in fired), None)
    why = "the bridge runs no query hook point (attn.hook_rot_q / attn.hook_q) in its attention"
    if chosen is not None:
        zero = (hook_point(0, chosen), lambda x, hook: torch.zeros_like(x))
        intact = dict(seen)
        seen.clear()
        bridge.run_with_hooks(ids, fwd_hooks=[zero] + watch)
        if "attn.hook_pattern" in seen:
            p = seen["attn.hook_pattern"].float()
            visible = p > 0
            row_max = p.amax(-1, keepdim=True)
            ok = bool(torch.allclose(torch.where(visible, p, row_max), row_max.expand_as(p), atol=1e-4))
        else:
            ok = "attn.hook_z" in seen and not torch.equal(seen["attn.hook_z"], intact["attn.hook_z"])
        if not ok:
            why = f"zeroing the query at attn.{chosen.split('.')[-1]} does not make the attention uniform"
            chosen = None
    if chosen is None:
        raise ValueError(f"how='uniform' (query zeroing) is not supported on {_arch(model)}: {why}, so the mask "
                         "would be wrong; use how='zero' or how='mean'")
    normed_later = chosen == "attn.hook_q" and any(
        k.startswith("blocks.0.attn.") and ("q_norm" in k or k.endswith("hook_q_normed")) for k in bridge.hook_dict)
    model.__dict__["_query_hook"] = (chosen, normed_later)
    return chosen, normed_later


def _on_rows(fn, rows: Any):
    if rows is None:
        return fn

    def on_rows(x: torch.Tensor, hook: Any) -> torch.Tensor:
        x = x.clone()
        x[rows] = fn(x[rows], hook)
        return x

    return on_rows


def _make_scale_hook(keep: torch.Tensor):
    def scale(x: torch.Tensor, hook: Any) -> torch.Tensor:
        return x * keep

    return scale


def _make_mean_hook(keep: torch.Tensor, shifted_mean: torch.Tensor):
    def replace_with_mean(x: torch.Tensor, hook: Any) -> torch.Tensor:
        return x * keep + shifted_mean

    return replace_with_mean


def check_how(how: str, reference: Any = None) -> None:
    """A masking mode and what it needs, checked before any work: one of :data:`HOW`, and for
    ``"mean"`` a ``reference`` (texts or token ids to average each head's output over, or
    precomputed means)."""
    if how not in HOW:
        raise ValueError(f"how={how!r} is not a masking mode; use one of {HOW}")
    if how == "mean" and reference is None:
        raise ValueError("how='mean' needs reference=... (texts or token ids to average each head's output over)")


def mask_heads(
    model: Model,
    heads: "Iterable[Head] | Mapping[Head, float]",
    how: str = "zero",
    reference: Any = None,
) -> HeadMask:
    """Mask attention heads causally; use as a context manager or pass ``.hooks`` on.

    Args:
        model: a :class:`workbench.Model`.
        heads: ``(layer, head)`` pairs (fully masked), or a ``{(layer, head): weight}``
            mapping with weights in [0, 1] for partial masking. Empty = no-op.
        how: ``"zero"``, ``"mean"`` or ``"uniform"`` (see the module docstring).
        reference: for ``how="mean"``: texts or token ids to average each head's output
            over (see :func:`head_means`), or a precomputed ``[n_layers, n_heads, d_head]``
            tensor of means.

    Example:
        >>> with mask_heads(model, [(20, 4), (21, 0)], how="uniform"):   # doctest: +SKIP
        ...     print(model.generate("Write a headline about tea."))
        >>> logits = model.bridge.run_with_hooks(ids, fwd_hooks=mask_heads(model, {(3, 1): 0.5}).hooks)  # doctest: +SKIP
    """
    check_how(how, reference)
    weights = _normalise_heads(model, heads)
    means = None
    if how == "mean":
        if isinstance(reference, torch.Tensor) and reference.is_floating_point():
            expected = (model.n_layers, model.n_heads, model.d_head)
            if tuple(reference.shape) != expected:
                raise ValueError(f"precomputed head means must have shape {expected}, got {tuple(reference.shape)}")
            means = reference
        else:
            means = head_means(model, reference)
    return HeadMask(model, weights, how, means)


@torch.no_grad()
def layer_mask_effects(
    model: Model,
    prompt: Any,
    target: str,
    how: str = "zero",
    reference: Any = None,
    progress: bool = True,
) -> "pd.DataFrame":
    """How much masking all heads of each layer lowers the log-likelihood of ``target``.

    For every layer L, all of L's heads are masked (``how`` as in :func:`mask_heads`) and
    the mean log-likelihood per token of ``target`` after ``prompt`` is recomputed. The
    residual stream below L can't change, so each masked pass starts at layer L from the
    unmasked run's cached ``resid_pre`` instead of re-running the layers beneath it.

    Returns a DataFrame with one row per layer: ``layer``, ``logp`` (intact model),
    ``logp_masked`` and ``drop`` (= logp - logp_masked; positive = the layer's heads help
    produce the target).
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from workbench.core._reuse import run_from_layer
    from workbench.core.model import logprobs_of

    check_how(how, reference)
    ids, start = model.prompt_and_target(prompt, target)
    names = [hook_point(layer, "hook_resid_pre") for layer in range(model.n_layers)]
    logits, cache = model.bridge.run_with_cache(ids, names_filter=names)
    base = float(logprobs_of(logits, ids, start).mean())
    means = head_means(model, reference) if how == "mean" else None
    rows = []
    for layer in tqdm(range(model.n_layers), desc="masking each layer", disable=not progress, leave=False):
        heads = [(layer, h) for h in range(model.n_heads)]
        with mask_heads(model, heads, how=how, reference=means):
            masked_logits = run_from_layer(model.bridge, cache[names[layer]], layer)
        masked = float(logprobs_of(masked_logits, ids, start).mean())
        rows.append({"layer": layer, "logp": base, "logp_masked": masked, "drop": base - masked})
    return pd.DataFrame(rows)
