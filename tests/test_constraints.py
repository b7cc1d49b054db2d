"""Message parsing, refinements and the multi-turn constraint state."""

from __future__ import annotations

import pytest

from assistant.constraints import (
    EXCLUSION_GROUPS,
    ConstraintState,
    Refinement,
    detect_refinements,
    mentions,
    parse_message,
    sanitize_message,
    to_number,
    understand,
)
from retrieval.schema import Constraints

# -- one message ---------------------------------------------------------------------


def test_the_headline_example():
    p = parse_message("tacos for four, under $25, no dairy")
    assert p.query == "tacos"
    assert p.budget == 25.0
    assert p.servings == 4
    assert p.exclusions == ["dairy"]
    for term in ("dairy", "milk", "cheese", "yogurt", "butter", "cream"):
        assert term in p.exclude_terms
    assert p.wishes == ["tacos"]
    c = p.to_constraints()
    assert isinstance(c, Constraints)
    assert c.budget == 25.0 and c.servings == 4
    assert c.excludes("CHEESE: NATURAL BULK") and not c.excludes("MEXICAN TACO SHELLS")


@pytest.mark.parametrize(
    "text, budget",
    [
        ("snacks under $25", 25.0),
        ("snacks less than 20 dollars", 20.0),
        ("breakfast below 15", 15.0),
        ("max $30 for pasta", 30.0),
        ("$25 budget, bbq", 25.0),
        ("budget of 40 for lunch", 40.0),
        ("no more than 12 bucks", 12.0),
        ("something for under 25", 25.0),
        ("my budget is $19.99", 19.99),
        ("under twenty-five dollars", 25.0),
        ("under $1,200 for a party", 1200.0),
        ("tacos for $25", 25.0),
        ("under $30 ... max $20", 20.0),  # two budgets: the tighter one
    ],
)
def test_budget_forms(text, budget):
    assert parse_message(text).budget == budget


@pytest.mark.parametrize(
    "text", ["snacks under 500 calories", "less than 5 items", "dinner for four", "hello"]
)
def test_numbers_that_are_not_budgets(text):
    assert parse_message(text).budget is None


def test_no_more_than_is_a_budget_not_an_exclusion():
    p = parse_message("no more than 12 bucks, something for breakfast")
    assert p.budget == 12.0 and p.exclusions == [] and p.query == "breakfast"


@pytest.mark.parametrize(
    "text, servings",
    [
        ("tacos for four", 4),
        ("dinner for 4 people", 4),
        ("a lasagna that serves 6", 6),
        ("a family of five", 5),
        ("feeds twelve", 12),
        ("snacks for the two of us", 2),
        ("8 guests coming over", 8),
        ("dinner for a couple", 2),
    ],
)
def test_servings_forms(text, servings):
    assert parse_message(text).servings == servings


def test_for_a_large_bare_number_is_not_servings():
    p = parse_message("pasta for 25")
    assert p.servings is None


@pytest.mark.parametrize(
    "text, word, expanded",
    [
        ("tacos, no dairy", "dairy", "cheese"),
        ("chili without pork", "pork", "bacon"),
        ("dairy-free dessert", "dairy", "yogurt"),
        ("snacks, nothing with nuts", "nuts", "peanut"),
        ("party food, exclude alcohol", "alcohol", "beer"),
        ("chips and salsa but no cheese", "cheese", "cheese"),
        ("no meat please", "meat", "chicken"),
        ("gluten free pasta night", "gluten", "bread"),
        ("no seafood", "seafood", "shrimp"),
        ("no sugar", "sugar", "candy"),
        ("hold the onions", "onions", "onion"),
    ],
)
def test_exclusion_forms(text, word, expanded):
    p = parse_message(text)
    assert word in p.exclusions
    assert expanded in p.exclude_terms


def test_several_exclusions_in_one_phrase():
    p = parse_message("no dairy or gluten")
    assert p.exclusions == ["dairy", "gluten"]
    assert {"milk", "bread"} <= set(p.exclude_terms)


@pytest.mark.parametrize("text", ["no thanks", "no, I meant pasta", "no problem"])
def test_no_that_excludes_nothing(text):
    assert parse_message(text).exclusions == []


def test_diets_expand_to_groups():
    veg = parse_message("vegetarian dinner for two")
    assert veg.diets == ["vegetarian"] and veg.query == "dinner" and veg.servings == 2
    assert {"beef", "chicken", "bacon", "shrimp"} <= set(veg.exclude_terms)
    assert "milk" not in veg.exclude_terms
    vegan = parse_message("vegan breakfast")
    assert {"beef", "milk", "cheese", "egg", "honey"} <= set(vegan.exclude_terms)


def test_healthy_and_wishes():
    p = parse_message("a healthy lunch and some snacks for a movie night")
    assert p.healthy
    assert p.wishes == ["lunch", "snacks", "movie night"]
    assert parse_message("pasta night").wishes == ["pasta night"]  # not also "pasta"
    assert parse_message("stuff for a cookout").wishes == ["bbq"]


def test_query_drops_filler_but_keeps_the_need():
    assert parse_message("Can you find me something for a picnic? No alcohol").query == "picnic"
    assert parse_message("I need chips and salsa please").query == "chips and salsa"


@pytest.mark.parametrize("token, value", [("4", 4), ("$1,200.50", 1200.5), ("four", 4),
                                          ("twenty-five", 25), ("a dozen", 12), ("twelve", 12)])
def test_to_number(token, value):
    assert to_number(token) == value


# -- refinements ---------------------------------------------------------------------


def kinds(text: str) -> list[str]:
    return [r.kind for r in detect_refinements(text)]


@pytest.mark.parametrize(
    "text, kind",
    [
        ("cheaper please", "cheaper"),
        ("something less expensive", "cheaper"),
        ("that's too pricey", "cheaper"),
        ("healthier", "healthier"),
        ("a bigger bundle", "bigger"),
        ("more items", "bigger"),
        ("smaller", "smaller"),
        ("fewer items", "smaller"),
        ("reset", "reset"),
        ("let's start over", "reset"),
    ],
)
def test_simple_refinements(text, kind):
    assert kinds(text) == [kind]


def test_refinements_with_arguments():
    second = [Refinement(kind="more_like", bundle_index=2)]
    assert detect_refinements("more like bundle 2") == second
    assert detect_refinements("like the second one") == second
    assert detect_refinements("more like the last one")[0].bundle_index == -1
    assert detect_refinements("swap the salsa") == [Refinement(kind="swap", term="salsa")]
    assert detect_refinements("swap the salsa for guacamole") == [
        Refinement(kind="swap", term="salsa", replacement="guacamole")
    ]
    assert detect_refinements("without cheese") == [Refinement(kind="without_x", term="cheese")]
    assert detect_refinements("something for breakfast instead") == [
        Refinement(kind="replace_need", term="breakfast")
    ]
    assert detect_refinements("change it to lunch") == [
        Refinement(kind="replace_need", term="lunch")
    ]


def test_cheaper_than_amount_is_a_budget():
    parsed, refinements = understand("cheaper than $20")
    assert parsed.budget == 20.0 and refinements == []


def test_a_first_message_has_no_editing_refinements():
    assert kinds("tacos for four, under $25, no dairy") == ["without_x"]
    assert kinds("pasta night for six") == []


# -- the conversation state ----------------------------------------------------------


def test_multi_turn_sequence():
    s0 = ConstraintState()
    s1 = s0.update("tacos for four, under $25, no dairy")
    assert s1.need == "tacos" and s1.budget == 25.0 and s1.servings == 4
    assert "cheese" in s1.constraints.exclude and s1.wishes == ["tacos"]

    s2 = s1.update("cheaper")
    assert s2.budget == 20.0 and s2.need == "tacos" and s2.servings == 4
    assert s1.budget == 25.0  # apply is pure

    s3 = s2.update("without cheese")
    assert s3.exclusions == ["dairy", "cheese"] and s3.budget == 20.0

    s4 = s3.update("something for breakfast instead")
    assert s4.need == "breakfast" and s4.wishes == ["breakfast"]
    assert s4.budget == 20.0 and s4.servings == 4 and "milk" in s4.constraints.exclude
    assert s4.constraints.include_categories == ["breakfast"]

    s5 = s4.update("reset")
    assert s5.need == "" and s5.budget is None and s5.servings is None
    assert s5.exclusions == [] and s5.constraints.exclude == [] and s5.history == ["reset"]
    assert s4.history == [
        "tacos for four, under $25, no dairy", "cheaper", "without cheese",
        "something for breakfast instead",
    ]


def test_cheaper_without_budget_uses_median_of_shown_bundles():
    s = ConstraintState().update("snacks for a movie night")
    assert s.budget is None
    cheaper = s.update("too pricey", last_bundle_prices=[10.0, 30.0, 20.0])
    assert cheaper.budget == pytest.approx(16.0)  # 0.8 x median 20
    assert s.update("cheaper").budget is None  # nothing to go on: no change
    assert s.update("cheaper", last_bundle_prices=[float("nan"), 0.0]).budget is None


def test_budget_stays_positive_under_repeated_cheaper():
    s = ConstraintState().update("under $0.02")
    for _ in range(10):
        s = s.update("cheaper")
    assert s.budget is not None and s.budget > 0
    Constraints.model_validate(s.constraints.model_dump())  # still valid


def test_explicit_budget_beats_cheaper():
    s = ConstraintState().update("tacos under $25").update("cheaper, under $10")
    assert s.budget == 10.0


def test_bundle_size_steps_within_bounds():
    s = ConstraintState().update("tacos")
    assert s.update("bigger bundle").bundle_size == 5  # from the default 4
    big = s
    for _ in range(5):
        big = big.update("more items")
    assert big.bundle_size == 6 and big.constraints.max_bundle_size == 6
    small = s
    for _ in range(5):
        small = small.update("smaller")
    assert small.bundle_size == 2


def test_swap_and_anchor_last_one_turn():
    s = ConstraintState().update("tacos for four").update("swap the salsa")
    assert s.swap_out == ["salsa"] and s.need == "tacos"
    assert "salsa" in s.search_constraints().exclude
    assert "salsa" not in s.constraints.exclude  # not sticky
    nxt = s.update("more like bundle 2")
    assert nxt.swap_out == [] and nxt.anchor_bundle == 2
    assert "salsa" not in nxt.search_constraints().exclude
    assert nxt.update("cheaper", last_bundle_prices=[10.0]).anchor_bundle is None


def test_new_need_words_replace_or_add():
    s = ConstraintState().update("tacos under $20, no pork")
    moved_on = s.update("pasta night")
    assert moved_on.need == "pasta night" and moved_on.budget == 20.0
    assert "bacon" in moved_on.constraints.exclude
    edited = s.update("cheaper, with chicken")
    assert edited.need == "tacos" and "chicken" in edited.wishes


def test_reset_applies_the_rest_of_the_message():
    s = ConstraintState().update("tacos under $20, no pork").update("start over: pasta night for 2")
    assert s.need == "pasta night" and s.servings == 2
    assert s.budget is None and s.exclusions == []


def test_diet_and_healthier_are_sticky():
    s = ConstraintState().update("vegetarian dinner").update("healthier")
    assert s.healthy and s.diets == ["vegetarian"] and "beef" in s.constraints.exclude
    assert s.update("for six").healthy


def test_state_keeps_merchandiser_constraints():
    s = ConstraintState(constraints=Constraints(min_margin=0.2, departments=["GROCERY"]))
    s = s.update("snacks under $10")
    assert s.constraints.min_margin == 0.2 and s.constraints.departments == ["GROCERY"]


# -- exclusion matching ----------------------------------------------------------------


def test_mentions_matches_whole_words_only():
    dairy = EXCLUSION_GROUPS["dairy"]
    assert mentions("FLUID MILK WHITE ONLY", dairy) == "milk"
    assert mentions("SHREDDED CHEESE", dairy) == "cheese"
    assert mentions("PEANUT BUTTER", dairy) is None
    assert mentions("PEANUT BUTTER AND BUTTER COOKIES", dairy) == "butter"
    assert mentions("NON-DAIRY CREAMER", dairy) is None
    assert mentions("GRAHAM CRACKERS", EXCLUSION_GROUPS["pork"]) is None
    assert mentions("HAM - STEAKS/SLICES/CUBES", EXCLUSION_GROUPS["pork"]) == "ham"
    assert mentions("LEGGS HOSIERY", EXCLUSION_GROUPS["eggs"]) is None
    assert mentions("EGGS - LARGE", EXCLUSION_GROUPS["eggs"]) == "egg"
    assert mentions("DIET CNTRL BARS NUTRITIONAL", EXCLUSION_GROUPS["nuts"]) is None
    assert mentions("SNACK NUT(BAG)", EXCLUSION_GROUPS["nuts"]) == "nut"
    assert mentions("ROOT BEER", EXCLUSION_GROUPS["alcohol"]) is None
    assert mentions("ICE CREAM/MILK/SHERBTS", ["ice cream"]) == "ice cream"


# -- sanitising ------------------------------------------------------------------------


def test_sanitize_message():
    assert sanitize_message("  tacos\n\tfor\r\nfour  ") == "tacos for four"
    assert sanitize_message("ta\x00cos\u202e\u200b!") == "tacos!"
    assert sanitize_message("＄２５") == "$25"
    assert sanitize_message("x" * 5000) == "x" * 1000
    assert sanitize_message("abc def", max_len=4) == "abc"
    assert sanitize_message("") == "" and sanitize_message(None) == ""
    assert sanitize_message("\x01\x02") == ""


def test_parse_survives_hostile_input():
    p = parse_message("\x00" * 10 + "no " * 600 + "$" * 300)
    assert len(p.text) <= 1000
    assert parse_message("").query == "" and detect_refinements("") == []


def test_absurd_numbers_are_ignored():
    assert parse_message("$" + "9" * 400).budget is None
    assert parse_message("under 99999999999 dollars").budget is None
    assert parse_message("for 5000 people").servings is None
