"""The real processes over real sockets, through the launcher."""
import os
import re
import subprocess
import sys

import pytest

from common import config, msr
from kvm.generations import GENERATIONS
from support import COUNTS_TRAPPED, LAUNCH, ROOT, assert_no_process_left, launch, load_json, read

pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]
PMIS = config.DEFAULTS["run"]["pmis"]          # per vCPU in the seed scenario (seed_run)


def by_policy(results):
    return {r["policy"]: r for r in results["runs"]}


def test_seed_scenario_runs_every_policy(seed_run):
    proc, results, out = seed_run
    assert proc.returncode == 0, proc.stderr
    assert results["complete"] is True
    runs = by_policy(results)
    assert set(runs) == {"always", "oncpu", "reuse", "deferred"}
    for r in runs.values():
        assert r["pmis"]["handled"] == PMIS
        assert r["pmis"]["injected"] == r["pmis"]["overflows"] == PMIS
        assert r["invariants"]["checked"] > 0 and r["invariants"]["violations"] == []
        assert (msr.UNCOUNTED_TRAPPED in r["invariants"]["deviations"]) == \
            (r["policy"] not in COUNTS_TRAPPED), r["policy"]      # a known limit, reported
        assert r["host"] == {"preset": "skx-4s", "cpus": 224, "watchdog": False,
                             "kernel": "4.20", "x2apic": "cluster", "event_binding": "task"}
        assert (r["generation"], r["release"]) == (r["policy"], GENERATIONS[r["policy"]].label)
        assert r["exits"]["by_reason"]["host_timer"] > 0       # ticks, switched or not
        assert r["guest_nmi_handler"]["modeled_ns"]["mean"] > 0
        assert r["vms"] == 1 and r["perf_costs"]["create"]["calls"] >= 1
        guest_share = r["modeled_guest_ns"] / r["modeled_total_ns"]
        assert r["modeled_vpmu_share"] + r["modeled_other_exits_share"] + guest_share == \
            pytest.approx(1)
        assert 0 < r["modeled_other_exits_share"] < r["modeled_vpmu_share"]
    assert "kvm_pmu_handle_event calls" in proc.stdout


CHECK_LINES = ("INCOMPLETE", "PASS", "FAIL", "VIOLATION", "DEVIATION")   # what follows the table


def printed_table(text: str) -> dict[str, list[str]]:
    """The comparison table in a run's output: row name -> one cell per policy."""
    lines = text.splitlines()
    heads = [f"{p} ({GENERATIONS[p].label})" for p in config.POLICIES]
    start = next(i for i, line in enumerate(lines) if re.split(r"\s{2,}", line.strip()) == heads)
    rows = {}
    for line in lines[start + 1:]:
        if not line.strip() or line.startswith("```") or line.split()[0] in CHECK_LINES:
            break
        name, *cells = re.split(r"\s{2,}", line.strip())
        rows[name] = cells
    return rows


def test_the_readme_shows_what_the_seed_scenario_prints(seed_run):
    """README.md's sample run is ./scripts/launch's output, but for measured times."""
    shown = printed_table(read(os.path.join(ROOT, "README.md")))
    printed = printed_table(seed_run[0].stdout)
    assert set(shown) == set(printed)
    for name in set(printed) - {"measured mean", "measured p50 / p99 / max",
                                "measured first / steady mean", "wall time"}:
        assert shown[name] == printed[name], name


def test_guest_time_is_the_same_work_under_every_policy(seed_run):
    """The guest retires the same events under each policy; only where the exits cut them
    differs, and that must not change the guest's modeled time (no ns dropped per exit). What
    its counters show differs by the trapped instructions a release counts (5.17+)."""
    runs = by_policy(seed_run[1])
    assert len({r["modeled_guest_ns"] for r in runs.values()}) == 1, \
        {p: r["modeled_guest_ns"] for p, r in runs.items()}
    plain = {r["guest_event_count"] for p, r in runs.items() if p not in COUNTS_TRAPPED}
    assert len(plain) == 1
    for policy in COUNTS_TRAPPED:
        extra = runs[policy]["guest_event_count"] - min(plain)
        assert 0 < extra <= runs[policy]["emulated_instructions"], policy


def test_always_reprograms_every_call_and_oncpu_skips(seed_run):
    runs = by_policy(seed_run[1])
    a, o = runs["always"]["handle_event"], runs["oncpu"]["handle_event"]
    assert a["calls"] == a["reprogrammed"] == PMIS and a["skipped"] == 0
    assert a["by_reason"] == {"reprogrammed_unconditionally": PMIS}
    assert o["calls"] == o["skipped"] == PMIS and o["reprogrammed"] == 0
    assert o["by_reason"] == {"skipped_active_here": PMIS}
    assert runs["oncpu"]["reprogram_counter"]["by_cause"]["handle_event"] == 0
    # the difference is visible measured as well as modeled
    assert a["modeled_ns"]["mean"] > 1000 * o["modeled_ns"]["mean"]
    assert a["measured_ns"]["p50"] > o["measured_ns"]["p50"]


def test_perf_calls_per_guest_pmi_follow_the_release(seed_run):
    """docs/generations.md §4: per PMI of the seed scenario, 4.20 reads, releases and creates
    twice, the RFC once; 5.7 pauses 3 times (every reprogram, paused or not), sets 3 periods
    (the counter write's from the written value), enables twice and reads twice (RDPMC and the
    counter write read the paused event); 6.12 pauses, sets periods and enables 3 times (no
    pause or read while paused; the handler's enabling WRMSR and its LVTPC write are counted
    instructions, each a reprogram), in 4 kvm_pmu_handle_event passes with work."""
    runs = by_policy(seed_run[1])
    expect = {"always": {"read": 2, "release": 2, "create": 2},
              "oncpu": {"read": 1, "release": 1, "create": 1},
              "reuse": {"pause": 3, "period": 3, "enable": 2, "read": 2},
              "deferred": {"pause": 3, "period": 3, "enable": 3}}
    for policy, per_pmi in expect.items():
        calls = runs[policy]["perf_calls"]
        got = {op: calls[op] / PMIS for op in per_pmi}   # plus the start's few calls
        assert got == pytest.approx(per_pmi, abs=0.02), (policy, got)
        others = set(calls) - set(per_pmi) - {"create", "read"}
        assert sum(calls[op] for op in others) == 0, (policy, calls)
    d = runs["deferred"]
    assert d["emulated_instructions"] == pytest.approx(2 * PMIS, abs=3)
    assert d["handle_event"]["by_reason"]["resumed"] == pytest.approx(3 * PMIS, abs=3)
    assert runs["reuse"]["handle_event"]["by_reason"] == {"resumed": PMIS}
    for policy in ("always", "oncpu", "reuse"):
        assert runs[policy]["emulated_instructions"] == 0


def test_events_created_and_released_per_guest_pmi(seed_run):
    """always: two per PMI (handle_event and the handler's GLOBAL_CTRL toggle); oncpu: one;
    reuse and deferred: none after the first creation."""
    runs = by_policy(seed_run[1])
    per_pmi = {"always": 2, "oncpu": 1, "reuse": 0, "deferred": 0}
    for policy, n in per_pmi.items():
        calls = runs[policy]["perf_calls"]
        assert calls["create"] == 1 + n * PMIS, policy
        assert calls["release"] == n * PMIS, policy
    for policy in ("reuse", "deferred"):
        r = runs[policy]
        assert r["perf_calls"]["pause"] >= 2 * PMIS and r["perf_calls"]["enable"] >= 2 * PMIS
        assert r["handle_event"]["by_reason"].get("resumed", 0) >= PMIS
        assert r["handle_event"]["modeled_ns"]["p50"] < 10_000
    assert runs["always"]["entry_retries"] == PMIS and runs["deferred"]["entry_retries"] == 0


def test_guest_visible_results_are_identical_across_policies_of_one_pmu(seed_run):
    """Samples and PMIs are the same under every release; the exits differ only by the guest's
    RDMSR of PERF_CAPABILITIES where CPUID has PDCM (5.8+), and the counts only by the trapped
    instructions a release counts (test above)."""
    runs = by_policy(seed_run[1])

    def seen(r):
        exits = {k: v for k, v in r["exits"]["by_reason"].items() if k != "host_timer"}
        exits["rdmsr"] -= GENERATIONS[r["policy"]].full_width_writes
        count = None if r["policy"] in COUNTS_TRAPPED else r["guest_event_count"]
        return r["samples"], r["pmis"], sorted(exits.items()), count
    assert len({repr(seen(r)[:3]) for r in runs.values()}) == 1
    assert len({seen(r)[3] for r in runs.values()} - {None}) == 1


def test_run_directory_and_no_process_left(seed_run):
    import os
    _, _, out = seed_run
    for name in ("host.log", "kvm-vm0.log", "guest-vm0.log", "config.toml", "results.json"):
        assert os.path.exists(os.path.join(out, name)), name
    assert oct(os.stat(out).st_mode & 0o777) == "0o700"
    assert "READY" in read(os.path.join(out, "kvm-vm0.log"))
    assert_no_process_left(out)


def test_docs_results_md_names_every_key_of_results_json(seed_run):
    """Each key of results.json (and of each run) is documented, and each key the document
    names is one the report writes (or writes after a failure / for a guest program)."""
    import re
    _, results, _ = seed_run
    text = read(os.path.join(ROOT, "docs", "results.md"))
    named = set(re.findall(r"`([a-z_0-9]+)`", text))
    run = results["runs"][0]
    for key in [*results, *run, *run["handle_event"], *run["pmis"], *run["host_perf"]]:
        assert key in named, key

    def keys(value):
        if isinstance(value, dict):
            return set(value) | {k for v in value.values() for k in keys(v)}
        if isinstance(value, list):
            return {k for v in value for k in keys(v)}
        return set()
    written = keys(results) | {"partial_reports", "guest_program", "checks", "errors"}
    files = {"config", "pids", "keys", "launcher", "results"}
    assert not named - written - files, sorted(named - written - files)


def test_over_tcp(tmp_path):
    proc, results, out = launch(tmp_path, "--transport", "tcp", "--pmis", "10",
                                "--policy", "oncpu", "--host-preset", "small")
    assert proc.returncode == 0, proc.stderr
    run = results["runs"][0]
    assert run["pmis"]["handled"] == 10 and run["handle_event"]["skipped"] == 10
    assert "tcp://" in read(f"{out}/host.log")
    assert_no_process_left(out)


def test_invalid_configuration_is_refused_before_any_process_starts(tmp_path):
    proc, results, out = launch(tmp_path, "--policy", "sometimes")
    assert proc.returncode == 2
    assert "run.policies" in proc.stderr and "sometimes" in proc.stderr
    assert results == {}
    bad = tmp_path / "bad.toml"
    bad.write_text('[host]\npreset = "skx-4s"\nwatchdog = "maybe"\n')
    proc, _, _ = launch(tmp_path, "--scenario", str(bad))
    assert proc.returncode == 2 and "bad.toml" in proc.stderr and "host.watchdog" in proc.stderr


def test_sigint_stops_every_process_and_keeps_partial_counts(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    out = str(tmp_path / "run")
    proc = subprocess.Popen([*LAUNCH, "--out", out, "--pmis", "1000000",
                             "--policy", "oncpu", "--host-preset", "small"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not os.path.exists(os.path.join(out, "pids.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    stdout, _ = proc.communicate(timeout=30)
    assert time.monotonic() - t0 < 5.0
    assert proc.returncode == 3
    results = load_json(os.path.join(out, "results.json"))
    assert results["complete"] is False and results["error"] == "interrupted"
    run = results["runs"][0]
    assert run["stop_reason"] == "interrupted" and run["pmis"]["handled"] > 0
    assert run["invariants"]["violations"] == []
    assert_no_process_left(out)


def test_a_process_started_by_hand_joins_the_run(tmp_path):
    import subprocess
    import sys
    import time
    out = str(tmp_path / "run")
    launcher = subprocess.Popen([*LAUNCH, "--out", out, "--transport", "tcp",
                                 "--external", "host", "--pmis", "5", "--host-preset", "small"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = ""
    while "--control" not in line:
        line = launcher.stdout.readline()
        assert line, launcher.stderr.read()
    import os
    import shlex
    argv = shlex.split(line)                       # the printed command, pasted as it is
    assert os.path.isabs(argv[0]) and os.access(argv[0], os.X_OK), argv[0]
    host = subprocess.Popen(argv)
    try:
        stdout, stderr = launcher.communicate(timeout=120)
        assert launcher.returncode == 0, stderr
        assert host.wait(timeout=10) == 0              # SHUTDOWN reached it too
    finally:
        for p in (launcher, host):
            if p.poll() is None:
                p.kill()
                time.sleep(0.1)
    assert "invariants checked" in stdout


def test_every_flag_has_a_scenario_key(tmp_path):
    import os
    out = tmp_path / "from-scenario"
    scenario = tmp_path / "s.toml"
    scenario.write_text(f'[run]\npmis = 3\npolicies = ["oncpu"]\n[host]\npreset = "small"\n'
                        f'[launch]\nout = "{out}"\nexplain_costs = true\n')
    proc = subprocess.run([*LAUNCH, "--scenario", str(scenario)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "cost parameters" in proc.stdout and "[oncpu] one kvm_pmu_handle_event" in proc.stdout
    assert os.path.exists(out / "results.json")
    scenario.write_text('[launch]\nexternal = ["hypervisor"]\n')
    proc = subprocess.run([*LAUNCH, "--scenario", str(scenario)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "launch.external" in proc.stderr
