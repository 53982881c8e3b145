"""A bare-metal PMU in-process: what the guest driver sees, with no KVM behind it.

It implements the architectural PMU v2 the way the hardware does (counters, enables, overflow
status, PMI at the overflowing event), so the guest driver can be tested alone."""
from common import msr


class FakeCpu:
    def __init__(self, ghz=2.5, nr_gp=4, nr_fixed=3):
        self.workload = type("W", (), {"ghz": ghz})()
        self.nr_gp, self.nr_fixed = nr_gp, nr_fixed
        self.ctr = {i: 0 for i in range(nr_gp)} | {32 + j: 0 for j in range(nr_fixed)}
        self.sel = {i: 0 for i in range(nr_gp)}
        self.fixed_ctrl = self.global_ctrl = self.status = 0
        self.cycles = 0
        self.pmi = self.tick = None
        self.tick_cycles = 0
        self.next_tick = 0
        self.in_pmi = False
        self.pmis = 0
        self.writes = 0

    def cpuid(self, leaf, sub=0):
        return (2 | self.nr_gp << 8 | 48 << 16, 0, 0, self.nr_fixed | 48 << 5)

    def on_pmi(self, fn):
        self.pmi = fn

    def on_tick(self, fn, ns):
        self.tick, self.tick_cycles = fn, int(ns * self.workload.ghz)
        self.next_tick = self.cycles + self.tick_cycles

    def wrmsr(self, index, value):
        self.writes += 1
        if msr.MSR_IA32_PMC0 <= index < msr.MSR_IA32_PMC0 + self.nr_gp:
            self.ctr[index - msr.MSR_IA32_PMC0] = value
        elif msr.MSR_CORE_PERF_FIXED_CTR0 <= index < msr.MSR_CORE_PERF_FIXED_CTR0 + 3:
            self.ctr[32 + index - msr.MSR_CORE_PERF_FIXED_CTR0] = value
        elif msr.MSR_P6_EVNTSEL0 <= index < msr.MSR_P6_EVNTSEL0 + self.nr_gp:
            self.sel[index - msr.MSR_P6_EVNTSEL0] = value
        elif index == msr.MSR_CORE_PERF_FIXED_CTR_CTRL:
            self.fixed_ctrl = value
        elif index == msr.MSR_CORE_PERF_GLOBAL_CTRL:
            self.global_ctrl = value
        elif index == msr.MSR_CORE_PERF_GLOBAL_OVF_CTRL:
            self.status &= ~value

    def rdmsr(self, index):
        assert index == msr.MSR_CORE_PERF_GLOBAL_STATUS
        return self.status

    def rdpmc(self, ecx):
        return self.ctr[32 + (ecx & 0xFF) if ecx & msr.RDPMC_FIXED else ecx]

    def kind(self, idx):
        if not self.global_ctrl & (1 << idx):
            return None, False
        if idx >= 32:
            f = msr.fixed_field(self.fixed_ctrl, idx - 32)
            return (msr.FIXED_EVENTS[idx - 32] if f & 3 else None), bool(f & 8)
        s = self.sel[idx]
        return (msr.evtsel_kind(s) if s & msr.EVTSEL_EN else None), bool(s & msr.EVTSEL_INT)

    def retire(self, cycles, per_cycle=None):
        """Retire ``cycles`` cycles (and per_cycle[k] x cycles of other kinds) one cycle at a
        time between overflows; deliver PMIs and ticks where they fall."""
        per_cycle = dict(per_cycle or {}, cycles=1)
        left = cycles
        while left:
            step = left
            for idx in self.ctr:
                k, _ = self.kind(idx)
                if k in per_cycle and per_cycle[k]:
                    to_wrap = (msr.COUNTER_MASK + 1 - self.ctr[idx]) // per_cycle[k] or 1
                    step = min(step, to_wrap)
            if self.tick:
                step = min(step, self.next_tick - self.cycles)
            step = max(step, 1)
            fire = False
            for idx in self.ctr:
                k, intr = self.kind(idx)
                if k in per_cycle:
                    new = self.ctr[idx] + per_cycle[k] * step
                    if new > msr.COUNTER_MASK:
                        self.status |= 1 << idx
                        fire |= intr
                    self.ctr[idx] = new & msr.COUNTER_MASK
            self.cycles += step
            left -= step
            if fire and not self.in_pmi:
                self.in_pmi = True
                self.pmis += 1
                self.pmi(self)
                self.in_pmi = False
            if self.tick and self.cycles >= self.next_tick:
                self.next_tick += self.tick_cycles
                self.tick(self)
