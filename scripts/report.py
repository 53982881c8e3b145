"""Turning the processes' reports into results.json runs and the side-by-side table."""
from __future__ import annotations

import collections

from common.stats import summary

ALWAYS_VIOLATION_OK = ("counter_unavailable",)
SHOW_PER_KIND = 5


def add_counts(dicts) -> dict:
    total: collections.Counter = collections.Counter()
    for d in dicts:
        total.update(d)
    return dict(total)


def build_run(policy: str, cfg: dict, topo, host: dict, kvm: dict, guest: dict,
              wall_s: float, reason: str) -> dict:
    kv, gv = kvm["vcpus"], guest["vcpus"]
    measured = [v["handle_event"]["measured_ns"] for v in kv]
    modeled = [v["handle_event"]["modeled_ns"] for v in kv]
    by_reason = add_counts(v["handle_event"]["by_reason"] for v in kv)
    skipped = sum(n for r, n in by_reason.items() if r.startswith("skipped"))
    by_cause = add_counts(v["reprogram_counter"] for v in kv)
    exits = add_counts(v["exits"] for v in kv)
    violations = classify(gv, host.get("unavailable", {}))
    migrations = add_counts(v["migrations"] for v in kv)
    total_ns = sum(v["modeled_total_ns"] for v in kv)
    guest_ns = sum(v["modeled_guest_ns"] for v in kv)
    by_param = add_counts(v["handle_event"]["modeled_ns_by_param"] for v in kv)
    calls = sum(m["count"] for m in modeled)
    nmi_measured = [v["nmi_handler"]["measured_ns"] for v in kv]
    nmi_modeled = [v["nmi_handler"]["modeled_ns"] for v in kv]
    return {
        "policy": kv[0]["policy"] if kv else policy,
        "host": {"preset": topo.name, "cpus": topo.ncpus, "watchdog": cfg["host"]["watchdog"]},
        "vms": 1, "vcpus": len(kv),
        "handle_event": {"calls": calls, "reprogrammed": by_cause.get("handle_event", 0),
                         "skipped": skipped, "measured_ns": summary(measured),
                         "modeled_ns": summary(modeled), "by_reason": by_reason,
                         "modeled_by_param": {k: v / calls for k, v in sorted(by_param.items())}
                         if calls else {}},
        "reprogram_counter": {"calls": sum(by_cause.values()),
                              "by_cause": {"handle_event": 0, "msr_write": 0, **by_cause}},
        "perf_calls": add_counts(v["perf_calls"] for v in kv),
        "perf_costs": host["perf_costs"],
        "pmis": {"overflows": sum(v["overflows"] for v in kv),
                 "injected": sum(v["injected"] for v in kv),
                 "handled": sum(v["pmis_handled"] for v in gv)},
        "samples": sum(v["samples"] for v in gv),
        "guest_event_count": sum(v["event_count"] for v in gv),
        "guest_events": [{"vcpu": v["vcpu"], "events": v["events"]} for v in gv],
        "guest_ticks": sum(v["ticks"] for v in gv),
        "guest_rotations": sum(v["rotations"] for v in gv),
        "guest_context_switches": sum(v["context_switches"] for v in gv),
        "guest_nmi_handler": {"measured_ns": summary(nmi_measured),
                              "modeled_ns": summary(nmi_modeled)},
        "timeslices": sum(v["timeslices"] for v in kv),
        "entry_retries": sum(v["entry_retries"] for v in kv),
        "exits": {"total": sum(exits.values()), "by_reason": exits},
        "gp_faults": sum(v["gp_faults"] for v in kv),
        "migrations": sum(migrations.values()),
        "migrations_by_kind": migrations,
        "host_sched_in_other_cpu": host["sched_in_other_cpu"],
        "oncpu_disagreements": sum(v["oncpu_disagreements"] for v in kv),
        "affinity": [v["affinity"] for v in kv],
        "invariants": {"checked": sum(v["invariants"]["checked"] for v in gv),
                       "violations": violations,
                       "by_kind": dict(collections.Counter(v["kind"] for v in violations))},
        "host_perf": {k: host[k] for k in ("refcount_crossings", "static_key", "overflows",
                                           "pinned_errors", "pmc_refcount", "run_queue_waits",
                                           "unavailable")},
        "modeled_guest_ns": guest_ns, "modeled_total_ns": total_ns,
        "guest_overhead_share": (total_ns - guest_ns) / total_ns if total_ns else 0.0,
        "stop_reason": reason,
        **({"guest_program": program_result(gv)} if cfg["run"]["guest_program"] else {}),
        "wall_s": round(wall_s, 3),
    }


def classify(guest_vcpus: list[dict], unavailable: dict) -> list[dict]:
    """The oracle's violations, with those the host explains relabelled ``counter_unavailable``.

    The oracle knows only what the guest did. When a counter's shortfall adds up exactly to the
    events the host saw retire while that counter's event could not get a hardware counter (the
    error state), the shortfall and the PMIs it cost are the hardware's doing, not a fault of the
    emulated path; anything else stays as the oracle reported it."""
    out = []
    for v in guest_vcpus:
        lost = unavailable.get(f"vm0/vcpu{v['vcpu']}", {})
        found = v["invariants"]["violations"]
        deficits = collections.Counter()
        for x in found:
            if x["kind"] == "count_mismatch":
                deficits[x["counter"]] += x["deficit"]
        explained = {c for c, d in deficits.items() if d and d == lost.get(str(c))}
        explained |= {int(c) for c, n in lost.items() if n and int(c) not in deficits}
        for x in found:
            if x["counter"] in explained and x["kind"] in ("count_mismatch", "missing_pmi",
                                                           "late_pmi"):
                x = dict(x, kind="counter_unavailable", detail=f"{x['kind']}: {x['detail']}")
            out.append(x)
    return out


def program_result(guest_vcpus: list[dict]) -> dict:
    """Checks of every vCPU, and the exception of each vCPU whose ``main`` raised one, with the
    program's own traceback frames (innermost last)."""
    checks = [dict(c, vcpu=v["vcpu"]) for v in guest_vcpus for c in v["program"]["checks"]]
    failed = [{"vcpu": v["vcpu"], "error": v["program"]["error"],
               "traceback": v["program"]["traceback"]}
              for v in guest_vcpus if v["program"]["error"]]
    return {"checks": checks, "errors": failed,
            "error": "; ".join(f"vcpu {f['vcpu']}: {f['error']}" for f in failed) or None}


def failed_checks(run: dict) -> list[dict]:
    """What makes a run fail: violated invariants, failed program checks, a program error."""
    bad = [v for v in run["invariants"]["violations"] if v["kind"] not in ALWAYS_VIOLATION_OK]
    prog = run.get("guest_program")
    if prog:
        bad += [{"kind": "check_failed", "vcpu": c["vcpu"], "counter": None,
                 "detail": f"{c['name']}: {c['detail']}"} for c in prog["checks"]
                if not c["passed"]]
        if prog["error"]:
            bad.append({"kind": "program_error", "vcpu": None, "counter": None,
                        "detail": prog["error"]})
    return bad


def cost_table(values: dict[str, int]) -> str:
    """The cost parameters of the run, with their reasons."""
    from common.costs import PARAMS
    width = max(map(len, PARAMS))
    lines = ["cost parameters (ns; override with --cost NAME=NS or a [costs] table):"]
    for name, p in PARAMS.items():
        mark = "" if values[name] == p.ns else f"  (default {p.ns:,})"
        lines.append(f"  {name.ljust(width)} {values[name]:>12,}{mark}\n"
                     f"  {''.ljust(width)} {'':>12} {p.reason}")
    return "\n".join(lines)


def breakdown(run: dict) -> str:
    """Where one kvm_pmu_handle_event's modeled time came from, mechanism by mechanism."""
    by_param = run["handle_event"]["modeled_by_param"]
    total = sum(by_param.values())
    if not total:
        return f"[{run['policy']}] no kvm_pmu_handle_event call to explain"
    lines = [f"[{run['policy']}] one kvm_pmu_handle_event: {total:,.0f} ns modeled"]
    for name, ns in sorted(by_param.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {name:34} {ns:>16,.0f} ns  {100 * ns / total:6.2f} %")
    return "\n".join(lines)


def fmt_ns(ns: float) -> str:
    if ns >= 1e6:
        return f"{ns / 1e6:,.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:,.1f} us"
    return f"{ns:,.0f} ns"


def table(runs: list[dict]) -> str:
    """The side-by-side comparison a run prints."""
    def he(r, key, stat):
        return r["handle_event"][key][stat]

    rows = [
        ("kvm_pmu_handle_event calls", lambda r: f"{r['handle_event']['calls']:,}"),
        ("  reprogrammed / skipped", lambda r: f"{r['handle_event']['reprogrammed']:,} / "
                                             f"{r['handle_event']['skipped']:,}"),
        ("  measured mean", lambda r: fmt_ns(he(r, "measured_ns", "mean"))),
        ("  measured p50 / p99", lambda r: f"{fmt_ns(he(r, 'measured_ns', 'p50'))} / "
                                         f"{fmt_ns(he(r, 'measured_ns', 'p99'))}"),
        ("  modeled mean", lambda r: f"{he(r, 'modeled_ns', 'mean'):,.0f} ns"),
        ("  modeled p50 / p99", lambda r: f"{fmt_ns(he(r, 'modeled_ns', 'p50'))} / "
                                        f"{fmt_ns(he(r, 'modeled_ns', 'p99'))}"),
        ("guest NMI handler modeled mean", lambda r: fmt_ns(
            r["guest_nmi_handler"]["modeled_ns"]["mean"])),
        ("reprogram_counter calls", lambda r: f"{r['reprogram_counter']['calls']:,}"),
        ("perf create / release / read", lambda r: "{create:,} / {release:,} / {read:,}".format(
            **r["perf_calls"])),
        ("perf pause / period / enable", lambda r: "{pause:,} / {period:,} / {enable:,}".format(
            **r["perf_calls"])),
        ("host PMU reservations (0->1)", lambda r: f"{r['host_perf']['refcount_crossings']['reserve']:,}"),
        ("overflows / PMIs injected / handled", lambda r: "{overflows:,} / {injected:,} / "
                                                         "{handled:,}".format(**r["pmis"])),
        ("exits", lambda r: f"{r['exits']['total']:,}"),
        ("migrations", lambda r: ", ".join(f"{k} {n}" for k, n in r["migrations_by_kind"].items())
         or "0"),
        ("invariants checked / violations", lambda r: f"{r['invariants']['checked']:,} / "
                                                    f"{len(r['invariants']['violations']):,}"),
        ("guest time lost to the vPMU", lambda r: f"{100 * r['guest_overhead_share']:.2f} %"),
        ("stop reason", lambda r: r["stop_reason"]),
        ("wall time", lambda r: f"{r['wall_s']:.2f} s"),
    ]
    width = max(len(name) for name, _ in rows) + 2
    cols = [[fn(r) for _, fn in rows] for r in runs]
    colw = [max(len(r["policy"]), *(len(c) for c in col)) + 2 for r, col in zip(runs, cols)]
    out = ["".ljust(width) + "".join(r["policy"].rjust(w) for r, w in zip(runs, colw))]
    for i, (name, _) in enumerate(rows):
        out.append(name.ljust(width) + "".join(col[i].rjust(w) for col, w in zip(cols, colw)))
    return "\n".join(out)
