"""The cost model: one table of per-mechanism parameters, and a ledger that counts their use.

Every modeled nanosecond in vpmu-emu is ``count x parameter`` for a parameter of this table: code
that goes through a mechanism charges it to a ``Ledger``. A total is therefore linear in the
parameters, and the share of each one in a figure is exact (``--explain-costs``). No parameter is
derived from the seed's figures; each has its reason beside it. Users override them with
``--cost NAME=NS`` or a ``[costs]`` table.

Cycle counts are converted at 2.5 GHz (the seed host's base clock) where a reason quotes cycles.
"""
from __future__ import annotations

import collections
import dataclasses


@dataclasses.dataclass(frozen=True)
class Param:
    ns: int
    reason: str


PARAMS: dict[str, Param] = {
    # --- VM transitions and KVM -----------------------------------------------------------------
    "vmx_transition": Param(500, "one VM exit plus VM entry on a Skylake-class host: about 1,250 "
                            "cycles round trip (kvm-unit-tests 'vmexit' class figures)"),
    "msr_emulation": Param(150, "kvm_emulate_{rd,wr}msr dispatch to the vendor PMU code: a few "
                           "retpolined indirect calls and a switch (~375 cycles)"),
    "kvm_pmu_handle_event_call": Param(30, "kvm_check_request + kvm_pmu_handle_event prologue, "
                                       "snapshot of reprogram_pmi, for_each_set_bit (~75 cycles)"),
    "retpoline_indirect_call": Param(25, "an indirect call through a retpoline, mispredicted by "
                                     "construction (~60 cycles); e.g. pmu_ops->pmc_idx_to_pmc"),
    "cacheline_read_local": Param(5, "a dependent load that hits L1/L2 (~12 cycles)"),
    "locked_rmw": Param(8, "an uncontended lock-prefixed read-modify-write, e.g. clear_bit / "
                        "test_and_set_bit (~20 cycles)"),
    "clock_read": Param(25, "ktime_get() with the TSC clocksource (~60 cycles); a timed window "
                        "contains one clock read"),
    "kvm_pmc_attr_setup": Param(60, "pmc_reprogram_counter building its perf_event_attr "
                                "(~150 cycles)"),
    "entry_retry": Param(400, "a cancelled VM entry: vcpu_enter_guest sees a request raised after "
                         "its checks (4.20's KVM_REQ_NMI from PMI delivery), cancels the "
                         "injection and loops (~1,000 cycles)"),
    "lapic_deliver_pmi": Param(250, "kvm_apic_local_deliver(LVTPC): read LVT, build the IRQ, "
                               "kvm_apic_set_irq / NMI request (~600 cycles)"),
    # --- perf core --------------------------------------------------------------------------------
    "perf_ctx_lock": Param(50, "perf_event_ctx_lock + unlock: an uncontended mutex and a ctx "
                           "refcount get/put (~120 cycles)"),
    "perf_event_alloc": Param(1200, "kzalloc of struct perf_event (~1 KiB slab) and "
                              "perf_event_alloc/perf_init_event: attr copy, list init, PMU lookup "
                              "under SRCU, x86_pmu_event_init checks (~3,000 cycles)"),
    "perf_event_free": Param(400, "free_event: unaccount, put ctx, queue the RCU callback "
                             "(call_rcu; nobody waits for the grace period)"),
    "local_function_call": Param(300, "task_function_call() when the task is current: "
                                 "smp_call_function_single to this CPU runs the function with "
                                 "IRQs off, no IPI (~750 cycles)"),
    "x86_counter_schedule": Param(400, "x86_pmu_add: collect the events, x86_schedule_events "
                                  "constraint walk, assign a counter (~1,000 cycles)"),
    "pmu_wrmsr": Param(100, "a WRMSR to a PMU MSR (EVTSEL, PMC, DS_AREA): serializing, ~250 "
                       "cycles"),
    "rdpmc": Param(15, "RDPMC of a local counter (~40 cycles)"),
    "perf_read_value": Param(150, "perf_event_read_value: child_mutex, __perf_event_read on the "
                             "CPU where the event is active (local here), time accounting"),
    # --- cross-CPU calls --------------------------------------------------------------------------
    "cacheline_transfer_same_socket": Param(90, "moving a cache line between two cores of one "
                                            "socket over the mesh (SKX core-to-core ~80-100 ns)"),
    "cacheline_transfer_cross_socket": Param(200, "moving a cache line to or from another socket "
                                             "over UPI, one hop (SKX ~180-220 ns)"),
    "apic_icr_write": Param(40, "one x2APIC ICR WRMSR to send an IPI to one target (~100 "
                            "cycles)"),
    "ipi_delivery_same_socket": Param(1000, "IPI delivery, interrupt entry, handler dispatch and "
                                      "exit on a CPU of the same socket, as the initiator waits "
                                      "for it"),
    "ipi_delivery_cross_socket": Param(1500, "the same on another socket"),
    "invlpg": Param(60, "INVLPG of one kernel page (~150 cycles), on every CPU of a shootdown"),
    # --- memory for the debug store ---------------------------------------------------------------
    "page_alloc": Param(1000, "alloc_pages_node of an order-4 block (64 KiB) from the buddy "
                        "allocator on the target CPU's node"),
    "page_zero": Param(250, "zeroing one 4 KiB page (~16 GB/s memset)"),
    "page_free": Param(500, "freeing an order-4 block back to the buddy allocator"),
    "pte_update": Param(10, "cea_set_pte: writing one PTE of the cpu_entry_area"),
    # --- once-in-a-while mechanisms ---------------------------------------------------------------
    "rcu_grace_period": Param(15_000_000, "synchronize_sched() on a large idle-ish host: a few "
                              "jiffies (HZ=250: 4 ms each) of grace-period machinery"),
}

# Structure of the debug store (4.20 arch/x86/events/intel/ds.c), not costs: how many buffers each
# CPU has, how many pages each holds, and how many sites the perf_sched_events static key patches.
DS_BUFFERS_PER_CPU = 2          # PEBS and BTS
DS_BUFFER_PAGES = 16            # PEBS_BUFFER_SIZE = BTS_BUFFER_SIZE = PAGE_SIZE << 4
TEXT_POKE_IPIS_PER_SITE = 3     # text_poke_bp: three on_each_cpu(do_sync_core) per site
PERF_SCHED_EVENTS_SITES = 4     # perf_event_task_sched_{in,out} and the context-switch hooks

assert all(p.ns >= 0 for p in PARAMS.values())


class Ledger(collections.Counter):
    """How many times each cost parameter was charged."""

    def charge(self, name: str, times: int = 1) -> None:
        if name not in PARAMS:
            raise KeyError(f"unknown cost parameter {name!r}")
        self[name] += times

    def total(self, params: dict[str, int]) -> int:
        return sum(times * params[name] for name, times in self.items())


def resolve(overrides: dict[str, int] | None = None) -> dict[str, int]:
    """The parameter values of a run: the table, with the user's overrides on top."""
    values = {name: p.ns for name, p in PARAMS.items()}
    for name, ns in (overrides or {}).items():
        if name not in PARAMS:
            raise ValueError(f"unknown cost parameter {name!r}; see --explain-costs")
        if type(ns) is not int or ns < 0:
            raise ValueError(f"cost {name} must be a whole number of ns >= 0, got {ns!r}")
        values[name] = ns
    return values
