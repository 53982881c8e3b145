"""The hardware counters of one pCPU and the perf event each holds (x86 perf's per-CPU
``struct cpu_hw_events``)."""
from __future__ import annotations

from common import msr


class CpuHwEvents:
    """General-purpose and fixed counters of one hardware thread.

    Assignment follows x86 perf's scheduling in the cases vpmu-emu models: CPU-pinned events are
    placed first (at boot, they never leave), then a task's events at its schedule-in; an event
    that can count on a fixed counter takes it when it is free, else a general-purpose one. Ref
    cycles are two events: fixed counter 2's pseudo-encoding 0x0300 (REF_CPU_CYCLES,
    ``FIXED_EVENT_CONSTRAINT(0x0300, 2)``) only fits fixed counter 2, and the architectural
    event select 0x013C (KVM's GP counter: BUS_CYCLES in 4.20/5.7, raw 0x013c in 6.12) has no
    constraint on Skylake-SP (``intel_skl_event_constraints``): any GP counter, not fixed 2
    (docs/generations.md §3).
    """

    def __init__(self, cpu: int, gp: int, fixed: int):
        self.cpu = cpu
        self.gp: list = [None] * gp
        self.fixed: list = [None] * fixed

    def assign(self, event) -> tuple[str, int] | None:
        """Give ``event`` a free counter and return it, or None when none fits."""
        ref_gp = event.kind == "ref_cycles" and event.gp_encoding
        if event.kind in msr.FIXED_EVENTS and not ref_gp:
            j = msr.FIXED_EVENTS.index(event.kind)
            if j < len(self.fixed) and self.fixed[j] is None:
                self.fixed[j] = event
                return ("fixed", j)
        if event.kind == "ref_cycles" and not ref_gp:
            return None                  # 0x0300 is fixed counter 2's alone
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
