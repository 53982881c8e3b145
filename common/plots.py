"""PNG plots of run directories (matplotlib, the optional ``plot`` extra, Agg backend: no display).

One run: kvm_pmu_handle_event's distribution per policy, measured and modeled, on a log axis;
host perf calls per PMI by op; the guest time lost to the vPMU. Several runs (a sweep, presets,
vCPU counts): the modeled cost of each policy against what differs between their configurations.

Usage: python -m common.plots RUN_DIR... [--out DIR]   (scripts/plot installs the extra first)
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from common.results import fmt_ns

PERF_OPS = ("create", "release", "read", "pause", "period", "enable", "disable")
NOT_SWEPT = ("launch.", "run.policies")      # where a run goes, and the plots' own series
DPI = 100


def missing() -> str | None:
    """None when matplotlib can be imported, else the one line that says how to install it."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        return (f"plots need matplotlib (the plot extra), not installed for {sys.executable}: "
                f"install it with {sys.executable} -m pip install -e '{root}[plot]' "
                "(./scripts/plot does it for you)")
    return None


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def load(run_dir: str) -> dict:
    path = os.path.join(run_dir, "results.json")
    with open(path) as f:
        return json.load(f)


def legend(ax) -> None:
    if ax.get_legend_handles_labels()[0]:       # (matplotlib warns of an empty one)
        ax.legend(fontsize=8)


def save(fig, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, metadata={"Software": None})   # same data, same bytes
    pyplot().close(fig)
    return path


def handle_event_plot(runs: list[dict], path: str) -> str:
    """The empirical distribution (ECDF) of kvm_pmu_handle_event per policy, measured and
    modeled side by side, on a log time axis: a constant cost is one step, a rare costly call a
    late one."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, key, what in zip(axes, ("measured_ns", "modeled_ns"),
                             ("measured (this machine)", "modeled (the emulated host)")):
        for r in runs:
            points = [max(x, 1) for x in r["handle_event"].get("distribution", {}).get(key, [])]
            if points:
                n = len(points)
                ax.step(points, [(i + 1) / n for i in range(n)], where="post",
                        label=f"{r['policy']} ({r['handle_event']['calls']:,} calls)")
        ax.set_xscale("log")
        ax.set_xlabel("ns per kvm_pmu_handle_event (log)")
        ax.set_title(f"kvm_pmu_handle_event, {what}")
        ax.grid(True, which="both", alpha=0.3)
        legend(ax)
    axes[0].set_ylabel("share of calls at or below")
    return save(fig, path)


def perf_calls_plot(runs: list[dict], path: str) -> str:
    """Host perf calls per PMI the guest handled, stacked by op, one bar per policy."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    names = [r["policy"] for r in runs]
    bottom = [0.0] * len(runs)
    for op in PERF_OPS:
        per_pmi = [r["perf_calls"].get(op, 0) / max(r["pmis"]["handled"], 1) for r in runs]
        if any(per_pmi):
            ax.bar(names, per_pmi, bottom=bottom, label=op)
            bottom = [b + v for b, v in zip(bottom, per_pmi)]
    ax.set_ylabel("host perf calls per PMI handled")
    ax.set_title("perf calls per PMI, by op")
    legend(ax)
    ax.grid(True, axis="y", alpha=0.3)
    return save(fig, path)


def guest_time_plot(runs: list[dict], path: str) -> str:
    """The share of modeled time lost to virtualizing the PMU (its exits, handle_event, perf;
    not host timer exits), a bar per policy, each labelled with its modeled time lost per PMI."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    names = [r["policy"] for r in runs]
    shares = [100 * r["modeled_vpmu_share"] for r in runs]
    bars = ax.bar(names, shares, color="tab:red")
    for bar, r in zip(bars, runs):
        lost = r["modeled_vpmu_share"] * r["modeled_total_ns"] / max(r["pmis"]["handled"], 1)
        ax.annotate(f"{fmt_ns(lost)} / PMI", (bar.get_x() + bar.get_width() / 2,
                                              bar.get_height()),
                    ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, 105)
    ax.set_ylabel("% of modeled time lost to the vPMU")
    ax.set_title("guest time lost to the vPMU")
    ax.grid(True, axis="y", alpha=0.3)
    return save(fig, path)


def plot_run(results: dict, run_dir: str) -> list[str]:
    """The run's plots, written into its directory (made by us: rewritten on a second call)."""
    runs = results["runs"]
    if not runs:
        return []
    made = [perf_calls_plot(runs, os.path.join(run_dir, "plot-perf-calls.png")),
            guest_time_plot(runs, os.path.join(run_dir, "plot-guest-time.png"))]
    if any(r["handle_event"].get("distribution") for r in runs):   # not in older results
        made.insert(0, handle_event_plot(runs, os.path.join(run_dir, "plot-handle-event.png")))
    return made


def flatten(cfg: dict) -> dict:
    return {f"{section}.{k}": json.dumps(v, sort_keys=True) for section, values in cfg.items()
            for k, v in values.items()}


def swept(all_results: list[dict]) -> tuple[list[str], list[str]]:
    """What differs between the runs' configurations (``scenario``), apart from where they went,
    their policies and the budgets derived from their work: the swept keys, and each run's label
    (``key=value, ...``; the run directory's name when nothing differs)."""
    flat = [flatten(r["scenario"]) for r in all_results]
    derived = {f"run.{k}" for r in all_results for k in r.get("derived_budgets", {})}
    keys = sorted(k for k in set().union(*flat)
                  if len({f.get(k) for f in flat}) > 1 and not k.startswith(NOT_SWEPT)
                  and k not in derived)
    if not keys:
        return [], [os.path.basename(os.path.normpath(r["run_dir"])) for r in all_results]
    return keys, [", ".join(f"{k.split('.', 1)[1]}={json.loads(f[k]) if k in f else '-'}"
                            for k in keys) for f in flat]


def sweep_plot(all_results: list[dict], path: str) -> str:
    """Each policy's modeled kvm_pmu_handle_event mean (band as error bars) against the swept
    parameter: on a numeric axis when one number was swept, else one tick per run."""
    plt = pyplot()
    keys, labels = swept(all_results)
    flat = [flatten(r["scenario"]) for r in all_results]
    numeric = len(keys) == 1 and all(
        isinstance(json.loads(f.get(keys[0], "null")), (int, float)) for f in flat)
    xs = [json.loads(f[keys[0]]) for f in flat] if numeric else list(range(len(all_results)))
    order = sorted(range(len(all_results)), key=lambda i: xs[i])
    fig, ax = plt.subplots(figsize=(max(7, 1.6 * len(all_results)), 4.5))
    policies = list(dict.fromkeys(r["policy"] for res in all_results for r in res["runs"]))
    for policy in policies:
        x, y, err = [], [], [[], []]
        for i in order:
            run = next((r for r in all_results[i]["runs"] if r["policy"] == policy), None)
            if run and run["handle_event"]["calls"]:
                m = run["handle_event"]["modeled_ns"]
                x.append(xs[i])
                y.append(m["mean"])
                err[0].append(m["mean"] - m["band"][0])
                err[1].append(m["band"][1] - m["mean"])
        if x:
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=policy)
    ax.set_yscale("log")
    if numeric:
        ax.set_xlabel(keys[0])
        if all(isinstance(x, int) for x in xs):         # vCPUs, PMIs: no 2.5 vCPUs
            ax.set_xticks(sorted(set(xs)))
    else:
        ax.set_xticks(xs, labels, rotation=20, ha="right", fontsize=8)
        ax.set_xlabel(", ".join(keys) or "run")
    ax.set_ylabel("modeled ns per kvm_pmu_handle_event (log; band)")
    ax.set_title("modeled kvm_pmu_handle_event against " + (", ".join(keys) or "the runs"))
    ax.grid(True, which="both", alpha=0.3)
    legend(ax)
    return save(fig, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="plot", description="Plot run directories: each run's PNG files and report.html; "
        "with several, the modeled cost against what differs between their configurations.")
    ap.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="a run's directory")
    ap.add_argument("--out", help="folder for sweep.png when several runs are given: a new or "
                    "empty folder (default: a new folder under runs/)")
    args = ap.parse_args(argv)
    need = missing()
    if need:
        print(f"plot: {need}", file=sys.stderr)
        return 2
    from common import launcher, report
    try:
        loaded = [load(d) for d in args.run_dirs]
    except (OSError, ValueError) as exc:
        print(f"plot: cannot read a run's results.json: {exc}", file=sys.stderr)
        return 2
    for run_dir, results in zip(args.run_dirs, loaded):
        for path in plot_run(results, run_dir):
            print(path)
        print(report.write(run_dir, results))
    if len(loaded) > 1:
        try:
            out = launcher.new_run_dir(args.out or "", False)
        except launcher.RunDirRefused as exc:
            print(f"plot: {exc}", file=sys.stderr)
            return 2
        print(sweep_plot(loaded, os.path.join(out, "sweep.png")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
