"""Shared fixtures: real data slices, one small built index, the packaged embedder.

Building an index is the slow part of the suite (embedding ~1k titles), so the Complete
Journey slice is built once per session and shared; tests that need their own index
(server mode, persistence) seed its embedding cache from the shared one, so they embed
nothing again.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

# Before anything imports huggingface_hub: the model is packaged, nothing may be fetched.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
# A developer's own CHROMA_URL would send every test to their server; tests that want a
# server start one and say so.
os.environ.pop("CHROMA_URL", None)
# Nothing a test does may land in the user's cache dir: default the data dir to a
# throwaway folder (tests that build an index pass their own anyway).
_SCRATCH = tempfile.mkdtemp(prefix="bundle-tests-")
atexit.register(shutil.rmtree, _SCRATCH, True)
os.environ["BUNDLE_DATA_DIR"] = _SCRATCH

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
CJ_SLICE_HOUSEHOLDS = 5  # households 1..5: ~1.1k products, one household with demographics
BUNDLEREC_TRIM_BUNDLES = 30  # bundles kept in the trimmed BundleRec copy (71 items)


def executable(name: str) -> str:
    """A console script of this venv (``bundle-assistant``, ``chroma``), else from PATH."""
    local = VENV_BIN / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"'{name}' is not installed")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a child process: offline, no stray server, repo importable."""
    env = {k: v for k, v in os.environ.items() if k != "CHROMA_URL"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""))
    env.update(extra)
    return env


# --- configuration ------------------------------------------------------------------------

@pytest.fixture
def settings(tmp_path: Path) -> Callable[..., Settings]:  # noqa: F821
    """A factory: ``settings(data_dir=None, **overrides)`` -> :class:`Settings`.

    The data dir defaults to a fresh folder under this test's ``tmp_path``; ``chroma_url``
    defaults to None (the embedded store), whatever the environment says.
    """
    from retrieval.config import Settings

    counter = iter(range(1_000_000))

    def make(data_dir: Path | str | None = None, **overrides) -> Settings:
        if data_dir is None:
            data_dir = tmp_path / f"data{next(counter)}"
        overrides.setdefault("chroma_url", None)
        return Settings(data_dir=Path(data_dir), **overrides)

    return make


# --- data ---------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def bundlerec_dir() -> Path:
    """The shared BundleRec Electronic folder (``<repo>/../shared/data/bundlerec/electronic``)."""
    path = (REPO / ".." / "shared" / "data" / "bundlerec" / "electronic").resolve()
    if not (path / "item_titles.csv").exists():
        pytest.skip(f"BundleRec Electronic data not found at {path}")
    return path


@pytest.fixture(scope="session")
def bundlerec_trimmed(bundlerec_dir: Path, tmp_path_factory) -> Path:
    """A copy of the BundleRec layout holding only the first bundles, their items, and the
    sessions and users that touch only those items: a folder elsewhere on disk, small
    enough to index in seconds."""
    import pandas as pd

    out = tmp_path_factory.mktemp("bundlerec-trimmed")

    def read(name: str) -> pd.DataFrame:
        return pd.read_csv(bundlerec_dir / name, dtype=str, keep_default_na=False)

    bundle_item = read("bundle_item.csv")
    bundles = sorted(bundle_item["bundle ID"].unique(), key=int)[:BUNDLEREC_TRIM_BUNDLES]
    bundle_item = bundle_item[bundle_item["bundle ID"].isin(bundles)]
    items = set(bundle_item["item ID"])
    session_item = read("session_item.csv")
    ok_sessions = session_item.groupby("session ID")["item ID"].agg(lambda s: set(s) <= items)
    sessions = set(ok_sessions[ok_sessions].index)
    tables = {
        "item_titles.csv": read("item_titles.csv").pipe(lambda d: d[d["item ID"].isin(items)]),
        "item_categories.csv": read("item_categories.csv").pipe(lambda d: d[d["item ID"].isin(items)]),
        "bundle_item.csv": bundle_item,
        "bundle_intent.csv": read("bundle_intent.csv").pipe(lambda d: d[d["bundle ID"].isin(bundles)]),
        "session_item.csv": session_item[session_item["session ID"].isin(sessions)],
        "session_bundle.csv": read("session_bundle.csv").pipe(
            lambda d: d[d["session ID"].isin(sessions) & d["bundle ID"].isin(bundles)]),
        "user_item.csv": read("user_item.csv").pipe(lambda d: d[d["item ID"].isin(items)]),
        "user_bundle.csv": read("user_bundle.csv").pipe(lambda d: d[d["bundle ID"].isin(bundles)]),
        "user_session.csv": read("user_session.csv").pipe(lambda d: d[d["session ID"].isin(sessions)]),
    }
    for name, frame in tables.items():
        frame.to_csv(out / name, index=False)
    return out


@pytest.fixture(scope="session")
def cj_slice():
    """The Complete Journey :class:`Dataset` for the lowest ``CJ_SLICE_HOUSEHOLDS``
    household ids. Shared: do not mutate it."""
    from retrieval.sources import load_source

    return load_source("completejourney", limit=CJ_SLICE_HOUSEHOLDS)


# --- models and indexes ---------------------------------------------------------------------

@pytest.fixture(scope="session")
def embedding_cache_dir(tmp_path_factory) -> Path:
    """One embedding cache for the session; copy it into a new data dir with
    :func:`seed_embedding_cache` so another build embeds nothing it has seen."""
    return tmp_path_factory.mktemp("embedding-cache")


@pytest.fixture(scope="session")
def embedder(embedding_cache_dir: Path):
    """The packaged all-MiniLM-L6-v2, loaded once, caching into ``embedding_cache_dir``."""
    from retrieval.embeddings import Embedder

    return Embedder(cache_dir=embedding_cache_dir)


def seed_embedding_cache(embedder, data_dir: Path) -> None:
    """Save the session cache and copy it to ``data_dir/cache`` (where a build that makes
    its own embedder looks), e.g. before building in a subprocess."""
    if embedder.cache is None:
        return
    embedder.cache.save()
    if embedder.cache.path.exists():
        target = Path(data_dir) / "cache"
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(embedder.cache.path, target / embedder.cache.path.name)


def build(ds, settings, embedder, **kwargs):
    """``build_index`` the way the CLI does it (pseudonymised users), quietly."""
    from assistant.privacy import pseudonymise
    from retrieval.index import build_index

    return build_index(
        ds, settings, embedder=embedder, progress=False,
        pseudonymise=lambda u: pseudonymise(u, data_dir=settings.data_dir), **kwargs,
    )


@pytest.fixture(scope="session")
def cj_slice_dir(cj_slice, embedder, tmp_path_factory) -> Path:
    """A data dir holding a built Complete Journey index of ``cj_slice``. Shared and
    read-only: tests that rebuild or change it must copy it or build their own."""
    from retrieval.config import Settings

    data_dir = tmp_path_factory.mktemp("cj-index")
    report = build(cj_slice, Settings(data_dir=data_dir, chroma_url=None), embedder)
    assert not report.skipped
    embedder.cache.save()
    return data_dir


@pytest.fixture(scope="session")
def cj_assistant(cj_slice_dir: Path, embedder):
    """A :class:`BundleAssistant` over ``cj_slice_dir`` sharing the session embedder."""
    from assistant.service import BundleAssistant
    from retrieval.config import Settings

    return BundleAssistant(Settings(data_dir=cj_slice_dir, chroma_url=None), embedder=embedder)


@pytest.fixture(scope="session")
def bundlerec_slice_dir(bundlerec_trimmed: Path, embedder, tmp_path_factory) -> Path:
    """A data dir holding a built index of ``bundlerec_trimmed`` (no prices). Read-only."""
    from retrieval.config import Settings
    from retrieval.sources import load_source

    data_dir = tmp_path_factory.mktemp("bundlerec-index")
    settings = Settings(data_dir=data_dir, chroma_url=None)
    build(load_source("bundlerec", bundlerec_trimmed, settings=settings), settings, embedder)
    embedder.cache.save()
    return data_dir
