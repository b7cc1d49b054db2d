"""Spreadsheet-safe CSV: what a merchant opens must not run as a formula.

Lives in the retrieval layer because the index build writes its quarantine report with
it; the assistant's exports use the same writer (re-exported by :mod:`assistant.privacy`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

# Spreadsheet formula injection (OWASP "CSV Injection"): a cell that starts with one of
# these is run as a formula by Excel/LibreOffice/Sheets. A leading quote makes it text.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def neutralise_csv_cell(value: Any) -> Any:
    """Prefix ``'`` to a string cell that a spreadsheet would read as a formula.
    Non-strings (numbers, NaN, None) pass through unchanged."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def write_safe_csv(df: pd.DataFrame, path: Path | str) -> None:
    """``df`` as a CSV a spreadsheet can open safely: formula cells neutralised, and every
    cell quoted, because pandas leaves a cell holding a bare carriage return unquoted and a
    spreadsheet starts a new row there (a cell "x\r=cmd|..." would become a formula)."""
    import csv

    neutralise_frame(df).to_csv(path, index=False, quoting=csv.QUOTE_ALL)


def neutralise_frame(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` with every text column neutralised; numeric columns untouched."""
    out = df.copy()
    for column in out.columns:
        series = out[column]
        if pd.api.types.is_object_dtype(series) or pd.api.types.is_string_dtype(series):
            out[column] = series.map(neutralise_csv_cell)
    return out
