"""Intent-name quality for ``bundlerec-generation``: how close a system's bundle names
come to the ground-truth intents, and how many it copied from its own prompt.

* **cosine**: each predicted name against the case's closest ground-truth intent, with
  the packaged all-MiniLM-L6-v2 (normalised embeddings, so the dot product);
* **ROUGE-L F1**: the same pairing, with Google's ``rouge-score`` (stemmed);
* **copied from the prompt**: a name whose words all appear, in order and adjacent, in the
  prompt's *instructions* — the prompt with the contents of its ``<data>`` blocks removed
  (the block tags stay: the old prompt's tag ``candidates`` was copied as a name). A name
  taken from a product title is not counted; one taken from the instructions'
  example ("Camera accessories") is.

A case scores the mean over its names; a case without any name scores 0 (naming nothing
is not better than naming badly), so every system has one score per case and systems can
be compared with the paired tests of :mod:`eval.metrics`.

``score_names`` is the entry point ``eval/generation.py`` calls once per system;
``category_path_names`` is the naming baseline (the deepest shared category, as the
rule grouping names its clusters).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache
from typing import Any

import numpy as np

from . import metrics as M

_TOKEN = re.compile(r"[a-z0-9]+")
_DATA_BLOCK = re.compile(r"(<data\b[^>]*>).*?(</data>)", re.S | re.I)


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(str(text).lower())


def instruction_text(prompt: str) -> str:
    """The prompt without the contents of its ``<data>`` blocks (tags kept)."""
    return _DATA_BLOCK.sub(r"\1 \2", str(prompt))


def copied_from_prompt(name: str, prompt: str) -> bool:
    """Whether ``name``'s words appear contiguously in the prompt's instructions."""
    words = tokens(name)
    if not words:
        return False
    source = tokens(instruction_text(prompt))
    n = len(words)
    return any(source[i:i + n] == words for i in range(len(source) - n + 1))


@cache
def _embedder() -> Any:
    from retrieval.embeddings import Embedder

    return Embedder(cache_size=4096)


@cache
def _rouge() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def _case_scores(names: Sequence[str], intents: Sequence[str], vectors: dict[str, np.ndarray]) -> tuple[float, float]:
    names = [n for n in names if n.strip()]
    intents = [t for t in intents if t.strip()]
    if not names or not intents:
        return 0.0, 0.0
    truth = np.stack([vectors[t] for t in intents])
    cos = [float(np.max(truth @ vectors[n])) for n in names]
    rouge = [max(_rouge().score(t, n)["rougeL"].fmeasure for t in intents) for n in names]
    return float(np.mean(cos)), float(np.mean(rouge))


def score_names(predicted_names: Sequence[Sequence[str]], truth_intents: Sequence[Sequence[str]],
                prompt_texts: Sequence[str] | None = None, seed: int = 0) -> dict:
    """Name quality over cases: ``predicted_names[i]`` are case i's bundle names,
    ``truth_intents[i]`` its ground-truth intents, ``prompt_texts[i]`` the prompt the names
    were written from (all its messages joined; '' or None for a system without a prompt).

    Returns means with bootstrap 95% intervals, the copy count with examples, and the
    per-case scores (``per_case``) for paired tests (:func:`compare_names`)."""
    if len(predicted_names) != len(truth_intents):
        raise ValueError("predicted_names and truth_intents must have one entry per case")
    prompts = list(prompt_texts) if prompt_texts is not None else [""] * len(predicted_names)
    if len(prompts) != len(predicted_names):
        raise ValueError("prompt_texts must have one entry per case")
    texts = sorted({t for group in (*predicted_names, *truth_intents) for t in group if str(t).strip()})
    vectors = dict(zip(texts, _embedder().encode(texts))) if texts else {}
    cos, rouge, copied, empty = [], [], [], 0
    for names, intents, prompt in zip(predicted_names, truth_intents, prompts):
        c, r = _case_scores([str(n) for n in names], [str(t) for t in intents], vectors)
        cos.append(c)
        rouge.append(r)
        empty += sum(not str(n).strip() for n in names)
        copied += [str(n) for n in names if prompt and copied_from_prompt(str(n), prompt)]
    n_names = sum(len(n) for n in predicted_names)
    return {
        "cases": len(cos), "names": n_names, "empty_names": empty,
        "cases_without_names": sum(not any(str(x).strip() for x in n) for n in predicted_names),
        "cosine": {"mean": float(np.mean(cos)) if cos else 0.0, "ci95": M.bootstrap_interval(cos, seed) if cos else []},
        "rouge_l": {"mean": float(np.mean(rouge)) if rouge else 0.0,
                    "ci95": M.bootstrap_interval(rouge, seed) if rouge else []},
        "copied_from_prompt": len(copied),
        "copied_examples": sorted(set(copied))[:10],
        "distinct_names": len({str(n).strip().lower() for g in predicted_names for n in g if str(n).strip()}),
        "per_case": {"cosine": cos, "rouge_l": rouge},
    }


def compare_names(a: dict, b: dict, seed: int = 0) -> dict:
    """Paired tests of system ``a``'s per-case name scores against ``b``'s (same cases)."""
    return {m: M.paired_summary(a["per_case"][m], b["per_case"][m], seed) for m in ("cosine", "rouge_l")}


def category_path_names(bundles: Sequence[Sequence[str]], catalogue: Any) -> list[str]:
    """The naming baseline: each bundle named by the deepest category its items share
    (``assistant.grouping.common_name``)."""
    from assistant.grouping import common_name

    return [common_name(list(b), catalogue) for b in bundles]


def prompt_text(messages: Sequence[dict]) -> str:
    """A rendered prompt (``[{"role", "content"}]``) as the one string ``score_names`` reads."""
    return "\n".join(str(m.get("content", "")) for m in messages)
