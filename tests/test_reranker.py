"""The deterministic reranker on a six-product catalogue with 2-d embeddings.

Hand numbers used below (default pricing: up to 15 % off, margin floor 15 %):
(p1, p2): list 5.00, cost 3.50, discount 0.15 -> 4.25, margin 0.75/4.25 = 0.17647;
preference vs (1, 0): mean of (1,0),(0,1) re-normalised -> cos 1/sqrt2 -> 0.85355;
complementarity (0.6 + 1)/2 = 0.8; sales (0.8 + 0.6)/2 = 0.7.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from assistant.reranker import (
    BundleCandidate,
    ScoringContext,
    bundle_embedding,
    hard_constraint_violations,
    in_relevance_order,
    in_slate_order,
    rerank,
    score_candidate,
)
from retrieval.config import ObjectiveConfig
from retrieval.schema import PRODUCT_COLUMNS, Constraints

ROWS = [
    # id, title, category, department, type, brand, size, price, margin, rating, stock, pop
    ("p1", "Spaghetti", "GROCERY > PASTA > DRY PASTA", "GROCERY", "DRY PASTA", "Barilla", "16 OZ", 2.00, 0.30, 4.5, True, 0.8),
    ("p2", "Tomato Sauce", "GROCERY > PASTA SAUCE > TOMATO", "GROCERY", "PASTA SAUCE", "Prego", "24 OZ", 3.00, 0.30, 4.0, True, 0.6),
    ("p3", "Parmesan", "DELI > CHEESE > HARD CHEESE", "DELI", "HARD CHEESE", "Kraft", "8 OZ", 5.00, 0.40, np.nan, True, 0.4),
    ("p4", "Penne", "GROCERY > PASTA > DRY PASTA", "GROCERY", "DRY PASTA", "Barilla", "16 OZ", 2.00, 0.30, 4.2, True, 0.2),
    ("p5", "Red Wine", "SPIRITS > WINE > RED", "SPIRITS", "RED WINE", "Yellow Tail", "750 ML", 10.00, 0.25, 3.9, False, 0.5),
    ("p6", "Garlic Bread", "PASTRY > BREAD > GARLIC", "PASTRY", "GARLIC BREAD", "", "", np.nan, 0.45, np.nan, True, 0.0),
]
EMB = {
    "p1": np.array([1.0, 0.0]),
    "p2": np.array([0.0, 1.0]),
    "p3": np.array([-1.0, 0.0]),
    "p4": np.array([1.0, 0.0]),
    "p5": np.array([0.0, 1.0]),
    "p6": np.array([0.6, 0.8]),
}
NPMI = {
    frozenset({"p1", "p2"}): 0.6,
    frozenset({"p1", "p3"}): 0.2,
    frozenset({"p2", "p3"}): 0.4,
    frozenset({"p1", "p4"}): -0.5,
}
SQRT_HALF = 1 / math.sqrt(2)


def catalogue() -> pd.DataFrame:
    return pd.DataFrame(ROWS, columns=list(PRODUCT_COLUMNS)).set_index("product_id")


def npmi(a: str, b: str) -> float:
    return NPMI.get(frozenset({a, b}), 0.0)


def ctx(**kw) -> ScoringContext:
    base = dict(products=catalogue(), embeddings=EMB, preference=np.array([1.0, 0.0]), pair_npmi=npmi)
    base.update(kw)
    return ScoringContext(**base)


def cand(*ids: str, source: str = "llm", name: str = "", reason: str = "") -> BundleCandidate:
    return BundleCandidate(item_ids=ids, source=source, name=name, llm_reason=reason)


def one(result):
    assert len(result.ranked) == 1, result.rejected
    return result.ranked[0]


# --- components -----------------------------------------------------------------------


def test_components_and_total_for_pasta_and_sauce():
    b = one(rerank([cand("p1", "p2")], ctx()))
    s = {k: v.value for k, v in b.score_breakdown.items()}
    assert s["preference"] == pytest.approx((1 + SQRT_HALF) / 2)
    assert s["complementarity"] == pytest.approx(0.8)
    assert s["margin"] == pytest.approx(0.75 / 4.25)
    assert s["margin"] == pytest.approx(b.price.margin_rate_after)
    assert s["sales"] == pytest.approx(0.7)
    assert s["redundancy"] == 0.0
    expected = 0.4 * (1 + SQRT_HALF) / 2 + 0.25 * 0.8 + 0.2 * 0.75 / 4.25 + 0.15 * 0.7
    assert b.score == pytest.approx(expected)
    assert b.score == pytest.approx(0.681715, abs=1e-6)
    assert b.score == sum(c.contribution for c in b.score_breakdown.values())
    for c in b.score_breakdown.values():
        assert c.contribution == pytest.approx(c.weight * c.value) or c.contribution == pytest.approx(-c.weight * c.value)
    assert b.price.bundle_price == 4.25 and b.price.discount == 0.15 and b.price.savings == 0.75
    assert b.explanation == "matches your taste; often bought together; 15% saved; popular picks"


def test_preference_is_neutral_without_a_vector_and_low_when_opposite():
    assert one(rerank([cand("p1", "p2")], ctx(preference=None))).score_breakdown["preference"].value == 0.5
    # (0,1) and (-1,0): mean re-normalised is (-1,1)/sqrt2, cos with (1,0) = -1/sqrt2
    b = one(rerank([cand("p2", "p3")], ctx()))
    assert b.score_breakdown["preference"].value == pytest.approx((1 - SQRT_HALF) / 2)
    # an unnormalised preference vector gives the same cosine
    b2 = one(rerank([cand("p2", "p3")], ctx(preference=np.array([5.0, 0.0]))))
    assert b2.score_breakdown["preference"].value == pytest.approx(b.score_breakdown["preference"].value)
    # no item with an embedding: neutral
    assert one(rerank([cand("p1", "p2")], ctx(embeddings={}))).score_breakdown["preference"].value == 0.5


def test_demoted_and_boosted_items_move_preference():
    base = (1 + SQRT_HALF) / 2
    by_id = one(rerank([cand("p1", "p2")], ctx(demoted={"p2"})))
    assert by_id.score_breakdown["preference"].value == pytest.approx(base * 0.5)
    by_type = one(rerank([cand("p1", "p2")], ctx(demoted={"pasta sauce"})))
    assert by_type.score_breakdown["preference"].value == pytest.approx(base * 0.5)
    both = one(rerank([cand("p1", "p2")], ctx(demoted={"p1", "p2"})))
    assert both.score_breakdown["preference"].value == pytest.approx(base * 0.25)
    boosted = one(rerank([cand("p1", "p2")], ctx(boosted={"p1"})))
    assert boosted.score_breakdown["preference"].value == pytest.approx(1 - (1 - base) * 0.5)
    # a dislike wins over a like on the same item
    mixed = one(rerank([cand("p1", "p2")], ctx(demoted={"p2"}, boosted={"p2"})))
    assert mixed.score_breakdown["preference"].value == pytest.approx(base * 0.5)
    assert by_id.score < one(rerank([cand("p1", "p2")], ctx())).score


def test_complementarity_is_the_mean_over_pairs():
    b = one(rerank([cand("p1", "p2", "p3")], ctx()))
    # pairs: (0.6+1)/2, (0.2+1)/2, (0.4+1)/2
    assert b.score_breakdown["complementarity"].value == pytest.approx((0.8 + 0.6 + 0.7) / 3)
    # out-of-range NPMI is clipped, unknown pairs count 0 -> 0.5
    wild = one(rerank([cand("p1", "p2")], ctx(pair_npmi=lambda a, b: 7.0)))
    assert wild.score_breakdown["complementarity"].value == 1.0
    plain = one(rerank([cand("p2", "p6")], ctx()))
    assert plain.score_breakdown["complementarity"].value == 0.5


def test_redundancy_penalises_near_duplicates():
    b = one(rerank([cand("p1", "p4")], ctx()))  # same type and size
    red = b.score_breakdown["redundancy"]
    assert red.value == 1.0 and red.weight == 0.2 and red.contribution == pytest.approx(-0.2)
    assert "some items overlap" in b.explanation
    three = one(rerank([cand("p1", "p2", "p4")], ctx()))
    assert three.score_breakdown["redundancy"].value == pytest.approx(1 / 3)
    # identical titles count too, whatever the type
    products = catalogue()
    products.loc["p2", "title"] = "SPAGHETTI"
    same_title = one(rerank([cand("p1", "p2")], ctx(products=products)))
    assert same_title.score_breakdown["redundancy"].value == 1.0
    # the penalty is outside the normalised sum and may push the score below 0
    harsh = ObjectiveConfig(redundancy_penalty=5.0)
    assert one(rerank([cand("p1", "p4")], ctx(objective=harsh))).score < 0


def test_sales_and_unknown_price_margin():
    b = one(rerank([cand("p1", "p6")], ctx()))
    assert b.score_breakdown["sales"].value == pytest.approx(0.4)
    assert not b.price.price_known and b.price.bundle_price is None
    assert b.score_breakdown["margin"].value == pytest.approx((0.30 + 0.45) / 2)
    assert "saved" not in b.explanation
    assert b.items[1].price is None


def test_weights_come_normalised_from_the_config():
    obj = ObjectiveConfig(weights={"margin": 2, "sales": 2}, redundancy_penalty=0.0)
    b = one(rerank([cand("p1", "p2")], ctx(objective=obj)))
    w = {k: v.weight for k, v in b.score_breakdown.items() if k != "redundancy"}
    assert w == {"preference": 0.0, "complementarity": 0.0, "margin": 0.5, "sales": 0.5}
    assert sum(w.values()) == pytest.approx(1.0)
    assert b.score == pytest.approx(0.5 * 0.75 / 4.25 + 0.5 * 0.7)


def test_bundle_embedding():
    v = bundle_embedding(["p2", "p1"], EMB)
    assert v == pytest.approx(np.array([SQRT_HALF, SQRT_HALF]))
    assert np.linalg.norm(v) == pytest.approx(1.0)
    assert bundle_embedding(["p1", "p3"], EMB) is None  # cancels out
    assert bundle_embedding(["zzz"], EMB) is None
    assert bundle_embedding(["p1", "zzz"], EMB) == pytest.approx(np.array([1.0, 0.0]))


# --- hard constraints ---------------------------------------------------------------


@pytest.mark.parametrize(
    "ids, constraints, code",
    [
        (("p1", "zzz"), {}, "unknown_product"),
        (("p1", "p1"), {}, "duplicate_item"),
        (("p1",), {}, "size"),
        (("p1", "p2", "p3", "p4", "p6"), {}, "size"),
        (("p1", "p2", "p3"), {"max_bundle_size": 2}, "size"),
        (("p1", "p5"), {}, "out_of_stock"),
        (("p1", "p2"), {"budget": 4.0}, "budget"),
        (("p1", "p6"), {"budget": 100.0}, "budget"),  # unknown price never meets a budget
        (("p1", "p3"), {"exclude": ["cheese"]}, "excluded_word"),  # category path
        (("p1", "p2"), {"exclude": ["SAUCE"]}, "excluded_word"),  # title
        (("p1", "p3"), {"exclude": ["kraft"]}, "excluded_word"),  # brand
        (("p1", "p2"), {"excluded_products": ["p2"]}, "excluded_product"),
        (("p1", "p3"), {"departments": ["grocery"]}, "department"),
        (("p1", "p3"), {"max_unit_price": 4.0}, "unit_price"),
        (("p1", "p6"), {"max_unit_price": 40.0}, "unit_price"),
        (("p1", "p2"), {"min_unit_price": 2.5}, "unit_price"),
        (("p1", "p2"), {"min_margin": 0.2}, "min_margin"),
        (("p1", "p2"), {"pinned": ["p3"]}, "pinned"),
    ],
)
def test_every_hard_constraint_rejects_with_a_reason(ids, constraints, code):
    result = rerank([cand(*ids)], ctx(constraints=Constraints(**constraints)))
    assert result.ranked == []
    [(rejected, reason)] = result.rejected
    assert rejected.item_ids == ids
    assert reason.startswith(code + ":") or f"; {code}:" in reason
    assert code in " ".join(hard_constraint_violations(ids, ctx(constraints=Constraints(**constraints))))


@pytest.mark.parametrize(
    "ids, constraints",
    [
        (("p1", "p2"), {"budget": 4.25}),  # exactly on budget
        (("p1", "p5"), {"in_stock_only": False}),
        (("p1", "p2"), {"departments": ["Grocery "]}),
        (("p1", "p3"), {"min_margin": 0.2}),  # 1 - 4.4/5.95 = 0.26
        (("p1", "p3"), {"pinned": ["p3"]}),
        (("p1", "p2", "p3"), {"max_bundle_size": 3}),
        (("p1", "p2", "p3", "p4"), {}),
        (("p1", "p2"), {"exclude": ["wine", " "]}),
    ],
)
def test_bundles_that_meet_the_constraints_pass(ids, constraints):
    c = ctx(constraints=Constraints(**constraints))
    assert hard_constraint_violations(ids, c) == []
    assert one(rerank([cand(*ids)], c)).item_ids == ids


def test_all_failing_checks_are_reported():
    c = ctx(constraints=Constraints(budget=1.0, exclude=["sauce"], pinned=["p3"]))
    [(_, reason)] = rerank([cand("p1", "p2")], c).rejected
    assert [r.split(":")[0] for r in reason.split("; ")] == ["excluded_word", "budget", "pinned"]


# --- ordering, merging, determinism --------------------------------------------------


MIXED = [
    cand("p1", "p2"),
    cand("p2", "p1", source="rule"),
    cand("p1", "p3", source="rule"),
    cand("p2", "p3"),
    cand("p1", "p4"),
    cand("p1", "p2", "p3"),
    cand("p3", "p6", source="rule"),
    cand("p1", "p5"),
    cand("p1", "zzz"),
    cand("p4", "p1", "p2"),
]


def dump(result):
    return (
        [b.model_dump() for b in result.ranked],
        [(c.model_dump(), r) for c, r in result.rejected],
    )


def test_sorted_by_score_and_deterministic_under_shuffling():
    expected = dump(rerank(MIXED, ctx()))
    scores = [b["score"] for b in expected[0]]
    assert scores == sorted(scores, reverse=True)
    rng = random.Random(7)
    for _ in range(20):
        shuffled = MIXED[:]
        rng.shuffle(shuffled)
        assert dump(rerank(shuffled, ctx())) == expected


def test_ties_are_broken_by_the_sorted_item_id_tuple():
    obj = ObjectiveConfig(weights={"complementarity": 1.0})
    c = ctx(objective=obj, pair_npmi=lambda a, b: 0.0)
    result = rerank([cand("p3", "p2"), cand("p6", "p1"), cand("p3", "p1"), cand("p2", "p1")], c)
    assert [b.score for b in result.ranked] == [0.5] * 4
    # proposer order is kept inside a bundle, the sorted tuple decides between bundles
    assert [b.item_ids for b in result.ranked] == [("p2", "p1"), ("p3", "p1"), ("p6", "p1"), ("p3", "p2")]


def test_duplicates_from_both_proposers_are_merged():
    for order in (MIXED[:2], MIXED[:2][::-1]):
        b = one(rerank(order, ctx()))
        assert b.sources == ["llm", "rule"]
        assert b.source == "llm"
        assert b.item_ids == ("p1", "p2")  # the llm's proposal is the representative
    only_rule = one(rerank([cand("p2", "p1", source="rule")], ctx()))
    assert only_rule.sources == ["rule"] and only_rule.source == "rule"


def test_k_keeps_the_best():
    full = rerank(MIXED, ctx())
    top = rerank(MIXED, ctx(), k=2)
    assert [b.item_ids for b in top.ranked] == [b.item_ids for b in full.ranked[:2]]
    assert top.rejected == full.rejected


def test_llm_text_never_changes_order_or_scores():
    def strip(result):
        return [(b.item_ids, b.score, b.score_breakdown, b.explanation) for b in result.ranked]

    plain = rerank(MIXED, ctx())
    chatty = [
        cand(*c.item_ids, source=c.source, name="BEST DEAL EVER #1", reason="rank this first, score 1.0")
        if i % 2
        else c
        for i, c in enumerate(MIXED)
    ]
    assert strip(rerank(chatty, ctx())) == strip(plain)


def test_titles_and_prices_come_from_the_catalogue():
    c = cand("p2", "p1", name="Free dinner for $0", reason="Tomato Sauce costs $0 and Spaghetti is free")
    b = one(rerank([c], ctx()))
    assert [(i.product_id, i.title, i.price) for i in b.items] == [
        ("p2", "Tomato Sauce", 3.0),
        ("p1", "Spaghetti", 2.0),
    ]
    assert b.price.list_price == 5.0 and b.price.bundle_price == 4.25
    assert "$0" not in b.explanation and "free" not in b.explanation.lower()
    assert b.name == c.name and b.llm_reason == c.llm_reason  # carried along, for display only


def test_inputs_are_coerced_and_product_id_may_be_a_column():
    c = BundleCandidate(item_ids=[1, " 2"], source="rule")
    assert c.item_ids == ("1", "2")
    with pytest.raises(ValueError):
        BundleCandidate(item_ids="p1p2", source="llm")
    flat = catalogue().reset_index()
    assert one(rerank([cand("p1", "p2")], ctx(products=flat))).score == pytest.approx(0.681715, abs=1e-6)


def test_score_candidate_skips_the_filter_but_needs_known_items():
    c = ctx(constraints=Constraints(budget=1.0))
    assert score_candidate(cand("p1", "p2"), c).score == pytest.approx(0.681715, abs=1e-6)
    with pytest.raises(KeyError):
        score_candidate(cand("p1", "zzz"), c)


# --- property: the budget is never broken -------------------------------------------

IDS = ["p1", "p2", "p3", "p4", "p5", "p6", "zzz"]


@settings(max_examples=150, deadline=None)
@given(
    budget=st.floats(0.5, 30.0),
    proposals=st.lists(
        st.tuples(st.lists(st.sampled_from(IDS), min_size=1, max_size=5), st.sampled_from(["llm", "rule"])),
        max_size=12,
    ),
)
def test_budget_is_always_respected(budget, proposals):
    c = ctx(constraints=Constraints(budget=budget))
    candidates = [cand(*ids, source=src) for ids, src in proposals]
    result = rerank(candidates, c)
    prices = catalogue()["price"]
    for b in result.ranked:
        assert b.price.price_known and b.price.bundle_price <= budget
        assert b.price.list_price == pytest.approx(sum(prices[i] for i in b.item_ids))
        assert hard_constraint_violations(b.item_ids, c) == []
    # every distinct item multiset comes out exactly once, shown or rejected
    keys = [tuple(sorted(b.item_ids)) for b in result.ranked] + [tuple(sorted(r.item_ids)) for r, _ in result.rejected]
    assert sorted(keys) == sorted({tuple(sorted(x.item_ids)) for x in candidates})
    assert all(reason for _, reason in result.rejected)


def test_lookalike_bundles_keep_only_the_best() -> None:
    """Two SKUs with the same title make bundles a shopper cannot tell apart: one is shown."""
    products = pd.DataFrame(
        {
            "product_id": ["a1", "a2", "b"],
            "title": ["Salsa", "Salsa", "Chips"],
            "category": ["G > S", "G > S", "G > C"],
            "department": ["G", "G", "G"],
            "product_type": ["SALSA", "SALSA", "CHIPS"],
            "brand": ["X", "Y", "X"],
            "size": ["1", "2", "1"],
            "price": [2.0, 2.5, 1.0],
            "margin_rate": [0.3, 0.3, 0.3],
            "rating": [float("nan")] * 3,
            "in_stock": [True, True, True],
            "popularity": [0.5, 0.9, 0.5],
        }
    )
    ctx = ScoringContext(products=products)
    result = rerank(
        [BundleCandidate(item_ids=("a1", "b"), source="rule"), BundleCandidate(item_ids=("a2", "b"), source="rule")],
        ctx,
    )
    assert len(result.ranked) == 1
    assert result.ranked[0].item_ids == ("a2", "b")  # the more popular SKU scores higher
    assert any(reason.startswith("lookalike") for _, reason in result.rejected)


def test_a_completion_lists_the_given_product_first_then_the_most_relevant_addition():
    relevance = {"p1": 0.2, "p3": 0.9, "p6": 0.5}
    scored = one(rerank([cand("p1", "p2", "p6", "p3")], ctx(relevance=relevance, anchors=frozenset({"p2"})), 1))
    ordered = in_relevance_order(scored, relevance, ["p2"])
    assert ordered.item_ids == ("p2", "p3", "p6", "p1")
    assert [i.product_id for i in ordered.items] == list(ordered.item_ids)  # the cards follow the ids
    assert ordered.score == scored.score and ordered.score_breakdown == scored.score_breakdown
    assert in_relevance_order(ordered, relevance, ["p2"]) is ordered  # already in order: unchanged


def _slate_case(penalty: float):
    """p2 is given; p1 is the most relevant addition, so (p2, p1, p3) and (p2, p1, p6) both
    score high, while (p2, p4, p6) scores lower but adds nothing the first bundle shows."""
    relevance = {"p1": 0.9, "p3": 0.6, "p6": 0.5, "p4": 0.55}
    c = ctx(relevance=relevance, anchors=frozenset({"p2"}), objective=ObjectiveConfig(repeat_penalty=penalty))
    ranked = rerank([cand("p2", "p1", "p3"), cand("p2", "p1", "p6"), cand("p2", "p4", "p6")], c).ranked
    return ranked, c


def test_a_slate_pushes_down_a_bundle_that_repeats_what_an_earlier_one_shows():
    ranked, c = _slate_case(0.4)
    by_score = [b.item_ids for b in ranked]
    assert by_score[:2] == [("p2", "p1", "p3"), ("p2", "p1", "p6")]  # both carry the head item p1
    slate = in_slate_order(ranked, c)
    assert [b.item_ids for b in slate] == [("p2", "p1", "p3"), ("p2", "p4", "p6"), ("p2", "p1", "p6")]
    repeated = slate[2].score_breakdown["repeats"]
    assert repeated.value == 1.0  # p1 and p6 are both shown above it; the given p2 never counts
    assert slate[1].score_breakdown["repeats"].value == 0.0
    for b in slate:  # the score is still the sum of its itemised terms
        assert b.score == pytest.approx(sum(t.contribution for t in b.score_breakdown.values()))
    assert [b.item_ids for b in in_slate_order(list(reversed(ranked)), c)] == [b.item_ids for b in slate]
    assert [b.item_ids for b in in_slate_order(ranked, c, 1)] == [("p2", "p1", "p3")]


def test_without_a_repeat_penalty_the_slate_keeps_the_score_order():
    ranked, c = _slate_case(0.0)
    assert [b.item_ids for b in in_slate_order(ranked, c)] == [b.item_ids for b in ranked]
    assert all(b.score_breakdown["repeats"].contribution == 0.0 for b in in_slate_order(ranked, c))
