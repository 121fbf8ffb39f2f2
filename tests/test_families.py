"""Every intervention on tiny random models of the main families, loaded like a user's checkpoint.

For each family (see ``tests/families.py``) a 2-layer model with random weights is built in
code, saved with ``save_pretrained`` and loaded with ``load_model(path)``. Each check compares
what workbench does on the TransformerLens bridge with an independent reference: a second
copy of the checkpoint loaded with plain ``transformers``, changed with raw torch hooks on its
Hugging Face modules (or, for PCS and DPS, the same intervention computed without reuse).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import workbench as wb
from families import FAMILIES, raw_modules, save_family
from workbench.core.heads import mask_heads
from workbench.core.model import logprobs_of
from workbench.core.steering import SITES, steer
from workbench.science.dps import dps_generate
from workbench.science.pcs import preference_scores
from workbench.science.tracing import trace_tokens

from conftest import all_hook_handles

FAMILY_NAMES = list(FAMILIES)
PROMPT = "the cat sat on the mat in the city of paris and the dog"
TARGET = "paris news about travel"
REFERENCE = ["a dog is in the city", "the best food of paris", "why the cat sat on a mat"]
ATOL = 2e-4
SLIDING = ("mistral", "gemma2", "gemma3")  # sliding-window attention layers (window shorter than PROMPT)
# ALiBi adds a position bias to the attention scores: a zero query does not make attention uniform
NO_UNIFORM = ("bloom",)
NO_UNIFORM_ERROR = r"how='uniform' \(query zeroing\) is not supported on .*\(BloomForCausalLM\)"
# TransformerLens' start_at_layer is wrong on BLOOM: what reuses the layers below a mask is refused
NO_REUSE = ("bloom",)
NO_REUSE_ERROR = r"running the model from a layer on is not supported on BloomForCausalLM"


@pytest.fixture(scope="module", params=FAMILY_NAMES)
def fam(request, tmp_path_factory):
    """(family, workbench Model, independent Hugging Face copy) for one family."""
    from transformers import AutoModelForCausalLM

    family = request.param
    path = save_family(family, tmp_path_factory.mktemp(family))
    model = wb.load_model(str(path), device="cpu")
    raw = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
    return family, model, raw


# ---- raw-hook helpers ------------------------------------------------------------------------

def _first(out):
    return out[0] if isinstance(out, tuple) else out


def _replace_first(out, new):
    return (new, *out[1:]) if isinstance(out, tuple) else new


class Positions:
    """Absolute positions of the tokens a module sees, counted across KV-cached calls."""

    def __init__(self):
        self.seen = 0

    def next(self, n: int) -> torch.Tensor:
        pos = torch.arange(self.seen, self.seen + n)
        self.seen += n
        return pos


def add_at(module, vector, positions=None, pre=False):
    """Raw torch hook adding ``vector`` to ``module``'s output (its input with ``pre``), at every
    position or only at absolute ``positions``."""
    counter = Positions()

    def delta(x):
        if positions is None:
            return vector
        keep = torch.isin(counter.next(x.shape[1]), torch.tensor(positions)).to(x.dtype)
        return keep[None, :, None] * vector

    if pre:
        def pre_hook(mod, args, kwargs):
            if args:
                return (args[0] + delta(args[0]), *args[1:]), kwargs
            kwargs = dict(kwargs)
            kwargs["hidden_states"] = kwargs["hidden_states"] + delta(kwargs["hidden_states"])
            return args, kwargs

        return module.register_forward_pre_hook(pre_hook, with_kwargs=True)

    def hook(mod, args, out):
        x = _first(out)
        return _replace_first(out, x + delta(x))

    return module.register_forward_hook(hook)


def raw_site_module(family, raw, layer, site):
    r = raw_modules(family, raw, layer)
    return {"resid_pre": (r.layer, True), "resid_post": (r.layer, False), "attn_out": (r.attn_to_resid, False),
            "resid_mid": (r.attn_to_resid, False), "mlp_out": (r.mlp_to_resid, False)}[site]


@torch.no_grad()
def raw_logits(raw, ids, handles=()):
    try:
        return raw(ids).logits
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def raw_greedy(raw, ids, n, stops):
    """Greedy decoding on the raw Hugging Face model with its KV cache, cut at a stop token."""
    out = raw(ids, use_cache=True)
    toks = []
    for _ in range(n):
        nxt = int(out.logits[0, -1].argmax())
        if nxt in stops:
            break
        toks.append(nxt)
        out = raw(torch.tensor([[nxt]]), past_key_values=out.past_key_values, use_cache=True)
    return toks


def raw_head_hooks(family, raw, layer, head, how, keep=0.0, mean=None):
    """The head mask written with raw torch hooks: the head's slice of the output projection's
    input zeroed (``zero``) or replaced by ``mean``; its query scaled by ``keep`` (``uniform``)."""
    r = raw_modules(family, raw, layer)
    d = r.o_proj.in_features if hasattr(r.o_proj, "in_features") else r.o_proj.nx
    d //= raw.config.num_attention_heads
    if how == "uniform":
        return [r.query_module.register_forward_hook(lambda mod, args, out: r.query(out, head, keep))]

    def pre(mod, args):
        x = args[0].clone()
        sl = slice(head * d, (head + 1) * d)
        x[..., sl] = keep * x[..., sl] + (0 if mean is None else (1 - keep) * mean)
        return (x, *args[1:])

    return [r.o_proj.register_forward_pre_hook(pre)]


@torch.no_grad()
def raw_head_means(family, raw, ids_list, layer):
    """Mean over all positions of the output projection's input (all heads side by side)."""
    r = raw_modules(family, raw, layer)
    seen = []
    h = r.o_proj.register_forward_pre_hook(lambda mod, args: seen.append(args[0].reshape(-1, args[0].shape[-1])))
    try:
        for ids in ids_list:
            raw(ids)
    finally:
        h.remove()
    return torch.cat(seen).double().mean(0).float()


def bridge_o_proj_input(model, family, layer, ids, mask=None):
    """The input of the bridge's own output projection (the original Hugging Face module it
    wraps), observed with a raw torch hook while ``mask`` is active."""
    view = model._plain_view()  # the original modules the bridge wraps, without the wrappers
    mod = raw_modules(family, view, layer).o_proj
    seen = []
    h = mod.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    try:
        with torch.no_grad():
            if mask is None:
                model.bridge(ids)
            else:
                with mask:
                    model.bridge(ids)
    finally:
        h.remove()
    assert len(seen) == 1, f"{family}: the bridge ran layer {layer}'s output projection {len(seen)} times"
    return seen[0][0]


# ---- 1. loading and generation ---------------------------------------------------------------

def test_bridge_computes_the_checkpoints_model(fam):
    family, model, raw = fam
    ids = model.encode(PROMPT)
    with torch.no_grad():
        torch.testing.assert_close(model.bridge(ids), raw_logits(raw, ids), atol=ATOL, rtol=0)


def test_plain_view_and_bridge_generate_the_same_tokens(fam, monkeypatch):
    family, model, raw = fam
    calls = []
    real = model.bridge.generate
    monkeypatch.setattr(model.bridge, "generate", lambda *a, **k: calls.append(1) or real(*a, **k))
    for prompt in (PROMPT, "a dog"):
        ids = model.encode(prompt)
        plain = model.generate_tokens(ids, 8).tolist()
        assert calls == [], f"{family}: greedy generation with nothing hooked did not take the hook-free view"
        with model.bridge.hooks(fwd_hooks=[("blocks.1.hook_resid_post", lambda x, hook: x)]):
            bridged = model.generate_tokens(ids, 8).tolist()
        assert calls == [1]
        calls.clear()
        assert len(plain) == 8  # the stop token is never likely (see save_family): a full comparison
        assert plain == bridged
        assert plain == raw_greedy(raw, ids, 8, model.stop_token_ids)


# ---- 2. head masking ---------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["zero", "mean", "uniform"])
def test_head_mask_equals_raw_hooks_and_leaves_other_heads_alone(fam, how):
    family, model, raw = fam
    if how == "uniform" and family in NO_UNIFORM:
        with pytest.raises(ValueError, match=NO_UNIFORM_ERROR):
            mask_heads(model, [(1, 2)], how=how)
        return
    ids = model.encode(PROMPT)
    ref_ids = [model.encode(t) for t in REFERENCE]
    with torch.no_grad():
        base = model.bridge(ids)
    for layer, head, weight in [(0, 1, 1.0), (1, 2, 1.0), (1, 3, 0.5)]:
        mean = raw_head_means(family, raw, ref_ids, layer) if how == "mean" else None
        d = model.d_head
        mask = mask_heads(model, {(layer, head): weight}, how=how, reference=REFERENCE if how == "mean" else None)
        with torch.no_grad(), mask:
            masked = model.bridge(ids)
        hooks = raw_head_hooks(family, raw, layer, head, how, keep=1 - weight,
                               mean=None if mean is None else mean[head * d:(head + 1) * d])
        ref = raw_logits(raw, ids, hooks)
        where = f"{family} how={how} L{layer}H{head}@{weight}"
        assert (masked - base).abs().max() > 1e-3, f"{where}: the mask changed nothing"
        torch.testing.assert_close(masked, ref, atol=ATOL, rtol=0, msg=lambda m: f"{where}: {m}")
        # the other heads' outputs in that layer are untouched
        z0 = bridge_o_proj_input(model, family, layer, ids).view(ids.shape[1], model.n_heads, d)
        z1 = bridge_o_proj_input(model, family, layer, ids, mask).view(ids.shape[1], model.n_heads, d)
        others = [h for h in range(model.n_heads) if h != head]
        torch.testing.assert_close(z1[:, others], z0[:, others], atol=1e-6, rtol=0, msg=lambda m: f"{where}: {m}")
        assert (z1[:, head] - z0[:, head]).abs().max() > 1e-4, where
    assert all_hook_handles(model) == 0


# ---- 3. steering -----------------------------------------------------------------------------

def _vector(model, seed=1, norm=4.0):
    v = torch.randn(model.d_model, generator=torch.Generator().manual_seed(seed))
    return norm * v / v.norm()


@pytest.mark.parametrize("site", list(SITES))
def test_steering_equals_adding_at_the_module(fam, site):
    family, model, raw = fam
    v = _vector(model)
    ids = model.encode(PROMPT)
    plen = ids.shape[1]
    with torch.no_grad():
        base = model.bridge(ids)
    for layer in range(model.n_layers):
        module, pre = raw_site_module(family, raw, layer, site)
        where = f"{family} {site} L{layer}"
        with torch.no_grad(), steer(model, v, layer=layer, site=site):
            steered = model.bridge(ids)
        ref = raw_logits(raw, ids, [add_at(module, v, pre=pre)])
        assert (steered - base).abs().max() > 1e-3, f"{where}: steering changed nothing"
        torch.testing.assert_close(steered, ref, atol=ATOL, rtol=0, msg=lambda m: f"{where}: {m}")
    # KV-cached generation: the prompt's last token and one generated token steered
    # (a vector 4x the residual stream's norm: each steered position's next token changes)
    layer, positions = model.n_layers - 1, [plen - 1, plen + 2]
    module, pre = raw_site_module(family, raw, layer, site)
    name = f"blocks.{layer}.hook_resid_post"
    _, acts = model.bridge.run_with_cache(ids, names_filter=name)
    v = 4 * float(acts[name].norm(dim=-1).mean()) * v / v.norm()
    plain = raw_greedy(raw, ids, 6, model.stop_token_ids)
    for pos in (positions, None) if site == "resid_post" else (positions,):
        with steer(model, v, layer=layer, site=site, positions=pos):
            cached = model.generate_tokens(ids, 6).tolist()
        h = add_at(module, v, positions=pos, pre=pre)
        try:
            ref = raw_greedy(raw, ids, 6, model.stop_token_ids)
        finally:
            h.remove()
        assert cached == ref, f"{family} {site} positions={pos}"
        # the steering changed the tokens, and the one after the second steered position too
        assert ref[:4] != plain[:4], f"{family} {site} positions={pos}: the steering changed no token"
        if pos is not None:
            h = add_at(module, v, positions=pos[:1], pre=pre)
            try:
                first_only = raw_greedy(raw, ids, 6, model.stop_token_ids)
            finally:
                h.remove()
            assert first_only != ref, f"{family} {site}: steering position {pos[1]} changed no token"
    assert all_hook_handles(model) == 0


# ---- 4. PCS, DPS, token effects ----------------------------------------------------------------

def _nll_from_scratch(model, heads, how, scope):
    """NLL of TARGET with the mask everywhere, or from the last prompt token on; nothing reused."""
    ids, start = model.prompt_and_target(PROMPT, TARGET)
    mask = mask_heads(model, heads, how=how)
    hooks = mask.hooks
    if scope == "output":
        def only_late(fn):
            def hook(x, hook):
                out = x.clone()
                out[:, start - 1:] = fn(x, hook)[:, start - 1:]
                return out
            return hook
        hooks = [(n, only_late(f)) for n, f in hooks]
    with torch.no_grad():
        logits = model.bridge.run_with_hooks(ids, fwd_hooks=hooks)
    return float(-logprobs_of(logits, ids, start).mean())


@pytest.mark.parametrize("scope", ["all", "output"])
def test_exact_pcs_with_reuse_equals_masking_from_scratch(fam, scope):
    family, model, raw = fam
    base = model.nll(PROMPT, TARGET)
    if family in NO_UNIFORM:
        with pytest.raises(ValueError, match=NO_UNIFORM_ERROR):
            preference_scores(model, [(PROMPT, TARGET)], how="uniform", scope=scope, mode="exact", progress=False)
    mode = "exact"
    if family in NO_REUSE:
        with pytest.raises(ValueError, match=NO_REUSE_ERROR):
            preference_scores(model, [(PROMPT, TARGET)], how="zero", scope=scope, mode="exact", progress=False)
        mode = "naive"  # the refusal's advice: no reuse, still checked against the reference
    for how in ("zero",) if family in NO_UNIFORM else ("zero", "uniform"):
        scores = preference_scores(model, [(PROMPT, TARGET)], how=how, scope=scope, mode=mode, progress=False)
        assert scores.per_example.shape == (1, model.n_layers, model.n_heads)
        for layer, head in [(0, 1), (1, 3)]:
            ref = _nll_from_scratch(model, [(layer, head)], how, scope) - base
            assert scores.per_example[0, layer, head] == pytest.approx(ref, abs=1e-4), (family, how, layer, head)
        assert np.abs(scores.per_example).max() > 1e-3
    assert all_hook_handles(model) == 0


def test_dps_alpha_zero_is_greedy_and_branching_changes_nothing(fam):
    family, model, raw = fam
    ids = model.encode(PROMPT)
    plain = model.generate_tokens(ids, 8).tolist()
    how = "uniform"  # DPS's default
    if family in NO_UNIFORM:
        with pytest.raises(ValueError, match=NO_UNIFORM_ERROR):
            dps_generate(model, PROMPT, [(1, 2)], max_new_tokens=8)
        how = "zero"
    out = dps_generate(model, PROMPT, [(0, 1), (1, 2)], alpha=0, how=how, max_new_tokens=8, details=True)
    assert out.tokens == plain
    for heads in ([(1, 2)], {(1, 0): 1.0, (1, 3): 0.5}):
        kw = dict(alpha=1.0, how=how, max_new_tokens=8, details=True)
        ref = dps_generate(model, PROMPT, heads, branch=False, **kw)
        if family in NO_REUSE:
            with pytest.raises(ValueError, match=NO_REUSE_ERROR):
                dps_generate(model, PROMPT, heads, branch=True, **kw)
            # unbranched, against the formula on full passes (the heads are in the last layer, so masking
            # the prompt too changes no logit of the last position: the same as DPS's output-only mask)
            full = torch.stack([model.bridge(torch.cat([ids, torch.tensor([ref.tokens[:k]], dtype=ids.dtype)], 1))[0, -1]
                                for k in range(2)]).log_softmax(-1)
            with mask_heads(model, heads, how=how):
                masked = torch.stack([model.bridge(torch.cat([ids, torch.tensor([ref.tokens[:k]], dtype=ids.dtype)], 1))[0, -1]
                                      for k in range(2)]).log_softmax(-1)
            assert ref.tokens[:2] == (2 * full - masked).argmax(-1).tolist(), (family, heads)
            continue
        one = dps_generate(model, PROMPT, heads, branch=True, **kw)
        assert one.tokens == ref.tokens, (family, heads)
        np.testing.assert_allclose(one.steps["logp_masked"], ref.steps["logp_masked"], atol=1e-4)
        assert (one.steps["logp_full"] - one.steps["logp_masked"]).abs().max() > 1e-4, (family, heads)
    assert all_hook_handles(model) == 0


def test_batched_rows_get_their_batch_1_tokens(fam):
    """Left-padded batches (a long and a short prompt; sliding windows shorter than the long one on
    Mistral and Gemma), each row with its own steering vector or head mask, and DPS as 2B rows:
    each row's tokens are its batch-1 tokens."""
    from workbench.science.dps_batch import dps_generate_batch

    family, model, raw = fam
    prompts = [PROMPT, "a dog", REFERENCE[1]]
    ids = [model.encode(p) for p in prompts]
    how = "zero" if family in NO_UNIFORM else "uniform"
    vector = torch.randn(model.d_model, generator=torch.Generator().manual_seed(1))
    ivs = [steer(model, vector * 4 / vector.norm(), layer=1), mask_heads(model, [(0, 1), (1, 2)], how=how), None]
    alone = []
    for i, iv in zip(ids, ivs):
        if iv is None:
            alone.append(model.generate_tokens(i, 8).tolist())
        else:
            with iv:
                alone.append(model.generate_tokens(i, 8).tolist())
    assert [t.tolist() for t in model.generate_tokens_batch(ids, 8, interventions=ivs)] == alone, family
    heads = [(1, 0), (1, 2)]
    kw = dict(alpha=2.0, how=how, max_new_tokens=6)
    one_by_one = [dps_generate(model, i, heads, branch=False, **kw) for i in ids]
    assert dps_generate_batch(model, ids, heads, **kw) == one_by_one, family
    assert dps_generate_batch(model, ids, heads, branch=False, **kw) == one_by_one, family
    assert all_hook_handles(model) == 0


def test_exact_token_effects_equal_deleting_the_token(fam):
    family, model, raw = fam
    ids, start = model.prompt_and_target(PROMPT, TARGET)
    base = float(logprobs_of(raw_logits(raw, ids), ids, start).mean())
    # batch_size=1 reuses one cache cut back after each deletion (sliding-window layers must survive it)
    for batch_size in (None, 1) if family in SLIDING else (None,):
        te = trace_tokens(model, PROMPT, TARGET, positions="prompt", mode="exact", batch_size=batch_size, progress=False)
        pos = te.frame["position"].tolist()
        assert len(pos) >= 5
        ref = []
        for p in pos:
            d = torch.cat([ids[:, :p], ids[:, p + 1:]], dim=1)
            ref.append(base - float(logprobs_of(raw_logits(raw, d), d, start - 1).mean()))
        np.testing.assert_allclose(te.frame["effect"], ref, atol=2e-4, err_msg=f"{family} batch_size={batch_size}")
        assert te.frame["effect"].abs().max() > 1e-3


def test_prefix_cache_continues_like_one_pass(fam, monkeypatch):
    # A prompt's cache made on the hook-free view (all layers, or stopped after layer 0), continued
    # on the bridge, gives what one pass over prompt + continuation gives (sliding windows included).
    from workbench.core._reuse import prefix_cache

    family, model, raw = fam
    ids, start = model.prompt_and_target(PROMPT, TARGET)
    name = "blocks.0.hook_resid_post"
    with torch.no_grad():
        want = raw_logits(raw, ids)[:, start:]
        _, full = model.bridge.run_with_cache(ids, names_filter=[name])
        with monkeypatch.context() as m:  # the caches come from the view, not the bridge
            m.setattr(model.bridge, "run_with_hooks", lambda *a, **k: pytest.fail(f"{family}: prefix ran on the bridge"))
            whole, first = prefix_cache(model, ids[:, :start]), prefix_cache(model, ids[:, :start], 1)
        got = model.bridge(ids[:, start:], past_key_values=whole)
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0, msg=family)
        seen = {}
        model.bridge.run_with_hooks(ids[:, start:], past_key_values=first,
                                    stop_at_layer=1, fwd_hooks=[(name, lambda x, hook: seen.setdefault("x", x))])
    torch.testing.assert_close(seen["x"], full[name][:, start:], atol=ATOL, rtol=0, msg=family)
    assert all_hook_handles(model) == 0


# ---- 5. a mode a model cannot support is refused by name ----------------------------------------

def test_uniform_masking_is_refused_where_no_query_hook_works(tiny, monkeypatch):
    """Phi-3 and GPT-NeoX list an ``attn.hook_rot_q`` that never runs (their fused QKV
    projection is split in a bridge that rotates internally): a query mask there would mask
    nothing. The query hook is chosen by what runs; where nothing that runs makes attention
    uniform, ``how="uniform"`` is refused with the architecture's name."""
    import workbench.core.heads as heads

    real = heads.hook_point
    for remap in ({"attn.hook_rot_q": "attn.hook_nowhere", "attn.hook_q": "attn.hook_nowhere"},  # no query hook
                  {"attn.hook_rot_q": "attn.hook_v", "attn.hook_q": "attn.hook_v"}):  # runs, but not the query
        tiny.__dict__.pop("_query_hook", None)
        monkeypatch.setattr(heads, "hook_point", lambda layer, name, m=remap: real(layer, m.get(name, name)))
        with pytest.raises(ValueError, match=r"how='uniform' \(query zeroing\) is not supported on 'tiny-random' "
                                             r"\(LlamaForCausalLM\)"):
            mask_heads(tiny, [(1, 0)], how="uniform")
        mask_heads(tiny, [(1, 0)], how="zero")  # the other modes are unaffected
    monkeypatch.setattr(heads, "hook_point", real)
    tiny.__dict__.pop("_query_hook", None)
    assert heads.query_hook(tiny) == ("attn.hook_rot_q", False)
    assert all_hook_handles(tiny) == 0


def test_uniform_masks_the_query_hook_that_runs(fam):
    family, model, raw = fam
    from workbench.core.heads import query_hook

    if family in NO_UNIFORM:
        with pytest.raises(ValueError, match=NO_UNIFORM_ERROR):
            query_hook(model)
        return
    expected = "attn.hook_q" if family in ("phi3", "gpt_neox", "gpt2") else "attn.hook_rot_q"
    assert query_hook(model) == (expected, False)
