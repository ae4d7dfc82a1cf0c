"""
What a person sees in the terminal (issue 12, "Output"): the real C{beam}
command in a pseudo-terminal (pexpect) and in pipes, on loopback only.

Time bounds are generous on purpose (this machine is shared and loaded):
the banner is awaited for up to 20 s, and what is asserted is its order
relative to log lines, never how fast it came.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pexpect  # type: ignore[import-untyped]
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from beam import tap
from beam.cli import _parser

BEAM = str(Path(sys.executable).with_name("beam"))
#: Colour (SGR) escape codes.
SGR = re.compile(r"\x1b\[[0-9;]*m")
#: A node that stays on loopback: no mDNS multicast, no DNS server port.
QUIET_CONFIG = "mdns = false\n[dns]\nenabled = false\n"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "BEAM_HOME")}
    env.update(TERM="xterm-256color", COLUMNS="120", LINES="40")
    env.update(extra)
    return env


class _Node:
    """
    A home with a config that keeps the node on loopback, and a local TCP
    service to expose.
    """

    def __init__(self, case: SynchronousTestCase, config: str = QUIET_CONFIG) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="beam-term-"))
        case.addCleanup(lambda: subprocess.run(["rm", "-rf", str(self.home)], check=False))
        (self.home / "config.toml").write_text(config)
        self.service = socket.socket()
        self.service.bind(("127.0.0.1", 0))
        self.service.listen()
        case.addCleanup(self.service.close)
        self.port = self.service.getsockname()[1]

    def argv(self, *extra: str) -> list[str]:
        return ["--home", str(self.home), str(self.port), "--listen", "/ip4/127.0.0.1/tcp/0",
                "--no-register", *extra]

    def spawn(self, case: SynchronousTestCase, *extra: str, **env: str) -> Any:
        child = pexpect.spawn(BEAM, self.argv(*extra), env=_env(**env), encoding="utf-8",
                              timeout=20, dimensions=(40, 120))
        case.addCleanup(lambda: child.terminate(force=True) if child.isalive() else None)
        return child


def _stop(child: Any) -> str:
    """
    Ctrl-C, and everything the child printed after the last match.
    """
    child.sendintr()
    child.expect(pexpect.EOF, timeout=20)
    return str(child.before)


class ExposeTerminalTests(SynchronousTestCase):
    """
    C{beam PORT} in a terminal: the banner first, no Twisted internals,
    the log file has them.
    """

    def test_bannerFirstNoInternals(self) -> None:
        """
        The banner comes before any log line, and at the default
        verbosity nothing of Twisted's (ports "starting on", factories,
        object addresses) reaches the terminal; the log file, 0600 in a
        0700 directory, has all of it.
        """
        node = _Node(self)
        child = node.spawn(self)
        child.expect("Press Ctrl-C to stop.")
        before = str(child.before)
        self.assertIn("beam connect", before)
        self.assertTrue(before.lstrip().startswith("Sharing"), before)
        self.assertNotRegex(before, r"warning|error|\[\w")
        after = _stop(child)
        for internal in ("Factory", "starting on", "0x", "log_legacy", "Main loop terminated"):
            self.assertNotIn(internal, before + after)
        logFile = node.home / "logs" / "beam.log"
        text = logFile.read_text()
        self.assertIn("starting on", text)
        self.assertIn("Main loop terminated", text)
        self.assertEqual(logFile.stat().st_mode & 0o777, 0o600)
        self.assertEqual(logFile.parent.stat().st_mode & 0o777, 0o700)

    def test_verboseShowsInfo(self) -> None:
        """
        C{-v} shows Beam's info lines (after the banner), still without
        Twisted's.
        """
        node = _Node(self)
        child = node.spawn(self, "-v")
        child.expect("Press Ctrl-C to stop.")
        child.expect("control API listening on")
        after = str(child.before) + _stop(child)
        self.assertNotIn("starting on", after)

    def test_noColour(self) -> None:
        """
        With C{NO_COLOR} a terminal gets no colour codes, a warning
        included.
        """
        busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        busy.bind(("127.0.0.1", 0))
        self.addCleanup(busy.close)
        node = _Node(self, f"mdns = false\n[dns]\nport = {busy.getsockname()[1]}\n")
        child = node.spawn(self, NO_COLOR="1")
        child.expect("Press Ctrl-C to stop.")
        child.expect("warning: DNS server")
        output = str(child.before) + _stop(child)
        self.assertIsNone(SGR.search(output), repr(output))

    def test_colourWarning(self) -> None:
        """
        A terminal without C{NO_COLOR} gets C{warning:} in colour.
        """
        busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        busy.bind(("127.0.0.1", 0))
        self.addCleanup(busy.close)
        node = _Node(self, f"mdns = false\n[dns]\nport = {busy.getsockname()[1]}\n")
        child = node.spawn(self)
        child.expect("Press Ctrl-C to stop.")
        child.expect(r"\x1b\[[0-9;]*mwarning:\x1b\[0m DNS server")
        _stop(child)

    def test_pipedPlain(self) -> None:
        """
        Piped (not a terminal), stdout and stderr carry no escape codes
        at all, and the warning is a plain C{warning:} line.
        """
        busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        busy.bind(("127.0.0.1", 0))
        self.addCleanup(busy.close)
        node = _Node(self, f"mdns = false\n[dns]\nport = {busy.getsockname()[1]}\n")
        proc = subprocess.Popen([BEAM, *node.argv()], env=_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        self.addCleanup(lambda: proc.kill() if proc.poll() is None else None)
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "Press Ctrl-C" in line:
                break
        deadline = time.monotonic() + 20
        while "DNS server" not in (node.home / "logs" / "beam.log").read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(2)
        out, err = proc.communicate(timeout=20)
        self.assertNotIn("\x1b", "".join(lines) + out + err)
        self.assertIn("warning: DNS server", err)


class LogsCommandTests(SynchronousTestCase):
    """
    C{beam logs}: the log file, its tail, and following it.
    """

    def setUp(self) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="beam-term-"))
        self.addCleanup(lambda: subprocess.run(["rm", "-rf", str(self.home)], check=False))
        (self.home / "logs").mkdir(mode=0o700)
        self.log = self.home / "logs" / "beam.log"
        self.log.write_text("".join(f"2026-12-01T00:00:{i:02d}Z [beam.test] line {i}\n" for i in range(20)))

    def test_lastLines(self) -> None:
        """
        C{beam logs -n 5} prints the last five lines.
        """
        out = subprocess.run([BEAM, "--home", str(self.home), "logs", "-n", "5"], env=_env(),
                             capture_output=True, text=True, timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual([line.rsplit(" ", 1)[1] for line in out.stdout.splitlines()],
                         ["15", "16", "17", "18", "19"])

    def test_follow(self) -> None:
        """
        C{beam logs --follow} prints a line written after it started, and
        Ctrl-C ends it with exit status 130.
        """
        child = pexpect.spawn(BEAM, ["--home", str(self.home), "logs", "--follow", "-n", "1"], env=_env(),
                              encoding="utf-8", timeout=20)
        self.addCleanup(lambda: child.terminate(force=True) if child.isalive() else None)
        child.expect("line 19")
        with open(self.log, "a") as f:
            f.write("2026-12-01T00:01:00Z [beam.test] a new line\n")
        child.expect("a new line")
        child.sendintr()
        child.expect(pexpect.EOF)
        child.close()
        self.assertEqual(child.exitstatus, 130)

    def test_noLogYet(self) -> None:
        """
        Without a log file, C{beam logs} says so in one line and exits 1.
        """
        self.log.unlink()
        out = subprocess.run([BEAM, "--home", str(self.home), "logs"], env=_env(),
                             capture_output=True, text=True, timeout=30)
        self.assertEqual(out.returncode, 1)
        self.assertIn("no log yet", out.stderr)


class HelpAndTwistdTests(SynchronousTestCase):
    """
    Two fixes of issue 12: the help's examples and twistd's pid file.
    """

    def test_epilogKeepsLines(self) -> None:
        """
        The examples at the end of C{beam --help} are one per line.
        """
        text = _parser().format_help()
        examples = text[text.index("examples:"):].splitlines()
        self.assertTrue(examples[1].strip().startswith("beam 3000"), examples)
        self.assertTrue(examples[2].strip().startswith("beam connect"), examples)

    def test_twistdPidfileInHome(self) -> None:
        """
        Under twistd, whose default pid file is C{twistd.pid} in the
        working directory, C{twistd beam} puts it in the home; one named
        with C{--pidfile} stays where it was asked.
        """
        from twisted.scripts.twistd import ServerOptions

        home = tempfile.mkdtemp(prefix="beam-term-")
        self.addCleanup(lambda: subprocess.run(["rm", "-rf", home], check=False))
        config = ServerOptions()
        config.parseOptions(["-n", "beam", "--home", home])
        self.assertEqual(config["pidfile"], os.path.join(home, "twistd.pid"))
        config = ServerOptions()
        config.parseOptions(["-n", "--pidfile", "/tmp/elsewhere.pid", "beam", "--home", home])
        self.assertEqual(config["pidfile"], "/tmp/elsewhere.pid")
        options = tap.Options()
        options.parseOptions(["--home", home])  # no twistd around it: nothing to move
        self.assertRaises(usage.UsageError, tap.Options().parseOptions, ["--name", "x"])

    def test_gitignoreCoversTwistd(self) -> None:
        """
        C{.gitignore} covers C{twistd.pid} (and twistd's log) left by an
        older run in a checkout.
        """
        ignore = (Path(__file__).resolve().parents[2] / ".gitignore").read_text().splitlines()
        self.assertIn("twistd.pid", ignore)

    def test_verboseCounts(self) -> None:
        """
        C{-v} counts before and after the command (C{-vv} is 2), and does
        not hide C{beam PORT}'s port from the shortcut.
        """
        from beam import cli

        def parse(*argv: str) -> Any:
            return cli._parseArgs(_parser(), cli._rewritePortShortcut(list(argv)))

        self.assertEqual(parse("-v", "3000").verbose, 1)
        self.assertEqual(parse("-v", "3000", "-v").verbose, 2)
        self.assertEqual(parse("-vv", "daemon").verbose, 2)
        self.assertEqual(parse("status").verbose, 0)
