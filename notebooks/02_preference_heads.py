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
# # 02 · Preference heads: PCS and Differential Preference Steering
#
# Some attention heads matter more than others when a model writes *for a particular user*.
# This notebook finds them on real data and uses them to steer decoding.
#
# 1. **Preference Contribution Score (PCS)** of a head = how much less likely the user's own
#    output becomes when that head is masked:
#
#    $$\mathrm{PCS}(l,h) = \mathbb{E}_{(x,u,y^*)}\big[\mathrm{NLL}(y^* \mid x,u;\ \text{head } (l,h) \text{ masked}) - \mathrm{NLL}(y^* \mid x,u)\big]$$
#
#    with NLL averaged over the output's tokens (nats per token). Positive = the head helps.
# 2. **Sparsity**: if preference lives in a few heads, masking the top-k heads should hurt much
#    more than masking k random heads.
# 3. **DPS decoding**: at each step, contrast the intact model with the model whose preference
#    heads are masked, `score = (1+α)·log p_full − α·log p_masked`: whatever the preference heads
#    add gets amplified.
#
# Whether the heads found this way carry *preference* or are just heads every output needs is the
# question of notebook **02b**.
#
# | | |
# |---|---|
# | **Difficulty** | ★★☆ intermediate |
# | **You need** | notebooks 00 and 01; what a log-probability and a gradient are |
# | **You will learn** | PCS of every head (exact, fast = attribution patching, verified); checking a fast estimate against the exact one; top-k vs random heads; where one head looks; DPS decoding, its α and the plausibility constraint |
# | **Time** | about 3 min (207 s) to run on 2 CPU cores, no GPU (measured), plus ~45 min to read and do the exercises |
# | **Exercises** | 2.1 DPS's score for the next token (★☆☆, ~10 min) · 2.2 the adaptive plausibility constraint (★★☆, ~10 min) |
# | **Methods** | DPS: Zhang et al., *Differential Preference Steering* (2026; our reading in [docs/methods.md](../docs/methods.md#preference-heads-and-differential-preference-steering)); attribution patching (Nanda, 2023; AtP*: Kramár et al., 2024, arXiv 2403.00745); contrastive decoding and its plausibility constraint (Li et al., 2023, arXiv 2210.15097) |

# %%
from pathlib import Path

import pandas as pd
import workbench as wb
from exercises import check, solution   # the course's exercise checks (notebooks/exercises/)
from workbench.data.lamp import load_lamp4_news
from workbench.science.pcs import preference_scores, sparsity_curve
from workbench.data.history import profile_examples
from workbench.runner.figures import sparsity_figure

model = wb.load_model()
data = load_lamp4_news()
model

# %% [markdown]
# ## 1. Examples that don't peek at the answers
#
# We score heads on the users' **histories**, not on the questions we will evaluate: each earlier
# article of an author becomes a question (article → the author's own headline), with the
# author's *other* earlier items as the profile. `profile_examples` builds them, one user at a
# time in turn, and never uses a headline that is a gold answer of the evaluation split.

# %%
examples = profile_examples(data, n=8)
ex = examples[0]
print(ex)
print("target (the user's headline):", ex.gold)
ex.profile_frame()[["title"]].head(5)

# %% [markdown]
# ## 2. PCS for all 270 heads, the fast way
#
# `preference_scores` has three modes:
#
# - `"exact"` masks each of the 270 heads in turn. It reuses everything the mask cannot change:
#   the layers below the masked head, and (with `scope="output"`) the whole prompt's keys and
#   values, so only the output tokens are recomputed;
# - `"fast"` is **attribution patching**: one forward and one backward pass give, for every head,
#   the first-order change `grad(NLL) · (z_masked − z)`, where `z` is the head's output;
# - `"naive"` is the one-forward-per-head loop the other two are checked against.
#
# `how="uniform"` is the masking DPS uses: the head's query is zeroed, so it attends uniformly.
# `scope="output"` masks only where the output is produced, the regime DPS decodes in.

# %%
fast = preference_scores(model, examples, how="uniform", scope="output", mode="fast")
fast

# %%
fast.heatmap()

# %% [markdown]
# `fast.frame` is a plain DataFrame (one row per head, with the spread over examples), and
# `top(k)` / `top_percent(p)` pick heads: the DPS authors mask the top 4%.
#
# **Look at layer 1, head 0 (second row from the bottom, left).** The fast estimate paints it blue — as if masking it
# *helped* the user's headline. The exact sweep (really masking it, one forward pass per head)
# finds the opposite: on 40 leave-one-out examples of LaMP-4 users, L1H0 is the *most* important
# head, +0.55 nats/token (`results/pcs_lamp4-news_smollm2-135m.json`). Attribution patching is a first-order approximation: fine for heads whose removal
# changes little, unreliable for a head whose removal changes a lot. Use the fast map to find
# candidates, then confirm the top heads exactly — the next section does that.

# %%
fast.frame.sort_values("pcs", ascending=False).head(8).round(4)

# %%
heads = fast.top_percent(4)
print(len(heads), "heads:", heads)

# %% [markdown]
# ### Is the fast estimate right? Check it exactly on one example
#
# First-order estimates can be off for heads whose masking changes a lot. On one example we
# compute the exact PCS of all heads (270 masked runs of the output tokens) and compare rankings.

# %%
exact1 = preference_scores(model, examples[:1], how="uniform", scope="output", mode="exact")
fast1 = preference_scores(model, examples[:1], how="uniform", scope="output", mode="fast")
rho = pd.Series(exact1.matrix.ravel()).rank().corr(pd.Series(fast1.matrix.ravel()).rank())
print(f"Spearman rank correlation, fast vs exact, one example: {rho:.2f}")
print("exact top 5:", exact1.top(5))
print("fast  top 5:", fast1.top(5))

# %% [markdown]
# **Verified mode** gets most of the way for a fraction of the cost: the fast estimate ranks
# every head, then the heads it rates largest *in size* (a first-order estimate can get the sign
# of a big effect wrong, as with L1H0) are masked for real. `frame["exact"]` says which entries
# are exact, and the heatmap circles them. `benchmarks/bench_verified_pcs.py` measures the
# agreement with the full sweep as a function of the share verified ([results/README.md](../results/README.md#verified-pcs-smollm2-135m)).

# %%
verified1 = preference_scores(model, examples[:1], how="uniform", scope="output", mode="verified", verify=0.2)
rho_v = pd.Series(exact1.matrix.ravel()).rank().corr(pd.Series(verified1.matrix.ravel()).rank())
print(f"Spearman, verified (20% of heads exact) vs exact: {rho_v:.2f}")
print("verified top 5:", verified1.top(5))
verified1.heatmap()

# %% [markdown]
# ## 3. Are preference heads sparse and causal?
#
# Mask the top-k heads (by PCS) and, separately, k random heads, and measure how much less
# likely the users' headlines become. If the curve for top heads rises well above the random
# band, a few heads carry much of the user-specific signal. (To keep the notebook quick this uses
# the same 4 examples the scores came from; notebook 02b and `benchmarks/bench_specificity.py` use
# held-out users.)

# %%
curve = sparsity_curve(model, examples[:4], fast, max_k=6, n_random=3)
sparsity_figure(curve)

# %% [markdown]
# ## 4. Explore one head
#
# Pick a head: the bar chart shows where it looks from the last prompt position (the moment the
# headline starts) — do its peaks fall on the earlier headlines of the user? — and the text
# shows the headline the model writes with that head masked.

# %%
import ipywidgets as widgets
from IPython.display import display
from workbench.runner.figures import attention_figure
from workbench.data.prompts import build_prompt, first_line

query = data[0]
prompt, _ = build_prompt(model, query, k=3)
ids = model.encode(prompt)
tokens = [model.tokenizer.decode([t]) for t in ids[0]]
plain_headline = first_line(model.generate(prompt, max_new_tokens=24))

def show_head(head):
    layer, h = head
    _, cache = model.bridge.run_with_cache(ids, names_filter=[f"blocks.{layer}.attn.hook_pattern"])
    weights = cache[f"blocks.{layer}.attn.hook_pattern"][0, h, -1].float().numpy()
    attention_figure(tokens, weights, f"L{layer}H{h}: attention from the last prompt token").show()
    with wb.mask_heads(model, [head], how="uniform"):
        masked = first_line(model.generate(prompt, max_new_tokens=24))
    print("gold:          ", query.gold)
    print("intact model:  ", plain_headline)
    print(f"L{layer}H{h} masked:   ", masked)

picker = widgets.Dropdown(options=[(f"L{l}H{h}", (l, h)) for l, h in fast.top(6)], description="head")
out = widgets.interactive_output(show_head, {"head": picker})
display(picker, out)

# %% [markdown]
# ## 5. DPS decoding: generic vs rag vs DPS on real users
#
# `dps_generate(model, prompt, heads, alpha=...)` decodes with the contrast. With `alpha="entropy"`
# (the authors' choice) α is the entropy of the intact model's next-token distribution: strong
# contrast where the model hesitates, none where it is sure. Both streams run as one batch of two
# with the prompt computed once. With `alpha=0` it is plain greedy decoding, token for token.
#
# ### Exercise 2.1 · DPS's score for the next token (★☆☆, ~10 min)
#
# Write the contrast itself: given the intact model's next-token log-probabilities `logp_full`, the
# masked model's `logp_masked` (1-D tensors over the vocabulary) and α, return DPS's score for every
# token, `(1 + α)·logp_full − α·logp_masked`. Greedy DPS picks its argmax.

# %%
def dps_scores(logp_full, logp_masked, alpha):
    return None   # your code here


check("dps_scores", dps_scores)
# solution("dps_scores")   # uncomment for a worked answer

# %% [markdown]
# At 135M parameters there is a catch. Masking high-PCS heads can leave a model that is badly broken
# for *any* text (notebook 02b shows that the plain-PCS top heads are largely heads every output
# needs); the raw contrast then promotes tokens the intact model itself finds absurd, and the output
# can collapse. The **adaptive plausibility constraint** of contrastive decoding keeps DPS on the
# intact model's short list: only tokens with at least β (`plausibility=0.1`) times the top token's
# probability may be chosen.
#
# ### Exercise 2.2 · the adaptive plausibility constraint (★★☆, ~10 min)
#
# Return a boolean tensor, True where a token may be chosen: `p_full ≥ β · max p_full`, computed
# from `logp_full` (in log space: `logp_full ≥ max logp_full + log β`).

# %%
import math


def plausible(logp_full, plausibility):
    return None   # your code here


check("plausible", plausible)
# solution("plausible")

# %% [markdown]
# The table compares, on three users: `generic` and `rag`; DPS with the heads found above (the
# top 4% of the *fast* scores on 8 examples, printed in §2) and entropy α, without the constraint
# (**dps-raw here**) and with it (**dps+plaus. here**); and **the `dps` benchmark method's own
# setting**: α = 1, the top 2% of heads by the *exact* PCS saved in `results/` (40 examples), with the
# constraint. (The benchmark's `dps-raw` is the authors' decoding, entropy α and the top 4%, on the
# same saved exact heads.) The heads each DPS column masks are printed first — compare them.

# %%
from workbench.science.dps import dps_generate
from workbench.science.pcs_result import PreferenceScores

results = Path(wb.__file__).resolve().parents[1] / "results"
saved_plain = PreferenceScores.load(results / "pcs_lamp4-news_smollm2-135m.json", model=model)
bench_heads = saved_plain.top_percent(2)
print("fast top 4% (8 examples):", ", ".join(f"L{l}H{h}" for l, h in heads))
print("exact top 2% (saved):    ", ", ".join(f"L{l}H{h}" for l, h in bench_heads))

rows = []
for q in [data[i] for i in (0, 30, 60)]:
    rag_prompt, _ = build_prompt(model, q, k=5)
    generic_prompt, _ = build_prompt(model, q, k=0)
    rows.append({
        "user": q.user_id,
        "gold": q.gold,
        "generic": first_line(model.generate(generic_prompt, max_new_tokens=24)),
        "rag": first_line(model.generate(rag_prompt, max_new_tokens=24)),
        "dps-raw here": first_line(dps_generate(model, rag_prompt, heads, alpha="entropy", max_new_tokens=24)),
        "dps+plaus. here": first_line(dps_generate(model, rag_prompt, heads, alpha="entropy", plausibility=0.1,
                                                   max_new_tokens=24)),
        "dps (benchmark setting)": first_line(dps_generate(model, rag_prompt, bench_heads, alpha=1.0,
                                                           plausibility=0.1, max_new_tokens=24)),
    })
pd.set_option("display.max_colwidth", 80)
pd.DataFrame(rows)

# %% [markdown]
# `details=True` shows, step by step, the α used and where the contrast changed the token that
# plain greedy decoding would have picked:

# %%
out = dps_generate(model, rag_prompt, heads, alpha="entropy", plausibility=0.1, max_new_tokens=16, details=True)
out.steps.round(3)

# %%
# NBVAL_CHECK_OUTPUT
# alpha = 0 is plain greedy decoding (a check you can rerun on any prompt)
dps_generate(model, rag_prompt, heads, alpha=0, max_new_tokens=16) == model.generate(rag_prompt, max_new_tokens=16)

# %% [markdown]
# ## To think about
#
# 1. **Random heads.** Replace `heads` with 11 random heads and rerun section 5 (e.g.
#    `import random; random.seed(0); heads = random.sample([(l, h) for l in range(30) for h in range(9)], 11)`).
#    Does DPS still change the outputs?
#    <details><summary>Answer</summary>
#
#    Yes — any contrast changes tokens; what matters is whether the changes move towards the user's
#    style. Score both on many users with `workbench bench --methods rag,dps`
#    ([results/README.md](../results/README.md) has the numbers on all 207 queries).
#    </details>
# 2. **Fixed α.** Try `alpha=0.5` and `alpha=2.0`.
#    <details><summary>Answer</summary>
#
#    Larger α departs further from greedy decoding; at 2.0 outputs often drift off-topic, which is
#    why the authors make α adaptive.
#    </details>
# 3. **Scope.** Recompute `fast` with `scope="all"` and compare the top heads.
#    <details><summary>Answer</summary>
#
#    Masking at every position also changes how the profile itself is read, so heads that route
#    information inside the profile gain weight; the rankings agree only partly.
#    </details>
