"""Ground truth: what the guest's counters must read, fed only by what the guest itself did.

The oracle mirrors the guest's own PMU writes and the events it retired while each counter was
enabled, and checks every counter value, GLOBAL_STATUS read and PMI the guest sees. It imports
nothing from kvm/ or host/: a policy that is fast and wrong shows up here as wrong.
"""
from __future__ import annotations

from fractions import Fraction

from common import cmask, msr, schema


class Oracle:
    def __init__(self, nr_gp: int = 4, nr_fixed: int = 3):
        self.nr_gp, self.nr_fixed = nr_gp, nr_fixed
        self.value = {i: 0 for i in range(nr_gp)} | {
            msr.FIXED_IDX_BASE + j: 0 for j in range(nr_fixed)}
        self.evtsel = {i: 0 for i in range(nr_gp)}
        self.fixed_ctrl = 0
        self.global_ctrl = (1 << nr_gp) - 1
        self.status = 0
        self.lvtpc = msr.APIC_LVT_MASKED
        self.if_flag = True                    # the guest's interrupt flag (cli / sti)
        self.pending: dict[int, bool] = {}     # overflowed counter -> its PMI is already late
        self.checked = 0
        self.violations: list[schema.Violation] = []
        self.vcpu = 0

    # --- what the guest wrote -------------------------------------------------------------------

    def wrmsr(self, index: int, value: int) -> None:
        """Mirror a WRMSR that completed (no #GP)."""
        counter, gp = msr.counter_msr(index), msr.evtsel_msr(index)
        if counter is not None and counter[0] in self.value:
            self.value[counter[0]] = msr.written_value(counter[1], value) & msr.COUNTER_MASK
        elif gp in self.evtsel:
            self.evtsel[gp] = value
        elif index == msr.MSR_CORE_PERF_FIXED_CTR_CTRL:
            self.fixed_ctrl = value
        elif index == msr.MSR_CORE_PERF_GLOBAL_CTRL:
            self.global_ctrl = value
        elif index == msr.MSR_CORE_PERF_GLOBAL_OVF_CTRL:
            self.status &= ~value
        elif index == msr.MSR_X2APIC_LVTPC:
            self.lvtpc = value

    # --- what the counters count ------------------------------------------------------------------

    def counting(self, idx: int, cpl: int) -> tuple[str | None, bool]:
        """The kind counter ``idx`` counts right now at privilege ``cpl``, and whether it
        interrupts on overflow."""
        fixed = idx >= msr.FIXED_IDX_BASE
        config = msr.fixed_field(self.fixed_ctrl, idx - msr.FIXED_IDX_BASE) if fixed \
            else self.evtsel[idx]
        if not msr.counter_enabled(idx, config, self.global_ctrl):
            return None, False
        if fixed:
            mode = msr.FIXED_CTRL_OS if cpl == 0 else msr.FIXED_CTRL_USR
            kind = msr.FIXED_EVENTS[idx - msr.FIXED_IDX_BASE] if config & mode else None
            return kind, bool(config & msr.FIXED_CTRL_PMI)
        if not config & (msr.EVTSEL_OS if cpl == 0 else msr.EVTSEL_USR):
            return None, False
        return msr.evtsel_kind(config), bool(config & msr.EVTSEL_INT)

    def retire(self, events: dict, stretch: schema.Stretch | None = None, cpl: int = 3) -> None:
        """Events retired in one stretch with no exit in between; ``stretch`` places them in
        their retire call, for counters with EDGE/INV/CMASK."""
        for idx in self.value:
            kind, intr = self.counting(idx, cpl)
            flt = cmask.of(self.evtsel[idx]) if idx < msr.FIXED_IDX_BASE and kind else None
            if flt is not None and stretch is not None:
                n = cmask.count(flt, stretch.cycles, stretch.events.get(kind, 0),
                                Fraction(*stretch.y0), Fraction(*stretch.y1), False)[0]
            else:
                n = events.get(kind, 0) if kind else 0
            if n <= 0:
                continue
            if intr and idx in self.pending and not self.held():
                self.pending[idx] = True               # events retire past a due PMI
            old = self.value[idx]
            new = (old + n) & msr.COUNTER_MASK
            self.value[idx] = new
            if old + n > msr.COUNTER_MASK:            # wrapped: the overflow is architectural
                self.status |= 1 << idx
                if intr and not self.lvtpc & msr.APIC_LVT_MASKED:
                    if idx in self.pending:
                        self.violate("missing_pmi", idx, "a second overflow with no PMI between")
                    # the overflowing event is the last of this stretch only if new == 0
                    self.pending[idx] = new != 0

    def held(self) -> bool:
        """A fixed-vector PMI waits for the interrupt flag; an NMI does not."""
        return self.lvtpc & msr.APIC_DM_MASK != msr.APIC_DM_NMI and not self.if_flag

    # --- checks -------------------------------------------------------------------------------

    def violate(self, kind: str, counter: int | None, detail: str,
                deficit: int | None = None) -> None:
        self.violations.append(schema.Violation(kind, self.vcpu, counter, detail, deficit))

    def check_counter(self, idx: int, seen: int) -> None:
        """A value the guest read must be what it retired while the counter was enabled. After a
        mismatch the oracle follows the counter, so that one loss is reported once."""
        self.checked += 1
        want = self.value[idx]
        if seen != want:
            deficit = (want - seen) & msr.COUNTER_MASK
            if deficit > msr.COUNTER_MASK // 2:
                deficit -= msr.COUNTER_MASK + 1           # the counter is ahead: negative
            self.violate("count_mismatch", idx, f"read {seen}, retired-while-enabled says {want}",
                         deficit=deficit)
            self.value[idx] = seen

    def check_status(self, seen: int) -> None:
        self.checked += 1
        counters = sum(1 << i for i in self.value)
        if seen & counters != self.status:
            self.violate("status_mismatch", None,
                         f"GLOBAL_STATUS {seen:#x}, overflows not yet acknowledged {self.status:#x}")

    def on_pmi(self) -> None:
        self.checked += 1
        if not self.pending:
            self.violate("spurious_pmi", None, "PMI with no overflow of an interrupting counter")
        for idx, late in self.pending.items():
            if late:
                self.violate("late_pmi", idx, "events retired between the overflow and its PMI")
        self.pending.clear()

    def finish(self) -> None:
        for idx in self.pending:
            self.checked += 1
            self.violate("missing_pmi", idx, "overflow never followed by a PMI")
        self.pending.clear()
