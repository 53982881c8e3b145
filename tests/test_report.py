"""report.html: what it says (violations, deviations, the timeline), that every run writes it, and
that a real headless browser (Debian's chromium) renders its table and every image."""
import html
import json
import os
import re
import shutil
import subprocess

import pytest

from common import plots, report
from support import launch, read

CHROMIUM = "/usr/bin/chromium"
PROBE = """<script>addEventListener("load", () => {
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify({
    rows: [...document.querySelectorAll("#comparison tr")].map(
      tr => [...tr.cells].map(c => c.textContent)),
    images: [...document.images].map(i => ({alt: i.alt, complete: i.complete,
      width: i.naturalWidth, height: i.naturalHeight,
      shown: i.getBoundingClientRect().width}))});
  document.body.appendChild(out);
});</script>"""


def violation(kind, detail, vcpu=0, counter=1):
    return {"kind": kind, "detail": detail, "vcpu": vcpu, "counter": counter}


def a_run(policy, violations=(), incomplete=None):
    return {"policy": policy, "invariants": {"checked": 10, "violations": list(violations)},
            "incomplete": incomplete, "oncpu_disagreements": 0}


@pytest.mark.unit
def test_findings_name_each_kind_once_with_its_count_and_first_example():
    outcome = {"runs": [
        a_run("always", [violation("missing_pmi", "first one"),
                         violation("missing_pmi", "second one"),
                         violation("counter_unavailable", "held by the host", counter=2)]),
        a_run("reuse", incomplete="INCOMPLETE [reuse] stopped before its target")]}
    text = report.findings(outcome)
    assert "violation [always] <b>missing_pmi</b> × 2; first: vcpu 0 counter 1: first one" in text
    assert "second one" not in text
    assert "deviation [always] <b>counter_unavailable</b> × 1" in text
    assert "INCOMPLETE [reuse]" in text
    clean = report.findings({"runs": [a_run("oncpu")]})
    assert "none: 10 invariants checked" in clean


@pytest.mark.unit
def test_the_timeline_section_claims_no_trace_that_is_not_there(tmp_path):
    text = report.timeline(str(tmp_path))
    assert "no <code>trace.json</code>" in text and "ui.perfetto.dev" in text
    (tmp_path / "trace.json").write_text("[]")
    text = report.timeline(str(tmp_path))
    assert "This run's timeline is <code>trace.json</code>" in text and "Open trace" in text


@pytest.mark.unit
def test_text_from_a_run_is_escaped(tmp_path):
    text = report.findings({"runs": [a_run("always", [violation("count_mismatch",
                                                                "<script>x</script>")])]})
    assert "<script>x" not in text and "&lt;script&gt;x" in text
    page = report.render({"runs": [], "error": "a & <b>"}, str(tmp_path))   # no policy ran
    assert "a &amp; &lt;b&gt;" in page and "No policy finished a run" in page


def rendered(page: str, tmp_path) -> dict:
    """What Debian's chromium renders of ``page``: each comparison row's cells and each image's
    decoded and shown size, from a probe added to a copy of the page."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    probed = tmp_path / "probed.html"
    probed.write_text(read(page).replace("</body>", PROBE + "</body>"))
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--no-first-run",
         f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=10000",
         "--dump-dom", probed.as_uri()], capture_output=True, text=True, timeout=90)
    found = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, re.S)
    assert found, (proc.returncode, proc.stderr[-2000:])
    return json.loads(html.unescape(found.group(1)))


@pytest.mark.system
def test_every_run_writes_a_report_and_chromium_renders_its_table_and_plots(seed_run, tmp_path):
    pytest.importorskip("matplotlib", reason="the plot extra (matplotlib) is not installed: "
                        "./scripts/test installs it")
    proc, results, out = seed_run
    assert f"report: {os.path.join(out, 'report.html')}" in proc.stdout
    assert "No plots for this run" in read(os.path.join(out, "report.html"))
    run_dir = str(tmp_path / "seed")
    shutil.copytree(out, run_dir)              # plots made afterwards, as ./scripts/plot does
    assert plots.main([run_dir]) == 0
    seen = rendered(os.path.join(run_dir, "report.html"), tmp_path)
    policies = [r["policy"] for r in results["runs"]]
    assert seen["rows"][0] == ["", *policies]
    assert ["kvm_pmu_handle_event calls", *(f"{r['handle_event']['calls']:,}"
                                           for r in results["runs"])] in seen["rows"]
    assert [i["alt"] for i in seen["images"]] == [
        "plot-handle-event.png", "plot-perf-calls.png", "plot-guest-time.png"]
    for image in seen["images"]:
        assert image["complete"] and image["width"] > 300 and image["height"] > 200, image
        assert image["shown"] > 100, image


@pytest.mark.system
def test_launch_with_plot_embeds_the_plots_and_they_sweep_against_the_seed(seed_run, tmp_path):
    pytest.importorskip("matplotlib", reason="the plot extra (matplotlib) is not installed: "
                        "./scripts/test installs it")
    proc, results, out = launch(tmp_path, "--plot", "--pmis", "3", "--policy", "always,oncpu")
    assert proc.returncode == 0, proc.stderr
    page = read(os.path.join(out, "report.html"))
    assert page.count('src="data:image/png;base64,') == 3
    for r in results["runs"]:
        points = r["handle_event"]["distribution"]["modeled_ns"]
        assert points == sorted(points) and len(points) == r["handle_event"]["calls"]
    seed = str(tmp_path / "seed")
    shutil.copytree(seed_run[2], seed)       # the session's seed run stays as it was
    assert plots.main([seed, out, "--out", str(tmp_path / "sweep")]) == 0
    assert os.path.getsize(tmp_path / "sweep" / "sweep.png") > 5_000
    keys, labels = plots.swept([seed_run[1], results])
    assert keys == ["run.pmis"] and labels == ["pmis=200", "pmis=3"]
