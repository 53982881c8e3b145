"""Reload in the handler: the handler writes -PERIOD back without toggling GLOBAL_CTRL or the
event select. Every policy must deliver one PMI per PERIOD events — including those that keep
the host event across the overflow, whose period must follow the counter write."""
EVTSEL0, PMC0, GLOBAL_CTRL, OVF_CTRL, LVTPC = 0x186, 0x4C1, 0x38F, 0x390, 0x834
EN, OS, USR, INT = 1 << 22, 1 << 17, 1 << 16, 1 << 20
INSTRUCTIONS, DM_NMI, MASK48 = 0x00C0, 0x400, (1 << 48) - 1
PERIOD, ROUNDS = 50_000, 10


def main(cpu):
    values = []

    def handler(c):
        values.append(c.rdpmc(0))
        c.wrmsr(PMC0, (-PERIOD) & MASK48)
        c.wrmsr(OVF_CTRL, 1)
        c.wrmsr(LVTPC, DM_NMI)

    cpu.on_pmi(handler)
    cpu.wrmsr(LVTPC, DM_NMI)
    cpu.wrmsr(PMC0, (-PERIOD) & MASK48)
    cpu.wrmsr(EVTSEL0, INSTRUCTIONS | EN | OS | USR | INT)
    cpu.wrmsr(GLOBAL_CTRL, 1)
    cpu.retire(instructions=PERIOD * ROUNDS)
    cpu.check(cpu.pmis == ROUNDS, "one PMI per period", f"{cpu.pmis} PMIs for {ROUNDS} periods")
    cpu.check(all(v == 0 for v in values), "each PMI at the overflowing event", f"{values}")
