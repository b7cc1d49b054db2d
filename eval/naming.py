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


def grouping_prompt(items: Sequence[str], catalogue: Any, max_size: int = 4) -> tuple[list[dict], int, str]:
    """The production grouping prompt for a session: its numbered rows, the number of
    bundles it asks for and its text (as ``assistant.grouping`` renders it)."""
    from assistant.grouping import default_bundle_count, prompt_rows
    from prompts import render

    ids = list(dict.fromkeys(items))
    shown = prompt_rows(ids, catalogue)
    n_bundles = default_bundle_count(len(ids))
    return shown, n_bundles, prompt_text(render("bundle_items", candidates=shown, n_bundles=n_bundles,
                                                max_size=max_size))


def generation_names(bundles: dict[str, Sequence[Any]], cases: Sequence[Any], catalogue: Any, seed: int,
                     prompts: dict[str, str] | None = None) -> dict:
    """Name quality of one system's bundles (``bundles[case_id]``: objects with ``name``
    and ``item_ids``) on ``cases`` against their intents; with ``prompts`` (an LLM
    variant), also the copies from the prompt and the category-path names of the very
    same bundles, with paired tests against them."""
    truth = [list(c.intents) for c in cases]
    names = [[str(g.name) for g in bundles[c.case_id]] for c in cases]
    texts = [prompts.get(c.case_id, "") for c in cases] if prompts is not None else None
    own = score_names(names, truth, texts, seed)
    out: dict[str, Any] = {"names": own}
    if prompts is not None:
        paths = [category_path_names([g.item_ids for g in bundles[c.case_id]], catalogue) for c in cases]
        path = score_names(paths, truth, None, seed)
        out["category_path_same_bundles"] = path
        out["tests_vs_category_path"] = compare_names(own, path, seed)
        path.pop("per_case")
    return out


def prompt_text(messages: Sequence[dict]) -> str:
    """A rendered prompt (``[{"role", "content"}]``) as the one string ``score_names`` reads."""
    return "\n".join(str(m.get("content", "")) for m in messages)


# --- tuned vs base on one split (python -m eval.naming) ---------------------------------


def _grouping_run(llm: Any, cases: Sequence[Any], catalogue: Any, progress: bool) -> dict:
    """The production grouping prompt and proposer over ``cases``; names as shown (a
    blank model name falls back to the category path, as ``assistant.grouping`` does)."""
    from tqdm.auto import tqdm

    from assistant.grouping import common_name
    from assistant.proposer import propose_with_llm

    out: dict[str, list] = {"names": [], "raw_names": [], "bundles": [], "prompts": [], "reports": [],
                            "path_names": []}
    for case in tqdm(cases, desc=llm.name, disable=not progress, leave=False):
        shown, n_bundles, text = grouping_prompt(case.items, catalogue)
        allowed = {r["product_id"] for r in shown}
        props = propose_with_llm(llm, "bundle_items", {}, shown, allowed.__contains__, n_bundles=n_bundles,
                                 min_size=2, max_size=4, max_new_tokens=150, timeout_s=60.0)
        out["raw_names"].append([b.name for b in props.bundles])
        out["names"].append([b.name.strip() or common_name(b.item_ids, catalogue) for b in props.bundles])
        out["path_names"].append([common_name(b.item_ids, catalogue) for b in props.bundles])
        out["bundles"].append([b.item_ids for b in props.bundles])
        out["prompts"].append(text)
        out["reports"].append(props.report)
    return out


def model_comparison(n_cases: int | None = 40, adapter: str = "smollm2-bundles", seed: int = 0,
                   progress: bool = True, split: str = "dev") -> dict:
    """Base vs tuned SmolLM2 on the first ``n_cases`` (None: all) bundlerec-generation
    sessions of ``seed``'s ``split`` (``dev``: carved from training data, where choices are
    made; ``test``: the protocol's test sessions, for reporting only): valid-before-repair,
    tokens, bundle and pair scores, and name quality against the category-path names of
    the same bundles."""
    import dataclasses
    import gc

    import eval.protocols as P
    from assistant.llm.adapter import check_adapter
    from assistant.llm.loading import load_llm
    from retrieval.sources import DEFAULT_BUNDLEREC, load_source

    ds = load_source("bundlerec", DEFAULT_BUNDLEREC)
    test = P.bundlerec_generation(ds, seed)
    if split == "dev":
        chosen = P.bundlerec_generation_dev_of(test, seed, n_cases)
    elif split == "test":
        chosen = dataclasses.replace(test, cases=test.cases[:n_cases] if n_cases else test.cases)
    else:
        raise ValueError(f"split must be 'dev' or 'test', got {split!r}")
    check_adapter(adapter, chosen)  # an adapter trained on these sessions would be refused here
    catalogue = ds.products.set_index("product_id")
    truth = [list(c.intents) for c in chosen.cases]
    runs: dict[str, dict] = {}
    systems: dict[str, dict] = {}
    result: dict[str, Any] = {"cases": len(chosen.cases), "split": split, "seed": seed, "adapter": adapter,
                              "systems": systems}
    for label, kwargs in (("base", {}), ("tuned", {"adapter": adapter})):
        llm = load_llm(device="cpu", **kwargs)
        runs[label] = _grouping_run(llm, chosen.cases, catalogue, progress)
        del llm
        gc.collect()
    for label, run in runs.items():
        reports = run["reports"]
        proposed = sum(r.proposed for r in reports)
        pairs = [(b, c.bundles) for b, c in zip(run["bundles"], chosen.cases)]
        sets, pm = M.bundle_generation_metrics(pairs), M.pair_metrics(pairs)
        valid = sum(r.valid_before_repair for r in reports)
        systems[label] = {
            "valid_before_repair": round(valid / proposed, 3) if proposed else 0.0,
            "proposed": proposed, "fallbacks": sum(r.fallback for r in reports),
            "tokens_per_call": round(float(np.mean([r.new_tokens for r in reports])), 1),
            "seconds_per_call": round(float(np.mean([r.latency_s for r in reports])), 2),
            "precision": sets["precision"], "recall": sets["recall"], "pair_f1": pm["pair_f1"],
            "names": score_names(run["names"], truth, run["prompts"], seed),
            "category_path_names_same_bundles": score_names(run["path_names"], truth, None, seed),
            "raw_empty_names": sum(not n.strip() for g in run["raw_names"] for n in g),
            "sample": [{"intents": t, "names": n} for t, n in zip(truth[:6], run["names"][:6])],
        }
    s = systems
    result["tests"] = {
        "tuned_vs_base_names": compare_names(s["tuned"]["names"], s["base"]["names"], seed),
        "tuned_vs_category_path": compare_names(s["tuned"]["names"], s["tuned"]["category_path_names_same_bundles"],
                                                seed),
        "base_vs_category_path": compare_names(s["base"]["names"], s["base"]["category_path_names_same_bundles"],
                                               seed),
    }
    for row in s.values():  # per-case lists are for the tests above, not for the report
        for key in ("names", "category_path_names_same_bundles"):
            row[key].pop("per_case", None)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    import argparse
    import json
    from pathlib import Path

    parser = argparse.ArgumentParser(
        description="base vs tuned SmolLM2 on bundlerec-generation sessions: validity, tokens, grouping scores "
                    "and intent-name quality (cosine, ROUGE-L, copies) against category-path names")
    parser.add_argument("--cases", type=int, default=40, help="first N sessions of the split (0: all)")
    parser.add_argument("--split", choices=("dev", "test"), default="dev",
                        help="dev (carved from training data; choices are made here) or test (reporting only)")
    parser.add_argument("--adapter", default="smollm2-bundles")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="default: eval/results/naming-<split>.json")
    args = parser.parse_args(argv)
    args.out = args.out or Path(f"eval/results/naming-{args.split}.json")
    result = model_comparison(args.cases or None, args.adapter, args.seed, split=args.split)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps({k: {m: v for m, v in row.items() if m != "sample"} for k, row in result["systems"].items()},
                     indent=2, default=str))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
