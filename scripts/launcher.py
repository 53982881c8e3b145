"""vpmu-emu's launcher: starts the host, KVM and guest processes, runs each policy, reports.

It owns its children: each runs in its own process group with its log file in the run directory,
its pid recorded there; shutdown is a ladder (a SHUTDOWN message, SIGTERM to the group, SIGKILL),
and the exit code says how the run went: 0 complete with no invariant violated, 1 a check or an
invariant failed, 2 or more an error.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import socket as pysocket
import subprocess
import sys
import tempfile
import time

import zmq

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from common import config, costs, logsetup, schema, security, transport  # noqa: E402
from common.schema import MsgType  # noqa: E402
from common.topology import preset  # noqa: E402
from guest import program  # noqa: E402

import report  # noqa: E402

EXIT_OK, EXIT_CHECK_FAILED, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 3
LOG = logging.getLogger("launcher")


class LaunchError(Exception):
    """A failure a person must see: which process, what it was doing, the tail of its log."""

    def __init__(self, message: str, lost: str | None = None):
        super().__init__(message)
        self.lost = lost


def build_parser() -> argparse.ArgumentParser:
    """The launcher's flags; docs/flags.md is generated from them (scripts/flags_doc.py)."""
    ap = argparse.ArgumentParser(
        prog="launch", description="Run the vpmu-emu scenario under each policy and compare.")
    ap.add_argument("--policy", help="comma-separated policies, or 'all' "
                    f"({', '.join(config.POLICIES)}); a path ending in .py loads a policy file")
    ap.add_argument("--pmis", type=int, help="stop each vCPU after N PMIs handled by the guest")
    ap.add_argument("--vcpus", type=int, help="vCPUs of the VM")
    ap.add_argument("--timeslice-ms", type=int,
                    help="modeled time slice after which a vCPU task is scheduled out and in")
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
    ap.add_argument("--host-preset", help="emulated host: skx-4s, bdx-2s, clx-2s, small")
    ap.add_argument("--watchdog", choices=("on", "off"), help="host NMI watchdog")
    ap.add_argument("--cost", action="append", default=[], metavar="NAME=NS",
                    help="override one cost parameter (repeatable)")
    ap.add_argument("--max-exits", type=int, help="end a vCPU's run after N exits")
    ap.add_argument("--max-modeled-ms", type=int,
                    help="end a vCPU's run when its modeled clock passes N ms")
    ap.add_argument("--migrate", metavar="SPEC",
                    help="none, every:N (exits), random:RATE (per modeled second), window "
                    "(between an overflow and the next entry), to-busy:K (at an overflow, to "
                    "a pCPU whose counters are all held, for K time slices)")
    ap.add_argument("--event-binding", choices=("task", "cpu"),
                    help="task: events follow the vCPU thread (KVM); cpu: bound to the pCPU "
                    "where they were created (the RFC text's model)")
    ap.add_argument("--pin", help="pCPUs of the vCPUs, comma-separated, or compact / spread")
    ap.add_argument("--real-affinity", choices=("on", "off"),
                    help="pin each vCPU thread to a core of this machine too")
    ap.add_argument("--host-pinned", type=int,
                    help="host pinned events per pCPU competing for GP counters")
    ap.add_argument("--scenario", help="TOML scenario file (flags override it)")
    ap.add_argument("--out", help="run directory (default: a new folder under runs/)")
    ap.add_argument("--transport", choices=config.TRANSPORTS, help="ipc (default) or tcp")
    ap.add_argument("--timeout", type=int, dest="timeout_s",
                    help="seconds one policy's run may take before it is declared stuck")
    ap.add_argument("--explain-costs", action="store_true", default=None,
                    help="print the cost parameters, run (5 PMIs unless --pmis says otherwise) "
                    "and show which mechanisms each policy's kvm_pmu_handle_event time came from")
    ap.add_argument("--external", metavar="ROLE[,ROLE]",
                    help="do not start these processes (host, kvm, guest): print their command "
                    "lines and wait for them to connect, e.g. from other machines over tcp")
    ap.add_argument("--insecure-tcp", action="store_true", default=None,
                    help="over tcp, do not use CurveZMQ (every process logs that it is insecure)")
    ap.add_argument("--lost-after", type=float, metavar="S",
                    help="seconds without a heartbeat after which a process is declared lost")
    ap.add_argument("--host-addr", metavar="ADDR", help="address the host process binds (tcp)")
    ap.add_argument("--kvm-addr", metavar="ADDR", help="address the KVM process binds (tcp)")
    ap.add_argument("--bind", metavar="ADDR",
                    help="address the launcher's control socket (and, over tcp, the processes "
                    "it starts) bind to; use a reachable address with --external")
    return ap


def parse_args(argv):
    return build_parser().parse_args(argv)


def resolve_config(args) -> dict:
    """Defaults, then the scenario file, then flags; refused with file, key and reason."""
    cfg = config.merge(config.DEFAULTS, {}, "defaults")
    if args.scenario:
        cfg = config.merge(cfg, config.load_scenario(args.scenario), args.scenario)
    flags: dict = {"run": {}, "host": {}, "vm": {}, "guest": {}, "costs": {}, "launch": {}}
    for key in ("out", "bind", "host_addr", "kvm_addr", "insecure_tcp", "lost_after",
                "explain_costs"):
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
    for key, section in (("max_modeled_ms", "run"), ("migrate", "vm"),
                         ("event_binding", "host"), ("host_pinned", "host")):
        if getattr(args, key) is not None:
            flags[section][key] = getattr(args, key)
    if args.pin:
        flags["vm"]["pin"] = (args.pin if args.pin in config.PIN_RULES else
                              [int(x) if x.strip().isdigit() else x for x in args.pin.split(",")])
    if args.guest_program:
        flags["run"]["guest_program"] = args.guest_program
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
        if not sep or not ns.strip().isdigit():
            raise config.ConfigError("--cost", item, "expected NAME=NS with NS a whole number")
        flags["costs"][name.strip()] = int(ns)
    cfg = config.merge(cfg, {k: v for k, v in flags.items() if v}, "command line")
    cfg = config.validate(cfg, args.scenario or "command line")
    if cfg["run"]["guest_program"]:         # refused here, before any process starts
        program.check_program(cfg["run"]["guest_program"])
    return cfg


def free_port(host: str = "127.0.0.1") -> int:
    with pysocket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


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


class Launcher:
    def __init__(self, cfg: dict, run_dir: str):
        self.cfg = cfg
        opts = cfg["launch"]
        self.run_dir = run_dir
        self.sock_dir = tempfile.mkdtemp(prefix="vpmu-")       # short, private (0700)
        self.interrupted = False
        self.lost_after = opts["lost_after"]
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
        listen = {"host": f"tcp://{host_addr}:{free_port(host_addr)}" if tcp else
                  f"ipc://{self.sock_dir}/host",
                  "kvm": f"tcp://{kvm_addr}:0" if tcp else f"ipc://{self.sock_dir}/kvm-vm0"}
        external = tuple(opts["external"])
        self.beats: dict[str, float] = {}          # name -> when its last heartbeat came
        self.lost: set[str] = set()                 # processes already known dead or silent
        self.next_beat = 0.0
        self.children = {}                       # the processes this launcher starts and owns
        self.external = {}                       # name -> command to run by hand elsewhere
        for role, name in (("host", "host"), ("kvm", "kvm-vm0"), ("guest", "guest-vm0")):
            cmd = ["--run-dir", run_dir, "--control", self.control_ep, "--name", name,
                   "--lost-after", str(opts["lost_after"])]
            if role in listen:
                cmd += ["--listen", listen[role]]
            if keys:
                cmd += ["--keys", keys]
            elif tcp:
                cmd += ["--insecure"]
            if role in external:
                self.external[name] = [f"vpmu-{role}", *cmd]
            else:
                self.children[name] = Child(role, name, [sys.executable, "-m", role, *cmd,
                                                         "--exit-with-parent"],
                                            os.path.join(run_dir, f"{name}.log"))
        self.endpoints: dict[str, dict] = {}
        self.runs: list[dict] = []

    # --- process lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        for child in self.children.values():
            child.start()
        with open(os.path.join(self.run_dir, "pids.json"), "w") as f:
            json.dump({n: c.proc.pid for n, c in self.children.items()}, f)
        for name, cmd in self.external.items():
            say(f"  waiting for {name}; start it (with its own --listen address where it binds "
                f"one) as:\n    {' '.join(cmd)}")
        waiting = set(self.members)
        while waiting:
            name, msg = self.expect(MsgType.HELLO, waiting, 600 if self.external else 20)
            waiting.discard(name)
            self.endpoints[name] = msg.body.endpoints
            self.beats[name] = time.monotonic()
            self.control.send(schema.Welcome(name), name.encode())

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
                    self.beats[name[:-3]] = time.monotonic()
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

    def watch(self, waiting_for: MsgType) -> None:
        """Heartbeats to every process; a process that died or went silent ends the run."""
        for child in self.children.values():
            if not child.alive() and child.name not in self.lost:
                raise LaunchError(f"process died while waiting for {waiting_for.value}:\n"
                                  + child.describe_end(), lost=child.name)
        now = time.monotonic()
        for name, seen in self.beats.items():
            if now - seen > self.lost_after and name not in self.lost:
                state = ("still running" if name not in self.children
                         or self.children[name].alive() else "dead")
                raise LaunchError(f"{name} stopped answering: no heartbeat for "
                                  f"{now - seen:.1f} s (process {state}); logs are in "
                                  f"{self.run_dir}", lost=name)
        if now >= self.next_beat:
            self.next_beat = now + 0.5
            for name in self.beats:
                self.control.send(schema.Heartbeat(0), f"{name}.hb".encode(), droppable=True)

    def configure(self, name: str, run: int, cfg: dict, peers: dict) -> dict:
        self.control.send(schema.Configure(run, cfg, peers), name.encode())
        return self.expect(MsgType.READY, {name}, 30)[1].body.endpoints

    def run_policy(self, run: int, policy: str) -> None:
        cfg = dict(self.cfg, policy=policy)
        t0 = time.monotonic()
        host_eps = self.configure("host", run, cfg, {})
        kvm_eps = self.configure("kvm-vm0", run, cfg, {"perf": host_eps["perf"]})
        self.configure("guest-vm0", run, cfg, {"vcpus": kvm_eps["vcpus"], "kvm": "kvm-vm0"})
        self.control.send(schema.Start(run), b"guest-vm0")
        try:
            reason = self.expect(MsgType.DONE, {"guest-vm0"},
                                 self.cfg["run"]["timeout_s"])[1].body.reason
        except KeyboardInterrupt:
            reason = "interrupted"               # collect what was counted so far
        reports = {name: self.final_report(name, run, 10)
                   for name in ("guest-vm0", "kvm-vm0", "host")}
        wall = time.monotonic() - t0
        self.runs.append(report.build_run(policy, cfg, preset(cfg["host"]["preset"]),
                                          reports["host"], reports["kvm-vm0"],
                                          reports["guest-vm0"], wall, reason))
        if reason == "interrupted":
            raise KeyboardInterrupt

    def final_report(self, name: str, run: int, timeout_s: float) -> dict:
        """FINISH one process's run and wait for what it counted, even after Ctrl-C."""
        self.control.send(schema.Finish(run), name.encode())
        return self.expect(MsgType.REPORT, {name}, timeout_s, interruptible=False)[1].body.stats

    def collect_partial(self, run: int, lost: str | None) -> dict:
        """After a failure: what the processes still alive counted so far."""
        reports = {}
        if lost:
            self.lost.add(lost)
        for name in self.members - self.lost:
            if name in self.children and not self.children[name].alive():
                continue
            try:
                reports[name] = self.final_report(name, run, 5)
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


def write_atomic(path: str, data: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def new_run_dir(out: str | None) -> str:
    path = out or os.path.join(ROOT, "runs", time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}")
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = resolve_config(args)
    except config.ConfigError as exc:
        print(f"launch: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_ERROR
    explain = cfg["launch"]["explain_costs"]
    if explain and args.pmis is None:
        cfg["run"]["pmis"] = 5
    if explain:
        say(report.cost_table(costs.resolve(cfg["costs"])) + "\n")
    run_dir = new_run_dir(cfg["launch"]["out"])
    logsetup.setup("launcher", run_dir)
    write_atomic(os.path.join(run_dir, "config.json"), cfg)
    launcher = Launcher(cfg, run_dir)

    def on_signal(signum, frame):
        launcher.interrupted = True
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)

    results = {"complete": False, "scenario": cfg, "run_dir": run_dir, "runs": launcher.runs,
               "error": None}
    code = EXIT_OK
    say(f"vpmu-emu: {preset(cfg['host']['preset']).describe()}, watchdog "
          f"{'on' if cfg['host']['watchdog'] else 'off'}; {cfg['vm']['vcpus']} vCPU(s); guest "
          f"samples {cfg['guest']['event']} every {cfg['guest']['period']:,}; "
          f"{cfg['run']['pmis']} PMIs per vCPU; run directory {run_dir}")
    try:
        launcher.start()
        for run, policy in enumerate(cfg["run"]["policies"]):
            say(f"  running policy {policy} ...")
            launcher.run_policy(run, policy)
        results["complete"] = True
    except KeyboardInterrupt:
        results["error"] = "interrupted"
        code = EXIT_INTERRUPTED
    except (LaunchError, transport.PeerLost) as exc:
        results["error"] = str(exc)
        print(f"launch: {exc}", file=sys.stderr)
        code = EXIT_ERROR
        results["partial_reports"] = launcher.collect_partial(
            len(launcher.runs), getattr(exc, "lost", None))
    finally:
        results["exit_codes"] = launcher.shutdown(results["error"] or "run complete",
                                                  failed=code == EXIT_ERROR)
        results["launcher_protocol_errors"] = dict(launcher.errors.counts)
        write_atomic(os.path.join(run_dir, "results.json"), results)
    if results["runs"]:
        say()
        say(report.table(results["runs"]))
    for r in results["runs"]:
        for c in r.get("guest_program", {}).get("checks", []):
            say(f"  {'PASS' if c['passed'] else 'FAIL'} [{r['policy']}] vcpu {c['vcpu']} "
                  f"{c['name']}" + (f": {c['detail']}" if c["detail"] else ""))
        for e in r.get("guest_program", {}).get("errors", []):
            say(f"  FAIL [{r['policy']}] vcpu {e['vcpu']} main raised {e['error']}"
                + "".join(f"\n      {frame}" for frame in e["traceback"]))
        shown: dict[str, int] = {}
        for v in report.failed_checks(r):
            shown[v["kind"]] = shown.get(v["kind"], 0) + 1
            if shown[v["kind"]] <= report.SHOW_PER_KIND:
                say(f"  VIOLATION [{r['policy']}] {v['kind']} vcpu {v['vcpu']} counter "
                      f"{v['counter']}: {v['detail']}")
        for kind, n in shown.items():
            if n > report.SHOW_PER_KIND:
                say(f"  VIOLATION [{r['policy']}] {kind}: {n - report.SHOW_PER_KIND} more "
                      "(all in results.json)")
    if explain:
        for r in results["runs"]:
            say("\n" + report.breakdown(r))
    unclean = {n: c for n, c in results["exit_codes"].items() if c != 0}
    if code == EXIT_OK and unclean:
        say(f"launch: processes did not exit cleanly: {unclean} (negative: killed by that "
            "signal)", file=sys.stderr)
        code = EXIT_ERROR
    if code == EXIT_OK and any(report.failed_checks(r) for r in results["runs"]):
        code = EXIT_CHECK_FAILED
    say(f"\nresults: {os.path.join(run_dir, 'results.json')}")
    return code


if __name__ == "__main__":
    sys.exit(main())
