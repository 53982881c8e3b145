"""What one vCPU thread counts and times, and the report it makes of them."""
from __future__ import annotations

import collections
import time

from common import schema
from common.costs import Ledger
from common.stats import Samples

# Exits the vPMU does not cause: the host timer's (a time slice ends), a test program's hypercall,
# the guest's last. Their VM transitions are reported apart from the vPMU's time.
OTHER_EXITS = ("host_timer", "hypercall", "done")


class VcpuMetrics:
    def __init__(self, index: int, params: dict[str, int]):
        self.params = params
        self.exits: collections.Counter = collections.Counter()      # reason -> exits
        self.exits_total = 0
        self.timeslices = 0
        self.entry_retries = 0
        self.injected = 0
        self.migrations: collections.Counter = collections.Counter()  # kind -> moves
        self.oncpu_disagreements = 0
        self.he_measured = Samples(index)
        self.he_modeled = Samples(index)
        self.he_ledger = Ledger()                # cost parameter -> times, over every call

    def exit(self, reason: str) -> None:
        self.exits[reason] += 1
        self.exits_total += 1

    def timed_handle_event(self, pmu, ledger: Ledger, host) -> None:
        """Run kvm_pmu_handle_event timed: measured around the call, modeled from what it
        charged to the vCPU's ledger (the timed window holds one clock read). The call that
        made the vCPU's first perf event is its one-time sample."""
        before, creates = Ledger(ledger), host.calls[schema.PerfCreate]
        t0 = time.perf_counter_ns()
        ledger.charge("clock_read")
        pmu.handle_event()
        elapsed = time.perf_counter_ns() - t0
        once = creates == 0 < host.calls[schema.PerfCreate]
        self.he_measured.add(elapsed, once)
        spent = Ledger(ledger)
        spent.subtract(before)
        spent = Ledger({k: v for k, v in spent.items() if v})
        self.he_ledger.update(spent)
        self.he_modeled.add(spent.total(self.params), once)

    def report(self, vcpu: int, pcpu: int, failure: str | None, policy: str, pmu, host,
               affinity: schema.Affinity, nmi: schema.NmiHandlerReport, clock,
               protocol_errors: dict) -> schema.VcpuReport:
        stats = pmu.stats
        return schema.VcpuReport(
            vcpu, pcpu, failure, policy,
            handle_event=schema.HandleEventReport(
                self.he_measured.to_record(), self.he_modeled.to_record(),
                dict(stats["handle_event"]), dict(self.he_ledger)),
            reprogram_counter=dict(stats["reprogram_counter"]),
            perf_calls=host.perf_calls(),
            overflows=stats["overflows"],
            overflows_ignored=stats["overflows_ignored"],
            injected=self.injected,
            timeslices=self.timeslices,
            migrations=dict(self.migrations),
            oncpu_disagreements=self.oncpu_disagreements,
            affinity=affinity,
            entry_retries=self.entry_retries,
            nmi_handler=nmi,
            exits=dict(self.exits),
            gp_faults=stats["gp_faults"],
            modeled_total_ns=clock.total_ns(),
            modeled_guest_ns=clock.guest_ns,
            modeled_other_exits_ns=sum(self.exits[r] for r in OTHER_EXITS)
            * self.params["vmx_transition"],
            protocol_errors=protocol_errors,
            generation=pmu.gen.name,
            release=pmu.gen.label,
            emulated_instructions=stats["emulated_instructions"])
