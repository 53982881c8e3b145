"""KVM's PMU MSR emulation against the host model in-process."""
import pytest

from common import msr
from kvm.pmu import KVM_REQ_PMI, KVM_REQ_PMU, GuestFault
from support import EN_INSTR_INT, program_counter0

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]


def test_reset_state(make_pmu):
    pmu, _, _ = make_pmu("deferred")
    assert pmu.get_msr(msr.MSR_CORE_PERF_GLOBAL_STATUS) == 0
    assert pmu.get_msr(msr.MSR_P6_EVNTSEL0) == 0
    assert pmu.get_msr(msr.MSR_IA32_PMC0 + 3) == 0
    assert pmu.get_msr(msr.MSR_X2APIC_LVTPC) & msr.APIC_LVT_MASKED


@pytest.mark.parametrize("index, value", [
    (msr.MSR_CORE_PERF_GLOBAL_STATUS, 1),                 # read-only
    (msr.MSR_CORE_PERF_GLOBAL_CTRL, 1 << 4),              # GP counter 4 does not exist
    (msr.MSR_CORE_PERF_GLOBAL_CTRL, 1 << 35),             # fixed 3 does not exist
    (msr.MSR_CORE_PERF_GLOBAL_OVF_CTRL, 1 << 40),         # reserved
    (msr.MSR_P6_EVNTSEL0, EN_INSTR_INT | (1 << 32)),          # reserved high bits
    (msr.MSR_P6_EVNTSEL0, EN_INSTR_INT | msr.EVTSEL_ANY),     # ANY is reserved in v2
    (msr.MSR_CORE_PERF_FIXED_CTR_CTRL, 0x4),              # ANY bit of fixed 0
    (msr.MSR_CORE_PERF_FIXED_CTR_CTRL, 0x1000),           # fixed 3 does not exist
    (msr.MSR_IA32_PMC0, 1 << 48),                         # above the counter width
    (msr.MSR_IA32_PMC0 + 4, 0),                           # PMC4 does not exist
    (msr.MSR_P6_EVNTSEL0 + 4, 0),
    (msr.MSR_CORE_PERF_FIXED_CTR0 + 3, 0),
    (0x1234, 0),                                          # not a PMU MSR
])
def test_writes_that_raise_gp(make_pmu, index, value):
    pmu, _, _ = make_pmu("deferred")
    with pytest.raises(GuestFault):
        pmu.set_msr(index, value)


@pytest.mark.parametrize("index", [msr.MSR_IA32_PMC0 + 4, msr.MSR_P6_EVNTSEL0 + 5, 0x1234,
                                   msr.MSR_CORE_PERF_FIXED_CTR0 + 3])
def test_reads_that_raise_gp(make_pmu, index):
    pmu, _, _ = make_pmu("deferred")
    with pytest.raises(GuestFault):
        pmu.get_msr(index)


def test_global_ovf_ctrl_clears_status_and_reads_zero(make_pmu):
    pmu, _, _ = make_pmu("deferred")
    pmu.global_status = 0b101 | (1 << 33)
    pmu.set_msr(msr.MSR_CORE_PERF_GLOBAL_OVF_CTRL, 0b001 | (1 << 33))
    assert pmu.global_status == 0b100
    assert pmu.get_msr(msr.MSR_CORE_PERF_GLOBAL_OVF_CTRL) == 0


def test_legacy_counter_write_is_sign_extended_and_aliases_agree(make_pmu):
    pmu, _, _ = make_pmu("deferred")
    pmu.set_msr(msr.MSR_IA32_PERFCTR0 + 1, 0xFFFFFFF0)       # -16 as 32 bits
    assert pmu.get_msr(msr.MSR_IA32_PMC0 + 1) == msr.COUNTER_MASK - 15
    assert pmu.get_msr(msr.MSR_IA32_PERFCTR0 + 1) == msr.COUNTER_MASK - 15
    pmu.set_msr(msr.MSR_IA32_PERFCTR0 + 1, 0x7FFFFFFF)
    assert pmu.rdpmc(1) == 0x7FFFFFFF


@pytest.mark.parametrize("policy", ["always", "deferred"])
def test_rdpmc_rules(make_pmu, policy):
    pmu, _, _ = make_pmu(policy)
    pmu.set_msr(msr.MSR_CORE_PERF_FIXED_CTR0 + 2, 77)
    assert pmu.rdpmc(msr.RDPMC_FIXED | 2) == 77
    for ecx in (4, msr.RDPMC_FIXED | 3, 64):
        with pytest.raises(GuestFault):
            pmu.rdpmc(ecx)


def test_cpuid_leaf_0xa(make_pmu):
    pmu, _, _ = make_pmu()
    eax, ebx, _, edx = pmu.cpuid(0xA, 0)
    assert eax & 0xFF == 2 and (eax >> 8) & 0xFF == 4 and (eax >> 16) & 0xFF == 48
    assert ebx == 0 and edx & 0x1F == 3 and (edx >> 5) & 0xFF == 48


def test_enabling_creates_an_event_with_the_counter_period(make_pmu):
    pmu, perf, host = make_pmu()
    program_counter0(pmu, 1000)
    pmc = pmu.gp[0]
    assert pmc.perf_event is not None and pmc.oncpu == 0
    ev = host.events[pmc.perf_event]
    assert ev.sample_period == 1000 and ev.kind == "instructions"


def test_overflow_sets_status_and_requests(make_pmu):
    pmu, perf, host = make_pmu()
    program_counter0(pmu, 1000)
    perf.retire(instructions=999)
    assert not pmu.requests and pmu.global_status == 0
    perf.retire(instructions=1)
    assert pmu.requests == {KVM_REQ_PMU, KVM_REQ_PMI}
    assert pmu.global_status == 1 and pmu.reprogram_pmi == 1
    assert pmu.rdpmc(0) == 0                              # wrapped exactly


@pytest.mark.parametrize("policy, creates, releases", [("always", 1, 1), ("oncpu", 0, 0)])
def test_handle_event_per_policy(make_pmu, policy, creates, releases):
    pmu, perf, _ = make_pmu(policy)
    program_counter0(pmu, 1000)
    perf.retire(instructions=1000)
    perf.calls.clear()
    pmu.handle_event()
    assert perf.calls.count("create") == creates
    assert perf.calls.count("release") == releases
    assert pmu.reprogram_pmi == 0
    assert pmu.deliver_pmi() == ("nmi", 2)


def test_oncpu_reprograms_an_event_that_is_not_active_here(make_pmu):
    pmu, perf, host = make_pmu("oncpu")
    program_counter0(pmu, 1000)
    perf.retire(instructions=1000)
    pmu.gp[0].oncpu = -1                                 # as if the host had pushed a change
    pmu.handle_event()
    assert pmu.stats["handle_event"] == {"reprogrammed_inactive": 1}
    pmu.gp[0].oncpu = 5
    pmu.reprogram_pmi |= 1
    pmu.handle_event()
    assert pmu.stats["handle_event"]["reprogrammed_elsewhere"] == 1


def test_masked_lvtpc_delivers_nothing(make_pmu):
    pmu, _, _ = make_pmu()
    assert pmu.deliver_pmi() is None
    pmu.set_msr(msr.MSR_X2APIC_LVTPC, 0xEE)                # fixed vector 0xEE
    assert pmu.deliver_pmi() == ("intr", 0xEE)
