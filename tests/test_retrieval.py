"""Candidate retrieval on the built Complete Journey slice: filters, reasons, determinism,
the LangChain retriever, and a price-less BundleRec index."""

from __future__ import annotations

import pytest
from langchain_core.documents import Document

from assistant.constraints import mentions
from assistant.service import BundleAssistant, ServiceError
from retrieval.candidates import REASONS, CandidateRetriever, CatalogueRetriever, candidates_frame
from retrieval.config import Settings
from retrieval.schema import Constraints
from retrieval.store import where_clause

QUERIES = ("taco night for four", "pasta dinner", "fresh fruit", "breakfast", "cheese", "snacks for a party")


@pytest.fixture(scope="module")
def retriever(cj_assistant) -> CandidateRetriever:
    return cj_assistant.retriever


@pytest.fixture(scope="module")
def user1(cj_assistant):
    return cj_assistant.profile("1")


def rows(retriever, found):
    return retriever.index.catalogue.loc[[c.product_id for c in found]]


def signature(found) -> list[tuple[str, tuple[str, ...], float]]:
    return [(c.product_id, tuple(c.reasons), round(c.score, 6)) for c in found]


@pytest.mark.parametrize("query", QUERIES)
def test_max_price_is_respected(retriever, user1, query):
    found = retriever.retrieve(query, user1, (), Constraints(max_unit_price=1.5), 30)
    prices = rows(retriever, found)["price"]
    assert len(found) >= 10
    assert prices.notna().all() and (prices <= 1.5).all()


def test_budget_drops_items_that_eat_the_whole_budget(retriever):
    found = retriever.retrieve("meat for dinner", None, (), Constraints(budget=4.0), 30)
    prices = rows(retriever, found)["price"]
    assert found and (prices < 4.0).all()


@pytest.mark.parametrize("department", ["PRODUCE", "DRUG GM"])
def test_department_filter(retriever, user1, department):
    found = retriever.retrieve("fresh fruit", user1, (), Constraints(departments=[department]), 30)
    assert len(found) >= 5
    assert set(rows(retriever, found)["department"]) == {department}


def test_exclusion_words(retriever, user1):
    # without the exclusion the query is all cheese, so the filter has work to do
    plain = retriever.retrieve("cheese", None, (), Constraints(), 20)
    assert sum(mentions(t, ["cheese"]) is not None for t in rows(retriever, plain)["title"]) >= 10
    for profile in (None, user1):
        found = retriever.retrieve("cheese", profile, (), Constraints(exclude=["cheese", "milk"]), 30)
        assert len(found) >= 10
        for _, row in rows(retriever, found).iterrows():
            text = f"{row['title']} {row['category']} {row['brand']}"
            assert mentions(text, ["cheese", "milk"]) is None, text


def test_excluded_products_never_come_back(retriever):
    first = retriever.retrieve("cheese", None, (), Constraints(), 5)
    banned = [c.product_id for c in first[:3]]
    again = retriever.retrieve("cheese", None, (), Constraints(excluded_products=banned), 20)
    assert not set(banned) & {c.product_id for c in again}


def test_in_stock(retriever):
    products = retriever.index.products
    unavailable = products.loc[~products["in_stock"]]
    assert len(unavailable) >= 1
    pid, title = unavailable["product_id"].iloc[0], unavailable["title"].iloc[0]
    # the exact title of the unavailable product: it is the best semantic hit once allowed
    shown = retriever.retrieve(title, None, (), Constraints(in_stock_only=False), 10)
    assert shown[0].product_id == pid and shown[0].reason == "semantic"
    hidden = retriever.retrieve(title, None, (), Constraints(), 40)
    assert pid not in {c.product_id for c in hidden}
    assert rows(retriever, hidden)["in_stock"].all()


def test_reasons(retriever, user1):
    found = retriever.retrieve("fresh fruit", user1, (), Constraints(), 40)
    seen = {r for c in found for r in c.reasons}
    assert seen <= set(REASONS)
    # the pool's generators: the request's meaning, and this household's own history
    assert "semantic" in seen and seen & {"repeat", "profile"}
    assert all(c.reason == min(c.reasons, key=REASONS.index) for c in found)
    # a guest has no history; an empty request with no profile falls back to popular items
    guest = retriever.retrieve("fresh fruit", None, (), Constraints(), 40)
    assert not {"repeat", "profile"} & {r for c in guest for r in c.reasons}
    popular = retriever.retrieve("", None, (), Constraints(), 10)
    assert [c.reason for c in popular] == ["popular"] * 10
    pops = rows(retriever, popular)["popularity"].tolist()
    assert pops == sorted(pops, reverse=True)


def test_affinity_starts_with_the_users_usual_items(retriever, user1):
    """Half the affinity slots go to the household's own most bought items (by decayed
    weight), the rest to preference-embedding neighbours; constraints still apply."""
    usual = [pid for pid in user1.favourite_items if retriever.allowed(pid, Constraints())]
    assert len(usual) >= 5
    found = retriever.affinity(user1, Constraints(), 10)
    assert [pid for pid, _ in found[:5]] == usual[:5]
    assert len(found) == 10 and len({pid for pid, _ in found}) == 10
    assert not set(pid for pid, _ in found[5:]) & set(usual[:5])
    scores = [s for _, s in found[:5]]
    assert scores == sorted(scores, reverse=True) and all(0 < s <= 1 for s in scores)
    # an excluded usual item gives its slot to the next one
    without_first = retriever.affinity(user1, Constraints(excluded_products=[usual[0]]), 10)
    assert [pid for pid, _ in without_first[:5]] == usual[1:6]
    # and a personalised retrieval carries them as affinity candidates
    found = retriever.retrieve("", user1, (), Constraints(), 20)
    assert {c.product_id for c in found if "repeat" in c.reasons} >= set(usual[:3])


def test_anchor_comes_first_with_its_complements(retriever):
    index = retriever.index
    # the slice's most bought product has SKU-level complements (co-bought >= 3 times)
    anchor = index.products.sort_values(["popularity", "product_id"], ascending=[False, True])["product_id"].iloc[0]
    complements = {pid for pid, _ in index.copurchase.complements(anchor, k=50)}
    assert complements
    found = retriever.retrieve("", None, [anchor], Constraints(), 20)
    assert found[0].product_id == anchor and found[0].reason == "anchor"
    # co-purchase generators: SKU pairs (frequent, or seen once as a back-off) and type level
    got = {c.product_id for c in found if c.reason in {"cooc", "cooc_once", "type_cooc"}}
    assert got
    assert all(index.copurchase.items.count(anchor, pid) > 0 or pid in complements | _type_level(index, anchor)
               for pid in got)
    # an unknown anchor is ignored, not an error
    assert retriever.retrieve("", None, ["no-such-id"], Constraints(), 5)[0].reason == "popular"


def _type_level(index, anchor) -> set[str]:
    """Products of the complementary types (the type-level complement route)."""
    cop = index.copurchase
    types = {t for t, _ in cop.complement_types(cop.product_type[anchor], k=4)}
    return set(index.products.loc[index.products["product_type"].isin(types), "product_id"])


@pytest.mark.parametrize("query", QUERIES[:3])
def test_deterministic(cj_assistant, retriever, user1, query):
    constraints = Constraints(max_unit_price=4.0, exclude=["beer"])
    first = retriever.retrieve(query, user1, (), constraints, 30)
    again = retriever.retrieve(query, user1, (), constraints, 30)
    fresh = CandidateRetriever(retriever.index, cj_assistant.embedder, cj_assistant.settings.retrieval)
    assert signature(first) == signature(again) == signature(fresh.retrieve(query, user1, (), constraints, 30))
    assert len({c.product_id for c in first}) == len(first)  # no duplicates


def test_k_is_respected_and_interleaves_reasons(retriever, user1):
    found = retriever.retrieve("taco night", user1, (), Constraints(), 8)
    assert len(found) == 8 and len({c.product_id for c in found}) == 8
    # one relevance order (the ranker's), best first, ties by product id
    keys = [(-round(c.score, 9), c.product_id) for c in found]
    assert keys == sorted(keys)


def test_langchain_retriever(retriever, user1):
    lc = CatalogueRetriever(candidates=retriever, profile=user1, constraints=Constraints(max_unit_price=3.0), k=12)
    docs = lc.invoke("pasta dinner")
    assert len(docs) == 12 and all(isinstance(d, Document) for d in docs)
    catalogue = retriever.index.catalogue
    for d in docs:
        meta = d.metadata
        assert set(meta) >= {"product_id", "reason", "reasons", "score", "price", "category"}
        assert d.page_content == catalogue.at[meta["product_id"], "title"]
        assert meta["reason"] in REASONS and meta["price"] <= 3.0
    direct = retriever.retrieve("pasta dinner", user1, (), Constraints(max_unit_price=3.0), 12)
    assert [d.metadata["product_id"] for d in docs] == [c.product_id for c in direct]


def test_candidates_frame(retriever):
    found = retriever.retrieve("breakfast", None, (), Constraints(), 5)
    frame = candidates_frame(retriever.index, found)
    assert frame["product_id"].tolist() == [c.product_id for c in found]
    assert {"reason", "retrieval_score", "title", "price"} <= set(frame.columns)


def test_service_search(cj_assistant):
    hits = cj_assistant.search("taco night", user_id="1", constraints=Constraints(max_unit_price=3.0), k=7)
    assert len(hits) == 7
    for h in hits:
        assert set(h) == {"product_id", "title", "price", "department", "reason", "reasons", "score"}
        assert h["price"] <= 3.0 and h["reason"] in REASONS
    with pytest.raises(ServiceError):
        cj_assistant.search("taco night", k=0)


def test_where_clause():
    assert where_clause() is None
    assert where_clause(in_stock=True) == {"in_stock": True}
    assert where_clause(max_price=5, departments=["DELI"]) == {"$and": [
        {"price": {"$gte": 0.0}}, {"price": {"$lte": 5.0}}, {"department": {"$in": ["DELI"]}}]}


FILTERED = [
    Constraints(max_unit_price=2.0),
    Constraints(departments=["PRODUCE"]),
    Constraints(budget=6.0, departments=["GROCERY", "MEAT-PCKGD"]),
    Constraints(min_unit_price=5.0, in_stock_only=False),
]


def _where_for(c: Constraints) -> dict | None:
    max_price = min(x for x in (c.max_unit_price, c.budget) if x is not None) if (
        c.max_unit_price is not None or c.budget is not None) else None
    return where_clause(min_price=c.min_unit_price, max_price=max_price, departments=c.departments,
                        in_stock=True if c.in_stock_only else None)


@pytest.mark.parametrize("constraints", FILTERED, ids=lambda c: str(c.model_dump(exclude_defaults=True)))
@pytest.mark.parametrize("query", ["taco night", "fresh fruit", "shampoo"])
def test_nearest_matches_chromas_own_where_filter(retriever, embedder, query, constraints):
    """Search filters in Python over a wide unfiltered neighbourhood (or an exact masked
    search), not through Chroma's slow ``where``. HNSW is approximate, and its graph differs
    between builds, so both answers are held to the brute-force truth: all allowed, best
    first, and at most one of the ten missing."""
    import numpy as np

    vec = embedder.encode_one(query)
    ours = retriever.nearest(vec, constraints, 10)
    store, name = retriever.index.store, retriever.index.products_collection
    theirs = [(pid, sim) for pid, sim, _ in store.query(name, vec, 40, _where_for(constraints))
              if retriever.allowed(pid, constraints)][:10]
    products = retriever.index.products
    ok = [i for i, pid in enumerate(products["product_id"]) if retriever.allowed(str(pid), constraints)]
    sims = retriever.index.item_embeddings[ok] @ vec
    truth = {str(products["product_id"].iloc[ok[i]]) for i in np.argsort(-sims)[:10]}
    assert len(ours) == 10 and all(retriever.allowed(pid, constraints) for pid, _ in ours)
    assert [round(s, 6) for _, s in ours] == sorted((round(s, 6) for _, s in ours), reverse=True)
    assert len(truth & {pid for pid, _ in ours}) >= 9
    assert len(truth & {pid for pid, _ in theirs}) >= 9
    assert len({pid for pid, _ in ours} & {pid for pid, _ in theirs}) >= 9


def test_exact_fallback_is_a_brute_force_search_under_the_filters(retriever, embedder):

    c = Constraints(departments=["DRUG GM"], max_unit_price=3.0)
    vec = embedder.encode_one("pasta dinner")  # far from the filter: the wide query finds too few
    found = retriever._exact_nearest(vec, c, 15)
    products = retriever.index.products
    ok = [i for i, pid in enumerate(products["product_id"]) if retriever.allowed(str(pid), c)]
    sims = retriever.index.item_embeddings[ok] @ vec
    expected = sorted(zip(products["product_id"].iloc[ok].astype(str), sims), key=lambda t: (-round(float(t[1]), 6), t[0]))
    assert [pid for pid, _ in found] == [pid for pid, _ in expected[:15]]
    assert retriever.nearest(vec, c, 15) == found


# --- a catalogue without prices --------------------------------------------------------------

def test_bundlerec_index_without_prices(bundlerec_slice_dir, bundlerec_trimmed, embedder):
    assistant = BundleAssistant(Settings(data_dir=bundlerec_slice_dir, chroma_url=None), embedder=embedder)
    hits = assistant.search("camera battery charger", k=10)
    assert len(hits) == 10 and all(h["price"] is None for h in hits)
    assert hits[0]["reason"] == "semantic"
    # any price bound excludes products of unknown price, rather than guessing
    assert assistant.search("camera battery charger", constraints=Constraints(max_unit_price=100), k=10) == []
    # bundles are co-purchase evidence: items of one hand-made bundle co-occur
    import pandas as pd

    bundle_item = pd.read_csv(bundlerec_trimmed / "bundle_item.csv", dtype=str)
    first = bundle_item[bundle_item["bundle ID"] == bundle_item["bundle ID"].iloc[0]]["item ID"].tolist()
    assert assistant.index.copurchase.items.count(first[0], first[1]) >= 1
    user = sorted(pd.read_csv(bundlerec_trimmed / "user_item.csv", dtype=str)["user ID"].unique(), key=int)[0]
    profile = assistant.profile(user)
    # the stored extra tables carry the profiles' pseudonyms, never the raw ids
    from assistant.privacy import pseudonymise

    raw_users = set(pd.read_csv(bundlerec_trimmed / "user_item.csv", dtype=str)["user ID"])
    for name in ("user_item", "user_bundle", "user_session"):
        stored = set(assistant.index.extra(name)["user ID"].astype(str))
        assert stored and not stored & raw_users, name
    assert pseudonymise(user, data_dir=bundlerec_slice_dir) in set(assistant.index.extra("user_item")["user ID"])
    assert profile.top_departments and profile.median_unit_price is None
