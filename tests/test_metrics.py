"""Metrics on tiny cases worked out by hand (the arithmetic is in the comments)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eval.metrics import (
    Interval,
    budget_satisfaction_rate,
    bundle_generation_metrics,
    catalogue_coverage,
    compare_systems,
    confidence_interval,
    expected_bundle_margin,
    intra_list_diversity,
    invented_product_rate,
    item_popularity,
    mean_intra_list_diversity,
    metric_names,
    novelty,
    paired_p_value,
    per_query_scores,
    ranking_metrics,
    session_bundle_scores,
    valid_output_rate,
)

LOG2_3 = math.log2(3)

# Two queries. q1: relevant {a, b}, ranked a, x, b. q2: relevant {c}, ranked y, c.
QRELS = {"q1": {"a": 1, "b": 1}, "q2": {"c": 1}}
RUN = {"q1": {"a": 0.9, "x": 0.8, "b": 0.7}, "q2": {"y": 0.5, "c": 0.4}}


# ----------------------------------------------------------------------------------------
# ranking metrics through ranx
# ----------------------------------------------------------------------------------------


def test_metric_names_cover_each_cutoff_and_mrr() -> None:
    assert metric_names((3, 5)) == [
        "hit_rate@3", "hit_rate@5", "recall@3", "recall@5",
        "precision@3", "precision@5", "ndcg@3", "ndcg@5", "mrr",
    ]
    with pytest.raises(ValueError):
        metric_names((0,))


def test_ranking_metrics_match_hand_computed_two_query_example() -> None:
    m = ranking_metrics(QRELS, {"sys": RUN}, ks=(1, 3))["sys"]
    # q1: DCG@3 = 1/log2(2) + 1/log2(4) = 1.5; IDCG@3 = 1 + 1/log2(3) = 1.63093
    #     NDCG@3 = 0.91972.  q2: DCG@3 = 1/log2(3) = 0.63093, IDCG = 1 -> 0.63093.
    ndcg_q1 = 1.5 / (1 + 1 / LOG2_3)
    ndcg_q2 = 1 / LOG2_3
    assert m["ndcg@3"] == pytest.approx((ndcg_q1 + ndcg_q2) / 2)  # 0.77533
    # NDCG@1: q1 top is relevant -> 1; q2 top is y -> 0.
    assert m["ndcg@1"] == pytest.approx(0.5)
    # MRR: q1 first relevant at rank 1 -> 1; q2 at rank 2 -> 1/2. Mean 0.75.
    assert m["mrr"] == pytest.approx(0.75)
    # Hit@1: q1 yes, q2 no -> 0.5. Hit@3: both -> 1.
    assert m["hit_rate@1"] == pytest.approx(0.5)
    assert m["hit_rate@3"] == pytest.approx(1.0)
    # Recall@1: q1 1/2, q2 0/1 -> 0.25. Recall@3: 2/2 and 1/1 -> 1.
    assert m["recall@1"] == pytest.approx(0.25)
    assert m["recall@3"] == pytest.approx(1.0)
    # Precision@3 divides by k, not by the list length: q1 2/3, q2 1/3 -> 0.5.
    assert m["precision@3"] == pytest.approx(0.5)


def test_ndcg_uses_graded_relevance_as_gain() -> None:
    # Relevance a=2, b=1; ranked b, a.
    # DCG = 1/log2(2) + 2/log2(3) = 2.26186; IDCG = 2 + 1/log2(3) = 2.63093 -> 0.85972.
    m = ranking_metrics({"q": {"a": 2, "b": 1}}, {"s": {"q": {"b": 2.0, "a": 1.0}}}, ks=(3,))
    assert m["s"]["ndcg@3"] == pytest.approx((1 + 2 / LOG2_3) / (2 + 1 / LOG2_3))


def test_query_with_no_results_scores_zero_instead_of_being_dropped() -> None:
    qrels = {**QRELS, "q3": {"d": 1}}
    runs = {
        "missing_q3": RUN,  # q3 not in the run at all
        "empty_q3": {**RUN, "q3": {}},  # q3 present, nothing retrieved
    }
    per = per_query_scores(qrels, runs, ks=(3,))
    for system in runs:
        assert per[system]["mrr"] == pytest.approx({"q1": 1.0, "q2": 0.5, "q3": 0.0})
    # The mean is over all three queries: (1 + 0.5 + 0) / 3 = 0.5, not 0.75.
    assert ranking_metrics(qrels, runs, ks=(3,))["missing_q3"]["mrr"] == pytest.approx(0.5)


def test_system_that_returns_nothing_at_all_scores_zero_everywhere() -> None:
    m = ranking_metrics(QRELS, {"sys": RUN, "mute": {}, "mute2": {"q1": {}, "q2": {}}})
    assert set(m["mute"]) == set(metric_names())
    assert all(v == 0.0 for v in m["mute"].values())
    assert m["mute2"] == m["mute"]
    assert m["sys"]["mrr"] == pytest.approx(0.75)


def test_queries_outside_qrels_or_without_relevant_items_are_left_out() -> None:
    qrels = {**QRELS, "q_none": {"z": 0}, "q_empty": {}}
    run = {**RUN, "q_extra": {"a": 1.0}, "q_none": {"z": 1.0}}
    per = per_query_scores(qrels, {"s": run}, ks=(3,))
    assert set(per["s"]["mrr"]) == {"q1", "q2"}
    with pytest.raises(ValueError):
        ranking_metrics({"q": {"a": 0}}, {"s": {"q": {"a": 1.0}}})


def test_ties_are_broken_by_item_id_whatever_the_insertion_order() -> None:
    # 20 items tied at score 1.0 (numpy's argsort is unstable above 16 elements).
    # Relevant "i07" sits at rank 8 by id order, so MRR = 1/8.
    ids = [f"i{n:02d}" for n in range(20)]
    qrels = {"q": {"i07": 1}}
    for order in (ids, ids[::-1]):
        run = {"q": {i: 1.0 for i in order}}
        assert ranking_metrics(qrels, {"s": run}, ks=(3,))["s"]["mrr"] == pytest.approx(1 / 8)
    # A strictly higher score still wins over the id order.
    run = {"q": {**{i: 1.0 for i in ids}, "i07": 1.5}}
    assert ranking_metrics(qrels, {"s": run}, ks=(3,))["s"]["mrr"] == pytest.approx(1.0)


def test_non_string_ids_are_compared_as_strings() -> None:
    m = ranking_metrics({1: {10: 1}}, {"s": {1: {20: 0.9, 10: 0.5}}}, ks=(3,))
    assert m["s"]["mrr"] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        ranking_metrics(QRELS, {"s": {"q1": {"a": float("nan")}}})


# ----------------------------------------------------------------------------------------
# significance tests
# ----------------------------------------------------------------------------------------


def _synthetic(n: int = 50) -> tuple[dict, dict]:
    """Per query: one relevant item. `good` ranks it first on 9 queries in 10, `base` on
    3 in 10 and otherwise third; `same` is `base` with scores rescaled.

    Item ids are 12 characters long like the codes eval.metrics hands ranx, so the direct
    ranx cross-check below reuses the same numba compilation instead of adding one."""
    qrels = {f"q{i:02d}": {f"relevant{i:04d}": 1} for i in range(n)}
    good, base, same = {}, {}, {}
    for i in range(n):
        q, rel = f"q{i:02d}", f"relevant{i:04d}"
        first = {rel: 3.0, "x": 2.0, "y": 1.0}
        third = {"x": 3.0, "y": 2.0, rel: 1.0}
        good[q] = first if i % 10 < 9 else third
        base[q] = first if i % 10 < 3 else third
        same[q] = {doc: 10 * s for doc, s in base[q].items()}
    return qrels, {"base": base, "good": good, "same": same}


@pytest.mark.parametrize("test", ["student", "fisher"])
def test_clearly_better_system_gets_small_p_value(test: str) -> None:
    qrels, runs = _synthetic()
    p = compare_systems(qrels, runs, baseline="base", ks=(1, 3), test=test)
    assert set(p) == {"good", "same"}
    assert all(0.0 <= v <= 1.0 for sys in p.values() for v in sys.values())
    # MRR: good 0.9·1 + 0.1·1/3 = 0.933, base 0.3 + 0.7/3 = 0.533, 50 paired queries.
    assert p["good"]["mrr"] < 1e-3
    assert p["good"]["hit_rate@1"] < 1e-3
    # Hit@3 is 1 for both on every query: no evidence of a difference.
    assert p["good"]["hit_rate@3"] == 1.0
    assert all(v == 1.0 for v in p["same"].values())


def test_fisher_p_value_is_reproducible_with_a_seed() -> None:
    rng = np.random.default_rng(3)
    x, y = rng.random(40), rng.random(40)
    a = paired_p_value(x, y, "fisher", n_permutations=2000, seed=11)
    assert a == paired_p_value(x, y, "fisher", n_permutations=2000, seed=11)
    assert 0.0 < a <= 1.0


def test_fisher_is_exact_on_small_samples() -> None:
    # Differences (1, 1, 1): of the 2^3 = 8 sign flips only all-plus and all-minus reach
    # |mean| = 1, so p = 2/8 = 0.25.
    assert paired_p_value([1, 1, 1], [0, 0, 0], "fisher") == pytest.approx(0.25)


def test_student_p_value_matches_ranx_compare() -> None:
    from ranx import Qrels, Run, compare

    qrels, runs = _synthetic()
    ours = compare_systems(qrels, runs, baseline="base", ks=(3,), test="student")["good"]
    report = compare(
        Qrels.from_dict(qrels),
        [Run.from_dict(runs["base"], name="base"), Run.from_dict(runs["good"], name="good")],
        ["mrr", "ndcg@3"],
        stat_test="student",
    )
    theirs = report.comparisons["base", "good"]
    assert ours["mrr"] == pytest.approx(theirs["mrr"]["p_value"])
    assert ours["ndcg@3"] == pytest.approx(theirs["ndcg@3"]["p_value"])


def test_compare_systems_rejects_unknown_baseline_and_test() -> None:
    qrels, runs = _synthetic(10)
    with pytest.raises(KeyError):
        compare_systems(qrels, runs, baseline="nope")
    with pytest.raises(ValueError):
        compare_systems(qrels, runs, baseline="base", test="wilcoxon")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------
# confidence intervals
# ----------------------------------------------------------------------------------------


def test_t_interval_matches_hand_computation() -> None:
    # [1..5]: mean 3, s = sqrt(2.5) = 1.58114, s/sqrt(5) = 0.70711, t(4, .975) = 2.77645
    # -> 3 ± 1.96324 = [1.03676, 4.96324].
    ci = confidence_interval([1, 2, 3, 4, 5], method="t")
    assert (ci.mean, ci.low, ci.high) == pytest.approx((3.0, 1.036757, 4.963243), abs=1e-5)


def test_bootstrap_interval_is_seeded_and_brackets_the_mean() -> None:
    scores = {f"q{i}": float(i % 2) for i in range(30)}  # mean 0.5
    a = confidence_interval(scores, seed=1)
    assert a == confidence_interval(scores, seed=1)
    assert isinstance(a, Interval) and a.method == "bootstrap"
    assert 0.0 <= a.low < 0.5 < a.high <= 1.0
    # Normal approximation: 0.5 ± 1.96·sqrt(0.25/30) = 0.5 ± 0.179.
    assert a.high - a.low == pytest.approx(0.358, abs=0.05)


def test_interval_edge_cases() -> None:
    point = confidence_interval([0.4, 0.4, 0.4])
    assert (point.mean, point.low, point.high) == pytest.approx((0.4, 0.4, 0.4))
    assert point.low == point.mean == point.high
    assert confidence_interval([0.4, 0.4], method="t").low == 0.4
    with pytest.raises(ValueError):
        confidence_interval([1.0])


# ----------------------------------------------------------------------------------------
# beyond-accuracy metrics
# ----------------------------------------------------------------------------------------


def test_catalogue_coverage() -> None:
    # Distinct {a, b, c} out of 10 -> 0.3.
    assert catalogue_coverage([["a", "b"], ["b", "c"], []], 10) == pytest.approx(0.3)
    assert catalogue_coverage([[1, 2]], 2) == 1.0
    with pytest.raises(ValueError):
        catalogue_coverage([["a", "b", "c"]], 2)


def test_intra_list_diversity() -> None:
    # (1,0), (0,1), (1,1): cosines 0, 1/√2, 1/√2 -> mean 0.47140 -> ILD 0.52860.
    three = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    expected = 1 - (2 / math.sqrt(2)) / 3
    assert intra_list_diversity(three) == pytest.approx(expected)
    # Length does not matter, only direction: (2,0) behaves like (1,0).
    assert intra_list_diversity(three * [[2.0], [1.0], [5.0]]) == pytest.approx(expected)
    assert intra_list_diversity([[1.0, 2.0]]) == 0.0  # single item: defined as 0
    assert intra_list_diversity([[1.0, 2.0], [2.0, 4.0]]) == pytest.approx(0.0)
    assert intra_list_diversity([[1.0, 0.0], [-1.0, 0.0]]) == pytest.approx(2.0)
    # Mean over lists: (0.52860 + 0) / 2 = 0.26430.
    assert mean_intra_list_diversity([three, [[3.0, 1.0]]]) == pytest.approx(expected / 2)
    with pytest.raises(ValueError):
        intra_list_diversity([[0.0, 0.0], [1.0, 0.0]])


def test_item_popularity_counts_distinct_users() -> None:
    # 4 users; a seen by all 4 (u1 twice), b by u1 only.
    pairs = [("u1", "a"), ("u1", "a"), ("u2", "a"), ("u3", "a"), ("u4", "a"), ("u1", "b")]
    assert item_popularity(pairs) == {"a": 1.0, "b": 0.25}


def test_novelty() -> None:
    pop = {"a": 0.5, "b": 0.25, "c": 0.0}
    # -log2(0.5) = 1, -log2(0.25) = 2 -> mean 1.5 bits.
    assert novelty(["a", "b"], pop) == pytest.approx(1.5)
    # c (zero) and d (unknown) floor at the smallest positive popularity 0.25 -> 2 bits.
    assert novelty(["c", "d"], pop) == pytest.approx(2.0)
    # An explicit floor of 1/8 (e.g. 1/num_users with 8 users) -> 3 bits.
    assert novelty(["c"], pop, floor=1 / 8) == pytest.approx(3.0)
    with pytest.raises(ValueError):
        novelty([], pop)
    with pytest.raises(ValueError):
        novelty(["a"], {"a": 2.0})


# ----------------------------------------------------------------------------------------
# business and reliability metrics
# ----------------------------------------------------------------------------------------


def test_expected_bundle_margin() -> None:
    assert expected_bundle_margin([0.2, 0.3, 0.4]) == pytest.approx(0.3)
    # Weighted (3, 1, 0): (0.6 + 0.3 + 0) / 4 = 0.225.
    assert expected_bundle_margin([0.2, 0.3, 0.4], weights=[3, 1, 0]) == pytest.approx(0.225)
    assert expected_bundle_margin([-0.05, 0.15]) == pytest.approx(0.05)  # a loss-maker counts
    for bad in ([], [1.2], [float("nan")]):
        with pytest.raises(ValueError):
            expected_bundle_margin(bad)


def test_budget_satisfaction_rate() -> None:
    prices = [[10.0, 20.0], [10.0, 30.0], [None], [5.0], [], [25.0], [float("nan"), 1.0]]
    budgets = [25.0, 25.0, 25.0, None, 10.0, 25.0, 50.0]
    # ok | 30 > 25 fails | unknown price fails | no budget, left out | nothing shown, ok |
    # exactly at budget, ok | NaN price fails  -> 3 of 6 cases with a budget = 0.5.
    assert budget_satisfaction_rate(prices, budgets) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        budget_satisfaction_rate([[1.0]], [None])
    with pytest.raises(ValueError):
        budget_satisfaction_rate([[1.0]], [1.0, 2.0])


def test_invented_product_rate() -> None:
    # x and y are not in the catalogue: 2 of 4 shown slots -> 0.5.
    assert invented_product_rate(["a", "x", "a", "y"], {"a", "b"}) == pytest.approx(0.5)
    assert invented_product_rate(["a", "b"], ["a", "b", "c"]) == 0.0
    assert invented_product_rate([7], ["7"]) == 0.0  # ids compared as strings
    with pytest.raises(ValueError):
        invented_product_rate([], {"a"})


def test_valid_output_rate() -> None:
    assert valid_output_rate(3, 4) == pytest.approx(0.75)
    for bad in ((1, 0), (5, 4), (-1, 4)):
        with pytest.raises(ValueError):
            valid_output_rate(*bad)


# ----------------------------------------------------------------------------------------
# bundle generation (Sun et al., SIGIR 2024)
# ----------------------------------------------------------------------------------------


def test_bundle_generation_metrics_on_hand_computed_sessions() -> None:
    sessions = [
        # G = {1,2,3,4}, {5,6}. {1,2} ⊆ g1 (ratio 2/4), {5,6} ⊆ g2 (2/2), {1,5} no,
        # {7} too small. hits 2: precision 2/4 = 0.5, recall 2/2 = 1, coverage sum 1.5.
        ([{1, 2}, {5, 6}, {1, 5}, {7}], [{1, 2, 3, 4}, {5, 6}]),
        # No prediction: precision 0, recall 0.
        ([], [{"a", "b", "c"}]),
        # {x,y} ⊆ both {x,y,z} (2/3) and {x,y} (2/2): the max, 1.0, counts.
        # precision 1/1, recall 1/2, coverage sum 1.0.
        ([{"x", "y"}], [{"x", "y", "z"}, {"x", "y"}]),
    ]
    m = bundle_generation_metrics(sessions)
    assert m["precision"] == pytest.approx((0.5 + 0 + 1) / 3)  # 0.5
    assert m["recall"] == pytest.approx((1 + 0 + 0.5) / 3)  # 0.5
    # Ground-truth bundles containing a hit: 2/2, 0/1, 2/2 (both contain {x,y}) -> 2/3.
    assert m["matched_recall"] == pytest.approx(2 / 3)
    assert m["coverage"] == pytest.approx((1.5 + 1.0) / 3)  # pooled over 3 hits: 0.83333
    assert (m["sessions"], m["hits"]) == (3, 3)


def test_bundle_match_does_not_depend_on_ground_truth_order() -> None:
    a = session_bundle_scores([{"x", "y"}], [{"x", "y", "z"}, {"x", "y"}])
    b = session_bundle_scores([{"x", "y"}], [{"x", "y"}, {"x", "y", "z"}])
    assert a == b
    assert a.coverage_sum == pytest.approx(1.0)


def test_paper_recall_counts_hits_so_fragments_push_it_above_one() -> None:
    # Two pairs cut from one 4-item bundle: 2 hits / |G| = 1 -> recall 2, but only one
    # ground-truth bundle is found -> matched_recall 1. Coverage sum 2/4 + 2/4 = 1.
    s = session_bundle_scores([{1, 2}, {3, 4}], [{1, 2, 3, 4}])
    assert (s.precision, s.recall, s.matched_recall, s.hits) == (1.0, 2.0, 1.0, 2)
    assert s.coverage_sum == pytest.approx(1.0)


def test_single_item_prediction_counts_in_p_but_never_hits() -> None:
    s = session_bundle_scores([{"1"}, {"1", "2"}], [{"1", "2", "3"}])
    # hits 1 of |P| = 2 -> precision 0.5; recall 1/1; coverage sum 2/3.
    assert (s.precision, s.recall, s.hits) == (0.5, 1.0, 1)
    assert s.coverage_sum == pytest.approx(2 / 3)


def test_bundle_metrics_without_any_hit_and_invalid_input() -> None:
    m = bundle_generation_metrics([([{"p", "q"}], [{"a", "b"}])])
    assert (m["precision"], m["recall"], m["coverage"], m["hits"]) == (0.0, 0.0, 0.0, 0)
    with pytest.raises(ValueError):
        bundle_generation_metrics([])
    with pytest.raises(ValueError):
        session_bundle_scores([{"a", "b"}], [])


_bundle = st.frozensets(st.integers(0, 8), min_size=2, max_size=4)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.lists(_bundle, max_size=4), st.lists(_bundle, min_size=1, max_size=3)),
        min_size=1,
        max_size=5,
    )
)
def test_bundle_metrics_stay_in_range_and_truth_scores_perfectly(sessions) -> None:
    m = bundle_generation_metrics(sessions)
    assert all(0.0 <= m[k] <= 1.0 for k in ("precision", "matched_recall", "coverage"))
    assert m["recall"] >= 0.0
    # Predicting exactly the ground truth hits every bundle with full coverage.
    perfect = bundle_generation_metrics([(truth, truth) for _, truth in sessions])
    assert perfect["precision"] == perfect["recall"] == perfect["matched_recall"] == 1.0
    assert perfect["coverage"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------------------
# pair-level generation metrics and ground-truth bundles found
# ----------------------------------------------------------------------------------------


def test_bundle_pairs_count_n_choose_2_and_dedupe() -> None:
    from eval.metrics import bundle_pairs

    assert len(bundle_pairs([["a", "b", "c", "d"]])) == 6
    assert bundle_pairs([["a", "b"], ["b", "a", "a"]]) == {frozenset("ab")}
    assert bundle_pairs([["a"]]) == set()


def test_a_single_small_bundle_wins_set_metrics_but_not_pair_f1() -> None:
    from eval.metrics import session_pair_scores

    truth = [["a", "b", "c", "d"]]  # 6 pairs
    small = [["a", "b"]]  # inside the truth: a hit
    big = [["a", "b", "c", "d", "e"]]  # all four plus one stray item: no hit
    assert session_bundle_scores(small, truth).precision == 1.0
    assert session_bundle_scores(small, truth).recall == 1.0
    assert session_bundle_scores(big, truth).precision == 0.0
    s, b = session_pair_scores(small, truth), session_pair_scores(big, truth)
    # small: 1 of 1 pair right, 1 of 6 found -> F1 = 2·1·(1/6)/(1 + 1/6) = 0.2857
    assert (s.precision, s.recall) == (1.0, pytest.approx(1 / 6)) and s.f1 == pytest.approx(2 / 7)
    # big: 6 of 10 pairs right, all 6 found -> F1 = 2·0.6·1/1.6 = 0.75
    assert (b.precision, b.recall, b.f1) == (pytest.approx(0.6), 1.0, pytest.approx(0.75))
    empty = session_pair_scores([], truth)
    assert (empty.precision, empty.recall, empty.f1, empty.truth) == (0.0, 0.0, 0.0, 6)


def test_micro_pair_precision_is_not_lifted_by_one_lucky_pair() -> None:
    from eval.metrics import pair_metrics

    sessions = [
        ([["a", "b"]], [["a", "b", "c"]]),  # one right pair
        ([["p", "q", "r", "s"]], [["p", "x"], ["q", "y"]]),  # six wrong pairs
    ]
    # set precision averages sessions: (1 + 0) / 2 = 0.5; so does the macro pair precision
    assert bundle_generation_metrics(sessions)["precision"] == 0.5
    m = pair_metrics(sessions)
    assert m["pair_precision"] == 0.5
    # pooled over pairs: 1 right of 7 predicted, 1 found of 3 + 2 = 5 true pairs
    assert m["micro_pair_precision"] == pytest.approx(1 / 7)
    assert m["micro_pair_recall"] == pytest.approx(1 / 5)
    assert m["micro_pair_f1"] == pytest.approx(2 * (1 / 7) * (1 / 5) / (1 / 7 + 1 / 5))
    # per session F1: 2·1·(1/3)/(4/3) = 0.5 and 0 -> 0.25
    assert m["pair_f1"] == pytest.approx(0.25)


def test_bundles_found_exact_and_by_jaccard() -> None:
    from eval.metrics import bundles_found, jaccard

    truth = [["a", "b", "c"], ["d", "e"], ["f", "g", "h", "i"]]
    pred = [["a", "b", "c"], ["d", "x"], ["f", "g", "h"]]
    assert jaccard(["d", "x"], ["d", "e"]) == pytest.approx(1 / 3)
    assert jaccard(["f", "g", "h"], ["f", "g", "h", "i"]) == pytest.approx(0.75)
    assert bundles_found(pred, truth) == (1, 2)
    assert bundles_found([], truth) == (0, 0)
