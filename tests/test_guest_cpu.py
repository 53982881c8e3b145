"""The guest CPU and workload in-process, against a KVM that answers every exit at once."""
import random

import pytest

from common import msr, schema
from common.schema import MsgType
from common.cmask import Filter
from guest.cpu import FLUSH_AFTER, RunStopped
from guest.workload import PROFILES, Workload
from support import InstantKvm, make_cpu

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]


def split(total: int, parts: int, rng: random.Random) -> list[int]:
    cuts = sorted(rng.randint(0, total) for _ in range(parts - 1))
    return [b - a for a, b in zip([0, *cuts], [*cuts, total])]


@pytest.mark.parametrize("profile", sorted(PROFILES))
@pytest.mark.parametrize("ghz", [2.5, 2.1, 3.0])
def test_the_same_work_split_into_many_calls_makes_the_same_cycles(profile, ghz):
    rng = random.Random(f"{profile}-{ghz}")
    for _ in range(200):
        total = rng.randint(0, 10**7)
        whole = Workload(profile, None, ghz).derive(total)
        parts = Workload(profile, None, ghz)
        got = {"cycles": 0, "ref_cycles": 0}
        for n in split(total, rng.randint(1, 60), rng):
            out = parts.derive(n)
            got = {k: got[k] + out[k] for k in got}
        assert got == {k: whole[k] for k in got}, total


def test_reference_cycles_of_given_cycles_carry_too():
    one = Workload("compute", None, 2.5).derive(0, cycles=10**6)
    many = Workload("compute", None, 2.5)
    assert sum(many.derive(0, cycles=3)["ref_cycles"] for _ in range(10**6 // 3)) + \
        many.derive(0, cycles=10**6 % 3)["ref_cycles"] == one["ref_cycles"] == 800_000


def test_one_instruction_at_a_time_advances_the_guest_clock():
    cpu = make_cpu(InstantKvm({"cycles": 10**9}))
    for _ in range(1000):
        cpu.retire(instructions=1)
    assert cpu.cycles == 500                    # IPC 2: a cycle every second call


def test_what_piles_up_between_exits_stays_bounded():
    kvm = InstantKvm({"cycles": 10**9})
    cpu = make_cpu(kvm)
    for _ in range(3 * FLUSH_AFTER + 5):
        cpu.retire(instructions=1)
        assert cpu.pieces < FLUSH_AFTER and cpu.unsent_stretches == []   # nothing filtered
    flushes = [e for e in kvm.exits if e.reason == "flush"]
    assert len(flushes) == 3
    assert [e.retired["instructions"] for e in flushes] == [FLUSH_AFTER] * 3
    assert all(e.stretches == [] for e in flushes)


def test_stretches_are_kept_only_while_a_filtered_counter_reads_them():
    kvm = InstantKvm({"cycles": 10**9}, filtered=[schema.FilteredBudget(
        "instructions", Filter(1, False, False), 10**12)])
    cpu = make_cpu(kvm)
    for _ in range(2 * FLUSH_AFTER):
        cpu.retire(instructions=1)
        assert len(cpu.unsent_stretches) <= FLUSH_AFTER
    flushes = [e for e in kvm.exits if e.reason == "flush"]
    assert len(flushes) == 2
    # every second call retires a cycle; a chunk with no cycle counts no cycle
    assert [len(e.stretches) for e in flushes] == [FLUSH_AFTER // 2] * 2


def test_an_exit_budget_ends_a_program_that_only_retires():
    cpu = make_cpu(InstantKvm({"cycles": 10**9}), max_exits=4)
    cpu.raise_on_stop = True
    with pytest.raises(RunStopped, match="max_exits"):
        while True:
            cpu.retire(instructions=1)
    assert cpu.exits_total() == 4 and cpu.exits["flush"] == 3


def test_a_program_catching_every_exception_still_stops():
    cpu = make_cpu(InstantKvm({"cycles": 10**9}), max_exits=2)
    cpu.raise_on_stop = True
    with pytest.raises(RunStopped):
        while True:
            try:
                cpu.retire(instructions=1)
            except Exception:                     # noqa: BLE001 - what a program might do
                pass


@pytest.mark.parametrize("bad", [{"instructions": -1}, {"branches": 1.5},
                                 {"cycles": "10"}, {"llc_misses": True}])
def test_retire_refuses_what_is_not_a_count(bad):
    cpu = make_cpu(InstantKvm())
    with pytest.raises(ValueError, match=next(iter(bad))):
        cpu.retire(**bad)


class PmiAtEntryKvm(InstantKvm):
    """Injects an NMI with the entry that follows a WRMSR of GLOBAL_CTRL."""

    def __init__(self):
        super().__init__({"cycles": 10**9})
        self.inject = False

    def send(self, body, peer=b"", droppable=False):
        super().send(body)
        self.inject = body.reason == "wrmsr" and body.index == msr.MSR_CORE_PERF_GLOBAL_CTRL

    def recv(self, timeout_s=None, stop=None):
        if self.inject:
            self.inject = False
            return b"", schema.Message(MsgType.INJECT, 0, schema.Inject("nmi", 2))
        return super().recv(timeout_s, stop)


def test_a_trapped_instruction_takes_effect_and_retires_before_the_pmi_of_its_entry():
    """The PMI comes at the instruction boundary after the WRMSR: the oracle has its effect and
    has counted it (the counter is enabled after it, OS set) when the handler runs."""
    cpu = make_cpu(PmiAtEntryKvm())
    seen = []
    cpu.on_pmi(lambda c: seen.append((c.oracle.global_ctrl, c.oracle.value[0])))
    cpu.wrmsr(msr.MSR_P6_EVNTSEL0, 0x00C0 | msr.EVTSEL_EN | msr.EVTSEL_OS)
    cpu.wrmsr(msr.MSR_CORE_PERF_GLOBAL_CTRL, 1)
    assert seen == [(1, 2)]               # the EVTSEL write counted too (GLOBAL_CTRL at reset)
    cpu.cpuid(0)
    cpu.wrmsr_safe(0x12345, 0)            # InstantKvm enters without #GP: it retires too
    assert cpu.oracle.value[0] == 4 and cpu.oracle.trapped_total == 5
