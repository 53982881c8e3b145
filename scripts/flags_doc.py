"""Write docs/flags.md from the code: every launcher flag, the scenario key it sets, its default.

The key a flag sets is not written down here: it is found by resolving the configuration with the
flag (at an example value) and without it, so the document follows the launcher's own code.
Defaults come from common/config.py, accepted values from the constants its validation uses, the
meanings from the parsers' help. tests/test_docs.py fails when docs/flags.md differs.

Usage: .venv/bin/python scripts/flags_doc.py       (rewrites docs/flags.md)
"""
from __future__ import annotations

import contextlib
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT = os.path.join(ROOT, "docs", "flags.md")

# A valid value of each flag that takes one, only to find the key it sets.
EXAMPLES = {
    "--policy": "oncpu", "--pmis": "7", "--vcpus": "2", "--timeslice-ms": "3",
    "--period": "12345", "--event": "cycles", "--workload": "memory", "--seed": "9",
    "--guest-program": "guest/programs/exact_count.py", "--guest-context-switch-ms": "2",
    "--guest-watchdog": "on", "--host-preset": "small", "--watchdog": "on",
    "--cost": "invlpg=61", "--max-exits": "99", "--max-modeled-ms": "99", "--migrate": "window",
    "--event-binding": "cpu", "--pin": "spread", "--real-affinity": "off", "--host-pinned": "1",
    "--out": "runs/mine", "--transport": "tcp", "--timeout": "9", "--external": "host",
    "--lost-after": "3", "--host-addr": "127.0.0.2", "--kvm-addr": "127.0.0.3",
    "--bind": "127.0.0.4", "--host-kernel": "6.12", "--x2apic": "physical",
    "--stuck-after": "7", "--host-load": "50", "--perf-max-sample-rate": "5000",
}
NOT_A_KEY = {"--scenario": "the scenario file itself"}

# Keys only a scenario file sets (no flag): what they hold.
SCENARIO_ONLY = {
    "host.busy_pcpus": "pCPUs whose every GP counter is held by host pinned events (`to-busy` "
                       "migrations pick the last pCPU when this is empty)",
    "vm.migrations": "scheduled moves, each `{vcpu = N, exit = N, to = PCPU}`: at that vCPU's "
                     "Nth exit, move it to pCPU `to`",
    "guest.sessions": "perf sessions instead of the one `perf record -e EVENT -c PERIOD`: each "
                      "`{mode = \"record\", event = E, period = N}` or `freq = HZ`, or "
                      "`{mode = \"stat\", event = E}`",
}


def accepted(key: str, meaning: str) -> str:
    """What a key accepts, from the constants common/config.py validates against (unless the
    meaning already names each)."""
    from common import config, costs, msr
    from common.topology import PRESETS
    values = {
        "run.policies": [*config.POLICIES, "a policy file path ending in .py"],
        "run.transport": config.TRANSPORTS,
        "host.preset": [PRESETS[p].describe() for p in PRESETS],
        "vm.pin": ["a list of pCPUs", *config.PIN_RULES],
        "vm.migrate": ["none", "every:N", "random:RATE", "window", "to-busy:K"],
        "guest.event": list(msr.ARCH_EVENTS.values()),
        "guest.workload": config.WORKLOADS,
        "launch.external": ["host", "kvm", "guest"],
        "costs.NAME": [f"{len(costs.resolve())} parameters; `--explain-costs` lists them"],
    }.get(key)
    if not values or all(v in meaning for v in values):
        return ""
    return ". Accepts: " + "; ".join(f"`{v}`" if " " not in v else v for v in values)


def toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml(v)}" for k, v in value.items()) + "}"
    return str(value)


def row(*cells: str) -> str:
    """A table row; a ``|`` inside a cell (``on|off``) is escaped."""
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def usage(action) -> str:
    flag = "`" + ", ".join(action.option_strings)
    if action.nargs == 0:
        return flag + "`"
    if action.choices:
        arg = "|".join(action.choices)
    elif action.metavar:
        arg = action.metavar
    elif action.type in (int, float):
        arg = "N" if action.type is int else "S"
    else:
        arg = action.dest.upper()
    return f"{flag} {arg}`"


def flag_keys(launcher) -> dict[str, str]:
    """Each launcher flag's scenario key ("section.key"), found by resolving with and without it."""
    parser = launcher.build_parser()
    with contextlib.chdir(ROOT):            # example paths are relative to the repository
        base, base_derived = launcher.resolve_config(parser.parse_args([]))
        keys = {}
        for action in parser._actions:
            flag = action.option_strings[-1] if action.option_strings else None
            if flag in (None, "--help") or flag in NOT_A_KEY:
                continue
            if flag not in EXAMPLES and action.nargs != 0:
                raise KeyError(f"{flag}: add an example value to EXAMPLES in {__file__}")
            argv = [flag] if action.nargs == 0 else [flag, EXAMPLES[flag]]
            cfg, derived = launcher.resolve_config(parser.parse_args(argv))
            changed = [f"{s}.{k}" for s in cfg for k in set(cfg[s]) | set(base[s])
                       if cfg[s].get(k) != base[s].get(k)
                       and not (s == "run" and k in derived.keys() | base_derived.keys()
                                and k != action.dest)]
            # (budgets derived from the work follow the flags that set the work)
            if flag == "--cost":
                changed = ["costs.NAME"]
            if flag == "--explain-costs":        # it also shortens the run (see its help)
                changed = [c for c in changed if c != "run.pmis"]
            if len(changed) != 1:
                raise ValueError(f"{flag} {EXAMPLES.get(flag, '')} changed {changed}, "
                                 "not one key")
            keys[flag] = changed[0]
    return keys


def render(launcher) -> str:
    from common import child, config
    parser = launcher.build_parser()
    actions = {a.option_strings[-1]: a for a in parser._actions if a.option_strings}
    keys = flag_keys(launcher)
    by_key = {key: flag for flag, key in keys.items()}
    defaults = config.validate(config.merge(config.DEFAULTS, {}, "defaults"), "defaults")
    lines = [
        "# Flags and scenario keys",
        "",
        "<!-- Generated by scripts/flags_doc.py from the launcher's parser and common/config.py;",
        "     do not edit: tests/test_docs.py fails when this differs from the code. -->",
        "",
        "A scenario file (`--scenario FILE.toml`) is a TOML file whose tables are the sections",
        "below; a key left out keeps its default, and a flag overrides the file. An unknown table",
        "or key, or a value of the wrong type or range, is refused before any process starts,",
        "with the file, the key and the reason. `scenarios/seed.toml` is the seed scenario (the",
        "defaults); `scenarios/multi.toml` uses perf sessions on two vCPUs.",
        "",
    ]
    for section, values in defaults.items():
        lines += [f"## `[{section}]`", "", "| key | flag | default | meaning |",
                  "| --- | --- | --- | --- |"]
        names = ["NAME"] if section == "costs" else list(values)
        for name in names:
            key = f"{section}.{name}"
            flag = by_key.get(key)
            meaning = actions[flag].help if flag else SCENARIO_ONLY[key]
            meaning += accepted(key, meaning)
            default = "(the parameter's, in common/costs.py)" if section == "costs" else \
                f"`{toml(values[name])}`"
            lines.append(row(f"`{name}`", usage(actions[flag]) if flag else "(file only)",
                             default, meaning))
        lines.append("")
    lines += ["## Flags that set no key", "", "| flag | meaning |", "| --- | --- |"]
    for flag, what in NOT_A_KEY.items():
        lines.append(row(usage(actions[flag]), f"{actions[flag].help} ({what})"))
    lines += ["", "## The processes' own flags", "",
              "`vpmu-host`, `vpmu-kvm` and `vpmu-guest` (in `.venv/bin/`, or `python -m host|kvm|"
              "guest`) take these; the launcher passes them, or prints them for `--external`.",
              "", "| flag | needed by | default | meaning |", "| --- | --- | --- | --- |"]
    roles = ("host", "kvm", "guest")
    parsers = {role: child.arg_parser(role) for role in roles}
    for action in parsers["host"]._actions:
        if not action.option_strings or action.dest == "help":
            continue
        same = [next(a for a in parsers[r]._actions if a.dest == action.dest) for r in roles]
        needed = [r for r, a in zip(roles, same) if a.required]
        default = ("" if action.default in (None, False) else "its role" if action.default in
                   roles else f"`{toml(action.default)}`")
        lines.append(row(usage(action), ", ".join(needed) or "-", default, action.help or ""))
    return "\n".join(lines) + "\n"


def main() -> int:
    sys.path.insert(0, ROOT)
    from common import launcher
    text = render(launcher)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        f.write(text)
    print(f"wrote {os.path.relpath(OUT, ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
