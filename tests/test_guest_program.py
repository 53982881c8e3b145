"""Guest programs checked before a run, and their failures told in their own terms."""
import os

import pytest

from guest import program
from support import ROOT, InstantKvm, make_cpu

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


@pytest.mark.parametrize("source, where, reason", [
    ("def main(cpu):\n    cpu.retire(instructions=1\n", "line 2", "SyntaxError: '(' was never closed"),
    ("X = 1\n", "main", "not defined"),
    ("main = 3\n", "main", "is a int, not a function"),
    ("\n\ndef main(cpu, other):\n    pass\n", "line 3", "main(cpu, other) cannot be called as "
     "main(cpu)"),
    ("\ndef main():\n    pass\n", "line 2", "main() cannot be called"),
    ("import os\nPERIOD = 1 // 0\ndef main(cpu):\n    pass\n", "line 2",
     "ZeroDivisionError: integer division or modulo by zero (while loading)"),
])
def test_a_program_that_cannot_run_is_refused_in_one_line(tmp_path, source, where, reason):
    path = tmp_path / "prog.py"
    path.write_text(source)
    with pytest.raises(program.ProgramError) as exc:
        program.check_program(str(path))
    message = str(exc.value)
    assert message.startswith(f"{path}: {where}: ") and reason in message, message
    assert "\n" not in message
    assert not (tmp_path / "__pycache__").exists()       # nothing written beside the program


def test_every_shipped_program_passes_the_check():
    folder = os.path.join(ROOT, "guest", "programs")
    for name in sorted(os.listdir(folder)):
        if name.endswith(".py") and name != "__init__.py":
            program.check_program(os.path.join(folder, name))


def test_a_failure_shows_the_programs_frames_not_the_emulators(tmp_path):
    path = tmp_path / "prog.py"
    path.write_text("def helper(cpu):\n    cpu.retire(instructions=-3)\n\n"
                    "def main(cpu):\n    helper(cpu)\n")
    cpu = make_cpu(InstantKvm())
    with pytest.raises(ValueError) as exc:
        program.run(str(path), cpu)
    told = program.failure(exc.value)
    assert told["error"].startswith("ValueError: retire(instructions=-3)")
    assert told["traceback"] == [f"{path}:5 in main: helper(cpu)",
                                 f"{path}:2 in helper: cpu.retire(instructions=-3)"]
