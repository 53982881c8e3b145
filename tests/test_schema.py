import dataclasses

import msgpack
import pytest

from common import schema
from common.cmask import Filter
from common.schema import MsgType, ProtocolError

pytestmark = pytest.mark.unit


def frame(**fields):
    env = {"v": [schema.PROTOCOL_MAJOR, 0], "t": "heartbeat", "s": 0, "b": {"progress": 1}}
    env.update(fields)
    return msgpack.packb(env)


STRETCH = schema.Stretch(2000, {"instructions": 5000, "cycles": 2000}, [0, 1], [1000, 3])
SAMPLES = schema.SampleSet(2, 30, 10, 20, 20, [10, 20])
VCPU = schema.VcpuReport(
    0, 3, None, "oncpu", schema.HandleEventReport(SAMPLES, SAMPLES, {"skipped_active_here": 2},
                                                  {"clock_read": 2}),
    {"msr_write": 4}, {"create": 1}, 2, 0, 2, 5, {}, 0, schema.Affinity(99, 3, [1]), 0,
    schema.NmiHandlerReport(SAMPLES, SAMPLES, {"rdpmc": 2}, 400), {"wrmsr": 9}, 0, 1000, 900, 50,
    {}, "oncpu", "4.20+rfc-oncpu", 0)
GUEST_VCPU = schema.GuestVcpuReport(
    0, "pmis", None, 2, 2, [schema.GuestEventReport("record:instructions", "instructions", 20, 2,
                                                    10, 5, 5, 20)], 1, 0, 0, {"rdpmc": 2}, 0,
    [schema.Check("exact", True, "")], None, 7,
    [schema.Violation("count_mismatch", 0, 0, "read 1, want 2", deficit=1),
     schema.Violation("spurious_pmi", 0, None, "PMI with no overflow")])


@pytest.mark.timeout(10)
@pytest.mark.parametrize("body", [
    schema.Hello("kvm", "kvm-vm0", 12, {"a": "ipc://x"}),
    schema.PerfCall(3, schema.PerfCreate("instructions", False, True, 100, 0, True,
                                         Filter(2, False, True)),
                    schema.Retired({"instructions": 5}, [STRETCH], 7)),
    schema.Sched(4, schema.SchedOut(), schema.Retired({}, [], 0)),
    schema.Account(5, schema.Retired({"cycles": 9}, [], 1)),
    schema.HostReply(3, True, schema.Created(1, 0), 100, {"pmu_wrmsr": 2},
                     {"instructions": 9}, [schema.FilteredBudget("llc_misses", Filter(1, True,
                                                                                     False), 4)]),
    schema.HostReply(4, False, None, 0, {}, {}, [], "sched_in: pCPU 9999"),
    schema.HostReply(5, True, schema.Ticked(True), 0, {}, {}, []),
    schema.Overflow(1, 0, 10), schema.Exit("wrmsr", 0x38F, (1 << 64) - 1, {}, False),
    schema.Exit("budget", 0, 0, {"cycles": 5}, False, [STRETCH]),
    schema.Entry(5, False, {"instructions": 1}, [1, 2, 3, 4], True), schema.Inject("nmi", 2),
    schema.Error("bad_seq", "x", 4),
    schema.Report(1, schema.KvmReport("vm0", [VCPU])),
    schema.Report(1, schema.GuestReport("vm0", [GUEST_VCPU])),
    schema.Report(1, schema.HostReport("skx-4s", 224, {"create": schema.OpCost(SAMPLES, {"perf_ctx_lock": 2})}, 1,
                                       {"reserve": 1}, {}, 3, 3, 0, 0, 0, {"0": 7}, {},
                                       {"throttle": 1, "unthrottle": 1}, {"vm0/vcpu0": {"0": 5}},
                                       {})),
])
def test_round_trip(body):
    msg = schema.decode(schema.encode(body, 41))
    assert msg.seq == 41
    assert msg.body == body
    assert msg.type == schema.TYPE_OF[type(body)]


@pytest.mark.timeout(10)
@pytest.mark.parametrize("raw, kind", [
    (b"\xc1\x00garbage", "not_msgpack"),
    (msgpack.packb({"v": [1, 0], "t": "heartbeat", "s": 0, "b": {"progress": 1}})[:-3],
     "not_msgpack"),
    (msgpack.packb([1, 2, 3]), "not_a_map"),
    (b"\x00" * (schema.MAX_FRAME_BYTES + 1), "oversized"),
    (frame(v=[schema.PROTOCOL_MAJOR + 1, 0]), "bad_version"),
    (frame(v="1.0"), "wrong_type"),
    (frame(t="teleport"), "unknown_type"),
    (frame(b={}), "missing_field"),
    (frame(b={"progress": "lots"}), "wrong_type"),
    (frame(b={"progress": True}), "wrong_type"),
    (frame(s=-1), "wrong_type"),
    (msgpack.packb({"v": [1, 0], "t": "heartbeat", "b": {}}), "missing_field"),
])
def test_malformed_frames_are_typed_errors(raw, kind):
    with pytest.raises(ProtocolError) as err:
        schema.decode(raw)
    assert err.value.kind == kind


@pytest.mark.timeout(10)
def test_sequence_numbers_catch_gaps_replays_and_reorders():
    seq = schema.SeqCounter()
    seq.check_in(0, b"a")
    seq.check_in(0, b"b")                       # links are independent
    seq.check_in(1, b"a")
    for bad in (1, 3):                          # replay, gap
        with pytest.raises(ProtocolError) as err:
            seq.check_in(bad, b"a")
        assert err.value.kind == "bad_seq"
    assert [seq.next_out(b"x") for _ in range(3)] == [0, 1, 2]


@pytest.mark.timeout(10)
def test_every_message_type_has_a_payload():
    assert set(schema.PAYLOADS) == set(MsgType)


def call_frame(op) -> dict:
    """The body of a PerfCall of ``op`` as it travels, to be spoiled by a test."""
    return msgpack.unpackb(schema.encode(schema.PerfCall(1, op, schema.Retired({}, [], 0)), 0))


@pytest.mark.timeout(10)
@pytest.mark.parametrize("spoil, kind, where", [
    (lambda b: b["op"].__setitem__(0, "PerfFly"), "unknown_type", "perf_call.op"),
    (lambda b: b.__setitem__("op", {"handle": 1}), "wrong_type", "perf_call.op"),
    (lambda b: b["op"][1].__setitem__("handle", "1"), "wrong_type", "perf_call.op.PerfRead.handle"),
    (lambda b: b["op"][1].pop("handle"), "missing_field", "perf_call.op.PerfRead.handle"),
    (lambda b: b["retired"].pop("stretches"), "missing_field", "perf_call.retired.stretches"),
    (lambda b: b["retired"].__setitem__("stretches", [[1, {}, [0, 1], [1, 1]]]), "wrong_type",
     "perf_call.retired.stretches[0]"),
    (lambda b: b["retired"].__setitem__("stretches", [{"cycles": 1, "events": {},
                                                      "y0": [0, 1], "y1": [1, True]}]),
     "wrong_type", "perf_call.retired.stretches[0].y1[1]"),
])
def test_nested_records_are_decoded_strictly(spoil, kind, where):
    frame = call_frame(schema.PerfRead(7))
    spoil(frame["b"])
    with pytest.raises(ProtocolError) as err:
        schema.decode(msgpack.packb(frame))
    assert err.value.kind == kind and where in err.value.detail


@pytest.mark.timeout(10)
def test_every_perf_call_has_a_typed_result_and_a_name():
    assert set(schema.RESULT_OF) == set(schema.PERF_API.values())
    assert set(schema.OP_NAME) == {*schema.PERF_API.values(), *schema.SCHED_OPS.values()}
    for result in schema.RESULT_OF.values():
        assert result is type(None) or dataclasses.is_dataclass(result)
