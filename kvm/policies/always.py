"""``always``: Linux 4.20 before the RFC.

Every pending counter that has an event is reprogrammed in kvm_pmu_handle_event (release +
create); event select, GLOBAL_CTRL and FIXED_CTR_CTRL writes reprogram the changed counters
synchronously in the exit; a counter write only adjusts ``pmc->counter`` (the host event keeps the
period it was created with); LVTPC is not masked when a PMI is delivered; and an NMI-mode PMI costs
the extra entry attempt 4.20 made (kvm_pmu_deliver_pmi raised KVM_REQ_NMI after vcpu_enter_guest
had processed NMIs, so the entry was cancelled and tried again).

This class is also the base of the other policies: each one names its release in ``generation``
(kvm/generations.py) and overrides only the code paths that release changed; every rule that
differs by release is read from ``self.generation``, so a policy file that subclasses one is
tried on that release's rules.
"""
from __future__ import annotations

from kvm.generations import GENERATIONS


class Always:
    name = "always"
    generation = GENERATIONS["always"]

    def config_changed(self, pmu, pmc, cause: str) -> None:
        """A guest write changed the counter's configuration."""
        if self.generation.defer_config_changes:
            pmu.reprogram_pmi |= pmc.bit
            pmu.requests.add("KVM_REQ_PMU")
        else:
            pmu.reprogram(pmc, cause)

    def reprogram_counter(self, pmu, pmc) -> str:
        """reprogram_gp_counter / reprogram_fixed_counter: stop, then create if enabled."""
        pmu.stop_counter(pmc)
        if not pmu.enabled(pmc):
            return "released_disabled"
        pmu.create_event(pmc, pmu.sample_period(pmc))
        return "reprogrammed_unconditionally"

    def write_counter(self, pmu, pmc, value: int) -> None:
        pmc.counter = (pmc.counter + value - pmu.read_counter(pmc)) & pmu.counter_bitmask

    def handle_event(self, pmu) -> None:
        """kvm_pmu_handle_event's loop over the snapshot of reprogram_pmi."""
        bitmask = self.take_pending(pmu)
        for pmc in pmu.pmcs():
            if not bitmask & pmc.bit:
                continue
            pmu.ledger.charge("retpoline_indirect_call")      # pmc_idx_to_pmc
            pmu.ledger.charge("cacheline_read_local")         # pmc->perf_event
            if pmc.perf_event is None and not self.generation.defer_config_changes:
                pmu.ledger.charge("locked_rmw")               # clear_bit, continue
                pmu.reprogram_pmi &= ~pmc.bit
                continue
            skip, reason = self.decide(pmu, pmc)
            if skip:
                pmu.ledger.charge("locked_rmw")               # clear_bit, continue
                pmu.reprogram_pmi &= ~pmc.bit
            else:
                done = pmu.reprogram(pmc, "handle_event")
                reason = reason or done
            pmu.stats["handle_event"][reason] += 1
        self.after_handle_event(pmu)

    def take_pending(self, pmu) -> int:
        """The bits this handle_event works on: 4.20/5.x leave them set until reprogrammed; with
        deferral (6.2) kvm_pmu_handle_event copies and atomically clears them."""
        bitmask = pmu.reprogram_pmi
        if self.generation.defer_config_changes:
            pmu.ledger.charge("locked_rmw")                   # atomic64_andnot
            pmu.reprogram_pmi &= ~bitmask
        return bitmask

    def decide(self, pmu, pmc) -> tuple[bool, str | None]:
        """Whether to skip the pending counter, and the reason to record if it says one: the
        RFC skips one whose event is active on the vCPU's pCPU
        (``READ_ONCE(pmc->perf_event->oncpu) == vcpu->cpu``)."""
        if not self.generation.skip_active_here:
            return False, None
        pmu.ledger.charge("cacheline_read_local", 2)          # event->oncpu, vcpu->cpu
        if pmc.oncpu == pmu.cpu:
            return True, "skipped_active_here"
        return False, "reprogrammed_inactive" if pmc.oncpu == -1 else "reprogrammed_elsewhere"

    def sched_in(self, pmu) -> None:
        """kvm_arch_sched_in: nothing for the vPMU before 5.5."""

    def after_handle_event(self, pmu) -> None:
        """What kvm_pmu_handle_event does after its loop: nothing before 5.5."""


POLICY = Always
