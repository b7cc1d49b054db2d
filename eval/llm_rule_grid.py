"""Ways the LLM's groups could join the rule's, on the ``bundlerec-generation`` dev split.

    python -m eval.llm_rule_grid [--adapter smollm2-bundles] [--seed 0] [--likelihood] [--out eval/results]

``llm+rule`` (:mod:`assistant.grouping`) puts the LLM's groups and the rule's parts in one
pool and keeps the most coherent disjoint ones, after the rule's kit. This asks, on dev
sessions only (carved from the training sessions, never a test session), whether another
way of joining them would lift bundle precision and recall over ``rule``:

* the pool: the rule's parts alone, or with the LLM's groups (as shipped);
* the kit: kept, or dropped where the LLM reads it differently (an LLM group inside the
  kit, one overlapping it, or either) and other bundles remain;
* nested: none, every LLM group not already shown, those with coherence at least 0.3 or
  0.4, or those inside the kit, added after the rest.

Each combination's answers are scored as the protocol scores them (bundle precision and
recall, matched recall, pair F1), with a paired t-test against ``rule``. The LLM runs once
a session; the combinations reuse its groups. ``--likelihood`` also scores every kit by the
model's log-likelihood of writing it (teacher-forced, the item list and its closing
bracket) and reports how well that, coherence and size tell a true kit from a false one
(ROC AUC; cross-validated logistic regression with and without the likelihood).

Writes ``out/llm-rule-grid-dev.json`` and ``.md``. The ``rule`` and shipped ``llm+rule``
rows are checked to equal what ``BundleAssistant.bundle_items`` returns.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from assistant import grouping as G

from . import metrics as M
from .generation import session_scores
from .run import CachedLLM, build_eval_index, default_work_dir, load_split

Relation = Literal["equal", "inside", "around", "overlap", "apart"]
Pool = Literal["rule", "llm+rule"]
POOLS: tuple[Pool, ...] = ("rule", "llm+rule")
DROP_WHEN: dict[str, frozenset[str]] = {
    "never": frozenset(), "LLM group inside": frozenset({"inside"}),
    "LLM group overlaps": frozenset({"overlap"}), "inside or overlaps": frozenset({"inside", "overlap"}),
}
NEST: dict[str, Callable[[G.ItemGroup, tuple[str, ...]], bool]] = {
    "none": lambda g, kit: False,
    "all": lambda g, kit: True,
    "coherence >= 0.3": lambda g, kit: g.coherence >= 0.3,
    "coherence >= 0.4": lambda g, kit: g.coherence >= 0.4,
    "inside the kit": lambda g, kit: relation(kit, g.item_ids) == "inside",
}
MEASURES = ("precision", "recall", "matched_recall", "pair_f1")


@dataclass(frozen=True)
class CaseGroups:
    """One session: what the rule and the LLM proposed, before any joining."""

    case_id: str
    items: tuple[str, ...]
    truth: tuple[tuple[str, ...], ...]
    kit: tuple[str, ...]
    n_bundles: int
    rule: tuple[G.ItemGroup, ...]
    llm: tuple[G.ItemGroup, ...]


@dataclass(frozen=True)
class Combination:
    pool: Pool
    drop_kit_when: str
    nest: str

    @property
    def label(self) -> str:
        return f"pool {self.pool}; drop kit: {self.drop_kit_when}; nest: {self.nest}"


RULE = Combination("rule", "never", "none")
SHIPPED = Combination("llm+rule", "never", "none")


def relation(kit: Sequence[str], group: Sequence[str]) -> Relation:
    """How an LLM group sits against the kit: the same set, strictly inside it, strictly
    around it, partly overlapping it, or apart from it."""
    k, g = set(kit), set(group)
    if k == g:
        return "equal"
    if g < k:
        return "inside"
    if k < g:
        return "around"
    return "overlap" if k & g else "apart"


def combine(case: CaseGroups, combo: Combination, affinity: G.Affinity,
            catalogue: pd.DataFrame) -> list[tuple[str, ...]]:
    """The answer ``combo`` gives for ``case``, as ``assistant.grouping.bundle_items`` builds
    one (kit first, then disjoint parts; every item when nothing is found), then the kit
    dropped and LLM groups nested as the combination says."""
    pool = list(case.rule) if combo.pool == "rule" else [*case.llm, *case.rule]
    bundles = G.with_kit(G.select_disjoint(pool, case.n_bundles), case.kit, affinity, catalogue)
    if not bundles and len(case.items) <= G.KIT_MAX:
        bundles = G.with_kit([], case.items, affinity, catalogue)
    answer = [tuple(b.item_ids) for b in bundles]
    kit_first = bool(case.kit) and bool(answer) and set(answer[0]) == set(case.kit)
    drops = DROP_WHEN[combo.drop_kit_when]
    if kit_first and len(answer) > 1 and any(relation(case.kit, g.item_ids) in drops for g in case.llm):
        answer = answer[1:]
    shown = {frozenset(a) for a in answer}
    for g in case.llm:
        if frozenset(g.item_ids) not in shown and NEST[combo.nest](g, case.kit):
            answer.append(tuple(g.item_ids))
            shown.add(frozenset(g.item_ids))
    return answer


def grid(cases: Sequence[CaseGroups], affinities: Sequence[G.Affinity], catalogue: pd.DataFrame) -> list[dict]:
    """Every combination's mean scores, and their difference from ``rule`` with the paired
    t-test's p; ``rule`` first."""
    combos = [RULE] + [Combination(p, d, n) for p, d, n in product(POOLS, DROP_WHEN, NEST)
                       if Combination(p, d, n) != RULE]
    answers = {c: [combine(case, c, a, catalogue) for case, a in zip(cases, affinities)] for c in combos}
    truth = [c.truth for c in cases]
    ref = session_scores(list(zip(answers[RULE], truth)))
    rows = []
    for c in combos:
        s = session_scores(list(zip(answers[c], truth)))
        rows.append({"combination": c.label, "shipped": c == SHIPPED,
                     **{m: {"mean": round(float(np.mean(s[m])), 4),
                            "delta": round(float(np.mean(s[m]) - np.mean(ref[m])), 4),
                            "p": round(M.paired_p_value(s[m], ref[m]), 4)} for m in MEASURES}})
    return rows


# --- the model's likelihood of each kit ------------------------------------------------


def kit_log_likelihood(llm: Any, messages: list[dict], name: str, numbers: Sequence[str]) -> float:
    """log P(item list | prompt, name) under the torch model: the tokens from the list's
    opening bracket to its closing one, written as the grammar writes them."""
    import torch

    from assistant.llm.tuning import compact

    tok, model = llm.tokenizer, llm.model
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    answer = compact({"bundles": [{"name": name, "item_ids": list(numbers), "reason": ""}]})
    cut = answer.index('"item_ids":') + len('"item_ids":')
    enc = tok(answer[: answer.index("]") + 1], add_special_tokens=False, return_offsets_mapping=True)
    first = next(i for i, (_, end) in enumerate(enc["offset_mapping"]) if end > cut)
    ids = torch.tensor([list(prompt_ids) + list(enc["input_ids"])], device=model.device)
    with torch.no_grad():
        logp = model(input_ids=ids).logits[0].float().log_softmax(-1)
    start = len(prompt_ids) + first
    target = ids[0, start:]
    return float(logp[start - 1: -1].gather(1, target[:, None]).sum())


def auc(labels: Sequence[bool], scores: Sequence[float]) -> float:
    """ROC AUC (ties count half); NaN when only one class is present."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores)) if len(set(labels)) == 2 else float("nan")


def kit_signals(cases: Sequence[CaseGroups], llm: Any, catalogue: pd.DataFrame, max_size: int,
                affinities: Sequence[G.Affinity], progress: bool) -> dict:
    """How well the model's likelihood of a kit, its coherence and its size tell kits that
    lie inside a true bundle from kits that do not."""
    from prompts import render

    rows = []
    for case, aff in tqdm(list(zip(cases, affinities)), desc="kit likelihood", disable=not progress, leave=False):
        if len(case.kit) < 2:
            continue
        shown = G.prompt_rows(list(case.items), catalogue)
        number = {r["product_id"]: r["number"] for r in shown}
        messages = render("bundle_items", candidates=shown, n_bundles=case.n_bundles, max_size=max_size)
        name = case.llm[0].name if case.llm else G.common_name(case.kit, catalogue)
        kit = set(case.kit)
        lp = kit_log_likelihood(llm, messages, name, [number[i] for i in case.items if i in kit])
        rows.append({"hit": any(kit <= set(t) for t in case.truth), "log_likelihood": lp,
                     "coherence": aff.coherence(case.kit), "minus_size": -len(case.kit)})
    labels = [r["hit"] for r in rows]
    out: dict[str, Any] = {"kits": len(rows), "true_kits": int(sum(labels)),
                           "auc": {f: round(auc(labels, [r[f] for r in rows]), 3)
                                   for f in ("log_likelihood", "coherence", "minus_size")}}
    out["cross_validated_auc"] = cross_validated_auc(rows)
    return out


def cross_validated_auc(rows: Sequence[dict], seed: int = 0) -> dict[str, float]:
    """5-fold logistic regression on coherence and size, with and without the likelihood."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    y = np.array([r["hit"] for r in rows])
    out = {}
    for label, feats in (("coherence + size", ("coherence", "minus_size")),
                         ("coherence + size + likelihood", ("coherence", "minus_size", "log_likelihood"))):
        x = np.array([[r[f] for f in feats] for r in rows])
        folds = StratifiedKFold(5, shuffle=True, random_state=seed)
        p = cross_val_predict(LogisticRegression(max_iter=1000), x, y, cv=folds, method="predict_proba")[:, 1]
        out[label] = round(auc(list(y), list(p)), 3)
    return out


# --- running it ----------------------------------------------------------------------


def collect(chunk: Any, assistant: Any, progress: bool) -> tuple[list[CaseGroups], list[G.Affinity], int]:
    """Each dev session's rule parts, kit and LLM groups, and how many sessions the LLM
    fell back on; checks that ``rule`` and the shipped ``llm+rule`` rebuilt here equal
    what ``bundle_items`` returns."""
    catalogue = assistant.index.catalogue
    max_size = assistant.settings.llm.max_bundle_size
    cases, affinities, fallbacks = [], [], 0
    for c in tqdm(chunk.cases, desc="sessions", disable=not progress, leave=False):
        ids = list(dict.fromkeys(c.items))
        aff = G.Affinity(assistant.index.copurchase.pair_npmi,
                         {i: G.category_levels(catalogue.at[i, "category"]) for i in ids})
        n = G.default_bundle_count(len(ids))
        llm, report = G.llm_groups(assistant, ids, aff, n_bundles=n, max_size=max_size)
        fallbacks += report.fallback  # no valid group: the session joins nothing, as in bundle_items
        kit = G.kit_of(ids, aff)
        rule = G.rule_groups(kit or ids, aff, catalogue, max_size=max_size)
        case = CaseGroups(c.case_id, tuple(ids), tuple(tuple(b) for b in c.bundles), tuple(kit), n,
                          tuple(rule), tuple(llm))
        for combo, mode in ((RULE, "rule"), (SHIPPED, "llm+rule")):
            mine = combine(case, combo, aff, catalogue)
            shipped = [tuple(b.item_ids) for b in assistant.bundle_items(ids, mode=mode)]
            if mine != shipped:
                raise AssertionError(f"session {c.case_id}: {mode} rebuilt {mine}, bundle_items gave {shipped}")
        cases.append(case)
        affinities.append(aff)
    return cases, affinities, fallbacks


def markdown(result: dict) -> str:
    head = ["combination", *MEASURES]
    lines = [f"# `llm+rule` combinations on the `bundlerec-generation` dev split ({result['cases']} sessions)", "",
             "```", result["command"], "```", "",
             f"Adapter: {result['adapter'] or 'none (base model)'}; "
             f"sessions where the LLM gave no valid group: {result['llm_fallbacks']}. "
             "Each cell: mean (Δ vs `rule`, paired t-test p).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["grid"]:
        name = r["combination"] + (" **(shipped `llm+rule`)**" if r["shipped"] else "")
        lines.append("| " + " | ".join([name] + [f"{r[m]['mean']:.3f} ({r[m]['delta']:+.3f}, p {r[m]['p']:.3f})"
                                                  for m in MEASURES]) + " |")
    if "kit_signals" in result:
        k = result["kit_signals"]
        lines += ["", f"Kits ({k['kits']}, {k['true_kits']} inside a true bundle): ROC AUC "
                  + ", ".join(f"{f} {v}" for f, v in k["auc"].items()) + "; cross-validated "
                  + ", ".join(f"{f} {v}" for f, v in k["cross_validated_auc"].items()) + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from assistant.llm.adapter import check_adapter
    from assistant.service import BundleAssistant
    from retrieval.config import Settings, apply_process_defaults
    from retrieval.embeddings import Embedder
    from retrieval.sources import DEFAULT_BUNDLEREC

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=None, help=f"BundleRec folder (default {DEFAULT_BUNDLEREC})")
    parser.add_argument("--adapter", default="smollm2-bundles", help="LoRA adapter ('' for the base model)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--likelihood", action="store_true", help="also score each kit by the model's likelihood")
    parser.add_argument("--out", type=Path, default=Path("eval/results"))
    args = parser.parse_args(argv)
    apply_process_defaults()
    settings = Settings()
    settings.llm.adapter = args.adapter or None
    chunk = load_split("bundlerec-generation", args.data_dir, None, args.seed, None, "dev")
    check_adapter(settings.llm.adapter, chunk)  # an adapter that saw these sessions is refused
    work = default_work_dir()
    embedder = Embedder(cache_dir=work / "cache")
    eval_settings, _ = build_eval_index(chunk.train, "bundlerec-generation", work, embedder, True, settings)
    llm = CachedLLM(eval_settings.llm.model, eval_settings.llm.adapter, eval_settings.llm.backend)
    assistant = BundleAssistant(eval_settings, llm=llm, embedder=embedder)
    cases, affinities, fallbacks = collect(chunk, assistant, True)
    catalogue = assistant.index.catalogue
    command = "python -m eval.llm_rule_grid " + " ".join(argv if argv is not None else sys.argv[1:])
    result: dict[str, Any] = {"command": command.strip(), "cases": len(cases), "seed": args.seed,
                              "adapter": settings.llm.adapter, "llm_fallbacks": fallbacks,
                              "grid": grid(cases, affinities, catalogue)}
    if args.likelihood:
        result["kit_signals"] = kit_signals(cases, llm.real, catalogue, eval_settings.llm.max_bundle_size,
                                            affinities, True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "llm-rule-grid-dev.json").write_text(json.dumps(result, indent=1))
    (args.out / "llm-rule-grid-dev.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
