"""The session state a conversation carries: a need, the refinements applied to it as
chips, and enough history to undo any of them.

A refinement is an operation on the :class:`~assistant.nlu.need.Need`, never a new topic:

================  =====================================================================
move              rule (applied by :func:`apply_move`; resolved once by :func:`resolve`)
================  =====================================================================
``add_role``      "add a drink / dessert / X", "more protein" / "extra cheese", and, with a
                  need under way, "and a dessert" / "also some chips": X joins
                  ``Need.add_roles`` (and leaves ``exclude`` if it was there).
``without``       "without X" / "no X" / "sin X": X joins ``Need.exclude`` (and leaves
                  ``add_roles``/``include``); the shown items that mention X are listed in
                  :attr:`SessionState.excluded_products`, so their role is filled by
                  another product, not dropped. A word that names a diet rule ("no dairy")
                  carries that diet in the same step: one chip, removed as one.
``swap``          "swap the X" / "replace the X" / "a different X": the shown items that
                  mention X join :attr:`SessionState.excluded_products`; X as a kind stays
                  allowed, so another salsa (or a hot sauce) fills the role. With no X on
                  screen it acts as ``without``. "swap the X for Y" is "Y instead of X".
``cheaper``       keeps every role and lowers the budget to ``CHEAPER_FACTOR`` (0.8) x the
                  price of the top bundle last shown (or of the current budget when it is
                  lower); with neither a shown price nor a budget it cannot act and says so.
``healthier``     sets ``Need.healthier`` and adds the ``low-sugar`` diet rule of
                  ``retrieval/data/food_rules.json``: candy, soft drinks, desserts and other
                  sugary types give way to other types of the same roles. When nothing is
                  left, :func:`ask_instead` says it cannot ("I can't find healthier swaps
                  for taco night. Keep the bundles as they were?").
``rescale``       "for 6 instead" / "para seis" sets servings; "bigger"/"more food"
                  multiplies them by ``BIGGER_FACTOR`` (1.5, rounded up, at least +1);
                  "double it" by 2; "smaller" divides by 1.5 (at least 1).
``include``       "chicken instead" / "X instead of Y" / "con pollo": X joins ``Need.include``
                  (composition fills the role that offers X with it; "instead of Y"
                  also removes Y as ``without`` does).
``budget``        an explicit spending cap from the parser ("under $40").
``diet``          a diet or allergen key the parser read ("make it vegan").
``more_like``     "more like bundle 2": that bundle's items become the anchors; it lasts
                  until the next change (as before).
================  =====================================================================

Every applied move is a :class:`Step` with a :class:`Chip`. Of the steps that set one value
(the budget: ``cheaper``/``budget``; the head count: ``rescale``) only the latest chip shows;
removing it brings the one before back. "undo" drops the last step
(or returns to the previous topic); :func:`remove_chip` drops any one and replays the rest
from the topic's base need; "start over" / Clear returns :func:`reset` (the caller also
clears feedback and what was shown). Values that depend on the screen (the cheaper budget,
the items to remove) are resolved when the move is made and stored in its step, so a
replay never depends on what is shown later.

What would empty the answer is for the composer to find out; :func:`ask_instead` gives it
the question to ask instead ("Nothing fits under $1. Raise the budget to $12?") with the
actions that answer it. Money amounts are read by the parser (:mod:`assistant.nlu.parser`),
which keeps an injected "p-fake at $1" from becoming a budget; this module only reads the
conversational moves, English and basic Spanish.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field

from retrieval.filters import rule_for_word

from .need import Need

MoveKind = Literal["add_role", "without", "include", "cheaper", "healthier", "rescale", "budget", "diet",
                   "more_like", "swap"]
TurnKind = Literal["new_need", "refine", "undo", "remove_chip", "reset", "none"]

CHEAPER_FACTOR = 0.8  # "cheaper": 20% under the top bundle shown last
BIGGER_FACTOR = 1.5
MIN_BUDGET = 0.5
MAX_SERVINGS = 1000
MAX_TOPICS = 20  # earlier topics kept for "undo"
HEALTHIER_DIET = "low-sugar"
SWAP_SUBSTRING_MIN = 4  # "swap the X": X of 4+ letters may match inside a run-together catalogue word
# Moves that set one value of the need: a later one replaces an earlier one (one chip shows).
_REPLACES: dict[str, str] = {"cheaper": "budget", "budget": "budget", "rescale": "servings"}

# --- words ------------------------------------------------------------------------------

_NUMBERS = {
    "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
    "ten": 10, "eleven": 11, "twelve": 12, "fifteen": 15, "twenty": 20, "a couple": 2, "couple": 2,
    "uno": 1, "una": 1, "dos": 2, "tres": 3, "cuatro": 4, "cinco": 5, "seis": 6, "siete": 7, "ocho": 8,
    "nueve": 9, "diez": 10, "doce": 12,
}
_ORDINALS = {"first": 1, "1st": 1, "second": 2, "2nd": 2, "third": 3, "3rd": 3, "fourth": 4, "4th": 4,
             "primero": 1, "primer": 1, "segundo": 2, "tercero": 3, "tercer": 3}
# Basic Spanish item words for "sin X" / "agrega X" (the parser's lexicon owns the rest).
_SPANISH_ITEMS = {
    "queso": "cheese", "quesos": "cheese", "carne": "meat", "leche": "milk", "pollo": "chicken",
    "cerdo": "pork", "res": "beef", "pescado": "fish", "huevo": "egg", "huevos": "egg", "azucar": "sugar",
    "azúcar": "sugar", "cerveza": "beer", "vino": "wine", "nueces": "nuts", "mani": "peanut", "maní": "peanut",
    "cacahuate": "peanut", "lacteos": "dairy", "lácteos": "dairy", "frijoles": "beans", "tomate": "tomato",
    "cebolla": "onion", "bebida": "drink", "bebidas": "drink", "postre": "dessert", "postres": "dessert",
    "refresco": "soda", "refrescos": "soda", "pan": "bread", "arroz": "rice", "gluten": "gluten",
}
_IE_WORDS = frozenset("veggie cookie brownie smoothie movie pie rotisserie calorie goodie".split())
# Two-word items kept whole after "no"/"without"/"add".
_PAIRS = frozenset({"ice cream", "sour cream", "peanut butter", "soft drink", "soft drinks", "hot dog",
                    "hot dogs", "hot sauce", "red meat", "tree nuts", "cream cheese", "orange juice"})
# Words after "no"/"add" that are not items ("no more than", "no thanks", "add more").
_NOT_ITEMS = frozenset("""
more less thanks thank problem way worries idea need needed longer it that this them one ones some any
the a an please too also just else extra other another bundle bundles option options way sir ma'am
mas más gracias
""".split())

_NUM = "|".join(sorted(map(re.escape, _NUMBERS), key=len, reverse=True))
_ORD = "|".join(map(re.escape, _ORDINALS))
_CONNECTOR = r"(?:and|or|nor|ni|y|o|with|con|please|but|for|to|too)"
_ITEM = rf"[a-záéíóúñ][a-záéíóúñ'-]*(?:\s+(?!{_CONNECTOR}\b)[a-záéíóúñ][a-záéíóúñ'-]*)?"
# "no cheese, beans or onions", "sin queso ni cebolla": one trigger, several items
_ITEMS = rf"{_ITEM}(?:\s*(?:,\s*(?:and\s+|or\s+)?|\s(?:and|or|nor|ni|y|o)\s+){_ITEM})*"
_STOP_ITEM = frozenset("add make cheaper more for please remove without no sin with but under make get show".split())

_RESET_RE = re.compile(
    r"\b(?:start(?:ing)? over|start again|start fresh|reset|clear (?:all|everything|it|the chat)|new search|"
    r"from scratch|empezar de nuevo|borrar todo|otra vez desde cero)\b|^\s*clear\s*$", re.IGNORECASE)
_UNDO_RE = re.compile(r"^\s*(?:undo|go back|back|undo that|take that back|revert|deshacer|volver)\b[\s.!]*$",
                      re.IGNORECASE)
_ADD_RE = re.compile(
    rf"\b(?:add|also add|throw in|añade|añadir|agrega|agregar)\s+(?:(?:a|an|some|the|more|un|una|"
    rf"unos|unas|algo de|algún|alguna)\s+)?(?P<x>{_ITEMS})", re.IGNORECASE)
_WITHOUT_RE = re.compile(
    rf"\b(?:without|w/o|no|sin|minus|hold the|skip(?: the)?|remove(?: the)?|drop(?: the)?|take out(?: the)?|"
    rf"lose the|get rid of(?: the)?|quita(?:r)?(?: el| la)?)\s+"
    rf"(?:(?:the|any|el|la|los|las)\s+)?(?P<x>{_ITEMS})", re.IGNORECASE)
# "swap the salsa", "replace the cheese", "a different salsa", "cambia la salsa": that shown item goes, its
# role is filled by another product (another salsa, or hot sauce); "swap the beef for chicken" is
# "chicken instead of beef" (read by _instead_moves first)
_SWAP_RE = re.compile(
    rf"\b(?:swap(?: out)?|switch(?: out)?|replace|change|exchange|cambia(?:r)?|reemplaza(?:r)?)\s+"
    rf"(?:the\s+|that\s+|this\s+|el\s+|la\s+|los\s+|las\s+)?(?P<x>{_ITEMS})"
    rf"|\b(?:a |an )?(?:different|another|other) (?P<y>{_ITEM})", re.IGNORECASE)
_SWAP_FOR_RE = re.compile(
    rf"\b(?:swap(?: out)?|switch(?: out)?|replace|change|exchange|trade)\s+(?:the\s+|that\s+)?(?P<y>{_ITEM})"
    rf"\s+(?:for|with|to|by|into)\s+(?:a\s+|an\s+|some\s+|the\s+)?(?P<x>{_ITEM})", re.IGNORECASE)
# "more protein", "extra cheese", "a bit more veggies": more of a kind, as a role of its own
_MORE_RE = re.compile(
    rf"(?:^|\b(?:and|with|plus|but|want|need|me|us|some|bit|little|lot|lots of|add|also)\s+)(?:more|extra)\s+"
    rf"(?P<x>{_ITEMS})", re.IGNORECASE)
# Words after "more" that are another move or no item ("more food", "more options", "more than $5")
_NOT_MORE = frozenset("""
food of like similar than affordable healthy nutritious variety people servings guests portions bundles bundle
options option choices ideas stuff things please expensive money filling
""".split())
# "and a dessert", "also some chips", "and drinks too": with a need under way, one more role
_AND_RE = re.compile(
    rf"^\s*(?:and|also|and also|oh and|&)\s+(?:(?:a|an|some|un|una|unos|unas)\s+(?P<x>{_ITEMS})"
    rf"|(?P<y>{_ITEM})\s+(?:too|as well|also)\s*[.!]*$)", re.IGNORECASE)
# "with guacamole", "plus some chips", "con aguacate": an item the bundle must have
_WITH_RE = re.compile(rf"^\s*(?:and\s+)?(?:with|plus|con)\s+(?:(?:a|an|some|the|more|un|una)\s+)?(?P<x>{_ITEMS})",
                      re.IGNORECASE)
# Words that "X instead" / "with X" never name as an item: diets and qualities are other moves.
_NOT_INCLUDED = frozenset("""
vegetarian vegan keto paleo healthy healthier cheap cheaper organic spicy mild something anything that it one
gluten dairy sugar low kid kids
""".split())
# "chicken instead", "use turkey instead", "chicken instead of beef", "pollo en vez de res"
_INSTEAD_RE = re.compile(
    rf"(?:\b(?:use|try|get|with|make it|con)\s+)?(?P<x>{_ITEM})\s+(?:instead|en su lugar|en vez|mejor)\b"
    rf"(?:\s+(?:of|de)\s+(?:the\s+|el\s+|la\s+)?(?P<y>{_ITEM}))?", re.IGNORECASE)
_INSTEAD_OF_RE = re.compile(
    rf"\b(?:instead of|rather than|en vez de|en lugar de)\s+(?:the\s+|el\s+|la\s+)?(?P<y>{_ITEM})", re.IGNORECASE)
_CHEAPER_RE = re.compile(
    r"\b(?:cheaper|less expensive|less pricey|lower (?:the )?(?:price|cost)|too (?:expensive|pricey|much)|"
    r"more affordable|spend less|costs? less|budget[- ]friendly|más barato|mas barato|más económico|"
    r"mas economico|barato)\b", re.IGNORECASE)
_HEALTHIER_RE = re.compile(
    r"\b(?:healthier|healthy|nutritious|more healthy|more nutritious|less (?:sugar|sugary|junk|processed)|lighter|"
    r"better for (?:me|us|you)|más sano|mas sano|más saludable|mas saludable|saludable)\b", re.IGNORECASE)
_SERVINGS_RE = re.compile(
    rf"\b(?:for|para|feed(?:s)?|serves?|make it for)\s+(?P<n>\d{{1,4}}|{_NUM})"
    rf"(?!\s*(?:dollars?|bucks|usd|%|percent|pesos|\.\d))"
    rf"(?:\s+(?:people|persons|guests|of us|adults|kids|personas|instead|now))?\b", re.IGNORECASE)
_PEOPLE_RE = re.compile(rf"\b(?P<n>\d{{1,4}}|{_NUM})\s+(?:people|persons|guests|personas)\b", re.IGNORECASE)
_WE_ARE_RE = re.compile(rf"\b(?:we are|we're|we'll be|there are|there will be|there'll be|somos|seremos)\s+"
                        rf"(?P<n>\d{{1,4}}|{_NUM})\b(?!\s*(?:dollars?|bucks|%|\$))", re.IGNORECASE)
_BIGGER_RE = re.compile(r"\b(?:bigger|larger|more food|more of (?:it|everything)|más grande|mas grande)\b",
                        re.IGNORECASE)
_DOUBLE_RE = re.compile(r"\b(?:double|twice as (?:much|big))\b", re.IGNORECASE)
_SMALLER_RE = re.compile(r"\b(?:smaller|less food|más pequeño|mas pequeño|half as much)\b", re.IGNORECASE)
_MORE_LIKE_RES = (
    # "more like bundle 2", "like option #3", "más como el 2"
    re.compile(rf"\b(?:more like|similar to|like|más como|mas como|como)\s+(?:bundle|option|number|no\.?|#|el|la)"
               rf"\s*#?\s*(?P<n>\d+|{_NUM})\b", re.IGNORECASE),
    # "more like 2", "similar to #3"
    re.compile(rf"\b(?:more like|similar to)\s+#?\s*(?P<n>\d+|{_NUM})\b", re.IGNORECASE),
    # "more like the second one", "like the last bundle"
    re.compile(rf"\b(?:more like|similar to|like)\s+the\s+(?P<ord>{_ORD}|last)(?:\s+(?:one|bundle|option))?\b",
               re.IGNORECASE),
)

def _number(token: str) -> int | None:
    t = token.strip().lower()
    if t.isdigit():
        return int(t)
    return _NUMBERS.get(t)


def _singular(word: str) -> str:
    w = word.lower()
    if w in _PAIRS:
        return w.removesuffix("s") if w.endswith("drinks") or w.endswith("dogs") else w
    if w.endswith("ies") and w[:-1] in _IE_WORDS:
        return w[:-1]  # "veggies", "cookies": not "veggy"
    if w.endswith("ies") and len(w) > 4:
        return w[:-3] + "y"
    if w.endswith(("ches", "shes", "oes")) and len(w) > 4:
        return w[:-2]
    if w.endswith("s") and not w.endswith(("ss", "us", "is")) and len(w) > 3:
        return w[:-1]
    return w


def _item(raw: str) -> str | None:
    """The item a move names: one word, or a known two-word item; Spanish mapped."""
    words = raw.lower().split()
    if len(words) == 2 and words[0] == "more" and words[1] != "than":
        words = words[1:]  # "no more cheese"; "no more than $12" is a budget
    if not words:
        return None
    pair = " ".join(words[:2])
    if len(words) >= 2 and pair in _PAIRS:
        return _singular(pair)
    word = words[0].strip("'-")
    if word in _NOT_ITEMS or len(word) < 2:
        return None
    return _SPANISH_ITEMS.get(word, _singular(word))


def _items(listed: str) -> list[str]:
    """"cheese, beans or onions" -> the items, up to a word that starts another move."""
    out: list[str] = []
    for piece in re.split(r"\s*,\s*(?:and\s+|or\s+)?|\s(?:and|or|nor|ni|y|o)\s+", listed):
        if not piece.strip() or piece.split()[0] in _STOP_ITEM and out:
            break
        item = _item(piece)
        if item:
            out.append(item)
    return out


# --- records ------------------------------------------------------------------------------


class Move(BaseModel, frozen=True):
    """One refinement. Detected moves carry what was said; :func:`resolve` fills the values
    that depend on the need and the screen (``budget``, ``servings``, ``product_ids``)."""

    kind: MoveKind
    term: str | None = None  # add_role / without / diet: the item or diet key
    budget: float | None = None  # cheaper / budget: the new cap
    servings: int | None = None  # rescale: the new head count
    factor: float | None = None  # rescale said as "bigger" / "double": resolved into servings
    bundle: int | None = None  # more_like: 1-based rank as shown (-1: the last one)
    product_ids: tuple[str, ...] = ()  # without / swap: shown items removed; more_like: the anchors
    diet: str | None = None  # without: the diet rule the word names ("dairy" -> dairy-free), one chip for both


class Chip(BaseModel, frozen=True):
    id: int  # unique within a session
    kind: MoveKind
    label: str  # "+ drink", "no cheese", "under $9.60", "healthier", "for 6", "like bundle 2"


class Step(BaseModel, frozen=True):
    chip: Chip
    move: Move  # resolved


class Shown(BaseModel):
    """What the last answer put on screen, as far as refinements need it."""

    bundle_prices: list[float | None] = Field(default_factory=list)  # by rank, top first
    bundle_items: list[list[str]] = Field(default_factory=list)  # product ids by rank
    item_text: dict[str, str] = Field(default_factory=dict)  # product id -> title | type | category

    @classmethod
    def from_bundles(cls, bundles: Sequence[Any], catalogue: Any = None) -> Shown:
        """From shown bundles (``.bundle_price``, ``.items[].product_id/.title``); with a
        catalogue (DataFrame indexed by product id) the type and category join the text."""
        text: dict[str, str] = {}
        for b in bundles:
            for item in getattr(b, "items", ()) or ():
                pid = str(item.product_id)
                parts = [str(getattr(item, "title", "") or ""), str(getattr(item, "display_title", "") or "")]
                if catalogue is not None and pid in getattr(catalogue, "index", ()):
                    row = catalogue.loc[pid]
                    parts += [str(row.get("product_type", "")), str(row.get("category", ""))]
                text[pid] = " | ".join(p for p in parts if p)
        return cls(bundle_prices=[getattr(b, "bundle_price", None) for b in bundles],
                   bundle_items=[[str(i.product_id) for i in getattr(b, "items", ()) or ()] for b in bundles],
                   item_text=text)

    @property
    def top_price(self) -> float | None:
        price = self.bundle_prices[0] if self.bundle_prices else None
        return float(price) if price is not None and price == price and price > 0 else None


class SessionState(BaseModel, frozen=True):
    """The need of the current topic as its base plus the steps applied to it."""

    base: Need | None = None  # the need as stated when this topic began
    steps: tuple[Step, ...] = ()
    earlier: tuple[tuple[Need, tuple[Step, ...]], ...] = ()  # previous topics, newest last
    next_chip: int = 1

    @property
    def need(self) -> Need:
        """The current need: the base with every step applied, in order."""
        need = self.base or Need()
        for step in self.steps:
            need = apply_move(need, step.move)
        return need

    @property
    def chips(self) -> list[Chip]:
        """The chips to show. A "more like" chip shows only while it is the last change; of
        the steps that set one value (the budget, the head count) only the latest shows, since
        it replaced the others: removing it brings the one before back."""
        latest = {_REPLACES.get(s.move.kind): i for i, s in enumerate(self.steps) if s.move.kind in _REPLACES}
        return [s.chip for i, s in enumerate(self.steps)
                if (s.move.kind != "more_like" or i == len(self.steps) - 1)
                and (s.move.kind not in _REPLACES or latest[_REPLACES[s.move.kind]] == i)]

    @property
    def anchor_ids(self) -> tuple[str, ...]:
        last = self.steps[-1].move if self.steps else None
        return last.product_ids if last is not None and last.kind == "more_like" else ()

    @property
    def excluded_products(self) -> tuple[str, ...]:
        """Shown items removed by "without X" and "swap the X" steps: their roles are filled another way."""
        out: dict[str, None] = {}
        for s in self.steps:
            if s.move.kind in ("without", "swap"):
                out.update(dict.fromkeys(s.move.product_ids))
        return tuple(out)


class Turn(BaseModel):
    """What one message did to the session."""

    state: SessionState
    kind: TurnKind
    moves: list[Move] = Field(default_factory=list)  # the resolved moves applied this turn
    notes: list[str] = Field(default_factory=list)  # for the shopper: a move that could not act
    reset: bool = False  # the caller also clears feedback, shown bundles and the LLM's context


class AskAction(BaseModel):
    label: str  # chip text: "Raise the budget to $12", "Allow cheese again"
    move: Move | None = None  # apply this (resolved) move ...
    remove_chip: int | None = None  # ... or remove this chip


class Ask(BaseModel):
    key: str  # stable id of the question, so the same note is never printed twice
    message: str
    actions: list[AskAction] = Field(default_factory=list)


# --- detection ----------------------------------------------------------------------------


def detect_control(text: str) -> Literal["reset", "undo"] | None:
    if _RESET_RE.search(text or ""):
        return "reset"
    if _UNDO_RE.search(text or ""):
        return "undo"
    return None


def detect_moves(text: str) -> list[Move]:
    """The refinement moves said in ``text``, in a fixed order (unresolved). Budgets and
    diets come from the parser (:func:`moves_from_parse`), not from here."""
    s = " ".join((text or "").lower().split())
    moves: list[Move] = []
    for pattern in _MORE_LIKE_RES:
        for m in list(pattern.finditer(s)):
            groups = m.groupdict()
            if groups.get("n"):
                n = _number(groups["n"])
            else:
                n = -1 if groups["ord"] == "last" else _ORDINALS[groups["ord"]]
            if n:
                moves.append(Move(kind="more_like", bundle=n))
        s = pattern.sub(" , ", s)
    for m in _ADD_RE.finditer(s):
        moves += [Move(kind="add_role", term=item) for item in _items(m.group("x"))]
    s = _instead_moves(s, moves)
    s = _swap_moves(s, moves)
    for m in _MORE_RE.finditer(s):
        moves += [Move(kind="add_role", term=item) for item in _items(m.group("x")) if item not in _NOT_MORE]
    for m in _WITH_RE.finditer(s):
        moves += [Move(kind="include", term=item) for item in _items(m.group("x")) if item not in _NOT_INCLUDED]
    for m in _WITHOUT_RE.finditer(s):
        moves += [Move(kind="without", term=item) for item in _items(m.group("x"))]
    if _CHEAPER_RE.search(s):
        moves.append(Move(kind="cheaper"))
    if _HEALTHIER_RE.search(s):
        moves.append(Move(kind="healthier"))
    servings = next((_number(m.group("n")) for p in (_SERVINGS_RE, _PEOPLE_RE, _WE_ARE_RE) for m in p.finditer(s)),
                    None)
    if servings:
        moves.append(Move(kind="rescale", servings=min(servings, MAX_SERVINGS)))
    elif _DOUBLE_RE.search(s):
        moves.append(Move(kind="rescale", factor=2.0))
    elif _BIGGER_RE.search(s):
        moves.append(Move(kind="rescale", factor=BIGGER_FACTOR))
    elif _SMALLER_RE.search(s):
        moves.append(Move(kind="rescale", factor=1 / BIGGER_FACTOR))
    return _dedupe(moves)


def _instead_moves(s: str, moves: list[Move]) -> str:
    """Append the "X instead (of Y)" moves of ``s``; return ``s`` without the spans read, so
    that "no beef, chicken instead" does not also read as "no chicken"."""
    def read(m: re.Match[str]) -> str:
        found: list[Move] = []
        first = m.group("x").split()[0] if "x" in m.groupdict() else ""
        if first and first not in _STOP_ITEM and first not in _NUMBERS:
            item = _item(m.group("x"))
            if item and not item.isdigit() and item not in _NOT_INCLUDED:
                found.append(Move(kind="include", term=item))
        if m.group("y") and (other := _item(m.group("y"))):
            found.append(Move(kind="without", term=other))
        moves.extend(found)
        return " , " if found else m.group(0)

    return _INSTEAD_OF_RE.sub(read, _INSTEAD_RE.sub(read, s))


def _swap_moves(s: str, moves: list[Move]) -> str:
    """Append "swap the X" moves (and "swap X for Y" as "Y instead of X"); return ``s``
    without the spans read."""
    def read_for(m: re.Match[str]) -> str:
        x, y = _item(m.group("x")), _item(m.group("y"))
        if not x or not y or x in _NOT_INCLUDED:
            return m.group(0)
        moves.extend([Move(kind="include", term=x), Move(kind="without", term=y)])
        return " , "

    def read(m: re.Match[str]) -> str:
        items = _items(m.group("x")) if m.group("x") else [i for i in [_item(m.group("y"))] if i]
        found = [Move(kind="swap", term=i) for i in items if i not in _NOT_INCLUDED and i not in _NOT_MORE]
        moves.extend(found)
        return " , " if found else m.group(0)

    return _SWAP_RE.sub(read, _SWAP_FOR_RE.sub(read_for, s))


def and_moves(text: str) -> list[Move]:
    """"and a dessert", "also some chips": added roles. Only the session knows whether a
    need is under way, so :func:`handle` reads these only then (alone, "and a dessert" is
    a dessert request)."""
    m = _AND_RE.match(" ".join((text or "").lower().split()))
    if m is None:
        return []
    items = _items(m.group("x")) if m.group("x") else [i for i in [_item(m.group("y"))] if i]
    return [Move(kind="add_role", term=i) for i in items if i not in _NOT_INCLUDED and i not in _NOT_MORE]


def _with_diets(moves: Sequence[Move]) -> list[Move]:
    """"no dairy" is one change: the exclusion carries the diet rule its word names
    (dairy -> dairy-free) and that diet gets no step of its own, so one chip says it and
    removing that chip lifts both."""
    out = [m.model_copy(update={"diet": rule_for_word(m.term)})
           if m.kind == "without" and m.term and m.diet is None and rule_for_word(m.term) else m for m in moves]
    carried = {m.diet for m in out if m.kind == "without" and m.diet}
    return [m for m in out if not (m.kind == "diet" and m.term in carried)]


def moves_from_parse(parsed: Need, current: Need) -> list[Move]:
    """The parser's structured reading of a follow-up as moves on ``current``: a new
    budget, servings, diets, exclusions and added roles it found."""
    moves: list[Move] = []
    if parsed.budget is not None and parsed.budget != current.budget:
        moves.append(Move(kind="budget", budget=parsed.budget))
    if parsed.servings is not None and parsed.servings != current.servings:
        moves.append(Move(kind="rescale", servings=parsed.servings))
    moves += [Move(kind="diet", term=d) for d in parsed.diets if d not in current.diets]
    exclude, add, include = ([_SPANISH_ITEMS.get(w, _singular(w) if " " not in w else w) for w in words]
                             for words in (parsed.exclude, parsed.add_roles, parsed.include))
    moves += [Move(kind="without", term=x) for x in exclude if x not in current.exclude]
    moves += [Move(kind="add_role", term=r) for r in add if r not in current.add_roles]
    moves += [Move(kind="include", term=x) for x in include if x not in current.include and x not in _NOT_INCLUDED]
    if parsed.healthier and not current.healthier:
        moves.append(Move(kind="healthier"))
    return moves


def _dedupe(moves: Iterable[Move]) -> list[Move]:
    out: list[Move] = []
    seen: set[tuple[str, str | None]] = set()
    for m in moves:
        key = (m.kind, m.term if m.kind in ("add_role", "without", "include", "diet", "swap") else None)
        if key not in seen:
            seen.add(key)
            out.append(m)
    return out


# --- the rules ----------------------------------------------------------------------------


def _mentions(text: str, term: str) -> bool:
    body = r"[\s-]+".join(re.escape(p) for p in term.lower().split())
    return re.search(rf"(?<![a-z]){body}(?:s|es)?(?![a-z])", text.lower()) is not None


def _money(value: float) -> str:
    return f"${value:.0f}" if abs(value - round(value)) < 0.005 else f"${value:.2f}"


def _shown_hits(shown: Shown, term: str, inside_words: bool = False) -> tuple[str, ...]:
    """The shown items whose text mentions ``term`` (as a word, or anywhere with ``inside_words``)."""
    def hit(text: str) -> bool:
        return term.lower() in text.lower() if inside_words else _mentions(text, term)

    return tuple(dict.fromkeys(pid for ids in shown.bundle_items for pid in ids if hit(shown.item_text.get(pid, ""))))


def resolve(move: Move, need: Need, shown: Shown | None = None) -> tuple[Move | None, str | None]:
    """``move`` with its screen-dependent values filled in, or (None, why) when it cannot act."""
    shown = shown or Shown()
    if move.kind == "cheaper":
        caps = [c for c in (need.budget, shown.top_price) if c is not None]
        if not caps:
            return None, "Cheaper than what? Tell me a budget, for example “under $15”."
        target = max(MIN_BUDGET, math.floor(min(caps) * CHEAPER_FACTOR * 100) / 100)
        return move.model_copy(update={"budget": target}), None
    if move.kind == "rescale" and move.servings is None:
        people = need.people()
        factor = move.factor or BIGGER_FACTOR
        n = max(people + 1, math.ceil(people * factor)) if factor > 1 else max(1, math.floor(people * factor))
        return move.model_copy(update={"servings": min(n, MAX_SERVINGS), "factor": None}), None
    if move.kind in ("without", "swap") and move.term:
        hits = _shown_hits(shown, move.term)
        if move.kind == "swap" and not hits and len(move.term) >= SWAP_SUBSTRING_MIN:
            # catalogue types run words together ("MEXICAN SAUCESSALSAPICANTEE"); a swap only
            # touches what is on screen, so a looser match costs at most an extra swapped item
            hits = _shown_hits(shown, move.term, inside_words=True)
        if move.kind == "swap" and not hits:  # nothing on screen to swap: leave the kind out instead
            return move.model_copy(update={"kind": "without", "diet": rule_for_word(move.term)}), None
        return move.model_copy(update={"product_ids": hits}), None
    if move.kind == "more_like":
        index = move.bundle or 0
        if index == -1:
            index = len(shown.bundle_items)
        if not 1 <= index <= len(shown.bundle_items):
            return None, f"There is no bundle {move.bundle} on screen."
        return move.model_copy(update={"bundle": index, "product_ids": tuple(shown.bundle_items[index - 1])}), None
    return move, None


def apply_move(need: Need, move: Move) -> Need:
    """The need after one resolved move. Pure: ``need`` is left unchanged."""
    update: dict[str, Any] = {}
    term = move.term or ""
    if move.kind == "add_role" and term:
        update["add_roles"] = list(dict.fromkeys([*need.add_roles, term]))
        update["exclude"] = [x for x in need.exclude if x != term]
    elif move.kind == "include" and term:
        update["include"] = list(dict.fromkeys([*need.include, term]))
        update["exclude"] = [x for x in need.exclude if x != term]
    elif move.kind == "without" and term:
        update["exclude"] = list(dict.fromkeys([*need.exclude, term]))
        update["add_roles"] = [r for r in need.add_roles if r != term]
        update["include"] = [i for i in need.include if i != term]
        if move.diet:
            update["diets"] = list(dict.fromkeys([*need.diets, move.diet]))
    elif move.kind in ("cheaper", "budget") and move.budget is not None:
        update["budget"] = move.budget
    elif move.kind == "healthier":
        update["healthier"] = True
        update["diets"] = list(dict.fromkeys([*need.diets, HEALTHIER_DIET]))
    elif move.kind == "rescale" and move.servings is not None:
        update["servings"] = move.servings
    elif move.kind == "diet" and term:
        update["diets"] = list(dict.fromkeys([*need.diets, term]))
    return need.model_copy(update=update, deep=True) if update else need


def chip_label(move: Move) -> str:
    if move.kind == "add_role":
        return f"+ {move.term}"
    if move.kind == "without":
        return f"no {move.term}"
    if move.kind == "swap":
        return f"other {move.term}"
    if move.kind == "include":
        return f"with {move.term}"
    if move.kind in ("cheaper", "budget"):
        return f"under {_money(move.budget or 0)}"
    if move.kind == "rescale":
        return f"for {move.servings}"
    if move.kind == "more_like":
        return f"like bundle {move.bundle}"
    return str(move.term or move.kind)  # healthier, diet


# --- state transitions ---------------------------------------------------------------------


def reset() -> SessionState:
    """Start over / Clear: no need, no chips, no history."""
    return SessionState()


def new_topic(state: SessionState, need: Need) -> SessionState:
    """A new request. Diets and exclusions carry over (they are about the shopper: an
    allergy does not end with the topic); budget, servings and added roles do not."""
    current = state.need if state.base is not None else Need()
    base = need.model_copy(update={
        "diets": list(dict.fromkeys([*current.diets, *need.diets])),
        "exclude": list(dict.fromkeys([*current.exclude, *need.exclude])),
    }, deep=True)
    earlier = state.earlier
    if state.base is not None:
        earlier = (*earlier, (state.base, state.steps))[-MAX_TOPICS:]
    return state.model_copy(update={"base": base, "steps": (), "earlier": earlier})


def refine(state: SessionState, moves: Sequence[Move], shown: Shown | None = None) -> Turn:
    """Resolve and apply ``moves`` in order, one chip each; a move that cannot act adds a
    note and no chip. A move that changes nothing (the same item twice) is skipped."""
    steps = list(state.steps)
    next_chip = state.next_chip
    applied: list[Move] = []
    notes: list[str] = []
    need = state.need
    for move in _with_diets(moves):
        resolved, why = resolve(move, need, shown)
        if resolved is None:
            if why:
                notes.append(why)
            continue
        after = apply_move(need, resolved)
        if after == need and resolved.kind not in ("more_like", "swap"):
            continue
        steps.append(Step(chip=Chip(id=next_chip, kind=resolved.kind, label=chip_label(resolved)), move=resolved))
        next_chip += 1
        applied.append(resolved)
        need = after
    base = state.base if state.base is not None else Need()
    new = state.model_copy(update={"base": base, "steps": tuple(steps), "next_chip": next_chip})
    return Turn(state=new, kind="refine" if applied else "none", moves=applied, notes=notes)


def undo(state: SessionState) -> Turn:
    """Drop the last step; with none left in this topic, go back to the previous topic."""
    if state.steps:
        return Turn(state=state.model_copy(update={"steps": state.steps[:-1]}), kind="undo")
    if state.earlier:
        base, steps = state.earlier[-1]
        return Turn(state=state.model_copy(update={"base": base, "steps": steps, "earlier": state.earlier[:-1]}),
                    kind="undo")
    return Turn(state=state, kind="none", notes=["Nothing to undo."])


def remove_chip(state: SessionState, chip_id: int) -> SessionState:
    """The state without that chip's change; the other steps replay from the base."""
    return state.model_copy(update={"steps": tuple(s for s in state.steps if s.chip.id != chip_id)})


def apply_action(state: SessionState, action: AskAction) -> SessionState:
    """Answer an :class:`Ask` with one of its actions."""
    if action.remove_chip is not None:
        state = remove_chip(state, action.remove_chip)
    if action.move is not None:
        state = refine(state, [action.move]).state
    return state


# Words left in a parse's free text that say no topic ("make it vegan" -> "make it").
_FILLER = frozenset("""
make it that this them those these one ones please pls instead now too also and but then so just can could
would you i we me us want need like let's lets do have get give show it's something some thing things
more less with for the a an to of on in again ok okay yes no hey hi thanks por favor hazlo quiero
raise increase bump up lower go budget spend spending limit cap max total sure fine let allow
""".split())  # the second line: "raise the budget to $16" answers the budget question, it names no topic


def _has_topic(parsed: Need) -> bool:
    """True when the parse names something to shop for, beyond constraints and filler."""
    if parsed.occasion or parsed.include:
        return True
    if parsed.vague or parsed.nonsense:
        return False
    return any(w not in _FILLER for w in re.findall(r"[a-záéíóúñ']+", parsed.text.lower()))


_MORE_LEAD = re.compile(r"^\s*(?:(?:and|but|also|with|plus)\s+)?(?:(?:some|a bit|a little|a lot|lots)\s+)?"
                        r"(?:more|extra)\s+(?!like\b|similar\b|than\b)", re.IGNORECASE)
_ADD_LEAD = re.compile(r"^\s*(?:please\s+)?(?:(?:also\s+)?add|throw in|añade|añadir|agrega|agregar)\b", re.IGNORECASE)


def handle(state: SessionState, text: str, parsed: Need | None = None, shown: Shown | None = None) -> Turn:
    """One message: reset, undo, a refinement of the current need, or a new topic.

    ``parsed`` is the parser's reading of the message alone (``parse_need(text)``, no
    ``previous``: the session does the merging); without it only the conversational moves
    are read. A message is a refinement when it
    says a move ("cheaper", "add a drink", "sin queso", "for 6 instead") or when it holds
    only constraints for a need already under way ("under $40", "make it vegan"). A new
    occasion is a new topic even beside a move ("pasta for two instead"); the moves the
    parse did not already hold apply on top of it.
    """
    control = detect_control(text)
    if control == "undo":
        return undo(state)
    if control == "reset":
        fresh = reset()
        if parsed is not None and _has_topic(parsed):
            turn = _as_new_topic(fresh, parsed, detect_moves(text), shown)
            return turn.model_copy(update={"reset": True})
        return Turn(state=fresh, kind="reset", reset=True)

    said = detect_moves(text)
    continued = and_moves(text) if state.base is not None and not (parsed and parsed.diets) else []
    said = _dedupe([*said, *continued])
    current = state.need
    if parsed is None:
        return refine(state, said, shown) if said else Turn(state=state, kind="none")
    # "add dessert" names an occasion the lexicon knows, but it is a role for the meal
    # under way, not a new topic
    named = {m.term for m in said if m.term} | set(parsed.add_roles) | set(parsed.exclude)
    new_occasion = bool(parsed.occasion) and parsed.occasion != current.occasion and parsed.occasion not in named
    if state.base is not None and (_ADD_LEAD.match(text or "") or continued or _MORE_LEAD.match(text or "")):
        new_occasion = False  # "add coffee", "and a dessert", "more protein" add to the meal under way
    if state.base is None or new_occasion:
        return _as_new_topic(state, parsed, said, shown)
    from_parse = moves_from_parse(parsed, current)
    # "with guacamole" names an item, not a topic: with a need under way it refines it
    names_topic = _has_topic(parsed.model_copy(update={"include": []}))
    if said or (from_parse and not names_topic):
        moves = _dedupe([*said, *from_parse])
        # a parsed head count and a "bigger" in the words: the count wins
        if any(m.kind == "rescale" and m.servings for m in moves):
            moves = [m for m in moves if not (m.kind == "rescale" and m.servings is None)]
        turn = refine(state, moves, shown)
        if turn.kind == "none" and not turn.notes and _has_topic(parsed):
            return _as_new_topic(state, parsed, said, shown)  # the same request again: asked afresh
        return turn
    if _has_topic(parsed):
        return _as_new_topic(state, parsed, said, shown)
    return Turn(state=state, kind="none")


def _as_new_topic(state: SessionState, parsed: Need, said: list[Move], shown: Shown | None) -> Turn:
    topic = new_topic(state, parsed)
    # moves the parse already holds (servings, exclusions ...) are in the base; the rest
    # ("cheaper", "healthier") apply as chips. Nothing of the old screen applies.
    extra = [m for m in said if m.kind in ("cheaper", "healthier", "add_role")
             and not (m.kind == "add_role" and m.term in parsed.add_roles)]
    turn = refine(topic, extra, Shown())
    return turn.model_copy(update={"kind": "new_need"})


# --- asking instead of an empty answer -------------------------------------------------------


def ask_instead(state: SessionState, *, min_price: float | None = None) -> Ask:
    """The question to ask when the composer finds nothing for ``state.need``.

    ``min_price``: the price of the cheapest bundle the composer could make without the
    budget (None when unknown or when the budget is not the blocker). The last change is
    taken as the cause; its chip is the "undo" action.
    """
    need = state.need
    topic = need.occasion or need.text or "this"
    last = state.steps[-1] if state.steps else None
    undo_action = [AskAction(label="Undo the last change", remove_chip=last.chip.id)] if last else []
    budget = need.budget if need.budget is not None else need.max_price
    budget_blocks = budget is not None and (
        (min_price is not None and min_price > budget)
        or (min_price is None and (last is None or last.move.kind in ("cheaper", "budget"))))
    if budget is not None and budget_blocks:
        key = f"budget:{last.chip.id if last else 0}:{budget:.2f}"
        if min_price is not None:
            raise_to = float(math.ceil(min_price))
            return Ask(key=key, message=f"Nothing fits under {_money(budget)}. Raise the budget to {_money(raise_to)}?",
                       actions=[AskAction(label=f"Raise the budget to {_money(raise_to)}",
                                          move=Move(kind="budget", budget=raise_to)), *undo_action])
        return Ask(key=key, message=f"Nothing fits under {_money(budget)}. Raise the budget?", actions=undo_action)
    if last is None:
        return Ask(key="nothing:0", message=f"Nothing fits {topic} with every rule you gave. Which one can go?")
    kind, term, cid = last.move.kind, last.move.term, last.chip.id
    keep = AskAction(label="Keep the bundles as they were", remove_chip=cid)
    if kind == "without":
        return Ask(key=f"without:{cid}", message=f"Nothing fits without {term}. Allow {term} again?",
                   actions=[AskAction(label=f"Allow {term} again", remove_chip=cid)])
    if kind == "healthier":
        return Ask(key=f"healthier:{cid}", message=f"I can't find healthier swaps for {topic}. "
                   "Keep the bundles as they were?", actions=[keep])
    if kind == "diet":
        return Ask(key=f"diet:{cid}", message=f"Nothing fits the {term} rule for {topic}. Drop {term}?",
                   actions=[AskAction(label=f"Drop {term}", remove_chip=cid)])
    if kind == "add_role":
        return Ask(key=f"add_role:{cid}", message=f"I couldn't add {term} to {topic}. Leave it out?",
                   actions=[AskAction(label=f"Leave out {term}", remove_chip=cid)])
    if kind == "rescale":
        return Ask(key=f"rescale:{cid}", message=f"Nothing fits for {last.move.servings} people. Go back?",
                   actions=[keep])
    return Ask(key=f"{kind}:{cid}", message="Nothing fits that change. Undo it?", actions=undo_action)
