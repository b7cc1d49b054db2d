"""Sign-in hardening for the merchandiser console, with no UI code in it.

* :func:`check_credentials` compares both fields in constant time: it compares HMAC
  digests of equal length (so neither the content nor the length of a guess leaks
  through timing) and always evaluates both comparisons (no early exit on the user name).
* :class:`LoginThrottle` backs off repeated failures: once a user name *or* a client has
  ``max_failures`` (5) failures within ``window_s`` (5 minutes), every attempt for that
  key is refused, without checking the password, until ``delay = base_delay_s ×
  2^(failures − max_failures)`` seconds (capped at ``max_delay_s``) have passed since its
  last failure. The delay grows with each further failure; attempts refused while
  locked do not count, so a locked-out person who waits is not punished for retrying.
  Each refusal is logged with pseudonymised user name and client.
* :class:`SessionStore` issues random session tokens that expire after ``idle_s`` without
  use or ``max_age_s`` after sign-in, whichever comes first.
* :class:`MerchGate` puts the three together: the app calls ``sign_in``, ``check`` and
  ``sign_out`` and keeps only the token in its per-browser state.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("bundle_assistant.auth")

MAX_FAILURES = 5
WINDOW_S = 300.0
BASE_DELAY_S = 30.0
MAX_DELAY_S = 900.0
SESSION_IDLE_S = 30 * 60.0
SESSION_MAX_AGE_S = 8 * 3600.0
MAX_TRACKED_KEYS = 10_000  # random user names must not grow memory without bound

Clock = Callable[[], float]


def _digest(key: bytes, value: object) -> bytes:
    return hmac.new(key, str(value or "").encode("utf-8"), hashlib.sha256).digest()


def check_credentials(expected: tuple[str, str] | None, user: object, password: object) -> bool:
    """True only when both fields match; constant time in the content and length of
    the guess, both fields always compared."""
    if expected is None:
        return False
    key = secrets.token_bytes(32)  # fresh per call: the digests are compared, never kept
    ok_user = hmac.compare_digest(_digest(key, user), _digest(key, expected[0]))
    ok_password = hmac.compare_digest(_digest(key, password), _digest(key, expected[1]))
    return bool(ok_user & ok_password)  # `&`, not `and`: no short circuit


def _process_pseudonym() -> Callable[[str], str]:
    """A keyed hash with a per-process key: log lines stay pseudonymous when the app
    passes no pseudonymiser of its own (it should pass the project's HMAC)."""
    key = secrets.token_bytes(32)
    return lambda value: "p-" + hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest()[:16]


@dataclass
class _Failures:
    times: deque[float] = field(default_factory=deque)


@dataclass(frozen=True)
class ThrottleState:
    allowed: bool
    retry_after_s: float  # 0 when allowed
    failures: int  # recent failures of the most restricted key


class LoginThrottle:
    """Failure counts per user name and per client, over a sliding window."""

    def __init__(self, *, max_failures: int = MAX_FAILURES, window_s: float = WINDOW_S,
                 base_delay_s: float = BASE_DELAY_S, max_delay_s: float = MAX_DELAY_S,
                 clock: Clock = time.monotonic, pseudonymise: Callable[[str], str] | None = None):
        if max_failures < 1 or window_s <= 0 or base_delay_s <= 0 or max_delay_s < base_delay_s:
            raise ValueError("need max_failures >= 1, window_s > 0 and 0 < base_delay_s <= max_delay_s")
        self.max_failures = max_failures
        self.window_s = window_s
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self.clock = clock
        self.pseudonymise = pseudonymise or _process_pseudonym()
        self._failures: dict[str, _Failures] = {}
        self._lock = threading.Lock()

    @staticmethod
    def keys(user: object, client: object) -> list[str]:
        name = str(user or "").strip().casefold()
        where = str(client or "").strip()
        return [f"user:{name}", *([f"client:{where}"] if where else [])]

    def _recent(self, key: str, now: float) -> deque[float]:
        entry = self._failures.get(key)
        if entry is None:
            return deque()
        while entry.times and now - entry.times[0] > self.window_s:
            entry.times.popleft()
        if not entry.times:
            del self._failures[key]
            return deque()
        return entry.times

    def delay_for(self, failures: int) -> float:
        """The lock-out after ``failures`` recent failures (0 below the threshold)."""
        if failures < self.max_failures:
            return 0.0
        return min(self.max_delay_s, self.base_delay_s * 2.0 ** (failures - self.max_failures))

    def state(self, user: object, client: object) -> ThrottleState:
        now = self.clock()
        with self._lock:
            wait, worst = 0.0, 0
            for key in self.keys(user, client):
                times = self._recent(key, now)
                worst = max(worst, len(times))
                if times:
                    wait = max(wait, times[-1] + self.delay_for(len(times)) - now)
        return ThrottleState(allowed=wait <= 0, retry_after_s=max(0.0, round(wait, 3)), failures=worst)

    def record_failure(self, user: object, client: object) -> ThrottleState:
        now = self.clock()
        with self._lock:
            if len(self._failures) >= MAX_TRACKED_KEYS:
                self._forget_oldest(now)
            for key in self.keys(user, client):
                self._recent(key, now)
                self._failures.setdefault(key, _Failures()).times.append(now)
        state = self.state(user, client)
        if not state.allowed:
            self._log("locked", user, client, state)
        return state

    def record_success(self, user: object, client: object) -> None:
        with self._lock:
            for key in self.keys(user, client):
                self._failures.pop(key, None)

    def refuse(self, user: object, client: object, state: ThrottleState) -> None:
        """Log an attempt refused while locked (the password was not checked)."""
        self._log("refused", user, client, state)

    def _forget_oldest(self, now: float) -> None:
        for key in list(self._failures):
            self._recent(key, now)
        while len(self._failures) >= MAX_TRACKED_KEYS:
            oldest = min(self._failures, key=lambda k: self._failures[k].times[-1])
            del self._failures[oldest]

    def _log(self, what: str, user: object, client: object, state: ThrottleState) -> None:
        log.warning("merchandiser sign-in %s: user %s, client %s, %d failures in %.0f s, retry in %.0f s",
                    what, self.pseudonymise(str(user or "")), self.pseudonymise(str(client or "")),
                    state.failures, self.window_s, state.retry_after_s)


@dataclass
class Session:
    token: str
    user: str
    created: float
    last_seen: float


class SessionStore:
    """Random tokens; a session ends after ``idle_s`` unused or ``max_age_s`` in all."""

    def __init__(self, *, idle_s: float = SESSION_IDLE_S, max_age_s: float = SESSION_MAX_AGE_S,
                 clock: Clock = time.monotonic):
        if idle_s <= 0 or max_age_s <= 0:
            raise ValueError("session lifetimes must be > 0")
        self.idle_s = idle_s
        self.max_age_s = max_age_s
        self.clock = clock
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self, user: str) -> Session:
        now = self.clock()
        session = Session(token=secrets.token_urlsafe(32), user=str(user), created=now, last_seen=now)
        with self._lock:
            self._drop_expired(now)
            self._sessions[session.token] = session
        return session

    def _expired(self, s: Session, now: float) -> bool:
        return now - s.last_seen > self.idle_s or now - s.created > self.max_age_s

    def _drop_expired(self, now: float) -> None:
        for token in [t for t, s in self._sessions.items() if self._expired(s, now)]:
            del self._sessions[token]

    def validate(self, token: object) -> Session | None:
        """The live session of ``token`` (its idle clock restarts), else None."""
        if not isinstance(token, str) or not token:
            return None
        now = self.clock()
        with self._lock:
            session = self._sessions.get(token)
            if session is None:
                return None
            if self._expired(session, now):
                del self._sessions[token]
                return None
            session.last_seen = now
            return session

    def end(self, token: object) -> None:
        with self._lock:
            if isinstance(token, str):
                self._sessions.pop(token, None)


@dataclass(frozen=True)
class SignIn:
    ok: bool
    message: str
    token: str | None = None
    retry_after_s: float = 0.0


class MerchGate:
    """Credentials, throttle and sessions for the merchandiser console."""

    def __init__(self, credentials: tuple[str, str] | None, *, throttle: LoginThrottle | None = None,
                 sessions: SessionStore | None = None):
        self.credentials = credentials
        self.throttle = throttle or LoginThrottle()
        self.sessions = sessions or SessionStore()

    @property
    def enabled(self) -> bool:
        return self.credentials is not None

    def sign_in(self, user: object, password: object, client: object = "") -> SignIn:
        if self.credentials is None:
            return SignIn(False, "The merchandiser tools are off on this server.")
        state = self.throttle.state(user, client)
        if not state.allowed:
            self.throttle.refuse(user, client, state)
            return SignIn(False, _wait_message(state.retry_after_s), retry_after_s=state.retry_after_s)
        if not check_credentials(self.credentials, user, password):
            after = self.throttle.record_failure(user, client)
            message = "Wrong user name or password."
            if not after.allowed:
                message += " " + _wait_message(after.retry_after_s)
            return SignIn(False, message, retry_after_s=after.retry_after_s)
        self.throttle.record_success(user, client)
        session = self.sessions.create(str(user))
        return SignIn(True, f"Signed in as {user}.", token=session.token)

    def check(self, token: object) -> Session | None:
        return self.sessions.validate(token) if self.credentials is not None else None

    def sign_out(self, token: object) -> None:
        self.sessions.end(token)


def _wait_message(seconds: float) -> str:
    wait = max(1, int(round(seconds)))
    unit = f"{wait} seconds" if wait < 120 else f"{round(wait / 60)} minutes"
    return f"Too many failed sign-ins: try again in {unit}."
