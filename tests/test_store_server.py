"""The Chroma store: persistence across a process restart, idempotent re-indexing, and
server mode against a real ``chroma run`` that must answer exactly like the embedded store."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import CJ_SLICE_HOUSEHOLDS, build, executable, free_port, seed_embedding_cache, subprocess_env

from assistant.service import BundleAssistant
from retrieval.config import ProfileConfig, Settings
from retrieval.index import Index, read_current
from retrieval.schema import Constraints
from retrieval.store import ChromaStore, StoreUnavailable

# (query, user, constraints): plain, personalised, filtered
CASES = [
    ("taco night for four", None, {}),
    ("pasta dinner", "1", {}),
    ("fresh fruit", "2", {"max_unit_price": 2.5}),
    ("snacks for a party", "1", {"departments": ["GROCERY"], "exclude": ["chips"]}),
    ("", None, {}),
]

# Runs in a fresh interpreter. "build": build, then answer CASES. "restart": answer CASES
# from what is on disk, then re-index the unchanged source. Prints JSON on stdout.
CHILD = textwrap.dedent(
    """
    import json, sys
    from assistant.privacy import pseudonymise
    from assistant.service import BundleAssistant
    from retrieval.config import Settings
    from retrieval.index import build_index
    from retrieval.schema import Constraints
    from retrieval.sources import load_source

    data_dir, mode, limit, cases = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
    settings = Settings(data_dir=data_dir, chroma_url=None)

    def reindex():
        ds = load_source("completejourney", settings=settings, limit=limit)
        report = build_index(ds, settings, progress=False,
                             pseudonymise=lambda u: pseudonymise(u, data_dir=settings.data_dir))
        return {"build_id": report.build_id, "skipped": report.skipped}

    out = {}
    if mode == "build":
        out["build"] = reindex()
    assistant = BundleAssistant(settings)
    out["results"] = [assistant.search(q, u, Constraints(**c), 15) for q, u, c in cases]
    out["profile"] = assistant.profile("1").model_dump()
    if mode == "restart":
        out["build"] = reindex()
    print(json.dumps(out))
    """
)


def run_child(data_dir: Path, mode: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(data_dir), mode, str(CJ_SLICE_HOUSEHOLDS), json.dumps(CASES)],
        capture_output=True, text=True, env=subprocess_env(), timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def answers(assistant: BundleAssistant) -> list[list[dict]]:
    return [assistant.search(q, u, Constraints(**c), 15) for q, u, c in CASES]


def test_persistence_across_a_process_restart(cj_slice_dir, cj_assistant, embedder, tmp_path):
    data_dir = tmp_path / "index"
    seed_embedding_cache(embedder, data_dir)  # the child embeds nothing it has seen
    built = run_child(data_dir, "build")
    assert built["build"]["skipped"] is False
    restarted = run_child(data_dir, "restart")
    assert restarted["results"] == built["results"]
    assert restarted["profile"] == built["profile"]
    assert all(len(r) >= 10 for r in built["results"])
    # re-indexing the unchanged source in the new process is a no-op
    assert restarted["build"] == {"build_id": built["build"]["build_id"], "skipped": True}
    # and an independent build of the same data (this session's index) answers the same
    assert answers(cj_assistant) == built["results"]


def test_reindex_is_idempotent_and_a_change_rebuilds(cj_slice, embedder, settings, tmp_path):
    s = settings(tmp_path / "index")
    first = build(cj_slice, s, embedder)
    assert not first.skipped and first.seconds
    assert build(cj_slice, s, embedder).skipped
    pointer = read_current(s.data_dir)
    assert pointer["build_id"] == first.build_id

    # anything that shapes the index (here the profile half-life) makes a new build...
    changed = s.model_copy(update={"profile": ProfileConfig(half_life_days=7)})
    second = build(cj_slice, changed, embedder)
    assert not second.skipped and second.build_id != first.build_id
    # ...which replaces the old one: one build folder, one pair of collections
    assert [p.name for p in (s.data_dir / "builds").iterdir()] == [second.build_id]
    names = ChromaStore(s.data_dir).collections()
    assert sorted(names) == sorted([read_current(s.data_dir)["products_collection"],
                                    read_current(s.data_dir)["profiles_collection"]])
    assert Index(changed).store.count(read_current(s.data_dir)["products_collection"]) == len(cj_slice.products)
    # --force rebuilds even when nothing changed
    assert not build(cj_slice, changed, embedder, force=True).skipped


def test_embedding_cache_makes_rebuilds_incremental(cj_slice, cj_slice_dir, embedder, tmp_path):
    # cj_slice_dir: the session build has filled the embedder's cache
    from retrieval.embeddings import EmbeddingCache, text_key
    from retrieval.schema import product_text

    seed_embedding_cache(embedder, tmp_path)
    cache = EmbeddingCache(tmp_path / "cache")
    texts = [product_text(r) for r in cj_slice.products[["title", "department"]].to_dict("records")]
    assert len(cache.lookup([text_key(t) for t in texts])) == len(set(texts))


def test_serving_cache_is_bounded_and_never_written(cj_slice_dir, tmp_path):
    """Shoppers' messages are embedded through a memory-only LRU: it keeps the most recent
    texts, drops the oldest past its size, and has no file to write them to."""
    from retrieval.embeddings import EmbeddingCache, text_key

    cache = EmbeddingCache(None, max_entries=3)
    vec = np.ones(4, dtype=np.float32)
    for text in ["a", "b", "c"]:
        cache.add({text_key(text): vec})
    assert cache.lookup([text_key("a")])  # "a" is now the most recent
    cache.add({text_key("d"): vec})
    assert len(cache) == 3
    assert not cache.lookup([text_key("b")]) and cache.lookup([text_key("a"), text_key("c"), text_key("d")])
    cache.save()  # nothing to write to
    assert cache.path is None

    serving = BundleAssistant(Settings(data_dir=cj_slice_dir, chroma_url=None, query_embedding_cache=64))
    embedder = serving.embedder
    assert embedder.cache is not None and embedder.cache.path is None and embedder.cache.max_entries == 64
    cache_files = sorted((cj_slice_dir / "cache").glob("*")) if (cj_slice_dir / "cache").exists() else []
    stamps = [f.stat().st_mtime_ns for f in cache_files]
    message = f"a private message {tmp_path.name}"
    first = serving.search(message, k=3)
    assert embedder.cache.lookup([text_key(message)])
    assert serving.search(message, k=3) == first
    after = sorted((cj_slice_dir / "cache").glob("*")) if (cj_slice_dir / "cache").exists() else []
    assert after == cache_files and [f.stat().st_mtime_ns for f in after] == stamps


# --- server mode ---------------------------------------------------------------------------

def _wait_for_heartbeat(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"chroma run exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/api/v2/heartbeat", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"chroma run did not answer within {timeout}s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def chroma_server(tmp_path_factory, request) -> str:
    """A real ``chroma run`` on a free local port; killed when the module is done."""
    folder = tmp_path_factory.mktemp("chroma-server")
    port = free_port()
    log = folder / "chroma.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [executable("chroma"), "run", "--path", str(folder / "db"), "--host", "127.0.0.1", "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env=subprocess_env(ANONYMIZED_TELEMETRY="False"),
        )

    def stop() -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)

    request.addfinalizer(stop)
    url = f"http://127.0.0.1:{port}"
    _wait_for_heartbeat(url, proc, log)
    return url


@pytest.mark.server
def test_server_mode_answers_like_the_embedded_store(chroma_server, cj_slice, cj_assistant, embedder, settings, tmp_path):
    s = settings(tmp_path / "index", chroma_url=chroma_server)
    report = build(cj_slice, s, embedder)
    assert not report.skipped
    # nothing went to a local store: the collections live on the server
    assert not (s.data_dir / "chroma").exists()
    import chromadb

    port = int(chroma_server.rsplit(":", 1)[1])
    remote = {c if isinstance(c, str) else c.name for c in chromadb.HttpClient(host="127.0.0.1", port=port).list_collections()}
    pointer = read_current(s.data_dir)
    assert {pointer["products_collection"], pointer["profiles_collection"]} <= remote

    served = BundleAssistant(s, embedder=embedder)
    assert served.index.store.url == chroma_server
    assert served.index.store.count(pointer["products_collection"]) == len(cj_slice.products)
    assert answers(served) == answers(cj_assistant)
    # profiles read back from the server match the embedded ones
    for user in ("1", "2"):
        a, b = served.profile(user), cj_assistant.profile(user)
        assert a.model_dump(exclude={"user_key"}) == b.model_dump(exclude={"user_key"})
        assert a.preference_vector() == pytest.approx(b.preference_vector(), abs=1e-5)
    # an unchanged re-index against the server is a no-op too
    assert build(cj_slice, s, embedder).skipped


@pytest.mark.server
def test_unreachable_server_is_a_clear_error(settings, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(StoreUnavailable, match="chroma run"):
        ChromaStore(tmp_path, dead)
