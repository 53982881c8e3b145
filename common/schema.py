"""The one place where vpmu-emu's messages are defined.

Every frame is a msgpack map ``{"v": [major, minor], "t": type, "s": seq, "b": body}``. ``body`` is
one small typed record per message type. ``decode`` is strict: anything else becomes a
``ProtocolError`` whose ``kind`` names the class of fault, so a receiver can log it, count it, answer
it and go on.
"""
from __future__ import annotations

import dataclasses
import enum
import typing

import msgpack

PROTOCOL_MAJOR = 1
PROTOCOL_MINOR = 0
MAX_FRAME_BYTES = 16 << 20        # reports of the run's processes to the launcher
MAX_LINK_FRAME_BYTES = 256 << 10  # perf calls, exits, entries: small by construction


class MsgType(str, enum.Enum):
    # control: launcher <-> every process
    HELLO = "hello"
    WELCOME = "welcome"
    CONFIGURE = "configure"
    READY = "ready"
    START = "start"
    DONE = "done"
    FINISH = "finish"
    REPORT = "report"
    SHUTDOWN = "shutdown"
    HEARTBEAT = "heartbeat"
    ERROR = "error"
    # KVM vCPU thread <-> host perf
    PERF_CALL = "perf_call"
    PERF_REPLY = "perf_reply"
    OVERFLOW = "overflow"
    ONCPU = "oncpu"
    # guest vCPU <-> KVM vCPU thread
    EXIT = "exit"
    ENTRY = "entry"
    INJECT = "inject"


class ProtocolError(Exception):
    """A frame that cannot be accepted; ``kind`` is one of KINDS."""

    KINDS = ("not_msgpack", "oversized", "not_a_map", "bad_version", "unknown_type",
             "missing_field", "wrong_type", "bad_seq", "unknown_peer")

    def __init__(self, kind: str, detail: str):
        assert kind in self.KINDS, kind
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


# --- payloads -------------------------------------------------------------------------------------

@dataclasses.dataclass
class Hello:
    role: str                      # "host", "kvm", "guest", "launcher", or a link role "vcpu"
    name: str                      # e.g. "kvm-vm0", "vm0/vcpu0"
    pid: int
    endpoints: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Welcome:
    name: str


@dataclasses.dataclass
class Configure:
    run: int
    config: dict                   # the resolved configuration of this run
    peers: dict                    # endpoints this process must connect to


@dataclasses.dataclass
class Ready:
    run: int
    endpoints: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Start:
    run: int


@dataclasses.dataclass
class Done:
    run: int
    reason: str


@dataclasses.dataclass
class Finish:
    run: int


@dataclasses.dataclass
class Report:
    run: int
    stats: dict


@dataclasses.dataclass
class Shutdown:
    reason: str
    failed: bool = False           # the run was aborted: exit non-zero after logging why


@dataclasses.dataclass
class Heartbeat:
    progress: int


@dataclasses.dataclass
class Error:
    kind: str
    detail: str
    ref: int = -1                  # id or seq of the message the error answers, -1 if none


@dataclasses.dataclass
class PerfCall:
    """A synchronous call into host perf from a vCPU thread; ``retired`` are the guest events retired
    on the vCPU's pCPU since the last call, which the host counts before it runs ``op``."""
    id: int
    op: str
    args: dict
    retired: dict
    now_ns: int = 0                # the caller's modeled clock (drives perf's deferred work)
    stretches: list = dataclasses.field(default_factory=list)  # see Exit.stretches


@dataclasses.dataclass
class PerfReply:
    id: int
    ok: bool
    result: dict                   # op-specific values (handle, count, enabled, running, ...)
    cost_ns: int                   # modeled host nanoseconds of this call
    ledger: dict                   # cost parameter name -> times charged in this call
    budget: dict                   # event kind -> events that may retire before the next overflow
    oncpu: dict                    # event handle (str) -> oncpu after this call
    error: str = ""
    filtered: list = dataclasses.field(default_factory=list)  # [kind, cmask, inv, edge, left]


@dataclasses.dataclass
class Overflow:
    """The host PMI handler's overflow callback for a KVM-owned event."""
    handle: int
    context: int                   # the pmc index KVM registered with the event
    count: int


@dataclasses.dataclass
class Oncpu:
    """A change of an event's ``oncpu`` that its owner did not ask for (schedule-in or -out,
    contention, the error state), pushed ahead of the reply of the call in which it happened."""
    handle: int
    oncpu: int
    error: bool


@dataclasses.dataclass
class Exit:
    """A VM exit. ``retired`` holds the events the guest retired since its last entry."""
    reason: str                    # rdmsr, wrmsr, rdpmc, cpuid, budget (a host counter's or
                                   # the time slice's end), nmi_window, hypercall (a test
                                   # program's migration request), flush (the emulator's, when
                                   # much has retired since the last exit), done
    index: int                     # MSR, RDPMC ECX or CPUID leaf
    value: int                     # WRMSR data, CPUID subleaf
    retired: dict
    in_nmi: bool = False           # the guest is inside its NMI handler (NMIs blocked)
    stretches: list = dataclasses.field(default_factory=list)
    # [cycles, {kind: events}, [y0 num, den], [y1 num, den]] for each stretch of a retire call
    # since the last exit: what EDGE/INV/CMASK counters need (common/filters.py)


@dataclasses.dataclass
class Entry:
    """A VM entry: the result of the exit and the events the guest may retire before it must exit."""
    value: int
    gp: bool
    budget: dict
    values: list = dataclasses.field(default_factory=list)   # CPUID: eax, ebx, ecx, edx
    nmi_window: bool = False       # an NMI waits for the guest's IRET: exit when NMIs unblock
    stop: str = ""                 # the run's budget is spent: the guest must stop (the reason)
    filtered: list = dataclasses.field(default_factory=list)  # as PerfReply.filtered


@dataclasses.dataclass
class Inject:
    """An event injected with the next VM entry (a PMI through LVTPC)."""
    kind: str                      # "nmi" or "intr"
    vector: int


PAYLOADS: dict[MsgType, type] = {
    MsgType.HELLO: Hello, MsgType.WELCOME: Welcome, MsgType.CONFIGURE: Configure,
    MsgType.READY: Ready, MsgType.START: Start, MsgType.DONE: Done, MsgType.FINISH: Finish,
    MsgType.REPORT: Report, MsgType.SHUTDOWN: Shutdown, MsgType.HEARTBEAT: Heartbeat,
    MsgType.ERROR: Error, MsgType.PERF_CALL: PerfCall, MsgType.PERF_REPLY: PerfReply,
    MsgType.OVERFLOW: Overflow, MsgType.ONCPU: Oncpu, MsgType.EXIT: Exit, MsgType.ENTRY: Entry, MsgType.INJECT: Inject,
}
TYPE_OF = {cls: t for t, cls in PAYLOADS.items()}


@dataclasses.dataclass
class Message:
    type: MsgType
    seq: int
    body: typing.Any


def _python_types(annotation: str) -> tuple[type, ...]:
    names = {"int": int, "str": str, "bool": bool, "dict": dict, "list": list}
    return tuple(names[part.strip()] for part in annotation.split("|"))


_FIELDS = {cls: [(f.name, _python_types(f.type),
                  f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
                 for f in dataclasses.fields(cls)] for cls in PAYLOADS.values()}


def encode(body: typing.Any, seq: int) -> bytes:
    """Encode a payload record as one frame numbered ``seq`` on its link."""
    fields = {name: getattr(body, name) for name, _, _ in _FIELDS[type(body)]}
    return msgpack.packb({"v": [PROTOCOL_MAJOR, PROTOCOL_MINOR], "t": TYPE_OF[type(body)].value,
                          "s": seq, "b": fields}, use_bin_type=True)


def decode(frame: bytes, max_bytes: int = MAX_FRAME_BYTES) -> Message:
    """Decode one frame strictly; raise ProtocolError naming what is wrong."""
    if len(frame) > max_bytes:
        raise ProtocolError("oversized", f"{len(frame)} bytes > {max_bytes}")
    try:
        obj = msgpack.unpackb(frame, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise ProtocolError("not_msgpack", f"{type(exc).__name__}: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("not_a_map", f"top level is {type(obj).__name__}")
    for key in ("v", "t", "s", "b"):
        if key not in obj:
            raise ProtocolError("missing_field", f"envelope has no {key!r}")
    version = obj["v"]
    if not (isinstance(version, list) and len(version) == 2
            and all(type(x) is int for x in version)):
        raise ProtocolError("wrong_type", f"version {version!r}")
    if version[0] != PROTOCOL_MAJOR:
        raise ProtocolError("bad_version",
                            f"protocol {version[0]}.{version[1]}, this is "
                            f"{PROTOCOL_MAJOR}.{PROTOCOL_MINOR}")
    try:
        mtype = MsgType(obj["t"])
    except (ValueError, TypeError):
        raise ProtocolError("unknown_type", f"type {obj['t']!r}") from None
    if type(obj["s"]) is not int or obj["s"] < 0:
        raise ProtocolError("wrong_type", f"seq {obj['s']!r}")
    body = obj["b"]
    if not isinstance(body, dict):
        raise ProtocolError("wrong_type", f"{mtype.value} body is {type(body).__name__}")
    cls = PAYLOADS[mtype]
    kwargs = {}
    for name, allowed, required in _FIELDS[cls]:
        if name not in body:
            if required:
                raise ProtocolError("missing_field", f"{mtype.value}.{name}")
            continue
        value = body[name]
        if type(value) not in allowed:
            raise ProtocolError("wrong_type", f"{mtype.value}.{name} is {type(value).__name__}")
        kwargs[name] = value
    return Message(mtype, obj["s"], cls(**kwargs))


class SeqCounter:
    """Per-link sequence numbers: what to send next and what to expect from each peer."""

    def __init__(self):
        self._next_out: dict[bytes, int] = {}
        self._expect_in: dict[bytes, int] = {}

    def next_out(self, peer: bytes = b"") -> int:
        seq = self._next_out.get(peer, 0)
        self._next_out[peer] = seq + 1
        return seq

    def check_in(self, seq: int, peer: bytes = b"") -> None:
        """Accept ``seq`` from ``peer`` or raise bad_seq for a gap, a replay or a reorder."""
        expected = self._expect_in.get(peer, 0)
        if seq != expected:
            raise ProtocolError("bad_seq", f"got seq {seq}, expected {expected}")
        self._expect_in[peer] = seq + 1
