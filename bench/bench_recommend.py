"""`recommend` latency with and without the LLM, LLM tokens/s and valid-bundle rate.

    python bench/bench_recommend.py [--data-dir DIR] [--runs-rule 50] [--runs-llm 10]

Uses an existing index (default: the app's data dir; build it with `bundle-assistant
index`). Writes bench/results/recommend.json. Two request paths are timed:

* ``no_llm`` / ``with_llm``: ``recommend`` with a query and constraints (no parsed need);
* ``parsed_no_llm``: ``recommend_text`` on a shopper's message, as ``recommend --parse
  --no-llm`` and the chat run it: the message is understood into a need, its roles are
  composed into bundles, then reranked.

Targets on a 2-core CPU: --no-llm p95 ≤ 0.15 s on both paths; with the LLM p95 ≤ 15 s.
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

from assistant.service import BundleAssistant  # noqa: E402
from retrieval.config import Settings  # noqa: E402
from retrieval.schema import Constraints  # noqa: E402

REQUESTS = [
    ("taco night for four", Constraints(budget=25, exclude=["dairy"])),
    ("pasta dinner", Constraints(budget=15)),
    ("healthy breakfast", Constraints()),
    ("bbq party", Constraints(budget=40)),
    ("school lunch snacks", Constraints(exclude=["nuts"])),
    ("movie night snacks", Constraints(budget=12)),
    ("chicken soup", Constraints()),
    ("baby care essentials", Constraints(budget=30)),
    ("coffee and pastries", Constraints()),
    ("salad for two", Constraints(exclude=["meat"])),
]

MESSAGES = [
    "tacos for four, under $25, no dairy",
    "pasta dinner under $15",
    "healthy breakfast",
    "bbq party for 8 under $40",
    "school lunch snacks, no nuts",
    "movie night snacks under $12",
    "chicken soup",
    "vegan dinner for two",
    "coffee and pastries for the office",
    "keto dinner",
    "picnic for four",
    "baby care essentials under $30",
]


def run_parsed(assistant: BundleAssistant, users: list[str | None], n: int) -> dict:
    latencies, stages = [], []
    for i in range(n):
        t = time.perf_counter()
        rec = assistant.recommend_text(MESSAGES[i % len(MESSAGES)], users[i % len(users)], k=5, use_llm=False)
        latencies.append(time.perf_counter() - t)
        stages.append(rec.timings)
    return {"latency_s": percentiles(latencies), "messages": len(MESSAGES),
            "stage_means_s": {k: round(sum(s.get(k, 0) for s in stages) / len(stages), 4) for k in stages[0]}}


def run(assistant: BundleAssistant, users: list[str | None], n: int, use_llm: bool) -> dict:
    latencies, stages, tokens, token_s, proposed, valid_before = [], [], 0, 0.0, 0, 0
    fallbacks = 0
    for i in range(n):
        query, constraints = REQUESTS[i % len(REQUESTS)]
        user = users[i % len(users)]
        t = time.perf_counter()
        rec = assistant.recommend(user_id=user, query=query, constraints=constraints, k=5, use_llm=use_llm)
        latencies.append(time.perf_counter() - t)
        stages.append(rec.timings)
        if use_llm:
            tokens += rec.llm.new_tokens
            token_s += rec.llm.latency_s
            proposed += rec.llm.proposed
            valid_before += rec.llm.valid_before_repair
            fallbacks += int(rec.llm.fallback)
    out = {"latency_s": percentiles(latencies),
           "stage_means_s": {k: round(sum(s.get(k, 0) for s in stages) / len(stages), 4) for k in stages[0]}}
    if use_llm:
        out.update({"llm_tokens_per_s": round(tokens / token_s, 2) if token_s else None,
                    "llm_bundles_proposed": proposed,
                    "llm_valid_before_repair_rate": round(valid_before / proposed, 3) if proposed else None,
                    "llm_fallbacks": fallbacks})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--runs-rule", type=int, default=50)
    parser.add_argument("--runs-llm", type=int, default=10)
    args = parser.parse_args()
    settings = Settings(data_dir=args.data_dir) if args.data_dir else Settings()
    assistant = BundleAssistant(settings)
    catalogue_users = assistant.index.store.count(assistant.index.profiles_collection)
    t = time.perf_counter()
    llm = assistant.llm
    load_s = time.perf_counter() - t
    # the demo personas: a few real households, plus guests
    users = [None, "1", "2", None, "7", "8"]
    users = [u for u in users if u is None or _known(assistant, u)] or [None]
    assistant.recommend(query="warm-up", k=3, use_llm=False)
    assistant.recommend_text("warm-up dinner", k=3, use_llm=False)
    assistant.recommend(query="warm-up", k=3, use_llm=True)
    result = {
        "index": {"source": assistant.index.source, "products": len(assistant.index.products),
                  "profiles": catalogue_users},
        "llm": {"model": llm.name, "backend": llm.backend, "device": str(llm.device), "dtype": str(llm.dtype),
                "load_s": round(load_s, 2)},
        "load_average_start": list(os.getloadavg()),
        "no_llm": run(assistant, users, args.runs_rule, use_llm=False),
        "parsed_no_llm": run_parsed(assistant, users, args.runs_rule),
        "with_llm": run(assistant, users, args.runs_llm, use_llm=True),
        "peak_rss_mib": peak_rss_mib(),
        "load_average_end": list(os.getloadavg()),
        "targets": {"no_llm_p95_s": 0.15, "parsed_no_llm_p95_s": 0.15, "with_llm_p95_s": 15.0},
    }
    write("recommend", result)


def _known(assistant: BundleAssistant, user: str) -> bool:
    try:
        assistant.profile(user)
        return True
    except Exception:
        return False


if __name__ == "__main__":
    main()
