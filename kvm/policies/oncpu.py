"""``oncpu``: 4.20 with the RFC (seed-rfc-patch.txt).

kvm_pmu_handle_event skips a pending counter whose event is active on the vCPU's pCPU
(``READ_ONCE(pmc->perf_event->oncpu) == vcpu->cpu``), and reprograms it when the event is
inactive (``oncpu == -1``) or active elsewhere. Everything else is ``always``.
"""
from __future__ import annotations

from kvm.policies.always import Always


class OnCpu(Always):
    name = "oncpu"

    def decide(self, pmu, pmc) -> tuple[bool, str | None]:
        pmu.ledger.charge("cacheline_read_local", 2)          # event->oncpu, vcpu->cpu
        if pmc.oncpu == pmu.cpu:
            return True, "skipped_active_here"
        return False, "reprogrammed_inactive" if pmc.oncpu == -1 else "reprogrammed_elsewhere"


POLICY = OnCpu
