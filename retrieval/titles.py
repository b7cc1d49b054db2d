"""Readable display titles for catalogue products, and bundle names that fit a limit.

Complete Journey has no product names: a product is its type, category, brand tier and
package size, all upper-case codes cut at 30 characters ("SFT DRNK SNGL SRV BTL CARB
(EX"). :func:`display_title` turns those fields into "Soft drink single-serve bottle,
carbonated · name brand · 20 oz":

1. the versioned lexicon ``retrieval/data/title_lexicon.json`` expands abbreviations,
   phrases first, then single words (mined from the 2,378 types and 303 categories);
2. truncation damage is repaired: an unclosed parenthesis ("(EX", "(ALPO/PUR") is cut,
   and so is a 1-2 letter fragment left at the 30-character cut ("... JUICE - O");
3. a type too vague to stand alone ("PREMIUM", "MAINSTREAM", "MAYBELLINE") gets the
   noun of its category ("Premium ice cream", "Maybelline makeup");
4. the order is type, then brand tier (National -> name brand, Private -> store brand),
   then size; sentence case, with names and acronyms restored ("BBQ", "Italian").

The raw ``title`` stays in the catalogue for search, embeddings and export; the display
title is for people. Other sources (BundleRec, CSV) already have real names and keep
them. :func:`display_titles` is the vectorised form (one pass per distinct type/category
pair and per distinct size, so 92k rows take well under a second).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

LEXICON_PATH = Path(__file__).parent / "data" / "title_lexicon.json"
CODED_SOURCES = frozenset({"completejourney"})  # sources whose titles are built from codes
SEPARATOR = " · "
TRUNCATED_AT = 30  # Complete Journey cuts type and category names at 30 characters


@dataclass(frozen=True, eq=False)  # hashed by identity: one cached instance per file
class Lexicon:
    version: str
    phrase_re: re.Pattern[str]  # every phrase, longest first, in one alternation
    phrases: Mapping[str, str]  # upper-case phrase -> replacement
    words: Mapping[str, str]
    fragment_max_len: int
    keep_fragments: frozenset[str]
    hyphen_prefixes: frozenset[str]
    qualifiers: frozenset[str]
    heads: frozenset[str]
    brands_as_types: Mapping[str, str]
    category_nouns: Mapping[str, str]
    proper: Mapping[str, str]
    proper_phrases: tuple[tuple[re.Pattern[str], str], ...]
    brand_tiers: Mapping[str, str]
    noun_first_categories: frozenset[str]
    trailing_drop: frozenset[str]
    size_units: Mapping[str, str]
    size_drop: frozenset[str]


def _phrase_pattern(phrase: str) -> str:
    # Whole words only ("SS" must not hit "GLASS"); an edge that is punctuation
    # ("FEM. HYGN." in "FEM. HYGN.NAPKINS") needs no boundary.
    left = r"(?<![A-Za-z0-9])" if phrase[:1].isalnum() else ""
    right = r"(?![A-Za-z0-9])" if phrase[-1:].isalnum() else ""
    return left + re.escape(phrase) + right


def _phrase_re(phrase: str) -> re.Pattern[str]:
    return re.compile(_phrase_pattern(phrase), re.IGNORECASE)


@lru_cache(maxsize=4)
def load_lexicon(path: Path = LEXICON_PATH) -> Lexicon:
    data: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))
    phrases = sorted(data["phrases"].items(), key=lambda kv: (-len(kv[0]), kv[0]))  # longest first
    proper_map = {v.lower(): v for v in data.get("brands_as_types", {}).values()}
    proper_map.update(data.get("proper_phrases", {}))
    proper_phrases = sorted(proper_map.items(), key=lambda kv: (-len(kv[0]), kv[0]))
    return Lexicon(
        version=str(data["version"]),
        phrase_re=re.compile("|".join(_phrase_pattern(k) for k, _ in phrases), re.IGNORECASE),
        phrases={k.upper(): v for k, v in phrases},
        words={k.lower(): v for k, v in data["words"].items()},
        fragment_max_len=int(data.get("truncated_fragment_max_len", 2)),
        keep_fragments=frozenset(data.get("keep_fragments", [])),
        hyphen_prefixes=frozenset(data.get("hyphen_prefixes", [])),
        qualifiers=frozenset(data.get("qualifiers", [])),
        heads=frozenset(data.get("heads", [])),
        brands_as_types={k.upper(): v for k, v in data.get("brands_as_types", {}).items()},
        category_nouns={k.upper(): v for k, v in data.get("category_nouns", {}).items()},
        proper={k.lower(): v for k, v in data.get("proper", {}).items()},
        proper_phrases=tuple((_phrase_re(k), v) for k, v in proper_phrases),
        brand_tiers={k.lower(): v for k, v in data.get("brand_tiers", {}).items()},
        noun_first_categories=frozenset(k.upper() for k in data.get("noun_first_categories", [])),
        trailing_drop=frozenset(data.get("trailing_drop", [])),
        size_units={k.lower(): v for k, v in data.get("size_units", {}).items()},
        size_drop=frozenset(data.get("size_drop", [])),
    )


def lexicon_version() -> str:
    return load_lexicon().version


# --- repairing and expanding one code -------------------------------------------------


def _cut_unclosed(text: str) -> str:
    """Drop an unclosed "(" and what follows ("CANDY BARS (SINGLES)(INCLUDING" ->
    "CANDY BARS (SINGLES)"), and any stray ")"."""
    out: list[str] = []
    depth = 0
    last_open = -1
    for ch in text:
        if ch == "(":
            if depth == 0:
                last_open = len(out)
            depth += 1
        elif ch == ")":
            if depth == 0:
                out.append(" ")  # a stray ")" may separate two numbers ("36)1.12 OZ")
                continue
            depth -= 1
        out.append(ch)
    s = "".join(out)
    if depth > 0:
        s = s[:last_open]
    return s


def _cut_fragment(text: str, lex: Lexicon) -> str:
    """At the 30-character cut, a last token of 1-2 letters is a broken word ("- O", "/N")."""
    m = re.search(rf"[\s/&:-]+([A-Za-z]{{1,{lex.fragment_max_len}}})$", text)
    if m and m.group(1).lower() not in lex.keep_fragments and m.group(1).lower() not in lex.words:
        text = text[: m.start()]
    return text


_TRAILING_JUNK = re.compile(r"[\s/&:,+-]+$")
_LEADING_JUNK = re.compile(r"^[\s/&:,+-]+")


@lru_cache(maxsize=16384)
def _expand_code(raw: str, lex: Lexicon) -> str:
    """One upper-case code -> lower-case readable words (no sentence case yet)."""
    s = " ".join(str(raw).split())
    if not s:
        return ""
    truncated = len(s) >= TRUNCATED_AT - 1
    s = _cut_unclosed(s)
    if truncated:
        s = _cut_fragment(_TRAILING_JUNK.sub("", s), lex)
    s = lex.phrase_re.sub(lambda m: lex.phrases[m.group(0).upper()], s)
    s = _split_hyphens(s, lex)  # on the codes left upper-case: phrase output is lower-case
    s = re.sub(r"(?<=\d)(?=[A-Za-z])", " ", s)  # "12PK" -> "12 PK", "750ML" -> "750 ML"
    s = re.sub(r"(?<=[A-Za-z])\.", " ", s)  # "MISC.CND" -> "MISC CND"; decimals stay
    s = re.sub(r"[A-Za-z][A-Za-z']*", lambda m: _word(m.group(0), lex), s)
    s = _separators(s, lex)
    return _drop_dangling(s, lex)


def _word(token: str, lex: Lexicon) -> str:
    low = token.lower()
    if low in lex.words and token == token.upper():
        return lex.words[low]
    # Phrase replacements are already lower-case; everything else is a code to lower.
    return token if token != token.upper() else low


def _hyphen(m: re.Match[str], lex: Lexicon) -> str:
    left, right = m.group(1), m.group(2)
    if left.lower() in lex.hyphen_prefixes or len(left) < 4 or len(right) < 4:
        return f"{left}-{right}"
    return f"{left}, {right}"  # "CANDY BAGS-CHOCOLATE" -> "candy bags, chocolate"


def _split_hyphens(s: str, lex: Lexicon) -> str:
    prev = None
    while prev != s:  # chains: "FACIAL SOAPS-SCRUBS-MASKS"
        prev = s
        s = re.sub(r"\b([A-Z]+)-([A-Z]+)\b", lambda m: _hyphen(m, lex), s)
    return s


def _drop_dangling(s: str, lex: Lexicon) -> str:
    """Words a 30-character cut leaves hanging ("... BTL CARB INCL", "... DINNERS ALL")."""
    words = s.split()
    while len(words) > 1 and words[-1].lower().strip(",:;") in lex.trailing_drop:
        words.pop()
    return _TRAILING_JUNK.sub("", " ".join(words)).strip()


def _separators(s: str, lex: Lexicon) -> str:
    s = re.sub(r"\(\s*\)", "", s)  # emptied by a phrase that drops a brand list
    s = re.sub(r"\s+-\s+|\s+-(?=\w)|(?<=\w)-\s+", ", ", s)  # "SANDWICHES - (COLD)", "JUICE - O"
    s = re.sub(r"\s*:\s*", ": ", s)
    s = re.sub(r"\s*&\s*", " & ", s)
    s = re.sub(r"(?<=\S)\(", " (", s)
    s = re.sub(r"\)(?=\w)", ") ", s)
    s = re.sub(r"\(\s+", "(", s)
    s = re.sub(r"\s+\)", ")", s)
    s = re.sub(r"\s*,\s*(?:,\s*)*", ", ", s)
    s = re.sub(r"\s+", " ", s)
    s = _LEADING_JUNK.sub("", _TRAILING_JUNK.sub("", s))
    return s.replace(": ,", ":").replace(", :", ":")


def _words_of(text: str) -> set[str]:
    return {w for w in re.split(r"[^a-z0-9']+", text.lower()) if w}


def _category_noun(raw_category: str, lex: Lexicon) -> str:
    key = " ".join(str(raw_category).split()).upper()
    if key in lex.category_nouns:
        return lex.category_nouns[key]
    spaced = " ".join(str(raw_category).split())
    noun = _expand_code(spaced.split("/")[0], lex)
    return re.split(r"\s*[,:(]", noun)[0]


def _is_vague(name: str, lex: Lexicon) -> bool:
    words = _words_of(name)
    return bool(words) and words <= (lex.qualifiers | lex.heads)


def _stem(word: str) -> str:
    return word[:-1] if word.endswith("s") and len(word) > 3 else word


def product_name(product_type: str, category: str, department: str = "", lex: Lexicon | None = None) -> str:
    """The readable name of a type within its category, before casing and tier/size."""
    lex = lex or load_lexicon()
    raw_type = " ".join(str(product_type or "").split())
    raw_cat = " ".join(str(category or "").split())
    if raw_type.upper() in lex.brands_as_types:
        brand = lex.brands_as_types[raw_type.upper()]
        noun = _category_noun(raw_cat, lex) if raw_cat else ""
        return f"{brand} {noun}".strip()
    name = _expand_code(raw_type, lex)
    if not name:
        name = _expand_code(raw_cat, lex)
        if not name:
            dept = _expand_code(str(department or ""), lex)
            return f"{dept} store item".strip() if dept else "Store item"
        return name
    if not raw_cat:
        return name
    noun = _category_noun(raw_cat, lex)
    have = {_stem(w) for w in _words_of(name)}
    if not noun or {_stem(w) for w in _words_of(noun)} & have:
        return name  # "Select beef" in BEEF, "Garden gifts" in LAWN AND GARDEN SHOP
    words = _words_of(name)
    vague = _is_vague(name, lex)
    if not vague and raw_cat.upper() not in lex.noun_first_categories:
        return name
    if words <= lex.qualifiers:
        return f"{name} {noun}"  # "Premium ice cream", "Primal beef"
    if len(words) == 1 or raw_cat.upper() in lex.noun_first_categories:
        return f"{noun} {name}"  # "Beef patties", "Beef flank", "Halloween novelties"
    return name  # "Miscellaneous meat sauces" says enough
    return name


def sentence_case(text: str, lex: Lexicon | None = None) -> str:
    """First letter upper, the rest as the lexicon says (names, acronyms) or lower."""
    lex = lex or load_lexicon()
    if not text:
        return text

    def fix(m: re.Match[str]) -> str:
        word = m.group(0)
        if word in ("L", "DVDs", "SPF", "BBQ", "NZ", "TV", "DXM", "PSE", "APS"):
            return word
        return lex.proper.get(word.lower(), word.lower() if not _mixed_case(word) else word)

    out = re.sub(r"[A-Za-z][A-Za-z'é&]*", fix, text)
    for pattern, replacement in lex.proper_phrases:
        out = pattern.sub(replacement, out)
    return out[:1].upper() + out[1:]


def _mixed_case(word: str) -> bool:
    # "L'Oréal", "Fisher-Price": written by the lexicon, keep as is.
    return any(c.isupper() for c in word[1:]) and not word.isupper()


def readable_size(size: str, lex: Lexicon | None = None) -> str:
    """"12 OZ" -> "12 oz", "1/2 GAL" -> "1/2 gal", "6 PK 12 OZ" -> "6 pack 12 oz"."""
    lex = lex or load_lexicon()
    s = " ".join(_cut_unclosed(str(size or "")).split())
    if not s:
        return ""
    s = re.sub(r"(?<=\d)(?=[A-Za-z])|(?<=[A-Za-z])(?=\d)", " ", s)
    s = re.sub(r"(?<=[A-Za-z])\s*/\s*(?=\d)|(?<=[A-Za-z])\.", " ", s)  # "PK/5 OZ", "CT."
    s = re.sub(r"\s*\(\s*", " (", s)  # "OZ(6)" -> "OZ (6)"
    out: list[str] = []
    for token in re.split(r"\s+", s):
        core = token.strip("()").lower()
        if not core:
            continue
        if core in lex.size_units:
            core = lex.size_units[core]
        elif core in lex.size_drop or (len(core) == 1 and core.isalpha()):
            continue  # stray code letters ("P 16 OZ", "R 12 CT")
        # parentheses stay where they were: "2 LB (32 OZ)", "50 CT (3)"
        out.append(("(" if token.startswith("(") else "") + core + (")" if token.endswith(")") else ""))
    return " ".join(out).strip()


def brand_tier(brand: str, lex: Lexicon | None = None) -> str:
    lex = lex or load_lexicon()
    b = str(brand or "").strip()
    return lex.brand_tiers.get(b.lower(), b)


def compose_title(name: str, tier: str, size: str) -> str:
    return SEPARATOR.join(p for p in (name, tier, size) if p)


# --- rows and frames ------------------------------------------------------------------


def category_of(path: str, product_type: str = "", department: str = "") -> str:
    """The product category inside a catalogue path "DEPT > CATEGORY > TYPE"."""
    parts = [p.strip() for p in str(path or "").split(" > ")]
    ptype = " ".join(str(product_type or "").split())
    if parts and parts[-1] and " ".join(parts[-1].split()) == ptype and len(parts) >= 2:
        parts = parts[:-1]
    if parts and department and parts[0].strip() == str(department).strip():
        parts = parts[1:]
    return parts[0] if parts else ""


def _value(row: Mapping[str, Any] | pd.Series, key: str) -> str:
    v = row.get(key, "") if hasattr(row, "get") else ""
    return "" if v is None or (isinstance(v, float) and v != v) else str(v)


def display_title(row: Mapping[str, Any] | pd.Series, source: str = "completejourney") -> str:
    """The title a shopper reads for one catalogue row (keys as in ``PRODUCT_COLUMNS``)."""
    if source not in CODED_SOURCES:
        return " ".join(_value(row, "title").split())
    lex = load_lexicon()
    ptype, dept = _value(row, "product_type"), _value(row, "department")
    category = _value(row, "product_category") or category_of(_value(row, "category"), ptype, dept)
    name = sentence_case(product_name(ptype, category, dept, lex), lex)
    return compose_title(name, brand_tier(_value(row, "brand"), lex), readable_size(_value(row, "size"), lex))


def _strings(df: pd.DataFrame, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(codes, distinct values as str) of a column; a missing column or NaN reads as ""."""
    if name not in df.columns:
        return np.zeros(len(df), dtype=np.int64), np.array([""], dtype=object)
    codes, uniques = pd.factorize(df[name], use_na_sentinel=False)
    values = np.array(["" if v is None or (isinstance(v, float) and v != v) else str(v) for v in uniques],
                      dtype=object)
    return codes, values


def _per_combination(codes: list[np.ndarray], fn: Callable[..., str]) -> np.ndarray:
    """``fn(*codes_of_one_row)`` once per distinct combination of codes, spread to all rows."""
    key = np.zeros(len(codes[0]), dtype=np.int64)
    for c in codes:  # one int per combination (mixed radix), then a hash factorize
        key = key * (int(c.max(initial=0)) + 1) + c
    inverse, distinct = pd.factorize(key)
    radices = [int(c.max(initial=0)) + 1 for c in codes]
    results = []
    for k in distinct:
        parts = []
        for radix in reversed(radices):
            k, r = divmod(int(k), radix)
            parts.append(r)
        results.append(fn(*reversed(parts)))
    return np.array(results, dtype=object)[inverse]


def display_titles(df: pd.DataFrame, source: str = "completejourney") -> pd.Series:
    """:func:`display_title` for every row, computed once per distinct code (92k rows:
    ~4k type/category pairs and ~4k sizes)."""
    if df.empty:
        return pd.Series([], index=df.index, dtype=object)
    if source not in CODED_SOURCES:
        return df["title"].astype(str).str.split().str.join(" ")
    lex = load_lexicon()
    t_codes, types = _strings(df, "product_type")
    d_codes, depts = _strings(df, "department")
    if "product_category" in df.columns:
        c_codes, cats = _strings(df, "product_category")
    else:
        p_codes, paths = _strings(df, "category")
        category = _per_combination([p_codes, t_codes, d_codes],
                                    lambda p, t, d: category_of(str(paths[p]), str(types[t]), str(depts[d])))
        c_codes, cats_index = pd.factorize(pd.Series(category, dtype=object))
        cats = np.asarray(cats_index, dtype=object)

    def name_of(t: int, c: int, d: int) -> str:
        return sentence_case(product_name(str(types[t]), str(cats[c]), str(depts[d]), lex), lex)

    names = _per_combination([t_codes, c_codes, d_codes], name_of)
    b_codes, brands = _strings(df, "brand")
    tiers = np.array([brand_tier(b, lex) for b in brands], dtype=object)[b_codes]
    s_codes, sizes = _strings(df, "size")
    sized = np.array([readable_size(x, lex) for x in sizes], dtype=object)[s_codes]
    out = [SEPARATOR.join(p for p in parts if p) for parts in zip(names, tiers, sized)]
    return pd.Series(out, index=df.index, dtype=object)


# --- bundle names -----------------------------------------------------------------------

_DANGLING = frozenset({"and", "or", "with", "for", "of", "the", "a", "an", "&", "+", "to", "in", "on", "-", "·"})


def cut_at_words(text: str, limit: int) -> str:
    """The longest run of whole words of single-spaced ``text`` within ``limit``
    characters, trailing ``,;:-&`` dropped; a first word longer than ``limit`` is cut.

    The plain cut behind bundle names (:func:`assistant.compose.cut_words`) and mined
    training names (:func:`assistant.llm.tuning.short_name`), which must stay within a
    schema's character limit; :func:`short_name` is the display cut, which never cuts a
    word and drops dangling connectors.
    """
    words, out = text.split(" "), ""
    for w in words:
        candidate = f"{out} {w}".strip()
        if len(candidate) > limit:
            break
        out = candidate
    return out.rstrip(",;:-&") or words[0][:limit]


def short_name(text: str, limit: int = 40, ellipsis: str = "") -> str:
    """``text`` cut to at most ``limit`` characters at a word boundary, never mid-word.

    Trailing connectors and punctuation ("Taco shells and", "Salsa,") go with the cut.
    A first word longer than ``limit`` is kept whole: a cut word is exactly the failure
    this exists to prevent ("Mexican Taco Tostado She bundle"). ``ellipsis`` is appended
    when something was cut (counted in the limit when there is room).
    """
    words = " ".join(str(text or "").split()).split(" ")
    if not words or words == [""]:
        return ""
    full = " ".join(words)
    if len(full) <= limit:
        return full
    budget = max(0, limit - len(ellipsis))
    kept: list[str] = []
    for word in words:
        candidate = " ".join([*kept, word])
        if len(candidate) > budget:
            break
        kept.append(word)
    while kept and (kept[-1].lower().strip(",;:") in _DANGLING or not re.search(r"\w", kept[-1])):
        kept.pop()
    if not kept:
        return words[0].rstrip(",;:")
    out = " ".join(kept).rstrip(",;:-·/ ")
    return out + ellipsis if ellipsis and len(out) + len(ellipsis) <= limit else out
