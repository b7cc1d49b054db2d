"""Privacy of a whole shopper session through the web app (issue 6, part 6).

Complete Journey household 1 (the slice's household with demographics: 65+, 35-49K,
Married, Homeowner) shops through ``gradio_client`` against the app on 127.0.0.1: several
chat turns, the "Cheaper" chip, a "more like" follow-up, add to cart, like and dislike with
reasons; household 2 and a guest shop alongside. Every log record of every logger at DEBUG
goes to a file. Then the logs, the feedback database's bytes (main file and WAL), the index
folder and every prompt the language model was given are searched for the raw household
id and for demographic strings.

A household id is a small integer ("1") that also appears in prices, ranks and counts, so
it is searched where it would be a user key (``user_id=1``, ``"user": "1"``, ``household 1``)
and, in the database, column by column: every user column must hold pseudonyms only.

The language model is a recorder that keeps each prompt (the prompt path is the real one:
the app's conversation, the service's chain, the proposer's template); a real model's
answer is beside the point here and would cost seconds per turn.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from conftest import executable, free_port, subprocess_env
from gradio_client import Client

import app
from assistant.feedback import FeedbackStore
from assistant.llm import Structured
from assistant.privacy import SECRET_FILE, is_pseudonym
from assistant.service import BundleAssistant
from retrieval.config import Settings
from retrieval.sources import _cj_table

HOUSEHOLD, OTHER = "1", "2"
CREDS = ("merch", "correct-horse-battery")
BUNDLES = 1  # the bundles JSON among /chat's outputs
SENSITIVE = ("age", "income", "home_ownership", "marital_status")
USER_COLUMN = re.compile(r"user|household|customer|member|shopper", re.I)
_SEP = r"[\"'\s:=#(,]{0,4}"


# "Household: 2 Adults No Kids" is a household's make-up, not household 2
_NOT_AN_ID = r"(?![\d.]|\s+(?:adults?|kids?|children|people|persons?|members?)\b)"


def id_as_user_key(raw: str) -> str:
    """A regex for ``raw`` written as somebody's id: after a user-ish word and a few
    separators, and not followed by another digit or by what makes up a household."""
    words = r"(?:user|household|customer|persona|member|shopper)(?:[_ -]?(?:id|key))?s?"
    return rf"(?i)\b{words}\b{_SEP}{re.escape(raw)}{_NOT_AN_ID}"


@pytest.fixture(scope="module")
def sensitive_values(cj_slice) -> list[str]:
    """Every age, income, marital-status and home-ownership value in Complete Journey
    (all households, not only household 1), after checking household 1 has some."""
    users = cj_slice.users.set_index("user_id")
    assert HOUSEHOLD in users.index and all(str(users.at[HOUSEHOLD, f]) not in ("", "nan") for f in SENSITIVE)
    demo = _cj_table("demographics")
    return sorted({str(v) for f in SENSITIVE for v in demo[f].dropna().unique()}, key=len, reverse=True)


@pytest.fixture(scope="module")
def demographics_re(sensitive_values) -> re.Pattern:
    # bounded so that "45-54" inside a hex id or "Married" inside a longer word is no hit
    return re.compile(r"(?<![\w-])(?:" + "|".join(map(re.escape, sensitive_values)) + r")(?![\w-])")


class PromptRecorder:
    """A language model that keeps every prompt: its intro is one fixed sentence and its
    bundle answers do not parse, so the app falls back to rule bundles."""

    name, device, busy = "recorder", "cpu", False

    def __init__(self):
        self.prompts: list[list[dict[str, str]]] = []

    def stream(self, messages, max_new_tokens: int = 0, timeout_s: float = 0.0, **_) -> Iterator[str]:
        self.prompts.append([dict(m) for m in messages])
        yield from ("Here are ", "some tasty ", "bundles for you.")

    def generate_structured(self, messages, output_type, **_):
        self.prompts.append([dict(m) for m in messages])
        return Structured(raw="", parsed=None, parse_error="empty", new_tokens=0, seconds=0.0, timed_out=False)


def _attach(handler: logging.Handler) -> list[logging.Logger]:
    """The handler on the root and on every logger that does not pass records up."""
    loggers = [logging.getLogger()]
    for name in list(logging.root.manager.loggerDict):
        logger = logging.getLogger(name)
        if not logger.propagate:
            loggers.append(logger)
    for logger in loggers:
        if handler not in logger.handlers:
            logger.addHandler(handler)
    return loggers


@pytest.fixture(scope="module")
def session(cj_slice_dir, embedder, tmp_path_factory):
    """The app with a recording model, and the shopping sessions already played."""
    data = tmp_path_factory.mktemp("privacy-ui")
    if (cj_slice_dir / SECRET_FILE).exists():  # the CLI's `forget` needs the index's key
        shutil.copy2(cj_slice_dir / SECRET_FILE, data / SECRET_FILE)
    log_path = data / "app.log"
    handler = logging.FileHandler(log_path, encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.setLevel(logging.DEBUG)
    attached = _attach(handler)

    recorder = PromptRecorder()
    settings = Settings(data_dir=cj_slice_dir, chroma_url=None)
    settings.llm.intro = "always"  # the intro's prompt is checked too (on a CPU it is skipped by default)
    assistant = BundleAssistant(settings, llm=recorder, embedder=embedder)
    store = FeedbackStore(data / "feedback.sqlite")
    personas = app.discover_personas(assistant, n=5)
    demo = app.build_app(assistant, use_llm=True, personas=personas, feedback=store, merch_credentials=CREDS)
    url = app.launch(demo, port=free_port(), prevent_thread_lock=True, quiet=True)
    attached += _attach(handler)  # uvicorn's and gradio's loggers exist now
    try:
        shopper = Client(url, verbose=False)
        shopper.predict(HOUSEHOLD, api_name="/set_persona")
        replies = [shopper.predict("pasta night for two under $20, no dairy", HOUSEHOLD, api_name="/chat")[BUNDLES]]
        assert replies[0]["bundles"], replies[0]
        shopper.predict(HOUSEHOLD, api_name="/add_to_cart_1")
        shopper.predict("perfect for weeknights", HOUSEHOLD, api_name="/like_1")
        shopper.predict("too salty for us", HOUSEHOLD, api_name="/dislike_2")
        replies.append(shopper.predict(HOUSEHOLD, api_name="/cheaper")[BUNDLES])
        if not replies[-1]["bundles"]:  # nothing fits under the cheaper cap: it asked; take the cap back
            replies.append(shopper.predict(HOUSEHOLD, api_name="/remove_chip_1")[BUNDLES])
        assert replies[-1]["bundles"], replies[-1]
        replies.append(shopper.predict("more like bundle 1", HOUSEHOLD, api_name="/chat")[BUNDLES])
        _, cart = shopper.predict(HOUSEHOLD, api_name="/add_to_cart_1")
        assert cart["count"] == 2

        other = Client(url, verbose=False)
        other.predict("breakfast for the kids", OTHER, api_name="/chat")
        other.predict("", OTHER, api_name="/like_1")
        guest = Client(url, verbose=False)
        guest.predict("movie night snacks", app.GUEST_KEY, api_name="/chat")
        guest.predict(app.GUEST_KEY, api_name="/add_to_cart_1")

        for h in handler, *[h for lg in attached for h in lg.handlers]:
            h.flush()
        yield SimpleNamespace(url=url, data=data, log=log_path, store=store, recorder=recorder,
                              assistant=assistant, replies=replies)
    finally:
        demo.close()
        store.close()
        for logger in set(attached):
            logger.removeHandler(handler)
        handler.close()
        root.setLevel(old_level)


def test_the_session_ran_through_the_real_paths(session):
    """What the other tests search was really written: logs, events, prompts."""
    log = session.log.read_text(encoding="utf-8")
    assert log.count("\n") > 20 and "DEBUG assistant.conversation" in log  # the app's own records too
    events = session.store.events(session.assistant.user_key(HOUSEHOLD))
    kinds = set(events["event"])
    assert {"shown", "cart", "like", "dislike", "reason"} <= kinds
    assert {"perfect for weeknights", "too salty for us"} <= set(events["reason"])
    summary = session.assistant.profile(HOUSEHOLD).summary
    assert all(r["profile_summary"] == summary for r in session.replies)
    assert any(summary in m["content"] for p in session.recorder.prompts for m in p)


def test_logs_hold_no_raw_household_id_and_no_demographics(session, demographics_re):
    log = session.log.read_text(encoding="utf-8")
    for raw in (HOUSEHOLD, OTHER):
        hit = re.search(id_as_user_key(raw), log)
        assert hit is None, f"raw household id in the logs: {log[max(0, hit.start() - 80):hit.end() + 80]!r}"
    hit = demographics_re.search(log)
    assert hit is None, f"demographics in the logs: {log[max(0, hit.start() - 80):hit.end() + 80]!r}"


def _json_leaves(value) -> Iterator[tuple[str, object]]:
    """(key, value) for every leaf of decoded JSON; list items under their list's key."""
    stack = [("", value)]
    while stack:
        key, v = stack.pop()
        if isinstance(v, dict):
            stack += [(str(k), x) for k, x in v.items()]
        elif isinstance(v, list):
            stack += [(key, x) for x in v]
        else:
            yield key, v


def test_feedback_database_holds_pseudonyms_only(session, demographics_re):
    path = session.store.path
    files = [p for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()]
    assert Path(f"{path}-wal") in files  # the live WAL is searched too, not only the main file
    for file in files:
        data = file.read_bytes()
        for raw in (HOUSEHOLD, OTHER):
            assert not re.search(id_as_user_key(raw).encode(), data), f"raw id as a user key in {file.name}"
        assert not re.search(demographics_re.pattern.encode(), data), f"demographics in {file.name}"

    # column by column: user columns hold pseudonyms; no cell or JSON leaf is a raw id
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' "
                                             "AND name NOT LIKE 'sqlite_%'")]
        assert "events" in tables
        raws = {HOUSEHOLD, OTHER}
        for table in tables:
            frame = pd.read_sql_query(f'SELECT * FROM "{table}"', conn)
            for column in frame.columns:
                values = frame[column].dropna()
                if USER_COLUMN.search(column):
                    assert values.map(is_pseudonym).all(), f"{table}.{column} holds a non-pseudonym"
                for value in values[values.map(lambda v: isinstance(v, str))]:
                    assert value not in raws, f"{table}.{column} holds a raw id"
                    assert not demographics_re.search(value), f"{table}.{column}: {value[:80]!r}"
                    if value.startswith(("[", "{")):
                        for key, leaf in _json_leaves(json.loads(value)):
                            assert not (USER_COLUMN.search(key) and not is_pseudonym(str(leaf))), (table, column, key)
                            assert not (isinstance(leaf, str) and leaf in raws), (table, column, key)
        stored = {r[0] for r in conn.execute("SELECT DISTINCT user_pseudo FROM events")}
    finally:
        conn.close()
    assert {session.assistant.user_key(HOUSEHOLD), session.assistant.user_key(OTHER)} <= stored


def _sqlite_text(file: Path) -> str:
    """Every text cell of every table: the same rows as the bytes, without the float
    blobs (Chroma keeps embeddings in its database) that a short string can match by chance."""
    conn = sqlite3.connect(f"file:{file}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return "\n".join(v for t in tables for row in conn.execute(f'SELECT * FROM "{t}"')
                         for v in row if isinstance(v, str))
    finally:
        conn.close()


def _index_texts(folder: Path) -> Iterator[tuple[str, str | bytes]]:
    """(where, content) for every file of the index folder: parquet, numpy and SQLite
    files decoded (their bytes may be compressed or hold floats), SQLite's raw bytes as
    well (deleted rows linger there), everything else as raw bytes. HNSW segment files
    (``*.bin``: float vectors and graph links, nothing else) are left out."""
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        where = str(file.relative_to(folder))
        if file.suffix == ".bin" and file.parent.parent.name == "chroma":
            continue
        if file.suffix == ".parquet":
            frame = pd.read_parquet(file)
            yield where + " (columns)", " ".join(map(str, frame.columns))
            for column in frame.columns:
                if USER_COLUMN.search(str(column)):
                    assert frame[column].dropna().astype(str).map(is_pseudonym).all(), f"{where}:{column}"
                if frame[column].dtype == object or pd.api.types.is_string_dtype(frame[column]):
                    yield f"{where}:{column}", "\n".join(frame[column].dropna().astype(str))
        elif file.suffix in (".npy", ".npz"):
            loaded = np.load(file, allow_pickle=False)
            arrays = dict(loaded) if isinstance(loaded, np.lib.npyio.NpzFile) else {"": loaded}
            for name, arr in arrays.items():
                yield f"{where}:{name} (key)", name
                if arr.dtype.kind in "US":
                    yield f"{where}:{name}", "\n".join(map(str, arr.ravel()))
        else:
            if file.read_bytes()[:16] == b"SQLite format 3\x00":
                yield where + " (rows)", _sqlite_text(file)
            yield where, file.read_bytes()


def test_index_folder_holds_no_raw_household_id_and_no_demographics(session, sensitive_values, demographics_re):
    folder = Path(session.assistant.settings.data_dir)
    seen = list(_index_texts(folder))
    assert any(w.endswith("chroma.sqlite3 (rows)") for w, _ in seen) and any(w.startswith("builds") for w, _ in seen)
    # In raw bytes only the values of 5 characters or more: "65+" turns up in binary by chance.
    long_values = [v for v in sensitive_values if len(v) >= 5]
    in_bytes = re.compile(r"(?<![\w-])(?:" + "|".join(map(re.escape, long_values)) + r")(?![\w-])")
    for where, content in seen:
        as_bytes = isinstance(content, bytes)
        demo = re.compile(in_bytes.pattern.encode()) if as_bytes else demographics_re
        hit = demo.search(content)
        assert hit is None, f"demographics in {where}: {content[max(0, hit.start() - 60):hit.end() + 60]!r}"
        for raw in (HOUSEHOLD, OTHER):
            pattern = id_as_user_key(raw)
            hit = re.search(pattern.encode() if as_bytes else pattern, content)
            assert hit is None, f"raw id in {where}: {content[max(0, hit.start() - 60):hit.end() + 60]!r}"


def test_prompts_for_the_household_hold_no_id_and_no_demographics(session, sensitive_values):
    prompts = ["\n".join(m["content"] for m in p) for p in session.recorder.prompts]
    # the intro (per turn) and the bundle proposals (per turn) of all three shoppers
    assert len(prompts) >= 6
    keys = [session.assistant.user_key(str(h)) for h in range(1, 6)]
    words = re.compile(r"\b(?:age|aged|income|salary|married|unmarried|single|homeowner|renter|"
                       r"home ?owner|household[ _-]?(?:id|key)|user[ _-]?id)\b", re.I)
    for prompt in prompts:
        assert not [k for k in keys if k in prompt], "a pseudonym reached the model"
        assert not [v for v in sensitive_values if v in prompt], "a demographic value reached the model"
        assert not words.search(prompt), words.search(prompt).group(0)
        for raw in (HOUSEHOLD, OTHER):
            assert not re.search(id_as_user_key(raw), prompt), "a raw household id reached the model"


def test_merchandiser_endpoints_refuse_an_unauthenticated_client(session):
    c = Client(session.url, verbose=False)
    named = set(c.view_api(print_info=False, return_format="dict")["named_endpoints"])
    merch = {n for n in named if n.startswith("/merch")}
    assert merch == {"/merch_login", "/merch_logout", "/merch_generate", "/merch_search"}
    # theme, 4 weights, min margin, bundle price cap, item price range, departments, pins, excludes, k, max items
    args = ("back-to-school lunch", 0.4, 0.25, 0.2, 0.15, 0.0, 0, 0, 0, [], "", "", 5, 0)
    with pytest.raises(Exception, match="Sign in"):
        c.predict(*args, api_name="/merch_generate")
    with pytest.raises(Exception, match="Sign in"):
        c.predict("pasta", api_name="/merch_search")
    assert c.predict("merch", "guess", api_name="/merch_login") == ("Wrong user name or password.", "")
    with pytest.raises(Exception, match="Sign in"):
        c.predict("pasta", api_name="/merch_search")
    # the same call goes through once signed in: the refusal was the sign-in, nothing else
    status, password_box = c.predict(*CREDS, api_name="/merch_login")
    assert "Signed in" in status and password_box == ""  # the password does not stay in its field
    assert c.predict("pasta", api_name="/merch_search")["data"]


def test_forget_cli_leaves_no_event_of_that_household(session, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    if (session.data / SECRET_FILE).exists():
        shutil.copy2(session.data / SECRET_FILE, data / SECRET_FILE)
    # a consistent copy of the live database (main file and WAL together)
    src = sqlite3.connect(f"file:{session.store.path}?mode=ro", uri=True)
    dst = sqlite3.connect(data / "feedback.sqlite")
    src.backup(dst)
    src.close()
    dst.close()
    key, other_key = session.assistant.user_key(HOUSEHOLD), session.assistant.user_key(OTHER)
    before = FeedbackStore(data / "feedback.sqlite")
    counts = before.events()["user_pseudo"].value_counts()
    before.close()
    assert counts.get(key, 0) >= 6 and counts.get(other_key, 0) >= 1

    proc = subprocess.run([executable("bundle-assistant"), "forget", HOUSEHOLD, "--data-dir", str(data), "--json"],
                          capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout) == {"user": key, "deleted_events": int(counts[key])}

    after = FeedbackStore(data / "feedback.sqlite")
    left = after.events()["user_pseudo"].value_counts()
    after.close()
    assert key not in left.index
    assert left.to_dict() == {k: v for k, v in counts.items() if k != key}  # everyone else keeps theirs
    for file in data.glob("feedback.sqlite*"):
        assert key.encode() not in file.read_bytes(), f"the pseudonym is still in {file.name}"
