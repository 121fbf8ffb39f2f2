"""workbench: explain and steer how language models personalize their output to one user.

The public API is small:

- :func:`load_model` -> :class:`Model` (a TransformerLens ``TransformerBridge`` + tokenizer)
- :func:`mask_heads` -> :class:`HeadMask` (context manager / hook list)
- :func:`steer` -> :class:`Steer` (context manager / hook list); :class:`SteeringVector`
  (vectors per layer and site: save, load, ``apply``)
- :func:`available_models` (what loads offline here)
- :func:`preference_scores` -> :class:`PreferenceScores` (PCS of every head; :func:`profile_examples`)
- :func:`dps_generate` (Differential Preference Steering decoding)
- :func:`trace_tokens` -> :class:`TokenEffects` (token causal effects); SteerX descriptions in
  :mod:`workbench.steerx`, its backbones :func:`caa_vectors` and :func:`optimized_vector`
- :func:`fints_steer` and the rest of Fints in :mod:`workbench.fints` (pairs in :mod:`workbench.pairs`)
- methods for the benchmark runner in :mod:`workbench.methods` (one pipeline: prompt ->
  intervention -> decoder); the package layout is described in ``ARCHITECTURE.md``
"""

from workbench.heads import HeadMask, head_means, mask_heads
from workbench.loading import DEFAULT_MODEL, ModelNotAvailableError, available_models, load_hf, load_model
from workbench.model import Model
from workbench.steering import Steer, SteeringVector, steer
from workbench.hooks import HookSet
from workbench.history import profile_examples
from workbench.pcs import PreferenceScores, preference_scores, sparsity_curve
from workbench.dps import dps_generate
from workbench.tracing import TokenEffects, trace_example, trace_tokens
from workbench.steerx import steerx_description
from workbench.caa import caa_vectors
from workbench.optimized import optimized_vector
from workbench.pairs import contrastive_pairs
from workbench.fints import aggregate, fints_steer, sample_vectors

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "HeadMask",
    "HookSet",
    "Model",
    "SteeringVector",
    "TokenEffects",
    "aggregate",
    "caa_vectors",
    "contrastive_pairs",
    "fints_steer",
    "optimized_vector",
    "sample_vectors",
    "steerx_description",
    "trace_example",
    "trace_tokens",
    "PreferenceScores",
    "ModelNotAvailableError",
    "Steer",
    "available_models",
    "dps_generate",
    "head_means",
    "load_hf",
    "load_model",
    "mask_heads",
    "preference_scores",
    "profile_examples",
    "sparsity_curve",
    "steer",
]
