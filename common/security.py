"""CurveZMQ for tcp runs: every process has a key pair, and accepts only the run's members.

The launcher creates a key pair per process in ``RUN_DIR/keys`` (secret keys 0600). A process
started with ``--keys DIR`` encrypts every socket it owns: as a server it runs a ZAP authenticator
that accepts a client only if its public key is one of the run's, and logs each refusal; as a
client it checks the server's public key. Without keys (ipc, or ``--insecure-tcp``) sockets are
plain, and a tcp process says so in its log.
"""
from __future__ import annotations

import logging
import os
import shutil
import threading

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

log = logging.getLogger("security")
MEMBERS = ("launcher", "host", "kvm-vm0", "guest-vm0")


def generate(run_dir: str) -> str:
    """Key pairs for every member of the run; returns the keys folder."""
    keys = os.path.join(run_dir, "keys")
    os.makedirs(keys, mode=0o700, exist_ok=True)
    for name in MEMBERS:
        _, secret = zmq.auth.create_certificates(keys, name)
        os.chmod(secret, 0o600)
    return keys


def bundle(keys: str, name: str) -> str:
    """What one process needs on a machine of its own: its secret key and every member's public
    key, in ``RUN_DIR/keys-NAME`` (so that no machine holds another process's secret key)."""
    folder = f"{keys}-{name}"
    os.makedirs(folder, mode=0o700, exist_ok=True)
    for member in MEMBERS:
        shutil.copy(os.path.join(keys, f"{member}.key"), folder)
    secret = shutil.copy(os.path.join(keys, f"{name}.key_secret"), folder)
    os.chmod(secret, 0o600)
    return folder


class Security:
    """How one process secures its sockets; ``Security(None, ...)`` leaves them plain."""

    def __init__(self, keys: str | None, name: str, ctx: zmq.Context):
        self.keys, self.name, self.ctx = keys, name, ctx
        self.auth: ThreadAuthenticator | None = None
        self.refused = 0
        self.lock = threading.Lock()
        if keys is None:
            return
        self.public, self.secret = zmq.auth.load_certificate(
            os.path.join(keys, f"{name}.key_secret"))
        self.trusted = {zmq.auth.load_certificate(os.path.join(keys, f"{m}.key"))[0]
                        for m in MEMBERS if os.path.exists(os.path.join(keys, f"{m}.key"))}

    @property
    def enabled(self) -> bool:
        return self.keys is not None

    def callback(self, domain: str, client_key: bytes) -> bool:
        """The ZAP decision for one connecting client."""
        if client_key in self.trusted:
            return True
        self.refuse("its CURVE key is not one of this run's: "
                    + client_key.decode(errors="replace"))
        return False

    def server(self, sock: zmq.Socket) -> None:
        if not self.enabled:
            return
        if self.auth is None:
            self.auth = ThreadAuthenticator(self.ctx, log=logging.getLogger("zap"))
            self.auth.start()
            self.auth.configure_curve_callback(domain="*", credentials_provider=self)
        sock.curve_secretkey, sock.curve_publickey = self.secret, self.public
        sock.curve_server = True
        HandshakeWatch(sock.get_monitor_socket(HANDSHAKE_FAILED), self).start()

    def client(self, sock: zmq.Socket, server: str) -> None:
        if not self.enabled:
            return
        sock.curve_secretkey, sock.curve_publickey = self.secret, self.public
        sock.curve_serverkey = zmq.auth.load_certificate(
            os.path.join(self.keys, f"{server}.key"))[0]

    def stop(self) -> None:
        if self.auth is not None:
            self.auth.stop()
            self.auth = None

    def refuse(self, why: str) -> None:
        """Log a refused peer: the first three in full, then only a count."""
        with self.lock:
            self.refused += 1
            n = self.refused
        if n <= 3:
            log.warning("refused a peer: %s", why)
        elif n == 4:
            log.warning("refusing further peers; only counted from now on")


HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                    | zmq.EVENT_HANDSHAKE_FAILED_AUTH)


class HandshakeWatch(threading.Thread):
    """Logs the peers a CURVE server socket refuses before ZAP sees them (no keys at all, or a
    handshake that is not CURVE). Ends when the watched socket closes."""

    def __init__(self, monitor: zmq.Socket, security: "Security"):
        super().__init__(name="handshake-watch", daemon=True)
        self.monitor, self.security = monitor, security

    def run(self) -> None:
        try:
            while True:
                event = recv_monitor_message(self.monitor)
                if event["event"] == zmq.EVENT_MONITOR_STOPPED:
                    return
                if event["event"] != zmq.EVENT_HANDSHAKE_FAILED_AUTH:   # ZAP logged that one
                    self.security.refuse(f"failed CURVE handshake on "
                                         f"{event['endpoint'].decode()} ({event['value'].name})")
        except zmq.ZMQError:
            return
        finally:
            self.monitor.close(0)
