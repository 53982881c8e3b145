"""Shared fixtures: an in-process host for model tests, and real launches for integration tests."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from common import msr, schema
from common.costs import Ledger
from common.topology import preset
from host.perf import HostPerf, PerfError
from kvm import policies
from kvm.pmu import KVM_REQ_PMU, KvmPmu, PerfCallRefused

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = [sys.executable, "-m", "common.launcher"]   # the launcher, as vpmu-launch runs it
EN_INSTR_INT = 0x4300C0 | msr.EVTSEL_INT      # EN|OS|USR|INT, instructions retired


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


@pytest.fixture
def make_pmu():
    def make(policy="always", preset_name="small", watchdog=False):
        host = HostPerf(preset(preset_name), watchdog)
        perf = LocalPerf(host)
        pmu = KvmPmu(perf, policies.load(policy))
        pmu.cpu = 0
        perf.pmu = pmu
        return pmu, perf, host
    return make


def program_counter0(pmu, period: int) -> None:
    """What a Linux guest writes for perf record -c PERIOD on GP counter 0 (and, under a
    policy that defers reprogramming, the VM entry that follows)."""
    pmu.set_msr(msr.MSR_X2APIC_LVTPC, msr.APIC_DM_NMI)
    pmu.set_msr(msr.MSR_CORE_PERF_GLOBAL_CTRL, 0)
    pmu.set_msr(msr.MSR_IA32_PMC0, (-period) & msr.COUNTER_MASK)
    pmu.set_msr(msr.MSR_P6_EVNTSEL0, EN_INSTR_INT)
    pmu.set_msr(msr.MSR_CORE_PERF_GLOBAL_CTRL, 0xF)
    if KVM_REQ_PMU in pmu.requests:
        pmu.requests.discard(KVM_REQ_PMU)
        pmu.handle_event()


def launch(tmp_path, *args, timeout=240) -> tuple[subprocess.CompletedProcess, dict, str]:
    """Run the real launcher (all processes) into ``tmp_path``; return its outcome and results."""
    out = str(tmp_path / "run")
    proc = subprocess.run([*LAUNCH, "--out", out, *args], capture_output=True,
                          text=True, timeout=timeout)
    path = os.path.join(out, "results.json")
    results = json.load(open(path)) if os.path.exists(path) else {}
    return proc, results, out


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:                                   # a zombie still answers kill(0)
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def assert_no_process_left(run_dir: str) -> None:
    pids = json.load(open(os.path.join(run_dir, "pids.json")))
    left = {name: pid for name, pid in pids.items() if alive(pid)}
    assert not left, f"processes of the run still alive: {left}"


@pytest.fixture(scope="session")
def seed_run(tmp_path_factory):
    """The seed scenario under every policy, once per test session, over ipc."""
    proc, results, out = launch(tmp_path_factory.mktemp("seed"), "--policy", "all",
                                "--pmis", "30")
    return proc, results, out
