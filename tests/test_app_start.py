"""``python app.py`` when it cannot listen: a port in use (given by --port or by Gradio's
own GRADIO_SERVER_PORT) or a bad GRADIO_SERVER_NAME ends at once in one line and exit 2,
before the index or any model loads. Also: the start-up estimate is one measured figure."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, subprocess_env

import app
from retrieval.buildtime import CJ_BUILD_ESTIMATE, CJ_BUILD_IDLE_S

QUICK_S = 60  # the refusal comes before any model loads: imports only


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def run_app(*argv: str, **env: str) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    done = subprocess.run([sys.executable, str(REPO / "app.py"), "--no-llm", *argv], capture_output=True,
                          text=True, env=subprocess_env(**env), timeout=QUICK_S * 3)
    return done, time.monotonic() - start


def assert_one_line(done: subprocess.CompletedProcess, *needles: str) -> str:
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr  # no traceback, no start-up chatter before it
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_port_in_use_exits_2_with_one_line(busy_port, tmp_path):
    done, took = run_app("--port", str(busy_port), "--data-dir", str(tmp_path / "never-built"))
    line = assert_one_line(done, f"port {busy_port}", "already in use", f"--port {busy_port + 1}")
    assert line.startswith("app.py: error:")
    assert took < QUICK_S
    assert not (tmp_path / "never-built").exists()  # refused before building anything


def test_gradio_server_port_and_name_are_honoured(busy_port, tmp_path):
    done, _ = run_app("--data-dir", str(tmp_path), GRADIO_SERVER_PORT=str(busy_port))
    assert_one_line(done, f"port {busy_port}", "already in use", "GRADIO_SERVER_PORT")
    # BUNDLE_PORT wins over Gradio's variable, and --port over both
    done, _ = run_app("--data-dir", str(tmp_path), BUNDLE_PORT=str(busy_port), GRADIO_SERVER_PORT="1")
    assert_one_line(done, f"port {busy_port}")
    done, _ = run_app("--data-dir", str(tmp_path), "--port", str(busy_port), GRADIO_SERVER_PORT="1")
    assert_one_line(done, f"port {busy_port}")
    done, _ = run_app("--data-dir", str(tmp_path), GRADIO_SERVER_NAME="203.0.113.7")  # not this machine's
    assert_one_line(done, "cannot listen on 203.0.113.7")
    done, _ = run_app("--data-dir", str(tmp_path), GRADIO_SERVER_PORT="abc")  # Gradio itself would crash
    assert_one_line(done, "GRADIO_SERVER_PORT='abc' is not a port number")


def test_listen_problem_sees_a_free_port_as_free(busy_port):
    assert app.listen_problem("127.0.0.1", busy_port) is not None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    assert app.listen_problem("127.0.0.1", free) is None


def test_one_start_up_estimate_everywhere():
    """The CLI's help, the app's first-start message and its help, and the README give the
    same measured figure."""
    from assistant.cli import build_parser

    assert CJ_BUILD_ESTIMATE in " ".join(build_parser().format_help().split())
    assert CJ_BUILD_ESTIMATE in app.first_start_message(Path("/data"))
    readme = (REPO / "README.md").read_text()
    assert CJ_BUILD_ESTIMATE in " ".join(readme.split()) and f"{CJ_BUILD_IDLE_S} s" in readme
    assert not re.search(r"~10 min|about 3 minutes on 2 cores", readme)
    assert "about 3 minutes on 2 CPU cores" not in Path(app.__file__).read_text()


def test_first_start_builds_with_one_bar_and_an_eta(cj_slice_dir, embedder, tmp_path):
    """``ensure_index`` on an empty data dir (a real slice, as ``--limit`` builds it):
    the message, then one overall bar with an ETA that ends at 100%."""
    import io

    from conftest import CJ_SLICE_HOUSEHOLDS, seed_embedding_cache

    from retrieval.config import Settings

    settings = Settings(data_dir=tmp_path / "data", chroma_url=None)
    seed_embedding_cache(embedder, settings.data_dir)  # the slice's titles are embedded already
    out = io.StringIO()
    assert app.ensure_index(settings, limit=CJ_SLICE_HOUSEHOLDS, out=out) is True
    text = out.getvalue()
    assert text.splitlines()[0] == app.first_start_message(settings.data_dir, CJ_SLICE_HOUSEHOLDS)
    bar = [part for part in re.split(r"[\r\n]", text) if part.startswith("building the index")]
    assert len(bar) >= 5 and all("ETA" in part for part in bar)
    assert "(done): 100%" in bar[-1]
    assert "  [embed]" in text and "index ready." in text
    assert app.ensure_index(settings, out=out) is False  # built once


def test_the_app_loads_the_shipped_adapter_unless_told_otherwise():
    assert app.app_adapter(None, None) == app.APP_ADAPTER
    assert app.app_adapter("none", None) is None and app.app_adapter("None", None) is None
    assert app.app_adapter("/my/adapter", None) == "/my/adapter"
    assert app.app_adapter(None, "some/other-model") is None  # trained for the packaged SmolLM2 only
    from assistant.llm.adapter import read_card, resolve_adapter

    assert resolve_adapter(app.APP_ADAPTER).is_dir() and read_card(app.APP_ADAPTER)  # it ships, with its card
