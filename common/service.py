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
import time

import zmq

from common import logsetup, schema, transport
from common.schema import MsgType

HEARTBEAT_S = 0.5


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
    return ap


class Service:
    def __init__(self, role: str, args: argparse.Namespace):
        self.role, self.name = role, args.name
        os.makedirs(args.run_dir, exist_ok=True)
        self.log = logsetup.setup(args.name, args.run_dir, args.log_level)
        self.ctx = zmq.Context()
        self.control = transport.Channel(transport.socket(self.ctx, zmq.DEALER, args.name))
        self.control.sock.connect(args.control)
        self.parent = os.getppid() if args.exit_with_parent else None
        self.stopping = False
        self.errors = transport.ErrorLog(self.log)
        self.progress = 0
        self._last_beat = 0.0
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self.stopping = True

    def hello(self, endpoints: dict) -> None:
        self.control.send(schema.Hello(self.role, self.name, os.getpid(), endpoints))
        transport.wait_for(self.control, MsgType.WELCOME, transport.DEFAULT_TIMEOUT_S)
        self.log.info("READY %s pid %d endpoints %s", self.name, os.getpid(), endpoints)

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
                return 3
            now = time.monotonic()
            if now - self._last_beat >= HEARTBEAT_S:
                self.send(schema.Heartbeat(self.progress))
                self._last_beat = now
            ready = dict(poller.poll(int(HEARTBEAT_S * 1000)))
            if extra is not None and extra in ready:
                on_extra()
            if self.control.sock in ready:
                try:
                    _, msg = self.control.recv(0)
                except schema.ProtocolError as exc:
                    self.errors.record(exc.kind, exc.detail, "launcher")
                    continue
                if msg.type == MsgType.SHUTDOWN:
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
        self.control.close()
        self.ctx.term()
        logging.shutdown()
