"""Overflow with a PMI: the PMI lands right after the overflowing event (no skid), GLOBAL_STATUS
names the counter, and only GLOBAL_OVF_CTRL clears it.

The counters count at user level only (USR), so the program's own trapped instructions (CPL 0) are
outside them on every release; counter writes go through the full-width MSR only where
PERF_CAPABILITIES says it exists (guest/caps.py), else through PERFCTR0 (exact for -PERIOD)."""
from guest.caps import pmu_init

EVTSEL0, GLOBAL_CTRL, STATUS, OVF_CTRL, LVTPC = 0x186, 0x38F, 0x38E, 0x390, 0x834
EN, USR, INT = 1 << 22, 1 << 16, 1 << 20
INSTRUCTIONS, DM_NMI = 0x00C0, 0x400
PERIOD = 100_000


def main(cpu):
    caps = pmu_init(cpu)
    pmc0 = caps.counter_msr(0)
    seen = []

    def handler(c):
        seen.append((c.rdpmc(0), c.rdmsr(STATUS)))
        c.wrmsr(OVF_CTRL, 1)

    cpu.on_pmi(handler)
    cpu.wrmsr(LVTPC, DM_NMI)
    cpu.wrmsr(GLOBAL_CTRL, 0)
    cpu.wrmsr(pmc0, (-PERIOD) & caps.cntval_mask)
    cpu.wrmsr(EVTSEL0, INSTRUCTIONS | EN | USR | INT)
    cpu.wrmsr(GLOBAL_CTRL, 1)
    cpu.retire(instructions=PERIOD - 1)
    cpu.check(cpu.pmis == 0, "no PMI before the overflowing event")
    cpu.retire(instructions=1)
    cpu.check(cpu.pmis == 1, "PMI right after the overflowing event", f"pmis {cpu.pmis}")
    cpu.check(seen and seen[0] == (0, 1), "handler sees the counter at 0 and status bit 0",
              f"saw {seen}")
    cpu.check(cpu.rdmsr(STATUS) == 0, "GLOBAL_OVF_CTRL cleared the status")
    cpu.retire(instructions=5 * PERIOD)              # the counter goes on from 0: no PMI
    cpu.check(cpu.pmis == 1, "no second PMI without a new overflow")
    cpu.check(cpu.rdpmc(0) == 5 * PERIOD, "counts on after the wrap")
    faulted = cpu.wrmsr_safe(STATUS, 1)
    cpu.check(faulted, "GLOBAL_STATUS is read-only (#GP)")
