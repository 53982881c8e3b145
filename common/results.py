"""Turning the processes' reports into results.json runs and the side-by-side table."""
from __future__ import annotations

import collections
import dataclasses

from common import costs, msr, schema
from common.stats import summary
from common.topology import preset

# What the oracle found that a release really did, not a fault of the emulated path: a counter
# the host could not give a hardware counter or throttled (see classify), trapped instructions a release
# before 5.17 does not count, a fixed-counter write 4.20 sign-extends (guest/oracle.py). They go
# to invariants.deviations and fail a run only under --strict.
DEVIATIONS = ("counter_unavailable", "counter_throttled", msr.UNCOUNTED_TRAPPED,
              msr.FIXED_WRITE_SIGN_EXTENDED)
SHOW_PER_KIND = 5
TARGETS = ("pmis", "program_done")          # how a vCPU's run ends when it did all its work
OWN_LINES = ("program_error", "interrupted")   # ends that are reported (and exit) otherwise
BUDGETS = {"max_modeled_ms": ("ms of modeled time", "--max-modeled-ms"),
           "max_exits": ("exits", "--max-exits")}
SHORT = {"error": "a vCPU failed (its process's log says why)",
         "stopped": "the launcher stopped it"}


def add_counts(dicts) -> dict:
    total: collections.Counter = collections.Counter()
    for d in dicts:
        total.update(d)
    return dict(total)


def binding(mode: str) -> str:
    """How KVM's events are bound; ``cpu`` is a what-if that no kernel does (every release
    creates them with perf_event_create_kernel_counter(attr, -1, current, ...))."""
    return mode if mode == "task" else f"{mode} (what-if: matches no kernel; KVM binds to the task)"


def build_run(policy: str, cfg: dict, topo, host: schema.HostReport,
              kvms: list[schema.KvmReport], guests: list[schema.GuestReport], wall_s: float,
              reason: str) -> dict:
    """One run of results.json from the reports of the host and of each VM's KVM and guest."""
    kv = [v for k in kvms for v in k.vcpus]
    gv = [v for g in guests for v in g.vcpus]
    low, mid, high = costs.bands(cfg["costs"], topo)
    modeled = [v.handle_event.modeled_ns for v in kv]
    calls = sum(m.count for m in modeled)
    by_reason = add_counts(v.handle_event.by_reason for v in kv)
    by_cause = add_counts(v.reprogram_counter for v in kv)
    he_counts = add_counts(v.handle_event.ledger for v in kv)
    exits = add_counts(v.exits for v in kv)
    migrations = add_counts(v.migrations for v in kv)
    violations, deviations = classify(guests, host.unavailable, host.throttled_lost)
    total_ns = sum(v.modeled_total_ns for v in kv)
    guest_ns = sum(v.modeled_guest_ns for v in kv)
    other_ns = sum(v.modeled_other_exits_ns for v in kv)
    events = [e for v in gv for e in v.events]
    nmi = [v.nmi_handler for v in kv]
    return {
        "policy": kv[0].policy if kv else policy,
        "generation": kv[0].generation if kv else "",
        "release": kv[0].release if kv else "",
        "host": {"preset": topo.name, "cpus": topo.ncpus, "watchdog": cfg["host"]["watchdog"],
                 "kernel": cfg["host"]["kernel"], "x2apic": cfg["host"]["x2apic"],
                 "event_binding": binding(cfg["host"]["event_binding"])},
        "vms": len(kvms), "vcpus": len(kv),
        "handle_event": {
            "calls": calls, "reprogrammed": by_cause.get("handle_event", 0),
            "skipped": sum(n for r, n in by_reason.items() if r.startswith("skipped")),
            "measured_ns": summary([v.handle_event.measured_ns for v in kv]),
            "modeled_ns": with_band(modeled, he_counts, low, high),
            "by_reason": by_reason,
            "counts_per_call": {k: n / calls for k, n in sorted(he_counts.items())}
            if calls else {},
            "modeled_by_param": {k: n * mid[k] / calls for k, n in sorted(he_counts.items())}
            if calls else {}},
        "reprogram_counter": {"calls": sum(by_cause.values()),
                              "by_cause": {"handle_event": 0, "msr_write": 0, **by_cause}},
        "emulated_instructions": sum(v.emulated_instructions for v in kv),
        "perf_calls": add_counts(v.perf_calls for v in kv),
        "perf_costs": {op: {"calls": c.modeled_ns.count,
                            "modeled_ns": with_band([c.modeled_ns], c.ledger, low, high)}
                       for op, c in host.perf_costs.items()},
        "pmis": {"overflows": sum(v.overflows for v in kv),
                 "injected": sum(v.injected for v in kv),
                 "handled": sum(v.pmis_handled for v in gv)},
        "samples": sum(e.samples for e in events),
        "guest_event_count": sum(e.count for e in events),
        "guest_events": [{"vcpu": v.vcpu, "events": [dataclasses.asdict(e) for e in v.events]}
                         for v in gv],
        "guest_ticks": sum(v.ticks for v in gv),
        "guest_rotations": sum(v.rotations for v in gv),
        "guest_context_switches": sum(v.context_switches for v in gv),
        "guest_nmi_handler": {
            "measured_ns": summary([n.measured_ns for n in nmi]),
            "modeled_ns": with_band([n.modeled_ns for n in nmi],
                                    add_counts(n.ledger for n in nmi), low, high,
                                    sum(n.guest_ns for n in nmi))},
        "timeslices": sum(v.timeslices for v in kv),
        "entry_retries": sum(v.entry_retries for v in kv),
        "exits": {"total": sum(exits.values()), "by_reason": exits},
        "gp_faults": sum(v.gp_faults for v in kv),
        "migrations": sum(migrations.values()),
        "migrations_by_kind": migrations,
        "host_sched_in_other_cpu": host.sched_in_other_cpu,
        "oncpu_disagreements": sum(v.oncpu_disagreements for v in kv),
        "affinity": [dataclasses.asdict(v.affinity) for v in kv],
        "invariants": {"checked": sum(v.invariants_checked for v in gv),
                       "violations": violations,
                       "by_kind": dict(collections.Counter(v["kind"] for v in violations)),
                       "deviations": by_kind_with_examples(deviations)},
        "host_perf": {"refcount_crossings": host.refcount_crossings,
                      "static_key": host.static_key, "overflows": host.overflows,
                      "pinned_errors": host.pinned_errors, "pmc_refcount": host.pmc_refcount,
                      "run_queue_waits": host.run_queue_waits, "unavailable": host.unavailable,
                      "throttled": dict(host.throttled, lost=host.throttled_lost)},
        "modeled_guest_ns": guest_ns, "modeled_total_ns": total_ns,
        # shares of the vCPUs' modeled time: the vPMU's (its exits, KVM's emulation and PMI
        # delivery, host perf) and that of the exits it does not cause (their VM transitions)
        "modeled_vpmu_share": (total_ns - guest_ns - other_ns) / total_ns if total_ns else 0.0,
        "modeled_other_exits_share": other_ns / total_ns if total_ns else 0.0,
        "stop_reason": reason,
        **({"guest_program": program_result(gv)} if cfg["run"]["guest_program"] else {}),
        "wall_s": round(wall_s, 3),
    }


def with_band(parts: list[schema.SampleSet], counts: dict, low: dict, high: dict,
              fixed_ns: int = 0) -> dict:
    """mean / p50 / p99 / min of the modeled samples (mid values) and the band of the mean: the
    same counts at every parameter's low and high value (``fixed_ns``: guest time, no range)."""
    out = summary(parts)
    n = sum(p.count for p in parts)
    lo, hi = costs.band_of_mean(counts, n, low, high)
    extra = fixed_ns / n if n else 0
    return dict(out, band=[lo + extra, hi + extra])


DISTRIBUTION_POINTS = 500


def distribution(kvm: list[schema.KvmReport]) -> dict:
    """kvm_pmu_handle_event's measured and modeled samples of every vCPU (their reservoirs,
    common/stats.py), for the plots: sorted, at most DISTRIBUTION_POINTS of them, taken at evenly
    spaced ranks, so that the shape (a deferred policy's rare costly call, a one-time cost)
    survives in a results.json that stays small however long the run. The same seed gives the
    same points for ``modeled_ns``."""
    def points(key: str) -> list[float]:
        pool = sorted(x for r in kvm for v in r.vcpus
                      for x in getattr(v.handle_event, key).reservoir)
        if len(pool) <= DISTRIBUTION_POINTS:
            return pool
        last = len(pool) - 1
        return [pool[round(i * last / (DISTRIBUTION_POINTS - 1))]
                for i in range(DISTRIBUTION_POINTS)]
    return {"measured_ns": points("measured_ns"), "modeled_ns": points("modeled_ns")}


def incomplete(run: dict, cfg: dict) -> str | None:
    """One line when a vCPU of ``run`` stopped short of its target (a budget, a failure): its
    column then holds less work than the others. None when every vCPU did all its work."""
    short = sorted(set(run["stop_reason"].split(",")) - {*TARGETS, *OWN_LINES})
    if not short:
        return None
    done = (f"{run['exits']['total']:,} exits made" if cfg["run"]["guest_program"] else
            f"{run['pmis']['handled']:,} of {cfg['run']['pmis'] * run['vcpus']:,} PMIs handled")
    why = "; ".join(f"run.{r} = {cfg['run'][r]:,} {BUDGETS[r][0]} per vCPU reached (raise it "
                    f"with {BUDGETS[r][1]})" if r in BUDGETS else SHORT.get(r, r) for r in short)
    return f"INCOMPLETE [{run['policy']}] stopped before its target, {done}: {why}"


def classify(guests: list[schema.GuestReport], unavailable: dict,
             throttled: dict) -> tuple[list[dict], list[dict]]:
    """The oracle's findings split into violations and deviations (``DEVIATIONS``), with the
    violations the host explains relabelled ``counter_unavailable`` or, where host perf had
    throttled the counter's event, ``counter_throttled``.

    The oracle knows only what the guest did. When a counter's shortfall adds up exactly to the
    events the host saw retire while that counter's event could not count them — it had no
    hardware counter (the error state) or was throttled — with or without the trapped
    instructions the oracle counted in it, which a release before 5.17 does not count, the
    shortfall and the PMIs it cost are the host's doing, not a fault of the emulated path;
    anything else stays as the oracle reported it."""
    out = []
    for g in guests:
        for v in g.vcpus:
            task = f"{g.vm}/vcpu{v.vcpu}"
            cut = throttled.get(task, {})
            lost = add_counts([unavailable.get(task, {}), cut])
            deficits, trapped = collections.Counter(), collections.Counter()
            for x in v.violations:
                if x.kind == "count_mismatch":
                    deficits[x.counter] += x.deficit
                    trapped[x.counter] += x.trapped or 0
            explained = {c for c, d in deficits.items()
                         if d and lost.get(str(c)) in (d, d - trapped[c])}
            explained |= {int(c) for c, n in lost.items() if n and int(c) not in deficits}
            for x in v.violations:
                if x.counter in explained and x.kind in ("count_mismatch", "missing_pmi",
                                                         "late_pmi"):
                    kind = "counter_throttled" if cut.get(str(x.counter)) else \
                        "counter_unavailable"
                    x = dataclasses.replace(x, kind=kind, detail=f"{x.kind}: {x.detail}")
                out.append(dataclasses.asdict(x))
    return ([x for x in out if x["kind"] not in DEVIATIONS],
            [x for x in out if x["kind"] in DEVIATIONS])


def by_kind_with_examples(deviations: list[dict]) -> dict:
    """{kind: {"count": n, "examples": the first SHOW_PER_KIND}}."""
    out: dict = {}
    for x in deviations:
        entry = out.setdefault(x["kind"], {"count": 0, "examples": []})
        entry["count"] += 1
        if len(entry["examples"]) < SHOW_PER_KIND:
            entry["examples"].append(x)
    return out


def program_result(guest_vcpus: list[schema.GuestVcpuReport]) -> dict:
    """Checks of every vCPU, and the exception of each vCPU whose ``main`` raised one, with the
    program's own traceback frames (innermost last)."""
    checks = [dict(dataclasses.asdict(c), vcpu=v.vcpu) for v in guest_vcpus for c in v.checks]
    failed = [{"vcpu": v.vcpu, **dataclasses.asdict(v.program_error)}
              for v in guest_vcpus if v.program_error]
    return {"checks": checks, "errors": failed,
            "error": "; ".join(f"vcpu {f['vcpu']}: {f['error']}" for f in failed) or None}


def failed_checks(run: dict, strict: bool = False) -> list[dict]:
    """What makes a run fail: violated invariants, failed program checks, a program error; and
    under ``strict`` every deviation (its examples)."""
    bad = list(run["invariants"]["violations"])
    prog = run.get("guest_program")
    if prog:
        bad += [{"kind": "check_failed", "vcpu": c["vcpu"], "counter": None,
                 "detail": f"{c['name']}: {c['detail']}"} for c in prog["checks"]
                if not c["passed"]]
        if prog["error"]:
            bad.append({"kind": "program_error", "vcpu": None, "counter": None,
                        "detail": prog["error"]})
    if strict:
        bad += [x for d in run["invariants"]["deviations"].values() for x in d["examples"]]
    return bad


def check_lines(run: dict) -> list[str]:
    """A guest program's PASS and FAIL lines, then the VIOLATION lines (a few of each kind),
    then one DEVIATION line per kind."""
    def where(x):                     # what a line applies to, where it applies to something
        return "".join(f" {k} {x[k]}" for k in ("vcpu", "counter") if x.get(k) is not None)

    policy = run["policy"]
    lines = [f"{'PASS' if c['passed'] else 'FAIL'} [{policy}]{where(c)} {c['name']}"
             + (f": {c['detail']}" if c["detail"] else "")
             for c in run.get("guest_program", {}).get("checks", [])]
    lines += [f"FAIL [{policy}]{where(e)} main raised {e['error']}"
              + "".join(f"\n      {frame}" for frame in e["traceback"])
              for e in run.get("guest_program", {}).get("errors", [])]
    shown: collections.Counter = collections.Counter()
    for v in failed_checks(run):
        shown[v["kind"]] += 1
        if shown[v["kind"]] <= SHOW_PER_KIND:
            lines.append(f"VIOLATION [{policy}] {v['kind']}{where(v)}: {v['detail']}")
    lines += [f"VIOLATION [{policy}] {kind}: {n - SHOW_PER_KIND} more (all in results.json)"
              for kind, n in shown.items() if n > SHOW_PER_KIND]
    lines += [f"DEVIATION [{policy}] {kind}: {d['count']:,} (a known limit of the release; fails "
              f"only with --strict), e.g.{where(d['examples'][0])}: {d['examples'][0]['detail']}"
              for kind, d in run["invariants"]["deviations"].items()]
    return lines


def cost_table(cfg: dict) -> str:
    """The cost parameters of the run: low, mid, high, what each stands for and its sources."""
    topo = preset(cfg["host"]["preset"])
    table = costs.table(topo)
    low, mid, high = costs.bands(cfg["costs"], topo)
    width = max(map(len, table))
    lines = [f"cost parameters for {topo.name} (ns: low / mid / high; override with --cost "
             "NAME=NS or NAME=LOW:MID:HIGH, or a [costs] table):"]
    for name, p in table.items():
        mark = "" if (low[name], mid[name], high[name]) == (p.low, p.mid, p.high) else \
            f"  (default {p.low:,} / {p.mid:,} / {p.high:,})"
        lines.append(f"  {name.ljust(width)} {low[name]:>10,} / {mid[name]:>10,} / "
                     f"{high[name]:>10,}{mark}\n"
                     f"  {''.ljust(width)} {p.what}\n  {''.ljust(width)} source: {p.source}")
    return "\n".join(lines)


def breakdown(run: dict, cfg: dict) -> str:
    """Where one kvm_pmu_handle_event's modeled time came from, mechanism by mechanism: each
    one's share of the mid figure and of the band's width."""
    per_call = run["handle_event"]["counts_per_call"]
    low, mid, high = costs.bands(cfg["costs"], preset(run["host"]["preset"]))
    total = sum(n * mid[k] for k, n in per_call.items())
    if not total:
        return f"[{run['policy']}] no kvm_pmu_handle_event call to explain"
    width = sum(n * (high[k] - low[k]) for k, n in per_call.items()) or 1
    lo, hi = run["handle_event"]["modeled_ns"]["band"]
    lines = [f"[{run['policy']}] one kvm_pmu_handle_event: {fmt_ns(total)} mid, band "
             f"{fmt_ns(lo)} - {fmt_ns(hi)}",
             f"  {'parameter':34} {'count':>12} {'mid ns':>14} {'% of mid':>9} "
             f"{'width ns':>14} {'% of width':>10}"]
    for k, n in sorted(per_call.items(), key=lambda kv: -kv[1] * mid[kv[0]]):
        w = n * (high[k] - low[k])
        lines.append(f"  {k:34} {n:>12,.1f} {n * mid[k]:>14,.0f} {100 * n * mid[k] / total:>8.2f}%"
                     f" {w:>14,.0f} {100 * w / width:>9.2f}%")
    return "\n".join(lines)


def fmt_ns(ns: float) -> str:
    if ns >= 1e6:
        return f"{ns / 1e6:,.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:,.1f} us"
    return f"{ns:,.0f} ns"


def fmt_band(m: dict) -> str:
    """A modeled figure as mid (low-high)."""
    lo, hi = m["band"]
    return f"{fmt_ns(m['mean'])} ({fmt_ns(lo)}–{fmt_ns(hi)})"


def table_rows(runs: list[dict]) -> list[tuple[str, list[str]]]:
    """The comparison's rows: each a name and one cell per run (policy)."""
    def he(r, key, stat):
        return r["handle_event"][key][stat]

    def op(r, name):
        c = r["perf_costs"].get(name)
        return fmt_band(c["modeled_ns"]) if c else "-"

    def spread(key):
        return lambda r: " / ".join(fmt_ns(he(r, key, stat)) for stat in ("p50", "p99", "max"))

    def first_steady(key):       # a one-time cost (the first event creation) apart
        return lambda r: f"{fmt_ns(he(r, key, 'first'))} / {fmt_ns(he(r, key, 'steady')['mean'])}"

    rows = [
        ("kvm_pmu_handle_event calls", lambda r: f"{r['handle_event']['calls']:,}"),
        ("  reprogrammed / skipped", lambda r: f"{r['handle_event']['reprogrammed']:,} / "
                                             f"{r['handle_event']['skipped']:,}"),
        ("  measured mean", lambda r: fmt_ns(he(r, "measured_ns", "mean"))),
        ("  measured p50 / p99 / max", spread("measured_ns")),
        ("  measured first / steady mean", first_steady("measured_ns")),
        ("  modeled mean (band)", lambda r: fmt_band(r["handle_event"]["modeled_ns"])),
        ("  modeled p50 / p99 / max", spread("modeled_ns")),
        ("  modeled first / steady mean", first_steady("modeled_ns")),
        ("guest NMI handler modeled (band)", lambda r: fmt_band(
            r["guest_nmi_handler"]["modeled_ns"])),
        ("reprogram_counter calls", lambda r: f"{r['reprogram_counter']['calls']:,}"),
        ("perf create / release / read", lambda r: "{create:,} / {release:,} / {read:,}".format(
            **r["perf_calls"])),
        ("perf pause / period / enable", lambda r: "{pause:,} / {period:,} / {enable:,}".format(
            **r["perf_calls"])),
        ("  create modeled (band)", lambda r: op(r, "create")),
        ("  release modeled (band)", lambda r: op(r, "release")),
        ("host PMU reservations (0->1)", lambda r: f"{r['host_perf']['refcount_crossings']['reserve']:,}"),
        ("overflows / PMIs injected / handled", lambda r: "{overflows:,} / {injected:,} / "
                                                         "{handled:,}".format(**r["pmis"])),
        ("exits", lambda r: f"{r['exits']['total']:,}"),
        ("migrations", lambda r: ", ".join(f"{k} {n}" for k, n in r["migrations_by_kind"].items())
         or "0"),
        ("invariants checked / violations", lambda r: f"{r['invariants']['checked']:,} / "
                                                    f"{len(r['invariants']['violations']):,}"),
        ("deviations (known limits)", lambda r: "{:,}".format(
            sum(d["count"] for d in r["invariants"]["deviations"].values()))),
        ("guest time lost to the vPMU", lambda r: f"{100 * r['modeled_vpmu_share']:.2f} %"),
        ("guest time lost to other exits",
         lambda r: f"{100 * r['modeled_other_exits_share']:.2f} %"),
        ("stop reason", lambda r: r["stop_reason"]),
        ("wall time", lambda r: f"{r['wall_s']:.2f} s"),
    ]
    return [(name, [fn(r) for r in runs]) for name, fn in rows]


def table(runs: list[dict]) -> str:
    """The side-by-side comparison a run prints."""
    rows = table_rows(runs)
    width = max(len(name) for name, _ in rows) + 2
    heads = [f"{r['policy']} ({r['release']})" for r in runs]
    colw = [max(len(h), *(len(cells[i]) for _, cells in rows)) + 2 for i, h in enumerate(heads)]
    out = ["".ljust(width) + "".join(h.rjust(w) for h, w in zip(heads, colw))]
    for name, cells in rows:
        out.append(name.ljust(width) + "".join(c.rjust(w) for c, w in zip(cells, colw)))
    return "\n".join(out)
