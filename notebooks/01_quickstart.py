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
# # 01 · Quickstart: real users, personalized headlines, and how we score them
#
# This notebook uses **real data**: HuffPost articles in the LaMP-4 format, where each *user* is
# an author and the task is to write the headline of their next article. A user's **profile** is
# their earlier articles with the headlines they wrote. We will
#
# 1. load the data and browse one author's profile as a table;
# 2. ask the model for a headline with and without that profile (*generic* vs *rag*);
# 3. score the outputs against the real headline with ROUGE and METEOR;
# 4. run the same comparison through the benchmark runner that every method plugs into.
#
# | | |
# |---|---|
# | **Difficulty** | ★☆☆ introductory |
# | **You need** | notebook 00; pandas basics |
# | **You will learn** | the LaMP-4 data (users, profiles, queries); BM25 retrieval of history items; the `generic` and `rag` baselines; ROUGE-1, ROUGE-L and METEOR; bootstrap intervals; the benchmark runner |
# | **Time** | 61 s to run on 2 CPU cores, no GPU (measured), plus ~30 min to read and do the exercises |
# | **Exercises** | 1.1 ROUGE-1 by hand (★☆☆, ~10 min) · 1.2 a 95% bootstrap interval (★★☆, ~15 min) |
# | **Methods** | LaMP benchmark (Salemi et al., 2024, arXiv 2304.11406); BM25 (Robertson & Zaragoza, 2009); ROUGE (Lin, 2004); METEOR (Banerjee & Lavie, 2005); the bootstrap (Efron & Tibshirani, 1993) |

# %%
import pandas as pd
import workbench as wb
from exercises import check, solution   # the course's exercise checks (notebooks/exercises/)
from workbench.data.lamp import load_lamp4_news
from workbench.data.retrieval import rank_profile

news = load_lamp4_news()      # the copy shipped inside the package (or $WORKBENCH_LAMP4_DIR when set)
news

# %%
# NBVAL_CHECK_OUTPUT
(len(news), len(news.users()), news.task)

# %% [markdown]
# Each example is one query of one user. `to_frame()` gives the whole split as a DataFrame;
# `profile_frame()` gives one user's history.

# %%
news.to_frame().head()

# %%
example = news[0]
print(example)
example.profile_frame()[["date", "category", "title"]].tail(8)

# %% [markdown]
# ## Which profile items go into the prompt?
#
# A 135M-parameter model can't read 30 articles at once and wouldn't use them well. We pick the
# `k` items most similar to the new article with **BM25** (a classic keyword-relevance score),
# and show them as earlier turns of the chat: *user: article → assistant: headline*. (That
# format measurably beats listing them in one message at this model size.)

# %%
for item in rank_profile(example, k=5):
    print("-", item["title"])

# %% [markdown]
# ## Generic vs personalized

# %%
from workbench.methods import Generic, Rag, GenerationSettings

model = wb.load_model()
settings = GenerationSettings(max_new_tokens=32, k=5)
state = None
rows = []
for ex in news.by_user(example.user_id):
    for method in (Generic(settings=settings), Rag(settings=settings)):
        headline, info = method.generate(model, ex, state)
        rows.append({"method": method.name, "headline": headline, "gold": ex.gold})
outputs = pd.DataFrame(rows)
outputs

# %% [markdown]
# ## Scoring
#
# - **ROUGE-1**: overlap of single words (stemmed) between output and gold, as an F-score.
# - **ROUGE-L**: the longest common subsequence of words — rewards getting words in order.
# - **METEOR**: also matches stems and WordNet synonyms, and penalizes scrambled order.
#
# All three are between 0 and 1; headlines are short, so a few shared words move them a lot.

# %%
from workbench.data.metrics import score_generation

scores = pd.DataFrame([score_generation(r.headline, r.gold) for r in outputs.itertuples()])
pd.concat([outputs[["method"]], scores.round(3)], axis=1)

# %%
# NBVAL_CHECK_OUTPUT
score_generation("the cat sat", "the cat ran away")["rouge1"]   # P = 2/3, R = 2/4 -> F = 4/7

# %% [markdown]
# ### Exercise 1.1 · ROUGE-1 by hand (★☆☆, ~10 min)
#
# Write `rouge1_f(prediction, gold)`: lowercase both, split on whitespace, count the words they
# share — a word repeated in both counts as often as it appears in *both* (`collections.Counter`'s
# `&` does this) — then precision = shared / words in the prediction, recall = shared / words in
# gold, F = 2PR / (P + R), and 0 when nothing is shared. (The library also stems words, so
# "runs" matches "run"; yours need not.)

# %%
def rouge1_f(prediction, gold):
    return None   # your code here


check("rouge1_f", rouge1_f)
# solution("rouge1_f")   # uncomment for a worked answer

# %% [markdown]
# ## The benchmark runner
#
# `run_bench` runs methods on the same examples with the same model, writes every output to
# `outputs.jsonl` (an interrupted run resumes where it stopped), and summarizes each metric
# with a 95% bootstrap interval. `workbench bench` is the same thing on the command line, e.g.
# `workbench bench --task lamp4 --n 100 --methods generic,rag --out results/`.
# With 6 examples the intervals are wide — that is the honest answer at this sample size.
#
# ### Exercise 1.2 · a 95% bootstrap interval (★★☆, ~15 min)
#
# Before running it, write the interval yourself. `bootstrap_interval(scores, n_boot=2000, seed=0)`
# returns `(mean, lo, hi)`: draw `n_boot` resamples of the scores, each as long as the original and
# drawn *with replacement* (`np.random.default_rng(seed).choice(scores, size=len(scores))`), take
# each resample's mean, and return the 2.5th and 97.5th percentiles of those means. The check runs it
# on 60 made-up scores.

# %%
import numpy as np


def bootstrap_interval(scores, n_boot=2000, seed=0):
    return None   # your code here


check("bootstrap_interval", bootstrap_interval)
# solution("bootstrap_interval")

# %%
import tempfile
from workbench.runner.bench import run_bench

result = run_bench(model, news, ["generic", "rag"], tempfile.mkdtemp(), n=6, settings=settings)
result.summary[["method", "n", "rouge1", "rouge1_lo", "rouge1_hi", "rougeL", "meteor"]].round(3)

# %%
result.figure()

# %% [markdown]
# **To think about.** Change `k` to 1 and to 10. Does more history help this model?
#
# <details><summary>Answer (click)</summary>
#
# Try it — at 135M parameters more items often distract more than they help. Trust the numbers on
# the full split in [results/README.md](../results/README.md), not 6 examples.
#
# </details>
