"""KVM's vPMU state and PMU MSR emulation for one vCPU (arch/x86/kvm/pmu.c, vmx/pmu_intel.c).

Each guest counter is a ``KvmPmc`` backed by a host perf event bound to the vCPU task. The
guest-visible rules are those of the release the policy names (``policy.generation``,
kvm/generations.py; docs/generations.md §4 has them per release with their sources); *when* the
backing events are released, created, paused or resumed is the policy's job (kvm/policies/).
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Protocol

from common import cmask, faults, msr, schema
from common.costs import Ledger
from kvm.generations import fixed_counter_written, global_ctrl_at_reset, ovf_ctrl_value

KVM_REQ_PMU = "KVM_REQ_PMU"
KVM_REQ_PMI = "KVM_REQ_PMI"
MODELLED_EMULATED_COUNTING = ("none", "emulated_counter")


class GuestFault(Exception):
    """#GP: KVM injects a general-protection fault into the guest instead of completing the
    instruction."""


class PerfCallRefused(Exception):
    """The host refused a perf call (an -EINVAL from perf_event_period, say)."""


class PerfApi(Protocol):
    """The host perf calls a vCPU thread can make (a message round trip in the real run)."""

    def call(self, op: schema.PerfOp): ...


@dataclasses.dataclass
class KvmPmc:
    idx: int                       # GP i: i; fixed j: 32 + j (its GLOBAL_CTRL/STATUS bit)
    counter: int = 0
    eventsel: int = 0              # GP: PERFEVTSEL; fixed: its 4-bit FIXED_CTR_CTRL field
    perf_event: int | None = None  # handle of the backing host event
    oncpu: int = -1                # KVM's mirror of perf_event->oncpu: create's result, then the
                                   # host's Oncpu pushes
    current_config: int = 0        # reuse/deferred: config of the live event
    is_paused: bool = False
    intr: bool = False
    emulated_counter: int = 0      # 6.8+: instructions KVM retired, folded in at the next pause

    @property
    def fixed(self) -> bool:
        return self.idx >= msr.FIXED_IDX_BASE

    @property
    def bit(self) -> int:
        return 1 << self.idx


class KvmPmu:
    """``struct kvm_pmu`` plus the MSR emulation that works on it."""

    def __init__(self, perf: PerfApi, policy, nr_gp: int = 4, nr_fixed: int = 3,
                 ledger: Ledger | None = None):
        self.perf = perf
        self.policy = policy
        self.gen = policy.generation
        if self.gen.emulated_counting not in MODELLED_EMULATED_COUNTING:
            raise ValueError(f"release {self.gen.label}: emulated counting "
                             f"{self.gen.emulated_counting!r} (5.17-6.7) is not modelled; "
                             f"pick a release before 5.17 or from 6.8")
        self.version = 2
        self.nr_gp, self.nr_fixed = nr_gp, nr_fixed
        self.gp = [KvmPmc(i) for i in range(nr_gp)]
        self.fixed = [KvmPmc(msr.FIXED_IDX_BASE + j) for j in range(nr_fixed)]
        self.counter_bitmask = msr.COUNTER_MASK
        self.all_valid_pmc_idx = ((1 << nr_gp) - 1) | (((1 << nr_fixed) - 1) << msr.FIXED_IDX_BASE)
        self.global_ctrl = global_ctrl_at_reset(self.gen, nr_gp, nr_fixed)
        self.global_status = 0
        self.global_ovf_ctrl = 0                      # the last value written (before 5.16)
        self.fixed_ctr_ctrl = 0
        self.reprogram_pmi = 0
        self.pmc_in_use = 0
        self.need_cleanup = False
        self.lvtpc = msr.APIC_LVT_MASKED              # LVTPC starts masked
        self.cpu = -1                                 # vcpu->cpu, set by the vCPU's load
        self.requests: set[str] = set()
        self.ledger = ledger if ledger is not None else Ledger()
        self.stats = {"reprogram_counter": collections.Counter(),
                      "handle_event": collections.Counter(),
                      "overflows": 0, "overflows_ignored": 0, "gp_faults": 0,
                      "emulated_instructions": 0}

    # --- lookup ---------------------------------------------------------------------------------

    def pmc(self, idx: int) -> KvmPmc | None:
        if idx >= msr.FIXED_IDX_BASE:
            j = idx - msr.FIXED_IDX_BASE
            return self.fixed[j] if j < self.nr_fixed else None
        return self.gp[idx] if 0 <= idx < self.nr_gp else None

    def pmcs(self):
        return [*self.gp, *self.fixed]

    def config_of(self, pmc: KvmPmc) -> int:
        return pmc.eventsel

    def enabled(self, pmc: KvmPmc) -> bool:
        """Both enables: the counter's own (EN / fixed field) and its GLOBAL_CTRL bit."""
        return msr.counter_enabled(pmc.idx, pmc.eventsel, self.global_ctrl)

    # --- counters and the host event ------------------------------------------------------------

    def read_counter(self, pmc: KvmPmc) -> int:
        """pmc_read_counter: the saved value, the emulated count (6.8) and what the live event
        counted; before is_paused (5.15) the event is read even while paused (5.7)."""
        value = pmc.counter + pmc.emulated_counter
        if pmc.perf_event is not None and (not pmc.is_paused or not self.gen.has("is_paused")):
            value += self.perf.call(schema.PerfRead(pmc.perf_event)).count
        if faults.active("kvm_count_skew"):
            value += 1
        return value & self.counter_bitmask

    def sample_period(self, pmc: KvmPmc) -> int:
        """The period that makes the host event overflow when the guest counter wraps."""
        return (-pmc.counter) & self.counter_bitmask

    def stop_counter(self, pmc: KvmPmc) -> None:
        """pmc_stop_counter: fold the event's count into the counter and release the event."""
        if pmc.perf_event is None:
            return
        pmc.counter = self.read_counter(pmc)
        self.perf.call(schema.PerfRelease(pmc.perf_event))
        pmc.perf_event, pmc.oncpu, pmc.is_paused, pmc.current_config = None, -1, False, 0

    def create_event(self, pmc: KvmPmc, period: int) -> None:
        """pmc_reprogram_counter: a pinned, guest-only, task-bound kernel counter."""
        self.ledger.charge("kvm_pmc_attr_setup")
        kind, user, kernel = self.event_of(pmc)
        if kind is None:
            return                                    # an event the host PMU cannot count
        created = self.perf.call(schema.PerfCreate(
            kind, exclude_user=not user, exclude_kernel=not kernel, sample_period=period,
            context=pmc.idx, intr=pmc.intr, filter=None if pmc.fixed else cmask.of(pmc.eventsel),
            gp_encoding=not pmc.fixed))
        pmc.perf_event = created.handle
        pmc.oncpu = created.oncpu
        pmc.current_config = self.config_of(pmc)
        pmc.is_paused = False
        self.reprogram_pmi &= ~pmc.bit

    def event_of(self, pmc: KvmPmc) -> tuple[str | None, bool, bool]:
        """The event kind and the USR/OS filter the counter's configuration asks for."""
        if pmc.fixed:
            field = pmc.eventsel
            return (msr.FIXED_EVENTS[pmc.idx - msr.FIXED_IDX_BASE],
                    bool(field & msr.FIXED_CTRL_USR), bool(field & msr.FIXED_CTRL_OS))
        return (msr.evtsel_kind(pmc.eventsel), bool(pmc.eventsel & msr.EVTSEL_USR),
                bool(pmc.eventsel & msr.EVTSEL_OS))

    def reprogram(self, pmc: KvmPmc, cause: str) -> str:
        self.stats["reprogram_counter"][cause] += 1
        return self.policy.reprogram_counter(self, pmc)

    def request_reprogram(self, pmc: KvmPmc, cause: str) -> None:
        """A guest change of the counter's configuration: the policy reprograms now or marks it."""
        self.policy.config_changed(self, pmc, cause)

    def mark_in_use(self, pmc: KvmPmc | None) -> None:
        """kvm_pmu_mark_pmc_in_use (5.5, b35e5548b411): kvm_pmu_set_msr marks the pmc that
        intel_msr_idx_to_pmc maps (PERFCTRx, PERFEVTSELx, FIXED_CTRj; not PMCx) before the
        write is validated, changed or not; reprogram_fixed_counters marks changed fields."""
        if pmc is not None and self.gen.has("lazy_release"):
            self.pmc_in_use |= pmc.bit

    # --- overflow callback and PMI ----------------------------------------------------------------

    def perf_overflow(self, idx: int) -> None:
        """kvm_perf_overflow(_intr): runs in the host's PMI context for this vCPU's event."""
        pmc = self.pmc(idx)
        if pmc is None:
            return
        self.stats["overflows"] += 1
        self.ledger.charge("locked_rmw")              # test_and_set_bit(reprogram_pmi)
        if self.reprogram_pmi & pmc.bit:
            self.stats["overflows_ignored"] += 1      # an overflow racing a pending reprogram
            return
        self.reprogram_pmi |= pmc.bit
        self.global_status |= pmc.bit
        if pmc.intr:
            self.requests.add(KVM_REQ_PMI)
        self.requests.add(KVM_REQ_PMU)

    def emulated_overflow(self, pmc: KvmPmc) -> None:
        """__kvm_perf_overflow(pmc, in_pmi=false): an emulated count wrapped the counter."""
        self.global_status |= pmc.bit
        if pmc.intr:
            self.requests.add(KVM_REQ_PMI)

    def trigger_event(self, reason: str) -> None:
        """kvm_skip_emulated_instruction -> kvm_pmu_trigger_event(INSTRUCTIONS) (5.17,
        9cd803d496e7; 6.12's rules, docs/generations.md §3): an exit KVM completed without #GP
        retires one instruction, at the guest's CPL 0, in every counter that after the
        instruction's own effect counts it (``msr.counts_trapped``, the rule the guest's oracle
        holds as the architecture's): ``emulated_counter += 1`` and a reprogram request
        (kvm_pmu_incr_counter, 6.8)."""
        if reason not in msr.TRAPPED_INSTRUCTIONS or self.gen.emulated_counting == "none":
            return
        for pmc in self.pmcs():
            if msr.counts_trapped(pmc.idx, pmc.eventsel, self.global_ctrl):
                pmc.emulated_counter += 1
                self.stats["emulated_instructions"] += 1
                self.reprogram_pmi |= pmc.bit
                self.requests.add(KVM_REQ_PMU)

    def event_moved(self, handle: int, oncpu: int) -> None:
        """The host says a backing event's ``oncpu`` changed: keep the mirror exact."""
        for pmc in self.pmcs():
            if pmc.perf_event == handle:
                pmc.oncpu = oncpu

    def handle_event(self) -> None:
        """kvm_pmu_handle_event: the policy decides what each pending bit costs."""
        self.ledger.charge("kvm_pmu_handle_event_call")
        self.policy.handle_event(self)

    # --- MSR emulation --------------------------------------------------------------------------

    def _counter_msr(self, index: int) -> tuple[KvmPmc | None, str]:
        """The pmc a counter MSR names on this vCPU (get_gp_pmc / get_fixed_pmc) and the kind of
        access (common/msr.py counter_msr). The full-width PMCx exist only from 5.8
        (27461da31089, with PDCM and FW_WRITES); before, 0x4C1+ is an unknown MSR."""
        named = msr.counter_msr(index)
        if named is None or (named[1] == "full" and not self.gen.full_width_writes):
            return None, ""
        return self.pmc(named[0]), named[1]

    def _evtsel_msr(self, index: int) -> KvmPmc | None:
        gp = msr.evtsel_msr(index)
        return None if gp is None else self.pmc(gp)

    def _legacy_p6(self, index: int) -> bool:
        """PERFCTR0/1 (0xC1/0xC2) exist on every P6-class CPU: KVM drops writes and reads 0."""
        return index in (msr.MSR_IA32_PERFCTR0, msr.MSR_IA32_PERFCTR0 + 1)

    def get_msr(self, index: int) -> int:
        self.ledger.charge("msr_emulation")
        if index == msr.MSR_CORE_PERF_FIXED_CTR_CTRL:
            return self.fixed_ctr_ctrl
        if index == msr.MSR_CORE_PERF_GLOBAL_STATUS:
            return self.global_status | (0b10 if faults.active("kvm_status_skew") else 0)
        if index == msr.MSR_CORE_PERF_GLOBAL_CTRL:
            return self.global_ctrl
        if index == msr.MSR_CORE_PERF_GLOBAL_OVF_CTRL:
            return ovf_ctrl_value(self.gen, self.global_ovf_ctrl)
        if index == msr.MSR_IA32_PERF_CAPABILITIES and self.gen.perf_capabilities is not None:
            return self.gen.perf_capabilities
        if index == msr.MSR_X2APIC_LVTPC:
            return self.lvtpc
        pmc = self._evtsel_msr(index)
        if pmc is not None:
            return pmc.eventsel
        pmc, _ = self._counter_msr(index)
        if pmc is not None:
            return self.read_counter(pmc)
        if self._legacy_p6(index):
            return 0
        raise GuestFault(f"RDMSR {index:#x}: no such MSR")

    def set_msr(self, index: int, data: int) -> None:
        self.ledger.charge("msr_emulation")
        if not 0 <= data <= msr.U64:
            raise GuestFault(f"WRMSR {index:#x}: value {data:#x} is not 64 bits")
        if index == msr.MSR_CORE_PERF_FIXED_CTR_CTRL:
            return self._set_fixed_ctr_ctrl(data)
        if index == msr.MSR_CORE_PERF_GLOBAL_STATUS:
            raise GuestFault("WRMSR GLOBAL_STATUS: read-only")
        if index == msr.MSR_CORE_PERF_GLOBAL_CTRL:
            return self._set_global_ctrl(data)
        if index == msr.MSR_CORE_PERF_GLOBAL_OVF_CTRL:
            if data & ~(self.all_valid_pmc_idx | msr.GLOBAL_OVF_BUFFER | msr.GLOBAL_COND_CHGD):
                raise GuestFault(f"WRMSR GLOBAL_OVF_CTRL {data:#x}: reserved bits")
            self.global_status &= ~data
            self.global_ovf_ctrl = data
            return None
        if index == msr.MSR_X2APIC_LVTPC:
            self.lvtpc = data & (msr.APIC_LVT_MASKED | msr.APIC_DM_MASK | msr.APIC_VECTOR_MASK)
            return None
        if index == msr.MSR_X2APIC_EOI:
            return None
        pmc = self._evtsel_msr(index)
        if pmc is not None:
            self.mark_in_use(pmc)
            return self._set_eventsel(pmc, data)
        pmc, access = self._counter_msr(index)
        if pmc is not None:
            if access != "full":
                self.mark_in_use(pmc)
            if access == "full" and data & ~self.counter_bitmask:
                raise GuestFault(f"WRMSR {index:#x} = {data:#x}: bits above the counter width")
            if access == "fixed":
                data = fixed_counter_written(self.gen, data, msr.COUNTER_WIDTH)
            self.policy.write_counter(self, pmc, msr.written_value(access, data)
                                      & self.counter_bitmask)
            return None
        if self._legacy_p6(index):
            return None
        raise GuestFault(f"WRMSR {index:#x}: no such MSR")

    def _set_eventsel(self, pmc: KvmPmc, data: int) -> None:
        if data == pmc.eventsel:
            return
        if data & msr.EVTSEL_RESERVED:
            raise GuestFault(f"WRMSR PERFEVTSEL{pmc.idx} = {data:#x}: reserved bits")
        pmc.eventsel = data
        pmc.intr = bool(data & msr.EVTSEL_INT)
        self.request_reprogram(pmc, "msr_write")

    def _set_fixed_ctr_ctrl(self, data: int) -> None:
        if data == self.fixed_ctr_ctrl:
            return
        valid = sum(0xB << (4 * j) for j in range(self.nr_fixed))   # OS, USR, PMI (no ANY in v2)
        if data & ~valid:
            raise GuestFault(f"WRMSR FIXED_CTR_CTRL = {data:#x}: reserved bits")
        old, self.fixed_ctr_ctrl = self.fixed_ctr_ctrl, data
        for j, pmc in enumerate(self.fixed):
            field = msr.fixed_field(data, j)
            if field != msr.fixed_field(old, j):
                self.mark_in_use(pmc)
                pmc.eventsel = field
                pmc.intr = bool(field & msr.FIXED_CTRL_PMI)
                self.request_reprogram(pmc, "msr_write")

    def _set_global_ctrl(self, data: int) -> None:
        if data == self.global_ctrl:
            return
        if data & ~self.all_valid_pmc_idx:
            raise GuestFault(f"WRMSR GLOBAL_CTRL = {data:#x}: reserved bits")
        old, self.global_ctrl = self.global_ctrl, data
        for pmc in self.pmcs():
            if (old ^ data) & pmc.bit:
                self.request_reprogram(pmc, "msr_write")

    def rdpmc(self, ecx: int) -> int:
        """kvm_pmu_rdpmc + intel_rdpmc_ecx_to_pmc. From 6.9 (5728a4a0ea79, a634c76b2c1a)
        ECX[31:16] is a type, GP (0) or fixed (bit 30), anything else #GP, and the index is
        ECX[15:0]; before, bits 31:30 are masked off the index and a fast read (bit 31) returns
        the low 32 bits."""
        self.ledger.charge("msr_emulation")
        fast = bool(ecx & msr.RDPMC_FAST)
        if self.gen.has("rdpmc_type_checked"):
            if ecx >> 16 not in (0, msr.RDPMC_FIXED >> 16):
                raise GuestFault(f"RDPMC {ecx:#x}: unsupported counter type")
            index = ecx & 0xFFFF
        else:
            index = ecx & ~(msr.RDPMC_FIXED | msr.RDPMC_FAST)
        fixed = bool(ecx & msr.RDPMC_FIXED)
        if index >= (self.nr_fixed if fixed else self.nr_gp):
            raise GuestFault(f"RDPMC {ecx:#x}: no such counter")
        pmc = self.fixed[index] if fixed else self.gp[index]
        value = self.read_counter(pmc)
        return value & 0xFFFFFFFF if fast else value

    def cpuid(self, leaf: int, subleaf: int) -> list[int]:
        """CPUID as far as the PMU goes: leaf 1 (ECX.PDCM, set from 5.8 with PERF_CAPABILITIES:
        27461da31089's F(PDCM) in cpuid.c; 4.20/5.7 ``0 /* xTPR Update, PDCM */``), leaf 0xA
        (architectural PMU)."""
        if leaf == 0x1:
            return [0, 0, msr.CPUID_1_ECX_PDCM if self.gen.full_width_writes else 0, 0]
        if leaf == 0xA:
            eax = (self.version | self.nr_gp << 8 | msr.COUNTER_WIDTH << 16
                   | len(msr.ARCH_EVENTS) << 24)
            edx = self.nr_fixed | msr.COUNTER_WIDTH << 5
            return [eax, 0, 0, edx]                   # EBX 0: every architectural event exists
        return [0, 0, 0, 0]

    # --- PMI delivery -----------------------------------------------------------------------------

    def deliver_pmi(self) -> tuple[str, int] | None:
        """kvm_pmu_deliver_pmi through LVTPC: what to inject, or None when LVTPC is masked."""
        self.ledger.charge("lapic_deliver_pmi")
        if self.lvtpc & msr.APIC_LVT_MASKED:
            return None
        if self.gen.mask_lvtpc_on_pmi:
            self.lvtpc |= msr.APIC_LVT_MASKED
        if self.lvtpc & msr.APIC_DM_MASK == msr.APIC_DM_NMI:
            return ("nmi", 2)
        return ("intr", self.lvtpc & msr.APIC_VECTOR_MASK)
