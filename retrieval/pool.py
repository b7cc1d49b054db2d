"""The recall-oriented candidate pool: several hundred products merged from generators,
each generator recorded as the candidate's reason.

Generators (in :data:`GENERATORS` order, the order a candidate's reasons are listed in):

* ``repeat``       — the user's own history, by recency-weighted basket count, plus the
  usual SKU of each of the user's ``repeat_types_k`` most bought product types (a type
  bought often but not lately is still a likely basket member);
* ``cooc``         — SKU co-occurrence with the anchors (pairs seen at least twice),
  most co-bought first;
* ``cooc_once``    — the back-off: pairs seen once, for an anchor with fewer than
  ``cooc_min_frequent`` frequent pairs (sparse SKUs have no other co-purchase evidence);
* ``type_cooc``    — the anchors' complementary product types (type-level NPMI), each
  mapped to the user's usual SKU of that type, else the type's best seller;
* ``similar``      — embedding neighbours of the anchors' mean embedding;
* ``semantic``     — embedding neighbours of the query;
* ``profile``      — embedding neighbours of the user's preference embedding;
* ``type_popular`` — the best sellers of the relevant types (the anchors' complementary
  types and the user's most bought types);
* ``role``         — for each product type a composer asked for: the user's usual SKU of
  it, then its best sellers;
* ``popular``      — the overall best sellers, so the pool is never empty.

Everything works on catalogue *row numbers* (the index's product order) so that the
same code serves the index (:class:`RankerData` of the whole build) and ranker training
(:class:`RankerData` of the history part of an internal split).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .config import RankerConfig
from .copurchase import CoPurchase

GENERATORS: tuple[str, ...] = (
    "repeat", "cooc", "cooc_once", "type_cooc", "similar", "semantic", "profile", "type_popular", "role", "popular",
)


# --- the data the generators and the ranker's features read -------------------------------


@dataclass
class CatalogueArrays:
    """Per-row product facts as arrays (row = position in the index's product table)."""

    ids: np.ndarray  # product ids (str, object array)
    titles: np.ndarray
    type_code: np.ndarray  # int64, -1 for no type
    type_names: np.ndarray  # str, sorted; type_code indexes it
    popularity: np.ndarray  # float64 in [0, 1]
    price: np.ndarray  # float64, NaN when unknown
    in_stock: np.ndarray  # bool
    embeddings: np.ndarray  # (n, d) float32, rows L2-normalised

    @classmethod
    def from_products(cls, products: pd.DataFrame, embeddings: np.ndarray,
                      popularity: np.ndarray | None = None, sellable: np.ndarray | None = None) -> CatalogueArrays:
        types = products["product_type"].fillna("").astype(str).to_numpy()
        names = np.array(sorted(set(types) - {""}), dtype=object)
        code = np.full(len(types), -1, dtype=np.int64)
        known = types != ""
        code[known] = np.searchsorted(names, types[known])
        pop = products["popularity"].fillna(0.0).to_numpy(dtype=np.float64) if popularity is None else popularity
        stock = products["in_stock"] if "in_stock" in products.columns else pd.Series(True, index=products.index)
        return cls(
            ids=products["product_id"].astype(str).to_numpy(dtype=object),
            titles=products["title"].astype(str).to_numpy(dtype=object),
            type_code=code, type_names=names, popularity=np.asarray(pop, dtype=np.float64),
            price=products["price"].to_numpy(dtype=np.float64, na_value=np.nan),
            in_stock=stock.fillna(False).astype(bool).to_numpy() & (True if sellable is None else sellable),
            embeddings=np.asarray(embeddings, dtype=np.float32),
        )

    def __len__(self) -> int:
        return len(self.ids)

    @functools.cached_property
    def row_of(self) -> dict[str, int]:
        return {pid: i for i, pid in enumerate(self.ids.tolist())}

    @functools.cached_property
    def by_popularity(self) -> np.ndarray:
        """In-stock rows, most popular first, ties by product id."""
        rows = np.flatnonzero(self.in_stock)
        return rows[np.lexsort((self.ids[rows].astype(str), -self.popularity[rows]))]

    @functools.cached_property
    def best_of_type(self) -> dict[int, np.ndarray]:
        """type code -> its 20 most popular in-stock rows (ties by id)."""
        ranked = self.by_popularity
        out: dict[int, list[int]] = {}
        for row in ranked.tolist():
            t = int(self.type_code[row])
            if t >= 0:
                bucket = out.setdefault(t, [])
                if len(bucket) < 20:
                    bucket.append(row)
        return {t: np.array(v, dtype=np.int64) for t, v in out.items()}

    @functools.cached_property
    def stock(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(in-stock rows, their embeddings, their ids as str), for exact searches."""
        rows = np.flatnonzero(self.in_stock)
        return rows, np.ascontiguousarray(self.embeddings[rows]), self.ids[rows].astype(str)

    def type_code_of(self, name: str) -> int:
        i = int(np.searchsorted(self.type_names, name))
        return i if i < len(self.type_names) and self.type_names[i] == name else -1


class CoStats:
    """Vectorised co-occurrence lookups over a :class:`CoPurchase`, by catalogue row."""

    def __init__(self, cop: CoPurchase, catalogue: CatalogueArrays):
        self.cop = cop
        items, types = cop.items, cop.types
        items.counts.sort_indices()
        types.counts.sort_indices()
        self.n = float(max(items.n_baskets, 1))
        self.n_types = float(max(types.n_baskets, 1))
        pos = {k: i for i, k in enumerate(items.keys.astype(str).tolist())}
        self.item_of_row = np.array([pos.get(pid, -1) for pid in catalogue.ids.tolist()], dtype=np.int64)
        self.row_of_item = np.full(len(items.keys), -1, dtype=np.int64)
        known = self.item_of_row >= 0
        self.row_of_item[self.item_of_row[known]] = np.flatnonzero(known)
        tpos = {k: i for i, k in enumerate(types.keys.astype(str).tolist())}
        self.type_of_code = np.array([tpos.get(t, -1) for t in catalogue.type_names.tolist()], dtype=np.int64)
        self.code_of_type = np.full(len(types.keys), -1, dtype=np.int64)
        tk = self.type_of_code >= 0
        self.code_of_type[self.type_of_code[tk]] = np.flatnonzero(tk)
        self.item_n = items.counts.diagonal().astype(np.float64)
        self.type_n = types.counts.diagonal().astype(np.float64)
        self._ctypes: dict[tuple[int, int, float], np.ndarray] = {}

    # -- rows of the sparse tables ---------------------------------------------------------
    def _item_row(self, item: int) -> tuple[np.ndarray, np.ndarray]:
        c = self.cop.items.counts
        lo, hi = c.indptr[item], c.indptr[item + 1]
        return c.indices[lo:hi], c.data[lo:hi].astype(np.float64)

    def _type_row(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        c = self.cop.types.counts
        lo, hi = c.indptr[t], c.indptr[t + 1]
        return c.indices[lo:hi], c.data[lo:hi].astype(np.float64)

    @staticmethod
    def _gather(cols: np.ndarray, vals: np.ndarray, want: np.ndarray) -> np.ndarray:
        """vals at the positions of ``want`` in the sorted ``cols`` (0 where absent or -1)."""
        out = np.zeros(len(want), dtype=np.float64)
        if not len(cols):
            return out
        at = np.minimum(np.searchsorted(cols, want), len(cols) - 1)
        hit = (cols[at] == want) & (want >= 0)
        out[hit] = vals[at[hit]]
        return out

    # -- pair statistics (anchors x candidates) ------------------------------------------------
    def sku_pairs(self, anchor_rows: Sequence[int], cand_rows: np.ndarray) -> dict[str, np.ndarray]:
        """count, confidence (anchor -> candidate), lift, NPMI, each (anchors x candidates)."""
        cand = self.item_of_row[cand_rows]
        n_b = np.where(cand >= 0, self.item_n[np.maximum(cand, 0)], 0.0)
        rows = []
        for a in anchor_rows:
            ia = int(self.item_of_row[a])
            if ia < 0:
                rows.append(np.zeros(len(cand_rows)))
                continue
            cols, vals = self._item_row(ia)
            rows.append(self._gather(cols, vals, cand))
        counts = np.array(rows).reshape(len(anchor_rows), len(cand_rows))
        n_a = np.array([self.item_n[self.item_of_row[a]] if self.item_of_row[a] >= 0 else 0.0
                        for a in anchor_rows]).reshape(-1, 1)
        return _measures(counts, n_a, n_b.reshape(1, -1), self.n)

    def type_pairs(self, anchor_codes: Sequence[int], cand_codes: np.ndarray) -> dict[str, np.ndarray]:
        cand = np.where(cand_codes >= 0, self.type_of_code[np.maximum(cand_codes, 0)], -1)
        n_b = np.where(cand >= 0, self.type_n[np.maximum(cand, 0)], 0.0)
        rows, n_a = [], []
        for code in anchor_codes:
            it = int(self.type_of_code[code]) if code >= 0 else -1
            if it < 0:
                rows.append(np.zeros(len(cand_codes)))
                n_a.append(0.0)
                continue
            cols, vals = self._type_row(it)
            rows.append(self._gather(cols, vals, cand))
            n_a.append(self.type_n[it])
        counts = np.array(rows).reshape(len(anchor_codes), len(cand_codes))
        return _measures(counts, np.array(n_a).reshape(-1, 1), n_b.reshape(1, -1), self.n_types)

    # -- generators' lookups ---------------------------------------------------------------------
    def neighbours(self, row: int, min_count: float, max_count: float = np.inf) -> tuple[np.ndarray, np.ndarray]:
        """(catalogue rows, counts) co-bought with ``row`` with min <= count <= max, most
        co-bought first, ties by NPMI then row."""
        ia = int(self.item_of_row[row])
        if ia < 0:
            return np.array([], dtype=np.int64), np.array([])
        cols, vals = self._item_row(ia)
        keep = (cols != ia) & (vals >= min_count) & (vals <= max_count)
        cols, vals = cols[keep], vals[keep]
        n_b = self.item_n[cols]
        npmi = _measures(vals.reshape(1, -1), np.array([[self.item_n[ia]]]), n_b.reshape(1, -1), self.n)["npmi"][0]
        order = np.lexsort((cols, -npmi, -vals))
        return self.row_of_item[cols[order]], vals[order]

    def complement_types(self, code: int, k: int, min_count: float = 5.0) -> np.ndarray:
        """The ``k`` type codes that go best with type ``code`` (NPMI, pairs seen at least
        ``min_count`` times), other types only."""
        key = (int(code), int(k), float(min_count))
        if key not in self._ctypes:
            it = int(self.type_of_code[code]) if code >= 0 else -1
            if it < 0:
                self._ctypes[key] = np.array([], dtype=np.int64)
            else:
                cols, vals = self._type_row(it)
                keep = (cols != it) & (vals >= min_count) & (self.code_of_type[cols] >= 0)
                cols, vals = cols[keep], vals[keep]
                npmi = _measures(vals.reshape(1, -1), np.array([[self.type_n[it]]]),
                                 self.type_n[cols].reshape(1, -1), self.n_types)["npmi"][0]
                order = np.lexsort((cols, -npmi))[:k]
                self._ctypes[key] = self.code_of_type[cols[order]]
        return self._ctypes[key]


def _measures(counts: np.ndarray, n_a: np.ndarray, n_b: np.ndarray, n: float) -> dict[str, np.ndarray]:
    """confidence, lift and NPMI from counts (the formulas of :mod:`retrieval.copurchase`);
    an unseen pair of two known items has NPMI -1, of an unknown item 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        conf = np.where(n_a > 0, counts / np.where(n_a > 0, n_a, 1.0), 0.0)
        denom = n_a * n_b
        lift = np.where((counts > 0) & (denom > 0), counts * n / np.where(denom > 0, denom, 1.0), 0.0)
        p_ab = counts / n
        npmi = np.where(counts > 0, np.where(p_ab >= 1.0, 1.0, np.log(np.maximum(lift, 1e-300)) / -np.log(p_ab)),
                        np.where(denom > 0, -1.0, 0.0))
    return {"count": counts, "confidence": conf, "lift": lift, "npmi": np.clip(npmi, -1.0, 1.0)}


@dataclass
class UserRow:
    """One user's history: per item and per product type, the baskets holding it, its
    recency-weighted count, and its first and last day."""

    items: np.ndarray  # catalogue rows, sorted
    item_stats: np.ndarray  # (len(items), 4): baskets, decayed, first day, last day
    types: np.ndarray  # type codes, sorted
    type_stats: np.ndarray
    n_baskets: float
    first_day: float
    last_day: float
    median_price: float  # NaN when unknown
    preference: np.ndarray | None = None  # decayed mean embedding of the user's items
    usual_of_type: dict[int, int] = field(default_factory=dict)  # type code -> most bought row

    def lookup(self, rows: np.ndarray) -> np.ndarray:
        """item stats for ``rows`` (zeros and NaN days where never bought)."""
        return _lookup(self.items, self.item_stats, rows)

    def lookup_types(self, codes: np.ndarray) -> np.ndarray:
        return _lookup(self.types, self.type_stats, codes)


def _lookup(keys: np.ndarray, stats: np.ndarray, want: np.ndarray) -> np.ndarray:
    out = np.zeros((len(want), 4), dtype=np.float64)
    out[:, 2:] = np.nan
    if not len(keys):
        return out
    at = np.minimum(np.searchsorted(keys, want), len(keys) - 1)
    hit = keys[at] == want
    out[hit] = stats[at[hit]]
    return out


@dataclass
class UserHistory:
    """Every user's item and type history, as flat sorted arrays (CSR-like), keyed by the
    user key the profiles use (pseudonymised at index time)."""

    keys: np.ndarray  # sorted user keys
    item_ptr: np.ndarray
    item_cols: np.ndarray
    item_stats: np.ndarray
    type_ptr: np.ndarray
    type_cols: np.ndarray
    type_stats: np.ndarray
    users: np.ndarray  # (n_users, 4): baskets, first day, last day, median price

    @classmethod
    def empty(cls) -> UserHistory:
        z = np.zeros(1, dtype=np.int64)
        return cls(np.array([], dtype=object), z, np.array([], dtype=np.int64), np.zeros((0, 4)),
                   z.copy(), np.array([], dtype=np.int64), np.zeros((0, 4)), np.zeros((0, 4)))

    @classmethod
    def build(cls, interactions: pd.DataFrame, catalogue: CatalogueArrays, half_life_days: float,
              key_of: Callable[[str], str] = str) -> UserHistory:
        tx = _basket_rows(interactions, catalogue)
        if tx.empty:
            return cls.empty()
        raw = tx["user_id"].astype(str)
        keys_of = {u: key_of(u) for u in raw.unique()}  # a pseudonym (an HMAC) per user, not per row
        tx["user"] = raw.map(keys_of)
        last = tx.groupby("user")["day"].transform("max")
        tx["w"] = np.power(0.5, (last - tx["day"]) / half_life_days)
        users = tx.groupby("user").agg(n=("basket", "nunique"), first=("day", "min"), last=("day", "max"))
        price = pd.Series(catalogue.price[tx["row"].to_numpy()], index=tx.index)
        users["price"] = price.groupby(tx["user"]).median()
        keys = np.array(sorted(users.index.astype(str)), dtype=object)
        users = users.loc[keys]
        ucode = pd.Series(np.arange(len(keys)), index=keys)
        i_ptr, i_cols, i_stats = _per_key(tx, "row", ucode, len(keys))
        typed = tx[tx["type"] >= 0].drop_duplicates(["user", "basket", "type"])  # a type counts once a basket
        t_ptr, t_cols, t_stats = _per_key(typed, "type", ucode, len(keys))
        return cls(keys, i_ptr, i_cols, i_stats, t_ptr, t_cols, t_stats,
                   users[["n", "first", "last", "price"]].to_numpy(dtype=np.float64))

    def row(self, key: str | None, catalogue: CatalogueArrays) -> UserRow | None:
        if key is None or not len(self.keys):
            return None
        i = int(np.searchsorted(self.keys, key))
        if i >= len(self.keys) or self.keys[i] != key:
            return None
        lo, hi = self.item_ptr[i], self.item_ptr[i + 1]
        tlo, thi = self.type_ptr[i], self.type_ptr[i + 1]
        n, first, last, price = self.users[i]
        row = UserRow(self.item_cols[lo:hi], self.item_stats[lo:hi], self.type_cols[tlo:thi],
                      self.type_stats[tlo:thi], n, first, last, price)
        items, stats = row.items, row.item_stats
        codes = catalogue.type_code[items]
        order = np.lexsort((catalogue.ids[items].astype(str), -stats[:, 3], -stats[:, 0], codes))
        for j in order.tolist():  # most baskets, then most recent, then id
            row.usual_of_type.setdefault(int(codes[j]), int(items[j]))
        row.usual_of_type.pop(-1, None)
        if len(items):
            vec = stats[:, 1] @ catalogue.embeddings[items].astype(np.float64)
            norm = float(np.linalg.norm(vec))
            row.preference = (vec / norm).astype(np.float32) if norm > 0 else None
        return row

    def save(self, path) -> None:
        np.savez(path, keys=self.keys.astype(str), item_ptr=self.item_ptr, item_cols=self.item_cols,
                 item_stats=self.item_stats, type_ptr=self.type_ptr, type_cols=self.type_cols,
                 type_stats=self.type_stats, users=self.users)

    @classmethod
    def load(cls, path) -> UserHistory:
        z = np.load(path, allow_pickle=False)
        return cls(z["keys"].astype(object), z["item_ptr"], z["item_cols"], z["item_stats"], z["type_ptr"],
                   z["type_cols"], z["type_stats"], z["users"])


def _basket_rows(interactions: pd.DataFrame, catalogue: CatalogueArrays) -> pd.DataFrame:
    """One row per (user, basket, product) with catalogue row, type code and day."""
    if interactions.empty:
        return pd.DataFrame(columns=["user_id", "basket", "row", "type", "day"])
    rows = interactions["product_id"].astype(str).map(catalogue.row_of)
    known = rows.notna().to_numpy()
    tx = interactions.loc[known, ["user_id", "basket_id", "timestamp"]].copy()
    tx["row"] = rows[known].astype(np.int64).to_numpy()
    tx["day"] = days_of(tx["timestamp"])
    basket = tx["basket_id"].astype(str)
    fallback = "u" + tx["user_id"].astype(str) + "-" + np.floor(tx["day"]).astype(np.int64).astype(str)
    tx["basket"] = basket.where(basket != "", fallback)
    tx = tx.groupby(["user_id", "basket", "row"], sort=False, as_index=False)["day"].min()
    tx["type"] = catalogue.type_code[tx["row"].to_numpy()]
    return tx


def days_of(timestamps: pd.Series) -> np.ndarray:
    """Days since 1970 as floats, whatever the datetime unit (ns, us, s)."""
    ts = pd.to_datetime(timestamps)
    if getattr(ts.dt, "tz", None) is not None:
        ts = ts.dt.tz_convert(None)
    return ((ts - pd.Timestamp(0)) / pd.Timedelta(days=1)).to_numpy(dtype=np.float64)


def _per_key(tx: pd.DataFrame, col: str, ucode: pd.Series, n_users: int):
    g = tx.groupby(["user", col], sort=False).agg(
        n=("basket", "nunique"), w=("w", "sum"), first=("day", "min"), last=("day", "max")).reset_index()
    g["u"] = ucode[g["user"].astype(str)].to_numpy()
    g = g.sort_values(["u", col], kind="mergesort")
    counts = np.bincount(g["u"].to_numpy(), minlength=n_users)
    ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return ptr, g[col].to_numpy(dtype=np.int64), g[["n", "w", "first", "last"]].to_numpy(dtype=np.float64)


@dataclass
class RankerData:
    """What the generators and the features may read: the catalogue, co-occurrence and
    user history of one build (or of the history part of the ranker's training split)."""

    catalogue: CatalogueArrays
    costats: CoStats
    history: UserHistory

    @functools.cached_property
    def type_popularity(self) -> np.ndarray:
        """Per type code: log-scaled share of baskets holding the type, in [0, 1]."""
        c = self.costats
        n = np.zeros(len(self.catalogue.type_names))
        known = c.type_of_code >= 0
        n[known] = c.type_n[c.type_of_code[known]]
        top = float(n.max()) if len(n) else 0.0
        return np.log1p(n) / np.log1p(top) if top > 0 else n


@dataclass
class RankingContext:
    """One request as the pool and the ranker see it."""

    user: UserRow | None = None
    anchors: list[int] = field(default_factory=list)  # catalogue rows
    query_vec: np.ndarray | None = None
    profile_vec: np.ndarray | None = None
    types: list[int] = field(default_factory=list)  # type codes a composer wants filled
    query: str = ""
    # precomputed embedding neighbours per generator (ranker training batches them)
    neighbours: dict[str, np.ndarray] = field(default_factory=dict)


NearestFn = Callable[[np.ndarray, int], Sequence[int]]  # (vector, k) -> allowed rows, nearest first
NEIGHBOUR_SIZES = {"similar": "similar_k", "semantic": "semantic_k", "profile": "profile_k"}


# --- the generators ---------------------------------------------------------------------------


def build_pool(data: RankerData, ctx: RankingContext, cfg: RankerConfig,
               allowed: Callable[[int], bool] | None = None, nearest: NearestFn | None = None) -> dict[int, list[str]]:
    """catalogue row -> the generators that proposed it (in :data:`GENERATORS` order).
    Anchors are never in the pool; ``allowed`` (hard constraints) filters every row.
    ``nearest`` answers the embedding generators (serving passes the Chroma search: an
    exact scan of 92k rows costs ~25 ms a vector); without it, ``ctx.neighbours`` or an
    exact scan."""
    found: dict[int, list[str]] = {}
    skip = set(ctx.anchors)
    cat = data.catalogue
    ok = allowed or (lambda r: bool(cat.in_stock[r]))

    def add(rows, name: str, limit: int | None = None) -> None:
        taken = 0
        for r in rows:
            r = int(r)
            if r < 0 or r in skip:
                continue
            if r in found:
                if name not in found[r]:
                    found[r].append(name)
                taken += 1
            elif ok(r):
                found[r] = [name]
                taken += 1
            else:
                skip.add(r)  # not allowed: never look at it again
                continue
            if limit is not None and taken >= limit:
                return

    user = ctx.user
    if user is not None and len(user.items):
        order = np.lexsort((user.items, -user.item_stats[:, 3], -user.item_stats[:, 1]))
        add(user.items[order], "repeat", cfg.repeat_k)
        if cfg.repeat_types_k > 0:  # the usual SKU of each of the user's most bought types
            torder = np.lexsort((user.types, -user.type_stats[:, 0]))[: cfg.repeat_types_k]
            add([_usual_or_best(data, user, int(t), prefer_usual_only=True) for t in user.types[torder]], "repeat")
    comp_types: list[int] = []
    for a in ctx.anchors:
        rows, counts = data.costats.neighbours(a, min_count=2)
        add(rows, "cooc", cfg.cooc_k)
        if len(rows) < cfg.cooc_min_frequent:
            once, _ = data.costats.neighbours(a, min_count=1, max_count=1)
            add(once, "cooc_once", cfg.cooc_once_k)
        code = int(cat.type_code[a])
        if code >= 0:
            comp_types += data.costats.complement_types(code, cfg.type_cooc_types, cfg.type_cooc_min_count).tolist()
    comp_types = list(dict.fromkeys(comp_types))
    add([_usual_or_best(data, user, t) for t in comp_types], "type_cooc")
    vectors = _vectors(data, ctx)
    for name, vec in vectors.items():
        k = int(getattr(cfg, NEIGHBOUR_SIZES[name]))
        if name in ctx.neighbours:
            rows = ctx.neighbours[name]
        elif nearest is not None:
            rows = np.asarray(nearest(vec, k), dtype=np.int64)
        else:
            rows = exact_nearest(cat, vec[None, :], 2 * k)[0]
        add(rows, name, k)
    relevant = comp_types + _top_user_types(user, 10)
    for t in dict.fromkeys(relevant):
        add(cat.best_of_type.get(t, [])[: cfg.type_popular_per_type], "type_popular")
    for t in dict.fromkeys(ctx.types):
        usual = _usual_or_best(data, user, t, prefer_usual_only=True)
        add(([usual] if usual >= 0 else []) + cat.best_of_type.get(t, np.array([], dtype=np.int64)).tolist(),
            "role", cfg.role_k)
    add(cat.by_popularity, "popular", cfg.popular_k)
    rank = {g: i for i, g in enumerate(GENERATORS)}
    return {r: sorted(g, key=rank.__getitem__) for r, g in found.items()}


def _usual_or_best(data: RankerData, user: UserRow | None, code: int, prefer_usual_only: bool = False) -> int:
    if user is not None:
        usual = user.usual_of_type.get(int(code))
        if usual is not None and data.catalogue.in_stock[usual]:
            return usual
    if prefer_usual_only:
        return -1
    best = data.catalogue.best_of_type.get(int(code))
    return int(best[0]) if best is not None and len(best) else -1


def _top_user_types(user: UserRow | None, k: int) -> list[int]:
    if user is None or not len(user.types):
        return []
    order = np.lexsort((user.types, -user.type_stats[:, 1]))[:k]
    return user.types[order].tolist()


def _vectors(data: RankerData, ctx: RankingContext) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    emb = data.catalogue.embeddings
    if ctx.anchors:
        mean = emb[ctx.anchors].astype(np.float64).mean(axis=0)
        norm = float(np.linalg.norm(mean))
        if norm > 0:
            out["similar"] = (mean / norm).astype(np.float32)
    if ctx.query_vec is not None and np.any(ctx.query_vec):
        out["semantic"] = np.asarray(ctx.query_vec, dtype=np.float32)
    if ctx.profile_vec is not None and np.any(ctx.profile_vec):
        out["profile"] = np.asarray(ctx.profile_vec, dtype=np.float32)
    return out


def exact_nearest(cat: CatalogueArrays, vectors: np.ndarray, k: int, chunk: int = 256) -> list[np.ndarray]:
    """The ``k`` in-stock rows nearest to each vector (cosine), best first, ties by id;
    vectors are scored in chunks (a matrix product per chunk is far cheaper per vector
    than one product per vector)."""
    stock, emb, ids = cat.stock
    if not len(stock) or not len(vectors):
        return [np.array([], dtype=np.int64) for _ in range(len(vectors))]
    k = min(k, len(stock))
    out = []
    for lo in range(0, len(vectors), chunk):
        sims = np.asarray(vectors[lo: lo + chunk], dtype=np.float32) @ emb.T  # (chunk, stock)
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < len(stock) else np.tile(np.arange(len(stock)),
                                                                                           (len(sims), 1))
        for j in range(len(sims)):
            t = top[j]
            order = np.lexsort((ids[t], -np.round(sims[j, t], 6)))
            out.append(stock[t[order]])
    return out
