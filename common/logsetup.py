"""One logging set-up for every process: time, role, pid, vCPU and pCPU on each line."""
from __future__ import annotations

import logging
import os
import sys
import threading

_ctx = threading.local()


def set_context(vcpu: int | None = None, pcpu: int | None = None) -> None:
    """Name the vCPU and pCPU this thread works for; later lines of the thread carry them."""
    _ctx.vcpu = vcpu
    _ctx.pcpu = pcpu


class _ContextFilter(logging.Filter):
    def __init__(self, role: str):
        super().__init__()
        self.role = role

    def filter(self, record: logging.LogRecord) -> bool:
        record.role = self.role
        vcpu, pcpu = getattr(_ctx, "vcpu", None), getattr(_ctx, "pcpu", None)
        record.where = "" if vcpu is None else f" vcpu={vcpu}" + (
            "" if pcpu is None else f" pcpu={pcpu}")
        return True


def setup(role: str, run_dir: str | None, level: str = "INFO") -> logging.Logger:
    """Log to ``RUN_DIR/<role>.log`` (and stderr when there is no run directory)."""
    handler: logging.Handler
    if run_dir:
        handler = logging.FileHandler(os.path.join(run_dir, f"{role}.log"))
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(
        "%(asctime)s.%(msecs)03d %(role)s[%(process)d]%(where)s %(levelname)s %(message)s",
        "%H:%M:%S"))
    handler.addFilter(_ContextFilter(role))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    return logging.getLogger(role)
