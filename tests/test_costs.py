"""Properties of the cost ledger: a modeled total is linear in the cost parameters.

Every modeled figure is a ledger's total, so what holds here holds for every figure of a run: the
share of a parameter in a figure is exactly what raising it moves the figure by. Random ledgers and
parameter vectors from a seeded generator; only ``charge`` and ``total`` are used.
"""
import numpy as np
import pytest

from common import costs
from common.costs import Ledger

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]
NAMES = sorted(costs.resolve())          # every cost parameter
TRIALS = 100


def random_charges(rng) -> list[tuple[str, int]]:
    """What some code path charged: parameters (some more than once) and how many times."""
    return [(str(rng.choice(NAMES)), int(rng.integers(1, 10**6)))
            for _ in range(rng.integers(1, 2 * len(NAMES)))]


def ledger_of(*charges) -> Ledger:
    ledger = Ledger()
    for part in charges:
        for name, times in part:
            ledger.charge(name, times)
    return ledger


def random_ledger(rng) -> Ledger:
    return ledger_of(random_charges(rng))


def only(params: dict[str, int], name: str) -> dict[str, int]:
    """The parameter vector with every parameter but ``name`` at zero."""
    return {n: params[n] if n == name else 0 for n in NAMES}


def random_params(rng) -> dict[str, int]:
    return {name: int(rng.integers(0, 10**7)) for name in NAMES}


def test_total_is_additive_in_the_parameters_and_in_the_ledger():
    rng = np.random.default_rng(14)
    for _ in range(TRIALS):
        ledger, a, b = random_ledger(rng), random_params(rng), random_params(rng)
        both = {n: a[n] + b[n] for n in NAMES}
        assert ledger.total(both) == ledger.total(a) + ledger.total(b)
        x, y = random_charges(rng), random_charges(rng)
        assert ledger_of(x, y).total(a) == ledger_of(x).total(a) + ledger_of(y).total(a)


def test_total_scales_with_the_parameters():
    rng = np.random.default_rng(15)
    for _ in range(TRIALS):
        ledger, params, k = random_ledger(rng), random_params(rng), int(rng.integers(0, 1000))
        assert ledger.total({n: k * v for n, v in params.items()}) == k * ledger.total(params)
        assert ledger.total({n: 0 for n in NAMES}) == 0


def test_raising_one_parameter_by_10_percent_moves_the_total_by_10_percent_of_its_share():
    rng = np.random.default_rng(16)
    for _ in range(TRIALS):
        ledger = random_ledger(rng)
        params = {n: 10 * v for n, v in random_params(rng).items()}  # 10 % of each is whole
        name = str(rng.choice(NAMES))
        share = ledger.total(only(params, name))       # what the parameter put in the total
        raised = dict(params, **{name: params[name] * 11 // 10})
        assert ledger.total(raised) - ledger.total(params) == share // 10
        assert ledger.total(params) == sum(ledger.total(only(params, n)) for n in NAMES)


def test_charging_an_unknown_parameter_is_refused():
    with pytest.raises(KeyError):
        Ledger().charge("free_lunch")
