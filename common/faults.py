"""Test-only fault switches: ``VPMU_FAULTS=name[,name…]`` in a process's environment makes it
misbehave on purpose, so that error paths and the invariant checker are proven, not hoped for.
Nothing outside tests sets it."""
from __future__ import annotations

import os

KNOWN = {
    "kvm_drop_pmi": "KVM never injects a PMI (missing_pmi)",
    "kvm_late_pmi": "KVM injects each PMI one entry late (late_pmi)",
    "kvm_spurious_pmi": "KVM injects an NMI every 40 exits with no overflow (spurious_pmi)",
    "kvm_count_skew": "KVM adds 1 to every counter read (count_mismatch)",
    "kvm_status_skew": "KVM sets bit 1 in every GLOBAL_STATUS read (status_mismatch)",
    "host_stop_heartbeat": "the host process sends no heartbeat (stuck)",
    "kvm_stop_heartbeat": "the KVM process sends no heartbeat (stuck)",
    "guest_stop_heartbeat": "the guest process sends no heartbeat (stuck)",
    "kvm_stall": "the KVM process's vCPU thread stops at its first exit; heartbeats go on "
                 "(stuck)",
    "guest_stall": "the guest process's vCPU thread stops at its first exit; heartbeats go on "
                   "(stuck)",
    "ignore_shutdown": "a process hangs at SHUTDOWN and ignores SIGTERM (the launcher must "
                       "SIGKILL)",
}
_ACTIVE = frozenset(f for f in os.environ.get("VPMU_FAULTS", "").split(",") if f)
_UNKNOWN = _ACTIVE - set(KNOWN)
if _UNKNOWN:
    raise SystemExit(f"VPMU_FAULTS names unknown faults: {', '.join(sorted(_UNKNOWN))}")


def active(name: str) -> bool:
    assert name in KNOWN, name
    return name in _ACTIVE
