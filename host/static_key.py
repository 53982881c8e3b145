"""The ``perf_sched_events`` static key and ``perf_sched_count`` (kernel/events/core.c).

Same accounting in 4.20, 5.4 and 6.12. ``account_event`` of a task event: if
``atomic_inc_not_zero(&perf_sched_count)`` succeeds nothing else happens; on 0 -> 1, under
``perf_sched_mutex``, ``static_branch_enable(&perf_sched_events)`` and a grace period
(``synchronize_sched``/``synchronize_rcu``) before the count becomes 1. ``unaccount_event``:
``atomic_add_unless(&perf_sched_count, -1, 1)``; a would-be 1 -> 0 is left at 1 and
``schedule_delayed_work(&perf_sched_work, HZ)`` (a no-op while the work is pending) runs
``perf_sched_delayed`` a second later, which decrements and disables the key only if that
reaches 0. A release and create within the second therefore never repatch.

Enabling patches each jump-label site of the key (``perf_event_task_sched_in``/``_out``, each
inlined at its one caller in kernel/sched/core.c: two sites; the compiler could duplicate one,
unverified) with ``text_poke_bp``: three ``text_poke`` and three ``on_each_cpu(do_sync_core)`` per
site in 4.20 (alternative.c), one ``text_poke_bp_batch`` for all sites from 5.4 (three pokes per
site, three syncs per batch; 6.12 skips a sync only when no byte of that step changes, which a
jump<->nop patch always does). The delayed disable runs on a kworker: counted, not charged to the
caller.
"""
from __future__ import annotations

from common.costs import Ledger
from host.smp import Smp

PERF_SCHED_EVENTS_SITES = 2
TEXT_POKES_PER_SITE = 3
SYNCS_PER_PATCH = 3
DELAYED_WORK_NS = 1_000_000_000     # schedule_delayed_work(&perf_sched_work, HZ)


class PerfSchedEvents:
    def __init__(self, smp: Smp):
        self.smp = smp
        self.count = 0                  # perf_sched_count; the key is on while it is > 0
        self.work_at: int | None = None     # when the pending perf_sched_work runs
        self.stats = {"enable": 0, "disable": 0, "delayed_work": 0}

    def account(self, cpu: int, ledger: Ledger) -> None:
        """account_event of a task event, on ``cpu``."""
        ledger.charge("locked_rmw")                # atomic_inc_not_zero
        if self.count == 0:                        # the key is off: enable it under the mutex
            self._enable(cpu, ledger)
            ledger.charge("rcu_grace_period")
        self.count += 1

    def unaccount(self, now_ns: int) -> None:
        """unaccount_event of a task event."""
        if self.count > 1:
            self.count -= 1
        elif self.work_at is None:
            self.work_at = now_ns + DELAYED_WORK_NS
            self.stats["delayed_work"] += 1

    def advance(self, now_ns: int) -> None:
        """Run perf_sched_delayed if its second has passed."""
        if self.work_at is not None and now_ns >= self.work_at:
            self.work_at = None
            self.count -= 1
            if self.count == 0:
                self.stats["disable"] += 1

    @property
    def enabled(self) -> bool:
        return self.count > 0

    def _enable(self, cpu: int, ledger: Ledger) -> None:
        self.stats["enable"] += 1
        batches = 1 if self.smp.kernel.jump_label_batch else PERF_SCHED_EVENTS_SITES
        ledger.charge("text_poke", TEXT_POKES_PER_SITE * PERF_SCHED_EVENTS_SITES)
        for _ in range(batches * SYNCS_PER_PATCH):
            self.smp.on_each_cpu(cpu, lambda led: led.charge("sync_core"), ledger)
