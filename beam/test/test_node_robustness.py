"""
Real-socket tests of L{beam.p2p.host.node.Node} under stress and misbehaviour:
simultaneous dials, identify push, peers that never negotiate or send
garbage, handlers that raise, stopping with work in flight, idle reaping,
and the dialer's bookkeeping.

Conditions are awaited by polling with a short L{deferLater} loop and an
overall timeout (L{waitFor}); fixed sleeps are used only where a test
asserts that something does I{not} happen for a while.
"""

from __future__ import annotations

import gc
import random
from typing import Any, Callable

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, DeferredList, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
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
from beam.test.nodeutil import addrOf, randomPayload, startNode


@inlineCallbacks
def waitFor(check: Callable[[], Any], timeout: float = 5.0, interval: float = 0.01) -> Any:
    """
    Poll C{check()} until it returns something true; fail after C{timeout}.
    """
    deadline = reactor.seconds() + timeout
    while True:
        value = check()
        if value:
            return value
        if reactor.seconds() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {check}")
        yield deferLater(reactor, interval, lambda: None)


def sameTCP(c1: Any, c2: Any) -> bool:
    """
    Whether two ends (one per node) are the same TCP connection.
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

    def dataReceived(self, data: bytes) -> None:
        self.received += data

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


def rawTCP(node: Any) -> Deferred[Recorder]:
    """
    A plain TCP connection to C{node}'s first listening address.
    """
    host, port, _ = node.listenAddrs[0].tcpTarget()
    return connectProtocol(TCP4ClientEndpoint(reactor, host, port), Recorder())


class LogCapture:
    """
    Collect log events while a test runs.
    """

    def __init__(self, testCase: TestCase) -> None:
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        testCase.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def matching(self, text: str) -> list[dict]:
        return [e for e in self.events if text in (e.get("log_format") or "")]


def assertNoLoggedErrors(testCase: TestCase) -> None:
    gc.collect()  # surfaces "Unhandled error in Deferred" of dropped Deferreds
    errors = testCase.flushLoggedErrors()
    testCase.assertEqual(errors, [], [e.getTraceback() for e in errors])


class Pair:
    """
    Two started nodes, ordered so that C{small} has the smaller peer ID.
    """

    @inlineCallbacks
    def make(self, testCase: TestCase, **kw: Any) -> Any:
        x = yield startNode(testCase, **kw)
        y = yield startNode(testCase, **kw)
        if x.peerID.bytes < y.peerID.bytes:
            return x, y
        return y, x


class SimultaneousDialTests(TestCase):
    """
    Two peers dialling each other at once end up on one connection.
    """

    @inlineCallbacks
    def test_bothDialConverge(self):
        """
        A and B dial each other at the same moment: each side sees two
        connections, keeps the one dialled by the smaller peer ID, closes
        the other, and pings work both ways afterwards.
        """
        small, large = yield Pair().make(self)
        events = {small: [], large: []}
        for n in (small, large):
            n.addConnectionObserver(lambda e, c, n=n: events[n].append((e, c)))
        small.peerStore.addAddrs(large.peerID, [addrOf(large, withPeer=False)], "user")
        large.peerStore.addAddrs(small.peerID, [addrOf(small, withPeer=False)], "user")
        yield DeferredList([small.connect(large.peerID), large.connect(small.peerID)], fireOnOneErrback=True)

        def count(n, event):
            return len([c for e, c in events[n] if e == event])

        yield waitFor(lambda: all(count(n, "disconnected") == 1 for n in (small, large)))
        for n in (small, large):
            self.assertEqual(count(n, "connected"), 2)
            self.assertEqual(len(n._allConnections), 1)
        cs, cl = small.connections[large.peerID], large.connections[small.peerID]
        self.assertTrue(sameTCP(cs, cl))
        self.assertEqual(cs.direction, "outbound")
        self.assertEqual(cl.direction, "inbound")
        yield small.ping(large.peerID, count=2)
        yield large.ping(small.peerID, count=2)
        self.assertEqual(len(small._allConnections), 1)
        self.assertEqual(len(large._allConnections), 1)
        assertNoLoggedErrors(self)

    @inlineCallbacks
    def test_inFlightStreamSurvivesGoAway(self):
        """
        A 1 MiB echo started on the connection that loses (dialled by the
        larger peer ID) completes intact after the smaller peer's dial wins;
        the losing connection closes only once the echo is done, and new
        streams use the survivor.
        """
        small, large = yield Pair().make(self)
        loser = yield large.connect(addrOf(small))
        payload, _ = randomPayload(1024 * 1024)
        client = GatedEchoClient(payload)
        yield large.openStreamOn(loser, [ECHO_PROTOCOL], lambda: client)
        # The smaller peer dials too; a target without /p2p/ forces a new
        # dial even though a connection exists.
        winner = yield small.connect(addrOf(large, withPeer=False))
        self.assertEqual(winner.direction, "outbound")
        yield waitFor(lambda: large.connections.get(small.peerID) is not loser)
        self.assertTrue(sameTCP(winner, large.connections[small.peerID]))
        self.assertFalse(loser.acceptsStreams)
        # The losing connection is kept while its stream lives.
        yield deferLater(reactor, 0.3, lambda: None)
        self.assertFalse(loser.closed)
        client.release()
        yield client.lost
        self.assertEqual(bytes(client.received), payload)
        yield loser.whenClosed()
        yield waitFor(lambda: len(small._allConnections) == 1 and len(large._allConnections) == 1)
        self.assertIs(small.connections[large.peerID], winner)
        yield large.ping(small.peerID)
        yield small.ping(large.peerID)
        self.assertEqual(len(large._allConnections), 1)
        assertNoLoggedErrors(self)

    @inlineCallbacks
    def test_peerGoAwayRetiresConnection(self):
        """
        When the peer sends go-away on our pooled connection, it is no
        longer handed out: the next stream uses a new connection, and the
        old one is closed (not leaked) once idle.
        """
        a = yield startNode(self)
        b = yield startNode(self)
        old = yield a.connect(addrOf(b))
        yield old.identified
        b.connections[a.peerID].goAway()
        yield waitFor(lambda: not old.acceptsStreams)
        yield a.ping(b.peerID)
        self.assertIsNot(a.connections[b.peerID], old)
        yield old.whenClosed()
        yield waitFor(lambda: len(a._allConnections) == 1 and len(b._allConnections) == 1)


class IdentifyPushTests(TestCase):
    """
    Handler changes reach connected peers by identify push.
    """

    @inlineCallbacks
    def test_pushAddAndRemove(self):
        """
        B adding a handler shows up in A's view of B's protocols without a
        new identify; removing it disappears likewise.  Several changes in
        one reactor turn are one push.
        """
        a = yield startNode(self)
        b = yield startNode(self)
        events: list[str] = []
        conn = yield a.connect(addrOf(b))
        yield conn.identified
        yield waitFor(lambda: b.connections.get(a.peerID) is not None and b.connections[a.peerID].identify)
        a.addConnectionObserver(lambda e, c: events.append(e))
        b.setStreamHandler("/new/1.0.0", Protocol)
        b.setStreamHandler("/other/1.0.0", Protocol)
        b.setStreamHandler("/third/1.0.0", Protocol)
        yield waitFor(lambda: "/third/1.0.0" in conn.identify.protocols)
        self.assertIn("/new/1.0.0", conn.identify.protocols)
        b.removeStreamHandler("/new/1.0.0")
        yield waitFor(lambda: "/new/1.0.0" not in conn.identify.protocols)
        self.assertIn("/other/1.0.0", conn.identify.protocols)
        self.assertEqual(events, ["updated", "updated"])
        self.assertEqual(conn.streamsOpened, 1)  # only the first identify

    @inlineCallbacks
    def test_silentIdentifyTimesOut(self):
        """
        A peer that accepts identify but never answers costs us nothing:
        our identify stream is aborted after the negotiation timeout, and
        C{conn.identified} fires with L{None}.
        """
        a = yield startNode(self, negotiationTimeout=0.3)
        b = yield startNode(self)
        b.setStreamHandler(IDENTIFY_PROTOCOL, Protocol)
        conn = yield a.connect(addrOf(b))
        started = reactor.seconds()
        info = yield conn.identified
        self.assertIsNone(info)
        self.assertIsNone(conn.identify)
        self.assertLess(reactor.seconds() - started, 3)
        yield waitFor(lambda: conn.streamCount == 0)
        self.assertFalse(conn.closed)


class MisbehavingStreamTests(TestCase):
    """
    Streams that never negotiate, speak garbage, or whose handlers raise
    cost only themselves.
    """

    @inlineCallbacks
    def test_neverNegotiatingStreams(self):
        """
        A peer opening more raw streams than allowed has the excess refused
        at once and the rest aborted after the negotiation timeout, while
        the node serves another peer; the connection stays up.
        """
        a = yield startNode(self)
        b = yield startNode(self, negotiationTimeout=0.5, maxStreamsPerConnection=20)
        c = yield startNode(self)
        conn = yield a.connect(addrOf(b))
        yield conn.identified
        yield waitFor(lambda: b.connections.get(a.peerID) is not None and b.connections[a.peerID].streamCount == 0)
        raw = []
        for _ in range(30):
            r = Recorder()
            conn.openStream().setProtocol(r)
            raw.append(r)
        started = reactor.seconds()
        yield waitFor(lambda: sum(r.lost.called for r in raw) >= 10)
        self.assertLess(reactor.seconds() - started, 0.4)
        # Another peer is served meanwhile.
        yield c.ping(addrOf(b))
        reasons = yield DeferredList([r.lost for r in raw])
        self.assertGreaterEqual(reactor.seconds() - started, 0.4)
        self.assertTrue(all(isinstance(reason, StreamReset) for _, reason in reasons))
        self.assertTrue(all(r.received == b"" for r in raw))
        self.assertFalse(conn.closed)
        self.assertIs(b.connections[a.peerID].rawTransport is not None, True)
        yield waitFor(lambda: b.connections[a.peerID].streamCount == 0)
        yield a.ping(b.peerID)
        self.assertIs(a.connections[b.peerID], conn)
        assertNoLoggedErrors(self)

    @inlineCallbacks
    def test_garbageAndUnknownProtocolOnStream(self):
        """
        A stream carrying garbage is reset, one proposing an unknown
        protocol is answered C{na}; the connection stays, nothing is logged
        as an error.
        """
        a = yield startNode(self)
        b = yield startNode(self)
        conn = yield a.connect(addrOf(b))
        garbage = Recorder()
        conn.openStream().setProtocol(garbage)
        garbage.transport.write(random.Random(7).randbytes(4096))
        reason = yield garbage.lost
        self.assertIsInstance(reason, StreamReset)
        unknown = Recorder()
        conn.openStream().setProtocol(unknown)
        unknown.transport.write(encodeMessage(MULTISTREAM) + encodeMessage("/nope/1.0.0"))
        yield waitFor(lambda: bytes(unknown.received) == encodeMessage(MULTISTREAM) + encodeMessage("na"))
        unknown.transport.loseConnection()
        yield unknown.lost
        yield self.assertFailure(a.openStream(b.peerID, ["/nope/1.0.0"], Protocol), NegotiationFailed)
        yield a.ping(b.peerID)
        self.assertIs(a.connections[b.peerID], conn)
        assertNoLoggedErrors(self)

    @inlineCallbacks
    def test_inboundHandlerRaises(self):
        """
        A handler raising while building its protocol, or its protocol in
        C{connectionMade}, resets that stream only; the error is logged.
        """
        a = yield startNode(self)
        b = yield startNode(self)
        b.setStreamHandler("/boom/build", raisingFactory)
        b.setStreamHandler("/boom/made", RaisesOnConnect)
        for proto in ("/boom/build", "/boom/made"):
            r = Recorder()
            yield a.openStream(addrOf(b), [proto], lambda: r)
            reason = yield r.lost
            self.assertIsInstance(reason, StreamReset)
        self.assertEqual(len(self.flushLoggedErrors(Boom)), 2)
        yield a.ping(b.peerID)
        self.assertEqual(len(a._allConnections), 1)
        assertNoLoggedErrors(self)

    @inlineCallbacks
    def test_outboundFactoryRaises(self):
        """
        L{Node.openStream} fails with the error when the factory, or its
        protocol's C{connectionMade}, raises (rather than never firing),
        and the stream is reset.
        """
        a = yield startNode(self)
        b = yield startNode(self)
        yield a.connect(addrOf(b))
        yield self.assertFailure(a.openStream(b.peerID, [ECHO_PROTOCOL], raisingFactory), Boom)
        yield self.assertFailure(a.openStream(b.peerID, [ECHO_PROTOCOL], RaisesOnConnect), Boom)
        self.assertEqual(len(self.flushLoggedErrors(Boom)), 1)  # the connectionMade one
        conn = a.connections[b.peerID]
        yield waitFor(lambda: conn.streamCount == 0)
        yield a.ping(b.peerID)
        assertNoLoggedErrors(self)

    @inlineCallbacks
    def test_outboundNegotiationTimeout(self):
        """
        A peer that never answers our protocol proposal fails the stream
        with L{NegotiationFailed} after the negotiation timeout.
        """
        a = yield startNode(self, negotiationTimeout=0.3)
        b = yield startNode(self)
        yield a.connect(addrOf(b))
        b._inboundStream = lambda conn, stream: None  # accepts, never speaks
        f = yield self.assertFailure(a.openStream(b.peerID, [ECHO_PROTOCOL], Protocol), NegotiationFailed)
        self.assertIn("within", str(f))
        conn = a.connections[b.peerID]
        yield waitFor(lambda: conn.streamCount == 0)


class MisbehavingConnectionTests(TestCase):
    """
    Raw TCP peers that do not speak libp2p are logged and dropped.
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
        yield waitFor(lambda: bytes(raw.received) == hello)
        raw.transport.write(b"\x00\x20" + b"\x01" * 5)
        raw.transport.loseConnection()
        yield raw.lost
        yield waitFor(lambda: b._upgrading == set())
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


class ObserverTests(TestCase):
    """
    Connection observers see each connection's life in order.
    """

    @inlineCallbacks
    def test_eventsInOrder(self):
        """
        Both sides see C{connected}, C{identified}, C{disconnected} for a
        connection, in that order; a raising observer does not disturb the
        others.
        """
        a = yield startNode(self)
        b = yield startNode(self)
        seen = {a: [], b: []}

        def broken(event, conn):
            raise Boom(event)

        for n in (a, b):
            n.addConnectionObserver(broken)
            n.addConnectionObserver(lambda e, c, n=n: seen[n].append((e, c.remotePeer)))
        conn = yield a.connect(addrOf(b))
        yield conn.identified
        yield waitFor(lambda: len(seen[b]) >= 2)
        conn.close()
        yield waitFor(lambda: len(seen[a]) == 3 and len(seen[b]) == 3)
        self.assertEqual(seen[a], [(e, b.peerID) for e in ("connected", "identified", "disconnected")])
        self.assertEqual(seen[b], [(e, a.peerID) for e in ("connected", "identified", "disconnected")])
        self.assertEqual(len(self.flushLoggedErrors(Boom)), 6)


class StopTests(TestCase):
    """
    Stopping is prompt whatever is in flight, and final.
    """

    @inlineCallbacks
    def test_stopWithWorkInFlight(self):
        """
        A node with open streams, inbound streams still negotiating and an
        outbound negotiation pending stops promptly; the pending stream
        fails with L{NodeStopped}; a second stop call also fires; after it,
        connect, openStream and ping fail with L{NodeStopped}.
        """
        a = yield startNode(self)
        b = yield startNode(self)
        conn = yield a.connect(addrOf(b))
        yield conn.identified
        held = Recorder()
        yield a.openStream(b.peerID, [ECHO_PROTOCOL], lambda: held)
        bConn = b.connections[a.peerID]
        for _ in range(5):
            bConn.openStream().setProtocol(Recorder())  # A never negotiates these... b waits
        b._inboundStream = lambda c, stream: None
        pending = a.openStream(b.peerID, [ECHO_PROTOCOL], Protocol)
        yield waitFor(lambda: conn.streamCount >= 7)
        started = reactor.seconds()
        first = a.stopService()
        second = a.stopService()
        yield first
        yield second
        self.assertLess(reactor.seconds() - started, 2)
        yield self.assertFailure(pending, NodeStopped)
        reason = yield held.lost
        self.assertIsInstance(reason, MuxerClosed)
        yield self.assertFailure(a.connect(addrOf(b)), NodeStopped)
        yield self.assertFailure(a.openStream(b.peerID, [ECHO_PROTOCOL], Protocol), NodeStopped)
        yield self.assertFailure(a.ping(b.peerID), NodeStopped)
        yield a.stopService()
        self.assertEqual(
            (a._dialer.pending, a._dialer.dials, a._upgrading, a._allConnections), ({}, {}, set(), set())
        )

    @inlineCallbacks
    def test_stopPromptWhenPeerStoppedReading(self):
        """
        A node whose peer stopped reading, with megabytes queued towards it,
        still stops promptly.
        """
        a = yield startNode(self)
        b = yield startNode(self)
        conn = yield a.connect(addrOf(b))
        yield conn.identified
        streams = yield DeferredList(
            [a.openStreamOn(conn, [ECHO_PROTOCOL], Recorder) for _ in range(64)], fireOnOneErrback=True
        )
        bTransport = b.connections[a.peerID].rawTransport
        bTransport.pauseProducing()
        self.addCleanup(bTransport.resumeProducing)
        chunk = b"x" * (256 * 1024)
        for _, proto in streams:
            proto.transport.write(chunk)
        # Wait until the socket is full: TCP paused the session.
        yield waitFor(lambda: conn.session._paused)
        started = reactor.seconds()
        yield a.stopService()
        self.assertLess(reactor.seconds() - started, 3)
        self.assertTrue(conn.closed)

    @inlineCallbacks
    def test_stopAbortsConnectionThatWillNotClose(self):
        """
        A connection that does not close cleanly is aborted after
        C{closeTimeout}, so stopping cannot hang on it.
        """
        a = yield startNode(self, closeTimeout=0.5)
        b = yield startNode(self)
        conn = yield a.connect(addrOf(b))
        conn.close = lambda: None  # stands in for a close that never completes
        started = reactor.seconds()
        yield a.stopService()
        elapsed = reactor.seconds() - started
        self.assertGreaterEqual(elapsed, 0.4)
        self.assertLess(elapsed, 3)
        self.assertTrue(conn.closed)


class ReapingTests(TestCase):
    """
    The idle reaper closes only what has no streams.
    """

    @inlineCallbacks
    def test_openStreamKeepsConnection(self):
        """
        A connection with an open stream outlives the idle timeout; once the
        stream ends, it is closed.
        """
        a = yield startNode(self, idleTimeout=0.2)
        b = yield startNode(self)
        held = Recorder()
        yield a.openStream(addrOf(b), [ECHO_PROTOCOL], lambda: held)
        conn = held.transport.connection
        yield deferLater(reactor, 1.0, lambda: None)  # five idle timeouts
        self.assertFalse(conn.closed)
        held.transport.loseConnection()
        yield held.lost
        yield conn.whenClosed()
        self.assertEqual(a.connections, {})


class DialerTests(TestCase):
    """
    The dialer's bookkeeping: every caller gets an answer, nothing leaks.
    """

    @inlineCallbacks
    def test_immediateDialFailureReachesCaller(self):
        """
        A dial that fails before any I/O (connection limit reached, an
        address we cannot dial) fails the caller's Deferred instead of
        leaving it unfired, and leaves no pending dial behind.
        """
        a = yield startNode(self, maxConnections=1)
        b = yield startNode(self)
        c = yield startNode(self)
        a.peerStore.addAddrs(c.peerID, [Multiaddr.fromString("/ip4/127.0.0.1/udp/9")], "user")
        d = a.connect(c.peerID)
        d.addTimeout(5, reactor)
        f = yield self.assertFailure(d, DialError)
        self.assertIn("udp", str(f))
        yield a.connect(addrOf(b))
        d = a.connect(addrOf(c))
        d.addTimeout(5, reactor)
        yield self.assertFailure(d, ConnectionLimitExceeded)
        self.assertEqual((a._dialer.pending, a._dialer.dials), ({}, {}))

    @inlineCallbacks
    def test_cancelConnect(self):
        """
        Cancelling one of two callers sharing a dial leaves the other
        waiting; cancelling the last cancels the dial itself, leaving no
        pending state and no half-open connection.
        """
        a = yield startNode(self)
        silent = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        self.addCleanup(silent.stopListening)
        target = f"/ip4/127.0.0.1/tcp/{silent.getHost().port}/p2p/{Identity.generate().peerID}"
        d1 = a.connect(target)
        d2 = a.connect(target)
        yield waitFor(lambda: a._upgrading)
        d1.cancel()
        yield self.assertFailure(d1, CancelledError)
        self.assertFalse(d2.called)
        d2.cancel()
        yield self.assertFailure(d2, CancelledError)
        self.assertEqual((a._dialer.pending, a._dialer.dials, a._upgrading), ({}, {}, set()))
        assertNoLoggedErrors(self)

    @inlineCallbacks
    def test_unreachableNamesAddress(self):
        """
        A failed dial by peer ID names both the peer and the address.
        """
        a = yield startNode(self)
        b = yield startNode(self)
        addr = addrOf(b)
        yield b.stopService()
        f = yield self.assertFailure(a.connect(addr), DialError)
        self.assertIn(str(b.peerID), str(f))
        self.assertIn("127.0.0.1", str(f))


class UpgradeErrorTests(TestCase):
    """
    Our own errors while finishing an upgrade cost only that connection.
    """

    @inlineCallbacks
    def test_connectionSetupRaises(self):
        """
        If building the peer connection raises, the error is logged, the
        TCP connection dropped and the dial fails (rather than hanging);
        the node then connects normally.
        """
        a = yield startNode(self)
        b = yield startNode(self)
        real = a._newConnection

        def broken(*args, **kw):
            raise Boom("setup")

        a._newConnection = broken
        d = a.connect(addrOf(b))
        d.addTimeout(5, reactor)
        yield self.assertFailure(d, DialError, Boom)
        self.assertEqual(len(self.flushLoggedErrors(Boom)), 1)
        self.assertEqual((a._upgrading, a._allConnections), (set(), set()))
        a._newConnection = real
        yield waitFor(lambda: not b._allConnections)
        yield a.ping(addrOf(b))
        assertNoLoggedErrors(self)


class KeepAliveTests(TestCase):
    """
    Peers marked keep-alive are not idle-reaped.
    """

    @inlineCallbacks
    def test_keepAliveSurvivesIdleReaping(self):
        """
        A connection to a peer protected with C{node.protect} stays open past the idle
        timeout; once unmarked, it is reaped.
        """
        a = yield startNode(self, idleTimeout=0.2)
        b = yield startNode(self)
        a.protect(b.peerID, "test")
        conn = yield a.connect(addrOf(b))
        yield deferLater(reactor, 0.6, lambda: None)
        self.assertFalse(conn.closed)
        a.unprotect(b.peerID, "test")
        yield conn.whenClosed()
