"""Baselines, computed in the same run, on the same cases, from the same training index.

Each completion baseline ranks in-stock catalogue products (the universe the system may
recommend from), never returns an anchor, breaks ties by product id, and — where its own
evidence runs out — fills the list with the most popular products, so every system hands
in a list of the same depth.

* ``random``: a uniform sample, seeded per case.
* ``popularity``: the most popular products (share of training baskets, log-scaled; the
  same ``popularity`` column the system uses).
* ``cooccurrence``: "frequently bought together": products co-occurring with the anchors
  in training baskets, ranked by the sum over anchors of lift
  ``n(a,b)·N / (n(a)·n(b))`` among pairs seen at least ``min_count`` times.
* ``embedding-nn``: nearest products to the mean of the anchors' MiniLM embeddings
  (cosine), i.e. "more like this".
* ``buy-again`` (Complete Journey): the household's own training purchases, most
  baskets first, then most recent.
* ``buy-again+cooccurrence``: ``w·repeat(i) + (1 − w)·cooc(i)``, where ``repeat`` is the
  share of the household's training baskets holding ``i`` and ``cooc`` the mean over
  anchors of the confidence ``n(a,i) / n(a)`` (pairs seen ``min_count`` times, with the
  optional back-off). Both are probabilities of "i is in the basket", so one weight mixes
  them. BundleRec cases carry no household, so there ``repeat`` is 0 and the baseline is
  confidence co-occurrence with back-off. ``w``, ``min_count`` and the back-off are chosen
  on the dev split (``--tune-baselines``), and so is the level: ``sku`` as above, or
  ``type``, where the confidence is between product types and goes to one product per
  type (the household's usual one, else the type's best seller).
* ``itemknn``: item-based top-N (Deshpande & Karypis, "Item-based top-N recommendation
  algorithms", TOIS 2004): item-item cosine ``n(i,j) / sqrt(n(i)·n(j))`` over training
  baskets (bundles and sessions on BundleRec), each item keeping its K = 10 most similar
  items (as in the BundleRec paper); a candidate scores the sum of its similarities to the
  anchors, plus ``history_weight`` times the sum over the household's past items (0 =
  anchors only; chosen on the dev split for Complete Journey).
* Back-off (``cooccurrence`` and the blend): an anchor with no pair seen ``min_count``
  times uses its pairs seen once — only where the dev split prefers it.

Bundle generation baselines (each a list of :class:`ItemGroup`):

* ``leaf-category``: one bundle per leaf category with >= 2 items.
* ``category-overlap``: the system's clustering on category overlap alone (no
  co-purchase, no training data), its threshold chosen on the dev split.
* ``whole-session``: the session's items as one bundle.
* ``rule-else-whole-session``: the system's rule grouping, or the whole session when the
  rule returns nothing.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from assistant.grouping import NAME_MAX, Affinity, ItemGroup, category_levels, common_name, rule_groups
from retrieval.copurchase import CooccurrenceTable, CoPurchase
from retrieval.index import Index

from .protocols import CompletionCase, first_distinct


@dataclass
class BaselineData:
    """What the baselines may know: the training index and the training interactions."""

    ids: np.ndarray  # product ids, index row order
    in_stock: np.ndarray  # bool per row
    popular: list[str]  # in-stock ids, most popular first
    embeddings: np.ndarray
    row_of: pd.Series
    copurchase: CoPurchase
    history: dict[str, list[str]]
    repeat: dict[str, dict[str, float]] = field(default_factory=dict)  # user -> item -> basket share
    _rows: dict[str, tuple[np.ndarray, np.ndarray, float, np.ndarray]] = field(default_factory=dict, repr=False)
    _knn: dict[tuple[str, int], list[tuple[str, float]]] = field(default_factory=dict, repr=False)
    _diag: np.ndarray | None = field(default=None, repr=False)
    _best_of_type: dict[str, str] | None = field(default=None, repr=False)
    _usual: dict[str, dict[str, str]] = field(default_factory=dict, repr=False)

    def row(self, pid: str) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
        """(co-occurring ids, pair counts, n(pid), n(each id)) from the training co-purchase table."""
        if pid not in self._rows:
            table: CooccurrenceTable = self.copurchase.items
            if self._diag is None:
                self._diag = table.counts.diagonal().astype(np.float64)
            i = table.index(pid)
            if i is None:
                empty = np.array([], dtype=np.float64)
                self._rows[pid] = (np.array([], dtype=str), empty, 0.0, empty)
            else:
                r = table.counts.getrow(i)
                cols = r.indices[r.indices != i]
                counts = r.data[r.indices != i].astype(np.float64)
                self._rows[pid] = (table.keys[cols].astype(str), counts, float(self._diag[i]), self._diag[cols])
        return self._rows[pid]

    def pair_counts(self, anchor: str, min_count: float, backoff: bool
                    ) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
        """:meth:`row` restricted to pairs seen >= ``min_count`` times; with ``backoff``,
        to pairs seen once when the anchor has no such pair."""
        keys, counts, n_a, n_b = self.row(anchor)
        keep = counts >= min_count
        if backoff and not keep.any():
            keep = counts >= 1
        return keys[keep], counts[keep], n_a, n_b[keep]

    def type_pair_counts(self, anchor: str, min_count: float, user: str
                         ) -> tuple[np.ndarray, np.ndarray, float]:
        """The anchor's product type's co-occurring types (pairs seen >= ``min_count``
        times), each as one product: the user's usual one of that type, else its best
        seller; (products, pair counts, n(anchor's type))."""
        table = self.copurchase.types
        own = self.copurchase.product_type.get(anchor, "")
        i = table.index(own) if own else None
        if i is None:
            return np.array([], dtype=str), np.array([], dtype=np.float64), 0.0
        if self._best_of_type is None:
            self._best_of_type = {}
            for pid in self.popular:  # most popular first: the first of a type is its best seller
                self._best_of_type.setdefault(self.copurchase.product_type.get(pid, ""), pid)
        if user not in self._usual:
            usual: dict[str, str] = {}
            for pid in self.history.get(user, []):  # most baskets first
                usual.setdefault(self.copurchase.product_type.get(pid, ""), pid)
            self._usual[user] = usual
        r = table.counts.getrow(i)
        keep = (r.indices != i) & (r.data >= min_count)
        products, counts = [], []
        for col, count in zip(r.indices[keep], r.data[keep]):
            t = str(table.keys[col])
            found = self._usual[user].get(t) or self._best_of_type.get(t)
            if t and found:
                products.append(found)
                counts.append(float(count))
        return np.array(products, dtype=str), np.array(counts, dtype=np.float64), float(table.counts[i, i])

    def knn(self, pid: str, k: int = 10) -> list[tuple[str, float]]:
        """The ``k`` items most cosine-similar to ``pid`` (ties by id)."""
        if (pid, k) not in self._knn:
            keys, counts, n_a, n_b = self.row(pid)
            sims = counts / np.sqrt(n_a * n_b) if len(keys) else counts
            order = np.lexsort((keys, -np.round(sims, 12)))[:k]
            self._knn[(pid, k)] = [(str(keys[j]), float(sims[j])) for j in order]
        return self._knn[(pid, k)]

    @classmethod
    def from_index(cls, index: Index, interactions: pd.DataFrame) -> BaselineData:
        products = index.products
        in_stock = products["in_stock"].fillna(False).astype(bool).to_numpy()
        ranked = products[in_stock].sort_values(["popularity", "product_id"], ascending=[False, True],
                                                kind="mergesort")
        return cls(
            ids=products["product_id"].astype(str).to_numpy(),
            in_stock=in_stock,
            popular=ranked["product_id"].astype(str).tolist(),
            embeddings=index.item_embeddings,
            row_of=index.row_of,
            copurchase=index.copurchase,
            history=purchase_history(interactions),
            repeat=repeat_shares(interactions),
        )


def purchase_history(interactions: pd.DataFrame) -> dict[str, list[str]]:
    """Per user, products by number of distinct baskets (desc), last purchase (desc), id."""
    if interactions.empty:
        return {}
    tx = interactions.assign(basket=interactions["basket_id"].where(interactions["basket_id"] != "",
                                                                    interactions["timestamp"].astype(str)))
    stats = tx.groupby(["user_id", "product_id"]).agg(n=("basket", "nunique"), last=("timestamp", "max"))
    stats = stats.reset_index().sort_values(["user_id", "n", "last", "product_id"],
                                            ascending=[True, False, False, True], kind="mergesort")
    return {str(u): g["product_id"].astype(str).tolist() for u, g in stats.groupby("user_id", sort=False)}


def repeat_shares(interactions: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per user, the share of their training baskets that hold each product."""
    if interactions.empty:
        return {}
    tx = interactions.assign(basket=interactions["basket_id"].where(interactions["basket_id"] != "",
                                                                    interactions["timestamp"].astype(str)))
    per_item = tx.groupby(["user_id", "product_id"])["basket"].nunique()
    per_user = tx.groupby("user_id")["basket"].nunique()
    shares = per_item / per_user.reindex(per_item.index.get_level_values(0)).to_numpy()
    out: dict[str, dict[str, float]] = {}
    for (u, p), v in shares.items():
        out.setdefault(str(u), {})[str(p)] = float(v)
    return out


def _ranked(score: dict[str, float]) -> list[str]:
    return sorted(score, key=lambda k: (-round(score[k], 9), k))


def _fill(ranked: list[str], case: CompletionCase, data: BaselineData, depth: int) -> list[str]:
    """Drop anchors, out-of-stock and repeated ids; top up with popular products."""
    sellable = (pid for pid in ranked if (row := data.row_of.get(pid)) is not None and data.in_stock[row])
    out = first_distinct(sellable, case.anchors, depth)
    return out + first_distinct(data.popular, [*case.anchors, *out], depth - len(out))


def random_ranking(case: CompletionCase, data: BaselineData, depth: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng([seed, zlib.crc32(case.case_id.encode())])
    pool = data.ids[data.in_stock]
    n = min(len(pool), depth + len(case.anchors))
    return _fill(pool[rng.choice(len(pool), size=n, replace=False)].tolist(), case, data, depth)


def popularity_ranking(case: CompletionCase, data: BaselineData, depth: int) -> list[str]:
    return _fill([], case, data, depth)


def cooccurrence_ranking(case: CompletionCase, data: BaselineData, depth: int, min_count: float = 3,
                         backoff: bool = False) -> list[str]:
    """Summed lift ``n(a,b)·N / (n(a)·n(b))`` over the anchors."""
    n = float(data.copurchase.items.n_baskets)
    score: dict[str, float] = {}
    for anchor in case.anchors:
        keys, counts, n_a, n_b = data.pair_counts(anchor, min_count, backoff)
        for key, lift in zip(keys.tolist(), (counts * n / (n_a * n_b)).tolist()):
            score[key] = score.get(key, 0.0) + lift
    return _fill(_ranked(score), case, data, depth)


def blend_ranking(case: CompletionCase, data: BaselineData, depth: int, weight: float = 0.5,
                  min_count: float = 3, backoff: bool = False, level: str = "sku") -> list[str]:
    """``weight·repeat + (1 − weight)·confidence``, both in [0, 1] (see the module doc).

    ``level="type"`` takes the confidence between product types instead (type pairs seen
    ``min_count`` times) and gives it to one product of each type: the household's usual
    one of that type, else the type's best seller."""
    score: dict[str, float] = {}
    if weight > 0:
        for pid, share in data.repeat.get(str(case.user_id), {}).items():
            score[pid] = weight * share
    if weight < 1 and case.anchors:
        per_anchor = (1.0 - weight) / len(case.anchors)
        for anchor in case.anchors:
            pairs = (data.pair_counts(anchor, min_count, backoff) if level == "sku"
                     else data.type_pair_counts(anchor, min_count, str(case.user_id)))
            keys, counts, n_a = pairs[0], pairs[1], pairs[2]
            for key, c in zip(keys.tolist(), (counts / n_a).tolist() if n_a else []):
                score[key] = score.get(key, 0.0) + per_anchor * c
    return _fill(_ranked(score), case, data, depth)


def itemknn_ranking(case: CompletionCase, data: BaselineData, depth: int, k: int = 10,
                    history_weight: float = 0.0) -> list[str]:
    """Sum of cosine similarities to the anchors (and, weighted, to the household's items),
    each item voting only for its ``k`` nearest neighbours."""
    score: dict[str, float] = {}
    sources = [(a, 1.0) for a in case.anchors]
    if history_weight > 0:
        sources += [(p, history_weight) for p in data.history.get(str(case.user_id), [])]
    for pid, w in sources:
        for key, sim in data.knn(pid, k):
            score[key] = score.get(key, 0.0) + w * sim
    return _fill(_ranked(score), case, data, depth)


def embedding_ranking(case: CompletionCase, data: BaselineData, depth: int) -> list[str]:
    rows = [data.row_of[a] for a in case.anchors if a in data.row_of.index]
    if not rows:
        return _fill([], case, data, depth)
    centre = data.embeddings[rows].mean(axis=0)
    sims = data.embeddings @ (centre / (np.linalg.norm(centre) or 1.0))
    sims = np.where(data.in_stock, sims, -np.inf)
    sims[rows] = -np.inf
    top = np.argpartition(-sims, min(len(sims) - 1, depth * 3))[: depth * 3]
    ranked = sorted(top.tolist(), key=lambda r: (-round(float(sims[r]), 7), data.ids[r]))
    return _fill([str(data.ids[r]) for r in ranked if np.isfinite(sims[r])], case, data, depth)


def buy_again_ranking(case: CompletionCase, data: BaselineData, depth: int) -> list[str]:
    return _fill(data.history.get(str(case.user_id), []), case, data, depth)


Ranking = Callable[[CompletionCase, BaselineData, int], list[str]]
KNN_K = 10  # neighbours per item, as in the BundleRec paper


def default_choices(protocol: str) -> dict[str, dict]:
    """The parameters used when no dev choice exists (today's values; not tuned)."""
    min_count = 3 if protocol == "cj-completion" else 1
    return {
        "cooccurrence": {"min_count": min_count, "backoff": False},
        "buy-again+cooccurrence": {"weight": 0.5 if protocol == "cj-completion" else 0.0,
                                   "min_count": min_count, "backoff": False, "level": "sku"},
        "itemknn": {"k": KNN_K, "history_weight": 0.0},
    }


def completion_baselines(
    with_buy_again: bool, min_count: float, seed: int, choices: dict[str, dict] | None = None,
) -> dict[str, Ranking]:
    """Name -> ranking function for one protocol; ``choices`` are the tuned parameters
    (:func:`default_choices` layout), ``min_count`` the co-occurrence default without them."""
    choices = choices or {}
    cooc = {"min_count": min_count, "backoff": False, **choices.get("cooccurrence", {})}
    blend = {"weight": 0.5 if with_buy_again else 0.0, "min_count": min_count, "backoff": False, "level": "sku",
             **choices.get("buy-again+cooccurrence", {})}
    knn = {"k": KNN_K, "history_weight": 0.0, **choices.get("itemknn", {})}
    if not with_buy_again:  # no household: the repeat term is 0 whatever the weight
        blend["weight"] = 0.0
        knn["history_weight"] = 0.0
    out: dict[str, Ranking] = {
        "random": lambda c, d, k: random_ranking(c, d, k, seed),
        "popularity": popularity_ranking,
        "cooccurrence": lambda c, d, k: cooccurrence_ranking(c, d, k, cooc["min_count"], cooc["backoff"]),
        "embedding-nn": embedding_ranking,
    }
    if with_buy_again:
        out["buy-again"] = buy_again_ranking
    out["buy-again+cooccurrence"] = lambda c, d, k: blend_ranking(
        c, d, k, blend["weight"], blend["min_count"], blend["backoff"], blend.get("level", "sku"))
    out["itemknn"] = lambda c, d, k: itemknn_ranking(c, d, k, knn["k"], knn["history_weight"])
    return out


# --- the dev grids (``--tune-baselines``) ------------------------------------------------

COOC_GRID = ({"min_count": 1, "backoff": False}, {"min_count": 2, "backoff": False},
             {"min_count": 2, "backoff": True}, {"min_count": 3, "backoff": False},
             {"min_count": 3, "backoff": True})
BLEND_WEIGHTS = tuple(round(0.1 * i, 1) for i in range(11))
KNN_HISTORY_WEIGHTS = (0.0, 0.05, 0.1, 0.25, 0.5, 1.0)
OVERLAP_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def tuning_grid(protocol: str) -> dict[str, list[dict]]:
    """Every parameter set tried on the dev split, per tuned baseline."""
    history = protocol == "cj-completion"
    weights = BLEND_WEIGHTS if history else (0.0,)
    blend = [{"weight": w, **c, "level": "sku"} for w in weights for c in COOC_GRID]
    # type level: back-off is moot (type pairs are dense); min_count in {1, 3, 10}
    blend += [{"weight": w, "min_count": m, "backoff": False, "level": "type"} for w in weights for m in (1, 3, 10)]
    knn = [{"k": KNN_K, "history_weight": h} for h in (KNN_HISTORY_WEIGHTS if history else (0.0,))]
    return {"cooccurrence": list(COOC_GRID), "buy-again+cooccurrence": blend, "itemknn": knn}


def tuned_ranking(name: str, params: dict) -> Ranking:
    if name == "cooccurrence":
        return lambda c, d, k: cooccurrence_ranking(c, d, k, params["min_count"], params["backoff"])
    if name == "buy-again+cooccurrence":
        return lambda c, d, k: blend_ranking(c, d, k, params["weight"], params["min_count"], params["backoff"],
                                             params.get("level", "sku"))
    if name == "itemknn":
        return lambda c, d, k: itemknn_ranking(c, d, k, params["k"], params["history_weight"])
    raise KeyError(name)


def whole_session(item_ids: list[str] | tuple[str, ...], catalogue: pd.DataFrame) -> list[ItemGroup]:
    """The session's items as one bundle (none when fewer than two)."""
    ids = tuple(dict.fromkeys(str(x) for x in item_ids))
    if len(ids) < 2:
        return []
    return [ItemGroup(item_ids=ids, name=common_name(ids, catalogue), source="rule", coherence=0.0)]


def rule_else_whole_session(rule: list[ItemGroup], item_ids: list[str] | tuple[str, ...],
                            catalogue: pd.DataFrame) -> list[ItemGroup]:
    """The system's rule grouping, or the whole session when the rule found nothing."""
    return list(rule) if rule else whole_session(item_ids, catalogue)


def group_by_category_overlap(item_ids: list[str] | tuple[str, ...], catalogue: pd.DataFrame, *,
                              max_size: int, threshold: float = 0.5) -> list[ItemGroup]:
    """The system's average-linkage clustering on category overlap alone (no co-purchase)."""
    ids = list(dict.fromkeys(str(x) for x in item_ids))
    paths = {i: category_levels(catalogue.at[i, "category"]) for i in ids}
    affinity = Affinity(lambda a, b: 0.0, paths, npmi_weight=0.0)
    return rule_groups(ids, affinity, catalogue, max_size=max_size, threshold=threshold)


def group_by_leaf_category(item_ids: list[str] | tuple[str, ...], catalogue: pd.DataFrame,
                           min_size: int = 2) -> list[ItemGroup]:
    """One bundle per leaf category (product type) holding >= ``min_size`` of the items."""
    by_leaf: dict[str, list[str]] = {}
    for i in dict.fromkeys(str(x) for x in item_ids):
        by_leaf.setdefault(str(catalogue.at[i, "product_type"] or ""), []).append(i)
    return [
        ItemGroup(item_ids=tuple(members), name=(leaf or "Other")[:NAME_MAX], source="rule", coherence=0.0)
        for leaf, members in sorted(by_leaf.items())
        if len(members) >= min_size
    ]
