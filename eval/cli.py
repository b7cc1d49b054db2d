"""The ``eval`` and ``train-llm`` subcommands of ``bundle-assistant``, as a plugin.

The CLI (:mod:`assistant.cli`) finds them through the ``bundle_assistant.commands``
entry point declared in ``pyproject.toml``, so the assistant layer never imports eval:
the arrow points down (eval -> assistant). Both commands need eval's code (the
protocols, the scenario runner, the protocol's own training split). Arguments, help
texts, errors and exit codes are the CLI's own.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from assistant.cli import CLIError, _emit, _positive_float, _positive_int, _settings
from assistant.llm.adapter import AdapterError

PROTOCOLS = ["cj-completion", "bundlerec-completion", "bundlerec-generation", "shopper-scenarios"]


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``eval`` and ``train-llm`` to the CLI's subparsers, each with its handler."""
    _add_eval(sub)
    _add_train_llm(sub)


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="offline evaluation protocols")
    p.add_argument("--protocol", required=True, choices=PROTOCOLS)
    p.add_argument("--data-dir", type=Path, help="BundleRec-layout folder for the bundlerec protocols; "
                                                 "the index folder for shopper-scenarios")
    p.add_argument("--scenarios", type=Path, help="shopper-scenarios: the scenario file (eval/scenarios/README.md)")
    p.add_argument("--cases", type=_positive_int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variants", default="rule,llm,llm+rule", help="system variants, or 'none' for baselines only")
    p.add_argument("--out", type=Path, default=Path("eval/results"))
    p.add_argument("--llm-cases", type=_positive_int, default=None,
                   help="run the llm and llm+rule variants on the first N cases only (default: per protocol)")
    p.add_argument("--limit", type=_positive_int, help="keep only the N lowest user ids of the source (a quick slice)")
    p.add_argument("--work-dir", type=Path,
                   help="where the eval builds its own index from the training part (default: the user cache)")
    p.add_argument("--split", choices=["test", "dev"], default="test",
                   help="test: the reported numbers; dev: a split carved from the training data, for choosing "
                        "weights and thresholds (writes <protocol>-dev.json)")
    p.add_argument("--tune-baselines", action="store_true",
                   help="with --split dev: choose the tunable baselines' parameters on the dev cases and record "
                        "them in OUT/dev-choices.json, which later runs read")
    p.add_argument("--adapter", help="the llm variants load this LoRA adapter on the base model (a folder, or a "
                                     "shipped name such as smollm2-bundles); refused when it was trained on a "
                                     "case of this split")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_eval)


def _add_train_llm(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-llm", help="LoRA-tune the packaged SmolLM2 on tasks mined from training data",
                       description="Mine grouping, naming and need-extraction examples from the BundleRec training "
                                   "split of seed 0 (never a test session) and the need lexicon, train a LoRA "
                                   "adapter, and write it with its card (data fingerprint, seed, commit, steps, "
                                   "loss curve).")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="BundleRec-layout folder (default: the shared Electronic data)")
    p.add_argument("--out", type=Path, default=Path("adapters/smollm2-bundles"), help="adapter folder to write")
    p.add_argument("--steps", type=_positive_int, default=None,
                   help="optimizer steps (default: 60 on the CPU subset; one epoch on the full set)")
    p.add_argument("--subset", type=_positive_int, default=None,
                   help="train on N examples (default: 240 on CPU, the documented subset; all on a GPU)")
    p.add_argument("--full", action="store_true", help="train on the full mined set even on CPU")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=_positive_float, default=None)
    p.add_argument("--no-dev-holdout", action="store_true",
                   help="also train on the dev sessions of the training split (then no clean place is left to "
                        "measure the tuned model)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_train_llm)


def _variants(text: str) -> list[str]:
    # "none": baselines only (e.g. with --tune-baselines)
    variants = [v.strip() for v in text.split(",") if v.strip() and v.strip() != "none"]
    unknown = [v for v in variants if v not in ("rule", "llm", "llm+rule")]
    if unknown or (not variants and text.strip() != "none"):
        raise CLIError(f"--variants must be some of rule,llm,llm+rule (or none), got '{text}'")
    return variants


def cmd_eval(args: argparse.Namespace) -> int:
    if args.protocol == "shopper-scenarios":
        return _eval_scenarios(args)
    from .run import run_protocol

    variants = _variants(args.variants)
    if args.data_dir is not None and not args.data_dir.is_dir():
        raise CLIError(f"--data-dir {args.data_dir} is not a folder")
    if args.tune_baselines and args.split != "dev":
        raise CLIError("--tune-baselines chooses parameters on the dev split only: add --split dev")
    settings = None
    if args.adapter:
        from retrieval.config import Settings

        settings = Settings()
        settings.llm.adapter = args.adapter
    try:
        result = run_protocol(args.protocol, data_dir=args.data_dir, cases=args.cases, seed=args.seed,
                              variants=variants, out=args.out, work_dir=args.work_dir, limit=args.limit,
                              llm_cases=args.llm_cases if args.llm_cases else -1, progress=not args.json,
                              split=args.split, tune_baselines=args.tune_baselines, settings=settings)
    except AdapterError as exc:
        raise CLIError(str(exc)) from None
    name = args.protocol + ("-dev" if args.split == "dev" else "")
    _emit(args, result, f"wrote {args.out}/{name}.json and .md")
    return 0


def _eval_scenarios(args: argparse.Namespace) -> int:
    """Scripted conversations through the chat's own path (:mod:`eval.scenarios`)."""
    from .scenarios import ScenarioError, run_scenarios, summary_text

    if args.scenarios is None:
        raise CLIError("--protocol shopper-scenarios needs --scenarios FILE (e.g. eval/scenarios/public.json)")
    # The chat has two paths, rules and rules + LLM; the parser's default lists the others' three.
    variants = ("rule,llm+rule" if args.variants == "rule,llm,llm+rule" else args.variants).split(",")
    try:
        report = run_scenarios(args.scenarios, variants=[v.strip() for v in variants if v.strip()],
                               out=args.out, settings=_settings(args), progress=not args.json)
    except ScenarioError as exc:
        raise CLIError(str(exc)) from None
    _emit(args, report, f"{summary_text(report)}\nwrote {args.out}/shopper-scenarios.json and .md")
    return 0


def cmd_train_llm(args: argparse.Namespace) -> int:
    import torch

    from assistant.llm import tuning
    from retrieval.sources import DEFAULT_BUNDLEREC

    data = args.data_dir or DEFAULT_BUNDLEREC
    if not data.is_dir():
        raise CLIError(f"--data-dir {data} is not a folder (a BundleRec-layout folder, e.g. .../electronic)")
    gpu = torch.cuda.is_available()
    n = None if (args.full or (gpu and args.subset is None)) else (args.subset or tuning.CPU_SUBSET)
    from .tuning_data import training_split  # the eval protocol's own training split

    train, info, held_out = training_split(data, seed=0, holdout_dev=not args.no_dev_holdout)
    card = tuning.run_training(train, info, held_out, args.out, steps=args.steps, n_subset=n, seed=args.seed,
                               lr=args.lr or tuning.LR, progress=not args.json)
    t = card["training"]
    _emit(args, card, f"wrote {args.out} ({t['examples']} examples, {t['steps']} steps, {t['seconds']:.0f} s on "
                      f"{t['device']}; loss {t['losses'][0]:.3f} -> {t['losses'][-1]:.3f}); card: {args.out}/CARD.md")
    return 0
