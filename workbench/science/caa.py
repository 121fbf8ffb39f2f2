"""Contrastive activation addition (CAA): a steering vector from a preference context.

The vector at a layer/site is the mean activation over a new input's tokens (its last user
turn and the assistant header) *with* the preference context minus *without* it. The
preference is a description (SteerX, shown as the system message) or the user's history
items (the ALL-history baseline, shown as earlier chat turns like ``rag``). Reading uses the
site table of :mod:`workbench.core.steering`, so adding the vector at the site moves the
activation by exactly the measured difference.
"""

from __future__ import annotations

import numbers
from typing import Any, Sequence

import torch

from workbench._util import last_positions_hook, truncate_kv_cache
from workbench.core.model import Model
from workbench.core.steering import SITES, SteeringVector, check_site, read_site

DESCRIPTION_CONTEXT = "You are writing news headlines for one particular user. {description}"
"""How a description is shown to the model (as the system message) for CAA and steerx-opt."""


def preference_context(model: Model, preference: "str | Sequence[dict]", article: str) -> Any:
    """The prompt for ``article`` with a preference context: a description (``str``, shown as
    the system message) or history items (shown as earlier chat turns, like ``rag``)."""
    from workbench.data.prompts import headline_prompt

    if isinstance(preference, str):
        context = DESCRIPTION_CONTEXT.format(description=preference)
        if model.has_chat_template:
            return [{"role": "system", "content": context}] + headline_prompt(model, article)
        return f"{context}\n\n" + headline_prompt(model, article)
    return headline_prompt(model, article, list(preference))


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
    the longest prefix all sequences share is run once and its KV cache reused."""
    names = {L: SITES[site].read_hooks(L) for L in layers}
    shared = min(s.shape[-1] for s in seqs)
    for s in seqs[1:]:
        eq = (s[0, :shared] == seqs[0][0, :shared]).int()
        shared = int(eq.cumprod(0).sum())
    shared = min(shared, min(s.shape[-1] - m for s, m in zip(seqs, suffix_lens)))
    cache = None
    if shared > 0:
        _, cache = model.bridge(seqs[0][:, :shared], return_type="logits_and_cache")
    sums = {L: torch.zeros(model.d_model, dtype=torch.float32, device=model.device) for L in layers}
    for s, m in zip(seqs, suffix_lens):
        got: dict[str, torch.Tensor] = {}

        # Stored under the name asked for: the bridge's hook.name is the canonical one, not the alias.
        def keep(name: str, m: int = m):
            def fn(x: torch.Tensor, hook: Any) -> None:
                got[name] = x[0, -m:].float()
            return fn

        wanted = sorted({n for L in layers for n in names[L]})
        hooks = [(n, keep(n)) for n in wanted] + [last_positions_hook(model.n_layers, s.shape[-1] - shared - 1, 1)]
        if cache is not None:
            model.bridge.run_with_hooks(s[:, shared:], past_key_values=cache, fwd_hooks=hooks)
            truncate_kv_cache(cache, shared)
        else:
            model.bridge.run_with_hooks(s, fwd_hooks=hooks)
        for L in layers:
            sums[L] += read_site(got, site, L).mean(0)
    return {L: v / len(seqs) for L, v in sums.items()}


def caa_vectors(model: Model, preference: "str | Sequence[dict]", articles: Sequence[str], layers: Sequence[int],
                site: str = "resid_post", built: dict | None = None) -> dict[int, SteeringVector]:
    """CAA vectors at several layers: mean activation over the new input's tokens (the last
    user turn and the assistant header) with the preference context, minus without it.

    ``preference``: a description (str) or the history items (ALL-history baseline).
    ``articles``: the inputs to average over (e.g. the user's new articles).
    """
    if isinstance(layers, (numbers.Integral, str)):
        raise ValueError(f"layers={layers!r}: give a list of layers, e.g. [{layers}]")
    layers = list(layers)
    check_site(model, layers, site)
    articles = [a for a in articles if a]
    if not articles:
        raise ValueError("no articles to average activations over")
    from workbench.data.prompts import headline_prompt

    pos, neg, m = [], [], []
    for a in articles:
        p = encode_prompt(model, preference_context(model, preference, a))
        q = model.encode(headline_prompt(model, a))
        model.check_fits(p.shape[-1], what="preference context plus article")
        k = _common_suffix(p, q)
        if k == 0:
            raise ValueError("the prompts with and without the preference share no final tokens; "
                             "CAA needs the same input after the context")
        pos.append(p)
        neg.append(q)
        m.append(k)
    mp = _suffix_means(model, pos, m, layers, site)
    mn = _suffix_means(model, neg, m, layers, site)
    info = {"method": "caa", "site": site, "n_articles": len(articles),
            "preference": preference if isinstance(preference, str) else f"{len(preference)} history items",
            **(built or {})}
    return {L: SteeringVector.at((mp[L] - mn[L]).to(model.dtype), L, site, model.name, {**info, "layer": L})
            for L in layers}
