"""The diet and exclusion-group columns a build saves (``filter_columns.npz``): the same
verdicts as computing them, and never reused for another catalogue or other rules."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from retrieval import filters
from retrieval.config import Settings
from retrieval.index import FILTER_COLUMNS, Index
from retrieval.schema import Constraints


@pytest.fixture(scope="module")
def products(cj_slice) -> pd.DataFrame:
    return cj_slice.products.reset_index(drop=True)


def _constraints(seed: int) -> list[Constraints]:
    rng = random.Random(seed)
    diets = list(filters.known_diets())
    words = [a for g in filters.load_rules().groups.values() for a in g.aliases] + ["cilantro", "chocolate"]
    return [Constraints(diets=rng.sample(diets, rng.randint(0, 2)), exclude=rng.sample(words, rng.randint(0, 2)),
                        food=rng.choice([None, True, False])) for _ in range(200)]


def test_saved_columns_give_the_computed_verdicts(products, tmp_path: Path):
    path = tmp_path / FILTER_COLUMNS
    filters.CatalogueFilter(products).save_columns(path)
    loaded = filters.CatalogueFilter(products)
    assert loaded.load_columns(path)
    assert ("diet", "vegan") in loaded._cache and ("word", "dairy") in loaded._cache
    fresh = filters.CatalogueFilter(products)
    for c in _constraints(0):
        assert np.array_equal(loaded.mask(c), fresh.mask(c)), c


def test_columns_of_another_catalogue_are_not_taken(products, tmp_path: Path):
    path = tmp_path / FILTER_COLUMNS
    filters.CatalogueFilter(products).save_columns(path)
    other = products.iloc[::-1].reset_index(drop=True)  # same products, other row order
    flt = filters.CatalogueFilter(other)
    assert not flt.load_columns(path)
    assert flt._cache == {}
    assert not filters.CatalogueFilter(products).load_columns(tmp_path / "missing.npz")


def test_a_build_saves_its_columns_and_an_opened_index_uses_them(cj_slice_dir: Path):
    index = Index(Settings(data_dir=cj_slice_dir, chroma_url=None))
    assert (index.folder / FILTER_COLUMNS).exists()
    cached = filters.for_catalogue(index.products)._cache
    assert {("diet", d) for d in filters.known_diets()} <= set(cached)
