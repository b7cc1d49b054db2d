"""Merchandiser ideas: time to generate 10 ideas, without and with the LLM.

    python bench/bench_ideas.py [--data-dir DIR] [--runs-rule 30] [--runs-llm 5] [--k 10]

Uses an existing index (the full Complete Journey index for the README figure). The
first call of a process (loading role tables, the transaction history and, for themes
no occasion covers, embedding the catalogue's type names once) is reported apart as
``cold_s``; the percentiles are over the warm calls that follow. Writes
bench/results/ideas.json. Target on a 2-core CPU: without the LLM, p95 ≤ 3 s.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import peak_rss_mib, percentiles, write  # noqa: E402

from assistant.merchandiser import max_pairwise_jaccard, mean_margin  # noqa: E402
from assistant.service import BundleAssistant  # noqa: E402
from retrieval.config import Settings  # noqa: E402

THEMES = [
    "back-to-school lunch bundles, margin at least 30%",
    "taco night",
    "summer bbq, 3 to 5 items",
    "movie night snacks under $15",
    "healthy breakfast",
    "game day party, margin at least 25%",
    "baby care essentials",
    "coffee and pastries for the office",
    "pasta night for stores' endcaps",
    "cleaning supplies",
]


def run(assistant: BundleAssistant, n: int, k: int, use_llm: bool) -> dict:
    latencies, stages, shown, short, jaccard, margins, llm_valid = [], [], 0, 0, 0.0, [], 0
    for i in range(n):
        theme = THEMES[i % len(THEMES)]
        t = time.perf_counter()
        result = assistant.ideas(theme, k=k, use_llm=use_llm)
        latencies.append(time.perf_counter() - t)
        stages.append(result.timings)
        shown += len(result.ideas)
        short += int(len(result.ideas) < k)
        jaccard = max(jaccard, max_pairwise_jaccard(result))
        margins.append(mean_margin(result))
        llm_valid += int(result.llm.get("valid", 0) or 0)
    keys = sorted({key for s in stages for key in s})
    out = {"latency_s": percentiles(latencies),
           "stage_means_s": {key: round(sum(s.get(key, 0.0) for s in stages) / len(stages), 4) for key in keys},
           "ideas_per_request": round(shown / n, 2), "requests_with_fewer_than_k": short,
           "max_pairwise_type_jaccard": round(jaccard, 3), "mean_idea_margin": round(sum(margins) / n, 4)}
    if use_llm:
        out["llm_valid_bundles"] = llm_valid
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, help="index folder (default: $BUNDLE_DATA_DIR)")
    parser.add_argument("--runs-rule", type=int, default=30)
    parser.add_argument("--runs-llm", type=int, default=5)
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    settings = Settings(**({"data_dir": args.data_dir} if args.data_dir else {}))
    assistant = BundleAssistant(settings)
    t = time.perf_counter()
    first = assistant.ideas(THEMES[0], k=args.k, use_llm=False)
    cold = time.perf_counter() - t
    for theme in THEMES:  # each theme once: per-process caches (type-name embeddings) are filled
        assistant.ideas(theme, k=args.k, use_llm=False)
    payload = {
        "index": str(settings.data_dir), "products": int(len(assistant.index.products)), "k": args.k,
        "themes": THEMES, "cold_s": round(cold, 3), "cold_timings": first.timings,
        "rule": run(assistant, args.runs_rule, args.k, use_llm=False),
    }
    if args.runs_llm > 0:
        assistant.ideas(THEMES[0], k=args.k, use_llm=True)  # loads the model
        payload["llm"] = run(assistant, args.runs_llm, args.k, use_llm=True)
    payload["peak_rss_mib"] = peak_rss_mib()
    payload["target"] = "rule p95 <= 3 s (2-core CPU)"
    write("ideas", payload)


if __name__ == "__main__":
    main()
