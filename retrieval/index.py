"""Building and opening the index: catalogue, embeddings, Chroma collections, profiles and
co-purchase statistics, kept together in one data dir.

Layout::

    DATA_DIR/current.json              which build serves (swapped atomically)
    DATA_DIR/builds/<build>/           catalogue.parquet, item_embeddings.npy,
                                       copurchase_*.npz, ranker files, history.parquet,
                                       filter_columns.npz, quarantine.csv, build.json
    DATA_DIR/cache/embedding_cache.npz text-hash -> vector (makes rebuilds incremental)
    DATA_DIR/chroma/                   the embedded Chroma store (unless CHROMA_URL)

A build writes a new build folder and new Chroma collections, then replaces
``current.json`` with one ``os.replace``: a build killed half-way leaves the old index
serving. Re-running an unchanged build is a no-op.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from . import filters
from .buildtime import MAX_REJECTED_SHARE
from .config import Settings
from .copurchase import CoPurchase, baskets_of
from .embeddings import Embedder
from .profiles import UserProfile, build_profiles
from .schema import Dataset, product_text
from .store import ChromaStore, StoreUnavailable, scrub_unused_capacity
from .titles import display_titles
from .validation import PartialBuild, build_problem

if TYPE_CHECKING:  # the ranker pulls in lightgbm: imported on first use only
    from .ranker import Ranker

FILTER_COLUMNS = "filter_columns.npz"
BUILD_FORMAT = 3  # 2: extra tables keep pseudonymised user ids; 3: a learned ranker and history.parquet
PRODUCT_META_FIELDS = ("title", "category", "department", "product_type", "brand", "price", "in_stock", "popularity")


class IndexMissing(RuntimeError):
    pass


class IndexDamaged(IndexMissing):
    """``current.json`` points at a build whose files are gone or unreadable."""


@dataclass
class BuildReport:
    build_id: str
    skipped: bool
    summary: dict
    seconds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"build_id": self.build_id, "skipped": self.skipped, **self.summary, "seconds": self.seconds}


def dataset_fingerprint(ds: Dataset, settings: Settings) -> str:
    """Changes whenever the data or anything that shapes the index does."""
    h = hashlib.sha256()
    h.update(str(BUILD_FORMAT).encode())
    h.update(pd.util.hash_pandas_object(ds.products, index=False).values.tobytes())
    h.update(pd.util.hash_pandas_object(ds.interactions.drop(columns=["timestamp"]), index=False).values.tobytes())
    h.update(ds.interactions["timestamp"].astype("int64").to_numpy().tobytes())
    h.update(settings.profile.model_dump_json().encode())
    # the ranker is trained at build time, so its settings, model version and features
    # shape the build too (a build whose saved model no longer loads would fall back)
    h.update(settings.ranker.model_dump_json().encode())
    from .ranker import FEATURES, VERSION

    h.update(json.dumps([VERSION, list(FEATURES)]).encode())
    return h.hexdigest()[:16]


def _write_json_atomic(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_current(data_dir: Path) -> dict | None:
    """The pointer to the serving build, or None when there is none. A damaged pointer
    counts as none, so that `bundle-assistant index` (the fix) can rebuild over it."""
    path = Path(data_dir) / "current.json"
    if not path.exists():
        return None
    try:
        pointer = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    needed = {"build_id", "folder", "source", "products_collection", "profiles_collection"}
    return pointer if isinstance(pointer, dict) and needed <= pointer.keys() else None


def build_index(
    ds: Dataset,
    settings: Settings,
    *,
    embedder: Embedder | None = None,
    pseudonymise: Callable[[str], str] = str,
    progress: bool = True,
    force: bool = False,
    on_stage: Callable[[str], None] | None = None,
    max_rejected_share: float = MAX_REJECTED_SHARE,
    allow_partial: bool = False,
) -> BuildReport:
    """Build ``ds`` into a new build folder and switch ``current.json`` to it. Raises
    :class:`PartialBuild` before touching the serving index when ``ds`` has no products or
    rejected more than ``max_rejected_share`` of its rows (unless ``allow_partial``)."""
    data_dir = Path(settings.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = dataset_fingerprint(ds, settings)
    current = read_current(data_dir)
    store = ChromaStore(data_dir, settings.chroma_url)
    if (not force and current and current.get("fingerprint") == fingerprint
            and current.get("products_collection") in store.collections()):
        _scrub_store(settings)  # an index built before the scrub existed is cleaned too
        return BuildReport(current["build_id"], True, ds.summary())
    _refuse_partial(ds, data_dir, current, max_rejected_share, allow_partial)

    build_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + fingerprint[:8]
    folder = data_dir / "builds" / build_id
    folder.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    stage = on_stage or (lambda s: None)

    def timed(name: str):
        class _T:
            def __enter__(self_):
                stage(name)
                self_.t = time.perf_counter()
            def __exit__(self_, *exc):
                seconds[name] = round(time.perf_counter() - self_.t, 2)
        return _T()

    products = ds.products.reset_index(drop=True)
    with timed("embed"):
        embedder = embedder or Embedder(batch_size=settings.embedding_batch_size, cache_dir=data_dir / "cache")
        texts = [product_text(r) for r in products[["title", "department"]].to_dict("records")]
        vectors = embedder.encode(texts, progress=progress)
        if embedder.cache is not None:
            embedder.cache.save()
    with timed("products_store"):
        products_collection = f"products__{build_id.replace('T', '').replace('-', '_')}"
        store.create(products_collection)
        metas = products[list(PRODUCT_META_FIELDS)].assign(price=products["price"].fillna(-1.0))
        store.upsert(products_collection, products["product_id"].tolist(), vectors,
                     metas.to_dict("records"), documents=texts, progress=progress, desc="products")
    with timed("copurchase"):
        copurchase = CoPurchase.build(_baskets(ds), products)
        copurchase.save(folder)
    with timed("profiles"):
        profiles = build_profiles(ds.interactions, products, vectors, settings.profile, ds.users, pseudonymise)
        profiles_collection = products_collection.replace("products__", "profiles__")
        store.create(profiles_collection)
        _store_profiles(store, profiles_collection, profiles, progress)
    with timed("ranker"):
        from .ranker import train_and_save  # the item ranker, learned from this build's data only

        train_and_save(ds.interactions, products, vectors, settings.ranker, folder, extras=ds.extras,
                       encode=embedder.encode, key_of=pseudonymise)
    with timed("save"):
        products.to_parquet(folder / "catalogue.parquet", index=False)
        np.save(folder / "item_embeddings.npy", vectors)
        _write_quarantine(ds, folder / "quarantine.csv")
        for name, extra in ds.extras.items():
            _with_pseudonymous_users(extra, pseudonymise).to_parquet(folder / f"extra_{name}.parquet", index=False)
        _history_table(ds, pseudonymise).to_parquet(folder / "history.parquet", index=False)
    with timed("filters"):
        # the diet and exclusion-group columns: seconds each on the full catalogue, paid
        # here rather than by a shopper's first "vegan" request
        filters.for_catalogue(products).save_columns(folder / FILTER_COLUMNS)
        summary = {**ds.summary(), "profiles": len(profiles)}
        (folder / "build.json").write_text(json.dumps({"fingerprint": fingerprint, **summary}, indent=2))
    pointer = {
        "build_id": build_id,
        "fingerprint": fingerprint,
        "source": ds.name,
        "folder": str(folder.relative_to(data_dir)),
        "products_collection": products_collection,
        "profiles_collection": profiles_collection,
        "created": datetime.now(UTC).isoformat(),
    }
    _write_json_atomic(data_dir / "current.json", pointer)
    _drop_old_builds(data_dir, store, keep=build_id)
    _scrub_store(settings)
    return BuildReport(build_id, False, summary, seconds)


def _scrub_store(settings: Settings) -> None:
    """Zero what hnswlib persisted of the build process's heap (see
    :func:`~retrieval.store.scrub_unused_capacity`); a server's files are the server's."""
    if not settings.chroma_url:
        scrub_unused_capacity(Path(settings.data_dir) / "chroma")


def _write_quarantine(ds: Dataset, path: Path) -> None:
    from .safe_csv import write_safe_csv  # a merchant opens this report in a spreadsheet

    # a rejected user id stays out of storage: the file and line say where to look
    rejected = [{"line": None, **r.as_dict(), "value": "" if r.field == "user_id" else r.value}
                for r in ds.quarantine]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_safe_csv(pd.DataFrame(rejected, columns=["file", "line", "row", "field", "reason", "value"]), path)


def _refuse_partial(ds: Dataset, data_dir: Path, current: dict | None, max_share: float,
                    allow_partial: bool) -> None:
    """Stop an empty or mostly rejected build before it writes anything the serving index
    uses; the quarantine report still goes to ``DATA_DIR/rejected_build/`` so the user can
    see what was wrong."""
    summary = ds.summary()
    problem = build_problem(summary["products"], summary["interactions"], summary["rejected"], max_share,
                            allow_partial=allow_partial)
    if problem is None:
        return
    report = data_dir / "rejected_build" / "quarantine.csv"
    _write_quarantine(ds, report)
    kept = (f"the index in {data_dir} was not changed (build {current['build_id']} still serves)"
            if current else f"no index was written to {data_dir}")
    raise PartialBuild(f"{problem}; {kept}; quarantine report: {report}", report)


def _baskets(ds: Dataset) -> pd.DataFrame:
    baskets = baskets_of(ds.interactions)
    extra = ds.extras.get("bundle_item")
    if extra is not None and {"bundle ID", "item ID"} <= set(extra.columns):
        # hand-made bundles are the strongest evidence of what goes together
        bundles = pd.DataFrame({"basket_id": "b" + extra["bundle ID"].astype(str),
                                "product_id": extra["item ID"].astype(str)})
        baskets = pd.concat([baskets, bundles], ignore_index=True)
    return baskets


def _history_table(ds: Dataset, pseudonymise: Callable[[str], str]) -> pd.DataFrame:
    """The purchase history the merchandiser's projections read (basket, pseudonymous
    user, product, sales value), so that they need nothing outside the build."""
    baskets = baskets_of(ds.interactions)
    value = ds.interactions["value"] if "value" in ds.interactions else pd.Series(float("nan"), index=baskets.index)
    # basket ids become numbers: a source without them groups by user and day, and that
    # fallback id holds the raw user id
    basket_codes, _ = pd.factorize(baskets["basket_id"])
    return pd.DataFrame({"basket_id": basket_codes.astype(np.int64),
                         "user_id": _pseudonymous(ds.interactions["user_id"], pseudonymise),
                         "product_id": baskets["product_id"].to_numpy(),
                         "value": pd.to_numeric(value, errors="coerce").to_numpy(dtype=float)})


def _pseudonymous(users: pd.Series, pseudonymise: Callable[[str], str]) -> np.ndarray:
    """One keyed hash per distinct user, not per row (1.5 M rows on Complete Journey)."""
    codes, uniques = pd.factorize(users.astype(str))
    if not len(codes):
        return np.array([], dtype=object)
    return np.array([pseudonymise(u) for u in uniques], dtype=object)[codes]


def _with_pseudonymous_users(frame: pd.DataFrame, pseudonymise: Callable[[str], str]) -> pd.DataFrame:
    """A source's extra tables (BundleRec's user_item, user_bundle, user_session) keep user
    ids only as the same pseudonyms the profiles use."""
    users = [c for c in frame.columns if str(c).strip().lower().replace("_", " ") == "user id"]
    if not users:
        return frame
    out = frame.copy()
    for column in users:
        out[column] = _pseudonymous(out[column], pseudonymise)
    return out


def _store_profiles(store: ChromaStore, name: str, profiles: dict[str, UserProfile], progress: bool) -> None:
    items = [p for p in profiles.values() if p.preference is not None and any(p.preference)]
    if not items:
        return
    store.upsert(
        name, [p.user_key for p in items],
        np.array([p.preference for p in items], dtype=np.float32),
        [p.to_metadata() for p in items], progress=progress, desc="profiles",
    )


def _drop_old_builds(data_dir: Path, store: ChromaStore, keep: str) -> None:
    """Remove superseded builds (folders and their collections) once the switch is done."""
    keep_suffix = keep.replace("T", "").replace("-", "_")
    for name in store.collections():
        if name.startswith(("products__", "profiles__")) and not name.endswith(keep_suffix):
            store.drop(name)
    for old in (data_dir / "builds").iterdir():
        if old.name != keep:
            shutil.rmtree(old, ignore_errors=True)


class Index:
    """A built index, opened read-only for serving."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.data_dir = Path(settings.data_dir)
        pointer = read_current(self.data_dir)
        if pointer is None:
            raise IndexMissing(
                f"no index in {self.data_dir}; build one with `bundle-assistant index` "
                f"(add --data-dir {self.data_dir} if you chose another folder)"
            )
        self.pointer = pointer
        self.folder = self.data_dir / pointer["folder"]
        self.source = pointer["source"]
        self.store = ChromaStore(self.data_dir, settings.chroma_url)
        self.products_collection = pointer["products_collection"]
        self.profiles_collection = pointer["profiles_collection"]
        if self.products_collection not in self.store.collections():
            raise StoreUnavailable(
                f"the Chroma store has no collection {self.products_collection}; "
                "rebuild with `bundle-assistant index --force`"
            )
        self._ranker: Ranker | None = None
        try:
            self.products = pd.read_parquet(self.folder / "catalogue.parquet")
            self.products["product_id"] = self.products["product_id"].astype(str)
            if "display_title" not in self.products.columns:  # for people; "title" stays for search/export
                self.products["display_title"] = display_titles(self.products, self.source)
            self.catalogue = self.products.set_index("product_id", drop=False)
            filters.for_catalogue(self.products).load_columns(self.folder / FILTER_COLUMNS)
            self.item_embeddings = np.load(self.folder / "item_embeddings.npy")
            self.row_of = pd.Series(np.arange(len(self.products)), index=self.products["product_id"])
            self.copurchase = CoPurchase.load(self.folder, self.products)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            # a deleted or truncated build file: say how to get a working index back
            raise IndexDamaged(
                f"the index in {self.data_dir} is damaged (build {pointer['build_id']}: "
                f"{type(exc).__name__}: {exc}); rebuild it with `bundle-assistant index --force "
                f"--data-dir {self.data_dir}` and the --source/--path it was built from"
            ) from exc

    @property
    def ranker(self) -> Ranker:
        """The build's item ranker (:class:`retrieval.ranker.Ranker`), loaded on first use;
        the documented fallback blend when the build has no model file."""
        if self._ranker is None:
            from .ranker import Ranker

            self._ranker = Ranker.load(self.folder, self.products, self.item_embeddings, self.copurchase,
                                       self.settings.ranker)
        return self._ranker

    def embedding(self, product_id: str) -> np.ndarray | None:
        row = self.row_of.get(str(product_id))
        return None if row is None else self.item_embeddings[row]

    def embeddings_of(self, ids) -> dict[str, np.ndarray]:
        return {str(i): self.item_embeddings[self.row_of[str(i)]] for i in ids if str(i) in self.row_of.index}

    def profile(self, user_key: str) -> UserProfile | None:
        got = self.store.fetch(self.profiles_collection, [user_key], with_embeddings=True)
        if user_key not in got:
            return None
        return UserProfile.from_metadata(got[user_key]["metadata"], got[user_key]["embedding"])

    def extra(self, name: str) -> pd.DataFrame | None:
        path = self.folder / f"extra_{name}.parquet"
        return pd.read_parquet(path) if path.exists() else None

    def quarantine(self) -> pd.DataFrame:
        return pd.read_csv(self.folder / "quarantine.csv")
