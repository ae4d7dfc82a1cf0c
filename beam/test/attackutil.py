"""
An attacker's toolkit and a victim harness for L{beam.test.test_attacks}.

The victim is a real C{beam daemon} in its own process (so that its
resident memory can be read from C{/proc}), with its own home, listening
on 127.0.0.1 and exposing one public TCP tunnel, C{dl}, to a download
service run by the test (L{DownloadService}: 1 MiB of a fixed pattern per
connection, checked with SHA-256 by the client).

The test process is both the legitimate client (L{Downloader}, a
L{beam.p2p.host.node.Node} on 127.0.0.1) and the attacker (nodes and raw
sockets whose source address is L{ATTACKER_HOST}, 127.0.0.2, so that the
node's per-source caps, which exempt its own machine's 127.0.0.1, apply to
them).  Everything is on loopback; every loop is bounded in count and
time.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IHalfCloseableProtocol, IPullProducer
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.internet.task import LoopingCall, deferLater
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from zope.interface import implementer

from beam.dht.messages import Message, MessageType, PeerInfo, Record, decodeMessage, encodeMessage
from beam.dht.service import KAD_PROTOCOL
from beam.encoding.framing import LengthPrefixedReader, encodeLengthPrefixed
from beam.identity.keys import Identity
from beam.identity.multiaddr import Multiaddr
from beam.names.record import dhtKey, makeRecord, signRecord
from beam.p2p.host.node import Node
from beam.p2p.resources import unlimitedManager
from beam.p2p.multistream import PROTOCOL_ID as MULTISTREAM, encodeMessage as encodeMultistream
from beam.p2p.muxer._yamux_frames import encodeHeader
from beam.p2p.transport.tcp import TCPTransport
from beam.tunnel.protocol import TUNNEL_PROTOCOL, ResponseReader, TunnelRequest, encodeRequest

BIN = Path(sys.executable).parent
KiB = 1024
MiB = 1024 * KiB

#: Where attackers connect from: not the victim's own machine address,
#: so per-source caps apply to them.
ATTACKER_HOST = "127.0.0.2"
#: Where legitimate peers connect from.
LEGIT_HOST = "127.0.0.1"

#: The tunnelled service's name on the victim.
SERVICE = "dl"
#: Bytes served per download, and their digest.
DOWNLOAD_SIZE = MiB
_PATTERN = random.Random(8).randbytes(DOWNLOAD_SIZE)
DOWNLOAD_SHA256 = hashlib.sha256(_PATTERN).hexdigest()
_CHUNK = 64 * KiB

#: The file-descriptor limit the victim runs with: systemd's default, at
#: which the issue's stream hog broke a node.
VICTIM_NOFILE = 1024

#: The [limits] table the victim is configured with (when the daemon's
#: configuration knows it).
LIMITS_TOML = """
[limits.peer]
streams_inbound = 64
fd = 16
memory = "32MiB"

[limits.transient]
conns = 32
per_source = 4
"""


# -- the download service ----------------------------------------------------


@implementer(IPullProducer)
class _PatternSender:
    """
    Writes the pattern a chunk per C{resumeProducing}: the service never
    buffers more than a chunk per connection, however many connections a
    stranger holds open without reading.
    """

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.offset = 0

    def resumeProducing(self) -> None:
        if self.offset >= DOWNLOAD_SIZE:
            self.transport.unregisterProducer()
            self.transport.loseConnection()
            return
        self.transport.write(_PATTERN[self.offset:self.offset + _CHUNK])
        self.offset += _CHUNK

    def stopProducing(self) -> None:
        self.offset = DOWNLOAD_SIZE


class _Serve(Protocol):
    transport: Any

    def __init__(self, service: "DownloadService") -> None:
        self.service = service

    def connectionMade(self) -> None:
        self.service.accepted += 1
        self.service.open += 1
        self.service.peakOpen = max(self.service.peakOpen, self.service.open)
        self.transport.registerProducer(_PatternSender(self.transport), False)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.service.open -= 1


class DownloadService(ServerFactory):
    """
    The local service behind the victim's tunnel.

    @ivar accepted: connections accepted so far.
    @ivar open: connections open now.
    @ivar peakOpen: the most open at once.
    """

    def __init__(self) -> None:
        self.accepted = 0
        self.open = 0
        self.peakOpen = 0
        self.port: Any = None

    def buildProtocol(self, addr: Any) -> Protocol:
        return _Serve(self)

    def start(self) -> int:
        self.port = reactor.listenTCP(0, self, interface=LEGIT_HOST)
        return int(self.port.getHost().port)


# -- the victim ----------------------------------------------------------------


def _victimLimits() -> None:
    # In the child, before exec: the file-descriptor limit of a systemd unit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = VICTIM_NOFILE if hard == resource.RLIM_INFINITY else min(VICTIM_NOFILE, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def configText(servicePort: int, limits: bool) -> str:
    """
    The victim's C{config.toml}: loopback, one public tunnel, no plugins,
    and (with C{limits}) the L{LIMITS_TOML} table.
    """
    text = (
        'listen = ["/ip4/127.0.0.1/tcp/0"]\n\n'
        f'[[tunnel]]\nport = {servicePort}\nname = "{SERVICE}"\n\n'
        "[plugins]\nenabled = false\n"
    )
    return text + (LIMITS_TOML if limits else "")


class Victim:
    """
    A C{beam daemon} process with a tunnel to a L{DownloadService}.

    @ivar limitsConfigured: whether its C{config.toml} carries
        L{LIMITS_TOML} (only if this tree's configuration accepts it).
    """

    def __init__(self, servicePort: int) -> None:
        self.tmp = tempfile.mkdtemp(prefix="beam-attack-")
        self.home = os.path.join(self.tmp, "home")
        os.mkdir(self.home, 0o700)
        config = Path(self.home) / "config.toml"
        from beam.daemon.config import checkConfig

        config.write_text(configText(servicePort, limits=True))
        self.limitsConfigured = not checkConfig(config)
        if not self.limitsConfigured:
            config.write_text(configText(servicePort, limits=False))
        self.logPath = Path(self.tmp) / "victim.log"
        self._log = open(self.logPath, "wb")  # noqa: SIM115 - closed by stop()
        self.proc = subprocess.Popen(
            [str(BIN / "beam"), "--home", self.home, "daemon", "--json"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._log,
            preexec_fn=_victimLimits,
        )
        self.pid = self.proc.pid
        self.ready = self._readReady(60)
        self.peerID: str = self.ready["peer_id"]
        addr = next(a for a in self.ready["addrs"] if "/ip4/127.0.0.1/" in a)
        self.addr = Multiaddr.fromString(addr)
        self.port = self.addr.withoutPeerID().tcpTarget()[1]  # type: ignore[index]

    def _readReady(self, timeout: float) -> dict[str, Any]:
        """
        The daemon's C{ready} event (it is started before the reactor
        runs anything for the test, so this blocking read is harmless).
        """
        import select

        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        buf = b""
        deadline = time.monotonic() + timeout
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise AssertionError(f"victim not ready within {timeout} s:\n{self.tail()}")
            data = os.read(fd, 65536)
            if not data:
                raise AssertionError(f"victim exited before it was ready:\n{self.tail()}")
            buf += data
        event = json.loads(buf.partition(b"\n")[0])
        assert event["event"] == "ready", event
        return event

    def tail(self, n: int = 4000) -> str:
        return self.logPath.read_text(errors="replace")[-n:]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss(self) -> int:
        """
        Resident set size in bytes (0 once the process is gone).
        """
        try:
            text = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return 0
        for line in text.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def fdCount(self) -> int:
        try:
            return len(os.listdir(f"/proc/{self.pid}/fd"))
        except OSError:
            return 0

    def beam(self, *args: str, timeout: float = 30) -> Deferred[subprocess.CompletedProcess[str]]:
        """
        Run C{beam --home HOME ARGS} against the victim, in a thread.
        """
        argv = [str(BIN / "beam"), "--home", self.home, *args]
        return deferToThread(
            subprocess.run, argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=timeout, check=False,
        )

    def stop(self) -> None:
        """
        SIGTERM by PID, then SIGKILL if it does not exit.
        """
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()
        shutil.rmtree(self.tmp, True)


class RSSSampler:
    """
    Samples a process's RSS every C{interval} seconds; L{peak} is the
    largest seen.
    """

    def __init__(self, victim: Victim, interval: float = 0.1) -> None:
        self.victim = victim
        self.peak = victim.rss()
        self.peakFDs = victim.fdCount()
        self._loop = LoopingCall(self.sample)
        self._loop.start(interval)

    def sample(self) -> None:
        self.peak = max(self.peak, self.victim.rss())
        self.peakFDs = max(self.peakFDs, self.victim.fdCount())

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()
        self.sample()


# -- nodes bound to a source address ---------------------------------------------


class BoundTCPTransport(TCPTransport):
    """
    The TCP transport, dialling from C{host}.
    """

    def __init__(self, reactor: Any, host: str) -> None:
        super().__init__(reactor)
        self.host = host

    def dial(self, addr: Multiaddr, factory: Any, timeout: float) -> Deferred[Any]:
        target = addr.withoutPeerID().tcpTarget()
        assert target is not None and target[2] == "ip4", addr
        endpoint = TCP4ClientEndpoint(self.reactor, target[0], target[1], timeout=timeout,
                                      bindAddress=(self.host, 0))
        return endpoint.connect(factory)


def makeNode(host: str, listen: Sequence[str] = (), identity: Optional[Identity] = None, **kw: Any) -> Node:
    """
    A node (not started) that dials from C{host}.  Its own resource
    manager never refuses: an attacker does not limit itself.
    """
    kw.setdefault("resources", unlimitedManager())
    kw.setdefault("maxStreamsPerConnection", 100_000)
    return Node(reactor, identity or Identity.generate(), list(listen),
                transports=[BoundTCPTransport(reactor, host)], **kw)


async def startedNode(host: str, listen: Sequence[str] = (), **kw: Any) -> Node:
    node = makeNode(host, listen, **kw)
    await node.startService()
    return node


def stopNodes(nodes: Sequence[Node]) -> Deferred[Any]:
    return DeferredList([n.stopService() for n in nodes if n.running], consumeErrors=True)


def withTimeout(d: Deferred[Any], seconds: float) -> Deferred[Any]:
    """
    C{d}, cancelled after C{seconds}.
    """
    return d.addTimeout(seconds, reactor)


# -- legitimate downloads --------------------------------------------------------


class DownloadFailed(AssertionError):
    """
    A legitimate download did not bring back the whole, intact pattern.
    """


@implementer(IHalfCloseableProtocol)
class _Download(Protocol):
    """
    One download over a tunnel stream: request C{dl}, check the response,
    hash what follows until the stream ends.
    """

    transport: Any

    def __init__(self) -> None:
        self.reader = ResponseReader()
        self.hash = hashlib.sha256()
        self.count = 0
        self.error: Optional[str] = None
        self.done: Deferred[None] = Deferred()
        self.opened = False

    def connectionMade(self) -> None:
        self.transport.write(encodeRequest(TunnelRequest(service=SERVICE)))

    def dataReceived(self, data: bytes) -> None:
        if not self.opened:
            try:
                response = self.reader.feed(data)
            except Exception as e:  # noqa: BLE001 - reported as the failure
                self.error = f"bad response: {e}"
                self.transport.abortConnection()
                return
            if response is None:
                return
            if not response.ok:
                self.error = f"refused: {response.message}"
                self.transport.abortConnection()
                return
            self.opened = True
            data = self.reader.leftover
        self.count += len(data)
        self.hash.update(data)

    def readConnectionLost(self) -> None:
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self.done.called:
            return
        if self.error is None and (self.count != DOWNLOAD_SIZE or self.hash.hexdigest() != DOWNLOAD_SHA256):
            self.error = f"got {self.count} of {DOWNLOAD_SIZE} bytes, digest ok: " \
                         f"{self.hash.hexdigest() == DOWNLOAD_SHA256} ({reason.value if reason else ''})"
        if self.error is None:
            self.done.callback(None)
        else:
            self.done.errback(DownloadFailed(self.error))


async def download(node: Node, victim: Victim, timeout: float = 30) -> float:
    """
    One checksummed download through the victim's tunnel; its duration.

    @raise DownloadFailed: refused, short, corrupt, or not done in time.
    """
    started = time.monotonic()
    target = victim.addr

    async def run() -> None:
        proto = await node.openStream(target, TUNNEL_PROTOCOL, _Download)
        await proto.done  # type: ignore[attr-defined]

    try:
        await withTimeout(ensureDeferred(run()), timeout)
    except DownloadFailed:
        raise
    except Exception as e:  # noqa: BLE001 - every way to fail is a failed download
        raise DownloadFailed(f"{type(e).__name__}: {e}") from None
    return time.monotonic() - started


class DownloadLoop:
    """
    Checksummed downloads one after another, through one legitimate
    peer's connection, until L{stop}.

    @ivar ok: downloads that succeeded.
    @ivar failures: why the others failed.
    """

    def __init__(self, node: Node, victim: Victim) -> None:
        self.node = node
        self.victim = victim
        self.ok = 0
        self.failures: list[str] = []
        self.durations: list[float] = []
        self._stopping = False
        self.finished = ensureDeferred(self._run())

    async def _run(self) -> None:
        while not self._stopping:
            try:
                self.durations.append(await download(self.node, self.victim))
                self.ok += 1
            except DownloadFailed as e:
                self.failures.append(str(e))
                # Not a busy loop when the victim refuses at once.
                await deferLater(reactor, 0.2, lambda: None)

    def stop(self) -> Deferred[None]:
        self._stopping = True
        return self.finished


async def newPeerDownload(victim: Victim) -> None:
    """
    A peer never seen before (fresh key, from 127.0.0.1) connects, opens
    the tunnel and downloads once.

    @raise DownloadFailed: it could not.
    """
    node = await startedNode(LEGIT_HOST)
    try:
        await download(node, victim, timeout=30)
    finally:
        await node.stopService()


# -- attacker tools -----------------------------------------------------------------


def pauseReading(conn: Any) -> None:
    """
    Stop reading C{conn}'s socket: whatever the victim sends stays in its
    buffers (the kernel's, then its own).
    """
    conn.rawTransport.pauseProducing()


def sendFrames(conn: Any, frames: bytes) -> None:
    """
    Write raw yamux frames (already encoded) on C{conn}, under its
    encryption, bypassing our own session.
    """
    conn.session.transport.write(frames)


def frame(ftype: int, flags: int, streamID: int, length: int, payload: bytes = b"") -> bytes:
    return encodeHeader(ftype, flags, streamID, length) + payload


class Sink(Protocol):
    """
    A stream protocol that ignores everything and counts how it ended.
    """

    transport: Any

    lost = 0

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        Sink.lost += 1


def rawStream(conn: Any, first: bytes = b"") -> Any:
    """
    Open a stream on C{conn} with no negotiation of our own: C{first}
    (typically multistream headers and a request, pipelined) is written at
    once.
    """
    stream = conn.session.openStream()
    stream.setProtocol(Sink())
    if first:
        stream.write(first)
    return stream


def negotiation(protocolId: str) -> bytes:
    """
    The pipelined multistream-select opening for C{protocolId}.
    """
    return encodeMultistream(MULTISTREAM) + encodeMultistream(protocolId)


def kadRequest(message: Message) -> bytes:
    return encodeLengthPrefixed(encodeMessage(message))


def nameRecord(identity: Identity, name: str, addrs: Sequence[Multiaddr] = (), services: Sequence[str] = (),
               seq: Optional[int] = None, now: Optional[float] = None) -> Record:
    """
    A signed name record claiming C{name} for C{identity}, as a DHT record.
    """
    rec = makeRecord(identity, name, addrs, services, now=now or time.time(), seq=seq)
    return Record(dhtKey(name), signRecord(identity, rec))


class KadCall(Protocol):
    """
    Requests on one kad stream, one at a time: L{call} fires with the
    answer, or fails when the stream is reset (a refusal).
    """

    transport: Any

    def __init__(self) -> None:
        self.reader = LengthPrefixedReader(64 * KiB)
        self._waiting: Optional[Deferred[Message]] = None
        self.closed = False

    def call(self, message: Message) -> Deferred[Message]:
        d: Deferred[Message] = Deferred()
        if self.closed:
            d.errback(Failure(DownloadFailed("kad stream closed")))
            return d
        self._waiting = d
        self.transport.write(kadRequest(message))
        return d

    def dataReceived(self, data: bytes) -> None:
        for raw in self.reader.feed(data):
            d, self._waiting = self._waiting, None
            if d is not None:
                d.callback(decodeMessage(raw))

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.closed = True
        d, self._waiting = self._waiting, None
        if d is not None:
            d.errback(Failure(DownloadFailed(f"kad stream ended: {reason.value if reason else ''}")))


async def putRecord(node: Node, victim: Victim, record: Record) -> bool:
    """
    Store C{record} on the victim over a fresh stream; whether it was
    accepted (an answer came back rather than a reset).
    """
    try:
        proto = await withTimeout(node.openStream(victim.addr, KAD_PROTOCOL, KadCall), 15)
        answer = await withTimeout(proto.call(Message(MessageType.PUT_VALUE, key=record.key, record=record)), 15)
    except Exception:  # noqa: BLE001 - refused, reset or timed out alike
        return False
    proto.transport.loseConnection()
    return answer.record is not None and answer.record.value == record.value


class FakePeersKad(Protocol):
    """
    A malicious DHT server: every request is answered with closer peers
    of its choosing (fresh peer IDs at C{addrs}).
    """

    transport: Any

    addrs: Sequence[Multiaddr] = ()
    answered = 0

    def connectionMade(self) -> None:
        self.reader = LengthPrefixedReader(64 * KiB)

    def dataReceived(self, data: bytes) -> None:
        for raw in self.reader.feed(data):
            request = decodeMessage(raw)
            fakes = tuple(PeerInfo(Identity.generate().peerID, (a,)) for a in self.addrs)
            FakePeersKad.answered += 1
            self.transport.write(kadRequest(Message(request.type, key=request.key, closerPeers=fakes)))


class Counter(Protocol):
    """
    Counts connections accepted on a port where nobody should connect.
    """

    transport: Any

    accepts: dict[int, int] = {}

    def connectionMade(self) -> None:
        port = self.transport.getHost().port
        Counter.accepts[port] = Counter.accepts.get(port, 0) + 1
        self.transport.loseConnection()


# -- raw sockets ---------------------------------------------------------------------


def rawSocket(victim: Victim, source: str = ATTACKER_HOST) -> socket.socket:
    """
    A plain TCP connection from C{source} to the victim's libp2p port.
    """
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((source, 0))
    s.settimeout(5)
    s.connect((LEGIT_HOST, victim.port))
    s.setblocking(False)
    return s


def closeAll(socks: Sequence[socket.socket]) -> None:
    for s in socks:
        try:
            s.close()
        except OSError:
            pass


def everySoOften(seconds: float, deadline: float, step: Callable[[], Any], most: int = 10_000) -> Deferred[None]:
    """
    Call C{step} (awaiting what it returns, if awaitable) every C{seconds},
    at most C{most} times, until C{deadline} (monotonic) or until it
    returns C{False}.
    """

    async def run() -> None:
        for _ in range(most):
            if time.monotonic() >= deadline:
                return
            result = step()
            if hasattr(result, "__await__") or isinstance(result, Deferred):
                result = await result
            if result is False:
                return
            await deferLater(reactor, seconds, lambda: None)

    return ensureDeferred(run())
