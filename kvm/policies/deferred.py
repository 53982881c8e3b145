"""``deferred``: Linux 6.12, a long-term release ("Defer reprogram_counter() to
kvm_pmu_handle_event()", 6.2; the 6.6 PMI fixes; ``emulated_counter``, 6.8; docs/generations.md §8).

As ``reuse``, but a guest change of a counter's configuration, and each instruction KVM retires
for the guest in a counter that counts it (kvm_pmu_trigger_event), only marks the counter in
reprogram_pmi and requests KVM_REQ_PMU; kvm_pmu_handle_event takes the marked bits at once and
reprograms each before the next entry, with or without an event. The guest-visible rules (LVTPC
masked on PMI delivery, PMI before NMI, fast RDPMC #GP, ...) are the generation's.
"""
from __future__ import annotations

from kvm.generations import GENERATIONS
from kvm.policies.reuse import Reuse


class Deferred(Reuse):
    name = "deferred"
    generation = GENERATIONS["deferred"]


POLICY = Deferred
