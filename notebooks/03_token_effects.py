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
# # 03 · Which history tokens matter? Token effects and SteerX steering
#
# When a model writes a headline *for a user*, it reads the user's earlier articles and headlines.
# Most of those tokens are just content; a few carry the user's style or interests. This notebook
#
# 1. measures the **causal effect of every history token** on the user's headline,
# 2. separates **preference-driven** tokens from tokens any headline needs (difference in effects),
# 3. lets the model turn the top tokens into a **description** of the user, and
# 4. builds **steering vectors** from that description (SteerX) or from the whole history, and
#    compares the outputs.
#
# SteerX is arXiv 2510.22256; its text was not available to us, so the estimator, selection rule,
# description prompt and vector constructions here are *our reading* of the abstract (see the
# docstring of `workbench.science.steerx`).
#
# | | |
# |---|---|
# | **Difficulty** | ★★☆ intermediate |
# | **You need** | notebooks 00–02 (log-likelihoods, hooks, attribution patching) |
# | **You will learn** | the causal effect of a history token by deletion, exactly and by a one-pass gradient estimate; verifying an estimate where it matters; preference-driven vs generic tokens; a description of the user from its top words; CAA steering vectors from a description or from the history |
# | **Time** | about 3 min (166 s) to run on 2 CPU cores, no GPU (measured), plus ~45 min to read and do the exercises |
# | **Exercises** | 3.1 a token's effect by deletion (★☆☆, ~10 min) · 3.2 a CAA vector, a difference of means (★★☆, ~10 min) |
# | **Methods** | SteerX: Zhao et al., arXiv 2510.22256 (our reading; [docs/methods.md](../docs/methods.md#token-effects-steerx-and-fints)); attribution patching (Nanda, 2023) and AtP* (Kramár et al., 2024, arXiv 2403.00745); CAA: Rimsky et al., 2024, arXiv 2312.06681 |

# %% [markdown]
# ## 1. A real user and their prompt
#
# We use LaMP-4 news headlines: each user has a *profile* (earlier articles with the headline they
# wrote) and queries (a new article). The `rag` prompt shows the user's top-3 profile items as earlier
# chat turns, then the new article.

# %%
import pandas as pd
import workbench as wb
from exercises import check, solution, make_logp   # the course's exercise checks (notebooks/exercises/)
from workbench.data.lamp import load_lamp4_news
from workbench.science.tracing import trace_example, example_prompt

model = wb.load_model()
data = load_lamp4_news()
query = data[0]
prompt, items, article, generic_prompt = example_prompt(model, query, k=3)
pd.DataFrame(items)[["text", "title"]].rename(columns={"text": "article", "title": "the user's headline"})

# %% [markdown]
# ## 2. The effect of one token
#
# The effect of history token *i* on an output *y* is how much the log-likelihood of *y* drops
# when the token is deleted:
#
# $$\text{effect}_i = \log p(y \mid \text{prompt}) - \log p(y \mid \text{prompt without token } i)$$
#
# averaged over the output's tokens (nats per token). Here *y* is the headline the user really wrote
# for this article — fine for *explaining* a known example (never use a query's gold headline to build
# something you then evaluate on it).
#
# Computing it **exactly** needs one forward pass per deleted token. `mode="exact"` saves about half
# of that: tokens before *i* never see token *i*, so their keys and values (the KV cache) are computed
# once and shared, and only the part after *i* is re-run. Deleting a token is the same as zeroing its
# column of the attention mask (positions are re-derived) — the tests check this.
#
# The **fast** estimate `mode="attn"` puts a gate on every query's attention to each history token
# (gate 0 = deleted) and takes the gradient of log p(y) with respect to all gates in one backward pass.
# It approximates the exact effects at a fraction of the cost — a Spearman rank correlation with the
# exact effects of 0.45 over tokens and 0.48 over words on SmolLM2, 20 users
# (`benchmarks/bench_tracing.py`; [docs/research-notes.md](../docs/research-notes.md)) — so we use it
# here and compare it with the exact numbers and with a verified mode below.
#
# ### Exercise 3.1 · a token's effect by deletion (★☆☆, ~10 min)
#
# Before the library does it for every token, do it for one. `make_logp(model, prompt, target)`
# returns the prompt's token ids (1-D) and `logp(ids)`, the mean log-probability of the user's
# headline after any sequence of prompt ids. Write `deletion_effect(logp, prompt_ids, i)`: the formula
# above for token `i`. The check runs it on three tokens of this prompt.
#
# With `generic=True` we also trace the model's own headline *without* the history; the column
# `effect_diff = effect − effect_generic` keeps tokens that push towards **this user's** headline,
# not towards any headline.

# %%
import torch


def deletion_effect(logp, prompt_ids, i):
    return None   # your code here


prompt_ids, logp = make_logp(model, prompt, query.gold)
check("deletion_effect", deletion_effect, logp=logp, prompt_ids=prompt_ids, positions=[40, 80, 120])
# solution("deletion_effect")   # uncomment for a worked answer

# %% [markdown]
# Now every history token at once, the fast way:

# %%
effects = trace_example(model, query, k=3, mode="attn", generic=True, progress=False)
print("user's headline:   ", effects.meta["target"])
print("generic headline:  ", effects.meta["generic_target"])
effects

# %% [markdown]
# Hover a token for its value. Red tokens raise the user's headline (more than the generic one),
# blue tokens lower it. The same numbers as a figure, one bar per token:

# %%
effects.figure(by="diff")

# %% [markdown]
# Effects add up to words (`by_word`: sum of the word's token effects, a first-order estimate of
# deleting the whole word) and to profile items (`by_item`, split into the item's input — here the
# article — and output — the user's headline):

# %%
effects.by_item(by="diff").round(4)

# %%
effects.by_word(by="diff").head(10)[["item", "part", "text", "score"]].round(4)

# %% [markdown]
# ### Fast, verified and exact
#
# The fast estimate is a first-order guess, and where it is wrong, everything selected from it is
# built on noise. `mode="verified"` spends a budget of real deletions (`verify=`, a share of the
# tokens) where they matter: half on the tokens the estimate rates largest *in size* (a first-order
# estimate can get the sign of a big effect wrong), the rest on the neighbours — the token before and
# after, the rest of the word — of the largest exact effects found so far, because effects come in
# words and phrases the estimate can miss (`selection="adaptive"`, the default; `"estimate"` spends
# it all on the largest estimates). The column `exact` says which entries are exact; the figure
# outlines them and the hover text says "(exact)" or "(estimate)".
#
# Exact tracing of all ~200 history tokens takes minutes on a laptop CPU, so we compare the three on
# the history **outputs** only (the headlines the user wrote, where their style lives; `positions="outputs"`).

# %%
from workbench.science.tracing import spearman

kw = dict(k=3, positions="outputs", progress=False)
fast_t = trace_example(model, query, mode="attn", **kw)
verified_t = trace_example(model, query, mode="verified", verify=0.3, **kw)
exact_t = trace_example(model, query, mode="exact", **kw)

def top10(te):
    return set(te.frame.nlargest(10, "effect")["position"])

pd.DataFrame([{"mode": te.meta["mode"], "seconds": te.meta["seconds"],
               "Spearman vs exact": spearman(exact_t.frame["effect"], te.frame["effect"]),
               "top-10 overlap": len(top10(te) & top10(exact_t)) / 10,
               "exact entries": int(te.frame["exact"].sum()) if "exact" in te.frame else (len(te) if te is exact_t else 0)}
              for te in (fast_t, verified_t, exact_t)]).round(3)

# %% [markdown]
# Where the fast estimate was wrong: the tokens with the largest exact effects, each with its rank
# under the three modes (1 = largest). Verification corrects the values it re-scores; the rest keep
# the estimate.

# %%
cmp = exact_t.frame[["position", "token", "effect"]].rename(columns={"effect": "exact"})
cmp["fast (attn)"] = fast_t.frame["effect"].to_numpy()
cmp["verified"] = verified_t.frame["effect"].to_numpy()
cmp["verified is exact"] = verified_t.frame["exact"].to_numpy()
for col in ("exact", "fast (attn)", "verified"):
    cmp[f"rank {col}"] = cmp[col].rank(ascending=False).astype(int)
cmp.sort_values("exact", ascending=False).head(10).round(4)

# %% [markdown]
# Verification fixes the tokens it re-scores. A token whose estimate was near zero and has no large
# neighbour is never picked and keeps its wrong value: the limit of any verification the estimate steers. Over 20 users the
# README's benchmark gives the trade-off (agreement against the share verified) and why the fast
# estimate stays SteerX's default.

# %%
verified_t.figure()

# %% [markdown]
# ## 3. Preference-driven tokens → a description
#
# `select` keeps the units with the largest positive effect: `top_k=`, `top_p=` (the fewest words
# that hold a share p of the total positive effect) or `threshold=`. SteerX then asks the model to
# describe the user from those words. The prompt is the task's (`describe_prompt("lamp4")`, from the
# task's spec in `workbench.data.tasks`; change it by passing `prompt=`):

# %%
from workbench.science.steerx import describe_preferences, describe_prompt
print(describe_prompt(query.task))

# %%
selected = effects.select(top_k=15, by="diff")
description = describe_preferences(model, selected, describe_prompt(query.task))
print("words:", ", ".join(selected["text"]))
print("description:", description)

# %% [markdown]
# For steering we don't trace a query's gold headline. `steerx_description` traces the user's **own
# history** leave-one-out: the most recent item's article is the input, the headline they wrote for it
# is the output, the other items are the history. It caches the result on disk.

# %%
from workbench.data.history import user_history
from workbench.science.steerx import steerx_description

history = user_history(list(data.by_user(query.user_id)))   # items shared by all the user's queries
pref = steerx_description(model, history, query.user_id, task=query.task, n_traces=1, top_k=15)
pref

# %% [markdown]
# ## 4. Explore: pick a user and a selection threshold
#
# The dropdown traces another user's query (a few seconds); the slider changes the selection
# threshold (nats per token) and underlines the selected words.

# %%
import ipywidgets as widgets
from IPython.display import HTML, display

first_query = {}
for ex in data:
    first_query.setdefault(ex.user_id, ex)
users = list(first_query)[:8]
traced = {}

def show(user, threshold):
    if user not in traced:
        traced[user] = trace_example(model, first_query[user], k=3, mode="attn", generic=True, progress=False)
    te = traced[user]
    sel = te.select(threshold=threshold, by="diff")
    display(HTML(te.html(by="diff", selected=sel)))
    print(f"{len(sel)} words selected:", ", ".join(sel["text"].head(20)))

user_pick = widgets.Dropdown(options=users, value=users[0], description="user")
thr = widgets.FloatSlider(value=0.01, min=0.0, max=0.05, step=0.0025, description="threshold", readout_format=".4f")
out = widgets.interactive_output(show, {"user": user_pick, "threshold": thr})
display(widgets.HBox([user_pick, thr]), out)

# %% [markdown]
# ## 5. Steering vectors: SteerX vs all history
#
# **CAA** (contrastive activation addition): run the model on the new article *with* a preference
# context and *without* it, and take the difference of the mean activations at one layer over the
# article's tokens. The SteerX vector uses the description as the context (a system message); the
# all-history twin uses the history as earlier chat turns — here the user's 12 most recent items
# (`history[-12:]`; the benchmark's `caa-all` keeps the most recent items that fit in 1536 tokens).
# Everything else is the same.
#
# ### Exercise 3.2 · a CAA vector: a difference of means (★★☆, ~10 min)
#
# Write `caa_vector(acts_with, acts_without)`: each argument is a list of activations, one
# `[n_tokens, d_model]` tensor per prompt (the article's tokens at one layer; prompts differ in
# length). Average each prompt over its tokens, then over prompts, and return mean(with) −
# mean(without). The check uses made-up activations; `caa_vectors` below does the same on the model.

# %%
def caa_vector(acts_with, acts_without):
    return None   # your code here


check("caa_vector", caa_vector)
# solution("caa_vector")

# %% [markdown]
# The library's version, on the model:
#
# `caa_vectors` takes the prompts themselves, with and without the context (the task's
# `preference_prompt` and `task_prompt` build them).
#
# `SteeringVector.apply(model, scale)` is a context manager around `wb.steer`: while it is active,
# `scale × vector` is added to the residual stream after that layer, at every position.

# %%
from workbench.data.prompts import preference_prompt, task_prompt
from workbench.science.caa import caa_vectors

layer = model.n_layers // 2
without = [task_prompt(model, query.task, article)]
v_steerx = caa_vectors(model, [preference_prompt(model, query.task, pref.description, article)], without, [layer])[layer]
v_all = caa_vectors(model, [preference_prompt(model, query.task, history[-12:], article)], without, [layer])[layer]
v_steerx, v_all

# %%
from workbench.data.prompts import first_line

def headline(p, vector=None, scale=1.0):
    if vector is None:
        return first_line(model.generate(p, max_new_tokens=24))
    with vector.apply(model, scale=scale):
        return first_line(model.generate(p, max_new_tokens=24))

pd.DataFrame([
    {"prompt": "generic (article only)", "headline": headline(generic_prompt)},
    {"prompt": "rag (3 history items)", "headline": headline(prompt)},
    {"prompt": "generic + steerx-caa vector", "headline": headline(generic_prompt, v_steerx)},
    {"prompt": "generic + caa-all vector", "headline": headline(generic_prompt, v_all)},
    {"prompt": "the user's real headline", "headline": query.gold},
])

# %% [markdown]
# ## 6. In the benchmark
#
# The four runner methods — `caa-all`, `steerx-caa`, `opt-all`, `steerx-opt` — build one vector per
# user (cached under `~/.cache/workbench/steerx/`) and steer the `rag` prompt. `opt-*` vectors are
# fitted with a few Adam steps (norm-bounded): `opt-all` to the user's history headlines,
# `steerx-opt` to reproduce what the description does. Compare them with `rag` and `generic`:
#
# ```
# workbench bench --task lamp4 --model smollm2-135m --methods generic,rag,caa-all,steerx-caa,opt-all,steerx-opt --out results/steerx
# ```
#
# `workbench.runner.sweeps.steering_sweep(model, "steerx-caa", dev_split(data), layers=[...], scales=[...])` picks the
# layer and scale on leak-free dev examples made from users' histories.
