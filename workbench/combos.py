"""Methods that combine two others: a steering vector applied while decoding with DPS.

Steering (SteerX / CAA) moves the residual stream towards the user; DPS contrasts the
model with and without its preference heads at every step. They act on different
things, so they compose: the vector is added in both rows of DPS's batch (the intact and
the head-masked model), and the contrast is taken between the two *steered* models.

``steerx-caa+dps`` and its all-history twin ``caa-all+dps`` use exactly the settings of
``steerx-caa`` / ``caa-all`` (same vectors, read from the same cache) and of ``dps`` (same
heads, alpha, plausibility constraint), so each combination can be read against both of
its parts in one table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from workbench.methods import METHODS, Method, _load_plugins, register_method
from workbench.model import Model


@dataclass
class _SteerWithDps(Method):
    uses_profile = True
    steering = "steerx-caa"
    heads_file: str | None = None  # saved PreferenceScores to take the heads from (default: as ``dps``)

    def __post_init__(self) -> None:
        _load_plugins()
        self._steer = METHODS[self.steering](settings=self.settings)
        self._dps = METHODS["dps"](settings=self.settings, heads_file=self.heads_file)

    def describe(self) -> dict:
        inner = lambda m: {k: v for k, v in m.describe().items() if k not in ("max_new_tokens", "k", "retrieval")}
        return {**super().describe(), "steering": inner(self._steer), "decoding": inner(self._dps)}

    def prepare_run(self, model: Model, examples: list, dataset: Any) -> None:
        self._steer.prepare_run(model, examples, dataset)
        self._dps.prepare_run(model, examples, dataset)

    def prepare_user(self, model: Model, user_id: str, examples: list) -> Any:
        return self._steer.prepare_user(model, user_id, examples)

    def generate(self, model: Model, example: Any, state: Any) -> tuple[str, dict]:
        from workbench.prompts import first_line

        prompt, info = self._steer.steered_prompt(model, example)
        with state.apply(model, scale=self._steer._scale()):
            text = self._dps.decode(model, prompt)
        return first_line(text), {**info, **self._steer.vector_info(state), "heads": self._dps.heads_label}


@register_method
@dataclass
class SteerxCaaDps(_SteerWithDps):
    """The ``steerx-caa`` vector added while decoding with ``dps``."""

    name = "steerx-caa+dps"
    steering = "steerx-caa"


@register_method
@dataclass
class CaaAllDps(_SteerWithDps):
    """The ``caa-all`` vector added while decoding with ``dps`` (the all-history twin)."""

    name = "caa-all+dps"
    steering = "caa-all"
