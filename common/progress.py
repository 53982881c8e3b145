"""The launcher's progress display on the terminal (rich), from the guest's heartbeats.

One row per policy: PMIs handled / target (the guest's handler counts them, common/child.py
Progress), exits made per second, elapsed time. It shows once a run has gone on for SHOW_AFTER_S
(a short run prints only its table), and never when the output is not a terminal (a pipe, a file,
CI) or with --quiet: what a run prints there stays the same.
"""
from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from common import schema

SHOW_AFTER_S = 2.0


class Display:
    def __init__(self, quiet: bool = False, console: Console | None = None,
                 show_after_s: float = SHOW_AFTER_S, clock=time.monotonic):
        self.console = console or Console()
        self.enabled = self.console.is_terminal and not quiet
        self.show_after_s, self.clock = show_after_s, clock
        self.bar: Progress | None = None
        self.policy: str | None = None     # the policy whose run is under way
        self.target: int | None = None
        self.task = None
        self.began = 0.0
        self.last = (0, 0)              # the run's exits and PMIs at the last heartbeat

    def start(self, policy: str, target: int | None) -> None:
        """A policy's run begins; ``target``: the PMIs it is to handle (None: a guest program,
        which runs until its main returns)."""
        self.began, self.policy, self.target = self.clock(), policy, target
        self.task = None

    def beat(self, beat: schema.Heartbeat) -> None:
        """A guest heartbeat: it carries the exits and PMIs of the run under way."""
        elapsed = self.clock() - self.began
        if (beat.run_steps is not None and self.enabled and self.policy
                and elapsed >= self.show_after_s):
            self.show(beat.run_steps, beat.run_pmis, elapsed)

    def done(self, pmis: int, exits: int, elapsed: float) -> None:
        """The policy's run ended: its row (if shown) takes the run's own final figures."""
        if self.task is not None:
            self.show(exits, pmis, elapsed)
        self.policy = None

    def show(self, exits: int, pmis: int, elapsed: float) -> None:
        if self.bar is None:
            self.bar = Progress(TextColumn("  {task.description:>10}"), BarColumn(),
                                MofNCompleteColumn(), TextColumn("PMIs"),
                                TextColumn("{task.fields[rate]:>9} exits/s"),
                                TextColumn("{task.fields[elapsed]:>8}"), console=self.console,
                                auto_refresh=False)
            self.bar.start()
        fields = {"completed": pmis, "rate": f"{exits / max(elapsed, 1e-3):,.0f}",
                  "elapsed": f"{elapsed:.1f} s"}
        if self.task is None:
            self.task = self.bar.add_task(self.policy, total=self.target, **fields)
        else:
            self.bar.update(self.task, **fields)
        self.bar.refresh()

    def close(self) -> None:
        """Stop the display (its last rows stay on the terminal)."""
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
