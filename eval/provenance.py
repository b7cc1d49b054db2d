"""Where a result came from: the git commit, package versions, the command line, and the
JSON clean-up every result goes through before it is written."""

from __future__ import annotations

import platform
from collections.abc import Sequence
from importlib import metadata

import numpy as np

from retrieval.gitstate import git_state

VERSIONED = ("torch", "transformers", "accelerate", "sentence-transformers", "chromadb", "langchain-core",
             "llguidance", "ranx", "numpy", "pandas", "scipy", "lightgbm", "bundle-assistant")


def git_commit() -> dict:
    head, dirty = git_state()
    return {"commit": head, "dirty": dirty}


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def command_line(protocol: str, data_dir, cases: int | None, seed: int, variants: Sequence[str], out,
                 limit: int | None, llm_cases: int | None, default_llm_cases: int | None,
                 split: str = "test", tune_baselines: bool = False, adapter: str | None = None) -> str:
    """The ``bundle-assistant eval`` command that reproduces a run."""
    parts = ["bundle-assistant eval", f"--protocol {protocol}"]
    if data_dir:
        parts.append(f"--data-dir {data_dir}")
    if split != "test":
        parts.append(f"--split {split}")
    if tune_baselines:
        parts.append("--tune-baselines")
    if cases:
        parts.append(f"--cases {cases}")
    parts += [f"--seed {seed}", f"--variants {','.join(variants) or 'none'}"]
    if llm_cases is not None and llm_cases != default_llm_cases:
        parts.append(f"--llm-cases {llm_cases}")
    if limit:
        parts.append(f"--limit {limit}")
    if adapter:
        parts.append(f"--adapter {adapter}")
    parts.append(f"--out {out}")
    return " ".join(parts)


def clean(value):
    """JSON-ready: numpy scalars to Python, floats rounded to 6 places, NaN to None."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, (np.floating, float)):
        f = float(value)
        return None if f != f else round(f, 6)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value
