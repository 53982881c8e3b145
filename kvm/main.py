"""The KVM process: one per VM, one pinned thread per vCPU."""
from __future__ import annotations

import logging
import sys

from common import config, schema, child, transport
from common.schema import MsgType
from common.topology import preset
from kvm import policies
from kvm.vcpu import VcpuThread

log = logging.getLogger("kvm")


class Vm:
    """The vCPU threads of one run of this VM."""

    def __init__(self, svc: child.Process, listen_base: str):
        self.svc = svc
        self.name = svc.name.removeprefix("kvm-")
        self.listen_base = listen_base
        self.threads: list[VcpuThread] = []

    def configure(self, run: int, cfg: dict, peers: dict) -> dict:
        self.stop()
        policy = policies.load(cfg["policy"])
        topo = preset(cfg["host"]["preset"])
        vcfg = dict(cfg, ghz=topo.ghz)
        self.threads = [VcpuThread(self.svc.ctx, self.name, i, pcpu, run,
                                   policy, vcfg, peers["perf"], self.listen_base, topo,
                                   self.svc.security)
                        for i, pcpu in enumerate(config.vcpu_pins(cfg))]
        for t in self.threads:
            t.start()
        for t in self.threads:
            t.bound.wait(transport.DEFAULT_TIMEOUT_S)
            if t.failure or not t.endpoint:
                raise RuntimeError(f"vCPU {t.index} did not come up: {t.failure}")
        log.info("READY run %d: policy %s; vCPU -> pCPU (thread, real CPUs): %s", run, policy.name,
                 ", ".join(f"{t.index} -> {t.pcpu} ({t.affinity.tid}, "
                           f"{t.affinity.cpus or 'not pinned'})" for t in self.threads))
        return {"vcpus": [t.endpoint for t in self.threads]}

    def finish(self) -> schema.KvmReport:
        """Every vCPU has finished (or the run is being aborted): stop and join the threads."""
        for t in self.threads:
            t.stop.set()
        for t in self.threads:
            t.join(transport.DEFAULT_TIMEOUT_S)
        reports = [t.report() for t in self.threads]
        errors = {}
        for t in self.threads:
            for kind, n in t.errors.counts.items():
                errors[kind] = errors.get(kind, 0) + n
        if errors:
            log.info("protocol errors on the guest links, by class: %s", errors)
        for r in reports:
            log.info("vCPU %d summary: exits %d, handle_event %d, overflows %d, injected %d",
                     r.vcpu, sum(r.exits.values()), r.handle_event.modeled_ns.count,
                     r.overflows, r.injected)
        return schema.KvmReport(self.name, reports)

    def stop(self) -> None:
        for t in self.threads:
            t.stop.set()
        for t in self.threads:
            t.join(transport.DEFAULT_TIMEOUT_S)
        self.threads = []


def main(argv=None) -> int:
    args = child.arg_parser("kvm").parse_args(argv)
    svc = child.Process("kvm", args)
    vm = Vm(svc, args.listen)
    try:
        svc.hello({"vcpu_base": args.listen})

        def on_control(msg: schema.Message) -> None:
            if msg.type == MsgType.CONFIGURE:
                endpoints = vm.configure(msg.body.run, msg.body.config, msg.body.peers)
                svc.send(schema.Ready(msg.body.run, endpoints))
            elif msg.type == MsgType.FINISH:
                svc.send(schema.Report(msg.body.run, vm.finish()))

        return svc.serve(on_control)
    finally:
        vm.stop()
        svc.close()


if __name__ == "__main__":
    sys.exit(main())
