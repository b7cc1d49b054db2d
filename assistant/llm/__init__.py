"""The LLM backend, as a package with one job a module:

* :mod:`.base` — records, errors and the :class:`ChatModel` seam (no torch);
* :mod:`.gguf` — the packaged SmolLM2 GGUF, converted once into a cached HF folder;
* :mod:`.loading` — loading and placement (accelerate on CUDA, float32 on CPU);
* :mod:`.chat` — the chat model: chat, stream, structured output, time limits;
* :mod:`.ort` — the same chat model on ONNX Runtime GenAI (the faster CPU decoder);
* :mod:`.structured` — llguidance-constrained JSON, the grammar's forced tokens fed in one pass.

Importing this package does not import torch: the heavy names (``LLM``, ``load_llm``,
``get_llm`` ...) are loaded on first access, so code that only needs the seam or the
errors stays light and ``get_llm`` is lazy in fact, not only in name.
"""

from __future__ import annotations

import importlib
from typing import Any

from .base import ChatModel, Generation, LLMError, LLMTimeout, Structured, flatten_content, flatten_messages

_LAZY = {
    "LLM": ".chat",
    "load_llm": ".loading",
    "load_chat_model": ".loading",
    "get_llm": ".loading",
    "packaged_gguf": ".gguf",
    "fingerprint": ".gguf",
    "cache_root": ".gguf",
    "cached_folder": ".gguf",
    "convert_gguf": ".gguf",
    "SMOLLM2_GGUF": ".gguf",
    "CACHE_ENV": ".gguf",
}

__all__ = ["CACHE_ENV", "LLM", "SMOLLM2_GGUF", "ChatModel", "Generation", "LLMError", "LLMTimeout", "Structured",
           "cache_root", "cached_folder", "convert_gguf", "fingerprint", "flatten_content", "flatten_messages",
           "get_llm", "load_chat_model", "load_llm", "packaged_gguf"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
