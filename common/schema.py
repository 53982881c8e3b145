"""The one place where vpmu-emu's messages are defined.

Every frame is a msgpack map ``{"v": [major, minor], "t": type, "s": seq, "b": body}``. ``body`` is
one typed record per message type; a record's fields are plain values, other records, lists and
dicts of them, or one of several records (sent as ``[record name, map]``). ``decode`` is strict
down to the last nested field: anything else becomes a ``ProtocolError`` whose ``kind`` names the
class of fault and whose detail the path to it, so a receiver can log it, count it, answer it and
go on.
"""
from __future__ import annotations

import dataclasses
import enum
import types
import typing

import msgpack

from common.cmask import Filter

PROTOCOL_MAJOR = 2                # 2: typed perf API, host requests and reports
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
    # KVM vCPU thread <-> host
    PERF_CALL = "perf_call"
    SCHED = "sched"
    ACCOUNT = "account"
    HOST_REPLY = "host_reply"
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
    """What a process counted in one run, sent when the launcher says FINISH."""
    run: int
    stats: HostReport | KvmReport | GuestReport


@dataclasses.dataclass
class Shutdown:
    reason: str
    failed: bool = False           # the run was aborted: exit non-zero after logging why


@dataclasses.dataclass
class Heartbeat:
    progress: int                  # steps done so far (exits served or made); only grows
    doing: str = ""                # the last step, for a person reading why a process is stuck
    run_steps: int | None = None   # a process that counts runs (the guest): this run's steps
    run_pmis: int = 0              # and the PMIs its handler handled, for the progress display


@dataclasses.dataclass
class Error:
    kind: str
    detail: str
    ref: int = -1                  # id or seq of the message the error answers, -1 if none


# --- KVM vCPU thread <-> host ---------------------------------------------------------------------
# A vCPU thread asks the host for one of three things: a perf API call (PerfCall), a scheduling of
# its task (Sched), or only the counting of what the guest retired (Account). Each carries the
# guest events retired on the pCPU since the last request, which the host counts first (the
# hardware counted them while the guest ran); each is answered by one HostReply with its id.

@dataclasses.dataclass
class Stretch:
    """A part of one guest retire call with no exit inside: the call retired ``events`` (kind ->
    events) evenly interleaved over ``cycles`` cycles, and this part runs from position ``y0`` to
    ``y1`` of that cycle axis, each a [numerator, denominator]. EDGE/INV/CMASK counters count
    from these (common/cmask.py)."""
    cycles: int
    events: dict
    y0: list[int]
    y1: list[int]


@dataclasses.dataclass
class Retired:
    """The guest events retired on the vCPU's pCPU since the last request (kind -> events), their
    stretches, and the caller's modeled clock (drives perf's deferred work)."""
    events: dict
    stretches: list[Stretch]
    now_ns: int


# The perf API calls (kernel/events/core.c), each a record, and their results.

@dataclasses.dataclass
class PerfCreate:
    """perf_event_create_kernel_counter(attr, cpu = -1, task = current, overflow handler, pmc):
    a pinned, guest-only counter bound to the vCPU task."""
    kind: str
    exclude_user: bool
    exclude_kernel: bool
    sample_period: int             # 0: a counting event, its overflows never reach KVM
    context: int                   # KVM's pmc index, handed back with each overflow
    intr: bool                     # kvm_perf_overflow_intr rather than kvm_perf_overflow
    filter: Filter | None = None   # EDGE/INV/CMASK: the event counts cycles
    gp_encoding: bool = False      # asked through a GP event select (0x013C), not fixed counter
                                   # 2's pseudo-encoding 0x0300, which only fixed counter 2 takes


@dataclasses.dataclass
class PerfRelease:
    """perf_event_release_kernel."""
    handle: int


@dataclasses.dataclass
class PerfRead:
    """perf_event_read_value."""
    handle: int


@dataclasses.dataclass
class PerfPause:
    """perf_event_pause: disable and read, and reset the count when ``reset``."""
    handle: int
    reset: bool


@dataclasses.dataclass
class PerfPeriod:
    """perf_event_period."""
    handle: int
    period: int


@dataclasses.dataclass
class PerfEnable:
    """perf_event_enable."""
    handle: int


@dataclasses.dataclass
class PerfDisable:
    """perf_event_disable."""
    handle: int


@dataclasses.dataclass
class Created:
    """The new event and its ``oncpu`` (the pCPU where it got a counter, or -1)."""
    handle: int
    oncpu: int


@dataclasses.dataclass
class Count:
    """The event's count (what release and pause return)."""
    count: int


@dataclasses.dataclass
class ReadValue:
    """perf_event_read_value's count, time enabled and time running (in guest cycles)."""
    count: int
    enabled: int
    running: int


PerfOp = PerfCreate | PerfRelease | PerfRead | PerfPause | PerfPeriod | PerfEnable | PerfDisable
PERF_API: dict[str, type] = {"create": PerfCreate, "release": PerfRelease, "read": PerfRead,
                             "pause": PerfPause, "period": PerfPeriod, "enable": PerfEnable,
                             "disable": PerfDisable}
RESULT_OF: dict[type, type] = {PerfCreate: Created, PerfRelease: Count, PerfRead: ReadValue,
                               PerfPause: Count, PerfPeriod: type(None), PerfEnable: type(None),
                               PerfDisable: type(None)}


# What the host scheduler does to the vCPU task.

@dataclasses.dataclass
class SchedIn:
    """The task starts running on ``cpu`` (after a time slice, or at its first entry)."""
    cpu: int


@dataclasses.dataclass
class SchedOut:
    """The task leaves its pCPU."""


@dataclasses.dataclass
class Migrate:
    """The task moves to ``cpu``: dequeued on its old pCPU, enqueued on the new one."""
    cpu: int


@dataclasses.dataclass
class Tick:
    """The host timer tick on ``cpu``, the task's pCPU: perf's tick work, then a switch to the next
    task only if another one waits for the pCPU (the reply comes when the task runs again)."""
    cpu: int


@dataclasses.dataclass
class Ticked:
    """Whether the tick switched the task out (and so its return was a schedule-in)."""
    switched: bool


SchedOp = SchedIn | SchedOut | Migrate | Tick
SCHED_OPS: dict[str, type] = {"sched_in": SchedIn, "sched_out": SchedOut, "migrate": Migrate,
                              "tick": Tick}
OP_NAME: dict[type, str] = {cls: name for name, cls in {**PERF_API, **SCHED_OPS}.items()}


@dataclasses.dataclass
class PerfCall:
    """A call of the perf API by KVM on the vCPU thread."""
    id: int
    op: PerfOp
    retired: Retired


@dataclasses.dataclass
class Sched:
    """A scheduling of the vCPU task by the host scheduler."""
    id: int
    op: SchedOp
    retired: Retired


@dataclasses.dataclass
class Account:
    """No call: only the counting of what the guest retired, when that reached a host counter's
    overflow (the host PMI that made the guest exit) or EDGE/INV/CMASK counters must judge it."""
    id: int
    retired: Retired


@dataclasses.dataclass
class FilteredBudget:
    """An EDGE/INV/CMASK event's budget: the increments ``left`` before it overflows."""
    kind: str
    filter: Filter
    left: int


@dataclasses.dataclass
class HostReply:
    """The answer to the PerfCall, Sched or Account with this ``id``: the call's result (RESULT_OF;
    None for the others), what the host spent, and the budget the guest may retire before one of
    the task's counters overflows."""
    id: int
    ok: bool
    result: Created | Count | ReadValue | Ticked | None
    cost_ns: int                   # modeled host nanoseconds of this request
    ledger: dict                   # cost parameter name -> times charged in this request
    budget: dict                   # event kind -> events that may retire before the next overflow
    filtered: list[FilteredBudget]
    error: str = ""


@dataclasses.dataclass
class Overflow:
    """The host PMI handler's overflow callback for a KVM-owned event."""
    handle: int
    context: int                   # the pmc index KVM registered with the event
    count: int


@dataclasses.dataclass
class Oncpu:
    """A change of a KVM event's ``oncpu`` (schedule-in or -out, enable, disable, contention and
    the error state), pushed ahead of the reply of the request in which it happened: KVM reads
    ``event->oncpu`` of its own events, so every change reaches it, once."""
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
    stretches: list[Stretch] = dataclasses.field(default_factory=list)
    # sent while the last entry named EDGE/INV/CMASK counters (Entry.filtered), which count them


@dataclasses.dataclass
class Entry:
    """A VM entry: the result of the exit and the events the guest may retire before it must exit."""
    value: int
    gp: bool
    budget: dict
    values: list[int] = dataclasses.field(default_factory=list)   # CPUID: eax, ebx, ecx, edx
    nmi_window: bool = False       # an NMI waits for the guest's IRET: exit when NMIs unblock
    stop: str = ""                 # the run's budget is spent: the guest must stop (the reason)
    filtered: list[FilteredBudget] = dataclasses.field(default_factory=list)   # HostReply's


@dataclasses.dataclass
class Inject:
    """An event injected with the next VM entry (a PMI through LVTPC)."""
    kind: str                      # "nmi" or "intr"
    vector: int


# --- the end-of-run reports (Report.stats) --------------------------------------------------------

@dataclasses.dataclass
class SampleSet:
    """Timing samples (common/stats.py): exact count, sum, min and max, the max of the steady
    samples, and a bounded seeded reservoir for the percentiles that starts with the one-time
    sample."""
    count: int
    sum: int
    min: int
    max: int
    steady_max: int
    reservoir: list[int]


@dataclasses.dataclass
class OpCost:
    """One kind of request the host served: its modeled ns (at the parameters' mid values) and
    the cost parameters it charged (name -> times, over every call)."""
    modeled_ns: SampleSet
    ledger: dict


@dataclasses.dataclass
class HostReport:
    preset: str
    cpus: int
    perf_costs: dict[str, OpCost]  # request name (OP_NAME, "account") -> its costs
    pmc_refcount: int
    refcount_crossings: dict       # "reserve" / "release": pmc_refcount crossing zero
    static_key: dict               # perf_sched_events: "enable", "disable", "deferred_cancelled"
    overflows: int                 # host PMIs handled
    overflows_to_owner: int        # of them, overflow callbacks to KVM
    sched_in_other_cpu: int        # a task scheduled in on another pCPU than it left
    pinned_errors: int             # events put in the error state for want of a counter
    run_queue_waits: int           # tasks that waited for their pCPU
    pcpu_modeled_ns: dict          # pCPU (str) -> modeled ns it spent, guest and host
    unavailable: dict              # task -> pmc index (str) -> events lost in the error state
    throttled: dict                # "throttle" / "unthrottle": __perf_event_account_interrupt's
    throttled_lost: dict           # task -> pmc index (str) -> events lost while throttled
    protocol_errors: dict          # kind -> bad frames received


@dataclasses.dataclass
class HandleEventReport:
    """kvm_pmu_handle_event: its times, what each pending counter got, and the cost parameters
    its calls charged (name -> times, over every call)."""
    measured_ns: SampleSet         # time.perf_counter_ns of the KVM process
    modeled_ns: SampleSet          # the cost model's, at the parameters' mid values
    by_reason: dict
    ledger: dict


@dataclasses.dataclass
class NmiHandlerReport:
    """The guest's NMI handler, from the PMI's injection to its last exit: its times, the cost
    parameters charged in those windows and the guest time in them (in total)."""
    measured_ns: SampleSet
    modeled_ns: SampleSet
    ledger: dict
    guest_ns: int


@dataclasses.dataclass
class Affinity:
    """The vCPU thread on the machine running the emulator: its thread id, the emulated pCPU and
    the real CPUs it is pinned to (None: not pinned)."""
    tid: int
    pcpu: int
    cpus: list[int] | None = None


@dataclasses.dataclass
class VcpuReport:
    """What one KVM vCPU thread counted."""
    vcpu: int
    pcpu: int
    failure: str | None
    policy: str
    handle_event: HandleEventReport
    reprogram_counter: dict        # cause -> reprogram_counter calls
    perf_calls: dict               # PERF_API name -> calls
    overflows: int                 # overflow callbacks received
    overflows_ignored: int
    injected: int                  # PMIs injected
    timeslices: int
    migrations: dict               # kind -> moves
    oncpu_disagreements: int
    affinity: Affinity
    entry_retries: int
    nmi_handler: NmiHandlerReport
    exits: dict                    # reason -> exits
    gp_faults: int
    modeled_total_ns: int          # the vCPU's modeled time: guest, KVM and host
    modeled_guest_ns: int          # of it, in the guest
    modeled_other_exits_ns: int    # of it, VM transitions of exits that are not the vPMU's
    protocol_errors: dict
    generation: str                # the built-in generation the policy's release is, or its name
    release: str                   # the kernel release it models: '4.20', '4.20+rfc-oncpu', '6.12'
    emulated_instructions: int     # instructions KVM retired in vPMCs (kvm_pmu_trigger_event)


@dataclasses.dataclass
class KvmReport:
    vm: str
    vcpus: list[VcpuReport]


@dataclasses.dataclass
class GuestEventReport:
    """One event of the guest's perf, as perf would print it."""
    name: str
    kind: str
    count: int
    samples: int
    sample_period: int
    enabled_ns: int                # the guest's perf clock: time enabled and time running
    running_ns: int
    scaled: int                    # count x enabled / running


@dataclasses.dataclass
class Check:
    """One check of a guest test program."""
    name: str
    passed: bool
    detail: str


@dataclasses.dataclass
class ProgramError:
    """The exception a guest program's ``main`` raised, and the program's own frames, innermost
    last (guest/program.py)."""
    error: str
    traceback: list[str]


@dataclasses.dataclass
class Violation:
    """An invariant the oracle found broken."""
    kind: str
    vcpu: int
    counter: int | None
    detail: str
    deficit: int | None = None     # count_mismatch: events the counter is short of
    trapped: int | None = None     # count_mismatch: trapped instructions among them (the
    #                                oracle counted them; a release before 5.17 does not)


@dataclasses.dataclass
class GuestVcpuReport:
    vcpu: int
    reason: str                    # why the vCPU stopped
    failure: str | None
    pmis_delivered: int
    pmis_handled: int              # PMIs whose GLOBAL_STATUS named an overflowed counter
    events: list[GuestEventReport]
    ticks: int
    rotations: int
    context_switches: int
    exits: dict
    gp_faults: int
    checks: list[Check]
    program_error: ProgramError | None
    invariants_checked: int
    violations: list[Violation]


@dataclasses.dataclass
class GuestReport:
    vm: str
    vcpus: list[GuestVcpuReport]


PAYLOADS: dict[MsgType, type] = {
    MsgType.HELLO: Hello, MsgType.WELCOME: Welcome, MsgType.CONFIGURE: Configure,
    MsgType.READY: Ready, MsgType.START: Start, MsgType.DONE: Done, MsgType.FINISH: Finish,
    MsgType.REPORT: Report, MsgType.SHUTDOWN: Shutdown, MsgType.HEARTBEAT: Heartbeat,
    MsgType.ERROR: Error, MsgType.PERF_CALL: PerfCall, MsgType.SCHED: Sched,
    MsgType.ACCOUNT: Account, MsgType.HOST_REPLY: HostReply, MsgType.OVERFLOW: Overflow,
    MsgType.ONCPU: Oncpu, MsgType.EXIT: Exit, MsgType.ENTRY: Entry, MsgType.INJECT: Inject,
}
TYPE_OF = {cls: t for t, cls in PAYLOADS.items()}
_TYPE_NAMED = {t.value: t for t in MsgType}


@dataclasses.dataclass
class Message:
    type: MsgType
    seq: int
    body: typing.Any


# --- typed records on the wire --------------------------------------------------------------------
# A field is checked against its annotation: plain types by their exact Python type (a bool is not
# an int), a record as a map of its fields, one of several records as [record name, map],
# list[X] and dict[K, V] element by element. A field with a default may be absent; a field the
# record does not know is ignored. Each record type gets a decoder and an encoder once, at import;
# the path to a bad value is built only when there is one.

_PLAIN = {int: (int,), float: (float, int), str: (str,), bool: (bool,), dict: (dict,),
          list: (list,), type(None): (type(None),)}


class _Bad(Exception):
    """A bad value at ``path`` below the record being decoded (becomes a ProtocolError)."""

    def __init__(self, kind: str, path: str, value=None):
        self.kind, self.path, self.value = kind, path, value

    def at(self, step: str) -> "_Bad":
        self.path = step + self.path
        return self


def _check(allowed: tuple):
    def decode(value):
        if type(value) not in allowed:
            raise _Bad("wrong_type", "", value)
        return value
    return decode


class _Codec(typing.NamedTuple):
    decode: typing.Callable           # wire value -> Python value, or raise _Bad
    encode: typing.Callable | None    # Python value -> wire value; None: as it is
    plain: tuple | None = None        # the allowed types, when a type check is all it takes


_CODECS: dict[type, _Codec] = {}


def _record(cls: type) -> _Codec:
    if cls in _CODECS:
        return _CODECS[cls]
    hints = typing.get_type_hints(cls)
    fields = []                      # name, plain types or None, decoder, path step, default
    nested = []                      # name, encoder: the fields that are not sent as they are
    for f in dataclasses.fields(cls):
        codec = _codec(hints[f.name])
        default = f.default_factory if f.default_factory is not dataclasses.MISSING else (
            (lambda v=f.default: v) if f.default is not dataclasses.MISSING else None)
        fields.append((f.name, codec.plain, codec.decode, "." + f.name, default))
        if codec.encode is not None:
            nested.append((f.name, codec.encode))

    def decode(value):
        if type(value) is not dict:
            raise _Bad("wrong_type", "", value)
        args = []
        for name, plain, sub, step, default in fields:
            if name in value:
                v = value[name]
                if plain is not None:
                    if type(v) not in plain:
                        raise _Bad("wrong_type", step, v)
                else:
                    try:
                        v = sub(v)
                    except _Bad as bad:
                        raise bad.at(step) from None
            elif default is None:
                raise _Bad("missing_field", step)
            else:
                v = default()
            args.append(v)
        return cls(*args)

    if nested:
        def encode(obj):
            out = dict(obj.__dict__)                 # a record's __dict__ holds its fields
            for name, enc in nested:
                out[name] = enc(out[name])
            return out
    else:
        def encode(obj):
            return obj.__dict__
    _CODECS[cls] = _Codec(decode, encode)
    return _CODECS[cls]


def _one_of(records: list[type], optional: bool) -> _Codec:
    """One of several records, as [record name, map]; or None when the annotation allows it."""
    by_name = {cls.__name__: _record(cls) for cls in records}
    tagged = {cls: (cls.__name__, by_name[cls.__name__].encode) for cls in records}

    def decode(value):
        if value is None and optional:
            return None
        if type(value) is not list or len(value) != 2 or type(value[0]) is not str:
            raise _Bad("wrong_type", "", value)
        codec = by_name.get(value[0])
        if codec is None:
            raise _Bad("unknown_type", f": no record {value[0]!r} here")
        try:
            return codec.decode(value[1])
        except _Bad as bad:
            raise bad.at("." + value[0]) from None

    def encode(obj):
        if obj is None:
            return None
        name, enc = tagged[type(obj)]
        return [name, enc(obj)]
    return _Codec(decode, encode)


def _optional(inner: _Codec) -> _Codec:
    def decode(value):
        return None if value is None else inner.decode(value)

    if inner.encode is None:
        return _Codec(decode, None)
    return _Codec(decode, lambda obj: None if obj is None else inner.encode(obj))


def _list_of(item: _Codec) -> _Codec:
    def decode(value):
        if type(value) is not list:
            raise _Bad("wrong_type", "", value)
        if item.plain is not None:
            for i, v in enumerate(value):
                if type(v) not in item.plain:
                    raise _Bad("wrong_type", f"[{i}]", v)
            return value
        out = []
        for v in value:
            try:
                out.append(item.decode(v))
            except _Bad as bad:
                raise bad.at(f"[{len(out)}]") from None
        return out

    if item.encode is None:
        return _Codec(decode, None)
    return _Codec(decode, lambda obj: [item.encode(v) for v in obj])


def _dict_of(key: _Codec, item: _Codec) -> _Codec:
    def decode(value):
        if type(value) is not dict:
            raise _Bad("wrong_type", "", value)
        out = {}
        for k, v in value.items():
            if type(k) not in key.plain:
                raise _Bad("wrong_type", " key", k)
            try:
                out[k] = item.decode(v)
            except _Bad as bad:
                raise bad.at(f"[{k!r}]") from None
        return out

    if item.encode is None:
        return _Codec(decode, None)
    return _Codec(decode, lambda obj: {k: item.encode(v) for k, v in obj.items()})


def _codec(tp) -> _Codec:
    """The codec of one annotation."""
    if tp in _PLAIN:
        return _Codec(_check(_PLAIN[tp]), None, _PLAIN[tp])
    if dataclasses.is_dataclass(tp):
        return _record(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is list:
        return _list_of(_codec(args[0]))
    if origin is dict:
        return _dict_of(_codec(args[0]), _codec(args[1]))
    if origin in (types.UnionType, typing.Union):
        rest = [a for a in args if a is not type(None)]
        if all(a in _PLAIN for a in args):
            allowed = tuple(t for a in args for t in _PLAIN[a])
            return _Codec(_check(allowed), None, allowed)
        if len(rest) == 1:
            return _optional(_codec(rest[0]))
        if all(dataclasses.is_dataclass(a) for a in rest):
            return _one_of(rest, optional=len(rest) < len(args))
    raise TypeError(f"schema: no wire form for {tp!r}")


for _cls in PAYLOADS.values():
    _record(_cls)
_NAME_OF = {cls: t.value for cls, t in TYPE_OF.items()}
_VERSION = [PROTOCOL_MAJOR, PROTOCOL_MINOR]


def encode(body: typing.Any, seq: int) -> bytes:
    """Encode a payload record as one frame numbered ``seq`` on its link."""
    return msgpack.packb({"v": _VERSION, "t": _NAME_OF[type(body)], "s": seq,
                          "b": _CODECS[type(body)].encode(body)}, use_bin_type=True)


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
    mtype = _TYPE_NAMED.get(obj["t"]) if type(obj["t"]) is str else None
    if mtype is None:
        raise ProtocolError("unknown_type", f"type {obj['t']!r}")
    if type(obj["s"]) is not int or obj["s"] < 0:
        raise ProtocolError("wrong_type", f"seq {obj['s']!r}")
    body = obj["b"]
    if not isinstance(body, dict):
        raise ProtocolError("wrong_type", f"{mtype.value} body is {type(body).__name__}")
    try:
        return Message(mtype, obj["s"], _CODECS[PAYLOADS[mtype]].decode(body))
    except _Bad as bad:
        where = mtype.value + bad.path
        if bad.kind == "wrong_type":
            raise ProtocolError("wrong_type", f"{where} is {type(bad.value).__name__}") from None
        raise ProtocolError(bad.kind, where) from None


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
