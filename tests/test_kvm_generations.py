"""Each guest-visible rule and reprogramming path of KvmPmu under each release that differs
(docs/generations.md §3-§4), in-process against the host model."""
import pytest

from common import msr
from kvm import policies
from kvm.generations import GENERATIONS, Generation
from kvm.pmu import KVM_REQ_PMI, KVM_REQ_PMU, GuestFault
from kvm.policies.deferred import Deferred
from support import EN_INSTR_INT, perfctr, program_counter0

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]

FW_WRITES = 1 << 13
PDCM = msr.CPUID_1_ECX_PDCM
FIXED0 = msr.MSR_CORE_PERF_FIXED_CTR0


def entry(pmu) -> None:
    """The VM entry after an exit: kvm_pmu_handle_event when KVM_REQ_PMU is pending."""
    if KVM_REQ_PMU in pmu.requests:
        pmu.requests.discard(KVM_REQ_PMU)
        pmu.handle_event()


def test_every_builtin_policy_names_its_release():
    got = {name: (policies.load(name).generation.label) for name in policies.BUILTIN}
    assert got == {"always": "4.20", "oncpu": "4.20+rfc-oncpu", "reuse": "5.7",
                   "deferred": "6.12"}


def test_a_policy_file_inherits_the_generation_it_subclasses(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text("from kvm.policies.reuse import Reuse\n"
                    "class Mine(Reuse):\n    name = 'mine'\nPOLICY = Mine\n")
    assert policies.load(str(path)).generation is GENERATIONS["reuse"]
    bare = tmp_path / "bare.py"
    bare.write_text("class Bare:\n    name = 'bare'\nPOLICY = Bare\n")
    with pytest.raises(ValueError, match="names no kernel release"):
        policies.load(str(bare))


def test_a_release_with_unmodelled_emulated_counting_is_refused(make_pmu):
    class SixSix(Deferred):
        generation = Generation.at("six-six", "6.6")
    pmu, perf, _ = make_pmu()
    with pytest.raises(ValueError, match="not modelled"):
        type(pmu)(perf, SixSix())


@pytest.mark.parametrize("policy, pdcm, cap, gp_on_pmc", [
    ("always", 0, None, True), ("oncpu", 0, None, True), ("reuse", 0, None, True),
    ("deferred", PDCM, FW_WRITES, False)])
def test_full_width_writes_pdcm_and_perf_capabilities(make_pmu, policy, pdcm, cap, gp_on_pmc):
    pmu, _, _ = make_pmu(policy)
    assert pmu.cpuid(0x1, 0)[2] & PDCM == pdcm
    if cap is None:
        with pytest.raises(GuestFault):
            pmu.get_msr(msr.MSR_IA32_PERF_CAPABILITIES)
    else:
        assert pmu.get_msr(msr.MSR_IA32_PERF_CAPABILITIES) == cap
    with pytest.raises(GuestFault):                       # a guest never writes it
        pmu.set_msr(msr.MSR_IA32_PERF_CAPABILITIES, cap or 0)
    for access in (lambda: pmu.set_msr(msr.MSR_IA32_PMC0, 5),
                   lambda: pmu.get_msr(msr.MSR_IA32_PMC0)):
        if gp_on_pmc:
            with pytest.raises(GuestFault):
                access()
        else:
            access()


@pytest.mark.parametrize("policy", policies.BUILTIN)
def test_legacy_counter_writes_sign_extend_from_32_bits(make_pmu, policy):
    pmu, _, _ = make_pmu(policy)
    pmu.set_msr(msr.MSR_IA32_PERFCTR0 + 1, 0x1_8000_0000)    # bit 31 set, bit 32 dropped
    assert pmu.get_msr(msr.MSR_IA32_PERFCTR0 + 1) == msr.COUNTER_MASK & ~0x7FFF_FFFF
    pmu.set_msr(msr.MSR_IA32_PERFCTR0 + 1, 0x7FFF_FFFF)
    assert pmu.rdpmc(1) == 0x7FFF_FFFF


@pytest.mark.parametrize("policy, fast", [("always", "low32"), ("oncpu", "low32"),
                                          ("reuse", "low32"), ("deferred", "gp")])
def test_fast_rdpmc(make_pmu, policy, fast):
    pmu, _, _ = make_pmu(policy)
    pmu.fixed[1].counter = 0xAB_1234_5678
    if fast == "gp":
        for ecx in (msr.RDPMC_FAST | msr.RDPMC_FIXED | 1, msr.RDPMC_FAST, 1 << 16):
            with pytest.raises(GuestFault):
                pmu.rdpmc(ecx)
    else:
        assert pmu.rdpmc(msr.RDPMC_FAST | msr.RDPMC_FIXED | 1) == 0x1234_5678
        with pytest.raises(GuestFault, match="no such counter"):
            pmu.rdpmc(1 << 16)                             # bits 29:0 are the index
    assert pmu.rdpmc(msr.RDPMC_FIXED | 1) == 0xAB_1234_5678


@pytest.mark.parametrize("policy, value, expect", [
    ("always", 0x1_8000_0000, 0xFFFF_8000_0000),          # (s64)(s32)data, as PERFCTRx
    ("always", 1 << 60, 0),
    ("reuse", 0x1_8000_0000, 0x1_8000_0000),              # raw (2924b52117b2)
    ("reuse", (1 << 60) | 5, 5),                          # masked on read, no #GP
    ("deferred", 0x1_8000_0000, 0x1_8000_0000),
    ("deferred", (1 << 60) | 5, 5),                       # truncated at the write (6.6)
])
def test_fixed_counter_writes_never_raise_gp(make_pmu, policy, value, expect):
    pmu, _, _ = make_pmu(policy)
    pmu.set_msr(FIXED0, value)
    assert pmu.get_msr(FIXED0) == expect


@pytest.mark.parametrize("policy, reads", [("always", 0b101), ("reuse", 0b101),
                                           ("deferred", 0)])
def test_global_ovf_ctrl_reads(make_pmu, policy, reads):
    pmu, _, _ = make_pmu(policy)
    pmu.global_status = 0b111
    pmu.set_msr(msr.MSR_CORE_PERF_GLOBAL_OVF_CTRL, 0b101)
    assert pmu.global_status == 0b010
    assert pmu.get_msr(msr.MSR_CORE_PERF_GLOBAL_OVF_CTRL) == reads


@pytest.mark.parametrize("policy, reset", [("always", 0x7_0000_000F), ("reuse", 0x7_0000_000F),
                                           ("deferred", 0xF)])
def test_global_ctrl_at_reset(make_pmu, policy, reset):
    pmu, _, _ = make_pmu(policy)
    assert pmu.get_msr(msr.MSR_CORE_PERF_GLOBAL_CTRL) == reset


@pytest.mark.parametrize("policy, masked", [("always", False), ("oncpu", False),
                                            ("reuse", False), ("deferred", True)])
def test_lvtpc_masked_on_pmi_delivery(make_pmu, policy, masked):
    pmu, _, _ = make_pmu(policy)
    pmu.set_msr(msr.MSR_X2APIC_LVTPC, msr.APIC_DM_NMI)
    assert pmu.deliver_pmi() == ("nmi", 2)
    assert bool(pmu.lvtpc & msr.APIC_LVT_MASKED) == masked


@pytest.mark.parametrize("policy, retry", [("always", True), ("oncpu", True), ("reuse", True),
                                           ("deferred", False)])
def test_nmi_entry_retry(make_pmu, policy, retry):
    assert make_pmu(policy)[0].gen.nmi_entry_retry == retry


@pytest.mark.parametrize("policy", ["reuse", "deferred"])
def test_pmc_in_use_is_marked_as_the_kernel_does(make_pmu, policy):
    pmu, _, _ = make_pmu(policy)
    pmu.set_msr(msr.MSR_CORE_PERF_GLOBAL_CTRL, 0)                 # never GLOBAL_CTRL
    pmu.get_msr(msr.MSR_P6_EVNTSEL0 + 1)                           # nor reads
    pmu.rdpmc(1)                                                   # nor RDPMC
    assert pmu.pmc_in_use == 0
    pmu.set_msr(msr.MSR_P6_EVNTSEL0 + 1, 0)                        # unchanged: still marked
    with pytest.raises(GuestFault):
        pmu.set_msr(msr.MSR_P6_EVNTSEL0 + 2, 1 << 40)              # #GP: still marked
    pmu.set_msr(msr.MSR_IA32_PERFCTR0 + 3, 9)
    pmu.set_msr(FIXED0 + 2, 9)
    assert pmu.pmc_in_use == 0b1110 | 1 << 34
    pmu.set_msr(msr.MSR_CORE_PERF_FIXED_CTR_CTRL, 0x3 << 4)        # changed field of fixed 1
    assert pmu.pmc_in_use & (1 << 33)
    if pmu.gen.full_width_writes:
        pmu.set_msr(msr.MSR_IA32_PMC0, 9)                          # PMCx: not mapped
        assert not pmu.pmc_in_use & 1


def test_4_20_has_no_pmc_in_use(make_pmu):
    pmu, _, _ = make_pmu("always")
    pmu.set_msr(msr.MSR_P6_EVNTSEL0, EN_INSTR_INT)
    assert pmu.pmc_in_use == 0


def test_013c_on_a_gp_counter_is_a_gp_event(make_pmu):
    pmu, _, host = make_pmu("deferred")
    pmu.set_msr(msr.MSR_P6_EVNTSEL0, 0x43013C)
    entry(pmu)
    ev = host.events[pmu.gp[0].perf_event]
    assert ev.kind == "ref_cycles" and ev.slot[0] == "gp"
    pmu.set_msr(msr.MSR_CORE_PERF_GLOBAL_CTRL, 0x4_0000_0001)
    pmu.set_msr(msr.MSR_CORE_PERF_FIXED_CTR_CTRL, 0x3 << 8)        # fixed 2: 0x0300, fixed only
    entry(pmu)
    assert host.events[pmu.fixed[2].perf_event].slot == ("fixed", 2)


# --- reprogramming per release ---------------------------------------------------------------------

def test_5_7_pauses_and_reads_even_while_paused(make_pmu):
    pmu, perf, _ = make_pmu("reuse")
    program_counter0(pmu, 1000)
    pmu.set_msr(msr.MSR_CORE_PERF_GLOBAL_CTRL, 0)                  # pause
    perf.calls.clear()
    pmu.rdpmc(0)
    pmu.reprogram(pmu.gp[0], "msr_write")
    assert perf.calls == ["read", "pause"]


def test_6_12_skips_pause_and_read_while_paused(make_pmu):
    pmu, perf, _ = make_pmu("deferred")
    program_counter0(pmu, 1000)
    pmu.set_msr(msr.MSR_CORE_PERF_GLOBAL_CTRL, 0)
    entry(pmu)
    perf.calls.clear()
    pmu.rdpmc(0)
    pmu.reprogram(pmu.gp[0], "msr_write")
    assert perf.calls == []


@pytest.mark.parametrize("paused", [False, True])
def test_5_7_counter_write_period_is_the_written_value(make_pmu, paused):
    pmu, perf, host = make_pmu("reuse")
    program_counter0(pmu, 1000)
    perf.retire(instructions=300)
    if paused:
        pmu.set_msr(msr.MSR_CORE_PERF_GLOBAL_CTRL, 0)
    perf.calls.clear()
    pmu.set_msr(perfctr(pmu), (-500) & msr.COUNTER_MASK)
    assert perf.calls == ["read", "period"]
    assert host.events[pmu.gp[0].perf_event].sample_period == 500


def test_6_12_counter_write_period_is_from_pmc_counter_while_running(make_pmu):
    pmu, perf, host = make_pmu("deferred")
    program_counter0(pmu, 1000)
    perf.retire(instructions=300)
    perf.calls.clear()
    pmu.set_msr(perfctr(pmu), (-500) & msr.COUNTER_MASK)
    assert perf.calls == ["read", "period"]
    # pmc->counter = data - 300 (what the event counted since its resume): 300 events late
    assert host.events[pmu.gp[0].perf_event].sample_period == 800
    pmu.set_msr(msr.MSR_CORE_PERF_GLOBAL_CTRL, 0)
    entry(pmu)                                                     # paused
    perf.calls.clear()
    pmu.set_msr(perfctr(pmu), (-500) & msr.COUNTER_MASK)
    assert perf.calls == []


# --- emulated instruction counting (5.17+) ---------------------------------------------------------

@pytest.mark.parametrize("policy, counted", [("always", 0), ("reuse", 0), ("deferred", 1)])
def test_skipped_exits_count_in_instruction_counters(make_pmu, policy, counted):
    pmu, perf, _ = make_pmu(policy)
    program_counter0(pmu, 1000)
    pmu.set_msr(msr.MSR_CORE_PERF_FIXED_CTR_CTRL, 0x1 | 0x1 << 4)  # fixed 0 and 1, OS
    pmu.set_msr(msr.MSR_CORE_PERF_GLOBAL_CTRL, 0x7_0000_000F)
    entry(pmu)
    pmu.requests.clear()
    before = pmu.rdpmc(0), pmu.rdpmc(msr.RDPMC_FIXED), pmu.rdpmc(msr.RDPMC_FIXED | 1)
    pmu.trigger_event("cpuid")
    assert (KVM_REQ_PMU in pmu.requests) == bool(counted)
    entry(pmu)
    after = pmu.rdpmc(0), pmu.rdpmc(msr.RDPMC_FIXED), pmu.rdpmc(msr.RDPMC_FIXED | 1)
    assert [a - b for a, b in zip(after, before)] == [counted, counted, 0]   # not cycles


def test_emulated_counting_follows_the_state_after_the_instruction(make_pmu):
    pmu, perf, _ = make_pmu("deferred")
    program_counter0(pmu, 1000)
    for exit_reason in ("flush", "budget", "hypercall", "nmi_window"):
        pmu.trigger_event(exit_reason)
    assert pmu.gp[0].emulated_counter == 0
    pmu.set_msr(msr.MSR_CORE_PERF_GLOBAL_CTRL, 0)                 # disabling WRMSR: not counted
    pmu.trigger_event("wrmsr")
    assert pmu.gp[0].emulated_counter == 0
    pmu.set_msr(msr.MSR_CORE_PERF_GLOBAL_CTRL, 1)                 # enabling WRMSR: counted
    pmu.trigger_event("wrmsr")
    assert pmu.gp[0].emulated_counter == 1
    pmu.set_msr(msr.MSR_P6_EVNTSEL0, (EN_INSTR_INT & ~msr.EVTSEL_OS) | msr.EVTSEL_INV
                | 3 << 24)                                         # USR only: CPL 0 no match
    pmu.trigger_event("rdmsr")
    assert pmu.gp[0].emulated_counter == 1
    pmu.set_msr(msr.MSR_P6_EVNTSEL0, EN_INSTR_INT | msr.EVTSEL_INV | 3 << 24)  # CMASK ignored
    pmu.trigger_event("rdmsr")
    assert pmu.gp[0].emulated_counter == 2
    assert pmu.stats["emulated_instructions"] == 2


def test_emulated_count_is_folded_at_pause_and_costs_a_pause_resume(make_pmu):
    pmu, perf, _ = make_pmu("deferred")
    program_counter0(pmu, 1000)
    perf.retire(instructions=10)
    pmu.trigger_event("rdpmc")
    assert pmu.rdpmc(0) == (-1000 + 11) & msr.COUNTER_MASK       # read adds emulated_counter
    perf.calls.clear()
    entry(pmu)
    assert perf.calls == ["pause", "period", "enable"]
    assert pmu.gp[0].emulated_counter == 0 and pmu.gp[0].counter == (-989) & msr.COUNTER_MASK


def test_an_emulated_count_that_wraps_is_an_emulated_overflow(make_pmu):
    pmu, perf, _ = make_pmu("deferred")
    program_counter0(pmu, 1000)
    perf.retire(instructions=999)
    pmu.requests.clear()
    pmu.trigger_event("wrmsr")
    entry(pmu)
    assert pmu.global_status == 1 and KVM_REQ_PMI in pmu.requests
    assert pmu.rdpmc(0) == 0
