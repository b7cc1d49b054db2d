"""One shopper's chat session: what they asked for, what they were shown, their cart.

A :class:`Conversation` turns a chat message into a streamed reply:

1. the message is sanitised and folded into the session's :class:`ConstraintState`
   ("cheaper", "without X", "more like bundle 2", "swap the salsa", "reset" ...);
2. rule-based bundles are computed on a worker thread while a short LLM intro streams;
3. the bundle cards follow, built only from :class:`Recommendation` data;
4. with the LLM on, its proposals are merged in and the reranked cards replace the
   first ones when they differ.

Each step yields a complete :class:`Reply` (not a delta), so a UI just redraws it.
Every shown bundle, like, dislike, reason and add-to-cart is a feedback event under a
pseudonym; liked and carted items boost the next answer, disliked items and their
product types are demoted.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from prompts import examples, fence, render
from retrieval.profiles import UserProfile, guest_profile
from retrieval.schema import Constraints

from .constraints import (
    CHEAPER_FACTOR,
    ConstraintState,
    ParsedMessage,
    Refinement,
    expand_exclusions,
    mentions,
    sanitize_message,
    understand,
)
from .feedback import FeedbackEvent, FeedbackStore, SessionSignal
from .nlu.need import Need
from .privacy import guest_pseudonym
from .service import BundleAssistant, Recommendation, ServiceError, ShownBundle

log = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 500
MAX_REASON_CHARS = 300
DEFAULT_CARDS = 3
MAX_HISTORY_SETS = 20  # bundle sets kept for "swap the salsa" look-ups
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


@dataclass
class Reply:
    """The whole reply so far; every yield of :meth:`Conversation.turn` is one."""

    phase: Phase
    text: str = ""  # the intro, or a polite answer when there are no bundles to show
    bundles: list[ShownBundle] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # quiet notes (LLM fallback, ...)
    understood: list[str] = field(default_factory=list)  # "tacos", "under $25.00", ...
    profile_summary: str = ""
    intro_source: Literal["llm", "fallback", ""] = ""
    recommendation: Recommendation | None = None
    done: bool = False

    def as_dict(self) -> dict[str, Any]:
        rec = self.recommendation
        return {
            "phase": self.phase,
            "done": self.done,
            "text": self.text,
            "bundles": [b.model_dump() for b in self.bundles],
            "notes": list(self.notes),
            "understood": list(self.understood),
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


def describe_request(state: ConstraintState, extra: list[str] | None = None) -> list[str]:
    """What the assistant understood, as short phrases for the UI ("under $25.00")."""
    c = state.constraints
    parts: list[str] = []
    if state.need:
        parts.append(state.need)
    parts += [w for w in state.wishes if w.rstrip("s") not in state.need]
    if state.healthy:
        parts.append("healthier")
    if c.budget is not None:
        parts.append(f"under ${c.budget:.2f}")
    if c.servings:
        parts.append(f"serves {c.servings}")
    parts += [f"no {w}" for w in state.exclusions]
    parts += list(state.diets)
    if state.bundle_size:
        parts.append(f"{state.bundle_size} items per bundle")
    return parts + list(extra or [])


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


# -------------------------------------------------------------------------- conversation


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
        self.state = ConstraintState()
        self.need: Need | None = None  # the understood need, refined turn by turn
        self.shown: list[ShownBundle] = []  # the bundles on screen now, in rank order
        self.history: list[list[ShownBundle]] = []  # every set shown, oldest first
        self.cart = Cart()
        self.turns = 0
        self._need_texts: list[str] = []  # guest messages that said what they want
        self._lock = threading.RLock()

    # -- profile and feedback --------------------------------------------------------

    @property
    def profile_summary(self) -> str:
        return self._profile.summary if self._profile else guest_profile("guest").summary

    def signal(self) -> SessionSignal:
        return self.feedback.session_signal(self.session_id)

    def boosted(self, signal: SessionSignal | None = None) -> set[str]:
        signal = signal or self.signal()
        return set(signal.liked) | set(signal.carted)

    def demoted(self, signal: SessionSignal | None = None) -> set[str]:
        """Disliked products and their product types."""
        signal = signal or self.signal()
        catalogue = self.assistant.index.catalogue
        out = set(signal.disliked)
        for pid in signal.disliked:
            if pid in catalogue.index:
                kind = str(catalogue.at[pid, "product_type"] or "").strip()
                if kind:
                    out.add(kind)
        return out

    def profile(self, signal: SessionSignal | None = None) -> UserProfile:
        """A persona's stored profile, or a guest's profile from this session: the
        messages that said what they want, and (weighted higher) what they liked or
        put in the cart."""
        if self._profile is not None:
            return self._profile
        signal = signal or self.signal()
        texts = self._need_texts[-8:]
        messages = self.assistant.embedder.encode(texts) if texts else None
        clicked_ids = list(dict.fromkeys([*signal.carted, *signal.liked]))
        vectors = self.assistant.index.embeddings_of(clicked_ids)
        clicked = np.stack(list(vectors.values())) if vectors else None
        return guest_profile(f"guest-{self.session_id}", messages, clicked)

    def _record(self, event: str, bundle: ShownBundle | None = None, reason: str = "",
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
            return line

    def like(self, number: int, reason: str = "") -> ShownBundle:
        return self._thumb("like", number, reason)

    def dislike(self, number: int, reason: str = "") -> ShownBundle:
        return self._thumb("dislike", number, reason)

    def _thumb(self, kind: str, number: int, reason: str) -> ShownBundle:
        with self._lock:
            bundle = self.bundle(number)
            self._record(kind, bundle, payload={"rank": bundle.rank, "score": bundle.score})
            reason = sanitize_message(reason, MAX_REASON_CHARS)
            if reason:
                self._record("reason", bundle, reason=reason, payload={"about": kind})
            return bundle

    def clear_cart(self) -> None:
        with self._lock:
            self.cart.clear()

    # -- a turn ----------------------------------------------------------------------

    def turn(self, message: str) -> Iterator[Reply]:
        """Stream the reply to one chat message (see the module docstring)."""
        text = sanitize_message(message, MAX_MESSAGE_CHARS)
        if not text:
            yield Reply(phase="final", text=EMPTY_MESSAGE_REPLY, profile_summary=self.profile_summary,
                        done=True)
            return
        try:
            yield from self._turn(text)
        except Exception:
            log.exception("chat turn failed")
            yield Reply(phase="final", text=ERROR_REPLY, profile_summary=self.profile_summary, done=True)

    def _turn(self, text: str) -> Iterator[Reply]:
        with self._lock:
            self.turns += 1
            request = self._understand(text)
        base = {"understood": request.understood, "profile_summary": self.profile_summary}
        yield Reply(phase="thinking", **base)

        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rule-bundles")
        try:
            first: Future[Recommendation] = pool.submit(self._recommend, request, "rule")
            intro, source = "", ""
            for intro, source in self._intro(request.intro_request, request.understood):
                yield Reply(phase="intro", text=intro, intro_source=source, **base)
            try:
                rec = first.result()
            except ServiceError as exc:  # a bad request: its message is for the shopper
                yield Reply(phase="final", text=str(exc), notes=request.notes, done=True, **base)
                return
        finally:
            pool.shutdown(wait=False)

        recorded: set[str] = set()
        if not self.use_llm:
            yield self._finish(self._show(rec, intro, source, request, "final", recorded))
            return
        reply = self._show(rec, intro, source, request, "cards", recorded)
        yield reply
        if self._llm_is_busy():
            # Queueing behind another session's generation mostly ends in the time limit
            # anyway; the rule bundles on screen are the answer.
            yield self._finish(reply, notes=[*reply.notes, LLM_BUSY_NOTE])
            return
        try:
            merged = self._recommend(request, "llm+rule")
        except Exception:
            log.exception("LLM recommendation failed")
            note = "The assistant's language model was unavailable; showing rule-based bundles."
            yield self._finish(reply, notes=[*reply.notes, note])
            return
        if [bundle_key(b) for b in self._visible(merged)] != [bundle_key(b) for b in self._visible(rec)]:
            yield self._finish(self._show(merged, intro, source, request, "final", recorded))
        else:
            yield self._finish(reply, recommendation=merged, notes=[*request.notes, *merged.notes])

    @staticmethod
    def _finish(reply: Reply, **changes: Any) -> Reply:
        # A new object: a UI may still hold the previous one.
        return dataclasses.replace(reply, phase="final", done=True, **changes)

    def _llm_is_busy(self) -> bool:
        try:
            return _llm_busy(self.assistant.llm)
        except Exception:  # a model that cannot load: the service notes the fallback
            return False

    def _intro(self, text: str, understood: list[str]) -> Iterator[tuple[str, str]]:
        """(intro so far, "llm" or "fallback")."""
        fallback = (fallback_intro(understood), "fallback")
        if not self.llm_intro:
            yield fallback
            return
        try:
            llm = self.assistant.llm
            if _llm_busy(llm):
                yield fallback
                return
            for intro in stream_intro(llm, text, timeout_s=self.intro_timeout_s):
                yield intro, "llm"
        except Exception as exc:  # LLMError, a refusal, a timeout: the fixed sentence
            log.info("intro fell back: %s", exc)
            yield fallback

    def _show(self, rec: Recommendation, intro: str, intro_source: str, request: _Request,
              phase: Phase, recorded: set[str]) -> Reply:
        """Put ``rec``'s bundles on screen; record each bundle once per turn as shown."""
        with self._lock:
            bundles = self._visible(rec)
            self.shown = bundles
            self.history = [*self.history, bundles][-MAX_HISTORY_SETS:]
            for b in bundles:
                if bundle_key(b) not in recorded:
                    recorded.add(bundle_key(b))
                    self._record("shown", b, payload={
                        "rank": b.rank, "score": b.score, "source": b.source, "bundle_price": b.bundle_price,
                        "turn": self.turns, "phase": phase, "mode": rec.mode,
                    })
        notes = [*request.notes, *rec.notes]
        text = intro
        if not bundles:
            # The service's "no bundle satisfies ..." note is the answer, not a footnote.
            text = next((n for n in rec.notes if n.startswith("No bundle")), "I couldn't find a bundle for that.")
            notes = [n for n in notes if n != text]
        return Reply(phase=phase, text=text, bundles=bundles, notes=notes, understood=request.understood,
                     profile_summary=rec.profile_summary, intro_source=intro_source, recommendation=rec)

    def _visible(self, rec: Recommendation) -> list[ShownBundle]:
        # The reranker already drops look-alikes (other SKUs of the same titles).
        return list(rec.bundles[: self.cards])

    # -- understanding ----------------------------------------------------------------

    def _understand(self, text: str) -> _Request:
        parsed, refinements = understand(text)
        if self.llm_extraction and self.use_llm:
            try:
                extracted = extract_with_llm(self.assistant.llm, text)
            except Exception:
                extracted = None
            if extracted is not None:
                parsed = merge_extraction(parsed, extracted)
        prices = [b.bundle_price for b in self.shown if b.bundle_price is not None]
        kinds = {r.kind for r in refinements}
        if "reset" in kinds:
            self._need_texts.clear()
            self.shown = []
            self.need = None
        # the same need understanding as the CLI's --parse and eval (BundleAssistant.understand)
        self.need = self.assistant.understand(text, previous=self.need)
        self.state = self.state.apply(parsed, refinements, prices,
                                      default_bundle_size=self.assistant.settings.llm.max_bundle_size)
        if "cheaper" in kinds and parsed.budget is None and prices:
            self._cheaper_than(prices)
        if parsed.query:
            self._need_texts.append(parsed.query)
        return self._request(refinements)

    def _cheaper_than(self, prices: list[float]) -> None:
        """"Cheaper" means cheaper than what is on screen: a budget that the bundles shown
        already meet would change nothing, so it drops to 0.8 x their median price."""
        cap = max(0.01, round(CHEAPER_FACTOR * statistics.median(prices), 2))
        constraints = self.state.constraints
        if constraints.budget is None or constraints.budget > cap:
            self.state.constraints = constraints.model_copy(update={"budget": cap})

    def _request(self, refinements: list[Refinement]) -> _Request:
        """This turn's search: the sticky constraints, plus one-turn anchors and swaps."""
        state = self.state
        constraints = state.search_constraints()
        anchors: list[str] = []
        extra: list[str] = []
        notes: list[str] = []
        replacements: list[str] = []
        if state.anchor_bundle is not None:
            try:
                anchors = list(self.bundle(state.anchor_bundle).item_ids)
                extra.append(f"more like bundle {state.anchor_bundle if state.anchor_bundle > 0 else len(self.shown)}")
            except ServiceError as exc:
                notes.append(str(exc))
        excluded_products: list[str] = []
        for r in refinements:
            if r.kind != "swap" or not r.term:
                continue
            extra.append(f"without {r.term}" + (f", with {r.replacement}" if r.replacement else ""))
            if r.replacement:
                replacements.append(r.replacement)
            hit = self._find_shown(r.term)
            if hit is not None:
                bundle, pid = hit
                excluded_products.append(pid)
                anchors += [i for i in bundle.item_ids if i != pid and i not in anchors]
        if excluded_products:
            constraints = constraints.model_copy(update={
                "excluded_products": list(dict.fromkeys([*constraints.excluded_products, *excluded_products])),
            })
        anchors = [a for a in anchors if a not in excluded_products]
        query_parts = [state.need, *[w for w in state.wishes if w.rstrip("s") not in state.need], *replacements]
        if state.healthy:
            query_parts.append("healthy")
        query = " ".join(p for p in query_parts if p).strip()
        # the session's constraints carry the budget ("cheaper" lowers it); the need carries
        # what composition needs: occasion, servings, days, diets
        need = self.need.model_copy(update={"budget": None}) if self.need is not None else None
        return _Request(query=query, anchors=tuple(anchors), constraints=constraints,
                        understood=describe_request(state, extra), notes=notes,
                        intro_request=self._intro_request(state), need=need)

    def _intro_request(self, state: ConstraintState) -> str:
        """The message, with the need it refines when it names none ("cheaper" ->
        "cheaper (for taco night)"), so the intro knows what it is about."""
        text = state.history[-1] if state.history else ""
        if state.need and state.need not in text.lower():
            return f"{text} (for {state.need})"
        return text

    def _find_shown(self, term: str) -> tuple[ShownBundle, str] | None:
        """The most recently shown bundle with an item matching ``term``, and that item."""
        for shown in reversed(self.history):
            for bundle in shown:
                for item in bundle.items:
                    if mentions(item.title, [term]):
                        return bundle, item.product_id
        return None

    def _recommend(self, request: _Request, mode: str) -> Recommendation:
        signal = self.signal()
        start = time.perf_counter()
        rec = self.assistant.recommend(
            query=request.query, anchors=request.anchors, constraints=request.constraints,
            k=self.cards, mode=mode, profile=self.profile(signal),
            boosted=self.boosted(signal), demoted=self.demoted(signal), need=request.need,
        )
        log.debug("recommend %s in %.2fs", mode, time.perf_counter() - start)
        return rec


@dataclass
class _Request:
    query: str
    anchors: tuple[str, ...]
    constraints: Constraints
    understood: list[str]
    notes: list[str] = field(default_factory=list)
    intro_request: str = ""
    need: Need | None = None
