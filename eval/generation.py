"""The ``bundlerec-generation`` protocol: group each test session's items into bundles,
with the system (``BundleAssistant.bundle_items``) and with grouping baselines, and score
them at bundle level (Sun et al., SIGIR 2024) and at pair level (co-bundled item pairs),
and score every system's bundle names against the ground-truth intents (:mod:`eval.naming`:
MiniLM cosine, ROUGE-L; for the LLM variants also the names copied from the prompt and the
category-path names of the very same bundles, paired-tested).

Baselines (:mod:`eval.baselines`): ``leaf-category``, ``category-overlap`` (its threshold
chosen on the dev split), ``whole-session`` and ``rule-else-whole-session``. The main
metric is the per-session mean pair-level F1; every system variant is tested against
every baseline on it and on bundle precision and recall.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
from tqdm.auto import tqdm

from . import metrics as M
from .protocols import GenerationCase, Split, system_name

BASELINES = ("leaf-category", "category-overlap", "whole-session", "rule-else-whole-session")
MEASURES = ("precision", "recall", "pair_f1", "pair_precision", "pair_recall")
TESTED = ("precision", "recall", "pair_f1")
MAIN = "pair_f1"


def default_choices() -> dict[str, dict]:
    return {"category-overlap": {"threshold": 0.5}}


def _rule(assistant, case: GenerationCase) -> list:
    return list(assistant.bundle_items(list(case.items), use_llm=False, mode="rule").bundles)


def baseline_groupings(cases: Sequence[GenerationCase], assistant, choices: dict[str, dict],
                       seconds: dict[str, float], rule: dict[str, list] | None = None) -> dict[str, dict[str, list]]:
    """Every baseline's bundles per case; ``rule`` reuses the system's rule grouping when
    it has already been computed."""
    from .baselines import group_by_category_overlap, group_by_leaf_category, rule_else_whole_session, whole_session

    catalogue = assistant.index.catalogue
    max_size = assistant.settings.llm.max_bundle_size
    threshold = {**default_choices(), **choices}["category-overlap"]["threshold"]
    makers = {
        "leaf-category": lambda c: group_by_leaf_category(c.items, catalogue),
        "category-overlap": lambda c: group_by_category_overlap(c.items, catalogue, max_size=max_size,
                                                                threshold=threshold),
        "whole-session": lambda c: whole_session(c.items, catalogue),
        "rule-else-whole-session": lambda c: rule_else_whole_session(
            rule[c.case_id] if rule and c.case_id in rule else _rule(assistant, c), c.items, catalogue),
    }
    out: dict[str, dict[str, list]] = {}
    for name in BASELINES:
        start = time.perf_counter()
        out[name] = {c.case_id: makers[name](c) for c in cases}
        seconds[name] = round(time.perf_counter() - start, 2)
    return out


def run_generation(split: Split, assistant, variants: Sequence[str], llm_cases: int | None, seed: int,
                   progress: bool, choices: dict[str, dict] | None = None) -> dict:
    cases: list[GenerationCase] = split.cases
    n_llm = len(cases) if llm_cases is None else min(llm_cases, len(cases))
    predicted: dict[str, dict[str, list]] = {}
    reports: dict[str, list] = {}
    seconds: dict[str, float] = {}

    for variant in variants:
        name = system_name(variant)
        start = time.perf_counter()
        chosen = cases if variant == "rule" else cases[:n_llm]
        predicted[name], reports[name] = {}, []
        for case in tqdm(chosen, desc=name, disable=not progress, leave=False):
            grouping = assistant.bundle_items(list(case.items), use_llm=variant != "rule", mode=variant)
            predicted[name][case.case_id] = list(grouping.bundles)
            if variant != "rule":
                reports[name].append(grouping.llm)
        seconds[name] = round(time.perf_counter() - start, 2)
    base = baseline_groupings(cases, assistant, choices or {}, seconds, predicted.get(system_name("rule")))
    predicted = {**base, **predicted}

    catalogue = assistant.index.catalogue
    prompts = {}
    if any(v != "rule" for v in variants):
        from .naming import grouping_prompt

        max_size = assistant.settings.llm.max_bundle_size
        prompts = {c.case_id: grouping_prompt(c.items, catalogue, max_size)[2] for c in cases[:n_llm]}
    full = list(BASELINES) + [system_name(v) for v in variants if v == "rule" or n_llm == len(cases)]
    blocks = {"all": score_generation_block(predicted, reports, full, cases, seed, catalogue, prompts)}
    if n_llm < len(cases) and any(v != "rule" for v in variants):
        blocks["llm_subset"] = score_generation_block(
            predicted, reports, list(BASELINES) + [system_name(v) for v in variants], cases[:n_llm], seed,
            catalogue, prompts)
    sample = [
        {"session": c.case_id, "items": len(c.items),
         "ground_truth": [{"intent": intent, "size": len(b)} for intent, b in zip(c.intents, c.bundles)],
         "predicted": {s: [{"name": g.name, "size": len(g.item_ids),
                            "hit": any(set(g.item_ids) <= set(b) for b in c.bundles)}
                           for g in predicted[s][c.case_id]]
                       for s in predicted if c.case_id in predicted[s] and not s.startswith("rule-else")}}
        for c in cases[: min(8, n_llm)]
    ]
    return {"main_metric": {"level": "pair", "metric": MAIN}, "blocks": blocks, "sample": sample,
            "seconds": seconds}


def session_scores(pairs: Sequence[tuple[Sequence, Sequence]]) -> dict[str, list[float]]:
    """Per-session bundle and pair scores of ``(predicted, truth)`` sessions, in order."""
    sets = [M.session_bundle_scores(p, t) for p, t in pairs]
    pair = [M.session_pair_scores(p, t) for p, t in pairs]
    return {"precision": [x.precision for x in sets], "recall": [x.recall for x in sets],
            "matched_recall": [x.matched_recall for x in sets],
            "pair_precision": [x.precision for x in pair], "pair_recall": [x.recall for x in pair],
            "pair_f1": [x.f1 for x in pair]}


def score_generation_block(predicted: dict, reports: dict, systems: list[str],
                           cases: Sequence[GenerationCase], seed: int, catalogue=None,
                           prompts: dict[str, str] | None = None) -> dict:
    """Every system's bundle, pair and (with ``catalogue``) intent-name scores on ``cases``,
    and the paired tests. ``prompts`` (case id -> grouping prompt text) marks the LLM
    variants' names for the copied-from-prompt count and the category-path comparison."""
    from .completion import llm_summary
    from .naming import generation_names

    scores, per_session, names = {}, {}, {}
    n_truth = sum(len(c.bundles) for c in cases)
    for s in systems:
        pairs = [([g.item_ids for g in predicted[s][c.case_id]], c.bundles) for c in cases]
        agg = M.bundle_generation_metrics(pairs)
        pm = M.pair_metrics(pairs)
        per_session[s] = session_scores(pairs)
        found = [M.bundles_found(p, t) for p, t in pairs]
        groups = [g for c in cases for g in predicted[s][c.case_id]]
        shown = [i for c in cases for g in predicted[s][c.case_id] for i in g.item_ids]
        invented = sum(i not in set(c.items) for c in cases for g in predicted[s][c.case_id] for i in g.item_ids)
        row: dict = {m: {"mean": float(np.mean(per_session[s][m])),
                         "ci95": M.bootstrap_interval(per_session[s][m], seed)} for m in MEASURES}
        row["precision"]["mean"], row["recall"]["mean"] = agg["precision"], agg["recall"]
        row.update({
            "coverage": {"mean": agg["coverage"], "ci95": [None, None]},
            "matched_recall": agg["matched_recall"],
            "micro_pair_precision": pm["micro_pair_precision"],
            "micro_pair_recall": pm["micro_pair_recall"],
            "micro_pair_f1": pm["micro_pair_f1"],
            "found_exact": sum(e for e, _ in found) / n_truth,
            "found_jaccard50": sum(j for _, j in found) / n_truth,
            "hits": agg["hits"],
            "bundles_per_session": len(groups) / len(cases),
            "mean_bundle_size": float(np.mean([len(g.item_ids) for g in groups])) if groups else 0.0,
            "sessions_without_bundle": sum(not predicted[s][c.case_id] for c in cases),
            "invented_product_rate": invented / len(shown) if shown else 0.0,
        })
        if s in reports and reports[s]:
            ids = {c.case_id for c in cases}
            order = list(predicted[s])
            kept = [r for cid, r in zip(order, reports[s]) if cid in ids]
            row.update(llm_summary(kept))
        if catalogue is not None:
            llm_named = s in reports and bool(reports[s])
            names[s] = generation_names(predicted[s], cases, catalogue, seed, prompts if llm_named else None)
            own = names[s]["names"]
            row.update({"name_cosine": own["cosine"]["mean"], "name_rouge_l": own["rouge_l"]["mean"],
                        "names_copied": own["copied_from_prompt"] if llm_named else None})
            if not llm_named:
                own.pop("per_case")  # kept for the LLM variants only: runs are compared on them
        scores[s] = row
    baselines = [s for s in systems if not s.startswith("system:")]
    variants = [s for s in systems if s.startswith("system:")]
    best = max(baselines, key=lambda b: (scores[b][MAIN]["mean"], b)) if baselines else None
    tests = {s: {m: M.paired_summary(per_session[s][m], per_session[best][m], seed) for m in TESTED}
             for s in variants} if best else {}
    vs_each = {s: {b: {m: M.paired_summary(per_session[s][m], per_session[b][m], seed) for m in TESTED}
                   for b in baselines} for s in variants}
    rule = system_name("rule")
    vs_rule = {s: {m: M.paired_summary(per_session[s][m], per_session[rule][m], seed) for m in TESTED}
               for s in variants if s != rule and rule in systems}
    from .completion import vs_best

    return {"cases": len(cases), "systems": systems, "scores": scores,
            "ground_truth_mean_bundle_size": float(np.mean([len(b) for c in cases for b in c.bundles])),
            "ground_truth_bundles_per_session": n_truth / len(cases),
            "best_baseline": best,
            "baselines_by_main_metric": sorted(baselines, key=lambda b: (-scores[b][MAIN]["mean"], b)),
            "vs_best_baseline": vs_best(scores, tests, variants, best, MAIN),
            "tests_vs_best_baseline": tests, "tests_vs_each_baseline": vs_each, "tests_vs_rule": vs_rule,
            **({"names": names} if names else {})}


# The rule grouping's constants (assistant/grouping.py) are chosen from this grid on the dev
# split: the best mean pair F1 among settings whose bundle precision and recall are not
# below those of the reference setting (the constants before pair F1 existed).
GROUPING_NPMI_WEIGHTS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
GROUPING_THRESHOLDS = (0.1, 0.125, 0.15, 0.175, 0.2, 0.225, 0.25, 0.275, 0.3, 0.325, 0.35)
GROUPING_REFERENCE = {"npmi_weight": 0.5, "threshold": 0.3}
# The kit threshold and the whole-list fallback (assistant/grouping.py KIT_THRESHOLD,
# WHOLE_IF_NONE), chosen after the two constants above, by the same rule with "no kit, no
# fallback" as the reference.
KIT_THRESHOLDS = (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6)


def _grouping_scores(cases: Sequence[GenerationCase], make) -> dict[str, float]:
    pairs = [([g.item_ids for g in make(c)], c.bundles) for c in cases]
    sets = M.bundle_generation_metrics(pairs)
    return {"precision": sets["precision"], "recall": sets["recall"], "matched_recall": sets["matched_recall"],
            MAIN: M.pair_metrics(pairs)[MAIN]}


def tune_generation_baselines(split: Split, assistant) -> dict:
    """The category-overlap threshold with the best mean pair F1 on the (dev) sessions
    (a tie keeps the lower threshold), and the system rule grouping's dev grid."""
    from .baselines import OVERLAP_THRESHOLDS, group_by_category_overlap

    catalogue = assistant.index.catalogue
    max_size = assistant.settings.llm.max_bundle_size
    grid = []
    for t in OVERLAP_THRESHOLDS:
        pairs = [([g.item_ids for g in group_by_category_overlap(c.items, catalogue, max_size=max_size,
                                                                  threshold=t)], c.bundles) for c in split.cases]
        grid.append({"params": {"threshold": t}, MAIN: M.pair_metrics(pairs)[MAIN]})
    best = max(range(len(grid)), key=lambda i: (grid[i][MAIN], -i))
    return {"level": "pair", "metric": MAIN, "cases": len(split.cases),
            "choices": {"category-overlap": grid[best]["params"]}, "grid": {"category-overlap": grid},
            "system_rule_grouping": rule_grouping_grid(split.cases, assistant),
            "system_kit": kit_grid(split.cases, assistant)}


def best_feasible(grid: list[dict], reference: dict[str, float]) -> dict | None:
    """The params of the best mean pair F1 among grid points whose bundle precision and
    recall are at least the reference's (the earlier point wins a tie); None if none is."""
    feasible = [g for g in grid if g["precision"] >= reference["precision"] and g["recall"] >= reference["recall"]]
    return max(feasible, key=lambda g: (round(g[MAIN], 9), -grid.index(g)))["params"] if feasible else None


def kit_grid(cases: Sequence[GenerationCase], assistant) -> dict:
    """Dev scores of the system's rule grouping over kit thresholds (None: no kit) and the
    whole-list fallback, and the setting the documented rule picks."""
    def scores(t: float | None, whole: bool) -> dict[str, float]:
        return _grouping_scores(cases, lambda c: assistant.bundle_items(
            list(c.items), use_llm=False, mode="rule", kit_threshold=t, whole_if_none=whole).bundles)

    reference = scores(None, False)
    grid: list[dict] = [{"params": {"kit_threshold": t, "whole_if_none": w}, **scores(t, w)}
            for w in (False, True) for t in (None, *KIT_THRESHOLDS)]
    chosen = best_feasible(grid, reference)
    return {"reference": {"params": {"kit_threshold": None, "whole_if_none": False}, **reference},
            "chosen": chosen, "grid": grid,
            "rule": "max mean pair F1 with bundle precision and recall >= those without a kit or fallback"}


def rule_grouping_grid(cases: Sequence[GenerationCase], assistant) -> dict:
    """Dev scores of the rule grouping over (NPMI weight, threshold), and the setting the
    documented rule picks (see ``GROUPING_REFERENCE``); ``assistant/grouping.py`` holds it."""
    from assistant.grouping import Affinity, category_levels, rule_groups

    index = assistant.index
    catalogue = index.catalogue
    max_size = assistant.settings.llm.max_bundle_size
    paths = {i: category_levels(catalogue.at[i, "category"]) for c in cases for i in c.items}

    def scores(w: float, t: float) -> dict[str, float]:
        affinity = Affinity(index.copurchase.pair_npmi, paths, npmi_weight=w)
        return _grouping_scores(cases, lambda c: rule_groups(list(dict.fromkeys(c.items)), affinity, catalogue,
                                                             max_size=max_size, threshold=t))

    reference = scores(GROUPING_REFERENCE["npmi_weight"], GROUPING_REFERENCE["threshold"])
    grid: list[dict] = [{"params": {"npmi_weight": w, "threshold": t}, **scores(w, t)}
            for w in GROUPING_NPMI_WEIGHTS for t in GROUPING_THRESHOLDS]
    chosen = best_feasible(grid, reference)
    return {"reference": {"params": GROUPING_REFERENCE, **reference}, "chosen": chosen, "grid": grid,
            "rule": "max mean pair F1 with bundle precision and recall >= the reference's"}
