"""User profiles (the article's ``U = Σ w_i·X_i``): the math on a tiny hand-made case,
then the real profiles stored in Chroma for the Complete Journey slice."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from assistant.privacy import is_pseudonym, pseudonymise
from assistant.service import UnknownUser
from retrieval.config import ProfileConfig
from retrieval.profiles import (
    DEMOGRAPHIC_FIELDS,
    build_profiles,
    guest_profile,
    interaction_weights,
    price_word,
)

T0 = datetime(2024, 4, 1, 12, 0)
RAW_ID, OTHER_ID = "household-98765", "household-11111"
SECRET = b"k" * 32
# weights typed as a merchandiser would; the config normalises them to .1/.2/.5/.2
CFG = ProfileConfig(event_weights={"view": 1, "cart": 2, "purchase": 5, "review": 2}, half_life_days=30)

PRODUCTS = pd.DataFrame(
    [
        # id, title, category, department, type, brand, price
        ("p1", "Spaghetti", "GROCERY > PASTA > DRY PASTA", "GROCERY", "DRY PASTA", "Barilla", 2.0),
        ("p2", "Penne", "GROCERY > PASTA > DRY PASTA", "GROCERY", "DRY PASTA", "Store", 1.0),
        ("p3", "Parmesan", "DELI > CHEESE > HARD CHEESE", "DELI", "HARD CHEESE", "Kraft", 5.0),
        ("p4", "Apples", "PRODUCE > FRUIT > APPLES", "PRODUCE", "APPLES", "", 3.0),
    ],
    columns=["product_id", "title", "category", "department", "product_type", "brand", "price"],
)
EMBEDDINGS = np.eye(4, dtype=np.float32)  # p_i -> e_i: the preference vector reads off the item weights


def event(user, pid, kind, days_before, qty=1.0, value=np.nan, basket="", discounted=False):
    return (user, pid, kind, qty, value, T0 - timedelta(days=days_before), basket, np.nan, discounted)


INTERACTIONS = pd.DataFrame(
    [
        # weight = w_event * 0.5 ** (age / 30), age from this user's latest event (T0)
        event(RAW_ID, "p1", "purchase", 0, 2, 3.00, "b1", True),  # .5 * 1     = .5
        event(RAW_ID, "p3", "purchase", 0, 1, 5.00, "b1", False),  # .5 * 1     = .5
        event(RAW_ID, "p2", "view", 30),  # .1 * .5    = .05
        event(RAW_ID, "p4", "cart", 60),  # .2 * .25   = .05
        event(RAW_ID, "p2", "purchase", 30, 1, 0.80, "b2", True),  # .5 * .5    = .25
        event(RAW_ID, "p1", "review", 15),  # .2 * 2**-.5 = .1414214
        # another user, a year earlier: decay runs from *their* latest event
        event(OTHER_ID, "p4", "purchase", 365, 1, 3.00, "b9", False),  # .5
    ],
    columns=["user_id", "product_id", "event", "quantity", "value", "timestamp", "basket_id", "rating", "discounted"],
)
DEMOGRAPHICS = pd.DataFrame(
    [{"user_id": RAW_ID, "age": "45-54", "income": "50-74K", "home_ownership": "Homeowner",
      "marital_status": "Married", "household_size": "3", "household_comp": "2 Adults Kids", "kids_count": "1"}]
)
W = 0.5 + 0.5 + 0.05 + 0.05 + 0.25 + 0.2 * 2 ** -0.5  # = 1.4914214, the user's total weight


@pytest.fixture(scope="module")
def profiles():
    return build_profiles(INTERACTIONS, PRODUCTS, EMBEDDINGS, CFG, DEMOGRAPHICS,
                          pseudonymise=lambda u: pseudonymise(u, secret=SECRET))


def test_event_weights_are_normalised():
    assert CFG.event_weights == pytest.approx({"view": 0.1, "cart": 0.2, "purchase": 0.5, "review": 0.2})
    assert sum(CFG.event_weights.values()) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        ProfileConfig(event_weights={"view": 0, "purchase": 0})
    with pytest.raises(ValueError):
        ProfileConfig(event_weights={"view": -1, "purchase": 2})
    with pytest.raises(ValueError):
        ProfileConfig(half_life_days=0)


def test_interaction_weights_by_hand():
    w = interaction_weights(INTERACTIONS, CFG).round(7).tolist()
    assert w == [0.5, 0.5, 0.05, 0.05, 0.25, 0.1414214, 0.5]
    # a shorter half-life sharpens decay: the 60-day-old cart at a 15-day half-life is .2 / 16
    sharp = interaction_weights(INTERACTIONS, CFG.model_copy(update={"half_life_days": 15.0}))
    assert sharp.iloc[3] == pytest.approx(0.2 / 16)
    # unknown event types weigh nothing
    odd = INTERACTIONS.assign(event=["purchase", "purchase", "wishlist", "cart", "purchase", "review", "purchase"])
    assert interaction_weights(odd, CFG).iloc[2] == 0.0


def test_top_departments_categories_brands(profiles):
    p = profiles[RAW_ID]
    # GROCERY = p1 (.5 + .1414214) + p2 (.05 + .25) = .9414214; DELI = p3 = .5; PRODUCE = p4 = .05
    assert p.top_departments == [
        ("GROCERY", round(0.9414214 / W, 4)),  # .6312
        ("DELI", round(0.5 / W, 4)),  # .3353
        ("PRODUCE", round(0.05 / W, 4)),  # .0335
    ]
    assert [name for name, _ in p.top_categories] == ["GROCERY > PASTA", "DELI > CHEESE", "PRODUCE > FRUIT"]
    # blank brands (p4) are left out before the shares: Barilla .6414214, Kraft .5, Store .3
    w_brands = W - 0.05
    assert p.top_brands == [
        ("Barilla", round(0.6414214 / w_brands, 4)),
        ("Kraft", round(0.5 / w_brands, 4)),
        ("Store", round(0.3 / w_brands, 4)),
    ]
    assert p.favourite_items == ["p1", "p3", "p2", "p4"]
    assert sum(s for _, s in p.top_departments) == pytest.approx(1.0, abs=1e-3)


def test_preference_embedding_is_the_weighted_mean(profiles):
    item_w = np.array([0.5 + 0.2 * 2 ** -0.5, 0.05 + 0.25, 0.5, 0.05])  # p1, p2, p3, p4
    expected = item_w / np.linalg.norm(item_w)
    got = profiles[RAW_ID].preference_vector()
    assert got == pytest.approx(expected, abs=1e-6)
    assert np.linalg.norm(got) == pytest.approx(1.0, abs=1e-6)
    assert profiles[OTHER_ID].preference_vector() == pytest.approx([0, 0, 0, 1], abs=1e-6)


def test_price_band_sensitivity_and_basket_size(profiles):
    p = profiles[RAW_ID]
    # paid unit prices: p1 3.00/2 = 1.50, p3 5.00, p2 0.80 -> median 1.50
    assert p.median_unit_price == 1.5
    # GROCERY > PASTA: median(1.50, 0.80) = 1.15; shelf prices there [1.0, 2.0] -> 1 of 2 at or
    # below -> 50th percentile. DELI > CHEESE: 5.00 against [5.0] -> 100th.
    assert p.category_prices == {"GROCERY > PASTA": (1.15, 50.0), "DELI > CHEESE": (5.0, 100.0)}
    shares = dict(p.top_categories)
    by_hand = (50 * shares["GROCERY > PASTA"] + 100 * shares["DELI > CHEESE"]) / (
        shares["GROCERY > PASTA"] + shares["DELI > CHEESE"])  # = 67.3
    assert p.price_percentile == round(by_hand, 1) == 67.3
    assert price_word(p.price_percentile) == "premium"
    # 2 of 3 purchases were on a discount
    assert p.price_sensitivity == round(2 / 3, 3)
    # baskets b1 {p1, p3} and b2 {p2}: median size 1.5; the view/review rows have no basket
    assert p.basket_size == 1.5 and p.n_baskets == 2 and p.n_events == 6


def test_summary_and_storage_hold_no_identifier_or_sensitive_demographics(profiles):
    p = profiles[RAW_ID]
    assert p.user_key != RAW_ID and is_pseudonym(p.user_key)
    assert p.user_key == pseudonymise(RAW_ID, secret=SECRET)
    assert set(p.demographics) <= set(DEMOGRAPHIC_FIELDS)
    assert p.demographics == {"household_size": "3", "household_comp": "2 Adults Kids", "kids_count": "1"}
    stored = p.to_metadata()["profile_json"] + p.summary
    for secret_value in (RAW_ID, "98765", "45-54", "50-74K", "Married", "Homeowner"):
        assert secret_value not in stored
    assert "Household: 2 Adults Kids, 3 people, 1 kids." in p.summary
    assert "Shops mostly Grocery (63%), Deli (34%), Produce (3%)." in p.summary
    assert "Buys on discount 67% of the time." in p.summary
    assert "premium" in p.summary
    assert profiles[OTHER_ID].demographics == {}


def test_guest_profile_from_session_messages_and_clicks():
    messages = np.array([[1.0, 0.0], [0.0, 1.0]])
    clicks = np.array([[1.0, 0.0]])
    g = guest_profile("session-42", messages, clicks)
    # (1·(1,0) + 1·(0,1) + 2·(1,0)) / (2·1 + 1·2) = (.75, .25), then unit length
    expected = np.array([0.75, 0.25]) / math.hypot(0.75, 0.25)
    assert g.preference_vector() == pytest.approx(expected, abs=1e-6)
    assert g.is_guest and g.n_events == 0 and g.top_departments == []
    assert "guest" in g.summary.lower()
    assert guest_profile("empty").preference is None


def test_profiles_of_an_empty_history():
    empty = INTERACTIONS.iloc[0:0]
    assert build_profiles(empty, PRODUCTS, EMBEDDINGS, CFG) == {}


# --- real profiles, stored in Chroma -------------------------------------------------------

def test_cj_profile_read_back_from_chroma(cj_assistant, cj_slice):
    index = cj_assistant.index
    stored = cj_assistant.profile("1")
    assert is_pseudonym(stored.user_key) and stored.user_key == cj_assistant.user_key("1")
    # the same profile, recomputed here from the data and the saved item embeddings
    fresh = build_profiles(cj_slice.interactions, index.products, index.item_embeddings,
                           cj_assistant.settings.profile, cj_slice.users,
                           pseudonymise=cj_assistant.user_key)["1"]
    assert stored.model_dump() == fresh.model_dump()
    assert stored.preference_vector() == pytest.approx(fresh.preference_vector(), abs=1e-5)
    assert len(stored.preference) == 384
    # household 1 has demographics: only the sizing fields reach the profile
    assert stored.demographics and set(stored.demographics) <= set(DEMOGRAPHIC_FIELDS)
    assert stored.summary.startswith("Household:")
    assert stored.top_departments[0][0] == "GROCERY"
    assert 0 <= stored.price_sensitivity <= 1 and stored.basket_size > 0


def test_every_slice_user_has_a_profile(cj_assistant, cj_slice):
    for user in sorted(cj_slice.interactions["user_id"].unique()):
        profile = cj_assistant.profile(user)
        assert profile.n_events == (cj_slice.interactions["user_id"] == user).sum()
    assert cj_assistant.index.store.count(cj_assistant.index.profiles_collection) == cj_slice.summary()["users"]
    with pytest.raises(UnknownUser):
        cj_assistant.profile("no-such-household")


def test_guest_profile_via_the_service(cj_assistant):
    g = cj_assistant.guest("s1", "taco night for four")
    expected = cj_assistant.embedder.encode_one("taco night for four")
    assert g.is_guest and g.preference_vector() == pytest.approx(expected, abs=1e-5)
