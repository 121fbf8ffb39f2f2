"""Contrastive activation addition (CAA): a steering vector from a contrast of prompts.

The vector at a layer/site is the mean activation over the tokens that end each *positive*
prompt (the same input with a preference context) minus the same tokens of its *negative*
(the input without it): the tokens both prompts end with, e.g. a new input's last user turn
and the assistant header. Which context is the preference — a description shown as the
system message (SteerX) or the user's history items shown as earlier turns (the ALL-history
baseline) — is the caller's: :func:`workbench.data.prompts.preference_prompt` builds both
from a task's spec. Reading uses the site table of :mod:`workbench.core.steering`, so adding
the vector at the site moves the activation by exactly the measured difference.
"""

from __future__ import annotations

import numbers
from typing import Any, Sequence

import torch

from workbench._util import truncate_kv_cache
from workbench.core._reuse import prefix_cache
from workbench.core.hooks import last_positions_hook
from workbench.core.model import Model
from workbench.core.steering import SITES, SteeringVector, check_site, read_site

def encode_prompt(model: Model, prompt: Any) -> torch.Tensor:
    """Token ids of ``prompt``; a leading system message (a description) is kept as the system turn."""
    if isinstance(prompt, list) and prompt and prompt[0].get("role") == "system":
        text = model.format_chat(prompt[1:], system=prompt[0]["content"])
        return model.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids.to(model.device)
    return model.encode(prompt)


def _common_suffix(a: torch.Tensor, b: torch.Tensor) -> int:
    n = min(a.shape[-1], b.shape[-1]) - 1  # never the first token
    m = 0
    while m < n and int(a[0, -1 - m]) == int(b[0, -1 - m]):
        m += 1
    return m


@torch.no_grad()
def _suffix_means(model: Model, seqs: list[torch.Tensor], suffix_lens: list[int], layers: Sequence[int],
                  site: str) -> dict[int, torch.Tensor]:
    """Mean activation over the last ``suffix_lens[i]`` positions of each sequence, per layer;
    the longest prefix all sequences share is run once and its KV cache reused. Nothing above
    the deepest layer read runs (no logits)."""
    names = {L: SITES[site].read_hooks(L) for L in layers}
    stop = max(layers) + 1
    depth = {"stop_at_layer": stop} if stop < model.n_layers else {}
    shared = min(s.shape[-1] for s in seqs)
    for s in seqs[1:]:
        eq = (s[0, :shared] == seqs[0][0, :shared]).int()
        shared = int(eq.cumprod(0).sum())
    shared = min(shared, min(s.shape[-1] - m for s, m in zip(seqs, suffix_lens)))
    cache = prefix_cache(model, seqs[0][:, :shared], stop) if shared > 0 else None
    sums = {L: torch.zeros(model.d_model, dtype=torch.float32, device=model.device) for L in layers}
    for s, m in zip(seqs, suffix_lens):
        got: dict[str, torch.Tensor] = {}

        # Stored under the name asked for: the bridge's hook.name is the canonical one, not the alias.
        def keep(name: str, m: int = m):
            def fn(x: torch.Tensor, hook: Any) -> None:
                got[name] = x[0, -m:].float()
            return fn

        wanted = sorted({n for L in layers for n in names[L]})
        hooks = [(n, keep(n)) for n in wanted]
        if not depth:  # the last layer is read: the unembedding runs, on one position
            hooks.append(last_positions_hook(model.n_layers, s.shape[-1] - shared - 1, 1))
        if cache is not None:
            model.bridge.run_with_hooks(s[:, shared:], past_key_values=cache, fwd_hooks=hooks, **depth)
            truncate_kv_cache(cache, shared)
        else:
            model.bridge.run_with_hooks(s, fwd_hooks=hooks, **depth)
        for L in layers:
            sums[L] += read_site(got, site, L).mean(0)
    return {L: v / len(seqs) for L, v in sums.items()}


def caa_vectors(model: Model, positive: Sequence[Any], negative: Sequence[Any], layers: Sequence[int],
                site: str = "resid_post", built: dict | None = None) -> dict[int, SteeringVector]:
    """CAA vectors at several layers: the mean activation over the tokens each ``positive``
    prompt shares at its end with its ``negative`` (the input after the context), minus the same
    over the ``negative`` prompts.

    ``positive``, ``negative``: equally long lists of prompts (text or chat messages; a leading
    system message is kept as the system turn), pair ``i`` the same input with and without
    the preference context, e.g. from :func:`workbench.data.prompts.preference_prompt` and
    :func:`workbench.data.prompts.task_prompt`. ``built``: recorded on the vectors.
    """
    if isinstance(layers, (numbers.Integral, str)):
        raise ValueError(f"layers={layers!r}: give a list of layers, e.g. [{layers}]")
    for name, prompts in (("positive", positive), ("negative", negative)):
        if isinstance(prompts, (str, dict)) or not isinstance(prompts, Sequence):
            raise ValueError(f"{name} must be a list of prompts (text or chat messages), one per input; "
                             "build them with workbench.data.prompts.preference_prompt and task_prompt")
    if len(positive) != len(negative):
        raise ValueError(f"{len(positive)} positive but {len(negative)} negative prompts; give one pair per input")
    if not positive:
        raise ValueError("no prompt pairs to average activations over")
    layers = list(layers)
    check_site(model, layers, site)
    pos, neg, m = [], [], []
    for a, b in zip(positive, negative):
        p = encode_prompt(model, a)
        q = encode_prompt(model, b)
        model.check_fits(p.shape[-1], what="prompt with the preference context")
        k = _common_suffix(p, q)
        if k == 0:
            raise ValueError("the prompts with and without the preference share no final tokens; "
                             "CAA needs the same input after the context")
        pos.append(p)
        neg.append(q)
        m.append(k)
    mp = _suffix_means(model, pos, m, layers, site)
    mn = _suffix_means(model, neg, m, layers, site)
    info = {"method": "caa", "site": site, "n_inputs": len(pos), **(built or {})}
    return {L: SteeringVector.at((mp[L] - mn[L]).to(model.dtype), L, site, model.name, {**info, "layer": L})
            for L in layers}
