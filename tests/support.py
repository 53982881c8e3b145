"""What several test modules share: paths, an in-process perf API, real launches, process checks.

Tests import these from here; ``conftest.py`` holds only fixtures and hooks.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import zmq

from common import config, msr, schema, transport
from common.costs import Ledger
from common.schema import MsgType
from guest.cpu import GuestCpu
from guest.oracle import Oracle
from guest.workload import Workload
from host.main import HostServer
from host.perf import HostPerf, PerfError
from kvm.generations import GENERATIONS
from kvm.pmu import KVM_REQ_PMU, PerfCallRefused

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = [sys.executable, "-m", "common.launcher"]   # the launcher, as vpmu-launch runs it
EN_INSTR_INT = 0x4300C0 | msr.EVTSEL_INT      # EN|OS|USR|INT, instructions retired
# a sweep grid (docs/sweeps.md): the seed scenario on the small preset, 5 PMIs, two points
SWEEP_GRID = f"""scenario = "{os.path.join(ROOT, 'scenarios', 'seed.toml')}"
[run]
pmis = 5
[host]
preset = "small"
[grid]
"run.policies" = ["always", "oncpu"]
"""

# The policies whose KVM counts the guest's trapped instructions (5.17+, emulated_instructions in
# kvm/generations.py; kvm/pmu.py trigger_event).
COUNTS_TRAPPED = frozenset(n for n, g in GENERATIONS.items() if g.counts_emulated_instructions)


def launcher_module():
    """The launcher as a module (its ``build_parser``, ``resolve_config``, ``Launcher``): the one
    place tests import it from."""
    from common import launcher
    return launcher


def script_module(name: str):
    """``scripts/<name>.py`` imported as a module (once)."""
    if name not in sys.modules:
        scripts = os.path.join(ROOT, "scripts")
        spec = importlib.util.spec_from_file_location(name, os.path.join(scripts, f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


class LocalPerf:
    """The perf API of one vCPU task, served by a HostPerf in this process (no transport)."""

    def __init__(self, host: HostPerf, owner: str = "vm0/vcpu0", cpu: int = 0):
        self.host, self.owner, self.pmu = host, owner, None
        self.ledger = Ledger()
        self.calls: list[str] = []
        host.sched_in(owner, cpu, self.ledger)

    def call(self, op: schema.PerfOp):
        self.calls.append(schema.OP_NAME[type(op)])
        try:
            return self.host.call(self.owner, op, self.ledger)
        except PerfError as exc:
            raise PerfCallRefused(str(exc)) from None

    def retire(self, **events) -> None:
        """The guest retires events: the host counts them and calls KVM back on overflow."""
        for ev in self.host.account(self.owner, events):
            self.pmu.perf_overflow(ev.context)


class HostServerThread:
    """The host process's perf server (``HostServer``), configured for ``preset`` and answering
    on ``endpoint`` in a thread of its own until ``close``: a component under test."""

    def __init__(self, ctx: zmq.Context, endpoint: str, preset: str = "small"):
        self.chan = transport.Channel(transport.socket(ctx, zmq.ROUTER))
        self.endpoint = transport.bind(self.chan.sock, endpoint)
        self.errors = transport.ErrorLog(logging.getLogger("host"))
        self.server = HostServer(self.chan, self.errors)
        self.server.configure(dict(scenario({"host": {"preset": preset}}), policy="always"))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="host")
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            if self.chan.sock.poll(20):
                self.server.handle()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.chan.close()


def scenario(layer: dict) -> dict:
    """The resolved configuration of the defaults with ``layer`` (scenario tables) over them."""
    return config.validate(config.merge(config.DEFAULTS, layer, "test"), "test")


class InstantKvm:
    """A guest link whose KVM enters the guest again right away, with a fixed budget."""

    def __init__(self, budget=None, filtered=None):
        self.budget, self.filtered = budget or {}, filtered or []
        self.exits: list[schema.Exit] = []

    def send(self, body, peer=b"", droppable=False):
        self.exits.append(body)

    def recv(self, timeout_s=None, stop=None):
        return b"", schema.Message(MsgType.ENTRY, 0, schema.Entry(   # fresh records, as decoded
            0, False, dict(self.budget), filtered=[dataclasses.replace(f) for f in self.filtered]))


def make_cpu(kvm, max_exits=1_000_000, profile="compute", ghz=2.5) -> GuestCpu:
    """A guest vCPU on ``kvm`` (an InstantKvm), after the first entry."""
    cpu = GuestCpu(kvm, 0, 1, Workload(profile, np.random.default_rng(1), ghz), Oracle(),
                   max_exits)
    cpu._exit("cpuid")                    # the first entry hands out the budget
    return cpu


def perfctr(pmu, idx: int = 0) -> int:
    """The counter MSR a Linux guest writes on ``pmu``'s release: PMCx with full-width writes
    (5.8+), else the legacy PERFCTRx."""
    return msr.counter_msr_of(idx, pmu.gen.full_width_writes)


def program_counter0(pmu, period: int) -> None:
    """What a Linux guest writes for perf record -c PERIOD on GP counter 0 (and, under a
    policy that defers reprogramming, the VM entry that follows)."""
    pmu.set_msr(msr.MSR_X2APIC_LVTPC, msr.APIC_DM_NMI)
    pmu.set_msr(msr.MSR_CORE_PERF_GLOBAL_CTRL, 0)
    pmu.set_msr(perfctr(pmu), (-period) & msr.COUNTER_MASK)
    pmu.set_msr(msr.MSR_P6_EVNTSEL0, EN_INSTR_INT)
    pmu.set_msr(msr.MSR_CORE_PERF_GLOBAL_CTRL, 0xF)
    if KVM_REQ_PMU in pmu.requests:
        pmu.requests.discard(KVM_REQ_PMU)
        pmu.handle_event()


def read(path) -> str:
    with open(path) as f:
        return f.read()


def load_json(path):
    with open(path) as f:
        return json.load(f)


def launch(tmp_path, *args, timeout=240) -> tuple[subprocess.CompletedProcess, dict, str]:
    """Run the real launcher (all processes) into ``tmp_path``; return its outcome and results."""
    out = str(tmp_path / "run")
    proc = subprocess.run([*LAUNCH, "--out", out, *args], capture_output=True,
                          text=True, timeout=timeout)
    path = os.path.join(out, "results.json")
    results = load_json(path) if os.path.exists(path) else {}
    return proc, results, out


STARTED: list[subprocess.Popen] = []       # launchers started in the background by a test


def start_launcher(out: str, *args, env=None) -> subprocess.Popen:
    """Start the real launcher into ``out`` and wait for its processes' pids; it is stopped
    after the test if the test did not (see ``stop_started`` in conftest.py)."""
    proc = subprocess.Popen([*LAUNCH, "--out", out, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, **(env or {})))
    STARTED.append(proc)
    deadline = time.monotonic() + 30
    while not os.path.exists(os.path.join(out, "pids.json")):
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    return proc


def stop_started() -> None:
    """Whatever launcher a test left running: SIGTERM (its own shutdown ladder), then SIGKILL;
    its pipes are closed either way."""
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:                                   # a zombie still answers kill(0)
        return read(f"/proc/{pid}/stat").split()[2] != "Z"
    except OSError:
        return False


def assert_no_process_left(run_dir: str) -> None:
    pids = load_json(os.path.join(run_dir, "pids.json"))
    left = {name: pid for name, pid in pids.items() if alive(pid)}
    assert not left, f"processes of the run still alive: {left}"
