"""Pinned vCPU threads and migrations that land in the windows the RFC is about."""
import os
import signal
import subprocess
import sys
import time

import pytest

from support import LAUNCH, assert_no_process_left, launch, load_json, read

pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]
COMMON = ("--pmis", "10", "--host-preset", "small", "--max-modeled-ms", "3000")


def runs_of(tmp_path, *args):
    proc, results, out = launch(tmp_path, *COMMON, *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_no_process_left(out)
    return {r["policy"]: r for r in results["runs"]}


def assert_moves_consistent(run):
    assert run["migrations"] > 0
    assert run["migrations"] == sum(run["migrations_by_kind"].values())
    assert run["migrations"] == run["host_sched_in_other_cpu"]
    assert run["oncpu_disagreements"] == 0


def test_window_with_task_binding_oncpu_skips(tmp_path):
    runs = runs_of(tmp_path, "--policy", "always,oncpu", "--migrate", "window")
    for run in runs.values():
        assert_moves_consistent(run)
        assert run["migrations_by_kind"] == {"window": 10}
        assert run["invariants"]["violations"] == []
    assert runs["oncpu"]["handle_event"]["by_reason"] == {"skipped_active_here": 10}
    assert runs["always"]["handle_event"]["by_reason"] == {"reprogrammed_unconditionally": 10}


def test_window_with_cpu_binding_oncpu_reprograms_elsewhere(tmp_path):
    runs = runs_of(tmp_path, "--policy", "oncpu", "--migrate", "window", "--event-binding", "cpu")
    run = runs["oncpu"]
    assert run["handle_event"]["by_reason"] == {"reprogrammed_elsewhere": 10}
    assert run["migrations"] == run["host_sched_in_other_cpu"] == 10
    assert run["invariants"]["violations"] == []


def test_every_n_with_cpu_binding_the_rfc_skips_a_counter_that_counted_nothing(tmp_path):
    """Events bound to the pCPU where they were created count nothing while the vCPU runs
    elsewhere; oncpu skips them whenever the vCPU is back, and the guest sees it."""
    proc, results, out = launch(tmp_path, *COMMON, "--policy", "oncpu", "--migrate", "every:7",
                                "--event-binding", "cpu")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    run = results["runs"][0]
    assert {"count_mismatch", "late_pmi"} <= set(run["invariants"]["by_kind"])
    assert run["handle_event"]["by_reason"].get("skipped_active_here", 0) > 0
    assert_no_process_left(out)


def test_to_busy_reprograms_inactive_and_reports_counter_unavailable(tmp_path):
    proc, results, out = launch(tmp_path, *COMMON, "--policy", "always,oncpu",
                                "--migrate", "to-busy:50", "--max-modeled-ms", "500")
    assert proc.returncode == 4, proc.stdout + proc.stderr     # unavailable is not a failure,
    for run in results["runs"]:                                # a short run is
        assert f"INCOMPLETE [{run['policy']}]" in proc.stdout
        assert run["invariants"]["violations"] == []           # a deviation, not a violation
        assert "counter_unavailable" in run["invariants"]["deviations"]
        assert run["stop_reason"] == "max_modeled_ms"
        assert run["host_perf"]["pinned_errors"] >= 1
        assert run["migrations_by_kind"]["to-busy"] == 1
    oncpu = next(r for r in results["runs"] if r["policy"] == "oncpu")
    assert oncpu["handle_event"]["by_reason"] == {"reprogrammed_inactive": 1}
    assert_no_process_left(out)


def test_to_busy_as_the_docs_show_it(tmp_path):
    """docs/model.md's row (K = 3): every policy loses the counter on the busy pCPU, reported
    as counter_unavailable, and the run ends by its modeled-time budget (no PMI comes again)."""
    proc, results, out = launch(tmp_path, "--migrate", "to-busy:3", "--max-modeled-ms", "500")
    assert proc.returncode == 4, proc.stdout + proc.stderr     # ended by its budget: said so
    assert len(results["runs"]) == 4
    for run in results["runs"]:
        assert f"INCOMPLETE [{run['policy']}]" in proc.stdout
        assert run["invariants"]["by_kind"] == {}, run["policy"]
        assert "counter_unavailable" in run["invariants"]["deviations"], run["policy"]
        assert run["migrations_by_kind"] == {"to-busy": 1, "to-busy-return": 1}
        assert run["stop_reason"] == "max_modeled_ms"
    assert "VIOLATION" not in proc.stdout


@pytest.mark.parametrize("spec", ["every:7", "random:300"])
def test_moves_lose_and_double_no_count(tmp_path, spec):
    base = runs_of(tmp_path / "base", "--policy", "always,oncpu")
    runs = runs_of(tmp_path / "moved", "--policy", "always,oncpu", "--migrate", spec)
    for policy, run in runs.items():
        assert_moves_consistent(run)
        assert run["invariants"]["violations"] == []
        assert run["guest_event_count"] == base[policy]["guest_event_count"]
        assert run["samples"] == base[policy]["samples"]


def test_scheduled_moves_from_the_scenario(tmp_path):
    scenario = tmp_path / "moves.toml"
    scenario.write_text('[host]\npreset = "small"\n[vm]\nvcpus = 2\npin = [0, 1]\n'
                        'migrations = [{vcpu = 0, exit = 5, to = 6}, {vcpu = 1, exit = 9, to = 7}]\n')
    runs = runs_of(tmp_path, "--scenario", str(scenario), "--policy", "oncpu")
    run = runs["oncpu"]
    assert run["migrations_by_kind"] == {"scheduled": 2}
    assert run["host_sched_in_other_cpu"] == 2 and run["invariants"]["violations"] == []


def test_overcommitted_vcpus_take_turns(tmp_path):
    runs = runs_of(tmp_path, "--policy", "oncpu", "--vcpus", "2", "--pin", "3,3")
    run = runs["oncpu"]
    assert run["pmis"]["handled"] == 20 and run["migrations"] == 0
    assert run["host_perf"]["run_queue_waits"] > 0
    assert run["invariants"]["violations"] == []


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no thread affinity here")
def test_real_affinity_is_applied_to_each_vcpu_thread(tmp_path):
    out = str(tmp_path / "run")
    proc = subprocess.Popen([*LAUNCH, "--out", out, "--pmis", "100000",
                             "--policy", "oncpu", "--host-preset", "small", "--vcpus", "2",
                             "--pin", "0,5"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        log = os.path.join(out, "kvm-vm0.log")
        deadline = time.monotonic() + 30
        line = ""
        while "vCPU -> pCPU" not in line and time.monotonic() < deadline:
            time.sleep(0.1)
            text = read(log) if os.path.exists(log) else ""
            line = next((x for x in text.splitlines() if "vCPU -> pCPU" in x), "")
        kvm_pid = load_json(os.path.join(out, "pids.json"))["kvm-vm0"]
        cores = sorted(os.sched_getaffinity(0))
        mapping = line.split("real CPUs): ")[1]
        for part, pcpu in zip(mapping.split("), "), (0, 5)):
            tid = int(part.split("(")[1].split(",")[0])
            status = read(f"/proc/{kvm_pid}/task/{tid}/status")
            allowed = next(x for x in status.splitlines() if x.startswith("Cpus_allowed_list"))
            assert allowed.split()[-1] == str(cores[pcpu % len(cores)])
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    assert_no_process_left(out)


def test_a_guest_program_requests_its_own_moves(tmp_path):
    path = os.path.join(os.path.dirname(__file__), "migrate_program.py")
    runs = runs_of(tmp_path, "--policy", "always,oncpu", "--guest-program", path)
    for run in runs.values():
        assert run["migrations_by_kind"] == {"requested": 2}
        assert run["host_sched_in_other_cpu"] == 2 and run["oncpu_disagreements"] == 0
        assert all(c["passed"] for c in run["guest_program"]["checks"])
    assert runs["oncpu"]["handle_event"]["by_reason"] == {"skipped_active_here": 1}
