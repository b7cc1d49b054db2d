"""The Gradio app end to end through ``gradio_client``: launched on 127.0.0.1 over the
real Complete Journey slice, rules only except for the one LLM streaming test."""

from __future__ import annotations

import html
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from conftest import free_port
from gradio_client import Client

import app
from assistant.constraints import expand_exclusions, mentions
from assistant.feedback import FeedbackStore
from assistant.llm import flatten_content
from assistant.pricing import to_cents
from retrieval.config import OBJECTIVE_COMPONENTS
from retrieval.profiles import guest_profile

CREDS = ("merch", "correct-horse-battery")
# /chat returns (chatbot, bundles json, cleared textbox, understood html, card 1..3)
CHAT, BUNDLES, UNDERSTOOD, CARD1 = 0, 1, 3, 4
WEIGHTS = (0.4, 0.25, 0.2, 0.15)  # preference, complementarity, margin, sales


@pytest.fixture(scope="module")
def shop(cj_assistant, tmp_path_factory):
    store = FeedbackStore(tmp_path_factory.mktemp("app-feedback") / "feedback.sqlite")
    personas = app.discover_personas(cj_assistant, n=5)
    demo = app.build_app(cj_assistant, use_llm=False, personas=personas, feedback=store,
                         merch_credentials=CREDS)
    url = app.launch(demo, port=free_port(), prevent_thread_lock=True, quiet=True)
    yield SimpleNamespace(url=url, store=store, personas=personas, assistant=cj_assistant)
    demo.close()
    store.close()


def client(shop) -> Client:
    return Client(shop.url, verbose=False)


def households(shop) -> list[str]:
    return [p.key for p in shop.personas if p.key != app.GUEST_KEY]


def assert_allowed(shop, bundles: list[dict], budget: float, excluded_words: list[str]) -> None:
    catalogue = shop.assistant.index.catalogue
    terms = expand_exclusions(excluded_words)
    for b in bundles:
        assert b["bundle_price"] <= budget + 1e-9
        for item in b["items"]:
            row = catalogue.loc[item["product_id"]]
            assert item["price"] == to_cents(float(row["price"]))  # catalogue price (half up), not model text
            assert mentions(f"{row['title']} {row['category']} {row['brand']}", terms) is None


def test_personas_start_with_a_guest_then_demo_shoppers(shop):
    # the default is a guest: a visitor never silently shops as (and trains) a household
    assert shop.personas[0] == app.GUEST
    keys = households(shop)
    assert keys[0] == "1" and sorted(keys) == ["1", "2", "3", "4", "5"]  # demographics first
    one = shop.personas[1]
    assert one.label == "Demo shopper (household 1)"
    assert "2 Adults No Kids" in one.description and "·" in one.description
    assert all(p.label == f"Demo shopper (household {p.key})" for p in shop.personas[1:])


def test_shopper_turn_meets_budget_and_exclusions_and_fills_the_cart(shop):
    c = client(shop)
    out = c.predict("pasta night under $15, no dairy", "1", api_name="/chat")
    data = out[BUNDLES]
    assert data["done"] and data["phase"] == "final" and data["bundles"]
    assert data["profile_summary"] == shop.assistant.profile("1").summary
    assert_allowed(shop, data["bundles"], 15, ["dairy"])
    first = data["bundles"][0]
    chat = flatten_content(out[CHAT][-1]["content"])
    assert data["text"].split(".")[0] in chat and f"${first['bundle_price']:.2f}" in chat
    card = out[CARD1]
    assert 'class="ba-card"' in card and f"${first['bundle_price']:.2f}" in card
    assert all(f"${i['price']:.2f}" in card for i in first["items"]) and "Why this bundle" in card
    assert "under $15" in out[UNDERSTOOD] and "no dairy" in out[UNDERSTOOD]

    cart_view, cart = c.predict("1", api_name="/add_to_cart_1")
    assert cart["total"] == pytest.approx(first["bundle_price"]) and cart["count"] == 1
    assert f"${first['bundle_price']:.2f}" in cart_view
    cart_view, cart = c.predict("1", api_name="/add_to_cart_1")
    assert cart["total"] == pytest.approx(2 * first["bundle_price"], abs=0.011)

    # "cheaper" keeps the roles and caps the price 20% under the top bundle; a removable
    # chip says the cap. When nothing fits, it asks (with a budget to tap) instead.
    top = data["bundles"][0]["bundle_price"]
    cheaper = c.predict("1", api_name="/cheaper")[BUNDLES]
    refinements = [ch["label"] for ch in cheaper["chips"] if ch["id"] is not None]
    assert len(refinements) == 1 and refinements[0].startswith("under $")
    cap = float(refinements[0].removeprefix("under $"))
    assert math.floor(top * 80) / 100 <= cap < top
    if cheaper["bundles"]:
        assert_allowed(shop, cheaper["bundles"], cap, ["dairy"])
    else:
        assert cheaper["question"].startswith(f"Nothing fits under ${cap:.2f}")
        assert cheaper["suggestions"][0].startswith("Raise the budget to $")
        tapped = c.predict("1", api_name="/suggestion_1")
        assert user_said(tapped[CHAT])[-1] == cheaper["suggestions"][0]  # the chip sent its own text
        assert_allowed(shop, tapped[BUNDLES]["bundles"], float(cheaper["suggestions"][0].split("$")[1]), ["dairy"])


def test_reply_streams_text_before_cards(shop):
    job = client(shop).submit("breakfast for two", app.GUEST_KEY, api_name="/chat")
    updates = list(job)
    phases = [u[BUNDLES]["phase"] for u in updates]
    assert phases[0] == "thinking" and phases[-1] == "final"
    first_text = next(i for i, u in enumerate(updates) if u[BUNDLES]["text"])
    first_card = next(i for i, u in enumerate(updates) if u[BUNDLES]["bundles"])
    assert first_text < first_card
    # the first update says at once what was understood, before any model runs
    assert flatten_content(updates[0][CHAT][-1]["content"]) == "*Looking for breakfast, for 2…*"
    assert updates[-1][BUNDLES]["profile_summary"] == guest_profile("x").summary


def test_blank_message_is_ignored(shop):
    c = client(shop)
    out = c.predict("   ", "2", api_name="/chat")
    assert out[CHAT] == [] and out[BUNDLES] == {}  # no bubble, no reply
    first = c.predict("pasta night", "2", api_name="/chat")
    assert first[BUNDLES]["bundles"]
    again = c.predict(" \n ", "2", api_name="/chat")
    # the chat and the cards stay exactly as they were: no empty bubble, nothing hidden
    assert again[CHAT] == first[CHAT] and again[BUNDLES] == first[BUNDLES]
    assert again[CARD1] == first[CARD1] and 'class="ba-card"' in again[CARD1]


def user_said(chat: list[dict]) -> list[str]:
    return [flatten_content(m["content"]) for m in chat if m["role"] == "user"]


def chips_of(data: dict) -> list[tuple[int | None, str]]:
    return [(c["id"], c["label"]) for c in data["chips"]]


def test_a_refinement_is_a_chip_that_can_be_taken_back(shop):
    c = client(shop)
    first = c.predict("taco night for four, under $25, no dairy", app.GUEST_KEY, api_name="/chat")[BUNDLES]
    assert all(i is None for i, _ in chips_of(first)) and "under $25" in first["understood"]
    more = c.predict("add a drink", app.GUEST_KEY, api_name="/chat")[BUNDLES]
    removable = [(i, label) for i, label in chips_of(more) if i is not None]
    assert removable == [(removable[0][0], "+ drink")]
    assert "drink" in more["need"]["add_roles"]
    out = c.predict(app.GUEST_KEY, api_name="/remove_chip_1")
    back = out[BUNDLES]
    assert all(i is None for i, _ in chips_of(back)) and back["need"]["add_roles"] == []
    assert user_said(out[CHAT])[-1] == "Undo “+ drink”"
    assert back["constraints"]["budget"] == 25 and "no dairy" in back["understood"]  # the rest stays


def test_clear_forgets_the_need_constraints_and_feedback(shop):
    c = client(shop)
    before = c.predict("pasta night under $15, no dairy", app.GUEST_KEY, api_name="/chat")[BUNDLES]
    assert before["constraints"]["budget"] == 15
    c.predict("", app.GUEST_KEY, api_name="/dislike_1")
    cleared = c.predict(app.GUEST_KEY, api_name="/clear")
    assert cleared[CHAT] == [] and cleared[BUNDLES]["bundles"] == [] and cleared[BUNDLES]["chips"] == []
    again = c.predict("pasta night under $15, no dairy", app.GUEST_KEY, api_name="/chat")[BUNDLES]

    def keys(data: dict) -> list[str]:
        return ["+".join(sorted(i["product_id"] for i in b["items"])) for b in data["bundles"]]

    assert keys(again) == keys(before)  # the dislike went with the session's feedback
    c.predict(app.GUEST_KEY, api_name="/clear")
    after = c.predict("pasta night", app.GUEST_KEY, api_name="/chat")[BUNDLES]
    assert after["constraints"]["budget"] is None and "no dairy" not in after["understood"]
    assert after["constraints"]["exclude"] == [] and after["bundles"]


def test_a_vague_message_gets_a_question_with_suggestions_to_tap(shop):
    c = client(shop)
    out = c.predict("something for tonight", app.GUEST_KEY, api_name="/chat")[BUNDLES]
    assert out["bundles"] == [] and out["question"] and "?" in out["text"]
    assert len(out["suggestions"]) >= 2
    tapped = c.predict(app.GUEST_KEY, api_name="/suggestion_1")
    assert user_said(tapped[CHAT])[-1] == out["suggestions"][0]
    assert tapped[BUNDLES]["bundles"]


def test_not_for_me_takes_the_bundle_off_the_screen_for_the_session(shop):
    c = client(shop)
    data = c.predict("snacks", "2", api_name="/chat")[BUNDLES]
    assert len(data["bundles"]) >= 2
    gone = "+".join(sorted(i["product_id"] for i in data["bundles"][0]["items"]))
    c.predict("", "2", api_name="/dislike_1")
    later = c.predict("snacks", "2", api_name="/chat")[BUNDLES]
    assert later["bundles"] and gone not in ["+".join(sorted(i["product_id"] for i in b["items"]))
                                             for b in later["bundles"]]


def test_cards_show_display_titles_with_the_raw_title_kept(shop):
    out = client(shop).predict("taco night for four", app.GUEST_KEY, api_name="/chat")
    catalogue = shop.assistant.index.catalogue
    card = out[CARD1]
    for item in out[BUNDLES]["bundles"][0]["items"]:
        display, raw = catalogue.at[item["product_id"], "display_title"], item["title"]
        assert f'title="{html.escape(raw, quote=True)}">{html.escape(display, quote=True)}</span>' in card


def test_thumbs_and_reasons_are_recorded_under_a_pseudonym(shop):
    c = client(shop)
    data = c.predict("snacks", "3", api_name="/chat")[BUNDLES]
    assert len(data["bundles"]) >= 2
    reason, note = c.predict("=too salty", "3", api_name="/dislike_2")
    assert reason == "" and "Noted — removed" in note and "won't come back" in note
    reason, note = c.predict("", "3", api_name="/like_1")
    assert "Glad you like" in note
    events = shop.store.events(shop.assistant.user_key("3"))
    assert list(events["event"])[-3:] == ["dislike", "reason", "like"]
    assert events.iloc[-2]["reason"] == "=too salty"
    assert set(events.iloc[-3]["product_ids"]) == {i["product_id"] for i in data["bundles"][1]["items"]}
    assert "3" not in set(shop.store.events()["user_pseudo"])


def test_actions_before_any_bundle_are_refused_politely(shop):
    c = client(shop)
    _, cart = c.predict("4", api_name="/add_to_cart_1")
    assert cart["count"] == 0
    reason, note = c.predict("why", "4", api_name="/like_1")
    assert reason == "why" and "no bundles on screen" in note


def test_switching_persona_starts_a_fresh_session(shop):
    c = client(shop)
    c.predict("pasta night", "1", api_name="/chat")
    c.predict("1", api_name="/add_to_cart_1")
    out = c.predict("2", api_name="/set_persona")
    chat, bundles, cart, info = out[0], out[1], out[-2], out[-1]
    assert chat == [] and bundles == {} and cart["count"] == 0
    assert info == next(p.description for p in shop.personas if p.key == "2")
    data = c.predict("pasta night", "2", api_name="/chat")[BUNDLES]
    assert data["profile_summary"] == shop.assistant.profile("2").summary


def exclusion_chip(word: str) -> str:
    """The chip of "no WORD": the singular ("no chips" -> "no chip"), and a diet where one
    says it ("no sugar" -> "low-sugar"), as the parser reads them."""
    return {"chips": "no chip", "sugar": "low-sugar"}.get(word, f"no {word}")


def test_ten_concurrent_sessions_each_get_their_own_persona(shop):
    guests = [app.GUEST_KEY] * 5
    personas = households(shop) + guests
    words = ["dairy", "bread", "chips", "pasta", "sugar", "meat", "cheese", "coffee", "soup", "juice"]

    def session(i: int) -> dict:
        c = client(shop)
        budget = 10 + 2 * i
        data = c.predict(f"something for dinner under ${budget}, no {words[i]}", personas[i],
                         api_name="/chat")[BUNDLES]
        cart = c.predict(personas[i], api_name="/add_to_cart_1")[1] if data["bundles"] else None
        return {"i": i, "budget": budget, "data": data, "cart": cart}

    with ThreadPoolExecutor(max_workers=10) as pool:
        results = list(pool.map(session, range(10)))

    guest_summary = guest_profile("x").summary
    for r in results:
        i, data = r["i"], r["data"]
        persona = personas[i]
        expected = guest_summary if persona == app.GUEST_KEY else shop.assistant.profile(persona).summary
        assert data["profile_summary"] == expected
        assert data["constraints"]["budget"] == r["budget"]
        assert exclusion_chip(words[i]) in data["understood"]
        assert not any(exclusion_chip(w) in data["understood"] for w in words if w != words[i])
        assert_allowed(shop, data["bundles"], r["budget"], [words[i]])
        if data["bundles"]:
            cart = r["cart"]
            assert cart["count"] == 1 and len(cart["lines"]) == 1
            assert cart["lines"][0]["bundle_key"] == "+".join(sorted(
                i["product_id"] for i in data["bundles"][0]["items"]))
    assert sum(bool(r["data"]["bundles"]) for r in results) >= 8


def merch_args(theme: str, *, weights=WEIGHTS, min_margin=0.0, max_price=0, min_unit=0, max_unit=0, depts=(),
               pins="", excludes="", k=5, max_items=0) -> tuple:
    """/merch_generate's inputs, in the page's order."""
    return (theme, *weights, min_margin, max_price, min_unit, max_unit, list(depts), pins, excludes, k, max_items)


def sign_in(c: Client, user: str = CREDS[0], password: str = CREDS[1]) -> str:
    status, password_box = c.predict(user, password, api_name="/merch_login")
    assert password_box == ""  # the password never stays in its field, right or wrong
    return status


def test_merchandiser_refuses_unauthenticated_calls(shop):
    c = client(shop)
    args = merch_args("back-to-school lunch")
    with pytest.raises(Exception, match="Sign in"):
        c.predict(*args, api_name="/merch_generate")
    with pytest.raises(Exception, match="Sign in"):
        c.predict("juice", api_name="/merch_search")
    assert sign_in(c, "merch", "wrong") == "Wrong user name or password."
    assert sign_in(c, "", "") == "Wrong user name or password."
    with pytest.raises(Exception, match="Sign in"):
        c.predict(*args, api_name="/merch_generate")
    # signing in is per session: another client's sign-in does not open this one
    other = client(shop)
    assert "Signed in" in sign_in(other)
    with pytest.raises(Exception, match="Sign in"):
        c.predict(*args, api_name="/merch_generate")


MERCH_OUT = ("chips", "table", "caption", "plot", "csv", "json", "status", "min_margin", "max_price", "max_items")


def generate(c: Client, *args) -> SimpleNamespace:
    return SimpleNamespace(**dict(zip(MERCH_OUT, c.predict(*args, api_name="/merch_generate"))))


def test_merchandiser_theme_margin_becomes_a_chip_a_field_and_a_floor(shop):
    c = client(shop)
    sign_in(c)
    out = generate(c, *merch_args("back-to-school lunch bundles, margin at least 30%", k=5))
    assert "margin ≥ 30%" in out.chips and out.min_margin == pytest.approx(0.30)  # chip and prefilled field
    frame = pd.DataFrame(out.table["data"], columns=out.table["headers"])
    assert len(frame) >= 2 and (frame["margin_after_discount"] >= 0.30 - 1e-9).all()
    for name in (*OBJECTIVE_COMPONENTS, "redundancy", "baskets_two_plus", "attach_rate_est"):
        assert name in frame
    catalogue = shop.assistant.index.catalogue
    for products, ids in zip(frame["products"], frame["product_ids"]):
        shown = [catalogue.at[p, "display_title"] for p in ids.split()]
        assert products == " · ".join(shown)  # display titles, in item order
    assert "estimate" in out.caption and "loaded history" in out.caption
    assert "ideas** from" in out.status
    exported = pd.read_csv(out.csv, dtype={"product_ids": str})
    assert set(exported.columns) == {*frame.columns, "roles"} and len(exported) == len(frame)
    assert exported["product_ids"].tolist() == frame["product_ids"].tolist()
    data = json.loads(Path(out.json).read_text())
    assert [i["rank"] for i in data["ideas"]] == frame["rank"].tolist()
    # a margin typed in the console wins over the theme's words, and its chip says so
    edited = generate(c, *merch_args("back-to-school lunch bundles, margin at least 30%", min_margin=0.35, k=3))
    frame = pd.DataFrame(edited.table["data"], columns=edited.table["headers"])
    assert "margin ≥ 35% (set here)" in edited.chips and "margin ≥ 30%" not in edited.chips
    assert (frame["margin_after_discount"] >= 0.35 - 1e-9).all()


def test_merchandiser_plot_covers_every_candidate_with_honest_axes(shop):
    c = client(shop)
    sign_in(c)
    out = generate(c, *merch_args("pasta dinner", weights=(0.2, 0.2, 0.5, 0.1), max_price=30.0, k=4))
    frame = pd.DataFrame(out.table["data"], columns=out.table["headers"])
    assert (frame["bundle_price"] <= 30).all()
    plot = out.plot
    points = pd.DataFrame(plot["value"]["data"], columns=plot["value"]["columns"])
    assert len(points) > len(frame)  # all candidates, not only the ideas
    assert (points["kind"] == "chosen idea").sum() == len(frame)
    assert plot["x_lim"][0] == 0 and plot["y_lim"] == [0.0, 1.0]
    assert f"all {len(points)} candidate bundles" in plot["title"]


def test_merchandiser_errors_are_plain_words(shop):
    c = client(shop)
    sign_in(c)
    with pytest.raises(Exception, match="Set at least one objective weight above 0") as info:
        c.predict(*merch_args("pasta dinner", weights=(0, 0, 0, 0)), api_name="/merch_generate")
    assert "pydantic" not in str(info.value)
    with pytest.raises(Exception, match="Unknown product id"):
        c.predict(*merch_args("pasta dinner", pins="no-such-id"), api_name="/merch_generate")
    hits = c.predict("pasta", api_name="/merch_search")
    assert {"product_id", "title", "display_title", "price"} <= set(hits["headers"])
    assert c.predict(api_name="/merch_logout") == "Signed out."
    with pytest.raises(Exception, match="Sign in"):
        c.predict("x", api_name="/merch_search")


def test_sign_in_backs_off_after_five_failures(cj_assistant, tmp_path):
    """The page's answer to the 6th wrong guess is a wait, in words; the right password
    is refused too while it lasts (it is not even checked)."""
    demo = app.build_app(cj_assistant, use_llm=False, personas=[app.GUEST],
                         feedback=FeedbackStore(tmp_path / "f.sqlite"), merch_credentials=CREDS)
    url = app.launch(demo, port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        c = Client(url, verbose=False)
        answers = [sign_in(c, "merch", f"guess-{i}") for i in range(6)]
        assert answers[:4] == ["Wrong user name or password."] * 4
        assert "Too many failed sign-ins: try again in" in answers[4]
        assert answers[5].startswith("Too many failed sign-ins: try again in ")  # refused, not checked
        assert "Too many failed sign-ins" in sign_in(c)
        assert not any(w in " ".join(answers) for w in ("Traceback", "Error", "throttle", "127.0.0.1"))
    finally:
        demo.close()


def test_merchandiser_tab_is_off_without_credentials(cj_assistant, tmp_path):
    check = app.check_credentials
    assert not check(None, "", "") and not check(("a", "b"), "a", "") and check(("a", "b"), "a", "b")
    demo = app.build_app(cj_assistant, use_llm=False, personas=[app.GUEST],
                         feedback=FeedbackStore(tmp_path / "f.sqlite"), merch_credentials=None)
    url = app.launch(demo, port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        c = Client(url, verbose=False)
        assert "off" in sign_in(c, "", "")
        with pytest.raises(Exception, match="off"):
            c.predict("x", api_name="/merch_search")
    finally:
        demo.close()


@pytest.mark.llm
def test_real_llm_intro_streams_before_the_cards(cj_assistant, tmp_path):
    demo = app.build_app(cj_assistant, use_llm=True, personas=[app.GUEST],
                         feedback=FeedbackStore(tmp_path / "f.sqlite"))
    url = app.launch(demo, port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        c = Client(url, verbose=False)
        start = time.perf_counter()
        job = c.submit("a quick healthy breakfast", app.GUEST_KEY, api_name="/chat")
        seen = [(time.perf_counter() - start, u[BUNDLES]) for u in job]
    finally:
        demo.close()
    phases = [d["phase"] for _, d in seen]
    assert "intro" in phases and "cards" in phases and phases[-1] == "final"
    assert phases.index("intro") < phases.index("cards")
    intro = [d for _, d in seen if d["phase"] == "intro"]
    assert intro[-1]["text"] and intro[-1]["intro_source"] in ("llm", "fallback")
    if intro[-1]["intro_source"] == "llm":
        text = intro[-1]["text"]
        assert text[-1] in ".!?" and not any(ch.isdigit() or ch == "$" for ch in text)
        if len(text.split()) >= 6:  # shown from the 4th word on, so it grew over several updates
            assert len({d["text"] for d in intro}) >= 2
    final = seen[-1][1]
    assert final["bundles"] and final["mode"] == "llm+rule" and final["llm"]["used"]
    first_text = next(t for t, d in seen if d["text"])
    first_card = next(t for t, d in seen if d["bundles"])
    assert first_text < first_card
    print(f"LLM app turn: first text {first_text:.2f}s, first card {first_card:.2f}s, "
          f"done {seen[-1][0]:.2f}s, intro from {intro[-1]['intro_source']}")
