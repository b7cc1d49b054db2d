"""Bundle pricing: one discount per bundle that still protects the store's margin.

Margin maths. With catalogue prices ``p_i`` and margin rates ``m_i`` each item costs the
store ``c_i = p_i·(1 − m_i)``. For list price ``P = Σ p_i`` and discount ``d`` the
shopper pays ``P·(1 − d)`` and the bundle's margin rate after the discount is::

    margin(d) = (P·(1 − d) − Σ c_i) / (P·(1 − d))

The discount is the largest ``d`` on the grid ``min_discount + k·step`` (``k = 0, 1, …``,
never above ``max_discount``) with ``margin(d) ≥ margin_floor``. When even
``min_discount`` breaks the floor (the items' own margins are already thin) the bundle
gets ``min_discount`` anyway: the merchandiser set that as the least a bundle offers, and
a ``min_margin`` hard constraint in the reranker is the place to drop such bundles.

Unknown prices. A bundle with any unknown price (``None`` or NaN) cannot be priced: it
gets ``price_known=False``, no list/bundle price, no savings, discount 0, and its margin
rate is the plain mean of the items' margin rates (the best estimate without prices).

Money is rounded to cents (half up) only at the end; ``savings`` is the difference of the
rounded prices so that the three numbers a shopper sees always add up.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from decimal import ROUND_HALF_UP, Decimal

from pydantic import BaseModel, ConfigDict

from retrieval.config import PricingConfig

# Comparisons against the floor tolerate float noise, so a discount that lands exactly on
# the floor on paper (e.g. 0.10 with cost 15.3 on 20.0) is not lost to 1e-16 errors.
_EPS = 1e-9


class BundlePrice(BaseModel):
    model_config = ConfigDict(frozen=True)

    list_price: float | None
    discount: float
    bundle_price: float | None
    savings: float | None
    margin_rate_after: float
    price_known: bool


def to_cents(amount: float) -> float:
    """Round money half up to cents (``round`` would send 2.675 to 2.67)."""
    return float(Decimal(repr(float(amount))).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def is_unknown(price: object) -> bool:
    """None, NaN, ``pd.NA`` or anything that is not a number all mean "no price"."""
    if price is None:
        return True
    try:
        return math.isnan(float(price))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return True


def discount_grid(cfg: PricingConfig) -> list[float]:
    """Candidate discounts, largest first."""
    if cfg.step <= 0:
        raise ValueError(f"pricing step must be > 0, got {cfg.step}")
    n = math.floor((cfg.max_discount - cfg.min_discount) / cfg.step + _EPS)
    # Rounded so that 0.15 is 0.15 and not 0.15000000000000002 on the receipt.
    return [round(cfg.min_discount + k * cfg.step, 10) for k in range(n, -1, -1)]


def margin_after(list_price: float, cost: float, discount: float) -> float:
    paid = list_price * (1.0 - discount)
    return (paid - cost) / paid


def choose_discount(list_price: float, cost: float, cfg: PricingConfig) -> float:
    """Largest grid discount keeping the margin at or above the floor (else the minimum)."""
    for d in discount_grid(cfg):
        if margin_after(list_price, cost, d) >= cfg.margin_floor - _EPS:
            return d
    return round(cfg.min_discount, 10)


def price_bundle(
    prices: Sequence[float | None], margin_rates: Sequence[float], cfg: PricingConfig,
    quantities: Sequence[int] | None = None,
) -> BundlePrice:
    """Price a bundle from its items' catalogue unit prices, margin rates and quantities
    (same order; no quantities means one of each). A line costs unit price × quantity;
    the margin rate is a rate, so it does not change with the quantity."""
    if len(prices) != len(margin_rates):
        raise ValueError(f"{len(prices)} prices but {len(margin_rates)} margin rates")
    if not prices:
        raise ValueError("cannot price an empty bundle")
    qty = [1] * len(prices) if quantities is None else [int(q) for q in quantities]
    if len(qty) != len(prices) or any(q < 1 for q in qty):
        raise ValueError(f"quantities must be {len(prices)} whole numbers >= 1, got {list(qty)}")
    rates = [float(m) for m in margin_rates]

    if any(is_unknown(p) for p in prices):
        return BundlePrice(
            list_price=None,
            discount=0.0,
            bundle_price=None,
            savings=None,
            margin_rate_after=sum(rates) / len(rates),
            price_known=False,
        )

    values = [float(p) * q for p, q in zip(prices, qty)]  # type: ignore[arg-type]
    total = sum(values)
    if total <= 0:
        raise ValueError(f"bundle list price must be > 0, got {total}")
    cost = sum(p * (1.0 - m) for p, m in zip(values, rates))
    d = choose_discount(total, cost, cfg)

    list_cents = to_cents(total)
    bundle_cents = to_cents(total * (1.0 - d))
    return BundlePrice(
        list_price=list_cents,
        discount=d,
        bundle_price=bundle_cents,
        savings=to_cents(list_cents - bundle_cents),
        margin_rate_after=margin_after(total, cost, d),
        price_known=True,
    )
