"""A user's own catalogue files: interactions beside a catalogue file are picked up (or
the CLI says there are none), rejected rows are numbered as the file's lines and reported
in file order, and the quarantine report's path is printed."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from assistant.cli import main
from retrieval.config import Settings
from retrieval.sources import interactions_file_for, load_source
from retrieval.validation import where

# real Complete Journey titles; line numbers in the comments (the header is line 1)
PRODUCTS = (
    "sku,name,unit_price\n"                          # 1
    "P1,Spaghetti Dry (Pasta) National brand,1.29\n"  # 2
    'P2,"Pasta Sauce,\nTomato",free\n'                # 3-4: a quoted title over two lines
    "\n"                                              # 5: blank, skipped by the reader
    "P3,,2.49\n"                                      # 6: no title
    "P4,Garlic Bread (Frozen Bread),2.99\n"           # 7
    "P5,Parmesan Cheese (Hard Cheese),-3.00\n"        # 8
)
INTERACTIONS = (
    "user_id,sku,timestamp\n"     # 1
    "h1,P1,2024-03-01\n"          # 2
    "h1,P9,2024-03-01\n"          # 3: unknown product
    "h2,P4,not a date\n"          # 4
    "h2,P1,2024-03-02\n"          # 5
)
MAP = {"product_id": "sku", "title": "name", "price": "unit_price"}


def write_shop(folder: Path, interactions: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "products.csv").write_text(PRODUCTS)
    if interactions:
        (folder / "interactions.csv").write_text(INTERACTIONS)
    return folder / "products.csv"


def test_a_catalogue_file_brings_the_interactions_beside_it(tmp_path):
    catalogue = write_shop(tmp_path / "shop")
    assert interactions_file_for(catalogue) == tmp_path / "shop" / "interactions.csv"
    from_file = load_source("csv", catalogue, settings=Settings(data_dir=tmp_path / "d"), column_map=MAP)
    from_folder = load_source("csv", tmp_path / "shop", settings=Settings(data_dir=tmp_path / "d"), column_map=MAP)
    assert len(from_file.interactions) == len(from_folder.interactions) == 2
    assert sorted(from_file.products["product_id"]) == ["P1", "P4"]


def test_rejections_are_file_lines_in_file_order(tmp_path):
    catalogue = write_shop(tmp_path / "shop")
    ds = load_source("csv", catalogue, settings=Settings(data_dir=tmp_path / "d"), column_map=MAP)
    got = [(Path(r.file).name, r.line, r.field) for r in ds.quarantine]
    assert got == [
        ("products.csv", 3, "price"),  # the two-line title starts on line 3
        ("products.csv", 6, "title"),  # after the blank line 5
        ("products.csv", 8, "price"),
        ("interactions.csv", 3, "product_id"),
        ("interactions.csv", 4, "timestamp"),
    ]
    assert [where(r) for r in ds.quarantine][:2] == ["line 3", "line 6"]
    # the data row number stays available: the 2nd, 3rd and 5th data rows of products.csv
    assert [r.row for r in ds.quarantine[:3]] == [2, 3, 5]
    # every line named holds the rejected value
    lines = PRODUCTS.splitlines()
    assert "free" in lines[4 - 1] and lines[6 - 1].startswith("P3") and "-3.00" in lines[8 - 1]


def test_cli_prints_lines_the_report_path_and_says_when_there_are_no_interactions(tmp_path, capsys):
    catalogue = write_shop(tmp_path / "shop", interactions=False)
    data = tmp_path / "data"
    code = main(["index", "--source", "csv", "--path", str(catalogue), "--data-dir", str(data),
                 "--map", ",".join(f"{k}={v}" for k, v in MAP.items()), "--max-rejected-share", "0.7"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"interactions: none (no interactions.csv or interactions.parquet in {tmp_path / 'shop'})" in err
    assert f"{catalogue} line 3 field price: price is not a number ('free')" in out
    assert out.index("line 3 field") < out.index("line 6 field") < out.index("line 8 field")
    report = next((data / "builds").iterdir()) / "quarantine.csv"
    assert f"quarantine report (every rejected row): {report}" in out
    assert pd.read_csv(report)["line"].tolist() == [3, 6, 8]

    # with --json the path is a field
    (tmp_path / "shop" / "interactions.csv").write_text(INTERACTIONS)
    code = main(["index", "--source", "csv", "--path", str(catalogue), "--data-dir", str(data), "--json",
                 "--map", ",".join(f"{k}={v}" for k, v in MAP.items()), "--max-rejected-share", "0.7"])
    out, err = capsys.readouterr()
    payload = json.loads(out)
    assert code == 0 and payload["interactions"] == 2
    assert f"interactions: {tmp_path / 'shop' / 'interactions.csv'}" in err
    assert Path(payload["quarantine_report"]).exists()
    assert [q["line"] for q in payload["quarantine"]] == [3, 6, 8, 3, 4]
