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
import random
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from assistant.constraints import sanitize_message
from assistant.feedback import FeedbackEvent, FeedbackStore
from retrieval.config import Settings
from retrieval.schema import EVENTS, SchemaError
from retrieval.sources import load_source
from retrieval.validation import MAX_PRICE, MAX_TEXT

from conftest import executable, subprocess_env

PROPERTY = hsettings(
    max_examples=int(__import__("os").environ.get("BAD_INPUT_EXAMPLES", 40)), deadline=None, derandomize=True,
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
    if not case.columns:  # not even a header
        with pytest.raises(SchemaError, match="empty") as err:
            load()
        assert err.value.file == str(path)
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
