"""The host scheduler's tick: a vCPU task leaves its pCPU only when another task waits for it."""
import logging

import pytest

from common import schema, transport
from common.costs import Ledger
from host.main import HostServer
from support import scenario

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]
A, B = b"vm0/vcpu0", b"vm0/vcpu1"


class Replies:
    """A channel that keeps what the server sends, by peer."""

    def __init__(self):
        self.sent: list[tuple[bytes, object]] = []

    def send(self, body, peer=b"", droppable=False):
        self.sent.append((peer, body))
        return True

    def take(self, peer: bytes) -> list:
        mine = [b for p, b in self.sent if p == peer and isinstance(b, schema.HostReply)]
        self.sent = [(p, b) for p, b in self.sent if p != peer]
        return mine


@pytest.fixture
def server():
    cfg = dict(scenario({"host": {"preset": "small"}}), policy="reuse")
    srv = HostServer(Replies(), transport.ErrorLog(logging.getLogger("test")))
    srv.configure(cfg)
    srv.links = {A, B}
    return srv


def ask(srv, peer, op, req_id=1):
    srv.request(peer, schema.Sched(req_id, op, schema.Retired({}, [], 0)))
    return [r.result for r in srv.chan.take(peer)]


def test_a_lone_task_is_not_switched_out_at_its_tick(server):
    assert ask(server, A, schema.SchedIn(0)) == [None]
    for i in range(5):
        assert ask(server, A, schema.Tick(0), i + 2) == [schema.Ticked(False)]
    assert server.perf.current[0] == "vm0/vcpu0" and server.perf.stats["run_queue_waits"] == 0


def test_two_tasks_on_one_pcpu_take_turns_at_the_ticks(server):
    ask(server, A, schema.SchedIn(0))
    assert ask(server, B, schema.SchedIn(0)) == []                 # B waits for pCPU 0
    assert ask(server, A, schema.Tick(0), 2) == []                 # A waits behind B ...
    assert [r.result for r in server.chan.take(B)] == [None]       # ... B runs
    assert server.perf.current[0] == "vm0/vcpu1"
    assert ask(server, B, schema.Tick(0), 3) == []                 # B out, A back in
    assert [r.result for r in server.chan.take(A)] == [schema.Ticked(True)]
    assert server.perf.current[0] == "vm0/vcpu0"


def test_a_tick_unthrottles_only_the_events_of_its_pcpu(server):
    perf = server.perf
    ask(server, A, schema.SchedIn(0))
    ask(server, B, schema.SchedIn(1))
    args = schema.PerfCreate("instructions", False, False, 100, 0, True)
    events = [perf.create(name, args, Ledger()) for name in ("vm0/vcpu0", "vm0/vcpu1")]
    for ev in events:                                  # as __perf_event_account_interrupt leaves it
        ev.throttled = True
        perf.throttled_count[ev.oncpu] += 1
    ask(server, A, schema.Tick(0), 2)
    assert [ev.throttled for ev in events] == [False, True]


def test_a_shortfall_that_throttling_explains_is_counter_throttled():
    """Events lost while throttled join the per-task losses the host explains: the counter's
    shortfall is counter_throttled, a known limit (not a failure); any other stays a violation."""
    from common import results
    guest = schema.GuestVcpuReport(
        0, "pmis", None, 1, 1, [], 0, 0, 0, {}, 0, [], None, 3,
        [schema.Violation("count_mismatch", 0, 0, "read 10, want 260", deficit=250),
         schema.Violation("missing_pmi", 0, 0, "overflow at 200 not delivered"),
         schema.Violation("count_mismatch", 0, 1, "read 1, want 2", deficit=1)])
    violations, deviations = results.classify([schema.GuestReport("vm0", [guest])], {},
                                              {"vm0/vcpu0": {"0": 250}})
    assert [v["kind"] for v in deviations] == ["counter_throttled", "counter_throttled"]
    assert [v["kind"] for v in violations] == ["count_mismatch"]
