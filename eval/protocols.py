"""Train/test splits and evaluation cases for the three protocols.

Every split returns a *training* :class:`~retrieval.schema.Dataset` — the only thing the
system under test (and every baseline) ever learns from — plus the test cases. The rule
for each protocol is that nothing tied to a test case may reach the training dataset;
``tests/test_eval.py`` checks it by changing or deleting the test data and asserting that
:func:`train_fingerprint` of the training dataset does not move.

* ``cj-completion`` (Complete Journey): temporal split, weeks 1–44 train, 45–53 test.
  The training catalogue is the products bought in the training weeks; shelf prices and
  popularity are recomputed from those weeks only.
* ``bundlerec-completion``: a seeded 20% of bundles (by bundle id) are test bundles.
  Removed from training: those bundles, the user–item rows derived from them
  (``user_item`` is ``user_bundle ⋈ bundle_item``), and every session that contains one.
* ``bundlerec-generation``: a seeded 20% of the sessions that have ground-truth bundles
  are test sessions. Removed from training: those sessions, their bundles and the
  user–item rows derived from those bundles.

Case order is a seeded permutation; ``--cases N`` takes the first N, and the LLM subset
is a prefix of that, so smaller runs are nested in larger ones.

Dev splits (``--split dev``): every weight, threshold or hyper-parameter is chosen on a
dev split carved from the *training* part of the test split only, by the same rules, so a
dev run can never see a test case (``tests/test_eval_dev.py``):

* ``cj-completion``: weeks 1–38 are the dev training data and weeks 39–44 (the last
  ``CJ_DEV_WEEKS`` training weeks) the dev "test" weeks; the cases are built the same way.
  The test weeks 45–53 are dropped before anything else, so the dev split is the same for
  every seed's test split.
* ``bundlerec-completion`` / ``-generation``: the test split's training dataset is split
  again, a seeded 20% of its bundles (sessions) becoming the dev cases, with the same
  holdout rules. It depends on the seed: the dev split of seed 0 is carved from seed 0's
  training part and may hold seed 1's test bundles, so a choice made on it is only valid
  for seed 0's test run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from retrieval.schema import Dataset
from retrieval.sources import add_popularity

CJ_TRAIN_WEEKS = 44
CJ_DEV_WEEKS = 6  # the dev split's "test" weeks: the last 6 training weeks, 39-44
CJ_MIN_TYPES = 4
CJ_MIN_TRAIN_BASKETS = 5
TEST_SHARE = 0.2
SPLITS = ("test", "dev")
PROTOCOLS = ("cj-completion", "bundlerec-completion", "bundlerec-generation")
VARIANTS = ("rule", "llm", "llm+rule")
# (level, metric) each protocol's headline compares, system against the best baseline
MAIN_METRIC = {"cj-completion": ("type", "ndcg@10"), "bundlerec-completion": ("sku", "ndcg@10"),
               "bundlerec-generation": ("pair", "pair_f1")}


def system_name(variant: str) -> str:
    return f"system:{variant}"


@dataclass(frozen=True)
class CompletionCase:
    """Recover ``targets`` given ``anchors`` (and the user, when known)."""

    case_id: str
    anchors: tuple[str, ...]
    targets: tuple[str, ...]  # product ids
    target_types: tuple[str, ...] = ()  # product types, for type-level scoring
    anchor_types: tuple[str, ...] = ()
    user_id: str | None = None


@dataclass(frozen=True)
class GenerationCase:
    """Group a session's ``items`` into bundles; ``bundles`` is the ground truth."""

    case_id: str
    items: tuple[str, ...]
    bundles: tuple[tuple[str, ...], ...]
    intents: tuple[str, ...]


@dataclass
class Split:
    train: Dataset
    cases: list
    info: dict = field(default_factory=dict)


def permuted(keys: list[str], seed: int) -> list[str]:
    """A seeded permutation of ``keys`` (sorted first, so input order does not matter)."""
    ordered = sorted(keys, key=_natural)
    order = np.random.default_rng(seed).permutation(len(ordered))
    return [ordered[i] for i in order]


def first_distinct(ids: Iterable[str], skip: Iterable[str], limit: int) -> list[str]:
    """The first ``limit`` of ``ids`` that are not in ``skip``, each once, in order: how
    every ranked list (of products or of product types) is cut before it is scored."""
    seen = set(skip)
    out: list[str] = []
    for x in ids:
        if len(out) >= limit:
            break
        if x not in seen:
            out.append(x)
            seen.add(x)
    return out


def _natural(key: str):
    return (0, int(key), "") if str(key).isdigit() else (1, 0, str(key))


def train_fingerprint(ds: Dataset) -> str:
    """Hash of everything a build can learn from: products, interactions, users, extras."""
    h = hashlib.sha256()
    frames = [("products", ds.products), ("interactions", ds.interactions), ("users", ds.users)]
    frames += sorted(ds.extras.items())
    for name, frame in frames:
        h.update(name.encode())
        h.update(",".join(map(str, frame.columns)).encode())
        if len(frame):
            h.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return h.hexdigest()


# --- Complete Journey ------------------------------------------------------------------


def cj_raw_transactions(households: set[str] | None = None) -> pd.DataFrame:
    """The package's raw transaction table (shelf prices need its discount columns)."""
    from retrieval.sources import _cj_table

    tx = _cj_table("transactions")
    if households is not None:
        tx = tx[tx["household_id"].astype(str).isin(households)]
    return tx


def cj_shelf_prices(raw_tx: pd.DataFrame) -> pd.Series:
    """Median shelf price per product, the loader's formula, over the rows given."""
    qty = raw_tx["quantity"].where(raw_tx["quantity"] > 0)
    shelf = (raw_tx["sales_value"] + raw_tx["retail_disc"] + raw_tx["coupon_match_disc"]) / qty
    keep = shelf > 0
    return shelf[keep].groupby(raw_tx.loc[keep, "product_id"].astype(str)).median()


def cj_train(ds: Dataset, raw_tx: pd.DataFrame, train_weeks: int = CJ_TRAIN_WEEKS) -> Dataset:
    """The training weeks only: their interactions, the products bought in them, prices
    and popularity from them."""
    tx = ds.interactions[ds.interactions["week"] <= train_weeks].reset_index(drop=True)
    seen = set(tx["product_id"])
    products = ds.products[ds.products["product_id"].isin(seen)].reset_index(drop=True).copy()
    prices = cj_shelf_prices(raw_tx[raw_tx["week"] <= train_weeks])
    products["price"] = products["product_id"].map(prices).astype(float)
    products["in_stock"] = products["price"].notna()
    users = ds.users[ds.users["user_id"].isin(set(tx["user_id"]))].reset_index(drop=True)
    train = Dataset(ds.name, products, tx, users, [], {})
    add_popularity(train)
    return train


def cj_completion(
    ds: Dataset, raw_tx: pd.DataFrame, seed: int, n_cases: int | None = 500,
    train_weeks: int = CJ_TRAIN_WEEKS, min_types: int = CJ_MIN_TYPES,
    min_train_baskets: int = CJ_MIN_TRAIN_BASKETS,
) -> Split:
    """Cases: test-week baskets with >= ``min_types`` distinct product types, from
    households with >= ``min_train_baskets`` training baskets. One seeded anchor per
    basket (among its products that the training catalogue sells); the targets are the
    basket's other products and, at type level, their types other than the anchor's."""
    train = cj_train(ds, raw_tx, train_weeks)
    test = ds.interactions[ds.interactions["week"] > train_weeks]
    type_of = dict(zip(ds.products["product_id"], ds.products["product_type"].astype(str)))
    sellable = set(train.products.loc[train.products["in_stock"], "product_id"])
    n_baskets = train.interactions.groupby("user_id")["basket_id"].nunique()
    regulars = set(n_baskets[n_baskets >= min_train_baskets].index)

    typed = test.assign(ptype=test["product_id"].map(type_of).fillna(""))
    n_types = typed[typed["ptype"] != ""].groupby("basket_id")["ptype"].nunique()
    owner = typed.groupby("basket_id")["user_id"].first()
    has_sellable = typed["product_id"].isin(sellable).groupby(typed["basket_id"]).any()
    keep = n_types.index[(n_types >= min_types).to_numpy()]
    keep = [b for b in keep if owner[b] in regulars and has_sellable[b]]
    rows = typed[typed["basket_id"].isin(set(keep))]
    baskets: dict[str, tuple[str, list[str]]] = {
        str(b): (str(owner[b]), sorted(set(g))) for b, g in rows.groupby("basket_id")["product_id"]
    }

    order = permuted(list(baskets), seed)
    chosen = order[:n_cases] if n_cases else order
    rng = np.random.default_rng([seed, 1])
    cases = []
    for basket_id in chosen:
        user, items = baskets[basket_id]
        options = [p for p in items if p in sellable]
        anchor = options[int(rng.integers(len(options)))]
        anchor_type = type_of.get(anchor, "")
        targets = tuple(p for p in items if p != anchor)
        types = tuple(sorted({type_of.get(p, "") for p in targets} - {"", anchor_type}))
        cases.append(CompletionCase(basket_id, (anchor,), targets, types, (anchor_type,), user))
    info = {
        "train_weeks": f"1-{train_weeks}",
        "test_weeks": f"{train_weeks + 1}-{int(ds.interactions['week'].max())}",
        "train_interactions": int(len(train.interactions)),
        "train_products": int(len(train.products)),
        "train_products_in_stock": int(train.products["in_stock"].sum()),
        "test_baskets": int(test["basket_id"].nunique()),
        "eligible_baskets": len(baskets),
        "cases": len(cases),
        "targets_outside_training_catalogue": int(
            sum(t not in sellable for c in cases for t in c.targets)),
        "targets": int(sum(len(c.targets) for c in cases)),
    }
    return Split(train, cases, info)


# --- BundleRec -------------------------------------------------------------------------


def _without(frame: pd.DataFrame, column: str, keys: set[str]) -> pd.DataFrame:
    return frame[~frame[column].astype(str).isin(keys)].reset_index(drop=True)


def _anti_join_rows(frame: pd.DataFrame, remove: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    """``frame`` minus ``remove`` as multisets of rows over ``cols`` (a row listed twice
    in ``remove`` removes two copies)."""
    if remove.empty:
        return frame.reset_index(drop=True)
    left = frame.assign(_n=frame.groupby(cols).cumcount())
    right = remove[cols].assign(_n=remove.groupby(cols).cumcount(), _drop=True)
    merged = left.merge(right, on=[*cols, "_n"], how="left")
    return frame[merged["_drop"].isna().to_numpy()].reset_index(drop=True)


def bundlerec_holdout(ds: Dataset, test_bundles: set[str], test_sessions: set[str]) -> Dataset:
    """The BundleRec dataset with the given bundles and sessions (and everything derived
    from them) removed; interactions rebuilt by the loader's own rules."""
    from retrieval.sources import _bundlerec_interactions

    ex = {k: v.copy() for k, v in ds.extras.items()}
    bi, ub = ex["bundle_item"], ex["user_bundle"]
    derived = ub[ub["bundle ID"].astype(str).isin(test_bundles)].merge(
        bi[bi["bundle ID"].astype(str).isin(test_bundles)], on="bundle ID")
    ex["user_item"] = _anti_join_rows(ex["user_item"], derived, ["user ID", "item ID", "timestamp"])
    for name in ("bundle_item", "bundle_intent", "user_bundle", "session_bundle"):
        ex[name] = _without(ex[name], "bundle ID", test_bundles)
    for name in ("session_item", "user_session", "session_bundle"):
        ex[name] = _without(ex[name], "session ID", test_sessions)
    interactions, _ = _bundlerec_interactions(Path(ds.name), ex, ds.products)
    known_users = set(ds.interactions["user_id"])  # keeps a --limit slice a slice
    interactions = interactions[interactions["user_id"].isin(known_users)].reset_index(drop=True)
    train = Dataset(ds.name, ds.products.copy(), interactions, ds.users, [], ex)
    add_popularity(train)
    return train


def _bundles(ds: Dataset, catalogue: set[str]) -> dict[str, list[str]]:
    bi = ds.extras["bundle_item"]
    out: dict[str, list[str]] = {}
    for b, i in zip(bi["bundle ID"].astype(str), bi["item ID"].astype(str)):
        if i in catalogue and i not in out.setdefault(b, []):
            out[b].append(i)
    return out


def choose_test(keys: list[str], seed: int, share: float = TEST_SHARE) -> list[str]:
    """The seeded test share of ``keys``, in permuted (case) order."""
    order = permuted(keys, seed)
    return order[: max(1, round(share * len(order)))]


def bundlerec_completion(ds: Dataset, seed: int, n_cases: int | None = None,
                         share: float = TEST_SHARE) -> Split:
    catalogue = set(ds.products["product_id"])
    bundles = {b: items for b, items in _bundles(ds, catalogue).items() if len(items) >= 2}
    test = choose_test(list(bundles), seed, share)
    sb = ds.extras["session_bundle"]
    sessions = set(sb.loc[sb["bundle ID"].astype(str).isin(set(test)), "session ID"].astype(str))
    train = bundlerec_holdout(ds, set(test), sessions)
    rng = np.random.default_rng([seed, 2])
    type_of = dict(zip(ds.products["product_id"], ds.products["product_type"].astype(str)))
    cases = []
    for b in test[:n_cases] if n_cases else test:
        items = bundles[b]
        held = items[int(rng.integers(len(items)))]
        anchors = tuple(i for i in items if i != held)
        cases.append(CompletionCase(b, anchors, (held,), (type_of.get(held, ""),),
                                    tuple(type_of.get(a, "") for a in anchors)))
    info = {
        "bundles": len(bundles), "test_bundles": len(test), "test_share": share,
        "sessions_removed": len(sessions), "cases": len(cases),
        "train_interactions": int(len(train.interactions)),
        "train_bundles": int(train.extras["bundle_item"]["bundle ID"].nunique()),
    }
    return Split(train, cases, info)


def bundlerec_generation(ds: Dataset, seed: int, n_cases: int | None = None,
                         share: float = TEST_SHARE) -> Split:
    """Test sessions: a seeded share of the sessions that have a ground-truth bundle and
    at least two catalogue items. Input: the session's catalogue items, in file order."""
    catalogue = set(ds.products["product_id"])
    bundles = _bundles(ds, catalogue)
    intents = dict(zip(ds.extras["bundle_intent"]["bundle ID"].astype(str),
                       ds.extras["bundle_intent"]["intent"].astype(str)))
    si = ds.extras["session_item"]
    items: dict[str, list[str]] = {}
    for s, i in zip(si["session ID"].astype(str), si["item ID"].astype(str)):
        if i in catalogue and i not in items.setdefault(s, []):
            items[s].append(i)
    sb = ds.extras["session_bundle"]
    truth: dict[str, list[str]] = {}
    for s, b in zip(sb["session ID"].astype(str), sb["bundle ID"].astype(str)):
        if len(bundles.get(b, [])) >= 2:
            truth.setdefault(s, []).append(b)
    eligible = [s for s in truth if len(items.get(s, [])) >= 2]
    test = choose_test(eligible, seed, share)
    test_bundles = {b for s in test for b in truth[s]}
    train = bundlerec_holdout(ds, test_bundles, set(test))
    cases = [
        GenerationCase(s, tuple(items[s]), tuple(tuple(bundles[b]) for b in truth[s]),
                       tuple(" ".join(intents.get(b, "").split()) for b in truth[s]))
        for s in (test[:n_cases] if n_cases else test)
    ]
    info = {
        "sessions": int(si["session ID"].nunique()), "sessions_with_bundles": len(eligible),
        "test_sessions": len(test), "test_share": share, "cases": len(cases),
        "test_bundles": len(test_bundles),
        "train_interactions": int(len(train.interactions)),
        "train_bundles": int(train.extras["bundle_item"]["bundle ID"].nunique()),
    }
    return Split(train, cases, info)


# --- dev splits: carved from the training part only -------------------------------------


def _mark_dev(split: Split, outer: dict) -> Split:
    split.info = {"split": "dev", **split.info, "outer_test_split": outer}
    return split


def cj_dev(ds: Dataset, raw_tx: pd.DataFrame, seed: int, n_cases: int | None = 500,
           dev_weeks: int = CJ_DEV_WEEKS) -> Split:
    """Weeks 1..44−dev_weeks train, the last ``dev_weeks`` training weeks are the cases.
    The test weeks are dropped first: nothing after week 44 can reach the dev split."""
    weeks = ds.interactions["week"] <= CJ_TRAIN_WEEKS
    training = Dataset(ds.name, ds.products, ds.interactions[weeks].reset_index(drop=True), ds.users, [], {})
    raw = raw_tx[raw_tx["week"] <= CJ_TRAIN_WEEKS]
    split = cj_completion(training, raw, seed, n_cases, train_weeks=CJ_TRAIN_WEEKS - dev_weeks)
    return _mark_dev(split, {"train_weeks": f"1-{CJ_TRAIN_WEEKS}", "test_weeks_dropped": f">{CJ_TRAIN_WEEKS}"})


def _resplit(protocol: Callable[[Dataset, int, int | None, float], Split], outer: Split, seed: int,
             n_cases: int | None, share: float, outer_keys: tuple[str, ...]) -> Split:
    """A BundleRec dev split: the outer split's training part split again by the same
    protocol, recording the outer split's sizes under ``outer_keys``."""
    split = protocol(outer.train, seed, n_cases, share)
    return _mark_dev(split, {k: outer.info[k] for k in outer_keys})


def bundlerec_completion_dev(ds: Dataset, seed: int, n_cases: int | None = None,
                             share: float = TEST_SHARE) -> Split:
    """The seed's test split's training part, split again by the same rules."""
    outer = bundlerec_completion(ds, seed, share=share)
    return bundlerec_completion_dev_of(outer, seed, n_cases, share)


def bundlerec_completion_dev_of(outer: Split, seed: int, n_cases: int | None = None,
                                share: float = TEST_SHARE) -> Split:
    return _resplit(bundlerec_completion, outer, seed, n_cases, share, ("test_bundles", "train_bundles"))


def bundlerec_generation_dev(ds: Dataset, seed: int, n_cases: int | None = None,
                             share: float = TEST_SHARE) -> Split:
    outer = bundlerec_generation(ds, seed, share=share)
    return bundlerec_generation_dev_of(outer, seed, n_cases, share)


def bundlerec_generation_dev_of(outer: Split, seed: int, n_cases: int | None = None,
                                share: float = TEST_SHARE) -> Split:
    return _resplit(bundlerec_generation, outer, seed, n_cases, share, ("test_sessions", "train_bundles"))
