"""Run configuration: defaults, a TOML scenario file over them, command-line flags over that.

The resolved configuration is a plain dict of sections; the launcher writes it into the run
directory as a scenario file (``to_toml``) so that a run can be repeated, and sends each process
the part it needs.
"""
from __future__ import annotations

import copy
import math
import os
import re
import tomllib

from common import costs, kernels, msr, throttle
from common.topology import PRESETS

# The seed scenario (shared/reference/seed-rfc-patch.txt): a 4-socket Skylake-SP host with the NMI
# watchdog off, one VM with one vCPU, the guest sampling instructions on GP counter 0 with a fixed
# period. 10,000,000 instructions at the compute profile's IPC of ~2 on 2.5 GHz is ~2 ms of guest
# time between PMIs.
# Host tasks per second per pCPU that preempt a vCPU (--host-load): the per-CPU vmstat_update work
# of an otherwise idle host, queued every sysctl_stat_interval = HZ jiffies = 1 s (mm/vmstat.c, 4.20
# and 6.12). What a busy host adds (kworkers, ksoftirqd, other tasks) has no published figure.
HOST_LOAD = 1.0
# How long one host task holds the pCPU. Unverified: no published run time of a per-CPU kworker
# such as vmstat_update; a context switch each way (~2-4 us, Li, Ding and Shen, "Quantifying the
# cost of context switch", ExpCS 2007) and a short work item.
HOST_TASK_NS = 20_000
DEFAULTS: dict = {
    "run": {"policies": ["always", "oncpu", "reuse", "deferred"], "pmis": 200, "seed": 1, "transport": "ipc",
            "max_exits": 1_000_000, "max_modeled_ms": 60_000, "timeout_s": 300,
            "guest_program": "", "strict": False},
    "host": {"preset": "skx-4s", "watchdog": False, "host_pinned": 0, "busy_pcpus": [],
             "event_binding": "task", "kernel": kernels.DEFAULT, "x2apic": "cluster",
             "host_load": HOST_LOAD, "perf_max_sample_rate": throttle.DEFAULT_MAX_SAMPLE_RATE},
    "vm": {"vcpus": 1, "pin": "compact", "timeslice_ms": 4, "real_affinity": True,
           "migrate": "none", "migrations": []},
    "guest": {"workload": "compute", "event": "instructions", "period": 10_000_000,
              "sessions": [], "watchdog": False, "context_switch_ms": 0},
    "costs": {},
    # how this launch is deployed rather than what it emulates (flags of the same names)
    "launch": {"out": "", "force": False, "external": [], "bind": "127.0.0.1", "host_addr": "",
               "kvm_addr": "", "plan": False, "insecure_tcp": False, "lost_after": 2.0,
               "stuck_after": 5.0, "explain_costs": False, "plot": False, "quiet": False},
}

POLICIES = ("always", "oncpu", "reuse", "deferred")
WORKLOADS = ("compute", "branchy", "memory")
TRANSPORTS = ("ipc", "tcp")
PIN_RULES = ("compact", "spread")
MIGRATE_KINDS = ("none", "every", "random", "window", "to-busy")


class ConfigError(ValueError):
    """An invalid scenario file or flag, named by where it came from, its key and why."""

    def __init__(self, where: str, key: str, reason: str):
        super().__init__(f"{where}: {key}: {reason}")


def _check(cond: bool, where: str, key: str, reason: str) -> None:
    if not cond:
        raise ConfigError(where, key, reason)


def _int(value, where, key, lo, hi=None) -> None:
    _check(type(value) is int and value >= lo and (hi is None or value <= hi), where, key,
           f"must be a whole number >= {lo}" + (f" and <= {hi}" if hi is not None else "")
           + f", got {value!r}")


def merge(base: dict, layer: dict, where: str) -> dict:
    """Lay ``layer`` (a scenario file or flags) over ``base``; unknown keys are errors."""
    out = copy.deepcopy(base)
    for section, values in layer.items():
        _check(section in DEFAULTS, where, section, f"unknown section; known: {', '.join(DEFAULTS)}")
        _check(isinstance(values, dict), where, section, "must be a table")
        for key, value in values.items():
            if section != "costs":
                _check(key in DEFAULTS[section], where, f"{section}.{key}",
                       f"unknown key; known: {', '.join(DEFAULTS[section])}")
            out[section][key] = value
    return out


def load_scenario(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(path, "-", f"cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "-", f"not valid TOML: {exc}") from None


def validate(cfg: dict, where: str) -> dict:
    """Check every key of a resolved configuration; return it."""
    run, host, vm, guest = cfg["run"], cfg["host"], cfg["vm"], cfg["guest"]
    _check(isinstance(run["policies"], list) and run["policies"], where, "run.policies",
           "must be a non-empty list")
    for p in run["policies"]:
        if isinstance(p, str) and p.endswith(".py"):
            _check(os.path.isfile(p), where, "run.policies", f"policy file {p!r} not found")
            continue
        _check(p in POLICIES, where, "run.policies", f"unknown policy {p!r}; known: "
               + ", ".join(POLICIES) + ", or a policy file ending in .py")
    _int(run["pmis"], where, "run.pmis", 1)
    _int(run["seed"], where, "run.seed", 0)
    _int(run["max_exits"], where, "run.max_exits", 1)
    _int(run["timeout_s"], where, "run.timeout_s", 1)
    _check(run["transport"] in TRANSPORTS, where, "run.transport", "must be ipc or tcp")
    _check(host["preset"] in PRESETS, where, "host.preset",
           f"unknown preset {host['preset']!r}; known: {', '.join(PRESETS)}")
    _check(type(host["watchdog"]) is bool, where, "host.watchdog", "must be true or false")
    _check(host["kernel"] in kernels.KERNELS, where, "host.kernel",
           f"unknown host kernel {host['kernel']!r}; modeled: {', '.join(kernels.KERNELS)}")
    _check(host["x2apic"] in ("cluster", "physical"), where, "host.x2apic",
           "must be cluster or physical")
    topo = PRESETS[host["preset"]]
    _int(host["host_pinned"], where, "host.host_pinned", 0, topo.gp_counters)
    most = 0.5e9 / HOST_TASK_NS                  # host work takes at most half of each pCPU
    _check(type(host["host_load"]) in (int, float) and 0 <= host["host_load"] <= most, where,
           "host.host_load", f"must be host tasks per second from 0 to {most:g} (each holds the "
           f"pCPU {HOST_TASK_NS // 1000} us), got {host['host_load']!r}")
    _int(host["perf_max_sample_rate"], where, "host.perf_max_sample_rate", 1)
    _int(run["max_modeled_ms"], where, "run.max_modeled_ms", 1)
    _int(vm["vcpus"], where, "vm.vcpus", 1, topo.ncpus)
    _int(vm["timeslice_ms"], where, "vm.timeslice_ms", 1)
    _check(type(vm["real_affinity"]) is bool, where, "vm.real_affinity", "must be true or false")
    if isinstance(vm["pin"], list):
        _check(len(vm["pin"]) == vm["vcpus"], where, "vm.pin",
               f"names {len(vm['pin'])} pCPUs for {vm['vcpus']} vCPUs")
        for cpu in vm["pin"]:
            _int(cpu, where, "vm.pin", 0, topo.ncpus - 1)
    else:
        _check(vm["pin"] in PIN_RULES, where, "vm.pin",
               f"must be a list of pCPUs or one of {', '.join(PIN_RULES)}")
    _check(host["event_binding"] in ("task", "cpu"), where, "host.event_binding",
           "must be task or cpu")
    _check(isinstance(host["busy_pcpus"], list), where, "host.busy_pcpus", "must be a list")
    for cpu in host["busy_pcpus"]:
        _int(cpu, where, "host.busy_pcpus", 0, topo.ncpus - 1)
    kind, _, arg = str(vm["migrate"]).partition(":")
    _check(kind in MIGRATE_KINDS, where, "vm.migrate",
           f"unknown kind {kind!r}; known: none, every:N, random:RATE, window, to-busy:K")
    if kind in ("every", "to-busy"):
        _check(arg.isdigit() and int(arg) >= 1, where, "vm.migrate", f"{kind} needs :N >= 1")
    if kind == "random":
        try:
            _check(float(arg) > 0, where, "vm.migrate", "random needs :RATE > 0 per second")
        except ValueError:
            raise ConfigError(where, "vm.migrate", "random needs :RATE per second") from None
    if kind == "to-busy" and not host["busy_pcpus"]:
        host["busy_pcpus"] = [topo.ncpus - 1]     # the last pCPU, all its counters held
    _check(isinstance(vm["migrations"], list), where, "vm.migrations", "must be a list of tables")
    for m in vm["migrations"]:
        _check(isinstance(m, dict) and set(m) == {"vcpu", "exit", "to"}, where, "vm.migrations",
               "each entry is {vcpu = N, exit = N, to = PCPU}")
        _int(m["vcpu"], where, "vm.migrations.vcpu", 0, vm["vcpus"] - 1)
        _int(m["exit"], where, "vm.migrations.exit", 1)
        _int(m["to"], where, "vm.migrations.to", 0, topo.ncpus - 1)
    _check(guest["workload"] in WORKLOADS, where, "guest.workload",
           f"unknown workload; known: {', '.join(WORKLOADS)}")
    _check(guest["event"] in msr.ARCH_EVENTS.values(), where, "guest.event",
           f"unknown event; known: {', '.join(msr.ARCH_EVENTS.values())}")
    _int(guest["period"], where, "guest.period", 2, (1 << 31) - 1)
    _check(type(guest["watchdog"]) is bool, where, "guest.watchdog", "must be true or false")
    _int(guest["context_switch_ms"], where, "guest.context_switch_ms", 0)
    _check(isinstance(guest["sessions"], list), where, "guest.sessions", "must be a list")
    for i, sess in enumerate(guest["sessions"]):
        key = f"guest.sessions[{i}]"
        _check(isinstance(sess, dict) and set(sess) <= {"mode", "event", "period", "freq"},
               where, key, "keys are mode, event, period, freq")
        _check(sess.get("mode") in ("record", "stat"), where, key, "mode is record or stat")
        _check(sess.get("event") in msr.ARCH_EVENTS.values(), where, key,
               f"event is one of {', '.join(msr.ARCH_EVENTS.values())}")
        if sess["mode"] == "record":
            _check(("period" in sess) != ("freq" in sess), where, key,
                   "record takes period = N or freq = HZ")
            _int(sess.get("period", sess.get("freq")), where, key, 1)
        else:
            _check("period" not in sess and "freq" not in sess, where, key,
                   "stat takes no period or freq")
    launch = cfg["launch"]
    _check(isinstance(launch["external"], list) and all(
        r in ("host", "kvm", "guest") for r in launch["external"]), where, "launch.external",
        "must be a list of roles among host, kvm, guest")
    for key in ("out", "bind", "host_addr", "kvm_addr"):
        _check(isinstance(launch[key], str), where, f"launch.{key}", "must be a string")
    for key in ("insecure_tcp", "explain_costs", "force", "plan", "plot", "quiet"):
        _check(type(launch[key]) is bool, where, f"launch.{key}", "must be true or false")
    for key in ("lost_after", "stuck_after"):
        _check(type(launch[key]) in (int, float) and launch[key] > 0, where, f"launch.{key}",
               "must be a number of seconds > 0")
    _check(type(run["strict"]) is bool, where, "run.strict", "must be true or false")
    prog = run["guest_program"]
    _check(isinstance(prog, str) and (not prog or os.path.isfile(prog)), where,
           "run.guest_program", f"no such file {prog!r}")
    try:
        costs.resolve(cfg["costs"], topo)
    except ValueError as exc:
        raise ConfigError(where, "costs", str(exc)) from None
    return cfg


def guest_sessions(cfg: dict) -> list[dict]:
    """The guest's perf sessions: the scenario's list, or one ``perf record -e EVENT -c PERIOD``."""
    g = cfg["guest"]
    return g["sessions"] or [{"mode": "record", "event": g["event"], "period": g["period"]}]


def vcpu_pins(cfg: dict) -> list[int]:
    """The pCPU of each vCPU: the scenario's list, ``compact`` (pCPUs 0, 1, 2, ...) or ``spread``
    (round robin over the sockets: vCPU i on socket i mod S)."""
    pin, n = cfg["vm"]["pin"], cfg["vm"]["vcpus"]
    if isinstance(pin, list):
        return list(pin)
    if pin == "compact":
        return list(range(n))
    topo = PRESETS[cfg["host"]["preset"]]
    return [((i % topo.sockets) * topo.cores + i // topo.sockets) % topo.ncpus for i in range(n)]


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def to_toml(cfg: dict) -> str:
    """A scenario file for ``cfg`` (sections of plain values: str, bool, int, float, lists and
    tables of them), which ``load_scenario`` reads back to the same dict."""
    lines = []
    for section, values in cfg.items():
        lines.append(f"[{_toml_key(section)}]")
        lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in values.items()]
        lines.append("")
    return "\n".join(lines)


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _toml_str(key)


def _toml_str(s: str) -> str:
    special = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}
    return '"' + "".join(special.get(c) or (f"\\u{ord(c):04x}" if ord(c) < 0x20 or c == "\x7f"
                                            else c) for c in s) + '"'


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("nan" if math.isnan(v) else
                                                 "inf" if v > 0 else "-inf")
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"{type(v).__name__} has no TOML form here")
