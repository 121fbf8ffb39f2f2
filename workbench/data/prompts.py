"""Prompt formats for personalised generation: rendering an example and its user's history.

Owns :func:`build_prompt` (a LaMP example with its top-ranked profile items, fitted to the
model's context), :func:`task_prompt` (a task's request after a given history, optionally with
a context; :func:`headline_prompt` is LaMP-4's), :func:`preference_prompt` (the same with a
user's preference as context) and :func:`first_line`. What each task's prompt says comes from its spec in
:mod:`workbench.data.tasks`; which items are shown comes from :mod:`workbench.data.retrieval`.

At 135M parameters the format matters: showing a user's earlier items as earlier chat
turns (user: the article -> assistant: its headline) beats listing them inside one
message (measured on lamp4-news, see shared/research/prompting.md), so that is the
default here. Models without a chat template get the same turns as plain text.
"""

from __future__ import annotations

from typing import Any, Iterable

from workbench.data.retrieval import rank_profile
from workbench.data.tasks import GENERIC, TASKS, prompt_tasks, task_text

def task_prompt(model: Any, task: str, text: str, history: Iterable[dict] = (), system: str | None = None) -> Any:
    """A prompt asking for ``task``'s output for the input ``text``, after the user's ``history``.

    ``history`` items are the task's profile items (LaMP-4: ``text``, an earlier article, and
    ``title``, the user's headline for it), shown as earlier turns: the task's instruction for
    the item's input, then the user's output. ``system``: a context shown before everything
    (a system message, or the first paragraph of a plain-text prompt). Returns chat messages
    when the model has a chat template, plain few-shot text (labelled with the task's
    ``input_label`` / ``output_label``) otherwise; either can go to ``model.generate``.

    Raises:
        ValueError: the task has no turns format (see :func:`workbench.data.tasks.steering_task`),
            or a history item is not usable (:func:`workbench.data.history.usable_item`).
    """
    from workbench.data.history import usable_item
    from workbench.data.tasks import steering_task

    spec = steering_task(task)
    source, target = spec.input_field, spec.output_field
    history = list(history)
    for i, item in enumerate(history):
        if not usable_item(item, task):
            keys = sorted(item) if isinstance(item, dict) else type(item).__name__
            raise ValueError(f"history item {i} needs non-empty '{source}' and '{target}' fields, got keys {keys}")
    if getattr(model, "has_chat_template", False):
        messages: list[dict] = [{"role": "system", "content": system}] if system is not None else []
        for item in history:
            messages.append({"role": "user", "content": spec.instruction.format(text=item[source])})
            messages.append({"role": "assistant", "content": item[target]})
        messages.append({"role": "user", "content": spec.instruction.format(text=text)})
        return messages
    inp, out = spec.input_label, spec.output_label
    shots = "".join(f"{inp}: {item[source]}\n{out}: {item[target]}\n\n" for item in history)
    context = f"{system}\n\n" if system is not None else ""
    return f"{context}{shots}{inp}: {text}\n{out}:"


def preference_prompt(model: Any, task: str, preference: "str | Iterable[dict]", text: str) -> Any:
    """:func:`task_prompt` for ``text`` with a user's preference as context: a description
    (``str``, shown as the system message through the task's ``description_context``) or their
    history items (earlier turns, like ``rag``). SteerX's CAA contrasts it with the prompt
    without context; its optimised vector learns what it does."""
    from workbench.data.tasks import get_task

    if isinstance(preference, str):
        template = get_task(task).description_context
        if not template:
            raise ValueError(f"task {task!r} has no description_context to show a preference description with; "
                             "add one to its TaskSpec in workbench.data.tasks")
        return task_prompt(model, task, text, system=template.format(description=preference))
    return task_prompt(model, task, text, list(preference))


def headline_prompt(model: Any, article: str, history: Iterable[dict] = ()) -> Any:
    """LaMP-4's :func:`task_prompt`: the headline of ``article`` after the user's ``history``
    (items with ``text``, an earlier article, and ``title``, the user's headline for it)."""
    return task_prompt(model, "lamp4", article, history)


def first_line(text: str) -> str:
    """The first non-empty line of a generation (headlines are one line)."""
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


_LINE_ENDS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"  # what str.splitlines splits on


def first_line_complete(text: str) -> bool:
    """Whether :func:`first_line` of ``text`` can no longer change as more text is appended:
    a non-empty line has been ended by a line break. Decoding stops there (``until=``), since
    every method keeps only the first line."""
    for line in text.splitlines(keepends=True):
        if line.strip():
            return line[-1] in _LINE_ENDS
    return False


def generate_line(model: Any, prompt: Any, max_new_tokens: int = 32, **kwargs: Any) -> str:
    """:func:`first_line` of ``model.generate(prompt, ...)``, decoding only until that line is
    complete (the same line as decoding all ``max_new_tokens``, in fewer steps)."""
    return first_line(model.generate(prompt, max_new_tokens=max_new_tokens, until=first_line_complete, **kwargs))


# ---- per-task prompts for LaMP-style examples ---------------------------------------------

def _chat_or_text(model: Any, turns: list[tuple[str, str]], final: str) -> Any:
    if getattr(model, "has_chat_template", False):
        msgs: list[dict] = []
        for user, assistant in turns:
            msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        return msgs + [{"role": "user", "content": final}]
    shots = "".join(f"{u}\nAnswer: {a}\n\n" for u, a in turns)
    return f"{shots}{final}\nAnswer:"


def _render(model: Any, example: Any, text: str, items: list[dict]) -> Any:
    task = example.task
    spec = TASKS.get(task, GENERIC)
    if spec.prompt_style == "turns":
        turns = [(spec.instruction.format(text=it.get(spec.input_field, "")), it.get(spec.output_field, ""))
                 for it in items]
        return _chat_or_text(model, turns, spec.instruction.format(text=text))
    if spec.prompt_style == "list":
        request = spec.instruction.format(text=text)
        if items:
            mine = "\n".join(f"- {it.get(spec.input_field, '')}" for it in items)
            request = f"{spec.history_intro}\n{mine}\n\n{request}"
        return _chat_or_text(model, [], request)
    raise ValueError(
        f"no prompt format for task {task!r} yet (generation tasks {', '.join(prompt_tasks())} are supported); "
        "add one to the task's TaskSpec in workbench.data.tasks, or pass your own prompt to model.generate"
    )


def build_prompt(model: Any, example: Any, k: int = 5, by: str = "bm25", reserve: int = 32) -> tuple[Any, dict]:
    """The prompt for ``example`` with its user's top-``k`` profile items, fitted to the context.

    Items are ranked by ``by`` (``"bm25"`` against the input, or ``"recency"``) and shown as
    earlier turns, best-ranked last (closest to the question). If the prompt plus ``reserve``
    tokens for the answer does not fit the model's context, the lowest-ranked items are
    dropped one at a time, then the input text itself is cut; what was dropped is reported
    in the returned info dict (``k_used``, ``items_dropped``, ``input_truncated``), never silent.
    """
    items = rank_profile(example, k=k, by=by) if k > 0 else []
    text = task_text(example)
    limit = model.n_ctx - reserve
    info = {"k_used": len(items), "items_dropped": 0, "input_truncated": False,
            "profile_ids": [str(it.get("id", "")) for it in items]}
    while True:
        prompt = _render(model, example, text, list(reversed(items)))
        n = model.encode(prompt).shape[-1]
        if n <= limit:
            info["prompt_tokens"] = n
            info["k_used"] = len(items)
            info["profile_ids"] = [str(it.get("id", "")) for it in items]
            return prompt, info
        if items:
            items = items[:-1]
            info["items_dropped"] += 1
            continue
        ids = model.tokenizer(text, add_special_tokens=False).input_ids
        over = n - limit
        if over >= len(ids):
            model.check_fits(n, reserve, what="prompt without its input text")
        text = model.tokenizer.decode(ids[: len(ids) - over - 1])
        info["input_truncated"] = True


def parse_label(text: str, labels: Iterable[str]) -> str:
    """The label a free-text answer names (classification with free generation): the label the
    text equals (ignoring case, surrounding spaces, quotes and a final full stop), else the
    label that occurs first in it (the longer one where two start at the same place), else
    ``""`` (no label: scored as wrong)."""
    labels = list(labels)
    said = text.strip().strip("\"'`*").rstrip(".").strip().lower()
    for label in labels:
        if said == label.lower():
            return label
    found = [(said.find(label.lower()), -len(label), label) for label in labels if label.lower() in said]
    return min(found)[2] if found else ""
