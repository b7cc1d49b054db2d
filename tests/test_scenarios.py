"""The shopper-scenarios protocol: the file format (a contract), each check's logic on
hand-built screens, the public set against the real catalogue, and one run through a real
Conversation on the Complete Journey slice."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from eval.scenarios import (
    CHECKS,
    DEFAULT_BUNDLES_MIN,
    BundleView,
    ItemView,
    ScenarioError,
    Screen,
    Turn,
    effective_checks,
    load_scenarios,
    parse_scenarios,
    product_patterns,
    run_checks,
    run_scenarios,
    unmatched_patterns,
)

PUBLIC = Path(__file__).resolve().parents[1] / "eval" / "scenarios" / "public.json"


# ------------------------------------------------------------------------------ loader


def _file(*scenarios: dict, **top) -> dict:
    return {"scenarios": list(scenarios), **top}


def _error(raw: dict) -> str:
    with pytest.raises(ScenarioError) as info:
        parse_scenarios(raw)
    return str(info.value)


def test_unknown_scenario_key_is_named_with_the_scenario_id():
    msg = _error(_file({"id": "chili", "say": "chili for six", "rolse": [["CHILI"]]}))
    assert "'rolse'" in msg and "'chili'" in msg


def test_unknown_check_in_a_turn_is_named_with_turn_number():
    msg = _error(_file({"id": "refine", "turns": [{"say": "pasta"}, {"say": "cheaper", "expect": {"cheapr": True}}]}))
    assert "'cheapr'" in msg and "'refine'" in msg and "turn 2" in msg


def test_unknown_turn_and_top_level_keys_are_named():
    assert "'sya'" in _error(_file({"id": "x", "turns": [{"sya": "pasta"}]}))
    assert "'scenarioz'" in _error({"scenarioz": [], "scenarios": [{"id": "x", "say": "pasta"}]})


@pytest.mark.parametrize("key,value", [("max_price", "cheap"), ("roles", ["PASTA"] * 0), ("roles", [[1]]),
                                       ("bundles_min", 2.5), ("distinct", 2), ("clarify", "yes"),
                                       ("exclude", "CHEESE"), ("budget", -1)])
def test_a_bad_value_names_the_field(key, value):
    msg = _error(_file({"id": "s1", "say": "pasta", key: value}))
    assert f"'{key}'" in msg and "'s1'" in msg


def test_structure_errors():
    assert "either 'say'" in _error(_file({"id": "a", "say": "x", "turns": [{"say": "y"}]}))
    assert "either 'say' or 'action'" in _error(_file({"id": "a", "turns": [{"say": "x", "action": "like"}]}))
    assert "'bundle'" in _error(_file({"id": "a", "turns": [{"say": "x"}, {"action": "dislike", "bundle": 0}]}))
    assert "'action'" in _error(_file({"id": "a", "turns": [{"say": "x"}, {"action": "love", "bundle": 1}]}))
    assert "unique" in _error(_file({"id": "a", "say": "x"}, {"id": "a", "say": "y"}))
    assert "earlier turn with 'roles'" in _error(_file({"id": "a", "turns": [
        {"say": "x"}, {"say": "cheaper", "expect": {"keeps_roles": True}}]}))
    assert "earlier turn" in _error(_file({"id": "a", "say": "x", "cheaper": True}))
    assert "does not apply" in _error(_file({"id": "a", "say": "x", "min_margin": 0.3}))
    assert "does not apply" in _error(_file({"id": "m", "role": "merchandiser", "say": "x", "clarify": True}))
    assert "one theme" in _error(_file({"id": "m", "role": "merchandiser", "turns": [{"say": "x"}, {"say": "y"}]}))
    assert "belongs in a turn" in _error(_file({"id": "a", "roles": [["X"]], "turns": [{"say": "x"}]}))


def test_the_contract_example_loads():
    sf = parse_scenarios({
        "nonfood": ["DOG FOOD", "CANDLE", "GREETING CARD"],
        "scenarios": [
            {"id": "chili-night", "say": "chili for six, under $30", "food": True,
             "roles": [["CHILI", "BEANS"], ["BEEF", "TURKEY"], ["TOMATO"]],
             "exclude": ["PET "], "max_price": 30, "min_price": 10},
            {"id": "refine", "user": "guest", "turns": [
                {"say": "pasta night for two", "expect": {"roles": [["PASTA"], ["PASTA SAUCE"]]}},
                {"say": "cheaper", "expect": {"cheaper": True, "keeps_roles": True}},
                {"action": "dislike", "bundle": 1, "expect": {"not_shown_disliked": True}}]},
        ]})
    chili, refine = sf.scenarios
    assert chili.user is None and not chili.multi_turn and chili.turns[0].expect["max_price"] == 30.0
    assert refine.multi_turn and refine.turns[2].action == "dislike" and refine.turns[2].bundle == 1
    assert sf.nonfood == ("DOG FOOD", "CANDLE", "GREETING CARD")
    # A lone string role is one pattern; user ids may be numbers.
    one = parse_scenarios(_file({"id": "a", "user": 1931, "say": "x", "roles": ["CHILI"]})).scenarios[0]
    assert one.user == "1931" and one.turns[0].expect["roles"] == [["CHILI"]]


def test_defaults():
    assert effective_checks(Turn(say="pasta"), "shopper") == {"bundles_min": DEFAULT_BUNDLES_MIN}
    assert "bundles_min" not in effective_checks(Turn(say="asdf", expect={"clarify": True}), "shopper")
    assert effective_checks(Turn(action="like", bundle=1), "shopper") == {}
    assert effective_checks(Turn(say="theme"), "merchandiser", k=7) == {"ideas_min": 7}


def test_load_reports_missing_and_broken_files(tmp_path):
    with pytest.raises(ScenarioError, match="does not exist"):
        load_scenarios(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ScenarioError, match="not valid JSON"):
        load_scenarios(bad)


# ------------------------------------------------------------------------------ checks


def item(pid: str, ptype: str, price: float = 2.0, dept: str = "GROCERY", commodity: str = "") -> ItemView:
    commodity = commodity or ptype
    title = f"{ptype.title()} ({commodity.title()}), National brand"
    text = f"{title} | {dept} | {dept} > {commodity} > {ptype} | {ptype}".lower()
    return ItemView(pid, title, ptype, price, text)


def bundle(rank: int, *items: ItemView, price: float | None = None, margin: float | None = None) -> BundleView:
    total = round(sum(i.price or 0 for i in items), 2) if price is None else price
    return BundleView(rank, f"bundle {rank}", total, tuple(items), margin)


SHELLS = item("1", "MEXICAN TACO TOSTADO SHELLS", 1.8, commodity="HISPANIC")
BEEF = item("2", "LEAN", 6.0, dept="MEAT", commodity="BEEF")
SALSA = item("3", "MEXICAN SAUCESSALSAPICANTEE", 2.5, commodity="HISPANIC")
CHEESE = item("4", "SHREDDED CHEESE", 3.0, commodity="CHEESE")
DOGFOOD = item("5", "DRY DOG FOOD", 9.0, dept="DRUG GM", commodity="DOG FOODS")
TORTILLA = item("6", "MEXICAN SOFT TORTILLAS AND WRA", 2.1, commodity="HISPANIC")
CHICKEN = item("7", "CHICKEN BREAST BONELESS", 7.0, dept="MEAT", commodity="CHICKEN")


def check(name: str, value, screen: Screen):
    (result,) = run_checks(screen, {name: CHECKS[name][0](value)})
    return result


def test_bundles_min_roles_exclude_food():
    screen = Screen(shown=[bundle(1, SHELLS, BEEF, SALSA), bundle(2, SHELLS, CHEESE)], nonfood=("DOG FOODS",))
    assert not check("bundles_min", 3, screen).passed and check("bundles_min", 2, screen).passed
    assert check("roles", [["TACO", "SOFT TORTILLAS"], ["> BEEF >", "> CHICKEN >"], ["SALSA"]], screen).passed
    failed = check("roles", [["TACO"], ["> CHICKEN >"]], screen)
    assert not failed.passed and "> CHICKEN >" in failed.detail and "Lean" in failed.detail and "$" in failed.detail
    assert failed.shown and failed.shown[0]["items"][0]["product_id"] == "1"
    assert check("exclude", ["DOG FOODS"], screen).passed
    hit = check("exclude", ["shredded cheese"], screen)  # case-insensitive
    assert not hit.passed and "bundle 2" in hit.detail and "[4, $3.00]" in hit.detail
    assert check("food", True, screen).passed
    pet = Screen(shown=[bundle(1, SHELLS, DOGFOOD)], nonfood=("DOG FOODS",))
    assert not check("food", True, pet).passed and check("food", False, pet).passed


def test_prices():
    screen = Screen(shown=[bundle(1, SHELLS, BEEF, SALSA), bundle(2, SHELLS, SALSA)])  # $10.30, $4.30
    assert check("max_price", 10.30, screen).passed and not check("max_price", 10, screen).passed
    assert "over $10.00" in check("max_price", 10, screen).detail
    assert check("min_price", 10, screen).passed and not check("min_price", 11, screen).passed
    unknown = Screen(shown=[BundleView(1, "no price", None, (SHELLS,))])
    assert not check("max_price", 100, unknown).passed


def test_distinct():
    lookalikes = Screen(shown=[bundle(1, SHELLS, BEEF, SALSA), bundle(2, SHELLS, BEEF, SALSA)])
    result = check("distinct", True, lookalikes)
    assert not result.passed and "Jaccard 1.00" in result.detail
    alternatives = Screen(shown=[bundle(1, SHELLS, BEEF, SALSA), bundle(2, TORTILLA, CHICKEN, SALSA)])
    assert check("distinct", True, alternatives).passed  # 1 shared type of 5: 0.2
    assert not check("distinct", 0.1, alternatives).passed
    assert check("distinct", False, lookalikes).passed


def test_clarify_and_text():
    asks = Screen(shown=[], text="Dinner, snacks or breakfast? For how many?", asks=True)
    answers = Screen(shown=[bundle(1, SHELLS)], text="Here are a few bundles for tonight.")
    assert check("clarify", True, asks).passed and not check("clarify", True, answers).passed
    assert "no question" in check("clarify", True, answers).detail
    assert check("clarify", False, answers).passed and not check("clarify", False, asks).passed
    assert check("text_excludes", ["free today"], answers).passed
    assert not check("text_excludes", ["TONIGHT"], answers).passed


def test_cheaper_pricier_changed_keeps_roles():
    before = [bundle(1, SHELLS, BEEF, SALSA)]  # $10.30
    cheaper = Screen(shown=[bundle(1, SHELLS, CHICKEN, price=8.0)], before=before,
                     earlier_roles=[["TACO"], ["> BEEF >"]])
    assert check("cheaper", True, cheaper).passed and not check("pricier", True, cheaper).passed
    assert check("changed", True, cheaper).passed
    kept = check("keeps_roles", True, cheaper)
    assert not kept.passed and "earlier role" in kept.detail and "> BEEF >" in kept.detail
    same = Screen(shown=before, before=before, earlier_roles=[["TACO"], ["> BEEF >"]])
    assert not check("cheaper", True, same).passed and not check("changed", True, same).passed
    assert check("keeps_roles", True, same).passed
    first = Screen(shown=before)
    assert "nothing was on screen" in check("cheaper", True, first).detail


def test_not_shown_disliked_and_shows_liked():
    disliked = bundle(1, SHELLS, BEEF, SALSA)
    again = Screen(shown=[bundle(2, SHELLS, SALSA, BEEF)], disliked={disliked.key})  # same items, new rank
    assert not check("not_shown_disliked", True, again).passed
    gone = Screen(shown=[bundle(1, TORTILLA, CHICKEN)], disliked={disliked.key})
    assert check("not_shown_disliked", True, gone).passed
    assert check("shows_liked", True, Screen(shown=[bundle(1, TORTILLA, BEEF)], liked={"2"})).passed
    assert not check("shows_liked", True, Screen(shown=[bundle(1, TORTILLA)], liked={"2"})).passed
    assert not check("shows_liked", True, Screen(shown=[bundle(1, TORTILLA)])).passed


def test_similar_to():
    before = [bundle(1, SHELLS, BEEF), bundle(2, TORTILLA, CHICKEN, SALSA)]
    near = Screen(shown=[bundle(1, TORTILLA, CHICKEN, CHEESE)], before=before)  # 2 of 3 types
    far = Screen(shown=[bundle(1, TORTILLA, CHEESE, BEEF)], before=before)  # 1 of 3
    assert check("similar_to", 2, near).passed and not check("similar_to", 2, far).passed
    assert "no bundle 3" in check("similar_to", 3, near).detail


def test_chips_budget_servings():
    screen = Screen(shown=[bundle(1, SHELLS)], chips=["tacos", "under $25.00", "serves 4", "no dairy"],
                    applied={"budget": 25.0, "servings": 4})
    assert check("chips", True, screen).passed and check("chips", ["$25", "DAIRY"], screen).passed
    assert not check("chips", ["drink"], screen).passed
    assert check("no_chips", ["vegan"], screen).passed and not check("no_chips", ["$25"], screen).passed
    assert not check("chips", True, Screen(shown=[])).passed
    assert check("budget", 25, screen).passed and not check("budget", None, screen).passed
    assert check("budget", None, Screen(shown=[], applied={"budget": None})).passed
    assert check("servings", 4, screen).passed and not check("servings", 2, screen).passed


def test_differs_from_user():
    mine = [bundle(1, SHELLS, BEEF)]
    screen = Screen(shown=mine, other_user=lambda uid: [bundle(1, TORTILLA, CHICKEN)])
    assert check("differs_from_user", "1297", screen).passed
    same = Screen(shown=mine, other_user=lambda uid: [bundle(1, BEEF, SHELLS)])
    assert "user 1297 was shown the same" in check("differs_from_user", "1297", same).detail


def test_merchandiser_checks():
    ideas = Screen(shown=[bundle(1, SHELLS, SALSA, margin=0.31), bundle(2, TORTILLA, BEEF, margin=0.28)])
    assert check("ideas_min", 2, ideas).passed and not check("ideas_min", 5, ideas).passed
    assert check("min_margin", 0.28, ideas).passed
    low = check("min_margin", 0.30, ideas)
    assert not low.passed and "0.28" in low.detail and "bundle 2" in low.detail
    assert check("items_min", 2, ideas).passed and not check("items_min", 3, ideas).passed
    assert check("items_max", 2, ideas).passed and not check("items_max", 1, ideas).passed


def test_a_check_that_raises_is_a_failure_not_a_crash():
    (result,) = run_checks(Screen(shown=[bundle(1, SHELLS)]), {"roles": None})
    assert not result.passed and "raised" in result.detail


# --------------------------------------------------------------------------- public set


def test_public_set_validates_and_covers_the_issues():
    sf = load_scenarios(PUBLIC)
    shopper = [s for s in sf.scenarios if s.role == "shopper"]
    merch = [s for s in sf.scenarios if s.role == "merchandiser"]
    assert len(shopper) >= 60 and sum(s.multi_turn for s in shopper) >= 25 and len(merch) >= 15
    used = {k for s in sf.scenarios for t in s.turns for k in t.expect}
    # every conversation behaviour and merchandiser check has scenarios
    assert used >= {"roles", "exclude", "food", "max_price", "min_price", "distinct", "clarify", "cheaper",
                    "keeps_roles", "not_shown_disliked", "differs_from_user", "chips", "no_chips", "budget",
                    "servings", "changed", "pricier", "similar_to", "shows_liked", "min_margin", "items_max"}
    assert {t.action for s in shopper for t in s.turns} >= {None, "like", "dislike", "cart"}
    assert any(s.user for s in shopper) and any(s.user is None for s in shopper)
    says = " | ".join(t.say or "" for s in sf.scenarios for t in s.turns).lower()
    for phrase in ("vegan", "vegetarian", "gluten-free", "dairy-free", "nut-free", "peanut allergy", "keto",
                   "low-sugar", "add a drink", "add a dessert", "without", "no meat", "sin queso", "cheaper",
                   "healthier", "bigger", "for 6 instead", "more like bundle 2", "undo", "start over",
                   "something for tonight", "asdf qwerty", "p-fake at $1", "pasta para dos",
                   "cena vegana para dos", "clean", "baby", "margin at least"):
        assert phrase in says, phrase


def _cj_catalogue_texts() -> pd.DataFrame:
    """The Complete Journey products that were ever sold (the ones with a price), with the
    catalogue's title/department/category/type fields, built the way the loader builds them."""
    from retrieval.sources import _cj_table, cj_titles

    raw = _cj_table("products")
    sold = set(_cj_table("transactions")["product_id"].unique())
    raw = raw[raw["product_id"].isin(sold)]
    dept = raw["department"].astype("string").fillna("").str.strip()
    category = (dept + " > " + raw["product_category"].astype("string").fillna("") + " > "
                + raw["product_type"].astype("string").fillna(""))
    return pd.DataFrame({"title": cj_titles(raw), "department": dept, "category": category,
                         "product_type": raw["product_type"].astype("string").fillna("")})


def test_every_public_pattern_matches_real_products():
    sf = load_scenarios(PUBLIC)
    assert len(product_patterns(sf)) > 500
    assert unmatched_patterns(sf, _cj_catalogue_texts()) == []


def test_a_pattern_no_product_has_is_reported():
    sf = parse_scenarios(_file({"id": "a", "say": "x", "roles": [["SPAGHETTI", "UNOBTAINIUM"]]}))
    catalogue = pd.DataFrame({"title": ["Spaghetti Dry (Dry Noodles/Pasta)"], "department": ["GROCERY"],
                              "category": ["GROCERY > DRY NOODLES/PASTA > SPAGHETTI DRY"],
                              "product_type": ["SPAGHETTI DRY"]})
    assert unmatched_patterns(sf, catalogue) == [("a turn 1 roles", "UNOBTAINIUM")]


# ----------------------------------------------------------------------- end to end


def test_cli_rejects_a_bad_file_naming_the_key(tmp_path, capsys):
    from assistant.cli import main

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_file({"id": "oops", "say": "pasta", "max_prise": 10})))
    rc = main(["eval", "--protocol", "shopper-scenarios", "--scenarios", str(bad), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "'max_prise'" in err and "'oops'" in err
    assert main(["eval", "--protocol", "shopper-scenarios", "--out", str(tmp_path)]) == 2
    assert "--scenarios" in capsys.readouterr().err


def test_a_scenario_runs_through_a_real_conversation(cj_assistant, tmp_path):
    """Rule variant on the 5-household slice: the runner's screens are what the app's
    Conversation shows, the report holds every check with its outcome, and a disliked
    bundle is tracked by its items."""
    from assistant.conversation import Conversation
    from assistant.feedback import FeedbackStore

    path = tmp_path / "tiny.json"
    path.write_text(json.dumps({"nonfood": ["DOG FOODS"], "scenarios": [
        {"id": "pasta", "turns": [
            {"say": "pasta dinner for two", "expect": {"food": True, "roles": [["PASTA", "NOODLES", "SPAGHETTI"]],
                                                       "max_price": 1000}},
            {"action": "dislike", "bundle": 1, "reason": "not for me"},
            {"say": "cheaper", "expect": {"not_shown_disliked": True, "cheaper": True}},
        ]},
        {"id": "household", "user": "1", "say": "snacks", "bundles_min": 1, "differs_from_user": "2"},
    ]}))
    report = run_scenarios(path, variants=["rule"], out=tmp_path / "out", assistant=cj_assistant)
    assert (tmp_path / "out" / "shopper-scenarios.json").exists()
    md = (tmp_path / "out" / "shopper-scenarios.md").read_text()
    assert "| rule |" in md and "checks by kind" in md
    rule = report["variants"]["rule"]
    assert rule["scenarios"] == 2 and report["multi_turn_count"] == 1
    # 4 checks on turn 1 (with the default bundles_min), 3 on turn 3, 2 on the household
    assert rule["checks"] == 9 and set(rule["by_check"]) == {
        "bundles_min", "food", "roles", "max_price", "not_shown_disliked", "cheaper", "differs_from_user"}
    assert rule["checks_passed"] == sum(e["passed"] for e in rule["by_check"].values())
    assert len(rule["failures"]) == rule["checks"] - rule["checks_passed"]
    for f in rule["failures"]:
        assert f["detail"] and f["check"] and f["scenario"] in ("pasta", "household")
    pasta = next(r for r in rule["scenario_results"] if r["id"] == "pasta")
    assert [t["turn"] for t in pasta["transcript"]] == [1, 2, 3]
    # The first screen is exactly what the chat shows for the same session.
    with FeedbackStore(tmp_path / "fb.sqlite") as store:
        conv = Conversation(cj_assistant, store, use_llm=False, session_id="scenario:pasta:rule")
        reply = list(conv.turn("pasta dinner for two"))[-1]
    shown = [[i["product_id"] for i in b["items"]] for b in pasta["transcript"][0]["shown"]]
    assert shown == [b.item_ids for b in reply.bundles] and shown


def test_the_llm_variant_reports_valid_before_repair(cj_slice_dir, embedder, tmp_path):
    """With the LLM on, every proposal it makes is counted: bundles proposed, those valid
    before repair, and the rate the decoding issue's bar reads; rules alone ask it nothing."""
    from fakes import ScriptedLLM

    from assistant.service import BundleAssistant
    from retrieval.config import Settings

    llm = ScriptedLLM()
    assistant = BundleAssistant(Settings(data_dir=cj_slice_dir, chroma_url=None), llm=llm, embedder=embedder)
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps({"scenarios": [
        {"id": "pasta", "turns": [{"say": "pasta dinner for two"}, {"say": "cheaper"}]}]}))
    report = run_scenarios(path, variants=["rule", "llm+rule"], out=tmp_path / "out", assistant=assistant)
    rule, both = report["variants"]["rule"]["llm"], report["variants"]["llm+rule"]["llm"]
    assert rule == {"calls": 0, "proposed": 0, "valid_before_repair": 0, "valid_before_repair_rate": None,
                    "kept": 0, "fallbacks": 0}
    assert both["calls"] == llm.structured_calls == 2  # one proposal per said turn
    assert both["proposed"] == 4  # the scripted model proposes two bundles a call
    assert 0 <= both["valid_before_repair"] <= both["proposed"]
    assert both["valid_before_repair_rate"] == round(both["valid_before_repair"] / 4, 4)
    md = (tmp_path / "out" / "shopper-scenarios.md").read_text()
    assert "LLM valid before repair" in md and f"{both['valid_before_repair']}/4" in md
