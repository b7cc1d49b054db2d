"""The cart's lines: two bundles of one name can be told apart, a line can be removed or
its quantity changed, and the totals follow. Real bundles from the Complete Journey slice."""

from __future__ import annotations

import pytest

from assistant.conversation import MAX_LINE_QUANTITY, Cart


@pytest.fixture(scope="module")
def bundles(cj_assistant):
    rec = cj_assistant.recommend(query="pasta night", k=3, use_llm=False)
    assert len(rec.bundles) >= 2
    return rec.bundles


def test_same_name_other_items_gets_a_distinct_line_name(bundles):
    first, second = bundles[0], bundles[1]
    namesake = second.model_copy(update={"name": first.name})  # e.g. two "Energy Drink bundle"s
    cart = Cart()
    cart.add(first)
    line = cart.add(namesake)
    assert [ln.name for ln in cart.lines] == [first.name, f"{first.name} (2)"]
    assert line.items == [i.model_dump() for i in second.items]  # the line keeps its items
    assert cart.add(first).quantity == 2  # the same items again: the same line, one more
    assert len(cart.lines) == 2


def test_remove_and_change_quantity_update_the_totals(bundles):
    first, second = bundles[0], bundles[1]
    cart = Cart()
    cart.add(first)
    cart.add(second)
    assert cart.total == pytest.approx(first.bundle_price + second.bundle_price, abs=0.011)
    cart.set_quantity(2, 3)
    assert cart.count == 4
    assert cart.total == pytest.approx(first.bundle_price + 3 * second.bundle_price, abs=0.011)
    assert cart.savings == pytest.approx(first.savings + 3 * second.savings, abs=0.011)
    assert cart.set_quantity(1, 10_000).quantity == MAX_LINE_QUANTITY
    removed = cart.remove(1)
    assert removed.bundle_key != cart.lines[0].bundle_key and cart.count == 3
    assert cart.set_quantity(1, 0) is None and cart.lines == [] and cart.total == 0
    with pytest.raises(IndexError):
        cart.remove(1)
    assert cart.as_dict() == {"lines": [], "total": 0, "savings": 0, "count": 0}
