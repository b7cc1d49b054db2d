"""The BundleRec training data a LoRA adapter may learn from (``bundle-assistant train-llm``).

It lives in ``eval`` because the split is the eval protocol's own
(:func:`eval.protocols.bundlerec_generation`): the adapter learns from exactly what the
protocol calls training data, and the held-out splits it returns are what
:func:`assistant.llm.tuning.mine` keeps away from the examples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from assistant.llm.adapter import domain_of
from retrieval.sources import load_source

from . import protocols as P


def training_split(data_path: Path | str, seed: int = 0, holdout_dev: bool = True) -> tuple[Any, dict, list[Any]]:
    """The BundleRec training data an adapter may learn from, what it is, and the splits
    held out from it (the test split, and the dev split with ``holdout_dev``).

    Always the training part of ``bundlerec_generation(ds, seed)`` (no test session, no
    test bundle). With ``holdout_dev`` its seeded dev share is held out as well, so the
    tuned model can be measured on sessions it never saw (the shipped adapter's choice).
    """
    ds = load_source("bundlerec", data_path)
    outer = P.bundlerec_generation(ds, seed)
    info = {"dataset": f"{Path(data_path).name} ({domain_of(ds)})", "protocol": "bundlerec-generation", "seed": seed,
            "outer_test_sessions": outer.info["test_sessions"],
            "outer_train_fingerprint": P.train_fingerprint(outer.train)}
    if not holdout_dev:
        return outer.train, {**info, "split": "train", "train_fingerprint": info["outer_train_fingerprint"]}, [outer]
    dev = P.bundlerec_generation_dev_of(outer, seed)
    info.update(split="train minus dev", dev_sessions=dev.info["test_sessions"],
                train_fingerprint=P.train_fingerprint(dev.train))
    return dev.train, info, [outer, dev]
