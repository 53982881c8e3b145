"""What raises #GP and what reads back (pmu-guest-semantics.md, kvm-unit-tests x86/pmu.c), checked
as the release the guest runs on must do it, as far as a guest can tell releases apart: by CPUID.1
PDCM and PERF_CAPABILITIES.FW_WRITE (guest/caps.py), which decide whether the full-width MSRs
exist. Where releases differ in what no capability shows (GLOBAL_CTRL at reset, GLOBAL_OVF_CTRL
read back, a fixed-counter write with bit 31 set, fast RDPMC), each verified release behaviour is
accepted (docs/generations.md §3) and the check's detail names the one seen."""
from guest.caps import pmu_init

EVTSEL0, PERFCTR0, PMC0, FIXED_CTR0 = 0x186, 0xC1, 0x4C1, 0x309
GLOBAL_CTRL, OVF_CTRL, FIXED_CTRL, PERF_CAPABILITIES = 0x38F, 0x390, 0x38D, 0x345
FULL_VALUE = 0xFF0123456789                      # check_gp_counters_write_width's value


def accepted(name, seen, behaviours):
    """A check that ``seen`` is one release's behaviour; its detail names which."""
    return seen in behaviours, name, f"{seen:#x}: {behaviours.get(seen, 'no release')}"


def main(cpu):
    cpu.check(*accepted("GLOBAL_CTRL at reset", cpu.rdmsr(GLOBAL_CTRL), reset_values(cpu)))
    caps = pmu_init(cpu)
    nr_gp, mask = caps.nr_gp, caps.cntval_mask
    cpu.check(caps.version == 2 and caps.gp_width == 48 and caps.nr_fixed == 3,
              "CPUID.0xA: v2, 48 bits, 3 fixed", caps.describe())
    if caps.full_width:                          # pmu_has_full_writes(): the full-width pass
        cpu.check(cpu.wrmsr_safe(PMC0 + nr_gp, 0), "PMC beyond the last: #GP")
        cpu.check(cpu.wrmsr_safe(PMC0, 1 << caps.gp_width), "full-width write above the width: #GP")
        cpu.check(not cpu.wrmsr_safe(PMC0, FULL_VALUE) and cpu.rdpmc(0) == FULL_VALUE,
                  "full-width write: all 48 bits")
    cpu.check(cpu.wrmsr_safe(PERF_CAPABILITIES, 0), "PERF_CAPABILITIES write: #GP")
    cpu.check(cpu.rdmsr_safe(EVTSEL0 + nr_gp)[0], "EVTSEL beyond the last: #GP")
    cpu.check(cpu.wrmsr_safe(EVTSEL0, 1 << 32), "EVTSEL reserved bits: #GP")
    cpu.check(cpu.wrmsr_safe(GLOBAL_CTRL, 1 << 40), "GLOBAL_CTRL reserved bits: #GP")
    cpu.check(cpu.wrmsr_safe(OVF_CTRL, 1 << 40), "GLOBAL_OVF_CTRL reserved bits: #GP")
    cpu.check(cpu.wrmsr_safe(FIXED_CTRL, 0x4), "FIXED_CTR_CTRL ANY bit: #GP")
    cpu.check(cpu.rdpmc_safe(nr_gp)[0], "RDPMC of a counter that does not exist: #GP")
    cpu.check(cpu.rdpmc_safe(64)[0], "RDPMC ECX=64: #GP")
    cpu.check(not cpu.wrmsr_safe(PERFCTR0, FULL_VALUE) and cpu.rdpmc(0) == 0x23456789,
              "legacy write keeps the low 32 bits (bit 31 clear)")
    cpu.check(not cpu.wrmsr_safe(PERFCTR0, 0xFFFFFFFF) and cpu.rdpmc(0) == mask,
              "legacy write sign-extends to 48 bits")
    faulted, low = cpu.rdpmc_safe(1 << 31)
    cpu.check(faulted or low == 0xFFFFFFFF, "fast RDPMC: #GP or the low 32 bits",
              "#GP (6.9+)" if faulted else f"{low:#x}: the low 32 bits (before 6.9)")
    cpu.wrmsr(OVF_CTRL, 1)
    cpu.check(*accepted("GLOBAL_OVF_CTRL read back", cpu.rdmsr(OVF_CTRL),
                        {0: "0 (5.16+)", 1: "the last value written (before 5.16)"}))
    written = not cpu.wrmsr_safe(FIXED_CTR0, 0x80000000)
    cpu.check(written, "fixed-counter write within the width: no #GP (any release)")
    if written:
        cpu.check(*accepted("fixed-counter write with bit 31 set", cpu.rdpmc(1 << 30), {
            0x80000000: "stored as written (5.2+, 2924b52117b2)",
            mask & ~0x7FFFFFFF: "sign-extended from 32 bits like PERFCTRx (4.20)"}))


def reset_values(cpu):
    eax, _, _, edx = cpu.cpuid(0xA)
    gp, fixed = (1 << ((eax >> 8) & 0xFF)) - 1, ((1 << (edx & 0x1F)) - 1) << 32
    return {gp | fixed: "GP and fixed bits (4.20 to 5.19)", 0: "0 (6.0 to 6.8)",
            gp: "the GP counters' bits (6.9+, the SDM's reset value)"}
