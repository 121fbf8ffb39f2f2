"""Does a method's output take the author's own words? Count the words it can only have from the history.

    python tools/history_words.py results/lamp5-acl_smollm2-135m_eval.csv --task lamp5 \
        --methods generic,rag,dps --baseline rag --out results/lamp5-acl_smollm2-135m_history-words.csv

A ROUGE gain says the output is closer to the gold, not that it is closer to *this author*: a
sharper, shorter or more on-topic output gains as much. Here, per query, the *history-only words*
are the words of the author's earlier outputs (a title's, a headline's) that the query's input does
not contain — the model can only have them from the author's history. For each method and query:
how many of them the output uses, and how many of those the gold uses too (a hit: the author wrote
that word again). A method that amplifies the author's signal should hit more than the baseline;
one that only trims or sharpens should not. ``gold`` is listed as the ceiling (the author's own
history-only words in the gold), with the ROUGE-1 headroom: how much the baseline's outputs would
gain with the gold's history-only words appended — the most that the author's words can add.
Words are ROUGE's tokens (lower-cased, Porter-stemmed) less English stop words, so a hit is a
ROUGE-1 match of a content word that came from the history.

Reads the exported table (predictions) and the task's shipped data (inputs, profiles, golds); writes
one row per method with means per query, pooled precision (hits / used) and recall (hits / the
gold's history-only words), the paired difference in hits with the baseline (95% bootstrap
interval, wins/ties/losses), plus a ``.json`` beside it with the command.
"""

from __future__ import annotations

import argparse
import functools
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import pandas as pd


@functools.lru_cache(maxsize=None)
def _tokenizer() -> Any:
    from rouge_score import tokenizers

    return tokenizers.DefaultTokenizer(use_stemmer=True)  # the one workbench.data.metrics.rouge_scorer uses


# NLTK's English stop-word list: function words are in every author's history, so without it a
# headline's "to" or "in" would count as the author's when the input happens to lack it
_STOPWORDS_TEXT = """
i me my myself we our ours ourselves you you're you've you'll you'd your yours yourself yourselves he him his
himself she she's her hers herself it it's its itself they them their theirs themselves what which who whom this
that that'll these those am is are was were be been being have has had having do does did doing a an the and but
if or because as until while of at by for with about against between into through during before after above below
to from up down in out on off over under again further then once here there when where why how all any both each
few more most other some such no nor not only own same so than too very s t can will just don don't should
should've now d ll m o re ve y ain aren aren't couldn couldn't didn didn't doesn doesn't hadn hadn't hasn hasn't
haven haven't isn isn't ma mightn mightn't mustn mustn't needn needn't shan shan't shouldn shouldn't wasn wasn't
weren weren't won won't wouldn wouldn't
"""


@functools.lru_cache(maxsize=None)
def _stopwords() -> frozenset[str]:
    return frozenset(t for w in _STOPWORDS_TEXT.split() for t in _tokenizer().tokenize(w))


def _tokens(text: str) -> set[str]:
    """ROUGE's tokens of ``text`` less stop words."""
    return set(_tokenizer().tokenize(text or "")) - _stopwords()


def history_only_words(example: Any) -> set[str]:
    """Words of the author's earlier outputs that are not in this query's input."""
    from workbench.data.history import item_fields

    _, out_field = item_fields(example.task)
    history = set().union(*(_tokens(str(item.get(out_field, ""))) for item in example.profile)) if example.profile else set()
    return history - _tokens(example.input)


def _headroom(outputs: pd.Series, examples: dict[str, Any], own: dict[str, set[str]]) -> float:
    """Mean ROUGE-1 gain of ``outputs`` with the gold's history-only words appended (as the gold
    spells them): the most that taking the author's words could add to them."""
    from workbench.data.metrics import rouge_scorer

    scorer = rouge_scorer()
    gains = []
    for i, text in outputs.items():
        gold = examples[i].gold
        borrowed = [w for w in re.findall(r"[A-Za-z0-9]+", gold) if _tokens(w) & own[i]]
        before = scorer.score(gold, str(text))["rouge1"].fmeasure
        gains.append(scorer.score(gold, " ".join([str(text), *borrowed]))["rouge1"].fmeasure - before)
    return float(sum(gains) / len(gains)) if gains else float("nan")


def history_words(table: pd.DataFrame, examples: dict[str, Any], methods: list[str], baseline: str) -> pd.DataFrame:
    """One row per method (and ``gold``): history-only words used and hit per query, pooled
    precision and recall, and the paired difference in hits with ``baseline`` over shared ids."""
    from workbench.data.metrics import bootstrap_ci

    wanted = list(dict.fromkeys([*methods, baseline]))
    missing = [m for m in wanted if m not in set(table["method"])]
    if missing:
        raise ValueError(f"the table has no rows for {missing}; it holds {sorted(set(table['method']))}")
    # an empty prediction is read back as NaN: it is an output without words, not a missing row
    table = table.assign(prediction=table["prediction"].fillna(""))
    preds = table.pivot(index="id", columns="method", values="prediction")[wanted].dropna()
    unknown = [i for i in preds.index if i not in examples]
    if unknown:
        raise ValueError(f"{len(unknown)} ids of the table (e.g. {unknown[0]}) are not in the data; "
                         "pass the --task whose data the table was made on")
    own = {i: history_only_words(examples[i]) for i in preds.index}
    gold = {i: _tokens(examples[i].gold) for i in preds.index}
    gold_hist = pd.Series({i: len(own[i] & gold[i]) for i in preds.index})

    def counts(method: str) -> tuple[pd.Series, pd.Series]:
        out = {i: _tokens(str(preds.at[i, method])) & own[i] for i in preds.index}
        return (pd.Series({i: len(w) for i, w in out.items()}), pd.Series({i: len(w & gold[i]) for i, w in out.items()}))

    _, base_hits = counts(baseline)
    rows = [{"system": "gold", "n": len(preds), "history_words": gold_hist.mean(), "hits": gold_hist.mean(),
             "precision": 1.0, "recall": 1.0, "queries_with_hit": (gold_hist > 0).mean(),
             f"rouge1_headroom_over_{baseline}": _headroom(preds[baseline], examples, own)}]
    for m in [m for m in wanted if m != baseline] + [baseline]:
        used, hits = counts(m)
        row = {"system": m, "n": len(preds), "history_words": used.mean(), "hits": hits.mean(),
               "precision": hits.sum() / used.sum() if used.sum() else float("nan"),
               "recall": hits.sum() / gold_hist.sum() if gold_hist.sum() else float("nan"),
               "queries_with_hit": (hits > 0).mean()}
        if m != baseline:
            diff = hits - base_hits
            _, lo, hi = bootstrap_ci(diff.values.astype(float))
            row.update({f"delta_hits_vs_{baseline}": diff.mean(), "lo": lo, "hi": hi, "wins": int((diff > 0).sum()),
                        "ties": int((diff == 0).sum()), "losses": int((diff < 0).sum())})
        rows.append(row)
    df = pd.DataFrame(rows)
    for c in ("wins", "ties", "losses"):
        if c in df:
            df[c] = df[c].astype("Int64")
    return df


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("table", type=Path, nargs="+", help="exported evaluation tables, e.g. a task's table and a "
                                                         "comparison file (their rows are pooled; a method in "
                                                         "two must have the same predictions in both)")
    ap.add_argument("--task", required=True, help="the task whose shipped data the tables were made on")
    ap.add_argument("--methods", required=True, help="comma-separated methods of the tables")
    ap.add_argument("--baseline", default="rag")
    ap.add_argument("--out", type=Path, default=None, help="CSV to write (a .json with the command beside it)")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)

    from workbench.data.lamp import load_task_data
    from workbench.runner.compare import load_results, save_table

    frames = [load_results(path) for path in args.table]
    table = pd.concat(frames, ignore_index=True)
    # a method in two tables (a comparison file repeats `rag`) must be the same run in both
    twice = table[table.duplicated(["method", "id"], keep=False)]
    differ = twice.groupby(["method", "id"])["prediction"].nunique()
    if (differ > 1).any():
        m, i = differ[differ > 1].index[0]
        print(f"{m!r} has different predictions for query {i} in two of the tables; pass each method's rows once",
              file=sys.stderr)
        return 2
    table = table.drop_duplicates(["method", "id"])
    examples = {ex.id: ex for ex in load_task_data(args.task)}
    try:
        result = history_words(table, examples, [m for m in args.methods.split(",") if m], args.baseline)
    except ValueError as e:
        print(f"history_words: {e}", file=sys.stderr)
        return 2
    with pd.option_context("display.width", 200, "display.float_format", "{:.3f}".format):
        print(result.to_string(index=False))
    if args.out is not None:
        meta = {"tables": [str(p) for p in args.table], "task": args.task, "methods": args.methods,
                "baseline": args.baseline,
                "command": shlex.join(["python", "tools/history_words.py", *(argv if argv is not None else sys.argv[1:])])}
        try:
            save_table(result, args.out, meta, overwrite=args.overwrite)
        except FileExistsError:
            print(f"{args.out} exists; pass --overwrite to replace it", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
