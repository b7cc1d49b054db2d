"""The feedback loop's event store: what was shown, liked, carted and bought.

SQLite in WAL mode, one file. WAL lets the offline eval read while the chat UI writes.
``synchronous=FULL`` makes each commit fsync the WAL: with NORMAL a power cut can drop
the last commits, and a lost "purchase" or a resurrected "forget" is worse than the cost
of one fsync per human click.

Raw user ids never reach the table: a :class:`FeedbackEvent` only holds a pseudonym
(validated), built with :meth:`FeedbackEvent.for_user` or :meth:`FeedbackEvent.for_guest`.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, NamedTuple

import pandas as pd
from pydantic import BaseModel, Field, field_validator

from assistant.constraints import sanitize_message
from assistant.privacy import guest_pseudonym, is_pseudonym, pseudonymise, write_safe_csv

EventKind = Literal["shown", "like", "dislike", "cart", "reason", "purchase"]
EVENT_KINDS: tuple[str, ...] = ("shown", "like", "dislike", "cart", "reason", "purchase")
COLUMNS = ("id", "ts", "session_id", "user_pseudo", "event", "bundle_key", "product_ids",
           "reason", "payload")
# Payload keys that would smuggle an identifier past the pseudonym.
_IDENTIFYING_KEYS = frozenset({"user_id", "userid", "email", "phone", "name", "address", "ip",
                               "ip_address", "household_key", "raw_user_id"})

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    session_id TEXT NOT NULL,
    user_pseudo TEXT NOT NULL,
    event TEXT NOT NULL CHECK (event IN ({", ".join(repr(e) for e in EVENT_KINDS)})),
    bundle_key TEXT NOT NULL DEFAULT '',
    product_ids TEXT NOT NULL DEFAULT '[]',
    reason TEXT NOT NULL DEFAULT '',
    payload TEXT NOT NULL DEFAULT '{{}}'
);
CREATE INDEX IF NOT EXISTS events_user ON events (user_pseudo);
CREATE INDEX IF NOT EXISTS events_session ON events (session_id);
"""


class FeedbackEvent(BaseModel):
    """One thing a shopper did. ``user_pseudo`` must be a pseudonym, never a raw id."""

    session_id: str = Field(min_length=1, max_length=200)
    user_pseudo: str
    event: EventKind
    bundle_key: str = Field(default="", max_length=500)
    product_ids: list[str] = Field(default_factory=list)
    reason: str = ""
    payload: dict[str, Any] = Field(default_factory=dict)
    ts: float = Field(default_factory=time.time)

    @field_validator("user_pseudo")
    @classmethod
    def _pseudonym_only(cls, v: str) -> str:
        if not is_pseudonym(v):
            raise ValueError(
                "user_pseudo must be a pseudonym from FeedbackEvent.for_user/for_guest "
                "(assistant.privacy), not a raw id"
            )
        return v

    @field_validator("reason")
    @classmethod
    def _clean_reason(cls, v: str) -> str:
        return sanitize_message(v, max_len=1000)

    @field_validator("payload")
    @classmethod
    def _no_identifiers(cls, v: dict[str, Any]) -> dict[str, Any]:
        bad = sorted(k for k in v if str(k).lower() in _IDENTIFYING_KEYS)
        if bad:
            raise ValueError(f"payload must not carry identifiers: {bad}")
        json.dumps(v)  # fail here, not at insert time
        return v

    @classmethod
    def for_user(
        cls,
        raw_user_id: str,
        *,
        secret: bytes | None = None,
        data_dir: Path | str | None = None,
        **fields: Any,
    ) -> FeedbackEvent:
        """The event of a signed-in user: the raw id is hashed here and then dropped."""
        return cls(user_pseudo=pseudonymise(raw_user_id, secret, data_dir), **fields)

    @classmethod
    def for_guest(
        cls,
        session_id: str,
        *,
        secret: bytes | None = None,
        data_dir: Path | str | None = None,
        **fields: Any,
    ) -> FeedbackEvent:
        return cls(
            user_pseudo=guest_pseudonym(session_id, secret, data_dir),
            session_id=session_id,
            **fields,
        )


class SessionSignal(NamedTuple):
    liked: list[str]
    carted: list[str]
    disliked: list[str]


class FeedbackStore:
    """Thread-safe: each thread gets its own connection (SQLite connections must not be
    shared across threads); writes take SQLite's write lock up front with
    ``BEGIN IMMEDIATE`` and wait for it through ``busy_timeout``, which also serialises
    writers in other processes."""

    def __init__(self, path: Path | str, busy_timeout_ms: int = 10_000):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        # thread -> its connection; a dead thread's is closed when the next one opens
        self._all: dict[threading.Thread, sqlite3.Connection] = {}
        self._all_lock = threading.Lock()
        fresh = not self.path.exists()
        conn = self._conn()
        conn.executescript(_SCHEMA)
        if fresh:
            os.chmod(self.path, 0o600)

    # -- connections ---------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA secure_delete=ON")  # deleted rows are zeroed, not just freed
            self._local.conn = conn
            with self._all_lock:
                self._close_dead_threads()
                self._all[threading.current_thread()] = conn
        return conn

    def _close_dead_threads(self) -> None:
        # Threads come and go (a worker per chat turn, the web server's pool): without
        # this every one that ever wrote would keep a connection and its open files.
        for thread in [t for t in self._all if not t.is_alive()]:
            self._all.pop(thread).close()

    def close(self) -> None:
        with self._all_lock:
            for conn in self._all.values():
                conn.close()
            self._all.clear()
        self._local = threading.local()

    def __enter__(self) -> FeedbackStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def journal_mode(self) -> str:
        return self._conn().execute("PRAGMA journal_mode").fetchone()[0]

    # -- writing -------------------------------------------------------------------

    def record(self, event: FeedbackEvent) -> int:
        """Insert one event; it is committed (and fsynced) when this returns its id."""
        if not isinstance(event, FeedbackEvent):
            raise TypeError("record() takes a FeedbackEvent (see FeedbackEvent.for_user)")
        row = (
            event.ts,
            event.session_id,
            event.user_pseudo,
            event.event,
            event.bundle_key,
            json.dumps([str(p) for p in event.product_ids]),
            event.reason,
            json.dumps(event.payload, sort_keys=True, default=str),
        )
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            cur = conn.execute(
                "INSERT INTO events (ts, session_id, user_pseudo, event, bundle_key, "
                "product_ids, reason, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return int(cur.lastrowid or 0)

    def forget(self, user_pseudo: str) -> int:
        """Delete every event of one user, then rewrite the file (VACUUM) and empty the
        WAL, so the rows are gone from the disk and not merely marked free. Returns the
        number of events deleted."""
        if not is_pseudonym(user_pseudo):
            raise ValueError("forget() takes a pseudonym; use privacy.pseudonymise(raw_id)")
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            deleted = conn.execute(
                "DELETE FROM events WHERE user_pseudo = ?", (user_pseudo,)
            ).rowcount
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return int(deleted)

    # -- reading -------------------------------------------------------------------

    def events(
        self, user_pseudo: str | None = None, since: datetime | float | None = None
    ) -> pd.DataFrame:
        """Events in insertion order; ``ts`` as UTC datetimes, JSON columns decoded."""
        where: list[str] = []
        params: list[str | float] = []
        if user_pseudo is not None:
            where.append("user_pseudo = ?")
            params.append(user_pseudo)
        if since is not None:
            where.append("ts >= ?")
            params.append(since.timestamp() if isinstance(since, datetime) else float(since))
        sql = f"SELECT {', '.join(COLUMNS)} FROM events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self._conn().execute(sql + " ORDER BY id", params).fetchall()
        df = pd.DataFrame(rows, columns=list(COLUMNS))
        df["ts"] = pd.to_datetime(df["ts"].astype(float), unit="s", utc=True)
        df["product_ids"] = df["product_ids"].map(json.loads)
        df["payload"] = df["payload"].map(json.loads)
        return df

    def session_signal(self, session_id: str) -> SessionSignal:
        """Products liked, carted (or bought) and disliked in one session. A later like
        cancels an earlier dislike of the same product and vice versa; carting counts as
        liking it enough to drop an earlier dislike."""
        rows = self._conn().execute(
            "SELECT event, product_ids FROM events WHERE session_id = ? ORDER BY id",
            (session_id,),
        ).fetchall()
        liked: dict[str, None] = {}
        carted: dict[str, None] = {}
        disliked: dict[str, None] = {}
        for event, ids_json in rows:
            for pid in json.loads(ids_json):
                if event == "like":
                    liked[pid] = None
                    disliked.pop(pid, None)
                elif event == "dislike":
                    disliked[pid] = None
                    liked.pop(pid, None)
                elif event in ("cart", "purchase"):
                    carted[pid] = None
                    disliked.pop(pid, None)
        return SessionSignal(list(liked), list(carted), list(disliked))

    def export(self, path: Path | str) -> Path:
        """Write all events to ``.parquet`` or ``.csv``. CSV text cells are neutralised
        against spreadsheet formula injection (a reason could be "=HYPERLINK(...)")."""
        path = Path(path)
        df = self.events()
        df["ts"] = df["ts"].map(lambda t: t.isoformat())
        df["payload"] = df["payload"].map(lambda p: json.dumps(p, sort_keys=True))
        suffix = path.suffix.lower()
        if suffix == ".parquet":
            df.to_parquet(path, index=False)
        elif suffix == ".csv":
            df["product_ids"] = df["product_ids"].map(json.dumps)
            write_safe_csv(df, path)
        else:
            raise ValueError(f"export to .parquet or .csv, not {path.suffix!r}")
        return path
