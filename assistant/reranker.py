"""The deterministic reranker: what the shopper sees, and why.

The LLM and the rule-based proposer only *propose* bundles (tuples of product ids). This
module decides, with no randomness and no text from the LLM: it drops candidates that
break a hard constraint (recording why), prices the rest, scores them with the article's
objective ``T = Σ w_k·X_k`` and sorts them.

Components (each in [0, 1]; weights from :class:`ObjectiveConfig`, already summing to 1):

* ``preference`` — with the item ranker's ``relevance`` (the service passes it, see
  :mod:`retrieval.ranker`): the mean relevance of the items the bundle adds to the given
  ``anchors`` (of all items when it adds none; an item without a relevance counts 0).
  Without it: ``(cos(u, b) + 1) / 2`` where ``u`` is the user's preference
  embedding (or the query embedding for a guest) and ``b`` the mean of the items'
  L2-normalised embeddings, re-normalised. 0.5 (neutral) when there is no preference
  vector or none of the items has an embedding. Feedback then moves it: for each item
  whose id or product type is in ``demoted`` the value is multiplied by
  ``DEMOTE_FACTOR`` (0.5); for each item in ``boosted`` (and not demoted: a dislike wins)
  the remaining distance to 1 is multiplied by ``BOOST_FACTOR`` (0.5). Both keep [0, 1].
* ``complementarity`` — mean over item pairs of ``(NPMI + 1) / 2``; NPMI is clipped to
  [-1, 1] and an unknown pair counts 0 (independent), i.e. 0.5. A pair of one anchor and
  one item with a relevance counts that relevance instead: the ranker scored the item
  given the anchors, from their co-purchase at SKU and type level.
* ``margin`` — the bundle's margin rate after its discount (see :mod:`assistant.pricing`),
  clipped to [0, 1].
* ``sales`` — mean item popularity (already scaled to [0, 1]; missing counts 0).

``redundancy`` is the share of item pairs that are near-duplicates: same non-empty
product type and same size, or the same non-empty title (case-insensitive). It is not in
the normalised sum; the score subtracts ``objective.redundancy_penalty × redundancy``::

    score = Σ_k w_k·component_k − penalty·redundancy

A list read top-down (:func:`in_slate_order`, the service's basket-completion and plain
requests) also subtracts ``objective.repeat_penalty × repeats``, the share of a bundle's
added products that a higher-ranked bundle already shows; it is in the breakdown too.

The score is *not* clipped: clipping would tie every bad bundle at 0 and hide the
penalty, so it lies in ``[−penalty, 1]``. ``score_breakdown`` lists every term with its
value, weight and contribution (redundancy's weight is the penalty and its contribution
negative), and the score is exactly the sum of the contributions.

Hard constraints are never traded off against the score. A candidate is rejected when:
an item is not in the catalogue, an id repeats, the size is outside
``[min_bundle_size, max size]`` (``constraints.max_bundle_size`` when set, else the
context's), an item is out of stock (with ``in_stock_only``), an item is an excluded
product, an item's title, category path or brand contains an excluded word, an item's
department is not among ``constraints.departments`` (when that list is non-empty), a unit
price is above ``max_unit_price`` or below ``min_unit_price``, the bundle price is above
``budget``, the margin after discount is below ``min_margin``, or a pinned product is
missing. An unknown price never satisfies a price constraint. The reason is
``"<code>: <detail>"``; all failing checks are joined with ``"; "`` (when an item is
unknown, duplicated or the size is wrong, only those structural reasons are given).

Determinism. Candidates with the same item set are merged into one: the representative
is the first by (source in the order llm < rule, proposed item order, name, reason), and
``sources`` lists every proposer in that order; ``source`` is the first of them. The
proposer's item order is kept for display, but every number is computed over the sorted
ids, so the score depends on the item set only. The ranking sorts by score (rounded to
1e-9 so float noise cannot reorder ties) descending, then by the sorted id tuple
ascending. Names and LLM reasons are carried along for display and never read by the
scoring.

Explanation phrases, in this order, each only when its threshold is met:
``preference ≥ 0.75`` (cosine ≥ 0.5) "matches your taste"; ``complementarity ≥ 0.6``
(NPMI ≥ 0.2) "often bought together"; a known price with a discount "N% saved";
``margin ≥ 0.30`` "good value for the store"; ``sales ≥ 0.5`` "popular picks";
``redundancy > 0`` "some items overlap". None met: "a balanced mix".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import combinations
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from assistant.pricing import BundlePrice, is_unknown, price_bundle, to_cents
from retrieval import filters
from retrieval.config import ObjectiveConfig, PricingConfig
from retrieval.schema import Constraints

Source = Literal["llm", "rule"]
SOURCE_ORDER: tuple[Source, ...] = ("llm", "rule")

DEMOTE_FACTOR = 0.5
BOOST_FACTOR = 0.5
SCORE_TIE_DECIMALS = 9

# (component, threshold, phrase): value >= threshold earns the phrase.
EXPLANATION_THRESHOLDS: tuple[tuple[str, float, str], ...] = (
    ("preference", 0.75, "matches your taste"),
    ("complementarity", 0.6, "often bought together"),
    ("margin", 0.30, "good value for the store"),
    ("sales", 0.5, "popular picks"),
)
COMPONENT_ORDER: tuple[str, ...] = ("preference", "complementarity", "margin", "sales")


class BundleCandidate(BaseModel):
    """One proposed bundle. Only ``item_ids`` matters to the score."""

    model_config = ConfigDict(frozen=True)

    item_ids: tuple[str, ...]
    source: Source
    name: str = ""
    llm_reason: str = ""
    # packages of each item, in item order (composition sizes them to the need); empty
    # means one of each. Part of the price, not of the preference/complementarity terms.
    quantities: tuple[int, ...] = ()

    @field_validator("quantities")
    @classmethod
    def _positive_quantities(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(q < 1 for q in v):
            raise ValueError("quantities must be >= 1")
        return v

    def quantity_of(self, product_id: str) -> int:
        if not self.quantities:
            return 1
        return dict(zip(self.item_ids, self.quantities)).get(product_id, 1)

    @field_validator("item_ids", mode="before")
    @classmethod
    def _as_str(cls, v: Iterable[object]) -> tuple[str, ...]:
        # Proposers may hand over ints (Complete Journey ids are numeric) or padded text;
        # a bare string would otherwise split into one "id" per character.
        if isinstance(v, (str, bytes)):
            raise ValueError("item_ids must be a sequence of ids, not one string")
        return tuple(str(x).strip() for x in v)


class BundleItem(BaseModel):
    """One product of a bundle, from the catalogue; a shown bundle's items are these too."""

    product_id: str
    title: str
    price: float | None  # the catalogue's unit price
    quantity: int = 1  # packages; the bundle price is Σ price × quantity, less the discount


class ComponentScore(BaseModel):
    value: float
    weight: float
    contribution: float


class ScoredBundle(BaseModel):
    item_ids: tuple[str, ...]
    items: list[BundleItem]  # from the catalogue, never from the proposer
    source: Source
    sources: list[Source]
    name: str
    llm_reason: str
    price: BundlePrice
    score: float
    score_breakdown: dict[str, ComponentScore]
    explanation: str
    item_reasons: dict[str, list[str]] = Field(default_factory=dict)  # the ranker's worded reasons per item


class RerankResult(BaseModel):
    ranked: list[ScoredBundle]
    rejected: list[tuple[BundleCandidate, str]]


def _no_npmi(a: str, b: str) -> float:
    return 0.0


@dataclass
class ScoringContext:
    """Everything the score depends on. ``products`` is indexed by ``product_id``."""

    products: pd.DataFrame
    embeddings: Mapping[str, np.ndarray] = field(default_factory=dict)
    preference: np.ndarray | None = None
    pair_npmi: Callable[[str, str], float] = _no_npmi
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    pricing: PricingConfig = field(default_factory=PricingConfig)
    constraints: Constraints = field(default_factory=Constraints)
    demoted: set[str] = field(default_factory=set)  # disliked product ids or product types
    boosted: set[str] = field(default_factory=set)  # liked product ids or product types
    min_bundle_size: int = 2
    max_bundle_size: int = 4
    # the item ranker's relevance in [0, 1] per candidate (retrieval.ranker): when given,
    # it is the preference and the anchor-item complementarity (one relevance signal)
    relevance: Mapping[str, float] = field(default_factory=dict)
    anchors: frozenset[str] = frozenset()  # given products (anchors, pinned): in every bundle
    item_reasons: Mapping[str, list[str]] = field(default_factory=dict)  # worded, per product id

    def __post_init__(self) -> None:
        if "product_id" in self.products.columns and self.products.index.name != "product_id":
            self.products = self.products.set_index("product_id", drop=False)


# --- catalogue rows -----------------------------------------------------------------


@dataclass(frozen=True)
class _Item:
    product_id: str
    title: str
    category: str
    department: str
    product_type: str
    brand: str
    size: str
    price: float | None
    margin_rate: float
    in_stock: bool
    popularity: float
    quantity: int = 1  # packages in the bundle under scoring (set per candidate)


def _text(v: object) -> str:
    return v.strip() if isinstance(v, str) else ""


def _number(v: object, default: float) -> float:
    return default if is_unknown(v) else float(v)  # type: ignore[arg-type]


def _item(pid: str, row: pd.Series) -> _Item:
    stock = row.get("in_stock", True)
    return _Item(
        product_id=pid,
        title=_text(row.get("title")),
        category=_text(row.get("category")),
        department=_text(row.get("department")),
        product_type=_text(row.get("product_type")),
        brand=_text(row.get("brand")),
        size=_text(row.get("size")),
        price=None if is_unknown(row.get("price")) else float(row["price"]),
        margin_rate=_number(row.get("margin_rate"), 0.0),
        # A missing stock flag is not evidence of "sold out".
        in_stock=True if is_unknown(stock) else bool(stock),
        popularity=_number(row.get("popularity"), 0.0),
    )


def _lookup(ids: Iterable[str], products: pd.DataFrame) -> dict[str, _Item]:
    found: dict[str, _Item] = {}
    for pid in dict.fromkeys(ids):
        if pid in products.index:
            row = products.loc[pid]
            if isinstance(row, pd.DataFrame):  # a duplicated index: first row wins
                row = row.iloc[0]
            found[pid] = _item(pid, row)
    return found


# --- hard constraints ---------------------------------------------------------------


def _max_size(ctx: ScoringContext) -> int:
    c = ctx.constraints.max_bundle_size
    return c if c is not None else ctx.max_bundle_size


def _money(x: float) -> str:
    return f"${x:.2f}"


def _structural_violations(
    ids: Sequence[str], items: Mapping[str, _Item], ctx: ScoringContext
) -> list[str]:
    reasons = []
    lo, hi = ctx.min_bundle_size, _max_size(ctx)
    if not lo <= len(ids) <= hi:
        reasons.append(f"size: {len(ids)} items, allowed {lo}-{hi}")
    dups = sorted({i for i in ids if ids.count(i) > 1})
    if dups:
        reasons.append(f"duplicate_item: {', '.join(dups)}")
    unknown = sorted({i for i in ids if i not in items})
    if unknown:
        reasons.append(f"unknown_product: {', '.join(unknown)}")
    return reasons


def _item_violations(item: _Item, c: Constraints) -> list[str]:
    """The item's hard-constraint reasons, from :mod:`retrieval.filters` (the one owner).
    The per-item budget check is left to the exact bundle price below."""
    return filters.violations(item, c, item_budget=False)


def _bundle_violations(ids: Sequence[str], price: BundlePrice, c: Constraints) -> list[str]:
    reasons = []
    if c.budget is not None:
        if price.bundle_price is None:
            reasons.append(f"budget: price unknown, cannot meet budget {_money(c.budget)}")
        elif price.bundle_price > c.budget:
            reasons.append(f"budget: {_money(price.bundle_price)} > {_money(c.budget)}")
    if c.min_margin is not None and price.margin_rate_after < c.min_margin:
        reasons.append(f"min_margin: {price.margin_rate_after:.1%} < {c.min_margin:.1%}")
    missing = [p for p in dict.fromkeys(c.pinned) if p not in ids]
    if missing:
        reasons.append(f"pinned: missing {', '.join(missing)}")
    return reasons


def _price(ids: Sequence[str], items: Mapping[str, _Item], cfg: PricingConfig) -> BundlePrice:
    """Catalogue unit price × quantity per item, summed in a fixed order: the price depends
    on the item set and quantities only."""
    canon = sorted(set(ids))
    return price_bundle([items[i].price for i in canon], [items[i].margin_rate for i in canon], cfg,
                        quantities=[items[i].quantity for i in canon])


def _with_quantities(items: dict[str, _Item], cand: BundleCandidate) -> dict[str, _Item]:
    if not cand.quantities:
        return items
    return {pid: replace(it, quantity=cand.quantity_of(pid)) for pid, it in items.items()}


def _violations(ids: Sequence[str], items: Mapping[str, _Item], ctx: ScoringContext) -> list[str]:
    structural = _structural_violations(ids, items, ctx)
    if structural:
        return structural
    reasons = [r for i in ids for r in _item_violations(items[i], ctx.constraints)]
    return reasons + _bundle_violations(ids, _price(ids, items, ctx.pricing), ctx.constraints)


def hard_constraint_violations(item_ids: Sequence[str], ctx: ScoringContext) -> list[str]:
    """Every hard constraint ``item_ids`` breaks (empty when the bundle may be shown)."""
    ids = tuple(str(i) for i in item_ids)
    return _violations(ids, _lookup(ids, ctx.products), ctx)


# --- components ---------------------------------------------------------------------


def bundle_embedding(
    item_ids: Iterable[str], embeddings: Mapping[str, np.ndarray]
) -> np.ndarray | None:
    """Mean of the items' embeddings, re-normalised; None when no item has one."""
    ids = [i for i in sorted(set(item_ids)) if i in embeddings]
    vecs = [np.asarray(embeddings[i], dtype=np.float64) for i in ids]
    if not vecs:
        return None
    mean = np.mean(vecs, axis=0)
    norm = float(np.linalg.norm(mean))
    return mean / norm if norm > 0 else None


def _marked(item: _Item, keys: set[str]) -> bool:
    lowered = {k.lower() for k in keys}
    kind = item.product_type.lower()
    return item.product_id in keys or (bool(kind) and kind in lowered)


def _preference(ids: Sequence[str], items: Mapping[str, _Item], ctx: ScoringContext) -> float:
    value = 0.5
    chosen = [i for i in sorted(set(ids)) if i not in ctx.anchors] or sorted(set(ids))
    known = [ctx.relevance[i] for i in chosen if i in ctx.relevance]
    if known:
        # the ranker's relevance of what the bundle adds to the given products (the anchors
        # are in every bundle); an item the ranker never saw counts 0
        value = sum(_clip01(float(v)) for v in known) / len(chosen)
    elif ctx.preference is not None:
        pref = np.asarray(ctx.preference, dtype=np.float64)
        b = bundle_embedding(ids, ctx.embeddings)
        norm = float(np.linalg.norm(pref))
        if b is not None and norm > 0:
            cos = float(np.clip(b @ pref / norm, -1.0, 1.0))
            value = (cos + 1.0) / 2.0
    demoted = [i for i in sorted(set(ids)) if _marked(items[i], ctx.demoted)]
    boosted = [i for i in sorted(set(ids)) if i not in demoted and _marked(items[i], ctx.boosted)]
    value *= DEMOTE_FACTOR ** len(demoted)
    return 1.0 - (1.0 - value) * BOOST_FACTOR ** len(boosted)


def _pairs(ids: Sequence[str]) -> list[tuple[str, str]]:
    return list(combinations(sorted(set(ids)), 2))


def _complementarity(ids: Sequence[str], ctx: ScoringContext) -> float:
    pairs = _pairs(ids)
    if not pairs:
        return 0.5
    total = 0.0
    for a, b in pairs:
        given = (a in ctx.anchors) + (b in ctx.anchors)
        other = b if a in ctx.anchors else a
        if given == 1 and other in ctx.relevance:
            # the ranker scored this item given the anchors (co-purchase, type-level
            # complements, similarity): that is how well it goes with them
            total += _clip01(float(ctx.relevance[other]))
            continue
        npmi = _number(ctx.pair_npmi(a, b), 0.0)
        total += (min(1.0, max(-1.0, npmi)) + 1.0) / 2.0
    return total / len(pairs)


def _near_duplicates(a: _Item, b: _Item) -> bool:
    same_kind = (
        bool(a.product_type)
        and a.product_type.lower() == b.product_type.lower()
        and a.size.lower() == b.size.lower()
    )
    same_title = bool(a.title) and a.title.lower() == b.title.lower()
    return same_kind or same_title


def _redundancy(ids: Sequence[str], items: Mapping[str, _Item]) -> float:
    pairs = _pairs(ids)
    if not pairs:
        return 0.0
    return sum(_near_duplicates(items[a], items[b]) for a, b in pairs) / len(pairs)


def _clip01(x: float) -> float:
    return min(1.0, max(0.0, x))


def _breakdown(
    ids: Sequence[str], items: Mapping[str, _Item], price: BundlePrice, ctx: ScoringContext
) -> dict[str, ComponentScore]:
    """Each term of the objective with its value, weight and contribution."""
    canon = sorted(set(ids))
    values = {
        "preference": _preference(ids, items, ctx),
        "complementarity": _complementarity(ids, ctx),
        "margin": _clip01(price.margin_rate_after),
        "sales": sum(_clip01(items[i].popularity) for i in canon) / len(canon),
    }
    weights = ctx.objective.weights
    out: dict[str, ComponentScore] = {}
    for k in COMPONENT_ORDER:
        w = weights.get(k, 0.0)
        out[k] = ComponentScore(value=values[k], weight=w, contribution=w * values[k])
    red = _redundancy(ids, items)
    penalty = ctx.objective.redundancy_penalty
    out["redundancy"] = ComponentScore(value=red, weight=penalty, contribution=-penalty * red)
    return out


def explain(breakdown: Mapping[str, ComponentScore], price: BundlePrice) -> str:
    """One line from the numbers alone (thresholds in the module docstring)."""
    phrases = []
    for name, threshold, phrase in EXPLANATION_THRESHOLDS:
        if name == "margin" and price.price_known and price.discount > 0:
            phrases.append(f"{price.discount:.0%} saved")
        if breakdown[name].value >= threshold:
            phrases.append(phrase)
    if breakdown["redundancy"].value > 0:
        phrases.append("some items overlap")
    return "; ".join(phrases) if phrases else "a balanced mix"


# --- ranking ------------------------------------------------------------------------


def _key(ids: Sequence[str]) -> tuple[str, ...]:
    return tuple(sorted(ids))


def _merge(candidates: Iterable[BundleCandidate]) -> list[tuple[BundleCandidate, list[Source]]]:
    """One entry per item multiset, independent of the input order."""
    groups: dict[tuple[str, ...], list[BundleCandidate]] = {}
    for c in candidates:
        groups.setdefault(_key(c.item_ids), []).append(c)
    merged = []
    for key in sorted(groups):
        group = groups[key]
        rep = min(
            group, key=lambda c: (SOURCE_ORDER.index(c.source), c.item_ids, c.name, c.llm_reason)
        )
        sources = [s for s in SOURCE_ORDER if any(c.source == s for c in group)]
        merged.append((rep, sources))
    return merged


def _cents_or_none(price: float | None) -> float | None:
    return None if price is None else to_cents(price)


def _scored(
    cand: BundleCandidate, sources: list[Source], items: Mapping[str, _Item], ctx: ScoringContext
) -> ScoredBundle:
    ids = cand.item_ids
    price = _price(ids, items, ctx.pricing)
    breakdown = _breakdown(ids, items, price, ctx)
    return ScoredBundle(
        item_ids=ids,
        items=[
            BundleItem(
                product_id=i,
                title=items[i].title,
                price=_cents_or_none(items[i].price),
                quantity=items[i].quantity,
            )
            for i in ids
        ],
        source=sources[0],
        sources=sources,
        name=cand.name,
        llm_reason=cand.llm_reason,
        price=price,
        score=sum(c.contribution for c in breakdown.values()),
        score_breakdown=breakdown,
        explanation=explain(breakdown, price),
        item_reasons={i: list(ctx.item_reasons[i]) for i in ids if ctx.item_reasons.get(i)},
    )


def in_relevance_order(bundle: ScoredBundle, relevance: Mapping[str, float],
                       anchors: Sequence[str]) -> ScoredBundle:
    """The bundle with the given products first (in their given order), then what it adds,
    most relevant first (ties by id): a basket completion's card and list lead with the
    item the ranker rates highest. Scores are untouched; only the order of items moves."""
    given = {a: k for k, a in enumerate(anchors)}
    order = sorted(range(len(bundle.item_ids)), key=lambda k: (
        bundle.item_ids[k] not in given, given.get(bundle.item_ids[k], 0),
        -round(float(relevance.get(bundle.item_ids[k], 0.0)), 9), bundle.item_ids[k]))
    if order == list(range(len(order))):
        return bundle
    return bundle.model_copy(update={"item_ids": tuple(bundle.item_ids[k] for k in order),
                                     "items": [bundle.items[k] for k in order]})


def in_slate_order(ranked: Sequence[ScoredBundle], ctx: ScoringContext, k: int | None = None) -> list[ScoredBundle]:
    """The bundles as one list to read top-down: each place goes to the best score after
    subtracting ``objective.repeat_penalty`` × the share of the bundle's added products
    (those not in ``ctx.anchors``; all when it adds none) that a bundle already placed
    shows. That term joins the breakdown as ``repeats``, so the score stays the sum of its
    contributions. Greedy, deterministic: ties by the sorted id tuple. The first ``k``."""
    penalty = ctx.objective.repeat_penalty
    left = list(ranked)
    placed: list[ScoredBundle] = []
    shown: set[str] = set()

    def added(b: ScoredBundle) -> list[str]:
        return [i for i in b.item_ids if i not in ctx.anchors] or list(b.item_ids)

    def repeats(b: ScoredBundle) -> float:
        ids = added(b)
        return sum(i in shown for i in ids) / len(ids)

    while left and (k is None or len(placed) < k):
        best = min(left, key=lambda b: (-round(b.score - penalty * repeats(b), SCORE_TIE_DECIMALS), _key(b.item_ids)))
        left.remove(best)
        share = repeats(best)
        term = ComponentScore(value=share, weight=penalty, contribution=-penalty * share)
        placed.append(best.model_copy(update={"score_breakdown": {**best.score_breakdown, "repeats": term},
                                              "score": best.score + term.contribution}))
        shown.update(added(best))
    return placed


def score_candidate(candidate: BundleCandidate, ctx: ScoringContext) -> ScoredBundle:
    """Score one bundle without the hard-constraint filter (eval scripts score the
    human-labelled bundles this way). Raises KeyError for ids not in the catalogue."""
    items = _with_quantities(_lookup(candidate.item_ids, ctx.products), candidate)
    unknown = sorted(set(candidate.item_ids) - set(items))
    if unknown:
        raise KeyError(f"not in the catalogue: {', '.join(unknown)}")
    return _scored(candidate, [candidate.source], items, ctx)


def rerank(
    candidates: Iterable[BundleCandidate], ctx: ScoringContext, k: int | None = None
) -> RerankResult:
    """Filter by hard constraints, score, and return the best ``k`` (all when None)."""
    ranked: list[ScoredBundle] = []
    rejected: list[tuple[BundleCandidate, str]] = []
    for cand, sources in _merge(candidates):
        items = _with_quantities(_lookup(cand.item_ids, ctx.products), cand)
        reasons = _violations(cand.item_ids, items, ctx)
        if reasons:
            rejected.append((cand, "; ".join(reasons)))
        else:
            ranked.append(_scored(cand, sources, items, ctx))
    ranked.sort(key=lambda b: (-round(b.score, SCORE_TIE_DECIMALS), _key(b.item_ids)))
    ranked = _drop_lookalikes(ranked, rejected)
    return RerankResult(ranked=ranked if k is None else ranked[:k], rejected=rejected)


def _drop_lookalikes(ranked: list[ScoredBundle], rejected: list) -> list[ScoredBundle]:
    """Keep only the best of bundles whose items read the same (other SKUs of the same
    titles): a shopper sees them as one bundle shown twice. Runs after the sort, so it
    keeps the determinism of the ranking."""
    seen: set[tuple[str, ...]] = set()
    kept = []
    for bundle in ranked:
        signature = tuple(sorted(item.title.strip().lower() for item in bundle.items))
        if signature in seen:
            candidate = BundleCandidate(item_ids=bundle.item_ids, source=bundle.source, name=bundle.name,
                                        llm_reason=bundle.llm_reason,
                                        quantities=tuple(i.quantity for i in bundle.items))
            rejected.append((candidate, "lookalike: same titles as a higher-ranked bundle"))
            continue
        seen.add(signature)
        kept.append(bundle)
    return kept
