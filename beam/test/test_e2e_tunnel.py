"""
End-to-end tunnel tests with real processes on loopback.

Every C{beam} invocation here is its own process with its own C{--home} in
a temporary directory, exactly as a user would run it; the local services
behind the tunnels are processes too (C{python -m twisted web}, or this
module run as C{python -m beam.test.test_e2e_tunnel tcp|udp}).  The tests
talk to the tunnels with ordinary blocking sockets and C{urllib}, or, for
the 1,000-connection load, with Twisted clients.

Nothing here sleeps a fixed time: every wait is a poll for a condition
with a deadline, and every process is killed when its test ends.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IHalfCloseableProtocol, IPullProducer
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from beam.testing.labbeam import waitFor
from beam.testing.lines import LineReader

BIN = Path(sys.executable).parent
LOOPBACK = "/ip4/127.0.0.1/tcp/0"
MiB = 1 << 20
GiB = 1 << 30


# -- the local service (run in its own process) -----------------------------


def patternChunks(size: int, seed: int, chunk: int = MiB) -> Iterator[bytes]:
    """
    C{size} bytes of a pseudo-random pattern that both ends can produce
    without shipping it: a block drawn from C{seed}, repeated with a
    counter in its first 8 bytes so no two chunks are alike.
    """
    block = random.Random(seed).randbytes(chunk)
    for i, offset in enumerate(range(0, size, chunk)):
        piece = i.to_bytes(8, "big") + block[8:]
        yield piece[: size - offset]


def patternDigest(size: int, seed: int) -> str:
    h = hashlib.sha256()
    for piece in patternChunks(size, seed):
        h.update(piece)
    return h.hexdigest()


@implementer(IPullProducer)
class _PatternSender:
    """
    Writes the pattern one chunk per C{resumeProducing}, so the service
    itself never buffers more than a chunk and honours backpressure.
    """

    def __init__(self, transport: Any, size: int, seed: int) -> None:
        self.transport = transport
        self.chunks = patternChunks(size, seed)

    def resumeProducing(self) -> None:
        piece = next(self.chunks, None)
        if piece is None:
            self.transport.unregisterProducer()
            self.transport.loseConnection()
        else:
            self.transport.write(piece)

    def stopProducing(self) -> None:
        self.chunks = iter(())


@implementer(IHalfCloseableProtocol)
class LabService(Protocol):
    """
    The TCP service behind the tunnels.  The first line a client sends
    picks what the connection does:
      - C{echo}: echo everything (backpressure: the transport is its own
        producer), close after the client's EOF;
      - C{send SIZE SEED}: send C{SIZE} bytes of L{patternChunks}, close;
      - C{sink}: read to EOF, answer C{"<count> <sha256 hex>\\n"}, close.
    """

    def connectionMade(self) -> None:
        self.head = b""
        self.mode: Callable[[bytes], None] | None = None
        self.hash: Any = None
        self.count = 0

    def dataReceived(self, data: bytes) -> None:
        if self.mode is None:
            self.head += data
            line, sep, data = self.head.partition(b"\n")
            if not sep:
                if len(self.head) > 200:
                    self.transport.abortConnection()
                return
            self.head = b""
            self.start(line.decode().split())
        if data and self.mode is not None:
            self.mode(data)

    def start(self, words: list[str]) -> None:
        if words == ["echo"]:
            self.transport.registerProducer(self.transport, True)
            self.mode = self.transport.write
        elif len(words) == 3 and words[0] == "send":
            self.mode = lambda data: None
            self.transport.registerProducer(_PatternSender(self.transport, int(words[1]), int(words[2])), False)
        elif words == ["sink"]:
            self.hash = hashlib.sha256()
            self.mode = self.sink
        else:
            self.transport.abortConnection()

    def sink(self, data: bytes) -> None:
        self.hash.update(data)
        self.count += len(data)

    def readConnectionLost(self) -> None:
        if self.mode == self.transport.write:
            self.transport.unregisterProducer()
            self.transport.loseConnection()
        elif self.hash is not None:
            self.transport.write(f"{self.count} {self.hash.hexdigest()}\n".encode())
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass


class UDPEcho(DatagramProtocol):
    """
    Sends every datagram back where it came from.
    """

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.transport.write(data, addr)


def serve(kind: str) -> None:
    """
    Run the C{tcp} (L{LabService}) or C{udp} (L{UDPEcho}) service on a
    free loopback port and print C{{"port": N}}.
    """
    if kind == "tcp":
        port = reactor.listenTCP(0, Factory.forProtocol(LabService), backlog=2048, interface="127.0.0.1")
    else:
        port = reactor.listenUDP(0, UDPEcho(), interface="127.0.0.1", maxPacketSize=65535)
    print(json.dumps({"port": port.getHost().port}), flush=True)
    reactor.run()


# -- processes ---------------------------------------------------------------


class Child:
    """
    A child process whose stdout carries lines (JSON events) and whose
    stderr goes to a log file that tests can search.  Killed at cleanup.
    """

    def __init__(self, testCase: Any, argv: Sequence[str], label: str, stdoutToLog: bool = False) -> None:
        self.label = label
        self.logPath = Path(tempfile.mkstemp(prefix=f"{label}-", suffix=".log", dir=testCase.tmp)[1])
        self._logFile = open(self.logPath, "wb")  # noqa: SIM115 - closed by kill()
        argv = list(argv)
        if Path(argv[0]).name == "beam" and "-v" not in argv:
            # The tests search Beam's info lines (refusals, share lines),
            # which a terminal gets only with -v since issue 12.
            argv.insert(1, "-v")
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL,
            stdout=self._logFile if stdoutToLog else subprocess.PIPE,
            stderr=self._logFile,
        )
        self.pid = self.proc.pid
        self._lines = LineReader(self.proc, self.label, self.tail)
        testCase.addCleanup(self.kill)

    def readLine(self, timeout: float = 30) -> str:
        """
        The next line of stdout; fails (with the log) rather than hang, and
        when the process exits first.
        """
        return self._lines.readLine(timeout).decode()

    def readJSON(self, timeout: float = 30) -> dict[str, Any]:
        return json.loads(self.readLine(timeout))

    def log(self) -> str:
        return self.logPath.read_text(errors="replace")

    def tail(self, n: int = 3000) -> str:
        return self.log()[-n:]

    def waitForLog(self, text: str, timeout: float = 20) -> str:
        """
        Poll the log until a line contains C{text}; return that line.
        """
        deadline = time.monotonic() + timeout
        while True:
            for line in self.log().splitlines():
                if text in line:
                    return line
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.label}: no log line with {text!r} in {timeout} s:\n{self.tail()}")
            time.sleep(0.05)

    def rss(self) -> int:
        """
        Resident set size in bytes, from /proc.
        """
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def signal(self, sig: int) -> int:
        """
        Send C{sig} and wait for the process to exit; its exit status.
        """
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=30)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._logFile.close()


def beamRun(*args: str, home: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """
    Run a short C{beam} command to completion.
    """
    return subprocess.run(
        [str(BIN / "beam"), "--home", home, *args],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False,
    )


def recvAll(sock: socket.socket, limit: int = 1 << 40) -> bytes:
    out = bytearray()
    while len(out) < limit:
        data = sock.recv(min(1 << 20, limit - len(out)))
        if not data:
            break
        out += data
    return bytes(out)


def echo(port: int, payload: bytes = b"ping", timeout: float = 20) -> bytes | None:
    """
    Send C{payload} to the L{LabService} echo behind the forward on
    C{port}, half-close, and return what came back before the close, or
    L{None} when the connection was reset.  A hang fails the test
    (C{TimeoutError}).
    """
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"echo\n" + payload)
            s.shutdown(socket.SHUT_WR)
            return recvAll(s)
    except (ConnectionResetError, BrokenPipeError):
        return None
    except OSError as e:
        # shutdown() of a connection the forward already reset.
        if e.errno == errno.ENOTCONN:
            return None
        raise


def waitUntil(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.1) -> Any:
    """
    L{waitFor<beam.testing.labbeam.waitFor>}, polling a little faster
    (these tests run on loopback).
    """
    return waitFor(predicate, timeout, what, step)


def tunnelWorks(port: int) -> bool:
    try:
        return echo(port, b"are you there?", timeout=10) == b"are you there?"
    except OSError:
        return False


class E2EMixin:
    """
    Temporary homes, services and C{beam} processes for one test.
    """

    tmp: str

    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="beam-e2e-")
        self.addCleanup(shutil.rmtree, self.tmp, True)  # type: ignore[attr-defined]
        self.started = time.monotonic()

    def newHome(self) -> str:
        return tempfile.mkdtemp(prefix="h", dir=self.tmp)

    def service(self, kind: str = "tcp") -> tuple[Child, int]:
        child = Child(self, [sys.executable, "-m", "beam.test.test_e2e_tunnel", kind], f"service-{kind}")
        return child, child.readJSON()["port"]

    def expose(self, port: int, *flags: str, home: str | None = None) -> tuple[Child, dict[str, Any], str]:
        """
        C{beam PORT --json} in its own process; the ready event and home.
        """
        home = home or self.newHome()
        child = Child(
            self, [str(BIN / "beam"), "--home", home, str(port), "--json", "--listen", LOOPBACK, *flags], "host"
        )
        ready = child.readJSON()
        self.assertEqual(ready["event"], "ready")  # type: ignore[attr-defined]
        return child, ready, home

    def connect(self, target: str, *flags: str, home: str | None = None) -> tuple[Child, int, str]:
        """
        C{beam connect TARGET --json} in its own process; its local port.
        """
        home = home or self.newHome()
        child = Child(
            self, [str(BIN / "beam"), "--home", home, "connect", target, "--json", "--listen", LOOPBACK, *flags],
            "client",
        )
        ready = child.readJSON()
        self.assertEqual(ready["event"], "ready")  # type: ignore[attr-defined]
        host, port = ready["listen"].rsplit(":", 1)
        self.assertEqual(host, "127.0.0.1")  # type: ignore[attr-defined]
        return child, int(port), home

    def status(self, home: str) -> dict[str, Any]:
        out = beamRun("status", "--json", home=home)
        self.assertEqual(out.returncode, 0, out.stderr)  # type: ignore[attr-defined]
        return json.loads(out.stdout)

    def tunnelPair(self, *flags: str) -> tuple[Child, int, Child, dict[str, Any], str, Child, int]:
        """
        A TCP lab service, C{beam PORT} for it and C{beam connect} to it.
        """
        svc, svcPort = self.service()
        host, ready, hostHome = self.expose(svcPort, *flags)
        client, local, _ = self.connect(ready["share"])
        return svc, svcPort, host, ready, hostHome, client, local

    def assertNoTracebacks(self, *children: Child) -> None:
        for child in children:
            self.assertNotIn("Traceback", child.log(), child.label)  # type: ignore[attr-defined]

    def tearDown(self) -> None:
        # The runtime of each test, for the CI budget (shown with pytest -s).
        print(f"\n{self.id()}: {time.monotonic() - self.started:.1f} s")  # type: ignore[attr-defined]


def fetch(url: str, timeout: float = 60, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """
    GET C{url} with urllib, never through a proxy from the environment.
    """
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(urllib.request.Request(url, headers=headers or {}), timeout=timeout) as resp:
        return resp.status, dict(resp.headers.items()), resp.read()


# -- tests -------------------------------------------------------------------


class HTTPTests(E2EMixin, SynchronousTestCase):
    """
    A real twisted.web server reached through a tunnel with urllib.
    """

    def webServer(self) -> tuple[int, bytes, bytes]:
        """
        C{python -m twisted web} serving a 5 MiB random file and a small
        text file; its port and both contents.
        """
        root = Path(self.tmp) / "www"
        root.mkdir()
        big = os.urandom(5 * MiB)
        (root / "big.bin").write_bytes(big)
        small = b"hello through the tunnel\n"
        (root / "hello.txt").write_bytes(small)
        web = Child(
            self,
            [sys.executable, "-m", "twisted", "web", "--listen", "tcp:0:interface=127.0.0.1", "--path", str(root)],
            "web",
        )
        deadline = time.monotonic() + 30
        while True:
            found = re.search(r"Site starting on (\d+)", web.readLine(max(0.1, deadline - time.monotonic())))
            if found:
                return int(found.group(1)), big, small

    def checkThroughTunnel(self, webPort: int, local: int, big: bytes, small: bytes) -> None:
        for path, content, ctype in [("big.bin", big, None), ("hello.txt?x=1", small, "text/plain")]:
            direct = fetch(f"http://127.0.0.1:{webPort}/{path}")
            tunnelled = fetch(f"http://127.0.0.1:{local}/{path}")
            self.assertEqual(tunnelled[0], 200)
            self.assertEqual(hashlib.sha256(tunnelled[2]).hexdigest(), hashlib.sha256(content).hexdigest())
            self.assertEqual(tunnelled[1]["Content-Length"], str(len(content)))
            if ctype:
                self.assertTrue(tunnelled[1]["Content-Type"].startswith(ctype), tunnelled[1])

            def withoutDate(headers: dict[str, str]) -> dict[str, str]:
                return {k: v for k, v in headers.items() if k.lower() != "date"}

            self.assertEqual(withoutDate(tunnelled[1]), withoutDate(direct[1]))
        # A request header makes it through too: a range request.
        status, headers, body = fetch(f"http://127.0.0.1:{local}/big.bin", headers={"Range": "bytes=1000-1999"})
        self.assertEqual((status, body), (206, big[1000:2000]))
        self.assertEqual(headers["Content-Range"], f"bytes 1000-1999/{len(big)}")
        with self.assertRaises(urllib.error.HTTPError) as e:
            fetch(f"http://127.0.0.1:{local}/missing")
        self.assertEqual(e.exception.code, 404)

    def test_httpThroughBeamPort(self) -> None:
        """
        C{beam PORT} in front of twisted.web and C{beam connect SHARE}: a
        5 MiB file arrives byte for byte (SHA-256), with the same headers
        as fetched directly; a range request gets its range; a 404 stays a
        404.
        """
        webPort, big, small = self.webServer()
        _host, ready, _ = self.expose(webPort)
        self.assertTrue(ready["share"].startswith(f"beam://{ready['peer_id']}@127.0.0.1:"), ready)
        self.assertEqual(ready["connect"], f"beam connect {ready['share']}")
        _client, local, _ = self.connect(ready["share"])
        self.checkThroughTunnel(webPort, local, big, small)

    def test_httpUnderTwistd(self) -> None:
        """
        C{twistd -n beam --port PORT} exposes twisted.web too; its share
        address, read from the node's control socket with C{beam status
        --json} (and logged), works with C{beam connect}.
        """
        webPort, big, small = self.webServer()
        home = self.newHome()
        twistd = Child(
            self,
            [str(BIN / "twistd"), "-n", "--pidfile=", f"--logfile={Path(self.tmp) / 'twistd.log'}", "beam",
             "--home", home, "--port", str(webPort), "--listen", LOOPBACK],
            "twistd", stdoutToLog=True,
        )

        def share() -> str | None:
            if not twistd.alive():
                raise AssertionError(f"twistd exited: {twistd.tail()}\n{(Path(self.tmp) / 'twistd.log').read_text()}")
            out = beamRun("status", "--json", home=home)
            if out.returncode != 0:
                return None
            tunnels = json.loads(out.stdout)["tunnels"]
            return tunnels[0]["share"] if tunnels else None

        address = waitUntil(share, 30, "twistd node with a tunnel")
        self.assertIn(address, (Path(self.tmp) / "twistd.log").read_text())
        _client, local, _ = self.connect(address)
        self.checkThroughTunnel(webPort, local, big, small)
        self.assertIn(twistd.signal(signal.SIGTERM), (0, -signal.SIGTERM))
        self.assertNotIn("Traceback", (Path(self.tmp) / "twistd.log").read_text())


class UDPTests(E2EMixin, SynchronousTestCase):
    """
    A UDP echo service through C{beam PORT --udp} / C{beam connect --udp}.
    """

    def test_udpEcho(self) -> None:
        """
        Datagrams of many sizes (1 byte to 60,000) from two client sockets
        come back intact, each to its own sender, through one UDP tunnel.
        """
        _svc, svcPort = self.service("udp")
        _host, ready, _ = self.expose(svcPort, "--udp")
        self.assertTrue(ready["connect"].endswith(" --udp"), ready)
        _client, local, _ = self.connect(ready["share"], "--udp")
        socks = []
        for _ in range(2):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            s.settimeout(1)
            self.addCleanup(s.close)
            socks.append(s)

        def roundTrip(s: socket.socket, data: bytes) -> bool:
            s.sendto(data, ("127.0.0.1", local))
            try:
                while True:
                    got, _ = s.recvfrom(65536)
                    if got == data:
                        return True
            except TimeoutError:
                return False

        # The first datagram of a session may race the stream's opening:
        # retry it until the tunnel answers.
        for s in socks:
            waitUntil(lambda s=s: roundTrip(s, b"first"), 30, "first UDP echo")
        sizes = [1, 2, 100, 1200, 1500, 8192, 30000, 60000]
        for i, size in enumerate(sizes * 4):
            s = socks[i % 2]
            data = bytes([i % 251]) * 8 + os.urandom(max(0, size - 8))
            data = data[:size]
            self.assertTrue(roundTrip(s, data), f"datagram {i} of {size} bytes lost")


class AccessTests(E2EMixin, SynchronousTestCase):
    """
    Private tunnels: C{--allow PEER} and C{--secret}.
    """

    def assertRefusedAtStart(self, target: str, host: Child, home: str | None = None) -> None:
        """
        C{beam connect} probes the host before listening: a refusal is one
        error (with C{--json}, one JSON object on stdout) and exit status
        1, and the host logs it.
        """
        out = beamRun("connect", target, "--json", "--listen", LOOPBACK, home=home or self.newHome())
        self.assertEqual(out.returncode, 1, out.stderr)
        [line] = out.stdout.splitlines()
        error = json.loads(line)
        self.assertEqual(error["event"], "error")
        self.assertIn("refused", error["error"])
        self.assertNotIn("Traceback", out.stderr + out.stdout)
        host.waitForLog("refused")

    def assertRefused(self, local: int, host: Child) -> None:
        """
        A connection through the forward on C{local} is closed without any
        echo, promptly, and the host logs the refusal.
        """
        started = time.monotonic()
        self.assertIn(echo(local, b"let me in", timeout=20), (b"", None))
        self.assertLess(time.monotonic() - started, 10)
        host.waitForLog("refused")

    def test_allowList(self) -> None:
        """
        With C{--allow} a stranger's C{beam connect} is refused with one
        error line and the host logs "refused"; the allowed peer (its ID
        from C{beam id}) gets through.
        """
        _svc, svcPort = self.service()
        allowedHome = self.newHome()
        allowed = beamRun("id", home=allowedHome)
        self.assertEqual(allowed.returncode, 0, allowed.stderr)
        host, ready, hostHome = self.expose(svcPort, "--allow", allowed.stdout.strip())
        strangerHome = self.newHome()
        self.assertRefusedAtStart(ready["share"], host, strangerHome)
        stranger = beamRun("id", home=strangerHome).stdout.strip()
        self.assertIn(stranger, host.waitForLog("refused"))
        _friend, friendPort, _ = self.connect(ready["share"], home=allowedHome)
        self.assertEqual(echo(friendPort, b"x" * 100000), b"x" * 100000)
        tunnel = self.status(hostHome)["tunnels"][0]
        self.assertTrue(tunnel["private"])
        self.assertEqual(tunnel["allow"], [allowed.stdout.strip()])
        self.assertEqual(tunnel["stats"]["refused"], 1)

    def test_allowListAfterRestart(self) -> None:
        """
        A client that got in while the tunnel was public is refused once the
        host restarts with C{--allow} for someone else: its forward stays
        up, its new local connections are closed, the host logs "refused".
        """
        _svc, svcPort, host, ready, hostHome, client, local = self.tunnelPair()
        self.assertTrue(tunnelWorks(local))
        host.signal(signal.SIGTERM)
        other = beamRun("id", home=self.newHome()).stdout.strip()
        host, again, _ = self.expose(svcPort, "--allow", other, home=hostHome)
        self.assertEqual(again["share"], ready["share"])

        def refused() -> bool:
            # Never admitted; refused by the host once the client is back.
            self.assertIn(echo(local, b"x"), (b"", None))
            return "refused" in host.log()

        waitUntil(refused, 60, "a refusal by the restarted host", step=0.2)
        for _ in range(3):
            self.assertRefused(local, host)
        self.assertTrue(client.alive())

    def test_secret(self) -> None:
        """
        With C{--secret} the share address carries the secret; a client
        using it gets through, one whose address lost the secret is
        refused.  The secret never reaches the host's log.
        """
        _svc, svcPort = self.service()
        host, ready, _ = self.expose(svcPort, "--secret")
        share = ready["share"]
        self.assertIn("#", share)
        secret = share.split("#", 1)[1]
        self.assertIn("with the secret", host.waitForLog("on the other side run"))
        self.assertNotIn(secret, host.log())
        stripped = share.split("#", 1)[0]
        self.assertRefusedAtStart(stripped, host)
        _friend, friendPort, _ = self.connect(share)
        self.assertEqual(echo(friendPort, b"secret handshake"), b"secret handshake")


class RestartTests(E2EMixin, SynchronousTestCase):
    """
    The host goes away and comes back with the same home.
    """

    def assertFailsFast(self, local: int) -> None:
        started = time.monotonic()
        self.assertIn(echo(local, b"anyone?", timeout=20), (b"", None))
        self.assertLess(time.monotonic() - started, 5)

    def restartHost(self, svcPort: int, hostHome: str, share: str) -> Child:
        host, ready, _ = self.expose(svcPort, home=hostHome)
        self.assertEqual(ready["share"], share, "the share address changed across a restart")
        return host

    def test_hostRestart(self) -> None:
        """
        SIGTERM stops the host cleanly; while it is down, the client keeps
        its listener and new connections are closed at once; started again
        with the same home (same peer ID, same port from state.json) it
        serves the same share address, and the client reconnects.
        """
        _svc, svcPort, host, ready, hostHome, client, local = self.tunnelPair()
        self.assertEqual(echo(local, b"before"), b"before")
        self.assertEqual(host.signal(signal.SIGTERM), 0)
        self.assertNotIn("Traceback", host.log())
        for _ in range(3):
            self.assertFailsFast(local)
        self.assertTrue(client.alive())
        self.restartHost(svcPort, hostHome, ready["share"])
        waitUntil(lambda: tunnelWorks(local), 60, "tunnel after the host restarted")
        self.assertEqual(echo(local, os.urandom(10) * 100000).__len__(), 1000000)
        self.assertTrue(client.alive())
        self.assertNotIn("Traceback", client.log())

    def test_hostKilledMidTransfer(self) -> None:
        """
        SIGKILL of the host in the middle of a download: the client's
        connection ends (closed or reset) instead of hanging; the client
        node keeps running and serves again once the host is back.
        """
        _svc, svcPort, host, ready, hostHome, client, local = self.tunnelPair()
        with socket.create_connection(("127.0.0.1", local), timeout=20) as s:
            s.sendall(f"send {100 * GiB} 1\n".encode())
            got = 0
            while got < 8 * MiB:
                data = s.recv(MiB)
                self.assertTrue(data)
                got += len(data)
            host.signal(signal.SIGKILL)
            try:
                while data:
                    data = s.recv(MiB)  # a hang raises TimeoutError
                    got += len(data)
            except ConnectionResetError:
                pass
        self.assertLess(got, 100 * GiB)
        self.assertTrue(client.alive())
        self.assertFailsFast(local)
        self.restartHost(svcPort, hostHome, ready["share"])
        waitUntil(lambda: tunnelWorks(local), 60, "tunnel after the host was killed and restarted")
        self.assertTrue(client.alive())
        self.assertNotIn("Traceback", client.log())


class FaultTests(E2EMixin, SynchronousTestCase):
    """
    A dying service and a reader that stalls.
    """

    def test_serviceKilledMidTransfer(self) -> None:
        """
        Two services on one host node, two forwards on one client node (so
        one peer connection): killing service A in the middle of a
        download ends A's connection (closed or reset) without a hang,
        while an echo in progress through B carries on intact.
        """
        svcA, portA = self.service()
        svcB, portB = self.service()
        host, readyA, hostHome = self.expose(portA)
        hostB = Child(self, [str(BIN / "beam"), "--home", hostHome, str(portB), "--json"], "host-b")
        readyB = hostB.readJSON()
        self.assertEqual(readyB["peer_id"], readyA["peer_id"])
        client, localA, clientHome = self.connect(readyA["share"])
        clientB = Child(self, [str(BIN / "beam"), "--home", clientHome, "connect", readyB["share"], "--json"],
                        "client-b")
        localB = int(clientB.readJSON()["listen"].rsplit(":", 1)[1])
        self.assertEqual(len(self.status(clientHome)["connections"]), 1)

        b = socket.create_connection(("127.0.0.1", localB), timeout=20)
        self.addCleanup(b.close)
        first = os.urandom(2 * MiB)
        b.sendall(b"echo\n" + first)
        echoed = bytearray()
        while len(echoed) < len(first):
            echoed += b.recv(MiB)

        with socket.create_connection(("127.0.0.1", localA), timeout=20) as a:
            a.sendall(f"send {100 * GiB} 2\n".encode())
            got = 0
            while got < 4 * MiB:
                got += len(a.recv(MiB))
            svcA.signal(signal.SIGKILL)
            try:
                while True:
                    data = a.recv(MiB)  # a hang raises TimeoutError
                    if not data:
                        break
                    got += len(data)
            except ConnectionResetError:
                pass
        self.assertLess(got, 100 * GiB)

        second = os.urandom(3 * MiB)
        b.sendall(second)
        b.shutdown(socket.SHUT_WR)
        echoed += recvAll(b)
        self.assertEqual(hashlib.sha256(echoed).digest(), hashlib.sha256(first + second).digest())
        self.assertTrue(client.alive() and host.alive())
        self.assertEqual(echo(localB, b"still here"), b"still here")
        self.assertIn(echo(localA, b"gone"), (b"", None))
        self.assertNoTracebacks(host, hostB, client, clientB, svcB)

    def test_stalledReaderBoundsMemory(self) -> None:
        """
        A client that reads nothing while the service pushes 200 MiB: the
        host stops reading from the service (its byte count stops well
        short of 200 MiB) and neither beam process grows by 64 MiB; when
        the client reads again, all 200 MiB arrive intact.
        """
        svc, _svcPort, host, _ready, hostHome, client, local = self.tunnelPair()
        self.assertTrue(tunnelWorks(local))
        before = {"host": host.rss(), "client": client.rss()}
        size = 200 * MiB
        s = socket.create_connection(("127.0.0.1", local), timeout=30)
        self.addCleanup(s.close)
        s.sendall(f"send {size} 3\n".encode())

        samples: list[int] = []

        def settled() -> bool:
            stats = self.status(hostHome)["tunnels"][0]["stats"]
            samples.append(stats["bytesOut"])
            return len(samples) > 5 and samples[-1] > 0 and len(set(samples[-5:])) == 1

        waitUntil(settled, 60, "the host's reading to pause", step=0.25)
        buffered = samples[-1]
        after = {"host": host.rss(), "client": client.rss()}
        growth = {k: (after[k] - before[k]) / MiB for k in before}
        print(f"\nstalled: host read {buffered / MiB:.1f} MiB from the service; RSS growth MiB {growth}")
        self.assertLess(buffered, 100 * MiB)
        for who, grew in growth.items():
            self.assertLess(grew, 64, f"{who} grew by {grew:.1f} MiB")

        h = hashlib.sha256()
        got = 0
        while True:
            data = s.recv(MiB)
            if not data:
                break
            h.update(data)
            got += len(data)
        self.assertEqual(got, size)
        self.assertEqual(h.hexdigest(), patternDigest(size, 3))
        self.assertNoTracebacks(host, client, svc)


# -- load ---------------------------------------------------------------------


@implementer(IHalfCloseableProtocol)
class EchoCheck(Protocol):
    """
    Sends C{size} random bytes to the L{LabService} echo, half-closes and
    hashes what comes back; L{done} fires with C{(count, intact)}.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.hash = hashlib.sha256()
        self.count = 0
        self.expected = b""
        self.done: Deferred[tuple[int, bool]] = Deferred()

    def connectionMade(self) -> None:
        payload = os.urandom(self.size)
        self.expected = hashlib.sha256(payload).digest()
        self.transport.writeSequence([b"echo\n", payload])
        self.transport.loseWriteConnection()

    def dataReceived(self, data: bytes) -> None:
        self.hash.update(data)
        self.count += len(data)

    def readConnectionLost(self) -> None:
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure) -> None:
        if not self.done.called:
            self.done.callback((self.count, self.hash.digest() == self.expected))


class LoadTests(E2EMixin, TestCase):
    """
    Integrity under load through one tunnel.
    """

    timeout = 300

    @inlineCallbacks
    def test_thousandConnections(self) -> Any:
        """
        1,000 concurrent connections through one tunnel, each echoing 1 MiB
        of random data, all come back byte-identical.
        """
        svc, _svcPort, host, _ready, hostHome, client, local = self.tunnelPair()
        n, size = 1000, MiB
        started = time.monotonic()
        clients = [EchoCheck(size) for _ in range(n)]
        connected = yield DeferredList(
            [connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", local), c) for c in clients],
            consumeErrors=True,
        )
        failedToConnect = [str(r) for ok, r in connected if not ok]
        self.assertEqual(failedToConnect, [])
        results = yield DeferredList([c.done for c in clients])
        elapsed = time.monotonic() - started
        bad = [(i, r) for i, (ok, r) in enumerate(results) if not ok or r != (size, True)]
        print(f"\n{n} x {size // MiB} MiB echoed in {elapsed:.1f} s ({2 * n * size / MiB / elapsed:.0f} MiB/s both ways)")
        self.assertEqual(bad, [])
        stats = self.status(hostHome)["tunnels"][0]["stats"]
        self.assertEqual(stats["total"], n)
        self.assertEqual(stats["bytesIn"], n * (size + len(b"echo\n")))
        self.assertEqual(stats["bytesOut"], n * size)
        self.assertNoTracebacks(host, client, svc)

    def test_twoGiB(self) -> None:
        """
        2 GiB through one tunnel connection arrive complete: the service's
        SHA-256 of what it read equals the sender's.
        """
        svc, _svcPort, host, _ready, _hostHome, client, local = self.tunnelPair()
        size = 2 * GiB
        block = bytearray(os.urandom(MiB))
        h = hashlib.sha256()
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", local), timeout=60) as s:
            s.sendall(b"sink\n")
            for i in range(size // MiB):
                block[:8] = i.to_bytes(8, "big")
                h.update(block)
                s.sendall(block)
            s.shutdown(socket.SHUT_WR)
            reply = recvAll(s).decode()
        elapsed = time.monotonic() - started
        print(f"\n2 GiB through the tunnel in {elapsed:.1f} s ({size / MiB / elapsed:.0f} MiB/s)")
        self.assertEqual(reply, f"{size} {h.hexdigest()}\n")
        self.assertNoTracebacks(host, client, svc)


# -- the CLI -------------------------------------------------------------------


class CLITests(E2EMixin, SynchronousTestCase):
    """
    What users see: one-line errors, status and stop.
    """

    def assertOneLineError(self, out: subprocess.CompletedProcess[str], *expected: str) -> str:
        """
        Exit status 1 and, apart from warnings, one C{beam: ...} line on
        stderr containing every C{expected} text; no traceback.
        """
        self.assertEqual(out.returncode, 1, out.stderr)
        self.assertNotIn("Traceback", out.stderr + out.stdout)
        lines = [line for line in out.stderr.splitlines() if not line.startswith("beam: warning:")]
        self.assertEqual(len(lines), 1, out.stderr)
        self.assertTrue(lines[0].startswith("beam: "), lines[0])
        for text in expected:
            self.assertIn(text, lines[0])
        return lines[0]

    def busyPort(self) -> int:
        s = socket.socket()
        self.addCleanup(s.close)
        s.bind(("127.0.0.1", 0))
        s.listen()
        return s.getsockname()[1]

    def test_errors(self) -> None:
        """
        A malformed share address, a --listen port or --port in use, a host
        that cannot be reached, status and stop with no node, and stop of
        an unknown name: each one line, exit status 1, no traceback.
        """
        home = self.newHome()
        for bad in ["beam://garbage", "beam://nobody@127.0.0.1:1/x", "/ip4/127.0.0.1/tcp/1"]:
            self.assertOneLineError(beamRun("-q", "connect", bad, home=home))
        busy = self.busyPort()
        self.assertOneLineError(
            beamRun("-q", "8080", "--listen", f"/ip4/127.0.0.1/tcp/{busy}", home=home), str(busy), "in use"
        )
        peer = beamRun("id", home=self.newHome()).stdout.strip()
        self.assertOneLineError(
            beamRun("-q", "connect", f"beam://{peer}@127.0.0.1:1/x", "--port", str(busy), "--listen", LOOPBACK,
                    home=home),
            str(busy), "in use",
        )
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
            nowhere = closed.getsockname()[1]
        self.assertOneLineError(
            beamRun("-q", "connect", f"beam://{peer}@127.0.0.1:{nowhere}/x", "--listen", LOOPBACK, home=home),
            "could not connect", peer,
        )
        self.assertOneLineError(beamRun("status", home=home), "no Beam node is running")
        out = beamRun("status", "--json", home=home)
        self.assertEqual((out.returncode, out.stderr), (1, ""))
        self.assertEqual(json.loads(out.stdout)["event"], "error")
        self.assertIn("no Beam node is running", json.loads(out.stdout)["error"])
        self.assertOneLineError(beamRun("stop", "web", home=home), "no Beam node is running")
        daemon = Child(self, [str(BIN / "beam"), "--home", home, "daemon", "--json", "--listen", LOOPBACK], "daemon")
        self.assertEqual(daemon.readJSON()["event"], "ready")
        self.assertOneLineError(beamRun("stop", "web", home=home), "web")
        self.assertOneLineError(beamRun("stop", "4242", home=home), "4242")

    def test_statusAndStop(self) -> None:
        """
        After traffic C{beam status --json} shows the tunnel (and the
        forward) with bytes in and out; C{beam stop NAME} removes it, the
        C{beam PORT} that exposed it says so and exits 3, and new
        connections through the forward are then refused.
        """
        _svc, svcPort = self.service()
        host, ready, hostHome = self.expose(svcPort, "--name", "lab")
        _client, local, clientHome = self.connect(ready["share"])
        payload = os.urandom(MiB)
        self.assertEqual(echo(local, payload), payload)

        def counted() -> dict[str, Any] | None:
            status = self.status(hostHome)
            stats = status["tunnels"][0]["stats"]
            return status if stats["total"] == 1 and stats["active"] == 0 else None

        status = waitUntil(counted, 10, "the host's stats")
        (tunnel,) = status["tunnels"]
        self.assertEqual((tunnel["name"], tunnel["port"], tunnel["kind"]), ("lab", svcPort, "tcp"))
        self.assertEqual(tunnel["share"], ready["share"])
        self.assertEqual(tunnel["stats"]["bytesIn"], MiB + len(b"echo\n"))
        self.assertEqual(tunnel["stats"]["bytesOut"], MiB)
        self.assertEqual(len(status["connections"]), 1)
        (forward,) = self.status(clientHome)["forwards"]
        self.assertEqual(forward["listen"], f"127.0.0.1:{local}")
        self.assertEqual(forward["stats"]["bytesOut"], MiB + len(b"echo\n"))
        self.assertEqual(forward["stats"]["bytesIn"], MiB)
        text = beamRun("status", home=hostHome)
        self.assertEqual(text.returncode, 0, text.stderr)
        self.assertIn("lab", text.stdout)

        stopped = beamRun("stop", "lab", "--json", home=hostHome)
        self.assertEqual(stopped.returncode, 0, stopped.stderr)
        self.assertEqual(json.loads(stopped.stdout)["name"], "lab")
        # `beam PORT` whose tunnel was stopped says so and exits 3
        # (issue 12), taking its node with it: the port is no longer served.
        while True:
            event = host.readJSON(timeout=10)
            if event.get("event") == "stopped":
                break
        self.assertEqual(event["name"], "lab")
        self.assertEqual(host.proc.wait(timeout=30), 3)
        self.assertIn(echo(local, b"hello?"), (b"", None))


if __name__ == "__main__":
    serve(sys.argv[1])
