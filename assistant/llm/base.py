"""What every chat model of this project is: its records, its errors and its seam.

:class:`ChatModel` is the Protocol the service, the conversation, eval and the test
fakes share; :class:`~assistant.llm.chat.LLM` is the real one. Nothing here imports
torch, so code that only needs the seam (and tests with fakes) stays light.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class LLMError(RuntimeError):
    """The model could not be loaded or could not generate."""


class LLMTimeout(LLMError):
    """The time limit ran out before the model could start (e.g. it was busy)."""


def deadline_after(max_new_tokens: int, timeout_s: float) -> float:
    """The monotonic-clock deadline of a generation, once its limits are checked."""
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be >= 1")
    if not timeout_s > 0:
        raise ValueError("timeout_s must be > 0")
    return time.monotonic() + timeout_s


def acquire_by(lock: threading.Lock, deadline: float, name: str) -> None:
    """Take the model's one-generation-at-a-time lock, waiting no later than ``deadline``."""
    if not lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
        raise LLMTimeout(f"{name} stayed busy with another request past the time limit")


@contextmanager
def holding(lock: threading.Lock, deadline: float, name: str) -> Iterator[None]:
    """The model's lock (:func:`acquire_by`), held for the ``with`` block."""
    acquire_by(lock, deadline, name)
    try:
        yield
    finally:
        lock.release()


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


def validated(output_type: type[M], raw: str, new_tokens: int, seconds: float, timed_out: bool) -> Structured[M]:
    """A structured answer: ``raw`` parsed as ``output_type``, or why it does not parse."""
    try:
        parsed, error = output_type.model_validate_json(raw), None
    except ValidationError as e:
        parsed, error = None, str(e)
    return Structured(raw, parsed, error, new_tokens, seconds, timed_out)


def guidance_schema(output_type: type[BaseModel]) -> dict:
    """The pydantic schema as llguidance enforces it: compact JSON (no free whitespace,
    ``,`` and ``:`` separators, which the tuned adapter was trained on) and no extra keys."""
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


@runtime_checkable
class ChatModel(Protocol):
    """A loaded chat model: one generation at a time, each with a time limit."""

    name: str
    device: str

    @property
    def busy(self) -> bool: ...

    def chat(self, messages: Sequence[Mapping[str, Any]], max_new_tokens: int = 160,
             timeout_s: float = 20.0, temperature: float = 0.0) -> Generation: ...

    def stream(self, messages: Sequence[Mapping[str, Any]], max_new_tokens: int = 160,
               timeout_s: float = 20.0, temperature: float = 0.0) -> Iterator[str]: ...

    def generate_structured(self, messages: Sequence[Mapping[str, Any]], output_type: type[M],
                            max_new_tokens: int = 160, timeout_s: float = 20.0,
                            temperature: float = 0.0) -> Structured[M]: ...


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
