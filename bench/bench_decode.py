"""Decode speed on CPU, side by side in one run: fp32, bf16, torch int8 dynamic
quantisation of the Linear layers, and ONNX Runtime GenAI (int4 and fp32; from PyPI, no build).

    python bench/bench_decode.py [--prompts 8] [--adapter smollm2-bundles|none] [--max-new-tokens 150]

Every backend answers the same ``bundle_items`` prompts (sessions of the BundleRec
Electronic *dev* split of seed 0: carved from training data, never a test session)
through the production path, :func:`assistant.proposer.propose_with_llm`: JSON
constrained to the proposal schema (llguidance for both: in-process for torch, inside ONNX Runtime
GenAI), then validated and repaired. Reported per backend: tokens/s, latency, tokens per
proposal, parse rate and valid-before-repair (bundles that needed no repair / bundles
proposed). The ONNX model is exported once from the local HF folder with
``onnxruntime_genai.models.builder`` (offline) and cached beside the converted model.
Writes bench/results/decode.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

BACKENDS = ("fp32", "bf16", "int8-dynamic", "ort-genai-int4", "ort-genai-fp32")


def dev_prompts(n: int, max_items: int = 10) -> list[dict]:
    """The first ``n`` dev sessions (seed 0) with at most ``max_items`` items, as the
    grouping prompt's numbered rows."""
    import eval.protocols as P
    from assistant.grouping import default_bundle_count, prompt_rows
    from retrieval.sources import DEFAULT_BUNDLEREC, load_source

    ds = load_source("bundlerec", DEFAULT_BUNDLEREC)
    dev = P.bundlerec_generation_dev_of(P.bundlerec_generation(ds, 0), 0)
    catalogue = ds.products.set_index("product_id")
    out = []
    for case in dev.cases:
        if len(case.items) > max_items:
            continue
        rows = prompt_rows(list(case.items), catalogue)
        out.append({"case": case.case_id, "rows": rows, "n_bundles": default_bundle_count(len(case.items)),
                    "intents": list(case.intents)})
        if len(out) >= n:
            break
    return out


def hf_folder(adapter: str | None) -> Path:
    """The plain HF folder of the model under test (the adapter merged in), for the export."""
    from assistant.llm.gguf import convert_gguf, packaged_gguf
    from assistant.llm.loading import merged_folder

    base, _ = convert_gguf(packaged_gguf())
    return base if adapter is None else merged_folder(base, adapter)[0]


def load_backend(name: str, adapter: str | None) -> tuple[Any, dict]:
    import torch

    from assistant.llm.loading import load_llm

    if name.startswith("ort-genai"):
        from transformers import AutoTokenizer

        from assistant.llm.ort import OrtLLM, export_onnx

        hf = hf_folder(adapter)
        precision = name.rsplit("-", 1)[1]  # int4 or fp32
        onnx_dir, export_s = export_onnx(hf, precision)
        return OrtLLM(f"ort-{precision}:{hf.name}", onnx_dir, AutoTokenizer.from_pretrained(hf)), {
            "export_s": round(export_s, 1), "onnx_dir": str(onnx_dir)}
    llm = load_llm(device="cpu", adapter=adapter)
    if name == "bf16":
        llm.model = llm.model.to(torch.bfloat16)
    elif name == "int8-dynamic":
        from torch.ao.quantization import quantize_dynamic

        llm.model = quantize_dynamic(llm.model, {torch.nn.Linear}, dtype=torch.qint8)
    llm.dtype = next(llm.model.parameters()).dtype if name != "int8-dynamic" else torch.qint8
    return llm, {}


def run_backend(name: str, adapter: str | None, prompts: list[dict], max_new_tokens: int, timeout_s: float) -> dict:
    from assistant.proposer import propose_with_llm

    t = time.perf_counter()
    try:
        model, extra = load_backend(name, adapter)
    except Exception as e:  # report a backend that cannot run instead of stopping the run
        return {"backend": name, "error": f"{type(e).__name__}: {e}"[:600]}
    load_s = time.perf_counter() - t

    def one(p: dict):
        allowed = {r["product_id"] for r in p["rows"]}
        return propose_with_llm(model, "bundle_items", {}, p["rows"], lambda pid: pid in allowed,
                                n_bundles=p["n_bundles"], min_size=2, max_size=4,
                                max_new_tokens=max_new_tokens, timeout_s=timeout_s)

    one(prompts[0])  # warm-up: first-call costs (llguidance tokenizer, ORT session) are not decode speed
    reports, names = [], []
    for p in prompts:
        res = one(p)
        reports.append(res.report)
        names.append([b.name for b in res.bundles])
    tokens = sum(r.new_tokens for r in reports)
    seconds = sum(r.latency_s for r in reports)
    proposed = sum(r.proposed for r in reports)
    return {
        "backend": name, "model": getattr(model, "name", name), "load_s": round(load_s, 2), **extra,
        "prompts": len(reports), "tokens": tokens, "seconds": round(seconds, 2),
        "tokens_per_s": round(tokens / seconds, 2) if seconds else None,
        "latency_s": {"mean": round(seconds / len(reports), 2), "max": round(max(r.latency_s for r in reports), 2)},
        "tokens_per_proposal": round(tokens / len(reports), 1),
        "parsed": sum(r.proposed > 0 for r in reports), "proposed": proposed,
        "valid_before_repair": round(sum(r.valid_before_repair for r in reports) / proposed, 3) if proposed else 0.0,
        "fallbacks": sum(r.fallback for r in reports), "errors": sorted({r.error for r in reports if r.error})[:3],
        "names": names[:4],
    }


def main() -> int:
    import torch
    from _common import write

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--adapter", default="smollm2-bundles", help="LoRA adapter, or 'none' for the base model")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--max-new-tokens", type=int, default=150)
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    adapter = None if args.adapter == "none" else args.adapter
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    prompts = dev_prompts(args.prompts)
    started = os.getloadavg()
    rows = [run_backend(b.strip(), adapter, prompts, args.max_new_tokens, args.timeout)
            for b in args.backends.split(",") if b.strip()]
    valid = [r for r in rows if "error" not in r and r["valid_before_repair"] >= 0.95 and r["fallbacks"] == 0]
    # by seconds per proposal, not tokens/s: the torch backend feeds the grammar's forced
    # tokens in one pass, so its tokens/s counts tokens that cost no decoding step
    fastest = min(valid, key=lambda r: r["latency_s"]["mean"])["backend"] if valid else None
    write("decode", {"adapter": adapter, "prompts": len(prompts), "cases": [p["case"] for p in prompts],
                     "max_new_tokens": args.max_new_tokens, "threads": torch.get_num_threads(),
                     "load_average_start": [round(x, 2) for x in started],
                     "load_average_end": [round(x, 2) for x in os.getloadavg()],
                     "backends": rows, "fastest_valid": fastest,
                     "rule": "lowest mean seconds per proposal among backends with valid-before-repair"
                             " >= 0.95 and no fallback"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
