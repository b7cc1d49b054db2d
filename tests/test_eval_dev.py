"""Dev splits: carved from the training part only, so no dev run can see a test case.

Fingerprint-style, like the test-split leakage tests in ``test_eval.py``: the dev split
computed from the full data must be byte-identical to the one computed from a world in
which the test data never happened (scrambled or deleted), and it must share no case,
bundle or session with the test split."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_eval import _bundles_and_sessions, _write_without, without_test_weeks

from eval import protocols as P


def _case_keys(split: P.Split) -> list[tuple]:
    return [(c.case_id, c.anchors, c.targets) if isinstance(c, P.CompletionCase) else (c.case_id, c.items, c.bundles)
            for c in split.cases]


def test_cj_dev_split_is_weeks_39_to_44_and_blind_to_the_test_weeks(cj_slice) -> None:
    raw = P.cj_raw_transactions(set(cj_slice.interactions["user_id"]))
    dev = P.cj_dev(cj_slice, raw, seed=0, n_cases=None)
    test = P.cj_completion(cj_slice, raw, seed=0, n_cases=None)
    first_dev_week = P.CJ_TRAIN_WEEKS - P.CJ_DEV_WEEKS + 1
    assert dev.train.interactions["week"].max() < first_dev_week
    assert dev.info["split"] == "dev" and dev.info["test_weeks"] == f"{first_dev_week}-{P.CJ_TRAIN_WEEKS}"
    assert dev.cases, "the slice should hold dev baskets"
    week_of = cj_slice.interactions.groupby("basket_id")["week"].first()
    assert all(first_dev_week <= week_of[c.case_id] <= P.CJ_TRAIN_WEEKS for c in dev.cases)
    assert not {c.case_id for c in dev.cases} & {c.case_id for c in test.cases}

    # Scramble the test weeks (other products, 10x prices), then delete them: nothing moves.
    for world, world_raw in without_test_weeks(cj_slice, raw, seed=3):
        again = P.cj_dev(world, world_raw, seed=0, n_cases=None)
        assert P.train_fingerprint(again.train) == P.train_fingerprint(dev.train)
        assert _case_keys(again) == _case_keys(dev)


@pytest.mark.parametrize("kind", ["completion", "generation"])
def test_bundlerec_dev_split_is_a_function_of_the_training_part_only(
        kind: str, bundlerec_dir: Path, tmp_path: Path) -> None:
    from retrieval.sources import load_source

    ds = load_source("bundlerec", bundlerec_dir)
    outer = (P.bundlerec_completion if kind == "completion" else P.bundlerec_generation)(ds, seed=0)
    dev_of = P.bundlerec_completion_dev_of if kind == "completion" else P.bundlerec_generation_dev_of
    dev = (P.bundlerec_completion_dev if kind == "completion" else P.bundlerec_generation_dev)(ds, seed=0)
    assert dev.info["split"] == "dev" and dev.cases

    # the world in which the test bundles and sessions never happened gives the same dev split
    bundles, sessions = _bundles_and_sessions(ds, outer)
    _write_without(bundlerec_dir, tmp_path / "without", bundles, sessions)
    world = load_source("bundlerec", tmp_path / "without")
    blind = dev_of(P.Split(P.bundlerec_holdout(world, bundles, sessions), [], outer.info), seed=0)
    assert P.train_fingerprint(blind.train) == P.train_fingerprint(dev.train)
    assert _case_keys(blind) == _case_keys(dev)

    # and it shares nothing with the test split
    test_ids = {c.case_id for c in outer.cases}
    assert not {c.case_id for c in dev.cases} & test_ids
    assert not set(dev.train.extras["bundle_item"]["bundle ID"]) & bundles
    assert not set(dev.train.extras["session_item"]["session ID"]) & sessions
    assert not {b[1:] for b in dev.train.interactions["basket_id"] if b.startswith("s")} & sessions
    # the dev cases are a seeded 20% of the training bundles (sessions), held out by the same rules
    dev_bundles, dev_sessions = _bundles_and_sessions(outer.train, dev)
    if kind == "completion":
        assert dev_bundles == {c.case_id for c in dev.cases}
        assert len(dev.cases) == round(P.TEST_SHARE * dev.info["bundles"])
    else:
        assert dev_sessions == {c.case_id for c in dev.cases}
        assert len(dev.cases) == round(P.TEST_SHARE * dev.info["sessions_with_bundles"])
