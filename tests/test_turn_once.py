"""A chat turn with the LLM on retrieves once: the LLM pass reuses the rule pass's
:class:`~assistant.service.Retrieved` instead of repeating retrieval, and the answer is
the one two full ``recommend`` calls give."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakes import ScriptedLLM

from assistant.conversation import Conversation, bundle_key
from assistant.feedback import FeedbackStore
from assistant.llm import ChatModel
from assistant.service import BundleAssistant, Retrieved
from retrieval.config import Settings

HOUSEHOLD = "1"  # in the 5-household slice
MESSAGE = "pasta night for two"


def assistant_over(data_dir: Path, embedder) -> tuple[BundleAssistant, ScriptedLLM]:
    llm = ScriptedLLM()
    return BundleAssistant(Settings(data_dir=data_dir, chroma_url=None), llm=llm, embedder=embedder), llm


def dumped(rec) -> list[dict]:
    return [b.model_dump() for b in rec.bundles]


def test_the_fake_is_a_chat_model():
    assert isinstance(ScriptedLLM(), ChatModel)


def test_a_chat_turn_with_the_llm_retrieves_once_and_answers_as_before(cj_slice_dir, embedder, tmp_path,
                                                                       monkeypatch):
    assistant, llm = assistant_over(cj_slice_dir, embedder)
    retriever = assistant.retriever
    calls: list[str] = []
    real_retrieve = retriever.retrieve

    def counted(*args, **kwargs):
        calls.append(str(args[0]) if args else "")
        return real_retrieve(*args, **kwargs)

    monkeypatch.setattr(retriever, "retrieve", counted)
    asked: list[dict] = []  # what the conversation asked the service for, to replay it the old way
    kept: list[Retrieved] = []
    real_service_retrieve = assistant.retrieve

    def recording(**kwargs):
        asked.append(kwargs)
        kept.append(real_service_retrieve(**kwargs))
        return kept[-1]

    monkeypatch.setattr(assistant, "retrieve", recording)
    with FeedbackStore(tmp_path / "feedback.sqlite") as store:
        conv = Conversation(assistant, store, user_id=HOUSEHOLD, use_llm=True)
        replies = list(conv.turn(MESSAGE))

    final = replies[-1]
    assert final.done and final.bundles and final.recommendation is not None
    assert len(calls) == 1, f"retrieval ran {len(calls)} times in one turn"
    assert final.recommendation.mode == "llm+rule" and llm.structured_calls == 1
    assert final.recommendation.llm.used and final.recommendation.llm.valid >= 1

    # today's path: a full recommend per pass, on an assistant nobody wrapped
    before, _ = assistant_over(cj_slice_dir, embedder)
    (options,) = asked
    rule = before.recommend(**options, mode="rule")
    merged = before.recommend(**options, mode="llm+rule")
    assert dumped(final.recommendation) == dumped(merged)
    assert [bundle_key(b) for b in final.bundles] == [bundle_key(b) for b in merged.bundles[: conv.cards]]
    cards = next(r for r in replies if r.phase == "cards")
    assert cards.recommendation is not None and dumped(cards.recommendation) == dumped(rule)


def test_passes_over_one_retrieval_are_independent(cj_assistant: BundleAssistant):
    need = cj_assistant.understand(MESSAGE)
    retrieved = cj_assistant.retrieve(user_id=HOUSEHOLD, need=need, k=3)
    before = (retrieved.candidates, [(c.product_id, c.score, list(c.reasons)) for c in retrieved.candidates],
              retrieved.constraints.model_dump(), set(retrieved.boosted), dict(retrieved.timings))
    first = cj_assistant.propose_and_rank(retrieved, "rule")
    again = cj_assistant.propose_and_rank(retrieved, "rule")
    after = (retrieved.candidates, [(c.product_id, c.score, list(c.reasons)) for c in retrieved.candidates],
             retrieved.constraints.model_dump(), set(retrieved.boosted), dict(retrieved.timings))
    assert before == after  # the record is untouched
    assert first.bundles and dumped(first) == dumped(again)
    assert dumped(first) == dumped(cj_assistant.recommend(user_id=HOUSEHOLD, need=need, k=3, mode="rule"))


def test_a_bad_mode_is_a_service_error(cj_assistant: BundleAssistant):
    from assistant.service import ServiceError

    retrieved = cj_assistant.retrieve(query="snacks", k=1)
    with pytest.raises(ServiceError):
        cj_assistant.propose_and_rank(retrieved, "nonsense")  # type: ignore[arg-type]


def test_an_unfinished_intro_gives_way_once_the_bundles_are_ready():
    from assistant.conversation import stream_intro

    llm = ScriptedLLM()
    assert list(stream_intro(llm, "pasta night", stop=lambda: False))[-1].endswith(".")
    with pytest.raises(ValueError, match="ready first"):
        list(stream_intro(llm, "pasta night", stop=lambda: True))


@pytest.mark.parametrize(("mode", "device", "holds_gil", "races"), [
    ("gpu", "cpu", False, False),  # the default: on a shared CPU the fixed intro, at once
    ("gpu", "cuda:0", False, True),
    ("always", "cpu", False, True),
    ("always", "cpu", True, False),  # a model that holds the GIL would stall the rule pass
    ("never", "cuda:0", False, False),
])
def test_the_model_intro_races_the_cards_only_where_it_can(cj_slice_dir, embedder, tmp_path, mode, device,
                                                          holds_gil, races):
    assistant, llm = assistant_over(cj_slice_dir, embedder)
    assistant.settings.llm.intro = mode
    llm.device = device
    llm.holds_gil = holds_gil  # type: ignore[attr-defined]
    with FeedbackStore(tmp_path / "f.sqlite") as store:
        conv = Conversation(assistant, store, user_id=HOUSEHOLD, use_llm=True)
        sources = {r.intro_source for r in conv.turn(MESSAGE) if r.phase == "intro"}
    assert sources == ({"llm"} if races else {"fallback"}), sources
