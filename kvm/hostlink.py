"""A vCPU thread's link to the host: its perf API calls, the scheduling of its task, what the guest
retired, and the budget the host hands out.

Each request is one message and one HostReply; the overflow callbacks of the vCPU's events and the
changes of their ``oncpu`` arrive ahead of the reply of the request during which they happened.
"""
from __future__ import annotations

import collections
import threading

from common import schema, transport
from common.costs import Ledger
from common.schema import MsgType
from kvm.clock import VcpuClock
from kvm.pmu import KvmPmu, PerfCallRefused


class LinkBroken(Exception):
    """The link to the host lost, reordered or garbled a message: the run cannot be trusted."""


class HostLink:
    def __init__(self, chan: transport.Channel, name: str, ledger: Ledger, clock: VcpuClock,
                 stop: threading.Event):
        self.chan = chan
        self.name = name
        self.ledger = ledger
        self.clock = clock               # its now_ns goes to the host with each request
        self.stop = stop
        self.pmu: KvmPmu | None = None
        self.pending: collections.Counter = collections.Counter()   # retired, not yet sent
        self.stretches: list[schema.Stretch] = []
        self.filtered: list[schema.FilteredBudget] = []   # from the last reply
        self.budget: dict[str, int] = {}
        self.next_id = 1
        self.calls: collections.Counter = collections.Counter()    # perf API calls by record
        self.timeout_s = transport.DEFAULT_TIMEOUT_S

    def call(self, op: schema.PerfOp):
        """A perf API call; returns its result record (schema.RESULT_OF), or raises
        PerfCallRefused."""
        self.calls[type(op)] += 1
        result = self._request(schema.PerfCall(self._id(), op, self._retired()))
        if type(result) is not schema.RESULT_OF[type(op)]:
            raise LinkBroken(f"link to the host: {type(result).__name__} answers "
                             f"{type(op).__name__}")
        return result

    def sched(self, op: schema.SchedOp):
        """The host scheduler runs, stops or moves the vCPU task (a Tick answers Ticked)."""
        return self._request(schema.Sched(self._id(), op, self._retired()))

    def account(self) -> None:
        """The host counts what the guest retired (and calls back the overflows it finds)."""
        self._request(schema.Account(self._id(), self._retired()))

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def _retired(self) -> schema.Retired:
        retired = schema.Retired(dict(self.pending), self.stretches, self.clock.now_ns)
        self.pending.clear()
        self.stretches = []
        return retired

    def _request(self, req):
        self.chan.send(req)
        while True:
            try:
                _, msg = self.chan.recv(self.timeout_s, self.stop)
            except schema.ProtocolError as exc:     # only the host sends here: a broken link
                raise LinkBroken(f"link to the host: {exc}") from None
            except transport.PeerLost:
                raise LinkBroken(f"host did not answer {type(req).__name__} {req.id} in "
                                 f"{self.timeout_s:.0f} s") from None
            if msg.type == MsgType.OVERFLOW:
                self.pmu.perf_overflow(msg.body.context)
            elif msg.type == MsgType.ONCPU:
                self.pmu.event_moved(msg.body.handle, msg.body.oncpu)
            elif msg.type == MsgType.HOST_REPLY and msg.body.id == req.id:
                return self._take_reply(msg.body)
            else:
                raise LinkBroken(f"link to the host: {msg.type.value} while waiting for reply "
                                 f"{req.id}")

    def _take_reply(self, reply: schema.HostReply):
        for name, times in reply.ledger.items():
            self.ledger.charge(name, times)
        self.budget = reply.budget
        self.filtered = reply.filtered
        if not reply.ok:
            raise PerfCallRefused(reply.error)
        return reply.result

    def retired(self, events: dict, stretches: list[schema.Stretch]) -> bool:
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

    def perf_calls(self) -> dict[str, int]:
        """Perf API calls made, by name."""
        return {name: self.calls[cls] for name, cls in schema.PERF_API.items()}
