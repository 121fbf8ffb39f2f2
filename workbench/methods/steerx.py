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
inputs or items), so the pair reads as a paired comparison of the source alone.

The science functions take task-neutral records (prompts, ``(prompt, target)`` pairs); the
methods build them from the user's task (:mod:`workbench.data.tasks`: its fields, its prompt,
its description context), so a new task needs a spec there, nothing here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from workbench._util import cache_file, cached, stable_hash
from workbench.data.history import history_key, item_fields, task_of, user_history
from workbench.core.hooks import HookSet
from workbench.methods import Check, Method, register_method, unrecorded
from workbench.core.model import Model
from workbench.science.optimized import DEFAULT_RADIUS, DEFAULT_STEPS
from workbench.core.steering import SITES, SteeringVector
from workbench.science.tracing import MODES
from workbench.science.steerx import PreferenceDescription, steerx_description


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
    checks = {"site": Check(choices=tuple(SITES)), "scale": Check(), "on": Check(choices=("rag", "generic"))}

    def __post_init__(self) -> None:
        if self.on not in ("rag", "generic"):
            raise ValueError(f"on={self.on!r}: use 'rag' (steer the prompt with the history) or 'generic'")

    def describe(self) -> dict:
        # backbone and source are fixed per method; recorded so a reader of run.json sees them
        return {**super().describe(), "backbone": self.backbone, "source": self.source}

    def resolved_layer(self, model: Model) -> int:
        return model.n_layers // 2 if self.layer is None else int(self.layer)

    def preference(self, model: Model, user_id: str, history: list[dict], task: str) -> PreferenceDescription | None:
        """Where the preference comes from: None = all of the history (SteerX: a description)."""
        return None

    def build(self, model: Model, task: str, history: list[dict], inputs: list[str],
              preference: PreferenceDescription | None, built: dict) -> SteeringVector:
        """The user's vector from their ``history`` items and new ``inputs`` (texts) of ``task``."""
        raise NotImplementedError

    def _vector_settings(self) -> dict:
        d = self.describe()
        for k in ("scale", "on", "name", "max_new_tokens", "k", "retrieval"):
            d.pop(k, None)
        return d

    def _vector_inputs(self, inputs: list[str]) -> Any:
        return None  # what else, besides the history, the vector is built from

    def prepare_user(self, model: Model, user_id: str, examples: list) -> SteeringVector:
        from workbench.data.tasks import steering_task, task_text

        task = task_of(examples)
        steering_task(task)
        history = user_history(examples)
        inputs = [task_text(ex) for ex in examples]
        key = stable_hash([model.name, str(model.dtype), task, self.backbone, self.source, self._vector_settings(),
                           history_key(history, task), self._vector_inputs(inputs)])
        path = cache_file("steerx", model.name, f"vectors/{self.name}-{user_id}-{key}.pt")

        def build() -> SteeringVector:
            pref = self.preference(model, user_id, history, task)
            built = {"user": user_id, "source": self.source, "method": self.name}
            if pref is not None:
                built["description"] = pref.description
            return self.build(model, task, history, inputs, pref, built)

        return cached(path, lambda p: SteeringVector.load(p, model=model), build,
                      lambda vec, p: vec.save(p, overwrite=True), enabled=self.cache)

    def prompt(self, model: Model, example: Any) -> tuple[Any, dict]:
        """The prompt the vector steers (``on``: the rag prompt or the input alone)."""
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
    n_articles: int = 4  # inputs averaged over (the name is older than tasks other than LaMP-4's articles)
    max_history_tokens: int = 1536  # ALL-history context (most recent items that fit)
    checks = {"n_articles": Check(whole=True, minimum=1), "max_history_tokens": Check(whole=True, minimum=1)}

    def _vector_inputs(self, inputs: list[str]) -> Any:
        return inputs[: self.n_articles]

    def _context_history(self, model: Model, task: str, history: list[dict]) -> list[dict]:
        """The most recent history items whose turns fit in ``max_history_tokens``."""
        from workbench.data.prompts import task_prompt

        kept: list[dict] = []
        for it in reversed(history):
            trial = [it] + kept
            if model.encode(task_prompt(model, task, "x", trial)).shape[-1] > self.max_history_tokens and kept:
                break
            kept = trial
        return kept

    def build(self, model: Model, task: str, history: list[dict], inputs: list[str],
              preference: PreferenceDescription | None, built: dict) -> SteeringVector:
        from workbench.data.prompts import preference_prompt, task_prompt
        from workbench.science.caa import caa_vectors

        layer = self.resolved_layer(model)
        if preference is not None:
            ctx = preference.description
            built = {"preference": preference.description, **built}
        else:
            ctx = self._context_history(model, task, history)
            built = {"preference": f"{len(ctx)} history items", **built}
        inputs = [x for x in inputs[: self.n_articles] if x]
        if not inputs:
            raise ValueError("the user's queries have no input text to average activations over")
        positive = [preference_prompt(model, task, ctx, x) for x in inputs]
        negative = [task_prompt(model, task, x) for x in inputs]
        return caa_vectors(model, positive, negative, [layer], self.site, built=built)[layer]


@dataclass
class _Opt(SteeringMethod):
    backbone = "opt"
    opt_items: int = 8  # history items fitted
    opt_steps: int = DEFAULT_STEPS
    opt_radius: float = DEFAULT_RADIUS
    checks = {"opt_items": Check(whole=True, minimum=1), "opt_steps": Check(whole=True, minimum=1),
              "opt_radius": Check(above=0)}

    def build(self, model: Model, task: str, history: list[dict], inputs: list[str],
              preference: PreferenceDescription | None, built: dict) -> SteeringVector:
        from workbench.data.prompts import preference_prompt, task_prompt
        from workbench.science.optimized import optimized_vector

        source, target = item_fields(task)
        items = history[-self.opt_items:]  # user_history keeps only usable items
        records = [(task_prompt(model, task, it[source]), it[target]) for it in items]
        teacher = None
        if preference is not None:
            teacher = [preference_prompt(model, task, preference.description, it[source]) for it in items]
        return optimized_vector(model, records, self.resolved_layer(model), self.site, teacher=teacher,
                                steps=self.opt_steps, radius=self.opt_radius, built=built)


@dataclass
class _FromDescription:
    """SteerX's source: the description distilled from the history's preference-driven tokens."""

    source = "steerx"
    n_traces: int = 2
    trace_k: int = 3
    trace_mode: str = "attn"
    top_k: int = 20
    contrast: bool = True
    describe_prompt: str | None = None  # None: the task's (workbench.data.tasks.TaskSpec.describe_prompt)
    checks = {"n_traces": Check(whole=True, minimum=1), "trace_k": Check(whole=True, minimum=1),
              "top_k": Check(whole=True, minimum=1), "trace_mode": Check(choices=MODES)}

    def describe(self) -> dict:
        d = super().describe()  # type: ignore[misc]
        if self.describe_prompt is None:
            d["describe_prompt"] = "default (the task's describe_prompt)"
        return d

    def preference(self, model: Model, user_id: str, history: list[dict], task: str) -> PreferenceDescription:
        return steerx_description(model, history, user_id, task=task, n_traces=self.n_traces, trace_k=self.trace_k,
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
    """CAA vector from the SteerX description vs none (same inputs, layer, site, scale as caa-all)."""

    name = "steerx-caa"


@register_method
@dataclass
class OptAll(_Opt):
    """Norm-bounded vector fitted to the user's history outputs (Adam), added while generating."""

    name = "opt-all"


@register_method
@dataclass
class SteerxOpt(_FromDescription, _Opt):
    """Norm-bounded vector fitted to reproduce the SteerX description's effect (same items as opt-all)."""

    name = "steerx-opt"
