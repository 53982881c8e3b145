"""The host perf server, in this process on a real socket, serving KVM's own perf API client.

One real server (``host.main.HostServer``) runs in a thread; the test is the vCPU thread's side
(``kvm.hostlink.HostLink`` under a ``KvmPmu``), or a stranger. Over inproc, ipc and tcp.
"""
import os
import threading

import pytest
import zmq

from common import msr, schema, transport
from common.costs import Ledger
from common.schema import MsgType
from kvm import policies
from kvm.clock import VcpuClock
from kvm.hostlink import HostLink
from kvm.pmu import KVM_REQ_PMI, KvmPmu, PerfCallRefused
from support import EN_INSTR_INT, HostServerThread, program_counter0

pytestmark = [pytest.mark.component, pytest.mark.timeout(30)]


@pytest.fixture(params=["inproc", "ipc", "tcp"])
def host(request, sock_dir):
    """(zmq context, the running host server); everything is closed afterwards."""
    ctx = zmq.Context()
    endpoint = {"inproc": "inproc://host", "ipc": f"ipc://{sock_dir}/host",
                "tcp": "tcp://127.0.0.1:0"}[request.param]
    served = HostServerThread(ctx, endpoint)
    try:
        yield ctx, served
    finally:
        served.close()
        ctx.term()


class Vcpu:
    """KVM's side of one vCPU task: its perf API client over a DEALER, and its PMU."""

    def __init__(self, ctx: zmq.Context, endpoint: str, name: str = "vm0/vcpu0",
                 policy: str = "always", hello: bool = True):
        self.chan = transport.Channel(transport.socket(ctx, zmq.DEALER, name))
        self.chan.sock.connect(endpoint)
        self.ledger = Ledger()
        self.link = HostLink(self.chan, name, self.ledger, VcpuClock(self.ledger, {}, 3.0),
                             threading.Event())
        self.link.timeout_s = 5.0
        self.pmu = KvmPmu(self.link, policies.load(policy), ledger=self.ledger)
        self.link.pmu = self.pmu
        if hello:
            self.chan.send(schema.Hello("vcpu", name, os.getpid()))
            transport.wait_for(self.chan, MsgType.WELCOME, 5)

    def load(self, pcpu: int) -> None:
        """vcpu_load: the host runs the task on ``pcpu``, then KVM sets vcpu->cpu."""
        self.link.sched(schema.SchedIn(pcpu))
        self.pmu.cpu = pcpu

    def close(self) -> None:
        self.chan.close()


def test_a_counter_is_programmed_overflows_and_is_reprogrammed_over_the_socket(host):
    ctx, served = host
    vcpu = Vcpu(ctx, served.endpoint)
    try:
        vcpu.load(2)
        program_counter0(vcpu.pmu, 1000)
        pmc = vcpu.pmu.gp[0]
        assert pmc.perf_event is not None and pmc.oncpu == 2     # from create's result
        assert vcpu.link.budget == {"instructions": 1000}
        assert not vcpu.link.retired({"instructions": 999}, [])
        assert vcpu.link.retired({"instructions": 1}, [])        # the budget is spent
        vcpu.link.account()               # the overflow callback arrives ahead of the reply
        assert vcpu.pmu.global_status == 1 and KVM_REQ_PMI in vcpu.pmu.requests
        vcpu.pmu.handle_event()           # always: release and create, over the socket
        assert vcpu.link.perf_calls()["create"] == 2 and vcpu.link.perf_calls()["release"] == 1
        assert vcpu.pmu.gp[0].oncpu == 2 and vcpu.pmu.rdpmc(0) == 0
        # the host's own cost ledgers came back with the replies
        assert vcpu.ledger["perf_event_alloc"] == 2 and vcpu.ledger["perf_event_free"] == 1
        report = served.server.report()
        assert report.overflows == 1 and report.perf_costs["create"].modeled_ns.count == 2
    finally:
        vcpu.close()


def test_calls_before_hello_and_on_another_vcpus_event_are_refused(host):
    ctx, served = host
    owner = Vcpu(ctx, served.endpoint, "vm0/vcpu0")
    thief = Vcpu(ctx, served.endpoint, "vm0/vcpu1")
    stranger = Vcpu(ctx, served.endpoint, "vm9/vcpu9", hello=False)
    try:
        owner.load(0)
        owner.pmu.set_msr(msr.MSR_P6_EVNTSEL0, EN_INSTR_INT)
        handle = owner.pmu.gp[0].perf_event
        thief.load(1)
        with pytest.raises(PerfCallRefused, match="release"):
            thief.link.call(schema.PerfRelease(handle))
        stranger.chan.send(schema.PerfCall(1, schema.PerfRelease(handle),
                                           schema.Retired({}, [], 0)))
        _, msg = stranger.chan.recv(5)
        assert msg.type == MsgType.ERROR and msg.body.kind == "unknown_peer"
        assert served.errors.counts == {"perf_refused": 1, "unknown_peer": 1}
        assert owner.link.call(schema.PerfRead(handle)).count == 0   # still the owner's
    finally:
        for v in (owner, thief, stranger):
            v.close()


def test_a_garbled_frame_gets_a_typed_error_and_the_server_goes_on(host):
    ctx, served = host
    vcpu = Vcpu(ctx, served.endpoint)
    try:
        vcpu.chan.sock.send(b"\xc1 not msgpack")
        _, msg = vcpu.chan.recv(5)
        assert msg.type == MsgType.ERROR and msg.body.kind == "not_msgpack"
        vcpu.load(0)                      # the link still works
        assert served.errors.counts == {"not_msgpack": 1}
    finally:
        vcpu.close()
