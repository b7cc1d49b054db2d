"""The ``shopper-scenarios`` protocol: scripted conversations, run through the app's path, checked.

A scenario file (format: ``eval/scenarios/README.md``; the format is a contract) holds
shopper conversations and merchandiser themes. Each shopper scenario runs in a fresh
:class:`~assistant.conversation.Conversation` over one shared
:class:`~assistant.service.BundleAssistant` — the objects the chat app uses — turn by turn,
including like, dislike and add-to-cart actions; each merchandiser scenario calls
``BundleAssistant.ideas``. After every turn the turn's checks read what the shopper sees:
the bundles on screen, the reply text, the chips. The report (JSON and markdown) gives the
scenario pass rate, the pass rate per check kind, and every failure with the products,
titles and prices it is about.

Patterns are case-insensitive substrings of a shown product's
``title | department | category | product type`` (the catalogue row, plus the title the
shopper was shown and a display title when the catalogue has one).
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd

PROTOCOL = "shopper-scenarios"
VARIANTS = ("rule", "llm+rule")  # the chat's two paths: rules only, or rules then the LLM merge
DEFAULT_BUNDLES_MIN = 3
DEFAULT_DISTINCT = 0.67
DEFAULT_IDEAS = 5
ACTIONS = ("like", "dislike", "cart")
Role = Literal["shopper", "merchandiser"]
PRODUCT_FIELDS = ("title", "display_title", "department", "category", "product_type")
PRICE_EPS = 1e-6


class ScenarioError(ValueError):
    """A scenario file that does not follow the format; the message names the scenario and key."""


# ------------------------------------------------------------------------- value checkers
# Each returns the normalised value or raises ValueError with what was expected.


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"must be true or false, got {v!r}")
    return v


def _int(v: Any, low: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ValueError(f"must be a whole number >= {low}, got {v!r}")
    return v


def _positive(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise ValueError(f"must be a number > 0, got {v!r}")
    return float(v)


def _rate(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
        raise ValueError(f"must be a number in [0, 1), got {v!r}")
    return float(v)


def _patterns(v: Any) -> list[str]:
    if not isinstance(v, list) or not all(isinstance(p, str) and p.strip() for p in v):
        raise ValueError(f"must be a list of non-empty strings, got {v!r}")
    return list(v)


def _roles(v: Any) -> list[list[str]]:
    """A list of roles; a role is a list of alternative patterns (a lone string is one pattern)."""
    if not isinstance(v, list) or not v:
        raise ValueError(f"must be a non-empty list of roles (lists of patterns), got {v!r}")
    out = []
    for role in v:
        role = [role] if isinstance(role, str) else role
        try:
            out.append(_patterns(role))
        except ValueError:
            raise ValueError(f"has a role that is not a list of non-empty strings: {role!r}") from None
        if not out[-1]:
            raise ValueError("has an empty role")
    return out


def _distinct(v: Any) -> float | None:
    if v is True:
        return DEFAULT_DISTINCT
    if v is False:
        return None
    if isinstance(v, (int, float)) and 0 < v <= 1:
        return float(v)
    raise ValueError(f"must be true, false or a Jaccard bound in (0, 1], got {v!r}")


def _chips(v: Any) -> bool | list[str]:
    return v if isinstance(v, bool) else _patterns(v)


def _user(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, (str, int)) or not str(v).strip():
        raise ValueError(f"must be a source user id, got {v!r}")
    return str(v).strip()


def _budget(v: Any) -> float | None:
    return None if v is None else _positive(v)


# check name -> (value checker, roles it applies to)
SHOPPER: frozenset[str] = frozenset({"shopper"})
BOTH: frozenset[str] = frozenset({"shopper", "merchandiser"})
MERCH: frozenset[str] = frozenset({"merchandiser"})
CHECKS: dict[str, tuple[Callable[[Any], Any], frozenset[str]]] = {
    # the contract's checks (issue 11)
    "bundles_min": (_int, SHOPPER),
    "roles": (_roles, BOTH),
    "exclude": (_patterns, BOTH),
    "food": (_bool, BOTH),
    "max_price": (_positive, BOTH),
    "min_price": (_positive, BOTH),
    "distinct": (_distinct, BOTH),
    "clarify": (_bool, SHOPPER),
    "cheaper": (_bool, SHOPPER),
    "keeps_roles": (_bool, SHOPPER),
    "not_shown_disliked": (_bool, SHOPPER),
    # added for the conversation issue (12)
    "differs_from_user": (_user, SHOPPER),
    "chips": (_chips, SHOPPER),
    "no_chips": (_patterns, SHOPPER),
    "budget": (_budget, SHOPPER),
    "servings": (lambda v: _int(v, 1), SHOPPER),
    "changed": (_bool, SHOPPER),
    "pricier": (_bool, SHOPPER),
    "similar_to": (lambda v: _int(v, 1), SHOPPER),
    "shows_liked": (_bool, SHOPPER),
    "items_min": (lambda v: _int(v, 1), BOTH),
    "items_max": (lambda v: _int(v, 1), BOTH),
    "text_excludes": (_patterns, SHOPPER),
    # added for the merchandiser issue (13)
    "ideas_min": (_int, MERCH),
    "min_margin": (_rate, MERCH),
}
# Checks that compare with the screen before this turn: meaningless on the first turn.
NEEDS_PREVIOUS = frozenset({"cheaper", "keeps_roles", "changed", "pricier", "similar_to"})
SCENARIO_KEYS = frozenset({"id", "say", "turns", "user", "role", "note", "k", "weights"})
TURN_KEYS = frozenset({"say", "action", "bundle", "reason", "expect", "note"})
FILE_KEYS = frozenset({"nonfood", "scenarios", "description", "version"})


# -------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Turn:
    say: str | None = None
    action: str | None = None  # like / dislike / cart
    bundle: int | None = None  # 1-based rank on screen, for actions
    reason: str = ""  # the typed reason of a like/dislike
    expect: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Scenario:
    id: str
    turns: tuple[Turn, ...]
    user: str | None = None  # None: a guest
    role: Role = "shopper"
    k: int = DEFAULT_IDEAS  # merchandiser: ideas asked for
    weights: dict[str, float] | None = None  # merchandiser: objective weights
    note: str = ""

    @property
    def multi_turn(self) -> bool:
        return len(self.turns) > 1


@dataclass(frozen=True)
class ScenarioFile:
    scenarios: tuple[Scenario, ...]
    nonfood: tuple[str, ...] = ()
    description: str = ""
    path: str = ""


# ----------------------------------------------------------------------------- loading


def load_scenarios(path: Path | str) -> ScenarioFile:
    """Read and validate a scenario file; :class:`ScenarioError` names what is wrong."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ScenarioError(f"scenario file {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"scenario file {path} is not valid JSON: {exc}") from None
    return parse_scenarios(raw, str(path))


def parse_scenarios(raw: Any, path: str = "") -> ScenarioFile:
    if not isinstance(raw, dict):
        raise ScenarioError("a scenario file is a JSON object with a 'scenarios' list")
    _no_unknown(raw, FILE_KEYS, "the scenario file")
    try:
        nonfood = _patterns(raw.get("nonfood", []))
    except ValueError as exc:
        raise ScenarioError(f"the scenario file: 'nonfood' {exc}") from None
    items = raw.get("scenarios")
    if not isinstance(items, list) or not items:
        raise ScenarioError("the scenario file needs a non-empty 'scenarios' list")
    scenarios = [_scenario(item, n) for n, item in enumerate(items, start=1)]
    seen: Counter[str] = Counter(s.id for s in scenarios)
    dupes = sorted(i for i, c in seen.items() if c > 1)
    if dupes:
        raise ScenarioError(f"scenario ids must be unique: {', '.join(dupes)} repeated")
    return ScenarioFile(tuple(scenarios), tuple(nonfood), str(raw.get("description", "")), path)


def _no_unknown(obj: dict, allowed: frozenset[str], where: str) -> None:
    for key in obj:
        if key not in allowed:
            raise ScenarioError(f"{where}: unknown key '{key}'")


def _scenario(item: Any, n: int) -> Scenario:
    if not isinstance(item, dict):
        raise ScenarioError(f"scenario #{n} is not an object")
    sid = item.get("id")
    if not isinstance(sid, str) or not sid.strip():
        raise ScenarioError(f"scenario #{n}: 'id' must be a non-empty string")
    where = f"scenario '{sid}'"
    role = item.get("role", "shopper")
    if role not in ("shopper", "merchandiser"):
        raise ScenarioError(f"{where}: 'role' must be 'shopper' or 'merchandiser', got {role!r}")
    checks = {k: v for k, v in item.items() if k in CHECKS}
    _no_unknown({k: v for k, v in item.items() if k not in CHECKS}, SCENARIO_KEYS, where)
    if ("say" in item) == ("turns" in item):
        raise ScenarioError(f"{where}: give either 'say' (one turn) or 'turns', not both or neither")
    if "turns" in item:
        if checks:
            raise ScenarioError(f"{where}: check '{next(iter(checks))}' belongs in a turn's 'expect' "
                                "when the scenario has 'turns'")
        if not isinstance(item["turns"], list) or not item["turns"]:
            raise ScenarioError(f"{where}: 'turns' must be a non-empty list")
        turns = [_turn(t, where, i, role) for i, t in enumerate(item["turns"], start=1)]
    else:
        turns = [_turn({"say": item["say"], "expect": checks}, where, 1, role)]
    if role == "merchandiser" and (len(turns) != 1 or turns[0].say is None):
        raise ScenarioError(f"{where}: a merchandiser scenario is one theme ('say'), not a conversation")
    _check_order(turns, where)
    try:
        user = _user(item.get("user", "guest"))
    except ValueError as exc:
        raise ScenarioError(f"{where}: 'user' {exc}") from None
    try:
        k = _int(item.get("k", DEFAULT_IDEAS), 1)
    except ValueError as exc:
        raise ScenarioError(f"{where}: 'k' {exc}") from None
    weights = item.get("weights")
    if weights is not None and (not isinstance(weights, dict) or not all(
            isinstance(k_, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
            for k_, v in weights.items())):
        raise ScenarioError(f"{where}: 'weights' must map objective names to numbers >= 0")
    return Scenario(id=sid, turns=tuple(turns), user=None if user.lower() == "guest" else user,
                    role=role, k=k, weights=weights, note=str(item.get("note", "")))


def _turn(raw: Any, where: str, n: int, role: str) -> Turn:
    where_turn = f"{where} turn {n}"
    if not isinstance(raw, dict):
        raise ScenarioError(f"{where_turn} is not an object")
    _no_unknown(raw, TURN_KEYS, where_turn)
    say, action = raw.get("say"), raw.get("action")
    if (say is None) == (action is None):
        raise ScenarioError(f"{where_turn}: give either 'say' or 'action'")
    if say is not None and not isinstance(say, str):
        raise ScenarioError(f"{where_turn}: 'say' must be a string, got {say!r}")
    bundle = raw.get("bundle")
    if action is not None:
        if action not in ACTIONS:
            raise ScenarioError(f"{where_turn}: 'action' must be one of {', '.join(ACTIONS)}, got {action!r}")
        if isinstance(bundle, bool) or not isinstance(bundle, int) or bundle < 1:
            raise ScenarioError(f"{where_turn}: 'bundle' must be the rank (1, 2, ...) of a shown bundle, "
                                f"got {bundle!r}")
    elif bundle is not None:
        raise ScenarioError(f"{where_turn}: 'bundle' goes with an 'action'")
    reason = raw.get("reason", "")
    if not isinstance(reason, str):
        raise ScenarioError(f"{where_turn}: 'reason' must be a string")
    expect = raw.get("expect", {})
    if not isinstance(expect, dict):
        raise ScenarioError(f"{where_turn}: 'expect' must be an object of checks")
    checks: dict[str, Any] = {}
    for key, value in expect.items():
        if key not in CHECKS:
            raise ScenarioError(f"{where_turn}: unknown check '{key}'")
        checker, roles = CHECKS[key]
        if role not in roles:
            raise ScenarioError(f"{where_turn}: check '{key}' does not apply to a {role} scenario")
        try:
            checks[key] = checker(value)
        except ValueError as exc:
            raise ScenarioError(f"{where_turn}: '{key}' {exc}") from None
    return Turn(say=say, action=action, bundle=bundle, reason=reason, expect=checks)


def _check_order(turns: list[Turn], where: str) -> None:
    """Checks that look back need something to look back at."""
    for n, turn in enumerate(turns, start=1):
        for key in NEEDS_PREVIOUS & turn.expect.keys():
            if n == 1:
                raise ScenarioError(f"{where} turn 1: '{key}' compares with an earlier turn; there is none")
        if turn.expect.get("keeps_roles") and not any("roles" in t.expect for t in turns[: n - 1]):
            raise ScenarioError(f"{where} turn {n}: 'keeps_roles' needs an earlier turn with 'roles'")


def product_patterns(sf: ScenarioFile) -> list[tuple[str, str]]:
    """(where, pattern) for every pattern that must match a catalogue product."""
    out = [("nonfood", p) for p in sf.nonfood]
    for s in sf.scenarios:
        for n, t in enumerate(s.turns, start=1):
            for role in t.expect.get("roles", []):
                out += [(f"{s.id} turn {n} roles", p) for p in role]
            out += [(f"{s.id} turn {n} exclude", p) for p in t.expect.get("exclude", [])]
    return out


def catalogue_texts(catalogue: pd.DataFrame) -> pd.Series:
    """The lower-cased text patterns are matched against, one per catalogue row."""
    cols = [c for c in PRODUCT_FIELDS if c in catalogue.columns]
    parts = [catalogue[c].astype("string").fillna("") for c in cols]
    text = parts[0]
    for p in parts[1:]:
        text = text + " | " + p
    return text.str.lower()


def unmatched_patterns(sf: ScenarioFile, catalogue: pd.DataFrame) -> list[tuple[str, str]]:
    """Patterns that no product of ``catalogue`` contains: such a check could never be met
    (a role) or never bite (an exclusion)."""
    texts = catalogue_texts(catalogue)
    cache: dict[str, bool] = {}
    missing = []
    for where, pattern in product_patterns(sf):
        p = pattern.lower()
        if p not in cache:
            cache[p] = bool(texts.str.contains(p, regex=False).any())
        if not cache[p]:
            missing.append((where, pattern))
    return missing


# ----------------------------------------------------------------------- shown bundles


@dataclass(frozen=True)
class ItemView:
    product_id: str
    title: str  # as shown
    product_type: str
    price: float | None
    text: str  # lower-cased haystack for patterns

    def matches(self, patterns: Iterable[str]) -> str | None:
        return next((p for p in patterns if p.lower() in self.text), None)


@dataclass(frozen=True)
class BundleView:
    rank: int
    name: str
    price: float | None  # what the shopper pays (bundle price)
    items: tuple[ItemView, ...]
    margin: float | None = None

    @property
    def key(self) -> str:
        return "+".join(sorted(i.product_id for i in self.items))

    @property
    def types(self) -> frozenset[str]:
        # A product without a type counts as its own type: never a false overlap.
        return frozenset(i.product_type or f"#{i.product_id}" for i in self.items)

    def describe(self) -> str:
        price = "price unknown" if self.price is None else f"${self.price:.2f}"
        items = "; ".join(f"{i.title} ({'n/a' if i.price is None else f'${i.price:.2f}'})" for i in self.items)
        return f"#{self.rank} {self.name!r} {price}: {items}"

    def as_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "name": self.name, "price": self.price, "margin": self.margin,
                "items": [{"product_id": i.product_id, "title": i.title, "type": i.product_type, "price": i.price}
                          for i in self.items]}


def _get(obj: Any, *names: str) -> Any:
    for name in names:
        value = obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)
        if value is not None:
            return value
    return None


def _float(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if f != f else f


class Viewer:
    """Turns shown bundles (or merchandiser ideas) into :class:`BundleView` with catalogue text."""

    def __init__(self, catalogue: pd.DataFrame):
        self.catalogue = catalogue
        self._cols = [c for c in PRODUCT_FIELDS if c in catalogue.columns]
        self._cache: dict[str, tuple[str, str]] = {}

    def item(self, raw: Any) -> ItemView:
        pid = str(_get(raw, "product_id", "id"))
        shown_title = str(_get(raw, "display_title", "title") or "")
        if pid not in self._cache:
            if pid in self.catalogue.index:
                row = self.catalogue.loc[pid]
                values = ["" if pd.isna(row[c]) else str(row[c]) for c in self._cols]
                self._cache[pid] = (" | ".join(values).lower(), str(row.get("product_type", "") or ""))
            else:
                self._cache[pid] = ("", "")
        text, ptype = self._cache[pid]
        return ItemView(pid, shown_title or pid, ptype, _float(_get(raw, "price", "unit_price")),
                        f"{text} | {shown_title.lower()}")

    def bundle(self, raw: Any, rank: int) -> BundleView:
        inner = _get(raw, "bundle")  # an idea may wrap a shown bundle
        source = inner if inner is not None and _get(raw, "items", "products") is None else raw
        items = _get(source, "items", "products") or []
        margin = _get(raw, "margin_rate", "margin_after", "margin_rate_after", "margin")
        if margin is None and source is not raw:
            margin = _get(source, "margin_rate", "margin_after", "margin")
        return BundleView(
            rank=int(_get(raw, "rank") or rank), name=str(_get(source, "name", "title") or ""),
            price=_float(_get(source, "bundle_price", "price")),
            items=tuple(self.item(i) for i in items), margin=_float(margin),
        )

    def bundles(self, raws: Sequence[Any]) -> list[BundleView]:
        return [self.bundle(b, rank) for rank, b in enumerate(raws, start=1)]


# ------------------------------------------------------------------------------- checks


@dataclass
class CheckResult:
    check: str
    passed: bool
    detail: str = ""
    expected: Any = None
    turn: int = 1
    say: str = ""
    shown: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Screen:
    """What one turn left the shopper looking at, and what it compares with."""

    shown: list[BundleView]
    text: str = ""
    chips: list[str] = field(default_factory=list)
    asks: bool = False  # the reply asks the shopper a question
    applied: dict[str, Any] = field(default_factory=dict)  # budget, servings the answer used
    before: list[BundleView] = field(default_factory=list)  # the screen before this turn
    earlier_roles: list[list[str]] | None = None  # roles of the latest earlier turn that had some
    disliked: set[str] = field(default_factory=set)  # bundle keys disliked so far
    liked: set[str] = field(default_factory=set)  # product ids liked or carted so far
    nonfood: tuple[str, ...] = ()
    other_user: Callable[[str], list[BundleView]] | None = None  # the same steps for another user


Outcome = tuple[bool, str]


def _top(screen: Screen) -> BundleView | None:
    return screen.shown[0] if screen.shown else None


def _no_bundle(screen: Screen) -> Outcome:
    return False, f"no bundle shown (reply: {screen.text[:160]!r})"


def check_bundles_min(screen: Screen, n: int) -> Outcome:
    ok = len(screen.shown) >= n
    return ok, "" if ok else f"showed {len(screen.shown)} bundle(s), wanted at least {n} (reply: {screen.text[:160]!r})"


def _missing_roles(bundle: BundleView, roles: list[list[str]]) -> list[list[str]]:
    return [role for role in roles if not any(i.matches(role) for i in bundle.items)]


def check_roles(screen: Screen, roles: list[list[str]]) -> Outcome:
    top = _top(screen)
    if top is None:
        return _no_bundle(screen)
    missing = _missing_roles(top, roles)
    if not missing:
        return True, ""
    return False, f"top bundle has no product for role(s) {missing}; top bundle {top.describe()}"


def _hits(bundles: Sequence[BundleView], patterns: Sequence[str]) -> list[str]:
    hits = []
    for b in bundles:
        for item in b.items:
            p = item.matches(patterns)
            if p:
                price = "n/a" if item.price is None else f"${item.price:.2f}"
                hits.append(f"bundle {b.rank}: {item.title} [{item.product_id}, {price}] matches {p!r}")
    return hits


def check_exclude(screen: Screen, patterns: list[str]) -> Outcome:
    hits = _hits(screen.shown, patterns)
    return not hits, "; ".join(hits)


def check_food(screen: Screen, food: bool) -> Outcome:
    if not food:
        return True, ""  # a non-food need is checked by its roles and exclusions
    hits = _hits(screen.shown, screen.nonfood)
    return not hits, "non-food product in a food need: " + "; ".join(hits) if hits else ""


def check_max_price(screen: Screen, cap: float) -> Outcome:
    over = [b for b in screen.shown if b.price is None or b.price > cap + PRICE_EPS]
    return not over, "; ".join(f"over ${cap:.2f}: {b.describe()}" for b in over)


def check_min_price(screen: Screen, floor: float) -> Outcome:
    top = _top(screen)
    if top is None:
        return _no_bundle(screen)
    ok = top.price is not None and top.price + PRICE_EPS >= floor
    return ok, "" if ok else f"top bundle under ${floor:.2f}: {top.describe()}"


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b) if a | b else 0.0


def check_distinct(screen: Screen, bound: float | None) -> Outcome:
    if bound is None:
        return True, ""
    worst = (0.0, 0, 0)
    for i, a in enumerate(screen.shown):
        for b in screen.shown[i + 1:]:
            worst = max(worst, (jaccard(a.types, b.types), a.rank, b.rank))
    value, ra, rb = worst
    if value <= bound + PRICE_EPS:
        return True, ""
    a, b = screen.shown[ra - 1], screen.shown[rb - 1]
    shared = sorted(a.types & b.types)
    return False, (f"bundles {ra} and {rb} have product-type Jaccard {value:.2f} > {bound:.2f} "
                   f"(shared types {shared}): {a.describe()} | {b.describe()}")


def check_clarify(screen: Screen, want: bool) -> Outcome:
    if screen.asks == want:
        return True, ""
    if want:
        shown = f"; showed {len(screen.shown)} bundle(s): {screen.shown[0].describe()}" if screen.shown else ""
        return False, f"no question asked (reply: {screen.text[:160]!r}){shown}"
    return False, f"asked a question instead of answering: {screen.text[:160]!r}"


def _compare_price(screen: Screen, lower: bool) -> Outcome:
    top, before = _top(screen), (screen.before[0] if screen.before else None)
    if top is None:
        return _no_bundle(screen)
    if before is None:
        return False, "nothing was on screen before this turn to compare with"
    if top.price is None or before.price is None:
        return False, f"price unknown: now {top.describe()}, before {before.describe()}"
    ok = top.price < before.price - PRICE_EPS if lower else top.price > before.price + PRICE_EPS
    word = "cheaper" if lower else "pricier"
    return ok, "" if ok else f"top bundle not {word}: now {top.describe()}; before {before.describe()}"


def check_cheaper(screen: Screen, want: bool) -> Outcome:
    return _compare_price(screen, lower=True) if want else (True, "")


def check_pricier(screen: Screen, want: bool) -> Outcome:
    return _compare_price(screen, lower=False) if want else (True, "")


def check_keeps_roles(screen: Screen, want: bool) -> Outcome:
    if not want:
        return True, ""
    ok, detail = check_roles(screen, screen.earlier_roles or [])
    return ok, detail.replace("role(s)", "earlier role(s)")


def check_not_shown_disliked(screen: Screen, want: bool) -> Outcome:
    if not want:
        return True, ""
    again = [b for b in screen.shown if b.key in screen.disliked]
    return not again, "; ".join(f"disliked bundle shown again: {b.describe()}" for b in again)


def check_differs_from_user(screen: Screen, other: str) -> Outcome:
    if screen.other_user is None:
        return False, "no way to replay the turns for another user"
    if not screen.shown:
        return _no_bundle(screen)
    theirs = screen.other_user(other)
    mine = {i.product_id for b in screen.shown for i in b.items}
    if mine != {i.product_id for b in theirs for i in b.items}:
        return True, ""
    return False, (f"user {other} was shown the same products: "
                   + " | ".join(b.describe() for b in screen.shown))


def check_chips(screen: Screen, want: bool | list[str]) -> Outcome:
    if want is False:
        return True, ""
    if want is True:
        return bool(screen.chips), "" if screen.chips else "no chip shown"
    missing = [p for p in want if not any(p.lower() in c.lower() for c in screen.chips)]
    return not missing, f"no chip matches {missing}; chips {screen.chips}" if missing else ""


def check_no_chips(screen: Screen, patterns: list[str]) -> Outcome:
    hits = [c for c in screen.chips if any(p.lower() in c.lower() for p in patterns)]
    return not hits, f"chip(s) {hits} should be gone" if hits else ""


def check_budget(screen: Screen, want: float | None) -> Outcome:
    got = _float(screen.applied.get("budget"))
    ok = got is None if want is None else got is not None and abs(got - want) < 0.005
    expected = "no budget" if want is None else f"budget ${want:.2f}"
    return ok, "" if ok else f"wanted {expected}, the answer used {got!r}"


def check_servings(screen: Screen, want: int) -> Outcome:
    got = screen.applied.get("servings")
    ok = got == want
    return ok, "" if ok else f"wanted servings {want}, the answer used {got!r}"


def check_changed(screen: Screen, want: bool) -> Outcome:
    if not want:
        return True, ""
    top = _top(screen)
    if top is None:
        return _no_bundle(screen)
    if not screen.before:
        return False, "nothing was on screen before this turn"
    ok = top.key != screen.before[0].key
    return ok, "" if ok else f"top bundle unchanged: {top.describe()}"


def check_similar_to(screen: Screen, rank: int) -> Outcome:
    top = _top(screen)
    if top is None:
        return _no_bundle(screen)
    if len(screen.before) < rank:
        return False, f"there was no bundle {rank} on screen before this turn"
    ref = screen.before[rank - 1]
    shared = top.types & ref.types
    ok = 2 * len(shared) >= len(ref.types)  # at least half of its types
    return ok, "" if ok else (f"top bundle shares {len(shared)} of {len(ref.types)} product types with "
                              f"bundle {rank}: now {top.describe()}; bundle {rank} was {ref.describe()}")


def check_shows_liked(screen: Screen, want: bool) -> Outcome:
    if not want:
        return True, ""
    if not screen.liked:
        return False, "nothing was liked or carted before this turn"
    ok = any(i.product_id in screen.liked for b in screen.shown for i in b.items)
    return ok, "" if ok else "no liked or carted product is shown: " + " | ".join(b.describe() for b in screen.shown)


def _sizes(screen: Screen, n: int, at_least: bool) -> Outcome:
    bad = [b for b in screen.shown if (len(b.items) < n if at_least else len(b.items) > n)]
    word = "fewer" if at_least else "more"
    return not bad, "; ".join(f"{len(b.items)} items ({word} than {n}): {b.describe()}" for b in bad)


def check_text_excludes(screen: Screen, patterns: list[str]) -> Outcome:
    hits = [p for p in patterns if p.lower() in screen.text.lower()]
    return not hits, f"reply text contains {hits}: {screen.text[:200]!r}" if hits else ""


def check_ideas_min(screen: Screen, n: int) -> Outcome:
    ok = len(screen.shown) >= n
    return ok, "" if ok else f"{len(screen.shown)} idea(s), wanted at least {n} ({screen.text[:160]})"


def check_min_margin(screen: Screen, floor: float) -> Outcome:
    if not screen.shown:
        return _no_bundle(screen)
    bad = [b for b in screen.shown if b.margin is None or b.margin + PRICE_EPS < floor]
    return not bad, "; ".join(f"margin {b.margin!r} under {floor:.0%}: {b.describe()}" for b in bad)


CHECK_FUNCTIONS: dict[str, Callable[[Screen, Any], Outcome]] = {
    "bundles_min": check_bundles_min, "roles": check_roles, "exclude": check_exclude, "food": check_food,
    "max_price": check_max_price, "min_price": check_min_price, "distinct": check_distinct,
    "clarify": check_clarify, "cheaper": check_cheaper, "keeps_roles": check_keeps_roles,
    "not_shown_disliked": check_not_shown_disliked, "differs_from_user": check_differs_from_user,
    "chips": check_chips, "no_chips": check_no_chips, "budget": check_budget, "servings": check_servings,
    "changed": check_changed, "pricier": check_pricier, "similar_to": check_similar_to,
    "shows_liked": check_shows_liked, "items_min": lambda s, n: _sizes(s, n, True),
    "items_max": lambda s, n: _sizes(s, n, False), "text_excludes": check_text_excludes,
    "ideas_min": check_ideas_min, "min_margin": check_min_margin,
}
assert CHECK_FUNCTIONS.keys() == CHECKS.keys()


def effective_checks(turn: Turn, role: Role, k: int = DEFAULT_IDEAS) -> dict[str, Any]:
    """The turn's checks plus the defaults: a shopper's answer shows at least 3 bundles
    (unless it is meant to ask a question, or is an action), a merchandiser gets k ideas."""
    checks = dict(turn.expect)
    if role == "merchandiser":
        checks.setdefault("ideas_min", k)
    elif turn.say is not None and not checks.get("clarify"):
        checks.setdefault("bundles_min", DEFAULT_BUNDLES_MIN)
    return checks


def run_checks(screen: Screen, checks: dict[str, Any], turn: int = 1, say: str = "") -> list[CheckResult]:
    out = []
    for name, value in checks.items():
        try:
            ok, detail = CHECK_FUNCTIONS[name](screen, value)
        except Exception as exc:  # a check must report, never stop the run
            ok, detail = False, f"check raised {type(exc).__name__}: {exc}"
        out.append(CheckResult(name, ok, detail, value, turn, say,
                               [] if ok else [b.as_dict() for b in screen.shown]))
    return out


# ------------------------------------------------------------------------------ running


def reply_chips(reply: Any) -> list[str]:
    """The chips a reply shows: its ``chips`` when it has them, else its "understood" phrases
    (the chips the chat app draws today)."""
    chips = getattr(reply, "chips", None)
    if chips is None:
        chips = getattr(reply, "understood", None) or []
    return [str(_get(c, "label", "text") or c) if not isinstance(c, str) else c for c in chips]


def reply_asks(reply: Any) -> bool:
    """A reply asks a question when it says it does (a ``question``/``clarify`` field), or,
    for a reply without such a field, when its text holds a question mark."""
    for name in ("question", "clarify", "clarifying_question"):
        if hasattr(reply, name):
            if getattr(reply, name):
                return True
            break
    else:
        return "?" in (getattr(reply, "text", "") or "")
    return False


def applied_values(reply: Any) -> dict[str, Any]:
    """The budget and servings the answer was computed with."""
    rec = getattr(reply, "recommendation", None)
    constraints = getattr(rec, "constraints", None)
    need = getattr(reply, "need", None)
    out: dict[str, Any] = {}
    for name in ("budget", "servings", "diets"):
        value = getattr(constraints, name, None) if constraints is not None else None
        if value is None and need is not None:
            value = getattr(need, name, None)
        out[name] = value
    return out


@dataclass
class ScenarioResult:
    id: str
    role: str
    user: str
    multi_turn: bool
    checks: list[CheckResult]
    seconds: float
    transcript: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""
    llm_calls: list[dict[str, Any]] = field(default_factory=list)  # one per LLM proposal (llm_report)

    @property
    def passed(self) -> bool:
        return not self.error and all(c.passed for c in self.checks)


def llm_report(info: Any) -> dict[str, Any] | None:
    """The counts of one LLM proposal (a recommendation's ``llm`` block or an ideas
    result's ``llm`` dict); None when the LLM was not asked (rules only, or busy)."""
    if info is None:
        return None
    get = info.get if isinstance(info, dict) else functools.partial(getattr, info)
    if not get("used", False):
        return None
    return {k: get(k, 0) for k in ("proposed", "valid_before_repair", "valid", "fallback")}


def llm_summary(results: Sequence[ScenarioResult]) -> dict[str, Any]:
    """Valid-before-repair over every LLM proposal of a run: the share of proposed
    bundles that parsed and validated with no repair (the decoding issue's bar)."""
    calls = [c for r in results for c in r.llm_calls]
    proposed = sum(int(c["proposed"]) for c in calls)
    before = sum(int(c["valid_before_repair"]) for c in calls)
    return {"calls": len(calls), "proposed": proposed, "valid_before_repair": before,
            "valid_before_repair_rate": _ratio(before, proposed),
            "kept": sum(int(c["valid"]) for c in calls), "fallbacks": sum(bool(c["fallback"]) for c in calls)}


class _Session:
    """One scenario's conversation: performs its steps, keeps what the checks look back at."""

    def __init__(self, assistant: Any, store: Any, viewer: Viewer, user: str | None, variant: str,
                 session_id: str):
        from assistant.conversation import Conversation

        self.conv = Conversation(assistant, store, user_id=user, use_llm=variant != "rule",
                                 session_id=session_id)
        self.viewer = viewer
        self.shown: list[BundleView] = []
        self.disliked: set[str] = set()
        self.liked: set[str] = set()
        self.llm_calls: list[dict[str, Any]] = []

    def step(self, turn: Turn) -> tuple[Any, str]:
        """Do one step; (the reply or action result, an error message)."""
        if turn.say is not None:
            reply = None
            for reply in self.conv.turn(turn.say):  # noqa: B007 - the last reply is the answer
                pass
            self.shown = self.viewer.bundles(list(getattr(reply, "bundles", []) or []))
            call = llm_report(getattr(getattr(reply, "recommendation", None), "llm", None))
            if call is not None:
                self.llm_calls.append(call)
            return reply, ""
        from assistant.service import ServiceError

        number = turn.bundle or 1
        try:
            target = self.viewer.bundle(self.conv.bundle(number), number)
            if turn.action == "cart":
                result = self.conv.add_to_cart(number)
            else:
                result = getattr(self.conv, turn.action or "like")(number, turn.reason)
        except ServiceError as exc:
            return None, f"{turn.action} bundle {number} failed: {exc}"
        if turn.action == "dislike":
            self.disliked.add(target.key)
        else:
            self.liked |= {i.product_id for i in target.items}
        # An action may redraw the screen (a disliked bundle leaves it): read it back.
        bundles = getattr(result, "bundles", None)
        if bundles is None:
            bundles = getattr(self.conv, "shown", [])
        self.shown = self.viewer.bundles(list(bundles))
        return result, ""


class ScenarioRunner:
    """Runs scenarios of one file for one variant over one shared assistant."""

    def __init__(self, assistant: Any, store: Any, nonfood: Sequence[str] = (), variant: str = "rule"):
        if variant not in VARIANTS:
            raise ScenarioError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        self.assistant = assistant
        self.store = store
        self.nonfood = tuple(nonfood)
        self.variant = variant
        self.viewer = Viewer(assistant.index.catalogue)

    def run(self, scenario: Scenario) -> ScenarioResult:
        start = time.perf_counter()
        result = ScenarioResult(scenario.id, scenario.role, scenario.user or "guest", scenario.multi_turn, [], 0.0)
        try:
            if scenario.role == "merchandiser":
                self._run_merchandiser(scenario, result)
            else:
                self._run_shopper(scenario, result)
        except Exception as exc:  # one broken scenario must not stop the run
            result.error = f"{type(exc).__name__}: {exc}"
        result.seconds = round(time.perf_counter() - start, 3)
        return result

    def _session(self, scenario: Scenario, user: str | None, tag: str = "") -> _Session:
        return _Session(self.assistant, self.store, self.viewer, user, self.variant,
                        f"scenario:{scenario.id}:{self.variant}{tag}")

    def _run_shopper(self, scenario: Scenario, result: ScenarioResult) -> None:
        session = self._session(scenario, scenario.user)
        earlier_roles: list[list[str]] | None = None
        for n, turn in enumerate(scenario.turns, start=1):
            before = list(session.shown)
            reply, error = session.step(turn)
            label = turn.say if turn.say is not None else f"[{turn.action} bundle {turn.bundle}]"
            checks = effective_checks(turn, "shopper")
            if error:
                result.checks += [CheckResult(name, False, f"not run: {error}", value, n, label)
                                  for name, value in checks.items()] or [CheckResult("action", False, error, None, n,
                                                                                     label)]
                result.transcript.append({"turn": n, "say": label, "error": error})
                continue
            is_say = turn.say is not None
            screen = Screen(
                shown=session.shown,
                text=str(getattr(reply, "text", "") or "") if is_say else "",
                chips=reply_chips(reply) if is_say else [],
                asks=reply_asks(reply) if is_say else False,
                applied=applied_values(reply) if is_say else {},
                before=before, earlier_roles=earlier_roles,
                disliked=set(session.disliked), liked=set(session.liked), nonfood=self.nonfood,
                other_user=functools.partial(self._replay, scenario, upto=n),
            )
            result.checks += run_checks(screen, checks, n, label)
            if "roles" in turn.expect:
                earlier_roles = turn.expect["roles"]
            result.transcript.append({
                "turn": n, "say": label, "text": screen.text, "chips": screen.chips, "asks": screen.asks,
                "applied": {k: v for k, v in screen.applied.items() if v}, "shown": [b.as_dict() for b in screen.shown],
            })
        result.llm_calls = session.llm_calls

    def _replay(self, scenario: Scenario, user: str, upto: int) -> list[BundleView]:
        """The screen another user would see after the same first ``upto`` steps."""
        session = self._session(scenario, None if user.lower() == "guest" else user, f":as:{user}")
        for turn in scenario.turns[:upto]:
            session.step(turn)
        return session.shown

    def _run_merchandiser(self, scenario: Scenario, result: ScenarioResult) -> None:
        turn = scenario.turns[0]
        checks = effective_checks(turn, "merchandiser", scenario.k)
        ideas_fn = getattr(self.assistant, "ideas", None)
        if ideas_fn is None:
            error = "not implemented: BundleAssistant.ideas(theme, k=N) does not exist yet"
            result.checks += [CheckResult(name, False, error, value, 1, turn.say or "")
                              for name, value in checks.items()]
            result.transcript.append({"turn": 1, "say": turn.say, "error": error})
            return
        from assistant.service import ServiceError

        kwargs: dict[str, Any] = {"k": scenario.k}
        params = inspect.signature(ideas_fn).parameters
        if "mode" in params:
            kwargs["mode"] = self.variant
        elif "use_llm" in params:
            kwargs["use_llm"] = self.variant != "rule"
        if scenario.weights is not None and "weights" in params:
            kwargs["weights"] = scenario.weights
        text = ""
        try:
            answer = ideas_fn(turn.say, **kwargs)
        except ServiceError as exc:  # e.g. nothing fits: the message is the answer
            answer, text = [], str(exc)
        ideas = answer if isinstance(answer, list) else (_get(answer, "ideas", "bundles") or [])
        call = None if isinstance(answer, list) else llm_report(getattr(answer, "llm", None))
        if call is not None:
            result.llm_calls.append(call)
        if not text and not ideas:
            notes = [] if isinstance(answer, list) else (_get(answer, "explanations", "notes") or [])
            text = " ".join(str(n) for n in notes)
        screen = Screen(shown=self.viewer.bundles(list(ideas)), text=text,
                        chips=reply_chips(answer) if not isinstance(answer, list) else [], nonfood=self.nonfood)
        result.checks += run_checks(screen, checks, 1, turn.say or "")
        result.transcript.append({"turn": 1, "say": turn.say, "text": text,
                                  "shown": [b.as_dict() for b in screen.shown]})


# ------------------------------------------------------------------------------ report


def _ratio(passed: int, total: int) -> float | None:
    return round(passed / total, 4) if total else None


def summarise(results: Sequence[ScenarioResult]) -> dict[str, Any]:
    """Pass rates overall, per check kind, per role and for multi-turn scenarios, plus every failure."""
    checks = [c for r in results for c in r.checks]
    by_check: dict[str, dict[str, Any]] = {}
    for c in checks:
        entry = by_check.setdefault(c.check, {"passed": 0, "total": 0})
        entry["total"] += 1
        entry["passed"] += int(c.passed)
    for entry in by_check.values():
        entry["rate"] = _ratio(entry["passed"], entry["total"])

    def group(rs: Sequence[ScenarioResult]) -> dict[str, Any]:
        cs = [c for r in rs for c in r.checks]
        return {"scenarios": len(rs), "scenarios_passed": sum(r.passed for r in rs),
                "scenario_pass_rate": _ratio(sum(r.passed for r in rs), len(rs)),
                "checks": len(cs), "checks_passed": sum(c.passed for c in cs),
                "check_pass_rate": _ratio(sum(c.passed for c in cs), len(cs))}

    failures: list[dict[str, Any]] = []
    for r in results:
        if r.error:
            failures.append({"scenario": r.id, "role": r.role, "turn": None, "say": "", "check": "error",
                             "expected": None, "detail": r.error, "shown": []})
        for c in r.checks:
            if not c.passed:
                failures.append({"scenario": r.id, "role": r.role, "turn": c.turn, "say": c.say, "check": c.check,
                                 "expected": c.expected, "detail": c.detail, "shown": c.shown})
    return {
        **group(results),
        "by_check": dict(sorted(by_check.items())),
        "by_role": {role: group([r for r in results if r.role == role])
                    for role in ("shopper", "merchandiser") if any(r.role == role for r in results)},
        "multi_turn": group([r for r in results if r.multi_turn]),
        "llm": llm_summary(results),
        "seconds": round(sum(r.seconds for r in results), 2),
        "scenario_results": [{"id": r.id, "role": r.role, "user": r.user, "multi_turn": r.multi_turn,
                              "passed": r.passed, "checks": len(r.checks),
                              "failed": [c.check for c in r.checks if not c.passed] + (["error"] if r.error else []),
                              "seconds": r.seconds, "transcript": r.transcript} for r in results],
        "failures": failures,
    }


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def _llm_cell(llm: dict[str, Any] | None) -> str:
    if not llm or not llm["proposed"]:
        return "n/a"
    return (f"{llm['valid_before_repair']}/{llm['proposed']} ({_pct(llm['valid_before_repair_rate'])}; "
            f"{llm['calls']} calls, {llm['fallbacks']} fallbacks)")


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# {PROTOCOL}", "",
             f"Scenario file `{report['scenarios_file']}` ({report['scenario_count']} scenarios, "
             f"{report['multi_turn_count']} multi-turn, {report['merchandiser_count']} merchandiser); "
             f"index `{report['data_dir']}`; commit `{report.get('git', {}).get('commit')}`"
             f"{' (dirty tree)' if report.get('git', {}).get('dirty') else ''}"
             f"{'; LLM adapter `' + report['adapter'] + '`' if report.get('adapter') else ''}.", "",
             "| variant | scenarios passed | checks passed | shopper scenarios | multi-turn | merchandiser "
             "| LLM valid before repair | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    for name, v in report["variants"].items():
        roles = v["by_role"]
        lines.append(
            f"| {name} | {v['scenarios_passed']}/{v['scenarios']} ({_pct(v['scenario_pass_rate'])}) "
            f"| {v['checks_passed']}/{v['checks']} ({_pct(v['check_pass_rate'])}) "
            f"| {_pct(roles.get('shopper', {}).get('scenario_pass_rate'))} "
            f"| {_pct(v['multi_turn']['scenario_pass_rate'])} "
            f"| {_pct(roles.get('merchandiser', {}).get('scenario_pass_rate'))} | {_llm_cell(v.get('llm'))} "
            f"| {v['seconds']} |")
    for name, v in report["variants"].items():
        lines += ["", f"## {name}: checks by kind", "", "| check | passed | rate |", "|---|---|---|"]
        lines += [f"| {k} | {e['passed']}/{e['total']} | {_pct(e['rate'])} |" for k, e in v["by_check"].items()]
        lines += ["", f"## {name}: failures ({len(v['failures'])})", ""]
        for f in v["failures"]:
            turn = f" turn {f['turn']}" if f["turn"] else ""
            lines.append(f"- **{f['scenario']}**{turn} `{f['check']}` (said {f['say']!r}): {f['detail']}")
    return "\n".join(lines) + "\n"


def run_scenarios(
    scenarios: Path | str,
    *,
    variants: Sequence[str] = ("rule",),
    out: Path | str | None = Path("eval/results"),
    settings: Any = None,
    assistant: Any = None,
    progress: bool = False,
    only: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Run every scenario of the file for each variant; write ``out/shopper-scenarios.{json,md}``
    (unless ``out`` is None) and return the report. Feedback goes to a throwaway store, so
    an eval never writes into the index's own feedback database."""
    from assistant.feedback import FeedbackStore
    from assistant.service import BundleAssistant

    sf = load_scenarios(scenarios)
    bad = [v for v in variants if v not in VARIANTS]
    if bad or not variants:
        raise ScenarioError(f"{PROTOCOL} runs the chat's paths {', '.join(VARIANTS)}; got {', '.join(variants)}")
    chosen = [s for s in sf.scenarios if only is None or s.id in set(only)]
    assistant = assistant or BundleAssistant(settings)
    report: dict[str, Any] = {
        "protocol": PROTOCOL, "scenarios_file": str(scenarios), "data_dir": str(assistant.settings.data_dir),
        "scenario_count": len(chosen), "multi_turn_count": sum(s.multi_turn for s in chosen),
        "merchandiser_count": sum(s.role == "merchandiser" for s in chosen), "variants": {},
        "adapter": assistant.settings.llm.adapter,  # the llm+rule variant's LoRA adapter (None: the base model)
    }
    try:
        from .run import git_commit

        report["git"] = git_commit()
    except Exception:  # provenance is nice to have
        report["git"] = {}
    with tempfile.TemporaryDirectory(prefix="scenarios-feedback-") as tmp:
        for variant in variants:
            with FeedbackStore(Path(tmp) / f"feedback-{variant.replace('+', '_')}.sqlite") as store:
                runner = ScenarioRunner(assistant, store, sf.nonfood, variant)
                results = []
                for s in chosen:
                    results.append(runner.run(s))
                    if progress:
                        r = results[-1]
                        failed = ",".join(c.check for c in r.checks if not c.passed) or r.error
                        print(f"[{variant}] {s.id}: {'pass' if r.passed else 'FAIL ' + failed} ({r.seconds}s)",
                              flush=True)
                report["variants"][variant] = summarise(results)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{PROTOCOL}.json").write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
        (out / f"{PROTOCOL}.md").write_text(markdown(report), encoding="utf-8")
    return report


def summary_text(report: dict[str, Any]) -> str:
    lines = []
    for name, v in report["variants"].items():
        lines.append(f"{name}: scenarios {v['scenarios_passed']}/{v['scenarios']} ({_pct(v['scenario_pass_rate'])}), "
                     f"checks {v['checks_passed']}/{v['checks']} ({_pct(v['check_pass_rate'])})")
        worst = sorted(v["by_check"].items(), key=lambda kv: (kv[1]["rate"] or 0, kv[0]))[:5]
        lines.append("  weakest checks: " + ", ".join(f"{k} {_pct(e['rate'])}" for k, e in worst))
    return "\n".join(lines)
