"""Helpers shared by the bench scripts: percentiles, memory, a child app server, writing results."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]
READY = "READY "  # the line a child server prints, then its info as JSON


def percentiles(samples: list[float]) -> dict[str, float]:
    arr = np.asarray(samples, dtype=float)
    if not len(arr):
        return {"n": 0}
    return {"n": int(len(arr)), "p50": round(float(np.percentile(arr, 50)), 4),
            "p95": round(float(np.percentile(arr, 95)), 4), "p99": round(float(np.percentile(arr, 99)), 4),
            "mean": round(float(arr.mean()), 4), "max": round(float(arr.max()), 4)}


def peak_rss_mib() -> float:
    """Peak resident memory of this process and its waited-for children, in MiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own, kids) / 1024, 1)


def rss_mib(pid: int | str = "self") -> float:
    """Resident memory of a process (``self``: this one) from /proc, in MiB; NaN when
    the kernel does not say."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def start_child(cmd: list[str], log_path: Path, timeout_s: float) -> tuple[subprocess.Popen, dict]:
    """Start a child server (its stderr to ``log_path``) and wait for its :data:`READY`
    line; exit with the log's tail when it dies or does not get there in ``timeout_s``."""
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, cwd=REPO,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith(READY):
            return proc, json.loads(line[len(READY):])
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise SystemExit(f"the app did not start; its log:\n{log_path.read_text()[-4000:]}")


def machine() -> dict:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "commit": commit}


def write(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({**payload, "machine": machine()}, indent=2, default=str))
    print(json.dumps(payload, indent=2, default=str))
    print(f"wrote {path}")
    return path
