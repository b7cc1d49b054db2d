"""Prompt templates, kept as files and loaded as LangChain chat prompt templates.

Every value that comes from the catalogue or from a person is passed through
:func:`fence` first: it becomes one line of plain text that cannot close a ``<data>``
block, open a new one, or look like a chat turn. What the model may answer is limited
further by constrained decoding, and nothing it writes is trusted downstream.
"""

from __future__ import annotations

import json
import re
from functools import cache
from importlib import resources

from langchain_core.prompts import ChatPromptTemplate

TEMPLATES = ("shopper_bundle", "merchandiser_ideation", "constraint_extraction", "reply_intro", "bundle_items")

_MARKUP = re.compile(r"[<>{}\[\]`|\\]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def fence(text: object, max_len: int = 200) -> str:
    """Catalogue or user text made safe to place inside a ``<data>`` block."""
    value = _CONTROL.sub(" ", str(text if text is not None else ""))
    value = _MARKUP.sub(" ", value)
    value = re.sub(r"\s+", " ", value).strip()
    return value[:max_len]


def _read(name: str) -> str:
    return (resources.files(__name__) / name).read_text(encoding="utf-8")


@cache
def template(name: str) -> ChatPromptTemplate:
    """The system + user chat template ``name`` (one of :data:`TEMPLATES`)."""
    if name not in TEMPLATES:
        raise KeyError(f"unknown prompt template '{name}'; have {', '.join(TEMPLATES)}")
    return ChatPromptTemplate.from_messages(
        [("system", _read(f"{name}.system.j2")), ("human", _read(f"{name}.user.j2"))],
        template_format="jinja2",
    )


def render(name: str, **values: object) -> list[dict[str, str]]:
    """The template as plain ``[{"role", "content"}]`` messages for a chat model."""
    roles = {"system": "system", "human": "user", "ai": "assistant"}
    messages = template(name).format_messages(**values)
    return [{"role": roles.get(m.type, m.type), "content": str(m.content)} for m in messages]


@cache
def examples(name: str) -> tuple[tuple[str, str], ...]:
    """Worked (request, answer) pairs for template ``name``, from ``<name>.examples.json``,
    sent to the model as earlier chat turns."""
    rows = json.loads(_read(f"{name}.examples.json"))
    return tuple((str(r["request"]), str(r["answer"])) for r in rows)
