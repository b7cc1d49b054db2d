"""The web app's entry point: a shopper chat and a merchandiser console on one shared assistant.

    python app.py [--host 127.0.0.1] [--port 7860] [--data-dir DIR] [--no-llm]

On first start with no index in the data dir it builds the Complete Journey index
(minutes, once). One :class:`BundleAssistant` (index, embedder, LLM) serves every
session; each browser session keeps its own :class:`Conversation` in ``gr.State``.
The UI itself lives in :mod:`assistant.ui` (render, shopper, merchandiser, layout).

The merchandiser tab needs ``BUNDLE_MERCH_USER`` and ``BUNDLE_MERCH_PASSWORD``. Gradio's
own ``auth`` would lock the whole app (shoppers too), so the tab has its own sign-in
(:mod:`assistant.auth`: constant-time check, back-off, expiring sessions); every
merchandiser endpoint refuses a session that has not signed in, whether it comes from
the page or from ``gradio_client``.
"""

from __future__ import annotations

import os
import sys

from retrieval.config import apply_process_defaults

# Before gradio, torch and pyarrow load and read them: offline hub, no gradio analytics,
# passive OpenMP threads, and (server=True) the system allocator for pyarrow, whose default
# one kept growing under the web server's thread churn (retrieval.config.SERVER_DEFAULTS).
apply_process_defaults(server=True)
# Gradio reads GRADIO_SERVER_PORT with int() when it is imported; a bad value would end
# `python app.py` in a traceback before main() could say what is wrong.
for _name in ("GRADIO_SERVER_PORT", "BUNDLE_PORT"):
    if __name__ == "__main__" and not os.environ.get(_name, "7860").strip().isdigit():
        print(f"app.py: error: {_name}={os.environ[_name]!r} is not a port number", file=sys.stderr)
        raise SystemExit(2)

import ctypes  # noqa: E402
import threading  # noqa: E402


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except OSError:  # not glibc (macOS, musl): nothing to tune
        return None


MALLOC_ARENAS = 2
M_ARENA_MAX = -8  # glibc's mallopt parameter


def cap_malloc_arenas(n: int = MALLOC_ARENAS) -> None:
    """glibc gives each allocating thread an arena of its own (up to 8 per core). The web
    server's worker threads, torch's and the tokenizers' then keep freed memory spread over
    many arenas, and the app's RSS crept up during long LLM chats (bench/bench_memory.py).
    Called before any of those threads start; an explicit MALLOC_ARENA_MAX wins."""
    libc = _glibc()
    if libc is not None and "MALLOC_ARENA_MAX" not in os.environ:
        libc.mallopt(M_ARENA_MAX, n)


def start_memory_trimmer(every_s: float = 60.0) -> threading.Thread | None:
    """Hand memory freed by finished requests back to the system once a minute
    (``malloc_trim``): an LLM turn allocates and frees hundreds of MiB outside Python."""
    libc = _glibc()
    if libc is None:
        return None

    def trim() -> None:
        while True:
            time.sleep(every_s)
            libc.malloc_trim(0)

    thread = threading.Thread(target=trim, name="malloc-trim", daemon=True)
    thread.start()
    return thread


cap_malloc_arenas()


import argparse  # noqa: E402
import errno  # noqa: E402
import gc  # noqa: E402
import logging  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from assistant.auth import check_credentials  # noqa: E402,F401  (re-exported for tests and scripts)
from assistant.service import BundleAssistant  # noqa: E402
from assistant.ui import (  # noqa: E402,F401  (the UI lives in assistant/ui; app.py is the entry point)
    GUEST,
    GUEST_KEY,
    Persona,
    build_app,
    discover_personas,
    launch,
    merch_credentials_from_env,
    persona_line,
)
from assistant.ui.merchandiser import MERCH_PASSWORD_ENV, MERCH_USER_ENV  # noqa: E402
from retrieval.buildtime import CJ_BUILD_ESTIMATE  # noqa: E402
from retrieval.config import Settings  # noqa: E402
from retrieval.index import read_current  # noqa: E402

log = logging.getLogger("bundle_assistant.app")

EXIT_USER_ERROR = 2


# ------------------------------------------------------------------------------ serving


def first_start_message(data_dir: Path, limit: int | None = None) -> str:
    what = f"a {limit}-household slice of" if limit else "the full"
    took = "a minute or two" if limit else CJ_BUILD_ESTIMATE
    return f"No index in {data_dir}: building {what} Complete Journey data. This happens once and takes {took}."


def ensure_index(settings: Settings, limit: int | None = None, out=sys.stderr) -> bool:
    """Build the Complete Journey index when the data dir has none. True when built.
    Raises :class:`PartialBuild` (nothing switched) when the data would not make an index."""
    if read_current(Path(settings.data_dir)) is not None:
        return False
    from assistant.privacy import pseudonymise
    from retrieval.buildtime import BuildProgress
    from retrieval.index import build_index
    from retrieval.sources import load_source

    print(first_start_message(Path(settings.data_dir), limit), file=out, flush=True)
    progress = BuildProgress(out, marker="  [{}]")
    try:
        ds = load_source("completejourney", None, settings=settings, limit=limit)
        s = ds.summary()
        progress.bar.write(f"  loaded {s['products']} products, {s['interactions']} purchases, "
                           f"{s['users']} households", file=out)
        build_index(ds, settings, pseudonymise=lambda u: pseudonymise(u, data_dir=settings.data_dir),
                    progress=True, on_stage=progress.stage)
        progress.close()
    finally:
        progress.bar.leave = False
        progress.bar.close()
    print("  index ready.", file=out, flush=True)
    return True


def listen_problem(host: str, port: int) -> str | None:
    """Why the app could not listen on ``host:port``, or None when it can. Probed before
    the minutes of warm-up, so a busy port fails at once. SO_REUSEADDR as the server
    itself uses it: a port left in TIME_WAIT by an app just stopped is free."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        return f"cannot listen on {host}: {exc}; pass --host 127.0.0.1 (or set GRADIO_SERVER_NAME)"
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return (f"port {port} on {host} is already in use (another app.py?); "
                        f"start on another port with --port {port + 1 if port < 65535 else 7861} "
                        "(or set GRADIO_SERVER_PORT)")
            return f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another --host or --port"
    return None


def warm_up(assistant: BundleAssistant, use_llm: bool, out=sys.stderr) -> bool:
    """Open the index and models before the first shopper arrives. Returns whether the
    LLM is usable (when it is not, the app runs on rules and says so in each reply)."""
    start = time.perf_counter()
    assistant.warm_up()
    print(f"index and embedder ready in {time.perf_counter() - start:.1f}s", file=out, flush=True)
    if not use_llm:
        return False
    print("loading the language model (the first run converts it, ~30 s) ...", file=out, flush=True)
    try:
        llm = assistant.llm
    except Exception as exc:
        print(f"  the language model could not load ({exc}); answers will use rules only", file=out, flush=True)
        return False
    gc.freeze()  # the model's objects too, as assistant.warm_up() did for the index
    start_memory_trimmer()
    print(f"  {llm.name} on {llm.device} ready", file=out, flush=True)
    return True


# The chat app loads the tuned adapter shipped for the packaged SmolLM2 unless told
# otherwise: in the shopper scenarios it passes exactly what the base model and the rules
# pass, its proposals are all valid before repair, and its chat turn is ~3.5 s p95 against
# the base model's ~10 s (README). Eval and the CLI keep the base model by default (eval
# must refuse the adapter on a split it was trained on, and says so when it is asked for).
APP_ADAPTER = "smollm2-bundles"


def app_adapter(requested: str | None, model: str | None) -> str | None:
    """The adapter the app loads: the one asked for ('none': the base model), else the
    shipped one on the packaged model, else none (it was trained for SmolLM2 only)."""
    if requested is not None:
        return None if requested.strip().lower() == "none" else requested
    return None if model else APP_ADAPTER


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a port number") from None
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"a port is 1..65535, got {text}")
    return value


def _fail(message: str) -> int:
    """One line on stderr and exit code 2, the CLI's convention for what the user can fix."""
    print(f"app.py: error: {message}", file=sys.stderr, flush=True)
    return EXIT_USER_ERROR


def main(argv: list[str] | None = None) -> int:
    from retrieval.config import env_settings
    from retrieval.embeddings import EmbeddingModelMissing
    from retrieval.index import IndexMissing
    from retrieval.schema import SchemaError
    from retrieval.store import StoreUnavailable
    from retrieval.validation import PartialBuild

    try:
        env = env_settings()  # BUNDLE_HOST/PORT, else Gradio's own GRADIO_SERVER_NAME/PORT
    except ValueError as exc:  # pydantic's ValidationError, e.g. GRADIO_SERVER_PORT=abc
        first = exc.errors()[0] if hasattr(exc, "errors") else {}
        return _fail(f"bad environment variable for {'.'.join(map(str, first.get('loc', ())))}: "
                     f"{first.get('msg', exc)}")
    parser = argparse.ArgumentParser(
        description="Bundle assistant web app (Gradio)",
        epilog="With no index in the data dir the first start builds the Complete Journey index "
               f"({CJ_BUILD_ESTIMATE}).")
    parser.add_argument("--host", default=env.host, help="default $BUNDLE_HOST, $GRADIO_SERVER_NAME or %(default)s")
    parser.add_argument("--port", type=_port, default=env.port,
                        help="default $BUNDLE_PORT, $GRADIO_SERVER_PORT or %(default)s")
    parser.add_argument("--data-dir", type=Path, help="index folder (default: $BUNDLE_DATA_DIR or the user cache)")
    parser.add_argument("--limit", type=int, help="if no index exists, build only this many households (quick)")
    parser.add_argument("--no-llm", action="store_true", help="rules only: no LLM intro or proposals")
    parser.add_argument("--model", help="another causal LM (local path or cached hub id)")
    parser.add_argument("--adapter", help="a LoRA adapter on the model (a folder or a shipped name); default "
                                          f"{APP_ADAPTER} on the packaged SmolLM2 (faster, valid answers), "
                                          "none with --model; 'none' for the base model")
    parser.add_argument("--personas", type=int, default=4, help="households in the persona picker")
    args = parser.parse_args(argv)
    problem = listen_problem(args.host, args.port)
    if problem:
        return _fail(problem)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = Settings(**({"data_dir": args.data_dir} if args.data_dir else {}))
    if args.model:
        settings.llm.model = args.model
    settings.llm.adapter = app_adapter(args.adapter, args.model)
    fix = f"`bundle-assistant index --force --data-dir {settings.data_dir}` rebuilds it"
    try:
        ensure_index(settings, limit=args.limit)
        assistant = BundleAssistant(settings)
        use_llm = warm_up(assistant, not args.no_llm)
        demo = build_app(assistant, use_llm=use_llm, personas=discover_personas(assistant, args.personas))
    except PartialBuild as exc:
        return _fail(f"could not build the first index: {exc}")
    except (IndexMissing, StoreUnavailable) as exc:
        return _fail(f"{exc}" if "bundle-assistant index" in str(exc) else f"{exc}; {fix}")
    except (EmbeddingModelMissing, SchemaError) as exc:
        return _fail(str(exc))
    if merch_credentials_from_env() is None:
        print(f"merchandiser tab off: set {MERCH_USER_ENV} and {MERCH_PASSWORD_ENV} to enable it", file=sys.stderr)
    print(f"open http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    try:
        launch(demo, args.host, args.port)
    except OSError as exc:  # taken between the probe and now
        return _fail(listen_problem(args.host, args.port) or f"could not start the server: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
