"""
Tests of L{beam.p2p.host.node.Node}: two nodes and the whole stack
(multistream, Noise or TLS, yamux) between them.

The node's logic runs on the in-memory transport under a L{Clock}
(L{beam.test.memnodes.MemoryGrid}): no sockets, no sleeps.  A few tests,
labelled "real TCP", run over loopback sockets for what only TCP shows:
each security protocol once over a real socket (with the observed
loopback address), and IPv6.
"""

from __future__ import annotations

import hashlib

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from beam.p2p.protocols.echo import ECHO_PROTOCOL
from beam.errors import DialError, HandshakeFailed, NegotiationFailed, NodeStopped, PeerIDMismatch
from beam.identity.keys import Identity
from beam.p2p.protocols.ping import PING_PROTOCOL
from beam.p2p.security.tls import PROTOCOL_ID
from beam.test.memnodes import MemoryGrid, securities
from beam.test.nodeutil import EchoClient, addrOf, randomPayload, startNode


class NodeTestsMixin:
    """
    Behaviour that must hold whichever security protocol is used, on the
    memory transport.
    """

    security = "noise"

    def setUp(self) -> None:
        self.grid = MemoryGrid(self, security=self.security)

    def makePair(self, **kw):
        return self.grid.node(**kw), self.grid.node(**kw)

    def test_connectPingIdentify(self):
        """
        A dials B: the connection is authenticated to B's peer ID, ping
        round-trips, and identify reports B's protocols and our observed
        address.
        """
        grid = self.grid
        a, b = self.makePair()
        conn = grid.result(a.connect(grid.addr(b)))
        self.assertEqual(conn.remotePeer, b.peerID)
        self.assertEqual(conn.security, "/noise" if self.security == "noise" else "/tls/1.0.0")
        rtts = grid.result(a.ping(b.peerID, count=3))
        self.assertEqual(rtts, [0.0, 0.0, 0.0])  # no time passes on the clock
        info = grid.result(a.identifyPeer(b.peerID))
        self.assertIn(PING_PROTOCOL, info.protocols)
        self.assertIn(ECHO_PROTOCOL, info.protocols)
        self.assertEqual(info.publicKey.peerID(), b.peerID)
        self.assertEqual(info.observedAddr.withoutPeerID(), conn.localAddr)
        self.assertEqual(info.listenAddrs[0], grid.addr(b, withPeer=False))

    def test_connectionReused(self):
        """
        Every stream to a peer rides one pooled connection, from either
        side.
        """
        grid = self.grid
        a, b = self.makePair()
        c1 = grid.result(a.connect(grid.addr(b)))
        c2 = grid.result(a.connect(b.peerID))
        self.assertIs(c1, c2)
        for _ in range(3):
            grid.result(a.ping(b.peerID))
        self.assertEqual(len(a._allConnections), 1)
        # B now dials A back by peer ID: it reuses the inbound connection.
        b.peerStore.addAddrs(a.peerID, [grid.addr(a, withPeer=False)], "user")
        c3 = grid.result(b.connect(a.peerID))
        self.assertEqual(c3.direction, "inbound")
        self.assertEqual(len(b._allConnections), 1)

    def test_concurrentDials(self):
        """
        Ten simultaneous dials to one peer share a single connection.
        """
        grid = self.grid
        a, b = self.makePair()
        results = grid.result(DeferredList([a.connect(grid.addr(b)) for _ in range(10)], fireOnOneErrback=True))
        conns = {id(r) for ok, r in results}
        self.assertEqual(len(conns), 1)
        self.assertEqual(len(a._allConnections), 1)

    def test_hundredConcurrentStreams(self):
        """
        100 concurrent echo streams carry 256 KiB each, byte-identical.
        """
        grid = self.grid
        a, b = self.makePair()
        grid.result(a.connect(grid.addr(b)))
        payloads = [randomPayload(256 * 1024) for _ in range(100)]
        clients = [EchoClient(p) for p, _ in payloads]
        opened = [a.openStream(b.peerID, ECHO_PROTOCOL, (lambda c=c: c)) for c in clients]
        grid.result(DeferredList(opened, fireOnOneErrback=True))
        got = grid.result(DeferredList([c.done for c in clients], fireOnOneErrback=True))
        for (ok, data), (_, digest) in zip(got, payloads):
            self.assertEqual(hashlib.sha256(data).hexdigest(), digest)
        self.assertEqual(len(a._allConnections), 1)

    def test_wrongPeerID(self):
        """
        Dialling an address with someone else's /p2p/ ID fails with
        L{PeerIDMismatch} and leaves no connection behind.
        """
        grid = self.grid
        a, b = self.makePair()
        wrong = grid.addr(b, withPeer=False).withPeerID(Identity.generate().peerID)
        f = grid.failure(a.connect(wrong), PeerIDMismatch)
        self.assertIn("peer", str(f.value).lower())
        self.assertEqual(a.connections, {})
        self.assertEqual(a._allConnections, set())

    def test_wrongPeerAtOneAddress(self):
        """
        When another node answers at one of a peer's addresses, the dialler
        goes on to the next address instead of giving up.
        """
        grid = self.grid
        a, b = self.makePair()
        c = grid.node()
        a.peerStore.addAddrs(b.peerID, [grid.addr(c, withPeer=False), grid.addr(b, withPeer=False)], "user")
        conn = grid.result(a.connect(b.peerID))
        self.assertEqual(conn.remotePeer, b.peerID)

    def test_unknownProtocol(self):
        """
        Opening a stream for a protocol the peer does not serve fails with
        L{NegotiationFailed}; the connection stays usable.
        """
        grid = self.grid
        a, b = self.makePair()
        grid.failure(a.openStream(grid.addr(b), ["/nope/1.0.0"], Protocol), NegotiationFailed)
        self.assertEqual(len(grid.result(a.ping(b.peerID))), 1)


class NoiseNodeTests(NodeTestsMixin, SynchronousTestCase):
    """
    The node over Noise, on the memory transport.
    """

    security = "noise"


class TLSNodeTests(NodeTestsMixin, SynchronousTestCase):
    """
    The node over TLS 1.3, on the memory transport.
    """

    security = "tls"


class DefaultSecuritiesTests(SynchronousTestCase):
    """
    A node made without C{securities} offers Noise and TLS; its TLS is
    made when a connection first picks it.
    """

    def test_tlsOnlyPeers(self):
        """
        A default node accepts a TLS-only peer and dials another: both
        connections are C{/tls/1.0.0}, authenticated, and ping.
        """
        grid = MemoryGrid(self, security=None)
        node = grid.node()
        self.assertEqual([s.protocolId for s in node.securities], ["/noise", PROTOCOL_ID])
        ids = Identity.generate(), Identity.generate()
        inbound, outbound = (grid.node(identity=i, securities=securities("tls", i, grid.clock)) for i in ids)
        conn = grid.result(inbound.connect(grid.addr(node)))
        self.assertEqual((conn.security, conn.remotePeer), (PROTOCOL_ID, node.peerID))
        conn = grid.result(node.connect(grid.addr(outbound)))
        self.assertEqual((conn.security, conn.remotePeer), (PROTOCOL_ID, outbound.peerID))
        self.assertEqual(len(grid.result(node.ping(outbound.peerID, count=1))), 1)


class RealTCPMixin:
    """
    Real TCP: one connection over loopback sockets per security protocol.
    """

    security = "noise"

    @inlineCallbacks
    def test_connectPingIdentify(self):
        """
        Over a real TCP connection, A dials B: the connection is
        authenticated to B's peer ID, ping round-trips, and identify
        reports B's protocols and our observed loopback address.
        """
        a_id, b_id = Identity.generate(), Identity.generate()
        a = yield startNode(self, identity=a_id, securities=securities(self.security, a_id, reactor))
        b = yield startNode(self, identity=b_id, securities=securities(self.security, b_id, reactor))
        conn = yield a.connect(addrOf(b))
        self.assertEqual(conn.remotePeer, b.peerID)
        self.assertEqual(conn.security, "/noise" if self.security == "noise" else "/tls/1.0.0")
        rtts = yield a.ping(b.peerID, count=3)
        self.assertEqual(len(rtts), 3)
        self.assertTrue(all(r >= 0 for r in rtts))
        info = yield a.identifyPeer(b.peerID)
        self.assertIn(PING_PROTOCOL, info.protocols)
        self.assertIn(ECHO_PROTOCOL, info.protocols)
        self.assertEqual(info.publicKey.peerID(), b.peerID)
        self.assertEqual(info.observedAddr.tcpTarget()[0], "127.0.0.1")
        self.assertEqual(info.listenAddrs[0], addrOf(b, withPeer=False))


class NoiseOverTCPTests(RealTCPMixin, TestCase):
    """
    Real TCP: the node over Noise.
    """

    security = "noise"


class TLSOverTCPTests(RealTCPMixin, TestCase):
    """
    Real TCP: the node over TLS 1.3.
    """

    security = "tls"


class IPv6Tests(TestCase):
    """
    Real TCP over IPv6 loopback.
    """

    @inlineCallbacks
    def test_ipv6(self):
        """
        Nodes listen and dial over IPv6 loopback.
        """
        a = yield startNode(self, listen=["/ip6/::1/tcp/0"])
        b = yield startNode(self, listen=["/ip6/::1/tcp/0"])
        self.assertTrue(str(addrOf(b)).startswith("/ip6/::1/tcp/"))
        rtts = yield a.ping(addrOf(b))
        self.assertEqual(len(rtts), 1)


@implementer(IPushProducer)
class _Flooder:
    """
    Writes 64 KiB chunks to a stream whenever it is not paused.
    """

    def __init__(self, transport, total):
        self.transport = transport
        self.total = total
        self.sent = 0
        self.paused = False
        self.pauses = 0
        self.sentAtFirstPause = None

    def resumeProducing(self):
        self.paused = False
        while not self.paused and self.sent < self.total:
            self.transport.write(b"x" * 65536)
            self.sent += 65536
        if self.sent >= self.total:
            self.transport.unregisterProducer()
            self.transport.loseConnection()

    def pauseProducing(self):
        if self.sentAtFirstPause is None:
            self.sentAtFirstPause = self.sent
        self.paused = True
        self.pauses += 1

    def stopProducing(self):
        self.paused = True


class _StalledSink(Protocol):
    instances: list = []

    def connectionMade(self):
        self.received = 0
        self.transport.pauseProducing()
        _StalledSink.instances.append(self)

    def dataReceived(self, data):
        self.received += len(data)


class NodeBehaviourTests(SynchronousTestCase):
    """
    Flow control, limits and lifecycle, on the memory transport.
    """

    def setUp(self) -> None:
        self.grid = MemoryGrid(self)

    def test_stalledReaderBoundsWriter(self):
        """
        A reader that stops reading pauses the remote writer: after 64 MiB
        offered, only about a window's worth has left the writer, and
        everything arrives once the reader resumes.
        """
        grid = self.grid
        a, b = grid.node(), grid.node()
        _StalledSink.instances = []
        b.setStreamHandler("/test/sink", _StalledSink)
        proto = grid.result(a.openStream(grid.addr(b), ["/test/sink"], Protocol))
        stream = proto.transport
        flooder = _Flooder(stream, 64 * 1024 * 1024)
        stream.registerProducer(flooder, True)
        flooder.resumeProducing()
        grid.advance(60)  # whatever can move has moved
        self.assertTrue(flooder.paused)
        self.assertLess(flooder.sent, 4 * 1024 * 1024)
        (sink,) = _StalledSink.instances
        self.assertLessEqual(sink.received, 1024 * 1024)
        done = Deferred()
        sink.connectionLost = lambda reason: done.callback(None)
        sink.transport.resumeProducing()
        grid.result(done)
        self.assertEqual(sink.received, 64 * 1024 * 1024)

    def test_unreachable(self):
        """
        Dialling an address nobody listens on fails with a L{DialError}
        naming the address.
        """
        grid = self.grid
        a, b = grid.node(), grid.node()
        addr = grid.addr(b)
        grid.result(b.stopService())
        f = grid.failure(a.connect(addr), DialError)
        self.assertIn(str(addr.withoutPeerID()), str(f.value))

    def test_stopFailsPendingDials(self):
        """
        Stopping a node fails dials still in progress with L{NodeStopped}
        and closes its connections, which the peer sees.
        """
        grid = self.grid
        a, b = grid.node(), grid.node()
        grid.result(a.connect(grid.addr(b)))
        grid.result(a.ping(b.peerID))
        # A peer that accepts the connection but never speaks: the dial
        # hangs in the handshake until the node stops.
        silent = grid.silentListener()
        d = a.connect(silent.addr.withPeerID(Identity.generate().peerID))
        grid.settle()
        self.assertNoResult(d)
        closed = b.connections[a.peerID].whenClosed()
        stopped = a.stopService()
        grid.failure(d, NodeStopped)
        grid.result(closed)
        grid.result(stopped)
        self.assertEqual(b.connections, {})
        self.assertEqual([p.transport.disconnected for p in silent.protocols], [True])

    def test_connectionLimit(self):
        """
        A node at its connection limit refuses further inbound connections.
        """
        grid = self.grid
        b = grid.node(maxConnections=1)
        a1, a2 = grid.node(), grid.node()
        grid.result(a1.connect(grid.addr(b)))
        grid.failure(a2.connect(grid.addr(b)), DialError, HandshakeFailed)
        self.assertEqual(len(b._allConnections), 1)

    def test_idleConnectionClosed(self):
        """
        A connection with no streams for longer than the idle timeout is
        closed.
        """
        grid = self.grid
        a, b = grid.node(idleTimeout=0.2), grid.node()
        conn = grid.result(a.connect(grid.addr(b)))
        grid.advance(0.1)
        self.assertFalse(conn.closed)
        grid.advance(0.2)  # past the idle timeout, and a run of the reaper
        self.assertTrue(conn.closed)
        self.assertEqual(a.connections, {})

    def test_handshakeTimeout(self):
        """
        A peer that accepts the connection but never finishes the handshake
        is dropped after the handshake timeout with a clear error.
        """
        grid = self.grid
        a = grid.node(handshakeTimeout=0.3)
        silent = grid.silentListener()
        d = a.connect(silent.addr)
        grid.advance(0.2)
        self.assertNoResult(d)
        grid.advance(0.2)
        f = grid.failure(d, HandshakeFailed)
        self.assertIn(f"the host at {silent.addr} accepted the connection but did not answer the libp2p "
                      "handshake within 0.3 s", str(f.value))
        self.assertEqual([p.transport.disconnected for p in silent.protocols], [True])

    def test_handshakeTimeoutWording(self) -> None:
        """
        The handshake timeout says who and how far it got: a dialled host
        that answered part of the handshake "started ... but did not
        finish it", one that said nothing "did not answer", an inbound
        peer "connected but did not finish"; without the dialled address
        the raw connection's address is named.
        """
        from twisted.internet.address import IPv4Address
        from twisted.internet.task import Clock
        from twisted.internet.testing import StringTransport

        from beam.p2p.upgrade import UpgradingProtocol

        def timeOut(isInitiator: bool, heard: bytes, address: object = None) -> str:
            clock = Clock()
            up = UpgradingProtocol(clock=clock, securities=securities("noise", Identity.generate(), clock),
                                   isInitiator=isInitiator, expectedPeer=None,
                                   makeConnection=lambda *a: None,  # type: ignore[arg-type]
                                   handshakeTimeout=15, address=address)
            up.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 4001)))
            if heard:
                up.dataReceived(heard)
            clock.advance(15)
            return str(self.failureResultOf(up.done, HandshakeFailed).value)

        self.assertEqual(timeOut(True, b"", "/ip4/127.0.0.1/tcp/9"),
                         "the host at /ip4/127.0.0.1/tcp/9 accepted the connection but did not answer the libp2p "
                         "handshake within 15 s")
        self.assertEqual(timeOut(True, b"\x13/multistream/1.0.0\n"),
                         "the host at /ip4/127.0.0.1/tcp/4001 started the libp2p handshake but did not finish it "
                         "within 15 s")
        self.assertEqual(timeOut(False, b""),
                         "the peer at /ip4/127.0.0.1/tcp/4001 connected but did not finish the libp2p handshake "
                         "within 15 s")
