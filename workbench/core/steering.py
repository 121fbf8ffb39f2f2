"""Steering vectors: one value object, one table of sites, one way to apply them.

A :class:`SteeringVector` holds one vector per ``(layer, site)`` — a CAA or optimised vector
has one entry, a Fints mix has an attention and an MLP entry — with the model it was built
on and how it was built. Save it, load it (another model's vector is refused), and apply it
with a context manager::

    vec = caa_vectors(model, positive_prompts, negative_prompts, [15])[15]
    with vec.apply(model, scale=4.0):
        model.generate(prompt)

:func:`steer` does the same for a bare tensor. Applying adds ``scale * vector`` at each
entry's site on every forward pass, including each step of KV-cached generation; with
``positions`` only at those absolute token positions. Several compose by nesting, or with
``+`` (see :mod:`workbench.core.hooks`).

Sites (TransformerLens hook points of ``blocks.{layer}``) — :data:`SITES` says for each
where a vector is *written* and which activations it moves, i.e. where a difference of
activations is *read* so that adding it at the site moves that activation by exactly it:

==============  ===========================  =========================================
site            written at                   read as
==============  ===========================  =========================================
``resid_pre``   ``hook_resid_pre``           ``hook_resid_pre`` (the block's input)
``resid_mid``   ``hook_attn_out``            ``hook_resid_pre + hook_attn_out``
``resid_post``  ``hook_resid_post``          ``hook_resid_post`` (the block's output)
``attn_out``    ``hook_attn_out``            ``hook_attn_out``
``mlp_out``     ``hook_mlp_out``             ``hook_mlp_out``
==============  ===========================  =========================================

``resid_mid`` is written at the attention output because the bridge's ``hook_resid_mid``
is the input of the second norm: a value written there reaches the MLP but not the skip
connection, whereas adding to the attention output moves the residual stream itself.
"""

from __future__ import annotations

import json
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ContextManager, Iterable, Mapping, Sequence

import torch

from workbench._util import atomic_torch_save, check_int, check_number, load_torch_file, refuse_overwrite
from workbench.core.hooks import HookSet, PositionTracker
from workbench.core.model import Model

_FORMAT = "workbench.steering_vector/2"
_OLD_FORMAT = "workbench.steering_vector/1"  # one layer and site; still read


@dataclass(frozen=True)
class Site:
    """Where a vector is added (``write``) and the activation(s) whose sum it moves (``read``)."""

    write: str
    read: tuple[str, ...]

    def write_hook(self, layer: int) -> str:
        return self.write.format(layer=layer)

    def read_hooks(self, layer: int) -> list[str]:
        return [r.format(layer=layer) for r in self.read]


SITES: dict[str, Site] = {
    "resid_pre": Site("blocks.{layer}.hook_resid_pre", ("blocks.{layer}.hook_resid_pre",)),
    "resid_mid": Site("blocks.{layer}.hook_attn_out", ("blocks.{layer}.hook_resid_pre", "blocks.{layer}.hook_attn_out")),
    "resid_post": Site("blocks.{layer}.hook_resid_post", ("blocks.{layer}.hook_resid_post",)),
    "attn_out": Site("blocks.{layer}.hook_attn_out", ("blocks.{layer}.hook_attn_out",)),
    "mlp_out": Site("blocks.{layer}.hook_mlp_out", ("blocks.{layer}.hook_mlp_out",)),
}


def check_site(model: Model, layers: Sequence[int], site: str) -> None:
    """Raise a clear ValueError for an unknown site or a layer outside the model."""
    if site not in SITES:
        raise ValueError(f"site={site!r} is not a steering site; use one of {list(SITES)}")
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, numbers.Integral):
            raise ValueError(f"layer {layer!r} must be a whole number (int): {model.name!r} has layers "
                             f"0..{model.n_layers - 1}")
        if not 0 <= layer < model.n_layers:
            raise ValueError(f"layer {layer!r} is out of range: {model.name!r} has layers 0..{model.n_layers - 1}")


def read_site(acts: Mapping[str, torch.Tensor], site: str, layer: int) -> torch.Tensor:
    """The activation ``site`` moves, from hook activations keyed by hook name (in float32)."""
    names = SITES[site].read_hooks(layer)
    out = acts[names[0]].float()
    for name in names[1:]:
        out = out + acts[name].float()
    return out


def _as_vector(model: Model, vector: Any) -> torch.Tensor:
    if isinstance(vector, str) or not isinstance(vector, (torch.Tensor, Sequence)) and not hasattr(vector, "__array__"):
        raise ValueError(f"a steering vector must be a 1-D tensor, array or list of floats, got {type(vector).__name__}")
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


def _check_positions(positions: Any, model: Model) -> "list[int] | slice | None":
    """``None``, a slice, or a list of absolute token positions, each within the model's
    context (a position past it would never be reached: the steering would silently do nothing)."""
    if positions is None:
        return None
    last = model.n_ctx - 1
    if isinstance(positions, slice):
        for part in ("start", "stop", "step"):
            value = getattr(positions, part)
            if value is not None:
                check_int(f"positions.{part}", value, minimum=1 if part == "step" else 0)
        if positions.start is not None and positions.start > last:
            raise ValueError(f"positions={positions!r} starts after {model.name!r}'s context "
                             f"(positions 0..{last}); it would steer nothing")
        return positions
    if isinstance(positions, torch.Tensor):
        positions = positions.flatten().tolist()
    if isinstance(positions, numbers.Integral) and not isinstance(positions, bool):
        positions = [positions]
    if isinstance(positions, (str, bytes)) or not isinstance(positions, Iterable):
        raise ValueError(f"positions must be None, a slice or a list of token positions, got {type(positions).__name__}")
    checked = []
    for p in positions:
        if isinstance(p, bool) or not isinstance(p, numbers.Integral):
            raise ValueError(f"positions are whole token indices, got {p!r} ({type(p).__name__})")
        if p < 0:
            raise ValueError("positions are absolute token indices (>= 0); use slice(start, None) for 'from start on'")
        if p > last:
            raise ValueError(f"position {p} is outside {model.name!r}'s context (positions 0..{last}); "
                             "it would never be steered")
        checked.append(int(p))
    if not checked:
        raise ValueError("positions=[] steers nothing; pass None to steer every position")
    return checked


class Steer(HookSet):
    """Adds ``scale * vector`` at each ``(layer, site)`` entry. Build with :func:`steer` or
    :meth:`SteeringVector.apply`."""

    @property
    def fast_path(self) -> bool:
        """Runs on the hook-free view too: a vector added everywhere, or at positions the view
        reports (its rotary or position embedding is called with them; ALiBi models have neither)."""
        if self.positions is None:
            return True
        return any(getattr(getattr(self.model.bridge, attr, None), "_original_component", None) is not None
                   for attr in ("rotary_emb", "pos_embed"))

    def __init__(self, model: Model, entries: list[tuple[int, str, torch.Tensor, float]],
                 positions: "Sequence[int] | slice | None" = None):
        self.model = model
        self.entries = entries
        self.positions = positions
        self._tracker = PositionTracker(model) if positions is not None else None
        self.hooks = [(SITES[site].write_hook(layer), self._make_hook(vector, scale))
                      for layer, site, vector, scale in entries]

    # The one-entry view (what ``steer`` builds). Like SteeringVector.layer, it refuses to pick
    # one entry of several: the first layer of a multi-layer vector would be a silent half-truth.
    def _one(self, what: str) -> int:
        if len(self.entries) != 1:
            raise ValueError(f"this Steer adds {len(self.entries)} vectors "
                             f"({', '.join(SITES[s].write_hook(layer) for layer, s, _, _ in self.entries)}); "
                             f"`.{what}` names one: use `.entries` (layer, site, vector, scale)")
        return 0

    @property
    def layer(self) -> int:
        return self.entries[self._one("layer")][0]

    @property
    def site(self) -> str:
        return self.entries[self._one("site")][1]

    @property
    def vector(self) -> torch.Tensor:
        return self.entries[self._one("vector")][2]

    @property
    def scale(self) -> float:
        return self.entries[self._one("scale")][3]

    @property
    def hook_name(self) -> str:
        return self.hooks[self._one("hook_name")][0]

    def __repr__(self) -> str:
        where = "all positions" if self.positions is None else f"positions={self.positions!r}"
        parts = ", ".join(f"{SITES[s].write_hook(layer)}, scale={scale:g}, |vector|={float(v.float().norm()):.3g}"
                          for layer, s, v, scale in self.entries)
        return f"Steer({parts}, {where}, model={self.model.name!r})"

    def _contexts(self) -> list[ContextManager]:
        return [self._tracker] if self._tracker is not None else []

    def _position_mask(self, x: torch.Tensor) -> torch.Tensor:
        pos = self._tracker.position_ids if self._tracker is not None else None
        if pos is None or pos.shape[-1] != x.shape[1]:
            # Outside a tracked context (plain run_with_hooks) the pass is a full, uncached one.
            pos = torch.arange(x.shape[1], device=x.device)[None]
        pos = pos.to(x.device)
        if pos.shape[0] not in (1, x.shape[0]) and x.shape[0] % pos.shape[0] == 0:
            # DPS's masked copy of a batch: the same prompts again, at the same positions
            pos = pos.repeat(x.shape[0] // pos.shape[0], 1)
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

    def _make_hook(self, vector: torch.Tensor, scale: float):
        def add(x: torch.Tensor, hook: Any) -> torch.Tensor:
            delta = scale * vector
            if self.positions is None:
                return x + delta
            return x + self._position_mask(x) * delta

        return add


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
    check_site(model, [layer], site)
    return Steer(model, [(int(layer), site, _as_vector(model, vector), check_number("scale", scale))], _check_positions(positions, model))


@dataclass
class SteeringVector:
    """Steering vectors per ``(layer, site)``, the model they belong to and how they were made.

    ``vectors``: ``{(layer, site): 1-D tensor of width d_model}``; ``model``: the name of the
    model they were built on; ``built``: method and settings (JSON-able). Build one with
    :func:`SteeringVector.at` (one entry), :func:`workbench.science.caa.caa_vectors`,
    :func:`workbench.science.optimized.optimized_vector` or :func:`workbench.science.fints.aggregate`.
    """

    vectors: dict[tuple[int, str], torch.Tensor]
    model: str
    built: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.vectors:
            raise ValueError("a SteeringVector needs at least one (layer, site) entry")
        for (layer, site), v in self.vectors.items():
            if not isinstance(v, torch.Tensor):
                raise ValueError(f"the vector at layer {layer} {site} must be a torch tensor, got {type(v).__name__}")
            if site not in SITES:
                raise ValueError(f"site={site!r} is not a steering site; use one of {list(SITES)}")
            if v.dim() != 1:
                raise ValueError(f"the vector at layer {layer} {site} must be 1-D, got shape {tuple(v.shape)}")

    @classmethod
    def at(cls, vector: torch.Tensor, layer: int, site: str, model: str, built: dict | None = None) -> "SteeringVector":
        """One vector at one layer and site."""
        return cls({(int(layer), site): vector}, model, dict(built or {}))

    def _single(self, what: str) -> tuple[tuple[int, str], torch.Tensor]:
        if len(self.vectors) != 1:
            raise ValueError(f"this SteeringVector has {len(self.vectors)} entries ({self.entries}); "
                             f"`.{what}` is only defined for one — use `.vectors`")
        return next(iter(self.vectors.items()))

    @property
    def entries(self) -> list[tuple[int, str]]:
        return list(self.vectors)

    @property
    def vector(self) -> torch.Tensor:
        return self._single("vector")[1]

    @property
    def layer(self) -> int:
        layers = {layer for layer, _ in self.vectors}
        if len(layers) != 1:
            raise ValueError(f"this SteeringVector spans layers {sorted(layers)}; use `.vectors`")
        return layers.pop()

    @property
    def site(self) -> str:
        return self._single("site")[0][1]

    @property
    def d_model(self) -> int:
        return int(next(iter(self.vectors.values())).shape[-1])

    @property
    def norm(self) -> float:
        """The norm of the vector (of all entries together, when there are several)."""
        return float(torch.cat([v.float().flatten().cpu() for v in self.vectors.values()]).norm())

    def __repr__(self) -> str:
        how = self.built.get("method", "?")
        where = ", ".join(f"L{layer} {site} |v|={float(v.float().norm()):.3g}"
                          for (layer, site), v in self.vectors.items())
        return f"SteeringVector({how}, {where}, d={self.d_model}, model={self.model!r})"

    def check_model(self, model: Model) -> None:
        """Raise a clear ValueError unless this vector belongs to ``model``."""
        if model.name != self.model or model.d_model != self.d_model:
            raise ValueError(f"this vector was built on {self.model!r} (d_model={self.d_model}), not on "
                             f"{model.name!r} (d_model={model.d_model}); rebuild it for this model")

    def apply(self, model: Model, scale: float = 1.0, positions: Any = None,
              site_scales: Mapping[str, float] | None = None) -> Steer:
        """A context manager (and ``.hooks``) adding ``scale`` times every entry while active.

        ``site_scales`` overrides the scale for the entries at some sites (e.g. Fints' separate
        MLP scale). Refuses a vector of another model.
        """
        self.check_model(model)
        scale = check_number("scale", scale)
        scales = {s: check_number(f"site_scales[{s!r}]", v) for s, v in (site_scales or {}).items()}
        for layer, site in self.vectors:
            check_site(model, [layer], site)
        entries = [(int(layer), site, _as_vector(model, v), scales.get(site, scale))
                   for (layer, site), v in self.vectors.items()]
        return Steer(model, entries, _check_positions(positions, model))

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the vectors and their provenance (``torch.save``, atomically); refuses to
        replace a file unless ``overwrite=True``."""
        path = Path(path)
        refuse_overwrite(path, overwrite)
        entries = [{"layer": layer, "site": site, "vector": v.detach().float().cpu()}
                   for (layer, site), v in self.vectors.items()]
        return atomic_torch_save(path, {"format": _FORMAT, "entries": entries, "model": self.model,
                                        "built": json.dumps(self.built, default=str)})

    @classmethod
    def load(cls, path: str | Path, model: "Model | str | None" = None) -> "SteeringVector":
        """Read a vector saved with :meth:`save`; with ``model``, refuse one built on another
        model (a :class:`Model` also moves the vectors to its device and dtype)."""
        path = Path(path)
        fix = "build a vector with caa_vectors / optimized_vector and save it with .save(path)"
        d = load_torch_file(path, "a saved SteeringVector", fix)
        if not isinstance(d, dict) or d.get("format") not in (_FORMAT, _OLD_FORMAT):
            raise ValueError(f"{path} is not a saved SteeringVector (no workbench steering-vector format in it); {fix}")
        try:
            if d["format"] == _OLD_FORMAT:
                vectors = {(int(d["layer"]), d["site"]): d["vector"]}
            else:
                vectors = {(int(e["layer"]), e["site"]): e["vector"] for e in d["entries"]}
            vec = cls(vectors, d["model"], json.loads(d["built"]))
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise ValueError(f"{path} is a damaged SteeringVector file ({type(e).__name__}: {e})") from None
        if isinstance(model, str):
            if model != vec.model:
                raise ValueError(f"{path} holds a vector of {vec.model!r}, not of {model!r}; rebuild it for this model")
        elif model is not None:
            vec.check_model(model)
            vec.vectors = {k: v.to(model.device, model.dtype) for k, v in vec.vectors.items()}
        return vec
