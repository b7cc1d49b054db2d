"""The one whole-word matcher: does a product's text mention a term?

Its own module so that the records (:mod:`retrieval.schema`) and the constraint owner
(:mod:`retrieval.filters`) can both use it without importing each other. The phrases
that shield a term (``not_a_hit``) live in ``retrieval/data/food_rules.json`` with the
rules, because both decide what an excluded word excludes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

RULES_FILE = Path(__file__).resolve().parent / "data" / "food_rules.json"


@lru_cache(maxsize=1)
def raw_rules() -> dict:
    """The rules file as parsed JSON, read once per process."""
    with RULES_FILE.open(encoding="utf-8") as fh:
        return json.load(fh)


# Phrases in which a term does not mean what was excluded ("PEANUT BUTTER" is not dairy,
# "ROOT BEER" is not alcohol). Data, with the rules: both decide what a word excludes.
NOT_A_HIT: dict[str, tuple[str, ...]] = {
    k.lower(): tuple(v) for k, v in raw_rules().get("not_a_hit", {}).items()
}


@lru_cache(maxsize=4096)
def _term_re(term: str) -> re.Pattern[str]:
    body = r"[\s-]+".join(re.escape(p) for p in term.lower().split())
    return re.compile(rf"(?<![a-z0-9]){body}(?:s|es)?(?![a-z0-9])")


def mentions(text: str, terms: Iterable[str]) -> str | None:
    """The first term that ``text`` mentions as a whole word, else None.

    "ham" does not hit "GRAHAM CRACKERS", "egg" does not hit "LEGGS", "nut" does not hit
    "NUTRITIONAL", and "PEANUT BUTTER" is not dairy (see :data:`NOT_A_HIT`).
    """
    lowered = text.lower()
    for term in terms:
        term = term.strip().lower()
        if not term:
            continue
        hits = [m.span() for m in _term_re(term).finditer(lowered)]
        if not hits:
            continue
        shields = [m.span() for phrase in NOT_A_HIT.get(term, ())
                   for m in _term_re(phrase).finditer(lowered)]
        if any(not any(s <= h0 and h1 <= e for s, e in shields) for h0, h1 in hits):
            return term
    return None
