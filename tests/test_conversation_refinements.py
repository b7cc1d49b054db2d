"""Refinements as operations on the need: the session moves the conversation makes and
the roles composition gives them. Pure (the lexicon and parser only, no index)."""

from __future__ import annotations

import pytest

from assistant.compose import load_lexicon, parse_need, plan_for
from assistant.nlu import session as sm
from assistant.nlu.need import Need


def options(need: Need) -> list[list[str]]:
    plan = plan_for(need, None)
    assert plan is not None
    return [[o.key for o in r.options] for r in plan.roles]


def core(need: Need) -> list[list[str]]:
    plan = plan_for(need, None)
    assert plan is not None
    return [[o.key for o in r.options] for r in plan.roles if not r.optional]


def start(text: str) -> sm.SessionState:
    turn = sm.handle(sm.reset(), text, parsed=parse_need(text))
    assert turn.kind == "new_need"
    return turn.state


def say(state: sm.SessionState, text: str) -> sm.Turn:
    return sm.handle(state, text, parsed=parse_need(text))


# --- the session ------------------------------------------------------------------------

@pytest.mark.parametrize("message, include, without", [
    ("no beef, chicken instead", "chicken", "beef"),
    ("chicken instead of beef", "chicken", "beef"),
    ("pollo en vez de res", "chicken", "beef"),
    ("use turkey instead", "turkey", None),
])
def test_x_instead_includes_x_and_drops_what_it_replaces(message, include, without):
    turn = say(start("taco night for four"), message)
    assert turn.kind == "refine"
    need = turn.state.need
    assert include in need.include and need.occasion == "tacos" and need.servings == 4
    assert (without in need.exclude) if without else not need.exclude
    assert f"with {include}" in [c.label for c in turn.state.chips]


@pytest.mark.parametrize("message, servings", [("for 6 instead", 6), ("pasta for two instead", 2),
                                               ("make it for six instead", 6)])
def test_a_head_count_said_with_instead_is_no_item(message, servings):
    moves = sm.detect_moves(message)
    assert [m.kind for m in moves] == ["rescale"] and moves[0].servings == servings


@pytest.mark.parametrize("message, term", [("add coffee", "coffee"), ("add a dessert", "dessert"),
                                           ("please add some chips", "chip")])
def test_add_x_is_never_a_new_topic(message, term):
    turn = say(start("breakfast for two"), message)
    assert turn.kind == "refine" and turn.state.need.occasion == "breakfast"
    assert term in turn.state.need.add_roles


def test_the_same_request_again_is_asked_afresh():
    state = start("pasta night for two")
    turn = say(state, "pasta night for two")
    assert turn.kind == "new_need" and turn.state.need.servings == 2 and not turn.state.steps


# --- composition of the refined need ----------------------------------------------------

def test_added_roles_join_the_meal_without_alcohol():
    tacos = parse_need("taco night for four")
    before = core(tacos)
    after = core(tacos.model_copy(update={"add_roles": ["drink"]}))
    assert after[:-1] == before
    assert after[-1] and not {"beer", "wine"} & set(after[-1])
    assert set(after[-1]) <= set(load_lexicon().groups["drink"])


def test_an_added_kind_the_plan_offers_becomes_a_core_role():
    pasta = parse_need("pasta night for two")
    assert "wine" not in sum(core(pasta), [])
    assert ["wine"] in core(pasta.model_copy(update={"add_roles": ["wine"]}))  # an ask-only slot
    snacks = parse_need("movie night snacks")
    drink = core(snacks.model_copy(update={"add_roles": ["drink"]}))
    assert sum(1 for r in drink if set(r) & {"soft drinks", "iced tea"}) == 1  # the drinks role, not a second one


def test_a_must_have_outside_the_plan_is_added():
    steak = parse_need("steak dinner with wine for two")
    roles = core(steak)
    assert {o.split("#")[0] for o in roles[0]} == {"steak"} and ["wine"] in roles


@pytest.mark.parametrize("message, headline", [
    ("salmon dinner for two", "salmon"),
    ("chicken stir fry for three", "chicken breast"),
    ("game day party for 12, wings and beer", "chicken wings"),
    ("pancake brunch for four", "pancake mix"),
])
def test_the_named_kind_fills_its_role(message, headline):
    roles = options(parse_need(message))
    assert all(o.split("#")[0] == headline for o in roles[0])


def test_a_word_of_the_occasion_itself_names_no_kind():
    baby = options(parse_need("newborn baby essentials"))
    assert ["infant formula", "baby food", "baby cereal"] in baby


def test_named_kinds_keep_the_usual_alternatives_to_fill_up_with():
    plan = plan_for(parse_need("spaghetti and meatballs for 4"), None)
    assert plan is not None and plan.relaxed is not None
    assert [o.key for o in plan.roles[2].options] == ["meatballs"]
    assert len(plan.relaxed.roles[2].options) > 1  # sausage, beef ... after the meatballs
    assert [o.key for o in plan.relaxed.roles[0].options] == ["spaghetti"]  # the occasion's own word still holds


def test_healthier_swaps_sugary_and_fried_kinds_by_the_documented_rule():
    snacks = parse_need("movie night snacks")
    healthier = snacks.model_copy(update={"healthier": True, "diets": ["low-sugar"]})
    lexicon = load_lexicon()
    avoid = set(lexicon.diet_tags["healthier"])
    for role in plan_for(healthier, None).roles:
        for o in role.options:
            assert not avoid & set(o.tags), o.key
    assert ["bottled water"] in options(healthier)  # the soda's swap
    assert any({"grapes", "strawberries", "apples"} <= set(r) for r in options(healthier))  # the candy's


def test_a_healthy_breakfast_asks_for_healthier_kinds_and_leaves_processed_meat_out():
    need = start("a quick healthy breakfast").need
    assert need.healthier  # "healthy" in the first message, as "healthier" later
    breakfast = options(need)
    assert not {"bacon", "breakfast sausage"} & {o for r in breakfast for o in r}
    assert any("yogurt" in r for r in breakfast)  # the morning protein role keeps its yogurt
    assert ["yogurt"] in options(start("healthy brunch for 4").need)  # bacon and sausage gone: their swap
    assert not start("breakfast for 4").need.healthier


def test_lexicon_references_are_defined():
    lexicon = load_lexicon()
    for group, kinds in [*lexicon.groups.items(), *lexicon.healthier_swaps.items()]:
        assert kinds and all(k in lexicon.roles for k in kinds), group
    assert set(lexicon.healthier_swaps) <= set(lexicon.roles)


@pytest.mark.parametrize("message, chip", [
    ("with guacamole", "with guacamole"), ("plus some chips", "with chip"), ("swap the salsa", "no salsa"),
    ("get rid of the beef", "no beef"), ("we are 6", "for 6"), ("agrega postre", "+ dessert"),
    ("vegetarian instead", "vegetarian"), ("sin carne", "no meat"), ("double it", "for 8"),
])
def test_follow_ups_refine_the_need_under_way(message, chip):
    turn = say(start("taco night for four"), message)
    assert turn.kind == "refine" and turn.state.need.occasion == "tacos"
    assert [c.label for c in turn.state.chips] == [chip]
