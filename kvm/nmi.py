"""The NMIs of one vCPU: a PMI waiting for injection, the guest's NMI blocking, and how long the
guest's NMI handler runs.

A PMI in NMI mode is injected at an entry unless the guest is inside its NMI handler (NMIs are
blocked until its IRET); then KVM asks for an exit when the NMI window opens. The handler is timed
from the injection to the guest's last exit inside it: measured, and modeled as the guest time in
between plus what the window charged to the vCPU's ledger.
"""
from __future__ import annotations

import time

from common import faults, schema
from common.costs import Ledger
from common.stats import Samples


class VcpuNmi:
    def __init__(self, index: int, ledger: Ledger, params: dict[str, int]):
        self.ledger, self.params = ledger, params
        self.pending = False          # an NMI-mode PMI waits for injection
        self.blocked = False          # the guest is in its NMI handler
        self.late = False             # fault switch kvm_late_pmi: held for one entry
        # (wall ns, guest ns, ledger) at the injection and at the handler's latest exit
        self.started: tuple[int, int, Ledger] | None = None
        self.last: tuple[int, int, Ledger] | None = None
        self.measured = Samples(index)
        self.modeled = Samples(index)
        self.spent = Ledger()         # what the handlers' windows charged, in total
        self.guest_ns = 0             # the guest time in them, in total

    def on_exit(self, in_nmi: bool, guest_ns: int) -> None:
        """An exit, inside the guest's NMI handler or not: time the handler up to its last exit."""
        if self.started is not None:
            if in_nmi:
                self.last = (time.perf_counter_ns(), guest_ns, Ledger(self.ledger))
            else:
                start, end = self.started, self.last or self.started
                spent = Ledger(end[2])
                spent.subtract(start[2])
                self.spent.update(spent)
                self.guest_ns += end[1] - start[1]
                self.measured.add(end[0] - start[0])
                self.modeled.add(end[1] - start[1] + spent.total(self.params))
                self.started = self.last = None
        self.blocked = in_nmi

    def inject_now(self, exits: int) -> bool:
        """Whether the pending NMI goes in with this entry (test fault switches may drop it,
        hold it for one entry, or make one up every 40 exits)."""
        if faults.active("kvm_drop_pmi"):
            self.pending = False
        if faults.active("kvm_late_pmi") and self.pending and not self.late:
            self.late = True
        elif faults.active("kvm_spurious_pmi") and exits % 40 == 0:
            self.pending = True
        else:
            self.late = False
        inject = self.pending and not self.blocked and not self.late
        if inject:
            self.pending = False
        return inject

    @property
    def window(self) -> bool:
        """An NMI waits for the guest's IRET: the entry asks for an exit when NMIs unblock."""
        return self.pending and self.blocked

    def injected(self, guest_ns: int) -> None:
        self.started = (time.perf_counter_ns(), guest_ns, Ledger(self.ledger))

    def report(self) -> schema.NmiHandlerReport:
        return schema.NmiHandlerReport(self.measured.to_record(), self.modeled.to_record(),
                                       {k: v for k, v in self.spent.items() if v}, self.guest_ns)
