"""The shopper tab: personas, one :class:`Conversation` per browser session, the chat with
its chips, clarifying questions and bundle cards, and the cart.

Every handler takes the session's ``gr.State`` and returns it, so two tabs (or two
``gradio_client`` sessions) never share a conversation. The refinement chips and the
suggestion chips are fixed button slots (like the cards): a slot's button acts on what
the session remembers for that slot, so a click means the same in the page and through
the API (``/remove_chip_N``, ``/suggestion_N``).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from retrieval.profiles import UserProfile, price_word

from ..constraints import sanitize_message
from ..conversation import MAX_MESSAGE_CHARS, Cart, Conversation, Reply
from ..feedback import FeedbackStore
from ..service import BundleAssistant, ServiceError
from .render import Titles, card_html, cart_html, cart_line_html, chat_markdown, md, understood_html

GUEST_KEY = "guest"
CARDS = 3
CART_LINES = 6  # editable cart lines on screen; more stay in the cart and its total
CHIP_SLOTS = 6  # removable refinement chips on screen
SUGGEST_SLOTS = 3  # suggestion chips under a clarifying question
MAX_MESSAGES = 40  # chat messages kept per session
# Real Complete Journey households with demographics and long histories, of different
# household types; a smaller index (a slice) falls back to the households it has.
FEATURED_HOUSEHOLDS = ("1467", "2337", "1795", "1479", "762", "1453")
QUICK = (("Cheaper", "cheaper", "cheaper"), ("Healthier", "healthier", "healthier"),
         ("Bigger bundle", "bigger", "bigger bundle"), ("Start over", "start_over", "start over"))
EXAMPLES = ("Taco night for four under $25, no dairy", "A quick healthy breakfast",
            "Movie night snacks without nuts")


# ------------------------------------------------------------------------------ personas


@dataclass(frozen=True)
class Persona:
    key: str  # GUEST_KEY or a household id of the loaded data
    label: str
    description: str


GUEST = Persona(GUEST_KEY, "Guest", "New here, no history: I learn from what you ask for, like and add to the cart.")


def persona_line(profile: UserProfile) -> str:
    """One line about a household, from its profile (no age or income)."""
    parts = []
    demo = profile.demographics
    if demo.get("household_comp"):
        size = demo.get("household_size")
        parts.append(demo["household_comp"] + (f", {size} people" if size else ""))
    depts = [d.split(" > ")[-1].title() for d, _ in profile.top_departments[:2]]
    if depts:
        parts.append("shops mostly " + " & ".join(depts))
    if profile.price_percentile is not None:
        parts.append(f"{price_word(profile.price_percentile)} prices")
    if profile.n_baskets:
        parts.append(f"{profile.n_baskets} shopping trips")
    return " · ".join(parts) or "a shopper with little history"


def demo_label(household: str) -> str:
    return f"Demo shopper (household {household})"


def _scan_households(assistant: BundleAssistant, found: dict[str, UserProfile],
                     scan: int) -> list[tuple[str, UserProfile]]:
    """The lowest household ids with a profile, those with demographics and long histories first."""
    index = assistant.index
    keys = {assistant.user_key(str(i)): str(i) for i in range(1, scan + 1) if str(i) not in found}
    got = index.store.fetch(index.profiles_collection, list(keys))
    return sorted(((keys[k], UserProfile.from_metadata(v["metadata"])) for k, v in got.items()),
                  key=lambda kp: (not kp[1].demographics, -kp[1].n_baskets, int(kp[0])))


def discover_personas(assistant: BundleAssistant, n: int = 4,
                      featured: tuple[str, ...] = FEATURED_HOUSEHOLDS, scan: int = 400) -> list[Persona]:
    """Guest first (the default: a visitor never shops as someone else), then ``n``
    households of the data as demo shoppers (featured ones first, then the lowest ids)."""
    found: dict[str, UserProfile] = {}
    for hid in featured:
        profile = assistant.index.profile(assistant.user_key(hid))
        if profile is not None:
            found[hid] = profile
        if len(found) >= n:
            break
    if len(found) < n:
        for hid, profile in _scan_households(assistant, found, scan)[: n - len(found)]:
            found[hid] = profile
    return [GUEST, *(Persona(hid, demo_label(hid), persona_line(p)) for hid, p in found.items())]


# ------------------------------------------------------------------------------ sessions


@dataclass
class ShopperSession:
    """What ``gr.State`` holds per browser tab (or per gradio_client)."""

    persona: str
    conversation: Conversation
    messages: list[dict[str, str]] = field(default_factory=list)
    reply: Reply | None = None  # what the screen shows now
    chips: list[tuple[int, str]] = field(default_factory=list)  # (chip id, label) per refinement slot
    suggestions: list[str] = field(default_factory=list)  # text per suggestion slot

    def show(self, reply: Reply | None) -> None:
        self.reply = reply
        chips = reply.chips if reply is not None else []
        self.chips = [(c.id, c.label) for c in chips if c.id is not None][:CHIP_SLOTS]
        self.suggestions = list(reply.suggestions)[:SUGGEST_SLOTS] if reply is not None else []


class Shopper:
    """The shopper tab's handlers (layout and wiring: :func:`shopper_tab`)."""

    def __init__(self, assistant: BundleAssistant, store: FeedbackStore, personas: list[Persona], *,
                 use_llm: bool, cards: int = CARDS):
        self.assistant = assistant
        self.store = store
        self.personas = personas
        self.by_key = {p.key: p for p in personas}
        self.use_llm = use_llm
        self.cards = cards
        self.titles = Titles(assistant.index.catalogue)

    # -- state -----------------------------------------------------------------------

    def session_for(self, persona: str, session: ShopperSession | None) -> ShopperSession:
        persona = persona if persona in self.by_key else self.personas[0].key
        if session is None or session.persona != persona:
            conv = Conversation(self.assistant, self.store, user_id=None if persona == GUEST_KEY else persona,
                                use_llm=self.use_llm, cards=self.cards)
            session = ShopperSession(persona=persona, conversation=conv)
        return session

    # -- what the screen shows ----------------------------------------------------------

    def card_outputs(self, reply: Reply | None) -> list[Any]:
        """Card HTML then slot visibility; cards are numbered by their place on screen."""
        bundles = reply.bundles if reply else []
        htmls = [card_html(bundles[i], self.titles, rank=i + 1) if i < len(bundles) else ""
                 for i in range(self.cards)]
        return htmls + [gr.update(visible=i < len(bundles)) for i in range(self.cards)]

    @staticmethod
    def control_outputs(session: ShopperSession | None) -> list[Any]:
        """The refinement chip buttons ("+ drink ✕"), then the suggestion buttons."""
        chips = session.chips if session else []
        suggestions = session.suggestions if session else []
        out = [gr.update(value=f"{chips[i][1]} ✕", visible=True) if i < len(chips) else gr.update(visible=False)
               for i in range(CHIP_SLOTS)]
        out += [gr.update(value=suggestions[i], visible=True) if i < len(suggestions) else gr.update(visible=False)
                for i in range(SUGGEST_SLOTS)]
        return out

    def outputs(self, session: ShopperSession) -> tuple:
        reply = session.reply
        return (list(session.messages), reply.as_dict() if reply else {}, "",
                understood_html(reply, session.conversation.turns),
                *self.card_outputs(reply), *self.control_outputs(session), session)

    def _stream(self, session: ShopperSession, said: str, replies: Iterable[Reply]) -> Iterator[tuple]:
        """Each reply redraws the whole screen; the session keeps it (a Stop keeps the
        part already shown)."""
        history = [*session.messages, {"role": "user", "content": said}] if said else list(session.messages)
        for reply in replies:
            session.messages = [*history, {"role": "assistant", "content": chat_markdown(reply)}][-MAX_MESSAGES:]
            session.show(reply)
            yield self.outputs(session)

    # -- chat ------------------------------------------------------------------------

    def respond(self, message: str, persona: str, session: ShopperSession | None) -> Iterator[tuple]:
        """A chat message. A blank one changes nothing: no bubble, the screen redrawn as it was."""
        session = self.session_for(persona, session)
        yield from self._turn(session, sanitize_message(message or "", MAX_MESSAGE_CHARS),
                              session.conversation.turn(message or ""))

    def _turn(self, session: ShopperSession, said: str, replies: Iterator[Reply]) -> Iterator[tuple]:
        first = next(replies, None)
        if first is None:
            yield self.outputs(session)
            return
        yield from self._stream(session, said, itertools.chain([first], replies))

    def quick(self, message: str) -> Callable[..., Iterator[tuple]]:
        """A quick-refinement button ("Cheaper"): sends its message."""
        def handler(persona: str, session: ShopperSession | None) -> Iterator[tuple]:
            yield from self.respond(message, persona, session)
        handler.__name__ = "quick_" + message.replace(" ", "_")
        return handler

    def remove_chip(self, slot: int) -> Callable[..., Iterator[tuple]]:
        """Refinement chip ``slot`` (1-based): takes that refinement back."""
        def handler(persona: str, session: ShopperSession | None) -> Iterator[tuple]:
            session = self.session_for(persona, session)
            if not 1 <= slot <= len(session.chips):  # a stale page: nothing to take back
                yield self.outputs(session)
                return
            chip_id, label = session.chips[slot - 1]
            yield from self._turn(session, f"Undo “{label}”", session.conversation.remove_chip(chip_id))
        handler.__name__ = f"remove_chip_{slot}"
        return handler

    def suggestion(self, slot: int) -> Callable[..., Iterator[tuple]]:
        """Suggestion chip ``slot`` (1-based) under a question: sends its text."""
        def handler(persona: str, session: ShopperSession | None) -> Iterator[tuple]:
            session = self.session_for(persona, session)
            text = session.suggestions[slot - 1] if 1 <= slot <= len(session.suggestions) else ""
            yield from self.respond(text, persona, session)
        handler.__name__ = f"suggestion_{slot}"
        return handler

    def clear_chat(self, persona: str, session: ShopperSession | None) -> tuple:
        """The chat's Clear (trash icon): the need, its constraints, the bundles shown and
        this session's feedback are forgotten; the cart stays."""
        session = self.session_for(persona, session)
        session.messages = []
        session.show(session.conversation.clear())
        return self.outputs(session)

    def set_persona(self, persona: str, session: ShopperSession | None) -> tuple:
        session = self.session_for(persona, None)
        info = self.by_key.get(session.persona, GUEST).description
        cart = session.conversation.cart
        return ([], {}, "", *self.card_outputs(None), cart_html(cart, CART_LINES), cart.as_dict(), info, session)

    def show_controls(self, session: ShopperSession | None) -> list[Any]:
        return self.control_outputs(session)

    # -- cards -----------------------------------------------------------------------

    def cart_handler(self, number: int) -> Callable[..., tuple]:
        def handler(persona: str, session: ShopperSession | None) -> tuple:
            session = self.session_for(persona, session)
            conv = session.conversation
            try:
                line = conv.add_to_cart(number)
                gr.Info(f"Added “{line.name}” to your cart.", duration=3)
            except ServiceError as exc:
                gr.Warning(str(exc))
            return cart_html(conv.cart, CART_LINES), conv.cart.as_dict(), session
        handler.__name__ = f"add_to_cart_{number}"
        return handler

    def thumb_handler(self, kind: str, number: int) -> Callable[..., tuple]:
        def handler(reason: str, persona: str, session: ShopperSession | None) -> tuple:
            session = self.session_for(persona, session)
            conv = session.conversation
            try:
                bundle = conv.like(number, reason) if kind == "like" else conv.dislike(number, reason)
            except ServiceError as exc:
                return reason, f"*{md(str(exc))}*", session
            if kind == "like":
                return "", f"Glad you like **{md(bundle.name)}**. The next answers take it into account.", session
            return "", (f"Noted — removed **{md(bundle.name)}**: it won't come back this session, "
                        "and picks like it move down."), session
        handler.__name__ = f"{kind}_{number}"
        return handler

    def show_cards(self, session: ShopperSession | None) -> list[Any]:
        """The cards after a "Not for me": the disliked one is gone, the rest move up."""
        if session is None or session.reply is None:
            return self.card_outputs(None)
        shown = session.conversation.shown
        if session.reply.bundles:
            session.reply = dataclasses.replace(session.reply, bundles=list(shown))
        return self.card_outputs(session.reply)

    # -- the cart --------------------------------------------------------------------

    def clear_cart(self, persona: str, session: ShopperSession | None) -> tuple:
        session = self.session_for(persona, session)
        session.conversation.clear_cart()
        return cart_html(session.conversation.cart, CART_LINES), session.conversation.cart.as_dict(), session

    def cart_line_outputs(self, cart: Cart) -> list[Any]:
        lines = cart.lines[:CART_LINES]
        htmls = [cart_line_html(lines[i], i + 1, self.titles) if i < len(lines) else "" for i in range(CART_LINES)]
        return htmls + [gr.update(visible=i < len(lines)) for i in range(CART_LINES)]

    def show_cart_lines(self, session: ShopperSession | None) -> list[Any]:
        return self.cart_line_outputs(session.conversation.cart if session else Cart())

    def line_handler(self, kind: str, number: int) -> Callable[..., tuple]:
        """One less / one more / remove, on cart line ``number`` (1-based)."""
        def handler(persona: str, session: ShopperSession | None) -> tuple:
            session = self.session_for(persona, session)
            cart = session.conversation.cart
            try:
                line = cart.line(number)
                if kind == "remove" or (kind == "less" and line.quantity <= 1):
                    cart.remove(number)
                    gr.Info(f"Removed “{line.name}” from your cart.", duration=3)
                else:
                    cart.set_quantity(number, line.quantity + (1 if kind == "more" else -1))
            except IndexError:  # a stale page: the line went in another tab's click
                gr.Warning("That cart line is no longer there; this is your cart now.")
            return (cart_html(cart, CART_LINES), cart.as_dict(), *self.cart_line_outputs(cart), session)
        handler.__name__ = f"cart_line_{number}_{kind}"
        return handler


# ------------------------------------------------------------------------------ layout


@dataclass
class ShopperView:
    """The tab's components, in the order the handlers' outputs use them."""

    state: Any = None
    persona: Any = None
    persona_info: Any = None
    chatbot: Any = None
    message: Any = None
    send: Any = None
    stop: Any = None
    quick: list[Any] = field(default_factory=list)
    refine: list[Any] = field(default_factory=list)
    suggest: list[Any] = field(default_factory=list)
    understood: Any = None
    bundles_json: Any = None
    cards: list[Any] = field(default_factory=list)
    slots: list[Any] = field(default_factory=list)
    add: list[Any] = field(default_factory=list)
    likes: list[Any] = field(default_factory=list)
    dislikes: list[Any] = field(default_factory=list)
    reason: Any = None
    feedback_note: Any = None
    cart_view: Any = None
    cart_json: Any = None
    line_views: list[Any] = field(default_factory=list)
    line_slots: list[Any] = field(default_factory=list)
    line_buttons: list[tuple[Any, Any, Any]] = field(default_factory=list)
    empty_cart: Any = None

    def chat_outputs(self) -> list[Any]:
        return [self.chatbot, self.bundles_json, self.message, self.understood, *self.cards, *self.slots,
                *self.refine, *self.suggest, self.state]

    def card_outputs(self) -> list[Any]:
        return [*self.cards, *self.slots]

    def line_outputs(self) -> list[Any]:
        return [*self.line_views, *self.line_slots]


def _chat_column(v: ShopperView, personas: list[Persona]) -> None:
    with gr.Row(elem_classes="ba-persona"):
        v.persona = gr.Dropdown(choices=[(p.label, p.key) for p in personas], value=personas[0].key,
                                label="Shopping as", scale=1)
        v.persona_info = gr.Markdown(personas[0].description, elem_classes="ba-persona-info")
    v.chatbot = gr.Chatbot(label="Assistant", height=430, buttons=["copy"], feedback_options=None, elem_id="chat",
                           placeholder="Ask for bundle ideas — a meal, an occasion, a budget.")
    with gr.Row(elem_classes="ba-suggest-row", elem_id="ba-suggestions"):
        v.suggest = [gr.Button(visible=False, size="sm", elem_classes="ba-suggest") for _ in range(SUGGEST_SLOTS)]
    with gr.Row(elem_classes="ba-input-row"):
        v.message = gr.Textbox(placeholder="e.g. " + EXAMPLES[0], show_label=False, scale=6, max_lines=3,
                               max_length=MAX_MESSAGE_CHARS, autofocus=True)
        v.send = gr.Button("Send", variant="primary", scale=1, min_width=80)
        v.stop = gr.Button("Stop", variant="stop", scale=1, min_width=70, elem_classes="ba-stop")
    with gr.Row(elem_classes="ba-chips"):
        v.quick = [gr.Button(label, size="sm") for label, _, _ in QUICK]
    with gr.Column(elem_id="ba-examples"):
        gr.Examples(list(EXAMPLES), inputs=v.message, label="Try")


def _card_slots(v: ShopperView, cards: int) -> None:
    for i in range(cards):
        with gr.Column(visible=False, elem_classes="ba-slot") as slot:
            v.cards.append(gr.HTML(elem_id=f"bundle-card-{i + 1}"))
            with gr.Row():
                v.add.append(gr.Button("Add to cart", variant="primary", size="sm", scale=3, elem_classes="ba-add"))
                v.likes.append(gr.Button("Like", size="sm", scale=1, min_width=60, elem_classes="ba-like"))
                v.dislikes.append(gr.Button("Not for me", size="sm", scale=1, min_width=60,
                                            elem_classes="ba-dislike"))
        v.slots.append(slot)


def _cart_block(v: ShopperView) -> None:
    v.cart_view = gr.HTML(cart_html(Cart(), CART_LINES), elem_id="cart")
    for i in range(CART_LINES):
        with gr.Column(visible=False, elem_classes="ba-line-slot", elem_id=f"cart-line-{i + 1}") as line_slot:
            v.line_views.append(gr.HTML())
            with gr.Row():
                v.line_buttons.append((
                    gr.Button("−", size="sm", scale=1, elem_classes="ba-less"),
                    gr.Button("+", size="sm", scale=1, elem_classes="ba-more"),
                    gr.Button("Remove", size="sm", scale=2, elem_classes="ba-remove"),
                ))
        v.line_slots.append(line_slot)
    v.cart_json = gr.JSON(visible=False)
    v.empty_cart = gr.Button("Empty cart", size="sm")


def _cards_column(v: ShopperView, cards: int) -> None:
    v.understood = gr.HTML(elem_id="ba-understood")
    with gr.Row(elem_classes="ba-refine-row", elem_id="ba-refinements"):
        v.refine = [gr.Button(visible=False, size="sm", elem_classes="ba-refine") for _ in range(CHIP_SLOTS)]
    _card_slots(v, cards)
    v.reason = gr.Textbox(label="Why? (optional, sent with Like / Not for me)", max_lines=1, max_length=300)
    v.feedback_note = gr.Markdown()
    _cart_block(v)
    v.bundles_json = gr.JSON(visible=False)


_STREAM: dict[str, Any] = {"show_progress": "hidden", "concurrency_limit": None}
_HIDDEN: dict[str, Any] = {"api_visibility": "private", "show_progress": "hidden"}


def _wire_chat(v: ShopperView, s: Shopper) -> None:
    ins, outs = [v.message, v.persona, v.state], v.chat_outputs()
    turns = [v.message.submit(s.respond, ins, outs, api_name="chat", **_STREAM),
             v.send.click(s.respond, ins, outs, api_name="send", **_STREAM)]
    for button, (_, api, text) in zip(v.quick, QUICK):
        turns.append(button.click(s.quick(text), [v.persona, v.state], outs, api_name=api, **_STREAM))
    for i, button in enumerate(v.refine):
        turns.append(button.click(s.remove_chip(i + 1), [v.persona, v.state], outs,
                                  api_name=f"remove_chip_{i + 1}", **_STREAM))
    for i, button in enumerate(v.suggest):
        turns.append(button.click(s.suggestion(i + 1), [v.persona, v.state], outs,
                                  api_name=f"suggestion_{i + 1}", **_STREAM))
    v.stop.click(None, None, None, cancels=turns, api_visibility="private")
    v.chatbot.clear(s.clear_chat, [v.persona, v.state], outs, api_name="clear", show_progress="hidden")
    v.persona.change(s.set_persona, [v.persona, v.state],
                     [v.chatbot, v.bundles_json, v.understood, *v.card_outputs(), v.cart_view, v.cart_json,
                      v.persona_info, v.state], api_name="set_persona"
                     ).then(s.show_cart_lines, [v.state], v.line_outputs(), **_HIDDEN
                     ).then(s.show_controls, [v.state], [*v.refine, *v.suggest], **_HIDDEN)


def _wire_cards(v: ShopperView, s: Shopper) -> None:
    # the cart's lines and the cards follow in steps of their own, so the add/like/dislike
    # endpoints keep their outputs for gradio_client
    for i in range(len(v.cards)):
        n = i + 1
        v.add[i].click(s.cart_handler(n), [v.persona, v.state], [v.cart_view, v.cart_json, v.state],
                       api_name=f"add_to_cart_{n}").then(s.show_cart_lines, [v.state], v.line_outputs(), **_HIDDEN)
        v.likes[i].click(s.thumb_handler("like", n), [v.reason, v.persona, v.state],
                         [v.reason, v.feedback_note, v.state], api_name=f"like_{n}")
        v.dislikes[i].click(s.thumb_handler("dislike", n), [v.reason, v.persona, v.state],
                            [v.reason, v.feedback_note, v.state], api_name=f"dislike_{n}"
                            ).then(s.show_cards, [v.state], v.card_outputs(), **_HIDDEN)


def _wire_cart(v: ShopperView, s: Shopper) -> None:
    v.empty_cart.click(s.clear_cart, [v.persona, v.state], [v.cart_view, v.cart_json, v.state],
                       api_name="empty_cart").then(s.show_cart_lines, [v.state], v.line_outputs(), **_HIDDEN)
    for i, buttons in enumerate(v.line_buttons):
        for button, kind in zip(buttons, ("less", "more", "remove")):
            button.click(s.line_handler(kind, i + 1), [v.persona, v.state],
                         [v.cart_view, v.cart_json, *v.line_outputs(), v.state],
                         api_name=f"cart_line_{i + 1}_{kind}")


def shopper_tab(shopper: Shopper) -> ShopperView:
    """The tab's layout and events; call inside ``gr.Tab``."""
    v = ShopperView(state=gr.State(None))
    with gr.Row(equal_height=False, elem_classes="ba-main"):
        with gr.Column(scale=5, elem_classes="ba-chat-col"):
            _chat_column(v, shopper.personas)
        with gr.Column(scale=4, elem_classes="ba-cards-col"):
            _cards_column(v, shopper.cards)
    _wire_chat(v, shopper)
    _wire_cards(v, shopper)
    _wire_cart(v, shopper)
    return v
