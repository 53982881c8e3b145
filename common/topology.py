"""Host presets: the emulated host's CPU topology, its PMU shape, and what each is modelled on.

A preset states the machine it stands for and the topology that decides what a cross-CPU
operation costs: sockets, dies per package (each die a NUMA node), cores and SMT threads, UPI
hops between dies, the x2APIC IDs (and so the x2APIC clusters), whether the kernel runs with
page-table isolation, and the measured core-to-core latencies of that platform with their
sources (docs/costs.md).
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Measured:
    """A latency in ns with its range and where each value comes from."""
    low: float
    mid: float
    high: float
    source: str


# Core-to-core latency medians, compare-exchange ping-pong: github.com/nviennot/core-to-core-latency
# README at commit 0dddf50 ("C2C"); Broadwell-EP MLC L2->L2 modified intervention 40.3-42.3 ns:
# J. McCalpin, Intel forum "Core-to-Core Communication Latency in Skylake/Kaby Lake" ("MLC").
C2C = "nviennot/core-to-core-latency README@0dddf50"
_SMT = Measured(6.9, 7.6, 8.1, f"{C2C}: SMT siblings i7-6700K 6.9, Xeon 8275CL/E5-2695v4 7.6, "
                "Xeon 8375C 8.1 ns")
_MESH_DIE = Measured(40.3, 48, 60, f"low: MLC on E5-2660 v4 40.3 ns; mid: {C2C} Xeon Gold 6242 "
                     "48 / 8275CL 47 ns (Cascade Lake, same mesh as Skylake-SP); high: none for a "
                     "28-core die, +25 % for its longer mesh paths (unverified)")
_UPI_MANY_NODES = Measured(118, 135, 180, f"low: {C2C} dual E5-2695 v4 118 ns; mid: {C2C} dual "
                           "Gold 6242 136 / 8275CL 134 ns; high: no figure for more than two "
                           "nodes, +1/3 for snoops of the further nodes (unverified)")
_UPI_TWO_NODES = Measured(118, 135, 150, f"low: {C2C} dual E5-2695 v4 118 ns; mid: {C2C} dual "
                          "Gold 6242 136 / 8275CL 134 ns; high: +10 % pair-to-pair spread "
                          "(unverified)")
# intel_idle exit_latency of C1 and C1E (drivers/idle/intel_idle.c, 4.20 and 6.12): the wait for
# the slowest target of a cross-call includes waking it. Low: targets busy or polling.
_IDLE_C1_C1E = Measured(0, 2000, 10000, "intel_idle skx/bdw/skl_cstates: C1 exit 2 us (mid), C1E "
                        "10 us (high); 0 when the targets poll or run")
_IDLE_ICX = Measured(0, 1000, 4000, "intel_idle icx_cstates (6.12): C1 exit 1 us, C1E 4 us")


@dataclasses.dataclass(frozen=True)
class Topology:
    name: str
    sockets: int
    cores: int                 # per socket
    threads: int               # per core
    ghz: float                 # nominal core clock; converts guest cycles to modeled ns
    gp_counters: int = 4       # general-purpose counters per hardware thread (HT on)
    fixed_counters: int = 3
    model: str = ""            # the machine this preset stands for
    dies: int = 1              # per socket; each die is a NUMA node
    hops: int = 1              # UPI hops between any two dies (all presets: fully connected)
    pti: bool = True           # page-table isolation on (Meltdown-affected parts)
    c2c_smt: Measured = _SMT
    c2c_die: Measured = _MESH_DIE
    c2c_remote: Measured = _UPI_TWO_NODES    # per UPI hop, to another die or socket
    idle_exit: Measured = _IDLE_C1_C1E

    @property
    def ncpus(self) -> int:
        return self.sockets * self.cores * self.threads

    @property
    def nodes(self) -> int:
        return self.sockets * self.dies

    def _check(self, cpu: int) -> None:
        if not 0 <= cpu < self.ncpus:
            raise ValueError(f"pCPU {cpu} does not exist on {self.name} ({self.ncpus} pCPUs)")

    def core_of(self, cpu: int) -> int:
        """Linux's usual enumeration: first threads of every core of every socket, then siblings;
        the core's number across the machine."""
        self._check(cpu)
        return cpu % (self.sockets * self.cores)

    def socket_of(self, cpu: int) -> int:
        return self.core_of(cpu) // self.cores

    def node_of(self, cpu: int) -> int:
        """The NUMA node (= die) of a CPU."""
        return self.core_of(cpu) // (self.cores // self.dies)

    def apic_id(self, cpu: int) -> int:
        """The x2APIC ID: SMT, core, die and package fields, each rounded up to a power of two
        (CPUID leaves 0xB/0x1F). Cores are numbered without gaps; real Skylake-SP dies leave
        gaps in the core field (unverified here), which can only add clusters."""
        per_die = self.cores // self.dies
        smt_bits = (self.threads - 1).bit_length()
        core_bits = (per_die - 1).bit_length()
        die_bits = (self.dies - 1).bit_length()
        core = self.core_of(cpu)
        thread = cpu // (self.sockets * self.cores)
        socket, in_socket = divmod(core, self.cores)
        die, in_die = divmod(in_socket, per_die)
        return (((socket << die_bits | die) << core_bits | in_die) << smt_bits) | thread

    def cluster_of(self, cpu: int) -> int:
        """The x2APIC logical cluster: 16 APIC IDs (x2apic_cluster.c: apic_cluster(id) = id >> 4)."""
        return self.apic_id(cpu) >> 4

    def distance(self, a: int, b: int) -> tuple[str, int]:
        """How a cache line travels between two CPUs: ("self"|"smt"|"die"|"remote", UPI hops)."""
        if a == b:
            return "self", 0
        if self.core_of(a) == self.core_of(b):
            return "smt", 0
        if self.node_of(a) == self.node_of(b):
            return "die", 0
        return "remote", self.hops

    def describe(self) -> str:
        dies = f"{self.dies} dies x " if self.dies > 1 else ""
        return (f"{self.name}: {self.sockets} sockets x {dies}{self.cores // self.dies} cores x "
                f"{self.threads} threads = {self.ncpus} pCPUs, {self.nodes} NUMA nodes, "
                f"{self.ghz} GHz, {self.gp_counters} GP + {self.fixed_counters} fixed counters "
                f"per pCPU, PTI {'on' if self.pti else 'off'} ({self.model})")


PRESETS = {
    # The seed's host. Skylake-SP is Meltdown-affected: PTI on.
    "skx-4s": Topology("skx-4s", 4, 28, 2, 2.5, c2c_remote=_UPI_MANY_NODES,
                       model="Xeon Platinum 8180 (Skylake-SP XCC, 28 cores, 2.5 GHz) x 4, "
                       "three UPI links each: fully connected, one node per socket (SNC off)"),
    "bdx-2s": Topology("bdx-2s", 2, 22, 2, 2.2,
                       c2c_die=Measured(40.3, 44, 48.4, f"low: MLC on E5-2660 v4 40.3 ns; mid: "
                                        f"{C2C} E5-2695 v4 44 ns; high: +10 % (unverified)"),
                       c2c_remote=Measured(106, 118, 130, f"{C2C} dual E5-2695 v4 118 ns; "
                                           "+-10 % (unverified)"),
                       model="Xeon E5-2699 v4 (Broadwell-EP, 22 cores, 2.2 GHz) x 2, two QPI "
                       "links, one node per socket (COD off)"),
    # Cascade Lake reports RDCL_NO (not Meltdown-affected): PTI off (unverified here).
    "clx-2s": Topology("clx-2s", 2, 56, 2, 2.6, dies=2, pti=False, c2c_remote=_UPI_MANY_NODES,
                       model="Xeon Platinum 9282 (Cascade Lake-AP: two 28-core dies per "
                       "package, 2.6 GHz) x 2 = 4 dies, one node per die; dies joined by UPI, "
                       "fully connected (unverified)"),
    # Ice Lake-SP: 8 GP counters per thread; not Meltdown-affected, PTI off.
    "icx-2s": Topology("icx-2s", 2, 32, 2, 2.9, gp_counters=8, pti=False,
                       c2c_smt=Measured(7.3, 8.1, 8.9, f"{C2C} Xeon 8375C 8.1 ns; +-10 % "
                                        "(unverified)"),
                       c2c_die=Measured(46, 51, 56, f"{C2C} Xeon 8375C 51 ns; +-10 % "
                                        "(unverified)"),
                       c2c_remote=Measured(97, 108, 119, f"{C2C} dual Xeon 8375C 108 ns; +-10 %"
                                           " (unverified)"),
                       idle_exit=_IDLE_ICX,
                       model="Xeon Platinum 8375C (Ice Lake-SP, 32 cores, 2.9 GHz) x 2 as in "
                       "AWS c6i.metal, UPI, one node per socket"),
    "small": Topology("small", 1, 4, 2, 3.0,
                      c2c_die=Measured(18, 20, 22, f"{C2C} i7-6700K 20 ns; +-10 % (unverified)"),
                      model="a Skylake client box (4 cores, 2 threads; core-to-core figures of "
                      "the i7-6700K) for quick runs"),
}


def preset(name: str) -> Topology:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown host preset {name!r}; known: {', '.join(PRESETS)}") from None
