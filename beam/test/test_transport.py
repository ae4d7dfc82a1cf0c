"""
Transports, the peerstore, and whole nodes on the in-memory transport
under a L{Clock}: no sockets, no sleeps, every timer under the test's
control.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from beam.errors import DialError, NodeStopped
from beam.identity.keys import Identity
from beam.identity.multiaddr import Multiaddr
from beam.p2p.host.node import Node
from beam.p2p.host.peerstore import PeerStore
from beam.p2p.interfaces import IHost, IPeerConnection, IPeerStore, ITransport
from beam.p2p.protocols.echo import ECHO_PROTOCOL
from beam.p2p.transport.memory import MemoryNetwork, MemoryPipe, MemoryTransport, flush
from beam.p2p.transport.tcp import TCPTransport


class Collect(Protocol):
    def __init__(self) -> None:
        self.data = bytearray()
        self.lost: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost = reason


class MemoryTransportTests(SynchronousTestCase):
    """
    The raw in-memory transport.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.net = MemoryNetwork()
        self.transport = MemoryTransport(self.clock, self.net)
        self.server = Collect()
        listening = self.successResultOf(
            self.transport.listen(Multiaddr.fromString("/memory/0"), Factory.forProtocol(lambda: self.server))
        )
        self.addr = listening.addr
        self.listener = listening

    def test_provides(self) -> None:
        """
        Both transports provide L{ITransport}.
        """
        verifyObject(ITransport, self.transport)
        verifyObject(ITransport, TCPTransport(self.clock))

    def test_canDial(self) -> None:
        """
        Each transport claims only its own addresses.
        """
        mem, tcp = Multiaddr.fromString("/memory/5"), Multiaddr.fromString("/ip4/127.0.0.1/tcp/1")
        tcpT = TCPTransport(self.clock)
        self.assertTrue(self.transport.canDial(mem))
        self.assertFalse(self.transport.canDial(tcp))
        self.assertTrue(tcpT.canDial(tcp))
        self.assertFalse(tcpT.canDial(mem))
        self.assertFalse(tcpT.canListen(Multiaddr.fromString("/dns4/example.com/tcp/1")))

    def test_tcpDialAndListen(self) -> None:
        """
        The TCP transport dials IPv4, IPv6 and host names with the given
        timeout (no private endpoint attribute patched), listens with tcp
        or tcp6 on the given interface, and refuses to listen on a name.
        """
        from twisted.internet.testing import MemoryReactor

        reactor = MemoryReactor()
        tcp = TCPTransport(reactor)
        tcp.dial(Multiaddr.fromString("/ip6/::1/tcp/81"), Factory(), 7)
        tcp.dial(Multiaddr.fromString("/ip4/192.0.2.1/tcp/82/p2p/" + str(Identity.generate().peerID)), Factory(), 8)
        self.assertEqual([c[:2] + (c[3],) for c in reactor.tcpClients], [("::1", 81, 7), ("192.0.2.1", 82, 8)])
        tcp.listen(Multiaddr.fromString("/ip6/::/tcp/4001"), Factory())
        self.assertEqual((reactor.tcpServers[0][0], reactor.tcpServers[0][3]), (4001, "::"))
        f = self.failureResultOf(tcp.listen(Multiaddr.fromString("/dns/example.com/tcp/1"), Factory()), DialError)
        self.assertIn("need /ip4 or /ip6", str(f.value))

    def test_bytesDeliveredLater(self) -> None:
        """
        A write reaches the peer in a later reactor turn, never from
        inside C{write}, and both ends name each other as multiaddrs.
        """
        client = Collect()
        self.successResultOf(self.transport.dial(self.addr, Factory.forProtocol(lambda: client), 5))
        client.transport.write(b"hello")
        self.assertEqual(self.server.data, b"")
        flush(self.clock)
        self.assertEqual(self.server.data, b"hello")
        self.assertEqual(self.transport.multiaddrOf(client.transport.getPeer()), self.addr)
        self.assertEqual(self.transport.multiaddrOf(self.server.transport.getPeer()),
                         self.transport.multiaddrOf(client.transport.getHost()))

    def test_closeAfterData(self) -> None:
        """
        loseConnection delivers what was written, then ends both sides
        cleanly.
        """
        client = Collect()
        self.successResultOf(self.transport.dial(self.addr, Factory.forProtocol(lambda: client), 5))
        client.transport.write(b"x" * 1000)
        client.transport.loseConnection()
        flush(self.clock)
        self.assertEqual(len(self.server.data), 1000)
        self.assertIsNotNone(self.server.lost)
        self.assertIsNotNone(client.lost)

    def test_backpressure(self) -> None:
        """
        A writer whose unread bytes at a paused reader pass the high-water
        mark is paused, and resumed once the reader drains them.
        """
        client = Collect()
        self.successResultOf(self.transport.dial(self.addr, Factory.forProtocol(lambda: client), 5))
        events: list[str] = []

        class Producer:
            def pauseProducing(self) -> None:
                events.append("pause")

            def resumeProducing(self) -> None:
                events.append("resume")

            def stopProducing(self) -> None:
                events.append("stop")

        client.transport.registerProducer(Producer(), True)
        self.server.transport.pauseProducing()
        client.transport.write(b"x" * (MemoryPipe.highWater + 1))
        flush(self.clock)
        self.assertEqual(events, ["pause"])
        self.assertEqual(self.server.data, b"")
        self.server.transport.resumeProducing()
        flush(self.clock)
        self.assertEqual(events, ["pause", "resume"])
        self.assertEqual(len(self.server.data), MemoryPipe.highWater + 1)

    def test_abort(self) -> None:
        """
        abortConnection ends both sides in the next turn (bytes already
        in flight may still arrive first, as on TCP); nothing is delivered
        after.
        """
        client = Collect()
        self.successResultOf(self.transport.dial(self.addr, Factory.forProtocol(lambda: client), 5))
        client.transport.write(b"lost")
        client.transport.abortConnection()
        self.assertIsNone(client.lost, "connectionLost runs in a later turn, as on TCP")
        flush(self.clock)
        self.assertIsNotNone(self.server.lost)
        self.assertIsNotNone(client.lost)
        self.server.transport.write(b"after")
        flush(self.clock)
        self.assertEqual(client.data, b"")

    def test_refusedAndInUse(self) -> None:
        """
        Dialling a port nobody listens on fails; listening twice on one
        port fails with the words the CLI uses.
        """
        self.failureResultOf(self.transport.dial(Multiaddr.fromString("/memory/9"), Factory(), 5))
        f = self.failureResultOf(self.transport.listen(self.addr, Factory()), DialError)
        self.assertIn("already in use", str(f.value))
        self.successResultOf(self.listener.stopListening())
        self.failureResultOf(self.transport.dial(self.addr, Factory(), 5))


class PeerStoreTests(SynchronousTestCase):
    """
    The peerstore's ordering, expiry and bounds.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.store = PeerStore(self.clock, maxPeers=3, maxAddrsPerPeer=4)
        self.peer = Identity.generate().peerID

    def addr(self, port: int) -> Multiaddr:
        return Multiaddr.fromString(f"/ip4/192.0.2.1/tcp/{port}")

    def test_provides(self) -> None:
        """
        L{PeerStore} provides L{IPeerStore}.
        """
        verifyObject(IPeerStore, self.store)

    def test_orderBySource(self) -> None:
        """
        Addresses are listed best source first: the one we were connected
        on, then the user's, then identify's, then the DHT's.
        """
        self.store.addAddrs(self.peer, [self.addr(1)], "dht")
        self.store.addAddrs(self.peer, [self.addr(2)], "identify")
        self.store.addAddrs(self.peer, [self.addr(3)], "user")
        self.store.addAddrs(self.peer, [self.addr(4)], "connected")
        self.assertEqual(self.store.addrs(self.peer), [self.addr(p) for p in (4, 3, 2, 1)])

    def test_expiry(self) -> None:
        """
        An address expires after its source's lifetime (or the given
        ttl); learning it again from a better source upgrades it.
        """
        self.store.addAddrs(self.peer, [self.addr(1)], "dht")
        self.store.addAddrs(self.peer, [self.addr(2)], "identify", ttl=10)
        self.clock.advance(11)
        self.assertEqual(self.store.addrs(self.peer), [self.addr(1)])
        self.store.addAddrs(self.peer, [self.addr(1)], "user")
        self.clock.advance(10_000)
        self.assertEqual(self.store.addrSources(self.peer), {self.addr(1): "user"})

    def test_bounded(self) -> None:
        """
        A peer cannot make us keep more than C{maxAddrsPerPeer} addresses
        (the worst go), nor the store more than C{maxPeers} peers.
        """
        self.store.addAddrs(self.peer, [self.addr(1)], "user")
        self.store.addAddrs(self.peer, [self.addr(p) for p in range(100, 200)], "dht")
        addrs = self.store.addrs(self.peer)
        self.assertEqual(len(addrs), 4)
        self.assertEqual(addrs[0], self.addr(1))
        others = [Identity.generate().peerID for _ in range(5)]
        for p in others:
            self.store.addAddrs(p, [self.addr(1)], "dht")
        self.assertEqual(len(self.store.peers()), 3)
        self.assertEqual(self.store.peers(), others[-3:])

    def test_metadata(self) -> None:
        """
        Protocols, agent and a smoothed latency are kept per peer.
        """
        self.store.setProtocols(self.peer, ["/b", "/a", "/a"])
        self.store.setAgent(self.peer, "js-libp2p/3")
        self.store.recordLatency(self.peer, 0.1)
        self.store.recordLatency(self.peer, 0.9)
        self.assertEqual(self.store.protocols(self.peer), ["/a", "/b"])
        self.assertEqual(self.store.agent(self.peer), "js-libp2p/3")
        self.assertAlmostEqual(self.store.latency(self.peer), 0.2)
        self.assertRaises(ValueError, self.store.addAddrs, self.peer, [], "gossip")


class MemoryNodeTests(SynchronousTestCase):
    """
    Whole nodes (Noise, yamux, identify, ping, echo, the pool) over the
    in-memory transport, under a L{Clock}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.net = MemoryNetwork()

    def node(self, **kw: Any) -> Node:
        n = Node(self.clock, Identity.generate(), ["/memory/0"],
                 transports=[MemoryTransport(self.clock, self.net)], **kw)
        self.successResultOf(n.startService())
        self.addCleanup(lambda: (n.stopService(), flush(self.clock), self.clock.advance(10)))
        return n

    def settle(self) -> None:
        flush(self.clock)

    def test_provides(self) -> None:
        """
        A node provides L{IHost}; its connections L{IPeerConnection}.
        """
        a, b = self.node(), self.node()
        verifyObject(IHost, a)
        d = a.connect(b.listenAddrs[0].withPeerID(b.peerID))
        self.settle()
        conn = self.successResultOf(d)
        verifyObject(IPeerConnection, conn)
        self.assertEqual((conn.transport, conn.limited, conn.direction), ("memory", False, "outbound"))

    def test_connectIdentifyPingEcho(self) -> None:
        """
        Two nodes connect, identify each other (the peerstore learns the
        agent and protocols), ping, and echo bytes on a stream.
        """
        a, b = self.node(), self.node()
        d = a.connect(b.listenAddrs[0].withPeerID(b.peerID))
        self.settle()
        conn = self.successResultOf(d)
        self.assertEqual(conn.remotePeer, b.peerID)
        self.assertIn(ECHO_PROTOCOL, a.peerStore.protocols(b.peerID))
        self.assertTrue(a.peerStore.agent(b.peerID).startswith("beam/"))
        self.assertEqual(a.peerStore.addrSources(b.peerID)[b.listenAddrs[0]], "connected")
        rtts = a.ping(b.peerID, count=2)
        self.settle()
        self.assertEqual(self.successResultOf(rtts), [0.0, 0.0])
        self.assertEqual(a.peerStore.latency(b.peerID), 0.0)
        got = Collect()
        opened = a.openStream(b.peerID, ECHO_PROTOCOL, lambda: got)
        self.settle()
        proto = self.successResultOf(opened)
        proto.transport.write(b"echo me")
        self.settle()
        self.assertEqual(bytes(got.data), b"echo me")

    def test_idleReaping(self) -> None:
        """
        An idle connection closes after C{idleTimeout} of the clock, unless
        protected; removing the last tag lets it be reaped again.
        """
        a, b = self.node(idleTimeout=60), self.node(idleTimeout=600)
        d = a.connect(b.listenAddrs[0].withPeerID(b.peerID))
        self.settle()
        conn = self.successResultOf(d)
        a.protect(b.peerID, "one")
        a.protect(b.peerID, "two")
        self.clock.advance(120)
        self.settle()
        self.assertFalse(conn.closed)
        a.unprotect(b.peerID, "one")
        self.clock.advance(120)
        self.settle()
        self.assertFalse(conn.closed)
        a.unprotect(b.peerID, "two")
        for _ in range(10):
            self.clock.advance(30)
            self.settle()
        self.assertTrue(conn.closed)
        self.assertIsNone(a.connectionTo(b.peerID))

    def test_retiredClosesOnLastStream(self) -> None:
        """
        A connection that lost to a duplicate keeps its open stream, and
        closes as soon as that stream ends (no polling interval).
        """
        a, b = self.node(), self.node()
        d = a.connect(b.listenAddrs[0].withPeerID(b.peerID))
        self.settle()
        first = self.successResultOf(d)
        got = Collect()
        opened = a.openStreamOn(first, [ECHO_PROTOCOL], lambda: got)
        self.settle()
        proto = self.successResultOf(opened)
        first.goAway()
        a._retire(first)
        self.settle()
        self.assertFalse(first.closed)
        proto.transport.loseConnection()
        self.settle()
        self.assertTrue(first.closed)

    def test_observers(self) -> None:
        """
        Connection observers see connected, identified and disconnected;
        a removed observer sees nothing more.
        """
        a, b = self.node(), self.node()
        seen: list[str] = []

        def observer(event: str, conn: Any) -> None:
            seen.append(event)

        a.addConnectionObserver(observer)
        d = a.connect(b.listenAddrs[0].withPeerID(b.peerID))
        self.settle()
        conn = self.successResultOf(d)
        conn.close()
        self.settle()
        self.assertEqual(seen, ["connected", "identified", "disconnected"])
        a.removeConnectionObserver(observer)
        a.removeConnectionObserver(observer)
        d = a.connect(b.peerID)
        self.settle()
        self.successResultOf(d)
        self.assertEqual(len(seen), 3)

    def test_whenListening(self) -> None:
        """
        whenListening fires once listening, and fails with the reason when
        an address cannot be listened on, for a node started by someone
        else's MultiService (whose startService result nobody reads).
        """
        from twisted.application.service import MultiService

        a = self.node()
        self.successResultOf(a.whenListening())
        parent = MultiService()
        busy = Node(self.clock, Identity.generate(), [a.listenAddrs[0]],
                    transports=[MemoryTransport(self.clock, self.net)])
        busy.setServiceParent(parent)
        parent.startService()
        f = self.failureResultOf(busy.whenListening(), DialError)
        self.assertIn("already in use", str(f.value))
        # MultiService dropped startService's result: it is reported once.
        import gc
        gc.collect()
        self.flushLoggedErrors(DialError)
        stopped = Node(self.clock, Identity.generate(), [])
        self.failureResultOf(stopped.whenListening(), NodeStopped)
        parent.stopService()
        self.settle()
        self.clock.advance(10)

    def test_directPreferredOverLimited(self) -> None:
        """
        When a peer has a limited (relayed) connection and a direct one,
        new streams use the direct one and the limited one is retired.
        """
        limitedNet = MemoryNetwork()
        limitedNet._next = 1 << 20

        class Limited(MemoryTransport):
            """
            Stands in for a relay: its own addresses (ports from 2**20).
            """

            name = "relay"
            limited = True

            def canDial(self, addr: Multiaddr) -> bool:
                port = self._port(addr)
                return port is not None and (port == 0 or port >= 1 << 20)

            canListen = canDial

        a = self.node()
        b = Node(self.clock, Identity.generate(), ["/memory/0"],
                 transports=[Limited(self.clock, limitedNet)])
        self.successResultOf(b.startService())
        b.transports.append(MemoryTransport(self.clock, self.net))
        self.successResultOf(b.listen([Multiaddr.fromString("/memory/12345")]))
        self.addCleanup(lambda: (b.stopService(), flush(self.clock), self.clock.advance(10)))
        a.transports.insert(0, Limited(self.clock, limitedNet))
        d = a.connect(b.listenAddrs[0].withPeerID(b.peerID))
        self.settle()
        relayed = self.successResultOf(d)
        self.assertTrue(relayed.limited)
        self.assertIs(a.connectionTo(b.peerID), relayed)
        d = a._dialer.dial(b.peerID, [b.listenAddrs[1]])
        self.settle()
        direct = self.successResultOf(d)
        self.assertFalse(direct.limited)
        self.assertIs(a.connectionTo(b.peerID), direct)
        self.settle()
        self.assertTrue(relayed.closed)


class LifecycleTests(SynchronousTestCase):
    """
    The node's and the peer connection's lifecycles are total tables, and
    the node moves through them.
    """

    def test_tablesComplete(self) -> None:
        """
        Every (state, input) pair of both machines has an entry (checked
        when the table is built), and the docs show the current tables.
        """
        from pathlib import Path

        from beam.p2p.connection import CONNECTION_MACHINE
        from beam.p2p.host.node import NODE_MACHINE
        from beam.statemachine import StateMachine

        self.assertRaises(ValueError, StateMachine, "x", NodeStateForTest, NodeStateForTest, {})
        doc = (Path(__file__).resolve().parents[2] / "docs" / "state-machines" / "node.md").read_text()
        self.assertIn(NODE_MACHINE.render(), doc)
        self.assertIn(CONNECTION_MACHINE.render(), doc)

    def test_nodeStates(self) -> None:
        """
        stopped -> starting -> running -> stopping -> stopped; a second
        start while running is a bug (raises); stopping a stopped node is
        ignored; a node can start again after a stop.
        """
        from beam.p2p.host.node import NodeInput, NodeState
        from beam.statemachine import IllegalTransition

        clock = Clock()
        net = MemoryNetwork()
        node = Node(clock, Identity.generate(), ["/memory/0"], transports=[MemoryTransport(clock, net)])
        self.assertEqual(node.state, NodeState.STOPPED)
        self.successResultOf(node.stopService())
        self.assertEqual(node.state, NodeState.STOPPED)
        d = node.startService()
        self.assertEqual(node.state, NodeState.RUNNING)
        self.successResultOf(d)
        self.assertRaises(IllegalTransition, node._move, NodeInput.START)
        stopping = node.stopService()
        again = node.stopService()
        flush(clock)
        self.successResultOf(stopping)
        self.successResultOf(again)
        self.assertEqual(node.state, NodeState.STOPPED)
        self.successResultOf(node.startService())
        self.assertEqual(node.state, NodeState.RUNNING)
        node.stopService()
        flush(clock)

    def test_connectionStates(self) -> None:
        """
        A connection goes open -> going away -> closing -> closed, ignores
        repeated calls, and an abort while closing cuts it off.
        """
        from beam.p2p.connection import ConnectionState

        clock = Clock()
        net = MemoryNetwork()
        a = Node(clock, Identity.generate(), ["/memory/0"], transports=[MemoryTransport(clock, net)])
        b = Node(clock, Identity.generate(), ["/memory/0"], transports=[MemoryTransport(clock, net)])
        a.startService()
        b.startService()
        d = a.connect(b.listenAddrs[0].withPeerID(b.peerID))
        flush(clock)
        conn = self.successResultOf(d)
        self.assertEqual(conn.state, ConnectionState.OPEN)
        conn.goAway()
        conn.goAway()
        self.assertEqual(conn.state, ConnectionState.GOING_AWAY)
        self.assertFalse(conn.acceptsStreams)
        conn.close()
        self.assertEqual(conn.state, ConnectionState.CLOSING)
        conn.abort()
        flush(clock)
        self.assertEqual(conn.state, ConnectionState.CLOSED)
        self.assertTrue(conn.closed)
        conn.close()
        self.assertEqual(conn.state, ConnectionState.CLOSED)
        a.stopService()
        b.stopService()
        flush(clock)
        clock.advance(10)


class NodeStateForTest(Enum):
    ONLY = 1
