"""
Whether to colour, and the one place that makes C{rich} consoles (issue 12).

Every helper that writes to the terminal asks this module instead of
deciding on its own, so that C{beam} behaves the same everywhere:

    - L{useColour}C{(stream)}: colour only when C{stream} is a terminal,
      C{NO_COLOR} is unset or empty (U{https://no-color.org}) and C{TERM}
      is not C{dumb}.  A pipe or a file always gets plain text.
    - L{isTerminal}C{(stream)}: whether C{stream} is a terminal at all (a
      live line may refresh on a terminal even without colour).
    - L{makeConsole}C{(stream=None, stderr=False)}: a C{rich.console.Console}
      on C{stream} (default standard output, or standard error) that
      follows L{useColour}.  Markup, emoji and the automatic highlighter
      are off: much of what we print came from peers (names, agent
      versions), and C{[red]} in a peer's name must stay text.  Build
      styled output with C{rich.text.Text} instead.  Print single lines
      with C{soft_wrap=True}, or a pipe (80 columns for rich) wraps them.
    - L{linePrinter}C{(stream)}: a function C{(kind, message)} printing
      C{KIND: MESSAGE} lines (the log's terminal observer uses it).
    - L{warning}C{(message)} and L{error}C{(message)}: one line on
      standard error, C{warning:} in yellow or C{error:} in red on a
      colour terminal, plain otherwise.

C{rich} is imported only inside L{makeConsole} (and so L{warning} and
L{error}): importing this module costs nothing, which keeps C{beam
--help} fast (L{beam.test.test_cost}).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

#: The style of each line prefix L{prefixed} knows.
PREFIX_STYLES = {"warning": "bold yellow", "error": "bold red", "note": "bold cyan"}


def isTerminal(stream: IO[str] | None) -> bool:
    """
    Whether C{stream} is a terminal; a closed or odd stream is not.
    """
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def useColour(stream: IO[str] | None, environ: Mapping[str, str] | None = None) -> bool:
    """
    Whether output to C{stream} may be coloured: it is a terminal,
    C{NO_COLOR} is unset or empty and C{TERM} is not C{dumb}.

    @param environ: the environment (default L{os.environ}; tests pass their own).
    """
    env = os.environ if environ is None else environ
    if env.get("NO_COLOR", "") != "" or env.get("TERM") == "dumb":
        return False
    return isTerminal(stream)


def makeConsole(
    stream: IO[str] | None = None, *, stderr: bool = False, environ: Mapping[str, str] | None = None
) -> Console:
    """
    A C{rich} console on C{stream} (default standard output, or standard
    error with C{stderr=True}) that colours only when L{useColour} says so
    and treats the stream as a terminal only when it is one.
    """
    from rich.console import Console

    if stream is None:
        stream = sys.stderr if stderr else sys.stdout
    colour = useColour(stream, environ)
    env = dict(os.environ if environ is None else environ)
    # rich reads FORCE_COLOR and TTY_COMPATIBLE itself; the decision is ours.
    env.pop("FORCE_COLOR", None)
    env.pop("TTY_COMPATIBLE", None)
    return Console(
        file=stream,
        force_terminal=isTerminal(stream),
        no_color=not colour,
        color_system="auto" if colour else None,
        markup=False,
        emoji=False,
        highlight=False,
        _environ=env,
    )


def linePrinter(stream: IO[str] | None = None,
                environ: Mapping[str, str] | None = None) -> Callable[[str, str], None]:
    """
    A function printing C{KIND: MESSAGE} lines on C{stream} (default
    standard error; the prefix is left out when KIND is empty), the prefix
    styled as L{PREFIX_STYLES} says when L{useColour}.  Plain output never
    imports C{rich}; a colour terminal gets one console, made on the first
    line and kept for the next (the log observer prints many lines).
    """
    out = sys.stderr if stream is None else stream
    if not useColour(out, environ):
        def plain(kind: str, message: str) -> None:
            live = _liveModule()
            if live is not None:
                live.beforeWrite()
            out.write(f"{kind}: {message}\n" if kind else message + "\n")
            out.flush()
            if live is not None:
                live.afterWrite()
        return plain
    consoles: list[Console] = []

    def coloured(kind: str, message: str) -> None:
        from rich.text import Text

        if not consoles:
            consoles.append(makeConsole(out, environ=environ))
        line = Text()
        if kind:
            line.append(f"{kind}:", style=PREFIX_STYLES.get(kind, "bold"))
            line.append(" ")
        line.append(message)
        live = _liveModule()
        if live is not None:
            live.beforeWrite()
        consoles[0].print(line, soft_wrap=True)
        out.flush()
        if live is not None:
            live.afterWrite()
    return coloured


def _liveModule() -> Any:
    """
    L{beam.console.live} if a command loaded it (only then can a live
    line be on the terminal): a line printed then must clear the live
    line first and let it redraw after, or it would follow the live
    line's text on the same line.  Not imported otherwise, which keeps
    printing an error cheap.
    """
    return sys.modules.get("beam.console.live")


def prefixed(kind: str, message: str, stream: IO[str] | None = None,
             environ: Mapping[str, str] | None = None) -> None:
    """
    Print C{KIND: MESSAGE} as one line on C{stream} (default standard
    error); see L{linePrinter}.
    """
    linePrinter(stream, environ)(kind, message)


def warning(message: str, stream: IO[str] | None = None) -> None:
    """
    C{warning: MESSAGE} on standard error (yellow on a colour terminal).
    """
    prefixed("warning", message, stream)


def error(message: str, stream: IO[str] | None = None) -> None:
    """
    C{error: MESSAGE} on standard error (red on a colour terminal).
    """
    prefixed("error", message, stream)
