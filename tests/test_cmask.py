"""EDGE/INV/CMASK in closed form against a cycle-by-cycle count."""
import random
from fractions import Fraction

import pytest

from common import cmask
from common.cmask import Filter

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]


def brute(f, c, n, x, y, prev):
    inc, last = 0, prev
    for j in range(x, y):
        occ = (j + 1) * n // c - j * n // c
        cond = (occ >= f.cmask) != f.inv
        inc += (cond and not last) if f.edge else cond
        last = cond
    return inc, last


def test_closed_form_matches_cycle_by_cycle():
    rng = random.Random(5)
    for _ in range(3000):
        c = rng.randint(1, 60)
        n = rng.randint(0, 4 * c)
        f = Filter(rng.randint(1, 5), rng.random() < 0.5, rng.random() < 0.5)
        x = rng.randint(0, c)
        y = rng.randint(x, c)
        prev = rng.random() < 0.5
        want = brute(f, c, n, x, y, prev if x == 0 else brute(f, c, n, 0, x, prev)[1])
        got = cmask.count(f, c, n, Fraction(x), Fraction(y), prev if x == 0 else
                            brute(f, c, n, 0, x, prev)[1])
        assert got == want if y > x else got[0] == 0, (f, c, n, x, y, prev)


def test_stretches_add_up_and_reach_finds_the_first_boundary():
    f = Filter(3, False, True)
    c, n = 1000, 2600
    total, state = cmask.count(f, c, n, Fraction(0), Fraction(c), False)
    a, s = cmask.count(f, c, n, Fraction(0), Fraction(377, 3), False)
    b, s = cmask.count(f, c, n, Fraction(377, 3), Fraction(c), s)
    assert a + b == total and s == state
    y = cmask.reach(f, c, n, Fraction(0), False, 50)
    assert cmask.count(f, c, n, Fraction(0), Fraction(y), False)[0] == 50
    assert cmask.count(f, c, n, Fraction(0), Fraction(y - 1), False)[0] < 50


def test_cmask_zero_counts_every_event():
    assert cmask.of(0x4300C0 | (1 << 23)) is None
    assert cmask.of(0x4300C0 | (2 << 24)) == Filter(2, False, False)
