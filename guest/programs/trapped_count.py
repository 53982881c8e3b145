"""Trapped instructions count: on bare metal every instruction retires and counts, the RDMSR,
WRMSR, RDPMC and CPUID that trap to KVM included. KVM counts the ones it emulates or skips from
5.17 on (9cd803d496e7 "KVM: x86: Update vPMCs when retiring instructions"), so this program passes
only on a release that has it; on older ones the oracle reports the shortfall as the deviation
``uncounted_trapped_instructions`` and the checks fail.

GP counter 0 counts instructions at every level (OS and USR), GP counter 1 only in the kernel
(OS): the guest's trapped instructions run at CPL 0 and the workload at CPL 3, so counter 1
sees only the trapped ones. The WRMSR that enables the counters counts itself: the counter is
enabled after its effect (the rule kvm_pmu_trigger_event applies)."""
from guest.caps import pmu_init

EVTSEL0, GLOBAL_CTRL = 0x186, 0x38F
EN, OS, USR = 1 << 22, 1 << 17, 1 << 16
INSTRUCTIONS = 0x00C0
WORK, ROUNDS = 100_000, 10


def main(cpu):
    caps = pmu_init(cpu)
    caps.reset(cpu)
    cpu.wrmsr(EVTSEL0, INSTRUCTIONS | EN | OS | USR)
    cpu.wrmsr(EVTSEL0 + 1, INSTRUCTIONS | EN | OS)
    cpu.wrmsr(GLOBAL_CTRL, 0b11)                      # 1 trapped: it counts itself
    cpu.retire(instructions=WORK)
    for _ in range(ROUNDS):
        cpu.cpuid(0)                                  # ROUNDS trapped CPUIDs
        cpu.rdmsr(EVTSEL0)                            # and ROUNDS trapped RDMSRs
    trapped = 1 + 2 * ROUNDS
    every, kernel = cpu.rdpmc(0), cpu.rdpmc(1)        # the second RDPMC counts the first
    cpu.check(every == WORK + trapped, "an instruction counter counts the trapped instructions",
              f"read {every}, want {WORK} retired + {trapped} trapped")
    cpu.check(kernel == trapped + 1, "a kernel-only counter counts only the trapped ones",
              f"read {kernel}, want {trapped} trapped + the first RDPMC")
