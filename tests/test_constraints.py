"""Reading hard constraints out of one message (assistant.constraints.parse_message)."""

from __future__ import annotations

import pytest

from assistant.constraints import (
    EXCLUSION_GROUPS,
    mentions,
    parse_message,
    sanitize_message,
    to_number,
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


@pytest.mark.parametrize("text, query", [
    ("cheaper please", ""), ("more like bundle 2", ""), ("swap the salsa for guacamole", ""),
    ("make it healthier", ""), ("change it to lunch", "lunch"), ("something for breakfast instead", "breakfast"),
    ("start over: pasta night for 2", "pasta night"),
])
def test_the_words_of_a_follow_up_move_never_reach_the_query(text, query):
    # the session reads the move; the parser only keeps its words out of the retrieval text
    assert parse_message(text).query == query


def test_cheaper_than_amount_is_a_budget():
    assert parse_message("cheaper than $20").budget == 20.0
    assert parse_message("make it healthier").healthy


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
    assert parse_message("").query == "" and parse_message("").budget is None


def test_absurd_numbers_are_ignored():
    assert parse_message("$" + "9" * 400).budget is None
    assert parse_message("under 99999999999 dollars").budget is None
    assert parse_message("for 5000 people").servings is None
