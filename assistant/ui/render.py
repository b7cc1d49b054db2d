"""HTML and Markdown for the web UI. Only catalogue, reranker and conversation data goes
in, and every piece of text is escaped: catalogue titles and chat messages are untrusted."""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from typing import Any

import pandas as pd

from retrieval.titles import short_name

from ..conversation import Cart, CartLine, Reply
from ..service import ShownBundle

NAME_CHARS = 60  # a bundle name on a card; cut at a word, never mid-word

COMPONENT_WORDS: dict[str, tuple[str, str]] = {
    "preference": ("Fits your taste", "close to what you buy or asked for"),
    "complementarity": ("Go well together", "often bought in the same basket"),
    "margin": ("Store value", "the store's margin after the discount"),
    "sales": ("Popular picks", "how often these items sell"),
    "redundancy": ("Overlap", "near-duplicate items, subtracted"),
    "repeats": ("Shown above", "products a higher-ranked bundle already shows, subtracted"),
}


def money(value: float | None) -> str:
    return "—" if value is None else f"${value:,.2f}"


def esc(text: object) -> str:
    return html.escape(str(text), quote=True)


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]<>#|~])")


def md(text: str) -> str:
    """Text for a Markdown component, with Markdown's special characters escaped."""
    return _MD_SPECIAL.sub(r"\\\1", text)


class Titles:
    """Display titles for people ("Soft drink · name brand · 2 l"); the catalogue's raw
    title stays available (as the tooltip here, for search and export elsewhere)."""

    def __init__(self, catalogue: pd.DataFrame | None):
        column = None
        if catalogue is not None and "display_title" in catalogue.columns:
            column = catalogue["display_title"]
        self._display: Mapping[str, Any] = column.to_dict() if column is not None else {}

    def of(self, product_id: str, raw: str, given: str | None = None) -> str:
        shown = given or self._display.get(str(product_id))
        return str(shown) if isinstance(shown, str) and shown.strip() else raw


def bundle_name(name: str) -> str:
    return short_name(name, NAME_CHARS, "…")


def item_html(title: str, raw: str, price: float | None) -> str:
    return (f'<li><span class="ba-item" title="{esc(raw)}">{esc(title)}</span>'
            f'<span class="ba-item-price">{money(price)}</span></li>')


def breakdown_html(bundle: ShownBundle) -> str:
    rows = []
    for name, comp in bundle.score_breakdown.items():
        label, hint = COMPONENT_WORDS.get(name, (name.title(), ""))
        if name in ("redundancy", "repeats") and comp.value <= 0:
            continue
        width = max(0.0, min(1.0, comp.value)) * 100
        cls = "ba-fill neg" if comp.contribution < 0 else "ba-fill"
        rows.append(
            f'<div class="ba-bar" title="{esc(hint)}: value {comp.value:.2f} × weight {comp.weight:.2f}">'
            f'<span class="ba-bar-label">{esc(label)}</span>'
            f'<span class="ba-track"><span class="{cls}" style="width:{width:.0f}%"></span></span>'
            f'<span class="ba-bar-num">{comp.contribution:+.2f}</span></div>'
        )
    return "".join(rows)


def _savings_html(bundle: ShownBundle) -> str:
    if bundle.price_known and bundle.savings:
        return (f'<div class="ba-save">was <s>{money(bundle.list_price)}</s> · you save '
                f'{money(bundle.savings)} ({bundle.discount:.0%})</div>')
    if bundle.price_known:
        return '<div class="ba-save ba-muted">bundle price</div>'
    return '<div class="ba-save ba-muted">price on request</div>'


def card_html(bundle: ShownBundle, titles: Titles, rank: int | None = None) -> str:
    """A bundle card. ``rank`` is its place on screen (after a "Not for me" the cards
    below move up)."""
    rank = bundle.rank if rank is None else rank
    items = "".join(item_html(titles.of(i.product_id, i.title, getattr(i, "display_title", None)), i.title,
                              i.price) for i in bundle.items)
    source = "suggested by the assistant" if bundle.source == "llm" else "built from shopping patterns"
    note = f'<div class="ba-note">“{esc(bundle.llm_reason)}”</div>' if bundle.llm_reason else ""
    name = bundle_name(bundle.name)
    return (
        f'<div class="ba-card" data-rank="{rank}" data-name="{esc(name)}">'
        f'<div class="ba-head"><span class="ba-rank">{rank}</span>'
        f'<span class="ba-name" title="{esc(bundle.name)}">{esc(name)}</span>'
        f'<span class="ba-price">{money(bundle.bundle_price)}</span></div>{_savings_html(bundle)}'
        f'<ul class="ba-items">{items}</ul>'
        f'<details class="ba-why"><summary>Why this bundle: {esc(bundle.explanation)}</summary>'
        f'{breakdown_html(bundle)}{note}'
        f'<div class="ba-note">score {bundle.score:.3f} · {source}</div></details></div>'
    )


def cart_html(cart: Cart, lines_shown: int) -> str:
    """The cart's summary: title, total and savings. Its lines are :func:`cart_line_html`."""
    if not cart.lines:
        return ('<div class="ba-cart"><div class="ba-cart-title">Your cart</div>'
                '<div class="ba-muted">Empty — add a bundle you like.</div></div>')
    savings = f'<div class="ba-save">You save {money(cart.savings)}</div>' if cart.savings else ""
    more = len(cart.lines) - lines_shown
    hidden = (f'<div class="ba-muted">and {more} more bundle{"s" if more > 1 else ""} '
              f'(remove a line to edit them)</div>') if more > 0 else ""
    return (f'<div class="ba-cart"><div class="ba-cart-title">Your cart ({cart.count})</div>'
            f'<div class="ba-total">Total <span class="ba-cart-total">{money(cart.total)}</span></div>'
            f'{savings}{hidden}</div>')


def cart_line_html(line: CartLine, number: int, titles: Titles) -> str:
    """One cart line: its name, quantity and total, and the items it holds."""
    items = "".join(item_html(titles.of(str(i.get("product_id", "")), str(i.get("title", "")),
                                        i.get("display_title")), str(i.get("title", "")), i.get("price"))
                    for i in line.items)
    return (f'<div class="ba-line" data-line="{number}" data-name="{esc(line.name)}">'
            f'<div class="ba-head"><span class="ba-name">{esc(line.name)}</span>'
            f'<span class="ba-line-total">{money(line.line_total)}</span></div>'
            f'<div class="ba-muted"><span class="ba-qty">{line.quantity}</span> × {money(line.bundle_price)}</div>'
            f'<ul class="ba-items">{items}</ul></div>')


def understood_html(reply: Reply | None, turn: int = 0) -> str:
    """The request's own chips (what was read) and the quiet notes; the refinement
    chips are buttons of their own (they can be taken back). The wrapper says which
    turn this is and whether its reply is complete (scripts and tests wait on it)."""
    if reply is None:
        return ""
    fixed = [c.label for c in reply.chips if c.id is None] if reply.chips else list(reply.understood)
    chips = "".join(f'<span class="ba-chip">{esc(p)}</span>' for p in fixed)
    notes = "".join(f'<div class="ba-quiet">{esc(n)}</div>' for n in reply.notes)
    body = f'<div class="ba-understood">{chips}</div>{notes}' if fixed or reply.notes else ""
    return (f'<div class="ba-reply" data-turn="{turn}" data-phase="{esc(reply.phase)}" '
            f'data-done="{int(reply.done)}">{body}</div>')


def chat_markdown(reply: Reply) -> str:
    """The assistant's chat message: the intro (or question), one line per bundle, quiet notes."""
    if reply.phase == "thinking":
        return f"*{md(reply.text)}*" if reply.text else "…"
    lines = [md(reply.text)] if reply.text else []
    for b in reply.bundles:
        saving = f" (save {money(b.savings)})" if b.savings else ""
        lines.append(f"**{b.rank}. {md(bundle_name(b.name))}** — {money(b.bundle_price)}{saving}")
    if reply.bundles and not reply.done:
        lines.append("*Refining with the assistant's ideas…*")
    for note in reply.notes:
        lines.append(f"<small>{html.escape(note)}</small>")
    return "\n\n".join(lines)


def merch_chips_html(chips: list[tuple[str, str]]) -> str:
    """The theme's understood parts: (field, label) pairs, as chips."""
    if not chips:
        return ""
    spans = "".join(f'<span class="ba-chip" data-field="{esc(f)}">{esc(label)}</span>' for f, label in chips)
    return f'<div class="ba-understood" aria-label="Understood from the theme">{spans}</div>'
