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
* ``leaf-category`` (bundle generation): one bundle per leaf category with >= 2 items.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from assistant.grouping import NAME_MAX, ItemGroup
from retrieval.copurchase import CoPurchase
from retrieval.index import Index

from .protocols import CompletionCase


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


def _fill(ranked: list[str], case: CompletionCase, data: BaselineData, depth: int) -> list[str]:
    """Drop anchors, out-of-stock and repeated ids; top up with popular products."""
    skip = set(case.anchors)
    stock = data.in_stock
    out: list[str] = []
    for pid in ranked:
        row = data.row_of.get(pid)
        if pid in skip or row is None or not stock[row]:
            continue
        out.append(pid)
        skip.add(pid)
        if len(out) >= depth:
            return out
    for pid in data.popular:
        if pid not in skip:
            out.append(pid)
            skip.add(pid)
            if len(out) >= depth:
                break
    return out


def random_ranking(case: CompletionCase, data: BaselineData, depth: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng([seed, zlib.crc32(case.case_id.encode())])
    pool = data.ids[data.in_stock]
    n = min(len(pool), depth + len(case.anchors))
    return _fill(pool[rng.choice(len(pool), size=n, replace=False)].tolist(), case, data, depth)


def popularity_ranking(case: CompletionCase, data: BaselineData, depth: int) -> list[str]:
    return _fill([], case, data, depth)


def cooccurrence_ranking(case: CompletionCase, data: BaselineData, depth: int, min_count: float = 3) -> list[str]:
    score: dict[str, float] = {}
    for anchor in case.anchors:
        table = data.copurchase.items.neighbours(anchor, min_count=min_count)
        for key, lift in zip(table["key"].astype(str), table["lift"].astype(float)):
            score[key] = score.get(key, 0.0) + lift
    ranked = sorted(score, key=lambda k: (-round(score[k], 9), k))
    return _fill(ranked, case, data, depth)


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


def completion_baselines(
    with_buy_again: bool, min_count: float, seed: int
) -> dict[str, Callable[[CompletionCase, BaselineData, int], list[str]]]:
    """Name -> ranking function for one protocol."""
    out: dict[str, Callable[[CompletionCase, BaselineData, int], list[str]]] = {
        "random": lambda c, d, k: random_ranking(c, d, k, seed),
        "popularity": popularity_ranking,
        "cooccurrence": lambda c, d, k: cooccurrence_ranking(c, d, k, min_count),
        "embedding-nn": embedding_ranking,
    }
    if with_buy_again:
        out["buy-again"] = buy_again_ranking
    return out


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
