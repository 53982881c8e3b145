"""The generations table: rows are well formed, each generation's features follow from its release,
and the values the emulator takes from it are the ones the kernel sources show
(docs/generations.md)."""
from __future__ import annotations

import dataclasses
import os
import re

import pytest

from kvm import generations as g

pytestmark = pytest.mark.unit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALWAYS, ONCPU, REUSE, DEFERRED = (g.GENERATIONS[n] for n in ("always", "oncpu", "reuse",
                                                              "deferred"))


def test_rows_are_well_formed():
    names = [f.name for f in g.FEATURES]
    assert len(names) == len(set(names))
    upstream = [f for f in g.FEATURES if not f.patch]
    for f in upstream:
        assert f.since is not None and re.fullmatch(r"[0-9a-f]{12}", f.commit), f.name
    assert [f.since for f in upstream] == sorted(f.since for f in upstream)
    for f in g.FEATURES:
        assert f.subject and f.function and f.file, f.name
        assert (f.since is None) == bool(f.patch), f.name


def test_features_follow_the_release():
    assert ALWAYS.features == frozenset()
    assert ONCPU.features == {"oncpu_skip"}
    assert REUSE.features == {f.name for f in g.FEATURES if f.since and f.since <= (5, 7)}
    assert DEFERRED.features == {f.name for f in g.FEATURES if f.since and f.since <= (6, 12)}
    assert not DEFERRED.has("oncpu_skip")


def test_labels_name_the_release():
    assert [gen.label for gen in g.GENERATIONS.values()] == ["4.20", "4.20+rfc-oncpu", "5.7",
                                                              "6.12"]


def test_4_20_guest_rules():
    for gen in (ALWAYS, ONCPU):
        assert not gen.full_width_writes and gen.perf_capabilities is None
        assert gen.fixed_write == "sign_extend_32"
        assert gen.fast_rdpmc == "low32"
        assert gen.ovf_ctrl_read == "last_written"
        assert g.global_ctrl_at_reset(gen, 4, 3) == 0x7_0000_000F
        assert not gen.counts_emulated_instructions and not gen.mask_lvtpc_on_pmi
        assert gen.reprogram == "release_create" and gen.counter_write_period == "none"
        assert gen.sched_in_hook == "" and gen.nmi_entry_retry
    assert ONCPU.skip_active_here and not ALWAYS.skip_active_here


def test_5_7_is_not_5_15():
    assert REUSE.reprogram == "reuse" and REUSE.pause_while_paused
    assert REUSE.counter_write_period == "from_value"
    assert REUSE.sched_in_hook == "kvm_arch_sched_in"
    assert not REUSE.defer_config_changes and REUSE.nmi_entry_retry
    assert REUSE.fixed_write == "raw" and not REUSE.full_width_writes
    assert REUSE.fast_rdpmc == "low32" and REUSE.ovf_ctrl_read == "last_written"
    assert g.global_ctrl_at_reset(REUSE, 4, 3) == 0x7_0000_000F
    assert REUSE.emulated_counting == "none"


def test_6_12_has_everything_of_its_day():
    assert DEFERRED.full_width_writes and DEFERRED.perf_capabilities == 1 << 13
    assert DEFERRED.fast_rdpmc == "gp" and DEFERRED.has("rdpmc_type_checked")
    assert DEFERRED.ovf_ctrl_read == "zero"
    assert g.global_ctrl_at_reset(DEFERRED, 4, 3) == 0xF
    assert DEFERRED.emulated_counting == "emulated_counter"
    assert DEFERRED.counter_write_period == "from_counter" and not DEFERRED.pause_while_paused
    assert DEFERRED.defer_config_changes and DEFERRED.mask_lvtpc_on_pmi
    assert not DEFERRED.nmi_entry_retry
    assert DEFERRED.sched_in_hook == "kvm_arch_vcpu_load"


@pytest.mark.parametrize("older, newer, attr, before, after", [
    ("5.7", "5.8", "full_width_writes", False, True),
    ("5.14", "5.15", "pause_while_paused", True, False),
    ("5.15", "5.16", "ovf_ctrl_read", "last_written", "zero"),
    ("5.16", "5.17", "emulated_counting", "none", "synchronous"),
    ("5.17", "5.18", "counter_write_period", "from_value", "from_counter"),
    ("5.19", "6.0", "global_ctrl_reset", "gp_fixed", "zero"),
    ("6.1", "6.2", "emulated_counting", "synchronous", "prev_counter"),
    ("6.5", "6.6", "mask_lvtpc_on_pmi", False, True),
    ("6.6", "6.7", "nmi_entry_retry", True, False),
    ("6.7", "6.8", "emulated_counting", "prev_counter", "emulated_counter"),
    ("6.8", "6.9", "fast_rdpmc", "low32", "gp"),
    ("6.8", "6.9", "global_ctrl_reset", "zero", "gp"),
    ("6.10", "6.11", "sched_in_hook", "kvm_arch_sched_in", "kvm_arch_vcpu_load"),
])
def test_each_change_lands_in_its_release(older, newer, attr, before, after):
    assert getattr(g.Generation.at("older", older), attr) == before
    assert getattr(g.Generation.at("newer", newer), attr) == after


def test_fixed_counter_writes():
    assert g.fixed_counter_written(ALWAYS, 0xFFFF_FFFF, 48) == (1 << 48) - 1
    assert g.fixed_counter_written(ALWAYS, 0x1_7FFF_FFFF, 48) == 0x7FFF_FFFF
    assert g.fixed_counter_written(REUSE, 0xFFFF_FFFF, 48) == 0xFFFF_FFFF
    assert g.fixed_counter_written(DEFERRED, 1 << 50 | 5, 48) == 5


def test_ovf_ctrl_and_max_period():
    assert g.ovf_ctrl_value(REUSE, 0b101) == 0b101
    assert g.ovf_ctrl_value(DEFERRED, 0b101) == 0
    assert g.guest_max_period(REUSE, 48) == (1 << 31) - 1
    assert g.guest_max_period(DEFERRED, 48) == (1 << 47) - 1


def test_throttling_threshold():
    limit = g.max_samples_per_tick(1000)
    assert limit == 100 and g.max_samples_per_tick(250) == 400
    assert g.max_samples_per_tick(300) == 334
    assert g.throttles(REUSE, limit, limit) and not g.throttles(REUSE, limit - 1, limit)
    assert not g.throttles(DEFERRED, limit, limit) and g.throttles(DEFERRED, limit + 1, limit)


def test_bad_names_are_clear_errors():
    with pytest.raises(ValueError, match="unknown feature 'full_width'.*full_width_writes"):
        DEFERRED.has("full_width")
    with pytest.raises(ValueError, match="MAJOR.MINOR"):
        g.parse_release("6")
    with pytest.raises(ValueError, match="unknown patch 'mine'"):
        g.Generation.at("x", "6.6", "mine")


def test_generations_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFERRED.release = (6, 6)


def test_docs_show_the_table_as_the_module_has_it():
    with open(os.path.join(ROOT, "docs", "generations.md"), encoding="utf-8") as fh:
        assert g.markdown_table() in fh.read()


def test_the_readme_shows_the_table_as_the_module_has_it():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as fh:
        assert g.markdown_table() in fh.read()
