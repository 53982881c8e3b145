"""One KVM vCPU thread, in this process on real sockets, driven by a guest program.

The server under test is ``kvm.vcpu.VcpuThread``: it serves exits on its own ipc endpoint and makes
its perf calls to the host perf server (``HostServerThread``, inproc). The test is the guest vCPU:
``guest.cpu.GuestCpu`` running a program of ``guest/programs``, its ground truth checking what it
sees.
"""
import os
import threading

import numpy as np
import pytest
import zmq

from common import schema, security, transport
from common.schema import MsgType
from common.topology import preset
from guest.cpu import GuestCpu
from guest import program
from guest.oracle import Oracle
from guest.workload import Workload
from kvm import policies
from kvm.vcpu import VcpuThread
from support import ROOT, HostServerThread, scenario

pytestmark = [pytest.mark.component, pytest.mark.timeout(60)]
PROGRAM = os.path.join(ROOT, "guest", "programs", "overflow_pmi.py")


@pytest.fixture
def vcpu_of(sock_dir):
    """``start(policy)`` -> a running vCPU thread of VM vm0 on pCPU 0 (all stopped after)."""
    ctx = zmq.Context()
    host = HostServerThread(ctx, "inproc://host")
    threads = []

    def start(policy: str) -> VcpuThread:
        cfg = dict(scenario({"host": {"preset": "small"}, "vm": {"real_affinity": False}}),
                   policy=policy, ghz=preset("small").ghz)
        thread = VcpuThread(ctx, "vm0", 0, 0, len(threads), policies.load(policy), cfg,
                            host.endpoint, f"ipc://{sock_dir}/kvm", preset("small"),
                            security.Security(None, "kvm-vm0", ctx))
        threads.append(thread)
        thread.start()
        assert thread.bound.wait(10) and not thread.failure, thread.failure
        return thread
    try:
        yield ctx, start
    finally:
        for t in threads:
            t.stop.set()
            t.join(10)
        host.close()
        ctx.term()


def guest_vcpu(ctx, endpoint: str) -> GuestCpu:
    chan = transport.Channel(transport.socket(ctx, zmq.DEALER, "guest-vcpu0"))
    chan.sock.connect(endpoint)
    chan.send(schema.Hello("guest", "vcpu0", os.getpid()))
    transport.wait_for(chan, MsgType.WELCOME, 10)
    workload = Workload("compute", np.random.default_rng(1), preset("small").ghz)
    return GuestCpu(chan, 0, 1, workload, Oracle(), 10_000, threading.Event())


@pytest.mark.parametrize("policy", policies.BUILTIN)
def test_a_guest_program_through_one_vcpu_thread(vcpu_of, policy):
    """overflow_pmi.py: passes on every policy but the RFC's, whose stale host period fires
    again while the guest counter has not wrapped (a spurious PMI, caught by the oracle)."""
    ctx, start = vcpu_of
    thread = start(policy)
    cpu = guest_vcpu(ctx, thread.endpoint)
    try:
        program.load_program(PROGRAM).main(cpu)
        cpu.oracle.finish()
        cpu._exit("done")
    finally:
        cpu.chan.close()
    thread.join(10)
    assert not thread.is_alive() and thread.failure is None
    report = thread.report()
    kinds = {v.kind for v in cpu.oracle.violations}
    if policy == "oncpu":
        assert "spurious_pmi" in kinds and cpu.pmis > 1
    else:
        assert all(c.passed for c in cpu.checks), cpu.checks
        assert kinds == set() and cpu.pmis == 1
    assert report.injected == cpu.pmis and report.gp_faults == 1
    assert report.exits["wrmsr"] == cpu.exits["wrmsr"]
    assert report.handle_event.modeled_ns.count >= report.overflows >= 1


def test_a_stranger_on_the_vcpu_endpoint_is_refused_and_the_guest_goes_on(vcpu_of):
    ctx, start = vcpu_of
    thread = start("deferred")
    cpu = guest_vcpu(ctx, thread.endpoint)
    stranger = transport.Channel(transport.socket(ctx, zmq.DEALER, "intruder"))
    try:
        stranger.sock.connect(thread.endpoint)
        stranger.send(schema.Exit("wrmsr", 0x38F, 0, {}, False))
        _, msg = stranger.recv(10)
        assert msg.type == MsgType.ERROR and msg.body.kind == "unknown_peer"
        assert cpu.cpuid(0xA)[0] & 0xFF == 2          # architectural PMU v2, served as before
        cpu._exit("done")
    finally:
        stranger.close()
        cpu.chan.close()
    thread.join(10)
    assert thread.report().protocol_errors == {"unknown_peer": 1}
