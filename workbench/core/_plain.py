"""A hook-free view of a bridged model, for generation with no intervention.

TransformerBridge wraps every Hugging Face module in a bridge component with hook points;
with no hook attached those are identities, but they still cost Python calls on every
decoding step (about a third of a small model's step on CPU). When nothing is hooked, the
same weights can run through the original Hugging Face modules instead: the view built here
is the original module tree with each bridge replaced by the module it wraps. Containers are
shallow copies (new ``_modules`` only); parameters and buffers are the same tensors, so the
view costs no memory and follows any in-place change to the weights.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

_ORIGINAL = "_original_component"  # where a TransformerBridge component keeps the module it wraps


def unbridged(original_model: Any) -> Any | None:
    """The original Hugging Face model with every bridge component replaced by what it wraps,
    or None when that can't be built (a bridge not backed by Hugging Face modules)."""
    config = getattr(original_model, "config", None)
    if config is None or not hasattr(original_model, "generate"):
        return None
    # The bridge runs attention eagerly (it exposes the pattern); the view may use SDPA, as a
    # plain Hugging Face load does. Its own config copy keeps the bridge's untouched.
    view_config = copy.deepcopy(config)
    if getattr(config, "_attn_implementation", None) == "eager" and getattr(original_model, "_supports_sdpa", False):
        view_config._attn_implementation = "sdpa"

    def rebuild(mod: Any) -> Any:
        inner = mod._modules.get(_ORIGINAL)
        if inner is not None:
            mod = inner
        children = {name: rebuild(c) for name, c in mod._modules.items() if c is not None}
        uses_config = getattr(mod, "config", None) is config
        if not uses_config and all(children[n] is c for n, c in mod._modules.items() if c is not None):
            return mod
        new = copy.copy(mod)  # shares _parameters, _buffers and the hook dicts with mod
        new.__dict__["_modules"] = {**mod._modules, **children}
        if uses_config:
            new.__dict__["config"] = view_config
        return new

    try:
        view = rebuild(original_model)
    except Exception:  # noqa: BLE001 - an unusual module tree: keep the bridge path
        return None
    if any(_ORIGINAL in m._modules or type(m).__name__.endswith("Bridge") for m in view.modules()):
        return None
    if any("forward" in m.__dict__ for m in view.modules()):
        # a forward replaced on the instance (accelerate's device_map hooks) is bound to the
        # original module, which would run the bridged children anyway
        return None
    from transformers import GenerationConfig

    # Its own generation defaults: the checkpoint's (e.g. a repetition penalty) must not
    # change greedy decoding relative to the bridge path, which ignores them.
    gen = GenerationConfig()
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(gen, key, getattr(getattr(original_model, "generation_config", None), key, None))
    view.__dict__["generation_config"] = gen
    return view


def hooked_modules(bridge: Any, view: Any) -> tuple[list[torch.nn.Module], list[torch.nn.Module]]:
    """The modules the view bypasses, split into hook points and the rest (bridge wrappers).
    A hook on a module the view runs fires on either path, so it needs no check; that holds for
    the containers the view copied too, whose copies share the original's hook dicts."""
    from transformer_lens.hook_points import HookPoint

    shared = {id(m._forward_hooks) for m in view.modules()}
    bypassed = {id(m): m for m in bridge.modules() if id(m._forward_hooks) not in shared}
    points = [m for m in bypassed.values() if isinstance(m, HookPoint)]
    return points, [m for m in bypassed.values() if not isinstance(m, HookPoint)]


def any_hooks(points: list[torch.nn.Module], wrappers: list[torch.nn.Module], owned: set = frozenset()) -> bool:
    """True when running the view would skip a hook: one on a hook point, one of the user's on
    a bridge wrapper, or a global module hook. TransformerLens wires hooks of its own on some
    wrappers (to feed its hook points); those don't count, nor do the hooks in ``owned``
    (``(id(hook dict), key)`` pairs: those of fast-path interventions, which run on the view)."""
    from torch.nn.modules import module as nn_module

    if nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks:
        return True
    for m in points:
        for hooks in (m._forward_hooks, m._forward_pre_hooks):
            if any((id(hooks), key) not in owned for key in hooks):
                return True
    return any(not _from_transformer_lens(f) and (id(hooks), key) not in owned for m in wrappers
               for hooks in (m._forward_hooks, m._forward_pre_hooks) for key, f in hooks.items())


def _from_transformer_lens(fn: Any) -> bool:
    fn = getattr(fn, "func", fn)  # functools.partial
    return str(getattr(fn, "__module__", "")).startswith("transformer_lens.model_bridge")
