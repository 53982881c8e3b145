"""A guest vCPU as guest code sees it: only what a guest has, every PMU access a real VM exit."""
from __future__ import annotations

import collections
import numbers
from fractions import Fraction

from common import cmask, msr, schema, transport
from common.child import PROGRESS
from common.schema import MsgType
from guest.oracle import Oracle
from guest.workload import Workload


class GeneralProtection(Exception):
    """The #GP that KVM injected for the last instruction."""


class BudgetStuck(RuntimeError):
    """KVM gave a budget that lets nothing retire: the run cannot go on."""


class RunStopped(BaseException):
    """The run's budget is spent (or the guest was told to stop); a guest program unwinds with
    this. Not an Exception, so that a program's ``except Exception`` does not swallow it."""


# Retire pieces after which the guest exits even though no budget ran out (reason "flush"), so
# that what piles up between exits (the retired events and, while an EDGE/INV/CMASK counter is
# live, their stretches) stays bounded and the run's budgets and stop requests are seen: a
# program that calls retire() in a loop and nothing else still comes back to KVM. It is the
# emulator's exit, not the CPU's, and costs no modeled time (kvm/vcpu.py).
FLUSH_AFTER = 4096


class GuestCpu:
    def __init__(self, chan: transport.Channel, index: int, nr_vcpus: int, workload: Workload,
                 oracle: Oracle, max_exits: int, stop=None):
        self.chan = chan
        self.stop = stop
        self.index, self.nr_vcpus = index, nr_vcpus
        self.workload = workload
        self.oracle = oracle
        self.max_exits = max_exits
        self.budget: dict[str, int] = {}
        self.filtered: list[schema.FilteredBudget] = []   # EDGE/INV/CMASK counters' budgets
        self.unsent: collections.Counter = collections.Counter()  # retired since the last exit
        self.unsent_stretches: list[schema.Stretch] = []    # only while a filtered counter is live
        self.pieces = 0                      # retire pieces since the last exit
        self.in_nmi = False
        self.nmi_window = False
        self.if_flag = True
        self.pending_nmi = False
        self.pending_intr: list[int] = []
        self.pmi_handler = None
        self.pmis = 0
        self.exits: collections.Counter = collections.Counter()
        self.gp_faults = 0
        self.checks: list[schema.Check] = []
        self.stop_reason = ""
        self.raise_on_stop = False
        self.cycles = 0                      # guest cycles retired: the guest's own clock
        self.tick_handler = None
        self.tick_cycles = 0
        self.next_tick = 0

    # --- the exit itself ------------------------------------------------------------------------

    def _exit(self, reason: str, index: int = 0, value: int = 0) -> schema.Entry:
        PROGRESS.step(f"vCPU {self.index} making a {reason} exit")
        self.chan.send(schema.Exit(reason, index, value, dict(self.unsent), self.in_nmi,
                                   self.unsent_stretches))
        self.unsent.clear()
        self.unsent_stretches = []
        self.pieces = 0
        self.exits[reason] += 1
        while True:
            _, msg = self.chan.recv(transport.DEFAULT_TIMEOUT_S, self.stop)
            if msg.type == MsgType.INJECT:
                if msg.body.kind == "nmi":
                    self.pending_nmi = True
                else:
                    self.pending_intr.append(msg.body.vector)
            elif msg.type == MsgType.ENTRY:
                break
            elif msg.type == MsgType.ERROR:
                raise RuntimeError(f"KVM refused the exit: {msg.body.kind}: {msg.body.detail}")
        entry = msg.body
        self._complete(reason, index, value, entry)
        self.stop_reason = self.stop_reason or entry.stop or self._own_stop()
        if self.stop_reason and self.raise_on_stop and reason != "done":
            raise RunStopped(self.stop_reason)
        self.budget = dict(entry.budget)
        self.filtered = entry.filtered
        self.nmi_window = entry.nmi_window
        if entry.gp:
            self.gp_faults += 1
        self._deliver()
        return entry

    def _deliver(self) -> None:
        """Run the PMI handler for an injected NMI, or a fixed-vector PMI once IF is set."""
        while not self.in_nmi:
            if self.pending_nmi:
                self.pending_nmi = False
            elif self.pending_intr and self.if_flag:
                self.pending_intr.pop(0)
            else:
                return
            self.pmis += 1
            self.oracle.on_pmi()
            self.in_nmi = True
            try:
                if self.pmi_handler is not None:
                    self.pmi_handler(self)
            finally:
                self.in_nmi = False
            if self.nmi_window:                 # IRET opens the NMI window KVM waits for
                self._exit("nmi_window")

    def _complete(self, reason: str, index: int, value: int, entry: schema.Entry) -> None:
        """A trapped instruction that did not #GP takes effect and retires (in the oracle) before
        anything KVM injects at this entry is taken: a PMI comes at the instruction boundary."""
        if reason not in msr.TRAPPED_INSTRUCTIONS or entry.gp:
            return
        o = self.oracle
        if reason == "wrmsr":
            o.wrmsr(index, value)
        elif reason == "rdmsr":
            if index == msr.MSR_CORE_PERF_GLOBAL_STATUS:
                o.check_status(entry.value)
            elif index == msr.MSR_CORE_PERF_GLOBAL_CTRL:
                o.read_global_ctrl(entry.value)
            named = msr.counter_msr(index)
            if named is not None and named[0] in o.value:
                o.check_counter(named[0], entry.value)
        elif reason == "rdpmc":
            idx = msr.rdpmc_counter(index)
            if idx in o.value:
                o.check_counter(idx, entry.value)
        o.trapped()

    def exits_total(self) -> int:
        return sum(self.exits.values())

    def _own_stop(self) -> str:
        """What ends the run on the guest's side: its exit budget, or being told to stop."""
        if self.exits_total() >= self.max_exits:
            return "max_exits"
        if self.stop is not None and self.stop.is_set():
            return "stopped"
        return ""

    # --- instructions ---------------------------------------------------------------------------

    def wrmsr_safe(self, index: int, value: int) -> bool:
        return self._exit("wrmsr", index, value).gp

    def wrmsr(self, index: int, value: int) -> None:
        if self.wrmsr_safe(index, value):
            raise GeneralProtection(f"WRMSR {index:#x} = {value:#x}")

    def rdmsr_safe(self, index: int) -> tuple[bool, int]:
        entry = self._exit("rdmsr", index)
        return entry.gp, entry.value

    def rdmsr(self, index: int) -> int:
        faulted, value = self.rdmsr_safe(index)
        if faulted:
            raise GeneralProtection(f"RDMSR {index:#x}")
        return value

    def rdpmc_safe(self, ecx: int) -> tuple[bool, int]:
        entry = self._exit("rdpmc", ecx)
        return entry.gp, entry.value

    def rdpmc(self, ecx: int) -> int:
        faulted, value = self.rdpmc_safe(ecx)
        if faulted:
            raise GeneralProtection(f"RDPMC {ecx:#x}")
        return value

    def cpuid(self, leaf: int, subleaf: int = 0) -> tuple[int, int, int, int]:
        return tuple(self._exit("cpuid", leaf, subleaf).values)

    def cli(self) -> None:
        self.if_flag = self.oracle.if_flag = False

    def sti(self) -> None:
        self.if_flag = self.oracle.if_flag = True
        self._deliver()

    def on_pmi(self, handler) -> None:
        self.pmi_handler = handler

    def on_tick(self, handler, period_ns: int) -> None:
        """A periodic guest timer (the scheduler tick), in guest time."""
        self.tick_handler = handler
        self.tick_cycles = max(1, int(period_ns * self.workload.ghz))
        self.next_tick = self.cycles + self.tick_cycles

    def request_migration(self, pcpu: int, at: str = "now") -> None:
        """Test facility: ask the host to move this vCPU's thread to ``pcpu`` before the next
        entry, or between the next overflow and the entry after it."""
        if at not in ("now", "next-overflow"):
            raise ValueError("at must be 'now' or 'next-overflow'")
        self._exit("hypercall", pcpu, int(at == "next-overflow"))

    def check(self, condition, name: str, detail: str = "") -> bool:
        self.checks.append(schema.Check(name, bool(condition), detail))
        return bool(condition)

    # --- retiring events --------------------------------------------------------------------------

    def retire(self, instructions: int = 0, branches: int = 0, branch_misses: int = 0,
               llc_refs: int = 0, llc_misses: int = 0, cycles: int | None = None,
               ref_cycles: int | None = None) -> None:
        """Retire events; cycles and ref cycles left None follow from the workload model."""
        given = {"instructions": instructions, "branches": branches,
                 "branch_misses": branch_misses, "llc_refs": llc_refs, "llc_misses": llc_misses,
                 "cycles": cycles, "ref_cycles": ref_cycles}
        counts = {name: None if n is None else _count(name, n) for name, n in given.items()}
        self.retire_events(self.workload.derive(counts.pop("instructions"), **counts))

    def retire_events(self, events: dict[str, int]) -> None:
        """Retire ``events`` evenly interleaved over their cycles, exiting exactly where a host
        counter overflows (the budget KVM handed out), so that a PMI lands after the
        overflowing event. Positions run along the chunk's cycle axis and may fall inside a
        cycle: there, events of one kind have retired and others not yet."""
        chunk = {k: v for k, v in events.items() if v > 0}
        if not chunk:
            return
        cycles = chunk.get("cycles", 0)
        axis = cycles or 1
        y = Fraction(0)
        while y < axis:
            y1 = self._next_stop(chunk, axis, y)
            part = {k: (y1 * n // axis) - (y * n // axis) for k, n in chunk.items()}
            part = {k: n for k, n in part.items() if n}
            stretch = schema.Stretch(cycles, chunk, [y.numerator, y.denominator],
                                     [y1.numerator, y1.denominator])
            for k, n in part.items():
                self.unsent[k] += n
                if k in self.budget:
                    self.budget[k] -= n
            for f in self.filtered:
                f.left -= cmask.count(f.filter, cycles, chunk.get(f.kind, 0), y, y1, False)[0]
            if self.filtered and cycles:        # only filtered counters read stretches, and
                self.unsent_stretches.append(stretch)   # a chunk with no cycles counts none
            self.pieces += 1
            self.cycles += part.get("cycles", 0)
            self.oracle.retire(part, stretch)
            y = y1
            if any(left <= 0 for left in self.budget.values()) or \
                    any(f.left <= 0 for f in self.filtered):
                self._exit("budget")
            elif self.pieces >= FLUSH_AFTER:
                self._exit("flush")
            if self.stop_reason:
                return
            if self.tick_handler is not None and self.cycles >= self.next_tick:
                self.next_tick += self.tick_cycles
                self.tick_handler(self)

    def _next_stop(self, chunk: dict[str, int], axis: int, y: Fraction) -> Fraction:
        """The first position after ``y`` where a budget (or the tick) runs out, or the end."""
        limits = dict(self.budget)
        if self.tick_handler is not None:
            limits["cycles"] = min(limits.get("cycles", self.next_tick - self.cycles),
                                   self.next_tick - self.cycles)
        stop = Fraction(axis)
        for kind in msr.EVENT_KINDS:
            n = chunk.get(kind, 0)
            if n and kind in limits:
                target = y * n // axis + limits[kind]
                stop = min(stop, Fraction(target * axis, n))
        for f in self.filtered:
            at = cmask.reach(f.filter, chunk.get("cycles", 0), chunk.get(f.kind, 0), y, False,
                             f.left)
            if at is not None:
                stop = min(stop, Fraction(at))
        if stop <= y:
            raise BudgetStuck(f"a budget of {limits} lets nothing retire")
        return stop


def _count(name: str, n) -> int:
    """A count of events a program passed to retire(): a whole number >= 0."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
        raise ValueError(f"retire({name}={n!r}): a count of events is a whole number >= 0")
    return int(n)
