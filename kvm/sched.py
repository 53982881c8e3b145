"""The vCPU thread as a task of the host scheduler: the pCPU it runs on, its time slices, its moves.

KVM sees the task's scheduling through two hooks: kvm_arch_vcpu_load when the task runs on a pCPU
(it sets vcpu->cpu) and kvm_arch_sched_in when a preempted task runs again (the policy's
``sched_in``: from 5.5 a request to release unused events). Time slices end, and moves happen, at
a preemption point between an exit and the next entry; kvm/migrate.py decides the moves, the host
scheduler carries them out (a Migrate request) and may make the task wait for its pCPU.
"""
from __future__ import annotations

import logging
import os
import threading

from common import logsetup, schema, transport
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
        self.next_tick = self.slice_ns           # modeled ns at which the time slice ends
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
        self.metrics.migrations[migration] += 1
        logsetup.set_context(self.index, pcpu)
        self.pin_thread(pcpu)
        live = [p for p in self.pmu.pmcs() if p.perf_event is not None]
        if self.task_binding and any(p.oncpu not in (pcpu, -1) for p in live):
            self.metrics.oncpu_disagreements += 1
        log.info("migrated (%s) pCPU %d -> %d; events' oncpu %s", migration, old, pcpu,
                 {p.idx: p.oncpu for p in live})

    def preemption_point(self, exits: int, overflows_before: int) -> None:
        """Between an exit and the next entry: end the time slice if it is over, then move the
        task if the migration rule says so (some rules wait for an overflow since the exit's
        start: ``overflows_before`` is KVM's count of them then)."""
        if self.clock.now_ns >= self.next_tick:
            self.preempt()
        overflowed = self.pmu.stats["overflows"] > overflows_before
        move = self.migrator.decide(self.pcpu, exits, self.clock.now_ns, overflowed)
        if move is not None and move[0] != self.pcpu:
            self.vcpu_load(*move)
            self.clock.sync()

    def preempt(self) -> None:
        """The time slice is over: the host schedules the vCPU task out and back in on its pCPU,
        and KVM's sched-in hook runs."""
        self.host.sched(schema.SchedOut())
        self.host.sched(schema.SchedIn(self.pcpu))
        self.policy.sched_in(self.pmu)
        self.metrics.timeslices += 1
        self.clock.sync()
        while self.next_tick <= self.clock.now_ns:
            self.next_tick += self.slice_ns

    def cycles_to_slice_end(self) -> int:
        """Guest cycles until the time slice ends (at least one): a bound of the entry's budget."""
        return max(int((self.next_tick - self.clock.now_ns) * self.clock.ghz), 1)

    def request_migration(self, pcpu: int, next_overflow: bool) -> None:
        """A guest test program's hypercall: move now, or after the next overflow."""
        self.migrator.request(pcpu, "next-overflow" if next_overflow else "now")

    def put(self) -> None:
        """The guest is done: the task leaves its pCPU to the others."""
        self.host.sched(schema.SchedOut())
