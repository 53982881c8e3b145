"""Timing summaries: the one-time sample apart from the steady ones, max beside percentiles."""
import numpy as np
import pytest

from common import stats
from common.stats import Samples, summary

pytestmark = pytest.mark.unit


def samples(values, once_at=None, seed=0):
    s = Samples(seed)
    for i, v in enumerate(values):
        s.add(v, once=i == once_at)
    return s.to_record()


def test_the_first_sample_is_apart_unless_a_later_one_holds_the_one_time_cost():
    plain = summary([samples([50, 10, 20, 30])])
    assert plain["first"] == 50 and plain["steady"]["mean"] == 20 and plain["max"] == 50
    marked = summary([samples([10, 20, 9000, 30], once_at=2)])
    assert marked["first"] == 9000 and marked["steady"] == {"mean": 20, "p50": 20,
                                                           "p99": np.percentile([10, 20, 30], 99),
                                                           "max": 30}
    assert marked["mean"] == (10 + 20 + 9000 + 30) / 4 and marked["max"] == 9000


def test_overall_figures_are_those_of_every_sample_whatever_is_marked():
    values = list(np.random.default_rng(7).integers(1, 10**6, 5000))
    for once_at in (None, 0, 17):
        s = summary([samples(values, once_at)])
        assert s["p50"] == np.percentile(values, 50) and s["p99"] == np.percentile(values, 99)
        assert s["mean"] == sum(values) / len(values) and s["min"] == min(values)


def test_several_vcpus_the_largest_one_time_cost_and_the_others_steady():
    s = summary([samples([7000, 1, 3]), samples([5, 2]), samples([])])
    assert s["first"] == 7000 and s["steady"]["mean"] == 2 and s["steady"]["max"] == 3


def test_a_long_run_stays_small_and_repeats(monkeypatch):
    monkeypatch.setattr(stats, "RESERVOIR", 100)
    a, b = samples(range(1000), seed=3), samples(range(1000), seed=3)
    assert a == b and len(a.reservoir) == 101 and a.steady_max == 999


def test_no_samples_is_zeros():
    s = summary([samples([])])
    assert s["mean"] == s["first"] == s["steady"]["max"] == 0
