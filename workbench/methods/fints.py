"""Fints methods: per-item vectors of a user, mixed per input and added while decoding.

``fints`` steers the input alone, ``fints+rag`` the ``rag`` prompt (the authors' main
setting), and ``caa-user`` the input alone with the plain mean of the user's item vectors
(the same vectors without input awareness).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from workbench._util import cache_file, cached, stable_hash
from workbench.science.fints import DEFAULT_LAYER, DEFAULT_SCALE, SampleVectors, aggregate, default_layer, picked, \
    sample_vectors
from workbench.core.hooks import HookSet
from workbench.methods import Check, Method, register_method
from workbench.core.model import Model
from workbench.science.pairs import contrastive_pairs
from workbench.core.steering import SITES, SteeringVector

# fints, fints+rag and caa-user need the same vectors of a user: computed once per process, and
# kept in the workbench cache for the next run (a tuning run and the evaluation after it, or
# the next Fints method) — a pair's vectors cost a forward pass over its prompt.
_VECTOR_MEMO: dict[str, SampleVectors] = {}
_MEMO_LIMIT = 256
VECTOR_FORMAT = 1  # bump when sample_vectors' numbers change (cache key)


def _cached_vectors(model: Model, pairs: Any, layer: int, attn_site: str, mlp_site: str, key: str,
                    prompt_caches: dict | None = None) -> SampleVectors:
    """``sample_vectors(model, pairs, ...)``, read from the cache when a run already built them;
    ``key`` hashes everything that determines them (model, dtype, device, layer, sites, the pairs
    with their prompts)."""
    return cached(cache_file("fints", model.name, f"vectors/{key}.pt"), lambda p: SampleVectors.load(p, model),
                  lambda: sample_vectors(model, pairs, layer, attn_site, mlp_site, prompt_caches=prompt_caches),
                  lambda vectors, p: vectors.save(p, overwrite=True))


@dataclass
class FintsMethod(Method):
    """Shared machinery: pairs and vectors once per user, a mix per example."""

    uses_profile = True
    rag: ClassVar[bool] = False
    layer: int | None = None  # None: default_layer(model)
    scale: float = DEFAULT_SCALE
    top_k: int = 5
    tau: float = 0.1
    weighting: str = "softmax"
    attn_site: str = "attn_out"
    mlp_site: str = "mlp_out"
    max_items: int = 8
    select: str = "query"
    n_others: int = 5
    threshold: float = 0.15
    seed: int = 0
    checks = {"scale": Check(), "top_k": Check(whole=True, minimum=1), "tau": Check(above=0),
              "weighting": Check(choices=("softmax", "uniform")), "attn_site": Check(choices=tuple(SITES)),
              "mlp_site": Check(choices=tuple(SITES)), "max_items": Check(whole=True, minimum=1),
              "select": Check(choices=("query", "recent")), "n_others": Check(whole=True, minimum=0),
              "threshold": Check(minimum=0, maximum=1), "seed": Check(whole=True)}

    def describe(self) -> dict:
        d = super().describe()
        d["rag_prompt"] = self.rag
        if self.layer is None:
            d["layer"] = f"default ({DEFAULT_LAYER} of 30)"
        return d

    def prompt(self, model: Model, example: Any) -> tuple[Any, dict]:
        from workbench.data.prompts import build_prompt

        return build_prompt(model, example, k=self.settings.k if self.rag else 0, by=self.settings.retrieval,
                            reserve=self.settings.max_new_tokens)

    def prepare_run(self, model: Model, examples: list, dataset: Any) -> None:
        # Other users' items for the negatives come from the whole dataset, also when the run
        # is cut to tuning or evaluation users (otherwise the same user's vectors would depend
        # on which side of the split the run was cut to).
        pool = getattr(dataset, "whole", dataset)
        self._others = list(pool) if pool is not None else list(examples)

    def prepare_user(self, model: Model, user_id: str, examples: list) -> SampleVectors:
        super().prepare_user(model, user_id, examples)
        others = getattr(self, "_others", None) or examples
        # A negative generated now leaves its prompt's KV cache here, and the vectors start from
        # it: the prompt (other users' items and the input) runs once for both steps.
        prompts: dict = {}
        pairs = contrastive_pairs(model, examples, others, max_items=self.max_items, select=self.select,
                                  n_others=self.n_others, threshold=self.threshold, seed=self.seed,
                                  keep_prompts=prompts)
        layer = default_layer(model) if self.layer is None else self.layer
        key = stable_hash([VECTOR_FORMAT, model.name, str(model.dtype), str(model.device), layer, self.attn_site,
                           self.mlp_site, pairs[["item_id", "text", "positive", "negative", "kept", "others",
                                                 "prompt"]].to_dict("records")], length=None)
        if key not in _VECTOR_MEMO:
            if len(_VECTOR_MEMO) > _MEMO_LIMIT:
                _VECTOR_MEMO.clear()
            _VECTOR_MEMO[key] = _cached_vectors(model, pairs, layer, self.attn_site, self.mlp_site, key, prompts)
        prompts.clear()
        return _VECTOR_MEMO[key]

    def mix(self, vectors: SampleVectors, example: Any) -> SteeringVector:
        """The steering vector for ``example`` from the user's item vectors."""
        return aggregate(vectors, example, k=self.top_k, tau=self.tau, weighting=self.weighting)

    def intervention(self, model: Model, example: Any, state: SampleVectors) -> tuple[HookSet | None, dict]:
        mine = state.for_example(example)
        if not len(mine):  # every pair filtered out: say so and write unsteered
            return None, {"fints_items": "", "fints_weights": "", "steered": False}
        mix = self.mix(mine, example)
        used = picked(mix)
        # one scale for both sites: the mix is applied like every other steering vector
        return mix.apply(model, scale=self.scale), {
            "fints_items": ";".join(used["item_id"].astype(str)),
            "fints_weights": ";".join(f"{w:.3f}" for w in used["weight"]), "steered": True}


@register_method
@dataclass
class Fints(FintsMethod):
    """The task input alone, steered by the user's input-aware Fints vectors."""

    name = "fints"
    rag = False


@register_method
@dataclass
class FintsRag(FintsMethod):
    """The ``rag`` prompt steered by Fints vectors (the authors' main setting)."""

    name = "fints+rag"
    rag = True


@register_method
@dataclass
class CaaUser(FintsMethod):
    """The task input alone, steered by the mean of the user's item vectors (no input awareness)."""

    name = "caa-user"
    rag = False

    def mix(self, vectors: SampleVectors, example: Any) -> SteeringVector:
        return vectors.user_mean()
