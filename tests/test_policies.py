"""Each policy's decisions, in-process against the host model."""
import os

import pytest

from common import msr
from kvm import policies
from kvm.pmu import KVM_REQ_PMU
from support import EN_INSTR_INT, ROOT, launch, perfctr, program_counter0

pytestmark = pytest.mark.timeout(20)


def linux_handler(pmu, period):
    """The MSR writes of one Linux PMI handler, each followed by its VM entry."""
    def entry():
        if KVM_REQ_PMU in pmu.requests:
            pmu.requests.discard(KVM_REQ_PMU)
            pmu.handle_event()
    for index, value in ((msr.MSR_CORE_PERF_GLOBAL_CTRL, 0),
                         (msr.MSR_CORE_PERF_GLOBAL_OVF_CTRL, 1),
                         (perfctr(pmu), (-period) & msr.COUNTER_MASK),
                         (msr.MSR_CORE_PERF_GLOBAL_CTRL, 0xF)):
        pmu.set_msr(index, value)
        entry()


@pytest.mark.unit
@pytest.mark.parametrize("policy", policies.BUILTIN)
def test_one_pmi_cycle_keeps_counts_right(make_pmu, policy):
    pmu, perf, host = make_pmu(policy)
    program_counter0(pmu, 1000)
    perf.retire(instructions=1000)
    for cycle in range(3):
        assert pmu.global_status == 1
        pmu.requests.discard("KVM_REQ_PMI")
        pmu.requests.discard(KVM_REQ_PMU)
        pmu.handle_event()
        assert pmu.rdpmc(0) == 0
        linux_handler(pmu, 1000)
        assert pmu.rdpmc(0) == msr.COUNTER_MASK - 999
        perf.retire(instructions=10)
        assert pmu.rdpmc(0) == msr.COUNTER_MASK - 989
        perf.retire(instructions=990)
    assert pmu.stats["overflows"] == 4


@pytest.mark.unit
def test_reuse_resumes_with_a_full_period_when_the_counter_is_zero(make_pmu):
    pmu, perf, host = make_pmu("reuse")
    program_counter0(pmu, 1000)
    handle = pmu.gp[0].perf_event
    perf.retire(instructions=1000)
    perf.calls.clear()
    pmu.handle_event()
    assert perf.calls == ["pause", "period", "enable"]
    assert pmu.stats["handle_event"] == {"resumed": 1}
    assert pmu.gp[0].perf_event == handle
    assert host.events[handle].sample_period == msr.COUNTER_MASK + 1


@pytest.mark.unit
def test_reuse_recreates_when_the_config_changed(make_pmu):
    pmu, perf, _ = make_pmu("reuse")
    program_counter0(pmu, 1000)
    old = pmu.gp[0].perf_event
    perf.calls.clear()
    pmu.set_msr(msr.MSR_P6_EVNTSEL0, EN_INSTR_INT & ~msr.EVTSEL_OS)
    assert "create" in perf.calls and pmu.gp[0].perf_event != old


@pytest.mark.unit
def test_reuse_falls_back_when_the_period_is_rejected(make_pmu):
    pmu, perf, host = make_pmu("reuse")
    program_counter0(pmu, 1000)
    host.events[pmu.gp[0].perf_event].sample_period = 0     # now a counting event
    perf.retire(instructions=5)
    pmu.reprogram_pmi |= 1
    pmu.handle_event()
    assert pmu.stats["handle_event"] == {"reprogrammed_period_rejected": 1}


@pytest.mark.unit
def test_reuse_lazy_release_after_an_unused_time_slice(make_pmu):
    pmu, perf, _ = make_pmu("reuse")
    program_counter0(pmu, 1000)
    pmu.set_msr(msr.MSR_P6_EVNTSEL0, 0)                      # disabled: the event is paused
    assert pmu.gp[0].perf_event is not None and pmu.gp[0].is_paused
    pmu.policy.sched_in(pmu)                                   # slice 1: the guest touched it
    assert KVM_REQ_PMU in pmu.requests
    pmu.handle_event()
    assert pmu.gp[0].perf_event is not None
    pmu.policy.sched_in(pmu)                                   # slice 2: untouched
    pmu.handle_event()
    assert pmu.gp[0].perf_event is None
    assert pmu.stats["reprogram_counter"]["sched_in_cleanup"] == 1


@pytest.mark.unit
def test_deferred_only_marks_on_msr_writes(make_pmu):
    pmu, perf, _ = make_pmu("deferred")
    perf.calls.clear()
    pmu.set_msr(perfctr(pmu), (-1000) & msr.COUNTER_MASK)
    pmu.set_msr(msr.MSR_P6_EVNTSEL0, EN_INSTR_INT)
    assert perf.calls == [] and pmu.reprogram_pmi == 1 and KVM_REQ_PMU in pmu.requests
    pmu.handle_event()
    assert perf.calls == ["create"] and pmu.reprogram_pmi == 0


@pytest.mark.unit
def test_policy_from_a_file():
    policy = policies.load(os.path.join(ROOT, "tests", "policy_counting_skip.py"))
    assert policy.name == "skip-always"
    with pytest.raises(ValueError):
        policies.load("nonesuch")


@pytest.mark.system
@pytest.mark.timeout(120)
def test_policy_file_runs_through_the_launcher(tmp_path):
    path = os.path.join(ROOT, "tests", "policy_counting_skip.py")
    proc, results, _ = launch(tmp_path, "--policy", f"oncpu,{path}", "--pmis", "5",
                              "--host-preset", "small")
    assert proc.returncode == 0, proc.stderr
    assert [r["policy"] for r in results["runs"]] == ["oncpu", "skip-always"]
    assert "skip-always" in proc.stdout
