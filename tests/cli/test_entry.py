"""The ``colonies`` entry point: Ctrl-C while Python still imports the command line exits with
130 and no traceback, as it does once the command runs; ``import colonyos`` loads nothing."""

from __future__ import annotations

import subprocess
import sys

_INTERRUPTED_IMPORT = """
import sys

class Interrupt:
    def find_spec(self, name, path=None, target=None):
        if name == "colonyos.cli.main":
            raise KeyboardInterrupt  # as Ctrl-C does, in the middle of the import
        return None

sys.meta_path.insert(0, Interrupt())
from colonyos.cli.entry import main
main()
"""


def test_ctrl_c_while_the_command_line_imports_is_quiet() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _INTERRUPTED_IMPORT], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 130
    assert "Traceback" not in done.stderr, done.stderr


def test_importing_colonyos_loads_nothing_until_a_name_is_used() -> None:
    probe = (
        "import sys, colonyos\n"
        "assert 'colonyos.client' not in sys.modules, 'client loaded'\n"
        "assert colonyos.Client.__name__ == 'Client'\n"
        "assert sorted(colonyos.__all__) == sorted(colonyos._HOMES)\n"
        "for name in colonyos.__all__: getattr(colonyos, name)\n"
    )
    subprocess.run([sys.executable, "-c", probe], check=True, timeout=60)
