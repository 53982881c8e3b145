"""The documents: flags and scenario keys documented once, from the code; example commands that
run; nothing named outside the repository; links that resolve."""
import contextlib
import glob
import os
import re
import shlex

import pytest

from common import child, config, sweep
from support import ROOT, launcher_module, read, script_module

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]
README = os.path.join(ROOT, "README.md")
ALL_DOCS = [README, *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]
# research notes: they cite sources outside the repository and plan flags not built yet
NOTES = {"generations.md", "mediated.md"}
DOCS = [p for p in ALL_DOCS if os.path.basename(p) not in NOTES]     # what the product does


def test_docs_flags_md_is_what_the_code_generates():
    flags_doc = script_module("flags_doc")
    assert read(flags_doc.OUT) == flags_doc.render(launcher_module()), \
        "docs/flags.md is out of date: run .venv/bin/python scripts/flags_doc.py"


def test_each_flag_sets_its_own_key_and_each_key_is_documented():
    keys = script_module("flags_doc").flag_keys(launcher_module())
    assert len(set(keys.values())) == len(keys), keys          # no two flags for one key
    text = read(os.path.join(ROOT, "docs", "flags.md"))
    for section, values in config.DEFAULTS.items():
        assert f"## `[{section}]`" in text
        for key in values:
            assert f"| `{key}` |" in text, f"{section}.{key}"


def test_every_flag_the_docs_name_exists():
    """A flag named in README.md or docs/ is one of the launcher's, the processes' or the
    sweep's own."""
    real = {s for a in launcher_module().build_parser()._actions for s in a.option_strings}
    for role in ("host", "kvm", "guest"):
        real |= {s for a in child.arg_parser(role)._actions for s in a.option_strings}
    real |= {s for a in sweep.build_parser()._actions for s in a.option_strings}
    real |= {"--durations", "--nthreads"}     # pytest's (testing.md), a dask worker's (sweeps.md)
    for path in DOCS:
        named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", read(path)))
        assert named <= real, (os.path.relpath(path, ROOT), sorted(named - real))


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "scenarios", "*.toml"))))
def test_the_shipped_scenarios_are_valid(path):
    cfg = config.merge(config.DEFAULTS, config.load_scenario(path), path)
    config.validate(cfg, path)


def example_commands(path):
    """The arguments of each ``./scripts/launch`` line in a document's code blocks
    (continuations joined, comments cut)."""
    blocks = read(path).split("```")[1::2]
    for line in "\n".join(blocks).replace("\\\n", " ").splitlines():
        if "./scripts/launch" in line:
            yield shlex.split(line.split("./scripts/launch", 1)[1], comments=True)


@pytest.mark.parametrize("path", DOCS, ids=lambda p: os.path.relpath(p, ROOT))
def test_example_commands_are_valid_configurations(path):
    """Every launch command a document shows parses, and its configuration validates (one that
    names a file of the reader's own, not in the repository, e.g. spin.py, is only parsed)."""
    launcher = launcher_module()
    with contextlib.chdir(ROOT):
        for argv in example_commands(path):
            args = launcher.build_parser().parse_args(argv)
            files = [f for a in argv for f in a.split(",") if f.endswith((".py", ".toml"))]
            if all(os.path.exists(f) for f in files):
                launcher.resolve_config(args)


def test_the_readme_names_nothing_outside_the_repository():
    text = read(README)
    for outside in ("http://", "https://", "../", "/work/", "shared/", "~/"):
        assert outside not in text, outside


@pytest.mark.parametrize("path", ALL_DOCS, ids=lambda p: os.path.relpath(p, ROOT))
def test_links_resolve(path):
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", read(path)):
        if "://" not in target:
            assert os.path.exists(os.path.join(os.path.dirname(path), target)), target
