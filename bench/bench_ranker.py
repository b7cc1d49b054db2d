"""The item ranker: training time on the full Complete Journey data, scoring time for 500
candidates, and `recommend --no-llm` latency with the ranker in the loop.

    python bench/bench_ranker.py [--data-dir DIR] [--runs 50]

With no index in DIR (default /tmp/bench-ranker-cj) it builds the full Complete Journey
index there first (the ranker is trained inside that build, as `bundle-assistant index`
does) and reports the build's ranker stage; with --retrain it also times
:func:`retrieval.ranker.train_ranker` alone on the same data. Writes
bench/results/ranker.json. Targets on 2 CPU cores: training ≤ 180 s, scoring 500
candidates ≤ 15 ms, recommend --no-llm p95 ≤ 100 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _common import peak_rss_mib, percentiles, write  # noqa: E402

from assistant.service import BundleAssistant  # noqa: E402
from retrieval.config import Settings  # noqa: E402
from retrieval.schema import Constraints  # noqa: E402

QUERIES = ["", "taco night", "", "pasta dinner", "", "healthy breakfast", "", "bbq party", "", "school lunch snacks"]


def load_avg() -> float:
    return round(os.getloadavg()[0], 2)


def build(data_dir: Path, seed_cache: Path | None) -> dict:
    from assistant.privacy import pseudonymise
    from retrieval.embeddings import Embedder
    from retrieval.index import build_index
    from retrieval.sources import load_source

    settings = Settings(data_dir=data_dir, chroma_url=None)
    if seed_cache is not None and seed_cache.exists():  # embed nothing the shared index already embedded
        (data_dir / "cache").mkdir(parents=True, exist_ok=True)
        shutil.copy2(seed_cache, data_dir / "cache" / seed_cache.name)
    ds = load_source("completejourney")
    report = build_index(ds, settings, embedder=Embedder(cache_dir=data_dir / "cache"), progress=False,
                         pseudonymise=lambda u: pseudonymise(u, data_dir=data_dir))
    return {"seconds": report.seconds, "skipped": report.skipped, "load_average_after": load_avg()}


def retrain(settings: Settings) -> dict:
    from retrieval.index import Index
    from retrieval.ranker import train_ranker
    from retrieval.sources import load_source

    index = Index(settings)
    ds = load_source("completejourney")
    start = time.perf_counter()
    model = train_ranker(ds.interactions, index.products, index.item_embeddings, settings.ranker)
    return {"seconds": round(time.perf_counter() - start, 2), "mode": model.mode,
            "queries": model.card.get("queries"), "rows": model.card.get("rows"),
            "best_iteration": model.card.get("best_iteration"), "load_average_after": load_avg()}


def scoring(assistant: BundleAssistant, users: list[str], n: int = 30) -> dict:
    """Features + LightGBM scores of exactly 500 pool candidates, and the itemised reasons
    of the first ``explain_k`` of them."""
    from retrieval.pool import build_pool
    from retrieval.ranker import features

    ranker = assistant.index.ranker
    cat = ranker.catalogue
    score_s, pool_s, explain_s = [], [], []
    for i in range(n):
        profile = assistant.profile(users[i % len(users)])
        anchor = profile.favourite_items[i % 5]
        ctx = ranker.context(user_key=profile.user_key, anchors=[anchor])
        t = time.perf_counter()
        pool = build_pool(ranker.data, ctx, ranker.cfg)
        pool_s.append(time.perf_counter() - t)
        for row in cat.by_popularity.tolist():  # pad (or cut) to exactly 500 candidates
            if len(pool) >= 500:
                break
            pool.setdefault(int(row), ["popular"])
        rows = np.array(sorted(pool)[:500], dtype=np.int64)
        flags = [pool[r] for r in rows.tolist()]
        t = time.perf_counter()
        X = features(ranker.data, ctx, rows, flags)
        raw = ranker.model.raw(X)
        score_s.append(time.perf_counter() - t)
        assert len(raw) == 500
        k = ranker.cfg.explain_k
        t = time.perf_counter()
        ranker.model.contributions(X[np.argsort(-raw)[:k]])
        explain_s.append(time.perf_counter() - t)
    return {"candidates": 500, "model": ranker.model.mode, "score_s": percentiles(score_s),
            "pool_exact_s": percentiles(pool_s), "explain_first_k_s": percentiles(explain_s),
            "explain_k": ranker.cfg.explain_k}


def recommend(assistant: BundleAssistant, users: list[str], runs: int) -> dict:
    latencies, stages = [], []
    for i in range(runs):
        user = users[i % len(users)]
        profile = assistant.profile(user)
        query = QUERIES[i % len(QUERIES)]
        anchors = [] if query else [profile.favourite_items[i % 5]]
        t = time.perf_counter()
        rec = assistant.recommend(user_id=user, query=query, anchors=anchors, constraints=Constraints(), k=5,
                                  use_llm=False)
        latencies.append(time.perf_counter() - t)
        stages.append(rec.timings)
    keys = sorted({k for s in stages for k in s})
    return {"latency_s": percentiles(latencies),
            "stage_means_s": {k: round(sum(s.get(k, 0) for s in stages) / len(stages), 4) for k in keys},
            "requests": "half anchored (a usual item of the household), half a short need; k=5, rules only"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", type=Path, default=Path("/tmp/bench-ranker-cj"))
    ap.add_argument("--seed-cache", type=Path, default=None,
                    help="an embedding_cache.npz to copy into a new build's cache (skips re-embedding)")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--retrain", action="store_true", help="also time train_ranker alone")
    args = ap.parse_args()
    out: dict = {"load_average_start": load_avg()}
    out["build"] = build(args.data_dir, args.seed_cache)
    settings = Settings(data_dir=args.data_dir, chroma_url=None)
    assistant = BundleAssistant(settings)
    card_path = assistant.index.folder / "ranker_card.json"
    card = json.loads(card_path.read_text()) if card_path.exists() else {}
    out["training"] = {
        "build_stage_s": out["build"]["seconds"].get("ranker"),
        "card": {k: card.get(k) for k in ("mode", "queries", "train_queries", "valid_queries", "rows",
                                          "best_iteration", "seconds_features", "seconds_fit", "seconds_total",
                                          "valid", "pool", "split")},
        "threads": settings.ranker.num_threads,
    }
    if args.retrain:
        out["training"]["retrain"] = retrain(settings)
    assistant.warm_up()
    users = [str(u) for u in (1, 7, 12, 20, 33, 45, 58, 71, 86, 99)]
    out["scoring"] = scoring(assistant, users)
    out["recommend_no_llm"] = recommend(assistant, users, args.runs)
    out["targets"] = {"training_s": 180, "score_500_s": 0.015, "recommend_no_llm_p95_s": 0.1}
    out["load_average_end"] = load_avg()
    out["peak_rss_mib"] = peak_rss_mib()
    write("ranker", out)


if __name__ == "__main__":
    main()
