"""Counts of the host kernel's mechanisms, per code path and per release, and the band arithmetic.

Each expected count is derived from the kernel code the module cites, for a 224-CPU skx-4s
(4 sockets x 28 cores x 2 threads, one node per socket) called from pCPU 0."""
import pytest

from common import config, costs, kernels, schema
from common.costs import Ledger
from common.topology import PRESETS, preset
from host.debug_store import DebugStore
from host.perf import HostPerf
from host.smp import Smp
from host.static_key import DELAYED_WORK_NS, PerfSchedEvents
from host.tlb import flush_tlb_kernel_range

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]
SKX = preset("skx-4s")
N = SKX.ncpus                     # 224
SAME_NODE = 2 * 28                # the caller's socket, both threads
PAGES = 16
ARGS = schema.PerfCreate("instructions", exclude_user=False, exclude_kernel=False,
                         sample_period=100, context=0, intr=True)


def smp(release="4.20", mode="cluster", topo=SKX):
    return Smp(topo, kernels.kernel(release), mode)


# --- topology --------------------------------------------------------------------------------

@pytest.mark.parametrize("name,ncpus,nodes,clusters", [
    ("skx-4s", 224, 4, 16), ("bdx-2s", 88, 2, 6), ("clx-2s", 224, 4, 16), ("icx-2s", 128, 2, 8),
    ("small", 8, 1, 1)])
def test_presets_model_their_topology(name, ncpus, nodes, clusters):
    topo = preset(name)
    assert topo.model and topo.ncpus == ncpus and topo.nodes == nodes
    assert len({topo.apic_id(c) for c in range(ncpus)}) == ncpus
    assert len({topo.cluster_of(c) for c in range(ncpus)}) == clusters
    assert {topo.node_of(c) for c in range(ncpus)} == set(range(nodes))


def test_distances_follow_cores_dies_and_sockets():
    assert SKX.distance(0, 0) == ("self", 0)
    assert SKX.distance(0, 112) == ("smt", 0)          # sibling: second thread of core 0
    assert SKX.distance(0, 27) == ("die", 0)
    assert SKX.distance(0, 28) == ("remote", 1)
    clx = preset("clx-2s")                             # two 28-core dies per package
    assert clx.distance(0, 27) == ("die", 0)
    assert clx.distance(0, 28) == ("remote", 1) and clx.socket_of(28) == 0
    assert clx.node_of(28) == 1 and not clx.pti and SKX.pti


# --- smp_call_function_many / on_each_cpu / smp_call_function_single ---------------------------

@pytest.mark.parametrize("release,mode,icr", [
    ("4.20", "cluster", 16), ("4.20", "physical", N - 1),
    ("5.4", "cluster", 1), ("5.4", "physical", 1), ("6.12", "cluster", 1), ("6.12", "physical", 1)])
def test_ipis_to_all_but_self_per_release_and_x2apic_mode(release, mode, icr):
    assert smp(release, mode).icr_writes_all_but(0) == icr


@pytest.mark.parametrize("release,local", [("4.20", 1), ("5.4", 1), ("6.12", 0)])
def test_on_each_cpu_locks_and_queues_per_target_and_runs_locally_by_release(release, local):
    led = Ledger()
    smp(release).on_each_cpu(0, lambda lg: lg.charge("sync_core"), led)
    # two lines per target at its distance, then the slowest (remote) target's three
    assert led["cacheline_transfer_smt"] == 2
    assert led["cacheline_transfer_die"] == 2 * (SAME_NODE - 2)
    assert led["cacheline_transfer_remote"] == 2 * (N - SAME_NODE) + 3
    assert led["ipi_delivery_remote"] == 1 and led["idle_exit"] == 1
    assert led["sync_core"] == 1 + local and led["local_function_call"] == local


def test_call_single_to_another_cpu_and_to_itself():
    led = Ledger()
    smp().call_single(0, 1, lambda lg: lg.charge("pmu_wrmsr"), led)
    assert led == Ledger({"cacheline_transfer_die": 4, "apic_icr_write": 1, "idle_exit": 1,
                          "ipi_delivery_die": 1, "pmu_wrmsr": 1})
    led = Ledger()
    smp().call_single(0, 0, lambda lg: lg.charge("pmu_wrmsr"), led)
    assert led == Ledger({"local_function_call": 1, "pmu_wrmsr": 1})


def test_kernel_range_flush_is_per_page_on_every_cpu_with_pti():
    led = Ledger()
    flush_tlb_kernel_range(smp(), 0, PAGES, led)
    assert led["invlpg"] == led["invpcid_flush_one"] == 2 * PAGES     # slowest target + local
    led = Ledger()
    flush_tlb_kernel_range(smp(topo=preset("clx-2s")), 0, PAGES, led)
    assert led["invlpg"] == 2 * PAGES and led["invpcid_flush_one"] == 0
    with pytest.raises(ValueError):
        flush_tlb_kernel_range(smp(), 0, 34, Ledger())


# --- the debug store -------------------------------------------------------------------------

def test_reserve_ds_buffers_maps_two_buffers_per_cpu_and_writes_ds_area_everywhere():
    led = Ledger()
    DebugStore(smp()).reserve(0, led)
    buffers = 2 * N
    assert led["page_alloc"] == buffers
    assert led["page_zero_local"] == 2 * PAGES * SAME_NODE
    assert led["page_zero_remote"] == 2 * PAGES * (N - SAME_NODE)
    assert led["pte_update"] == buffers * PAGES
    # cea_set_pte flushes each page locally, then each buffer's on_each_cpu flush: slowest+local
    assert led["invlpg"] == led["invpcid_flush_one"] == buffers * 3 * PAGES
    # one on_each_cpu per buffer (16 cluster ICRs) and one wrmsr_on_cpu per other CPU
    assert led["apic_icr_write"] == buffers * 16 + (N - 1)
    assert led["pmu_wrmsr"] == N


def test_release_ds_buffers_writes_no_ds_area():
    """release_ds_buffer clears every ds pointer before fini_debug_store_on_cpu looks at it."""
    led = Ledger()
    DebugStore(smp("6.12")).release(0, led)
    assert led["pmu_wrmsr"] == 0 and led["page_free"] == 2 * N
    assert led["apic_icr_write"] == 2 * N                # one shorthand per buffer flush
    assert led["local_function_call"] == 0                # 6.12: local flushes run meanwhile


def test_refcount_crossings_cost_less_in_later_releases():
    mids = {}
    for release, mode in (("4.20", "physical"), ("4.20", "cluster"), ("5.4", "cluster"),
                          ("6.12", "cluster")):
        host, led = HostPerf(SKX, False, kernel=release, x2apic=mode), Ledger()
        host.sched_in("t", 0, Ledger())
        ev = host.create("t", ARGS, Ledger())
        host.release("t", ev.handle, led)
        host.create("t", ARGS, led)
        mids[release, mode] = led.total(costs.resolve(None, SKX))
    assert (mids["4.20", "physical"] > mids["4.20", "cluster"] > mids["5.4", "cluster"]
            > mids["6.12", "cluster"])


# --- perf_sched_events ---------------------------------------------------------------------

@pytest.mark.parametrize("release,syncs", [("4.20", 6), ("5.4", 3), ("6.12", 3)])
def test_static_key_enable_patches_per_site_or_per_batch(release, syncs):
    key, led = PerfSchedEvents(smp(release, "cluster", preset("small"))), Ledger()
    key.account(0, led)
    assert led["text_poke"] == 6 and led["rcu_grace_period"] == 1
    assert led["ipi_delivery_die"] == syncs                  # one on_each_cpu per sync


def test_static_key_count_is_left_at_one_until_the_delayed_work():
    key, led = PerfSchedEvents(smp(topo=preset("small"))), Ledger()
    key.account(0, led)
    key.unaccount(0)                         # would-be 1 -> 0: left at 1, work in a second
    assert key.count == 1 and key.work_at == DELAYED_WORK_NS
    key.account(0, led)                      # inc_not_zero: no patching
    key.unaccount(10)                        # 2 -> 1 at once; the work is already pending
    assert key.count == 1 and key.stats["delayed_work"] == 1
    key.advance(DELAYED_WORK_NS - 1)
    assert key.enabled
    key.advance(DELAYED_WORK_NS)
    assert not key.enabled and key.stats == {"enable": 1, "disable": 1, "delayed_work": 1}
    assert led["rcu_grace_period"] == 1


# --- the band arithmetic -------------------------------------------------------------------

@pytest.mark.parametrize("name", PRESETS)
def test_every_parameter_has_an_ordered_range_and_a_source(name):
    for p in costs.table(preset(name)).values():
        assert 0 <= p.low <= p.mid <= p.high and p.source and p.what


def test_band_of_a_ledger_is_its_counts_at_low_and_high():
    low, mid, high = costs.bands({"invlpg": 7, "page_alloc": [1, 2, 3]}, SKX)
    assert low["invlpg"] == mid["invlpg"] == high["invlpg"] == 7
    assert (low["page_alloc"], mid["page_alloc"], high["page_alloc"]) == (1, 2, 3)
    a, b = Ledger({"invlpg": 3, "page_alloc": 2}), Ledger({"page_alloc": 5, "idle_exit": 1})
    band_a, band_b = (costs.band_of_mean(x, 1, low, high) for x in (a, b))
    both = costs.band_of_mean(a + b, 2, low, high)
    assert both == [(band_a[0] + band_b[0]) / 2, (band_a[1] + band_b[1]) / 2]
    assert band_a[0] <= a.total(mid) <= band_a[1]
    assert costs.band_of_mean({}, 0, low, high) == [0.0, 0.0]


@pytest.mark.parametrize("value", [-1, 1.5, [3, 2, 1], [1, 2], "5"])
def test_bad_cost_overrides_are_refused(value):
    with pytest.raises(ValueError):
        costs.bands({"invlpg": value}, SKX)
    with pytest.raises(ValueError):
        costs.bands({"no_such_mechanism": 1}, SKX)


def test_host_kernel_and_x2apic_mode_are_checked():
    cfg = config.merge(config.DEFAULTS, {"host": {"kernel": "4.19"}}, "test")
    with pytest.raises(config.ConfigError, match="host.kernel"):
        config.validate(cfg, "test")
    cfg = config.merge(config.DEFAULTS, {"host": {"x2apic": "flat"}}, "test")
    with pytest.raises(config.ConfigError, match="host.x2apic"):
        config.validate(cfg, "test")
