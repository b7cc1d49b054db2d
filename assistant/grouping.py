"""Group given products into bundles, each with a short intent name.

This is the task of Sun et al., "Adaptive In-Context Learning with Large Language Models
for Bundle Generation" (SIGIR 2024): from the items of one shopping session (or a
merchandiser's list), produce bundles — subsets of those items, size >= 2 — and name the
intent behind each. ``BundleAssistant.bundle_items`` calls :func:`bundle_items`.

Two proposers, as for recommendations, and one deterministic judge:

* ``rule``: average-linkage agglomerative clustering of the items on an *affinity* that
  mixes how often two items (or their product types) are bought together — NPMI from the
  index's co-purchase statistics — with how much of their category path they share.
  Clusters grow while the mean affinity between two clusters stays above
  ``RULE_THRESHOLD`` and the merged size stays within ``max_size``. Each cluster of >= 2
  items is a bundle, named after the deepest category its items share.
* ``llm``: the ``bundle_items`` prompt lists the items by number; llguidance constrains the
  answer to a JSON schema whose item ids can only be those numbers (the same
  :func:`~assistant.proposer.proposal_schema` as recommendations), so the model cannot
  invent a product. The answer is validated again (known numbers only, no repeats, size
  bounds) and repaired or dropped.
* ``llm+rule``: both pools, ranked by *coherence* (mean pairwise affinity), then picked
  greedily so that no item lands in two bundles.

In ``rule`` and ``llm+rule`` modes the bundles are *nested*, as people nest them: first
the *kit* (every item with a strong affinity to some other item; loners left out), then the
disjoint parts inside it. The LLM-only mode returns the model's own bundles.

Whatever the mode, every returned id is one of the given ids: the function checks it
before returning (an invented product would be a bug, not a model error).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import TYPE_CHECKING, Literal

import pandas as pd
from pydantic import BaseModel

from retrieval.candidates import Candidate

from .errors import ServiceError, UnknownProduct
from .proposer import ProposalReport, numbered, propose_with_llm

if TYPE_CHECKING:
    from .parts import AssistantParts

GroupMode = Literal["rule", "llm", "llm+rule"]
GROUP_MODES: tuple[str, ...] = ("rule", "llm", "llm+rule")

# Affinity = NPMI_WEIGHT·max(NPMI, 0) + (1 − NPMI_WEIGHT)·category overlap. Both constants
# were chosen on the bundlerec-generation DEV split (20% of the training sessions, seed 0;
# `bundle-assistant eval --protocol bundlerec-generation --split dev --tune-baselines`, grid
# in eval/generation.py): the best mean pair-level F1 among settings whose bundle precision
# and recall stay at least those of the earlier a-priori setting (0.5, 0.3). Dev: pair F1
# 0.442 -> 0.624, precision 0.758 -> 0.784, recall 0.724 -> 0.736.
NPMI_WEIGHT = 0.4
RULE_THRESHOLD = 0.15  # clusters merge while their mean affinity is at least this
# The kit: the given items that belong with at least one other (best affinity to another
# item >= KIT_THRESHOLD), offered as one bundle before its parts. Ground-truth bundles nest
# (in 74 of the 88 dev sessions with two or more bundles, one bundle holds another), so
# "the whole kit, then its parts" is the shape people give. KIT_THRESHOLD was chosen on the
# same dev split (grid in eval/generation.py: the best pair F1 whose bundle precision and
# recall are at least those of the grouping without a kit). A list longer than KIT_MAX
# items gets no kit: that many products is a shopping list, not a bundle.
# When neither a kit nor a part is found, WHOLE_IF_NONE offers the given items as one
# bundle rather than none (chosen on the same dev grid).
KIT_THRESHOLD = 0.3
KIT_MAX = 10
WHOLE_IF_NONE = True
MAX_ITEMS = 40  # the prompt lists at most this many items; more are grouped by rules only
NAME_MAX = 32


class ItemGroup(BaseModel):
    """One bundle made from the given items."""

    item_ids: tuple[str, ...]
    name: str
    source: Literal["llm", "rule", "kit"]
    coherence: float  # mean pairwise affinity in [0, 1]


@dataclass
class Grouping:
    """The bundles (iterate over it like a list) and what the LLM did."""

    bundles: list[ItemGroup]
    mode: str
    llm: ProposalReport = field(default_factory=ProposalReport)

    def __iter__(self) -> Iterator[ItemGroup]:
        return iter(self.bundles)

    def __len__(self) -> int:
        return len(self.bundles)

    def __getitem__(self, i: int) -> ItemGroup:
        return self.bundles[i]


# --- affinity ----------------------------------------------------------------------


def category_levels(path: str) -> list[str]:
    return [p.strip() for p in str(path or "").split(" > ") if p.strip()]


def category_overlap(a: Sequence[str], b: Sequence[str]) -> float:
    """Shared leading category levels over the deeper path's length, in [0, 1].

    A root level that every item shares (BundleRec's 'Electronics') still counts; it is
    small against deep paths, and a flat catalogue has nothing better to go by."""
    if not a or not b:
        return 0.0
    shared = 0
    for x, y in zip(a, b):
        if x != y:
            break
        shared += 1
    return shared / max(len(a), len(b))


@dataclass
class Affinity:
    """Pairwise affinity of catalogue items, from co-purchase NPMI and category paths."""

    pair_npmi: Callable[[str, str], float]
    paths: dict[str, list[str]]
    npmi_weight: float = NPMI_WEIGHT

    def __call__(self, a: str, b: str) -> float:
        npmi = min(1.0, max(0.0, float(self.pair_npmi(a, b))))
        cat = category_overlap(self.paths.get(a, []), self.paths.get(b, []))
        return self.npmi_weight * npmi + (1.0 - self.npmi_weight) * cat

    def coherence(self, ids: Sequence[str]) -> float:
        pairs = list(combinations(sorted(set(ids)), 2))
        return sum(self(a, b) for a, b in pairs) / len(pairs) if pairs else 0.0


def common_name(ids: Sequence[str], catalogue: pd.DataFrame) -> str:
    """The deepest category level all items share ('Batteries & Chargers'); when they
    share only the root, the two most common leaf categories ('Cases & Headphones')."""
    paths = [category_levels(catalogue.at[i, "category"]) for i in ids]
    common: list[str] = []
    for levels in zip(*paths):
        if len(set(levels)) != 1:
            break
        common.append(levels[0])
    if len(common) >= 2 or (common and all(len(p) == 1 for p in paths)):
        return common[-1].title()[:NAME_MAX]
    leaves = pd.Series([str(catalogue.at[i, "product_type"] or "") for i in ids])
    leaves = leaves[leaves != ""]
    if leaves.empty:
        return "Bundle"
    counts = leaves.value_counts()
    top = sorted(counts.index, key=lambda k: (-counts[k], k))[:2]
    return " & ".join(t.title() for t in top)[:NAME_MAX]


# --- proposers ---------------------------------------------------------------------


def rule_groups(
    ids: Sequence[str], affinity: Affinity, catalogue: pd.DataFrame, *,
    max_size: int, min_size: int = 2, threshold: float = RULE_THRESHOLD,
) -> list[ItemGroup]:
    """Average-linkage agglomerative clustering; ties break by the sorted member ids."""
    clusters: list[tuple[str, ...]] = [(i,) for i in sorted(set(ids))]
    sim = {(a, b): affinity(a, b) for a, b in combinations(sorted(set(ids)), 2)}

    def link(x: tuple[str, ...], y: tuple[str, ...]) -> float:
        return sum(sim[(a, b) if a < b else (b, a)] for a in x for b in y) / (len(x) * len(y))

    while True:
        best, best_key = None, None
        for x, y in combinations(clusters, 2):
            if len(x) + len(y) > max_size:
                continue
            value = link(x, y)
            key = (-round(value, 9), min(x + y), x, y)
            if value >= threshold and (best_key is None or key < best_key):
                best, best_key = (x, y), key
        if best is None:
            break
        x, y = best
        clusters = [c for c in clusters if c not in (x, y)] + [tuple(sorted(x + y))]
    groups = [
        ItemGroup(item_ids=c, name=common_name(c, catalogue), source="rule",
                  coherence=round(affinity.coherence(c), 6))
        for c in clusters if len(c) >= min_size
    ]
    return sorted(groups, key=lambda g: (-g.coherence, g.item_ids))


def default_bundle_count(n_items: int) -> int:
    """How many bundles a grouping of ``n_items`` asks for unless told: half the items,
    at least 1, at most 5."""
    return min(5, max(1, n_items // 2))


def prompt_rows(ids: Sequence[str], catalogue: pd.DataFrame) -> list[dict]:
    """The ``bundle_items`` prompt's numbered rows: the first ``MAX_ITEMS`` items."""
    return numbered([Candidate(i, 1.0, ["anchor"]) for i in ids[:MAX_ITEMS]], catalogue, MAX_ITEMS)


def llm_groups(
    assistant: AssistantParts, ids: Sequence[str], affinity: Affinity, *,
    n_bundles: int, max_size: int, min_size: int = 2,
) -> tuple[list[ItemGroup], ProposalReport]:
    cfg = assistant.settings.llm
    try:
        llm = assistant.llm
    except Exception as exc:  # a model that cannot load is a fallback, not a crash
        return [], ProposalReport(fallback=True, error=f"model failed to load: {exc}")
    shown = prompt_rows(ids, assistant.index.catalogue)
    given = set(ids)
    proposals = propose_with_llm(
        llm, "bundle_items", {}, shown, lambda pid: pid in given,
        n_bundles=n_bundles, min_size=min_size, max_size=max_size,
        max_new_tokens=cfg.max_new_tokens, timeout_s=cfg.timeout_s,
    )
    groups, seen = [], set()
    for b in proposals.bundles:
        key = tuple(sorted(b.item_ids))
        if key in seen:  # the same set twice is one bundle
            continue
        seen.add(key)
        name = b.name.strip() or common_name(b.item_ids, assistant.index.catalogue)
        groups.append(ItemGroup(item_ids=b.item_ids, name=name[:NAME_MAX], source="llm",
                                coherence=round(affinity.coherence(b.item_ids), 6)))
    return groups, proposals.report


def kit_of(ids: Sequence[str], affinity: Affinity, threshold: float | None = KIT_THRESHOLD) -> list[str]:
    """The items whose best affinity to another given item is at least ``threshold``, in
    the given order; [] when ``threshold`` is None or fewer than two items qualify."""
    if threshold is None or len(ids) > KIT_MAX:
        return []
    kit = [i for i in ids if max((affinity(i, j) for j in ids if j != i), default=0.0) >= threshold]
    return kit if len(kit) >= 2 else []


def with_kit(parts: list[ItemGroup], kit: Sequence[str], affinity: Affinity,
             catalogue: pd.DataFrame) -> list[ItemGroup]:
    """``parts`` after the kit bundle, unless a part already is the kit."""
    if not kit or any(set(p.item_ids) == set(kit) for p in parts):
        return parts
    whole = ItemGroup(item_ids=tuple(sorted(kit)), name=common_name(kit, catalogue), source="kit",
                      coherence=round(affinity.coherence(kit), 6))
    return [whole, *parts]


def select_disjoint(pool: Sequence[ItemGroup], n_bundles: int) -> list[ItemGroup]:
    """Most coherent first (LLM before rule on a tie), skipping any group that reuses an
    item already placed."""
    order = sorted(pool, key=lambda g: (-round(g.coherence, 9), g.source != "llm", tuple(sorted(g.item_ids))))
    used: set[str] = set()
    out = []
    for g in order:
        if used & set(g.item_ids):
            continue
        out.append(g)
        used |= set(g.item_ids)
        if len(out) >= n_bundles:
            break
    return out


# --- entry point -------------------------------------------------------------------


def bundle_items(
    assistant: AssistantParts,
    item_ids: Sequence[str],
    use_llm: bool = True,
    *,
    mode: GroupMode | None = None,
    n_bundles: int | None = None,
    max_size: int | None = None,
    min_size: int = 2,
    kit_threshold: float | None = KIT_THRESHOLD,
    whole_if_none: bool = WHOLE_IF_NONE,
) -> Grouping:
    """Group ``item_ids`` (catalogue ids) into bundles with intent names.

    ``mode`` defaults to ``llm+rule`` when ``use_llm`` else ``rule``. ``n_bundles``
    defaults to half the number of items (at least 1, at most 5); ``max_size`` to the
    LLM config's ``max_bundle_size``. In ``rule`` and ``llm+rule`` modes the rule
    clusters only the kit's items (:func:`kit_of`; all items when there is no kit), and
    the kit itself comes first, before its ``n_bundles`` disjoint parts: a shopper sees
    the whole set, then the smaller bundles inside it (the kit is not bound by ``max_size``;
    it holds at most ``KIT_MAX`` items). ``kit_threshold=None`` turns the
    kit off; ``whole_if_none`` returns all the items as one bundle when nothing else is
    found (lists of at most ``KIT_MAX`` items).
    """
    mode = mode or ("llm+rule" if use_llm else "rule")
    if mode not in GROUP_MODES:
        raise ServiceError(f"mode must be one of {', '.join(GROUP_MODES)}")
    ids = list(dict.fromkeys(str(i).strip() for i in item_ids if str(i).strip()))
    index = assistant.index
    unknown = [i for i in ids if i not in index.row_of.index]
    if unknown:
        raise UnknownProduct(f"unknown product(s): {', '.join(unknown)}")
    if len(ids) < min_size:
        raise ServiceError(f"need at least {min_size} distinct products to make a bundle, got {len(ids)}")
    max_size = max_size or assistant.settings.llm.max_bundle_size
    if max_size < min_size:
        raise ServiceError(f"max_size must be at least {min_size}")
    n_bundles = n_bundles or default_bundle_count(len(ids))
    catalogue = index.catalogue
    affinity = Affinity(index.copurchase.pair_npmi,
                        {i: category_levels(catalogue.at[i, "category"]) for i in ids})

    report = ProposalReport()
    pool: list[ItemGroup] = []
    if mode in ("llm", "llm+rule"):
        found, report = llm_groups(assistant, ids, affinity, n_bundles=n_bundles,
                                   max_size=max_size, min_size=min_size)
        pool += found
    kit = kit_of(ids, affinity, kit_threshold) if mode != "llm" else []
    if mode in ("rule", "llm+rule") or report.fallback:
        pool += rule_groups(kit or ids, affinity, catalogue, max_size=max_size, min_size=min_size)
    if mode == "llm" and not report.fallback:
        bundles = pool[:n_bundles]  # the model's own order and overlaps, as proposed
    else:
        bundles = with_kit(select_disjoint(pool, n_bundles), kit, affinity, catalogue)
        if not bundles and whole_if_none and len(ids) <= KIT_MAX:
            bundles = with_kit([], ids, affinity, catalogue)
    given = set(ids)
    stray = [i for b in bundles for i in b.item_ids if i not in given]
    if stray:  # the schema and the repair step make this impossible; fail loudly if not
        raise AssertionError(f"grouping returned products it was not given: {stray}")
    return Grouping(bundles=bundles, mode=mode, llm=report)

