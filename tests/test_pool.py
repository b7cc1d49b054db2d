"""The candidate pool and the ranker's features on a hand-made basket set, where every
number can be worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from retrieval.config import RankerConfig
from retrieval.copurchase import CoPurchase, baskets_of
from retrieval.pool import GENERATORS, CatalogueArrays, CoStats, RankerData, RankingContext, UserHistory, build_pool
from retrieval.ranker import FEATURES, features

DAY0 = pd.Timestamp("2020-01-01")
PRODUCTS = [  # id, title, type, price
    ("p1", "white bread", "BREAD", 2.0),
    ("p2", "salted butter", "BUTTER", 3.0),
    ("p3", "strawberry jam", "JAM", 2.5),
    ("p4", "whole milk", "MILK", 1.0),
    ("p5", "rye bread", "BREAD", 2.2),
    ("p6", "cheddar cheese", "CHEESE", 4.0),
    ("p7", "rare spice", "SPICE", 9.0),
    ("p8", "green tea", "TEA", 3.5),
]
BASKETS = [  # user, basket, day, products
    ("u1", "b1", 0, ["p1", "p2", "p4"]),
    ("u1", "b2", 7, ["p1", "p2"]),
    ("u1", "b3", 14, ["p1", "p4", "p6"]),
    ("u2", "b4", 3, ["p5", "p2", "p3"]),
    ("u2", "b5", 10, ["p5", "p3"]),
    ("u2", "b6", 20, ["p7", "p8"]),
]
HALF_LIFE = 7.0


@pytest.fixture(scope="module")
def data() -> RankerData:
    rows = [(u, p, DAY0 + pd.Timedelta(days=d), b) for u, b, d, items in BASKETS for p in items]
    tx = pd.DataFrame(rows, columns=["user_id", "product_id", "timestamp", "basket_id"]).assign(event="purchase")
    products = pd.DataFrame(PRODUCTS, columns=["product_id", "title", "product_type", "price"])
    counts = baskets_of(tx).drop_duplicates().groupby("product_id").size()
    products["popularity"] = products["product_id"].map(counts).fillna(0) / counts.max()
    products["in_stock"] = True
    # distinct unit vectors: p1/p5 (both bread) point the same way, the rest are spread out
    emb = np.eye(8, dtype=np.float32)
    emb[4] = emb[0] * 0.8 + emb[4] * 0.6
    cat = CatalogueArrays.from_products(products, emb)
    cop = CoPurchase.build(baskets_of(tx), products)
    return RankerData(cat, CoStats(cop, cat), UserHistory.build(tx, cat, HALF_LIFE))


def rows(data: RankerData, *ids: str) -> np.ndarray:
    return np.array([data.catalogue.row_of[i] for i in ids])


def feature(X: np.ndarray, name: str) -> np.ndarray:
    return X[:, FEATURES.index(name)]


def cfg(**overrides) -> RankerConfig:
    return RankerConfig(type_cooc_min_count=1, **overrides)


def test_user_history_by_hand(data):
    u1 = data.history.row("u1", data.catalogue)
    assert u1 is not None and u1.n_baskets == 3 and u1.last_day - u1.first_day == pytest.approx(14)
    n, decayed, first, last = u1.lookup(rows(data, "p1"))[0]
    assert n == 3 and decayed == pytest.approx(0.25 + 0.5 + 1.0)  # days 0, 7, 14 with a 7-day half-life
    assert last - first == pytest.approx(14)
    never = u1.lookup(rows(data, "p3"))[0]
    assert never[0] == 0 and math.isnan(never[3])
    # the usual SKU of each type is the most bought one
    assert data.catalogue.ids[u1.usual_of_type[data.catalogue.type_code_of("BREAD")]] == "p1"
    assert data.history.row("nobody", data.catalogue) is None


def test_features_by_hand(data):
    u1 = data.history.row("u1", data.catalogue)
    ctx = RankingContext(user=u1, anchors=[data.catalogue.row_of["p1"]])
    cand = rows(data, "p2", "p5", "p3")
    X = features(data, ctx, cand, [["cooc"], ["similar"], []])
    assert X.shape == (3, len(FEATURES))
    # butter: in 2 of u1's 3 baskets, days 0 and 7; u1's last basket is day 14
    assert feature(X, "item_baskets")[0] == 2 and feature(X, "item_share")[0] == pytest.approx(2 / 3)
    assert feature(X, "item_interval")[0] == pytest.approx(7) and feature(X, "item_days_since")[0] == pytest.approx(7)
    assert feature(X, "item_due")[0] == pytest.approx(1.0)
    assert feature(X, "usual_of_type")[0] == 1
    # co-occurrence with the anchor: N = 6 baskets, n(bread) = 3, n(butter) = 3, both = 2
    assert feature(X, "cooc_count_max")[0] == 2
    assert feature(X, "cooc_conf_max")[0] == pytest.approx(2 / 3)
    assert feature(X, "cooc_lift_max")[0] == pytest.approx(2 * 6 / (3 * 3))
    assert feature(X, "cooc_npmi_max")[0] == pytest.approx(math.log(4 / 3) / -math.log(2 / 6))
    # type level: BREAD in 5 baskets, BUTTER in 3, together in 3
    assert feature(X, "tcooc_count_max")[0] == 3
    assert feature(X, "tcooc_lift_max")[0] == pytest.approx(3 * 6 / (5 * 3))
    # rye bread is a substitute of white bread: same type, no type-level "complement"
    assert feature(X, "same_type_as_anchor").tolist() == [0, 1, 0]
    assert feature(X, "tcooc_count_max")[1] == 0
    assert feature(X, "cos_anchor_max")[1] == pytest.approx(0.8)
    # jam: never bought by u1, never with the anchor (NPMI -1), no query: NaN
    assert feature(X, "item_baskets")[2] == 0 and math.isnan(feature(X, "item_interval")[2])
    assert feature(X, "cooc_count_max")[2] == 0 and feature(X, "cooc_npmi_max")[2] == -1
    assert np.isnan(feature(X, "cos_query")).all()
    assert feature(X, "from_cooc").tolist() == [1, 0, 0] and feature(X, "from_similar").tolist() == [0, 1, 0]
    assert feature(X, "price_rel")[0] == pytest.approx(math.log(3.0 / u1.median_price))


def test_blend_feature_is_the_type_level_baseline_score(data):
    """``blend`` = 0.8 x the user's basket share + 0.2 x the mean type confidence with the
    anchors, the confidence going only to the type's mapped SKU (eval's type-level blend)."""
    u1 = data.history.row("u1", data.catalogue)
    ctx = RankingContext(user=u1, anchors=[data.catalogue.row_of["p1"]])
    cand = rows(data, "p2", "p5", "p3", "p4")
    X = features(data, ctx, cand, [[], [], [], []])
    # butter: u1's usual butter, in 2 of 3 baskets; BREAD->BUTTER confidence 3/5 (3 >= 3 pairs)
    assert feature(X, "type_mapped").tolist() == [1, 0, 1, 1]  # rye: not u1's usual bread; jam: its best seller
    assert feature(X, "blend")[0] == pytest.approx(0.8 * 2 / 3 + 0.2 * 3 / 5)
    assert feature(X, "blend")[1] == 0  # a substitute of the anchor, never bought by u1
    assert feature(X, "blend")[2] == 0  # BREAD and JAM together in 2 baskets only: below the minimum count
    assert feature(X, "blend")[3] == pytest.approx(0.8 * 2 / 3)  # milk: BREAD+MILK in 2 baskets
    loose = features(data, ctx, cand, [[], [], [], []], cfg(blend_min_count=1))
    assert feature(loose, "blend")[2] == pytest.approx(0.2 * 2 / 5)
    guest = features(data, RankingContext(anchors=[data.catalogue.row_of["p1"]]), cand[:1], [[]])
    assert feature(guest, "blend")[0] == pytest.approx(0.2 * 3 / 5)  # no history: the co-occurrence part only


def test_one_training_row_per_product_type(data):
    """A type-level list counts a type once: training keeps, per type, the SKU the user
    buys (white bread for u1, not rye), and every other type's one row."""
    from retrieval.ranker import _type_representatives

    u1 = data.history.row("u1", data.catalogue)
    cand = rows(data, "p5", "p1", "p2", "p3")
    X = features(data, RankingContext(user=u1, anchors=[data.catalogue.row_of["p4"]]), cand, [[]] * 4)
    kept = _type_representatives(X, data.catalogue.type_code[cand])
    assert [data.catalogue.ids[cand[i]] for i in kept] == ["p1", "p2", "p3"]


def test_guest_features_are_missing_not_zero(data):
    X = features(data, RankingContext(), rows(data, "p2"), [[]])
    assert np.isnan(feature(X, "item_baskets")).all() and np.isnan(feature(X, "cooc_count_max")).all()
    assert feature(X, "popularity")[0] == pytest.approx(1.0)  # butter is in 3 baskets, the most


def test_pool_generators_by_hand(data):
    cat = data.catalogue
    u1 = data.history.row("u1", cat)
    ctx = RankingContext(user=u1, anchors=[cat.row_of["p1"]], types=[cat.type_code_of("JAM")])
    pool = build_pool(data, ctx, cfg(cooc_min_frequent=10))
    by_id = {cat.ids[r]: g for r, g in pool.items()}
    assert "p1" not in by_id  # the anchor itself is never a candidate
    assert all(set(g) <= set(GENERATORS) and g == sorted(g, key=GENERATORS.index) for g in by_id.values())
    # repeat history, recency-weighted: milk (days 0, 14), cheese (day 14), butter (days 0, 7)
    repeat = [cat.ids[r] for r in _in_order(pool, "repeat", u1, cat)]
    assert repeat == ["p4", "p6", "p2"]
    # frequent pairs with bread (seen twice): butter and milk; too few, so the pairs seen once join
    assert {i for i, g in by_id.items() if "cooc" in g} == {"p2", "p4"}
    assert {i for i, g in by_id.items() if "cooc_once" in g} == {"p6"}
    # a role the composer asked for: the user never bought jam, so its best seller
    assert "role" in by_id["p3"]
    # type-level complements of bread, mapped to the user's usual SKU of each type
    assert {i for i, g in by_id.items() if "type_cooc" in g} >= {"p2"}


def _in_order(pool, name, user, cat) -> list[int]:
    order = np.lexsort((user.items, -user.item_stats[:, 3], -user.item_stats[:, 1]))
    return [int(r) for r in user.items[order] if int(r) in pool and name in pool[int(r)]]


def test_back_off_only_without_frequent_pairs(data):
    cat = data.catalogue
    ctx = RankingContext(anchors=[cat.row_of["p1"]])
    pool = build_pool(data, ctx, cfg(cooc_min_frequent=2))  # bread has 2 frequent pairs: no back-off
    assert not any("cooc_once" in g for g in pool.values())


def test_pool_respects_allowed_and_is_deterministic(data):
    cat = data.catalogue
    u1 = data.history.row("u1", cat)
    ctx = RankingContext(user=u1, anchors=[cat.row_of["p1"]])
    banned = cat.row_of["p4"]
    pool = build_pool(data, ctx, cfg(), allowed=lambda r: r != banned)
    assert banned not in pool and pool
    assert build_pool(data, ctx, cfg(), allowed=lambda r: r != banned) == pool


def test_popular_fills_an_empty_request(data):
    pool = build_pool(data, RankingContext(), cfg(popular_k=3))
    assert len(pool) == 3 and all(g == ["popular"] for g in pool.values())
