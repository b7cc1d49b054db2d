"""How long building the Complete Journey index takes, and one progress bar with an ETA.

The figures are measured, not guessed (README, "Measured figures"): a cold full build
took 163 s on this project's 2-core machine when it was otherwise idle
(``python bench/bench_index.py``), and about 6.5 minutes when other work kept both cores
busy. Every place that tells a user how long the first start takes (the CLI's help, the
app's first-start message, the README) uses :data:`CJ_BUILD_ESTIMATE`.
"""

from __future__ import annotations

import sys
from typing import TextIO

from tqdm.auto import tqdm

CJ_BUILD_IDLE_S = 163  # bench/bench_index.py, 2 idle cores, no embedding cache
CJ_BUILD_BUSY_S = 345  # with the first ranker stage, `bundle-assistant index`, other work running (load ~3-5)
# the ranker now trains on every eligible basket at a lower learning rate (issue 10, dev
# split): its stage took 130 s, and the stages of a rebuild with a warm embedding cache 275 s, at load ~1-2
CJ_BUILD_REBUILD_S = 275  # the sum of the stage seconds the build printed
CJ_BUILD_ESTIMATE = "about 5 to 8 minutes on 2 CPU cores"
MAX_REJECTED_SHARE = 0.5  # a build that rejects more of its rows than this is refused, unless forced

# Seconds of each stage in the measured idle build: the bar advances by these, so its
# rate is "idle-machine seconds per second" and its ETA scales with the real load.
STAGE_SECONDS = {"load": 4.0, "embed": 88.0, "products_store": 50.0, "copurchase": 12.0,
                 # ranker: 130 s at load ~1-2 (a full rebuild, retrieval/buildtime.CJ_BUILD_REBUILD_S)
                 "profiles": 7.0, "ranker": 125.0, "save": 2.0, "filters": 6.0}
UNKNOWN_STAGE_SECONDS = 5.0  # a stage added later, until it is measured
STAGE_WORDS = {"load": "loading the data", "embed": "embedding products", "products_store": "storing products",
               "copurchase": "co-purchase statistics", "profiles": "user profiles", "save": "saving",
               "filters": "diet and allergen columns"}


class BuildProgress:
    """An overall tqdm bar for a build: pass :meth:`stage` as ``build_index(on_stage=...)``.

    Each stage's start marks the stages before it done; tqdm's ETA then comes from how
    fast the finished stages went compared with the measured idle build."""

    def __init__(self, out: TextIO | None = None, *, disable: bool = False, stages: dict[str, float] | None = None,
                 marker: str = "[{}]"):
        self.marker = marker  # each stage also gets a line of its own, for logs (and scripts) to follow
        self.stages = dict(stages or STAGE_SECONDS)
        self.done: list[str] = []
        self.current = "load"
        self.out = out or sys.stderr
        self.bar = tqdm(total=round(sum(self.stages.values())), desc=self._desc("load"), unit="s",
                        bar_format="{desc}: {percentage:3.0f}%|{bar:20}| {elapsed} elapsed, ETA {remaining}",
                        file=self.out, disable=disable, mininterval=0, leave=True)

    @staticmethod
    def _desc(stage: str) -> str:
        return f"building the index ({STAGE_WORDS.get(stage, stage.replace('_', ' '))})"

    def stage(self, name: str) -> None:
        if name == self.current:
            return
        self._finish(self.current)
        self.current = name
        if self.marker:
            self.bar.write(self.marker.format(name), file=self.out)
        if name not in self.stages:
            self.stages[name] = UNKNOWN_STAGE_SECONDS
            self.bar.total = round(sum(self.stages.values()))
        self.bar.set_description_str(self._desc(name), refresh=True)

    def _finish(self, name: str) -> None:
        if name in self.done:
            return
        self.done.append(name)
        self.bar.update(round(self.stages.get(name, UNKNOWN_STAGE_SECONDS)))

    def close(self) -> None:
        self.bar.n = self.bar.total
        self.bar.set_description_str("building the index (done)", refresh=True)
        self.bar.close()
