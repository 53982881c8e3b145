"""Host perf's interrupt throttling: the rule host/ applies and kvm/generations.py names.

``__perf_event_account_interrupt`` (kernel/events/core.c) counts an event's overflows in the tick
of its CPU (``hwc->interrupts`` against ``hwc->interrupts_seq``, reset when the CPU's
``perf_throttled_seq`` moved on, which ``perf_event_task_tick`` does at every tick). The overflow
that reaches ``max_samples_per_tick`` throttles the event: ``interrupts = MAX_INTERRUPTS`` and the
PMI handler stops its counter (``x86_pmu_stop``). The test is ``interrupts >= max_samples_per_tick``
in 4.20 and 5.7 and ``>`` from 15def34e2635 "perf/core: Fix hardlockup failure caused by perf
throttle" (6.4) — read in the 4.20, 5.7.14 and 6.12 trees (docs/generations.md §3).
"""
from __future__ import annotations

DEFAULT_MAX_SAMPLE_RATE = 100_000           # kernel/events/core.c DEFAULT_MAX_SAMPLE_RATE
ABOVE_LIMIT_SINCE = (6, 4)                  # 15def34e2635: '>' instead of '>='


def max_samples_per_tick(hz: int, sample_rate: int = DEFAULT_MAX_SAMPLE_RATE) -> int:
    """DIV_ROUND_UP(perf_event_max_sample_rate, HZ) (update_perf_cpu_limits)."""
    return -(-sample_rate // hz)


def hz_of_tick(tick_ms: int) -> int:
    """The HZ whose tick is ``tick_ms`` (the emulator's host timer tick, ``--timeslice-ms``):
    4 ms is HZ=250, the default of kernel/Kconfig.hz (4.20 and 6.12 read); 1 ms is HZ=1000."""
    return max(round(1000 / tick_ms), 1)


def throttles(above_limit: bool, interrupts: int, limit: int) -> bool:
    """Whether the ``interrupts``-th overflow of one event in one tick throttles it ('>' from 6.4
    when ``above_limit``, '>=' before). The first overflow of a tick never does: it only starts
    the count (the seq test comes first)."""
    return interrupts > limit if above_limit else interrupts >= limit


def above_limit(release: tuple[int, int]) -> bool:
    """Whether a host kernel at ``release`` compares with '>' (15def34e2635, 6.4)."""
    return release >= ABOVE_LIMIT_SINCE
