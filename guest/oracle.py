"""Ground truth: what the guest's counters must read, fed only by what the guest itself did.

The oracle mirrors the guest's own PMU writes and the events it retired while each counter was
enabled, and checks every counter value, GLOBAL_STATUS read and PMI the guest sees. It imports
nothing from kvm/ or host/: a policy that is fast and wrong shows up here as wrong.

Ground truth is the architecture: on bare metal every instruction retires and counts, the ones
that trap to KVM included. Each RDMSR, WRMSR, RDPMC or CPUID that completes without #GP retires
one instruction at CPL 0, counted by the counters that count instructions with their OS bit set
and are enabled after the instruction's own effect (``trapped``; the rule KVM 6.12 applies in
kvm_pmu_trigger_event). Releases before 5.17 count none of them: a counter's shortfall that is
exactly the trapped instructions it counted since the guest last knew its value, and a PMI late
by exactly that many events, are reported as ``uncounted_trapped_instructions`` — a deviation of
the release, not a violation.
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
        self.global_ctrl = (1 << nr_gp) - 1    # the SDM's reset value; a release's is learnt
        self.global_ctrl_written = False       # from the guest's first read (read_global_ctrl)
        self.status = 0
        self.lvtpc = msr.APIC_LVT_MASKED
        self.if_flag = True                    # the guest's interrupt flag (cli / sti)
        # overflowed counter -> [events retired past it before its PMI, how many of those were
        # trapped instructions, the trapped instructions it had counted since the guest last knew
        # its value, at the overflow (what a release that counts none of them is behind by)]
        self.pending: dict[int, list[int]] = {}
        self.trapped_since = dict.fromkeys(self.value, 0)
        # fixed counter -> what reading it back sign-extended (4.20) would add to the value
        self.sign_extension: dict[int, int] = {}
        self.trapped_total = 0
        self.checked = 0
        self.violations: list[schema.Violation] = []
        self.vcpu = 0

    # --- what the guest wrote -------------------------------------------------------------------

    def wrmsr(self, index: int, value: int) -> None:
        """Mirror a WRMSR that completed (no #GP)."""
        counter, gp = msr.counter_msr(index), msr.evtsel_msr(index)
        if counter is not None and counter[0] in self.value:
            idx, access = counter
            self.value[idx] = msr.written_value(access, value) & msr.COUNTER_MASK
            self.trapped_since[idx] = 0
            if access == "fixed":
                self.sign_extension[idx] = (msr.sign_extend_32(value) - value) & msr.COUNTER_MASK
        elif gp in self.evtsel:
            self.evtsel[gp] = value
        elif index == msr.MSR_CORE_PERF_FIXED_CTR_CTRL:
            self.fixed_ctrl = value
        elif index == msr.MSR_CORE_PERF_GLOBAL_CTRL:
            self.global_ctrl, self.global_ctrl_written = value, True
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
            if n > 0:
                self._add(idx, n, intr)

    def trapped(self) -> None:
        """One trapped instruction retired at CPL 0, after its own effect (a WRMSR's value is
        already mirrored): the counters that count it go up by one."""
        self.trapped_total += 1
        for idx in self.value:
            config = msr.fixed_field(self.fixed_ctrl, idx - msr.FIXED_IDX_BASE) \
                if idx >= msr.FIXED_IDX_BASE else self.evtsel[idx]
            if msr.counts_trapped(idx, config, self.global_ctrl):
                self.trapped_since[idx] += 1
                self._add(idx, 1, self.counting(idx, msr.TRAPPED_CPL)[1], trapped=True)

    def _add(self, idx: int, n: int, intr: bool, trapped: bool = False) -> None:
        if intr and idx in self.pending and not self.held():
            self.pending[idx][0] += n                  # events retire past a due PMI
            self.pending[idx][1] += n if trapped else 0
        old = self.value[idx]
        new = (old + n) & msr.COUNTER_MASK
        self.value[idx] = new
        if old + n > msr.COUNTER_MASK:                # wrapped: the overflow is architectural
            self.status |= 1 << idx
            if intr and not self.lvtpc & msr.APIC_LVT_MASKED:
                if idx in self.pending:
                    self.violate("missing_pmi", idx, "a second overflow with no PMI between")
                # the overflowing event is the last of this stretch only if new == 0
                self.pending[idx] = [new, 0, self.trapped_since[idx]]

    def shifted(self, idx: int) -> bool:
        """The counter's last overflow came only from trapped instructions a release that counts
        none of them has not counted: on such a release it has not wrapped yet."""
        return idx in self.pending and self.value[idx] < self.trapped_since[idx]

    def held(self) -> bool:
        """A fixed-vector PMI waits for the interrupt flag; an NMI does not."""
        return self.lvtpc & msr.APIC_DM_MASK != msr.APIC_DM_NMI and not self.if_flag

    # --- checks -------------------------------------------------------------------------------

    def violate(self, kind: str, counter: int | None, detail: str,
                deficit: int | None = None, trapped: int | None = None) -> None:
        self.violations.append(schema.Violation(kind, self.vcpu, counter, detail, deficit,
                                                trapped))

    def check_counter(self, idx: int, seen: int) -> None:
        """A value the guest read must be what it retired while the counter was enabled. After a
        mismatch the oracle follows the counter, so that one loss is reported once; a shortfall
        of exactly the trapped instructions counted since the last read or write is the
        release's known limit (``msr.UNCOUNTED_TRAPPED``)."""
        self.checked += 1
        want, trapped = self.value[idx], self.trapped_since[idx]
        extension = self.sign_extension.pop(idx, 0)
        self.trapped_since[idx] = 0
        if seen != want:
            deficit = (want - seen) & msr.COUNTER_MASK
            if deficit > msr.COUNTER_MASK // 2:
                deficit -= msr.COUNTER_MASK + 1           # the counter is ahead: negative
            detail = f"read {seen}, retired-while-enabled says {want}"
            if extension and (seen - want) & msr.COUNTER_MASK == extension:
                self.violate(msr.FIXED_WRITE_SIGN_EXTENDED, idx, f"read {seen:#x}, written "
                             f"{want:#x}: the write was sign-extended from 32 bits")
            elif deficit == trapped:
                self.violate(msr.UNCOUNTED_TRAPPED, idx, f"count_mismatch: {detail}: short by "
                             f"the {trapped} trapped instructions it counted", deficit=deficit)
                if want < trapped:                     # the wrap was the shift's: not yet
                    self.pending.pop(idx, None)
                    self.status &= ~(1 << idx)
            else:
                self.violate("count_mismatch", idx, detail + (
                    f" ({trapped} of them trapped instructions)" if trapped else ""),
                    deficit=deficit, trapped=trapped)
            self.value[idx] = seen

    def read_global_ctrl(self, seen: int) -> None:
        """GLOBAL_CTRL's value at reset differs by release (the SDM: the GP counters' bits;
        4.20/5.7: GP and fixed, 6.0: 0, 6.9: GP); until the guest writes it, it is learnt."""
        if not self.global_ctrl_written:
            self.global_ctrl = seen

    def check_status(self, seen: int) -> None:
        self.checked += 1
        counters = sum(1 << i for i in self.value)
        early = sum(1 << i for i in self.value if self.shifted(i))
        if seen & counters != self.status and seen & counters == self.status & ~early:
            self.violate(msr.UNCOUNTED_TRAPPED, None, f"status_mismatch: GLOBAL_STATUS "
                         f"{seen:#x}, {self.status:#x} with the overflows the uncounted trapped "
                         f"instructions bring early ({early:#x})")
        elif seen & counters != self.status:
            self.violate("status_mismatch", None,
                         f"GLOBAL_STATUS {seen:#x}, overflows not yet acknowledged {self.status:#x}")

    def on_pmi(self) -> None:
        self.checked += 1
        if not self.pending:
            self.violate("spurious_pmi", None, "PMI with no overflow of an interrupting counter")
        for idx, (late, late_trapped, shift) in self.pending.items():
            if late and late - late_trapped == shift:
                self.violate(msr.UNCOUNTED_TRAPPED, idx, f"late_pmi: {late} events after the "
                             f"overflow, as the {shift} uncounted trapped instructions shift it"
                             + (f" ({late_trapped} more trapped between)" if late_trapped else ""))
            elif late:
                self.violate("late_pmi", idx, f"{late} events retired between the overflow and "
                             "its PMI")
        self.pending.clear()

    def finish(self) -> None:
        for idx, (late, late_trapped, shift) in self.pending.items():
            self.checked += 1
            if late - late_trapped < shift:
                self.violate(msr.UNCOUNTED_TRAPPED, idx, f"missing_pmi: the overflow is due "
                             f"{shift - late} events after the run's end, as the {shift} "
                             "uncounted trapped instructions shift it")
            else:
                self.violate("missing_pmi", idx, "overflow never followed by a PMI")
        self.pending.clear()
