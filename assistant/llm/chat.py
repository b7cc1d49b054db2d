"""The chat model: one loaded causal LM, shared between threads, one generation at a
time, each with a wall-clock limit. Chat, stream, or fill a JSON schema."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from transformers import StoppingCriteria

from .base import Generation, LLMError, M, Structured, acquire_by, deadline_after, flatten_messages, holding, validated
from .structured import JsonDecoder


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
        self.backend = "torch"
        self._lock = threading.Lock()
        self.json_decoder = JsonDecoder(tokenizer)

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

    def _turn(self, deadline: float) -> Any:
        return holding(self._lock, deadline, self.name)

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
        deadline = deadline_after(max_new_tokens, timeout_s)
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

        deadline = deadline_after(max_new_tokens, timeout_s)
        inputs = self._encode(messages)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        cancel = threading.Event()
        errors: list[LLMError] = []
        acquire_by(self._lock, deadline, self.name)  # released by the worker when it ends

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

        llguidance constrains every token (:mod:`.structured`), so ``Literal[...]`` fields
        can only take the listed values, and feeds the tokens the grammar forces in one
        pass. The result can still fail to validate when ``max_new_tokens`` or
        ``timeout_s`` cut the JSON short (``parse_error`` says why).
        """
        start = time.monotonic()
        deadline = deadline_after(max_new_tokens, timeout_s)
        # Built before waiting for the model, so it overlaps another session's turn.
        matcher = self.json_decoder.matcher(output_type)
        inputs = self._encode(messages)
        with self._turn(deadline):
            ids, timed_out = self.json_decoder.generate(
                self.model, matcher, inputs["input_ids"], max_new_tokens, deadline, temperature
            )
        raw = self.tokenizer.decode(ids, skip_special_tokens=True)
        return validated(output_type, raw, len(ids), time.monotonic() - start, timed_out)
