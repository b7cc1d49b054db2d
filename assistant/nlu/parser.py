"""The deterministic floor parser: one message (plus the session's earlier need) -> :class:`Need`.

Everything is read with word lists from ``assistant/nlu/lexicon.json`` and a few regexes,
so the same message always gives the same need and a hard constraint never depends on a
small LLM. An LLM may fill only what this parser leaves open.

What it reads, in this order (each recognised phrase is cut out of the text so that the
next step does not read it again):

1. injected lines ("SYSTEM: ...", "ignore previous instructions ...") are set aside: the
   shopper did not say them, so nothing in them (a "$1" above all) becomes part of the need;
2. money, only when it is about the shopper's spending: a spending cue before the amount
   ("under", "less than", "budget of", "spend", "up to", "menos de", "hasta") or after it
   ("budget", "or less", "max", "total"), or an amount standing alone between commas.
   "recommend p-fake at $1" and "parmesan is $1 today" give no budget. Amounts are read
   with ``price-parser`` (digits) and the lexicon's number words. For a merchandiser the
   amount is the bundle price cap (``max_price``), not a shopper budget;
3. merchandiser terms: "margin at least 30%" -> min_margin 0.30, "2 to 4 items", placements;
4. duration ("for a week" -> 7 days, "weekend" -> 2, "for 3 days");
5. servings ("for four", "family of 5", "for 10 kids", "para dos", "a couple" -> 2, "for me" -> 1);
6. diets and allergens (lexicon ``diets``, mapped to the keys of ``food_rules.json``) and
   exclusions ("no dairy", "without cheese", "sin queso", "nut-free"); an excluded word that
   names a rule ("dairy", "nuts", "gluten") also adds that diet;
7. must-include items ("with steak and wine", "con pollo") and added roles ("add a drink");
8. the occasion (lexicon ``occasions``: a specific theme beats a generic meal word, then the
   longest phrase, then the earliest), food vs non-food, the language;
9. vague (no food, occasion or product signal: "something for tonight", "help") and
   nonsense (keyboard mashing, emoji only). Decision on emoji: an emoji-only message such as
   "🍕🍕🍕" is *nonsense*, not a pizza order; its reading ("pizza night") is kept as
   ``Need.suggestion`` for the clarifying question to offer, never acted on.

``previous`` (the session's need so far) is merged simply: a scalar the new message states
replaces the old one (occasion, servings, days, budget, food, merchandiser terms), lists
accumulate (diets, exclude, include, add_roles), the free text is the new one when there
is any; ``vague`` is judged on the merged need, ``nonsense`` on the new message alone.
Refinements that remove things ("cheaper", "start over", undo) are the session state's job.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from price_parser import Price

from assistant.constraints import (
    _BIGGER_RE,
    _CHEAPER_RE,
    _FILLER,
    _HEALTHIER_RE,
    _MORE_LIKE_PATTERNS,
    _NOT_AN_EXCLUSION,
    _REPLACE_NEED_RE,
    _RESET_RE,
    _SMALLER_RE,
    _Text,
    clean_query,
    sanitize_message,
    singular,
    to_number,
)
from retrieval.filters import rule_for_word

from .need import Audience, Need

LEXICON_FILE = Path(__file__).resolve().parent / "lexicon.json"
MAX_BUDGET = 1_000_000.0
MAX_SERVINGS = 1000


# ---------------------------------------------------------------------------------------
# The lexicon
# ---------------------------------------------------------------------------------------


def fold(text: str) -> str:
    """Lower case without accents ("Dólares" -> "dolares"), so Spanish typed with or
    without accents reads the same."""
    decomposed = unicodedata.normalize("NFKD", text.lower())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def _alternation(phrases: Iterable[str]) -> str:
    ordered = sorted({fold(p) for p in phrases if p.strip()}, key=len, reverse=True)
    return "|".join(r"\s+".join(re.escape(w) for w in p.split()) for p in ordered)


def _phrase_re(phrases: Iterable[str]) -> re.Pattern[str]:
    return re.compile(rf"(?<![\w'])(?:{_alternation(phrases)})(?![\w'])")


@dataclass(frozen=True)
class Occasion:
    key: str
    food: bool | None
    generic: bool
    servings: int | None
    phrases: tuple[str, ...]


@dataclass(frozen=True)
class Lexicon:
    version: str
    occasions: dict[str, Occasion]
    occasion_of: dict[str, str]  # folded phrase -> occasion key
    occasion_re: re.Pattern[str]
    diets: dict[str, str]  # folded phrase -> diet key
    diet_re: re.Pattern[str]
    spanish: dict[str, str]
    spanish_markers: frozenset[str]
    english_markers: frozenset[str]
    numbers: dict[str, int]
    num: str  # regex source for one head-count/duration number
    people: str  # regex source for people words
    solo_re: re.Pattern[str]
    durations: dict[str, int]
    duration_re: re.Pattern[str]
    placements: dict[str, str]
    placement_re: re.Pattern[str]
    food_re: re.Pattern[str]
    nonfood_re: re.Pattern[str]
    not_items: frozenset[str]
    vague_words: frozenset[str]
    emoji: dict[str, str]
    keyboard_runs: tuple[str, ...]


@lru_cache(maxsize=1)
def lexicon() -> Lexicon:
    raw = json.loads(LEXICON_FILE.read_text(encoding="utf-8"))
    occasions = {
        key: Occasion(key, spec.get("food"), bool(spec.get("generic")), spec.get("servings"),
                      tuple(fold(p) for p in spec["phrases"]))
        for key, spec in raw["occasions"].items()
    }
    occasion_of = {p: o.key for o in occasions.values() for p in o.phrases}
    numbers = {fold(k): int(v) for k, v in raw["numbers"].items()}
    tens = (r"(?:twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety)"
            r"[- ](?:one|two|three|four|five|six|seven|eight|nine)")
    num = rf"(?:\d{{1,4}}|{tens}|{_alternation(numbers)})"
    diets = {fold(k): v for k, v in raw["diets"].items()}
    durations = {fold(k): int(v) for k, v in raw["durations"].items()}
    placements = {fold(k): v for k, v in raw["placements"].items()}
    return Lexicon(
        version=str(raw["version"]),
        occasions=occasions,
        occasion_of=occasion_of,
        occasion_re=_phrase_re(occasion_of),
        diets=diets,
        diet_re=_phrase_re(diets),
        spanish={fold(k): v for k, v in raw["spanish_words"].items()},
        spanish_markers=frozenset(fold(w) for w in raw["spanish_markers"]),
        english_markers=frozenset(raw["english_markers"]),
        numbers=numbers,
        num=num,
        people=_alternation(raw["people_words"]),
        solo_re=_phrase_re(raw["solo_phrases"]),
        durations=durations,
        duration_re=_phrase_re(durations),
        placements=placements,
        placement_re=_phrase_re(placements),
        food_re=_phrase_re(raw["food_words"]),
        nonfood_re=_phrase_re(raw["nonfood_words"]),
        not_items=frozenset(fold(w) for w in raw["people_not_items"]),
        vague_words=frozenset(fold(w) for w in raw["vague_words"]),
        emoji=dict(raw["emoji"]),
        keyboard_runs=tuple(raw["keyboard_runs"]),
    )


def lexicon_version() -> str:
    return lexicon().version


def number(token: str) -> int | None:
    """'4', 'four', 'cuatro', 'a couple', 'twenty-five' -> the integer."""
    t = " ".join(fold(token).split())
    if t.isdigit():
        return int(t)
    if t in lexicon().numbers:
        return lexicon().numbers[t]
    value = to_number(t)
    return int(value) if value is not None and value == int(value) else None


# ---------------------------------------------------------------------------------------
# The message being consumed
# ---------------------------------------------------------------------------------------


# Lines the shopper did not write: prompt-injection markers. Their text is set aside.
_INJECTION_RE = re.compile(
    r"(?:^|\s)(?:system|assistant|developer|admin)\s*:|\bignore\s+(?:all|any|the|previous|prior|above|earlier|your)\b"
    r"|\bdisregard\b|\[/?inst\]|<\|[a-z_]+\|>|#{3,}|\byou\s+are\s+now\b|\bnew\s+instructions?\b"
    r"|\boverride\b|\bjailbreak\b|\bprompt\b|\binstructions?\s*:|\bfrom\s+now\s+on\b",
    re.IGNORECASE,
)
_SENTENCE_END_RE = re.compile(r"(?<=[.!?;])\s+|[\r\n]+")


def _split_injected(raw: str) -> tuple[str, bool]:
    """The message without its injected lines and sentences (split on the raw text: the
    sanitiser joins lines), sanitised, and whether any were set aside."""
    kept, injected = [], False
    for sentence in _SENTENCE_END_RE.split(raw if isinstance(raw, str) else ""):
        if _INJECTION_RE.search(sentence):
            injected = True
        elif sentence.strip():
            kept.append(sentence)
    return sanitize_message(" ".join(kept)), injected


# ---------------------------------------------------------------------------------------
# Money
# ---------------------------------------------------------------------------------------

_AMOUNT = (
    r"(?:(?:us)?\$\s*\d[\d,]*(?:\.\d{1,2})?|\d[\d,]*(?:\.\d{1,2})?\s*(?:\$|dollars?|bucks?|usd|dolares|pesos)"
    r"|(?:twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety|one hundred|a hundred|hundred|ten|fifteen|"
    r"veinte|treinta|cuarenta|cincuenta|cien|diez|quince)(?:[- ](?:one|two|three|four|five|six|seven|eight|nine))?"
    r"\s*(?:dollars?|bucks?|dolares))"
)
_CUE_BEFORE = (
    r"(?:under|below|less\s+than|cheaper\s+than|lower\s+than|max(?:imum)?|at\s+most|(?:no|not)\s+more\s+than|"
    r"up\s+to|within|tops|budget(?:\s+(?:is|of|at|around|about|under|max|to))?\s*[:=]?|spend(?:ing)?(?:\s+(?:about|around|"
    r"up\s+to|under|at\s+most|only))?|afford(?:\s+about)?|for\s+(?:about|around|roughly|under|less\s+than)|"
    r"(?:por\s+)?menos\s+de|maximo(?:\s+de)?|hasta|presupuesto(?:\s+de)?|gastar(?:\s+(?:unos|hasta))?|"
    r"no\s+mas\s+de|bajo)"
)
_CUE_AFTER = (r"(?:budget|or\s+(?:less|under|below|so)|max(?:imum)?|at\s+most|tops|limit|total|de\s+presupuesto|maximo"
              r"|como\s+maximo)")
_SPEND_BEFORE_RE = re.compile(rf"\b{_CUE_BEFORE}\s*(?P<a>{_AMOUNT})")
_SPEND_AFTER_RE = re.compile(rf"(?P<a>{_AMOUNT})\s*(?:-\s*)?{_CUE_AFTER}\b")
_FOR_AMOUNT_RE = re.compile(rf"(?<![\w$])(?:for|para|por)\s+(?P<a>{_AMOUNT})(?!\s*(?:each|apiece|per|a\s+piece|off))")
_STANDALONE_RE = re.compile(rf"(?:^|[,;(])\s*(?P<a>{_AMOUNT})\s*(?=$|[,;).!?])")
# An amount right after these is a product's price, not the shopper's spending.
_PRICE_STATEMENT_RE = re.compile(
    r"(?:\bat|\bis|\bare|\bwas|\bcosts?|\bpriced|\bsells?\s+for|\bsale\s+for|\bonly|\bjust|\beach|\bcuesta|\bcuestan|"
    r"\besta\s+a|\ba)\s*$"
)
_MONEY_WORD = {"ten": 10, "fifteen": 15, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60,
               "seventy": 70, "eighty": 80, "ninety": 90, "hundred": 100, "a hundred": 100, "one hundred": 100,
               "veinte": 20, "treinta": 30, "cuarenta": 40, "cincuenta": 50, "cien": 100, "diez": 10, "quince": 15}
_UNITS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9}


def amount(text: str) -> float | None:
    """'$25', '25 dollars', '$1,200.50', 'twenty bucks', '20 dólares' -> the number."""
    t = fold(text).strip()
    if re.search(r"\d", t):
        value = Price.fromstring(t.replace("usd", "").replace("dolares", "").replace("pesos", "")).amount
        return float(value) if value is not None else None
    words = re.sub(r"\s*(?:dollars?|bucks?|dolares)$", "", t).strip()
    head, _, unit = words.replace("-", " ").rpartition(" ") if " " in words.replace("-", " ") else (words, "", "")
    if unit and unit in _UNITS and head in _MONEY_WORD:
        return float(_MONEY_WORD[head] + _UNITS[unit])
    return float(_MONEY_WORD[words]) if words in _MONEY_WORD else None


def _take_money(t: _Text) -> list[float]:
    """Amounts about the shopper's spending (see the module docstring), cut from the text."""
    values: list[float] = []
    for pattern in (_SPEND_BEFORE_RE, _SPEND_AFTER_RE, _FOR_AMOUNT_RE, _STANDALONE_RE):
        found: list[re.Match[str]] = []
        for m in pattern.finditer(t.s):
            if pattern is not _SPEND_BEFORE_RE and _PRICE_STATEMENT_RE.search(t.s[: m.start("a")]):
                continue
            value = amount(m.group("a"))
            if value is not None and 0 < value <= MAX_BUDGET:
                found.append(m)
                values.append(value)
        t.cut(found)  # cut: a weaker pattern never reads the same amount again
    return values


# ---------------------------------------------------------------------------------------
# Merchandiser terms
# ---------------------------------------------------------------------------------------

_MARGIN_RE = re.compile(
    r"\bmargins?\s*(?:of|at\s+least|>=|≥|above|over|min(?:imum)?|no\s+less\s+than|of\s+at\s+least|floor(?:\s+of)?)?"
    r"\s*(?P<v>\d+(?:\.\d+)?)\s*(?P<pct>%|percent)?"
    r"|(?P<v2>\d+(?:\.\d+)?)\s*(?:%|percent)\s*(?:\+\s*)?(?:gross\s+)?margins?\b"
)
_ITEMS = r"(?:items?|products?|things|articulos|productos)"
_N_ITEMS = rf"(?P<n>\d{{1,2}})\s*{_ITEMS}\b"
_RANGE_ITEMS_RE = re.compile(
    rf"\b(?:between\s+)?(?P<lo>\d{{1,2}})\s*(?:-|–|to|and|or|a)\s*(?P<hi>\d{{1,2}})\s*{_ITEMS}\b")
_MAX_ITEMS_RE = re.compile(rf"\b(?:up\s+to|at\s+most|max(?:imum)?(?:\s+of)?|no\s+more\s+than)\s*{_N_ITEMS}")
_MIN_ITEMS_RE = re.compile(rf"\b(?:at\s+least|min(?:imum)?(?:\s+of)?|no\s+fewer\s+than)\s*{_N_ITEMS}")
_EXACT_ITEMS_RE = re.compile(rf"\b(?P<n>\d{{1,2}})\s*-?\s*{_ITEMS}\b")


def _take_margin(t: _Text) -> float | None:
    for m in t.take(_MARGIN_RE):
        raw = float(m.group("v") or m.group("v2"))
        value = raw / 100 if (m.group("pct") or m.group("v2") or raw > 1) else raw
        if 0 <= value < 1:
            return round(value, 4)
    return None


def _take_items(t: _Text) -> tuple[int | None, int | None]:
    for m in t.take(_RANGE_ITEMS_RE):
        low, high = sorted((int(m.group("lo")), int(m.group("hi"))))
        return low, high
    lo: int | None = None
    hi: int | None = None
    for m in t.take(_MAX_ITEMS_RE):
        hi = int(m.group("n"))
    for m in t.take(_MIN_ITEMS_RE):
        lo = int(m.group("n"))
    if lo is None and hi is None:
        for m in t.take(_EXACT_ITEMS_RE):
            lo = hi = int(m.group("n"))
    return lo, hi


def _take_placement(t: _Text) -> str | None:
    found = t.take(lexicon().placement_re)
    return lexicon().placements[" ".join(found[0].group(0).split())] if found else None


# ---------------------------------------------------------------------------------------
# Duration and head count
# ---------------------------------------------------------------------------------------


def _take_days(t: _Text) -> int | None:
    lex = lexicon()
    m = re.search(rf"\b(?:for\s+|para\s+|over\s+)?(?:the\s+next\s+)?(?P<n>{lex.num})\s+"
                  rf"(?P<u>days?|nights?|dias?|noches?|weeks?|semanas?)\b", t.s)
    if m:
        n = number(m.group("n"))
        if n is not None and 0 < n <= 90:
            t.cut([m])
            return n * (7 if m.group("u").startswith(("week", "semana")) else 1)
    found = t.take(lex.duration_re)
    if found:
        return lex.durations[" ".join(found[0].group(0).split())]
    return None


def _take_servings(t: _Text) -> int | None:
    lex = lexicon()
    num, people = lex.num, lex.people
    patterns = [
        (re.compile(rf"\b(?:a\s+)?(?:family|group|party|household|crowd|team|familia|grupo)\s+(?:of|de)\s+(?P<n>{num})\b"),
         True),
        (re.compile(rf"\b(?P<v>for|feeds?|feeding|serves?|serving|to\s+serve|to\s+feed|para)\s+(?:the\s+|a\s+)?"
                    rf"(?P<n>{num})(?P<u>\s+(?:{people}))?(?![\w$])(?!\s*(?:\$|dollars?|bucks?|dolares))"), False),
        (re.compile(rf"\b(?P<n>{num})\s+(?:{people})\b"), True),
    ]
    for pattern, has_unit in patterns:
        for m in pattern.finditer(t.s):
            n = number(m.group("n"))
            if n is None or not 1 <= n <= MAX_SERVINGS:
                continue
            if not has_unit and not m.group("u") and n > 20 and m.group("n").isdigit():
                continue  # "for 25" with no unit is more likely money than 25 guests
            t.cut([m])
            return n
    if t.take(lex.solo_re):
        return 1
    return None


# ---------------------------------------------------------------------------------------
# Diets, exclusions, inclusions
# ---------------------------------------------------------------------------------------

_ITEM = (r"[a-z][a-z'&-]*(?:\s+(?!and\b|or\b|nor\b|ni\b|y\b|o\b|for\b|para\b|under\b|with\b|con\b|sin\b|no\b"
         r"|please\b)[a-z][a-z'&-]*)?")
_EXCLUSION_RE = re.compile(
    rf"\b(?:but\s+)?(?:no|without|w/o|minus|excluding|exclude|avoid(?:ing)?|hold\s+the|skip(?:\s+the)?|nothing\s+with|"
    rf"none\s+of|free\s+of|allergic\s+to|intolerant\s+to|can'?t\s+(?:eat|have)|(?:do\s+not|don'?t)\s+(?:want|like|eat)|"
    rf"sin|nada\s+de|no\s+quiero)\s+(?:any\s+|the\s+|more\s+|some\s+|el\s+|la\s+|los\s+|las\s+)?"
    rf"(?P<items>{_ITEM}(?:\s*(?:,\s*)?(?:or|and|nor|ni|o|y)\s+{_ITEM})*)"
)
_FREE_RE = re.compile(r"\b(?P<item>[a-z][a-z]+)[- ]free\b")
_FREE_LIST_RE = re.compile(r"\b(?P<items>[a-z]+(?:\s*(?:,|&|\band\b|\bor\b)\s*[a-z]+)+)[- ]free\b")
_REFINEMENT_RES = (_CHEAPER_RE, _HEALTHIER_RE, _BIGGER_RE, _SMALLER_RE, _RESET_RE, _REPLACE_NEED_RE,
                   *_MORE_LIKE_PATTERNS)


def _free_lists(text: str) -> str:
    """"dairy and gluten free" -> "dairy-free , gluten-free": each item gets its own "-free"."""
    def spread(m: re.Match[str]) -> str:
        items = [i for i in re.split(r"\s*(?:,|&|\band\b|\bor\b)\s*", m.group("items")) if i]
        if not all(rule_for_word(i) or f"{i} free" in lexicon().diets for i in items):
            return m.group(0)  # "movie night, nut-free": only the last item is an allergen
        return " , ".join(f"{i}-free" for i in items)
    return _FREE_LIST_RE.sub(spread, text)
_ALLERGY_RE = re.compile(r"\b(?P<item>[a-z][a-z ]*?)\s+allerg(?:y|ies|ic)\b")
_INCLUDE_RE = re.compile(
    rf"\b(?:with|including|plus|con|incluye(?:ndo)?|and\s+some)\s+(?:a\s+|an\s+|some\s+|un\s+|una\s+|el\s+|la\s+)?"
    rf"(?P<items>{_ITEM}(?:\s*(?:,\s*)?(?:and|or|y|o|,)\s+(?:a\s+|an\s+|some\s+)?{_ITEM})*)"
)
_ADD_RE = re.compile(r"\b(?:add|agrega(?:r)?|anade|anadir|throw\s+in|include)\s+"
                     r"(?:a\s+|an\s+|some\s+|un\s+|una\s+|unos\s+|"
                     r"the\s+)?(?P<item>[a-z][a-z'-]*(?:\s+[a-z][a-z'-]*)?)")
_SPLIT_ITEMS_RE = re.compile(r"\s*(?:,\s*)?(?:\bor\b|\band\b|\bnor\b|\bni\b|\bo\b|\by\b|,)\s*")
_STOP_AFTER_ITEM = re.compile(r"\s+(?:please|thanks|today|tonight|too|also|instead|only)$")


def _english(word: str) -> str:
    """A Spanish food word in English ("queso" -> "cheese"); anything else as it is."""
    w = " ".join(word.split())
    return lexicon().spanish.get(w, w)


# A second word that names the need, not the item: "no dairy tacos" excludes dairy.
_NEED_WORDS = frozenset("dinner dinners lunch lunches breakfast snacks snack party night meal meals food recipe "
                        "recipes ideas options stuff things bundle bundles please cena comida".split())


def _items(raw: str) -> list[str]:
    items = []
    for part in _SPLIT_ITEMS_RE.split(raw):
        part = _STOP_AFTER_ITEM.sub("", part.strip())
        part = re.sub(r"^(?:a|an|some|any|the|more|un|una|el|la|los|las)\s+", "", part)
        if not part or part in _NOT_AN_EXCLUSION or part.split()[0] in _NOT_AN_EXCLUSION:
            continue
        words = part.split()
        if len(words) == 2 and (words[1] in _NEED_WORDS or words[1] in lexicon().occasion_of):
            part = words[0]
        items.append(_english(part))
    return items


def _take_diets(t: _Text) -> list[str]:
    return [lexicon().diets[" ".join(m.group(0).split())] for m in t.take(lexicon().diet_re)]


def _take_exclusions(t: _Text) -> list[str]:
    words: list[str] = []
    for m in list(_EXCLUSION_RE.finditer(t.s)):
        items = [i for i in _items(m.group("items")) if i not in lexicon().not_items]
        if items:
            words.extend(items)
            t.cut([m])
    for pattern in (_FREE_RE, _ALLERGY_RE):
        for m in list(pattern.finditer(t.s)):
            item = _english(m.group("item").strip().split()[-1])
            if item and item not in _NOT_AN_EXCLUSION:
                words.append(item)
                t.cut([m])
    return _dedupe(singular(w) if " " not in w and w not in ("nuts", "sweets") else w for w in words)


def _take_includes(t: _Text) -> list[str]:
    found: list[str] = []
    for m in list(_INCLUDE_RE.finditer(t.s)):
        items = [i for i in _items(m.group("items")) if i.split()[0] not in lexicon().not_items
                 and i not in _FILLER and not re.fullmatch(lexicon().num, i)]
        if items:
            found.extend(items)
            t.cut([m])
    return _dedupe(found)


def _take_added_roles(t: _Text) -> list[str]:
    found = []
    for m in list(_ADD_RE.finditer(t.s)):
        item = _STOP_AFTER_ITEM.sub("", m.group("item").strip())
        if item and item.split()[0] not in _FILLER and item not in lexicon().not_items:
            found.append(singular(_english(item)) if " " not in item else _english(item))
            t.cut([m])
    return _dedupe(found)


def _dedupe(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(i for i in items if i))


# ---------------------------------------------------------------------------------------
# Occasion, food, language, vague and nonsense
# ---------------------------------------------------------------------------------------


def _occasion(text: str) -> Occasion | None:
    lex = lexicon()
    hits = [(lex.occasions[lex.occasion_of[" ".join(m.group(0).split())]], m) for m in lex.occasion_re.finditer(text)]
    if not hits:
        return None
    best = min(hits, key=lambda h: (h[0].generic, -len(h[1].group(0)), h[1].start()))
    return best[0]


def _language(folded: str) -> str | None:
    words = re.findall(r"[a-z']+", folded)
    es = sum(w in lexicon().spanish_markers for w in words)
    en = sum(w in lexicon().english_markers for w in words)
    if es == en == 0:
        return None
    return "es" if es > en else "en"


def _gibberish(token: str) -> bool:
    """Keyboard mashing: a run of 4+ keys in a row, no vowel at all, or 3 same letters."""
    t = token.lower()
    if len(t) < 3:
        return False
    if any(t[i:i + 4] in run for run in lexicon().keyboard_runs for i in range(len(t) - 3)):
        return True
    if not re.search(r"[aeiouy]", t):
        return True
    return bool(re.search(r"(.)\1\1", t)) or bool(re.search(r"[bcdfghjklmnpqrstvwxz]{5,}", t))


def _known(token: str) -> bool:
    lex = lexicon()
    return (token in _FILLER or token in lex.vague_words or token in lex.spanish or token in lex.numbers
            or token in lex.spanish_markers or token in lex.english_markers)


def _emoji_hint(text: str) -> str | None:
    return next((occ for ch in text if (occ := lexicon().emoji.get(ch)) is not None), None)


def _nonsense(folded: str) -> bool:
    tokens = re.findall(r"[a-z]+", folded)
    if not tokens:
        return bool(folded.strip())  # emoji or punctuation only
    if any(_known(t) for t in tokens):
        return False
    return sum(_gibberish(t) for t in tokens) * 2 >= len(tokens)


def _free_text(t: _Text) -> str:
    words = [_english(w) for w in clean_query(t.s).split()]
    return " ".join(w for w in words if w not in lexicon().spanish_markers or w in lexicon().spanish)


def _has_product_words(text: str) -> bool:
    lex = lexicon()
    words = [w for w in re.findall(r"[a-z][a-z'-]*", text) if w not in _FILLER and w not in lex.vague_words
             and w not in lex.spanish_markers and not _gibberish(w)]
    return bool(words)


# ---------------------------------------------------------------------------------------
# The parser
# ---------------------------------------------------------------------------------------


def _parse_message(text: str, audience: Audience) -> tuple[Need, dict[str, bool]]:
    """One message on its own, plus which scalar fields it stated."""
    lex = lexicon()
    clean = sanitize_message(text)
    shopper_text, _injected = _split_injected(text)
    folded = _free_lists(fold(shopper_text))
    t = _Text(folded)
    for pattern in _REFINEMENT_RES:  # conversational moves are the session's job, not need text
        t.take(pattern)
    need = Need(audience=audience)

    money = _take_money(t)
    if money:
        if audience == "merchandiser":
            need.max_price = round(min(money), 2)
        else:
            need.budget = round(min(money), 2)  # two budgets: the tighter one wins
    if audience == "merchandiser":
        need.min_margin = _take_margin(t)
        need.placement = _take_placement(t)
    need.min_items, need.max_items = _take_items(t)
    need.days = _take_days(t)
    need.servings = _take_servings(t)

    diets = _take_diets(t)
    need.exclude = _take_exclusions(t)
    need.diets = _dedupe([*diets, *filter(None, map(rule_for_word, need.exclude))])
    need.add_roles = _take_added_roles(t)
    need.include = _take_includes(t)

    occasion = _occasion(folded)
    need.occasion = occasion.key if occasion else None
    if need.servings is None and occasion is not None and occasion.servings:
        need.servings = occasion.servings
    need.food = _food_flag(folded, occasion, need)
    need.language = _language(folded) or "en"
    need.text = _free_text(t)

    need.nonsense = _nonsense(folded) and not (money or need.diets or need.exclude or need.occasion)
    if need.nonsense or not folded.strip():
        need.suggestion = _emoji_hint(clean)
    stated = {
        "occasion": occasion is not None, "food": need.food is not None, "servings": need.servings is not None,
        "days": need.days is not None, "budget": need.budget is not None, "max_price": need.max_price is not None,
        "min_margin": need.min_margin is not None, "placement": need.placement is not None,
        "min_items": need.min_items is not None, "max_items": need.max_items is not None,
        "language": _language(folded) is not None,
        "signal": bool(occasion or need.include or need.add_roles or need.diets or need.exclude
                       or lex.food_re.search(folded) or lex.nonfood_re.search(folded)
                       or _has_product_words(need.text)),
    }
    return need, stated


def _food_flag(folded: str, occasion: Occasion | None, need: Need) -> bool | None:
    """False for a non-food need, True for a food need, None when it says neither or asks
    for both ("a birthday party with candles and plates")."""
    lex = lexicon()
    food_words = bool(lex.food_re.search(folded)) or bool(need.diets)
    nonfood_words = bool(lex.nonfood_re.search(folded))
    if nonfood_words and (food_words or (occasion is not None and occasion.food)):
        return None
    if nonfood_words:
        return False
    if occasion is not None and occasion.food is not None:
        return occasion.food
    return True if food_words or need.include else None


def _merge(previous: Need, new: Need, stated: dict[str, bool]) -> Need:
    merged = previous.model_copy(deep=True)
    for name in ("occasion", "food", "servings", "days", "budget", "max_price", "min_margin", "placement",
                 "min_items", "max_items", "language"):
        if stated.get(name):
            setattr(merged, name, getattr(new, name))
    if stated.get("occasion") and not stated.get("food"):
        merged.food = new.food
    for name in ("diets", "include", "exclude", "add_roles"):
        setattr(merged, name, _dedupe([*getattr(previous, name), *getattr(new, name)]))
    # a follow-up without a new topic ("for 6 instead") keeps the earlier free text
    merged.text = new.text if (stated.get("occasion") or _has_product_words(new.text)) else previous.text
    merged.audience = new.audience
    merged.nonsense = new.nonsense
    merged.suggestion = new.suggestion
    return merged


def parse_need(text: str, previous: Need | None = None, audience: Audience = "shopper") -> Need:
    """"tacos for four, under $25, no dairy" -> occasion tacos, servings 4, budget 25,
    exclude ["dairy"], diets ["dairy-free"], food True. See the module docstring."""
    new, stated = _parse_message(text, audience)
    need = _merge(previous, new, stated) if previous is not None else new
    signal = stated["signal"] or (previous is not None and not previous.vague)
    need.vague = need.nonsense or not signal
    return need


# ---------------------------------------------------------------------------------------
# Chips
# ---------------------------------------------------------------------------------------


def _money_chip(x: float) -> str:
    return f"${x:.0f}" if x == int(x) else f"${x:.2f}"


def _days_chip(days: int) -> str:
    return {1: "today", 2: "weekend", 7: "for a week", 14: "for two weeks", 30: "for a month"}.get(days, f"{days} days")


def chips(need: Need) -> list[str]:
    """The understood pieces of a need as short chips: "tacos", "for 4", "under $25",
    "no dairy", "vegan". A diet that an exclusion chip already says ("no dairy" ->
    dairy-free) gets no chip of its own."""
    out: list[str] = []
    if need.occasion:
        out.append(need.occasion)
    if need.servings:
        out.append(f"for {need.servings}")
    if need.days:
        out.append(_days_chip(need.days))
    if need.budget is not None:
        out.append(f"under {_money_chip(need.budget)}")
    said_by_exclusion = {rule_for_word(w) for w in need.exclude}
    out += [d for d in need.diets if d not in said_by_exclusion]
    out += [f"no {w}" for w in need.exclude]
    out += [f"with {w}" for w in need.include]
    out += [f"add {w}" for w in need.add_roles]
    if need.food is False:
        out.append("non-food")
    if need.min_margin is not None:
        out.append(f"margin ≥ {need.min_margin:.0%}")
    if need.max_price is not None:
        out.append(f"bundle under {_money_chip(need.max_price)}")
    if need.min_items is not None or need.max_items is not None:
        lo, hi = need.min_items, need.max_items
        out.append(f"{lo}–{hi} items" if lo is not None and hi is not None and lo != hi
                   else f"{lo or hi} items" if lo == hi else f"≤ {hi} items" if hi is not None else f"≥ {lo} items")
    if need.placement:
        out.append(need.placement)
    return _dedupe(out)
