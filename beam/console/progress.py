"""
Progress while the command line waits (issue 12): what Beam is doing and
for how long, so that a dial to a host that never answers, a DHT
bootstrap or a name lookup is never a silent pause.

A wait that ends within L{SHOW_AFTER} seconds shows nothing.  A longer
one shows, on a terminal, one line rewritten in place (a spinner, what is
being waited for, the seconds so far) that is erased when the wait ends;
on anything else (a pipe, a log file) one plain line per stage, only once
the stage has lasted L{PIPE_AFTER} seconds, so that scripts are not
flooded and a fast run prints nothing at all.

This follows L{beam.cli.TorProgress} (Tor's own progress while a node
starts): stderr, never stdout, which keeps the share line and C{--json}
events alone.  Time is the injected reactor's, so tests drive it with a
L{twisted.internet.task.Clock}.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Optional, TextIO, TypeVar

from twisted.internet.defer import Deferred

__all__ = ["PIPE_AFTER", "SHOW_AFTER", "Progress", "isTTY", "waitingFor"]

#: Seconds a wait lasts before a terminal shows it.
SHOW_AFTER = 1.0

#: Seconds a stage lasts before a pipe gets its line.
PIPE_AFTER = 3.0

#: Seconds between two redraws of the terminal line.
REDRAW = 0.2

_SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
_ASCII_SPINNER = "|/-\\"

T = TypeVar("T")


def isTTY(stream: Any) -> bool:
    """
    Whether C{stream} is a terminal (a closed or odd stream is not).
    """
    from beam.console.style import isTerminal

    return isTerminal(stream)


def _unicodeOK(stream: Any) -> bool:
    encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
    return encoding in ("utf8", "utf_8") and os.environ.get("TERM") != "dumb"


class Progress:
    """
    Shows what is being waited for, as one stage after another.

    @ivar stream: where it goes (stderr).
    @ivar tty: whether C{stream} is a terminal (rewrite one line) or not
        (one line per slow stage).
    """

    def __init__(self, clock: Any, stream: Optional[TextIO] = None, tty: Optional[bool] = None) -> None:
        self.clock = clock
        self.stream: TextIO = stream if stream is not None else sys.stderr
        self.tty = isTTY(self.stream) if tty is None else tty
        self._spinner = _SPINNER if _unicodeOK(self.stream) else _ASCII_SPINNER
        self._what: Optional[str] = None
        self._since = 0.0
        self._timer: Any = None
        self._frame = 0
        self._shown = ""

    def stage(self, what: str) -> None:
        """
        Now waiting for C{what} ("dialling 12D3KooW…"): replaces the
        previous stage.
        """
        self._cancel()
        self._what = what
        self._since = self.clock.seconds()
        self._timer = self.clock.callLater(SHOW_AFTER if self.tty else PIPE_AFTER, self._tick)

    def done(self) -> None:
        """
        The wait is over: erase the terminal line (nothing is left of it).
        """
        self._cancel()
        self._what = None
        if self._shown:
            self.stream.write("\r" + " " * len(self._shown) + "\r")
            self.stream.flush()
            self._shown = ""

    def _cancel(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _tick(self) -> None:
        self._timer = None
        if self._what is None:
            return
        elapsed = int(self.clock.seconds() - self._since)
        if not self.tty:
            self.stream.write(f"beam: {self._what} ({elapsed} s)...\n")
            self.stream.flush()
            return
        spin = self._spinner[self._frame % len(self._spinner)]
        self._frame += 1
        text = f"{spin} {self._what} · {elapsed} s"
        self.stream.write("\r" + text.ljust(len(self._shown)))
        self.stream.flush()
        self._shown = text
        self._timer = self.clock.callLater(REDRAW, self._tick)


async def waitingFor(progress: Optional[Progress], what: str, d: "Deferred[T]") -> T:
    """
    Wait for C{d}, showing C{what} on C{progress} (if any) meanwhile; the
    line is gone once C{d} fires, whatever the outcome.
    """
    if progress is None:
        return await d
    progress.stage(what)
    try:
        return await d
    finally:
        progress.done()
