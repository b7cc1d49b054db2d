"""Reading the hard constraints out of a shopper's message, for the need parser.

Everything a shopper states as a rule (a budget, a head count, "no dairy", "vegan") is read
here with regexes and word lists instead of by the LLM, so a hard constraint never depends
on a 135M-parameter model getting it right, and the same message always gives the same
constraints. :func:`parse_message` reads one message into a :class:`ParsedMessage`:
budget, servings, exclusions (expanded through :data:`EXCLUSION_GROUPS`), diets, wishes
and the remaining free-text ``query``. The building blocks (:class:`_Text`,
:func:`clean_query`, :func:`to_number`, the word lists and move regexes) are shared with
:mod:`assistant.nlu.parser`; the conversational moves themselves ("cheaper", "swap the
salsa", ...) are read by :mod:`assistant.nlu.session`, and here their phrases are only cut
out of the query.

All matching is done on the lower-cased, :func:`sanitize_message`-d text.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from pydantic import BaseModel, Field

# The whole-word matcher and its shields live with the hard constraints they serve
# (retrieval.filters; the shields are data in retrieval/data/food_rules.json). Re-exported
# for the callers that import it from here.
from retrieval.filters import mentions  # noqa: F401
from retrieval.schema import Constraints

# ---------------------------------------------------------------------------------------
# Word lists
# ---------------------------------------------------------------------------------------

# What "no <group>" means for a grocery catalogue. The words are chosen to hit Complete
# Journey titles/categories ("FLUID MILK PRODUCTS", "BACON - TRAD 16OZ OR LESS", ...).
# Each list is deliberately short and errs towards excluding too much: a dietary
# exclusion is a hard constraint, and a missed hit is worse than a lost candidate.
_BEEF = ("beef", "steak", "veal", "brisket", "lamb", "mutton")
_PORK = ("pork", "bacon", "ham", "sausage", "pepperoni", "salami", "chorizo", "prosciutto",
         "pancetta", "lard")
_POULTRY = ("chicken", "turkey", "poultry", "duck")
_SEAFOOD = ("seafood", "fish", "shellfish", "shrimp", "salmon", "tuna", "crab", "lobster",
            "oyster", "clam", "mussel", "scallop", "catfish", "tilapia", "cod", "sardine",
            "anchovy")
EXCLUSION_GROUPS: dict[str, tuple[str, ...]] = {
    "dairy": ("dairy", "milk", "cheese", "yogurt", "yoghurt", "butter", "cream", "creamer",
              "whey", "casein", "ghee", "kefir", "custard"),
    "pork": _PORK,
    "beef": _BEEF,
    "poultry": _POULTRY,
    "meat": ("meat", "lunchmeat", "bologna", "jerky", "meatball", "frank", "wiener",
             "bratwurst") + _BEEF + _PORK + _POULTRY,
    "red meat": _BEEF + _PORK,
    "seafood": _SEAFOOD,
    "gluten": ("gluten", "wheat", "barley", "rye", "bread", "pasta", "flour", "noodle",
               "macaroni", "spaghetti", "cracker", "cookie", "cake", "bagel", "bun", "muffin",
               "pizza", "pretzel", "croissant", "biscuit", "waffle", "pancake", "donut"),
    "nuts": ("nut", "peanut", "almond", "cashew", "pecan", "walnut", "pistachio", "hazelnut",
             "macadamia", "trail mix", "praline"),
    "eggs": ("egg", "eggnog", "mayonnaise", "mayo", "meringue"),
    "alcohol": ("alcohol", "beer", "ale", "wine", "liquor", "vodka", "whiskey", "whisky",
                "bourbon", "rum", "tequila", "gin", "brandy", "champagne", "hard seltzer"),
    "sugar": ("sugar", "candy", "chocolate", "soda", "soft drink", "sweets", "dessert",
              "cookie", "cake", "ice cream", "syrup", "donut", "frosting"),
    "soy": ("soy", "tofu", "edamame", "soybean"),
    "honey": ("honey",),
}

# Words a shopper uses for a group -> the group's key.
GROUP_ALIASES: dict[str, str] = {
    "dairy": "dairy", "lactose": "dairy",
    "pork": "pork", "pig": "pork",
    "beef": "beef",
    "poultry": "poultry",
    "meat": "meat", "meats": "meat",
    "red meat": "red meat",
    "seafood": "seafood", "fish": "seafood", "shellfish": "seafood",
    "gluten": "gluten",
    "nut": "nuts", "nuts": "nuts", "tree nut": "nuts", "tree nuts": "nuts",
    "egg": "eggs", "eggs": "eggs",
    "alcohol": "alcohol", "alcoholic": "alcohol", "booze": "alcohol", "liquor": "alcohol",
    "sugar": "sugar", "sugary": "sugar", "candy": "sugar", "sweets": "sugar",
    "soy": "soy",
}

# Diet words -> the exclusion groups they imply. Vegetarians skip fish too; "vegan" adds
# dairy, eggs and honey.
DIETS: dict[str, tuple[str, ...]] = {
    "vegetarian": ("meat", "seafood"),
    "vegan": ("meat", "seafood", "dairy", "eggs", "honey"),
    "pescatarian": ("meat",),
    "dairy-free": ("dairy",),
    "gluten-free": ("gluten",),
}
_DIET_WORDS: dict[str, str] = {
    "vegetarian": "vegetarian", "veggie": "vegetarian", "meatless": "vegetarian",
    "vegan": "vegan", "plant-based": "vegan", "plant based": "vegan",
    "pescatarian": "pescatarian", "pescetarian": "pescatarian",
    "lactose intolerant": "dairy-free", "lactose-intolerant": "dairy-free",
    "celiac": "gluten-free", "coeliac": "gluten-free",
}

_HEALTHY_RE = re.compile(
    r"\b(?:healthy|healthier|nutritious|wholesome|low[- ]fat|fat[- ]free|low[- ]calorie|"
    r"low[- ]cal|low[- ]sugar|low[- ]carb|light(?:er)? meal)\b"
)

# Words naming a meal, occasion or kind of food: kept as soft retrieval wishes. The value
# is the canonical form (singular/plural unified).
WISH_WORDS: dict[str, str] = {
    "breakfast": "breakfast", "brunch": "brunch", "lunch": "lunch", "lunches": "lunch",
    "school lunch": "school lunch", "lunchbox": "school lunch", "lunch box": "school lunch",
    "dinner": "dinner", "supper": "dinner", "date night": "date night",
    "snack": "snacks", "snacks": "snacks", "taco": "tacos", "tacos": "tacos",
    "taco night": "tacos", "taco tuesday": "tacos", "burrito": "burritos",
    "burritos": "burritos", "nachos": "nachos", "bbq": "bbq", "barbecue": "bbq",
    "barbeque": "bbq", "cookout": "bbq", "grill": "bbq", "grilling": "bbq",
    "pasta night": "pasta night", "pasta": "pasta", "spaghetti": "pasta",
    "pizza night": "pizza night", "pizza": "pizza", "movie night": "movie night",
    "game day": "game day", "game night": "game night", "tailgate": "game day",
    "party": "party", "picnic": "picnic", "camping": "camping", "dessert": "dessert",
    "desserts": "dessert", "baking": "baking", "salad": "salad", "salads": "salad",
    "sandwich": "sandwiches", "sandwiches": "sandwiches", "soup": "soup",
    "burger": "burgers", "burgers": "burgers", "smoothie": "smoothies",
    "smoothies": "smoothies", "stir fry": "stir fry", "stir-fry": "stir fry",
    "coffee": "coffee", "tea": "tea", "thanksgiving": "thanksgiving",
    "christmas": "christmas", "halloween": "halloween", "easter": "easter",
    "birthday": "birthday", "holiday": "holiday", "mexican": "mexican",
    "italian": "italian", "asian": "asian", "chinese": "chinese", "baby": "baby",
    "kids": "kids", "pet": "pet", "cleaning": "cleaning",
}

# Words that carry no need on their own; trimmed from the edges of the query and dropped
# when a segment holds nothing else ("can you make it cheaper please" -> "").
_FILLER = frozenset("""
hi hey hello ok okay so well um uh please pls plz thanks thank thx can could would will
you i i'd i'm im id we we're we'd us me my our want wanna need needs like love looking
look show give get find suggest recommend help let's lets how what about maybe also and
but or with for some something anything stuff things thing a an the it this that these
those them one ones idea ideas bundle bundles option options ingredients groceries to make
just actually instead then now again too of in is are be there still even bit little lot
more any else do have got go other different new another similar much very really sure yes
yeah no not all everything buy shop shopping cart add items item products product plus as
around kind sort way quite rather on at from by meant mean said
""".split())

# After "no"/"without": words that are not things to exclude ("no thanks", "no more than").
_NOT_AN_EXCLUSION = _FILLER | frozenset(
    "more less than thanks problem worries way idea rush hurry pressure limit matter longer "
    "clue preference need fuss hassle stress cruelty hands tax fat big deal".split()
)

_SMALL_NUMBERS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13,
    "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18,
    "nineteen": 19,
}
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70,
         "eighty": 80, "ninety": 90}
# Beyond these a number is noise or an attack, not a request.
MAX_BUDGET = 1_000_000.0
MAX_SERVINGS = 1000

_ORDINALS = ("first", "1st", "second", "2nd", "third", "3rd", "fourth", "4th", "fifth", "5th",
             "sixth", "6th", "last")

# ---------------------------------------------------------------------------------------
# Regex building blocks
# ---------------------------------------------------------------------------------------

_UNIT_WORDS = "|".join(sorted(_SMALL_NUMBERS, key=len, reverse=True))
_TENS_WORDS = "|".join(_TENS)
# Digits never start or end mid-number ("500" is never read as "50"; atomic groups keep
# a long run of digits linear), words end at a word boundary.
NUM = (
    r"(?:(?<!\d)(?:(?>\d{1,3}(?:,\d{3})+(?:\.\d{1,2})?)|(?>\d+(?:\.\d{1,2})?))(?![.,]?\d)"
    rf"|(?:(?:{_TENS_WORDS})(?:[- ](?:{_UNIT_WORDS}))?|(?:a\s+)?hundred"
    rf"|(?:a\s+)?dozen|a\s+couple(?:\s+of)?|couple|{_UNIT_WORDS})\b)"
)
_CURRENCY = r"(?:\$|dollars?|bucks?|usd)"
# Numbers followed by these are not money ("under 500 calories", "less than 5 items").
_NOT_MONEY = (
    r"(?!\s*(?:calories|cals?|kcal|minutes?|mins?|hours?|hrs?|grams?|g|oz|ounces?|lbs?|"
    r"pounds?|kg|people|persons|ppl|guests|servings?|portions?|items?|products?|things|"
    r"carbs|ingredients|percent|%)\b)"
)
_AMOUNT = rf"(?:\$\s*{NUM}|{NUM}(?:\s*{_CURRENCY})?){_NOT_MONEY}"
_CUR_AMOUNT = rf"(?:\$\s*{NUM}|{NUM}\s*{_CURRENCY})"
_ITEM = r"(?:red meat|tree nuts?|peanut butter|ice cream|sour cream|soft drinks?|[a-z][a-z'&-]*)"
_WORD = r"[a-z][a-z'-]*"

_BUDGET_PATTERNS = [
    re.compile(
        r"\b(?:(?:for\s+)?under|below|(?:less|cheaper|lower)\s+than|max(?:imum)?|at\s+most|"
        r"(?:no|not)\s+more\s+than|up\s+to|within|tops)\s*(?:of\s+)?:?\s*" + _AMOUNT
    ),
    re.compile(r"<\s*" + _AMOUNT),
    re.compile(
        r"\bbudget\s*(?:is|of|:|=|at|around|about|roughly|under|max)?\s*"
        r"(?:around|about|roughly|of|is)?\s*" + _AMOUNT
    ),
    re.compile(
        _CUR_AMOUNT + r"\s*(?:budget|max(?:imum)?|or\s+less|or\s+under|tops|limit|total)\b"
    ),
    re.compile(rf"\b{NUM}\s*(?:-\s*)?(?:dollars?\s+)?budget\b"),
    re.compile(
        r"\b(?:for|around|about|roughly|spend(?:ing)?|costs?|costing)\s+(?:around\s+|about\s+)?"
        + _CUR_AMOUNT
    ),
    re.compile(r"\$\s*" + NUM),  # a bare dollar amount is a budget too
]

_PEOPLE = r"(?:people|persons|ppl|guests|adults|kids|children|of\s+us|servings|portions|folks)"
_SERVINGS_PATTERNS = [
    # "family of five", "a party of 8"
    (re.compile(rf"\b(?:a\s+)?(?:family|group|party|household|crowd)\s+of\s+(?P<n>{NUM})\b"), True),
    # "serves 6", "feeds four", "for 4 people", "for the two of us", "dinner for two"
    (re.compile(
        rf"\b(?P<verb>for|feeds?|feeding|serves?|serving|to\s+serve|to\s+feed)\s+(?:the\s+)?"
        rf"(?P<n>{NUM})(?!\s*{_CURRENCY})(?P<unit>\s+{_PEOPLE})?\b"
    ), False),
    # "6 people", "four guests"
    (re.compile(rf"\b(?P<n>{NUM})\s+{_PEOPLE}\b"), True),
]

_EXCLUSION_TRIGGER = (
    r"(?:but\s+)?(?:no|without|w/o|minus|excluding|exclude|avoid(?:ing)?|hold\s+the|"
    r"skip(?:\s+the)?|nothing\s+with|none\s+of|free\s+of|allergic\s+to|intolerant\s+to|"
    r"can'?t\s+(?:eat|have)|(?:do\s+not|don'?t)\s+(?:want|like|eat|need)|"
    r"remove|drop|leave\s+out|take\s+out|get\s+rid\s+of)"
)
_EXCLUSION_RE = re.compile(
    rf"\b{_EXCLUSION_TRIGGER}\s+(?:any\s+|the\s+|more\s+|some\s+)?"
    rf"(?P<items>{_ITEM}(?:\s*(?:,\s*)?(?:or|and|nor)\s+{_ITEM})*)"
)
_FREE_RE = re.compile(rf"\b(?P<item>{_ITEM})[- ]free\b")

_CHEAPER_RE = re.compile(
    r"\b(?:cheaper|less\s+expensive|less\s+pricey|too\s+(?:pricey|expensive|much|costly)|"
    r"lower\s+(?:the\s+)?(?:price|cost)|more\s+affordable|costs?\s+less|spend\s+less|"
    r"budget[- ]friendly)\b"
)
_HEALTHIER_RE = re.compile(
    r"\b(?:healthier|more\s+healthy|more\s+nutritious|less\s+(?:sugar|sugary|junk|processed|"
    r"unhealthy)|lighter|better\s+for\s+(?:me|us))\b"
)
_BIGGER_RE = re.compile(
    r"\b(?:bigger|larger|more\s+(?:items|products|things|stuff)|add\s+(?:a\s+few\s+|some\s+)?more|"
    r"(?:a\s+)?few\s+more|extra\s+items)\b"
)
_SMALLER_RE = re.compile(
    r"\b(?:smaller|fewer\s+(?:items|products|things)|less\s+(?:items|products|things|stuff)|"
    r"not\s+so\s+many|too\s+many\s+(?:items|things|products))\b"
)
_RESET_RE = re.compile(
    r"\b(?:reset|start(?:ing)?\s+over|start\s+again|start\s+fresh|from\s+scratch|new\s+search|"
    r"clear\s+(?:all|everything|filters|it)|forget\s+(?:all|everything|that|it)|never\s*mind)\b"
)
_ORD = "|".join(_ORDINALS)
_MORE_LIKE_PATTERNS = [
    re.compile(
        rf"\b(?:more\s+|something\s+|anything\s+|i\s+)?(?:like|similar\s+to|more\s+of)\s+"
        rf"(?:bundle|option|number|no\.?|#)\s*#?(?P<n>\d+|{_UNIT_WORDS})\b"
    ),
    re.compile(
        rf"\b(?:more\s+|something\s+|anything\s+|i\s+)?(?:like|similar\s+to|more\s+of)\s+"
        rf"(?:the\s+)?(?P<ord>{_ORD})\s*(?:one|bundle|option)?\b"
    ),
    re.compile(r"\bmore\s+like\s+#?(?P<n>\d+)\b"),
]
_SWAP_RE = re.compile(
    rf"\b(?:swap|switch|change|replace|substitute)(?:\s+out)?\s+(?:the\s+|that\s+|this\s+|my\s+)?"
    rf"(?P<t>{_WORD}(?:\s+(?!for\b|with\b|to\b|and\b|please\b|out\b|in\b){_WORD})?)"
    rf"(?:\s+(?:for|with|to)\s+(?:a\s+|an\s+|some\s+|the\s+)?"
    rf"(?P<r>{_WORD}(?:\s+(?!and\b|please\b|instead\b){_WORD})?))?"
)
_INSTEAD_OF_RE = re.compile(rf"\binstead\s+of\s+(?:the\s+|that\s+)?(?P<t>{_WORD})")
_REPLACE_NEED_RE = re.compile(
    r"\binstead\b|^(?:how|what)\s+about\b|\b(?:let'?s|lets)\s+(?:do|have|try)\b|^actually\b"
)
_PRONOUNS = frozenset("it that this them everything all bundle bundles one ones things".split())

_WISH_RE = re.compile(
    r"\b(?:" + "|".join(re.escape(w) for w in sorted(WISH_WORDS, key=len, reverse=True)) + r")\b"
)
_DIET_RE = re.compile(
    r"\b(?:" + "|".join(re.escape(w) for w in sorted(_DIET_WORDS, key=len, reverse=True)) + r")\b"
)

# ---------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------

class ParsedMessage(BaseModel):
    text: str  # the sanitised message
    query: str = ""  # the needs text with every constraint phrase removed
    budget: float | None = None
    servings: int | None = None
    exclusions: list[str] = Field(default_factory=list)  # as said: "dairy", "pork"
    exclude_terms: list[str] = Field(default_factory=list)  # expanded, plus diets
    diets: list[str] = Field(default_factory=list)  # "vegetarian", "vegan", ...
    healthy: bool = False
    wishes: list[str] = Field(default_factory=list)

    def to_constraints(self) -> Constraints:
        return Constraints(
            budget=self.budget,
            servings=self.servings,
            exclude=list(self.exclude_terms),
            include_categories=list(self.wishes),
        )


# ---------------------------------------------------------------------------------------
# Text helpers
# ---------------------------------------------------------------------------------------


def sanitize_message(text: object, max_len: int = 1000) -> str:
    """Make user text safe to parse, log and put in a prompt.

    NFKC-normalises (a full-width "＄２５" reads as "$25"), turns tabs/newlines into spaces,
    drops every other control or format character (NUL, bidi overrides, zero-width
    joiners), collapses whitespace and truncates to ``max_len`` characters.
    """
    if not isinstance(text, str) or not text:
        return ""
    text = unicodedata.normalize("NFKC", text)
    kept = []
    for ch in text:
        if ch in "\t\n\r\v\f":
            kept.append(" ")
        elif unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn"):
            continue
        else:
            kept.append(ch)
    cleaned = " ".join("".join(kept).split())
    return cleaned[: max(0, max_len)].rstrip()


def to_number(token: str) -> float | None:
    """'25', '$1,200.50', 'four', 'twenty-five', 'a dozen', 'a couple' -> the number."""
    t = token.lower().strip().lstrip("$").strip()
    t = re.sub(r"\s*(?:dollars?|bucks?|usd|\$)$", "", t).strip()
    if not t:
        return None
    if re.fullmatch(r"[\d,]+(?:\.\d+)?", t):
        return float(t.replace(",", ""))
    t = re.sub(r"^a\s+", "", t)
    if t in _SMALL_NUMBERS:
        return float(_SMALL_NUMBERS[t])
    if t in ("couple", "couple of"):
        return 2.0
    if t == "dozen":
        return 12.0
    if t == "hundred":
        return 100.0
    parts = re.split(r"[- ]", t)
    if parts[0] in _TENS and (len(parts) == 1 or parts[1] in _SMALL_NUMBERS):
        return float(_TENS[parts[0]] + (_SMALL_NUMBERS[parts[1]] if len(parts) > 1 else 0))
    return None


_NUM_RE = re.compile(NUM)


def _number_in(span: str) -> float | None:
    m = _NUM_RE.search(span)
    return to_number(m.group(0)) if m else None


def singular(word: str) -> str:
    """Cheap singular for exclusion words, so "nuts" also excludes "NUT" titles."""
    w = word.strip().lower()
    if len(w) <= 3 or w.endswith(("ss", "us", "is")):
        return w
    if w.endswith("ies"):
        return w[:-3] + "y"
    if w.endswith(("ches", "shes", "xes", "oes")):
        return w[:-2]
    if w.endswith("s"):
        return w[:-1]
    return w


def _dedupe(items: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for item in items:
        if item and item not in seen:
            seen[item] = None
    return list(seen)


def expand_exclusions(words: Iterable[str], diets: Iterable[str] = ()) -> list[str]:
    """Raw exclusion words and diets -> the terms to filter on (group members + the word)."""
    terms: list[str] = []
    for diet in diets:
        for group in DIETS.get(diet, ()):
            terms.extend(EXCLUSION_GROUPS[group])
    for word in words:
        w = word.strip().lower()
        alias = GROUP_ALIASES.get(w) or GROUP_ALIASES.get(singular(w))
        if alias:
            terms.extend(EXCLUSION_GROUPS[alias])
        terms.append(singular(w) if " " not in w else w)
    return _dedupe(terms)


class _Text:
    """The message being consumed: each recognised phrase is cut out (replaced by " , ",
    so the words either side never merge) and what is left becomes the query. Also the
    need parser's (:mod:`assistant.nlu.parser`); both hand it lower-cased text."""

    def __init__(self, text: str):
        self.s = text

    def take(self, pattern: re.Pattern[str]) -> list[re.Match[str]]:
        found = list(pattern.finditer(self.s))
        self.cut(found)
        return found

    def cut(self, matches: Iterable[re.Match[str]]) -> None:
        for m in sorted(matches, key=lambda m: m.start(), reverse=True):
            self.s = self.s[: m.start()] + " , " + self.s[m.end():]


def clean_query(text: str) -> str:
    """Drop filler at the edges of each comma-separated segment; join what is left."""
    segments = re.split(r"[,.;:!?()\[\]\"]+|\s-\s", text.lower())
    kept: list[str] = []
    for segment in segments:
        words = segment.split()
        while words and words[0] in _FILLER:
            words.pop(0)
        while words and words[-1] in _FILLER:
            words.pop()
        if words:
            kept.append(" ".join(words))
    return " ".join(kept)


# ---------------------------------------------------------------------------------------
# Extraction, one concern per function
# ---------------------------------------------------------------------------------------


def _take_budget(t: _Text) -> float | None:
    amounts: list[float] = []
    for pattern in _BUDGET_PATTERNS:
        for m in t.take(pattern):
            value = _number_in(m.group(0).replace("$", " "))
            if value is not None and 0 < value <= MAX_BUDGET:
                amounts.append(value)
    return round(min(amounts), 2) if amounts else None  # two budgets: the tighter one wins


def _take_servings(t: _Text) -> int | None:
    for pattern, always in _SERVINGS_PATTERNS:
        for m in pattern.finditer(t.s):
            n = to_number(m.group("n"))
            if n is None or not 1 <= n <= MAX_SERVINGS or n != int(n):
                continue
            # "for 25" with no unit is more likely money than 25 guests
            bare_for = (not always and m.group("verb") == "for" and not m.group("unit"))
            if bare_for and n > 20:
                continue
            t.cut([m])
            return int(n)
    return None


def _take_exclusions(t: _Text) -> list[str]:
    words: list[str] = []
    for m in list(_EXCLUSION_RE.finditer(t.s)):
        items = [i.strip() for i in re.split(r"\s*(?:,\s*)?(?:\bor\b|\band\b|\bnor\b)\s*",
                                             m.group("items")) if i.strip()]
        if not items or items[0] in _NOT_AN_EXCLUSION:
            continue
        words.extend(i for i in items if i not in _NOT_AN_EXCLUSION)
        t.cut([m])
    for m in list(_FREE_RE.finditer(t.s)):
        item = m.group("item")
        if item in _NOT_AN_EXCLUSION:
            continue
        words.append(item)
        t.cut([m])
    return _dedupe(words)


def _take_diets(t: _Text) -> list[str]:
    return _dedupe(_DIET_WORDS[m.group(0)] for m in t.take(_DIET_RE))


def _wishes(text: str) -> list[str]:
    return _dedupe(WISH_WORDS[m.group(0)] for m in _WISH_RE.finditer(text))


def _cut_moves(t: _Text) -> str:
    """Cut the phrases of the moves read before the exclusions ("more like bundle 2", "swap
    the salsa", "instead of the beans") so they never reach the query. Returns the new need
    of "change it to breakfast" ("" if none)."""
    for pattern in _MORE_LIKE_PATTERNS:
        t.take(pattern)
    new_need = ""
    for m in list(_SWAP_RE.finditer(t.s)):
        target, repl = m.group("t").strip(), (m.group("r") or "").strip()
        if target in _PRONOUNS or target.split()[0] in _PRONOUNS:
            if not repl:  # "change it" alone: the words stay in the query
                continue
            new_need = repl  # "change it to breakfast" is a new need, not a swap
        t.cut([m])
    t.take(_INSTEAD_OF_RE)
    return new_need


def parse_message(text: str) -> ParsedMessage:
    """"tacos for four, under $25, no dairy" -> query "tacos", budget 25, servings 4,
    exclusions ["dairy"], exclude_terms [dairy, milk, cheese, ...], wishes ["tacos"].

    One pass; the order matters: money first (so "no more than 12 bucks" is a budget, not
    an exclusion), then head counts, then the conversational moves (cut, not read: the
    session reads them), then exclusions; what survives is the query."""
    clean = sanitize_message(text)
    t = _Text(clean.lower())
    t.take(_RESET_RE)
    budget = _take_budget(t)
    servings = _take_servings(t)
    new_need = _cut_moves(t)
    exclusions = _take_exclusions(t)
    t.take(_CHEAPER_RE)
    healthier = bool(t.take(_HEALTHIER_RE))
    t.take(_BIGGER_RE)
    t.take(_SMALLER_RE)
    healthy = bool(t.take(_HEALTHY_RE)) or healthier
    diets = _take_diets(t)
    t.take(_REPLACE_NEED_RE)

    query = clean_query(t.s)
    if new_need:
        query = clean_query(f"{new_need} {query}")
    return ParsedMessage(
        text=clean,
        query=query,
        budget=budget,
        servings=servings,
        exclusions=exclusions,
        exclude_terms=expand_exclusions(exclusions, diets),
        diets=diets,
        healthy=healthy,
        wishes=_wishes(query),
    )

