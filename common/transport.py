"""ZeroMQ plumbing shared by every process: sockets, framed channels, endpoints."""
from __future__ import annotations

import logging
import threading
import time

import zmq

from common import schema

DEFAULT_TIMEOUT_S = 10.0


class PeerLost(Exception):
    """A peer did not answer within the time it was given."""


class Stopped(Exception):
    """This side was told to stop while it waited."""


def socket(ctx: zmq.Context, kind: int, identity: str | None = None) -> zmq.Socket:
    """A socket that never lingers at close and, as a ROUTER, never drops a message silently."""
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    if kind == zmq.ROUTER:
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    if identity is not None:
        sock.setsockopt(zmq.IDENTITY, identity.encode())
    return sock


def bind(sock: zmq.Socket, endpoint: str) -> str:
    """Bind and return the real endpoint (a tcp wildcard port becomes the chosen one)."""
    sock.bind(endpoint)
    return sock.getsockopt(zmq.LAST_ENDPOINT).decode()


def vcpu_endpoint(base: str, run: int, vcpu: int) -> str:
    """Where KVM's vCPU thread listens for its guest vCPU: its own socket per vCPU and run."""
    if base.startswith("ipc://"):
        return f"{base}-r{run}-v{vcpu}"
    if base.startswith("tcp://"):
        return base.rsplit(":", 1)[0] + ":*"
    raise ValueError(f"unsupported endpoint {base!r}: use ipc:// or tcp://")


class ErrorLog:
    """Logs the first few protocol errors of each kind in full, then only counts them."""

    FULL = 3

    def __init__(self, log: logging.Logger):
        self.log = log
        self.counts: dict[str, int] = {}

    def record(self, kind: str, detail: str, sender: str) -> None:
        n = self.counts.get(kind, 0) + 1
        self.counts[kind] = n
        if n <= self.FULL:
            self.log.warning("protocol error %s from %s: %s", kind, sender, detail)
        elif n == self.FULL + 1:
            self.log.warning("protocol error %s from %s: further ones only counted", kind, sender)


class Channel:
    """A socket that sends and receives schema messages with per-link sequence numbers.

    On a ROUTER every peer is a separate link; on a DEALER there is one link (peer b"").
    """

    def __init__(self, sock: zmq.Socket, max_bytes: int = schema.MAX_LINK_FRAME_BYTES,
                 big_peers: dict[bytes, int] | None = None):
        self.sock = sock
        self.router = sock.type == zmq.ROUTER
        self.seq = schema.SeqCounter()
        self.max_bytes = max_bytes
        self.big_peers = big_peers or {}                   # peers allowed larger frames
        largest = max([max_bytes, *self.big_peers.values()])
        sock.setsockopt(zmq.MAXMSGSIZE, 4 * largest)       # past that zmq drops the peer

    def send(self, body, peer: bytes = b"", droppable: bool = False) -> bool:
        """Send one message. A ROUTER never blocks on a peer: a message that cannot be queued
        (the peer is gone, or does not read) raises PeerLost, or returns False when
        ``droppable`` (an error reply to a stranger)."""
        frame = schema.encode(body, self.seq.next_out(peer))
        if not self.router:
            self.sock.send(frame)
            return True
        try:
            self.sock.send_multipart([peer, frame], zmq.NOBLOCK)
            return True
        except (zmq.Again, zmq.ZMQError) as exc:
            if droppable:
                return False
            raise PeerLost(f"cannot send {type(body).__name__} to {peer!r}: {exc}") from None

    def recv(self, timeout_s: float | None = DEFAULT_TIMEOUT_S,
             stop: "threading.Event | None" = None) -> tuple[bytes, schema.Message]:
        """Wait for one frame; raise PeerLost on timeout and ProtocolError (with ``.peer``) on
        a bad frame, which has then been consumed."""
        if stop is not None:                   # wait in slices, giving up when told to stop
            deadline = time.monotonic() + (timeout_s or 1e9)
            while not self.sock.poll(50):
                if stop.is_set():
                    raise Stopped("stopped while waiting for a peer")
                if time.monotonic() > deadline:
                    raise PeerLost(f"nothing received in {timeout_s:.1f} s")
        elif timeout_s is not None and not self.sock.poll(int(timeout_s * 1000)):
            raise PeerLost(f"nothing received in {timeout_s:.1f} s")
        parts = self.sock.recv_multipart()
        peer, frame = (parts[0], parts[-1]) if self.router else (b"", parts[-1])
        try:
            if len(parts) != (2 if self.router else 1):
                raise schema.ProtocolError("wrong_type", f"{len(parts)} frames in one message")
            msg = schema.decode(frame, self.big_peers.get(peer, self.max_bytes))
            self.seq.check_in(msg.seq, peer)
        except schema.ProtocolError as exc:
            exc.peer = peer
            raise
        return peer, msg

    def close(self) -> None:
        self.sock.close(linger=0)


def wait_for(chan: Channel, wanted: schema.MsgType, timeout_s: float) -> tuple[bytes, schema.Message]:
    """Receive until a message of type ``wanted`` arrives; anything else is a protocol fault."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise PeerLost(f"no {wanted.value} within {timeout_s:.1f} s")
        peer, msg = chan.recv(left)
        if msg.type == wanted:
            return peer, msg
        if msg.type == schema.MsgType.ERROR:
            raise RuntimeError(f"peer refused: {msg.body.kind}: {msg.body.detail}")
        raise schema.ProtocolError("unknown_type", f"expected {wanted.value}, got {msg.type.value}")

