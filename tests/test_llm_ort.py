"""The ONNX Runtime GenAI backend against the real SmolLM2-135M: the same ChatModel
behaviour as the torch model (greedy, streamed, one generation at a time, time limits,
JSON held to the schema), exported once into a temp cache."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import threading
from pathlib import Path

import pytest
from test_llm import CATALOGUE, FRUITS, LIMIT_S, PROMPTS, _pick_model, pick_messages

from assistant.llm import ChatModel, LLMError, LLMTimeout, cached_folder, packaged_gguf
from assistant.llm.base import guidance_schema
from assistant.llm.loading import load_chat_model
from assistant.llm.ort import OrtProcessLLM, available, export_onnx

pytestmark = [pytest.mark.llm, pytest.mark.skipif(not available(), reason="onnxruntime-genai is not installed")]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ort-model-cache")


@pytest.fixture(scope="module")
def ort(cache_dir: Path):
    model = load_chat_model(cache_dir=cache_dir, device="cpu", backend="onnxruntime-genai")
    assert isinstance(model, OrtProcessLLM)
    yield model
    model.close()


@pytest.fixture(scope="module")
def fruits(ort: OrtProcessLLM):
    return ort.chat(FRUITS, max_new_tokens=24, timeout_s=LIMIT_S)


def test_it_is_a_chat_model_exported_once_beside_the_converted_folder(ort: OrtProcessLLM, cache_dir: Path) -> None:
    assert isinstance(ort, ChatModel)
    hf = cached_folder(packaged_gguf(), cache_dir)
    assert ort.folder == hf.parent / f"{hf.name}-onnx-fp32" and (ort.folder / "genai_config.json").is_file()
    assert ort.name == "SmolLM2-135M-Instruct@ort-fp32" and ort.device == "cpu"
    # nothing half-written beside it; a second load reuses the export
    assert not [p for p in cache_dir.iterdir() if ".tmp-" in p.name]
    assert export_onnx(hf) == (ort.folder, 0.0)


def test_chat_is_greedy_and_the_stream_joins_to_it(ort: OrtProcessLLM, fruits) -> None:
    assert fruits.text.strip() and not fruits.timed_out and 0 < fruits.new_tokens <= 24
    assert ort.chat(FRUITS, max_new_tokens=24, timeout_s=LIMIT_S).text == fruits.text
    chunks = list(ort.stream(FRUITS, max_new_tokens=24, timeout_s=LIMIT_S))
    assert len(chunks) > 1 and "".join(chunks).strip() == fruits.text.strip()


def test_a_busy_model_times_out_and_a_closed_stream_frees_it(ort: OrtProcessLLM, fruits) -> None:
    stream = ort.stream([{"role": "user", "content": "Write a long story."}], 400, LIMIT_S)
    assert not ort.busy
    next(stream)
    assert ort.busy
    with pytest.raises(LLMTimeout):
        ort.chat(FRUITS, max_new_tokens=4, timeout_s=0.2)
    stream.close()
    assert not ort.busy
    assert ort.chat(FRUITS, max_new_tokens=24, timeout_s=LIMIT_S).text == fruits.text


def test_concurrent_sessions_take_turns(ort: OrtProcessLLM, fruits) -> None:
    answers: list[str] = []
    threads = [threading.Thread(target=lambda: answers.append(
        ort.chat(FRUITS, max_new_tokens=24, timeout_s=LIMIT_S).text)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == [fruits.text, fruits.text]


def test_a_tiny_timeout_cuts_generation_short(ort: OrtProcessLLM) -> None:
    out = ort.chat([{"role": "user", "content": "Write a long story."}], 300, timeout_s=0.05)
    assert out.timed_out and out.new_tokens <= 5
    cut = ort.generate_structured(FRUITS, _pick_model(["11", "22", "33"]), 60, timeout_s=0.05)
    assert cut.timed_out and not cut.ok and cut.parse_error


@pytest.mark.parametrize("request_text", PROMPTS)
def test_structured_ids_never_leave_the_enum(ort: OrtProcessLLM, request_text: str) -> None:
    ids = list(CATALOGUE)
    out = ort.generate_structured(pick_messages(request_text), _pick_model(ids), max_new_tokens=60,
                                  timeout_s=LIMIT_S)
    assert out.ok, (out.raw, out.parse_error)
    assert set(out.parsed.item_ids) <= set(ids)
    assert "9999" not in out.raw and '"0"' not in out.raw
    assert " " not in out.raw.split('"reason"')[0]  # compact JSON, as the torch backend writes it


def test_the_model_runs_beside_python_work_and_survives_its_process(ort: OrtProcessLLM, fruits) -> None:
    """The child process holds the model, so the app's threads keep running while it
    generates; a child that died is replaced on the next request."""
    import time

    def loop() -> float:
        start = time.perf_counter()
        sum(range(3_000_000))
        return time.perf_counter() - start

    alone = loop()
    worker = threading.Thread(target=lambda: ort.chat([{"role": "user", "content": "Write a long story."}], 60,
                                                       LIMIT_S))
    worker.start()
    beside = loop()
    worker.join()
    assert beside < 4 * alone + 0.2, (alone, beside)  # in-process onnxruntime-genai: ~9x
    assert not ort.holds_gil
    ort._proc.kill()
    ort._proc.join()
    assert ort.chat(FRUITS, max_new_tokens=24, timeout_s=LIMIT_S).text == fruits.text


def test_the_guidance_schema_closes_every_object() -> None:
    schema = guidance_schema(_pick_model(["1", "2"]))
    assert schema["additionalProperties"] is False and schema["x-guidance"]["whitespace_flexible"] is False


def test_an_unknown_backend_is_named() -> None:
    with pytest.raises(LLMError, match="unknown LLM backend 'llama.cpp'"):
        load_chat_model(backend="llama.cpp")


def test_onnxruntime_needs_a_local_folder_and_a_cpu(tmp_path: Path) -> None:
    with pytest.raises(LLMError, match="needs a local model folder"):
        load_chat_model(str(tmp_path / "nothing-here"), device="cpu", backend="onnxruntime-genai")
    with pytest.raises(LLMError, match="CPU only"):
        from assistant.llm.loading import _load_ort

        _load_ort(None, tmp_path, "cuda", None)
