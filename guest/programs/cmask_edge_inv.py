"""CMASK, INV and EDGE as the hardware applies them: cycles with at least N instructions, cycles
with fewer, and the starts of such stretches — checked against a count the program makes itself,
cycle by cycle, over evenly interleaved events; then an overflow of a CMASK counter with a PMI
right at the cycle that wraps it.

The counters count at user level only (USR), so the program's own trapped instructions (CPL 0) are
outside them on every release; counter writes go through the full-width MSR only where
PERF_CAPABILITIES says it exists (guest/caps.py), else through PERFCTR0 (exact for -PERIOD)."""
from guest.caps import pmu_init

EVTSEL0, GLOBAL_CTRL, OVF_CTRL, LVTPC = 0x186, 0x38F, 0x390, 0x834
EN, USR, INT, EDGE, INV = 1 << 22, 1 << 16, 1 << 20, 1 << 18, 1 << 23
INSTRUCTIONS = 0x00C0


def expected(instructions, cycles, cmask, inv, edge):
    """Cycle by cycle: cycle j retires floor((j+1)n/c) - floor(jn/c) instructions."""
    count, before = 0, False
    for j in range(cycles):
        occ = (j + 1) * instructions // cycles - j * instructions // cycles
        cond = (occ >= cmask) != inv
        count += (cond and not before) if edge else cond
        before = cond
    return count


def main(cpu):
    caps = pmu_init(cpu)
    pmc0 = caps.counter_msr(0)
    calls = [(5_000, 2_000), (7_001, 3_000), (2_999, 3_000), (12_345, 4_321)]
    setups = [(3, False, False), (3, True, False), (3, False, True), (2, True, True)]
    for i, (cmask, inv, edge) in enumerate(setups):
        cpu.wrmsr(EVTSEL0 + i, INSTRUCTIONS | EN | USR | cmask << 24
                  | (INV if inv else 0) | (EDGE if edge else 0))
    cpu.wrmsr(GLOBAL_CTRL, 0b1111)
    for instructions, cycles in calls:
        cpu.retire(instructions=instructions, cycles=cycles)
    for i, (cmask, inv, edge) in enumerate(setups):
        want = sum(expected(n, c, cmask, inv, edge) for n, c in calls)
        got = cpu.rdpmc(i)
        cpu.check(got == want, f"cmask={cmask} inv={inv} edge={edge}", f"read {got}, want {want}")

    cpu.wrmsr(GLOBAL_CTRL, 0)
    seen = []

    def handler(c):                                   # one sample: then stop interrupting
        seen.append(c.rdpmc(0))
        c.wrmsr(EVTSEL0, INSTRUCTIONS | EN | USR | 3 << 24)
        c.wrmsr(OVF_CTRL, 1)
    cpu.on_pmi(handler)
    cpu.wrmsr(LVTPC, 0x400)
    cpu.wrmsr(pmc0, (-100) & caps.cntval_mask)     # 100 cycles with >= 3 instructions
    cpu.wrmsr(EVTSEL0, INSTRUCTIONS | EN | USR | INT | 3 << 24)
    cpu.wrmsr(GLOBAL_CTRL, 1)
    cpu.retire(instructions=5_000, cycles=2_000)
    cpu.check(cpu.pmis == 1 and seen == [0], "PMI at the cycle that wraps the counter",
              f"pmis {cpu.pmis}, counter at PMI {seen}")
    want = expected(5_000, 2_000, 3, False, False) - 100
    cpu.check(cpu.rdpmc(0) == want, "the counter goes on from 0", f"read {cpu.rdpmc(0)}, "
              f"want {want}")
