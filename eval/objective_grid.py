"""The shopper objective's business weights on the cj-completion dev split.

    python -m eval.objective_grid [--cases 500] [--seed 0] [--sales 0,0.05,0.1,0.15] [--margin 0.1,0.2,0.3]

For each (sales, margin) cell, preference and complementarity share the rest at 0.4 :
0.25; the system ``rule`` runs the dev cases with those weights. Prints type NDCG@10 and
the mean top-bundle margin per cell, and the best baseline's score, as one JSON object.
Dev cases only: the index is built from the dev split's training weeks.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .completion import CompletionRunner, score_completion_block
from .run import CHOICES_FILE, CachedLLM, build_eval_index, dataset_key, default_work_dir, load_split, read_choices

BASELINE = "buy-again+cooccurrence"


def cell_weights(sales: float, margin: float) -> dict[str, float]:
    rest = 1.0 - sales - margin
    return {"preference": rest * 0.4 / 0.65, "complementarity": rest * 0.25 / 0.65, "margin": margin, "sales": sales}


def main(argv: list[str] | None = None) -> int:
    from assistant.service import BundleAssistant
    from retrieval.config import apply_process_defaults
    from retrieval.embeddings import Embedder

    from .baselines import BaselineData

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sales", default="0,0.05,0.1,0.15", help="sales weights, comma-separated")
    parser.add_argument("--margin", default="0.1,0.2,0.3", help="margin weights, comma-separated")
    args = parser.parse_args(argv)
    apply_process_defaults()
    chunk = load_split("cj-completion", None, args.cases, args.seed, None, "dev")
    work = default_work_dir()
    embedder = Embedder(cache_dir=work / "cache")
    settings, _ = build_eval_index(chunk.train, "cj-completion", work, embedder, True)
    assistant = BundleAssistant(settings, llm=CachedLLM(), embedder=embedder)
    data = BaselineData.from_index(assistant.index, chunk.train.interactions)
    recorded = read_choices(Path("eval/results") / CHOICES_FILE, "cj-completion",
                            dataset_key("cj-completion", None, None), args.seed)
    runner = CompletionRunner("cj-completion", chunk, assistant, data, args.seed, False,
                              recorded["choices"] if recorded else None)
    runner.baselines = {BASELINE: runner.baselines[BASELINE]}
    runner.run_baselines()
    cells = [(float(s), float(m)) for s in args.sales.split(",") for m in args.margin.split(",")]
    names = []
    for sales, margin in cells:
        names.append(runner.run_variant("rule", chunk.cases, cell_weights(sales, margin),
                                        name=f"system:sales={sales:g},margin={margin:g}"))
        print(f"{names[-1]} done", file=sys.stderr, flush=True)
    block = score_completion_block(runner, [BASELINE, *names], chunk.cases, ["type"], ("type", "ndcg@10"), args.seed)
    scores = block["levels"]["type"]["scores"]
    print(json.dumps({name: {"ndcg@10": round(scores[name]["ndcg@10"]["mean"], 4),
                             "top_bundle_margin": block["beyond_accuracy"][name]["expected_bundle_margin"]}
                      for name in [BASELINE, *names]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
