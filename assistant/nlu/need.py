"""The structured need: what a shopper's or merchandiser's words ask for.

One message plus the session's earlier turns become one :class:`Need`. The parser
(:mod:`assistant.nlu.parser`) fills it deterministically; an LLM may only fill fields the
parser left open. Composition (:mod:`assistant.compose`) turns it into roles and bundles;
:meth:`Need.to_constraints` hands its hard parts to the one owner of hard constraints,
:mod:`retrieval.filters`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from retrieval.schema import Constraints

# The canonical diet and allergen names. ``retrieval/data/food_rules.json`` holds the
# catalogue rule of each one; the parser maps shopper words onto these keys.
DIETS: tuple[str, ...] = (
    "vegan", "vegetarian", "pescatarian", "gluten-free", "dairy-free", "nut-free",
    "peanut-free", "egg-free", "keto", "low-sugar", "alcohol-free", "pork-free",
)

Audience = Literal["shopper", "merchandiser"]


class Need(BaseModel):
    """Everything understood of a request. Empty fields mean "not said"."""

    text: str = ""  # the free-text part left after the structured parts were read
    occasion: str | None = None  # canonical: "tacos", "breakfast", "kids party", "picnic" ...
    food: bool | None = None  # True: food need; False: non-food (cleaning, baby care ...)
    servings: int | None = None  # people to feed ("for four", "family of 5", "para dos")
    days: int | None = None  # duration ("for a week" -> 7)
    budget: float | None = None  # the shopper's spend cap for one bundle
    diets: list[str] = Field(default_factory=list)  # keys of DIETS
    include: list[str] = Field(default_factory=list)  # must-include items ("steak", "wine")
    exclude: list[str] = Field(default_factory=list)  # words excluded ("cheese", "dairy")
    add_roles: list[str] = Field(default_factory=list)  # "add a drink" -> ["drink"]
    # "healthier": prefer healthier types (rule in assistant/nlu/session.py); composition reads it
    healthier: bool = False
    language: str = "en"
    audience: Audience = "shopper"
    # merchandiser terms
    min_margin: float | None = None  # "margin at least 30%" -> 0.30
    max_price: float | None = None  # "under $10" for a merchandiser: the bundle price cap
    min_items: int | None = None  # "2 to 4 items"
    max_items: int | None = None
    placement: str | None = None  # "endcap", ...
    # what the parser could not place
    vague: bool = False  # no food/occasion/product signal: ask, don't guess
    nonsense: bool = False  # gibberish or emoji only
    # what an unreadable message may mean ("🍕" -> "pizza night"): offered, never acted on
    suggestion: str | None = None

    def people(self) -> int:
        """Head count used for sizing: the stated servings, else one."""
        return self.servings or 1

    def to_constraints(self, base: Constraints | None = None) -> Constraints:
        """The hard constraints this need implies, merged into ``base``."""
        c = (base or Constraints()).model_copy(deep=True)
        budget = self.budget if self.budget is not None else self.max_price
        if budget is not None:
            c.budget = budget
        if self.servings is not None:
            c.servings = self.servings
        c.exclude = list(dict.fromkeys([*c.exclude, *self.exclude]))
        c.diets = list(dict.fromkeys([*c.diets, *self.diets]))
        if self.food is not None:
            c.food = self.food
        if self.min_margin is not None:
            c.min_margin = self.min_margin
        if self.max_items is not None:
            c.max_bundle_size = self.max_items
        return c
