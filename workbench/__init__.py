"""workbench: explain and steer how language models personalize their output to one user.

The public API is what a notebook needs (``import workbench as wb``):

- the model: :func:`load_model` -> :class:`Model` (a TransformerLens ``TransformerBridge`` +
  tokenizer); :func:`available_models` (what loads offline here)
- data: :func:`load_dataset` (the LaMP-format datasets shipped with the package, or a directory)
- interventions, each a context manager built on :class:`HookSet`: :func:`mask_heads` ->
  :class:`HeadMask`; :func:`steer` and :class:`SteeringVector` (vectors per layer and site:
  train, save, load, ``apply``)
- preference heads: :func:`preference_scores` -> :class:`PreferenceScores`; :func:`dps_generate`
  (Differential Preference Steering decoding)
- token effects: :func:`trace_tokens` -> :class:`TokenEffects`

Everything else lives in the subpackage of its layer (``ARCHITECTURE.md``), imported from
there: ``workbench.core`` (model, hooks, heads, steering), ``workbench.data`` (tasks, records,
retrieval, history, prompts, metrics), ``workbench.science`` (PCS, DPS, tracing, SteerX, CAA,
optimised vectors, pairs, Fints), ``workbench.methods`` (the benchmark's methods),
``workbench.runner`` (bench, compare, tuning, sweeps, scale-out, figures) and ``workbench.app``
(CLI, demo, report). Names moved by the second architecture pass are listed in ``CHANGELOG.md``.

Names are imported on first use, so ``import workbench`` is quick and loads no model code.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from workbench._version import __version__

# public name -> the module that defines it (its one import path besides this one)
_PUBLIC = {
    "load_model": "workbench.core.loading",
    "available_models": "workbench.core.loading",
    "Model": "workbench.core.model",
    "HookSet": "workbench.core.hooks",
    "mask_heads": "workbench.core.heads",
    "HeadMask": "workbench.core.heads",
    "steer": "workbench.core.steering",
    "SteeringVector": "workbench.core.steering",
    "load_dataset": "workbench.data.lamp",
    "preference_scores": "workbench.science.pcs",
    "PreferenceScores": "workbench.science.pcs_result",
    "dps_generate": "workbench.science.dps",
    "trace_tokens": "workbench.science.tracing",
    "TokenEffects": "workbench.science.token_effects",
}
_SUBPACKAGES = ("core", "data", "science", "methods", "runner", "app")

__all__ = [
    "HeadMask", "HookSet", "Model", "PreferenceScores", "SteeringVector", "TokenEffects", "__version__",
    "available_models", "dps_generate", "load_dataset", "load_model", "mask_heads", "preference_scores",
    "steer", "trace_tokens",
]

if TYPE_CHECKING:  # for editors and type checkers; at run time __getattr__ imports on first use
    from workbench.core.heads import HeadMask, mask_heads
    from workbench.core.hooks import HookSet
    from workbench.core.loading import available_models, load_model
    from workbench.core.model import Model
    from workbench.core.steering import SteeringVector, steer
    from workbench.data.lamp import load_dataset
    from workbench.science.dps import dps_generate
    from workbench.science.pcs import preference_scores
    from workbench.science.pcs_result import PreferenceScores
    from workbench.science.token_effects import TokenEffects
    from workbench.science.tracing import trace_tokens


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value  # once imported, a plain attribute
        return value
    if name in _SUBPACKAGES:
        return importlib.import_module(f"workbench.{name}")
    moved = _MOVED.get(name)
    hint = f"; it moved to {moved} (CHANGELOG.md)" if moved else ""
    raise AttributeError(f"module 'workbench' has no attribute {name!r}{hint}")


def __dir__() -> list[str]:
    return sorted([*__all__, *_SUBPACKAGES])


# names the top level exported before the second architecture pass: a clear pointer, not a shim
_MOVED = {
    "DEFAULT_MODEL": "workbench.core.loading.DEFAULT_MODEL",
    "ModelNotAvailableError": "workbench.core.loading.ModelNotAvailableError",
    "load_hf": "workbench.core.loading.load_hf",
    "Steer": "workbench.core.steering.Steer",
    "head_means": "workbench.core.heads.head_means",
    "profile_examples": "workbench.data.history.profile_examples",
    "sparsity_curve": "workbench.science.pcs.sparsity_curve",
    "trace_example": "workbench.science.tracing.trace_example",
    "steerx_description": "workbench.science.steerx.steerx_description",
    "caa_vectors": "workbench.science.caa.caa_vectors",
    "optimized_vector": "workbench.science.optimized.optimized_vector",
    "contrastive_pairs": "workbench.science.pairs.contrastive_pairs",
    "aggregate": "workbench.science.fints.aggregate",
    "fints_steer": "workbench.science.fints.fints_steer",
    "sample_vectors": "workbench.science.fints.sample_vectors",
}
