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
# # 02 · Preference heads and Differential Preference Steering
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
# Method: Zhang et al., *Differential Preference Steering* (2026); see `shared/research/methods.md` §1.

# %%
import pandas as pd
import workbench as wb
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
# agreement with the full sweep as a function of the share verified (README, "Preference heads").

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
# the same 4 examples the scores came from; the benchmarks and the closing notes use held-out users.)

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
# `dps_generate(model, prompt, heads, alpha=...)` decodes with the contrast. The default
# `alpha="entropy"` (the authors' choice) uses the entropy of the intact model's next-token
# distribution: strong contrast where the model hesitates, none where it is sure. Both streams run
# as one batch of two with the prompt computed once. With `alpha=0` it is plain greedy decoding,
# token for token.
#
# At 135M parameters there is a catch. Some high-PCS heads (an early-layer one in particular) are
# needed for *any* fluent text, so the masked model is badly broken; the raw contrast then promotes
# tokens the intact model itself finds absurd, and the output collapses (column `dps-raw`). The
# **adaptive plausibility constraint** of contrastive decoding (`plausibility=0.1`: only tokens
# with at least 10% of the top token's probability may be chosen) keeps DPS on the intact model's
# short list (column `dps`, the setting the `dps` benchmark method uses).

# %%
from workbench.science.dps import dps_generate

rows = []
for q in [data[i] for i in (0, 30, 60)]:
    rag_prompt, _ = build_prompt(model, q, k=5)
    generic_prompt, _ = build_prompt(model, q, k=0)
    rows.append({
        "user": q.user_id,
        "gold": q.gold,
        "generic": first_line(model.generate(generic_prompt, max_new_tokens=24)),
        "rag": first_line(model.generate(rag_prompt, max_new_tokens=24)),
        "dps-raw": first_line(dps_generate(model, rag_prompt, heads, alpha="entropy", max_new_tokens=24)),
        "dps": first_line(dps_generate(model, rag_prompt, heads, alpha="entropy", plausibility=0.1,
                                       max_new_tokens=24)),
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
# ## 6. Heads every headline needs vs heads that carry the user: contrastive PCS
#
# Plain PCS asks *how much does the user's headline depend on this head?* A head that every
# fluent output needs (an early head that tracks the previous token, say) scores high whoever the
# user is. DPS then contrasts the model with a broken one, not with an impersonal one.
#
# The **contrastive** score asks how much of the *personalization gain* a head carries. The gain
# is how much more likely the user's headline becomes when the model sees their history:
# `NLL(y | x) − NLL(y | x, u)`. A head's contrastive score is how much masking it removes:
#
# $$\mathrm{PCS}_{\text{contrast}}(l,h) = [\mathrm{NLL}_{\text{masked}}(y\mid x,u) − \mathrm{NLL}(y\mid x,u)] − [\mathrm{NLL}_{\text{masked}}(y\mid x) − \mathrm{NLL}(y\mid x)]$$
#
# A head that every output needs hurts both prompts alike and cancels out. `contrast="generic"` is
# the other variant: the user's own headline against the model's generic one for the same input.

# %%
contrastive = preference_scores(model, examples, how="uniform", scope="output", mode="fast", contrast="history")
contrastive

# %% [markdown]
# The exact scores, computed once for this model on 40 (plain) and 20 (contrastive) history examples
# (`workbench heads --contrast history`) and saved in `results/`, side by side. Plain PCS lights
# up the early layers; the contrastive map moves to the middle and upper layers.

# %%
from pathlib import Path
from workbench.science.pcs_result import PreferenceScores
from workbench.science.pcs_result import heatmaps

results = Path(wb.__file__).resolve().parents[1] / "results"
saved_plain = PreferenceScores.load(results / "pcs_lamp4-news_smollm2-135m.json", model=model)
saved_contrast = PreferenceScores.load(results / "pcs_lamp4-news_smollm2-135m_contrast-history.json", model=model)
heatmaps(saved_plain, saved_contrast, titles=["plain PCS (exact)", "contrastive PCS, history (exact)"])

# %%
pd.DataFrame({"plain top 8": [f"L{l}H{h}" for l, h in saved_plain.top(8)],
              "contrastive top 8": [f"L{l}H{h}" for l, h in saved_contrast.top(8)]})

# %% [markdown]
# ## 7. Are the contrastive heads specific to preference? Evidence on held-out users
#
# `benchmarks/bench_specificity.py` scores heads on the **tuning** users' histories and tests them
# on the **evaluation** users' histories, which the scores never saw. For k = 1 … 16 it masks the
# top-k heads of each kind (and k random heads, 5 draws) and measures two things:
#
# - how much of the personalization gain is removed (left; 100% = the history no longer helps);
# - how much the **no-history** NLL moves, in units of the gain (right; a head specific to
#   preference should leave the impersonal model alone).
#
# The target for "preference heads" is ≥ 50% of the gain removed by the top 8 while the no-history
# NLL moves by < 10% of the gain. Reading the table below: plain PCS heads move the no-history NLL by
# several times the gain (they break the model, with or without history) and *raise* the gain;
# contrastive heads remove a third of the gain at k = 8 while leaving the no-history NLL almost
# untouched, far above random heads — specific, but the target is not met: at 135M parameters the
# preference is spread over more than 8 heads, and k = 16 starts moving the no-history NLL too.

# %%
from workbench.runner.figures import specificity_figure

specificity = pd.read_csv(results / "specificity_smollm2-135m.csv")
specificity.pivot(index="k", columns="heads", values=["gain_removed", "nohist_shift"]).round(2)

# %%
specificity_figure(specificity)

# %% [markdown]
# ### The same on Gemma 3 270M: does the finding hold on another model?
#
# The same benchmark on the second embedded model (`bench_specificity.py --model gemma3-270m`,
# scores saved in `results/`). Plain PCS again picks the first two layers; contrastive PCS
# picks layers 3–11. The top-8 contrastive heads remove two thirds of the gain with the
# no-history NLL left alone — the target, on paper — **but random heads remove as much or
# more**: Gemma has 4 heads per layer, and masking any of them at the output positions breaks
# the use of the history. So on Gemma this is no evidence of heads that carry preference; the
# gain is fragile, not localized. Always read a head set against random ones.

# %%
g_plain = PreferenceScores.load(results / "pcs_lamp4-news_gemma3-270m_tune-users.json")
g_contrast = PreferenceScores.load(results / "pcs_lamp4-news_gemma3-270m_tune-users_contrast-history.json")
heatmaps(g_plain, g_contrast, titles=["Gemma 3 270M: plain PCS", "contrastive PCS, history"])

# %%
g_specificity = pd.read_csv(results / "specificity_gemma3-270m.csv")
specificity_figure(g_specificity)

# %% [markdown]
# ## 8. DPS with either head set: try it
#
# Choose the head set and α. Watch the headline: with plain heads and a large α the contrast
# is against a broken model and fluency goes first; contrastive heads change words more than
# grammar. `workbench tune --methods dps --grid dps.contrast=none,history ...` picks these
# settings on tuning users only (see notebook 05 for the comparison table).

# %%
head_sets = {"plain PCS": saved_plain.top_percent(4), "contrastive PCS": saved_contrast.top_percent(4)}
demo_query = data[30]
demo_prompt, _ = build_prompt(model, demo_query, k=5)
demo_rag = first_line(model.generate(demo_prompt, max_new_tokens=24))

def show_dps(head_set, alpha):
    chosen = head_sets[head_set]
    steered = first_line(dps_generate(model, demo_prompt, chosen, alpha=alpha, plausibility=0.1, max_new_tokens=24))
    print(f"{len(chosen)} heads:", ", ".join(f"L{l}H{h}" for l, h in chosen))
    print("gold:", demo_query.gold)
    print("rag: ", demo_rag)
    print(f"DPS ({head_set}, alpha={alpha}):", steered)

set_picker = widgets.ToggleButtons(options=list(head_sets), description="heads")
alpha_picker = widgets.SelectionSlider(options=[0.0, 0.5, 1.0, 2.0], value=0.5, description="alpha")
display(set_picker, alpha_picker, widgets.interactive_output(show_dps, {"head_set": set_picker, "alpha": alpha_picker}))

# %% [markdown]
# ## Exercises
#
# 1. **Random heads.** Replace `heads` with 11 random heads and rerun section 5 (e.g.
#    `import random; random.seed(0); heads = random.sample([(l, h) for l in range(30) for h in range(9)], 11)`). Does DPS still
#    change the outputs? *Answer: yes — any contrast changes tokens; what matters is whether the
#    changes move towards the user's style. Score both on many users with
#    `workbench bench --methods rag,dps` (the closing notes report the full 207-query numbers).*
# 2. **Fixed α.** Try `alpha=0.5` and `alpha=2.0`. *Answer: larger α departs further from greedy
#    decoding; at 2.0 outputs often drift off-topic, which is why the authors make α adaptive.*
# 3. **Scope.** Recompute `fast` with `scope="all"` and compare the top heads.
#    *Answer: masking at every position also changes how the profile itself is read, so heads
#    that route information inside the profile gain weight; the rankings agree only partly.*
