"""One vCPU thread of the KVM process: guest exits in, host perf calls out, VM entries back.

The thread owns two sockets: a DEALER to the host (its perf calls, and the overflow callbacks of its
events, which the host sends ahead of the reply of the call during which they happened) and a ROUTER
its guest vCPU connects to (exits in, injections and entries out).
"""
from __future__ import annotations

import collections
import logging
import os
import threading
import time

import zmq

from common import costs, faults, logsetup, msr, schema, transport
from common.costs import Ledger
from common.stats import Samples
from common.schema import MsgType
from kvm.migrate import Migrator
from kvm.pmu import KVM_REQ_PMI, KVM_REQ_PMU, GuestFault, KvmPmu, PerfCallRefused

log = logging.getLogger("kvm")

PERF_API_OPS = ("create", "release", "read", "pause", "period", "enable", "disable")


class LinkBroken(Exception):
    """The link to the host lost, reordered or garbled a message: the run cannot be trusted."""


class HostLink:
    """The vCPU's perf API over its link to the host, and the budget the host hands out."""

    def __init__(self, chan: transport.Channel, name: str, ledger: Ledger,
                 stop: threading.Event):
        self.chan = chan
        self.name = name
        self.ledger = ledger
        self.stop = stop
        self.pmu: KvmPmu | None = None
        self.pending: collections.Counter = collections.Counter()   # retired, not yet sent
        self.stretches: list = []
        self.filtered: list = []      # filtered events' budget, from the last reply
        self.budget: dict[str, int] = {}
        self.next_id = 1
        self.now_ns = 0                  # the vCPU's modeled clock, passed to the host
        self.calls: collections.Counter = collections.Counter()
        self.timeout_s = transport.DEFAULT_TIMEOUT_S

    def call(self, op: str, **args) -> dict:
        call_id = self.next_id
        self.next_id += 1
        self.calls[op] += 1
        self.chan.send(schema.PerfCall(call_id, op, args, dict(self.pending), self.now_ns,
                                       self.stretches))
        self.pending.clear()
        self.stretches = []
        while True:
            try:
                _, msg = self.chan.recv(self.timeout_s, self.stop)
            except schema.ProtocolError as exc:     # only the host sends here: a broken link
                raise LinkBroken(f"link to the host: {exc}") from None
            except transport.PeerLost:
                raise LinkBroken(f"host did not answer {op} in {self.timeout_s:.0f} s") from None
            if msg.type == MsgType.OVERFLOW:
                self.pmu.perf_overflow(msg.body.context)
                continue
            if msg.type == MsgType.ONCPU:
                self.pmu.event_moved(msg.body.handle, msg.body.oncpu)
                continue
            if msg.type == MsgType.PERF_REPLY and msg.body.id == call_id:
                return self._take_reply(msg.body)
            raise LinkBroken(f"link to the host: {msg.type.value} while waiting for reply "
                             f"{call_id}")

    def _take_reply(self, reply: schema.PerfReply) -> dict:
        for name, times in reply.ledger.items():
            self.ledger.charge(name, times)
        self.budget = reply.budget
        self.filtered = reply.filtered
        for pmc in self.pmu.pmcs():
            if pmc.perf_event is not None:
                pmc.oncpu = reply.oncpu.get(str(pmc.perf_event), -1)
        if not reply.ok:
            raise PerfCallRefused(reply.error)
        return reply.result

    def retired(self, events: dict, stretches: list) -> bool:
        """Take what the guest retired; True when that spent a budget (a hardware overflow)."""
        self.pending.update(events)
        self.stretches += stretches
        return any(self.pending[k] >= left for k, left in self.budget.items())

    @property
    def must_count(self) -> bool:
        """Filtered events count cycles only the host can judge: they see every exit."""
        return bool(self.filtered and self.stretches)

    def guest_budget(self, cycles_to_tick: int) -> dict:
        """What the guest may retire before a host counter overflows or the time slice ends."""
        out = {k: max(left - self.pending[k], 0) for k, left in self.budget.items()}
        out["cycles"] = min(out.get("cycles", cycles_to_tick), cycles_to_tick)
        return out


class VcpuThread(threading.Thread):
    def __init__(self, ctx: zmq.Context, vm: str, index: int, pcpu: int, run: int,
                 policy, cfg: dict, host_ep: str, listen_base: str, topo, security):
        super().__init__(name=f"{vm}-vcpu{index}", daemon=True)
        self.ctx, self.vm, self.index, self.pcpu = ctx, vm, index, pcpu
        self.security = security
        self.guest_peer: bytes | None = None
        self.policy, self.cfg, self.host_ep = policy, cfg, host_ep
        self.listen = transport.vcpu_endpoint(listen_base, run, index)
        self.endpoint = ""
        self.bound = threading.Event()
        self.stop = threading.Event()
        self.failure: str | None = None
        self.params = costs.resolve(cfg["costs"])
        self.ghz = cfg["ghz"]
        self.slice_ns = cfg["vm"]["timeslice_ms"] * 1_000_000
        self.next_tick = self.slice_ns
        self.nmi_started: tuple[int, int] | None = None   # (wall ns, modeled ns) at injection
        self.nmi_last: tuple[int, int] | None = None
        self.nmi_measured = Samples(index)
        self.nmi_modeled = Samples(index)
        self.stats = collections.Counter()
        self.migrations: collections.Counter = collections.Counter()
        self.migrator = Migrator(cfg["vm"]["migrate"], pcpu, index, cfg["run"]["seed"], topo,
                                 cfg["host"]["busy_pcpus"], cfg["vm"]["migrations"],
                                 self.slice_ns)
        self.task_binding = cfg["host"]["event_binding"] == "task"
        self.loaded = False
        self.max_modeled_ns = cfg["run"]["max_modeled_ms"] * 1_000_000
        self.affinity: dict = {}
        self.cores = sorted(os.sched_getaffinity(0))     # the process's, before any pinning
        self.ledger = Ledger()
        self.guest_cycles = 0
        self.guest_ns = 0
        self.nmi_pending = False
        self.exits: collections.Counter = collections.Counter()
        self.he_measured = Samples(index)
        self.he_modeled = Samples(index)
        self.he_ledger = Ledger()
        self.injected = 0
        self.nmi_blocked = False
        self.nmi_late = False
        self.errors = transport.ErrorLog(log)

    # --- thread body ------------------------------------------------------------------------------

    def run(self) -> None:
        logsetup.set_context(self.index, self.pcpu)
        host = guest = None
        try:
            host = transport.Channel(transport.socket(self.ctx, zmq.DEALER,
                                                      f"{self.vm}/vcpu{self.index}"))
            self.security.client(host.sock, "host")
            host.sock.connect(self.host_ep)
            guest = transport.Channel(transport.socket(self.ctx, zmq.ROUTER))
            self.security.server(guest.sock)
            self.endpoint = transport.bind(guest.sock, self.listen)
            self.host = HostLink(host, f"{self.vm}/vcpu{self.index}", self.ledger, self.stop)
            self.pmu = KvmPmu(self.host, self.policy, ledger=self.ledger)
            self.host.pmu = self.pmu
            host.send(schema.Hello("vcpu", self.host.name, os.getpid()))
            transport.wait_for(host, MsgType.WELCOME, transport.DEFAULT_TIMEOUT_S)
            self.pin_thread(self.pcpu)
            self.bound.set()
            log.info("vCPU thread up (tid %d, real CPUs %s): guest endpoint %s, host %s, "
                     "policy %s", threading.get_native_id(), self.affinity.get("cpus", "any"),
                     self.endpoint, self.host_ep, self.policy.name)
            self.serve(guest)
        except transport.Stopped:
            log.info("vCPU thread stopped")
        except LinkBroken as exc:
            self.failure = str(exc)
            log.error("vCPU thread failed: %s", exc)
        except Exception as exc:  # the thread's failure is reported by the process
            self.failure = f"{type(exc).__name__}: {exc}"
            log.exception("vCPU thread failed")
        finally:
            self.bound.set()
            for chan in (host, guest):
                if chan is not None:
                    chan.close()

    def pin_thread(self, pcpu: int) -> None:
        """Pin this thread to a core of the machine running the emulator (pCPU modulo the cores
        available), where the OS allows it; the emulated pCPU is recorded either way."""
        self.affinity = {"tid": threading.get_native_id(), "pcpu": pcpu, "cpus": None}
        if not self.cfg["vm"]["real_affinity"]:
            return
        try:
            core = self.cores[pcpu % len(self.cores)]
            os.sched_setaffinity(0, {core})
            self.affinity["cpus"] = sorted(os.sched_getaffinity(0))
        except (OSError, AttributeError) as exc:
            log.info("real affinity not applied: %s", exc)

    def vcpu_load(self, pcpu: int, migration: str = "") -> None:
        """The host scheduler runs the vCPU task on ``pcpu`` (waiting for its turn if another
        task holds it); then kvm_arch_vcpu_load sets vcpu->cpu."""
        old = self.pcpu
        self.host.timeout_s = 60.0                  # a turn may wait for another task's slice
        self.host.call("migrate" if migration else "sched_in", cpu=pcpu)
        self.host.timeout_s = transport.DEFAULT_TIMEOUT_S
        self.pmu.cpu = self.pcpu = pcpu
        self.loaded = True
        if not migration:
            return
        self.migrations[migration] += 1
        logsetup.set_context(self.index, pcpu)
        self.pin_thread(pcpu)
        bad = [p.idx for p in self.pmu.pmcs() if p.perf_event is not None
               and self.task_binding and p.oncpu not in (pcpu, -1)]
        if bad:
            self.stats["oncpu_disagreements"] += 1
        log.info("migrated (%s) pCPU %d -> %d; events' oncpu %s", migration, old, pcpu,
                 {p.idx: p.oncpu for p in self.pmu.pmcs() if p.perf_event is not None})

    def serve(self, guest: transport.Channel) -> None:
        while not self.stop.is_set():
            try:
                peer, msg = guest.recv(0.5)
            except transport.PeerLost:
                continue
            except schema.ProtocolError as exc:
                self.errors.record(exc.kind, exc.detail, "guest")
                guest.send(schema.Error(exc.kind, exc.detail), exc.peer, droppable=True)
                continue
            if self.guest_peer is None and msg.type == MsgType.HELLO:
                self.guest_peer = peer                # the one guest vCPU of this thread
                guest.send(schema.Welcome(self.host.name), peer)
                continue
            if peer != self.guest_peer:
                self.errors.record("unknown_peer", f"{msg.type.value} from a stranger",
                                   peer.decode("latin1"))
                guest.send(schema.Error("unknown_peer", "this vCPU has its guest", msg.seq), peer,
                           droppable=True)
                continue
            if msg.type != MsgType.EXIT:
                self.errors.record("unknown_type", msg.type.value, "guest")
                guest.send(schema.Error("unknown_type", msg.type.value, msg.seq), peer,
                           droppable=True)
                continue
            if not self.loaded:
                self.vcpu_load(self.pcpu)
            entry = self.handle_exit(msg.body)
            if msg.body.reason == "done":
                self.host.call("sched_out")           # the task leaves its pCPU to the others
                guest.send(entry, peer)
                log.info("guest vCPU done after %d exits", sum(self.exits.values()))
                return
            self.enter_guest(guest, peer, entry)

    # --- exits --------------------------------------------------------------------------------

    def handle_exit(self, ex: schema.Exit) -> schema.Entry:
        retired = {k: v for k, v in ex.retired.items()
                   if k in msr.EVENT_KINDS and type(v) is int and v > 0}
        self.guest_cycles += retired.get("cycles", 0)   # converted whole: no ns lost per exit
        self.guest_ns = int(self.guest_cycles / self.ghz)
        if ex.reason != "flush":               # the emulator's exit (guest/cpu.py): no VM exit
            self.ledger.charge("vmx_transition")
        self.nmi_handler_progress(ex.in_nmi)
        self.nmi_blocked = ex.in_nmi
        reason = ex.reason
        overflows = self.pmu.stats["overflows"]
        if ex.reason == "hypercall":
            self.migrator.request(ex.index, "next-overflow" if ex.value else "now")
        spent = self.host.retired(retired, ex.stretches)
        if spent or self.host.must_count:
            self.sync_clock()
            self.host.call("account")          # the host PMI that interrupted the guest
        if ex.reason == "budget":              # a host counter overflowed, or the slice ended
            spent = spent or self.pmu.stats["overflows"] > overflows
            reason = "host_pmi" if spent else "host_timer"
        self.exits[reason] += 1
        self.sync_clock()
        if self.host.now_ns >= self.next_tick:
            self.preempt()
        move = self.migrator.decide(self.pcpu, sum(self.exits.values()), self.host.now_ns,
                                    self.pmu.stats["overflows"] > overflows)
        if move is not None and move[0] != self.pcpu:
            self.vcpu_load(move[0], move[1])
            self.sync_clock()
        value, gp, values = 0, False, []
        try:
            if ex.reason == "rdmsr":
                value = self.pmu.get_msr(ex.index)
            elif ex.reason == "wrmsr":
                self.pmu.set_msr(ex.index, ex.value)
            elif ex.reason == "rdpmc":
                value = self.pmu.rdpmc(ex.index)
            elif ex.reason == "cpuid":
                values = self.pmu.cpuid(ex.index, ex.value)
        except GuestFault as fault:
            gp = True
            self.pmu.stats["gp_faults"] += 1
            log.info("#GP injected: %s", fault)
        stop = "max_modeled_ms" if self.host.now_ns > self.max_modeled_ns else ""
        return schema.Entry(value, gp, {}, values, stop=stop)

    def sync_clock(self) -> None:
        self.host.now_ns = self.guest_ns + self.ledger.total(self.params)

    def preempt(self) -> None:
        """The time slice is over: at this preemption point the host schedules the vCPU task
        out and back in on its pCPU, and KVM's sched-in hook runs."""
        self.host.call("sched_out")
        self.host.call("sched_in", cpu=self.pcpu)
        self.policy.sched_in(self.pmu)
        self.stats["timeslices"] += 1
        self.sync_clock()
        while self.next_tick <= self.host.now_ns:
            self.next_tick += self.slice_ns

    def nmi_handler_progress(self, in_nmi: bool) -> None:
        """Time the guest's NMI handler from the PMI's injection to its last exit."""
        if self.nmi_started is None:
            return
        if in_nmi:
            self.nmi_last = (time.perf_counter_ns(), self.host.now_ns)
            return
        end = self.nmi_last or self.nmi_started
        self.nmi_measured.add(end[0] - self.nmi_started[0])
        self.nmi_modeled.add(end[1] - self.nmi_started[1])
        self.nmi_started = self.nmi_last = None

    # --- entry ----------------------------------------------------------------------------------

    def enter_guest(self, guest: transport.Channel, peer: bytes, entry: schema.Entry) -> None:
        """vcpu_enter_guest: service KVM_REQ_PMU, then KVM_REQ_PMI, then inject and enter."""
        reqs = self.pmu.requests
        if KVM_REQ_PMU in reqs:
            reqs.discard(KVM_REQ_PMU)
            self.timed_handle_event()
        if KVM_REQ_PMI in reqs:
            reqs.discard(KVM_REQ_PMI)
            injection = self.pmu.deliver_pmi()
            if injection == ("nmi", 2):
                self.nmi_pending = True
                if self.policy.nmi_entry_retry:
                    self.ledger.charge("entry_retry")
                    self.stats["entry_retries"] += 1
            elif injection is not None:
                guest.send(schema.Inject(*injection), peer)
                self.injected += 1
        if faults.active("kvm_drop_pmi"):
            self.nmi_pending = False
        if faults.active("kvm_late_pmi") and self.nmi_pending and not self.nmi_late:
            self.nmi_late = True                   # hold it for one entry
        elif faults.active("kvm_spurious_pmi") and sum(self.exits.values()) % 40 == 0:
            self.nmi_pending = True
        else:
            self.nmi_late = False
        injected_nmi = self.nmi_pending and not self.nmi_blocked and not self.nmi_late
        if injected_nmi:
            self.nmi_pending = False
            guest.send(schema.Inject("nmi", 2), peer)
            self.injected += 1
        entry.nmi_window = self.nmi_pending and self.nmi_blocked
        self.sync_clock()
        if injected_nmi:
            self.nmi_started = (time.perf_counter_ns(), self.host.now_ns)
        ticks = int((self.next_tick - self.host.now_ns) * self.ghz)
        entry.budget = self.host.guest_budget(max(ticks, 1))
        entry.filtered = self.host.filtered
        guest.send(entry, peer)

    def timed_handle_event(self) -> None:
        before = Ledger(self.ledger)
        t0 = time.perf_counter_ns()
        self.ledger.charge("clock_read")       # the timed window holds one clock read
        self.pmu.handle_event()
        self.he_measured.add(time.perf_counter_ns() - t0)
        spent = Ledger(self.ledger)
        spent.subtract(before)
        spent = Ledger({k: v for k, v in spent.items() if v})
        self.he_ledger.update(spent)
        self.he_modeled.add(spent.total(self.params))
        self.sync_clock()

    # --- report -----------------------------------------------------------------------------------

    def report(self) -> dict:
        total_ns = self.guest_ns + self.ledger.total(self.params)
        return {
            "vcpu": self.index, "pcpu": self.pcpu, "failure": self.failure,
            "handle_event": {"measured_ns": self.he_measured.to_dict(),
                             "modeled_ns": self.he_modeled.to_dict(),
                             "by_reason": dict(self.pmu.stats["handle_event"]),
                             "modeled_ns_by_param": {k: v * self.params[k]
                                                     for k, v in self.he_ledger.items()}},
            "reprogram_counter": dict(self.pmu.stats["reprogram_counter"]),
            "perf_calls": {op: self.host.calls[op] for op in PERF_API_OPS},
            "overflows": self.pmu.stats["overflows"],
            "overflows_ignored": self.pmu.stats["overflows_ignored"],
            "injected": self.injected,
            "policy": self.policy.name,
            "timeslices": self.stats["timeslices"],
            "migrations": dict(self.migrations),
            "oncpu_disagreements": self.stats["oncpu_disagreements"],
            "affinity": self.affinity,
            "entry_retries": self.stats["entry_retries"],
            "nmi_handler": {"measured_ns": self.nmi_measured.to_dict(),
                            "modeled_ns": self.nmi_modeled.to_dict()},
            "exits": dict(self.exits),
            "gp_faults": self.pmu.stats["gp_faults"],
            "modeled_total_ns": total_ns, "modeled_guest_ns": self.guest_ns,
            "protocol_errors": dict(self.errors.counts),
        }
