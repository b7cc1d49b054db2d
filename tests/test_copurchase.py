"""Co-purchase statistics on a hand-computed basket set, then on the real slice.

Six baskets over five products (types in brackets):
    A [PASTA], B [SAUCE], C [CHEESE], D [SAUCE, another brand of B], E [CHEESE]

    b1: A B C    b2: A B    b3: A C    b4: B D    b5: A B D    b6: A E

N = 6; n(A) = 5, n(B) = 4, n(C) = 2, n(D) = 2, n(E) = 1.
Pairs: AB 3 (b1 b2 b5), AC 2 (b1 b3), BD 2 (b4 b5), AD 1, AE 1, BC 1, CD 0.

A,B: support 3/6 = .5; confidence A→B 3/5 = .6, B→A 3/4 = .75; lift 3·6/(5·4) = .9;
     NPMI ln(.9)/−ln(.5) = −.1053605/.6931472 = −.1520031
A,C: support 2/6; confidence A→C 2/5 = .4, C→A 2/2 = 1; lift 2·6/(5·2) = 1.2;
     NPMI ln(1.2)/−ln(1/3) = .1823216/1.0986123 = .1659563
C,D: never together: NPMI −1 by convention.

Types per basket: b1 {PASTA SAUCE CHEESE}, b2 {PASTA SAUCE}, b3 {PASTA CHEESE}, b4 {SAUCE},
b5 {PASTA SAUCE}, b6 {PASTA CHEESE}: n(PASTA) = 5, n(SAUCE) = 4, n(CHEESE) = 3.
PASTA,CHEESE: 3 baskets; lift 3·6/(5·3) = 1.2; NPMI ln(1.2)/−ln(.5) = .1823216/.6931472 = .2630344
CHEESE,SAUCE: 1 basket (b1); lift 1·6/(3·4) = .5; NPMI ln(.5)/−ln(1/6) = −.6931472/1.7917595 = −.3868528
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from retrieval.copurchase import MIN_PAIR_COUNT, CooccurrenceTable, CoPurchase, baskets_of

BASKETS = {"b1": "ABC", "b2": "AB", "b3": "AC", "b4": "BD", "b5": "ABD", "b6": "AE"}
TYPES = {"A": "PASTA", "B": "SAUCE", "C": "CHEESE", "D": "SAUCE", "E": "CHEESE"}


def basket_frame(baskets: dict[str, str]) -> pd.DataFrame:
    return pd.DataFrame(
        [(b, p) for b, items in baskets.items() for p in items], columns=["basket_id", "product_id"]
    )


def product_frame(types: dict[str, str]) -> pd.DataFrame:
    return pd.DataFrame({"product_id": list(types), "product_type": list(types.values())})


@pytest.fixture(scope="module")
def cop() -> CoPurchase:
    return CoPurchase.build(basket_frame(BASKETS), product_frame(TYPES))


def test_counts(cop):
    t = cop.items
    assert t.n_baskets == 6
    assert [t.count(x, x) for x in "ABCDE"] == [5, 4, 2, 2, 1]
    assert t.count("A", "B") == t.count("B", "A") == 3
    assert t.count("A", "C") == 2 and t.count("C", "D") == 0
    assert t.count("A", "nope") == 0
    # a product listed twice in one basket still counts once
    doubled = pd.concat([basket_frame(BASKETS), basket_frame({"b1": "A"})], ignore_index=True)
    assert CooccurrenceTable.from_baskets(doubled).count("A", "A") == 5


def test_support_confidence_lift_npmi_by_hand(cop):
    ab = cop.items.stats("A", "B")
    assert ab["support"] == pytest.approx(0.5)
    assert ab["confidence"] == pytest.approx(0.6)
    assert cop.items.stats("B", "A")["confidence"] == pytest.approx(0.75)
    assert ab["lift"] == pytest.approx(0.9)
    assert ab["npmi"] == pytest.approx(-0.1520031, abs=1e-6)

    ac = cop.items.stats("A", "C")
    assert ac["support"] == pytest.approx(1 / 3)
    assert ac["confidence"] == pytest.approx(0.4)
    assert cop.items.stats("C", "A")["confidence"] == pytest.approx(1.0)
    assert ac["lift"] == pytest.approx(1.2)
    assert ac["npmi"] == pytest.approx(0.1659563, abs=1e-6)

    cd = cop.items.stats("C", "D")
    assert cd["support"] == 0 and cd["lift"] == 0 and cd["npmi"] == -1.0
    assert cop.items.stats("A", "unknown")["npmi"] == 0.0


def test_type_level_statistics(cop):
    assert cop.types.n_baskets == 6
    assert cop.types.count("SAUCE", "SAUCE") == 4  # b4 holds two sauces: one basket
    assert cop.types.npmi("PASTA", "CHEESE") == pytest.approx(0.2630344, abs=1e-6)
    assert cop.types.npmi("CHEESE", "SAUCE") == pytest.approx(-0.3868528, abs=1e-6)


def test_npmi_is_one_for_items_always_bought_together():
    t = CooccurrenceTable.from_baskets(basket_frame({"x": "AB", "y": "AB"}))
    assert t.npmi("A", "B") == 1.0


def test_pair_npmi_falls_back_to_type_level(cop):
    assert MIN_PAIR_COUNT == 3
    # A,B seen 3 times: SKU level
    assert cop.pair_npmi("A", "B") == pytest.approx(-0.1520031, abs=1e-6)
    # A,C seen twice (< 3): PASTA,CHEESE at type level, not the SKU value .1659563
    assert cop.pair_npmi("A", "C") == pytest.approx(0.2630344, abs=1e-6)
    # C,D never together: CHEESE,SAUCE at type level
    assert cop.pair_npmi("C", "D") == pytest.approx(-0.3868528, abs=1e-6)
    # B,D share a type: substitutes, not complements
    assert cop.pair_npmi("B", "D") == 0.0
    assert cop.pair_npmi("A", "not-in-catalogue") == 0.0


def test_complements_exclude_the_same_type():
    # X and Y are both pasta (two brands), Z is sauce; every pair is seen 3 times
    baskets = {"1": "XYZ", "2": "XYZ", "3": "XYZ", "4": "X", "5": "Z"}
    types = {"X": "PASTA", "Y": "PASTA", "Z": "SAUCE"}
    cop = CoPurchase.build(basket_frame(baskets), product_frame(types))
    assert cop.items.count("X", "Y") == 3  # Y is X's most frequent companion...
    neighbours = cop.items.neighbours("X", min_count=MIN_PAIR_COUNT)
    assert set(neighbours["key"]) == {"Y", "Z"}
    # ...but a substitute: only Z complements X
    got = cop.complements("X")
    assert [k for k, _ in got] == ["Z"]
    # Z: 4 baskets, X: 4, together 3 of 5 -> lift 3·5/16 = .9375, NPMI ln(.9375)/−ln(.6)
    assert got[0][1] == pytest.approx(np.log(0.9375) / -np.log(0.6), abs=1e-6)


def test_neighbours_are_ranked_by_npmi_then_key(cop):
    table = cop.items.neighbours("A")
    # C .166; E ln(1.2)/ln(6) = .102; B −.152; D (once, lift 1·6/(5·2) = .6) ln(.6)/ln(6) = −.285
    assert table["key"].tolist() == ["C", "E", "B", "D"]
    assert table["npmi"].is_monotonic_decreasing
    e = cop.items.stats("A", "E")
    assert e["lift"] == pytest.approx(1 * 6 / (5 * 1))  # 1.2, support 1/6
    assert table.set_index("key").at["E", "npmi"] == pytest.approx(np.log(1.2) / -np.log(1 / 6))


def test_save_and_load_round_trip(cop, tmp_path):
    cop.save(tmp_path)
    back = CoPurchase.load(tmp_path, product_frame(TYPES))
    for a, b in [("A", "B"), ("A", "C"), ("C", "D"), ("B", "D")]:
        assert back.pair_npmi(a, b) == cop.pair_npmi(a, b)
        assert back.items.stats(a, b) == cop.items.stats(a, b)
    assert (back.types.counts != cop.types.counts).nnz == 0


def test_baskets_without_ids_group_by_user_and_day():
    ts = pd.to_datetime(["2024-01-01 09:00", "2024-01-01 18:00", "2024-01-02 09:00", "2024-01-01 10:00"])
    tx = pd.DataFrame({"user_id": ["u1", "u1", "u1", "u2"], "product_id": ["A", "B", "C", "D"],
                       "timestamp": ts, "basket_id": ["", "", "", "real-7"]})
    baskets = baskets_of(tx)
    assert baskets["basket_id"].tolist() == ["uu1-2024-01-01", "uu1-2024-01-01", "uu1-2024-01-02", "real-7"]


def test_real_slice_copurchase(cj_assistant, cj_slice):
    cop = cj_assistant.index.copurchase
    assert cop.items.n_baskets == cj_slice.interactions["basket_id"].nunique()
    diag = cop.items.counts.diagonal()
    assert diag.max() <= cop.items.n_baskets and (diag > 0).all()
    # symmetric
    assert abs(cop.items.counts - cop.items.counts.T).max() == 0
    # the most bought product has complements of other types, with NPMI in [-1, 1]
    top = cj_slice.products.sort_values(["popularity", "product_id"], ascending=[False, True])["product_id"].iloc[0]
    comps = cop.complements(top, k=5)
    assert comps
    own = cop.product_type[top]
    assert all(cop.product_type[p] != own and -1 <= s <= 1 for p, s in comps)
