"""Which prompt token is what: each token of a prompt labelled with the history item and part
(the item's input, its output, template markup, the query) it comes from, and the word it
belongs to.

:func:`label_tokens` gives a :class:`PromptTokens`; its :meth:`~PromptTokens.positions`
turns a scope (``"history"``, ``"outputs"``, ...) into the prompt positions that
:func:`workbench.science.tracing.trace_tokens` traces. Which fields of an item are its input
and output is the task's (:func:`workbench.data.history.item_fields`); the labels are the
same for every task (for LaMP-4, ``input`` is the article and ``output`` the headline).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from workbench.core.model import Model
from workbench.data.history import INPUT_FIELD, OUTPUT_FIELD

SCOPES = ("history", "outputs", "inputs", "prompt")
# Scope names from before parts were task-neutral (LaMP-4's words), and their new names.
_RENAMED_SCOPES = {"titles": "outputs", "articles": "inputs"}
_WORD = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]")


@dataclass
class PromptTokens:
    """The tokens of a prompt, each labelled with the history item and part it belongs to.

    ``frame`` has one row per prompt token: ``position``, ``token`` (its text, with the
    whitespace before the next token), ``item`` (index of the history item in prompt order, or
    -1), ``item_id``, ``part`` (``input``, ``output``, ``template`` inside an item,
    ``query`` after the history, ``other`` before it) and ``word`` (index of the word it is
    part of, -1 for markup).
    """

    prompt: Any
    ids: torch.Tensor  # [1, n_prompt]
    frame: pd.DataFrame
    items: list[dict]

    def positions(self, scope: "str | Sequence[int]") -> list[int]:
        """Prompt positions of a scope: ``history`` (input and output tokens of every item),
        ``outputs`` (the user's outputs, e.g. headlines), ``inputs``, ``prompt`` (every token but
        the first and the last) or a list of positions."""
        f = self.frame
        n = len(f)
        if not isinstance(scope, str):
            pos = sorted({int(p) for p in scope})
            bad = [p for p in pos if not 0 <= p < n - 1]
            if bad:
                raise ValueError(f"positions {bad[:5]} are outside the prompt (0..{n - 2}; the last prompt token "
                                 "predicts the output and can't be traced)")
            return pos
        if scope in _RENAMED_SCOPES:
            raise ValueError(f"scope {scope!r} is now {_RENAMED_SCOPES[scope]!r} (item parts are named for every "
                             "task: 'input' and 'output')")
        if scope == "history":
            keep = f["part"].isin(["input", "output"])
        elif scope == "outputs":
            keep = f["part"] == "output"
        elif scope == "inputs":
            keep = f["part"] == "input"
        elif scope == "prompt":
            keep = (f["position"] > 0) & (f["position"] < n - 1)
        else:
            raise ValueError(f"scope={scope!r}: use one of {SCOPES} or a list of token positions")
        keep &= f["position"] < n - 1
        pos = f.loc[keep, "position"].astype(int).tolist()
        if not pos:
            raise ValueError(f"scope {scope!r} selects no tokens in this prompt (is the history empty, or not "
                             "found in the prompt text?); pass positions=[...] or scope='prompt'")
        return pos


def _prompt_text(model: Model, prompt: Any) -> tuple[str, bool]:
    if isinstance(prompt, str) and not model.has_chat_template:
        return prompt, True
    return model.format_chat(prompt), False


def label_tokens(model: Model, prompt: Any, items: Sequence[dict] = (),
                 fields: tuple[str, str] = (INPUT_FIELD, OUTPUT_FIELD)) -> PromptTokens:
    """Tokenize ``prompt`` as :meth:`Model.encode` does and label each token.

    ``items`` are the history items in the order the prompt shows them; ``fields`` names their
    input and output fields (the task's, :func:`workbench.data.history.item_fields`; the
    default is LaMP-4's). Their texts are looked up in the rendered prompt, in order.
    """
    if isinstance(prompt, torch.Tensor):
        raise ValueError("label_tokens needs the prompt as text or chat messages, not token ids")
    ids = model.encode(prompt)
    text, plain = _prompt_text(model, prompt)
    enc = model.tokenizer(text, add_special_tokens=plain, return_offsets_mapping=True)
    if list(enc["input_ids"]) != ids[0].tolist():
        raise ValueError("re-tokenizing the rendered prompt did not give the ids Model.encode gives; "
                         "token labels would be misaligned (pass positions=[...] to trace_tokens instead)")
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    n = len(offsets)
    # Character spans of each item's input and output, searched in order.
    spans: list[tuple[int, str, int, int]] = []
    cursor = 0
    last_end = 0
    for j, it in enumerate(items):
        for part, key in zip(("input", "output"), fields):
            s = str(it.get(key, "") or "")
            if not s:
                continue
            at = text.find(s, cursor)
            if at < 0:
                raise ValueError(f"history item {j}'s {key} was not found in the prompt text; pass the items "
                                 "in the order the prompt shows them")
            spans.append((j, part, at, at + len(s)))
            cursor = at + len(s)
            last_end = cursor
    item_start = {}
    item_end = {}
    for j, _, a, b in spans:
        item_start[j] = min(a, item_start.get(j, a))
        item_end[j] = max(b, item_end.get(j, b))
    words = [(m.start(), m.end()) for m in _WORD.finditer(text)]
    word_starts = np.array([w[0] for w in words]) if words else np.zeros(0, dtype=int)

    rows = []
    for p, (a, b) in enumerate(offsets):
        nxt = offsets[p + 1][0] if p + 1 < n else b
        shown = text[a:max(b, nxt)] if b > a else text[a:b]
        core = a
        while core < b and text[core].isspace():
            core += 1
        if core == b:  # whitespace only: it belongs where it starts, not to the next word
            core = a
        item, part = -1, "other"
        if b > a:
            for j, pt, s, e in spans:
                if s <= core < e:
                    item, part = j, pt
                    break
            else:
                for j in item_start:
                    if item_start[j] <= core < item_end[j]:
                        item, part = j, "template"
                        break
                else:
                    if items and core >= last_end:
                        part = "query"
        word = -1
        if b > a and not text[a:b].isspace() and len(word_starts):
            w = int(np.searchsorted(word_starts, core, side="right")) - 1
            if w >= 0 and words[w][0] <= core < words[w][1]:
                word = w
        rows.append({"position": p, "token": shown, "item": item,
                     "item_id": str(items[item].get("id", item)) if item >= 0 else "",
                     "part": part, "word": word, "char_start": a, "char_end": b})
    frame = pd.DataFrame(rows)
    frame.attrs["text"] = text
    return PromptTokens(prompt, ids, frame, list(items))
