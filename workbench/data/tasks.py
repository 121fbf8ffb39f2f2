"""What the workbench knows about each LaMP task, in one place.

One frozen :class:`TaskSpec` per task in the registry :data:`TASKS`: the instruction prefix
of LaMP's inputs, the profile fields the loader requires, the fields retrieval treats as an
item's text, how retrieval finds the query inside the input, and the prompt format (if the
workbench has one) for showing the user's earlier items to a model.

Loading (:mod:`workbench.data.lamp`), retrieval (:mod:`workbench.data.retrieval`) and prompting
(:mod:`workbench.data.prompts`) read these specs instead of keeping tables of their own. Data of
a task that is not here (LongLaMP, custom data) gets :data:`GENERIC`: nothing required, no
prefix, every string field counts as text, no prompt format.

This module imports nothing from the rest of the workbench, so every other module can use it.

Example::

    from workbench.data.tasks import get_task, task_text
    get_task("lamp4").prefix      # 'Generate a headline for the following article: '
    task_text(example)            # the article itself, without that prefix
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only for the annotations
    from workbench.data.records import Example

__all__ = ["GENERIC", "LAMP2N_LABELS", "NOT_TEXT_FIELDS", "STRING_FIELDS", "TASKS", "TaskSpec", "get_task", "prompt_tasks",
           "steering_task", "task_text"]


@dataclass(frozen=True)
class TaskSpec:
    """What the workbench knows about one task. Fields left at their default are unknown or unused.

    Attributes:
        name: ``"lamp1"`` .. ``"lamp7"``, ``"lamp2n"`` (the form :func:`workbench.data.lamp.load_lamp` gives).
        kind: ``"classification"``, ``"rating"`` or ``"generation"`` (what the gold output is).
        prefix: LaMP's instruction at the start of every input; :func:`task_text` removes it.
        required_fields: profile fields every item must have; a tuple inside means "any one of
            these".
        doc_fields: profile fields joined as an item's text for retrieval; None: every string
            field not in :data:`NOT_TEXT_FIELDS`.
        query_marker: retrieval searches with the input after this marker (when present).
        query_quoted: retrieval searches with the input's double-quoted strings (when any).
        prompt_style: how :func:`workbench.data.prompts.build_prompt` shows the ranked items:
            ``"turns"`` — each item is an earlier turn, ``instruction`` filled with its
            ``input_field`` -> its ``output_field``; ``"list"`` — the items' ``input_field``
            listed under ``history_intro`` before the request; None — no prompt format yet.
        instruction: the request for one item, ``{text}`` standing for its input.
        input_field: the profile field that is an item's input in the prompt.
        output_field: the profile field that is the user's output for it (``"turns"``).
        history_intro: the line above the listed items (``"list"``).
        input_label, output_label: how an item's input and output are labelled in the plain-text
            prompt of a model without a chat template (``Article:`` / ``Headline:``).
        description_context: the system message that shows a user's preference description
            (``{description}``) to the model: SteerX's contrast (CAA) and teacher (optimised).
        describe_prompt: the request that turns a user's preference words (``{words}``) into
            that description (SteerX).
        labels: a classification task's fixed label set (every prediction is one of them, see
            :mod:`workbench.methods`, "label choice"); the loader checks that the inputs list
            exactly these labels and that every gold is one. Empty: free-text output.
        labels_by_frequency: the same labels, most frequent in the source data first (the
            ``majority`` method breaks a tie in a user's history with it).

    The steering methods (SteerX, Fints) need a task whose history items pair an input with
    the user's output (``input_field`` and ``output_field``); :func:`steering_task` checks it.
    """

    name: str
    kind: str
    prefix: str = ""
    required_fields: tuple = ()
    doc_fields: tuple[str, ...] | None = None
    query_marker: str = ""
    query_quoted: bool = False
    prompt_style: str | None = None
    instruction: str = ""
    input_field: str = ""
    output_field: str = ""
    history_intro: str = ""
    input_label: str = "Input"
    output_label: str = "Answer"
    description_context: str = ""
    describe_prompt: str = ""
    labels: tuple[str, ...] = ()
    labels_by_frequency: tuple[str, ...] = ()


# LaMP-2N (news categorization, lamp2n-news): the 21 labels of the shipped data's README, in the
# order every input lists them (sorted).
LAMP2N_LABELS: tuple[str, ...] = (
    "black/queer/latino voices", "business & money", "comedy", "crime", "culture & religion",
    "education & impact", "entertainment", "environment", "food & travel", "home & living", "media",
    "parenting", "politics", "science & technology", "sports", "style & beauty", "u.s. news",
    "weird news", "wellness", "women", "world news",
)
# ... and most frequent first, as the README's table counts them in the source slice.
LAMP2N_BY_FREQUENCY: tuple[str, ...] = (
    "politics", "entertainment", "u.s. news", "world news", "comedy", "black/queer/latino voices", "sports",
    "crime", "style & beauty", "media", "weird news", "food & travel", "home & living", "environment", "wellness",
    "parenting", "business & money", "women", "culture & religion", "science & technology", "education & impact",
)
_LAMP2N_PREFIX = ("Which category does this article relate to among the following categories? Just answer with "
                  f"the category name without further explanation. categories: [{', '.join(LAMP2N_LABELS)}] "
                  "article: ")

TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in (
    # LaMP-1's input names the user's paper and two candidate references, all in double quotes.
    TaskSpec("lamp1", "classification", required_fields=("id", "title", "abstract"),
             doc_fields=("title", "abstract"), query_quoted=True),
    # LaMP-2's movie descriptions are "text" in some releases and "description" in others.
    TaskSpec("lamp2", "classification", required_fields=("id", ("text", "description"), "tag"),
             doc_fields=("text", "description"), query_marker="description:"),
    # LaMP-2N (LaMP's first, news version of LaMP-2): an article's short description -> the
    # section it ran in, one of 21 labels. The history items pair a description with the user's
    # category, so they are shown as earlier turns (and the steering methods can use them).
    TaskSpec("lamp2n", "classification", prefix=_LAMP2N_PREFIX, required_fields=("id", "text", "category"),
             doc_fields=("text", "title"), query_marker="article:",
             prompt_style="turns",
             instruction=("Which category does this news article belong to? Answer with one of: "
                          + ", ".join(LAMP2N_LABELS) + ".\nArticle: {text}"),
             input_field="text", output_field="category", input_label="Article", output_label="Category",
             description_context="You are sorting news articles into sections for one particular user. {description}",
             describe_prompt=(
                 "Here are words that show which news sections a user writes for, most telling first:\n{words}\n\n"
                 "In one or two sentences, describe the sections and topics this user writes about. "
                 "Start with \"The user\"."),
             labels=LAMP2N_LABELS, labels_by_frequency=LAMP2N_BY_FREQUENCY),
    TaskSpec("lamp3", "rating", required_fields=("id", "text", "score"),
             doc_fields=("text",), query_marker="review:"),
    TaskSpec("lamp4", "generation", prefix="Generate a headline for the following article: ",
             required_fields=("id", "text", "title"), doc_fields=("text", "title"),
             prompt_style="turns", instruction="Write a headline for this article:\n{text}",
             input_field="text", output_field="title", input_label="Article", output_label="Headline",
             description_context="You are writing news headlines for one particular user. {description}",
             describe_prompt=(
                 "Here are words that show how a user writes news headlines, most telling first:\n{words}\n\n"
                 "In one or two sentences, describe this user's headline style and the topics they write about. "
                 "Start with \"The user\".")),
    TaskSpec("lamp5", "generation", prefix="Generate a title for the following abstract of a paper: ",
             required_fields=("id", "title", "abstract"), doc_fields=("title", "abstract"),
             prompt_style="turns", instruction="Write a title for this paper abstract:\n{text}",
             input_field="abstract", output_field="title", input_label="Abstract", output_label="Title",
             description_context="You are writing paper titles for one particular user. {description}",
             describe_prompt=(
                 "Here are words that show how a user titles their papers, most telling first:\n{words}\n\n"
                 "In one or two sentences, describe this user's title style and the topics they write about. "
                 "Start with \"The user\".")),
    # LaMP-6 (email subjects) is private data: only the id is checked, and its items' text
    # fields are not known, so retrieval uses every string field.
    TaskSpec("lamp6", "generation", required_fields=("id",)),
    # A tweet has no separate output to pair it with, so the user's tweets are listed as
    # examples of their style rather than shown as earlier turns.
    TaskSpec("lamp7", "generation",
             prefix="Paraphrase the following tweet without any explanation before or after it: ",
             required_fields=("id", "text"), doc_fields=("text",),
             prompt_style="list",
             instruction="Paraphrase this tweet in my own style, without any explanation:\n{text}",
             input_field="text", history_intro="Here are tweets I wrote before:"),
)}

# What data of any other task gets (LongLaMP, custom data): no knowledge, so nothing is
# required or stripped and retrieval looks at every string field.
GENERIC = TaskSpec("", "generation")

# Profile fields that must be strings when present, whatever the task (the loader checks them).
STRING_FIELDS: tuple[str, ...] = ("text", "title", "abstract", "description", "tag", "category")
# Fields that are never an item's text for retrieval when its task has no doc_fields: ids,
# dates, ratings and labels would only add noise to BM25.
NOT_TEXT_FIELDS: frozenset[str] = frozenset({"id", "date", "user_id", "score", "tag", "category"})


def get_task(name: str) -> TaskSpec:
    """The :class:`TaskSpec` of ``name`` (``"lamp1"`` .. ``"lamp7"``, ``"lamp2n"``).

    Raises:
        ValueError: ``name`` is not a known task; the message lists the known ones.
    """
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}") from None


def prompt_tasks() -> list[str]:
    """The tasks that have a prompt format (``prompt_style`` set), in registry order."""
    return [name for name, spec in TASKS.items() if spec.prompt_style]


def steering_task(name: str) -> TaskSpec:
    """The spec of ``name`` if its history items pair an input with the user's output, shown as
    earlier turns (what contrastive pairs, SteerX traces and steering vectors are built from).

    Raises:
        ValueError: ``name`` is unknown, or its items have no input/output pair (e.g. LaMP-7's
            tweets); the message names the tasks that work.
    """
    spec = get_task(name)
    if spec.prompt_style != "turns" or not spec.input_field or not spec.output_field:
        ok = [n for n, s in TASKS.items() if s.prompt_style == "turns" and s.input_field and s.output_field]
        raise ValueError(f"task {name!r} has no (input, user's output) pairs in its history to steer with; "
                         f"the steering methods work on {', '.join(ok)}")
    return spec


def task_text(example: Example) -> str:
    """The input with LaMP's instruction prefix removed (the article, abstract or tweet).

    Inputs of tasks without a known prefix, or that do not start with it, come back whole.
    """
    prefix = TASKS.get(example.task, GENERIC).prefix
    text = example.input
    return text[len(prefix):] if prefix and text.startswith(prefix) else text
