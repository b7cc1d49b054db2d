"""What goes together: co-purchase statistics from baskets, as sparse matrices.

For items a, b over N baskets, with n(a) baskets holding a and n(a,b) holding both:

* support(a,b)    = n(a,b) / N
* confidence(a→b) = n(a,b) / n(a)
* lift(a,b)       = n(a,b)·N / (n(a)·n(b))
* NPMI(a,b)       = log(p(a,b) / (p(a)p(b))) / −log p(a,b), in [−1, 1]
  (Bouma 2009, "Normalized (pointwise) mutual information in collocation extraction")

Statistics exist at two levels: product (SKU) and product type, because SKU pairs are
sparse (most pairs co-occur once or never) while type pairs are dense and stable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

MIN_PAIR_COUNT = 3  # SKU pairs seen fewer times fall back to their type-level statistics


@dataclass
class CooccurrenceTable:
    """Symmetric co-occurrence counts over one vocabulary (products or types)."""

    keys: np.ndarray  # vocabulary, sorted
    counts: sp.csr_matrix  # counts[i, j] = baskets holding both; diagonal = n(i)
    n_baskets: int

    def __post_init__(self) -> None:
        self._pos = {k: i for i, k in enumerate(self.keys.tolist())}
        self._diag = self.counts.diagonal().astype(np.float64)

    @classmethod
    def from_baskets(cls, baskets: pd.DataFrame, key: str = "product_id") -> CooccurrenceTable:
        pairs = baskets[["basket_id", key]].drop_duplicates()
        pairs = pairs[pairs[key].astype(str) != ""]
        keys = np.sort(pairs[key].astype(str).unique())
        basket_codes, _ = pd.factorize(pairs["basket_id"], sort=True)
        item_codes = np.searchsorted(keys, pairs[key].astype(str).to_numpy())
        n_baskets = int(basket_codes.max() + 1) if len(basket_codes) else 0
        incidence = sp.csr_matrix(
            (np.ones(len(pairs), dtype=np.float32), (basket_codes, item_codes)),
            shape=(n_baskets, len(keys)),
        )
        counts = (incidence.T @ incidence).tocsr()
        counts.sum_duplicates()
        return cls(keys, counts.astype(np.float32), n_baskets)

    def index(self, key: str) -> int | None:
        return self._pos.get(str(key))

    def count(self, a: str, b: str) -> float:
        i, j = self.index(a), self.index(b)
        if i is None or j is None:
            return 0.0
        return float(self.counts[i, j])

    def stats(self, a: str, b: str) -> dict[str, float]:
        """support, confidence (a→b), lift and NPMI for one pair; zeros when unseen."""
        i, j = self.index(a), self.index(b)
        if i is None or j is None or self.n_baskets == 0:
            return {"count": 0.0, "support": 0.0, "confidence": 0.0, "lift": 0.0, "npmi": 0.0}
        n_ab = float(self.counts[i, j])
        return {"count": n_ab, **self._measures(n_ab, self._diag[i], self._diag[j])}

    def _measures(self, n_ab: float, n_a: float, n_b: float) -> dict[str, float]:
        n = float(self.n_baskets)
        if n_ab <= 0:
            return {"support": 0.0, "confidence": 0.0, "lift": 0.0, "npmi": -1.0 if n_a and n_b else 0.0}
        p_ab = n_ab / n
        lift = n_ab * n / (n_a * n_b)
        npmi = 1.0 if p_ab >= 1.0 else float(np.log(lift) / -np.log(p_ab))
        return {"support": p_ab, "confidence": n_ab / n_a, "lift": lift, "npmi": npmi}

    def npmi(self, a: str, b: str) -> float:
        return self.stats(a, b)["npmi"]

    def neighbours(self, key: str, min_count: float = 1.0) -> pd.DataFrame:
        """Every co-occurring key with its statistics, best NPMI first, ties by key."""
        columns = ["key", "count", "support", "confidence", "lift", "npmi"]
        i = self.index(key)
        if i is None:
            return pd.DataFrame(columns=columns)
        cols, vals, npmi = self._ranked_row(i, min_count)
        n = float(self.n_baskets)
        n_a, n_b = self._diag[i], self._diag[cols]
        return pd.DataFrame({
            "key": self.keys[cols], "count": vals, "support": vals / n,
            "confidence": vals / n_a, "lift": vals * n / (n_a * n_b), "npmi": npmi,
        }, columns=columns)

    def top_npmi(self, key: str, min_count: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """(keys, NPMI) of every co-occurring key, best first, ties by key: what
        :meth:`neighbours` ranks, without building a frame on the search path."""
        i = self.index(key)
        if i is None:
            return np.array([], dtype=self.keys.dtype), np.array([], dtype=np.float64)
        cols, _, npmi = self._ranked_row(i, min_count)
        return self.keys[cols], npmi

    def _ranked_row(self, i: int, min_count: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        row = self.counts.getrow(i)
        cols, vals = row.indices, row.data.astype(np.float64)
        keep = (cols != i) & (vals >= min_count)
        cols, vals = cols[keep], vals[keep]
        n = float(self.n_baskets)
        p_ab = vals / n
        lift = vals * n / (self._diag[i] * self._diag[cols])
        with np.errstate(divide="ignore", invalid="ignore"):
            npmi = np.where(p_ab >= 1.0, 1.0, np.log(lift) / -np.log(p_ab))
        order = np.lexsort((self.keys[cols], -npmi))
        return cols[order], vals[order], npmi[order]


@dataclass
class CoPurchase:
    """Product-level and product-type-level co-occurrence, plus the product→type map."""

    items: CooccurrenceTable
    types: CooccurrenceTable
    product_type: dict[str, str]
    _type_cache: dict[tuple[str, int, float], list[tuple[str, float]]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @classmethod
    def build(cls, baskets: pd.DataFrame, products: pd.DataFrame) -> CoPurchase:
        """``baskets``: columns basket_id, product_id (a product may repeat; it counts once)."""
        type_of = dict(zip(products["product_id"].astype(str), products["product_type"].astype(str)))
        items = CooccurrenceTable.from_baskets(baskets)
        typed = baskets.assign(product_type=baskets["product_id"].astype(str).map(type_of).fillna(""))
        types = CooccurrenceTable.from_baskets(typed, key="product_type")
        return cls(items, types, type_of)

    def pair_npmi(self, a: str, b: str) -> float:
        """NPMI of two products: SKU-level when the pair was seen ``MIN_PAIR_COUNT`` times,
        else the NPMI of their product types (0 for two items of the same type, which are
        substitutes rather than complements)."""
        if self.items.count(a, b) >= MIN_PAIR_COUNT:
            return self.items.npmi(a, b)
        ta, tb = self.product_type.get(str(a), ""), self.product_type.get(str(b), "")
        if not ta or not tb or ta == tb:
            return 0.0
        return self.types.npmi(ta, tb)

    def complements(self, product_id: str, k: int = 10) -> list[tuple[str, float]]:
        """Top co-purchased products of other types, by NPMI (SKU pairs seen often enough)."""
        own_type = self.product_type.get(str(product_id), "")
        keys, npmi = self.items.top_npmi(product_id, min_count=MIN_PAIR_COUNT)
        out = []
        for key, score in zip(keys, npmi):
            if self.product_type.get(key, "") != own_type:
                out.append((str(key), float(score)))
                if len(out) >= k:
                    break
        return out

    def complement_types(self, product_type: str, k: int = 5, min_count: float = 5) -> list[tuple[str, float]]:
        # the type table is small and fixed once built; every search asks for the same few types
        key = (product_type, k, min_count)
        if key not in self._type_cache:
            table = self.types.neighbours(product_type, min_count=min_count)
            table = table[table["key"] != ""]
            self._type_cache[key] = list(zip(table["key"].head(k), table["npmi"].head(k).astype(float)))
        return self._type_cache[key]

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for name, table in (("items", self.items), ("types", self.types)):
            sp.save_npz(folder / f"copurchase_{name}.npz", table.counts)
            np.save(folder / f"copurchase_{name}_keys.npy", table.keys.astype(str))
            (folder / f"copurchase_{name}_n.txt").write_text(str(table.n_baskets))

    @classmethod
    def load(cls, folder: Path, products: pd.DataFrame) -> CoPurchase:
        tables = {}
        for name in ("items", "types"):
            tables[name] = CooccurrenceTable(
                np.load(folder / f"copurchase_{name}_keys.npy"),
                sp.load_npz(folder / f"copurchase_{name}.npz").tocsr(),
                int((folder / f"copurchase_{name}_n.txt").read_text()),
            )
        type_of = dict(zip(products["product_id"].astype(str), products["product_type"].astype(str)))
        return cls(tables["items"], tables["types"], type_of)


def baskets_of(interactions: pd.DataFrame) -> pd.DataFrame:
    """Basket membership; sources without basket ids group by user and day."""
    if interactions.empty:
        return pd.DataFrame({"basket_id": pd.Series(dtype=str), "product_id": pd.Series(dtype=str)})
    basket = interactions["basket_id"].astype(str)
    day = pd.to_datetime(interactions["timestamp"]).dt.strftime("%Y-%m-%d")
    fallback = "u" + interactions["user_id"].astype(str) + "-" + day
    basket = basket.where(basket != "", fallback)
    return pd.DataFrame({"basket_id": basket, "product_id": interactions["product_id"].astype(str)})
