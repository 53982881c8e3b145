"""Intel architectural PMU (version 2) as a KVM guest sees it: MSR numbers, bit fields, events.

Numbers follow the Intel SDM vol. 3B ch. 18 and Linux's msr-index.h / perf_event.h (see
shared/reference/pmu-guest-semantics.md §1 and vpmu-facts.md §4).
"""
from __future__ import annotations

COUNTER_WIDTH = 48
COUNTER_MASK = (1 << COUNTER_WIDTH) - 1
U64 = (1 << 64) - 1
# The longest period perf arms a counter with when writes are full width: intel_pmu_init() sets
# x86_pmu.max_period = x86_pmu.cntval_mask >> 1 when PERF_CAPABILITIES.FW_WRITE is set.
MAX_PERIOD = COUNTER_MASK >> 1
# Without FW_WRITE the intel_pmu/core_pmu template's (1ULL << 31) - 1 stays: a PERFCTRx write is
# sign-extended from bit 31, so -left is exact only for left < 2^31.
LEGACY_MAX_PERIOD = (1 << 31) - 1

# MSRs
MSR_IA32_PERFCTR0 = 0xC1          # legacy PERFCTRi: 32-bit writes, sign-extended
MSR_IA32_PMC0 = 0x4C1             # full-width alias
MSR_P6_EVNTSEL0 = 0x186           # PERFEVTSELi
MSR_CORE_PERF_FIXED_CTR0 = 0x309
BANK_MSRS = 8                     # MSRs of each bank above in the architectural range
MSR_CORE_PERF_FIXED_CTR_CTRL = 0x38D
MSR_CORE_PERF_GLOBAL_STATUS = 0x38E
MSR_CORE_PERF_GLOBAL_CTRL = 0x38F
MSR_CORE_PERF_GLOBAL_OVF_CTRL = 0x390
MSR_IA32_PERF_CAPABILITIES = 0x345
PERF_CAP_FW_WRITE = 1 << 13
CPUID_1_ECX_PDCM = 1 << 15        # CPUID.1:ECX.PDCM: IA32_PERF_CAPABILITIES exists
MSR_X2APIC_LVTPC = 0x834
MSR_X2APIC_EOI = 0x80B

# PERFEVTSEL bits
EVTSEL_EVENT = 0xFF
EVTSEL_UMASK = 0xFF00
EVTSEL_USR = 1 << 16
EVTSEL_OS = 1 << 17
EVTSEL_EDGE = 1 << 18
EVTSEL_PC = 1 << 19
EVTSEL_INT = 1 << 20
EVTSEL_ANY = 1 << 21
EVTSEL_EN = 1 << 22
EVTSEL_INV = 1 << 23
EVTSEL_CMASK = 0xFF << 24
EVTSEL_RESERVED = 0xFFFFFFFF00200000   # KVM 4.20 pmu->reserved_bits (ANY reserved, v2)

# FIXED_CTR_CTRL: 4 bits per fixed counter: bit0 OS, bit1 USR, bit2 ANY, bit3 PMI
FIXED_CTRL_OS = 0x1
FIXED_CTRL_USR = 0x2
FIXED_CTRL_PMI = 0x8

# GLOBAL_STATUS / OVF_CTRL bits beyond the counters
GLOBAL_OVF_BUFFER = 1 << 62
GLOBAL_COND_CHGD = 1 << 63
FIXED_IDX_BASE = 32                # pmc index of fixed counter j is 32 + j; its global bit too

# LVTPC
APIC_LVT_MASKED = 1 << 16
APIC_DM_MASK = 0x700
APIC_DM_FIXED = 0x000
APIC_DM_NMI = 0x400
APIC_VECTOR_MASK = 0xFF

# RDPMC ECX
RDPMC_FIXED = 1 << 30
RDPMC_FAST = 1 << 31

# Event kinds the guest workload retires. Cycles and ref cycles are retired too, so that every
# architectural event has something to count.
EVENT_KINDS = ("instructions", "cycles", "ref_cycles", "branches", "branch_misses",
               "llc_refs", "llc_misses")

# Architectural events: unit_sel (umask << 8 | event) -> kind, in CPUID.0xA EBX bit order.
ARCH_EVENTS = {
    0x003C: "cycles",
    0x00C0: "instructions",
    0x013C: "ref_cycles",
    0x4F2E: "llc_refs",
    0x412E: "llc_misses",
    0x00C4: "branches",
    0x00C5: "branch_misses",
}
# Fixed counter j counts this kind.
FIXED_EVENTS = ("instructions", "cycles", "ref_cycles")


def evtsel_kind(eventsel: int) -> str | None:
    """The event kind an event select counts, or None for a non-architectural event."""
    return ARCH_EVENTS.get(eventsel & (EVTSEL_EVENT | EVTSEL_UMASK))


def fixed_field(fixed_ctr_ctrl: int, j: int) -> int:
    return (fixed_ctr_ctrl >> (4 * j)) & 0xF


def sign_extend_32(value: int) -> int:
    """A legacy PERFCTR write: (s64)(s32)data, as a 64-bit pattern."""
    value &= 0xFFFFFFFF
    return value | (U64 ^ 0xFFFFFFFF) if value & 0x80000000 else value


# --- which counter an MSR or an RDPMC ECX names ---------------------------------------------------

def counter_msr(index: int) -> tuple[int, str] | None:
    """The counter a counter MSR names and how a write to it is taken, or None for another MSR.

    GP counter i is pmc index i through its legacy PERFCTRi (``"legacy"``: a write is 32 bits,
    sign-extended) or its full-width alias PMCi (``"full"``); fixed counter j is 32 + j
    (``"fixed"``). Whether the counter exists is up to the PMU that has it (KVM's get_gp_pmc /
    get_fixed_pmc check the index against the vCPU's counters)."""
    if MSR_IA32_PERFCTR0 <= index < MSR_IA32_PERFCTR0 + BANK_MSRS:
        return index - MSR_IA32_PERFCTR0, "legacy"
    if MSR_IA32_PMC0 <= index < MSR_IA32_PMC0 + BANK_MSRS:
        return index - MSR_IA32_PMC0, "full"
    if MSR_CORE_PERF_FIXED_CTR0 <= index < MSR_CORE_PERF_FIXED_CTR0 + BANK_MSRS:
        return FIXED_IDX_BASE + index - MSR_CORE_PERF_FIXED_CTR0, "fixed"
    return None


def evtsel_msr(index: int) -> int | None:
    """The GP counter whose PERFEVTSEL ``index`` is, or None for another MSR."""
    if MSR_P6_EVNTSEL0 <= index < MSR_P6_EVNTSEL0 + BANK_MSRS:
        return index - MSR_P6_EVNTSEL0
    return None


def written_value(access: str, data: int) -> int:
    """What a WRMSR of ``data`` puts into the counter through an access of ``counter_msr``
    (before the counter width applies): the legacy MSRs sign-extend 32 bits."""
    return sign_extend_32(data) if access == "legacy" else data


def counter_msr_of(idx: int, full_width: bool = True) -> int:
    """The MSR a driver writes counter ``idx`` through: PMCi with full-width writes (x86_pmu.perfctr
    = MSR_IA32_PMC0 in intel_pmu_init), else the legacy PERFCTRi; FIXED_CTRj for fixed ones."""
    if idx >= FIXED_IDX_BASE:
        return MSR_CORE_PERF_FIXED_CTR0 + idx - FIXED_IDX_BASE
    return (MSR_IA32_PMC0 if full_width else MSR_IA32_PERFCTR0) + idx


def rdpmc_counter(ecx: int) -> int | None:
    """The counter an RDPMC ECX names (bit 30 selects the fixed counters), or None for a fast
    read (bit 31) or an index past the architectural range."""
    if ecx & RDPMC_FAST:
        return None
    idx = ecx & ~RDPMC_FIXED
    if idx >= FIXED_IDX_BASE:
        return None
    return FIXED_IDX_BASE + idx if ecx & RDPMC_FIXED else idx


def rdpmc_ecx(idx: int) -> int:
    """The RDPMC ECX that reads counter ``idx``."""
    return RDPMC_FIXED | (idx - FIXED_IDX_BASE) if idx >= FIXED_IDX_BASE else idx


# --- whether a counter counts ---------------------------------------------------------------------

def locally_enabled(idx: int, config: int) -> bool:
    """The counter's own enable: EN of a GP counter's event select, OS or USR of a fixed
    counter's FIXED_CTR_CTRL field (``config``). KVM's pmc_speculative_in_use (5.5; named
    pmc_is_locally_enabled since 6.x)."""
    if idx >= FIXED_IDX_BASE:
        return bool(config & (FIXED_CTRL_OS | FIXED_CTRL_USR))
    return bool(config & EVTSEL_EN)


def counter_enabled(idx: int, config: int, global_ctrl: int) -> bool:
    """Both enables, as reprogram_{gp,fixed}_counter test them: the counter's own and its
    GLOBAL_CTRL bit (intel_pmc_is_enabled: test_bit(pmc->idx, &pmu->global_ctrl))."""
    return bool(global_ctrl >> idx & 1) and locally_enabled(idx, config)


# --- trapped instructions -------------------------------------------------------------------------

# The guest's instructions that exit to KVM and, when they end without #GP, retire as one
# instruction (KVM completes them through kvm_skip_emulated_instruction: kvm_emulate_rdmsr,
# kvm_emulate_wrmsr, kvm_emulate_rdpmc, kvm_emulate_cpuid). The emulator's other exits (budget,
# flush, nmi_window, hypercall, done) are no instruction of the guest.
TRAPPED_INSTRUCTIONS = frozenset({"rdmsr", "wrmsr", "rdpmc", "cpuid"})
TRAPPED_CPL = 0                   # the guest kernel (and a guest program) issues them at CPL 0
INSTRUCTIONS_EVENT = 0x00C0       # INST_RETIRED.ANY_P: event 0xC0, umask 0
# The oracle's kind for a shortfall that is exactly the trapped instructions a counter did not
# count (releases before 5.17): a known limit of the release, a deviation, not a violation.
UNCOUNTED_TRAPPED = "uncounted_trapped_instructions"
# A fixed-counter write read back sign-extended from 32 bits, as 4.20 stored it (2924b52117b2
# stopped that in 5.2): architecturally the value is stored as written.
FIXED_WRITE_SIGN_EXTENDED = "fixed_write_sign_extended"


def counts_trapped(idx: int, config: int, global_ctrl: int) -> bool:
    """Whether counter ``idx`` (its event select, or its FIXED_CTR_CTRL field) counts a trapped
    instruction that just retired at CPL 0: enabled, counting instructions (GP: event 0xC0 umask 0,
    EDGE/INV/CMASK ignored; fixed counter 0), OS bit set. kvm_pmu_trigger_event (6.12: the
    eventsel compared under AMD64_RAW_EVENT_MASK_NB, pmc_event_is_allowed, cpl_is_matched)."""
    if not counter_enabled(idx, config, global_ctrl):
        return False
    if idx >= FIXED_IDX_BASE:
        return idx == FIXED_IDX_BASE and bool(config & FIXED_CTRL_OS)
    return (config & (EVTSEL_EVENT | EVTSEL_UMASK)) == INSTRUCTIONS_EVENT and \
        bool(config & EVTSEL_OS)
