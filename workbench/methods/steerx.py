"""Steering methods: a per-user vector added while decoding.

Two backbones (:mod:`workbench.science.caa`, :mod:`workbench.science.optimized`) x two sources of the
user's preference — ALL of their history, or the SteerX description distilled from the
history tokens that cause their outputs (:mod:`workbench.science.steerx`):

=============  ===========  =============
               ALL history  SteerX
=============  ===========  =============
CAA            ``caa-all``  ``steerx-caa``
optimised      ``opt-all``  ``steerx-opt``
=============  ===========  =============

Each SteerX method and its all-history twin share every other setting (layer, site, scale,
articles or items), so the pair reads as a paired comparison of the source alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from workbench._util import cache_file, cached, stable_hash
from workbench.data.history import history_key, user_history
from workbench.core.hooks import HookSet
from workbench.methods import Method, register_method, unrecorded
from workbench.core.model import Model
from workbench.science.optimized import DEFAULT_RADIUS, DEFAULT_STEPS
from workbench.core.steering import SteeringVector
from workbench.science.steerx import DESCRIBE_PROMPT, PreferenceDescription, steerx_description


@dataclass
class SteeringMethod(Method):
    """Shared by the steering methods: a vector per user, applied while decoding."""

    uses_profile = True
    backbone: ClassVar[str] = ""
    source: ClassVar[str] = "all"
    layer: int | None = None  # None: the middle layer
    site: str = "resid_post"
    scale: float = 1.0  # 1 = the activation shift the context itself causes (caa) / the fitted vector (opt)
    on: str = "rag"  # the prompt steered: "rag" (history in context) or "generic"
    cache: bool = unrecorded(True)

    def __post_init__(self) -> None:
        if self.on not in ("rag", "generic"):
            raise ValueError(f"on={self.on!r}: use 'rag' (steer the prompt with the history) or 'generic'")

    def describe(self) -> dict:
        # backbone and source are fixed per method; recorded so a reader of run.json sees them
        return {**super().describe(), "backbone": self.backbone, "source": self.source}

    def resolved_layer(self, model: Model) -> int:
        return model.n_layers // 2 if self.layer is None else int(self.layer)

    def preference(self, model: Model, user_id: str, history: list[dict]) -> PreferenceDescription | None:
        """Where the preference comes from: None = all of the history (SteerX: a description)."""
        return None

    def build(self, model: Model, user_id: str, history: list[dict], articles: list[str],
              preference: PreferenceDescription | None, built: dict) -> SteeringVector:
        raise NotImplementedError

    def _vector_settings(self) -> dict:
        d = self.describe()
        for k in ("scale", "on", "name", "max_new_tokens", "k", "retrieval"):
            d.pop(k, None)
        return d

    def _vector_inputs(self, articles: list[str]) -> Any:
        return None  # what else, besides the history, the vector is built from

    def prepare_user(self, model: Model, user_id: str, examples: list) -> SteeringVector:
        from workbench.data.tasks import task_text

        history = user_history(examples)
        articles = [task_text(ex) for ex in examples]
        key = stable_hash([model.name, str(model.dtype), self.backbone, self.source, self._vector_settings(),
                           history_key(history), self._vector_inputs(articles)])
        path = cache_file("steerx", model.name, f"vectors/{self.name}-{user_id}-{key}.pt")

        def build() -> SteeringVector:
            pref = self.preference(model, user_id, history)
            built = {"user": user_id, "source": self.source, "method": self.name}
            if pref is not None:
                built["description"] = pref.description
            return self.build(model, user_id, history, articles, pref, built)

        return cached(path, lambda p: SteeringVector.load(p, model=model), build,
                      lambda vec, p: vec.save(p, overwrite=True), enabled=self.cache)

    def prompt(self, model: Model, example: Any) -> tuple[Any, dict]:
        """The prompt the vector steers (``on``: the rag prompt or the article alone)."""
        from workbench.data.prompts import build_prompt

        k = self.settings.k if self.on == "rag" else 0
        return build_prompt(model, example, k=k, by=self.settings.retrieval, reserve=self.settings.max_new_tokens)

    def intervention(self, model: Model, example: Any, state: SteeringVector) -> tuple[HookSet, dict]:
        info = {"vector_norm": state.norm, "layer": state.layer}
        if "description" in state.built:
            info["description"] = state.built["description"]
        return state.apply(model, scale=self.scale), info


@dataclass
class _Caa(SteeringMethod):
    backbone = "caa"
    n_articles: int = 4  # inputs averaged over
    max_history_tokens: int = 1536  # ALL-history context (most recent items that fit)

    def _vector_inputs(self, articles: list[str]) -> Any:
        return articles[: self.n_articles]

    def _context_history(self, model: Model, history: list[dict]) -> list[dict]:
        """The most recent history items whose turns fit in ``max_history_tokens``."""
        from workbench.data.prompts import headline_prompt

        kept: list[dict] = []
        for it in reversed(history):
            trial = [it] + kept
            if model.encode(headline_prompt(model, "x", trial)).shape[-1] > self.max_history_tokens and kept:
                break
            kept = trial
        return kept

    def build(self, model: Model, user_id: str, history: list[dict], articles: list[str],
              preference: PreferenceDescription | None, built: dict) -> SteeringVector:
        from workbench.science.caa import caa_vectors

        layer = self.resolved_layer(model)
        ctx = preference.description if preference is not None else self._context_history(model, history)
        return caa_vectors(model, ctx, articles[: self.n_articles], [layer], self.site, built=built)[layer]


@dataclass
class _Opt(SteeringMethod):
    backbone = "opt"
    opt_items: int = 8  # history items fitted
    opt_steps: int = DEFAULT_STEPS
    opt_radius: float = DEFAULT_RADIUS

    def build(self, model: Model, user_id: str, history: list[dict], articles: list[str],
              preference: PreferenceDescription | None, built: dict) -> SteeringVector:
        from workbench.science.optimized import optimized_vector

        desc = preference.description if preference is not None else None
        return optimized_vector(model, history[-self.opt_items:], self.resolved_layer(model), self.site,
                                description=desc, steps=self.opt_steps, radius=self.opt_radius, built=built)


@dataclass
class _FromDescription:
    """SteerX's source: the description distilled from the history's preference-driven tokens."""

    source = "steerx"
    n_traces: int = 2
    trace_k: int = 3
    trace_mode: str = "attn"
    top_k: int = 20
    contrast: bool = True
    describe_prompt: str = DESCRIBE_PROMPT

    def preference(self, model: Model, user_id: str, history: list[dict]) -> PreferenceDescription:
        return steerx_description(model, history, user_id, n_traces=self.n_traces, trace_k=self.trace_k,
                                  mode=self.trace_mode, contrast=self.contrast, top_k=self.top_k,
                                  prompt=self.describe_prompt, cache=self.cache)


@register_method
@dataclass
class CaaAll(_Caa):
    """CAA vector from the ALL-history context (chat turns) vs none, added while generating."""

    name = "caa-all"


@register_method
@dataclass
class SteerxCaa(_FromDescription, _Caa):
    """CAA vector from the SteerX description vs none (same articles, layer, site, scale as caa-all)."""

    name = "steerx-caa"


@register_method
@dataclass
class OptAll(_Opt):
    """Norm-bounded vector fitted to the user's history headlines (Adam), added while generating."""

    name = "opt-all"


@register_method
@dataclass
class SteerxOpt(_FromDescription, _Opt):
    """Norm-bounded vector fitted to reproduce the SteerX description's effect (same items as opt-all)."""

    name = "steerx-opt"
