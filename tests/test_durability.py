"""Durability (issue 6, part 4): the feedback store survives ``kill -9`` during a burst of
writes. Real writer processes print each event id after ``record()`` returns; the test
SIGKILLs them mid-burst, reopens the database, and finds every printed event, intact, in a
database that passes ``PRAGMA integrity_check``."""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from conftest import subprocess_env

from assistant.feedback import FeedbackStore
from assistant.privacy import pseudonymise

WRITER = textwrap.dedent(
    """
    import sys
    from assistant.feedback import FeedbackEvent, FeedbackStore

    data_dir, worker = sys.argv[1], sys.argv[2]
    store = FeedbackStore(data_dir + "/feedback.sqlite")
    n = 0
    while True:
        event = FeedbackEvent.for_user(
            f"durable-{worker}-{n % 5}", data_dir=data_dir, session_id=f"session-{worker}",
            event=("like", "cart", "purchase", "dislike")[n % 4], product_ids=[f"P{n}", f"Q{n}"],
            reason=f"burst {worker} {n}", payload={"worker": worker, "n": n},
        )
        event_id = store.record(event)
        print(event_id, worker, n, flush=True)  # only after the commit returned
        n += 1
    """
)
ROUNDS = 3
WRITERS = 2


def _read_lines(proc: subprocess.Popen, sink: list[tuple[int, str, int]]) -> None:
    for line in proc.stdout:
        parts = line.split()
        if len(parts) == 3:
            sink.append((int(parts[0]), parts[1], int(parts[2])))


def burst(data_dir: Path, round_no: int, kill_after: int) -> list[tuple[int, str, int]]:
    """Start the writers, let them commit about ``kill_after`` events each, SIGKILL them."""
    procs, printed, readers = [], [], []
    for w in range(WRITERS):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(data_dir), f"r{round_no}w{w}"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env())
        sink: list[tuple[int, str, int]] = []
        reader = threading.Thread(target=_read_lines, args=(proc, sink), daemon=True)
        reader.start()
        procs.append(proc)
        printed.append(sink)
        readers.append(reader)
    deadline = time.monotonic() + 120
    try:
        while min(len(s) for s in printed) < kill_after:
            dead = [p for p in procs if p.poll() is not None]
            assert not dead, dead[0].stderr.read()[-2000:]
            assert time.monotonic() < deadline, f"writers too slow: {[len(s) for s in printed]}"
            time.sleep(0.005)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGKILL)  # mid-burst: they are writing as fast as they can
        for proc in procs:
            proc.wait(timeout=30)
    for reader in readers:
        reader.join(timeout=30)
    assert all(p.returncode == -signal.SIGKILL for p in procs)
    return [row for sink in printed for row in sink]


def test_feedback_survives_kill_9_mid_burst(tmp_path):
    data_dir = tmp_path / "data"
    rng = random.Random(6)
    written: list[tuple[int, str, int]] = []
    for round_no in range(ROUNDS):
        written += burst(data_dir, round_no, kill_after=rng.randint(40, 120))

        # "restart": a fresh connection, as the app would open after a crash
        db = data_dir / "feedback.sqlite"
        with sqlite3.connect(db) as raw:
            assert raw.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        store = FeedbackStore(db)
        events = store.events()
        store.close()
        by_id = {int(i): p for i, p in zip(events["id"], events["payload"])}
        missing = [row for row in written if row[0] not in by_id]
        assert not missing, f"round {round_no}: {len(missing)} acknowledged events lost, e.g. {missing[:3]}"
        for event_id, worker, n in written:
            assert by_id[event_id] == {"worker": worker, "n": n}  # the right content, not just a row

    # nothing half-written either: ids unique, every row complete and attributable
    assert events["id"].is_unique and len(events) >= len(written)
    assert set(events["user_pseudo"]) <= {pseudonymise(f"durable-r{r}w{w}-{k}", data_dir=data_dir)
                                          for r in range(ROUNDS) for w in range(WRITERS) for k in range(5)}
    assert (events["product_ids"].map(len) == 2).all()
    print(f"\nevents written (acknowledged): {len(written)}, recovered: "
          f"{sum(1 for row in written if row[0] in by_id)}, rows after {ROUNDS} kill -9 rounds: {len(events)}")
    print("durability figures:", json.dumps({"written": len(written), "recovered": len(events),
                                             "kills": ROUNDS * WRITERS}))
