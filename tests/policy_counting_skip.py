"""A policy kept outside the built-in set, loaded with --policy tests/policy_counting_skip.py:
like the RFC, but it also skips counters whose event is inactive. Fast, and wrong when an event
cannot count: the point of loading a policy from a file is to find that out."""
from kvm.policies.oncpu import OnCpu


class SkipAlways(OnCpu):
    name = "skip-always"

    def decide(self, pmu, pmc):
        return True, "skipped_active_here" if pmc.oncpu == pmu.cpu else "skipped_anyway"


POLICY = SkipAlways
