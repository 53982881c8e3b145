"""``always``: Linux 4.20 before the RFC.

Every pending counter that has an event is reprogrammed in kvm_pmu_handle_event (release +
create); event select, GLOBAL_CTRL and FIXED_CTR_CTRL writes reprogram the changed counters
synchronously in the exit; a counter write only adjusts ``pmc->counter`` (the host event keeps the
period it was created with); LVTPC is not masked when a PMI is delivered.
"""
from __future__ import annotations


class Always:
    name = "always"
    mask_lvtpc_on_pmi = False

    def config_changed(self, pmu, pmc, cause: str) -> None:
        pmu.reprogram(pmc, cause)

    def reprogram_counter(self, pmu, pmc) -> None:
        """reprogram_gp_counter / reprogram_fixed_counter: stop, then create if enabled."""
        pmu.stop_counter(pmc)
        if pmu.enabled(pmc):
            pmu.create_event(pmc, pmu.sample_period(pmc))

    def write_counter(self, pmu, pmc, value: int) -> None:
        pmc.counter = (pmc.counter + value - pmu.read_counter(pmc)) & pmu.counter_bitmask

    def handle_event(self, pmu) -> None:
        """kvm_pmu_handle_event's loop over the snapshot of reprogram_pmi."""
        bitmask = pmu.reprogram_pmi
        for pmc in pmu.pmcs():
            if not bitmask & pmc.bit:
                continue
            pmu.ledger.charge("retpoline_indirect_call")      # pmc_idx_to_pmc
            pmu.ledger.charge("cacheline_read_local")         # pmc->perf_event
            if pmc.perf_event is None:
                pmu.ledger.charge("locked_rmw")               # clear_bit
                pmu.reprogram_pmi &= ~pmc.bit
                continue
            reason = self.decide(pmu, pmc)
            pmu.stats["handle_event"][reason] += 1
            if reason.startswith("skipped"):
                pmu.ledger.charge("locked_rmw")               # clear_bit, continue
                pmu.reprogram_pmi &= ~pmc.bit
            else:
                pmu.reprogram(pmc, "handle_event")

    def decide(self, pmu, pmc) -> str:
        return "reprogrammed_unconditionally"


POLICY = Always
