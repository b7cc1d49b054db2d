"""What the test fakes of the :class:`~assistant.llm.ChatModel` seam share."""

from __future__ import annotations

import json
import re

from assistant.llm import Structured


def pick_candidates(messages, output_type, first_name: str = "First", parse_error: str | None = None) -> Structured:
    """A structured answer proposing candidates 1-3 and 4-6 of the prompt's numbered list
    (valid JSON within the schema): enough to see what the core keeps of an LLM's bundles."""
    numbers = re.findall(r"^(\d+): ", messages[-1]["content"], flags=re.M)
    bundles = [{"name": first_name, "item_ids": numbers[0:3], "reason": "goes well"},
               {"name": "Second", "item_ids": numbers[3:6], "reason": "also good"}]
    raw = json.dumps({"bundles": bundles})
    return Structured(raw=raw, parsed=output_type.model_validate_json(raw), parse_error=parse_error, new_tokens=40,
                      seconds=0.1, timed_out=False)
