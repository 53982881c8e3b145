"""common/msr.py: the one place that says which counter an MSR or RDPMC names, and whether it counts."""
import pytest

from common import msr

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]


@pytest.mark.parametrize("index, named", [
    (msr.MSR_IA32_PERFCTR0 + 2, (2, "legacy")),
    (msr.MSR_IA32_PMC0 + 2, (2, "full")),
    (msr.MSR_CORE_PERF_FIXED_CTR0 + 1, (msr.FIXED_IDX_BASE + 1, "fixed")),
    (msr.MSR_IA32_PMC0 + 7, (7, "full")),           # the MSR exists; the counter may not
    (msr.MSR_IA32_PMC0 + 8, None),
    (msr.MSR_P6_EVNTSEL0, None),
    (msr.MSR_CORE_PERF_GLOBAL_CTRL, None),
])
def test_counter_msr_names_the_counter_and_the_access(index, named):
    assert msr.counter_msr(index) == named


def test_a_driver_reaches_each_counter_through_its_full_width_msr():
    for idx in (0, 3, msr.FIXED_IDX_BASE, msr.FIXED_IDX_BASE + 2):
        assert msr.counter_msr(msr.counter_msr_of(idx))[0] == idx
        assert msr.rdpmc_counter(msr.rdpmc_ecx(idx)) == idx
    assert msr.counter_msr(msr.counter_msr_of(1))[1] == "full"


def test_rdpmc_ecx_that_names_no_counter():
    assert msr.rdpmc_counter(msr.RDPMC_FAST | 0) is None
    assert msr.rdpmc_counter(msr.FIXED_IDX_BASE) is None


def test_legacy_writes_sign_extend_and_full_width_writes_do_not():
    assert msr.written_value("legacy", 0xFFFFFFF0) & msr.COUNTER_MASK == msr.COUNTER_MASK - 15
    assert msr.written_value("full", 0xFFFFFFF0) == 0xFFFFFFF0
    assert msr.evtsel_msr(msr.MSR_P6_EVNTSEL0 + 3) == 3 and msr.evtsel_msr(0xC1) is None


def test_a_counter_counts_only_with_both_enables():
    gp_on = msr.EVTSEL_EN | 0xC0
    assert msr.counter_enabled(0, gp_on, 0b1)
    assert not msr.counter_enabled(0, gp_on, 0b10)             # GLOBAL_CTRL bit clear
    assert not msr.counter_enabled(0, gp_on & ~msr.EVTSEL_EN, 0b1)
    fixed1 = msr.FIXED_IDX_BASE + 1
    assert msr.counter_enabled(fixed1, msr.FIXED_CTRL_USR, 1 << fixed1)
    assert not msr.locally_enabled(fixed1, msr.FIXED_CTRL_PMI)  # PMI alone counts nothing
