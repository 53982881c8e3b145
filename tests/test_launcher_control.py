"""The launcher's control loop, in this process on its real control socket (ipc).

The server under test is the launcher's ``Launcher`` with every role external, so it starts no
process; the test plays the host, KVM and guest processes (and a stranger) on DEALER sockets.
"""
import os
import threading
import time

import pytest
import zmq

from common import schema, transport
from common.schema import MsgType
from support import launcher_module, scenario

pytestmark = [pytest.mark.component, pytest.mark.timeout(30)]
MEMBERS = ("host", "kvm-vm0", "guest-vm0")


class Peer:
    """A process of the run (or a stranger) on the launcher's control socket."""

    def __init__(self, ctx: zmq.Context, endpoint: str, name: str):
        self.name = name
        self.chan = transport.Channel(transport.socket(ctx, zmq.DEALER, name))
        self.chan.sock.connect(endpoint)

    def hello(self) -> None:
        self.chan.send(schema.Hello(self.name, self.name, os.getpid(), {}))

    def expect(self, wanted: MsgType):
        _, msg = self.chan.recv(5)
        assert msg.type == wanted, msg
        return msg.body

    def close(self) -> None:
        self.chan.close()


def beat(ctx: zmq.Context, endpoint: str, names, stop: threading.Event) -> None:
    """The heartbeat links of ``names``: a beat every 0.1 s until ``stop``."""
    links = [transport.Channel(transport.socket(ctx, zmq.DEALER, f"{n}.hb")) for n in names]
    try:
        for link in links:
            link.sock.connect(endpoint)
        while not stop.wait(0.1):
            for link in links:
                link.send(schema.Heartbeat(0))
    finally:
        for link in links:
            link.close()


@pytest.fixture
def run(tmp_path, capsys):
    """(the launcher, its members, a zmq context for more peers) after every member's hello."""
    cfg = scenario({"launch": {"external": ["host", "kvm", "guest"], "lost_after": 30.0}})
    launcher = launcher_module().Launcher(cfg, str(tmp_path))
    ctx = zmq.Context()
    members = {name: Peer(ctx, launcher.control_ep, name) for name in MEMBERS}
    try:
        for peer in members.values():
            peer.hello()
        launcher.start()
        for peer in members.values():
            assert peer.expect(MsgType.WELCOME).name == peer.name
        assert "waiting up to 600 s for host, kvm-vm0, guest-vm0" in capsys.readouterr().out
        yield launcher, members, ctx
    finally:
        if not launcher.ctx.closed:
            launcher.shutdown("test over", failed=False)
        for peer in members.values():
            peer.close()
        ctx.term()


def test_a_stranger_gets_a_typed_error_and_the_run_goes_on(run):
    launcher, members, ctx = run
    stranger = Peer(ctx, launcher.control_ep, "mallory")
    done = []
    waiting = threading.Thread(target=lambda: done.append(
        launcher.expect(MsgType.DONE, {"guest-vm0"}, 10)))
    waiting.start()                       # the launcher's loop, waiting for the guest
    try:
        stranger.hello()
        assert stranger.expect(MsgType.ERROR).kind == "unknown_peer"
        members["guest-vm0"].chan.send(schema.Done(0, "pmis"))
    finally:
        waiting.join(10)
        stranger.close()
    [(name, msg)] = done
    assert name == "guest-vm0" and msg.body.reason == "pmis"
    assert launcher.errors.counts == {"unknown_peer": 1}


def test_a_silent_process_is_named_while_the_others_beat(run):
    launcher, members, ctx = run
    launcher.lost_after = 1.0
    stop = threading.Event()
    beating = threading.Thread(target=beat, args=(ctx, launcher.control_ep,
                                                  ["host", "guest-vm0"], stop))
    beating.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(launcher_module().LaunchError, match="kvm-vm0 stopped answering: "
                           "no heartbeat") as lost:
            launcher.expect(MsgType.DONE, {"guest-vm0"}, 10)
    finally:
        stop.set()
        beating.join(5)
    assert lost.value.lost == ("kvm-vm0",) and "process still running" in str(lost.value)
    assert 1.0 <= time.monotonic() - t0 < 5


def test_a_process_that_reports_an_error_ends_the_wait_with_it(run):
    launcher, members, _ = run
    members["host"].chan.send(schema.Error("failed", "host: ValueError: no such preset"))
    with pytest.raises(launcher_module().LaunchError, match="host failed: host: ValueError"):
        launcher.expect(MsgType.READY, {"host"}, 5)


def test_shutdown_tells_every_external_process(run):
    launcher, members, _ = run
    assert launcher.shutdown("run complete", failed=False) == {}     # it started none
    for peer in members.values():
        body = peer.expect(MsgType.SHUTDOWN)
        assert body.reason == "run complete" and body.failed is False
