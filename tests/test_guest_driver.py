"""The guest perf driver alone, against a bare-metal PMU (tests/fake_cpu.py)."""
import pytest

from common import msr
from fake_cpu import FakeCpu
from guest.driver import MAX_SAMPLES_PER_TICK, GuestEvent, PerfDriver, events_from_sessions

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


def test_fixed_period_sampling_and_exact_counts():
    cpu = FakeCpu()
    rec = GuestEvent("record:instructions", "instructions", period=100_000)
    stat = GuestEvent("stat:branches", "branches")
    driver = PerfDriver(cpu, [rec, stat])
    driver.start()
    cpu.retire(1_000_000, {"instructions": 2, "branches": 1})     # 2M instructions
    driver.read()
    assert rec.samples == 20 and driver.handled == 20
    assert rec.count == 2_000_000 and stat.count == 1_000_000
    assert rec.idx == 32 and stat.idx == 0                         # fixed 0 for instructions


def test_frequency_mode_converges_to_the_asked_rate():
    cpu = FakeCpu(ghz=2.5)
    ev = GuestEvent("record:cycles", "cycles", freq=1000)
    PerfDriver(cpu, [ev]).start()
    cpu.retire(2_500_000 * 40)                                     # 40 ms
    assert ev.sample_period == pytest.approx(2_500_000, rel=0.02)
    before = ev.samples
    cpu.retire(2_500_000 * 20)
    assert ev.samples - before in (19, 20, 21)


def test_throttling_caps_samples_per_tick():
    cpu = FakeCpu(ghz=2.5)
    ev = GuestEvent("record:cycles", "cycles", period=1000)        # 2.5 M/s > 100 k/s
    driver = PerfDriver(cpu, [ev, GuestEvent("f", "branches", freq=10)])  # a freq event: a tick
    driver.start()
    cpu.retire(2_500_000 * 5)
    assert ev.samples <= 5 * MAX_SAMPLES_PER_TICK + MAX_SAMPLES_PER_TICK
    assert ev.samples >= 4 * MAX_SAMPLES_PER_TICK


def test_more_events_than_counters_are_rotated_and_scaled():
    cpu = FakeCpu()
    kinds = ["branches", "branch_misses", "llc_refs", "llc_misses", "branches", "llc_refs"]
    events = [GuestEvent(f"stat:{k}{i}", k) for i, k in enumerate(kinds)]
    driver = PerfDriver(cpu, events)
    driver.start()
    rates = {"branches": 1, "branch_misses": 1, "llc_refs": 1, "llc_misses": 1}
    cpu.retire(2_500_000 * 40, rates)
    driver.read()
    assert driver.rotations >= 8
    for ev in events:
        assert 0 < ev.running_ns < ev.enabled_ns
        scaled = ev.count * ev.enabled_ns // ev.running_ns
        assert scaled == pytest.approx(2_500_000 * 40, rel=0.15)


def test_guest_watchdog_takes_fixed_counter_1():
    cpu = FakeCpu(ghz=2.5)
    events = events_from_sessions([{"mode": "record", "event": "cycles", "period": 10_000}],
                                  2.5, watchdog=True)
    driver = PerfDriver(cpu, events)
    driver.start()
    wd, rec = events
    assert wd.watchdog and wd.idx == 33 and rec.idx == 0
    assert wd.sample_period == 25_000_000_000


def test_throttling_is_lifted_at_the_next_tick_for_fixed_period_events():
    cpu = FakeCpu(ghz=2.5)
    ev = GuestEvent("record:instructions", "instructions", period=20_000)
    driver = PerfDriver(cpu, [ev])
    driver.start()
    cpu.retire(2_500_000 * 30, {"instructions": 1})     # 125 samples a tick would be wanted
    assert ev.samples >= 30 * MAX_SAMPLES_PER_TICK * 0.9
    assert driver.ticks == 30


def test_context_switches_stop_and_restart_a_task_s_events():
    cpu = FakeCpu(ghz=2.5)
    rec = GuestEvent("record:instructions", "instructions", period=250_000)
    driver = PerfDriver(cpu, [rec], switch_ms=2)
    driver.start()
    cpu.retire(2_500_000 * 40, {"instructions": 1})      # 40 ms, half of it another task's
    driver.read()
    assert driver.switches == 20
    assert rec.count == pytest.approx(2_500_000 * 20, rel=0.05)
    assert rec.running_ns == rec.enabled_ns == pytest.approx(20_000_000, rel=0.05)


@pytest.mark.parametrize("perf_cap, full", [(None, False), (0, False),
                                            (msr.PERF_CAP_FW_WRITE, True)])
def test_the_driver_picks_its_counter_msrs_and_max_period_as_intel_pmu_init(perf_cap, full):
    """PERF_CAPABILITIES is read only with PDCM; PMCx and cntval_mask >> 1 only with FW_WRITE,
    else PERFCTRx and 2^31 - 1 (FakeCpu refuses a PMCx write or a read it would #GP)."""
    cpu = FakeCpu(perf_cap=perf_cap)
    stat = GuestEvent("stat:branches", "branches")
    driver = PerfDriver(cpu, [stat])
    driver.start()
    assert driver.caps.full_width is full
    assert driver.caps.counter_msr(0) == (msr.MSR_IA32_PMC0 if full else msr.MSR_IA32_PERFCTR0)
    assert stat.sample_period == (msr.MAX_PERIOD if full else (1 << 31) - 1)
    cpu.retire(3_000_000_000, {"branches": 1})       # more than 2^31: a legacy counter wraps
    driver.read()
    assert stat.count == 3_000_000_000 and stat.samples == 0


def test_a_period_above_the_legacy_maximum_takes_several_overflows_per_sample():
    """The guest watchdog's 25e9 cycles without full-width writes: the counter is armed with
    2^31 - 1 at most, and only the overflow that ends the period is a sample
    (x86_perf_event_set_period's return value)."""
    cpu = FakeCpu(ghz=2.5)
    wd = events_from_sessions([], 2.5, watchdog=True)[0]
    driver = PerfDriver(cpu, [wd])
    driver.start()
    cpu.retire(25_000_000_000 + 1)
    assert wd.samples == 1
    assert driver.handled == -(-25_000_000_000 // ((1 << 31) - 1))       # 12 overflows
