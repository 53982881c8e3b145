"""Sweep grids: expansion into points, stable ids, and bad grids refused before anything runs."""
import glob
import os
import tomllib

import pytest

from common import config, sweep
from support import ROOT, SWEEP_GRID, read

pytestmark = pytest.mark.unit

GRID = SWEEP_GRID + '"guest.period" = [10000000, 2000000, 500000]\n'


def grid(tmp_path, text):
    path = tmp_path / "g.toml"
    path.write_text(text)
    return str(path)


def test_a_grid_is_every_combination_with_the_base_under_it(tmp_path):
    points = sweep.expand(grid(tmp_path, GRID))
    assert len(points) == 6 and len({p["id"] for p in points}) == 6
    first = points[0]["scenario"]
    assert first["run"] == {"policies": ["always"], "pmis": 5, "seed": 1}   # seed.toml's seed
    assert first["host"]["preset"] == "small" and first["host"]["kernel"] == "4.20"
    assert [p["values"]["guest.period"] for p in points[:3]] == [10000000, 2000000, 500000]


def test_a_point_id_follows_its_values_not_their_order(tmp_path):
    ids = {p["id"] for p in sweep.expand(grid(tmp_path, GRID))}
    swapped = GRID.replace('"run.policies" = ["always", "oncpu"]\n', "") \
        + '"run.policies" = ["oncpu", "always"]\n'
    assert {p["id"] for p in sweep.expand(grid(tmp_path, swapped))} == ids
    other_base = GRID.replace("pmis = 5", "pmis = 6")
    assert not {p["id"] for p in sweep.expand(grid(tmp_path, other_base))} & ids


@pytest.mark.parametrize("text, says", [
    (GRID + '"vm.vcpu" = [1, 2]\n', "grid.vm.vcpu: unknown key"),
    (GRID + '"launch.bind" = ["127.0.0.2"]\n', "grid.launch.bind: unknown key"),
    (GRID + '"vm.vcpus" = []\n', "grid.vm.vcpus: must be a non-empty list"),
    (GRID + '"host.preset" = ["small", "big-iron"]\n', "unknown preset 'big-iron'"),
    (GRID + "[launch]\nout = 'x'\n", "launch.out: set by the sweep"),
    (GRID.split("[grid]")[0], "needs a [grid] table"),
    (GRID + '"run.pmis" = [1, 1]\n', "repeats a point"),
    ("[grid\n", "not valid TOML"),
    ('scenario = "nowhere.toml"\n[grid]\n"run.seed" = [1]\n', "cannot read"),
])
def test_a_bad_grid_gets_one_line_and_exit_2_before_anything_runs(tmp_path, capsys, text, says):
    out = tmp_path / "out"
    assert sweep.main([grid(tmp_path, text), "--out", str(out)]) == sweep.EXIT_ERROR
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1, err
    assert not out.exists()


def test_an_out_folder_that_is_not_a_sweeps_is_refused(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert sweep.main([grid(tmp_path, GRID), "--out", str(mine)]) == sweep.EXIT_ERROR
    assert "not a sweep folder" in capsys.readouterr().err
    assert os.listdir(mine) == ["notes.txt"]


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "scenarios", "grids",
                                                               "*.toml"))))
def test_the_shipped_grids_are_valid(path):
    points = sweep.expand(path)
    assert points
    for p in points:                     # each point's scenario file reads back as it was
        assert tomllib.loads(config.to_toml(p["scenario"])) == p["scenario"]


def test_without_pyarrow_the_table_is_csv(tmp_path, monkeypatch):
    import builtins
    real = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name.startswith("pyarrow"):
            raise ImportError(name)
        return real(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    table = sweep.uniform([{"point": "a", "vm.pin": "compact", "x": 1},
                           {"point": "b", "vm.pin": [0, 1], "x": 2.5}])
    path = sweep.write_table(table, str(tmp_path))
    assert path.endswith("sweep.csv")
    assert read(path).splitlines() == ["point,vm.pin,x", "a,compact,1", "b,\"[0, 1]\",2.5"]


def test_files_a_grid_names_are_made_absolute_for_the_points(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)                  # relative to the current folder, as for the launcher
    text = GRID.replace('"run.policies" = ["always", "oncpu"]',
                        '"run.policies" = ["always", "tests/policy_counting_skip.py"]')
    policies = [p["scenario"]["run"]["policies"] for p in sweep.expand(grid(tmp_path, text))]
    assert [os.path.join(ROOT, "tests", "policy_counting_skip.py")] in policies
