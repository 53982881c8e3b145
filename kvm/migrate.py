"""Where and when a vCPU's thread moves between pCPUs (``--migrate`` and scheduled moves).

Decisions are taken at preemption points, between an exit and the next entry; the move itself is
a request to the host scheduler (the vCPU thread's ``migrate`` call). Choices are seeded per vCPU,
so the same seed gives the same moves.

``every:N`` counts exits; ``to-busy:K`` counts time slices, since what it shows needs the guest to
run on the busy pCPU: K exits would mostly be those of the guest's own PMI handler (about eight),
and the vCPU would be back home before retiring a single event there.
"""
from __future__ import annotations

import math

import numpy as np

from common.topology import Topology


class Migrator:
    def __init__(self, spec: str, home: int, vcpu: int, seed: int, topo: Topology,
                 busy_pcpus: list[int], scheduled: list[dict], slice_ns: int):
        kind, _, arg = spec.partition(":")
        self.kind, self.arg = kind, arg
        self.home, self.vcpu, self.topo = home, vcpu, topo
        self.rng = np.random.default_rng([seed, vcpu, 0x716])
        self.away = self._pick_other(home)
        self.busy = busy_pcpus[0] if busy_pcpus else -1
        self.scheduled = {m["exit"]: m["to"] for m in scheduled if m["vcpu"] == vcpu}
        self.last_ns = 0
        self.slice_ns = slice_ns
        self.moved_at_ns = 0
        self.requested: tuple[int, str] | None = None   # (pcpu, "now" | "next-overflow")

    def _pick_other(self, cpu: int) -> int:
        """Another pCPU, on another socket when the host has one."""
        others = [c for c in range(self.topo.ncpus) if c != cpu and
                  (self.topo.sockets == 1 or self.topo.socket_of(c) != self.topo.socket_of(cpu))]
        if not others:
            return cpu
        return int(others[int(self.rng.integers(len(others)))])

    def request(self, pcpu: int, at: str) -> None:
        self.requested = (pcpu, at)

    def decide(self, cpu: int, exits: int, now_ns: int, overflowed: bool) -> tuple[int, str] | None:
        """The pCPU to move to at this preemption point and why, or None to stay."""
        if exits in self.scheduled:
            return self.scheduled[exits], "scheduled"
        if self.requested and (self.requested[1] == "now" or overflowed):
            target, self.requested = self.requested[0], None
            return target, "requested"
        toggle = self.away if cpu == self.home else self.home
        if self.kind == "every" and exits % int(self.arg) == 0:
            return toggle, "every"
        if self.kind == "window" and overflowed:
            return toggle, "window"
        if self.kind == "to-busy":
            if cpu != self.busy and overflowed:      # in the window, as a load balancer might
                self.moved_at_ns = now_ns
                return self.busy, "to-busy"
            if cpu == self.busy and now_ns - self.moved_at_ns >= int(self.arg) * self.slice_ns:
                return self.home, "to-busy-return"      # K time slices later
        if self.kind == "random":
            dt, self.last_ns = now_ns - self.last_ns, now_ns
            if self.rng.random() < 1 - math.exp(-float(self.arg) * dt / 1e9):
                return self._pick_other(cpu), "random"
        return None
