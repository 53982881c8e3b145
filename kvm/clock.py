"""The modeled clock of one vCPU."""
from __future__ import annotations

from common.costs import Ledger


class VcpuClock:
    """Modeled nanoseconds of one vCPU: what the guest ran (its retired cycles at the core clock)
    and what KVM and the host spent for it (its ledger at the run's cost parameters).

    ``now_ns`` is the clock at the last ``sync``: the time slice, the NMI handler's timing and
    every request to the host (perf's deferred work runs on it) read that one value. Time off
    the pCPU (host work, --host-load) moves it on but is no cost of the vCPU's (``total_ns``).
    """

    def __init__(self, ledger: Ledger, params: dict[str, int], ghz: float):
        self.ledger, self.params, self.ghz = ledger, params, ghz
        self.guest_cycles = 0
        self.guest_ns = 0
        self.now_ns = 0
        self.off_cpu_ns = 0                         # waiting while host work held the pCPU

    def off_cpu(self, ns: int) -> None:
        """Time passes with the vCPU task off its pCPU: on the clock, not in its cost."""
        self.off_cpu_ns += ns
        self.sync()

    def guest_ran(self, cycles: int) -> None:
        self.guest_cycles += cycles                 # converted whole: no ns lost per exit
        self.guest_ns = int(self.guest_cycles / self.ghz)

    def sync(self) -> int:
        self.now_ns = self.total_ns() + self.off_cpu_ns
        return self.now_ns

    def total_ns(self) -> int:
        return self.guest_ns + self.ledger.total(self.params)
