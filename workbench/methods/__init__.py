"""Personalization methods for the benchmark runner: one pipeline, composed of parts.

Every method writes its output the same way::

    prompt --> intervention (a context manager, or none) --> decoder (greedy, or DPS) --> first line

and differs only in the parts it supplies:

- :meth:`Method.prompt`: the prompt for one example (``rag`` shows the user's top-k items);
- :meth:`Method.intervention`: a :class:`~workbench.core.hooks.HookSet` active while decoding
  (a steering vector, a head mask) plus facts to record, or ``None``;
- :meth:`Method.decoder`: how tokens are chosen (:data:`GREEDY`, or DPS's contrast);
- :meth:`Method.prepare_run` / :meth:`Method.prepare_user`: state built once per run (e.g.
  preference heads) or per user (e.g. a steering vector), handed to ``intervention``.

A combination (:class:`Combination`) is one method's prompt and intervention with another's
decoder. No method rewrites :meth:`Method.generate`. Settings are dataclass fields, and
:meth:`Method.describe` (what a run records) comes from them. A new method::

    @register_method
    @dataclass
    class MyMethod(Method):
        name = "my-method"
        uses_profile = True
        scale: float = 2.0
        def prepare_user(self, model, user_id, examples):
            return build_my_vector(model, examples)          # once per user
        def intervention(self, model, example, state):
            return state.apply(model, scale=self.scale), {}

Register it with ``@register_method`` and ``workbench bench --methods my-method`` runs it on
the same examples, with the same model and scoring, as every other method.
"""

from __future__ import annotations

import importlib
import inspect
import math
import re
import weakref
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, ClassVar, Protocol, Sequence

import torch

from workbench._util import check_int, check_number
from workbench.core._decoding import copy_cache
from workbench.core.hooks import HookSet, last_positions_hook
from workbench.core.model import Model
from workbench.data.prompts import build_prompt, first_line, first_line_complete, parse_label
from workbench.data.retrieval import RETRIEVALS
from workbench.data.tasks import GENERIC, TASKS

METHODS: dict[str, Callable[..., "Method"]] = {}


_METHOD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")


def register_method(cls: type) -> type:
    """Class decorator: make a :class:`Method` subclass available by its ``name``.

    A name is letters, digits and ``_.+-`` (at most 64, not starting with a dot): it ends up
    in file and directory names (tuning runs, cached vectors)."""
    if not isinstance(cls.name, str) or not _METHOD_NAME.fullmatch(cls.name):
        raise ValueError(f"method name {cls.name!r}: use letters, digits and _.+- only (at most 64), "
                         "starting with a letter or digit")
    METHODS[cls.name] = cls
    return cls


@dataclass(frozen=True)
class Check:
    """What values one method setting accepts: the one place settings are validated.

    Declared per method in its ``checks`` class attribute (``{field: Check(...)}``, merged
    along the class's bases, so a subclass that only changes a default keeps its checks);
    :meth:`Method.check_settings` applies them when a setting is changed (``--set``, ``--grid``,
    ``--tuned``) and again, with the model, before a run does any work.

    - ``minimum`` / ``maximum`` (inclusive), ``above`` / ``below`` (exclusive): a number's range;
      ``whole``: an int;
    - ``choices``: the values allowed (for text settings; ``None`` may be one);
    - ``words``: words a numeric setting also accepts (DPS's ``alpha="entropy"``);
    - ``layer``: a layer index, checked against the model's layers once it is known;
    - ``file``: a path that must name an existing file.

    ``None`` passes wherever the field's type allows it (``float | None``). A field named
    ``layer`` with no check of its own is checked as a layer (``Check(whole=True, layer=True)``).
    """

    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None
    below: float | None = None
    whole: bool = False
    choices: tuple | None = None
    words: tuple = ()
    layer: bool = False
    file: bool = False

    def __call__(self, where: str, value: Any, model: Any = None, optional: bool = False) -> None:
        if value is None and (optional or (self.choices is not None and None in self.choices)):
            return
        if self.choices is not None:
            if value not in self.choices:
                shown = ", ".join("none" if c is None else str(c) for c in self.choices)
                raise ValueError(f"{where}={value!r}: use one of {shown}")
            return
        if isinstance(value, str) and self.words:
            if value not in self.words:
                raise ValueError(f"{where}={value!r}: give a number or one of {', '.join(self.words)}")
            return
        if self.file:
            from pathlib import Path

            if not isinstance(value, (str, Path)) or not Path(value).expanduser().is_file():
                raise FileNotFoundError(f"{where}={value!r}: no such file; give the path of a saved file "
                                        "(e.g. scores.json from `workbench heads`) or none")
            return
        if self.whole or self.layer:
            low = 0 if self.layer and self.minimum is None else self.minimum
            check_int(where, value, minimum=None if low is None else math.ceil(low),
                      maximum=None if self.maximum is None else math.floor(self.maximum))
        check_number(where, value, self.minimum, self.maximum, self.above)
        if self.below is not None and not value < self.below:
            raise ValueError(f"{where}={value} must be < {self.below:g}")
        n_layers = getattr(model, "n_layers", None)
        if self.layer and n_layers is not None and value >= n_layers:
            raise ValueError(f"{where}={value}: {getattr(model, 'name', 'the model')} has {n_layers} layers "
                             f"(0..{n_layers - 1}); give a layer in that range (or none: the method's default)")


_LAYER = Check(whole=True, layer=True)


@dataclass
class GenerationSettings:
    """Decoding and prompt settings shared by all methods of one run (recorded with results)."""

    max_new_tokens: int = 32
    k: int = 5  # profile items in the prompt
    retrieval: str = "bm25"  # or "recency"

    def __post_init__(self) -> None:
        # Checked when made, so a bad value fails before a run writes anything: k=0 would turn
        # every profile method into `generic`, a negative k would drop items from the end.
        check_int("max_new_tokens", self.max_new_tokens, minimum=1)
        check_int("k", self.k, minimum=1)
        if self.retrieval not in RETRIEVALS:
            raise ValueError(f"retrieval={self.retrieval!r}: use one of {RETRIEVALS}")


class Decoder(Protocol):
    """Chooses the output tokens for a prompt (hooks active around it apply)."""

    info: dict

    def decode(self, model: Model, prompt: Any, max_new_tokens: int, until: Callable[[str], bool] | None = None) -> str:
        """The generated text; may stop early once ``until(text so far)`` holds."""


@dataclass(frozen=True)
class Greedy:
    """Plain greedy decoding (``model.generate``)."""

    info: dict = field(default_factory=dict)

    def decode(self, model: Model, prompt: Any, max_new_tokens: int, until: Callable[[str], bool] | None = None) -> str:
        return model.generate(prompt, max_new_tokens=max_new_tokens, until=until)

    def decode_batch(self, model: Model, prompts: list, max_new_tokens: int, until: Callable[[str], bool] | None = None,
                     interventions: list | None = None) -> list[str]:
        return model.generate_batch(prompts, max_new_tokens=max_new_tokens, until=until, interventions=interventions)


GREEDY = Greedy()

# How a classification task's prediction is made: "score" — each label's log-likelihood under
# the method (the default); "generate" — free decoding, the first line parsed into a label.
LABEL_MODES = ("score", "generate")
# What "score" ranks labels by, recorded in run.json. The mean log-probability per label token
# (length-normalised, like lm-eval-harness' acc_norm): the total would favour labels of few
# tokens ("media", "crime") over long ones ("black/queer/latino voices") for their length alone.
LABEL_SCORING = "mean log-likelihood per label token"


def task_labels(task: str) -> tuple[str, ...]:
    """The label set of ``task`` (empty for a generation task)."""
    return TASKS.get(task, GENERIC).labels


def label_token_logprobs(model: Model, prompt: Any, labels: Sequence[str],
                         label_hooks: "HookSet | Sequence" = ()) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """For each label: the log-probability of each of its tokens after ``prompt``, and the
    entropy (nats) of the model's next-token distribution where each token is predicted.

    Hooks active around the call apply (a steering vector, a head mask). The prompt is run once
    (all but its last token, shared through the KV cache); the labels then run in one pass.
    A label follows a chat prompt directly (the assistant's answer) and a plain-text prompt
    (ending in ``Answer:``) after a space. ``label_hooks``: an intervention (e.g. a
    :func:`~workbench.core.heads.mask_heads`) or a list of hooks active from the prompt's last
    token on only (DPS's head mask: the prompt's computation stays intact, as in its decoding).
    """
    return label_token_logprobs_under(model, prompt, labels, [label_hooks])[0]


@torch.no_grad()
def label_token_logprobs_under(model: Model, prompt: Any, labels: Sequence[str],
                               hook_sets: Sequence["HookSet | Sequence"]) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """:func:`label_token_logprobs` once per set of ``label_hooks`` in ``hook_sets``, the prompt
    run once for all of them: hooks that start at the prompt's last token leave its KV cache the
    same (DPS's intact and masked scores share it, which halves their cost on long prompts).

    When every active intervention and every hook set can run on the hook-free view (steering
    vectors, head masks, LoRA adapters: :mod:`workbench.core._fastpath`) and the model has no
    sliding-window attention, the prompt runs there and all labels go in one row, each label's
    tokens seeing the prompt and its own earlier tokens only (a tree-shaped attention mask): no
    copy of the prompt's cache per label, whose traffic was most of the labels' cost. Otherwise
    the bridge runs the labels as a batch of rows over copies of the cache. Both give the same
    numbers up to float rounding.
    """
    ids = model.encode(prompt)
    space = "" if (not isinstance(prompt, str) or model.has_chat_template) else " "
    toks = [model.tokenizer(space + label, add_special_tokens=False).input_ids for label in labels]
    if not all(toks):
        raise ValueError("a label is empty; every label needs at least one token")
    longest = max(len(t) for t in toks)
    model.check_fits(ids.shape[-1] + longest, what="prompt plus label")
    view = _label_view(model, hook_sets)
    if view is not None:
        logits_of = _label_logits_on_view(model, view, ids, toks, hook_sets)
    else:
        logits_of = _label_logits_on_bridge(model, ids, toks, longest, hook_sets)
    results = []
    for rows_logits, where in logits_of:
        lp = rows_logits.float().log_softmax(-1)
        entropy = -(lp.exp() * lp).sum(-1)
        out = []
        for j, t in enumerate(toks):
            row, positions = where(j)
            index = torch.tensor(t, device=lp.device)
            out.append((lp[row, positions, index].cpu(), entropy[row, positions].cpu()))
        results.append(out)
    return results


def _as_hook_list(hooks: "HookSet | Sequence") -> list:
    return list(hooks.hooks) if isinstance(hooks, HookSet) else list(hooks)


def _label_view(model: Model, hook_sets: Sequence) -> Any:
    """The hook-free view with the active interventions to install on it, or None (the bridge
    must run: a hook the view cannot run, or sliding-window layers, whose masks a tree-shaped
    mask would override)."""
    from workbench.core import _fastpath

    if any(_as_hook_list(h) and not (isinstance(h, HookSet) and _fastpath.supported(model, h)) for h in hook_sets):
        return None
    fast = model._fast_view()
    if fast is None:
        return None
    config = getattr(fast[0], "config", None)
    types = getattr(config, "layer_types", None)
    sliding = any(t != "full_attention" for t in types) if types else getattr(config, "sliding_window", None) is not None
    if sliding:
        return None
    ok = _TREE_VERIFIED.get(model.bridge)
    if ok is None:
        ok = _TREE_VERIFIED[model.bridge] = _tree_matches_rows(model, fast)
    return fast if ok else None


# Per model: whether its view honours a tree-shaped mask with explicit positions (checked once).
_TREE_VERIFIED: "weakref.WeakKeyDictionary[Any, bool]" = weakref.WeakKeyDictionary()


@torch.no_grad()
def _tree_matches_rows(model: Model, fast: Any) -> bool:
    """Whether the labels-in-one-row pass gives the rows' numbers on this architecture: a probe of
    a few tokens through both. Not every model's attention takes a 4-D mask, or takes it the same
    way; one that errs or disagrees keeps the bridge."""
    ids = (torch.arange(6, device=model.device) % max(model.tokenizer.vocab_size - 1, 1) + 1)[None]
    toks = [[int(ids[0, 1]), int(ids[0, 2])], [int(ids[0, 3])], [int(ids[0, 4]), int(ids[0, 1]), int(ids[0, 2])]]
    try:
        tree = _label_logits_on_view(model, fast, ids, toks, [()])[0]
        rows = _label_logits_on_bridge(model, ids, toks, 3, [()])[0]
    except Exception:  # noqa: BLE001 - any failure of the probe means: not on this model
        return False
    tolerance = 1e-3 if next(fast[0].parameters()).dtype == torch.float32 else 5e-2
    for j, t in enumerate(toks):  # what scoring reads: the label tokens' log-probabilities
        (r1, p1), (r2, p2) = tree[1](j), rows[1](j)
        index = torch.tensor(t, device=model.device)
        a = tree[0][r1, p1].float().log_softmax(-1)[torch.arange(len(t)), index]
        b = rows[0][r2, p2].float().log_softmax(-1)[torch.arange(len(t)), index]
        if a.shape != b.shape or not torch.allclose(a, b, atol=tolerance):
            return False
    return True


def _label_logits_on_view(model: Model, fast: Any, ids: torch.Tensor, toks: list[list[int]],
                          hook_sets: Sequence) -> list[tuple[torch.Tensor, Callable]]:
    from transformers import DynamicCache

    from workbench.core import _fastpath

    view, active = fast
    n = ids.shape[-1] - 1  # the prompt's cache; its last token opens the label row
    # One row: the last prompt token, then each label's tokens but its last (the last is only
    # predicted). Positions restart after the prompt for every label.
    seq, pos, owner, starts = [int(ids[0, -1])], [n], [-1], []
    for j, t in enumerate(toks):
        starts.append(len(seq))
        seq += t[:-1]
        pos += range(n + 1, n + len(t))
        owner += [j] * (len(t) - 1)
    q = len(seq)
    own = torch.tensor(owner)
    idx = torch.arange(q)
    allow = torch.ones(q, n + q, dtype=torch.bool)
    allow[:, n + 1:] = (own[:, None] == own[None, 1:]) & (idx[None, 1:] <= idx[:, None]) & (own[:, None] >= 0)
    dtype = next(view.parameters()).dtype
    mask = torch.zeros(q, n + q, dtype=dtype).masked_fill(~allow, torch.finfo(dtype).min)[None, None].to(model.device)
    row = torch.tensor([seq], device=model.device)
    positions = torch.tensor([pos], device=model.device)

    def where(j: int) -> tuple[int, torch.Tensor]:
        return 0, torch.tensor([0] + list(range(starts[j], starts[j] + len(toks[j]) - 1)), device=model.device)

    out = []
    with _fastpath.installed(model, [(iv, _fastpath.every_row) for iv in active]):
        cache = DynamicCache(config=view.config)
        if n > 0:
            view(input_ids=ids[:, :-1], past_key_values=cache, use_cache=True, logits_to_keep=1)
        for k, label_hooks in enumerate(hook_sets):
            # the label pass grows the cache it is given: a later hook set gets a fresh copy
            mine = cache if k == len(hook_sets) - 1 else copy_cache(cache)
            plan = [(label_hooks, _fastpath.every_row)] if _as_hook_list(label_hooks) else []
            with _fastpath.installed(model, plan):
                logits = view(input_ids=row, attention_mask=mask, position_ids=positions, past_key_values=mine,
                              use_cache=True).logits
            out.append((logits, where))
    return out


def _label_logits_on_bridge(model: Model, ids: torch.Tensor, toks: list[list[int]], longest: int,
                            hook_sets: Sequence) -> list[tuple[torch.Tensor, Callable]]:
    last = int(ids[0, -1])
    # Right-padded with each label's last token: causal attention never lets a real position see
    # a pad, and pads' log-probabilities are never read.
    rows = torch.tensor([[last, *t, *[t[-1]] * (longest - len(t))] for t in toks], device=ids.device)
    bridge = model.bridge

    def where(j: int) -> tuple[int, torch.Tensor]:
        return j, torch.arange(len(toks[j]), device=ids.device)

    prompt_cache = None
    if ids.shape[-1] > 1:
        with bridge.hooks(fwd_hooks=[last_positions_hook(model.n_layers, -1)]):
            _, prompt_cache = bridge(ids[:, :-1], return_type="logits_and_cache")
    out = []
    for n, label_hooks in enumerate(hook_sets):
        with bridge.hooks(fwd_hooks=_as_hook_list(label_hooks)):
            if prompt_cache is None:
                logits = bridge(rows)
            else:
                cache = prompt_cache if n == len(hook_sets) - 1 else copy_cache(prompt_cache)
                cache.batch_repeat_interleave(len(toks))
                logits, _ = bridge(rows, return_type="logits_and_cache", past_key_values=cache)
        out.append((logits, where))
    return out


@dataclass(frozen=True)
class LabelScorer:
    """A classification task's label choice under the model as it is (hooks active apply): each
    label's mean log-probability per token (:data:`LABEL_SCORING`); the best label wins."""

    info: dict = field(default_factory=dict)

    def scores(self, model: Model, prompt: Any, labels: Sequence[str]) -> list[float]:
        return [float(lp.mean()) for lp, _ in label_token_logprobs(model, prompt, labels)]

    def choose(self, model: Model, prompt: Any, labels: Sequence[str], example: Any = None) -> tuple[str, dict]:
        """The best label and facts to record (the top five labels' scores, the margin to the
        next). ``example``: the query (a scorer may read it; these scores need only the prompt)."""
        scores = self.scores(model, prompt, labels)
        order = sorted(range(len(labels)), key=lambda i: -scores[i])
        margin = scores[order[0]] - scores[order[1]] if len(order) > 1 else math.inf
        return labels[order[0]], {"label_margin": round(margin, 4),
                                  "label_scores": {labels[i]: round(scores[i], 4) for i in order[:5]}}


PLAIN_LABELS = LabelScorer()

_UNRECORDED = "record"  # field metadata key: False = not part of what a run records (e.g. a cache switch)


@dataclass
class Method:
    """Base class: the pipeline, with the parts of the ``generic`` method (no profile, no
    intervention, greedy)."""

    settings: GenerationSettings = field(default_factory=GenerationSettings)
    name: ClassVar[str] = "method"
    uses_profile: ClassVar[bool] = False
    checks: ClassVar[dict[str, Check]] = {}  # what each setting accepts (see Check); merged along the bases
    # The task kinds the method works on (None: every kind); the runner refuses others before any work.
    kinds: ClassVar[tuple[str, ...] | None] = None
    # How a classification task's prediction is made (LABEL_MODES); a run sets it on its methods
    # and records it with the run's settings (not a setting of the method).
    label_mode: ClassVar[str] = "score"
    labels_only: ClassVar[bool] = False  # True: always the label choice (a method that cannot generate)

    # ---- its settings ----
    def setting_checks(self) -> dict[str, Check]:
        """``{field: Check}`` of every setting that declares one (this class's and its bases')."""
        merged: dict[str, Check] = {}
        for klass in reversed(type(self).__mro__):
            merged.update(klass.__dict__.get("checks", {}))
        if "layer" in {f.name for f in fields(self)}:
            merged.setdefault("layer", _LAYER)
        return merged

    def check_settings(self, model: Any = None) -> None:
        """Raise a ValueError (FileNotFoundError for a missing file) naming ``METHOD.FIELD``
        for a setting outside what the method accepts; with ``model``, also what depends on
        its shape (a layer index). Called when a setting changes and before a run starts."""
        types = {f.name: str(f.type) for f in fields(self)}
        for name, check in self.setting_checks().items():
            if name in types:
                check(f"{self.name}.{name}", getattr(self, name), model, optional="None" in types[name])

    # ---- the parts a method supplies ----
    def prepare_run(self, model: Model, examples: list, dataset: Any) -> None:
        """Once per run, before any user: state shared by all users (e.g. preference heads)."""

    def prepare_user(self, model: Model, user_id: str, examples: list) -> Any:
        """Once per user, before their examples: per-user state (e.g. a steering vector)."""
        if self.uses_profile:
            for ex in examples:
                ex.require_profile()
        return None

    def prompt(self, model: Model, example: Any) -> tuple[Any, dict]:
        """The prompt for ``example`` and facts about it (items used, truncation)."""
        k = self.settings.k if self.uses_profile else 0
        return build_prompt(model, example, k=k, by=self.settings.retrieval, reserve=self.settings.max_new_tokens)

    def intervention(self, model: Model, example: Any, state: Any) -> tuple[HookSet | None, dict]:
        """What acts on the model while this example is decoded (or None), and facts about it."""
        return None, {}

    def decoder(self) -> Decoder:
        return GREEDY

    def label_scorer(self) -> LabelScorer:
        """How the method scores a classification task's labels (label choice): the model as the
        intervention leaves it; DPS contrasts the intact and the head-masked model."""
        return PLAIN_LABELS

    # ---- the pipeline ----
    def generate(self, model: Model, example: Any, state: Any) -> tuple[str, dict]:
        """Prompt -> intervention -> decoder -> first line. Returns the output and the facts to
        store with it. Decoding stops once the first line is complete: the rest would be
        thrown away. On a task with labels: the label choice (see the module's docstring)."""
        prompt, info = self.prompt(model, example)
        intervention, facts = self.intervention(model, example, state)
        labels = task_labels(example.task)
        if labels and (self.label_mode == "score" or self.labels_only):
            scorer = self.label_scorer()
            if intervention is None:
                label, chosen = scorer.choose(model, prompt, labels, example)
            else:
                with intervention:
                    label, chosen = scorer.choose(model, prompt, labels, example)
            return label, {**info, **facts, **scorer.info, **chosen}
        decoder = self.decoder()
        n = self.settings.max_new_tokens
        # A decoder written before `until` existed still works; it just decodes all n tokens.
        stop = {"until": first_line_complete} if "until" in inspect.signature(decoder.decode).parameters else {}
        if intervention is None:
            text = decoder.decode(model, prompt, n, **stop)
        else:
            with intervention:
                text = decoder.decode(model, prompt, n, **stop)
        if labels:  # label_mode "generate": the free answer, parsed into a label
            line = first_line(text)
            return parse_label(line, labels), {**info, **facts, **decoder.info, "generated": line}
        return first_line(text), {**info, **facts, **decoder.info}

    def generate_batch(self, model: Model, examples: Sequence[Any], states: Sequence[Any]) -> list[tuple[str, dict]]:
        """:meth:`generate` for several examples (``states``: each one's user state) in one batch:
        each row with its own prompt and intervention, decoded together when the decoder can
        (``decode_batch``); a classification task's label choice, and a decoder without
        ``decode_batch``, go one example at a time. The same outputs as :meth:`generate`, up to
        float rounding."""
        decoder = self.decoder()
        labels = task_labels(examples[0].task) if examples else ()
        if len(examples) < 2 or labels or not hasattr(decoder, "decode_batch"):
            return [self.generate(model, ex, st) for ex, st in zip(examples, states)]
        prompts, infos, ivs = [], [], []
        for ex, st in zip(examples, states):
            prompt, info = self.prompt(model, ex)
            intervention, facts = self.intervention(model, ex, st)
            prompts.append(prompt)
            infos.append({**info, **facts, **decoder.info})
            ivs.append(intervention)
        texts = decoder.decode_batch(model, prompts, self.settings.max_new_tokens, until=first_line_complete,
                                     interventions=ivs)
        return [(first_line(t), info) for t, info in zip(texts, infos)]

    def describe(self) -> dict:
        """The method's settings, as a run records them: name, shared settings, own fields."""
        own = {f.name: getattr(self, f.name) for f in fields(self)
               if f.name != "settings" and f.metadata.get(_UNRECORDED, True)}
        return {"name": self.name, **asdict(self.settings), **own}

    def __repr__(self) -> str:
        own = ", ".join(f"{k}={v!r}" for k, v in self.describe().items()
                        if k not in ("name", *asdict(self.settings)))
        return f"{type(self).__name__}({self.name!r}{', ' + own if own else ''})"


def unrecorded(default: Any) -> Any:
    """A method field that does not change outputs (e.g. whether to use a disk cache), so a
    run does not record it or refuse to resume over it."""
    return field(default=default, metadata={_UNRECORDED: False})


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


@dataclass(frozen=True)
class MajorityLabels(LabelScorer):
    """The label choice of ``majority``: each label scored by how often the user's history holds
    it (the task's more frequent label overall ahead on a tie); the model is not asked."""

    def choose(self, model: Model, prompt: Any, labels: Sequence[str], example: Any = None) -> tuple[str, dict]:
        spec = TASKS.get(example.task, GENERIC)
        counts = Counter(it.get(spec.output_field) for it in example.profile)
        if not any(counts[label] for label in labels):
            raise ValueError(f"example {example.id}: no labelled item in the user's history to take the majority of")
        rank = {label: i for i, label in enumerate(spec.labels_by_frequency or labels)}
        best = max(labels, key=lambda label: (counts[label], -rank.get(label, len(rank))))
        return best, {"label_votes": counts[best]}


@register_method
@dataclass
class Majority(Method):
    """A classification baseline: the label the user's history holds most often, whatever the
    input (the history-majority rule). Its label choice counts the history's labels
    (:class:`MajorityLabels`) instead of asking the model; it never generates."""

    name = "majority"
    uses_profile = True
    kinds = ("classification",)
    labels_only = True

    def prompt(self, model: Model, example: Any) -> tuple[Any, dict]:
        return None, {"k_used": len(example.profile)}  # no prompt: the model is not asked

    def label_scorer(self) -> LabelScorer:
        return MajorityLabels()


@dataclass
class Combination(Method):
    """One method's prompt and intervention, decoded by another's decoder.

    Subclasses name the two parts: ``parts = ("steerx-caa", "dps")``. Each part is built with
    its own defaults (and the run's shared settings), so a combination can be read against
    both of its parts in one table.
    """

    uses_profile = True
    parts: ClassVar[tuple[str, str]] = ("", "")
    heads_file: str | None = None  # saved PreferenceScores for the decoder's heads (default: as ``dps``)

    def __post_init__(self) -> None:
        load_plugins()
        steering, decoding = self.parts
        self.steering = METHODS[steering](settings=self.settings)
        self.decoding = METHODS[decoding](settings=self.settings, heads_file=self.heads_file)

    def check_settings(self, model: Any = None) -> None:
        super().check_settings(model)
        for part in (self.steering, self.decoding):
            part.check_settings(model)

    def describe(self) -> dict:
        shared = set(asdict(self.settings))
        inner = lambda m: {k: v for k, v in m.describe().items() if k not in shared}  # noqa: E731
        return {"name": self.name, **asdict(self.settings), "steering": inner(self.steering),
                "decoding": inner(self.decoding)}

    def prepare_run(self, model: Model, examples: list, dataset: Any) -> None:
        self.steering.prepare_run(model, examples, dataset)
        self.decoding.prepare_run(model, examples, dataset)

    def prepare_user(self, model: Model, user_id: str, examples: list) -> Any:
        return self.steering.prepare_user(model, user_id, examples)

    def prompt(self, model: Model, example: Any) -> tuple[Any, dict]:
        return self.steering.prompt(model, example)

    def intervention(self, model: Model, example: Any, state: Any) -> tuple[HookSet | None, dict]:
        return self.steering.intervention(model, example, state)

    def decoder(self) -> Decoder:
        return self.decoding.decoder()

    def label_scorer(self) -> LabelScorer:
        return self.decoding.label_scorer()


# Modules that register more methods when imported.
PLUGIN_MODULES = ("workbench.methods.dps", "workbench.methods.steerx", "workbench.methods.fints",
                  "workbench.methods.combined", "workbench.methods.lora")


def plugin_modules() -> list:
    """The method modules that are installed, imported (importing registers their methods)."""
    found = []
    for mod in PLUGIN_MODULES:
        try:
            found.append(importlib.import_module(mod))
        except ModuleNotFoundError as e:
            if e.name != mod:  # the plug-in exists but something it needs is missing: say so
                raise
    return found


def load_plugins() -> None:
    plugin_modules()


def available_methods() -> list[str]:
    """Names of every registered method (built-in and plug-in)."""
    load_plugins()
    return sorted(METHODS)


def make_methods(names: list[str], settings: GenerationSettings) -> list[Method]:
    """The methods ``names``, built with the run's shared ``settings``."""
    if isinstance(names, str):
        raise ValueError(f"give method names as a list, e.g. [{names!r}], not a string")
    if not names:
        raise ValueError(f"no methods given; name at least one of {available_methods()}")
    load_plugins()
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; available: {sorted(METHODS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"method listed twice in {names}")
    return [METHODS[n](settings=settings) for n in names]
