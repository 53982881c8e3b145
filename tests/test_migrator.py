"""KVM's migration decisions (kvm/migrate.py) alone, in-process."""
import pytest

from common.topology import preset
from kvm.migrate import Migrator

pytestmark = pytest.mark.unit


def test_to_busy_stays_k_time_slices_not_k_exits():
    """The guest's PMI handler alone makes about eight exits: counted in exits, to-busy:3
    would bring the vCPU home before it retired anything on the busy pCPU."""
    slice_ns = 4_000_000
    m = Migrator("to-busy:3", 0, 0, 1, preset("small"), [7], [], slice_ns)
    assert m.decide(0, 10, 1_000_000, overflowed=True) == (7, "to-busy")
    for exits in range(11, 100):                     # the handler, then slices on pCPU 7
        assert m.decide(7, exits, 1_000_000 + (exits - 11) * 100_000, False) is None
    assert m.decide(7, 100, 1_000_000 + 3 * slice_ns, False) == (0, "to-busy-return")
