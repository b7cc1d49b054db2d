"""``bundle-assistant index|profile|search``: JSON output that parses, the load summary,
and bad input that ends in exit 2 with one error line, never a traceback."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import CJ_SLICE_HOUSEHOLDS, executable, seed_embedding_cache, subprocess_env

from assistant.cli import EXIT_BAD_INPUT, main
from assistant.privacy import is_pseudonym
from retrieval.candidates import REASONS

CSV_PRODUCTS = (
    "sku,name,unit_price,aisle,category\n"
    "A1,Spaghetti 500g,1.50,GROCERY,GROCERY > PASTA > DRY PASTA\n"
    "A2,Tomato pasta sauce,2.25,GROCERY,GROCERY > SAUCES > TOMATO\n"
    "A3,Parmesan cheese,-5.00,DELI,DELI > CHEESE > HARD CHEESE\n"
    "A4,Garlic bread,2.00,PASTRY,PASTRY > BREAD > GARLIC BREAD\n"
)
CSV_INTERACTIONS = (
    "user_id,sku,timestamp,basket_id\n"
    "shopper-1,A1,2024-03-01,b1\n"
    "shopper-1,A2,2024-03-01,b1\n"
    "shopper-1,A9,2024-03-01,b1\n"
    "shopper-2,A4,someday,b2\n"
    "shopper-2,A1,2024-03-05,b3\n"
)
CSV_MAP = "product_id=sku,title=name,price=unit_price,department=aisle"


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """``main`` in-process, the way the console script calls it."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == EXIT_BAD_INPUT
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    for needle in needles:
        assert needle in errors[0], errors[0]


def test_search_json(capsys, cj_slice_dir):
    code, out, _ = run_cli(capsys, "search", "taco night for four", "--data-dir", cj_slice_dir, "--json", "--k", 6)
    assert code == 0
    hits = json.loads(out)
    assert len(hits) == 6
    assert all(set(h) >= {"product_id", "title", "price", "reason", "score"} for h in hits)
    assert hits[0]["reason"] == "semantic"


def test_search_filters_from_the_command_line(capsys, cj_slice_dir):
    code, out, _ = run_cli(capsys, "search", "something sweet", "--user", "1", "--max-price", "2",
                           "--department", "GROCERY", "--exclude", "candy", "--data-dir", cj_slice_dir, "--json")
    assert code == 0
    hits = json.loads(out)
    assert len(hits) == 10
    assert all(h["price"] <= 2 and h["department"] == "GROCERY" and "candy" not in h["title"].lower() for h in hits)
    reasons = {h["reason"] for h in hits}
    assert "semantic" in reasons and reasons & {"repeat", "profile"}  # the request, and this household
    code, text, _ = run_cli(capsys, "search", "something sweet", "--data-dir", cj_slice_dir)
    assert code == 0 and len(text.strip().splitlines()) == 10 and "semantic" in text


def test_profile_json(capsys, cj_slice_dir):
    code, out, _ = run_cli(capsys, "profile", "1", "--data-dir", cj_slice_dir, "--json")
    assert code == 0
    profile = json.loads(out)
    assert is_pseudonym(profile["user_key"])
    assert profile["summary"] and profile["top_departments"]
    assert "preference" not in profile  # 384 floats are not for people
    code, text, _ = run_cli(capsys, "profile", "1", "--data-dir", cj_slice_dir)
    assert code == 0 and text.strip() == profile["summary"]


@pytest.mark.parametrize(
    "argv, needles",
    [
        (["profile", "no-such-user"], ["unknown user 'no-such-user'"]),
        (["search", "pasta", "--user", "no-such-user"], ["unknown user"]),
        (["search", "pasta", "--k", "0"], ["--k", "must be > 0"]),
        (["search", "pasta", "--max-price", "-3"], ["--max-price"]),
        (["search", "pasta", "--k", "many"], ["--k", "not a whole number"]),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, cj_slice_dir, argv, needles):
    code, out, err = run_cli(capsys, *argv, "--data-dir", cj_slice_dir)
    assert out == ""
    assert_one_line_error(code, err, *needles)


@pytest.mark.parametrize("command", [["search", "pasta"], ["profile", "1"]])
def test_missing_index_dir(capsys, tmp_path, command):
    missing = tmp_path / "never-built"
    code, _, err = run_cli(capsys, *command, "--data-dir", missing)
    assert_one_line_error(code, err, "no index in", str(missing), "bundle-assistant index")


def test_index_csv_prints_what_was_loaded_and_rejected(capsys, tmp_path):
    shop = tmp_path / "shop"
    shop.mkdir()
    (shop / "products.csv").write_text(CSV_PRODUCTS)
    (shop / "interactions.csv").write_text(CSV_INTERACTIONS)
    data = tmp_path / "data"
    code, out, err = run_cli(capsys, "index", "--source", "csv", "--path", shop, "--map", CSV_MAP,
                             "--data-dir", data, "--json")
    assert code == 0
    report = json.loads(out)
    assert report["skipped"] is False
    assert (report["products"], report["interactions"], report["rejected"]) == (3, 3, 3)
    reasons = {(Path(q["file"]).name, q["row"], q["field"], q["reason"]) for q in report["quarantine"]}
    assert reasons == {
        ("products.csv", 3, "price", "price must be > 0"),
        ("interactions.csv", 3, "product_id", "unknown product"),
        ("interactions.csv", 4, "timestamp", "unparsable timestamp"),
    }
    assert "loaded 3 products, 3 interactions, 2 users; rejected 3 rows" in err
    # unchanged: the human-readable summary says so, and lists the quarantine
    code, out, _ = run_cli(capsys, "index", "--source", "csv", "--path", shop, "--map", CSV_MAP, "--data-dir", data)
    assert code == 0
    assert "index unchanged" in out and "rejected rows 3" in out
    assert "interactions.csv line 4 field product_id: unknown product ('A9')" in out  # file lines: header = line 1
    # and the index serves
    code, out, _ = run_cli(capsys, "search", "pasta", "--data-dir", data, "--json", "--k", 2)
    assert code == 0 and {h["product_id"] for h in json.loads(out)} <= {"A1", "A2", "A4"}


def test_index_bad_source_files_exit_2(capsys, tmp_path):
    shop = tmp_path / "shop"
    shop.mkdir()
    (shop / "products.csv").write_text("sku,unit_price\nA1,1.0\n")
    code, _, err = run_cli(capsys, "index", "--source", "csv", "--path", shop, "--map", CSV_MAP,
                           "--data-dir", tmp_path / "data")
    assert_one_line_error(code, err, str(shop / "products.csv"), "missing required column 'title'")
    code, _, err = run_cli(capsys, "index", "--source", "csv", "--data-dir", tmp_path / "data")
    assert_one_line_error(code, err, "--path")


def test_reindex_of_the_slice_is_unchanged(capsys, cj_slice_dir, embedder, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(cj_slice_dir, copy)
    seed_embedding_cache(embedder, copy)  # were it to rebuild, it would not re-embed
    code, out, _ = run_cli(capsys, "index", "--limit", CJ_SLICE_HOUSEHOLDS, "--data-dir", copy, "--json")
    assert code == 0
    report = json.loads(out)
    assert report["skipped"] is True and report["products"] > 0


# --- the console script, in real processes -------------------------------------------------

def test_console_script_search_json(cj_slice_dir):
    proc = subprocess.run(
        [executable("bundle-assistant"), "search", "pasta dinner", "--user", "1", "--data-dir", str(cj_slice_dir),
         "--json", "--k", "5"],
        capture_output=True, text=True, env=subprocess_env(), timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    hits = json.loads(proc.stdout)
    assert len(hits) == 5 and all(h["reason"] in REASONS for h in hits)


def test_console_script_bad_input(cj_slice_dir):
    proc = subprocess.run(
        [executable("bundle-assistant"), "profile", "nobody", "--data-dir", str(cj_slice_dir), "--json"],
        capture_output=True, text=True, env=subprocess_env(), timeout=300,
    )
    assert proc.stdout == ""
    assert_one_line_error(proc.returncode, proc.stderr, "unknown user 'nobody'")
