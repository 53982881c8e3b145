"""Sweeps: a grid of scenarios, each point a full emulation, one table of the key figures.

A grid file is a scenario (``scenario = "FILE"``, then inline tables over it) plus ``[grid]``,
whose keys are scenario keys ("vm.vcpus") and whose values are lists. Every combination is a
point; each point runs the launcher as a subprocess (``vpmu-launch --scenario POINT.toml --out
DIR/points/ID``), on a local pool or, with ``--scheduler``, as a task on a Dask distributed
cluster. A point's id is a hash of its scenario, so a sweep run again into the same folder skips
the points whose results.json says ``complete`` (docs/sweeps.md).

Exit codes: 0 every point's launcher exited 0; 1 some did not (the table still has every point);
2 a bad grid or --out, before anything runs; 3 interrupted.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import copy
import csv
import hashlib
import itertools
import json
import os
import subprocess
import sys
import time

from common import config
from common.launcher import RUNS, make_private_dirs, say, write_atomic

EXIT_OK, EXIT_POINT_FAILED, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 3
SWEEPABLE = ("run", "host", "vm", "guest", "costs")       # launch.* is how, not what
OWNED = ("out", "force", "external", "plan")              # the sweep decides these per point


class GridError(ValueError):
    """A grid that cannot run: its file, the key and why, on one line."""


def launch_command() -> list[str]:
    """The launcher beside this interpreter, by its absolute path: a Dask worker runs the same
    path, so it must have this checkout (with its .venv) or this install at the same place."""
    script = os.path.join(os.path.dirname(sys.executable), "vpmu-launch")
    return [script] if os.access(script, os.X_OK) else [sys.executable, "-m", "common.launcher"]


def load_grid(path: str) -> tuple[dict, dict]:
    """(base scenario, axes) of a grid file; GridError for anything a run would refuse later."""
    try:
        raw = config.load_scenario(path)
    except config.ConfigError as exc:
        raise GridError(str(exc)) from None
    axes = raw.pop("grid", None)
    base: dict = {}
    if "scenario" in raw:
        named = raw.pop("scenario")
        if not isinstance(named, str):
            raise GridError(f"{path}: scenario: must be the path of a scenario file")
        named = os.path.join(os.path.dirname(os.path.abspath(path)), named)
        try:
            base = config.load_scenario(named)
        except config.ConfigError as exc:
            raise GridError(str(exc)) from None
    for section, values in raw.items():
        if not isinstance(values, dict):
            raise GridError(f"{path}: {section}: must be a table (or scenario = \"FILE\")")
        base.setdefault(section, {}).update(values)
    for key in OWNED:
        if key in base.get("launch", {}):
            raise GridError(f"{path}: launch.{key}: set by the sweep for each point")
    if not isinstance(axes, dict) or not axes:
        raise GridError(f"{path}: grid: needs a [grid] table of \"section.key\" = [values]")
    for key, values in axes.items():
        section, _, name = key.partition(".")
        if section not in SWEEPABLE or not name or (
                section != "costs" and name not in config.DEFAULTS[section]):
            raise GridError(f"{path}: grid.{key}: unknown key; sweepable: section.key with a "
                            f"section among {', '.join(SWEEPABLE)} (docs/flags.md lists keys)")
        if not isinstance(values, list) or not values:
            raise GridError(f"{path}: grid.{key}: must be a non-empty list of values")
    return base, axes


def absolute_files(layer: dict) -> dict:
    """The files a scenario names (policy files, a guest program), absolute (relative ones are
    relative to the current folder, as for the launcher): a point runs the same files from a
    Dask worker."""
    run = layer.get("run", {})
    if isinstance(run.get("guest_program"), str) and run["guest_program"]:
        run["guest_program"] = os.path.abspath(run["guest_program"])
    if isinstance(run.get("policies"), list):
        run["policies"] = [os.path.abspath(p) if isinstance(p, str) and p.endswith(".py") else p
                           for p in run["policies"]]
    return layer


def expand(path: str) -> list[dict]:
    """Every point of the grid at ``path``, validated as the launcher would: each a dict of its
    id, swept values and scenario layer."""
    base, axes = load_grid(path)
    points, seen = [], set()
    for combo in itertools.product(*axes.values()):
        layer = copy.deepcopy(base)
        values = dict(zip(axes, combo))
        for key, value in values.items():
            section, _, name = key.partition(".")
            if key == "run.policies" and isinstance(value, str):
                value = [value]                     # one policy per point
            layer.setdefault(section, {})[name] = value
        layer = absolute_files(layer)
        label = f"{path} at " + ", ".join(f"{k} = {v!r}" for k, v in values.items())
        try:
            config.validate(config.merge(config.DEFAULTS, layer, label), label)
        except config.ConfigError as exc:
            raise GridError(str(exc)) from None
        pid = point_id(layer)
        if pid in seen:
            raise GridError(f"{path}: grid: {label} repeats a point (a value listed twice?)")
        seen.add(pid)
        points.append({"id": pid, "values": values, "scenario": layer})
    return points


def point_id(layer: dict) -> str:
    """12 hex digits of the SHA-256 of the point's scenario (keys sorted): the same values give
    the same id in any order and on any machine; another base or value gives another id."""
    text = json.dumps(layer, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def finished(run_dir: str) -> bool:
    """A point is done when its launcher wrote results.json with every policy run."""
    try:
        with open(os.path.join(run_dir, "results.json")) as f:
            return json.load(f).get("complete") is True
    except (OSError, ValueError):
        return False


def set_aside(run_dir: str) -> str | None:
    """An unfinished point's folder moves to ID.attempt-N (its logs stay) before it runs again."""
    if not os.path.lexists(run_dir):
        return None
    n = 1
    while os.path.lexists(f"{run_dir}.attempt-{n}"):
        n += 1
    os.rename(run_dir, f"{run_dir}.attempt-{n}")
    return f"{run_dir}.attempt-{n}"


def prepare(points: list[dict], out: str) -> list[dict]:
    """Write each unfinished point's scenario into ``out/points``; the points still to run."""
    folder = os.path.join(out, "points")
    make_private_dirs(folder)
    todo = []
    for p in points:
        p["run_dir"] = os.path.join(folder, p["id"])
        if finished(p["run_dir"]):
            continue
        set_aside(p["run_dir"])
        write_atomic(p["run_dir"] + ".toml", f"# sweep point {p['id']}: "
                     + ", ".join(f"{k} = {v!r}" for k, v in p["values"].items()) + "\n"
                     + config.to_toml(p["scenario"]))
        todo.append(p)
    return todo


def point_argv(p: dict) -> list[str]:
    return [*launch_command(), "--scenario", p["run_dir"] + ".toml", "--out", p["run_dir"]]


def run_local(todo: list[dict], workers: int, done) -> None:
    """Each point a launcher subprocess, ``workers`` at a time."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        running = {pool.submit(subprocess.run, point_argv(p), capture_output=True, text=True,
                               stdin=subprocess.DEVNULL): p for p in todo}
        try:
            for fut in concurrent.futures.as_completed(running):
                done(running[fut], fut.result())
        except KeyboardInterrupt:
            for fut in running:
                fut.cancel()
            raise


def connect(scheduler: str):
    """A Dask client of the cluster at ``scheduler``; GridError when there is none to reach."""
    try:
        from distributed import Client
    except ImportError:
        raise GridError("--scheduler needs Dask distributed: pip install 'vpmu-emu[sweep]'") \
            from None
    try:
        return Client(scheduler, timeout="30s")
    except (OSError, TimeoutError, ValueError) as exc:
        raise GridError(f"--scheduler {scheduler}: cannot reach it: {exc}") from None


def run_dask(todo: list[dict], client, done) -> None:
    """Each point a task on the client's cluster: subprocess.run of the launcher on the worker
    (nothing of vpmu-emu is imported there; the command is the one launch_command names)."""
    from distributed import as_completed
    running = {client.submit(subprocess.run, point_argv(p), capture_output=True, text=True,
                             stdin=subprocess.DEVNULL, pure=False,
                             key=f"vpmu-point-{p['id']}-{time.time_ns()}"): p for p in todo}
    try:
        for fut in as_completed(running):
            done(running[fut], fut.result())
    except KeyboardInterrupt:
        client.cancel(list(running))
        raise


# --- the table ----------------------------------------------------------------------------------

def rows(p: dict, outcome: dict | None) -> list[dict]:
    """One row per policy the point ran (or one row for a point that ran none)."""
    keys = {"point": p["id"], **{k: cell(v) for k, v in p["values"].items()}}
    try:
        with open(os.path.join(p["run_dir"], "results.json")) as f:
            res = json.load(f)
    except (OSError, ValueError):
        res = {"runs": [], "complete": False, "error": "no results.json"}
    common = {"exit_code": (outcome or {}).get("exit_code"), "complete": res.get("complete"),
              "run_dir": p["run_dir"]}
    if not res.get("runs"):
        return [{**keys, "policy": None, **figures(None), **common,
                 "stop_reason": res.get("error") or "no run"}]
    return [{**keys, "policy": r.get("policy"), **figures(r), **common,
             "stop_reason": r.get("stop_reason")} for r in res["runs"]]


FIGURES = ("handle_event_modeled_mean_ns", "handle_event_modeled_band_low_ns",
           "handle_event_modeled_band_high_ns", "handle_event_measured_mean_ns",
           "handle_event_measured_p50_ns", "handle_event_measured_p99_ns", "pmis_handled",
           "perf_calls_per_pmi", "exits_per_pmi", "guest_overhead_share", "violations")


def figures(run: dict | None) -> dict:
    """The key figures of one policy's run in results.json (docs/results.md)."""
    if run is None:
        return dict.fromkeys(FIGURES)
    he = run["handle_event"]
    pmis, total = run["pmis"]["handled"], run["modeled_total_ns"]
    per_pmi = (lambda n: n / pmis if pmis else None)
    return dict(zip(FIGURES, (
        he["modeled_ns"]["mean"], he["modeled_ns"]["band"][0], he["modeled_ns"]["band"][1],
        he["measured_ns"]["mean"], he["measured_ns"]["p50"], he["measured_ns"]["p99"], pmis,
        per_pmi(sum(run["perf_calls"].values())), per_pmi(run["exits"]["total"]),
        1 - run["modeled_guest_ns"] / total if total else None,
        len(run["invariants"]["violations"]))))


def cell(value):
    """A swept value as a table cell: scalars as they are, lists and tables as their JSON."""
    return value if isinstance(value, (str, int, float, bool)) else json.dumps(value)


def uniform(table: list[dict]) -> list[dict]:
    """Columns of one type each (Parquet needs it): a column mixing types becomes text."""
    for key in table[0] if table else ():
        kinds = {type(r[key]) for r in table if r[key] is not None}
        if len(kinds) > 1 and kinds != {int, float}:
            for r in table:
                r[key] = None if r[key] is None else str(r[key])
    return table


def write_table(table: list[dict], out: str) -> str:
    """sweep.parquet with pyarrow, else sweep.csv; the path written."""
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        path = os.path.join(out, "sweep.csv")
        with open(path + ".tmp", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(table[0]))
            writer.writeheader()
            writer.writerows(table)
        os.replace(path + ".tmp", path)
        return path
    path = os.path.join(out, "sweep.parquet")
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(table), path + ".tmp")
    os.replace(path + ".tmp", path)
    return path


def ms(ns) -> str:
    return "-" if ns is None else f"{ns / 1e6:.3f}"


def num(x, fmt="{:.1f}") -> str:
    return "-" if x is None else fmt.format(x)


def summary(grid: str, points: list[dict], table: list[dict], ran: int, wall_s: float,
            table_path: str) -> str:
    """sweep.md: what ran, the figures per point and policy, the points that failed."""
    axes = list(points[0]["values"]) if points else []
    failed = sorted({r["point"] for r in table if r["exit_code"] not in (0, None)
                     or not r["complete"]})
    lines = [f"# Sweep of {grid}", "",
             f"{len(points)} points ({ran} run now, {len(points) - ran} finished earlier), "
             f"{len(table)} rows in `{os.path.basename(table_path)}`; {len(failed)} points "
             f"failed or incomplete; {wall_s:.0f} s. kvm_pmu_handle_event in ms (modeled mean "
             "[band at every cost's low..high], measured mean); per PMI handled.", "",
             "| point | " + " | ".join(axes) + " | policy | modeled | band | measured | "
             "perf calls/PMI | exits/PMI | overhead | violations | stop | exit |",
             "| --- |" + " --- |" * (len(axes) + 10)]
    for r in table:
        band = ("-" if r["handle_event_modeled_band_low_ns"] is None else
                f"{ms(r['handle_event_modeled_band_low_ns'])}..."
                f"{ms(r['handle_event_modeled_band_high_ns'])}")
        share = r["guest_overhead_share"]
        lines.append("| " + " | ".join(str(c) for c in (
            r["point"], *(r[a] for a in axes), r["policy"] or "-",
            ms(r["handle_event_modeled_mean_ns"]), band, ms(r["handle_event_measured_mean_ns"]),
            num(r["perf_calls_per_pmi"]), num(r["exits_per_pmi"]),
            "-" if share is None else f"{share:.1%}", num(r["violations"], "{}"),
            r["stop_reason"], num(r["exit_code"], "{}"))) + " |")
    if failed:
        again = {r["point"] for r in table if not r["complete"]}
        lines += ["", "Points not finished with exit 0 (the launcher's exit codes: "
                  "docs/operations.md); their run directories hold the logs:", ""]
        lines += [f"- `{p}`: {os.path.join('points', p)}"
                  + (" (no complete results.json: runs again when the sweep does)"
                     if p in again else "") for p in failed]
    return "\n".join(lines) + "\n"


# --- the command ----------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="sweep", description="Run every point of a grid of "
                                 "scenarios and tabulate the key figures (docs/sweeps.md).")
    ap.add_argument("grid", help="grid file: a scenario plus [grid] \"section.key\" = [values]")
    ap.add_argument("--out", help="sweep folder; an existing one resumes (default: a new folder "
                    "under runs/)")
    ap.add_argument("--scheduler", metavar="ADDR",
                    help="run the points on this Dask distributed scheduler (tcp://HOST:8786) "
                    "instead of a local pool")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, metavar="N",
                    help="points run at once on the local pool (default: this machine's CPUs)")
    return ap


def sweep_dir(out: str | None) -> str:
    """``out`` (new, empty, or a sweep folder to resume), or a new folder under runs/."""
    if not out:
        out = os.path.join(RUNS, "sweep-" + time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}")
    if os.path.lexists(out):
        if not os.path.isdir(out):
            raise GridError(f"--out {out}: exists and is not a directory")
        if os.listdir(out) and not os.path.isdir(os.path.join(out, "points")):
            raise GridError(f"--out {out}: not empty and not a sweep folder (no points/); name a "
                            "new folder or a sweep's to resume it")
    make_private_dirs(out)
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.workers < 1:
            raise GridError(f"--workers {args.workers}: must be at least 1")
        client = None
        points = expand(args.grid)
        client = connect(args.scheduler) if args.scheduler else None
        out = sweep_dir(args.out)
    except GridError as exc:
        if client is not None:
            client.close()
        print(f"sweep: {exc}", file=sys.stderr)
        return EXIT_ERROR
    t0 = time.monotonic()
    todo = prepare(points, out)
    where = args.scheduler or f"a local pool of {min(args.workers, len(todo))}"
    say(f"sweep: {len(points)} points, {len(points) - len(todo)} finished earlier, "
        f"{len(todo)} to run" + (f" on {where}" if todo else "") + f"; folder {out}")
    outcomes: dict[str, dict] = {}          # point id -> its launcher's exit and output
    ran: list[str] = []

    def done(p: dict, proc: subprocess.CompletedProcess) -> None:
        outcome = {"id": p["id"], "values": p["values"], "exit_code": proc.returncode,
                   "output": (proc.stdout + proc.stderr).splitlines()[-30:]}
        write_atomic(p["run_dir"] + ".json", json.dumps(outcome, indent=1))
        outcomes[p["id"]] = outcome
        ran.append(p["id"])
        say(f"  point {p['id']} exit {proc.returncode}: "
            + ", ".join(f"{k} = {v!r}" for k, v in p["values"].items()))

    code = EXIT_OK
    try:
        if client is not None:
            with client:
                run_dask(todo, client, done)
        else:
            run_local(todo, args.workers, done)
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
        print(f"sweep: interrupted; run the same command with --out {out} to resume",
              file=sys.stderr)
    for p in points:
        if p["id"] not in outcomes:
            try:
                with open(p["run_dir"] + ".json") as f:
                    outcomes[p["id"]] = json.load(f)
            except (OSError, ValueError):
                pass
    table = uniform([r for p in points for r in rows(p, outcomes.get(p["id"]))])
    path = write_table(table, out)
    text = summary(args.grid, points, table, len(ran), time.monotonic() - t0, path)
    write_atomic(os.path.join(out, "sweep.md"), text)
    say(f"sweep: table {path}, summary {os.path.join(out, 'sweep.md')}")
    if code == EXIT_OK and any(r["exit_code"] != 0 or not r["complete"] for r in table):
        code = EXIT_POINT_FAILED
    return code


if __name__ == "__main__":
    sys.exit(main())
