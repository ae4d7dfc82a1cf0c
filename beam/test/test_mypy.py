"""
The type annotations are checked, as part of the suite (issue 7).

mypy runs with the project's configuration (C{[tool.mypy]} in
pyproject.toml: the mypy-zope plugin, beam/ minus the generated protobuf
code and the tests), exactly as C{python -m mypy} from the checkout would.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

REPO = Path(__file__).resolve().parents[2]


class MypyTests(SynchronousTestCase):
    def test_beamTypeChecks(self) -> None:
        """
        mypy finds no error in beam/.  Its incremental cache is the usual
        .mypy_cache in the checkout (mypy keeps it out of git), so a run
        after the first one only re-checks what changed.  On failure, the
        message is mypy's whole report.
        """
        config = REPO / "pyproject.toml"
        if not config.exists():
            self.skipTest("not run from a source checkout: no pyproject.toml next to beam/")
        result = subprocess.run(
            [sys.executable, "-m", "mypy", "--config-file", str(config),
             "--cache-dir", str(REPO / ".mypy_cache"), "--no-color-output"],
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, timeout=600,
        )
        self.assertEqual(result.returncode, 0, f"mypy exited {result.returncode}:\n{result.stdout}")
