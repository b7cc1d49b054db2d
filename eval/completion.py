"""Completion protocols (``cj-completion``, ``bundlerec-completion``): run the baselines and
the system variants on the same cases, score them, compare each variant with the best
baseline, and (on the dev split) choose the tunable baselines' parameters.

Ranked lists. Every completion system hands in ``DEPTH`` (40) product ids. The system's
list is its bundles' items in rank order, then its remaining retrieval candidates in
retrieval order (anchors skipped). SKU-level metrics read the top 10; type-level metrics
read the first 10 distinct product types of the 40, leaving out the anchor's own type
(the anchor is given, and the target types exclude it too). MRR is therefore MRR@10.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
from tqdm.auto import tqdm

from retrieval.config import OBJECTIVE_COMPONENTS
from retrieval.schema import Constraints

from . import metrics as M
from .protocols import MAIN_METRIC, CompletionCase, Split, first_distinct, system_name

KS = (3, 5, 10)
CUTOFF = 10
DEPTH = 40
RECOMMEND_K = 10  # bundles asked for per case: more bundles, deeper bundle-ordered lists
MARGIN_WEIGHTS = (0.0, 0.2, 0.4, 0.6, 0.8)
LEVELS = {"cj-completion": ("type", "sku"), "bundlerec-completion": ("sku",)}


def system_ranking(rec, anchors: Sequence[str], depth: int = DEPTH) -> list[str]:
    """Bundle items in rank order, then the other retrieval candidates; anchors skipped."""
    ranked = [i.product_id for b in rec.bundles for i in b.items] + [c["product_id"] for c in rec.candidates]
    return first_distinct(ranked, anchors, depth)


def type_list(ranked: Sequence[str], type_of: dict[str, str], skip: Sequence[str], cutoff: int = CUTOFF) -> list[str]:
    """The first ``cutoff`` distinct product types of ``ranked``; unknown types and those in ``skip`` left out."""
    return first_distinct((type_of.get(pid, "") for pid in ranked), [*(t for t in skip if t), ""], cutoff)


def as_run(lists: dict[str, list[str]]) -> dict[str, dict[str, float]]:
    return {q: {d: float(len(docs) - r) for r, d in enumerate(docs)} for q, docs in lists.items()}


def objective_with_margin(base: dict[str, float], margin: float) -> dict[str, float]:
    """The default objective with the margin weight set to ``margin`` and the others
    scaled to fill the rest in their default proportions."""
    others = {k: v for k, v in base.items() if k != "margin"}
    total = sum(others.values())
    out = {k: (1.0 - margin) * v / total for k, v in others.items()}
    out["margin"] = margin
    return {k: out.get(k, 0.0) for k in OBJECTIVE_COMPONENTS}


def _pseudo_bundle_margin(anchors, ranked, catalogue, pricing, size: int = 3) -> float | None:
    """Margin after discount of anchors + the first items of a list (baselines show no
    bundle; this is the bundle their list implies, the system's default size)."""
    from assistant.pricing import price_bundle

    ids = list(anchors) + list(ranked[: max(1, size - len(anchors))])
    rows = catalogue.loc[ids]
    price = price_bundle(rows["price"].tolist(), rows["margin_rate"].tolist(), pricing)
    return price.margin_rate_after if price.price_known else None


class CompletionRunner:
    def __init__(self, protocol: str, split: Split, assistant, data, seed: int, progress: bool,
                 choices: dict[str, dict] | None = None):
        from .baselines import completion_baselines

        self.protocol = protocol
        self.cases: list[CompletionCase] = split.cases
        self.assistant = assistant
        self.data = data
        self.seed = seed
        self.progress = progress
        self.catalogue = assistant.index.catalogue
        self.priced = protocol == "cj-completion"
        self.baselines = completion_baselines(
            with_buy_again=protocol == "cj-completion",
            min_count=3 if protocol == "cj-completion" else 1, seed=seed, choices=choices)
        self.lists: dict[str, dict[str, list[str]]] = {}
        self.shown: dict[str, dict[str, list[str]]] = {}  # every id a system displayed
        self.margins: dict[str, dict[str, float]] = {}
        self.llm_reports: dict[str, list] = {}
        self.seconds: dict[str, float] = {}
        self.novelty_popularity: dict[str, float] = {}
        self.novelty_floor = 1.0
        self.llm_cases: list[CompletionCase] = []

    def constraints(self, case: CompletionCase) -> Constraints:
        if self.protocol == "bundlerec-completion":
            # "complete this bundle": one item more than the anchors
            return Constraints(max_bundle_size=len(case.anchors) + 1)
        return Constraints()

    def run_baselines(self) -> None:
        for name, rank in self.baselines.items():
            start = time.perf_counter()
            lists, margins = {}, {}
            for case in tqdm(self.cases, desc=name, disable=not self.progress, leave=False):
                lists[case.case_id] = rank(case, self.data, DEPTH)
                if self.priced:
                    m = _pseudo_bundle_margin(case.anchors, lists[case.case_id], self.catalogue,
                                              self.assistant.settings.pricing)
                    if m is not None:
                        margins[case.case_id] = m
            self.lists[name], self.shown[name], self.margins[name] = lists, dict(lists), margins
            self.seconds[name] = round(time.perf_counter() - start, 2)

    def run_variant(self, variant: str, cases: Sequence[CompletionCase], weights: dict | None = None,
                    name: str | None = None) -> str:
        name = name or system_name(variant)
        start = time.perf_counter()
        lists, shown, margins, reports = {}, {}, {}, []
        for case in tqdm(cases, desc=name, disable=not self.progress, leave=False):
            rec = self.assistant.recommend(
                user_id=case.user_id, anchors=case.anchors, constraints=self.constraints(case),
                k=RECOMMEND_K, use_llm=variant != "rule", mode=variant, weights=weights)
            lists[case.case_id] = system_ranking(rec, case.anchors)
            shown[case.case_id] = lists[case.case_id] + [i.product_id for b in rec.bundles for i in b.items]
            if rec.bundles and self.priced:
                margins[case.case_id] = rec.bundles[0].margin_rate
            if variant != "rule":
                reports.append(rec.llm)
        self.lists[name], self.shown[name], self.margins[name] = lists, shown, margins
        if reports:
            self.llm_reports[name] = reports
        self.seconds[name] = round(time.perf_counter() - start, 2)
        return name


def _qrels(cases: Sequence[CompletionCase], level: str) -> dict[str, dict[str, int]]:
    if level == "sku":
        return {c.case_id: {t: 1 for t in c.targets} for c in cases}
    return {c.case_id: {t: 1 for t in c.target_types} for c in cases if c.target_types}


def _level_lists(runner: CompletionRunner, system: str, cases, level: str, type_of) -> dict[str, list[str]]:
    lists = runner.lists[system]
    if level == "sku":
        return {c.case_id: lists[c.case_id][:CUTOFF] for c in cases}
    return {c.case_id: type_list(lists[c.case_id], type_of, c.anchor_types) for c in cases}


def _interval(values: Sequence[float], seed: int) -> list[float]:
    return M.bootstrap_interval(values, seed)


def paired(x: Sequence[float], y: Sequence[float], seed: int) -> dict:
    return M.paired_summary(x, y, seed)


def _tests(per: dict, system: str, control: str, metric_list: list[str], seed: int) -> dict:
    out = {}
    for m in metric_list:
        queries = list(per[control][m])
        out[m] = paired([per[system][m][q] for q in queries], [per[control][m][q] for q in queries], seed)
    return out


def score_completion_block(runner: CompletionRunner, systems: list[str], cases: Sequence[CompletionCase],
                           levels: Sequence[str], main: tuple[str, str], seed: int) -> dict:
    type_of = dict(zip(runner.assistant.index.products["product_id"],
                       runner.assistant.index.products["product_type"].astype(str)))
    block: dict = {"cases": len(cases), "systems": list(systems), "levels": {}}
    baselines = [s for s in systems if s in runner.baselines]
    variants = [s for s in systems if s.startswith("system:")]
    metric_list = M.metric_names(KS)
    for level in levels:
        qrels = _qrels(cases, level)
        runs = {s: as_run(_level_lists(runner, s, cases, level, type_of)) for s in systems}
        per = M.per_query_scores(qrels, runs, KS)
        scores: dict[str, dict[str, dict]] = {s: {m: {"mean": float(np.mean(list(per[s][m].values()))),
                          "ci95": _interval(list(per[s][m].values()), seed)} for m in metric_list}
                  for s in systems}
        main_metric = main[1]
        best = max(baselines, key=lambda b: (scores[b][main_metric]["mean"], b)) if baselines else None
        tests = {v: _tests(per, v, best, metric_list, seed) for v in variants} if best else {}
        llm_vs_rule = {v: _tests(per, v, system_name("rule"), metric_list, seed)
                       for v in variants if v != system_name("rule") and system_name("rule") in variants}
        block["levels"][level] = {"queries": len(next(iter(per.values()))[metric_list[0]]),
                                  "scores": scores, "best_baseline": best,
                                  "baselines_by_main_metric": sorted(
                                      baselines, key=lambda b: (-scores[b][main_metric]["mean"], b)),
                                  "vs_best_baseline": vs_best(scores, tests, variants, best, main_metric),
                                  "tests_vs_best_baseline": tests, "tests_vs_rule": llm_vs_rule}
    block["beyond_accuracy"] = beyond_accuracy(runner, systems, cases)
    return block


def vs_best(scores: dict, tests: dict, variants: Sequence[str], best: str | None, metric: str) -> dict:
    """Per system variant: the best baseline on ``metric``, both means, the ratio
    system / best and the paired tests' p-values (the headline comparison)."""
    if best is None:
        return {}
    out = {}
    for v in variants:
        x, y = scores[v][metric]["mean"], scores[best][metric]["mean"]
        t = tests[v][metric]
        out[v] = {"baseline": best, "metric": metric, "system": x, "best": y,
                  "ratio": x / y if y > 0 else None, "difference": x - y,
                  "t_test": t["t_test"], "randomisation": t["randomisation"]}
    return out


def beyond_accuracy(runner: CompletionRunner, systems: list[str], cases: Sequence[CompletionCase]) -> dict:
    index = runner.assistant.index
    products = index.products
    in_stock = int(products["in_stock"].fillna(False).astype(bool).sum())
    out = {}
    for s in systems:
        tops = [runner.lists[s][c.case_id][:CUTOFF] for c in cases]
        shown = [pid for c in cases for pid in runner.shown[s][c.case_id]]
        ild = [M.intra_list_diversity(index.item_embeddings[index.row_of[t].to_numpy()]) for t in tops if t]
        pop = runner.novelty_popularity
        # novelty() reads its whole mapping per call: hand it just this list's items
        nov = [M.novelty(t, {i: pop.get(i, 0.0) for i in t}, floor=runner.novelty_floor) for t in tops if t]
        margins = [runner.margins[s][c.case_id] for c in cases if c.case_id in runner.margins.get(s, {})]
        row = {
            "coverage@10": M.catalogue_coverage(tops, in_stock),
            "ild@10": float(np.mean(ild)) if ild else None,
            "novelty@10": float(np.mean(nov)) if nov else None,
            "expected_bundle_margin": M.expected_bundle_margin(margins) if margins else None,
            "budget_satisfaction": None,  # no case in these protocols carries a budget
            "invented_product_rate": M.invented_product_rate(shown, set(products["product_id"])) if shown else 0.0,
        }
        reports = runner.llm_reports.get(s)
        if reports:
            ids = {c.case_id for c in cases}
            kept = [r for c, r in zip(runner.llm_cases, reports) if c.case_id in ids]
            row.update(llm_summary(kept))
        out[s] = row
    return out


def llm_summary(reports: Sequence) -> dict:
    proposed = sum(r.proposed for r in reports)
    before = sum(r.valid_before_repair for r in reports)
    return {
        "llm_calls": len(reports),
        "llm_bundles_proposed": proposed,
        "llm_valid_output_rate": M.valid_output_rate(before, proposed) if proposed else 0.0,
        "llm_bundles_kept": sum(r.valid for r in reports),
        "llm_fallback_rate": float(np.mean([r.fallback for r in reports])) if reports else None,
    }


def run_completion(protocol: str, split: Split, assistant, data, variants: Sequence[str], llm_cases: int | None,
                   tradeoff_cases: int | None, seed: int, progress: bool,
                   choices: dict[str, dict] | None = None) -> dict:
    runner = CompletionRunner(protocol, split, assistant, data, seed, progress, choices)
    pairs = split.train.interactions[["user_id", "product_id"]].drop_duplicates()
    runner.novelty_popularity = M.item_popularity(zip(pairs["user_id"], pairs["product_id"]))
    # an item nobody bought in training counts as novel as the rarest bought one
    runner.novelty_floor = min(runner.novelty_popularity.values())
    runner.run_baselines()
    cases = split.cases
    n_llm = len(cases) if llm_cases is None else min(llm_cases, len(cases))
    runner.llm_cases = cases[:n_llm]
    for variant in variants:
        runner.run_variant(variant, cases if variant == "rule" else runner.llm_cases)
    levels = LEVELS[protocol]
    main = MAIN_METRIC[protocol]
    full_systems = list(runner.baselines) + [system_name(v) for v in variants
                                             if v == "rule" or n_llm == len(cases)]
    result: dict = {"main_metric": {"level": main[0], "metric": main[1]},
                    "blocks": {"all": score_completion_block(runner, full_systems, cases, levels, main, seed)}}
    if n_llm < len(cases) and any(v != "rule" for v in variants):
        subset = list(runner.baselines) + [system_name(v) for v in variants]
        result["blocks"]["llm_subset"] = score_completion_block(runner, subset, runner.llm_cases, levels, main, seed)
    if protocol == "cj-completion" and "rule" in variants:
        result["tradeoff"] = margin_tradeoff(runner, cases[: tradeoff_cases or len(cases)], seed)
    result["seconds"] = runner.seconds
    return result


def margin_tradeoff(runner: CompletionRunner, cases: Sequence[CompletionCase], seed: int) -> dict:
    """The rule variant under margin weights 0..0.8: type-level NDCG@10 against the mean
    margin of the top bundle."""
    base = runner.assistant.settings.objective.weights
    type_of = dict(zip(runner.assistant.index.products["product_id"],
                       runner.assistant.index.products["product_type"].astype(str)))
    points = []
    for w in MARGIN_WEIGHTS:
        name = runner.run_variant("rule", cases, objective_with_margin(base, w), name=f"tradeoff:margin={w:.1f}")
        qrels = _qrels(cases, "type")
        run = as_run(_level_lists(runner, name, cases, "type", type_of))
        per = M.per_query_scores(qrels, {name: run}, KS)[name]["ndcg@10"]
        margins = [runner.margins[name][c.case_id] for c in cases if c.case_id in runner.margins[name]]
        points.append({"margin_weight": w, "weights": objective_with_margin(base, w),
                       "ndcg@10": float(np.mean(list(per.values()))),
                       "ndcg@10_ci95": _interval(list(per.values()), seed),
                       "expected_bundle_margin": M.expected_bundle_margin(margins) if margins else None})
    return {"cases": len(cases), "level": "type", "points": points}




# --- choosing the tunable baselines' parameters (dev split only) -----------------------


def tune_baselines(protocol: str, split: Split, assistant, data, progress: bool = False) -> dict:
    """Try every parameter set of :func:`eval.baselines.tuning_grid` on the (dev) cases and
    keep, per baseline, the one with the best mean main metric; a tie keeps the earlier
    grid entry (the grids list simpler settings first). Returns the chosen parameters and
    every grid point's score."""
    from .baselines import tuned_ranking, tuning_grid

    level, metric = MAIN_METRIC[protocol]
    cases: list[CompletionCase] = split.cases
    products = assistant.index.products
    type_of = dict(zip(products["product_id"], products["product_type"].astype(str)))
    qrels = _qrels(cases, level)
    chosen: dict[str, dict] = {}
    grid_scores: dict[str, list[dict]] = {}
    for name, grid in tuning_grid(protocol).items():
        grid_scores[name] = []
        for params in tqdm(grid, desc=f"tuning {name}", disable=not progress, leave=False):
            rank = tuned_ranking(name, params)
            lists = {c.case_id: rank(c, data, DEPTH) for c in cases}
            if level == "sku":
                cut = {c.case_id: lists[c.case_id][:CUTOFF] for c in cases}
            else:
                cut = {c.case_id: type_list(lists[c.case_id], type_of, c.anchor_types) for c in cases}
            per = M.per_query_scores(qrels, {name: as_run(cut)}, KS)[name][metric]
            grid_scores[name].append({"params": params, metric: float(np.mean(list(per.values())))})
        best = max(range(len(grid_scores[name])), key=lambda i: (grid_scores[name][i][metric], -i))
        chosen[name] = grid_scores[name][best]["params"]
    return {"level": level, "metric": metric, "cases": len(cases), "choices": chosen, "grid": grid_scores}
