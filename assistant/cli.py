"""``bundle-assistant``: build the index, look at profiles, search, recommend, evaluate.

Every command prints readable text, or JSON with ``--json``. A bad argument or a bad
request prints one line to stderr and exits 2; nothing ends in a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

EXIT_BAD_INPUT = 2


class CLIError(Exception):
    pass


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _weights(text: str) -> dict[str, float]:
    out = {}
    for part in text.split(","):
        if "=" not in part:
            raise argparse.ArgumentTypeError(f"expected name=value pairs, got '{part}'")
        key, value = part.split("=", 1)
        try:
            out[key.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"weight '{key}' is not a number: '{value}'")
    return out


def _column_map(text: str) -> dict[str, str]:
    pairs = [p.split("=", 1) for p in text.split(",") if p.strip()]
    if any(len(p) != 2 for p in pairs):
        raise argparse.ArgumentTypeError("expected ours=theirs pairs, e.g. title=name,price=unit_price")
    return {a.strip(): b.strip() for a, b in pairs}


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, help="index folder (default: $BUNDLE_DATA_DIR or the user cache)")
    p.add_argument("--chroma-url", help="use a Chroma server, e.g. http://127.0.0.1:8000 (default: $CHROMA_URL)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bundle-assistant",
        description="LLM-based product-bundle assistant: index a catalogue, then search and recommend bundles.",
        epilog="Start with `bundle-assistant index` (Complete Journey, ~10 min on 2 cores), "
               "then `bundle-assistant recommend --query 'taco night'`.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("index", help="build products, profiles and co-purchase statistics",
                       description="Load a source, validate it (bad rows go to a quarantine report), embed "
                                   "products, and store them with profiles and co-purchase statistics. "
                                   "Idempotent: an unchanged source is not rebuilt.")
    p.add_argument("--source", default="completejourney", choices=["completejourney", "bundlerec", "csv", "parquet"])
    p.add_argument("--path", type=Path, help="folder or file for bundlerec/csv/parquet")
    p.add_argument("--limit", type=_positive_int, help="keep only the N lowest user ids (a quick slice)")
    p.add_argument("--map", type=_column_map, default={}, help="column mapping for csv/parquet: ours=theirs,...")
    p.add_argument("--margins", type=Path, help="merchandiser CSV: product_id,margin_rate or department,margin_rate")
    p.add_argument("--force", action="store_true", help="rebuild even when nothing changed")
    _common(p)

    p = sub.add_parser("profile", help="show a user's profile")
    p.add_argument("user_id")
    _common(p)

    p = sub.add_parser("search", help="retrieve candidate products for a need")
    p.add_argument("query")
    p.add_argument("--user", help="personalise for this user id")
    p.add_argument("--max-price", type=_positive_float, help="maximum unit price")
    p.add_argument("--department", action="append", default=[], help="only this department (repeatable)")
    p.add_argument("--exclude", action="append", default=[], help="leave out products mentioning WORD (repeatable)")
    p.add_argument("--k", type=_positive_int, default=10)
    _common(p)

    p = sub.add_parser("recommend", help="ranked bundles for a user and a need")
    p.add_argument("--user", help="user id (default: a guest)")
    p.add_argument("--query", default="", help="the shopper's need, e.g. 'tacos for four, under $25, no dairy'")
    p.add_argument("--anchor", action="append", default=[], help="a product id the bundle builds on (repeatable)")
    p.add_argument("--budget", type=_positive_float, help="maximum bundle price")
    p.add_argument("--exclude", action="append", default=[], help="leave out products mentioning WORD (repeatable)")
    p.add_argument("--min-margin", type=float, help="merchandisers: minimum bundle margin after discount (0..1)")
    p.add_argument("--k", type=_positive_int, default=5, help="bundles to show")
    p.add_argument("--no-llm", action="store_true", help="rule-based proposals only (fast)")
    p.add_argument("--mode", choices=["rule", "llm", "llm+rule"], help="proposal pools (default llm+rule)")
    p.add_argument("--model", help="a local path or hub id of another causal LM (default: packaged SmolLM2)")
    p.add_argument("--weights", type=_weights, help="objective weights, e.g. preference=0.4,margin=0.3,sales=0.2,complementarity=0.1")
    p.add_argument("--parse", action="store_true", help="also read budget/servings/exclusions from --query")
    _common(p)

    p = sub.add_parser("eval", help="offline evaluation protocols")
    p.add_argument("--protocol", required=True, choices=["cj-completion", "bundlerec-completion", "bundlerec-generation"])
    p.add_argument("--data-dir", type=Path, help="BundleRec-layout folder for the bundlerec protocols")
    p.add_argument("--cases", type=_positive_int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variants", default="rule,llm,llm+rule")
    p.add_argument("--out", type=Path, default=Path("eval/results"))
    p.add_argument("--llm-cases", type=_positive_int, default=None,
                   help="run the llm and llm+rule variants on the first N cases only (default: per protocol)")
    p.add_argument("--limit", type=_positive_int, help="keep only the N lowest user ids of the source (a quick slice)")
    p.add_argument("--work-dir", type=Path,
                   help="where the eval builds its own index from the training part (default: the user cache)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("feedback", help="the feedback event store")
    fsub = p.add_subparsers(dest="feedback_command", metavar="ACTION")
    fsub.required = True
    e = fsub.add_parser("export", help="write every event to a parquet or csv file")
    e.add_argument("--out", type=Path, required=True)
    _common(e)

    p = sub.add_parser("forget", help="delete everything stored about a user (feedback events)")
    p.add_argument("user_id")
    _common(p)
    return parser


def _settings(args):
    from retrieval.config import Settings

    overrides = {}
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = args.data_dir
    if getattr(args, "chroma_url", None):
        overrides["chroma_url"] = args.chroma_url
    settings = Settings(**overrides)
    if getattr(args, "model", None):
        settings.llm.model = args.model
    return settings


def _emit(args, payload, text: str) -> None:
    if args.json:
        print(json.dumps(payload, indent=2, default=str))
    else:
        print(text)


def cmd_index(args) -> int:
    from retrieval.index import build_index
    from retrieval.sources import load_source

    from .privacy import pseudonymise

    settings = _settings(args)
    print(f"loading {args.source} ...", file=sys.stderr)
    ds = load_source(args.source, args.path, settings=settings, limit=args.limit,
                     column_map=args.map, margins_csv=args.margins)
    summary = ds.summary()
    print(f"loaded {summary['products']} products, {summary['interactions']} interactions, "
          f"{summary['users']} users; rejected {summary['rejected']} rows", file=sys.stderr)
    report = build_index(ds, settings, pseudonymise=lambda u: pseudonymise(u, data_dir=settings.data_dir),
                         force=args.force, progress=not args.json,
                         on_stage=lambda s: print(f"[{s}]", file=sys.stderr))
    payload = {**report.as_dict(), "data_dir": str(settings.data_dir),
               "quarantine": [r.as_dict() for r in ds.quarantine[:20]]}
    lines = [f"index {'unchanged' if report.skipped else 'built'}: {report.build_id} in {settings.data_dir}",
             f"  products {summary['products']} (priced {summary['products_priced']}, in stock {summary['products_in_stock']})",
             f"  interactions {summary['interactions']}, users {summary['users']}",
             f"  rejected rows {summary['rejected']}" + (f" {summary['rejected_by_file']}" if summary["rejected"] else "")]
    for r in ds.quarantine[:5]:
        lines.append(f"    {r.file} row {r.row} field {r.field}: {r.reason} ({r.value!r})")
    if report.seconds:
        lines.append("  seconds " + ", ".join(f"{k} {v}" for k, v in report.seconds.items()))
    _emit(args, payload, "\n".join(lines))
    return 0


def cmd_profile(args) -> int:
    from .service import BundleAssistant

    profile = BundleAssistant(_settings(args)).profile(args.user_id)
    _emit(args, profile.model_dump(), profile.summary)
    return 0


def cmd_search(args) -> int:
    from retrieval.schema import Constraints

    from .service import BundleAssistant

    constraints = Constraints(max_unit_price=args.max_price, departments=args.department, exclude=args.exclude)
    hits = BundleAssistant(_settings(args)).search(args.query, args.user, constraints, args.k)
    text = "\n".join(
        f"{h['product_id']:>10}  {('$%.2f' % h['price']) if h['price'] else '   n/a':>8}  {h['reason']:<10} {h['title']}"
        for h in hits
    ) or "no products match"
    _emit(args, hits, text)
    return 0


def cmd_recommend(args) -> int:
    from retrieval.schema import Constraints

    from .service import BundleAssistant

    if args.min_margin is not None and not 0 <= args.min_margin < 1:
        raise CLIError("--min-margin must be in [0, 1)")
    fields = {"budget": args.budget, "exclude": list(args.exclude), "min_margin": args.min_margin}
    query = args.query
    if args.parse and query:
        from .constraints import parse_message

        parsed = parse_message(query)
        understood = parsed.to_constraints()
        fields["budget"] = fields["budget"] or understood.budget
        fields["exclude"] = fields["exclude"] + list(understood.exclude)
        fields["servings"] = understood.servings
        query = parsed.query or query
    assistant = BundleAssistant(_settings(args))
    rec = assistant.recommend(user_id=args.user, query=query, anchors=tuple(args.anchor),
                              constraints=Constraints(**fields), k=args.k, use_llm=not args.no_llm,
                              mode=args.mode, weights=args.weights)
    _emit(args, rec.model_dump(), format_recommendation(rec))
    return 0


def format_recommendation(rec) -> str:
    lines = [f"profile: {rec.profile_summary}"]
    for note in rec.notes:
        lines.append(f"note: {note}")
    for b in rec.bundles:
        price = f"${b.bundle_price:.2f} (save ${b.savings:.2f})" if b.price_known else "price unknown"
        lines.append(f"\n#{b.rank} {b.name} — {price} — score {b.score:.3f} [{b.source}]")
        for item in b.items:
            lines.append(f"   {item.product_id:>10}  {('$%.2f' % item.price) if item.price else 'n/a':>8}  {item.title}")
        parts = ", ".join(f"{k} {v.value:.2f}×{v.weight:.2f}" for k, v in b.score_breakdown.items())
        lines.append(f"   why: {b.explanation}  ({parts})")
        if b.llm_reason:
            lines.append(f"   assistant's note: {b.llm_reason}")
    lines.append(f"\nllm: {rec.llm.model or 'off'} {rec.llm.device} proposed {rec.llm.proposed} valid {rec.llm.valid}"
                 f"{' (fallback)' if rec.llm.fallback else ''}; timings {rec.timings}")
    return "\n".join(lines)


def cmd_eval(args) -> int:
    from eval.run import run_protocol

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in ("rule", "llm", "llm+rule")]
    if unknown or not variants:
        raise CLIError(f"--variants must be some of rule,llm,llm+rule, got '{args.variants}'")
    if args.data_dir is not None and not args.data_dir.is_dir():
        raise CLIError(f"--data-dir {args.data_dir} is not a folder")
    result = run_protocol(args.protocol, data_dir=args.data_dir, cases=args.cases, seed=args.seed,
                          variants=variants, out=args.out, work_dir=args.work_dir, limit=args.limit,
                          llm_cases=args.llm_cases if args.llm_cases else -1, progress=not args.json)
    _emit(args, result, f"wrote {args.out}/{args.protocol}.json and .md")
    return 0


def cmd_feedback(args) -> int:
    from .feedback import FeedbackStore

    if args.out.suffix.lower() not in (".csv", ".parquet"):
        raise CLIError(f"--out must end in .csv or .parquet, not '{args.out.suffix}'")
    settings = _settings(args)
    store = FeedbackStore(settings.data_dir / "feedback.sqlite")
    store.export(args.out)
    n = len(store.events())
    _emit(args, {"exported": n, "out": str(args.out)}, f"exported {n} events to {args.out}")
    return 0


def cmd_forget(args) -> int:
    from .feedback import FeedbackStore
    from .privacy import pseudonymise

    if not args.user_id.strip():
        raise CLIError("USER_ID is empty")
    settings = _settings(args)
    key = pseudonymise(args.user_id, data_dir=settings.data_dir)
    store = FeedbackStore(settings.data_dir / "feedback.sqlite")
    n = store.forget(key)
    _emit(args, {"user": key, "deleted_events": n}, f"deleted {n} feedback events of {key}")
    return 0


COMMANDS = {"index": cmd_index, "profile": cmd_profile, "search": cmd_search, "recommend": cmd_recommend,
            "eval": cmd_eval, "feedback": cmd_feedback, "forget": cmd_forget}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from pydantic import ValidationError

    from retrieval.embeddings import EmbeddingModelMissing
    from retrieval.index import IndexMissing
    from retrieval.schema import SchemaError
    from retrieval.store import StoreUnavailable

    from .service import ServiceError

    try:
        return COMMANDS[args.command](args)
    except (CLIError, ServiceError, SchemaError, IndexMissing, StoreUnavailable, EmbeddingModelMissing,
            FileNotFoundError) as exc:
        print(f"bundle-assistant {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        print(f"bundle-assistant {args.command}: error: {where}: {first.get('msg')}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
