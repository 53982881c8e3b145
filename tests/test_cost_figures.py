"""Modeled figures come out of the mechanisms as bands, and move with the host as they should.

Nothing here pins a figure to the seed's: the bands are reported, not fitted."""
import pytest

from common import costs
from support import launch

pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]


def mean(results, policy):
    return next(r for r in results["runs"] if r["policy"] == policy)["handle_event"]


def test_watchdog_on_collapses_the_figure(tmp_path):
    proc, results, _ = launch(tmp_path, "--watchdog", "on", "--policy", "always", "--pmis", "5")
    assert proc.returncode == 0, proc.stderr
    run = results["runs"][0]
    assert run["host_perf"]["refcount_crossings"] == {"reserve": 0, "release": 0}
    assert run["handle_event"]["modeled_ns"]["band"][1] < 100_000


def test_figure_moves_with_the_number_of_cpus(tmp_path):
    figures = {}
    for name in ("small", "bdx-2s", "skx-4s"):
        proc, results, _ = launch(tmp_path / name, "--host-preset", name, "--policy", "always",
                                  "--pmis", "3")
        assert proc.returncode == 0, proc.stderr
        figures[name] = mean(results, "always")["modeled_ns"]["mean"]
    assert figures["small"] < figures["bdx-2s"] < figures["skx-4s"]


def test_every_modeled_figure_is_a_band_around_its_mid(seed_run):
    _, results, _ = seed_run
    for run in results["runs"]:
        figures = [run["handle_event"]["modeled_ns"], run["guest_nmi_handler"]["modeled_ns"],
                   *(c["modeled_ns"] for c in run["perf_costs"].values())]
        for m in figures:
            assert set(m) >= {"mean", "p50", "p99", "min", "band"}
            lo, hi = m["band"]
            assert lo <= m["mean"] <= hi
        he = run["handle_event"]
        assert sum(he["modeled_by_param"].values()) == pytest.approx(he["modeled_ns"]["mean"])
    always = next(r for r in results["runs"] if r["policy"] == "always")
    lo, hi = always["handle_event"]["modeled_ns"]["band"]
    assert lo < 0.9 * always["handle_event"]["modeled_ns"]["mean"] and hi > 1.1 * lo


def test_table_and_explanation_show_mid_band_and_shares(tmp_path):
    proc, results, _ = launch(tmp_path, "--policy", "always", "--pmis", "2", "--explain-costs",
                              "--host-kernel", "6.12", "--cost", "invlpg=60:100:150")
    assert proc.returncode == 0, proc.stderr
    assert results["runs"][0]["host"]["kernel"] == "6.12"
    out = proc.stdout
    assert "modeled mean (band)" in out and "–" in out
    assert "% of width" in out and "cacheline_transfer_remote" in out
    assert "60 /        100 /        150  (default 50 / 100 / 200)" in out


def test_the_breakdown_adds_up_and_an_override_moves_it_by_its_share(tmp_path, seed_run):
    """Through the real processes: each policy's modeled_by_param adds up to its modeled mean,
    and --cost reaches the processes. That a raise moves every figure by exactly its share is a
    property of the ledger (tests/test_costs.py); here one parameter shows the plumbing."""
    _, base, _ = seed_run
    for run in base["runs"]:
        he = run["handle_event"]
        assert sum(he["modeled_by_param"].values()) == pytest.approx(he["modeled_ns"]["mean"],
                                                                   rel=1e-12), run["policy"]
    before = mean(base, "always")
    name = max(before["modeled_by_param"], key=before["modeled_by_param"].get)
    old = costs.resolve()[name]
    proc, bumped, _ = launch(tmp_path, "--policy", "always",
                             "--cost", f"{name}={old * 11 // 10}")
    assert proc.returncode == 0, proc.stderr
    after = mean(bumped, "always")
    share = before["modeled_by_param"][name]
    assert share > 0
    assert after["modeled_ns"]["mean"] - before["modeled_ns"]["mean"] == pytest.approx(
        share * (old * 11 // 10 - old) / old, rel=1e-9)
