"""Run one offline evaluation protocol end to end and write its results.

``run_protocol`` loads the data, splits it (:mod:`eval.protocols`), builds the eval's own
index from the training part only (in its own folder under ``work_dir``), runs the
baselines (:mod:`eval.baselines`) and the system variants through
:class:`~assistant.service.BundleAssistant` — exactly the calls the app makes — on the
same cases, scores them (:mod:`eval.metrics`) and writes JSON, markdown and plots
(:mod:`eval.report`).

Ranked lists. Every completion system hands in ``DEPTH`` (40) product ids. The system's
list is its bundles' items in rank order, then its remaining retrieval candidates in
retrieval order (anchors skipped). SKU-level metrics read the top 10; type-level metrics
read the first 10 distinct product types of the 40, leaving out the anchor's own type
(the anchor is given, and the target types exclude it too). MRR is therefore MRR@10.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path

import numpy as np
from platformdirs import user_cache_dir
from tqdm.auto import tqdm

from retrieval.config import OBJECTIVE_COMPONENTS, Settings
from retrieval.schema import Constraints, Dataset

from . import metrics as M
from .protocols import CompletionCase, GenerationCase, Split, train_fingerprint

PROTOCOLS = ("cj-completion", "bundlerec-completion", "bundlerec-generation")
VARIANTS = ("rule", "llm", "llm+rule")
KS = (3, 5, 10)
CUTOFF = 10
DEPTH = 40
RECOMMEND_K = 10  # bundles asked for per case: more bundles, deeper bundle-ordered lists
MARGIN_WEIGHTS = (0.0, 0.2, 0.4, 0.6, 0.8)
LLM_TIMEOUT_S = 900.0  # measure the model, not a busy shared CPU (minutes per call under heavy load)
DEFAULT_CASES = {"cj-completion": 500, "bundlerec-completion": None, "bundlerec-generation": None}
DEFAULT_LLM_CASES = {"cj-completion": 100, "bundlerec-completion": 60, "bundlerec-generation": None}
DEFAULT_TRADEOFF_CASES = 200
MAIN_METRIC = {"cj-completion": ("type", "ndcg@10"), "bundlerec-completion": ("sku", "ndcg@10")}
VERSIONED = ("torch", "transformers", "accelerate", "sentence-transformers", "chromadb", "langchain-core",
             "outlines", "ranx", "numpy", "pandas", "scipy", "bundle-assistant")


def default_work_dir() -> Path:
    return Path(user_cache_dir("bundle-assistant")) / "eval"


def system_name(variant: str) -> str:
    return f"system:{variant}"


# --- provenance ---------------------------------------------------------------------


def git_commit() -> dict:
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": head or None, "dirty": bool(dirty)}


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


# --- the LLM, memoised --------------------------------------------------------------


class CachedLLM:
    """The real model, loaded on first use, with its structured answers memoised.

    Greedy decoding makes the answer a function of the prompt, so the ``llm+rule``
    variant — which sends the very prompt the ``llm`` variant sent — reuses it instead of
    generating again. Timed-out answers are not kept. ``seconds`` lists the time of every
    real generation (for the timings block)."""

    def __init__(self, model: str | None = None):
        self.model = model
        self._llm = None
        self._memo: dict[str, object] = {}
        self.seconds: list[float] = []

    @property
    def real(self):
        if self._llm is None:
            from assistant.llm import get_llm

            self._llm = get_llm(self.model)
        return self._llm

    @property
    def name(self) -> str:
        return self.real.name

    @property
    def device(self) -> str:
        return self.real.device

    def generate_structured(self, messages, output_type, **kwargs):
        key = json.dumps([list(messages), output_type.model_json_schema(), sorted(kwargs.items())],
                         sort_keys=True, default=str)
        if key in self._memo:
            return self._memo[key]
        start = time.perf_counter()
        result = self.real.generate_structured(messages, output_type, **kwargs)
        self.seconds.append(time.perf_counter() - start)
        if not result.timed_out:
            self._memo[key] = result
        return result

    def __getattr__(self, name):  # chat, stream, tokenizer, ...: the real model's
        return getattr(self.real, name)


# --- building the eval's own index --------------------------------------------------


def eval_settings(index_dir: Path, base: Settings | None = None) -> Settings:
    settings = (base or Settings()).model_copy(deep=True)
    settings.data_dir = Path(index_dir)
    settings.chroma_url = None  # the eval's index lives in its own folder, never a shared server
    settings.llm.timeout_s = max(settings.llm.timeout_s, LLM_TIMEOUT_S)
    return settings


def build_eval_index(train: Dataset, protocol: str, work_dir: Path, embedder, progress: bool,
                     base: Settings | None = None) -> tuple[Settings, dict]:
    """Build (or reuse) the index of ``train`` in ``work_dir/<protocol>-<hash of train>``.

    The folder name carries a hash of everything in the training data (extras included),
    so a different split can never pick up another split's statistics."""
    from assistant.privacy import pseudonymise
    from retrieval.index import build_index

    fp = train_fingerprint(train)
    settings = eval_settings(Path(work_dir) / f"{protocol}-{fp[:12]}", base)
    report = build_index(train, settings, embedder=embedder, progress=progress,
                         pseudonymise=lambda u: pseudonymise(u, data_dir=settings.data_dir))
    return settings, {"train_fingerprint": fp, "index_dir": str(settings.data_dir),
                      "reused": report.skipped, "seconds": report.seconds}


# --- completion -----------------------------------------------------------------------


def system_ranking(rec, anchors: Sequence[str], depth: int = DEPTH) -> list[str]:
    """Bundle items in rank order, then the other retrieval candidates; anchors skipped."""
    skip = set(anchors)
    out: list[str] = []
    for pid in [i.product_id for b in rec.bundles for i in b.items] + [c["product_id"] for c in rec.candidates]:
        if pid not in skip:
            out.append(pid)
            skip.add(pid)
    return out[:depth]


def type_list(ranked: Sequence[str], type_of: dict[str, str], skip: Sequence[str], cutoff: int = CUTOFF) -> list[str]:
    out: list[str] = []
    seen = {t for t in skip if t} | {""}
    for pid in ranked:
        t = type_of.get(pid, "")
        if t not in seen:
            out.append(t)
            seen.add(t)
            if len(out) >= cutoff:
                break
    return out


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
    def __init__(self, protocol: str, split: Split, assistant, data, seed: int, progress: bool):
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
            min_count=3 if protocol == "cj-completion" else 1, seed=seed)
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
    if len(values) < 2:
        return [float("nan"), float("nan")]
    ci = M.confidence_interval(values, n_resamples=5000, seed=seed)
    return [ci.low, ci.high]


def paired(x: Sequence[float], y: Sequence[float], seed: int) -> dict:
    """Paired t-test and randomisation test p-values, and the mean difference x − y
    (p-values are None with fewer than two cases: nothing to test)."""
    if len(x) < 2:
        return {"t_test": None, "randomisation": None, "mean_difference": float(np.mean(np.subtract(x, y)))}
    with warnings.catch_warnings():  # near-identical score vectors make scipy warn; p is still right
        warnings.simplefilter("ignore", RuntimeWarning)
        return {"t_test": M.paired_p_value(x, y, "student"),
                "randomisation": M.paired_p_value(x, y, "fisher", n_permutations=10_000, seed=seed),
                "mean_difference": float(np.mean(np.subtract(x, y)))}


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
        scores = {s: {m: {"mean": float(np.mean(list(per[s][m].values()))),
                          "ci95": _interval(list(per[s][m].values()), seed)} for m in metric_list}
                  for s in systems}
        main_metric = main[1]
        best = max(baselines, key=lambda b: (scores[b][main_metric]["mean"], b)) if baselines else None
        tests = {v: _tests(per, v, best, metric_list, seed) for v in variants} if best else {}
        llm_vs_rule = {v: _tests(per, v, system_name("rule"), metric_list, seed)
                       for v in variants if v != system_name("rule") and system_name("rule") in variants}
        block["levels"][level] = {"queries": len(next(iter(per.values()))[metric_list[0]]),
                                  "scores": scores, "best_baseline": best,
                                  "tests_vs_best_baseline": tests, "tests_vs_rule": llm_vs_rule}
    block["beyond_accuracy"] = beyond_accuracy(runner, systems, cases)
    return block


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
                   tradeoff_cases: int | None, seed: int, progress: bool) -> dict:
    runner = CompletionRunner(protocol, split, assistant, data, seed, progress)
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
    levels = ("type", "sku") if protocol == "cj-completion" else ("sku",)
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


# --- generation -----------------------------------------------------------------------


def run_generation(split: Split, assistant, variants: Sequence[str], llm_cases: int | None, seed: int,
                   progress: bool) -> dict:
    from .baselines import group_by_leaf_category

    cases: list[GenerationCase] = split.cases
    n_llm = len(cases) if llm_cases is None else min(llm_cases, len(cases))
    catalogue = assistant.index.catalogue
    predicted: dict[str, dict[str, list]] = {}
    reports: dict[str, list] = {}
    seconds: dict[str, float] = {}

    start = time.perf_counter()
    predicted["leaf-category"] = {c.case_id: group_by_leaf_category(c.items, catalogue) for c in cases}
    seconds["leaf-category"] = round(time.perf_counter() - start, 2)
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

    full = ["leaf-category"] + [system_name(v) for v in variants if v == "rule" or n_llm == len(cases)]
    blocks = {"all": score_generation_block(predicted, reports, full, cases, seed)}
    if n_llm < len(cases) and any(v != "rule" for v in variants):
        blocks["llm_subset"] = score_generation_block(
            predicted, reports, ["leaf-category"] + [system_name(v) for v in variants], cases[:n_llm], seed)
    sample = [
        {"session": c.case_id, "items": len(c.items),
         "ground_truth": [{"intent": intent, "size": len(b)} for intent, b in zip(c.intents, c.bundles)],
         "predicted": {s: [{"name": g.name, "size": len(g.item_ids),
                            "hit": any(set(g.item_ids) <= set(b) for b in c.bundles)}
                           for g in predicted[s][c.case_id]]
                       for s in predicted if c.case_id in predicted[s]}}
        for c in cases[: min(8, n_llm)]
    ]
    return {"main_metric": {"level": "bundle", "metric": "precision"}, "blocks": blocks, "sample": sample,
            "seconds": seconds}


def score_generation_block(predicted: dict, reports: dict, systems: list[str],
                           cases: Sequence[GenerationCase], seed: int) -> dict:
    scores, per_session = {}, {}
    for s in systems:
        pairs = [([g.item_ids for g in predicted[s][c.case_id]], c.bundles) for c in cases]
        agg = M.bundle_generation_metrics(pairs)
        sessions = [M.session_bundle_scores(p, t) for p, t in pairs]
        per_session[s] = {"precision": [x.precision for x in sessions], "recall": [x.recall for x in sessions]}
        groups = [g for c in cases for g in predicted[s][c.case_id]]
        shown = [i for c in cases for g in predicted[s][c.case_id] for i in g.item_ids]
        invented = sum(i not in set(c.items) for c in cases for g in predicted[s][c.case_id] for i in g.item_ids)
        row = {
            "precision": {"mean": agg["precision"], "ci95": _interval(per_session[s]["precision"], seed)},
            "recall": {"mean": agg["recall"], "ci95": _interval(per_session[s]["recall"], seed)},
            "coverage": {"mean": agg["coverage"], "ci95": [None, None]},
            "hits": agg["hits"],
            "bundles_per_session": len(groups) / len(cases),
            "mean_bundle_size": float(np.mean([len(g.item_ids) for g in groups])) if groups else 0.0,
            "sessions_without_bundle": sum(not predicted[s][c.case_id] for c in cases),
            "invented_product_rate": invented / len(shown) if shown else 0.0,
        }
        if s in reports and reports[s]:
            ids = {c.case_id for c in cases}
            order = [c.case_id for c in cases]
            kept = [r for cid, r in zip(order, reports[s]) if cid in ids]
            row.update(llm_summary(kept))
        scores[s] = row
    measures = ("precision", "recall")
    tests = {s: {m: paired(per_session[s][m], per_session["leaf-category"][m], seed) for m in measures}
             for s in systems if s != "leaf-category"}
    rule = system_name("rule")
    vs_rule = {s: {m: paired(per_session[s][m], per_session[rule][m], seed) for m in measures}
               for s in systems if s.startswith("system:") and s != rule and rule in systems}
    return {"cases": len(cases), "systems": systems, "scores": scores, "best_baseline": "leaf-category",
            "tests_vs_best_baseline": tests, "tests_vs_rule": vs_rule}


# --- the entry point --------------------------------------------------------------------


def load_split(protocol: str, data_dir: Path | None, cases: int | None, seed: int, limit: int | None) -> Split:
    from retrieval.sources import DEFAULT_BUNDLEREC, load_source

    from . import protocols as P

    if protocol == "cj-completion":
        ds = load_source("completejourney", limit=limit)
        raw = P.cj_raw_transactions(set(ds.interactions["user_id"]) if limit else None)
        return P.cj_completion(ds, raw, seed, cases)
    ds = load_source("bundlerec", data_dir or DEFAULT_BUNDLEREC, limit=limit)
    if protocol == "bundlerec-completion":
        return P.bundlerec_completion(ds, seed, cases)
    return P.bundlerec_generation(ds, seed, cases)


def run_protocol(
    protocol: str,
    *,
    data_dir: Path | str | None = None,
    cases: int | None = None,
    seed: int = 0,
    variants: Sequence[str] = VARIANTS,
    out: Path | str = Path("eval/results"),
    work_dir: Path | str | None = None,
    limit: int | None = None,
    llm_cases: int | None = -1,
    tradeoff_cases: int | None = -1,
    progress: bool = True,
    settings: Settings | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> dict:
    """Run ``protocol`` and write ``out/<protocol>.json``, ``.md`` and ``.png`` plots.

    ``cases`` caps the cases (default: 500 for cj-completion, every test bundle/session
    for BundleRec). ``llm_cases`` caps the cases the ``llm`` and ``llm+rule`` variants run
    on (a prefix of the cases; -1 means the protocol default, None means all).
    ``limit`` keeps the N lowest user ids of the source (a quick slice for tests).
    ``data_dir`` is the BundleRec-layout folder for the BundleRec protocols.
    """
    from assistant.service import BundleAssistant
    from retrieval.embeddings import Embedder

    from .baselines import BaselineData
    from .report import write_outputs

    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol '{protocol}'; expected one of {', '.join(PROTOCOLS)}")
    bad = [v for v in variants if v not in VARIANTS]
    if bad or not variants:
        raise ValueError(f"variants must be some of {', '.join(VARIANTS)}, got {list(variants)}")
    variants = [v for v in VARIANTS if v in variants]  # canonical order
    stage = on_stage or (lambda s: print(f"[eval {protocol}] {s}", file=sys.stderr, flush=True))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    cases = DEFAULT_CASES[protocol] if cases is None else cases
    llm_cases = DEFAULT_LLM_CASES[protocol] if llm_cases == -1 else llm_cases
    tradeoff_cases = DEFAULT_TRADEOFF_CASES if tradeoff_cases == -1 else tradeoff_cases

    stage("loading and splitting")
    split = load_split(protocol, Path(data_dir) if data_dir else None, cases, seed, limit)
    if not split.cases:
        raise ValueError(f"{protocol}: no evaluation case in this data (try a larger --limit)")
    timings["split"] = round(time.perf_counter() - t0, 2)

    stage(f"building the eval index from the training part ({len(split.train.products)} products)")
    t = time.perf_counter()
    work_dir = Path(work_dir) if work_dir else default_work_dir()
    embedder = Embedder(cache_dir=work_dir / "cache")
    eval_set, index_info = build_eval_index(split.train, protocol, work_dir, embedder, progress, settings)
    timings["index"] = round(time.perf_counter() - t, 2)
    assistant = BundleAssistant(eval_set, llm=CachedLLM(eval_set.llm.model), embedder=embedder)

    stage(f"running {len(split.cases)} cases: baselines and {', '.join(variants)}")
    t = time.perf_counter()
    if protocol == "bundlerec-generation":
        body = run_generation(split, assistant, variants, llm_cases, seed, progress)
    else:
        data = BaselineData.from_index(assistant.index, split.train.interactions)
        body = run_completion(protocol, split, assistant, data, variants, llm_cases,
                              tradeoff_cases, seed, progress)
    timings["systems"] = round(time.perf_counter() - t, 2)
    llm = assistant._llm
    if llm.seconds:
        timings["llm_generations"] = len(llm.seconds)
        timings["llm_mean_s"] = round(float(np.mean(llm.seconds)), 3)
    timings.update({f"system_{k}": v for k, v in body.pop("seconds").items()})
    timings["total"] = round(time.perf_counter() - t0, 2)

    n_llm = len(split.cases) if llm_cases is None else min(llm_cases, len(split.cases))
    result = {
        "protocol": protocol,
        "seed": seed,
        "git": git_commit(),
        "versions": versions(),
        "command": command_line(protocol, data_dir, cases, seed, variants, out, limit, llm_cases),
        "config": {
            "cases_requested": cases,
            "cases": len(split.cases),
            "llm_cases": n_llm if any(v != "rule" for v in variants) else 0,
            "variants": list(variants),
            "limit": limit,
            "data_dir": str(data_dir) if data_dir else None,
            "ks": list(KS),
            "cutoff": CUTOFF,
            "depth": DEPTH,
            "recommend_k": RECOMMEND_K,
            "settings": json.loads(eval_set.model_dump_json(exclude={"data_dir", "chroma_url"})),
        },
        "split": split.info,
        "index": {k: v for k, v in index_info.items() if k not in ("seconds", "reused", "index_dir")},
        **body,
        "timings": {**timings, "index_build": index_info["seconds"], "index_reused": index_info["reused"]},
    }
    result = _clean(result)
    write_outputs(result, Path(out))
    return result


def command_line(protocol, data_dir, cases, seed, variants, out, limit, llm_cases) -> str:
    parts = ["bundle-assistant eval", f"--protocol {protocol}"]
    if data_dir:
        parts.append(f"--data-dir {data_dir}")
    if cases:
        parts.append(f"--cases {cases}")
    parts += [f"--seed {seed}", f"--variants {','.join(variants)}"]
    if llm_cases is not None and llm_cases != DEFAULT_LLM_CASES[protocol]:
        parts.append(f"--llm-cases {llm_cases}")
    if limit:
        parts.append(f"--limit {limit}")
    parts.append(f"--out {out}")
    return " ".join(parts)


def _clean(value):
    """JSON-ready: numpy scalars to Python, floats rounded to 6 places, NaN to None."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.floating, float)):
        f = float(value)
        return None if f != f else round(f, 6)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value
