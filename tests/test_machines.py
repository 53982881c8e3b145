"""Several machines: ``--plan`` prints the command that starts each process on its machine, and
those commands, run as printed (here on one machine, over 127.0.0.x addresses), make a run."""
import os
import shlex
import subprocess

import pytest

from support import LAUNCH, assert_no_process_left, load_json, read

pytestmark = [pytest.mark.system, pytest.mark.timeout(120)]


def test_the_planned_commands_run_each_process_where_it_is_told(tmp_path):
    out = str(tmp_path / "run")
    launcher = subprocess.Popen([*LAUNCH, "--plan", "--transport", "tcp", "--out", out,
                                 "--bind", "127.0.0.1", "--host-addr", "127.0.0.2",
                                 "--kvm-addr", "127.0.0.3", "--pmis", "5", "--host-preset",
                                 "small", "--policy", "always,oncpu"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started = []
    try:
        plan = []
        while not plan or "waiting up to" not in plan[-1]:
            plan.append(launcher.stdout.readline())
            assert plan[-1], launcher.stderr.read()
        assert load_json(os.path.join(out, "pids.json")) == {}        # it started nothing
        commands = [shlex.split(line) for line in plan if line.startswith("    ")]
        assert [c[c.index("--name") + 1] for c in commands] == ["host", "kvm-vm0", "guest-vm0"]
        for argv in commands:                              # pasted as printed, one per machine
            name = argv[argv.index("--name") + 1]
            keys = argv[argv.index("--keys") + 1]
            assert f"copy {keys} to its machine" in "".join(plan)
            secrets = [f for f in os.listdir(keys) if f.endswith(".key_secret")]
            assert secrets == [f"{name}.key_secret"]      # no machine holds another's secret
            started.append(subprocess.Popen(argv))
        stdout, stderr = launcher.communicate(timeout=90)
        assert launcher.returncode == 0, stderr
        assert [p.wait(timeout=10) for p in started] == [0, 0, 0]    # SHUTDOWN reached them
    finally:
        for p in (launcher, *started):
            if p.poll() is None:
                p.kill()
                p.wait()
    results = load_json(os.path.join(out, "results.json"))
    assert results["complete"] and [r["policy"] for r in results["runs"]] == ["always", "oncpu"]
    assert all(r["pmis"]["handled"] == 5 and not r["invariants"]["violations"]
               for r in results["runs"])
    assert "tcp://127.0.0.2:" in read(os.path.join(out, "host.log"))
    assert "tcp://127.0.0.3:" in read(os.path.join(out, "kvm-vm0.log"))
    assert "INSECURE" not in read(os.path.join(out, "guest-vm0.log"))
    assert_no_process_left(out)


def test_plan_needs_tcp(tmp_path):
    proc = subprocess.run([*LAUNCH, "--plan", "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--transport tcp" in proc.stderr
    assert proc.stderr.count("\n") == 1 and not os.path.exists(tmp_path / "run")
