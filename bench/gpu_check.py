"""GPU check: the tuned LLM on CUDA through accelerate — `recommend` latency at batch 1,
generation throughput at batch 8, and the LoRA training time on the full mined set.

    python bench/gpu_check.py [--adapter smollm2-bundles|none] [--data-dir DIR] [--runs 10]
                              [--skip-training] [--train-steps N]

Stages run in that order and the results file is rewritten after each one, so a run cut
short by a time limit still leaves what it measured: bench/results/gpu_check.json (and
$OUT/gpu_check.json when $OUT is set, for the device runner). Without CUDA it says so and
exits with status 3. When no index exists in --data-dir it builds a small Complete
Journey slice there first (30 households, ~1 minute).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

QUERIES = ["taco night for four", "pasta dinner", "healthy breakfast", "bbq party", "movie night snacks"]


def _save(result: dict) -> None:
    from _common import write

    write("gpu_check", result)
    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "gpu_check.json").write_text(json.dumps(result, indent=2, default=str))


def _index(data_dir: Path):
    from assistant.privacy import pseudonymise
    from retrieval.config import Settings
    from retrieval.index import build_index, read_current
    from retrieval.sources import load_source

    settings = Settings(data_dir=data_dir)
    if read_current(data_dir) is None:
        ds = load_source("completejourney", settings=settings, limit=30)
        build_index(ds, settings, pseudonymise=lambda u: pseudonymise(u, data_dir=data_dir), progress=False)
    return settings


def latency(llm, settings, runs: int) -> dict:
    """p50/p95 of a whole `recommend` call (retrieval + LLM + rerank), one request at a time."""
    import torch
    from _common import percentiles

    from assistant.service import BundleAssistant
    from retrieval.schema import Constraints

    assistant = BundleAssistant(settings, llm=llm)
    assistant.recommend(query="warm-up", k=3, mode="llm")
    latencies, tokens, gen_s, fallbacks, valid, proposed = [], 0, 0.0, 0, 0, 0
    for i in range(runs):
        t = time.perf_counter()
        rec = assistant.recommend(query=QUERIES[i % len(QUERIES)], constraints=Constraints(budget=30), k=5,
                                  mode="llm+rule")
        torch.cuda.synchronize()
        latencies.append(time.perf_counter() - t)
        tokens += rec.llm.new_tokens
        gen_s += rec.llm.latency_s
        fallbacks += int(rec.llm.fallback)
        valid += rec.llm.valid_before_repair
        proposed += rec.llm.proposed
    return {"recommend_latency_s": percentiles(latencies), "tokens_per_s_batch1": round(tokens / gen_s, 1)
            if gen_s else None, "fallbacks": fallbacks,
            "valid_before_repair": round(valid / proposed, 3) if proposed else None}


def throughput(llm, batch: int = 8, max_new_tokens: int = 128) -> dict:
    """Greedy generation for ``batch`` grouping prompts at once (left-padded)."""
    import torch
    from bench_decode import dev_prompts

    from prompts import render

    prompts = dev_prompts(batch)
    tok = llm.tokenizer
    texts = [tok.apply_chat_template(render("bundle_items", candidates=p["rows"], n_bundles=p["n_bundles"],
                                            max_size=4), add_generation_prompt=True, tokenize=False)
             for p in prompts]
    side = tok.padding_side
    tok.padding_side = "left"
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(llm.model.device)
    tok.padding_side = side
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    with torch.inference_mode():
        llm.model.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=pad)  # warm-up
        torch.cuda.synchronize()
        t = time.perf_counter()
        out = llm.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - t
    produced = 0  # tokens each row produced, up to and including its end-of-sequence token
    for row in out[:, enc["input_ids"].shape[1]:].tolist():
        ends = [i for i, token in enumerate(row) if token == tok.eos_token_id]
        produced += ends[0] + 1 if ends else len(row)
    return {"batch": len(texts), "seconds": round(seconds, 3), "new_tokens": produced,
            "tokens_per_s": round(produced / seconds, 1), "max_new_tokens": max_new_tokens}


def training(steps: int | None) -> dict:
    from assistant.llm import tuning

    out = Path(tempfile.mkdtemp(prefix="gpu-lora-"))
    t = time.perf_counter()
    from eval.tuning_data import training_split

    train, info, held_out = training_split(tuning_data(), seed=0, holdout_dev=True)
    card = tuning.run_training(train, info, held_out, out / "full", steps=steps, n_subset=None, seed=0,
                               device="cuda", progress=False)
    tr = card["training"]
    return {"wall_s": round(time.perf_counter() - t, 1), "train_s": tr["seconds"], "examples": tr["examples"],
            "steps": tr["steps"], "batch": tr["batch"], "tokens": tr["tokens"],
            "loss_first": tr["losses"][0], "loss_last": tr["losses"][-1], "mined": card["data"]["mined"],
            "adapter_dir": str(out / "full")}


def tuning_data() -> Path:
    from retrieval.sources import DEFAULT_BUNDLEREC

    return DEFAULT_BUNDLEREC


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="causal LM path or hub id (default: packaged SmolLM2)")
    parser.add_argument("--adapter", default="smollm2-bundles", help="LoRA adapter, or 'none' for the base model")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--train-steps", type=int, default=None, help="default: one pass over the full set")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device is visible (torch.cuda.is_available() is False); "
              "run this on a machine with an NVIDIA GPU and a CUDA build of torch. The GPU check is still owed.",
              file=sys.stderr)
        return 3

    from assistant.llm import load_llm

    adapter = None if args.adapter == "none" else args.adapter
    result: dict = {"gpu": torch.cuda.get_device_name(0), "adapter": adapter, "stages_done": []}
    t = time.perf_counter()
    llm = load_llm(args.model, device="cuda", adapter=adapter)
    result.update(device=str(llm.device), dtype=str(llm.dtype), model=llm.name,
                  load_s=round(time.perf_counter() - t, 2))
    settings = _index(args.data_dir or Path(tempfile.mkdtemp(prefix="gpu-check-")))
    result["batch1"] = latency(llm, settings, args.runs)
    result["stages_done"].append("batch1")
    _save(result)
    result["batch8"] = throughput(llm)
    result["stages_done"].append("batch8")
    result["peak_gpu_mem_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    _save(result)
    if not args.skip_training:
        del llm
        torch.cuda.empty_cache()
        result["lora_full_set"] = training(args.train_steps)
        result["stages_done"].append("training")
        result["peak_gpu_mem_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        _save(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
