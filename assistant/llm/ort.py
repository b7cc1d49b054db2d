"""The chat model on ONNX Runtime GenAI: the same :class:`~.base.ChatModel` seam as the
torch one, decoded by onnxruntime-genai with JSON schemas enforced by its llguidance.

An opt-in backend (``settings.llm.backend = "onnxruntime-genai"``; torch is the
default). Alone, it decodes SmolLM2 faster than torch float32 on 2 cores (13.0 vs 9.7
tokens/s idle, 8.9 vs 5.3 at load ~5; every proposal valid before repair;
``bench/bench_decode.py``), but a whole chat turn took longer in the app (p50 4.5 s vs
3.5 s, ``bench/bench_ui.py``). The model is exported once, at float32, from the plain HF
folder the torch path loads (the GGUF conversion, with a LoRA adapter merged in when one is asked for) by
``onnxruntime_genai.models.builder``, offline, into a cache folder beside it. Prompts
are built and answers decoded by the same HF tokenizer as the torch model's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Generator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .base import (
    Generation,
    LLMError,
    M,
    Structured,
    deadline_after,
    flatten_messages,
    guidance_schema,
    holding,
    validated,
)
from .gguf import save_atomically

PRECISION = "fp32"  # int4 decodes faster still but lost validity (0.83 before repair, decode.json)


def available() -> bool:
    """Whether onnxruntime-genai can be imported here."""
    import importlib.util

    return importlib.util.find_spec("onnxruntime_genai") is not None


def export_onnx(hf_folder: Path, precision: str = PRECISION) -> tuple[Path, float]:
    """The ONNX export of ``hf_folder`` (``<folder>-onnx-<precision>``), built once; the
    folder and the seconds this call spent exporting (0 when it was cached). The export
    is written to a temporary sibling and renamed into place, so a killed export never
    leaves a half-written model behind."""
    out = hf_folder.parent / f"{hf_folder.name}-onnx-{precision}"
    if (out / "genai_config.json").is_file():
        return out, 0.0
    start = time.perf_counter()

    def write(tmp: Path) -> None:
        cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_folder), "-o", str(tmp),
               "-p", precision, "-e", "cpu", "-c", str(out.parent / f".{out.name}-cache")]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0 or not (tmp / "genai_config.json").is_file():
            raise LLMError(f"ONNX export of {hf_folder} failed ({done.returncode}): {done.stderr[-800:]}")

    save_atomically(out, write, marker="genai_config.json")
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
        self.dtype = "float32" if precision == "fp32" else precision
        self.holds_gil = True  # see OrtProcessLLM: in the app the model runs in its own process
        self.folder = folder
        self.model = og.Model(str(folder))
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

    def _turn(self, deadline: float) -> Any:
        return holding(self._lock, deadline, self.name)

    def _generator(self, ids: list[int], max_new_tokens: int, temperature: float,
                   guidance: str | None = None) -> Any:
        params = self.og.GeneratorParams(self.model)
        sampling: dict[str, Any] = ({"do_sample": True, "temperature": temperature, "random_seed": 0}
                                    if temperature > 0 else {"do_sample": False})
        params.set_search_options(max_length=len(ids) + max_new_tokens, **sampling)
        if guidance is not None:
            params.set_guidance("json_schema", guidance)
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
             guidance: str | None = None) -> tuple[list[int], bool, float]:
        start = time.monotonic()
        deadline = deadline_after(max_new_tokens, timeout_s)
        ids = self._ids(messages)
        with self._turn(deadline):
            gen = self._generator(ids, max_new_tokens, temperature, guidance)
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
               temperature: float = 0.0) -> Generator[str, None, None]:
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
        start = time.monotonic()
        raw, n, timed_out = self.structured_raw(messages, json.dumps(guidance_schema(output_type)), max_new_tokens,
                                                timeout_s, temperature)
        return validated(output_type, raw, n, time.monotonic() - start, timed_out)

    def structured_raw(self, messages, guidance: str, max_new_tokens: int, timeout_s: float,
                       temperature: float) -> tuple[str, int, bool]:
        """The raw text of a schema-guided answer, its token count and whether it timed out."""
        new, timed_out, _ = self._run(messages, max_new_tokens, timeout_s, temperature, guidance)
        return self._text(new), len(new), timed_out


# --- the model in its own process ----------------------------------------------------------
# onnxruntime-genai keeps the GIL through each token: in the app's process a generation
# starves the rule pass, the web server and every other session (a Python loop beside
# one ran 9x slower). So the served model lives in a child process; this side only sends
# requests and reads answers.

_GRACE_S = 10.0  # past the request's own limit, a silent child counts as dead


def _serve(conn: Any, folder: str, hf_folder: str, name: str) -> None:
    """The child: load the model, then answer requests until the pipe closes."""
    try:
        from transformers import AutoTokenizer

        llm = OrtLLM(name, Path(folder), AutoTokenizer.from_pretrained(hf_folder))
        conn.send(("ready", None))
    except Exception as e:
        conn.send(("error", f"{type(e).__name__}: {e}"))
        return
    while True:
        try:
            kind, args = conn.recv()
        except (EOFError, OSError):
            return
        try:
            if kind == "chat":
                g = llm.chat(*args)
                conn.send(("done", (g.text, g.new_tokens, g.timed_out)))
            elif kind == "structured":
                conn.send(("done", llm.structured_raw(*args)))
            elif kind == "stream":
                _serve_stream(conn, llm, args)
        except Exception as e:
            conn.send(("error", f"{type(e).__name__}: {e}"))


def _serve_stream(conn: Any, llm: OrtLLM, args: tuple) -> None:
    stream = llm.stream(*args)
    try:
        for chunk in stream:
            conn.send(("chunk", chunk))
            if conn.poll() and conn.recv()[0] == "cancel":
                break
    finally:
        stream.close()
    conn.send(("end", None))


class OrtProcessLLM:
    """:class:`OrtLLM` in a child process: the same :class:`~.base.ChatModel`, one
    generation at a time, each with its time limit; a child that dies or stops answering
    is replaced on the next request."""

    holds_gil = False

    def __init__(self, name: str, folder: Path, hf_folder: Path, precision: str = PRECISION) -> None:
        start = time.perf_counter()
        self.name = name
        self.device = "cpu"
        self.backend = f"onnxruntime-genai-{precision}"
        self.dtype = "float32" if precision == "fp32" else precision
        self.folder, self.hf_folder = folder, hf_folder
        self.source = str(hf_folder)
        self._lock = threading.Lock()
        self._proc: Any = None
        self._conn: Any = None
        self._start()
        self.load_seconds = time.perf_counter() - start

    def __repr__(self) -> str:
        return f"OrtProcessLLM(name={self.name!r}, backend={self.backend!r}, load_seconds={self.load_seconds:.2f})"

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    def _start(self) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")  # no fork of a threaded server
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, str(self.folder), str(self.hf_folder), self.name),
                                 name=f"llm-{self.name}", daemon=True)
        self._proc.start()
        child.close()
        kind, detail = self._receive(120.0)
        if kind != "ready":
            self.close()
            raise LLMError(f"the ONNX Runtime model {self.folder} did not start: {detail}")

    def close(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            self._proc.kill()
        self._proc = None

    def _receive(self, wait_s: float) -> tuple[str, Any]:
        if not self._conn.poll(max(0.0, wait_s)):
            self.close()  # hung: replaced on the next request
            raise LLMError(f"{self.name} stopped answering")
        try:
            return self._conn.recv()  # type: ignore[no-any-return]
        except (EOFError, OSError) as e:
            self.close()
            raise LLMError(f"{self.name} stopped: {e}") from e

    @contextmanager
    def _turn(self, deadline: float) -> Iterator[None]:
        with holding(self._lock, deadline, self.name):
            if self._proc is None or not self._proc.is_alive():
                self._start()
            yield

    def _ask(self, kind: str, args: tuple, deadline: float) -> Any:
        self._conn.send((kind, args))
        got, payload = self._receive(deadline - time.monotonic() + _GRACE_S)
        if got == "error":
            raise LLMError(f"{self.name} failed to generate: {payload}")
        return payload

    def chat(self, messages: Sequence[Mapping[str, Any]], max_new_tokens: int = 160, timeout_s: float = 20.0,
             temperature: float = 0.0) -> Generation:
        start = time.monotonic()
        deadline = deadline_after(max_new_tokens, timeout_s)
        flat = flatten_messages(messages)
        with self._turn(deadline):
            text, n, timed_out = self._ask("chat", (flat, max_new_tokens, max(deadline - time.monotonic(), 1e-3),
                                                    temperature), deadline)
        return Generation(text, n, time.monotonic() - start, timed_out)

    def stream(self, messages: Sequence[Mapping[str, Any]], max_new_tokens: int = 160, timeout_s: float = 20.0,
               temperature: float = 0.0) -> Iterator[str]:
        """Text chunks as the child generates them; closing early cancels the generation
        after its current token and frees the model."""
        deadline = deadline_after(max_new_tokens, timeout_s)
        flat = flatten_messages(messages)
        with self._turn(deadline):
            self._conn.send(("stream", (flat, max_new_tokens, max(deadline - time.monotonic(), 1e-3), temperature)))
            ended = False
            try:
                while True:
                    kind, payload = self._receive(deadline - time.monotonic() + _GRACE_S)
                    if kind == "chunk":
                        yield payload
                    elif kind == "error":
                        raise LLMError(f"{self.name} failed to generate: {payload}")
                    else:
                        ended = True
                        return
            finally:
                if not ended and self._proc is not None:
                    self._conn.send(("cancel", None))
                    while self._proc is not None and self._receive(_GRACE_S)[0] not in ("end", "error"):
                        pass

    def generate_structured(self, messages: Sequence[Mapping[str, Any]], output_type: type[M],
                            max_new_tokens: int = 160, timeout_s: float = 20.0,
                            temperature: float = 0.0) -> Structured[M]:
        start = time.monotonic()
        deadline = deadline_after(max_new_tokens, timeout_s)
        guidance = json.dumps(guidance_schema(output_type))
        flat = flatten_messages(messages)
        with self._turn(deadline):
            raw, n, timed_out = self._ask("structured", (flat, guidance, max_new_tokens,
                                                         max(deadline - time.monotonic(), 1e-3), temperature),
                                          deadline)
        return validated(output_type, raw, n, time.monotonic() - start, timed_out)


def load_ort_llm(hf_folder: Path, name: str) -> OrtProcessLLM:
    """The ONNX Runtime model of a plain HF folder (exported on first use), served from
    its own process."""
    if not available():
        raise LLMError("the onnxruntime-genai backend needs the onnxruntime-genai package")
    folder, _ = export_onnx(hf_folder)
    return OrtProcessLLM(f"{name}@ort-{PRECISION}", folder, hf_folder)
