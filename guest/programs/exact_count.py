"""Exact counting: a counter holds exactly the events retired while it was enabled.

Ported in spirit from kvm-unit-tests x86/pmu.c (check_counters_many): GP and fixed counters,
enabled and disabled through both their own enable and GLOBAL_CTRL."""
EVTSEL0, PMC0, FIXED_CTR0, FIXED_CTRL, GLOBAL_CTRL = 0x186, 0x4C1, 0x309, 0x38D, 0x38F
EN, OS, USR = 1 << 22, 1 << 17, 1 << 16
INSTRUCTIONS, BRANCHES = 0x00C0, 0x00C4


def main(cpu):
    cpu.wrmsr(GLOBAL_CTRL, 0)
    cpu.wrmsr(PMC0, 0)
    cpu.wrmsr(PMC0 + 1, 0)
    cpu.wrmsr(FIXED_CTR0, 0)
    cpu.wrmsr(EVTSEL0, INSTRUCTIONS | EN | OS | USR)
    cpu.wrmsr(EVTSEL0 + 1, BRANCHES | EN | USR)
    cpu.wrmsr(FIXED_CTRL, 0x3)                       # fixed 0: OS + USR, no PMI
    cpu.retire(instructions=1_000_000, branches=1_000)
    cpu.check(cpu.rdpmc(0) == 0, "disabled by GLOBAL_CTRL: counts nothing")
    cpu.wrmsr(GLOBAL_CTRL, 0b11 | 1 << 32)
    cpu.retire(instructions=123_457, branches=999)
    cpu.check(cpu.rdpmc(0) == 123_457, "GP instructions exact", f"read {cpu.rdpmc(0)}")
    cpu.check(cpu.rdpmc(1) == 999, "GP branches exact")
    cpu.check(cpu.rdpmc(1 << 30) == 123_457, "fixed instructions exact")
    cpu.wrmsr(EVTSEL0, INSTRUCTIONS | OS | USR)      # EN clear
    cpu.retire(instructions=10**9)
    cpu.check(cpu.rdpmc(0) == 123_457, "EN clear: no counting")
    cpu.check(cpu.rdmsr(PMC0) == cpu.rdpmc(0), "RDMSR and RDPMC agree")
    cpu.check(cpu.rdpmc(1 << 30) == 123_457 + 10**9, "fixed kept counting a billion")
