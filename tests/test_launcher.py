"""The launcher's promises to its user: run directories that never hurt existing files, a saved
configuration that replays, progress-based stuck detection, ports bound by their owners."""
from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import tomllib

import pytest

from common import config, launcher, results
from support import LAUNCH, ROOT, assert_no_process_left, launch, load_json, read

QUICK = ("--policy", "oncpu", "--pmis", "2", "--host-preset", "small")


def read_bytes(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def refused(capsys, *argv) -> str:
    """Run the launcher's main in-process on a refused --out; its one line of error."""
    assert launcher.main(list(argv)) == launcher.EXIT_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def snapshot(path) -> dict:
    return {p: (os.stat(p).st_mode, read_bytes(p) if os.path.isfile(p) else None)
            for p in [str(path), *(os.path.join(path, n) for n in os.listdir(path))]}


# --- the configuration as a scenario file ---------------------------------------------------------

@pytest.mark.parametrize("source", ["defaults", "seed.toml", "multi.toml", "odd"])
@pytest.mark.unit
def test_toml_writer_reads_back_to_the_same_configuration(source):
    if source == "defaults":
        cfg = config.DEFAULTS
    elif source == "odd":
        cfg = {"run": {"guest_program": 'a "q" \\ b\n\tc\x01\x7fé', "x": -3, "f": 0.1,
                       "big": 1e300, "list": [[1, 2], [], ["s"]]},
               "costs": {"with space": 1, "vmx_transition": 0}, "launch": {}}
    else:
        cfg = config.load_scenario(os.path.join(ROOT, "scenarios", source))
    assert tomllib.loads(config.to_toml(cfg)) == cfg


@pytest.mark.system
def test_saved_configuration_replays_the_same_counts(tmp_path):
    args = ("--policy", "always,oncpu", "--pmis", "6", "--host-preset", "small", "--seed", "3",
            "--guest-context-switch-ms", "3")
    proc, first, out = launch(tmp_path / "a", *args)
    assert proc.returncode == 0, proc.stderr
    saved = os.path.join(out, "config.toml")
    assert not os.path.exists(os.path.join(out, "config.json"))
    with open(saved, "rb") as f:
        replay = tomllib.load(f)
    assert "out" not in replay["launch"] and replay["guest"]["context_switch_ms"] == 3
    assert "max_exits" not in replay["run"]            # derived from the work: derived again
    proc, again, _ = launch(tmp_path / "b", "--scenario", saved)
    assert proc.returncode == 0, proc.stderr

    def counts(r):
        return (r["policy"], r["pmis"], r["exits"], r["samples"], r["guest_event_count"],
                r["perf_calls"], r["handle_event"]["modeled_ns"], r["modeled_total_ns"])
    assert [counts(r) for r in again["runs"]] == [counts(r) for r in first["runs"]]


@pytest.mark.system
def test_results_say_what_produced_them(tmp_path):
    proc, results, _ = launch(tmp_path, *QUICK)
    assert proc.returncode == 0, proc.stderr
    made = results["produced_by"]
    assert made["version"] == importlib.metadata.version("vpmu-emu")
    assert made["commit"] == "unknown" or re.fullmatch(r"[0-9a-f]{40}(-dirty)?", made["commit"])
    started = datetime.datetime.fromisoformat(made["started"])
    assert started.tzinfo is not None
    assert abs((datetime.datetime.now(datetime.timezone.utc) - started).total_seconds()) < 300
    assert made["command"].startswith("vpmu-launch --out ") and "--host-preset small" in \
        made["command"]


# --- budgets: a comparison never compares different amounts of work ------------------------------

@pytest.mark.system
def test_default_budgets_hold_every_policys_work(seed_run):
    """The budgets derived for --pmis 1000 hold 1000 PMIs at what each policy spent per PMI in
    the seed run (30 PMIs, one-time costs included); a 1000-PMI run takes a minute (measured in
    docs/operations.md), too long for the suite."""
    cfg, derived = launcher.resolve_config(launcher.parse_args(["--pmis", "1000"]))
    assert derived == {k: cfg["run"][k] for k in ("max_modeled_ms", "max_exits")}
    for run in seed_run[1]["runs"]:
        assert run["stop_reason"] == "pmis" and run["incomplete"] is None
        pmis = run["pmis"]["handled"]
        assert 1000 * run["modeled_total_ns"] / pmis < derived["max_modeled_ms"] * 1e6
        assert 1000 * run["exits"]["total"] / pmis < derived["max_exits"]


@pytest.mark.system
def test_a_one_time_cost_is_shown_apart_from_the_steady_state(seed_run):
    """deferred creates its event in kvm_pmu_handle_event, on the host PMU's first reservation;
    every later call is a few hundred ns."""
    proc, results, _ = seed_run
    deferred = next(r for r in results["runs"] if r["policy"] == "deferred")["handle_event"]
    modeled = deferred["modeled_ns"]
    assert modeled["first"] == modeled["max"] > 1e6 > 100 * modeled["steady"]["max"]
    assert modeled["steady"]["mean"] <= modeled["steady"]["p99"] < modeled["mean"]
    assert "first / steady mean" in proc.stdout and "p50 / p99 / max" in proc.stdout


@pytest.mark.unit
def test_budgets_set_by_hand_or_for_a_guest_program_are_not_derived(tmp_path):
    scenario = tmp_path / "s.toml"
    scenario.write_text("[run]\nmax_exits = 777\n")
    cfg, derived = launcher.resolve_config(launcher.parse_args(
        ["--scenario", str(scenario), "--max-modeled-ms", "5"]))
    assert derived == {} and (cfg["run"]["max_exits"], cfg["run"]["max_modeled_ms"]) == (777, 5)
    program = os.path.join(ROOT, "tests", "migrate_program.py")
    cfg, derived = launcher.resolve_config(launcher.parse_args(["--guest-program", program]))
    assert derived == {} and cfg["run"]["max_exits"] == config.DEFAULTS["run"]["max_exits"]


@pytest.mark.system
def test_a_run_a_budget_stopped_says_so_on_its_own_line_and_exits_4(tmp_path):
    proc, results, _ = launch(tmp_path, "--policy", "always,reuse", "--pmis", "30",
                              "--max-modeled-ms", "1000")
    assert proc.returncode == launcher.EXIT_INCOMPLETE, proc.stdout + proc.stderr
    always, reuse = results["runs"]
    assert always["stop_reason"] == "max_modeled_ms" and reuse["stop_reason"] == "pmis"
    line = next(x for x in proc.stdout.splitlines() if "INCOMPLETE" in x).strip()
    assert line == always["incomplete"] and reuse["incomplete"] is None
    handled = always["pmis"]["handled"]
    assert 0 < handled < 30 and f"{handled} of 30 PMIs handled" in line
    assert "run.max_modeled_ms = 1,000 ms" in line and "--max-modeled-ms" in line


# --- run directories ---------------------------------------------------------------------------

@pytest.mark.unit
def test_a_non_empty_folder_is_refused_and_left_as_it_was(tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir(mode=0o755)
    (folder / "notes.txt").write_text("keep me")
    before = snapshot(folder)
    err = refused(capsys, "--out", str(folder), *QUICK)
    assert str(folder) in err and "not empty" in err and "--force" in err
    assert snapshot(folder) == before


@pytest.mark.unit
def test_an_existing_file_is_refused(tmp_path, capsys):
    path = tmp_path / "results.txt"
    path.write_text("keep me")
    err = refused(capsys, "--out", str(path), *QUICK)
    assert str(path) in err and "not a directory" in err
    assert path.read_text() == "keep me"


@pytest.mark.unit
def test_any_os_error_is_one_line_naming_the_path(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    err = refused(capsys, "--out", str(tmp_path / "file" / "run"), *QUICK)
    assert str(tmp_path / "file") in err and "Not a directory" in err


@pytest.mark.system
def test_a_read_only_file_system_is_one_line(tmp_path):
    """--out on a read-only bind mount, made in a mount namespace of the test's own (root
    ignores a folder's permissions, not a read-only mount)."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) is not installed")
    ro = tmp_path / "ro"
    ro.mkdir()
    script = (f"mount --bind -o ro {ro} {ro} && touch {ro}/probe 2>/dev/null; "
              f"test ! -e {ro}/probe || exit 99; exec \"$@\"")
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", *LAUNCH, "--out",
                           str(ro / "run"), *QUICK], capture_output=True, text=True, timeout=60)
    if proc.returncode == 99 or "unshare:" in proc.stderr or "mount:" in proc.stderr:
        pytest.skip(f"no read-only bind mount here: {proc.stderr.strip()}")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert str(ro / "run") in proc.stderr and "Read-only file system" in proc.stderr
    assert os.listdir(ro) == []


@pytest.mark.unit
def test_folders_it_makes_are_private_and_existing_ones_keep_their_mode(tmp_path, monkeypatch):
    os.chmod(tmp_path, 0o755)
    monkeypatch.chdir(tmp_path)
    launcher.make_private_dirs(os.path.join("a", "b"))      # relative to the current folder
    assert [oct(os.stat(p).st_mode & 0o777) for p in (tmp_path, tmp_path / "a",
                                                       tmp_path / "a" / "b")] == \
        ["0o755", "0o700", "0o700"]


@pytest.mark.system
def test_an_empty_folder_is_used_as_it_is_and_force_makes_a_subfolder(tmp_path):
    folder = tmp_path / "shared"
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)
    proc = subprocess.run([*LAUNCH, "--out", str(folder), *QUICK], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (folder / "results.json").exists() and oct(folder.stat().st_mode & 0o777) == "0o755"
    before = snapshot(folder)
    proc = subprocess.run([*LAUNCH, "--out", str(folder), "--force", *QUICK],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    new = [n for n in os.listdir(folder) if str(folder / n) not in before]
    assert len(new) == 1 and (folder / new[0] / "results.json").exists()
    assert oct((folder / new[0]).stat().st_mode & 0o777) == "0o700"
    assert {p: v for p, v in snapshot(folder).items() if p in before and p != str(folder)} == \
        {p: v for p, v in before.items() if p != str(folder)}
    assert oct(folder.stat().st_mode & 0o777) == "0o755"


# --- what a run prints ----------------------------------------------------------------------------

@pytest.mark.unit
def test_the_banner_describes_what_runs():
    def banner(*argv):
        cfg, derived = launcher.resolve_config(launcher.parse_args(list(argv)))
        return launcher.banner(cfg, derived, "RUN")
    seed = banner()
    assert "guest runs perf record -e instructions -c 10,000,000, 200 PMIs per vCPU" in seed
    assert "(derived from the work)" in seed and seed.endswith("run directory RUN")
    multi = banner("--scenario", os.path.join(ROOT, "scenarios", "multi.toml"))
    assert ("perf record -e cycles -F 1,000, perf record -e instructions -c 5,000,000, perf stat "
            "-e branches,branch_misses,llc_refs,llc_misses,ref_cycles,instructions, the NMI "
            "watchdog, 60 PMIs per vCPU") in multi
    program = banner("--guest-program", os.path.join(ROOT, "guest", "programs",
                                                     "exact_count.py"))
    assert "guest program exact_count.py on every vCPU" in program
    assert "perf record" not in program and "derived" not in program


@pytest.mark.unit
def test_check_lines_name_only_what_applies():
    short = {"kind": "uncounted_trapped_instructions", "vcpu": 0, "counter": 32,
             "detail": "count_mismatch: short by 2"}
    run = {"policy": "oncpu", "invariants": {"violations": [
               {"kind": "missing_pmi", "vcpu": 1, "counter": 0, "detail": "late"}],
               "deviations": {short["kind"]: {"count": 7, "examples": [short]}}},
           "guest_program": {"checks": [{"vcpu": 0, "name": "exact", "passed": True,
                                         "detail": ""}], "error": "vcpu 0: ValueError: boom"}}
    assert results.check_lines(run) == [
        "PASS [oncpu] vcpu 0 exact",
        "VIOLATION [oncpu] missing_pmi vcpu 1 counter 0: late",
        "VIOLATION [oncpu] program_error: vcpu 0: ValueError: boom",
        "DEVIATION [oncpu] uncounted_trapped_instructions: 7 (a known limit of the release; "
        "fails only with --strict), e.g. vcpu 0 counter 32: count_mismatch: short by 2"]
    assert len(results.failed_checks(run)) == 2
    assert results.failed_checks(run, strict=True) == [*results.failed_checks(run), short]


@pytest.mark.system
def test_host_log_names_the_run_and_policy_in_one_summary_line(seed_run):
    log = read(os.path.join(seed_run[2], "host.log"))
    lines = re.findall(r"run (\d) summary \(policy (\w+)\): host PMU reserved \d+ and released "
                       r"\d+ times, static key enabled \d+ and disabled \d+ times, \d+ overflows",
                       log)
    assert lines == [("0", "always"), ("1", "oncpu"), ("2", "reuse"), ("3", "deferred")]
    assert "summary: {" not in log


@pytest.mark.system
def test_bench_floor_leaves_nothing_behind(tmp_path):
    for transport in ("ipc", "tcp"):
        proc = subprocess.run([LAUNCH[0], os.path.join(ROOT, "scripts", "bench_floor.py"),
                               transport], capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, TMPDIR=str(tmp_path)))
        assert proc.returncode == 0 and "transport floor" in proc.stdout, proc.stderr
    assert os.listdir(tmp_path) == []


# --- processes: progress and ports -----------------------------------------------------------

@pytest.mark.system
def test_progress_moves_in_a_healthy_run(tmp_path):
    proc, results, _ = launch(tmp_path, "--policy", "oncpu", "--pmis", "40", "--host-preset",
                              "small", "--stuck-after", "1.5")
    assert proc.returncode == 0, proc.stderr
    assert results["runs"][0]["pmis"]["handled"] == 40


@pytest.mark.parametrize("fault", ["kvm_stall", "guest_stall"])
@pytest.mark.system
def test_a_process_that_beats_but_makes_no_progress_is_stuck(tmp_path, fault):
    out = str(tmp_path / "run")
    proc = subprocess.run([*LAUNCH, "--out", out, *QUICK, "--stuck-after", "1.5"],
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, VPMU_FAULTS=fault))
    assert proc.returncode == 2
    assert "stuck: guest-vm0 and kvm-vm0 made no progress for 1.5 s" in proc.stderr
    if fault == "kvm_stall":
        assert "kvm-vm0: 1 steps" in proc.stderr and "serving a cpuid exit" in proc.stderr
    else:
        assert "kvm-vm0: no step yet" in proc.stderr and "making a cpuid exit" in proc.stderr
    assert "no heartbeat" not in proc.stderr
    results = load_json(os.path.join(out, "results.json"))
    assert results["complete"] is False and "stuck" in results["error"]
    assert_no_process_left(out)


@pytest.mark.unit
def test_every_process_binds_its_own_tcp_port(tmp_path):
    cfg, _ = launcher.resolve_config(launcher.parse_args(["--transport", "tcp",
                                                          "--insecure-tcp"]))
    run = launcher.Launcher(cfg, str(tmp_path))
    try:
        listen = {name: child.cmd[child.cmd.index("--listen") + 1]
                  for name, child in run.children.items() if "--listen" in child.cmd}
    finally:
        run.shutdown("test", failed=False)
    assert listen == {"host": "tcp://127.0.0.1:*", "kvm-vm0": "tcp://127.0.0.1:*"}
    assert not hasattr(launcher, "free_port")
