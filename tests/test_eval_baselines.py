"""Baselines on hand-made baskets (the arithmetic is in the comments), the grouping
baselines, the dev grids and choices, and the best-baseline comparison."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from eval import baselines as B
from eval.completion import vs_best
from eval.protocols import CompletionCase
from eval.report import headline
from eval.run import read_choices, write_choices
from retrieval.copurchase import CoPurchase

# Six baskets. u2: {A,B} {A,B} {A,C}; u1: {D} {C,D} {A}.
# n(A)=4, n(B)=2, n(C)=2, n(D)=2, N=6; n(A,B)=2, n(A,C)=1, n(C,D)=1.
BASKETS = [("b1", "u2", "AB"), ("b2", "u2", "AB"), ("b3", "u2", "AC"),
           ("b4", "u1", "D"), ("b5", "u1", "CD"), ("b6", "u1", "A")]
IDS = ["A", "B", "C", "D", "P", "Q"]  # P, Q: never bought together with anything


@pytest.fixture(scope="module")
def data() -> B.BaselineData:
    rows = [(b, u, p, i) for i, (b, u, items) in enumerate(BASKETS) for p in items]
    tx = pd.DataFrame(rows, columns=["basket_id", "user_id", "product_id", "timestamp"])
    products = pd.DataFrame({"product_id": IDS, "product_type": IDS})
    return B.BaselineData(
        ids=np.array(IDS), in_stock=np.ones(len(IDS), dtype=bool),
        popular=["Q", "P", "A", "B", "C", "D"],  # what the lists are topped up with
        embeddings=np.eye(len(IDS)), row_of=pd.Series(range(len(IDS)), index=IDS),
        copurchase=CoPurchase.build(tx[["basket_id", "product_id"]], products),
        history=B.purchase_history(tx), repeat=B.repeat_shares(tx))


def case(*anchors: str, user: str | None = None) -> CompletionCase:
    return CompletionCase("q", tuple(anchors), ("x",), user_id=user)


def test_repeat_shares_are_the_share_of_the_households_baskets(data) -> None:
    assert data.repeat["u1"] == pytest.approx({"D": 2 / 3, "C": 1 / 3, "A": 1 / 3})
    assert data.history["u1"][0] == "D"


def test_blend_moves_from_cooccurrence_to_buy_again_with_its_weight(data) -> None:
    # confidence from A: B 2/4, C 1/4.  u1's repeat shares: D 2/3, C 1/3 (A is the anchor).
    assert B.blend_ranking(case("A", user="u1"), data, 3, weight=0.0, min_count=1) == ["B", "C", "Q"]
    assert B.blend_ranking(case("A", user="u1"), data, 3, weight=1.0, min_count=1) == ["D", "C", "Q"]
    # w=0.5: D 1/3, C 1/6 + 1/8 = 0.2917, B 1/4
    assert B.blend_ranking(case("A", user="u1"), data, 3, weight=0.5, min_count=1) == ["D", "C", "B"]
    # pairs seen twice only: C (seen once with A) drops out of the co-occurrence term
    assert B.blend_ranking(case("A", user="u1"), data, 2, weight=0.0, min_count=2) == ["B", "Q"]
    # no household (BundleRec): the repeat term is empty whatever the weight
    assert B.blend_ranking(case("A"), data, 2, weight=0.5, min_count=1) == ["B", "C"]


def test_type_level_blend_gives_the_types_confidence_to_the_households_usual_product() -> None:
    # A is a "main"; B and C are two products of one "side" type. Baskets: {A,B} {A,C} {A,C}
    # (u2) and {B} (u1). Type pair (main, side) seen 3 times of n(main) = 3: confidence 1.
    rows = [("b1", "u2", "A"), ("b1", "u2", "B"), ("b2", "u2", "A"), ("b2", "u2", "C"),
            ("b3", "u2", "A"), ("b3", "u2", "C"), ("b4", "u1", "B")]
    tx = pd.DataFrame([(b, u, p, i) for i, (b, u, p) in enumerate(rows)],
                      columns=["basket_id", "user_id", "product_id", "timestamp"])
    ids = ["A", "B", "C", "Q"]
    products = pd.DataFrame({"product_id": ids, "product_type": ["main", "side", "side", "other"]})
    data = B.BaselineData(
        ids=np.array(ids), in_stock=np.ones(4, dtype=bool), popular=["C", "A", "B", "Q"],
        embeddings=np.eye(4), row_of=pd.Series(range(4), index=ids),
        copurchase=CoPurchase.build(tx[["basket_id", "product_id"]], products),
        history=B.purchase_history(tx), repeat=B.repeat_shares(tx))
    # u1 buys B: the side type's confidence goes to B; a stranger gets the best seller, C
    assert B.blend_ranking(case("A", user="u1"), data, 1, weight=0.0, min_count=1, level="type") == ["B"]
    assert B.blend_ranking(case("A", user="nobody"), data, 1, weight=0.0, min_count=1, level="type") == ["C"]
    # at SKU level, C (seen twice with A) leads whoever asks
    assert B.blend_ranking(case("A", user="u1"), data, 1, weight=0.0, min_count=1) == ["C"]


def test_cooccurrence_backs_off_to_pairs_seen_once_only_when_asked(data) -> None:
    # C has no pair seen twice. Lift(C,D) = 1·6/(2·2) = 1.5, lift(C,A) = 1·6/(2·4) = 0.75.
    assert B.cooccurrence_ranking(case("C"), data, 2, min_count=2) == ["Q", "P"]  # popular only
    assert B.cooccurrence_ranking(case("C"), data, 2, min_count=2, backoff=True) == ["D", "A"]
    # A has a frequent pair (B), so it does not back off to C
    assert B.cooccurrence_ranking(case("A"), data, 2, min_count=2, backoff=True) == ["B", "Q"]


def test_itemknn_sums_cosine_over_each_anchors_k_nearest(data) -> None:
    # cos(A,B) = 2/sqrt(4·2) = 0.707, cos(A,C) = 1/sqrt(8) = 0.354, cos(C,D) = 1/sqrt(4) = 0.5
    assert [k for k, _ in data.knn("A", 10)] == ["B", "C"]
    assert data.knn("C", 10)[0] == ("D", pytest.approx(0.5))
    assert B.itemknn_ranking(case("A", "C"), data, 2) == ["B", "D"]
    # k = 1: A keeps only B, C only D
    assert B.itemknn_ranking(case("A"), data, 2, k=1) == ["B", "Q"]
    # the household's items as weaker extra anchors: u1 bought D, C, A
    assert B.itemknn_ranking(case("B", user="u1"), data, 2) == ["A", "Q"]
    with_history = B.itemknn_ranking(case("B", user="u1"), data, 3, history_weight=0.5)
    # A: 0.707 + 0.5·0.354 (from C); C: 0.5·(0.5 + 0.354); D: 0.5·0.5
    assert with_history == ["A", "C", "D"]


def test_baselines_never_return_an_anchor_and_fill_to_depth(data) -> None:
    for name, rank in B.completion_baselines(True, 1, seed=0).items():
        ranked = rank(case("A", "C", user="u1"), data, 4)
        assert len(ranked) == 4 and not {"A", "C"} & set(ranked), name


def test_tuning_grids_list_the_documented_settings() -> None:
    cj = B.tuning_grid("cj-completion")
    assert len(cj["buy-again+cooccurrence"]) == len(B.BLEND_WEIGHTS) * (len(B.COOC_GRID) + 3)
    assert {g["level"] for g in cj["buy-again+cooccurrence"]} == {"sku", "type"}
    assert {g["weight"] for g in cj["buy-again+cooccurrence"]} == set(B.BLEND_WEIGHTS)
    br = B.tuning_grid("bundlerec-completion")  # no household: nothing to weigh
    assert {g["weight"] for g in br["buy-again+cooccurrence"]} == {0.0}
    assert br["itemknn"] == [{"k": 10, "history_weight": 0.0}]


# --- generation baselines -------------------------------------------------------------------


def _catalogue() -> pd.DataFrame:
    rows = [("1", "E > Camera > Accessories > Batteries", "Batteries"),
            ("2", "E > Camera > Accessories > Chargers", "Chargers"),
            ("3", "E > Computers > Cables > HDMI", "HDMI"),
            ("4", "E > Computers > Cables > USB", "USB"),
            ("5", "E > Computers > Cables > USB", "USB")]
    return pd.DataFrame(rows, columns=["product_id", "category", "product_type"]).set_index("product_id", drop=False)


def test_whole_session_and_rule_else_whole_session() -> None:
    cat = _catalogue()
    [whole] = B.whole_session(["3", "4", "4", "5"], cat)
    assert whole.item_ids == ("3", "4", "5") and whole.name == "Cables"
    assert B.whole_session(["3"], cat) == []
    assert B.rule_else_whole_session([], ["1", "2"], cat)[0].item_ids == ("1", "2")
    rule = B.group_by_leaf_category(["4", "5"], cat)
    assert B.rule_else_whole_session(rule, ["1", "4", "5"], cat) == rule


def test_category_overlap_grouping_clusters_on_the_taxonomy_alone() -> None:
    cat = _catalogue()
    # overlap(4,5) = 1, overlap(3,{4,5}) = 3/4, overlap(1,2) = 3/4, across departments 1/4
    groups = B.group_by_category_overlap(list(cat.index), cat, max_size=4, threshold=0.5)
    assert [g.item_ids for g in groups] == [("3", "4", "5"), ("1", "2")]
    assert [g.item_ids for g in B.group_by_category_overlap(list(cat.index), cat, max_size=4, threshold=0.8)] == [
        ("4", "5")]


# --- the best-baseline comparison -------------------------------------------------------------


def test_vs_best_states_the_best_baseline_the_ratio_and_the_p_values() -> None:
    scores = {"pop": {"ndcg@10": {"mean": 0.1}}, "blend": {"ndcg@10": {"mean": 0.2}},
              "system:rule": {"ndcg@10": {"mean": 0.25}}}
    tests = {"system:rule": {"ndcg@10": {"t_test": 0.01, "randomisation": 0.02, "mean_difference": 0.05}}}
    out = vs_best(scores, tests, ["system:rule"], "blend", "ndcg@10")["system:rule"]
    assert out["baseline"] == "blend" and out["ratio"] == pytest.approx(1.25)
    assert out["difference"] == pytest.approx(0.05) and out["t_test"] == 0.01 and out["randomisation"] == 0.02
    [line, _] = headline({"system:rule": out}, "All cases")
    assert "`blend`" in line and "1.25×" in line and "p 0.0100" in line
    zero = {"b": {"m": {"mean": 0.0}}, "system:rule": {"m": {"mean": 0.1}}}
    assert vs_best(zero, {"system:rule": {"m": {"t_test": None, "randomisation": None}}},
                   ["system:rule"], "b", "m")["system:rule"]["ratio"] is None


def test_dev_choices_are_read_back_per_protocol_data_and_seed(tmp_path: Path) -> None:
    path = tmp_path / "dev-choices.json"
    write_choices(path, "cj-completion", "completejourney", 0, {"choices": {"itemknn": {"k": 10}}})
    write_choices(path, "bundlerec-completion", "electronic", 0, {"choices": {"cooccurrence": {"min_count": 1}}})
    assert read_choices(path, "cj-completion", "completejourney", 0)["choices"] == {"itemknn": {"k": 10}}
    # CJ's dev weeks are the same training data for every seed; BundleRec's dev split is per seed
    assert read_choices(path, "cj-completion", "completejourney", 1) is not None
    assert read_choices(path, "bundlerec-completion", "electronic", 1) is None
    assert read_choices(path, "bundlerec-completion", "other", 0) is None
    assert set(json.loads(path.read_text())) == {"cj-completion", "bundlerec-completion"}
