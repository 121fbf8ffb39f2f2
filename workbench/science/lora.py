"""LoRA adapters (peft) trained on ``(prompt, target)`` records, switched on and off as an intervention.

The records are task-neutral: the caller builds them (e.g. a user's earlier inputs, as the
task's own prompt, and the outputs they wrote — :mod:`workbench.methods.lora`). Three parts:

- :func:`train_lora`: peft builds the LoRA layers (:class:`peft.LoraConfig`, its
  initialisation: ``A`` random, ``B`` zero, scaling ``alpha / rank``) around the chosen
  ``nn.Linear`` projections; Adam fits ``A`` and ``B`` to the likelihood of the target tokens
  only (the prompt is context, never a target), seeded, the model's own weights frozen and
  untouched. Returns a :class:`LoraAdapter`.
- :class:`LoraAdapter`: the fitted ``A``/``B`` per projection, with the model they belong to
  and how they were built; ``save``/``load`` (another model's adapter is refused), and
  ``apply(model)`` → :class:`LoraOn`, an intervention (a :class:`~workbench.core.hooks.HookSet`,
  so ``steer + lora`` composes) that adds ``scaling * B A x`` to each projection's output while
  active, and is off again on exit, also after an exception.
- :func:`adapter_effects` / :func:`adapter_figure`: where the adapter acts — per layer and
  module, the norm of its weight change and the size of its change to the module's output on
  given records, beside the layers of PCS heads and steering vectors.

**Why forward hooks, not peft's module replacement.** peft normally swaps each target
``nn.Linear`` for a ``lora.Linear`` in the module tree. Here the tree is shared by the
TransformerBridge (each Linear sits inside a ``LinearBridge``) and by the hook-free generation
view (``core/_plain.py``, which keeps its own copies of the containers, built once): a swap
made after the view was built is seen by one path and not the other. A forward hook on the
Linear itself fires on both paths (both call that very module), changes no module tree, and
disappears with its handle. The sum it adds is exactly peft's (``base(x) + B(A(dropout(x))) *
scaling``), so generation with the adapter on equals a plain ``transformers`` + peft model's.
"""

from __future__ import annotations

import json
import math
import re
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ContextManager, Iterable, Sequence

import torch

from workbench._util import (atomic_torch_save, check_int, check_number, frozen_parameters, load_torch_file, pad_right,
                             refuse_overwrite)
from workbench.core.hooks import HookSet, target_positions_hook
from workbench.core.model import Model

MODULES = {"attn": ("attn",), "mlp": ("mlp",), "all": ("attn", "mlp")}
"""Which projections get an adapter: the attention's (q, k, v, o), the MLP's (gate, up, down), or both."""

_FORMAT = "workbench.lora/1"
_ORIGINAL = "._original_component"  # where a bridge component keeps the module it wraps
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


# ---- which modules ---------------------------------------------------------------------------------

def lora_targets(model: Model, modules: str = "all") -> dict[str, torch.nn.Linear]:
    """``{path: nn.Linear}`` of the projections an adapter on ``modules`` covers, in model order.

    ``path`` is the Hugging Face name (``model.layers.3.self_attn.q_proj``); the module is the
    one both the bridge and the hook-free view call. The unembedding is never a target."""
    if modules not in MODULES:
        raise ValueError(f"modules={modules!r}: use one of {', '.join(MODULES)}")
    original = getattr(model.bridge, "original_model", None)
    if original is None:
        raise ValueError(f"{model.name!r} is not backed by Hugging Face modules; LoRA needs its nn.Linear projections")
    found: dict[str, torch.nn.Linear] = {}
    for name, mod in original.named_modules():
        if not isinstance(mod, torch.nn.Linear):
            continue
        path = name.replace(_ORIGINAL, "")
        if _LAYER.search(path) and module_kind(path) in MODULES[modules]:
            found[path] = mod
    if not found:
        raise ValueError(f"no nn.Linear {modules} projections found in {model.name!r}'s layers "
                         "(LoRA here covers Llama-style q/k/v/o and gate/up/down projections)")
    return found


def module_kind(path: str) -> str:
    """``"attn"``, ``"mlp"`` or ``""`` for a projection's path."""
    parts = path.split(".")
    if any(p in ("self_attn", "attn", "attention") for p in parts):
        return "attn"
    if any(p in ("mlp", "feed_forward") for p in parts):
        return "mlp"
    return ""


def _layer_of(path: str) -> int:
    m = _LAYER.search(path)
    return int(m.group(1)) if m else -1


# ---- the adapter ---------------------------------------------------------------------------------

@dataclass
class LoraAdapter:
    """A fitted LoRA adapter: ``weights[path] = (A [rank, in], B [out, rank])``, added as
    ``scaling * B @ A`` to the projection at ``path`` of ``model`` (a model name)."""

    weights: dict[str, tuple[torch.Tensor, torch.Tensor]]
    scaling: float
    model: str
    settings: dict = field(default_factory=dict)  # rank, alpha, dropout, modules, lr, epochs, ...
    built: dict = field(default_factory=dict)  # provenance: records, losses, seconds, ...

    @property
    def n_params(self) -> int:
        return sum(a.numel() + b.numel() for a, b in self.weights.values())

    @property
    def rank(self) -> int:
        return int(next(iter(self.weights.values()))[0].shape[0])

    def __repr__(self) -> str:
        return (f"LoraAdapter(rank {self.rank}, {len(self.weights)} projections, {self.n_params:,} parameters, "
                f"model={self.model!r}, records={self.built.get('n_records', '?')})")

    def delta(self, path: str) -> torch.Tensor:
        """The weight change ``scaling * B @ A`` of one projection (``[out, in]``, float32)."""
        a, b = self.weights[path]
        return self.scaling * (b.float() @ a.float())

    def check_model(self, model: Model) -> dict[str, torch.nn.Linear]:
        """The model's projections this adapter acts on; a ValueError unless it belongs to ``model``."""
        if model.name != self.model:
            raise ValueError(f"this LoRA adapter was trained on {self.model!r}, not on {model.name!r}; "
                             "train one for this model")
        targets = lora_targets(model, "all")
        for path, (a, b) in self.weights.items():
            mod = targets.get(path)
            if mod is None or tuple(a.shape[1:]) != (mod.in_features,) or tuple(b.shape[:1]) != (mod.out_features,):
                raise ValueError(f"this LoRA adapter's projection {path!r} does not fit {model.name!r}; "
                                 "train one for this model")
        return {p: targets[p] for p in self.weights}

    def apply(self, model: Model) -> "LoraOn":
        """The adapter as an intervention: on while the ``with`` block runs (see :class:`LoraOn`)."""
        return LoraOn(model, self)

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the adapter (``torch.save``, atomically); refuses to replace a file unless ``overwrite``."""
        path = Path(path)
        refuse_overwrite(path, overwrite)
        entries = [{"path": p, "A": a.detach().float().cpu(), "B": b.detach().float().cpu()}
                   for p, (a, b) in self.weights.items()]
        return atomic_torch_save(path, {"format": _FORMAT, "entries": entries, "scaling": float(self.scaling),
                                        "model": self.model, "settings": json.dumps(self.settings, default=str),
                                        "built": json.dumps(self.built, default=str)})

    @classmethod
    def load(cls, path: str | Path, model: "Model | str | None" = None) -> "LoraAdapter":
        """Read an adapter saved with :meth:`save`; with ``model``, refuse one of another model."""
        path = Path(path)
        fix = "train an adapter with train_lora and save it with .save(path)"
        d = load_torch_file(path, "a saved LoRA adapter", fix)
        if not isinstance(d, dict) or d.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a saved LoRA adapter (no {_FORMAT} format in it); {fix}")
        try:
            weights = {e["path"]: (e["A"], e["B"]) for e in d["entries"]}
            ad = cls(weights, float(d["scaling"]), d["model"], json.loads(d["settings"]), json.loads(d["built"]))
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise ValueError(f"{path} is a damaged LoRA adapter file ({type(e).__name__}: {e})") from None
        if isinstance(model, str):
            if model != ad.model:
                raise ValueError(f"{path} holds an adapter of {ad.model!r}, not of {model!r}; train one for this model")
        elif model is not None:
            ad.check_model(model)
        return ad

    def peft_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights under peft's names (``<path>.lora_A.weight``), as ``peft.set_peft_model_state_dict``
        reads them for a ``transformers`` model with the same projections."""
        out = {}
        for p, (a, b) in self.weights.items():
            out[f"base_model.model.{p}.lora_A.weight"] = a
            out[f"base_model.model.{p}.lora_B.weight"] = b
        return out


class _ModuleHooks(AbstractContextManager):
    """Forward hooks adding each adapter's output to its projection's; re-entrant (nested
    ``with`` of the same adapter adds it once)."""

    def __init__(self, owner: "LoraOn"):
        self.owner = owner

    def __enter__(self) -> "_ModuleHooks":
        o = self.owner
        o._depth += 1
        if o._depth == 1:
            try:
                for path, mod in o.modules.items():
                    o._handles.append(mod.register_forward_hook(o._hook(path)))
            except BaseException:
                self.__exit__(None, None, None)
                raise
        return self

    def __exit__(self, *exc: Any) -> None:
        o = self.owner
        o._depth -= 1
        if o._depth == 0:
            for h in o._handles:
                h.remove()
            o._handles.clear()


class LoraOn(HookSet):
    """A :class:`LoraAdapter` switched on for a ``with`` block: each target projection's output
    gets ``scaling * B(A(x))`` added (a torch forward hook on the ``nn.Linear`` itself, which the
    bridge and the hook-free generation path both run). No TransformerLens hooks of its own, so
    the fast generation path stays available; ``lora + steer`` is one intervention."""

    def __init__(self, model: Model, adapter: LoraAdapter, record: dict | None = None):
        self.model = model
        self.adapter = adapter
        self.modules = adapter.check_model(model)
        self.hooks = []
        self.record = record  # {path: [sum |delta|, sum |base out|, n positions]} when measuring (adapter_effects)
        dev = model.device
        self._weights = {p: (a.to(dev, torch.float32), b.to(dev, torch.float32)) for p, (a, b) in adapter.weights.items()}
        self._handles: list[Any] = []
        self._depth = 0
        self._cm = _ModuleHooks(self)

    def _contexts(self) -> list[ContextManager]:
        return [self._cm]

    def _hook(self, path: str):
        a, b = self._weights[path]
        s = self.adapter.scaling

        def fn(mod: Any, args: tuple, out: torch.Tensor) -> torch.Tensor:
            x = args[0]
            delta = torch.nn.functional.linear(torch.nn.functional.linear(x.to(a.dtype), a), b) * s
            if self.record is not None:
                acc = self.record.setdefault(path, [0.0, 0.0, 0])
                acc[0] += float(delta.float().norm(dim=-1).sum())
                acc[1] += float(out.float().norm(dim=-1).sum())
                acc[2] += int(delta[..., 0].numel())
            return out + delta.to(out.dtype)

        return fn

    def __repr__(self) -> str:
        return f"LoraOn({self.adapter!r})"


# ---- training ------------------------------------------------------------------------------------

def check_lora_settings(rank: Any, alpha: Any, lr: Any, epochs: Any, batch_size: Any, dropout: Any, modules: Any,
                        seed: Any = 0) -> None:
    """ValueErrors naming the argument, before any training."""
    check_int("rank", rank, minimum=1)
    check_number("alpha", alpha, above=0)
    check_number("lr", lr, above=0)
    check_int("epochs", epochs, minimum=1)
    check_int("batch_size", batch_size, minimum=1)
    check_number("dropout", dropout, minimum=0)
    if not dropout < 1:
        raise ValueError(f"dropout={dropout} must be < 1")
    if modules not in MODULES:
        raise ValueError(f"modules={modules!r}: use one of {', '.join(MODULES)}")
    check_int("seed", seed)


def _peft_layers(targets: dict[str, torch.nn.Linear], rank: int, alpha: float, dropout: float) -> list[Any]:
    """peft's LoRA layers around ``targets``, built in a holder module of their own so that the
    model's module tree is not changed (see the module docstring). Returns the holder's layers."""
    from peft import LoraConfig, inject_adapter_in_model

    holder = torch.nn.Module()
    for i, mod in enumerate(targets.values()):
        holder.add_module(f"t{i}", mod)
    before = {id(p): p.requires_grad for m in targets.values() for p in m.parameters()}
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=r"t\d+", bias="none")
    inject_adapter_in_model(config, holder)
    for m in targets.values():  # peft marks base weights as frozen: that is the model's business, not ours
        for p in m.parameters():
            p.requires_grad_(before[id(p)])
    layers = [holder.get_submodule(f"t{i}") for i in range(len(targets))]
    for layer in layers:
        for name in ("lora_A", "lora_B"):
            getattr(layer, name).float()
    return layers


def encode_records(model: Model, records: Sequence[tuple[Any, str]]) -> list[tuple[torch.Tensor, int]]:
    """``(ids [1, pos], start of the target)`` of each ``(prompt, target)`` record."""
    records = list(records)
    if not records:
        raise ValueError("no (prompt, target) records to train the adapter on")
    if any(not isinstance(r, tuple) or len(r) != 2 or not isinstance(r[1], str) or not r[1].strip() for r in records):
        raise ValueError("records must be (prompt, target) pairs with a non-empty target text, e.g. "
                         "[(task_prompt(model, task, item_input), item_output), ...]")
    return [model.prompt_and_target(p, t) for p, t in records]


def _batch_loss(model: Model, batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, int]:
    """Mean NLL of the target tokens of ``batch`` (right-padded: padding never reaches a real
    token under causal attention), and how many target tokens there were."""
    seqs = [ids for ids, _ in batch]
    ids = pad_right(seqs, int(model.tokenizer.pad_token_id or 0))
    # only the positions that predict a target token go through the vocabulary projection
    only, rows, slots = target_positions_hook([(st, s.shape[-1]) for s, st in batch], model.device)
    tgt = torch.cat([s[0, st:] for s, st in batch])
    logits = model.bridge.run_with_hooks(ids, fwd_hooks=[only])
    lp = logits[rows, slots].float().log_softmax(-1)
    return -lp.gather(-1, tgt[:, None]).mean(), int(tgt.numel())


def train_lora(model: Model, records: Sequence[tuple[Any, str]], *, rank: int = 8, alpha: float = 16.0,
               lr: float = 5e-4, epochs: int = 2, batch_size: int = 4, dropout: float = 0.0, modules: str = "all",
               seed: int = 0, built: dict | None = None) -> LoraAdapter:
    """A LoRA adapter fitted to ``records``, ``(prompt, target)`` pairs (the loss: mean
    negative log-likelihood of the target tokens given the prompt; prompt tokens are context only).

    ``epochs`` passes over the records in a seeded order, ``batch_size`` records per Adam step.
    peft initialises ``A`` (Kaiming-uniform) and ``B`` (zero), so step 0 is the base model; the
    model's weights are frozen and never written. Deterministic for a ``seed`` on one machine.
    """
    check_lora_settings(rank, alpha, lr, epochs, batch_size, dropout, modules, seed)
    encoded = encode_records(model, records)
    targets = lora_targets(model, modules)
    t0 = time.perf_counter()
    losses: list[float] = []
    n_tokens = sum(ids.shape[-1] - st for ids, st in encoded)
    with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []):
        torch.manual_seed(seed)
        layers = _peft_layers(targets, rank, alpha, dropout)
        params = [p for layer in layers for p in (*layer.lora_A.parameters(), *layer.lora_B.parameters())]
        opt = torch.optim.Adam(params, lr=lr)
        g = torch.Generator().manual_seed(seed)

        def hook_of(layer: Any):
            def fn(mod: Any, args: tuple, out: torch.Tensor) -> torch.Tensor:
                # peft's lora.Linear.forward without its base call (the base output is `out`)
                x = args[0]
                a, b, drop = layer.lora_A["default"], layer.lora_B["default"], layer.lora_dropout["default"]
                return out + (b(a(drop(x.to(torch.float32)))) * layer.scaling["default"]).to(out.dtype)
            return fn

        handles = [mod.register_forward_hook(hook_of(layer)) for mod, layer in zip(targets.values(), layers)]
        was_training = model.bridge.training
        try:
            for layer in layers:
                layer.train()
            with frozen_parameters(model.bridge), torch.enable_grad():
                for _ in range(epochs):
                    order = torch.randperm(len(encoded), generator=g).tolist()
                    for i in range(0, len(order), batch_size):
                        opt.zero_grad()
                        loss, _ = _batch_loss(model, [encoded[j] for j in order[i:i + batch_size]])
                        if not torch.isfinite(loss):
                            raise FloatingPointError(f"LoRA training loss became {float(loss)} at step {len(losses)}; "
                                                     "lower lr")
                        loss.backward()
                        opt.step()
                        losses.append(round(float(loss.detach()), 4))
        finally:
            for h in handles:
                h.remove()
            model.bridge.train(was_training)
    seconds = time.perf_counter() - t0
    weights = {p: (layer.lora_A["default"].weight.detach().float().cpu().clone(),
                   layer.lora_B["default"].weight.detach().float().cpu().clone())
               for p, layer in zip(targets, layers)}
    scaling = float(layers[0].scaling["default"])
    settings = {"rank": rank, "alpha": alpha, "lr": lr, "epochs": epochs, "batch_size": batch_size,
                "dropout": dropout, "modules": modules, "seed": seed}
    info = {"method": "lora", "n_records": len(encoded), "n_target_tokens": n_tokens,
            "n_tokens": sum(ids.shape[-1] for ids, _ in encoded), "steps": len(losses), "losses": losses,
            "seconds": round(seconds, 3), **(built or {})}
    return LoraAdapter(weights, scaling, model.name, settings, info)


@torch.no_grad()
def records_loss(model: Model, records: Sequence[tuple[Any, str]], adapter: LoraAdapter | None = None,
                 batch_size: int = 4) -> float:
    """Mean NLL (nats per target token) of ``records``, with ``adapter`` on (or the base model)."""
    encoded = encode_records(model, records)
    total, n = 0.0, 0
    with adapter.apply(model) if adapter is not None else nullcontext():
        for i in range(0, len(encoded), batch_size):
            loss, k = _batch_loss(model, encoded[i:i + batch_size])
            total += float(loss) * k
            n += k
    return total / n


# ---- where the adapter acts ------------------------------------------------------------------------

@torch.no_grad()
def adapter_effects(model: Model, adapter: LoraAdapter, records: Sequence[tuple[Any, str]] | None = None,
                    batch_size: int = 4) -> Any:
    """Where ``adapter`` acts, one row per projection (a pandas DataFrame):

    - ``layer``, ``kind`` (attn / mlp), ``module`` (``q_proj``…), ``path``;
    - ``weight_delta``: the Frobenius norm of the weight change ``scaling * B A``, and
      ``weight_rel``: that over the norm of the projection's weight;
    - with ``records`` (e.g. the user's history as the adapter's training records):
      ``output_delta``, the mean norm of the adapter's addition to the projection's output per
      token position, and ``output_rel``, that over the mean norm of the base output.
    """
    import pandas as pd

    modules = adapter.check_model(model)
    record: dict = {}
    if records is not None:
        encoded = encode_records(model, records)
        with LoraOn(model, adapter, record=record):
            for i in range(0, len(encoded), batch_size):
                _batch_loss(model, encoded[i:i + batch_size])
    rows = []
    for path, mod in modules.items():
        d = adapter.delta(path)
        w = float(mod.weight.detach().float().norm())
        row = {"layer": _layer_of(path), "kind": module_kind(path), "module": path.rsplit(".", 1)[-1], "path": path,
               "weight_delta": float(d.norm()), "weight_rel": float(d.norm()) / w if w else math.nan}
        if path in record:
            dsum, base, n = record[path]  # the hook sees the base output before it adds the delta
            row.update(output_delta=dsum / max(n, 1), output_rel=dsum / base if base else math.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def adapter_figure(effects: Any, value: str | None = None, pcs_layers: Iterable[int] = (),
                   steering_layers: Iterable[int] = (), title: str | None = None) -> Any:
    """Bars of ``value`` (default ``output_rel`` when measured, else ``weight_rel``) per layer,
    one colour per module, with the layers of the PCS heads (triangles) and of the steering
    vectors (dashed lines) marked. ``effects``: :func:`adapter_effects`' DataFrame."""
    import plotly.graph_objects as go

    if value is None:
        value = "output_rel" if "output_rel" in effects.columns else "weight_rel"
    if value not in effects.columns:
        raise ValueError(f"value={value!r}: the effects have {', '.join(map(str, effects.columns))}")
    fig = go.Figure()
    for module, df in effects.groupby("module", sort=False):
        fig.add_bar(x=df["layer"], y=df[value], name=str(module))
    top = float(effects[value].max()) if len(effects) else 1.0
    pcs = sorted({int(x) for x in pcs_layers})
    if pcs:
        fig.add_scatter(x=pcs, y=[top * 1.08] * len(pcs), mode="markers", name="PCS head layers",
                        marker={"symbol": "triangle-down", "size": 11, "color": "black"})
    for i, layer in enumerate(sorted({int(x) for x in steering_layers})):
        fig.add_vline(x=layer, line_dash="dash", line_color="firebrick",
                      annotation_text="steering" if i == 0 else None)
    fig.update_layout(barmode="group", template="plotly_white", xaxis_title="layer", yaxis_title=value,
                      title=title or f"Where the LoRA adapter acts ({value})", legend_title="module")
    return fig
