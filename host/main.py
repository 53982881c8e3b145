"""The host-perf process: one per emulated host, serving every vCPU's perf calls."""
from __future__ import annotations

import collections
import logging
import sys

import zmq

from common import costs, msr, schema, child, throttle, transport
from common.costs import Ledger
from common.schema import MsgType
from common.stats import Samples
from common.topology import preset
from host.perf import HostPerf, PerfError

log = logging.getLogger("host")
REQUESTS = (MsgType.PERF_CALL, MsgType.SCHED, MsgType.ACCOUNT)


class HostServer:
    """Answers perf calls on the ROUTER every vCPU thread connects to."""

    def __init__(self, chan: transport.Channel, errors: transport.ErrorLog):
        self.chan = chan
        self.errors = errors
        self.perf: HostPerf | None = None
        self.links: set[bytes] = set()

    def send(self, body, peer: bytes) -> None:
        """Never block on one peer: a message its link cannot take is dropped, the link is
        forgotten, and its vCPU (if it is one) times out and fails loudly."""
        if not self.chan.send(body, peer, droppable=True):
            self.errors.record("send_dropped", type(body).__name__, peer.decode("latin1"))
            if peer in self.links:
                log.error("link %s does not read: dropping it", peer.decode("latin1"))
                self.links.discard(peer)

    def configure(self, cfg: dict) -> None:
        host = cfg["host"]
        self.topo = preset(host["preset"])
        self.policy = cfg["policy"]
        self.perf = HostPerf(self.topo, host["watchdog"], host["host_pinned"],
                             tuple(host["busy_pcpus"]), host["event_binding"], host["kernel"],
                             host["x2apic"], throttle.hz_of_tick(cfg["vm"]["timeslice_ms"]),
                             host["perf_max_sample_rate"])
        self.waiting: dict[int, list] = collections.defaultdict(list)   # pCPU run queues
        self.params = costs.resolve(cfg["costs"], self.topo)
        # per perf call kind: modeled ns of each call (mid values) and the counts they charged
        self.op_costs: dict[str, tuple[Samples, Ledger]] = collections.defaultdict(
            lambda: (Samples(), Ledger()))
        self.chan.seq = schema.SeqCounter()
        self.links = set()
        log.info("configured %s, host kernel %s, x2APIC %s, watchdog %s, %d host pinned events "
                 "per pCPU, perf throttles past %d overflows per tick", self.topo.describe(),
                 host["kernel"], host["x2apic"], "on" if host["watchdog"] else "off",
                 host["host_pinned"], self.perf.max_samples_per_tick)

    def handle(self) -> None:
        try:
            peer, msg = self.chan.recv(0)
        except schema.ProtocolError as exc:
            self.errors.record(exc.kind, exc.detail, exc.peer.decode(errors="replace"))
            self.send(schema.Error(exc.kind, exc.detail), exc.peer)
            return
        if msg.type == MsgType.HELLO and msg.body.role == "vcpu":
            log.info("vCPU link %s connected (pid %d)", msg.body.name, msg.body.pid)
            self.links.add(peer)
            self.send(schema.Welcome("host"), peer)
        elif msg.type in REQUESTS and peer not in self.links:
            self.errors.record("unknown_peer", f"{msg.type.value} before hello",
                               peer.decode("latin1"))
            self.send(schema.Error("unknown_peer", "say hello first", msg.body.id), peer)
        elif msg.type in REQUESTS and self.perf is not None:
            self.request(peer, msg.body)
        else:
            self.errors.record("unknown_type", msg.type.value, peer.decode(errors="replace"))
            self.send(schema.Error("unknown_type", msg.type.value, msg.seq), peer)

    def request(self, peer: bytes, req: schema.PerfCall | schema.Sched | schema.Account) -> None:
        """Count what the guest retired (the host PMI handler calls overflows back), then run
        the request, or queue it while its pCPU runs another task."""
        owner = peer.decode(errors="replace")
        perf = self.perf
        retired = req.retired
        bad = [k for k, v in retired.events.items()
               if k not in msr.EVENT_KINDS or type(v) is not int or v < 0]
        if bad:
            self.send(schema.Error("wrong_type", f"retired events {bad}", req.id), peer)
            return
        perf.advance_time(retired.now_ns)
        for ev in perf.account(owner, retired.events, retired.stretches):
            self.send(schema.Overflow(ev.handle, ev.context, ev.count), peer)
        ledger = Ledger()
        op = None if isinstance(req, schema.Account) else req.op
        cpu = op.cpu if isinstance(op, (schema.SchedIn, schema.Migrate)) else -1
        if isinstance(op, schema.Tick) and 0 <= op.cpu < self.topo.ncpus:
            self.tick(peer, req, ledger)
        elif 0 <= cpu < self.topo.ncpus and not perf.cpu_free_for(owner, cpu):
            if perf.task(owner).cpu != -1:
                perf.sched_out(owner, ledger)         # off the old pCPU while it waits
            log.debug("%s waits for pCPU %d, which runs %s", owner, cpu, perf.current[cpu])
            perf.stats["run_queue_waits"] += 1
            self.waiting[cpu].append((peer, req, ledger))
        else:
            self.complete(peer, req, ledger)
        self.wake_waiters()

    def tick(self, peer: bytes, req: schema.Sched, ledger: Ledger) -> None:
        """scheduler_tick on the task's pCPU: perf_event_task_tick, then the fair class's tick,
        which reschedules only when another task is runnable there (4.20 entity_tick calls
        check_preempt_tick only ``if (cfs_rq->nr_running > 1)``; 6.12 update_curr returns
        ``if (cfs_rq->nr_running == 1)``). A switch puts the task behind the waiting ones; its
        reply comes when it runs again (``schema.Ticked``, completed by HostPerf.tick_done)."""
        owner, cpu = peer.decode(errors="replace"), req.op.cpu
        self.perf.tick(cpu)
        if self.waiting[cpu] and self.perf.current.get(cpu) == owner:
            self.perf.sched_out(owner, ledger)
            self.perf.stats["run_queue_waits"] += 1
            log.debug("%s switched out at a tick for %s", owner,
                      self.waiting[cpu][0][0].decode(errors="replace"))
            self.waiting[cpu].append((peer, req, ledger))
        else:
            self.complete(peer, req, ledger)

    def wake_waiters(self) -> None:
        """Run the next waiting task on every pCPU that its current task left."""
        for cpu, queue in self.waiting.items():
            while queue and self.perf.cpu_free_for(queue[0][0].decode(), cpu):
                peer, req, ledger = queue.pop(0)
                self.complete(peer, req, ledger)

    def complete(self, peer: bytes, req, ledger: Ledger) -> None:
        """Run one request; push the oncpu changes it caused to the caller, then reply."""
        owner = peer.decode(errors="replace")
        perf = self.perf
        op = None if isinstance(req, schema.Account) else req.op
        name = schema.OP_NAME[type(op)] if op is not None else "account"
        ok, error, result = True, "", None
        if op is not None:
            try:
                result = perf.call(owner, op, ledger)
            except (PerfError, KeyError, TypeError, ValueError) as exc:
                ok, error = False, f"{name}: {exc}"
                self.errors.record("perf_refused", error, owner)
        for ev in perf.oncpu_changes(owner):
            if ev.error:
                log.info("event %d of %s in error state: no counter free on pCPU %d",
                         ev.handle, owner, perf.task(owner).cpu)
            self.send(schema.Oncpu(ev.handle, ev.oncpu, ev.error), peer)
        cost = ledger.total(self.params)
        perf.charge_cpu(owner, cost)
        samples, counts = self.op_costs[name]
        samples.add(cost)
        counts.update(ledger)
        self.send(schema.HostReply(req.id, ok, result, cost, dict(ledger), perf.budget(owner),
                                   perf.filtered_budget(owner), error), peer)

    def report(self) -> schema.HostReport:
        perf = self.perf
        return schema.HostReport(
            self.topo.name, self.topo.ncpus,
            perf_costs={op: schema.OpCost(samples.to_record(), dict(counts))
                        for op, (samples, counts) in sorted(self.op_costs.items())},
            pmc_refcount=perf.pmc_refcount, **perf.stats,
            pcpu_modeled_ns={str(c): ns for c, ns in sorted(perf.pcpu_clock.items())},
            unavailable=by_context(perf.unavailable),
            throttled_lost=by_context(perf.throttled_lost),
            protocol_errors=dict(self.errors.counts))


def by_context(lost: dict) -> dict:
    """task -> pmc context -> events, with the contexts as strings (msgpack map keys)."""
    return {task: {str(ctx): n for ctx, n in per.items()} for task, per in lost.items()}


def main(argv=None) -> int:
    args = child.arg_parser("host").parse_args(argv)
    svc = child.Process("host", args)
    chan = transport.Channel(transport.socket(svc.ctx, zmq.ROUTER))
    server = HostServer(chan, svc.errors)
    try:
        svc.security.server(chan.sock)
        endpoint = transport.bind(chan.sock, args.listen)
        svc.hello({"perf": endpoint})

        def on_control(msg: schema.Message) -> None:
            if msg.type == MsgType.CONFIGURE:
                server.configure(msg.body.config)
                svc.send(schema.Ready(msg.body.run, {"perf": endpoint}))
            elif msg.type == MsgType.FINISH:
                report = server.report()
                log.info("run %d summary (policy %s): host PMU reserved %d and released %d "
                         "times, static key enabled %d and disabled %d times, %d overflows "
                         "(%d to their owner)", msg.body.run, server.policy,
                         report.refcount_crossings["reserve"],
                         report.refcount_crossings["release"],
                         report.static_key["enable"], report.static_key["disable"],
                         report.overflows, report.overflows_to_owner)
                svc.send(schema.Report(msg.body.run, report))

        return svc.serve(on_control, chan.sock, server.handle)
    finally:
        chan.close()
        svc.close()


if __name__ == "__main__":
    sys.exit(main())
