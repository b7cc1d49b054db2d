"""Run one offline evaluation protocol end to end and write its results.

``run_protocol`` loads the data, splits it (:mod:`eval.protocols`; ``split="dev"`` carves
the dev split out of the training part), builds the eval's own index from the training
part only (in its own folder under ``work_dir``), runs the baselines
(:mod:`eval.baselines`) and the system variants through
:class:`~assistant.service.BundleAssistant` — exactly the calls the app makes — on the
same cases (:mod:`eval.completion`, :mod:`eval.generation`), scores them
(:mod:`eval.metrics`) and writes JSON, markdown and plots (:mod:`eval.report`), with the
run's provenance (:mod:`eval.provenance`).

Tuned baselines. ``tune_baselines=True`` (dev split only) tries each tunable baseline's
grid on the dev cases and records the choice in ``dev-choices.json`` (in ``out`` unless
``choices_path`` says otherwise); every later run of the protocol — dev or test — reads
its parameters from there. A test run without a recorded dev choice uses the documented
defaults and says so in its JSON (``baseline_choices.source``).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from platformdirs import user_cache_dir

from retrieval.config import Settings, apply_process_defaults
from retrieval.schema import Dataset

from .completion import (  # noqa: F401  (re-exported: the eval's public names live here too)
    CUTOFF,
    DEPTH,
    KS,
    MARGIN_WEIGHTS,
    RECOMMEND_K,
    as_run,
    objective_with_margin,
    paired,
    system_ranking,
    type_list,
)
from .protocols import MAIN_METRIC, PROTOCOLS, SPLITS, VARIANTS, Split, system_name, train_fingerprint  # noqa: F401
from .provenance import clean, command_line, git_commit, versions

LLM_TIMEOUT_S = 900.0  # measure the model, not a busy shared CPU (minutes per call under heavy load)
DEFAULT_CASES = {"cj-completion": 500, "bundlerec-completion": None, "bundlerec-generation": None}
DEFAULT_LLM_CASES = {"cj-completion": 100, "bundlerec-completion": 60, "bundlerec-generation": None}
DEFAULT_TRADEOFF_CASES = 200
CHOICES_FILE = "dev-choices.json"


def default_work_dir() -> Path:
    return Path(user_cache_dir("bundle-assistant")) / "eval"


# --- the LLM, memoised --------------------------------------------------------------


class CachedLLM:
    """The real model, loaded on first use, with its structured answers memoised.

    Greedy decoding makes the answer a function of the prompt, so the ``llm+rule``
    variant — which sends the very prompt the ``llm`` variant sent — reuses it instead of
    generating again. Timed-out answers are not kept. ``seconds`` lists the time of every
    real generation (for the timings block)."""

    def __init__(self, model: str | None = None, adapter: str | None = None, backend: str = "torch"):
        self.model = model
        self.adapter = adapter
        self.backend = backend
        self._llm = None
        self._memo: dict[str, object] = {}
        self.seconds: list[float] = []

    @property
    def real(self):
        if self._llm is None:
            from assistant.llm import get_llm

            self._llm = get_llm(self.model, adapter=self.adapter, backend=self.backend)
        return self._llm

    @property
    def name(self) -> str:
        return self.real.name

    @property
    def device(self) -> str:
        return self.real.device

    def generate_structured(self, messages, output_type, **kwargs):
        key = json.dumps([list(messages), output_type.model_json_schema(), sorted(kwargs.items())],
                         sort_keys=True, default=str)
        if key in self._memo:
            return self._memo[key]
        start = time.perf_counter()
        result = self.real.generate_structured(messages, output_type, **kwargs)
        self.seconds.append(time.perf_counter() - start)
        if not result.timed_out:
            self._memo[key] = result
        return result

    def __getattr__(self, name):  # chat, stream, tokenizer, ...: the real model's
        return getattr(self.real, name)


# --- building the eval's own index --------------------------------------------------


def eval_settings(index_dir: Path, base: Settings | None = None) -> Settings:
    settings = (base or Settings()).model_copy(deep=True)
    settings.data_dir = Path(index_dir)
    settings.chroma_url = None  # the eval's index lives in its own folder, never a shared server
    settings.llm.timeout_s = max(settings.llm.timeout_s, LLM_TIMEOUT_S)
    return settings


def build_eval_index(train: Dataset, protocol: str, work_dir: Path, embedder, progress: bool,
                     base: Settings | None = None) -> tuple[Settings, dict]:
    """Build (or reuse) the index of ``train`` in ``work_dir/<protocol>-<hash of train>``.

    The folder name carries a hash of everything in the training data (extras included),
    so a different split can never pick up another split's statistics."""
    from assistant.privacy import pseudonymise
    from retrieval.index import build_index

    fp = train_fingerprint(train)
    settings = eval_settings(Path(work_dir) / f"{protocol}-{fp[:12]}", base)
    # (a dev split's training data hashes differently, so it gets its own folder too)
    report = build_index(train, settings, embedder=embedder, progress=progress,
                         pseudonymise=lambda u: pseudonymise(u, data_dir=settings.data_dir))
    return settings, {"train_fingerprint": fp, "index_dir": str(settings.data_dir),
                      "reused": report.skipped, "seconds": report.seconds}


# --- dev choices ----------------------------------------------------------------------


def dataset_key(protocol: str, data_dir: Path | str | None, limit: int | None) -> str:
    """Which data a dev choice was made on: the source (BundleRec: the folder's name) and
    the ``--limit`` slice, if any."""
    name = "completejourney" if protocol == "cj-completion" else Path(data_dir or "electronic").name
    return f"{name}[limit={limit}]" if limit else name


def read_choices(path: Path, protocol: str, dataset: str, seed: int) -> dict | None:
    """The recorded dev choice for this protocol, data and seed, or None.

    Complete Journey's dev split (weeks 39–44) is the same training data whatever the seed,
    so a choice made at any seed is valid for every test seed. A BundleRec dev split is
    carved from one seed's training part and may hold another seed's test bundles: only
    the same seed's choice is used."""
    if not path.exists():
        return None
    entries = json.loads(path.read_text()).get(protocol, {}).get(dataset, {})
    entry = entries.get(f"seed={seed}")
    if entry is None and protocol == "cj-completion" and entries:
        entry = entries[sorted(entries)[0]]
    return entry


def write_choices(path: Path, protocol: str, dataset: str, seed: int, entry: dict) -> None:
    data = json.loads(path.read_text()) if path.exists() else {}
    data.setdefault(protocol, {}).setdefault(dataset, {})[f"seed={seed}"] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(clean(data), indent=2, sort_keys=True) + "\n")


def _default_choices(protocol: str) -> dict[str, dict]:
    from .baselines import default_choices
    from .generation import default_choices as generation_defaults

    return generation_defaults() if protocol == "bundlerec-generation" else default_choices(protocol)


# --- the entry point --------------------------------------------------------------------


def load_split(protocol: str, data_dir: Path | None, cases: int | None, seed: int, limit: int | None,
               split: str = "test") -> Split:
    from retrieval.sources import DEFAULT_BUNDLEREC, load_source

    from . import protocols as P

    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got '{split}'")
    dev = split == "dev"
    if protocol == "cj-completion":
        ds = load_source("completejourney", limit=limit)
        raw = P.cj_raw_transactions(set(ds.interactions["user_id"]) if limit else None)
        return (P.cj_dev if dev else P.cj_completion)(ds, raw, seed, cases)
    ds = load_source("bundlerec", data_dir or DEFAULT_BUNDLEREC, limit=limit)
    if protocol == "bundlerec-completion":
        return (P.bundlerec_completion_dev if dev else P.bundlerec_completion)(ds, seed, cases)
    return (P.bundlerec_generation_dev if dev else P.bundlerec_generation)(ds, seed, cases)


def run_protocol(
    protocol: str,
    *,
    data_dir: Path | str | None = None,
    cases: int | None = None,
    seed: int = 0,
    variants: Sequence[str] = VARIANTS,
    out: Path | str = Path("eval/results"),
    work_dir: Path | str | None = None,
    limit: int | None = None,
    llm_cases: int | None = -1,
    tradeoff_cases: int | None = -1,
    progress: bool = True,
    settings: Settings | None = None,
    on_stage: Callable[[str], None] | None = None,
    split: str = "test",
    tune_baselines: bool = False,
    choices_path: Path | str | None = None,
) -> dict:
    """Run ``protocol`` and write ``out/<protocol>.json``, ``.md`` and ``.png`` plots
    (``out/<protocol>-dev.*`` for the dev split).

    ``cases`` caps the cases (default: 500 for cj-completion, every test bundle/session
    for BundleRec). ``llm_cases`` caps the cases the ``llm`` and ``llm+rule`` variants run
    on (a prefix of the cases; -1 means the protocol default, None means all).
    ``limit`` keeps the N lowest user ids of the source (a quick slice for tests).
    ``data_dir`` is the BundleRec-layout folder for the BundleRec protocols.
    ``split`` is ``test`` (the reported numbers) or ``dev`` (carved from the training
    part; see :mod:`eval.protocols`). ``tune_baselines`` (dev only) chooses the tunable
    baselines' parameters on the dev cases and records them in ``choices_path`` (default
    ``out/dev-choices.json``), which every run reads.
    """
    from assistant.service import BundleAssistant
    from retrieval.embeddings import Embedder

    from .baselines import BaselineData
    from .report import write_outputs

    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol '{protocol}'; expected one of {', '.join(PROTOCOLS)}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got '{split}'")
    if tune_baselines and split != "dev":
        raise ValueError("--tune-baselines chooses parameters on the dev split only: add --split dev")
    bad = [v for v in variants if v not in VARIANTS]
    if bad:  # no variant at all is allowed: a baselines-only run (e.g. to tune them)
        raise ValueError(f"variants must be some of {', '.join(VARIANTS)}, got {list(variants)}")
    variants = [v for v in VARIANTS if v in variants]  # canonical order
    stage = on_stage or (lambda s: print(f"[eval {protocol}] {s}", file=sys.stderr, flush=True))
    apply_process_defaults()  # offline hub etc., for a caller that imported nothing of ours before
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    cases = DEFAULT_CASES[protocol] if cases is None else cases
    llm_cases = DEFAULT_LLM_CASES[protocol] if llm_cases == -1 else llm_cases
    tradeoff_cases = DEFAULT_TRADEOFF_CASES if tradeoff_cases == -1 else tradeoff_cases
    choices_file = Path(choices_path) if choices_path else Path(out) / CHOICES_FILE
    dataset = dataset_key(protocol, data_dir, limit)

    stage(f"loading and splitting ({split} split)")
    chunk = load_split(protocol, Path(data_dir) if data_dir else None, cases, seed, limit, split)
    if not chunk.cases:
        raise ValueError(f"{protocol}: no evaluation case in this data (try a larger --limit)")
    adapter = (settings or Settings()).llm.adapter  # what the eval's settings will load (eval_settings)
    if adapter and any(v != "rule" for v in variants):
        from assistant.llm.adapter import check_adapter

        check_adapter(adapter, chunk)  # an adapter that saw these cases is refused, with why
    timings["split"] = round(time.perf_counter() - t0, 2)

    stage(f"building the eval index from the training part ({len(chunk.train.products)} products)")
    t = time.perf_counter()
    work_dir = Path(work_dir) if work_dir else default_work_dir()
    embedder = Embedder(cache_dir=work_dir / "cache")
    eval_set, index_info = build_eval_index(chunk.train, protocol, work_dir, embedder, progress, settings)
    timings["index"] = round(time.perf_counter() - t, 2)
    llm = CachedLLM(eval_set.llm.model, eval_set.llm.adapter, eval_set.llm.backend)
    assistant = BundleAssistant(eval_set, llm=llm, embedder=embedder)
    data = None if protocol == "bundlerec-generation" else BaselineData.from_index(
        assistant.index, chunk.train.interactions)

    tuning = None
    if tune_baselines:
        stage(f"choosing baseline parameters on {len(chunk.cases)} dev cases")
        t = time.perf_counter()
        tuning = _tune(protocol, chunk, assistant, data, progress)
        timings["tuning"] = round(time.perf_counter() - t, 2)
        entry = {**tuning, "command": command_line(protocol, data_dir, cases, seed, variants, out, limit,
                                                    llm_cases, DEFAULT_LLM_CASES[protocol], split, True),
                 "git": git_commit(), "train_fingerprint": index_info["train_fingerprint"]}
        write_choices(choices_file, protocol, dataset, seed, entry)
    recorded = read_choices(choices_file, protocol, dataset, seed)
    if recorded is None:
        stage(f"no dev choice in {choices_file} for {protocol} / {dataset} / seed {seed}: "
              "tunable baselines use their defaults")
    choices = recorded["choices"] if recorded else _default_choices(protocol)
    baseline_choices = {
        "source": str(choices_file) if recorded else "defaults (no dev choice recorded)",
        "chosen_on": (f"dev split, {recorded['cases']} cases, best mean {recorded['level']} {recorded['metric']}"
                      if recorded else None),
        "params": choices,
        "dev_scores": ({name: next((g for g in recorded["grid"][name] if g["params"] == choices[name]), None)
                        for name in choices} if recorded else None),
    }

    stage(f"running {len(chunk.cases)} cases: baselines and {', '.join(variants)}")
    t = time.perf_counter()
    body = _run_body(protocol, chunk, assistant, data, variants, llm_cases, tradeoff_cases, seed, progress, choices)
    timings["systems"] = round(time.perf_counter() - t, 2)
    llm = assistant._llm
    if llm.seconds:
        timings["llm_generations"] = len(llm.seconds)
        timings["llm_mean_s"] = round(float(np.mean(llm.seconds)), 3)
    timings.update({f"system_{k}": v for k, v in body.pop("seconds").items()})
    timings["total"] = round(time.perf_counter() - t0, 2)

    n_llm = len(chunk.cases) if llm_cases is None else min(llm_cases, len(chunk.cases))
    result = {
        "protocol": protocol,
        "evaluation_split": split,
        "seed": seed,
        "git": git_commit(),
        "versions": versions(),
        "command": command_line(protocol, data_dir, cases, seed, variants, out, limit, llm_cases,
                                DEFAULT_LLM_CASES[protocol], split, tune_baselines, adapter),
        "config": {
            "cases_requested": cases,
            "cases": len(chunk.cases),
            "llm_cases": n_llm if any(v != "rule" for v in variants) else 0,
            "variants": list(variants),
            "limit": limit,
            "data_dir": str(data_dir) if data_dir else None,
            "ks": list(KS),
            "cutoff": CUTOFF,
            "depth": DEPTH,
            "recommend_k": RECOMMEND_K,
            "settings": json.loads(eval_set.model_dump_json(exclude={"data_dir", "chroma_url"})),
        },
        "split": chunk.info,
        "index": {k: v for k, v in index_info.items() if k not in ("seconds", "reused", "index_dir")},
        "baseline_choices": baseline_choices,
        **({"tuning": tuning} if tuning else {}),
        **body,
        "timings": {**timings, "index_build": index_info["seconds"], "index_reused": index_info["reused"]},
    }
    result = clean(result)
    write_outputs(result, Path(out))
    return result


def _tune(protocol: str, chunk: Split, assistant, data, progress: bool) -> dict:
    if protocol == "bundlerec-generation":
        from .generation import tune_generation_baselines

        return tune_generation_baselines(chunk, assistant)
    from .completion import tune_baselines as tune

    return tune(protocol, chunk, assistant, data, progress)


def _run_body(protocol: str, chunk: Split, assistant, data, variants: Sequence[str], llm_cases: int | None,
              tradeoff_cases: int | None, seed: int, progress: bool, choices: dict[str, dict]) -> dict:
    """One protocol's systems and scores. A new protocol (e.g. ``shopper-scenarios``) adds
    its branch here and its name to ``eval.protocols.PROTOCOLS``."""
    if protocol == "bundlerec-generation":
        from .generation import run_generation

        return run_generation(chunk, assistant, variants, llm_cases, seed, progress, choices)
    from .completion import run_completion

    return run_completion(protocol, chunk, assistant, data, variants, llm_cases, tradeoff_cases, seed,
                          progress, choices)
