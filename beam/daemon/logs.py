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
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
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


def startLogging(
    stream: IO[str],
    fmt: str = "text",
    level: LogLevel = LogLevel.info,
    beginner: LogBeginner = globalLogBeginner,
) -> ILogObserver:
    """
    Send the process's log to C{stream}, for entry points only (C{beam
    daemon}).  Events logged before this call are replayed, filtered.
    Standard output is not redirected into the log, because the command
    line prints its own results there.

    @param beginner: the log beginner to start (tests pass their own).
    @return: the installed observer.
    """
    observer = makeObserver(stream, fmt, level)
    beginner.beginLoggingTo([observer], discardBuffer=False, redirectStandardIO=False)
    return observer
