"""The host perf model: counters, scheduling, overflow, reservation, static key, costs."""
import dataclasses

import pytest

from common import costs, schema
from common.cmask import Filter
from common.costs import Ledger
from common.topology import preset
from common.msr import MAX_PERIOD
from host.perf import HostPerf, PerfError
from host.static_key import DELAYED_WORK_NS

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]
ARGS = schema.PerfCreate("instructions", exclude_user=False, exclude_kernel=False,
                         sample_period=100, context=0, intr=True)


def new_host(name="small", watchdog=False, pinned=0):
    return HostPerf(preset(name), watchdog, pinned)


def test_event_follows_its_task_between_pcpus():
    host, led = new_host(), Ledger()
    host.sched_in("t", 2, led)
    ev = host.create("t", ARGS, led)
    assert ev.oncpu == 2 and host.cpuc[2].fixed[0] is ev      # instructions prefer fixed 0
    host.sched_out("t", led)
    assert ev.oncpu == -1 and host.cpuc[2].fixed[0] is None
    host.sched_in("t", 5, led)
    assert ev.oncpu == 5 and host.stats["sched_in_other_cpu"] == 1


def test_contention_puts_a_pinned_event_in_error_until_enabled_again():
    host, led = new_host(pinned=4), Ledger()            # every GP counter held by the host
    host.sched_in("t", 0, led)
    ev = host.create("t", dataclasses.replace(ARGS, kind="branches"), led)
    assert ev.oncpu == -1 and ev.error and host.stats["pinned_errors"] == 1
    host.sched_out("t", led)
    host.sched_in("t", 0, led)
    assert ev.oncpu == -1                               # not retried at schedule-in
    assert host.budget("t") == {}


def test_watchdog_takes_fixed_counter_1_so_cycles_go_to_a_gp_counter():
    host, led = new_host(watchdog=True), Ledger()
    host.sched_in("t", 0, led)
    ev = host.create("t", dataclasses.replace(ARGS, kind="cycles"), led)
    assert ev.slot == ("gp", 0)


def test_overflow_at_the_exact_event_and_rearm():
    host, led = new_host(), Ledger()
    host.sched_in("t", 0, led)
    ev = host.create("t", ARGS, led)
    assert host.budget("t") == {"instructions": 100}
    assert host.account("t", {"instructions": 99}) == []
    assert host.budget("t") == {"instructions": 1}
    assert host.account("t", {"instructions": 1}) == [ev]
    assert ev.count == 100 and host.budget("t") == {"instructions": 100}


def test_counting_event_never_calls_back_and_period_is_clamped():
    host, led = new_host(), Ledger()
    host.sched_in("t", 0, led)
    ev = host.create("t", dataclasses.replace(ARGS, sample_period=0), led)
    assert host.budget("t") == {"instructions": MAX_PERIOD}
    assert host.account("t", {"instructions": MAX_PERIOD}) == []
    assert host.stats["overflows"] == 1 and ev.count == MAX_PERIOD


def test_refcount_crossing_zero_costs_the_debug_store_on_every_cpu():
    host, led = new_host("skx-4s"), Ledger()
    host.sched_in("t", 0, led)
    ev = host.create("t", ARGS, led)
    assert host.stats["refcount_crossings"]["reserve"] == 1
    n = 224
    assert led["page_alloc"] == 2 * n
    assert led["page_zero_local"] + led["page_zero_remote"] == 2 * 16 * n
    assert led["ipi_delivery_remote"] >= 2 * n
    led2 = Ledger()
    host.release("t", ev.handle, led2)
    assert host.pmc_refcount == 0 and led2["page_free"] == 2 * n
    # with the watchdog's events holding the refcount nothing crosses zero
    wd, led3 = new_host("skx-4s", watchdog=True), Ledger()
    wd.sched_in("t", 0, led3)
    ev = wd.create("t", ARGS, led3)
    wd.release("t", ev.handle, led3)
    assert wd.stats["refcount_crossings"] == {"reserve": 0, "release": 0}
    assert led3["page_alloc"] == 0


def test_static_key_disable_is_deferred_by_a_second():
    host, led = new_host(), Ledger()
    host.sched_in("t", 0, led)
    ev = host.create("t", ARGS, led)
    assert host.stats["static_key"]["enable"] == 1 and led["rcu_grace_period"] == 1
    host.release("t", ev.handle, led)
    host.advance_time(DELAYED_WORK_NS // 2)
    ev = host.create("t", ARGS, led)                     # within the second: no repatch
    assert host.key_enabled and host.stats["static_key"]["enable"] == 1
    assert led["rcu_grace_period"] == 1
    host.release("t", ev.handle, led)
    host.advance_time(host.now_ns + DELAYED_WORK_NS)
    assert not host.key_enabled and host.stats["static_key"]["disable"] == 1
    host.create("t", ARGS, led)
    assert host.stats["static_key"]["enable"] == 2 and led["rcu_grace_period"] == 2


def test_calls_on_events_of_another_owner_or_unknown_are_refused():
    host, led = new_host(), Ledger()
    host.sched_in("a", 0, led)
    ev = host.create("a", ARGS, led)
    with pytest.raises(PerfError):
        host.release("b", ev.handle, led)
    with pytest.raises(PerfError):
        host.read("a", 999, led)
    with pytest.raises(PerfError):
        host.period("a", ev.handle, 0, led)


def test_cost_totals_are_linear_in_the_parameters():
    host, led = new_host("skx-4s"), Ledger()
    host.sched_in("t", 0, led)
    host.create("t", ARGS, led)
    base = costs.resolve()
    bumped = costs.resolve({"cacheline_transfer_remote": base["cacheline_transfer_remote"] + 10})
    assert led.total(bumped) - led.total(base) == 10 * led["cacheline_transfer_remote"]


def test_a_cmask_event_counts_qualifying_cycles_and_budgets_them():
    host, led = new_host(), Ledger()
    host.sched_in("t", 0, led)
    ev = host.create("t", dataclasses.replace(ARGS, sample_period=600,
                                              filter=Filter(3, False, False)), led)
    assert host.budget("t") == {} and host.filtered_budget("t") == [
        schema.FilteredBudget("instructions", Filter(3, False, False), 600)]
    # 5,000 instructions over 2,000 cycles: 1,000 cycles retire 3, the others 2
    stretch = schema.Stretch(2000, {"instructions": 5000, "cycles": 2000}, [0, 1], [1000, 1])
    assert host.account("t", {"instructions": 2500, "cycles": 1000}, [stretch]) == []
    assert ev.count == 500 and host.filtered_budget("t")[0].left == 100


# --- interrupt throttling (common/throttle.py) ---------------------------------------------------

def throttling_host(kernel="4.20"):
    """perf_event_max_sample_rate 2500 at HZ 250: 10 overflows per tick."""
    host = HostPerf(preset("small"), False, kernel=kernel, hz=250, max_sample_rate=2500)
    host.sched_in("t", 0, Ledger())
    return host, host.create("t", ARGS, Ledger())


def overflows_until_throttled(host, ev, most=50) -> int:
    for n in range(1, most + 1):
        assert host.account("t", {"instructions": 100}) == [ev]   # KVM still hears each one
        if ev.throttled:
            return n
    return 0


@pytest.mark.parametrize("kernel, nth", [("4.20", 10), ("5.4", 10), ("6.12", 11)])
def test_an_event_is_throttled_at_the_host_releases_limit(kernel, nth):
    """'>=' max_samples_per_tick before 6.4, '>' from 15def34e2635; within one tick."""
    host, ev = throttling_host(kernel)
    assert host.max_samples_per_tick == 10
    assert overflows_until_throttled(host, ev) == nth
    assert host.stats["throttled"] == {"throttle": 1, "unthrottle": 0}


def test_a_throttled_event_loses_what_retires_until_the_next_tick():
    host, ev = throttling_host()
    overflows_until_throttled(host, ev)
    count = ev.count
    assert host.budget("t") == {}                        # its counter is stopped
    assert host.account("t", {"instructions": 250}) == []
    assert ev.count == count and host.throttled_lost == {"t": {0: 250}}
    host.tick(0)                                         # perf_adjust_freq_unthr_context
    assert not ev.throttled and host.stats["throttled"]["unthrottle"] == 1
    host.account("t", {"instructions": 30})
    assert ev.count == count + 30 and host.throttled_lost == {"t": {0: 250}}


def test_ticks_start_each_count_anew():
    host, ev = throttling_host()
    for _ in range(30):
        for _ in range(9):                               # 9 overflows, then the tick
            host.account("t", {"instructions": 100})
        host.tick(0)
    assert host.stats["throttled"]["throttle"] == 0 and host.stats["overflows"] == 270


@pytest.mark.parametrize("unthrottle", ["sched_in", "period", "pause_enable"])
def test_a_schedule_in_or_a_new_period_unthrottles_before_the_tick(unthrottle):
    """event_sched_in and __perf_event_period reset hwc->interrupts (4.20, 6.12); KVM's
    pmc_pause_counter + pmc_resume_counter (disable, period, enable) does so at each PMI."""
    host, ev = throttling_host()
    overflows_until_throttled(host, ev)
    led = Ledger()
    if unthrottle == "sched_in":
        host.sched_out("t", led)
        host.sched_in("t", 0, led)
    elif unthrottle == "period":
        host.period("t", ev.handle, 100, led)
    else:
        host.pause("t", ev.handle, True, led)
        assert ev.throttled                              # disabled, still MAX_INTERRUPTS
        host.enable("t", ev.handle, led)
    assert not ev.throttled and host.budget("t") == {"instructions": ev.period_left}


def test_a_new_event_per_overflow_is_never_throttled():
    """4.20's release + create at each PMI: a new event's first overflow only starts its count."""
    host, ev = throttling_host()
    led = Ledger()
    for _ in range(50):
        assert host.account("t", {"instructions": 100}) == [ev]
        host.release("t", ev.handle, led)
        ev = host.create("t", ARGS, led)
    assert host.stats["throttled"]["throttle"] == 0
