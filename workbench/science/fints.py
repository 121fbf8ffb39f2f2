"""Fints: fine-grained, instance-tailored steering (Du et al., arXiv 2510.27206).

Instead of one steering vector per user, Fints keeps one vector per *history item* and,
for each new input, mixes the vectors of the items most relevant to it:

1. **Contrastive pairs** (:func:`workbench.science.pairs.contrastive_pairs`). For each of the user's history items
   (an earlier input and the user's own output for it) the prompt is the task's prompt for
   that input with ``n_others`` items of *other* users as earlier chat turns (the authors'
   "others" mode). Positive = the user's output; negative = what the model writes for that
   prompt (greedy). A pair is kept only if ROUGE-L(negative, positive)
   < ``threshold`` (0.15): the model's own guess must really differ from the user's.
2. **Sample-level vectors** (:func:`sample_vectors`). For each kept pair, the mean over the
   response tokens of activation(prompt + positive) - activation(prompt + negative) at one
   layer, separately at the attention output and at the MLP output.
3. **Input-aware aggregation** (:func:`aggregate`). Score the items against the new input
   (BM25), take the top ``k`` (5) and mix their vectors with weights softmax(score / tau)
   (tau = 0.1) or uniformly: one attention vector and one MLP vector for this input.
4. **Injection** (:func:`fints_steer`). The mix is one :class:`~workbench.core.steering.SteeringVector`
   with an attention and an MLP entry; add ``scale`` times them at the attention and MLP
   outputs of that layer, at every position.

Choices that are ours, not the authors' (their code is documented in
``shared/research/methods.md`` §2):

- *Sites.* ``attn_site="attn_out"`` is what the paper describes. The authors' code, because
  of an in-place addition in its recording wrapper, actually records the residual stream
  after attention (``resid_mid`` = resid_pre + attn_out); ``attn_site="resid_mid"``
  reproduces that. ``mlp_site`` is ``"mlp_out"`` or ``"resid_post"`` (the block output, the
  authors' ``whole``). Injection goes to the same site the vector was read at.
- *Scores.* BM25 instead of contriever (no embedding model offline here); BM25 scores are
  divided by the best one before the softmax so that tau acts on a 0-1 scale, as contriever's
  dot products roughly do (raw BM25 / 0.1 would be one-hot). Any ``scorer(query, docs)`` can
  be passed instead.
- *User mean.* The user-level baseline (``caa-user``) averages one user's vectors; the
  authors' ``train.py`` accumulates pairs across users (a bug), we do not.
- *Cost.* Negatives need one generation per item, so each user gets at most ``max_items``
  (8) items: by default the union of each of the user's queries' BM25 top items (exactly the
  items the aggregation can pick), else the most recent ones.
- *Leakage.* LaMP profiles grow over time, so a later query's profile can hold an earlier
  query's input and gold output. Vectors are built per item, and each query only ever
  uses items of its own profile.

Example::

    pairs = contrastive_pairs(model, user_examples, others=dataset)    # cached on disk
    vecs = sample_vectors(model, pairs, layer=22)
    mix = aggregate(vecs, example, k=5)          # a SteeringVector; picked(mix): items, scores, weights
    with fints_steer(model, mix, scale=1.0):
        print(model.generate(prompt))
"""


from __future__ import annotations

import html
import numbers
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import torch

from workbench._util import atomic_torch_save, check_int, load_torch_file, refuse_overwrite, \
    truncate_kv_cache
from workbench.core._reuse import prefix_cache
from workbench.core.hooks import last_positions_hook
from workbench.core.model import Model
from workbench.science.pairs import contrastive_pairs, is_example, item_id, select_items
from workbench.data.retrieval import bm25_scores
from workbench.core.steering import SITES, Steer, SteeringVector, read_site


# How these were chosen (benchmarks/fints_sweep.py, SmolLM2-135M, 3 leave-one-out history
# items of 3 users, never the dev queries): every steered setting made the user's own (LaMP-4) output
# *less* likely on average (teacher-forced NLL), least so at scale 1 (+0.006..+0.14 nats per
# token at layers 4-26; scale 2: +0.06..+0.62; scale 4: +0.3..+1.7). So scale 1, the authors'
# c; the layers are not distinguishable at scale 1 on 3 examples, so the layer is the authors'
# relative depth (23 of 32 -> 22 of 30). Other models get the same relative depth.
DEFAULT_LAYER = 22  # of SmolLM2's 30
DEFAULT_SCALE = 1.0
_DEFAULT_DEPTH = DEFAULT_LAYER / 30


def default_layer(model: Model) -> int:
    """The default steering layer: 22 of SmolLM2's 30 (the authors' 23 of 32), the same relative depth elsewhere."""
    return min(model.n_layers - 1, round(_DEFAULT_DEPTH * model.n_layers))

ATTN_SITES = ("attn_out", "resid_mid")
MLP_SITES = ("mlp_out", "resid_post")

def _check_sites(attn_site: str, mlp_site: str) -> None:
    if attn_site not in ATTN_SITES:
        raise ValueError(f"attn_site={attn_site!r}: use 'attn_out' (the paper) or 'resid_mid' (the authors' code)")
    if mlp_site not in MLP_SITES:
        raise ValueError(f"mlp_site={mlp_site!r}: use 'mlp_out' or 'resid_post' (the block output)")


# Re-exported: the pairs are Fints' first step (built in workbench.science.pairs).
__all__ = ["contrastive_pairs", "select_items", "sample_vectors", "aggregate", "fints_steer", "SampleVectors",
           "default_layer", "picked"]


# ---- 2. sample-level vectors --------------------------------------------------------------

@torch.no_grad()
def _response_means(model: Model, prompt: Any, responses: Sequence[str], layers: Sequence[int],
                    sites: Sequence[str], prompt_caches: dict | None = None) -> list[dict[tuple[int, str], torch.Tensor]]:
    """Per response: the mean over its tokens of each site's activation, per layer (CPU, float32).

    The prompt is most of the tokens (the input and other users' turns), the same for a pair's
    positive and negative: it runs once and its KV cache serves every response — or not at all,
    when ``prompt_caches`` holds its cache from the negative's generation (keyed by its token
    ids; taken out of the dict). The prompt's pass runs on the hook-free view when it can
    (:func:`~workbench.core._reuse.prefix_cache`), as the generation's did, so both give the same
    vectors. Nothing above the deepest layer read runs, so no logits are computed at all.
    """
    bridge = model.bridge
    names = sorted({n for L in layers for site in sites for n in SITES[site].read_hooks(L)})
    stop = max(layers) + 1
    if stop < model.n_layers:
        depth: dict[str, Any] = {"stop_at_layer": stop}
        skip_logits: list = []
    else:  # the last layer is read: the pass goes through, only the unembedding is cut to one position
        depth = {}
        skip_logits = [last_positions_hook(model.n_layers, -1)]
    encoded = [model.prompt_and_target(prompt, r) for r in responses]  # checks each fits the context
    start = encoded[0][1]
    targets = [ids[:, start:] for ids, _ in encoded]
    prefix = encoded[0][0][:, :start]
    cache = prompt_caches.pop(tuple(prefix[0].tolist()), None) if prompt_caches else None
    if cache is None:
        cache = prefix_cache(model, prefix, stop)
    out = []
    for t in targets:
        got: dict[str, torch.Tensor] = {}

        # Stored under the name asked for: the bridge's hook.name is the canonical one, not the alias.
        def keep(name: str) -> Callable:
            def fn(x: torch.Tensor, hook: Any) -> None:
                got[name] = x[0]
            return fn

        bridge.run_with_hooks(t, past_key_values=cache, fwd_hooks=[(n, keep(n)) for n in names] + skip_logits,
                              **depth)
        truncate_kv_cache(cache, start)
        out.append({(L, site): read_site(got, site, L).mean(0).cpu() for L in layers for site in sites})
    return out


# What a saved SampleVectors keeps of each item (and what an empty one still has as columns).
_ITEM_COLUMNS = ["item_id", "text", "positive", "negative", "rougeL"]


@dataclass
class SampleVectors:
    """One attention and one MLP steering vector per history item of one user.

    Attributes:
        attn, mlp: ``[n_items, d_model]`` float tensors (CPU).
        items: DataFrame with ``item_id, text, positive, negative, rougeL`` per row.
        model_name, layer, attn_site, mlp_site: where the vectors come from and belong.
        user_id: whose history; settings: how the pairs were made.
    """

    attn: torch.Tensor
    mlp: torch.Tensor
    items: pd.DataFrame
    model_name: str
    layer: int
    attn_site: str = "attn_out"
    mlp_site: str = "mlp_out"
    user_id: str = ""
    settings: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_sites(self.attn_site, self.mlp_site)
        if self.attn.shape != self.mlp.shape or self.attn.dim() != 2 or self.attn.shape[0] != len(self.items):
            raise ValueError(f"attn {tuple(self.attn.shape)} and mlp {tuple(self.mlp.shape)} must both be "
                             f"[n_items={len(self.items)}, d_model]")

    def __len__(self) -> int:
        return len(self.items)

    @property
    def d_model(self) -> int:
        return int(self.attn.shape[1])

    def __repr__(self) -> str:
        norm = lambda t: f"{float(t.norm(dim=1).mean()):.3g}" if len(self) else "-"  # noqa: E731
        return (f"SampleVectors(user={self.user_id!r}, {len(self)} items, layer={self.layer}, "
                f"{self.attn_site}/{self.mlp_site}, mean |v| {norm(self.attn)}/{norm(self.mlp)}, "
                f"model={self.model_name!r})")

    def _repr_html_(self) -> str:
        df = self.items[["item_id", "positive", "negative", "rougeL"]].copy()
        df["|attn|"] = self.attn.norm(dim=1).numpy()
        df["|mlp|"] = self.mlp.norm(dim=1).numpy()
        return f"<p>{html.escape(repr(self))}</p>" + df.to_html(index=False, float_format="{:.3f}".format, escape=True)

    def subset(self, item_ids: Iterable[str]) -> "SampleVectors":
        """Only the items whose id is in ``item_ids`` (order kept)."""
        wanted = {str(i) for i in item_ids}
        keep = [j for j, i in enumerate(self.items["item_id"].astype(str)) if i in wanted]
        return SampleVectors(self.attn[keep], self.mlp[keep], self.items.iloc[keep].reset_index(drop=True),
                             self.model_name, self.layer, self.attn_site, self.mlp_site, self.user_id, self.settings)

    def for_example(self, example: Any) -> "SampleVectors":
        """The items of ``example``'s own profile: what may be used when answering it."""
        return self.subset(item_id(it, example.task) for it in example.profile)

    def user_mean(self) -> SteeringVector:
        """The user-level mean vectors (the ``caa-user`` baseline), as one :class:`SteeringVector`."""
        if not len(self):
            raise ValueError(f"user {self.user_id!r} has no vectors (every pair was filtered out); nothing to average")
        w = torch.full((len(self),), 1.0 / len(self))
        picked = self.items[["item_id", "positive"]].assign(score=float("nan"), weight=w.numpy())
        return self._mix(w @ self.attn, w @ self.mlp, picked, "user mean")

    def _mix(self, attn: torch.Tensor, mlp: torch.Tensor, picked: pd.DataFrame, weighting: str) -> SteeringVector:
        built = {"method": "fints", "user": self.user_id, "weighting": weighting,
                 "picked": picked.to_dict("records")}
        return SteeringVector({(self.layer, self.attn_site): attn, (self.layer, self.mlp_site): mlp},
                              self.model_name, built)

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write to ``path`` (a torch file); refuses to replace a file unless ``overwrite=True``."""
        path = Path(path)
        refuse_overwrite(path, overwrite)
        atomic_torch_save(path, {"format": "workbench.science.fints.SampleVectors/1", "attn": self.attn, "mlp": self.mlp,
                                 "items": json.dumps(self.items[_ITEM_COLUMNS].to_dict("records"), ensure_ascii=False),
                                 "model_name": self.model_name, "layer": self.layer, "attn_site": self.attn_site,
                                 "mlp_site": self.mlp_site, "user_id": self.user_id,
                                 "settings": json.dumps(self.settings, default=str)})
        return path

    @classmethod
    def load(cls, path: str | Path, model: Model | None = None) -> "SampleVectors":
        """Read a file written by :meth:`save`; with ``model``, refuse vectors of another model."""
        path = Path(path)
        fix = "build them with sample_vectors and save them with .save(path)"
        d = load_torch_file(path, "a workbench Fints vectors file", fix)
        if not isinstance(d, dict) or d.get("format") != "workbench.science.fints.SampleVectors/1":
            found = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise ValueError(f"{path} is not a workbench Fints vectors file (format {found!r}); {fix}")
        if model is not None and d.get("model_name") != model.name:
            raise ValueError(f"{path} holds vectors of model {d.get('model_name')!r}, not {model.name!r}; "
                             "vectors only make sense in the model they came from — rebuild them with sample_vectors")
        try:
            # The columns are named: a user whose pairs were all filtered out saved no record to
            # take them from, and their (empty) vectors must still answer for_example.
            items = pd.DataFrame(json.loads(d["items"]), columns=_ITEM_COLUMNS)
            return cls(d["attn"], d["mlp"], items, d["model_name"], int(d["layer"]),
                       d["attn_site"], d["mlp_site"], d["user_id"], json.loads(d["settings"]))
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise ValueError(f"{path} is a damaged Fints vectors file ({type(e).__name__}: {e}); {fix}") from None


def sample_vectors(
    model: Model,
    pairs: pd.DataFrame,
    layer: "int | Sequence[int] | None" = None,
    attn_site: str = "attn_out",
    mlp_site: str = "mlp_out",
    progress: bool = False,
    prompt_caches: dict | None = None,
) -> "SampleVectors | dict[int, SampleVectors]":
    """Per-item vectors: mean over the response of act(prompt + positive) - act(prompt + negative).

    Only the pairs with ``kept`` true are used. ``layer`` (default :func:`default_layer`) may
    be a list: one forward pass per response serves every layer, and a ``{layer:
    SampleVectors}`` dict comes back. ``prompt_caches``: the prompts' KV caches kept by
    :func:`contrastive_pairs` (``keep_prompts=``), used instead of running those prompts again.
    """
    from tqdm.auto import tqdm

    _check_sites(attn_site, mlp_site)
    if layer is None:
        layer = default_layer(model)
    single = isinstance(layer, numbers.Integral)
    layers = [layer] if single else list(layer) if isinstance(layer, Iterable) and not isinstance(layer, str) else [layer]
    if any(isinstance(L, bool) or not isinstance(L, numbers.Integral) for L in layers):
        raise ValueError(f"layer={layer!r}: give a whole number (or a list of them)")
    layers = [int(L) for L in layers]
    bad = [L for L in layers if not 0 <= L < model.n_layers]
    if bad:
        raise ValueError(f"layer(s) {bad} out of range: {model.name!r} has layers 0..{model.n_layers - 1}")
    if pairs.attrs.get("model") not in (None, model.name):
        raise ValueError(f"these pairs were generated by {pairs.attrs['model']!r}, not {model.name!r}; "
                         "build pairs with the model that will be steered")
    kept = pairs[pairs["kept"]].reset_index(drop=True) if len(pairs) else pairs
    attn = {L: [] for L in layers}
    mlp = {L: [] for L in layers}
    for row in tqdm(list(kept.itertuples(index=False)), desc="vectors", disable=not progress, leave=False):
        pos, neg = _response_means(model, row.prompt, [row.positive, row.negative], layers, (attn_site, mlp_site),
                                   prompt_caches)
        for L in layers:
            attn[L].append(pos[(L, attn_site)] - neg[(L, attn_site)])
            mlp[L].append(pos[(L, mlp_site)] - neg[(L, mlp_site)])
    cols = [c for c in ("item_id", "text", "positive", "negative", "rougeL") if c in kept.columns]
    items = kept[cols].reset_index(drop=True) if len(kept) else pd.DataFrame(columns=cols)
    empty = torch.zeros(0, model.d_model)
    out = {L: SampleVectors(torch.stack(attn[L]) if attn[L] else empty, torch.stack(mlp[L]) if mlp[L] else empty,
                            items, model.name, L, attn_site, mlp_site, str(pairs.attrs.get("user_id", "")),
                            dict(pairs.attrs.get("settings", {})))
           for L in layers}
    return out[layers[0]] if single else out


# ---- 3. input-aware aggregation -----------------------------------------------------------

def picked(mix: SteeringVector) -> pd.DataFrame:
    """The items a Fints mix was made of: ``item_id, positive, score, weight``, best first."""
    return pd.DataFrame(mix.built.get("picked", []))


def aggregate(
    vectors: SampleVectors,
    query: Any,
    k: int = 5,
    tau: float = 0.1,
    weighting: str = "softmax",
    scorer: "str | Callable[[str, Sequence[str]], Sequence[float]]" = "bm25",
    restrict: bool = True,
) -> SteeringVector:
    """Mix the vectors of the ``k`` history items most relevant to ``query``.

    Args:
        vectors: a user's :class:`SampleVectors`.
        query: an :class:`~workbench.data.records.Example` (its input is the query; with
            ``restrict``, only items of its own profile are candidates) or a text.
        k: items to mix (fewer if fewer have vectors).
        tau: softmax temperature; weights = softmax(score / tau) over the top ``k``, where
            BM25 scores are first divided by the best score (so tau acts on a 0-1 scale).
        weighting: ``"softmax"`` or ``"uniform"`` (plain mean of the top ``k``).
        scorer: ``"bm25"`` or a function ``(query, docs) -> scores`` (e.g. an embedding
            model's similarities, used as they are). Documents are an item's input + output.
    """
    from workbench.data.retrieval import query_text

    if weighting not in ("softmax", "uniform"):
        raise ValueError(f"weighting={weighting!r}: use 'softmax' or 'uniform'")
    k = check_int("k", k, minimum=1)
    if weighting == "softmax" and not tau > 0:
        raise ValueError(f"tau must be > 0 for softmax weighting, got {tau}")
    if is_example(query):
        if restrict:
            vectors = vectors.for_example(query)
        query = query_text(query)
    if not isinstance(query, str):
        raise ValueError("query must be an Example or a string")
    if not len(vectors):
        raise ValueError(f"no history item with a vector to aggregate for user {vectors.user_id!r} "
                         "(all pairs filtered by the ROUGE-L threshold, or none in this example's profile); "
                         "raise max_items or the threshold")
    docs = [f"{t} {p}" for t, p in zip(vectors.items["text"], vectors.items["positive"])]
    if scorer == "bm25":
        raw = bm25_scores(query, docs)
        best = raw.max() if len(raw) else 0.0
        scores = raw / best if best > 0 else np.zeros_like(raw)
    elif callable(scorer):
        scores = raw = np.asarray(scorer(query, docs), dtype=float)
        if scores.shape != (len(docs),):
            raise ValueError(f"scorer returned shape {scores.shape}, expected one score per item ({len(docs)})")
    else:
        raise ValueError(f"scorer={scorer!r}: use 'bm25' or a function (query, docs) -> scores")
    order = sorted(range(len(docs)), key=lambda j: (-scores[j], j))[:k]
    top = torch.tensor(scores[order], dtype=torch.float32)
    w = torch.softmax(top / tau, 0) if weighting == "softmax" else torch.full((len(order),), 1.0 / len(order))
    chosen = pd.DataFrame({"item_id": vectors.items["item_id"].iloc[order].astype(str).to_numpy(),
                           "positive": vectors.items["positive"].iloc[order].to_numpy(),
                           "bm25" if scorer == "bm25" else "raw_score": np.asarray(raw)[order],
                           "score": scores[order], "weight": w.numpy()})
    return vectors._mix(w @ vectors.attn[order], w @ vectors.mlp[order], chosen, weighting)


def fints_steer(model: Model, mix: SteeringVector, scale: float = DEFAULT_SCALE, mlp_scale: float | None = None) -> Steer:
    """Steer ``model`` with a Fints mix (:func:`aggregate` or :meth:`SampleVectors.user_mean`)
    while the context is active: :meth:`SteeringVector.apply <workbench.core.steering.SteeringVector.apply>`
    (``mix.apply(model, scale=scale)``), with the MLP sites' scale set apart when ``mlp_scale``
    is given (the authors' alpha and beta, as ``site_scales``). Hooks are removed on exit,
    also after an exception.
    """
    if mlp_scale is None:
        return mix.apply(model, scale=scale)
    mlp_sites = {site for _, site in mix.vectors if site in MLP_SITES}
    return mix.apply(model, scale=scale, site_scales={site: mlp_scale for site in mlp_sites})
