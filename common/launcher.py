"""vpmu-emu's launcher: starts the host, KVM and guest processes, runs each policy, reports.

It owns its children: each runs in its own process group with its log file in the run directory,
its pid recorded there; shutdown is a ladder (a SHUTDOWN message, SIGTERM to the group, SIGKILL).

The exit code says how the run went, the first that applies of:
  2  an error: bad configuration or --out, a process that died, went silent or got stuck
  3  interrupted (Ctrl-C, SIGTERM): what was counted so far is in results.json
  1  a guest program check or an invariant failed
  4  incomplete: a vCPU stopped short of its target (a budget such as run.max_modeled_ms), so
     the policies' columns hold different amounts of work; an INCOMPLETE line says which
  0  every policy did all its work and nothing failed
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import logging
import math
import os
import shutil
import shlex
import signal
import subprocess
import sys
import tempfile
import time

import zmq

from common import (config, costs, kernels, logsetup, plots, progress, report, results, schema,
                    security, transport)
from common.schema import MsgType
from common.topology import PRESETS, preset
from guest import program
from guest.workload import PROFILES, Workload
from host.perf import reservation_cycle

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # the checkout
RUNS = os.path.join(ROOT if os.path.exists(os.path.join(ROOT, "pyproject.toml")) else
                    os.getcwd(), "runs")                # where runs go without --out

EXIT_OK, EXIT_CHECK_FAILED, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_INCOMPLETE = 0, 1, 2, 3, 4
LOG = logging.getLogger("launcher")


class LaunchError(Exception):
    """A failure a person must see: which process, what it was doing, the tail of its log."""

    def __init__(self, message: str, lost: tuple[str, ...] = ()):
        super().__init__(message)
        self.lost = lost                 # processes not to ask for a partial report


def build_parser() -> argparse.ArgumentParser:
    """The launcher's flags; docs/flags.md is generated from them (scripts/flags_doc.py)."""
    ap = argparse.ArgumentParser(
        prog="launch", description="Run the vpmu-emu scenario under each policy and compare.")
    ap.add_argument("--policy", help="comma-separated policies, or 'all' "
                    f"({', '.join(config.POLICIES)}); a path ending in .py loads a policy file")
    ap.add_argument("--pmis", type=int, help="stop each vCPU after N PMIs handled by the guest")
    ap.add_argument("--vcpus", type=int, help="vCPUs of the VM")
    ap.add_argument("--timeslice-ms", type=int,
                    help="modeled host timer tick (1000/HZ ms; default 4 = HZ 250): the vCPU exits "
                    "to the host, and is switched out only if another task waits for its pCPU")
    ap.add_argument("--period", type=int, help="sample period of the guest's perf record -c")
    ap.add_argument("--event", help="event the guest samples (instructions, cycles, ...)")
    ap.add_argument("--workload", help="guest workload profile: compute, branchy, memory")
    ap.add_argument("--seed", type=int, help="seed of the guest workloads")
    ap.add_argument("--guest-program", help="run main(cpu) from this file on every vCPU instead "
                    "of the guest perf driver")
    ap.add_argument("--guest-context-switch-ms", type=int, dest="context_switch_ms",
                    help="switch the guest's perf task with another task every N ms (0: never)")
    ap.add_argument("--guest-watchdog", choices=("on", "off"),
                    help="the guest's NMI watchdog (a cycles event on a counter)")
    ap.add_argument("--host-preset", help=f"emulated host: {', '.join(PRESETS)}")
    ap.add_argument("--watchdog", choices=("on", "off"), help="host NMI watchdog")
    ap.add_argument("--host-kernel", dest="kernel", help="host kernel release whose code the "
                    f"costs follow: {', '.join(kernels.KERNELS)} (default {kernels.DEFAULT})")
    ap.add_argument("--x2apic", choices=("cluster", "physical"),
                    help="x2APIC mode of the host (cluster unless firmware forces physical)")
    ap.add_argument("--cost", action="append", default=[], metavar="NAME=NS",
                    help="override one cost parameter: NAME=NS or NAME=LOW:MID:HIGH (repeatable)")
    ap.add_argument("--strict", action="store_true", default=None,
                    help="fail the run (exit 1) on any deviation too: a known limit of the "
                    "release, such as uncounted trapped instructions (see docs/results.md)")
    ap.add_argument("--max-exits", type=int, help="end a vCPU's run after N exits")
    ap.add_argument("--max-modeled-ms", type=int,
                    help="end a vCPU's run when its modeled clock passes N ms")
    ap.add_argument("--migrate", metavar="SPEC",
                    help="none, every:N (exits), random:RATE (per modeled second), window "
                    "(between an overflow and the next entry), to-busy:K (at an overflow, to "
                    "a pCPU whose counters are all held, for K time slices)")
    ap.add_argument("--event-binding", choices=("task", "cpu"),
                    help="task: events follow the vCPU thread (what every KVM release does); "
                    "cpu: bound to the pCPU where they were created (the RFC text's model), a "
                    "what-if that matches no kernel")
    ap.add_argument("--pin", help="pCPUs of the vCPUs, comma-separated, or compact / spread")
    ap.add_argument("--real-affinity", choices=("on", "off"),
                    help="pin each vCPU thread to a core of this machine too")
    ap.add_argument("--host-load", type=float, metavar="RATE",
                    help="host tasks per second per pCPU that preempt the vCPU for "
                    f"{config.HOST_TASK_NS // 1000} us each, seeded (default "
                    f"{config.HOST_LOAD:g}: vmstat_update's 1 s interval)")
    ap.add_argument("--perf-max-sample-rate", type=int, metavar="N",
                    help="the host's kernel.perf_event_max_sample_rate sysctl (default 100000): "
                    "throttles an event past DIV_ROUND_UP(N, HZ) overflows per tick")
    ap.add_argument("--host-pinned", type=int,
                    help="host pinned events per pCPU competing for GP counters")
    ap.add_argument("--scenario", help="TOML scenario file (flags override it)")
    ap.add_argument("--out", help="run directory: a new or empty folder (default: a new folder "
                    "under runs/)")
    ap.add_argument("--force", action="store_true", default=None,
                    help="--out names a folder that is not empty: make a fresh subfolder in it")
    ap.add_argument("--transport", choices=config.TRANSPORTS, help="ipc (default) or tcp")
    ap.add_argument("--timeout", type=int, dest="timeout_s",
                    help="seconds one policy's run may take before it is declared stuck")
    ap.add_argument("--explain-costs", action="store_true", default=None,
                    help="print the cost parameters, run (5 PMIs unless --pmis says otherwise) "
                    "and show which mechanisms each policy's kvm_pmu_handle_event time came from")
    ap.add_argument("--plot", action="store_true", default=None,
                    help="write PNG plots into the run directory and report.html (needs the "
                    "plot extra, matplotlib; ./scripts/plot RUN_DIR makes them afterwards)")
    ap.add_argument("--quiet", action="store_true", default=None,
                    help="no progress display on the terminal (it is off anyway when the "
                    "output is not a terminal)")
    ap.add_argument("--external", metavar="ROLE[,ROLE]",
                    help="do not start these processes (host, kvm, guest): print their command "
                    "lines and wait for them to connect, e.g. from other machines over tcp")
    ap.add_argument("--plan", action="store_true", default=None,
                    help="with --transport tcp: start no process; print the command (and keys "
                    "folder) for each of host, kvm and guest to run on its own machine, then "
                    "wait for them like --external host,kvm,guest")
    ap.add_argument("--insecure-tcp", action="store_true", default=None,
                    help="over tcp, do not use CurveZMQ (every process logs that it is insecure)")
    ap.add_argument("--lost-after", type=float, metavar="S",
                    help="seconds without a heartbeat after which a process is declared lost")
    ap.add_argument("--stuck-after", type=float, metavar="S",
                    help="seconds without progress (exits served) after which a process whose "
                    "heartbeat still arrives is declared stuck")
    ap.add_argument("--host-addr", metavar="ADDR", help="address the host process binds (tcp)")
    ap.add_argument("--kvm-addr", metavar="ADDR", help="address the KVM process binds (tcp)")
    ap.add_argument("--bind", metavar="ADDR",
                    help="address the launcher's control socket (and, over tcp, the processes "
                    "it starts) bind to; use a reachable address with --external")
    return ap


def parse_args(argv):
    return build_parser().parse_args(argv)


def resolve_config(args) -> tuple[dict, dict]:
    """Defaults, then the scenario file, then flags; refused with file, key and reason. Also
    the budgets derived from the work because neither the scenario nor a flag set them."""
    cfg = config.merge(config.DEFAULTS, {}, "defaults")
    scenario = config.load_scenario(args.scenario) if args.scenario else {}
    cfg = config.merge(cfg, scenario, args.scenario)
    flags: dict = {"run": {}, "host": {}, "vm": {}, "guest": {}, "costs": {}, "launch": {}}
    for key in ("out", "force", "bind", "host_addr", "kvm_addr", "insecure_tcp", "lost_after",
               "stuck_after", "explain_costs", "plan", "plot", "quiet"):
        if getattr(args, key) is not None:
            flags["launch"][key] = getattr(args, key)
    if args.external is not None:
        flags["launch"]["external"] = [r.strip() for r in args.external.split(",") if r.strip()]
    if args.policy:
        flags["run"]["policies"] = (list(config.POLICIES) if args.policy == "all"
                                    else [p.strip() for p in args.policy.split(",") if p.strip()])
    for key, section in (("pmis", "run"), ("seed", "run"), ("max_exits", "run"),
                         ("transport", "run"), ("timeout_s", "run"), ("vcpus", "vm"), ("timeslice_ms", "vm"),
                         ("period", "guest"), ("event", "guest"), ("workload", "guest"),
                         ("context_switch_ms", "guest")):
        if getattr(args, key) is not None:
            flags[section][key] = getattr(args, key)
    for key, section in (("max_modeled_ms", "run"), ("migrate", "vm"), ("kernel", "host"),
                         ("x2apic", "host"), ("event_binding", "host"), ("host_pinned", "host"),
                         ("host_load", "host"), ("perf_max_sample_rate", "host")):
        if getattr(args, key) is not None:
            flags[section][key] = getattr(args, key)
    if args.pin:
        flags["vm"]["pin"] = (args.pin if args.pin in config.PIN_RULES else
                              [int(x) if x.strip().isdigit() else x for x in args.pin.split(",")])
    if args.guest_program:
        flags["run"]["guest_program"] = args.guest_program
    if args.strict is not None:
        flags["run"]["strict"] = args.strict
    if args.guest_watchdog:
        flags["guest"]["watchdog"] = args.guest_watchdog == "on"
    if args.real_affinity:
        flags["vm"]["real_affinity"] = args.real_affinity == "on"
    if args.host_preset:
        flags["host"]["preset"] = args.host_preset
    if args.watchdog:
        flags["host"]["watchdog"] = args.watchdog == "on"
    for item in args.cost:
        name, sep, ns = item.partition("=")
        values = ns.split(":")
        if not sep or len(values) not in (1, 3) or not all(v.strip().isdigit() for v in values):
            raise config.ConfigError("--cost", item, "expected NAME=NS or NAME=LOW:MID:HIGH "
                                     "with whole numbers of ns")
        flags["costs"][name.strip()] = (int(ns) if len(values) == 1
                                        else [int(v) for v in values])
    cfg = config.merge(cfg, {k: v for k, v in flags.items() if v}, "command line")
    given = {**scenario.get("run", {}), **flags["run"]}
    if cfg["launch"]["explain_costs"] and "pmis" not in given:
        cfg["run"]["pmis"] = 5                  # an explanation needs only a few PMIs
    cfg = config.validate(cfg, args.scenario or "command line")
    if cfg["run"]["guest_program"]:         # refused here, before any process starts
        program.check_program(cfg["run"]["guest_program"])
    derived = {k: v for k, v in default_budgets(cfg).items() if k not in given}
    cfg["run"].update(derived)
    return cfg, derived


# Default budgets. run.max_modeled_ms and run.max_exits end a vCPU's run that goes wrong (PMIs
# that never come); they must never end one that is only expensive, or the columns of a
# comparison would hold different amounts of work. Unless set, they are derived from the work
# asked for (PMIs per vCPU), each term a stated worst case:
GUEST_SLACK = 2              # guest time: the workload's IPC varies by +-10 % per slice
RESERVATIONS_PER_PMI = 4     # host work per PMI, in host-PMU reservation cycles (the costliest
#                              perf work, host.perf.reservation_cycle): always re-creates the
#                              event in KVM's handler and again for the guest handler's
#                              reprogramming, 2 cycles per PMI in the seed; twice that
RESERVATIONS_PER_GUEST_MS = 1   # a guest that reprograms on its tick (frequency mode, rotation,
#                                 context switches): at most one cycle per tick (HZ 1000)
EXITS_PER_PMI = (8, 2)       # the guest's PMI handler: 8 exits, and 2 per overflowed event
#                              (guest/driver.py handle_irq, with the host PMI and NMI window)
EXITS_PER_TICK = (2, 4)      # a tick that reprograms: enable/disable all, 4 per event
EXIT_SLACK = 2               # twice all that: a host timer exit may follow any other exit


def default_budgets(cfg: dict) -> dict:
    """run.max_modeled_ms and run.max_exits for the work of ``cfg`` (per vCPU); none (the fixed
    defaults stay) for a guest program or a guest whose sessions take no samples."""
    g, topo = cfg["guest"], preset(cfg["host"]["preset"])
    sessions = [s for s in config.guest_sessions(cfg) if s["mode"] == "record"]
    if cfg["run"]["guest_program"] or not sessions:
        return {}
    # what a billion instructions retire with them, and in how much guest time
    retired = Workload(g["workload"], None, topo.ghz).derive(10**9)   # cycles, ref cycles
    retired.update({k: PROFILES[g["workload"]][k] * 10**9 for k in
                    ("branches", "branch_misses", "llc_refs", "llc_misses")})
    span_ns = retired["cycles"] / topo.ghz
    pmi_ns = min(1e9 / s["freq"] if "freq" in s else s["period"] * span_ns / retired[s["event"]]
                 for s in sessions)                # the fastest session's PMIs alone
    events = len(config.guest_sessions(cfg)) + g["watchdog"]
    multiplexed = -(-events // topo.gp_counters)
    guest_ms = cfg["run"]["pmis"] * pmi_ns * GUEST_SLACK * multiplexed / 1e6
    ticking = any("freq" in s for s in sessions) or multiplexed > 1 or g["context_switch_ms"] > 0
    cycle = reservation_cycle(topo, cfg["host"]["kernel"], cfg["host"]["x2apic"])
    cycle_ms = cycle.total(costs.resolve(cfg["costs"], topo)) / 1e6
    host_ms = cycle_ms * (cfg["run"]["pmis"] * RESERVATIONS_PER_PMI
                          + ticking * guest_ms * RESERVATIONS_PER_GUEST_MS)
    exits = (cfg["run"]["pmis"] * (EXITS_PER_PMI[0] + EXITS_PER_PMI[1] * events)
             + guest_ms / cfg["vm"]["timeslice_ms"]
             + cfg["host"]["host_load"] * (guest_ms + host_ms) / 1000    # host tasks' exits
             + ticking * guest_ms * (EXITS_PER_TICK[0] + EXITS_PER_TICK[1] * events))
    return {"max_modeled_ms": math.ceil(guest_ms + host_ms),
            "max_exits": math.ceil(EXIT_SLACK * exits)}


class Child:
    def __init__(self, role: str, name: str, cmd: list[str], log_path: str):
        self.role, self.name, self.cmd, self.log_path = role, name, cmd, log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 15) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return "(no log)"

    def describe_end(self) -> str:
        code = self.proc.returncode
        how = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
        return (f"{self.name} (pid {self.proc.pid}) {how}\n  command: {' '.join(self.cmd)}\n"
                f"  last lines of {self.log_path}:\n{self.tail()}")

    def signal_group(self, sig: int) -> None:
        if self.alive():
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass


def installed(role: str) -> list[str]:
    """The command of a process as installed beside this interpreter (.venv/bin/vpmu-kvm), by
    its absolute path: a command a person can paste without activating anything."""
    script = os.path.join(os.path.dirname(sys.executable), f"vpmu-{role}")
    return [script] if os.access(script, os.X_OK) else [sys.executable, "-m", role]


class Launcher:
    def __init__(self, cfg: dict, run_dir: str):
        self.cfg = cfg
        opts = cfg["launch"]
        self.run_dir = run_dir
        self.sock_dir = tempfile.mkdtemp(prefix="vpmu-")       # short, private (0700)
        self.interrupted = False
        self.lost_after, self.stuck_after = opts["lost_after"], opts["stuck_after"]
        self.ctx = zmq.Context()
        tcp = cfg["run"]["transport"] == "tcp"
        keys = security.generate(run_dir) if tcp and not opts["insecure_tcp"] else None
        self.security = security.Security(keys, "launcher", self.ctx)
        self.control = transport.Channel(   # only the run's processes may send large reports
            transport.socket(self.ctx, zmq.ROUTER), big_peers={
                n.encode(): schema.MAX_FRAME_BYTES for n in ("host", "kvm-vm0", "guest-vm0")})
        self.security.server(self.control.sock)
        self.errors = transport.ErrorLog(LOG)
        bind_addr = opts["bind"]
        self.control_ep = transport.bind(
            self.control.sock, f"tcp://{bind_addr}:*" if tcp else f"ipc://{self.sock_dir}/control")
        host_addr, kvm_addr = opts["host_addr"] or bind_addr, opts["kvm_addr"] or bind_addr
        # over tcp each process binds a port of its own choosing and reports it (a port picked
        # here and bound later by another process could be taken in between)
        listen = {"host": f"tcp://{host_addr}:*" if tcp else f"ipc://{self.sock_dir}/host",
                  "kvm": f"tcp://{kvm_addr}:*" if tcp else f"ipc://{self.sock_dir}/kvm-vm0"}
        external = ("host", "kvm", "guest") if opts["plan"] else tuple(opts["external"])
        self.beats: dict[str, float] = {}          # name -> when its last heartbeat came
        self.progress: dict[str, tuple[int, str, float]] = {}   # name -> steps, last, since
        self.run_started = 0.0
        self.lost: set[str] = set()                 # processes already known dead or silent
        self.next_beat = 0.0
        self.children = {}                       # the processes this launcher starts and owns
        self.external = {}                       # name -> command to run by hand elsewhere
        self.roles = {"host": "host", "kvm-vm0": "kvm", "guest-vm0": "guest"}
        self.listen = {name: listen.get(role) for name, role in self.roles.items()}
        for name, role in self.roles.items():
            cmd = ["--run-dir", os.path.abspath(run_dir), "--control", self.control_ep,
                   "--name", name, "--lost-after", str(opts["lost_after"])]
            if role in listen:
                cmd += ["--listen", listen[role]]
            if keys and role in external:       # another machine gets only its own secret key
                cmd += ["--keys", os.path.abspath(security.bundle(keys, name))]
            elif keys:
                cmd += ["--keys", keys]
            elif tcp:
                cmd += ["--insecure"]
            if role in external:
                self.external[name] = [*installed(role), *cmd]
            else:
                self.children[name] = Child(role, name, [sys.executable, "-m", role, *cmd,
                                                         "--exit-with-parent"],
                                            os.path.join(run_dir, f"{name}.log"))
        self.endpoints: dict[str, dict] = {}
        self.runs: list[dict] = []
        self.display = progress.Display(quiet=opts["quiet"])

    # --- process lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        for child in self.children.values():
            child.start()
        with open(os.path.join(self.run_dir, "pids.json"), "w") as f:
            json.dump({n: c.proc.pid for n, c in self.children.items()}, f)
        if self.external:
            say(self.plan())
        waiting = set(self.members)
        while waiting:
            name, msg = self.expect(MsgType.HELLO, waiting, 600 if self.external else 20)
            waiting.discard(name)
            self.endpoints[name] = msg.body.endpoints
            self.beats[name] = time.monotonic()
            self.control.send(schema.Welcome(name), name.encode())

    def plan(self) -> str:
        """For each process started by hand: where it binds, the keys folder to copy to its
        machine (to the same path), and its exact command."""
        lines = []
        for name, cmd in self.external.items():
            keys = cmd[cmd.index("--keys") + 1] if "--keys" in cmd else None
            where = [f"binds {self.listen[name]}"] if self.listen[name] else []
            where += [f"copy {keys} to its machine first, to the same path"] if keys else []
            lines.append(f"  start {name}" + (f" ({'; '.join(where)})" if where else "")
                         + f":\n    {shlex.join(cmd)}")
        lines.append(f"  waiting up to 600 s for {', '.join(self.external)} to connect ...")
        return "\n".join(lines)

    def expect(self, wanted: MsgType, senders: set[str], timeout_s: float,
               interruptible: bool = True):
        """The next ``wanted`` message from one of ``senders``, watching every child meanwhile."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.interrupted and interruptible:
                raise KeyboardInterrupt
            self.watch(wanted)
            if time.monotonic() > deadline:
                raise LaunchError(f"no {wanted.value} from {', '.join(sorted(senders))} within "
                                  f"{timeout_s:.0f} s; logs are in {self.run_dir}")
            try:
                peer, msg = self.control.recv(0.1)
            except transport.PeerLost:
                continue
            except schema.ProtocolError as exc:
                self.errors.record(exc.kind, exc.detail, exc.peer.decode("latin1"))
                self.reply_error(exc.peer, exc.kind, exc.detail)
                continue
            name = peer.decode("latin1")
            if name.endswith(".hb") and name[:-3] in self.members:
                if msg.type == MsgType.HEARTBEAT:
                    self.heard(name[:-3], msg.body)
                continue
            if name not in self.members:
                self.errors.record("unknown_peer", msg.type.value, name)
                self.reply_error(peer, "unknown_peer", "not a member of this run")
                continue
            if msg.type == MsgType.ERROR:
                raise LaunchError(f"{name} failed: {msg.body.detail}\n"
                                  + (self.children[name].tail() if name in self.children
                                     else ""))
            if msg.type == wanted and name in senders:
                return name, msg

    @property
    def members(self) -> set[str]:
        return set(self.children) | set(self.external)

    def reply_error(self, peer: bytes, kind: str, detail: str) -> None:
        self.control.send(schema.Error(kind, detail), peer, droppable=True)

    def heard(self, name: str, beat: schema.Heartbeat) -> None:
        now = time.monotonic()
        self.beats[name] = now
        if self.progress.get(name, (None,))[0] != beat.progress:
            self.progress[name] = (beat.progress, beat.doing, now)
        if self.roles.get(name) == "guest":
            self.display.beat(beat)

    def watch(self, waiting_for: MsgType) -> None:
        """Heartbeats to every process; a process that died, went silent or, while a run is
        under way, stopped making progress ends the run."""
        for child in self.children.values():
            if not child.alive() and child.name not in self.lost:
                raise LaunchError(f"process died while waiting for {waiting_for.value}:\n"
                                  + child.describe_end(), lost=(child.name,))
        now = time.monotonic()
        for name, seen in self.beats.items():
            if now - seen > self.lost_after and name not in self.lost:
                state = ("still running" if name not in self.children
                         or self.children[name].alive() else "dead")
                raise LaunchError(f"{name} stopped answering: no heartbeat for "
                                  f"{now - seen:.1f} s (process {state}); logs are in "
                                  f"{self.run_dir}", lost=(name,))
        if waiting_for == MsgType.DONE:
            self.check_stuck(now)
        if now >= self.next_beat:
            self.next_beat = now + 0.5
            for name in self.beats:
                self.control.send(schema.Heartbeat(0), f"{name}.hb".encode(), droppable=True)

    def check_stuck(self, now: float) -> None:
        """The processes that step on every exit (KVM and guest: one makes it, the other serves
        it) have heartbeats that arrive but steps that have not moved for --stuck-after seconds
        of a run: they are stuck, and their last steps say where (the exit the guest made, the
        one KVM was serving). While either moves, the run goes on."""
        idle = [(now - max(since, self.run_started), name, steps, doing)
                for name, (steps, doing, since) in sorted(self.progress.items())
                if self.roles[name] in ("kvm", "guest")]
        if not idle or min(idle)[0] <= self.stuck_after:
            return
        steps = "".join(f"  {name}: {n:,} steps, the last {t:.1f} s ago: {doing}\n" if n else
                        f"  {name}: no step yet\n" for t, name, n, doing in idle)
        raise LaunchError(f"stuck: {' and '.join(n for _, n, _, _ in idle)} made no progress "
                          f"for {self.stuck_after:g} s while their heartbeats arrived "
                          f"(--stuck-after; raise it if a run is only slow)\n{steps}"
                          f"  logs are in {self.run_dir}", lost=tuple(n for _, n, _, _ in idle))

    def configure(self, name: str, run: int, cfg: dict, peers: dict) -> dict:
        self.control.send(schema.Configure(run, cfg, peers), name.encode())
        return self.expect(MsgType.READY, {name}, 30)[1].body.endpoints

    def run_policy(self, run: int, policy: str) -> None:
        cfg = dict(self.cfg, policy=policy)
        t0 = time.monotonic()
        host_eps = self.configure("host", run, cfg, {})
        kvm_eps = self.configure("kvm-vm0", run, cfg, {"perf": host_eps["perf"]})
        self.configure("guest-vm0", run, cfg, {"vcpus": kvm_eps["vcpus"], "kvm": "kvm-vm0"})
        self.run_started = time.monotonic()
        self.control.send(schema.Start(run), b"guest-vm0")
        self.display.start(policy, None if cfg["run"]["guest_program"]
                           else cfg["run"]["pmis"] * cfg["vm"]["vcpus"])
        try:
            reason = self.expect(MsgType.DONE, {"guest-vm0"},
                                 self.cfg["run"]["timeout_s"])[1].body.reason
        except KeyboardInterrupt:
            reason = "interrupted"               # collect what was counted so far
        reports = {name: self.final_report(name, run, 10)
                   for name in ("guest-vm0", "kvm-vm0", "host")}
        wall = time.monotonic() - t0
        by_kind = lambda kind: [r for r in reports.values() if isinstance(r, kind)]  # noqa: E731
        run_result = results.build_run(policy, cfg, preset(cfg["host"]["preset"]),
                                       reports["host"], by_kind(schema.KvmReport),
                                       by_kind(schema.GuestReport), wall, reason)
        run_result["incomplete"] = results.incomplete(run_result, self.cfg)
        run_result["handle_event"]["distribution"] = results.distribution(
            by_kind(schema.KvmReport))
        self.display.done(run_result["pmis"]["handled"], run_result["exits"]["total"],
                          time.monotonic() - self.run_started)
        self.runs.append(run_result)
        if reason == "interrupted":
            raise KeyboardInterrupt

    def final_report(self, name: str, run: int, timeout_s: float):
        """FINISH one process's run and wait for what it counted, even after Ctrl-C."""
        self.control.send(schema.Finish(run), name.encode())
        return self.expect(MsgType.REPORT, {name}, timeout_s, interruptible=False)[1].body.stats

    def collect_partial(self, run: int, lost: tuple[str, ...]) -> dict:
        """After a failure: what the processes still alive counted so far."""
        reports = {}
        self.lost.update(lost)
        for name in self.members - self.lost:
            if name in self.children and not self.children[name].alive():
                continue
            try:
                reports[name] = dataclasses.asdict(self.final_report(name, run, 5))
            except (LaunchError, transport.PeerLost):
                continue
        return reports

    def shutdown(self, reason: str, failed: bool) -> dict[str, int]:
        """The ladder: SHUTDOWN, wait; SIGTERM to each group, wait; SIGKILL; reap."""
        for name in [*self.external, *(n for n, c in self.children.items() if c.alive())]:
            self.control.send(schema.Shutdown(reason, failed), name.encode(),
                              droppable=True)  # never said hello: signals will do
        for sig, wait_s in ((None, 2.0), (signal.SIGTERM, 2.0), (signal.SIGKILL, 1.0)):
            if sig is not None:
                for child in self.children.values():
                    child.signal_group(sig)
            deadline = time.monotonic() + wait_s
            while any(c.alive() for c in self.children.values()) and time.monotonic() < deadline:
                time.sleep(0.02)
        codes = {}
        for name, child in self.children.items():
            if child.proc is not None:
                child.signal_group(signal.SIGKILL)
                codes[name] = child.proc.wait()
        if self.errors.counts:
            print(f"launcher: protocol errors on the control socket, by class: "
                  f"{self.errors.counts}", file=sys.stderr)
        self.control.close()
        self.security.stop()
        self.ctx.term()
        shutil.rmtree(self.sock_dir, ignore_errors=True)
        return codes


def say(*args, **kwargs) -> None:
    """Print; a reader that went away (a pipe into head) does not stop the run."""
    try:
        print(*args, **kwargs, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def write_atomic(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class RunDirRefused(Exception):
    """--out names something a run must not write into."""


def make_private_dirs(path: str) -> None:
    """Create ``path`` and its missing parents, each 0700 (whatever the umask); a folder that
    already exists is never touched."""
    missing, path = [], os.path.abspath(path)
    while not os.path.lexists(path):
        missing.append(path)
        path = os.path.dirname(path)
    for folder in reversed(missing):
        os.mkdir(folder, 0o700)
        os.chmod(folder, 0o700)          # ours: just made, so its mode is ours to set


def new_run_dir(out: str, force: bool) -> str:
    """The run directory: ``out`` if it is new or an empty folder (left as it is), a fresh
    subfolder of a non-empty ``out`` with ``force``, else a new folder under ``runs/``."""
    stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
    if not out:
        path = os.path.join(RUNS, stamp)
    elif not os.path.lexists(out):
        path = out
    elif not os.path.isdir(out):
        raise RunDirRefused(f"--out {out}: exists and is not a directory")
    elif not os.listdir(out):
        return out
    elif force:
        path = os.path.join(out, f"run-{stamp}")
    else:
        raise RunDirRefused(f"--out {out}: exists and is not empty; name a new folder, or add "
                            "--force to make a fresh subfolder inside it")
    make_private_dirs(path)
    return path


def replay_config(cfg: dict, derived: dict) -> str:
    """config.toml: the resolved configuration as a scenario file, without where the run went
    (replaying it must not write into this run) and without budgets derived from the work
    (a replay derives them again); files it names are absolute, to replay from anywhere."""
    launch = {k: v for k, v in cfg["launch"].items() if k not in ("out", "force")}
    run = {k: v for k, v in cfg["run"].items() if k not in derived}
    run["policies"] = [os.path.abspath(p) if p.endswith(".py") else p for p in run["policies"]]
    run["guest_program"] = run["guest_program"] and os.path.abspath(run["guest_program"])
    note = "".join(f"# run.{k} = {v} was derived from the work (see docs/operations.md)\n"
                   for k, v in derived.items())
    return (f"# vpmu-emu run configuration: replay with --scenario (and --out NEW_FOLDER)\n{note}"
            + config.to_toml(dict(cfg, run=run, launch=launch)))


def provenance(argv: list[str]) -> dict:
    """What produced a results.json: the emulator's version and commit, when, which command."""
    try:
        version = importlib.metadata.version("vpmu-emu")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    commit = "unknown"
    if os.path.exists(os.path.join(ROOT, ".git")):
        try:
            git = ["git", "-C", ROOT]
            commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True,
                                    timeout=10, check=True).stdout.strip()
            if subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"],
                              capture_output=True, text=True, timeout=10).stdout.strip():
                commit += "-dirty"
        except (OSError, subprocess.SubprocessError):
            commit = "unknown"
    return {"version": version, "commit": commit,
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": shlex.join(["vpmu-launch", *argv])}


def banner(cfg: dict, derived: dict, run_dir: str) -> str:
    """What runs: the host, the VM, what the guest does and until when, where the run goes."""
    run, g = cfg["run"], cfg["guest"]
    if run["guest_program"]:
        guest = f"guest program {os.path.basename(run['guest_program'])} on every vCPU"
    else:
        sessions = config.guest_sessions(cfg)
        record = [f"perf record -e {s['event']} " + (f"-F {s['freq']:,}" if "freq" in s else
                                                     f"-c {s['period']:,}")
                  for s in sessions if s["mode"] == "record"]
        stat = [s["event"] for s in sessions if s["mode"] == "stat"]
        guest = "guest runs " + ", ".join(record + ([f"perf stat -e {','.join(stat)}"] if stat
                                                    else [])
                                          + (["the NMI watchdog"] if g["watchdog"] else []))
        guest += f", {run['pmis']:,} PMIs per vCPU"
    budgets = (f"budgets per vCPU {run['max_modeled_ms']:,} ms modeled, {run['max_exits']:,} "
               f"exits{' (derived from the work)' if derived else ''}")
    return (f"vpmu-emu: {preset(cfg['host']['preset']).describe()}, host kernel "
            f"{cfg['host']['kernel']}, x2APIC {cfg['host']['x2apic']}, watchdog "
            f"{'on' if cfg['host']['watchdog'] else 'off'}; {cfg['vm']['vcpus']} vCPU(s); "
            f"{guest}; {budgets}; run directory {run_dir}")


def main(argv: list[str] | None = None) -> int:
    """vpmu-launch (scripts/launch): run the scenario under each policy; the exit code is one of
    the EXIT_* codes in the module docstring."""
    argv = sys.argv[1:] if argv is None else list(argv)
    made_by = provenance(argv)
    args = parse_args(argv)
    try:
        cfg, derived = resolve_config(args)
    except config.ConfigError as exc:
        print(f"launch: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if cfg["launch"]["plot"] and plots.missing():
        print(f"launch: --plot: {plots.missing()}", file=sys.stderr)
        return EXIT_ERROR
    if cfg["launch"]["plan"] and cfg["run"]["transport"] != "tcp":
        print("launch: --plan runs the processes on other machines: add --transport tcp",
              file=sys.stderr)
        return EXIT_ERROR
    try:
        run_dir = new_run_dir(cfg["launch"]["out"], cfg["launch"]["force"])
        write_atomic(os.path.join(run_dir, "config.toml"), replay_config(cfg, derived))
        return launch(cfg, derived, run_dir, made_by)
    except RunDirRefused as exc:
        print(f"launch: {exc}", file=sys.stderr)
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"launch: {where}{exc.strerror or exc}", file=sys.stderr)
    return EXIT_ERROR


def launch(cfg: dict, derived: dict, run_dir: str, made_by: dict) -> int:
    """Start the processes, run each policy, shut down, report; the exit code."""
    explain = cfg["launch"]["explain_costs"]
    if explain:
        say(results.cost_table(cfg) + "\n")
    logsetup.setup("launcher", run_dir)
    launcher = Launcher(cfg, run_dir)

    def on_signal(signum, frame):
        launcher.interrupted = True
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)

    outcome = {"complete": False, "produced_by": made_by, "scenario": cfg,
               "derived_budgets": derived, "run_dir": run_dir, "runs": launcher.runs,
               "error": None}
    code = EXIT_OK
    say(banner(cfg, derived, run_dir))
    try:
        launcher.start()
        for run, policy in enumerate(cfg["run"]["policies"]):
            say(f"  running policy {policy} ...")
            launcher.run_policy(run, policy)
        outcome["complete"] = True
    except KeyboardInterrupt:
        outcome["error"] = "interrupted"
        code = EXIT_INTERRUPTED
    except (LaunchError, transport.PeerLost) as exc:
        outcome["error"] = str(exc)
        print(f"launch: {exc}", file=sys.stderr)
        code = EXIT_ERROR
        outcome["partial_reports"] = launcher.collect_partial(
            len(launcher.runs), getattr(exc, "lost", ()))
    finally:
        outcome["exit_codes"] = launcher.shutdown(outcome["error"] or "run complete",
                                                  failed=code == EXIT_ERROR)
        outcome["launcher_protocol_errors"] = dict(launcher.errors.counts)
        write_atomic(os.path.join(run_dir, "results.json"), json.dumps(outcome, indent=1))
        launcher.display.close()
    if cfg["launch"]["plot"]:
        plots.plot_run(outcome, run_dir)
    page = report.write(run_dir, outcome)
    if outcome["runs"]:
        say()
        say(results.table(outcome["runs"]))
    short = [r["incomplete"] for r in outcome["runs"] if r["incomplete"]]
    for line in short:
        say(f"  {line}")
    for r in outcome["runs"]:
        for line in results.check_lines(r):
            say(f"  {line}")
    if explain:
        for r in outcome["runs"]:
            say("\n" + results.breakdown(r, cfg))
    unclean = {n: c for n, c in outcome["exit_codes"].items() if c != 0}
    if code == EXIT_OK and unclean:
        say(f"launch: processes did not exit cleanly: {unclean} (negative: killed by that "
            "signal)", file=sys.stderr)
        code = EXIT_ERROR
    if code == EXIT_OK and any(results.failed_checks(r, cfg["run"]["strict"])
                              for r in outcome["runs"]):
        code = EXIT_CHECK_FAILED
    if code == EXIT_OK and short:
        code = EXIT_INCOMPLETE
    say(f"\nreport: {page}\nresults: {os.path.join(run_dir, 'results.json')}")
    return code


if __name__ == "__main__":
    sys.exit(main())
