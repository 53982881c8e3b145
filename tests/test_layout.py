"""The processes share only common/: host/, kvm/ and guest/ never import one another."""
import ast
import pathlib

import pytest

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]
ROOT = pathlib.Path(__file__).resolve().parent.parent
PROCESSES = ("host", "kvm", "guest")


def imported(path: pathlib.Path) -> set[str]:
    """Top-level packages a module imports, at any depth of its code."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom):       # relative: resolve against the package
            names.add(path.relative_to(ROOT).parts[0])
    return names


@pytest.mark.parametrize("package", PROCESSES)
def test_a_process_imports_no_other_process(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files
    bad = {str(f.relative_to(ROOT)): sorted(imported(f) & (set(PROCESSES) - {package}))
           for f in files}
    assert not {f: names for f, names in bad.items() if names}


def test_the_check_sees_an_import_across_processes(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from kvm.pmu import KvmPmu\n    import host.perf as p\n")
    assert {"kvm", "host"} <= imported(module)
