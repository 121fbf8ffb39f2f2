"""Prompt formats for personalised generation.

At 135M parameters the format matters: showing a user's earlier items as earlier chat
turns (user: the article -> assistant: its headline) beats listing them inside one
message (measured on lamp4-news, see shared/research/prompting.md), so that is the
default here. Models without a chat template get the same turns as plain text.
"""

from __future__ import annotations

from typing import Any, Iterable

HEADLINE_INSTRUCTION = "Write a headline for this article:\n{text}"


def headline_prompt(model: Any, article: str, history: Iterable[dict] = ()) -> Any:
    """A prompt asking for the headline of ``article``, after the user's ``history``.

    ``history`` items are dicts with ``text`` (an earlier article) and ``title`` (its
    headline, as the user wrote it). Returns chat messages when the model has a chat
    template, plain few-shot text otherwise; either can go to ``model.generate``.
    """
    history = list(history)
    for i, item in enumerate(history):
        if not item.get("text") or not item.get("title"):
            raise ValueError(f"history item {i} needs non-empty 'text' and 'title' fields, got keys {sorted(item)}")
    if getattr(model, "has_chat_template", False):
        messages: list[dict] = []
        for item in history:
            messages.append({"role": "user", "content": HEADLINE_INSTRUCTION.format(text=item["text"])})
            messages.append({"role": "assistant", "content": item["title"]})
        messages.append({"role": "user", "content": HEADLINE_INSTRUCTION.format(text=article)})
        return messages
    shots = "".join(f"Article: {item['text']}\nHeadline: {item['title']}\n\n" for item in history)
    return f"{shots}Article: {article}\nHeadline:"


def first_line(text: str) -> str:
    """The first non-empty line of a generation (headlines are one line)."""
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""
