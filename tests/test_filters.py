"""retrieval/filters.py is the one owner of hard constraints: its vectorised mask, its
per-product reasons, retrieval's ``allowed`` and the reranker's item check give the same
verdicts on 1,000 random (real product, constraints) pairs."""

from __future__ import annotations

import random
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, subprocess_env

from assistant import reranker
from retrieval import filters
from retrieval.schema import Constraints

WORDS = ["cheese", "chicken", "milk", "ham", "bread", "soda", "sauce", "beef", "national", "private", "organic",
         "dairy", "nuts", "fish", "gluten", "pork", "egg", "sugar", "alcohol", "meat", "ice cream", "peanut butter",
         "frzn", "chips", " ", "tree nuts"]


def _random_constraints(rng: random.Random, products: pd.DataFrame) -> Constraints:
    prices = products["price"].dropna()
    departments = sorted(products["department"].dropna().unique())

    def maybe(p: float) -> bool:
        return rng.random() < p

    def price() -> float:
        return round(float(prices.sample(1, random_state=rng.randrange(10**6)).iloc[0]) * rng.uniform(0.5, 2.0), 2)

    return Constraints(
        budget=price() if maybe(0.3) else None,
        max_unit_price=price() if maybe(0.2) else None,
        min_unit_price=price() if maybe(0.1) else None,
        exclude=rng.sample(WORDS, rng.randint(1, 3)) if maybe(0.4) else [],
        departments=[rng.choice([d, d.lower(), f" {d.title()} "]) for d in rng.sample(departments, 2)] if maybe(0.2)
        else [],
        in_stock_only=maybe(0.8),
        excluded_products=list(products["product_id"].sample(3, random_state=rng.randrange(10**6))) if maybe(0.1)
        else [],
        diets=rng.sample(list(filters.known_diets()), rng.randint(1, 2)) if maybe(0.4) else [],
        food=rng.choice([None, True, False]) if maybe(0.5) else None,
    )


def _pairs(products: pd.DataFrame, n: int = 1000, seed: int = 0) -> list[tuple[int, Constraints]]:
    rng = random.Random(seed)
    pool = [_random_constraints(rng, products) for _ in range(60)]  # shared, so the column caches get used
    return [(rng.randrange(len(products)), rng.choice(pool)) for _ in range(n)]


@pytest.fixture(scope="module")
def products(cj_slice) -> pd.DataFrame:
    """The real products of the Complete Journey slice (prices, stock, some unpriced)."""
    return cj_slice.products.reset_index(drop=True)


def test_mask_and_violations_agree_on_1000_random_pairs(products):
    for i, c in _pairs(products):
        row = products.iloc[i]
        reasons = filters.violations(row, c)
        assert bool(filters.mask(products, c)[i]) == (not reasons), (row["title"], c, reasons)
        assert filters.for_catalogue(products).allowed(str(row["product_id"]), c) == (not reasons)


def test_retrieval_and_the_reranker_give_the_same_verdicts_on_1000_random_pairs(cj_assistant):
    """Issue 16's check: the retriever's ``allowed`` (and the exact search's mask) and the
    reranker's item check are the same function. The one documented difference: the
    reranker leaves the per-item budget to its exact, discounted bundle-price check."""
    retriever = cj_assistant.retriever
    catalogue = retriever.index.products.reset_index(drop=True)
    ctx = reranker.ScoringContext(products=catalogue.copy())
    mask_of: dict[int, np.ndarray] = {}
    for i, c in _pairs(catalogue, seed=1):
        pid = str(catalogue["product_id"].iloc[i])
        item = reranker._lookup([pid], ctx.products)[pid]
        ranked = reranker._item_violations(item, c)
        assert ranked == filters.violations(item, c, item_budget=False)
        price = item.price
        fits_budget = c.budget is None or (price is not None and price < c.budget)
        allowed = retriever.allowed(pid, c)
        assert allowed == (not ranked and fits_budget), (pid, c, ranked)
        mask = mask_of.setdefault(id(c), retriever._metadata_mask(c))
        assert bool(mask[i]) == allowed


def test_reasons_name_the_rule_and_the_evidence(products):
    cheese = products[products["category"].str.contains("> CHEESE >", regex=False)].iloc[0]
    [reason] = filters.violations(cheese, Constraints(diets=["vegan"], in_stock_only=False))
    assert reason.startswith(f"diet: {cheese['product_id']} ") and "is not vegan" in reason and "dairy" in reason
    [reason] = filters.violations(cheese, Constraints(exclude=["cheese"], in_stock_only=False))
    assert reason.startswith("excluded_word:") and "cheese" in reason
    priced = products[products["price"].notna()].iloc[0]
    [reason] = filters.violations(priced, Constraints(budget=float(priced["price"]), in_stock_only=False))
    assert reason.startswith("item_budget:")
    assert filters.violations(priced, Constraints(budget=float(priced["price"])), item_budget=False) == [] or \
        not priced["in_stock"]


def test_the_reranker_rejects_a_bundle_that_breaks_a_diet(products):
    cheese = products[products["category"].str.contains("> CHEESE >", regex=False) & products["in_stock"]].iloc[0]
    beans = products[products["category"].str.contains("BEANS", regex=False) & products["in_stock"]].iloc[0]
    ctx = reranker.ScoringContext(products=products.copy(), constraints=Constraints(diets=["vegan"]))
    ids = (str(cheese["product_id"]), str(beans["product_id"]))
    [(_, reason)] = reranker.rerank([reranker.BundleCandidate(item_ids=ids, source="rule")], ctx).rejected
    assert reason.startswith(f"diet: {ids[0]}")


def test_unknown_diet_keys_filter_nothing_and_unknown_products_are_not_allowed(products):
    c = Constraints(diets=["no-such-diet"], in_stock_only=False)
    assert filters.mask(products, c).all()
    assert not filters.for_catalogue(products).allowed("no-such-id", Constraints())


def test_mentions_is_the_one_whole_word_matcher():
    import assistant.constraints as parser_side

    assert parser_side.mentions is filters.mentions
    assert filters.mentions("GRAHAM CRACKERS", ["ham"]) is None
    assert filters.mentions("HOT DOG BUNS", ["hot dog"]) is None
    assert filters.mentions("Saltine/Oyster Crackers", ["oyster"]) is None
    assert Constraints(exclude=["cheese"]).excludes("CHEESE: NATURAL BULK")


def test_the_lower_layer_imports_nothing_above_it():
    code = ("import sys, retrieval.schema, retrieval.filters, retrieval.candidates; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('assistant', 'eval', 'app')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=subprocess_env(), capture_output=True,
                         text=True, check=True, timeout=300)
    assert out.stdout.strip() == "[]"
