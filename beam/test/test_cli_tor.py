"""
Tor on the command line (issue 10): C{--tor [MODE]}, C{--tor-control},
C{beam connect --tor}, Tor in C{beam status}, and the progress line while
a node waits for Tor (L{beam.cli.TorProgress}).  No tor runs here: the
control socket and the daemon are faked.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from beam import cli
from beam.daemon.status import DaemonStatus, networkJSON, statusJSON
from beam.p2p.host.status import ConnectionStatus, NodeStatus
from beam.test.test_cli import parse

ONION = "/onion3/" + "a" * 56 + ":4001"
TARGET = "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWQchxNaHT1nsGLfgPRi6HUGWW1qBrrSHu5vN6WvxJGqNU"


def torStatus(state: str, progress: int = 0, summary: str = "", mode: str = "always", **extra: Any) -> dict[str, Any]:
    """
    A C{"tor"} status section as L{beam.daemon.tor.TorService.status}
    gives it.
    """
    status: dict[str, Any] = {
        "mode": mode, "state": state, "progress": progress, "summary": summary, "launched": True,
        "control": None, "socks": None, "onion": None, "error": None, "connections": 0,
    }
    status.update(extra)
    return status


class ArgumentTests(SynchronousTestCase):
    """
    C{--tor [MODE]} and C{--tor-control} on the commands that run a node;
    C{--tor} on C{beam connect}.
    """

    def test_torMode(self) -> None:
        """
        C{--tor} alone means C{always}; a mode may follow, with or without
        C{=}; absent, the configuration decides (L{None}).
        """
        self.assertEqual(parse("3000").tor, None)
        self.assertEqual(parse("3000", "--tor").tor, "always")
        self.assertEqual(parse("3000", "--tor", "--name", "web").tor, "always")
        self.assertEqual(parse("3000", "--tor=fallback").tor, "fallback")
        self.assertEqual(parse("3000", "--tor", "fallback").tor, "fallback")
        self.assertEqual(parse("daemon", "--tor").tor, "always")
        self.assertEqual(parse("daemon", "--tor=off").tor, "off")
        self.assertEqual(parse("register", "alice", "--tor", "always").tor, "always")
        self.assertRaises(cli._UsageFailed, parse, "3000", "--tor=sometimes")
        self.assertRaises(cli._UsageFailed, parse, "status", "--tor")

    def test_torControl(self) -> None:
        """
        C{--tor-control ENDPOINT} is taken as written (the configuration
        normalises it).
        """
        self.assertEqual(parse("3000", "--tor", "--tor-control", "9051").tor_control, "9051")
        self.assertEqual(parse("daemon", "--tor-control=unix:/run/tor/control").tor_control, "unix:/run/tor/control")
        self.assertEqual(parse("connect", TARGET, "--tor-control", "9051").tor_control, "9051")
        self.assertEqual(parse("3000").tor_control, None)

    def test_connectTor(self) -> None:
        """
        C{beam connect --tor} is a switch: it takes no mode.
        """
        self.assertIs(parse("connect", TARGET, "--tor").tor, True)
        self.assertIs(parse("connect", TARGET).tor, False)
        self.assertRaises(cli._UsageFailed, parse, "connect", TARGET, "--tor=fallback")

    def test_helpSaysWhatModesDo(self) -> None:
        """
        The help of C{--tor} says what each mode does.
        """
        text = cli._parser().commands["expose"].format_help()
        for words in ("always = listen and dial only through Tor", "fallback = also publish an onion address",
                      "off = no Tor"):
            self.assertIn(words, " ".join(text.split()))


class ConfigFromFlagsTests(SynchronousTestCase):
    """
    The flags over config.toml (L{cli._loadConfig}).
    """

    def load(self, fileText: str, *argv: str) -> Any:
        home = Path(self.mktemp())
        home.mkdir()
        (home / "config.toml").write_text(fileText)
        return cli._loadConfig(parse("--home", str(home), *argv))

    def test_flagsOverFile(self) -> None:
        """
        C{--tor MODE} and C{--tor-control} replace the file's, keeping its
        other Tor settings.
        """
        fileText = '[tor]\nmode = "fallback"\nport = 4242\n'
        self.assertEqual(self.load(fileText, "3000").tor.mode, "fallback")
        tor = self.load(fileText, "3000", "--tor", "--tor-control", "9051").tor
        self.assertEqual((tor.mode, tor.control, tor.port), ("always", "tcp:host=127.0.0.1:port=9051", 4242))
        self.assertEqual(self.load(fileText, "daemon", "--tor", "off").tor.mode, "off")

    def test_connectRunsATorNode(self) -> None:
        """
        A node C{beam connect --tor} starts runs Tor C{always}, or
        C{fallback} when the file says so; without C{--tor} the file
        decides.
        """
        self.assertEqual(self.load("", "connect", TARGET, "--tor").tor.mode, "always")
        self.assertEqual(self.load('tor = "fallback"\n', "connect", TARGET, "--tor").tor.mode, "fallback")
        self.assertEqual(self.load('tor = "always"\n', "connect", TARGET, "--tor").tor.mode, "always")
        self.assertEqual(self.load('tor = "fallback"\n', "connect", TARGET).tor.mode, "fallback")
        self.assertEqual(self.load("", "connect", TARGET).tor.mode, "off")


    def test_torOnlyHomeStaysOnTor(self) -> None:
        """
        A home whose node ran Tor-only keeps every later command on Tor
        (its peer ID has never been seen from this machine's address)
        until told otherwise: C{--tor off} or C{--tor fallback}, which
        also forget it, or a mode in config.toml.
        """
        home = Path(self.mktemp())
        home.mkdir()
        (home / "config.toml").write_text("")
        cli._rememberTorMode(home, "always", explicit=True)
        self.assertEqual(self.loadHome(home, "connect", TARGET).tor.mode, "always")
        self.assertEqual(self.loadHome(home, "3000").tor.mode, "always")
        self.assertEqual(self.loadHome(home, "3000", "--tor", "fallback").tor.mode, "fallback")
        (home / "config.toml").write_text('tor = "fallback"\n')
        self.assertEqual(self.loadHome(home, "3000").tor.mode, "fallback")
        cli._rememberTorMode(home, "off", explicit=True)
        (home / "config.toml").write_text("")
        self.assertEqual(self.loadHome(home, "3000").tor.mode, "off")
        cli._rememberTorMode(home, "always", explicit=False)
        cli._rememberTorMode(home, "off", explicit=False)
        self.assertEqual(self.loadHome(home, "3000").tor.mode, "always", "only an explicit mode forgets it")

    def loadHome(self, home: Path, *argv: str) -> Any:
        return cli._loadConfig(parse("--home", str(home), *argv))

    def test_directCommandsRefuseAlways(self) -> None:
        """
        C{beam ping} (its own TCP node, the home's peer ID) and C{beam
        relay} (reached at its IP address by definition) refuse to run in
        a home whose Tor mode is C{always}: either would tie the identity
        to this machine's address.
        """
        home = Path(self.mktemp())
        home.mkdir()
        (home / "config.toml").write_text('tor = "always"\n')
        for argv in (("ping", TARGET), ("relay",)):
            args = parse("--home", str(home), *argv)
            command = cli.cmdPing if argv[0] == "ping" else cli.cmdRelay
            d = ensureDeferred(command(Clock(), args, cli._Out(io.StringIO(), False)))
            f = self.failureResultOf(d, cli.UsageError)
            self.assertIn("always", str(f.value))


class FakeControlClient:
    """
    A control socket client answering from canned statuses, recording
    each request.

    @ivar statuses: the answers to C{GET /v1/status}, in turn (the last
        one repeats).
    """

    requests: list[tuple[str, str, Any]]
    statuses: list[dict[str, Any]]

    def __init__(self, reactor: Any, home: Any) -> None:
        self.requests = FakeControlClient.requests
        self.statuses = FakeControlClient.statuses

    def request(self, method: str, path: str, body: Any = None) -> Deferred[dict[str, Any]]:
        self.requests.append((method, path, body))
        if path == "/v1/status":
            return succeed(self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0])
        if path == "/v1/forwards":
            return succeed({"name": "8080", "listen": "127.0.0.1:8080", "peer_id": "12D3KooWPeer",
                            "service": "web"})
        raise AssertionError(f"unexpected request {method} {path}")


class FakeReactor(Clock):
    def addSystemEventTrigger(self, *args: Any) -> None:
        pass


class ConnectTests(SynchronousTestCase):
    """
    C{beam connect --tor}: with a running node, C{"tor": true} in the
    forward's request; with its own node, C{tor=True} to the forwards
    service.
    """

    def setUp(self) -> None:
        from beam.daemon.control import client, socket

        FakeControlClient.requests = []
        FakeControlClient.statuses = [{"peer_id": "12D3KooWSelf"}]
        self.patch(client, "ControlClient", FakeControlClient)
        self.patch(socket, "nodeRunning", lambda home: True)
        self.stdout, self.stderr = io.StringIO(), io.StringIO()
        self.patch(sys, "stderr", self.stderr)
        self.reactor = FakeReactor()

    def connect(self, *argv: str) -> Deferred[int]:
        args = parse("--home", self.mktemp(), "connect", *argv)
        return ensureDeferred(cli.cmdConnect(self.reactor, args, cli._Out(self.stdout, False)))

    def test_bodySaysTor(self) -> None:
        """
        C{"tor": true} is in the body of C{POST /v1/forwards}, and only
        with C{--tor}.
        """
        self.connect(TARGET, "--tor")
        (post,) = [r for r in FakeControlClient.requests if r[0] == "POST"]
        self.assertEqual(post[1:], ("/v1/forwards", {"target": TARGET, "bind": "127.0.0.1", "compress": False,
                                                     "udp": False, "tor": True}))
        self.assertIn("listening on 127.0.0.1:8080 -> 12D3KooWPeer/web", self.stdout.getvalue())
        FakeControlClient.requests.clear()
        self.connect(TARGET)
        (post,) = [r for r in FakeControlClient.requests if r[0] == "POST"]
        self.assertNotIn("tor", post[2])

    def test_waitsForTor(self) -> None:
        """
        While the running node's Tor bootstraps, the forward waits, and
        the progress is shown (one line per state or 10 points on a
        pipe); once Tor is ready the forward is asked for.
        """
        FakeControlClient.statuses = [
            {"tor": torStatus("bootstrapping", 10, "Handshaking")},
            {"tor": torStatus("bootstrapping", 15, "Handshaking")},
            {"tor": torStatus("bootstrapping", 50, "Loading relay descriptors")},
            {"tor": torStatus("ready", 100, "Done", onion=ONION)},
        ]
        d = self.connect(TARGET, "--tor")
        self.assertFalse([r for r in FakeControlClient.requests if r[0] == "POST"])
        self.reactor.advance(cli.TOR_POLL_INTERVAL)
        self.reactor.advance(cli.TOR_POLL_INTERVAL)
        self.assertFalse([r for r in FakeControlClient.requests if r[0] == "POST"])
        self.reactor.advance(cli.TOR_POLL_INTERVAL)
        self.assertTrue([r for r in FakeControlClient.requests if r[0] == "POST"])
        self.assertNoResult(d)
        self.assertEqual(self.stderr.getvalue().splitlines(), [
            "tor: bootstrapping 10 % (Handshaking)",
            "tor: bootstrapping 50 % (Loading relay descriptors)",
            f"tor: always · ready · {ONION} · 0 connections over Tor",
        ])

    def test_warnsAboutFlagsOfARunningNode(self) -> None:
        """
        C{--tor-control} cannot change a node that already runs: a
        warning says so.
        """
        self.connect(TARGET, "--tor", "--tor-control", "9051")
        self.assertIn("a node already runs for this home (Tor: off)", self.stderr.getvalue())

    def test_ownNode(self) -> None:
        """
        Without a running node, C{beam connect --tor} starts one with Tor
        (L{cli._loadConfig} chooses the mode) and asks its forwards
        service for a forward with C{tor=True}.
        """
        from beam.daemon.control import socket

        self.patch(socket, "nodeRunning", lambda home: False)
        self.patch(cli, "_startLogging", lambda args, config: None)
        calls: list[tuple[Any, dict[str, Any]]] = []

        class Forwards:
            def add(self, *args: Any, **kw: Any) -> Deferred[Any]:
                calls.append((args, kw))
                return succeed({"name": "8080", "listen": "127.0.0.1:8080", "peer_id": "12D3KooWPeer",
                                "service": "web"})

        class Daemon:
            forwards = Forwards()

        configs = []

        async def runDaemon(reactor: Any, args: Any, config: Any, **kw: Any) -> Any:
            configs.append(config)
            return Daemon()

        self.patch(cli, "_runDaemon", runDaemon)
        self.connect(TARGET, "--tor")
        self.connect(TARGET)
        self.assertEqual([kw for _, kw in calls], [{"acceptNewKey": False, "tor": True}, {"acceptNewKey": False}])
        self.assertEqual([c.tor.mode for c in configs], ["always", "off"])


class StatusTextTests(SynchronousTestCase):
    """
    Tor in C{beam status} and C{beam network status}.
    """

    def lines(self, tor: dict[str, Any] | None, connections: tuple[ConnectionStatus, ...] = ()) -> list[str]:
        node = NodeStatus(peerID="12D3KooWSelf", connections=connections)
        sections = (("tor", tor),) if tor is not None else ()
        return cli.statusText(statusJSON(DaemonStatus(node=node, sections=sections))).splitlines()

    def test_eachState(self) -> None:
        """
        One line per state: ready with the onion address and connections
        over Tor, the bootstrap percentage and tor's summary while it
        starts, the error when it failed (and that the node runs without
        Tor in fallback); nothing when Tor is off.
        """
        cases = [
            (torStatus("ready", 100, mode="always", onion=ONION, connections=2, socks="127.0.0.1:9050"),
             [f"tor: always · ready · {ONION} · 2 connections over Tor", "  launched by Beam, SOCKS 127.0.0.1:9050"]),
            (torStatus("ready", 100, mode="fallback", onion=ONION, connections=1, launched=False,
                       control="unix:path=/run/tor/control"),
             [f"tor: fallback · ready · {ONION} · 1 connection over Tor", "  attached at unix:path=/run/tor/control"]),
            (torStatus("starting", summary="launching tor"), ["tor: starting (launching tor)", "  launched by Beam"]),
            (torStatus("bootstrapping", 45, "Loading relay descriptors"),
             ["tor: bootstrapping 45 % (Loading relay descriptors)", "  launched by Beam"]),
            (torStatus("publishing", 100, "uploading descriptors"),
             ["tor: publishing the onion service (uploading descriptors)", "  launched by Beam"]),
            (torStatus("failed", error="tor exited: code 1"), ["tor: failed: tor exited: code 1"]),
            (torStatus("failed", mode="fallback", error="timed out"),
             ["tor: failed: timed out (running without Tor)"]),
            (torStatus("stopped"), ["tor: stopped"]),
        ]
        for tor, expected in cases:
            lines = self.lines(tor)
            first = next(i for i, line in enumerate(lines) if line.startswith("tor: "))
            self.assertEqual(lines[first:first + len(expected)], expected, tor)
            self.assertTrue(lines[first + len(expected)].startswith("connections: "), lines)
        for off in ({"mode": "off", "state": "off"}, None):
            self.assertFalse([line for line in self.lines(off) if "tor" in line.lower()], off)

    def test_connectionsOverTor(self) -> None:
        """
        A connection over the C{tor} transport says so, in C{beam status}
        and C{beam network status}.
        """
        conn = ConnectionStatus(peerID="12D3KooWPeer", direction="inbound", transport="tor", limited=False,
                                remoteAddr=ONION, localAddr=ONION, security="/noise", muxer="/yamux/1.0.0",
                                streams=1)
        self.assertIn(f"  12D3KooWPeer inbound over Tor {ONION} /noise streams 1",
                      self.lines(torStatus("ready", 100, onion=ONION, connections=1), (conn,)))
        node = NodeStatus(peerID="12D3KooWSelf", connections=(conn,))
        network = networkJSON(DaemonStatus(node=node, sections=(("tor", torStatus("ready", onion=ONION)),)))
        self.assertEqual(network["connection_paths"], {"tor": 1})
        self.assertEqual(network["tor"]["onion"], ONION)
        text = cli.networkText("status", network).splitlines()
        self.assertIn("connections: 1 (1 tor)", text)
        self.assertIn(f"tor: always · ready · {ONION} · 0 connections over Tor", text)

    def test_jsonAsIs(self) -> None:
        """
        C{beam status --json} carries the section unchanged.
        """
        tor = torStatus("bootstrapping", 45, "Loading relay descriptors")
        rendered = statusJSON(DaemonStatus(node=NodeStatus(peerID="12D3KooWSelf"), sections=(("tor", tor),)))
        self.assertEqual(rendered["tor"], tor)


class ProgressTests(SynchronousTestCase):
    """
    L{cli.TorProgress} and L{cli._watchTor}: Tor's progress while a node
    starts.
    """

    SEQUENCE = [
        torStatus("starting", 0, "launching tor"),
        torStatus("bootstrapping", 5, "Connecting to a relay"),
        torStatus("bootstrapping", 9, "Connecting to a relay"),
        torStatus("bootstrapping", 14, "Handshaking"),
        torStatus("bootstrapping", 15, "Handshaking"),
        torStatus("bootstrapping", 45, "Loading relay descriptors"),
        torStatus("bootstrapping", 45, "Loading relay descriptors"),
        torStatus("publishing", 100, "uploading descriptors"),
        torStatus("ready", 100, "Done", onion=ONION),
    ]

    def show(self, statuses: list[dict[str, Any]], tty: bool) -> str:
        stream = io.StringIO()
        progress = cli.TorProgress(stream, tty)
        for status in statuses:
            progress.update(status)
        progress.finish()
        return stream.getvalue()

    def test_pipe(self) -> None:
        """
        Not on a terminal, a line is printed when the state changes or the
        percentage moved by 10 points or more since the last line.
        """
        self.assertEqual(self.show(self.SEQUENCE, tty=False).splitlines(), [
            "tor: starting (launching tor)",
            "tor: bootstrapping 5 % (Connecting to a relay)",
            "tor: bootstrapping 15 % (Handshaking)",
            "tor: bootstrapping 45 % (Loading relay descriptors)",
            "tor: publishing the onion service (uploading descriptors)",
            f"tor: always · ready · {ONION} · 0 connections over Tor",
        ])

    def test_terminal(self) -> None:
        """
        On a terminal one line is rewritten (padded over a longer one)
        whenever its text changes, and ended once done.
        """
        out = self.show(self.SEQUENCE[:4], tty=True)
        self.assertEqual(out, "\r" + "tor: starting (launching tor)"
                         + "\r" + "tor: bootstrapping 5 % (Connecting to a relay)"
                         + "\r" + "tor: bootstrapping 9 % (Connecting to a relay)"
                         + "\r" + "tor: bootstrapping 14 % (Handshaking)".ljust(46) + "\n")
        self.assertEqual(self.show([torStatus("off", mode="off")], tty=True), "")
        self.assertEqual(self.show([], tty=False), "")

    def test_watch(self) -> None:
        """
        L{cli._watchTor} looks at the tor service's status every
        L{cli.TOR_POLL_INTERVAL} seconds, and once more when stopped.
        """
        clock = Clock()
        stream = io.StringIO()
        statuses = iter(self.SEQUENCE)
        stop = cli._watchTor(clock, lambda: next(statuses), stream)
        self.assertEqual(stream.getvalue(), "tor: starting (launching tor)\n")
        clock.advance(cli.TOR_POLL_INTERVAL)
        self.assertEqual(stream.getvalue().splitlines()[-1], "tor: bootstrapping 5 % (Connecting to a relay)")
        stop()
        self.assertEqual(stream.getvalue().splitlines()[-1], "tor: bootstrapping 5 % (Connecting to a relay)")
        self.assertEqual(len(stream.getvalue().splitlines()), 2)
        clock.advance(10)
        self.assertEqual(len(stream.getvalue().splitlines()), 2)
        self.assertFalse(clock.getDelayedCalls())
