"""The guest kernel's perf driver, as Linux's x86 Intel driver drives an architectural PMU v2.

Events are sampling (``perf record -c PERIOD`` or ``-F HZ``) or counting (``perf stat``), on
general-purpose and fixed counters. Everything touches the PMU through trapped MSR accesses:
programming (``x86_perf_event_set_period``, ``intel_pmu_enable_event``), the enable/disable-all
pair around every change, the PMI handler of vpmu-facts.md §5 (late ack, as on Haswell and
later), and the tick: frequency-mode period estimation, unthrottling, and rotation of the events
that do not fit on the counters.
"""
from __future__ import annotations

import dataclasses
import logging

from common import msr, schema
from common.child import PROGRESS
from guest.cpu import GuestCpu

log = logging.getLogger("guest")

EVENT_CODES = {kind: code for code, kind in msr.ARCH_EVENTS.items()}
HANDLER_LOOP_LIMIT = 100
HZ = 1000
TICK_NS = 1_000_000_000 // HZ
MAX_SAMPLE_RATE = 100_000                    # kernel.perf_event_max_sample_rate
MAX_SAMPLES_PER_TICK = -(-MAX_SAMPLE_RATE // HZ)
MUX_INTERVAL_TICKS = 4                       # perf_event_mux_interval_ms = 4
WATCHDOG_THRESH_S = 10                       # kernel.watchdog_thresh


@dataclasses.dataclass
class GuestEvent:
    """A perf event of the guest kernel (``struct perf_event`` and its ``hw_perf_event``)."""
    name: str
    kind: str
    period: int = 0             # fixed sample period; 0 for counting or frequency mode
    freq: int = 0               # samples per second wanted (frequency mode)
    watchdog: bool = False
    idx: int | None = None      # counter (pmc index: GP i, fixed 32 + j) while scheduled
    sample_period: int = 0
    period_left: int = 0
    prev_raw: int = 0
    count: int = 0
    samples: int = 0
    throttled: bool = False
    tick_samples: int = 0
    freq_stamp: int = 0         # count at the last tick (frequency mode)
    freq_time: int = 0          # guest ns of the last overflow (frequency mode)
    last_period: int = 0        # the sample period at the last re-arm
    enabled_ns: int = 0
    running_ns: int = 0

    @property
    def sampling(self) -> bool:
        return bool(self.period or self.freq)

    def __post_init__(self):
        # counting events still overflow, at the longest period; frequency mode starts at 1
        self.sample_period = self.period or (1 if self.freq else msr.MAX_PERIOD)
        self.period_left = self.last_period = self.sample_period


def events_from_sessions(sessions: list[dict], ghz: float, watchdog: bool) -> list[GuestEvent]:
    events = [GuestEvent(f"{s['mode']}:{s['event']}", s["event"], s.get("period", 0),
                         s.get("freq", 0)) for s in sessions]
    if watchdog:   # the hard-lockup detector: cycles, one NMI per watchdog_thresh seconds
        events.insert(0, GuestEvent("watchdog:cycles", "cycles",
                                    int(ghz * 1e9) * WATCHDOG_THRESH_S, watchdog=True))
    return events


class PerfDriver:
    """The guest kernel's x86 perf driver on one vCPU: its events, their counters, the PMI
    handler and the tick."""

    def __init__(self, cpu: GuestCpu, events: list[GuestEvent], switch_ms: int = 0):
        self.cpu = cpu
        self.events = events
        self.switch_ticks = switch_ms * HZ // 1000   # another task every so often, 0: never
        self.task_in = True                          # the perf task is running
        self.switches = 0
        self.nr_gp = self.nr_fixed = 0
        self.intel_ctrl = 0
        self.fixed_ctrl = 0
        self.handled = 0            # PMIs whose status named an overflowed counter
        self.ticks = 0
        self.rotations = 0
        self.time_ns = 0            # guest time up to which enabled/running are accounted

    # --- set-up and counter assignment ------------------------------------------------------------

    def start(self) -> None:
        cpu = self.cpu
        eax, _, _, edx = cpu.cpuid(0xA)
        self.nr_gp, self.nr_fixed = (eax >> 8) & 0xFF, edx & 0x1F
        self.intel_ctrl = ((1 << self.nr_gp) - 1) | (
            ((1 << self.nr_fixed) - 1) << msr.FIXED_IDX_BASE)
        cpu.on_pmi(self.handle_irq)
        cpu.wrmsr(msr.MSR_X2APIC_LVTPC, msr.APIC_DM_NMI)
        self.disable_all()
        self.schedule(self.events)
        self.enable_all()
        if any(e.sampling for e in self.events) or self.multiplexed() or self.switch_ticks:
            cpu.on_tick(self.tick, TICK_NS)          # unthrottling, frequency, rotation

    def multiplexed(self) -> bool:
        return any(e.idx is None for e in self.events)

    def schedule(self, order: list[GuestEvent]) -> None:
        """x86_schedule_events: fixed counters for the events that fit them, then GP counters;
        the watchdog first, as a pinned event; what does not fit waits for rotation."""
        used: set[int] = set()
        for ev in sorted(order, key=lambda e: not e.watchdog):
            ev.idx = None
            if ev.kind in msr.FIXED_EVENTS:
                j = msr.FIXED_EVENTS.index(ev.kind)
                if j < self.nr_fixed and msr.FIXED_IDX_BASE + j not in used:
                    ev.idx = msr.FIXED_IDX_BASE + j
            if ev.idx is None and ev.kind != "ref_cycles":
                ev.idx = next((i for i in range(self.nr_gp) if i not in used), None)
            if ev.idx is not None:
                used.add(ev.idx)
                self.program(ev)

    def program(self, ev: GuestEvent) -> None:
        """x86_pmu_start: set the period, then enable the counter."""
        self.set_period(ev)
        self.enable_event(ev)

    def enable_event(self, ev: GuestEvent) -> None:
        if ev.idx >= msr.FIXED_IDX_BASE:
            shift = 4 * (ev.idx - msr.FIXED_IDX_BASE)
            self.fixed_ctrl |= (msr.FIXED_CTRL_OS | msr.FIXED_CTRL_USR
                                | msr.FIXED_CTRL_PMI) << shift
            self.cpu.wrmsr(msr.MSR_CORE_PERF_FIXED_CTR_CTRL, self.fixed_ctrl)
        else:
            self.cpu.wrmsr(msr.MSR_P6_EVNTSEL0 + ev.idx, EVENT_CODES[ev.kind] | msr.EVTSEL_USR
                           | msr.EVTSEL_OS | msr.EVTSEL_INT | msr.EVTSEL_EN)

    def disable_event(self, ev: GuestEvent) -> None:
        if ev.idx >= msr.FIXED_IDX_BASE:
            self.fixed_ctrl &= ~(0xF << (4 * (ev.idx - msr.FIXED_IDX_BASE)))
            self.cpu.wrmsr(msr.MSR_CORE_PERF_FIXED_CTR_CTRL, self.fixed_ctrl)
        else:
            self.cpu.wrmsr(msr.MSR_P6_EVNTSEL0 + ev.idx, 0)

    def disable_all(self) -> None:
        self.cpu.wrmsr(msr.MSR_CORE_PERF_GLOBAL_CTRL, 0)

    def enable_all(self) -> None:
        self.cpu.wrmsr(msr.MSR_CORE_PERF_GLOBAL_CTRL, self.intel_ctrl)

    # --- counter arithmetic -----------------------------------------------------------------------

    def update(self, ev: GuestEvent) -> None:
        """x86_perf_event_update: fold the counter's progress since the last write."""
        new = self.cpu.rdpmc(msr.rdpmc_ecx(ev.idx))
        delta = (new - ev.prev_raw) & msr.COUNTER_MASK
        ev.prev_raw = new
        ev.count += delta
        ev.period_left -= delta

    def set_period(self, ev: GuestEvent) -> None:
        """x86_perf_event_set_period: write -left so the counter overflows after ``left``."""
        period, left = ev.sample_period, ev.period_left
        if left <= -period:
            left, ev.last_period = period, period
        elif left <= 0:
            left, ev.last_period = left + period, period
        left = max(2, min(left, msr.MAX_PERIOD))
        ev.period_left = left
        ev.prev_raw = (-left) & msr.COUNTER_MASK
        self.cpu.wrmsr(msr.counter_msr_of(ev.idx), ev.prev_raw)

    def read(self) -> None:
        """Read every scheduled counter (perf stat's read, and what closing an event does)."""
        self.account_time()
        for ev in self.events:
            if ev.idx is not None:
                self.update(ev)

    def now_ns(self) -> int:
        """perf_clock() of the guest: its retired cycles at the core clock."""
        return int(self.cpu.cycles / self.cpu.workload.ghz)

    def account_time(self) -> None:
        """Time enabled and time running since the last call, for scaling multiplexed counts."""
        now = self.now_ns()
        dt, self.time_ns = now - self.time_ns, now
        if not self.task_in:                         # a task's events: no time while it is out
            return
        for ev in self.events:
            ev.enabled_ns += dt
            if ev.idx is not None:
                ev.running_ns += dt

    # --- the PMI handler ----------------------------------------------------------------------------

    def handle_irq(self, cpu: GuestCpu) -> None:
        self.disable_all()
        status = cpu.rdmsr(msr.MSR_CORE_PERF_GLOBAL_STATUS)
        if status:
            self.handled += 1
            PROGRESS.pmis += 1
        loops = 0
        while status:
            loops += 1
            if loops > HANDLER_LOOP_LIMIT:
                log.warning("PMI handler looped %d times; status %#x", loops, status)
                break
            cpu.wrmsr(msr.MSR_CORE_PERF_GLOBAL_OVF_CTRL, status)
            for ev in self.events:
                if ev.idx is not None and status & (1 << ev.idx):
                    elapsed = ev.last_period          # the events this period counted
                    self.update(ev)
                    self.set_period(ev)
                    if ev.sampling:
                        self.overflow(ev, elapsed)
            status = cpu.rdmsr(msr.MSR_CORE_PERF_GLOBAL_STATUS)
        self.enable_all()
        cpu.wrmsr(msr.MSR_X2APIC_LVTPC, msr.APIC_DM_NMI)

    def overflow(self, ev: GuestEvent, elapsed: int) -> None:
        """perf_event_overflow: take the sample, re-estimate a frequency-mode period from the
        time since the last overflow, throttle past the maximum rate."""
        ev.samples += 1
        ev.tick_samples += 1
        if ev.freq:
            now = self.now_ns()
            nsec, ev.freq_time = now - ev.freq_time, now
            if 0 < nsec < 2 * TICK_NS and self.adjust_period(ev, nsec, elapsed):
                self.set_period(ev)              # perf_adjust_period(disable=true) reloads
        if ev.tick_samples >= MAX_SAMPLES_PER_TICK and not ev.throttled:
            ev.throttled = True
            self.disable_event(ev)

    def adjust_period(self, ev: GuestEvent, nsec: int, count: int) -> bool:
        """perf_adjust_period: low-pass the period towards count / (nsec x freq); True when
        the counter must be reloaded now (far more left than the new period)."""
        wanted = count * 1_000_000_000 // max(1, nsec * ev.freq)
        ev.sample_period = max(1, ev.sample_period + (wanted - ev.sample_period + 7) // 8)
        if ev.period_left > 8 * ev.sample_period:
            ev.period_left = 0
            return True
        return False

    # --- the tick ----------------------------------------------------------------------------------

    def tick(self, cpu: GuestCpu) -> None:
        """perf_event_task_tick: unthrottle, re-estimate frequency-mode periods, rotate."""
        self.ticks += 1
        self.account_time()
        if self.switch_ticks and self.ticks % self.switch_ticks == 0:
            self.context_switch()
        if not self.task_in:
            return
        busy = [ev for ev in self.events if ev.idx is not None and (ev.freq or ev.throttled)]
        if busy:
            self.disable_all()
            for ev in busy:
                self.adjust(ev)
            self.enable_all()
        for ev in self.events:
            ev.tick_samples = 0
        if self.ticks % MUX_INTERVAL_TICKS == 0 and self.multiplexed():
            self.rotate()

    def context_switch(self) -> None:
        """perf_event_task_sched_out / _in around a switch to or from another guest task:
        disable all, stop (or restart) each scheduled event, enable all."""
        self.switches += 1
        self.disable_all()
        for ev in self.events:
            if ev.idx is None or ev.throttled:
                continue
            if self.task_in:
                self.update(ev)
                self.disable_event(ev)
            else:
                self.program(ev)
        self.task_in = not self.task_in
        self.enable_all()

    def adjust(self, ev: GuestEvent) -> None:
        """perf_adjust_freq_unthr_context for one event: stop, update, new period, start."""
        self.disable_event(ev)
        self.update(ev)
        ev.throttled = False
        if ev.freq:
            delta, ev.freq_stamp = ev.count - ev.freq_stamp, ev.count
            if delta > 0:
                self.adjust_period(ev, TICK_NS, delta)
            self.set_period(ev)
        self.enable_event(ev)

    def rotate(self) -> None:
        """rotate_ctx: the first non-pinned event goes to the back; reschedule."""
        self.rotations += 1
        self.account_time()
        self.disable_all()
        for ev in self.events:
            if ev.idx is not None:
                self.update(ev)
                self.disable_event(ev)
        movable = [e for e in self.events if not e.watchdog]
        movable.append(movable.pop(0))
        self.events = [e for e in self.events if e.watchdog] + movable
        self.schedule(self.events)
        self.enable_all()

    def report(self) -> list[schema.GuestEventReport]:
        return [schema.GuestEventReport(
            e.name, e.kind, e.count, e.samples, e.sample_period, e.enabled_ns, e.running_ns,
            scaled=e.count * e.enabled_ns // e.running_ns if e.running_ns else e.count)
            for e in self.events]
