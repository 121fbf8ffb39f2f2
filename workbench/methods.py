"""Personalization methods as plug-ins for the benchmark runner.

A method has a ``name``, a per-user preparation step and a per-example generation step:

    class MyMethod(Method):
        name = "my-method"
        def prepare_user(self, model, user_id, examples):   # once per user (vectors, heads, ...)
            return state
        def generate(self, model, example, state) -> str:   # one output per example
            ...

Register it with ``@register_method`` and ``workbench bench --methods my-method`` runs it on
the same examples, with the same model and scoring, as every other method.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from workbench.model import Model
from workbench.prompts import build_prompt, first_line

METHODS: dict[str, Callable[..., "Method"]] = {}


def register_method(cls: type) -> type:
    """Class decorator: make a :class:`Method` subclass available by its ``name``."""
    METHODS[cls.name] = cls
    return cls


@dataclass
class GenerationSettings:
    """Decoding and prompt settings shared by all methods of one run (recorded with results)."""

    max_new_tokens: int = 32
    k: int = 5  # profile items in the prompt
    retrieval: str = "bm25"  # or "recency"


@dataclass
class Method:
    """Base class: generic generation from a prompt built by :func:`workbench.prompts.build_prompt`."""

    settings: GenerationSettings = field(default_factory=GenerationSettings)
    name = "method"
    uses_profile = False

    def prepare_run(self, model: Model, examples: list, dataset: Any) -> None:
        """Once per run, before any user: state shared by all users (e.g. preference heads)."""

    def prepare_user(self, model: Model, user_id: str, examples: list) -> Any:
        return None

    def prompt(self, model: Model, example: Any) -> tuple[Any, dict]:
        k = self.settings.k if self.uses_profile else 0
        return build_prompt(model, example, k=k, by=self.settings.retrieval,
                            reserve=self.settings.max_new_tokens)

    def generate(self, model: Model, example: Any, state: Any) -> tuple[str, dict]:
        """Return the output text and a dict of facts to store with it (e.g. truncation)."""
        prompt, info = self.prompt(model, example)
        text = model.generate(prompt, max_new_tokens=self.settings.max_new_tokens)
        return first_line(text), info

    def describe(self) -> dict:
        return {"name": self.name, **asdict(self.settings)}


@register_method
@dataclass
class Generic(Method):
    """The task input alone, no profile: the floor every personalization method must beat."""

    name = "generic"
    uses_profile = False


@register_method
@dataclass
class Rag(Method):
    """The user's top-k profile items (BM25 or recency) as earlier chat turns, then the input."""

    name = "rag"
    uses_profile = True

    def prepare_user(self, model: Model, user_id: str, examples: list) -> Any:
        for ex in examples:
            ex.require_profile()
        return None


# Modules that register more methods when imported (each method issue adds its own module).
_PLUGIN_MODULES = ("workbench.dps", "workbench.steerx", "workbench.fints", "workbench.combos")


def plugin_modules() -> list:
    """The method modules that are installed, imported (importing registers their methods)."""
    import importlib

    found = []
    for mod in _PLUGIN_MODULES:
        try:
            found.append(importlib.import_module(mod))
        except ModuleNotFoundError as e:
            if e.name != mod:  # the plug-in exists but something it needs is missing: say so
                raise
    return found


def _load_plugins() -> None:
    plugin_modules()


def available_methods() -> list[str]:
    """Names of every registered method (built-in and plug-in)."""
    _load_plugins()
    return sorted(METHODS)


def make_methods(names: list[str], settings: GenerationSettings) -> list[Method]:
    _load_plugins()
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; available: {sorted(METHODS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"method listed twice in {names}")
    return [METHODS[n](settings=settings) for n in names]
