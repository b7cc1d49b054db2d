"""What the test fakes of the :class:`~assistant.llm.ChatModel` seam share."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

from assistant.llm import Generation, Structured

INTRO = "Here are some cosy ideas for your evening."


def pick_candidates(messages, output_type, first_name: str = "First", parse_error: str | None = None) -> Structured:
    """A structured answer proposing candidates 1-3 and 4-6 of the prompt's numbered list
    (valid JSON within the schema): enough to see what the core keeps of an LLM's bundles."""
    numbers = re.findall(r"^(\d+): ", messages[-1]["content"], flags=re.M)
    bundles = [{"name": first_name, "item_ids": numbers[0:3], "reason": "goes well"},
               {"name": "Second", "item_ids": numbers[3:6], "reason": "also good"}]
    raw = json.dumps({"bundles": bundles})
    return Structured(raw=raw, parsed=output_type.model_validate_json(raw), parse_error=parse_error, new_tokens=40,
                      seconds=0.1, timed_out=False)


class ScriptedLLM:
    """A deterministic chat model (the :class:`ChatModel` Protocol): a fixed intro when
    streamed, and candidates 1-3 and 4-6 (valid JSON within the schema) when asked for
    bundles, so that the LLM pass really adds proposals of its own."""

    name, device = "scripted", "cpu"

    def __init__(self) -> None:
        self.structured_calls = 0

    @property
    def busy(self) -> bool:
        return False

    def chat(self, messages, max_new_tokens=160, timeout_s=20.0, temperature=0.0) -> Generation:
        return Generation(text=INTRO, new_tokens=9, seconds=0.01, timed_out=False)

    def stream(self, messages, max_new_tokens=160, timeout_s=20.0, temperature=0.0) -> Iterator[str]:
        for word in INTRO.split(" "):
            yield word + " "

    def generate_structured(self, messages, output_type, max_new_tokens=160, timeout_s=20.0, temperature=0.0):
        self.structured_calls += 1
        return pick_candidates(messages, output_type)
