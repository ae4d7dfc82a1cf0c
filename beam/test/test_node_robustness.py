"""
Tests of L{beam.p2p.host.node.Node} under stress and misbehaviour:
simultaneous dials, identify push, peers that never negotiate or send
garbage, handlers that raise, stopping with work in flight, idle reaping,
and the dialer's bookkeeping.

Node logic runs on the in-memory transport under a L{Clock}
(L{beam.test.memnodes.MemoryGrid}): deterministic, no sockets, no sleeps;
every timeout is driven with C{grid.advance}.  Only what is about TCP
itself (bytes on a raw TCP socket that is not libp2p) runs on real
loopback sockets, in L{RawTCPPeerTests}.
"""

from __future__ import annotations

import gc
import random
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, DeferredList, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from beam.p2p.protocols.echo import ECHO_PROTOCOL
from beam.errors import (
    ConnectionLimitExceeded,
    DialError,
    MuxerClosed,
    NegotiationFailed,
    NodeStopped,
    StreamReset,
)
from beam.p2p.protocols.identify import IDENTIFY_PROTOCOL
from beam.identity.keys import Identity
from beam.identity.multiaddr import Multiaddr
from beam.p2p.multistream import PROTOCOL_ID as MULTISTREAM, encodeMessage
from beam.test.memnodes import MemoryGrid
from beam.test.nodeutil import addrOf, randomPayload, startNode


def sameConnection(c1: Any, c2: Any) -> bool:
    """
    Whether two ends (one per node) are the same raw connection.
    """
    return (c1.localAddr, c1.observedRemote) == (c2.observedRemote, c2.localAddr)


class Recorder(Protocol):
    """
    A stream protocol that records what arrives and how it ended:
    L{lost} fires with the exception that C{connectionLost} was given.
    """

    def __init__(self) -> None:
        self.received = bytearray()
        self.lost: Deferred[BaseException] = Deferred()
        self._waiting: list[tuple[int, Deferred[None]]] = []

    def receivedAtLeast(self, n: int) -> Deferred[None]:
        """
        Fires once C{n} bytes have arrived.
        """
        d: Deferred[None] = Deferred()
        self._waiting.append((n, d))
        self._check()
        return d

    def _check(self) -> None:
        ready = [(n, d) for n, d in self._waiting if len(self.received) >= n]
        for item in ready:
            self._waiting.remove(item)
            item[1].callback(None)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        self._check()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if not self.lost.called:
            self.lost.callback(reason.value)


@implementer(IHalfCloseableProtocol)
class GatedEchoClient(Recorder):
    """
    An echo client that sends the first half of its payload at once and the
    rest (then half-closes) when L{release} is called.
    """

    def __init__(self, payload: bytes) -> None:
        super().__init__()
        self.payload = payload

    def connectionMade(self) -> None:
        self.transport.write(self.payload[: len(self.payload) // 2])

    def release(self) -> None:
        self.transport.write(self.payload[len(self.payload) // 2:])
        self.transport.loseWriteConnection()

    def readConnectionLost(self) -> None:
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass


class Boom(Exception):
    """
    Raised by misbehaving test handlers.
    """


class RaisesOnConnect(Protocol):
    def connectionMade(self) -> None:
        raise Boom("connectionMade")


def raisingFactory() -> Protocol:
    raise Boom("buildProtocol")


class LogCapture:
    """
    Collect log events while a test runs.
    """

    def __init__(self, testCase: SynchronousTestCase) -> None:
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        testCase.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def matching(self, text: str) -> list[dict]:
        return [e for e in self.events if text in (e.get("log_format") or "")]


def assertNoLoggedErrors(testCase: SynchronousTestCase) -> None:
    gc.collect()  # surfaces "Unhandled error in Deferred" of dropped Deferreds
    errors = testCase.flushLoggedErrors()
    testCase.assertEqual(errors, [], [e.getTraceback() for e in errors])


class SimultaneousDialTests(SynchronousTestCase):
    """
    Two peers dialling each other at once end up on one connection.
    """

    def setUp(self) -> None:
        self.grid = MemoryGrid(self)

    def test_bothDialConverge(self) -> None:
        """
        A and B dial each other at the same moment: each side sees two
        connections, keeps the one dialled by the smaller peer ID for new
        streams, closes the other once it carried no stream for the
        duplicate grace (no go-away: the peer may be using it), and pings
        work both ways afterwards.
        """
        grid = self.grid
        small, large = grid.pair()
        events: dict[Any, list] = {small: [], large: []}
        for n in (small, large):
            n.addConnectionObserver(lambda e, c, n=n: events[n].append((e, c)))
        small.peerStore.addAddrs(large.peerID, [grid.addr(large, withPeer=False)], "user")
        large.peerStore.addAddrs(small.peerID, [grid.addr(small, withPeer=False)], "user")
        grid.result(DeferredList([small.connect(large.peerID), large.connect(small.peerID)],
                                 fireOnOneErrback=True))
        grid.advance(small.duplicateGrace + 1)

        def count(n: Any, event: str) -> int:
            return len([c for e, c in events[n] if e == event])

        for n in (small, large):
            self.assertEqual(count(n, "connected"), 2)
            self.assertEqual(count(n, "disconnected"), 1)
            self.assertEqual(len(n._allConnections), 1)
        cs, cl = small.connections[large.peerID], large.connections[small.peerID]
        self.assertTrue(sameConnection(cs, cl))
        self.assertEqual(cs.direction, "outbound")
        self.assertEqual(cl.direction, "inbound")
        grid.result(small.ping(large.peerID, count=2))
        grid.result(large.ping(small.peerID, count=2))
        self.assertEqual(len(small._allConnections), 1)
        self.assertEqual(len(large._allConnections), 1)
        assertNoLoggedErrors(self)

    def test_inFlightStreamSurvivesGoAway(self) -> None:
        """
        A 1 MiB echo started on the connection that loses (dialled by the
        larger peer ID) completes intact after the smaller peer's dial wins;
        the losing connection closes only once the echo is done and the
        duplicate grace passed with no stream on it, and new streams use
        the survivor.
        """
        grid = self.grid
        small, large = grid.pair()
        loser = grid.result(large.connect(grid.addr(small)))
        payload, _ = randomPayload(1024 * 1024)
        client = GatedEchoClient(payload)
        grid.result(large.openStreamOn(loser, [ECHO_PROTOCOL], lambda: client))
        # The smaller peer dials too; a target without /p2p/ forces a new
        # dial even though a connection exists.
        winner = grid.result(small.connect(grid.addr(large, withPeer=False)))
        self.assertEqual(winner.direction, "outbound")
        self.assertIsNot(large.connections.get(small.peerID), loser)
        self.assertTrue(sameConnection(winner, large.connections[small.peerID]))
        # The losing connection is kept while its stream lives, however
        # long (several runs of the idle reaper).
        grid.advance(120)
        self.assertFalse(loser.closed)
        client.release()
        grid.result(client.lost)
        self.assertEqual(bytes(client.received), payload)
        self.assertFalse(loser.closed)
        grid.advance(large.duplicateGrace + 1)
        self.assertTrue(loser.closed)
        self.assertEqual((len(small._allConnections), len(large._allConnections)), (1, 1))
        self.assertIs(small.connections[large.peerID], winner)
        grid.result(large.ping(small.peerID))
        grid.result(small.ping(large.peerID))
        self.assertEqual(len(large._allConnections), 1)
        assertNoLoggedErrors(self)

    def test_peerGoAwayRetiresConnection(self) -> None:
        """
        When the peer sends go-away on our pooled connection, it is no
        longer handed out: the next stream uses a new connection, and the
        old one is closed (not leaked) once idle.
        """
        grid = self.grid
        a, b = grid.node(), grid.node()
        old = grid.result(a.connect(grid.addr(b)))
        grid.result(old.identified)
        b.connections[a.peerID].goAway()
        grid.settle()
        self.assertFalse(old.acceptsStreams)
        grid.result(a.ping(b.peerID))
        self.assertIsNot(a.connections[b.peerID], old)
        self.assertTrue(old.closed)
        self.assertEqual((len(a._allConnections), len(b._allConnections)), (1, 1))


class IdentifyPushTests(SynchronousTestCase):
    """
    Handler changes reach connected peers by identify push.
    """

    def test_pushAddAndRemove(self) -> None:
        """
        B adding a handler shows up in A's view of B's protocols without a
        new identify; removing it disappears likewise.  Several changes in
        one reactor turn are one push.
        """
        grid = MemoryGrid(self)
        a, b = grid.node(), grid.node()
        events: list[str] = []
        conn = grid.result(a.connect(grid.addr(b)))
        grid.result(conn.identified)
        self.assertIsNotNone(b.connections[a.peerID].identify)
        a.addConnectionObserver(lambda e, c: events.append(e))
        b.setStreamHandler("/new/1.0.0", Protocol)
        b.setStreamHandler("/other/1.0.0", Protocol)
        b.setStreamHandler("/third/1.0.0", Protocol)
        grid.settle()
        self.assertIn("/third/1.0.0", conn.identify.protocols)
        self.assertIn("/new/1.0.0", conn.identify.protocols)
        b.removeStreamHandler("/new/1.0.0")
        grid.settle()
        self.assertNotIn("/new/1.0.0", conn.identify.protocols)
        self.assertIn("/other/1.0.0", conn.identify.protocols)
        self.assertEqual(events, ["updated", "updated"])
        self.assertEqual(conn.streamsOpened, 1)  # only the first identify

    def test_silentIdentifyTimesOut(self) -> None:
        """
        A peer that accepts identify but never answers costs us nothing:
        our identify stream is aborted after the negotiation timeout, and
        C{conn.identified} fires with L{None}.
        """
        grid = MemoryGrid(self)
        a = grid.node(negotiationTimeout=0.3)
        b = grid.node()
        b.setStreamHandler(IDENTIFY_PROTOCOL, Protocol)
        conn = grid.result(a.connect(grid.addr(b)))
        self.assertEqual(conn.streamCount, 1)
        grid.advance(0.2)
        self.assertNoResult(conn.identified)
        grid.advance(0.2)
        self.assertIsNone(grid.result(conn.identified))
        self.assertIsNone(conn.identify)
        self.assertEqual(conn.streamCount, 0)
        self.assertFalse(conn.closed)


class MisbehavingStreamTests(SynchronousTestCase):
    """
    Streams that never negotiate, speak garbage, or whose handlers raise
    cost only themselves.
    """

    def setUp(self) -> None:
        self.grid = MemoryGrid(self)

    def test_neverNegotiatingStreams(self) -> None:
        """
        A peer opening more raw streams than allowed has the excess refused
        at once and the rest aborted after the negotiation timeout, while
        the node serves another peer; the connection stays up.
        """
        grid = self.grid
        a = grid.node()
        b = grid.node(negotiationTimeout=0.5, maxStreamsPerConnection=20)
        c = grid.node()
        conn = grid.result(a.connect(grid.addr(b)))
        grid.result(conn.identified)
        self.assertEqual(b.connections[a.peerID].streamCount, 0)
        raw = []
        for _ in range(30):
            r = Recorder()
            conn.openStream().setProtocol(r)
            raw.append(r)
        grid.settle()
        self.assertEqual(sum(r.lost.called for r in raw), 10)
        # Another peer is served meanwhile.
        grid.result(c.ping(grid.addr(b)))
        grid.advance(0.4)
        self.assertEqual(sum(r.lost.called for r in raw), 10)
        grid.advance(0.2)
        reasons = [grid.result(r.lost) for r in raw]
        self.assertTrue(all(isinstance(reason, StreamReset) for reason in reasons))
        self.assertTrue(all(r.received == b"" for r in raw))
        self.assertFalse(conn.closed)
        self.assertIsNotNone(b.connections[a.peerID].rawTransport)
        self.assertEqual(b.connections[a.peerID].streamCount, 0)
        grid.result(a.ping(b.peerID))
        self.assertIs(a.connections[b.peerID], conn)
        assertNoLoggedErrors(self)

    def test_garbageAndUnknownProtocolOnStream(self) -> None:
        """
        A stream carrying garbage is reset, one proposing an unknown
        protocol is answered C{na}; the connection stays, nothing is logged
        as an error.
        """
        grid = self.grid
        a, b = grid.node(), grid.node()
        conn = grid.result(a.connect(grid.addr(b)))
        garbage = Recorder()
        conn.openStream().setProtocol(garbage)
        garbage.transport.write(random.Random(7).randbytes(4096))
        self.assertIsInstance(grid.result(garbage.lost), StreamReset)
        unknown = Recorder()
        conn.openStream().setProtocol(unknown)
        unknown.transport.write(encodeMessage(MULTISTREAM) + encodeMessage("/nope/1.0.0"))
        grid.settle()
        self.assertEqual(bytes(unknown.received), encodeMessage(MULTISTREAM) + encodeMessage("na"))
        unknown.transport.loseConnection()
        grid.result(unknown.lost)
        grid.failure(a.openStream(b.peerID, ["/nope/1.0.0"], Protocol), NegotiationFailed)
        grid.result(a.ping(b.peerID))
        self.assertIs(a.connections[b.peerID], conn)
        assertNoLoggedErrors(self)

    def test_inboundHandlerRaises(self) -> None:
        """
        A handler raising while building its protocol, or its protocol in
        C{connectionMade}, resets that stream only; the error is logged.
        """
        grid = self.grid
        a, b = grid.node(), grid.node()
        b.setStreamHandler("/boom/build", raisingFactory)
        b.setStreamHandler("/boom/made", RaisesOnConnect)
        for proto in ("/boom/build", "/boom/made"):
            r = Recorder()
            grid.result(a.openStream(grid.addr(b), [proto], lambda: r))
            self.assertIsInstance(grid.result(r.lost), StreamReset)
        self.assertEqual(len(self.flushLoggedErrors(Boom)), 2)
        grid.result(a.ping(b.peerID))
        self.assertEqual(len(a._allConnections), 1)
        assertNoLoggedErrors(self)

    def test_outboundFactoryRaises(self) -> None:
        """
        L{Node.openStream} fails with the error when the factory, or its
        protocol's C{connectionMade}, raises (rather than never firing),
        and the stream is reset.
        """
        grid = self.grid
        a, b = grid.node(), grid.node()
        grid.result(a.connect(grid.addr(b)))
        grid.failure(a.openStream(b.peerID, [ECHO_PROTOCOL], raisingFactory), Boom)
        grid.failure(a.openStream(b.peerID, [ECHO_PROTOCOL], RaisesOnConnect), Boom)
        self.assertEqual(len(self.flushLoggedErrors(Boom)), 1)  # the connectionMade one
        conn = a.connections[b.peerID]
        self.assertEqual(conn.streamCount, 0)
        grid.result(a.ping(b.peerID))
        assertNoLoggedErrors(self)

    def test_outboundNegotiationTimeout(self) -> None:
        """
        A peer that never answers our protocol proposal fails the stream
        with L{NegotiationFailed} after the negotiation timeout.
        """
        grid = self.grid
        a, b = grid.node(negotiationTimeout=0.3), grid.node()
        grid.result(a.connect(grid.addr(b)))
        b._inboundStream = lambda conn, stream: None  # accepts, never speaks
        d = a.openStream(b.peerID, [ECHO_PROTOCOL], Protocol)
        grid.advance(0.2)
        self.assertNoResult(d)
        grid.advance(0.2)
        f = grid.failure(d, NegotiationFailed)
        self.assertIn("within", str(f.value))
        self.assertEqual(a.connections[b.peerID].streamCount, 0)


class MisbehavingConnectionTests(SynchronousTestCase):
    """
    Raw peers that do not speak libp2p are logged and dropped.
    """

    def setUp(self) -> None:
        self.grid = MemoryGrid(self)

    def test_garbageOnConnection(self) -> None:
        """
        Random bytes instead of multistream-select: the node logs and
        aborts the connection and keeps serving.
        """
        logs = LogCapture(self)
        grid = self.grid
        b, a = grid.node(), grid.node()
        raw = grid.rawConnect(b, Recorder())
        raw.transport.write(random.Random(1).randbytes(4096))
        grid.result(raw.lost)
        self.assertTrue(logs.matching("failed during upgrade"))
        self.assertEqual(b._upgrading, set())
        self.assertEqual(b._allConnections, set())
        grid.result(a.ping(grid.addr(b)))
        assertNoLoggedErrors(self)

    def test_truncatedHandshake(self) -> None:
        """
        A peer that agrees on Noise, sends half a handshake message and
        hangs up is logged and dropped; one that stops mid-handshake is cut
        off after the handshake timeout.
        """
        logs = LogCapture(self)
        grid = self.grid
        b = grid.node(handshakeTimeout=0.5)
        a = grid.node()
        hello = encodeMessage(MULTISTREAM) + encodeMessage("/noise")
        raw = grid.rawConnect(b, Recorder())
        raw.transport.write(hello)
        grid.settle()
        self.assertEqual(bytes(raw.received), hello)
        raw.transport.write(b"\x00\x20" + b"\x01" * 5)
        raw.transport.loseConnection()
        grid.result(raw.lost)
        self.assertEqual(b._upgrading, set())
        self.assertTrue(logs.matching("failed during upgrade"))
        stalled = grid.rawConnect(b, Recorder())
        stalled.transport.write(hello + b"\x00\x20" + b"\x01" * 5)
        grid.advance(0.4)
        self.assertNoResult(stalled.lost)
        self.assertEqual(len(b._upgrading), 1)
        grid.advance(0.2)
        grid.result(stalled.lost)
        self.assertEqual(b._upgrading, set())
        grid.result(a.ping(grid.addr(b)))
        self.assertEqual(len(b._allConnections), 1)
        assertNoLoggedErrors(self)


class HandshakeBudgetTests(SynchronousTestCase):
    """
    Inbound connections that have not finished the handshake have their
    own budget, capped per source, so an unauthenticated flood cannot lock
    established or new peers out (OpenSSH's C{MaxStartups}).
    """

    def setUp(self) -> None:
        self.grid = MemoryGrid(self)

    def flood(self, node: Any, count: int, source: Any = None) -> list[Recorder]:
        """
        C{count} raw connections that never speak, all from port C{source}
        (one "IP"), or each from its own port if C{source} is C{"each"}.
        """
        out = []
        for i in range(count):
            src = (1_000_000 + len(self.grid.nodes) * 1000 + i) if source == "each" else source
            out.append(self.grid.rawConnect(node, Recorder(), source=src))
        return out

    def test_perSourceCap(self) -> None:
        """
        100 silent connections from one source: 8 wait in the handshake,
        the rest are aborted at once and counted, one log line says so; a
        legitimate peer connects and pings meanwhile; after the handshake
        timeout the slots are free again.
        """
        logs = LogCapture(self)
        grid = self.grid
        b = grid.node()
        a = grid.node()
        raws = self.flood(b, 100, source=7)
        grid.settle()
        waiting = [r for r in raws if not r.lost.called]
        self.assertEqual(len(waiting), 8)
        self.assertEqual(b.pendingHandshakeCount, 8)
        self.assertEqual(b.refusedHandshakes, 92)
        self.assertEqual(b.openConnectionCount, 0)
        self.assertEqual(len(logs.matching("refused {n} inbound")), 1)
        self.assertFalse(logs.matching("failed during upgrade"))
        self.assertEqual(len(grid.result(a.ping(grid.addr(b), count=3))), 3)
        self.assertEqual(len(b._allConnections), 1)
        grid.advance(b.handshakeTimeout + 0.1)
        for r in waiting:
            self.assertTrue(r.lost.called)
        self.assertEqual(b.pendingHandshakeCount, 0)
        self.assertEqual(b.resources.status()["transient"]["conns_inbound"], 0)
        again = self.flood(b, 8, source=7)
        grid.settle()
        self.assertFalse(any(r.lost.called for r in again))
        self.assertEqual(b.pendingHandshakeCount, 8)
        assertNoLoggedErrors(self)

    def test_pendingBudget(self) -> None:
        """
        Silent connections from many sources fill the handshake budget (the
        transient scope's inbound share), not the connection limit: an
        established peer keeps working and the node still dials out; once
        the budget is full, further inbound connections are refused until
        the timeout frees it.
        """
        grid = self.grid
        b = grid.node(maxConnections=16, maxPendingHandshakes=10, handshakeTimeout=5.0)
        a, c, d, e = grid.node(), grid.node(), grid.node(), grid.node()
        grid.result(a.connect(grid.addr(b)))
        raws = self.flood(b, 5, source="each")
        grid.settle()
        self.assertEqual(b.pendingHandshakeCount, 5)
        grid.result(c.ping(grid.addr(b)))
        grid.result(b.connect(grid.addr(d)))
        self.assertEqual(b.openConnectionCount, 3)
        more = self.flood(b, 20, source="each")
        grid.settle()
        self.assertEqual(b.pendingHandshakeCount, 10)
        self.assertEqual(sum(1 for r in raws + more if r.lost.called), 15)
        self.assertEqual(b.refusedHandshakes, 15)
        # With the handshake budget full, established peers, our own dials
        # and their place in the connection limit are untouched.
        grid.result(a.ping(grid.addr(b)))
        grid.result(b.connect(grid.addr(e)))
        self.assertEqual(b.openConnectionCount, 4)
        grid.advance(5.1)
        self.assertEqual(b.pendingHandshakeCount, 0)
        self.assertTrue(all(r.lost.called for r in raws + more))
        assertNoLoggedErrors(self)

    def test_limitCheckedWhenHandshakeFinishes(self) -> None:
        """
        Handshakes run beside a full connection table, so the connection
        limit is checked again when one finishes: over it, the connection
        is dropped (and counted), not kept.
        """
        grid = self.grid
        b = grid.node(maxConnections=1)
        a, c = grid.node(), grid.node()
        da, dc = a.connect(grid.addr(b)), c.connect(grid.addr(b))
        grid.settle()
        outcomes: list[Any] = []
        for d in (da, dc):
            d.addBoth(outcomes.append)
        grid.advance(1)
        self.assertEqual(len(outcomes), 2)
        self.assertEqual(len(b._allConnections), 1)
        self.assertEqual(b.refusedHandshakes, 1)
        self.assertEqual(b.pendingHandshakeCount, 0)
        self.assertEqual(b.openConnectionCount, 1)
        # The refused dialer finished its side of the handshake, but its
        # connection is closed.
        live = [o for o in outcomes if not isinstance(o, Failure) and not o.closed]
        self.assertEqual(len(live), 1)
        assertNoLoggedErrors(self)

    def test_refusalsLoggedOncePerInterval(self) -> None:
        """
        Refusals are logged at most once per interval, with the number
        refused since the last line.
        """
        logs = LogCapture(self)
        grid = self.grid
        b = grid.node(maxPendingHandshakesPerSource=1, handshakeTimeout=100.0)
        self.flood(b, 5, source=9)
        grid.advance(4)
        self.flood(b, 5, source=9)
        grid.advance(4)
        self.assertEqual(len(logs.matching("refused {n} inbound")), 1)
        grid.advance(3)
        self.flood(b, 3, source=9)
        grid.settle()
        lines = logs.matching("refused {n} inbound")
        self.assertEqual([e["n"] for e in lines], [1, 9])
        self.assertEqual(b.refusedHandshakes, 12)

    def test_sourceKey(self) -> None:
        """
        IPv4 connections are grouped by address, IPv6 ones by /64;
        the machine's own 127.0.0.1 and ::1 are not capped per source
        (every local node shares them), other loopback addresses are.
        """
        from twisted.internet.address import IPv4Address, IPv6Address

        from beam.p2p.host.node import sourceKey

        self.assertEqual(sourceKey(IPv4Address("TCP", "192.0.2.1", 5)), "192.0.2.1")
        self.assertEqual(sourceKey(IPv6Address("TCP", "2001:db8:1:2:3::4", 5)),
                         sourceKey(IPv6Address("TCP", "2001:db8:1:2:ffff::1", 6)))
        self.assertNotEqual(sourceKey(IPv6Address("TCP", "2001:db8:1:2::1", 5)),
                            sourceKey(IPv6Address("TCP", "2001:db8:1:3::1", 5)))
        self.assertEqual(sourceKey(IPv6Address("TCP", "::ffff:192.0.2.1", 5)), "192.0.2.1")
        self.assertIsNone(sourceKey(object()))
        for local in (IPv4Address("TCP", "127.0.0.1", 5), IPv6Address("TCP", "::1", 5),
                      IPv6Address("TCP", "::ffff:127.0.0.1", 5)):
            self.assertIsNone(sourceKey(local))
        # Another loopback address is a source like any other: a process
        # must choose to bind it.
        self.assertEqual(sourceKey(IPv4Address("TCP", "127.0.0.2", 5)), "127.0.0.2")
        self.assertEqual(sourceKey(IPv6Address("TCP", "::ffff:127.0.0.9", 5)), "127.0.0.9")


class ObserverTests(SynchronousTestCase):
    """
    Connection observers see each connection's life in order.
    """

    def test_eventsInOrder(self) -> None:
        """
        Both sides see C{connected}, C{identified}, C{disconnected} for a
        connection, in that order; a raising observer does not disturb the
        others.
        """
        grid = MemoryGrid(self)
        a, b = grid.node(), grid.node()
        seen: dict[Any, list] = {a: [], b: []}

        def broken(event: str, conn: Any) -> None:
            raise Boom(event)

        for n in (a, b):
            n.addConnectionObserver(broken)
            n.addConnectionObserver(lambda e, c, n=n: seen[n].append((e, c.remotePeer)))
        conn = grid.result(a.connect(grid.addr(b)))
        grid.result(conn.identified)
        self.assertEqual(len(seen[b]), 2)
        conn.close()
        grid.settle()
        self.assertEqual(seen[a], [(e, b.peerID) for e in ("connected", "identified", "disconnected")])
        self.assertEqual(seen[b], [(e, a.peerID) for e in ("connected", "identified", "disconnected")])
        self.assertEqual(len(self.flushLoggedErrors(Boom)), 6)


class StopTests(SynchronousTestCase):
    """
    Stopping is prompt whatever is in flight, and final.
    """

    def setUp(self) -> None:
        self.grid = MemoryGrid(self)

    def test_stopWithWorkInFlight(self) -> None:
        """
        A node with open streams, inbound streams still negotiating and an
        outbound negotiation pending stops promptly; the pending stream
        fails with L{NodeStopped}; a second stop call also fires; after it,
        connect, openStream and ping fail with L{NodeStopped}.
        """
        grid = self.grid
        a, b = grid.node(), grid.node()
        conn = grid.result(a.connect(grid.addr(b)))
        grid.result(conn.identified)
        held = Recorder()
        grid.result(a.openStream(b.peerID, [ECHO_PROTOCOL], lambda: held))
        bConn = b.connections[a.peerID]
        for _ in range(5):
            bConn.openStream().setProtocol(Recorder())  # B never proposes; A waits
        b._inboundStream = lambda c, stream: None
        pending = a.openStream(b.peerID, [ECHO_PROTOCOL], Protocol)
        grid.settle()
        self.assertEqual(conn.streamCount, 7)
        first = a.stopService()
        second = a.stopService()
        # Promptly: without any time passing.
        grid.result(first)
        grid.result(second)
        grid.failure(pending, NodeStopped)
        self.assertIsInstance(grid.result(held.lost), MuxerClosed)
        addr = grid.addr(b)
        grid.failure(a.connect(addr), NodeStopped)
        grid.failure(a.openStream(b.peerID, [ECHO_PROTOCOL], Protocol), NodeStopped)
        grid.failure(a.ping(b.peerID), NodeStopped)
        grid.result(a.stopService())
        self.assertEqual(
            (a._dialer.pending, a._dialer.dials, a._upgrading, a._allConnections), ({}, {}, set(), set())
        )

    def test_stopPromptWhenPeerStoppedReading(self) -> None:
        """
        A node whose peer stopped reading, with megabytes queued towards it,
        still stops promptly: it waits C{closeTimeout} for the queue to
        drain, then aborts the connection.

        (Over loopback TCP the kernel's socket buffers, tens of MiB with
        Linux autotuning, swallow the queue for the paused peer and the
        close completes at once; the memory transport's peer really stops
        reading, which is the case C{closeTimeout} exists for.)
        """
        grid = self.grid
        a, b = grid.node(), grid.node()
        conn = grid.result(a.connect(grid.addr(b)))
        grid.result(conn.identified)
        streams = grid.result(DeferredList(
            [a.openStreamOn(conn, [ECHO_PROTOCOL], Recorder) for _ in range(64)], fireOnOneErrback=True
        ))
        bTransport = b.connections[a.peerID].rawTransport
        bTransport.pauseProducing()
        chunk = b"x" * (256 * 1024)
        for _, proto in streams:
            proto.transport.write(chunk)
        grid.settle()
        # The transport is full: it paused the session.
        self.assertTrue(conn.session._paused)
        stopped = a.stopService()
        grid.advance(a.closeTimeout - 0.1)
        self.assertNoResult(stopped)
        self.assertFalse(conn.closed)
        grid.advance(0.2)
        grid.result(stopped)
        self.assertTrue(conn.closed)

    def test_stopAbortsConnectionThatWillNotClose(self) -> None:
        """
        A connection that does not close cleanly is aborted after
        C{closeTimeout}, so stopping cannot hang on it.
        """
        grid = self.grid
        a, b = grid.node(closeTimeout=0.5), grid.node()
        conn = grid.result(a.connect(grid.addr(b)))
        conn.close = lambda: None  # stands in for a close that never completes
        stopped = a.stopService()
        grid.advance(0.4)
        self.assertNoResult(stopped)
        self.assertFalse(conn.closed)
        grid.advance(0.2)
        grid.result(stopped)
        self.assertTrue(conn.closed)


class ReapingTests(SynchronousTestCase):
    """
    The idle reaper closes only what has no streams.
    """

    def test_openStreamKeepsConnection(self) -> None:
        """
        A connection with an open stream outlives the idle timeout; once the
        stream ends, it is closed.
        """
        grid = MemoryGrid(self)
        a, b = grid.node(idleTimeout=0.2), grid.node()
        held = Recorder()
        grid.result(a.openStream(grid.addr(b), [ECHO_PROTOCOL], lambda: held))
        conn = held.transport.connection
        grid.advance(1.0)  # five idle timeouts
        self.assertFalse(conn.closed)
        held.transport.loseConnection()
        grid.result(held.lost)
        grid.advance(0.3)  # one idle timeout and a run of the reaper
        self.assertTrue(conn.closed)
        self.assertEqual(a.connections, {})


class DialerTests(SynchronousTestCase):
    """
    The dialer's bookkeeping: every caller gets an answer, nothing leaks.
    """

    def setUp(self) -> None:
        self.grid = MemoryGrid(self)

    def test_immediateDialFailureReachesCaller(self) -> None:
        """
        A dial that fails before any I/O (connection limit reached, an
        address we cannot dial) fails the caller's Deferred instead of
        leaving it unfired, and leaves no pending dial behind.
        """
        grid = self.grid
        a = grid.node(maxConnections=1)
        b, c = grid.node(), grid.node()
        a.peerStore.addAddrs(c.peerID, [Multiaddr.fromString("/ip4/127.0.0.1/udp/9")], "user")
        # Without letting anything run: the answer is there at once.
        f = self.failureResultOf(a.connect(c.peerID), DialError)
        self.assertIn("udp", str(f.value))
        grid.result(a.connect(grid.addr(b)))
        self.failureResultOf(a.connect(grid.addr(c)), ConnectionLimitExceeded)
        self.assertEqual((a._dialer.pending, a._dialer.dials), ({}, {}))

    def test_cancelConnect(self) -> None:
        """
        Cancelling one of two callers sharing a dial leaves the other
        waiting; cancelling the last cancels the dial itself, leaving no
        pending state and no half-open connection.
        """
        grid = self.grid
        a = grid.node()
        silent = grid.silentListener()
        target = silent.addr.withPeerID(Identity.generate().peerID)
        d1 = a.connect(target)
        d2 = a.connect(target)
        grid.settle()
        self.assertTrue(a._upgrading)
        d1.cancel()
        grid.failure(d1, CancelledError)
        self.assertNoResult(d2)
        d2.cancel()
        grid.failure(d2, CancelledError)
        self.assertEqual((a._dialer.pending, a._dialer.dials, a._upgrading), ({}, {}, set()))
        self.assertEqual([p.transport.disconnected for p in silent.protocols], [True])
        assertNoLoggedErrors(self)

    def test_unreachableNamesAddress(self) -> None:
        """
        A failed dial by peer ID names both the peer and the address.
        """
        grid = self.grid
        a, b = grid.node(), grid.node()
        addr = grid.addr(b)
        grid.result(b.stopService())
        f = grid.failure(a.connect(addr), DialError)
        self.assertIn(str(b.peerID), str(f.value))
        self.assertIn(str(addr.withoutPeerID()), str(f.value))


class UpgradeErrorTests(SynchronousTestCase):
    """
    Our own errors while finishing an upgrade cost only that connection.
    """

    def test_connectionSetupRaises(self) -> None:
        """
        If building the peer connection raises, the error is logged, the
        raw connection dropped and the dial fails (rather than hanging);
        the node then connects normally.
        """
        grid = MemoryGrid(self)
        a, b = grid.node(), grid.node()
        real = a._newConnection

        def broken(*args: Any, **kw: Any) -> Any:
            raise Boom("setup")

        a._newConnection = broken
        grid.failure(a.connect(grid.addr(b)), DialError, Boom)
        self.assertEqual(len(self.flushLoggedErrors(Boom)), 1)
        self.assertEqual((a._upgrading, a._allConnections), (set(), set()))
        self.assertEqual(b._allConnections, set())
        a._newConnection = real
        grid.result(a.ping(grid.addr(b)))
        assertNoLoggedErrors(self)


class KeepAliveTests(SynchronousTestCase):
    """
    Peers marked keep-alive are not idle-reaped.
    """

    def test_keepAliveSurvivesIdleReaping(self) -> None:
        """
        A connection to a peer protected with C{node.protect} stays open past the idle
        timeout; once unmarked, it is reaped.
        """
        grid = MemoryGrid(self)
        a, b = grid.node(idleTimeout=0.2), grid.node()
        a.protect(b.peerID, "test")
        conn = grid.result(a.connect(grid.addr(b)))
        grid.advance(0.6)
        self.assertFalse(conn.closed)
        a.unprotect(b.peerID, "test")
        grid.advance(0.3)
        self.assertTrue(conn.closed)


def rawTCP(node: Any) -> Deferred[Recorder]:
    """
    A plain TCP connection to C{node}'s first listening address.
    """
    host, port, _ = node.listenAddrs[0].tcpTarget()
    return connectProtocol(TCP4ClientEndpoint(reactor, host, port), Recorder())


class RawTCPPeerTests(TestCase):
    """
    Real sockets: raw TCP peers that do not speak libp2p are logged and
    dropped.  These stay on loopback because they are about bytes arriving
    on a real TCP listener from a socket that is not a node (the same
    logic on the memory transport is L{MisbehavingConnectionTests}); they
    wait on events, never on fixed sleeps.
    """

    @inlineCallbacks
    def test_garbageOnTCP(self):
        """
        Random bytes instead of multistream-select: the node logs and
        aborts the connection and keeps serving.
        """
        logs = LogCapture(self)
        b = yield startNode(self)
        a = yield startNode(self)
        raw = yield rawTCP(b)
        raw.transport.write(random.Random(1).randbytes(4096))
        yield raw.lost
        self.assertTrue(logs.matching("failed during upgrade"))
        self.assertEqual(b._upgrading, set())
        self.assertEqual(b._allConnections, set())
        yield a.ping(addrOf(b))
        assertNoLoggedErrors(self)

    @inlineCallbacks
    def test_truncatedHandshake(self):
        """
        A peer that agrees on Noise, sends half a handshake message and
        hangs up is logged and dropped; one that stops mid-handshake is cut
        off after the handshake timeout.
        """
        logs = LogCapture(self)
        b = yield startNode(self, handshakeTimeout=0.5)
        a = yield startNode(self)
        hello = encodeMessage(MULTISTREAM) + encodeMessage("/noise")
        raw = yield rawTCP(b)
        raw.transport.write(hello)
        yield raw.receivedAtLeast(len(hello))
        self.assertEqual(bytes(raw.received), hello)
        (upgrading,) = b._upgrading
        upgraded: Deferred[None] = Deferred()
        upgrading.done.addBoth(lambda _: upgraded.callback(None))
        raw.transport.write(b"\x00\x20" + b"\x01" * 5)
        raw.transport.loseConnection()
        yield raw.lost
        yield upgraded
        self.assertEqual(b._upgrading, set())
        self.assertTrue(logs.matching("failed during upgrade"))
        stalled = yield rawTCP(b)
        stalled.transport.write(hello + b"\x00\x20" + b"\x01" * 5)
        started = reactor.seconds()
        yield stalled.lost
        self.assertLess(reactor.seconds() - started, 3)
        self.assertEqual(b._upgrading, set())
        yield a.ping(addrOf(b))
        self.assertEqual(len(b._allConnections), 1)
        assertNoLoggedErrors(self)
