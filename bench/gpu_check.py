"""GPU check: load the LLM on CUDA through accelerate and run `recommend` ten times.

    python bench/gpu_check.py [--model PATH_OR_ID] [--data-dir DIR] [--runs 10]

Prints device, dtype, load time, tokens/s and latency, and writes
bench/results/gpu_check.json. Without CUDA it says so and exits with status 3. When no
index exists in --data-dir it builds a small Complete Journey slice there first.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="causal LM path or hub id (default: packaged SmolLM2)")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device is visible (torch.cuda.is_available() is False); "
              "run this on a machine with an NVIDIA GPU and a CUDA build of torch.", file=sys.stderr)
        return 3

    from _common import percentiles, write

    from assistant.llm import load_llm
    from assistant.privacy import pseudonymise
    from assistant.service import BundleAssistant
    from retrieval.config import Settings
    from retrieval.index import build_index, read_current
    from retrieval.schema import Constraints
    from retrieval.sources import load_source

    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    settings = Settings(data_dir=data_dir)
    if read_current(data_dir) is None:
        ds = load_source("completejourney", settings=settings, limit=30)
        build_index(ds, settings, pseudonymise=lambda u: pseudonymise(u, data_dir=data_dir), progress=False)

    t = time.perf_counter()
    llm = load_llm(args.model, device="cuda")
    load_s = time.perf_counter() - t
    assistant = BundleAssistant(settings, llm=llm)
    assistant.recommend(query="warm-up", k=3, mode="llm")
    latencies, tokens, gen_s, fallbacks = [], 0, 0.0, 0
    queries = ["taco night for four", "pasta dinner", "healthy breakfast", "bbq party", "movie night snacks"]
    for i in range(args.runs):
        t = time.perf_counter()
        rec = assistant.recommend(query=queries[i % len(queries)], constraints=Constraints(budget=30), k=5,
                                  mode="llm+rule")
        latencies.append(time.perf_counter() - t)
        tokens += rec.llm.new_tokens
        gen_s += rec.llm.latency_s
        fallbacks += int(rec.llm.fallback)
    result = {
        "device": str(llm.device), "gpu": torch.cuda.get_device_name(0), "dtype": str(llm.dtype),
        "model": llm.name, "load_s": round(load_s, 2),
        "tokens_per_s": round(tokens / gen_s, 1) if gen_s else None,
        "recommend_latency_s": percentiles(latencies), "fallbacks": fallbacks,
        "peak_gpu_mem_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1),
    }
    write("gpu_check", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
