"""`Model`: a TransformerBridge plus the tokenizer and the few conveniences every notebook needs."""

from __future__ import annotations

import warnings
from contextlib import nullcontext
from typing import Any, Callable, Sequence

import torch

from workbench._util import check_int, check_sampling, empty_kv_cache
from workbench.core import _decoding, _fastpath
from workbench.core.hooks import last_positions_hook

Messages = Sequence[dict]
Prompt = "str | Messages | torch.Tensor"

# Chat end-of-turn markers that should stop generation even when the tokenizer's EOS differs.
_END_OF_TURN = ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>")


class Model:
    """A language model wrapped for interpretability work.

    Attributes:
        bridge: the TransformerLens ``TransformerBridge`` (hook points such as
            ``blocks.3.attn.hook_z``; ``run_with_hooks``, ``run_with_cache``, ``hooks()``).
        tokenizer: the Hugging Face tokenizer.
        name: the name it was loaded under; ``source``: where the weights came from.
        n_layers, n_heads, n_kv_heads, d_model, d_head, n_ctx: shape facts.

    Build one with :func:`workbench.load_model` (or :meth:`Model.from_hf` for a model
    you loaded yourself, e.g. sharded with ``device_map``).
    """

    def __init__(self, bridge: Any, tokenizer: Any, name: str, source: str = "", hf_name: str | None = None):
        self.bridge = bridge
        self.tokenizer = tokenizer
        self.name = name
        self.source = source
        self.hf_name = hf_name or name
        cfg = bridge.cfg
        self.n_layers: int = int(cfg.n_layers)
        self.n_heads: int = int(cfg.n_heads)
        self.n_kv_heads: int = int(getattr(cfg, "n_key_value_heads", None) or cfg.n_heads)
        self.d_model: int = int(cfg.d_model)
        self.d_head: int = int(cfg.d_head)
        self.n_ctx: int = int(cfg.n_ctx)
        self.stop_token_ids: list[int] = self._stop_tokens()

    @classmethod
    def from_hf(cls, hf_model: Any, tokenizer: Any, name: str | None = None, source: str = "", hf_name: str | None = None) -> "Model":
        """Wrap an already-loaded Hugging Face causal LM (it is modified in place by the bridge)."""
        from transformer_lens.model_bridge import TransformerBridge

        name = name or getattr(hf_model.config, "_name_or_path", None) or "hf-model"
        if getattr(tokenizer, "init_kwargs", None) is not None:
            tokenizer.init_kwargs.setdefault("name_or_path", name)
        param = next(hf_model.parameters())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TransformerLens explains its defaults on every boot
            bridge = TransformerBridge.boot_transformers(
                hf_name or name, hf_model=hf_model, tokenizer=tokenizer, device=param.device, dtype=param.dtype
            )
        bridge.eval()
        return cls(bridge, tokenizer, name=name, source=source, hf_name=hf_name)

    # ---- facts -------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.bridge.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.bridge.parameters()).dtype

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def __repr__(self) -> str:
        gqa = f" over {self.n_kv_heads} KV heads" if self.n_kv_heads != self.n_heads else ""
        dt = str(self.dtype).replace("torch.", "")
        return (
            f"Model({self.name!r}: {self.n_layers} layers x {self.n_heads} heads{gqa}, "
            f"d_model={self.d_model}, d_head={self.d_head}, n_ctx={self.n_ctx}, {dt} on {self.device})"
        )

    def _stop_tokens(self) -> list[int]:
        ids: list[int] = []
        tok = self.tokenizer
        if tok.eos_token_id is not None:
            ids.append(int(tok.eos_token_id))
        gen_cfg = getattr(getattr(self.bridge, "original_model", None), "generation_config", None)
        eos = getattr(gen_cfg, "eos_token_id", None)
        ids.extend([eos] if isinstance(eos, int) else list(eos or []))
        vocab = tok.get_vocab()
        ids.extend(vocab[t] for t in _END_OF_TURN if t in vocab)
        return sorted(set(int(i) for i in ids))

    # ---- prompts -----------------------------------------------------------------------
    def format_chat(self, messages: "str | Messages", system: str | None = None, add_generation_prompt: bool = True) -> str:
        """Render a conversation with the model's chat template.

        ``messages`` is a user message (str) or a list of ``{"role", "content"}`` dicts;
        ``system`` prepends a system message. The returned text ends with the assistant
        header, ready for generation.
        """
        if not self.has_chat_template:
            raise ValueError(
                f"{self.name!r} has no chat template; pass plain text with chat=False "
                "(or give the tokenizer a chat_template)"
            )
        msgs = [{"role": "user", "content": messages}] if isinstance(messages, str) else [dict(m) for m in messages]
        for i, m in enumerate(msgs):
            if not {"role", "content"} <= m.keys():
                raise ValueError(f"message {i} needs 'role' and 'content' keys, got {sorted(m)}")
        if system is not None:
            msgs = [{"role": "system", "content": system}] + msgs
        return self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=add_generation_prompt)

    def encode(self, prompt: Any, chat: bool | None = None) -> torch.Tensor:
        """Token ids ``[1, pos]`` on the model's device for a prompt.

        ``prompt``: text, a list of chat messages, or token ids. Text is wrapped as one
        user message with the chat template when the model has one (``chat=None``), always
        (``chat=True``) or never (``chat=False``, BOS prepended).
        """
        if isinstance(prompt, torch.Tensor):
            return self._check_ids(prompt).to(self.device)
        if not isinstance(prompt, (str, list, tuple)):
            raise ValueError(f"a prompt is text, a list of chat messages or token ids, got {type(prompt).__name__}")
        if not isinstance(prompt, str):
            text = self.format_chat(prompt)
        elif chat or (chat is None and self.has_chat_template):
            text = self.format_chat(prompt)
        else:
            return self.bridge.to_tokens(prompt, prepend_bos=True).to(self.device)
        # The template already contains the BOS-like markers; don't add another.
        ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
        return ids.to(self.device)

    def _check_ids(self, prompt: torch.Tensor) -> torch.Tensor:
        # Bad ids would fail deep inside the embedding (or index out of range on a GPU).
        ids = prompt if prompt.dim() == 2 else prompt.unsqueeze(0)
        if ids.dim() != 2 or 0 in ids.shape:
            raise ValueError(f"token ids must have shape [pos] or [1, pos] with pos >= 1, got {tuple(prompt.shape)}")
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise ValueError(f"token ids must be integers, got a {ids.dtype} tensor; encode text with model.encode")
        vocab = int(getattr(self.bridge.cfg, "d_vocab", 0) or 0)
        vocab = vocab if vocab > 0 else 2**62  # a config without the vocabulary size: no upper bound
        if int(ids.min()) < 0 or int(ids.max()) >= vocab:
            raise ValueError(f"token ids must be in 0..{vocab - 1} ({self.name!r}'s vocabulary), got "
                             f"{int(ids.min())}..{int(ids.max())}")
        return ids

    def check_fits(self, n_tokens: int, extra: int = 0, what: str = "prompt") -> None:
        """Raise a clear ``ValueError`` when ``n_tokens + extra`` exceeds the context window."""
        if n_tokens + extra > self.n_ctx:
            more = f" plus {extra} tokens to generate" if extra else ""
            raise ValueError(
                f"the {what} is {n_tokens} tokens{more}, longer than {self.name!r}'s context of "
                f"{self.n_ctx} tokens; shorten the text (e.g. fewer profile items) or lower max_new_tokens"
            )

    # ---- generation and scoring ----------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        prompt: Any,
        max_new_tokens: int = 64,
        *,
        chat: bool | None = None,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        until: Callable[[str], bool] | None = None,
    ) -> str:
        """Continue ``prompt`` and return only the new text.

        Greedy (deterministic) unless ``do_sample=True``; with sampling, ``seed`` makes
        the draw repeatable. Hooks active in the surrounding context (``mask_heads``,
        ``steer``) apply to every step, including KV-cached ones. ``until`` stops decoding
        early, once it returns True for the text so far (e.g.
        :func:`workbench.data.prompts.first_line_complete`); the tokens before that point are
        the same as without it.

        With no hook attached anywhere and greedy decoding, the steps run through the
        original Hugging Face modules (same weights, no hook points, SDPA attention): the
        speed of a plain ``transformers`` ``generate``, and the same tokens as the bridge.
        """
        ids = self.encode(prompt, chat=chat)
        return self.tokenizer.decode(self.generate_tokens(ids, max_new_tokens, do_sample=do_sample, temperature=temperature,
                                                          top_p=top_p, top_k=top_k, seed=seed, until=until),
                                     skip_special_tokens=True).strip()

    @torch.no_grad()
    def generate_tokens(self, ids: torch.Tensor, max_new_tokens: int = 64, *, do_sample: bool = False,
                        temperature: float = 1.0, top_p: float | None = None, top_k: int | None = None,
                        seed: int | None = None, until: Callable[[str], bool] | None = None) -> torch.Tensor:
        """Like :meth:`generate` on token ids ``[1, pos]``; returns the new ids (stop token excluded)."""
        max_new_tokens = check_int("max_new_tokens", max_new_tokens, minimum=1)
        check_sampling(temperature, top_p, top_k, do_sample, seed)
        ids = self._check_ids(ids).to(self.device)
        self.check_fits(ids.shape[-1], max_new_tokens)
        if until is not None and not callable(until):
            raise ValueError(f"until must be a function of the text so far (str -> bool), got {type(until).__name__}")
        stopping = _text_stop(self.tokenizer, ids.shape[-1], until) if until is not None else None
        fast = None if do_sample else self._fast_view()
        if fast is not None:
            view, active = fast
            with _fastpath.installed(self, [(iv, _fastpath.every_row) for iv in active]):
                out = view.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                    do_sample=False, eos_token_id=self.stop_token_ids, pad_token_id=self.stop_token_ids[0],
                                    stopping_criteria=[stopping] if stopping is not None else None)
            return self._new_tokens(out, ids)
        # The prompt's pass needs the next-token logits of its last position only; the
        # vocabulary projection of every other position is most of a small model's prefill
        # (Hugging Face's generate skips it the same way). Later steps have one position.
        last_only = last_positions_hook(self.n_layers, -1)
        kwargs = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_p=top_p,
                      top_k=top_k, eos_token_id=self.stop_token_ids, stop_at_eos=True, verbose=False)
        if stopping is not None:
            kwargs["stopping_criteria"] = stopping
        with self.bridge.hooks(fwd_hooks=[last_only]):
            if do_sample and seed is not None:
                with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                    torch.manual_seed(seed)
                    out = self.bridge.generate(ids, **kwargs)
            else:
                out = self.bridge.generate(ids, **kwargs)
        return self._new_tokens(out, ids)

    def _new_tokens(self, out: torch.Tensor, ids: torch.Tensor, row: int = 0) -> torch.Tensor:
        new = out[row, ids.shape[-1]:]
        stops = torch.isin(new, torch.tensor(self.stop_token_ids, device=new.device))
        if stops.any():
            new = new[: int(stops.nonzero()[0, 0])]
        return new

    def _fast_view(self) -> "tuple[Any, list] | None":
        """The hook-free Hugging Face view of the weights (see ``workbench.core._plain``) and the
        active interventions to run on it (``with steer(...)``, ``with mask_heads(...)``: those
        whose hooks have a place on the view), or None when a hook the view would skip is attached
        — one of another intervention, or anyone else's; then the bridge runs, hooks and all."""
        from workbench.core import _plain

        if "_plain" not in self.__dict__:
            original = getattr(self.bridge, "original_model", None)
            self._plain = _plain.unbridged(original) if original is not None else None
            if self._plain is not None:
                self._bypassed = _plain.hooked_modules(self.bridge, self._plain)
        if self._plain is None:
            return None
        active, owned = [], set()
        for intervention, keys in self.__dict__.get("_active", []):
            if _fastpath.supported(self, intervention):
                active.append(intervention)
                owned |= keys
        if _plain.any_hooks(*self._bypassed, owned=owned):
            return None
        return self._plain, active

    @torch.no_grad()
    def _generate_keeping_prompt(self, prompt: Any, max_new_tokens: int,
                                 until: Callable[[str], bool] | None = None) -> tuple[str, "tuple[torch.Tensor, Any] | None"]:
        """:meth:`generate` (greedy) and, when the hook-free view ran it with nothing attached, the
        prompt's ids and its KV cache (every layer, the prompt's positions only: decoding ran on a
        copy), for a later pass over the same prompt to start from instead of recomputing it."""
        view = self._plain_view()
        if view is None:
            return self.generate(prompt, max_new_tokens, until=until), None
        max_new_tokens = check_int("max_new_tokens", max_new_tokens, minimum=1)
        ids = self.encode(prompt).to(self.device)
        self.check_fits(ids.shape[-1], max_new_tokens)
        cache = empty_kv_cache()
        n = ids.shape[-1]
        logits = view(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=torch.arange(n, device=ids.device)[None],
                      past_key_values=cache, use_cache=True, logits_to_keep=1).logits
        decode = lambda t: self.tokenizer.decode(t, skip_special_tokens=True)  # noqa: E731
        rows = _decoding.greedy_rows(view, [ids], max_new_tokens, self.stop_token_ids, decode, until=until,
                                     prefilled=(_decoding.copy_cache(cache), logits))
        return decode(rows[0]).strip(), (ids, cache)

    def _plain_view(self) -> Any | None:
        """The hook-free view when nothing at all is hooked, else None."""
        fast = self._fast_view()
        return fast[0] if fast is not None and not fast[1] else None

    @torch.no_grad()
    def generate_batch(self, prompts: Sequence[Any], max_new_tokens: int = 64, *, chat: bool | None = None,
                       until: Callable[[str], bool] | None = None,
                       interventions: "Sequence[Any] | None" = None) -> list[str]:
        """Greedy continuations of several prompts in one batch; ``[model.generate(p) for p in prompts]``
        token for token, up to float rounding.

        The prompts are left-padded (the attention mask and position ids keep each row as if
        alone), and each row stops on its own (a stop token, or ``until`` on its text) and then
        leaves the batch, so it costs nothing more.
        ``interventions``: one per prompt (a steering vector's ``apply(...)``, a head mask,
        ``a + b``, or None), each acting on its own row only. Interventions whose hooks can run on
        the hook-free view (steering vectors and head masks) run there, at plain ``transformers``
        speed; rows with any other intervention run in batches of the rows sharing it.
        """
        ids = [self.encode(p, chat=chat) for p in prompts]
        rows = self.generate_tokens_batch(ids, max_new_tokens, until=until, interventions=interventions)
        return [self.tokenizer.decode(r, skip_special_tokens=True).strip() for r in rows]

    @torch.no_grad()
    def generate_tokens_batch(self, ids: Sequence[torch.Tensor], max_new_tokens: int = 64, *,
                              until: Callable[[str], bool] | None = None,
                              interventions: "Sequence[Any] | None" = None) -> list[torch.Tensor]:
        """:meth:`generate_batch` on token ids (each ``[1, pos]``); the new ids of each row."""
        if isinstance(ids, torch.Tensor) or not isinstance(ids, Sequence) or not len(ids):
            raise ValueError("give the prompts as a non-empty list of token-id tensors, one per prompt")
        max_new_tokens = check_int("max_new_tokens", max_new_tokens, minimum=1)
        if until is not None and not callable(until):
            raise ValueError(f"until must be a function of the text so far (str -> bool), got {type(until).__name__}")
        ids = [self._check_ids(i).to(self.device) for i in ids]
        for i in ids:
            self.check_fits(i.shape[-1], max_new_tokens)
        ivs = list(interventions) if interventions is not None else [None] * len(ids)
        if len(ivs) != len(ids):
            raise ValueError(f"{len(ivs)} interventions for {len(ids)} prompts; give one per prompt (None for none)")
        out: list[torch.Tensor | None] = [None] * len(ids)
        fast = self._fast_view()
        batched = [r for r, iv in enumerate(ivs)
                   if fast is not None and (iv is None or _fastpath.supported(self, iv))]
        # Rows whose intervention must run on the whole batch (e.g. an adapter, or anything while
        # other hooks are attached): one batch per such intervention, with it switched on.
        for iv in {id(ivs[r]): ivs[r] for r in range(len(ids)) if r not in batched}.values():
            rows = [r for r in range(len(ids)) if r not in batched and ivs[r] is iv]
            with iv if iv is not None else nullcontext():
                if self._fast_view() is None:
                    for r in rows:
                        out[r] = self.generate_tokens(ids[r], max_new_tokens, until=until)
                else:
                    for r, new in zip(rows, self.generate_tokens_batch([ids[r] for r in rows], max_new_tokens, until=until)):
                        out[r] = new
        if batched:
            view, active = fast
            live = _decoding.LiveRows(len(batched))
            plan = [(iv, _fastpath.every_row) for iv in active]
            groups = {id(ivs[r]): (ivs[r], []) for r in batched if ivs[r] is not None}
            for j, r in enumerate(batched):
                if ivs[r] is not None:
                    groups[id(ivs[r])][1].append(j)
            plan += [(iv, live.rows(js)) for iv, js in groups.values()]
            decode = lambda t: self.tokenizer.decode(t, skip_special_tokens=True)  # noqa: E731
            with _fastpath.installed(self, plan):
                rows = _decoding.greedy_rows(view, [ids[r] for r in batched], max_new_tokens, self.stop_token_ids,
                                             decode, until=until, live=live)
            for j, r in enumerate(batched):
                out[r] = torch.tensor(rows[j], dtype=ids[r].dtype, device=ids[r].device)
        return out  # type: ignore[return-value]

    def prompt_and_target(self, prompt: Any, target: str, chat: bool | None = None) -> tuple[torch.Tensor, int]:
        """Token ids of ``prompt`` followed by ``target`` and the index where the target starts."""
        if not isinstance(target, str):
            raise ValueError(f"target must be text (str), got {type(target).__name__}")
        p = self.encode(prompt, chat=chat)
        t = self.tokenizer(target, add_special_tokens=False, return_tensors="pt").input_ids.to(self.device)
        if t.shape[-1] == 0:
            raise ValueError("target text is empty; a log-likelihood needs at least one target token")
        ids = torch.cat([p, t], dim=-1)
        self.check_fits(ids.shape[-1], what="prompt plus target")
        return ids, p.shape[-1]

    @torch.no_grad()
    def target_logprobs(self, prompt: Any, target: str, chat: bool | None = None) -> torch.Tensor:
        """Log-probability of each token of ``target`` given ``prompt`` (a 1-D float tensor).

        Hooks active in the surrounding context apply, so ``with mask_heads(...)`` scores
        the masked model.
        """
        ids, start = self.prompt_and_target(prompt, target, chat=chat)
        logits = self.bridge(ids)
        return logprobs_of(logits, ids, start)

    def nll(self, prompt: Any, target: str, chat: bool | None = None) -> float:
        """Mean negative log-likelihood (nats per token) of ``target`` given ``prompt``."""
        return float(-self.target_logprobs(prompt, target, chat=chat).mean())


def _text_stop(tokenizer: Any, start: int, until: Callable[[str], bool]) -> Any:
    """A Hugging Face stopping criterion (what TransformerLens' ``generate`` accepts): stop once
    ``until`` holds for the new text. It checks decoded text, not token ids, because a line
    break can be part of a larger token."""
    from transformers import StoppingCriteria

    class TextStop(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: Any, **_: Any) -> torch.Tensor:
            done = [bool(until(tokenizer.decode(row[start:], skip_special_tokens=True))) for row in input_ids]
            return torch.tensor(done, device=input_ids.device)

    return TextStop()


def logprobs_of(logits: torch.Tensor, ids: torch.Tensor, start: int) -> torch.Tensor:
    """Log-probabilities of ``ids[0, start:]`` under ``logits`` (``[1, pos, vocab]``)."""
    lp = logits[0, start - 1 : -1].float().log_softmax(-1)
    return lp.gather(-1, ids[0, start:, None])[:, 0]
