"""The diet, allergen and food rules of ``retrieval/data/food_rules.json``, one by one, on
real Complete Journey products: for each rule, real products it must exclude and real
products it must keep, through both views of :mod:`retrieval.filters` (the vectorised
mask and the per-product reasons)."""

from __future__ import annotations

import pandas as pd
import pytest

from assistant.nlu.need import DIETS
from retrieval import filters
from retrieval.schema import Constraints
from retrieval.sources import _cj_table, cj_titles


@pytest.fixture(scope="module")
def catalogue() -> pd.DataFrame:
    """The whole packaged catalogue in our schema (title, category path, department, type),
    built as ``load_completejourney`` builds it; prices and stock do not matter here."""
    raw = _cj_table("products")
    dept = raw["department"].astype("string").fillna("").str.strip()
    path = (dept + " > " + raw["product_category"].astype("string").fillna("") + " > "
            + raw["product_type"].astype("string").fillna("")).str.replace(r"( > )+$", "", regex=True)
    return pd.DataFrame({
        "product_id": raw["product_id"].astype(str),
        "title": cj_titles(raw).astype(str),
        "category": path.astype(str),
        "department": dept.astype(str),
        "product_type": raw["product_type"].astype("string").fillna("").astype(str),
        "brand": raw["brand"].astype("string").fillna("").astype(str),
        "price": 2.0,
        "in_stock": True,
        "segment": raw["product_category"].astype("string").fillna("").astype(str),  # for _pick only
    }).reset_index(drop=True)


def _pick(catalogue: pd.DataFrame, category: str, ptype: str | None = None) -> pd.Series:
    """The first real product (by id) of a category (the middle path segment) and type."""
    rows = catalogue[(catalogue["segment"] == category) & ((catalogue["product_type"] == ptype) if ptype else True)]
    assert len(rows), f"no real product in {category} / {ptype}"
    return rows.sort_values("product_id").iloc[0]


def _excluded(catalogue: pd.DataFrame, row: pd.Series, c: Constraints) -> bool:
    by_reason = bool(filters.violations(row, c))
    by_mask = not bool(filters.mask(catalogue, c)[row.name])
    assert by_reason == by_mask, (row["title"], filters.violations(row, c))
    return by_reason


# rule -> (category, type) pairs of real products it must exclude / must keep
RULES: dict[str, tuple[list[tuple[str, str | None]], list[tuple[str, str | None]]]] = {
    "vegan": (
        [("CHEESE", "SHREDDED CHEESE"), ("BEEF", None), ("FLUID MILK PRODUCTS", "FLUID MILK WHITE ONLY"),
         ("EGGS", "EGGS - LARGE"), ("PNT BTR/JELLY/JAMS", "HONEY"), ("DRY MIX DESSERTS", "GELATIN"),
         ("SEAFOOD-FRESH", None), ("YOGURT", None), ("ICE CREAM/MILK/SHERBTS", None), ("DELI MEATS", None)],
        [("BEANS - CANNED GLASS & MW", "VARIETY BEANS - KIDNEY PINTO"), ("VEGETABLES - SHELF STABLE", "CORN"),
         ("DRY NOODLES/PASTA", "SPAGHETTI DRY"), ("NON-DAIRY BEVERAGES", "SOY/RICE MILK"), ("REFRIGERATED", "TOFU"),
         ("APPLES", None), ("PASTA SAUCE", "MAINSTREAM")]),
    "vegetarian": (
        [("BEEF", None), ("CHICKEN", None), ("PORK", None), ("DELI MEATS", None), ("SEAFOOD - SHELF STABLE", "TUNA"),
         ("MEAT - SHELF STABLE", "CHILI: CANNED"), ("HOT DOGS", None), ("DRY MIX DESSERTS", "GELATIN")],
        [("CHEESE", "SHREDDED CHEESE"), ("EGGS", "EGGS - LARGE"), ("FRZN MEAT/MEAT DINNERS", "FRZN MEAT ALTERNATIVES"),
         ("BAKED BREAD/BUNS/ROLLS", "HOT DOG BUNS"), ("BAKED BREAD/BUNS/ROLLS", "HAMBURGER BUNS"),
         ("COOKIES/CONES", "GRAHAM CRACKERS")]),
    "pescatarian": (
        [("BEEF", None), ("CHICKEN", None), ("LUNCHMEAT", None)],
        [("SEAFOOD-FRESH", None), ("SEAFOOD - SHELF STABLE", "TUNA"), ("CHEESE", "SHREDDED CHEESE")]),
    "gluten-free": (
        [("BAKED BREAD/BUNS/ROLLS", "MAINSTREAM WHITE BREAD"), ("DRY NOODLES/PASTA", "SPAGHETTI DRY"),
         ("BEERS/ALES", "BEERALEMALT LIQUORS"), ("CRACKERS/MISC BKD FD", None), ("COLD CEREAL", None),
         ("FROZEN PIZZA", None), ("BAKING MIXES", "BREADINGS  COATINGS CRUMBS"), ("HISPANIC", "ORIENTAL SOY SAUCE")],
        [("RICE CAKES", "RICE CAKES"), ("APPLES", None), ("BEEF", None),
         ("PASTA SAUCE", "MAINSTREAM"), ("FLOUR & MEALS", "CORNMEAL"), ("BAG SNACKS", "TORTILLA/NACHO CHIPS")]),
    "dairy-free": (
        [("CHEESE", "SHREDDED CHEESE"), ("FLUID MILK PRODUCTS", "FLUID MILK WHITE ONLY"), ("BUTTER", "BUTTER"),
         ("YOGURT", None), ("ICE CREAM/MILK/SHERBTS", None), ("MILK BY-PRODUCTS", "SOUR CREAMS"),
         ("COFFEE", "NON DAIRY CREAMER: DRY"), ("CANDY - PACKAGED", "CANDY BARS (SINGLES)(INCLUDING")],
        [("PNT BTR/JELLY/JAMS", "PEANUT BUTTER"), ("NON-DAIRY BEVERAGES", "SOY/RICE MILK"), ("BEEF", None),
         ("BEANS - CANNED GLASS & MW", "VARIETY BEANS - KIDNEY PINTO"), ("PNT BTR/JELLY/JAMS", "APPLE BUTTER")]),
    "nut-free": (
        [("SNACK NUTS", None), ("PNT BTR/JELLY/JAMS", "PEANUT BUTTER"), ("NUTS", "ALMONDS SHELLED"),
         ("NUTS", "PEANUTS ALL"), ("BAKING NEEDS", "BAKING NUTS"), ("CANDY - PACKAGED", None),
         ("COOKIES/CONES", None), ("BAKING NEEDS", "COCONUT")],
        [("APPLES", None), ("BEEF", None), ("FLUID MILK PRODUCTS", "FLUID MILK WHITE ONLY"),
         ("VEGETABLES - SHELF STABLE", "CORN"), ("DRY NOODLES/PASTA", "SPAGHETTI DRY")]),
    "peanut-free": (
        [("PNT BTR/JELLY/JAMS", "PEANUT BUTTER"), ("NUTS", "PEANUTS ALL"), ("SNACK NUTS", None),
         ("SHORTENING/OIL", "COOKING OIL: PEANUT SAFFLOWER"), ("CANDY - CHECKLANE", None)],
        [("APPLES", None), ("PNT BTR/JELLY/JAMS", "JELLY"), ("CHEESE", "SHREDDED CHEESE")]),
    "egg-free": (
        [("EGGS", "EGGS - LARGE"), ("SALD DRSNG/SNDWCH SPRD", "SEMI-SOLID SALAD DRESSING MAY"),
         ("DRY NOODLES/PASTA", "NOODLES DRY"), ("BAKED SWEET GOODS", None), ("FRZN BREAKFAST FOODS", None)],
        [("APPLES", None), ("BEEF", None), ("DRY NOODLES/PASTA", "SPAGHETTI DRY"), ("CHEESE", "SHREDDED CHEESE")]),
    "keto": (
        [("BAKED BREAD/BUNS/ROLLS", "MAINSTREAM WHITE BREAD"), ("DRY NOODLES/PASTA", "SPAGHETTI DRY"),
         ("DRY BN/VEG/POTATO/RICE", "RICE - DRY BAG AND BOX"), ("SUGARS/SWEETNERS", "SUGAR"),
         ("CANDY - PACKAGED", None), ("SOFT DRINKS", "SOFT DRINKS 12/18&15PK CAN CAR"), ("POTATOES", None),
         ("COLD CEREAL", None), ("CANNED JUICES", "APPLE JUICE & CIDER (OVER 50%"), ("TROPICAL FRUIT", "BANANAS")],
        [("BEEF", None), ("CHEESE", "SHREDDED CHEESE"), ("EGGS", "EGGS - LARGE"), ("TROPICAL FRUIT", "AVOCADO"),
         ("BERRIES", "STRAWBERRIES"), ("SHORTENING/OIL", "OLIVE OIL"), ("SUGARS/SWEETNERS", "SWEETENERS")]),
    "low-sugar": (
        [("CANDY - PACKAGED", None), ("SOFT DRINKS", "SOFT DRINKS 12/18&15PK CAN CAR"), ("SUGARS/SWEETNERS", "SUGAR"),
         ("COOKIES/CONES", None), ("PNT BTR/JELLY/JAMS", "JELLY"), ("ICE CREAM/MILK/SHERBTS", None),
         ("BAKED SWEET GOODS", "SW GDS:DONUTS"), ("CANNED JUICES", "JUICE (UNDER 50% JUICE)")],
        [("BEEF", None), ("APPLES", None), ("SOFT DRINKS", "CARBONATED WATER - UNFLAVORED"),
         ("SUGARS/SWEETNERS", "SWEETENERS"), ("CANNED JUICES", "TOMATO JUICE (OVER 50% JCE)")]),
    "alcohol-free": (
        [("BEERS/ALES", "BEERALEMALT LIQUORS"), ("DOMESTIC WINE", None), ("LIQUOR", "TRADITIONAL VODKA"),
         ("CONDIMENTS/SAUCES", "COOKING WINES")],
        [("BEERS/ALES", "BEERALE -NON ALCOHOLIC"), ("SOFT DRINKS", None), ("LIQUOR", "COCKTAIL MIXES-FLUID:ADD LIQ"),
         ("CONDIMENTS/SAUCES", "VINEGAR WINE/RICE")]),
    "pork-free": (
        [("PORK", None), ("BACON", None), ("SMOKED MEATS", "HAM - SPIRAL"), ("LUNCHMEAT", "PEPPERONI/SALAMI"),
         ("DRY MIX DESSERTS", "GELATIN")],
        [("BEEF", None), ("CHICKEN", None), ("HOT DOGS", "PREMIUM - BEEF"),
         ("BAKED BREAD/BUNS/ROLLS", "HAMBURGER BUNS"), ("COOKIES/CONES", "GRAHAM CRACKERS")]),
}


def test_every_diet_key_has_a_rule_with_a_caveat_and_the_file_is_versioned():
    assert set(filters.known_diets()) == set(DIETS) == set(RULES)
    assert filters.rules_version()
    for key in DIETS:
        caveat = filters.caveat(key)
        assert caveat and len(caveat) < 160, key
    # nothing is claimed as proven where the catalogue cannot prove it
    assert all("check labels" in filters.caveat(k) for k in DIETS if k not in ("alcohol-free",))


@pytest.mark.parametrize("rule", sorted(RULES))
def test_rule_on_real_products(catalogue, rule):
    must_exclude, must_keep = RULES[rule]
    c = Constraints(diets=[rule])
    for category, ptype in must_exclude:
        row = _pick(catalogue, category, ptype)
        assert _excluded(catalogue, row, c), f"{rule} keeps {row['title']}"
        [reason] = filters.violations(row, c)
        assert reason.startswith("diet:") and rule in reason
    for category, ptype in must_keep:
        row = _pick(catalogue, category, ptype)
        assert not _excluded(catalogue, row, c), f"{rule} drops {row['title']}: {filters.violations(row, c)}"


NONFOOD = [("DOG FOODS", None), ("CAT FOOD", None), ("PET CARE SUPPLIES", None), ("CANDLES/ACCESSORIES", "CANDLES"),
           ("GREETING CARDS/WRAP/PARTY SPLY", "CARDS EVERYDAY"),
           ("GREETING CARDS/WRAP/PARTY SPLY", "GIFT-WRAP EVERYDAY"),
           ("STATIONERY & SCHOOL SUPPLIES", "BINDERS & PORTFOLIOS"), ("STATIONERY & SCHOOL SUPPLIES", "SCHOOL PAPER"),
           ("CIGARETTES", None), ("HAIR CARE PRODUCTS", "SHAMPOO"), ("MAKEUP AND TREATMENT", None),
           ("HOUSEHOLD CLEANG NEEDS", None), ("LAUNDRY DETERGENTS", None), ("FLORAL-FRESH CUT", None),
           ("PAPER HOUSEWARES", "BASIC PAPER PLATES"), ("CAT LITTER", None), ("HALLOWEEN", "COSTUMES"),
           ("BAKING NEEDS", "CAKE DECORS - BIRTHDAY CANDLES"), ("DIAPERS & DISPOSABLES", "BABY DIAPERS")]
FOOD = [("BEEF", None), ("BAKED BREAD/BUNS/ROLLS", "MAINSTREAM WHITE BREAD"),
        ("CANDY - PACKAGED", "CANDY BARS (MULTI PACK)"),
        ("CANDY - CHECKLANE", "CHEWING GUM"), ("FLUID MILK PRODUCTS", "FLUID MILK WHITE ONLY"), ("APPLES", None),
        ("SOFT DRINKS", None), ("LUNCHMEAT", None), ("HOT DOGS", None),
        ("CHRISTMAS  SEASONAL", "SEASONAL CANDY BAGS-CHOCOLATE")]


def test_a_food_need_never_shows_non_food(catalogue):
    food = Constraints(food=True)
    for category, ptype in NONFOOD:
        row = _pick(catalogue, category, ptype)
        assert _excluded(catalogue, row, food), f"food need shows {row['title']}"
        assert filters.violations(row, food)[0].startswith("food:")
    for category, ptype in FOOD:
        row = _pick(catalogue, category, ptype)
        assert not _excluded(catalogue, row, food), f"food need drops {row['title']}"


def test_a_non_food_need_shows_only_non_food_and_infant_items_sit_between(catalogue):
    nonfood = Constraints(food=False)
    for category, ptype in NONFOOD:
        assert not _excluded(catalogue, _pick(catalogue, category, ptype), nonfood)
    for category, ptype in FOOD:
        assert _excluded(catalogue, _pick(catalogue, category, ptype), nonfood)
    baby_food = _pick(catalogue, "BABY FOODS", "BABY FOOD - BEGINNER")
    assert _excluded(catalogue, baby_food, Constraints(food=True))  # not for a dinner
    assert not _excluded(catalogue, baby_food, nonfood)  # fine for a baby need
    assert not _excluded(catalogue, baby_food, Constraints())


def test_a_food_need_over_the_whole_catalogue(catalogue):
    """Across all 92k products: no pet, tobacco, stationery, cosmetics, candle or
    party-paper category survives a food need, and most groceries do."""
    ok = filters.mask(catalogue, Constraints(food=True))
    seg = catalogue["segment"]
    for banned in ("DOG FOODS", "CAT FOOD", "PET CARE SUPPLIES", "CIGARETTES", "TOBACCO OTHER",
                   "STATIONERY & SCHOOL SUPPLIES", "GREETING CARDS/WRAP/PARTY SPLY", "LAUNDRY DETERGENTS",
                   "HAIR CARE PRODUCTS", "BATH TISSUES"):
        assert not ok[(seg == banned).to_numpy()].any(), banned
    # cosmetics: only a product whose own type is a food (a mis-filed chocolate syrup) survives
    cosmetics = catalogue[ok & (catalogue["department"] == "COSMETICS").to_numpy()]
    assert set(cosmetics["product_type"]) <= {"CHOCOLATE SYRUP"}
    candles = catalogue["product_type"].str.contains("CANDLE").to_numpy()
    assert not ok[candles].any()
    grocery_food = catalogue["department"].isin(["PRODUCE", "MEAT", "DELI", "PASTRY", "SEAFOOD"]).to_numpy()
    assert ok[grocery_food].mean() > 0.97


def test_an_exclusion_word_that_names_a_group_applies_the_group(catalogue):
    """"no dairy" (an exclusion word, not a diet) still drops cheese whose title never says
    dairy, and "no nuts" drops peanut butter; a plain word stays a whole-word match."""
    cheese = _pick(catalogue, "CHEESE", "SHREDDED CHEESE")
    assert _excluded(catalogue, cheese, Constraints(exclude=["dairy"]))
    assert _excluded(catalogue, _pick(catalogue, "PNT BTR/JELLY/JAMS", "PEANUT BUTTER"), Constraints(exclude=["nuts"]))
    graham = _pick(catalogue, "COOKIES/CONES", "GRAHAM CRACKERS")
    assert not _excluded(catalogue, graham, Constraints(exclude=["ham"]))
    assert filters.caveats(Constraints(exclude=["dairy"], diets=["vegan"])) == [
        filters.caveat("vegan"), filters.caveat("dairy-free")]


def test_rules_read_the_catalogue_levels_in_order():
    """Most specific evidence first: an excluded type beats a kept category, a kept type
    beats an excluded word, a kept category beats an excluded department."""
    g = filters.Group(name="t", departments=frozenset({"DRUG GM"}), categories=frozenset({"CHEESE"}),
                      types=frozenset({"ALMAY"}), words=("milk",), keep_categories=frozenset({"CANDY - PACKAGED"}),
                      keep_types=frozenset({"SOY/RICE MILK"}))
    f = filters.facts
    assert g.reason(f("Almay (Candy - Packaged)", "DRUG GM > CANDY - PACKAGED > ALMAY", "DRUG GM", "ALMAY"))
    assert g.reason(f("Candy (Candy - Packaged)", "DRUG GM > CANDY - PACKAGED > CANDY", "DRUG GM", "CANDY")) is None
    soy = f("Soy/Rice Milk", "NUTRITION > REFRIGERATED > SOY/RICE MILK", "NUTRITION", "SOY/RICE MILK")
    assert g.reason(soy) is None
    assert g.reason(f("Milk Chocolate", "GROCERY > X > Y", "GROCERY", "Y")) == "'milk' in its name"
    assert g.reason(f("Shampoo", "DRUG GM > HAIR > SHAMPOO", "DRUG GM", "SHAMPOO")) == "DRUG GM (department)"
    assert g.reason(f("Cheddar", "GROCERY > CHEESE > CHEDDAR", "GROCERY", "CHEDDAR")) == "CHEESE (category)"
