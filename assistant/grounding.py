"""Grounded replies: the model's text may only restate the need and the bundles shown.

A 135M-parameter model writes the chat intro and the per-bundle notes. Left alone it said
"I'm a vegan, and I'm always happy to cook for you!", "Ladies and gentlemen, I'm glad
you're enjoying the party!", echoed an injected "parmesan is free today", and wrote
"1.1.1.1…" as a reason. :func:`ground_reply` checks the text sentence by sentence, in a
fixed order, and drops any sentence that:

1. ``degenerate``: is repetition or noise ("1.1.1.1", a token three times, mostly symbols);
2. ``price``: states a money amount or a price claim ("$3", "4.99", "free today", "20% off")
   — the cards carry the catalogue's prices, and text must never contradict them;
3. ``self``: speaks about the assistant ("I'm vegan", "I'm glad", "as an AI", "my kids"),
   or apologises/refuses. "I picked ..." / "I found ..." about the bundles is allowed;
4. ``audience``: addresses an audience or narrates the shopper ("Ladies and gentlemen",
   "welcome", "you're enjoying the party");
5. ``echo``: repeats the shopper's message — half or more of its words lie in 3-grams of
   the message, or it shares a 5-gram with it — or repeats an id-like token from it
   ("p-fake") that is not on a card;
6. ``unshown``: names a product word (catalogue vocabulary) that is neither on a shown
   card nor part of the understood need.

What survives (at most ``max_sentences``) is the reply; when nothing does, the template
:func:`template_reply` built from the need and the bundles is used instead. The same check
gates the "why this bundle" note (:func:`grounded_reason`): a model note that fails it is
replaced by the bundle's itemised-score explanation. Everything here is deterministic
and pure.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from retrieval.titles import short_name

from .nlu.need import Need

MAX_REPLY_CHARS = 220
MAX_REASON_CHARS = 160
ECHO_COVERAGE = 0.5  # share of a sentence's words inside 3-grams of the message
ECHO_LONG_NGRAM = 5  # one shared 5-gram is a copy whatever the sentence's length

Reason = str  # one of REASONS
REASONS: tuple[str, ...] = ("degenerate", "price", "self", "audience", "echo", "unshown")


class ItemLike(Protocol):
    product_id: str
    title: str


class BundleLike(Protocol):
    name: str
    explanation: str

    @property
    def items(self) -> Sequence[Any]: ...


# --- word lists -------------------------------------------------------------------------

# Common grocery product words: the product vocabulary when the caller passes none (the
# service passes product_vocabulary(index.catalogue), which adds the catalogue's words).
DEFAULT_PRODUCT_WORDS: frozenset[str] = frozenset("""
parmesan cheese cheddar mozzarella milk cream butter yogurt egg bread bagel bun roll tortilla
taco shell salsa guacamole bean rice pasta spaghetti noodle sauce beef steak chicken turkey pork
ham bacon sausage salami pepperoni hotdog fish salmon tuna shrimp crab lettuce tomato onion
potato carrot pepper broccoli spinach avocado lime lemon apple banana orange grape berry
strawberry blueberry melon watermelon pineapple peach pear cherry cereal oatmeal granola
pancake waffle syrup honey jam jelly peanut almond nut cracker cookie cake pie donut muffin
brownie candy chocolate gum chip pretzel popcorn soda cola juice water coffee tea beer wine
vodka whiskey rum tequila liquor ale lager cider energy lemonade pizza soup chili burrito
nacho fajita sandwich burger hamburger salad dressing mayonnaise ketchup mustard pickle olive
oil vinegar flour sugar salt spice seasoning garlic herb ice cracker sherbet gelato
pudding marshmallow diaper wipe shampoo soap detergent bleach towel tissue napkin plate cup
candle card balloon toy dog cat litter cigarette tobacco battery charcoal
""".split())

# Words that name occasions, meals, sizes or qualities, not products: never "unshown".
GENERIC_WORDS: frozenset[str] = frozenset("""
night dinner lunch breakfast brunch supper meal snack treat party picnic bbq barbecue cookout
tailgate holiday birthday weekend week day tonight today morning evening family kid child
people person guest friend crowd bundle pick option idea choice mix kit set pack item product
thing stuff favorite favourite classic fresh healthy healthier light lighter quick easy simple
great good perfect delicious tasty yummy hearty fun special premium budget value deal cheap
cheaper serving portion size big bigger small smaller large extra plus more less side main
dish course drink dessert food grocery groceries store brand name national private cold hot
frozen refrigerated canned dry sweet savory spicy mild natural organic homemade home style
flavor flavour variety assortment combo night's taste everything something anything gluten free
ready vegan vegetarian keto lactose allergy allergen plant based wholesome other miscellaneous
regular traditional mainstream economy select choice bulk prepacked single multi serve count
grill grilling cook cooking kitchen oven table center date red green yellow white black blue gold
french italian mexican asian american instant flat upscale children minis security stand style
bottle can jar bag box package container carton tray
""".split())

_STOPWORDS: frozenset[str] = frozenset("""
a an the and or but so of for to in on at by with without from into over under up down out
is are was were be been being it its it's this that these those there here you your you're
yours we our us they them their i me my mine he she his her him as if then than too very
all any some each every no not nor just also only can could would should will shall may
might must do does did done have has had having get got make made let lets let's what which
who whom how why when where
""".split())

_DIET_PREFIX = ("gluten", "dairy", "nut", "peanut", "sugar", "fat", "meat", "egg", "lactose", "soy",
                "alcohol", "caffeine", "cruelty", "pork", "wheat", "carb", "salt", "sodium", "tax", "hands")

# --- patterns ---------------------------------------------------------------------------

_MONEY = re.compile(
    r"[$€£¥]\s*\d|\d\s*[$€£¥]|\b\d+(?:[.,]\d+)?\s*(?:dollars?|bucks|usd|cents?|euros?|pesos?)\b"
    r"|\b\d+\.\d{2}\b|\b\d+\s*(?:%|percent)\s*off\b|\b(?:on sale|half[- ]price|bogo|discount(?:ed)?|"
    r"coupons?|clearance|for only|price[sd]? at|costs? (?:just|only))\b",
    re.IGNORECASE,
)
_FREE = re.compile(r"\bfree\b", re.IGNORECASE)
_SELF = re.compile(
    r"\b(?:i|i'm|im|i've|i'd|i'll|me|my|mine|myself|we|we're|we've|we'll|our|ours|us)\b"
    r"|\bas an ai\b|\b(?:an ai|language model|chatbot|ai assistant|virtual assistant)\b",
    re.IGNORECASE,
)
# First-person phrases that talk about the bundles, not about the assistant.
_SELF_OK = re.compile(
    r"\b(?:i|we)(?:'ve| have)? (?:found|picked|chose|chosen|put together|pulled together|gathered|"
    r"suggest|recommend|matched|built|made)\b",
    re.IGNORECASE,
)
_REFUSAL = re.compile(r"\b(?:sorry|apologi[sz]e|unfortunately|unable to|cannot help|can't help)\b", re.IGNORECASE)
_AUDIENCE = re.compile(
    r"\b(?:ladies|gentlemen|everyone|everybody|folks|y'all|you guys|dear (?:customer|friend|shopper)s?|"
    r"welcome|hello|greetings|good (?:morning|afternoon|evening))\b"
    r"|\b(?:hi|hey) there\b|\byou(?:'re| are) (?:enjoying|having|celebrating)\b",
    re.IGNORECASE,
)
_REPEAT_CHUNK = re.compile(r"(.{1,6}?)\1{3,}")
_ID_LIKE = re.compile(r"\b[a-z]{1,4}-[a-z0-9]+\b|\b[a-z]+\d+[a-z0-9]*\b|\b\d{5,}\b", re.IGNORECASE)
_WORD = re.compile(r"[a-z][a-z'-]*", re.IGNORECASE)
_SENTENCE = re.compile(r"[^.!?…]+(?:[.!?…]+|$)")


def _singular(word: str) -> str:
    w = word.lower().strip("'-")
    if w.endswith("ies") and len(w) > 4:
        return w[:-3] + "y"
    if w.endswith(("ches", "shes", "xes", "oes")) and len(w) > 4:
        return w[:-2]
    if w.endswith("s") and not w.endswith(("ss", "us", "is")) and len(w) > 3:
        return w[:-1]
    return w


def _words(text: str) -> list[str]:
    return [w.lower().strip("'-") for w in _WORD.findall(text or "") if w.strip("'-")]


def _ngrams(tokens: Sequence[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text``, each with its end punctuation, whitespace collapsed."""
    flat = " ".join(str(text or "").replace("\u2019", "'").replace("\u2018", "'").split())
    return [s.strip() for s in _SENTENCE.findall(flat) if s.strip()]


# --- context ------------------------------------------------------------------------------


def product_vocabulary(catalogue: Any, column: str = "display_title") -> frozenset[str]:
    """The product nouns of a catalogue (a DataFrame with display titles): the head noun of
    each part of each name ("Waffles/pancakes/French toast" -> waffle, pancake, toast;
    "Beer, ale and malt liquors" -> beer, ale, liquor), singular, plus
    :data:`DEFAULT_PRODUCT_WORDS`. Head nouns only: "filling" in "pie filling mincemeat
    glazes" or "lean" are not products. Build once per index."""
    words: set[str] = set(DEFAULT_PRODUCT_WORDS)
    if column in getattr(catalogue, "columns", ()):
        for title in catalogue[column].dropna().astype(str).unique():
            name = title.split(" · ")[0]
            for part in re.split(r"[/,:&()]|\band\b|\bwith\b|\bor\b", name.lower()):
                tokens = _words(part)
                if tokens:
                    head = _singular(tokens[-1])
                    if len(head) > 2 and not head.endswith("ed") and head not in _STOPWORDS:
                        words.add(head)
    return frozenset(w for w in words if w not in GENERIC_WORDS and w not in _STOPWORDS)


def need_words(need: Need | None) -> set[str]:
    """Words the understood need allows a reply to say (occasion, items, roles, diets ...)."""
    if need is None:
        return set()
    parts = [need.text, need.occasion or "", *need.include, *need.exclude, *need.add_roles, *need.diets]
    return {_singular(w) for p in parts for w in _words(p)}


@dataclass(frozen=True)
class GroundingContext:
    """What a sentence may mention: built once per reply by :func:`grounding_context`."""

    allowed: frozenset[str]  # singular words of the shown cards and the need
    vocabulary: frozenset[str]  # product words; one not in ``allowed`` is "unshown"
    message_tokens: tuple[str, ...]
    message_trigrams: frozenset[tuple[str, ...]]
    message_long: frozenset[tuple[str, ...]]
    message_ids: frozenset[str]  # id-like tokens the shopper typed ("p-fake")
    shown_ids: frozenset[str]


def _titles_of(bundle: Any) -> list[str]:
    out = [str(getattr(bundle, "name", "") or "")]
    for item in getattr(bundle, "items", ()) or ():
        out.append(str(getattr(item, "title", "") or ""))
        out.append(str(getattr(item, "display_title", "") or ""))
    return out


def grounding_context(shown_bundles: Sequence[Any], need: Need | None, user_message: str = "",
                      vocabulary: frozenset[str] | None = None) -> GroundingContext:
    shown_words = {_singular(w) for b in shown_bundles for t in _titles_of(b) for w in _words(t)}
    ids = {str(getattr(i, "product_id", "")).lower() for b in shown_bundles for i in getattr(b, "items", ()) or ()}
    tokens = tuple(_words(user_message))
    return GroundingContext(
        allowed=frozenset(shown_words | need_words(need)),
        vocabulary=vocabulary if vocabulary is not None else DEFAULT_PRODUCT_WORDS,
        message_tokens=tokens,
        message_trigrams=frozenset(_ngrams(tokens, 3)),
        message_long=frozenset(_ngrams(tokens, ECHO_LONG_NGRAM)),
        message_ids=frozenset(m.lower() for m in _ID_LIKE.findall(user_message or "")),
        shown_ids=frozenset(ids),
    )


# --- the check ------------------------------------------------------------------------------


def _degenerate(sentence: str) -> bool:
    compact = re.sub(r"\s+", "", sentence).rstrip(".!?…")
    if not compact:
        return True
    if _REPEAT_CHUNK.search(compact.lower()):
        return True  # "1.1.1.1", "hahaha!!!", "........"
    letters = sum(c.isalpha() for c in compact)
    if letters / len(compact) < 0.6:
        return True  # mostly digits and symbols
    words = _words(sentence)
    if len([w for w in words if len(w) > 1]) < 2:
        return True
    counts: dict[str, int] = {}
    for w in words:
        if w not in _STOPWORDS:
            counts[w] = counts.get(w, 0) + 1
    if counts and max(counts.values()) >= 3:
        return True  # "tacos tacos tacos"
    return len(words) >= 8 and len(set(words)) / len(words) < 0.5


def _states_price(sentence: str) -> bool:
    if _MONEY.search(sentence):
        return True
    lowered = sentence.lower()
    for m in _FREE.finditer(lowered):
        before = lowered[: m.start()]
        if before.endswith("-") or before.rstrip().endswith(_DIET_PREFIX) or before.rstrip().endswith("feel"):
            continue  # "dairy-free", "gluten free", "feel free"
        return True  # "parmesan is free today"
    return False


def _about_itself(sentence: str) -> bool:
    if _REFUSAL.search(sentence):
        return True
    stripped = _SELF_OK.sub(" ", sentence)
    return bool(_SELF.search(stripped))


def _echoes(sentence: str, ctx: GroundingContext) -> bool:
    tokens = _words(sentence)
    if ctx.message_ids:
        said = {m.lower() for m in _ID_LIKE.findall(sentence)}
        if said & (ctx.message_ids - ctx.shown_ids):
            return True  # an id the shopper typed, not on any card
    if len(tokens) < 3 or not ctx.message_trigrams:
        return False
    if _ngrams(tokens, ECHO_LONG_NGRAM) & ctx.message_long:
        return True
    covered = [False] * len(tokens)
    for i in range(len(tokens) - 2):
        if tuple(tokens[i:i + 3]) in ctx.message_trigrams:
            covered[i] = covered[i + 1] = covered[i + 2] = True
    return sum(covered) / len(tokens) >= ECHO_COVERAGE


def unshown_products(sentence: str, ctx: GroundingContext) -> list[str]:
    """Product words in ``sentence`` that no shown card and no part of the need mentions."""
    out: list[str] = []
    for w in _words(sentence):
        s = _singular(w)
        if s in GENERIC_WORDS or s in _STOPWORDS or s in ctx.allowed:
            continue
        if s in ctx.vocabulary and s not in out:
            out.append(s)
    return out


def check_sentence(sentence: str, ctx: GroundingContext) -> Reason | None:
    """Why ``sentence`` must go (a key of :data:`REASONS`), or None when it may stay."""
    if _degenerate(sentence):
        return "degenerate"
    if _states_price(sentence):
        return "price"
    if _about_itself(sentence):
        return "self"
    if _AUDIENCE.search(sentence):
        return "audience"
    if _echoes(sentence, ctx):
        return "echo"
    if unshown_products(sentence, ctx):
        return "unshown"
    return None


@dataclass
class GroundingReport:
    """The reply and, for logs and eval, every dropped sentence with its reason."""

    text: str
    kept: list[str] = field(default_factory=list)
    dropped: list[tuple[str, Reason]] = field(default_factory=list)
    templated: bool = False


def ground_reply_report(text: str, shown_bundles: Sequence[Any], need: Need | None, user_message: str = "",
                        *, vocabulary: frozenset[str] | None = None, max_sentences: int = 2,
                        max_chars: int = MAX_REPLY_CHARS) -> GroundingReport:
    ctx = grounding_context(shown_bundles, need, user_message, vocabulary)
    report = GroundingReport(text="")
    for sentence in split_sentences(text):
        reason = check_sentence(sentence, ctx)
        if reason is not None:
            report.dropped.append((sentence, reason))
        elif len(report.kept) < max_sentences and len(" ".join([*report.kept, sentence])) <= max_chars:
            report.kept.append(sentence)
    if report.kept:
        report.text = " ".join(report.kept)
    else:
        report.text = template_reply(need, shown_bundles)
        report.templated = True
    return report


def ground_reply(text: str, shown_bundles: Sequence[Any], need: Need | None, user_message: str = "",
                 *, vocabulary: frozenset[str] | None = None, max_sentences: int = 2) -> str:
    """The model's ``text`` with every ungrounded sentence removed; the template reply
    when nothing is left. Pure and deterministic."""
    return ground_reply_report(text, shown_bundles, need, user_message, vocabulary=vocabulary,
                               max_sentences=max_sentences).text


def grounded_reason(text: str, bundle: Any, need: Need | None = None, user_message: str = "",
                    *, vocabulary: frozenset[str] | None = None, fallback: str | None = None) -> str:
    """A "why this bundle" line: the model's note when it passes the same check against
    *this* bundle's items (first sentence, never cut mid-word), else ``fallback`` —
    by default the bundle's itemised-score ``explanation``."""
    ctx = grounding_context([bundle], need, user_message, vocabulary)
    for sentence in split_sentences(text):
        if check_sentence(sentence, ctx) is None:
            return short_name(sentence, MAX_REASON_CHARS)
    return fallback if fallback is not None else str(getattr(bundle, "explanation", "") or "")


# --- the template -------------------------------------------------------------------------


def _money(value: float) -> str:
    return f"${value:.0f}" if abs(value - round(value)) < 0.005 else f"${value:.2f}"


def describe_need(need: Need | None) -> list[str]:
    """The need as short phrases, in a fixed order: "taco night", "for 4", "vegan",
    "no cheese", "+ drink", "under $25"."""
    if need is None:
        return []
    parts: list[str] = []
    topic = need.occasion or need.text
    if topic:
        parts.append(short_name(topic, 40))
    parts += [f"with {i}" for i in need.include]
    if need.servings:
        parts.append(f"for {need.servings}")
    if need.days:
        parts.append("for a week" if need.days == 7 else f"for {need.days} days")
    parts += list(need.diets)
    if need.healthier and "healthier" not in parts:
        parts.append("healthier")
    parts += [f"no {x}" for x in need.exclude]
    parts += [f"+ {r}" for r in need.add_roles]
    budget = need.budget if need.budget is not None else need.max_price
    if budget is not None:
        parts.append(f"under {_money(budget)}")
    return parts


def _join(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _head_and_rest(need: Need | None) -> tuple[str, list[str]]:
    """("taco night for 4", ["vegan", "no cheese", "under $25"]) for the template."""
    phrases = describe_need(need)
    if need is None:
        return "", phrases
    topic = short_name(need.occasion or need.text, 40) if (need.occasion or need.text) else ""
    head = [p for p in phrases if p == topic or (p.startswith("for ") and p[4:5].isdigit()) or p == "for a week"]
    return " ".join(head), [p for p in phrases if p not in head]


def template_reply(need: Need | None, shown_bundles: Sequence[Any]) -> str:
    """The deterministic reply: what was understood and which bundles are shown.
    "Here are 3 bundles for taco night for 4 (no cheese, under $25): A, B and C."."""
    head, rest = _head_and_rest(need)
    about = "" if not head else (f" {head}" if head.startswith("for ") else f" for {head}")
    if rest:
        about += f" ({', '.join(rest)})"
    names = [short_name(str(getattr(b, "name", "") or ""), 40) for b in shown_bundles]
    names = [n for n in names if n]
    if not shown_bundles:
        return f"No bundle fits{about} yet."
    count = len(shown_bundles)
    head_text = f"Here {'is' if count == 1 else 'are'} {count} bundle{'' if count == 1 else 's'}{about}"
    return f"{head_text}: {_join(names)}." if names else f"{head_text}."
