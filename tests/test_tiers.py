"""Every test is in exactly one tier; conftest.py fails one that is not, whatever -m selects."""
import os

import pytest

from support import ROOT, read

pytestmark = pytest.mark.unit
pytest_plugins = ["pytester"]

TESTS = '''
import pytest

@pytest.mark.unit
def test_in_one_tier():
    pass

def test_in_no_tier():
    pass

@pytest.mark.unit
@pytest.mark.system
def test_in_two_tiers():
    pass
'''


@pytest.mark.parametrize("select", [[], ["-m", "unit"], ["-m", "system"]])
def test_a_test_outside_exactly_one_tier_fails(pytester, select):
    pytester.makeconftest(read(os.path.join(ROOT, "tests", "conftest.py")))
    pytester.makepyfile(test_example=TESTS)
    result = pytester.runpytest_inprocess(*select, "-p", "no:cacheprovider")
    result.assert_outcomes(passed=0 if select == ["-m", "system"] else 1, errors=2)
    result.stdout.fnmatch_lines(["*test_in_no_tier has no tier: mark it with exactly one of*",
                                 "*test_in_two_tiers has tiers system, unit*"])
