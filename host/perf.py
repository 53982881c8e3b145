"""Host perf: the kernel-internal perf API that KVM uses, and the x86 machinery behind it.

What is modeled, each charged to a cost ledger as the kernel would spend it
(shared/reference/vpmu-facts.md §3, §6):
- kernel counters bound to a task (``cpu = -1``): create, release, read, pause, period, enable,
  disable; they follow the task, so ``oncpu`` is the pCPU while the event holds a hardware counter
  there and -1 otherwise;
- schedule-in/out of a task's events and counter assignment against CPU-pinned host users;
- counting of what the guest retires, overflow at the sample period, the host PMI handler's
  re-arm (``x86_perf_event_set_period``) and the overflow callback to the owner;
- ``pmc_refcount``: the first x86 event reserves the PMU and sets up the debug store on every
  possible CPU, the last one tears it down (host/debug_store.py, host/smp.py, host/tlb.py);
- the ``perf_sched_events`` static key: enabled on the first task event with a grace period,
  its disable deferred by one second of modeled time (host/static_key.py);
- interrupt throttling (common/throttle.py): overflows counted per event per tick of its pCPU,
  the event stopped at the limit and started again by the next tick
  (``perf_adjust_freq_unthr_context``), a schedule-in (``event_sched_in``) or a new period
  (``__perf_event_period``), whichever comes first; what it misses meanwhile is lost.
The costs follow the host kernel release's code (common/kernels.py) from the caller's pCPU.
"""
from __future__ import annotations

import dataclasses

from fractions import Fraction

from common import cmask, kernels, msr, schema, throttle
from common.costs import Ledger
from common.topology import Topology
from host.cpu_hw_events import CpuHwEvents
from host.debug_store import DebugStore
from host.smp import Smp
from host.static_key import PerfSchedEvents


class PerfError(Exception):
    """A perf call that the host refuses (-EINVAL, -ENOENT, an event of another owner)."""


@dataclasses.dataclass
class PerfEvent:
    handle: int
    owner: str                 # the KVM link that created it ("vm0/vcpu0"), or "host"
    task: str | None           # bound task (cpu = -1) or None for a CPU-pinned event
    cpu: int                   # -1 for task events
    kind: str
    exclude_user: bool
    exclude_kernel: bool
    sample_period: int         # 0: a counting event, its overflows never reach the owner
    context: int               # KVM's pmc index, handed back with each overflow
    enabled: bool = True
    error: bool = False        # pinned and found no counter: not retried until enabled again
    oncpu: int = -1
    oncpu_told: int = -1       # the oncpu its owner last heard of (create's result, Oncpu pushes)
    slot: tuple[str, int] | None = None
    count: int = 0
    period_left: int = 0
    time_enabled: int = 0      # in guest cycles retired while enabled / while on a counter
    time_running: int = 0
    filter: cmask.Filter | None = None   # EDGE/INV/CMASK: counts cycles, not events
    gp_encoding: bool = False  # a GP event select (cpu_hw_events.py: 0x013C is no fixed event)
    interrupts: int = 0        # hwc->interrupts: overflows in the tick ``interrupts_seq``
    interrupts_seq: int = 0
    throttled: bool = False    # hwc->interrupts == MAX_INTERRUPTS: its counter is stopped

    @property
    def armed_period(self) -> int:
        return min(self.sample_period or msr.MAX_PERIOD, msr.MAX_PERIOD)

    def counts(self, cpl: int) -> bool:
        return not (self.exclude_kernel if cpl == 0 else self.exclude_user)


@dataclasses.dataclass
class Task:
    name: str
    cpu: int = -1              # the pCPU it runs on, -1 while not running
    last_cpu: int = -1
    events: list = dataclasses.field(default_factory=list)


class HostPerf:
    def __init__(self, topo: Topology, watchdog: bool, host_pinned: int = 0,
                 busy_pcpus: tuple[int, ...] = (), event_binding: str = "task",
                 kernel: str = kernels.DEFAULT, x2apic: str = "cluster", hz: int = 250,
                 max_sample_rate: int = throttle.DEFAULT_MAX_SAMPLE_RATE):
        self.topo = topo
        self.smp = Smp(topo, kernels.kernel(kernel), x2apic)
        self.max_samples_per_tick = throttle.max_samples_per_tick(hz, max_sample_rate)
        self.throttle_above_limit = kernels.kernel(kernel).throttle_above_limit
        # perf_throttled_seq of each pCPU (booted: it has ticked) and perf_throttled_count
        self.tick_seq = [1] * topo.ncpus
        self.throttled_count = [0] * topo.ncpus
        self.debug_store = DebugStore(self.smp)
        self.sched_key = PerfSchedEvents(self.smp)
        self.cpuc = [CpuHwEvents(c, topo.gp_counters, topo.fixed_counters)
                     for c in range(topo.ncpus)]
        self.events: dict[int, PerfEvent] = {}
        self.tasks: dict[str, Task] = {}
        self.next_handle = 1
        self.pmc_refcount = 0
        self.now_ns = 0
        self.pcpu_clock: dict[int, int] = {}     # modeled ns each used pCPU spent: guest + host
        self.event_binding = event_binding
        self.current: dict[int, str] = {}        # pCPU -> the task running there
        self.unavailable: dict[str, dict[int, int]] = {}  # task -> pmc context -> events lost
        self.throttled_lost: dict[str, dict[int, int]] = {}   # the same, lost while throttled
        self.stats = {"refcount_crossings": {"reserve": 0, "release": 0},
                      "static_key": self.sched_key.stats,
                      "overflows": 0, "overflows_to_owner": 0, "sched_in_other_cpu": 0,
                      "pinned_errors": 0, "run_queue_waits": 0,
                      "throttled": {"throttle": 0, "unthrottle": 0}}
        # Boot-time host users, placed before any task can run: not charged to anyone.
        for cpu in range(topo.ncpus):
            if watchdog:
                self._boot_cpu_event(cpu, "cycles")
            for _ in range(host_pinned):
                self._boot_cpu_event(cpu, "llc_misses")
        for cpu in busy_pcpus:                   # every counter held by host pinned events
            cpuc = self.cpuc[cpu]
            for j, holder in enumerate(cpuc.fixed):
                if holder is None:
                    self._boot_cpu_event(cpu, msr.FIXED_EVENTS[j])
            for _ in range(cpuc.free_gp()):
                self._boot_cpu_event(cpu, "llc_misses")

    # --- boot ---------------------------------------------------------------------------------

    def _boot_cpu_event(self, cpu: int, kind: str) -> None:
        ev = self._new_event("host", None, cpu, kind, False, False, 0, -1)
        ev.slot = self.cpuc[cpu].assign(ev)
        if ev.slot is None:
            raise ValueError(f"pCPU {cpu} has no counter left for a host {kind} event")
        ev.oncpu = cpu
        self.pmc_refcount += 1

    def _new_event(self, owner, task, cpu, kind, excl_user, excl_kernel, period, context):
        ev = PerfEvent(self.next_handle, owner, task, cpu, kind, excl_user, excl_kernel, period,
                       context)
        ev.period_left = ev.armed_period
        self.events[ev.handle] = ev
        self.next_handle += 1
        return ev

    # --- time-driven work ---------------------------------------------------------------------

    def advance_time(self, now_ns: int) -> None:
        """Run perf_sched_work when its second has passed."""
        self.now_ns = max(self.now_ns, now_ns)
        self.sched_key.advance(self.now_ns)

    @property
    def key_enabled(self) -> bool:
        return self.sched_key.enabled

    # --- scheduler ------------------------------------------------------------------------------

    def task(self, name: str) -> Task:
        return self.tasks.setdefault(name, Task(name))

    def cpu_free_for(self, name: str, cpu: int) -> bool:
        """Whether ``name`` may run on ``cpu`` now: one task per pCPU, the others wait."""
        self.topo.socket_of(cpu)
        return self.current.get(cpu, name) == name

    def sched_in(self, name: str, cpu: int, ledger: Ledger) -> None:
        """The task starts running on ``cpu``: its enabled events try to get a counter there."""
        task = self.task(name)
        if task.cpu != -1:
            self.sched_out(name, ledger)
        if not self.cpu_free_for(name, cpu):
            raise PerfError(f"pCPU {cpu} is running {self.current[cpu]}")
        if task.last_cpu not in (-1, cpu):
            self.stats["sched_in_other_cpu"] += 1
        task.cpu = task.last_cpu = cpu
        self.current[cpu] = name
        for ev in task.events:
            self._event_sched_in(ev, ledger)

    def tick_done(self, name: str, cpu: int, ledger: Ledger) -> schema.Ticked:
        """The end of the task's tick (host/main.py HostServer.tick): a task switched out there
        runs again now."""
        if self.task(name).cpu != -1:
            return schema.Ticked(False)
        self.sched_in(name, cpu, ledger)
        return schema.Ticked(True)

    def sched_out(self, name: str, ledger: Ledger) -> None:
        task = self.task(name)
        for ev in task.events:
            if ev.cpu == -1:                     # CPU-bound events stay where they are
                self._event_sched_out(ev, ledger)
        if self.current.get(task.cpu) == name:
            del self.current[task.cpu]
        task.cpu = -1

    def _event_sched_in(self, ev: PerfEvent, ledger: Ledger) -> None:
        cpu = ev.cpu if ev.cpu != -1 else self.tasks[ev.task].cpu
        if cpu == -1 or not ev.enabled or ev.error or ev.slot is not None:
            return
        self._unthrottle(ev)             # event_sched_in: "we might have missed several ticks"
        ledger.charge("x86_counter_schedule")
        ev.slot = self.cpuc[cpu].assign(ev)
        if ev.slot is None:
            ev.error = True              # a pinned event with no counter: perf's error state
            self.stats["pinned_errors"] += 1
            return
        ledger.charge("pmu_wrmsr", 2)    # counter value, then event select
        ev.oncpu = cpu

    def _event_sched_out(self, ev: PerfEvent, ledger: Ledger) -> None:
        if ev.slot is None:
            return
        ledger.charge("pmu_wrmsr")       # clear the event select
        self.cpuc[ev.oncpu].release(ev.slot)
        ev.slot, ev.oncpu = None, -1

    # --- the perf API KVM calls ----------------------------------------------------------------

    def call(self, owner: str, op, ledger: Ledger):
        """One request of the vCPU task ``owner``: a perf API call or a scheduling of the task
        (a record of schema.PERF_API or schema.SCHED_OPS), dispatched from CALLS; returns the
        call's typed result (schema.RESULT_OF), None for the others."""
        return CALLS[type(op)](self, owner, op, ledger)

    def migrate(self, name: str, cpu: int, ledger: Ledger) -> None:
        """Dequeue the task on its old pCPU, enqueue it on the new one."""
        self.sched_out(name, ledger)
        self.sched_in(name, cpu, ledger)

    def owned(self, owner: str, handle: int) -> PerfEvent:
        ev = self.events.get(handle)
        if ev is None:
            raise PerfError(f"no perf event {handle}")
        if ev.owner != owner:
            raise PerfError(f"perf event {handle} belongs to {ev.owner}, not {owner}")
        return ev

    def create(self, owner: str, attr: schema.PerfCreate, ledger: Ledger) -> PerfEvent:
        """perf_event_create_kernel_counter(attr, cpu=-1, task=current, overflow_handler)."""
        if attr.kind not in msr.EVENT_KINDS:
            raise PerfError(f"event kind {attr.kind!r} is not supported by this PMU")
        if attr.sample_period < 0:
            raise PerfError(f"sample_period {attr.sample_period!r}")
        ledger.charge("perf_event_alloc")
        self._reserve_hardware(self._caller_cpu(owner), ledger)
        self.sched_key.account(self._caller_cpu(owner), ledger)
        task = self.task(owner)
        bound = task.cpu if self.event_binding == "cpu" else -1
        ev = self._new_event(owner, owner, bound, attr.kind, attr.exclude_user,
                             attr.exclude_kernel, attr.sample_period, attr.context)
        ev.filter = attr.filter if attr.filter is not None and attr.filter.cmask else None
        ev.gp_encoding = attr.gp_encoding
        task.events.append(ev)
        ledger.charge("perf_ctx_lock")   # perf_install_in_context under ctx->mutex
        ledger.charge("local_function_call")
        self._event_sched_in(ev, ledger)
        return ev

    def release(self, owner: str, handle: int, ledger: Ledger) -> int:
        """perf_event_release_kernel: remove from the task context, unaccount, free."""
        ev = self.owned(owner, handle)
        ledger.charge("perf_ctx_lock")
        ledger.charge("local_function_call")
        self._event_sched_out(ev, ledger)
        self.tasks[ev.task].events.remove(ev)
        del self.events[handle]
        self.sched_key.unaccount(self.now_ns)
        self._release_hardware(self._caller_cpu(owner), ledger)
        ledger.charge("perf_event_free")
        return ev.count

    def read(self, owner: str, handle: int, ledger: Ledger) -> PerfEvent:
        """perf_event_read_value: count, time enabled, time running."""
        ev = self.owned(owner, handle)
        ledger.charge("perf_read_value")
        if ev.slot is not None:
            ledger.charge("rdpmc")
        return ev

    def pause(self, owner: str, handle: int, reset: bool, ledger: Ledger) -> int:
        """perf_event_pause: disable, read and optionally reset, under one ctx lock."""
        ev = self.owned(owner, handle)
        ledger.charge("perf_ctx_lock")
        self._disable(ev, ledger)
        count = ev.count
        if reset:
            ev.count = 0
        return count

    def period(self, owner: str, handle: int, period: int, ledger: Ledger) -> None:
        """perf_event_period: a new sample period; 0 is rejected (-EINVAL)."""
        ev = self.owned(owner, handle)
        ledger.charge("perf_ctx_lock")
        if period <= 0 or not ev.sample_period:
            raise PerfError(f"period {period!r} rejected for event {handle}")
        ev.sample_period = period
        if ev.slot is not None:          # an active event is stopped and restarted in place
            self._unthrottle(ev)         # "We could be throttled; unthrottle now"
            ledger.charge("local_function_call")
            ledger.charge("pmu_wrmsr", 3)
        ev.period_left = ev.armed_period

    def enable(self, owner: str, handle: int, ledger: Ledger) -> None:
        ev = self.owned(owner, handle)
        ledger.charge("perf_ctx_lock")
        if not ev.enabled:
            ev.enabled, ev.error = True, False
            ledger.charge("local_function_call")
            self._event_sched_in(ev, ledger)

    def disable(self, owner: str, handle: int, ledger: Ledger) -> None:
        ev = self.owned(owner, handle)
        ledger.charge("perf_ctx_lock")
        self._disable(ev, ledger)

    def _disable(self, ev: PerfEvent, ledger: Ledger) -> None:
        if ev.enabled:
            ev.enabled = False
            ledger.charge("local_function_call")
            self._event_sched_out(ev, ledger)

    # --- counting, overflow, budget --------------------------------------------------------------

    def charge_cpu(self, name: str, ns: int) -> None:
        """Advance the modeled clock of the pCPU the task runs on."""
        cpu = self.task(name).cpu
        if cpu != -1:
            self.pcpu_clock[cpu] = self.pcpu_clock.get(cpu, 0) + ns

    def account(self, name: str, retired: dict, stretches: list[schema.Stretch] = (),
                cpl: int = 3) -> list[PerfEvent]:
        """Count what the guest retired on the task's pCPU; return the events that overflowed
        and whose owner must be called back, in counter order. Filtered events count the
        cycles of ``stretches`` that meet their condition."""
        task = self.task(name)
        overflowed = []
        cycles = retired.get("cycles", 0)
        self.charge_cpu(name, int(cycles / self.topo.ghz))
        for ev in task.events:
            if ev.enabled:
                ev.time_enabled += cycles
            if not ev.counts(cpl):
                continue
            if ev.oncpu != task.cpu or task.cpu == -1:
                if ev.enabled and ev.error:
                    self._lose(self.unavailable, name, ev, retired.get(ev.kind, 0))
                continue
            ev.time_running += cycles    # a throttled event stays active, its counter stopped
            n = self.increments(ev, retired, stretches)
            if n <= 0:
                continue
            if ev.throttled:
                self._lose(self.throttled_lost, name, ev, n)
                continue
            ev.count += n
            ev.period_left -= n
            if ev.period_left <= 0:
                self._host_pmi(ev)
                if ev.sample_period:
                    overflowed.append(ev)
        return overflowed

    @staticmethod
    def _lose(where: dict, name: str, ev: PerfEvent, n: int) -> None:
        """Events that retired while ``ev`` could not count them."""
        if n > 0:
            lost = where.setdefault(name, {})
            lost[ev.context] = lost.get(ev.context, 0) + n

    @staticmethod
    def increments(ev: PerfEvent, retired: dict, stretches: list[schema.Stretch]) -> int:
        if ev.filter is None:
            return retired.get(ev.kind, 0)
        return sum(cmask.count(ev.filter, s.cycles, s.events.get(ev.kind, 0), Fraction(*s.y0),
                               Fraction(*s.y1), False)[0] for s in stretches)

    def _host_pmi(self, ev: PerfEvent) -> None:
        """intel_pmu_handle_irq for one counter: update the count (done), re-arm the period,
        then perf_event_overflow, whose interrupt accounting may throttle the event (its
        overflow handler, KVM's, still runs: it is called after the accounting)."""
        self.stats["overflows"] += 1
        self._account_interrupt(ev)
        period, left = ev.armed_period, ev.period_left
        if left <= -period:
            left = period
        elif left <= 0:
            left += period
        ev.period_left = min(left, msr.MAX_PERIOD)
        if ev.sample_period:
            self.stats["overflows_to_owner"] += 1

    def _account_interrupt(self, ev: PerfEvent) -> None:
        """__perf_event_account_interrupt(event, throttle=1) on the event's pCPU; a throttled
        event's counter is stopped (x86_pmu_stop) until something unthrottles it."""
        seq = self.tick_seq[ev.oncpu]
        if ev.interrupts_seq != seq:
            ev.interrupts_seq, ev.interrupts = seq, 1
            return
        ev.interrupts += 1
        if throttle.throttles(self.throttle_above_limit, ev.interrupts, self.max_samples_per_tick):
            ev.throttled = True
            self.throttled_count[ev.oncpu] += 1
            self.stats["throttled"]["throttle"] += 1

    def _unthrottle(self, ev: PerfEvent) -> None:
        if ev.throttled:
            ev.throttled, ev.interrupts = False, 0
            self.stats["throttled"]["unthrottle"] += 1

    def tick(self, cpu: int) -> None:
        """perf_event_task_tick on ``cpu``: a new perf_throttled_seq, and if an event was throttled
        there since the last tick, perf_adjust_freq_unthr_context starts the active events of
        the CPU's context and of the task running there again."""
        self.tick_seq[cpu] += 1
        throttled, self.throttled_count[cpu] = self.throttled_count[cpu], 0
        if not throttled:
            return
        for ev in self.events.values():     # a task's events hold a counter only while it runs
            if ev.slot is not None and ev.oncpu == cpu:
                self._unthrottle(ev)

    def budget(self, name: str) -> dict[str, int]:
        """Events of each kind that may retire on the task's pCPU before a counter overflows."""
        out: dict[str, int] = {}
        task = self.task(name)
        for ev in task.events:
            if ev.slot is not None and ev.oncpu == task.cpu and ev.filter is None \
                    and not ev.throttled:
                out[ev.kind] = min(out.get(ev.kind, ev.period_left), ev.period_left)
        return out

    def filtered_budget(self, name: str) -> list[schema.FilteredBudget]:
        """The same for EDGE/INV/CMASK events, in increments of their condition."""
        task = self.task(name)
        return [schema.FilteredBudget(ev.kind, ev.filter, ev.period_left) for ev in task.events
                if ev.slot is not None and ev.oncpu == task.cpu and ev.filter is not None
                and not ev.throttled]

    def oncpu_changes(self, name: str) -> list[PerfEvent]:
        """The task's events whose ``oncpu`` changed since their owner last heard of it; from
        now on it has."""
        moved = [ev for ev in self.task(name).events if ev.oncpu != ev.oncpu_told]
        for ev in moved:
            ev.oncpu_told = ev.oncpu
        return moved

    # --- x86 hardware reservation and the debug store ------------------------------------------

    def _caller_cpu(self, owner: str) -> int:
        """The pCPU the calling task runs on (pCPU 0 for a task not placed, as in unit tests)."""
        return max(self.task(owner).cpu, 0)

    def _reserve_hardware(self, cpu: int, ledger: Ledger) -> None:
        """x86_reserve_hardware: on pmc_refcount 0 -> 1, reserve_pmc_hardware (a
        test_and_set_bit per counter and event select) and reserve_ds_buffers."""
        self.pmc_refcount += 1
        if self.pmc_refcount == 1:
            self.stats["refcount_crossings"]["reserve"] += 1
            ledger.charge("locked_rmw", 2 * self.topo.gp_counters)
            self.debug_store.reserve(cpu, ledger)

    def _release_hardware(self, cpu: int, ledger: Ledger) -> None:
        """x86_release_hardware: on pmc_refcount 1 -> 0, release_pmc_hardware (clear_bit each)
        and release_ds_buffers."""
        self.pmc_refcount -= 1
        if self.pmc_refcount == 0:
            self.stats["refcount_crossings"]["release"] += 1
            ledger.charge("locked_rmw", 2 * self.topo.gp_counters)
            self.debug_store.release(cpu, ledger)


def reservation_cycle(topo: Topology, kernel: str = kernels.DEFAULT,
                      x2apic: str = "cluster") -> Ledger:
    """What the costliest perf work one call can set off charges on ``topo``: the first kernel
    counter on an idle host PMU and its release (x86_reserve_hardware and x86_release_hardware
    across pmc_refcount 0 -> 1 -> 0, and the perf_sched_events static key's enable). The
    launcher derives its default modeled-time budget from it."""
    perf = HostPerf(topo, watchdog=False, kernel=kernel, x2apic=x2apic)
    ledger = Ledger()
    perf._reserve_hardware(0, ledger)
    perf.sched_key.account(0, ledger)
    perf._release_hardware(0, ledger)
    return ledger


# --- the requests a vCPU task makes, and their typed results ----------------------------------------

def _create(perf: HostPerf, owner: str, op: schema.PerfCreate, ledger: Ledger) -> schema.Created:
    ev = perf.create(owner, op, ledger)
    ev.oncpu_told = ev.oncpu                     # the owner learns it from the result
    return schema.Created(ev.handle, ev.oncpu)


def _read(perf: HostPerf, owner: str, op: schema.PerfRead, ledger: Ledger) -> schema.ReadValue:
    ev = perf.read(owner, op.handle, ledger)
    return schema.ReadValue(ev.count, ev.time_enabled, ev.time_running)


CALLS = {
    schema.PerfCreate: _create,
    schema.PerfRelease: lambda perf, owner, op, ledger:
        schema.Count(perf.release(owner, op.handle, ledger)),
    schema.PerfRead: _read,
    schema.PerfPause: lambda perf, owner, op, ledger:
        schema.Count(perf.pause(owner, op.handle, op.reset, ledger)),
    schema.PerfPeriod: lambda perf, owner, op, ledger:
        perf.period(owner, op.handle, op.period, ledger),
    schema.PerfEnable: lambda perf, owner, op, ledger: perf.enable(owner, op.handle, ledger),
    schema.PerfDisable: lambda perf, owner, op, ledger: perf.disable(owner, op.handle, ledger),
    schema.SchedIn: lambda perf, owner, op, ledger: perf.sched_in(owner, op.cpu, ledger),
    schema.SchedOut: lambda perf, owner, op, ledger: perf.sched_out(owner, ledger),
    schema.Migrate: lambda perf, owner, op, ledger: perf.migrate(owner, op.cpu, ledger),
    schema.Tick: lambda perf, owner, op, ledger: perf.tick_done(owner, op.cpu, ledger),
}
assert set(CALLS) == set(schema.OP_NAME)
