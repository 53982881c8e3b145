"""Guest programs, perf sessions and the ground truth, through the real processes."""
import os
import time

import pytest

from common import faults, msr
from support import COUNTS_TRAPPED, ROOT, launch, read

pytestmark = pytest.mark.timeout(300)
PROGRAMS = os.path.join(ROOT, "guest", "programs")


def program_runs(tmp_path, name):
    proc, results, _ = launch(tmp_path, "--guest-program", os.path.join(PROGRAMS, name),
                              "--policy", "all", "--host-preset", "small")
    return proc, {r["policy"]: r for r in results["runs"]}


@pytest.mark.system
@pytest.mark.parametrize("name", ["exact_count.py", "gp_rules.py", "cmask_edge_inv.py"])
def test_programs_pass_under_every_policy(tmp_path, name):
    proc, runs = program_runs(tmp_path, name)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for run in runs.values():
        prog = run["guest_program"]
        assert prog["error"] is None and prog["checks"]
        assert all(c["passed"] for c in prog["checks"]), prog["checks"]
        assert run["invariants"]["violations"] == []
    assert "PASS [always] vcpu 0" in proc.stdout


@pytest.mark.system
def test_trapped_instructions_count_only_on_the_releases_that_count_them(tmp_path):
    """trapped_count.py passes where KVM counts the instructions it skips (5.17+); elsewhere its
    checks fail and the oracle names the shortfall as the release's known limit, with no
    violation of its own."""
    proc, runs = program_runs(tmp_path, "trapped_count.py")
    assert proc.returncode == (0 if COUNTS_TRAPPED == set(runs) else 1), proc.stdout
    for policy, run in runs.items():
        checks = run["guest_program"]["checks"]
        deviations = run["invariants"]["deviations"]
        assert run["invariants"]["violations"] == [], policy
        if policy in COUNTS_TRAPPED:
            assert all(c["passed"] for c in checks) and deviations == {}, policy
        else:
            assert len(checks) == 2 and not any(c["passed"] for c in checks), policy
            short = deviations[msr.UNCOUNTED_TRAPPED]
            assert short["count"] == 2, policy               # GP 0 and GP 1, one read each
            assert sorted(x["deficit"] for x in short["examples"]) == [21, 22], policy
            assert f"DEVIATION [{policy}] {msr.UNCOUNTED_TRAPPED}: 2" in proc.stdout


@pytest.mark.system
def test_strict_fails_a_run_on_a_deviation(tmp_path):
    """The seed's counter counts OS: its handler's trapped WRMSRs are a deviation on a release
    that does not count them; --strict makes that exit 1, without it the run passes."""
    policy = next(p for p in ("always", "oncpu", "reuse", "deferred") if p not in COUNTS_TRAPPED)
    args = ("--policy", policy, "--pmis", "5", "--host-preset", "small")
    plain, results, _ = launch(tmp_path / "plain", *args)
    strict, strict_results, _ = launch(tmp_path / "strict", *args, "--strict")
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert strict.returncode == 1, strict.stdout + strict.stderr
    assert strict_results["scenario"]["run"]["strict"] is True
    for r in (results, strict_results):
        assert r["runs"][0]["invariants"]["violations"] == []
        assert msr.UNCOUNTED_TRAPPED in r["runs"][0]["invariants"]["deviations"]


@pytest.mark.system
def test_stale_period_of_the_rfc_shows_up_as_spurious_pmis(tmp_path):
    """No reprogramming in the handler: the RFC keeps the host event's period across the
    overflow, so it fires again every period while the guest counter does not wrap."""
    proc, runs = program_runs(tmp_path, "overflow_pmi.py")
    assert proc.returncode == 1
    assert runs["oncpu"]["invariants"]["by_kind"].get("spurious_pmi", 0) >= 1
    for policy in ("always", "reuse", "deferred"):
        assert runs[policy]["invariants"]["violations"] == [], policy
        assert all(c["passed"] for c in runs[policy]["guest_program"]["checks"])


@pytest.mark.system
def test_reload_without_toggle_loses_pmis_on_4_20(tmp_path):
    """A handler that only rewrites the counter: 4.20 re-created the event with period 0 and
    never updated it on a counter write; 5.7+ follow the write."""
    proc, runs = program_runs(tmp_path, "reload_in_handler.py")
    assert proc.returncode == 1
    assert runs["always"]["invariants"]["by_kind"].get("missing_pmi", 0) >= 1
    for policy in ("oncpu", "reuse", "deferred"):
        assert runs[policy]["invariants"]["violations"] == [], policy


@pytest.mark.system
def test_a_failing_program_exits_1_with_its_error_and_its_own_frames(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def arm(cpu):\n    cpu.wrmsr(0x186, 1 << 63)\n\n"
                   "def main(cpu):\n    cpu.check(False, 'deliberate')\n    arm(cpu)\n")
    proc, results, out = launch(tmp_path, "--guest-program", str(bad), "--policy", "oncpu",
                                "--host-preset", "small")
    assert proc.returncode == 1
    prog = results["runs"][0]["guest_program"]
    assert prog["checks"] == [{"name": "deliberate", "passed": False, "detail": "", "vcpu": 0}]
    frames = [f"{bad}:6 in main: arm(cpu)", f"{bad}:2 in arm: cpu.wrmsr(0x186, 1 << 63)"]
    error = "GeneralProtection: WRMSR 0x186 = 0x8000000000000000"   # a reserved bit: #GP
    assert prog["errors"] == [{"vcpu": 0, "error": error, "traceback": frames}]
    assert "FAIL [oncpu] vcpu 0 deliberate" in proc.stdout
    assert f"FAIL [oncpu] vcpu 0 main raised {error}\n      {frames[0]}\n      {frames[1]}\n" \
        in proc.stdout
    log = read(os.path.join(out, "guest-vm0.log"))
    assert f"guest program failed: {error}\n  {frames[0]}\n  {frames[1]}\n" in log
    assert "guest/cpu.py" not in proc.stdout + log       # none of the emulator's frames


@pytest.mark.system
@pytest.mark.parametrize("source, told", [
    ("def main(cpu):\n    cpu.retire(instructions=1\n", "line 2: SyntaxError"),
    ("def setup(cpu):\n    pass\n", "main: not defined"),
])
def test_a_program_that_cannot_run_is_refused_before_anything_starts(tmp_path, source, told):
    bad = tmp_path / "bad.py"
    bad.write_text(source)
    proc, results, out = launch(tmp_path, "--guest-program", str(bad), "--host-preset", "small")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and f"{bad}: {told}" in proc.stderr, proc.stderr
    assert proc.stdout == "" and not os.path.exists(out)       # no run, no process


@pytest.mark.system
def test_a_program_that_only_retires_ends_by_its_exit_budget(tmp_path):
    """while True: cpu.retire(instructions=1) — no exit of its own, so the guest's flush
    exits carry what it retired and let the budget end it, with nobody blamed."""
    spin = tmp_path / "spin.py"
    spin.write_text("def main(cpu):\n    while True:\n        cpu.retire(instructions=1)\n")
    t0 = time.monotonic()
    # --lost-after 10: a busy shared machine must not stand in for the stall this is about
    proc, results, out = launch(tmp_path, "--guest-program", str(spin), "--policy", "oncpu",
                                "--host-preset", "small", "--max-exits", "20",
                                "--lost-after", "10", timeout=120)
    assert time.monotonic() - t0 < 90
    assert proc.returncode == 4, proc.stdout + proc.stderr     # a budget, not its own end
    assert "INCOMPLETE [oncpu]" in proc.stdout and "--max-exits" in proc.stdout
    assert results["complete"] and results["error"] is None
    assert set(results["exit_codes"].values()) == {0}
    run = results["runs"][0]
    assert run["stop_reason"] == "max_exits"
    assert run["exits"]["by_reason"]["flush"] >= 18
    assert run["modeled_guest_ns"] > 0 and run["guest_program"]["error"] is None
    assert "stopped answering" not in proc.stderr and "died" not in proc.stderr


@pytest.mark.parametrize("fault, kind", [("kvm_drop_pmi", "missing_pmi"),
                                         ("kvm_late_pmi", "late_pmi"),
                                         ("kvm_spurious_pmi", "spurious_pmi"),
                                         ("kvm_count_skew", "count_mismatch"),
                                         ("kvm_status_skew", "status_mismatch")])
@pytest.mark.system
def test_the_checker_catches_each_kind_of_broken_path(tmp_path, monkeypatch, fault, kind):
    assert fault in faults.KNOWN
    monkeypatch.setenv("VPMU_FAULTS", fault)
    proc, results, _ = launch(tmp_path, "--policy", "oncpu", "--pmis", "5",
                              "--host-preset", "small", "--max-modeled-ms", "2000")
    assert proc.returncode == 1, proc.stdout
    assert results["runs"][0]["invariants"]["by_kind"].get(kind, 0) >= 1
    assert f"VIOLATION [oncpu] {kind}" in proc.stdout


@pytest.mark.system
def test_sessions_freq_stat_multiplexing_and_guest_watchdog(tmp_path):
    proc, results, _ = launch(tmp_path, "--scenario", os.path.join(ROOT, "scenarios",
                                                                   "multi.toml"),
                              "--policy", "all", "--pmis", "40",
                              "--max-modeled-ms", "600000")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for run in results["runs"]:
        assert run["vcpus"] == 2 and run["invariants"]["violations"] == []
        assert (msr.UNCOUNTED_TRAPPED in run["invariants"]["deviations"]) == \
            (run["policy"] not in COUNTS_TRAPPED), run["policy"]
        assert run["guest_ticks"] > 0 and run["guest_rotations"] > 0
        for vcpu in run["guest_events"]:
            events = {e["name"]: e for e in vcpu["events"]}
            assert events["watchdog:cycles"]["running_ns"] == events["watchdog:cycles"][
                "enabled_ns"]
            assert events["record:cycles"]["samples"] > 0
            assert 0 < events["stat:llc_refs"]["running_ns"] < events["stat:llc_refs"][
                "enabled_ns"]
    # the same guest view under the releases that count the same instructions (counting the
    # trapped ones adds to the guest's instruction events)
    for counts in (True, False):
        views = [r["guest_events"] for r in results["runs"]
                 if (r["policy"] in COUNTS_TRAPPED) == counts]
        assert all(v == views[0] for v in views)


@pytest.mark.unit
def test_workload_streams_do_not_depend_on_interleaving():
    from guest.workload import Workload, streams
    one = [Workload("compute", r, 2.5).next_slice() for r in streams(7, 3)]
    two = [Workload("compute", r, 2.5).next_slice() for r in reversed(streams(7, 3))][::-1]
    assert one == two and one[0] != one[1]


@pytest.mark.system
def test_guest_context_switches_toggle_the_pmu_and_keep_counts_right(tmp_path):
    base = launch(tmp_path / "base", "--policy", "always", "--pmis", "20",
                  "--host-preset", "small")[1]["runs"][0]
    proc, results, _ = launch(tmp_path / "cs", "--policy", "always", "--pmis", "20",
                              "--host-preset", "small", "--guest-context-switch-ms", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = results["runs"][0]
    assert run["guest_context_switches"] > 0 and run["invariants"]["violations"] == []
    assert run["reprogram_counter"]["by_cause"]["msr_write"] > \
        base["reprogram_counter"]["by_cause"]["msr_write"]
    assert run["perf_calls"]["create"] > base["perf_calls"]["create"]


@pytest.mark.system
def test_a_fixed_vector_pmi_waits_for_the_interrupt_flag(tmp_path):
    path = os.path.join(ROOT, "tests", "fixed_vector_program.py")
    proc, results, _ = launch(tmp_path, "--guest-program", path, "--policy", "all",
                              "--host-preset", "small")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for run in results["runs"]:
        assert all(c["passed"] for c in run["guest_program"]["checks"]), run["guest_program"]
        assert run["invariants"]["violations"] == []
