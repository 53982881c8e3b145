"""report.html: one static page per run directory, readable offline with no server.

The comparison table, the plots made for the run (embedded as data: URIs, so the page is one
file), the violations and deviations with their first examples, the configuration, and how to
open the run's timeline in Perfetto. The launcher writes it at the end of every run;
``./scripts/plot`` writes it again with the plots.
"""
from __future__ import annotations

import base64
import collections
import glob
import html
import json
import os

from common import results as res

PLOTS = {   # the files common/plots.py writes, in the page's order, and what each shows
    "plot-handle-event.png": "kvm_pmu_handle_event per policy: the share of calls at or below a "
                             "time, measured in this emulator and modeled for the emulated host",
    "plot-perf-calls.png": "host perf calls per PMI the guest handled, by op",
    "plot-guest-time.png": "the share of modeled time lost to the vPMU, and the time lost per PMI",
    "sweep.png": "each policy's modeled kvm_pmu_handle_event mean (band) against what differs "
                 "between the runs' configurations",
}
STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em; color: #222 }
.wide { overflow-x: auto }
table { border-collapse: collapse; font: 13px ui-monospace, monospace }
td, th { border: 1px solid #ccc; padding: 2px 8px; text-align: right; white-space: nowrap }
td:first-child, th:first-child { text-align: left; white-space: pre }
tr:nth-child(even) { background: #f6f6f6 }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0 }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto }
.bad { color: #b00020 } .ok { color: #1b5e20 } .note { color: #555 }
"""


def e(value) -> str:
    return html.escape(str(value))


def comparison(runs: list[dict]) -> str:
    rows = res.table_rows(runs)
    head = "".join(f"<th>{e(r['policy'])}</th>" for r in runs)
    body = "".join(f"<tr><td>{e(name)}</td>{''.join(f'<td>{e(c)}</td>' for c in cells)}</tr>"
                   for name, cells in rows)
    return f'<div class="wide"><table id="comparison"><tr><th></th>{head}</tr>{body}</table></div>'


def where(x: dict) -> str:
    return "".join(f" {k} {x[k]}" for k in ("vcpu", "counter") if x.get(k) is not None)


def findings(outcome: dict) -> str:
    """Per policy: each kind of violation (fails the run) and deviation (reported, explained:
    a counter the host could not give, a run that stopped short, oncpu disagreements), with its
    count and first example."""
    items = []
    if outcome.get("error"):
        items.append(f'<li class="bad">the run ended with an error: <pre>{e(outcome["error"])}'
                     "</pre></li>")
    for r in outcome["runs"]:
        policy = e(r["policy"])
        failed = res.failed_checks(r)
        kinds = collections.Counter(v["kind"] for v in failed)
        first = {}
        for v in failed:
            first.setdefault(v["kind"], v)
        for kind, n in kinds.items():
            v = first[kind]
            items.append(f'<li class="bad">violation [{policy}] <b>{e(kind)}</b> × {n:,}; first:'
                         f"{e(where(v))}: {e(v['detail'])}</li>")
        explained = [v for v in r["invariants"]["violations"]
                     if v["kind"] in res.EXPLAINED_VIOLATIONS]
        if explained:
            v = explained[0]
            items.append(f"<li>deviation [{policy}] <b>{e(v['kind'])}</b> × {len(explained):,} "
                         f"(the host had no counter for the event: reported, not a failure); "
                         f"first:{e(where(v))}: {e(v['detail'])}</li>")
        if r.get("incomplete"):
            items.append(f"<li>deviation: {e(r['incomplete'])}</li>")
        if r.get("oncpu_disagreements"):
            items.append(f"<li>deviation [{policy}] {r['oncpu_disagreements']:,} oncpu "
                         "disagreements (moves after which an event's oncpu was neither the new "
                         "pCPU nor -1)</li>")
    if not items:
        checked = sum(r["invariants"]["checked"] for r in outcome["runs"])
        return f'<p class="ok">none: {checked:,} invariants checked, none violated.</p>'
    return f'<ul id="findings">{"".join(items)}</ul>'


def plots(run_dir: str) -> str:
    found = [p for p in PLOTS if os.path.exists(os.path.join(run_dir, p))]
    if not found:
        return ('<p class="note">No plots for this run: run it with <code>--plot</code>, or '
                "make them afterwards with <code>./scripts/plot RUN_DIR</code>.</p>")
    out = []
    for name in found:
        with open(os.path.join(run_dir, name), "rb") as f:
            data = base64.b64encode(f.read()).decode("ascii")
        out.append(f'<figure><img alt="{e(name)}" src="data:image/png;base64,{data}">'
                   f"<figcaption>{e(PLOTS[name])} (<code>{e(name)}</code>)</figcaption>"
                   "</figure>")
    return "".join(out)


def timeline(run_dir: str) -> str:
    """How to open trace.json in Perfetto, or that this run has none (and how to get one, or
    that the timeline is not built yet)."""
    from common import launcher
    if os.path.exists(os.path.join(run_dir, "trace.json")):
        return ("<p>This run's timeline is <code>trace.json</code>, in this folder. Open "
                "<a href=\"https://ui.perfetto.dev\">ui.perfetto.dev</a>, choose <i>Open trace "
                "file</i> and pick it (Perfetto reads it in the browser; nothing is uploaded); "
                "<code>chrome://tracing</code> loads it too.</p>")
    flags = {s for a in launcher.build_parser()._actions for s in a.option_strings}
    if "--trace" in flags:
        return ("<p>This run has no <code>trace.json</code>: run it again with "
                "<code>--trace</code> to get its timeline, then open it in "
                "<a href=\"https://ui.perfetto.dev\">ui.perfetto.dev</a>.</p>")
    return ("<p>This run has no <code>trace.json</code>: a timeline of every PMI (a "
            "<code>--trace</code> flag writing the Chrome trace-event format for "
            "ui.perfetto.dev) is planned and not built yet.</p>")


def configuration(outcome: dict, run_dir: str) -> str:
    path = os.path.join(run_dir, "config.toml")
    if os.path.exists(path):
        with open(path) as f:
            return (f"<p>As <code>config.toml</code> (replay it with <code>--scenario</code>):"
                    f"</p><pre>{e(f.read())}</pre>")
    return f"<pre>{e(json.dumps(outcome.get('scenario', {}), indent=1))}</pre>"


def render(outcome: dict, run_dir: str) -> str:
    made = outcome.get("produced_by", {})
    state = ('<span class="ok">complete</span>' if outcome.get("complete") else
             '<span class="bad">not complete</span>')
    runs = outcome["runs"]
    table = comparison(runs) if runs else '<p class="bad">No policy finished a run.</p>'
    others = sorted(os.path.basename(p) for p in glob.glob(os.path.join(run_dir, "*.log")))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>vpmu-emu run {e(os.path.basename(
        os.path.normpath(run_dir)))}</title><style>{STYLE}</style></head><body>
<h1>vpmu-emu run</h1>
<p>{state}: <code>{e(made.get('command', ''))}</code>, started {e(made.get('started', '?'))},
vpmu-emu {e(made.get('version', '?'))} at commit <code>{e(made.get('commit', '?'))}</code>.
Beside this page: <code>results.json</code> (every figure) and the logs {e(', '.join(others))}.</p>
<h2>Comparison</h2>
<p class="note">measured: wall-clock time in this emulator; modeled: what the emulated host's
kernel would spend, as mid (low–high). docs/results.md says what each row holds.</p>
{table}
<h2>Plots</h2>
{plots(run_dir)}
<h2>Violations and deviations</h2>
{findings(outcome)}
<h2>Configuration</h2>
{configuration(outcome, run_dir)}
<h2>Timeline</h2>
{timeline(run_dir)}
</body></html>
"""


def write(run_dir: str, outcome: dict) -> str:
    """Write (or rewrite: it is ours) report.html in ``run_dir``; its path."""
    from common.launcher import write_atomic
    path = os.path.join(run_dir, "report.html")
    write_atomic(path, render(outcome, run_dir))
    return path
