# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 05 · Comparing every method on the same users
#
# Notebooks 02–04 each built one way to personalize. Here they meet: the same model
# (SmolLM2-135M-Instruct), the same LaMP-4 news users, the same greedy decoding and the same
# metrics (ROUGE-1, ROUGE-L, METEOR against the headline the author really wrote).
#
# | method | what it does | notebook |
# |---|---|---|
# | `generic` | the article alone — the floor | 01 |
# | `rag` | the user's 5 most similar earlier articles + headlines as earlier chat turns — **the bar to beat** | 01 |
# | `dps` | `rag`, decoded with Differential Preference Steering (contrast with the top preference heads masked; tuned: α = 1, top 2%; the saved all-users run used the authors' entropy α and 4%) | 02 |
# | `caa-all` / `steerx-caa` | `rag`, steered by a CAA vector from ALL history / from the SteerX description | 03 |
# | `opt-all` / `steerx-opt` | the same with a vector *optimised* on the history / on the description | 03 |
# | `fints` / `fints+rag` / `caa-user` | the article (or `rag`), steered by per-input Fints vectors / the user's mean vector | 04 |
# | `caa-all+dps`, `steerx-caa+dps` | a steering vector **and** DPS decoding at once | this one |
# | `lora-user` / `lora-user+rag` / `lora-task` / `lora-task+rag` | the fine-tuning baseline: a LoRA adapter per user (or one on the tuning users), on the plain or `rag` prompt | this one (§1d, §3b) |
#
# Running all of them on all 207 queries takes hours on a laptop CPU, so part 1 reads the
# results of `workbench bench` runs saved in `results/` (predictions and scores, with the exact
# commands and settings that produced them). Part 3 runs the methods live on one query, including
# a combination, so you can see the mechanics.
#
# | | |
# |---|---|
# | **Difficulty** | ★★☆ intermediate |
# | **You need** | notebook 01 (metrics, bootstrap intervals); 02–04 for what each method does |
# | **You will learn** | comparing methods fairly: shared queries, paired differences with bootstrap intervals, wins and losses; settings tuned on some users and reported on others; a second model; the fine-tuning baseline and where a LoRA adapter changes the model; per-user effects and the noise floor; combining a steering vector with DPS |
# | **Time** | 35 s to run on 2 CPU cores, no GPU (measured; the adapter of §3b trained in it), plus ~45 min to read and do the exercises |
# | **Exercises** | 5.1 a paired bootstrap (★★☆, ~15 min) · 5.2 the queries every method shares (★☆☆, ~10 min) |
# | **Methods** | DPS (Zhang et al., 2026), SteerX (Zhao et al., arXiv 2510.22256), Fints (Du et al., arXiv 2510.27206), CAA (Rimsky et al., 2024, arXiv 2312.06681) — see [docs/methods.md](../docs/methods.md); the paired bootstrap (Efron & Tibshirani, 1993; for NLP: Koehn, 2004) |

# %%
from pathlib import Path

import pandas as pd
import workbench as wb
from exercises import check, solution   # the course's exercise checks (notebooks/exercises/)
from workbench.runner.compare import best_covered, comparison_table, format_table, load_results, per_user
from workbench.data.lamp import load_lamp4_news
from workbench.runner.figures import paired_figure, per_user_figure, results_figure

pd.set_option("display.max_colwidth", 120)
ROOT = Path(wb.__file__).resolve().parent.parent
data = load_lamp4_news()
results = load_results(ROOT / "results" / "lamp4-news_smollm2-135m.csv", dataset=data)
source = results.attrs["source"]
print(source["model"], source["task"], source["split"], "|", source["machine"])
pd.Series(source["n_per_method"], name="queries run").to_frame().T

# %% [markdown]
# ## 1. One table
#
# Runs grow a few queries at a time and resume when cut off (the JSON beside the CSV says which
# commands produced what), so a saved result can be partial. A fair table only uses the queries
# **every** row has: `comparison_table` restricts to them and says how many (`n`), and
# `best_covered` keeps the methods that have covered the most queries and names any still behind.
# In the saved results every method has run on all 207 queries, so nothing is left out.
#
# Each row has the mean and a 95% bootstrap interval, and — more useful — the **paired**
# difference to `rag` on the same queries: per-query differences, averaged, with their own
# interval, plus how many queries the method won, tied and lost. Two methods whose intervals
# overlap can still differ clearly when compared pair by pair.

# %%
families = {
    "all methods": ["generic", "rag", "dps", "caa-all", "steerx-caa", "opt-all", "steerx-opt",
                    "fints", "fints+rag", "caa-user", "caa-all+dps", "steerx-caa+dps"],
}
ran = set(results["method"])
methods, behind = best_covered(results, families["all methods"])
table = comparison_table(results, methods, baseline="rag")
print(f"{table.attrs['n']} queries, the {len(methods)} methods that covered them all; "
      f"still behind: {behind or 'none'}")
table[["method", "n", "rouge1", "rougeL", "meteor", "diff_vs_rag", "diff_lo_vs_rag", "diff_hi_vs_rag",
       "wins_vs_rag", "losses_vs_rag"]].round(4)

# %%
paired_figure(table)

# %% [markdown]
# The same, family by family, each on the queries *its* methods share (so a family that has run
# further gets a larger `n` and tighter intervals):

# %%
for name, ms in {"SteerX vs its all-history twins": ["generic", "rag", "caa-all", "steerx-caa", "opt-all", "steerx-opt"],
                 "Fints and its baseline": ["generic", "rag", "fints", "fints+rag", "caa-user"],
                 "DPS and the combinations": ["generic", "rag", "dps", "caa-all+dps", "steerx-caa+dps"]}.items():
    ms = [m for m in ms if m in ran]
    print(f"### {name}")
    print(format_table(comparison_table(results, ms)))
    print()

# %%
results_figure(table)

# %% [markdown]
# ## 1b. Settings chosen on tuning users, reported on the others
#
# The table above runs every method at the settings it was built with — some picked by hand. A
# reader can't tell whether "nothing beats `rag`" is about the methods or about those settings.
# So the users are split once, by a stable hash of their id, into **tuning users** (about a
# third) and **evaluation users**; `workbench tune` tries a small declared grid per method on
# the tuning users only and keeps the best point (ROUGE-1; ties go to the simpler setting), and
# the table below is on the evaluation users only, every method at its chosen setting.

# %%
from workbench.data.splits import describe_split

tuned = load_results(ROOT / "results" / "lamp4-news_smollm2-135m_eval.csv", dataset=data)
about = tuned.attrs["source"]
print(describe_split(data))
pd.DataFrame({m: {"setting used": info["settings"] or "defaults (not tuned)", "where the rows come from": info["source"]}
              for m, info in about["methods"].items()}).T

# %% [markdown]
# The grid each tuned method was scored on (tuning users; mean ROUGE-1 with its 95% interval).
# The intervals are wide — the tuning users are few — which is why the choice is then
# checked on users it never saw:

# %%
grids = []
for m, info in about["methods"].items():
    for point in info["grid"] or []:
        setting = {k: v for k, v in point.items() if k not in ("n", "rouge1", "lo", "hi", "run", "chosen")}
        grids.append({"method": m, "setting": setting, "n": point["n"], "rouge1": round(point["rouge1"], 4),
                      "95%": f"[{point['lo']:.3f}, {point['hi']:.3f}]", "chosen": point["chosen"]})
pd.DataFrame(grids)

# %%
eval_table = comparison_table(tuned, list(about["methods"]), baseline="rag")
print(f"{eval_table.attrs['n']} queries of the evaluation users")
eval_table[["method", "n", "rouge1", "diff_vs_rag", "diff_lo_vs_rag", "diff_hi_vs_rag", "wins_vs_rag",
            "losses_vs_rag"]].round(4)

# %%
paired_figure(eval_table, title="Evaluation users, tuned settings: paired ROUGE-1 difference to rag")

# %% [markdown]
# ## 1c. The same protocol on the second embedded model: Gemma 3 270M
#
# Gemma 3 270M is a *base* model: it has no chat turns, so its prompts are few-shot text (the
# user's earlier article → headline pairs, then the new article and `Headline:`). Every setting
# below was tuned on Gemma's own runs on the same tuning users (smaller grids than SmolLM2's —
# the CPU budget; the `.json` beside the table lists them), then evaluated on the first
# evaluation-user queries. Do SmolLM2's findings hold on a second model?

# %%
gemma = load_results(ROOT / "results" / "lamp4-news_gemma3-270m_eval.csv", dataset=data)
g_about = gemma.attrs["source"]
pd.DataFrame({m: {"setting used": info["settings"] or "defaults (not tuned)", "n": info["n"]}
              for m, info in g_about["methods"].items()}).T

# %%
g_table = comparison_table(gemma, list(g_about["methods"]), baseline="rag")
print(f"Gemma 3 270M: {g_table.attrs['n']} queries of the evaluation users, every method on the same ones")
g_table[["method", "n", "rouge1", "diff_vs_rag", "diff_lo_vs_rag", "diff_hi_vs_rag", "wins_vs_rag",
         "losses_vs_rag"]].round(4)

# %% [markdown]
# ## 1d. The baseline practitioners would pick: a LoRA adapter per user
#
# Steering is not the only way to personalize a small model: one can fine-tune it. OPPU (Tan et
# al., EMNLP 2024) trains **one parameter-efficient adapter per user** on the user's own history
# and combines it with retrieval. `lora-user` trains a LoRA adapter (peft; rank 8, on the
# attention and MLP projections) on the user's earlier items as the task's own pairs (article →
# the headline they wrote) and decodes the plain prompt with it; `lora-user+rag` adds the `rag`
# prompt (OPPU's setting). `lora-task` / `lora-task+rag` train **one** adapter on the *tuning*
# users' histories — task adaptation without personalization — so a gain can be told apart from
# mere fitting to the task. Learning rate tuned on the tuning users like every other method;
# the table is on the same 162 evaluation-user queries, paired with `rag`.

# %%
lora = load_results(ROOT / "results" / "lamp4-news_smollm2-135m_eval_lora.csv", dataset=data)
l_about = lora.attrs["source"]
lora_methods = [m for m in l_about["methods"] if m not in ("generic", "rag")]
pd.DataFrame({m: {"setting used": l_about["methods"][m]["settings"], "n": l_about["methods"][m]["n"]}
              for m in lora_methods}).T

# %%
l_table = comparison_table(lora, ["generic", "rag", *lora_methods], baseline="rag")
print(f"{l_table.attrs['n']} queries of the evaluation users")
l_table[["method", "n", "rouge1", "diff_vs_rag", "diff_lo_vs_rag", "diff_hi_vs_rag", "wins_vs_rag",
         "losses_vs_rag", "seconds_per_example"]].round(4)

# %% [markdown]
# And OPPU's setting on the second model, Gemma 3 270M (its own tuning; the 81 evaluation queries of §1c):

# %%
g_lora = load_results(ROOT / "results" / "lamp4-news_gemma3-270m_eval_lora.csv", dataset=data)
gl_table = comparison_table(g_lora, ["generic", "rag", "lora-user+rag"], baseline="rag")
gl_table[["method", "n", "rouge1", "diff_vs_rag", "diff_lo_vs_rag", "diff_hi_vs_rag", "wins_vs_rag",
          "losses_vs_rag"]].round(4)

# %% [markdown]
# ## 1e. A second task: news categories (LaMP-2N), a classification
#
# The same 69 authors, but the output is one of 21 category labels (listed in every input), and a
# method's prediction is the label it scores highest (each label's mean log-probability per token
# under the method: the steering vector or DPS's contrast acts on the choice). Before any steering:
# is the history worth anything here? The bar is a rule with no model at all — answer the user's
# most frequent category (`majority`). Each method's settings were tuned on LaMP-2N's own tuning
# users (accuracy), and DPS masks LaMP-2N's own preference heads (PCS on the label's likelihood):

# %%
from workbench.data.lamp import load_task_data
from workbench.data.metrics import task_labels

news_cats = load_task_data("lamp2n")
cats = load_results(ROOT / "results" / "lamp2n-news_smollm2-135m_eval.csv", dataset=news_cats)
cats_about = cats.attrs["source"]
c_table = comparison_table(cats, list(cats_about["methods"]), baseline="rag", labels=task_labels("lamp2n"))
c_table["setting"] = [cats_about["methods"][m]["settings"] or "—" for m in c_table["method"]]
c_table[["method", "n", "accuracy", "macro_f1", "diff_vs_rag", "diff_lo_vs_rag", "diff_hi_vs_rag", "setting"]].round(4)

# %% [markdown]
# `generic` scores 0: without the history, the 135M model prefers the *first* label of the list for
# every article — a position bias of small models in multiple choice. With the user's earlier articles
# and their categories in the prompt, `rag` reaches the majority rule but does not pass it:

# %%
cats.query("method == 'generic'")["prediction"].value_counts().head(3)

# %% [markdown]
# Two methods do clear the majority rule, both fitted to each user by gradient over the `rag`
# prompt: `lora-user+rag`, a rank-8 LoRA adapter trained on the user's 16 most recent items (the
# fine-tuning baseline practitioners use, OPPU's setting), and `opt-all`, one norm-bounded steering
# vector fitted (12 Adam steps) to the labels of their 8 most recent items. Paired against
# `majority` on the same queries — and note macro-F1: the adapter's does not rise (it wins by
# choosing the user's usual category more often), the vector's does. Last row: the same vector
# fitted to reproduce the user's SteerX preference description instead of their labels
# (`steerx-opt`) — on a classification task the description is a lossy summary of what the labels
# say directly, and the vector drifts to a few categories whoever the user:

# %%
vs_majority = comparison_table(cats, ["majority", "rag", "lora-user+rag", "opt-all", "steerx-opt"], baseline="majority",
                               labels=task_labels("lamp2n"))
usual = cats.pivot(index="id", columns="method", values="prediction")
vs_majority["picks_usual_label"] = [(usual[m] == usual["majority"]).mean().round(3) for m in vs_majority["method"]]
vs_majority[["method", "n", "accuracy", "macro_f1", "diff_vs_majority", "diff_lo_vs_majority", "diff_hi_vs_majority",
             "picks_usual_label"]].round(4)

# %% [markdown]
# ## 1f. A third task: scholarly titles (LaMP-5), ten times the users
#
# 675 ACL Anthology authors, one query each: the abstract of their latest paper → its title, with
# 9–20 earlier papers (title + abstract) as the history. With three times the evaluation users of
# LaMP-4, paired intervals are about half as wide — if a method helps even a little, this is where
# it would show:

# %%
titles = load_task_data("lamp5")
papers = load_results(ROOT / "results" / "lamp5-acl_smollm2-135m_eval.csv", dataset=titles)
papers_about = papers.attrs["source"]
p_table = comparison_table(papers, list(papers_about["methods"]), baseline="rag")
p_table["setting"] = [papers_about["methods"][m]["settings"] or "—" for m in p_table["method"]]
p_table[["method", "n", "rouge1", "meteor", "diff_vs_rag", "diff_lo_vs_rag", "diff_hi_vs_rag", "wins_vs_rag",
         "losses_vs_rag", "setting"]].round(4)

# %%
paired_figure(p_table, title="LaMP-5 scholarly titles, evaluation users: paired ROUGE-1 difference to rag")

# %% [markdown]
# DPS is the first tuned method above `rag` in this project. Before believing it is about the
# author, look at length: SmolLM2 writes titles twice the gold's length, and DPS's are shorter —
# ROUGE-1 F1 rewards that whatever the words. `tools/length_control.py` cuts each baseline's title
# to DPS's number of words *for that query* and re-scores it (a diagnostic: no deployable method
# knows DPS's length):

# %%
length_control = pd.read_csv(ROOT / "results" / "lamp5-acl_smollm2-135m_length-control.csv")
length_control.round(4)

# %% [markdown]
# Cut to DPS's length, `rag` is within a hair of DPS (the `delta_dps` of the `rag` row cut to DPS's
# length, its interval across 0): the gain was length. Cut the same way, `generic` stays below DPS —
# what the history adds survives the cut; what DPS adds does not.
#
# The steering vectors come in as they finish their runs (issue 29). The all-history CAA vector
# (`caa-all`, scale 0.5 chosen on the tuning users from a flat grid) is the first: its interval
# against `rag` spans 0, and it leaves `rag`'s length as it was — it changes some words, not the
# titles' shape.
#
# Their combination is another matter. `caa-all+dps` adds the `caa-all` vector to the `rag` prompt
# *and* decodes with DPS's contrast (each part at its own tuned setting, only DPS's α tuned again on
# the tuning users: 0.5). It has the table's largest gain, above both of its parts — and it outlasts
# the same length cut, against every baseline:

# %%
pd.read_csv(ROOT / "results" / "lamp5-acl_smollm2-135m_length-control_caa-all-dps.csv").round(4)

# %% [markdown]
# Cut to the combination's length per query, `rag` still trails it with an interval above 0, and so
# do `dps` and `caa-all` cut the same way. Its titles gain ROUGE-1 recall as well as precision (0.443
# and 0.260 vs `rag`'s 0.417 and 0.213), which no trimming gives. Whether it is about the *author* is
# a separate question: it writes no more of the author's own words (words of earlier titles that the
# abstract lacks) than `rag` does — `tools/history_words.py` and `results/README.md` — so what it
# improves is the choice among the abstract's words.
#
# A best-of-the-table result is the one most likely to be flattered by its sample. Run again on the
# other 150 evaluation users (queries 301–450, `tools/bench_slice.py`), it keeps a gain over `rag`
# (+0.023 [+0.004, +0.041]) but not the part beyond length (+0.008 [−0.012, +0.026] after the cut);
# over all 450 users, +0.037 and +0.023 beyond length. Expect about half of what the first 300 showed.

# %% [markdown]
# Plain-PCS heads are not about the author. DPS with the *contrastive* heads (plain PCS minus the
# same examples scored without history, on the tuning users) at plain DPS's tuned setting is kept
# as a comparison file — its settings were not tuned for these heads — with the same length control:

# %%
contrastive = load_results(ROOT / "results" / "lamp5-acl_smollm2-135m_eval_dps-contrastive.csv", dataset=titles)
c_table = comparison_table(pd.concat([papers[papers["method"].isin(["rag", "dps"])], contrastive], ignore_index=True),
                           ["rag", "dps", "dps-contrastive"], baseline="rag")
c_table[["method", "n", "rouge1", "meteor", "diff_vs_rag", "diff_lo_vs_rag", "diff_hi_vs_rag"]].round(4)

# %%
pd.read_csv(ROOT / "results" / "lamp5-acl_smollm2-135m_length-control_dps-contrastive.csv").round(4)

# %% [markdown]
# Here the gain outlasts the cut: `rag` trimmed to the contrastive run's length per query stays below
# it, with an interval above 0 — unlike plain DPS. It is one comparison among many, on heads the
# specificity study found not specific on LaMP-5, so it asks for a tuned run before it counts.

# %% [markdown]
# The same 300 queries on the second model, Gemma 3 270M — a *base* model, so its prompts are
# few-shot text ("Abstract: … Title: …" records of the author's earlier papers before the query).
# Zero-shot it has no example of what a title is and continues the abstract; the history is what
# makes it write titles at all — and short ones, where SmolLM2 writes twice the gold's length:

# %%
g_papers = load_results(ROOT / "results" / "lamp5-acl_gemma3-270m_eval.csv", dataset=titles)
g_papers_about = g_papers.attrs["source"]
gp_table = comparison_table(g_papers, list(g_papers_about["methods"]), baseline="rag")
gp_table["words"] = [g_papers.query("method == @m")["prediction"].str.split().str.len().mean().round(1)
                     for m in gp_table["method"]]
gp_table[["method", "n", "rouge1", "meteor", "diff_vs_rag", "diff_lo_vs_rag", "diff_hi_vs_rag", "words"]].round(4)

# %% [markdown]
# Tuned on Gemma's own tuning users, DPS (masking Gemma's plain-PCS heads, two of them in layer 1)
# lands *below* `rag`, at the same length: on a base model whose titles are already the gold's
# length, contrasting with a model that lost heads every output needs pushes away from good titles.
# The Fints rows are Gemma's too (issue 29 asks for them on this model): the input-aware mix of the
# user's item vectors over the `rag` prompt (`fints+rag`) also lands below `rag`, and their plain
# mean added to the history-free prompt (`caa-user`) lifts `generic` a little without reaching `rag`.

# %% [markdown]
# ## 2. Per user: where each method wins and loses
#
# Averages hide users. Below, every column is a user, every row a method, and the colour is the
# method's mean ROUGE-1 for that user minus `rag`'s. Users are sorted by how much the methods
# help them on average: on the left, users every method hurts (usually ones whose retrieved
# history already fits well), on the right, users the steering helps.

# %%
users = per_user(results, methods)
per_user_figure(users, baseline="rag")

# %%
diff = users.drop(columns="rag").sub(users["rag"], axis=0)
pd.DataFrame({"users won": (diff > 0).sum(), "users lost": (diff < 0).sum(),
              "best user": diff.idxmax(), "gain there": diff.max().round(3),
              "worst user": diff.idxmin(), "loss there": diff.min().round(3)})

# %% [markdown]
# What do the outputs look like where the best-performing steering method wins most? Gold
# headline, `rag` and that method side by side:

# %%
best = table[table["method"] != "rag"].sort_values("diff_vs_rag").iloc[-1]["method"]
u = diff[best].idxmax()
side = results[(results["user_id"] == u) & results["method"].isin(["rag", best])]
side.pivot_table(index=["id", "gold"], columns="method", values="prediction", aggfunc="first")

# %% [markdown]
# ## 3. Live: the methods on one query, and a combination
#
# `run_bench` takes method names *or* method objects with their settings. The combination
# `steerx-caa+dps` adds the SteerX vector while decoding with DPS; its heads come from the
# preference scores saved in `results/` (computed exactly as notebook 02 explains, on
# leave-one-out examples of the users' own histories — recomputing them takes minutes).
# Everything is greedy, so these outputs are the same on every run.

# %%
import tempfile
from workbench.runner.bench import run_bench
from workbench.methods.combined import SteerxCaaDps
from workbench.methods import GenerationSettings, make_methods

model = wb.load_model()
user = data.users()[1]
queries = data.by_user(user)[:1]   # one query keeps this cell to a minute or two on a CPU
settings = GenerationSettings()
heads = str(ROOT / "results" / "pcs_lamp4-news_smollm2-135m.json")
methods_live = make_methods(["generic", "rag", "steerx-caa"], settings) + [SteerxCaaDps(settings, heads_file=heads)]
live = run_bench(model, queries, methods_live, tempfile.mkdtemp(), progress=True)
live.outputs[["method", "id", "prediction", "gold", "rouge1"]]

# %%
# NBVAL_CHECK_OUTPUT
# Greedy decoding: the rag headline for this query is a fixed string.
print(live.outputs.query("method == 'rag'")["prediction"].iloc[0])

# %% [markdown]
# The description SteerX wrote for this user (it built the steering vector from it) and the
# heads DPS masked:

# %%
row = live.outputs.query("method == 'steerx-caa+dps'").iloc[0]
print(row["description"])
print("masked heads:", row["heads"])

# %% [markdown]
# ## 3b. Where a LoRA adapter acts — and does it move the preference heads?
#
# A steering vector acts at one layer; DPS at a few heads. An adapter changes every projection it
# covers, a little. Where does it change the model *most*? Below: this user's adapter, trained
# exactly as `lora-user+rag` trains it (its tuned settings), and for each layer and projection
# the size of the adapter's addition to the projection's output on the user's own history,
# relative to the output itself (`output_rel`). Triangles mark the layers of the top-2% PCS
# heads DPS masks; dashed lines the layers the steering vectors use (SteerX/CAA at 15 and 20,
# Fints and `caa-user` at 22). Training takes a few seconds on a CPU.

# %%
from workbench.methods.lora import LoraUserRag
from workbench.science.lora import adapter_effects, adapter_figure
from workbench.science.pcs_result import PreferenceScores

tuned_lora = l_about["methods"]["lora-user+rag"]["settings"]
trainer = LoraUserRag(settings, **{k: tuned_lora[k] for k in ("rank", "lr", "epochs", "max_records")})
user_queries = data.by_user(user)
adapter = trainer.user_adapter(model, user, user_queries)
records = trainer.user_records(model, user, user_queries)
effects = adapter_effects(model, adapter, records)
pcs = PreferenceScores.load(ROOT / "results" / "pcs_lamp4-news_smollm2-135m.json", model=model)
print(adapter)
adapter_figure(effects, pcs_layers=[layer for layer, _ in pcs.top_percent(2.0)], steering_layers=[15, 20, 22],
               title=f"Where user {user}'s adapter acts (relative change of each projection's output)")

# %%
effects.groupby("kind")[["weight_rel", "output_rel"]].mean().round(4)

# %% [markdown]
# One user is an anecdote. `benchmarks/bench_adapter_heads.py` repeats this over users (one
# leave-one-out history item each, the adapter trained on the user's *other* items so it never
# saw the target) and asks the interpretability question: **does fine-tuning move the heads PCS
# finds?** It computes exact PCS of the adapted model on the item and compares it with the base
# model's saved PCS on the same item — rank correlation over all 270 heads, how many of the top
# 5 heads stay top 5, and whether the scores move in the layers where the adapter acts most.

# %%
import json as _json

study = pd.read_csv(ROOT / "results" / "adapter_heads_smollm2-135m.csv")
about_study = _json.loads((ROOT / "results" / "adapter_heads_smollm2-135m.json").read_text())
study[["user", "spearman", "top5_kept", "nll_base", "nll_adapted", "shift_peak_layer",
       "adapter_peak_layer", "shift_vs_adapter_layers"]].round(3)

# %%
summary = about_study["summary"]
print(f"{summary['examples']} users: Spearman(base PCS, adapted PCS) mean {summary['spearman_mean']:.3f} "
      f"(lowest {summary['spearman_min']:.3f}); top-5 heads kept {summary['top5_kept_mean']:.1f} of 5 on average; "
      f"over the mean scores {summary['top5_kept_of_means']} of 5")
print(f"target NLL (nats/token) {summary['nll_base_mean']:.3f} -> {summary['nll_adapted_mean']:.3f} with the adapter; "
      f"PCS moves by {summary['relative_shift_mean']:.0%} of its size")

# %% [markdown]
# ## Exercises
#
# ### Exercise 5.1 · a paired bootstrap (★★☆, ~15 min)
#
# Is `caa-user` better than `fints` — does choosing vectors *per input* help? Write
# `paired_bootstrap(method, baseline, n_boot=2000, seed=0)`: two arrays of scores on the same
# queries, in the same order. Return `(diff, lo, hi)`: the mean per-query difference method −
# baseline and a 95% percentile interval from resampling the *differences* with replacement.

# %%
import numpy as np


def paired_bootstrap(method, baseline, n_boot=2000, seed=0):
    return None   # your code here


if check("paired_bootstrap", paired_bootstrap):
    both = results[results["method"].isin(["fints", "caa-user"])].pivot_table(index="id", columns="method",
                                                                                values="rouge1").dropna()
    print("caa-user − fints: %+.4f [%+.4f, %+.4f]" % paired_bootstrap(both["caa-user"], both["fints"]))
# solution("paired_bootstrap")   # uncomment for a worked answer

# %% [markdown]
# The library's paired comparison of the same two, to compare with yours:

# %%
pair = comparison_table(results, ["fints", "caa-user"], baseline="fints")
r = pair.set_index("method").loc["caa-user"]
print(f"caa-user - fints: {r['diff_vs_fints']:+.4f} [{r['diff_lo_vs_fints']:+.4f}, {r['diff_hi_vs_fints']:+.4f}] "
      f"over {int(r['n'])} queries; wins/ties/losses {int(r['wins_vs_fints'])}/{int(r['ties_vs_fints'])}/{int(r['losses_vs_fints'])}")
print("An interval that excludes 0 is evidence; one that straddles 0 says: no difference detected at this n.")

# %% [markdown]
# ### Exercise 5.2 · the queries every method shares (★☆☆, ~10 min)
#
# A saved result can be partial. Write `shared_queries(results, methods)`: `results` has one row per
# (method, query) with columns `method` and `id`; return the set of query ids that *every* method in
# `methods` has. (`comparison_table` restricts to these.)

# %%
def shared_queries(results, methods):
    return None   # your code here


check("shared_queries", shared_queries)
# solution("shared_queries")

# %% [markdown]
# ## To think about
#
# **1.** `dps` lost to `rag` on average. Is there any user it helps? How many, and is that more
# than you would expect if it were just noise? (Hint: how many users does `generic` — which
# sees no history at all — "beat" `rag` on?) A worked answer is in the next cell — try first.

# %%
# Answer 1: count users helped, against the same count for a method that cannot use the history.
u2 = per_user(results, ["rag", "dps", "generic"])
helped = {m: int((u2[m] > u2["rag"]).sum()) for m in ["dps", "generic"]}
print(helped, "of", len(u2), "users")
print("Users 'helped' by generic set the noise floor: with ~3 queries per user, a per-user win is mostly chance.")

# %% [markdown]
# **2.** The table uses only the queries all methods share. Why is it wrong to compare a method
# measured on 207 queries with another measured on the first 60?
#
# <details><summary>Answer (click)</summary>
#
# The queries differ: the first 60 belong to the first 20 users, whose headlines may be easier or
# harder than the rest. A difference between the two numbers mixes the methods' difference with the
# difference between query sets. Restricting to shared queries (and pairing them) removes the second.
#
# </details>
