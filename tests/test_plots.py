"""Plots (matplotlib, headless): each run's PNG files from the keys of results.json they read, the
swept parameter found between several runs' configurations, and a clear line where matplotlib is
missing."""
import copy
import os
import sys
from pathlib import Path

import pytest

from common import config, plots

pytestmark = pytest.mark.unit
PNG = b"\x89PNG\r\n\x1a\n"


def need_matplotlib():
    pytest.importorskip("matplotlib", reason="the plot extra (matplotlib) is not installed: "
                        "./scripts/test installs it")


def run(policy, measured, modeled, perf_calls, handled=10, share=0.5):
    """The keys of one policy's run that the plots read."""
    return {"policy": policy,
            "handle_event": {"calls": len(modeled),
                             "distribution": {"measured_ns": measured, "modeled_ns": modeled},
                             "modeled_ns": {"mean": sum(modeled) / len(modeled),
                                            "band": [min(modeled) / 2, max(modeled) * 2]}},
            "perf_calls": perf_calls, "pmis": {"handled": handled},
            "modeled_vpmu_share": share, "modeled_total_ns": 10**9,
            "modeled_guest_ns": int(10**9 * (1 - share))}


def outcome(run_dir, **changes):
    cfg = config.validate(config.merge(config.DEFAULTS, {}, "defaults"), "defaults")
    for key, value in changes.items():
        section, name = key.split("__")
        cfg[section][name] = value
    return {"scenario": cfg, "run_dir": str(run_dir), "derived_budgets": {},
            "runs": [run("always", [900_000, 1_000_000, 5_000_000], [62_000_000] * 3,
                         {"create": 20, "release": 20, "read": 20}, share=0.98),
                     run("oncpu", [8_000, 9_000], [103, 103], {"create": 1, "read": 10},
                         share=0.97)]}


def test_one_runs_plots_are_pngs_in_its_directory(tmp_path):
    need_matplotlib()
    made = plots.plot_run(outcome(tmp_path), str(tmp_path))
    assert [os.path.basename(p) for p in made] == [
        "plot-handle-event.png", "plot-perf-calls.png", "plot-guest-time.png"]
    for path in made:
        with open(path, "rb") as f:
            assert f.read(8) == PNG and os.path.getsize(path) > 5_000, path


def test_a_results_json_without_distributions_still_gets_the_others(tmp_path):
    need_matplotlib()
    old = outcome(tmp_path)
    for r in old["runs"]:
        del r["handle_event"]["distribution"]
    made = plots.plot_run(old, str(tmp_path))
    assert [os.path.basename(p) for p in made] == ["plot-perf-calls.png", "plot-guest-time.png"]


def test_the_swept_parameter_is_what_differs_between_the_configurations(tmp_path):
    runs = [outcome(tmp_path / f"v{n}", vm__vcpus=n, launch__out=f"runs/v{n}") for n in (1, 4)]
    runs[1]["scenario"]["run"]["policies"] = ["oncpu"]         # the series, not a parameter
    runs[1]["scenario"]["run"]["max_exits"] = 99                # derived from the work
    runs[1]["derived_budgets"] = {"max_exits": 99}
    assert plots.swept(runs) == (["vm.vcpus"], ["vcpus=1", "vcpus=4"])
    runs[1]["scenario"]["host"]["preset"] = "small"
    assert plots.swept(runs)[1] == ["preset=skx-4s, vcpus=1", "preset=small, vcpus=4"]
    same = [outcome(tmp_path / "a"), outcome(tmp_path / "b")]
    assert plots.swept(same) == ([], ["a", "b"])                # repetitions: by directory


@pytest.mark.parametrize("swept", [{"vm__vcpus": 4}, {"host__preset": "small"}])
def test_a_sweep_plot_numeric_or_by_run(tmp_path, swept):
    need_matplotlib()
    runs = [outcome(tmp_path / "a"), outcome(tmp_path / "b", **swept)]
    path = plots.sweep_plot(runs, str(tmp_path / "sweep.png"))
    with open(path, "rb") as f:
        assert f.read(8) == PNG


def test_plot_writes_each_runs_plots_and_report_and_a_sweep_in_a_new_folder(tmp_path, capsys):
    need_matplotlib()
    import json
    dirs = []
    for n in (1, 2):
        d = tmp_path / f"run{n}"
        d.mkdir()
        data = outcome(d, vm__vcpus=n)
        data["runs"] = []                 # a run that finished no policy: no plots, a page
        (d / "results.json").write_text(json.dumps(data))
        dirs.append(str(d))
    assert plots.main([*dirs, "--out", str(tmp_path / "sweep")]) == 0
    assert os.path.exists(tmp_path / "run1" / "report.html")
    assert os.path.exists(tmp_path / "sweep" / "sweep.png")
    assert plots.main([*dirs, "--out", str(tmp_path / "run1")]) == 2       # never into a full one
    assert "exists and is not empty" in capsys.readouterr().err
    assert plots.main([str(tmp_path / "nowhere")]) == 2
    assert "results.json" in capsys.readouterr().err


def test_without_matplotlib_plot_and_launch_say_how_to_install_it(tmp_path, monkeypatch, capsys):
    from support import launcher_module
    monkeypatch.setitem(sys.modules, "matplotlib", None)       # import matplotlib fails
    assert plots.main([str(tmp_path)]) == 2
    out = tmp_path / "run"
    assert launcher_module().main(["--plot", "--out", str(out)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all("pip install" in line and "[plot]" in line for line in err), err
    assert err[1].startswith("launch: --plot:")
    assert not out.exists()                                  # refused before anything ran


def test_plots_are_deterministic(tmp_path):
    need_matplotlib()
    data = outcome(tmp_path)
    first = [Path(p).read_bytes() for p in plots.plot_run(copy.deepcopy(data), str(tmp_path))]
    again = [Path(p).read_bytes() for p in plots.plot_run(data, str(tmp_path))]
    assert first == again
