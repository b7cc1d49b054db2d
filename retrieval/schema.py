"""Records that cross module boundaries.

The catalogue and the interactions travel as pandas DataFrames with the columns below
(92k products and 1.5M interactions are too many for one object per row).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
from pydantic import BaseModel, Field, field_validator

from .wording import mentions  # the one whole-word matcher, shared with the filters

PRODUCT_COLUMNS: tuple[str, ...] = (
    "product_id",
    "title",
    "category",  # a path: "GROCERY > PASTA > DRY PASTA"
    "department",  # first level of the category path
    "product_type",  # the leaf: what "same kind of thing" means for substitutes
    "brand",
    "size",
    "price",  # float > 0, or NaN when the source has no price
    "margin_rate",  # 0 <= m < 1
    "rating",  # optional, NaN when absent
    "in_stock",
    "popularity",  # derived: share of baskets/users that touched it, scaled to [0, 1]
)
REQUIRED_PRODUCT_COLUMNS: tuple[str, ...] = ("product_id", "title")

INTERACTION_COLUMNS: tuple[str, ...] = (
    "user_id",
    "product_id",
    "event",
    "quantity",
    "value",
    "timestamp",
    "basket_id",
    "rating",
    "discounted",  # True when the purchase used a retail or coupon discount
)
REQUIRED_INTERACTION_COLUMNS: tuple[str, ...] = ("user_id", "product_id", "timestamp")
EVENTS: tuple[str, ...] = ("view", "cart", "purchase", "review")


def product_text(row: pd.Series | dict) -> str:
    """The text that gets embedded for a product: its title, plus the department when the
    title does not already say it. Kept short: embedding 92k titles is the longest step
    of a build, and MiniLM's cost grows with token count."""
    title = str(row["title"])
    department = str(row.get("department") or "")
    if department and department.lower() not in title.lower():
        return f"{title} | {department.title()}"
    return title


@dataclass(frozen=True)
class Rejection:
    """One row that did not make it in, and why."""

    file: str
    row: int  # 1-based data row number (the header is row 0); -1 when not row-specific
    field: str
    reason: str
    value: str = ""

    def as_dict(self) -> dict:
        return {
            "file": self.file,
            "row": self.row,
            "field": self.field,
            "reason": self.reason,
            "value": self.value,
        }


class SchemaError(ValueError):
    """A file that cannot be read at all (a missing required column, an empty file)."""

    def __init__(self, file: str, message: str, column: str | None = None):
        self.file = file
        self.column = column
        super().__init__(f"{file}: {message}")


@dataclass
class Dataset:
    """What a source loader returns: clean tables plus everything it rejected."""

    name: str
    products: pd.DataFrame
    interactions: pd.DataFrame
    users: pd.DataFrame = field(default_factory=pd.DataFrame)  # user_id + demographics
    quarantine: list[Rejection] = field(default_factory=list)
    extras: dict[str, pd.DataFrame] = field(default_factory=dict)  # bundles, sessions, ...

    def summary(self) -> dict:
        by_file: dict[str, int] = {}
        for r in self.quarantine:
            by_file[r.file] = by_file.get(r.file, 0) + 1
        return {
            "source": self.name,
            "products": int(len(self.products)),
            "products_priced": int(self.products["price"].notna().sum()),
            "products_in_stock": int(self.products["in_stock"].sum()),
            "interactions": int(len(self.interactions)),
            "users": int(self.interactions["user_id"].nunique()) if len(self.interactions) else 0,
            "rejected": len(self.quarantine),
            "rejected_by_file": by_file,
        }


class Constraints(BaseModel):
    """What a shopper or merchandiser asked for. Hard constraints are never traded off."""

    budget: float | None = None  # max bundle price
    max_unit_price: float | None = None
    min_unit_price: float | None = None
    servings: int | None = None
    exclude: list[str] = Field(default_factory=list)  # words/categories that must not appear
    include_categories: list[str] = Field(default_factory=list)  # soft wishes for retrieval
    departments: list[str] = Field(default_factory=list)  # hard filter when non-empty
    in_stock_only: bool = True
    min_margin: float | None = None  # merchandisers: bundle margin floor after discount
    pinned: list[str] = Field(default_factory=list)  # product ids every bundle must contain
    excluded_products: list[str] = Field(default_factory=list)
    max_bundle_size: int | None = None
    # diet/allergen keys of retrieval/data/food_rules.json, applied by retrieval.filters
    diets: list[str] = Field(default_factory=list)
    food: bool | None = None  # True: food products only; False: non-food only; None: any

    @field_validator("budget", "max_unit_price", "min_unit_price")
    @classmethod
    def _positive(cls, v: float | None) -> float | None:
        if v is not None and not v > 0:
            raise ValueError("must be > 0")
        return v

    @field_validator("min_margin")
    @classmethod
    def _margin(cls, v: float | None) -> float | None:
        if v is not None and not 0 <= v < 1:
            raise ValueError("min_margin must be in [0, 1)")
        return v

    def excludes(self, text: str) -> bool:
        """True when ``text`` (a title or category path) mentions an exclusion word as a
        whole word ("ham" does not exclude "GRAHAM CRACKERS")."""
        return mentions(text, self.exclude) is not None
