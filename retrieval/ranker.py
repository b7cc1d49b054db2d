"""The learned item ranker: features over the candidate pool, LightGBM LambdaRank, a
documented fallback, and itemised reasons.

One relevance signal. :meth:`Ranker.rank` scores every pool candidate; its relevance
``sigmoid(raw score)`` in [0, 1] orders retrieval, seeds and grows the rule proposer's
bundles, and is the reranker's item preference (see :mod:`assistant.reranker`).

Training (at ``index`` time, from the index's own data only; :func:`train_ranker`):

* basket data (Complete Journey, CSV): the baskets of the last ``label_days`` are the
  labels, everything before is the history. Every feature of a training query is computed
  from history-only statistics (co-occurrence, popularity, the user's history), so no
  label basket leaks into its own features. One query per label basket with at least
  ``min_types`` product types, from a user with ``min_history_baskets`` history baskets:
  one seeded anchor, the other products as targets. Graded labels: 2 for a target SKU,
  1 for another SKU of a target product type (cj-completion is scored by type), 0 else.
* bundle data (BundleRec): the training bundles are split into ``bundle_folds`` folds;
  for each fold, the co-occurrence and popularity are rebuilt without that fold's bundles,
  the sessions holding them and the user-item rows derived from them (the eval's own
  hold-out rule, a multiset difference: a duplicate of a held-out bundle keeps its own
  rows), and each query asks for one held-out item of a fold bundle given the rest
  (leave one out, up to ``max_held_per_bundle`` items per bundle). Labels: 1 for the
  held-out item. Small folds (10) keep each fold's history close to the full data.
* a ``query_share`` of the queries also carry a synthetic need (the embedded name of one
  target's product type), so the model learns what matching the request is worth.
* Deterministic: fixed seeds, ``deterministic=True``, ``force_col_wise``, a fixed thread
  count; the same data gives the same model bytes and the same ranking.
* Saved with the build as ``ranker_v{VERSION}.txt`` plus ``ranker_card.json`` (data
  fingerprint, rows, queries, seed, features, validation figures, per-generator recall).

Fallback (:data:`FALLBACK_WEIGHTS`): with fewer than ``min_queries`` training queries
(a test slice, a catalogue without baskets), when training is switched off, or for an
older index without a ranker file, the raw score is the fixed linear blend
``FALLBACK_BIAS + Σ w_f · x_f`` over a few features (NaN counts 0; NPMI and cosines
count only above 0). Its itemised reasons are its terms, so they add up exactly too.

Itemised reasons. LightGBM's ``pred_contrib`` splits a raw score into one contribution
per feature plus the expected value; :data:`GROUP_OF` sums them into a few human groups
(``repeat``, ``together``, ``query``...), and ``base`` holds the expected value and the
context features. The groups add up to the raw score; :meth:`Ranker.explain` turns the
positive ones into phrases such as "you buy this every 2 weeks".
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .config import RankerConfig
from .copurchase import CoPurchase, baskets_of
from .pool import (
    GENERATORS,
    CatalogueArrays,
    CoStats,
    NearestFn,
    RankerData,
    RankingContext,
    UserHistory,
    UserRow,
    _vectors,
    build_pool,
    days_of,
    exact_nearest,
)

VERSION = 1
MODEL_FILE = f"ranker_v{VERSION}.txt"
CARD_FILE = "ranker_card.json"
HISTORY_FILE = "ranker_history.npz"

FEATURES: tuple[str, ...] = (
    # the user's repeat history of this SKU
    "item_baskets", "item_share", "item_decayed", "item_days_since", "item_interval", "item_due", "usual_of_type",
    # ... and of its product type (cj-completion is scored by type)
    "type_baskets", "type_share", "type_decayed", "type_days_since", "type_interval", "type_due",
    # SKU co-occurrence with the anchors (max and mean over anchors)
    "cooc_count_max", "cooc_count_mean", "cooc_conf_max", "cooc_conf_mean", "cooc_lift_max", "cooc_lift_mean",
    "cooc_npmi_max", "cooc_npmi_mean", "cooc_linked",  # linked: share of the anchors it was ever bought with
    # type-level co-occurrence with the anchors' types
    "tcooc_count_max", "tcooc_conf_max", "tcooc_conf_mean", "tcooc_lift_max", "tcooc_npmi_max", "tcooc_npmi_mean",
    # embedding cosines
    "cos_anchor_max", "cos_anchor_mean", "cos_query", "cos_profile",
    "popularity", "type_popularity",
    "price_rel", "log_price",  # log(price / the user's median price), log(price)
    "same_type_as_anchor", "in_stock", "user_baskets", "n_anchors",
    *(f"from_{g}" for g in GENERATORS),
    # the strongest simple baseline's own score (eval's type-level buy-again+co-occurrence):
    # type_mapped marks the one SKU a type's co-occurrence goes to (the user's usual one of
    # the type, else its best seller); blend = w·item_share + (1 − w)·mean type confidence
    # with the anchors on that SKU. Trees split on one feature at a time and approximate a
    # weighted sum poorly; given the sum, the ranker starts where the baseline ends.
    "type_mapped", "blend",
)
_GROUPS: dict[str, tuple[str, ...]] = {
    "repeat": ("item_baskets", "item_share", "item_decayed", "item_days_since", "item_interval", "item_due",
               "usual_of_type", "from_repeat", "blend"),  # blend: mostly the repeat share (w = 0.8)
    "type_repeat": ("type_baskets", "type_share", "type_decayed", "type_days_since", "type_interval", "type_due"),
    "together": ("cooc_count_max", "cooc_count_mean", "cooc_conf_max", "cooc_conf_mean", "cooc_lift_max",
                 "cooc_lift_mean", "cooc_npmi_max", "cooc_npmi_mean", "cooc_linked", "from_cooc", "from_cooc_once"),
    "type_together": ("tcooc_count_max", "tcooc_conf_max", "tcooc_conf_mean", "tcooc_lift_max", "tcooc_npmi_max",
                      "tcooc_npmi_mean", "from_type_cooc", "same_type_as_anchor", "type_mapped"),
    "similar": ("cos_anchor_max", "cos_anchor_mean", "from_similar"),
    "query": ("cos_query", "from_semantic", "from_role"),
    "profile": ("cos_profile", "from_profile"),
    "popular": ("popularity", "type_popularity", "from_popular", "from_type_popular"),
    "price": ("price_rel", "log_price"),
}
GROUP_OF: dict[str, str] = {f: g for g, fs in _GROUPS.items() for f in fs}  # unlisted features: "base"
GROUPS: tuple[str, ...] = (*_GROUPS, "base")
_COL = {f: i for i, f in enumerate(FEATURES)}
_GEN = {g: i for i, g in enumerate(GENERATORS)}

FALLBACK_BIAS = -2.0
# A hand-set blend, documented rather than tuned: a repeat purchase counts most (in grocery
# most of a basket is bought again), then co-purchase with the anchors, the match with the
# request, popularity; a substitute of an anchor counts against.
FALLBACK_WEIGHTS: dict[str, float] = {
    "item_share": 3.0, "type_share": 1.5, "cooc_npmi_max": 2.0, "tcooc_npmi_max": 1.0,
    "cos_query": 2.0, "cos_anchor_max": 0.5, "popularity": 1.0, "same_type_as_anchor": -1.0,
}
_POSITIVE_ONLY = {"cooc_npmi_max", "tcooc_npmi_max", "cos_query", "cos_anchor_max"}
REASON_MIN = 0.05  # a group must add at least this much to the raw score to be worded


def sigmoid(x: np.ndarray | float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def sharpened(relevance: float, temperature: float) -> float:
    """``sigmoid(logit(relevance) / temperature)``: the relevance of the raw score divided
    by ``temperature``, for any relevance in [0, 1] (a fallback score included)."""
    if temperature == 1.0:
        return relevance
    p = min(1.0 - 1e-12, max(1e-12, float(relevance)))
    # math on one float, not numpy: a request sharpens every candidate (~500)
    return 1.0 / (1.0 + math.exp(-math.log(p / (1.0 - p)) / temperature))


# --- features -------------------------------------------------------------------------------


def features(data: RankerData, ctx: RankingContext, rows: np.ndarray, flags: Sequence[Sequence[str]],
             cfg: RankerConfig | None = None) -> np.ndarray:
    """The feature matrix (len(rows) x len(FEATURES)), float64, NaN where undefined
    (no user, no anchor, no query). ``cfg`` gives the ``blend`` feature's weight and
    minimum type-pair count (the defaults when None)."""
    cfg = cfg or RankerConfig()
    cat = data.catalogue
    n = len(rows)
    X = np.full((n, len(FEATURES)), np.nan, dtype=np.float64)
    if n == 0:
        return X

    def put(name: str, values) -> None:
        X[:, _COL[name]] = values

    codes = cat.type_code[rows]
    user = ctx.user
    if user is not None:
        _repeat(put, "item", user.lookup(rows), user)
        _repeat(put, "type", user.lookup_types(codes), user)
        put("usual_of_type", _is_usual(user, codes, rows))
        put("user_baskets", user.n_baskets)
        if user.median_price == user.median_price and user.median_price > 0:
            with np.errstate(divide="ignore", invalid="ignore"):
                put("price_rel", np.log(cat.price[rows] / user.median_price))
    if ctx.anchors:
        sku = data.costats.sku_pairs(ctx.anchors, rows)
        for key, short in (("count", "count"), ("confidence", "conf"), ("lift", "lift"), ("npmi", "npmi")):
            put(f"cooc_{short}_max", sku[key].max(axis=0))
            if f"cooc_{short}_mean" in _COL:
                put(f"cooc_{short}_mean", sku[key].mean(axis=0))
        put("cooc_linked", (sku["count"] > 0).mean(axis=0))
        anchor_codes = [int(cat.type_code[a]) for a in ctx.anchors]
        typ = data.costats.type_pairs(anchor_codes, codes)
        same = (codes.reshape(1, -1) == np.array(anchor_codes).reshape(-1, 1)) & (codes.reshape(1, -1) >= 0)
        for key in typ:  # a type's "co-occurrence" with itself is its own count: not a complement
            typ[key] = np.where(same, 0.0, typ[key])
        for key, short in (("count", "count"), ("confidence", "conf"), ("lift", "lift"), ("npmi", "npmi")):
            put(f"tcooc_{short}_max", typ[key].max(axis=0))
            if f"tcooc_{short}_mean" in _COL:
                put(f"tcooc_{short}_mean", typ[key].mean(axis=0))
        put("same_type_as_anchor", same.any(axis=0).astype(np.float64))
        sims = cat.embeddings[rows] @ cat.embeddings[ctx.anchors].T
        put("cos_anchor_max", sims.max(axis=1))
        put("cos_anchor_mean", sims.mean(axis=1))
    put("n_anchors", float(len(ctx.anchors)))
    if ctx.query_vec is not None and np.any(ctx.query_vec):
        put("cos_query", cat.embeddings[rows] @ np.asarray(ctx.query_vec, dtype=np.float32))
    if ctx.profile_vec is not None and np.any(ctx.profile_vec):
        put("cos_profile", cat.embeddings[rows] @ np.asarray(ctx.profile_vec, dtype=np.float32))
    put("popularity", cat.popularity[rows])
    known = data.type_popularity  # empty when the index has no typed products
    looked_up = known[np.clip(codes, 0, len(known) - 1)] if len(known) else np.full(len(codes), np.nan)
    put("type_popularity", np.where(codes >= 0, looked_up, np.nan))
    with np.errstate(divide="ignore", invalid="ignore"):
        put("log_price", np.log(cat.price[rows]))
    put("in_stock", cat.in_stock[rows].astype(np.float64))
    _put_blend(put, data, ctx, rows, codes, X, cfg)
    first = _COL[f"from_{GENERATORS[0]}"]  # the flags are consecutive columns, in GENERATORS order
    X[:, first: first + len(GENERATORS)] = 0.0
    for j, names in enumerate(flags):
        for g in names:
            X[j, first + _GEN[g]] = 1.0
    X[~np.isfinite(X)] = np.nan
    return X


def _put_blend(put, data: RankerData, ctx: RankingContext, rows: np.ndarray, codes: np.ndarray,
               X: np.ndarray, cfg: RankerConfig) -> None:
    """``type_mapped`` and ``blend`` (see :data:`FEATURES`), as ``eval.baselines.blend_ranking``
    computes the type-level blend: type pairs seen fewer than ``blend_min_count`` times and
    the anchor's own type give no confidence; a guest has no repeat share."""
    cat = data.catalogue
    mapped = _mapped(data, ctx.user, codes, rows)
    put("type_mapped", mapped)
    share = np.nan_to_num(X[:, _COL["item_share"]], nan=0.0) if ctx.user is not None else np.zeros(len(rows))
    conf = np.zeros(len(rows))
    if ctx.anchors:
        anchor_codes = [int(cat.type_code[a]) for a in ctx.anchors]
        typ = data.costats.type_pairs(anchor_codes, codes)
        same = codes.reshape(1, -1) == np.array(anchor_codes).reshape(-1, 1)
        keep = (typ["count"] >= cfg.blend_min_count) & ~same & (codes.reshape(1, -1) >= 0)
        conf = np.where(keep, typ["confidence"], 0.0).mean(axis=0) * mapped
    put("blend", cfg.blend_weight * share + (1.0 - cfg.blend_weight) * conf)


def _mapped(data: RankerData, user: UserRow | None, codes: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """1 where the row is the SKU a type-level signal goes to: the user's usual SKU of its
    type when the user has one in stock, else the type's best seller."""
    cat = data.catalogue
    out = np.zeros(len(rows))
    for j, (r, t) in enumerate(zip(rows.tolist(), codes.tolist())):
        if t < 0:
            continue
        usual = user.usual_of_type.get(t) if user is not None else None
        if usual is not None and cat.in_stock[usual]:
            out[j] = float(usual == r)
        else:
            best = cat.best_of_type.get(t)
            out[j] = float(best is not None and len(best) > 0 and int(best[0]) == r)
    return out


def _is_usual(user: UserRow, codes: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """1 where the row is the user's most bought SKU of its type."""
    if not user.usual_of_type:
        return np.zeros(len(rows))
    types = np.fromiter(user.usual_of_type.keys(), dtype=np.int64)
    usual = np.fromiter(user.usual_of_type.values(), dtype=np.int64)
    order = np.argsort(types)
    types, usual = types[order], usual[order]
    at = np.minimum(np.searchsorted(types, codes), len(types) - 1)
    return ((types[at] == codes) & (usual[at] == rows)).astype(np.float64)


def _repeat(put, prefix: str, stats: np.ndarray, user: UserRow) -> None:
    n, decayed, first, last = stats.T
    put(f"{prefix}_baskets", n)
    put(f"{prefix}_share", n / max(user.n_baskets, 1.0))
    put(f"{prefix}_decayed", decayed)
    put(f"{prefix}_days_since", user.last_day - last)
    with np.errstate(divide="ignore", invalid="ignore"):
        interval = np.where(n >= 2, (last - first) / np.maximum(n - 1, 1), np.nan)
        put(f"{prefix}_interval", interval)
        put(f"{prefix}_due", (user.last_day - last) / interval)


# --- the model ------------------------------------------------------------------------------


@dataclass
class Reason:
    """One worded, itemised reason: what raised this product's relevance, and by how much."""

    kind: str  # a group of GROUPS
    text: str
    contribution: float  # to the raw score


class ItemRanker:
    """A trained LightGBM booster, or the fixed fallback blend when ``booster`` is None."""

    def __init__(self, booster=None, card: dict | None = None):
        self.booster = booster
        self.card = card or {"mode": "fallback", "why": "no trained model"}

    @property
    def mode(self) -> str:
        return "lightgbm" if self.booster is not None else "fallback"

    def raw(self, X: np.ndarray) -> np.ndarray:
        if not len(X):
            return np.zeros(0)
        if self.booster is None:
            return self._fallback_terms(X).sum(axis=1)
        return np.asarray(self.booster.predict(X, raw_score=True, num_threads=1), dtype=np.float64)

    def contributions(self, X: np.ndarray) -> np.ndarray:
        """(n, len(GROUPS)): each group's share of the raw score; rows sum to :meth:`raw`."""
        if not len(X):
            return np.zeros((0, len(GROUPS)))
        if self.booster is None:
            per = self._fallback_terms(X)  # last column: the bias
        else:
            per = np.asarray(self.booster.predict(X, pred_contrib=True, num_threads=1), dtype=np.float64)
        out = np.zeros((len(X), len(GROUPS)))
        gi = {g: i for i, g in enumerate(GROUPS)}
        for j, name in enumerate(FEATURES):
            out[:, gi[GROUP_OF.get(name, "base")]] += per[:, j]
        out[:, gi["base"]] += per[:, len(FEATURES)]
        return out

    def _fallback_terms(self, X: np.ndarray) -> np.ndarray:
        terms = np.zeros((len(X), len(FEATURES) + 1))
        for name, w in FALLBACK_WEIGHTS.items():
            x = np.nan_to_num(X[:, _COL[name]], nan=0.0)
            if name in _POSITIVE_ONLY:
                x = np.maximum(x, 0.0)
            terms[:, _COL[name]] = w * x
        terms[:, len(FEATURES)] = FALLBACK_BIAS
        return terms

    def model_bytes(self) -> bytes:
        return b"" if self.booster is None else self.booster.model_to_string().encode()

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        if self.booster is not None:
            (folder / MODEL_FILE).write_text(self.booster.model_to_string())
        (folder / CARD_FILE).write_text(json.dumps(self.card, indent=2, default=str))

    @classmethod
    def load(cls, folder: Path) -> ItemRanker:
        """The build's model; the fallback when it has none (an older index, too little data)."""
        folder = Path(folder)
        card_path = folder / CARD_FILE
        card = json.loads(card_path.read_text()) if card_path.exists() else {
            "mode": "fallback", "why": "this index was built without a ranker"}
        path = folder / MODEL_FILE
        if not path.exists() or card.get("features") not in (None, list(FEATURES)):
            card = {**card, "mode": "fallback"}
            return cls(None, card)
        import lightgbm as lgb

        return cls(lgb.Booster(model_str=path.read_text()), card)


@dataclass
class Ranked:
    row: int
    product_id: str
    relevance: float  # sigmoid(raw), in [0, 1]
    raw: float
    generators: list[str]
    contributions: dict[str, float] = field(default_factory=dict)  # group -> share of raw
    reasons: list[Reason] = field(default_factory=list)


class Ranker:
    """The ranker of one build, with the data its features read: what ``Index.ranker`` is."""

    def __init__(self, model: ItemRanker, data: RankerData, cfg: RankerConfig | None = None):
        self.model = model
        self.data = data
        self.cfg = cfg or RankerConfig()

    @classmethod
    def load(cls, folder: Path, products: pd.DataFrame, embeddings: np.ndarray, copurchase: CoPurchase,
             cfg: RankerConfig | None = None) -> Ranker:
        cat = CatalogueArrays.from_products(products, embeddings)
        path = Path(folder) / HISTORY_FILE
        history = UserHistory.load(path) if path.exists() else UserHistory.empty()
        model = ItemRanker.load(folder) if (cfg is None or cfg.enabled) else ItemRanker(None, {"mode": "fallback",
                                                                                               "why": "disabled"})
        return cls(model, RankerData(cat, CoStats(copurchase, cat), history), cfg)

    @property
    def catalogue(self) -> CatalogueArrays:
        return self.data.catalogue

    def context(self, *, user_key: str | None = None, profile_vec: np.ndarray | None = None,
                anchors: Sequence[str] = (), query_vec: np.ndarray | None = None,
                types: Sequence[str] = (), query: str = "") -> RankingContext:
        cat = self.data.catalogue
        user = self.data.history.row(user_key, cat) if user_key else None
        if user is not None and user.preference is not None:
            profile_vec = user.preference  # the same definition the model was trained on
        codes = [cat.type_code_of(str(t)) for t in types]
        return RankingContext(user=user, anchors=[cat.row_of[a] for a in anchors if a in cat.row_of],
                              query_vec=query_vec, profile_vec=profile_vec,
                              types=[c for c in codes if c >= 0], query=query)

    def rank(self, ctx: RankingContext, allowed: Callable[[int], bool] | None = None,
             k: int | None = None, nearest: NearestFn | None = None) -> tuple[list[Ranked], np.ndarray]:
        """The pool, best first (ties by product id), the first ``k`` of it, with its
        feature rows (for :meth:`explain`)."""
        pool = build_pool(self.data, ctx, self.cfg, allowed, nearest)
        rows = np.array(sorted(pool), dtype=np.int64)
        flags = [pool[r] for r in rows.tolist()]
        X = features(self.data, ctx, rows, flags, self.cfg)
        raw = self.model.raw(X)
        ids = self.data.catalogue.ids[rows].astype(str)
        order = np.lexsort((ids, -np.round(raw, 9)))
        if k is not None:
            order = order[:k]
        rel = sigmoid(raw[order])
        return [Ranked(int(rows[i]), str(ids[i]), float(r), float(raw[i]), flags[i])
                for i, r in zip(order.tolist(), rel.tolist())], X[order]

    def explain(self, ctx: RankingContext, ranked: list[Ranked], X: np.ndarray) -> None:
        """Fill each ranked item's group contributions and worded reasons."""
        if not ranked:
            return
        contrib = self.model.contributions(X)
        for item, row_contrib, x in zip(ranked, contrib, X):
            item.contributions = {g: float(v) for g, v in zip(GROUPS, row_contrib)}
            item.reasons = self._words(ctx, item, x)

    def _words(self, ctx: RankingContext, item: Ranked, x: np.ndarray) -> list[Reason]:
        # a group whose evidence this request lacks (no query, no anchor, a guest) still
        # moves the score through the trees' missing-value branches, but is no reason
        absent = set()
        if ctx.query_vec is None and "role" not in item.generators:
            absent.add("query")
        if not ctx.anchors:
            absent |= {"together", "type_together", "similar"}
        if ctx.user is None:
            absent |= {"repeat", "type_repeat", "price"}
        if ctx.profile_vec is None:
            absent.add("profile")
        out = []
        for group, value in sorted(item.contributions.items(), key=lambda kv: (-kv[1], kv[0])):
            if group == "base" or group in absent or value < REASON_MIN:
                continue
            text = _phrase(group, x, ctx, item.row, self.data)
            if text:
                out.append(Reason(group, text, round(value, 4)))
        return out


def _phrase(group: str, x: np.ndarray, ctx: RankingContext, row: int, data: RankerData) -> str:
    cat = data.catalogue

    def f(name: str) -> float:
        return float(x[_COL[name]])

    if group == "repeat":
        n, interval = f("item_baskets"), f("item_interval")
        if n >= 2 and interval == interval and interval > 0:
            return f"you buy this every {_period(interval)}"
        return "you bought this before" if n >= 1 else ""
    if group == "type_repeat":
        t = int(cat.type_code[row])
        return f"you often buy {_label(cat.type_names[t])}" if t >= 0 and f("type_baskets") >= 2 else ""
    if group == "together" and ctx.anchors:
        counts = data.costats.sku_pairs(ctx.anchors, np.array([row]))["count"][:, 0]
        best = int(np.argmax(counts))
        if counts[best] >= 1:
            n = int(counts[best])
            return f"bought with {_short(cat.titles[ctx.anchors[best]])} in {n:,} basket{'s' if n != 1 else ''}"
        return ""
    if group == "type_together" and ctx.anchors:
        t, a = int(cat.type_code[row]), int(cat.type_code[ctx.anchors[0]])
        if t >= 0 and a >= 0 and t != a:
            return f"{_label(cat.type_names[t])} goes with {_label(cat.type_names[a])}"
        return ""
    if group == "similar" and ctx.anchors:
        return f"like {_short(cat.titles[ctx.anchors[0]])}"
    if group == "query":
        return f"matches '{ctx.query[:40]}'" if ctx.query else "matches what you asked for"
    if group == "profile":
        return "fits your taste"
    if group == "popular":
        return "a best seller"
    if group == "price":
        return "in your usual price range"
    return ""


def _period(days: float) -> str:
    if days >= 10.5:
        weeks = round(days / 7)
        return "week" if weeks == 1 else f"{weeks} weeks"
    d = max(1, round(days))
    return "day" if d == 1 else f"{d} days"


def _label(name: str) -> str:
    return str(name).split(" > ")[-1].strip().lower()


def _short(title: str, limit: int = 40) -> str:
    title = str(title).strip()
    return title if len(title) <= limit else title[: limit - 1].rstrip() + "…"


# --- training ---------------------------------------------------------------------------------


@dataclass
class Query:
    group: str  # validation split key: the user (baskets) or the bundle (bundles)
    data: RankerData
    ctx: RankingContext
    targets: set[int]
    target_types: set[int]
    graded: bool
    need_type: int = -1  # the type code a synthetic need names (-1: no need)


def training_baskets(interactions: pd.DataFrame, extras: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The index's basket table (:func:`retrieval.index._baskets`): interaction baskets plus
    hand-made bundles as baskets."""
    baskets = baskets_of(interactions)
    bi = extras.get("bundle_item")
    if bi is not None and {"bundle ID", "item ID"} <= set(bi.columns):
        bundles = pd.DataFrame({"basket_id": "b" + bi["bundle ID"].astype(str),
                                "product_id": bi["item ID"].astype(str)})
        baskets = pd.concat([baskets, bundles], ignore_index=True)
    return baskets


def popularity_of(interactions: pd.DataFrame, products: pd.DataFrame) -> np.ndarray:
    """:func:`retrieval.sources.add_popularity` over the given interactions only."""
    if interactions.empty:
        return np.zeros(len(products))
    unit = interactions["basket_id"].where(interactions["basket_id"] != "", interactions["user_id"])
    pairs = pd.DataFrame({"p": interactions["product_id"].astype(str), "u": unit}).drop_duplicates()
    counts = pairs.groupby("p").size()
    scaled = np.log1p(counts) / np.log1p(counts.max())
    return products["product_id"].astype(str).map(scaled).fillna(0.0).to_numpy(dtype=np.float64)


def _days(interactions: pd.DataFrame) -> np.ndarray:
    return days_of(interactions["timestamp"])


def _history_data(hist: pd.DataFrame, extras: dict, products: pd.DataFrame, embeddings: np.ndarray,
                  cfg: RankerConfig, with_users: bool) -> RankerData:
    """Everything a training query may read, from the history part only. Basket data sells
    only what the history sold (the eval's training catalogue is what its weeks sold);
    bundle data keeps the catalogue's own stock (BundleRec has no sales to go by)."""
    cop = CoPurchase.build(training_baskets(hist, extras), products)
    pop = popularity_of(hist, products)
    cat = CatalogueArrays.from_products(products, embeddings, pop, sellable=pop > 0 if with_users else None)
    history = UserHistory.build(hist, cat, cfg.half_life_days) if with_users else UserHistory.empty()
    return RankerData(cat, CoStats(cop, cat), history)


def basket_queries(interactions: pd.DataFrame, products: pd.DataFrame, embeddings: np.ndarray,
                   cfg: RankerConfig, rng: np.random.Generator) -> tuple[list[Query], dict]:
    """Queries of the basket split: history before the last ``label_days``, labels after."""
    days = _days(interactions)
    cut = float(days.max()) - cfg.label_days if len(days) else 0.0
    hist = interactions[days <= cut].reset_index(drop=True)
    label = interactions[days > cut].reset_index(drop=True)
    info = {"split": "baskets", "history_until_day": cut, "history_rows": len(hist), "label_rows": len(label)}
    if hist.empty or label.empty:
        return [], info
    data = _history_data(hist, {}, products, embeddings, cfg, with_users=True)
    cat = data.catalogue
    tx = label.assign(row=label["product_id"].astype(str).map(cat.row_of))
    tx = tx[tx["row"].notna()]
    tx = tx.assign(row=tx["row"].astype(np.int64), basket=baskets_of(tx)["basket_id"].to_numpy())
    groups = tx.groupby("basket", sort=True).agg(user=("user_id", "first"), rows=("row", lambda r: sorted(set(r))))
    n_hist = pd.Series(data.history.users[:, 0], index=data.history.keys)
    candidates = []
    for basket, user, rows in zip(groups.index, groups["user"].astype(str), groups["rows"]):
        codes = {int(cat.type_code[r]) for r in rows} - {-1}
        sellable = [r for r in rows if cat.in_stock[r]]
        if len(codes) >= cfg.min_types and sellable and n_hist.get(user, 0) >= cfg.min_history_baskets:
            candidates.append((str(basket), user, rows, sellable))
    info["eligible_baskets"] = len(candidates)
    order = rng.permutation(len(candidates))[: cfg.max_queries]
    queries = []
    for i in sorted(order.tolist()):
        basket, user, rows, sellable = candidates[i]
        anchor = sellable[int(rng.integers(len(sellable)))]
        targets = set(rows) - {anchor}
        ttypes = {int(cat.type_code[r]) for r in targets} - {-1, int(cat.type_code[anchor])}
        urow = data.history.row(user, cat)
        ctx = RankingContext(user=urow, anchors=[anchor], profile_vec=None if urow is None else urow.preference)
        queries.append(Query(user, data, ctx, targets, ttypes, graded=True))
    return queries, info


def bundle_queries(interactions: pd.DataFrame, extras: dict[str, pd.DataFrame], products: pd.DataFrame,
                   embeddings: np.ndarray, cfg: RankerConfig, rng: np.random.Generator) -> tuple[list[Query], dict]:
    """Queries of the bundle split: ``bundle_folds`` folds, each rebuilt without its bundles."""
    bi = extras["bundle_item"]
    row_of = {pid: i for i, pid in enumerate(products["product_id"].astype(str))}
    bundles: dict[str, list[int]] = {}
    for b, item in zip(bi["bundle ID"].astype(str), bi["item ID"].astype(str)):
        r = row_of.get(item)
        if r is not None and r not in bundles.setdefault(b, []):
            bundles[b].append(r)
    keys = sorted((b for b, rows in bundles.items() if len(rows) >= 2), key=lambda b: (len(b), b))
    keys = [keys[i] for i in rng.permutation(len(keys))]
    info = {"split": "bundles", "bundles": len(keys), "folds": cfg.bundle_folds}
    per_fold = max(1, math.ceil(cfg.max_queries / max(cfg.max_held_per_bundle, 1) / max(cfg.bundle_folds, 1)))
    queries: list[Query] = []
    for fold in range(cfg.bundle_folds):
        held = set(keys[fold:: cfg.bundle_folds])
        if not held:
            continue
        hist, rest = _without_bundles(interactions, extras, held)
        data = _history_data(hist, rest, products, embeddings, cfg, with_users=False)
        for b in sorted(held, key=keys.index)[:per_fold]:
            rows = bundles[b]
            picks = rng.permutation(len(rows))[: cfg.max_held_per_bundle]
            for p in sorted(picks.tolist()):
                target = rows[p]
                anchors = [r for r in rows if r != target]
                ctx = RankingContext(anchors=anchors)
                queries.append(Query(b, data, ctx, {target}, set(), graded=False))
    info["queries"] = len(queries)
    return queries, info


def _without_bundles(interactions: pd.DataFrame, extras: dict[str, pd.DataFrame],
                     held: set[str]) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """The interactions and bundle table with ``held`` bundles, the sessions holding them
    and the user-item rows derived from them removed (the eval's hold-out rule)."""
    bi, ub, sb = extras["bundle_item"], extras.get("user_bundle"), extras.get("session_bundle")
    drop = pd.Series(False, index=interactions.index)
    if sb is not None:
        sessions = set("s" + sb.loc[sb["bundle ID"].astype(str).isin(held), "session ID"].astype(str))
        drop |= interactions["basket_id"].astype(str).isin(sessions)
    if ub is not None and "timestamp" in ub.columns:
        derived = ub[ub["bundle ID"].astype(str).isin(held)].merge(bi[bi["bundle ID"].astype(str).isin(held)],
                                                                  on="bundle ID")
        day = pd.to_numeric(derived["timestamp"], errors="coerce") // 86400
        basket = "u" + derived["user ID"].astype(str) + "-d" + day.astype("Int64").astype(str)
        # a multiset difference, as the eval's hold-out does: the same bundle bought twice
        # (the data has many duplicate bundles) leaves one copy of its rows behind
        need = pd.Series(list(zip(basket, derived["item ID"].astype(str)))).value_counts()
        pairs = pd.Series(list(zip(interactions["basket_id"].astype(str), interactions["product_id"].astype(str))),
                          index=interactions.index)
        bought = (interactions["event"].astype(str) == "purchase") & pairs.isin(set(need.index))
        copy = pairs[bought].groupby(pairs[bought]).cumcount()
        limit = pairs[bought].map(need)
        drop.loc[copy.index] |= (copy < limit).to_numpy()
    rest = {"bundle_item": bi[~bi["bundle ID"].astype(str).isin(held)]}
    return interactions[~drop.to_numpy()].reset_index(drop=True), rest


def _query_rows(q: Query, cfg: RankerConfig) -> tuple[np.ndarray, np.ndarray, dict[int, list[str]]]:
    pool = build_pool(q.data, q.ctx, cfg)
    rows = np.array(sorted(pool), dtype=np.int64)
    X = features(q.data, q.ctx, rows, [pool[r] for r in rows.tolist()], cfg)
    codes = q.data.catalogue.type_code[rows]
    sku = np.array([r in q.targets for r in rows.tolist()])
    typ = np.array([int(c) in q.target_types for c in codes.tolist()]) if q.graded else np.zeros(len(rows), bool)
    if q.need_type >= 0:
        # what the shopper asked for comes first: a bought SKU of the named type is the
        # best answer, every other target or target type is still relevant
        y = np.where(sku & (codes == q.need_type), 2, np.where(sku | typ, 1, 0))
    else:
        y = np.where(sku, 2 if q.graded else 1, np.where(typ, 1, 0))
    if cfg.one_row_per_type and q.graded:
        keep = _type_representatives(X, codes)
        X, y = X[keep], y[keep]
    return X, y, pool


def _type_representatives(X: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Row positions to train on when the list is read by product type: per type, the one
    SKU the ranker is likely to put first (the user's usual one, then the most bought by
    the user, then the most popular); untyped rows all stay. Training on every SKU of a
    wanted type would reward stacking five milks at the top, which a type-level list
    counts once."""
    usual = np.nan_to_num(X[:, _COL["usual_of_type"]], nan=0.0)
    bought = np.nan_to_num(X[:, _COL["item_baskets"]], nan=0.0)
    pop = np.nan_to_num(X[:, _COL["popularity"]], nan=0.0)
    order = np.lexsort((-pop, -bought, -usual, codes))
    first = np.ones(len(order), dtype=bool)
    first[1:] = codes[order][1:] != codes[order][:-1]
    keep = np.zeros(len(codes), dtype=bool)
    keep[order[first]] = True
    keep |= codes < 0
    return np.flatnonzero(keep)


def data_fingerprint(interactions: pd.DataFrame, products: pd.DataFrame, extras: dict[str, pd.DataFrame]) -> str:
    h = hashlib.sha256()
    for frame in (products[["product_id", "product_type", "price", "popularity"]],
                  interactions[["user_id", "product_id", "basket_id"]], *(extras[k] for k in sorted(extras))):
        if len(frame):
            h.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    h.update(_days(interactions).tobytes() if len(interactions) else b"")
    return h.hexdigest()[:16]


def train_ranker(interactions: pd.DataFrame, products: pd.DataFrame, embeddings: np.ndarray,
                 cfg: RankerConfig, extras: dict[str, pd.DataFrame] | None = None,
                 encode: Callable[[list[str]], np.ndarray] | None = None) -> ItemRanker:
    """Train on the index's own data (see the module docstring); the fallback when there is
    too little of it. ``encode`` (texts -> embeddings) gives some queries a synthetic need."""
    start = time.perf_counter()
    extras = extras or {}
    products = products.reset_index(drop=True)
    rng = np.random.default_rng(cfg.seed)
    card: dict = {"version": VERSION, "seed": cfg.seed, "features": list(FEATURES),
                  "fingerprint": data_fingerprint(interactions, products, extras), "config": cfg.model_dump()}
    if not cfg.enabled:
        return ItemRanker(None, {**card, "mode": "fallback", "why": "disabled in RankerConfig"})
    if "bundle_item" in extras and len(extras["bundle_item"]):
        queries, info = bundle_queries(interactions, extras, products, embeddings, cfg, rng)
    elif len(interactions):
        queries, info = basket_queries(interactions, products, embeddings, cfg, rng)
    else:
        queries, info = [], {"split": "none"}
    card["split"] = info
    if encode is not None and queries:
        _add_needs(queries, cfg, rng, encode)
    _precompute_neighbours(queries, cfg)
    groups = sorted({q.group for q in queries})
    chosen = rng.permutation(len(groups))[: round(cfg.valid_share * len(groups))]
    valid_groups = {groups[i] for i in chosen.tolist()}
    Xs, ys, sizes, is_valid, recall = [], [], [], [], _Recall()
    for q in queries:
        X, y, pool = _query_rows(q, cfg)
        if not len(y):
            continue
        if q.group in valid_groups:
            recall.add(q, pool)
        Xs.append(X)
        ys.append(y)
        sizes.append(len(y))
        is_valid.append(q.group in valid_groups)
    card["pool"] = recall.summary()
    card["seconds_features"] = round(time.perf_counter() - start, 2)
    n_train = sum(1 for v, y in zip(is_valid, ys) if not v and y.max() > 0)
    n_valid = sum(1 for v, y in zip(is_valid, ys) if v and y.max() > 0)
    card.update(queries=len(sizes), train_queries=n_train, valid_queries=n_valid, rows=int(sum(sizes)))
    if n_train < cfg.min_queries or n_valid < 1:
        card.update(mode="fallback", why=f"too little data: {n_train} training queries with a target in the pool "
                                         f"(need {cfg.min_queries}) and {n_valid} validation queries")
        return ItemRanker(None, card)
    booster, fit = _fit(Xs, ys, sizes, is_valid, cfg)
    ranker = ItemRanker(booster, card)
    card.update(mode="lightgbm", **fit, seconds_total=round(time.perf_counter() - start, 2))
    card["valid"] = _validation(ranker, Xs, ys, is_valid)
    return ranker


def _add_needs(queries: list[Query], cfg: RankerConfig, rng: np.random.Generator,
               encode: Callable[[list[str]], np.ndarray]) -> None:
    """A share of the queries also carry a need: the embedded name of one target's product
    type, as a shopper's request would name it ("taco shells"). Without them the model
    would never see a query and could not learn what a match with the request is worth."""
    chosen: list[tuple[Query, str, int]] = []
    for q in queries:
        if rng.random() >= cfg.query_share:
            continue
        types = sorted(q.target_types) or sorted({int(q.data.catalogue.type_code[t]) for t in q.targets} - {-1})
        if types:
            code = types[int(rng.integers(len(types)))]
            chosen.append((q, _label(q.data.catalogue.type_names[code]), code))
    names = sorted({n for _, n, _ in chosen})
    if not names:
        return
    vecs = dict(zip(names, np.asarray(encode(names), dtype=np.float32)))
    for q, name, code in chosen:
        q.ctx.query_vec, q.ctx.query, q.need_type = vecs[name], name, code


def _precompute_neighbours(queries: list[Query], cfg: RankerConfig) -> None:
    """The embedding generators' neighbours of every query, in batches per data split
    (identical vectors, such as one user's profile, are searched once)."""
    by_data: dict[int, list[Query]] = {}
    for q in queries:
        by_data.setdefault(id(q.data), []).append(q)
    for group in by_data.values():
        data = group[0].data
        keys: dict[bytes, int] = {}
        vectors: list[np.ndarray] = []
        wanted: list[tuple[Query, str, int]] = []
        for q in group:
            for name, vec in _vectors(data, q.ctx).items():
                key = name.encode() + np.asarray(vec, dtype=np.float32).tobytes()
                if key not in keys:
                    keys[key] = len(vectors)
                    vectors.append(np.asarray(vec, dtype=np.float32))
                wanted.append((q, name, keys[key]))
        if not vectors:
            continue
        width = 2 * max(cfg.similar_k, cfg.semantic_k, cfg.profile_k)
        found = exact_nearest(data.catalogue, np.stack(vectors), width)
        for q, name, i in wanted:
            q.ctx.neighbours[name] = found[i]


class _Recall:
    """Pool recall against the targets on the validation queries, overall and per generator."""

    def __init__(self) -> None:
        self.n = 0
        self.sku: dict[str, float] = {}
        self.type: dict[str, float] = {}
        self.size = 0

    def add(self, q: Query, pool: dict[int, list[str]]) -> None:
        if not q.targets:
            return
        self.n += 1
        self.size += len(pool)
        codes = q.data.catalogue.type_code
        wanted_types = q.target_types or ({int(codes[t]) for t in q.targets} - {-1})
        for name in ("pool", *GENERATORS):
            rows = set(pool) if name == "pool" else {r for r, g in pool.items() if name in g}
            self.sku[name] = self.sku.get(name, 0.0) + len(q.targets & rows) / len(q.targets)
            if wanted_types:
                got = {int(codes[r]) for r in rows}
                self.type[name] = self.type.get(name, 0.0) + len(wanted_types & got) / len(wanted_types)

    def summary(self) -> dict:
        if not self.n:
            return {}
        return {"queries": self.n, "mean_size": round(self.size / self.n, 1),
                "recall_sku": {k: round(v / self.n, 4) for k, v in self.sku.items()},
                "recall_type": {k: round(v / self.n, 4) for k, v in self.type.items()}}


def lgb_params(cfg: RankerConfig) -> dict:
    return {
        "objective": "lambdarank", "metric": "ndcg", "eval_at": [10], "label_gain": [0.0, 1.0, 3.0],
        "lambdarank_truncation_level": cfg.truncation_level,
        "learning_rate": cfg.learning_rate, "num_leaves": cfg.num_leaves, "min_data_in_leaf": cfg.min_data_in_leaf,
        "feature_fraction": cfg.feature_fraction, "lambda_l2": cfg.lambda_l2,
        "seed": cfg.seed, "bagging_seed": cfg.seed, "feature_fraction_seed": cfg.seed, "data_random_seed": cfg.seed,
        "deterministic": True, "force_col_wise": True, "num_threads": cfg.num_threads, "verbosity": -1,
    }


def _fit(Xs, ys, sizes, is_valid, cfg: RankerConfig):
    import lightgbm as lgb

    def stack(flag: bool):
        keep = [i for i, v in enumerate(is_valid) if v == flag]
        return (np.vstack([Xs[i] for i in keep]), np.concatenate([ys[i] for i in keep]), [sizes[i] for i in keep])

    Xt, yt, gt = stack(False)
    Xv, yv, gv = stack(True)
    t = time.perf_counter()
    train = lgb.Dataset(Xt, yt, group=gt, feature_name=list(FEATURES), free_raw_data=True)
    valid = lgb.Dataset(Xv, yv, group=gv, reference=train)
    booster = lgb.train(lgb_params(cfg), train, num_boost_round=cfg.n_estimators, valid_sets=[valid],
                        callbacks=[lgb.early_stopping(cfg.early_stopping_rounds, verbose=False)])
    best = booster.best_iteration or cfg.n_estimators
    # keep only the chosen trees, so the saved model, its bytes and its predictions agree
    booster = lgb.Booster(model_str=booster.model_to_string(num_iteration=best))
    return booster, {"best_iteration": int(best), "train_rows": int(len(yt)), "valid_rows": int(len(yv)),
                     "seconds_fit": round(time.perf_counter() - t, 2)}


def _validation(ranker: ItemRanker, Xs, ys, is_valid) -> dict:
    """NDCG@10 (graded gains) of the model and of the fallback blend on the validation queries."""
    fallback = ItemRanker(None)
    out: dict[str, list[float]] = {"model": [], "fallback": []}
    for X, y, v in zip(Xs, ys, is_valid):
        if not v or y.max() == 0:
            continue
        for name, model in (("model", ranker), ("fallback", fallback)):
            out[name].append(_ndcg(model.raw(X), y, 10))
    return {f"ndcg@10_{k}": round(float(np.mean(v)), 4) for k, v in out.items() if v}


def _ndcg(scores: np.ndarray, y: np.ndarray, k: int) -> float:
    order = np.argsort(-scores, kind="stable")[:k]
    gains = (2.0 ** y - 1)
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = float((gains[order] * disc[: len(order)]).sum())
    ideal = np.sort(gains)[::-1][:k]
    idcg = float((ideal * disc[: len(ideal)]).sum())
    return dcg / idcg if idcg > 0 else 0.0


# --- at index time ------------------------------------------------------------------------------


def train_and_save(interactions: pd.DataFrame, products: pd.DataFrame, embeddings: np.ndarray,
                   cfg: RankerConfig, folder: Path, *, extras: dict[str, pd.DataFrame] | None = None,
                   encode: Callable[[list[str]], np.ndarray] | None = None,
                   key_of: Callable[[str], str] = str) -> dict:
    """Train the ranker and save it with the serving history (keyed by ``key_of``, the
    profiles' pseudonyms) into a build folder; returns the card."""
    products = products.reset_index(drop=True)
    ranker = train_ranker(interactions, products, embeddings, cfg, extras, encode)
    cat = CatalogueArrays.from_products(products, embeddings)
    UserHistory.build(interactions, cat, cfg.half_life_days, key_of).save(Path(folder) / HISTORY_FILE)
    ranker.save(Path(folder))
    return ranker.card
