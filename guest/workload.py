"""Seeded guest workloads: how many events of each kind a slice of guest execution retires."""
from __future__ import annotations

from fractions import Fraction

import numpy as np

# Per profile: instructions per cycle, and per-instruction rates of the other events.
PROFILES = {
    "compute": {"ipc": 2.0, "branches": 0.12, "branch_misses": 0.002, "llc_refs": 0.002,
                "llc_misses": 0.0002},
    "branchy": {"ipc": 1.2, "branches": 0.25, "branch_misses": 0.02, "llc_refs": 0.004,
                "llc_misses": 0.0005},
    "memory": {"ipc": 0.6, "branches": 0.10, "branch_misses": 0.003, "llc_refs": 0.03,
               "llc_misses": 0.01},
}
SLICE_INSTRUCTIONS = 1_000_000


def streams(seed: int, n: int) -> list[np.random.Generator]:
    """One independent generator per vCPU: the same seed gives the same streams whatever the
    order in which threads draw."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(n)]


class Workload:
    def __init__(self, profile: str, rng: np.random.Generator, ghz: float, ref_ghz: float = 2.0):
        self.p = PROFILES[profile]
        self.rng = rng
        self.ghz = ghz
        # exact rationals of the decimal figures, so that carried fractions stay exact
        self.cpi = 1 / Fraction(str(self.p["ipc"]))
        self.ref_ratio = Fraction(str(ref_ghz)) / Fraction(str(ghz))
        self.cycles_carry = Fraction(0)      # the part of a cycle retired but not yet counted
        self.ref_carry = Fraction(0)

    def derive(self, instructions: int, **given) -> dict[str, int]:
        """Complete a set of events from the instructions it retires (cycles at the profile's
        IPC, reference cycles at the TSC's rate); events given explicitly are kept. The
        fractions of a cycle left over are carried to the next call, so the same work split
        into many calls makes as many cycles as one call: ``retire(instructions=1)`` in a loop
        advances the guest's clock instead of retiring instructions in no time."""
        cycles = given.get("cycles")
        if cycles is None:
            exact = instructions * self.cpi + self.cycles_carry
            cycles = int(exact)
            self.cycles_carry = exact - cycles
        ref = given.get("ref_cycles")
        if ref is None:
            exact = cycles * self.ref_ratio + self.ref_carry
            ref = int(exact)
            self.ref_carry = exact - ref
        out = {"instructions": instructions, "cycles": cycles, "ref_cycles": ref}
        for kind in ("branches", "branch_misses", "llc_refs", "llc_misses"):
            out[kind] = given.get(kind) or 0
        return out

    def next_slice(self) -> dict[str, int]:
        """One slice: ~1 M instructions with binomially drawn branches, misses and LLC traffic."""
        n = int(self.rng.integers(SLICE_INSTRUCTIONS // 2, SLICE_INSTRUCTIONS * 3 // 2))
        ipc = self.p["ipc"] * float(self.rng.uniform(0.9, 1.1))
        branches = int(self.rng.binomial(n, self.p["branches"]))
        llc_refs = int(self.rng.binomial(n, self.p["llc_refs"]))
        return self.derive(
            n, cycles=int(n / ipc),
            branches=branches,
            branch_misses=int(self.rng.binomial(branches, self.p["branch_misses"] / self.p["branches"])),
            llc_refs=llc_refs,
            llc_misses=int(self.rng.binomial(llc_refs, self.p["llc_misses"] / self.p["llc_refs"])))
