import msgpack
import pytest

from common import schema
from common.schema import MsgType, ProtocolError

pytestmark = pytest.mark.unit


def frame(**fields):
    env = {"v": [schema.PROTOCOL_MAJOR, 0], "t": "heartbeat", "s": 0, "b": {"progress": 1}}
    env.update(fields)
    return msgpack.packb(env)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("body", [
    schema.Hello("kvm", "kvm-vm0", 12, {"a": "ipc://x"}),
    schema.PerfCall(3, "create", {"kind": "instructions"}, {"instructions": 5}, 7),
    schema.PerfReply(3, True, {"handle": 1}, 100, {"pmu_wrmsr": 2}, {"instructions": 9},
                     {"1": 0}),
    schema.Overflow(1, 0, 10), schema.Exit("wrmsr", 0x38F, (1 << 64) - 1, {}, False),
    schema.Entry(5, False, {"instructions": 1}, [1, 2, 3, 4], True), schema.Inject("nmi", 2),
    schema.Error("bad_seq", "x", 4),
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
