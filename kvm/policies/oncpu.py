"""``oncpu``: 4.20 with the RFC (seed-rfc-patch.txt).

kvm_pmu_handle_event skips a pending counter whose event is active on the vCPU's pCPU
(``READ_ONCE(pmc->perf_event->oncpu) == vcpu->cpu``), and reprograms it when the event is
inactive (``oncpu == -1``) or active elsewhere: the generation's ``skip_active_here``, which
``Always.decide`` reads. Everything else is ``always``.
"""
from __future__ import annotations

from kvm.generations import GENERATIONS
from kvm.policies.always import Always


class OnCpu(Always):
    name = "oncpu"
    generation = GENERATIONS["oncpu"]


POLICY = OnCpu
