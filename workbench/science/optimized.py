"""Optimised steering vectors: a norm-bounded vector fitted with a few Adam steps.

The records are ``(prompt, target)`` pairs (e.g. a user's earlier inputs, as the task's
prompt, and the outputs they wrote). Two objectives (SteerX's second backbone): the
likelihood of the targets given the prompts (ALL-history), or — with ``teacher`` prompts,
the same inputs with a context such as a preference description — the distribution of the
model that reads the teacher prompt (context distillation: the vector learns what the
context does). The vector is projected onto a ball of ``radius`` x the typical residual norm.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from workbench.core._reuse import run_from_layer
from workbench.core.hooks import target_positions_hook
from workbench._util import check_int, check_number, frozen_parameters, pad_right
from workbench.science.caa import encode_prompt
from workbench.core.model import Model
from workbench.core.steering import SITES, SteeringVector, check_site, read_site

DEFAULT_RADIUS = 0.25
"""x the median residual norm; 0.5 garbled the outputs on SmolLM2 (LaMP-4, 3-query smoke run)."""

DEFAULT_STEPS = 12

# The first token's residual norm is an outlier (attention sink): leave it out of the median.
_SKIP_FIRST = 1
# A small random start, relative to the bound, breaks the symmetry of a zero vector.
_INIT_SCALE = 1e-3
# Adam's step relative to bound / sqrt(d_model): about a third of the ball's per-coordinate size.
_LR_SCALE = 0.3
# Padding a group of records may cost at most this share of its real tokens (_length_chunks).
_PAD_WASTE = 0.1


def optimized_vector(model: Model, records: Sequence[tuple[Any, str]], layer: int, site: str = "resid_post", *,
                     teacher: Sequence[Any] | None = None, steps: int = DEFAULT_STEPS, radius: float = DEFAULT_RADIUS,
                     lr: float | None = None, seed: int = 0, built: dict | None = None) -> SteeringVector:
    """A vector at ``layer``/``site`` fitted with Adam to ``records``, ``(prompt, target)`` pairs.

    Without ``teacher`` (ALL-history): maximise the mean log-likelihood of each target given
    its prompt (steered). With ``teacher`` (SteerX: one prompt per record, the same input with
    the description as context): on the same target tokens, minimise KL(model reading the
    teacher prompt || steered model reading the record's prompt) — the vector learns what the
    context does. After each step the vector is projected onto the ball of radius ``radius`` x
    the median residual-stream norm at that layer. Records of similar length are right-padded
    into one batch (:func:`_length_chunks`); padding follows the real tokens so it never affects
    them under causal attention, and the loss is the same mean however the records are grouped.
    """
    check_site(model, [layer], site)
    records = list(records)
    if not records:
        raise ValueError("no (prompt, target) records to fit the vector to")
    if any(not isinstance(r, tuple) or len(r) != 2 or not isinstance(r[1], str) or not r[1].strip() for r in records):
        raise ValueError("records must be (prompt, target) pairs with a non-empty target text, e.g. "
                         "[(task_prompt(model, task, item_input), item_output), ...]")
    if teacher is not None and (isinstance(teacher, str) or len(teacher) != len(records)):
        raise ValueError(f"teacher must be a list of prompts, one per record ({len(records)}); "
                         "e.g. [preference_prompt(model, task, description, item_input), ...]")
    check_int("steps", steps, minimum=1)
    check_number("radius", radius, above=0)
    if lr is not None:
        check_number("lr", lr, above=0)
    bridge = model.bridge
    seqs, spans = [], []
    for prompt, target in records:
        ids, start = model.prompt_and_target(prompt, target)
        seqs.append(ids)
        spans.append((start, ids.shape[-1]))
    n_targets = sum(e - s for s, e in spans)
    chunks = _length_chunks([e for _, e in spans])
    pad = int(model.tokenizer.pad_token_id or 0)
    batches = [pad_right([seqs[i] for i in chunk], pad) for chunk in chunks]
    targets = [torch.cat([seqs[i][0, spans[i][0]:spans[i][1]] for i in chunk]) for chunk in chunks]
    got: dict[str, torch.Tensor] = {}

    def store(name: str):
        def fn(x: torch.Tensor, hook: Any) -> None:
            got[name] = x.detach()
        return fn

    # run_with_hooks, not run_with_cache: TL 4.3's run_with_cache leaves torch hook handles
    # behind. Nothing above the layer read is needed.
    reads = [(name, store(name)) for name in SITES[site].read_hooks(layer)]
    stop = {"stop_at_layer": layer + 1} if layer + 1 < model.n_layers else {}
    acts, norms = [], []
    with torch.no_grad():
        for chunk, batch in zip(chunks, batches):
            bridge.run_with_hooks(batch, fwd_hooks=reads, **stop)
            a = read_site(got, site, layer).to(model.dtype)
            acts.append(a)
            for row, i in enumerate(chunk):
                norms.append(a[row, _SKIP_FIRST:spans[i][1]].float().norm(dim=-1))
        typical = float(torch.cat(norms).median())
        if teacher is not None:
            taught = []
            for context, (_, target) in zip(teacher, records):
                ctx = encode_prompt(model, context)
                t = model.tokenizer(target, add_special_tokens=False, return_tensors="pt").input_ids.to(model.device)
                full = torch.cat([ctx, t], dim=1)
                c0 = ctx.shape[-1]
                taught.append(bridge(full)[0, c0 - 1:full.shape[-1] - 1].float().log_softmax(-1))
            teach = [torch.cat([taught[i] for i in chunk]) for chunk in chunks]
    bound = radius * typical
    if lr is None:
        lr = _LR_SCALE * bound / math.sqrt(model.d_model)
    g = torch.Generator().manual_seed(seed)
    v = (_INIT_SCALE * bound * torch.randn(model.d_model, generator=g) / math.sqrt(model.d_model)).to(model.device)
    v = v.float().requires_grad_(True)
    opt = torch.optim.Adam([v], lr=lr)
    hook_name = SITES[site].write_hook(layer)
    # The vector cannot change anything below where it is added, so for residual-stream sites
    # the stream entering the next block is computed once and each step runs only the blocks
    # above (about half the forward and backward work at the middle layer).
    start = {"resid_pre": layer, "resid_post": layer + 1}.get(site)
    reuse = start is not None and start < model.n_layers
    # Only the positions that predict a target token go through the vocabulary projection.
    keep = [target_positions_hook([spans[i] for i in chunk], model.device) for chunk in chunks]
    losses = []

    def add(x: torch.Tensor, hook: Any) -> torch.Tensor:
        return x + v.to(x.dtype)

    with frozen_parameters(bridge):
        for _ in range(steps):
            opt.zero_grad()
            total = 0.0
            # The loss is a mean over every record's target tokens; each chunk adds its share
            # (its tokens' sum / all tokens) and its gradient, so no chunk waits for another.
            for c, batch in enumerate(batches):
                only, rows, slots = keep[c]
                with torch.enable_grad():
                    if reuse:
                        logits = run_from_layer(bridge, acts[c] + v.to(acts[c].dtype), start, fwd_hooks=[only])
                    else:
                        logits = bridge.run_with_hooks(batch, fwd_hooks=[(hook_name, add), only])
                    lp = logits[rows, slots].float().log_softmax(-1)
                    if teacher is None:
                        loss = -lp.gather(-1, targets[c][:, None]).sum() / n_targets
                    else:
                        loss = (teach[c].exp() * (teach[c] - lp)).sum() / n_targets
                    loss.backward()
                total += float(loss.detach())
            opt.step()
            with torch.no_grad():
                n = v.norm()
                if n > bound:
                    v.mul_(bound / n)
            losses.append(round(total, 4))
    info = {"method": "opt", "target": "teacher KL" if teacher is not None else "target likelihood",
            "steps": steps, "radius": radius, "lr": lr, "typical_norm": round(typical, 3), "n_items": len(records),
            "losses": losses, "layer": layer, **(built or {})}
    return SteeringVector.at(v.detach().to(model.dtype), layer, site, model.name, info)


def _length_chunks(lengths: Sequence[int], waste: float | None = None) -> list[list[int]]:
    """Record indices in groups of similar length (shortest first), each group padded to its
    longest record wasting at most ``waste`` of its tokens. One right-padded batch of all records
    spends ~30% of a LaMP-5 fit on padding (abstracts of 150-400 tokens); on a CPU, a batch is no
    faster per token than its rows one by one, so the groups cost only the tokens they hold."""
    waste = _PAD_WASTE if waste is None else waste
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    chunks: list[list[int]] = []
    real = 0
    for i in order:
        n = lengths[i]
        if chunks and (len(chunks[-1]) + 1) * n <= (1 + waste) * (real + n):
            chunks[-1].append(i)
            real += n
        else:
            chunks.append([i])
            real = n
    return chunks
