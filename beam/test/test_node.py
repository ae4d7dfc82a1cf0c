"""
Real-socket tests of L{beam.p2p.host.node.Node}: two nodes on loopback, the whole
stack (TCP, multistream, Noise or TLS, yamux) between them.
"""

from __future__ import annotations

import hashlib

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from zope.interface import implementer
from twisted.internet.interfaces import IPushProducer

from beam.p2p.protocols.echo import ECHO_PROTOCOL
from beam.errors import DialError, HandshakeFailed, NegotiationFailed, NodeStopped, PeerIDMismatch
from beam.identity.keys import Identity
from beam.identity.multiaddr import Multiaddr
from beam.p2p.protocols.ping import PING_PROTOCOL
from beam.p2p.security.noise import NoiseTransport
from beam.p2p.security.tls import TLSTransport
from beam.test.nodeutil import EchoClient, addrOf, randomPayload, startNode
from beam.p2p.upgrade import YAMUX_PROTOCOL


def only(security: str):
    def make(identity: Identity) -> list:
        if security == "noise":
            return [NoiseTransport(identity, muxers=[YAMUX_PROTOCOL])]
        return [TLSTransport(identity, muxers=[YAMUX_PROTOCOL], clock=reactor)]
    return make


class TwoNodeMixin:
    security = "noise"

    @inlineCallbacks
    def makePair(self, **kw):
        a_id, b_id = Identity.generate(), Identity.generate()
        a = yield startNode(self, identity=a_id, securities=only(self.security)(a_id), **kw)
        b = yield startNode(self, identity=b_id, securities=only(self.security)(b_id), **kw)
        return a, b


class NodeTestsMixin(TwoNodeMixin):
    """
    Behaviour that must hold whichever security protocol is used.
    """

    @inlineCallbacks
    def test_connectPingIdentify(self):
        """
        A dials B: the connection is authenticated to B's peer ID, ping
        round-trips, and identify reports B's protocols and our observed
        loopback address.
        """
        a, b = yield self.makePair()
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

    @inlineCallbacks
    def test_connectionReused(self):
        """
        Every stream to a peer rides one pooled connection, from either
        side.
        """
        a, b = yield self.makePair()
        c1 = yield a.connect(addrOf(b))
        c2 = yield a.connect(b.peerID)
        self.assertIs(c1, c2)
        for _ in range(3):
            yield a.ping(b.peerID)
        self.assertEqual(len(a._allConnections), 1)
        # B now dials A back by peer ID: it reuses the inbound connection.
        b.peerStore.addAddrs(a.peerID, [addrOf(a, withPeer=False)], "user")
        c3 = yield b.connect(a.peerID)
        self.assertEqual(c3.direction, "inbound")
        self.assertEqual(len(b._allConnections), 1)

    @inlineCallbacks
    def test_concurrentDials(self):
        """
        Ten simultaneous dials to one peer share a single connection.
        """
        a, b = yield self.makePair()
        results = yield DeferredList([a.connect(addrOf(b)) for _ in range(10)], fireOnOneErrback=True)
        conns = {id(r) for ok, r in results}
        self.assertEqual(len(conns), 1)

    @inlineCallbacks
    def test_hundredConcurrentStreams(self):
        """
        100 concurrent echo streams carry 256 KiB each, byte-identical.
        """
        a, b = yield self.makePair()
        yield a.connect(addrOf(b))
        payloads = [randomPayload(256 * 1024) for _ in range(100)]
        clients = [EchoClient(p) for p, _ in payloads]
        opened = [a.openStream(b.peerID, ECHO_PROTOCOL, (lambda c=c: c)) for c in clients]
        yield DeferredList(opened, fireOnOneErrback=True)
        got = yield DeferredList([c.done for c in clients], fireOnOneErrback=True)
        for (ok, data), (_, digest) in zip(got, payloads):
            self.assertEqual(hashlib.sha256(data).hexdigest(), digest)
        self.assertEqual(len(a._allConnections), 1)

    @inlineCallbacks
    def test_wrongPeerID(self):
        """
        Dialling an address with someone else's /p2p/ ID fails with
        L{PeerIDMismatch} and leaves no connection behind.
        """
        a, b = yield self.makePair()
        wrong = addrOf(b, withPeer=False).withPeerID(Identity.generate().peerID)
        f = yield self.assertFailure(a.connect(wrong), PeerIDMismatch)
        self.assertIn("peer", str(f).lower())
        self.assertEqual(a.connections, {})

    @inlineCallbacks
    def test_wrongPeerAtOneAddress(self):
        """
        When another node answers at one of a peer's addresses, the dialler
        goes on to the next address instead of giving up.
        """
        a, b = yield self.makePair()
        cid = Identity.generate()
        c = yield startNode(self, identity=cid, securities=only(self.security)(cid))
        a.peerStore.addAddrs(b.peerID, [addrOf(c, withPeer=False), addrOf(b, withPeer=False)], "user")
        conn = yield a.connect(b.peerID)
        self.assertEqual(conn.remotePeer, b.peerID)

    @inlineCallbacks
    def test_unknownProtocol(self):
        """
        Opening a stream for a protocol the peer does not serve fails with
        L{NegotiationFailed}; the connection stays usable.
        """
        a, b = yield self.makePair()
        yield self.assertFailure(
            a.openStream(addrOf(b), ["/nope/1.0.0"], Protocol), NegotiationFailed
        )
        rtts = yield a.ping(b.peerID)
        self.assertEqual(len(rtts), 1)


class NoiseNodeTests(NodeTestsMixin, TestCase):
    """
    The node over Noise.
    """

    security = "noise"


class TLSNodeTests(NodeTestsMixin, TestCase):
    """
    The node over TLS 1.3.
    """

    security = "tls"


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


class NodeBehaviourTests(TwoNodeMixin, TestCase):
    """
    Flow control, limits and lifecycle on real sockets.
    """

    @inlineCallbacks
    def test_stalledReaderBoundsWriter(self):
        """
        A reader that stops reading pauses the remote writer: after 64 MiB
        offered, only about a window's worth has left the writer, and
        everything arrives once the reader resumes.
        """
        a, b = yield self.makePair()
        _StalledSink.instances = []
        b.setStreamHandler("/test/sink", _StalledSink)
        proto = yield a.openStream(addrOf(b), ["/test/sink"], Protocol)
        stream = proto.transport
        flooder = _Flooder(stream, 64 * 1024 * 1024)
        stream.registerProducer(flooder, True)
        flooder.resumeProducing()
        yield deferLater(reactor, 0.5, lambda: None)
        self.assertTrue(flooder.paused)
        self.assertLess(flooder.sent, 4 * 1024 * 1024)
        sink = _StalledSink.instances[0]
        self.assertLessEqual(sink.received, 1024 * 1024)
        done = Deferred()
        sink.connectionLost = lambda reason: done.callback(None)
        sink.transport.resumeProducing()
        yield done
        self.assertEqual(sink.received, 64 * 1024 * 1024)

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

    @inlineCallbacks
    def test_unreachable(self):
        """
        Dialling a port nobody listens on fails with a L{DialError} naming
        the address.
        """
        a = yield startNode(self)
        b = yield startNode(self)
        addr = addrOf(b)
        yield b.stopService()
        f = yield self.assertFailure(a.connect(addr), DialError)
        self.assertIn("127.0.0.1", str(f))

    @inlineCallbacks
    def test_stopFailsPendingDials(self):
        """
        Stopping a node fails dials still in progress with L{NodeStopped}
        and closes its connections, which the peer sees.
        """
        a = yield startNode(self)
        b = yield startNode(self)
        yield a.connect(addrOf(b))
        yield a.ping(b.peerID)  # B has surely registered the connection now
        # A peer that accepts TCP but never speaks: the dial hangs in the
        # handshake until the node stops.
        from twisted.internet.protocol import Factory
        silent = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        self.addCleanup(silent.stopListening)
        port = silent.getHost().port
        d = a.connect(f"/ip4/127.0.0.1/tcp/{port}/p2p/{Identity.generate().peerID}")
        closed = b.connections[a.peerID].whenClosed()
        yield a.stopService()
        yield self.assertFailure(d, NodeStopped)
        yield closed
        self.assertEqual(b.connections, {})

    @inlineCallbacks
    def test_connectionLimit(self):
        """
        A node at its connection limit refuses further inbound connections.
        """
        b = yield startNode(self, maxConnections=1)
        a1 = yield startNode(self)
        a2 = yield startNode(self)
        yield a1.connect(addrOf(b))
        yield self.assertFailure(a2.connect(addrOf(b)), DialError, HandshakeFailed)
        self.assertEqual(len(b._allConnections), 1)

    @inlineCallbacks
    def test_idleConnectionClosed(self):
        """
        A connection with no streams for longer than the idle timeout is
        closed.
        """
        a = yield startNode(self, idleTimeout=0.2)
        b = yield startNode(self)
        conn = yield a.connect(addrOf(b))
        yield conn.whenClosed()
        self.assertEqual(a.connections, {})

    @inlineCallbacks
    def test_handshakeTimeout(self):
        """
        A peer that accepts TCP but never finishes the handshake is dropped
        after the handshake timeout with a clear error.
        """
        from twisted.internet.protocol import Factory
        a = yield startNode(self, handshakeTimeout=0.3)
        silent = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        self.addCleanup(silent.stopListening)
        f = yield self.assertFailure(
            a.connect(Multiaddr.fromString(f"/ip4/127.0.0.1/tcp/{silent.getHost().port}")),
            HandshakeFailed,
        )
        self.assertIn("did not finish", str(f))
