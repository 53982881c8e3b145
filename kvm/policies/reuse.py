"""``reuse``: Linux 5.7 (Like Xu's series: "Reuse perf_event to avoid unnecessary
pmc_reprogram_counter" and "Add lazy mechanism to release perf_event per vPMC", 5.5; Eric
Hankland's "Adjust counter sample period after a wrmsr", 168d918f2643, 5.7).

Reprogramming pauses the event (disable, read and reset in one call) and, when the counter is
still enabled with the same configuration, resumes it with a period recalibrated from the counter;
only a changed configuration or a rejected period releases and re-creates it. Disabled counters
keep their paused event until a whole time slice passes without the guest touching them; then the
sched-in hook asks kvm_pmu_handle_event to release it. Every period is get_sample_period's.

What differs by release is read from the generation: 5.7 pauses (and reads) on every reprogram,
paused or not (``pause_while_paused``: no ``is_paused`` before 5.15, e79f49c37ccf), and takes a
written counter's period from the written value (``counter_write_period``); 6.x folds in
``emulated_counter`` at the pause (fd89499a5151) and takes the period from ``pmc->counter``.
"""
from __future__ import annotations

from common import msr, schema
from kvm.generations import GENERATIONS
from kvm.pmu import PerfCallRefused
from kvm.policies.always import Always


class Reuse(Always):
    name = "reuse"
    generation = GENERATIONS["reuse"]

    def sample_period(self, pmu, counter: int) -> int:
        """get_sample_period: a counter at 0 asks for a full period, never for 0."""
        return ((-counter) & pmu.counter_bitmask) or pmu.counter_bitmask + 1

    def pause_counter(self, pmu, pmc) -> bool:
        """pmc_pause_counter: fold the count in and stop the event, in one perf call (5.7: even
        when it is already paused); from 6.8 also fold in ``emulated_counter``. True when that
        made the counter wrap: an emulated overflow (6.12 ``return pmc->counter < prev``)."""
        counter = pmc.counter
        if pmc.perf_event is not None and (self.generation.pause_while_paused
                                           or not pmc.is_paused):
            counter += pmu.perf.call(schema.PerfPause(pmc.perf_event, reset=True)).count
        prev = counter & pmu.counter_bitmask
        pmc.counter = (counter + pmc.emulated_counter) & pmu.counter_bitmask
        pmc.emulated_counter = 0
        pmc.is_paused = True
        return pmc.counter < prev

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
        emulated_overflow = self.pause_counter(pmu, pmc)
        if not pmu.enabled(pmc):
            return "paused_disabled"
        if emulated_overflow:
            pmu.emulated_overflow(pmc)
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
        """intel_pmu_set_msr's counter write, then the period the release gives the event: 5.7
        ``perf_event_period(get_sample_period(pmc, data))`` whenever an event exists, paused or
        not; from 5.18 pmc_update_sample_period, from ``pmc->counter`` and only while the event
        runs (6.8 pmc_write_counter also drops ``emulated_counter`` first)."""
        pmc.emulated_counter = 0
        super().write_counter(pmu, pmc, value)
        if pmc.perf_event is None:
            return
        rule = self.generation.counter_write_period
        if rule == "from_value":
            period = self.sample_period(pmu, value)
        elif rule == "from_counter" and not pmc.is_paused:
            period = self.sample_period(pmu, pmc.counter)
        else:
            return
        pmu.perf.call(schema.PerfPeriod(pmc.perf_event, period))

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
