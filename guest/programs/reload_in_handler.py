"""Reload in the handler: the handler writes -PERIOD back without toggling GLOBAL_CTRL or the
event select. Every policy must deliver one PMI per PERIOD events — including those that keep
the host event across the overflow, whose period must follow the counter write.

The counters count at user level only (USR), so the program's own trapped instructions (CPL 0) are
outside them on every release; counter writes go through the full-width MSR only where
PERF_CAPABILITIES says it exists (guest/caps.py), else through PERFCTR0 (exact for -PERIOD)."""
from guest.caps import pmu_init

EVTSEL0, GLOBAL_CTRL, OVF_CTRL, LVTPC = 0x186, 0x38F, 0x390, 0x834
EN, USR, INT = 1 << 22, 1 << 16, 1 << 20
INSTRUCTIONS, DM_NMI = 0x00C0, 0x400
PERIOD, ROUNDS = 50_000, 10


def main(cpu):
    caps = pmu_init(cpu)
    pmc0 = caps.counter_msr(0)
    values = []

    def handler(c):
        values.append(c.rdpmc(0))
        c.wrmsr(pmc0, (-PERIOD) & caps.cntval_mask)
        c.wrmsr(OVF_CTRL, 1)
        c.wrmsr(LVTPC, DM_NMI)

    cpu.on_pmi(handler)
    cpu.wrmsr(LVTPC, DM_NMI)
    cpu.wrmsr(pmc0, (-PERIOD) & caps.cntval_mask)
    cpu.wrmsr(EVTSEL0, INSTRUCTIONS | EN | USR | INT)
    cpu.wrmsr(GLOBAL_CTRL, 1)
    cpu.retire(instructions=PERIOD * ROUNDS)
    cpu.check(cpu.pmis == ROUNDS, "one PMI per period", f"{cpu.pmis} PMIs for {ROUNDS} periods")
    cpu.check(all(v == 0 for v in values), "each PMI at the overflowing event", f"{values}")
