"""How a counter applies EDGE, INV and CMASK to what retires (Intel SDM vol. 3B §18.2).

With CMASK = k > 0 a counter counts cycles in which at least k events of its kind occurred
(fewer than k with INV), and with EDGE only the cycles where that condition starts. Events of one
retire call (a *chunk*: n events of the kind over c cycles) retire evenly interleaved: cycle j
sees floor((j+1)n/c) - floor(jn/c) of them, so a = n // c in every cycle and one more in
b = n % c cycles spread evenly ("extra" cycles). A *stretch* is the part of a chunk between two
positions on its cycle axis; a cycle counts once it has completed. Everything here is closed
form: a chunk may hold 10^9 cycles. Host, guest and oracle all count with this one module.
"""
from __future__ import annotations

import dataclasses
from fractions import Fraction

from common import msr


@dataclasses.dataclass(frozen=True)
class Filter:
    cmask: int
    inv: bool
    edge: bool


def of(eventsel: int) -> Filter | None:
    """The filter of an event select, or None when it counts every event (CMASK 0: EDGE and
    INV then have nothing to act on and are ignored)."""
    cmask = (eventsel & msr.EVTSEL_CMASK) >> 24
    if not cmask:
        return None
    return Filter(cmask, bool(eventsel & msr.EVTSEL_INV), bool(eventsel & msr.EVTSEL_EDGE))


def _extras(c: int, b: int, x: int, y: int) -> int:
    """Extra cycles among cycles [x, y) of a chunk of c cycles with b extras."""
    return (y * b) // c - (x * b) // c


def _is_extra(c: int, b: int, j: int) -> bool:
    return _extras(c, b, j, j + 1) == 1


def _holds(f: Filter, c: int, n: int, j: int) -> bool:
    """Whether cycle j of the chunk meets the condition."""
    a, b = divmod(n, c)
    return ((a + _is_extra(c, b, j)) >= f.cmask) != f.inv


def _count_in(f: Filter, c: int, n: int, x: int, y: int) -> int:
    """Cycles of [x, y) that meet the condition."""
    a, b = divmod(n, c)
    if f.cmask <= a:
        hits = y - x                                  # every cycle
    elif f.cmask == a + 1:
        hits = _extras(c, b, x, y)                    # the extra cycles
    else:
        hits = 0
    return (y - x) - hits if f.inv else hits


def _starts_in(f: Filter, c: int, n: int, x: int, y: int) -> int:
    """Cycles j in (x, y) that meet the condition while cycle j - 1 did not."""
    if y - x <= 1:
        return 0
    a, b = divmod(n, c)
    wants_extra = (f.cmask == a + 1) != f.inv         # the condition is "extra cycle"
    if f.cmask <= a or f.cmask > a + 1 or b == 0:
        return 0                                      # constant over the chunk
    if wants_extra:                                   # starts of runs of extra cycles
        if 2 * b <= c:                                # extras never adjacent
            return _extras(c, b, x + 1, y)
        return (y - 1 - x) - _extras(c, b, x, y - 1)  # each non-extra is followed by an extra
    if 2 * b >= c:                                    # non-extras never adjacent
        return (y - 1 - x) - _extras(c, b, x + 1, y)
    return _extras(c, b, x, y - 1)                    # each extra is followed by a non-extra


def count(f: Filter, c: int, n: int, y0: Fraction, y1: Fraction, prev: bool) -> tuple[int, bool]:
    """Increments of a filtered counter over the stretch (y0, y1] of a chunk, and the condition
    of the last completed cycle; ``prev`` is that condition before the stretch."""
    if c <= 0:
        return 0, prev
    x, y = int(y0), min(int(y1), c)                   # completed cycles: [x, y)
    if y <= x:
        return 0, prev
    before = _holds(f, c, n, x - 1) if x > 0 else prev
    first = _holds(f, c, n, x)
    if f.edge:
        inc = (1 if first and not before else 0) + _starts_in(f, c, n, x, y)
    else:
        inc = _count_in(f, c, n, x, y)
    return inc, _holds(f, c, n, y - 1)


def reach(f: Filter, c: int, n: int, y0: Fraction, prev: bool, left: int) -> int | None:
    """The first cycle boundary y (> y0) by which the counter has counted ``left`` more, or
    None if the chunk ends first."""
    lo, hi = int(y0) + 1, c
    if hi < lo or count(f, c, n, y0, Fraction(hi), prev)[0] < left:
        return None
    while lo < hi:                                    # increments grow with y: bisect
        mid = (lo + hi) // 2
        if count(f, c, n, y0, Fraction(mid), prev)[0] >= left:
            hi = mid
        else:
            lo = mid + 1
    return lo
