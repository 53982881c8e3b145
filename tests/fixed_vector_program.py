"""A PMI through LVTPC in fixed-vector mode waits for the interrupt flag; an NMI would not."""
from guest.caps import pmu_init

EVTSEL0, GLOBAL_CTRL, OVF_CTRL, LVTPC, EOI = 0x186, 0x38F, 0x390, 0x834, 0x80B
EN, USR, INT = 1 << 22, 1 << 16, 1 << 20   # USR only: the trapped CPL 0 instructions stay out
VECTOR = 0xEE


def main(cpu):
    def handler(c):
        c.wrmsr(OVF_CTRL, 1)
        c.wrmsr(EOI, 0)
    cpu.on_pmi(handler)
    cpu.wrmsr(LVTPC, VECTOR)                       # fixed delivery, unmasked
    cpu.wrmsr(pmu_init(cpu).counter_msr(0), (-1000) & ((1 << 48) - 1))
    cpu.wrmsr(EVTSEL0, 0xC0 | EN | USR | INT)
    cpu.wrmsr(GLOBAL_CTRL, 1)
    cpu.cli()
    cpu.retire(instructions=1500)
    cpu.check(cpu.pmis == 0, "no PMI while interrupts are off", f"{cpu.pmis}")
    cpu.sti()
    cpu.check(cpu.pmis == 1, "the held PMI arrives at sti", f"{cpu.pmis}")
    cpu.check(cpu.rdpmc(0) == 500, "the counter went on counting")
