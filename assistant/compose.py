"""Composition: a :class:`~assistant.nlu.need.Need` becomes roles, and roles become bundles.

A *role* is one slot of a bundle (the protein of taco night); its *options* are the kinds
of product that may fill it (ground beef, chicken breast, refried beans). A bundle fills
each role with ONE product, at a quantity sized to the need.

1. **Plan.** The occasion lexicon (``assistant/nlu/occasion_roles.json``, general shopping
   knowledge kept as data) gives the roles of common occasions. A need it does not know
   is planned from the catalogue itself: the request is matched by meaning against the
   catalogue's product-type names ("product type / commodity", embedded once with the
   index's MiniLM), and the best types are expanded with their type-level co-purchase
   neighbours (NPMI over baskets). Diets drop the options they rule out
   (``diet_tags``); a food need never gets a non-food type.
2. **Products.** Within an option, products are ranked for this shopper: retrieval's
   relevance for the request (the ranking core's score when it has one), popularity,
   closeness to the shopper's preference (or the request) embedding, and whether the
   household usually buys it. Every product passes the retriever's hard filter.
3. **Quantities.** ``portions = servings × days`` (meal occasions); a role serves
   ``per_person`` of its unit, read against the package size ("1 LB", "12 CT", "1/2 GAL");
   where the size cannot be read, a package serves ``pack_serves``. With nothing said
   about people or days, one package of each.
4. **Budget.** A stated budget is a cap and a guide: over it, the costliest roles move
   to cheaper products of the same option; under ``BUDGET_TARGET`` of it, optional roles
   are added while they fit.
5. **Alternatives.** Option combinations are tried in order of typicality (earlier
   options are the usual ones); a bundle is kept only when its product types overlap
   every kept bundle's by Jaccard ≤ ``MAX_TYPE_JACCARD``, and a headline option already
   shown is penalised, so the answer is beef, chicken and bean tacos rather than three
   pack sizes of shells.
6. **Names** come from the roles ("Beef taco night for 4"), never from model text.

Everything is deterministic: ties break by product id, option order and combination
index. Prices are the catalogue's; the reranker prices ``unit price × quantity``.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from retrieval.titles import cut_at_words

from .nlu.need import Need

log = logging.getLogger(__name__)

LEXICON_PATH = Path(__file__).parent / "nlu" / "occasion_roles.json"

# A bundle kept must share at most this share of product types with every other kept one
# (issue 11: real alternatives, never pack-size or brand lookalikes).
MAX_TYPE_JACCARD = 0.5
# Optional roles are added while the bundle stays under this share of a stated budget:
# a meal "for four, under $25" should use a fair part of the $25, not $4.48 of it.
BUDGET_TARGET = 0.9
MAX_QUANTITY = 12  # packages of one product; more is a wholesale order, not a bundle
MAX_ITEMS = 8
FILL_ITEMS = 5  # with no budget, optional roles fill a bundle up to this many products
PRODUCTS_PER_OPTION = 40  # most popular allowed products considered per option
OPTIONS_PER_ROLE = 4  # options per role tried in combinations (the usual ones first)
MAX_COMBOS = 2000
MAX_BUILDS = 400  # combinations tried per request before settling for fewer bundles
# Product ranking within an option. Priors, not tuned on any test case: popularity
# dominates (what shoppers actually buy for that slot), then the shopper's own taste.
W_POPULARITY, W_PREFERENCE, W_RELEVANCE, W_FAVOURITE = 0.5, 0.3, 0.2, 0.3
# A household's price level (the percentile it usually pays, from its history) pulls each
# option towards products at that level: a store-brand shopper sees store brands. Same
# scale as W_PREFERENCE, a prior like the others; guests have no level.
W_PRICE_LEVEL = 0.3
HEADLINE_REPEAT_PENALTY = 1.0
# Semantic planning for needs the lexicon does not know.
SEMANTIC_MIN_SIM = 0.35
SEMANTIC_NONFOOD_SIM = 0.55
SEMANTIC_SEED_TYPES = 3
SEMANTIC_COMPLEMENTS = 6
NAME_MAX = 48

# Departments and commodity words that are not food (Complete Journey files candy under
# DRUG GM, so a department alone cannot tell). The hard food rule itself belongs to
# retrieval.filters; this only keeps semantic planning from seeding a food need with a
# non-food type.
_NONFOOD_DEPARTMENTS = frozenset({
    "COSMETICS", "FLORAL", "GARDEN CENTER", "MISCELLANEOUS", "COUPON", "TRAVEL & LEISURE", "FUEL",
    "PHOTO & VIDEO", "CNTRL/STORE SUP", "TOYS", "POSTAL CENTER", "CHARITABLE CONT", "PROD-WHS SALES",
    "AUTOMOTIVE", "ELECT &PLUMBING", "GM MERCH EXP", "HOUSEWARES",
})
_NONFOOD_WORDS = re.compile(
    r"\b(?:PETS?|DOG FOODS?|CAT FOOD|CAT LITTER|LITTER|LAUNDRY|DETERG\w*|BLEACH|CLEAN\w*|PAPER|TOWELS?|TISS\w*|"
    r"TRSH|TRASH|WRAPS?|FOIL\w*|CANDLES?|CARDS?|PARTY SPLY|STATIONERY|SCHOOL|TOBACCO|CIGAR\w*|VITAMINS?|"
    r"MEDIC\w*|HAIR|SHAMPOOS?|SOAPS?|DIAPERS?|HBC|DEODOR\w*|ORAL|SHAV\w*|FEMININE|FIRST AID|TOYS?|DECOR|"
    r"LIGHTS?|BATTER(?:Y|IES)|CHARCOAL|COOKWARE|BAKEWARE|PLASTIC|STORAGE|AIR FRESH\w*|INSECT\w*|HOSIERY|SOCKS|"
    r"APPAREL|COSMETICS?|FRAGRANCES?|SKIN|EYE|EAR|FOOT|ANALGESICS?|COLD AND FLU|ANTACIDS?|LAXATIVES?|MAGAZINES?|"
    r"BOOKS?|GREETING|GIFT\w*|FILTERS?|MOPS|BROOMS?|HARDWARE|RAWHIDE|HOUSEWARES)\b",
)
_FOOD_IN_DRUG_GM = re.compile(r"CANDY|BABY FOOD|INFANT FORMULA|GUM|SNACK")


def is_food_category(category: str) -> bool:
    """Whether a category path ("DEPT > COMMODITY > TYPE") is food."""
    parts = [p.strip() for p in str(category).upper().split(">")]
    dept = parts[0] if parts else ""
    rest = " > ".join(parts[1:])
    if dept in _NONFOOD_DEPARTMENTS:
        return False
    if dept == "DRUG GM":
        return bool(_FOOD_IN_DRUG_GM.search(rest))
    return not _NONFOOD_WORDS.search(rest)


# --------------------------------------------------------------------------- lexicon


class RoleSpec(BaseModel):
    """One kind of product that can fill a role (an option)."""

    key: str
    match: list[str]
    tags: list[str] = Field(default_factory=list)
    per_person: float | None = None
    unit: str = "oz"
    pack_serves: float = 4.0
    headline: str = ""
    with_: list[str] = Field(default_factory=list, alias="with")
    names: list[str] = Field(default_factory=list)  # other words for it: "puppy" (dog food)

    model_config = {"populate_by_name": True}

    @property
    def label(self) -> str:
        return self.headline or self.key.capitalize()

    @property
    def called(self) -> tuple[str, ...]:
        """Every phrase a request names this kind by: its key, then its other names."""
        return (self.key, *self.names)


class RoleSlot(BaseModel):
    options: list[str]
    headline: bool = False
    optional: bool = False
    ask: bool = False  # only when the shopper asked for it (wine with pasta)
    # the bundle is this kind (ice cream of a sundae bar): none is built without it
    essential: bool = False


class Occasion(BaseModel):
    key: str
    aliases: list[str]
    food: bool | None = True
    meal: bool = True
    default_servings: int | None = None  # sizing when the shopper gave no head count (an office)
    name: str = "{h} bundle"
    roles: list[RoleSlot]


class Lexicon(BaseModel):
    version: int
    diet_tags: dict[str, list[str]]
    roles: dict[str, RoleSpec]
    occasions: list[Occasion]
    # "healthier": option -> its healthier kinds, for a role whose every option it drops
    healthier_swaps: dict[str, list[str]] = Field(default_factory=dict)
    # a shopper's generic word ("drink", "dessert") -> the options of the role it adds
    groups: dict[str, list[str]] = Field(default_factory=dict)

    @functools.cached_property
    def kinds_longest_first(self) -> tuple[str, ...]:
        """The role keys, longest first (ties by key): "hot dog buns" is read before "hot dogs"."""
        return tuple(sorted(self.roles, key=lambda k: (-len(k), k)))


@functools.lru_cache(maxsize=4)
def load_lexicon(path: Path = LEXICON_PATH) -> Lexicon:
    raw = json.loads(Path(path).read_text())
    raw["roles"] = {k: {"key": k, **v} for k, v in raw["roles"].items()}
    lexicon = Lexicon.model_validate(raw)
    missing = sorted({o for occ in lexicon.occasions for slot in occ.roles for o in slot.options
                      if o not in lexicon.roles}
                     | {w for r in lexicon.roles.values() for w in r.with_ if w not in lexicon.roles}
                     | {o for opts in [*lexicon.healthier_swaps.values(), *lexicon.groups.values()] for o in opts
                        if o not in lexicon.roles})
    if missing:
        raise ValueError(f"{path}: roles used but not defined: {', '.join(missing)}")
    return lexicon


def _alias_re(alias: str) -> re.Pattern[str]:
    return re.compile(r"(?<![a-z])" + re.escape(alias.lower()) + r"(?![a-z])")


def detect_occasion(text: str, lexicon: Lexicon | None = None) -> Occasion | None:
    """The first occasion (file order: specific before generic) one of whose aliases the
    text names as whole words."""
    lexicon = lexicon or load_lexicon()
    low = text.lower()
    for occ in lexicon.occasions:
        if any(_alias_re(a).search(low) for a in occ.aliases):
            return occ
    return None


def occasion_by_key(key: str | None, lexicon: Lexicon | None = None) -> Occasion | None:
    if not key:
        return None
    lexicon = lexicon or load_lexicon()
    key = key.lower().strip()
    for occ in lexicon.occasions:
        if occ.key == key or key in (a.lower() for a in occ.aliases):
            return occ
    return None


def forbidden_tags(diets: Iterable[str], lexicon: Lexicon | None = None) -> set[str]:
    lexicon = lexicon or load_lexicon()
    return {t for d in diets for t in lexicon.diet_tags.get(d, [])}


# ------------------------------------------------------------------------------ plan


class Role(BaseModel):
    """A role of one plan: its options (keys of the lexicon or of catalogue types)."""

    name: str
    options: list[RoleSpec]
    headline: bool = False
    optional: bool = False
    essential: list[str] = Field(default_factory=list)  # its kinds, when no bundle is built without one


class RolePlan(BaseModel):
    source: str  # "occasion" | "semantic"
    occasion: str | None = None
    name_template: str = "{h} bundle"
    food: bool | None = None
    meal: bool = True
    default_servings: int | None = None
    roles: list[Role] = Field(default_factory=list)
    # the plan without the narrowing to the kinds the request named ("spaghetti and
    # meatballs" -> any pasta night): alternatives to fill up with when the named kinds
    # alone cannot make enough distinct bundles
    relaxed: RolePlan | None = None

    def summary(self) -> list[dict[str, Any]]:
        return [{"role": r.name, "options": [o.key for o in r.options], "optional": r.optional}
                for r in self.roles]


@dataclass
class TypeCatalogue:
    """The catalogue seen by type: category path -> its products (most popular first),
    built once per index. Only in-stock, priced products count."""

    products: pd.DataFrame  # the index's product table
    # type vectors: the MiniLM embedding of each "product type / commodity" name when
    # ``embed`` is given, else the mean embedding of the type's most popular products
    # (their texts are that name plus brand and size; no model call, so a process's first
    # unknown need does not wait ~15-50 s for 3.9k names to embed on 2 cores)
    embed: Callable[[list[str]], np.ndarray] | None = None
    vectors_of: Callable[[list[str]], Mapping[str, np.ndarray]] | None = None
    _by_category: dict[str, list[str]] = field(default_factory=dict, init=False)
    _facts: dict[str, tuple[float, float, str, str, str]] = field(default_factory=dict, init=False)
    _match_cache: dict[tuple[str, ...], list[str]] = field(default_factory=dict, init=False)
    _names: list[str] = field(default_factory=list, init=False)
    _name_vectors: np.ndarray | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        p = self.products
        usable = p[p["in_stock"].astype(bool) & p["price"].notna() & (p["price"].astype(float) > 0)]
        ranked = usable.sort_values(["popularity", "product_id"], ascending=[False, True], kind="mergesort")
        for cat, ids in ranked.groupby("category", sort=True)["product_id"]:
            self._by_category[str(cat)] = [str(i) for i in ids]
        self._facts = {
            str(pid): (float(price), float(pop), str(size or ""), str(ptype or ""), str(cat or ""))
            for pid, price, pop, size, ptype, cat in zip(
                ranked["product_id"], ranked["price"], ranked["popularity"], ranked["size"],
                ranked["product_type"], ranked["category"])
        }
        self._names = sorted(self._by_category)

    @property
    def categories(self) -> list[str]:
        return self._names

    def fact(self, pid: str) -> tuple[float, float, str, str, str]:
        """(price, popularity, size, product type, category)."""
        return self._facts[pid]

    def has(self, pid: str) -> bool:
        return pid in self._facts

    def matching(self, patterns: Sequence[str]) -> list[str]:
        """Products whose category path contains any pattern, most popular first."""
        key = tuple(patterns)
        if key not in self._match_cache:
            pats = [p.upper() for p in patterns if p.strip()]
            cats = [c for c in self._names if any(p in c.upper() for p in pats)]
            ids = [pid for c in cats for pid in self._by_category[c]]
            ids.sort(key=lambda i: (-self._facts[i][1], i))
            self._match_cache[key] = ids
        return self._match_cache[key]

    def name_vectors(self) -> np.ndarray | None:
        """One unit vector per category (see ``embed`` / ``vectors_of``), computed once."""
        if self._name_vectors is None and self._names:
            if self.embed is not None:
                self._name_vectors = np.asarray(self.embed([type_name(c) for c in self._names]), dtype=np.float32)
            elif self.vectors_of is not None:
                self._name_vectors = self._mean_vectors(self.vectors_of)
        return self._name_vectors

    def _mean_vectors(self, vectors_of: Callable[[list[str]], Mapping[str, np.ndarray]]) -> np.ndarray:
        tops = {c: self._by_category[c][:20] for c in self._names}
        found = vectors_of([pid for ids in tops.values() for pid in ids])
        out = np.zeros((len(self._names), len(next(iter(found.values()))) if found else 1), dtype=np.float32)
        for row, cat in enumerate(self._names):
            vecs = [found[p] for p in tops[cat] if p in found]
            if vecs:
                mean = np.mean(np.asarray(vecs, dtype=np.float32), axis=0)
                norm = float(np.linalg.norm(mean))
                out[row] = mean / norm if norm > 0 else mean
        return out

    def nearest(self, vec: np.ndarray, k: int, food: bool | None) -> list[tuple[str, float]]:
        vectors = self.name_vectors()
        if vectors is None:
            return []
        sims = vectors @ np.asarray(vec, dtype=np.float32)
        order = np.lexsort((np.arange(len(sims)), -np.round(sims, 6)))
        out = []
        for i in order:
            cat = self._names[int(i)]
            if food is not None and is_food_category(cat) != food:
                continue
            out.append((cat, float(sims[i])))
            if len(out) >= k:
                break
        return out

    def category_of_type(self, product_type: str) -> str | None:
        """The most popular category holding ``product_type``."""
        best, best_pop = None, -1.0
        for cat in self._names:
            if cat.rsplit(">", 1)[-1].strip() == product_type:
                pop = sum(self._facts[i][1] for i in self._by_category[cat][:20])
                if pop > best_pop:
                    best, best_pop = cat, pop
        return best


def type_name(category: str) -> str:
    """"GROCERY > COLD CEREAL > KIDS CEREAL" -> "kids cereal / cold cereal"."""
    parts = [p.strip() for p in category.split(">")]
    kind = parts[-1] if parts else category
    commodity = parts[1] if len(parts) > 2 else ""
    return f"{kind} / {commodity}".lower() if commodity and commodity != kind else kind.lower()


def readable_type(category: str) -> str:
    """A product type as words, never cut mid-word: Complete Journey truncates type names
    at 30 characters ("MEXICAN SOFT TORTILLAS AND WRA"), so a name that long loses its
    last, probably cut, word."""
    kind = category.rsplit(">", 1)[-1].strip()
    words = re.split(r"[\s/:&()-]+", kind)
    words = [w for w in words if w]
    if len(kind) >= 28 and len(words) > 1:
        words = words[:-1]
    return " ".join(words).lower()


def plan_for(need: Need, types: TypeCatalogue, *, query_vec: np.ndarray | None = None,
             complement_types: Callable[[str, int], list[tuple[str, float]]] | None = None,
             lexicon: Lexicon | None = None) -> RolePlan | None:
    """The roles of ``need``: from its occasion when the lexicon knows it, else from the
    catalogue's types. None when nothing fits (the caller falls back to plain retrieval)."""
    lexicon = lexicon or load_lexicon()
    occasion = occasion_by_key(need.occasion, lexicon) or detect_occasion(need.text or "", lexicon)
    banned = forbidden_tags(need.diets, lexicon)
    if need.healthier:
        banned |= forbidden_tags([HEALTHIER_KEY], lexicon)
    if occasion is not None:
        plan = _occasion_plan(occasion, need, banned, lexicon)
        if plan.roles:
            relaxed = _occasion_plan(occasion, need, banned, lexicon, relaxed=True)
            named = _named_outside(occasion, need, lexicon)
            asked = need.model_copy(update={"add_roles": [*need.add_roles, *named]}) if named else need
            shaped = _with_asked_roles(plan, asked, banned, lexicon, types)
            if relaxed.roles and relaxed.summary() != plan.summary():
                shaped.relaxed = _with_asked_roles(relaxed, asked, banned, lexicon, types)
            return shaped
    if query_vec is None:
        return None
    semantic = _semantic_plan(need, types, query_vec, complement_types, banned)
    return _with_asked_roles(semantic, need, banned, lexicon, types) if semantic is not None else None


# "healthier" is a refinement, not a diet: its tags live in diet_tags under this key
HEALTHIER_KEY = "healthier"
# Words of an option's name that do not tell kinds apart: "ground" beef / coffee, "dog food"
# / "cat food". The rest name the kind ("chicken" breast, "burger" patties).
_MODIFIERS = frozenset("""
ground hard soft fresh frozen canned dry sliced shredded grated whole plain mix food sauce lunchmeat bottled
single serve side roast
""".split())


def _named_outside(occasion: Occasion, need: Need, lexicon: Lexicon) -> list[str]:
    """Kinds of the lexicon the request names that the occasion never offers ("ice cream"
    of "game day snacks and ice cream"): they join the plan as asked roles.
    A kind named inside a longer one ("hot dogs" of "hot dog buns") and the occasion's own
    words are not a kind of their own."""
    text = (need.text or "").lower()
    offered = {o for slot in occasion.roles for o in slot.options}
    offered |= {w for o in offered for w in lexicon.roles[o].with_}  # hot dogs come with their buns
    aliases = " ".join(a.lower() for a in occasion.aliases)
    spans: list[tuple[int, int, str]] = []
    for key in lexicon.kinds_longest_first:
        found = [m for w in lexicon.roles[key].called if (m := _word_re(w).search(text))]
        m = min(found, key=lambda m: m.start()) if found else None
        if m is None or any(lo <= m.start() and m.end() <= hi for lo, hi, _ in spans):
            continue
        spans.append((m.start(), m.end(), key))
    return [key for _, _, key in sorted(spans)
            if key not in offered and key not in need.add_roles and key not in need.include
            and not _word_re(key).search(aliases)]


def _request_text(need: Need) -> str:
    return " ".join([need.text, *need.include, *need.add_roles]).lower()


@functools.lru_cache(maxsize=4096)
def _word_re(phrase: str) -> re.Pattern[str]:
    """A phrase as whole words, singular or plural ("hot dog" / "hot dogs", "patty" / "patties")."""
    words = phrase.lower().split()
    last = words[-1]
    stem = last[:-3] + "(?:y|ies)" if last.endswith("ies") else (
        last[:-1] + "(?:y|ies)" if last.endswith("y") else re.escape(last.removesuffix("es").removesuffix("s"))
        + "(?:s|es)?")
    body = r"[\s-]+".join([*(re.escape(w) for w in words[:-1]), stem])
    return re.compile(rf"(?<![a-z]){body}(?![a-z])")


def _names_option(spec: RoleSpec, text: str, loose: bool) -> bool:
    """Whether the request names this option: its whole name ("sour cream"), or, for the
    headline role (the main dish, where "chicken tacos" picks the chicken), any word of it
    that tells kinds apart."""
    if any(_word_re(w).search(text) for w in spec.called):
        return True
    return loose and any(len(w) > 2 and _word_re(w).search(text)
                         for w in re.split(r"[\s/-]+", spec.key.lower()) if w not in _MODIFIERS)


def _allowed_option(spec: RoleSpec, banned: set[str], lexicon: Lexicon) -> bool:
    return not banned & set(spec.tags) and not (
        set(spec.with_) and any(banned & set(lexicon.roles[w].tags) for w in spec.with_))


def _healthier_swaps(options: Sequence[RoleSpec], banned: set[str], lexicon: Lexicon) -> list[RoleSpec]:
    """The healthier kinds of a role whose every option "healthier" dropped (soda -> water)."""
    keys = dict.fromkeys(w for o in options for w in lexicon.healthier_swaps.get(o.key, []))
    return [lexicon.roles[k] for k in keys if _allowed_option(lexicon.roles[k], banned, lexicon)]


def _asked_specs(term: str, lexicon: Lexicon, types: TypeCatalogue | None, food: bool | None) -> list[RoleSpec]:
    """The options of a role the shopper asked to add ("drink", "coffee", "wine", "ribs"): a
    group of the lexicon, else its roles named by the word, else catalogue types named so."""
    word = term.lower().strip()
    singular = word[:-1] if word.endswith("s") and not word.endswith("ss") else word
    for key in (word, singular):
        if key in lexicon.groups:
            return [lexicon.roles[k] for k in lexicon.groups[key]]
        if key in lexicon.roles:
            return [lexicon.roles[key]]
    pattern = _word_re(singular)
    named = [spec for key, spec in lexicon.roles.items() if pattern.search(key)]
    if named or types is None:
        return named
    cats = [c for c in types.categories if pattern.search(c.rsplit(">", 1)[-1].lower())
            and (food is None or is_food_category(c) == food)]
    cats.sort(key=lambda c: (-len(types.matching([c])), c))
    return [RoleSpec(key=word, match=cats[:3], headline=word.capitalize())] if cats else []


def _with_asked_roles(plan: RolePlan, need: Need, banned: set[str], lexicon: Lexicon,
                      types: TypeCatalogue | None) -> RolePlan:
    """Roles for what the shopper added ("add a drink") or must have ("with wine"): a role
    of the plan that already offers it keeps only those options and stops being optional;
    anything else joins the plan as a role of its own."""
    terms = list(dict.fromkeys([*need.add_roles, *need.include]))
    if not terms:
        return plan
    roles = [r.model_copy(deep=True) for r in plan.roles]
    for term in terms:
        specs = [s for s in _asked_specs(term, lexicon, types, plan.food) if _allowed_option(s, banned, lexicon)]
        keys = [s.key for s in specs]
        # a named headline kind is split per category ("eggs#0", "eggs#1"): still "eggs"
        target = next((r for r in roles if any(base_key(o.key) in keys for o in r.options)), None)
        if target is not None:
            target.options = [o for o in target.options if base_key(o.key) in keys]
            target.optional = False
        elif specs:
            roles.append(Role(name=f"asked-{term}", options=specs[:OPTIONS_PER_ROLE]))
    return plan.model_copy(update={"roles": roles})


def _asked(spec: RoleSpec, need: Need) -> bool:
    text = " ".join([need.text, *need.include, *need.add_roles]).lower()
    return any(_alias_re(w).search(text) for w in {*spec.called, spec.label.lower()})


def _without_words(text: str, words: Iterable[str]) -> str:
    for w in words:
        text = _word_re(w).sub(" ", text)
    return text


def _qualified_by_occasion(spec: RoleSpec, text: str, occasion: Occasion) -> bool:
    """Whether ``text`` names ``spec`` only by a word of the occasion's own name that
    qualifies the option rather than being its kind ("lunch" of "lunch kit" in a school
    lunch, "cleaning" of "cleaning wipes"); "soup" of "canned soup" is its kind."""
    if _word_re(spec.key).search(text):
        return False
    words = [w for w in re.split(r"[\s/-]+", spec.key.lower()) if len(w) > 2 and w not in _MODIFIERS]
    hits = [w for w in words if _word_re(w).search(text)]
    own = set(occasion.key.lower().split())
    head = spec.key.lower().split()[-1]
    return bool(hits) and all(w in own and w != head for w in hits)


def base_key(key: str) -> str:
    """The lexicon kind of an option key: :func:`_per_category` names its splits "eggs#0"."""
    return key.split("#", 1)[0]


def _per_category(spec: RoleSpec) -> list[RoleSpec]:
    """One option per catalogue category of ``spec`` (fresh and frozen patties, boneless
    and bone-in breasts): the named kind alone still gives alternatives."""
    if len(spec.match) < 2:
        return [spec]
    return [spec.model_copy(update={"key": f"{spec.key}#{i}", "match": [m], "headline": spec.label})
            for i, m in enumerate(spec.match)]


def _occasion_plan(occasion: Occasion, need: Need, banned: set[str], lexicon: Lexicon,
                   relaxed: bool = False) -> RolePlan:
    """The occasion's roles for this need. The kinds the request names fill their roles
    ("steak dinner": the steak); with ``relaxed`` only the occasion's own words narrow
    ("spaghetti" of "spaghetti and meatballs", "dog" of "food for my dog")."""
    roles: list[Role] = []
    text = _request_text(need)
    alias_words = {w for a in occasion.aliases for w in a.lower().split()}
    if relaxed:
        text = " ".join(a for a in occasion.aliases if _word_re(a).search(text))
    specific = _without_words(text, alias_words)
    claimed: set[str] = set()  # an option the request names narrows one role only
    for i, slot in enumerate(occasion.roles):
        every = [lexicon.roles[o] for o in slot.options]
        options = [o for o in every if _allowed_option(o, banned, lexicon)]
        if need.healthier:  # the dropped kinds' healthier swaps join the role's options
            dropped = [o for o in every if o not in options]
            options += [o for o in _healthier_swaps(dropped, banned, lexicon) if o not in options]
        if slot.ask:
            options = [o for o in options if _asked(o, need)]
        # "steak dinner", "spaghetti and meatballs", "wings and beer": the named kinds fill the role
        named = [o for o in options if o.key not in claimed and _names_option(o, text, slot.headline)]
        if len(named) > 1 and not any(_names_option(o, specific, slot.headline) for o in named):
            named = []  # a word of the occasion itself ("baby" essentials) names no kind in particular
        if len(named) == 1 and len(options) > 1 and _qualified_by_occasion(named[0], text, occasion):
            named = []  # "back-to-school lunch" names no lunch kit: turkey and PB&J lunches too
        if named:
            claimed.update(o.key for o in named)
            options = _per_category(named[0]) if slot.headline and len(named) == 1 and not relaxed else named
        if options or slot.essential:  # an essential kind the diet rules out leaves the role empty
            roles.append(Role(name=f"{occasion.key}-{i}", options=options, headline=slot.headline,
                              optional=slot.optional and not slot.ask and not named,
                              essential=[lexicon.roles[o].label for o in slot.options] if slot.essential else []))
    if roles and not any(r.headline for r in roles):
        roles[0].headline = True
    return RolePlan(source="occasion", occasion=occasion.key, name_template=occasion.name, food=occasion.food,
                    meal=occasion.meal, default_servings=occasion.default_servings, roles=roles)


def _semantic_spec(category: str) -> RoleSpec:
    return RoleSpec(key=readable_type(category), match=[category], headline=readable_type(category).capitalize())


def _semantic_plan(need: Need, types: TypeCatalogue, query_vec: np.ndarray,
                   complement_types: Callable[[str, int], list[tuple[str, float]]] | None,
                   banned: set[str]) -> RolePlan | None:
    """Seed types by meaning, then their co-purchase complements: one role per seed kind
    (its near types as alternatives) and up to three complement roles."""
    food = need.food
    if food is None:
        # a grocery shopper's unnamed need is food unless the request clearly names a
        # non-food kind ("something for a cold evening" is not cold medicine)
        top = types.nearest(query_vec, 1, None)
        food = not (top and top[0][1] >= SEMANTIC_NONFOOD_SIM and not is_food_category(top[0][0]))
    seeds, kinds = [], set()
    for c, s in types.nearest(query_vec, 24, food):
        kind = c.rsplit(">", 1)[-1].strip()
        if s >= SEMANTIC_MIN_SIM and kind not in kinds:
            seeds.append((c, s))
            kinds.add(kind)
    if not seeds:
        return None
    seed_cats = [c for c, _ in seeds[:SEMANTIC_SEED_TYPES]]
    roles = [Role(name="seed", options=[_semantic_spec(c) for c in seed_cats], headline=True)]
    taken = set(seed_cats)
    complements: list[str] = []
    if complement_types is not None:
        for cat in seed_cats:
            kind = cat.rsplit(">", 1)[-1].strip()
            for other, _npmi in complement_types(kind, SEMANTIC_COMPLEMENTS):
                target = types.category_of_type(other)
                if target and target not in taken and other not in kinds and is_food_category(target) == food:
                    complements.append(target)
                    taken.add(target)
                    kinds.add(other)
    # seeds beyond the first few are alternatives of a second role (close kinds)
    extra = [c for c, _ in seeds[SEMANTIC_SEED_TYPES:] if c not in taken]
    for i in range(0, min(len(complements), 6), 2):
        roles.append(Role(name=f"complement-{i // 2}", options=[_semantic_spec(c) for c in complements[i:i + 2]]))
    if len(roles) < 3 and extra:
        roles.append(Role(name="related", options=[_semantic_spec(c) for c in extra[:3]]))
    return RolePlan(source="semantic", occasion=None, name_template="{h} bundle", food=food, meal=False, roles=roles)


# ------------------------------------------------------------------------ quantities

_SIZE = re.compile(r"^\s*(?:(\d+)\s*(?:/|X|PK)\s*)?(\d*\.?\d+|\d+\s*/\s*\d+)\s*(FL\s*OZ|OZ|Z|LBS?|CT|PK|DZ|ML|LTR|L|"
                   r"GAL|GA|QT|PT|PC|EA)\b", re.I)
_TO_OZ = {"OZ": 1.0, "FLOZ": 1.0, "Z": 1.0, "LB": 16.0, "LBS": 16.0, "ML": 1 / 29.5735, "L": 33.814,
          "LTR": 33.814, "GAL": 128.0, "GA": 128.0, "QT": 32.0, "PT": 16.0}
_TO_CT = {"CT": 1.0, "PK": 1.0, "PC": 1.0, "EA": 1.0, "DZ": 12.0}


def pack_amount(size: str) -> tuple[float, str] | None:
    """A package size as (amount, "oz" or "ct"): "1 LB" -> (16, oz), "1/2 GAL" -> (64, oz),
    "4/4 OZ" -> (16, oz), "12 CT" -> (12, ct). None when it cannot be read."""
    m = _SIZE.match(str(size or ""))
    if not m:
        return None
    count, number, unit = m.group(1), m.group(2).replace(" ", ""), m.group(3).upper().replace(" ", "")
    if count and "/" not in number and float(count) < float(number) and float(number) <= 8 and unit not in ("OZ", "Z"):
        count, number = None, f"{count}/{number}"  # "1/2 GAL" is half a gallon, "4/4 OZ" four of 4 oz
    if "/" in number:
        a, b = number.split("/")
        value = float(a) / float(b) if float(b) else 0.0
    else:
        value = float(number)
    if count:
        value *= float(count)
    if value <= 0:
        return None
    if unit in _TO_OZ:
        return value * _TO_OZ[unit], "oz"
    return value * _TO_CT[unit], "ct"


def portions(need: Need, meal: bool, default_servings: int | None = None) -> int | None:
    """Servings to buy for: people × days for a meal occasion; None when the need says
    nothing about either (one package of each is then the honest answer) and the
    occasion implies no group size of its own."""
    if need.servings is None and need.days is None and default_servings is None:
        return None
    people = need.servings or default_servings or 1
    days = need.days if (need.days and meal) else 1
    return max(1, people * days)


_MULTIPACK = re.compile(r"(?<![\d.])\d{1,2}(?:\s*[/&]\s*\d{1,2})*\s*PK\b", re.I)


def units_per_pack(product_type: str) -> int:
    """How many units a multipack holds, from its product type ("SOFT DRINKS 12/18&15PK CAN
    CAR" holds at least 12 cans; its size, "12 OZ", is one can's): 1 when it says none."""
    m = _MULTIPACK.search(str(product_type or ""))
    if not m:
        return 1
    return max(1, min(int(n) for n in re.findall(r"\d+", m.group())))


def quantity(spec: RoleSpec, size: str, department: str, n: int | None, product_type: str = "") -> int:
    """Packages of one product for ``n`` portions (see the module docstring)."""
    if n is None:
        return 1
    amount = pack_amount(size)
    units = units_per_pack(product_type)
    if amount and units > 1:
        amount = (amount[0] * units, amount[1])
    # produce sizes in Complete Journey are often the case the store receives ("40 LB"
    # bananas), not what a shopper takes home
    if amount and department == "PRODUCE" and amount[0] > (80 if amount[1] == "oz" else 24):
        amount = None
    if spec.per_person and amount and amount[1] == spec.unit:
        need = n * spec.per_person / amount[0]
    else:
        need = n / max(spec.pack_serves, 0.1)
    return int(min(MAX_QUANTITY, max(1, math.ceil(need - 1e-9))))


# ---------------------------------------------------------------------------- bundles


class ComposedItem(BaseModel):
    product_id: str
    quantity: int
    role: str
    option: str
    unit_price: float

    @property
    def cost(self) -> float:
        return self.unit_price * self.quantity


class ComposedBundle(BaseModel):
    name: str
    items: list[ComposedItem]
    headline: str
    prior: float
    types: list[str]
    fallback: bool = False  # from the relaxed plan: shown after the bundles of the kinds named

    @property
    def total(self) -> float:
        return sum(i.cost for i in self.items)

    @property
    def item_ids(self) -> tuple[str, ...]:
        return tuple(i.product_id for i in self.items)

    @property
    def quantities(self) -> tuple[int, ...]:
        return tuple(i.quantity for i in self.items)


@dataclass
class Composition:
    """One request's plan with every option's products ranked for the shopper."""

    plan: RolePlan
    need: Need
    ranked: dict[str, list[str]]
    keep: list[tuple[Role, list[RoleSpec]]]  # core roles with their available options
    optional: list[tuple[Role, RoleSpec]]  # every available option of each optional role
    portions: int | None
    budget: float | None
    fallback: Composition | None = None  # the relaxed plan's, to fill up with

    def unfilled_essential(self) -> list[str]:
        """The kinds of an essential role (the ice cream of a sundae bar) none of whose
        products passes the constraints: without it the bundle is not what was asked for,
        so none is composed."""
        kept = {r.name for r, _ in self.keep}
        return [k for r in self.plan.roles if r.essential and r.name not in kept for k in r.essential]

    def role_products(self, per_option: int = 3) -> list[str]:
        """The best products of every available option, for an LLM's candidate list."""
        seen: dict[str, None] = {}
        for _role, opts in self.keep:
            for o in opts:
                for pid in self.ranked.get(o.key, [])[:per_option]:
                    seen.setdefault(pid, None)
        return list(seen)


@dataclass
class ShopperContext:
    """What ranks products within an option for this request."""

    allowed: Callable[[str], bool]
    relevance: Mapping[str, float] = field(default_factory=dict)  # retrieval / ranker score
    preference: np.ndarray | None = None  # preference or request embedding
    embeddings: Callable[[list[str]], dict[str, np.ndarray]] | None = None
    favourites: frozenset[str] = frozenset()
    demoted: frozenset[str] = frozenset()  # product ids or product types (session dislikes)
    boosted: frozenset[str] = frozenset()
    price_level: float | None = None  # 0..1: the household's usual price percentile; None for a guest


def jaccard(a: Iterable[str], b: Iterable[str]) -> float:
    sa, sb = set(a), set(b)
    union = sa | sb
    return len(sa & sb) / len(union) if union else 0.0


class Composer:
    """Fills a plan's roles with products for one request."""

    def __init__(self, types: TypeCatalogue, department_of: Callable[[str], str], lexicon: Lexicon | None = None):
        self.types = types
        self.department_of = department_of
        self.lexicon = lexicon or load_lexicon()
        # option key -> the label a bundle name uses for it (told_apart reads it per request)
        self.option_labels = {k: spec.label for k, spec in self.lexicon.roles.items()}

    # -- products of an option ------------------------------------------------------
    def ranked_products(self, spec: RoleSpec, ctx: ShopperContext) -> list[str]:
        ids = []
        for pid in self.types.matching(spec.match):
            if ctx.allowed(pid):
                ids.append(pid)
                if len(ids) >= PRODUCTS_PER_OPTION:
                    break
        if not ids:
            return []
        vectors = ctx.embeddings(ids) if (ctx.embeddings is not None and ctx.preference is not None) else {}
        pref = None
        if ctx.preference is not None:
            norm = float(np.linalg.norm(ctx.preference))
            pref = ctx.preference / norm if norm > 0 else None
        top_pop = max(self.types.fact(i)[1] for i in ids) or 1.0
        level = self._price_ranks(ids) if ctx.price_level is not None else {}

        def score(pid: str) -> float:
            _price, pop, _size, ptype, _cat = self.types.fact(pid)
            s = W_POPULARITY * pop / top_pop + W_RELEVANCE * float(ctx.relevance.get(pid, 0.0))
            if level and ctx.price_level is not None:
                s += W_PRICE_LEVEL * (1.0 - abs(level[pid] - ctx.price_level))
            if pref is not None and pid in vectors:
                v = np.asarray(vectors[pid], dtype=np.float32)
                n = float(np.linalg.norm(v))
                if n > 0:
                    s += W_PREFERENCE * (float(v @ pref) / n + 1.0) / 2.0
            if pid in ctx.favourites or pid in ctx.boosted:
                s += W_FAVOURITE
            if pid in ctx.demoted or ptype in ctx.demoted:
                s -= 2 * W_FAVOURITE
            return round(s, 9)

        return sorted(ids, key=lambda i: (-score(i), i))

    def _price_ranks(self, ids: list[str]) -> dict[str, float]:
        """Each product's price percentile (0 cheapest .. 1 dearest) among ``ids``."""
        if len(ids) < 2:
            return {i: 0.5 for i in ids}
        order = sorted(ids, key=lambda i: (self.types.fact(i)[0], i))
        return {pid: rank / (len(order) - 1) for rank, pid in enumerate(order)}

    # -- one bundle -------------------------------------------------------------------
    def _item(self, pid: str, spec: RoleSpec, role: str, n: int | None) -> ComposedItem:
        price, _pop, size, ptype, _cat = self.types.fact(pid)
        qty = quantity(spec, size, self.department_of(pid), n, ptype)
        return ComposedItem(product_id=pid, quantity=qty, role=role, option=spec.key, unit_price=price)

    def _cheapest(self, ranked: list[str], spec: RoleSpec, role: str, n: int | None,
                  limit: int = 8) -> list[ComposedItem]:
        """The best few products of an option, cheapest line cost first (for a tight budget)."""
        items = [self._item(pid, spec, role, n) for pid in ranked[:limit]]
        return sorted(items, key=lambda it: (round(it.cost, 4), ranked.index(it.product_id)))

    def build(self, choice: Sequence[tuple[Role, RoleSpec]], optional: Sequence[tuple[Role, RoleSpec]],
              ranked: Mapping[str, list[str]], n: int | None, budget: float | None,
              forced: Mapping[str, str] | None = None, variant: int = 0) -> list[ComposedItem] | None:
        """Products and quantities for one combination of options; None when it cannot be
        filled or cannot meet the budget."""
        slots = self._with_companions(choice, ranked)
        items: list[ComposedItem] = []
        used: set[str] = set()
        for role, spec in slots:
            pick = (forced or {}).get(spec.key)
            if pick is None or pick in used:
                pick = next((p for p in ranked.get(spec.key, []) if p not in used), None)
            if pick is None:
                if role.optional:
                    continue
                return None
            used.add(pick)
            items.append(self._item(pick, spec, role.name, n))
        if budget is not None:
            fitted = self._fit_budget(items, slots, ranked, n, budget)
            if fitted is None:
                return None
            items = fitted
        return self._add_optional(items, self._rotate(optional, variant), ranked, n, budget, used)[:MAX_ITEMS]

    @staticmethod
    def _rotate(optional: Sequence[tuple[Role, RoleSpec]], variant: int) -> list[tuple[Role, RoleSpec]]:
        """One option per optional role: the ``variant``-th (the n-th alternative shown takes
        the n-th extra), so that extras do not make every alternative look alike."""
        by_role: dict[str, list[tuple[Role, RoleSpec]]] = {}
        for role, spec in optional:
            by_role.setdefault(role.name, []).append((role, spec))
        return [opts[variant % len(opts)] for opts in by_role.values()]

    def _with_companions(self, choice: Sequence[tuple[Role, RoleSpec]],
                         ranked: Mapping[str, list[str]] | None = None) -> list[tuple[Role, RoleSpec]]:
        """The choice plus the roles its options come with (patties -> buns); a companion
        with no allowed product ("no buns") is left out rather than failing the bundle."""
        out = list(choice)
        keys = {s.key for _, s in out}
        for role, spec in choice:
            for w in spec.with_:
                if ranked is not None and not ranked.get(w):
                    continue
                if w not in keys:
                    keys.add(w)
                    out.append((Role(name=f"{role.name}+{w}", options=[self.lexicon.roles[w]]), self.lexicon.roles[w]))
        return out

    def _fit_budget(self, items: list[ComposedItem], slots: Sequence[tuple[Role, RoleSpec]],
                    ranked: Mapping[str, list[str]], n: int | None, budget: float) -> list[ComposedItem] | None:
        specs = {s.key: s for _, s in slots}
        items = list(items)
        for _ in range(len(items) * 2):
            total = sum(i.cost for i in items)
            if total <= budget:
                return items
            changed = False
            for idx in sorted(range(len(items)), key=lambda i: (-items[i].cost, i)):
                it = items[idx]
                taken = {x.product_id for x in items}
                cheaper = [c for c in self._cheapest(ranked.get(it.option, []), specs[it.option], it.role, n)
                           if c.cost < it.cost - 1e-9 and c.product_id not in taken]
                if cheaper:
                    items[idx] = cheaper[0]
                    changed = True
                    break
            if not changed:
                break
        return items if sum(i.cost for i in items) <= budget else None

    def _add_optional(self, items: list[ComposedItem], optional: Sequence[tuple[Role, RoleSpec]],
                      ranked: Mapping[str, list[str]], n: int | None, budget: float | None,
                      used: set[str]) -> list[ComposedItem]:
        """Optional roles: while they fit under ``BUDGET_TARGET`` of a stated budget, or,
        with no budget, until the bundle has ``FILL_ITEMS`` products."""
        have = {i.option for i in items}
        for role, spec in optional:
            if len(items) >= (MAX_ITEMS if budget is not None else FILL_ITEMS) or spec.key in have:
                continue
            for pid in ranked.get(spec.key, [])[:3]:
                if pid in used:
                    continue
                item = self._item(pid, spec, role.name, n)
                if budget is None or sum(i.cost for i in items) + item.cost <= BUDGET_TARGET * budget:
                    items.append(item)
                    used.add(pid)
                    have.add(spec.key)
                break
        return items

    # -- alternatives -------------------------------------------------------------------
    def prepare(self, plan: RolePlan, need: Need, ctx: ShopperContext, budget: float | None = None) -> Composition:
        """Rank every option's products for this shopper; what :meth:`compose` and
        :meth:`snap` fill the roles from."""
        ranked: dict[str, list[str]] = {}
        for spec in {o.key: o for r in plan.roles for o in r.options}.values():
            ranked[spec.key] = self.ranked_products(spec, ctx)
            for w in spec.with_:
                ranked.setdefault(w, self.ranked_products(self.lexicon.roles[w], ctx))
        core = [r for r in plan.roles if not r.optional]
        keep = [(r, opts) for r in core
                if (opts := [o for o in r.options if ranked.get(o.key)][:OPTIONS_PER_ROLE])]
        optional = [(r, o) for r in plan.roles if r.optional for o in r.options if ranked.get(o.key)]
        fallback = self.prepare(plan.relaxed, need, ctx, budget) if plan.relaxed is not None else None
        return Composition(plan=plan, need=need, ranked=ranked, keep=keep, optional=optional,
                           portions=portions(need, plan.meal, plan.default_servings), budget=budget,
                           fallback=fallback)

    def compose(self, comp: Composition, k: int, max_jaccard: float = MAX_TYPE_JACCARD) -> list[ComposedBundle]:
        """Up to ``k`` mutually distinct bundles, most typical first."""
        plan, need, ranked, keep, optional = comp.plan, comp.need, comp.ranked, comp.keep, comp.optional
        n, budget = comp.portions, comp.budget
        if not keep or comp.unfilled_essential():
            return []
        head_role = next((i for i, (r, _) in enumerate(keep) if r.headline), 0)
        queues: dict[str, list[tuple[float, tuple[int, ...]]]] = {}
        for prior, idx in self._combos([opts for _, opts in keep]):
            queues.setdefault(keep[head_role][1][idx[head_role]].label, []).append((prior, idx))
        picked: list[ComposedBundle] = []
        shown: dict[str, int] = {}
        for _attempt in range(MAX_BUILDS):
            if len(picked) >= k or not any(queues.values()):
                break
            # the most typical combination left, a headline already shown counting less
            head = min((h for h in queues if queues[h]),
                       key=lambda h: (-(queues[h][0][0] - HEADLINE_REPEAT_PENALTY * shown.get(h, 0)), queues[h][0][1]))
            prior, idx = queues[head].pop(0)
            choice = [(r, opts[i]) for (r, opts), i in zip(keep, idx)]
            if len({s.key for _, s in choice}) < len(choice):
                continue
            guess = {self._kind(ranked[s.key][0], s) for _, s in self._with_companions(choice, ranked)
                     if ranked.get(s.key)}
            if any(jaccard(guess, b.types) > max_jaccard for b in picked):
                continue  # cheap check before building: these kinds already overlap too much
            items = self.build(choice, optional, ranked, n, budget, variant=len(picked))
            if items is None or len(items) < 2:
                continue
            kinds = sorted({self._kind(i.product_id, None, i.option) for i in items})
            if any(jaccard(kinds, b.types) > max_jaccard for b in picked):
                continue
            picked.append(ComposedBundle(name=bundle_name(plan, head, need), items=items, headline=head,
                                         prior=prior, types=kinds))
            shown[head] = shown.get(head, 0) + 1
        picked = told_apart(picked, plan, need, self.option_labels)
        if len(picked) < k and comp.fallback is not None:
            # the named kinds gave too few distinct bundles: the usual alternatives follow them
            for b in self.compose(comp.fallback, k, max_jaccard):
                if len(picked) >= k:
                    break
                if all(jaccard(b.types, p.types) <= max_jaccard for p in picked):
                    picked.append(b.model_copy(update={"fallback": True}))
        return picked

    def snap(self, comp: Composition, item_ids: Sequence[str]) -> ComposedBundle | None:
        """A proposed bundle (the LLM's) as a composed one: each proposed product that fills
        a role keeps its place, every other role is filled by the core, quantities are the
        core's. None when no proposed product fills a role."""
        option_of: dict[str, str] = {}
        for key, ids in comp.ranked.items():
            for pid in ids:
                option_of.setdefault(pid, key)
        forced = {option_of[p]: p for p in item_ids if p in option_of}
        if not forced or not comp.keep:
            return None
        choice = []
        for role, opts in comp.keep:
            hit = next((o for o in opts if o.key in forced), opts[0])
            choice.append((role, hit))
        items = self.build(choice, comp.optional, comp.ranked, comp.portions, comp.budget, forced)
        if items is None or len(items) < 2:
            return None
        head_role = next((i for i, (r, _) in enumerate(comp.keep) if r.headline), 0)
        head = choice[head_role][1].label
        kinds = sorted({self._kind(i.product_id, None, i.option) for i in items})
        return ComposedBundle(name=bundle_name(comp.plan, head, comp.need), items=items, headline=head,
                              prior=0.0, types=kinds)

    def _kind(self, pid: str, spec: RoleSpec | None, option: str = "") -> str:
        """A product's type, what distinctness is measured on (its option when it has none)."""
        return self.types.fact(pid)[3] or option or (spec.key if spec else "")

    @staticmethod
    def _combos(options: list[list[RoleSpec]]) -> list[tuple[float, tuple[int, ...]]]:
        """Option index tuples with their typicality prior (earlier options score higher),
        best first; bounded so that a many-role plan stays fast."""
        sizes = [len(o) for o in options]
        out = []
        for idx in itertools.islice(itertools.product(*[range(s) for s in sizes]), MAX_COMBOS):
            prior = sum(1.0 - i / s for i, s in zip(idx, sizes)) / len(sizes)
            out.append((round(prior, 9), idx))
        out.sort(key=lambda t: (-t[0], t[1]))
        return out


# ------------------------------------------------------------------------------ names


def cut_words(text: str, limit: int = NAME_MAX) -> str:
    """``text`` within ``limit`` characters, cut only between words."""
    text = " ".join(text.split())
    return text if len(text) <= limit else cut_at_words(text, limit)


_REPEATED_WORD = re.compile(r"\b(\w+)(?:\s+\1\b)+", re.IGNORECASE)


def bundle_name(plan: RolePlan, headline: str, need: Need) -> str:
    """"Beef taco night for 4": the headline option in the occasion's name template."""
    base = plan.name_template.replace("{h}", headline).strip()
    base = _REPEATED_WORD.sub(r"\1", base)  # "Chili soup" in "{h} soup night": not "soup soup"
    base = base[:1].upper() + base[1:]
    if need.servings:
        base += f" for {need.servings}"
    if need.days and need.days > 1 and plan.meal:
        base += " for a week" if need.days == 7 else f" for {need.days} days"
    return cut_words(base)


def told_apart(bundles: list[ComposedBundle], plan: RolePlan, need: Need,
               labels: Mapping[str, str] | None = None) -> list[ComposedBundle]:
    """Bundles that would share a name ("Tofu dinner for 2" twice) are each named after
    their headline and the first option no other of them has ("Tofu & rice dinner for 2",
    "Tofu & potatoes dinner for 2"); one with no such option keeps its name. ``labels``:
    option key -> its headline label, to leave out the headline's own option."""
    labels = labels or {}
    template_words = set(plan.name_template.casefold().replace("{h}", " ").split())
    by_name: dict[str, list[int]] = {}
    for i, b in enumerate(bundles):
        by_name.setdefault(b.name, []).append(i)
    out = list(bundles)
    for same in by_name.values():
        if len(same) < 2:
            continue
        options = [[o for o in dict.fromkeys(base_key(it.option) for it in bundles[i].items)  # a swap's key
                    if (labels.get(o) or o).casefold() != bundles[i].headline.casefold()
                    and not set(o.casefold().split()) & template_words]  # no "coffee coffee break"
                   for i in same]
        kinds = [_headline_kind_words(bundles[i], plan) for i in same]
        for pos, i in enumerate(same):
            others = {o for j, opts in enumerate(options) if j != pos for o in opts}
            own = next((o for o in options[pos] if o not in others), None)
            if own is not None:
                name = bundle_name(plan, f"{bundles[i].headline} & {own}", need)
            else:  # the same options, other product types of the headline ("Dry cat" and "Canned cat" supplies)
                other_words = {w for j, ws in enumerate(kinds) if j != pos for w in ws}
                word = max((w for w in kinds[pos] if w not in other_words), key=len, default=None)
                name = bundle_name(plan, f"{word.capitalize()} {bundles[i].headline.lower()}", need) if word else ""
            tail = bundles[i].name[len(bundles[i].headline):]
            if name and name.endswith(tail):  # too long to keep "... for 8" whole: the plain name stays
                out[i] = bundles[i].model_copy(update={"name": name})
    return out


def _headline_kind_words(bundle: ComposedBundle, plan: RolePlan) -> list[str]:
    """Whole words of the product type the bundle's headline option matches ("canned" of
    CAT FOOD > CANNED CAT FOOD), for telling apart bundles that differ by type only."""
    head = next((r for r in plan.roles if r.headline), None)
    if head is None:
        return []
    option = next((it.option for it in bundle.items if it.role == head.name), None)
    spec = next((o for o in head.options if o.key == option), None)
    if spec is None or len(spec.match) != 1:
        return []
    return [w for w in re.findall(r"[a-z]+", spec.match[0].rsplit(">", 1)[-1].lower()) if len(w) > 2]


def distinct(bundles: Sequence[Any], types_of: Callable[[Any], Iterable[str]], k: int,
             max_jaccard: float = MAX_TYPE_JACCARD) -> list[Any]:
    """The first ``k`` of ``bundles`` (already in rank order) whose product types overlap
    every earlier kept one's by Jaccard ≤ ``max_jaccard``."""
    kept: list[Any] = []
    kinds: list[set[str]] = []
    for b in bundles:
        mine = set(types_of(b))
        if all(jaccard(mine, other) <= max_jaccard for other in kinds):
            kept.append(b)
            kinds.append(mine)
            if len(kept) >= k:
                break
    return kept


# ------------------------------------------------------------------------- the need

_DAYS = re.compile(r"\b(?:for\s+(?:a|one|the)\s+week|this\s+week|weekly|all\s+week|(\d+|two|three|four|five|six|seven)"
                   r"\s+days?|(a|one|two|2)\s+weeks?|(?:the\s+)?weekend)\b", re.I)
_DAY_WORDS = {"two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "a": 1, "one": 1, "2": 2}
_EXTRA_DIETS = (
    (re.compile(r"\b(?:keto|ketogenic|low[- ]carb|no[- ]carbs?)\b", re.I), "keto"),
    (re.compile(r"\b(?:low[- ]sugar|sugar[- ]free|no[- ]sugar|diabetic)\b", re.I), "low-sugar"),
    (re.compile(r"\b(?:peanut[- ]free|peanut allerg\w*|allergic to peanuts?|no peanuts?)\b", re.I), "peanut-free"),
    (re.compile(r"\b(?:nut[- ]free|nut allerg\w*|tree[- ]nut allerg\w*|allergic to nuts|no nuts)\b", re.I), "nut-free"),
    (re.compile(r"\b(?:gluten[- ]free|celiac|coeliac|no gluten)\b", re.I), "gluten-free"),
    (re.compile(r"\b(?:dairy[- ]free|lactose|no dairy|non[- ]dairy)\b", re.I), "dairy-free"),
    (re.compile(r"\b(?:egg[- ]free|no eggs?|egg allerg\w*)\b", re.I), "egg-free"),
    (re.compile(r"\b(?:halal|no pork|pork[- ]free)\b", re.I), "pork-free"),
    (re.compile(r"\b(?:alcohol[- ]free|no alcohol|non[- ]alcoholic|sober)\b", re.I), "alcohol-free"),
)


def days_in(text: str) -> int | None:
    m = _DAYS.search(text)
    if not m:
        return None
    if m.group(1):
        value = m.group(1).lower()
        return int(value) if value.isdigit() else _DAY_WORDS.get(value)
    if m.group(2):
        return 7 * _DAY_WORDS.get(m.group(2).lower(), 1)
    return 2 if "weekend" in m.group(0).lower() else 7


def _adapt(text: str, previous: Need | None) -> Need:
    """A :class:`Need` from :func:`assistant.constraints.parse_message`, the deterministic
    parser that exists today; :func:`parse_need` uses ``assistant.nlu.parser`` instead
    once that module is there."""
    from .constraints import parse_message

    parsed = parse_message(text)
    diets = list(dict.fromkeys([*parsed.diets, *(d for rx, d in _EXTRA_DIETS if rx.search(text))]))
    occasion = detect_occasion(text)
    need = Need(
        text=parsed.query or text, occasion=occasion.key if occasion else None,
        food=occasion.food if occasion else None, servings=parsed.servings, days=days_in(text),
        budget=parsed.budget, diets=diets, exclude=list(parsed.exclusions),
    )
    if previous is None or occasion is not None:
        return need
    # a follow-up that names no occasion refines the previous need
    merged = previous.model_copy(deep=True)
    for key in ("servings", "days", "budget"):
        if getattr(need, key) is not None:
            setattr(merged, key, getattr(need, key))
    merged.diets = list(dict.fromkeys([*previous.diets, *need.diets]))
    merged.exclude = list(dict.fromkeys([*previous.exclude, *need.exclude]))
    return merged


def parse_need(text: str, previous: Need | None = None) -> Need:
    """The one need parser used by the CLI, the chat and eval: ``assistant.nlu.parser``
    when it exists, else the adapter above. The occasion is always resolvable by the
    lexicon: a parser's occasion the lexicon does not know is re-detected from the text."""
    try:
        from .nlu.parser import parse_need as nlu_parse
    except ImportError:
        return _adapt(text, previous)
    try:
        need = nlu_parse(text, previous=previous)
    except Exception:  # a parser bug must not end the shopper's turn: the floor parser answers
        log.exception("assistant.nlu.parser failed on a message; using the fallback reading")
        return _adapt(text, previous)
    # the roles come from this lexicon: its reading of the occasion (specific before
    # generic: "birthday party" is a kids' party, not "party" snacks) wins when it has one
    occasion = detect_occasion(text)
    if occasion is None and occasion_by_key(need.occasion) is None and need.text:
        occasion = detect_occasion(need.text)
    if occasion is not None:
        need = need.model_copy(update={"occasion": occasion.key,
                                       "food": need.food if need.food is not None else occasion.food})
    if need.days is None:
        found = days_in(text)
        if found:
            need = need.model_copy(update={"days": found})
    return need
