"""``reuse``: Linux 5.5-5.7 (Like Xu's series: "Reuse perf_event to avoid unnecessary
pmc_reprogram_counter" and "Add lazy mechanism to release perf_event per vPMC"; Eric Hankland's
period update on counter writes).

Reprogramming pauses the event (disable, read and reset in one call) and, when the counter is
still enabled with the same configuration, resumes it with a period recalibrated from the counter;
only a changed configuration or a rejected period releases and re-creates it. Disabled counters
keep their paused event until a whole time slice passes without the guest touching them; then the
sched-in hook asks kvm_pmu_handle_event to release it. Every period is get_sample_period's.
"""
from __future__ import annotations

from common import msr, schema
from kvm.pmu import PerfCallRefused
from kvm.policies.always import Always


class Reuse(Always):
    name = "reuse"

    def sample_period(self, pmu, counter: int) -> int:
        """get_sample_period: a counter at 0 asks for a full period, never for 0."""
        return ((-counter) & pmu.counter_bitmask) or pmu.counter_bitmask + 1

    def pause_counter(self, pmu, pmc) -> None:
        """pmc_pause_counter: fold the count in and stop the event, in one perf call."""
        if pmc.perf_event is None or pmc.is_paused:
            return
        count = pmu.perf.call(schema.PerfPause(pmc.perf_event, reset=True)).count
        pmc.counter = (pmc.counter + count) & pmu.counter_bitmask
        pmc.is_paused = True

    def resume_counter(self, pmu, pmc) -> bool:
        """pmc_resume_counter: a new period (may be rejected), then enable."""
        try:
            pmu.perf.call(schema.PerfPeriod(pmc.perf_event, self.sample_period(pmu, pmc.counter)))
        except PerfCallRefused:
            return False
        pmu.perf.call(schema.PerfEnable(pmc.perf_event))
        pmc.is_paused = False
        pmu.reprogram_pmi &= ~pmc.bit
        return True

    def reprogram_counter(self, pmu, pmc) -> str:
        self.pause_counter(pmu, pmc)
        if not pmu.enabled(pmc):
            return "paused_disabled"
        if pmc.perf_event is not None and pmc.current_config == pmu.config_of(pmc):
            if self.resume_counter(pmu, pmc):
                return "resumed"
            reason = "reprogrammed_period_rejected"
        else:
            reason = "reprogrammed_config_changed"
        pmu.stop_counter(pmc)
        pmu.create_event(pmc, self.sample_period(pmu, pmc.counter))
        return reason

    def write_counter(self, pmu, pmc, value: int) -> None:
        super().write_counter(pmu, pmc, value)
        if pmc.perf_event is not None:
            pmu.perf.call(schema.PerfPeriod(pmc.perf_event, self.sample_period(pmu, pmc.counter)))

    def sched_in(self, pmu) -> None:
        """kvm_arch_sched_in: with events alive, ask handle_event to clean up unused ones."""
        if any(p.perf_event is not None for p in pmu.pmcs()):
            pmu.need_cleanup = True
            pmu.requests.add("KVM_REQ_PMU")

    def after_handle_event(self, pmu) -> None:
        if pmu.need_cleanup:
            self.cleanup(pmu)

    def cleanup(self, pmu) -> None:
        """kvm_pmu_cleanup: release the events of counters untouched for a whole time slice."""
        pmu.need_cleanup = False
        for pmc in pmu.pmcs():
            if pmc.perf_event is None or pmu.pmc_in_use & pmc.bit:
                continue
            if not msr.locally_enabled(pmc.idx, pmc.eventsel):
                pmu.stats["reprogram_counter"]["sched_in_cleanup"] += 1
                pmu.stop_counter(pmc)
        pmu.pmc_in_use = 0


POLICY = Reuse
