"""Timing samples with a bounded size: exact count, sum, min and max; the one-time sample apart
(a one-time cost, such as a vCPU's first perf event creation, must not hide in a mean that then
changes with the run's length); and a seeded reservoir of the steady samples for percentiles, so
a report stays small however long the run."""
from __future__ import annotations

import numpy as np

from common.schema import SampleSet

RESERVOIR = 10_000


class Samples:
    def __init__(self, seed: int = 0):
        self.count = 0
        self.sum = 0
        self.min: int | None = None
        self.max: int | None = None
        self.first: int | None = None           # the one-time sample
        self.marked = False                      # ``first`` was added with once=True
        self.steady_max: int | None = None
        self.steady: list[int] = []             # a reservoir of the other samples
        self.seen_steady = 0
        self.rng = np.random.default_rng(seed)

    def add(self, value: int, once: bool = False) -> None:
        """One sample; ``once``: it holds a one-time cost. The one-time sample is the first one
        added with ``once``, else the first one."""
        self.count += 1
        self.sum += value
        self.min = value if self.min is None else min(self.min, value)
        self.max = value if self.max is None else max(self.max, value)
        if self.first is None or (once and not self.marked):
            if self.first is not None:           # the first was a steady one after all
                self._add_steady(self.first)
            self.first, self.marked = value, once
        else:
            self._add_steady(value)

    def _add_steady(self, value: int) -> None:
        self.seen_steady += 1
        self.steady_max = value if self.steady_max is None else max(self.steady_max, value)
        if len(self.steady) < RESERVOIR:
            self.steady.append(value)
        else:                                   # Algorithm R
            j = int(self.rng.integers(self.seen_steady))
            if j < RESERVOIR:
                self.steady[j] = value

    def to_record(self) -> SampleSet:
        """The report's form: ``reservoir`` starts with the one-time sample, then the steady
        ones."""
        return SampleSet(self.count, self.sum, self.min or 0, self.max or 0, self.steady_max or 0,
                         [self.first, *self.steady] if self.count else [])


def summary(parts: list[SampleSet]) -> dict:
    """Over the samples of several reports (one per vCPU): mean / p50 / p99 / min / max of all,
    ``first`` (the largest of the parts' one-time samples) and ``steady`` (mean / p50 / p99 /
    max of the others); zeros when there are none."""
    count = sum(p.count for p in parts)
    if not count:
        return {"mean": 0, "p50": 0, "p99": 0, "min": 0, "max": 0, "first": 0,
                "steady": {"mean": 0, "p50": 0, "p99": 0, "max": 0}}
    seen = [p for p in parts if p.count]
    total, firsts = sum(p.sum for p in seen), [p.reservoir[0] for p in seen]
    return {"mean": total / count, **percentiles([x for p in seen for x in p.reservoir]),
            "min": float(min(p.min for p in seen)), "max": float(max(p.max for p in seen)),
            "first": float(max(firsts)),
            "steady": {"mean": (total - sum(firsts)) / (count - len(seen)) if count > len(seen)
                       else 0, **percentiles([x for p in seen for x in p.reservoir[1:]]),
                       "max": float(max(p.steady_max for p in seen))}}


def percentiles(values: list[int]) -> dict:
    if not values:
        return {"p50": 0, "p99": 0}
    pool = np.asarray(values, dtype=np.float64)
    return {"p50": float(np.percentile(pool, 50)), "p99": float(np.percentile(pool, 99))}
