"""Scheduling and host perf throttling through the real processes: when a vCPU task is switched
out and in (and so runs its release's sched-in hook), and when host perf throttles KVM's events."""
import math
import os
import re

import pytest

from common import config
from support import ROOT, launch, read

pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]
SEED = os.path.join(ROOT, "scenarios", "seed.toml")


def runs_of(tmp_path, *args) -> dict:
    proc, results, _ = launch(tmp_path, *args)
    assert proc.returncode == 0, proc.stderr
    runs = {r["policy"]: r for r in results["runs"]}
    for r in runs.values():
        assert r["invariants"]["violations"] == [], r["policy"]
    return runs


def test_a_lone_vcpu_is_never_switched_out_at_its_ticks(tmp_path):
    """The seed scenario (no host load): the ticks exit to the host, nothing switches, so reuse's
    sched-in hook never asks for the lazy release: one kvm_pmu_handle_event per PMI."""
    runs = runs_of(tmp_path, "--scenario", SEED, "--policy", "reuse,deferred", "--pmis", "40")
    for r in runs.values():
        assert r["exits"]["by_reason"]["host_timer"] > 0 and r["timeslices"] == 0
        assert r["host_perf"]["run_queue_waits"] == 0
        assert "sched_in_cleanup" not in r["reprogram_counter"]["by_cause"]
    assert runs["reuse"]["handle_event"]["calls"] == 40


def test_two_vcpus_sharing_a_pcpu_are_switched_at_the_ticks(tmp_path):
    runs = runs_of(tmp_path, "--host-preset", "small", "--vcpus", "2", "--pin", "0,0",
                   "--policy", "reuse,always", "--host-load", "0", "--pmis", "20")
    for r in runs.values():
        assert r["timeslices"] > 0 and r["host_perf"]["run_queue_waits"] > 0
    # each schedule-in with live events is a KVM_REQ_PMU of its own under 5.7, none under 4.20
    assert runs["reuse"]["handle_event"]["calls"] > 2 * 20
    assert runs["always"]["handle_event"]["calls"] == 2 * 20


def test_a_migration_runs_the_sched_in_hook(tmp_path):
    runs = runs_of(tmp_path, "--host-preset", "small", "--migrate", "every:30",
                   "--policy", "reuse,always", "--host-load", "0", "--pmis", "20")
    for r in runs.values():
        assert r["migrations"] > 0 and r["timeslices"] == 0
    assert runs["reuse"]["handle_event"]["calls"] > 20
    assert runs["always"]["handle_event"]["calls"] == 20


def host_tasks(out: str) -> int:
    """Host tasks that preempted the vCPU, from the KVM log's lines."""
    text = read(os.path.join(out, "kvm-vm0.log"))
    return sum(int(n) for n in re.findall(r"preempted by (\d+) host task", text))


def test_host_load_preempts_at_its_rate_and_the_same_seed_gives_the_same_switches(tmp_path):
    rate, args = 2000, ("--host-preset", "small", "--policy", "reuse", "--pmis", "40",
                        "--host-load", "2000")
    seen = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        proc, results, out = launch(tmp_path / name, *args)
        assert proc.returncode == 0, proc.stderr
        r = results["runs"][0]
        assert r["invariants"]["violations"] == []
        seen.append((host_tasks(out), r["timeslices"], r["handle_event"]["calls"],
                     r["modeled_total_ns"]))
    assert seen[0] == seen[1]                       # the same seed: the same preemptions
    tasks, switches, calls, total_ns = seen[0]
    # a Poisson process on the vCPU's clock: its modeled time and the host tasks' own time
    expected = rate * (total_ns + tasks * config.HOST_TASK_NS) / 1e9
    assert abs(tasks - expected) < 5 * math.sqrt(expected), (tasks, expected)
    assert 0 < switches <= tasks                    # those arriving together run back to back
    assert calls > 40                               # reuse's sched-in hook at each return


def test_host_perf_throttles_persistent_events_only(tmp_path):
    """A tiny period and perf_event_max_sample_rate 2500 (10 overflows per 4 ms tick): 5.7's and
    6.12's events live across PMIs and are throttled; 4.20 creates a new one at every PMI and
    escapes. KVM's pause and resume at the next entry unthrottle them before the guest runs."""
    runs = runs_of(tmp_path, "--host-preset", "small", "--policy", "all", "--period", "20000",
                   "--perf-max-sample-rate", "2500", "--host-load", "0", "--pmis", "100")
    for policy in ("reuse", "deferred"):
        t = runs[policy]["host_perf"]["throttled"]
        assert t["throttle"] >= 5 and t["unthrottle"] == t["throttle"] and t["lost"] == {}
    for policy in ("always", "oncpu"):
        assert runs[policy]["host_perf"]["throttled"]["throttle"] == 0
