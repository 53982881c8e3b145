"""A guest program for scripts/bench: plain exits (RDMSR of GLOBAL_CTRL, no perf call) and
RDPMC of a live counter (one perf read on the host), timed from inside the guest."""
import time

N = 20_000


def main(cpu):
    t0 = time.perf_counter_ns()
    for _ in range(N):
        cpu.rdmsr(0x38F)
    plain = (time.perf_counter_ns() - t0) / N
    cpu.wrmsr(0x186, 0x4300C0 | (1 << 22))
    cpu.wrmsr(0x38F, 1)
    t0 = time.perf_counter_ns()
    for _ in range(N // 4):
        cpu.rdpmc(0)
    read = (time.perf_counter_ns() - t0) / (N // 4)
    cpu.check(True, f"plain exit round trip: {plain / 1000:.1f} us ({1e9 / plain:,.0f} exits/s)")
    cpu.check(True, f"RDPMC with a host perf read: {read / 1000:.1f} us")
