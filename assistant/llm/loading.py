"""Loading a causal LM and placing it: accelerate on CUDA (bfloat16), float32 on CPU.

Any causal LM works: the packaged SmolLM2 GGUF (the default), a local folder, a local
``.gguf`` file or a hub id already in the local Hugging Face cache.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import torch

from .base import LLMError
from .chat import LLM
from .gguf import convert_gguf, packaged_gguf


def _resolve_device(device: str | None) -> str:
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LLMError(f"device {device!r} asked for, but torch sees no CUDA GPU")
    return device


def _placement(device: str) -> dict[str, Any]:
    if device.startswith("cuda"):
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        # "cuda" lets accelerate spread layers over every visible GPU (and CPU if needed);
        # "cuda:1" pins the whole model to that card.
        device_map: Any = "auto" if device == "cuda" else {"": device}
        return {"dtype": dtype, "device_map": device_map}
    # Half precision on CPU is slow or unsupported for many ops.
    return {"dtype": torch.float32, "device_map": {"": device}}


def _offline() -> bool:
    import huggingface_hub

    return bool(huggingface_hub.is_offline_mode())


def _looks_like_path(model: str) -> bool:
    return model.startswith(("/", "./", "../", "~")) or model.endswith(".gguf") or "\\" in model


def _load_pretrained(source: str, device: str) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, **_placement(device))
    except (OSError, ValueError) as e:
        if not Path(source).exists() and _offline():
            raise LLMError(
                f"model {source!r} is neither a local folder nor in the local Hugging Face "
                "cache, and HF_HUB_OFFLINE=1 forbids downloading it. Pass a local folder, "
                "or download it first on a machine with network access."
            ) from e
        raise LLMError(f"could not load model {source!r}: {e}") from e
    except Exception as e:  # e.g. CUDA out of memory, unknown architecture
        raise LLMError(f"could not load model {source!r} on {device}: {e}") from e
    model.eval()
    return model, tokenizer


def load_llm(
    model: str | None = None,
    cache_dir: Path | str | None = None,
    device: str | None = None,
    adapter: str | Path | None = None,
) -> LLM:
    """Load a causal LM.

    ``model``: None for the packaged SmolLM2 GGUF; a local folder; a local ``.gguf`` file
    (converted and cached like the default); or a hub id already in the local cache.
    ``cache_dir`` holds GGUF conversions (default ``$BUNDLE_MODEL_CACHE`` or the user
    cache). ``device``: None picks CUDA when available, else CPU. ``adapter``: a LoRA
    adapter folder (or the name of a shipped one, see :mod:`.adapter`) merged into the
    weights after loading; None loads the base model as it is.
    """
    start = time.perf_counter()
    device = _resolve_device(device)
    converted = False
    if model is None or model.endswith(".gguf"):
        gguf = packaged_gguf() if model is None else Path(model).expanduser()
        if not gguf.is_file():
            raise LLMError(f"no GGUF file at {gguf}")
        folder, converted = convert_gguf(gguf, cache_dir)
        name = gguf.name.split(".")[0] if model is None else gguf.stem
        source = str(folder)
    else:
        path = Path(model).expanduser()
        if _looks_like_path(model) and not path.exists():
            raise LLMError(f"no model at local path {path}")
        name = path.name if path.exists() else model
        source = str(path) if path.exists() else model
    hf_model, tokenizer = _load_pretrained(source, device)
    if adapter is not None:
        from .adapter import apply_adapter

        hf_model, card = apply_adapter(hf_model, adapter)
        name = f"{name}+{card.get('name', Path(adapter).name)}"
    return LLM(
        name=name,
        model=hf_model,
        tokenizer=tokenizer,
        load_seconds=time.perf_counter() - start,
        source=source,
        converted=converted,
    )


_shared: dict[tuple[str | None, str | None, str | None, str | None], LLM] = {}
_shared_lock = threading.Lock()


def get_llm(
    model: str | None = None,
    cache_dir: Path | str | None = None,
    device: str | None = None,
    adapter: str | Path | None = None,
) -> LLM:
    """:func:`load_llm`, memoised per process so every web session shares one model.

    A failed load is not remembered, so a later call retries. The base and the base with
    an adapter are separate entries (each its own copy of the weights).
    """
    key = (model, None if cache_dir is None else str(cache_dir), device,
           None if adapter is None else str(adapter))
    with _shared_lock:
        if key not in _shared:
            _shared[key] = load_llm(model, cache_dir, device, adapter)
        return _shared[key]
