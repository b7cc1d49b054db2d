"""The web app: a shopper chat and a merchandiser workbench on one shared assistant.

    python app.py [--host 127.0.0.1] [--port 7860] [--data-dir DIR] [--no-llm]

On first start with no index in the data dir it builds the Complete Journey index
(minutes, once). One :class:`BundleAssistant` (index, embedder, LLM) serves every
session; each browser session keeps its own :class:`Conversation` in ``gr.State``.

The merchandiser tab needs ``BUNDLE_MERCH_USER`` and ``BUNDLE_MERCH_PASSWORD``. Gradio's
own ``auth`` would lock the whole app (shoppers too), so the tab has its own sign-in:
it marks the session as signed in, and every merchandiser endpoint refuses a session
that is not, whether it comes from the page or from ``gradio_client``.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# pyarrow's default allocator (jemalloc) kept growing under the web server's thread churn
# (+85 MiB a minute at 20 sessions in bench/bench_load.py); the system one stays flat.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
# Gradio reads GRADIO_SERVER_PORT with int() when it is imported; a bad value would end
# `python app.py` in a traceback before main() could say what is wrong.
for _name in ("GRADIO_SERVER_PORT", "BUNDLE_PORT"):
    if __name__ == "__main__" and not os.environ.get(_name, "7860").strip().isdigit():
        print(f"app.py: error: {_name}={os.environ[_name]!r} is not a port number", file=sys.stderr)
        raise SystemExit(2)

import ctypes  # noqa: E402
import threading  # noqa: E402


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except OSError:  # not glibc (macOS, musl): nothing to tune
        return None


MALLOC_ARENAS = 2
M_ARENA_MAX = -8  # glibc's mallopt parameter


def cap_malloc_arenas(n: int = MALLOC_ARENAS) -> None:
    """glibc gives each allocating thread an arena of its own (up to 8 per core). The web
    server's worker threads, torch's and the tokenizers' then keep freed memory spread over
    many arenas, and the app's RSS crept up during long LLM chats (bench/bench_memory.py).
    Called before any of those threads start; an explicit MALLOC_ARENA_MAX wins."""
    libc = _glibc()
    if libc is not None and "MALLOC_ARENA_MAX" not in os.environ:
        libc.mallopt(M_ARENA_MAX, n)


def start_memory_trimmer(every_s: float = 60.0) -> threading.Thread | None:
    """Hand memory freed by finished requests back to the system once a minute
    (``malloc_trim``): an LLM turn allocates and frees hundreds of MiB outside Python."""
    libc = _glibc()
    if libc is None:
        return None

    def trim() -> None:
        while True:
            time.sleep(every_s)
            libc.malloc_trim(0)

    thread = threading.Thread(target=trim, name="malloc-trim", daemon=True)
    thread.start()
    return thread


cap_malloc_arenas()

import argparse  # noqa: E402
import errno  # noqa: E402
import gc  # noqa: E402
import hmac  # noqa: E402
import html  # noqa: E402
import logging  # noqa: E402
import re  # noqa: E402
import socket  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402

from assistant.constraints import sanitize_message  # noqa: E402
from assistant.conversation import MAX_MESSAGE_CHARS, Cart, CartLine, Conversation, Reply  # noqa: E402
from assistant.feedback import FeedbackStore  # noqa: E402
from assistant.privacy import neutralise_frame  # noqa: E402
from assistant.service import BundleAssistant, ServiceError, ShownBundle  # noqa: E402
from retrieval.buildtime import CJ_BUILD_ESTIMATE  # noqa: E402
from retrieval.config import OBJECTIVE_COMPONENTS, ObjectiveConfig, Settings  # noqa: E402
from retrieval.index import read_current  # noqa: E402
from retrieval.profiles import UserProfile, price_word  # noqa: E402
from retrieval.schema import Constraints  # noqa: E402

log = logging.getLogger("bundle_assistant.app")

MERCH_USER_ENV, MERCH_PASSWORD_ENV = "BUNDLE_MERCH_USER", "BUNDLE_MERCH_PASSWORD"
GUEST_KEY = "guest"
EXIT_USER_ERROR = 2
CARDS = 3
CART_LINES = 6  # editable cart lines on screen; more stay in the cart and its total
MERCH_SESSION_S = 8 * 3600
# Real Complete Journey households with demographics and long histories, of different
# household types; a smaller index (a slice) falls back to the households it has.
FEATURED_HOUSEHOLDS = ("1467", "2337", "1795", "1479", "762", "1453")
CHIPS = (("Cheaper", "cheaper"), ("Healthier", "healthier"), ("Bigger bundle", "bigger"),
         ("Start over", "start_over"))
CHIP_MESSAGES = {"Cheaper": "cheaper", "Healthier": "healthier", "Bigger bundle": "bigger bundle",
                 "Start over": "start over"}
EXAMPLES = ("Taco night for four under $25, no dairy", "A quick healthy breakfast",
            "Movie night snacks without nuts")


# ------------------------------------------------------------------------------ personas


@dataclass(frozen=True)
class Persona:
    key: str  # GUEST_KEY or a household id of the loaded data
    label: str
    description: str


GUEST = Persona(GUEST_KEY, "Guest",
                "A new shopper with no history: I learn from what you ask for and what you like or add to the cart.")


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


def discover_personas(assistant: BundleAssistant, n: int = 4,
                      featured: tuple[str, ...] = FEATURED_HOUSEHOLDS, scan: int = 400) -> list[Persona]:
    """``n`` households that have a profile in the index (featured ones first, then
    the lowest ids, those with demographics and long histories first), then Guest."""
    index = assistant.index
    found: dict[str, UserProfile] = {}
    for hid in featured:
        profile = index.profile(assistant.user_key(hid))
        if profile is not None:
            found[hid] = profile
        if len(found) >= n:
            break
    if len(found) < n:
        keys = {assistant.user_key(str(i)): str(i) for i in range(1, scan + 1) if str(i) not in found}
        got = index.store.fetch(index.profiles_collection, list(keys))
        extra = sorted(((keys[k], UserProfile.from_metadata(v["metadata"])) for k, v in got.items()),
                       key=lambda kp: (not kp[1].demographics, -kp[1].n_baskets, int(kp[0])))
        for hid, profile in extra[: n - len(found)]:
            found[hid] = profile
    personas = [Persona(hid, f"Household {hid}", persona_line(p)) for hid, p in found.items()]
    return personas + [GUEST]


# ------------------------------------------------------------------------------ rendering

COMPONENT_WORDS: dict[str, tuple[str, str]] = {
    "preference": ("Fits your taste", "close to what you buy or asked for"),
    "complementarity": ("Go well together", "often bought in the same basket"),
    "margin": ("Store value", "the store's margin after the discount"),
    "sales": ("Popular picks", "how often these items sell"),
    "redundancy": ("Overlap", "near-duplicate items, subtracted"),
}


def money(value: float | None) -> str:
    return "—" if value is None else f"${value:,.2f}"


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def breakdown_html(bundle: ShownBundle) -> str:
    rows = []
    for name, comp in bundle.score_breakdown.items():
        label, hint = COMPONENT_WORDS.get(name, (name.title(), ""))
        if name == "redundancy" and comp.value <= 0:
            continue
        width = max(0.0, min(1.0, comp.value)) * 100
        cls = "ba-fill neg" if comp.contribution < 0 else "ba-fill"
        rows.append(
            f'<div class="ba-bar" title="{_e(hint)}: value {comp.value:.2f} × weight {comp.weight:.2f}">'
            f'<span class="ba-bar-label">{_e(label)}</span>'
            f'<span class="ba-track"><span class="{cls}" style="width:{width:.0f}%"></span></span>'
            f'<span class="ba-bar-num">{comp.contribution:+.2f}</span></div>'
        )
    return "".join(rows)


def card_html(bundle: ShownBundle) -> str:
    """A bundle card: only catalogue and reranker data, every text escaped."""
    items = "".join(
        f'<li><span class="ba-item">{_e(i.title)}</span><span class="ba-item-price">{money(i.price)}</span></li>'
        for i in bundle.items
    )
    if bundle.price_known and bundle.savings:
        save = (f'<div class="ba-save">was <s>{money(bundle.list_price)}</s> · you save '
                f'{money(bundle.savings)} ({bundle.discount:.0%})</div>')
    elif bundle.price_known:
        save = '<div class="ba-save ba-muted">bundle price</div>'
    else:
        save = '<div class="ba-save ba-muted">price on request</div>'
    source = "suggested by the assistant" if bundle.source == "llm" else "built from shopping patterns"
    note = f'<div class="ba-note">“{_e(bundle.llm_reason)}”</div>' if bundle.llm_reason else ""
    return (
        f'<div class="ba-card" data-rank="{bundle.rank}" data-name="{_e(bundle.name)}">'
        f'<div class="ba-head"><span class="ba-rank">{bundle.rank}</span>'
        f'<span class="ba-name">{_e(bundle.name)}</span>'
        f'<span class="ba-price">{money(bundle.bundle_price)}</span></div>{save}'
        f'<ul class="ba-items">{items}</ul>'
        f'<details class="ba-why"><summary>Why this bundle: {_e(bundle.explanation)}</summary>'
        f'{breakdown_html(bundle)}{note}'
        f'<div class="ba-note">score {bundle.score:.3f} · {source}</div></details></div>'
    )


def cart_html(cart: Cart) -> str:
    """The cart's summary: title, total and savings. Its lines are :func:`cart_line_html`."""
    if not cart.lines:
        return ('<div class="ba-cart"><div class="ba-cart-title">Your cart</div>'
                '<div class="ba-muted">Empty — add a bundle you like.</div></div>')
    savings = f'<div class="ba-save">You save {money(cart.savings)}</div>' if cart.savings else ""
    more = len(cart.lines) - CART_LINES
    hidden = (f'<div class="ba-muted">and {more} more bundle{"s" if more > 1 else ""} '
              f'(remove a line to edit them)</div>') if more > 0 else ""
    return (f'<div class="ba-cart"><div class="ba-cart-title">Your cart ({cart.count})</div>'
            f'<div class="ba-total">Total <span class="ba-cart-total">{money(cart.total)}</span></div>'
            f'{savings}{hidden}</div>')


def cart_line_html(line: CartLine, number: int) -> str:
    """One cart line: its name, quantity and total, and the items it holds."""
    items = "".join(
        f'<li><span class="ba-item">{_e(i.get("title", ""))}</span>'
        f'<span class="ba-item-price">{money(i.get("price"))}</span></li>'
        for i in line.items
    )
    return (f'<div class="ba-line" data-line="{number}" data-name="{_e(line.name)}">'
            f'<div class="ba-head"><span class="ba-name">{_e(line.name)}</span>'
            f'<span class="ba-line-total">{money(line.line_total)}</span></div>'
            f'<div class="ba-muted"><span class="ba-qty">{line.quantity}</span> × {money(line.bundle_price)}</div>'
            f'<ul class="ba-items">{items}</ul></div>')


def understood_html(reply: Reply | None) -> str:
    if reply is None or not (reply.understood or reply.notes):
        return ""
    chips = "".join(f'<span class="ba-chip">{_e(p)}</span>' for p in reply.understood)
    notes = "".join(f'<div class="ba-quiet">{_e(n)}</div>' for n in reply.notes)
    return f'<div class="ba-understood">{chips}</div>{notes}'


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]<>#|~])")


def _md(text: str) -> str:
    return _MD_SPECIAL.sub(r"\\\1", text)


def chat_markdown(reply: Reply) -> str:
    """The assistant's chat message: the intro, one line per bundle, quiet notes."""
    if reply.phase == "thinking":
        return "…"
    lines = [_md(reply.text)] if reply.text else []
    for b in reply.bundles:
        saving = f" (save {money(b.savings)})" if b.savings else ""
        lines.append(f"**{b.rank}. {_md(b.name)}** — {money(b.bundle_price)}{saving}")
    if reply.bundles and not reply.done:
        lines.append("*Refining with the assistant's ideas…*")
    for note in reply.notes:
        lines.append(f"<small>{html.escape(note)}</small>")
    return "\n\n".join(lines)


# Colours as variables, with a dark set: every text pair here meets WCAG AA (4.5:1) on the
# card and page backgrounds of both Gradio modes, and bar fills 3:1 against their track
# (tests/test_browser.py measures them).
CSS = """
:root{--ba-accent:#047857;--ba-accent-fg:#ffffff;--ba-chip-bg:#e5e7eb;--ba-chip-fg:#111827;
  --ba-subdued:#4b5563;--ba-track:#d1d5db;--ba-fill:#047857;--ba-neg:#c2410c}
.dark{--ba-accent:#34d399;--ba-accent-fg:#052e16;--ba-chip-bg:#374151;--ba-chip-fg:#f9fafb;
  --ba-subdued:#d1d5db;--ba-track:#4b5563;--ba-fill:#34d399;--ba-neg:#fb923c}
.ba-card,.ba-line{border:1px solid var(--border-color-primary);border-radius:12px;padding:10px 14px;
  background:var(--background-fill-primary);color:var(--body-text-color);box-shadow:0 1px 2px rgba(0,0,0,.05)}
.ba-line{padding:8px 12px}
.ba-head{display:flex;align-items:baseline;gap:8px}
.ba-rank{background:var(--ba-accent);color:var(--ba-accent-fg);border-radius:999px;min-width:1.6em;
  text-align:center;font-weight:700;font-size:.85em;padding:1px 6px}
.ba-name{font-weight:600;flex:1}
.ba-price{font-weight:700;font-size:1.3em;color:var(--ba-accent)}
.ba-line-total{font-weight:700;color:var(--ba-accent);font-variant-numeric:tabular-nums}
.ba-save{font-size:.85em;color:var(--ba-accent)}
.ba-muted,.ba-quiet{color:var(--ba-subdued);font-size:.85em}
.ba-items{list-style:none;padding:0;margin:6px 0}
.ba-items li{display:flex;justify-content:space-between;gap:10px;padding:2px 0;font-size:.9em;
  border-bottom:1px dashed var(--border-color-primary)}
.ba-line .ba-items li{font-size:.8em}
.ba-item-price{white-space:nowrap;font-variant-numeric:tabular-nums}
.ba-why summary{cursor:pointer;font-size:.85em}
.ba-bar{display:grid;grid-template-columns:8.5em 1fr 3.5em;gap:6px;align-items:center;font-size:.8em;margin:2px 0}
.ba-track{background:var(--ba-track);border-radius:4px;height:8px;overflow:hidden;display:block}
.ba-fill{background:var(--ba-fill);height:100%;display:block}
.ba-fill.neg{background:var(--ba-neg)}
.ba-bar-num{text-align:right;font-variant-numeric:tabular-nums}
.ba-note{font-size:.78em;color:var(--ba-subdued);margin-top:4px}
.ba-cart{border:1px solid var(--border-color-primary);border-radius:12px;padding:10px 14px}
.ba-cart-title{font-weight:600}
.ba-total{display:flex;justify-content:space-between;font-weight:700;font-size:1.1em;margin-top:4px}
.ba-understood{display:flex;flex-wrap:wrap;gap:4px}
.ba-chip{background:var(--ba-chip-bg);color:var(--ba-chip-fg);border-radius:999px;padding:1px 8px;font-size:.8em}
.ba-slot,.ba-line-slot{gap:6px !important}
.ba-line-slot button{min-width:2.6em !important}
/* the chat's floating label and icons get a band of their own instead of covering messages */
#chat .wrapper{padding-top:36px;box-sizing:border-box}
#chat .bubble-wrap{height:100%}
.ba-persona-info p{margin:0}
@media (max-width:640px){
  /* a phone: everything above the first card fits in one screen (tests/test_browser.py) */
  .ba-title h2{font-size:1.1em;margin:0 !important}
  .ba-persona{flex-direction:column;gap:4px !important}
  .ba-persona-info *{font-size:13px !important;line-height:1.35 !important}
  #chat{height:min(280px,34vh) !important}
  .ba-chips{flex-wrap:nowrap !important;overflow-x:auto;gap:6px !important}
  .ba-chips > *{flex:0 0 auto !important;min-width:0 !important;width:auto !important}
  .ba-main,.ba-chat-col,.ba-cards-col{gap:8px !important}
  /* once there is an answer the examples make room for it (Gradio prefixes every rule
     here with its container, so the anchor is our own row) */
  .ba-main:has(#bundle-card-1 .ba-card) #ba-examples{display:none !important}
}
"""

# Accessible names that say which bundle a button acts on ("Add bundle 2, Beef taco night,
# to cart"): Gradio buttons take no aria-label, so this sets it from the card next to them,
# again whenever the cards change.
HEAD = """<script>
(() => {
  const name = (el, text) => { if (el && el.getAttribute('aria-label') !== text) el.setAttribute('aria-label', text); };
  const label = () => {
    document.querySelectorAll('.ba-slot').forEach(slot => {
      const card = slot.querySelector('.ba-card');
      if (!card) return;
      const what = `bundle ${card.dataset.rank}, ${card.dataset.name}`;
      name(slot.querySelector('button.ba-add'), `Add ${what}, to cart`);
      name(slot.querySelector('button.ba-like'), `Like ${what}`);
      name(slot.querySelector('button.ba-dislike'), `Not for me: ${what}`);
    });
    document.querySelectorAll('.ba-line-slot').forEach(slot => {
      const line = slot.querySelector('.ba-line');
      if (!line) return;
      const what = line.dataset.name;
      name(slot.querySelector('button.ba-less'), `One less ${what}`);
      name(slot.querySelector('button.ba-more'), `One more ${what}`);
      name(slot.querySelector('button.ba-remove'), `Remove ${what} from the cart`);
    });
  };
  new MutationObserver(label).observe(document.documentElement, {subtree: true, childList: true, characterData: true});
})();
</script>"""



# ------------------------------------------------------------------------------ sessions


@dataclass
class ShopperSession:
    """What ``gr.State`` holds per browser tab (or per gradio_client)."""

    persona: str
    conversation: Conversation
    messages: list[dict[str, str]] = field(default_factory=list)


@dataclass
class MerchAuth:
    user: str
    since: float

    def valid(self) -> bool:
        return time.time() - self.since < MERCH_SESSION_S


def merch_credentials_from_env() -> tuple[str, str] | None:
    user, password = os.environ.get(MERCH_USER_ENV, ""), os.environ.get(MERCH_PASSWORD_ENV, "")
    return (user, password) if user and password else None


def check_credentials(expected: tuple[str, str] | None, user: str, password: str) -> bool:
    """Constant-time comparison of both fields (no early exit on the user name)."""
    if expected is None:
        return False
    ok_user = hmac.compare_digest(str(user or "").encode(), expected[0].encode())
    ok_password = hmac.compare_digest(str(password or "").encode(), expected[1].encode())
    return ok_user and ok_password


def normalised_weights(values: dict[str, float]) -> dict[str, float]:
    return ObjectiveConfig(weights=values).weights


def parse_ids(text: str) -> list[str]:
    return [t for t in re.split(r"[\s,;]+", text or "") if t]


_FROM_ENV = object()


# ------------------------------------------------------------------------------ the app


def build_app(
    assistant: BundleAssistant,
    *,
    use_llm: bool = True,
    personas: list[Persona] | None = None,
    feedback: FeedbackStore | None = None,
    merch_credentials: Any = _FROM_ENV,
    cards: int = CARDS,
) -> gr.Blocks:
    """The Gradio Blocks app. ``use_llm=False`` runs rules only (no intro, no LLM
    proposals): fast, for tests. Credentials default to the environment."""
    store = feedback or FeedbackStore(Path(assistant.settings.data_dir) / "feedback.sqlite")
    personas = personas or discover_personas(assistant)
    by_key = {p.key: p for p in personas}
    creds = merch_credentials_from_env() if merch_credentials is _FROM_ENV else merch_credentials
    departments = sorted(d for d in assistant.index.products["department"].dropna().unique() if d)
    default_weights = assistant.settings.objective.weights

    # -- shopper handlers -----------------------------------------------------------

    def session_for(persona: str, session: ShopperSession | None) -> ShopperSession:
        persona = persona if persona in by_key else personas[0].key
        if session is None or session.persona != persona:
            conv = Conversation(assistant, store, user_id=None if persona == GUEST_KEY else persona,
                                use_llm=use_llm, cards=cards)
            session = ShopperSession(persona=persona, conversation=conv)
        return session

    def card_outputs(reply: Reply | None) -> list[Any]:
        bundles = reply.bundles if reply else []
        htmls = [card_html(bundles[i]) if i < len(bundles) else "" for i in range(cards)]
        slots = [gr.update(visible=i < len(bundles)) for i in range(cards)]
        return htmls + slots

    def respond(message: str, persona: str, session: ShopperSession | None) -> Iterator[tuple]:
        session = session_for(persona, session)
        text = sanitize_message(message, MAX_MESSAGE_CHARS)
        history = [*session.messages, {"role": "user", "content": text}] if text else list(session.messages)
        chat = history
        for reply in session.conversation.turn(message or ""):
            chat = [*history, {"role": "assistant", "content": chat_markdown(reply)}]
            yield (chat, reply.as_dict(), "", understood_html(reply), *card_outputs(reply), session)
        session.messages = chat[-40:]

    def chip_handler(label: str):
        def handler(persona: str, session: ShopperSession | None):
            yield from respond(CHIP_MESSAGES[label], persona, session)
        handler.__name__ = f"chip_{label.lower().replace(' ', '_')}"
        return handler

    def set_persona(persona: str, session: ShopperSession | None):
        session = session_for(persona, None)
        info = by_key.get(session.persona, GUEST).description
        cart = session.conversation.cart
        return ([], {}, "", *card_outputs(None), cart_html(cart), cart.as_dict(), info, session)

    def cart_handler(number: int):
        def handler(persona: str, session: ShopperSession | None):
            session = session_for(persona, session)
            conv = session.conversation
            try:
                line = conv.add_to_cart(number)
                gr.Info(f"Added “{line.name}” to your cart.", duration=3)
            except ServiceError as exc:
                gr.Warning(str(exc))
            return cart_html(conv.cart), conv.cart.as_dict(), session
        handler.__name__ = f"add_to_cart_{number}"
        return handler

    def thumb_handler(kind: str, number: int):
        def handler(reason: str, persona: str, session: ShopperSession | None):
            session = session_for(persona, session)
            conv = session.conversation
            try:
                bundle = conv.like(number, reason) if kind == "like" else conv.dislike(number, reason)
            except ServiceError as exc:
                return reason, f"*{_md(str(exc))}*", session
            word = "Glad you like" if kind == "like" else "Noted — fewer picks like"
            return "", f"{word} **{_md(bundle.name)}**. The next answers take it into account.", session
        handler.__name__ = f"{kind}_{number}"
        return handler

    def clear_cart(persona: str, session: ShopperSession | None):
        session = session_for(persona, session)
        session.conversation.clear_cart()
        return cart_html(session.conversation.cart), session.conversation.cart.as_dict(), session

    def cart_line_outputs(cart: Cart) -> list[Any]:
        lines = cart.lines[:CART_LINES]
        htmls = [cart_line_html(lines[i], i + 1) if i < len(lines) else "" for i in range(CART_LINES)]
        return htmls + [gr.update(visible=i < len(lines)) for i in range(CART_LINES)]

    def show_cart_lines(session: ShopperSession | None):
        return cart_line_outputs(session.conversation.cart if session else Cart())

    def line_handler(kind: str, number: int):
        """One less / one more / remove, on cart line ``number`` (1-based)."""
        def handler(persona: str, session: ShopperSession | None):
            session = session_for(persona, session)
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
            return (cart_html(cart), cart.as_dict(), *cart_line_outputs(cart), session)
        handler.__name__ = f"cart_line_{number}_{kind}"
        return handler

    # -- merchandiser handlers --------------------------------------------------------

    def require_merch(auth: MerchAuth | None) -> None:
        if creds is None:
            raise gr.Error("The merchandiser tools are off: set BUNDLE_MERCH_USER and BUNDLE_MERCH_PASSWORD.")
        if not isinstance(auth, MerchAuth) or not auth.valid():
            raise gr.Error("Sign in to the merchandiser tab first.")

    def merch_login(user: str, password: str, auth: MerchAuth | None):
        if creds is None:
            return None, "The merchandiser tools are off on this server.", gr.update(visible=False)
        if not check_credentials(creds, user, password):
            time.sleep(0.5)  # slows down guessing
            return None, "Wrong user name or password.", gr.update(visible=False)
        signed_in = MerchAuth(user=str(user), since=time.time())
        return signed_in, f"Signed in as **{_md(str(user))}**.", gr.update(visible=True)

    def merch_logout(auth: MerchAuth | None):
        return None, "Signed out.", gr.update(visible=False)

    def weights_text(w_pref: float, w_comp: float, w_margin: float, w_sales: float) -> str:
        raw = dict(zip(OBJECTIVE_COMPONENTS, (w_pref, w_comp, w_margin, w_sales)))
        try:
            norm = normalised_weights(raw)
        except ValueError:
            return "*Set at least one weight above zero.*"
        return "Normalised objective: " + " · ".join(f"{k} **{v:.0%}**" for k, v in norm.items())

    def merch_generate(theme: str, w_pref: float, w_comp: float, w_margin: float, w_sales: float,
                       min_margin: float, max_bundle_price: float | None, min_unit: float | None,
                       max_unit: float | None, depts: list[str] | None, pins: str, excludes: str,
                       k: float, auth: MerchAuth | None):
        require_merch(auth)
        raw = dict(zip(OBJECTIVE_COMPONENTS, (w_pref, w_comp, w_margin, w_sales)))
        try:
            weights = normalised_weights(raw)
        except ValueError as exc:
            raise gr.Error(str(exc)) from exc
        pinned, excluded = parse_ids(pins), parse_ids(excludes)
        unknown = [p for p in pinned + excluded if p not in assistant.index.row_of.index]
        if unknown:
            raise gr.Error(f"Unknown product id(s): {', '.join(unknown[:10])}")
        try:
            constraints = Constraints(
                min_margin=float(min_margin) if min_margin else None,
                budget=float(max_bundle_price) if max_bundle_price else None,
                min_unit_price=float(min_unit) if min_unit else None,
                max_unit_price=float(max_unit) if max_unit else None,
                departments=list(depts or []), pinned=pinned, excluded_products=excluded,
            )
            rec = assistant.recommend(query=(theme or "").strip()[:300], constraints=constraints,
                                      k=max(1, int(k or 10)), use_llm=use_llm, weights=weights,
                                      template="merchandiser_ideation")
        except (ServiceError, ValueError) as exc:
            raise gr.Error(str(exc)) from exc
        table = results_frame(rec.bundles)
        csv_path = Path(tempfile.mkdtemp(prefix="bundle-merch-")) / "bundles.csv"
        neutralise_frame(table).to_csv(csv_path, index=False)
        plot = table[["rank", "name", "preference", "margin", "score", "source"]]
        status = (f"{len(rec.bundles)} bundles · {rec.rejected} rejected by hard constraints · "
                  f"mode {rec.mode} · {rec.timings.get('total', 0):.1f}s")
        if rec.notes:
            status += "\n\n" + "\n\n".join(f"*{_md(n)}*" for n in rec.notes)
        return table, plot, str(csv_path), status

    def merch_search(query: str, auth: MerchAuth | None):
        require_merch(auth)
        if not (query or "").strip():
            return pd.DataFrame(columns=["product_id", "title", "price", "department", "reason"])
        hits = assistant.search(query.strip()[:200], k=15)
        return pd.DataFrame(hits)[["product_id", "title", "price", "department", "reason"]]

    # -- layout -----------------------------------------------------------------------

    with gr.Blocks(title="Bundle assistant") as demo:
        gr.Markdown("## Bundle assistant", elem_classes="ba-title")
        with gr.Tabs():
            with gr.Tab("Shop", id="shop"):
                session_state = gr.State(None)
                with gr.Row(equal_height=False, elem_classes="ba-main"):
                    with gr.Column(scale=5, elem_classes="ba-chat-col"):
                        with gr.Row(elem_classes="ba-persona"):
                            persona = gr.Dropdown(choices=[(p.label, p.key) for p in personas],
                                                  value=personas[0].key, label="Shopping as", scale=1)
                            persona_info = gr.Markdown(personas[0].description, elem_classes="ba-persona-info")
                        chatbot = gr.Chatbot(label="Assistant", height=430, buttons=["copy"],
                                             feedback_options=None, elem_id="chat",
                                             placeholder="Ask for bundle ideas — a meal, an occasion, a budget.")
                        with gr.Row():
                            message = gr.Textbox(placeholder="e.g. " + EXAMPLES[0], show_label=False,
                                                 scale=6, max_lines=3, max_length=500, autofocus=True)
                            send = gr.Button("Send", variant="primary", scale=1, min_width=80)
                        with gr.Row(elem_classes="ba-chips"):
                            chip_buttons = [gr.Button(label, size="sm") for label, _ in CHIPS]
                        with gr.Column(elem_id="ba-examples"):
                            gr.Examples(list(EXAMPLES), inputs=message, label="Try")
                    with gr.Column(scale=4, elem_classes="ba-cards-col"):
                        understood = gr.HTML()
                        slots, card_views, cart_buttons, likes, dislikes = [], [], [], [], []
                        for i in range(cards):
                            with gr.Column(visible=False, elem_classes="ba-slot") as slot:
                                card_views.append(gr.HTML(elem_id=f"bundle-card-{i + 1}"))
                                with gr.Row():
                                    cart_buttons.append(gr.Button("Add to cart", variant="primary", size="sm",
                                                                  scale=3, elem_classes="ba-add"))
                                    likes.append(gr.Button("Like", size="sm", scale=1, min_width=60,
                                                           elem_classes="ba-like"))
                                    dislikes.append(gr.Button("Not for me", size="sm", scale=1, min_width=60,
                                                              elem_classes="ba-dislike"))
                            slots.append(slot)
                        reason = gr.Textbox(label="Why? (optional, sent with Like / Not for me)", max_lines=1,
                                            max_length=300)
                        feedback_note = gr.Markdown()
                        cart_view = gr.HTML(cart_html(Cart()), elem_id="cart")
                        line_views, line_slots, line_buttons = [], [], []
                        for i in range(CART_LINES):
                            with gr.Column(visible=False, elem_classes="ba-line-slot",
                                           elem_id=f"cart-line-{i + 1}") as line_slot:
                                line_views.append(gr.HTML())
                                with gr.Row():
                                    line_buttons.append((
                                        gr.Button("−", size="sm", scale=1, elem_classes="ba-less"),
                                        gr.Button("+", size="sm", scale=1, elem_classes="ba-more"),
                                        gr.Button("Remove", size="sm", scale=2, elem_classes="ba-remove"),
                                    ))
                            line_slots.append(line_slot)
                        cart_json = gr.JSON(visible=False)
                        empty_cart = gr.Button("Empty cart", size="sm")
                        bundles_json = gr.JSON(visible=False)

                chat_outputs = [chatbot, bundles_json, message, understood, *card_views, *slots, session_state]
                common: dict[str, Any] = {"show_progress": "hidden", "concurrency_limit": None}
                message.submit(respond, [message, persona, session_state], chat_outputs, api_name="chat", **common)
                send.click(respond, [message, persona, session_state], chat_outputs, api_name="send", **common)
                for button, (label, api) in zip(chip_buttons, CHIPS):
                    button.click(chip_handler(label), [persona, session_state], chat_outputs,
                                 api_name=api, **common)
                # the cart's lines follow every change of the cart (a step of its own, so the
                # add/empty/persona endpoints keep their outputs for gradio_client)
                line_outputs = [*line_views, *line_slots]
                hidden: dict[str, Any] = {"api_visibility": "private", "show_progress": "hidden"}
                persona.change(set_persona, [persona, session_state],
                               [chatbot, bundles_json, understood, *card_views, *slots, cart_view, cart_json,
                                persona_info, session_state], api_name="set_persona"
                               ).then(show_cart_lines, [session_state], line_outputs, **hidden)
                for i in range(cards):
                    n = i + 1
                    cart_buttons[i].click(cart_handler(n), [persona, session_state],
                                          [cart_view, cart_json, session_state], api_name=f"add_to_cart_{n}"
                                          ).then(show_cart_lines, [session_state], line_outputs, **hidden)
                    likes[i].click(thumb_handler("like", n), [reason, persona, session_state],
                                   [reason, feedback_note, session_state], api_name=f"like_{n}")
                    dislikes[i].click(thumb_handler("dislike", n), [reason, persona, session_state],
                                      [reason, feedback_note, session_state], api_name=f"dislike_{n}")
                empty_cart.click(clear_cart, [persona, session_state], [cart_view, cart_json, session_state],
                                 api_name="empty_cart"
                                 ).then(show_cart_lines, [session_state], line_outputs, **hidden)
                for i, buttons in enumerate(line_buttons):
                    for button, kind in zip(buttons, ("less", "more", "remove")):
                        button.click(line_handler(kind, i + 1), [persona, session_state],
                                     [cart_view, cart_json, *line_outputs, session_state],
                                     api_name=f"cart_line_{i + 1}_{kind}")

            with gr.Tab("Merchandiser", id="merchandiser"):
                auth_state = gr.State(None)
                if creds is None:
                    gr.Markdown("**The merchandiser tools are off.** Set `BUNDLE_MERCH_USER` and "
                                "`BUNDLE_MERCH_PASSWORD` in the environment and restart the app.")
                with gr.Row(visible=creds is not None):
                    merch_user = gr.Textbox(label="User", max_lines=1, scale=2)
                    merch_password = gr.Textbox(label="Password", type="password", max_lines=1, scale=2)
                    login = gr.Button("Sign in", variant="primary", scale=1)
                    logout = gr.Button("Sign out", scale=1)
                login_status = gr.Markdown()
                with gr.Column(visible=False) as tools:
                    theme = gr.Textbox(label="Theme", placeholder="back-to-school lunch", max_lines=1,
                                       max_length=300)
                    with gr.Row():
                        sliders = [gr.Slider(0, 1, value=round(default_weights[c], 2), step=0.05, label=c)
                                   for c in OBJECTIVE_COMPONENTS]
                    weights_md = gr.Markdown(weights_text(*(default_weights[c] for c in OBJECTIVE_COMPONENTS)))
                    with gr.Row():
                        min_margin = gr.Slider(0, 0.6, value=0, step=0.01, label="Minimum margin after discount")
                        max_price = gr.Number(label="Bundle price up to ($, 0 = any)", value=0, minimum=0)
                        min_unit = gr.Number(label="Item price from ($, 0 = any)", value=0, minimum=0)
                        max_unit = gr.Number(label="Item price to ($, 0 = any)", value=0, minimum=0)
                    with gr.Row():
                        depts = gr.Dropdown(departments, multiselect=True, label="Departments (empty: all)")
                        pins = gr.Textbox(label="Pin product ids (in every bundle)", max_lines=1)
                        excludes = gr.Textbox(label="Exclude product ids", max_lines=1)
                        k = gr.Slider(1, 30, value=10, step=1, label="Bundles")
                    generate = gr.Button("Generate bundles", variant="primary")
                    merch_status = gr.Markdown()
                    results = gr.Dataframe(label="Bundles with every score component", max_height=420,
                                           pinned_columns=2)
                    with gr.Row():
                        plot = gr.ScatterPlot(x="preference", y="margin", color="source",
                                              tooltip=["rank", "name", "score"],
                                              title="Margin vs preference over the candidate bundles")
                        csv_file = gr.File(label="CSV export")
                    with gr.Accordion("Find product ids", open=False):
                        with gr.Row():
                            search_query = gr.Textbox(label="Search the catalogue", max_lines=1, scale=4)
                            search_btn = gr.Button("Search", scale=1)
                        search_results = gr.Dataframe(wrap=True)

                login.click(merch_login, [merch_user, merch_password, auth_state],
                            [auth_state, login_status, tools], api_name="merch_login")
                logout.click(merch_logout, [auth_state], [auth_state, login_status, tools],
                             api_name="merch_logout")
                for s in sliders:
                    s.change(weights_text, sliders, weights_md, api_name=f"merch_weights_{s.label}",
                             api_visibility="private", show_progress="hidden")
                generate.click(merch_generate,
                               [theme, *sliders, min_margin, max_price, min_unit, max_unit, depts, pins,
                                excludes, k, auth_state],
                               [results, plot, csv_file, merch_status], api_name="merch_generate")
                search_btn.click(merch_search, [search_query, auth_state], search_results, api_name="merch_search")
    return demo


def results_frame(bundles: list[ShownBundle]) -> pd.DataFrame:
    """One row per bundle: prices, margin and every score component's value."""
    rows = []
    for b in bundles:
        row = {
            "rank": b.rank, "name": b.name,
            "items": "; ".join(i.title for i in b.items),
            "product_ids": " ".join(b.item_ids),
            "list_price": b.list_price, "bundle_price": b.bundle_price, "savings": b.savings,
            "margin_rate": round(b.margin_rate, 4), "score": round(b.score, 4),
        }
        for name, comp in b.score_breakdown.items():
            row[name] = round(comp.value, 4)
            row[f"{name}_contribution"] = round(comp.contribution, 4)
        row.update(source=b.source, explanation=b.explanation, llm_reason=b.llm_reason)
        rows.append(row)
    columns = ["rank", "name", "bundle_price", "list_price", "savings", "margin_rate", "score",
               *OBJECTIVE_COMPONENTS, "redundancy",
               *[f"{n}_contribution" for n in (*OBJECTIVE_COMPONENTS, "redundancy")],
               "items", "product_ids", "source", "explanation", "llm_reason"]
    return pd.DataFrame(rows, columns=columns)


# ------------------------------------------------------------------------------ serving


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int | None = 7860, *,
           prevent_thread_lock: bool = False, quiet: bool = False) -> str:
    """Queue and serve the app; returns its local URL."""
    demo.queue(default_concurrency_limit=16, max_size=256)
    _, url, _ = demo.launch(
        server_name=host, server_port=port, prevent_thread_lock=prevent_thread_lock, quiet=quiet,
        css=CSS, head=HEAD, theme=gr.themes.Soft(primary_hue="emerald"), footer_links=["api"],
        ssr_mode=False, mcp_server=False, share=False, inbrowser=False,
    )
    return url


def first_start_message(data_dir: Path, limit: int | None = None) -> str:
    what = f"a {limit}-household slice of" if limit else "the full"
    took = "a minute or two" if limit else CJ_BUILD_ESTIMATE
    return f"No index in {data_dir}: building {what} Complete Journey data. This happens once and takes {took}."


def ensure_index(settings: Settings, limit: int | None = None, out=sys.stderr) -> bool:
    """Build the Complete Journey index when the data dir has none. True when built.
    Raises :class:`PartialBuild` (nothing switched) when the data would not make an index."""
    if read_current(Path(settings.data_dir)) is not None:
        return False
    from assistant.privacy import pseudonymise
    from retrieval.buildtime import BuildProgress
    from retrieval.index import build_index
    from retrieval.sources import load_source

    print(first_start_message(Path(settings.data_dir), limit), file=out, flush=True)
    progress = BuildProgress(out, marker="  [{}]")
    try:
        ds = load_source("completejourney", None, settings=settings, limit=limit)
        s = ds.summary()
        progress.bar.write(f"  loaded {s['products']} products, {s['interactions']} purchases, "
                           f"{s['users']} households", file=out)
        build_index(ds, settings, pseudonymise=lambda u: pseudonymise(u, data_dir=settings.data_dir),
                    progress=True, on_stage=progress.stage)
        progress.close()
    finally:
        progress.bar.leave = False
        progress.bar.close()
    print("  index ready.", file=out, flush=True)
    return True


def listen_problem(host: str, port: int) -> str | None:
    """Why the app could not listen on ``host:port``, or None when it can. Probed before
    the minutes of warm-up, so a busy port fails at once. SO_REUSEADDR as the server
    itself uses it: a port left in TIME_WAIT by an app just stopped is free."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        return f"cannot listen on {host}: {exc}; pass --host 127.0.0.1 (or set GRADIO_SERVER_NAME)"
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return (f"port {port} on {host} is already in use (another app.py?); "
                        f"start on another port with --port {port + 1 if port < 65535 else 7861} "
                        "(or set GRADIO_SERVER_PORT)")
            return f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another --host or --port"
    return None


def warm_up(assistant: BundleAssistant, use_llm: bool, out=sys.stderr) -> bool:
    """Open the index and models before the first shopper arrives. Returns whether the
    LLM is usable (when it is not, the app runs on rules and says so in each reply)."""
    start = time.perf_counter()
    assistant.warm_up()
    print(f"index and embedder ready in {time.perf_counter() - start:.1f}s", file=out, flush=True)
    if not use_llm:
        return False
    print("loading the language model (the first run converts it, ~30 s) ...", file=out, flush=True)
    try:
        llm = assistant.llm
    except Exception as exc:
        print(f"  the language model could not load ({exc}); answers will use rules only", file=out, flush=True)
        return False
    gc.freeze()  # the model's objects too, as assistant.warm_up() did for the index
    start_memory_trimmer()
    print(f"  {llm.name} on {llm.device} ready", file=out, flush=True)
    return True


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a port number") from None
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"a port is 1..65535, got {text}")
    return value


def _fail(message: str) -> int:
    """One line on stderr and exit code 2, the CLI's convention for what the user can fix."""
    print(f"app.py: error: {message}", file=sys.stderr, flush=True)
    return EXIT_USER_ERROR


def main(argv: list[str] | None = None) -> int:
    from retrieval.config import env_settings
    from retrieval.embeddings import EmbeddingModelMissing
    from retrieval.index import IndexMissing
    from retrieval.schema import SchemaError
    from retrieval.store import StoreUnavailable
    from retrieval.validation import PartialBuild

    try:
        env = env_settings()  # BUNDLE_HOST/PORT, else Gradio's own GRADIO_SERVER_NAME/PORT
    except ValueError as exc:  # pydantic's ValidationError, e.g. GRADIO_SERVER_PORT=abc
        first = exc.errors()[0] if hasattr(exc, "errors") else {}
        return _fail(f"bad environment variable for {'.'.join(map(str, first.get('loc', ())))}: "
                     f"{first.get('msg', exc)}")
    parser = argparse.ArgumentParser(
        description="Bundle assistant web app (Gradio)",
        epilog="With no index in the data dir the first start builds the Complete Journey index "
               f"({CJ_BUILD_ESTIMATE}).")
    parser.add_argument("--host", default=env.host, help="default $BUNDLE_HOST, $GRADIO_SERVER_NAME or %(default)s")
    parser.add_argument("--port", type=_port, default=env.port,
                        help="default $BUNDLE_PORT, $GRADIO_SERVER_PORT or %(default)s")
    parser.add_argument("--data-dir", type=Path, help="index folder (default: $BUNDLE_DATA_DIR or the user cache)")
    parser.add_argument("--limit", type=int, help="if no index exists, build only this many households (quick)")
    parser.add_argument("--no-llm", action="store_true", help="rules only: no LLM intro or proposals")
    parser.add_argument("--model", help="another causal LM (local path or cached hub id)")
    parser.add_argument("--personas", type=int, default=4, help="households in the persona picker")
    args = parser.parse_args(argv)
    problem = listen_problem(args.host, args.port)
    if problem:
        return _fail(problem)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = Settings(**({"data_dir": args.data_dir} if args.data_dir else {}))
    if args.model:
        settings.llm.model = args.model
    fix = f"`bundle-assistant index --force --data-dir {settings.data_dir}` rebuilds it"
    try:
        ensure_index(settings, limit=args.limit)
        assistant = BundleAssistant(settings)
        use_llm = warm_up(assistant, not args.no_llm)
        demo = build_app(assistant, use_llm=use_llm, personas=discover_personas(assistant, args.personas))
    except PartialBuild as exc:
        return _fail(f"could not build the first index: {exc}")
    except (IndexMissing, StoreUnavailable) as exc:
        return _fail(f"{exc}" if "bundle-assistant index" in str(exc) else f"{exc}; {fix}")
    except (EmbeddingModelMissing, SchemaError) as exc:
        return _fail(str(exc))
    if merch_credentials_from_env() is None:
        print(f"merchandiser tab off: set {MERCH_USER_ENV} and {MERCH_PASSWORD_ENV} to enable it", file=sys.stderr)
    print(f"open http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    try:
        launch(demo, args.host, args.port)
    except OSError as exc:  # taken between the probe and now
        return _fail(listen_problem(args.host, args.port) or f"could not start the server: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
