"""Kernel TLB flushes of the host (arch/x86/mm/tlb.c, arch/x86/include/asm/tlbflush.h).

``flush_tlb_one_kernel`` (``__flush_tlb_one_kernel`` in 4.20/5.4): INVLPG of the page and, with
page-table isolation on, ``invpcid_flush_one`` of the same page in the user PCID (the CPUs of all
presets have INVPCID); the ``invalidate_other`` flag it also sets costs a store. Same code in 4.20,
5.4 and 6.12.

``flush_tlb_kernel_range``: a range of at most ``tlb_single_page_flush_ceiling`` (33) pages is
flushed page by page on every online CPU with ``on_each_cpu(do_kernel_range_flush, info, 1)``;
above it, ``on_each_cpu(do_flush_tlb_all)``, which no modeled path reaches.
"""
from __future__ import annotations

from common.costs import Ledger
from host.smp import Smp

TLB_SINGLE_PAGE_FLUSH_CEILING = 33


def flush_tlb_one_kernel(pti: bool, ledger: Ledger, pages: int = 1) -> None:
    ledger.charge("invlpg", pages)
    if pti:
        ledger.charge("invpcid_flush_one", pages)


def flush_tlb_kernel_range(smp: Smp, cpu: int, pages: int, ledger: Ledger) -> None:
    """flush_tlb_kernel_range of ``pages`` pages, called on ``cpu``."""
    if pages > TLB_SINGLE_PAGE_FLUSH_CEILING:
        raise ValueError(f"a {pages}-page kernel flush takes do_flush_tlb_all, not modeled")
    pti = smp.topo.pti
    smp.on_each_cpu(cpu, lambda led: flush_tlb_one_kernel(pti, led, pages), ledger)
