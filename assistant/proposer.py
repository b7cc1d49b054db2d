"""Bundle proposals: from the LLM (constrained to the candidate numbers) and from rules.

Neither proposer is trusted: the LLM only ever sees numbered candidates and can only
answer with those numbers (llguidance enforces a ``Literal`` enum), its answer is then
validated again (ids exist, in stock, no duplicates, size bounds) and repaired or
dropped, and the reranker decides what is shown.
"""

from __future__ import annotations

import atexit
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import pandas as pd
from pydantic import BaseModel, Field, create_model

from prompts import fence, render
from retrieval.candidates import Candidate
from retrieval.schema import Constraints
from retrieval.titles import short_name

from .llm import ChatModel, LLMError, LLMTimeout
from .reranker import BundleCandidate

NAME_MAX = 32
REASON_MAX = 60
DEADLINE_GRACE_S = 0.25  # past the model's own time limit, before the call is abandoned
T = TypeVar("T")


def proposal_schema(numbers: list[str], n_bundles: int, min_size: int, max_size: int) -> type[BaseModel]:
    """A pydantic schema whose item ids can only be the candidate numbers in the prompt."""
    item_id: Any = Literal[tuple(numbers)]
    bundle: Any = create_model(
        "ProposedBundle",
        name=(str, Field(max_length=NAME_MAX)),
        item_ids=(list[item_id], Field(min_length=min_size, max_length=max_size)),
        reason=(str, Field(max_length=REASON_MAX)),
    )
    return create_model("Proposal", bundles=(list[bundle], Field(min_length=1, max_length=n_bundles)))


class ProposalReport(BaseModel):
    """What the LLM did: the proposers fill it in, and a recommendation shows it as its
    ``llm`` block (``assistant.service.LLMInfo`` is this record)."""

    used: bool = False  # the request asked the LLM to propose (mode llm or llm+rule)
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
    llm: ChatModel,
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
        result = within(timeout_s + DEADLINE_GRACE_S, lambda: llm.generate_structured(
            messages, schema, max_new_tokens=max_new_tokens, timeout_s=timeout_s))
        raw_bundles = _partial_bundles(result)
        report.new_tokens = int(result.new_tokens)
    except Exception as exc:  # LLMError, a hung or broken backend, an answer of the wrong type
        report.error = str(exc) if isinstance(exc, LLMError) else f"model error ({type(exc).__name__})"
        report.fallback = True
        report.latency_s = round(time.perf_counter() - start, 3)
        return Proposals([], report)
    report.latency_s = round(time.perf_counter() - start, 3)
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
        system = messages[0]["content"] if messages and messages[0]["role"] == "system" else ""
        out.append(BundleCandidate(item_ids=ids, source="llm",
                                   name=model_text(bundle.get("name", ""), NAME_MAX, system),
                                   llm_reason=model_text(bundle.get("reason", ""), REASON_MAX, system)))
    report.valid = len(out)
    report.fallback = not out
    return Proposals(out, report)


_workers: set[threading.Thread] = set()  # calls that within() stopped waiting for


@atexit.register
def _let_workers_finish(limit_s: float = 30.0) -> None:
    """At exit, give abandoned calls time to end: torch aborts the whole process when the
    interpreter tears down under a thread still inside it. The model stops itself at its
    own deadline, so only a truly stuck backend waits out the limit."""
    deadline = time.monotonic() + limit_s
    for worker in list(_workers):
        worker.join(max(0.0, deadline - time.monotonic()))


def within(seconds: float, call: Callable[[], T]) -> T:
    """``call()``, or :class:`LLMTimeout` once ``seconds`` pass. The model stops itself at
    its own deadline; this guards against a backend that never returns (a stuck kernel, a
    deadlock), whose thread is left behind as a daemon rather than holding the reply."""
    box: dict[str, object] = {}

    def work() -> None:
        try:
            box["result"] = call()
        except BaseException as exc:  # handed to the caller's thread below
            box["error"] = exc
        finally:
            _workers.discard(threading.current_thread())

    worker = threading.Thread(target=work, name="llm-call", daemon=True)
    _workers.add(worker)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise LLMTimeout(f"the model gave no answer within {seconds:.0f}s")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]  # type: ignore[return-value]


# Prices come from the catalogue only; model-written text that states one can only disagree.
_MONEY = re.compile(r"[$€£¥]|\d\s*%|\b(?:dollars?|usd|cents?|prices?|priced|costs?|discount(?:ed)?)\b"
                    r"|(?<!-)\bfree\b(?!-)", re.I)  # "for free", not "hands-free"
_DIET_FREE = re.compile(r"\b(?:gluten|dairy|sugar|fat|nut|lactose|egg|soy|caffeine|meat|alcohol|cage|range|"
                        r"grain|salt|sodium|cruelty)[- ]free\b", re.I)


def _shingles(text: str, n: int = 5) -> set[tuple[str, ...]]:
    words = re.findall(r"[a-z']+", text.lower())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def model_text(text: object, limit: int, system_prompt: str = "") -> str:
    """A model-written name or reason as the shopper may see it: fenced, and blank when it
    states a price or repeats five words in a row of the hidden system prompt."""
    value = fence(text, limit)
    if _MONEY.search(_DIET_FREE.sub(" ", value)) or _shingles(value) & _shingles(system_prompt):
        return ""
    return value


def _partial_bundles(result) -> list[dict]:
    """Bundles from a full parse, or the complete ones from JSON cut off by a limit."""
    if result.parsed is not None:
        return [b.model_dump() for b in result.parsed.bundles]
    import json
    import re

    found = []
    for match in re.finditer(r'\{"name":\s*"(?P<name>[^"]*)",\s*"item_ids":\s*\[(?P<ids>[^\]]*)\],'
                             r'\s*"reason":\s*"(?P<reason>[^"]*)"\s*\}',
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
    """Deterministic bundles that follow the item ranker's relevance (``Candidate.score``).

    The anchors and pinned products are in every bundle. Each bundle is seeded by the
    most relevant candidate no earlier bundle used, then grown with the most relevant
    candidate of a product type the bundle does not have yet, while the running list
    price stays under the budget. A candidate an
    earlier bundle already holds counts half its relevance, so the bundles, read in
    order, walk down the relevance list instead of repeating its head; equal relevance
    goes to the better mean NPMI with the bundle so far, then to the product id."""
    pool = [c for c in candidates if allowed(c.product_id)]
    anchors = [c.product_id for c in pool if c.reason == "anchor"]
    pinned = [p for p in constraints.pinned if p in catalogue.index]
    given = list(dict.fromkeys(pinned + anchors))
    ranked = sorted((c for c in pool if c.product_id not in given), key=lambda c: (-round(c.score, 9), c.product_id))
    price = {c.product_id: float(catalogue.at[c.product_id, "price"]) for c in pool}
    ptype = {c.product_id: str(catalogue.at[c.product_id, "product_type"]) for c in pool}
    for p in pinned:
        price.setdefault(p, float(catalogue.at[p, "price"]))
        ptype.setdefault(p, str(catalogue.at[p, "product_type"]))
    budget = constraints.budget
    bundles: list[BundleCandidate] = []
    seen: set[frozenset] = set()
    used: set[str] = set()
    # a seed may share a given product's type: the ranker learned when that is wanted
    # (a second lens for a camera kit) and when it is a mere substitute
    seeds: list[Candidate | None] = list(ranked) or ([None] if len(given) >= min_size else [])
    for seed in seeds:
        if len(bundles) >= n_bundles:
            break
        if seed is not None and seed.product_id in used:
            continue
        start = given + ([seed.product_id] if seed is not None else [])
        items = _grow(start, ranked, size, pair_npmi, price, ptype, budget, used)
        key = frozenset(items)
        if len(items) < min_size or key in seen:
            continue
        seen.add(key)
        used |= set(items)
        head = seed.product_id if seed is not None else items[0]
        title = str(catalogue.at[head, "product_type"] or catalogue.at[head, "title"])
        bundles.append(BundleCandidate(item_ids=tuple(items), source="rule",
                                       name=f"{short_name(title.title(), 24)} bundle", llm_reason=""))
    return bundles


def _grow(items: list[str], pool: list[Candidate], size: int, pair_npmi, price, ptype, budget,
          used: set[str] | None = None) -> list[str]:
    used = used or set()
    items = list(items)
    total = sum(p for p in (price.get(i, float("nan")) for i in items) if p == p)
    while len(items) < size:
        best: str | None = None
        best_score: tuple[float, float] | None = None
        types = {ptype.get(i) for i in items}
        for cand in pool:
            pid = cand.product_id
            # one of each product type; an unknown (empty) type is no type, or a catalogue
            # without categories could never grow a bundle past its seed
            if pid in items or (ptype.get(pid) and ptype.get(pid) in types):
                continue
            cost = price.get(pid, float("nan"))
            if budget is not None and (cost != cost or total + cost > budget):
                continue
            relevance = cand.score * (0.5 if pid in used else 1.0)
            if best_score is not None and round(relevance, 9) < best_score[0]:
                continue  # the NPMI tie-break below costs a pair lookup per bundle item
            fit = sum(pair_npmi(pid, i) for i in items) / len(items)
            score = (round(relevance, 9), round(fit, 9))
            if best is None or best_score is None or score > best_score or (score == best_score and pid < best):
                best, best_score = pid, score
        if best is None:
            break
        items.append(best)
        cost = price.get(best, float("nan"))
        total += cost if cost == cost else 0.0
    return items
