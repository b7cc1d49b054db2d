"""Pseudonyms, CSV neutralisation and the SQLite feedback store."""

from __future__ import annotations

import csv
import stat
import threading
import time

import pandas as pd
import pytest
from pydantic import ValidationError

from assistant import privacy
from assistant.feedback import FeedbackEvent, FeedbackStore
from assistant.privacy import (
    SECRET_ENV,
    guest_pseudonym,
    is_pseudonym,
    load_secret,
    neutralise_csv_cell,
    neutralise_frame,
    pseudonymise,
)

KEY = b"k" * 32


@pytest.fixture(autouse=True)
def _no_env_secret(monkeypatch):
    monkeypatch.delenv(SECRET_ENV, raising=False)


# -- pseudonyms ----------------------------------------------------------------------


def test_pseudonym_is_stable_keyed_and_hides_the_id():
    a = pseudonymise("household-1234", KEY)
    assert a == pseudonymise("household-1234", KEY)
    assert a != pseudonymise("household-1235", KEY)
    assert a != pseudonymise("household-1234", b"x" * 32)
    assert is_pseudonym(a) and len(a) == 22
    assert "1234" not in a and "household" not in a
    assert guest_pseudonym("sess-1", KEY) != pseudonymise("sess-1", KEY)
    assert guest_pseudonym("sess-1", KEY) == "g-" + pseudonymise("guest-sess-1", KEY)[2:]
    with pytest.raises(ValueError):
        pseudonymise("  ", KEY)


def test_secret_file_is_private_and_survives_a_restart(tmp_path):
    first = pseudonymise("alice", data_dir=tmp_path)
    secret_file = tmp_path / privacy.SECRET_FILE
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    privacy._secret_cache.clear()  # a new process
    assert pseudonymise("alice", data_dir=tmp_path) == first
    other = tmp_path / "other"
    assert pseudonymise("alice", data_dir=other) != first  # a different install, a different key


def test_env_secret_wins_and_must_be_long(tmp_path, monkeypatch):
    monkeypatch.setenv(SECRET_ENV, "s" * 32)
    assert load_secret(tmp_path) == b"s" * 32
    assert pseudonymise("alice", data_dir=tmp_path) == pseudonymise("alice", b"s" * 32)
    assert not (tmp_path / privacy.SECRET_FILE).exists()
    monkeypatch.setenv(SECRET_ENV, "short")
    with pytest.raises(ValueError):
        load_secret(tmp_path)


# -- spreadsheet formula injection ---------------------------------------------------


@pytest.mark.parametrize("cell", ["=1+1", "+1", "-2+3", "@SUM(A1)", "\tx", "\rx",
                                  '=HYPERLINK("http://evil","click")'])
def test_formula_cells_are_neutralised(cell):
    assert neutralise_csv_cell(cell) == "'" + cell


@pytest.mark.parametrize("cell", ["tacos", "a=b", "", 12, -3.5, None])
def test_other_cells_pass_through(cell):
    assert neutralise_csv_cell(cell) == cell


def test_neutralise_frame_touches_only_text():
    df = pd.DataFrame({"reason": ["=cmd|' /C calc'!A0", "fine"], "n": [-1, 2]})
    out = neutralise_frame(df)
    assert out["reason"].tolist() == ["'=cmd|' /C calc'!A0", "fine"]
    assert out["n"].tolist() == [-1, 2]
    assert df["reason"][0].startswith("=")  # the input is not modified


# -- events --------------------------------------------------------------------------


def event(kind="like", session="s1", user="alice", ids=("p1",), **kw) -> FeedbackEvent:
    return FeedbackEvent.for_user(user, secret=KEY, session_id=session, event=kind,
                                  product_ids=list(ids), **kw)


def test_event_refuses_raw_ids_and_identifying_payloads():
    with pytest.raises(ValidationError):
        FeedbackEvent(session_id="s", user_pseudo="alice@example.com", event="like")
    with pytest.raises(ValidationError):
        event(payload={"email": "alice@example.com"})
    with pytest.raises(ValidationError):
        event(kind="hover")
    assert event().user_pseudo == pseudonymise("alice", KEY)
    assert event(reason="too\x00 salty\n").reason == "too salty"


@pytest.fixture
def store(tmp_path):
    with FeedbackStore(tmp_path / "fb" / "events.sqlite") as s:
        yield s


def test_wal_and_full_sync(store):
    assert store.journal_mode() == "wal"
    assert store._conn().execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600


def test_record_and_read_back(store):
    first = store.record(event("shown", ids=["p1", "p2"], bundle_key="b1", payload={"rank": 1}))
    second = store.record(event("reason", reason="no cilantro please"))
    assert second > first
    df = store.events()
    assert df["id"].tolist() == [first, second]
    assert df["event"].tolist() == ["shown", "reason"]
    assert df["product_ids"][0] == ["p1", "p2"] and df["payload"][0] == {"rank": 1}
    assert df["reason"][1] == "no cilantro please"
    assert str(df["ts"].dt.tz) == "UTC"
    assert set(df["user_pseudo"]) == {pseudonymise("alice", KEY)}
    raw = store.path.read_bytes() + store.path.with_name(store.path.name + "-wal").read_bytes()
    assert b"alice" not in raw


def test_events_filters(store):
    store.record(event(user="alice", ts=1000.0))
    store.record(event(user="bob", ts=2000.0))
    bob = pseudonymise("bob", KEY)
    assert store.events(user_pseudo=bob)["user_pseudo"].tolist() == [bob]
    assert len(store.events(since=1500.0)) == 1
    assert len(store.events(since=pd.Timestamp(0, unit="s", tz="UTC").to_pydatetime())) == 2
    assert store.events(user_pseudo=pseudonymise("carol", KEY)).empty


def test_concurrent_writers_lose_nothing(store):
    per_thread, threads = 40, 8
    ids: list[int] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(per_thread):
                row_id = store.record(event("shown", session=f"s{n}", ids=[f"p{n}-{i}"]))
                with lock:
                    ids.append(row_id)
        except BaseException as e:  # surfaced below; a thread cannot fail the test itself
            errors.append(e)

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors
    assert len(set(ids)) == per_thread * threads
    df = store.events()
    assert len(df) == per_thread * threads
    assert df.groupby("session_id").size().tolist() == [per_thread] * threads
    assert time.perf_counter() - start < 30


def test_session_signal(store):
    store.record(event("shown", ids=["a", "b", "c", "d"]))
    store.record(event("like", ids=["a", "b"]))
    store.record(event("dislike", ids=["c"]))
    store.record(event("dislike", ids=["b"]))  # changed their mind
    store.record(event("cart", ids=["d"]))
    store.record(event("purchase", ids=["e"]))
    store.record(event("like", session="other", ids=["z"]))
    liked, carted, disliked = store.session_signal("s1")
    assert liked == ["a"] and carted == ["d", "e"] and disliked == ["c", "b"]
    assert store.session_signal("nobody") == ([], [], [])


def test_forget_removes_rows_from_disk(store):
    marker = "unmistakable-marker-7f3a"
    store.record(event(user="alice", reason=marker))
    store.record(event(user="alice", kind="cart"))
    keep = store.record(event(user="bob"))
    alice = pseudonymise("alice", KEY)
    assert store.forget(alice) == 2
    df = store.events()
    assert df["id"].tolist() == [keep]
    wal = store.path.with_name(store.path.name + "-wal")
    on_disk = store.path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")
    assert marker.encode() not in on_disk
    assert alice.encode() not in on_disk
    assert store.forget(alice) == 0
    with pytest.raises(ValueError):
        store.forget("alice")  # a raw id is refused, not silently matched against nothing


def test_export_parquet_and_csv(store, tmp_path):
    store.record(event("reason", ids=["p1", "p2"], reason="=HYPERLINK(\"http://x\")",
                       payload={"k": [1, 2]}))
    store.record(event("cart", ids=["p3"]))
    pq = store.export(tmp_path / "events.parquet")
    back = pd.read_parquet(pq)
    assert len(back) == 2
    assert list(back["product_ids"][0]) == ["p1", "p2"]
    assert back["event"].tolist() == ["reason", "cart"]
    path = store.export(tmp_path / "events.csv")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["reason"] == "'=HYPERLINK(\"http://x\")"
    assert rows[1]["product_ids"] == '["p3"]'
    with pytest.raises(ValueError):
        store.export(tmp_path / "events.xlsx")


def test_store_reopens_with_its_data(tmp_path):
    path = tmp_path / "events.sqlite"
    with FeedbackStore(path) as s:
        s.record(event())
    with FeedbackStore(path) as s:
        assert len(s.events()) == 1
