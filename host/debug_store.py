"""The x86 debug store set up and torn down for every possible CPU (arch/x86/events/intel/ds.c).

Same code in 4.20, 5.4 and 6.12, for a host with PEBS and BTS (every preset), called by
``x86_reserve_hardware``/``x86_release_hardware`` when ``pmc_refcount`` crosses zero:

``reserve_ds_buffers``: for each possible CPU ``alloc_ds_buffer`` (a memset of that CPU's debug
store in the cpu_entry_area: a few lines, not charged), then ``alloc_bts_buffer`` and
``alloc_pebs_buffer``: ``dsalloc_pages`` (``__alloc_pages_node`` of 16 zeroed pages on that CPU's
node; the caller zeroes them) and ``ds_update_cea`` (``cea_set_pte`` of each page --
``set_pte_vaddr``, which flushes the page locally -- then ``flush_tlb_kernel_range`` of the 16
pages on every CPU). Then ``init_debug_store_on_cpu`` for each CPU: ``wrmsr_on_cpu(DS_AREA)``.

``release_ds_buffers``: ``release_ds_buffer`` clears every CPU's ``ds`` pointer first, so the
``fini_debug_store_on_cpu`` loop after it returns at once for every CPU (no ``wrmsr_on_cpu`` on
release); then ``release_pebs_buffer`` and ``release_bts_buffer`` for each CPU: ``ds_clear_cea``
(``cea_set_pte`` to PAGE_NONE per page, then ``flush_tlb_kernel_range``) and ``dsfree_pages``.
"""
from __future__ import annotations

from common.costs import DS_BUFFER_PAGES, DS_BUFFERS_PER_CPU, Ledger
from host.smp import Smp
from host.tlb import flush_tlb_kernel_range, flush_tlb_one_kernel


class DebugStore:
    def __init__(self, smp: Smp):
        self.smp, self.topo = smp, smp.topo
        self._cost: dict[tuple[str, int], Ledger] = {}    # the same counts every time

    def reserve(self, cpu: int, ledger: Ledger) -> None:
        """reserve_ds_buffers, called on ``cpu``."""
        ledger.update(self._counts(self._reserve, cpu))

    def release(self, cpu: int, ledger: Ledger) -> None:
        """release_ds_buffers, called on ``cpu``."""
        ledger.update(self._counts(self._release, cpu))

    def _counts(self, path, cpu: int) -> Ledger:
        """What ``path`` charges when called on ``cpu``: the same every time, so counted once."""
        key = (path.__name__, cpu)
        if key not in self._cost:
            self._cost[key] = Ledger()
            path(cpu, self._cost[key])
        return self._cost[key]

    def _reserve(self, cpu: int, ledger: Ledger) -> None:
        for target in range(self.topo.ncpus):             # for_each_possible_cpu
            for _ in range(DS_BUFFERS_PER_CPU):            # alloc_bts_buffer, alloc_pebs_buffer
                ledger.charge("page_alloc")                # dsalloc_pages on the target's node
                local = self.topo.node_of(target) == self.topo.node_of(cpu)
                ledger.charge("page_zero_local" if local else "page_zero_remote", DS_BUFFER_PAGES)
                self._map(cpu, ledger)                     # ds_update_cea
        for target in range(self.topo.ncpus):             # init_debug_store_on_cpu
            self.smp.call_single(cpu, target, lambda led: led.charge("pmu_wrmsr"), ledger)

    def _release(self, cpu: int, ledger: Ledger) -> None:
        for _ in range(self.topo.ncpus):                   # for_each_possible_cpu
            for _ in range(DS_BUFFERS_PER_CPU):            # release_pebs_buffer, _bts_buffer
                self._map(cpu, ledger)                     # ds_clear_cea
                ledger.charge("page_free")                 # dsfree_pages

    def _map(self, cpu: int, ledger: Ledger) -> None:
        """ds_update_cea / ds_clear_cea of one buffer: cea_set_pte per page, then the flush."""
        ledger.charge("pte_update", DS_BUFFER_PAGES)
        flush_tlb_one_kernel(self.topo.pti, ledger, DS_BUFFER_PAGES)
        flush_tlb_kernel_range(self.smp, cpu, DS_BUFFER_PAGES, ledger)
