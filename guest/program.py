"""Guest programs: loading a ``main(cpu)`` from a file, checking it before a run, and telling
its failures in the program's own terms (its file, line and code, not the emulator's frames).

The launcher calls ``check_program`` while it resolves the configuration, so a program that
cannot run is refused with one line before any process starts; the guest process loads the
same way and runs ``main`` on each vCPU.
"""
from __future__ import annotations

import inspect
import os
import traceback
import types

from common import config

# Frames in these folders are the emulator's (guest/programs/ is the user's side).
EMULATOR_DIRS = {os.path.dirname(os.path.abspath(config.__file__)),
                 os.path.dirname(os.path.abspath(__file__))}


class ProgramError(config.ConfigError):
    """A guest program that cannot run: ``FILE: line N: reason`` on one line."""


def load_program(path: str):
    """The program's module, its top-level code run; ProgramError when it does not compile,
    fails while loading, or has no ``main`` that takes the ``cpu``."""
    try:
        with open(path, "rb") as f:
            source = f.read()
    except OSError as exc:
        raise ProgramError(path, "-", f"cannot read: {exc.strerror}") from None
    module = types.ModuleType("vpmu_guest_program")
    module.__file__ = path
    try:                                          # compiled here: no __pycache__ beside it
        exec(compile(source, path, "exec"), module.__dict__)
    except SyntaxError as exc:
        raise ProgramError(path, f"line {exc.lineno}",
                           f"{type(exc).__name__}: {exc.msg}") from None
    except Exception as exc:                     # noqa: BLE001 - the program's own failure
        frames = own_frames(exc)
        line = f"line {frames[-1].lineno}" if frames else "-"
        raise ProgramError(path, line, f"{describe(exc)} (while loading)") from None
    main = getattr(module, "main", None)
    if main is None:
        raise ProgramError(path, "main", "not defined; a guest program defines def main(cpu):")
    if not callable(main):
        raise ProgramError(path, "main", f"is a {type(main).__name__}, not a function main(cpu)")
    try:
        inspect.signature(main).bind(object())
    except TypeError:
        where = getattr(getattr(main, "__code__", None), "co_firstlineno", None)
        raise ProgramError(path, f"line {where}" if where else "main",
                           f"main{inspect.signature(main)} cannot be called as main(cpu)") \
            from None
    except ValueError:                           # no signature to inspect (a builtin): try it
        pass
    return module


def check_program(path: str) -> None:
    """Refuse a program that cannot run (ProgramError, one line), before anything starts."""
    load_program(path)


def run(path: str, cpu) -> None:
    """Load the program and run its ``main`` on ``cpu``."""
    load_program(path).main(cpu)


def own_frames(exc: BaseException) -> list[traceback.FrameSummary]:
    """The traceback frames of ``exc`` below the emulator's call into the program, without
    the emulator's own (those of ``cpu``'s methods): the program's calls."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [os.path.dirname(os.path.abspath(f.filename)) in EMULATOR_DIRS for f in frames]
    start = ours.index(True) + 1 if True in ours else 0
    return [f for f, emulator in zip(frames[start:], ours[start:]) if not emulator]


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def failure(exc: BaseException) -> dict:
    """An exception ``main`` raised, for the guest log and results.json: the error and the
    program's frames, innermost last, each ``FILE:LINE in FUNCTION: CODE``."""
    return {"error": describe(exc),
            "traceback": [f"{f.filename}:{f.lineno} in {f.name}: {f.line}"
                          for f in own_frames(exc)]}
