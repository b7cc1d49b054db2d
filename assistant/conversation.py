"""One shopper's chat session: what they asked for, what they were shown, their cart.

A :class:`Conversation` turns a chat message into a streamed reply:

1. the message is read once (:meth:`BundleAssistant.understand`) and handed to the
   session state machine (:mod:`assistant.nlu.session`): a new need, or a refinement of
   the need under way ("add a drink", "sin queso", "cheaper", "healthier", "for 6
   instead", "more like bundle 2", "undo", "start over"). Every refinement is a chip that
   :meth:`Conversation.remove_chip` or :meth:`Conversation.undo` takes back;
2. a message with nothing to shop for ("something for tonight", "asdf", "🍕🍕🍕") gets
   one short question with suggestion chips, never guessed bundles;
3. rule-based bundles are computed on a worker thread while a short intro streams; the
   cards follow, built only from :class:`Recommendation` data. When nothing fits, the
   reply asks instead ("Nothing fits under $1. Raise the budget to $12?");
4. with the LLM on, its proposals are merged in and the reranked cards replace the
   first ones when they differ. The model's text passes :func:`~assistant.grounding.ground_reply`
   and every card's model note :func:`~assistant.grounding.grounded_reason`.

Each step yields a complete :class:`Reply` (not a delta), so a UI just redraws it.
Feedback is the session's own: "Not for me" takes that bundle (its exact item set) off
the screen for the rest of the session and demotes its distinctive items and their
product types; likes and cart adds boost their items. It is read once per turn and
applies to every pass (rules, LLM merge, fallbacks). Every event is also recorded in the
:class:`FeedbackStore` under a pseudonym. :meth:`Conversation.clear` forgets the need,
its constraints, what was shown and the session's feedback (the cart stays).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from prompts import examples, fence, render
from retrieval.profiles import UserProfile, guest_profile
from retrieval.schema import Constraints

from .constraints import ParsedMessage, expand_exclusions, mentions, sanitize_message
from .feedback import FeedbackEvent, FeedbackStore, SessionSignal
from .grounding import ground_reply, grounded_reason, product_vocabulary, template_reply
from .nlu import session as sm
from .nlu.need import Need
from .nlu.parser import chips as need_chips
from .privacy import guest_pseudonym
from .service import BundleAssistant, Recommendation, ServiceError, ShownBundle

log = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 500
MAX_REASON_CHARS = 300
DEFAULT_CARDS = 3
MAX_HISTORY_SETS = 20  # bundle sets kept for look-backs
INTRO_MAX_TOKENS = 40
INTRO_TIMEOUT_S = 6.0
INTRO_MAX_CHARS = 220
# Words held back before the first intro text is shown: enough to catch a model that
# opens with a refusal ("I'm sorry, ...") before the shopper sees it.
INTRO_HOLD_WORDS = 3
EMPTY_MESSAGE_REPLY = (
    "Tell me what you're shopping for — for example “taco night for four under $25, no dairy” "
    "or “a quick breakfast”."
)
# One short question for a message with nothing to shop for, and its suggestion chips.
CLARIFY_QUESTION = "Dinner, snacks or breakfast? For how many?"
CLARIFY_KIND = "Dinner, snacks or breakfast?"
CLARIFY_SUGGESTIONS = ("Dinner for two", "Snacks for a party of 6", "Breakfast for four")
START_OVER_QUESTION = "Starting over. What are you shopping for?"
MAX_DISMISSED_EXTRA = 6  # extra bundles asked for so that dismissed ones can be left out
FALLBACK_INTRO = "Here are a few bundles I put together for you."
LLM_BUSY_NOTE = "The assistant's language model is busy with other shoppers; showing rule-based bundles."
ERROR_REPLY = "Sorry, something went wrong while I was looking for bundles. Please try again."

# A small model's intro is dropped (the deterministic sentence is used instead) when it
# refuses, talks about itself, or states numbers or prices the cards might contradict.
_BAD_INTRO = re.compile(
    r"\b(?:sorry|apologi[sz]e|as an ai|language model|assistant|i can'?t|i cannot|cannot|"
    r"unable|designed to|confusion|order(?:s|ing)?)\b|[$\d<>{}\[\]`]",
    re.IGNORECASE,
)
_SENTENCE_END = re.compile(r"[.!?](?:\s|$)")

Phase = Literal["thinking", "intro", "cards", "final"]


# --------------------------------------------------------------------------------- cart


MAX_LINE_QUANTITY = 99  # one line of the cart; more is a typo, not a shopping trip


class CartLine(BaseModel):
    bundle_key: str
    name: str
    items: list[dict[str, Any]]  # product_id, title, price (catalogue prices)
    list_price: float | None
    bundle_price: float | None
    savings: float | None
    quantity: int = 1

    @property
    def line_total(self) -> float | None:
        return None if self.bundle_price is None else round(self.bundle_price * self.quantity, 2)


class Cart(BaseModel):
    lines: list[CartLine] = Field(default_factory=list)

    def add(self, bundle: ShownBundle) -> CartLine:
        key = bundle_key(bundle)
        for line in self.lines:
            if line.bundle_key == key:
                line.quantity += 1
                return line
        line = CartLine(
            bundle_key=key, name=self._distinct_name(bundle.name),
            items=[i.model_dump() for i in bundle.items],
            list_price=bundle.list_price, bundle_price=bundle.bundle_price, savings=bundle.savings,
        )
        self.lines.append(line)
        return line

    def _distinct_name(self, name: str) -> str:
        """Two different bundles may share a name ("Energy Drink bundle"); the second one
        in the cart becomes "Energy Drink bundle (2)" so that lines can be told apart."""
        taken = {line.name for line in self.lines}
        if name not in taken:
            return name
        n = 2
        while f"{name} ({n})" in taken:
            n += 1
        return f"{name} ({n})"

    def line(self, number: int) -> CartLine:
        """A line by its 1-based position in the cart."""
        if not 1 <= number <= len(self.lines):
            raise IndexError(f"the cart has no line {number}; it has {len(self.lines)}")
        return self.lines[number - 1]

    def remove(self, number: int) -> CartLine:
        """Take line ``number`` (1-based) out of the cart and return it."""
        line = self.line(number)
        self.lines.remove(line)
        return line

    def set_quantity(self, number: int, quantity: int) -> CartLine | None:
        """Set line ``number``'s quantity (1..MAX_LINE_QUANTITY); 0 or less removes the line
        (returns None)."""
        line = self.line(number)
        if quantity <= 0:
            self.lines.remove(line)
            return None
        line.quantity = min(int(quantity), MAX_LINE_QUANTITY)
        return line

    def clear(self) -> None:
        self.lines.clear()

    @property
    def total(self) -> float:
        return round(sum(line.line_total or 0.0 for line in self.lines), 2)

    @property
    def savings(self) -> float:
        return round(sum((line.savings or 0.0) * line.quantity for line in self.lines), 2)

    @property
    def count(self) -> int:
        return sum(line.quantity for line in self.lines)

    def as_dict(self) -> dict[str, Any]:
        return {"lines": [{**line.model_dump(), "line_total": line.line_total} for line in self.lines],
                "total": self.total, "savings": self.savings, "count": self.count}


def bundle_key(bundle: ShownBundle) -> str:
    """The same item set is the same bundle, whatever its name or rank."""
    return "+".join(sorted(bundle.item_ids))


# -------------------------------------------------------------------------------- reply


@dataclass(frozen=True)
class ReplyChip:
    """One chip under the reply. ``id`` is set for a refinement (removable with
    :meth:`Conversation.remove_chip`); ``None`` for a part of the request itself."""

    label: str
    id: int | None = None
    kind: str = "need"

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "label": self.label, "kind": self.kind}


@dataclass
class Reply:
    """The whole reply so far; every yield of :meth:`Conversation.turn` is one."""

    phase: Phase
    text: str = ""  # the intro, the question asked, or a polite answer when there are no bundles
    bundles: list[ShownBundle] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # quiet notes (LLM fallback, ...), each said once a session
    understood: list[str] = field(default_factory=list)  # the chips' labels: "tacos", "for 4", "+ drink"
    profile_summary: str = ""
    intro_source: Literal["llm", "fallback", "template", ""] = ""
    recommendation: Recommendation | None = None
    done: bool = False
    chips: list[ReplyChip] = field(default_factory=list)
    question: str = ""  # set when the reply asks the shopper something instead of answering
    suggestions: list[str] = field(default_factory=list)  # answers to offer as chips (send one as a message)
    need: Need | None = None  # what the answer was computed for

    def as_dict(self) -> dict[str, Any]:
        rec = self.recommendation
        return {
            "phase": self.phase,
            "done": self.done,
            "text": self.text,
            "bundles": [b.model_dump() for b in self.bundles],
            "notes": list(self.notes),
            "understood": list(self.understood),
            "chips": [c.as_dict() for c in self.chips],
            "question": self.question,
            "suggestions": list(self.suggestions),
            "need": self.need.model_dump() if self.need is not None else None,
            "profile_summary": self.profile_summary,
            "intro_source": self.intro_source,
            "constraints": rec.constraints.model_dump() if rec else None,
            "mode": rec.mode if rec else None,
            "llm": rec.llm.model_dump() if rec else None,
        }


# --------------------------------------------------------------- optional LLM extraction


class ExtractedConstraints(BaseModel):
    """What the LLM may add to the deterministic parse (see :func:`merge_extraction`)."""

    budget: float | None = None
    servings: int | None = None
    exclude: list[str] = Field(default_factory=list, max_length=4)


def merge_extraction(parsed: ParsedMessage, extracted: ExtractedConstraints) -> ParsedMessage:
    """Add the LLM's reading only where the parser found nothing, and only with evidence
    in the message itself: a budget or head count must appear as that number, and an
    exclusion word must appear within a few words after a negative cue ("hates",
    "allergic", "no", ...). A 135M model is a hint, never the authority on a hard
    constraint."""
    text = parsed.text.lower()
    numbers = {float(n.replace(",", "")) for n in re.findall(r"\d[\d,]*(?:\.\d+)?", text)}
    update: dict[str, Any] = {}
    if parsed.budget is None and extracted.budget and extracted.budget in numbers:
        update["budget"] = float(extracted.budget)
    if (parsed.servings is None and extracted.servings and float(extracted.servings) in numbers
            and extracted.servings != extracted.budget):
        update["servings"] = int(extracted.servings)
    extra = []
    for word in extracted.exclude:
        word = fence(word, 30).lower().strip()
        if word and word not in parsed.exclusions and _negated(text, word):
            extra.append(word)
    if extra:
        exclusions = [*parsed.exclusions, *extra]
        update["exclusions"] = exclusions
        update["exclude_terms"] = expand_exclusions(exclusions, parsed.diets)
    return parsed.model_copy(update=update) if update else parsed


_NEGATIVE_CUE = re.compile(
    r"\b(?:no|not|never|without|hates?|hated|dislikes?|allergic|allergy|intolerant|avoid|avoids|"
    r"except|skip|don'?t|doesn'?t|can'?t|won'?t|free)\b"
)


def _negated(text: str, word: str, window: int = 5) -> bool:
    """``word`` occurs in ``text`` with a negative cue among the ``window`` words before it."""
    words = re.findall(r"[a-z0-9'$.-]+", text)
    for i, w in enumerate(words):
        if mentions(w, [word]) and _NEGATIVE_CUE.search(" ".join(words[max(0, i - window):i])):
            return True
    return False


def extract_with_llm(llm: Any, text: str, timeout_s: float = 4.0) -> ExtractedConstraints | None:
    """The constraint_extraction prompt, constrained to :class:`ExtractedConstraints`.
    None when the model fails, times out or answers with invalid JSON."""
    from .llm import LLMError

    try:
        result = llm.generate_structured(
            render("constraint_extraction", message=fence(text, MAX_MESSAGE_CHARS)),
            ExtractedConstraints, max_new_tokens=48, timeout_s=timeout_s,
        )
    except LLMError as exc:
        log.info("LLM extraction skipped: %s", exc)
        return None
    return result.parsed


# --------------------------------------------------------------------------- intro text

def fallback_intro(understood: list[str]) -> str:
    """The deterministic intro: used with the LLM off, busy, failing or off-topic."""
    if not understood:
        return FALLBACK_INTRO
    return f"Here are a few bundles for {', '.join(understood)}."


def _clean_intro(text: str) -> str:
    text = " ".join(text.split())
    end = _SENTENCE_END.search(text)
    if end:
        text = text[: end.end()].strip()
    return text[:INTRO_MAX_CHARS]


def _llm_busy(llm: Any) -> bool:
    # Another session is generating: waiting for it would blow the first-text target,
    # so the intro falls back at once instead.
    busy = getattr(llm, "busy", None)
    if isinstance(busy, bool):
        return busy
    lock = getattr(llm, "_lock", None)
    return bool(lock is not None and lock.locked())


def intro_messages(request: str) -> list[dict[str, str]]:
    """The reply_intro prompt with its worked examples (``prompts/reply_intro.examples.json``)
    as few-shot turns. Without them SmolLM2-135M answers most requests with "I'm sorry for
    your loss, but as a grocery shopping assistant..."; with them it writes a usable
    one-liner most of the time."""
    system, user = render("reply_intro", request=fence(request, 300) or "some bundle ideas")
    shots: list[dict[str, str]] = []
    for example, answer in examples("reply_intro"):
        shots += [render("reply_intro", request=example)[1], {"role": "assistant", "content": answer}]
    return [system, *shots, user]


def stream_intro(llm: Any, request: str, timeout_s: float = INTRO_TIMEOUT_S,
                 max_new_tokens: int = INTRO_MAX_TOKENS) -> Iterator[str]:
    """Yield the intro so far (cumulative text), one sentence at most.

    Raises ValueError when the model's text is unusable (a refusal, numbers, prices,
    cut off), and :class:`~assistant.llm.LLMError` when the model fails; the caller
    falls back to :func:`fallback_intro`.
    """
    messages = intro_messages(request)
    text = ""
    stream = llm.stream(messages, max_new_tokens=max_new_tokens, timeout_s=timeout_s)
    try:
        for chunk in stream:
            text += chunk
            if _BAD_INTRO.search(text):
                raise ValueError(f"unusable intro: {text!r}")
            complete = _SENTENCE_END.search(text) is not None
            if len(text.split()) > INTRO_HOLD_WORDS or complete:
                yield _clean_intro(text)
            if complete or len(text) >= INTRO_MAX_CHARS:
                break
    finally:
        stream.close()  # stops generation after the current token
    final = _clean_intro(text)
    if len(final.split()) < 3 or not _SENTENCE_END.search(final):
        raise ValueError(f"intro too short or cut off: {final!r}")  # e.g. the time limit hit
    yield final


#CONVERSATION#
