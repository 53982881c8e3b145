"""``deferred``: Linux 6.x ("Defer reprogram_counter() to kvm_pmu_handle_event()", 2022, and the
6.6 PMI fixes).

As ``reuse``, but a guest change of a counter's configuration only marks it in reprogram_pmi and
requests KVM_REQ_PMU; kvm_pmu_handle_event takes the marked bits at once and reprograms each
before the next entry. A counter write updates the period only of a live, running event
(pmc_update_sample_period). PMI delivery masks LVTPC, and PMI requests are serviced before NMI
requests, so an NMI-mode PMI needs no second entry attempt.
"""
from __future__ import annotations

from common import schema
from kvm.policies.reuse import Reuse


class Deferred(Reuse):
    name = "deferred"
    mask_lvtpc_on_pmi = True
    nmi_entry_retry = False
    defer_config_changes = True

    def take_pending(self, pmu) -> int:
        bitmask = pmu.reprogram_pmi
        pmu.ledger.charge("locked_rmw")                       # atomic64_andnot
        pmu.reprogram_pmi &= ~bitmask
        return bitmask

    def write_counter(self, pmu, pmc, value: int) -> None:
        """pmc_write_counter + pmc_update_sample_period."""
        pmc.counter = (pmc.counter + value - pmu.read_counter(pmc)) & pmu.counter_bitmask
        if pmc.perf_event is not None and not pmc.is_paused:
            pmu.perf.call(schema.PerfPeriod(pmc.perf_event, self.sample_period(pmu, pmc.counter)))


POLICY = Deferred
