"""Load: many concurrent shoppers through ``gradio_client``, each checked for leakage.

    python bench/bench_load.py [--sessions 20] [--seconds 120] [--max-requests 400]
                               [--data-dir DIR] [--limit 50] [--llm]

Starts the app as a child process on 127.0.0.1 (a free port) so that its memory can be
measured on its own, then runs ``--sessions`` shopper sessions at once. Each session is
one ``gradio_client.Client`` with its own persona (real Complete Journey households and
guests, alternating), its own budget and its own "no <word>" exclusion, and it loops
through chat turns, the "Cheaper" chip, add to cart, like and dislike with a reason, and
emptying the cart. Every session stops by itself after ``--seconds`` or
``--max-requests`` requests, whichever comes first; each request has a time limit too.

After every reply the session checks that it saw only its own state:

* the profile summary is its persona's (a household's stored profile, or the guest's);
* the constraints are its own: its budget (or lower, after "Cheaper"), its exclusion,
  and none of the other sessions' exclusions;
* every bundle is within its budget;
* the cart is exactly what this session put in it, made only of bundles it was shown;
* switching to its persona shows that persona's description and an empty cart.

Records errors (must be 0), check failures (leaks; must be 0), throughput (turns/s and
requests/s), p50/p95/p99 latency of chat turns and of the other actions, and the app
process's RSS after launch, after a warm-up, sampled during the run and at the end; memory
counts as flat when it grows by at most 5 % over the second half of the run (the first
half fills per-thread allocator arenas, session state and caches). The exit status is 1
when there were errors, failed checks or memory that did not stay flat.
Rules only by default; ``--llm`` turns the language model on. Writes
bench/results/load.json (``--out`` changes the name) and prints it.

Without ``--data-dir`` it uses (and builds once, ~2 min) the same 50-household Complete
Journey slice as ``bench_ui.py``, in the user cache.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import READY, percentiles, rss_mib, start_child, write  # noqa: E402

HOST = "127.0.0.1"
BUNDLES = 1  # index of the bundles JSON in /chat's outputs
NEEDS = ("pasta night", "taco night for four", "a quick breakfast", "movie night snacks",
         "a healthy lunch", "a bbq party", "soup for a cold day", "a picnic")
# One exclusion per session, each read by the parser as "no <word>" (checked).
WORDS = ("dairy", "bread", "chips", "pasta", "sugar", "meat", "cheese", "coffee", "soup", "juice",
         "nuts", "pork", "beef", "fish", "eggs", "rice", "candy", "soda", "tea", "cereal",
         "seafood", "gluten", "peanuts", "chocolate", "butter")
# "Memory stays flat": RSS grows by at most this much over the second half of the run.
FLAT_PCT = 5.0
# One cycle of a session; it repeats until the time or request limit.
STEPS = ("chat", "add_to_cart_1", "like_1", "cheaper", "dislike_2", "add_to_cart_1", "empty_cart")


def default_data_dir(limit: int) -> Path:
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("bundle-assistant")) / f"bench-cj-{limit}"


# ------------------------------------------------------------------------------ the server


def serve(args: argparse.Namespace) -> int:
    """The child process: build the index if needed, launch the app, print one READY
    line with the URL and the personas' expected profile summaries, and serve until
    stdin closes."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    import app
    from assistant.feedback import FeedbackStore
    from assistant.service import BundleAssistant
    from retrieval.config import Settings
    from retrieval.profiles import guest_profile

    settings = Settings(data_dir=args.data_dir)
    app.ensure_index(settings, limit=args.limit)
    assistant = BundleAssistant(settings)
    use_llm = app.warm_up(assistant, args.llm)
    personas = app.discover_personas(assistant, args.households)
    with tempfile.TemporaryDirectory(prefix="bench-load-") as scratch:
        store = FeedbackStore(Path(scratch) / "feedback.sqlite")
        demo = app.build_app(assistant, use_llm=use_llm, personas=personas, feedback=store,
                             merch_credentials=None)
        url = app.launch(demo, HOST, args.port, prevent_thread_lock=True, quiet=True)
        info = {
            "url": url, "pid": os.getpid(), "use_llm": use_llm,
            "products": int(len(assistant.index.products)),
            "personas": [{"key": p.key, "description": p.description,
                          "summary": (guest_profile("x").summary if p.key == app.GUEST_KEY
                                      else assistant.profile(p.key).summary)} for p in personas],
        }
        print(READY + json.dumps(info), flush=True)
        try:
            sys.stdin.read()  # the driver closes our stdin when it is done
        finally:
            demo.close()
            store.close()
    return 0


def start_server(args: argparse.Namespace, log_path: Path) -> tuple[subprocess.Popen, dict]:
    cmd = [sys.executable, __file__, "--serve", "--data-dir", str(args.data_dir), "--limit", str(args.limit),
           "--port", str(args.port), "--households", str(args.households)]
    if args.llm:
        cmd.append("--llm")
    return start_child(cmd, log_path, args.start_timeout)


def stop_server(proc: subprocess.Popen) -> None:
    try:
        proc.stdin.close()
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def process_handles(pid: int) -> dict[str, int]:
    """Threads and open file descriptors: a leak of either shows here before in memory."""
    return {"threads": len(list(Path(f"/proc/{pid}/task").iterdir())),
            "open_files": len(list(Path(f"/proc/{pid}/fd").iterdir()))}


class RssSampler(threading.Thread):
    def __init__(self, pid: int, every_s: float = 2.0):
        super().__init__(daemon=True)
        self.pid, self.every_s = pid, every_s
        self.samples: list[tuple[float, float]] = []
        self._halt = threading.Event()
        self._t0 = time.perf_counter()

    def run(self) -> None:
        while not self._halt.is_set():
            self.samples.append((round(time.perf_counter() - self._t0, 1), rss_mib(self.pid)))
            self._halt.wait(self.every_s)

    def stop(self) -> list[tuple[float, float]]:
        self._halt.set()
        self.join()
        return self.samples


# ------------------------------------------------------------------------------ a session


@dataclass
class Persona:
    key: str
    description: str
    summary: str


@dataclass
class SessionLog:
    index: int
    kind: str  # "household" or "guest"
    requests: int = 0
    turns: int = 0
    turns_without_bundles: int = 0
    turn_latencies: list[float] = field(default_factory=list)
    action_latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # leakage / wrong-state checks


class Session:
    """One shopper: a client, a persona, a budget and an exclusion of its own."""

    def __init__(self, i: int, url: str, persona: Persona, all_words: list[str], args: argparse.Namespace,
                 deadline: float):
        from gradio_client import Client

        self.i, self.persona, self.args, self.deadline = i, persona, args, deadline
        self.budget = float(10 + i)
        self.word = WORDS[i % len(WORDS)]
        self.others = {w for w in all_words if w != self.word}
        # the default 5 s limit on fetching the API info is too short for a loaded server
        self.client = Client(url, verbose=False, download_files=False,
                             httpx_kwargs={"timeout": args.request_timeout})
        self.on_screen: list[dict] = []  # bundles of the last reply
        self.shown_keys: set[str] = set()
        self.cart: dict[str, int] = {}  # bundle key -> quantity, as this session expects it
        self.log = SessionLog(i, "guest" if persona.key == "guest" else "household")

    # -- plumbing -------------------------------------------------------------------

    def call(self, api: str, *payload: Any) -> Any | None:
        start = time.perf_counter()
        try:
            out = self.client.submit(*payload, api_name=f"/{api}").result(timeout=self.args.request_timeout)
        except Exception as exc:  # a timeout, a server error, a dropped connection
            self.log.errors.append(f"{api}: {type(exc).__name__}: {str(exc)[:200]}")
            return None
        finally:
            self.log.requests += 1
        took = time.perf_counter() - start
        (self.log.turn_latencies if api in ("chat", "cheaper") else self.log.action_latencies).append(took)
        return out

    def fail(self, what: str) -> None:
        self.log.failures.append(f"session {self.i} ({self.log.kind}): {what}")

    def bundle_key(self, bundle: dict) -> str:
        return "+".join(sorted(item["product_id"] for item in bundle["items"]))

    # -- the loop -------------------------------------------------------------------

    def run(self) -> SessionLog:
        self.set_persona()
        step = 0
        while time.perf_counter() < self.deadline and self.log.requests < self.args.max_requests:
            name = STEPS[step % len(STEPS)]
            cycle = step // len(STEPS)
            if name == "chat":
                self.chat(f"{NEEDS[(self.i + cycle) % len(NEEDS)]} under ${self.budget:.0f}, no {self.word}")
            elif name == "cheaper":
                self.check_reply(self.call("cheaper", self.persona.key), cheaper=True)
            elif name.startswith("add_to_cart_"):
                self.add_to_cart(int(name.rsplit("_", 1)[1]))
            elif name.startswith(("like_", "dislike_")):
                self.thumb(name)
            elif name == "empty_cart":
                self.empty_cart()
            step += 1
        return self.log

    def set_persona(self) -> None:
        out = self.call("set_persona", self.persona.key)
        if out is None:
            return
        cart, info = out[-2], out[-1]
        if info != self.persona.description:
            self.fail(f"set_persona showed another persona's description: {info[:80]!r}")
        if cart.get("count") != 0:
            self.fail(f"a fresh session's cart is not empty: {cart}")

    def chat(self, message: str) -> None:
        self.check_reply(self.call("chat", message, self.persona.key), cheaper=False)

    def check_reply(self, out: Any, cheaper: bool) -> None:
        if out is None:
            return
        data = out[BUNDLES]
        self.log.turns += 1
        if data.get("profile_summary") != self.persona.summary:
            self.fail(f"profile summary is not this persona's: {str(data.get('profile_summary'))[:80]!r}")
        budget = (data.get("constraints") or {}).get("budget")
        if budget is None or budget > self.budget + 1e-9 or (not cheaper and budget != self.budget):
            self.fail(f"budget {budget} is not this session's {self.budget}")
        understood = data.get("understood") or []
        if f"no {self.word}" not in understood:
            self.fail(f"own exclusion 'no {self.word}' missing from {understood}")
        leaked = sorted(w for w in self.others if f"no {w}" in understood)
        if leaked:
            self.fail(f"another session's exclusions in this session: {leaked}")
        bundles = data.get("bundles") or []
        for b in bundles:
            if b["bundle_price"] is not None and budget is not None and b["bundle_price"] > budget + 1e-9:
                self.fail(f"bundle at ${b['bundle_price']} over the budget ${budget}")
        if not bundles:
            self.log.turns_without_bundles += 1
        self.on_screen = bundles
        self.shown_keys |= {self.bundle_key(b) for b in bundles}

    def add_to_cart(self, number: int) -> None:
        out = self.call(f"add_to_cart_{number}", self.persona.key)
        if out is None:
            return
        if len(self.on_screen) >= number:
            key = self.bundle_key(self.on_screen[number - 1])
            self.cart[key] = self.cart.get(key, 0) + 1
        self.check_cart(out[1])

    def empty_cart(self) -> None:
        out = self.call("empty_cart", self.persona.key)
        if out is None:
            return
        self.cart.clear()
        self.check_cart(out[1])

    def check_cart(self, cart: dict) -> None:
        got = {line["bundle_key"]: line["quantity"] for line in cart.get("lines", [])}
        if got != self.cart:
            self.fail(f"cart {got} is not what this session added {self.cart}")
        foreign = set(got) - self.shown_keys
        if foreign:
            self.fail(f"cart holds bundles this session was never shown: {sorted(foreign)[:2]}")

    def thumb(self, name: str) -> None:
        kind, number = name.split("_")
        reason = f"session {self.i} {kind}s it"
        out = self.call(name, reason, self.persona.key)
        if out is None:
            return
        _, note = out[0], out[1]
        on_screen = len(self.on_screen) >= int(number)
        expected = ("Glad you like" if kind == "like" else "Noted") if on_screen else "no bundle"
        if expected.lower() not in note.lower():
            self.fail(f"{name} answered {note[:80]!r}")


# ------------------------------------------------------------------------------ the run


def pick_personas(personas: list[Persona], sessions: int) -> list[Persona]:
    """Households and guests alternating: even sessions take the next household."""
    households = [p for p in personas if p.key != "guest"]
    guest = next(p for p in personas if p.key == "guest")
    return [households[(i // 2) % len(households)] if i % 2 == 0 and households else guest
            for i in range(sessions)]


def run_session(i: int, url: str, persona: Persona, words: list[str], args: argparse.Namespace,
                deadline: float) -> SessionLog:
    try:
        return Session(i, url, persona, words, args, deadline).run()
    except Exception as exc:  # the client could not even connect: an error, not a crash
        log = SessionLog(i, "guest" if persona.key == "guest" else "household")
        log.errors.append(f"client: {type(exc).__name__}: {str(exc)[:200]}")
        return log


def warm_up(url: str, personas: list[Persona], args: argparse.Namespace) -> None:
    """One turn per persona before measuring: first-use caches are not a leak."""
    for i, p in enumerate(personas):
        session = Session(i, url, p, [], args, time.perf_counter() + 60)
        if session.call("chat", "snacks under $20, no dairy", p.key) is None:
            raise SystemExit(f"the warm-up turn failed: {session.log.errors}")


def run(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-load-") as scratch:
        proc, info = start_server(args, Path(scratch) / "server.log")
        try:
            return drive(args, proc, info)
        finally:
            stop_server(proc)


def drive(args: argparse.Namespace, proc: subprocess.Popen, info: dict) -> dict:
    pid = info["pid"]
    personas = [Persona(**p) for p in info["personas"]]
    rss = {"after_launch": rss_mib(pid)}
    handles = {"after_launch": process_handles(pid)}
    warm_up(info["url"], personas, args)
    rss["after_warmup"] = rss_mib(pid)
    handles["after_warmup"] = process_handles(pid)

    chosen = pick_personas(personas, args.sessions)
    words = [WORDS[i % len(WORDS)] for i in range(args.sessions)]
    sampler = RssSampler(pid)
    sampler.start()
    start = time.perf_counter()
    deadline = start + args.seconds
    # Clients are made inside the threads so that 20 config fetches run in parallel.
    with ThreadPoolExecutor(max_workers=args.sessions) as pool:
        logs = list(pool.map(lambda i: run_session(i, info["url"], chosen[i], words, args, deadline),
                             range(args.sessions)))
    wall = time.perf_counter() - start
    samples = sampler.stop()
    rss["end"] = rss_mib(pid)
    handles["end"] = process_handles(pid)
    rss["max_during_run"] = max(r for _, r in samples)
    rss["growth_after_warmup"] = round(rss["end"] - rss["after_warmup"], 1)
    rss["growth_pct"] = round(100 * rss["growth_after_warmup"] / rss["after_warmup"], 1)
    # The first tens of seconds fill per-thread allocator arenas, sessions' state and
    # caches; a leak shows as growth that goes on in the second half.
    rss["at_half_time"] = next(r for t, r in samples if t >= wall / 2) if samples[-1][0] >= wall / 2 else rss["end"]
    rss["growth_second_half"] = round(rss["end"] - rss["at_half_time"], 1)
    rss["flat"] = rss["growth_second_half"] <= FLAT_PCT / 100 * rss["at_half_time"]
    step = max(1, len(samples) // 12)
    rss["timeline"] = samples[::step]

    errors = [e for log in logs for e in log.errors]
    failures = [f for log in logs for f in log.failures]
    turns = sum(log.turns for log in logs)
    requests = sum(log.requests for log in logs)
    return {
        "config": {"sessions": args.sessions, "seconds": args.seconds, "max_requests_per_session": args.max_requests,
                   "request_timeout_s": args.request_timeout, "use_llm": info["use_llm"],
                   "host": HOST, "products": info["products"], "data_dir": str(args.data_dir),
                   "households": sum(log.kind == "household" for log in logs),
                   "guests": sum(log.kind == "guest" for log in logs),
                   "distinct_households": len({p.key for p in chosen if p.key != "guest"})},
        "passed": not errors and not failures and rss["flat"],
        "errors": len(errors), "error_samples": errors[:10],
        "leak_check_failures": len(failures), "leak_check_samples": failures[:10],
        "wall_s": round(wall, 1),
        "requests": requests, "turns": turns,
        "turns_without_bundles": sum(log.turns_without_bundles for log in logs),
        "throughput": {"turns_per_s": round(turns / wall, 2), "requests_per_s": round(requests / wall, 2)},
        "turn_latency_s": percentiles([t for log in logs for t in log.turn_latencies]),
        "action_latency_s": percentiles([t for log in logs for t in log.action_latencies]),
        "requests_per_session": {"min": min(log.requests for log in logs),
                                 "max": max(log.requests for log in logs)},
        "rss_mib": rss,
        "server_threads_and_files": handles,
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=120.0, help="how long the sessions run")
    parser.add_argument("--max-requests", type=int, default=400, help="requests per session, at most")
    parser.add_argument("--request-timeout", type=float, default=60.0, help="seconds one request may take")
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--limit", type=int, default=50, help="households in the slice built when no index exists")
    parser.add_argument("--households", type=int, default=6, help="households among the personas")
    parser.add_argument("--port", type=int, default=0, help="0: a free port")
    parser.add_argument("--start-timeout", type=float, default=900.0, help="seconds for the app to start")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--llm", action="store_true", help="turn the language model on")
    mode.add_argument("--no-llm", dest="llm", action="store_false", help="rules only (the default)")
    parser.add_argument("--out", default="load", help="results name: bench/results/<out>.json")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sessions < 1 or args.seconds <= 0 or args.max_requests < 1:
        parser.error("--sessions, --seconds and --max-requests must be positive")
    args.data_dir = args.data_dir or default_data_dir(args.limit)
    if args.port == 0:
        import socket

        with socket.socket() as s:
            s.bind((HOST, 0))
            args.port = s.getsockname()[1]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve:
        return serve(args)
    result = run(args)
    write(args.out, result)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
