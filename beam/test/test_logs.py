"""
Tests for L{beam.daemon.logs}: text and JSON log lines, levels, failures.
"""

from __future__ import annotations

import io
import json
import sys
import warnings
from typing import Any

from twisted.logger import LogBeginner, Logger, LogLevel, LogPublisher
from twisted.trial.unittest import SynchronousTestCase

from beam.daemon.logs import formatJSON, formatText, makeObserver, startLogging

T = 1795626000.0  # 2026-11-25T17:00:00Z


def event(_format: str = "hello", _level: Any = LogLevel.info, **fields: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {"log_format": _format, "log_level": _level, "log_namespace": "beam.tunnel",
                          "log_time": T}
    ev.update(fields)
    return ev


def boom() -> None:
    _ = 1 / 0


class TextTests(SynchronousTestCase):
    """
    Human-readable lines.
    """

    def test_line(self) -> None:
        """
        An info event is C{TIME [NAMESPACE] MESSAGE} with fields formatted
        in.
        """
        self.assertEqual(formatText(event("tunnel {name} on {port}", name="web", port=3000)),
                         "2026-11-25T17:00:00Z [beam.tunnel] tunnel web on 3000\n")

    def test_levelPrefixes(self) -> None:
        """
        Warnings, errors and critical events say so; debug and info don't.
        """
        self.assertIn("] hi\n", formatText(event("hi", LogLevel.debug)))
        self.assertIn("] WARNING: hi\n", formatText(event("hi", LogLevel.warn)))
        self.assertIn("] ERROR: hi\n", formatText(event("hi", LogLevel.error)))
        self.assertIn("] CRITICAL: hi\n", formatText(event("hi", LogLevel.critical)))

    def test_failureTraceback(self) -> None:
        """
        log.failure prints the message line and then the whole traceback.
        """
        stream = io.StringIO()
        log = Logger(namespace="beam.p2p.host.node", observer=makeObserver(stream, "text"))
        try:
            boom()
        except ZeroDivisionError:
            log.failure("dial to {peer} failed", peer="12D3")
        lines = stream.getvalue().splitlines()
        self.assertRegex(lines[0], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \[beam\.p2p\.host\.node\] CRITICAL: dial to 12D3 failed$")
        self.assertIn("Traceback", lines[1])
        self.assertIn("in boom", stream.getvalue())
        self.assertIn("ZeroDivisionError", lines[-1])

    def test_controlCharactersEscaped(self) -> None:
        """
        Control characters from peers are escaped, and an embedded newline
        cannot start a line that looks like a log line.
        """
        line = formatText(event("agent {a}", a="evil\x1b[2J\r\n2026-01-01T00:00:00Z [beam] forged"))
        self.assertEqual(line, "2026-11-25T17:00:00Z [beam.tunnel] agent evil\\x1b[2J\\x0d\n"
                               "  2026-01-01T00:00:00Z [beam] forged\n")

    def test_unformattableEvent(self) -> None:
        """
        A bad format string or a bare event still yields a line, not an
        exception.
        """
        stream = io.StringIO()
        Logger(namespace="x", observer=makeObserver(stream, "text")).info("{missing}")
        self.assertIn("[x] Unable to format event", stream.getvalue())
        self.assertEqual(formatText({}), "- [-] \n")


class JSONTests(SynchronousTestCase):
    """
    One JSON object per line.
    """

    def test_fields(self) -> None:
        """
        The object has time, level, namespace, text and the scalar fields;
        Twisted's log_* keys and non-scalar values are left out.
        """
        line = formatJSON(event("tunnel {name}", name="web", port=3000, ratio=0.5, on=True, none=None,
                                obj=object(), nan=float("nan"), items=[1, 2], text="clash"))
        self.assertTrue(line.endswith("\n"))
        self.assertEqual(line.count("\n"), 1)
        self.assertEqual(json.loads(line), {
            "time": "2026-11-25T17:00:00.000Z", "level": "info", "namespace": "beam.tunnel",
            "text": "tunnel web", "name": "web", "port": 3000, "ratio": 0.5, "on": True, "none": None,
        })

    def test_oneLineWithNewlines(self) -> None:
        """
        A message with newlines stays on one line.
        """
        line = formatJSON(event("a\nb"))
        self.assertEqual(line.count("\n"), 1)
        self.assertEqual(json.loads(line)["text"], "a\nb")

    def test_failure(self) -> None:
        """
        A failure adds the error and its traceback.
        """
        stream = io.StringIO()
        log = Logger(namespace="beam.p2p.host.node", observer=makeObserver(stream, "json"))
        try:
            boom()
        except ZeroDivisionError:
            log.failure("oops")
        obj = json.loads(stream.getvalue())
        self.assertEqual((obj["level"], obj["text"]), ("critical", "oops"))
        self.assertEqual(obj["error"], "ZeroDivisionError: division by zero")
        self.assertIn("Traceback", obj["traceback"])
        self.assertIn("in boom", obj["traceback"])

    def test_milliseconds(self) -> None:
        """
        JSON times keep milliseconds.
        """
        self.assertEqual(json.loads(formatJSON(event(log_time=T + 0.1234)))["time"], "2026-11-25T17:00:00.123Z")


class ObserverTests(SynchronousTestCase):
    """
    makeObserver and startLogging.
    """

    def test_levelFilter(self) -> None:
        """
        Events below the level are dropped.
        """
        stream = io.StringIO()
        observer = makeObserver(stream, "text", LogLevel.warn)
        for level in (LogLevel.debug, LogLevel.info, LogLevel.warn, LogLevel.error):
            observer(event(level.name, level))
        self.assertEqual([line.split("] ")[1] for line in stream.getvalue().splitlines()],
                         ["WARNING: warn", "ERROR: error"])

    def test_defaultLevelInfo(self) -> None:
        """
        By default, debug is dropped and info kept.
        """
        stream = io.StringIO()
        observer = makeObserver(stream)
        observer(event("quiet", LogLevel.debug))
        observer(event("loud", LogLevel.info))
        self.assertEqual(stream.getvalue(), "2026-11-25T17:00:00Z [beam.tunnel] loud\n")

    def test_orderlyTorExitQuiet(self) -> None:
        """
        txtorcon's "Tor exited with error-code 0" (logged as an unhandled
        error on every end of a tor it launched, an orderly stop too) is
        dropped; another exit code is still shown.
        """
        from twisted.python.failure import Failure

        stream = io.StringIO()
        log = Logger(namespace="txtorcon", observer=makeObserver(stream, "text"))
        log.failure("Unhandled Error", Failure(RuntimeError("Tor exited with error-code 0")))
        self.assertEqual(stream.getvalue(), "")
        log.failure("Unhandled Error", Failure(RuntimeError("Tor exited with error-code 1")))
        self.assertIn("error-code 1", stream.getvalue())

    def test_unknownFormat(self) -> None:
        """
        An unknown format is refused.
        """
        self.assertRaises(ValueError, makeObserver, io.StringIO(), "xml")

    def test_startLogging(self) -> None:
        """
        startLogging installs the observer on the beginner, replays events
        logged before, filtered, and leaves stdout alone.
        """
        publisher = LogPublisher()
        beginner = LogBeginner(publisher, io.StringIO(), sys, warnings)
        log = Logger(namespace="early", observer=publisher)
        log.debug("hidden")
        log.info("buffered")
        stream = io.StringIO()
        stdout = sys.stdout
        startLogging(stream, "json", LogLevel.info, beginner=beginner)
        self.assertIs(sys.stdout, stdout)
        log.warn("live")
        texts = [json.loads(line)["text"] for line in stream.getvalue().splitlines()]
        self.assertEqual(texts, ["buffered", "live"])


class RotatingLogFileTests(SynchronousTestCase):
    """
    The node's log file: private, append-only, rotated and size-capped.
    """

    def test_rotation(self) -> None:
        """
        A write that would take the file past its size renames it to
        C{.1} (older ones shift up); only C{keep} old files stay, each
        0600 in a 0700 directory.
        """
        import os
        from pathlib import Path

        from beam.daemon.logs import RotatingLogFile

        path = Path(self.mktemp()) / "logs" / "beam.log"
        f = RotatingLogFile(path, maxBytes=100, keep=2)
        self.addCleanup(f.close)
        for i in range(10):
            f.write(f"{i}" * 60 + "\n")
        self.assertEqual(sorted(p.name for p in path.parent.iterdir()), ["beam.log", "beam.log.1", "beam.log.2"])
        self.assertEqual(path.read_text(), "9" * 60 + "\n")
        self.assertEqual(path.with_name("beam.log.2").read_text(), "7" * 60 + "\n")
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        self.assertEqual(os.stat(path.parent).st_mode & 0o777, 0o700)


class TerminalTests(SynchronousTestCase):
    """
    What the terminal shows: Beam's warnings by default, never Twisted's
    chatter, held until released.
    """

    def lines(self, verbosity: int, events: list[dict[str, Any]]) -> list[tuple[str, str]]:
        from beam.daemon.logs import makeTerminalObserver

        printed: list[tuple[str, str]] = []
        observer = makeTerminalObserver(io.StringIO(), verbosity, None, lambda k, m: printed.append((k, m)))
        for e in events:
            observer(e)
        return printed

    def test_verbosity(self) -> None:
        """
        Default: Beam's warnings and errors, as C{warning}/C{error} lines
        without time or module; C{-v} adds Beam's info; C{--quiet} only
        errors; Twisted's info and warnings never.
        """
        events = [event("info", LogLevel.info), event("careful", LogLevel.warn), event("bad", LogLevel.error),
                  event("Factory starting on 1", LogLevel.info, log_namespace="log_legacy"),
                  event("twisted warn", LogLevel.warn, log_namespace="twisted.internet.base")]
        self.assertEqual(self.lines(0, events), [("warning", "careful"), ("error", "bad")])
        self.assertEqual(self.lines(1, events), [("", "info"), ("warning", "careful"), ("error", "bad")])
        self.assertEqual(self.lines(-1, events), [("error", "bad")])

    def test_unexpectedErrorShown(self) -> None:
        """
        Another library's critical event (an unhandled failure: a bug) is
        shown, as unexpected, naming the failure.
        """
        from twisted.python.failure import Failure

        try:
            boom()
        except ZeroDivisionError:
            f = Failure()
        lines = self.lines(0, [event("Unhandled error in Deferred:", LogLevel.critical,
                                     log_namespace="twisted.internet.defer", log_failure=f)])
        self.assertEqual(len(lines), 1)
        self.assertEqual(lines[0][0], "error")
        self.assertIn("unexpected error", lines[0][1])
        self.assertIn("ZeroDivisionError", lines[0][1])

    def test_heldUntilReleased(self) -> None:
        """
        startLogging with C{hold} keeps the terminal's lines until
        released; the log file gets everything at once, Twisted's too.
        """
        publisher = LogPublisher()
        beginner = LogBeginner(publisher, io.StringIO(), sys, warnings)
        stream, logFile = io.StringIO(), io.StringIO()
        held = startLogging(stream, "text", beginner=beginner, verbosity=0, logFile=logFile, hold=True)
        log = Logger(namespace="beam.test", observer=publisher)
        log.warn("careful")
        Logger(namespace="log_legacy", observer=publisher).info("Factory starting on 1")
        self.assertEqual(stream.getvalue(), "")
        self.assertIn("careful", logFile.getvalue())
        self.assertIn("Factory starting on 1", logFile.getvalue())
        held.release()  # type: ignore[attr-defined]
        self.assertEqual(stream.getvalue(), "warning: careful\n")
        log.warn("again")
        self.assertEqual(stream.getvalue(), "warning: careful\nwarning: again\n")


class ReadLogTests(SynchronousTestCase):
    """
    tailLines and follow, which C{beam logs} prints with.
    """

    def test_tail(self) -> None:
        """
        The last N lines of a file bigger than one read block, and the
        offset they end at.
        """
        from pathlib import Path

        from beam.daemon.logs import tailLines

        path = Path(self.mktemp())
        path.write_text("".join(f"line {i} {'x' * 100}\n" for i in range(1000)))
        lines, end = tailLines(path, 3)
        self.assertEqual([line.split()[1] for line in lines], ["997", "998", "999"])
        self.assertEqual(end, path.stat().st_size)
        self.assertEqual(len(tailLines(path)[0]), 1000)

    def test_followAcrossRotation(self) -> None:
        """
        follow yields appended whole lines, and goes on in the new file
        after a rotation.
        """
        from pathlib import Path

        from beam.daemon.logs import follow

        path = Path(self.mktemp())
        path.write_text("old\n")
        polls: list[float] = []
        lines = follow(path, sleep=polls.append)
        self.assertEqual(next(lines), "")
        with open(path, "a") as f:
            f.write("one\ntw")
        self.assertEqual(next(lines), "one\n")
        self.assertEqual(next(lines), "")
        path.rename(path.with_name(path.name + ".1"))
        path.write_text("new\n")
        self.assertEqual(next(lines), "tw\n")  # the old file's unfinished line, ended
        self.assertEqual(next(lines), "new\n")
