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
from .gguf import convert_gguf, packaged_gguf, save_atomically
from .ort import OrtProcessLLM


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


BACKENDS = ("torch", "onnxruntime-genai")


def _model_source(model: str | None, cache_dir: Path | str | None) -> tuple[str, str, bool]:
    """(what ``from_pretrained`` reads, the model's display name, whether this call ran
    the GGUF conversion) for ``model`` as :func:`load_llm` takes it."""
    if model is None or model.endswith(".gguf"):
        gguf = packaged_gguf() if model is None else Path(model).expanduser()
        if not gguf.is_file():
            raise LLMError(f"no GGUF file at {gguf}")
        folder, converted = convert_gguf(gguf, cache_dir)
        return str(folder), gguf.name.split(".")[0] if model is None else gguf.stem, converted
    path = Path(model).expanduser()
    if _looks_like_path(model) and not path.exists():
        raise LLMError(f"no model at local path {path}")
    return (str(path), path.name, False) if path.exists() else (model, model, False)


def load_chat_model(
    model: str | None = None,
    cache_dir: Path | str | None = None,
    device: str | None = None,
    adapter: str | Path | None = None,
    backend: str = "torch",
) -> LLM | OrtProcessLLM:
    """:func:`load_llm` on the ``backend`` asked for: ``torch`` (an :class:`LLM`) or
    ``onnxruntime-genai`` (an :class:`~.ort.OrtProcessLLM`, CPU only). Both are the same
    :class:`~.base.ChatModel`."""
    if backend not in BACKENDS:
        raise LLMError(f"unknown LLM backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    resolved = _resolve_device(device)
    if backend == "onnxruntime-genai":
        return _load_ort(model, cache_dir, resolved, adapter)
    return load_llm(model, cache_dir, resolved, adapter)


def load_llm(
    model: str | None = None,
    cache_dir: Path | str | None = None,
    device: str | None = None,
    adapter: str | Path | None = None,
) -> LLM:
    """Load a causal LM with torch.

    ``model``: None for the packaged SmolLM2 GGUF; a local folder; a local ``.gguf`` file
    (converted and cached like the default); or a hub id already in the local cache.
    ``cache_dir`` holds GGUF conversions (default ``$BUNDLE_MODEL_CACHE`` or the user
    cache). ``device``: None picks CUDA when available, else CPU. ``adapter``: a LoRA
    adapter folder (or the name of a shipped one, see :mod:`.adapter`) merged into the
    weights after loading; None loads the base model as it is.
    """
    start = time.perf_counter()
    device = _resolve_device(device)
    source, name, converted = _model_source(model, cache_dir)
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


def _load_ort(model: str | None, cache_dir: Path | str | None, device: str,
              adapter: str | Path | None) -> OrtProcessLLM:
    """The ONNX Runtime model of the same weights the torch path would load: the local HF
    folder, with the adapter merged in and saved once beside it when one is asked for."""
    from .ort import load_ort_llm

    if device != "cpu":
        raise LLMError(f"the onnxruntime-genai backend runs on the CPU only, not {device!r}")
    gguf = model is None or model.endswith(".gguf")
    if not gguf and not (Path(str(model)).expanduser() / "config.json").is_file():
        raise LLMError(f"the onnxruntime-genai backend needs a local model folder, not {model!r}")
    source, name, _ = _model_source(model, cache_dir)
    folder = Path(source)
    if adapter is not None:
        folder, adapter_name = merged_folder(folder, adapter)
        name = f"{name}+{adapter_name}"
    return load_ort_llm(folder, name)


def merged_folder(base: Path, adapter: str | Path) -> tuple[Path, str]:
    """A plain HF folder of ``base`` with the adapter merged in, saved once (keyed by the
    adapter's training-examples fingerprint) and renamed into place when complete."""
    from .adapter import apply_adapter, read_card, resolve_adapter

    path = resolve_adapter(adapter)
    card = read_card(path)
    adapter_name = str(card.get("name", path.name))
    key = str(card.get("data", {}).get("examples_fingerprint", ""))[:10] or "untracked"
    folder = base.parent / f"{base.name}+{path.name}-{key}"
    if (folder / "config.json").is_file():
        return folder, adapter_name
    hf_model, tokenizer = _load_pretrained(str(base), "cpu")
    hf_model, _ = apply_adapter(hf_model, path)

    def write(tmp: Path) -> None:
        hf_model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    save_atomically(folder, write)
    return folder, adapter_name


_shared: dict[tuple[str | None, str | None, str | None, str | None, str], LLM | OrtProcessLLM] = {}
_shared_lock = threading.Lock()


def get_llm(
    model: str | None = None,
    cache_dir: Path | str | None = None,
    device: str | None = None,
    adapter: str | Path | None = None,
    backend: str = "torch",
) -> LLM | OrtProcessLLM:
    """:func:`load_chat_model`, memoised per process so every web session shares one model.

    A failed load is not remembered, so a later call retries. The base and the base with
    an adapter are separate entries (each its own copy of the weights).
    """
    key = (model, None if cache_dir is None else str(cache_dir), device,
           None if adapter is None else str(adapter), backend)
    with _shared_lock:
        if key not in _shared:
            _shared[key] = load_chat_model(model, cache_dir, device, adapter, backend)
        return _shared[key]
