"""Greedy decoding of a batch of rows on the hook-free view, finished rows dropped as they finish.

A batch decodes until its last row finishes; a row that has finished (a stop token, or its stop
rule) would otherwise go on costing a row of every later step. Serving stacks drop such rows
from the batch; so does this loop: the KV cache, the attention mask and the position ids keep
only the live rows, and :class:`LiveRows` tells the interventions of the batch which of its
rows are still there (an intervention's rows are numbered as in the batch it was given).
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Sequence

import torch


def left_pad(ids: Sequence[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts ``[1, pos_i]`` as one left-padded batch ``[n, max pos]`` and its attention mask
    (generation continues every row at the same, last, column)."""
    width = max(int(i.shape[-1]) for i in ids)
    batch = torch.full((len(ids), width), int(pad_id), dtype=ids[0].dtype, device=ids[0].device)
    mask = torch.zeros((len(ids), width), dtype=torch.long, device=ids[0].device)
    for r, i in enumerate(ids):
        batch[r, width - i.shape[-1]:] = i[0]
        mask[r, width - i.shape[-1]:] = 1
    return batch, mask


def positions_of(mask: torch.Tensor) -> torch.Tensor:
    """Position ids of a left-padded batch: each row counts from its first real token (pads get 1,
    as Hugging Face's generate gives them; they are never attended to)."""
    return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)


class LiveRows:
    """The rows of a batch still being decoded (their numbers in the batch as given), and
    ``rows_of`` functions for the interventions that act on some of them.

    ``copies``: how many times the live rows are stacked in a pass of the model (DPS runs its
    intact rows, then the same rows masked: 2). ``rows(mine, copy)`` is the ``rows_of`` of an
    intervention acting on rows ``mine`` in the given copies (None: all copies)."""

    def __init__(self, n: int):
        self.alive = list(range(n))

    def keep(self, positions: Sequence[int]) -> None:
        self.alive = [self.alive[j] for j in positions]

    def rows(self, mine: Sequence[int], copies: "Sequence[int] | None" = None) -> Callable[[int], torch.Tensor]:
        chosen = set(mine)

        def rows_of(batch: int) -> torch.Tensor:
            n = len(self.alive)
            here = torch.tensor([r in chosen for r in self.alive], dtype=torch.bool)
            stacked = batch // n if n and batch % n == 0 else 0
            if stacked == 0:
                return torch.zeros(batch, dtype=torch.bool)
            return torch.cat([here if copies is None or c in copies else torch.zeros_like(here)
                              for c in range(stacked)])

        return rows_of


def copy_cache(cache: Any, device: Any = None) -> Any:
    """A deep copy of a KV cache with tensors of its own, on ``device`` (default: where they are).
    Its keys and values are copied detached (``deepcopy`` refuses tensors that are not graph
    leaves, which a forward outside ``no_grad`` leaves there); the rest of the cache object is
    deep-copied around them."""
    memo = {id(t): t.detach().to(device if device is not None else t.device, copy=True)
            for layer in cache.layers for t in (getattr(layer, "keys", None), getattr(layer, "values", None))
            if isinstance(t, torch.Tensor)}
    return copy.deepcopy(cache, memo)


def select_rows(cache: Any, keep: torch.Tensor, n: int) -> None:
    """Keep rows ``keep`` of every cache layer (a layer holding ``k * n`` rows — the same rows
    stacked ``k`` times — keeps them in each copy)."""
    for layer in cache.layers:
        keys = getattr(layer, "keys", None)
        if keys is None or not isinstance(keys, torch.Tensor) or keys.dim() == 0 or keys.numel() == 0:
            continue
        copies = keys.shape[0] // n
        index = torch.cat([keep + c * n for c in range(copies)]).to(keys.device)
        layer.batch_select_indices(index)


def take_step(live: LiveRows, tok: torch.Tensor, out: list[list[int]], stops: set[int],
              decode: Callable[[list[int]], str], until: "Callable[[str], bool] | None") -> list[int]:
    """Give each live row its token ``tok[j]`` (a stop token ends the row unwritten; ``until`` on its
    text ends it after); returns the positions (in ``live.alive``) of the rows that go on."""
    keep = []
    for j, r in enumerate(live.alive):
        t = int(tok[j])
        if t in stops:
            continue
        out[r].append(t)
        if until is not None and until(decode(out[r])):
            continue
        keep.append(j)
    return keep


def drop_finished(cache: Any, live: LiveRows, keep: list[int], *rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Keep only rows ``keep`` of the cache, of ``live`` and of each per-row tensor in ``rows``."""
    if len(keep) == len(live.alive):
        return rows
    index = torch.tensor(keep, device=rows[0].device)
    select_rows(cache, index, len(live.alive))
    live.keep(keep)
    return tuple(t[index] for t in rows)


@torch.no_grad()
def greedy_rows(view: Any, ids: Sequence[torch.Tensor], max_new_tokens: int, stop_ids: Sequence[int],
                decode: Callable[[list[int]], str], until: "Callable[[str], bool] | None" = None,
                live: LiveRows | None = None, prefilled: "tuple[Any, torch.Tensor] | None" = None) -> list[list[int]]:
    """Greedy continuations (token ids, stop token excluded) of each prompt ``[1, pos]``, decoded
    as one left-padded batch; a row leaves the batch when it hits a stop token or ``until`` holds
    for its text (``decode(tokens)``). ``live``: tells the batch's interventions which rows remain.
    ``prefilled``: the batch's prompt pass already run — its KV cache (decoding grows it) and the
    last position's logits."""
    from transformers import DynamicCache

    batch, mask = left_pad(ids, stop_ids[0])
    pos = positions_of(mask)
    live = live or LiveRows(len(ids))
    stops = set(int(s) for s in stop_ids)
    out: list[list[int]] = [[] for _ in ids]
    if prefilled is not None:
        cache, logits = prefilled
    else:
        cache = DynamicCache(config=view.config)
        logits = view(input_ids=batch, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True,
                      logits_to_keep=1).logits
    step_pos = pos[:, -1:]
    for step in range(max_new_tokens):
        tok = logits[:, -1].argmax(-1)
        keep = take_step(live, tok, out, stops, decode, until)
        if not keep or step == max_new_tokens - 1:
            break
        tok, mask, step_pos = drop_finished(cache, live, keep, tok, mask, step_pos)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
        step_pos = step_pos + 1
        logits = view(input_ids=tok[:, None], attention_mask=mask, position_ids=step_pos, past_key_values=cache,
                      use_cache=True).logits
    return out
