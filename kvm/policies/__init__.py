"""Reprogramming policies: when KVM releases, creates, pauses or resumes the host events.

A policy is a class with one job, in one module that defines ``POLICY``; its ``generation`` names
the kernel release whose rules it runs with (kvm/generations.py). Built-in ones live here;
``load_file`` takes one from outside the tree so that a patch can be tried without a fork, on the
release of the policy it subclasses.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import os

from kvm.generations import Generation

log = logging.getLogger("kvm")

BUILTIN = ("always", "oncpu", "reuse", "deferred")


def load(name: str):
    """An instance of the built-in policy ``name``, or of the one defined in a .py file."""
    if name.endswith(".py"):
        return load_file(name)
    if name not in BUILTIN:
        raise ValueError(f"unknown policy {name!r}; built in: {', '.join(BUILTIN)}")
    return importlib.import_module(f"kvm.policies.{name}").POLICY()


def load_file(path: str):
    """An instance of the policy defined by the file at ``path`` (its ``POLICY`` class)."""
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(f"vpmu_policy_{name}", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"{path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "POLICY"):
        raise ValueError(f"{path}: defines no POLICY class")
    if not isinstance(getattr(module.POLICY, "generation", None), Generation):
        raise ValueError(f"{path}: POLICY names no kernel release: subclass a built-in policy "
                         f"(its generation) or set generation = Generation.at(name, release)")
    policy = module.POLICY()
    log.info("policy %s from %s: release %s", policy.name, path, policy.generation.label)
    return policy
