"""The transport's floor on this machine: a bare zmq DEALER/ROUTER round trip between two
processes, with no schema and no emulation, to compare a plain exit's cost against."""
import multiprocessing
import shutil
import sys
import tempfile
import time

import zmq

N = 5000


def echo(endpoint: str, bound) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.bind(endpoint)
    bound.send(sock.getsockopt(zmq.LAST_ENDPOINT).decode())   # a tcp port of its own choosing
    for _ in range(N + 1):
        sock.send_multipart(sock.recv_multipart())
    sock.close(0)
    ctx.term()


def main(transport: str) -> None:
    folder = tempfile.mkdtemp(prefix="vpmu-floor-") if transport == "ipc" else None
    try:
        measure(f"ipc://{folder}/s" if folder else "tcp://127.0.0.1:*")
    finally:
        if folder:
            shutil.rmtree(folder, ignore_errors=True)


def measure(endpoint: str) -> None:
    parent, child = multiprocessing.Pipe()
    server = multiprocessing.Process(target=echo, args=(endpoint, child))
    server.start()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(parent.recv())
    sock.send(b"warm-up")
    sock.recv()
    t0 = time.perf_counter_ns()
    for _ in range(N):
        sock.send(b"x" * 64)
        sock.recv()
    floor = (time.perf_counter_ns() - t0) / N
    print(f"  transport floor: bare zmq round trip {floor / 1000:.1f} us ({1e9 / floor:,.0f}/s)")
    sock.close(0)
    ctx.term()
    server.join()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "ipc")
