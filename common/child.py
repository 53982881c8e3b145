"""The control side of every process: hello to the launcher, its commands, heartbeats, exit.

A process connects a DEALER to the launcher's control ROUTER, says hello with its role and
endpoints, and then serves CONFIGURE / START / FINISH / SHUTDOWN until told to stop, its launcher
is gone, or a signal arrives. Signal handlers only set a flag.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
import time

import zmq

from common import faults, logsetup, schema, security, transport
from common.schema import MsgType

HEARTBEAT_S = 0.5
EXIT_PEER_LOST = 5


def arg_parser(role: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=f"vpmu-{role}",
                                 description=f"vpmu-emu {role} process (started by the launcher, "
                                 "or by hand on another machine)")
    ap.add_argument("--control", required=True, help="the launcher's control endpoint")
    ap.add_argument("--listen", required=role != "guest",
                    help="endpoint (or, for KVM, the base of the vCPU endpoints) this process binds")
    ap.add_argument("--run-dir", required=True, help="folder for this process's log file")
    ap.add_argument("--name", default=role, help="name in logs and to the launcher")
    ap.add_argument("--log-level", default="INFO")
    ap.add_argument("--exit-with-parent", action="store_true",
                    help="exit when the process that started this one is gone")
    ap.add_argument("--keys", help="CurveZMQ keys of the run (tcp); without it sockets are plain")
    ap.add_argument("--insecure", action="store_true",
                    help="tcp without CurveZMQ, on purpose (--insecure-tcp of the launcher)")
    ap.add_argument("--lost-after", type=float, default=2.0,
                    help="seconds without a heartbeat after which the launcher is declared lost")
    return ap


class Progress:
    """What this process has done, for its heartbeats: a count of steps (each exit a vCPU
    thread serves or makes) that only grows, the last step, and (the guest) the PMIs its handler
    handled, for the launcher's progress display. The vCPU threads step it without a lock: the
    launcher needs to see the counts move, not an exact total."""

    def __init__(self):
        self.count = 0
        self.doing = ""
        self.run_began: int | None = None   # ``count`` when this run (policy) began (guest)
        self.pmis = 0                   # PMIs handled in this run
        self.stall = False              # fault switch <role>_stall: stop at the first step

    def new_run(self) -> None:
        self.run_began, self.pmis = self.count, 0

    def heartbeat(self) -> schema.Heartbeat:
        """What a heartbeat says: the steps, the last one and, in a process that counts runs
        (the guest), the run's steps and PMIs so far."""
        run = None if self.run_began is None else self.count - self.run_began
        return schema.Heartbeat(self.count, self.doing, run, self.pmis)

    def step(self, doing: str) -> None:
        self.count += 1
        self.doing = doing
        while self.stall:               # a stuck thread whose process still beats
            time.sleep(1)


PROGRESS = Progress()                   # this process's


class Process:
    def __init__(self, role: str, args: argparse.Namespace):
        self.role, self.name = role, args.name
        os.makedirs(args.run_dir, exist_ok=True)
        self.log = logsetup.setup(args.name, args.run_dir, args.log_level)
        self.ctx = zmq.Context()
        self.security = security.Security(args.keys, args.name, self.ctx)
        if args.insecure:
            self.log.warning("INSECURE: tcp without CurveZMQ (--insecure-tcp): anyone who "
                             "reaches these ports can talk to this process")
        self.control = transport.Channel(transport.socket(self.ctx, zmq.DEALER, args.name))
        self.security.client(self.control.sock, "launcher")
        self.control.sock.connect(args.control)
        self.parent = os.getppid() if args.exit_with_parent else None
        self.stopping = False
        self.errors = transport.ErrorLog(self.log)
        PROGRESS.stall = role in ("kvm", "guest") and faults.active(f"{role}_stall")
        self.heartbeat = Heartbeat(self, args.control, args.lost_after)
        self.deaf = faults.active("ignore_shutdown")
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN if self.deaf else self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self.stopping = True

    def hello(self, endpoints: dict) -> None:
        self.control.send(schema.Hello(self.role, self.name, os.getpid(), endpoints))
        transport.wait_for(self.control, MsgType.WELCOME, transport.DEFAULT_TIMEOUT_S)
        self.heartbeat.start()
        self.log.info("READY %s pid %d endpoints %s%s", self.name, os.getpid(), endpoints,
                      " (CurveZMQ)" if self.security.enabled else "")

    def send(self, body) -> None:
        self.control.send(body)

    def serve(self, on_control, extra: zmq.Socket | None = None, on_extra=None) -> int:
        """Dispatch control messages (and an extra socket's) until SHUTDOWN; return exit code."""
        poller = zmq.Poller()
        poller.register(self.control.sock, zmq.POLLIN)
        if extra is not None:
            poller.register(extra, zmq.POLLIN)
        code = 0
        while not self.stopping:
            if self.parent is not None and os.getppid() != self.parent:
                self.log.error("launcher (pid %d) is gone: exiting", self.parent)
                return EXIT_PEER_LOST
            if self.heartbeat.lost:
                self.log.error("launcher lost: no heartbeat for %.1f s; exiting",
                               self.heartbeat.lost_after)
                return EXIT_PEER_LOST
            ready = dict(poller.poll(int(HEARTBEAT_S * 1000)))
            if extra is not None and extra in ready:
                on_extra()
            if self.control.sock in ready:
                try:
                    _, msg = self.control.recv(0)
                except schema.ProtocolError as exc:
                    self.errors.record(exc.kind, exc.detail, "launcher")
                    continue
                if msg.type == MsgType.SHUTDOWN and self.deaf:
                    self.log.warning("hanging instead of shutting down (fault switch)")
                    while True:                         # a hung process: only SIGKILL ends it
                        time.sleep(1)
                if msg.type == MsgType.SHUTDOWN:
                    if msg.body.failed:
                        self.log.error("run aborted by the launcher: %s", msg.body.reason)
                        code = EXIT_PEER_LOST
                    else:
                        self.log.info("shutdown: %s", msg.body.reason)
                    break
                if msg.type in (MsgType.HEARTBEAT, MsgType.WELCOME):
                    continue
                try:
                    on_control(msg)
                except Exception as exc:
                    self.log.exception("failed on %s", msg.type.value)
                    self.send(schema.Error("failed", f"{self.name}: {type(exc).__name__}: {exc}"))
                    code = 1
        if self.stopping:
            self.log.info("stopped by signal")
            code = code or 4
        return code

    def close(self) -> None:
        self.heartbeat.stop.set()
        if self.heartbeat.is_alive():
            self.heartbeat.join(2)
        if self.errors.counts:
            self.log.info("protocol errors received, by class: %s", self.errors.counts)
        self.control.close()
        self.security.stop()
        self.ctx.term()
        logging.shutdown()


class Heartbeat(threading.Thread):
    """Heartbeats to and from the launcher on a link of their own, so that a busy process and a
    dead one look different: each beat carries the process's progress (``PROGRESS``), so that a
    stuck one and a busy one do too."""

    def __init__(self, svc: Process, control_ep: str, lost_after: float):
        super().__init__(name="heartbeat", daemon=True)
        self.svc, self.lost_after = svc, lost_after
        self.chan = transport.Channel(transport.socket(svc.ctx, zmq.DEALER, f"{svc.name}.hb"))
        svc.security.client(self.chan.sock, "launcher")
        self.chan.sock.connect(control_ep)
        self.stop = threading.Event()
        self.lost = False
        self.silenced = faults.active(f"{svc.role}_stop_heartbeat")

    def run(self) -> None:
        last_seen = time.monotonic()
        try:
            while not self.stop.is_set():
                if not self.silenced:
                    self.chan.send(PROGRESS.heartbeat())
                deadline = time.monotonic() + HEARTBEAT_S
                while time.monotonic() < deadline and not self.stop.is_set():
                    try:
                        self.chan.recv(max(0.0, deadline - time.monotonic()), self.stop)
                        last_seen = time.monotonic()
                    except (transport.PeerLost, transport.Stopped, schema.ProtocolError):
                        pass
                if time.monotonic() - last_seen > self.lost_after:
                    self.lost = True
        finally:
            self.chan.close()
