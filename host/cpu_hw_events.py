"""The hardware counters of one pCPU and the perf event each holds (x86 perf's per-CPU
``struct cpu_hw_events``)."""
from __future__ import annotations

from common import msr


class CpuHwEvents:
    """General-purpose and fixed counters of one hardware thread.

    Assignment follows x86 perf's scheduling in the cases vpmu-emu models: CPU-pinned events are
    placed first (at boot, they never leave), then a task's events at its schedule-in; an event
    that can count on a fixed counter takes it when it is free, else a general-purpose one.
    """

    def __init__(self, cpu: int, gp: int, fixed: int):
        self.cpu = cpu
        self.gp: list = [None] * gp
        self.fixed: list = [None] * fixed

    def assign(self, event) -> tuple[str, int] | None:
        """Give ``event`` a free counter and return it, or None when none fits."""
        if event.kind in msr.FIXED_EVENTS:
            j = msr.FIXED_EVENTS.index(event.kind)
            if j < len(self.fixed) and self.fixed[j] is None:
                self.fixed[j] = event
                return ("fixed", j)
        if event.kind == "ref_cycles":   # ref cycles count only on fixed counter 2
            return None
        for i, holder in enumerate(self.gp):
            if holder is None:
                self.gp[i] = event
                return ("gp", i)
        return None

    def release(self, slot: tuple[str, int]) -> None:
        bank, i = slot
        getattr(self, bank)[i] = None

    def free_gp(self) -> int:
        return sum(1 for holder in self.gp if holder is None)
