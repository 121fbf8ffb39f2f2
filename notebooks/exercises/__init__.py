"""Exercises for the course notebooks: each one has a stub in its notebook, a check here that
passes the right answer and names the usual mistakes, and a worked solution shown only when
asked for (``solution(name)``).

In a notebook (the kernel starts in ``notebooks/``, so this folder imports as ``exercises``)::

    from exercises import check, solution

    def dps_scores(logp_full, logp_masked, alpha):
        return None                      # your code here

    check("dps_scores", dps_scores)      # "not done yet" until the stub returns something
    # solution("dps_scores")             # uncomment to see a worked answer

``tests/test_exercises.py`` runs every check against its solution (it must pass) and against
each listed mistake (it must fail). The checks live beside the notebooks, not in the
``workbench`` package: they are course material, not library code, and the package's layer
map (``tests/test_layers.py``) stays as it is.

Model-based checks take the model and the inputs as keyword arguments (the notebook passes
SmolLM2 and a real example; the tests pass the tiny random model). All other checks build
their own inputs (seeded random tensors, small tables) and need no model.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

__all__ = ["EXERCISES", "Checked", "Exercise", "check", "solution", "make_logp"]


class Wrong(AssertionError):
    """A check found the answer wrong; the message says how."""


@dataclass
class Exercise:
    name: str
    notebook: str
    title: str
    check: Callable[..., None]            # raises Wrong (or any exception) when the answer is wrong
    solution: Callable[..., Any]
    mistakes: dict[str, Callable[..., Any]] = field(default_factory=dict)
    needs_model: bool = False


EXERCISES: dict[str, Exercise] = {}


def _exercise(notebook: str, title: str, solution: Callable, mistakes: dict[str, Callable] | None = None,
              needs_model: bool = False):
    def register(fn: Callable) -> Callable:
        name = fn.__name__.removeprefix("check_")
        EXERCISES[name] = Exercise(name, notebook, title, fn, solution, mistakes or {}, needs_model)
        return fn
    return register


class Checked:
    """What :func:`check` returns: true when the answer is right. A notebook cell ending in
    ``check(...)`` shows only the printed verdict, not a bare True/False."""

    def __init__(self, ok: bool):
        self.ok = ok

    def __bool__(self) -> bool:
        return self.ok

    def __repr__(self) -> str:
        return f"Checked({self.ok})"

    def _ipython_display_(self) -> None:  # the verdict is already printed
        pass


def check(name: str, answer: Any, **context: Any) -> Checked:
    """Check ``answer`` (usually the function you wrote) for exercise ``name``. Prints what it
    found and returns a true value when right; never raises, so a notebook with an unfinished
    stub still runs."""
    ex = EXERCISES[name]
    if answer is None or (callable(answer) and _returns_none(answer)):
        print(f"○ {ex.title}: not done yet — fill in the stub above, then run this cell again.")
        return Checked(False)
    try:
        ex.check(answer, **context)
    except Wrong as exc:
        print(f"✘ {ex.title}: not yet. {exc}")
        return Checked(False)
    except Exception as exc:  # the student's code raised: show it without a traceback wall
        print(f"✘ {ex.title}: your code raised {type(exc).__name__}: {exc}")
        return Checked(False)
    print(f"✔ {ex.title}: correct.")
    return Checked(True)


def solution(name: str) -> None:
    """Print a worked solution of exercise ``name``."""
    print(inspect.getsource(EXERCISES[name].solution))


def _returns_none(fn: Callable) -> bool:
    """True for an untouched stub: a function whose body is only ``return None`` (or ``...``/``pass``)."""
    try:
        src = inspect.getsource(fn)
    except (OSError, TypeError):
        return False
    body = [ln.strip() for ln in src.splitlines()[1:] if ln.strip() and not ln.strip().startswith("#")]
    body = [ln.split("#")[0].strip() for ln in body]
    return all(ln in ("return None", "return", "pass", "...", "") or ln.startswith(('"""', "'''")) for ln in body)


def _close(got: Any, want: Any, tol: float = 1e-4) -> bool:
    got_t = torch.as_tensor(np.asarray(got, dtype=float) if not torch.is_tensor(got) else got.double())
    want_t = torch.as_tensor(np.asarray(want, dtype=float) if not torch.is_tensor(want) else want.double())
    return got_t.shape == want_t.shape and bool(torch.allclose(got_t.double(), want_t.double(), atol=tol, rtol=tol))


def _diagnose(got: Any, want: Any, mistakes: dict[str, Callable[[], Any]], what: str) -> None:
    """Raise Wrong unless ``got`` matches ``want``; name a known mistake when ``got`` matches one."""
    if _close(got, want):
        return
    for hint, make in mistakes.items():
        try:
            if _close(got, make()):
                raise Wrong(hint)
        except Wrong:
            raise
        except Exception:
            continue
    raise Wrong(f"{what}: expected {_short(want)}, got {_short(got)}.")


def _short(x: Any) -> str:
    if torch.is_tensor(x) or isinstance(x, np.ndarray):
        arr = np.asarray(x.detach() if torch.is_tensor(x) else x, dtype=float)
        return f"an array of shape {arr.shape} starting {np.round(arr.ravel()[:3], 4).tolist()}"
    if isinstance(x, float):
        return f"{x:.5f}"
    return repr(x)


# ---------------------------------------------------------------------------------------------
# 00 · start here
# ---------------------------------------------------------------------------------------------

def _pcs_one_head(model, prompt, target, head):
    import workbench as wb
    intact = model.nll(prompt, target)
    with wb.mask_heads(model, [head], how="uniform"):
        masked = model.nll(prompt, target)
    return masked - intact          # how much less likely the user's output becomes


def _pcs_sign_flipped(model, prompt, target, head):
    return -_pcs_one_head(model, prompt, target, head)


def _pcs_zero_mask(model, prompt, target, head):
    import workbench as wb
    intact = model.nll(prompt, target)
    with wb.mask_heads(model, [head], how="zero"):
        return model.nll(prompt, target) - intact


@_exercise("00", "Exercise 0.1 · the PCS of one head, by hand", _pcs_one_head,
           {"sign flipped": _pcs_sign_flipped, "zero instead of uniform masking": _pcs_zero_mask}, needs_model=True)
def check_pcs_one_head(fn, *, model, prompt, target, heads):
    for head in heads:
        got, want = fn(model, prompt, target, head), _pcs_one_head(model, prompt, target, head)
        _diagnose(float(got), want, {
            "The sign is flipped: PCS is NLL(masked) − NLL(intact), positive when the head helps.":
                lambda: -want,
            "That is the PCS with how='zero'; DPS (and PCS here) masks with how='uniform'.":
                lambda: _pcs_zero_mask(model, prompt, target, head),
        }, f"L{head[0]}H{head[1]}")


def _zero_head_hook(head):
    def hook(z, hook=None):         # z: [batch, pos, head, d_head]
        z = z.clone()
        z[:, :, head] = 0.0
        return z
    return hook


def _zero_head_wrong_axis(head):
    def hook(z, hook=None):
        z = z.clone()
        z[:, head] = 0.0            # axis 1 is the position, not the head
        return z
    return hook


def _zero_all_heads(head):
    def hook(z, hook=None):
        return torch.zeros_like(z)
    return hook


@_exercise("00", "Exercise 0.2 · a hook that switches one head off", _zero_head_hook,
           {"wrong axis": _zero_head_wrong_axis, "all heads": _zero_all_heads})
def check_zero_head_hook(make_hook):
    z = torch.randn(2, 7, 9, 4, generator=torch.Generator().manual_seed(0))
    for head in (0, 4, 8):
        out = make_hook(head)(z.clone(), None)
        if out is None:
            raise Wrong("The hook returned None: return the (changed) tensor.")
        _diagnose(out, _zero_head_hook(head)(z), {
            "You zeroed a *position*: hook_z is [batch, pos, head, d_head], so the head is axis 2 (z[:, :, h]).":
                lambda: _zero_head_wrong_axis(head)(z),
            "You zeroed every head; only head h should go.": lambda: torch.zeros_like(z),
        }, f"head {head}")


# ---------------------------------------------------------------------------------------------
# 01 · quickstart
# ---------------------------------------------------------------------------------------------

def _rouge1_f(prediction, gold):
    from collections import Counter
    p, g = Counter(prediction.lower().split()), Counter(gold.lower().split())
    overlap = sum((p & g).values())         # each word counts at most as often as in the other text
    if overlap == 0:
        return 0.0
    precision, recall = overlap / sum(p.values()), overlap / sum(g.values())
    return 2 * precision * recall / (precision + recall)


def _rouge1_precision(prediction, gold):
    p, g = prediction.lower().split(), gold.lower().split()
    return sum(w in g for w in p) / len(p) if p else 0.0


def _rouge1_sets(prediction, gold):
    p, g = set(prediction.lower().split()), set(gold.lower().split())
    if not p & g:
        return 0.0
    precision, recall = len(p & g) / len(p), len(p & g) / len(g)
    return 2 * precision * recall / (precision + recall)


_ROUGE_CASES = [("the cat sat", "the cat ran away"), ("The Cat", "the cat"), ("a b c", "d e"),
                ("the the cat", "the cat sat on the mat"), ("new york new york", "new york")]


@_exercise("01", "Exercise 1.1 · ROUGE-1 by hand", _rouge1_f,
           {"precision only": _rouge1_precision, "sets, not counts": _rouge1_sets})
def check_rouge1_f(fn):
    for pred, gold in _ROUGE_CASES:
        got, want = fn(pred, gold), _rouge1_f(pred, gold)
        _diagnose(float(got), want, {
            "That is the precision; ROUGE-1 F combines precision and recall (2PR / (P + R)).":
                lambda: _rouge1_precision(pred, gold),
            "Count repeated words: 'new york new york' vs 'new york' shares 2 words, not 4 and not a set.":
                lambda: _rouge1_sets(pred, gold),
        }, f"rouge1_f({pred!r}, {gold!r})")


def _bootstrap_interval(scores, n_boot=2000, seed=0):
    rng = np.random.default_rng(seed)
    scores = np.asarray(scores, dtype=float)
    means = [rng.choice(scores, size=len(scores), replace=True).mean() for _ in range(n_boot)]
    return scores.mean(), np.percentile(means, 2.5), np.percentile(means, 97.5)


def _bootstrap_no_replacement(scores, n_boot=2000, seed=0):
    rng = np.random.default_rng(seed)
    scores = np.asarray(scores, dtype=float)
    means = [rng.choice(scores, size=len(scores), replace=False).mean() for _ in range(n_boot)]
    return scores.mean(), np.percentile(means, 2.5), np.percentile(means, 97.5)


def _interval_of_scores(scores, n_boot=2000, seed=0):
    scores = np.asarray(scores, dtype=float)     # the spread of the scores, not of their mean
    return scores.mean(), np.percentile(scores, 2.5), np.percentile(scores, 97.5)


_SCORES = np.random.default_rng(7).beta(2, 5, size=60)


@_exercise("01", "Exercise 1.2 · a 95% bootstrap interval", _bootstrap_interval,
           {"without replacement": _bootstrap_no_replacement, "interval of the scores": _interval_of_scores})
def check_bootstrap_interval(fn):
    mean, lo, hi = (float(x) for x in fn(_SCORES))
    if not math.isclose(mean, _SCORES.mean(), rel_tol=1e-6):
        raise Wrong(f"The first value should be the mean of the scores, {_SCORES.mean():.4f}; got {mean:.4f}.")
    _, ref_lo, ref_hi = _bootstrap_interval(_SCORES, n_boot=20000, seed=1)
    width = ref_hi - ref_lo
    if hi - lo < 0.2 * width:
        raise Wrong("The interval is (almost) a point: resample *with* replacement (replace=True), or every "
                    "resample is the same scores in another order.")
    if hi - lo > 3 * width:
        raise Wrong("The interval is far too wide: take percentiles of the resampled *means*, not of the scores.")
    if abs(lo - ref_lo) > 0.25 * width or abs(hi - ref_hi) > 0.25 * width:
        raise Wrong(f"Expected about [{ref_lo:.4f}, {ref_hi:.4f}] (2.5th and 97.5th percentiles of the "
                    f"resampled means), got [{lo:.4f}, {hi:.4f}].")


# ---------------------------------------------------------------------------------------------
# 02 · PCS and DPS
# ---------------------------------------------------------------------------------------------

def _dps_scores(logp_full, logp_masked, alpha):
    return logp_full + alpha * (logp_full - logp_masked)     # = (1 + α)·log p_full − α·log p_masked


def _dps_sign_swapped(logp_full, logp_masked, alpha):
    return logp_masked + alpha * (logp_masked - logp_full)


def _dps_no_base(logp_full, logp_masked, alpha):
    return alpha * (logp_full - logp_masked)


def _logps(seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(50, generator=g) * 3).log_softmax(-1), (torch.randn(50, generator=g) * 3).log_softmax(-1)


@_exercise("02", "Exercise 2.1 · DPS's score for the next token", _dps_scores,
           {"sign swapped": _dps_sign_swapped, "no base term": _dps_no_base})
def check_dps_scores(fn):
    for seed, alpha in ((0, 1.0), (1, 0.5), (2, 2.0), (3, 0.0)):
        full, masked = _logps(seed)
        _diagnose(fn(full, masked, alpha), _dps_scores(full, masked, alpha), {
            "The contrast points the wrong way: amplify what the *intact* model adds, l_full − l_masked.":
                lambda: _dps_sign_swapped(full, masked, alpha),
            "Keep the intact model's own scores: l_full + α·(l_full − l_masked), or α = 0 is not greedy decoding.":
                lambda: _dps_no_base(full, masked, alpha),
        }, f"alpha={alpha}")


def _plausible(logp_full, plausibility):
    return logp_full >= logp_full.max() + math.log(plausibility)   # p ≥ β · max p


def _plausible_absolute(logp_full, plausibility):
    return logp_full.exp() >= plausibility


def _plausible_logspace(logp_full, plausibility):
    return logp_full >= plausibility * logp_full.max()


@_exercise("02", "Exercise 2.2 · the adaptive plausibility constraint", _plausible,
           {"absolute threshold": _plausible_absolute, "scaled log-probability": _plausible_logspace})
def check_plausible(fn):
    for seed, beta in ((0, 0.1), (1, 0.5), (4, 0.01)):
        full, _ = _logps(seed)
        got = fn(full, beta)
        if not (torch.is_tensor(got) and got.dtype == torch.bool):
            raise Wrong("Return a boolean tensor (True = the token may be chosen), e.g. logp_full >= ...")
        _diagnose(got, _plausible(full, beta), {
            "A threshold relative to the top token: p ≥ β·max p, not p ≥ β.": lambda: _plausible_absolute(full, beta),
            "β scales the probability, so in log space it *adds* log β: logp ≥ max logp + log β.":
                lambda: _plausible_logspace(full, beta),
        }, f"plausibility={beta}")


# ---------------------------------------------------------------------------------------------
# 02b · are the heads specific?
# ---------------------------------------------------------------------------------------------

def _contrastive_pcs_one_head(model, hist_prompt, plain_prompt, target, head):
    import workbench as wb
    intact = model.nll(hist_prompt, target), model.nll(plain_prompt, target)
    with wb.mask_heads(model, [head], how="uniform"):
        masked = model.nll(hist_prompt, target), model.nll(plain_prompt, target)
    return (masked[0] - intact[0]) - (masked[1] - intact[1])


def _plain_pcs_only(model, hist_prompt, plain_prompt, target, head):
    return _pcs_one_head(model, hist_prompt, target, head)


def _contrastive_reversed(model, hist_prompt, plain_prompt, target, head):
    return -_contrastive_pcs_one_head(model, hist_prompt, plain_prompt, target, head)


@_exercise("02b", "Exercise 2b.1 · the contrastive PCS of one head", _contrastive_pcs_one_head,
           {"plain PCS": _plain_pcs_only, "reversed": _contrastive_reversed}, needs_model=True)
def check_contrastive_pcs_one_head(fn, *, model, hist_prompt, plain_prompt, target, heads):
    for head in heads:
        want = _contrastive_pcs_one_head(model, hist_prompt, plain_prompt, target, head)
        _diagnose(float(fn(model, hist_prompt, plain_prompt, target, head)), want, {
            "That is the plain PCS: subtract what masking does to the no-history prompt too.":
                lambda: _pcs_one_head(model, hist_prompt, target, head),
            "The sign is flipped: (with history: masked − intact) − (without history: masked − intact).":
                lambda: -want,
        }, f"L{head[0]}H{head[1]}")


def _gain_removed(nll_hist, nll_nohist, nll_hist_masked, nll_nohist_masked):
    gain = nll_nohist - nll_hist                     # how much the history helps, intact model
    gain_masked = nll_nohist_masked - nll_hist_masked
    return 1 - gain_masked / gain                    # 1 = the history no longer helps


def _gain_left(nll_hist, nll_nohist, nll_hist_masked, nll_nohist_masked):
    return (nll_nohist_masked - nll_hist_masked) / (nll_nohist - nll_hist)


def _gain_over_nll(nll_hist, nll_nohist, nll_hist_masked, nll_nohist_masked):
    return (nll_hist_masked - nll_hist) / nll_hist


_NLLS = dict(nll_hist=np.array([3.1, 2.8, 3.5]), nll_nohist=np.array([3.6, 3.0, 4.1]),
             nll_hist_masked=np.array([3.4, 2.9, 3.6]), nll_nohist_masked=np.array([3.7, 3.05, 4.0]))


@_exercise("02b", "Exercise 2b.2 · the share of the personalization gain removed", _gain_removed,
           {"gain left": _gain_left, "relative NLL change": _gain_over_nll})
def check_gain_removed(fn):
    _diagnose(fn(**_NLLS), _gain_removed(**_NLLS), {
        "That is the share of the gain that is *left*; the share removed is 1 minus it.":
            lambda: _gain_left(**_NLLS),
        "Measure against the gain (NLL without history − NLL with it), not against the NLL itself.":
            lambda: _gain_over_nll(**_NLLS),
    }, "gain removed for three examples")


# ---------------------------------------------------------------------------------------------
# 03 · token effects and SteerX
# ---------------------------------------------------------------------------------------------

def make_logp(model, prompt, target):
    """``(prompt_ids, logp)``: the prompt's token ids (1-D) and a function giving the mean
    log-probability (per target token) of ``target`` after any 1-D sequence of prompt ids."""
    ids, start = model.prompt_and_target(prompt, target)
    prompt_ids, target_ids = ids[0, :start], ids[0, start:]

    @torch.no_grad()
    def logp(p_ids):
        full = torch.cat([p_ids, target_ids])[None]
        lp = model.bridge(full)[0, len(p_ids) - 1:-1].float().log_softmax(-1)
        return float(lp.gather(-1, target_ids[:, None]).mean())
    return prompt_ids, logp


def _deletion_effect(logp, prompt_ids, i):
    without = torch.cat([prompt_ids[:i], prompt_ids[i + 1:]])   # delete token i (not replace it)
    return logp(prompt_ids) - logp(without)


def _deletion_by_replacement(logp, prompt_ids, i):
    replaced = prompt_ids.clone()
    replaced[i] = 0
    return logp(prompt_ids) - logp(replaced)


def _deletion_sign_flipped(logp, prompt_ids, i):
    return -_deletion_effect(logp, prompt_ids, i)


def _deletion_off_by_one(logp, prompt_ids, i):
    return _deletion_effect(logp, prompt_ids, i + 1)


def _fake_logp(p_ids):
    """A deterministic stand-in for a model: depends on every token and on its position."""
    x = p_ids.double()
    w = torch.arange(1, len(x) + 1, dtype=torch.float64)
    return float(torch.sin(x * 0.37 + w * 0.11).sum() / (1 + len(x)) - 0.01 * len(x))


@_exercise("03", "Exercise 3.1 · a token's effect by deletion", _deletion_effect,
           {"replaced": _deletion_by_replacement, "sign": _deletion_sign_flipped, "off by one": _deletion_off_by_one})
def check_deletion_effect(fn, *, logp=None, prompt_ids=None, positions=None):
    logp = logp or _fake_logp
    prompt_ids = torch.tensor([5, 17, 3, 42, 8, 11, 29, 2]) if prompt_ids is None else prompt_ids
    positions = positions or [1, 4, 6]
    for i in positions:
        want = _deletion_effect(logp, prompt_ids, i)
        _diagnose(float(fn(logp, prompt_ids, i)), want, {
            "You replaced the token; delete it (the sequence gets one token shorter).":
                lambda: _deletion_by_replacement(logp, prompt_ids, i),
            "The sign is flipped: effect = log p(y | prompt) − log p(y | prompt without token i).": lambda: -want,
            "Off by one: you deleted token i + 1.": lambda: _deletion_off_by_one(logp, prompt_ids, i),
        }, f"token {i}")


def _caa_vector(acts_with, acts_without):
    mean_with = torch.stack([a.mean(0) for a in acts_with]).mean(0)       # per prompt over tokens, then over prompts
    mean_without = torch.stack([a.mean(0) for a in acts_without]).mean(0)
    return mean_with - mean_without


def _caa_reversed(acts_with, acts_without):
    return -_caa_vector(acts_with, acts_without)


def _caa_pooled(acts_with, acts_without):
    return torch.cat(acts_with).mean(0) - torch.cat(acts_without).mean(0)


def _caa_last_token(acts_with, acts_without):
    return torch.stack([a[-1] for a in acts_with]).mean(0) - torch.stack([a[-1] for a in acts_without]).mean(0)


def _acts(seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 16, generator=g) + 0.5 for n in (3, 9, 5)], [torch.randn(n, 16, generator=g) for n in (4, 2, 8)]


@_exercise("03", "Exercise 3.2 · a CAA vector: a difference of means", _caa_vector,
           {"reversed": _caa_reversed, "pooled tokens": _caa_pooled, "last token": _caa_last_token})
def check_caa_vector(fn):
    w, wo = _acts(0)
    _diagnose(fn(w, wo), _caa_vector(w, wo), {
        "Reversed: the vector points *towards* the context, mean(with) − mean(without).": lambda: _caa_reversed(w, wo),
        "Average each prompt over its tokens first, then over prompts (pooling all tokens lets long prompts count more).":
            lambda: _caa_pooled(w, wo),
        "Use every article token, not only the last one.": lambda: _caa_last_token(w, wo),
    }, "the CAA vector")


# ---------------------------------------------------------------------------------------------
# 04 · Fints
# ---------------------------------------------------------------------------------------------

def _aggregate_weights(scores, k=5, tau=0.1):
    scores = np.asarray(scores, dtype=float)
    top = np.argsort(-scores, kind="stable")[:k]
    z = scores[top] / scores.max() / tau                 # BM25 scaled to 0–1 first, then the temperature
    w = np.exp(z - z.max())
    weights = np.zeros_like(scores)
    weights[top] = w / w.sum()
    return weights


def _aggregate_all_items(scores, k=5, tau=0.1):
    scores = np.asarray(scores, dtype=float)
    z = scores / scores.max() / tau
    w = np.exp(z - z.max())
    return w / w.sum()


def _aggregate_unscaled(scores, k=5, tau=0.1):
    scores = np.asarray(scores, dtype=float)
    top = np.argsort(-scores, kind="stable")[:k]
    z = scores[top] / tau
    w = np.exp(z - z.max())
    weights = np.zeros_like(scores)
    weights[top] = w / w.sum()
    return weights


_BM25 = np.array([2.1, 7.5, 0.3, 5.9, 6.8, 1.2, 4.4, 6.1, 0.0])


@_exercise("04", "Exercise 4.1 · Fints' input-aware weights", _aggregate_weights,
           {"all items": _aggregate_all_items, "unscaled": _aggregate_unscaled})
def check_aggregate_weights(fn):
    for k, tau in ((5, 0.1), (3, 0.5), (9, 1.0)):
        got = np.asarray(fn(_BM25, k=k, tau=tau), dtype=float)
        _diagnose(got, _aggregate_weights(_BM25, k, tau), {
            "Only the top k items get a weight; the others get 0.": lambda: _aggregate_all_items(_BM25, k, tau),
            "Divide the BM25 scores by the best one before the temperature (τ works on a 0–1 scale).":
                lambda: _aggregate_unscaled(_BM25, k, tau),
        }, f"k={k}, tau={tau}")


def _steering_hook(vector, scale):
    def hook(resid, hook=None):          # resid: [batch, pos, d_model]
        return resid + scale * vector    # every position, every step
    return hook


def _steer_last_only(vector, scale):
    def hook(resid, hook=None):
        resid = resid.clone()
        resid[:, -1] += scale * vector
        return resid
    return hook


def _steer_no_scale(vector, scale):
    def hook(resid, hook=None):
        return resid + vector
    return hook


@_exercise("04", "Exercise 4.2 · a steering hook", _steering_hook,
           {"last position only": _steer_last_only, "no scale": _steer_no_scale})
def check_steering_hook(make_hook):
    g = torch.Generator().manual_seed(0)
    resid, vector = torch.randn(2, 6, 8, generator=g), torch.randn(8, generator=g)
    for scale in (0.0, 1.0, 4.0):
        out = make_hook(vector, scale)(resid.clone(), None)
        if out is None:
            raise Wrong("The hook returned None: return the steered tensor.")
        _diagnose(out, resid + scale * vector, {
            "Add the vector at every position, not only the last (the prompt is steered too).":
                lambda: _steer_last_only(vector, scale)(resid.clone()),
            "Multiply the vector by `scale`.": lambda: resid + vector,
        }, f"scale={scale}")


# ---------------------------------------------------------------------------------------------
# 05 · comparing methods
# ---------------------------------------------------------------------------------------------

def _paired_bootstrap(method, baseline, n_boot=2000, seed=0):
    d = np.asarray(method, dtype=float) - np.asarray(baseline, dtype=float)   # one difference per query
    rng = np.random.default_rng(seed)
    means = [rng.choice(d, size=len(d), replace=True).mean() for _ in range(n_boot)]
    return d.mean(), np.percentile(means, 2.5), np.percentile(means, 97.5)


def _unpaired_bootstrap(method, baseline, n_boot=2000, seed=0):
    a, b = np.asarray(method, dtype=float), np.asarray(baseline, dtype=float)
    rng = np.random.default_rng(seed)
    means = [rng.choice(a, len(a)).mean() - rng.choice(b, len(b)).mean() for _ in range(n_boot)]
    return a.mean() - b.mean(), np.percentile(means, 2.5), np.percentile(means, 97.5)


def _paired_reversed(method, baseline, n_boot=2000, seed=0):
    return _paired_bootstrap(baseline, method, n_boot, seed)


def _paired_data():
    rng = np.random.default_rng(3)
    base = rng.beta(2, 4, size=80)
    return np.clip(base + rng.normal(0.015, 0.03, size=80), 0, 1), base


@_exercise("05", "Exercise 5.1 · a paired bootstrap", _paired_bootstrap,
           {"unpaired": _unpaired_bootstrap, "reversed": _paired_reversed})
def check_paired_bootstrap(fn):
    method, baseline = _paired_data()
    diff, lo, hi = (float(x) for x in fn(method, baseline))
    want, ref_lo, ref_hi = _paired_bootstrap(method, baseline, n_boot=20000, seed=1)
    if math.isclose(diff, -want, rel_tol=1e-6):
        raise Wrong("Reversed: the difference is method − baseline.")
    if not math.isclose(diff, want, rel_tol=1e-6):
        raise Wrong(f"The difference should be the mean per-query difference, {want:.4f}; got {diff:.4f}.")
    width = ref_hi - ref_lo
    if hi - lo > 2 * width:
        raise Wrong("The interval is far too wide: resample the *per-query differences* (pairs stay together), "
                    "not the two score lists independently.")
    if abs(lo - ref_lo) > 0.3 * width or abs(hi - ref_hi) > 0.3 * width:
        raise Wrong(f"Expected about [{ref_lo:.4f}, {ref_hi:.4f}], got [{lo:.4f}, {hi:.4f}].")


def _shared_queries(results, methods):
    ids = [set(results.loc[results["method"] == m, "id"]) for m in methods]
    return set.intersection(*ids)                     # the queries *every* method has


def _all_queries(results, methods):
    return set(results.loc[results["method"].isin(methods), "id"])


def _first_method_queries(results, methods):
    return set(results.loc[results["method"] == methods[0], "id"])


_RESULTS = pd.DataFrame([{"method": m, "id": f"q{i}"} for m, n in (("rag", 8), ("dps", 5), ("fints", 6))
                         for i in range(n)] + [{"method": "generic", "id": f"q{i}"} for i in (1, 3, 5, 7, 9)])


@_exercise("05", "Exercise 5.2 · the queries every method shares", _shared_queries,
           {"union": _all_queries, "first method": _first_method_queries})
def check_shared_queries(fn):
    for methods in (["rag", "dps", "fints"], ["rag", "generic"], ["fints", "rag", "generic"]):
        got, want = set(fn(_RESULTS, methods)), _shared_queries(_RESULTS, methods)
        if got == want:
            continue
        if got == _all_queries(_RESULTS, methods):
            raise Wrong("That is every query *any* method has (a union); keep those *all* have (an intersection).")
        if got == _first_method_queries(_RESULTS, methods):
            raise Wrong("Those are the first method's queries; the others may lack some.")
        raise Wrong(f"For {methods}: expected {sorted(want)}, got {sorted(got)}.")

