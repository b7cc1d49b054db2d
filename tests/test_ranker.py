"""The learned item ranker on real data slices: training, determinism, no leakage, the
fallback, itemised reasons that add up, and the one relevance signal downstream."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from retrieval.config import RankerConfig, Settings
from retrieval.index import Index
from retrieval.pool import GENERATORS, RankingContext
from retrieval.ranker import (
    CARD_FILE,
    GROUPS,
    HISTORY_FILE,
    MODEL_FILE,
    ItemRanker,
    Ranker,
    _without_bundles,
    basket_queries,
    bundle_queries,
    sharpened,
    sigmoid,
    train_ranker,
)
from retrieval.schema import Constraints

# The 5-household slice has too few label baskets for the defaults (that is the fallback
# test); a longer label window and smaller leaves let it train a real model.
TRAIN_CFG = RankerConfig(min_queries=10, label_days=120, min_data_in_leaf=20, max_queries=200)


@pytest.fixture(scope="module")
def slice_index(cj_slice_dir) -> Index:
    return Index(Settings(data_dir=cj_slice_dir, chroma_url=None))


@pytest.fixture(scope="module")
def trained(cj_slice, slice_index) -> ItemRanker:
    return train_ranker(cj_slice.interactions, slice_index.products, slice_index.item_embeddings, TRAIN_CFG)


def test_too_little_data_falls_back(slice_index):
    card = json.loads((slice_index.folder / CARD_FILE).read_text())
    assert card["mode"] == "fallback" and "too little data" in card["why"]
    assert not (slice_index.folder / MODEL_FILE).exists() and (slice_index.folder / HISTORY_FILE).exists()
    assert slice_index.ranker.model.mode == "fallback"


def test_an_index_without_ranker_files_falls_back(tmp_path):
    model = ItemRanker.load(tmp_path)
    assert model.mode == "fallback" and "without a ranker" in model.card["why"]


def test_training_is_deterministic(trained, cj_slice, slice_index, tmp_path):
    assert trained.mode == "lightgbm" and trained.card["train_queries"] >= TRAIN_CFG.min_queries
    again = train_ranker(cj_slice.interactions, slice_index.products, slice_index.item_embeddings, TRAIN_CFG)
    assert again.model_bytes() == trained.model_bytes()
    # saved and loaded back: the same model file and the same ranking
    trained.save(tmp_path)
    loaded = ItemRanker.load(tmp_path)
    assert loaded.model_bytes() == trained.model_bytes()
    ranker = Ranker(loaded, slice_index.ranker.data, TRAIN_CFG)
    ctx = _context(slice_index, ranker)
    first, _ = ranker.rank(ctx)
    second, _ = Ranker(again, slice_index.ranker.data, TRAIN_CFG).rank(_context(slice_index, ranker))
    assert [(r.product_id, round(r.raw, 12)) for r in first] == [(r.product_id, round(r.raw, 12)) for r in second]
    assert len(first) >= 50


def _context(index: Index, ranker: Ranker) -> RankingContext:
    from assistant.privacy import pseudonymise

    user = sorted(index.products["product_id"])[0]  # any product as the anchor
    key = pseudonymise("1", data_dir=index.data_dir)
    return ranker.context(user_key=key, anchors=[user])


@pytest.mark.parametrize("mode", ["lightgbm", "fallback"])
def test_reasons_add_up_to_the_raw_score(mode, trained, slice_index):
    model = trained if mode == "lightgbm" else ItemRanker(None)
    ranker = Ranker(model, slice_index.ranker.data, TRAIN_CFG)
    ctx = _context(slice_index, ranker)
    ranked, X = ranker.rank(ctx, k=40)
    assert np.allclose(model.contributions(X).sum(axis=1), model.raw(X), atol=1e-9)
    ranker.explain(ctx, ranked, X)
    for item in ranked:
        assert set(item.contributions) == set(GROUPS)
        assert sum(item.contributions.values()) == pytest.approx(item.raw, abs=1e-9)
        assert 0.0 <= item.relevance <= 1.0
        assert all(r.contribution >= 0.05 and r.text for r in item.reasons)
    worded = [r.text for item in ranked for r in item.reasons]
    assert any(t.startswith(("you buy this every", "you bought this")) for t in worded)


def test_basket_split_features_come_from_the_history_only(cj_slice, slice_index):
    cfg = TRAIN_CFG
    queries, info = basket_queries(cj_slice.interactions, slice_index.products, slice_index.item_embeddings, cfg,
                                   np.random.default_rng(0))
    assert queries
    cut = info["history_until_day"]
    days = _days(cj_slice.interactions)
    history_baskets = cj_slice.interactions.loc[days <= cut, "basket_id"].nunique()
    data = queries[0].data
    assert data.costats.cop.items.n_baskets == history_baskets  # no label basket in the co-occurrence
    assert data.history.users[:, 2].max() <= cut  # nor in anyone's history
    label_baskets = set(cj_slice.interactions.loc[days > cut, "basket_id"])
    hist = cj_slice.interactions.loc[days <= cut]
    assert not label_baskets & set(hist["basket_id"])
    # popularity is recounted from the history: a product first sold in the label window has none
    late = set(cj_slice.interactions.loc[days > cut, "product_id"]) - set(hist["product_id"])
    rows = [data.catalogue.row_of[p] for p in late if p in data.catalogue.row_of]
    assert rows and not data.catalogue.popularity[rows].any() and not data.catalogue.in_stock[rows].any()


def _days(frame: pd.DataFrame) -> np.ndarray:
    from retrieval.pool import days_of

    return days_of(frame["timestamp"])


def test_ranker_never_sees_the_eval_test_weeks(cj_slice, slice_index):
    """The eval trains the ranker inside its own index of the training weeks: altering the
    test weeks must leave the model byte for byte the same."""
    from eval.protocols import CJ_TRAIN_WEEKS, cj_raw_transactions, cj_train

    raw = cj_raw_transactions(set(cj_slice.interactions["user_id"]))
    train = cj_train(cj_slice, raw)
    assert train.interactions["week"].max() <= CJ_TRAIN_WEEKS
    altered = cj_slice.interactions.copy()
    test_rows = altered["week"] > CJ_TRAIN_WEEKS
    altered.loc[test_rows, "product_id"] = altered.loc[test_rows, "product_id"].sample(frac=1.0, random_state=1).values
    from retrieval.schema import Dataset

    train2 = cj_train(Dataset(cj_slice.name, cj_slice.products, altered, cj_slice.users), raw)
    emb = slice_index.item_embeddings[slice_index.row_of[train.products["product_id"]].to_numpy()]
    a = train_ranker(train.interactions, train.products, emb, TRAIN_CFG)
    b = train_ranker(train2.interactions, train2.products, emb, TRAIN_CFG)
    assert a.mode == "lightgbm" and a.model_bytes() == b.model_bytes()


def test_bundle_split_holds_out_bundles_sessions_and_derived_rows(bundlerec_trimmed):
    from retrieval.sources import load_source

    ds = load_source("bundlerec", bundlerec_trimmed)
    bi = ds.extras["bundle_item"]
    held = set(sorted(bi["bundle ID"].astype(str).unique(), key=int)[::3])
    hist, rest = _without_bundles(ds.interactions, ds.extras, held)
    assert not set(rest["bundle_item"]["bundle ID"].astype(str)) & held
    sb = ds.extras["session_bundle"]
    sessions = {"s" + s for s in sb.loc[sb["bundle ID"].astype(str).isin(held), "session ID"].astype(str)}
    assert sessions and not sessions & set(hist["basket_id"].astype(str))
    ub = ds.extras["user_bundle"]
    derived = ub[ub["bundle ID"].astype(str).isin(held)].merge(bi, on="bundle ID")
    day = pd.to_numeric(derived["timestamp"]) // 86400
    keys = pd.Series(list(zip("u" + derived["user ID"].astype(str) + "-d" + day.astype(int).astype(str),
                              derived["item ID"].astype(str)))).value_counts()

    def copies(frame: pd.DataFrame) -> pd.Series:
        bought = frame[frame["event"] == "purchase"]
        return pd.Series(list(zip(bought["basket_id"].astype(str), bought["product_id"].astype(str)))).value_counts()

    before, after = copies(ds.interactions), copies(hist)
    assert len(keys)
    for key, n in keys.items():  # a multiset difference: a duplicate bundle's own rows stay
        assert after.get(key, 0) == max(before.get(key, 0) - n, 0)
    # and every query asks for an item of a held-out bundle, from data without it
    cfg = RankerConfig(bundle_folds=3)
    queries, info = bundle_queries(ds.interactions, ds.extras, ds.products, np.zeros((len(ds.products), 8),
                                   dtype=np.float32), cfg, np.random.default_rng(0))
    assert queries and info["folds"] == 3
    bundles = bi.groupby(bi["bundle ID"].astype(str))["item ID"].agg(lambda g: set(g.astype(str)))
    for q in queries:
        ids = q.data.catalogue.ids
        asked = {ids[r] for r in q.ctx.anchors} | {ids[r] for r in q.targets}
        assert asked == bundles[q.group] and len(q.targets) == 1  # leave one item of a training bundle out
        # the query's own bundle is not among the bundles its co-occurrence was counted from
        pairs = q.data.costats.cop.items
        a, t = ids[q.ctx.anchors[0]], ids[next(iter(q.targets))]
        others = sum({a, t} <= items for b, items in bundles.items() if b != q.group)
        baskets = ds.interactions.groupby("basket_id")["product_id"].agg(set)
        assert pairs.count(a, t) <= others + sum({a, t} <= s for s in baskets)
        break


def test_retrieve_orders_the_pool_by_relevance(cj_assistant):
    retriever = cj_assistant.retriever
    user = cj_assistant.profile("1")
    anchor = user.favourite_items[0]
    found = retriever.retrieve("", user, [anchor], Constraints(), 40)
    assert found[0].product_id == anchor and found[0].reasons == ["anchor"]
    rest = found[1:]
    assert len(rest) == 39 and all(set(c.reasons) <= set(GENERATORS) for c in rest)
    scores = [c.score for c in rest]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    explained = [c for c in rest if c.contributions]
    assert len(explained) == retriever.index.ranker.cfg.explain_k
    assert all(sum(c.contributions.values()) == pytest.approx(c.raw, abs=1e-9) for c in explained)
    assert any(c.why for c in explained)
    # a role a composer asks for brings that type's best products into the pool
    kinds = retriever.index.products.set_index("product_id")["product_type"]
    others = kinds[~kinds.index.isin([c.product_id for c in found]) & (kinds != "")]
    wanted = others.value_counts().index[0]
    with_role = retriever.retrieve("", user, [anchor], Constraints(), 400, types=[wanted])
    assert any("role" in c.reasons and kinds[c.product_id] == wanted for c in with_role)


def test_relevance_reaches_the_bundles_and_the_json(cj_assistant):
    user = cj_assistant.profile("1")
    anchor = user.favourite_items[0]
    rec = cj_assistant.recommend(user_id="1", anchors=[anchor], k=5, use_llm=False)
    assert rec.bundles and all("why" in c and "reasons" in c for c in rec.candidates)
    relevance = {c["product_id"]: c["score"] for c in rec.candidates if c["reason"] != "anchor"}
    top = rec.bundles[0]
    added = [i for i in top.item_ids if i != anchor]
    pref = top.score_breakdown["preference"].value
    temperature = cj_assistant.settings.objective.relevance_temperature  # how sharply it enters the objective
    assert pref == pytest.approx(np.mean([sharpened(relevance[i], temperature) for i in added]), abs=1e-3)
    assert any(top.item_reasons.values())
    dumped = json.loads(rec.model_dump_json())
    assert "item_reasons" in dumped["bundles"][0]


def test_rule_bundles_walk_down_the_relevance_list(cj_assistant):
    from assistant.proposer import propose_with_rules
    from retrieval.candidates import Candidate

    catalogue = cj_assistant.index.catalogue
    by_type = catalogue.drop_duplicates("product_type")
    ids = by_type["product_id"].head(8).tolist()
    cands = [Candidate(ids[0], 1.0, ["anchor"])] + [Candidate(p, 0.9 - 0.01 * i, ["repeat"]) for i, p in
                                                      enumerate(ids[1:])]
    bundles = propose_with_rules(cands, catalogue, lambda a, b: 0.0, lambda p: True, constraints=Constraints(),
                                 n_bundles=3, size=3)
    assert [b.item_ids for b in bundles] == [(ids[0], ids[1], ids[2]), (ids[0], ids[3], ids[4]),
                                             (ids[0], ids[5], ids[6])]
    # a product an earlier bundle holds counts half: far ahead of the rest, it comes back
    cands[1] = Candidate(ids[1], 0.99, ["repeat"])
    cands[6] = Candidate(ids[6], 0.2, ["repeat"])
    cands[7] = Candidate(ids[7], 0.1, ["repeat"])
    third = propose_with_rules(cands, catalogue, lambda a, b: 0.0, lambda p: True, constraints=Constraints(),
                               n_bundles=3, size=3)[2]
    assert third.item_ids == (ids[0], ids[5], ids[1])


def test_sharpened_relevance_divides_the_raw_score_and_keeps_the_order() -> None:
    raws = [-3.0, -0.4, 0.0, 0.7, 2.5]
    rel = [float(sigmoid(r)) for r in raws]
    assert [sharpened(p, 1.0) for p in rel] == rel  # T = 1: the plain sigmoid, untouched
    for t in (0.25, 0.5, 2.0):
        got = [sharpened(p, t) for p in rel]
        assert got == pytest.approx([float(sigmoid(r / t)) for r in raws], rel=1e-9)
        assert got == sorted(got)  # a monotone map: the ranker's order is kept
    assert sharpened(0.9, 0.5) > 0.9 > sharpened(0.9, 2.0)  # below 1 spreads, above 1 squeezes
    assert 0.0 < sharpened(0.0, 0.5) < 1e-6 and sharpened(1.0, 0.5) > 1 - 1e-6  # clipped ends stay finite


def test_a_completion_reads_as_a_slate_with_its_repeats_itemised(cj_assistant):
    from assistant.reranker import ComponentScore
    from assistant.ui.render import breakdown_html

    user = cj_assistant.profile("1")
    anchor = user.favourite_items[0]
    rec = cj_assistant.recommend(user_id="1", anchors=[anchor], k=6, use_llm=False)
    assert len(rec.bundles) >= 2
    shown: set[str] = set()
    for b in rec.bundles:  # the term is the share of what it adds that a bundle above already shows
        added = [i for i in b.item_ids if i != anchor]
        assert b.score_breakdown["repeats"].value == pytest.approx(sum(i in shown for i in added) / len(added))
        assert b.score == pytest.approx(sum(t.contribution for t in b.score_breakdown.values()), abs=1e-5)
        shown.update(added)
    first = rec.bundles[0]
    assert first.score_breakdown["repeats"].value == 0 and "Shown above" not in breakdown_html(first)
    repeated = first.model_copy(update={"score_breakdown": {
        **first.score_breakdown, "repeats": ComponentScore(value=0.5, weight=0.4, contribution=-0.2)}})
    assert "Shown above" in breakdown_html(repeated)
