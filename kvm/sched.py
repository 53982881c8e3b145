"""The vCPU thread as a task of the host scheduler: the pCPU it runs on, its ticks, its moves.

The task leaves its pCPU only when something else wants it, as the host scheduler does it:
- the host timer tick (every ``--timeslice-ms``, 1000/HZ) makes the guest exit, and the host's
  tick (a Tick request) switches the task out only when another task waits for the pCPU (CFS
  does not switch out a lone runnable task: host/main.py HostServer.tick cites the code);
- host work (``--host-load``: tasks per second of the vCPU's time on its pCPU, seeded) preempts
  it for HOST_TASK_NS;
- a migration (kvm/migrate.py decides, a Migrate request carries it out) is a switch out on the
  old pCPU and in on the new one.
KVM sees a schedule-in through its preempt notifier: context_switch -> finish_task_switch ->
fire_sched_in_preempt_notifiers -> kvm_sched_in -> kvm_arch_sched_in (5.5-6.10; from 6.11
kvm_arch_vcpu_load behind vcpu->scheduled_out) -> the policy's ``sched_in`` (read in 4.20, 5.7 and
6.12 kernel/sched/core.c and virt/kvm/kvm_main.c; __schedule calls context_switch only ``if
(likely(prev != next))``). The first load of KVM_RUN is vcpu_load, not a schedule-in: no hook.
Every decision is taken at a preemption point between an exit and the next entry.
"""
from __future__ import annotations

import logging
import os
import threading

import numpy as np

from common import logsetup, schema, transport
from common.config import HOST_TASK_NS
from common.topology import Topology
from kvm.clock import VcpuClock
from kvm.hostlink import HostLink
from kvm.metrics import VcpuMetrics
from kvm.migrate import Migrator
from kvm.pmu import KvmPmu

log = logging.getLogger("kvm")
TURN_TIMEOUT_S = 60.0              # a turn on a pCPU may wait for another task's time slice


class VcpuTask:
    def __init__(self, index: int, pcpu: int, cfg: dict, topo: Topology, host: HostLink,
                 pmu: KvmPmu, policy, clock: VcpuClock, metrics: VcpuMetrics):
        self.index, self.pcpu = index, pcpu
        self.host, self.pmu, self.policy, self.clock, self.metrics = host, pmu, policy, clock, \
            metrics
        self.real_affinity = cfg["vm"]["real_affinity"]
        self.slice_ns = cfg["vm"]["timeslice_ms"] * 1_000_000
        self.next_tick = self.slice_ns           # modeled ns of the next host timer tick
        self.host_load = cfg["host"]["host_load"]
        self.load_rng = np.random.default_rng([cfg["run"]["seed"], index, 0x10AD])
        self.next_host_task = self._next_arrival(0)
        # kvm_arch_sched_in from 5.5, kvm_arch_vcpu_load from 6.11: the lazy release's request
        self.sched_in_hook = bool(policy.generation.sched_in_hook)
        self.migrator = Migrator(cfg["vm"]["migrate"], pcpu, index, cfg["run"]["seed"], topo,
                                 cfg["host"]["busy_pcpus"], cfg["vm"]["migrations"],
                                 self.slice_ns)
        self.task_binding = cfg["host"]["event_binding"] == "task"
        self.loaded = False
        self.affinity = schema.Affinity(0, pcpu)
        self.cores = sorted(os.sched_getaffinity(0))     # the process's, before any pinning

    def pin_thread(self, pcpu: int) -> None:
        """Pin this thread to a core of the machine running the emulator (pCPU modulo the cores
        available), where the OS allows it; the emulated pCPU is recorded either way."""
        self.affinity = schema.Affinity(threading.get_native_id(), pcpu)
        if not self.real_affinity:
            return
        try:
            core = self.cores[pcpu % len(self.cores)]
            os.sched_setaffinity(0, {core})
            self.affinity.cpus = sorted(os.sched_getaffinity(0))
        except (OSError, AttributeError) as exc:
            log.info("real affinity not applied: %s", exc)

    def vcpu_load(self, pcpu: int, migration: str = "") -> None:
        """The host scheduler runs the vCPU task on ``pcpu`` (waiting for its turn if another
        task holds it); then kvm_arch_vcpu_load sets vcpu->cpu."""
        old = self.pcpu
        self.host.timeout_s = TURN_TIMEOUT_S
        self.host.sched(schema.Migrate(pcpu) if migration else schema.SchedIn(pcpu))
        self.host.timeout_s = transport.DEFAULT_TIMEOUT_S
        self.pmu.cpu = self.pcpu = pcpu
        self.loaded = True
        if not migration:
            return
        self.sched_in()                          # switched in on the new pCPU
        self.metrics.migrations[migration] += 1
        logsetup.set_context(self.index, pcpu)
        self.pin_thread(pcpu)
        live = [p for p in self.pmu.pmcs() if p.perf_event is not None]
        if self.task_binding and any(p.oncpu not in (pcpu, -1) for p in live):
            self.metrics.oncpu_disagreements += 1
        log.info("migrated (%s) pCPU %d -> %d; events' oncpu %s", migration, old, pcpu,
                 {p.idx: p.oncpu for p in live})

    def preemption_point(self, exits: int, overflows_before: int) -> None:
        """Between an exit and the next entry: host work that arrived preempts the task, a tick
        that is due runs (and switches only for a waiting task), then move the
        task if the migration rule says so (some rules wait for an overflow since the exit's
        start: ``overflows_before`` is KVM's count of them then)."""
        if self.clock.now_ns >= self.next_host_task:
            self.host_work()
        if self.clock.now_ns >= self.next_tick:
            self.tick()
        overflowed = self.pmu.stats["overflows"] > overflows_before
        move = self.migrator.decide(self.pcpu, exits, self.clock.now_ns, overflowed)
        if move is not None and move[0] != self.pcpu:
            self.vcpu_load(*move)
            self.clock.sync()

    def tick(self) -> None:
        """The host timer tick: the task is switched out only if another task waits for the
        pCPU (the host answers when it runs again)."""
        if self.host.sched(schema.Tick(self.pcpu)).switched:
            self.switched_in()
        self.clock.sync()
        while self.next_tick <= self.clock.now_ns:
            self.next_tick += self.slice_ns

    def host_work(self) -> None:
        """The host tasks that have arrived preempt the vCPU task: it is switched out once, they
        run back to back for HOST_TASK_NS each (those arriving meanwhile too), it runs again."""
        self.host.sched(schema.SchedOut())
        tasks = 0
        while self.next_host_task <= self.clock.now_ns:
            tasks += 1
            self.clock.off_cpu(HOST_TASK_NS)
            self.next_host_task = self._next_arrival(self.next_host_task)
        self.host.sched(schema.SchedIn(self.pcpu))
        self.switched_in()
        log.info("preempted by %d host task(s) for %d us", tasks, tasks * HOST_TASK_NS // 1000)

    def switched_in(self) -> None:
        """Back on the pCPU after another task had it: a time slice given up, a schedule-in."""
        self.metrics.timeslices += 1
        self.sched_in()
        self.clock.sync()

    def sched_in(self) -> None:
        """kvm_sched_in: the release's sched-in hook, where it has one."""
        if self.sched_in_hook:
            self.policy.sched_in(self.pmu)

    def _next_arrival(self, last_ns: float) -> float:
        """When the host task after the one of ``last_ns`` arrives: a Poisson process of
        --host-load per second on the vCPU's clock (exponential gaps)."""
        if self.host_load <= 0:
            return float("inf")
        return last_ns + self.load_rng.exponential(1e9 / self.host_load)

    def cycles_to_slice_end(self) -> int:
        """Guest cycles until the next tick or host task (at least one): a bound of the entry's
        budget."""
        until = min(self.next_tick, self.next_host_task) - self.clock.now_ns
        return max(int(until * self.clock.ghz), 1)

    def request_migration(self, pcpu: int, next_overflow: bool) -> None:
        """A guest test program's hypercall: move now, or after the next overflow."""
        self.migrator.request(pcpu, "next-overflow" if next_overflow else "now")

    def put(self) -> None:
        """The guest is done: the task leaves its pCPU to the others."""
        self.host.sched(schema.SchedOut())
