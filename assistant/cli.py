"""``bundle-assistant``: build the index, look at profiles, search, recommend (and, from
the eval package's plugin, evaluate).

Every command prints readable text, or JSON with ``--json``. A bad argument or a bad
request prints one line to stderr and exits 2; nothing ends in a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path

from retrieval.config import apply_process_defaults

apply_process_defaults()  # offline hub, passive OpenMP threads: before any command loads torch

EXIT_BAD_INPUT = 2
# Other packages add subcommands through this entry-point group (eval adds `eval` and
# `train-llm`): each entry point is a ``register(subparsers)`` that adds its parsers and
# sets ``handler`` on them. The assistant layer so never imports eval.
COMMAND_GROUP = "bundle_assistant.commands"


class CLIError(Exception):
    pass


def _money_or_na(price: float | None) -> str:
    return f"${price:.2f}" if price else "   n/a"


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
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
            raise argparse.ArgumentTypeError(f"weight '{key}' is not a number: '{value}'") from None
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


def _add_plugin_commands(sub: argparse._SubParsersAction) -> None:
    """The subcommands registered under :data:`COMMAND_GROUP`, in name order. A plugin whose
    package is not installed (its import fails) adds nothing: the other commands still work."""
    for ep in sorted(entry_points(group=COMMAND_GROUP), key=lambda e: e.name):
        try:
            register = ep.load()
        except ImportError:
            continue
        register(sub)


def build_parser() -> argparse.ArgumentParser:
    from retrieval.buildtime import CJ_BUILD_ESTIMATE, MAX_REJECTED_SHARE

    parser = argparse.ArgumentParser(
        prog="bundle-assistant",
        description="LLM-based product-bundle assistant: index a catalogue, then search and recommend bundles.",
        epilog=f"Start with `bundle-assistant index` (Complete Journey: {CJ_BUILD_ESTIMATE}), "
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
    p.add_argument("--force-partial", action="store_true",
                   help="build even when more than --max-rejected-share of the rows are rejected "
                        "(a build with no products is always refused)")
    p.add_argument("--max-rejected-share", type=_share, default=MAX_REJECTED_SHARE,
                   help="refuse a build that rejects more than this share of its rows, keeping the old "
                        "index (default %(default)s)")
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
    p.add_argument("--adapter", help="a LoRA adapter on the model: a folder, or a shipped name such as "
                                     "smollm2-bundles (default: none, the base model)")
    p.add_argument("--weights", type=_weights,
                   help="objective weights, e.g. preference=0.4,margin=0.3,sales=0.2,complementarity=0.1")
    p.add_argument("--parse", action="store_true", help="also read budget/servings/exclusions from --query")
    _common(p)

    p = sub.add_parser("ideas", help="merchandisers: distinct bundle ideas for a theme",
                       description="What the merchandiser console shows: the theme's parsed need, N distinct "
                                   "ideas with their products, prices, margin after discount, every score "
                                   "component and projected performance (estimates from the loaded history), "
                                   "plus why fewer ideas came back when they did.")
    p.add_argument("theme", help="e.g. 'back-to-school lunch bundles, margin at least 30%%'")
    p.add_argument("--k", type=_positive_int, default=10, help="ideas to show (default 10)")
    p.add_argument("--min-margin", type=_margin_share,
                   help="minimum bundle margin after discount: 0.3 or 30 both mean 30%% (overrides the theme)")
    p.add_argument("--weights", type=_weights, help="objective weights, e.g. margin=0.5,preference=0.3,sales=0.2")
    p.add_argument("--llm", action="store_true", help="also let the LLM propose bundles (slower)")
    p.add_argument("--model", help="a local path or hub id of another causal LM (default: packaged SmolLM2)")
    p.add_argument("--adapter", help="a LoRA adapter on the model: a folder, or a shipped name such as "
                                     "smollm2-bundles (default: none, the base model)")
    p.add_argument("--csv", type=Path, help="also write the ideas table to this CSV file (spreadsheet-safe)")
    _common(p)

    # eval and train-llm come from eval/cli.py; here, so that --help lists them where it always did
    _add_plugin_commands(sub)

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
    if getattr(args, "adapter", None):
        settings.llm.adapter = args.adapter
    return settings


def _emit(args, payload, text: str) -> None:
    if args.json:
        print(json.dumps(payload, indent=2, default=str))
    else:
        print(text)


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def cmd_index(args) -> int:
    from retrieval.buildtime import BuildProgress
    from retrieval.index import build_index
    from retrieval.sources import interactions_file_for, load_source
    from retrieval.validation import where

    from .privacy import pseudonymise

    settings = _settings(args)
    print(f"loading {args.source} ...", file=sys.stderr)
    if args.source in ("csv", "parquet") and args.path is not None and args.path.exists():
        beside = interactions_file_for(args.path)
        folder = args.path if args.path.is_dir() else args.path.parent
        print(f"interactions: {beside}" if beside else
              f"interactions: none (no interactions.csv or interactions.parquet in {folder}); "
              "building without purchase history: no profiles, no co-purchase statistics", file=sys.stderr)
    progress = BuildProgress(sys.stderr, disable=args.json)
    try:
        ds = load_source(args.source, args.path, settings=settings, limit=args.limit,
                         column_map=args.map, margins_csv=args.margins)
        summary = ds.summary()
        progress.bar.write(f"loaded {summary['products']} products, {summary['interactions']} interactions, "
                           f"{summary['users']} users; rejected {summary['rejected']} rows", file=sys.stderr)
        report = build_index(ds, settings, pseudonymise=lambda u: pseudonymise(u, data_dir=settings.data_dir),
                             force=args.force, progress=not args.json, on_stage=progress.stage,
                             max_rejected_share=args.max_rejected_share, allow_partial=args.force_partial)
        progress.close()
    finally:
        progress.bar.leave = False  # a refused build ends in its one-line error, not a half bar
        progress.bar.close()
    quarantine_file = Path(settings.data_dir) / "builds" / report.build_id / "quarantine.csv"
    payload = {**report.as_dict(), "data_dir": str(settings.data_dir), "quarantine_report": str(quarantine_file),
               "quarantine": [r.as_dict() for r in ds.quarantine[:20]]}
    by_file = f" {summary['rejected_by_file']}" if summary["rejected"] else ""
    lines = [f"index {'unchanged' if report.skipped else 'built'}: {report.build_id} in {settings.data_dir}",
             f"  products {summary['products']} (priced {summary['products_priced']}, "
             f"in stock {summary['products_in_stock']})",
             f"  interactions {summary['interactions']}, users {summary['users']}",
             f"  rejected rows {summary['rejected']}{by_file}"]
    for r in ds.quarantine[:5]:
        lines.append(f"    {r.file} {where(r)} field {r.field}: {r.reason} ({r.value!r})")
    if summary["rejected"]:
        lines.append(f"  quarantine report (every rejected row): {quarantine_file}")
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
        f"{h['product_id']:>10}  {_money_or_na(h['price']):>8}  {h['reason']:<10} {h['title']}" for h in hits
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
    assistant = BundleAssistant(_settings(args))
    need = None
    if args.parse and query:
        # the same understanding and composition as the chat (BundleAssistant.understand)
        need = assistant.understand(query)
        query = need.text or query
    rec = assistant.recommend(user_id=args.user, query=query, anchors=tuple(args.anchor),
                              constraints=Constraints(**fields), k=args.k, use_llm=not args.no_llm,
                              mode=args.mode, weights=args.weights, need=need)
    _emit(args, rec.model_dump(), format_recommendation(rec))
    return 0


def format_recommendation(rec) -> str:
    lines = [f"profile: {rec.profile_summary}"]
    if rec.need is not None:
        n = rec.need
        said = {"occasion": n.occasion, "servings": n.servings, "days": n.days, "budget": n.budget,
                "diets": ", ".join(n.diets), "exclude": ", ".join(n.exclude)}
        lines.append("need: " + "; ".join(f"{k} {v}" for k, v in said.items() if v))
    for note in rec.notes:
        lines.append(f"note: {note}")
    for b in rec.bundles:
        price = f"${b.bundle_price:.2f} (save ${b.savings:.2f})" if b.price_known else "price unknown"
        lines.append(f"\n#{b.rank} {b.name} — {price} — score {b.score:.3f} [{b.source}]")
        for item in b.items:
            qty = f"{item.quantity} x" if item.quantity > 1 else ""
            unit = f"${item.price:.2f}" if item.price else "n/a"
            lines.append(f"   {item.product_id:>10}  {unit:>8} {qty:>4}  {item.title}")
        parts = ", ".join(f"{k} {v.value:.2f}×{v.weight:.2f}" for k, v in b.score_breakdown.items())
        lines.append(f"   why: {b.explanation}  ({parts})")
        if b.llm_reason:
            lines.append(f"   assistant's note: {b.llm_reason}")
    lines.append(f"\nllm: {rec.llm.model or 'off'} {rec.llm.device} proposed {rec.llm.proposed} valid {rec.llm.valid}"
                 f"{' (fallback)' if rec.llm.fallback else ''}; timings {rec.timings}")
    return "\n".join(lines)


def _margin_share(text: str) -> float:
    try:
        value = float(text.strip().rstrip("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    value = value / 100.0 if value >= 1 else value  # "30" means 30%
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be a share in [0, 1) or a percentage below 100, got {text}")
    return value


def cmd_ideas(args) -> int:
    from .service import BundleAssistant

    assistant = BundleAssistant(_settings(args))
    result = assistant.ideas(args.theme, k=args.k, min_margin=args.min_margin, weights=args.weights,
                             use_llm=args.llm)
    if args.csv:
        result.write_csv(args.csv)
    _emit(args, result.model_dump(mode="json"), format_ideas(result))
    return 0


def format_ideas(result) -> str:
    lines = [f"theme: {result.theme}",
             "understood: " + (", ".join(c.label for c in result.chips) or "no constraints")
             + (f" — roles from '{result.need.text}'" if result.need.text else ""),
             "objective: " + ", ".join(f"{k} {v:.2f}" for k, v in result.weights.items())]
    for idea in result.ideas:
        price = f"${idea.bundle_price:.2f} ({idea.discount:.0%} off ${idea.list_price:.2f})" if idea.price_known \
            else "price unknown"
        lines.append(f"\n#{idea.rank} {idea.name}\n   {price}, margin after discount {idea.margin_rate:.1%}, "
                     f"score {idea.score:.3f}")
        for item in idea.items:
            unit = f"${item.unit_price:.2f}" if item.unit_price is not None else "n/a"
            lines.append(f"   {item.product_id:>10}  {unit:>8}  {item.role:<24.24} {item.display_title or item.title}")
        parts = ", ".join(f"{k} {v.value:.2f}×{v.weight:.2f}" for k, v in idea.score_breakdown.items())
        lines.append(f"   score: {parts}")
        p = idea.projection
        if p is not None:
            margin = f"${p.expected_margin_per_bundle:.2f}" if p.expected_margin_per_bundle is not None else "n/a"
            lines.append(f"   projected (estimate): {p.baskets_two_plus} baskets held 2+ of its items, "
                         f"{p.households_all} households bought all, item revenue ${p.item_revenue:,.2f}, "
                         f"attach rate {p.attach_rate:.1%}, margin per bundle sold {margin}")
    if result.ideas and result.ideas[0].projection is not None:
        lines.append(f"\n{result.ideas[0].projection.label}")
    for note in result.explanations:
        lines.append(f"note: {note}")
    lines.append(f"candidates {result.candidates}, margin range {result.margin_range}, timings {result.timings}")
    return "\n".join(lines)


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
            "ideas": cmd_ideas, "feedback": cmd_feedback, "forget": cmd_forget}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from pydantic import ValidationError

    from retrieval.embeddings import EmbeddingModelMissing
    from retrieval.index import IndexMissing
    from retrieval.schema import SchemaError
    from retrieval.store import StoreUnavailable
    from retrieval.validation import PartialBuild

    from .service import ServiceError

    try:
        handler = getattr(args, "handler", None) or COMMANDS[args.command]  # a plugin's, else our own
        return handler(args)
    except (CLIError, ServiceError, SchemaError, IndexMissing, StoreUnavailable, EmbeddingModelMissing,
            FileNotFoundError, PartialBuild) as exc:
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
