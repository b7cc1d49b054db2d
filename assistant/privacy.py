"""De-identification and safe export.

User ids never reach storage or logs: they are replaced by a keyed hash (HMAC-SHA256).
Without the key a pseudonym cannot be linked back to an id, not even by hashing a list of
candidate ids, which a plain SHA-256 would allow; with the same key the same id always
gives the same pseudonym, so a profile survives restarts. Rotating the key unlinks every
stored event from its user (a bulk "forget").
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
from pathlib import Path

# the spreadsheet-safe CSV writer lives with the index build that also uses it
from retrieval.safe_csv import neutralise_csv_cell, neutralise_frame, write_safe_csv  # noqa: F401

SECRET_ENV = "BUNDLE_HMAC_SECRET"
SECRET_FILE = "hmac_secret"
MIN_SECRET_LEN = 16
# 20 hex characters = 80 bits: a collision among a million users has odds of about 4e-13,
# while the pseudonym stays short enough to read in a log line.
PSEUDONYM_HEX = 20
USER_PREFIX, GUEST_PREFIX = "u-", "g-"
PSEUDONYM_RE = re.compile(rf"^(?:{USER_PREFIX}|{GUEST_PREFIX})[0-9a-f]{{{PSEUDONYM_HEX}}}$")

_secret_cache: dict[str, bytes] = {}  # resolved folder -> key; the file is read once


def _default_data_dir() -> Path:
    from retrieval.config import default_data_dir  # imported late: keeps this module light

    return default_data_dir()


def load_secret(data_dir: Path | str | None = None) -> bytes:
    """The HMAC key: ``$BUNDLE_HMAC_SECRET`` when set, else a random key generated once
    and kept in ``<data_dir>/hmac_secret`` with 0600 permissions."""
    from retrieval.config import env_settings

    env = env_settings().hmac_secret
    if env:
        if len(env) < MIN_SECRET_LEN:
            raise ValueError(f"{SECRET_ENV} must be at least {MIN_SECRET_LEN} characters")
        return env.encode("utf-8")
    folder = Path(data_dir) if data_dir is not None else _default_data_dir()
    key = str(folder.resolve())
    if key not in _secret_cache:
        _secret_cache[key] = _file_secret(folder / SECRET_FILE)
    return _secret_cache[key]


def _file_secret(path: Path) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL: when two processes start at once exactly one writes the key
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_secret(path)
    secret = secrets.token_hex(32)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(secret)
        f.flush()
        os.fsync(f.fileno())
    return secret.encode("ascii")


def _read_secret(path: Path) -> bytes:
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)
    for _ in range(40):  # the process that created it may still be writing it
        secret = path.read_text(encoding="ascii").strip()
        if len(secret) >= MIN_SECRET_LEN:
            return secret.encode("ascii")
        time.sleep(0.05)
    raise ValueError(f"{path} holds no usable secret; delete it to make a new one")


def _digest(message: str, secret: bytes) -> str:
    return hmac.new(secret, message.encode("utf-8"), hashlib.sha256).hexdigest()[:PSEUDONYM_HEX]


def pseudonymise(
    user_id: str, secret: bytes | None = None, data_dir: Path | str | None = None
) -> str:
    """``"u-"`` + the first 20 hex characters of HMAC-SHA256(secret, user_id)."""
    user_id = str(user_id).strip()
    if not user_id:
        raise ValueError("user_id is empty")
    return USER_PREFIX + _digest(user_id, secret if secret is not None else load_secret(data_dir))


def guest_pseudonym(
    session_id: str, secret: bytes | None = None, data_dir: Path | str | None = None
) -> str:
    """A shopper who is not signed in: the pseudonym of ``"guest-<session>"``, with a
    ``"g-"`` prefix so evaluation can tell one-session guests from returning users."""
    session_id = str(session_id).strip()
    if not session_id:
        raise ValueError("session_id is empty")
    key = secret if secret is not None else load_secret(data_dir)
    return GUEST_PREFIX + _digest(f"guest-{session_id}", key)


def is_pseudonym(value: str) -> bool:
    return isinstance(value, str) and bool(PSEUDONYM_RE.match(value))

