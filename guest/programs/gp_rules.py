"""What raises #GP (pmu-guest-semantics.md): reserved bits, counters that do not exist, fast
RDPMC; and the legacy P6 counters, whose writes are dropped."""
EVTSEL0, PMC0, PERFCTR0, GLOBAL_CTRL, OVF_CTRL, FIXED_CTRL = 0x186, 0x4C1, 0xC1, 0x38F, 0x390, 0x38D


def main(cpu):
    eax, _, _, edx = cpu.cpuid(0xA)
    nr_gp, width = (eax >> 8) & 0xFF, (eax >> 16) & 0xFF
    cpu.check(eax & 0xFF == 2 and width == 48 and edx & 0x1F == 3, "CPUID.0xA: v2, 48 bits, 3 fixed")
    cpu.check(cpu.wrmsr_safe(PMC0 + nr_gp, 0), "PMC beyond the last: #GP")
    cpu.check(cpu.rdmsr_safe(EVTSEL0 + nr_gp)[0], "EVTSEL beyond the last: #GP")
    cpu.check(cpu.wrmsr_safe(EVTSEL0, 1 << 32), "EVTSEL reserved bits: #GP")
    cpu.check(cpu.wrmsr_safe(GLOBAL_CTRL, 1 << 40), "GLOBAL_CTRL reserved bits: #GP")
    cpu.check(cpu.wrmsr_safe(OVF_CTRL, 1 << 40), "GLOBAL_OVF_CTRL reserved bits: #GP")
    cpu.check(cpu.wrmsr_safe(FIXED_CTRL, 0x4), "FIXED_CTR_CTRL ANY bit: #GP")
    cpu.check(cpu.wrmsr_safe(PMC0, 1 << 48), "full-width write above the width: #GP")
    cpu.check(cpu.rdpmc_safe(nr_gp)[0], "RDPMC of a counter that does not exist: #GP")
    cpu.check(cpu.rdpmc_safe(1 << 31)[0], "fast RDPMC: #GP")
    cpu.check(cpu.rdpmc_safe(64)[0], "RDPMC ECX=64: #GP")
    cpu.check(not cpu.wrmsr_safe(PERFCTR0, 0xFFFFFFFF), "legacy PERFCTR0 write accepted")
    cpu.check(cpu.rdpmc(0) == (1 << 48) - 1, "legacy write sign-extends to 48 bits")
