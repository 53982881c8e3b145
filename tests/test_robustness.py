"""Bad input, dead and stuck peers, clean shutdown, strangers on the wire, determinism."""
import json
import os
import re
import signal
import threading
import time

import pytest
import zmq
import zmq.auth

from common import schema
from fuzz import CLASSES
from support import assert_no_process_left, launch, load_json, read
from support import start_launcher as start

pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]
PER_CLASS = 500


def wait_for_line(path, pattern, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path):
            m = re.search(pattern, read(path))
            if m:
                return m
        time.sleep(0.05)
    raise AssertionError(f"{pattern!r} never appeared in {path}")


REPLY_TIMEOUT_MS = 30_000
# what every endpoint must have counted: one typed error per frame (two classes are not msgpack)
WANT = {kind: sum(PER_CLASS for _, k in CLASSES.values() if k == kind)
        for _, kind in CLASSES.values()}


def fuzz(endpoint, extra=()):
    """A stranger sends PER_CLASS frames of every class to ``endpoint``, then ``extra``, each
    only once the reply to the one before has come: every frame is answered, so when this
    returns the endpoint has counted every one (nothing is left in flight, no reply can be
    dropped for a full queue). Returns the replies by kind."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDTIMEO, 60_000)            # a gone endpoint fails the test, not hangs
    sock.connect(endpoint)
    replies = {}
    frames = [(name, make(i)) for name, (make, _) in CLASSES.items() for i in range(PER_CLASS)]
    try:
        for name, frame in [*frames, *(("extra", f) for f in extra)]:
            sock.send(frame)
            if not sock.poll(REPLY_TIMEOUT_MS):
                raise AssertionError(f"{endpoint}: no reply to a {name} frame in "
                                     f"{REPLY_TIMEOUT_MS / 1000:.0f} s; replies so far {replies}")
            msg = schema.decode(sock.recv())
            kind = msg.body.kind if msg.type == schema.MsgType.ERROR else msg.type.value
            replies[kind] = replies.get(kind, 0) + 1
    finally:
        sock.close()
        ctx.term()
    return replies


def test_fuzzing_every_endpoint_of_a_live_run(tmp_path):
    """The run is endless by its flags and is interrupted only once every frame has been
    answered, so each endpoint was alive for all of them: exact counts, no timing."""
    out = str(tmp_path / "run")
    proc = start(out, "--policy", "oncpu", "--pmis", "1000000000", "--max-exits", "1000000000",
                 "--max-modeled-ms", "1000000000", "--host-preset", "small")
    ctrl = wait_for_line(os.path.join(out, "host.log"), r"READY host .*'perf': '([^']+)'")
    vcpu = wait_for_line(os.path.join(out, "kvm-vm0.log"), r"guest endpoint (\S+),")
    control = os.path.join(os.path.dirname(ctrl.group(1)[len("ipc://"):]), "control")
    # a stranger that says hello to the host, then calls perf on events it does not own
    hello = schema.encode(schema.Hello("vcpu", "vm9/vcpu9", 1), 0)
    bad_calls = [schema.encode(schema.PerfCall(i, schema.PerfRelease(h), schema.Retired({}, [], 0)),
                               i + 1) for i, h in enumerate([999_999, 1] * PER_CLASS)]
    targets = {"host": (ctrl.group(1), [hello, *bad_calls]), "kvm": (vcpu.group(1), []),
               "launcher": (f"ipc://{control}", [])}
    failures, replies = [], {}

    def run(where, ep, extra):
        try:
            replies[where] = fuzz(ep, extra)
        except Exception as exc:                     # noqa: BLE001 - reported below
            failures.append(f"{where} {ep}: {exc!r}")
    threads = [threading.Thread(target=run, args=(where, ep, extra))
               for where, (ep, extra) in targets.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures
    for where, got in replies.items():               # a typed error reply for each frame
        assert {k: got.get(k, 0) for k in WANT} == WANT, (where, got)
    assert replies["host"]["welcome"] == 1 and replies["host"]["host_reply"] == 2 * PER_CLASS
    assert sum(WANT.values()) * len(targets) >= 10_000
    assert proc.poll() is None                       # the run went on through all of it
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 3, stdout + stderr     # interrupted, as asked
    results = load_json(os.path.join(out, "results.json"))
    run = results["runs"][0]
    assert run["stop_reason"] == "interrupted" and run["pmis"]["handled"] > 0
    assert run["invariants"]["violations"] == []
    counts = {"launcher": results["launcher_protocol_errors"]}
    log = read(os.path.join(out, "host.log"))
    counts["host"] = json.loads(re.search(r"protocol errors received, by class: (\{.*\})",
                                          log).group(1).replace("'", '"'))
    klog = read(os.path.join(out, "kvm-vm0.log"))
    counts["kvm"] = json.loads(re.search(r"protocol errors on the guest links, by class: "
                                         r"(\{.*\})", klog).group(1).replace("'", '"'))
    for where, got in counts.items():
        assert {k: got.get(k, 0) for k in WANT} == WANT, (where, got)
    assert counts["host"]["perf_refused"] == 2 * PER_CLASS
    # the first few of a class are logged in full, then only counted
    assert log.count("protocol error not_msgpack") <= 4
    assert_no_process_left(out)


@pytest.mark.parametrize("role", ["host", "kvm-vm0", "guest-vm0"])
def test_kill_9_of_each_process(tmp_path, role):
    out = str(tmp_path / "run")
    proc = start(out, "--policy", "oncpu", "--pmis", "1000000", "--host-preset", "small")
    wait_for_line(os.path.join(out, "kvm-vm0.log"), r"vCPU thread up")
    time.sleep(0.5)
    pid = load_json(os.path.join(out, "pids.json"))[role]
    os.kill(pid, signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert f"{role} (pid {pid}) killed by signal 9" in stderr
    results = load_json(os.path.join(out, "results.json"))
    assert results["complete"] is False
    survivors = {"host", "kvm-vm0", "guest-vm0"} - {role}
    assert set(results["partial_reports"]) == survivors
    assert all(results["exit_codes"][n] == 5 for n in survivors)
    for name in survivors:
        assert "run aborted by the launcher" in read(os.path.join(out, f"{name}.log"))
    assert_no_process_left(out)


@pytest.mark.parametrize("role", ["host", "kvm", "guest"])
def test_a_process_that_stops_its_heartbeat_is_declared_lost(tmp_path, role):
    out = str(tmp_path / "run")
    t0 = time.monotonic()
    proc = start(out, "--policy", "oncpu", "--pmis", "1000000", "--host-preset", "small",
                 env={"VPMU_FAULTS": f"{role}_stop_heartbeat"})
    stdout, stderr = proc.communicate(timeout=60)
    assert time.monotonic() - t0 < 15
    assert proc.returncode == 2
    assert "stopped answering: no heartbeat" in stderr and "still running" in stderr
    assert_no_process_left(out)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signals_to_the_launcher_stop_everything_within_5_s(tmp_path, sig):
    out = str(tmp_path / "run")
    proc = start(out, "--policy", "oncpu", "--pmis", "1000000", "--host-preset", "small")
    wait_for_line(os.path.join(out, "kvm-vm0.log"), r"vCPU thread up")
    time.sleep(0.5)
    t0 = time.monotonic()
    proc.send_signal(sig)
    proc.communicate(timeout=30)
    assert time.monotonic() - t0 < 5
    assert proc.returncode == 3
    results = load_json(os.path.join(out, "results.json"))
    assert results["complete"] is False and results["runs"][0]["pmis"]["handled"] > 0
    assert_no_process_left(out)


def test_shutdown_ladder_ends_with_sigkill_for_a_deaf_process(tmp_path):
    out = str(tmp_path / "run")
    t0 = time.monotonic()
    proc = start(out, "--policy", "oncpu", "--pmis", "3", "--host-preset", "small",
                 env={"VPMU_FAULTS": "ignore_shutdown"})
    stdout, stderr = proc.communicate(timeout=60)
    results = load_json(os.path.join(out, "results.json"))
    assert results["complete"] is True
    assert set(results["exit_codes"].values()) == {-signal.SIGKILL}
    assert proc.returncode == 2 and "did not exit cleanly" in stderr
    assert time.monotonic() - t0 < 15
    assert_no_process_left(out)


def test_curve_refuses_strangers_and_the_run_goes_on(tmp_path):
    out = str(tmp_path / "run")
    proc = start(out, "--transport", "tcp", "--policy", "oncpu", "--pmis", "1500",
                 "--host-preset", "small")
    ep = wait_for_line(os.path.join(out, "host.log"), r"READY host .*'perf': '([^']+)'").group(1)
    ctx = zmq.Context()
    try:
        plain = ctx.socket(zmq.DEALER)                    # no keys at all
        plain.setsockopt(zmq.LINGER, 0)
        plain.connect(ep)
        wrong = ctx.socket(zmq.DEALER)                    # a key pair of its own
        wrong.setsockopt(zmq.LINGER, 0)
        wrong.curve_publickey, wrong.curve_secretkey = zmq.curve_keypair()
        wrong.curve_serverkey = zmq.auth.load_certificate(os.path.join(out, "keys",
                                                                       "host.key"))[0]
        wrong.connect(ep)
        for sock in (plain, wrong):
            for i in range(50):
                sock.send(schema.encode(schema.Hello("vcpu", "vm0/vcpu0", 1), i))
        assert not wrong.poll(1000) and not plain.poll(10)   # nobody answers them
        plain.close()
        wrong.close()
    finally:
        ctx.term()
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stdout + stderr
    log = read(os.path.join(out, "host.log"))
    assert "refused a peer: its CURVE key is not one of this run's" in log
    assert "refused a peer: failed CURVE handshake" in log           # the keyless one
    assert "(CurveZMQ)" in log and "protocol error" not in log
    run = load_json(os.path.join(out, "results.json"))["runs"][0]
    assert run["pmis"]["handled"] == 1500 and run["invariants"]["violations"] == []
    assert oct(os.stat(os.path.join(out, "keys", "host.key_secret")).st_mode & 0o777) == "0o600"


def test_tcp_on_different_loopback_addresses_with_curve(tmp_path):
    proc, results, out = launch(tmp_path, "--transport", "tcp", "--bind", "127.0.0.2",
                                "--host-addr", "127.0.0.3", "--kvm-addr", "127.0.0.2",
                                "--policy", "oncpu", "--pmis", "10", "--host-preset", "small")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "'perf': 'tcp://127.0.0.3:" in read(os.path.join(out, "host.log"))
    assert "guest endpoint tcp://127.0.0.2:" in read(os.path.join(out, "kvm-vm0.log"))
    assert "(CurveZMQ)" in read(os.path.join(out, "guest-vm0.log"))
    assert_no_process_left(out)


def test_insecure_tcp_is_said_in_every_log(tmp_path):
    proc, _, out = launch(tmp_path, "--transport", "tcp", "--insecure-tcp", "--policy", "oncpu",
                          "--pmis", "3", "--host-preset", "small")
    assert proc.returncode == 0
    for name in ("host", "kvm-vm0", "guest-vm0"):
        assert "INSECURE: tcp without CurveZMQ" in read(os.path.join(out, f"{name}.log"))
    assert not os.path.exists(os.path.join(out, "keys"))


def stable(results):
    """A run's results without what is not expected to repeat: measured times, thread ids."""
    out = []
    for r in results["runs"]:
        r = json.loads(json.dumps(r))
        for key in ("wall_s", "affinity"):
            r.pop(key)
        for part in (r["handle_event"], r["guest_nmi_handler"], r["handle_event"]["distribution"]):
            part.pop("measured_ns")
        out.append(r)
    return out


def test_same_seed_same_results_down_to_modeled_costs(tmp_path):
    args = ("--policy", "all", "--pmis", "20", "--host-preset", "small",
            "--migrate", "random:100", "--seed", "42")
    a = launch(tmp_path / "a", *args)[1]
    b = launch(tmp_path / "b", *args)[1]
    c = launch(tmp_path / "c", *args[:-1], "43")[1]
    assert stable(a) == stable(b)
    assert [r["guest_event_count"] for r in a["runs"]] != [r["guest_event_count"] for r in c["runs"]]


def test_same_seed_same_guest_view_with_shared_host_state(tmp_path):
    """Two vCPUs share the host's refcount, whose crossings depend on the threads'
    interleaving: modeled costs may differ between runs, what the guest saw may not."""
    def seen(results):
        return [(r["samples"], r["guest_event_count"], r["guest_events"], r["pmis"],
                 r["invariants"], {k: v for k, v in r["exits"]["by_reason"].items()
                                   if k != "host_timer"}) for r in results["runs"]]
    args = ("--policy", "always,deferred", "--pmis", "20", "--host-preset", "small",
            "--vcpus", "2", "--seed", "7")
    a = launch(tmp_path / "a", *args)[1]
    b = launch(tmp_path / "b", *args)[1]
    assert seen(a) == seen(b)
