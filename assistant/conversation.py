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
4. with the LLM on, its proposals are merged in (over the rule pass's retrieval: a turn
   retrieves once) and the reranked cards replace the first ones when they differ. The
   model's text passes :func:`~assistant.grounding.ground_reply` and every card's model
   note :func:`~assistant.grounding.grounded_reason`.

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
from .feedback import EventKind, FeedbackEvent, FeedbackStore, SessionSignal
from .grounding import (
    check_sentence,
    ground_reply,
    grounded_reason,
    grounding_context,
    product_vocabulary,
    split_sentences,
    template_reply,
)
from .nlu import session as sm
from .nlu.need import Need
from .nlu.parser import chips as need_chips
from .privacy import guest_pseudonym
from .service import BundleAssistant, Mode, Recommendation, Retrieved, ServiceError, ShownBundle

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
# "cheaper" with nothing 20% under the top bundle: caps tried next, as shares of its price
CHEAPER_RETRY_FACTORS = (0.9, 1.0)
CHEAPEST_NOTE = "That is about as cheap as this gets with every part of the meal kept."
# A message that asks for other bundles of the same need ("other options", "something else")
_OTHERS_RE = re.compile(
    r"\b(?:other|different|more|new)\s+(?:options|bundles|ideas|choices|suggestions)\b|\bsomething else\b|"
    r"\b(?:show|give) me (?:more|others|other ones)\b|\botras opciones\b|\balgo (?:más|mas|diferente|distinto)\b",
    re.IGNORECASE)
REFINE_QUESTION = "What should I change? For example “cheaper”, “add a drink” or “for 6 instead”."
REFINE_SUGGESTIONS = ("Cheaper", "Add a drink", "Other options")
NO_OTHERS_NOTE = "Those are all the bundles I have for this. Try a change, like “cheaper” or “add a drink”."
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
    update = _backed_numbers(text, parsed.budget, parsed.servings, extracted)
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


def _backed_numbers(text: str, budget: float | None, servings: int | None,
                    extracted: ExtractedConstraints) -> dict[str, Any]:
    """The LLM's budget and head count, each only where the parser found none and only
    when ``text`` holds that very number (a number the model made up is no constraint)."""
    numbers = {float(n.replace(",", "")) for n in re.findall(r"\d[\d,]*(?:\.\d+)?", text)}
    update: dict[str, Any] = {}
    if budget is None and extracted.budget and extracted.budget in numbers:
        update["budget"] = float(extracted.budget)
    if (servings is None and extracted.servings and float(extracted.servings) in numbers
            and extracted.servings != extracted.budget):
        update["servings"] = int(extracted.servings)
    return update


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


_YES = re.compile(r"(?i)(yes|yeah|yep|ok(ay)?|sure|please|yes please|do it|go ahead|s[ií])[.!]*")


def searching_text(understood: list[str]) -> str:
    """The line shown while the bundles are being put together."""
    return f"Looking for {', '.join(understood)}…" if understood else "Looking for bundles…"


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
                 max_new_tokens: int = INTRO_MAX_TOKENS, stop: Callable[[], bool] | None = None) -> Iterator[str]:
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
            if stop is not None and stop() and not _SENTENCE_END.search(text):
                raise ValueError("the bundles were ready first")
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


# -------------------------------------------------------------------------- feedback


@dataclass
class SessionFeedback:
    """What this session's shopper said about bundles, in memory (the store keeps the
    events; this is what the next answers read, once per turn)."""

    liked: dict[str, None] = field(default_factory=dict)  # product ids, in order
    carted: dict[str, None] = field(default_factory=dict)
    dismissed: set[str] = field(default_factory=set)  # bundle keys: never shown again this session
    demoted: set[str] = field(default_factory=set)  # product ids and product types

    def boosted(self) -> set[str]:
        return set(self.liked) | set(self.carted)

    def snapshot(self) -> SessionFeedback:
        return SessionFeedback(dict(self.liked), dict(self.carted), set(self.dismissed), set(self.demoted))


def _type_of(catalogue: Any, pid: str) -> str:
    if pid in catalogue.index:
        return str(catalogue.at[pid, "product_type"] or "").strip()
    return ""


_VOCABULARY: dict[int, frozenset[str]] = {}
_VOCABULARY_LOCK = threading.Lock()


def _vocabulary(assistant: BundleAssistant) -> frozenset[str]:
    """The catalogue's product words for grounding, built once per catalogue (~0.5 s)."""
    catalogue = assistant.index.catalogue
    with _VOCABULARY_LOCK:
        key = id(catalogue)
        if key not in _VOCABULARY:
            _VOCABULARY[key] = product_vocabulary(catalogue)
        return _VOCABULARY[key]


# -------------------------------------------------------------------------- conversation


@dataclass
class _Search:
    """One turn's search: the need with its hard constraints and anchors."""

    need: Need
    constraints: Constraints
    anchors: tuple[str, ...]
    query: str
    chips: list[ReplyChip]
    message: str
    intro_request: str
    notes: list[str] = field(default_factory=list)
    skip: set[str] = field(default_factory=set)  # bundle keys left out this turn only ("other options")


@dataclass
class _Answer:
    """A turn answered without a search: a question, or a note about the screen."""

    text: str
    chips: list[ReplyChip]
    question: bool = True
    suggestions: list[str] = field(default_factory=list)
    bundles: list[ShownBundle] = field(default_factory=list)
    need: Need | None = None


class Conversation:
    """One session. Not shared between sessions; safe for a session's concurrent
    events (a cart click while a reply streams) through one lock."""

    def __init__(
        self,
        assistant: BundleAssistant,
        feedback: FeedbackStore,
        *,
        user_id: str | None = None,
        use_llm: bool = True,
        llm_intro: bool | None = None,
        llm_extraction: bool = False,
        cards: int = DEFAULT_CARDS,
        intro_timeout_s: float = INTRO_TIMEOUT_S,
        session_id: str | None = None,
    ):
        self.assistant = assistant
        self.feedback = feedback
        self.use_llm = use_llm
        self.llm_intro = use_llm if llm_intro is None else llm_intro
        self.llm_extraction = llm_extraction
        self.cards = cards
        self.intro_timeout_s = intro_timeout_s
        self.session_id = session_id or uuid.uuid4().hex
        data_dir = assistant.settings.data_dir
        # The raw id is used here, to fetch the profile and hash it, and then dropped.
        self.is_guest = user_id is None
        if user_id is None:
            self._profile: UserProfile | None = None
            self.user_pseudo = guest_pseudonym(self.session_id, data_dir=data_dir)
        else:
            self._profile = assistant.profile(str(user_id))
            self.user_pseudo = assistant.user_key(str(user_id))
        self.session = sm.reset()  # the need and its refinements (assistant.nlu.session)
        self.shown: list[ShownBundle] = []  # the bundles on screen now, in rank order
        self.history: list[list[ShownBundle]] = []  # every set shown, oldest first
        self.cart = Cart()
        self.turns = 0
        self.session_feedback = SessionFeedback()
        self._need_texts: list[str] = []  # guest messages that said what they want
        self._said: set[str] = set()  # notes already printed this session
        self._pending: dict[str, sm.AskAction] = {}  # the last question's answers, by label
        self._held: Need | None = None  # constraints said before any topic ("for 6", "vegan")
        self._lock = threading.RLock()

    # -- state ---------------------------------------------------------------------

    @property
    def need(self) -> Need | None:
        """The need under way (None before the first request)."""
        return self.session.need if self.session.base is not None else None

    @property
    def chips(self) -> list[ReplyChip]:
        """The request's chips, then one per refinement (removable)."""
        return _chips_of(self.session)

    def clear(self) -> Reply:
        """The chat's Clear: forget the need, its constraints, what was shown and this
        session's feedback. The cart stays."""
        with self._lock:
            self._forget()
            return Reply(phase="final", text=START_OVER_QUESTION, question=START_OVER_QUESTION,
                         suggestions=list(CLARIFY_SUGGESTIONS), profile_summary=self.profile_summary, done=True)

    def _forget(self) -> None:
        self.session = sm.reset()
        self.shown = []
        self.history = []
        self.session_feedback = SessionFeedback()
        self._need_texts.clear()
        self._said.clear()
        self._pending = {}
        self._held = None

    # -- profile and feedback --------------------------------------------------------

    @property
    def profile_summary(self) -> str:
        return self._profile.summary if self._profile else guest_profile("guest").summary

    def signal(self) -> SessionSignal:
        """The store's view of this session's events (analytics; the answers read
        :attr:`session_feedback`, which Clear resets)."""
        return self.feedback.session_signal(self.session_id)

    def boosted(self, fb: SessionFeedback | None = None) -> set[str]:
        return (fb or self.session_feedback).boosted()

    def demoted(self, fb: SessionFeedback | None = None) -> set[str]:
        """Disliked bundles' distinctive products and their product types."""
        return set((fb or self.session_feedback).demoted)

    def profile(self, fb: SessionFeedback | None = None) -> UserProfile:
        """A persona's stored profile, or a guest's profile from this session: the
        messages that said what they want, and (weighted higher) what they liked or
        put in the cart."""
        if self._profile is not None:
            return self._profile
        fb = fb or self.session_feedback
        texts = self._need_texts[-8:]
        messages = self.assistant.embedder.encode(texts) if texts else None
        clicked_ids = list(dict.fromkeys([*fb.carted, *fb.liked]))
        vectors = self.assistant.index.embeddings_of(clicked_ids)
        clicked = np.stack(list(vectors.values())) if vectors else None
        return guest_profile(f"guest-{self.session_id}", messages, clicked)

    def _record(self, event: EventKind, bundle: ShownBundle | None = None, reason: str = "",
                payload: dict[str, Any] | None = None, product_ids: list[str] | None = None) -> None:
        try:
            self.feedback.record(FeedbackEvent(
                session_id=self.session_id, user_pseudo=self.user_pseudo, event=event,
                bundle_key=bundle_key(bundle) if bundle else "",
                product_ids=product_ids if product_ids is not None else (bundle.item_ids if bundle else []),
                reason=reason, payload=payload or {},
            ))
        except Exception:  # feedback must never break the chat
            log.exception("could not record a %s event", event)

    # -- actions on shown bundles ----------------------------------------------------

    def bundle(self, number: int) -> ShownBundle:
        """A bundle on screen by its 1-based number (-1: the last one)."""
        with self._lock:
            if not self.shown:
                raise ServiceError("There are no bundles on screen yet — ask me for some first.")
            if number == -1:
                return self.shown[-1]
            if not 1 <= number <= len(self.shown):
                raise ServiceError(f"There is no bundle {number}; I'm showing {len(self.shown)}.")
            return self.shown[number - 1]

    def add_to_cart(self, number: int) -> CartLine:
        with self._lock:
            bundle = self.bundle(number)
            line = self.cart.add(bundle)
            self._record("cart", bundle, payload={"rank": bundle.rank, "bundle_price": bundle.bundle_price,
                                                  "quantity": line.quantity})
            self._boost(bundle, carted=True)
            return line

    def like(self, number: int, reason: str = "") -> ShownBundle:
        return self._thumb("like", number, reason)

    def dislike(self, number: int, reason: str = "") -> ShownBundle:
        """"Not for me": the bundle leaves the screen and is never shown again this
        session; its distinctive products and their types are demoted."""
        return self._thumb("dislike", number, reason)

    def _thumb(self, kind: EventKind, number: int, reason: str) -> ShownBundle:
        with self._lock:
            bundle = self.bundle(number)
            self._record(kind, bundle, payload={"rank": bundle.rank, "score": bundle.score})
            reason = sanitize_message(reason, MAX_REASON_CHARS)
            if reason:
                self._record("reason", bundle, reason=reason, payload={"about": kind})
            if kind == "dislike":
                self._dismiss(bundle)
            else:
                self._boost(bundle)
            return bundle

    def _boost(self, bundle: ShownBundle, carted: bool = False) -> None:
        fb = self.session_feedback
        target = fb.carted if carted else fb.liked
        catalogue = self.assistant.index.catalogue
        for pid in bundle.item_ids:
            target[pid] = None
            fb.demoted.discard(pid)
            fb.demoted.discard(_type_of(catalogue, pid))
        fb.dismissed.discard(bundle_key(bundle))

    def _dismiss(self, bundle: ShownBundle) -> None:
        """Demote what set this bundle apart: its products that no other bundle on screen
        holds (the pasta of three pasta bundles is not what was disliked), and their
        product types unless another bundle on screen has that type too."""
        fb = self.session_feedback
        key = bundle_key(bundle)
        fb.dismissed.add(key)
        catalogue = self.assistant.index.catalogue
        others = {pid for b in self.shown if bundle_key(b) != key for pid in b.item_ids}
        other_types = {_type_of(catalogue, pid) for pid in others}
        kept = fb.boosted()
        for pid in bundle.item_ids:
            fb.liked.pop(pid, None)
            if pid in others or pid in kept:
                continue
            fb.demoted.add(pid)
            kind = _type_of(catalogue, pid)
            if kind and kind not in other_types:
                fb.demoted.add(kind)
        self.shown = [b for b in self.shown if bundle_key(b) != key]

    def clear_cart(self) -> None:
        with self._lock:
            self.cart.clear()

    # -- a turn ----------------------------------------------------------------------

    def turn(self, message: str) -> Iterator[Reply]:
        """Stream the reply to one chat message (see the module docstring). A blank
        message is ignored: nothing is yielded and nothing changes."""
        text = sanitize_message(message, MAX_MESSAGE_CHARS)
        if not text:
            return
        yield from self._run(lambda: self._understand(text))

    def undo(self) -> Iterator[Reply]:
        """Take back the last refinement (or go back to the previous request)."""
        yield from self._run(lambda: self._after(sm.undo(self.session), "undo"))

    def remove_chip(self, chip_id: int) -> Iterator[Reply]:
        """Take back one refinement chip; the others stay."""
        def change() -> _Search | _Answer:
            state = sm.remove_chip(self.session, int(chip_id))
            return self._after(sm.Turn(state=state, kind="remove_chip"), f"remove chip {chip_id}")
        yield from self._run(change)

    def _run(self, understand: Callable[[], _Search | _Answer]) -> Iterator[Reply]:
        try:
            with self._lock:
                self.turns += 1
                step = understand()
            if isinstance(step, _Answer):
                yield self._answer(step)
            else:
                yield from self._search(step)
        except Exception:
            log.exception("chat turn failed")
            yield Reply(phase="final", text=ERROR_REPLY, profile_summary=self.profile_summary, done=True)

    def _answer(self, a: _Answer) -> Reply:
        return Reply(phase="final", text=a.text, bundles=list(a.bundles), chips=a.chips,
                     understood=[c.label for c in a.chips], question=a.text if a.question else "",
                     suggestions=list(a.suggestions), profile_summary=self.profile_summary, need=a.need,
                     intro_source="template", done=True)

    # -- understanding ----------------------------------------------------------------

    def _understand(self, text: str) -> _Search | _Answer:
        action = self._pending.get(text.casefold())
        if action is None and self._pending and _YES.fullmatch(text.strip()):
            action = next(iter(self._pending.values()))  # "yes" to a question: its first answer
        if action is not None:  # a suggestion chip of the last question
            self._pending = {}
            state = sm.apply_action(self.session, action)
            return self._after(sm.Turn(state=state, kind="refine"), text)
        self._pending = {}
        parsed = self._read(text)
        shown = sm.Shown.from_bundles(self.shown, self.assistant.index.catalogue)
        turn = sm.handle(self.session, text, parsed=parsed, shown=shown)
        if turn.reset:
            self._forget()
            if turn.kind == "reset":
                return _Answer(START_OVER_QUESTION, [], suggestions=list(CLARIFY_SUGGESTIONS))
        unclear = parsed.nonsense or (parsed.vague and not (parsed.occasion or parsed.include or parsed.add_roles))
        if turn.kind == "new_need" and unclear:
            self._hold(parsed)
            return self._clarify(parsed)
        if turn.kind == "none" and not turn.notes:
            if self.session.base is None:
                return self._clarify(parsed)
            if _OTHERS_RE.search(text):  # the same need, other bundles than these
                search = self._search_for(self.session, text, text, [])
                search.skip = {bundle_key(b) for b in self.shown}
                return search
            return _Answer(REFINE_QUESTION, self.chips, suggestions=list(REFINE_SUGGESTIONS),
                           bundles=list(self.shown), need=self.need)
        if turn.kind == "new_need":
            turn = self._with_held(turn)
            if parsed.text:
                self._need_texts.append(parsed.text)
        return self._after(turn, text)

    def _read(self, text: str) -> Need:
        """The message alone, read once (the session merges it with the need under way)."""
        need = self.assistant.understand(text)
        if self.llm_extraction and self.use_llm and need.budget is None and need.servings is None:
            try:
                extracted = extract_with_llm(self.assistant.llm, text)
            except Exception:
                extracted = None
            if extracted is not None:
                need = _fill_from_llm(need, text, extracted)
        return need

    def _hold(self, parsed: Need) -> None:
        """Constraints said before any topic ("for 6", "vegan, under $20") wait for it."""
        if any([parsed.servings, parsed.days, parsed.budget is not None, parsed.diets, parsed.exclude]):
            self._held = parsed

    def _with_held(self, turn: sm.Turn) -> sm.Turn:
        held, self._held = self._held, None
        base = turn.state.base
        if held is None or base is None:
            return turn
        update: dict[str, Any] = {k: getattr(held, k) for k in ("servings", "days", "budget")
                                  if getattr(base, k) is None and getattr(held, k) is not None}
        update["diets"] = list(dict.fromkeys([*base.diets, *held.diets]))
        update["exclude"] = list(dict.fromkeys([*base.exclude, *held.exclude]))
        return turn.model_copy(update={"state": turn.state.model_copy(update={"base": base.model_copy(update=update)})})

    def _clarify(self, parsed: Need) -> _Answer:
        """One short question, with answers to tap, instead of guessed bundles."""
        held = self._held
        people = parsed.servings or (held.servings if held is not None else None)
        kind = CLARIFY_KIND if people else CLARIFY_QUESTION
        suggestions = list(CLARIFY_SUGGESTIONS)
        if parsed.suggestion:  # "🍕🍕🍕" may mean pizza night: offered, never acted on
            question = f"Did you mean {parsed.suggestion}? " + ("" if people else "For how many?")
            suggestions = [f"{parsed.suggestion.capitalize()} for four", *suggestions[:2]]
        else:
            question = kind
        if people:
            suggestions = [f"{s.split(' for ')[0]} for {people}" for s in suggestions]
        return _Answer(question.strip(), self.chips, suggestions=suggestions)

    def _after(self, turn: sm.Turn, text: str) -> _Search | _Answer:
        """Commit a turn's state and build its search (or say why there is none)."""
        if turn.kind == "none":
            note = " ".join(dict.fromkeys(turn.notes)) or "Nothing changed."
            return _Answer(note, self.chips, question="?" in note, bundles=list(self.shown), need=self.need)
        self.session = turn.state
        if self.session.base is None:  # undone back to nothing
            self.shown = []
            return _Answer(START_OVER_QUESTION, [], suggestions=list(CLARIFY_SUGGESTIONS))
        need = self.session.need
        topic = need.occasion or need.text
        intro = text if turn.kind == "new_need" or not topic else f"{text} (for {topic})"
        return self._search_for(self.session, text, intro, list(turn.notes))

    def _search_for(self, state: sm.SessionState, text: str, intro: str, notes: list[str]) -> _Search:
        need = state.need
        query = " ".join(dict.fromkeys(p for p in [need.text or need.occasion or "", *need.include, *need.add_roles]
                                       if p)).strip()
        return _Search(need=need, constraints=Constraints(excluded_products=list(state.excluded_products)),
                       anchors=tuple(state.anchor_ids), query=query, chips=_chips_of(state), message=text,
                       intro_request=intro, notes=notes)

    # -- searching and showing ----------------------------------------------------------

    def _search(self, search: _Search) -> Iterator[Reply]:
        fb = self.session_feedback.snapshot()  # read once for every pass of this turn
        fb.dismissed |= search.skip
        profile = self.profile(fb)
        base: dict[str, Any] = {"chips": search.chips, "understood": [c.label for c in search.chips],
                "profile_summary": self.profile_summary, "need": search.need}
        # what was understood, at once: the LLM's intro takes ~1 s to start on 2 CPU cores
        yield Reply(phase="thinking", text=searching_text(base["understood"]), **base)

        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rule-bundles")
        try:
            first: Future[tuple[Retrieved, Recommendation]] = pool.submit(self._recommend, search, fb, profile)
            intro, source = "", ""
            # the cards never wait for the model's sentence: once the rule bundles are
            # ready, an unfinished intro gives way to the fixed one (first card <= 2 s)
            for intro, source in self._intro(search.intro_request, base["understood"], search, stop=first.done):
                yield Reply(phase="intro", text=intro, intro_source=source, **base)  # type: ignore[arg-type]
            try:
                retrieved, rec = first.result()
            except ServiceError as exc:  # a bad request: its message is for the shopper
                yield Reply(phase="final", text=str(exc), notes=self._once(search.notes), done=True, **base)
                return
        finally:
            pool.shutdown(wait=False)

        recorded: set[str] = set()
        if not self._visible(rec, fb) and search.skip:
            yield Reply(phase="final", text=NO_OTHERS_NOTE, bundles=list(self.shown), done=True, **base)
            return
        if not self._visible(rec, fb):
            softer = self._softer_cheaper(search, fb, profile)
            if softer is None:
                yield self._nothing_fits(search, rec, fb, profile, base)
                return
            search, retrieved, rec = softer
        if not self.use_llm:
            yield self._finish(self._show(rec, intro, source, search, "final", recorded, fb))
            return
        reply = self._show(rec, intro, source, search, "cards", recorded, fb)
        yield reply
        if self._llm_is_busy():
            # Queueing behind another session's generation mostly ends in the time limit
            # anyway; the rule bundles on screen are the answer.
            yield self._finish(reply, notes=[*reply.notes, *self._once([LLM_BUSY_NOTE])])
            return
        try:
            merged = self._rank(retrieved, "llm+rule")  # the rule pass's retrieval, not a second one
        except Exception:
            log.exception("LLM recommendation failed")
            note = "The assistant's language model was unavailable; showing rule-based bundles."
            yield self._finish(reply, notes=[*reply.notes, *self._once([note])])
            return
        if not self._visible(merged, fb):
            yield self._finish(reply)
        elif [bundle_key(b) for b in self._visible(merged, fb)] != [bundle_key(b) for b in reply.bundles]:
            yield self._finish(self._show(merged, intro, source, search, "final", recorded, fb, said=reply.notes))
        else:
            yield self._finish(reply, recommendation=merged, notes=[*reply.notes, *self._once(merged.notes)])

    @staticmethod
    def _finish(reply: Reply, **changes: Any) -> Reply:
        # A new object: a UI may still hold the previous one.
        return dataclasses.replace(reply, phase="final", done=True, **changes)

    def _once(self, notes: list[str]) -> list[str]:
        """The notes not printed yet this session: the same note is never printed twice."""
        with self._lock:
            fresh = [n for n in dict.fromkeys(notes) if n and n not in self._said]
            self._said.update(fresh)
            return fresh

    def _intro_can_race(self, llm: Any) -> bool:
        """Whether the model's intro may run beside the rule pass (``settings.llm.intro``):
        not on a shared CPU unless asked, never with a model that holds the GIL while it
        generates (in-process ONNX Runtime GenAI would stall the rule pass)."""
        mode = self.assistant.settings.llm.intro
        if mode == "never" or getattr(llm, "holds_gil", False):
            return False
        return mode == "always" or str(getattr(llm, "device", "cpu")).startswith("cuda")

    def _llm_is_busy(self) -> bool:
        try:
            return _llm_busy(self.assistant.llm)
        except Exception:  # a model that cannot load: the service notes the fallback
            return False

    def _intro(self, text: str, understood: list[str], search: _Search | None = None,
               stop: Callable[[], bool] | None = None) -> Iterator[tuple[str, str]]:
        """(intro so far, "llm" or "fallback"). While the cards are not known yet, the
        streamed text already passes every grounding rule but "unshown" (checked with the
        cards, in :meth:`_show`): a sentence about the assistant, a price or an echo of
        the message ends the stream and the fixed sentence is used."""
        fallback = (fallback_intro(understood), "fallback")
        if not self.llm_intro:
            yield fallback
            return
        ctx = grounding_context([], search.need if search else None, search.message if search else "")
        try:
            llm = self.assistant.llm
            if _llm_busy(llm) or not self._intro_can_race(llm):
                yield fallback
                return
            for intro in stream_intro(llm, text, timeout_s=self.intro_timeout_s, stop=stop):
                if any(check_sentence(s, ctx) not in (None, "unshown") for s in split_sentences(intro)):
                    raise ValueError(f"ungrounded intro: {intro!r}")
                yield intro, "llm"
        except Exception as exc:  # LLMError, a refusal, a timeout: the fixed sentence
            log.info("intro fell back: %s", exc)
            yield fallback

    def _show(self, rec: Recommendation, intro: str, intro_source: str, search: _Search, phase: Phase,
              recorded: set[str], fb: SessionFeedback, said: list[str] | None = None) -> Reply:
        """Put ``rec``'s bundles on screen (grounded); record each bundle once per turn as shown."""
        vocabulary = _vocabulary(self.assistant)
        bundles = [self._grounded(b, search, vocabulary) for b in self._visible(rec, fb)]
        with self._lock:
            self.shown = bundles
            self.history = [*self.history, bundles][-MAX_HISTORY_SETS:]
            for b in bundles:
                if bundle_key(b) not in recorded:
                    recorded.add(bundle_key(b))
                    self._record("shown", b, payload={
                        "rank": b.rank, "score": b.score, "source": b.source, "bundle_price": b.bundle_price,
                        "turn": self.turns, "phase": phase, "mode": rec.mode,
                    })
        if intro_source == "llm":
            text = ground_reply(intro, bundles, search.need, search.message, vocabulary=vocabulary)
        else:
            text, intro_source = template_reply(search.need, bundles), "template"
        notes = list(said) if said is not None else self._once([*search.notes, *rec.notes])
        return Reply(phase=phase, text=text, bundles=bundles, notes=notes, chips=search.chips,
                     understood=[c.label for c in search.chips], profile_summary=rec.profile_summary,
                     intro_source=intro_source, recommendation=rec, need=search.need)  # type: ignore[arg-type]

    @staticmethod
    def _grounded(bundle: ShownBundle, search: _Search, vocabulary: frozenset[str]) -> ShownBundle:
        """A card's model note only when it passes the grounding check against this bundle."""
        if not bundle.llm_reason:
            return bundle
        reason = grounded_reason(bundle.llm_reason, bundle, search.need, search.message, vocabulary=vocabulary,
                                 fallback="")
        return bundle if reason == bundle.llm_reason else bundle.model_copy(update={"llm_reason": reason})

    def _visible(self, rec: Recommendation, fb: SessionFeedback) -> list[ShownBundle]:
        """The cards: dismissed bundles (the same item set) left out, renumbered."""
        kept = [b for b in rec.bundles if bundle_key(b) not in fb.dismissed][: self.cards]
        return [b if b.rank == i else b.model_copy(update={"rank": i}) for i, b in enumerate(kept, start=1)]

    def _softer_cheaper(self, search: _Search, fb: SessionFeedback,
                        profile: UserProfile) -> tuple[_Search, Retrieved, Recommendation] | None:
        """"Cheaper" found nothing 20% under the top bundle: anything cheaper than it that
        keeps every role is still cheaper, so the cap moves up towards that price (the
        cheaper step's chip says the cap used). None when even that finds nothing."""
        state = self.session
        last = state.steps[-1] if state.steps else None
        top = self.shown[0].bundle_price if self.shown else None
        if last is None or last.move.kind != "cheaper" or top is None:
            return None
        for factor in CHEAPER_RETRY_FACTORS:
            cap = round(int((top * factor - 0.01) * 100) / 100, 2)
            if cap <= (last.move.budget or 0.0):
                continue
            trial = sm.refine(sm.remove_chip(state, last.chip.id), [sm.Move(kind="budget", budget=cap)]).state
            candidate = self._search_for(trial, search.message, search.intro_request,
                                         [*search.notes, CHEAPEST_NOTE])
            retrieved, rec = self._recommend(candidate, fb, profile)
            if self._visible(rec, fb):
                with self._lock:
                    self.session = trial
                return candidate, retrieved, rec
        return None

    def _nothing_fits(self, search: _Search, rec: Recommendation, fb: SessionFeedback, profile: UserProfile,
                      base: dict[str, Any]) -> Reply:
        """Ask instead of an empty answer ("Nothing fits under $1. Raise the budget to $12?")."""
        need = search.need
        min_price = None
        if need.budget is not None:
            try:  # what the cheapest bundle costs without the cap: the budget to offer
                free = dataclasses.replace(search, need=need.model_copy(update={"budget": None}))
                _, cheapest = self._recommend(free, fb, profile)
                prices = [b.bundle_price for b in self._visible(cheapest, fb) if b.bundle_price is not None]
                min_price = min(prices) if prices else None
            except ServiceError:
                min_price = None
        ask = sm.ask_instead(self.session, min_price=min_price)
        with self._lock:
            self._pending = {a.label.casefold(): a for a in ask.actions}
            self.shown = []
        notes = self._once([n for n in search.notes if n != ask.message])
        return Reply(phase="final", text=ask.message, question=ask.message, suggestions=[a.label for a in ask.actions],
                     notes=notes, recommendation=rec, intro_source="template", done=True, **base)

    def _request(self, search: _Search, fb: SessionFeedback) -> dict[str, Any]:
        """The service's arguments for this turn's search (with this turn's feedback)."""
        return {"query": search.query, "anchors": search.anchors, "constraints": search.constraints,
                "k": self.cards + min(len(fb.dismissed), MAX_DISMISSED_EXTRA),
                "boosted": fb.boosted(), "demoted": set(fb.demoted), "need": search.need}

    def _recommend(self, search: _Search, fb: SessionFeedback,
                   profile: UserProfile) -> tuple[Retrieved, Recommendation]:
        """The rule pass: retrieval (kept for the LLM pass of the same turn), then rules."""
        start = time.perf_counter()
        retrieved = self.assistant.retrieve(profile=profile, **self._request(search, fb))
        log.debug("retrieve in %.2fs", time.perf_counter() - start)
        return retrieved, self._rank(retrieved, "rule")

    def _rank(self, retrieved: Retrieved, mode: Mode) -> Recommendation:
        start = time.perf_counter()
        rec = self.assistant.propose_and_rank(retrieved, mode)
        log.debug("propose and rank %s in %.2fs", mode, time.perf_counter() - start)
        return rec


def _chips_of(state: sm.SessionState) -> list[ReplyChip]:
    """The request's chips (what the parser read; superseded ones left out), then one
    removable chip per refinement."""
    if state.base is None:
        return []
    kinds = {s.move.kind for s in state.steps}
    base = []
    for label in need_chips(state.base):
        superseded = (("rescale" in kinds and re.fullmatch(r"for \d+", label))
                      or (kinds & {"cheaper", "budget"} and label.startswith("under $")))
        if not superseded:
            base.append(ReplyChip(label=label))
    steps = [ReplyChip(label=c.label, id=c.id, kind=c.kind) for c in state.chips]
    taken = {c.label for c in steps}
    return [c for c in base if c.label not in taken] + steps


def _fill_from_llm(need: Need, text: str, extracted: ExtractedConstraints) -> Need:
    """The LLM's budget or head count, only where the parser found none and only when the
    message holds that very number (see :func:`merge_extraction`)."""
    update = _backed_numbers(text, need.budget, need.servings, extracted)
    return need.model_copy(update=update) if update else need
