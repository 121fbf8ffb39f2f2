"""Token-level causal effects: how much each history token matters for an output.

For a prompt (a user's history, then the new input) and an output ``y`` (e.g. the headline
the user wrote), the effect of prompt token ``i`` is::

    effect_i = log p(y | prompt) - log p(y | prompt with token i deleted)

teacher-forced, averaged over the output's tokens (``reduce="mean"``, nats per output token)
or summed (``reduce="sum"``). Positive = the token makes the output more likely.

:func:`trace_tokens` computes it four ways (``mode``):

- ``"exact"``: every token deleted in turn, reusing what a deletion cannot change. Tokens
  before ``i`` never see token ``i``, so their keys and values are computed once (a KV cache
  of the prefix that grows as we walk through the prompt) and only the suffix after ``i``
  (the rest of the prompt and the output) is run again, at the position ids it has after the
  deletion. The vocabulary projection runs only where the output is predicted. Same numbers
  as deleting the token and re-running everything (``"naive"``), or as zeroing its column of
  the attention mask; about half the work.
- ``"naive"``: one full forward per deleted token, nothing reused (the reference).
- ``"gxi"``: gradient x input on the token embeddings, all tokens from one forward and one
  backward pass. First-order estimate of replacing a token's embedding by zero.
- ``"ig"``: integrated gradients (embeddings of the traced tokens scaled from zero to their
  value in ``ig_steps`` midpoint steps). ``"fast"`` is an alias for ``"ig"``.

The two gradient modes estimate *zeroing an embedding*, not deleting a token (the position
stays), so they approximate ``exact``; ``benchmarks/bench_tracing.py`` measures how well
(rank correlation) and how much faster.

**Difference in effects** (``generic_target=``): the same effects for a generic output (what
the model writes without the history) are computed too; ``effect - effect_generic`` separates
tokens that push the model towards *this user's* output from tokens that help any answer
(e.g. the instruction words). This contrast is our design; the SteerX paper's text was not
available to us (see ``shared/research/methods.md`` §3).

:func:`trace_example` builds the prompt of a LaMP example (or a ``dict`` user like
:data:`workbench.examples.EXAMPLE_USER`) and labels every token with the profile item and
part (``article`` / ``title``) it comes from. The result is a :class:`TokenEffects`.
"""

from __future__ import annotations

import copy
import html
import math
import re
import time
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import torch

from workbench.model import Model

MODES = ("exact", "naive", "gxi", "ig", "attn", "attn-ig")
SCOPES = ("history", "titles", "articles", "prompt")
_ALIASES = {"fast": "ig", "grad": "gxi", "gradient": "gxi"}
_WORD = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]")


# ---- which token is what ------------------------------------------------------------------------

@dataclass
class PromptTokens:
    """The tokens of a prompt, each labelled with the history item and part it belongs to.

    ``frame`` has one row per prompt token: ``position``, ``token`` (its text, with the
    whitespace before the next token), ``item`` (index of the history item in prompt order, or
    -1), ``item_id``, ``part`` (``article``, ``title``, ``template`` inside an item,
    ``query`` after the history, ``other`` before it) and ``word`` (index of the word it is
    part of, -1 for markup).
    """

    prompt: Any
    ids: torch.Tensor  # [1, n_prompt]
    frame: pd.DataFrame
    items: list[dict]

    def positions(self, scope: "str | Sequence[int]") -> list[int]:
        """Prompt positions of a scope: ``history`` (article and title tokens of every item),
        ``titles``, ``articles``, ``prompt`` (every token but the first and the last) or a
        list of positions."""
        f = self.frame
        n = len(f)
        if not isinstance(scope, str):
            pos = sorted({int(p) for p in scope})
            bad = [p for p in pos if not 0 <= p < n - 1]
            if bad:
                raise ValueError(f"positions {bad[:5]} are outside the prompt (0..{n - 2}; the last prompt token "
                                 "predicts the output and can't be traced)")
            return pos
        if scope == "history":
            keep = f["part"].isin(["article", "title"])
        elif scope == "titles":
            keep = f["part"] == "title"
        elif scope == "articles":
            keep = f["part"] == "article"
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


def label_tokens(model: Model, prompt: Any, items: Sequence[dict] = ()) -> PromptTokens:
    """Tokenize ``prompt`` as :meth:`Model.encode` does and label each token.

    ``items`` are the history items in the order the prompt shows them (dicts with
    ``text`` and ``title``); their texts are looked up in the rendered prompt, in order.
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
    # Character spans of each item's article and title, searched in order.
    spans: list[tuple[int, str, int, int]] = []
    cursor = 0
    last_end = 0
    for j, it in enumerate(items):
        for part, key in (("article", "text"), ("title", "title")):
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


# ---- the computations -------------------------------------------------------------------------

def _target_ids(model: Model, target: str) -> torch.Tensor:
    t = model.tokenizer(target, add_special_tokens=False, return_tensors="pt").input_ids.to(model.device)
    if t.shape[-1] == 0:
        raise ValueError("the target text is empty; an effect on the likelihood needs at least one output token")
    return t


def _score(logits: torch.Tensor, targets: torch.Tensor, reduce: str) -> torch.Tensor:
    """Per-row log-likelihood of ``targets`` [T] from the logits that predict them [B, T, V]."""
    lp = logits.float().log_softmax(-1).gather(-1, targets.view(1, -1, 1).expand(logits.shape[0], -1, 1))[..., 0]
    return lp.mean(-1) if reduce == "mean" else lp.sum(-1)


def _slice_hook(model: Model, lo: int, n: int):
    """Keep only positions ``lo..lo+n-1`` before the final norm and the vocabulary projection."""
    name = f"blocks.{model.n_layers - 1}.hook_resid_post"

    def keep(x: torch.Tensor, hook: Any) -> torch.Tensor:
        return x[:, lo:lo + n]

    return (name, keep)


def _truncate(cache: Any, length: int) -> None:
    for layer in cache.layers:
        if getattr(layer, "keys", None) is not None and layer.keys.shape[-2] > length:
            layer.keys = layer.keys[..., :length, :]
            layer.values = layer.values[..., :length, :]


def _empty_cache() -> Any:
    from transformers import DynamicCache

    return DynamicCache()


@torch.no_grad()
def _base_scores(model: Model, prompt_ids: torch.Tensor, targets: list[torch.Tensor], reduce: str) -> list[float]:
    out = []
    n = prompt_ids.shape[1]
    for t in targets:
        ids = torch.cat([prompt_ids, t], dim=1)
        logits = model.bridge.run_with_hooks(ids, fwd_hooks=[_slice_hook(model, n - 1, t.shape[1])])
        out.append(float(_score(logits, t[0], reduce)[0]))
    return out


@torch.no_grad()
def _exact(model: Model, prompt_ids: torch.Tensor, targets: list[torch.Tensor], positions: list[int], reduce: str,
           batch_size: int, bar: Any) -> np.ndarray:
    """log p(target | prompt without token p) for each p, prefix KV shared and grown as we go."""
    bridge = model.bridge
    n = prompt_ids.shape[1]
    out = np.zeros((len(targets), len(positions)))
    cache = _empty_cache()
    cur = 0  # the cache holds positions [0, cur)
    for g0 in range(0, len(positions), batch_size):
        group = positions[g0:g0 + batch_size]
        p0 = group[0]
        if p0 > cur:
            # Extend the shared prefix; only the last position goes through the unembedding.
            bridge.run_with_hooks(prompt_ids[:, cur:p0], past_key_values=cache,
                                  fwd_hooks=[_slice_hook(model, p0 - cur - 1, 1)])
            cur = p0
        B = len(group)
        rows = torch.cat([torch.cat([prompt_ids[:, p0:p], prompt_ids[:, p + 1:]], dim=1) for p in group], dim=0)
        lo = n - 1 - p0 - 1  # where the (shifted) last prompt token sits in a row
        for ti, t in enumerate(targets):
            seq = torch.cat([rows, t.expand(B, -1)], dim=1)
            if B == 1:
                logits = bridge.run_with_hooks(seq, past_key_values=cache, fwd_hooks=[_slice_hook(model, lo, t.shape[1])])
                _truncate(cache, cur)
            else:
                batch_cache = copy.deepcopy(cache)
                batch_cache.batch_repeat_interleave(B)
                logits = bridge.run_with_hooks(seq, past_key_values=batch_cache,
                                               fwd_hooks=[_slice_hook(model, lo, t.shape[1])])
            out[ti, g0:g0 + B] = _score(logits, t[0], reduce).cpu().numpy()
        bar.update(B)
    return out


@torch.no_grad()
def _naive(model: Model, prompt_ids: torch.Tensor, targets: list[torch.Tensor], positions: list[int], reduce: str,
           bar: Any) -> np.ndarray:
    """From scratch: delete the token, run the whole sequence (all logits), score."""
    n = prompt_ids.shape[1]
    out = np.zeros((len(targets), len(positions)))
    for k, p in enumerate(positions):
        for ti, t in enumerate(targets):
            ids = torch.cat([prompt_ids[:, :p], prompt_ids[:, p + 1:], t], dim=1)
            logits = model.bridge(ids)
            out[ti, k] = float(_score(logits[:, n - 2:n - 2 + t.shape[1]], t[0], reduce)[0])
        bar.update(1)
    return out


def _gradient(model: Model, prompt_ids: torch.Tensor, target: torch.Tensor, positions: list[int], reduce: str,
              alphas: Sequence[float], batch_size: int, bar: Any) -> np.ndarray:
    """Integrated gradients (gradient x input when ``alphas == [1]``) of the target score
    with respect to the embeddings at ``positions``, zero baseline."""
    bridge = model.bridge
    n = prompt_ids.shape[1]
    ids = torch.cat([prompt_ids, target], dim=1)
    pos = torch.tensor(positions, device=ids.device)
    grads = torch.zeros(len(positions), model.d_model, dtype=torch.float32, device=ids.device)
    emb: dict[str, torch.Tensor] = {}
    params = [p for p in bridge.parameters() if p.requires_grad]
    try:
        for p in params:
            p.requires_grad_(False)  # gradients for the embeddings only
        for a0 in range(0, len(alphas), batch_size):
            chunk = torch.tensor(alphas[a0:a0 + batch_size], device=ids.device, dtype=model.dtype)
            B = chunk.shape[0]

            def interpolate(x: torch.Tensor, hook: Any) -> torch.Tensor:
                x = x.detach()
                emb["x"] = x[0, pos].float()
                x = x.expand(B, -1, -1).clone()
                x[:, pos] = x[:, pos] * chunk.view(B, 1, 1)
                x.requires_grad_(True)
                emb["leaf"] = x
                return x

            with torch.enable_grad():
                logits = bridge.run_with_hooks(ids.expand(B, -1), fwd_hooks=[
                    ("hook_embed", interpolate), _slice_hook(model, n - 1, target.shape[1])])
                _score(logits, target[0], reduce).sum().backward()
            grads += emb["leaf"].grad[:, pos].float().sum(0)
            bar.update(B)
    finally:
        for p in params:
            p.requires_grad_(True)
    grads /= len(alphas)
    return (emb["x"] * grads).sum(-1).cpu().numpy()


def _gate_gradient(model: Model, prompt_ids: torch.Tensor, target: torch.Tensor, positions: list[int], reduce: str,
                   alphas: Sequence[float], batch_size: int, bar: Any) -> np.ndarray:
    """Integrated gradients along attention gates.

    Every query's attention to key ``j`` (in every layer and head) is multiplied by a gate
    ``g_j`` before the softmax renormalises — ``g_j = 0`` is exactly the attention-mask
    deletion of token ``j`` (up to the position shift of later tokens). The effect estimate
    is ``mean over alpha of d score / d g_j`` at ``g = alpha`` for all traced tokens at once
    (one step at ``alpha = 1`` is the plain gate gradient). The gates enter as ``log g``
    added to the attention scores.
    """
    bridge = model.bridge
    n = prompt_ids.shape[1]
    ids = torch.cat([prompt_ids, target], dim=1)
    pos = torch.tensor(positions, device=ids.device)
    total = torch.zeros(len(positions), dtype=torch.float32, device=ids.device)
    params = [p for p in bridge.parameters() if p.requires_grad]
    try:
        for p in params:
            p.requires_grad_(False)
        for a0 in range(0, len(alphas), batch_size):
            chunk = torch.tensor(alphas[a0:a0 + batch_size], dtype=torch.float32, device=ids.device)
            B = chunk.shape[0]
            bias = chunk.log().view(B, 1).expand(B, len(positions)).clone().requires_grad_(True)

            def gate(scores: torch.Tensor, hook: Any) -> torch.Tensor:
                add = torch.zeros(B, scores.shape[-1], dtype=scores.dtype, device=scores.device)
                add = add.index_add(1, pos, bias.to(scores.dtype))
                return scores + add[:, None, None, :]

            hooks = [(f"blocks.{L}.attn.hook_attn_scores", gate) for L in range(model.n_layers)]
            with torch.enable_grad():
                logits = bridge.run_with_hooks(ids.expand(B, -1), fwd_hooks=hooks + [
                    _slice_hook(model, n - 1, target.shape[1])])
                _score(logits, target[0], reduce).sum().backward()
            # d/dg = (1/g) d/d(log g)
            total += (bias.grad.float() / chunk.view(B, 1)).sum(0)
            bar.update(B)
    finally:
        for p in params:
            p.requires_grad_(True)
    return (total / len(alphas)).cpu().numpy()


# ---- the result ----------------------------------------------------------------------------------

class TokenEffects:
    """Effects of prompt tokens on an output, with their labels and the settings used.

    ``frame``: one row per traced token — ``item`` (history item, prompt order), ``item_id``,
    ``part``, ``position``, ``token``, ``word``, ``effect`` and, with a generic output,
    ``effect_generic`` and ``effect_diff`` (= effect - effect_generic).
    ``meta``: model, mode, target, generic target, reduce, base log-likelihoods, seconds.

    In a notebook it renders as the history text with each token coloured by its effect
    (red: deleting it makes the output less likely; blue: more likely).
    """

    def __init__(self, frame: pd.DataFrame, meta: dict, text: str = "", items: Sequence[dict] = ()):
        self.frame = frame
        self.meta = dict(meta)
        self.text = text
        self.items = list(items)

    # facts
    @property
    def has_generic(self) -> bool:
        return "effect_diff" in self.frame

    def _col(self, by: str | None) -> str:
        by = by or ("diff" if self.has_generic else "effect")
        col = {"effect": "effect", "diff": "effect_diff", "generic": "effect_generic"}.get(by)
        if col is None:
            raise ValueError(f"by={by!r}: use 'effect', 'diff' (effect minus the generic output's) or 'generic'")
        if col not in self.frame:
            raise ValueError(f"by={by!r} needs effects on a generic output; trace with generic_target=... "
                             "(or generic=True in trace_example)")
        return col

    def __len__(self) -> int:
        return len(self.frame)

    def __repr__(self) -> str:
        m = self.meta
        top = self.by_word().head(3)
        words = ", ".join(f"{r.text!r} {r.score:+.3f}" for r in top.itertuples())
        gen = ", minus generic" if self.has_generic else ""
        return (f"TokenEffects({m['model']}: {len(self)} tokens, mode={m['mode']}, reduce={m['reduce']}{gen}; "
                f"top words: {words})")

    # aggregation
    def by_word(self, by: str | None = None) -> pd.DataFrame:
        """Effects summed over the tokens of each word (a first-order estimate of deleting
        the whole word), best first. Columns: item, item_id, part, word, text, score,
        n_tokens, position (of the first token)."""
        col = self._col(by)
        f = self.frame[self.frame["word"] >= 0]
        if f.empty:
            return pd.DataFrame(columns=["item", "item_id", "part", "word", "text", "score", "n_tokens", "position"])
        g = f.groupby("word", sort=False)
        out = pd.DataFrame({
            "item": g["item"].first(), "item_id": g["item_id"].first(), "part": g["part"].first(),
            "text": g["token"].apply(lambda s: "".join(s).strip()), "score": g[col].sum(),
            "n_tokens": g.size(), "position": g["position"].min(),
        }).reset_index()
        return out.sort_values(["score", "position"], ascending=[False, True]).reset_index(drop=True)

    def by_item(self, by: str | None = None) -> pd.DataFrame:
        """Effects summed per history item and part (article / title), in prompt order."""
        col = self._col(by)
        f = self.frame[self.frame["item"] >= 0]
        tab = f.pivot_table(index=["item", "item_id"], columns="part", values=col, aggfunc="sum", fill_value=0.0)
        tab = tab.reindex(columns=[c for c in ("article", "title", "template") if c in tab.columns])
        tab["total"] = tab.sum(axis=1)
        tab = tab.reset_index()
        tab.columns.name = None
        tab.insert(2, "title_text", [str(self.items[i].get("title", "")) if i < len(self.items) else ""
                                     for i in tab["item"]])
        return tab

    def select(self, top_k: int | None = None, top_p: float | None = None, threshold: float | None = None,
               level: str = "word", by: str | None = None) -> pd.DataFrame:
        """The preference-driven units: exactly one of ``top_k`` (the k largest), ``top_p``
        (the fewest units holding a fraction p of the total positive effect) or ``threshold``
        (score >= threshold). Only positive scores qualify. ``level``: ``"word"`` or ``"token"``.
        ``by``: ``"effect"``, ``"diff"`` (default when a generic output was traced) or ``"generic"``."""
        given = [x is not None for x in (top_k, top_p, threshold)]
        if sum(given) != 1:
            raise ValueError("give exactly one selection rule: top_k=..., top_p=... or threshold=...")
        if level == "word":
            units = self.by_word(by)
        elif level == "token":
            col = self._col(by)
            units = self.frame.assign(score=self.frame[col], text=self.frame["token"].str.strip())
            units = units.sort_values(["score", "position"], ascending=[False, True]).reset_index(drop=True)
        else:
            raise ValueError(f"level={level!r}: use 'word' or 'token'")
        pos = units[units["score"] > 0]
        if top_k is not None:
            if int(top_k) < 1:
                raise ValueError(f"top_k={top_k} must be >= 1")
            return pos.head(int(top_k)).reset_index(drop=True)
        if top_p is not None:
            if not 0 < top_p <= 1:
                raise ValueError(f"top_p={top_p} must be in (0, 1], e.g. 0.5 for half of the positive effect")
            if pos.empty:
                return pos
            share = pos["score"].cumsum() / pos["score"].sum()
            n = int(np.searchsorted(share.to_numpy(), top_p - 1e-12) + 1)
            return pos.head(n).reset_index(drop=True)
        return pos[pos["score"] >= threshold].reset_index(drop=True)

    # display
    def html(self, by: str | None = None, selected: pd.DataFrame | None = None, max_items: int | None = None) -> str:
        """The traced history as HTML, each token's background coloured by its effect;
        hover a token for its value. Tokens of ``selected`` (a :meth:`select` result) are underlined."""
        col = self._col(by)
        f = self.frame
        bound = float(f[col].abs().max()) or 1.0
        chosen: set = set()
        if selected is not None and len(selected):
            if "word" in selected and "n_tokens" in selected:
                chosen = set(f.loc[f["word"].isin(selected["word"]), "position"])
            else:
                chosen = set(selected["position"])
        parts_html = []
        groups = [(i, g) for i, g in f.groupby("item", sort=True)]
        if max_items is not None:
            groups = groups[:max_items]
        for item, g in groups:
            label = "outside the history" if item < 0 else f"item {item} (id {html.escape(str(g['item_id'].iloc[0]))})"
            spans = []
            last_part = None
            for r in g.itertuples():
                if r.part != last_part and last_part is not None:
                    spans.append(" <span style='color:#888'>&rarr;</span> ")
                last_part = r.part
                v = float(getattr(r, col))
                a = min(1.0, abs(v) / bound)
                rgb = "192,57,43" if v > 0 else "41,128,185"
                deco = "text-decoration:underline;font-weight:bold;" if r.position in chosen else ""
                tip = html.escape(f"{r.token.strip()!r} pos {r.position}: {v:+.4f}")
                spans.append(f"<span title=\"{tip}\" style='background:rgba({rgb},{a:.2f});{deco}'>"
                             f"{html.escape(r.token)}</span>")
            parts_html.append(f"<div style='margin:4px 0'><b style='color:#555'>{label}:</b> {''.join(spans)}</div>")
        m = self.meta
        what = {"effect": "effect on the output", "effect_diff": "effect minus effect on the generic output",
                "effect_generic": "effect on the generic output"}[col]
        head = (f"<p><b>Token effects</b> · {html.escape(m['model'])} · {m['mode']} · {what} "
                f"({m['reduce']} log p, nats; colour scale &plusmn;{bound:.3g}) · output: "
                f"<i>{html.escape(m['target'])}</i></p>")
        return head + "<div style='font-family:monospace;white-space:pre-wrap;line-height:1.7'>" + "".join(parts_html) + "</div>"

    def _repr_html_(self) -> str:
        return self.html()

    def figure(self, by: str | None = None, title: str | None = None):
        """Plotly bar chart: the effect of every traced token, coloured by history item."""
        import plotly.graph_objects as go

        col = self._col(by)
        f = self.frame
        fig = go.Figure()
        for item, g in f.groupby("item", sort=True):
            fig.add_bar(x=g["position"], y=g[col], name="not in history" if item < 0 else f"item {item}",
                        customdata=np.stack([g["token"].str.strip(), g["part"]], axis=-1),
                        hovertemplate="pos %{x}: %{customdata[0]}<br>%{customdata[1]}<br>effect %{y:+.4f}<extra></extra>")
        m = self.meta
        fig.update_layout(
            title=title or (f"Effect of deleting each history token on log p(output) — {m['model']}, {m['mode']}"
                            if m["mode"] in ("exact", "naive") else
                            f"Estimated effect of each history token on log p(output) — {m['model']}, {m['mode']} "
                            "(a gradient estimate of deletion)"),
            xaxis_title="token position in the prompt", yaxis_title=f"{col} ({m['reduce']} log p, nats)",
            template="plotly_white", height=380, bargap=0.05, margin=dict(l=60, r=20, t=60, b=50),
        )
        return fig


# ---- entry points --------------------------------------------------------------------------------

def trace_tokens(
    model: Model,
    prompt: Any,
    target: str,
    *,
    items: Sequence[dict] = (),
    positions: "str | Sequence[int]" = "history",
    mode: str = "exact",
    generic_target: str | None = None,
    reduce: str = "mean",
    ig_steps: int = 8,
    batch_size: int | None = None,
    progress: bool = True,
) -> TokenEffects:
    """Effect of each prompt token on the log-likelihood of ``target``.

    Args:
        model: a :class:`workbench.Model`.
        prompt: text or chat messages (as for :meth:`Model.generate`).
        target: the output whose likelihood is traced (e.g. the user's real headline).
        items: the history items in the order the prompt shows them (dicts with ``text`` and
            ``title``), to label tokens by item and part; needed for the ``history`` scopes.
        positions: ``"history"`` (article and title tokens of every item, the default),
            ``"titles"``, ``"articles"``, ``"prompt"`` (all prompt tokens) or a list of positions.
        mode: ``"exact"`` (deletion with KV reuse), ``"naive"`` (deletion, full forward per
            token), ``"gxi"`` (gradient x input) or ``"ig"`` / ``"fast"`` (integrated gradients).
        generic_target: a generic output (e.g. written without the history): its effects are
            traced too, giving ``effect_generic`` and ``effect_diff`` columns.
        reduce: ``"mean"`` (nats per output token, comparable across outputs) or ``"sum"``.
        ig_steps: integration steps for ``"ig"``.
        batch_size: deletions (``exact``) or integration steps (``ig``) per forward pass;
            default 1 on CPU (no gain there), 16 on a GPU.

    Returns:
        :class:`TokenEffects`.

    Example:
        >>> te = trace_tokens(model, prompt, "Why Composting Is Easy", items=profile)   # doctest: +SKIP
        >>> te.select(top_k=10)                                                          # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    mode = _ALIASES.get(mode, mode)
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: use one of {MODES} (or 'fast' for 'ig')")
    if reduce not in ("mean", "sum"):
        raise ValueError(f"reduce={reduce!r}: use 'mean' (nats per output token) or 'sum'")
    if ig_steps < 1:
        raise ValueError(f"ig_steps={ig_steps} must be >= 1")
    if batch_size is None:
        batch_size = 1 if model.device.type == "cpu" else 16
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    labels = label_tokens(model, prompt, items)
    pos = labels.positions(positions)
    prompt_ids = labels.ids
    targets = [_target_ids(model, target)]
    if generic_target is not None:
        targets.append(_target_ids(model, generic_target))
    for t in targets:
        model.check_fits(prompt_ids.shape[1] + t.shape[1], what="prompt plus target")
    t0 = time.perf_counter()
    base = _base_scores(model, prompt_ids, targets, reduce)
    steps = len(pos) if mode in ("exact", "naive") else len(targets) * (1 if mode in ("gxi", "attn") else ig_steps)
    bar = tqdm(total=steps, desc=f"token effects ({mode})", disable=not progress, leave=False)
    if mode == "exact":
        effects = np.array(base)[:, None] - _exact(model, prompt_ids, targets, pos, reduce, batch_size, bar)
    elif mode == "naive":
        effects = np.array(base)[:, None] - _naive(model, prompt_ids, targets, pos, reduce, bar)
    else:
        alphas = [1.0] if mode in ("gxi", "attn") else [(k + 0.5) / ig_steps for k in range(ig_steps)]
        fn = _gradient if mode in ("gxi", "ig") else _gate_gradient
        effects = np.stack([fn(model, prompt_ids, t, pos, reduce, alphas, batch_size, bar) for t in targets])
    bar.close()
    seconds = time.perf_counter() - t0
    frame = labels.frame.set_index("position").loc[pos].reset_index()
    frame = frame[["item", "item_id", "part", "position", "token", "word"]].copy()
    frame["effect"] = effects[0]
    if generic_target is not None:
        frame["effect_generic"] = effects[1]
        frame["effect_diff"] = effects[0] - effects[1]
    meta = {"model": model.name, "mode": mode, "target": target, "generic_target": generic_target,
            "reduce": reduce, "positions": positions if isinstance(positions, str) else "custom",
            "n_prompt_tokens": int(prompt_ids.shape[1]), "n_traced": len(pos),
            "logp": base[0], "logp_generic": base[1] if len(base) > 1 else None,
            "ig_steps": ig_steps if mode.endswith("ig") else None, "seconds": round(seconds, 3)}
    return TokenEffects(frame, meta, text=labels.frame.attrs.get("text", ""), items=labels.items)


def example_prompt(model: Model, example: Any, k: int = 5, by: str = "bm25") -> tuple[Any, list[dict], str, Any]:
    """``(prompt, items in prompt order, query article, generic prompt)`` for a LaMP
    :class:`~workbench.data.Example` (the ``rag`` prompt) or a ``dict`` user with ``profile``
    and ``query`` (like :data:`workbench.examples.EXAMPLE_USER`; all its items are shown)."""
    from workbench.prompts import build_prompt, headline_prompt

    if isinstance(example, dict):
        if not example.get("profile") or not example.get("query"):
            raise ValueError("a dict user needs a non-empty 'profile' and a 'query' (see workbench.examples.EXAMPLE_USER)")
        items = list(example["profile"])
        return headline_prompt(model, example["query"], items), items, example["query"], headline_prompt(model, example["query"])
    example.require_profile()
    prompt, info = build_prompt(model, example, k=k, by=by, reserve=0)
    by_id = {str(it.get("id", "")): it for it in example.profile}
    items = [by_id[i] for i in reversed(info["profile_ids"])]  # build_prompt shows the best-ranked item last
    generic, _ = build_prompt(model, example, k=0, reserve=0)
    from workbench.prompts import task_text

    return prompt, items, task_text(example), generic


def trace_example(
    model: Model,
    example: Any,
    *,
    target: str | None = None,
    generic: "bool | str" = False,
    k: int = 5,
    by: str = "bm25",
    max_new_tokens: int = 32,
    **kwargs: Any,
) -> TokenEffects:
    """Token effects of the history in a LaMP example's ``rag`` prompt (or a dict user's).

    ``target`` defaults to the example's gold output (the headline the user really wrote):
    use that only to *explain* a known example, never to build anything evaluated on it.
    ``generic=True`` also traces the model's own output without the history (greedy) for the
    difference in effects; a string is used as that generic output. Other keyword arguments
    go to :func:`trace_tokens` (``mode``, ``positions``, ``reduce``, ...).
    """
    from workbench.prompts import first_line

    prompt, items, _, generic_prompt = example_prompt(model, example, k=k, by=by)
    if target is None:
        target = example.get("gold") if isinstance(example, dict) else example.gold
        if not target:
            raise ValueError("this example has no gold output; pass target=... (e.g. the model's personalized output)")
    generic_target = None
    if generic is True:
        generic_target = first_line(model.generate(generic_prompt, max_new_tokens=max_new_tokens)) or None
        if generic_target is None:
            raise RuntimeError("the model wrote an empty generic output; pass generic='some text' instead")
    elif isinstance(generic, str):
        generic_target = generic
    te = trace_tokens(model, prompt, target, items=items, generic_target=generic_target, **kwargs)
    te.meta["example"] = example.get("user_id", "") if isinstance(example, dict) else example.id
    return te


def spearman(a: Iterable[float], b: Iterable[float]) -> float:
    """Spearman rank correlation of two equally long score lists (ties get average ranks)."""
    a = pd.Series(list(a), dtype=float)
    b = pd.Series(list(b), dtype=float)
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"need two score lists of the same length >= 2, got {len(a)} and {len(b)}")
    r = a.rank().corr(b.rank())
    return float(r) if not math.isnan(r) else 0.0
