"""Offline evaluation: leak-free splits, the pieces that turn answers into scores, grouping,
determinism, and the CLI end to end on tiny real slices of each protocol."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from assistant.grouping import Affinity, ItemGroup, bundle_items, category_overlap, rule_groups, select_disjoint
from eval import protocols as P
from eval.baselines import group_by_leaf_category
from eval.run import objective_with_margin, system_ranking, type_list

BUNDLEREC_CSVS = ("bundle_item.csv", "bundle_intent.csv", "session_item.csv", "session_bundle.csv",
                  "user_item.csv", "user_bundle.csv", "user_session.csv")


# --- splits: no test case can reach the training data -------------------------------------


def without_test_weeks(ds: P.Dataset, raw: pd.DataFrame, seed: int) -> list[tuple[P.Dataset, pd.DataFrame]]:
    """Two worlds that differ from ``ds`` only after week ``CJ_TRAIN_WEEKS``: one with the
    test weeks scrambled (other products, 10x prices), one with them deleted."""
    after = ds.interactions["week"] > P.CJ_TRAIN_WEEKS
    scrambled = ds.interactions.copy()
    rng = np.random.default_rng(seed)
    scrambled.loc[after, "product_id"] = rng.permutation(ds.products["product_id"].to_numpy())[: after.sum()]
    raw_after = raw["week"] > P.CJ_TRAIN_WEEKS
    raw_scrambled = raw.copy()
    raw_scrambled.loc[raw_after, "sales_value"] *= 10
    return [(P.Dataset(ds.name, ds.products, scrambled, ds.users, [], {}), raw_scrambled),
            (P.Dataset(ds.name, ds.products, ds.interactions[~after], ds.users, [], {}), raw[~raw_after])]


def test_cj_training_part_ignores_everything_in_the_test_weeks(cj_slice) -> None:
    users = set(cj_slice.interactions["user_id"])
    raw = P.cj_raw_transactions(users)
    split = P.cj_completion(cj_slice, raw, seed=0, n_cases=None)
    train = split.train
    assert train.interactions["week"].max() <= P.CJ_TRAIN_WEEKS
    assert set(train.products["product_id"]) == set(train.interactions["product_id"])

    # Scramble the test weeks (other products, 10x prices) and delete them: nothing moves.
    expected = P.train_fingerprint(train)
    for world, world_raw in without_test_weeks(cj_slice, raw, seed=1):
        assert P.train_fingerprint(P.cj_train(world, world_raw)) == expected

    assert split.cases, "the slice should hold at least one eligible test basket"
    train_baskets = set(train.interactions["basket_id"])
    n_baskets = train.interactions.groupby("user_id")["basket_id"].nunique()
    sellable = set(train.products.loc[train.products["in_stock"], "product_id"])
    for case in split.cases:
        assert case.case_id not in train_baskets
        assert case.anchors[0] in sellable and case.anchors[0] not in case.targets
        assert len(case.target_types) >= P.CJ_MIN_TYPES - 1 and case.anchor_types[0] not in case.target_types
        assert n_baskets[case.user_id] >= P.CJ_MIN_TRAIN_BASKETS


def _write_without(src: Path, dst: Path, bundles: set[str], sessions: set[str]) -> None:
    """A BundleRec folder as it would be had ``bundles`` and ``sessions`` never happened."""
    def read(name: str) -> pd.DataFrame:
        return pd.read_csv(src / name, dtype=str, keep_default_na=False)

    dst.mkdir()
    for name in ("item_titles.csv", "item_categories.csv"):
        shutil.copy2(src / name, dst / name)
    t = {name: read(name) for name in BUNDLEREC_CSVS}
    gone = t["user_bundle.csv"][t["user_bundle.csv"]["bundle ID"].isin(bundles)].merge(
        t["bundle_item.csv"][t["bundle_item.csv"]["bundle ID"].isin(bundles)], on="bundle ID")
    key = ["user ID", "item ID", "timestamp"]
    ui = t["user_item.csv"]
    ui = ui.assign(_n=ui.groupby(key).cumcount()).merge(
        gone[key].assign(_n=gone.groupby(key).cumcount(), _gone=True), on=[*key, "_n"], how="left")
    t["user_item.csv"] = ui[ui["_gone"].isna()][key]
    for name in ("bundle_item.csv", "bundle_intent.csv", "user_bundle.csv", "session_bundle.csv"):
        t[name] = t[name][~t[name]["bundle ID"].isin(bundles)]
    for name in ("session_item.csv", "user_session.csv", "session_bundle.csv"):
        t[name] = t[name][~t[name]["session ID"].isin(sessions)]
    for name, frame in t.items():
        frame.to_csv(dst / name, index=False)


def _bundles_and_sessions(ds, split) -> tuple[set[str], set[str]]:
    removed_bundles = set(ds.extras["bundle_item"]["bundle ID"]) - set(split.train.extras["bundle_item"]["bundle ID"])
    removed_sessions = (set(ds.extras["session_item"]["session ID"])
                        - set(split.train.extras["session_item"]["session ID"]))
    return removed_bundles, removed_sessions


def test_bundlerec_completion_training_part_is_what_remains_without_the_test_bundles(
        bundlerec_dir: Path, tmp_path: Path) -> None:
    from retrieval.sources import load_source

    ds = load_source("bundlerec", bundlerec_dir)
    split = P.bundlerec_completion(ds, seed=0)
    test = {c.case_id for c in split.cases}
    assert len(test) == round(0.2 * ds.extras["bundle_item"]["bundle ID"].nunique())
    bundles, sessions = _bundles_and_sessions(ds, split)
    assert bundles == test
    sb = ds.extras["session_bundle"]
    assert sessions == set(sb.loc[sb["bundle ID"].isin(test), "session ID"])
    assert not any(b.startswith("s") and b[1:] in sessions for b in split.train.interactions["basket_id"])

    _write_without(bundlerec_dir, tmp_path / "without", bundles, sessions)
    world = load_source("bundlerec", tmp_path / "without")
    assert P.train_fingerprint(P.bundlerec_holdout(world, bundles, sessions)) == P.train_fingerprint(split.train)

    for case in split.cases:
        assert len(case.targets) == 1 and case.targets[0] not in case.anchors and case.anchors


def test_bundlerec_generation_training_part_is_what_remains_without_the_test_sessions(
        bundlerec_dir: Path, tmp_path: Path) -> None:
    from retrieval.sources import load_source

    ds = load_source("bundlerec", bundlerec_dir)
    split = P.bundlerec_generation(ds, seed=0)
    bundles, sessions = _bundles_and_sessions(ds, split)
    assert sessions == {c.case_id for c in split.cases}
    assert bundles == {b for b, s in zip(ds.extras["session_bundle"]["bundle ID"],
                                         ds.extras["session_bundle"]["session ID"]) if s in sessions}
    _write_without(bundlerec_dir, tmp_path / "without", bundles, sessions)
    world = load_source("bundlerec", tmp_path / "without")
    assert P.train_fingerprint(P.bundlerec_holdout(world, bundles, sessions)) == P.train_fingerprint(split.train)
    for case in split.cases:
        assert all(set(b) <= set(case.items) and len(b) >= 2 for b in case.bundles)
        assert len(case.intents) == len(case.bundles)


def test_case_order_is_a_seeded_permutation_and_prefixes_nest() -> None:
    keys = [str(i) for i in range(50)]
    assert P.permuted(keys, 3) == P.permuted(list(reversed(keys)), 3)
    assert P.permuted(keys, 3) != P.permuted(keys, 4)
    assert sorted(P.permuted(keys, 3), key=int) == keys
    assert P.choose_test(keys, 3) == P.permuted(keys, 3)[:10]


def test_anti_join_removes_rows_as_a_multiset() -> None:
    frame = pd.DataFrame({"u": ["1", "1", "1", "2"], "i": ["a", "a", "b", "a"]})
    remove = pd.DataFrame({"u": ["1", "2", "3"], "i": ["a", "a", "a"]})
    kept = P._anti_join_rows(frame, remove, ["u", "i"])
    assert kept.to_dict("records") == [{"u": "1", "i": "a"}, {"u": "1", "i": "b"}]


# --- from answers to ranked lists ----------------------------------------------------------


def _rec(bundles: list[list[str]], candidates: list[str]):
    return SimpleNamespace(
        bundles=[SimpleNamespace(items=[SimpleNamespace(product_id=p) for p in b]) for b in bundles],
        candidates=[{"product_id": c} for c in candidates])


def test_system_list_is_bundle_items_then_candidates_without_anchors_or_repeats() -> None:
    rec = _rec([["A", "x", "y"], ["A", "y", "z"]], ["A", "w", "x", "v"])
    assert system_ranking(rec, ["A"]) == ["x", "y", "z", "w", "v"]
    assert system_ranking(rec, ["A"], depth=2) == ["x", "y"]


def test_type_list_keeps_first_distinct_types_and_drops_the_anchor_type() -> None:
    type_of = {"a": "MILK", "b": "MILK", "c": "EGGS", "d": "", "e": "BREAD", "f": "EGGS"}
    assert type_list(["a", "b", "c", "d", "e", "f"], type_of, ["EGGS"], cutoff=10) == ["MILK", "BREAD"]
    assert type_list(["a", "c", "e"], type_of, [], cutoff=2) == ["MILK", "EGGS"]


def test_margin_sweep_keeps_the_other_weights_in_proportion() -> None:
    base = {"preference": 0.4, "complementarity": 0.25, "margin": 0.2, "sales": 0.15}
    assert objective_with_margin(base, 0.2) == pytest.approx(base)
    w = objective_with_margin(base, 0.6)
    assert w["margin"] == 0.6 and sum(w.values()) == pytest.approx(1.0)
    assert w["preference"] / w["sales"] == pytest.approx(0.4 / 0.15)


def test_objective_grid_cells_sum_to_one_and_the_default_is_a_cell() -> None:
    from eval.objective_grid import cell_weights
    from retrieval.config import Settings

    w = cell_weights(0.05, 0.3)
    assert sum(w.values()) == pytest.approx(1.0) and (w["sales"], w["margin"]) == (0.05, 0.3)
    assert w["preference"] / w["complementarity"] == pytest.approx(0.4 / 0.25)
    assert Settings().objective.weights == pytest.approx(cell_weights(0.15, 0.2))


# --- grouping --------------------------------------------------------------------------------


def _catalogue() -> pd.DataFrame:
    rows = [
        ("1", "E > Camera > Accessories > Batteries", "Batteries"),
        ("2", "E > Camera > Accessories > Chargers", "Chargers"),
        ("3", "E > Computers > Cables > HDMI", "HDMI"),
        ("4", "E > Computers > Cables > USB", "USB"),
        ("5", "E > Computers > Cables > USB", "USB"),
    ]
    df = pd.DataFrame(rows, columns=["product_id", "category", "product_type"])
    return df.set_index("product_id", drop=False)


def test_category_overlap_counts_shared_leading_levels() -> None:
    assert category_overlap(["E", "Camera", "Acc"], ["E", "Camera", "Bags", "Big"]) == 0.5
    assert category_overlap(["E"], []) == 0.0
    assert category_overlap(["E", "X"], ["E", "X"]) == 1.0


def test_rule_grouping_clusters_by_category_and_names_the_shared_level() -> None:
    cat = _catalogue()
    paths = {i: cat.at[i, "category"].split(" > ") for i in cat.index}
    affinity = Affinity(lambda a, b: 0.0, paths)  # no co-purchase evidence: taxonomy alone
    groups = rule_groups(list(cat.index), affinity, cat, max_size=4, threshold=0.3)
    assert [(g.item_ids, g.name) for g in groups] == [
        (("3", "4", "5"), "Cables"), (("1", "2"), "Accessories")]
    # co-purchase can outweigh the taxonomy: a strong 1–3 pair joins across departments
    strong = Affinity(lambda a, b: 1.0 if {a, b} == {"1", "3"} else 0.0, paths, npmi_weight=0.9)
    assert ("1", "3") in [g.item_ids for g in rule_groups(["1", "2", "3"], strong, cat, max_size=2, threshold=0.3)]


def _grouping_parts(catalogue: pd.DataFrame, max_size: int) -> SimpleNamespace:
    """What ``bundle_items`` reads of the assistant: the catalogue, no co-purchase evidence."""
    index = SimpleNamespace(catalogue=catalogue, row_of=pd.Series(range(len(catalogue)), index=catalogue.index),
                            copurchase=SimpleNamespace(pair_npmi=lambda a, b: 0.0))
    return SimpleNamespace(index=index, settings=SimpleNamespace(llm=SimpleNamespace(max_bundle_size=max_size)))


def _catalogue_with_a_loner() -> pd.DataFrame:
    lamp = pd.DataFrame([("6", "Home > Lighting > Lamps", "Lamps")], columns=["product_id", "category", "product_type"])
    return pd.concat([_catalogue(), lamp.set_index("product_id", drop=False)])


def test_rule_grouping_offers_the_kit_without_its_loner_then_the_parts_inside_it() -> None:
    cat = _catalogue_with_a_loner()
    grouping = bundle_items(_grouping_parts(cat, max_size=3), ["1", "2", "3", "4", "5", "6"], use_llm=False)
    assert [(g.item_ids, g.source) for g in grouping] == [
        (("1", "2", "3", "4", "5"), "kit"), (("3", "4", "5"), "rule"), (("1", "2"), "rule")]
    # no kit: the parts are clustered from every item, as before the kit existed
    plain = bundle_items(_grouping_parts(cat, max_size=3), ["1", "2", "3", "4", "5", "6"], use_llm=False,
                         kit_threshold=None)
    assert [g.item_ids for g in plain] == [("3", "4", "5"), ("1", "2")]


def test_rule_grouping_offers_the_whole_list_when_nothing_groups_unless_told_not_to() -> None:
    cat = _catalogue_with_a_loner()
    parts = _grouping_parts(cat, max_size=3)
    assert [g.item_ids for g in bundle_items(parts, ["6", "1"], use_llm=False)] == [("1", "6")]
    assert list(bundle_items(parts, ["6", "1"], use_llm=False, whole_if_none=False)) == []


def test_select_disjoint_prefers_coherent_bundles_and_never_reuses_an_item() -> None:
    pool = [ItemGroup(item_ids=("1", "2"), name="a", source="rule", coherence=0.5),
            ItemGroup(item_ids=("2", "3"), name="b", source="llm", coherence=0.9),
            ItemGroup(item_ids=("4", "5"), name="c", source="llm", coherence=0.5),
            ItemGroup(item_ids=("1", "4"), name="d", source="rule", coherence=0.1)]
    assert [g.name for g in select_disjoint(pool, 5)] == ["b", "c"]
    assert [g.name for g in select_disjoint(pool, 1)] == ["b"]


def _grid_case(llm: list[tuple[str, ...]], truth: tuple[tuple[str, ...], ...]):
    """The kit case above (kit 1-5, parts 3-5 and 1-2) with the given LLM groups."""
    from eval.llm_rule_grid import CaseGroups

    cat = _catalogue_with_a_loner()
    paths = {i: cat.at[i, "category"].split(" > ") for i in cat.index}
    affinity = Affinity(lambda a, b: 0.0, paths)
    items = ("1", "2", "3", "4", "5", "6")
    kit = ("1", "2", "3", "4", "5")
    rule = tuple(rule_groups(list(kit), affinity, cat, max_size=3))
    groups = tuple(ItemGroup(item_ids=g, name="llm", source="llm", coherence=round(affinity.coherence(g), 6))
                   for g in llm)
    return CaseGroups("s", items, truth, kit, 3, rule, groups), affinity, cat


def test_llm_rule_grid_rebuilds_the_rule_answer_then_drops_the_kit_or_nests_llm_groups_as_told() -> None:
    from eval.llm_rule_grid import RULE, Combination, combine, relation

    case, affinity, cat = _grid_case([("1", "2", "3")], (("1", "2", "3"), ("4", "5")))
    shipped = bundle_items(_grouping_parts(cat, max_size=3), list(case.items), use_llm=False)
    assert combine(case, RULE, affinity, cat) == [g.item_ids for g in shipped]
    assert relation(case.kit, ("1", "2", "3")) == "inside"
    assert [relation(("1", "2"), g) for g in (("2", "1"), ("1", "2", "3"), ("2", "3"), ("4", "5"))] == [
        "equal", "around", "overlap", "apart"]
    # the LLM reads the kit as smaller: the kit goes, the rule's parts stay
    assert combine(case, Combination("rule", "LLM group inside", "none"), affinity, cat) == [
        ("3", "4", "5"), ("1", "2")]
    assert combine(case, Combination("rule", "LLM group overlaps", "none"), affinity, cat)[0] == case.kit
    # nested: the LLM group after the rest, never twice
    nested = combine(case, Combination("rule", "never", "inside the kit"), affinity, cat)
    assert nested == [case.kit, ("3", "4", "5"), ("1", "2"), ("1", "2", "3")]
    again, *_ = _grid_case([("1", "2")], case.truth)
    assert combine(again, Combination("rule", "never", "all"), affinity, cat) == [case.kit, ("3", "4", "5"), ("1", "2")]


def test_llm_rule_grid_scores_each_combination_against_rule_on_the_same_sessions() -> None:
    from eval.llm_rule_grid import auc, grid

    case, affinity, cat = _grid_case([("1", "2", "3")], (("1", "2", "3"), ("4", "5")))
    rows = {r["combination"]: r for r in grid([case, case], [affinity, affinity], cat)}
    rule = rows["pool rule; drop kit: never; nest: none"]
    assert rule["precision"] == {"mean": 0.3333, "delta": 0.0, "p": 1.0}  # (1, 2) is a hit; the kit and (3, 4, 5) not
    # dropping the kit and nesting the true (1, 2, 3) both lift precision; nesting lifts recall too
    assert rows["pool rule; drop kit: LLM group inside; nest: none"]["precision"]["mean"] == 0.5
    nest = rows["pool rule; drop kit: never; nest: all"]
    assert nest["precision"]["mean"] == 0.5 and nest["recall"]["delta"] == 0.5
    assert sum(r["shipped"] for r in rows.values()) == 1
    assert auc([True, False, True], [0.9, 0.1, 0.8]) == 1.0
    assert auc([True, False], [0.1, 0.9]) == 0.0
    assert auc([True, False], [0.5, 0.5]) == 0.5


def test_leaf_category_baseline_groups_items_sharing_a_leaf() -> None:
    groups = group_by_leaf_category(["1", "4", "3", "5", "2"], _catalogue())
    assert [(g.item_ids, g.name) for g in groups] == [(("4", "5"), "USB")]


# --- end to end --------------------------------------------------------------------------------


def _cli(*args: str) -> int:
    from assistant.cli import main

    return main(["eval", *args, "--json"])


def _without_timings(path: Path) -> dict:
    result = json.loads(path.read_text())
    result.pop("timings")
    return result


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("eval-work")


def test_cli_cj_completion_end_to_end(tmp_path: Path, work_dir: Path, capsys) -> None:
    assert _cli("--protocol", "cj-completion", "--limit", "5", "--cases", "3", "--variants", "rule",
                "--out", str(tmp_path), "--work-dir", str(work_dir)) == 0
    result = json.loads((tmp_path / "cj-completion.json").read_text())
    assert result["config"]["cases"] == 3 and result["seed"] == 0 and result["git"]["commit"]
    block = result["blocks"]["all"]
    assert {"random", "popularity", "cooccurrence", "embedding-nn", "buy-again", "buy-again+cooccurrence",
            "itemknn", "system:rule"} <= set(block["levels"]["type"]["scores"])
    assert block["levels"]["sku"]["scores"]["system:rule"]["ndcg@10"]["mean"] >= 0
    assert all(row["invented_product_rate"] == 0 for row in block["beyond_accuracy"].values())
    assert [p["margin_weight"] for p in result["tradeoff"]["points"]] == [0.0, 0.2, 0.4, 0.6, 0.8]
    assert "**" in (tmp_path / "cj-completion.md").read_text()
    assert (tmp_path / "cj-completion-margin-tradeoff.png").stat().st_size > 0
    assert (tmp_path / "cj-completion-type-bars.png").stat().st_size > 0


def test_cli_bundlerec_completion_end_to_end_and_deterministic(
        bundlerec_trimmed: Path, tmp_path: Path, work_dir: Path) -> None:
    runs = []
    for build in ("a", "b"):  # two separate index builds, same seed
        assert _cli("--protocol", "bundlerec-completion", "--data-dir", str(bundlerec_trimmed),
                    "--variants", "rule", "--seed", "7", "--out", str(tmp_path / "out"),
                    "--work-dir", str(tmp_path / f"work-{build}")) == 0
        runs.append(_without_timings(tmp_path / "out" / "bundlerec-completion.json"))
    first = runs[0]
    assert runs[0] == runs[1]
    scores = first["blocks"]["all"]["levels"]["sku"]["scores"]
    assert set(scores) == {"random", "popularity", "cooccurrence", "embedding-nn", "buy-again+cooccurrence",
                           "itemknn", "system:rule"}
    assert first["split"]["test_bundles"] == round(0.2 * first["split"]["bundles"])
    assert first["blocks"]["all"]["levels"]["sku"]["tests_vs_best_baseline"]["system:rule"]["mrr"]["t_test"] is not None

    assert _cli("--protocol", "bundlerec-completion", "--data-dir", str(bundlerec_trimmed),
                "--variants", "rule", "--seed", "8", "--out", str(tmp_path / "c"),
                "--work-dir", str(work_dir)) == 0
    other = json.loads((tmp_path / "c" / "bundlerec-completion.json").read_text())
    assert other["index"]["train_fingerprint"] != first["index"]["train_fingerprint"]


@pytest.mark.llm
def test_cli_bundlerec_generation_end_to_end_with_one_llm_call(
        bundlerec_trimmed: Path, tmp_path: Path, work_dir: Path) -> None:
    assert _cli("--protocol", "bundlerec-generation", "--data-dir", str(bundlerec_trimmed),
                "--variants", "rule,llm,llm+rule", "--llm-cases", "1", "--out", str(tmp_path),
                "--work-dir", str(work_dir)) == 0
    result = json.loads((tmp_path / "bundlerec-generation.json").read_text())
    scores = result["blocks"]["all"]["scores"]
    assert set(scores) >= {"leaf-category", "system:rule"}
    for row in scores.values():
        assert row["invented_product_rate"] == 0
        assert 0 <= row["precision"]["mean"] <= 1
    subset = result["blocks"].get("llm_subset", result["blocks"]["all"])["scores"]
    assert subset["system:llm"]["llm_calls"] == 1 and subset["system:llm+rule"]["llm_calls"] == 1
    assert result["timings"]["llm_generations"] == 1  # llm+rule reused the llm variant's answer
    assert result["sample"] and result["sample"][0]["ground_truth"]
    llm_names = result["blocks"].get("llm_subset", result["blocks"]["all"])["names"]["system:llm"]
    assert set(llm_names) == {"names", "category_path_same_bundles", "tests_vs_category_path"}
    assert isinstance(subset["system:llm"]["names_copied"], int) and subset["system:rule"]["names_copied"] is None
    md = (tmp_path / "bundlerec-generation.md").read_text()
    assert "intent names beside the ground truth" in md
    assert "category-path names of the very same bundles" in md


def test_cli_rejects_unknown_variants_and_missing_data_dir(tmp_path: Path, capsys) -> None:
    assert _cli("--protocol", "bundlerec-generation", "--variants", "rule,gpt") == 2
    assert _cli("--protocol", "bundlerec-generation", "--data-dir", str(tmp_path / "nope")) == 2
    assert "error" in capsys.readouterr().err


def test_cli_generation_reports_pair_metrics_whole_session_and_the_best_baseline(
        bundlerec_trimmed: Path, tmp_path: Path, work_dir: Path) -> None:
    assert _cli("--protocol", "bundlerec-generation", "--data-dir", str(bundlerec_trimmed),
                "--variants", "rule", "--out", str(tmp_path), "--work-dir", str(work_dir)) == 0
    result = json.loads((tmp_path / "bundlerec-generation.json").read_text())
    block = result["blocks"]["all"]
    assert set(block["scores"]) == {"leaf-category", "category-overlap", "whole-session",
                                    "rule-else-whole-session", "system:rule"}
    whole = block["scores"]["whole-session"]
    assert whole["pair_recall"]["mean"] == 1.0 and whole["bundles_per_session"] == 1.0
    for row in block["scores"].values():
        assert 0 <= row["pair_f1"]["mean"] <= 1 and 0 <= row["found_jaccard50"] <= 1
        assert row["found_exact"] <= row["found_jaccard50"]
    assert block["ground_truth_mean_bundle_size"] >= 2
    for row in block["scores"].values():  # every system's names are scored against the intents
        assert -1 <= row["name_cosine"] <= 1 and 0 <= row["name_rouge_l"] <= 1 and row["names_copied"] is None
    assert block["scores"]["system:rule"]["name_cosine"] > 0  # category names are not empty
    best = block["best_baseline"]
    assert best == max(block["baselines_by_main_metric"], key=lambda b: block["scores"][b]["pair_f1"]["mean"])
    vs = block["vs_best_baseline"]["system:rule"]
    assert vs["baseline"] == best and vs["metric"] == "pair_f1"
    assert set(block["tests_vs_each_baseline"]["system:rule"]) == set(block["baselines_by_main_metric"])
    md = (tmp_path / "bundlerec-generation.md").read_text()
    assert "vs the best baseline" in md and "pair F1" in md


def test_cli_dev_split_tunes_the_baselines_and_the_test_run_reads_the_choice(
        bundlerec_trimmed: Path, tmp_path: Path, work_dir: Path) -> None:
    common = ("--protocol", "bundlerec-completion", "--data-dir", str(bundlerec_trimmed), "--variants", "none",
              "--out", str(tmp_path), "--work-dir", str(work_dir))
    assert _cli(*common, "--tune-baselines") == 2  # only on the dev split
    assert _cli(*common, "--split", "dev", "--tune-baselines") == 0
    dev = json.loads((tmp_path / "bundlerec-completion-dev.json").read_text())
    assert dev["evaluation_split"] == "dev" and dev["split"]["split"] == "dev"
    choices = json.loads((tmp_path / "dev-choices.json").read_text())
    entry = choices["bundlerec-completion"][bundlerec_trimmed.name]["seed=0"]
    assert entry["choices"] == dev["tuning"]["choices"] == dev["baseline_choices"]["params"]
    assert {"cooccurrence", "buy-again+cooccurrence", "itemknn"} == set(entry["grid"])

    assert _cli(*common) == 0
    test = json.loads((tmp_path / "bundlerec-completion.json").read_text())
    assert test["evaluation_split"] == "test" and "tuning" not in test
    assert test["baseline_choices"]["params"] == entry["choices"]
    assert test["baseline_choices"]["source"].endswith("dev-choices.json")
    assert test["index"]["train_fingerprint"] != dev["index"]["train_fingerprint"]
    # another seed has no dev choice of its own: defaults, and the JSON says so
    assert _cli(*common, "--seed", "1") == 0
    other = json.loads((tmp_path / "bundlerec-completion.json").read_text())
    assert other["baseline_choices"]["source"].startswith("defaults")
