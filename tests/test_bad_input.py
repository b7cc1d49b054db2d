"""Bad input, with nothing lost (issue 6, part 1).

Property tests write real catalogue and interaction files (raw bytes: shuffled and renamed
columns, missing and extra columns, wrong types, NaN/negative/huge prices, duplicate ids,
mixed encodings, 10k-character titles, formula strings) and load them through
``load_source`` exactly as ``bundle-assistant index`` does. An independent oracle decides,
row by row, what must be loaded and what must be quarantined. Then: chat input, CSV exports
and every bad CLI argument.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from conftest import executable, subprocess_env
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from assistant.constraints import sanitize_message
from assistant.feedback import FeedbackEvent, FeedbackStore
from retrieval.config import Settings
from retrieval.schema import EVENTS, SchemaError
from retrieval.sources import load_source
from retrieval.validation import MAX_PRICE, MAX_TEXT

# BAD_INPUT_EXAMPLES=500 for a deeper search than CI's
PROPERTY = hsettings(
    max_examples=int(os.environ.get("BAD_INPUT_EXAMPLES", 40)), deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.function_scoped_fixture],
)
DEFAULT_MARGIN = Settings().catalogue.default_margin
FORMULAS = ("=cmd|' /C calc'!A0", "+SUM(1,2)", "-2+3+cmd|' /C notepad'!A1", "@SUM(A1:A9)",
            '=HYPERLINK("http://evil.example","click me")', "\t=1+1", "\r=1+1")

counts = {"catalogue files": 0, "catalogue rows": 0, "interaction files": 0, "interaction rows": 0,
          "cli calls": 0}


# --- cells and files ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Cell:
    """One CSV cell: its text (None = empty) and the encoding its bytes are written in."""

    text: str | None
    encoding: str = "utf-8"

    def raw(self) -> bytes:
        if self.text is None:
            return b""
        try:
            return self.text.encode(self.encoding)
        except UnicodeEncodeError:  # not representable there: fall back to UTF-8
            return self.text.encode("utf-8")

    def decoded(self) -> str | None | bytes:
        """What a UTF-8 reader sees: the text, None when empty, the bytes when undecodable."""
        if self.text is None or self.text == "":
            return None
        try:
            return self.raw().decode("utf-8")
        except UnicodeDecodeError:
            return self.raw()


def csv_bytes(header: list[str], rows: list[list[Cell]], newline: bytes, quote_all: bool) -> bytes:
    def field(b: bytes) -> bytes:
        if quote_all or any(c in b for c in b',"\r\n'):
            return b'"' + b.replace(b'"', b'""') + b'"'
        return b

    lines = [b",".join(field(h.encode()) for h in header)]
    lines += [b",".join(field(c.raw()) for c in row) for row in rows]
    return newline.join(lines) + newline


WORDS = ["Whole Milk 1 gal", "Café Crème", "Jalapeño Salsa", "Brötchen", "寿司 rice", "Tacos 🌮",
         "Peanut Butter, Creamy", 'Tortillas "soft"', "Bananas", "Olive Oil 500ml"]
ODD_TEXT = ["", "   ", "line\nbreak", "tab\there", "nul\x00byte", "bell\x07", "  padded  ",
            "\x1f\x1c unit seps", "ä", "x" * 10_000, ("Long title " * 1_000).strip()]
text_values = st.one_of(
    st.sampled_from(WORDS), st.sampled_from(ODD_TEXT), st.sampled_from(FORMULAS),
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=25),
)
encodings = st.sampled_from(["utf-8", "utf-8", "latin-1", "cp1252"])


def cells(values) -> st.SearchStrategy[Cell]:
    return st.builds(Cell, st.one_of(st.none(), values), encodings)


price_text = st.one_of(
    st.sampled_from(["2.49", " 7.25 ", "0", "-3.5", "1e6", "100000", "100000.01", "nan", "NaN",
                     "inf", "-inf", "1e400", "abc", "$4.99", "3,50", "3,50 €", "12.5.1", "TRUE"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(min_value=0.01, max_value=500).map(lambda x: f"{x:.2f}"),
)
margin_text = st.sampled_from(["0.25", "0", "0.999", "1", "1.5", "-0.1", "abc", "nan", "inf", " 0.4 "])
rating_text = st.sampled_from(["4.5", "0", "5", "-1", "great", "nan", "inf", "1e3"])
id_text = st.sampled_from(["P1", "P2", "P3", " P1 ", "P4\t", "0012", "12", "Pé", "=cmd|' /C calc'!A0",
                           "", "  ", "p1"])

GOOD = {
    "product_id": st.sampled_from(["P1", "P2", "P3", "P4", "P5", "0012"]),
    "title": st.sampled_from(WORDS),
    "price": st.floats(min_value=0.01, max_value=500).map(lambda x: f"{x:.2f}"),
    "margin_rate": st.sampled_from(["0.25", "0", " 0.4 "]),
    "rating": st.sampled_from(["4.5", "0", "5"]),
}

# our field -> names a merchant file may use for it (the first is ours, needing no mapping)
PRODUCT_NAMES = {
    "product_id": ["product_id", "sku", "Item ID"],
    "title": ["title", "name", "Product Name"],
    "price": ["price", "unit_price", "Cost $"],
    "margin_rate": ["margin_rate", "margin"],
    "rating": ["rating", "stars"],
    "brand": ["brand", "maker"],
}
EXTRA_COLUMNS = ["notes", "supplier code"]
SHADOW = "title (shadowed)"  # key of a file column named 'title' while the map takes title from another


# --- the oracle ----------------------------------------------------------------------------------

def _number(text: str | None | bytes) -> float | None:
    """A cell read as a number the way any CSV tool would; None when it is not one."""
    if not isinstance(text, str):
        return None
    try:
        return float(text.strip())
    except ValueError:
        return None


def _blank(text) -> bool:
    return text is None or (isinstance(text, str) and text.strip() == "")


def clean_title(text: str) -> str:
    return re.sub(r"[\x00-\x1f\x7f]", " ", text).strip()[:MAX_TEXT]


def product_verdict(row: dict[str, Cell]) -> tuple[bool, tuple]:
    """(valid?, the row as validation compares duplicates) for one catalogue row."""
    dec = {k: c.decoded() for k, c in row.items() if k != SHADOW}  # the map drops it
    if any(isinstance(v, bytes) for v in dec.values()):
        return False, ()
    pid, title = dec["product_id"], dec["title"]
    if _blank(pid) or _blank(title):
        return False, ()
    price = _number(dec["price"])
    if price is None or not 0 < price <= MAX_PRICE:
        return False, ()
    margin = DEFAULT_MARGIN
    if not _blank(dec.get("margin_rate")):
        margin = _number(dec["margin_rate"])
        if margin is None or not 0 <= margin < 1:
            return False, ()
    rating = "nan"
    if not _blank(dec.get("rating")):
        rating = _number(dec["rating"])
        if rating is None or not math.isfinite(rating):
            return False, ()
    others = tuple(sorted((k, v) for k, v in dec.items()
                          if k not in ("product_id", "price", "margin_rate", "rating")))
    return True, (pid.strip(), price, margin, rating, others)


@dataclass
class CatalogueCase:
    header: list[str]
    columns: list[str]  # our names (or extra names), in file order
    rows: list[dict[str, Cell]]
    column_map: dict[str, str]
    newline: bytes
    quote_all: bool

    def cells_in_file_order(self) -> list[list[Cell]]:
        return [[r[c] for c in self.columns] for r in self.rows]

    def expected(self) -> tuple[dict[str, tuple[str, float]], set[int], int]:
        """(product_id -> (title, price) loaded, rejected row numbers, collapsed rows)."""
        kept: dict[str, tuple] = {}
        loaded: dict[str, tuple[str, float]] = {}
        rejected: set[int] = set()
        collapsed = 0
        for number, row in enumerate(self.rows, start=1):
            valid, key = product_verdict(row)
            if not valid:
                rejected.add(number)
            elif key[0] not in kept:
                kept[key[0]] = key
                loaded[key[0]] = (clean_title(row["title"].decoded()), key[1])
            elif kept[key[0]] == key:
                collapsed += 1  # an exact copy of the row that was loaded: nothing is lost
            else:
                rejected.add(number)
        return loaded, rejected, collapsed


@st.composite
def catalogue_cases(draw) -> CatalogueCase:
    optional = draw(st.lists(st.sampled_from(["margin_rate", "rating", "brand"]), unique=True))
    extras = draw(st.lists(st.sampled_from(EXTRA_COLUMNS), unique=True))
    # a required column goes missing now and then: that must be a SchemaError
    required = [c for c in ("product_id", "title", "price") if draw(st.integers(0, 9)) > 0]
    ours = required + optional
    names = {c: draw(st.sampled_from(PRODUCT_NAMES[c])) for c in ours}
    column_map = {c: n for c, n in names.items() if n != c}
    if "title" in column_map and draw(st.booleans()):
        # the file also has a column literally named 'title'; the map says to use another
        extras.append(SHADOW)
        names[SHADOW] = "title"
    columns = draw(st.permutations(ours + extras))
    header = [names.get(c, c) for c in columns]
    values = {"product_id": id_text, "title": text_values, "price": price_text, "margin_rate": margin_text,
              "rating": rating_text, "brand": text_values}
    rows: list[dict[str, Cell]] = []
    for _ in range(draw(st.integers(0, 12))):
        if rows and draw(st.integers(0, 5)) == 0:
            rows.append(dict(draw(st.sampled_from(rows))))  # an exact duplicate of an earlier row
            continue
        # a plausible row, then some of its cells replaced by anything at all: most rows sit
        # near the line between loaded and rejected, where the bugs are
        row = {c: Cell(draw(GOOD.get(c, st.sampled_from(WORDS)))) for c in columns}
        for c in columns:
            if draw(st.integers(0, 3)) == 0:
                row[c] = draw(cells(values.get(c, text_values)))
        rows.append(row)
    return CatalogueCase(header, columns, rows, column_map,
                         draw(st.sampled_from([b"\n", b"\r\n"])), draw(st.booleans()))


def check_loaded(case: CatalogueCase, path: Path, load) -> None:
    """The property every generated catalogue must satisfy."""
    counts["catalogue files"] += 1
    counts["catalogue rows"] += len(case.rows)
    missing = [c for c in ("product_id", "title", "price") if c not in case.columns]
    if not case.columns:  # not even a header: "empty" (CSV), or no columns at all (parquet)
        with pytest.raises(SchemaError) as err:
            load()
        assert err.value.file == str(path)
        assert "empty" in str(err.value) or err.value.column in missing
        return
    if missing:
        with pytest.raises(SchemaError) as err:
            load()
        assert err.value.file == str(path) and str(path) in str(err.value)
        assert err.value.column in missing and f"'{err.value.column}'" in str(err.value)
        return
    ds = load()
    loaded, rejected, collapsed = case.expected()
    quarantine = [r for r in ds.quarantine if r.file == str(path)]
    assert all(r.reason and r.field for r in quarantine)
    got_rows = [r.row for r in quarantine]
    assert len(got_rows) == len(set(got_rows)), "a row was rejected twice"
    assert set(got_rows) == rejected
    products = ds.products.set_index("product_id")
    assert set(products.index) == set(loaded)
    for pid, (title, price) in loaded.items():
        assert products.at[pid, "title"] == title
        assert products.at[pid, "price"] == price
    # nothing lost: every row is loaded, an exact copy of a loaded row, or quarantined
    assert len(ds.products) + collapsed + len(quarantine) == len(case.rows)


# --- catalogue properties ------------------------------------------------------------------------

@PROPERTY
@given(case=catalogue_cases())
def test_any_catalogue_csv_is_loaded_or_refused_with_nothing_lost(case):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "catalogue.csv"
        path.write_bytes(csv_bytes(case.header, case.cells_in_file_order(), case.newline, case.quote_all))
        check_loaded(case, path, lambda: load_source("csv", path, column_map=case.column_map))


@PROPERTY
@given(case=catalogue_cases(), typed_price=st.booleans())
def test_any_catalogue_parquet_is_loaded_or_refused_with_nothing_lost(case, typed_price):
    # parquet holds text, not bytes: every cell is its (valid Unicode) text
    case.rows = [{c: Cell(v.text) for c, v in r.items()} for r in case.rows]
    columns = {h: [r[c].text for r in case.rows] for h, c in zip(case.header, case.columns)}
    frame = pd.DataFrame(columns, columns=case.header, dtype=object)
    price_name = case.header[case.columns.index("price")] if "price" in case.columns else None
    if typed_price and price_name:
        # a float column (NaN, inf, negative and huge included); what is no number is NaN
        numbers = [math.nan if _number(t) is None else _number(t) for t in frame[price_name]]
        frame[price_name] = pd.Series(numbers, dtype=float)
        case.rows = [{**r, "price": Cell(repr(n))} for r, n in zip(case.rows, numbers)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "catalogue.parquet"
        frame.to_parquet(path, index=False)
        check_loaded(case, path, lambda: load_source("parquet", path, column_map=case.column_map))


def test_parquet_with_wrong_column_types(tmp_path):
    """Ids as integers, titles as numbers, prices as text, NaN/negative/huge floats."""
    path = tmp_path / "typed.parquet"
    pd.DataFrame({
        "product_id": [1, 2, 3, 4, 5, 6],
        "title": [101, 102.5, None, 104, 105, 106],
        "price": [1.5, float("nan"), 2.0, -1.0, 1e12, 3.0],
        "rating": ["4", "x", "5", "5", "5", "5"],
    }).to_parquet(path, index=False)
    ds = load_source("parquet", path)
    assert ds.products["product_id"].tolist() == ["1", "6"]
    assert ds.products["title"].tolist() == ["101.0", "106.0"]  # a float column, read as text
    got = {(r.row, r.field) for r in ds.quarantine}
    assert got == {(2, "price"), (3, "title"), (4, "price"), (5, "price")}  # one reason per row
    assert len(ds.products) + len(ds.quarantine) == 6


# --- interaction properties ----------------------------------------------------------------------

GOOD_CATALOGUE = b"product_id,title,price\nP1,Milk,1.5\nP2,Eggs,2.5\nP3,Bread,3\nP9,Broken,-1\n"
KNOWN = {"P1", "P2", "P3"}
INTERACTION_VALUES = {
    "user_id": st.sampled_from(["u1", "u2", " u3 ", "", "  ", "ü4", "=cmd|' /C calc'!A0"]),
    "product_id": st.sampled_from(["P1", "P2", " P3 ", "P9", "NOPE", "", "p1"]),
    "timestamp": st.sampled_from(["1609459200", "-5", "0", "2021-03-04", "2021-03-04 10:00:00",
                                  "2021-03-04T10:00:00Z", "2021-03-04T10:00:00+02:00", "",
                                  "2021-13-45", "yesterday", "1e20", "nan", "inf"]),
    "event": st.sampled_from(["purchase", "view", "cart", "review", " Purchase ", "CART", "buy", "",
                              "click"]),
    "quantity": st.sampled_from(["1", "2.5", "", "0", "-1", "two", "nan", "inf", "1e3"]),
    "value": st.sampled_from(["3.5", "", "-2", "abc", "inf", "nan"]),
    "rating": st.sampled_from(["4", "", "x", "inf"]),
    "week": st.sampled_from(["1", "52", "", "x", "3.5"]),
}
GOOD_INTERACTION = {
    "user_id": st.sampled_from(["u1", "u2"]), "product_id": st.sampled_from(["P1", "P2", "P3"]),
    "timestamp": st.sampled_from(["1609459200", "2021-03-04T10:00:00Z"]),
    "event": st.sampled_from(EVENTS), "quantity": st.sampled_from(["1", "2"]),
    "value": st.sampled_from(["3.5", ""]), "rating": st.sampled_from(["4", ""]),
    "week": st.sampled_from(["1", "52"]),
}
GOOD_TIMESTAMPS = {"1609459200", "-5", "0", "2021-03-04", "2021-03-04 10:00:00",
                   "2021-03-04T10:00:00Z", "2021-03-04T10:00:00+02:00"}


def interaction_valid(row: dict[str, Cell]) -> bool:
    dec = {k: c.decoded() for k, c in row.items()}
    if any(isinstance(v, bytes) for v in dec.values()):
        return False
    if _blank(dec["user_id"]) or _blank(dec["product_id"]) or dec["product_id"].strip() not in KNOWN:
        return False
    if dec["timestamp"] not in GOOD_TIMESTAMPS:
        return False
    if "event" in dec and (_blank(dec["event"]) or dec["event"].strip().lower() not in EVENTS):
        return False
    for col in ("quantity", "value", "rating"):
        if col in dec and not _blank(dec[col]):
            number = _number(dec[col])
            if number is None or not math.isfinite(number) or (col == "quantity" and number <= 0):
                return False
    if "week" in dec:
        week = _number(dec["week"])
        if week is None or week != int(week):
            return False
    return True


@st.composite
def interaction_cases(draw):
    optional = draw(st.lists(st.sampled_from(["event", "quantity", "value", "rating", "week"]), unique=True))
    required = [c for c in ("user_id", "product_id", "timestamp") if draw(st.integers(0, 9)) > 0]
    columns = draw(st.permutations(required + optional + ["basket_id"]))
    rows = []
    for number in range(1, draw(st.integers(0, 12)) + 1):
        row = {c: Cell(draw(GOOD_INTERACTION[c])) for c in columns if c != "basket_id"}
        for c in row:  # a plausible row with some cells replaced by anything
            if draw(st.integers(0, 3)) == 0:
                row[c] = draw(cells(INTERACTION_VALUES[c]))
        row["basket_id"] = Cell(f"b{number}")  # tells which file row a loaded interaction is
        rows.append(row)
    return columns, rows


@PROPERTY
@given(case=interaction_cases(), newline=st.sampled_from([b"\n", b"\r\n"]))
def test_any_interaction_file_is_loaded_or_refused_with_nothing_lost(case, newline):
    columns, rows = case
    counts["interaction files"] += 1
    counts["interaction rows"] += len(rows)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "products.csv").write_bytes(GOOD_CATALOGUE)
        path = folder / "interactions.csv"
        path.write_bytes(csv_bytes(columns, [[r[c] for c in columns] for r in rows], newline, False))
        missing = [c for c in ("user_id", "product_id", "timestamp") if c not in columns]
        if missing:
            with pytest.raises(SchemaError) as err:
                load_source("csv", folder)
            assert err.value.file == str(path) and err.value.column in missing
            return
        ds = load_source("csv", folder)
    rejected = {r.row for r in ds.quarantine if r.file == str(path)}
    loaded = [int(b[1:]) for b in ds.interactions["basket_id"]]
    expected_loaded = [n for n, row in enumerate(rows, start=1) if interaction_valid(row)]
    assert loaded == expected_loaded
    assert rejected == set(range(1, len(rows) + 1)) - set(expected_loaded)
    assert len(ds.interactions) + len([r for r in ds.quarantine if r.file == str(path)]) == len(rows)
    tx = ds.interactions
    assert set(tx["product_id"]) <= KNOWN and set(tx["event"]) <= set(EVENTS)
    assert tx["timestamp"].notna().all() and (tx["quantity"] > 0).all()


# --- files no generator above writes ----------------------------------------------------------------

@pytest.mark.parametrize(
    "data, needle",
    [
        # a row longer than the header: pandas would silently shift it into an index column
        (b"product_id,title,price\nP1,Milk,2.5,9\nP2,Eggs,3\n", "more fields"),
        (b"product_id,title,price\nP1,Milk,2.5\nP2,Eggs,3,4\n", "line 3"),
        # a UTF-16 export: not even the header is UTF-8
        ("product_id,title,price\nP1,Milk,2.5\n".encode("utf-16"), "UTF-8"),
        (b"\n\n", "empty"),
    ],
    ids=["long-first-row", "long-later-row", "utf-16", "blank-lines"],
)
def test_unreadable_csv_is_a_clear_error_naming_the_file(tmp_path, data, needle):
    path = tmp_path / "catalogue.csv"
    path.write_bytes(data)
    with pytest.raises(SchemaError) as err:
        load_source("csv", path)
    assert err.value.file == str(path) and str(err.value).startswith(str(path))
    assert needle in str(err.value)


def test_short_rows_and_bom_are_read_not_shifted(tmp_path):
    path = tmp_path / "catalogue.csv"
    path.write_bytes("\ufeffproduct_id,title,price\r\nP1,Milk,2.5\r\nP2,Eggs\r\n".encode())
    ds = load_source("csv", path)
    assert ds.products[["product_id", "title", "price"]].values.tolist() == [["P1", "Milk", 2.5]]
    assert [(r.row, r.field) for r in ds.quarantine] == [(2, "price")]


# --- chat input --------------------------------------------------------------------------------------

@PROPERTY
@given(text=st.text(max_size=3000), max_len=st.integers(0, 1200))
def test_sanitize_message_bounds_and_strips(text, max_len):
    out = sanitize_message(text, max_len=max_len)
    assert len(out) <= max_len
    assert not any(ord(c) < 32 or ord(c) == 127 or 0xD800 <= ord(c) <= 0xDFFF for c in out)
    assert not any(c in out for c in "\u202e\u200b\u2066\ufeff")  # bidi override, zero-width
    assert out == out.strip() and "  " not in out
    assert sanitize_message(out, max_len=max_len) == out  # idempotent


@pytest.mark.parametrize("text", ["", "   ", "\n\t\r", "\x00\x07\x1b[31m", "\u200b\u202e", None, 42, b"bytes"])
def test_empty_or_non_text_chat_input_is_empty(text):
    assert sanitize_message(text).replace("[31m", "") == ""


def test_chat_input_has_a_maximum_length():
    assert len(sanitize_message("taco night " * 10_000)) <= 1000
    assert sanitize_message("tacos\x00 for\u202e four\nplease") == "tacos for four please"


# --- CSV exports ---------------------------------------------------------------------------------------

def _cells(path: Path) -> list[str]:
    import csv

    with open(path, newline="", encoding="utf-8") as fh:
        return [cell for row in csv.reader(fh) for cell in row]


def _formula(cell: str) -> bool:
    return cell[:1] in ("=", "+", "-", "@", "\t", "\r")


def test_feedback_csv_export_neutralises_formulas_via_the_cli(tmp_path):
    data = tmp_path / "data"
    store = FeedbackStore(data / "feedback.sqlite")
    for i, formula in enumerate(FORMULAS):
        store.record(FeedbackEvent.for_user(f"shopper-{i}", data_dir=data, session_id=formula, event="like",
                                            bundle_key=formula, product_ids=[formula], reason=formula))
    store.close()
    out = tmp_path / "events.csv"
    proc = subprocess.run([executable("bundle-assistant"), "feedback", "export", "--out", str(out),
                           "--data-dir", str(data)], capture_output=True, text=True, env=subprocess_env(),
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cells = _cells(out)
    assert not [c for c in cells if _formula(c)]
    # neutralised, not lost: the text is still there behind the quote
    assert "'=cmd|' /C calc'!A0" in cells and "'@SUM(A1:A9)" in cells
    assert f"{len(FORMULAS)} events" in proc.stdout


def test_quarantine_report_neutralises_formulas(tmp_path, embedder, settings):
    from conftest import build

    path = tmp_path / "products.csv"
    path.write_text("product_id,title,price\nP1,Milk,2.5\nP2,Eggs,=cmd|' /C calc'!A0\n"
                    "=HYPERLINK(\"http://x\"),Bread,\n")
    s = settings()
    # 2 of 3 rows are rejected: a partial build on purpose (the guard refuses it otherwise)
    build(load_source("csv", path, settings=s), s, embedder, allow_partial=True)
    from retrieval.index import read_current

    report = s.data_dir / read_current(s.data_dir)["folder"] / "quarantine.csv"
    cells = _cells(report)
    assert len(cells) == 6 * 3 and not [c for c in cells if _formula(c)]
    assert "'=cmd|' /C calc'!A0" in cells


# --- the command line -------------------------------------------------------------------------------

SHOP_PRODUCTS = (
    "product_id,title,price,department\n"
    "A1,Spaghetti 500g,1.50,GROCERY\nA2,Tomato pasta sauce,2.25,GROCERY\n"
    "A3,Parmesan cheese,4.00,DELI\nA4,Garlic bread,2.00,PASTRY\n"
)
SHOP_INTERACTIONS = (
    "user_id,product_id,timestamp,basket_id\n"
    "shopper-1,A1,2024-03-01,b1\nshopper-1,A2,2024-03-01,b1\nshopper-2,A3,2024-03-02,b2\n"
)


@pytest.fixture(scope="module")
def shop(tmp_path_factory, embedder) -> dict[str, Path]:
    """A built four-product index, a source folder, and a few broken files."""
    from conftest import build

    root = tmp_path_factory.mktemp("cli-shop")
    source = root / "shop"
    source.mkdir()
    (source / "products.csv").write_text(SHOP_PRODUCTS)
    (source / "interactions.csv").write_text(SHOP_INTERACTIONS)
    data = root / "data"
    s = Settings(data_dir=data, chroma_url=None)
    build(load_source("csv", source, settings=s), s, embedder)
    (root / "utf16.csv").write_bytes(SHOP_PRODUCTS.encode("utf-16"))
    (root / "ragged.csv").write_text("product_id,title,price\nA1,Milk,1,2,3\n")
    (root / "empty.csv").write_text("")
    (root / "notes.txt").write_text("not a data dir")
    corrupt = root / "corrupt"
    shutil.copytree(data, corrupt)
    (corrupt / "current.json").write_text("{ half a pointer")
    return {"data": data, "root": root, "source": source, "corrupt": corrupt}


# refused by argparse itself: cheap to start, so every one runs as a real process
ARGPARSE_REFUSALS: list[tuple[list[str], str]] = [
    ([], "required"),
    (["frobnicate"], "invalid choice"),
    (["recommend", "--k", "0"], "--k"),
    (["recommend", "--k", "2.5"], "whole number"),
    (["recommend", "--budget", "-1"], "--budget"),
    (["recommend", "--budget", "abc"], "not a number"),
    (["recommend", "--budget", "nan"], "--budget"),
    (["recommend", "--weights", "junk"], "name=value"),
    (["recommend", "--weights", "margin=lots"], "not a number"),
    (["recommend", "--mode", "psychic"], "invalid choice"),
    (["recommend", "--min-margin", "abc"], "--min-margin"),
    (["search"], "query"),
    (["search", "milk", "--k", "-3"], "--k"),
    (["search", "milk", "--max-price", "0"], "--max-price"),
    (["index", "--limit", "0"], "--limit"),
    (["index", "--map", "title"], "ours=theirs"),
    (["index", "--source", "excel"], "invalid choice"),
    (["feedback"], "required"),
    (["eval", "--protocol", "vibes"], "invalid choice"),
]


def command_refusals(shop: dict[str, Path]) -> list[tuple[list[str], str]]:
    """Arguments argparse accepts that the commands themselves must refuse cleanly."""
    data, root = ["--data-dir", str(shop["data"])], shop["root"]
    return [
        (["recommend", "--no-llm", "--weights", "margin=-1", *data], "non-negative"),
        (["recommend", "--no-llm", "--weights", "bogus=1", *data], "unknown objective"),
        (["recommend", "--no-llm", "--weights", "margin=0,sales=0", *data], "zero"),
        (["recommend", "--no-llm", "--weights", "margin=nan", *data], "finite"),
        (["recommend", "--no-llm", "--weights", "margin=inf", *data], "finite"),
        (["recommend", "--no-llm", "--min-margin", "2", *data], "--min-margin"),
        (["recommend", "--no-llm", "--user", "nobody", *data], "unknown user 'nobody'"),
        (["recommend", "--no-llm", "--anchor", "NOPE", *data], "unknown anchor"),
        (["profile", "nobody", *data], "unknown user"),
        (["search", "milk", "--data-dir", str(root / "never-built")], "bundle-assistant index"),
        (["search", "milk", "--data-dir", str(root / "notes.txt")], "bundle-assistant index"),
        (["search", "milk", "--data-dir", str(shop["corrupt"])], "bundle-assistant index"),
        (["index", "--source", "csv", "--data-dir", str(root / "d1")], "--path"),
        (["index", "--source", "csv", "--path", str(root / "nope.csv"), "--data-dir", str(root / "d2")],
         "no such file"),
        (["index", "--source", "csv", "--path", str(root / "utf16.csv"), "--data-dir", str(root / "d3")], "UTF-8"),
        (["index", "--source", "csv", "--path", str(root / "ragged.csv"), "--data-dir", str(root / "d4")],
         "more fields"),
        (["index", "--source", "csv", "--path", str(root / "empty.csv"), "--data-dir", str(root / "d5")], "empty"),
        (["index", "--source", "bundlerec", "--path", str(shop["source"]), "--data-dir", str(root / "d6")],
         "missing file"),
        (["index", "--source", "csv", "--path", str(shop["source"]), "--margins", str(root / "nope.csv"),
          "--data-dir", str(root / "d7")], "nope.csv"),
        (["feedback", "export", "--out", str(root / "events.txt"), *data], ".csv or .parquet"),
        (["forget", "   ", *data], "empty"),
    ]


def one_line_refusal(code: int, out: str, err: str, needle: str) -> str | None:
    """None when the refusal is right: exit 2, nothing on stdout, one error line naming it."""
    errors = [line for line in err.splitlines() if "error:" in line]
    if (code == 2 and "Traceback" not in err and out == "" and len(errors) == 1
            and needle.lower() in errors[0].lower()):
        return None
    return f"exit {code}\n{err[-600:]}"


def test_bad_arguments_in_real_processes(shop):
    """The console script itself: every argparse refusal, and a few of each command's own
    (those import the whole stack, ~5 s each on 2 cores, so the rest run in-process below)."""
    heavy = [c for c in command_refusals(shop) if c[1] in ("non-negative", "UTF-8", ".csv or .parquet")]
    calls = ARGPARSE_REFUSALS + heavy

    def run(argv: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run([executable("bundle-assistant"), *argv], capture_output=True, text=True,
                              env=subprocess_env(), timeout=300)

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(run, [argv for argv, _ in calls]))
    counts["cli calls"] += len(calls)
    failures = [f"{argv}: {problem}" for (argv, needle), proc in zip(calls, results)
                if (problem := one_line_refusal(proc.returncode, proc.stdout, proc.stderr, needle))]
    assert not failures, "\n\n".join(failures)


def test_every_bad_command_argument_is_one_line_and_exit_2(shop, capsys):
    from assistant.cli import main

    calls = command_refusals(shop)
    failures = []
    for argv, needle in calls:
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
        out, err = capsys.readouterr()
        if problem := one_line_refusal(code, out, err, needle):
            failures.append(f"{argv}: {problem}")
    counts["cli calls"] += len(calls)
    assert not failures, "\n\n".join(failures)
    # a refused index run wrote no pointer
    assert not any((shop["root"] / f"d{i}" / "current.json").exists() for i in range(1, 8))


def test_bad_input_figures():
    """Not a check: the numbers for the issue's report (run with -s to see them)."""
    print("\nbad inputs tried:", json.dumps(counts))
