"""
The command line and twistd plugin, run as real processes on loopback.
"""

from __future__ import annotations

import io
import json
import select
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from twisted.internet import error as netError
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from beam import cli
from beam.daemon.control import controlSocketPath
from beam.errors import DialError
from beam.identity.keys import Identity

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]


def beam(*args: str, home: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "beam"), "--home", home, *args],
        capture_output=True, text=True, timeout=timeout,
    )


def readLine(proc: subprocess.Popen[str], timeout: float = 20) -> str:
    """
    One line of C{proc}'s stdout, failing instead of hanging forever.
    """
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise AssertionError(f"no output within {timeout} s")
    return proc.stdout.readline()


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CLITests(SynchronousTestCase):
    """
    C{beam id}, C{beam daemon} and C{beam ping}.
    """

    def setUp(self) -> None:
        self.home = self.mktemp()

    def startDaemon(self, home: str, ignoreSIGINT: bool = False) -> tuple[subprocess.Popen[str], dict]:
        """
        C{beam daemon --json} in its own process; with C{ignoreSIGINT}, as
        a shell starts a background job or C{nohup} does (SIGINT ignored).
        """
        proc = subprocess.Popen(
            [str(BIN / "beam"), "--home", home, "daemon", "--json",
             "--listen", "/ip4/127.0.0.1/tcp/0", "--listen", "/ip6/::1/tcp/0"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignoreSIGINT else None,
        )
        self.addCleanup(lambda: proc.poll() is None and (proc.kill(), proc.wait()))
        ready = json.loads(readLine(proc))
        return proc, ready

    def test_idIsStable(self) -> None:
        """
        C{beam id} creates the identity once (mode 0600) and prints the same
        peer ID every time, as text or JSON.
        """
        first = beam("id", home=self.home)
        self.assertEqual(first.returncode, 0, first.stderr)
        second = beam("id", "--json", home=self.home)
        pid = first.stdout.strip()
        self.assertTrue(pid.startswith("12D3KooW"))
        self.assertEqual(json.loads(second.stdout), {"peer_id": pid})
        mode = stat.S_IMODE((Path(self.home) / "identity.key").stat().st_mode)
        self.assertEqual(mode, 0o600)

    def test_daemonAndPing(self) -> None:
        """
        C{beam daemon --json} prints a ready event with /p2p/ addresses
        (IPv4 and IPv6); C{beam ping} reaches it with round-trip times; the
        daemon reports the connection and exits cleanly on SIGTERM (what
        systemd and kill send; SIGINT is ignored by background jobs, so the
        test does not depend on how the test runner was started).
        """
        proc, ready = self.startDaemon(self.home)
        self.assertEqual(ready["event"], "ready")
        peer = ready["peer_id"]
        self.assertEqual(peer, beam("id", home=self.home).stdout.strip())
        addrs = ready["addrs"]
        self.assertTrue(any(a.startswith("/ip4/127.0.0.1/tcp/") for a in addrs))
        self.assertTrue(any(a.startswith("/ip6/::1/tcp/") for a in addrs))
        self.assertTrue(all(a.endswith("/p2p/" + peer) for a in addrs))
        for addr in addrs:
            out = beam("ping", addr, "--count", "2", "--json", home=self.mktemp())
            self.assertEqual(out.returncode, 0, out.stderr)
            events = [json.loads(line) for line in out.stdout.splitlines()]
            self.assertEqual([e["event"] for e in events], ["connected", "pong", "pong", "summary"])
            self.assertEqual(events[0]["peer_id"], peer)
            self.assertTrue(all(e["rtt_ms"] >= 0 for e in events[1:3]))
        text = beam("ping", addrs[0], "-c", "1", home=self.mktemp())
        self.assertIn("seq=1 time=", text.stdout)
        connected = json.loads(readLine(proc))
        self.assertEqual(connected["event"], "connected")
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(proc.wait(timeout=20), 0)

    def test_sigtermWithSIGINTIgnored(self) -> None:
        """
        A daemon started with SIGINT ignored (a background job, C{nohup})
        still stops cleanly, exit status 0 and no traceback, on SIGTERM.
        """
        proc, ready = self.startDaemon(self.home, ignoreSIGINT=True)
        self.assertEqual(ready["event"], "ready")
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(proc.wait(timeout=20), 0)
        assert proc.stderr is not None
        self.assertNotIn("Traceback", proc.stderr.read())

    def test_pingErrors(self) -> None:
        """
        Wrong peer ID, nothing listening and a malformed multiaddr each give
        a one-line error and exit status 1, never a traceback.
        """
        proc, ready = self.startDaemon(self.home)
        addr = ready["addrs"][0]
        other = Identity.generate().peerID
        wrong = addr.rsplit("/p2p/", 1)[0] + f"/p2p/{other}"
        cases = {
            wrong: f"dialled {other} but the peer is {ready['peer_id']}",
            f"/ip4/127.0.0.1/tcp/{freePort()}": "refused",
            "/ip4/999.1.1.1/tcp/1": "invalid",
        }
        for target, expected in cases.items():
            out = beam("ping", target, "-c", "1", home=self.mktemp())
            self.assertEqual(out.returncode, 1, out.stderr)
            self.assertTrue(out.stderr.startswith("beam: "), out.stderr)
            self.assertIn(expected, out.stderr.lower() if expected.islower() else out.stderr)
            self.assertNotIn("Traceback", out.stderr)
            self.assertEqual(len(out.stderr.strip().splitlines()), 1, out.stderr)


class RelayCommandTests(SynchronousTestCase):
    """
    C{beam relay} and the NAT lines of C{beam status}.
    """

    def test_relay(self) -> None:
        """
        C{beam relay --json} runs a daemon relaying whole tunnels and
        prints its relay addresses; C{beam status --json} shows the open
        relay service and the reachability, and C{beam network status}
        says it in words.
        """
        home = self.mktemp()
        proc = subprocess.Popen(
            [str(BIN / "beam"), "--home", home, "relay", "--json", "--listen", "/ip4/127.0.0.1/tcp/0"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.addCleanup(lambda: proc.poll() is None and (proc.kill(), proc.wait()))
        ready = json.loads(readLine(proc))
        self.assertEqual((ready["event"], ready["relay"]), ("ready", "open"))
        self.assertEqual((ready["limits"]["duration"], ready["limits"]["data"]), (0, 0))
        self.assertTrue(ready["addrs"][0].startswith("/ip4/127.0.0.1/tcp/"))
        self.assertTrue(ready["addrs"][0].endswith("/p2p/" + ready["peer_id"]))
        status = json.loads(beam("status", "--json", home=home).stdout)
        self.assertEqual(status["reachability"], "unknown")
        self.assertTrue(status["nat"]["relay_service"]["open"])
        self.assertIn("/libp2p/circuit/relay/0.2.0/hop", status["protocols"])
        text = beam("network", "status", home=home).stdout
        self.assertIn("relay service: open (whole tunnels), 0 reservations, 0 circuits", text)
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(proc.wait(timeout=20), 0)

    def test_natWarning(self) -> None:
        """
        C{beam PORT} warns when the node has only private (LAN) addresses
        and no relay or confirmed address, or AutoNAT found it private;
        not for a node on loopback only, a public one, or one with a relay
        address.
        """
        me = Identity.generate().peerID
        lan = {"addrs": [f"/ip4/192.168.1.5/tcp/4001/p2p/{me}", f"/ip4/127.0.0.1/tcp/4001/p2p/{me}"],
               "reachability": "unknown", "confirmed_addrs": [], "relay_addrs": []}
        self.assertEqual(cli.natWarning(lan), cli.NAT_WARNING)
        self.assertEqual(cli.NAT_WARNING, "this node is behind a NAT and has no relay yet: "
                                          "peers outside your network cannot reach it yet")
        self.assertEqual(cli.natWarning({**lan, "addrs": ["/ip4/127.0.0.1/tcp/1"], "reachability": "private"}),
                         cli.NAT_WARNING)
        self.assertIsNone(cli.natWarning({**lan, "addrs": ["/ip4/127.0.0.1/tcp/1"]}))
        self.assertIsNone(cli.natWarning({**lan, "addrs": ["/ip4/8.8.8.8/tcp/1", *lan["addrs"]]}))
        self.assertIsNone(cli.natWarning({**lan, "relay_addrs": [f"/ip4/8.8.8.8/tcp/1/p2p/{me}/p2p-circuit"]}))


def parse(*argv: str) -> Any:
    """
    The namespace C{beam ARGV...} runs with.
    """
    parser = cli._parser()
    return cli._parseArgs(parser, cli._rewritePortShortcut(list(argv)))


def runMain(*argv: str) -> tuple[int, str, str]:
    """
    Run L{cli.main} in this process (for commands that need no reactor):
    its exit status, stdout and stderr.
    """
    out, err = io.StringIO(), io.StringIO()
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    try:
        cli.main(list(argv))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    else:
        code = 0
    finally:
        sys.stdout, sys.stderr = saved
    return code, out.getvalue(), err.getvalue()


def jsonError(test: SynchronousTestCase, stdout: str) -> str:
    """
    The message of the one JSON error object that is the last line of
    C{stdout}.
    """
    lines = stdout.strip().splitlines()
    test.assertTrue(lines, "nothing on stdout")
    obj = json.loads(lines[-1])
    test.assertEqual(set(obj), {"event", "error"}, obj)
    test.assertEqual(obj["event"], "error")
    test.assertIsInstance(obj["error"], str)
    test.assertNotIn("\n", obj["error"])
    for word in ("Traceback", "Failure", "<class"):
        test.assertNotIn(word, obj["error"])
    return obj["error"]


class ArgumentTests(SynchronousTestCase):
    """
    Global options work before and after the command, and C{beam PORT}
    still means C{beam expose PORT}.
    """

    def test_globalOptionsAfterCommand(self) -> None:
        """
        C{--home}, C{--json}, C{--bootstrap}, C{--log-format} and C{--quiet}
        mean the same after the command as before it.
        """
        boot = "/ip4/127.0.0.1/tcp/4001/p2p/" + str(Identity.generate().peerID)
        options = ["--home", "/h", "--json", "--bootstrap", boot, "--log-format", "json", "-q"]
        for command in (["daemon"], ["status"], ["ping", "/ip4/127.0.0.1/tcp/1"], ["expose", "3000"],
                        ["connect", "beam://x"], ["network", "peers"], ["id"]):
            before, after = parse(*options, *command), parse(*command, *options)
            self.assertEqual(vars(before), vars(after), command)
            self.assertEqual((after.home, after.json, after.bootstrap, after.log_format, after.quiet),
                             ("/h", True, [boot], "json", True))
        defaults = parse("daemon")
        self.assertEqual((defaults.home, defaults.json, defaults.bootstrap, defaults.log_format,
                          defaults.quiet, defaults.listen), (None, False, None, None, False, None))
        self.assertFalse([k for k in vars(defaults) if k.startswith("_")], vars(defaults))

    def test_repeatedAndLater(self) -> None:
        """
        Repeatable options accumulate across both positions (C{--listen}
        too, for the commands that run a node); for the others the later
        one wins.
        """
        args = parse("--bootstrap", "/a", "--listen", "/l1", "daemon", "--bootstrap", "/b", "--listen", "/l2")
        self.assertEqual((args.bootstrap, args.listen), (["/a", "/b"], ["/l1", "/l2"]))
        self.assertEqual(parse("--listen", "/l1", "connect", "beam://x").listen, ["/l1"])
        self.assertEqual(parse("--home", "/first", "status", "--home", "/second").home, "/second")
        self.assertEqual(parse("--log-format", "json", "status", "--log-format", "text").log_format, "text")

    def test_listenBeforeOtherCommands(self) -> None:
        """
        C{--listen} before a command that runs no node is a usage error,
        as it is after one.
        """
        self.assertRaises(cli.UsageError, parse, "--listen", "/l", "status")
        self.assertRaises(cli._UsageFailed, parse, "status", "--listen", "/l")

    def test_portShortcut(self) -> None:
        """
        C{beam PORT} is C{beam expose PORT} with any global options before
        or after the port, whether or not they take a value.
        """
        for argv in (["3000"], ["--home", "/h", "3000"], ["--home=/h", "3000"], ["-q", "3000"],
                     ["--json", "--bootstrap", "/b", "3000"], ["--listen", "/l", "3000", "--name", "web"],
                     ["--log-format", "json", "3000", "--json"]):
            args = parse(*argv)
            self.assertEqual((args.command, args.port), ("expose", 3000), argv)
        self.assertEqual(parse("--listen", "/l", "3000").listen, ["/l"])
        self.assertEqual(parse("3000", "--bootstrap", "/b").bootstrap, ["/b"])
        self.assertEqual(cli._rewritePortShortcut(["--", "3000"]), ["--", "3000"])
        self.assertEqual(cli._rewritePortShortcut(["status"]), ["status"])

    def test_usageErrorsAsText(self) -> None:
        """
        Without C{--json} a command line that does not parse prints the
        command's usage and one C{beam:} line on stderr, exit status 2.
        """
        code, out, err = runMain("daemon", "--frob")
        self.assertEqual((code, out), (2, ""))
        self.assertTrue(err.startswith("usage: beam daemon"), err)
        self.assertEqual(err.strip().splitlines()[-1],
                         "beam: unrecognized arguments: --frob (see `beam daemon --help`)")

    def test_connectPortAndBindChecked(self) -> None:
        """
        C{beam connect --port 99999}, a non-number port and C{--bind
        999.0.0.1} are usage errors before anything starts (exit status
        2, one line); a valid IPv6 bind address is normalised.
        """
        target = "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWQchxNaHT1nsGLfgPRi6HUGWW1qBrrSHu5vN6WvxJGqNU"
        for flags, words in ((["--port", "99999"], "99999 is not a port number"),
                             (["--port", "abc"], "'abc' is not a port number"),
                             (["--bind", "999.0.0.1"], "'999.0.0.1' is not an IP address")):
            code, out, err = runMain("connect", target, *flags)
            self.assertEqual((code, out), (2, ""), err)
            self.assertIn(words, err.strip().splitlines()[-1])
        self.assertEqual(parse("connect", target, "--bind", "0:0::1").bind, "::1")

    def test_usageErrorsAsJSON(self) -> None:
        """
        With C{--json} anywhere, a command line that does not parse, or no
        command at all, is one JSON error object on stdout, exit status 2,
        nothing on stderr.
        """
        for argv in (["daemon", "--frob", "--json"], ["--json", "ping"], ["--json", "status", "--listen", "/l"],
                     ["--json", "--listen", "/l", "id"], ["--json"], ["--json", "nonsense"]):
            code, out, err = runMain(*argv)
            self.assertEqual((code, err), (2, ""), argv)
            self.assertTrue(jsonError(self, out), argv)
            self.assertEqual(len(out.strip().splitlines()), 1)

    def test_commandErrorsAsJSON(self) -> None:
        """
        A command that fails (here: a home directory that cannot be
        created) is one JSON error object with C{--json}, else a C{beam:}
        line on stderr; exit status 1 either way.
        """
        blocker = Path(self.mktemp())
        blocker.write_text("a file, not a directory")
        code, out, err = runMain("--home", str(blocker / "home"), "id", "--json")
        self.assertEqual((code, err), (1, ""))
        self.assertIn("cannot create home directory", jsonError(self, out))
        code, out, err = runMain("id", "--home", str(blocker / "home"))
        self.assertEqual((code, out), (1, ""))
        self.assertTrue(err.startswith("beam: cannot create home directory"), err)

    def test_reportError(self) -> None:
        """
        Errors are reported in plain words, Twisted's wrapped in Failures
        too; a bug says "unexpected error" and adds its traceback.
        """
        def report(error: Any, asJSON: bool) -> tuple[str, str]:
            out, err = io.StringIO(), io.StringIO()
            cli._reportError(error, asJSON, out, err)
            return out.getvalue(), err.getvalue()

        nested = Failure(Failure(netError.ConnectionDone()))
        self.assertEqual(report(nested, False), ("", "beam: the connection was closed\n"))
        self.assertEqual(report(nested, True), ('{"event": "error", "error": "the connection was closed"}\n', ""))
        self.assertEqual(report(Failure(DialError("could not connect to x")), False),
                         ("", "beam: could not connect to x\n"))
        try:
            raise KeyError("missing")
        except KeyError:
            bug = Failure()
        out, err = report(bug, False)
        self.assertTrue(err.startswith("beam: unexpected error: 'missing'\nTraceback"), err)
        out, err = report(bug, True)
        obj = json.loads(out)
        self.assertEqual(obj["error"], "unexpected error: 'missing'")
        self.assertIn("KeyError", obj["traceback"])


class CLIErrorTests(SynchronousTestCase):
    """
    Real C{beam} processes: errors are one line, or one JSON object with
    C{--json}; global options after the command.
    """

    def test_jsonErrors(self) -> None:
        """
        With C{--json} (before or after the command) the errors of several
        commands are each one JSON object on stdout, plain words, exit
        status 1, nothing on stderr.
        """
        home = self.mktemp()
        peer = Identity.generate().peerID
        cases = [
            (["status"], "no Beam node is running"),
            (["stop", "web"], "no Beam node is running"),
            (["network", "peers"], "no Beam node is running"),
            (["ping", f"/ip4/127.0.0.1/tcp/{freePort()}/p2p/{peer}", "-c", "1"], "refused"),
            (["ping", "/ip4/999.1.1.1/tcp/1"], "invalid"),
            (["connect", "beam://nonsense"], ""),
            (["expose", "99999"], "port must be between 1 and 65535"),
        ]
        for argv, expected in cases:
            for where in ("before", "after"):
                full = ["--json", *argv] if where == "before" else [*argv, "--json"]
                out = beam(*full, home=home)
                self.assertEqual((out.returncode, out.stderr), (1, ""), full)
                self.assertEqual(len(out.stdout.strip().splitlines()), 1, out.stdout)
                self.assertIn(expected, jsonError(self, out.stdout).lower() if expected.islower()
                              else jsonError(self, out.stdout))

    def test_bootstrapAfterCommand(self) -> None:
        """
        C{beam daemon --bootstrap ADDR} (the option after the command) is
        accepted and used: the new node joins through ADDR, which sees it
        connect.
        """
        first = subprocess.Popen(
            [str(BIN / "beam"), "--home", self.mktemp(), "daemon", "--json", "-q",
             "--listen", "/ip4/127.0.0.1/tcp/0"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.addCleanup(lambda: first.poll() is None and (first.kill(), first.wait()))
        ready = json.loads(readLine(first))
        second = subprocess.Popen(
            [str(BIN / "beam"), "daemon", "--home", self.mktemp(), "--json",
             "--listen", "/ip4/127.0.0.1/tcp/0", "--bootstrap", ready["addrs"][0], "--log-format", "json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.addCleanup(lambda: second.poll() is None and (second.kill(), second.wait()))
        joined = json.loads(readLine(second))
        self.assertEqual(joined["event"], "ready", joined)
        deadline = time.monotonic() + 20
        while True:
            event = json.loads(readLine(first, timeout=max(0.1, deadline - time.monotonic())))
            if event["event"] == "connected":
                break
        self.assertEqual(event["peer_id"], joined["peer_id"])
        for proc in (second, first):
            proc.send_signal(signal.SIGTERM)
            self.assertEqual(proc.wait(timeout=20), 0)

    def test_cutOffAnswerInPlainWords(self) -> None:
        """
        When the node's control socket hangs up in the middle of an
        answer, C{beam status} says so in one plain line, never with a
        Twisted repr or a traceback.
        """
        home = Path(self.mktemp())
        home.mkdir()
        path = controlSocketPath(home)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(path))
        server.listen()
        server.settimeout(30)
        self.addCleanup(server.close)

        def serve() -> None:
            for _ in range(2):
                try:
                    conn, _ = server.accept()
                except OSError:
                    return
                with conn:
                    conn.recv(65536)
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: 1000\r\n\r\n{\"peer")

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        for extra in ([], ["--json"]):
            out = beam("status", *extra, home=str(home))
            self.assertEqual(out.returncode, 1, out)
            text = jsonError(self, out.stdout) if extra else out.stderr
            self.assertNotIn("Traceback", out.stdout + out.stderr)
            self.assertNotIn("Failure", out.stdout + out.stderr)
            self.assertNotIn("unexpected", text)
            self.assertTrue(text.rstrip().endswith("the connection was closed"), text)
            if not extra:
                self.assertEqual(len(text.strip().splitlines()), 1, text)
                self.assertTrue(text.startswith("beam: "), text)


class TwistdTests(SynchronousTestCase):
    """
    The twistd plugin.
    """

    def test_helpListsBeam(self) -> None:
        """
        C{twistd --help} lists the beam plugin, and the plugin cache is
        (re)generated beside the plugin.
        """
        cache = REPO / "twisted" / "plugins" / "dropin.cache"
        if cache.exists():
            cache.unlink()
        out = subprocess.run([str(BIN / "twistd"), "--help"], capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("beam", out.stdout)
        self.assertIn("Beam node", out.stdout)
        self.assertTrue(cache.exists(), "twistd did not regenerate dropin.cache")

    def test_twistdRunsNode(self) -> None:
        """
        C{twistd -n beam --listen ...} runs a node that C{beam ping} reaches,
        using the identity in C{--home}; SIGTERM stops it.
        """
        home = self.mktemp()
        peer = beam("id", home=home).stdout.strip()
        port = freePort()
        proc = subprocess.Popen(
            [str(BIN / "twistd"), "-n", "--pidfile=", "--logfile=-", "beam",
             "--home", home, "--listen", f"/ip4/127.0.0.1/tcp/{port}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.addCleanup(lambda: proc.poll() is None and (proc.kill(), proc.wait()))
        deadline = time.monotonic() + 30
        while True:
            out = beam("ping", f"/ip4/127.0.0.1/tcp/{port}/p2p/{peer}", "-c", "1", home=self.mktemp())
            if out.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        self.assertEqual(out.returncode, 0, out.stderr)
        proc.send_signal(signal.SIGTERM)
        # twistd re-raises the signal after a clean shutdown.
        self.assertIn(proc.wait(timeout=20), (0, -signal.SIGTERM))
        log = proc.stdout.read()
        self.assertIn("Main loop terminated", log)
        self.assertNotIn("Traceback", log)

    def test_badOptions(self) -> None:
        """
        An invalid --listen is a usage error, not a traceback.
        """
        out = subprocess.run(
            [str(BIN / "twistd"), "-n", "--pidfile=", "beam", "--listen", "/ip4/nope"],
            capture_output=True, text=True, timeout=60,
        )
        self.assertNotEqual(out.returncode, 0)
        self.assertIn("invalid", (out.stdout + out.stderr).lower())
        self.assertNotIn("Traceback", out.stdout + out.stderr)
