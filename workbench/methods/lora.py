"""LoRA baselines (OPPU-style): a peft adapter fitted to histories, switched on while decoding.

=================  ===================================  ====================
method             adapter trained on                   prompt
=================  ===================================  ====================
``lora-user``      the user's own profile items         the input alone
``lora-user+rag``  the same adapter                     the ``rag`` prompt (OPPU's setting)
``lora-task``      the tuning users' profile items      the input alone
``lora-task+rag``  the same adapter                     the ``rag`` prompt
``lora-user+dps``  ``lora-user``'s adapter              the input alone, decoded with ``dps``
=================  ===================================  ====================

Training records are the task's own ``(input -> output)`` pairs of history items (article ->
headline, abstract -> title, text -> category), each input rendered as the prompt the method
generates with for a query without profile (``build_prompt(..., k=0)``), the user's output as
the target. Only profile items are read — the items all of a user's queries share
(:func:`workbench.data.history.user_history`) — never a query or its gold. ``lora-task`` is task
adaptation without personalization: one adapter per run, from the tuning users
(:func:`workbench.data.splits.split_users`) only, so a gain of ``lora-user`` over it is
personalization, not task fitting.

The adapter covers the attention (q, k, v, o) and MLP (gate, up, down) projections of every
layer by default (``modules="all"``, the usual LoRA setting for personalization, OPPU's
included): the preference heads DPS uses live in attention, the steering vectors act on what
attention and MLP write, and covering both lets :func:`workbench.science.lora.adapter_effects`
say which of them the fitted adapter uses. ``modules="attn"`` / ``"mlp"`` restrict it.

Adapters are cached on disk per model, records (the data hash) and settings, like steering
vectors; a cached adapter of another model is refused and rebuilt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from workbench._util import cache_file, cached, stable_hash
from workbench.core.hooks import HookSet
from workbench.core.model import Model
from workbench.data.history import held_out_example, item_fields, task_of, user_history
from workbench.methods import Check, Combination, Method, register_method, unrecorded
from workbench.science.lora import MODULES, LoraAdapter, check_lora_settings, train_lora

LORA_GRID: dict[str, list] = {"rank": [4, 8], "lr": [2e-4, 1e-3], "epochs": [1, 2]}
"""The grid the LoRA methods are tuned over (tuning users only), with the defaults in it."""


def lora_records(model: Model, task: str, items: list[dict], user_id: str = "", reserve: int = 32) -> list[tuple]:
    """``(prompt, output)`` per history item of ``task``: the item's input as the prompt a query
    without profile gets (the generic prompt, fitted to the context), the user's output as target."""
    from workbench.data.prompts import build_prompt

    target = item_fields(task)[1]
    records = []
    for it in items:
        ex = held_out_example(it, (), user_id=user_id, task=task)
        out = str(it[target]).strip()
        n_out = len(model.tokenizer(out, add_special_tokens=False).input_ids)
        prompt, _ = build_prompt(model, ex, k=0, reserve=max(reserve, n_out + 1))
        # a plain-text prompt ends in "Answer:"; the answer follows after a space (as when decoding)
        space = "" if (not isinstance(prompt, str) or model.has_chat_template) else " "
        records.append((prompt, space + out))
    return records


@dataclass
class LoraMethod(Method):
    """Shared by the LoRA methods: an adapter (per user or per run), on while decoding."""

    uses_profile = True
    rag: ClassVar[bool] = False
    trained_on: ClassVar[str] = "user"  # "user": their profile items; "task": the tuning users'
    rank: int = 8
    alpha: float = 16.0
    lr: float = 5e-4
    epochs: int = 2
    batch_size: int = 4
    dropout: float = 0.0
    modules: str = "all"
    max_records: int = 64  # per user (the most recent); lora-task: over all tuning users
    seed: int = 0
    cache: bool = unrecorded(True)
    checks = {"rank": Check(whole=True, minimum=1), "alpha": Check(above=0), "lr": Check(above=0),
              "epochs": Check(whole=True, minimum=1), "batch_size": Check(whole=True, minimum=1),
              "dropout": Check(minimum=0, below=1), "modules": Check(choices=tuple(MODULES)),
              "max_records": Check(whole=True, minimum=1), "seed": Check(whole=True)}

    def __post_init__(self) -> None:
        self.check_settings()  # a bad value is an error when made, long before any training

    def describe(self) -> dict:
        where = ("the user's profile items" if self.trained_on == "user"
                 else "the tuning users' profile items (users='tune')")
        return {**super().describe(), "rag_prompt": self.rag, "adapter": f"LoRA (peft) on {where}"}

    def train_settings(self) -> dict:
        return {"rank": self.rank, "alpha": self.alpha, "lr": self.lr, "epochs": self.epochs,
                "batch_size": self.batch_size, "dropout": self.dropout, "modules": self.modules, "seed": self.seed}

    def _adapter(self, model: Model, kind: str, who: str, records: list[tuple], built: dict) -> LoraAdapter:
        """The adapter for ``records``, from the cache when it holds one for the same model,
        records and settings."""
        self.check_settings(model)
        settings = self.train_settings()
        check_lora_settings(**settings)
        key = stable_hash([model.name, str(model.dtype), kind, settings, records], length=None)[:16]
        path = cache_file("lora", model.name, f"adapters/{kind}-{who}-{key}.pt")
        return cached(path, lambda p: LoraAdapter.load(p, model=model),
                      lambda: train_lora(model, records, built={"data_hash": key, **built}, **settings),
                      lambda ad, p: ad.save(p, overwrite=True), enabled=self.cache)

    def user_records(self, model: Model, user_id: str, examples: list) -> list[tuple]:
        """What the user's adapter is trained on: their ``max_records`` most recent history items
        as the task's ``(prompt, output)`` records."""
        items = user_history(examples)[-self.max_records:]
        return lora_records(model, task_of(examples), items, user_id, reserve=self.settings.max_new_tokens)

    def user_adapter(self, model: Model, user_id: str, examples: list) -> LoraAdapter:
        """The user's own adapter (the same for ``lora-user`` and ``lora-user+rag``)."""
        records = self.user_records(model, user_id, examples)
        return self._adapter(model, "user", user_id, records, {"user": user_id, "task": task_of(examples)})

    def prompt(self, model: Model, example: Any) -> tuple[Any, dict]:
        from workbench.data.prompts import build_prompt

        return build_prompt(model, example, k=self.settings.k if self.rag else 0, by=self.settings.retrieval,
                            reserve=self.settings.max_new_tokens)

    def intervention(self, model: Model, example: Any, state: LoraAdapter) -> tuple[HookSet, dict]:
        losses = state.built.get("losses") or [float("nan")]
        return state.apply(model), {"lora_records": state.built.get("n_records"), "lora_loss": losses[-1],
                                    "lora_data": state.built.get("data_hash")}


@dataclass
class _UserLora(LoraMethod):
    def prepare_user(self, model: Model, user_id: str, examples: list) -> LoraAdapter:
        super().prepare_user(model, user_id, examples)
        return self.user_adapter(model, user_id, examples)


@register_method
@dataclass
class LoraUser(_UserLora):
    """The input alone, decoded with an adapter trained on the user's own history."""

    name = "lora-user"


@register_method
@dataclass
class LoraUserRag(_UserLora):
    """The ``rag`` prompt, decoded with the user's adapter (OPPU's setting)."""

    name = "lora-user+rag"
    rag = True


@dataclass
class _TaskLora(LoraMethod):
    """One adapter per run, from the tuning users' histories only (task adaptation)."""

    trained_on = "task"
    max_records: int = 128

    def prepare_run(self, model: Model, examples: list, dataset: Any) -> None:
        from workbench.data.splits import split_users

        # The tuning users of the whole dataset, also when the run is cut to evaluation users,
        # so the adapter is the same whichever side a run reports on.
        pool = getattr(dataset, "whole", dataset)
        pool = list(pool) if pool is not None else list(examples)
        try:
            tune = split_users(pool, "tune")
        except ValueError as e:
            raise ValueError(f"{self.name} trains its adapter on the tuning users' histories, and this dataset has "
                             f"none ({e}); run it on a dataset with tuning users (workbench.data.splits)") from None
        by_user: dict[str, list] = {}
        for ex in tune:
            if ex.profile:
                by_user.setdefault(ex.user_id, []).append(ex)
        histories = {}
        for user_id in sorted(by_user):
            try:
                histories[user_id] = user_history(by_user[user_id])
            except ValueError:  # no usable shared item: nothing to learn from this user
                continue
        if not histories:
            raise ValueError("no tuning user has a usable history to train lora-task's adapter on")
        task = task_of([ex for exs in by_user.values() for ex in exs])
        # round-robin over users, most recent items first, up to max_records
        picked: list[tuple[str, dict]] = []
        queues = {u: list(reversed(h)) for u, h in histories.items()}
        while len(picked) < self.max_records and any(queues.values()):
            for u in sorted(queues):
                if queues[u] and len(picked) < self.max_records:
                    picked.append((u, queues[u].pop(0)))
        records = [r for u, it in picked
                   for r in lora_records(model, task, [it], u, reserve=self.settings.max_new_tokens)]
        self._task = self._adapter(model, "task", "tune", records,
                                   {"users": len({u for u, _ in picked}), "task": task})

    def prepare_user(self, model: Model, user_id: str, examples: list) -> LoraAdapter:
        super().prepare_user(model, user_id, examples)
        adapter = getattr(self, "_task", None)
        if adapter is None or adapter.model != model.name:
            raise RuntimeError(f"{self.name}: prepare_run(model, examples, dataset) trains the task adapter; "
                               "call it before prepare_user")
        return adapter


@register_method
@dataclass
class LoraTask(_TaskLora):
    """The input alone, decoded with the task adapter (no personalization)."""

    name = "lora-task"
    uses_profile = False


@register_method
@dataclass
class LoraTaskRag(_TaskLora):
    """The ``rag`` prompt, decoded with the task adapter."""

    name = "lora-task+rag"
    rag = True


@register_method
@dataclass
class LoraUserDps(Combination):
    """The user's adapter on while decoding with ``dps`` (the adapter acts in both rows of DPS's batch)."""

    name = "lora-user+dps"
    parts = ("lora-user", "dps")
