"""workbench: explain and steer how language models personalize their output to one user.

The public API is small:

- :func:`load_model` -> :class:`Model` (a TransformerLens ``TransformerBridge`` + tokenizer)
- :func:`mask_heads` -> :class:`HeadMask` (context manager / hook list)
- :func:`steer` -> :class:`Steer` (context manager / hook list)
- :func:`available_models` (what loads offline here)
"""

from workbench.heads import HeadMask, head_means, mask_heads
from workbench.loading import DEFAULT_MODEL, ModelNotAvailableError, available_models, load_hf, load_model
from workbench.model import Model
from workbench.steering import Steer, steer

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "HeadMask",
    "Model",
    "ModelNotAvailableError",
    "Steer",
    "available_models",
    "head_means",
    "load_hf",
    "load_model",
    "mask_heads",
    "steer",
]
