"""Bundle proposals: from the LLM (constrained to the candidate numbers) and from rules.

Neither proposer is trusted: the LLM only ever sees numbered candidates and can only
answer with those numbers (outlines enforces a ``Literal`` enum), its answer is then
validated again (ids exist, in stock, no duplicates, size bounds) and repaired or
dropped, and the reranker decides what is shown.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Literal

import pandas as pd
from pydantic import BaseModel, Field, create_model

from prompts import fence, render
from retrieval.candidates import Candidate
from retrieval.schema import Constraints

from .llm import LLM, LLMError
from .reranker import BundleCandidate

NAME_MAX = 32
REASON_MAX = 60


def proposal_schema(numbers: list[str], n_bundles: int, min_size: int, max_size: int) -> type[BaseModel]:
    """A pydantic schema whose item ids can only be the candidate numbers in the prompt."""
    item_id = Literal[tuple(numbers)]  # type: ignore[valid-type]
    bundle = create_model(
        "ProposedBundle",
        name=(str, Field(max_length=NAME_MAX)),
        item_ids=(list[item_id], Field(min_length=min_size, max_length=max_size)),
        reason=(str, Field(max_length=REASON_MAX)),
    )
    return create_model("Proposal", bundles=(list[bundle], Field(min_length=1, max_length=n_bundles)))


@dataclass
class ProposalReport:
    """What the LLM did, for the ``llm`` block of a recommendation."""

    model: str = ""
    device: str = ""
    proposed: int = 0  # bundles in the LLM's answer
    valid_before_repair: int = 0  # of those, bundles that needed no repair
    valid: int = 0  # bundles kept after repair
    fallback: bool = False
    error: str = ""
    latency_s: float = 0.0
    new_tokens: int = 0


@dataclass
class Proposals:
    bundles: list[BundleCandidate] = field(default_factory=list)
    report: ProposalReport = field(default_factory=ProposalReport)


def _price_text(price: float) -> str:
    return f"${price:.2f}" if price == price and price > 0 else ""


def numbered(candidates: list[Candidate], catalogue: pd.DataFrame, limit: int) -> list[dict]:
    rows = []
    for number, cand in enumerate(candidates[:limit], start=1):
        row = catalogue.loc[cand.product_id]
        rows.append({
            "number": str(number),
            "product_id": cand.product_id,
            "title": fence(row["title"], 90),
            "price": _price_text(float(row["price"])),
        })
    return rows


def constraints_text(c: Constraints) -> str:
    parts = []
    if c.budget:
        parts.append(f"total under ${c.budget:.2f}")
    if c.servings:
        parts.append(f"serves {c.servings}")
    if c.exclude:
        parts.append("no " + ", ".join(fence(w, 30) for w in c.exclude[:8]))
    if c.min_margin is not None:
        parts.append(f"margin at least {c.min_margin:.0%}")
    return "; ".join(parts) or "none"


def repair(item_numbers: list[str], by_number: dict[str, str], allowed: Callable[[str], bool],
           min_size: int, max_size: int) -> tuple[tuple[str, ...] | None, bool]:
    """Map numbers to product ids, dropping unknown, disallowed and repeated ones.

    Returns (ids or None when too few are left, whether anything had to change)."""
    ids: list[str] = []
    for number in item_numbers:
        pid = by_number.get(str(number))
        if pid is None or pid in ids or not allowed(pid):
            continue
        ids.append(pid)
    changed = len(ids) != len(item_numbers) or len(ids) > max_size
    ids = ids[:max_size]
    return (tuple(ids) if len(ids) >= min_size else None), changed


def propose_with_llm(
    llm: LLM,
    template: str,
    values: dict,
    candidates: list[dict],
    allowed: Callable[[str], bool],
    *,
    n_bundles: int,
    min_size: int,
    max_size: int,
    max_new_tokens: int,
    timeout_s: float,
) -> Proposals:
    report = ProposalReport(model=llm.name, device=str(llm.device))
    by_number = {c["number"]: c["product_id"] for c in candidates}
    if len(by_number) < min_size:
        report.error = "too few candidates for the LLM"
        report.fallback = True
        return Proposals([], report)
    schema = proposal_schema(list(by_number), n_bundles, min_size, max_size)
    messages = render(template, candidates=candidates, n_bundles=n_bundles, max_size=max_size, **values)
    start = time.perf_counter()
    try:
        result = llm.generate_structured(messages, schema, max_new_tokens=max_new_tokens, timeout_s=timeout_s)
    except LLMError as exc:
        report.error, report.fallback = str(exc), True
        report.latency_s = round(time.perf_counter() - start, 3)
        return Proposals([], report)
    report.latency_s = round(time.perf_counter() - start, 3)
    report.new_tokens = result.new_tokens
    raw_bundles = _partial_bundles(result)
    if result.timed_out and not raw_bundles:
        report.error = f"LLM timed out after {timeout_s:.0f}s"
    elif not raw_bundles:
        report.error = "LLM output did not parse"
    report.proposed = len(raw_bundles)
    out = []
    for bundle in raw_bundles:
        ids, changed = repair(bundle["item_ids"], by_number, allowed, min_size, max_size)
        if ids is None:
            continue
        report.valid_before_repair += 0 if changed else 1
        out.append(BundleCandidate(item_ids=ids, source="llm", name=fence(bundle.get("name", ""), NAME_MAX),
                                   llm_reason=fence(bundle.get("reason", ""), REASON_MAX)))
    report.valid = len(out)
    report.fallback = not out
    return Proposals(out, report)


def _partial_bundles(result) -> list[dict]:
    """Bundles from a full parse, or the complete ones from JSON cut off by a limit."""
    if result.parsed is not None:
        return [b.model_dump() for b in result.parsed.bundles]
    import json
    import re

    found = []
    for match in re.finditer(r'\{"name":\s*"(?P<name>[^"]*)",\s*"item_ids":\s*\[(?P<ids>[^\]]*)\],\s*"reason":\s*"(?P<reason>[^"]*)"\s*\}',
                             result.raw):
        try:
            ids = json.loads("[" + match["ids"] + "]")
        except json.JSONDecodeError:
            continue
        found.append({"name": match["name"], "item_ids": [str(i) for i in ids], "reason": match["reason"]})
    return found


# --- rules --------------------------------------------------------------------------

def propose_with_rules(
    candidates: list[Candidate],
    catalogue: pd.DataFrame,
    pair_npmi: Callable[[str, str], float],
    allowed: Callable[[str], bool],
    *,
    constraints: Constraints,
    n_bundles: int,
    size: int,
    min_size: int = 2,
) -> list[BundleCandidate]:
    """Deterministic bundles grown greedily around seeds (anchors first, then query hits,
    then affinity items): each step adds the candidate with the highest mean NPMI to the
    bundle so far, of a product type the bundle does not have yet, while the running
    list price stays under the budget."""
    pool = [c for c in candidates if allowed(c.product_id)]
    # what the shopper asked for seeds bundles before what their history suggests
    order = {"anchor": 0, "semantic": 1, "affinity": 2}
    seeds = sorted((c for c in pool if c.reason in order), key=lambda c: order[c.reason]) or pool
    pinned = [p for p in constraints.pinned if p in catalogue.index]
    price = {c.product_id: float(catalogue.at[c.product_id, "price"]) for c in pool}
    ptype = {c.product_id: str(catalogue.at[c.product_id, "product_type"]) for c in pool}
    for p in pinned:
        price.setdefault(p, float(catalogue.at[p, "price"]))
        ptype.setdefault(p, str(catalogue.at[p, "product_type"]))
    budget = constraints.budget
    anchors = [c.product_id for c in pool if c.reason == "anchor"]
    bundles: list[BundleCandidate] = []
    seen: set[frozenset] = set()
    for seed in seeds:
        if len(bundles) >= n_bundles:
            break
        start = list(dict.fromkeys(pinned + anchors + [seed.product_id]))
        items = _grow(start, pool, size, pair_npmi, price, ptype, budget)
        key = frozenset(items)
        if len(items) < min_size or key in seen:
            continue
        seen.add(key)
        title = str(catalogue.at[seed.product_id, "product_type"] or catalogue.at[seed.product_id, "title"])
        bundles.append(BundleCandidate(item_ids=tuple(items), source="rule",
                                       name=f"{title.title()[:24]} bundle", llm_reason=""))
    return bundles


def _grow(items: list[str], pool: list[Candidate], size: int, pair_npmi, price, ptype, budget) -> list[str]:
    items = list(items)
    total = sum(p for p in (price.get(i, float("nan")) for i in items) if p == p)
    while len(items) < size:
        best, best_score = None, None
        for cand in pool:
            pid = cand.product_id
            if pid in items or ptype.get(pid) in {ptype.get(i) for i in items}:
                continue
            cost = price.get(pid, float("nan"))
            if budget is not None and (cost != cost or total + cost > budget):
                continue
            fit = sum(pair_npmi(pid, i) for i in items) / len(items)
            score = (round(fit, 9), round(cand.score, 9))
            if best_score is None or score > best_score or (score == best_score and pid < best):
                best, best_score = pid, score
        if best is None:
            break
        items.append(best)
        cost = price.get(best, float("nan"))
        total += cost if cost == cost else 0.0
    return items
