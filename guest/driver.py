"""The guest kernel's perf driver, as Linux's x86 Intel PMU driver drives an architectural PMU v2.

``perf record -e EVENT -c PERIOD`` on a general-purpose counter: program it through trapped MSR
writes, and on each PMI run intel_pmu_handle_irq (vpmu-facts.md §5, late ack as on Haswell and
later): disable all, read status, acknowledge, update and re-arm each overflowed counter, read
status again, enable all, unmask LVTPC.
"""
from __future__ import annotations

import logging

from common import msr
from guest.cpu import GuestCpu

log = logging.getLogger("guest")

# The unit_sel of each architectural event kind.
EVENT_CODES = {kind: code for code, kind in msr.ARCH_EVENTS.items()}
MAX_PERIOD = msr.COUNTER_MASK >> 1          # full-width writes: cntval_mask >> 1
HANDLER_LOOP_LIMIT = 100


class PerfRecord:
    """One sampling event on GP counter ``counter`` with a fixed period."""

    def __init__(self, cpu: GuestCpu, kind: str, period: int, counter: int = 0):
        self.cpu = cpu
        self.kind = kind
        self.period = period
        self.counter = counter
        self.config = (EVENT_CODES[kind] | msr.EVTSEL_USR | msr.EVTSEL_OS | msr.EVTSEL_INT)
        self.intel_ctrl = 0
        self.period_left = period
        self.prev_raw = 0
        self.count = 0
        self.samples = 0
        self.handled = 0

    def start(self) -> None:
        cpu = self.cpu
        eax, _, _, edx = cpu.cpuid(0xA)
        nr_gp, nr_fixed = (eax >> 8) & 0xFF, edx & 0x1F
        self.intel_ctrl = ((1 << nr_gp) - 1) | (((1 << nr_fixed) - 1) << msr.FIXED_IDX_BASE)
        cpu.on_pmi(self.handle_irq)
        cpu.wrmsr(msr.MSR_X2APIC_LVTPC, msr.APIC_DM_NMI)
        cpu.wrmsr(msr.MSR_CORE_PERF_GLOBAL_CTRL, 0)               # perf_pmu_disable
        self.set_period()
        cpu.wrmsr(msr.MSR_P6_EVNTSEL0 + self.counter, self.config | msr.EVTSEL_EN)
        cpu.wrmsr(msr.MSR_CORE_PERF_GLOBAL_CTRL, self.intel_ctrl)  # perf_pmu_enable

    def update(self) -> None:
        """x86_perf_event_update: fold the counter's progress since the last write."""
        new = self.cpu.rdpmc(self.counter)
        delta = (new - self.prev_raw) & msr.COUNTER_MASK
        self.prev_raw = new
        self.count += delta
        self.period_left -= delta

    def set_period(self) -> None:
        """x86_perf_event_set_period: write -left so the counter overflows after ``left``."""
        left = self.period_left
        if left <= -self.period:
            left = self.period
        elif left <= 0:
            left += self.period
        left = max(2, min(left, MAX_PERIOD))
        self.period_left = left
        self.prev_raw = (-left) & msr.COUNTER_MASK
        self.cpu.wrmsr(msr.MSR_IA32_PMC0 + self.counter, self.prev_raw)

    def handle_irq(self, cpu: GuestCpu) -> None:
        cpu.wrmsr(msr.MSR_CORE_PERF_GLOBAL_CTRL, 0)
        status = cpu.rdmsr(msr.MSR_CORE_PERF_GLOBAL_STATUS)
        if status:
            self.handled += 1
        loops = 0
        while status:
            loops += 1
            if loops > HANDLER_LOOP_LIMIT:
                log.warning("PMI handler looped %d times; status %#x", loops, status)
                break
            cpu.wrmsr(msr.MSR_CORE_PERF_GLOBAL_OVF_CTRL, status)
            if status & (1 << self.counter):
                self.update()
                self.set_period()
                self.samples += 1
            status = cpu.rdmsr(msr.MSR_CORE_PERF_GLOBAL_STATUS)
        cpu.wrmsr(msr.MSR_CORE_PERF_GLOBAL_CTRL, self.intel_ctrl)
        cpu.wrmsr(msr.MSR_X2APIC_LVTPC, msr.APIC_DM_NMI)
