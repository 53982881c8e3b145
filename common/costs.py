"""The cost model: one table of per-mechanism parameters, and a ledger that counts their use.

Every modeled nanosecond in vpmu-emu is ``count x parameter`` for a parameter of this table: code
that goes through a mechanism charges it to a ``Ledger``. A total is therefore linear in the
parameters, so the same counts give a figure at the low, mid and high value of every parameter:
a band, and the share of each mechanism in the mid figure and in the band's width is exact
(``--explain-costs``).

Each parameter carries a low, a mid and a high value and where they come from (docs/costs.md has
the full references). Where no published figure exists the source says so and the range is the
widest defensible one. Nothing here is chosen to reproduce a figure. The core-to-core transfer and
idle-exit values depend on the platform and come from the host preset (common/topology.py).
Cycle counts are converted at 2.5 GHz where a source quotes cycles. Users override a parameter
with ``--cost NAME=NS`` (a point: no range) or ``NAME=LOW:MID:HIGH``, or a ``[costs]`` table.
"""
from __future__ import annotations

import collections
import dataclasses

from common import topology

NONE = "no published figure found"


@dataclasses.dataclass(frozen=True)
class Param:
    low: int
    mid: int
    high: int
    what: str
    source: str


P = Param
PARAMS: dict[str, Param] = {
    # --- VM transitions and KVM -----------------------------------------------------------------
    "vmx_transition": P(300, 500, 1000, "one VM exit plus VM entry (hardware round trip and "
                        "vmx_vcpu_run's save/restore)", f"{NONE} for Skylake-SP; mid ~1,250 "
                        "cycles, range /2..x2"),
    "msr_emulation": P(75, 150, 300, "kvm_emulate_{rd,wr}msr dispatch to the vendor PMU code: a "
                       "few retpolined calls and a switch", f"{NONE}; ~375 cycles, /2..x2"),
    "kvm_pmu_handle_event_call": P(15, 30, 60, "kvm_check_request + kvm_pmu_handle_event "
                                   "prologue, snapshot of reprogram_pmi, for_each_set_bit",
                                   f"{NONE}; ~75 cycles, /2..x2"),
    "retpoline_indirect_call": P(10, 25, 50, "an indirect call through a retpoline, mispredicted "
                                 "by construction (pmu_ops->pmc_idx_to_pmc)", f"{NONE}; ~60 "
                                 "cycles, /2..x2"),
    "cacheline_read_local": P(2, 5, 10, "a dependent load that hits L1 or L2", "Intel "
                              "optimization manual, Skylake-SP: L1 4-5, L2 14 cycles (not "
                              "re-checked here); high: x2"),
    "locked_rmw": P(4, 8, 20, "an uncontended lock-prefixed read-modify-write (clear_bit, "
                    "test_and_set_bit, atomic_inc)", "~18-20 cycles for LOCK-prefixed ops on "
                    "Skylake (Agner Fog's instruction tables, not re-checked here); /2..x2.5"),
    "clock_read": P(10, 25, 50, "ktime_get() with the TSC clocksource; a timed window contains "
                    "one", f"{NONE}; RDTSC plus the seqcount, ~60 cycles, /2..x2"),
    "kvm_pmc_attr_setup": P(30, 60, 120, "pmc_reprogram_counter building its perf_event_attr",
                            f"{NONE}; ~150 cycles, /2..x2"),
    "entry_retry": P(200, 400, 800, "a cancelled VM entry: vcpu_enter_guest sees a request "
                     "raised after its checks (4.20's KVM_REQ_NMI from PMI delivery) and loops",
                     f"{NONE}; ~1,000 cycles, /2..x2"),
    "lapic_deliver_pmi": P(120, 250, 500, "kvm_apic_local_deliver(LVTPC): read LVT, build the "
                           "IRQ, kvm_apic_set_irq / NMI request", f"{NONE}; ~600 cycles, /2..x2"),
    # --- perf core --------------------------------------------------------------------------------
    "perf_ctx_lock": P(25, 50, 100, "perf_event_ctx_lock + unlock: an uncontended mutex and a "
                       "ctx refcount get/put", f"{NONE}; ~120 cycles, /2..x2"),
    "perf_event_alloc": P(600, 1200, 2400, "kzalloc of struct perf_event and perf_event_alloc/"
                          "perf_init_event: attr copy, list init, PMU lookup under SRCU, "
                          "x86_pmu_event_init checks", f"{NONE}; ~3,000 cycles, /2..x2"),
    "perf_event_free": P(200, 400, 800, "free_event: unaccount, put ctx, queue the RCU callback",
                         f"{NONE}; /2..x2"),
    "local_function_call": P(150, 300, 600, "a cross-call function run on the calling CPU "
                             "(task_function_call to current, the local part of on_each_cpu, "
                             "wrmsr_on_cpu to itself): IRQs off, call, IRQs on",
                             f"{NONE}; ~750 cycles, /2..x2"),
    "x86_counter_schedule": P(200, 400, 800, "x86_pmu_add: collect the events, "
                              "x86_schedule_events constraint walk, assign a counter",
                              f"{NONE}; ~1,000 cycles, /2..x2"),
    "pmu_wrmsr": P(50, 100, 250, "a serializing WRMSR to a PMU MSR (EVTSEL, PMC, DS_AREA)",
                   f"{NONE}; ~250 cycles, /2..x2.5"),
    "rdpmc": P(10, 15, 30, "RDPMC of a local counter", f"{NONE}; ~40 cycles, /1.5..x2"),
    "perf_read_value": P(75, 150, 300, "perf_event_read_value: child_mutex, __perf_event_read "
                         "on the CPU where the event is active (local here), time accounting",
                         f"{NONE}; /2..x2"),
    # --- cross-CPU calls (host/smp.py) --------------------------------------------------------
    "apic_icr_write": P(20, 50, 100, "one x2APIC ICR WRMSR (one target, one cluster, or a "
                        "shorthand)", f"{NONE}; x2APIC MSR writes are not serializing (Intel SDM "
                        "vol. 3 §10.12.3, not re-checked here); low ~50 cycles, high a "
                        "serializing WRMSR"),
    "ipi_delivery_die": P(300, 700, 1500, "from the ICR write until the target's call-function "
                          "handler runs, target on the sender's die and awake: delivery, "
                          "interrupt entry, irq_enter", f"{NONE} (vpmu-facts.md §6); "
                          "~1,750 cycles, range ~/2..x2"),
    "ipi_delivery_remote": P(500, 1000, 2000, "the same for a target on another die or socket: "
                             "the interrupt message crosses UPI", f"{NONE}; die figure plus "
                             "~300 ns, range /2..x2"),
    "invlpg": P(50, 100, 200, "INVLPG of one kernel page (__flush_tlb_one_user)", "mid: "
                "arch/x86/mm/tlb.c comment \"Each single flush is about 100 ns\" (4.20..6.12); "
                f"{NONE} else, /2..x2"),
    "invpcid_flush_one": P(50, 100, 200, "PTI only: INVPCID of the page in the user PCID "
                           "(__native_flush_tlb_one_user with X86_FEATURE_PTI and INVPCID)",
                           f"{NONE}; taken as one INVLPG (one address, one PCID)"),
    "sync_core": P(40, 100, 250, "do_sync_core on one CPU: sync_core() (IRET to self in 4.20)",
                   f"{NONE}; ~250 cycles, /2.5..x2.5"),
    "text_poke": P(500, 1500, 4000, "text_poke of 1-4 bytes: map the page (fixmap or poking mm),"
                   " copy, unmap, local TLB flush", f"{NONE}; a few thousand cycles, wide"),
    # --- memory for the debug store (host/debug_store.py) ---------------------------------------
    "page_alloc": P(300, 1000, 3000, "__alloc_pages_node of an order-4 block (64 KiB): no "
                    "per-cpu list for order 4 in 4.20..6.12 (pcp_allowed_order <= 3), so the "
                    "target node's zone->lock and __rmqueue", f"{NONE}; a remote lock line plus "
                    "buddy splitting, wide range"),
    "page_zero_local": P(205, 315, 512, "clear_highpage of one 4 KiB page of the caller's node "
                         "(__GFP_ZERO)", "4 KiB at 20 / 13 / 8 GB/s. Low: single-thread STREAM "
                         "Triad 19.9 GB/s on a 2-socket Xeon E5-2690 v3 (J. McCalpin, Intel "
                         "forum \"single core bandwidth: haswell vs. broadwell vs. skylake\", "
                         "where Skylake-SP measures below Haswell per core); mid and high: "
                         f"{NONE} for Skylake-SP stores"),
    "page_zero_remote": P(308, 473, 768, "the same for a page of another node (the zeroing CPU "
                          "is the caller, the page is on the target CPU's node)", "local "
                          "figures x1.5: single-core bandwidth is concurrency / latency "
                          "(Little's law, same forum thread) and remote DRAM latency is taken "
                          "as ~1.5x local (unverified ratio)"),
    "page_free": P(200, 500, 2000, "free_pages of an order-4 block: zone->lock and buddy "
                   "merging", f"{NONE}; wide range"),
    "pte_update": P(10, 20, 50, "set_pte_vaddr of one cpu_entry_area page: page-table walk "
                    "(fill_pud/pmd/pte) and the PTE store; its local flush is charged apart",
                    f"{NONE}; ~50 cycles, /2..x2.5"),
    # --- once-in-a-while mechanisms (host/static_key.py) --------------------------------------
    "rcu_grace_period": P(2_000_000, 15_000_000, 50_000_000, "synchronize_sched()/"
                          "synchronize_rcu() after enabling perf_sched_events",
                          f"{NONE} for this host; a few jiffies (HZ 250..1000) to tens of ms "
                          "on large idle-ish hosts"),
}
del P

# Taken from the host preset (common/topology.py): name -> Topology attribute.
FROM_TOPOLOGY = {
    "cacheline_transfer_smt": ("c2c_smt", "moving a cache line between the two SMT threads of "
                               "a core"),
    "cacheline_transfer_die": ("c2c_die", "moving a cache line between two cores of one die"),
    "cacheline_transfer_remote": ("c2c_remote", "moving a cache line to or from a core on "
                                  "another die or socket, per UPI hop"),
    "idle_exit": ("idle_exit", "waking an idle target CPU (C-state exit) before it takes an IPI"),
}

# Structure of the debug store (arch/x86/events/intel/ds.c, 4.20..6.12), not costs: the buffers
# each CPU has and the pages each holds (PEBS_BUFFER_SIZE = BTS_BUFFER_SIZE = PAGE_SIZE << 4).
DS_BUFFERS_PER_CPU = 2
DS_BUFFER_PAGES = 16
NAMES = frozenset(PARAMS) | frozenset(FROM_TOPOLOGY)

assert all(0 <= p.low <= p.mid <= p.high for p in PARAMS.values())


def table(topo: topology.Topology | None = None) -> dict[str, Param]:
    """Every parameter for a host: the table above plus the preset's platform figures."""
    topo = topo or topology.PRESETS["skx-4s"]
    out = dict(PARAMS)
    for name, (attr, what) in FROM_TOPOLOGY.items():
        m = getattr(topo, attr)
        out[name] = Param(round(m.low), round(m.mid), round(m.high), what, m.source)
    return out


class Ledger(collections.Counter):
    """How many times each cost parameter was charged."""

    def charge(self, name: str, times: int = 1) -> None:
        if name not in NAMES:
            raise KeyError(f"unknown cost parameter {name!r}")
        self[name] += times

    def total(self, params: dict[str, int]) -> int:
        return sum(times * params[name] for name, times in self.items())


def _range(name: str, value) -> tuple[int, int, int]:
    if type(value) is int and value >= 0:
        return value, value, value
    if (isinstance(value, (list, tuple)) and len(value) == 3
            and all(type(v) is int for v in value) and 0 <= value[0] <= value[1] <= value[2]):
        return tuple(value)
    raise ValueError(f"cost {name} must be a whole number of ns >= 0 or [low, mid, high] "
                     f"with 0 <= low <= mid <= high, got {value!r}")


def bands(overrides: dict | None = None,
          topo: topology.Topology | None = None) -> tuple[dict, dict, dict]:
    """The low, mid and high value of every parameter of a run: the table, then the user's
    overrides (a single value has no range)."""
    params = table(topo)
    low, mid, high = ({n: getattr(p, k) for n, p in params.items()} for k in ("low", "mid", "high"))
    for name, value in (overrides or {}).items():
        if name not in params:
            raise ValueError(f"unknown cost parameter {name!r}; see --explain-costs")
        low[name], mid[name], high[name] = _range(name, value)
    return low, mid, high


def resolve(overrides: dict | None = None, topo: topology.Topology | None = None) -> dict:
    """The mid values of a run's parameters: what the modeled clocks advance by."""
    return bands(overrides, topo)[1]


def band_of_mean(counts: dict, n: int, low: dict, high: dict) -> list[float]:
    """[low, high] of the mean figure of ``n`` calls that charged ``counts`` in total."""
    if not n:
        return [0.0, 0.0]
    ledger = Ledger(counts)
    return [ledger.total(low) / n, ledger.total(high) / n]
