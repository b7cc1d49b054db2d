"""The Chroma vector store: embedded ``PersistentClient`` by default, a Chroma server when
``CHROMA_URL`` / ``--chroma-url`` is set.

Collections are cosine HNSW, keyed by ``product_id`` (products) or the pseudonymised user
id (profiles). Each build writes new collections (``products__<build>``) and the index
switches to them atomically, so a killed rebuild never breaks the serving index.
Embeddings are always passed in: Chroma's default embedding function (which would
download a model) never runs.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
from tqdm.auto import tqdm


class StoreUnavailable(RuntimeError):
    """Chroma cannot be reached or opened; the message says what to run."""


# chromadb's HTTP client waits forever by default: a frozen server would hang every request.
SERVER_TIMEOUT_S = 30.0  # a healthy server answers a query in milliseconds, a 5000-row upsert in seconds
SERVER_CONNECT_TIMEOUT_S = 5.0


def _transport_error(exc: BaseException) -> bool:
    """The server is down, frozen or unreachable (as opposed to a bad request)."""
    import httpx

    return isinstance(exc, (httpx.TransportError, ConnectionError, TimeoutError))


def _client(data_dir: Path, url: str | None):
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    chroma_settings = ChromaSettings(anonymized_telemetry=False, allow_reset=False)
    if url:
        parsed = urlparse(url if "://" in url else f"http://{url}")
        try:
            client = chromadb.HttpClient(
                host=parsed.hostname or "127.0.0.1", port=parsed.port or 8000,
                ssl=parsed.scheme == "https", settings=chroma_settings,
            )
            session = getattr(getattr(client, "_server", None), "_session", None)
            if session is not None:
                import httpx

                session.timeout = httpx.Timeout(SERVER_TIMEOUT_S, connect=SERVER_CONNECT_TIMEOUT_S)
            client.heartbeat()
        except Exception as exc:  # the client raises several unrelated types
            raise StoreUnavailable(
                f"cannot reach the Chroma server at {url} ({exc.__class__.__name__}: {exc}). "
                f"Start one with `chroma run --path DIR --host {parsed.hostname} --port {parsed.port or 8000}` "
                "or unset CHROMA_URL to use the embedded store."
            ) from exc
        return client
    path = Path(data_dir) / "chroma"
    try:
        path.mkdir(parents=True, exist_ok=True)
        return chromadb.PersistentClient(path=str(path), settings=chroma_settings)
    except Exception as exc:
        raise StoreUnavailable(
            f"cannot open the Chroma store at {path} ({exc}). "
            "Check the folder is writable, or rebuild it with `bundle-assistant index`."
        ) from exc


# The head of hnswlib's persisted header.bin (chroma-core/hnswlib ``persistHeader``): format
# version, level-0 offset, capacity (max elements), live element count, bytes per element.
_HNSW_HEAD = struct.Struct("<iQQQQ")
_HNSW_VERSION = 1
_ZEROS = bytes(1 << 20)


def unused_capacity(chroma_dir: Path) -> list[tuple[Path, int]]:
    """Each persisted HNSW file under ``chroma_dir`` written at full capacity, with the
    offset where its unused slots (past the header's live element count) begin."""
    found = []
    for header in sorted(Path(chroma_dir).glob("*/header.bin")):
        raw = header.read_bytes()
        if len(raw) < _HNSW_HEAD.size:
            continue
        version, _, capacity, live, per_element = _HNSW_HEAD.unpack_from(raw)
        if version != _HNSW_VERSION or live >= capacity or per_element <= 0:
            continue
        for name, width in (("data_level0.bin", per_element), ("length.bin", 4)):
            path = header.parent / name
            if path.is_file() and path.stat().st_size == capacity * width:
                found.append((path, live * width))
    return found


def scrub_unused_capacity(chroma_dir: Path) -> list[Path]:
    """Zero the unused slots of every persisted HNSW segment under ``chroma_dir``
    (:func:`unused_capacity`); returns the files it changed.

    hnswlib allocates its level-0 and vector-length buffers at full capacity without
    zeroing them, and a segment's first persist writes that whole capacity
    (chroma-core/chroma#7688), so heap bytes of the writing process — raw user ids read
    from the source files among them — can land in the unused slots on disk. Every read is
    bounded by the header's element count, so zeroing the slots past it changes nothing
    Chroma sees. A header or file size this does not recognise is left alone.
    """
    changed = []
    for path, offset in unused_capacity(chroma_dir):
        _zero_from(path, offset)
        changed.append(path)
    return changed


def _zero_from(path: Path, offset: int) -> None:
    with path.open("r+b") as f:
        size = f.seek(0, 2)
        f.seek(offset)
        while f.tell() < size:
            f.write(_ZEROS[: min(len(_ZEROS), size - f.tell())])
        f.flush()
        os.fsync(f.fileno())


def _clean_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    """Chroma metadata takes str/int/float/bool and no None or NaN."""
    out: dict[str, Any] = {}
    for key, value in meta.items():
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        if isinstance(value, (np.bool_,)):
            value = bool(value)
        elif isinstance(value, np.integer):
            value = int(value)
        elif isinstance(value, np.floating):
            value = float(value)
        out[key] = value
    return out


class ChromaStore:
    def __init__(self, data_dir: Path, url: str | None = None):
        self.data_dir = Path(data_dir)
        self.url = url
        self.client = _client(self.data_dir, url)
        # embedded mode only: a handle costs ~1.5 ms to look up, a tenth of a search; a
        # server's handles are not kept, so a restarted server is looked up afresh
        self._handles: dict[str, Any] = {}

    @contextmanager
    def _reaching(self) -> Iterator[None]:
        """Turn a lost server (killed, frozen, unreachable) into :class:`StoreUnavailable`
        that says what to run; the next request after it is back works again."""
        try:
            yield
        except StoreUnavailable:
            raise
        except Exception as exc:
            if not (self.url and _transport_error(exc)):
                raise
            parsed = urlparse(self.url if "://" in self.url else f"http://{self.url}")
            raise StoreUnavailable(
                f"lost the Chroma server at {self.url} ({exc.__class__.__name__}: {exc}); start it again with "
                f"`chroma run --path DIR --host {parsed.hostname} --port {parsed.port or 8000}` and retry"
            ) from exc

    def create(self, name: str):
        """A fresh, empty cosine collection (any leftover of the same name is dropped)."""
        self.drop(name)
        with self._reaching():
            return self.client.create_collection(
                name, embedding_function=None, configuration={"hnsw": {"space": "cosine"}}
            )

    def get(self, name: str):
        if name in self._handles:
            return self._handles[name]
        try:
            with self._reaching():
                collection = self.client.get_collection(name, embedding_function=None)
        except StoreUnavailable:
            raise
        except Exception as exc:
            raise StoreUnavailable(
                f"collection '{name}' is not in the Chroma store ({exc}); run `bundle-assistant index`"
            ) from exc
        if not self.url:
            self._handles[name] = collection
        return collection

    def drop(self, name: str) -> None:
        self._handles.pop(name, None)
        try:
            self.client.delete_collection(name)
        except Exception:
            pass  # absent already

    def collections(self) -> list[str]:
        with self._reaching():
            return [c if isinstance(c, str) else c.name for c in self.client.list_collections()]

    def upsert(
        self,
        name: str,
        ids: Sequence[str],
        embeddings: np.ndarray,
        metadatas: Sequence[dict[str, Any]],
        documents: Sequence[str] | None = None,
        progress: bool = False,
        desc: str = "chroma",
    ) -> None:
        collection = self.get(name)
        with self._reaching():
            batch = max(1, min(self.client.get_max_batch_size(), 5000))
        starts = range(0, len(ids), batch)
        for start in tqdm(starts, desc=desc, unit="batch", disable=not progress):
            end = start + batch
            with self._reaching():
                collection.upsert(
                    ids=list(ids[start:end]),
                    embeddings=np.asarray(embeddings[start:end], dtype=np.float32),
                    metadatas=[_clean_metadata(m) for m in metadatas[start:end]],
                    documents=list(documents[start:end]) if documents is not None else None,
                )

    def query(
        self, name: str, embedding: np.ndarray, k: int, where: dict[str, Any] | None = None
    ) -> list[tuple[str, float, dict[str, Any]]]:
        """(id, cosine similarity, metadata) for the ``k`` nearest, best first; ties by id."""
        collection = self.get(name)
        with self._reaching():
            result = collection.query(
                query_embeddings=[np.asarray(embedding, dtype=np.float32)],
                n_results=max(1, k),
                where=where or None,
                include=["metadatas", "distances"],
            )
        ids = result["ids"][0]
        sims = [1.0 - float(d) for d in result["distances"][0]]
        metas = result["metadatas"][0] if result.get("metadatas") else [{}] * len(ids)
        rows = list(zip(ids, sims, metas))
        rows.sort(key=lambda r: (-round(r[1], 6), r[0]))
        return rows

    def fetch(self, name: str, ids: Iterable[str], with_embeddings: bool = False) -> dict[str, dict]:
        ids = list(ids)
        if not ids:
            return {}
        include = ["metadatas", "embeddings"] if with_embeddings else ["metadatas"]
        collection = self.get(name)
        with self._reaching():
            got = collection.get(ids=ids, include=include)
        out = {}
        for i, pid in enumerate(got["ids"]):
            record = {"metadata": got["metadatas"][i]}
            if with_embeddings:
                record["embedding"] = np.asarray(got["embeddings"][i], dtype=np.float32)
            out[pid] = record
        return out

    def count(self, name: str) -> int:
        collection = self.get(name)
        with self._reaching():
            return collection.count()


def where_clause(
    *,
    min_price: float | None = None,
    max_price: float | None = None,
    departments: Sequence[str] = (),
    brand: str | None = None,
    in_stock: bool | None = None,
    category_contains: str | None = None,
) -> dict[str, Any] | None:
    """A Chroma ``where`` filter over product metadata. Unknown prices are stored as -1,
    so any price bound excludes them."""
    terms: list[dict[str, Any]] = []
    if min_price is not None or max_price is not None:
        terms.append({"price": {"$gte": float(min_price) if min_price is not None else 0.0}})
    if max_price is not None:
        terms.append({"price": {"$lte": float(max_price)}})
    if departments:
        terms.append({"department": {"$in": list(departments)}})
    if brand:
        terms.append({"brand": brand})
    if in_stock is not None:
        terms.append({"in_stock": bool(in_stock)})
    if category_contains:
        terms.append({"category": category_contains})
    if not terms:
        return None
    return terms[0] if len(terms) == 1 else {"$and": terms}
