"""Cross-CPU function calls as the host kernel release runs them, charged on the caller's path.

``on_each_cpu`` and ``smp_call_function_single`` (kernel/smp.c) with ``wait = 1``, from one
calling CPU, costed along the caller's critical path:

- per target, in CPU order, ``csd_lock`` of the target's csd and ``llist_add`` onto the target's
  ``call_single_queue``: two cache lines the target wrote last (``csd_unlock``,
  ``llist_del_all``), so two transfers at the distance of that target. Whether the two misses
  overlap, and the S->M upgrades after them, are not modelled;
- the IPIs: one x2APIC ICR write per target in physical mode, one per 16-ID cluster in cluster
  mode (4.20 ``__x2apic_send_IPI_mask``), one ALLBUT shorthand from 5.4 when the mask is every
  online CPU but the caller (``native_send_call_func_ipi``);
- the wait, in CPU order, which ends with the slowest target: its IPI delivery and wake-up, its
  pull of the queue line and the csd, the function, and the caller's read of the released csd.
  The other targets' csd reads overlap with it;
- the local call: after the wait up to 5.8 (``on_each_cpu`` = ``smp_call_function`` + local
  call), between sending and waiting by 5.17 (``smp_call_function_many_cond``), where the slowest
  target's path, which contains the same function, hides it.
"""
from __future__ import annotations

import collections
from typing import Callable

from common.costs import Ledger
from common.kernels import Kernel
from common.topology import Topology

Func = Callable[[Ledger], None]     # charges what the called function costs on one CPU
X2APIC_MODES = ("cluster", "physical")


class Smp:
    def __init__(self, topo: Topology, kernel: Kernel, x2apic: str = "cluster"):
        if x2apic not in X2APIC_MODES:
            raise ValueError(f"x2APIC mode {x2apic!r}; known: {', '.join(X2APIC_MODES)}")
        self.topo, self.kernel, self.x2apic = topo, kernel, x2apic
        self._targets: dict[int, tuple[collections.Counter, tuple[str, int], int]] = {}

    def _all_but(self, cpu: int):
        """Every other CPU seen from ``cpu``: targets per distance, the farthest, ICR writes."""
        if cpu not in self._targets:
            topo = self.topo
            others = [t for t in range(topo.ncpus) if t != cpu]
            dist = collections.Counter(topo.distance(cpu, t) for t in others)
            farthest = max(dist, key=lambda d: (("smt", "die", "remote").index(d[0]), d[1]))
            if self.kernel.ipi_shorthand:
                icr = 1
            elif self.x2apic == "physical":
                icr = len(others)
            else:
                icr = len({topo.cluster_of(t) for t in others})
            self._targets[cpu] = (dist, farthest, icr)
        return self._targets[cpu]

    def icr_writes_all_but(self, cpu: int) -> int:
        return self._all_but(cpu)[2]

    @staticmethod
    def transfer(ledger: Ledger, distance: tuple[str, int], times: int = 1) -> None:
        kind, hops = distance
        if kind == "remote":
            ledger.charge("cacheline_transfer_remote", times * hops)
        else:
            ledger.charge(f"cacheline_transfer_{kind}", times)

    def _remote_run(self, distance: tuple[str, int], func: Func, ledger: Ledger) -> None:
        """From the IPI leaving the caller to the caller seeing the target's csd released."""
        ledger.charge("ipi_delivery_remote" if distance[0] == "remote" else "ipi_delivery_die")
        ledger.charge("idle_exit")
        self.transfer(ledger, distance, 2)        # llist_del_all of the queue, read of the csd
        func(ledger)
        self.transfer(ledger, distance)           # csd_unlock's line, read by csd_lock_wait

    def on_each_cpu(self, cpu: int, func: Func, ledger: Ledger) -> None:
        """on_each_cpu(func, info, 1) on every online CPU, called from ``cpu``."""
        dist, farthest, icr = self._all_but(cpu)
        for distance, n in dist.items():          # csd_lock + llist_add, target by target
            self.transfer(ledger, distance, 2 * n)
        ledger.charge("apic_icr_write", icr)
        self._remote_run(farthest, func, ledger)
        if not self.kernel.local_runs_concurrently:
            ledger.charge("local_function_call")
            func(ledger)

    def call_single(self, cpu: int, target: int, func: Func, ledger: Ledger) -> None:
        """smp_call_function_single(target, func, info, 1) from ``cpu``: the csd is on the
        caller's stack, already locked; a call to itself runs at once with IRQs off."""
        distance = self.topo.distance(cpu, target)
        if distance[0] == "self":
            ledger.charge("local_function_call")
            func(ledger)
            return
        self.transfer(ledger, distance)           # llist_add onto the target's queue
        ledger.charge("apic_icr_write")           # send_IPI(target): one ICR write in any mode
        self._remote_run(distance, func, ledger)
