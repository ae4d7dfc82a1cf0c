"""
Reading a child process's stdout line by line with a deadline, for tests
that drive real C{beam} processes (on loopback or in the NAT lab).
"""

from __future__ import annotations

import os
import select
import subprocess
import time
from collections.abc import Callable
from typing import Any

__all__ = ["LineReader"]


class LineReader:
    """
    The lines of C{proc}'s stdout (a pipe), read without blocking past a
    deadline: a test fails with the process's log rather than hang, and as
    soon as the process exits without finishing a line.
    """

    def __init__(self, proc: subprocess.Popen[Any], label: str, tail: Callable[[], str]) -> None:
        """
        @param label: names the process in failures.
        @param tail: the end of the process's log, for failures.
        """
        self.proc = proc
        self.label = label
        self.tail = tail
        self._buf = b""

    def readLine(self, timeout: float = 30) -> bytes:
        """
        The next line, without its newline.

        @raise AssertionError: when none came within C{timeout} seconds,
            or the process exited first.
        """
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.label}: no output within {timeout:g} s; log:\n{self.tail()}")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                data = os.read(fd, 65536)
                if not data:
                    self.proc.wait(timeout=10)
                    raise AssertionError(
                        f"{self.label} exited ({self.proc.returncode}) before a line; log:\n{self.tail()}"
                    )
                self._buf += data
        line, _, self._buf = self._buf.partition(b"\n")
        return line
