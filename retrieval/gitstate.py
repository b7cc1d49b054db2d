"""Which commit of this repository produced a result, and whether its tracked files had
uncommitted changes: the one git query behind the eval results' and the adapter cards'
provenance. In the lowest layer so that both can use it without ``assistant`` importing
``eval``."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def git_state(repo: Path | None = None) -> tuple[str | None, bool | None]:
    """``(HEAD's commit or None, tracked files dirty)``; ``(None, None)`` when git cannot
    be asked (not installed, timed out). Untracked files do not count as dirty."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo or REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo or REPO,
                               capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None, None
    return head or None, bool(dirty)
