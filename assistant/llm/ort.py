"""The chat model on ONNX Runtime GenAI: the same :class:`~.base.ChatModel` seam as the
torch one, decoded by onnxruntime-genai with JSON schemas enforced by its llguidance.

Why: on two CPU cores it decodes SmolLM2 ~1.7x faster than torch float32 with every
proposal still valid before repair (``bench/bench_decode.py``; decode.json). The
model is exported once, at float32, from the plain HF folder the torch path loads (the
GGUF conversion, with a LoRA adapter merged in when one is asked for) by
``onnxruntime_genai.models.builder``, offline, into a cache folder beside it. Prompts
are built and answers decoded by the same HF tokenizer as the torch model's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from .base import Generation, LLMError, LLMTimeout, M, Structured, deadline_after, flatten_messages

PRECISION = "fp32"  # int4 decodes faster still but lost validity (0.83 before repair, decode.json)


def available() -> bool:
    """Whether onnxruntime-genai can be imported here."""
    import importlib.util

    return importlib.util.find_spec("onnxruntime_genai") is not None


def guidance_schema(output_type: type[BaseModel]) -> dict:
    """The pydantic schema as llguidance should enforce it, matching what outlines lets
    the torch model write: compact JSON (no free whitespace) and no extra keys."""
    schema = output_type.model_json_schema()

    def close(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object":
                node.setdefault("additionalProperties", False)
            for v in node.values():
                close(v)
        elif isinstance(node, list):
            for v in node:
                close(v)

    close(schema)
    schema["x-guidance"] = {"whitespace_flexible": False, "item_separator": ",", "key_separator": ":"}
    return schema


def export_onnx(hf_folder: Path, precision: str = PRECISION) -> tuple[Path, float]:
    """The ONNX export of ``hf_folder`` (``<folder>-onnx-<precision>``), built once; the
    folder and the seconds this call spent exporting (0 when it was cached). The export
    is written to a temporary sibling and renamed into place, so a killed export never
    leaves a half-written model behind."""
    out = hf_folder.parent / f"{hf_folder.name}-onnx-{precision}"
    if (out / "genai_config.json").is_file():
        return out, 0.0
    start = time.perf_counter()
    tmp = out.parent / f".{out.name}.tmp-{time.time_ns()}"
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_folder), "-o", str(tmp),
           "-p", precision, "-e", "cpu", "-c", str(out.parent / f".{out.name}-cache")]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or not (tmp / "genai_config.json").is_file():
        raise LLMError(f"ONNX export of {hf_folder} failed ({done.returncode}): {done.stderr[-800:]}")
    try:
        tmp.rename(out)
    except OSError:
        if not (out / "genai_config.json").is_file():  # not a lost race: a real failure
            raise
    return out, time.perf_counter() - start


class OrtLLM:
    """One ONNX Runtime GenAI model, safe to share between threads (one generation at a
    time, each with a wall-clock limit), as :class:`~.chat.LLM` is."""

    def __init__(self, name: str, folder: Path, tokenizer: Any, load_seconds: float = 0.0,
                 source: str | None = None, precision: str = PRECISION) -> None:
        import onnxruntime_genai as og

        self.og = og
        self.name = name
        self.device = "cpu"
        self.backend = f"onnxruntime-genai-{precision}"
        self.dtype = {"fp32": "float32", "int4": "int4"}.get(precision, precision)
        self.folder = folder
        self.model = og.Model(str(folder))
        self.og_tokenizer = og.Tokenizer(self.model)
        self.tokenizer = tokenizer  # the HF tokenizer: the chat template and decoding
        self.load_seconds = load_seconds
        self.source = source or str(folder)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"OrtLLM(name={self.name!r}, backend={self.backend!r}, load_seconds={self.load_seconds:.2f})"

    @property
    def busy(self) -> bool:
        """Whether a generation holds the model now (a hint; it can change right away)."""
        return self._lock.locked()

    # -- plumbing

    def _ids(self, messages: Sequence[Mapping[str, Any]]) -> list[int]:
        try:
            text = self.tokenizer.apply_chat_template(flatten_messages(messages), add_generation_prompt=True,
                                                      tokenize=False)
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        except Exception as e:
            raise LLMError(f"could not build the prompt for {self.name}: {e}") from e

    @contextmanager
    def _turn(self, deadline: float) -> Iterator[None]:
        if not self._lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise LLMTimeout(f"{self.name} stayed busy with another request past the time limit")
        try:
            yield
        finally:
            self._lock.release()

    def _generator(self, ids: list[int], max_new_tokens: int, temperature: float,
                   output_type: type[BaseModel] | None = None) -> Any:
        params = self.og.GeneratorParams(self.model)
        sampling: dict[str, Any] = ({"do_sample": True, "temperature": temperature, "random_seed": 0}
                                    if temperature > 0 else {"do_sample": False})
        params.set_search_options(max_length=len(ids) + max_new_tokens, **sampling)
        if output_type is not None:
            params.set_guidance("json_schema", json.dumps(guidance_schema(output_type)))
        try:
            gen = self.og.Generator(self.model, params)
            gen.append_tokens(ids)  # the prompt's prefill
        except Exception as e:
            raise LLMError(f"{self.name} failed to start generating: {e}") from e
        return gen

    def _tokens(self, gen: Any, deadline: float) -> Iterator[int]:
        """The new tokens, one at a time, until the end, the length limit or the deadline."""
        while not gen.is_done():
            if time.monotonic() >= deadline:
                return
            try:
                gen.generate_next_token()
            except Exception as e:
                raise LLMError(f"{self.name} failed to generate: {e}") from e
            yield int(gen.get_next_tokens()[0])

    def _run(self, messages, max_new_tokens: int, timeout_s: float, temperature: float,
             output_type: type[BaseModel] | None = None) -> tuple[list[int], bool, float]:
        start = time.monotonic()
        deadline = deadline_after(max_new_tokens, timeout_s)
        ids = self._ids(messages)
        with self._turn(deadline):
            gen = self._generator(ids, max_new_tokens, temperature, output_type)
            new = list(self._tokens(gen, deadline))
            timed_out = not gen.is_done() and time.monotonic() >= deadline
        return new, timed_out, start

    def _text(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    # -- public API

    def chat(self, messages: Sequence[Mapping[str, Any]], max_new_tokens: int = 160, timeout_s: float = 20.0,
             temperature: float = 0.0) -> Generation:
        new, timed_out, start = self._run(messages, max_new_tokens, timeout_s, temperature)
        return Generation(self._text(new), len(new), time.monotonic() - start, timed_out)

    def stream(self, messages: Sequence[Mapping[str, Any]], max_new_tokens: int = 160, timeout_s: float = 20.0,
               temperature: float = 0.0) -> Iterator[str]:
        """Yield the answer in text chunks as they are generated; closing the iterator
        early ends generation after the current token and frees the model."""
        deadline = deadline_after(max_new_tokens, timeout_s)
        ids = self._ids(messages)
        with self._turn(deadline):
            gen = self._generator(ids, max_new_tokens, temperature)
            new: list[int] = []
            said = ""
            for token in self._tokens(gen, deadline):
                new.append(token)
                text = self._text(new)
                # a multi-byte character split over tokens decodes to U+FFFD until complete
                if len(text) > len(said) and not text.endswith("\ufffd"):
                    yield text[len(said):]
                    said = text
            rest = self._text(new)[len(said):]
            if rest:
                yield rest

    def generate_structured(self, messages: Sequence[Mapping[str, Any]], output_type: type[M],
                            max_new_tokens: int = 160, timeout_s: float = 20.0,
                            temperature: float = 0.0) -> Structured[M]:
        """JSON that ``output_type``'s schema allows (llguidance masks every token); it can
        still fail to validate when the token or time limit cuts it short."""
        new, timed_out, start = self._run(messages, max_new_tokens, timeout_s, temperature, output_type)
        raw = self._text(new)
        try:
            parsed, error = output_type.model_validate_json(raw), None
        except ValidationError as e:
            parsed, error = None, str(e)
        return Structured(raw, parsed, error, len(new), time.monotonic() - start, timed_out)


def load_ort_llm(hf_folder: Path, name: str) -> OrtLLM:
    """The ONNX Runtime model of a plain HF folder (exported on first use)."""
    from transformers import AutoTokenizer

    start = time.perf_counter()
    if not available():
        raise LLMError("the onnxruntime-genai backend needs the onnxruntime-genai package")
    folder, _ = export_onnx(hf_folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(hf_folder)
        return OrtLLM(f"{name}@ort-{PRECISION}", folder, tokenizer, time.perf_counter() - start, str(hf_folder))
    except LLMError:
        raise
    except Exception as e:
        raise LLMError(f"could not load the ONNX model {folder}: {e}") from e
