"""User profiles: the article's ``U = Σ w_i·X_i`` over behaviour.

Each interaction counts ``w_event · 0.5 ** (age_days / half_life_days)``, with the event
weights normalised to sum 1 (:class:`~retrieval.config.ProfileConfig`) and the age taken
from the user's own latest event, so a household that stopped shopping a year ago still
has a sharp profile of what it used to buy. The preference embedding is the weighted
mean of the embeddings of the items behind those weights.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pandas as pd
import scipy.sparse as sp
from pydantic import BaseModel, Field

from .config import ProfileConfig

# Only what sizing a bundle needs; age, income and marital status never reach a prompt.
DEMOGRAPHIC_FIELDS = ("household_size", "household_comp", "kids_count")


class UserProfile(BaseModel):
    user_key: str  # pseudonymised id: raw user ids are never stored
    n_events: int = 0
    n_baskets: int = 0
    top_departments: list[tuple[str, float]] = Field(default_factory=list)
    top_categories: list[tuple[str, float]] = Field(default_factory=list)
    top_brands: list[tuple[str, float]] = Field(default_factory=list)
    favourite_items: list[str] = Field(default_factory=list)
    median_unit_price: float | None = None
    price_percentile: float | None = None  # 0..100, weighted over the user's top categories
    category_prices: dict[str, tuple[float, float]] = Field(default_factory=dict)  # cat -> (median paid, percentile)
    price_sensitivity: float | None = None  # share of purchases made on a discount
    basket_size: float | None = None
    demographics: dict[str, str] = Field(default_factory=dict)
    summary: str = ""
    is_guest: bool = False
    preference: list[float] | None = Field(default=None, exclude=True)

    def preference_vector(self) -> np.ndarray | None:
        return None if self.preference is None else np.asarray(self.preference, dtype=np.float32)

    def to_metadata(self) -> dict[str, str]:
        return {"profile_json": self.model_dump_json(), "summary": self.summary}

    @classmethod
    def from_metadata(cls, meta: dict, embedding: np.ndarray | None = None) -> UserProfile:
        profile = cls.model_validate_json(meta["profile_json"])
        if embedding is not None:
            profile.preference = [float(x) for x in embedding]
        return profile


def category_level(category_path: pd.Series) -> pd.Series:
    """The first two levels of a category path: 'GROCERY > PASTA > DRY PASTA' -> 'GROCERY > PASTA'."""
    parts = category_path.astype(str).str.split(" > ")
    return parts.str[:2].str.join(" > ")


def interaction_weights(interactions: pd.DataFrame, cfg: ProfileConfig) -> pd.Series:
    """Per-row ``w_event · decay``; rows of unknown event types weigh 0."""
    w_event = interactions["event"].map(cfg.event_weights).fillna(0.0).astype(float)
    ts = pd.to_datetime(interactions["timestamp"])
    latest = ts.groupby(interactions["user_id"]).transform("max")
    age_days = (latest - ts).dt.total_seconds() / 86400.0
    return w_event * np.power(0.5, age_days / cfg.half_life_days)


def _top(frame: pd.DataFrame, key: str, n: int) -> dict[str, list[tuple[str, float]]]:
    """Per user, the ``n`` keys with the largest share of the user's weight (ties by key)."""
    grouped = frame.groupby(["user_id", key], sort=False)["w"].sum().reset_index()
    grouped = grouped[grouped[key].astype(str) != ""]
    grouped["share"] = grouped["w"] / grouped.groupby("user_id")["w"].transform("sum")
    grouped = grouped.sort_values(["user_id", "share", key], ascending=[True, False, True], kind="mergesort")
    top = grouped.groupby("user_id", sort=False).head(n)
    return {
        u: [(str(k), round(float(s), 4)) for k, s in zip(g[key], g["share"])]
        for u, g in top.groupby("user_id", sort=False)
    }


def _price_bands(tx: pd.DataFrame, products: pd.DataFrame, top_categories: dict[str, list], cfg: ProfileConfig):
    """Median paid unit price per user and category, and its percentile among the
    catalogue prices of that category (100 = pays for the priciest items)."""
    paid = tx[(tx["event"] == "purchase") & tx["value"].notna() & (tx["quantity"] > 0)]
    paid = paid.assign(unit=paid["value"] / paid["quantity"])
    paid = paid[paid["unit"] > 0]
    overall = paid.groupby("user_id")["unit"].median()
    by_cat = paid.groupby(["user_id", "cat"])["unit"].median()
    shelf = products.assign(cat=category_level(products["category"]))
    shelf = shelf[shelf["price"].notna()]
    sorted_prices = {c: np.sort(g["price"].to_numpy()) for c, g in shelf.groupby("cat")}
    bands: dict[str, dict[str, tuple[float, float]]] = {}
    for (user, cat), median in by_cat.items():
        prices = sorted_prices.get(cat)
        if prices is None or not len(prices):
            continue
        pct = 100.0 * np.searchsorted(prices, median, side="right") / len(prices)
        bands.setdefault(user, {})[cat] = (round(float(median), 2), round(float(pct), 1))
    result = {}
    for user, cats in top_categories.items():
        mine = bands.get(user, {})
        chosen = {c: mine[c] for c, _ in cats if c in mine}
        weights = np.array([s for c, s in cats if c in mine])
        pct = float(np.average([mine[c][1] for c, _ in cats if c in mine], weights=weights)) if chosen else None
        result[user] = (float(overall[user]) if user in overall.index else None, pct, chosen)
    return result


def build_profiles(
    interactions: pd.DataFrame,
    products: pd.DataFrame,
    item_embeddings: np.ndarray,
    cfg: ProfileConfig,
    demographics: pd.DataFrame | None = None,
    pseudonymise: Callable[[str], str] = str,
) -> dict[str, UserProfile]:
    """One profile per user, keyed by the raw user id (the profile itself holds only the
    pseudonymised key). ``item_embeddings`` rows follow ``products`` order."""
    if interactions.empty:
        return {}
    pos = pd.Series(np.arange(len(products)), index=products["product_id"].astype(str))
    meta = products.set_index("product_id")
    tx = interactions[interactions["product_id"].isin(pos.index)].copy()
    tx["w"] = interaction_weights(tx, cfg)
    tx["department"] = tx["product_id"].map(meta["department"])
    tx["cat"] = tx["product_id"].map(category_level(meta["category"]))
    tx["brand"] = tx["product_id"].map(meta["brand"])

    users = np.sort(tx["user_id"].unique())
    user_pos = pd.Series(np.arange(len(users)), index=users)
    item_w = tx.groupby(["user_id", "product_id"], sort=False)["w"].sum()
    u_idx = user_pos[item_w.index.get_level_values(0)].to_numpy()
    i_idx = pos[item_w.index.get_level_values(1)].to_numpy()
    matrix = sp.csr_matrix((item_w.to_numpy(), (u_idx, i_idx)), shape=(len(users), len(products)))
    pref = np.asarray(matrix @ item_embeddings, dtype=np.float32)
    norms = np.linalg.norm(pref, axis=1, keepdims=True)
    pref = np.divide(pref, norms, out=np.zeros_like(pref), where=norms > 0)

    n = cfg.top_n
    depts, cats, brands = _top(tx, "department", n), _top(tx, "cat", n), _top(tx, "brand", n)
    favourites = (
        item_w.reset_index().sort_values(["user_id", "w", "product_id"], ascending=[True, False, True])
        .groupby("user_id").head(20).groupby("user_id")["product_id"].apply(list)
    )
    bands = _price_bands(tx, products, cats, cfg)
    purchases = tx[tx["event"] == "purchase"]
    sensitivity = purchases.groupby("user_id")["discounted"].mean()
    has_basket = tx["basket_id"].astype(str) != ""
    basket_sizes = tx[has_basket].groupby(["user_id", "basket_id"])["product_id"].nunique()
    basket_size = basket_sizes.groupby("user_id").median()
    n_baskets = basket_sizes.groupby("user_id").size()
    n_events = tx.groupby("user_id").size()
    demo = _demographics(demographics)

    profiles: dict[str, UserProfile] = {}
    for user in users:
        median, pct, cat_prices = bands.get(user, (None, None, {}))
        profile = UserProfile(
            user_key=pseudonymise(str(user)),
            n_events=int(n_events.get(user, 0)),
            n_baskets=int(n_baskets.get(user, 0)),
            top_departments=depts.get(user, []),
            top_categories=cats.get(user, []),
            top_brands=brands.get(user, []),
            favourite_items=list(favourites.get(user, [])),
            median_unit_price=round(median, 2) if median is not None else None,
            price_percentile=round(pct, 1) if pct is not None else None,
            category_prices=cat_prices,
            price_sensitivity=round(float(sensitivity[user]), 3) if user in sensitivity.index else None,
            basket_size=float(basket_size[user]) if user in basket_size.index else None,
            demographics=demo.get(str(user), {}),
            preference=pref[user_pos[user]].tolist(),
        )
        profile.summary = summarise(profile)
        profiles[str(user)] = profile
    return profiles


def _demographics(demographics: pd.DataFrame | None) -> dict[str, dict[str, str]]:
    if demographics is None or demographics.empty:
        return {}
    cols = [c for c in DEMOGRAPHIC_FIELDS if c in demographics.columns]
    out = {}
    for row in demographics[["user_id", *cols]].itertuples(index=False):
        values = {c: str(v) for c, v in zip(cols, row[1:]) if isinstance(v, str) and v}
        out[str(row[0])] = values
    return out


def _names(pairs: list[tuple[str, float]], k: int = 3, with_share: bool = True) -> str:
    def label(name: str) -> str:
        return name.split(" > ")[-1].title()
    return ", ".join(f"{label(n)} ({s:.0%})" if with_share else label(n) for n, s in pairs[:k])


def price_word(percentile: float | None) -> str:
    if percentile is None:
        return "unknown"
    return "budget" if percentile < 35 else "premium" if percentile > 65 else "mid-range"


def summarise(p: UserProfile) -> str:
    """A short natural-language profile for the LLM: no ids, no age or income."""
    if p.is_guest:
        return "A guest shopper with no purchase history; go by their request."
    lines = []
    if p.demographics:
        d = p.demographics
        comp = d.get("household_comp", "")
        size = d.get("household_size", "")
        kids = d.get("kids_count", "")
        kids_word = f"{kids} kids" if kids not in ("", "0") else ""
        words = [w for w in (comp, f"{size} people" if size else "", kids_word) if w]
        if words:
            lines.append("Household: " + ", ".join(words) + ".")
    if p.top_departments:
        lines.append("Shops mostly " + _names(p.top_departments) + ".")
    if p.top_categories:
        lines.append("Favourite categories: " + _names(p.top_categories, 4, with_share=False) + ".")
    if p.top_brands:
        lines.append("Brands: " + _names(p.top_brands, 2) + ".")
    if p.price_percentile is not None:
        lines.append(f"Prices: {price_word(p.price_percentile)} "
                     f"({p.price_percentile:.0f}th percentile in their categories).")
    if p.price_sensitivity is not None:
        lines.append(f"Buys on discount {p.price_sensitivity:.0%} of the time.")
    if p.basket_size:
        lines.append(f"Typical basket: {p.basket_size:.0f} items.")
    return " ".join(lines) or "A shopper with little history."


def guest_profile(
    session_key: str,
    message_embeddings: np.ndarray | None = None,
    clicked_embeddings: np.ndarray | None = None,
    clicked_weight: float = 2.0,
) -> UserProfile:
    """Cold start: the mean of the session's message embeddings and (weighted higher,
    as stronger evidence) the embeddings of items the guest clicked, liked or carted."""
    parts, weights = [], []
    for block, w in ((message_embeddings, 1.0), (clicked_embeddings, clicked_weight)):
        if block is not None and len(block):
            parts.append(np.asarray(block, dtype=np.float32).sum(axis=0) * w)
            weights.append(len(block) * w)
    preference = None
    if parts:
        vec = np.sum(parts, axis=0) / sum(weights)
        norm = np.linalg.norm(vec)
        preference = (vec / norm).tolist() if norm > 0 else None
    profile = UserProfile(user_key=session_key, is_guest=True, preference=preference)
    profile.summary = summarise(profile)
    return profile


def profile_json(profile: UserProfile) -> str:
    return json.dumps(profile.model_dump(), indent=2, default=str)
