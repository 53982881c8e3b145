"""The ground truth alone: trapped instructions retire and count, and a release's known limits are
told apart from what no release does."""
import pytest

from common import msr, results, schema
from guest.oracle import Oracle

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]

EN_OS_USR = msr.EVTSEL_EN | msr.EVTSEL_OS | msr.EVTSEL_USR
INSTR, CYCLES = 0x00C0, 0x003C


def programmed(*evtsels, fixed_ctrl=0, global_ctrl=0xF | 1 << 32):
    o = Oracle()
    for i, sel in enumerate(evtsels):
        o.wrmsr(msr.MSR_P6_EVNTSEL0 + i, sel)
    o.wrmsr(msr.MSR_CORE_PERF_FIXED_CTR_CTRL, fixed_ctrl)
    o.wrmsr(msr.MSR_CORE_PERF_GLOBAL_CTRL, global_ctrl)
    return o


def test_a_trapped_instruction_counts_where_the_counter_counts_instructions_in_the_kernel():
    o = programmed(INSTR | EN_OS_USR,                                  # counts
                   INSTR | msr.EVTSEL_EN | msr.EVTSEL_USR,              # user only: no
                   INSTR | EN_OS_USR | 3 << 24 | msr.EVTSEL_INV,       # CMASK/INV ignored: yes
                   CYCLES | EN_OS_USR,                                 # not instructions: no
                   fixed_ctrl=msr.FIXED_CTRL_OS | (msr.FIXED_CTRL_OS << 4))   # fixed 0 only
    o.trapped()
    assert o.value == {0: 1, 1: 0, 2: 1, 3: 0, 32: 1, 33: 0, 34: 0}
    o.wrmsr(msr.MSR_CORE_PERF_GLOBAL_CTRL, 0b100)    # disabled after its effect: not counted
    o.trapped()
    assert o.value[0] == 1 and o.value[2] == 2
    o.wrmsr(msr.MSR_P6_EVNTSEL0 + 2, INSTR | EN_OS_USR)   # EN set, GLOBAL_CTRL bit still set
    o.trapped()
    assert o.value[2] == 3 and o.trapped_total == 3


def test_a_shortfall_of_exactly_the_trapped_instructions_is_the_releases_limit():
    o = programmed(INSTR | EN_OS_USR, INSTR | EN_OS_USR)
    o.retire({"instructions": 1000})
    for _ in range(3):
        o.trapped()
    o.check_counter(0, 1000)                         # a release that does not count them
    o.check_counter(1, 1001)                         # one that counts only some: a violation
    kinds = [(v.kind, v.counter, v.deficit) for v in o.violations]
    assert kinds == [(msr.UNCOUNTED_TRAPPED, 0, 3), ("count_mismatch", 1, 2)]
    o.trapped()                                      # counted since the last read only
    o.check_counter(0, 1000)
    assert o.violations[-1].kind == msr.UNCOUNTED_TRAPPED and o.violations[-1].deficit == 1


def test_a_pmi_late_by_exactly_the_uncounted_shift_is_the_same_deviation():
    o = programmed(INSTR | EN_OS_USR | msr.EVTSEL_INT)
    o.lvtpc = msr.APIC_DM_NMI
    o.wrmsr(msr.MSR_IA32_PMC0, (-100) & msr.COUNTER_MASK)
    o.trapped()
    o.trapped()                                      # the architecture overflows 2 earlier
    o.retire({"instructions": 100})                  # the release's overflow: 2 events late
    o.on_pmi()
    assert [(v.kind, v.counter) for v in o.violations] == [(msr.UNCOUNTED_TRAPPED, 0)]
    assert "late_pmi: 2 events" in o.violations[0].detail
    o.wrmsr(msr.MSR_IA32_PMC0, (-100) & msr.COUNTER_MASK)
    o.trapped()
    o.retire({"instructions": 102})                  # late by 2 with a shift of 1: a violation
    o.on_pmi()
    assert o.violations[-1].kind == "late_pmi"


def test_an_overflow_only_the_shift_brought_is_not_missing_at_the_end():
    o = programmed(INSTR | EN_OS_USR | msr.EVTSEL_INT)
    o.lvtpc = msr.APIC_DM_NMI
    o.wrmsr(msr.MSR_IA32_PMC0, (-100) & msr.COUNTER_MASK)
    o.trapped()
    o.retire({"instructions": 99})                   # wrapped here, not on a release that
    o.finish()                                       # does not count the trapped one
    assert [v.kind for v in o.violations] == [msr.UNCOUNTED_TRAPPED]


def test_a_fixed_write_read_back_sign_extended_is_4_20s_deviation():
    o = Oracle()
    o.wrmsr(msr.MSR_CORE_PERF_FIXED_CTR0, 0x80000000)
    o.check_counter(32, 0xFFFF80000000)
    o.wrmsr(msr.MSR_CORE_PERF_FIXED_CTR0, 0x80000000)
    o.check_counter(32, 0x80000001)                  # anything else stays a mismatch
    assert [v.kind for v in o.violations] == [msr.FIXED_WRITE_SIGN_EXTENDED, "count_mismatch"]


def test_global_ctrl_at_reset_is_learnt_until_the_guest_writes_it():
    o = Oracle()
    o.read_global_ctrl(0xF | 0x7 << 32)              # 4.20's reset value
    assert o.global_ctrl == 0xF | 0x7 << 32
    o.wrmsr(msr.MSR_CORE_PERF_GLOBAL_CTRL, 1)
    o.read_global_ctrl(0xF)
    assert o.global_ctrl == 1


def test_classify_puts_known_limits_in_deviations_by_kind():
    found = [schema.Violation(msr.UNCOUNTED_TRAPPED, 0, 0, "short", 2)] * 7 + [
        schema.Violation("spurious_pmi", 0, None, "no overflow")]
    guests = [schema.GuestReport("vm0", [schema.GuestVcpuReport(
        0, "pmis", None, 1, 1, [], 0, 0, 0, {}, 0, [], None, 8, found)])]
    violations, deviations = results.classify(guests, {}, {})
    assert [v["kind"] for v in violations] == ["spurious_pmi"]
    grouped = results.by_kind_with_examples(deviations)
    assert grouped[msr.UNCOUNTED_TRAPPED]["count"] == 7
    assert len(grouped[msr.UNCOUNTED_TRAPPED]["examples"]) == results.SHOW_PER_KIND


def test_trapped_instructions_between_the_overflow_and_the_pmi_do_not_hide_the_shift():
    o = programmed(INSTR | EN_OS_USR | msr.EVTSEL_INT)
    o.lvtpc = msr.APIC_DM_NMI
    o.wrmsr(msr.MSR_IA32_PMC0, (-100) & msr.COUNTER_MASK)
    o.trapped()
    o.retire({"instructions": 99})                   # the architecture's overflow
    o.trapped()                                      # uncounted too: does not bring it closer
    o.retire({"instructions": 1})                    # the release's overflow
    o.on_pmi()
    assert [v.kind for v in o.violations] == [msr.UNCOUNTED_TRAPPED]


def test_a_read_before_the_shifted_overflow_undoes_the_early_wrap():
    o = programmed(INSTR | EN_OS_USR | msr.EVTSEL_INT)
    o.lvtpc = msr.APIC_DM_NMI
    o.wrmsr(msr.MSR_IA32_PMC0, (-100) & msr.COUNTER_MASK)
    o.trapped()
    o.trapped()
    o.retire({"instructions": 99})                   # wrapped here, 1 before the release
    o.check_status(0)                                # the release: not yet
    o.check_counter(0, msr.COUNTER_MASK)             # -1: one event to go
    assert [v.kind for v in o.violations] == [msr.UNCOUNTED_TRAPPED] * 2
    assert o.status == 0 and o.pending == {}
    o.retire({"instructions": 1})                    # now it wraps, with its PMI
    o.on_pmi()
    o.check_status(1)
    assert [v.kind for v in o.violations] == [msr.UNCOUNTED_TRAPPED] * 2
