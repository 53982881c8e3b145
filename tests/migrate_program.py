"""A guest program that asks for its own moves: one now, one in the next overflow window."""
from guest.caps import pmu_init

EVTSEL0, GLOBAL_CTRL, OVF_CTRL, LVTPC = 0x186, 0x38F, 0x390, 0x834
EN, USR, INT = 1 << 22, 1 << 16, 1 << 20   # USR only: the trapped CPL 0 instructions stay out


def main(cpu):
    cpu.on_pmi(lambda c: (c.wrmsr(OVF_CTRL, 1), c.wrmsr(LVTPC, 0x400)))
    cpu.wrmsr(LVTPC, 0x400)
    cpu.wrmsr(pmu_init(cpu).counter_msr(0), (-1000) & ((1 << 48) - 1))
    cpu.wrmsr(EVTSEL0, 0xC0 | EN | USR | INT)
    cpu.wrmsr(GLOBAL_CTRL, 1)
    cpu.request_migration(5, at="now")
    cpu.retire(instructions=500)
    cpu.check(cpu.rdpmc(0) == ((1 << 48) - 1000 + 500) & ((1 << 48) - 1), "no count lost")
    cpu.request_migration(2, at="next-overflow")
    cpu.retire(instructions=600)
    cpu.check(cpu.pmis == 1, "the PMI came after the move", f"{cpu.pmis}")
    cpu.check(cpu.rdpmc(0) == 100, "no count lost or doubled across the moves")
