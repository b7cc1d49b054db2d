"""The one owner of hard constraints: which products a request may show, and why not.

Everything a shopper or merchandiser states as a rule is checked here and nowhere else:
stock, excluded products, excluded words (whole words of the title, category path or
brand), departments, unit-price bounds, the per-item budget, diets and allergens, and
food vs non-food. Retrieval (:mod:`retrieval.candidates`), the proposers and the reranker
all call this module, so a product that one of them lets through the others let through
too.

Two views of the same checks, built from the same small functions so that they always
agree (a test holds them to it on 1,000 random product/constraint pairs):

* :func:`mask` — a boolean array over a catalogue frame, vectorised, with the per-rule
  columns cached per catalogue (:class:`CatalogueFilter`);
* :func:`violations` — the human reasons one product breaks, for the reranker's rejection
  log and for tests.

Diet, allergen and food rules are data: ``retrieval/data/food_rules.json`` (versioned)
maps each rule to the Complete Journey departments, categories, product types and title
words it excludes, with a ``caveat`` the card shows, because a catalogue category cannot
prove that a product is free of an ingredient. The file's ``precedence`` entry documents
how a rule reads a product. Allergy rules err on excluding too much.

At run time this module imports only :mod:`retrieval.wording` (the whole-word matcher, which
the records share): the lowest layer reaches up to nobody.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import re
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from .wording import NOT_A_HIT, RULES_FILE, _term_re, mentions  # noqa: F401  (re-exported for callers)
from .wording import raw_rules as _raw_rules

if TYPE_CHECKING:  # only for annotations
    from .schema import Constraints

FoodClass = Literal["food", "nonfood", "infant"]


# ---------------------------------------------------------------------------------------
# What a rule reads of a product
# ---------------------------------------------------------------------------------------


def _norm(value: object) -> str:
    """Upper case, single spaces: the catalogue writes "BREADINGS  COATINGS CRUMBS"."""
    return " ".join(value.split()).upper() if isinstance(value, str) else ""


@dataclass(frozen=True)
class Facts:
    """The parts of a product the rules read."""

    department: str
    segments: tuple[str, ...]  # the category path, split on ">"
    product_type: str
    text: str  # lower-cased "title | category | type", for whole-word matches
    tokens: frozenset[str]  # the alphanumeric runs of ``text``: a cheap first test for words


_TOKEN_RE = re.compile(r"[a-z0-9]+")


@lru_cache(maxsize=65536)
def facts(title: str, category: str, department: str, product_type: str) -> Facts:
    segments = tuple(s for s in (_norm(p) for p in category.split(">")) if s)
    ptype = _norm(product_type) or (segments[-1] if len(segments) >= 3 else "")
    dept = _norm(department) or (segments[0] if segments else "")
    text = " | ".join(p for p in (title, category, product_type) if p).lower()
    return Facts(dept, segments, ptype, text, frozenset(_TOKEN_RE.findall(text)))


@lru_cache(maxsize=8192)
def _needs(term: str) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """The tokens a text must hold for ``term`` to match it as a whole word: every inner
    run of the term, and its last run, bare or with the plural s/es. None when the term
    starts or ends with punctuation (then only the regex can tell)."""
    t = term.strip().lower()
    if not t or not (t[0].isalnum() and t[-1].isalnum()):
        return None
    runs = _TOKEN_RE.findall(t)
    if not runs or "".join(runs) != "".join(ch for ch in t if ch.isalnum()) or not t.isascii():
        return None
    last = runs[-1]
    return tuple(runs[:-1]), (last, last + "s", last + "es")


@lru_cache(maxsize=256)
def _word_index(words: tuple[str, ...]) -> tuple[dict[str, tuple[int, ...]], tuple[int, ...]]:
    """token -> the positions of the words whose last run it can be; plus the positions of
    the words the token test cannot screen."""
    by_token: dict[str, list[int]] = {}
    unscreened = []
    for i, term in enumerate(words):
        need = _needs(term)
        if need is None:
            unscreened.append(i)
            continue
        for variant in need[1]:
            by_token.setdefault(variant, []).append(i)
    return {k: tuple(v) for k, v in by_token.items()}, tuple(unscreened)


def _candidates(tokens: frozenset[str], words: tuple[str, ...]) -> list[int]:
    """Positions (in order) of the words that may occur in a text with these tokens."""
    by_token, unscreened = _word_index(words)
    found = set(unscreened)
    for tok in tokens:
        hit = by_token.get(tok)
        if hit:
            found.update(hit)
    out = []
    for i in sorted(found):
        need = _needs(words[i])
        if need is None or all(r in tokens for r in need[0]):
            out.append(i)
    return out


def _field(row: object, name: str) -> object:
    if isinstance(row, Mapping | pd.Series):
        return row.get(name)
    return getattr(row, name, None)


def _str(row: object, name: str) -> str:
    v = _field(row, name)
    return v.strip() if isinstance(v, str) else ""


def facts_of(row: object) -> Facts:
    """Facts of a catalogue row: a mapping, a pandas row or any object with the fields."""
    return facts(_str(row, "title"), _str(row, "category"), _str(row, "department"), _str(row, "product_type"))


# ---------------------------------------------------------------------------------------
# Rules as data
# ---------------------------------------------------------------------------------------


def _names(values: Iterable[str] | None) -> frozenset[str]:
    return frozenset(_norm(v) for v in values or ())


@dataclass(frozen=True)
class Group:
    """One set of catalogue evidence (``food_rules.json`` ``groups``): what it excludes and
    what it keeps despite its department or category. See the file's ``precedence``."""

    name: str
    departments: frozenset[str] = frozenset()
    categories: frozenset[str] = frozenset()
    types: frozenset[str] = frozenset()
    words: tuple[str, ...] = ()
    keep_categories: frozenset[str] = frozenset()
    keep_types: frozenset[str] = frozenset()
    keep_type_words: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, name: str, spec: Mapping) -> Group:
        keep = spec.get("keep", {})
        return cls(
            name=name,
            departments=_names(spec.get("departments")),
            categories=_names(spec.get("categories")),
            types=_names(spec.get("types")),
            words=tuple(w.lower() for w in spec.get("words", ())),
            keep_categories=_names(keep.get("categories")),
            keep_types=_names(keep.get("types")),
            keep_type_words=tuple(w.lower() for w in keep.get("type_words", ())),
            aliases=tuple(a.lower() for a in spec.get("aliases", ())),
        )

    def word(self, f: Facts) -> str | None:
        """The first of ``words`` the product's text mentions (same answer as
        ``mentions(f.text, words)``; the token test skips the regex for most words)."""
        for i in _candidates(f.tokens, self.words):
            if mentions(f.text, (self.words[i],)):
                return self.words[i]
        return None

    def excludes(self, f: Facts) -> bool:
        return self.reason(f) is not None

    def reason(self, f: Facts) -> str | None:
        """Why this group excludes the product (most specific evidence first), else None."""
        if f.product_type in self.types:
            return f"{f.product_type} (type)"
        if f.product_type in self.keep_types:
            return None
        word = self.word(f)
        if word:
            return f"'{word}' in its name"
        if any(s in self.keep_categories for s in f.segments):
            return None
        if self.keep_type_words and mentions(f.product_type, self.keep_type_words):
            return None
        category = next((s for s in f.segments if s in self.categories), None)
        if category:
            return f"{category} (category)"
        if f.department in self.departments:
            return f"{f.department} (department)"
        return None


@dataclass(frozen=True)
class Rule:
    """A diet or allergen (``food_rules.json`` ``rules``): the groups it excludes, its own
    extra evidence, and the caveat a card shows with it."""

    key: str
    caveat: str
    aliases: tuple[str, ...]
    groups: tuple[Group, ...]

    def reason(self, f: Facts) -> str | None:
        for group in self.groups:
            why = group.reason(f)
            if why:
                return why if group.name == self.key else f"{group.name}: {why}"
        return None


@dataclass(frozen=True)
class FoodRules:
    version: str
    rules: dict[str, Rule]
    groups: dict[str, Group]
    nonfood: Group
    infant: Group

    def rule(self, key: str) -> Rule | None:
        return self.rules.get(key)

    def alias_groups(self, word: str) -> tuple[Group, ...]:
        """The groups an exclusion word names ("dairy", "nuts", "fish"), else ()."""
        w = " ".join(word.lower().split())
        return tuple(g for g in self.groups.values() if w in g.aliases)


@lru_cache(maxsize=1)
def load_rules() -> FoodRules:
    """The rules of ``food_rules.json``, parsed once."""
    raw = _raw_rules()
    groups = {name: Group.from_json(name, spec) for name, spec in raw["groups"].items()}
    rules: dict[str, Rule] = {}
    for key, spec in raw["rules"].items():
        own = Group.from_json(key, spec)
        members = tuple(groups[g] for g in spec.get("groups", ()))
        extra = (own,) if own.types or own.categories or own.departments or own.words else ()
        rules[key] = Rule(key, spec["caveat"], tuple(a.lower() for a in spec.get("aliases", ())), members + extra)
    food = raw["food"]
    return FoodRules(str(raw["version"]), rules, groups, Group.from_json("nonfood", food["nonfood"]),
                     Group.from_json("infant", food["infant"]))


def rules_version() -> str:
    return load_rules().version


def known_diets() -> tuple[str, ...]:
    return tuple(load_rules().rules)


def rule_for_word(word: str) -> str | None:
    """The diet key a shopper's word names ("dairy" -> "dairy-free", "celiac" ->
    "gluten-free", "vegan" -> "vegan"), else None."""
    w = " ".join(word.lower().split())
    rules = load_rules().rules
    if w in rules:
        return w
    return next((key for key, rule in rules.items() if w in rule.aliases), None)


def caveat(diet: str) -> str | None:
    rule = load_rules().rule(diet)
    return rule.caveat if rule else None


def caveats(constraints: Constraints) -> list[str]:
    """The caveat of every diet in force, including those named by an exclusion word
    ("no dairy" shows the dairy-free caveat): the card says what was not proven."""
    keys = list(dict.fromkeys([*constraints.diets, *filter(None, map(rule_for_word, constraints.exclude))]))
    return [c for c in (caveat(k) for k in keys) if c]


def food_class(f: Facts) -> tuple[FoodClass, str | None]:
    """"infant" (baby food and formula), "nonfood" (nobody eats it) or "food", and why."""
    rules = load_rules()
    why = rules.infant.reason(f)
    if why:
        return "infant", why
    why = rules.nonfood.reason(f)
    if why:
        return "nonfood", why
    return "food", None


def _food_verdict(klass: FoodClass, food: bool | None) -> bool:
    """True when a product of ``klass`` may be shown to a need with this ``food`` flag."""
    if food is None:
        return True
    if food:
        return klass == "food"
    return klass != "food"  # a non-food need (cleaning, baby) may show infant food


# ---------------------------------------------------------------------------------------
# Per product: the reasons
# ---------------------------------------------------------------------------------------


def _money(x: float) -> str:
    return f"${x:.2f}"


def _price(row: object) -> float | None:
    v = _field(row, "price")
    if v is None or isinstance(v, str):
        return None
    try:
        x = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return None if x != x else x


def _in_stock(row: object) -> bool:
    v = _field(row, "in_stock")
    if v is None or (isinstance(v, float) and v != v) or v is pd.NA:
        return True  # a missing stock flag is not evidence of "sold out"
    return bool(v)


def _departments(c: Constraints) -> set[str]:
    return {d.strip().lower() for d in c.departments if d.strip()}


def _exclusion_terms(c: Constraints) -> list[str]:
    return [w for w in c.exclude if w.strip()]


def _word_violation(pid: str, row: object, c: Constraints) -> str | None:
    terms = _exclusion_terms(c)
    if not terms:
        return None
    for name in ("title", "category", "brand"):
        text = _str(row, name)
        word = mentions(text, terms) if text else None
        if word:
            return f"excluded_word: {pid} {text!r} contains {word}"
    f = facts_of(row)
    for term in terms:
        for group in load_rules().alias_groups(term):
            why = group.reason(f)
            if why:
                return f"excluded_word: {pid} {_str(row, 'title')!r} is {term} ({why})"
    return None


def _price_violations(pid: str, price: float | None, c: Constraints, item_budget: bool) -> list[str]:
    reasons = []
    if c.max_unit_price is not None:
        if price is None:
            reasons.append(f"unit_price: {pid} has no price (max {_money(c.max_unit_price)})")
        elif price > c.max_unit_price:
            reasons.append(f"unit_price: {pid} {_money(price)} > max {_money(c.max_unit_price)}")
    if c.min_unit_price is not None:
        if price is None:
            reasons.append(f"unit_price: {pid} has no price (min {_money(c.min_unit_price)})")
        elif price < c.min_unit_price:
            reasons.append(f"unit_price: {pid} {_money(price)} < min {_money(c.min_unit_price)}")
    if item_budget and c.budget is not None:
        if price is None:
            reasons.append(f"item_budget: {pid} has no price (budget {_money(c.budget)})")
        elif not price < c.budget:  # one item that eats the whole budget fits no bundle
            reasons.append(f"item_budget: {pid} {_money(price)} >= budget {_money(c.budget)}")
    return reasons


def _diet_violations(pid: str, row: object, c: Constraints) -> list[str]:
    if not c.diets and c.food is None:
        return []
    f, title, reasons = facts_of(row), _str(row, "title"), []
    for key in dict.fromkeys(c.diets):
        rule = load_rules().rule(key)
        why = rule.reason(f) if rule else None
        if why:
            reasons.append(f"diet: {pid} {title!r} is not {key} ({why})")
    if c.food is not None:
        klass, why = food_class(f)
        if not _food_verdict(klass, c.food):
            need = "food" if c.food else "non-food"
            reasons.append(f"food: {pid} {title!r} is {klass}, the need is {need} ({why or 'not a non-food product'})")
    return reasons


def violations(row: object, constraints: Constraints, *, item_budget: bool = True) -> list[str]:
    """Every hard constraint one product breaks, as "<kind>: <product> <why>" strings
    (empty when it may be shown). ``row`` is a catalogue row (mapping, pandas row or any
    object with the catalogue fields).

    ``item_budget=False`` leaves out the per-item budget check ("an item priced at or
    above the whole budget fits no bundle"): retrieval prunes with it, while the reranker
    checks the exact, discounted bundle price against the budget instead.
    """
    c = constraints
    pid = str(_field(row, "product_id") or "")
    reasons = []
    if c.in_stock_only and not _in_stock(row):
        reasons.append(f"out_of_stock: {pid}")
    if pid in set(c.excluded_products):
        reasons.append(f"excluded_product: {pid}")
    word = _word_violation(pid, row, c)
    if word:
        reasons.append(word)
    allowed = _departments(c)
    department = _str(row, "department")
    if allowed and department.lower() not in allowed:
        reasons.append(f"department: {pid} is in {department or 'no department'}")
    reasons += _price_violations(pid, _price(row), c, item_budget)
    reasons += _diet_violations(pid, row, c)
    return reasons


# ---------------------------------------------------------------------------------------
# Over a catalogue: the mask
# ---------------------------------------------------------------------------------------


_WORD_COLUMN_AFTER = 500  # row-by-row checks of one exclusion word before its column is built


_TOKEN = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class _WordTable:
    """One text column's distinct values (lower-cased) and which of them hold each token,
    so that an exclusion word is matched against the few values that can hold it: a
    diet expands to ~130 words, and scanning 21k titles for each took seconds."""

    codes: np.ndarray
    lowered: list[str]
    tokens: list[str]  # sorted
    postings: list[np.ndarray]  # per token: the values holding it

    @classmethod
    def of(cls, column: np.ndarray) -> _WordTable:
        codes, uniques = pd.factorize(pd.Series(column, dtype=object))
        lowered = [str(u).lower() for u in uniques]
        holders: dict[str, list[int]] = {}
        for i, text in enumerate(lowered):
            for tok in set(_TOKEN.findall(text)):
                holders.setdefault(tok, []).append(i)
        tokens = sorted(holders)
        return cls(codes=np.asarray(codes), lowered=lowered, tokens=tokens,
                   postings=[np.asarray(holders[t], dtype=np.int64) for t in tokens])

    def candidates(self, term: str) -> Iterable[int]:
        """A superset of the values the whole-word pattern of ``term`` can match: its
        match starts a token (``_term_re`` forbids a letter or digit before it), so that
        token begins with the term's leading run of letters and digits."""
        lead = _TOKEN.match(term.strip().lower())
        if lead is None:  # starts with another character: no token to screen by
            return range(len(self.lowered))
        prefix = lead.group()
        lo = bisect.bisect_left(self.tokens, prefix)
        hi = bisect.bisect_left(self.tokens, prefix + "\x7f")
        if lo == hi:
            return ()
        return np.unique(np.concatenate(self.postings[lo:hi])).tolist()


class CatalogueFilter:
    """The hard constraints over one catalogue frame. Per-rule and per-word columns are
    computed on first use (over the unique titles/paths, not the 92k rows) and cached; a
    build saves the diet, group and food columns (:meth:`save_columns`) so that a served
    index starts with them, and a request pays a few array operations."""

    def __init__(self, products: pd.DataFrame):
        p = products
        n = len(p)
        self._ids = p["product_id"].astype(str).to_numpy(dtype=object) if "product_id" in p else \
            p.index.astype(str).to_numpy(dtype=object)
        self._row = {pid: i for i, pid in enumerate(self._ids)}
        self._cols = {name: self._text_col(p, name, n) for name in
                      ("title", "category", "department", "product_type", "brand")}
        stock = p["in_stock"] if "in_stock" in p else pd.Series(True, index=p.index)
        # a missing stock flag is not evidence of "sold out" (as in _in_stock)
        self._stock = stock.astype(object).where(stock.notna(), True).astype(bool).to_numpy()
        self._dept_lower = np.array([d.lower() for d in self._cols["department"]], dtype=object)
        price = p["price"] if "price" in p else pd.Series(np.nan, index=p.index)
        self._price = pd.to_numeric(price, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        self._facts_codes, self._facts = self._unique_facts()
        self._cache: dict[tuple[str, str], np.ndarray] = {}
        self._word_calls: dict[str, int] = {}
        self._word_tables: dict[str, _WordTable] = {}

    @staticmethod
    def _text_col(p: pd.DataFrame, name: str, n: int) -> np.ndarray:
        if name not in p:
            return np.full(n, "", dtype=object)
        col = p[name]
        is_str = col.map(type).eq(str).to_numpy()  # the scalar path reads non-strings as ""
        out = np.full(n, "", dtype=object)
        out[is_str] = col[is_str].str.strip().to_numpy(dtype=object)
        return out

    def _unique_facts(self) -> tuple[np.ndarray, list[Facts]]:
        c = self._cols
        sep = "\x1f"  # never in a catalogue field
        keys = (pd.Series(c["title"], dtype=object) + sep + c["category"] + sep + c["department"] + sep
                + c["product_type"])
        codes, uniques = pd.factorize(keys)
        return codes, [facts(*k.split(sep)) for k in uniques]

    def _per_facts(self, key: tuple[str, str], decide: Callable[[Facts], bool]) -> np.ndarray:
        """A cached boolean column: ``decide(facts)`` over the unique facts, spread to rows."""
        col = self._cache.get(key)
        if col is None:
            verdicts = np.array([bool(decide(f)) for f in self._facts], dtype=bool)
            col = verdicts[self._facts_codes] if len(self._facts_codes) else np.zeros(0, dtype=bool)
            self._cache[key] = col
        return col

    def rule_hits(self, diet: str) -> np.ndarray:
        """Rows the diet ``diet`` excludes (none for an unknown key)."""
        rule = load_rules().rule(diet)
        if rule is None:
            return np.zeros(len(self._ids), dtype=bool)
        return self._per_facts(("diet", diet), lambda f: rule.reason(f) is not None)

    def food_ok(self, food: bool) -> np.ndarray:
        return self._per_facts(("food", str(food)), lambda f: _food_verdict(food_class(f)[0], food))

    def word_hits(self, term: str) -> np.ndarray:
        """Rows an exclusion word excludes: a whole-word hit in title, category or brand,
        or the rule of a group it names ("dairy", "nuts")."""
        key = ("word", term)
        col = self._cache.get(key)
        if col is not None:
            return col
        col = np.zeros(len(self._ids), dtype=bool)
        pattern = _term_re(term.strip().lower())
        for name in ("title", "category", "brand"):
            words = self._word_table(name)
            hit = np.zeros(len(words.lowered), dtype=bool)
            for i in words.candidates(term):
                hit[i] = bool(pattern.search(words.lowered[i])) and mentions(words.lowered[i], [term]) is not None
            if len(words.codes):
                col |= hit[words.codes]
        for group in load_rules().alias_groups(term):
            col = col | self._per_facts(("group", group.name), group.excludes)
        self._cache[key] = col
        return col

    def _word_table(self, name: str) -> _WordTable:
        table = self._word_tables.get(name)
        if table is None:
            table = self._word_tables[name] = _WordTable.of(self._cols[name])
        return table

    def warm(self) -> None:
        """Compute every diet, exclusion-group and food column now, not on a shopper's
        first request: on the full catalogue the vegan column alone takes ~4 s."""
        for diet in known_diets():
            self.rule_hits(diet)
        for name, group in load_rules().groups.items():
            self._per_facts(("group", name), group.excludes)
            for alias in group.aliases:  # "no dairy", "no nuts": the common exclusion words
                self.word_hits(alias)
        self.food_ok(True)
        self.food_ok(False)

    def _signature(self) -> str:
        """What the saved columns depend on: the rules file and the catalogue's rows."""
        rules = json.dumps(_raw_rules(), sort_keys=True).encode()
        rows = pd.util.hash_pandas_object(pd.Series(self._ids), index=False).to_numpy().tobytes()
        return hashlib.sha256(rules + rows).hexdigest()[:16]

    def save_columns(self, path: Path) -> None:
        """:meth:`warm`, then keep the columns with the build (``index`` time)."""
        self.warm()
        named = {f"{kind}\x1f{name}": col for (kind, name), col in self._cache.items()}
        named["signature"] = np.array(self._signature())
        np.savez_compressed(path, **named)  # type: ignore[arg-type]  # numpy's stub mistypes **kwds

    def load_columns(self, path: Path) -> bool:
        """Take the columns a build saved, unless the rules or the rows changed since."""
        if not path.exists():
            return False
        with np.load(path, allow_pickle=False) as saved:
            if str(saved["signature"]) != self._signature():
                return False
            for key in saved.files:
                if key != "signature":
                    kind, name = key.split("\x1f", 1)
                    col = saved[key]
                    if len(col) == len(self._ids):
                        self._cache[(kind, name)] = col.astype(bool)
        return True

    def mask(self, c: Constraints, *, item_budget: bool = True) -> np.ndarray:
        """True for the rows that break no hard constraint."""
        m = np.ones(len(self._ids), dtype=bool)
        if c.in_stock_only:
            m &= self._stock
        if c.excluded_products:
            m &= ~np.isin(self._ids, np.array([str(x) for x in c.excluded_products], dtype=object))
        allowed = _departments(c)
        if allowed:
            m &= np.isin(self._dept_lower, np.array(sorted(allowed), dtype=object))
        price = self._price
        with np.errstate(invalid="ignore"):
            if c.max_unit_price is not None:
                m &= price <= c.max_unit_price
            if c.min_unit_price is not None:
                m &= price >= c.min_unit_price
            if item_budget and c.budget is not None:
                m &= price < c.budget
        for term in _exclusion_terms(c):
            m &= ~self.word_hits(term)
        for diet in dict.fromkeys(c.diets):
            m &= ~self.rule_hits(diet)
        if c.food is not None:
            m &= self.food_ok(c.food)
        return m

    def row(self, product_id: str) -> dict[str, object] | None:
        i = self._row.get(product_id)
        if i is None:
            return None
        out: dict[str, object] = {name: col[i] for name, col in self._cols.items()}
        price = self._price[i]
        out.update(product_id=product_id, in_stock=bool(self._stock[i]), price=None if price != price else float(price))
        return out

    def allowed(self, product_id: str, c: Constraints) -> bool:
        """One product's verdict, as :func:`mask` would give it (an unknown id: False)."""
        i = self._row.get(product_id)
        if i is None:
            return False
        if c.in_stock_only and not self._stock[i]:
            return False
        if c.excluded_products and product_id in c.excluded_products:
            return False
        allowed = _departments(c)
        if allowed and self._dept_lower[i] not in allowed:
            return False
        price = self._price[i]
        if c.max_unit_price is not None and not price <= c.max_unit_price:
            return False
        if c.min_unit_price is not None and not price >= c.min_unit_price:
            return False
        if c.budget is not None and not price < c.budget:
            return False
        if any(self.rule_hits(d)[i] for d in c.diets):
            return False
        if c.food is not None and not self.food_ok(c.food)[i]:
            return False
        terms = _exclusion_terms(c)
        if terms and self._word_excluded(i, terms):
            return False
        return True

    def _word_excluded(self, i: int, terms: list[str]) -> bool:
        """Same verdict as the word columns of :meth:`mask`. A new word is matched row by
        row (a few mentions() calls beat a catalogue-wide column for one request); once a
        word has been asked about often, its column is built and used."""
        for term in terms:
            col = self._cache.get(("word", term))
            if col is None:
                seen = self._word_calls[term] = self._word_calls.get(term, 0) + 1
                if seen > _WORD_COLUMN_AFTER or load_rules().alias_groups(term):
                    col = self.word_hits(term)
            if col is not None:
                if col[i]:
                    return True
            elif any(mentions(self._cols[n][i], (term,)) for n in ("title", "category", "brand") if self._cols[n][i]):
                return True
        return False

    def violations(self, product_id: str, c: Constraints, *, item_budget: bool = True) -> list[str]:
        row = self.row(product_id)
        return violations(row, c, item_budget=item_budget) if row is not None else [f"unknown_product: {product_id}"]


_FILTERS: dict[int, tuple[weakref.ref, CatalogueFilter]] = {}


def for_catalogue(products: pd.DataFrame) -> CatalogueFilter:
    """The :class:`CatalogueFilter` of this frame, built once per frame object."""
    key = id(products)
    hit = _FILTERS.get(key)
    if hit is not None and hit[0]() is products:
        return hit[1]
    flt = CatalogueFilter(products)

    def forget(_: weakref.ref) -> None:  # the frame is gone: so is its filter
        _FILTERS.pop(key, None)

    _FILTERS[key] = (weakref.ref(products, forget), flt)
    return flt


def mask(products: pd.DataFrame, constraints: Constraints, *, item_budget: bool = True) -> np.ndarray:
    """True for the rows of ``products`` that break no hard constraint (row order)."""
    return for_catalogue(products).mask(constraints, item_budget=item_budget)
