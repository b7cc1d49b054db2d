"""A rebuild never destroys a working index: an empty or mostly rejected build fails with
exit code 2 before anything switches, the old index keeps answering, and the app still
starts on it. Real Complete Journey products, with their prices broken on purpose."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, build, executable, free_port, seed_embedding_cache, subprocess_env

from retrieval.config import Settings
from retrieval.index import Index, read_current
from retrieval.validation import PartialBuild, build_problem

APP_START_S = 240  # a cold app start on a busy 2-core machine: imports, embedder, warm-up


@pytest.fixture
def working_dir(cj_slice, embedder, tmp_path) -> Path:
    """A data dir with a built, serving index of the Complete Journey slice."""
    data = tmp_path / "data"
    build(cj_slice, Settings(data_dir=data, chroma_url=None), embedder)
    seed_embedding_cache(embedder, data)
    return data


def real_catalogue(cj_slice, path: Path, price) -> Path:
    """The slice's real products as a user's CSV, with ``price(i)`` as the i-th price."""
    products = cj_slice.products.head(400)
    frame = pd.DataFrame({"product_id": products["product_id"], "title": products["title"],
                          "department": products["department"],
                          "price": [price(i) for i in range(len(products))]})
    frame.to_csv(path, index=False)
    return path


def cli(*argv, check_rc: int | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run([executable("bundle-assistant"), *map(str, argv)], capture_output=True, text=True,
                          env=subprocess_env(), timeout=600)
    if check_rc is not None:
        assert done.returncode == check_rc, done.stderr[-2000:]
    return done


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error:" in line]


def test_build_problem_rules():
    assert build_problem(0, 0, 844_445).startswith("no products loaded")
    assert build_problem(0, 0, 0) is not None  # an empty file is no index either
    assert build_problem(0, 0, 10, allow_partial=True) is not None  # never serve nothing
    assert build_problem(100, 0, 100) is None  # exactly half is still allowed
    assert "51%" in build_problem(100, 0, 104)
    assert build_problem(100, 0, 104, allow_partial=True) is None
    assert build_problem(100, 0, 104, max_share=0.6) is None
    assert build_problem(10, 1000, 900) is None  # shares count every row read, interactions too


def test_all_invalid_rebuild_exits_2_and_the_old_index_keeps_serving(cj_slice, working_dir, tmp_path):
    before = read_current(working_dir)
    builds_before = sorted(p.name for p in (working_dir / "builds").iterdir())
    bad = real_catalogue(cj_slice, tmp_path / "products.csv", price=lambda i: "n/a")

    done = cli("index", "--source", "csv", "--path", bad, "--data-dir", working_dir)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    [line] = error_lines(done.stderr)
    assert "no products loaded (rejected 400 rows)" in line
    assert f"build {before['build_id']} still serves" in line
    report = working_dir / "rejected_build" / "quarantine.csv"
    assert str(report) in line and report.exists()
    rejected = pd.read_csv(report)
    assert len(rejected) == 400 and set(rejected["reason"]) == {"price is not a number"}
    assert rejected["line"].tolist() == list(range(2, 402))  # file lines: the header is line 1
    # nothing switched, nothing was written over the serving build
    assert read_current(working_dir) == before
    assert sorted(p.name for p in (working_dir / "builds").iterdir()) == builds_before

    # `recommend` still answers from the old index
    done = cli("recommend", "--query", "pasta night", "--no-llm", "--data-dir", working_dir, "--json", check_rc=0)
    bundles = json.loads(done.stdout)["bundles"]
    catalogue = Index(Settings(data_dir=working_dir, chroma_url=None)).catalogue
    assert bundles and all(i["product_id"] in catalogue.index for b in bundles for i in b["items"])

    # and the app still starts on it
    assert_app_starts(working_dir)


def test_mostly_rejected_build_needs_force_partial(cj_slice, working_dir, tmp_path, embedder):
    before = read_current(working_dir)
    # 3 of every 5 real products lose their price: 60% rejected, over the 50% default
    path = real_catalogue(cj_slice, tmp_path / "shop.csv", price=lambda i: "" if i % 5 < 3 else f"{1 + i % 7}.49")
    done = cli("index", "--source", "csv", "--path", path, "--data-dir", working_dir)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    [line] = error_lines(done.stderr)
    assert "rejected 240 of 400 rows (60%), more than the allowed 50%" in line and "--force-partial" in line
    assert read_current(working_dir) == before

    # a higher share, or --force-partial, accepts it on purpose
    done = cli("index", "--source", "csv", "--path", path, "--data-dir", working_dir, "--force-partial",
               "--json", check_rc=0)
    report = json.loads(done.stdout)
    assert report["products"] == 160 and report["rejected"] == 240
    assert Path(report["quarantine_report"]).exists()
    assert read_current(working_dir)["build_id"] != before["build_id"]

    # the same guard holds for code that calls build_index directly
    with pytest.raises(PartialBuild) as err:
        from retrieval.sources import load_source

        settings = Settings(data_dir=working_dir, chroma_url=None)
        build(load_source("csv", path, settings=settings), settings, embedder, force=True,
              max_rejected_share=0.1)
    assert err.value.report == working_dir / "rejected_build" / "quarantine.csv"


def test_app_with_a_damaged_index_says_what_to_do(working_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(working_dir, broken)
    pointer = read_current(broken)
    (broken / pointer["folder"] / "catalogue.parquet").unlink()
    done = subprocess.run([sys.executable, str(REPO / "app.py"), "--no-llm", "--data-dir", str(broken),
                           "--port", str(free_port())], capture_output=True, text=True, env=subprocess_env(),
                          timeout=APP_START_S)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    [line] = error_lines(done.stderr)
    assert "is damaged" in line and f"bundle-assistant index --force --data-dir {broken}" in line

    # `recommend` says the same, in one line
    done = cli("recommend", "--query", "pasta", "--no-llm", "--data-dir", broken)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "is damaged" in error_lines(done.stderr)[0]


def assert_app_starts(data_dir: Path) -> None:
    """``python app.py`` on ``data_dir`` serves its page; then it is stopped."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--no-llm", "--data-dir", str(data_dir),
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=subprocess_env())
    try:
        deadline = time.monotonic() + APP_START_S
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"app.py exited with {proc.returncode}: {proc.stdout.read()[-2000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as page:
                    assert page.status == 200 and b"Bundle assistant" in page.read()
                    return
            except OSError:
                time.sleep(1)
        pytest.fail(f"app.py did not serve within {APP_START_S} s")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
