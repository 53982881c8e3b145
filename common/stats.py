"""Timing samples with a bounded size: exact count, sum and min, and a seeded reservoir for
percentiles, so a report stays small however long the run."""
from __future__ import annotations

import numpy as np

from common.schema import SampleSet

RESERVOIR = 10_000


class Samples:
    def __init__(self, seed: int = 0):
        self.count = 0
        self.sum = 0
        self.min: int | None = None
        self.reservoir: list[int] = []
        self.rng = np.random.default_rng(seed)

    def add(self, value: int) -> None:
        self.count += 1
        self.sum += value
        self.min = value if self.min is None else min(self.min, value)
        if len(self.reservoir) < RESERVOIR:
            self.reservoir.append(value)
        else:                                   # Algorithm R
            j = int(self.rng.integers(self.count))
            if j < RESERVOIR:
                self.reservoir[j] = value

    def to_record(self) -> SampleSet:
        return SampleSet(self.count, self.sum, self.min or 0, self.reservoir)


def summary(parts: list[SampleSet]) -> dict:
    """mean / p50 / p99 / min over the samples of several reports (zeros when there are none)."""
    count = sum(p.count for p in parts)
    if not count:
        return {"mean": 0, "p50": 0, "p99": 0, "min": 0}
    pool = np.asarray([x for p in parts for x in p.reservoir], dtype=np.float64)
    return {"mean": sum(p.sum for p in parts) / count,
            "p50": float(np.percentile(pool, 50)), "p99": float(np.percentile(pool, 99)),
            "min": float(min(p.min for p in parts if p.count))}
