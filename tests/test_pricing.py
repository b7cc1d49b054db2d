"""Bundle pricing: the discount choice against the margin floor, unknown prices, cents."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from assistant.pricing import discount_grid, margin_after, price_bundle, to_cents
from retrieval.config import PricingConfig

DEFAULT = PricingConfig()  # 0 .. 0.15 by 0.01, floor 0.15


def test_generous_margins_get_the_maximum_discount():
    # cost 14 on 20: any d <= 1 - 14/(20*0.85) = 0.176 keeps 15 %, so the cap 0.15 wins.
    p = price_bundle([10.0, 10.0], [0.3, 0.3], DEFAULT)
    assert p.price_known
    assert p.discount == 0.15
    assert p.list_price == 20.0
    assert p.bundle_price == 17.0
    assert p.savings == 3.0
    assert p.margin_rate_after == pytest.approx(3 / 17)


def test_floor_limits_the_discount():
    # cost 16 on 20: d <= 1 - 16/17 = 0.0588 -> 0.05 on the 0.01 grid.
    p = price_bundle([10.0, 10.0], [0.2, 0.2], DEFAULT)
    assert p.discount == 0.05
    assert p.bundle_price == 19.0
    assert p.savings == 1.0
    assert p.margin_rate_after == pytest.approx(3 / 19)
    assert p.margin_rate_after >= DEFAULT.margin_floor
    # one more step would break the floor
    assert margin_after(20.0, 16.0, 0.06) < DEFAULT.margin_floor


def test_discount_exactly_on_the_floor_is_allowed():
    # cost 15.3 on 20: margin at d = 0.10 is (18 - 15.3) / 18 = 0.15 exactly.
    p = price_bundle([10.0, 10.0], [0.235, 0.235], DEFAULT)
    assert p.discount == 0.10
    assert p.bundle_price == 18.0
    assert p.margin_rate_after == pytest.approx(0.15)


def test_thin_margins_fall_back_to_the_minimum_discount():
    p = price_bundle([10.0, 10.0], [0.1, 0.1], DEFAULT)
    assert p.discount == 0.0
    assert p.bundle_price == 20.0
    assert p.savings == 0.0
    assert p.margin_rate_after == pytest.approx(0.1)

    cfg = PricingConfig(min_discount=0.02, max_discount=0.15, step=0.01, margin_floor=0.15)
    p = price_bundle([10.0, 10.0], [0.1, 0.1], cfg)
    assert p.discount == 0.02
    assert p.bundle_price == 19.6
    assert p.margin_rate_after == pytest.approx((19.6 - 18.0) / 19.6)


def test_grid_is_anchored_at_min_discount():
    cfg = PricingConfig(min_discount=0.02, max_discount=0.15, step=0.05, margin_floor=0.0)
    assert discount_grid(cfg) == [0.12, 0.07, 0.02]
    assert price_bundle([10.0, 10.0], [0.5, 0.5], cfg).discount == 0.12
    assert discount_grid(DEFAULT)[0] == 0.15 and discount_grid(DEFAULT)[-1] == 0.0
    assert len(discount_grid(DEFAULT)) == 16


def test_zero_step_is_rejected():
    with pytest.raises(ValueError, match="step"):
        discount_grid(PricingConfig(step=0.0))


@pytest.mark.parametrize("missing", [None, float("nan")])
def test_unknown_price_cannot_be_priced(missing):
    p = price_bundle([10.0, missing], [0.3, 0.5], DEFAULT)
    assert not p.price_known
    assert p.list_price is None and p.bundle_price is None and p.savings is None
    assert p.discount == 0.0
    assert p.margin_rate_after == pytest.approx(0.4)  # the mean margin rate


def test_money_is_rounded_to_cents_at_the_end():
    # 14.98 * 0.85 = 12.733 -> 12.73; savings from the rounded prices.
    p = price_bundle([9.99, 4.99], [0.3, 0.3], DEFAULT)
    assert p.list_price == 14.98
    assert p.bundle_price == 12.73
    assert p.savings == 2.25
    assert p.list_price == pytest.approx(p.bundle_price + p.savings)
    assert to_cents(2.675) == 2.68  # half up, where round() gives 2.67
    assert to_cents(0.125) == 0.13


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        price_bundle([1.0, 2.0], [0.3], DEFAULT)
    with pytest.raises(ValueError):
        price_bundle([], [], DEFAULT)


@settings(max_examples=200, deadline=None)
@given(
    items=st.lists(
        st.tuples(st.floats(0.5, 200.0), st.floats(0.0, 0.9)), min_size=2, max_size=5
    ),
    floor=st.floats(0.0, 0.5),
)
def test_discount_is_the_largest_grid_value_that_keeps_the_floor(items, floor):
    cfg = PricingConfig(margin_floor=floor)
    prices, rates = [p for p, _ in items], [m for _, m in items]
    out = price_bundle(prices, rates, cfg)
    total = sum(prices)
    cost = sum(p * (1 - m) for p, m in items)
    grid = discount_grid(cfg)
    assert out.discount in grid
    assert out.bundle_price <= out.list_price
    if margin_after(total, cost, cfg.min_discount) >= floor + 1e-9:
        assert out.margin_rate_after >= floor - 1e-9
        larger = [d for d in grid if d > out.discount]
        assert all(margin_after(total, cost, d) < floor + 1e-9 for d in larger)
    elif margin_after(total, cost, cfg.min_discount) < floor - 1e-9:
        assert out.discount == cfg.min_discount
    assert math.isclose(out.margin_rate_after, margin_after(total, cost, out.discount))
