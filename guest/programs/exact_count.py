"""Exact counting: a counter holds exactly the events retired while it was enabled.

Ported in spirit from kvm-unit-tests x86/pmu.c (check_counters_many): GP and fixed counters,
enabled and disabled through both their own enable and GLOBAL_CTRL. The counters count at user
level only (USR, no OS), so the program's own trapped RDMSR/WRMSR/RDPMC, which retire at CPL 0,
are outside them and the counts are the same on every release. The counters are written through
the full-width MSRs only where PERF_CAPABILITIES says they exist, as kvm-unit-tests does."""
from guest.caps import pmu_init

FIXED_CTRL, GLOBAL_CTRL, EVTSEL0 = 0x38D, 0x38F, 0x186
EN, USR = 1 << 22, 1 << 16
INSTRUCTIONS, BRANCHES = 0x00C0, 0x00C4
FIXED0_USR = 0x2


def main(cpu):
    caps = pmu_init(cpu)
    pmc0 = caps.counter_msr(0)
    caps.reset(cpu)
    cpu.wrmsr(EVTSEL0, INSTRUCTIONS | EN | USR)
    cpu.wrmsr(EVTSEL0 + 1, BRANCHES | EN | USR)
    cpu.wrmsr(FIXED_CTRL, FIXED0_USR)                # fixed 0: USR, no PMI
    cpu.retire(instructions=1_000_000, branches=1_000)
    cpu.check(cpu.rdpmc(0) == 0, "disabled by GLOBAL_CTRL: counts nothing")
    cpu.wrmsr(GLOBAL_CTRL, 0b11 | 1 << 32)
    cpu.retire(instructions=123_457, branches=999)
    cpu.check(cpu.rdpmc(0) == 123_457, "GP instructions exact", f"read {cpu.rdpmc(0)}")
    cpu.check(cpu.rdpmc(1) == 999, "GP branches exact")
    cpu.check(cpu.rdpmc(1 << 30) == 123_457, "fixed instructions exact")
    cpu.wrmsr(EVTSEL0, INSTRUCTIONS | USR)           # EN clear
    cpu.retire(instructions=10**9)
    cpu.check(cpu.rdpmc(0) == 123_457, "EN clear: no counting")
    cpu.check(cpu.rdmsr(pmc0) == cpu.rdpmc(0), "RDMSR and RDPMC agree")
    cpu.check(cpu.rdpmc(1 << 30) == 123_457 + 10**9, "fixed kept counting a billion")
