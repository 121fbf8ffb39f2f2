"""Scores for personalized generation (ROUGE-1, ROUGE-L, METEOR) and LaMP's classification tasks.

ROUGE comes from ``rouge-score`` (F-measure, Porter stemmer, as LaMP reports it). METEOR comes
from NLTK and needs WordNet 3.0, which NLTK would download; offline, workbench builds an
NLTK data directory from Debian's ``wordnet-base`` + ``wordnet-sense-index`` packages
(``apt-get install wordnet-base wordnet-sense-index``; the README's set-up does it). When
WordNet can't be found, METEOR is reported as NaN with a warning, never replaced by
something else under its name.

METEOR tokenization: lower-cased word/number runs and single punctuation marks (a regex;
NLTK's ``word_tokenize`` needs the punkt model, which can't be downloaded here either).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

DEBIAN_WORDNET = Path("/usr/share/wordnet")
WORDNET_INSTALL = "apt-get install -y wordnet-base wordnet-sense-index"

# WordNet 3.0's lexicographer files, in order (NLTK reads them from `lexnames`; Debian omits it).
_LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
    "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
    "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
    "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
    "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
_POS = {"adj": 3, "adv": 4, "noun": 1, "verb": 2}
_WORD = re.compile(r"\w+|[^\w\s]")


def _cache_root() -> Path:
    env = os.environ.get("WORKBENCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "workbench"


def _build_nltk_wordnet(source: Path, target: Path) -> None:
    """Copy Debian's WordNet files into an NLTK data dir, atomically (tmp dir + rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".nltk-build-", dir=target.parent))
    try:
        wn = tmp / "corpora" / "wordnet"
        wn.mkdir(parents=True)
        for f in source.iterdir():
            if f.is_file() and (f.name.startswith(("data.", "index.")) or f.suffix == ".exc"):
                shutil.copy(f, wn / f.name)
        (wn / "lexnames").write_text(
            "".join(f"{i:02d}\t{name}\t{_POS[name.split('.')[0]]}\n" for i, name in enumerate(_LEXNAMES))
        )
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@lru_cache(maxsize=1)
def _meteor_status() -> tuple[bool, str]:
    import nltk

    try:
        from nltk.corpus import wordnet

        wordnet.ensure_loaded()
        return True, "WordNet found on the NLTK data path"
    except LookupError:
        pass
    target = _cache_root() / "nltk_data"
    if not (target / "corpora" / "wordnet" / "lexnames").exists():
        if not (DEBIAN_WORDNET / "data.noun").exists() or not (DEBIAN_WORDNET / "index.sense").exists():
            return False, f"WordNet is not installed; run `{WORDNET_INSTALL}` (Debian/Ubuntu)"
        _build_nltk_wordnet(DEBIAN_WORDNET, target)
    if str(target) not in nltk.data.path:
        nltk.data.path.append(str(target))
    from nltk.corpus import wordnet

    try:
        wordnet.ensure_loaded()
    except LookupError as e:
        return False, f"WordNet could not be read from {target}: {str(e).splitlines()[0]}"
    return True, f"WordNet {wordnet.get_version()} from {target}"


def meteor_available() -> tuple[bool, str]:
    """Whether METEOR can be computed here, and why (not)."""
    return _meteor_status()


def meteor_tokenize(text: str) -> list[str]:
    return _WORD.findall(text.lower())


@lru_cache(maxsize=1)
def _rouge():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)


def meteor(prediction: str, gold: str) -> float:
    """METEOR of one prediction against one reference (NaN, with a warning, without WordNet)."""
    ok, why = meteor_available()
    if not ok:
        warnings.warn(f"METEOR not computed: {why}", stacklevel=2)
        return float("nan")
    from nltk.translate.meteor_score import meteor_score

    return float(meteor_score([meteor_tokenize(gold)], meteor_tokenize(prediction)))


def score_generation(prediction: str, gold: str) -> dict[str, float]:
    """ROUGE-1 F, ROUGE-L F and METEOR of ``prediction`` against ``gold``."""
    s = _rouge().score(gold, prediction)
    return {"rouge1": s["rouge1"].fmeasure, "rougeL": s["rougeL"].fmeasure, "meteor": meteor(prediction, gold)}


def score_many(predictions: Sequence[str], golds: Sequence[str]) -> pd.DataFrame:
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions but {len(golds)} golds")
    return pd.DataFrame([score_generation(p, g) for p, g in zip(predictions, golds)])


def bootstrap_ci(values: Iterable[float], n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap interval (deterministic for a seed; NaNs are ignored)."""
    x = np.asarray(list(values), dtype=float)
    x = x[~np.isnan(x)]
    if x.size == 0:
        raise ValueError("no finite values to bootstrap (all NaN or empty)")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    alpha = (1 - ci) / 2
    return float(x.mean()), float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def summarize(df: pd.DataFrame, metrics: Sequence[str] = ("rouge1", "rougeL", "meteor"), by: str = "method") -> pd.DataFrame:
    """Mean and 95% bootstrap interval of each metric per group of ``by``."""
    rows = []
    for key, g in df.groupby(by, sort=False):
        row = {by: key, "n": len(g)}
        for m in metrics:
            vals = g[m].astype(float)
            row[m], row[f"{m}_lo"], row[f"{m}_hi"] = (
                bootstrap_ci(vals) if vals.notna().any() else (math.nan, math.nan, math.nan)
            )
        rows.append(row)
    return pd.DataFrame(rows)


# ---- LaMP-1/2/3 ---------------------------------------------------------------------------

def accuracy(preds: Sequence[str], golds: Sequence[str]) -> float:
    if not golds:
        raise ValueError("no examples")
    return sum(str(p).strip() == str(g).strip() for p, g in zip(preds, golds)) / len(golds)


def macro_f1(preds: Sequence[str], golds: Sequence[str]) -> float:
    """Macro-averaged F1 over the gold labels' classes."""
    labels = sorted(set(map(str, golds)))
    f1s = []
    for c in labels:
        tp = sum(p == c and g == c for p, g in zip(map(str, preds), map(str, golds)))
        fp = sum(p == c and g != c for p, g in zip(map(str, preds), map(str, golds)))
        fn = sum(p != c and g == c for p, g in zip(map(str, preds), map(str, golds)))
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s))


def mae(preds: Sequence[float], golds: Sequence[float]) -> float:
    return float(np.mean(np.abs(np.asarray(preds, float) - np.asarray(golds, float))))


def rmse(preds: Sequence[float], golds: Sequence[float]) -> float:
    return float(np.sqrt(np.mean((np.asarray(preds, float) - np.asarray(golds, float)) ** 2)))
