"""The guest-kernel process: one per VM, one thread per vCPU, each running the guest perf driver."""
from __future__ import annotations

import logging
import os
import sys
import threading

import zmq

from common import config, logsetup, schema, child, transport
from common.schema import MsgType
from common.topology import preset
from guest import program
from guest.cpu import BudgetStuck, GuestCpu, RunStopped
from guest.driver import PerfDriver, events_from_sessions
from guest.oracle import Oracle
from guest.workload import Workload, streams

log = logging.getLogger("guest")
DONE_EP = "inproc://vcpu-done"
# The emulator's failures, which reach a guest program through ``cpu`` but are not its own.
EMULATOR_ERRORS = (transport.Stopped, transport.PeerLost, schema.ProtocolError, BudgetStuck)
STOP_JOIN_S = 2.0


class GuestVcpu(threading.Thread):
    def __init__(self, ctx: zmq.Context, index: int, nr: int, endpoint: str, cfg: dict, rng,
                 go: threading.Event, security, kvm_name: str):
        super().__init__(name=f"guest-vcpu{index}", daemon=True)
        self.security, self.kvm_name = security, kvm_name
        self.ctx, self.index, self.nr, self.endpoint, self.cfg = ctx, index, nr, endpoint, cfg
        self.rng, self.go = rng, go
        self.connected = threading.Event()
        self.stop = threading.Event()
        self.reason = "not started"
        self.failure: str | None = None
        self.cpu: GuestCpu | None = None
        self.driver: PerfDriver | None = None
        self.program_error: dict | None = None      # program.failure(): error, traceback

    def run(self) -> None:
        logsetup.set_context(self.index, None)
        chan = transport.Channel(transport.socket(self.ctx, zmq.DEALER, f"guest-vcpu{self.index}"))
        self.security.client(chan.sock, self.kvm_name)
        done = self.ctx.socket(zmq.PUSH)
        done.setsockopt(zmq.LINGER, 0)
        done.connect(DONE_EP)
        try:
            chan.sock.connect(self.endpoint)
            chan.send(schema.Hello("guest", f"vcpu{self.index}", os.getpid()))
            transport.wait_for(chan, MsgType.WELCOME, transport.DEFAULT_TIMEOUT_S)
            self.connected.set()
            while not self.go.wait(0.2):
                if self.stop.is_set():
                    return
            self.reason = self.drive(chan)
        except transport.Stopped:
            self.reason = "stopped"
            log.info("guest vCPU stopped while waiting for KVM")
        except Exception as exc:
            self.failure = f"{type(exc).__name__}: {exc}"
            self.reason = "error"
            log.exception("guest vCPU failed")
        finally:
            self.connected.set()
            done.send(str(self.index).encode())
            done.close()
            chan.close()

    def drive(self, chan: transport.Channel) -> str:
        """Run the guest program, or boot the perf sessions and run the workload until the PMI
        target or a budget is reached."""
        run, g = self.cfg["run"], self.cfg["guest"]
        oracle = Oracle()
        oracle.vcpu = self.index
        topo = preset(self.cfg["host"]["preset"])
        workload = Workload(g["workload"], self.rng, topo.ghz)
        cpu = self.cpu = GuestCpu(chan, self.index, self.nr, workload, oracle, run["max_exits"],
                                  self.stop)
        if run["guest_program"]:
            reason = self.run_program(cpu, run["guest_program"])
        else:
            reason = self.run_perf(cpu, workload, run["pmis"], config.guest_sessions(self.cfg),
                                   g["watchdog"], topo.ghz, g["context_switch_ms"])
        oracle.finish()
        cpu._exit("done")
        log.info("vCPU done (%s): %d PMIs, %d exits, %d violations", reason, cpu.pmis,
                 cpu.exits_total(), len(oracle.violations))
        return reason

    def run_perf(self, cpu: GuestCpu, workload: Workload, pmis: int, sessions: list[dict],
                 watchdog: bool, ghz: float, switch_ms: int) -> str:
        driver = self.driver = PerfDriver(cpu, events_from_sessions(sessions, ghz, watchdog),
                                          switch_ms)
        driver.start()
        reason = "pmis"
        while driver.handled < pmis:
            if cpu.stop_reason:                  # a budget (max_exits here, max_modeled_ms
                reason = cpu.stop_reason         # from KVM) or a stop seen at an exit
                break
            if self.stop.is_set():
                reason = "stopped"
                break
            cpu.retire_events(workload.next_slice())
        driver.read()                            # perf reads the counters when events stop
        return reason

    def run_program(self, cpu: GuestCpu, path: str) -> str:
        """``main(cpu)`` of a guest test program; an exception is the program's failure, told
        with the program's own frames."""
        cpu.raise_on_stop = True
        try:
            program.run(path, cpu)
            return "program_done"
        except RunStopped as stop:
            return str(stop)
        except EMULATOR_ERRORS:
            raise
        except Exception as exc:                 # noqa: BLE001 - the program's own failure
            self.program_error = program.failure(exc)
            log.warning("guest program failed: %s%s", self.program_error["error"],
                        "".join(f"\n  {f}" for f in self.program_error["traceback"]))
            return "program_error"
        finally:
            cpu.raise_on_stop = False

    def report(self) -> schema.GuestVcpuReport:
        cpu, driver = self.cpu, self.driver
        return schema.GuestVcpuReport(
            self.index, self.reason, self.failure,
            pmis_delivered=cpu.pmis if cpu else 0,
            pmis_handled=driver.handled if driver else (cpu.pmis if cpu else 0),
            events=driver.report() if driver else [],
            ticks=driver.ticks if driver else 0,
            rotations=driver.rotations if driver else 0,
            context_switches=driver.switches if driver else 0,
            exits=dict(cpu.exits) if cpu else {},
            gp_faults=cpu.gp_faults if cpu else 0,
            checks=cpu.checks if cpu else [],
            program_error=schema.ProgramError(**self.program_error) if self.program_error
            else None,
            invariants_checked=cpu.oracle.checked if cpu else 0,
            violations=cpu.oracle.violations if cpu else [])


class Guest:
    def __init__(self, svc: child.Process, done: zmq.Socket):
        self.svc = svc
        self.done = done
        self.threads: list[GuestVcpu] = []
        self.run = -1
        self.finished: set[int] = set()

    def configure(self, run: int, cfg: dict, peers: dict) -> None:
        self.stop()
        self.run, self.finished = run, set()
        child.PROGRESS.new_run()                # the progress display counts per policy
        self.go = threading.Event()
        eps = peers["vcpus"]
        rngs = streams(cfg["run"]["seed"], len(eps))
        self.threads = [GuestVcpu(self.svc.ctx, i, len(eps), ep, cfg, rngs[i], self.go,
                                  self.svc.security, peers["kvm"])
                        for i, ep in enumerate(eps)]
        for t in self.threads:
            t.start()
        for t in self.threads:
            t.connected.wait(transport.DEFAULT_TIMEOUT_S)
            if t.failure:
                raise RuntimeError(f"guest vCPU {t.index}: {t.failure}")

    def on_done(self) -> None:
        self.finished.add(int(self.done.recv()))
        if len(self.finished) == len(self.threads):
            reasons = sorted({t.reason for t in self.threads})
            self.svc.send(schema.Done(self.run, ",".join(reasons)))

    def stop(self) -> None:
        """Ask each vCPU to stop after its current slice (it then exits 'done' to KVM)."""
        for t in self.threads:
            t.stop.set()
        for t in self.threads:
            t.join(STOP_JOIN_S)


def main(argv=None) -> int:
    args = child.arg_parser("guest").parse_args(argv)
    svc = child.Process("guest", args)
    done = svc.ctx.socket(zmq.PULL)
    done.setsockopt(zmq.LINGER, 0)
    done.bind(DONE_EP)
    guest = Guest(svc, done)
    try:
        svc.hello({})

        def on_control(msg: schema.Message) -> None:
            if msg.type == MsgType.CONFIGURE:
                guest.configure(msg.body.run, msg.body.config, msg.body.peers)
                svc.send(schema.Ready(msg.body.run, {}))
            elif msg.type == MsgType.START:
                guest.go.set()
            elif msg.type == MsgType.FINISH:
                guest.stop()
                svc.send(schema.Report(msg.body.run, schema.GuestReport(
                    svc.name.removeprefix("guest-"), [t.report() for t in guest.threads])))

        return svc.serve(on_control, done, guest.on_done)
    finally:
        guest.stop()
        done.close()
        svc.close()


if __name__ == "__main__":
    sys.exit(main())
