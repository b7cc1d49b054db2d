"""The Gradio app end to end through ``gradio_client``: launched on 127.0.0.1 over the
real Complete Journey slice, rules only except for the one LLM streaming test."""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pandas as pd
import pytest
from gradio_client import Client

import app
from assistant.constraints import expand_exclusions, mentions
from assistant.feedback import FeedbackStore
from assistant.llm import flatten_content
from retrieval.config import OBJECTIVE_COMPONENTS
from retrieval.profiles import guest_profile
from conftest import free_port

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
            assert item["price"] == round(float(row["price"]), 2)  # catalogue price, not model text
            assert mentions(f"{row['title']} {row['category']} {row['brand']}", terms) is None


def test_personas_are_real_households_with_a_line_each(shop):
    assert [p.key for p in shop.personas][-1] == app.GUEST_KEY
    keys = households(shop)
    assert keys[0] == "1" and sorted(keys) == ["1", "2", "3", "4", "5"]  # demographics first
    one = shop.personas[0]
    assert one.label == "Household 1" and "2 Adults No Kids" in one.description and "·" in one.description


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
    assert "under $15.00" in out[UNDERSTOOD] and "no dairy" in out[UNDERSTOOD]

    cart_view, cart = c.predict("1", api_name="/add_to_cart_1")
    assert cart["total"] == pytest.approx(first["bundle_price"]) and cart["count"] == 1
    assert f"${first['bundle_price']:.2f}" in cart_view
    cart_view, cart = c.predict("1", api_name="/add_to_cart_1")
    assert cart["total"] == pytest.approx(2 * first["bundle_price"], abs=0.011)

    prices = [b["bundle_price"] for b in data["bundles"]]
    cheaper = c.predict("1", api_name="/cheaper")[BUNDLES]
    cap = round(0.8 * statistics.median(prices), 2)
    assert_allowed(shop, cheaper["bundles"], cap, ["dairy"])
    assert cheaper["constraints"]["budget"] == pytest.approx(cap)


def test_reply_streams_text_before_cards(shop):
    job = client(shop).submit("breakfast for two", app.GUEST_KEY, api_name="/chat")
    updates = list(job)
    phases = [u[BUNDLES]["phase"] for u in updates]
    assert phases[0] == "thinking" and phases[-1] == "final"
    first_text = next(i for i, u in enumerate(updates) if u[BUNDLES]["text"])
    first_card = next(i for i, u in enumerate(updates) if u[BUNDLES]["bundles"])
    assert first_text < first_card
    assert flatten_content(updates[0][CHAT][-1]["content"]) == "…"
    assert updates[-1][BUNDLES]["profile_summary"] == guest_profile("x").summary


def test_empty_message_gets_a_polite_answer(shop):
    out = client(shop).predict("   ", "2", api_name="/chat")
    assert out[BUNDLES]["bundles"] == [] and "Tell me what you're shopping for" in out[BUNDLES]["text"]


def test_thumbs_and_reasons_are_recorded_under_a_pseudonym(shop):
    c = client(shop)
    data = c.predict("snacks", "3", api_name="/chat")[BUNDLES]
    assert len(data["bundles"]) >= 2
    reason, note = c.predict("=too salty", "3", api_name="/dislike_2")
    assert reason == "" and "Noted" in note
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
        assert f"no {words[i]}" in data["understood"]
        assert not any(f"no {w}" in data["understood"] for w in words if w != words[i])
        assert_allowed(shop, data["bundles"], r["budget"], [words[i]])
        if data["bundles"]:
            cart = r["cart"]
            assert cart["count"] == 1 and len(cart["lines"]) == 1
            assert cart["lines"][0]["bundle_key"] == "+".join(sorted(
                i["product_id"] for i in data["bundles"][0]["items"]))
    assert sum(bool(r["data"]["bundles"]) for r in results) >= 8


def test_merchandiser_refuses_unauthenticated_calls(shop):
    c = client(shop)
    args = ("back-to-school lunch", *WEIGHTS, 0.0, None, None, None, [], "", "", 5)
    with pytest.raises(Exception, match="Sign in"):
        c.predict(*args, api_name="/merch_generate")
    with pytest.raises(Exception, match="Sign in"):
        c.predict("juice", api_name="/merch_search")
    assert c.predict("merch", "wrong", api_name="/merch_login") == "Wrong user name or password."
    assert c.predict("", "", api_name="/merch_login") == "Wrong user name or password."
    with pytest.raises(Exception, match="Sign in"):
        c.predict(*args, api_name="/merch_generate")
    # signing in is per session: another client's sign-in does not open this one
    other = client(shop)
    other.predict(*CREDS, api_name="/merch_login")
    with pytest.raises(Exception, match="Sign in"):
        c.predict(*args, api_name="/merch_generate")


def test_merchandiser_gets_the_scored_table_plot_and_csv(shop):
    c = client(shop)
    assert "Signed in" in c.predict(*CREDS, api_name="/merch_login")
    hits = c.predict("pasta", api_name="/merch_search")
    pin = str(hits["data"][0][0])
    table, plot, csv_path, status = c.predict(
        "pasta dinner", 0.2, 0.2, 0.5, 0.1, 0.15, 30.0, None, None, ["GROCERY"], pin, "", 8,
        api_name="/merch_generate")
    frame = pd.DataFrame(table["data"], columns=table["headers"])
    assert len(frame) >= 1 and "bundles" in status
    for name in (*OBJECTIVE_COMPONENTS, "redundancy"):
        assert name in frame and f"{name}_contribution" in frame
    contributions = frame[[f"{n}_contribution" for n in (*OBJECTIVE_COMPONENTS, "redundancy")]].sum(axis=1)
    assert (contributions - frame["score"]).abs().max() < 1e-3
    assert (frame["margin_rate"] >= 0.15 - 1e-9).all() and (frame["bundle_price"] <= 30).all()
    assert frame["margin_contribution"].iloc[0] == pytest.approx(frame["margin"].iloc[0] * 0.5, abs=1e-3)
    catalogue = shop.assistant.index.catalogue
    for ids in frame["product_ids"]:
        assert pin in ids.split()
        assert all(catalogue.at[p, "department"] == "GROCERY" for p in ids.split())
    exported = pd.read_csv(csv_path, dtype={"product_ids": str})
    assert list(exported.columns) == list(frame.columns) and len(exported) == len(frame)
    points = pd.DataFrame(plot["data"], columns=plot["columns"])
    assert {"preference", "margin"} <= set(points.columns) and len(points) == len(frame)
    assert points["margin"].tolist() == frame["margin"].tolist()
    assert c.predict(api_name="/merch_logout") == "Signed out."
    with pytest.raises(Exception, match="Sign in"):
        c.predict("x", api_name="/merch_search")


def test_merchandiser_tab_is_off_without_credentials(cj_assistant, tmp_path):
    check = app.check_credentials
    assert not check(None, "", "") and not check(("a", "b"), "a", "") and check(("a", "b"), "a", "b")
    demo = app.build_app(cj_assistant, use_llm=False, personas=[app.GUEST],
                         feedback=FeedbackStore(tmp_path / "f.sqlite"), merch_credentials=None)
    url = app.launch(demo, port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        c = Client(url, verbose=False)
        assert "off" in c.predict("", "", api_name="/merch_login")
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
