"""Which KVM behaviour each modelled kernel release has: one declarative table.

A row (``Feature``) is one guest-visible rule or one change in how KVM reprograms its host events,
with the upstream release that first had it, its commit and the kernel function it lives in; the
evidence for each row (the release trees read, the pull requests and stable mails) is in
docs/generations.md. A ``Generation`` is a release, plus for ``oncpu`` an unmerged patch: the
features it has follow from comparing its release with each row's, never from a hand-kept list, and
the values the emulator needs (the GLOBAL_CTRL reset value, what a fast RDPMC does, ...) follow from
those features. Built-in policies name their generation; a policy file that subclasses one inherits
it, so a patch is always tried on the kernel it patches.
"""
from __future__ import annotations

import dataclasses
from types import MappingProxyType

from common import msr, throttle

Release = tuple[int, int]

PERF_CAP_FW_WRITES = 1 << 13                # IA32_PERF_CAPABILITIES.FW_WRITE (PMU_CAP_FW_WRITES)


def parse_release(text: str) -> Release:
    """'6.12' -> (6, 12); anything else is a one-line ValueError."""
    major, dot, minor = text.strip().partition(".")
    if not (dot and major.isdigit() and minor.isdigit()):
        raise ValueError(f"release {text!r}: expected MAJOR.MINOR, e.g. 6.12")
    return int(major), int(minor)


def release_str(release: Release | None) -> str:
    return "-" if release is None else f"{release[0]}.{release[1]}"


@dataclasses.dataclass(frozen=True)
class Feature:
    name: str
    since: Release | None      # first upstream release; None: only through ``patch``
    commit: str                # 12 hex digits of the upstream commit ("" for a patch on a list)
    subject: str
    function: str              # the kernel functions that carry it
    file: str
    visible: bool              # the guest can observe it; False: only KVM's and the host's work
    patch: str = ""            # the unmerged patch that brings it
    note: str = ""             # how the release was pinned where no tree was read either side


FEATURES: tuple[Feature, ...] = (
    Feature("fixed_write_raw", (5, 2), "2924b52117b2",
            "KVM: x86/pmu: do not mask the value that is written to fixed PMUs",
            "intel_pmu_set_msr", "arch/x86/kvm/pmu_intel.c", True,
            note="release from its 4.9.y stable backport of 2019-06-20 (upstream in 5.2-rc); "
                 "4.20 sign-extends, 5.7 does not (both trees read)"),
    Feature("reuse_events", (5, 5), "a6da0d77e98e",
            "KVM: x86/vPMU: Reuse perf_event to avoid unnecessary pmc_reprogram_counter",
            "pmc_pause_counter, pmc_resume_counter, reprogram_gp_counter",
            "arch/x86/kvm/pmu.c", False),
    Feature("lazy_release", (5, 5), "b35e5548b411",
            "KVM: x86/vPMU: Add lazy mechanism to release perf_event per vPMC",
            "kvm_arch_sched_in, kvm_pmu_cleanup, kvm_pmu_mark_pmc_in_use",
            "arch/x86/kvm/x86.c, arch/x86/kvm/pmu.c", False),
    Feature("write_period_from_value", (5, 7), "168d918f2643",
            "KVM: x86: Adjust counter sample period after a wrmsr",
            "intel_pmu_set_msr: perf_event_period(get_sample_period(pmc, data))",
            "arch/x86/kvm/vmx/pmu_intel.c", False),
    Feature("full_width_writes", (5, 8), "27461da31089",
            "KVM: x86/pmu: Support full width counting",
            "intel_is_valid_msr, get_fw_gp_pmc, intel_pmu_set_msr; CPUID.1:ECX.PDCM",
            "arch/x86/kvm/vmx/pmu_intel.c, arch/x86/kvm/cpuid.c", True,
            note="absent in 5.7.14, present in 5.8.1 (trees read): 5.8, not 5.9"),
    Feature("is_paused", (5, 15), "e79f49c37ccf",
            "KVM: x86/pmu: Introduce pmc->is_paused to reduce the call time of perf interfaces",
            "pmc_pause_counter, pmc_read_counter", "arch/x86/kvm/pmu.c, arch/x86/kvm/pmu.h",
            False),
    Feature("ovf_ctrl_reads_zero", (5, 16), "540c7abe61cc",
            "KVM: vPMU: Fill get_msr MSR_CORE_PERF_GLOBAL_OVF_CTRL w/ 0",
            "intel_pmu_get_msr", "arch/x86/kvm/vmx/pmu_intel.c", True,
            note="first KVM pull for 5.16; hash from kernel.org push logs, not checked on a tag"),
    Feature("emulated_instructions", (5, 17), "9cd803d496e7",
            "KVM: x86: Update vPMCs when retiring instructions",
            "kvm_skip_emulated_instruction -> kvm_pmu_trigger_event",
            "arch/x86/kvm/x86.c, arch/x86/kvm/pmu.c", True),
    Feature("emulated_branches", (5, 17), "018d70ffcfec",
            "KVM: x86: Update vPMCs when retiring branch instructions",
            "x86_emulate_instruction (ctxt->is_branch) -> kvm_pmu_trigger_event",
            "arch/x86/kvm/x86.c, arch/x86/kvm/emulate.c", True),
    Feature("write_period_from_counter", (5, 18), "75189d1de1b3",
            "KVM: x86/pmu: Update AMD PMC sample period to fix guest NMI-watchdog",
            "pmc_update_sample_period", "arch/x86/kvm/pmu.h", False,
            note="merged for 5.18-rc4; Cc stable, so 5.15.y has it too"),
    Feature("global_ctrl_reset_zero", (6, 0), "c49467a45fe0",
            "KVM: x86/pmu: Don't overwrite the pmu->global_ctrl when refreshing",
            "intel_pmu_refresh", "arch/x86/kvm/vmx/pmu_intel.c", True,
            note="release from de120e1d692d's message ('up until v6.0'); 5.17 sets the bits, "
                 "6.1 does not (trees read)"),
    Feature("deferred_reprogram", (6, 2), "68fb4757e867",
            "KVM: x86/pmu: Defer reprogram_counter() to kvm_pmu_handle_event()",
            "kvm_pmu_request_counter_reprogam, reprogram_counters, kvm_pmu_handle_event",
            "arch/x86/kvm/pmu.c, arch/x86/kvm/pmu.h", False),
    Feature("emulated_overflow_deferred", (6, 2), "de0f619564f4",
            "KVM: x86/pmu: Defer counter emulated overflow via pmc->prev_counter",
            "kvm_pmu_incr_counter, reprogram_counter", "arch/x86/kvm/pmu.c", False),
    Feature("throttle_above_limit", throttle.ABOVE_LIMIT_SINCE, "15def34e2635",
            "perf/core: Fix hardlockup failure caused by perf throttle",
            "__perf_event_account_interrupt", "kernel/events/core.c", False,
            note="'>=' in 4.20 and 5.7, '>' in 6.12 (trees read); release from its May 2023 "
                 "stable backports"),
    Feature("counter_write_truncated", (6, 6), "b29a2acd36dd",
            "KVM: x86/pmu: Truncate counter value to allowed width on write",
            "pmc_write_counter", "arch/x86/kvm/pmu.h", False),
    Feature("lvtpc_masked_on_pmi", (6, 6), "a16eb25b09c0",
            "KVM: x86: Mask LVTPC when handling a PMI",
            "kvm_apic_local_deliver", "arch/x86/kvm/lapic.c", True),
    Feature("one_pmi_per_exit", (6, 6), "73554b29bd70",
            "KVM: x86/pmu: Synthesize at most one PMI per VM-exit",
            "kvm_perf_overflow (irq_work gone), kvm_vcpu_has_events",
            "arch/x86/kvm/pmu.c, arch/x86/kvm/x86.c", True),
    Feature("pmi_before_nmi", (6, 7), "fad505b2cb83",
            "KVM: x86: Service NMI requests after PMI requests in VM-Enter path",
            "vcpu_enter_guest", "arch/x86/kvm/x86.c", False),
    Feature("emulated_counter", (6, 8), "fd89499a5151",
            "KVM: x86/pmu: Track emulated counter events instead of previous counter",
            "kvm_pmu_incr_counter, pmc_pause_counter, pmc_read_counter",
            "arch/x86/kvm/pmu.c, arch/x86/kvm/pmu.h", False),
    Feature("fast_rdpmc_gp", (6, 9), "5728a4a0ea79",
            'KVM: x86/pmu: Disallow "fast" RDPMC for architectural Intel PMUs',
            "intel_rdpmc_ecx_to_pmc", "arch/x86/kvm/vmx/pmu_intel.c", True,
            note="in linux-next of 2024-02-01, after 6.8-rc2; 6.8 reads fast, 6.12 raises #GP "
                 "(trees read)"),
    Feature("rdpmc_type_checked", (6, 9), "a634c76b2c1a",
            "KVM: x86/pmu: Explicitly check for RDPMC of unsupported Intel PMC types",
            "intel_rdpmc_ecx_to_pmc", "arch/x86/kvm/vmx/pmu_intel.c", True),
    Feature("global_ctrl_reset_gp", (6, 9), "de120e1d692d",
            'KVM: x86/pmu: Set enable bits for GP counters in PERF_GLOBAL_CTRL at "RESET"',
            "kvm_pmu_refresh", "arch/x86/kvm/pmu.c", True,
            note="Cc stable, so 6.8.y has it too; 6.8.0 resets to 0 (tree read)"),
    Feature("sched_in_in_vcpu_load", (6, 11), "8fbb696a8f53",
            "KVM: x86: Fold kvm_arch_sched_in() into kvm_arch_vcpu_load()",
            "kvm_arch_vcpu_load (vcpu->scheduled_out)", "arch/x86/kvm/x86.c", False),
    Feature("oncpu_skip", None, "",
            "[RFC PATCH] KVM/x86/vPMU: Avoid counter reprogramming in kvm_pmu_handle_event",
            "kvm_pmu_handle_event", "arch/x86/kvm/pmu.c", False, patch="rfc-oncpu",
            note="Kan Liang, 2018-12-06, <1544123474-4909-1-git-send-email-kan.liang@linux."
                 "intel.com>; never merged (vpmu-facts.md §1)"),
)

BY_NAME = MappingProxyType({f.name: f for f in FEATURES})
PATCHES = frozenset(f.patch for f in FEATURES if f.patch)


def feature(name: str) -> Feature:
    """The row called ``name``; a typo is a clear error, not a silent False."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown feature {name!r}; known: {', '.join(BY_NAME)}") from None


def features_of(release: Release, patches: frozenset[str] = frozenset()) -> frozenset[str]:
    """Every row a kernel at ``release`` with ``patches`` applied has."""
    unknown = set(patches) - PATCHES
    if unknown:
        raise ValueError(f"unknown patch {sorted(unknown)[0]!r}; "
                         f"known: {', '.join(sorted(PATCHES))}")
    return frozenset(f.name for f in FEATURES
                     if (f.since is not None and f.since <= release) or f.patch in patches)


@dataclasses.dataclass(frozen=True)
class Generation:
    """One kernel release as a policy models it; everything below is derived from ``release``."""
    name: str
    release: Release
    patches: frozenset[str] = frozenset()
    features: frozenset[str] = dataclasses.field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "patches", frozenset(self.patches))
        object.__setattr__(self, "features", features_of(self.release, self.patches))

    @classmethod
    def at(cls, name: str, release: str, *patches: str) -> Generation:
        """A generation for any release, e.g. ``Generation.at("mine", "6.6")`` for a what-if."""
        return cls(name, parse_release(release), frozenset(patches))

    def has(self, name: str) -> bool:
        return feature(name).name in self.features

    @property
    def label(self) -> str:
        """The release as results.json names it: '4.20', '4.20+rfc-oncpu'."""
        return "+".join([release_str(self.release), *sorted(self.patches)])

    # --- what the guest sees -------------------------------------------------------------------

    @property
    def full_width_writes(self) -> bool:
        """CPUID.1:ECX.PDCM set, PERF_CAPABILITIES readable with FW_WRITE, MSRs 0x4C1+ exist."""
        return self.has("full_width_writes")

    @property
    def perf_capabilities(self) -> int | None:
        """What a guest RDMSR of PERF_CAPABILITIES returns; None: #GP (no PDCM, no MSR)."""
        return PERF_CAP_FW_WRITES if self.full_width_writes else None

    @property
    def fixed_write(self) -> str:
        """'sign_extend_32': (s64)(s32)data as PERFCTRx (4.20); 'raw': the value, masked on read."""
        return "raw" if self.has("fixed_write_raw") else "sign_extend_32"

    @property
    def fast_rdpmc(self) -> str:
        """ECX bit 31: 'low32' returns the low 32 bits (kvm_pmu_rdpmc's mask); 'gp' raises #GP."""
        return "gp" if self.has("fast_rdpmc_gp") else "low32"

    @property
    def ovf_ctrl_read(self) -> str:
        """'last_written' (pmu->global_ovf_ctrl) before 5.16; 'zero' from then on."""
        return "zero" if self.has("ovf_ctrl_reads_zero") else "last_written"

    @property
    def global_ctrl_reset(self) -> str:
        """GLOBAL_CTRL after refresh: 'gp_fixed' (f19a0c2c2e6a), 'zero' (6.0) or 'gp' (6.9)."""
        if self.has("global_ctrl_reset_gp"):
            return "gp"
        return "zero" if self.has("global_ctrl_reset_zero") else "gp_fixed"

    @property
    def counts_emulated_instructions(self) -> bool:
        return self.has("emulated_instructions")

    @property
    def mask_lvtpc_on_pmi(self) -> bool:
        return self.has("lvtpc_masked_on_pmi")

    # --- how KVM reprograms ----------------------------------------------------------------------

    @property
    def reprogram(self) -> str:
        """'release_create' (pmc_stop_counter + pmc_reprogram_counter) or 'reuse' (pause/resume)."""
        return "reuse" if self.has("reuse_events") else "release_create"

    @property
    def pause_while_paused(self) -> bool:
        """Before is_paused every reprogram calls perf_event_pause and every read reads perf."""
        return self.reprogram == "reuse" and not self.has("is_paused")

    @property
    def counter_write_period(self) -> str:
        """The period a guest counter write gives a live event: 'none' (4.20), 'from_value'
        (get_sample_period(pmc, data), even when paused) or 'from_counter'
        (pmc_update_sample_period: from pmc->counter, only while the event runs)."""
        if self.has("write_period_from_counter"):
            return "from_counter"
        return "from_value" if self.has("write_period_from_value") else "none"

    @property
    def defer_config_changes(self) -> bool:
        return self.has("deferred_reprogram")

    @property
    def emulated_counting(self) -> str:
        """'none'; 'synchronous' (counter+1 and reprogram_counter in the exit, 5.17);
        'prev_counter' (reprogram deferred, overflow from prev_counter, 6.2);
        'emulated_counter' (pmc->emulated_counter folded in at pause, 6.8)."""
        if not self.counts_emulated_instructions:
            return "none"
        if self.has("emulated_counter"):
            return "emulated_counter"
        return "prev_counter" if self.has("emulated_overflow_deferred") else "synchronous"

    @property
    def sched_in_hook(self) -> str:
        """The function that asks for the lazy release at a sched-in ('' before 5.5)."""
        if not self.has("lazy_release"):
            return ""
        return "kvm_arch_vcpu_load" if self.has("sched_in_in_vcpu_load") else "kvm_arch_sched_in"

    @property
    def nmi_entry_retry(self) -> bool:
        """NMI requests serviced before PMI requests: an NMI-mode PMI cancels one entry."""
        return not self.has("pmi_before_nmi")

    @property
    def skip_active_here(self) -> bool:
        """The RFC's test in kvm_pmu_handle_event: skip when perf_event->oncpu == vcpu->cpu."""
        return self.has("oncpu_skip")


# --- value rules the implementer calls (pure, no emulator state) --------------------------------

def global_ctrl_at_reset(gen: Generation, nr_gp: int, nr_fixed: int) -> int:
    """GLOBAL_CTRL as the guest first reads it (the value the last refresh before KVM_RUN left)."""
    gp = (1 << nr_gp) - 1
    fixed = ((1 << nr_fixed) - 1) << msr.FIXED_IDX_BASE
    return {"gp": gp, "zero": 0, "gp_fixed": gp | fixed}[gen.global_ctrl_reset]


def fixed_counter_written(gen: Generation, data: int, width: int) -> int:
    """What a fixed counter reads after a guest WRMSR of ``data`` (no release raises #GP)."""
    if gen.fixed_write == "sign_extend_32":
        data = (data & 0xFFFFFFFF) - ((data & 0x80000000) << 1)
    return data & ((1 << width) - 1)


def ovf_ctrl_value(gen: Generation, last_written: int) -> int:
    return last_written if gen.ovf_ctrl_read == "last_written" else 0


def guest_max_period(gen: Generation, width: int) -> int:
    """x86_pmu.max_period of a Linux guest: cntval_mask >> 1 with full-width writes, else
    (1 << 31) - 1 because PERFCTRx writes sign-extend bit 31 (intel_pmu_init)."""
    return ((1 << width) - 1) >> 1 if gen.full_width_writes else msr.LEGACY_MAX_PERIOD


max_samples_per_tick = throttle.max_samples_per_tick    # re-exported: shared with host/


def throttles(gen: Generation, interrupts: int, limit: int) -> bool:
    """common.throttle.throttles with this generation's comparison (host/ applies the same rule
    with the host kernel's release, common/kernels.py)."""
    return throttle.throttles(gen.has("throttle_above_limit"), interrupts, limit)


ALWAYS = Generation("always", (4, 20))
GENERATIONS = MappingProxyType({
    "always": ALWAYS,
    "oncpu": Generation("oncpu", (4, 20), frozenset({"rfc-oncpu"})),
    "reuse": Generation("reuse", (5, 7)),
    "deferred": Generation("deferred", (6, 12)),
})


def markdown_table() -> str:
    """The feature table as docs/generations.md (and the README) show it."""
    names = list(GENERATIONS)
    heads = " | ".join(f"{n} ({GENERATIONS[n].label})" for n in names)
    lines = [f"| feature | seen by | first release | commit | subject | function | {heads} |",
             "|---|---|---|---|---|---|" + "---|" * len(names)]
    for f in FEATURES:
        first = f.patch or release_str(f.since)
        marks = " | ".join("yes" if GENERATIONS[n].has(f.name) else "" for n in names)
        lines.append(f"| `{f.name}` | {'guest' if f.visible else 'KVM, host'} | {first} "
                     f"| {f.commit or '-'} | {f.subject} | {f.function} | {marks} |")
    return "\n".join(lines)
