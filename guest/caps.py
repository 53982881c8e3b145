"""What the guest learns about its PMU before it uses it, as Linux and kvm-unit-tests learn it.

CPUID.0xA gives the version, the counters and their widths; CPUID.1:ECX.PDCM says whether
IA32_PERF_CAPABILITIES (0x345) exists, and only then is it read; its FW_WRITE bit (13) says
whether the full-width counter MSRs (0x4C1+) exist. Linux: arch/x86/events/intel/core.c
intel_pmu_init (``if (boot_cpu_has(X86_FEATURE_PDCM)) rdmsrl(MSR_IA32_PERF_CAPABILITIES, ...)``;
``if (x86_pmu.intel_cap.full_width_write) { max_period = cntval_mask >> 1; perfctr =
MSR_IA32_PMC0; }``, otherwise the template's PERFCTR0 and (1ULL << 31) - 1). kvm-unit-tests:
lib/x86/pmu.c pmu_init and ``pmu_has_full_writes()``. The guest programs import this module as
kvm-unit-tests' tests include lib/x86/pmu.h.
"""
from __future__ import annotations

import dataclasses

from common import msr


@dataclasses.dataclass(frozen=True)
class PmuCaps:
    version: int
    nr_gp: int
    gp_width: int
    nr_fixed: int
    fixed_width: int
    pdcm: bool
    perf_cap: int | None         # IA32_PERF_CAPABILITIES, None without PDCM (never read)

    @property
    def full_width(self) -> bool:
        return bool(self.perf_cap and self.perf_cap & msr.PERF_CAP_FW_WRITE)

    @property
    def cntval_mask(self) -> int:
        return (1 << self.gp_width) - 1

    @property
    def max_period(self) -> int:
        """x86_pmu.max_period: cntval_mask >> 1 with full-width writes, else 2^31 - 1."""
        return self.cntval_mask >> 1 if self.full_width else msr.LEGACY_MAX_PERIOD

    def counter_msr(self, idx: int) -> int:
        """The MSR that writes counter ``idx``: PMCi or PERFCTRi (x86_pmu.perfctr), FIXED_CTRj."""
        return msr.counter_msr_of(idx, self.full_width)

    def reset(self, cpu) -> None:
        """Every counter stopped and zeroed, GLOBAL_CTRL first (kvm-unit-tests lib/x86/pmu.h
        pmu_reset_all_counters, with the counters written through ``counter_msr``)."""
        cpu.wrmsr(msr.MSR_CORE_PERF_GLOBAL_CTRL, 0)
        cpu.wrmsr(msr.MSR_CORE_PERF_FIXED_CTR_CTRL, 0)
        for i in range(self.nr_gp):
            cpu.wrmsr(msr.MSR_P6_EVNTSEL0 + i, 0)
            cpu.wrmsr(self.counter_msr(i), 0)
        for j in range(self.nr_fixed):
            cpu.wrmsr(self.counter_msr(msr.FIXED_IDX_BASE + j), 0)

    def describe(self) -> str:
        cap = "no PDCM" if self.perf_cap is None else f"PERF_CAPABILITIES {self.perf_cap:#x}"
        return (f"v{self.version}, {self.nr_gp} GP x {self.gp_width} bits, {self.nr_fixed} fixed "
                f"x {self.fixed_width} bits, {cap}, "
                f"{'full-width' if self.full_width else 'legacy'} counter writes")


def pmu_init(cpu) -> PmuCaps:
    """Read CPUID.0xA and CPUID.1, then PERF_CAPABILITIES only where PDCM says it exists."""
    eax, _, _, edx = cpu.cpuid(0xA)
    ecx1 = cpu.cpuid(0x1)[2]
    pdcm = bool(ecx1 & msr.CPUID_1_ECX_PDCM)
    return PmuCaps(version=eax & 0xFF, nr_gp=(eax >> 8) & 0xFF, gp_width=(eax >> 16) & 0xFF,
                   nr_fixed=edx & 0x1F, fixed_width=(edx >> 5) & 0xFF, pdcm=pdcm,
                   perf_cap=cpu.rdmsr(msr.MSR_IA32_PERF_CAPABILITIES) if pdcm else None)
