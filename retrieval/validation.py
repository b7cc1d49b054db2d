"""Row-level validation shared by every source.

A file that cannot be read at all (a required column missing) raises :class:`SchemaError`.
A bad row is dropped into the quarantine as a :class:`Rejection` naming file, row, field
and reason; valid rows are kept, so ``loaded + rejected == rows read`` always holds (an
exact duplicate row counts as loaded: it collapses into its twin, losing nothing).
Everything here is vectorised: Complete Journey has 1.5M transaction lines.
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .buildtime import MAX_REJECTED_SHARE
from .schema import (
    EVENTS,
    REQUIRED_INTERACTION_COLUMNS,
    REQUIRED_PRODUCT_COLUMNS,
    Rejection,
    SchemaError,
)

MAX_PRICE = 100_000.0  # above this a "price" is a data error (a unit or cents mix-up)
MAX_TEXT = 2_000  # longer titles are truncated, not rejected: the product is still real


@dataclass(frozen=True)
class LineRejection(Rejection):
    """A rejection that also knows its line in a text file (the header is line 1), which is
    what an editor shows; ``row`` stays the 1-based data row. ``line`` is None where the
    source has no lines (parquet, the packaged data)."""

    line: int | None = None

    def as_dict(self) -> dict:
        return {**super().as_dict(), "line": self.line}


def where(rejection: Rejection) -> str:
    """'line 3' for a text file, else 'row 2': how a message points at a rejected row."""
    line = getattr(rejection, "line", None)
    return f"line {line}" if line is not None else f"row {rejection.row}"


def _csv_record_lines(path: Path) -> np.ndarray | None:
    """The line each data record of a CSV file starts on (index 0: the first data row).

    A quoted field may span lines and pandas skips blank lines, so a record's line is not
    always its row + 1; without quotes, carriage returns or blank lines it is, and the
    file is not parsed again. None when the file cannot be read here."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if b'"' not in data and b"\r" not in data and b"\n\n" not in data and not data.startswith(b"\n"):
        return np.arange(2, data.count(b"\n") + 3)
    starts: list[int] = []
    previous = 0
    limit = csv.field_size_limit()
    try:
        csv.field_size_limit(sys.maxsize)
        with open(path, newline="", encoding="utf-8", errors="surrogateescape") as fh:
            reader = csv.reader(fh)
            for record in reader:
                if record:  # a blank line is no record, for pandas either
                    starts.append(previous + 1)
                previous = reader.line_num
    except (csv.Error, OSError):
        return None
    finally:
        csv.field_size_limit(limit)
    return np.asarray(starts[1:], dtype=np.int64)  # starts[0] is the header


def with_lines(rejections: list[Rejection], file: str) -> list[Rejection]:
    """The rejections in file order, each with its file line when ``file`` is a CSV on disk."""
    ordered = sorted(rejections, key=lambda r: r.row)
    path = Path(file)
    lines = _csv_record_lines(path) if ordered and path.suffix.lower() == ".csv" and path.is_file() else None
    out: list[Rejection] = []
    for r in ordered:
        line = int(lines[r.row - 1]) if lines is not None and 0 < r.row <= len(lines) else None
        out.append(LineRejection(r.file, r.row, r.field, r.reason, r.value, line))
    return out


class PartialBuild(ValueError):
    """A build that would replace the serving index with an empty or mostly rejected one.
    ``report`` is where the quarantine report of the refused build was written."""

    def __init__(self, message: str, report: Path | None = None):
        super().__init__(message)
        self.report = report


def build_problem(products: int, interactions: int, rejected: int, max_share: float = MAX_REJECTED_SHARE,
                  *, allow_partial: bool = False) -> str | None:
    """Why a dataset must not become the serving index, or None when it may.

    No products can never serve. Otherwise the share of rejected rows among all rows read
    (loaded products and interactions plus rejections) must stay at or under ``max_share``,
    unless the user accepts a partial build on purpose."""
    if products == 0:
        return (f"no products loaded (rejected {rejected:,} rows): nothing to serve, so the build stops "
                "here; fix the catalogue (see the quarantine report)")
    read = products + interactions + rejected
    share = rejected / read if read else 0.0
    if share > max_share and not allow_partial:
        return (f"rejected {rejected:,} of {read:,} rows ({share:.0%}), more than the allowed {max_share:.0%}; "
                "fix the data (see the quarantine report) or pass --force-partial to build from the rest")
    return None


def require_columns(df: pd.DataFrame, required: tuple[str, ...], file: str) -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        found = ", ".join(map(str, df.columns)) or "(none)"
        raise SchemaError(
            file,
            f"missing required column '{missing[0]}'"
            + (f" (also {missing[1:]})" if len(missing) > 1 else "")
            + f"; found columns: {found}",
            column=missing[0],
        )


class _Quarantine:
    """Collects rejections and the mask of rows still alive."""

    def __init__(self, df: pd.DataFrame, file: str, row_numbers: pd.Series | None = None):
        self.file = file
        self.alive = pd.Series(True, index=df.index)
        # 1-based data row numbers as the user sees them (header excluded). A unique integer
        # index is the row's position in the file it was read from (a filtered slice keeps
        # it), so the number still points at the right row of the original file.
        if row_numbers is None:
            positional = pd.api.types.is_integer_dtype(df.index) and df.index.is_unique
            row_numbers = pd.Series(
                df.index.to_numpy() + 1 if positional else np.arange(1, len(df) + 1), index=df.index
            )
        self.rows = row_numbers
        self.rejections: list[Rejection] = []

    def reject(self, mask: pd.Series, field: str, reason: str, values: pd.Series | None = None) -> None:
        mask = mask & self.alive
        if not mask.any():
            return
        vals = values[mask] if values is not None else pd.Series("", index=mask[mask].index)
        for idx, value in vals.items():
            text = "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)
            self.rejections.append(
                Rejection(self.file, int(self.rows[idx]), field, reason, _printable(text[:200]))
            )
        self.alive &= ~mask


def _printable(text: str) -> str:
    """Undecodable bytes (held as surrogates) shown as ``\\xNN``, so the quarantine report
    itself can be written out as UTF-8."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _reject_bad_utf8(q: _Quarantine, df: pd.DataFrame) -> None:
    for col in _text_columns(df):
        bad = _has_bad_utf8(df[col])
        q.reject(bad, str(col), "text is not valid UTF-8", df[col])
        if bad.any():
            # The row is out already; blank the undecodable cell so that the string checks
            # that follow (pyarrow-backed strings cannot hold surrogates) never see it.
            df.loc[bad, col] = None


def _has_bad_utf8(series: pd.Series) -> pd.Series:
    """Cells that held bytes which are not UTF-8 (read with ``surrogateescape``)."""
    def bad(value: object) -> bool:
        if not isinstance(value, str):
            return False
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False

    return series.astype(object).map(bad).astype(bool)


def _text_columns(df: pd.DataFrame) -> list:
    return [c for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])
            and not pd.api.types.is_datetime64_any_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])]


def _blank(series: pd.Series) -> pd.Series:
    return series.isna() | (series.astype("string").str.strip() == "")


def _clean_text(series: pd.Series) -> pd.Series:
    out = series.astype("string").fillna("").str.replace(r"[\x00-\x1f\x7f]", " ", regex=True)
    return out.str.strip().str.slice(0, MAX_TEXT)


def validate_products(
    df: pd.DataFrame, file: str, *, price_required: bool, default_margin: float = 0.3
) -> tuple[pd.DataFrame, list[Rejection]]:
    """Check a raw catalogue table and return (clean products, rejections).

    ``price_required`` is False for sources that have no prices at all (BundleRec) or
    that mark unsold products unavailable themselves (Complete Journey).
    """
    require_columns(df, REQUIRED_PRODUCT_COLUMNS, file)
    if price_required:
        require_columns(df, ("price",), file)
    df = df.copy()
    q = _Quarantine(df, file)

    _reject_bad_utf8(q, df)

    df["product_id"] = df["product_id"].astype("string").str.strip()
    q.reject(_blank(df["product_id"]), "product_id", "missing product id", df["product_id"])
    q.reject(_blank(df["title"]), "title", "missing title", df["title"])

    raw_price = df["price"] if "price" in df.columns else pd.Series(np.nan, index=df.index)
    price = pd.to_numeric(raw_price, errors="coerce")
    if "price" in df.columns:
        q.reject(price.isna() & ~_blank(raw_price), "price", "price is not a number", raw_price)
        if price_required:
            q.reject(price.isna(), "price", "price is missing or NaN", raw_price)
        q.reject(price <= 0, "price", "price must be > 0", raw_price)
        q.reject(price > MAX_PRICE, "price", f"price above {MAX_PRICE:,.0f} is implausible", raw_price)
    df["price"] = price.astype(float)

    if "margin_rate" in df.columns:
        raw = df["margin_rate"]
        margin = pd.to_numeric(raw, errors="coerce")
        q.reject(margin.isna() & ~_blank(raw), "margin_rate", "margin_rate is not a number", raw)
        q.reject((margin < 0) | (margin >= 1), "margin_rate", "margin_rate must be in [0, 1)", raw)
        df["margin_rate"] = margin.fillna(default_margin).astype(float)
    else:
        df["margin_rate"] = float(default_margin)

    if "rating" in df.columns:
        raw = df["rating"]
        rating = pd.to_numeric(raw, errors="coerce")
        q.reject(rating.isna() & ~_blank(raw), "rating", "rating is not a number", raw)
        q.reject(rating.abs() == np.inf, "rating", "rating must be finite", raw)
        df["rating"] = rating.astype(float)
    else:
        df["rating"] = np.nan

    df = df[q.alive].copy()
    rows = q.rows[q.alive]
    df, dup_rejections = _drop_duplicate_ids(df, rows, file)
    return _normalise_products(df), with_lines(q.rejections + dup_rejections, file)


def _drop_duplicate_ids(
    df: pd.DataFrame, rows: pd.Series, file: str
) -> tuple[pd.DataFrame, list[Rejection]]:
    """Exact copies of a loaded row collapse silently; a repeated ID with other data is
    rejected (the first occurrence wins, so re-ordering a file is the way to pick another).
    A copy of a rejected conflicting row is rejected too: it has no loaded twin to join."""
    repeated = df["product_id"].duplicated(keep="first")
    # equal row hashes (every column, NaN equal to NaN) with the same id = the same row
    row_hash = pd.util.hash_pandas_object(df, index=False)
    collapsed = repeated & row_hash.isin(row_hash[~repeated])
    conflicting = repeated & ~collapsed
    rejections = [
        Rejection(file, int(rows[idx]), "product_id",
                  "duplicate product id with conflicting data", str(df.at[idx, "product_id"]))
        for idx in df.index[conflicting]
    ]
    return df.loc[~repeated], rejections


def _normalise_products(df: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame(index=df.index)
    out["product_id"] = df["product_id"].astype(str)
    out["title"] = _clean_text(df["title"])
    for col in ("category", "department", "product_type", "brand", "size"):
        out[col] = _clean_text(df[col]) if col in df.columns else ""
    parts = out["category"].str.split(">")
    missing_dept = out["department"] == ""
    out.loc[missing_dept, "department"] = parts[missing_dept].str[0].fillna("").str.strip()
    missing_type = out["product_type"] == ""
    out.loc[missing_type, "product_type"] = parts[missing_type].str[-1].fillna("").str.strip()
    out["price"] = df["price"].astype(float)
    out["margin_rate"] = df["margin_rate"].astype(float)
    out["rating"] = df["rating"].astype(float)
    if "in_stock" in df.columns:
        stock = df["in_stock"].map(_truthy)
        out["in_stock"] = stock.fillna(True).astype(bool)
    else:
        out["in_stock"] = True
    out["popularity"] = 0.0
    return out.reset_index(drop=True)


def _truthy(value: object) -> bool | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    return str(value).strip().lower() in {"1", "true", "yes", "y", "t", "in stock"}


def parse_timestamps(raw: pd.Series) -> pd.Series:
    """Unix seconds, or any date string pandas understands; NaT where neither works.
    A time with a zone ("...Z", "+02:00") is converted to UTC and kept naive, like unix
    seconds, so one file may mix both."""
    if pd.api.types.is_datetime64_any_dtype(raw):
        return raw.dt.tz_convert(None) if getattr(raw.dt, "tz", None) is not None else raw
    numeric = pd.to_numeric(raw, errors="coerce")
    out = pd.to_datetime(numeric, unit="s", errors="coerce")
    text_rows = numeric.isna() & raw.notna()
    if text_rows.any():
        text = pd.to_datetime(raw[text_rows].astype(str), errors="coerce", format="mixed", utc=True)
        out[text_rows] = text.dt.tz_convert(None).astype(out.dtype)
    return out


def validate_interactions(
    df: pd.DataFrame, file: str, known_products: set[str] | pd.Index
) -> tuple[pd.DataFrame, list[Rejection]]:
    """Check a raw interaction table against the clean catalogue."""
    require_columns(df, REQUIRED_INTERACTION_COLUMNS, file)
    df = df.copy()
    q = _Quarantine(df, file)
    _reject_bad_utf8(q, df)

    df["user_id"] = df["user_id"].astype("string").str.strip()
    df["product_id"] = df["product_id"].astype("string").str.strip()
    q.reject(_blank(df["user_id"]), "user_id", "missing user id", df["user_id"])
    q.reject(_blank(df["product_id"]), "product_id", "missing product id", df["product_id"])
    known = pd.Index(known_products)
    q.reject(~df["product_id"].isin(known), "product_id", "unknown product", df["product_id"])

    ts = parse_timestamps(df["timestamp"])
    q.reject(ts.isna(), "timestamp", "unparsable timestamp", df["timestamp"])
    df["timestamp"] = ts

    if "event" in df.columns:
        event = df["event"].astype("string").str.strip().str.lower()
        q.reject(~event.isin(EVENTS), "event", f"event must be one of {'|'.join(EVENTS)}", df["event"])
        df["event"] = event
    else:
        df["event"] = "purchase"

    for col, default in (("quantity", 1.0), ("value", np.nan), ("rating", np.nan)):
        if col in df.columns:
            raw = df[col]
            num = pd.to_numeric(raw, errors="coerce")
            q.reject(num.isna() & ~_blank(raw), col, f"{col} is not a number", raw)
            q.reject(num.abs() == np.inf, col, f"{col} must be finite", raw)
            if col == "quantity":
                q.reject(num <= 0, col, "quantity must be > 0", raw)
            df[col] = num.fillna(default) if col == "quantity" else num
        else:
            df[col] = default
    if "week" in df.columns:
        week = pd.to_numeric(df["week"], errors="coerce")
        whole = np.isfinite(week) & (week == week.round())
        q.reject(~whole, "week", "week must be a whole number", df["week"])
        df["week"] = week

    df = df[q.alive]
    out = pd.DataFrame(
        {
            "user_id": df["user_id"].astype(str),
            "product_id": df["product_id"].astype(str),
            "event": df["event"].astype(str),
            "quantity": df["quantity"].astype(float),
            "value": df["value"].astype(float),
            "timestamp": pd.to_datetime(df["timestamp"]),
            "basket_id": df["basket_id"].astype("string").fillna("").astype(str)
            if "basket_id" in df.columns else "",
            "rating": df["rating"].astype(float),
            "discounted": df["discounted"].map(_truthy).fillna(False).astype(bool)
            if "discounted" in df.columns else False,
        }
    )
    if "week" in df.columns:
        out["week"] = df["week"].astype(int)
    return out.reset_index(drop=True), with_lines(q.rejections, file)
