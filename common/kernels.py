"""Host kernel releases: the code differences between them that change what a perf call costs.

Each field names the code it stands for; each was read in that release's source (4.20, 5.4.214 and
6.12 trees; docs/costs.md lists the files). Everything else on the modeled paths was found to be the
same in all three: ``reserve_ds_buffers``/``release_ds_buffers``, ``ds_update_cea``/``ds_clear_cea``,
``flush_tlb_kernel_range`` with ``tlb_single_page_flush_ceiling = 33``, ``flush_tlb_one_kernel``
under PTI, ``wrmsr_on_cpu``, the csd lock and queue of ``smp_call_function_many``, and the
``perf_sched_events`` accounting with its one-second delayed disable (4.20 waits with
``synchronize_sched()``, later releases with ``synchronize_rcu()``: since 4.20's RCU flavour
consolidation both are one normal grace period).
"""
from __future__ import annotations

import dataclasses

from common import throttle


@dataclasses.dataclass(frozen=True)
class Kernel:
    release: str
    # arch/x86/kernel/apic/ipi.c native_send_call_func_ipi (5.4: "x86/apic: ... IPI shorthands"):
    # a mask that is every online CPU but this one goes out as one ALLBUT shorthand ICR write when
    # apic_use_ipi_shorthand is on (all present CPUs booted once, no no_ipi_broadcast=1).
    # 4.20 sends it through apic->send_IPI_allbutself, which in x2APIC mode walks the mask.
    ipi_shorthand: bool
    # kernel/smp.c: 4.20..5.8 on_each_cpu() calls smp_call_function() -- which waits for every
    # target -- and only then runs the function locally; by 5.17 smp_call_function_many_cond()
    # runs the local function between sending the IPIs and waiting (upstream "smp: Run functions
    # concurrently in smp_call_function_many_cond()", 5.13 -- release from memory, unverified).
    local_runs_concurrently: bool
    # arch/x86/include/asm/jump_label.h HAVE_JUMP_LABEL_BATCH: 4.20 patches each site with its own
    # text_poke_bp() (three on_each_cpu(do_sync_core) each); 5.4 and 6.12 queue every site of a
    # key and patch them with one text_poke_bp_batch() (three syncs for the batch).
    jump_label_batch: bool

    @property
    def throttle_above_limit(self) -> bool:
        """__perf_event_account_interrupt's comparison: '>' from 6.4 (common/throttle.py)."""
        major, minor = self.release.split(".")
        return throttle.above_limit((int(major), int(minor)))


KERNELS = {
    "4.20": Kernel("4.20", ipi_shorthand=False, local_runs_concurrently=False,
                   jump_label_batch=False),
    "5.4": Kernel("5.4", ipi_shorthand=True, local_runs_concurrently=False,
                  jump_label_batch=True),
    "6.12": Kernel("6.12", ipi_shorthand=True, local_runs_concurrently=True,
                   jump_label_batch=True),
}
DEFAULT = "4.20"


def kernel(release: str) -> Kernel:
    try:
        return KERNELS[release]
    except KeyError:
        raise ValueError(f"unknown host kernel {release!r}; modeled: {', '.join(KERNELS)}") from None
