"""Fixtures and hooks only; what tests share otherwise is in support.py.

Every test belongs to exactly one tier (see TIERS); one without is failed, whatever ``-m`` selects,
so that no new test can slip out of the tiers.
"""
from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from common.topology import preset
from host.perf import HostPerf
from kvm import policies
from kvm.pmu import KvmPmu
from support import LocalPerf, launch, stop_started

TIERS = ("unit", "component", "system")
_untiered = pytest.StashKey[list]()          # the tiers found on a test that is not in exactly one


def pytest_configure(config):
    """Warnings are errors (pyproject.toml), in the processes the system tests start too."""
    os.environ.setdefault("PYTHONWARNINGS", "error")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """Runs before ``-m`` deselects: a test without exactly one tier gets every tier marker, so
    that whichever tier is selected it is kept, and fails in setup."""
    for item in items:
        tiers = {m.name for m in item.iter_markers() if m.name in TIERS}
        if len(tiers) != 1:
            item.stash[_untiered] = sorted(tiers)
            for tier in TIERS:
                item.add_marker(tier)


def pytest_runtest_setup(item):
    if _untiered in item.stash:
        found = item.stash[_untiered]
        pytest.fail(f"{item.nodeid} has {'tiers ' + ', '.join(found) if found else 'no tier'}: "
                    f"mark it with exactly one of {', '.join(TIERS)} (see pyproject.toml)",
                    pytrace=False)


@pytest.fixture(autouse=True)
def _stop_launchers_left_running():
    """A system test that fails half-way leaves no launcher (or its processes) behind."""
    yield
    stop_started()


@pytest.fixture
def make_pmu():
    """A KVM PMU under ``policy`` over an in-process host: (pmu, its LocalPerf, the host)."""
    def make(policy="always", preset_name="small", watchdog=False):
        host = HostPerf(preset(preset_name), watchdog)
        perf = LocalPerf(host)
        pmu = KvmPmu(perf, policies.load(policy))
        pmu.cpu = 0
        perf.pmu = pmu
        return pmu, perf, host
    return make


@pytest.fixture
def sock_dir():
    """A private folder for ipc sockets, short enough for their path limit; removed after."""
    path = tempfile.mkdtemp(prefix="vpmu-test-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def seed_run(tmp_path_factory):
    """The seed scenario, as ./scripts/launch runs it, once per test session."""
    return launch(tmp_path_factory.mktemp("seed"))
