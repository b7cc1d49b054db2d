"""Multi-turn conversations on the real Complete Journey slice, in rule mode (fast and
deterministic); the LLM intro is exercised in test_app.py."""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np
import pytest

from assistant.constraints import EXCLUSION_GROUPS, mentions, parse_message
from assistant.conversation import (
    EMPTY_MESSAGE_REPLY,
    MAX_MESSAGE_CHARS,
    Cart,
    Conversation,
    ExtractedConstraints,
    bundle_key,
    fallback_intro,
    merge_extraction,
)
from assistant.feedback import FeedbackStore
from assistant.privacy import is_pseudonym
from assistant.service import BundleAssistant, ServiceError
from retrieval.config import LLMConfig, Settings

HOUSEHOLD = "1"  # in the 5-household slice, with demographics
DAIRY = EXCLUSION_GROUPS["dairy"]


@pytest.fixture
def store(tmp_path: Path) -> FeedbackStore:
    with FeedbackStore(tmp_path / "feedback.sqlite") as s:
        yield s


@pytest.fixture
def conv(cj_assistant: BundleAssistant, store: FeedbackStore) -> Conversation:
    return Conversation(cj_assistant, store, user_id=HOUSEHOLD, use_llm=False)


def final(conv: Conversation, message: str):
    replies = list(conv.turn(message))
    assert replies[-1].done and replies[-1].phase == "final"
    return replies[-1]


def catalogue_price(assistant: BundleAssistant, pid: str) -> float:
    return round(float(assistant.index.catalogue.at[pid, "price"]), 2)


def test_turn_streams_intro_then_cards_within_budget_and_exclusions(conv, cj_assistant):
    replies = list(conv.turn("pasta dinner under $15, no dairy"))
    phases = [r.phase for r in replies]
    assert phases[0] == "thinking" and "intro" in phases and phases[-1] == "final"
    assert all(not r.bundles for r in replies if r.phase in ("thinking", "intro"))  # text first
    reply = replies[-1]
    assert reply.text == fallback_intro(reply.understood) and reply.intro_source == "fallback"
    assert "under $15.00" in reply.understood and "no dairy" in reply.understood
    assert 1 <= len(reply.bundles) <= 3
    for b in reply.bundles:
        assert b.bundle_price <= 15
        for item in b.items:
            assert item.price == catalogue_price(cj_assistant, item.product_id)
            row = cj_assistant.index.catalogue.loc[item.product_id]
            assert mentions(f"{row['title']} {row['category']}", DAIRY) is None
    assert reply.profile_summary == cj_assistant.profile(HOUSEHOLD).summary
    assert conv.shown == reply.bundles
    # look-alikes (other SKUs of the same titles) are shown once
    looks = [tuple(sorted(i.title for i in b.items)) for b in reply.bundles]
    assert len(set(looks)) == len(looks) and [b.rank for b in reply.bundles] == list(range(1, len(looks) + 1))


def test_cheaper_goes_below_the_bundles_on_screen(conv):
    first = final(conv, "snacks for a party under $30")
    prices = [b.bundle_price for b in first.bundles]
    cheaper = final(conv, "cheaper")
    cap = round(0.8 * statistics.median(prices), 2)
    assert conv.state.budget == pytest.approx(cap)
    assert f"under ${cap:.2f}" in cheaper.understood
    assert all(b.bundle_price <= cap for b in cheaper.bundles)
    if not cheaper.bundles:  # nothing that cheap: said plainly, not a silent empty reply
        assert "No bundle" in cheaper.text


def test_exclusions_stick_across_turns_and_reset_clears_them(conv, cj_assistant):
    final(conv, "breakfast, no dairy")
    reply = final(conv, "without bread")
    assert conv.state.exclusions == ["dairy", "bread"]
    for b in reply.bundles:
        for item in b.items:
            assert mentions(item.title, ["bread", *DAIRY]) is None
    reply = final(conv, "something for lunch instead")
    assert conv.state.need == "lunch" and conv.state.exclusions == ["dairy", "bread"]
    reply = final(conv, "start over")
    assert conv.state.exclusions == [] and conv.state.budget is None and conv.state.need == ""
    assert reply.understood == []


def test_more_like_bundle_two_anchors_on_its_items(conv):
    first = final(conv, "pasta night")
    assert len(first.bundles) >= 2
    second = first.bundles[1]
    reply = final(conv, "more like bundle 2")
    assert "more like bundle 2" in reply.understood
    assert reply.bundles
    for b in reply.bundles:
        assert set(second.item_ids) <= set(b.item_ids)
    # one turn only: the next message is a fresh search again
    final(conv, "pasta night")
    assert conv.state.anchor_bundle is None


def test_more_like_a_bundle_that_is_not_there_says_so(conv):
    final(conv, "pasta night")
    reply = final(conv, "more like bundle 9")
    assert any("no bundle 9" in n for n in reply.notes)


def test_swap_replaces_that_item_and_keeps_the_rest(conv, cj_assistant):
    first = final(conv, "pasta night")
    bundle = first.bundles[0]
    target = bundle.items[-1]
    word = next(w for w in target.title.split() if len(w) > 3 and w.isalpha()).lower()
    reply = final(conv, f"swap the {word}")
    assert f"without {word}" in reply.understood
    assert reply.bundles
    kept = [i for i in bundle.item_ids if i != target.product_id and mentions(
        cj_assistant.index.catalogue.at[i, "title"], [word]) is None]
    for b in reply.bundles:
        assert target.product_id not in b.item_ids
        assert all(mentions(i.title, [word]) is None for i in b.items)
        assert set(kept) <= set(b.item_ids)
    # the swap lasts one turn
    assert word not in conv.state.exclusions


def test_bigger_and_healthier_chips(conv):
    final(conv, "lunch")
    reply = final(conv, "bigger bundle")
    assert conv.state.bundle_size == 5
    assert any(len(b.items) > 3 for b in reply.bundles)
    reply = final(conv, "healthier")
    assert conv.state.healthy and "healthier" in reply.understood


def test_input_is_sanitised_and_empty_input_answered_politely(conv):
    for empty in ("", "   ", "\x00\x07", None):
        replies = list(conv.turn(empty))
        assert len(replies) == 1 and replies[0].text == EMPTY_MESSAGE_REPLY and not replies[0].bundles
    assert conv.turns == 0
    reply = final(conv, "pasta\x00 dinner\u202e under $12" + " very" * 400)
    assert conv.state.history[-1] == parse_message(conv.state.history[-1]).text
    assert len(conv.state.history[-1]) <= MAX_MESSAGE_CHARS and "\x00" not in conv.state.history[-1]
    assert conv.state.budget == 12 and all(b.bundle_price <= 12 for b in reply.bundles)


def test_feedback_events_are_pseudonymous_and_change_the_next_answer(conv, store):
    first = final(conv, "pasta night")
    events = store.events()
    assert list(events["event"]) == ["shown"] * len(first.bundles)
    assert set(events["user_pseudo"]) == {conv.user_pseudo} and is_pseudonym(conv.user_pseudo)
    assert HOUSEHOLD not in set(events["user_pseudo"]) | set(events["session_id"])

    disliked = first.bundles[0]
    conv.dislike(1, "too salty")
    conv.like(2)
    conv.add_to_cart(2)
    kinds = list(store.events()["event"])[len(first.bundles):]
    assert kinds == ["dislike", "reason", "like", "cart"]
    assert store.events().iloc[len(first.bundles) + 1]["reason"] == "too salty"
    # composed alternatives share role products (the same sauce); the later like keeps those
    assert set(disliked.item_ids) - set(first.bundles[1].item_ids) <= conv.demoted()
    assert set(first.bundles[1].item_ids) <= conv.boosted()

    again = final(conv, "pasta night")
    before = {bundle_key(b): b for b in first.bundles}
    after = {bundle_key(b): b for b in again.bundles}
    if bundle_key(disliked) in after:  # still shown: demoted, never promoted
        assert (after[bundle_key(disliked)].score_breakdown["preference"].value
                < before[bundle_key(disliked)].score_breakdown["preference"].value)
    liked = bundle_key(first.bundles[1])
    if liked in after:
        assert after[liked].score_breakdown["preference"].value > before[liked].score_breakdown["preference"].value
    assert again.bundles[0].item_ids != disliked.item_ids


def test_cart_totals_and_actions_on_missing_bundles(conv):
    with pytest.raises(ServiceError, match="no bundles on screen"):
        conv.add_to_cart(1)
    reply = final(conv, "pasta night")
    conv.add_to_cart(1)
    conv.add_to_cart(1)
    if len(reply.bundles) > 1:
        conv.add_to_cart(2)
    expected = 2 * reply.bundles[0].bundle_price + (reply.bundles[1].bundle_price if len(reply.bundles) > 1 else 0)
    assert conv.cart.total == pytest.approx(expected, abs=0.011)
    assert conv.cart.lines[0].quantity == 2
    assert conv.cart.as_dict()["count"] == (3 if len(reply.bundles) > 1 else 2)
    with pytest.raises(ServiceError, match="no bundle 7"):
        conv.add_to_cart(7)
    conv.clear_cart()
    assert conv.cart.total == 0 and Cart().as_dict()["lines"] == []


def test_guest_profile_comes_from_messages_and_clicks(cj_assistant, store):
    guest = Conversation(cj_assistant, store, use_llm=False)
    assert guest.is_guest and guest.user_pseudo.startswith("g-")
    assert guest.profile().preference is None  # nothing said yet
    reply = final(guest, "coffee and breakfast")
    pref = guest.profile().preference_vector()
    need = cj_assistant.embedder.encode_one("coffee breakfast")
    assert pref is not None and float(pref @ need) > 0.8
    guest.add_to_cart(1)
    carted = np.stack(list(cj_assistant.index.embeddings_of(reply.bundles[0].item_ids).values())).mean(axis=0)
    after = guest.profile().preference_vector()
    assert float(after @ carted) / np.linalg.norm(carted) > float(pref @ carted) / np.linalg.norm(carted)
    # the pseudonym is per session: two guests never share a profile or events
    other = Conversation(cj_assistant, store, use_llm=False)
    assert other.user_pseudo != guest.user_pseudo and other.profile().preference is None


def test_unavailable_llm_still_answers_with_a_quiet_note(cj_slice_dir, embedder, store):
    broken = BundleAssistant(
        Settings(data_dir=cj_slice_dir, chroma_url=None, llm=LLMConfig(model=str(cj_slice_dir / "no-such-model"))),
        embedder=embedder,
    )
    conv = Conversation(broken, store, user_id=HOUSEHOLD, use_llm=True)
    replies = list(conv.turn("pasta night"))
    assert [r.phase for r in replies][-2:] == ["cards", "final"]
    reply = replies[-1]
    assert reply.bundles and reply.intro_source == "fallback" and reply.text == fallback_intro(reply.understood)
    assert any("language model was unavailable" in n for n in reply.notes)
    assert reply.recommendation.llm.fallback


def test_llm_extraction_only_adds_what_the_message_backs():
    parsed = parse_message("dinner for my family of 5, my son hates mushrooms, 40 max please")
    hint = ExtractedConstraints(budget=40, servings=5, exclude=["mushrooms", "gluten"])
    merged = merge_extraction(parsed, hint)
    assert "mushrooms" in merged.exclusions and "gluten" not in merged.exclusions  # no evidence
    assert parsed.budget is None and merged.budget == 40  # "40 max": a form the parser lacks
    assert merged.servings == 5 and "mushroom" in merged.exclude_terms
    invented = merge_extraction(parse_message("pasta night"), ExtractedConstraints(budget=25, servings=4))
    assert invented.budget is None and invented.servings is None
    wanted = merge_extraction(parse_message("pasta with cheese"), ExtractedConstraints(exclude=["cheese"]))
    assert wanted.exclusions == []  # asked for, so never excluded
