"""Combinations: a steering vector applied while decoding with DPS.

Steering (SteerX / CAA) moves the residual stream towards the user; DPS contrasts the
model with and without its preference heads at every step. They act on different things,
so they compose: the vector is added in both rows of DPS's batch (the intact and the
head-masked model), and the contrast is taken between the two *steered* models.

``steerx-caa+dps`` and its all-history twin ``caa-all+dps`` use exactly the settings of
``steerx-caa`` / ``caa-all`` (same vectors, read from the same cache) and of ``dps`` (same
heads, alpha, plausibility constraint), so each combination can be read against both of
its parts in one table.
"""

from __future__ import annotations

from dataclasses import dataclass

from workbench.methods import Combination, register_method


@register_method
@dataclass
class SteerxCaaDps(Combination):
    """The ``steerx-caa`` vector added while decoding with ``dps``."""

    name = "steerx-caa+dps"
    parts = ("steerx-caa", "dps")


@register_method
@dataclass
class CaaAllDps(Combination):
    """The ``caa-all`` vector added while decoding with ``dps`` (the all-history twin)."""

    name = "caa-all+dps"
    parts = ("caa-all", "dps")
