"""Memory over a long chat session with the language model on.

    python bench/bench_memory.py [--data-dir DIR] [--minutes 10] [--sample-s 10] [--no-llm]
                                 [--persona KEY] [--out memory]

Starts the app as a child process (so its RSS is its own; feedback goes to a temporary
folder, the data dir is only read), then one shopper talks to it through
``gradio_client`` for ``--minutes``: a need, "cheaper", add to cart, like, a follow-up,
a new need, and every tenth turn "start over", back to back. It samples the server's RSS
every ``--sample-s`` seconds, and asks the server itself (over its stdin) for what could
explain growth: live Python objects by type, threads, and how much RSS glibc hands back
after a full collection and ``malloc_trim`` (growth that comes back there is allocator
caching, not a leak).

The object census is taken at the start, half-way and at the end; ``end_diag.grew_by_type``
is what the second half added. Growth is measured over the second half of the run (the first half fills caches,
allocator arenas and the model's buffers): flat means at most ``FLAT_MIB_PER_MIN``.
Writes bench/results/<out>.json and prints it; exits 1 when memory did not stay flat.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import gc
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import READY, percentiles, rss_mib, start_child, write  # noqa: E402

HOST = "127.0.0.1"
FLAT_MIB_PER_MIN = 2.0  # over the second half; ~20 MiB in 10 minutes
NEEDS = ("pasta night for two", "taco night for four under $25, no dairy", "a quick healthy breakfast",
         "movie night snacks without nuts", "soup for a cold day", "a picnic for four", "a bbq party",
         "a healthy lunch for work")
BUNDLES = 1  # the bundles JSON in /chat's outputs


# ------------------------------------------------------------------------------ the server


def _types() -> collections.Counter:
    return collections.Counter(type(o).__name__ for o in gc.get_objects())


def diagnose(first: collections.Counter | None) -> dict:
    """What the server holds now: RSS, live objects (and the types that grew since
    ``first``), threads; then RSS after gc.collect() and malloc_trim(0)."""
    before = rss_mib()
    types = _types()
    grew = {} if first is None else dict((types - first).most_common(12))
    gc.collect()
    after_gc = rss_mib()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    return {"rss_mib": before, "rss_after_gc_mib": after_gc, "rss_after_trim_mib": rss_mib(),
            "objects": sum(types.values()), "grew_by_type": grew, "threads": threading.active_count()}


def serve(args: argparse.Namespace) -> int:
    """The child: open the index and model as the app does, launch, print READY, then
    answer ``diag`` lines on stdin until it closes."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    import app
    from assistant.feedback import FeedbackStore
    from assistant.service import BundleAssistant
    from retrieval.config import Settings

    settings = Settings(data_dir=args.data_dir)
    assistant = BundleAssistant(settings)
    use_llm = app.warm_up(assistant, not args.no_llm)
    personas = app.discover_personas(assistant, 4)
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as scratch:
        store = FeedbackStore(Path(scratch) / "feedback.sqlite")
        demo = app.build_app(assistant, use_llm=use_llm, personas=personas, feedback=store, merch_credentials=None)
        url = app.launch(demo, HOST, None, prevent_thread_lock=True, quiet=True)
        first = None
        print(READY + json.dumps({"url": url, "pid": os.getpid(), "use_llm": use_llm,
                                  "personas": [p.key for p in personas],
                                  "products": int(len(assistant.index.products))}), flush=True)
        for line in sys.stdin:
            if line.strip() == "diag":
                report = diagnose(first)
                first = _types()  # the next report's "grew_by_type" counts from here
                print("DIAG " + json.dumps(report), flush=True)
        demo.close()
        store.close()
    return 0


def start_server(args: argparse.Namespace, log_path: Path) -> tuple[subprocess.Popen, dict]:
    cmd = [sys.executable, __file__, "--serve", "--data-dir", str(args.data_dir)]
    if args.no_llm:
        cmd.append("--no-llm")
    return start_child(cmd, log_path, 900)


def ask_diag(proc: subprocess.Popen) -> dict:
    proc.stdin.write("diag\n")
    proc.stdin.flush()
    while True:
        line = proc.stdout.readline()
        if not line:
            raise SystemExit("the server went away")
        if line.startswith("DIAG "):
            return json.loads(line[5:])


# ------------------------------------------------------------------------------ the session


def script():
    """The shopper's moves, cycled: (api, args) pairs; "chat" takes a message."""
    turn = 0
    while True:
        for need in NEEDS:
            for step in (("chat", need), ("cheaper", None), ("add_to_cart_1", None), ("like_1", None),
                         ("chat", "something without cheese"), ("bigger", None)):
                yield step
                if step[0] in ("chat", "cheaper", "bigger"):
                    turn += 1
                    if turn % 10 == 0:
                        yield ("start_over", None)
                        yield ("empty_cart", None)


def run_session(url: str, persona: str, seconds: float, out: dict) -> None:
    from gradio_client import Client

    client = Client(url, verbose=False, download_files=False, httpx_kwargs={"timeout": 120})
    deadline = time.monotonic() + seconds
    turns, actions, errors, no_bundles = [], [], [], 0
    for api, text in script():
        if time.monotonic() >= deadline:
            break
        start = time.perf_counter()
        try:
            args = (text, persona) if api == "chat" else ("", persona) if api.startswith("like") else (persona,)
            result = client.predict(*args, api_name=f"/{api}")
        except Exception as exc:  # a failed action is recorded, the session goes on
            errors.append(f"{api}: {type(exc).__name__}: {str(exc)[:200]}")
            continue
        took = time.perf_counter() - start
        if api in ("chat", "cheaper", "bigger", "start_over"):
            turns.append(took)
            if api != "start_over" and not (result[BUNDLES] or {}).get("bundles"):
                no_bundles += 1
        else:
            actions.append(took)
    out.update(turns=len(turns), turn_s=percentiles(turns), actions=len(actions), action_s=percentiles(actions),
               turns_without_bundles=no_bundles, errors=errors[:20], error_count=len(errors))


def growth(samples: list[tuple[float, float]]) -> dict:
    """MiB and MiB/min over the second half of the run, by least squares."""
    import numpy as np

    half = [(t, r) for t, r in samples if t >= samples[-1][0] / 2]
    t = np.array([s[0] for s in half]) / 60
    r = np.array([s[1] for s in half])
    slope = float(np.polyfit(t, r, 1)[0]) if len(half) >= 3 else float("nan")
    return {"second_half_start_mib": half[0][1], "end_mib": half[-1][1],
            "second_half_mib": round(half[-1][1] - half[0][1], 1), "slope_mib_per_min": round(slope, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, help="a built index (default: $BUNDLE_DATA_DIR or the user cache)")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--sample-s", type=float, default=10.0)
    parser.add_argument("--no-llm", action="store_true", help="rules only (the LLM is on by default)")
    parser.add_argument("--persona", help="household id to shop as (default: the app's first persona)")
    parser.add_argument("--out", default="memory")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.data_dir is None:
        from retrieval.config import Settings

        args.data_dir = Settings().data_dir
    if args.serve:
        return serve(args)

    log_path = Path(tempfile.gettempdir()) / "bench-memory-server.log"
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    proc, info = start_server(args, log_path)
    started_s = round(time.perf_counter() - t0, 1)
    pid = info["pid"]
    persona = args.persona or info["personas"][0]
    after_start = rss_mib(pid)
    first_diag = ask_diag(proc)  # also takes the object census the end is compared with

    samples: list[tuple[float, float]] = []
    session: dict = {}
    worker = threading.Thread(target=run_session, args=(info["url"], persona, args.minutes * 60, session))
    t_run = time.perf_counter()
    worker.start()
    mid_diag = None
    while worker.is_alive():
        now = round(time.perf_counter() - t_run, 1)
        samples.append((now, rss_mib(pid)))
        if mid_diag is None and now >= args.minutes * 30:
            mid_diag = ask_diag(proc)  # the second half's census starts here
        worker.join(args.sample_s)
    samples.append((round(time.perf_counter() - t_run, 1), rss_mib(pid)))
    last_diag = ask_diag(proc)
    load_end = os.getloadavg()
    proc.stdin.close()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()

    g = growth(samples)
    flat = g["slope_mib_per_min"] <= FLAT_MIB_PER_MIN
    payload = {
        "what": f"one gradio_client shopper for {args.minutes:g} min against app.py, "
                f"LLM {'on' if info['use_llm'] else 'off'}",
        "data_dir": str(args.data_dir), "products": info["products"], "persona": persona,
        "server_start_s": started_s, "rss_after_start_mib": after_start,
        "rss_max_mib": max(r for _, r in samples), "rss_end_mib": samples[-1][1],
        "growth": g, "flat": flat, "flat_limit_mib_per_min": FLAT_MIB_PER_MIN,
        "session": session, "start_diag": first_diag, "mid_diag": mid_diag, "end_diag": last_diag,
        "load_average_start": [round(x, 2) for x in load_start], "load_average_end": [round(x, 2) for x in load_end],
        "samples": samples,
    }
    write(args.out, payload)
    return 0 if flat and not session.get("error_count") else 1


if __name__ == "__main__":
    sys.exit(main())
