"""Host presets: the emulated host's CPU topology and PMU shape."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Topology:
    name: str
    sockets: int
    cores: int                 # per socket
    threads: int               # per core
    ghz: float                 # nominal core clock; converts guest cycles to modeled ns
    gp_counters: int = 4       # general-purpose counters per hardware thread (HT on)
    fixed_counters: int = 3

    @property
    def ncpus(self) -> int:
        return self.sockets * self.cores * self.threads

    def socket_of(self, cpu: int) -> int:
        """Linux's usual enumeration: first threads of every core of every socket, then siblings."""
        if not 0 <= cpu < self.ncpus:
            raise ValueError(f"pCPU {cpu} does not exist on {self.name} ({self.ncpus} pCPUs)")
        return (cpu % (self.sockets * self.cores)) // self.cores

    def describe(self) -> str:
        return (f"{self.name}: {self.sockets} sockets x {self.cores} cores x {self.threads} threads"
                f" = {self.ncpus} pCPUs, {self.ghz} GHz, {self.gp_counters} GP + "
                f"{self.fixed_counters} fixed counters per pCPU")


PRESETS = {
    # The seed's host: 4-socket Skylake-SP (Xeon Platinum 8180: 28 cores, 2.5 GHz base).
    "skx-4s": Topology("skx-4s", 4, 28, 2, 2.5),
    # 2-socket Broadwell-EP (Xeon E5-2699 v4: 22 cores, 2.2 GHz).
    "bdx-2s": Topology("bdx-2s", 2, 22, 2, 2.2),
    # 2-socket Cascade Lake-AP (Xeon Platinum 9282: 56 cores, 2.6 GHz).
    "clx-2s": Topology("clx-2s", 2, 56, 2, 2.6),
    # A small box for quick runs.
    "small": Topology("small", 1, 4, 2, 3.0),
}


def preset(name: str) -> Topology:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown host preset {name!r}; known: {', '.join(PRESETS)}") from None
