"""
Where the node's log goes: one line per event, as text for people or as
JSON for machines.

Text::

    2026-11-25T17:00:00Z [beam.tunnel] tunnel web exposed on port 3000
    2026-11-25T17:00:01Z [beam.p2p.host.node] ERROR: dial failed
    Traceback (most recent call last):
    ...

JSON (one object per line)::

    {"time": "2026-11-25T17:00:00.123Z", "level": "info",
     "namespace": "beam.tunnel", "text": "tunnel web exposed", "port": 3000}

Every event goes through L{twisted.logger}, so Twisted's own messages and
legacy C{twisted.python.log} calls come out in the same form.  Failures are
never dropped: text mode prints the traceback after the line, JSON adds
C{"error"} and C{"traceback"} fields.

Log text often contains what peers sent us (agent versions, protocol
names), so control characters are escaped in text mode: a peer cannot
clear the terminal or forge a log line with an embedded newline (message
continuation lines are indented by two spaces).  JSON output is escaped by
the encoder.

Where each event goes (issue 12) when a command runs a node
(L{startLogging} with a C{verbosity}):

    - The terminal (standard error) gets by default only Beam's own
      warnings and errors (namespaces C{beam.*}) as C{warning: ...} and
      C{error: ...} lines, without timestamps or module names (see
      L{formatTerminal}); C{-v} adds Beam's info lines, C{-vv} everything
      in the full text format, C{--quiet} only errors.  Twisted's chatter
      (ports starting, factories, C{log_legacy}) never reaches it, except
      an unexpected error of any namespace (an unhandled failure is
      logged as critical), shown as one line that points at the log file.
    - The log file C{<home>/logs/beam.log} (L{RotatingLogFile}: 0600 in a
      0700 directory, renamed to C{beam.log.1} at 5 MiB, three old files
      kept) gets everything at info and above (debug with C{-vv}), in the
      text format, whatever the terminal shows.  C{beam logs} prints it
      (L{tailLines}, L{follow}).
    - With C{--log-format json} the terminal gets every event as JSON, as
      before.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from datetime import UTC, datetime
from typing import IO, Any, cast

from twisted.logger import (
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    LogBeginner,
    LogLevel,
    LogLevelFilterPredicate,
    PredicateResult,
    formatEvent,
    globalLogBeginner,
)
from twisted.python.failure import Failure
from zope.interface import implementer

LOG_FORMATS = ("text", "json")
_LEVELS = frozenset(LogLevel.iterconstants())
_RESERVED = {"time", "level", "namespace", "text", "error", "traceback"}
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _escapeControl(text: str) -> str:
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _timestamp(event: dict[str, Any], millis: bool) -> str:
    when = event.get("log_time")
    if not isinstance(when, (int, float)) or not math.isfinite(when):
        return "-"
    moment = datetime.fromtimestamp(when, UTC)
    if millis:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _level(event: dict[str, Any]) -> LogLevel:
    level = event.get("log_level")
    # The levels are NamedConstants of LogLevel, not LogLevel instances.
    return cast(LogLevel, level) if level in _LEVELS else LogLevel.info


def _traceback(failure: Any) -> str:
    if isinstance(failure, Failure):
        try:
            return failure.getTraceback()
        except Exception:
            return f"{failure.type.__name__}: {failure.getErrorMessage()}\n"
    return f"{failure!r}\n"


def formatText(event: dict[str, Any]) -> str:
    """
    One event as text: C{TIME [NAMESPACE] MESSAGE}, with C{WARNING:},
    C{ERROR:} or C{CRITICAL:} before the message of those levels, followed
    by the traceback of a failure.  Ends with a newline.
    """
    level = _level(event)
    prefix = {LogLevel.warn: "WARNING: ", LogLevel.error: "ERROR: ",
              LogLevel.critical: "CRITICAL: "}.get(level, "")
    message = _escapeControl(formatEvent(event) or "")
    message = message.replace("\n", "\n  ")
    namespace = _escapeControl(str(event.get("log_namespace", "-")))
    line = f"{_timestamp(event, millis=False)} [{namespace}] {prefix}{message}\n"
    failure = event.get("log_failure")
    if failure is not None:
        line += _escapeControl(_traceback(failure)).rstrip("\n") + "\n"
    return line


def _scalar(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, (str, int, bool))


def formatJSON(event: dict[str, Any]) -> str:
    """
    One event as a JSON object on one line: C{time}, C{level},
    C{namespace}, C{text}, every field whose value is a string, number,
    boolean or null (others, and Twisted's C{log_*} bookkeeping, are left
    out), and C{error} and C{traceback} for a failure.
    """
    obj: dict[str, Any] = {
        "time": _timestamp(event, millis=True),
        "level": _level(event).name,
        "namespace": str(event.get("log_namespace", "-")),
        "text": formatEvent(event) or "",
    }
    for key, value in event.items():
        if isinstance(key, str) and not key.startswith("log_") and key not in _RESERVED and _scalar(value):
            obj[key] = value
    failure = event.get("log_failure")
    if failure is not None:
        if isinstance(failure, Failure):
            obj["error"] = f"{failure.type.__name__}: {failure.getErrorMessage()}"
        obj["traceback"] = _traceback(failure)
    return json.dumps(obj, allow_nan=False) + "\n"


@implementer(ILogObserver)
class StreamObserver:
    """
    Writes each event to C{stream} through C{formatter}, flushing so that
    a crash loses nothing that was logged.
    """

    def __init__(self, stream: IO[str], formatter: Callable[[dict[str, Any]], str]) -> None:
        self.stream = stream
        self.formatter = formatter

    def __call__(self, event: dict[str, Any]) -> None:
        self.stream.write(self.formatter(event))
        self.stream.flush()


def _quietTorExit(event: dict[str, Any]) -> PredicateResult:
    """
    Drop txtorcon's report of a tor that exited with code 0: it logs every
    end of a tor it launched as an unhandled C{RuntimeError} ("Tor exited
    with error-code 0"), also the orderly one our stop asked for, which
    read as a crash in every log.  Other exit codes and kills still show.
    """
    failure = event.get("log_failure")
    value = getattr(failure, "value", None)
    if isinstance(value, RuntimeError) and str(value) == "Tor exited with error-code 0":
        return PredicateResult.no
    return PredicateResult.maybe


#: L{_quietTorExit} as the filter predicate it is (a callable is enough
#: for L{FilteringLogObserver}; the interface only types it).
quietTorExit = cast(ILogFilterPredicate, _quietTorExit)


def makeObserver(stream: IO[str], fmt: str = "text", level: LogLevel = LogLevel.info) -> ILogObserver:
    """
    An observer writing events of C{level} and above to C{stream}.

    @param fmt: C{"text"} or C{"json"}.
    @raise ValueError: an unknown format.
    """
    formatters = {"text": formatText, "json": formatJSON}
    if fmt not in formatters:
        raise ValueError(f"unknown log format {fmt!r}; use one of {', '.join(LOG_FORMATS)}")
    predicate = LogLevelFilterPredicate(defaultLogLevel=level)
    return FilteringLogObserver(StreamObserver(stream, formatters[fmt]), [quietTorExit, predicate])


#: The log file's name in C{<home>/logs}, its size when it is rotated,
#: and how many rotated files are kept (C{beam.log.1} is the newest).
LOG_FILE_NAME = "beam.log"
ROTATE_BYTES = 5 * 1024 * 1024
KEEP_ROTATED = 3


def logFilePath(home: Path) -> Path:
    """
    Where a node of C{home} writes its log.
    """
    return Path(home) / "logs" / LOG_FILE_NAME


class RotatingLogFile:
    """
    An append-only text file, created 0600 in a 0700 directory, that is
    renamed to C{NAME.1} (C{NAME.1} to C{NAME.2}, ...; the oldest beyond
    C{keep} removed) before a write would take it past C{maxBytes}: the
    log of a node that runs for months stays under C{(keep + 1) *
    maxBytes}.

    Opened with C{O_APPEND}, so that two processes writing the same file
    (a node and one started by mistake) interleave lines instead of
    overwriting each other; each rotates on its own count of the size,
    read again from the file before rotating.

    @ivar path: the file.
    """

    def __init__(self, path: Path, maxBytes: int = ROTATE_BYTES, keep: int = KEEP_ROTATED) -> None:
        self.path = Path(path)
        self.maxBytes = maxBytes
        self.keep = keep
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.path.parent.stat().st_mode & 0o077:
            os.chmod(self.path.parent, 0o700)
        self._fd = self._open()

    def _open(self) -> int:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
        return fd

    def _rotate(self) -> None:
        for n in range(self.keep, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if n == self.keep:
                older.unlink(missing_ok=True)
            else:
                newer = self.path.with_name(f"{self.path.name}.{n + 1}")
                if older.exists():
                    older.replace(newer)
        if self.keep > 0:
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = self._open()

    def write(self, text: str) -> None:
        """
        Append C{text}, rotating first if the file would grow past
        C{maxBytes} (a single longer event still goes in whole).
        """
        data = text.encode("utf-8", "backslashreplace")
        size = os.fstat(self._fd).st_size
        if size and size + len(data) > self.maxBytes:
            try:
                self._rotate()
            except OSError:
                pass  # keep writing where we are rather than lose the line
        os.write(self._fd, data)

    def flush(self) -> None:
        """
        Nothing to do: every write goes straight to the file.
        """

    def close(self) -> None:
        """
        Close the file; later writes fail.
        """
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def isBeamEvent(event: dict[str, Any]) -> bool:
    """
    Whether C{event} was logged by Beam's own code (namespace C{beam} or
    C{beam.*}), not by Twisted or another library.
    """
    namespace = str(event.get("log_namespace", ""))
    return namespace == "beam" or namespace.startswith("beam.")


def formatTerminal(event: dict[str, Any], logPath: Path | None = None) -> tuple[str, str]:
    """
    One event as a person at the terminal reads it: C{(KIND, MESSAGE)},
    KIND C{""} for info, C{"warning"} or C{"error"}; no time, no module,
    no traceback.  A failure is named after the message, and the log file
    (which has the traceback) is pointed at; an event not from Beam's
    code (only unexpected errors get this far) says it is unexpected.
    """
    level = _level(event)
    kind = {LogLevel.warn: "warning", LogLevel.error: "error", LogLevel.critical: "error"}.get(level, "")
    message = _escapeControl(formatEvent(event) or "").replace("\n", "\n  ")
    failure = event.get("log_failure")
    if not isBeamEvent(event):
        message = f"unexpected error (please report it): {message}"
    if isinstance(failure, Failure):
        why = _escapeControl(f"{failure.type.__name__}: {failure.getErrorMessage()}")
        if why not in message:
            message += f" ({why})"
    if failure is not None or not isBeamEvent(event):
        message += f"; details in {logPath} (beam logs)" if logPath is not None else ""
    return kind, message


#: The least level of Beam's own events the terminal shows at each
#: verbosity (-1 C{--quiet}, 0 default, 1 C{-v}; 2 C{-vv} shows all).
_TERMINAL_LEVELS = {-1: LogLevel.error, 0: LogLevel.warn, 1: LogLevel.info}


def _terminalPredicate(verbosity: int) -> ILogFilterPredicate:
    least = _TERMINAL_LEVELS[max(-1, min(1, verbosity))]

    def predicate(event: dict[str, Any]) -> PredicateResult:
        level = _level(event)
        if isBeamEvent(event):
            return PredicateResult.yes if level >= least else PredicateResult.no
        # Others' chatter is for the log file; their critical events are
        # unhandled failures (bugs), which a person must hear about.
        return PredicateResult.yes if level >= LogLevel.critical else PredicateResult.no

    return cast(ILogFilterPredicate, predicate)


@implementer(ILogObserver)
class _TerminalObserver:
    def __init__(self, printLine: Callable[[str, str], None], logPath: Path | None) -> None:
        self.printLine = printLine
        self.logPath = logPath

    def __call__(self, event: dict[str, Any]) -> None:
        self.printLine(*formatTerminal(event, self.logPath))


def _plainLine(stream: IO[str]) -> Callable[[str, str], None]:
    def printLine(kind: str, message: str) -> None:
        stream.write(f"{kind}: {message}\n" if kind else message + "\n")
        stream.flush()
    return printLine


def makeTerminalObserver(
    stream: IO[str], verbosity: int = 0, logPath: Path | None = None,
    printLine: Callable[[str, str], None] | None = None,
    wrap: Callable[[ILogObserver], ILogObserver] | None = None,
) -> ILogObserver:
    """
    What the terminal shows of the log at C{verbosity} (see the module
    docstring): L{formatTerminal} lines through C{printLine} (default:
    plain text on C{stream}; the CLI passes
    L{beam.console.style.linePrinter} for colour), or at 2 and above
    every event in the full text format on C{stream}.

    @param wrap: applied to the observer that prints, inside the filter
        (L{startLogging} holds the lines that will be shown with it).
    """
    if verbosity >= 2:
        return makeObserver(stream, "text", LogLevel.debug)
    observer: ILogObserver = _TerminalObserver(printLine or _plainLine(stream), logPath)
    if wrap is not None:
        observer = wrap(observer)
    return FilteringLogObserver(observer, [quietTorExit, _terminalPredicate(verbosity)])


@implementer(ILogObserver)
class HeldObserver:
    """
    Passes events on to C{observer}, except while held: then it keeps
    them (the last C{limit}) until L{release}.  A command that runs a node
    holds the terminal's log until it printed its banner, so that the
    banner comes first and the warnings of the start after it.
    """

    def __init__(self, observer: ILogObserver, held: bool = True, limit: int = 200) -> None:
        self.observer = observer
        self.limit = limit
        self._held: list[dict[str, Any]] | None = [] if held else None
        self._dropped = 0

    def __call__(self, event: dict[str, Any]) -> None:
        if self._held is None:
            self.observer(event)
            return
        self._held.append(event)
        if len(self._held) > self.limit:
            del self._held[0]
            self._dropped += 1

    def release(self) -> None:
        """
        Pass on what was held, and every event from now on.
        """
        held, self._held = self._held, None
        if held is None:
            return
        if self._dropped:
            self.observer({"log_format": "{n} earlier log lines are only in the log file", "n": self._dropped,
                           "log_level": LogLevel.warn, "log_namespace": "beam.daemon.logs"})
        for event in held:
            self.observer(event)


def makeFileObserver(logFile: IO[str] | RotatingLogFile, verbosity: int = 0) -> ILogObserver:
    """
    The log file's observer: every event at info and above (debug at
    C{verbosity} 2), in the text format.
    """
    stream = cast(IO[str], logFile)
    return makeObserver(stream, "text", LogLevel.debug if verbosity >= 2 else LogLevel.info)


def startLogging(
    stream: IO[str],
    fmt: str = "text",
    level: LogLevel = LogLevel.info,
    beginner: LogBeginner = globalLogBeginner,
    verbosity: int | None = None,
    logFile: IO[str] | RotatingLogFile | None = None,
    printLine: Callable[[str, str], None] | None = None,
    hold: bool = False,
) -> ILogObserver:
    """
    Send the process's log to C{stream}, for entry points only (C{beam
    daemon}).  Events logged before this call are replayed, filtered.
    Standard output is not redirected into the log, because the command
    line prints its own results there.

    Without C{verbosity}, C{stream} gets every event of C{level} and
    above in C{fmt}.  With it and the text format, C{stream} gets what
    L{makeTerminalObserver} shows (C{level} is then not used); with JSON,
    as without.  C{logFile} gets L{makeFileObserver}'s events either way.

    @param beginner: the log beginner to start (tests pass their own).
    @param printLine: see L{makeTerminalObserver}.
    @param hold: with C{verbosity} below 2 and text, hold the lines the
        terminal will show until the returned L{HeldObserver} is released.
    @return: the observer writing to C{stream}, or the L{HeldObserver}
        holding its lines.
    """
    observer: ILogObserver
    held: list[HeldObserver] = []

    def holding(inner: ILogObserver) -> ILogObserver:
        held.append(HeldObserver(inner))
        return held[0]

    if verbosity is None or fmt != "text":
        observer = makeObserver(stream, fmt, level)
    else:
        path = getattr(logFile, "path", None)
        observer = makeTerminalObserver(stream, verbosity, path, printLine, holding if hold else None)
    observers = [observer]
    if logFile is not None:
        observers.append(makeFileObserver(logFile, verbosity or 0))
    beginner.beginLoggingTo(observers, discardBuffer=False, redirectStandardIO=False)
    return held[0] if held else observer


def tailLines(path: Path, count: int | None = None) -> tuple[list[str], int]:
    """
    The last C{count} lines of C{path} (all with C{None}), without
    reading more of a big file than those lines need, and the offset they
    end at (where L{follow} goes on from).

    @raise OSError: the file cannot be read (C{FileNotFoundError}: the
        node has not logged yet).
    """
    with open(path, "rb") as f:
        end = f.seek(0, os.SEEK_END)
        if count is not None and count <= 0:
            return [], end
        if count is None:
            f.seek(0)
            data = f.read(end)
        else:
            data, pos = b"", end
            while pos > 0 and data.count(b"\n") <= count:
                step = min(8192, pos)
                pos -= step
                f.seek(pos)
                data = f.read(step) + data
    lines = data.decode("utf-8", "replace").splitlines(keepends=True)
    return (lines if count is None else lines[-count:]), end


def follow(path: Path, start: int | None = None, interval: float = 0.25,
           sleep: Callable[[float], None] = time.sleep) -> Iterator[str]:
    """
    What is appended to C{path} from offset C{start} (default: its end),
    forever, as C{tail -F} does: when the file is rotated (a new file at
    the path, or a shorter one) it goes on from the new file's start; a
    missing file is waited for.  Yields whole lines (a line still being
    written waits for its newline), and C{""} after each idle poll so the
    caller may stop.
    """
    f: IO[bytes] | None = None
    identity: tuple[int, int] | None = None
    offset = start
    pending = b""
    try:
        while True:
            if f is None:
                try:
                    f = open(path, "rb")
                except FileNotFoundError:
                    sleep(interval)
                    yield ""
                    continue
                st = os.fstat(f.fileno())
                identity = (st.st_dev, st.st_ino)
                f.seek(st.st_size if offset is None else min(offset, st.st_size))
                offset = 0
            chunk = f.read(65536)
            if chunk:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    yield line.decode("utf-8", "replace") + "\n"
                continue
            try:
                st = os.stat(path)
                replaced = (st.st_dev, st.st_ino) != identity or st.st_size < f.tell()
            except FileNotFoundError:
                replaced = True
            if replaced:
                f.close()
                f = None
                if pending:
                    # The old file's last line never got its newline.
                    yield pending.decode("utf-8", "replace") + "\n"
                    pending = b""
                continue
            sleep(interval)
            yield ""
    finally:
        if f is not None:
            f.close()
