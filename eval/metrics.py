"""Offline evaluation metrics: ranking accuracy, significance, confidence intervals,
beyond-accuracy, business and bundle-generation metrics.

Every function states its definition and where it comes from. Item, query and system ids
are compared as strings everywhere (``str(x)``): ranx only accepts string ids, and a
catalogue loaded by pandas can hand back ``int`` ids that must still match ``"123"``.

Ranking metrics go through ranx (Bassani, "ranx: A Blazing-Fast Python Library for
Ranking Evaluation and Comparison", ECIR 2022). Things ranx does that we work around:

* A query that is in the qrels but missing from a run (or present with no documents) must
  score 0, not be dropped or trip ranx's "query ids do not match" assertion: we give every
  run every qrels query, empty where the system returned nothing.
* ``Run.from_dict`` crashes (``max()`` of an empty sequence) when no query has any
  document; such a system scores 0 on every query, so we skip ranx for it.
* ranx orders documents with an unstable ``argsort``, so equal scores may come back in any
  order. We break ties by document id (ascending) and hand ranx strictly decreasing scores,
  which makes every metric deterministic.
* ranx's Fisher randomisation test is not reproducible even with a fixed seed and one
  thread (numba ``parallel=True`` RNG; https://github.com/AmenRa/ranx/issues/70). The
  paired tests therefore run on ranx's per-query scores through SciPy: ``ttest_rel`` (the
  very call ranx's Student test makes) and a seeded ``permutation_test``.
* numba compiles ranx's kernels on first use and caches them on disk (ranx's
  ``__pycache__``, or ``NUMBA_CACHE_DIR``). Measured on 2 busy CPU cores: the first
  :func:`ranking_metrics` call in a fresh environment takes 30-45 s; in each later process
  importing ranx takes ~2.5 s and loading the cached kernels 4-8 s; after that a call
  takes about a millisecond. numba also compiles anew for every distinct length of the
  longest item id (ranx stores ids as ``<U{n}`` arrays), so item ids reach ranx as
  fixed-width codes and only one such compilation ever happens.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
from scipy import stats

if TYPE_CHECKING:
    import ranx

DEFAULT_KS: tuple[int, ...] = (3, 5, 10)
_CUTOFF_METRICS = ("hit_rate", "recall", "precision", "ndcg")

# Prices are rounded to cents; a bundle "at" the budget must not fail on float noise.
_PRICE_EPS = 1e-9

QrelsDict = Mapping[str, Mapping[str, int]]  # query -> doc -> graded relevance (>= 1 relevant)
RunDict = Mapping[str, Mapping[str, float]]  # query -> doc -> score (higher ranks first)


# ---------------------------------------------------------------------------------------
# Ranking metrics (ranx)
# ---------------------------------------------------------------------------------------


def metric_names(ks: Sequence[int] = DEFAULT_KS) -> list[str]:
    """ranx names of the metrics we report, e.g. ``["hit_rate@3", ..., "ndcg@10", "mrr"]``.

    * ``hit_rate@k``: 1 if any relevant item is in the top k, else 0.
    * ``recall@k``: relevant items in the top k / all relevant items of the query.
    * ``precision@k``: relevant items in the top k / k (k, not the list length).
    * ``ndcg@k``: DCG@k / ideal DCG@k with gain = graded relevance and discount
      ``1/log2(rank + 1)`` (Järvelin & Kekäläinen, "Cumulated gain-based evaluation of IR
      techniques", TOIS 2002; ranx's ``ndcg``, the trec_eval variant).
    * ``mrr``: 1 / rank of the first relevant item over the whole list, 0 if none
      (Voorhees, "The TREC-8 Question Answering Track Report", 1999).

    Each is averaged over queries by :func:`ranking_metrics`.
    """
    if not ks or any(not isinstance(k, int) or isinstance(k, bool) or k < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {ks!r}")
    return [f"{m}@{k}" for m in _CUTOFF_METRICS for k in ks] + ["mrr"]


def _clean_qrels(qrels: QrelsDict) -> dict[str, dict[str, int]]:
    """String ids, integer relevance, and only queries with at least one relevant item.

    A query with nothing relevant scores 0 for every system (recall is 0/0), so it carries
    no information and only shrinks every mean by the same factor: it is left out.
    """
    out: dict[str, dict[str, int]] = {}
    for qid, docs in qrels.items():
        cleaned: dict[str, int] = {}
        for doc, rel in docs.items():
            if isinstance(rel, bool) or not float(rel).is_integer():
                raise ValueError(f"relevance must be an integer, got {rel!r} ({qid}/{doc})")
            cleaned[str(doc)] = int(rel)
        if any(rel >= 1 for rel in cleaned.values()):
            out[str(qid)] = cleaned
    if not out:
        raise ValueError("no query in qrels has a relevant item (relevance >= 1)")
    return out


def _rank_scores(docs: Mapping[str, float]) -> dict[str, float]:
    """Strictly decreasing scores in (score desc, doc id asc) order, so ties are stable."""
    pairs = [(str(doc), float(score)) for doc, score in docs.items()]
    if any(not math.isfinite(score) for _, score in pairs):
        raise ValueError("run scores must be finite numbers")
    if len({doc for doc, _ in pairs}) != len(pairs):
        raise ValueError("duplicate document ids in a run (after converting ids to str)")
    pairs.sort(key=lambda pair: (-pair[1], pair[0]))
    n = len(pairs)
    return {doc: float(n - i) for i, (doc, _) in enumerate(pairs)}


def _complete_run(run: RunDict, qids: Sequence[str]) -> dict[str, dict[str, float]]:
    """The run restricted to the qrels queries, with an empty result for each missing one."""
    by_str = {str(qid): docs for qid, docs in run.items()}
    return {qid: _rank_scores(by_str.get(qid, {})) for qid in qids}


# ranx keeps item ids in numpy "<U{longest id}" arrays, and numba compiles its kernels
# again for every new width (5-15 s each on 2 cores before the on-disk cache has it). Items
# are therefore handed to ranx as fixed-width codes: one width, one compilation per machine.
_CODE_WIDTH = 12


def _encode(docs: Mapping[str, float], codes: dict[str, str]) -> dict[str, float]:
    return {codes.setdefault(doc, f"{len(codes):0{_CODE_WIDTH}d}"): v for doc, v in docs.items()}


def _system_scores(
    qrels: ranx.Qrels, qids: list[str], run: dict[str, dict[str, float]], metrics: list[str]
) -> dict[str, np.ndarray]:
    from ranx import Run, evaluate  # lazy: importing ranx loads numba (~2 s)

    if not any(run.values()):
        # Nothing retrieved anywhere: every metric is 0 on every query, and ranx's
        # Run.from_dict cannot build a run without a single document.
        return {m: np.zeros(len(qids)) for m in metrics}
    scores = evaluate(
        qrels, Run.from_dict(run), metrics, return_mean=False, save_results_in_run=False
    )
    if len(metrics) == 1:
        scores = {metrics[0]: scores}
    return {m: np.asarray(scores[m], dtype=float) for m in metrics}


def per_query_scores(
    qrels: QrelsDict, runs: Mapping[str, RunDict], ks: Sequence[int] = DEFAULT_KS
) -> dict[str, dict[str, dict[str, float]]]:
    """``{system: {metric: {query: score}}}`` for every query with a relevant item.

    A query the system returned nothing for scores 0; queries in a run but not in the
    qrels are ignored. See :func:`metric_names` for the metrics.
    """
    from ranx import Qrels  # lazy: importing ranx loads numba (~2 s)

    metrics = metric_names(ks)
    codes: dict[str, str] = {}
    ranx_qrels = Qrels.from_dict({q: _encode(d, codes) for q, d in _clean_qrels(qrels).items()})
    # ranx sorts query ids internally; its score arrays follow this order.
    qids = list(ranx_qrels.get_query_ids())
    out: dict[str, dict[str, dict[str, float]]] = {}
    for system, run in runs.items():
        encoded = {q: _encode(d, codes) for q, d in _complete_run(run, qids).items()}
        arrays = _system_scores(ranx_qrels, qids, encoded, metrics)
        out[str(system)] = {m: dict(zip(qids, arrays[m].tolist())) for m in metrics}
    return out


def ranking_metrics(
    qrels: QrelsDict, runs: Mapping[str, RunDict], ks: Sequence[int] = DEFAULT_KS
) -> dict[str, dict[str, float]]:
    """``{system: {metric: mean over queries}}`` for Hit@K, Recall@K, Precision@K, NDCG@K, MRR.

    ``qrels`` maps query -> item -> relevance (>= 1 is relevant); ``runs`` maps system ->
    query -> item -> score (higher is ranked first; ties go to the smaller item id).
    """
    per_query = per_query_scores(qrels, runs, ks)
    return {
        system: {m: float(np.mean(list(scores.values()))) for m, scores in by_metric.items()}
        for system, by_metric in per_query.items()
    }


# ---------------------------------------------------------------------------------------
# Significance and confidence intervals
# ---------------------------------------------------------------------------------------


def paired_p_value(
    treatment: Sequence[float],
    control: Sequence[float],
    test: Literal["student", "fisher"] = "student",
    n_permutations: int = 10_000,
    seed: int = 42,
) -> float:
    """Two-sided p-value that two systems' per-query scores (same query order) differ.

    * ``student``: paired Student t-test (``scipy.stats.ttest_rel``, as ranx uses).
    * ``fisher``: Fisher's randomisation test as in Smucker, Allan & Carterette, "A
      Comparison of Statistical Significance Tests for Information Retrieval Evaluation"
      (CIKM 2007): swap the two systems' scores on each query with probability 1/2 and
      count how often ``|mean difference|`` reaches the observed one. Seeded, and exact
      when ``2**n_queries <= n_permutations``; a sampled p-value is (count + 1) /
      (n_permutations + 1) and so never exactly 0.

    Identical score vectors give 1.0 (the t statistic would be 0/0).
    """
    x = np.asarray(treatment, dtype=float)
    y = np.asarray(control, dtype=float)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 2:
        raise ValueError("need two equally long 1-d score vectors with at least 2 queries")
    if np.array_equal(x, y):
        return 1.0
    if test == "student":
        return float(stats.ttest_rel(x, y).pvalue)
    if test == "fisher":
        result = stats.permutation_test(
            (x, y),
            lambda a, b, axis: np.abs(np.mean(a - b, axis=axis)),
            permutation_type="samples",
            vectorized=True,
            n_resamples=n_permutations,
            batch=1000,  # bounds memory at 1000 × n_queries floats per step
            alternative="greater",
            rng=np.random.default_rng(seed),
        )
        return float(result.pvalue)
    raise ValueError(f"test must be 'student' or 'fisher', got {test!r}")


def compare_systems(
    qrels: QrelsDict,
    runs: Mapping[str, RunDict],
    baseline: str,
    ks: Sequence[int] = DEFAULT_KS,
    test: Literal["student", "fisher"] = "student",
    n_permutations: int = 10_000,
    seed: int = 42,
) -> dict[str, dict[str, float]]:
    """``{system: {metric: p-value}}`` of each system against ``baseline``, paired by query.

    The per-query scores are ranx's (see :func:`per_query_scores`); the tests are
    :func:`paired_p_value`'s. No correction for multiple comparisons is applied.
    """
    per_query = per_query_scores(qrels, runs, ks)
    if baseline not in per_query:
        raise KeyError(f"baseline {baseline!r} is not among the runs {sorted(per_query)}")
    base = per_query[baseline]
    return {
        system: {
            m: paired_p_value(
                list(scores[m].values()), list(base[m].values()), test, n_permutations, seed
            )
            for m in scores
        }
        for system, scores in per_query.items()
        if system != baseline
    }


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    confidence: float
    method: str


def confidence_interval(
    scores: Iterable[float] | Mapping[str, float],
    confidence: float = 0.95,
    method: Literal["bootstrap", "t"] = "bootstrap",
    n_resamples: int = 10_000,
    seed: int = 0,
) -> Interval:
    """Confidence interval for the mean of per-query (or per-session) scores.

    * ``bootstrap``: percentile bootstrap over queries (Efron & Tibshirani, "An
      Introduction to the Bootstrap", 1993, ch. 13), seeded, via ``scipy.stats.bootstrap``.
      Percentile rather than BCa because BCa breaks down on the near-constant 0/1 score
      vectors that Hit@K produces on small query sets.
    * ``t``: mean ± t(n−1) · s/√n.

    All-equal scores give the point interval ``[mean, mean]``. Needs at least 2 scores.
    """
    values = np.asarray(
        list(scores.values()) if isinstance(scores, Mapping) else list(scores), dtype=float
    )
    if values.ndim != 1 or len(values) < 2:
        raise ValueError("need at least 2 scores for a confidence interval")
    if not np.all(np.isfinite(values)):
        raise ValueError("scores must be finite")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    mean = float(values.mean())
    if np.all(values == values[0]):
        return Interval(mean, mean, mean, confidence, method)
    if method == "bootstrap":
        result = stats.bootstrap(
            (values,),
            np.mean,
            n_resamples=n_resamples,
            confidence_level=confidence,
            method="percentile",
            vectorized=True,
            rng=np.random.default_rng(seed),
        )
        low, high = result.confidence_interval
    elif method == "t":
        low, high = stats.t.interval(
            confidence, df=len(values) - 1, loc=mean, scale=stats.sem(values)
        )
    else:
        raise ValueError(f"method must be 'bootstrap' or 't', got {method!r}")
    return Interval(mean, float(low), float(high), confidence, method)


# ---------------------------------------------------------------------------------------
# Beyond-accuracy metrics
# ---------------------------------------------------------------------------------------


def catalogue_coverage(recommended_lists: Iterable[Iterable[str]], catalogue_size: int) -> float:
    """Share of the catalogue recommended at least once: ``|∪ lists| / catalogue_size``.

    Catalogue coverage of Ge, Delgado-Battenfeld & Jannach, "Beyond accuracy: evaluating
    recommender systems by coverage and serendipity" (RecSys 2010). Items outside the
    catalogue must be removed first (see :func:`invented_product_rate`); more distinct
    items than the catalogue holds is an error.
    """
    if catalogue_size < 1:
        raise ValueError(f"catalogue_size must be >= 1, got {catalogue_size}")
    distinct = {str(item) for items in recommended_lists for item in items}
    if len(distinct) > catalogue_size:
        raise ValueError(f"{len(distinct)} distinct items but catalogue_size={catalogue_size}")
    return len(distinct) / catalogue_size


def intra_list_diversity(embeddings: np.ndarray | Sequence[Sequence[float]]) -> float:
    """``1 − mean pairwise cosine similarity`` of the items of one list (one row per item).

    Intra-list diversity with cosine distance (Ziegler, McNee, Konstan & Lausen, "Improving
    Recommendation Lists Through Topic Diversification", WWW 2005; in the form
    ``ILD = 1/(|R|(|R|−1)) Σ_{i≠j} (1 − cos(i, j))`` of Castells, Vargas & Wang, "Novelty
    and Diversity Metrics for Recommender Systems: Choice, Discovery and Relevance", DDR
    workshop at ECIR 2011). Range [0, 2]; [0, 1] for non-negative embeddings.

    A list with fewer than two items has no pairs: its diversity is defined as 0.0.
    A zero vector has no direction, so it raises.
    """
    vectors = np.asarray(embeddings, dtype=float)
    if vectors.ndim != 2:
        raise ValueError(f"embeddings must be 2-d (items × dims), got shape {vectors.shape}")
    n = vectors.shape[0]
    if n < 2:
        return 0.0
    norms = np.linalg.norm(vectors, axis=1)
    if np.any(norms == 0):
        raise ValueError("cosine similarity is undefined for a zero embedding")
    unit = vectors / norms[:, None]
    sims = unit @ unit.T
    mean_sim = sims[np.triu_indices(n, k=1)].mean()
    # Cosine of identical vectors can exceed 1 by an ulp; keep the result in range.
    return float(np.clip(1.0 - mean_sim, 0.0, 2.0))


def mean_intra_list_diversity(lists: Iterable[np.ndarray | Sequence[Sequence[float]]]) -> float:
    """Mean of :func:`intra_list_diversity` over lists (single-item lists count as 0.0)."""
    values = [intra_list_diversity(embeddings) for embeddings in lists]
    if not values:
        raise ValueError("no lists given")
    return float(np.mean(values))


def item_popularity(user_item_pairs: Iterable[tuple[str, str]]) -> dict[str, float]:
    """``p(i) = |users who interacted with i| / |users|`` from (user, item) pairs.

    The popularity of Zhou et al. 2010 (``k_i / u``); repeated pairs count once.
    """
    users_by_item: dict[str, set[str]] = {}
    users: set[str] = set()
    for user, item in user_item_pairs:
        users.add(str(user))
        users_by_item.setdefault(str(item), set()).add(str(user))
    if not users:
        raise ValueError("no interactions given")
    return {item: len(seen) / len(users) for item, seen in users_by_item.items()}


def novelty(
    items: Sequence[str], popularity: Mapping[str, float], floor: float | None = None
) -> float:
    """Mean self-information ``−log2 p(i)`` of the recommended items, in bits.

    Zhou et al., "Solving the apparent diversity-accuracy dilemma of recommender systems"
    (PNAS 2010): novelty ``= mean log2(u / k_i)``, where ``p(i) = k_i / u`` is the share of
    users who interacted with item i (see :func:`item_popularity`); the same quantity is
    the popularity-based novelty of Castells, Vargas & Wang (2011).

    Zeros: an item missing from ``popularity`` or with ``p(i) = 0`` would have infinite
    novelty, so its popularity is raised to ``floor``. By default ``floor`` is the smallest
    positive popularity in the mapping, i.e. ``1/u`` whenever some item was seen by a
    single user: an unseen item counts as novel as the rarest seen one.
    """
    if not items:
        raise ValueError("novelty of an empty list is undefined")
    values = {str(k): float(v) for k, v in popularity.items()}
    if any(not 0.0 <= v <= 1.0 for v in values.values()):
        raise ValueError("popularity values must be probabilities in [0, 1]")
    if floor is None:
        positive = [v for v in values.values() if v > 0]
        if not positive:
            raise ValueError("popularity has no positive value to floor zeros at; pass floor")
        floor = min(positive)
    if not 0.0 < floor <= 1.0:
        raise ValueError(f"floor must be in (0, 1], got {floor}")
    probs = np.array([max(values.get(str(item), 0.0), floor) for item in items])
    return float(np.mean(-np.log2(probs)))


# ---------------------------------------------------------------------------------------
# Business and reliability metrics
# ---------------------------------------------------------------------------------------


def expected_bundle_margin(
    bundle_margins: Iterable[float], weights: Sequence[float] | None = None
) -> float:
    """Mean margin rate after discount over the shown bundles, optionally weighted.

    The margin term ``R`` of the objective ``T = w_S·S + w_R·R + w_D·D`` (see
    MISSION.md); evaluating recommendations by the profit they carry follows Jannach &
    Adomavicius, "Price and Profit Awareness in Recommender Systems" (2017). Each value is
    one bundle's ``(price paid − cost) / price paid`` (e.g.
    ``assistant.pricing.BundlePrice.margin_rate_after``). ``weights`` (e.g. purchase
    probabilities or exposure) turn the plain mean into an expectation.
    """
    margins = np.asarray(list(bundle_margins), dtype=float)
    if margins.size == 0:
        raise ValueError("no bundles given")
    if not np.all(np.isfinite(margins)) or np.any(margins > 1.0):
        raise ValueError("margin rates must be finite and at most 1")
    if weights is None:
        return float(margins.mean())
    w = np.asarray(weights, dtype=float)
    if w.shape != margins.shape or np.any(w < 0) or not w.sum() > 0:
        raise ValueError("weights must be non-negative, one per bundle, with a positive sum")
    return float(np.average(margins, weights=w))


def _price_known(price: float | None) -> bool:
    return price is not None and math.isfinite(float(price))


def budget_satisfaction_rate(
    bundle_prices: Sequence[Sequence[float | None]], budgets: Sequence[float | None]
) -> float:
    """Share of cases with a budget in which every shown bundle costs at most the budget.

    One case = one answer: ``bundle_prices[c]`` are the prices of the bundles shown and
    ``budgets[c]`` the shopper's budget (``None``: no budget, case left out). An unknown
    price (``None`` or NaN) cannot be shown to respect the budget, so it fails the case.
    A case that shows no bundle breaks no budget and counts as satisfied; whether showing
    nothing is acceptable is measured elsewhere (hit rate, valid output rate). A hard
    constraint in the sense of constraint-based recommenders (Felfernig & Burke,
    "Constraint-based recommender systems: technologies and research issues", ICEC 2008);
    the rate itself is this project's definition.
    """
    if len(bundle_prices) != len(budgets):
        raise ValueError(f"{len(bundle_prices)} cases of prices but {len(budgets)} budgets")
    satisfied = 0
    with_budget = 0
    for prices, budget in zip(bundle_prices, budgets):
        if budget is None:
            continue
        with_budget += 1
        satisfied += all(
            p is not None and _price_known(p) and float(p) <= float(budget) + _PRICE_EPS for p in prices
        )
    if with_budget == 0:
        raise ValueError("no case has a budget")
    return satisfied / with_budget


def invented_product_rate(shown_item_ids: Iterable[str], catalogue_ids: Collection[str]) -> float:
    """Share of shown item slots whose id is not in the catalogue (hallucinated products).

    Counted per occurrence, so an invented id shown twice counts twice. Sun et al.,
    "Adaptive In-Context Learning with Large Language Models for Bundle Generation"
    (SIGIR 2024) flag such hallucinated items as an LLM failure mode; our system must
    score exactly 0.
    """
    catalogue = {str(i) for i in catalogue_ids}
    shown = [str(i) for i in shown_item_ids]
    if not shown:
        raise ValueError("no items shown")
    return sum(item not in catalogue for item in shown) / len(shown)


def valid_output_rate(n_valid_before_repair: int, n_proposed: int) -> float:
    """Share of LLM proposals that parsed and validated before any repair step.

    A reliability measure of structured generation (cf. Willard & Louf, "Efficient Guided
    Generation for Large Language Models", 2023, the method behind outlines; llguidance,
    used here, follows it).
    """
    if n_proposed < 1:
        raise ValueError(f"n_proposed must be >= 1, got {n_proposed}")
    if not 0 <= n_valid_before_repair <= n_proposed:
        raise ValueError(
            f"need 0 <= n_valid ({n_valid_before_repair}) <= n_proposed ({n_proposed})"
        )
    return n_valid_before_repair / n_proposed


# ---------------------------------------------------------------------------------------
# Bundle generation (Sun et al., SIGIR 2024)
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SessionBundleScore:
    precision: float  # hits / |P|
    recall: float  # hits / |G| (the paper's; can exceed 1, see session_bundle_scores)
    matched_recall: float  # share of G containing at least one hit, in [0, 1]
    hits: int
    coverage_sum: float  # Σ over hits of |p ∩ g| / |g|


def _as_bundle(items: Iterable[str]) -> frozenset[str]:
    return frozenset(str(i) for i in items)


def session_bundle_scores(
    predicted: Sequence[Iterable[str]], ground_truth: Sequence[Iterable[str]]
) -> SessionBundleScore:
    """Score one session's predicted bundles ``P`` against its ground-truth bundles ``G``.

    Definitions of Sun et al., "Adaptive In-Context Learning with Large Language Models
    for Bundle Generation" (SIGIR 2024), as implemented by the authors' ``compute`` in
    their AICL code:

    * a predicted bundle ``p`` is a *hit* if ``p ⊆ g`` for some ``g ∈ G``;
    * precision = hits / |P|, recall = hits / |G|;
    * each hit adds ``|p ∩ g| / |g|`` (= |p|/|g|) to the coverage sum.

    Choices where the definition is silent or the code differs:

    * Several ``g`` contain ``p``: we take the one with the largest ratio (the smallest
      such ``g``). The authors' code takes the first in list order, which depends on the
      order of the ground truth.
    * A bundle has at least two items (the task's definition). A predicted "bundle" of
      0 or 1 items still counts in |P| but is never a hit; the authors' code would let a
      single item inside a ground-truth bundle count.
    * Duplicate predicted bundles each count, as in the authors' code.
    * No predictions: precision = recall = 0 (the session still counts in the averages).

    The paper's recall counts hits, not ground-truth bundles found, so several predictions
    inside one ground-truth bundle (or duplicates) push it above 1: two pairs cut from one
    4-item bundle give recall 2/1. ``matched_recall`` — the share of ground-truth bundles
    that contain at least one hit — stays in [0, 1] and cannot be gamed that way; report it
    beside the paper's number.
    """
    gts = [_as_bundle(g) for g in ground_truth]
    if not gts or any(not g for g in gts):
        raise ValueError("a session needs at least one non-empty ground-truth bundle")
    hits = 0
    coverage_sum = 0.0
    matched: set[int] = set()
    for p in (_as_bundle(b) for b in predicted):
        if len(p) < 2:
            continue
        containing = [j for j, g in enumerate(gts) if p <= g]
        if containing:
            hits += 1
            coverage_sum += max(len(p) / len(gts[j]) for j in containing)  # p ∩ g = p
            matched.update(containing)
    n_pred = len(predicted)
    return SessionBundleScore(
        precision=hits / n_pred if n_pred else 0.0,
        recall=hits / len(gts),
        matched_recall=len(matched) / len(gts),
        hits=hits,
        coverage_sum=coverage_sum,
    )


def bundle_generation_metrics(
    sessions: Sequence[tuple[Sequence[Iterable[str]], Sequence[Iterable[str]]]],
) -> dict[str, float]:
    """Precision, recall and coverage of generated bundles over ``(predicted, truth)`` sessions.

    Precision and recall are averaged over sessions (macro), every session counting, also
    those with no prediction. Coverage, as in the authors' code, is pooled over all hits
    of all sessions (``Σ coverage_sum / Σ hits``), not averaged per session, so sessions
    without a hit do not enter it; it is 0.0 when there is no hit at all. Also returns
    ``matched_recall`` (macro, bounded by 1; see :func:`session_bundle_scores`) and the
    counts ``sessions`` and ``hits``. Per-session scores for confidence intervals:
    :func:`session_bundle_scores`.
    """
    if not sessions:
        raise ValueError("no sessions given")
    scores = [session_bundle_scores(pred, truth) for pred, truth in sessions]
    hits = sum(s.hits for s in scores)
    return {
        "precision": float(np.mean([s.precision for s in scores])),
        "recall": float(np.mean([s.recall for s in scores])),
        "matched_recall": float(np.mean([s.matched_recall for s in scores])),
        "coverage": sum(s.coverage_sum for s in scores) / hits if hits else 0.0,
        "sessions": len(scores),
        "hits": hits,
    }


# ---------------------------------------------------------------------------------------
# Bundle generation: co-bundled item pairs, and ground-truth bundles found
# ---------------------------------------------------------------------------------------


def bundle_pairs(bundles: Iterable[Iterable[str]]) -> set[frozenset[str]]:
    """Every unordered pair of items that share a bundle: a bundle of n distinct items gives
    its n(n−1)/2 pairs; a pair found in two bundles counts once."""
    out: set[frozenset[str]] = set()
    for bundle in bundles:
        items = sorted({str(i) for i in bundle})
        out.update(frozenset((a, b)) for k, a in enumerate(items) for b in items[k + 1:])
    return out


@dataclass(frozen=True)
class SessionPairScore:
    true_positives: int  # predicted pairs that are ground-truth pairs
    predicted: int  # distinct predicted pairs
    truth: int  # distinct ground-truth pairs
    precision: float  # tp / predicted (0 when nothing is predicted)
    recall: float  # tp / truth
    f1: float  # harmonic mean of the two (0 when both are 0)


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def session_pair_scores(
    predicted: Sequence[Iterable[str]], ground_truth: Sequence[Iterable[str]]
) -> SessionPairScore:
    """Pair-level precision, recall and F1 of one session (the project's definition).

    A grouping is read as the set of item pairs it puts in one bundle (as clusterings are
    compared by pair counting: Rand, "Objective criteria for the evaluation of clustering
    methods", JASA 1971). Unlike the bundle-level hit rate, where a 2-item bundle inside a
    ground-truth bundle counts as much as the whole bundle, a bundle here earns credit in
    proportion to the co-bundled pairs it gets right, and every wrong item costs the pairs
    it forms. No prediction: precision = recall = F1 = 0 (the session still counts).
    """
    truth = bundle_pairs(ground_truth)
    if not truth:
        raise ValueError("a session needs a ground-truth bundle of at least two items")
    pred = bundle_pairs(predicted)
    tp = len(pred & truth)
    precision = tp / len(pred) if pred else 0.0
    recall = tp / len(truth)
    return SessionPairScore(tp, len(pred), len(truth), precision, recall, _f1(precision, recall))


def pair_metrics(
    sessions: Sequence[tuple[Sequence[Iterable[str]], Sequence[Iterable[str]]]],
) -> dict[str, float]:
    """Pair-level scores over ``(predicted, truth)`` sessions.

    ``pair_precision`` / ``pair_recall`` / ``pair_f1``: per-session scores averaged over
    sessions (macro; what the paired tests compare). ``micro_pair_*``: pooled over every
    session's pairs (Σ tp / Σ predicted, Σ tp / Σ truth), so a session contributes in
    proportion to its pairs and one small lucky bundle cannot lift the figure the way it
    lifts a per-session mean.
    """
    if not sessions:
        raise ValueError("no sessions given")
    scores = [session_pair_scores(p, t) for p, t in sessions]
    tp = sum(s.true_positives for s in scores)
    n_pred = sum(s.predicted for s in scores)
    n_true = sum(s.truth for s in scores)
    micro_p = tp / n_pred if n_pred else 0.0
    micro_r = tp / n_true
    return {
        "pair_precision": float(np.mean([s.precision for s in scores])),
        "pair_recall": float(np.mean([s.recall for s in scores])),
        "pair_f1": float(np.mean([s.f1 for s in scores])),
        "micro_pair_precision": micro_p,
        "micro_pair_recall": micro_r,
        "micro_pair_f1": _f1(micro_p, micro_r),
    }


def jaccard(a: Iterable[str], b: Iterable[str]) -> float:
    x, y = _as_bundle(a), _as_bundle(b)
    return len(x & y) / len(x | y) if x or y else 0.0


def bundles_found(
    predicted: Sequence[Iterable[str]], ground_truth: Sequence[Iterable[str]], min_jaccard: float = 0.5
) -> tuple[int, int]:
    """(ground-truth bundles some prediction equals exactly, ground-truth bundles some
    prediction overlaps with Jaccard >= ``min_jaccard``) for one session."""
    preds = [_as_bundle(p) for p in predicted]
    exact = near = 0
    for g in (_as_bundle(b) for b in ground_truth):
        exact += any(p == g for p in preds)
        near += any(jaccard(p, g) >= min_jaccard for p in preds)
    return exact, near


# ---------------------------------------------------------------------------------------
# Summaries the eval reports per comparison
# ---------------------------------------------------------------------------------------


def paired_summary(x: Sequence[float], y: Sequence[float], seed: int) -> dict:
    """Paired t-test and randomisation test p-values, and the mean difference x − y
    (p-values are None with fewer than two cases: nothing to test)."""
    import warnings

    if len(x) < 2:
        return {"t_test": None, "randomisation": None, "mean_difference": float(np.mean(np.subtract(x, y)))}
    with warnings.catch_warnings():  # near-identical score vectors make scipy warn; p is still right
        warnings.simplefilter("ignore", RuntimeWarning)
        return {"t_test": paired_p_value(x, y, "student"),
                "randomisation": paired_p_value(x, y, "fisher", n_permutations=10_000, seed=seed),
                "mean_difference": float(np.mean(np.subtract(x, y)))}


def bootstrap_interval(values: Sequence[float], seed: int, n_resamples: int = 5000) -> list[float]:
    """[low, high] of the 95% percentile bootstrap CI; NaNs with fewer than two values."""
    if len(values) < 2:
        return [float("nan"), float("nan")]
    ci = confidence_interval(values, n_resamples=n_resamples, seed=seed)
    return [ci.low, ci.high]
