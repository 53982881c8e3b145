"""A bare-metal PMU in-process: what the guest driver sees, with no KVM behind it.

The architectural state is the oracle's (guest/oracle.py keeps exactly what the hardware would:
counter values, enables, overflow status); this adds what hardware does with it — PMIs at the
overflowing event — so the guest driver can be tested alone."""
from common import msr
from guest.oracle import Oracle


class FakeCpu:
    def __init__(self, ghz=2.5, nr_gp=4, nr_fixed=3, perf_cap=None):
        self.perf_cap = perf_cap                         # None: no PDCM in CPUID.1
        self.workload = type("W", (), {"ghz": ghz})()
        self.nr_gp, self.nr_fixed = nr_gp, nr_fixed
        self.hw = Oracle(nr_gp, nr_fixed)
        self.hw.lvtpc = msr.APIC_DM_NMI                  # PMIs are checked by the driver tests
        self.cycles = 0
        self.pmi = self.tick = None
        self.tick_cycles = 0
        self.next_tick = 0
        self.in_pmi = False
        self.pmis = 0

    def cpuid(self, leaf, sub=0):
        if leaf == 0x1:
            return (0, 0, 0 if self.perf_cap is None else msr.CPUID_1_ECX_PDCM, 0)
        return (2 | self.nr_gp << 8 | 48 << 16, 0, 0, self.nr_fixed | 48 << 5)

    def on_pmi(self, fn):
        self.pmi = fn

    def on_tick(self, fn, ns):
        self.tick, self.tick_cycles = fn, int(ns * self.workload.ghz)
        self.next_tick = self.cycles + self.tick_cycles

    def wrmsr(self, index, value):
        named = msr.counter_msr(index)
        if named and named[1] == "full":
            assert self.perf_cap is not None and self.perf_cap & msr.PERF_CAP_FW_WRITE, \
                "no full-width MSRs on this CPU"
        if index != msr.MSR_X2APIC_LVTPC:
            self.hw.wrmsr(index, value)

    def rdmsr(self, index):
        if index == msr.MSR_IA32_PERF_CAPABILITIES:
            assert self.perf_cap is not None, "PERF_CAPABILITIES read without PDCM"
            return self.perf_cap
        assert index == msr.MSR_CORE_PERF_GLOBAL_STATUS
        return self.hw.status

    def rdpmc(self, ecx):
        return self.hw.value[msr.rdpmc_counter(ecx)]

    def retire(self, cycles, per_cycle=None):
        """Retire ``cycles`` cycles (and per_cycle[k] x cycles of other kinds), stopping at
        every overflow and tick to deliver the PMI or run the tick there."""
        per_cycle = dict(per_cycle or {}, cycles=1)
        left = cycles
        while left:
            step = left
            for idx, value in self.hw.value.items():
                kind, _ = self.hw.counting(idx, 3)
                if per_cycle.get(kind):
                    step = min(step, (msr.COUNTER_MASK + 1 - value) // per_cycle[kind] or 1)
            if self.tick:
                step = max(1, min(step, self.next_tick - self.cycles))
            before = self.hw.status
            self.hw.retire({k: n * step for k, n in per_cycle.items()})
            self.hw.pending.clear()                      # the oracle's PMI bookkeeping: unused
            self.cycles += step
            left -= step
            fired = any(self.hw.counting(i, 3)[1] for i in self.hw.value
                        if (self.hw.status & ~before) >> i & 1)
            if fired and not self.in_pmi:
                self.in_pmi = True
                self.pmis += 1
                self.pmi(self)
                self.in_pmi = False
            if self.tick and self.cycles >= self.next_tick:
                self.next_tick += self.tick_cycles
                self.tick(self)
