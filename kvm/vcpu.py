"""One vCPU thread of the KVM process: guest exits in, host requests out, VM entries back.

The thread owns two sockets: a DEALER to the host (kvm/hostlink.py) and a ROUTER its guest vCPU
connects to (exits in, injections and entries out). Its loop handles each exit and answers with
an entry; the parts it drives live beside it: the task's scheduling (kvm/sched.py), the NMIs
(kvm/nmi.py), the modeled clock (kvm/clock.py) and what is counted (kvm/metrics.py).
"""
from __future__ import annotations

import logging
import os
import threading

import zmq

from common import costs, logsetup, msr, schema, transport
from common.child import PROGRESS
from common.costs import Ledger
from common.schema import MsgType
from kvm.clock import VcpuClock
from kvm.hostlink import HostLink, LinkBroken
from kvm.metrics import VcpuMetrics
from kvm.nmi import VcpuNmi
from kvm.pmu import KVM_REQ_PMI, KVM_REQ_PMU, GuestFault, KvmPmu
from kvm.sched import VcpuTask

log = logging.getLogger("kvm")


class VcpuThread(threading.Thread):
    def __init__(self, ctx: zmq.Context, vm: str, index: int, pcpu: int, run: int,
                 policy, cfg: dict, host_ep: str, listen_base: str, topo, security):
        super().__init__(name=f"{vm}-vcpu{index}", daemon=True)
        self.ctx, self.vm, self.index = ctx, vm, index
        self.pcpu = pcpu                 # its home pCPU; VcpuTask.pcpu is where it runs now
        self.security = security
        self.guest_peer: bytes | None = None
        self.policy, self.cfg, self.topo, self.host_ep = policy, cfg, topo, host_ep
        self.listen = transport.vcpu_endpoint(listen_base, run, index)
        self.endpoint = ""
        self.bound = threading.Event()
        self.stop = threading.Event()
        self.failure: str | None = None
        self.params = costs.resolve(cfg["costs"], topo)
        self.max_modeled_ns = cfg["run"]["max_modeled_ms"] * 1_000_000
        self.ledger = Ledger()
        self.clock = VcpuClock(self.ledger, self.params, cfg["ghz"])
        self.metrics = VcpuMetrics(index, self.params)
        self.nmi = VcpuNmi(index, self.ledger, self.params)
        self.task: VcpuTask | None = None
        self.errors = transport.ErrorLog(log)

    @property
    def affinity(self) -> schema.Affinity:
        return self.task.affinity if self.task else schema.Affinity(0, self.pcpu)

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
            self.host = HostLink(host, f"{self.vm}/vcpu{self.index}", self.ledger, self.clock,
                                 self.stop)
            self.pmu = KvmPmu(self.host, self.policy, ledger=self.ledger)
            self.host.pmu = self.pmu
            self.task = VcpuTask(self.index, self.pcpu, self.cfg, self.topo, self.host, self.pmu,
                                 self.policy, self.clock, self.metrics)
            host.send(schema.Hello("vcpu", self.host.name, os.getpid()))
            transport.wait_for(host, MsgType.WELCOME, transport.DEFAULT_TIMEOUT_S)
            self.task.pin_thread(self.pcpu)
            self.bound.set()
            log.info("vCPU thread up (tid %d, real CPUs %s): guest endpoint %s, host %s, "
                     "policy %s", threading.get_native_id(), self.affinity.cpus or "any",
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
            if not self.task.loaded:
                self.task.vcpu_load(self.pcpu)
            PROGRESS.step(f"vCPU {self.index} serving a {msg.body.reason} exit")
            entry = self.handle_exit(msg.body)
            if msg.body.reason == "done":
                self.task.put()
                guest.send(entry, peer)
                log.info("guest vCPU done after %d exits", self.metrics.exits_total)
                return
            self.enter_guest(guest, peer, entry)

    # --- exits --------------------------------------------------------------------------------

    def handle_exit(self, ex: schema.Exit) -> schema.Entry:
        retired = {k: v for k, v in ex.retired.items()
                   if k in msr.EVENT_KINDS and type(v) is int and v > 0}
        self.clock.guest_ran(retired.get("cycles", 0))
        if ex.reason != "flush":               # the emulator's exit (guest/cpu.py): no VM exit
            self.ledger.charge("vmx_transition")
        self.nmi.on_exit(ex.in_nmi, self.clock.guest_ns)
        reason = ex.reason
        overflows = self.pmu.stats["overflows"]
        if ex.reason == "hypercall":
            self.task.request_migration(ex.index, bool(ex.value))
        spent = self.host.retired(retired, ex.stretches)
        if spent or self.host.must_count:
            self.clock.sync()
            self.host.account()                # the host PMI that interrupted the guest
        if ex.reason == "budget":              # a host counter overflowed, or the slice ended
            spent = spent or self.pmu.stats["overflows"] > overflows
            reason = "host_pmi" if spent else "host_timer"
        self.metrics.exit(reason)
        self.clock.sync()
        self.task.preemption_point(self.metrics.exits_total, overflows)
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
        if not gp:                             # kvm_skip_emulated_instruction (5.17+)
            self.pmu.trigger_event(ex.reason)
        stop = "max_modeled_ms" if self.clock.now_ns > self.max_modeled_ns else ""
        return schema.Entry(value, gp, {}, values, stop=stop)

    # --- entry ----------------------------------------------------------------------------------

    def enter_guest(self, guest: transport.Channel, peer: bytes, entry: schema.Entry) -> None:
        """vcpu_enter_guest: service KVM_REQ_PMU, then KVM_REQ_PMI, then inject and enter."""
        reqs = self.pmu.requests
        if KVM_REQ_PMU in reqs:
            reqs.discard(KVM_REQ_PMU)
            self.metrics.timed_handle_event(self.pmu, self.ledger, self.host)
            self.clock.sync()
        if KVM_REQ_PMI in reqs:
            reqs.discard(KVM_REQ_PMI)
            injection = self.pmu.deliver_pmi()
            if injection == ("nmi", 2):
                self.nmi.pending = True
                if self.pmu.gen.nmi_entry_retry:
                    self.ledger.charge("entry_retry")
                    self.metrics.entry_retries += 1
            elif injection is not None:
                guest.send(schema.Inject(*injection), peer)
                self.metrics.injected += 1
        injected_nmi = self.nmi.inject_now(self.metrics.exits_total)
        if injected_nmi:
            guest.send(schema.Inject("nmi", 2), peer)
            self.metrics.injected += 1
        entry.nmi_window = self.nmi.window
        self.clock.sync()
        if injected_nmi:
            self.nmi.injected(self.clock.guest_ns)
        entry.budget = self.host.guest_budget(self.task.cycles_to_slice_end())
        entry.filtered = self.host.filtered
        guest.send(entry, peer)

    # --- report -----------------------------------------------------------------------------------

    def report(self) -> schema.VcpuReport:
        return self.metrics.report(self.index, self.task.pcpu, self.failure, self.policy.name,
                                   self.pmu, self.host, self.affinity, self.nmi.report(),
                                   self.clock, dict(self.errors.counts))
