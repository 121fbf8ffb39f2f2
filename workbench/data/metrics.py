"""Scores for personalized generation (ROUGE-1, ROUGE-L, METEOR) and LaMP's classification tasks.

ROUGE comes from ``rouge-score`` (F-measure, Porter stemmer, as LaMP reports it). METEOR comes
from NLTK and needs WordNet 3.0, which NLTK would download; offline, workbench builds an
NLTK data directory from Debian's ``wordnet-base`` + ``wordnet-sense-index`` packages
(``apt-get install -y wordnet-base wordnet-sense-index``; ``install.sh`` does it) in
``$WORKBENCH_CACHE/nltk_data`` (default ``~/.cache/workbench/nltk_data``), once, the first
time METEOR is needed. When WordNet can't be found, METEOR is reported as NaN with a warning,
never replaced by something else under its name.

METEOR tokenization: :func:`meteor_tokenize`, a lower-cased regex split into word/number runs
and single punctuation marks (NLTK's ``word_tokenize`` needs the punkt model, which can't be
downloaded here either). ROUGE uses rouge-score's own tokenizer.

Example::

    from workbench.data import metrics
    metrics.score_generation("The cat sat", "the cat ran away")   # {'rouge1': 0.571..., ...}
    df = metrics.score_many(preds, golds); df["method"] = "baseline"
    metrics.summarize(df)                                          # mean and 95% interval
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
from typing import Iterable, NamedTuple, Sequence

import numpy as np
import pandas as pd

DEBIAN_WORDNET = Path("/usr/share/wordnet")
WORDNET_INSTALL = "apt-get install -y wordnet-base wordnet-sense-index"
GENERATION_METRICS = ("rouge1", "rougeL", "meteor")
CLASSIFICATION_METRICS = ("accuracy", "macro_f1")
# What each kind of task is scored with (workbench.data.tasks.TaskSpec.kind); the runner, the
# comparisons and the figures ask :func:`task_metrics` instead of assuming ROUGE.
METRICS_BY_KIND: dict[str, tuple[str, ...]] = {"generation": GENERATION_METRICS,
                                              "classification": CLASSIFICATION_METRICS}
ALL_METRICS: tuple[str, ...] = GENERATION_METRICS + CLASSIFICATION_METRICS
# Metrics of the whole set of predictions, not a mean of per-example scores: their intervals
# come from resampling examples and recomputing the metric (bootstrap_metric).
CORPUS_METRICS = frozenset({"macro_f1"})

# WordNet 3.0's 45 lexicographer files, in order (NLTK reads them from `lexnames`; Debian omits it).
_LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
    "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
    "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
    "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
    "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
_POS = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
_WORD = re.compile(r"\w+|[^\w\s]")


class MeteorStatus(NamedTuple):
    """Whether METEOR can be computed, and why (not). Falsy when it can't.

    Unpacks like a pair: ``ok, reason = meteor_available()``.
    """

    ok: bool
    reason: str

    def __bool__(self) -> bool:  # a plain tuple would always be truthy: `if meteor_available():` must work
        return self.ok


def cache_dir() -> Path:
    """workbench's cache: ``$WORKBENCH_CACHE``, else ``~/.cache/workbench``."""
    env = os.environ.get("WORKBENCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "workbench"


def lexnames_text() -> str:
    """WordNet 3.0's ``lexnames`` file: ``NN<TAB>name<TAB>pos`` for the 45 lexicographer files."""
    return "".join(f"{i:02d}\t{name}\t{_POS[name.split('.')[0]]}\n" for i, name in enumerate(_LEXNAMES))


def build_nltk_wordnet(target: Path, source: Path | None = None) -> Path:
    """Make ``target`` an NLTK data dir holding WordNet 3.0 (``target/corpora/wordnet``), from
    Debian's WordNet files in ``source`` (default :data:`DEBIAN_WORDNET`). Does nothing if it
    is already complete.

    The copy is written in a temporary folder beside ``target`` and renamed into place, so a
    half-written copy (a crash, two processes at once) is never used; ``lexnames`` is written
    last and marks a complete copy.
    """
    source = DEBIAN_WORDNET if source is None else Path(source)
    target = Path(target)
    marker = target / "corpora" / "wordnet" / "lexnames"
    if marker.exists():
        return target
    missing = [n for n in ("data.noun", "index.noun", "index.sense", "verb.exc") if not (source / n).exists()]
    if missing:
        raise FileNotFoundError(f"WordNet files {missing} not in {source}; run `{WORDNET_INSTALL}` (Debian/Ubuntu)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".nltk-build-", dir=target.parent))
    try:
        wn = tmp / "corpora" / "wordnet"
        wn.mkdir(parents=True)
        for f in source.iterdir():
            if f.is_file() and (f.name.startswith(("data.", "index.")) or f.suffix == ".exc"):
                shutil.copyfile(f, wn / f.name)
        (wn / "lexnames").write_text(lexnames_text())
        if target.exists() and not marker.exists():
            shutil.rmtree(target)  # an incomplete copy left by hand; ours are never incomplete
        try:
            os.replace(tmp, target)
        except OSError:
            if not marker.exists():  # not "another process finished first": a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


@lru_cache(maxsize=1)
def _meteor_status() -> MeteorStatus:
    import nltk
    from nltk.corpus import wordnet

    try:
        wordnet.ensure_loaded()
        return MeteorStatus(True, f"WordNet {wordnet.get_version()} found on the NLTK data path")
    except LookupError:
        pass
    target = cache_dir() / "nltk_data"
    try:
        build_nltk_wordnet(target)
    except FileNotFoundError:
        return MeteorStatus(False, f"WordNet is not installed; run `{WORDNET_INSTALL}` (Debian/Ubuntu)")
    except OSError as e:
        return MeteorStatus(False, f"could not prepare WordNet for NLTK in {target} ({e}); "
                                   "set WORKBENCH_CACHE to a writable folder")
    if str(target) not in nltk.data.path:
        nltk.data.path.append(str(target))
    try:
        wordnet.ensure_loaded()
    except LookupError as e:
        return MeteorStatus(False, f"WordNet could not be read from {target}: {str(e).strip().splitlines()[0]}")
    return MeteorStatus(True, f"WordNet {wordnet.get_version()} from {target}")


def meteor_available() -> MeteorStatus:
    """Whether METEOR can be computed here, and why (not).

    Returns:
        ``MeteorStatus(ok, reason)``: falsy when METEOR is unavailable, and unpacks as a pair.
        The answer is computed once per process (restart the kernel after installing WordNet).

    Example:
        >>> ok, why = meteor_available()   # (True, 'WordNet 3.0 from ~/.cache/workbench/nltk_data')
    """
    return _meteor_status()


def meteor_tokenize(text: str) -> list[str]:
    """Lower-cased word/number runs and single punctuation marks: ``"Hi, you!"`` -> ``['hi', ',', 'you', '!']``."""
    return _WORD.findall(text.lower())


@lru_cache(maxsize=1)
def rouge_scorer():
    """The one ROUGE-1/ROUGE-L scorer every score here uses (stemmed, as LaMP reports)."""
    from rouge_score import rouge_scorer as rs

    return rs.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)


def meteor(prediction: str, gold: str) -> float:
    """METEOR of one prediction against one reference (NaN, with a warning, without WordNet)."""
    status = meteor_available()
    if not status:
        warnings.warn(f"METEOR not computed (reported as NaN): {status.reason}", stacklevel=2)
        return float("nan")
    from nltk.translate.meteor_score import meteor_score

    return float(meteor_score([meteor_tokenize(gold)], meteor_tokenize(prediction)))


def _check_text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string, got {type(value).__name__}"
                        + (" (examples without gold can't be scored)" if value is None else ""))
    return value


def score_generation(prediction: str, gold: str) -> dict[str, float]:
    """ROUGE-1 F, ROUGE-L F and METEOR of ``prediction`` against ``gold``, each in [0, 1].

    Example:
        >>> score_generation("the cat sat", "the cat ran away")["rouge1"]   # P 2/3, R 2/4
        0.5714285714285715
    """
    prediction, gold = _check_text(prediction, "prediction"), _check_text(gold, "gold")
    s = rouge_scorer().score(gold, prediction)
    return {"rouge1": float(s["rouge1"].fmeasure), "rougeL": float(s["rougeL"].fmeasure),
            "meteor": meteor(prediction, gold)}


def score_many(predictions: Sequence[str], golds: Sequence[str]) -> pd.DataFrame:
    """One row per (prediction, gold) pair with columns rouge1, rougeL, meteor.

    When WordNet is missing, the meteor column is NaN and one warning says what to install.
    """
    predictions, golds = list(predictions), list(golds)
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions but {len(golds)} golds")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = [score_generation(p, g) for p, g in zip(predictions, golds)]
    for msg in {str(w.message): w for w in caught}.values():  # one warning per distinct cause, not per row
        warnings.warn(msg.message, msg.category, stacklevel=2)
    return pd.DataFrame(rows, columns=list(GENERATION_METRICS))


def task_metrics(task: str) -> tuple[str, ...]:
    """The metrics ``task`` is scored with: ``accuracy``, ``macro_f1`` for a classification task
    with a label set (LaMP-2N), ROUGE-1, ROUGE-L, METEOR for the rest (generation; also tasks
    the workbench does not know)."""
    from workbench.data.tasks import GENERIC, TASKS

    spec = TASKS.get(task, GENERIC)
    if spec.kind == "classification" and spec.labels:
        return CLASSIFICATION_METRICS
    return GENERATION_METRICS


def score_example(task: str, prediction: str, gold: str) -> dict[str, float]:
    """The per-example scores of ``task``: :func:`score_generation` for a generation task;
    ``{"accuracy": 1.0 or 0.0}`` (prediction == gold label) for a classification task, whose
    macro-F1 exists only for a set of predictions (:func:`summarize` computes it)."""
    if task_metrics(task) == CLASSIFICATION_METRICS:
        prediction, gold = _check_text(prediction, "prediction"), _check_text(gold, "gold")
        return {"accuracy": float(prediction.strip() == gold.strip())}
    return score_generation(prediction, gold)


def task_labels(task: str) -> tuple[str, ...] | None:
    """The label set macro-F1 averages over for ``task`` (all of them, as LaMP scores it), or None."""
    from workbench.data.tasks import GENERIC, TASKS

    return TASKS.get(task, GENERIC).labels or None


def bootstrap_metric(preds: Sequence[str], golds: Sequence[str], metric: str = "macro_f1",
                     labels: Sequence[str] | None = None, n_boot: int = 1000, seed: int = 0,
                     ci: float = 0.95) -> tuple[float, float, float]:
    """A corpus-level metric (``macro_f1`` or ``accuracy``) of ``preds`` against ``golds`` and a
    percentile-bootstrap interval: examples resampled with replacement, the metric recomputed on
    each resample (over the same ``labels``). Returns ``(value, lo, hi)``."""
    preds, golds = _pair(preds, golds)
    if metric not in ("macro_f1", "accuracy"):
        raise ValueError(f"metric={metric!r}: use 'macro_f1' or 'accuracy'")
    if not 0 < ci < 1:
        raise ValueError(f"ci={ci} must be between 0 and 1 (e.g. 0.95)")
    p, g = _labels(preds), _labels(golds)
    classes = sorted(set(g)) if labels is None else _labels(labels)
    index = {c: i for i, c in enumerate(classes)}
    k = len(classes)
    pi = np.array([index.get(x, k) for x in p])  # k: a prediction outside the labels (always wrong)
    gi = np.array([index.get(x, k + 1) for x in g])  # k + 1: a gold outside them (counted as a miss)

    def value(rows: np.ndarray) -> float:
        pp, gg = pi[rows], gi[rows]
        if metric == "accuracy":
            return float(np.mean(pp == gg))
        hit = pp == gg
        tp = np.bincount(pp[hit], minlength=k + 2)[:k]
        fp = np.bincount(pp, minlength=k + 2)[:k] - tp
        fn = np.bincount(gg, minlength=k + 2)[:k] - tp
        denom = 2 * tp + fp + fn
        return float(np.mean(np.where(tp > 0, 2 * tp / np.maximum(denom, 1), 0.0)))

    n = len(g)
    rng = np.random.default_rng(seed)
    stats = np.array([value(rng.integers(0, n, size=n)) for _ in range(n_boot)])
    alpha = (1 - ci) / 2
    return value(np.arange(n)), float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))


def bootstrap_ci(values: Iterable[float], n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> tuple[float, float, float]:
    """Mean of ``values`` and a percentile-bootstrap confidence interval for it.

    Args:
        values: per-example scores; NaNs are ignored (raises if nothing else is left).
        n_boot: number of resamples.
        seed: the same seed gives the same interval.
        ci: interval coverage, e.g. 0.95.

    Returns:
        ``(mean, lo, hi)``.

    Example:
        >>> bootstrap_ci([0.2, 0.4, 0.6], seed=0)   # (0.4, lo, hi) with lo <= 0.4 <= hi
    """
    x = np.asarray(list(values), dtype=float)
    x = x[~np.isnan(x)]
    if x.size == 0:
        raise ValueError("no finite values to bootstrap (all NaN or empty)")
    if not 0 < ci < 1:
        raise ValueError(f"ci={ci} must be between 0 and 1 (e.g. 0.95)")
    if n_boot < 1:
        raise ValueError(f"n_boot={n_boot} must be at least 1")
    rng = np.random.default_rng(seed)
    # Resample in blocks so a large x doesn't need an n_boot x n index matrix in memory.
    block = max(1, min(n_boot, 2_000_000 // x.size))
    means = np.concatenate([x[rng.integers(0, x.size, size=(min(block, n_boot - start), x.size))].mean(axis=1)
                            for start in range(0, n_boot, block)])
    alpha = (1 - ci) / 2
    return float(x.mean()), float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def corpus_pairs(rows: pd.DataFrame, metric: str = "macro_f1") -> tuple[pd.Series, pd.Series]:
    """``(predictions, golds)`` as text for a corpus metric; refuses rows without a gold label —
    as text a missing gold would be "nan", counted as a wrong label, and the metric silently 0."""
    gold = rows["gold"] if "gold" in rows else pd.Series([None] * len(rows), index=rows.index)
    lacking = int(gold.isna().sum())
    if lacking:
        raise ValueError(f"{metric} needs every row's gold label; {lacking} of {len(rows)} rows have none. "
                         "Saved results carry no gold outputs: load them with "
                         "workbench.runner.compare.load_results(path, dataset=...) to join them back")
    return rows["prediction"].astype(str), gold.astype(str)


def summarize(df: pd.DataFrame, metrics: Sequence[str] = GENERATION_METRICS, by: str = "method",
              n_boot: int = 1000, seed: int = 0, labels: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean and 95% bootstrap interval of each metric per group of ``by``.

    A corpus metric (``macro_f1``, :data:`CORPUS_METRICS`) is computed from the ``prediction``
    and ``gold`` columns over ``labels`` (default: the golds' labels), its interval by
    :func:`bootstrap_metric`.

    Returns:
        One row per group (in order of appearance): ``by``, ``n``, and for each metric ``m``
        the columns ``m``, ``m_lo``, ``m_hi``. A metric that is NaN throughout a group (METEOR
        without WordNet) stays NaN there.
    """
    needed = [by, *(c for m in metrics for c in (("prediction", "gold") if m in CORPUS_METRICS else (m,)))]
    missing = [c for c in dict.fromkeys(needed) if c not in df.columns]
    if missing:
        raise KeyError(f"columns {missing} not in the table (it has {list(df.columns)})")
    rows = []
    for key, g in df.groupby(by, sort=False):
        row: dict = {by: key, "n": len(g)}
        for m in metrics:
            if m in CORPUS_METRICS:
                row[m], row[f"{m}_lo"], row[f"{m}_hi"] = bootstrap_metric(
                    *corpus_pairs(g, m), m, labels, n_boot=n_boot, seed=seed)
                continue
            vals = g[m].astype(float)
            row[m], row[f"{m}_lo"], row[f"{m}_hi"] = (
                bootstrap_ci(vals, n_boot=n_boot, seed=seed) if vals.notna().any() else (math.nan,) * 3
            )
        rows.append(row)
    return pd.DataFrame(rows)


# ---- LaMP-1/2 (classification) and LaMP-3 (rating) ----------------------------------------

def _pair(preds: Sequence, golds: Sequence) -> tuple[list, list]:
    preds, golds = list(preds), list(golds)
    if len(preds) != len(golds):
        raise ValueError(f"{len(preds)} predictions but {len(golds)} golds")
    if not golds:
        raise ValueError("no examples to score")
    return preds, golds


def _labels(values: Sequence) -> list[str]:
    # "4" and 4 and " 4" are the same label: LaMP golds are strings, models answer with text.
    return [str(v).strip() for v in values]


def accuracy(preds: Sequence[str], golds: Sequence[str]) -> float:
    """Share of predictions equal to the gold label (compared as stripped strings)."""
    preds, golds = _pair(preds, golds)
    return sum(p == g for p, g in zip(_labels(preds), _labels(golds))) / len(golds)


def macro_f1(preds: Sequence[str], golds: Sequence[str], labels: Sequence[str] | None = None) -> float:
    """Macro-averaged F1: the unweighted mean of each class's F1 = 2TP / (2TP + FP + FN).

    Args:
        labels: the classes to average over. Default: the classes in ``golds``. LaMP scores
            over the task's full label set (e.g. LaMP-2's 15 tags); pass it to match. A
            prediction outside ``labels`` is simply wrong (a false negative for the gold class).
    """
    preds, golds = _pair(preds, golds)
    p, g = _labels(preds), _labels(golds)
    classes = sorted(set(g)) if labels is None else _labels(labels)
    f1s = []
    for c in classes:
        tp = sum(a == c and b == c for a, b in zip(p, g))
        fp = sum(a == c and b != c for a, b in zip(p, g))
        fn = sum(a != c and b == c for a, b in zip(p, g))
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s))


def _numbers(values: list, what: str) -> np.ndarray:
    try:
        return np.asarray([float(v) for v in values])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} must be numbers (or strings like '4'): {e}; "
                         "map unparseable model answers to a number first") from None


def mae(preds: Sequence[float], golds: Sequence[float]) -> float:
    """Mean absolute error (LaMP-3 ratings)."""
    preds, golds = _pair(preds, golds)
    return float(np.mean(np.abs(_numbers(preds, "predictions") - _numbers(golds, "golds"))))


def rmse(preds: Sequence[float], golds: Sequence[float]) -> float:
    """Root mean squared error (LaMP-3 ratings)."""
    preds, golds = _pair(preds, golds)
    return float(np.sqrt(np.mean((_numbers(preds, "predictions") - _numbers(golds, "golds")) ** 2)))
