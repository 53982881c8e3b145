"""The progress display: what it draws on a (fake) terminal from the guest's heartbeats, and that
it stays off where the output is not a terminal or with --quiet."""
import io

import pytest
from rich.console import Console

from common import child, progress, schema



class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def drive(display, clock):
    """One policy's run: 2 beats within SHOW_AFTER_S, then 3 s in: 50 of 200 PMIs, 900 exits."""
    display.beat(schema.Heartbeat(0, "vCPU 0 making a hlt exit", 2000, 200))  # the last run's
    display.start("oncpu", 200)
    clock.now += 1
    display.beat(schema.Heartbeat(0, "vCPU 0 making a msr_write exit", 450, 20))
    clock.now += 2
    display.beat(schema.Heartbeat(0, "vCPU 0 making a msr_write exit", 900, 50))


def terminal():
    out = io.StringIO()
    return Console(force_terminal=True, file=out, width=120), out


@pytest.mark.unit
def test_a_run_longer_than_a_couple_of_seconds_shows_pmis_rate_and_elapsed():
    console, out = terminal()
    clock = Clock()
    display = progress.Display(console=console, clock=clock)
    drive(display, clock)
    shown = out.getvalue()
    assert "oncpu" in shown and "50/200" in shown, shown
    assert "300 exits/s" in shown and "3.0 s" in shown, shown      # 900 exits in 3 s
    display.done(200, 3000, 9.5)                # the run's own final figures
    display.close()
    assert "200/200" in out.getvalue() and "9.5 s" in out.getvalue()


@pytest.mark.unit
def test_nothing_shows_within_the_first_seconds():
    console, out = terminal()
    clock = Clock()
    display = progress.Display(console=console, clock=clock)
    display.start("always", 200)
    clock.now += progress.SHOW_AFTER_S / 2
    display.beat(schema.Heartbeat(0, "vCPU 0 making a hlt exit", 10, 1))
    display.done(200, 10, 1.0)
    display.close()
    assert out.getvalue() == ""


@pytest.mark.unit
@pytest.mark.parametrize("quiet, is_terminal", [(True, True), (False, False)],
                         ids=["quiet", "not-a-terminal"])
def test_off_with_quiet_or_without_a_terminal(quiet, is_terminal):
    out = io.StringIO()
    console = Console(force_terminal=is_terminal, file=out)
    clock = Clock()
    display = progress.Display(quiet=quiet, console=console, clock=clock)
    assert not display.enabled
    drive(display, clock)
    display.close()
    assert out.getvalue() == ""


@pytest.mark.unit
def test_the_guests_heartbeats_carry_its_runs_steps_and_pmis():
    p = child.Progress()
    p.step("vCPU 1 making a cpuid exit")
    assert p.heartbeat() == schema.Heartbeat(1, "vCPU 1 making a cpuid exit", None, 0)
    p.new_run()                              # the guest, configured for a policy's run
    p.step("vCPU 1 making a cpuid exit")
    p.pmis += 12
    assert p.heartbeat() == schema.Heartbeat(2, "vCPU 1 making a cpuid exit", 1, 12)


@pytest.mark.system
@pytest.mark.timeout(120)
def test_the_launcher_shows_progress_on_a_terminal_and_not_with_quiet(tmp_path):
    """The real launcher with its output on a pseudo-terminal: the guest's heartbeats reach the
    display (a run of a few seconds, longer than SHOW_AFTER_S on any machine that runs the
    suite); with --quiet the same run draws nothing."""
    import os
    import pty
    import re
    import subprocess
    import threading

    from support import LAUNCH

    def on_a_terminal(*args):
        main, sub = pty.openpty()
        proc = subprocess.Popen([*LAUNCH, "--policy", "oncpu", "--pmis", "1200", "--host-preset",
                                 "small", *args], stdout=sub, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        os.close(sub)
        seen = []

        def drain():                    # a pty's buffer is small: read as the launcher writes
            while True:
                try:
                    chunk = os.read(main, 4096)
                except OSError:         # EIO: the launcher closed its side
                    break
                if not chunk:
                    break
                seen.append(chunk)
        reader = threading.Thread(target=drain)
        reader.start()
        assert proc.wait(timeout=100) == 0
        reader.join(10)
        os.close(main)
        return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(seen).decode(errors="replace"))

    shown = on_a_terminal("--out", str(tmp_path / "a"))
    assert "1200/1200 PMIs" in shown and "exits/s" in shown, shown[-3000:]
    quiet = on_a_terminal("--out", str(tmp_path / "b"), "--quiet")
    assert "/1200 PMIs" not in quiet and "exits/s" not in quiet and "oncpu" in quiet
